//! The fast path for whole items: when an item's `{` is reached and the item lies
//! complete in the chunk at hand, it is checked here by plain recursive descent over the
//! slice, instead of byte by byte through the resumable state machine. That machine
//! pays for resumability (a mode dispatch and state writes per byte outside strings);
//! an item held whole needs none of it, and most items of a large body are.
//!
//! The rule that keeps the two paths in agreement: this path accepts only items the
//! state machine accepts, and for anything it is not sure of (an error, an escape in a
//! key or an id, a very long number, deep nesting, an item cut by the chunk's end) it
//! answers `None`, and the
//! state machine scans the item from its `{` as before. So every error, with its
//! position and reason, still comes from one place. The scanner's tests hold this:
//! feeding a body byte by byte never completes an item here, and must give the same
//! result as feeding it whole.

use super::{Limits, SHORT_NUMBER, float_in_range, id_in_range, plain_run_end, utf8_lead};

/// Containers nested inside an item beyond this depth (or beyond what the depth limit
/// allows) are left to the state machine (which enforces `max_depth`); real items rarely
/// nest more than a few levels.
const NESTING: u32 = 16;

/// A valid item at the start of a slice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct Item {
    /// Bytes from its `{` to its `}`, both included.
    pub len: usize,
    /// Line feeds inside it (all in whitespace: strings cannot hold raw control bytes).
    pub newlines: u64,
    /// Index just after its last line feed, when it has one.
    pub after_last_newline: usize,
}

/// Checks the item starting at `buf[0]` (a `{`); `None` when it is not certainly
/// valid and complete within `buf`.
pub(super) fn item(buf: &[u8], limits: &Limits) -> Option<Item> {
    let room = usize::try_from(limits.max_item_bytes).unwrap_or(usize::MAX);
    // The item is level 2 (the stack holds the top array and the item), so a container
    // inside it at `depth` (from 0) is level `depth + 3`.
    if limits.max_depth < 2 {
        return None;
    }
    let nesting = NESTING.min(u32::try_from(limits.max_depth - 2).unwrap_or(u32::MAX));
    let cursor_limits = CursorLimits {
        id_chars: limits.max_id_chars as usize,
        name_chars: limits.max_name_chars as usize,
        description_chars: limits.max_description_chars as usize,
        nesting,
        number_chars: SHORT_NUMBER.min(limits.max_number_chars),
    };
    let mut cursor =
        Cursor { buf: &buf[..buf.len().min(room)], at: 1, newlines: 0, after_last_newline: 0, limits: cursor_limits };
    cursor.item_members()?;
    Some(Item { len: cursor.at, newlines: cursor.newlines, after_last_newline: cursor.after_last_newline })
}

/// What an item-level key says its value must be.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Member {
    Id,
    Name,
    Description,
    Other,
}

/// A string just scanned: its content is `buf[start..end]`.
struct Text {
    start: usize,
    end: usize,
    chars: usize,
    /// No byte beyond ASCII (escapes aside).
    ascii: bool,
    escaped: bool,
}

/// The limits, as the fast path applies them (anything beyond goes to the state machine).
struct CursorLimits {
    id_chars: usize,
    name_chars: usize,
    description_chars: usize,
    nesting: u32,
    number_chars: usize,
}

struct Cursor<'a> {
    buf: &'a [u8],
    at: usize,
    newlines: u64,
    after_last_newline: usize,
    limits: CursorLimits,
}

impl Cursor<'_> {
    /// Skips whitespace; the byte after it, not consumed.
    fn next_token(&mut self) -> Option<u8> {
        // Most tokens follow the previous one directly: one test, not the loop's match.
        let byte = *self.buf.get(self.at)?;
        if byte > b' ' {
            return Some(byte);
        }
        loop {
            let byte = *self.buf.get(self.at)?;
            match byte {
                b' ' | b'\t' | b'\r' => {}
                b'\n' => {
                    self.newlines += 1;
                    self.after_last_newline = self.at + 1;
                }
                _ => return Some(byte),
            }
            self.at += 1;
        }
    }

    /// Expects `byte` as the next token and consumes it.
    fn expect(&mut self, byte: u8) -> Option<()> {
        (self.next_token()? == byte).then(|| self.at += 1)
    }

    /// The members of an item, from just after its `{` to just after its `}`.
    fn item_members(&mut self) -> Option<()> {
        let (mut has_id, mut has_name) = (false, false);
        loop {
            self.expect(b'"')?;
            let key = self.unescaped_text()?;
            let member = match &self.buf[key.start..key.end] {
                b"id" => Member::Id,
                b"name" => Member::Name,
                b"description" => Member::Description,
                _ => Member::Other,
            };
            // A repeated id or name is an error the state machine reports.
            match member {
                Member::Id if std::mem::replace(&mut has_id, true) => return None,
                Member::Name if std::mem::replace(&mut has_name, true) => return None,
                _ => {}
            }
            self.expect(b':')?;
            self.member_value(member)?;
            match self.next_token()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return (has_id && has_name).then_some(());
                }
                _ => return None,
            }
        }
    }

    fn member_value(&mut self, member: Member) -> Option<()> {
        let first = self.next_token()?;
        match (member, first) {
            (Member::Id, b'"') => {
                self.at += 1;
                let text = self.unescaped_text()?;
                let content = &self.buf[text.start..text.end];
                let control = content.contains(&0x7F) || (!text.ascii && has_c1_control(content));
                (text.chars <= self.limits.id_chars && nonblank(content) && !control).then_some(())
            }
            (Member::Id, b'-' | b'0'..=b'9') => {
                let start = self.at;
                let integer = self.number()?;
                let digits = std::str::from_utf8(&self.buf[start..self.at]).ok()?;
                (integer && id_in_range(digits)).then_some(())
            }
            (Member::Name, b'"') => {
                self.at += 1;
                let text = self.text()?;
                (text.chars <= self.limits.name_chars && nonblank(&self.buf[text.start..text.end])).then_some(())
            }
            (Member::Description, b'"') => {
                self.at += 1;
                (self.text()?.chars <= self.limits.description_chars).then_some(())
            }
            (Member::Id | Member::Name, _) => None,
            (Member::Description | Member::Other, _) => self.any_value(first, 0),
        }
    }

    /// Any JSON value starting with `first` (not consumed yet), `depth` containers deep
    /// inside the item.
    fn any_value(&mut self, first: u8, depth: u32) -> Option<()> {
        match first {
            b'"' => {
                self.at += 1;
                self.text().map(drop)
            }
            b'-' | b'0'..=b'9' => self.number().map(drop),
            b't' => self.literal(b"true"),
            b'f' => self.literal(b"false"),
            b'n' => self.literal(b"null"),
            b'{' | b'[' if depth < self.limits.nesting => {
                let (object, close) = if first == b'{' { (true, b'}') } else { (false, b']') };
                self.at += 1;
                if self.next_token()? == close {
                    self.at += 1;
                    return Some(());
                }
                loop {
                    if object {
                        self.expect(b'"')?;
                        self.text()?;
                        self.expect(b':')?;
                    }
                    let next = self.next_token()?;
                    self.any_value(next, depth + 1)?;
                    match self.next_token()? {
                        b',' => self.at += 1,
                        byte if byte == close => {
                            self.at += 1;
                            return Some(());
                        }
                        _ => return None,
                    }
                }
            }
            _ => None,
        }
    }

    /// A string's content, from just after its opening quote; consumes the closing one.
    /// Inlined into its callers: as a call (an item has about seven strings), its
    /// prologue and the `Text` returned through memory cost more than most strings'
    /// search; inlined, the scan alone ran about 1.5 times as fast.
    #[inline(always)]
    fn text(&mut self) -> Option<Text> {
        let start = self.at;
        // Bytes beyond the first of each character: what `chars` does not count.
        let (mut extra_bytes, mut ascii, mut escaped) = (0, true, false);
        loop {
            self.at = plain_run_end(self.buf, self.at);
            match *self.buf.get(self.at)? {
                b'"' => {
                    let end = self.at;
                    self.at += 1;
                    return Some(Text { start, end, chars: end - start - extra_bytes, ascii, escaped });
                }
                b'\\' => {
                    let len = escape_len(&self.buf[self.at..])?;
                    extra_bytes += len - 1;
                    escaped = true;
                    self.at += len;
                }
                0x80.. => {
                    let need = utf8_sequence(&self.buf[self.at..])?;
                    extra_bytes += need;
                    ascii = false;
                    self.at += 1 + need;
                }
                // A raw control byte.
                _ => return None,
            }
        }
    }

    /// A string without escapes: item-level keys and ids, whose checks read the raw bytes
    /// (an escaped key may spell `id`, an escaped character in an id may be a control
    /// character); the state machine decodes the others.
    fn unescaped_text(&mut self) -> Option<Text> {
        self.text().filter(|text| !text.escaped)
    }

    /// A number; whether it is an integer. Numbers longer than [`SHORT_NUMBER`] (or the
    /// length limit) are left
    /// to the state machine (which bounds their length), as is a number at the end of the
    /// slice (it may go on in the next chunk); exponents get its range check here.
    fn number(&mut self) -> Option<bool> {
        let buf = self.buf;
        let start = self.at;
        let mut at = start;
        if buf[at] == b'-' {
            at += 1;
        }
        match *buf.get(at)? {
            b'0' => at += 1,
            b'1'..=b'9' => at = digits_end(buf, at + 1)?,
            _ => return None,
        }
        let mut integer = true;
        if *buf.get(at)? == b'.' {
            integer = false;
            if !buf.get(at + 1)?.is_ascii_digit() {
                return None;
            }
            at = digits_end(buf, at + 2)?;
        }
        let mut exponent = false;
        if matches!(buf.get(at)?, b'e' | b'E') {
            (integer, exponent) = (false, true);
            at += 1;
            if matches!(buf.get(at)?, b'+' | b'-') {
                at += 1;
            }
            if !buf.get(at)?.is_ascii_digit() {
                return None;
            }
            at = digits_end(buf, at + 1)?;
        }
        // A digit here follows a leading zero.
        if buf.get(at)?.is_ascii_digit() || at - start > self.limits.number_chars {
            return None;
        }
        if exponent && !float_in_range(std::str::from_utf8(&buf[start..at]).ok()?) {
            return None;
        }
        self.at = at;
        Some(integer)
    }

    fn literal(&mut self, word: &[u8]) -> Option<()> {
        let at = self.at;
        (self.buf.get(at..at + word.len())? == word).then(|| self.at += word.len())
    }
}

/// The index of the first non-digit at or after `at`; `None` at the slice's end.
fn digits_end(buf: &[u8], mut at: usize) -> Option<usize> {
    while buf.get(at)?.is_ascii_digit() {
        at += 1;
    }
    Some(at)
}

/// Continuation bytes of the valid UTF-8 sequence at the start of `bytes` (whose lead
/// byte is not ASCII), checked as the state machine checks them.
fn utf8_sequence(bytes: &[u8]) -> Option<usize> {
    let (need, low, high) = utf8_lead(bytes[0])?;
    let rest = bytes.get(1..1 + usize::from(need))?;
    let valid = (low..=high).contains(&rest[0]) && rest[1..].iter().all(|&byte| (0x80..=0xBF).contains(&byte));
    valid.then_some(usize::from(need))
}

/// The length of the valid escape sequence at the start of `bytes` (a backslash), a
/// surrogate pair taken as one character, as the state machine takes it; `None` for
/// anything it refuses (or that the slice cuts).
fn escape_len(bytes: &[u8]) -> Option<usize> {
    match *bytes.get(1)? {
        b'"' | b'\\' | b'/' | b'b' | b'f' | b'n' | b'r' | b't' => Some(2),
        b'u' => match hex4(bytes.get(2..6)?)? {
            0xD800..=0xDBFF => {
                let low = bytes.get(6..8)? == b"\\u" && (0xDC00..=0xDFFF).contains(&hex4(bytes.get(8..12)?)?);
                low.then_some(12)
            }
            0xDC00..=0xDFFF => None,
            // NUL: an item-level problem the state machine reports.
            0 => None,
            _ => Some(6),
        },
        _ => None,
    }
}

/// The value of four hex digits.
fn hex4(digits: &[u8]) -> Option<u32> {
    digits.iter().try_fold(0, |value, &digit| Some(value * 16 + char::from(digit).to_digit(16)?))
}

/// Whether a string's content (checked by `text`) has a character that is not blank,
/// as the state machine decides for ids and names: a space is blank, and so are the
/// escaped tab, line feed, vertical tab, form feed, carriage return and space.
fn nonblank(content: &[u8]) -> bool {
    let mut at = 0;
    while let Some(&byte) = content.get(at) {
        if byte != b'\\' {
            if byte != b' ' {
                return true;
            }
            at += 1;
            continue;
        }
        let len = escape_len(&content[at..]).unwrap_or(2);
        let blank = match content.get(at + 1) {
            Some(b't' | b'n' | b'f' | b'r') => true,
            Some(b'u') if len == 6 => {
                content.get(at + 2..at + 6).and_then(hex4).is_some_and(|value| matches!(value, 0x09..=0x0D | 0x20))
            }
            _ => false,
        };
        if !blank {
            return true;
        }
        at += len;
    }
    false
}

/// Whether valid UTF-8 `content` holds a C1 control character (U+0080..U+009F).
fn has_c1_control(content: &[u8]) -> bool {
    content.windows(2).any(|pair| pair[0] == 0xC2 && pair[1] < 0xA0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn len(item: &str) -> Option<usize> {
        super::item(item.as_bytes(), &Limits::DEFAULT).map(|item| item.len)
    }

    #[test]
    fn typical_items_are_taken_whole() {
        let items = [
            r#"{"id":"bench-1","name":"Product 1","description":"Solid pine","price":1234}"#,
            r#"{ "name" : "n" , "id" : -9223372036854775808 }"#,
            r#"{"id":18446744073709551615,"name":"Pão 😀","x":[1,-0.5,true,false,null,{"a":{}},[]]}"#,
            r#"{"id":"é","name":"a","description":{"id":[]},"n":0}"#,
            r#"{"id":"1","name":"a","x":1e3,"y":-2.5E-7,"z":0e+0,"w":1.7976931348e308,"v":1e-400}"#,
            r#"{"id":"1","name":"12\" pan, caf\u00e9"}"#,
            r#"{"id":"1","name":" \t\b "}"#,
            r#"{"id":"1","name":"\u0021"}"#,
            r#"{"id":"1","name":"a","description":"line\nbreak, \"quoted\" \\ \/ \u00e9 \ud83d\ude00","x":{"\u0069d":"\t"}}"#,
        ];
        for item in items {
            assert_eq!(len(item), Some(item.len()), "{item}");
            // Trailing bytes (the rest of the chunk) are not part of it.
            assert_eq!(len(&format!("{item},\n{{")), Some(item.len()), "{item}");
        }
        let with_lines = "{\"id\":1,\n\"name\":\"a\"\n}";
        let item = super::item(with_lines.as_bytes(), &Limits::DEFAULT).expect("valid");
        assert_eq!((item.newlines, item.after_last_newline), (2, with_lines.len() - 1));
    }

    #[test]
    fn anything_uncertain_is_left_to_the_state_machine() {
        let items = [
            r#"{"id":"1","name":"a""#,                      // cut by the chunk's end
            r#"{"id":"1","name":"a","price":12"#,           // a number that may go on
            r#"{"id":"1","name":" \t\n\u000b\u0020\r\f"}"#, // a name of escaped blanks
            r#"{"id":"a\u0001","name":"b"}"#,               // an escape in an id
            r#"{"id":"1","name":"a","x":"\x"}"#,            // an invalid escape
            r#"{"id":"1","name":"a","x":"\u12G4"}"#,        // an invalid escape
            r#"{"id":"1","name":"a","x":"\ud800"}"#,        // a lone high surrogate
            r#"{"id":"1","name":"a","x":"\ud800\u0041"}"#,  // a high surrogate without its low
            r#"{"id":"1","name":"a","x":"\udc00"}"#,        // a lone low surrogate
            r#"{"id":"1","name":"a","x":"\u00"#,            // an escape cut by the chunk's end
            r#"{"\u0069d":"1","name":"a"}"#,                // an escaped key
            r#"{"id":"1","name":"a","x":1e400}"#,           // beyond a 64-bit float
            r#"{"id":"1","name":"a","x":1e}"#,              // an exponent without digits
            r#"{"id":"1","name":"a","x":1e+"#,              // an exponent cut by the chunk's end
            r#"{"id":"1","name":"a","x":01}"#,              // a leading zero
            r#"{"id":"1","name":"a","x":1.}"#,              // a fraction without digits
            r#"{"id":"1","name":"a","x":tru}"#,             // a broken literal
            r#"{"id":"1","name":"a","id":"2"}"#,            // a repeated id
            r#"{"id":"1"}"#,                                // no name
            r#"{}"#,                                        // no id
            r#"{"id":1.5,"name":"a"}"#,                     // a fractional id
            r#"{"id":-0,"name":"a"}"#,                      // an id out of range
            r#"{"id":18446744073709551616,"name":"a"}"#,    // an id out of range
            r#"{"id":"","name":"a"}"#,                      // a blank id
            r#"{"id":"1","name":"  "}"#,                    // a blank name
            "{\"id\":\"a\u{7f}\",\"name\":\"x\"}",          // DEL in an id
            "{\"id\":\"a\u{85}\",\"name\":\"x\"}",          // a C1 control in an id
            "{\"id\":\"1\",\"name\":\"a\tb\"}",             // a raw control byte
            r#"{"id":"1","name":"a",}"#,                    // a trailing comma
            r#"{"id":"1","name":"a","x":[1,]}"#,            // a trailing comma
            r#"{"id":true,"name":"a"}"#,                    // an id of the wrong type
            r#"{"id":"1","name":{}}"#,                      // a name of the wrong type
        ];
        for item in items {
            assert_eq!(len(item), None, "{item}");
        }
        let invalid_utf8: &[&[u8]] =
            &[b"{\"id\":\"1\",\"name\":\"\xc0\xaf\"}", b"{\"id\":\"1\",\"name\":\"\xed\xa0\x80\"}"];
        for item in invalid_utf8 {
            assert_eq!(super::item(item, &Limits::DEFAULT), None);
        }
        let long = format!(r#"{{"id":"{}","name":"a"}}"#, "x".repeat(Limits::DEFAULT.max_id_chars as usize + 1));
        assert_eq!(len(&long), None);
        let deep = format!(r#"{{"id":"1","name":"a","x":{}{}}}"#, "[".repeat(17), "]".repeat(17));
        assert_eq!(len(&deep), None);
        let big = format!(r#"{{"id":"1","name":"a","x":"{}"}}"#, "x".repeat(Limits::DEFAULT.max_item_bytes as usize));
        assert_eq!(len(&big), None);
    }
}
