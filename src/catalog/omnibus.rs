//! The Omnibus price rule (EU Directive 2019/2161, Art. 6a): with every announced price
//! reduction, the lowest price of the 30 days before it. Computed from the price history:
//! for an offer, the lowest price it had in the 30 days before its current price took
//! effect; for a product, the lowest of its lowest prices in the 30 days before its
//! current lowest price took effect. Prices are integer minor units.

use std::collections::{BTreeMap, HashMap};

use sea_orm::ConnectionTrait;

use super::{model::HistoryRow, trend};

/// How far back the rule looks: 30 days.
pub const WINDOW_MS: i64 = 30 * 24 * 3600 * 1000;
/// The history read first, back from now: the window and a day, enough when the
/// current prices took effect in the last day; older ones are read in further rounds.
const FIRST_LOOKBACK_MS: i64 = WINDOW_MS + trend::DEFAULT_PERIOD_MS;

/// One product's figures under the rule.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Omnibus {
    /// The product's lowest listed price now; None when no offer is listed.
    pub current: Option<i64>,
    /// The lowest of the product's lowest prices in the 30 days before `current` took
    /// effect; None without a price in that window.
    pub lowest_before: Option<i64>,
    /// Per listed offer (by the offers service's id): the lowest price it had in the 30
    /// days before its current price took effect, when it had one.
    pub offers: HashMap<String, i64>,
}

impl Omnibus {
    /// Whether the current lowest price is a reduction: below `lowest_before`.
    pub fn price_reduced(&self) -> bool {
        matches!((self.current, self.lowest_before), (Some(now), Some(before)) if now < before)
    }
}

/// What one product's history since a moment gave.
#[derive(Debug, PartialEq, Eq)]
enum Outcome {
    Done(Omnibus),
    /// The history must be read from this earlier moment.
    Needs(i64),
}

/// The figures of many products at `now`: two statements per round, whatever the number
/// of products. One round when the current prices took effect in the last day; more when
/// older ones need older history (each round reaches at least twice as far back).
pub async fn load(
    db: &impl ConnectionTrait,
    product_ids: &[i64],
    now: i64,
) -> Result<HashMap<i64, Omnibus>, sea_orm::DbErr> {
    let mut pending: HashMap<i64, i64> = product_ids.iter().map(|id| (*id, now - FIRST_LOOKBACK_MS)).collect();
    let mut done = HashMap::with_capacity(product_ids.len());
    while !pending.is_empty() {
        let bounds: Vec<(i64, i64)> = pending.iter().map(|(id, since)| (*id, *since)).collect();
        let histories = trend::load_since(db, &bounds).await?;
        let mut next = HashMap::new();
        for (id, since) in pending {
            let (before, during) = histories.get(&id).map(|h| (&h.before[..], &h.during[..])).unwrap_or_default();
            match evaluate(since, before, during, now) {
                Outcome::Done(figures) => {
                    done.insert(id, figures);
                }
                Outcome::Needs(earlier) => {
                    next.insert(id, earlier);
                }
            }
        }
        pending = next;
    }
    Ok(done)
}

/// The figures from a product's history since `since`: `before` holds each offer's last
/// row at or before it, `during` every later row, oldest first.
fn evaluate(since: i64, before: &[HistoryRow], during: &[HistoryRow], now: i64) -> Outcome {
    // Earlier history exists only when some offer had a row at or before `since`.
    let has_earlier = !before.is_empty();
    let mut needs: Option<i64> = None;
    let mut need = |at: i64| needs = Some(needs.map_or(at, |needed: i64| needed.min(at)));

    // Each offer's rows, oldest first.
    let mut by_offer: HashMap<&str, Vec<&HistoryRow>> = HashMap::new();
    for row in before.iter().chain(during) {
        by_offer.entry(row.offer_source_id.as_str()).or_default().push(row);
    }
    let mut offers = HashMap::new();
    for (source_id, rows) in &by_offer {
        let Some(latest) = rows.last().filter(|row| row.price.is_some()) else { continue };
        let start = latest.recorded_at - WINDOW_MS;
        if start < since && rows[0].recorded_at <= since {
            need(start);
            continue;
        }
        let window = rows[..rows.len() - 1].iter().map(|row| (row.recorded_at, row.price));
        if let Some(lowest) = lowest_in(window, start) {
            offers.insert((*source_id).to_string(), lowest);
        }
    }

    // The product's lowest price at `since` and after every moment something changed.
    let mut listed: HashMap<&str, i64> = HashMap::new();
    for row in before {
        if let Some(price) = row.price {
            listed.insert(&row.offer_source_id, price);
        }
    }
    let mut series: Vec<(i64, Option<i64>)> = vec![(since, listed.values().min().copied())];
    let mut moments: BTreeMap<i64, Vec<&HistoryRow>> = BTreeMap::new();
    for row in during {
        moments.entry(row.recorded_at).or_default().push(row);
    }
    for (at, rows) in moments {
        for row in rows {
            match row.price {
                Some(price) => listed.insert(&row.offer_source_id, price),
                None => listed.remove(row.offer_source_id.as_str()),
            };
        }
        let lowest = listed.values().min().copied();
        if series.last().is_none_or(|last| last.1 != lowest) {
            series.push((at, lowest));
        }
    }
    let current = series.last().and_then(|last| last.1);
    let mut lowest_before = None;
    if current.is_some() {
        // `series` has no repeats: its last point is when the current price took effect.
        let (took_effect, _) = series[series.len() - 1];
        let start = took_effect - WINDOW_MS;
        if series.len() == 1 && has_earlier {
            // In effect since before `since`: look at least twice as far back.
            let last_change = before.iter().map(|row| row.recorded_at).max().unwrap_or(since);
            need(last_change.min(since) - WINDOW_MS.max(now - since));
        } else if start < since && has_earlier {
            need(start);
        } else {
            lowest_before = lowest_in(series[..series.len() - 1].iter().copied(), start);
        }
    }
    match needs {
        Some(earlier) => Outcome::Needs(earlier),
        None => Outcome::Done(Omnibus { current, lowest_before, offers }),
    }
}

/// The lowest price in effect at some moment from `start` on, of prices each in effect
/// from its moment until the next (oldest first, all before the end of the window).
fn lowest_in(prices: impl Iterator<Item = (i64, Option<i64>)>, start: i64) -> Option<i64> {
    let mut at_start = None;
    let mut lowest: Option<i64> = None;
    for (at, price) in prices {
        if at <= start {
            at_start = price;
        } else if let Some(price) = price {
            lowest = Some(lowest.map_or(price, |low| low.min(price)));
        }
    }
    match (at_start, lowest) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DAY: i64 = 24 * 3600 * 1000;
    const NOW: i64 = 1000 * DAY;

    fn row(offer: &str, price: Option<i64>, at: i64) -> HistoryRow {
        HistoryRow { product_id: 1, offer_source_id: offer.into(), price, recorded_at: at }
    }

    /// Splits a whole history at `since` as the loader reads it.
    fn split(rows: &[HistoryRow], since: i64) -> (Vec<HistoryRow>, Vec<HistoryRow>) {
        let mut before: Vec<HistoryRow> = Vec::new();
        for row in rows.iter().filter(|row| row.recorded_at <= since) {
            before.retain(|kept| kept.offer_source_id != row.offer_source_id);
            before.push(row.clone());
        }
        (before, rows.iter().filter(|row| row.recorded_at > since).cloned().collect())
    }

    /// Evaluates in rounds, as [`load`] does.
    fn run(rows: &[HistoryRow]) -> (Omnibus, usize) {
        let mut since = NOW - FIRST_LOOKBACK_MS;
        for round in 1..50 {
            let (before, during) = split(rows, since);
            match evaluate(since, &before, &during, NOW) {
                Outcome::Done(figures) => return (figures, round),
                Outcome::Needs(earlier) => {
                    assert!(earlier < since);
                    since = earlier;
                }
            }
        }
        panic!("no end")
    }

    #[test]
    fn a_rise_after_a_cut_is_no_reduction() {
        let rows = [row("a", Some(100), NOW - 40 * DAY), row("a", Some(80), NOW - 20 * DAY), row("a", Some(90), NOW)];
        let (figures, _) = run(&rows);
        assert_eq!(figures.current, Some(90));
        assert_eq!(figures.lowest_before, Some(80));
        assert!(!figures.price_reduced());
        assert_eq!(figures.offers["a"], 80);
    }

    #[test]
    fn a_cut_below_the_window_is_a_reduction_and_the_price_in_effect_at_its_start_counts() {
        let rows = [row("a", Some(100), NOW - 40 * DAY), row("a", Some(90), NOW - 2 * DAY)];
        let (figures, rounds) = run(&rows);
        assert_eq!((figures.current, figures.lowest_before, figures.price_reduced()), (Some(90), Some(100), true));
        assert_eq!(figures.offers["a"], 100);
        assert_eq!(rounds, 2, "the window before two days ago needs older rows");
    }

    #[test]
    fn prices_before_the_window_do_not_count() {
        let rows = [
            row("a", Some(50), NOW - 90 * DAY),
            row("a", Some(100), NOW - 45 * DAY),
            row("a", Some(90), NOW - 10 * DAY),
        ];
        let (figures, _) = run(&rows);
        assert_eq!((figures.current, figures.lowest_before, figures.price_reduced()), (Some(90), Some(100), true));
    }

    #[test]
    fn no_history_or_a_single_price_has_nothing_to_compare() {
        let (empty, rounds) = run(&[]);
        assert_eq!(empty, Omnibus::default());
        assert_eq!(rounds, 1);
        let (single, _) = run(&[row("a", Some(70), NOW - 400 * DAY)]);
        assert_eq!((single.current, single.lowest_before, single.price_reduced()), (Some(70), None, false));
        assert!(single.offers.is_empty());
    }

    #[test]
    fn the_product_follows_its_lowest_price_across_offers() {
        // a is cheapest until b undercuts it; b's cut is the current lowest's start.
        let rows = [
            row("a", Some(100), NOW - 200 * DAY),
            row("b", Some(120), NOW - 100 * DAY),
            row("b", Some(95), NOW - 5 * DAY),
            row("a", Some(130), NOW - DAY / 2),
        ];
        let (figures, _) = run(&rows);
        assert_eq!((figures.current, figures.lowest_before, figures.price_reduced()), (Some(95), Some(100), true));
        assert_eq!(figures.offers["a"], 100);
        assert_eq!(figures.offers["b"], 120);
        // A lowest price unchanged for long, while another offer moves: found in a few rounds.
        let mut rows = vec![row("a", Some(10), NOW - 3000 * DAY)];
        rows.extend((0..100).map(|n| row("b", Some(20 + n % 2), NOW - (100 - n) * 20 * DAY)));
        let (figures, rounds) = run(&rows);
        assert_eq!((figures.current, figures.lowest_before), (Some(10), None));
        assert!(rounds <= 8, "{rounds} rounds");
        // A withdrawn offer has no figure; the product's price without it counts.
        let rows = [row("a", Some(50), NOW - 10 * DAY), row("b", Some(60), NOW - 9 * DAY), row("a", None, NOW - DAY)];
        let (figures, _) = run(&rows);
        assert_eq!((figures.current, figures.lowest_before, figures.price_reduced()), (Some(60), Some(50), false));
        assert!(!figures.offers.contains_key("a"));
    }
}
