//! Relay cursor connections shared by every list: keyset pagination in both directions
//! over an ordering `(sort column, id)`, so a cursor stays valid when rows are inserted
//! or deleted around it.
//!
//! Each domain declares its order fields and the column each sorts by; this module turns
//! a page request (`first`/`after`, `last`/`before`, an ordering) into the statements
//! that fetch it and the connection that answers it. The rules, the cursor format and
//! the indexes are in docs/paging.md.
//!
//! Nulls sort last in both directions. A nullable ordering is walked as two segments, the
//! rows with a value (ordered by `(value, id)`) and then the rows without (ordered by
//! `id`), each fetched by a statement an index `(column, id)` serves in either direction;
//! a single `ORDER BY … NULLS LAST` could not use that index when descending on Postgres.

use std::future::Future;

use async_graphql::{
    Enum, Object, OutputType,
    connection::{Connection, Edge},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::BoxFuture;
use sea_orm::{
    ColumnTrait, Condition, DbErr, EntityTrait, Order, QueryFilter as _, QueryOrder as _, QuerySelect as _, Select,
    Value,
    sea_query::{Expr, ExprTrait as _},
};

use crate::error::{AppError, AppResult};

pub const DEFAULT_PAGE: usize = 20;

/// The paging section of the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PagingConfig {
    /// Largest page a connection returns (`first` or `last` above it is refused).
    #[arg(long, env = "PAGE_MAX", default_value_t = 100)]
    pub page_max: usize,
}

/// The direction of an `orderBy`.
#[derive(Enum, Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub enum OrderDirection {
    /// Ascending: smallest first (A to Z, oldest first, cheapest first). Items without a
    /// value for the field come last.
    #[default]
    Asc,
    /// Descending: largest first (Z to A, newest first, dearest first). Items without a
    /// value for the field come last here too.
    Desc,
}

impl OrderDirection {
    fn reversed(self) -> Self {
        match self {
            Self::Asc => Self::Desc,
            Self::Desc => Self::Asc,
        }
    }

    fn as_str(self) -> &'static str {
        match self {
            Self::Asc => "ASC",
            Self::Desc => "DESC",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        match text {
            "ASC" => Some(Self::Asc),
            "DESC" => Some(Self::Desc),
            _ => None,
        }
    }

    fn order(self) -> Order {
        match self {
            Self::Asc => Order::Asc,
            Self::Desc => Order::Desc,
        }
    }
}

/// What the sort column of an ordering holds, so a cursor's key can be read back.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum KeyKind {
    /// The ordering is the id's own: the cursor carries the id alone.
    Id,
    Int,
    /// An integer that may be null (nulls last).
    NullableInt,
    Text,
}

/// One ordering of a list: the field as the API spells it, and its direction.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Ordering {
    pub field: &'static str,
    pub direction: OrderDirection,
    pub key: KeyKind,
}

impl Ordering {
    pub fn new(field: &'static str, direction: OrderDirection, key: KeyKind) -> Self {
        Self { field, direction, key }
    }

    fn describe(field: &str, direction: &str) -> String {
        format!("{{field: {field}, direction: {direction}}}")
    }
}

/// A row's value of the sort column, as a cursor carries it.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum SortKey {
    /// The ordering is by id: nothing besides the id.
    Id,
    Null,
    Int(i64),
    Text(String),
}

impl SortKey {
    fn encode(&self) -> String {
        match self {
            Self::Id => String::new(),
            Self::Null => "n".into(),
            Self::Int(value) => format!("i{value}"),
            Self::Text(value) => format!("s{value}"),
        }
    }

    /// Reads a key back, accepting only what `kind` can hold.
    fn decode(text: &str, kind: KeyKind) -> Option<Self> {
        match (kind, text.split_at_checked(1)) {
            (KeyKind::Id, _) if text.is_empty() => Some(Self::Id),
            (KeyKind::NullableInt, Some(("n", ""))) => Some(Self::Null),
            (KeyKind::Int | KeyKind::NullableInt, Some(("i", digits))) => digits.parse().ok().map(Self::Int),
            // Only text the database can compare.
            (KeyKind::Text, Some(("s", value))) if crate::db::unstorable_text(value).is_none() => {
                Some(Self::Text(value.to_string()))
            }
            _ => None,
        }
    }

    fn value(&self) -> Option<Value> {
        match self {
            Self::Id | Self::Null => None,
            Self::Int(value) => Some((*value).into()),
            Self::Text(value) => Some(value.clone().into()),
        }
    }
}

/// Where a row stands in an ordering: its sort key and its id (the tie-breaker).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Cursor {
    pub key: SortKey,
    pub id: i64,
}

impl Cursor {
    pub fn new(key: SortKey, id: i64) -> Self {
        Self { key, id }
    }

    /// A row of an ordering by id.
    pub fn by_id(id: i64) -> Self {
        Self { key: SortKey::Id, id }
    }
}

/// The opaque cursor text: base64url of `FIELD:DIRECTION:id:key`.
pub fn encode_cursor(ordering: &Ordering, cursor: &Cursor) -> String {
    let text = format!("{}:{}:{}:{}", ordering.field, ordering.direction.as_str(), cursor.id, cursor.key.encode());
    URL_SAFE_NO_PAD.encode(text)
}

/// Decodes a cursor for `ordering`; a malformed one, or one made for another ordering, is
/// BAD_USER_INPUT (the latter naming the ordering it was made for).
pub fn decode_cursor(text: &str, ordering: &Ordering) -> AppResult<Cursor> {
    let malformed = || AppError::bad_input(format!("`{text}` is not a valid cursor"));
    let decoded =
        URL_SAFE_NO_PAD.decode(text).ok().and_then(|bytes| String::from_utf8(bytes).ok()).ok_or_else(malformed)?;
    // The key comes last: a text key may itself hold ':'.
    let mut parts = decoded.splitn(4, ':');
    let (Some(field), Some(direction), Some(id), Some(key)) = (parts.next(), parts.next(), parts.next(), parts.next())
    else {
        return Err(malformed());
    };
    if OrderDirection::parse(direction).is_none() || !field.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
        return Err(malformed());
    }
    if field != ordering.field || direction != ordering.direction.as_str() {
        return Err(AppError::bad_input(format!(
            "cursor `{text}` was made for orderBy {}, not {}: start again without `after`/`before` to change the ordering",
            Ordering::describe(field, direction),
            Ordering::describe(ordering.field, ordering.direction.as_str()),
        )));
    }
    let id = id.parse::<i64>().map_err(|_| malformed())?;
    let key = SortKey::decode(key, ordering.key).ok_or_else(malformed)?;
    Ok(Cursor { key, id })
}

/// The paging arguments of a connection field, as the client gave them.
#[derive(Debug, Clone, Default)]
pub struct PageArgs {
    pub first: Option<i32>,
    pub after: Option<String>,
    pub last: Option<i32>,
    pub before: Option<String>,
}

/// A validated page request: up to `size` rows of `ordering` between the cursors,
/// taken from the start (`first`) or from the end (`last`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Page {
    pub size: usize,
    /// `last`: the page ends at `before` (or at the end of the list).
    pub backward: bool,
    pub ordering: Ordering,
    pub after: Option<Cursor>,
    pub before: Option<Cursor>,
}

impl Page {
    /// Validates the sizes against the page cap and decodes the cursors for `ordering`.
    pub fn new(args: PageArgs, max: usize, ordering: Ordering) -> AppResult<Self> {
        if args.first.is_some() && args.last.is_some() {
            return Err(AppError::bad_input(
                "`first` and `last` cannot be used together: page forward with `first`/`after`, or backward with \
                 `last`/`before`",
            ));
        }
        let backward = args.last.is_some() || (args.first.is_none() && args.before.is_some());
        let size = match (args.first, args.last) {
            (Some(first), _) => valid_size(first, "first", max)?,
            (_, Some(last)) => valid_size(last, "last", max)?,
            (None, None) => DEFAULT_PAGE.min(max),
        };
        let decode = |cursor: Option<String>| cursor.map(|text| decode_cursor(&text, &ordering)).transpose();
        Ok(Self { size, backward, ordering, after: decode(args.after)?, before: decode(args.before)? })
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> u64 {
        self.size as u64 + 1
    }

    /// The statements that fetch the page from `select` (a list's filter), in the order
    /// they are to run, without their limit: one, or two for a nullable ordering (rows
    /// with a value, rows without). `sort` is the ordering's column (`None`: by id).
    pub fn statements<E: EntityTrait>(
        &self,
        select: Select<E>,
        sort: Option<E::Column>,
        id: E::Column,
    ) -> Vec<Select<E>> {
        let direction = self.ordering.direction;
        // The direction the statements read in: backward pages read from their end.
        let scan = if self.backward { direction.reversed() } else { direction };
        let column = match sort {
            Some(column) if self.ordering.key != KeyKind::Id => column,
            _ => {
                let mut select = select;
                if let Some(after) = &self.after {
                    select = select.filter(id_beyond(id, after.id, direction));
                }
                if let Some(before) = &self.before {
                    select = select.filter(id_beyond(id, before.id, direction.reversed()));
                }
                return vec![select.order_by(id, scan.order())];
            }
        };
        let nullable = self.ordering.key == KeyKind::NullableInt;
        let mut valued = Some(if nullable { select.clone().filter(column.is_not_null()) } else { select.clone() });
        let mut nulls = nullable.then(|| select.filter(column.is_null()));
        if let Some(after) = &self.after {
            match after.key.value() {
                // After a null: past every value, among the nulls by id.
                None => {
                    valued = None;
                    nulls = nulls.map(|select| select.filter(id_beyond(id, after.id, direction)));
                }
                Some(key) => valued = valued.map(|select| select.filter(beyond(column, key, id, after.id, direction))),
            }
        }
        if let Some(before) = &self.before {
            match before.key.value() {
                None => nulls = nulls.map(|select| select.filter(id_beyond(id, before.id, direction.reversed()))),
                Some(key) => {
                    nulls = None;
                    valued =
                        valued.map(|select| select.filter(beyond(column, key, id, before.id, direction.reversed())));
                }
            }
        }
        // Without NULLS FIRST/LAST: the nulls are filtered out, and the default keeps the
        // order the index `(column, id)` is read in, forward or backward, on both backends.
        let valued = valued.map(|select| select.order_by(column, scan.order()).order_by(id, scan.order()));
        let nulls = nulls.map(|select| select.order_by(id, scan.order()));
        let mut statements: Vec<Select<E>> = [valued, nulls].into_iter().flatten().collect();
        if self.backward {
            statements.reverse();
        }
        statements
    }

    /// Fetches the page's rows (up to `fetch_limit`, in reading order) by running
    /// [`Self::statements`] with `run` until the limit is reached.
    pub async fn fetch<E, M, F, Fut>(
        &self,
        select: Select<E>,
        sort: Option<E::Column>,
        id: E::Column,
        mut run: F,
    ) -> AppResult<Vec<M>>
    where
        E: EntityTrait,
        F: FnMut(Select<E>) -> Fut,
        Fut: Future<Output = Result<Vec<M>, DbErr>>,
    {
        let limit = self.fetch_limit();
        let mut rows = Vec::new();
        for statement in self.statements(select, sort, id) {
            let remaining = limit.saturating_sub(rows.len() as u64);
            if remaining == 0 {
                break;
            }
            rows.extend(run(statement.limit(remaining)).await?);
        }
        Ok(rows)
    }

    /// Sorts rows of this page into reading order (for rows that came back in no
    /// particular order, as from a `UNION ALL`). Exact for integer keys only: text
    /// follows the database's collation, which Rust does not know.
    pub fn sort_in_reading_order<T>(&self, rows: &mut [T], cursor_of: impl Fn(&T) -> Cursor) {
        let scan = if self.backward { self.ordering.direction.reversed() } else { self.ordering.direction };
        rows.sort_by(|a, b| {
            let (a, b) = (cursor_of(a), cursor_of(b));
            let rank = |key: &SortKey| match key {
                SortKey::Int(value) => (0, *value),
                SortKey::Id | SortKey::Text(_) => (0, 0),
                SortKey::Null => (1, 0),
            };
            // Nulls last in the list's direction: first when reading backward.
            let nulls = rank(&a.key).0.cmp(&rank(&b.key).0);
            let nulls = if self.backward { nulls.reverse() } else { nulls };
            let values = (rank(&a.key).1, a.id).cmp(&(rank(&b.key).1, b.id));
            nulls.then(if scan == OrderDirection::Desc { values.reverse() } else { values })
        });
    }
}

fn valid_size(size: i32, name: &str, max: usize) -> AppResult<usize> {
    if size < 0 {
        return Err(AppError::bad_input(format!("`{name}` must not be negative")));
    }
    let size = usize::try_from(size).unwrap_or(usize::MAX);
    if size > max {
        return Err(AppError::bad_input(format!("`{name}` must be at most {max}")));
    }
    Ok(size)
}

/// Ids past `id` in `direction`.
fn id_beyond<C: ColumnTrait>(column: C, id: i64, direction: OrderDirection) -> Condition {
    let condition = Condition::all();
    match direction {
        OrderDirection::Asc => condition.add(column.gt(id)),
        OrderDirection::Desc => condition.add(column.lt(id)),
    }
}

/// Rows past `(key, id)` in `direction`, as the row comparison `(column, id) > (key, id)`
/// (`<` for DESC): both backends take it as the start of a range scan of the index
/// `(column, id)`, right at the cursor, however many rows share its key (a spelled-out
/// `column > key OR (column = key AND id > id)` would not bound the scan).
fn beyond<C: ColumnTrait>(column: C, key: Value, id: C, after_id: i64, direction: OrderDirection) -> Condition {
    let row = Expr::tuple([column.into_expr(), id.into_expr()]);
    let cursor = Expr::tuple([Expr::val(key), Expr::val(after_id)]);
    let beyond = match direction {
        OrderDirection::Asc => row.gt(cursor),
        OrderDirection::Desc => row.lt(cursor),
    };
    Condition::all().add(beyond)
}

type CountFn = Box<dyn FnOnce() -> BoxFuture<'static, AppResult<i64>> + Send + Sync>;

/// `totalCount`, computed only when the client asks for it.
pub struct Totals {
    count: std::sync::Mutex<Option<CountFn>>,
}

impl Totals {
    pub fn new<F, Fut>(count: F) -> Self
    where
        F: FnOnce() -> Fut + Send + Sync + 'static,
        Fut: std::future::Future<Output = AppResult<i64>> + Send + 'static,
    {
        Self { count: std::sync::Mutex::new(Some(Box::new(move || Box::pin(count())))) }
    }
}

#[Object]
impl Totals {
    /// Number of items matching the filter, across all pages.
    async fn total_count(&self) -> async_graphql::Result<i64> {
        let count = self.count.lock().map_err(|_| AppError::Internal(anyhow::anyhow!("poisoned")))?.take();
        match count {
            Some(count) => Ok(count().await?),
            None => Err(AppError::Internal(anyhow::anyhow!("totalCount resolved twice")).into()),
        }
    }
}

pub type Paged<T> = Connection<String, T, Totals>;

/// Builds the connection from rows fetched with [`Page::fetch`] (in reading order, up to
/// `fetch_limit`). The extra row tells whether more follow in the reading direction; the
/// other side has more when the client gave a cursor there (Relay's spec lets a server
/// answer that without a query).
pub fn connection<T: OutputType>(
    mut rows: Vec<T>,
    page: &Page,
    cursor_of: impl Fn(&T) -> Cursor,
    totals: Totals,
) -> Paged<T> {
    let more = rows.len() > page.size;
    rows.truncate(page.size);
    if page.backward {
        rows.reverse();
    }
    let (has_previous, has_next) =
        if page.backward { (more, page.before.is_some()) } else { (page.after.is_some(), more) };
    let mut connection = Connection::with_additional_fields(has_previous, has_next, totals);
    connection
        .edges
        .extend(rows.into_iter().map(|row| Edge::new(encode_cursor(&page.ordering, &cursor_of(&row)), row)));
    connection
}

#[cfg(test)]
mod tests {
    use super::*;

    const BY_PRICE: Ordering = Ordering { field: "PRICE", direction: OrderDirection::Desc, key: KeyKind::NullableInt };
    const BY_NAME: Ordering = Ordering { field: "NAME", direction: OrderDirection::Asc, key: KeyKind::Text };

    #[test]
    fn cursors_round_trip_and_garbage_is_bad_input() {
        for (ordering, cursor) in [
            (BY_PRICE, Cursor::new(SortKey::Int(-5), 42)),
            (BY_PRICE, Cursor::new(SortKey::Null, 7)),
            (BY_NAME, Cursor::new(SortKey::Text("a:b c".into()), 3)),
        ] {
            assert_eq!(decode_cursor(&encode_cursor(&ordering, &cursor), &ordering).ok(), Some(cursor));
        }
        assert!(matches!(decode_cursor("nope", &BY_NAME), Err(AppError::BadInput(_))));
        let wrong_kind = encode_cursor(&BY_NAME, &Cursor::new(SortKey::Null, 1));
        assert!(matches!(decode_cursor(&wrong_kind, &BY_NAME), Err(AppError::BadInput(_))));
    }

    #[test]
    fn a_cursor_of_another_ordering_names_it() {
        let cursor = encode_cursor(&BY_NAME, &Cursor::new(SortKey::Text("x".into()), 1));
        let descending = Ordering { direction: OrderDirection::Desc, ..BY_NAME };
        match decode_cursor(&cursor, &descending) {
            Err(AppError::BadInput(message)) => assert!(message.contains("{field: NAME, direction: ASC}"), "{message}"),
            other => panic!("expected BAD_USER_INPUT, got {other:?}"),
        }
    }

    #[test]
    fn page_size_is_capped_both_ways_and_first_with_last_is_refused() {
        let args = |first, last| PageArgs { first, last, ..Default::default() };
        assert!(Page::new(args(Some(101), None), 100, BY_NAME).is_err());
        assert!(Page::new(args(None, Some(101)), 100, BY_NAME).is_err());
        assert!(Page::new(args(Some(-1), None), 100, BY_NAME).is_err());
        assert!(Page::new(args(Some(1), Some(1)), 100, BY_NAME).is_err());
        assert_eq!(Page::new(args(None, None), 100, BY_NAME).map(|p| p.size).ok(), Some(DEFAULT_PAGE));
        assert_eq!(Page::new(args(None, Some(5)), 100, BY_NAME).map(|p| p.backward).ok(), Some(true));
    }
}
