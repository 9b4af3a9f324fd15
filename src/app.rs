//! Assembling and running one node: connect, migrate, wire the domains, serve, and shut
//! down gracefully (stop accepting, finish in-flight requests, release held jobs).

use std::{future::Future, net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::{
    catalog::{self, Catalog},
    config::Config,
    db,
    events::EventBus,
    feed, http, intake,
    jobs::{JobQueue, JobRegistry, Workers, periodic},
    node::Node,
    records::Records,
    server::{self, ServerLimits},
    state::AppState,
    storage::ObjectStorage,
    uploads,
};

/// Where the third-party services are, after the embedded simulator (if any) started.
#[derive(Debug, Clone)]
pub struct Upstreams {
    pub offers_url: String,
    /// `(url, period)` per partner feed.
    pub feed_sources: Vec<(String, std::time::Duration)>,
    /// True when these point at the in-process simulator.
    pub simulated: bool,
}

pub struct App {
    /// The shared infrastructure (tests reach the database and the queue through it).
    pub state: AppState,
    pub node: Node,
    listener: TcpListener,
    /// `ADMIN_LISTEN`: `/metrics` and the detailed `/health`, off the public address.
    admin_listener: Option<TcpListener>,
    simulator: Option<sim::RunningSim>,
}

impl App {
    /// Everything a node needs before it serves; any failure here is a configuration or
    /// dependency problem, reported as one clear error.
    pub async fn build(config: Config) -> anyhow::Result<Self> {
        let listener = server::bind(config.listen).with_context(|| format!("cannot listen on {}", config.listen))?;
        let admin_listener = match config.http.admin_listen {
            Some(addr) => Some(server::bind(addr).with_context(|| format!("cannot listen on {addr} (ADMIN_LISTEN)"))?),
            None => None,
        };
        crate::telemetry::spawn_metrics_upkeep();
        let node_id: Arc<str> = config.node_id.clone().unwrap_or_else(default_node_id).into();

        db::migrate(&config.database).await?;
        let db = db::connect(&config.database).await?;
        let durable_db = db::connect_durable(&config.database, &db).await?;
        let (redis, events) = match &config.redis_url {
            Some(url) => {
                let (client, manager) = connect_redis(url).await?;
                (Some(manager.clone()), EventBus::redis(client, manager, &config.redis_prefix))
            }
            None => (None, EventBus::local()),
        };
        let objects = ObjectStorage::open(
            config.object_store_url.as_deref(),
            &config.database.data_dir.join("objects"),
            &config.object_store,
        )?;
        let (upstreams, simulator) = upstreams(&config).await?;
        let jobs = JobQueue::new(db.clone(), config.jobs.clone());

        let state = AppState {
            db,
            durable_db,
            redis,
            redis_prefix: config.redis_prefix.as_str().into(),
            events,
            objects,
            jobs,
            node_id,
            page_max: config.paging.page_max,
            requests_deadline: CancellationToken::new(),
        };
        let catalog =
            Arc::new(Catalog::new(&state, config.catalog.clone(), &upstreams.offers_url, upstreams.simulated)?);
        let node = Node {
            records: Records::new(&state),
            uploads: uploads::Uploads::new(&state, config.uploads.clone(), catalog.clone()),
            intake: intake::Intake::new(&state, config.intake.clone(), config.http.request_timeout),
            feed: feed::Gateway::new(&upstreams.feed_sources, &config.feed),
            simulated_feeds: upstreams.simulated,
            catalog,
            shared: state.clone(),
            config: Arc::new(config),
        };
        Ok(Self { state, node, listener, admin_listener, simulator })
    }

    pub fn addr(&self) -> SocketAddr {
        self.listener.local_addr().unwrap_or(self.node.config.listen)
    }

    /// Serves until `shutdown` resolves, then stops in order.
    pub async fn run(self, shutdown: impl Future<Output = ()> + Send + 'static) -> anyhow::Result<()> {
        let Self { state: shared, node: state, listener, admin_listener, simulator } = self;
        let workers = Workers::spawn(
            shared.jobs.clone(),
            shared.node_id.clone(),
            job_registry(&state),
            state.config.jobs.job_workers,
        );
        let leases = periodic::Leases {
            db: shared.db.clone(),
            node: shared.node_id.clone(),
            lease: state.config.jobs.periodic_lease,
        };
        let mut scheduler = periodic::start(leases, periodic_jobs(&state)).await?;
        let feed_pollers = feed::spawn_pollers(&state.feed)?;
        let limits = ServerLimits {
            max_connections: server::connection_budget(state.config.http.max_connections),
            header_timeout: state.config.http.header_timeout,
            write_timeout: state.config.http.write_timeout,
        };
        // Open websockets (subscriptions) would keep a graceful shutdown waiting forever:
        // after the grace period the server stops regardless.
        let grace = state.config.jobs.shutdown_grace + Duration::from_secs(1);
        let stop = CancellationToken::new();
        let admin = admin_listener.map(|listener| {
            let router = http::admin(state.clone());
            let deadline = shared.requests_deadline.clone();
            let stop = stop.clone();
            tokio::spawn(async move {
                server::serve(listener, router.into(), limits, stop.cancelled_owned(), grace, deadline).await
            })
        });
        tracing::info!(
            addr = %listener.local_addr()?,
            node = %shared.node_id,
            max_connections = limits.max_connections,
            "emporium is serving; GraphiQL at /graphql"
        );
        let public = server::serve(
            listener,
            http::app(state.clone()),
            limits,
            shutdown,
            grace,
            shared.requests_deadline.clone(),
        );
        public.await;
        stop.cancel();
        if let Some(admin) = admin {
            let _ = admin.await;
        }
        tracing::info!("shutting down: finishing running jobs");
        feed_pollers.shutdown();
        let _ = scheduler.shutdown().await;
        workers.shutdown().await;
        if let Some(simulator) = simulator {
            simulator.shutdown().await;
        }
        // On Postgres the durable connection is `db` itself: closing it twice is harmless.
        shared.durable_db.clone().close().await.ok();
        shared.db.clone().close().await.ok();
        tracing::info!("stopped");
        Ok(())
    }
}

/// Every durable job kind this binary runs.
pub fn job_registry(node: &Node) -> JobRegistry {
    let mut registry = JobRegistry::default();
    catalog::register_jobs(&node.catalog, &mut registry);
    intake::register_jobs(&node.intake, &mut registry);
    uploads::register_jobs(&node.uploads, &mut registry);
    registry
}

/// Every periodic job this binary schedules.
pub fn periodic_jobs(node: &Node) -> Vec<periodic::Periodic> {
    let mut jobs = periodic::housekeeping(&node.shared.jobs);
    jobs.extend(catalog::periodic(&node.catalog));
    jobs.extend(intake::periodic(&node.intake));
    jobs.extend(uploads::periodic(&node.uploads));
    jobs
}

fn default_node_id() -> String {
    let host = std::fs::read_to_string("/etc/hostname").map(|h| h.trim().to_string()).unwrap_or_else(|_| "node".into());
    format!("{host}-{}", std::process::id())
}

async fn connect_redis(url: &str) -> anyhow::Result<(redis::Client, redis::aio::ConnectionManager)> {
    let shown = db::redact(url);
    let client = redis::Client::open(url).with_context(|| format!("REDIS_URL `{shown}` is not a valid Redis URL"))?;
    let config = redis::aio::ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(3)))
        .set_response_timeout(Some(Duration::from_secs(3)))
        .set_number_of_retries(2);
    let manager = tokio::time::timeout(
        Duration::from_secs(10),
        redis::aio::ConnectionManager::new_with_config(client.clone(), config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|result| result.map_err(anyhow::Error::from))
    .with_context(|| format!("cannot connect to Redis at {shown}"))?;
    Ok((client, manager))
}

/// Resolves where the offers service and the feeds are; starts the bundled simulator
/// in-process for whatever is not configured.
async fn upstreams(config: &Config) -> anyhow::Result<(Upstreams, Option<sim::RunningSim>)> {
    let mut feed_sources = Vec::new();
    for source in &config.upstreams.feed_sources {
        feed_sources.push(feed::parse_feed_source(source).map_err(|error| anyhow::anyhow!(error))?);
    }
    if !config.upstreams.needs_simulator() {
        let offers_url = config.upstreams.offers_url.clone().unwrap_or_default();
        url::Url::parse(&offers_url).with_context(|| format!("OFFERS_URL `{offers_url}` is not a URL"))?;
        return Ok((Upstreams { offers_url, feed_sources, simulated: false }, None));
    }
    let sim_config = sim::SimConfig { offers_tick: config.upstreams.sim_offers_tick, ..sim::SimConfig::default() };
    let running = sim::Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim_config)
        .await
        .context("cannot start the bundled upstream simulator")?;
    let offers_url = config.upstreams.offers_url.clone().unwrap_or_else(|| running.offers_url());
    if feed_sources.is_empty() {
        feed_sources = running.feed_urls();
    }
    tracing::warn!(
        offers_url = %offers_url,
        feeds = ?feed_sources.iter().map(|(url, _)| url.as_str()).collect::<Vec<_>>(),
        "SIMULATED UPSTREAMS: OFFERS_URL and/or FEED_SOURCES are unset, so the bundled simulator runs in-process on loopback. \
         Set both to talk to the real partner services."
    );
    Ok((Upstreams { offers_url, feed_sources, simulated: true }, Some(running)))
}
