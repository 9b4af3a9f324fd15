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
    connect_with(args, args.database_max_connections, SqliteSynchronous::Normal).await
}

/// The connection for writes whose answer promises durability (an accepted upload, an
/// intake submission): on SQLite a small pool of its own whose commits sync the log, so
/// they survive a machine crash, not only a crash of the node; on Postgres `db` itself
/// (every commit is synced there). The main pool's SQLite connections sync only at
/// checkpoints: in WAL mode a commit of the durable pool syncs every commit before it
/// too, and a job's progress lost to a machine crash is done again.
pub async fn connect_durable(args: &DatabaseArgs, db: &DatabaseConnection) -> anyhow::Result<DatabaseConnection> {
    if db.get_database_backend() != DbBackend::Sqlite {
        return Ok(db.clone());
    }
    connect_with(args, args.database_max_connections.min(DURABLE_SQLITE_CONNECTIONS), SqliteSynchronous::Full).await
}

/// Enough for the upload committer and a few intake submissions at once: SQLite takes one
/// writer at a time anyway.
const DURABLE_SQLITE_CONNECTIONS: u32 = 4;
/// SQLite's memory for all its connections (mostly page caches) beyond which it recycles
/// cached pages instead of allocating: the node's memory returns near its idle size after
/// a large ingestion (bench/RESULTS.md). The OS caches the file's pages anyway.
const SQLITE_SOFT_HEAP_LIMIT: &str = "16777216";
/// Idle SQLite connections (and their caches) closed after this.
const SQLITE_IDLE_TIMEOUT: Duration = Duration::from_secs(30);

async fn connect_with(
    args: &DatabaseArgs,
    max_connections: u32,
    synchronous: SqliteSynchronous,
) -> anyhow::Result<DatabaseConnection> {
    let url = args.resolved_url();
    if args.database_url.is_none() {
        std::fs::create_dir_all(&args.data_dir)
            .with_context(|| format!("cannot create the data folder {}", args.data_dir.display()))?;
    }
    let mut options = ConnectOptions::new(url.clone());
    options
        .max_connections(max_connections)
        .min_connections(1)
        .connect_timeout(Duration::from_secs(5))
        .acquire_timeout(args.database_acquire_timeout)
        .sqlx_logging(false)
        // WAL lets readers work beside the single writer; the busy timeout (replaced once
        // connected by `wait_for_writers`) makes writers queue instead of failing while
        // another connection holds the write lock.
        .map_sqlx_sqlite_opts(move |opts| {
            opts.journal_mode(SqliteJournalMode::Wal)
                .synchronous(synchronous)
                .busy_timeout(Duration::from_secs(30))
                .foreign_keys(true)
                .pragma("soft_heap_limit", SQLITE_SOFT_HEAP_LIMIT)
        })
        .map_sqlx_sqlite_pool_opts(|pool| {
            pool.idle_timeout(SQLITE_IDLE_TIMEOUT)
                .after_connect(|connection, _| Box::pin(async move { wait_for_writers(connection).await }))
        });
    Database::connect(options).await.with_context(|| format!("cannot connect to the database at {}", redact(&url)))
}

/// SQLite's own busy handler sleeps 1, 2, 5, 10 … 100 ms between tries, so a writer that
/// finds the lock taken misses the short gaps between other writers' transactions and can
/// wait a tenth of a second behind a stream of them (the intake's store jobs behind its
/// submissions, bench/intake.sh). Polling instead (every 100 µs, as this did before) kept
/// every waiting connection's thread waking ten thousand times a second: under many small
/// uploads, half of the node's CPU samples were the kernel switching those threads (perf,
/// bench/small-uploads.sh); waking them on commits made 1.5 times as many uploads a second.
/// So a waiting connection sleeps until a write transaction of this process commits (the
/// WAL hook, which SQLite calls once the write lock is released; one waiter is woken per
/// commit, as only one can take the lock), or for at most
/// [`WriteLock::RECHECK`]: a lock held by another process, a rollback, or a commit between
/// the failed try and the wait wake no one. It gives up after the same 30 s as before.
async fn wait_for_writers(connection: &mut sea_orm::sqlx::SqliteConnection) -> Result<(), sea_orm::sqlx::Error> {
    let mut handle = connection.lock_handle().await?;
    let raw = handle.as_raw_handle().as_ptr();
    // SAFETY: the handle is a live connection, held locked for the calls; the callbacks are
    // plain functions that touch only the process-wide `WRITE_LOCK` (and, for the WAL
    // hook, checkpoint the connection SQLite hands them, as its default hook does).
    unsafe {
        libsqlite3_sys::sqlite3_busy_handler(raw, Some(WriteLock::busy), std::ptr::null_mut());
        libsqlite3_sys::sqlite3_wal_hook(raw, Some(WriteLock::committed), std::ptr::null_mut());
    }
    Ok(())
}

/// Commits of this process's SQLite connections, counted so that the connections waiting
/// for the write lock sleep until the next one.
struct WriteLock {
    commits: std::sync::Mutex<u64>,
    committed: std::sync::Condvar,
}

static WRITE_LOCK: WriteLock = WriteLock { commits: std::sync::Mutex::new(0), committed: std::sync::Condvar::new() };

thread_local! {
    /// When this thread's connection started waiting for the lock (SQLite counts tries).
    static WAITING_SINCE: std::cell::Cell<Option<std::time::Instant>> = const { std::cell::Cell::new(None) };
}

impl WriteLock {
    const RECHECK: Duration = Duration::from_millis(1);
    const GIVE_UP_AFTER: Duration = Duration::from_secs(30);
    /// WAL pages after which a commit checkpoints: SQLite's default, which a WAL hook of
    /// our own replaces.
    const CHECKPOINT_PAGES: std::ffi::c_int = 1000;

    /// SQLite's busy handler: non-zero to try again, zero to fail with SQLITE_BUSY.
    extern "C" fn busy(_: *mut std::ffi::c_void, tries: std::ffi::c_int) -> std::ffi::c_int {
        let now = std::time::Instant::now();
        let since = WAITING_SINCE.with(|since| {
            if tries == 0 {
                since.set(Some(now));
            }
            since.get().unwrap_or(now)
        });
        if now.duration_since(since) >= Self::GIVE_UP_AFTER {
            return 0;
        }
        // Nothing panics holding the lock; were it poisoned, the count is still right.
        let commits = WRITE_LOCK.commits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let seen = *commits;
        let _woken_or_timed_out =
            WRITE_LOCK.committed.wait_timeout_while(commits, Self::RECHECK, |commits| *commits == seen);
        1
    }

    /// SQLite's WAL hook, called after each commit, the write lock released.
    unsafe extern "C" fn committed(
        _: *mut std::ffi::c_void,
        db: *mut libsqlite3_sys::sqlite3,
        schema: *const std::ffi::c_char,
        pages: std::ffi::c_int,
    ) -> std::ffi::c_int {
        {
            let mut commits = WRITE_LOCK.commits.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *commits = commits.wrapping_add(1);
        }
        WRITE_LOCK.committed.notify_one();
        if pages >= Self::CHECKPOINT_PAGES {
            // SAFETY: SQLite passes its live connection and the schema's name; a passive
            // checkpoint from the hook is what its default hook does.
            unsafe { libsqlite3_sys::sqlite3_wal_checkpoint(db, schema) };
        }
        libsqlite3_sys::SQLITE_OK
    }
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
    use sea_orm::TransactionTrait as _;

    use super::*;

    #[test]
    fn in_lists_are_numbered_after_the_values_already_bound() {
        let (list, values) = in_list(vec![0i64.into()], &[1i64, 2]);
        assert_eq!(list, "$2, $3");
        let expected: Vec<Value> = vec![0i64.into(), 1i64.into(), 2i64.into()];
        assert_eq!(values, expected);
    }

    fn sqlite_in(folder: &std::path::Path) -> DatabaseArgs {
        DatabaseArgs {
            database_url: None,
            data_dir: folder.to_path_buf(),
            database_max_connections: 4,
            database_acquire_timeout: Duration::from_secs(3),
        }
    }

    async fn synchronous(db: &DatabaseConnection) -> i64 {
        let row = db.query_one_raw(stmt(db, "PRAGMA synchronous", [])).await.unwrap().unwrap();
        row.try_get_by_index::<i64>(0).unwrap()
    }

    #[tokio::test]
    async fn only_the_durable_sqlite_connections_sync_each_commit() {
        let folder = tempfile::tempdir().unwrap();
        let args = sqlite_in(folder.path());
        let db = connect(&args).await.unwrap();
        let durable = connect_durable(&args, &db).await.unwrap();
        assert_eq!(synchronous(&db).await, 1, "NORMAL: synced at checkpoints");
        assert_eq!(synchronous(&durable).await, 2, "FULL: synced at each commit");
    }

    #[tokio::test]
    async fn a_writer_waiting_for_the_lock_writes_once_the_holder_commits() {
        let folder = tempfile::tempdir().unwrap();
        let db = connect(&sqlite_in(folder.path())).await.unwrap();
        db.execute_unprepared("CREATE TABLE t (n INTEGER)").await.unwrap();
        let holder = db.begin().await.unwrap();
        holder.execute_unprepared("INSERT INTO t VALUES (1)").await.unwrap();
        let waiting = tokio::spawn({
            let db = db.clone();
            async move { db.execute_unprepared("INSERT INTO t VALUES (2)").await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        assert!(!waiting.is_finished(), "the second writer waits while the first holds the lock");
        holder.commit().await.unwrap();
        tokio::time::timeout(Duration::from_secs(10), waiting).await.unwrap().unwrap().unwrap();
        let row = db.query_one_raw(stmt(&db, "SELECT COUNT(*) FROM t", [])).await.unwrap().unwrap();
        assert_eq!(row.try_get_by_index::<i64>(0).unwrap(), 2);
    }
}
