//! The simulated world: tokens, registered products with their offers, the feeds and the
//! counters. Pure data + randomness, no I/O, so every rule here is unit-testable.

use std::collections::{HashMap, HashSet};

use rand::rngs::StdRng;
use rand::seq::IndexedRandom;
use rand::{Rng, SeedableRng};
use serde::Serialize;
use serde_json::Value;

use crate::{FeedFault, OffersFault, SimConfig, SimStats};

/// Offers a product gets at registration: 1..=5.
const INITIAL_OFFERS: std::ops::RangeInclusive<usize> = 1..=5;
/// Upper bound on offers per product so the occasional "new offer" cannot grow without limit.
const MAX_OFFERS: usize = 8;
const PRICE_RANGE: std::ops::Range<u64> = 1_000..100_000;
const STOCK_RANGE: std::ops::Range<u32> = 0..100;
const MAX_STOCK: i64 = 200;
/// Chance per product per tick that one offer disappears or a new one appears.
const CHURN_PROBABILITY: f64 = 0.1;

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Offer {
    pub id: u64,
    pub price: u64,
    pub items_in_stock: u32,
}

/// Name and description are validated and logged by the HTTP layer but never returned by
/// the contract, so only the offers are kept.
#[derive(Debug)]
struct Product {
    offers: Vec<Offer>,
}

#[derive(Debug)]
pub struct Feed {
    pub items: Vec<String>,
    /// Set by `set_feed_items`; the periodic regeneration leaves a pinned feed alone so
    /// tests get deterministic content. `tick_feed` unpins.
    pub pinned: bool,
    pub fault: FeedFault,
}

/// Why a registration was refused (the HTTP layer maps these to status codes).
#[derive(Debug, PartialEq, Eq)]
pub enum RegisterError {
    UnknownToken,
    Conflict,
}

/// Why an offers lookup was refused.
#[derive(Debug, PartialEq, Eq)]
pub enum OffersError {
    UnknownToken,
    NotFound,
}

pub struct State {
    rng: StdRng,
    tokens: HashSet<String>,
    /// Products in registration order: ticks walk this Vec (not a HashMap) so a seeded
    /// simulator drifts prices identically run after run.
    products: Vec<Product>,
    /// (token, product key) -> index in `products`.
    index: HashMap<(String, String), usize>,
    /// Offer ids are global and never reused.
    next_offer_id: u64,
    pub offers_fault: OffersFault,
    pub feeds: Vec<Feed>,
    items_per_feed: usize,
    /// Shared pool the feeds draw from, so feeds overlap and consumers must deduplicate.
    pool: Vec<String>,
    pool_set: HashSet<String>,
    pub stats: SimStats,
}

/// The key a product is stored under: ids arrive as JSON strings or integers but the
/// offers route only ever sees path strings, so `5` and `"5"` are the same product.
pub fn product_key(id: &Value) -> Option<String> {
    match id {
        Value::String(s) if !s.is_empty() => Some(s.clone()),
        Value::Number(n) if n.is_i64() || n.is_u64() => Some(n.to_string()),
        _ => None,
    }
}

impl State {
    pub fn new(config: &SimConfig) -> Self {
        let rng = match config.seed {
            Some(seed) => StdRng::seed_from_u64(seed),
            None => StdRng::from_os_rng(),
        };
        let feed_count = config.feed_periods.len();
        let mut state = State {
            rng,
            tokens: HashSet::new(),
            products: Vec::new(),
            index: HashMap::new(),
            next_offer_id: 1,
            offers_fault: OffersFault::Ok,
            feeds: Vec::with_capacity(feed_count),
            items_per_feed: config.feed_items,
            pool: Vec::new(),
            pool_set: HashSet::new(),
            stats: SimStats {
                feed_requests: vec![0; feed_count],
                feed_ticks: vec![0; feed_count],
                ..SimStats::default()
            },
        };
        // Twice the feed size: two feeds drawing half the pool each share about half their items.
        let pool_size = (config.feed_items * 2).max(2);
        while state.pool.len() < pool_size {
            let item = state.fresh_item();
            state.pool_set.insert(item.clone());
            state.pool.push(item);
        }
        for _ in 0..feed_count {
            let items = state.sample_pool();
            state.feeds.push(Feed { items, pinned: false, fault: FeedFault::Ok });
        }
        state
    }

    // ---- offers service -------------------------------------------------------------

    /// Tokens are not data: they come from the thread RNG even when seeded, so a restarted
    /// seeded simulator never re-issues a token a consumer still holds from the old one.
    pub fn issue_token(&mut self) -> String {
        let mut b: [u8; 16] = rand::rng().random();
        b[6] = (b[6] & 0x0f) | 0x40; // uuid v4 layout, because the real service issues those
        b[8] = (b[8] & 0x3f) | 0x80;
        let hex: String = b.iter().map(|x| format!("{x:02x}")).collect();
        let token = format!("{}-{}-{}-{}-{}", &hex[0..8], &hex[8..12], &hex[12..16], &hex[16..20], &hex[20..32]);
        self.tokens.insert(token.clone());
        token
    }

    pub fn token_known(&self, token: &str) -> bool {
        self.tokens.contains(token)
    }

    /// Forgets every issued token, as a restarted service would: old tokens get 401 until
    /// a consumer calls `/auth` again. Products stay filed under their old tokens, so a
    /// new token does not see them (404) and they must be registered again.
    pub fn forget_tokens(&mut self) {
        self.tokens.clear();
        self.stats.tokens_forgotten += 1;
    }

    pub fn register(&mut self, token: &str, key: String) -> Result<(), RegisterError> {
        if !self.token_known(token) {
            return Err(RegisterError::UnknownToken);
        }
        let slot = (token.to_owned(), key);
        if self.index.contains_key(&slot) {
            return Err(RegisterError::Conflict);
        }
        let count = self.rng.random_range(INITIAL_OFFERS);
        let offers = (0..count).map(|_| self.new_offer()).collect();
        self.products.push(Product { offers });
        self.index.insert(slot, self.products.len() - 1);
        Ok(())
    }

    pub fn offers(&self, token: &str, key: &str) -> Result<Vec<Offer>, OffersError> {
        if !self.token_known(token) {
            return Err(OffersError::UnknownToken);
        }
        self.index
            .get(&(token.to_owned(), key.to_owned()))
            .and_then(|&i| self.products.get(i))
            .map(|p| p.offers.clone())
            .ok_or(OffersError::NotFound)
    }

    pub fn registered_count(&self) -> usize {
        self.products.len()
    }

    fn new_offer(&mut self) -> Offer {
        let id = self.next_offer_id;
        self.next_offer_id += 1;
        Offer { id, price: self.rng.random_range(PRICE_RANGE), items_in_stock: self.rng.random_range(STOCK_RANGE) }
    }

    /// One price tick: churn (sometimes), then drift every price by -10%..+10% and walk the
    /// stock. At least one price per product changes so consumers can observe trends.
    pub fn tick_offers(&mut self) {
        self.stats.offers_ticks += 1;
        for i in 0..self.products.len() {
            // Take the offers out so `self.rng` / `self.new_offer` can be borrowed freely.
            let mut offers = std::mem::take(&mut self.products[i].offers);
            if self.rng.random_bool(CHURN_PROBABILITY) {
                let remove = offers.len() > 1 && (offers.len() >= MAX_OFFERS || self.rng.random_bool(0.5));
                if remove {
                    let at = self.rng.random_range(0..offers.len());
                    offers.remove(at);
                } else {
                    offers.push(self.new_offer());
                }
            }
            if offers.is_empty() {
                // Cannot happen (registration gives >= 1, churn keeps >= 1); stay safe anyway.
                offers.push(self.new_offer());
            }
            let mut changed = false;
            for offer in offers.iter_mut() {
                let new_price = drift(&mut self.rng, offer.price);
                changed |= new_price != offer.price;
                offer.price = new_price;
                let stock = i64::from(offer.items_in_stock) + self.rng.random_range(-10..=10);
                offer.items_in_stock = u32::try_from(stock.clamp(0, MAX_STOCK)).unwrap_or(0);
            }
            if !changed {
                // Small prices (or an unlucky 0% draw) may not move: nudge one by a unit.
                let at = self.rng.random_range(0..offers.len());
                let offer = &mut offers[at];
                offer.price =
                    if offer.price <= 1 || self.rng.random_bool(0.5) { offer.price + 1 } else { offer.price - 1 };
            }
            self.products[i].offers = offers;
        }
    }

    // ---- feeds ----------------------------------------------------------------------

    /// Periodic regeneration: a pinned feed keeps its content.
    pub fn periodic_feed_tick(&mut self, n: usize) {
        if self.feeds.get(n).is_some_and(|f| !f.pinned) {
            self.regenerate_feed(n);
        }
    }

    /// Forced regeneration (`tick_feed`): unpins and draws new content.
    pub fn regenerate_feed(&mut self, n: usize) {
        if n >= self.feeds.len() {
            return;
        }
        self.stats.feed_ticks[n] += 1;
        self.rotate_pool();
        let old = std::mem::take(&mut self.feeds[n].items);
        // A redraw equal to the previous content is astronomically unlikely for real sizes,
        // but "a tick changes the content" is a promise, so retry a few times.
        let mut items = self.sample_pool();
        for _ in 0..8 {
            if items != old {
                break;
            }
            self.rotate_pool();
            items = self.sample_pool();
        }
        let feed = &mut self.feeds[n];
        feed.items = items;
        feed.pinned = false;
    }

    pub fn pin_feed(&mut self, n: usize, items: Vec<String>) {
        if let Some(feed) = self.feeds.get_mut(n) {
            feed.items = items;
            feed.pinned = true;
        }
    }

    fn sample_pool(&mut self) -> Vec<String> {
        self.pool.choose_multiple(&mut self.rng, self.items_per_feed).cloned().collect()
    }

    /// Replace about 10% of the pool (at least one item) with fresh items: the pool rotates
    /// slowly, so content changes over time while feeds keep overlapping.
    fn rotate_pool(&mut self) {
        let replace = (self.pool.len() / 10).max(1);
        for _ in 0..replace {
            let at = self.rng.random_range(0..self.pool.len());
            let item = self.fresh_item();
            self.pool_set.remove(&self.pool[at]);
            self.pool_set.insert(item.clone());
            self.pool[at] = item;
        }
    }

    /// An 8-char lowercase hex string not currently in the pool.
    fn fresh_item(&mut self) -> String {
        loop {
            let item = format!("{:08x}", self.rng.random::<u32>());
            if !self.pool_set.contains(&item) {
                return item;
            }
        }
    }
}

/// Move a price by a random -10%..+10% (integer basis points, so no float rounding
/// surprises), never below 1.
fn drift(rng: &mut StdRng, price: u64) -> u64 {
    let bp: i128 = rng.random_range(-1_000..=1_000);
    let p = i128::from(price);
    let next = (p + p * bp / 10_000).max(1);
    u64::try_from(next).unwrap_or(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    fn config(seed: u64) -> SimConfig {
        SimConfig { seed: Some(seed), ..SimConfig::default() }
    }

    #[test]
    fn product_key_accepts_strings_and_integers_only() {
        assert_eq!(product_key(&Value::from("abc")), Some("abc".into()));
        assert_eq!(product_key(&Value::from(5)), Some("5".into()));
        assert_eq!(product_key(&Value::from(-5)), Some("-5".into()));
        assert_eq!(product_key(&Value::from("")), None);
        assert_eq!(product_key(&Value::from(1.5)), None);
        assert_eq!(product_key(&Value::Null), None);
        assert_eq!(product_key(&Value::Bool(true)), None);
    }

    #[test]
    fn registration_gives_one_to_five_offers_with_unique_ids() {
        let mut s = State::new(&config(1));
        let t = s.issue_token();
        let mut ids = HashSet::new();
        for i in 0..50 {
            s.register(&t, i.to_string()).expect("register");
            let offers = s.offers(&t, &i.to_string()).expect("offers");
            assert!((1..=5).contains(&offers.len()));
            for o in offers {
                assert!(ids.insert(o.id), "offer id reused");
                assert!(PRICE_RANGE.contains(&o.price));
                assert!(o.items_in_stock < 100);
            }
        }
    }

    #[test]
    fn ticks_always_move_a_price_and_keep_invariants() {
        let mut s = State::new(&config(2));
        let t = s.issue_token();
        for i in 0..20 {
            s.register(&t, i.to_string()).expect("register");
        }
        let mut seen_ids: HashSet<u64> = HashSet::new();
        for _ in 0..200 {
            let before: Vec<Vec<Offer>> = (0..20).map(|i| s.offers(&t, &i.to_string()).expect("offers")).collect();
            s.tick_offers();
            for (i, old) in before.iter().enumerate() {
                let new = s.offers(&t, &i.to_string()).expect("offers");
                assert!(!new.is_empty() && new.len() <= MAX_OFFERS);
                assert!(new.iter().all(|o| o.price >= 1));
                let moved = new.iter().any(|o| old.iter().any(|p| p.id == o.id && p.price != o.price));
                assert!(moved, "no price moved for product {i}");
                for o in &new {
                    // An id either survives from before or is brand new (never reused).
                    if !old.iter().any(|p| p.id == o.id) {
                        assert!(seen_ids.insert(o.id), "offer id reused");
                    }
                }
                for o in old {
                    seen_ids.insert(o.id);
                }
            }
        }
    }

    #[test]
    fn tiny_prices_still_move_and_never_hit_zero() {
        let mut rng = StdRng::seed_from_u64(3);
        for _ in 0..1000 {
            assert!(drift(&mut rng, 1) >= 1);
        }
        let mut s = State::new(&config(3));
        let t = s.issue_token();
        s.register(&t, "x".into()).expect("register");
        for p in &mut s.products[0].offers {
            p.price = 1;
        }
        for _ in 0..100 {
            s.tick_offers();
            assert!(s.products[0].offers.iter().all(|o| o.price >= 1));
        }
    }

    #[test]
    fn seeded_simulators_are_deterministic() {
        let run = || {
            let mut s = State::new(&config(42));
            let t = s.issue_token();
            s.register(&t, "a".into()).expect("register");
            s.tick_offers();
            (s.offers(&t, "a").expect("offers"), s.feeds[0].items.clone())
        };
        assert_eq!(run(), run());
    }

    #[test]
    fn feeds_overlap_and_items_are_unique_hex() {
        let s = State::new(&SimConfig { feed_periods: vec![Duration::from_secs(1); 3], ..config(4) });
        for f in &s.feeds {
            assert_eq!(f.items.len(), 20);
            let set: HashSet<_> = f.items.iter().collect();
            assert_eq!(set.len(), 20);
            assert!(
                f.items
                    .iter()
                    .all(|i| { i.len() == 8 && i.chars().all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase()) })
            );
        }
        let a: HashSet<_> = s.feeds[0].items.iter().collect();
        let b: HashSet<_> = s.feeds[1].items.iter().collect();
        assert!(a.intersection(&b).count() > 0, "feeds should share items");
    }

    #[test]
    fn pinned_feed_survives_periodic_ticks_but_not_forced_ones() {
        let mut s = State::new(&config(5));
        let pinned = vec!["aaaaaaaa".to_string(), "bbbbbbbb".to_string()];
        s.pin_feed(0, pinned.clone());
        s.periodic_feed_tick(0);
        assert_eq!(s.feeds[0].items, pinned);
        s.regenerate_feed(0);
        assert_ne!(s.feeds[0].items, pinned);
        assert!(!s.feeds[0].pinned);
        let before = s.feeds[0].items.clone();
        s.periodic_feed_tick(0);
        assert_ne!(s.feeds[0].items, before);
    }

    #[test]
    fn conflicts_and_token_isolation() {
        let mut s = State::new(&config(6));
        let a = s.issue_token();
        let b = s.issue_token();
        assert_ne!(a, b);
        s.register(&a, "5".into()).expect("register");
        assert_eq!(s.register(&a, "5".into()), Err(RegisterError::Conflict));
        assert_eq!(s.offers(&b, "5"), Err(OffersError::NotFound));
        assert_eq!(s.register("nope", "5".into()), Err(RegisterError::UnknownToken));
        s.register(&b, "5".into()).expect("same id, other token");
        assert_eq!(s.registered_count(), 2);
    }

    #[test]
    fn forgotten_tokens_are_refused_until_a_new_one_is_issued() {
        let mut s = State::new(&config(7));
        let old = s.issue_token();
        s.register(&old, "5".into()).expect("register");
        s.forget_tokens();
        assert!(!s.token_known(&old));
        assert_eq!(s.register(&old, "6".into()), Err(RegisterError::UnknownToken));
        assert_eq!(s.offers(&old, "5"), Err(OffersError::UnknownToken));
        let new = s.issue_token();
        assert_eq!(s.offers(&new, "5"), Err(OffersError::NotFound), "products stay with the old token");
        s.register(&new, "5".into()).expect("registered again under the new token");
        assert_eq!(s.stats.tokens_forgotten, 1);
    }
}
