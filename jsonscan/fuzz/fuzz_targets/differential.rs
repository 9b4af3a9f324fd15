//! Differential fuzzing of the scanner: every input is scanned whole, in chunks cut at
//! points derived from the input, and byte by byte (short inputs), under the default
//! limits and under small ones; all must agree exactly (items, spans, error with its
//! position and kind). Then the verdict is compared with serde_json's:
//!
//! - the scanner accepts ⇒ serde_json reads the body as an array of objects, each with
//!   an `id` (a string or a 64-bit integer) and a `name` (a string);
//! - the scanner refuses with an error of class `Syntax` ⇒ serde_json refuses too, at an
//!   offset of the same class (see `same_place`), except for numbers near the edge of a
//!   64-bit float's range, which the scanner refuses a little earlier;
//! - errors of class `Shape` and `Limit` are the scanner's own rules: not compared.
//!
//! Duplicate keys other than an item's `id` and `name` are allowed by both (serde_json's
//! map keeps the last one).

#![no_main]

use jsonscan::{BodyScanner, ErrorClass, ErrorKind, ItemSpan, Limits, ScanError, Summary};
use libfuzzer_sys::fuzz_target;
use serde_json::Value;

type Outcome = Result<(Summary, Vec<ItemSpan>), ScanError>;

const SMALL: Limits = Limits {
    max_depth: 5,
    max_id_chars: 6,
    max_name_chars: 10,
    max_description_chars: 12,
    max_item_bytes: 120,
    max_number_chars: 24,
};

fuzz_target!(|data: &[u8]| {
    for limits in [Limits::DEFAULT, SMALL] {
        let whole = scan(data, limits, &[]);
        for cuts in cut_sets(data) {
            let split = scan(data, limits, &cuts);
            assert_eq!(split, whole, "cut at {cuts:?}");
        }
        if data.len() <= 1024 {
            let cuts: Vec<usize> = (1..data.len()).collect();
            assert_eq!(scan(data, limits, &cuts), whole, "byte by byte");
        }
        compare_with_serde_json(data, &whole);
    }
});

fn scan(data: &[u8], limits: Limits, cuts: &[usize]) -> Outcome {
    let mut scanner = BodyScanner::new(limits);
    let mut spans = Vec::new();
    let mut from = 0;
    for &cut in cuts.iter().chain([data.len()].iter()) {
        scanner.feed(&data[from..cut], |span| spans.push(span))?;
        from = cut;
    }
    Ok((scanner.finish()?, spans))
}

/// Sets of increasing cut points, derived from the input (a hash of it, and its bytes).
fn cut_sets(data: &[u8]) -> Vec<Vec<usize>> {
    let len = data.len();
    if len < 2 {
        return Vec::new();
    }
    let mut hash: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        hash = (hash ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut sets = Vec::new();
    // One cut, then three, at hashed points.
    let one = 1 + (hash as usize) % (len - 1);
    sets.push(vec![one]);
    let mut three: Vec<usize> = (0..3).map(|k| 1 + ((hash >> (16 * (k + 1))) as usize) % (len - 1)).collect();
    three.sort_unstable();
    three.dedup();
    sets.push(three);
    // Right after every structural byte and every quote, backslash or byte ≥ 0x80.
    let special: Vec<usize> =
        (1..len).filter(|&i| matches!(data[i - 1], b'{' | b'[' | b'"' | b'\\' | b':' | b',' | 0x80..)).collect();
    if !special.is_empty() {
        sets.push(special);
    }
    sets
}

fn compare_with_serde_json(data: &[u8], ours: &Outcome) {
    let theirs = serde_json::from_slice::<Value>(data);
    match (ours, &theirs) {
        (Ok((summary, spans)), Ok(value)) => {
            let items = value.as_array().expect("accepted, so an array");
            assert_eq!(items.len() as u64, summary.items);
            assert_eq!(spans.len(), items.len());
            for (item, span) in items.iter().zip(spans) {
                let object = item.as_object().expect("an object");
                let id = &object["id"];
                assert!(id.is_string() || id.is_i64() || id.is_u64(), "id {id}");
                assert!(object["name"].is_string());
                let alone: Value =
                    serde_json::from_slice(&data[span.start as usize..span.end as usize]).expect("the item alone");
                assert_eq!(&alone, item);
            }
        }
        (Ok(_), Err(error)) => panic!("accepted, but serde_json says {error}"),
        (Err(error), _) if error.class() != ErrorClass::Syntax => {}
        // A number at the edge of the range: the scanner's bound is a little below f64::MAX.
        (Err(error), Ok(_)) if error.kind == ErrorKind::NumberOutOfRange => {}
        (Err(error), Ok(_)) => panic!("refused ({error}), but serde_json accepts"),
        (Err(error), Err(theirs)) => {
            let at = serde_offset(data, theirs);
            let range = theirs.to_string().starts_with("number out of range");
            assert!(
                same_place(data, error, at) || (range && cut_number(data, error, at)),
                "{error}; serde_json: {theirs} (byte {at})"
            );
        }
    }
}

/// The byte offset serde_json's line and column point at. Its column counts bytes from
/// the line's start, and is 0 when the error is on the line feed that ends the line
/// before: then the offset is that line feed's.
fn serde_offset(data: &[u8], error: &serde_json::Error) -> i64 {
    let mut line_start = 0;
    for _ in 1..error.line() {
        match data[line_start..].iter().position(|&b| b == b'\n') {
            Some(lf) => line_start += lf + 1,
            None => break,
        }
    }
    line_start as i64 + error.column() as i64 - 1
}

/// Whether serde_json's error offset `theirs` is in the same place as the scanner's:
///
/// - the same byte, or the byte before (at the body's end serde_json points at the last
///   byte, the scanner just past it; serde_json sometimes names the last byte it
///   consumed rather than the offending one), or the byte after;
/// - escapes: the scanner points at the `\` of a bad `\u` surrogate escape, serde_json
///   after the four (or ten) digits it read ahead: up to 12 bytes later;
/// - UTF-8: the scanner points at the first invalid byte, serde_json checks a string's
///   UTF-8 when it reaches the string's end, so it may first meet another error later in
///   the string (a bad escape, a control byte): anywhere from 3 bytes before to the
///   string's closing quote (plus a `\u` escape's read-ahead of up to 5 bytes);
/// - a number out of range: the scanner points at its start, serde_json within it or
///   just after it.
fn same_place(data: &[u8], error: &ScanError, theirs: i64) -> bool {
    let ours = error.offset as i64;
    if (ours - 1..=ours + 1).contains(&theirs) {
        return true;
    }
    let from = error.offset as usize;
    match error.kind {
        ErrorKind::LoneHighSurrogate
        | ErrorKind::LoneLowSurrogate
        | ErrorKind::InvalidHexDigit { .. }
        | ErrorKind::InvalidEscape { .. } => (ours - 1..=ours + 12).contains(&theirs),
        // Any error of serde_json's in the rest of the string (an escape's read-ahead included).
        ErrorKind::InvalidUtf8 => (ours - 3..=string_end(data, from) as i64 + 6).contains(&theirs),
        ErrorKind::NumberOutOfRange => {
            let end = data[from..]
                .iter()
                .position(|b| !matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
                .map_or(data.len(), |k| from + k);
            (ours..=end as i64 + 1).contains(&theirs)
        }
        _ => false,
    }
}

/// serde_json finds an exponent out of range while reading its digits, so it reports it
/// before the scanner's error when that error is where the number ends (the body's end,
/// a bad byte after it): a serde_json range error at `theirs`, with only number bytes
/// from there to the scanner's error.
fn cut_number(data: &[u8], error: &ScanError, theirs: i64) -> bool {
    let (Ok(theirs), Ok(ours)) = (usize::try_from(theirs), usize::try_from(error.offset)) else {
        return false;
    };
    theirs <= ours
        && data[theirs..ours.min(data.len())]
            .iter()
            .all(|b| matches!(b, b'-' | b'+' | b'.' | b'e' | b'E' | b'0'..=b'9'))
}

/// The index of the closing quote of the string `from` is in (or the body's length).
fn string_end(data: &[u8], from: usize) -> usize {
    let mut at = from;
    while at < data.len() {
        match data[at] {
            b'\\' => at += 2,
            b'"' => return at,
            _ => at += 1,
        }
    }
    data.len()
}
