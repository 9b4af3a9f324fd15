//! Helpers of the benchmark scripts in `bench/`: the reference servers and clients each
//! script compares emporium against in the same run. Built by `cargo bench --no-run`;
//! run as `helpers <command> …` (each script finds the binary itself).

mod catalog;
mod intake;
mod small_uploads;
mod uploads;

fn main() -> anyhow::Result<()> {
    // `cargo bench` appends `--bench`; anything starting with `--` is not ours.
    let args: Vec<String> = std::env::args().skip(1).filter(|arg| !arg.starts_with("--")).collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build()?;
    match args.as_slice() {
        ["catalog-baseline", listen, database_url] => {
            runtime.block_on(catalog::baseline(listen.parse()?, database_url))
        }
        ["catalog-sync", database_url] => runtime.block_on(catalog::sync(database_url)),
        ["uploads-generate", body, csv, bytes, prefix] => uploads::generate(body, csv, bytes.parse()?, prefix),
        ["uploads-sink", listen, spool_dir] => runtime.block_on(uploads::sink(listen.parse()?, spool_dir)),
        ["uploads-wait", base_url, upload_id] => runtime.block_on(uploads::wait(base_url, upload_id)),
        ["uploads-stages", body] => uploads::stages(body),
        ["small-uploads-refs", listen, dir] => runtime.block_on(small_uploads::references(listen.parse()?, dir)),
        ["small-uploads-load", connections, seconds, tag, urls, metrics, drain_seconds] => runtime.block_on(
            small_uploads::load(connections.parse()?, seconds.parse()?, tag, urls, metrics, drain_seconds.parse()?),
        ),
        ["intake-fs", dir, count, run] => runtime.block_on(intake::write_directly(dir, count.parse()?, run)),
        ["intake-submit", base_url, count, batch, run] => {
            runtime.block_on(intake::submit_and_wait(base_url, count.parse()?, batch.parse()?, run))
        }
        _ => {
            eprintln!(
                "usage: helpers catalog-baseline LISTEN DATABASE_URL | catalog-sync DATABASE_URL\n\
                 \x20      | uploads-generate BODY CSV|- BYTES SKU_PREFIX | uploads-sink LISTEN SPOOL_DIR\n\
                 \x20      | uploads-wait BASE_URL UPLOAD_ID | uploads-stages BODY\n\
                 \x20      | small-uploads-refs LISTEN DIR\n\
                 \x20      | small-uploads-load CONNECTIONS SECONDS TAG URLS METRICS_URLS|- DRAIN_SECONDS\n\
                 \x20      | intake-fs DIR COUNT RUN | intake-submit BASE_URL COUNT BATCH RUN"
            );
            std::process::exit(2);
        }
    }
}
