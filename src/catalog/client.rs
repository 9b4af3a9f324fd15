//! The partner offers service client: one access token per deployment (stored in
//! `settings`, shared by every node), the `Bearer: <token>` header on every call, a time
//! limit on every call, and the service's state for `/health`.
//!
//! Status codes: any 2xx is success; 409 on register means already registered; 404 on
//! offers means the service does not know the product (register it again); 401 means the
//! token is rejected.
//!
//! The token is requested once, and never again while the service accepts it. A 401 with
//! the stored token (the service restarted and forgot it, or revoked it) triggers one
//! re-authentication for the whole deployment: the node holding the `offers.auth_claim`
//! row calls `/auth` and swaps the new token in only if the stored one is still the
//! rejected one; the other nodes wait for it and pick it up. Each call then retries once
//! with the new token, so registrations and syncs resume by themselves (products the
//! service no longer knows answer 404, and the sync registers them again). Logged as a
//! warning and counted in `emporium_offers_reauth_total{outcome}`.
//!
//! If the new token is rejected too (or `/auth` fails), the rejection stands: the node
//! stays up, `/health` shows `unauthorized`, the affected products show the error, each
//! node calls the service at most once per `OFFERS_UNAUTHORIZED_PROBE`, and the
//! deployment replaces a token at most once per that interval (`offers.reauth` row).
//! `emporium offers reauth` replaces the token by hand ([`OffersClient::reauthenticate`],
//! or [`discard_token`] when the command has no `OFFERS_URL`).

use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use reqwest::StatusCode;
use sea_orm::{
    ColumnTrait as _, ConnectionTrait, DatabaseConnection, EntityTrait as _, QueryFilter as _,
    sea_query::{Expr, OnConflict, Query},
};
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::{
    CatalogConfig,
    entity::setting::{self, Column},
};
use crate::db::now_ms;

const TOKEN_KEY: &str = "offers.access_token";
/// Held (as a row) by the node that is requesting the token, so nodes starting together
/// do not both call `/auth`.
const CLAIM_KEY: &str = "offers.auth_claim";
/// When the deployment last requested a token to replace a rejected one (the row's
/// `updated_at`; the value names the node): none is requested again sooner than
/// `OFFERS_UNAUTHORIZED_PROBE` after that, whether the request failed or its token was
/// rejected too.
const REAUTH_KEY: &str = "offers.reauth";
/// The service's state as last seen by any node (JSON), for `/health` on every node.
pub(super) const STATUS_KEY: &str = "offers.status";
/// How often a node refreshes the shared status while nothing changes.
const STATUS_REFRESH: Duration = Duration::from_secs(10);
/// How long a node trusts its cached token before reading it again (someone may have
/// replaced it).
const TOKEN_CACHE: Duration = Duration::from_secs(60);
/// Largest response body read from the service.
const MAX_BODY: usize = 1024 * 1024;

/// Where [`OffersClient::acquire`] got the token.
enum Acquired {
    /// Already stored (by this node earlier, or another node).
    Stored(String),
    /// Requested from `/auth` now by this node.
    Requested(String),
    /// The stored token is the rejected one, and it was replaced too recently to try again.
    TooSoon,
}

/// What a 401 leads to.
enum Recovery {
    /// Send the request again with this token.
    Retry(String),
    /// The rejection stands (for this reason) until the next probe.
    Stands(String),
}

/// Why a call to the offers service failed.
#[derive(Debug, thiserror::Error)]
pub enum OffersError {
    /// Down, slow beyond the timeout, 5xx, or an answer we cannot read: retry later.
    #[error("offers service unavailable: {0}")]
    Unavailable(String),
    /// The service rejects our access token.
    #[error("offers service rejected our access token (401): {0}")]
    Unauthorized(String),
    /// 404 on offers: the service does not know this product.
    #[error("the offers service does not know this product (404)")]
    NotRegistered,
    /// The service refused the request itself (a 4xx other than 401/404/409): retrying
    /// the same request cannot help.
    #[error("offers service refused the request ({status}): {message}")]
    Rejected { status: u16, message: String },
    /// Not called at all: the token was rejected moments ago, or another node is
    /// requesting the token right now. Try again later.
    #[error("offers service not called: {0}")]
    Deferred(String),
    #[error("database: {0}")]
    Database(#[from] sea_orm::DbErr),
}

/// An offer as the service reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RemoteOffer {
    pub source_id: String,
    pub price: i64,
    pub items_in_stock: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ServiceState {
    Ok,
    Failing,
    Unauthorized,
}

/// The service's state as recorded in `settings` by whichever node called it last.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct SharedStatus {
    pub state: ServiceState,
    /// When this state began.
    pub since: i64,
    pub last_success_at: Option<i64>,
    pub last_error: Option<String>,
    pub node: String,
}

/// This node's own view of the service.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LocalStatus {
    pub last_success_at: Option<i64>,
    pub last_failure_at: Option<i64>,
    pub last_error: Option<String>,
    pub consecutive_failures: u64,
    /// The state the last call showed (`None` before any call).
    pub state: Option<ServiceState>,
    pub calls: u64,
    /// When the token was last rejected (cleared by the next success).
    #[serde(skip)]
    unauthorized_at: Option<Instant>,
    #[serde(skip)]
    shared_written: Option<(ServiceState, Instant)>,
}

pub struct OffersClient {
    base: String,
    http: reqwest::Client,
    node: String,
    timeout: Duration,
    unauthorized_probe: Duration,
    token: Mutex<Option<(String, Instant)>>,
    /// One token request per node at a time; the claim row covers the cluster.
    acquiring: tokio::sync::Mutex<()>,
    status: Mutex<LocalStatus>,
}

impl OffersClient {
    pub fn new(base_url: &str, node: &str, config: &CatalogConfig) -> anyhow::Result<Self> {
        let http = reqwest::Client::builder()
            .timeout(config.offers_timeout)
            .connect_timeout(config.offers_timeout.min(Duration::from_secs(5)))
            .user_agent(concat!("emporium/", env!("CARGO_PKG_VERSION")))
            .build()?;
        Ok(Self {
            base: base_url.trim_end_matches('/').to_string(),
            http,
            node: node.to_string(),
            timeout: config.offers_timeout,
            unauthorized_probe: config.offers_unauthorized_probe,
            token: Mutex::new(None),
            acquiring: tokio::sync::Mutex::new(()),
            status: Mutex::new(LocalStatus::default()),
        })
    }

    pub fn base_url(&self) -> &str {
        &self.base
    }

    pub fn local_status(&self) -> LocalStatus {
        self.status.lock().map(|status| status.clone()).unwrap_or_default()
    }

    /// Registers a product. `Ok(true)` when the service registered it now, `Ok(false)`
    /// when it already knew it (409).
    pub async fn register(
        &self,
        db: &DatabaseConnection,
        id: i64,
        name: &str,
        description: &str,
    ) -> Result<bool, OffersError> {
        let body = json!({ "id": id.to_string(), "name": name, "description": description });
        let answer = self
            .call(db, "register", |http, base, token| {
                http.post(format!("{base}/products/register")).header("Bearer", token).json(&body)
            })
            .await;
        let outcome = match answer {
            Ok((status, _)) if status.is_success() => Ok(true),
            Ok((StatusCode::CONFLICT, _)) => Ok(false),
            Ok((status, body)) => Err(refusal(status, &body)),
            Err(error) => Err(error),
        };
        self.record(db, "register", outcome.as_ref().map(|_| ())).await;
        outcome
    }

    /// The offers the service lists for a product now.
    pub async fn offers(&self, db: &DatabaseConnection, id: i64) -> Result<Vec<RemoteOffer>, OffersError> {
        let answer = self
            .call(db, "offers", |http, base, token| {
                http.get(format!("{base}/products/{id}/offers")).header("Bearer", token)
            })
            .await;
        let outcome = match answer {
            Ok((status, body)) if status.is_success() => parse_offers(&body).map_err(OffersError::Unavailable),
            Ok((StatusCode::NOT_FOUND, _)) => Err(OffersError::NotRegistered),
            Ok((status, body)) => Err(refusal(status, &body)),
            Err(error) => Err(error),
        };
        self.record(db, "offers", outcome.as_ref().map(|_| ())).await;
        outcome
    }

    /// Sends one authenticated request; returns any answer that is not an outage or a
    /// rejected token (those are errors). On 401 the token is recovered once (see
    /// [`OffersClient::recover`]) and the request sent again with the new token. The
    /// caller records the outcome.
    async fn call(
        &self,
        db: &DatabaseConnection,
        name: &'static str,
        build: impl Fn(&reqwest::Client, &str, &str) -> reqwest::RequestBuilder,
    ) -> Result<(StatusCode, bytes::Bytes), OffersError> {
        self.unauthorized_gate()?;
        let mut token = self.token(db).await?;
        for second_try in [false, true] {
            let started = Instant::now();
            let answer = self.send(build(&self.http, &self.base, &token)).await;
            metrics::histogram!("emporium_offers_call_seconds", "call" => name).record(started.elapsed().as_secs_f64());
            let outcome = match answer {
                Ok((StatusCode::UNAUTHORIZED, body)) => {
                    let message = message_of(&body);
                    if second_try {
                        tracing::error!(call = name, reason = %message, "the offers service rejected the new access token too (401); retrying at most once per OFFERS_UNAUTHORIZED_PROBE");
                        return Err(OffersError::Unauthorized(message));
                    }
                    tracing::warn!(call = name, reason = %message, "the offers service rejected our access token (401); recovering it for the whole deployment");
                    match self.recover(db, &token).await? {
                        Recovery::Retry(fresh) => {
                            token = fresh;
                            continue;
                        }
                        Recovery::Stands(why) => Err(OffersError::Unauthorized(format!("{message}; {why}"))),
                    }
                }
                Ok((status, _)) if status.is_server_error() || status == StatusCode::TOO_MANY_REQUESTS => {
                    Err(OffersError::Unavailable(format!("{name}: HTTP {status}")))
                }
                Ok(answer) => Ok(answer),
                Err(error) => Err(OffersError::Unavailable(format!("{name}: {error}"))),
            };
            return outcome;
        }
        Err(OffersError::Unauthorized("token rejected".into()))
    }

    /// After a 401 with `rejected`: the token to retry with, taken from another node that
    /// replaced it already or requested now by exactly one node of the deployment
    /// (the claim row, then a compare-and-swap on the stored token). No token is requested
    /// less than `OFFERS_UNAUTHORIZED_PROBE` after the last such request: it failed or its
    /// token is rejected too, and the deployment waits rather than churning tokens.
    async fn recover(&self, db: &DatabaseConnection, rejected: &str) -> Result<Recovery, OffersError> {
        let _one_at_a_time = self.acquiring.lock().await;
        // Another task of this node may have recovered it while this one waited.
        if let Some(cached) = self.cached_token()
            && cached != rejected
        {
            return Ok(Recovery::Retry(cached));
        }
        self.forget_cached_token();
        let outcome = self.acquire(db, Some(rejected), false).await;
        let label = match &outcome {
            Ok(Acquired::Stored(_)) => "adopted",
            Ok(Acquired::Requested(_)) => "replaced",
            Ok(Acquired::TooSoon) => "backoff",
            Err(_) => "failed",
        };
        metrics::counter!("emporium_offers_reauth_total", "outcome" => label).increment(1);
        match outcome {
            Ok(Acquired::Stored(token)) => {
                tracing::info!("using the offers access token another node obtained after the rejection");
                self.cache_token(&token);
                Ok(Recovery::Retry(token))
            }
            Ok(Acquired::Requested(token)) => {
                tracing::warn!(
                    "replaced the rejected offers access token with a new one for the whole deployment; \
                     products the service no longer knows are registered again by the sync"
                );
                self.cache_token(&token);
                Ok(Recovery::Retry(token))
            }
            Ok(Acquired::TooSoon) => Ok(Recovery::Stands(format!(
                "a new token was requested less than {}s ago, so none is requested again yet",
                self.unauthorized_probe.as_secs().max(1)
            ))),
            Err(OffersError::Database(error)) => Err(OffersError::Database(error)),
            Err(error) => {
                tracing::error!(error = %error, "re-authenticating with the offers service failed; the rejected token stays until the next try");
                Ok(Recovery::Stands(format!("re-authenticating failed: {error}")))
            }
        }
    }

    /// The operator's `emporium offers reauth`: replaces the stored token with a new one
    /// now, whether or not it was rejected (still one request for the deployment: the
    /// claim row and the compare-and-swap apply). Returns the old token, if any, and the new.
    pub async fn reauthenticate(&self, db: &DatabaseConnection) -> Result<(Option<String>, String), OffersError> {
        let _one_at_a_time = self.acquiring.lock().await;
        self.forget_cached_token();
        let old = read_setting(db, TOKEN_KEY).await?.map(|(token, _)| token);
        let outcome = self.acquire(db, old.as_deref(), true).await;
        let label = if outcome.is_ok() { "manual" } else { "failed" };
        metrics::counter!("emporium_offers_reauth_total", "outcome" => label).increment(1);
        match outcome? {
            Acquired::Stored(token) | Acquired::Requested(token) => {
                tracing::warn!("replaced the offers access token by hand (emporium offers reauth)");
                Ok((old, token))
            }
            Acquired::TooSoon => Err(OffersError::Deferred("re-authenticated moments ago".into())),
        }
    }

    /// Sends a request and reads a bounded body.
    async fn send(&self, request: reqwest::RequestBuilder) -> Result<(StatusCode, bytes::Bytes), NoAnswer> {
        let mut response = request.send().await.map_err(describe)?;
        let status = response.status();
        let mut body = Vec::new();
        while let Some(chunk) = response.chunk().await.map_err(describe)? {
            if body.len() + chunk.len() > MAX_BODY {
                return Err(NoAnswer::TooLarge);
            }
            body.extend_from_slice(&chunk);
        }
        Ok((status, body.into()))
    }

    /// While the token is rejected, a node calls the service only once per probe
    /// interval: the call let through (the probe) restarts the interval, so calls made
    /// meanwhile wait too; a success reopens the gate.
    fn unauthorized_gate(&self) -> Result<(), OffersError> {
        let Ok(mut status) = self.status.lock() else { return Ok(()) };
        match status.unauthorized_at {
            Some(at) if at.elapsed() < self.unauthorized_probe => Err(OffersError::Deferred(format!(
                "the service rejected our access token recently; next try in at most {}s",
                self.unauthorized_probe.as_secs().max(1)
            ))),
            Some(_) => {
                status.unauthorized_at = Some(Instant::now());
                Ok(())
            }
            None => Ok(()),
        }
    }

    /// The deployment's token: cached, else from `settings`, else requested from the
    /// service by exactly one node of the cluster.
    pub async fn token(&self, db: &DatabaseConnection) -> Result<String, OffersError> {
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let _one_at_a_time = self.acquiring.lock().await;
        if let Some(token) = self.cached_token() {
            return Ok(token);
        }
        let token = match self.acquire(db, None, false).await? {
            Acquired::Stored(token) | Acquired::Requested(token) => token,
            // Only a rejected token is held back; there is none here.
            Acquired::TooSoon => return Err(OffersError::Deferred("no access token yet".into())),
        };
        self.cache_token(&token);
        Ok(token)
    }

    fn cached_token(&self) -> Option<String> {
        let cached = self.token.lock().ok()?;
        cached.as_ref().filter(|(_, at)| at.elapsed() < TOKEN_CACHE).map(|(token, _)| token.clone())
    }

    fn cache_token(&self, token: &str) {
        if let Ok(mut cached) = self.token.lock() {
            *cached = Some((token.to_string(), Instant::now()));
        }
    }

    fn forget_cached_token(&self) {
        if let Ok(mut cached) = self.token.lock() {
            *cached = None;
        }
    }

    /// The stored token unless it is `rejected`; else, by the one node of the deployment
    /// holding the claim row, a new one from `/auth` (the others wait for it).
    async fn acquire(
        &self,
        db: &DatabaseConnection,
        rejected: Option<&str>,
        force: bool,
    ) -> Result<Acquired, OffersError> {
        // Another node may hold the claim while its `/auth` call runs (at most one timeout).
        let deadline = Instant::now() + self.timeout * 2 + Duration::from_secs(2);
        // A claim older than this belongs to a node that died mid-request.
        let stale_ms = crate::db::duration_ms(self.timeout + Duration::from_secs(10));
        loop {
            if let Some((token, _)) = read_setting(db, TOKEN_KEY).await?
                && Some(token.as_str()) != rejected
            {
                return Ok(Acquired::Stored(token));
            }
            let now = now_ms();
            // Taken when absent, or over a stale claim.
            let mut take_over = OnConflict::column(Column::Key);
            take_over
                .update_columns([Column::Value, Column::UpdatedAt])
                .action_and_where(Column::UpdatedAt.lt(now - stale_ms));
            let claimed =
                db.execute(&setting_insert(CLAIM_KEY, &self.node, now, take_over)?).await?.rows_affected() == 1;
            if claimed {
                let result = self.request_token(db, rejected, force).await;
                let _ = setting::Entity::delete_many()
                    .filter(Column::Key.eq(CLAIM_KEY))
                    .filter(Column::Value.eq(self.node.as_str()))
                    .exec(db)
                    .await;
                return result;
            }
            if Instant::now() > deadline {
                return Err(OffersError::Deferred("another node is requesting the access token".into()));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Holding the claim: request a token unless a usable one appeared meanwhile, and
    /// store it. A rejected token is replaced only if it is still the stored one
    /// (compare-and-swap), and at most once per `OFFERS_UNAUTHORIZED_PROBE` unless `force`.
    async fn request_token(
        &self,
        db: &DatabaseConnection,
        rejected: Option<&str>,
        force: bool,
    ) -> Result<Acquired, OffersError> {
        let stored = read_setting(db, TOKEN_KEY).await?.map(|(token, _)| token);
        if let Some(token) = &stored
            && Some(token.as_str()) != rejected
        {
            return Ok(Acquired::Stored(token.clone()));
        }
        if stored.is_some() {
            let probe_ms = crate::db::duration_ms(self.unauthorized_probe);
            if !force && read_setting(db, REAUTH_KEY).await?.is_some_and(|(_, at)| at > now_ms() - probe_ms) {
                return Ok(Acquired::TooSoon);
            }
            write_setting(db, REAUTH_KEY, &self.node).await?;
        }
        let started = Instant::now();
        let answer = self.send(self.http.post(format!("{}/auth", self.base))).await;
        metrics::histogram!("emporium_offers_call_seconds", "call" => "auth").record(started.elapsed().as_secs_f64());
        let outcome = match answer {
            Ok((status, body)) if status.is_success() => {
                #[derive(Deserialize)]
                struct Auth {
                    access_token: String,
                }
                serde_json::from_slice::<Auth>(&body)
                    .ok()
                    .map(|auth| auth.access_token.trim().to_string())
                    .filter(|token| !token.is_empty())
                    .ok_or_else(|| OffersError::Unavailable("auth: the answer holds no access_token".into()))
            }
            Ok((StatusCode::UNAUTHORIZED, body)) => Err(OffersError::Unauthorized(message_of(&body))),
            Ok((status, _)) if status.is_client_error() && status != StatusCode::TOO_MANY_REQUESTS => {
                Err(OffersError::Rejected { status: status.as_u16(), message: "auth refused".into() })
            }
            Ok((status, _)) => Err(OffersError::Unavailable(format!("auth: HTTP {status}"))),
            Err(error) => Err(OffersError::Unavailable(format!("auth: {error}"))),
        };
        self.record(db, "auth", outcome.as_ref().map(|_| ())).await;
        let token = outcome?;
        match &stored {
            // Replace only the token we saw rejected: a node that took over a stale claim,
            // or an operator, may have changed it meanwhile, and theirs then wins.
            Some(old) => {
                setting::Entity::update_many()
                    .col_expr(Column::Value, Expr::value(token.as_str()))
                    .col_expr(Column::UpdatedAt, Expr::value(now_ms()))
                    .filter(Column::Key.eq(TOKEN_KEY))
                    .filter(Column::Value.eq(old.as_str()))
                    .exec(db)
                    .await?;
            }
            None => {
                db.execute(&setting_insert(
                    TOKEN_KEY,
                    &token,
                    now_ms(),
                    OnConflict::column(Column::Key).do_nothing().to_owned(),
                )?)
                .await?;
                tracing::info!("obtained the offers service access token (stored for the whole deployment)");
            }
        }
        // Whatever is stored wins (see above).
        Ok(Acquired::Requested(read_setting(db, TOKEN_KEY).await?.map_or(token, |(stored, _)| stored)))
    }

    /// Notes a call's outcome in this node's status and, on a change or every
    /// `STATUS_REFRESH`, in the shared status every node's `/health` reads.
    async fn record(&self, db: &DatabaseConnection, call: &'static str, outcome: Result<(), &OffersError>) {
        // Nothing was asked of the service: nothing to learn about it.
        if let Err(OffersError::Deferred(_) | OffersError::Database(_)) = outcome {
            return;
        }
        let label = match outcome {
            Ok(()) => "ok",
            Err(OffersError::NotRegistered) => "not_registered",
            Err(OffersError::Unauthorized(_)) => "unauthorized",
            Err(OffersError::Rejected { .. }) => "rejected",
            Err(_) => "error",
        };
        metrics::counter!("emporium_offers_calls_total", "call" => call, "outcome" => label).increment(1);
        let now = now_ms();
        let state = match outcome {
            Ok(()) => ServiceState::Ok,
            Err(OffersError::Unauthorized(_)) => ServiceState::Unauthorized,
            // The service answered; the request itself was wrong or the product unknown.
            Err(
                OffersError::NotRegistered
                | OffersError::Rejected { .. }
                | OffersError::Database(_)
                | OffersError::Deferred(_),
            ) => ServiceState::Ok,
            Err(OffersError::Unavailable(_)) => ServiceState::Failing,
        };
        let shared = {
            let Ok(mut status) = self.status.lock() else { return };
            status.calls += 1;
            status.state = Some(state);
            match (state, outcome) {
                (ServiceState::Ok, _) => {
                    status.last_success_at = Some(now);
                    status.consecutive_failures = 0;
                    status.unauthorized_at = None;
                }
                (_, Err(error)) => {
                    status.last_failure_at = Some(now);
                    status.last_error = Some(error.to_string());
                    status.consecutive_failures += 1;
                    if state == ServiceState::Unauthorized {
                        status.unauthorized_at = Some(Instant::now());
                    }
                }
                (_, Ok(())) => {}
            }
            let due = match status.shared_written {
                Some((written, at)) => written != state || at.elapsed() >= STATUS_REFRESH,
                None => true,
            };
            if !due {
                return;
            }
            status.shared_written = Some((state, Instant::now()));
            (status.last_success_at, status.last_error.clone())
        };
        let (last_success_at, last_error) = shared;
        let previous = read_shared_status(db).await.ok().flatten();
        let since = previous.as_ref().filter(|previous| previous.state == state).map_or(now, |previous| previous.since);
        let last_success_at = last_success_at.max(previous.as_ref().and_then(|previous| previous.last_success_at));
        let status = SharedStatus {
            state,
            since,
            last_success_at,
            last_error: if state == ServiceState::Ok { None } else { last_error },
            node: self.node.clone(),
        };
        if let Err(error) = write_setting(db, STATUS_KEY, &serde_json::to_string(&status).unwrap_or_default()).await {
            tracing::warn!(error = %error, "recording the offers service status failed");
        }
    }
}

/// A failed answer that is not an outage: the service refused this request.
fn refusal(status: StatusCode, body: &[u8]) -> OffersError {
    match status {
        StatusCode::NOT_FOUND | StatusCode::REQUEST_TIMEOUT => {
            OffersError::Unavailable(format!("HTTP {status}: {}", message_of(body)))
        }
        _ if status.is_client_error() => OffersError::Rejected { status: status.as_u16(), message: message_of(body) },
        _ => OffersError::Unavailable(format!("unexpected HTTP {status}")),
    }
}

/// The service's `msg`, or the start of the body.
fn message_of(body: &[u8]) -> String {
    serde_json::from_slice::<Value>(body)
        .ok()
        .and_then(|value| value.get("msg").and_then(Value::as_str).map(str::to_string))
        .unwrap_or_else(|| String::from_utf8_lossy(&body[..body.len().min(200)]).into_owned())
}

/// Why a call got no answer we could read.
#[derive(Debug, thiserror::Error)]
enum NoAnswer {
    #[error("timed out")]
    TimedOut,
    #[error("cannot connect")]
    CannotConnect,
    #[error("response larger than {MAX_BODY} bytes")]
    TooLarge,
    /// Anything else, with its chain of causes.
    #[error("{0}")]
    Failed(String),
}

fn describe(error: reqwest::Error) -> NoAnswer {
    if error.is_timeout() {
        NoAnswer::TimedOut
    } else if error.is_connect() {
        NoAnswer::CannotConnect
    } else {
        let mut message = error.to_string();
        let mut source = std::error::Error::source(&error);
        while let Some(cause) = source {
            message.push_str(": ");
            message.push_str(&cause.to_string());
            source = cause.source();
        }
        NoAnswer::Failed(message)
    }
}

/// Parses `[{"id", "price", "items_in_stock"}, …]`; ids may be strings or integers.
/// A repeated id keeps its last entry.
fn parse_offers(body: &[u8]) -> Result<Vec<RemoteOffer>, String> {
    #[derive(Deserialize)]
    struct Wire {
        id: Value,
        price: i64,
        items_in_stock: i64,
    }
    let wire: Vec<Wire> =
        serde_json::from_slice(body).map_err(|error| format!("malformed offers response: {error}"))?;
    let mut offers: Vec<RemoteOffer> = Vec::with_capacity(wire.len());
    for offer in wire {
        let source_id = match offer.id {
            Value::String(id) if !id.is_empty() && id.len() <= 200 => id,
            Value::Number(id) if id.is_i64() || id.is_u64() => id.to_string(),
            other => return Err(format!("malformed offers response: offer id {other}")),
        };
        if offer.price < 0 || offer.items_in_stock < 0 {
            return Err(format!("malformed offers response: negative price or stock for offer {source_id}"));
        }
        let offer = RemoteOffer { source_id, price: offer.price, items_in_stock: offer.items_in_stock };
        match offers.iter_mut().find(|known| known.source_id == offer.source_id) {
            Some(known) => *known = offer,
            None => offers.push(offer),
        }
    }
    Ok(offers)
}

/// `INSERT INTO settings … ON CONFLICT (key) <on_conflict>`.
fn setting_insert(
    key: &str,
    value: &str,
    now: i64,
    on_conflict: OnConflict,
) -> Result<sea_orm::sea_query::InsertStatement, sea_orm::DbErr> {
    let mut insert = Query::insert();
    insert
        .into_table(setting::Entity)
        .columns([Column::Key, Column::Value, Column::UpdatedAt])
        .values([key.into(), value.into(), now.into()])
        .map_err(|error| sea_orm::DbErr::Custom(error.to_string()))?;
    Ok(insert.on_conflict(on_conflict).to_owned())
}

pub(super) async fn read_setting(
    db: &impl ConnectionTrait,
    key: &str,
) -> Result<Option<(String, i64)>, sea_orm::DbErr> {
    let row = setting::Entity::find_by_id(key).one(db).await?;
    Ok(row.map(|row| (row.value, row.updated_at)))
}

pub(super) async fn write_setting(db: &impl ConnectionTrait, key: &str, value: &str) -> Result<(), sea_orm::DbErr> {
    let replace = OnConflict::column(Column::Key).update_columns([Column::Value, Column::UpdatedAt]).to_owned();
    db.execute(&setting_insert(key, value, now_ms(), replace)?).await?;
    Ok(())
}

pub(super) async fn read_shared_status(db: &impl ConnectionTrait) -> Result<Option<SharedStatus>, sea_orm::DbErr> {
    Ok(read_setting(db, STATUS_KEY).await?.and_then(|(value, _)| serde_json::from_str(&value).ok()))
}

/// Drops the stored token, so the next node that needs one (its cached copy expired or
/// rejected) requests a new one, once for the deployment, through the claim row.
/// Returns the token dropped.
pub async fn discard_token(db: &impl ConnectionTrait) -> Result<Option<String>, sea_orm::DbErr> {
    let old = read_setting(db, TOKEN_KEY).await?.map(|(token, _)| token);
    if let Some(old) = &old {
        // Only the token read: a node that replaced it meanwhile keeps its new one.
        setting::Entity::delete_many()
            .filter(Column::Key.eq(TOKEN_KEY))
            .filter(Column::Value.eq(old.as_str()))
            .exec(db)
            .await?;
    }
    Ok(old)
}

/// The end of a token, enough to tell two apart in a log or a terminal.
pub fn fingerprint(token: &str) -> String {
    let tail: String = token.chars().rev().take(4).collect::<Vec<_>>().into_iter().rev().collect();
    format!("…{tail}")
}

pub(super) async fn token_present(db: &impl ConnectionTrait) -> Result<bool, sea_orm::DbErr> {
    Ok(read_setting(db, TOKEN_KEY).await?.is_some())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn offers_parse_with_string_or_integer_ids_and_reject_garbage() {
        let offers = parse_offers(
            br#"[{"id": 7, "price": 100, "items_in_stock": 2}, {"id": "x", "price": 5, "items_in_stock": 0}]"#,
        )
        .expect("parses");
        assert_eq!(offers[0], RemoteOffer { source_id: "7".into(), price: 100, items_in_stock: 2 });
        assert_eq!(offers[1].source_id, "x");
        assert!(parse_offers(br#"{"not": "what you expected""#).is_err());
        assert!(parse_offers(br#"[{"id": 1, "price": -1, "items_in_stock": 0}]"#).is_err());
        assert!(parse_offers(br#"[{"id": null, "price": 1, "items_in_stock": 0}]"#).is_err());
        let repeated = parse_offers(
            br#"[{"id": 1, "price": 1, "items_in_stock": 0}, {"id": 1, "price": 2, "items_in_stock": 0}]"#,
        )
        .expect("parses");
        assert_eq!(repeated.len(), 1);
        assert_eq!(repeated[0].price, 2);
    }
}
