//! Parsers for setting values that clap has no parser for: durations (`250ms`, `30s`)
//! and sizes (`10MiB`). Every section of the settings (each domain's and each
//! infrastructure part's) uses them.

use std::time::Duration;

/// A setting's value that does not parse, and why in words (clap shows it with the flag).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct InvalidSetting(pub String);

impl InvalidSetting {
    pub fn new(message: impl Into<String>) -> Self {
        Self(message.into())
    }
}

/// Parses `250ms`, `30s`, `5m`, `2h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, InvalidSetting> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 = number
        .parse()
        .map_err(|_| InvalidSetting::new(format!("`{text}` is not a duration (examples: 250ms, 30s, 5m, 2h)")))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(InvalidSetting::new(format!("`{text}`: unknown unit `{unit}` (use ms, s, m or h)"))),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(InvalidSetting::new(format!("`{text}` is not a valid duration")));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// [`parse_bytes`] for sizes held in memory.
pub fn parse_size(text: &str) -> Result<usize, InvalidSetting> {
    let bytes = parse_bytes(text)?;
    usize::try_from(bytes).map_err(|_| InvalidSetting::new(format!("`{text}` is too large")))
}

/// Parses a size in bytes: `1048576`, `512KiB`, `10MiB`, `8GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(text: &str) -> Result<u64, InvalidSetting> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number
        .parse()
        .map_err(|_| InvalidSetting::new(format!("`{text}` is not a size (examples: 1048576, 10MiB, 8GiB)")))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => {
            return Err(InvalidSetting::new(format!(
                "`{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, KB, MB or GB)"
            )));
        }
    };
    value.checked_mul(factor).ok_or_else(|| InvalidSetting::new(format!("`{text}` is too large")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_parse_with_units() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(parse_duration("7"), Ok(Duration::from_secs(7)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("2h"), Ok(Duration::from_secs(7200)));
        assert!(parse_duration("ten").is_err());
        assert!(parse_duration("5d").is_err());
    }

    #[test]
    fn sizes_parse_with_units() {
        assert_eq!(parse_bytes("1048576"), Ok(1 << 20));
        assert_eq!(parse_bytes("10MiB"), Ok(10 << 20));
        assert_eq!(parse_bytes("8GiB"), Ok(8 << 30));
        assert_eq!(parse_bytes("2 KB"), Ok(2000));
        assert!(parse_bytes("lots").is_err());
        assert!(parse_bytes("5XB").is_err());
        assert!(parse_bytes("99999999999TiB").is_err());
    }
}
