//! An incremental JSON scanner for bulk-upload bodies: fed chunk by chunk (chunks may
//! split a token anywhere, even inside a UTF-8 sequence or an escape), it checks that
//! the bytes are one JSON array of product objects, reports where each item lies, and
//! reports the first error with its byte offset, line and column. serde_json cannot
//! resume across chunks, hence this state machine; it keeps no more than a few small
//! buffers, whatever the body size.
//!
//! What it accepts is a subset of what serde_json accepts (strict RFC 8259 plus the
//! [`Limits`]), so a caller that re-reads an item's bytes ([`ItemSpan`]) with serde_json
//! never meets an item serde_json cannot read.
//!
//! The shape: the body is `[item, …]` (an empty array is allowed); each item is an object
//! with an `"id"` (a string of at most [`Limits::max_id_chars`] characters, not blank,
//! without control characters; or an integer in the 64-bit range) and a `"name"` (a
//! string of at most [`Limits::max_name_chars`] characters, not blank), each exactly
//! once; a `"description"` string has at most [`Limits::max_description_chars`]
//! characters; any other fields are allowed. Limits that keep memory flat and items
//! small: an item is at most [`Limits::max_item_bytes`] bytes, nesting at most
//! [`Limits::max_depth`] levels (the top array counts as one), a number at most
//! [`Limits::max_number_chars`] characters and within the range of a 64-bit float.
//!
//! ```
//! use jsonscan::{BodyScanner, Limits};
//!
//! let mut scanner = BodyScanner::new(Limits::DEFAULT);
//! let mut spans = Vec::new();
//! scanner.feed(br#"[{"id": "a-1", "na"#, |span| spans.push(span)).unwrap();
//! scanner.feed(br#"me": "Mesa"}]"#, |span| spans.push(span)).unwrap();
//! let summary = scanner.finish().unwrap();
//! assert_eq!((summary.items, spans[0].start, spans[0].end), (1, 1, 30));
//! ```

// One `unsafe` block in the crate: the SSE2 load in `plain_run_end`, allowed there alone.
#![deny(unsafe_code)]

mod error;
mod fast;

pub use error::{ErrorClass, ErrorKind, Field, Path, ScanError};

/// The limits a scanner enforces.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Deepest nesting accepted; the top-level array is level 1, an item level 2.
    pub max_depth: usize,
    /// Longest `id` string, in characters.
    pub max_id_chars: u32,
    /// Longest `name`, in characters.
    pub max_name_chars: u32,
    /// Longest `description` string, in characters.
    pub max_description_chars: u32,
    /// Largest item, in bytes from its `{` to its `}`.
    pub max_item_bytes: u64,
    /// Longest number token, in characters.
    pub max_number_chars: usize,
}

impl Limits {
    /// 64 levels, ids of 100 characters, names of 200, descriptions of 10,000, items of
    /// 128 KiB, numbers of 1,000 characters.
    pub const DEFAULT: Limits = Limits {
        max_depth: 64,
        max_id_chars: 100,
        max_name_chars: 200,
        max_description_chars: 10_000,
        max_item_bytes: 128 * 1024,
        max_number_chars: 1000,
    };
}

impl Default for Limits {
    fn default() -> Self {
        Self::DEFAULT
    }
}

/// Numbers up to this long without a fraction or exponent are always within a 64-bit
/// float's range; longer ones, and the others, get [`float_in_range`].
const SHORT_NUMBER: usize = 300;

/// Where one item of the top-level array lies in the body: bytes `start..end`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ItemSpan {
    /// Position in the array, from 0.
    pub index: u64,
    pub start: u64,
    pub end: u64,
}

/// A problem confined to one item, recorded by a scanner made with
/// [`BodyScanner::reporting_item_issues`], which then goes on with the body: the item
/// stays JSON (its span is still reported), only its content is refused. At most one per
/// member of the item (the first), plus a missing `id` or `name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ItemIssue {
    /// The item's position in the array, from 0.
    pub index: u64,
    /// Byte offset of the problem.
    pub offset: u64,
    /// Byte offset of the opening quote of the key of the item's member that holds the
    /// problem; `None` when it concerns the item as a whole (a missing `id` or `name`).
    pub member: Option<u64>,
    pub kind: ErrorKind,
}

/// What a complete, valid body holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Summary {
    pub items: u64,
    pub bytes: u64,
}

/// What the value about to start must be.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    /// An element of the top-level array: must be an object.
    Item,
    /// The `id` of an item: a string or an integer.
    Id,
    /// The `name` of an item: a string.
    Name,
    /// The `description` of an item: anything, but a string is bounded.
    Description,
    /// Anything.
    Free,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Frame {
    Array,
    Object,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Mode {
    /// Before the top-level array.
    Start,
    /// A value must start here.
    Value(Role),
    /// Right after `[`: a value or `]`.
    ArrayFirst,
    /// After an array element: `,` or `]`.
    ArrayNext,
    /// Right after `{`: a key or `}`.
    ObjectFirst,
    /// After `,` in an object: a key.
    ObjectKey,
    /// After a key: `:`.
    Colon,
    /// After a member's value: `,` or `}`.
    ObjectNext,
    /// Inside a string (see `Text`).
    Text,
    /// Inside a number (see `Number`).
    Number,
    /// Inside `true`, `false` or `null`: the bytes still expected.
    Literal(&'static [u8]),
    /// After the top-level array: only whitespace may follow.
    Done,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Escape {
    None,
    /// After `\`.
    Backslash,
    /// Inside `\uXXXX`: digits left, value so far, whether it must be a low surrogate.
    Hex {
        left: u8,
        value: u32,
        low: bool,
    },
    /// After a high surrogate escape: `\` must follow.
    AfterHigh,
    /// After a high surrogate escape and `\`: `u` must follow.
    AfterHighBackslash,
}

/// What the string being scanned is, and what we track about it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TextKind {
    /// An object key; `item_level` when it is a key of an item (the one level we decode).
    Key {
        item_level: bool,
    },
    Value(Role),
}

#[derive(Debug, Clone, Copy)]
struct Text {
    kind: TextKind,
    start: u64,
    chars: u32,
    limit: u32,
    escape: Escape,
    /// Continuation bytes still expected in the current UTF-8 sequence, and the range
    /// allowed for the next one.
    utf8_need: u8,
    utf8_lo: u8,
    utf8_hi: u8,
    /// Whether a character other than a space was seen (for `id` and `name`).
    nonblank: bool,
    /// The previous byte was the lead byte 0xC2 (U+0080..U+00BF, where C1 controls are).
    after_c2: bool,
    /// The decoded key, when short and ASCII (enough to recognise `id`, `name`, `description`).
    key: [u8; 12],
    key_len: u8,
    key_other: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum NumPhase {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

#[derive(Debug, Clone)]
struct Number {
    phase: NumPhase,
    role: Role,
    start: u64,
    fraction_or_exponent: bool,
    text: Vec<u8>,
}

/// The scanner. Feed it chunks with [`BodyScanner::feed`], then call [`BodyScanner::finish`].
#[derive(Debug, Clone)]
pub struct BodyScanner {
    mode: Mode,
    stack: Vec<Frame>,
    offset: u64,
    line: u64,
    line_start: u64,
    items: u64,
    /// Offset of the current item's `{`, while inside one.
    item_start: Option<u64>,
    item_has_id: bool,
    item_has_name: bool,
    /// Role of the value after the current key's `:`.
    member_role: Role,
    text: Text,
    number: Number,
    failed: Option<ScanError>,
    limits: Limits,
    /// Whether item-level problems are recorded (and scanning goes on) instead of failing.
    report_item_issues: bool,
    issues: Vec<ItemIssue>,
    /// Offset of the current item-level key's opening quote, while inside its member.
    member_start: Option<u64>,
    /// Whether the current member already has its issue.
    member_flagged: bool,
}

/// Byte classes for the fast path inside strings: true for bytes that need no attention
/// (printable ASCII other than `"` and `\`).
const PLAIN: [bool; 256] = {
    let mut table = [false; 256];
    let mut b = 0x20;
    while b < 0x80 {
        table[b] = b != b'"' as usize && b != b'\\' as usize;
        b += 1;
    }
    table
};

/// The index of the first byte at or after `i` that is not [`PLAIN`] (or `buf.len()`).
/// Strings are most of a body's bytes and this was the scan's hottest loop: on x86_64 it
/// tests sixteen bytes at a time with SSE2 (part of every x86_64), elsewhere and for the
/// last bytes eight at a time (SWAR); the table finishes the job.
#[allow(unsafe_code)]
fn plain_run_end(buf: &[u8], mut i: usize) -> usize {
    #[cfg(target_arch = "x86_64")]
    while let Some(bytes) = buf.get(i..i + 16) {
        use std::arch::x86_64::{
            _mm_cmpeq_epi8, _mm_cmplt_epi8, _mm_loadu_si128, _mm_movemask_epi8, _mm_or_si128, _mm_set1_epi8,
        };
        // SAFETY: `bytes` holds the 16 bytes the unaligned load reads; SSE2 is always there
        // on x86_64.
        let special = unsafe {
            let v = _mm_loadu_si128(bytes.as_ptr().cast());
            let quote = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'"' as i8));
            let backslash = _mm_cmpeq_epi8(v, _mm_set1_epi8(b'\\' as i8));
            // A signed comparison: control bytes (below 0x20) and non-ASCII bytes (0x80 and
            // up, negative as i8) at once.
            let low = _mm_cmplt_epi8(v, _mm_set1_epi8(0x20));
            _mm_movemask_epi8(_mm_or_si128(_mm_or_si128(quote, backslash), low))
        };
        if special != 0 {
            return i + special.trailing_zeros() as usize;
        }
        i += 16;
    }
    const ONES: u64 = 0x0101_0101_0101_0101;
    const HIGHS: u64 = 0x8080_8080_8080_8080;
    // Nonzero when some byte of `v` is below `n` (n ≤ 0x80); never misses one.
    let has_below = |v: u64, n: u8| v.wrapping_sub(ONES * u64::from(n)) & !v & HIGHS;
    while let Some(bytes) = buf.get(i..i + 8) {
        let mut word = [0u8; 8];
        word.copy_from_slice(bytes);
        let word = u64::from_le_bytes(word);
        let special = has_below(word ^ (ONES * u64::from(b'"')), 1)
            | has_below(word ^ (ONES * u64::from(b'\\')), 1)
            | has_below(word, 0x20)
            | (word & HIGHS);
        if special != 0 {
            break;
        }
        i += 8;
    }
    while i < buf.len() && PLAIN[usize::from(buf[i])] {
        i += 1;
    }
    i
}

/// For a UTF-8 lead byte (not ASCII): how many continuation bytes follow, and the range
/// of the first, which excludes overlong forms, surrogates and code points beyond
/// U+10FFFF. `None` for a byte that cannot start a character.
fn utf8_lead(b: u8) -> Option<(u8, u8, u8)> {
    Some(match b {
        0xC2..=0xDF => (1, 0x80, 0xBF),
        0xE0 => (2, 0xA0, 0xBF),
        0xE1..=0xEC | 0xEE..=0xEF => (2, 0x80, 0xBF),
        0xED => (2, 0x80, 0x9F),
        0xF0 => (3, 0x90, 0xBF),
        0xF1..=0xF3 => (3, 0x80, 0xBF),
        0xF4 => (3, 0x80, 0x8F),
        _ => return None,
    })
}

/// Whether an integer is an id we take: within the range of an i64 or a u64, and not
/// `-0`.
fn id_in_range(text: &str) -> bool {
    match text.strip_prefix('-') {
        Some(_) => text != "-0" && text.parse::<i64>().is_ok(),
        None => text.parse::<u64>().is_ok(),
    }
}

/// Whether a number is within the range of a 64-bit float: serde_json, which decodes
/// items at ingestion, refuses the others.
fn float_in_range(text: &str) -> bool {
    let value: f64 = text.parse().unwrap_or(f64::INFINITY);
    value.is_finite() && value.abs() <= 1.797_693_134_862e308
}

fn is_ws(b: u8) -> bool {
    matches!(b, b' ' | b'\t' | b'\n' | b'\r')
}

impl BodyScanner {
    pub fn new(limits: Limits) -> Self {
        Self {
            mode: Mode::Start,
            stack: Vec::with_capacity(8),
            offset: 0,
            line: 1,
            line_start: 0,
            items: 0,
            item_start: None,
            item_has_id: false,
            item_has_name: false,
            member_role: Role::Free,
            text: Text {
                kind: TextKind::Value(Role::Free),
                start: 0,
                chars: 0,
                limit: u32::MAX,
                escape: Escape::None,
                utf8_need: 0,
                utf8_lo: 0,
                utf8_hi: 0,
                nonblank: false,
                after_c2: false,
                key: [0; 12],
                key_len: 0,
                key_other: false,
            },
            number: Number {
                phase: NumPhase::Minus,
                role: Role::Free,
                start: 0,
                fraction_or_exponent: false,
                text: Vec::with_capacity(32),
            },
            failed: None,
            limits,
            report_item_issues: false,
            issues: Vec::new(),
            member_start: None,
            member_flagged: false,
        }
    }

    /// A scanner that records item-level problems as [`ItemIssue`]s and goes on with the
    /// body instead of stopping at them: a NUL character (`\u0000`) in any string, a
    /// number beyond a 64-bit float's range, an `id`, `name` or `description` beyond its
    /// limit, a missing, repeated, blank or mistyped `id` or `name`, a control character
    /// in an id. Errors of the body itself (syntax, the shape outside items, nesting,
    /// item size, number length) still stop it, as [`BodyScanner::new`]'s do.
    pub fn reporting_item_issues(limits: Limits) -> Self {
        Self { report_item_issues: true, ..Self::new(limits) }
    }

    /// The item issues recorded since the last call, in body order.
    pub fn take_item_issues(&mut self) -> Vec<ItemIssue> {
        std::mem::take(&mut self.issues)
    }

    /// The limits it enforces.
    pub fn limits(&self) -> &Limits {
        &self.limits
    }

    /// Bytes consumed so far.
    pub fn offset(&self) -> u64 {
        self.offset
    }

    /// Items completed so far.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// Offset of the `{` of the item being scanned, if one is open.
    pub fn open_item_start(&self) -> Option<u64> {
        self.item_start
    }

    /// Scans the next chunk, calling `on_item` for every item that closes in it. After an
    /// error every later call returns the same error.
    pub fn feed<F: FnMut(ItemSpan)>(&mut self, chunk: &[u8], mut on_item: F) -> Result<(), ScanError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        let mut rest = chunk;
        while !rest.is_empty() {
            // Inside an item, never scan past the byte where it would become too large.
            let room = match self.item_start {
                Some(start) => start.saturating_add(self.limits.max_item_bytes).saturating_sub(self.offset),
                None => u64::MAX,
            };
            if room == 0 {
                let kind = ErrorKind::ItemTooLarge { index: self.items, max: self.limits.max_item_bytes };
                return Err(self.fail(self.offset, kind));
            }
            let take = usize::try_from(room).unwrap_or(usize::MAX).min(rest.len());
            let used = self.run(&rest[..take], &mut on_item)?;
            rest = &rest[used..];
        }
        Ok(())
    }

    /// Declares the end of the body: the summary when it was one complete array.
    pub fn finish(mut self) -> Result<Summary, ScanError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.mode == Mode::Done {
            return Ok(Summary { items: self.items, bytes: self.offset });
        }
        let kind = if self.offset == 0 {
            ErrorKind::EmptyBody
        } else {
            let expected = match self.mode {
                Mode::Start => "a JSON array of products",
                Mode::Text => "the end of a string",
                Mode::ArrayFirst | Mode::ArrayNext => "',' or ']'",
                Mode::ObjectFirst | Mode::ObjectKey | Mode::ObjectNext => "'\"' or '}'",
                Mode::Colon => "':'",
                _ => "more",
            };
            ErrorKind::UnexpectedEnd { expected }
        };
        Err(self.fail(self.offset, kind))
    }

    /// An item-level problem: recorded when this scanner reports item issues and it lies
    /// inside an item, else the body's error.
    fn item_issue(&mut self, offset: u64, kind: ErrorKind) -> Result<(), ScanError> {
        if !self.report_item_issues || self.item_start.is_none() {
            return Err(self.fail(offset, kind));
        }
        if self.member_start.is_some() && std::mem::replace(&mut self.member_flagged, true) {
            return Ok(());
        }
        self.issues.push(ItemIssue { index: self.items, offset, member: self.member_start, kind });
        Ok(())
    }

    fn fail(&mut self, offset: u64, kind: ErrorKind) -> ScanError {
        let error = ScanError { offset, line: self.line, column: offset - self.line_start + 1, kind };
        self.offset = offset;
        self.failed = Some(error.clone());
        error
    }

    /// `$[3]` or `$[3].name` for messages.
    fn path(&self, role: Role) -> Path {
        let field = match role {
            Role::Item | Role::Free => None,
            Role::Id => Some(Field::Id),
            Role::Name => Some(Field::Name),
            Role::Description => Some(Field::Description),
        };
        Path { index: self.items, field }
    }

    fn after_value(&mut self) {
        self.mode = match self.stack.last() {
            None => Mode::Done,
            Some(Frame::Array) => Mode::ArrayNext,
            Some(Frame::Object) => Mode::ObjectNext,
        };
    }

    fn element_role(&self) -> Role {
        if self.stack.len() == 1 { Role::Item } else { Role::Free }
    }

    /// Scans `buf` until its end or until an item opens (so `feed` can bound it); returns
    /// the bytes consumed.
    fn run<F: FnMut(ItemSpan)>(&mut self, buf: &[u8], on_item: &mut F) -> Result<usize, ScanError> {
        let base = self.offset;
        let mut i = 0;
        let len = buf.len();
        while i < len {
            let b = buf[i];
            let at = base + i as u64;
            match self.mode {
                Mode::Text => {
                    i = self.scan_text(buf, i, base)?;
                }
                Mode::Number => {
                    // Returns without consuming the byte that ends the number.
                    i = self.scan_number(buf, i, base)?;
                }
                Mode::Literal(expected) => {
                    if b != expected[0] {
                        return Err(self.fail(at, ErrorKind::InvalidLiteral { found: b }));
                    }
                    i += 1;
                    if expected.len() == 1 {
                        self.after_value();
                    } else {
                        self.mode = Mode::Literal(&expected[1..]);
                    }
                }
                _ if is_ws(b) => {
                    if b == b'\n' {
                        self.line += 1;
                        self.line_start = at + 1;
                    }
                    i += 1;
                }
                Mode::Start => match b {
                    b'[' => {
                        self.stack.push(Frame::Array);
                        self.mode = Mode::ArrayFirst;
                        i += 1;
                    }
                    0x1F => return Err(self.fail(at, ErrorKind::Compressed)),
                    0xEF => return Err(self.fail(at, ErrorKind::ByteOrderMark)),
                    other => return Err(self.fail(at, ErrorKind::NotAnArray { found: other })),
                },
                Mode::ArrayFirst if b == b']' => {
                    i += 1;
                    self.close(Frame::Array, at, on_item)?;
                }
                Mode::ArrayFirst => {
                    self.mode = Mode::Value(self.element_role());
                }
                Mode::ArrayNext => match b {
                    b',' => {
                        self.mode = Mode::Value(self.element_role());
                        i += 1;
                    }
                    b']' => {
                        i += 1;
                        self.close(Frame::Array, at, on_item)?;
                    }
                    other => {
                        let after_item = (self.stack.len() == 1).then(|| self.items.saturating_sub(1));
                        return Err(self.fail(at, ErrorKind::ExpectedCommaOrBracket { after_item, found: other }));
                    }
                },
                Mode::ObjectFirst | Mode::ObjectKey => match b {
                    b'"' => {
                        let item_level = self.stack.len() == 2;
                        if item_level {
                            self.member_start = Some(at);
                            self.member_flagged = false;
                        }
                        self.begin_text(TextKind::Key { item_level }, at, u32::MAX);
                        i += 1;
                    }
                    b'}' if self.mode == Mode::ObjectFirst => {
                        i += 1;
                        self.close(Frame::Object, at, on_item)?;
                    }
                    b'}' => {
                        return Err(self.fail(at, ErrorKind::TrailingComma { in_object: true }));
                    }
                    other => {
                        return Err(self.fail(at, ErrorKind::ExpectedKey { found: other }));
                    }
                },
                Mode::Colon => {
                    if b != b':' {
                        return Err(self.fail(at, ErrorKind::ExpectedColon { found: b }));
                    }
                    self.mode = Mode::Value(self.member_role);
                    i += 1;
                }
                Mode::ObjectNext => match b {
                    b',' => {
                        self.mode = Mode::ObjectKey;
                        i += 1;
                    }
                    b'}' => {
                        i += 1;
                        self.close(Frame::Object, at, on_item)?;
                    }
                    other => {
                        return Err(self.fail(at, ErrorKind::ExpectedCommaOrBrace { found: other }));
                    }
                },
                Mode::Value(role) => {
                    if role == Role::Item
                        && b == b'{'
                        && let Some(item) = fast::item(&buf[i..], &self.limits)
                    {
                        self.whole_item(item, at, on_item);
                        i += item.len;
                        continue;
                    }
                    let opened_item = self.begin_value(role, b, at)?;
                    i += 1;
                    if opened_item {
                        // Let `feed` bound the rest by the item size limit.
                        break;
                    }
                }
                Mode::Done => {
                    return Err(self.fail(at, ErrorKind::AfterEnd { found: b }));
                }
            }
        }
        self.offset = base + i as u64;
        Ok(i)
    }

    /// Records an item the fast path checked whole (its `{` is at `at`), leaving the
    /// scanner as if it had scanned it byte by byte.
    fn whole_item<F: FnMut(ItemSpan)>(&mut self, item: fast::Item, at: u64, on_item: &mut F) {
        if item.newlines > 0 {
            self.line += item.newlines;
            self.line_start = at + item.after_last_newline as u64;
        }
        on_item(ItemSpan { index: self.items, start: at, end: at + item.len as u64 });
        self.items += 1;
        self.mode = Mode::ArrayNext;
    }

    /// A value starts with byte `b`; returns whether it opened an item.
    fn begin_value(&mut self, role: Role, b: u8, at: u64) -> Result<bool, ScanError> {
        let wrong_type = |this: &mut Self, expected: &'static str| {
            let path = this.path(role);
            this.fail(at, ErrorKind::WrongType { path, expected, found: b })
        };
        match (b, role) {
            (b'{', Role::Item | Role::Free | Role::Description) => {
                self.push(Frame::Object, at)?;
                self.mode = Mode::ObjectFirst;
                if role == Role::Item {
                    self.item_start = Some(at);
                    self.item_has_id = false;
                    self.item_has_name = false;
                    self.member_start = None;
                    return Ok(true);
                }
            }
            (b'[', Role::Free | Role::Description) => {
                self.push(Frame::Array, at)?;
                self.mode = Mode::ArrayFirst;
            }
            (b'"', Role::Id) => self.begin_text(TextKind::Value(Role::Id), at, self.limits.max_id_chars),
            (b'"', Role::Name) => self.begin_text(TextKind::Value(Role::Name), at, self.limits.max_name_chars),
            (b'"', Role::Description) => {
                self.begin_text(TextKind::Value(Role::Description), at, self.limits.max_description_chars);
            }
            (b'"', Role::Free) => self.begin_text(TextKind::Value(Role::Free), at, u32::MAX),
            (b'-' | b'0'..=b'9', Role::Id | Role::Free | Role::Description) => {
                self.number.phase = match b {
                    b'-' => NumPhase::Minus,
                    b'0' => NumPhase::Zero,
                    _ => NumPhase::Int,
                };
                self.number.role = if role == Role::Id { Role::Id } else { Role::Free };
                self.number.start = at;
                self.number.fraction_or_exponent = false;
                self.number.text.clear();
                self.number.text.push(b);
                self.mode = Mode::Number;
            }
            (b't', Role::Free | Role::Description) => self.mode = Mode::Literal(b"rue"),
            (b'f', Role::Free | Role::Description) => self.mode = Mode::Literal(b"alse"),
            (b'n', Role::Free | Role::Description) => self.mode = Mode::Literal(b"ull"),
            (b']', Role::Item | Role::Free) if self.stack.last() == Some(&Frame::Array) => {
                return Err(self.fail(at, ErrorKind::TrailingComma { in_object: false }));
            }
            (b'{' | b'[' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n', _) => {
                let expected = match role {
                    Role::Item => "an object with \"id\" and \"name\"",
                    Role::Id => "a string or an integer",
                    _ => "a string",
                };
                if role == Role::Item {
                    return Err(wrong_type(self, expected));
                }
                let path = self.path(role);
                self.item_issue(at, ErrorKind::WrongType { path, expected, found: b })?;
                // Recorded: the value is scanned on as any value.
                return self.begin_value(Role::Free, b, at);
            }
            (other, _) => {
                return Err(self.fail(at, ErrorKind::ExpectedValue { found: other }));
            }
        }
        Ok(false)
    }

    fn push(&mut self, frame: Frame, at: u64) -> Result<(), ScanError> {
        if self.stack.len() >= self.limits.max_depth {
            return Err(self.fail(at, ErrorKind::TooDeep { max: self.limits.max_depth }));
        }
        self.stack.push(frame);
        Ok(())
    }

    /// Closes the innermost container (its closing byte is at `at`).
    fn close<F: FnMut(ItemSpan)>(&mut self, frame: Frame, at: u64, on_item: &mut F) -> Result<(), ScanError> {
        debug_assert_eq!(self.stack.last(), Some(&frame));
        if frame == Frame::Object && self.stack.len() == 2 {
            let index = self.items;
            self.member_start = None;
            if !self.item_has_id {
                self.item_issue(at, ErrorKind::Missing { index, field: Field::Id })?;
            }
            if !self.item_has_name {
                self.item_issue(at, ErrorKind::Missing { index, field: Field::Name })?;
            }
            let start = self.item_start.take().unwrap_or(at);
            on_item(ItemSpan { index, start, end: at + 1 });
            self.items += 1;
        }
        self.stack.pop();
        self.after_value();
        Ok(())
    }

    fn begin_text(&mut self, kind: TextKind, at: u64, limit: u32) {
        self.text.kind = kind;
        self.text.start = at;
        self.text.chars = 0;
        self.text.limit = limit;
        self.text.escape = Escape::None;
        self.text.utf8_need = 0;
        self.text.nonblank = false;
        self.text.after_c2 = false;
        self.text.key_len = 0;
        self.text.key_other = false;
        self.mode = Mode::Text;
    }

    fn key_push(&mut self, byte: u8) {
        if let TextKind::Key { item_level: true } = self.text.kind {
            let len = usize::from(self.text.key_len);
            if len < self.text.key.len() && byte.is_ascii() {
                self.text.key[len] = byte;
                self.text.key_len += 1;
            } else {
                self.text.key_other = true;
            }
        }
    }

    /// Counts one more character (starting at `at`) against the string's limit.
    fn count_char(&mut self, at: u64) -> Result<(), ScanError> {
        self.text.chars += 1;
        if self.text.chars > self.text.limit {
            self.too_long(at)?;
        }
        Ok(())
    }

    fn too_long(&mut self, at: u64) -> Result<(), ScanError> {
        let max = self.text.limit;
        // Reported once: the rest of the string is scanned without a limit.
        self.text.limit = u32::MAX;
        match self.text.kind {
            TextKind::Value(role) => {
                let path = Some(self.path(role));
                self.item_issue(at, ErrorKind::TooLong { path, max })
            }
            TextKind::Key { .. } => Err(self.fail(at, ErrorKind::TooLong { path: None, max })),
        }
    }

    /// Notes an escaped character (code point `value`, starting at `at`) of the string:
    /// whether it makes the string non-blank, and whether an id may hold it.
    fn note_char(&mut self, value: u32, at: u64) -> Result<(), ScanError> {
        let control = value < 0x20 || (0x7F..=0x9F).contains(&value);
        if control && self.text.kind == TextKind::Value(Role::Id) {
            self.control_in_id(at)?;
        }
        if value == 0 {
            let role = match self.text.kind {
                TextKind::Value(role) => role,
                TextKind::Key { .. } => Role::Free,
            };
            let path = self.path(role);
            self.item_issue(at, ErrorKind::NulCharacter { path })?;
        }
        if !matches!(value, 0x09..=0x0D | 0x20) {
            self.text.nonblank = true;
        }
        Ok(())
    }

    fn control_in_id(&mut self, at: u64) -> Result<(), ScanError> {
        self.item_issue(at, ErrorKind::ControlInId { index: self.items })
    }

    /// Scans string bytes from `i`; returns the next index.
    fn scan_text(&mut self, buf: &[u8], mut i: usize, base: u64) -> Result<usize, ScanError> {
        let len = buf.len();
        while i < len {
            let b = buf[i];
            let at = base + i as u64;
            if self.text.utf8_need > 0 {
                if b < self.text.utf8_lo || b > self.text.utf8_hi {
                    return Err(self.fail(at, ErrorKind::InvalidUtf8));
                }
                if self.text.after_c2 && b < 0xA0 && self.text.kind == TextKind::Value(Role::Id) {
                    self.control_in_id(at - 1)?;
                }
                self.text.after_c2 = false;
                self.text.utf8_need -= 1;
                self.text.utf8_lo = 0x80;
                self.text.utf8_hi = 0xBF;
                i += 1;
                continue;
            }
            match self.text.escape {
                Escape::None => {}
                Escape::Backslash => {
                    let decoded = match b {
                        b'"' => b'"',
                        b'\\' => b'\\',
                        b'/' => b'/',
                        b'b' => 0x08,
                        b'f' => 0x0C,
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'u' => {
                            self.text.escape = Escape::Hex { left: 4, value: 0, low: false };
                            i += 1;
                            continue;
                        }
                        other => {
                            return Err(self.fail(at, ErrorKind::InvalidEscape { found: other }));
                        }
                    };
                    // The character started at the backslash.
                    self.count_char(at - 1)?;
                    self.note_char(u32::from(decoded), at - 1)?;
                    self.key_push(decoded);
                    self.text.escape = Escape::None;
                    i += 1;
                    continue;
                }
                Escape::Hex { left, value, low } => {
                    let digit = match b {
                        b'0'..=b'9' => b - b'0',
                        b'a'..=b'f' => b - b'a' + 10,
                        b'A'..=b'F' => b - b'A' + 10,
                        other => {
                            return Err(self.fail(at, ErrorKind::InvalidHexDigit { found: other }));
                        }
                    };
                    let value = value * 16 + u32::from(digit);
                    i += 1;
                    if left > 1 {
                        self.text.escape = Escape::Hex { left: left - 1, value, low };
                        continue;
                    }
                    let escape_start = at - 5;
                    if low {
                        if !(0xDC00..=0xDFFF).contains(&value) {
                            return Err(self.fail(escape_start, ErrorKind::LoneHighSurrogate));
                        }
                        self.text.escape = Escape::None;
                    } else if (0xD800..=0xDBFF).contains(&value) {
                        self.count_char(escape_start)?;
                        self.text.nonblank = true;
                        self.text.key_other = true;
                        self.text.escape = Escape::AfterHigh;
                    } else if (0xDC00..=0xDFFF).contains(&value) {
                        return Err(self.fail(escape_start, ErrorKind::LoneLowSurrogate));
                    } else {
                        self.count_char(escape_start)?;
                        self.note_char(value, escape_start)?;
                        match u8::try_from(value) {
                            Ok(byte) if byte.is_ascii() => self.key_push(byte),
                            _ => self.text.key_other = true,
                        }
                        self.text.escape = Escape::None;
                    }
                    continue;
                }
                Escape::AfterHigh | Escape::AfterHighBackslash => {
                    let expected = if self.text.escape == Escape::AfterHigh { b'\\' } else { b'u' };
                    if b != expected {
                        return Err(self.fail(at, ErrorKind::LoneHighSurrogate));
                    }
                    self.text.escape = if expected == b'\\' {
                        Escape::AfterHighBackslash
                    } else {
                        Escape::Hex { left: 4, value: 0, low: true }
                    };
                    i += 1;
                    continue;
                }
            }
            // The fast path: a run of plain printable ASCII.
            if PLAIN[usize::from(b)] {
                let run_start = i;
                i = plain_run_end(buf, i + 1);
                let run = i - run_start;
                let before = self.text.chars;
                self.text.chars = before.saturating_add(u32::try_from(run).unwrap_or(u32::MAX));
                if self.text.chars > self.text.limit {
                    // The first character beyond the limit; a DEL in an id before it is
                    // the first error, as it is when the run comes byte by byte.
                    let within = usize::try_from(self.text.limit - before).unwrap_or(usize::MAX);
                    if self.text.kind == TextKind::Value(Role::Id)
                        && let Some(del) = buf[run_start..run_start + within].iter().position(|&byte| byte == 0x7F)
                    {
                        self.control_in_id(base + (run_start + del) as u64)?;
                    }
                    self.too_long(base + (run_start + within) as u64)?;
                }
                match self.text.kind {
                    TextKind::Key { item_level: true } => {
                        // The run is ASCII: what `key_push` does byte by byte, at once.
                        let run = &buf[run_start..i];
                        let len = usize::from(self.text.key_len);
                        match self.text.key.get_mut(len..len + run.len()) {
                            Some(room) => {
                                room.copy_from_slice(run);
                                self.text.key_len += run.len() as u8;
                            }
                            None => self.text.key_other = true,
                        }
                    }
                    TextKind::Value(role @ (Role::Id | Role::Name)) => {
                        let run = &buf[run_start..i];
                        if role == Role::Id
                            && let Some(del) = run.iter().position(|&byte| byte == 0x7F)
                        {
                            self.control_in_id(base + (run_start + del) as u64)?;
                        }
                        self.text.nonblank = self.text.nonblank || run.iter().any(|&byte| byte != b' ');
                    }
                    _ => {}
                }
                continue;
            }
            match b {
                b'"' => {
                    i += 1;
                    self.end_text(at)?;
                    return Ok(i);
                }
                b'\\' => {
                    self.text.escape = Escape::Backslash;
                    i += 1;
                }
                0x00..=0x1F => {
                    return Err(self.fail(at, ErrorKind::ControlCharacter { byte: b }));
                }
                _ => {
                    let Some((need, lo, hi)) = utf8_lead(b) else {
                        return Err(self.fail(at, ErrorKind::InvalidUtf8));
                    };
                    self.count_char(at)?;
                    self.text.key_other = true;
                    self.text.nonblank = true;
                    self.text.after_c2 = b == 0xC2;
                    self.text.utf8_need = need;
                    self.text.utf8_lo = lo;
                    self.text.utf8_hi = hi;
                    i += 1;
                }
            }
        }
        Ok(i)
    }

    /// The closing quote of a string is at `at`.
    fn end_text(&mut self, at: u64) -> Result<(), ScanError> {
        match self.text.kind {
            TextKind::Key { item_level: true } => {
                let key = &self.text.key[..usize::from(self.text.key_len)];
                let role = if self.text.key_other {
                    Role::Free
                } else if key == b"id" {
                    Role::Id
                } else if key == b"name" {
                    Role::Name
                } else if key == b"description" {
                    Role::Description
                } else {
                    Role::Free
                };
                let duplicate = match role {
                    Role::Id => std::mem::replace(&mut self.item_has_id, true),
                    Role::Name => std::mem::replace(&mut self.item_has_name, true),
                    _ => false,
                };
                let role = if duplicate {
                    let start = self.text.start;
                    let field = if role == Role::Id { Field::Id } else { Field::Name };
                    self.item_issue(start, ErrorKind::Repeated { index: self.items, field })?;
                    // Recorded: the repeated member's value is scanned as any value.
                    Role::Free
                } else {
                    role
                };
                self.member_role = role;
                self.mode = Mode::Colon;
            }
            TextKind::Key { item_level: false } => {
                self.member_role = Role::Free;
                self.mode = Mode::Colon;
            }
            TextKind::Value(role @ (Role::Id | Role::Name)) if !self.text.nonblank => {
                let path = self.path(role);
                self.item_issue(at, ErrorKind::Blank { path })?;
                self.after_value();
            }
            TextKind::Value(_) => self.after_value(),
        }
        Ok(())
    }

    /// Scans number bytes from `i`; returns the index of the first byte not consumed.
    fn scan_number(&mut self, buf: &[u8], mut i: usize, base: u64) -> Result<usize, ScanError> {
        let len = buf.len();
        while i < len {
            let b = buf[i];
            let at = base + i as u64;
            let next = match (self.number.phase, b) {
                (NumPhase::Minus, b'0') => NumPhase::Zero,
                (NumPhase::Minus, b'1'..=b'9') => NumPhase::Int,
                (NumPhase::Minus, other) => {
                    return Err(self.fail(at, ErrorKind::DigitAfterMinus { found: other }));
                }
                (NumPhase::Zero, b'0'..=b'9') => {
                    return Err(self.fail(at, ErrorKind::LeadingZero));
                }
                (NumPhase::Int | NumPhase::Frac | NumPhase::ExpDigits, b'0'..=b'9') => self.number.phase,
                (NumPhase::Zero | NumPhase::Int, b'.') => NumPhase::Dot,
                (NumPhase::Zero | NumPhase::Int | NumPhase::Frac, b'e' | b'E') => NumPhase::Exp,
                (NumPhase::Dot, b'0'..=b'9') => NumPhase::Frac,
                (NumPhase::Dot, other) => {
                    return Err(self.fail(at, ErrorKind::DigitAfterDot { found: other }));
                }
                (NumPhase::Exp, b'+' | b'-') => NumPhase::ExpSign,
                (NumPhase::Exp | NumPhase::ExpSign, b'0'..=b'9') => NumPhase::ExpDigits,
                (NumPhase::Exp | NumPhase::ExpSign, other) => {
                    return Err(self.fail(at, ErrorKind::ExponentDigit { found: other }));
                }
                // Any other byte ends the number (Zero, Int, Frac, ExpDigits are complete).
                _ => {
                    self.end_number()?;
                    return Ok(i);
                }
            };
            if matches!(next, NumPhase::Dot | NumPhase::Exp) {
                if self.number.role == Role::Id {
                    self.item_issue(at, ErrorKind::IdNotInteger { index: self.items })?;
                    // Recorded: scanned on as any number.
                    self.number.role = Role::Free;
                }
                self.number.fraction_or_exponent = true;
            }
            if self.number.text.len() >= self.limits.max_number_chars {
                return Err(self.fail(at, ErrorKind::NumberTooLong { max: self.limits.max_number_chars }));
            }
            self.number.text.push(b);
            self.number.phase = next;
            i += 1;
        }
        Ok(i)
    }

    fn end_number(&mut self) -> Result<(), ScanError> {
        let text = std::str::from_utf8(&self.number.text).unwrap_or("");
        let start = self.number.start;
        let problem = if self.number.role == Role::Id {
            (!id_in_range(text)).then_some(ErrorKind::IdOutOfRange { index: self.items })
        } else {
            let checked = self.number.fraction_or_exponent || text.len() > SHORT_NUMBER;
            (checked && !float_in_range(text)).then_some(ErrorKind::NumberOutOfRange)
        };
        if let Some(kind) = problem {
            self.item_issue(start, kind)?;
        }
        self.after_value();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scan(input: &[u8]) -> Result<Summary, ScanError> {
        let mut scanner = BodyScanner::new(Limits::DEFAULT);
        scanner.feed(input, |_| {})?;
        scanner.finish()
    }

    fn scan_spans(input: &[u8]) -> Result<(Summary, Vec<ItemSpan>), ScanError> {
        let mut spans = Vec::new();
        let mut scanner = BodyScanner::new(Limits::DEFAULT);
        scanner.feed(input, |span| spans.push(span))?;
        Ok((scanner.finish()?, spans))
    }

    /// Feeds `input` split at `cut`, and then one byte at a time.
    fn scan_split(input: &[u8], cut: usize) -> Result<(Summary, Vec<ItemSpan>), ScanError> {
        let mut spans = Vec::new();
        let mut scanner = BodyScanner::new(Limits::DEFAULT);
        let result = scanner
            .feed(&input[..cut], |span| spans.push(span))
            .and_then(|()| scanner.feed(&input[cut..], |span| spans.push(span)));
        result?;
        Ok((scanner.finish()?, spans))
    }

    fn scan_bytewise(input: &[u8]) -> Result<(Summary, Vec<ItemSpan>), ScanError> {
        let mut spans = Vec::new();
        let mut scanner = BodyScanner::new(Limits::DEFAULT);
        for byte in input {
            scanner.feed(std::slice::from_ref(byte), |span| spans.push(span))?;
        }
        Ok((scanner.finish()?, spans))
    }

    fn error(input: &[u8]) -> ScanError {
        match scan(input) {
            Ok(summary) => panic!("{:?} was accepted: {summary:?}", String::from_utf8_lossy(input)),
            Err(error) => error,
        }
    }

    /// Every way of splitting the input gives the same answer as feeding it whole.
    fn assert_split_invariant(input: &[u8]) {
        let whole = scan_spans(input);
        for cut in 0..=input.len() {
            assert_eq!(scan_split(input, cut), whole, "split at {cut} of {:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(scan_bytewise(input), whole, "bytewise {:?}", String::from_utf8_lossy(input));
    }

    const VALID: &[&str] = &[
        r#"[{"id": "123", "name": "mesa"}]"#,
        "[]",
        " \n\t[ ] \r\n",
        r#"[{"id":1,"name":"a"},{"id":-9223372036854775808,"name":"b"},{"id":18446744073709551615,"name":"c"}]"#,
        r#"[{"name":"x","id":"0","price":12.5e-3,"tags":["a",{"b":[true,false,null]}],"n":-0.0,"e":1E+2}]"#,
        r#"[{"id":"\u00e9\ud83d\ude00\"\\\/","name":"Pão de açúcar 😀 日本","note":"\n\b\f\r\t\u0001"}]"#,
        r#"[{"\u0069d":"escaped key","name":"ok","id2":3,"ID":4,"identifier":5}]"#,
        r#"[{"id":"1","name":"n","nested":{"id":{"id":[]},"name":7}}]"#,
        r#"[{"id":"1","name":"n","big":123456789012345678901234567890,"small":1e-400,"max":1.7976931348e308}]"#,
    ];

    /// Bodies of several items of the kinds the fast path takes whole, and of kinds it
    /// leaves to the state machine, side by side.
    const MANY_ITEMS: &[&str] = &[
        "[{\"id\":\"a-1\",\"name\":\"Product 1\",\"description\":\"Solid pine\",\"price\":1234},\n\
         {\"id\":2,\"name\":\"Caf\u{e9} \u{1f600}\",\"price\":-0.5,\"tags\":[\"x\",{\"y\":null}],\"ok\":true},\n\
         {\"id\":\"3\",\"name\":\"a\\\"b\",\"e\":1e3}]",
        "[ {\n \"name\" : \"n\" ,\r\n \"id\" : -12 , \"x\" : { } , \"y\" : [ ] }\n,\n{\"id\":\"\u{e9}\u{e9}\",\"name\":\"z\",\"description\":[1,2]}\t]",
        "[{\"id\":\"e1\",\"name\":\"n\",\"description\":\"a\\nb \\\"c\\\" \\u00e9\\ud83d\\ude00\",\"x\":[\"\\t\"]},\
         {\"id\":\"e2\",\"name\":\"n\",\"description\":\"\\u0001\\/\\\\\",\"y\":{\"\\u0069d\":1}}]",
        "[{\"id\":0,\"name\":\"a\",\"f\":false},{\"id\":\"b\",\"name\":\"c\",\"d\":{\"e\":{\"f\":[[[0.25]]]}}}]",
    ];

    #[test]
    fn whole_items_and_the_byte_by_byte_machine_agree() {
        for input in MANY_ITEMS {
            let whole = scan_spans(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert!(whole.0.items >= 2, "{input}");
            assert_split_invariant(input.as_bytes());
        }
        // Line and column of an error after items taken whole, across line feeds.
        let input = b"[{\"id\":1,\n\"name\":\"a\"},\n{\"id\":2,\n\"name\":\"b\"},\n{\"id\":3,\n\"name\":4}]";
        let e = error(input);
        assert_eq!((e.line, e.column), (6, 8), "{e}");
        assert_split_invariant(input);
    }

    #[test]
    fn plain_runs_end_where_the_byte_table_says() {
        // Every byte value at every position of a 40-byte window (the 16-byte steps, the
        // 8-byte steps and the bytewise tail), from every start.
        for special in 0..=255u8 {
            for at in 0..40 {
                let mut buf = vec![b'a'; 40];
                buf[at] = special;
                for start in 0..=buf.len() {
                    let naive = (start..buf.len()).find(|&k| !PLAIN[usize::from(buf[k])]).unwrap_or(buf.len());
                    assert_eq!(plain_run_end(&buf, start), naive, "byte {special:#04x} at {at}, start {start}");
                }
            }
        }
    }

    #[test]
    fn valid_bodies_are_accepted_with_their_item_count() {
        let counts = [1, 0, 0, 3, 1, 1, 1, 1, 1];
        for (input, items) in VALID.iter().zip(counts) {
            let summary = scan(input.as_bytes()).unwrap_or_else(|e| panic!("{input}: {e}"));
            assert_eq!(summary.items, items, "{input}");
            assert_eq!(summary.bytes, input.len() as u64);
        }
    }

    #[test]
    fn every_accepted_body_is_readable_by_serde_json_item_by_item() {
        for input in VALID {
            let (_, spans) = scan_spans(input.as_bytes()).expect("valid");
            let whole: Vec<serde_json::Map<String, serde_json::Value>> =
                serde_json::from_str(input).unwrap_or_else(|e| panic!("serde_json rejects {input}: {e}"));
            assert_eq!(whole.len(), spans.len());
            for (span, expected) in spans.iter().zip(&whole) {
                let slice = &input.as_bytes()[span.start as usize..span.end as usize];
                let item: serde_json::Map<String, serde_json::Value> = serde_json::from_slice(slice).expect("item");
                assert_eq!(&item, expected);
                assert!(item.contains_key("id") && item.contains_key("name"));
            }
        }
    }

    #[test]
    fn errors_name_the_offset_line_column_and_reason() {
        let e = error(b"");
        assert_eq!((e.offset, e.reason().as_str()), (0, "empty body"));

        let e = error(br#"{"id": "123", "name": "mesa"}"#);
        assert_eq!(e.offset, 0);
        assert!(e.reason().contains("must be a JSON array") && e.reason().contains("object"), "{}", e.reason());

        let e = error(b"[{\"id\": \"1\",\n  \"name\": 5}]");
        assert_eq!((e.offset, e.line, e.column), (23, 2, 11));
        assert!(e.reason().contains("$[0].name must be a string"), "{}", e.reason());

        let truncated = br#"[{"id": "123", "name": "me"#;
        let e = error(truncated);
        assert_eq!(e.offset, truncated.len() as u64);
        assert!(e.reason().contains("unexpected end"), "{}", e.reason());

        let e = error(br#"[{"id": "1", "name": "a"}] x"#);
        assert_eq!(e.offset, 27);
        assert!(e.reason().contains("after the end of the array"));

        let e = error(b"\x1f\x8b\x08\x00");
        assert_eq!(e.offset, 0);
        assert!(e.reason().contains("gzip"), "{}", e.reason());
    }

    #[test]
    fn shape_errors() {
        let cases: &[(&str, u64, &str)] = &[
            (r#"[{"name": "mesa"}]"#, 16, "$[0] has no \"id\""),
            (r#"[{"id": "1"}]"#, 11, "$[0] has no \"name\""),
            (r#"[{"id":"1","name":"a"},{"id":true,"name":"b"}]"#, 29, "$[1].id must be a string or an integer"),
            (r#"[{"id":null,"name":"b"}]"#, 7, "found null"),
            (r#"[{"id":{},"name":"b"}]"#, 7, "found an object"),
            (r#"[{"id":[1],"name":"b"}]"#, 7, "found an array"),
            (r#"[{"id":1.5,"name":"b"}]"#, 8, "fraction or exponent"),
            (r#"[{"id":1e3,"name":"b"}]"#, 8, "fraction or exponent"),
            (r#"[{"id":18446744073709551616,"name":"b"}]"#, 7, "64-bit range"),
            (r#"[{"id":-0,"name":"b"}]"#, 7, "64-bit range"),
            (r#"[{"id":"","name":"b"}]"#, 8, "$[0].id must not be blank"),
            (r#"[{"id":"  ","name":"b"}]"#, 10, "$[0].id must not be blank"),
            (r#"[{"id":"1","name":""}]"#, 19, "$[0].name must not be blank"),
            (r#"[{"id":"1","name":" \t "}]"#, 23, "$[0].name must not be blank"),
            (r#"[{"id":"a\nb","name":"x"}]"#, 9, "$[0].id must not contain control characters"),
            (r#"[{"id":"a\u007f","name":"x"}]"#, 9, "control characters"),
            ("[{\"id\":\"a\u{85}\",\"name\":\"x\"}]", 9, "control characters"),
            ("[{\"id\":\"a\u{7f}\",\"name\":\"x\"}]", 9, "control characters"),
            (r#"[{"id":"1","name":"a","id":"2"}]"#, 22, "more than once"),
            (r#"[{"id":"1","name":"a"}, "x"]"#, 24, "$[1] must be an object"),
            (r#"[[]]"#, 1, "$[0] must be an object"),
            (r#"[1]"#, 1, "$[0] must be an object"),
            (r#"[{"id":"1","name":"a"},]"#, 23, "trailing commas"),
            (r#"[{"id":"1","name":"a",}]"#, 22, "trailing commas"),
            (r#"[{"id":"1" "name":"a"}]"#, 11, "expected ',' or '}'"),
            (r#"[{"id":"1","name":"a"} {"id":"2"}]"#, 23, "expected ',' or ']' after item $[0]"),
            (r#"[{"id":"1","name":"a","x":tru}]"#, 29, "invalid literal"),
            (r#"[{"id":"1","name":"a","x":01}]"#, 27, "leading zeros"),
            (r#"[{"id":"1","name":"a","x":-}]"#, 27, "digit after '-'"),
            (r#"[{"id":"1","name":"a","x":1.}]"#, 28, "digit after '.'"),
            (r#"[{"id":"1","name":"a","x":1e}]"#, 28, "exponent"),
            (r#"[{"id":"1","name":"a","x":1e400}]"#, 26, "out of range"),
            (r#"[{"id":"1","name":"a","x":"\x"}]"#, 28, "invalid escape"),
            (r#"[{"id":"1","name":"a","x":"\u12G4"}]"#, 31, "hex digit"),
            (r#"[{"id":"1","name":"a","x":"\ud800"}]"#, 33, "low surrogate"),
            (r#"[{"id":"1","name":"a","x":"\ud800\u0041"}]"#, 33, "low surrogate"),
            (r#"[{"id":"1","name":"a","x":"\udc00"}]"#, 27, "unpaired low surrogate"),
            (r#"[{"id":"1","name":"a",x:1}]"#, 22, "expected a key"),
            (r#"[{"id":"1","name":"a","x" 1}]"#, 26, "expected ':'"),
            ("\u{feff}[]", 0, "byte order mark"),
        ];
        for (input, offset, reason) in cases {
            let e = error(input.as_bytes());
            assert!(e.reason().contains(reason), "{input}: reason {:?} lacks {reason:?}", e.reason());
            assert_eq!(e.offset, *offset, "{input}: {}", e.reason());
            assert_split_invariant(input.as_bytes());
        }
    }

    #[test]
    fn invalid_utf8_and_control_characters_are_refused() {
        let cases: &[(&[u8], u64)] = &[
            (b"[{\"id\":\"1\",\"name\":\"\xff\"}]", 19),
            (b"[{\"id\":\"1\",\"name\":\"a\xc3\"}]", 21), // truncated sequence
            (b"[{\"id\":\"1\",\"name\":\"\xc0\xaf\"}]", 19), // overlong
            (b"[{\"id\":\"1\",\"name\":\"\xed\xa0\x80\"}]", 20), // encoded surrogate
            (b"[{\"id\":\"1\",\"name\":\"\xf4\x90\x80\x80\"}]", 20), // beyond U+10FFFF
            (b"[{\"id\":\"1\",\"name\":\"a\nb\"}]", 20),
            (b"[{\"id\":\"1\",\"name\":\"a\"}]\xff", 23),
        ];
        for (input, offset) in cases {
            let e = error(input);
            assert_eq!(e.offset, *offset, "{:?}: {}", String::from_utf8_lossy(input), e.reason());
            assert_split_invariant(input);
        }
    }

    #[test]
    fn limits_are_enforced_early() {
        let long_id = format!(r#"[{{"id":"{}","name":"a"}}]"#, "x".repeat(101));
        let e = error(long_id.as_bytes());
        assert_eq!(e.offset, 8 + 100);
        assert!(e.reason().contains("$[0].id is longer than 100"), "{}", e.reason());
        let ok_id = format!(r#"[{{"id":"{}","name":"a"}}]"#, "é".repeat(100));
        assert!(scan(ok_id.as_bytes()).is_ok());

        // A name of many megabytes fails at its first character beyond the limit.
        let mut scanner = BodyScanner::new(Limits::DEFAULT);
        scanner.feed(br#"[{"id":"1","name":""#, |_| {}).expect("prefix");
        let chunk = vec![b'a'; 64 * 1024];
        let e = scanner.feed(&chunk, |_| {}).expect_err("too long");
        assert_eq!(e.offset, 19 + u64::from(Limits::DEFAULT.max_name_chars));
        assert!(
            e.reason().contains(&format!("$[0].name is longer than {}", Limits::DEFAULT.max_name_chars)),
            "{}",
            e.reason()
        );

        let description = format!(
            r#"[{{"id":"1","name":"a","description":"{}"}}]"#,
            "\\u00e9".repeat(Limits::DEFAULT.max_description_chars as usize + 1)
        );
        let e = error(description.as_bytes());
        assert!(e.reason().contains("$[0].description is longer than"), "{}", e.reason());

        // Another field may be long, but the item not beyond Limits::DEFAULT.max_item_bytes.
        let mut scanner = BodyScanner::new(Limits::DEFAULT);
        scanner.feed(br#"[{"id":"1","name":"a","blob":""#, |_| {}).expect("prefix");
        let mut refusal = None;
        for _ in 0..40 {
            if let Err(e) = scanner.feed(&chunk, |_| {}) {
                refusal = Some(e);
                break;
            }
        }
        let e = refusal.expect("item too large");
        assert_eq!(e.offset, 1 + Limits::DEFAULT.max_item_bytes);
        assert!(e.reason().contains("larger than"), "{}", e.reason());

        let deep = format!(r#"[{{"id":"1","name":"a","x":{}{}}}]"#, "[".repeat(62), "]".repeat(62));
        assert!(scan(deep.as_bytes()).is_ok());
        let too_deep = format!(r#"[{{"id":"1","name":"a","x":{}{}}}]"#, "[".repeat(63), "]".repeat(63));
        let e = error(too_deep.as_bytes());
        assert!(e.reason().contains("nesting deeper than 64"), "{}", e.reason());
        assert_eq!(e.offset, 26 + 62);

        let long_number = format!(r#"[{{"id":"1","name":"a","x":{}}}]"#, "1".repeat(1001));
        assert!(error(long_number.as_bytes()).reason().contains("number longer"));
    }

    #[test]
    fn chunk_boundaries_anywhere_give_the_same_result() {
        for input in VALID {
            assert_split_invariant(input.as_bytes());
        }
        let truncated = br#"[{"id":"1","name":"a\u00e9\ud83d\ude00"},{"id":2,"name":"b"#;
        assert_split_invariant(truncated);
    }

    #[test]
    fn spans_cover_each_item_exactly() {
        let input = br#" [ {"id":"a","name":"x"} ,{"id":2,"name":"y","z":{"q":[1,2]}}]"#;
        let (summary, spans) = scan_spans(input).expect("valid");
        assert_eq!(summary.items, 2);
        let texts: Vec<&[u8]> = spans.iter().map(|s| &input[s.start as usize..s.end as usize]).collect();
        assert_eq!(texts, vec![&br#"{"id":"a","name":"x"}"#[..], &br#"{"id":2,"name":"y","z":{"q":[1,2]}}"#[..]]);
        assert_eq!(spans[1].index, 1);
    }

    /// Every split into two chunks, and every split into three for a short body, gives
    /// what feeding the body whole gives: items, spans, summary or error.
    #[test]
    fn any_chunking_gives_the_whole_body_result() {
        let bodies: Vec<&[u8]> = vec![
            MANY_ITEMS[0].as_bytes(),
            MANY_ITEMS[2].as_bytes(),
            br#"[{"id":"1","name":"a"},{"id":"2","name":"b","x":"\ud800x"}]"#,
            b"[{\"id\":\"a\xc3\xa9\xe2\x82\",\"name\":\"b\"}]",
            br#"[{"id":"1","name":"a"},{"id":"1","name":"a","id":3}]"#,
        ];
        for body in &bodies {
            assert_split_invariant(body);
        }
        let body = bodies[2];
        let whole = scan_spans(body);
        for first in 0..=body.len() {
            for second in first..=body.len() {
                let mut spans = Vec::new();
                let mut scanner = BodyScanner::new(Limits::DEFAULT);
                let result = [&body[..first], &body[first..second], &body[second..]]
                    .into_iter()
                    .try_for_each(|chunk| scanner.feed(chunk, |span| spans.push(span)))
                    .and_then(|()| scanner.finish());
                assert_eq!(result.map(|summary| (summary, spans)), whole, "cuts at {first} and {second}");
            }
        }
    }

    /// Found by the fuzzer: an id longer than its limit with a DEL before the limit failed
    /// as too long when the run of plain bytes came in one chunk, and at the DEL (a
    /// control character) when it came byte by byte. The DEL, the first error, wins.
    #[test]
    fn a_del_before_the_id_limit_is_the_first_error_whatever_the_chunks() {
        let body = format!("[{{\"id\":\"ab\u{7f}{}\",\"name\":\"x\"}}]", "c".repeat(200));
        let e = error(body.as_bytes());
        assert_eq!(e.offset, 10, "{e}");
        assert_eq!(e.kind, ErrorKind::ControlInId { index: 0 });
        assert_split_invariant(body.as_bytes());
        // A DEL past the limit: too long first.
        let body = format!("[{{\"id\":\"{}\u{7f}\",\"name\":\"x\"}}]", "c".repeat(100));
        let e = error(body.as_bytes());
        assert_eq!((e.offset, e.class()), (108, ErrorClass::Limit), "{e}");
        assert_split_invariant(body.as_bytes());
    }

    #[test]
    fn errors_have_a_kind_a_class_and_the_old_message() {
        let cases: &[(&[u8], ErrorKind, ErrorClass)] = &[
            (
                b"[1 x",
                ErrorKind::WrongType {
                    path: Path { index: 0, field: None },
                    expected: "an object with \"id\" and \"name\"",
                    found: b'1',
                },
                ErrorClass::Shape,
            ),
            (b"{}", ErrorKind::NotAnArray { found: b'{' }, ErrorClass::Shape),
            (b"x", ErrorKind::NotAnArray { found: b'x' }, ErrorClass::Syntax),
            (br#"[{"id":"1"}]"#, ErrorKind::Missing { index: 0, field: Field::Name }, ErrorClass::Shape),
            (br#"[{"id":1e999,"name":"a"}]"#, ErrorKind::IdNotInteger { index: 0 }, ErrorClass::Shape),
            (br#"[{"id":"1","name":"a","x":1e999}]"#, ErrorKind::NumberOutOfRange, ErrorClass::Syntax),
            (
                br#"[{"id":"1","name":"a","x":[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[[["#,
                ErrorKind::TooDeep { max: 64 },
                ErrorClass::Limit,
            ),
            (br#"[{"id":"1","name":"a"},]"#, ErrorKind::TrailingComma { in_object: false }, ErrorClass::Syntax),
        ];
        for (input, kind, class) in cases {
            let e = error(input);
            assert_eq!(&e.kind, kind, "{}", String::from_utf8_lossy(input));
            assert_eq!(e.class(), *class, "{e}");
            assert_eq!(
                e.to_string(),
                format!("invalid body at byte {} (line {}, column {}): {}", e.offset, e.line, e.column, e.reason())
            );
        }
        assert_eq!(
            error(br#"[{"id":"1","name":"a","id":"2"}]"#).to_string(),
            "invalid body at byte 22 (line 1, column 23): $[0] has \"id\" more than once"
        );
    }

    /// Small limits hold on the whole-item fast path as on the byte-by-byte machine.
    #[test]
    fn limits_passed_in_are_enforced_on_both_paths() {
        let limits = Limits {
            max_depth: 4,
            max_id_chars: 3,
            max_name_chars: 4,
            max_description_chars: 5,
            max_item_bytes: 80,
            max_number_chars: 6,
        };
        let check = |input: &str| -> Result<Summary, ScanError> {
            let whole = {
                let mut scanner = BodyScanner::new(limits);
                scanner.feed(input.as_bytes(), |_| {}).and_then(|()| scanner.finish())
            };
            let mut scanner = BodyScanner::new(limits);
            let bytewise = input
                .as_bytes()
                .iter()
                .try_for_each(|byte| scanner.feed(std::slice::from_ref(byte), |_| {}))
                .and_then(|()| scanner.finish());
            assert_eq!(whole, bytewise, "{input}");
            assert_eq!(scanner_limits(limits), limits);
            whole
        };
        fn scanner_limits(limits: Limits) -> Limits {
            *BodyScanner::new(limits).limits()
        }
        assert!(check(r#"[{"id":"abc","name":"abcd","description":"abcde","x":[[1]],"n":123456}]"#).is_ok());
        let refused = [
            (r#"[{"id":"abcd","name":"a"}]"#, "$[0].id is longer than 3 characters"),
            (r#"[{"id":"a","name":"abcde"}]"#, "$[0].name is longer than 4 characters"),
            (r#"[{"id":"a","name":"a","description":"abcdef"}]"#, "$[0].description is longer than 5 characters"),
            (r#"[{"id":"a","name":"a","x":[[[1]]]}]"#, "nesting deeper than 4 levels"),
            (r#"[{"id":"a","name":"a","n":1234567}]"#, "number longer than 6 characters"),
            (
                r#"[{"id":"a","name":"a","x":"01234567890123456789012345678901234567890123456789012345"}]"#,
                "$[0] is larger than 80 bytes (the limit per item)",
            ),
        ];
        for (input, reason) in refused {
            let e = check(input).expect_err(input);
            assert_eq!(e.reason(), reason);
            assert_eq!(e.class(), ErrorClass::Limit);
        }
    }

    #[test]
    fn an_error_is_sticky() {
        let mut scanner = BodyScanner::new(Limits::DEFAULT);
        let first = scanner.feed(b"[x", |_| {}).expect_err("invalid");
        assert_eq!(scanner.feed(b"]", |_| {}), Err(first.clone()));
        assert_eq!(scanner.finish(), Err(first));
    }

    /// Random mutations of valid bodies: whatever the scanner accepts, serde_json reads
    /// as an array of objects with an id and a name.
    #[test]
    fn accepted_mutants_are_valid_json() {
        use rand::{Rng as _, SeedableRng as _};
        let mut rng = rand::rngs::StdRng::seed_from_u64(5);
        let alphabet = b"[]{}\":,\\/ubnrt0123456789-+.eE aZ\x00\xc3\xa9\xff\n";
        let mut accepted = 0;
        let sources: Vec<&str> = VALID.iter().chain(MANY_ITEMS).copied().collect();
        for round in 0..20_000 {
            let mut input = sources[round % sources.len()].as_bytes().to_vec();
            for _ in 0..rng.random_range(1..4) {
                let at = rng.random_range(0..=input.len());
                match rng.random_range(0..3) {
                    0 if at < input.len() => {
                        input.remove(at);
                    }
                    1 if at < input.len() => input[at] = alphabet[rng.random_range(0..alphabet.len())],
                    _ => input.insert(at, alphabet[rng.random_range(0..alphabet.len())]),
                }
            }
            let cut = rng.random_range(0..=input.len());
            let result = scan_split(&input, cut);
            assert_eq!(result, scan_spans(&input), "split invariance on {:?}", String::from_utf8_lossy(&input));
            // Byte by byte, no item is ever whole in a chunk: the state machine alone.
            assert_eq!(result, scan_bytewise(&input), "fast path on {:?}", String::from_utf8_lossy(&input));
            // Reporting item issues, too: the same whatever the chunking.
            let issues = scan_issues_split(&input, cut);
            assert_eq!(issues, scan_issues_bytewise(&input), "issues on {:?}", String::from_utf8_lossy(&input));
            assert_eq!(issues, scan_issues_split(&input, 0), "issues on {:?}", String::from_utf8_lossy(&input));
            if let Ok((summary, spans)) = result {
                accepted += 1;
                let parsed: Vec<serde_json::Map<String, serde_json::Value>> = serde_json::from_slice(&input)
                    .unwrap_or_else(|e| panic!("accepted but invalid: {:?}: {e}", String::from_utf8_lossy(&input)));
                assert_eq!(parsed.len() as u64, summary.items);
                for (item, span) in parsed.iter().zip(&spans) {
                    assert!(item["id"].is_string() || item["id"].is_i64() || item["id"].is_u64());
                    assert!(item["name"].is_string());
                    let alone: serde_json::Map<String, serde_json::Value> =
                        serde_json::from_slice(&input[span.start as usize..span.end as usize]).expect("item");
                    assert_eq!(&alone, item);
                }
            }
        }
        assert!(accepted > 100, "too few mutants accepted ({accepted}) to mean anything");
    }

    /// Scans with item issues reported, cut at `cut` (and whole when `cut` is 0).
    type IssueScan = Result<(Summary, Vec<ItemSpan>, Vec<ItemIssue>), ScanError>;

    fn scan_issues_split(input: &[u8], cut: usize) -> IssueScan {
        let (mut spans, mut issues) = (Vec::new(), Vec::new());
        let mut scanner = BodyScanner::reporting_item_issues(Limits::DEFAULT);
        for part in [&input[..cut], &input[cut..]] {
            scanner.feed(part, |span| spans.push(span))?;
            issues.extend(scanner.take_item_issues());
        }
        Ok((scanner.finish()?, spans, issues))
    }

    fn scan_issues_bytewise(input: &[u8]) -> IssueScan {
        let (mut spans, mut issues) = (Vec::new(), Vec::new());
        let mut scanner = BodyScanner::reporting_item_issues(Limits::DEFAULT);
        for byte in input {
            scanner.feed(std::slice::from_ref(byte), |span| spans.push(span))?;
            issues.extend(scanner.take_item_issues());
        }
        Ok((scanner.finish()?, spans, issues))
    }

    /// Issues (with their item index and kind) of a body that must be accepted, checked to
    /// be the same whatever the chunking.
    fn issues_of(input: &str) -> Vec<(u64, ErrorKind)> {
        let input = input.as_bytes();
        let whole = scan_issues_split(input, 0);
        for cut in 0..=input.len() {
            assert_eq!(scan_issues_split(input, cut), whole, "split at {cut} of {:?}", String::from_utf8_lossy(input));
        }
        assert_eq!(scan_issues_bytewise(input), whole, "bytewise {:?}", String::from_utf8_lossy(input));
        let (summary, spans, issues) = whole.unwrap_or_else(|error| panic!("refused: {error}"));
        assert_eq!(spans.len() as u64, summary.items, "every item keeps its span");
        issues.into_iter().map(|issue| (issue.index, issue.kind)).collect()
    }

    fn at(index: u64, field: Field) -> Path {
        Path { index, field: Some(field) }
    }

    #[test]
    fn a_nul_escape_is_refused_in_any_string() {
        for body in [
            r#"[{"id":"1","name":"a\u0000b"}]"#,
            r#"[{"id":"1","name":"n","description":"\u0000"}]"#,
            r#"[{"id":"1","name":"n","tags":["x",{"k":"\u0000"}]}]"#,
            r#"[{"id":"1","name":"n","k\u0000":1}]"#,
        ] {
            assert_eq!(error(body.as_bytes()).class(), ErrorClass::Shape, "{body}");
        }
        assert_eq!(
            error(br#"[{"id":"1","name":"a\u0000b"}]"#).kind,
            ErrorKind::NulCharacter { path: at(0, Field::Name) }
        );
        // In an id it is a control character, as before.
        assert_eq!(error(br#"[{"id":"\u0000","name":"n"}]"#).kind, ErrorKind::ControlInId { index: 0 });
        // Other escapes are still fine.
        assert!(scan(br#"[{"id":"1","name":"a\u0001b","x":"\u0020"}]"#).is_ok());
    }

    #[test]
    fn item_issues_are_reported_and_the_body_goes_on() {
        let long_name = "n".repeat(201);
        let body = format!(
            r#"[{{"id":"ok1","name":"fine"}},
                {{"id":"a","name":"a\u0000b"}},
                {{"id":"b","name":"n","description":"x\u0000","price":1e400}},
                {{"id":"c","name":"{long_name}"}},
                {{"id":"d","name":"  "}},
                {{"id":"e"}},
                {{"id":1.5,"name":5,"name":"again"}},
                {{"id":"f","name":"n","w":1e400,"w2":"\u0000\u0000"}},
                {{"id":"ok2","name":"fine"}}]"#
        );
        assert_eq!(
            issues_of(&body),
            vec![
                (1, ErrorKind::NulCharacter { path: at(1, Field::Name) }),
                (2, ErrorKind::NulCharacter { path: at(2, Field::Description) }),
                (2, ErrorKind::NumberOutOfRange),
                (3, ErrorKind::TooLong { path: Some(at(3, Field::Name)), max: 200 }),
                (4, ErrorKind::Blank { path: at(4, Field::Name) }),
                (5, ErrorKind::Missing { index: 5, field: Field::Name }),
                (6, ErrorKind::IdNotInteger { index: 6 }),
                (6, ErrorKind::WrongType { path: at(6, Field::Name), expected: "a string", found: b'5' }),
                (6, ErrorKind::Repeated { index: 6, field: Field::Name }),
                (7, ErrorKind::NumberOutOfRange),
                (7, ErrorKind::NulCharacter { path: Path { index: 7, field: None } }),
            ]
        );
    }

    #[test]
    fn item_issues_name_the_member_by_its_key() {
        let body = br#"[{"id":"1","name":"n","weight":1e400}]"#;
        let (_, _, issues) = scan_issues_split(body, 0).expect("accepted");
        let member = issues[0].member.expect("in a member") as usize;
        assert_eq!(&body[member..member + 8], br#""weight""#);
        assert!(issues[0].offset as usize > member);
    }

    #[test]
    fn body_errors_still_stop_a_scanner_reporting_item_issues() {
        for body in [&br#"[{"id":"1","name":"a\u0000b"},]"#[..], br#"[{"id":"1","name":"n"} x"#, br#"[1]"#] {
            assert!(scan_issues_split(body, 0).is_err(), "{:?}", String::from_utf8_lossy(body));
        }
        let deep = format!(r#"[{{"id":"1","name":"n","x":{}1{}}}]"#, "[".repeat(70), "]".repeat(70));
        assert!(matches!(
            scan_issues_split(deep.as_bytes(), 0),
            Err(ScanError { kind: ErrorKind::TooDeep { .. }, .. })
        ));
    }
}
