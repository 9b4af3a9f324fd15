//! Intake benchmark helpers, driven by `bench/intake.sh`.
//!
//! - `intake-submit BASE_URL COUNT BATCH RUN`: submits COUNT messages (titles named after RUN) in the standard shape to
//!   `POST /v1/intake`, BATCH per request, then polls `intakeCounts` until every one is
//!   `STORED`; prints the messages/s from the first submission to the last `STORED`.
//! - `intake-fs DIR COUNT RUN`: the reference, writing the same COUNT files (same names, same
//!   bytes) straight to DIR/<bucket>/ with tokio::fs, as concurrently as emporium's
//!   writers (`INTAKE_WRITE_CONCURRENCY`, 16 by default); prints files/s.

use std::time::{Duration, Instant};

use futures::StreamExt as _;
use serde_json::{Value, json};

const WRITE_CONCURRENCY: usize = 16;

/// Message `n` of run `run`, half romance and half scifi, each with its own title.
fn message(run: &str, n: usize) -> Value {
    json!({
        "id": format!("bench-{run}-{n}"),
        "title": format!("Bench {run} title {n}"),
        "author": "John Doe",
        "year": "1960",
        "genre": if n.is_multiple_of(2) { "romance" } else { "scifi" },
        "summary": "Lorem ipsum dolor sit amet, consectetur adipiscing elit, sed do eiusmod tempor incididunt ut labore et dolore magna aliqua.",
    })
}

pub async fn submit_and_wait(base_url: &str, count: usize, batch: usize, run: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let stored = || async {
        let answer: Value = http
            .post(format!("{base_url}/graphql"))
            .json(&json!({ "query": "{ intakeCounts { stored failed } }" }))
            .send()
            .await?
            .json()
            .await?;
        let counts = &answer["data"]["intakeCounts"];
        anyhow::ensure!(counts["failed"] == 0, "messages failed: {answer}");
        counts["stored"].as_u64().ok_or_else(|| anyhow::anyhow!("unexpected answer {answer}"))
    };
    let before = stored().await?;
    let started = Instant::now();
    for first in (0..count).step_by(batch) {
        let messages: Vec<Value> = (first..(first + batch).min(count)).map(|n| message(run, n)).collect();
        let response = http.post(format!("{base_url}/v1/intake")).json(&messages).send().await?;
        anyhow::ensure!(
            response.status() == 202,
            "submission answered {}: {}",
            response.status(),
            response.text().await?
        );
    }
    let submitted = started.elapsed();
    let deadline = Instant::now() + Duration::from_secs(600);
    while stored().await? < before + count as u64 {
        anyhow::ensure!(Instant::now() < deadline, "not all messages were stored within 10 minutes");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    println!("{:.0} {seconds:.2} {:.2}", count as f64 / seconds, submitted.as_secs_f64());
    Ok(())
}

pub async fn write_directly(dir: &str, count: usize, run: &str) -> anyhow::Result<()> {
    for bucket in ["romance", "scifi"] {
        tokio::fs::create_dir_all(format!("{dir}/{bucket}")).await?;
    }
    let started = Instant::now();
    let failures = futures::stream::iter(0..count)
        .map(|n| async move {
            let message = message(run, n);
            let bucket = message["genre"].as_str().unwrap_or("scifi").to_string();
            let title = message["title"].as_str().unwrap_or_default().to_string();
            let bytes = serde_json::to_vec(&message).unwrap_or_default();
            tokio::fs::write(format!("{dir}/{bucket}/{title}.json"), bytes).await.is_err()
        })
        .buffer_unordered(WRITE_CONCURRENCY)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failures == 0, "{failures} files could not be written");
    let seconds = started.elapsed().as_secs_f64();
    println!("{:.0} {seconds:.2}", count as f64 / seconds);
    Ok(())
}
