//! The test harness: environments (database, Redis prefix, data folder, simulator),
//! in-process nodes and node processes, and small HTTP/GraphQL helpers.

#![allow(dead_code)]

use std::{
    net::SocketAddr,
    process::Stdio,
    time::{Duration, Instant},
};

use clap::Parser as _;
use emporium::{
    app::App,
    config::{Cli, Config},
    node::Node,
    state::AppState,
};
use sea_orm::{ConnectionTrait as _, Database};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::{sync::oneshot, task::JoinHandle};

/// One deployment's shared parts: what several nodes of a test have in common.
pub struct TestEnv {
    /// `None` means embedded SQLite under `dir`.
    pub database_url: Option<String>,
    pub redis_url: Option<String>,
    pub redis_prefix: String,
    pub dir: TempDir,
    pub sim: sim::RunningSim,
}

impl TestEnv {
    /// A fresh environment: a new Postgres database when `DATABASE_URL` is set (else a
    /// SQLite file in a temp folder), a unique Redis prefix when `REDIS_URL` is set, and a
    /// simulator with fast ticks that the test drives itself.
    pub async fn new() -> Self {
        Self::with_sim(sim::SimConfig {
            offers_tick: Duration::from_secs(3600),
            feed_periods: vec![Duration::from_secs(3600); 3],
            feed_items: 20,
            seed: Some(7),
        })
        .await
    }

    pub async fn with_sim(sim_config: sim::SimConfig) -> Self {
        let dir = tempfile::tempdir().expect("temp dir");
        let database_url = match std::env::var("DATABASE_URL") {
            Ok(base) if base.starts_with("postgres") => Some(fresh_postgres_database(&base).await),
            _ => None,
        };
        let redis_url = std::env::var("REDIS_URL").ok().filter(|url| !url.is_empty());
        let redis_prefix = format!("emporium-test-{}", uuid::Uuid::new_v4().simple());
        let sim =
            sim::Simulator::start(SocketAddr::from(([127, 0, 0, 1], 0)), sim_config).await.expect("simulator starts");
        Self { database_url, redis_url, redis_prefix, dir, sim }
    }

    pub fn is_postgres(&self) -> bool {
        self.database_url.is_some()
    }

    /// A node configuration for this environment (fast job polling and short leases).
    pub fn config(&self) -> Config {
        let mut config = Cli::try_parse_from(["emporium"]).expect("default config").serve;
        config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
        config.database.database_url = self.database_url.clone();
        config.database.data_dir = self.dir.path().join("data");
        config.database.database_max_connections = 8;
        config.redis_url = self.redis_url.clone();
        config.redis_prefix = self.redis_prefix.clone();
        config.object_store_url = Some(format!("file://{}", self.dir.path().join("objects").display()));
        config.api_tokens = Vec::new();
        config.jobs.job_poll_interval = Duration::from_millis(50);
        config.jobs.job_lease = Duration::from_secs(2);
        config.jobs.job_backoff_base = Duration::from_millis(100);
        config.jobs.job_backoff_max = Duration::from_secs(1);
        config.jobs.periodic_lease = Duration::from_secs(2);
        config.jobs.shutdown_grace = Duration::from_secs(2);
        config.upstreams.offers_url = Some(self.sim.offers_url());
        config.upstreams.feed_sources =
            self.sim.feed_urls().into_iter().map(|(url, period)| format!("{url}@{}s", period.as_secs())).collect();
        config.log_filter = std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into());
        config
    }

    /// The same configuration as environment variables, for node processes.
    pub fn env_vars(&self) -> Vec<(String, String)> {
        let config = self.config();
        let mut vars = vec![
            ("DATA_DIR".to_string(), config.database.data_dir.display().to_string()),
            ("OBJECT_STORE_URL".into(), config.object_store_url.clone().unwrap_or_default()),
            ("REDIS_PREFIX".into(), self.redis_prefix.clone()),
            ("JOB_POLL_INTERVAL".into(), "50ms".into()),
            ("JOB_LEASE".into(), "2s".into()),
            ("JOB_BACKOFF_BASE".into(), "100ms".into()),
            ("JOB_BACKOFF_MAX".into(), "1s".into()),
            ("PERIODIC_LEASE".into(), "2s".into()),
            ("SHUTDOWN_GRACE".into(), "2s".into()),
            // Many nodes share one test Postgres: keep each pool small.
            ("DATABASE_MAX_CONNECTIONS".into(), "6".into()),
            ("OFFERS_URL".into(), self.sim.offers_url()),
            ("FEED_SOURCES".into(), config.upstreams.feed_sources.join(",")),
            ("RUST_LOG".into(), std::env::var("TEST_LOG").unwrap_or_else(|_| "warn".into())),
        ];
        if let Some(url) = &self.database_url {
            vars.push(("DATABASE_URL".into(), url.clone()));
        }
        if let Some(url) = &self.redis_url {
            vars.push(("REDIS_URL".into(), url.clone()));
        }
        vars
    }

    /// A direct database connection, for assertions on stored rows.
    pub async fn db(&self) -> sea_orm::DatabaseConnection {
        let config = self.config();
        emporium::db::connect(&config.database).await.expect("test database connection")
    }
}

/// Creates a uniquely named database next to the one in `base` and returns its URL.
async fn fresh_postgres_database(base: &str) -> String {
    let name = format!("emporium_t_{}", uuid::Uuid::new_v4().simple());
    let admin = Database::connect(base).await.expect("connect to DATABASE_URL");
    admin.execute_unprepared(&format!("CREATE DATABASE \"{name}\"")).await.expect("create test database");
    admin.close().await.ok();
    let mut url = url::Url::parse(base).expect("DATABASE_URL is a URL");
    url.set_path(&format!("/{name}"));
    url.to_string()
}

/// A node running inside the test process.
pub struct TestApp {
    pub addr: SocketAddr,
    /// The shared infrastructure of the node.
    pub state: AppState,
    /// The node's settings and every domain's handle.
    pub node: Node,
    pub http: reqwest::Client,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<anyhow::Result<()>>,
}

impl TestApp {
    pub async fn spawn(env: &TestEnv) -> Self {
        Self::spawn_with(env, |_| {}).await
    }

    pub async fn spawn_with(env: &TestEnv, adjust: impl FnOnce(&mut Config)) -> Self {
        let mut config = env.config();
        adjust(&mut config);
        emporium::telemetry::init_logging("text", &config.log_filter);
        let app = App::build(config).await.expect("app builds");
        let addr = app.addr();
        let state = app.state.clone();
        let node = app.node.clone();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(app.run(async move {
            let _ = stopped.await;
        }));
        Self { addr, state, node, http: reqwest::Client::new(), stop: Some(stop), task }
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// Runs a GraphQL operation and returns the whole response body.
    pub async fn gql(&self, query: &str, variables: Value) -> Value {
        self.gql_as(None, query, variables).await
    }

    pub async fn gql_as(&self, token: Option<&str>, query: &str, variables: Value) -> Value {
        let mut request = self.http.post(self.url("/graphql")).json(&json!({ "query": query, "variables": variables }));
        if let Some(token) = token {
            request = request.bearer_auth(token);
        }
        request.send().await.expect("graphql request").json().await.expect("graphql json")
    }

    /// Runs an operation that must succeed; returns `data`.
    pub async fn gql_ok(&self, query: &str, variables: Value) -> Value {
        let response = self.gql(query, variables).await;
        assert!(response.get("errors").is_none(), "unexpected errors: {response:#}");
        response["data"].clone()
    }

    /// Graceful stop (what SIGTERM does).
    pub async fn stop(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(15), &mut self.task).await;
    }
}

/// The row number behind a GraphQL global id (for the simulator's paths and SQL); panics
/// on a malformed id.
pub fn row_of(id: &str) -> i64 {
    emporium::global_id::decode(&async_graphql::ID(id.to_string()))
        .unwrap_or_else(|error| panic!("`{id}` is not a global id: {error:?}"))
        .row
}

/// The first GraphQL error's `extensions.code`.
pub fn error_code(response: &Value) -> Option<String> {
    response["errors"][0]["extensions"]["code"].as_str().map(str::to_string)
}

/// An `emporium` process, for tests that kill -9 a node.
pub struct NodeProcess {
    pub addr: SocketAddr,
    child: tokio::process::Child,
    /// Where its stderr goes, when the test reads it ([`NodeProcess::spawn_logged`]).
    stderr_log: Option<std::path::PathBuf>,
}

impl NodeProcess {
    pub async fn spawn(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        Self::spawn_to(env, extra, None).await
    }

    /// Like [`NodeProcess::spawn`], with its stderr (the log) kept in a file under the
    /// environment's folder, for [`NodeProcess::stderr`].
    pub async fn spawn_logged(env: &TestEnv, extra: &[(&str, &str)]) -> Self {
        let log = env.dir.path().join(format!("node-{}.stderr", uuid::Uuid::new_v4().simple()));
        Self::spawn_to(env, extra, Some(log)).await
    }

    async fn spawn_to(env: &TestEnv, extra: &[(&str, &str)], stderr_log: Option<std::path::PathBuf>) -> Self {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = tokio::process::Command::new(env!("CARGO_BIN_EXE_emporium"));
        command.arg("serve").env_clear().env("LISTEN", addr.to_string()).envs(env.env_vars());
        for (key, value) in extra {
            command.env(key, value);
        }
        let stderr = match &stderr_log {
            Some(path) => Stdio::from(std::fs::File::create(path).expect("node log file")),
            None => Stdio::inherit(),
        };
        let child = command.stdout(Stdio::null()).stderr(stderr).kill_on_drop(true).spawn().expect("spawn emporium");
        let node = Self { addr, child, stderr_log };
        node.wait_ready().await;
        node
    }

    /// What the node wrote to stderr so far (its log); empty unless [`NodeProcess::spawn_logged`].
    pub fn stderr(&self) -> String {
        self.stderr_log.as_ref().map(|path| std::fs::read_to_string(path).unwrap_or_default()).unwrap_or_default()
    }

    async fn wait_ready(&self) {
        let client = reqwest::Client::new();
        let url = format!("http://{}/health", self.addr);
        let deadline = Instant::now() + Duration::from_secs(60);
        while Instant::now() < deadline {
            if client.get(&url).send().await.is_ok() {
                return;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        panic!("node on {} did not become ready", self.addr);
    }

    pub fn url(&self, path: &str) -> String {
        format!("http://{}{path}", self.addr)
    }

    /// SIGKILL: no shutdown, no release of anything it holds.
    pub async fn kill(mut self) {
        let _ = self.child.kill().await;
    }

    /// SIGTERM, then wait for a graceful exit.
    pub async fn terminate(mut self) -> Option<std::process::ExitStatus> {
        if let Some(pid) = self.child.id() {
            let _ = std::process::Command::new("kill").arg("-TERM").arg(pid.to_string()).status();
        }
        tokio::time::timeout(Duration::from_secs(20), self.child.wait()).await.ok().and_then(Result::ok)
    }
}

/// A Redis server of the test's own, on its own port, for tests that flush or stop it
/// (never the shared one). Stopped when dropped.
pub struct PrivateRedis {
    child: std::process::Child,
    binary: &'static str,
    port: u16,
    pub url: String,
}

impl PrivateRedis {
    /// Starts one; `None` when this machine has no `redis-server` binary.
    pub async fn start() -> Option<Self> {
        let binary = ["/usr/bin/redis-server", "/usr/local/bin/redis-server", "/usr/sbin/redis-server"]
            .into_iter()
            .find(|path| std::path::Path::new(path).exists())?;
        let port = free_port();
        let child = Self::run(binary, port).await;
        Some(Self { child, binary, port, url: format!("redis://127.0.0.1:{port}") })
    }

    async fn run(binary: &str, port: u16) -> std::process::Child {
        let child = std::process::Command::new(binary)
            .args(["--port", &port.to_string(), "--bind", "127.0.0.1", "--save", "", "--appendonly", "no"])
            .stdout(Stdio::null())
            .spawn()
            .expect("redis-server starts");
        eventually(Duration::from_secs(10), "the private redis to accept connections", || async {
            std::net::TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
        })
        .await;
        child
    }

    /// Starts it again after [`PrivateRedis::kill`], on the same port (empty: it keeps nothing).
    pub async fn restart(&mut self) {
        self.kill();
        self.child = Self::run(self.binary, self.port).await;
    }

    /// Loses every key, as a restart without persistence, a failover or eviction does.
    pub async fn flush(&self) {
        let client = redis::Client::open(self.url.as_str()).expect("redis url");
        let mut connection = client.get_multiplexed_async_connection().await.expect("private redis");
        let _: () = redis::cmd("FLUSHALL").query_async(&mut connection).await.expect("FLUSHALL");
    }

    /// Stops it now (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A Postgres server of the test's own (its own data folder and port), for tests that
/// stop and restart it; never the shared one. Needs the server binaries
/// (`/usr/lib/postgresql/<version>/bin`, the newest): without them the test fails, it
/// does not pass unseen. As root (tests in containers), the server runs as the
/// `postgres` user (`initdb` refuses root). Stopped and removed when dropped.
pub struct PrivatePostgres {
    bin: std::path::PathBuf,
    /// Holds `data/` and the server's socket and log; removed on drop.
    dir: TempDir,
    pub port: u16,
    /// `postgres://postgres@127.0.0.1:<port>/postgres` (trust authentication).
    pub url: String,
    running: bool,
}

impl PrivatePostgres {
    pub async fn start() -> Self {
        let bin = Self::binaries().unwrap_or_else(|| {
            panic!("no Postgres server binaries (initdb, pg_ctl) under /usr/lib/postgresql/*/bin: install Postgres")
        });
        let as_root = rustix::process::geteuid().is_root();
        // As root, under /tmp (world-traversable whatever TMPDIR says), so that the
        // `postgres` user can reach its data folder; the folder itself is made its own.
        let dir = if as_root { tempfile::tempdir_in("/tmp") } else { tempfile::tempdir() }.expect("temp dir");
        if as_root {
            use std::os::unix::fs::PermissionsExt as _;
            std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).expect("chmod temp dir");
            let owner = Self::postgres_user_ids();
            std::os::unix::fs::chown(dir.path(), Some(owner.0), Some(owner.1)).expect("chown temp dir to postgres");
        }
        let port = free_port();
        let server =
            Self { bin, dir, port, url: format!("postgres://postgres@127.0.0.1:{port}/postgres"), running: false };
        let data = server.data().display().to_string();
        server.command("initdb", &["-D", &data, "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"]);
        let mut server = server;
        server.restart().await;
        server
    }

    /// Starts the server (again, after [`PrivatePostgres::stop`]) on the same port and data.
    pub async fn restart(&mut self) {
        let options = format!(
            "-p {} -c listen_addresses=127.0.0.1 -c unix_socket_directories={} -c fsync=off",
            self.port,
            self.dir.path().display()
        );
        let data = self.data().display().to_string();
        let log = self.dir.path().join("server.log").display().to_string();
        self.command("pg_ctl", &["-D", &data, "-o", &options, "-l", &log, "-w", "-t", "60", "start"]);
        self.running = true;
        let url = self.url.clone();
        eventually(Duration::from_secs(30), "the private postgres to accept queries", || async {
            let connection = Database::connect(url.as_str()).await.ok()?;
            let ok = connection.execute_unprepared("SELECT 1").await.is_ok();
            connection.close().await.ok();
            ok.then_some(())
        })
        .await;
    }

    /// Stops the server at once, as a crash would (`-m immediate`: no checkpoint, every
    /// connection dropped); the port is closed when this returns.
    pub fn stop(&mut self) {
        let data = self.data().display().to_string();
        self.command("pg_ctl", &["-D", &data, "-m", "immediate", "-w", "-t", "60", "stop"]);
        self.running = false;
    }

    fn data(&self) -> std::path::PathBuf {
        self.dir.path().join("data")
    }

    /// Runs one of the server's programs; panics with its output if it fails.
    fn command(&self, program: &str, args: &[&str]) {
        let output = self.program(program).args(args).stdin(Stdio::null()).output().expect("run a Postgres program");
        assert!(
            output.status.success(),
            "{program} {args:?} failed ({}): {}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// One of the server's programs, run as `postgres` when we are root.
    fn program(&self, program: &str) -> std::process::Command {
        let program = self.bin.join(program);
        if rustix::process::geteuid().is_root() {
            let mut command = std::process::Command::new("runuser");
            command.args(["-u", "postgres", "--"]).arg(program);
            command
        } else {
            std::process::Command::new(program)
        }
    }

    /// The newest `/usr/lib/postgresql/<version>/bin` that has `initdb` and `pg_ctl`.
    fn binaries() -> Option<std::path::PathBuf> {
        let mut found: Vec<(u32, std::path::PathBuf)> = std::fs::read_dir("/usr/lib/postgresql")
            .ok()?
            .filter_map(Result::ok)
            .filter_map(|entry| {
                let version = entry.file_name().to_str()?.split('.').next()?.parse().ok()?;
                let bin = entry.path().join("bin");
                (bin.join("initdb").exists() && bin.join("pg_ctl").exists()).then_some((version, bin))
            })
            .collect();
        found.sort();
        found.pop().map(|(_, bin)| bin)
    }

    /// The `postgres` OS user's uid and gid.
    fn postgres_user_ids() -> (u32, u32) {
        let passwd = std::fs::read_to_string("/etc/passwd").expect("read /etc/passwd");
        passwd
            .lines()
            .find_map(|line| {
                let fields: Vec<&str> = line.split(':').collect();
                (fields.first() == Some(&"postgres") && fields.len() > 3)
                    .then(|| Some((fields[2].parse().ok()?, fields[3].parse().ok()?)))
                    .flatten()
            })
            .expect("a `postgres` OS user (the Postgres packages create it)")
    }
}

impl Drop for PrivatePostgres {
    fn drop(&mut self) {
        if self.running {
            let data = self.data().display().to_string();
            let stop = ["-D", &data, "-m", "immediate", "-w", "stop"];
            let _ = self.program("pg_ctl").args(stop).stdout(Stdio::null()).stderr(Stdio::null()).status();
        }
    }
}

/// An S3 server of the test's own: moto's standalone server (`pip install 'moto[server]'`)
/// on its own loopback port, with one bucket, for cluster tests whose nodes share object
/// storage and no disk. Stopped when dropped (moto keeps everything in memory).
pub struct PrivateS3 {
    child: std::process::Child,
    /// Holds the server's log (one line per request, read when it fails to start).
    dir: TempDir,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    pub bucket: String,
    http: reqwest::Client,
}

impl PrivateS3 {
    /// Starts one and creates its bucket. Without moto on this machine: `None`, after
    /// printing why (the caller skips), unless `EMPORIUM_REQUIRE_S3=1` (CI), which panics
    /// instead, so that CI never passes a test it did not run.
    pub async fn start() -> Option<Self> {
        let Some(program) = Self::moto() else {
            let reason = "no moto S3 server on this machine (pip install 'moto[server]')";
            assert!(std::env::var("EMPORIUM_REQUIRE_S3").as_deref() != Ok("1"), "EMPORIUM_REQUIRE_S3=1: {reason}");
            eprintln!("skipped: {reason}");
            return None;
        };
        let dir = tempfile::tempdir().expect("temp dir");
        let log = std::fs::File::create(dir.path().join("moto.log")).expect("moto log file");
        let port = free_port();
        let child = std::process::Command::new(program[0])
            .args(&program[1..])
            .args(["-H", "127.0.0.1", "-p", &port.to_string()])
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone().expect("moto log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("start moto's S3 server");
        let mut server = Self {
            child,
            dir,
            endpoint: format!("http://127.0.0.1:{port}"),
            bucket: format!("emporium-{}", uuid::Uuid::new_v4().simple()),
            http: reqwest::Client::new(),
        };
        // Path-style CreateBucket; moto accepts unsigned requests. It answers once it
        // listens (a second or two of Python imports).
        let url = format!("{}/{}", server.endpoint, server.bucket);
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            match server.http.put(&url).send().await {
                Ok(response) if response.status().is_success() => break,
                Ok(response) => panic!("moto: CreateBucket answered {}: {}", response.status(), server.log()),
                Err(_) if Instant::now() < deadline => {
                    if let Ok(Some(status)) = server.child.try_wait() {
                        panic!("moto's S3 server exited ({status}): {}", server.log());
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
                Err(error) => panic!("moto's S3 server did not answer within 30 s ({error}): {}", server.log()),
            }
        }
        Some(server)
    }

    /// The command that runs moto's server: `moto_server`, else `python3 -m moto.server`;
    /// `None` when neither works (`--help` proves the package and its server extras load).
    /// Looked for once per test process (each look takes a second of Python imports).
    fn moto() -> Option<&'static [&'static str]> {
        const CANDIDATES: [&[&str]; 2] = [&["moto_server"], &["python3", "-m", "moto.server"]];
        static FOUND: std::sync::OnceLock<Option<&'static [&'static str]>> = std::sync::OnceLock::new();
        *FOUND.get_or_init(|| {
            CANDIDATES.into_iter().find(|program| {
                std::process::Command::new(program[0])
                    .args(&program[1..])
                    .arg("--help")
                    .stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .is_ok_and(|status| status.success())
            })
        })
    }

    /// What a node needs to use the bucket as its object store, as `AmazonS3Builder::from_env`
    /// reads it (`src/storage`): path-style requests to the endpoint over plain HTTP, any
    /// credentials (moto checks none).
    pub fn node_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("OBJECT_STORE_URL", format!("s3://{}", self.bucket)),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".into()),
            ("AWS_ACCESS_KEY_ID", "emporium-test".into()),
            ("AWS_SECRET_ACCESS_KEY", "emporium-test-secret".into()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }

    /// The objects under `prefix` with their sizes, sorted by key, through the S3 API
    /// (ListObjectsV2, every page).
    pub async fn objects(&self, prefix: &str) -> Vec<(String, u64)> {
        let mut objects = Vec::new();
        let mut token: Option<String> = None;
        loop {
            let mut url = url::Url::parse(&format!("{}/{}", self.endpoint, self.bucket)).expect("bucket URL");
            url.query_pairs_mut().append_pair("list-type", "2").append_pair("prefix", prefix);
            if let Some(token) = token.take() {
                url.query_pairs_mut().append_pair("continuation-token", &token);
            }
            let response = self.http.get(url).send().await.expect("ListObjectsV2");
            assert!(response.status().is_success(), "ListObjectsV2 answered {}", response.status());
            let xml = response.text().await.expect("ListObjectsV2 body");
            for contents in xml.split("<Contents>").skip(1) {
                let key = xml_unescape(xml_element(contents, "Key").expect("<Key> in <Contents>"));
                let size =
                    xml_element(contents, "Size").and_then(|size| size.parse().ok()).expect("<Size> in <Contents>");
                objects.push((key, size));
            }
            if xml_element(&xml, "IsTruncated") != Some("true") {
                break;
            }
            token = Some(xml_unescape(xml_element(&xml, "NextContinuationToken").expect("NextContinuationToken")));
        }
        objects.sort();
        objects
    }

    /// Keys of the multipart uploads begun and neither completed nor aborted
    /// (ListMultipartUploads): parts stored and billed, and invisible to object listings.
    pub async fn pending_multipart_uploads(&self) -> Vec<String> {
        let url = format!("{}/{}?uploads", self.endpoint, self.bucket);
        let response = self.http.get(&url).send().await.expect("ListMultipartUploads");
        assert!(response.status().is_success(), "ListMultipartUploads answered {}", response.status());
        let xml = response.text().await.expect("ListMultipartUploads body");
        assert!(xml_element(&xml, "IsTruncated") != Some("true"), "more than a page of pending uploads: {xml}");
        xml.split("<Upload>")
            .skip(1)
            .map(|upload| xml_unescape(xml_element(upload, "Key").expect("<Key> in <Upload>")))
            .collect()
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("moto.log")).unwrap_or_default()
    }
}

impl Drop for PrivateS3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The text of the first `<name>…</name>` in `xml`.
fn xml_element<'a>(xml: &'a str, name: &str) -> Option<&'a str> {
    let start = xml.find(&format!("<{name}>"))? + name.len() + 2;
    let end = start + xml[start..].find(&format!("</{name}>"))?;
    Some(&xml[start..end])
}

/// XML's five predefined entities (all S3 listings escape).
fn xml_unescape(text: &str) -> String {
    text.replace("&lt;", "<").replace("&gt;", ">").replace("&quot;", "\"").replace("&apos;", "'").replace("&amp;", "&")
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|listener| listener.local_addr())
        .map(|addr| addr.port())
        .expect("free port")
}

/// Polls `check` until it returns `Some`, or panics after `timeout` naming `what`.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(Instant::now() < deadline, "timed out after {timeout:?} waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

impl NodeProcess {
    /// Like [`NodeProcess::spawn`], with the node's file-descriptor limit set to `nofile`
    /// (soft and hard) by the shell that then `exec`s the binary (same process id).
    pub async fn spawn_with_nofile(env: &TestEnv, extra: &[(&str, &str)], nofile: u64) -> Self {
        let port = free_port();
        let addr = SocketAddr::from(([127, 0, 0, 1], port));
        let mut command = tokio::process::Command::new("/bin/sh");
        command
            .arg("-c")
            .arg(format!("ulimit -n {nofile} && exec \"$0\" serve"))
            .arg(env!("CARGO_BIN_EXE_emporium"))
            .env_clear()
            .env("LISTEN", addr.to_string())
            .envs(env.env_vars());
        for (key, value) in extra {
            command.env(key, value);
        }
        let child = command
            .stdout(Stdio::null())
            .stderr(Stdio::inherit())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn emporium through sh");
        let node = Self { addr, child, stderr_log: None };
        node.wait_ready().await;
        node
    }

    /// The node's process id.
    pub fn pid(&self) -> u32 {
        self.child.id().expect("the node process is running")
    }

    /// Sends SIGTERM and returns at once: the caller keeps talking to the node while it
    /// shuts down.
    pub fn send_sigterm(&self) {
        let status = std::process::Command::new("kill").arg("-TERM").arg(self.pid().to_string()).status();
        assert!(matches!(&status, Ok(status) if status.success()), "kill -TERM {}: {status:?}", self.pid());
    }

    /// Whether the process has not exited (nor been reaped).
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Waits up to `timeout` for the process to exit on its own; `None` if it did not.
    pub async fn wait_exit(mut self, timeout: Duration) -> Option<std::process::ExitStatus> {
        tokio::time::timeout(timeout, self.child.wait()).await.ok().and_then(Result::ok)
    }

    /// (VmRSS, VmHWM) of the node, in bytes: its resident memory now, and the most it ever had.
    pub fn memory(&self) -> (u64, u64) {
        memory_of(self.pid())
    }
}

/// (VmRSS, VmHWM) of process `pid` from `/proc/<pid>/status`, in bytes.
pub fn memory_of(pid: u32) -> (u64, u64) {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/<pid>/status");
    let field = |name: &str| -> u64 {
        let line =
            status.lines().find(|line| line.starts_with(name)).unwrap_or_else(|| panic!("no {name} in {status}"));
        let kib: u64 = line[name.len()..]
            .trim()
            .trim_end_matches("kB")
            .trim()
            .parse()
            .unwrap_or_else(|_| panic!("cannot parse `{line}`"));
        kib * 1024
    };
    (field("VmRSS:"), field("VmHWM:"))
}

/// GETs `/health` on a fresh connection and asserts an answer (any status) within 1 s;
/// a connection refused or reset is retried within that second. Returns the status.
pub async fn assert_responsive(node: &NodeProcess) -> u16 {
    health_answer(node.addr, Duration::from_secs(1))
        .await
        .unwrap_or_else(|miss| panic!("GET /health on {} got no answer within 1s: {miss:?}", node.addr))
}

/// Why a health probe got no answer in time.
#[derive(Debug)]
pub struct HealthMiss {
    /// Connections tried (each refused, reset or closed, except perhaps the last).
    pub attempts: u32,
    pub last_error: String,
    /// The longest any one attempt waited for a reaction (an answer, a refusal, a reset,
    /// a close): long waits mean the node did not react at all.
    pub longest_wait: Duration,
}

/// GETs `/health` on a fresh connection: the status of an answer (any status) within
/// `budget`, retrying a connection refused, reset or closed within that time; else why not.
pub async fn health_answer(addr: SocketAddr, budget: Duration) -> Result<u16, HealthMiss> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

    let started = Instant::now();
    let mut attempts = 0;
    let mut last_error = String::from("no attempt finished");
    let mut longest_wait = Duration::ZERO;
    while started.elapsed() < budget {
        attempts += 1;
        let attempt_started = Instant::now();
        let attempt = async {
            let mut stream = tokio::net::TcpStream::connect(addr).await?;
            stream.write_all(b"GET /health HTTP/1.1\r\nHost: emporium\r\nConnection: close\r\n\r\n").await?;
            let mut received = Vec::with_capacity(1024);
            loop {
                let mut headers = [httparse::EMPTY_HEADER; 64];
                let mut response = httparse::Response::new(&mut headers);
                if let Ok(httparse::Status::Complete(_)) = response.parse(&received) {
                    return Ok(response.code.unwrap_or_default());
                }
                if stream.read_buf(&mut received).await? == 0 {
                    return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "closed before an answer"));
                }
            }
        };
        let outcome = tokio::time::timeout(budget.saturating_sub(started.elapsed()), attempt).await;
        longest_wait = longest_wait.max(attempt_started.elapsed());
        match outcome {
            Ok(Ok(status)) => return Ok(status),
            Ok(Err(error)) => {
                last_error = error.to_string();
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
            Err(_) => break,
        }
    }
    Err(HealthMiss { attempts, last_error, longest_wait })
}

/// Raises this process's soft RLIMIT_NOFILE to its hard limit (so a test can open
/// thousands of sockets; node processes spawned afterwards inherit it) and returns the
/// soft limit now in force.
pub fn raise_fd_limit() -> u64 {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let limit = getrlimit(Resource::Nofile);
    let (Some(current), maximum) = (limit.current, limit.maximum) else { return 1 << 20 };
    // An unlimited hard limit cannot be the soft one (the kernel caps it at nr_open).
    let wanted = maximum.unwrap_or(u64::MAX).min(1 << 20);
    if current < wanted && setrlimit(Resource::Nofile, Rlimit { current: Some(wanted), maximum }).is_ok() {
        return wanted;
    }
    current
}
