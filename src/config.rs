//! Every setting of the service: a flag and an environment variable each (clap `env`).
//! Defaults give the embedded mode; `DATABASE_URL`, `REDIS_URL` and `OBJECT_STORE_URL`
//! switch the shared parts to their cluster backends.

use std::{net::SocketAddr, time::Duration};

use clap::{Args, Parser, Subcommand};

use crate::settings::{parse_duration, parse_size};

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
    Migrate(crate::db::DatabaseArgs),
    /// Print the GraphQL schema (SDL) to stdout.
    Schema,
    /// Run the upstream simulator (offers service and partner feeds) on its own.
    Sim(SimArgs),
    /// The partner offers service.
    #[command(subcommand)]
    Offers(OffersCommand),
}

#[derive(Debug, Subcommand)]
pub enum OffersCommand {
    /// Replace the deployment's offers access token. With OFFERS_URL: request a new one now
    /// (one `POST /auth`) and store it for every node. Without: drop the stored one, so the
    /// next node that needs it requests a new one.
    Reauth(ReauthArgs),
}

#[derive(Debug, Clone, Args)]
pub struct ReauthArgs {
    #[command(flatten)]
    pub database: crate::db::DatabaseArgs,
    /// Base URL of the partner offers service. Unset (the nodes run the bundled simulator
    /// in-process): the stored token is dropped instead.
    #[arg(long, env = "OFFERS_URL")]
    pub offers_url: Option<String>,
    #[command(flatten)]
    pub catalog: crate::catalog::CatalogConfig,
}

#[derive(Debug, Clone, Args)]
pub struct Config {
    /// Address the HTTP server listens on.
    #[arg(long, env = "LISTEN", default_value = "127.0.0.1:8000")]
    pub listen: SocketAddr,

    #[command(flatten)]
    pub database: crate::db::DatabaseArgs,

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
    #[command(flatten)]
    pub object_store: crate::storage::ObjectStoreArgs,

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
    pub jobs: crate::jobs::JobsConfig,

    #[command(flatten)]
    pub http: HttpConfig,

    #[command(flatten)]
    pub paging: crate::paging::PagingConfig,

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
    /// Time each `/health` check (database, Redis, object store, each domain) has to
    /// answer; one that does not counts as down, so an unreachable dependency turns
    /// `/health` 503 within about this time instead of after its client's own timeouts.
    #[arg(long, env = "HEALTH_CHECK_TIMEOUT", default_value = "2s", value_parser = parse_duration)]
    pub health_check_timeout: Duration,
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::feed::parse_feed_source;

    #[test]
    fn bare_invocation_is_serve_with_defaults() {
        let cli = Cli::try_parse_from(["emporium"]).expect("parses");
        assert!(cli.command.is_none());
        assert_eq!(cli.serve.listen.port(), 8000);
    }

    #[test]
    fn sources_and_limits_come_from_flags() {
        let cli = Cli::try_parse_from([
            "emporium",
            "--feed-source",
            "http://a/data@15s",
            "--feed-source",
            "http://b/data@30s,http://c/data@1m",
            "--feed-max-clients",
            "4",
            "--feed-max-body-bytes",
            "1000",
            "--feed-timeout",
            "2s",
        ])
        .expect("parses");
        let sources: Vec<_> =
            cli.serve.upstreams.feed_sources.iter().map(|source| parse_feed_source(source).expect("valid")).collect();
        let periods: Vec<u64> = sources.iter().map(|(_, period)| period.as_secs()).collect();
        assert_eq!(periods, [15, 30, 60]);
        assert_eq!(sources[1].0, "http://b/data");
        assert_eq!(cli.serve.feed.feed_max_clients, 4);
        assert_eq!(cli.serve.feed.feed_max_body_bytes, 1000);
        assert_eq!(cli.serve.feed.feed_timeout.as_secs(), 2);
        assert!(Cli::try_parse_from(["emporium", "--feed-max-clients", "0"]).is_err());
    }
}
