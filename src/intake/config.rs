//! Intake settings, and the genre → bucket map.

use std::time::Duration;

use crate::settings::{InvalidSetting, parse_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct IntakeConfig {
    /// Genre → bucket map: `genre=bucket` pairs, comma-separated; a bare `genre` means a bucket of
    /// the same name. A bucket is a top-level folder (prefix) of OBJECT_STORE_URL. Genres match
    /// case-insensitively; a message whose genre is not listed ends FAILED ("no bucket for genre X").
    #[arg(
        long = "intake-bucket",
        env = "INTAKE_BUCKETS",
        value_delimiter = ',',
        default_values = ["scifi", "romance"],
        value_parser = parse_route,
    )]
    pub intake_buckets: Vec<BucketRoute>,
    /// Messages per intake job: each submission is split per genre into jobs of at most this many (a running job also writes those queued behind it).
    #[arg(long, env = "INTAKE_BATCH_SIZE", default_value_t = 100, value_parser = clap::value_parser!(u32).range(1..=1000))]
    pub intake_batch_size: u32,
    /// Object writes in flight per intake job (distinct titles are written concurrently).
    #[arg(long, env = "INTAKE_WRITE_CONCURRENCY", default_value_t = 16, value_parser = clap::value_parser!(u32).range(1..=256))]
    pub intake_write_concurrency: u32,
    /// Largest `POST /v1/intake` body in bytes (larger → 413).
    #[arg(long, env = "INTAKE_MAX_BODY_BYTES", default_value_t = 10 * 1024 * 1024)]
    pub intake_max_body_bytes: usize,
    /// The `intake` health check reports `degraded` when the oldest waiting message is older than this.
    #[arg(long, env = "INTAKE_MAX_WAIT", default_value = "5m", value_parser = parse_duration)]
    pub intake_max_wait: Duration,
}

impl IntakeConfig {
    /// The bucket of a genre (already normalized by [`genre_key`]); the first matching entry wins.
    pub fn bucket_for(&self, genre_key: &str) -> Option<&str> {
        self.intake_buckets.iter().find(|route| route.genre == genre_key).map(|route| route.bucket.as_str())
    }
}

/// One `genre=bucket` entry of `INTAKE_BUCKETS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BucketRoute {
    pub genre: String,
    pub bucket: String,
}

/// How a genre is matched and grouped: trimmed and lower-cased, so `Romance` and
/// `romance ` share a bucket and a FIFO order.
pub fn genre_key(genre: &str) -> String {
    genre.trim().to_lowercase()
}

/// Bucket names that belong to other parts of the service.
const RESERVED_BUCKETS: [&str; 1] = ["uploads"];

fn parse_route(text: &str) -> Result<BucketRoute, InvalidSetting> {
    let text = text.trim();
    let (genre, bucket) = text.split_once('=').unwrap_or((text, text));
    let genre = genre_key(genre);
    let bucket = bucket.trim().to_string();
    if genre.is_empty() {
        return Err(InvalidSetting::new(format!("`{text}`: the genre is empty (use genre=bucket)")));
    }
    // S3's bucket-name rules, which are also safe folder names everywhere.
    let valid = (1..=63).contains(&bucket.len())
        && bucket.bytes().all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-' || b == b'.')
        && bucket.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && bucket.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric())
        && !bucket.contains("..");
    if !valid {
        return Err(InvalidSetting::new(format!(
            "`{text}`: bucket `{bucket}` must be 1-63 characters of a-z, 0-9, '-' and '.', starting and ending with a letter or digit"
        )));
    }
    if RESERVED_BUCKETS.contains(&bucket.as_str()) {
        return Err(InvalidSetting::new(format!(
            "`{text}`: the bucket name `{bucket}` is used by another part of the service"
        )));
    }
    Ok(BucketRoute { genre, bucket })
}

#[cfg(test)]
mod tests {
    use clap::Parser as _;

    use super::*;

    /// The intake's flags on their own, as the service's command line flattens them.
    #[derive(clap::Parser)]
    struct Cli {
        #[command(flatten)]
        intake: IntakeConfig,
    }

    #[test]
    fn routes_parse_with_and_without_a_bucket_name() {
        assert_eq!(parse_route("scifi"), Ok(BucketRoute { genre: "scifi".into(), bucket: "scifi".into() }));
        assert_eq!(
            parse_route(" Romance = romance-books "),
            Ok(BucketRoute { genre: "romance".into(), bucket: "romance-books".into() })
        );
        for bad in ["=x", "x=", "x=../up", "x=Upper", "x=a/b", "x=-a", "x=uploads", "x=.hidden"] {
            assert!(parse_route(bad).is_err(), "{bad} should be refused");
        }
    }

    #[test]
    fn defaults_are_the_scifi_and_romance_buckets() {
        let cli = Cli::try_parse_from(["emporium"]).expect("parses");
        let intake = cli.intake;
        assert_eq!(intake.bucket_for("scifi"), Some("scifi"));
        assert_eq!(intake.bucket_for("romance"), Some("romance"));
        assert_eq!(intake.bucket_for("fantasy"), None);
        let cli =
            Cli::try_parse_from(["emporium", "--intake-bucket", "romance=romance-books,fantasy"]).expect("parses");
        assert_eq!(cli.intake.bucket_for("romance"), Some("romance-books"));
        assert_eq!(cli.intake.bucket_for("fantasy"), Some("fantasy"));
        assert_eq!(cli.intake.bucket_for("scifi"), None);
    }
}
