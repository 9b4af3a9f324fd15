//! The client side: one task per source polls it on its own period and hands good
//! snapshots to the [`Gateway`].
//!
//! Why a tokio interval per source rather than tokio-cron-scheduler: its repeated jobs
//! keep whole seconds only (a `1500ms` period would become 1 s), are checked every 500 ms
//! (up to half a second of jitter), first fire one period after start (we poll at once),
//! and start a new run even while the previous one still hangs. An interval task does
//! exactly "poll now, then every period, never overlapping", and these polls belong to
//! this node alone — they are not the cluster-leased periodic jobs of `jobs::periodic`.

use std::{error::Error as _, time::Duration};

use anyhow::Context as _;
use reqwest::header;
use serde_json::error::Category;
use tokio::{task::JoinHandle, time::MissedTickBehavior};

use super::{FeedConfig, Gateway, PollFailure};
use crate::db::now_ms;

/// Why a poll gave no snapshot.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum PollError {
    #[error("request failed: {0}")]
    Request(String),
    #[error("no complete answer within {0:?}")]
    Timeout(Duration),
    #[error("HTTP status {0}")]
    Status(u16),
    #[error("body larger than {limit} bytes")]
    TooLarge { limit: usize },
    #[error("body is not UTF-8 (invalid byte at offset {valid_up_to})")]
    InvalidUtf8 { valid_up_to: usize },
    #[error("malformed JSON: {0}")]
    MalformedJson(String),
    #[error("not a JSON array: {0}")]
    WrongShape(String),
    #[error("none of its {dropped} items is a string of the expected length (FEED_ITEM_BYTES)")]
    NoValidItems { dropped: usize },
    #[error("internal error: {0}")]
    Internal(String),
}

impl PollError {
    /// Short label for logs, metrics and `lastError` consumers.
    pub fn reason(&self) -> &'static str {
        match self {
            Self::Request(_) => "request",
            Self::Timeout(_) => "timeout",
            Self::Status(_) => "status",
            Self::TooLarge { .. } => "too_large",
            Self::InvalidUtf8 { .. } => "invalid_utf8",
            Self::MalformedJson(_) => "malformed_json",
            Self::WrongShape(_) => "wrong_shape",
            Self::NoValidItems { .. } => "no_valid_items",
            Self::Internal(_) => "internal",
        }
    }
}

/// A source's answer, once parsed: the items kept and what was dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ParsedItems {
    pub items: Vec<String>,
    pub dropped: Dropped,
}

/// Items of an answer that were not strings of the expected length.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Dropped {
    /// Numbers, `null`, booleans, objects, arrays.
    pub not_strings: usize,
    /// Strings of another length in UTF-8 bytes.
    pub wrong_length: usize,
    /// The first dropped item, for the log (shortened, escaped).
    pub sample: Option<String>,
}

impl Dropped {
    pub fn count(&self) -> usize {
        self.not_strings + self.wrong_length
    }
}

/// One element of the array, as read: a string, or a short description of anything else.
enum Item {
    Text(String),
    Other(String),
}

impl<'de> serde::Deserialize<'de> for Item {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(ItemVisitor)
    }
}

struct ItemVisitor;

impl<'de> serde::de::Visitor<'de> for ItemVisitor {
    type Value = Item;

    fn expecting(&self, formatter: &mut std::fmt::Formatter) -> std::fmt::Result {
        formatter.write_str("any JSON value")
    }
    fn visit_str<E>(self, value: &str) -> Result<Item, E> {
        Ok(Item::Text(value.to_owned()))
    }
    fn visit_string<E>(self, value: String) -> Result<Item, E> {
        Ok(Item::Text(value))
    }
    fn visit_bool<E>(self, value: bool) -> Result<Item, E> {
        Ok(Item::Other(value.to_string()))
    }
    fn visit_i64<E>(self, value: i64) -> Result<Item, E> {
        Ok(Item::Other(value.to_string()))
    }
    fn visit_u64<E>(self, value: u64) -> Result<Item, E> {
        Ok(Item::Other(value.to_string()))
    }
    fn visit_f64<E>(self, value: f64) -> Result<Item, E> {
        Ok(Item::Other(value.to_string()))
    }
    fn visit_unit<E>(self) -> Result<Item, E> {
        Ok(Item::Other("null".into()))
    }
    fn visit_seq<A: serde::de::SeqAccess<'de>>(self, mut seq: A) -> Result<Item, A::Error> {
        while seq.next_element::<serde::de::IgnoredAny>()?.is_some() {}
        Ok(Item::Other("an array".into()))
    }
    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut map: A) -> Result<Item, A::Error> {
        while map.next_entry::<serde::de::IgnoredAny, serde::de::IgnoredAny>()?.is_some() {}
        Ok(Item::Other("an object".into()))
    }
}

/// Longest sample of a dropped string in the log, in characters.
const SAMPLE_CHARS: usize = 40;

/// A good feed body is a JSON array. Its items that are not strings of exactly
/// `item_bytes` UTF-8 bytes (any length when 0) are dropped and counted, not served.
pub fn parse_items(body: &[u8], item_bytes: usize) -> Result<ParsedItems, PollError> {
    let text =
        std::str::from_utf8(body).map_err(|error| PollError::InvalidUtf8 { valid_up_to: error.valid_up_to() })?;
    // RFC 8259 lets a parser ignore a byte order mark; serde_json does not.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    let read = serde_json::from_str::<Vec<Item>>(text).map_err(|error| match error.classify() {
        Category::Data => PollError::WrongShape(error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => PollError::MalformedJson(error.to_string()),
    })?;
    let mut parsed = ParsedItems { items: Vec::with_capacity(read.len()), dropped: Dropped::default() };
    for item in read {
        let sample = match item {
            Item::Text(text) if item_bytes == 0 || text.len() == item_bytes => {
                parsed.items.push(text);
                continue;
            }
            Item::Text(text) => {
                parsed.dropped.wrong_length += 1;
                let shown: String = text.chars().take(SAMPLE_CHARS).collect();
                format!("{shown:?} ({} bytes)", text.len())
            }
            Item::Other(description) => {
                parsed.dropped.not_strings += 1;
                description
            }
        };
        parsed.dropped.sample.get_or_insert(sample);
    }
    Ok(parsed)
}

/// Parses an answer of source `index` and hands its items to the gateway. An answer
/// whose every item is dropped is a failed poll, as any other bad answer: the source's
/// last good snapshot stays rather than being emptied by a partner's broken release.
fn accept(gateway: &Gateway, index: usize, body: &[u8], item_bytes: usize) -> (Dropped, Result<(), PollError>) {
    let ParsedItems { items, dropped } = match parse_items(body, item_bytes) {
        Ok(parsed) => parsed,
        Err(error) => return (Dropped::default(), Err(error)),
    };
    gateway.record_dropped(index, dropped.count());
    if items.is_empty() && dropped.count() > 0 {
        let error = PollError::NoValidItems { dropped: dropped.count() };
        return (dropped, Err(error));
    }
    gateway.record_success(index, items);
    (dropped, Ok(()))
}

/// The running poll tasks of this node.
#[derive(Debug)]
pub struct Pollers {
    tasks: Vec<JoinHandle<()>>,
}

impl Pollers {
    /// Stops polling. A poll in progress is dropped mid-request: polls only read.
    pub fn shutdown(self) {
        for task in self.tasks {
            task.abort();
        }
    }
}

/// Starts one poll task per source; each polls at once, then every period.
pub fn spawn_pollers(gateway: &Gateway) -> anyhow::Result<Pollers> {
    let config = gateway.config().clone();
    let client = reqwest::Client::builder()
        .user_agent(concat!("emporium-feed-gateway/", env!("CARGO_PKG_VERSION")))
        .connect_timeout(config.feed_timeout)
        .build()
        .context("building the feed HTTP client")?;
    let tasks = (0..gateway.sources_config().len())
        .map(|index| tokio::spawn(poll_forever(gateway.clone(), client.clone(), config.clone(), index)))
        .collect();
    Ok(Pollers { tasks })
}

async fn poll_forever(gateway: Gateway, client: reqwest::Client, config: FeedConfig, index: usize) {
    let Some(source) = gateway.sources_config().get(index).cloned() else { return };
    let mut interval = tokio::time::interval(source.period);
    // A poll that ran late (a slow upstream) is followed by a full period, not a burst.
    interval.set_missed_tick_behavior(MissedTickBehavior::Delay);
    loop {
        interval.tick().await;
        poll_once(&gateway, &client, &config, index, &source.url, source.period).await;
    }
}

/// One poll of one source, with its outcome recorded; never panics, never gives up.
async fn poll_once(
    gateway: &Gateway,
    client: &reqwest::Client,
    config: &FeedConfig,
    index: usize,
    url: &str,
    period: Duration,
) {
    // A poll never outlives its period, so a hanging source cannot delay its own schedule.
    let limit = config.feed_timeout.min(period);
    let (dropped, outcome) = match tokio::time::timeout(limit, fetch(client, url, config.feed_max_body_bytes)).await {
        Ok(Ok(body)) => {
            // Parsing, sorting and re-serializing a big feed is CPU work: off the async workers.
            let gateway = gateway.clone();
            let item_bytes = config.feed_item_bytes;
            tokio::task::spawn_blocking(move || accept(&gateway, index, &body, item_bytes))
                .await
                .unwrap_or_else(|error| (Dropped::default(), Err(PollError::Internal(error.to_string()))))
        }
        Ok(Err(error)) => (Dropped::default(), Err(error)),
        Err(_) => (Dropped::default(), Err(PollError::Timeout(limit))),
    };
    if dropped.count() > 0 {
        // One line per poll, not per item: a bad feed of a million items must not flood the log.
        tracing::warn!(
            source = url,
            dropped = dropped.count(),
            not_strings = dropped.not_strings,
            wrong_length = dropped.wrong_length,
            expected_bytes = config.feed_item_bytes,
            sample = dropped.sample.as_deref().unwrap_or_default(),
            "feed items dropped: not strings of the expected length"
        );
        for (reason, count) in [("not_string", dropped.not_strings), ("wrong_length", dropped.wrong_length)] {
            if count > 0 {
                metrics::counter!("emporium_feed_items_dropped_total", "source" => url.to_string(), "reason" => reason)
                    .increment(count as u64);
            }
        }
    }
    match outcome {
        Ok(()) => {
            metrics::counter!("emporium_feed_polls_total", "source" => url.to_string(), "outcome" => "ok").increment(1);
            metrics::gauge!("emporium_feed_source_last_success_seconds", "source" => url.to_string())
                .set(now_ms() as f64 / 1000.0);
        }
        Err(error) => {
            tracing::warn!(source = url, reason = error.reason(), error = %error, "feed poll failed; keeping the last good snapshot");
            metrics::counter!("emporium_feed_polls_total", "source" => url.to_string(), "outcome" => error.reason())
                .increment(1);
            gateway.record_failure(
                index,
                PollFailure { at: now_ms(), reason: error.reason(), message: error.to_string() },
            );
        }
    }
}

/// GETs `url` and returns its body, reading no more than `limit` bytes of it.
async fn fetch(client: &reqwest::Client, url: &str, limit: usize) -> Result<Vec<u8>, PollError> {
    let mut response = client
        .get(url)
        .header(header::ACCEPT, "application/json")
        .send()
        .await
        .map_err(|error| PollError::Request(error_chain(&error)))?;
    if !response.status().is_success() {
        return Err(PollError::Status(response.status().as_u16()));
    }
    let announced = response.content_length().unwrap_or(0);
    if announced > limit as u64 {
        return Err(PollError::TooLarge { limit });
    }
    let mut body = Vec::with_capacity(announced as usize);
    while let Some(chunk) = response.chunk().await.map_err(|error| PollError::Request(error_chain(&error)))? {
        if body.len() + chunk.len() > limit {
            return Err(PollError::TooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// reqwest's own message hides the cause ("error sending request"); add the chain.
fn error_chain(error: &reqwest::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        message.push_str(": ");
        message.push_str(&cause.to_string());
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kept(body: &[u8], item_bytes: usize) -> Vec<String> {
        parse_items(body, item_bytes).expect("an array").items
    }

    #[test]
    fn a_json_array_of_strings_is_accepted() {
        assert_eq!(kept(br#"["630e1244","5f4a8990"]"#, 8), ["630e1244", "5f4a8990"]);
        assert_eq!(parse_items(b" [ ] ", 8), Ok(ParsedItems::default()));
        assert_eq!(kept("\u{feff}[\"abcdefgh\"]".as_bytes(), 8), ["abcdefgh"]);
        // 0: any string.
        assert_eq!(kept(r#"["a","é\n"]"#.as_bytes(), 0), ["a", "é\n"]);
        // Escapes count as the bytes they stand for.
        assert_eq!(kept(br#"["abc\u0000efgh","abc\\efgh"]"#, 8), ["abc\0efgh", "abc\\efgh"]);
    }

    #[test]
    fn items_of_another_shape_are_dropped_and_counted_with_a_sample() {
        // 9 bytes, 7 bytes, 8 characters of 16 bytes, 4 characters of 8 bytes (kept), non-strings.
        let body = r#"["abcdefgh","abcdefghi","abcdefg","éééééééé","éééé",1,null,true,{"a":[1]},["x"],"zzzzzzzz"]"#;
        let parsed = parse_items(body.as_bytes(), 8).expect("an array");
        assert_eq!(parsed.items, ["abcdefgh", "éééé", "zzzzzzzz"]);
        assert_eq!((parsed.dropped.wrong_length, parsed.dropped.not_strings, parsed.dropped.count()), (3, 5, 8));
        assert_eq!(parsed.dropped.sample.as_deref(), Some(r#""abcdefghi" (9 bytes)"#));
        let numbers = parse_items(b"[1,2.5,-3]", 8).expect("an array");
        assert_eq!((numbers.items.len(), numbers.dropped.not_strings), (0, 3));
        assert_eq!(numbers.dropped.sample.as_deref(), Some("1"));
        // A long sample is shortened.
        let long = format!("[\"{}\"]", "x".repeat(1000));
        let sample = parse_items(long.as_bytes(), 8).expect("an array").dropped.sample.unwrap_or_default();
        assert!(sample.len() < 60 && sample.ends_with("(1000 bytes)"), "{sample}");
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let reason = |body: &[u8]| parse_items(body, 8).map_err(|error| error.reason());
        assert_eq!(reason(br#"{"a":1}"#), Err("wrong_shape"));
        assert_eq!(reason(br#""abcdefgh""#), Err("wrong_shape"));
        assert_eq!(reason(b"[\"\xff\xfe\"]"), Err("invalid_utf8"));
        assert_eq!(reason(br#"["a","#), Err("malformed_json"));
        assert_eq!(reason(br#"["a"] x"#), Err("malformed_json"));
        assert_eq!(reason(br#"[{"a":]"#), Err("malformed_json"));
        assert_eq!(reason(b""), Err("malformed_json"));
    }
}
