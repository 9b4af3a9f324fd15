//! Titles to object names: `<title>.json`, encoded so that no title can leave its bucket.
//!
//! The rule (also in the schema docs):
//! - Letters and digits of any script, space, and `- _ . , ' ( ) ! & +` are kept as they are.
//! - Every other character (`/`, `\`, `%`, `~`, `#`, `:`, control characters, symbols,
//!   invisible formatting characters such as bidi overrides) is percent-encoded, one `%XX`
//!   per UTF-8 byte. A leading `.` or space is encoded too (no hidden or blank-looking
//!   names), so `..` becomes `%2E..json`: never a path segment, never a traversal.
//! - A name whose encoded stem exceeds [`MAX_STEM_BYTES`] keeps its first bytes and ends
//!   with `~` and 32 hex digits of the title's BLAKE3 hash. `~` is always encoded in
//!   ordinary names, so a shortened name never collides with a short title's name.
//! - Case is kept: `Dune` and `DUNE` are two objects. Object stores and Linux filesystems
//!   are case-sensitive; on a case-insensitive filesystem (macOS, Windows) they would share
//!   one file, which is why a cluster should use an S3-style store.
//!
//! The encoding is injective (up to the hash), so two titles share an object exactly when
//! they are the same title.

/// Longest encoded stem, in bytes: with `.json` and object_store's staging suffix it stays
/// well under the 255-byte file-name limit of common filesystems (S3 keys allow 1024).
pub const MAX_STEM_BYTES: usize = 200;

/// Hex digits of the hash that ends a shortened name (128 bits).
const HASH_HEX: usize = 32;

/// The object name (`<encoded title>.json`) of a title.
pub fn object_name(title: &str) -> String {
    let mut stem = String::with_capacity(title.len());
    for (index, c) in title.chars().enumerate() {
        let leading = index == 0 && (c == '.' || c == ' ');
        if is_kept(c) && !leading {
            stem.push(c);
        } else {
            let mut buffer = [0u8; 4];
            for byte in c.encode_utf8(&mut buffer).bytes() {
                stem.push_str(&format!("%{byte:02X}"));
            }
        }
    }
    if stem.len() > MAX_STEM_BYTES {
        let keep = MAX_STEM_BYTES - 1 - HASH_HEX;
        let mut cut = keep;
        while !stem.is_char_boundary(cut) {
            cut -= 1;
        }
        // Never split a `%XX` escape: a cut escape would read as a different character.
        if let Some(percent) = stem.as_bytes()[cut - 2..cut].iter().position(|byte| *byte == b'%') {
            cut = cut - 2 + percent;
        }
        let hash = blake3::hash(title.as_bytes()).to_hex();
        stem = format!("{}~{}", &stem[..cut], &hash.as_str()[..HASH_HEX]);
    }
    stem.push_str(".json");
    stem
}

fn is_kept(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, ' ' | '-' | '_' | '.' | ',' | '\'' | '(' | ')' | '!' | '&' | '+')
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_titles_read_as_themselves() {
        assert_eq!(object_name("LoremIpsum"), "LoremIpsum.json");
        assert_eq!(object_name("The Left Hand of Darkness"), "The Left Hand of Darkness.json");
        assert_eq!(object_name("Coração (2nd ed.)"), "Coração (2nd ed.).json");
    }

    #[test]
    fn separators_and_traversal_are_encoded() {
        assert_eq!(object_name("../etc/passwd"), "%2E.%2Fetc%2Fpasswd.json");
        assert_eq!(object_name(".."), "%2E..json");
        assert_eq!(object_name("."), "%2E.json");
        assert_eq!(object_name("/abs"), "%2Fabs.json");
        assert_eq!(object_name("C:\\dir\\x"), "C%3A%5Cdir%5Cx.json");
        assert_eq!(object_name("100%"), "100%25.json");
        assert_eq!(object_name(" x"), "%20x.json");
    }

    #[test]
    fn control_and_invisible_characters_are_encoded() {
        assert_eq!(object_name("a\nb\u{0}c\u{7f}"), "a%0Ab%00c%7F.json");
        assert_eq!(object_name("x\u{202e}y"), "x%E2%80%AEy.json");
        for name in [object_name("\u{1}\u{1f}\t\r"), object_name("a\u{200d}b")] {
            assert!(name.chars().all(|c| !c.is_control() && c != '/' && c != '\\'), "{name}");
        }
    }

    #[test]
    fn case_is_kept_so_case_variants_are_distinct() {
        assert_ne!(object_name("Dune"), object_name("DUNE"));
    }

    #[test]
    fn long_titles_are_shortened_with_a_hash_and_stay_distinct() {
        let long_a = "a".repeat(10_000);
        let mut long_b = "a".repeat(9_999);
        long_b.push('b');
        let (name_a, name_b) = (object_name(&long_a), object_name(&long_b));
        assert!(name_a.len() <= MAX_STEM_BYTES + ".json".len());
        assert_ne!(name_a, name_b);
        assert!(name_a.contains('~'));
        // Multi-byte characters and escapes are never cut in half.
        for title in ["é".repeat(500), "/".repeat(500), format!("a{}", "/".repeat(500)), "🙂".repeat(300)] {
            let name = object_name(&title);
            assert!(name.len() <= MAX_STEM_BYTES + 5, "{} bytes", name.len());
            let stem = name.trim_end_matches(".json").split('~').next().unwrap_or_default();
            let complete = stem.rfind('%').is_none_or(|percent| stem.len() - percent >= 3);
            assert!(complete, "{name}");
        }
        // A title that merely contains `~` cannot imitate a shortened name.
        assert_eq!(object_name("a~b"), "a%7Eb.json");
    }
}
