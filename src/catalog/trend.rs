//! Price history and trends. History rows are written only when an offer's price
//! changes (and when an offer is withdrawn, with no price), so a period's prices are the
//! price in effect when it starts followed by every change inside it.

use std::collections::{BTreeMap, HashMap};

use sea_orm::{
    ColumnTrait as _, ConnectionTrait, EntityTrait as _, FromQueryResult as _, QueryFilter as _, QueryOrder as _,
    sea_query::{Alias, Condition, Expr, ExprTrait as _, JoinType, Query},
};

use super::{
    entity::price_history::{self, Column},
    model::HistoryRow,
};
use crate::error::{AppError, AppResult};

/// The period when a query gives no `from`: the last day.
pub const DEFAULT_PERIOD_MS: i64 = 24 * 3600 * 1000;
/// The longest period one query may ask for.
pub const MAX_PERIOD_MS: i64 = 31 * 24 * 3600 * 1000;

/// A requested period in stored milliseconds; `None` ends are resolved at load time
/// (`to` = now, `from` = a day before `to`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Period {
    pub from: Option<i64>,
    pub to: Option<i64>,
}

impl Period {
    /// Checks the order and length of a requested period, `to` being `now` when omitted
    /// (the same rules whether it is given or not).
    pub fn new(from: Option<i64>, to: Option<i64>, now: i64) -> AppResult<Self> {
        if let Some(from) = from {
            let end = to.unwrap_or(now);
            if from > end {
                return Err(AppError::bad_input(match to {
                    Some(_) => "`from` must not be after `to`",
                    None => "`from` must not be in the future when `to` is omitted (it means now)",
                }));
            }
            if end - from > MAX_PERIOD_MS {
                return Err(AppError::bad_input(match to {
                    Some(_) => "a period may span at most 31 days",
                    None => "a period may span at most 31 days (`to` is now when omitted)",
                }));
            }
        }
        Ok(Self { from, to })
    }

    /// The concrete bounds, given the current time.
    pub fn resolve(self, now: i64) -> (i64, i64) {
        let to = self.to.unwrap_or(now);
        let from = self.from.unwrap_or(to - DEFAULT_PERIOD_MS);
        (from, to)
    }
}

/// A product's history for one period: each offer's last row at or before `from`, and
/// every row after `from` up to `to`, oldest first.
#[derive(Debug, Clone, Default)]
pub struct ProductHistory {
    pub from: i64,
    pub to: i64,
    pub before: Vec<HistoryRow>,
    pub during: Vec<HistoryRow>,
}

impl ProductHistory {
    /// The recorded changes of one offer inside the period (`from` inclusive).
    pub fn offer_changes(&self, source_id: &str) -> Vec<(i64, i64)> {
        self.before
            .iter()
            .filter(|row| row.recorded_at == self.from)
            .chain(self.during.iter())
            .filter(|row| row.offer_source_id == source_id)
            .filter_map(|row| row.price.map(|price| (row.recorded_at, price)))
            .collect()
    }

    /// One offer's prices over the period: its price at `from` (if it was listed then)
    /// and every change after.
    pub fn offer_points(&self, source_id: &str) -> Vec<(i64, i64)> {
        let start = self
            .before
            .iter()
            .filter(|row| row.offer_source_id == source_id)
            .filter_map(|row| row.price.map(|price| (self.from, price)));
        let changes = self
            .during
            .iter()
            .filter(|row| row.offer_source_id == source_id)
            .filter_map(|row| row.price.map(|price| (row.recorded_at, price)));
        dedupe(start.chain(changes))
    }

    /// The product's lowest listed price over the period: at `from`, then after every
    /// moment some offer changed or was withdrawn (only when the lowest price moved).
    pub fn lowest_points(&self) -> Vec<(i64, i64)> {
        let mut current: HashMap<&str, i64> = HashMap::new();
        for row in &self.before {
            if let Some(price) = row.price {
                current.insert(&row.offer_source_id, price);
            }
        }
        let mut points = Vec::new();
        if let Some(lowest) = current.values().min() {
            points.push((self.from, *lowest));
        }
        let mut moments: BTreeMap<i64, Vec<&HistoryRow>> = BTreeMap::new();
        for row in &self.during {
            moments.entry(row.recorded_at).or_default().push(row);
        }
        for (at, rows) in moments {
            for row in rows {
                match row.price {
                    Some(price) => current.insert(&row.offer_source_id, price),
                    None => current.remove(row.offer_source_id.as_str()),
                };
            }
            if let Some(lowest) = current.values().min() {
                points.push((at, *lowest));
            }
        }
        dedupe(points.into_iter())
    }
}

/// Drops points that repeat the previous price.
fn dedupe(points: impl Iterator<Item = (i64, i64)>) -> Vec<(i64, i64)> {
    let mut out: Vec<(i64, i64)> = Vec::new();
    for point in points {
        if out.last().is_none_or(|last| last.1 != point.1) {
            out.push(point);
        }
    }
    out
}

/// Summary figures of a series of prices.
#[derive(Debug, Clone, PartialEq)]
pub struct Summary {
    pub first: Option<i64>,
    pub last: Option<i64>,
    pub min: Option<i64>,
    pub max: Option<i64>,
    /// Rise (+) or fall (−) from first to last, in percent of the first, two decimals.
    pub change_percent: Option<f64>,
}

pub fn summarize(points: &[(i64, i64)]) -> Summary {
    let first = points.first().map(|point| point.1);
    let last = points.last().map(|point| point.1);
    let change_percent = match (first, last) {
        (Some(first), Some(last)) if first != 0 => {
            Some(((last - first) as f64 * 100.0 / first as f64 * 100.0).round() / 100.0)
        }
        _ => None,
    };
    Summary {
        first,
        last,
        min: points.iter().map(|point| point.1).min(),
        max: points.iter().map(|point| point.1).max(),
        change_percent,
    }
}

/// Loads the history of many products for one period: two statements whatever the
/// number of products.
pub async fn load_histories(
    db: &impl ConnectionTrait,
    product_ids: &[i64],
    from: i64,
    to: i64,
) -> Result<HashMap<i64, ProductHistory>, sea_orm::DbErr> {
    let (before, during) = load_rows(db, &[(from, product_ids)], Some(to)).await?;
    let mut histories: HashMap<i64, ProductHistory> = product_ids
        .iter()
        .map(|id| (*id, ProductHistory { from, to, before: Vec::new(), during: Vec::new() }))
        .collect();
    file_rows(&mut histories, before, during);
    Ok(histories)
}

/// Loads the history of many products, each from its own moment to the latest row (`to`
/// is `i64::MAX`): two statements whatever the number of products.
pub async fn load_since(
    db: &impl ConnectionTrait,
    bounds: &[(i64, i64)],
) -> Result<HashMap<i64, ProductHistory>, sea_orm::DbErr> {
    let mut by_from: BTreeMap<i64, Vec<i64>> = BTreeMap::new();
    for (id, from) in bounds {
        by_from.entry(*from).or_default().push(*id);
    }
    let groups: Vec<(i64, &[i64])> = by_from.iter().map(|(from, ids)| (*from, ids.as_slice())).collect();
    let (before, during) = load_rows(db, &groups, None).await?;
    let mut histories: HashMap<i64, ProductHistory> = bounds
        .iter()
        .map(|(id, from)| (*id, ProductHistory { from: *from, to: i64::MAX, before: Vec::new(), during: Vec::new() }))
        .collect();
    file_rows(&mut histories, before, during);
    Ok(histories)
}

/// Each product's rows into its history.
fn file_rows(histories: &mut HashMap<i64, ProductHistory>, before: Vec<HistoryRow>, during: Vec<HistoryRow>) {
    for row in before {
        if let Some(history) = histories.get_mut(&row.product_id) {
            // Two rows of one offer at the same instant cannot be written; keep the last anyway.
            history.before.retain(|kept| kept.offer_source_id != row.offer_source_id);
            history.before.push(row);
        }
    }
    for row in during {
        if let Some(history) = histories.get_mut(&row.product_id) {
            history.during.push(row);
        }
    }
}

/// For each group of products sharing a `from`: each offer's latest row at or before
/// `from` (ordered by id), and every row after `from` up to `to` (oldest first).
async fn load_rows(
    db: &impl ConnectionTrait,
    groups: &[(i64, &[i64])],
    to: Option<i64>,
) -> Result<(Vec<HistoryRow>, Vec<HistoryRow>), sea_orm::DbErr> {
    let groups: Vec<(i64, &[i64])> = groups.iter().copied().filter(|(_, ids)| !ids.is_empty()).collect();
    if groups.is_empty() {
        return Ok((Vec::new(), Vec::new()));
    }
    let up_to_from = groups.iter().fold(Condition::any(), |any, (from, ids)| {
        any.add(
            Condition::all()
                .add(Expr::col(Column::ProductId).is_in(ids.iter().copied()))
                .add(Expr::col(Column::RecordedAt).lte(*from)),
        )
    });
    let after_from = groups.iter().fold(Condition::any(), |any, (from, ids)| {
        any.add(Condition::all().add(Column::ProductId.is_in(ids.iter().copied())).add(Column::RecordedAt.gt(*from)))
    });
    // The row in effect at `from` of each offer: its latest row up to then.
    let (h, latest) = (Alias::new("h"), Alias::new("latest"));
    let latest_rows = Query::select()
        .columns([Column::ProductId, Column::OfferSourceId])
        .expr_as(Expr::col(Column::RecordedAt).max(), "at")
        .from(price_history::Entity)
        .cond_where(up_to_from)
        .group_by_columns([Column::ProductId, Column::OfferSourceId])
        .to_owned();
    let before_query = Query::select()
        .columns(
            [Column::ProductId, Column::OfferSourceId, Column::Price, Column::RecordedAt]
                .map(|column| (h.clone(), column)),
        )
        .from_as(price_history::Entity, h.clone())
        .join_subquery(
            JoinType::InnerJoin,
            latest_rows,
            latest.clone(),
            Condition::all()
                .add(Expr::col((h.clone(), Column::ProductId)).equals((latest.clone(), Column::ProductId)))
                .add(Expr::col((h.clone(), Column::OfferSourceId)).equals((latest.clone(), Column::OfferSourceId)))
                .add(Expr::col((h.clone(), Column::RecordedAt)).equals((latest, Alias::new("at")))),
        )
        .order_by((h, Column::Id), sea_orm::Order::Asc)
        .to_owned();
    let before = db
        .query_all(&before_query)
        .await?
        .iter()
        .map(|row| HistoryRow::from_query_result(row, ""))
        .collect::<Result<Vec<_>, _>>()?;
    let mut during = price_history::Entity::find().filter(after_from);
    if let Some(to) = to {
        during = during.filter(Column::RecordedAt.lte(to));
    }
    let during = during
        .order_by_asc(Column::RecordedAt)
        .order_by_asc(Column::Id)
        .into_partial_model::<HistoryRow>()
        .all(db)
        .await?;
    Ok((before, during))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(offer: &str, price: Option<i64>, at: i64) -> HistoryRow {
        HistoryRow { product_id: 1, offer_source_id: offer.into(), price, recorded_at: at }
    }

    #[test]
    fn lowest_price_follows_changes_and_withdrawals() {
        let history = ProductHistory {
            from: 100,
            to: 1000,
            before: vec![row("a", Some(50), 10), row("b", Some(70), 20)],
            during: vec![
                row("a", Some(60), 200), // lowest 60
                row("b", Some(65), 200), // same moment: still 60
                row("a", None, 300),     // a withdrawn: lowest 65
                row("c", Some(65), 400), // new offer, same lowest: no point
                row("b", Some(40), 500),
            ],
        };
        assert_eq!(history.lowest_points(), vec![(100, 50), (200, 60), (300, 65), (500, 40)]);
        assert_eq!(history.offer_points("a"), vec![(100, 50), (200, 60)]);
        assert_eq!(history.offer_points("c"), vec![(400, 65)]);
        assert_eq!(history.offer_changes("b"), vec![(200, 65), (500, 40)]);
    }

    #[test]
    fn summary_computes_rise_and_fall() {
        let rise = summarize(&[(1, 200), (2, 150), (3, 250)]);
        assert_eq!(rise.first, Some(200));
        assert_eq!(rise.last, Some(250));
        assert_eq!(rise.min, Some(150));
        assert_eq!(rise.max, Some(250));
        assert_eq!(rise.change_percent, Some(25.0));
        assert_eq!(summarize(&[(1, 300), (2, 200)]).change_percent, Some(-33.33));
        assert_eq!(summarize(&[]).change_percent, None);
        assert_eq!(summarize(&[(1, 0), (2, 5)]).change_percent, None);
    }

    #[test]
    fn periods_are_checked() {
        assert!(Period::new(Some(10), Some(5), 100).is_err());
        assert!(Period::new(Some(0), Some(MAX_PERIOD_MS + 1), 0).is_err());
        // Without `to`, the span is counted to now.
        assert!(Period::new(Some(0), None, MAX_PERIOD_MS + 1).is_err());
        assert!(Period::new(Some(1), None, MAX_PERIOD_MS + 1).is_ok());
        assert!(Period::new(Some(10), None, 5).is_err());
        assert_eq!(
            Period::new(None, None, 0).unwrap().resolve(DEFAULT_PERIOD_MS * 2),
            (DEFAULT_PERIOD_MS, DEFAULT_PERIOD_MS * 2)
        );
    }
}
