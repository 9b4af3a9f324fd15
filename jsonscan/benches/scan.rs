//! The scanner's throughput on 8 MiB bodies of small items (about 90 bytes) and of large
//! items (about 6 KiB, mostly a description), fed whole and in 64 KiB chunks (as the
//! service receives them), against serde_json reading the same body into `IgnoredAny`
//! (which checks its syntax only, not even its strings' UTF-8) as the reference.
//! `cargo bench -p jsonscan`; criterion prints each one's throughput.

use std::hint::black_box;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use jsonscan::{BodyScanner, Limits};

const BODY_BYTES: usize = 8 * 1024 * 1024;
const CHUNK: usize = 64 * 1024;

/// A body of `item(i)` for i = 0, 1, … up to about [`BODY_BYTES`].
fn body(item: impl Fn(usize) -> String) -> Vec<u8> {
    let mut body = b"[".to_vec();
    let mut i = 0;
    while body.len() < BODY_BYTES {
        if i > 0 {
            body.extend_from_slice(b",\n");
        }
        body.extend_from_slice(item(i).as_bytes());
        i += 1;
    }
    body.push(b']');
    body
}

fn small(i: usize) -> String {
    format!(
        r#"{{"id":"bench-{i}","name":"Product {i}","description":"Solid pine","price":{},"stock":7}}"#,
        i * 7 % 10_000
    )
}

fn large(i: usize) -> String {
    let description = "A sturdy table of solid pine, oiled by hand; seats six. ".repeat(100);
    format!(
        r#"{{"id":{i},"name":"Mesa de jantar n.º {i}","description":"{description}","price":{}.5,"tags":["pine","table","dining",{{"w":180,"d":90,"h":75}}],"available":true,"note":"caf\u00e9 \u2014 ok"}}"#,
        i % 997
    )
}

fn scan(body: &[u8], chunk: usize) -> u64 {
    let mut scanner = BodyScanner::new(Limits::DEFAULT);
    let mut items = 0;
    for piece in body.chunks(chunk) {
        scanner.feed(piece, |_| items += 1).expect("valid");
    }
    scanner.finish().expect("valid").items + items
}

fn bench(c: &mut Criterion) {
    let mut group = c.benchmark_group("scan");
    group.sample_size(20);
    for (name, body) in [("small items", body(small)), ("large items", body(large))] {
        assert!(serde_json::from_slice::<serde::de::IgnoredAny>(&body).is_ok());
        group.throughput(Throughput::Bytes(body.len() as u64));
        group.bench_with_input(BenchmarkId::new("jsonscan, 64 KiB chunks", name), &body, |b, body| {
            b.iter(|| scan(black_box(body), CHUNK))
        });
        group.bench_with_input(BenchmarkId::new("jsonscan, whole", name), &body, |b, body| {
            b.iter(|| scan(black_box(body), body.len()))
        });
        group.bench_with_input(BenchmarkId::new("serde_json IgnoredAny", name), &body, |b, body| {
            b.iter(|| serde_json::from_slice::<serde::de::IgnoredAny>(black_box(body)).expect("valid"))
        });
    }
    group.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
