//! The catalog (the product aggregator): products, their registration with the
//! partner offers service, the offers it reports, and the price history of those offers.
//!
//! - Products: GraphQL CRUD; bulk uploads create and update them through
//!   [`upsert_by_sku`] in their own transaction. Limits: name 1–200 characters,
//!   description ≤ 10,000, sku 1–100 (unique when present), attributes a JSON object
//!   ≤ 64 KiB.
//! - Registration: every product created (by GraphQL or upload) gets a durable
//!   registration job in the same transaction; the job registers it with the offers
//!   service and fetches its first offers at once. `Product.registration` shows
//!   PENDING / REGISTERED / FAILED and the last error.
//! - Sync: a periodic job (`OFFERS_SYNC_CRON`, every minute by default) on one node at a
//!   time refreshes the offers of every registered product ([`sync`]).
//! - History: a row per price change (and per withdrawal), kept when the offer goes, so
//!   the product's price history and lowest-price trend cover vanished offers too.
//! - Live updates: the sync publishes price changes on the event bus (Redis across
//!   nodes); the `offerPriceChanged(productId)` subscription relays them.
//! - The offers service client and its failure policy: [`client`].

pub mod client;
pub mod entity;
pub mod graphql;
mod loaders;
pub mod model;
pub mod omnibus;
mod products;
pub mod registration;
pub mod sync;
pub mod trend;

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;
use serde_json::json;

pub use client::OffersClient;
pub use products::{
    NewProduct, ProductChanges, ProductFilter, ProductUpsert, UpsertOutcome, Upserted, upsert_by_sku,
    upsert_each_by_sku, validate_upsert,
};
pub use sync::{SyncReport, sync_offers};

use crate::{
    events::EventBus,
    health::{Check, Status},
    jobs::{JobQueue, JobRegistry, periodic::Periodic},
    settings::parse_duration,
    state::AppState,
};

/// Catalog and offers service settings.
#[derive(Debug, Clone, clap::Args)]
pub struct CatalogConfig {
    /// When the offer sync runs: a cron expression with seconds (six fields). Default: every minute.
    #[arg(long, env = "OFFERS_SYNC_CRON", default_value = "0 * * * * *")]
    pub offers_sync_cron: String,
    /// Products whose offers one sync fetches at the same time.
    #[arg(long, env = "OFFERS_SYNC_CONCURRENCY", default_value_t = 8,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=1024))]
    pub offers_sync_concurrency: usize,
    /// A sync stops early after this many products in a row fail because the service is unavailable.
    #[arg(long, env = "OFFERS_SYNC_ABORT_AFTER", default_value_t = 20)]
    pub offers_sync_abort_after: u64,
    /// Time limit of every call to the offers service (connecting, sending, reading the answer).
    #[arg(long, env = "OFFERS_TIMEOUT", default_value = "5s", value_parser = parse_duration)]
    pub offers_timeout: Duration,
    /// After the service rejects our access token (401), each node calls it at most once per this long.
    #[arg(long, env = "OFFERS_UNAUTHORIZED_PROBE", default_value = "30s", value_parser = parse_duration)]
    pub offers_unauthorized_probe: Duration,
    /// Attempts to register a product before it shows FAILED (retries back off up to JOB_BACKOFF_MAX; 100 ≈ 16 h).
    #[arg(long, env = "OFFERS_REGISTER_ATTEMPTS", default_value_t = 100)]
    pub offers_register_attempts: i32,
    /// Products one registration job registers at the same time (an upload's job holds up to 4,000).
    #[arg(long, env = "OFFERS_REGISTER_CONCURRENCY", default_value_t = 4,
          value_parser = clap::builder::RangedU64ValueParser::<usize>::new().range(1..=64))]
    pub offers_register_concurrency: usize,
}

/// The catalog's handle: what it uses of the shared infrastructure, its settings, the
/// offers service client and the GraphQL batch loaders (per node).
pub struct Catalog {
    pub db: DatabaseConnection,
    pub jobs: JobQueue,
    pub events: EventBus,
    pub config: CatalogConfig,
    pub offers: OffersClient,
    pub(crate) loaders: loaders::Loaders,
    /// `PAGE_MAX`.
    pub page_max: usize,
    /// The offers service is the bundled simulator (shown in `/health`).
    pub simulated: bool,
}

impl Catalog {
    pub fn new(shared: &AppState, config: CatalogConfig, offers_url: &str, simulated: bool) -> anyhow::Result<Self> {
        Ok(Self {
            db: shared.db.clone(),
            jobs: shared.jobs.clone(),
            events: shared.events.clone(),
            offers: OffersClient::new(offers_url, &shared.node_id, &config)?,
            loaders: loaders::Loaders::new(&shared.db),
            config,
            page_max: shared.page_max,
            simulated,
        })
    }
}

pub fn register_jobs(catalog: &Arc<Catalog>, registry: &mut JobRegistry) {
    registration::register_jobs(catalog, registry);
}

pub fn periodic(catalog: &Arc<Catalog>) -> Vec<Periodic> {
    sync::periodic(catalog)
}

/// The offers service as this deployment sees it: degraded while the last calls failed
/// or the token is rejected; never critical (the catalog keeps serving without it).
pub async fn health(state: &Catalog) -> Check {
    let client = &state.offers;
    let local = client.local_status();
    let (shared, token, last_sync) = tokio::join!(
        client::read_shared_status(&state.db),
        client::token_present(&state.db),
        client::read_setting(&state.db, sync::LAST_SYNC_KEY),
    );
    let (shared, token_present) = match (shared, token) {
        (Ok(shared), Ok(token)) => (shared, token),
        (Err(error), _) | (_, Err(error)) => {
            return Check::new(
                Status::Degraded,
                false,
                json!({ "url": client.base_url(), "error": error.to_string() }),
            );
        }
    };
    let last_sync: Option<serde_json::Value> =
        last_sync.ok().flatten().and_then(|(value, _)| serde_json::from_str(&value).ok());
    let shared_state = shared.as_ref().map(|shared| shared.state);
    // This node failing more recently than the shared record says counts too.
    let local_failing = local.consecutive_failures > 0
        && local.last_failure_at > shared.as_ref().map(|shared| shared.since.max(shared.last_success_at.unwrap_or(0)));
    let status = match shared_state {
        Some(client::ServiceState::Ok) | None if !local_failing => Status::Up,
        _ => Status::Degraded,
    };
    let state_name = match if local_failing { local.state } else { shared_state } {
        Some(client::ServiceState::Unauthorized) => "unauthorized",
        Some(client::ServiceState::Failing) => "failing",
        Some(client::ServiceState::Ok) => "ok",
        None => "not contacted yet",
    };
    Check::new(
        status,
        false,
        json!({
            "url": client.base_url(),
            "simulated": state.simulated,
            "state": state_name,
            "token_present": token_present,
            "since": shared.as_ref().map(|shared| crate::db::to_datetime(shared.since)),
            "last_success_at": shared.as_ref().and_then(|shared| shared.last_success_at).map(crate::db::to_datetime),
            "last_error": shared.as_ref().and_then(|shared| shared.last_error.clone()).or_else(|| local_failing.then(|| local.last_error.clone()).flatten()),
            "last_sync": last_sync,
            "this_node": local,
        }),
    )
}
