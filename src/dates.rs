//! Date-times in the API. Outputs are chrono's `DateTime<Utc>`, async-graphql's
//! `DateTime` scalar (RFC 3339, in UTC). Inputs are [`DateTimeInput`]: the same GraphQL
//! scalar, which also takes a plain date, as people type them. A date-time argument
//! declared as chrono's type would take RFC 3339 only: declare inputs with this one.

use async_graphql::{InputValueError, InputValueResult, Scalar, ScalarType, Value};
use chrono::{DateTime, NaiveDate, Utc};

/// The GraphQL name both the output (chrono's) and the input ([`DateTimeInput`]) carry:
/// the schema is built with this name's conflict allowed, so clients see one scalar.
pub const SCALAR_NAME: &str = "DateTime";

/// A date-time argument: an RFC 3339 date-time with an offset (converted to UTC), or a
/// date (`2026-12-04`), meaning its start (00:00 UTC).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DateTimeInput(pub DateTime<Utc>);

impl DateTimeInput {
    pub fn utc(self) -> DateTime<Utc> {
        self.0
    }
}

#[Scalar(name = "DateTime", specified_by_url = "https://datatracker.ietf.org/doc/html/rfc3339")]
impl ScalarType for DateTimeInput {
    fn parse(value: Value) -> InputValueResult<Self> {
        match &value {
            Value::String(text) => parse(text).map(Self).map_err(InputValueError::custom),
            _ => Err(InputValueError::expected_type(value)),
        }
    }

    fn to_value(&self) -> Value {
        Value::String(self.0.to_rfc3339())
    }
}

/// Parses a date (`YYYY-MM-DD`: that day's start, 00:00 UTC) or an RFC 3339 date-time
/// with an offset; the error says what is accepted.
pub fn parse(text: &str) -> Result<DateTime<Utc>, String> {
    let is_date = text.len() == 10
        && text
            .bytes()
            .enumerate()
            .all(|(i, byte)| if i == 4 || i == 7 { byte == b'-' } else { byte.is_ascii_digit() });
    let parsed = if is_date {
        NaiveDate::parse_from_str(text, "%Y-%m-%d")
            .ok()
            .and_then(|date| date.and_hms_opt(0, 0, 0))
            .map(|at| at.and_utc())
    } else {
        text.parse::<DateTime<Utc>>().ok()
    };
    parsed.ok_or_else(|| {
        let shown: String = text.chars().take(64).collect();
        format!(
            "`{shown}` is neither a date (`2026-12-04`, meaning 00:00 UTC) nor an RFC 3339 date-time with an offset \
             (`2026-12-04T10:15:00Z`, `2026-12-04T11:15:00+01:00`)"
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_and_date_times_are_accepted() {
        let day = parse("2026-12-04").unwrap();
        assert_eq!(day.to_rfc3339(), "2026-12-04T00:00:00+00:00");
        let offset = parse("2026-12-04T11:15:00+01:00").unwrap();
        assert_eq!(offset.to_rfc3339(), "2026-12-04T10:15:00+00:00");
        assert_eq!(parse("2026-12-04T10:15:00.123Z").unwrap().timestamp_millis() % 1000, 123);
        for bad in ["", "2026-13-01", "2026-02-30", "2026-1-04", "04.12.2026", "2026-12-04T10:15:00", "tomorrow"] {
            assert!(parse(bad).is_err(), "{bad}");
        }
    }
}
