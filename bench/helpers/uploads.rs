//! Upload benchmark helpers, driven by `bench/uploads.sh`.
//!
//! - `uploads-generate BODY CSV BYTES SKU_PREFIX`: writes a JSON array of products of at
//!   least BYTES bytes to BODY and, unless CSV is `-`, the rows emporium's ingestion
//!   makes of it to CSV (the `psql \copy` reference loads those).
//! - `uploads-sink LISTEN SPOOL_DIR`: the reference for the upload path, an axum handler
//!   that reads every request body to the end and discards it; and, at `/hash-spool`, the
//!   node's receiving pass without the validation: the body hashed (BLAKE3) and spooled
//!   with emporium's own `ObjectWriter` into SPOOL_DIR (then deleted), the most a node
//!   could reach with a validator that cost nothing; at `/spool`, the same without the
//!   hash: what writing the body to the disk while it arrives allows at all.
//! - `uploads-wait BASE_URL UPLOAD_ID`: polls `GET /v1/uploads/{id}` every 20 ms on one
//!   connection until the upload succeeded (the script times it). (A `curl | jq`
//!   per poll took a fifth of the machine from the ingestion it measured.)
//! - `uploads-stages BODY`: the receiving pass's stages one at a time, on one core, over
//!   the first 256 MiB of BODY held in memory in 64 KiB chunks: MB/s of validating
//!   (the scanner), hashing (BLAKE3) and, as the reference, copying the bytes.

use std::{
    fs::File,
    io::{BufWriter, Write as _},
    net::SocketAddr,
    sync::Arc,
    time::{Duration, Instant},
};

use axum::{Router, body::Body, extract::State, http::StatusCode, routing::any};
use emporium::storage::ObjectStorage;
use futures::StreamExt as _;
use object_store::{ObjectStoreExt as _, path::Path};

/// Roughly the size of a product of a real catalog feed, in bytes of JSON.
const DESCRIPTION: &str = "Solid pine table with a natural oil finish, seats six; ships flat-packed \
with tools and fittings. Dimensions 180 x 90 x 75 cm, weight 38 kg.";

pub fn generate(body_path: &str, csv_path: &str, bytes: u64, prefix: &str) -> anyhow::Result<()> {
    let mut body = BufWriter::with_capacity(1 << 20, File::create(body_path)?);
    let mut csv = match csv_path {
        "-" => None,
        path => Some(BufWriter::with_capacity(1 << 20, File::create(path)?)),
    };
    let mut written = 1u64;
    let mut items = 0u64;
    body.write_all(b"[")?;
    while written < bytes {
        let n = items;
        let price = 1000 + n % 99_000;
        let item = format!(
            "{}{{\"id\":\"{prefix}-{n}\",\"name\":\"Product {n}\",\"description\":\"{DESCRIPTION}\",\"price\":{price}}}",
            if items == 0 { "" } else { ",\n" },
        );
        body.write_all(item.as_bytes())?;
        written += item.len() as u64;
        if let Some(csv) = csv.as_mut() {
            // sku, name, description, attributes, registration_status, created_at, updated_at
            writeln!(csv, "{prefix}-{n},Product {n},\"{DESCRIPTION}\",\"{{\"\"price\"\":{price}}}\",pending,0,0")?;
        }
        items += 1;
    }
    body.write_all(b"]\n")?;
    body.flush()?;
    if let Some(mut csv) = csv {
        csv.flush()?;
    }
    println!("{items}");
    Ok(())
}

pub async fn sink(listen: SocketAddr, spool_dir: &str) -> anyhow::Result<()> {
    async fn discard(body: Body) -> String {
        let mut stream = body.into_data_stream();
        let mut bytes = 0usize;
        while let Some(Ok(chunk)) = stream.next().await {
            bytes += chunk.len();
        }
        format!("{{\"bytes\":{bytes}}}")
    }
    /// The body spooled to a fresh object, then deleted; hashed too when `hasher` is given.
    async fn spool(
        storage: &ObjectStorage,
        body: Body,
        mut hasher: Option<blake3::Hasher>,
    ) -> Result<String, (StatusCode, String)> {
        let spooled: anyhow::Result<String> = async {
            let path = Path::from(format!("hash-spool/{}.json", uuid::Uuid::new_v4().simple()));
            let mut spool = storage.writer(&path).await?;
            let mut stream = body.into_data_stream();
            let mut bytes = 0usize;
            while let Some(chunk) = stream.next().await {
                let chunk = chunk?;
                bytes += chunk.len();
                if let Some(hasher) = hasher.as_mut() {
                    hasher.update(&chunk);
                }
                spool.write(chunk).await?;
            }
            spool.finish().await?;
            storage.store().delete(&path).await?;
            let digest = hasher.map_or("null".to_owned(), |hasher| format!("\"{}\"", hasher.finalize().to_hex()));
            Ok(format!("{{\"bytes\":{bytes},\"digest\":{digest}}}"))
        }
        .await;
        spooled.map_err(|error| (StatusCode::INTERNAL_SERVER_ERROR, format!("{error:#}")))
    }
    async fn hash_spool(State(storage): State<Arc<ObjectStorage>>, body: Body) -> Result<String, (StatusCode, String)> {
        spool(&storage, body, Some(blake3::Hasher::new())).await
    }
    async fn spool_only(State(storage): State<Arc<ObjectStorage>>, body: Body) -> Result<String, (StatusCode, String)> {
        spool(&storage, body, None).await
    }
    let storage = Arc::new(ObjectStorage::local(std::path::Path::new(spool_dir))?);
    let app = Router::new()
        .route("/hash-spool", any(hash_spool))
        .route("/spool", any(spool_only))
        .fallback(any(discard))
        .with_state(storage);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

pub async fn wait(base_url: &str, upload_id: &str) -> anyhow::Result<()> {
    let http = reqwest::Client::new();
    let url = format!("{base_url}/v1/uploads/{upload_id}");
    let started = Instant::now();
    loop {
        let upload: serde_json::Value = http.get(&url).send().await?.json().await?;
        match upload["status"].as_str() {
            Some("succeeded") => break,
            Some("failed") => anyhow::bail!("ingestion failed: {upload}"),
            _ => {}
        }
        anyhow::ensure!(started.elapsed() < Duration::from_secs(1800), "not ingested within 30 minutes: {upload}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

pub fn stages(body_path: &str) -> anyhow::Result<()> {
    use std::io::Read as _;
    const CHUNK: usize = 64 * 1024;
    let mut bytes = Vec::new();
    File::open(body_path)?.take(256 << 20).read_to_end(&mut bytes)?;
    let chunks: Vec<&[u8]> = bytes.chunks(CHUNK).collect();
    let mb_per_s = |seconds: f64| bytes.len() as f64 / seconds / 1e6;
    let time = |stage: &mut dyn FnMut()| {
        // The best of three: the machine is shared.
        (0..3)
            .map(|_| {
                let started = Instant::now();
                stage();
                started.elapsed().as_secs_f64()
            })
            .fold(f64::INFINITY, f64::min)
    };
    let copy = time(&mut || {
        let mut into = vec![0u8; CHUNK];
        for chunk in &chunks {
            into[..chunk.len()].copy_from_slice(chunk);
            std::hint::black_box(&into);
        }
    });
    let hash = time(&mut || {
        let mut hasher = blake3::Hasher::new();
        for chunk in &chunks {
            hasher.update(chunk);
        }
        std::hint::black_box(hasher.finalize());
    });
    let scan = time(&mut || {
        let mut scanner = emporium::uploads::scan::BodyScanner::new();
        for chunk in &chunks {
            // A body cut at 256 MiB ends mid-item: only the pass over the bytes counts.
            if scanner.feed(chunk, |_| {}).is_err() {
                break;
            }
        }
        std::hint::black_box(scanner.offset());
    });
    println!("copy {:.0} MB/s", mb_per_s(copy));
    println!("hash {:.0} MB/s ({:.2} of copy)", mb_per_s(hash), copy / hash);
    println!("scan {:.0} MB/s ({:.2} of copy)", mb_per_s(scan), copy / scan);
    Ok(())
}
