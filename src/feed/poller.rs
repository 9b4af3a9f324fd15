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
    #[error("not a JSON array of strings: {0}")]
    WrongShape(String),
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
            Self::Internal(_) => "internal",
        }
    }
}

/// A good feed body is a JSON array of strings (any strings; empty is fine).
pub fn parse_items(body: &[u8]) -> Result<Vec<String>, PollError> {
    let text =
        std::str::from_utf8(body).map_err(|error| PollError::InvalidUtf8 { valid_up_to: error.valid_up_to() })?;
    // RFC 8259 lets a parser ignore a byte order mark; serde_json does not.
    let text = text.strip_prefix('\u{feff}').unwrap_or(text);
    serde_json::from_str::<Vec<String>>(text).map_err(|error| match error.classify() {
        Category::Data => PollError::WrongShape(error.to_string()),
        Category::Syntax | Category::Eof | Category::Io => PollError::MalformedJson(error.to_string()),
    })
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
    let outcome = match tokio::time::timeout(limit, fetch(client, url, config.feed_max_body_bytes)).await {
        Ok(Ok(body)) => {
            // Parsing, sorting and re-serializing a big feed is CPU work: off the async workers.
            let gateway = gateway.clone();
            tokio::task::spawn_blocking(move || parse_items(&body).map(|items| gateway.record_success(index, items)))
                .await
                .unwrap_or_else(|error| Err(PollError::Internal(error.to_string())))
        }
        Ok(Err(error)) => Err(error),
        Err(_) => Err(PollError::Timeout(limit)),
    };
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

    #[test]
    fn a_json_array_of_strings_is_accepted() {
        assert_eq!(parse_items(br#"["630e1244","5f4a8990"]"#), Ok(vec!["630e1244".into(), "5f4a8990".into()]));
        assert_eq!(parse_items(b" [ ] "), Ok(vec![]));
        assert_eq!(parse_items("\u{feff}[\"x\"]".as_bytes()), Ok(vec!["x".into()]));
        // Any string, not only the partners' 8-character ones.
        assert_eq!(parse_items(r#"["a","é\n"]"#.as_bytes()), Ok(vec!["a".into(), "é\n".into()]));
    }

    #[test]
    fn anything_else_is_refused_with_its_reason() {
        let reason = |body: &[u8]| parse_items(body).map_err(|error| error.reason());
        assert_eq!(reason(br#"{"a":1}"#), Err("wrong_shape"));
        assert_eq!(reason(b"[1,2,3]"), Err("wrong_shape"));
        assert_eq!(reason(br#"["a",null]"#), Err("wrong_shape"));
        assert_eq!(reason(br#""abcdefgh""#), Err("wrong_shape"));
        assert_eq!(reason(b"[\"\xff\xfe\"]"), Err("invalid_utf8"));
        assert_eq!(reason(br#"["a","#), Err("malformed_json"));
        assert_eq!(reason(br#"["a"] x"#), Err("malformed_json"));
        assert_eq!(reason(b""), Err("malformed_json"));
    }
}
