//! Database connection for both backends, migrations, and the time convention.
//!
//! SQLite (embedded) and Postgres (cluster) run the same statements: the domains read and
//! write through their sea-orm entities and sea-query, which writes each backend's SQL.
//! The few raw statements left (each says why) use `$1` placeholders, which sqlx accepts
//! on both; they are short, because SQLite looks a `$N` up by name (bulk statements go
//! through sea-query, whose SQLite placeholders are positional `?`). On SQLite, a
//! transaction that will write must write first (e.g. a conditional `UPDATE`): a deferred
//! read-then-write transaction can fail with SQLITE_BUSY instead of waiting for the lock.

use std::{path::PathBuf, time::Duration};

use anyhow::Context as _;
use chrono::{DateTime, TimeZone as _, Utc};
use migration::{Migrator, MigratorTrait as _};
use sea_orm::{
    ConnectOptions, ConnectionTrait, Database, DatabaseConnection, DbBackend, Statement, Value,
    sqlx::sqlite::{SqliteJournalMode, SqliteSynchronous},
};

use crate::settings::parse_duration;

/// Any number; all nodes use it to serialize migrations on Postgres.
const MIGRATION_LOCK_KEY: i64 = 0x656d_706f_7269_756d; // "emporium"

/// The database section of the settings.
#[derive(Debug, Clone, clap::Args)]
pub struct DatabaseArgs {
    /// Postgres URL (`postgres://…`) or SQLite URL (`sqlite://…`). Unset: SQLite file `<DATA_DIR>/emporium.db`.
    #[arg(long, env = "DATABASE_URL")]
    pub database_url: Option<String>,
    /// Folder for embedded-mode state: the SQLite file and the local object store.
    #[arg(long, env = "DATA_DIR", default_value = "./data")]
    pub data_dir: PathBuf,
    /// Largest number of pooled database connections per node.
    #[arg(long, env = "DATABASE_MAX_CONNECTIONS", default_value_t = 16)]
    pub database_max_connections: u32,
    /// How long a request waits for a pooled connection before it fails with 503
    /// `UPSTREAM_UNAVAILABLE` (the pool is exhausted or the database unreachable).
    #[arg(long, env = "DATABASE_ACQUIRE_TIMEOUT", default_value = "3s", value_parser = parse_duration)]
    pub database_acquire_timeout: Duration,
}

impl DatabaseArgs {
    /// The URL to connect to, and whether it is the embedded default.
    pub fn resolved_url(&self) -> String {
        match &self.database_url {
            Some(url) => url.clone(),
            None => format!("sqlite://{}?mode=rwc", self.data_dir.join("emporium.db").display()),
        }
    }
}

/// Connects to the configured database, creating the SQLite file (and its folder) on first start.
pub async fn connect(args: &DatabaseArgs) -> anyhow::Result<DatabaseConnection> {
    let url = args.resolved_url();
    if args.database_url.is_none() {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create the data folder {}", args.data_dir.display()))?;
    }
    let mut options = ConnectOptions::new(url.clone());
    options
        .max_connections(args.database_max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(args.database_acquire_timeout)
        .sqlx_logging(false)
        // WAL lets readers work beside the single writer; the busy timeout (replaced once
        // connected by `retry_soon_when_busy`) makes writers queue instead of failing while
        // another connection holds the write lock. FULL syncs the log at each commit: an
        // upload answered 200 (its row, and a small one's body) survives a machine crash,
        // not only a crash of the node; uploads commit in groups, so that is one sync per
        // batch of them.
        .map_sqlx_sqlite_opts(|opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(SqliteSynchronous::Full)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
        })
        .map_sqlx_sqlite_pool_opts(|pool| {
            pool.after_connect(|connection, _| Box::pin(async move { retry_soon_when_busy(connection).await }))
        });
    Database::connect(options).await.with_context(|| format!("cannot connect to the database at {}", redact(&url)))
}

/// SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms between tries, so a writer that
/// finds the lock taken misses the short gaps between other writers' transactions and can
/// wait a tenth of a second behind a stream of them (the intake's store jobs behind its
/// submissions, bench/intake.sh). This handler tries again every 100 µs instead, for at
/// least the same 30 s.
async fn retry_soon_when_busy(connection: &mut sea_orm::sqlx::SqliteConnection) -> Result<(), sea_orm::sqlx::Error> {
    const PAUSE: Duration = Duration::from_micros(100);
    const TRIES: std::ffi::c_int = 300_000; // × at least 100 µs = 30 s
    extern "C" fn retry_soon(_: *mut std::ffi::c_void, tries: std::ffi::c_int) -> std::ffi::c_int {
        if tries >= TRIES {
            return 0;
        }
        std::thread::sleep(PAUSE);
        1
    }
    let mut handle = connection.lock_handle().await?;
    // SAFETY: the handle is a live connection, held locked for the call; the handler is a
    // plain function that touches no SQLite state and needs no argument.
    unsafe {
        libsqlite3_sys::sqlite3_busy_handler(handle.as_raw_handle().as_ptr(), Some(retry_soon), std::ptr::null_mut());
    }
    Ok(())
}

/// Applies pending migrations. On Postgres, nodes starting together take turns on an
/// advisory lock, so exactly one of them migrates and the others find nothing to do.
pub async fn migrate(args: &DatabaseArgs) -> anyhow::Result<()> {
    // Two processes on one SQLite file would race the migrator: take a file lock.
    let _file_lock = if args.resolved_url().starts_with("sqlite:") { Some(lock_data_dir(args)?) } else { None };
    let mut single = args.clone();
    single.database_max_connections = 1;
    let db = connect(&single).await?;
    let postgres = db.get_database_backend() == DbBackend::Postgres;
    if postgres {
        db.execute_raw(stmt(&db, "SELECT pg_advisory_lock($1)", [MIGRATION_LOCK_KEY.into()])).await?;
    }
    let result = Migrator::up(&db, None).await.context("database migration failed");
    if postgres {
        db.execute_raw(stmt(&db, "SELECT pg_advisory_unlock($1)", [MIGRATION_LOCK_KEY.into()])).await?;
    }
    db.close().await?;
    result
}

fn lock_data_dir(args: &DatabaseArgs) -> anyhow::Result<std::fs::File> {
    std::fs::create_dir_all(&args.data_dir)
        .with_context(|| format!("cannot create the data folder {}", args.data_dir.display()))?;
    let path = args.data_dir.join(".migrate.lock");
    let file = std::fs::File::create(&path).with_context(|| format!("cannot create {}", path.display()))?;
    file.lock().with_context(|| format!("cannot lock {}", path.display()))?;
    Ok(file)
}

/// A raw statement (`$N` placeholders) for whichever backend `db` is.
pub fn stmt(db: &impl ConnectionTrait, sql: &str, values: impl IntoIterator<Item = Value>) -> Statement {
    Statement::from_sql_and_values(db.get_database_backend(), sql, values)
}

/// `$n, $n+1, …` placeholders for `items` (an `IN (…)` list), numbered after the `values`
/// already bound, and the values with the items appended.
pub fn in_list<V: Clone + Into<Value>>(mut values: Vec<Value>, items: &[V]) -> (String, Vec<Value>) {
    let placeholders = items
        .iter()
        .map(|item| {
            values.push(item.clone().into());
            format!("${}", values.len())
        })
        .collect::<Vec<_>>()
        .join(", ");
    (placeholders, values)
}

/// Runs one raw write statement and returns how many rows it touched.
pub async fn execute(
    conn: &impl ConnectionTrait,
    sql: &str,
    values: impl IntoIterator<Item = Value>,
) -> Result<u64, sea_orm::DbErr> {
    Ok(conn.execute_raw(stmt(conn, sql, values)).await?.rows_affected())
}

/// Why the database cannot store `text`, if it cannot: Postgres refuses the NUL character
/// in text and jsonb (SQLite would take it). Every input that reaches the database is
/// checked with this, so both backends refuse the same text in the same words.
pub fn unstorable_text(text: &str) -> Option<&'static str> {
    text.contains('\0').then_some("must not contain NUL (\\u0000)")
}

/// Now, in the storage convention: milliseconds since the Unix epoch.
pub fn now_ms() -> i64 {
    Utc::now().timestamp_millis()
}

/// A stored timestamp as a UTC date-time (for the API).
pub fn to_datetime(ms: i64) -> DateTime<Utc> {
    Utc.timestamp_millis_opt(ms).single().unwrap_or_default()
}

pub fn duration_ms(duration: Duration) -> i64 {
    i64::try_from(duration.as_millis()).unwrap_or(i64::MAX)
}

/// The URL without its password, for error messages and logs.
pub fn redact(url: &str) -> String {
    match url::Url::parse(url) {
        Ok(mut parsed) if parsed.password().is_some() => {
            let _ = parsed.set_password(Some("***"));
            parsed.to_string()
        }
        _ => url.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn in_lists_are_numbered_after_the_values_already_bound() {
        let (list, values) = in_list(vec![0i64.into()], &[1i64, 2]);
        assert_eq!(list, "$2, $3");
        let expected: Vec<Value> = vec![0i64.into(), 1i64.into(), 2i64.into()];
        assert_eq!(values, expected);
    }
}
