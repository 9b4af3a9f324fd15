//! Relay cursor connections shared by every list: keyset pagination on the id, so a
//! cursor stays valid when rows are inserted or deleted around it.

use async_graphql::{
    Object, OutputType,
    connection::{Connection, Edge},
};
use base64::{Engine as _, engine::general_purpose::URL_SAFE_NO_PAD};
use futures::future::BoxFuture;

use crate::error::{AppError, AppResult};

pub const DEFAULT_PAGE: usize = 20;

/// The paging section of the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct PagingConfig {
    /// Largest page a connection returns (`first` above it is refused).
    #[arg(long, env = "PAGE_MAX", default_value_t = 100)]
    pub page_max: usize,
}

/// A validated page request: up to `first` rows with id greater than `after`.
#[derive(Debug, Clone, Copy)]
pub struct Page {
    pub first: usize,
    pub after: Option<i64>,
}

impl Page {
    /// Validates `first` against the page cap and decodes `after`.
    pub fn new(first: Option<i32>, after: Option<String>, max: usize) -> AppResult<Self> {
        let first = match first {
            None => DEFAULT_PAGE.min(max),
            Some(n) if n < 0 => return Err(AppError::bad_input("`first` must not be negative")),
            Some(n) => {
                let n = usize::try_from(n).unwrap_or(usize::MAX);
                if n > max {
                    return Err(AppError::bad_input(format!("`first` must be at most {max}")));
                }
                n
            }
        };
        let after = after.as_deref().map(decode_cursor).transpose()?;
        Ok(Self { first, after })
    }

    /// Rows to fetch: one more than the page, to learn whether another page follows.
    pub fn fetch_limit(&self) -> u64 {
        self.first as u64 + 1
    }
}

pub fn encode_cursor(id: i64) -> String {
    URL_SAFE_NO_PAD.encode(format!("id:{id}"))
}

pub fn decode_cursor(cursor: &str) -> AppResult<i64> {
    URL_SAFE_NO_PAD
        .decode(cursor)
        .ok()
        .and_then(|bytes| String::from_utf8(bytes).ok())
        .and_then(|text| text.strip_prefix("id:").and_then(|id| id.parse().ok()))
        .ok_or_else(|| AppError::bad_input(format!("`{cursor}` is not a valid cursor")))
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

/// Builds the connection from rows fetched with `page.fetch_limit()`, ordered by id.
pub fn connection<T: OutputType>(mut rows: Vec<T>, page: Page, id_of: impl Fn(&T) -> i64, totals: Totals) -> Paged<T> {
    let has_next = rows.len() > page.first;
    rows.truncate(page.first);
    let mut connection = Connection::with_additional_fields(page.after.is_some(), has_next, totals);
    connection.edges.extend(rows.into_iter().map(|row| Edge::new(encode_cursor(id_of(&row)), row)));
    connection
}

/// Parses a GraphQL `ID` as one of our numeric ids.
pub fn parse_id(id: &async_graphql::ID, what: &str) -> AppResult<i64> {
    id.parse::<i64>()
        .ok()
        .filter(|id| *id > 0)
        .ok_or_else(|| AppError::bad_input(format!("`{}` is not a valid {what} id", id.as_str())))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cursors_round_trip_and_garbage_is_bad_input() {
        assert_eq!(decode_cursor(&encode_cursor(42)).ok(), Some(42));
        assert!(matches!(decode_cursor("nope"), Err(AppError::BadInput(_))));
    }

    #[test]
    fn page_size_is_capped() {
        assert!(Page::new(Some(101), None, 100).is_err());
        assert!(Page::new(Some(-1), None, 100).is_err());
        assert_eq!(Page::new(None, None, 100).map(|p| p.first).ok(), Some(DEFAULT_PAGE));
    }
}
