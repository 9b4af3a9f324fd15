//! The first problem found in a body: where, and what ([`ErrorKind`], whose `Display` is
//! the message a client reads).

use std::fmt;

/// The first problem found in a body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ScanError {
    /// Byte offset (from 0) of the byte where the body stopped being acceptable; the
    /// body's length when it ended too early.
    pub offset: u64,
    /// 1-based line of `offset`.
    pub line: u64,
    /// 1-based column of `offset`, in bytes from the start of its line.
    pub column: u64,
    pub kind: ErrorKind,
}

impl ScanError {
    /// The reason alone, without the position.
    pub fn reason(&self) -> String {
        self.kind.to_string()
    }

    pub fn class(&self) -> ErrorClass {
        self.kind.class()
    }
}

impl fmt::Display for ScanError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "invalid body at byte {} (line {}, column {}): {}", self.offset, self.line, self.column, self.kind)
    }
}

impl std::error::Error for ScanError {}

/// What kind of rule an error breaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ErrorClass {
    /// Not JSON (RFC 8259): serde_json refuses it too.
    Syntax,
    /// JSON, but not an array of product objects (a missing or repeated `id`, a field of
    /// the wrong type, a blank name…).
    Shape,
    /// JSON of the right shape, beyond one of the [`Limits`](crate::Limits).
    Limit,
}

/// An item's field that the scanner checks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Field {
    Id,
    Name,
    Description,
}

impl Field {
    pub fn as_str(self) -> &'static str {
        match self {
            Field::Id => "id",
            Field::Name => "name",
            Field::Description => "description",
        }
    }
}

/// `$[3]` or `$[3].name`: an item, or one of its fields.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Path {
    /// The item's position in the array, from 0.
    pub index: u64,
    pub field: Option<Field>,
}

impl fmt::Display for Path {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.field {
            None => write!(f, "$[{}]", self.index),
            Some(field) => write!(f, "$[{}].{}", self.index, field.as_str()),
        }
    }
}

/// What is wrong. `found` fields hold the offending byte.
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    // ---- syntax
    EmptyBody,
    /// The body starts with gzip's magic byte.
    Compressed,
    ByteOrderMark,
    /// The body ended early; `expected` says what should have come.
    UnexpectedEnd {
        expected: &'static str,
    },
    /// Not `[` at the start (a value other than an array is a [`ErrorClass::Shape`] error).
    NotAnArray {
        found: u8,
    },
    /// Between array elements; `after_item` when it is the top-level array.
    ExpectedCommaOrBracket {
        after_item: Option<u64>,
        found: u8,
    },
    ExpectedKey {
        found: u8,
    },
    ExpectedColon {
        found: u8,
    },
    ExpectedCommaOrBrace {
        found: u8,
    },
    ExpectedValue {
        found: u8,
    },
    /// `,` right before `}` (`in_object`) or `]`.
    TrailingComma {
        in_object: bool,
    },
    AfterEnd {
        found: u8,
    },
    InvalidLiteral {
        found: u8,
    },
    /// A raw byte below 0x20 in a string.
    ControlCharacter {
        byte: u8,
    },
    InvalidUtf8,
    InvalidEscape {
        found: u8,
    },
    InvalidHexDigit {
        found: u8,
    },
    LoneHighSurrogate,
    LoneLowSurrogate,
    LeadingZero,
    DigitAfterMinus {
        found: u8,
    },
    DigitAfterDot {
        found: u8,
    },
    ExponentDigit {
        found: u8,
    },
    /// Beyond a 64-bit float's range (reported at the number's start).
    NumberOutOfRange,
    // ---- shape
    /// `found` starts a value of the wrong type.
    WrongType {
        path: Path,
        expected: &'static str,
        found: u8,
    },
    Missing {
        index: u64,
        field: Field,
    },
    Repeated {
        index: u64,
        field: Field,
    },
    Blank {
        path: Path,
    },
    ControlInId {
        index: u64,
    },
    IdNotInteger {
        index: u64,
    },
    IdOutOfRange {
        index: u64,
    },
    /// A `\u0000` escape: valid JSON, but no database text column stores NUL. `path` names
    /// the checked field it is in, or just the item.
    NulCharacter {
        path: Path,
    },
    // ---- limits
    TooDeep {
        max: usize,
    },
    ItemTooLarge {
        index: u64,
        max: u64,
    },
    /// A string beyond its limit; `path` is `None` for a key.
    TooLong {
        path: Option<Path>,
        max: u32,
    },
    NumberTooLong {
        max: usize,
    },
}

impl ErrorKind {
    pub fn class(&self) -> ErrorClass {
        use ErrorKind::*;
        match self {
            NotAnArray { found } if starts_value(*found) => ErrorClass::Shape,
            WrongType { .. } | Missing { .. } | Repeated { .. } | Blank { .. } | ControlInId { .. } => {
                ErrorClass::Shape
            }
            IdNotInteger { .. } | IdOutOfRange { .. } | NulCharacter { .. } => ErrorClass::Shape,
            TooDeep { .. } | ItemTooLarge { .. } | TooLong { .. } | NumberTooLong { .. } => ErrorClass::Limit,
            _ => ErrorClass::Syntax,
        }
    }
}

impl ErrorKind {
    /// The reason without the item's path, for a report that names the item and the
    /// field beside it (as [`ItemIssue`](crate::ItemIssue)s are reported).
    pub fn detail(&self) -> String {
        use ErrorKind::*;
        match self {
            WrongType { expected, found, .. } => format!("must be {expected}, found {}", ValueKind(*found)),
            Missing { .. } => "is missing".into(),
            Repeated { .. } => "appears more than once".into(),
            Blank { .. } => "must not be blank".into(),
            ControlInId { .. } => "must not contain control characters".into(),
            IdNotInteger { .. } => "must be a string or an integer, found a number with a fraction or exponent".into(),
            IdOutOfRange { .. } => "is not an integer in the 64-bit range (send long ids as strings)".into(),
            NulCharacter { .. } => "must not contain the NUL character (\\u0000): the database cannot store it".into(),
            TooLong { max, .. } => format!("is longer than {max} characters"),
            NumberOutOfRange => "holds a number beyond a 64-bit float's range".into(),
            other => other.to_string(),
        }
    }
}

fn starts_value(b: u8) -> bool {
    matches!(b, b'{' | b'"' | b'-' | b'0'..=b'9' | b't' | b'f' | b'n')
}

struct Byte(u8);

impl fmt::Display for Byte {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        if b.is_ascii_graphic() { write!(f, "'{}'", b as char) } else { write!(f, "byte 0x{b:02X}") }
    }
}

/// What a value starting with the byte is, for messages.
struct ValueKind(u8);

impl fmt::Display for ValueKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            b'{' => f.write_str("an object"),
            b'[' => f.write_str("an array"),
            b'"' => f.write_str("a string"),
            b'-' | b'0'..=b'9' => f.write_str("a number"),
            b't' | b'f' => f.write_str("a boolean"),
            b'n' => f.write_str("null"),
            other => Byte(other).fmt(f),
        }
    }
}

impl fmt::Display for ErrorKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use ErrorKind::*;
        match self {
            EmptyBody => f.write_str("empty body"),
            Compressed => f.write_str(
                "the body must be a JSON array of products; it looks gzip-compressed \
                 (compressed bodies are not supported: send the JSON as is)",
            ),
            ByteOrderMark => f.write_str("a byte order mark (BOM) is not allowed before the JSON"),
            UnexpectedEnd { expected } => {
                write!(f, "unexpected end of the body (expected {expected}); the JSON is incomplete")
            }
            NotAnArray { found } => write!(f, "the body must be a JSON array of products, found {}", ValueKind(*found)),
            ExpectedCommaOrBracket { after_item: Some(index), found } => {
                write!(f, "expected ',' or ']' after item $[{index}], found {}", Byte(*found))
            }
            ExpectedCommaOrBracket { after_item: None, found } => {
                write!(f, "expected ',' or ']' after an array element, found {}", Byte(*found))
            }
            ExpectedKey { found } => write!(f, "expected a key in double quotes, found {}", Byte(*found)),
            ExpectedColon { found } => write!(f, "expected ':' after a key, found {}", Byte(*found)),
            ExpectedCommaOrBrace { found } => {
                write!(f, "expected ',' or '}}' after an object member, found {}", Byte(*found))
            }
            ExpectedValue { found } => write!(f, "expected a value, found {}", Byte(*found)),
            TrailingComma { in_object: true } => {
                f.write_str("expected a key after ',' (trailing commas are not allowed)")
            }
            TrailingComma { in_object: false } => {
                f.write_str("expected a value after ',' (trailing commas are not allowed)")
            }
            AfterEnd { found } => write!(f, "unexpected {} after the end of the array", Byte(*found)),
            InvalidLiteral { found } => write!(f, "invalid literal: unexpected {}", Byte(*found)),
            ControlCharacter { byte } => {
                write!(f, "control character 0x{byte:02X} in a string (it must be escaped, e.g. \\n)")
            }
            InvalidUtf8 => f.write_str("invalid UTF-8 in a string"),
            InvalidEscape { found } => write!(f, "invalid escape sequence '\\{}'", Byte(*found)),
            InvalidHexDigit { found } => write!(f, "invalid hex digit {} in a \\u escape", Byte(*found)),
            LoneHighSurrogate => f.write_str("a high surrogate escape must be followed by a low surrogate escape"),
            LoneLowSurrogate => f.write_str("unpaired low surrogate escape"),
            LeadingZero => f.write_str("leading zeros are not allowed in numbers"),
            DigitAfterMinus { found } => write!(f, "expected a digit after '-', found {}", Byte(*found)),
            DigitAfterDot { found } => write!(f, "expected a digit after '.', found {}", Byte(*found)),
            ExponentDigit { found } => write!(f, "expected a digit in the exponent, found {}", Byte(*found)),
            NumberOutOfRange => f.write_str("number out of range"),
            WrongType { path, expected, found } => write!(f, "{path} must be {expected}, found {}", ValueKind(*found)),
            Missing { index, field } => write!(f, "$[{index}] has no \"{}\"", field.as_str()),
            Repeated { index, field } => write!(f, "$[{index}] has \"{}\" more than once", field.as_str()),
            Blank { path } => write!(f, "{path} must not be blank"),
            ControlInId { index } => write!(f, "$[{index}].id must not contain control characters"),
            IdNotInteger { index } => {
                write!(f, "$[{index}].id must be a string or an integer, found a number with a fraction or exponent")
            }
            IdOutOfRange { index } => {
                write!(f, "$[{index}].id is not an integer in the 64-bit range (send long ids as strings)")
            }
            NulCharacter { path } => write!(f, "{path}: {}", self.detail()),
            TooDeep { max } => write!(f, "nesting deeper than {max} levels"),
            ItemTooLarge { index, max } => write!(f, "$[{index}] is larger than {max} bytes (the limit per item)"),
            TooLong { path: Some(path), max } => write!(f, "{path} is longer than {max} characters"),
            TooLong { path: None, .. } => f.write_str("string too long"),
            NumberTooLong { max } => write!(f, "number longer than {max} characters"),
        }
    }
}
