//! Every setting of the service: a flag and an environment variable each (clap `env`).
//! Defaults give the embedded mode; `DATABASE_URL`, `REDIS_URL` and `OBJECT_STORE_URL`
//! switch the shared parts to their cluster backends.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{Args, Parser, Subcommand};

#[derive(Debug, Parser)]
#[command(
    name = "emporium",
    version,
    about = "Retail GraphQL API: catalog with live offers, record store, bulk uploads, intake, feed gateway",
    args_conflicts_with_subcommands = true
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Option<Command>,
    /// Settings for `serve`, the default command.
    #[command(flatten)]
    pub serve: Config,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (the default when no command is given).
    Serve(Box<Config>),
    /// Apply database migrations and exit.
    Migrate(DatabaseArgs),
    /// Print the GraphQL schema (SDL) to stdout.
    Schema,
    /// Run the upstream simulator (offers service and partner feeds) on its own.
    Sim(SimArgs),
}

#[derive(Debug, Clone, Args)]
pub struct DatabaseArgs {
    /// Postgres URL (`postgres://…`) or SQLite URL (`sqlite://…`). Unset: SQLite file `<DATA_DIR>/emporium.db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder for embedded-mode state: the SQLite file and the local object store.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Largest number of pooled database connections per node.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// How long a request waits for a pooled connection before it fails with 503
    /// `UPSTREAM_UNAVAILABLE` (the pool is exhausted or the database unreachable).
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub database_acquire_timeout: Duration,
}

impl DatabaseArgs {
    /// The URL to connect to, and whether it is the embedded default.
    pub fn resolved_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("emporium.db").display()),
        }
    }
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: DatabaseArgs,

    /// Redis URL for the cluster dedup window and cross-node events. Unset: in-process.
    #[arg(long, env = "REDIS_URL")]
    pub redis_url: Option<String>,
    /// Prefix of every Redis key and channel, so deployments can share one Redis.
    #[arg(long, env = "REDIS_PREFIX", default_value = "emporium")]
    pub redis_prefix: String,

    /// Object store root: `s3://bucket` (credentials and endpoint from the usual AWS_* variables)
    /// or `file:///abs/path`. Unset: the folder `<DATA_DIR>/objects`.
    #[arg(long, env = "OBJECT_STORE_URL")]
    pub object_store_url: Option<String>,

    /// Comma-separated bearer tokens allowed to write (mutations, REST POSTs). Unset: writes are open.
    #[arg(long, env = "API_TOKENS", value_delimiter = ',')]
    pub api_tokens: Vec<String>,
    /// Comma-separated browser origins allowed by CORS (`*` for any). Unset: no CORS headers.
    #[arg(long, env = "CORS_ORIGINS", value_delimiter = ',')]
    pub cors_origins: Vec<String>,

    /// Log format: `text` or `json`.
    #[arg(long, env = "LOG_FORMAT", default_value = "text", value_parser = ["text", "json"])]
    pub log_format: String,
    /// Log filter in `tracing` syntax (for example `info,emporium=debug`).
    #[arg(long, env = "RUST_LOG", default_value = "info,tokio_cron_scheduler=warn")]
    pub log_filter: String,

    /// Name of this node in job leases and logs. Unset: hostname-pid.
    #[arg(long, env = "NODE_ID")]
    pub node_id: Option<String>,

    #[command(flatten)]
    pub jobs: JobsConfig,

    #[command(flatten)]
    pub http: HttpConfig,

    #[command(flatten)]
    pub graphql: GraphqlConfig,

    #[command(flatten)]
    pub upstreams: UpstreamConfig,

    #[command(flatten)]
    pub feed: crate::feed::FeedConfig,

    #[command(flatten)]
    pub catalog: crate::catalog::CatalogConfig,

    #[command(flatten)]
    pub intake: crate::intake::IntakeConfig,

    #[command(flatten)]
    pub uploads: crate::uploads::UploadsConfig,
}

#[derive(Debug, Clone, Args)]
pub struct JobsConfig {
    /// Durable jobs run concurrently on this node (0 = this node runs no jobs).
    #[arg(long, env = "JOB_WORKERS", default_value_t = 4)]
    pub job_workers: usize,
    /// How long a claimed job stays ours without a heartbeat before another node may take it.
    #[arg(long, env = "JOB_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub job_lease: Duration,
    /// How often an idle node looks for due jobs.
    #[arg(long, env = "JOB_POLL_INTERVAL", default_value = "250ms", value_parser = parse_duration)]
    pub job_poll_interval: Duration,
    /// Attempts before a job is marked failed for good.
    #[arg(long, env = "JOB_MAX_ATTEMPTS", default_value_t = 10)]
    pub job_max_attempts: i32,
    /// First retry delay; doubles each attempt (with jitter) up to JOB_BACKOFF_MAX.
    #[arg(long, env = "JOB_BACKOFF_BASE", default_value = "1s", value_parser = parse_duration)]
    pub job_backoff_base: Duration,
    /// Longest retry delay.
    #[arg(long, env = "JOB_BACKOFF_MAX", default_value = "10m", value_parser = parse_duration)]
    pub job_backoff_max: Duration,
    /// Finished jobs are deleted after this long.
    #[arg(long, env = "JOB_RETENTION", default_value = "24h", value_parser = parse_duration)]
    pub job_retention: Duration,
    /// Lease of a running periodic job: a node that dies mid-run blocks the job at most this long.
    #[arg(long, env = "PERIODIC_LEASE", default_value = "30s", value_parser = parse_duration)]
    pub periodic_lease: Duration,
    /// When finished jobs are purged (six-field cron, seconds first).
    #[arg(long, env = "JOBS_PURGE_CRON", default_value = "0 17 * * * *")]
    pub jobs_purge_cron: String,
    /// On shutdown, how long running jobs may finish before they are released to other nodes.
    #[arg(long, env = "SHUTDOWN_GRACE", default_value = "10s", value_parser = parse_duration)]
    pub shutdown_grace: Duration,
}

#[derive(Debug, Clone, Args)]
pub struct HttpConfig {
    /// Requests in flight on this node beyond which every route but /health answers 503.
    #[arg(long, env = "MAX_INFLIGHT_REQUESTS", default_value_t = 4096)]
    pub max_inflight_requests: usize,
    /// Open client connections served at once (lowered to stay below the file-descriptor
    /// limit); beyond it `/health` still answers and everything else gets 503.
    #[arg(long, env = "MAX_CONNECTIONS", default_value_t = 4096)]
    pub max_connections: usize,
    /// Time a client has to send a request's headers; also how long an idle kept-alive
    /// connection stays open.
    #[arg(long, env = "HTTP_HEADER_TIMEOUT", default_value = "10s", value_parser = parse_duration)]
    pub header_timeout: Duration,
    /// A response write that makes no progress for this long closes the connection (a
    /// client that stops reading frees its place).
    #[arg(long, env = "HTTP_WRITE_TIMEOUT", default_value = "20s", value_parser = parse_duration)]
    pub write_timeout: Duration,
    /// Largest page a connection returns (`first` above it is refused).
    #[arg(long, env = "PAGE_MAX", default_value_t = 100)]
    pub page_max: usize,
    /// Time limit of one ordinary request (not uploads nor subscriptions).
    #[arg(long, env = "REQUEST_TIMEOUT", default_value = "30s", value_parser = parse_duration)]
    pub request_timeout: Duration,
    /// A second address for `/metrics` and the detailed `/health`. Set: the public
    /// listener answers `/health` with the overall status only and has no `/metrics`.
    #[arg(long, env = "ADMIN_LISTEN")]
    pub admin_listen: Option<SocketAddr>,
    /// Bearer token for `/metrics` and the detailed `/health` on the public listener.
    #[arg(long, env = "ADMIN_TOKEN", hide_env_values = true)]
    pub admin_token: Option<String>,
}

/// Limits on what one GraphQL request may ask; each refusal names its setting.
#[derive(Debug, Clone, Args)]
pub struct GraphqlConfig {
    /// Largest GraphQL request: a POST body, a GET query string, a WebSocket message.
    #[arg(long, env = "GRAPHQL_MAX_BODY_BYTES", default_value = "1MiB", value_parser = parse_size)]
    pub graphql_max_body_bytes: usize,
    /// Deepest field nesting (introspection's `ofType` chain does not count).
    #[arg(long, env = "GRAPHQL_MAX_DEPTH", default_value_t = 12)]
    pub graphql_max_depth: usize,
    /// Highest operation cost: each field costs 1 plus its selection, times the page size
    /// (`first`, `last`, or the default page) for lists; reported in `extensions.cost`.
    #[arg(long, env = "GRAPHQL_MAX_COMPLEXITY", default_value_t = 20_000)]
    pub graphql_max_complexity: usize,
    /// Most fields in one document once its fragments are expanded.
    #[arg(long, env = "GRAPHQL_MAX_FIELDS", default_value_t = 2_000)]
    pub graphql_max_fields: usize,
    /// Most aliased fields in one document.
    #[arg(long, env = "GRAPHQL_MAX_ALIASES", default_value_t = 100)]
    pub graphql_max_aliases: usize,
    /// Most top-level fields in one operation: each may run its own SQL statements, so
    /// this is the statement budget of one operation.
    #[arg(long, env = "GRAPHQL_MAX_ROOT_FIELDS", default_value_t = 20)]
    pub graphql_max_root_fields: usize,
    /// Most directive uses in one document.
    #[arg(long, env = "GRAPHQL_MAX_DIRECTIVES", default_value_t = 50)]
    pub graphql_max_directives: usize,
    /// Most errors in one response; the rest are counted in a last `TOO_MANY_ERRORS` error.
    #[arg(long, env = "GRAPHQL_MAX_ERRORS", default_value_t = 20)]
    pub graphql_max_errors: usize,
    /// Serve introspection (and GraphiQL, which needs it). `false` for deployments that
    /// publish no schema.
    #[arg(long, env = "GRAPHQL_INTROSPECTION", default_value_t = true, action = clap::ArgAction::Set)]
    pub graphql_introspection: bool,
    /// Memory for persisted queries on this node (least recently used out first); in a
    /// cluster they are also shared through Redis.
    #[arg(long, env = "GRAPHQL_PERSISTED_QUERIES_BYTES", default_value = "16MiB", value_parser = parse_size)]
    pub graphql_persisted_queries_bytes: usize,
    /// How often an open graphql-ws connection is pinged.
    #[arg(long, env = "GRAPHQL_WS_KEEPALIVE", default_value = "15s", value_parser = parse_duration)]
    pub graphql_ws_keepalive: Duration,
    /// Most operations in one batched request (a JSON array).
    #[arg(long, env = "GRAPHQL_MAX_BATCH", default_value_t = 10)]
    pub graphql_max_batch: usize,
}

#[derive(Debug, Clone, Args)]
pub struct UpstreamConfig {
    /// Base URL of the partner offers service. Unset: the bundled simulator runs in-process.
    #[arg(long, env = "OFFERS_URL")]
    pub offers_url: Option<String>,
    /// Partner feeds as `URL@PERIOD`, comma-separated or the flag repeated. Unset: the simulator's three feeds.
    #[arg(long = "feed-source", env = "FEED_SOURCES", value_delimiter = ',')]
    pub feed_sources: Vec<String>,
    /// Price tick of the in-process simulator (embedded mode only).
    #[arg(long, env = "SIM_OFFERS_TICK", default_value = "60s", value_parser = parse_duration)]
    pub sim_offers_tick: Duration,
}

impl UpstreamConfig {
    /// The embedded simulator is started only when some upstream is left unconfigured.
    pub fn needs_simulator(&self) -> bool {
        self.offers_url.is_none() || self.feed_sources.is_empty()
    }
}

#[derive(Debug, Clone, Args)]
pub struct SimArgs {
    /// Address the simulator listens on.
    #[arg(long, env = "SIM_LISTEN", default_value = "127.0.0.1:9000")]
    pub listen: SocketAddr,
    /// How often offer prices drift.
    #[arg(long, env = "SIM_OFFERS_TICK", default_value = "60s", value_parser = parse_duration)]
    pub offers_tick: Duration,
    /// One feed per period, comma-separated.
    #[arg(long, env = "SIM_FEED_PERIODS", default_value = "15s,30s,60s", value_delimiter = ',', value_parser = parse_duration)]
    pub feed_periods: Vec<Duration>,
    /// Items each feed publishes.
    #[arg(long, env = "SIM_FEED_ITEMS", default_value_t = 20)]
    pub feed_items: usize,
}

/// Parses `250ms`, `30s`, `5m`, `2h` or a bare number of seconds.
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit() && c != '.').unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: f64 =
        number.parse().map_err(|_| format!("`{text}` is not a duration (examples: 250ms, 30s, 5m, 2h)"))?;
    let seconds = match unit {
        "ms" => value / 1000.0,
        "" | "s" => value,
        "m" => value * 60.0,
        "h" => value * 3600.0,
        _ => return Err(format!("`{text}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    if !seconds.is_finite() || seconds < 0.0 {
        return Err(format!("`{text}` is not a valid duration"));
    }
    Ok(Duration::from_secs_f64(seconds))
}

/// [`parse_bytes`] for sizes held in memory.
pub fn parse_size(text: &str) -> Result<usize, String> {
    let bytes = parse_bytes(text)?;
    usize::try_from(bytes).map_err(|_| format!("`{text}` is too large"))
}

/// Parses a size in bytes: `1048576`, `512KiB`, `10MiB`, `8GiB` (also KB/MB/GB as powers of 1000).
pub fn parse_bytes(text: &str) -> Result<u64, String> {
    let text = text.trim();
    let split = text.find(|c: char| !c.is_ascii_digit()).unwrap_or(text.len());
    let (number, unit) = text.split_at(split);
    let value: u64 = number.parse().map_err(|_| format!("`{text}` is not a size (examples: 1048576, 10MiB, 8GiB)"))?;
    let factor: u64 = match unit.trim() {
        "" | "B" => 1,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        "KB" => 1_000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        other => return Err(format!("`{text}`: unknown unit `{other}` (use B, KiB, MiB, GiB, TiB, KB, MB or GB)")),
    };
    value.checked_mul(factor).ok_or_else(|| format!("`{text}` is too large"))
}

/// Parses one `URL@PERIOD` feed source (`http://a/data@15s`).
pub fn parse_feed_source(text: &str) -> Result<(String, Duration), String> {
    let (url, period) = text
        .trim()
        .rsplit_once('@')
        .ok_or_else(|| format!("feed source `{text}` must be URL@PERIOD, for example http://host/data@15s"))?;
    let parsed = url::Url::parse(url).map_err(|error| format!("feed source `{text}`: bad URL: {error}"))?;
    if !matches!(parsed.scheme(), "http" | "https") {
        return Err(format!("feed source `{text}`: only http and https are supported"));
    }
    let period = parse_duration(period)?;
    if period < Duration::from_secs(1) {
        return Err(format!("feed source `{text}`: the period must be at least 1s"));
    }
    Ok((url.to_string(), period))
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

    #[test]
    fn bare_invocation_is_serve_with_defaults() {
        let cli = Cli::try_parse_from(["emporium"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.port(), 8000);
    }
}
