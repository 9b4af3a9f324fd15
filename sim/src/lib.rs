//! Upstream simulator: a stand-in for the partner "offers service" and N partner feeds,
//! served by one axum router. Used by integration tests, docker-compose and the embedded
//! default of the emporium service.
//!
//! State lives behind an `Arc` ([`Simulator`] is a cheap clone handle), so tests can inject
//! faults and force ticks in-process, or over HTTP through the `/_control/...` routes (see
//! [`router`]).
//!
//! Lifecycle: [`Simulator::new`] builds the state without I/O; [`Simulator::serve_on`] (or
//! [`Simulator::start`] / [`Simulator::start_on`]) serves it and spawns the tick tasks,
//! returning a [`RunningSim`]. [`RunningSim::shutdown`] closes the listener and stops the
//! tick tasks; the same `Simulator` can then be served again (on the same port) with its
//! registrations intact. Dropping a `RunningSim` without `shutdown` leaves it serving until
//! the tokio runtime ends.

mod http;
mod state;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use serde::Serialize;
use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;

pub use http::router;

/// How long `shutdown` waits for in-flight requests before abandoning them.
const SHUTDOWN_GRACE: Duration = Duration::from_secs(2);

/// Simulator configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SimConfig {
    /// Period of the offers price tick. `Duration::ZERO` disables the timer (ticks then
    /// only happen through [`Simulator::tick_offers`]).
    pub offers_tick: Duration,
    /// One entry per feed: its regeneration period. `Duration::ZERO` disables that feed's
    /// timer (regeneration only through [`Simulator::tick_feed`]).
    pub feed_periods: Vec<Duration>,
    /// Items per feed.
    pub feed_items: usize,
    /// Deterministic prices, stock and feed content when `Some` (tokens stay random).
    pub seed: Option<u64>,
}

impl Default for SimConfig {
    fn default() -> Self {
        SimConfig {
            offers_tick: Duration::from_secs(60),
            feed_periods: vec![Duration::from_secs(15), Duration::from_secs(30), Duration::from_secs(60)],
            feed_items: 20,
            seed: None,
        }
    }
}

/// Fault mode of the offers service (applies to `/auth`, `/products/register` and
/// `/products/{id}/offers`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum OffersFault {
    #[default]
    Ok,
    /// Every offers route answers 503.
    Down,
    /// Every offers route answers 401, whatever the token.
    Unauthorized,
    /// `/auth` issues tokens as usual, but the other routes answer 401 to every token,
    /// the new ones too.
    RejectTokens,
    /// Sleep that long, then answer normally.
    Slow(Duration),
    /// 200 with an invalid JSON body: `{"not": "what you expected"`.
    Malformed,
}

/// Fault mode of one feed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum FeedFault {
    #[default]
    Ok,
    /// 500.
    Error500,
    /// 200 `{"a":1}`.
    Object,
    /// 200 `[1,2,3]`.
    Numbers,
    /// 200 with the feed's items followed by items that are not strings:
    /// `1`, `null`, `true`, `{"a":1}`, `["x"]`.
    NonStrings,
    /// 200 with a valid JSON array of unique 8-char strings, roughly this many bytes,
    /// streamed in chunks (chunked transfer encoding, no Content-Length).
    Huge(usize),
    /// 200 with the bytes `["\xff\xfe"]`.
    InvalidUtf8,
    /// Never answer (sleeps an hour; cut short by `shutdown`).
    Hang,
}

/// Counters for test assertions. Requests are counted when they arrive, before any fault
/// is applied, so retries against a faulty upstream are visible.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct SimStats {
    /// `POST /auth` calls, answered or not.
    pub auth_calls: u64,
    /// Times [`Simulator::forget_tokens`] ran.
    pub tokens_forgotten: u64,
    pub register_calls: u64,
    /// `GET /products/{id}/offers` calls, all products and tokens.
    pub offers_calls: u64,
    /// Requests per feed, indexed by feed number.
    pub feed_requests: Vec<u64>,
    /// Price ticks done (timer or forced).
    pub offers_ticks: u64,
    /// Regenerations per feed (timer or forced; a pinned feed skipped by the timer is not counted).
    pub feed_ticks: Vec<u64>,
    /// Products registered, all tokens.
    pub registered_products: usize,
}

struct Inner {
    config: SimConfig,
    state: Mutex<state::State>,
}

/// Cheap clone handle to the simulator state.
#[derive(Clone)]
pub struct Simulator {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for Simulator {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Simulator").field("config", &self.inner.config).finish_non_exhaustive()
    }
}

impl Simulator {
    /// Build the state (no I/O, no tasks).
    pub fn new(config: SimConfig) -> Self {
        let state = state::State::new(&config);
        Simulator { inner: Arc::new(Inner { config, state: Mutex::new(state) }) }
    }

    /// Bind `addr` (use 127.0.0.1:0 for an ephemeral port), spawn the server and the tick
    /// tasks on the current tokio runtime, return the running handle.
    pub async fn start(addr: SocketAddr, config: SimConfig) -> std::io::Result<RunningSim> {
        Self::start_on(TcpListener::bind(addr).await?, config).await
    }

    /// Same as [`Simulator::start`] with a listener the caller already bound.
    pub async fn start_on(listener: TcpListener, config: SimConfig) -> std::io::Result<RunningSim> {
        Simulator::new(config).serve_on(listener)
    }

    /// Serve this state on `listener` and spawn the tick tasks (must be called inside a
    /// tokio runtime). Registrations, faults and counters are shared with every other
    /// serving of the same `Simulator`, so shutting down and serving again on the same
    /// port simulates "service down, then back" without losing registrations.
    pub fn serve_on(&self, listener: TcpListener) -> std::io::Result<RunningSim> {
        let addr = listener.local_addr()?;
        let (stop_tx, stop_rx) = watch::channel(false);
        let app = http::router_with_stop(self.clone(), Some(stop_rx.clone()));
        let server = tokio::spawn(async move {
            let serve = axum::serve(listener, app).with_graceful_shutdown(stopped(stop_rx));
            if let Err(e) = serve.await {
                tracing::warn!(error = %e, "simulator server ended with an error");
            }
        });
        tracing::debug!(%addr, "simulator serving");
        Ok(RunningSim { sim: self.clone(), addr, stop: stop_tx, server, tickers: self.spawn_tickers() })
    }

    /// Bind `addr` and [`serve_on`](Simulator::serve_on) it.
    pub async fn serve_at(&self, addr: SocketAddr) -> std::io::Result<RunningSim> {
        self.serve_on(TcpListener::bind(addr).await?)
    }

    /// Spawn the price-tick and feed-regeneration timers (for embedders that mount
    /// [`router`] themselves; `serve_on` already does this). Dropping the returned handle
    /// leaves the timers running; call [`Tickers::abort`] to stop them.
    pub fn spawn_tickers(&self) -> Tickers {
        let mut handles = Vec::new();
        if let Some(h) = spawn_timer(self.inner.config.offers_tick, {
            let sim = self.clone();
            move || sim.tick_offers()
        }) {
            handles.push(h);
        }
        for (n, period) in self.inner.config.feed_periods.iter().enumerate() {
            let sim = self.clone();
            if let Some(h) = spawn_timer(*period, move || sim.lock().periodic_feed_tick(n)) {
                handles.push(h);
            }
        }
        Tickers { handles }
    }

    pub fn config(&self) -> &SimConfig {
        &self.inner.config
    }

    pub fn feed_count(&self) -> usize {
        self.inner.config.feed_periods.len()
    }

    pub fn set_offers_fault(&self, f: OffersFault) {
        self.lock().offers_fault = f;
    }

    pub fn offers_fault(&self) -> OffersFault {
        self.lock().offers_fault
    }

    /// # Panics
    /// If `n` is not a feed number (a test bug worth failing loudly on).
    pub fn set_feed_fault(&self, n: usize, f: FeedFault) {
        self.feed_mut(n, |feed| feed.fault = f);
    }

    /// # Panics
    /// If `n` is not a feed number.
    pub fn feed_fault(&self, n: usize) -> FeedFault {
        self.feed_mut(n, |feed| feed.fault)
    }

    /// Forget every access token issued so far (a restarted service): calls with an old
    /// token get 401 until the consumer requests a new one with `POST /auth`.
    pub fn forget_tokens(&self) {
        self.lock().forget_tokens();
    }

    /// Force a price tick now.
    pub fn tick_offers(&self) {
        self.lock().tick_offers();
    }

    /// Force a regeneration of feed `n` now. This also unpins a feed pinned by
    /// [`set_feed_items`](Simulator::set_feed_items).
    ///
    /// # Panics
    /// If `n` is not a feed number.
    pub fn tick_feed(&self, n: usize) {
        self.check_feed(n);
        self.lock().regenerate_feed(n);
    }

    /// Pin feed `n` to exactly `items` (served verbatim). The feed's timer leaves a pinned
    /// feed alone; only [`tick_feed`](Simulator::tick_feed) (or another pin) changes it.
    ///
    /// # Panics
    /// If `n` is not a feed number.
    pub fn set_feed_items(&self, n: usize, items: Vec<String>) {
        self.check_feed(n);
        self.lock().pin_feed(n, items);
    }

    /// Current content of feed `n`.
    ///
    /// # Panics
    /// If `n` is not a feed number.
    pub fn feed_items(&self, n: usize) -> Vec<String> {
        self.feed_mut(n, |feed| feed.items.clone())
    }

    pub fn stats(&self) -> SimStats {
        let state = self.lock();
        SimStats { registered_products: state.registered_count(), ..state.stats.clone() }
    }

    /// Products registered, all tokens.
    pub fn registered_count(&self) -> usize {
        self.lock().registered_count()
    }

    /// The state is small and never locked across an await, so a std mutex is enough.
    fn lock(&self) -> MutexGuard<'_, state::State> {
        self.inner.state.lock().expect("simulator state mutex poisoned")
    }

    fn check_feed(&self, n: usize) {
        assert!(n < self.feed_count(), "simulator has {} feeds, no feed {n}", self.feed_count());
    }

    fn feed_mut<T>(&self, n: usize, f: impl FnOnce(&mut state::Feed) -> T) -> T {
        self.check_feed(n);
        let mut state = self.lock();
        // check_feed guarantees the index; the feeds Vec never changes length.
        f(&mut state.feeds[n])
    }
}

/// Resolves once `stop` turns true. If the sender is dropped without stopping (a
/// `RunningSim` dropped without `shutdown`), it never resolves: the server keeps serving.
async fn stopped(mut stop: watch::Receiver<bool>) {
    if stop.wait_for(|s| *s).await.is_err() {
        std::future::pending::<()>().await;
    }
}

/// Run `f` every `period` (first run one period from now). `None` for a zero period.
fn spawn_timer(period: Duration, f: impl Fn() + Send + 'static) -> Option<JoinHandle<()>> {
    if period.is_zero() {
        return None;
    }
    Some(tokio::spawn(async move {
        let mut interval = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
        // After a stall, tick once and carry on rather than bursting the missed ticks.
        interval.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            interval.tick().await;
            f();
        }
    }))
}

/// The tick timers of a simulator.
#[derive(Debug)]
pub struct Tickers {
    handles: Vec<JoinHandle<()>>,
}

impl Tickers {
    pub fn abort(&self) {
        for h in &self.handles {
            h.abort();
        }
    }
}

/// A served simulator. Derefs to [`Simulator`] for faults, ticks and stats.
#[derive(Debug)]
pub struct RunningSim {
    sim: Simulator,
    addr: SocketAddr,
    stop: watch::Sender<bool>,
    server: JoinHandle<()>,
    tickers: Tickers,
}

impl std::ops::Deref for RunningSim {
    type Target = Simulator;
    fn deref(&self) -> &Simulator {
        &self.sim
    }
}

impl RunningSim {
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Base URL of the offers service, e.g. `http://127.0.0.1:PORT` (routes are `/auth`,
    /// `/products/...`).
    pub fn offers_url(&self) -> String {
        format!("http://{}", self.addr)
    }

    /// `(url, period)` per feed, e.g. `("http://127.0.0.1:PORT/feeds/0", 15s)`.
    pub fn feed_urls(&self) -> Vec<(String, Duration)> {
        self.sim
            .config()
            .feed_periods
            .iter()
            .enumerate()
            .map(|(n, p)| (format!("http://{}/feeds/{n}", self.addr), *p))
            .collect()
    }

    /// A handle to the state, to serve it again after `shutdown`.
    pub fn simulator(&self) -> Simulator {
        self.sim.clone()
    }

    /// Stop serving (the listener is closed when this returns: connections are refused)
    /// and stop the tick tasks. In-flight `Slow`/`Hang` requests are cut short; requests
    /// still running after a short grace period are abandoned.
    pub async fn shutdown(self) {
        let RunningSim { stop, mut server, tickers, addr, .. } = self;
        tickers.abort();
        stop.send_replace(true);
        // axum drops the listener as soon as it sees the signal, then waits for open
        // connections; don't let a stuck client hold us forever.
        if tokio::time::timeout(SHUTDOWN_GRACE, &mut server).await.is_err() {
            server.abort();
            let _ = server.await;
        }
        tracing::debug!(%addr, "simulator stopped");
    }
}
