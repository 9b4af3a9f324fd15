//! The one error type of the service boundary, mapped once to an HTTP status and a
//! GraphQL `extensions.code`.
//!
//! `AppError` deliberately does not implement `Display`: async-graphql converts every
//! `Display` type into a bare error, which would drop our code. Without it, our own
//! `From<AppError> for async_graphql::Error` applies and `?` keeps the code.

use axum::{
    Json,
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use serde_json::json;

pub type AppResult<T> = Result<T, AppError>;

#[derive(Debug)]
pub enum AppError {
    /// The request is wrong; the message tells the caller what to fix.
    BadInput(String),
    NotFound(String),
    Conflict(String),
    Unauthenticated,
    /// Refused on purpose (a repeated upload); `retry_after` says when it will be accepted.
    Forbidden {
        message: String,
        retry_after: Option<u64>,
    },
    PayloadTooLarge(String),
    /// A dependency (Redis, the offers service, this node's capacity) cannot serve now.
    Unavailable {
        message: String,
        retry_after: Option<u64>,
    },
    /// Our fault; details go to the log, not to the caller.
    Internal(anyhow::Error),
}

impl AppError {
    pub fn bad_input(message: impl Into<String>) -> Self {
        Self::BadInput(message.into())
    }

    pub fn not_found(message: impl Into<String>) -> Self {
        Self::NotFound(message.into())
    }

    pub fn conflict(message: impl Into<String>) -> Self {
        Self::Conflict(message.into())
    }

    /// Our fault (a broken invariant, an unexpected failure): logged, shown as `INTERNAL`.
    /// An error whose cause is an unreachable database keeps that class (503), however it
    /// got here: through `anyhow` the class would otherwise be lost.
    pub fn internal(error: impl Into<anyhow::Error>) -> Self {
        let error = error.into();
        match error.chain().find_map(|cause| cause.downcast_ref::<sea_orm::DbErr>()) {
            Some(db) if database_unavailable(db) => Self::database_unavailable(db),
            _ => Self::Internal(error),
        }
    }

    pub fn unavailable(message: impl Into<String>, retry_after: Option<u64>) -> Self {
        Self::Unavailable { message: message.into(), retry_after }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Self::BadInput(_) => StatusCode::BAD_REQUEST,
            Self::NotFound(_) => StatusCode::NOT_FOUND,
            Self::Conflict(_) => StatusCode::CONFLICT,
            Self::Unauthenticated => StatusCode::UNAUTHORIZED,
            Self::Forbidden { .. } => StatusCode::FORBIDDEN,
            Self::PayloadTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            Self::Unavailable { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Self::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The GraphQL `extensions.code` (and the `code` of REST error bodies).
    pub fn code(&self) -> &'static str {
        match self {
            Self::BadInput(_) | Self::PayloadTooLarge(_) => "BAD_USER_INPUT",
            Self::NotFound(_) => "NOT_FOUND",
            Self::Conflict(_) => "CONFLICT",
            Self::Unauthenticated => "UNAUTHENTICATED",
            Self::Forbidden { .. } => "FORBIDDEN",
            Self::Unavailable { .. } => "UPSTREAM_UNAVAILABLE",
            Self::Internal(_) => "INTERNAL",
        }
    }

    pub fn message(&self) -> String {
        match self {
            Self::BadInput(m) | Self::NotFound(m) | Self::Conflict(m) | Self::PayloadTooLarge(m) => m.clone(),
            Self::Forbidden { message, .. } | Self::Unavailable { message, .. } => message.clone(),
            Self::Unauthenticated => "a valid `Authorization: Bearer <token>` header is required for writes".into(),
            Self::Internal(_) => "internal error; see the server log".into(),
        }
    }

    fn retry_after(&self) -> Option<u64> {
        match self {
            Self::Forbidden { retry_after, .. } | Self::Unavailable { retry_after, .. } => *retry_after,
            _ => None,
        }
    }

    fn log(&self) {
        if let Self::Internal(error) = self {
            tracing::error!(error = format!("{error:#}"), "internal error");
        }
    }
}

/// A database error: 503 when the database cannot serve now (see [`database_unavailable`]:
/// the request may succeed later), otherwise internal. Unique violations the caller
/// expects are mapped first, by constraint ([`conflict_on_unique`]).
impl From<sea_orm::DbErr> for AppError {
    fn from(error: sea_orm::DbErr) -> Self {
        if database_unavailable(&error) {
            return Self::database_unavailable(&error);
        }
        Self::Internal(error.into())
    }
}

/// The same for an error shared between waiters (a DataLoader's batch).
impl From<std::sync::Arc<sea_orm::DbErr>> for AppError {
    fn from(error: std::sync::Arc<sea_orm::DbErr>) -> Self {
        match std::sync::Arc::try_unwrap(error) {
            Ok(error) => error.into(),
            Err(shared) if database_unavailable(&shared) => Self::database_unavailable(&shared),
            Err(shared) => Self::Internal(anyhow::anyhow!("{shared}")),
        }
    }
}

impl AppError {
    fn database_unavailable(error: &sea_orm::DbErr) -> Self {
        tracing::warn!(error = %error, "database unavailable");
        Self::unavailable("the database is busy or unreachable; retry shortly", Some(DATABASE_RETRY_AFTER))
    }

    /// A copy of an error that several callers wait for (one DataLoader batch, one group
    /// commit of uploads): same class, code and message; an internal error's cause is kept
    /// as text.
    pub fn duplicate(&self) -> Self {
        match self {
            Self::BadInput(m) => Self::BadInput(m.clone()),
            Self::NotFound(m) => Self::NotFound(m.clone()),
            Self::Conflict(m) => Self::Conflict(m.clone()),
            Self::Unauthenticated => Self::Unauthenticated,
            Self::Forbidden { message, retry_after } => {
                Self::Forbidden { message: message.clone(), retry_after: *retry_after }
            }
            Self::PayloadTooLarge(m) => Self::PayloadTooLarge(m.clone()),
            Self::Unavailable { message, retry_after } => {
                Self::Unavailable { message: message.clone(), retry_after: *retry_after }
            }
            Self::Internal(error) => Self::Internal(anyhow::anyhow!("{error:#}")),
        }
    }
}

/// Whether `error` says the database cannot serve now rather than that a statement is
/// wrong: no pooled connection in time, a connection that could not be made or broke
/// mid-statement (the server died or restarted under it), or Postgres refusing work
/// while it shuts down, starts up or has no connection slot left.
pub fn database_unavailable(error: &sea_orm::DbErr) -> bool {
    use sea_orm::{DbErr, RuntimeErr};
    match error {
        DbErr::ConnectionAcquire(_) | DbErr::Conn(_) => true,
        DbErr::Exec(RuntimeErr::SqlxError(error)) | DbErr::Query(RuntimeErr::SqlxError(error)) => {
            sqlx_unavailable(error)
        }
        _ => false,
    }
}

fn sqlx_unavailable(error: &sea_orm::sqlx::Error) -> bool {
    use sea_orm::sqlx::{Error, postgres::PgDatabaseError};
    match error {
        Error::Io(_) | Error::Tls(_) | Error::Protocol(_) | Error::PoolTimedOut | Error::PoolClosed => true,
        // SQLSTATE class 08: connection exception; 57P01..03: admin shutdown, crash
        // shutdown, cannot connect now (starting up); 53300: too many connections.
        Error::Database(error) => error.try_downcast_ref::<PgDatabaseError>().is_some_and(|error| {
            let code = error.code();
            code.starts_with("08") || matches!(code, "57P01" | "57P02" | "57P03" | "53300")
        }),
        _ => false,
    }
}

/// Seconds a client should wait after the database could not be reached.
const DATABASE_RETRY_AFTER: u64 = 2;

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        self.log();
        let body = json!({ "error": { "code": self.code(), "message": self.message() } });
        let mut response = (self.status(), Json(body)).into_response();
        if let Some(seconds) = self.retry_after() {
            response.headers_mut().insert(header::RETRY_AFTER, HeaderValue::from(seconds));
        }
        if matches!(self, Self::Unauthenticated) {
            response.headers_mut().insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        response
    }
}

impl From<AppError> for async_graphql::Error {
    fn from(error: AppError) -> Self {
        error.log();
        let mut gql = async_graphql::Error::new(error.message());
        gql = gql.extend_with(|_, ext| {
            ext.set("code", error.code());
            if let Some(seconds) = error.retry_after() {
                ext.set("retryAfter", seconds);
            }
        });
        gql
    }
}

use async_graphql::ErrorExtensions as _;

/// A unique key of the schema, as each backend names it when it is violated: Postgres by
/// the constraint or unique index, SQLite by the `table.column` it covers.
#[derive(Debug, Clone, Copy)]
pub struct UniqueKey {
    pub constraint: &'static str,
    pub column: &'static str,
}

impl UniqueKey {
    fn violated_in(&self, detail: &str) -> bool {
        detail.contains(&format!("\"{}\"", self.constraint)) || detail.ends_with(self.column)
    }
}

/// A violation of `key` becomes `CONFLICT` with the caller's wording; any other error
/// (another constraint included) is mapped as every database error is.
pub fn conflict_on_unique(error: sea_orm::DbErr, key: UniqueKey, message: impl FnOnce() -> String) -> AppError {
    match error.sql_err() {
        Some(sea_orm::SqlErr::UniqueConstraintViolation(detail)) if key.violated_in(&detail) => {
            AppError::Conflict(message())
        }
        _ => error.into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SKU: UniqueKey = UniqueKey { constraint: "products_sku_key", column: "products.sku" };

    #[test]
    fn an_unreachable_database_is_unavailable_however_it_arrives() {
        use sea_orm::{ConnAcquireErr, DbErr, RuntimeErr, sqlx};
        use std::sync::Arc;
        let broken = || {
            let eof = std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "expected to read 5 bytes, got 0");
            DbErr::Query(RuntimeErr::SqlxError(Arc::new(sqlx::Error::Io(eof))))
        };
        assert!(database_unavailable(&DbErr::ConnectionAcquire(ConnAcquireErr::Timeout)));
        assert!(database_unavailable(&broken()), "a connection that broke mid-statement");
        let timed_out = DbErr::Exec(RuntimeErr::SqlxError(Arc::new(sqlx::Error::PoolTimedOut)));
        assert!(database_unavailable(&timed_out));
        let missing = DbErr::Query(RuntimeErr::SqlxError(Arc::new(sqlx::Error::RowNotFound)));
        assert!(!database_unavailable(&missing));
        assert!(!database_unavailable(&DbErr::Custom("a bug".into())));

        assert_eq!(AppError::from(broken()).code(), "UPSTREAM_UNAVAILABLE");
        assert_eq!(AppError::from(broken()).status(), StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(AppError::from(broken()).retry_after(), Some(DATABASE_RETRY_AFTER));
        let through_anyhow = anyhow::Error::from(broken()).context("loading the page");
        assert_eq!(AppError::internal(through_anyhow).code(), "UPSTREAM_UNAVAILABLE");
        assert_eq!(AppError::internal(anyhow::anyhow!("a bug")).code(), "INTERNAL");
        let shared = Arc::new(broken());
        let _other_waiter = shared.clone();
        assert_eq!(AppError::from(shared).code(), "UPSTREAM_UNAVAILABLE", "a DataLoader batch's error");
        assert_eq!(AppError::from(broken()).duplicate().code(), "UPSTREAM_UNAVAILABLE");
    }

    #[test]
    fn unique_keys_are_recognised_by_name_on_both_backends() {
        assert!(SKU.violated_in(r#"duplicate key value violates unique constraint "products_sku_key""#));
        assert!(SKU.violated_in("UNIQUE constraint failed: products.sku"));
        assert!(!SKU.violated_in(r#"duplicate key value violates unique constraint "products_sku_key_2""#));
        assert!(!SKU.violated_in("UNIQUE constraint failed: offers.product_id, offers.source_id"));
    }
}
