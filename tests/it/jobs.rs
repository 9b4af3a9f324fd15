//! The durable job queue and periodic leases, against the real database (SQLite file or
//! Postgres) and, for the leader test, real node processes.

use std::{
    collections::HashMap,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    time::Duration,
};

use emporium::{
    db::stmt,
    jobs::{self, JobError, JobRegistry, NewJob, Workers, periodic},
    state::AppState,
};
use sea_orm::{ConnectionTrait as _, FromQueryResult};
use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::support::{NodeProcess, TestApp, TestEnv, eventually};

#[derive(Debug, Clone, Serialize, Deserialize)]
struct EffectPayload {
    key: String,
}

/// Workers as another node would run them: same queue, their own node name.
fn workers_of(state: &AppState, name: &str, registry: JobRegistry, count: usize) -> Workers {
    Workers::spawn(state.jobs.clone(), name.into(), registry, count)
}

/// The job's effect: one row keyed by the payload, written idempotently.
async fn write_effect(state: &AppState, key: &str) -> Result<(), JobError> {
    state
        .db
        .execute_raw(stmt(
            &state.db,
            "INSERT INTO settings (key, value, updated_at) VALUES ($1, 'done', 0) ON CONFLICT (key) DO NOTHING",
            [key.into()],
        ))
        .await?;
    Ok(())
}

async fn count_effects(state: &AppState, key: &str) -> i64 {
    #[derive(FromQueryResult)]
    struct Row {
        n: i64,
    }
    Row::find_by_statement(stmt(&state.db, "SELECT COUNT(*) AS n FROM settings WHERE key = $1", [key.into()]))
        .one(&state.db)
        .await
        .unwrap()
        .map_or(0, |row| row.n)
}

#[tokio::test]
async fn a_job_whose_worker_dies_runs_again_after_its_lease_and_takes_effect_once() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let started = Arc::new(AtomicUsize::new(0));

    // Node A starts the job and hangs before its effect, then dies.
    let mut hanging = JobRegistry::default();
    let seen = started.clone();
    hanging.register("test.effect", move |_ctx, _payload: EffectPayload| {
        let seen = seen.clone();
        async move {
            seen.fetch_add(1, Ordering::SeqCst);
            std::future::pending::<()>().await;
            Ok(())
        }
    });
    let id = app
        .state
        .jobs
        .enqueue(&app.state.db, NewJob::new("test.effect", &EffectPayload { key: "effect-1".into() }))
        .await
        .unwrap();
    let node_a = workers_of(&app.state, "node-a", hanging, 1);
    eventually(Duration::from_secs(10), "node A to start the job", || {
        let started = started.clone();
        async move { (started.load(Ordering::SeqCst) == 1).then_some(()) }
    })
    .await;
    node_a.abort();

    // Node B takes it once A's lease (2 s in tests) runs out, and completes it.
    let mut working = JobRegistry::default();
    let state = app.state.clone();
    working.register("test.effect", move |_ctx, payload: EffectPayload| {
        let state = state.clone();
        async move { write_effect(&state, &payload.key).await }
    });
    let node_b = workers_of(&app.state, "node-b", working, 1);
    let job = eventually(Duration::from_secs(20), "the job to succeed on node B", || {
        let queue = app.state.jobs.clone();
        async move { queue.get(id).await.unwrap().filter(|job| job.status == jobs::SUCCEEDED) }
    })
    .await;
    assert_eq!(job.attempts, 2, "one lost attempt on A, one successful on B");
    assert_eq!(count_effects(&app.state, "effect-1").await, 1);
    node_b.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn a_job_that_always_fails_ends_failed_with_its_last_error() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let mut registry = JobRegistry::default();
    registry.register("test.broken", |ctx, _payload: serde_json::Value| async move {
        Err(JobError::Retry(anyhow::anyhow!("dependency down (attempt {})", ctx.attempt)))
    });
    let id =
        app.state.jobs.enqueue(&app.state.db, NewJob::new("test.broken", &json!({})).max_attempts(3)).await.unwrap();
    let workers = Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 2);
    let job = eventually(Duration::from_secs(20), "the job to fail for good", || {
        let queue = app.state.jobs.clone();
        async move { queue.get(id).await.unwrap().filter(|job| job.status == jobs::FAILED) }
    })
    .await;
    assert_eq!(job.attempts, 3);
    assert_eq!(job.last_error.as_deref(), Some("dependency down (attempt 3)"));
    assert!(job.finished_at.is_some());

    // Visible over GraphQL, and an operator can put it back in the queue.
    let gid = emporium::global_id::encode("Job", id).0;
    let data = app.gql_ok("query($id: ID!) { job(id: $id) { status attempts lastError } }", json!({ "id": gid })).await;
    assert_eq!(data["job"]["status"], "FAILED");
    assert_eq!(data["job"]["lastError"], "dependency down (attempt 3)");
    workers.shutdown().await;
    let data = app.gql_ok("mutation($id: ID!) { retryJob(id: $id) { status attempts } }", json!({ "id": gid })).await;
    assert_eq!(data["retryJob"]["status"], "QUEUED");
    assert_eq!(data["retryJob"]["attempts"], 0);
    app.stop().await;
}

#[tokio::test]
async fn a_payload_that_does_not_decode_fails_at_once() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let mut registry = JobRegistry::default();
    registry.register("test.typed", |_ctx, _payload: EffectPayload| async move { Ok(()) });
    let id = app.state.jobs.enqueue(&app.state.db, NewJob::new("test.typed", &json!({ "wrong": 1 }))).await.unwrap();
    let workers = Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 1);
    let job = eventually(Duration::from_secs(10), "the job to fail", || {
        let queue = app.state.jobs.clone();
        async move { queue.get(id).await.unwrap().filter(|job| job.status == jobs::FAILED) }
    })
    .await;
    assert_eq!(job.attempts, 1, "no retries for a hopeless payload");
    assert!(job.last_error.unwrap_or_default().contains("payload does not decode"));
    workers.shutdown().await;
    app.stop().await;
}

#[tokio::test]
async fn four_workers_never_run_the_same_job_at_once_and_run_every_job() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let running: Arc<Mutex<HashMap<String, usize>>> = Arc::default();
    let overlaps = Arc::new(AtomicUsize::new(0));
    let mut registry = JobRegistry::default();
    {
        let running = running.clone();
        let overlaps = overlaps.clone();
        let state = app.state.clone();
        registry.register("test.exclusive", move |_ctx, payload: EffectPayload| {
            let state = state.clone();
            let running = running.clone();
            let overlaps = overlaps.clone();
            async move {
                {
                    let mut running = running.lock().unwrap();
                    let count = running.entry(payload.key.clone()).or_default();
                    *count += 1;
                    if *count > 1 {
                        overlaps.fetch_add(1, Ordering::SeqCst);
                    }
                }
                tokio::time::sleep(Duration::from_millis(5)).await;
                write_effect(&state, &payload.key).await?;
                *running.lock().unwrap().entry(payload.key).or_default() -= 1;
                Ok(())
            }
        });
    }
    let total = 200;
    let new_jobs: Vec<NewJob> =
        (0..total).map(|i| NewJob::new("test.exclusive", &EffectPayload { key: format!("exclusive-{i}") })).collect();
    let ids = app.state.jobs.enqueue_many(&app.state.db, new_jobs).await.unwrap();
    assert_eq!(ids.len(), total);

    let pools: Vec<Workers> =
        (0..4).map(|n| workers_of(&app.state, &format!("worker-{n}"), registry.clone(), 2)).collect();
    eventually(Duration::from_secs(60), "every job to succeed", || {
        let queue = app.state.jobs.clone();
        async move {
            let counts = queue.counts().await.unwrap();
            (counts[jobs::SUCCEEDED] == total as i64).then_some(())
        }
    })
    .await;
    assert_eq!(overlaps.load(Ordering::SeqCst), 0, "a job ran on two workers at once");
    #[derive(FromQueryResult)]
    struct Row {
        n: i64,
        max_attempts: Option<i32>,
    }
    let row = Row::find_by_statement(stmt(
        &app.state.db,
        "SELECT COUNT(*) AS n, MAX(attempts) AS max_attempts FROM jobs WHERE kind = 'test.exclusive'",
        [],
    ))
    .one(&app.state.db)
    .await
    .unwrap()
    .unwrap();
    assert_eq!(row.n, total as i64);
    assert_eq!(row.max_attempts, Some(1), "every job claimed exactly once");
    for pool in pools {
        pool.shutdown().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn jobs_in_one_ordering_group_run_one_at_a_time_in_order() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let order: Arc<Mutex<Vec<String>>> = Arc::default();
    let mut registry = JobRegistry::default();
    {
        let order = order.clone();
        registry.register("test.fifo", move |_ctx, payload: EffectPayload| {
            let order = order.clone();
            async move {
                order.lock().unwrap().push(format!("start {}", payload.key));
                tokio::time::sleep(Duration::from_millis(10)).await;
                order.lock().unwrap().push(format!("end {}", payload.key));
                Ok(())
            }
        });
    }
    let new_jobs: Vec<NewJob> = (0..20)
        .map(|i| NewJob::new("test.fifo", &EffectPayload { key: format!("{i:02}") }).ordered_by("genre-a"))
        .collect();
    app.state.jobs.enqueue_many(&app.state.db, new_jobs).await.unwrap();
    let pools: Vec<Workers> =
        (0..2).map(|n| workers_of(&app.state, &format!("fifo-{n}"), registry.clone(), 4)).collect();
    eventually(Duration::from_secs(30), "all ordered jobs to run", || {
        let order = order.clone();
        async move { (order.lock().unwrap().len() == 40).then_some(()) }
    })
    .await;
    let expected: Vec<String> = (0..20).flat_map(|i| [format!("start {i:02}"), format!("end {i:02}")]).collect();
    assert_eq!(*order.lock().unwrap(), expected);
    for pool in pools {
        pool.shutdown().await;
    }
    app.stop().await;
}

#[tokio::test]
async fn graceful_shutdown_releases_held_jobs_without_spending_an_attempt() {
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let mut registry = JobRegistry::default();
    registry.register("test.slow", |_ctx, _payload: serde_json::Value| async move {
        tokio::time::sleep(Duration::from_secs(3600)).await;
        Ok(())
    });
    let id = app.state.jobs.enqueue(&app.state.db, NewJob::new("test.slow", &json!({}))).await.unwrap();
    let workers = Workers::spawn(app.state.jobs.clone(), app.state.node_id.clone(), registry, 1);
    eventually(Duration::from_secs(10), "the job to start", || {
        let queue = app.state.jobs.clone();
        async move { queue.get(id).await.unwrap().filter(|job| job.status == jobs::RUNNING) }
    })
    .await;
    workers.shutdown().await; // waits the 2 s grace, then releases
    let job = app.state.jobs.get(id).await.unwrap().unwrap();
    assert_eq!(job.status, jobs::QUEUED);
    assert_eq!(job.attempts, 0);
    assert!(job.locked_by.is_none());
    app.stop().await;
}

#[tokio::test]
async fn a_periodic_job_runs_on_one_node_per_period_and_moves_when_that_node_dies() {
    let env = TestEnv::new().await;
    let every_two_seconds = [("JOBS_PURGE_CRON", "*/2 * * * * *")];
    let node_a = NodeProcess::spawn(&env, &[("NODE_ID", "node-a"), every_two_seconds[0]]).await;
    let node_b = NodeProcess::spawn(&env, &[("NODE_ID", "node-b"), every_two_seconds[0]]).await;
    let db = env.db().await;

    let runs = eventually(Duration::from_secs(30), "six periodic runs", || {
        let db = db.clone();
        async move {
            let runs = periodic::recent_runs(&db, "jobs.purge", 100).await.unwrap();
            (runs.len() >= 6).then_some(runs)
        }
    })
    .await;
    // Newest first: consecutive runs are a full period apart, never two in one period.
    for pair in runs.windows(2) {
        let gap = pair[0].started_at - pair[1].started_at;
        assert!(gap >= 1500, "two runs {gap} ms apart: {pair:?}");
    }

    // Kill whichever node ran last; the survivor takes over within the next periods.
    let last_runner = runs[0].node.clone();
    let (victim, survivor_name, survivor) =
        if last_runner == "node-a" { (node_a, "node-b", node_b) } else { (node_b, "node-a", node_a) };
    victim.kill().await;
    let killed_at = emporium::db::now_ms();
    let takeover = eventually(Duration::from_secs(15), "the survivor to run the job", || {
        let db = db.clone();
        async move {
            let runs = periodic::recent_runs(&db, "jobs.purge", 5).await.unwrap();
            runs.into_iter().find(|run| run.started_at > killed_at && run.node == survivor_name)
        }
    })
    .await;
    // Killed between runs: the lease is free, so the very next tick (≤ 2 s) may run it;
    // killed mid-run: after its 2 s lease. Either way within two periods plus the lease.
    assert!(takeover.started_at - killed_at <= 6000, "takeover took {} ms", takeover.started_at - killed_at);
    let status = survivor.terminate().await;
    assert!(status.is_some_and(|status| status.success()), "graceful exit on SIGTERM: {status:?}");
}

/// What the fairness tests watch: bulk jobs started and finished, and for the other kind,
/// how many bulk jobs had finished when its first job started and when its last finished.
#[derive(Default)]
struct Progress {
    bulk_started: AtomicUsize,
    bulk_finished: AtomicUsize,
    small_finished: AtomicUsize,
    bulk_finished_at_first_small: Mutex<Option<usize>>,
    bulk_finished_at_last_small: Mutex<Option<usize>>,
}

/// Registers `test.bulk`, whose jobs each take `duration`, on `registry`.
fn register_bulk(registry: &mut JobRegistry, progress: &Arc<Progress>, duration: Duration) {
    let progress = progress.clone();
    registry.register("test.bulk", move |_ctx, _payload: serde_json::Value| {
        let progress = progress.clone();
        async move {
            progress.bulk_started.fetch_add(1, Ordering::SeqCst);
            tokio::time::sleep(duration).await;
            progress.bulk_finished.fetch_add(1, Ordering::SeqCst);
            Ok(())
        }
    });
}

fn bulk_jobs(count: usize) -> Vec<NewJob> {
    (0..count).map(|n| NewJob::new("test.bulk", &json!({ "n": n }))).collect()
}

async fn wait_for_bulk_running(progress: &Arc<Progress>, workers: usize) {
    eventually(Duration::from_secs(10), "every worker busy with bulk jobs", || async {
        (progress.bulk_started.load(Ordering::SeqCst) >= workers).then_some(())
    })
    .await;
}

/// Fair share across two nodes (two worker pools on one queue, 2 workers each): 200 slow
/// bulk jobs are queued first, then 100 small jobs of another kind. The small kind's first
/// job starts once one worker frees (at most one bulk job per worker finishes first), and
/// all 100 finish before a quarter of the bulk jobs have (in id order, all 200 would run
/// first).
#[tokio::test]
async fn a_bulk_backlog_of_one_kind_does_not_hold_back_another_kind() {
    const BULK: usize = 200;
    const SMALL: usize = 100;
    const WORKERS: usize = 4;
    let env = TestEnv::new().await;
    let app = TestApp::spawn(&env).await;
    let progress = Arc::new(Progress::default());
    let mut registry = JobRegistry::default();
    register_bulk(&mut registry, &progress, Duration::from_millis(300));
    {
        let progress = progress.clone();
        registry.register("test.small", move |_ctx, _payload: serde_json::Value| {
            let progress = progress.clone();
            async move {
                let bulk_done = progress.bulk_finished.load(Ordering::SeqCst);
                progress.bulk_finished_at_first_small.lock().unwrap().get_or_insert(bulk_done);
                tokio::time::sleep(Duration::from_millis(5)).await;
                if progress.small_finished.fetch_add(1, Ordering::SeqCst) + 1 == SMALL {
                    *progress.bulk_finished_at_last_small.lock().unwrap() =
                        Some(progress.bulk_finished.load(Ordering::SeqCst));
                }
                Ok(())
            }
        });
    }
    app.state.jobs.enqueue_many(&app.state.db, bulk_jobs(BULK)).await.unwrap();
    let pools: Vec<Workers> =
        ["node-a", "node-b"].iter().map(|name| workers_of(&app.state, name, registry.clone(), WORKERS / 2)).collect();
    wait_for_bulk_running(&progress, WORKERS).await;

    let small: Vec<NewJob> = (0..SMALL).map(|n| NewJob::new("test.small", &json!({ "n": n }))).collect();
    app.state.jobs.enqueue_many(&app.state.db, small).await.unwrap();
    let queued_at = progress.bulk_finished.load(Ordering::SeqCst);
    eventually(Duration::from_secs(60), "every small job to finish", || async {
        (progress.small_finished.load(Ordering::SeqCst) == SMALL).then_some(())
    })
    .await;
    let first = progress.bulk_finished_at_first_small.lock().unwrap().unwrap_or(usize::MAX);
    let last = progress.bulk_finished_at_last_small.lock().unwrap().unwrap_or(usize::MAX);
    eprintln!(
        "bulk jobs finished: {queued_at} when the small ones were queued, {first} at the first small start, {last} at the last small finish"
    );
    assert!(
        first - queued_at <= WORKERS,
        "the small kind waited for more than one bulk job per worker: {first} - {queued_at}"
    );
    assert!(last < BULK / 4, "all small jobs finish before a quarter of the bulk ones: {last} of {BULK} had finished");
    for pool in pools {
        pool.shutdown().await;
    }
    app.stop().await;
}

/// The acceptance: 200 bulk jobs queued, then 100 intake messages, on a node with
/// 4 workers running the binary's job kinds plus the bulk kind. Every message is stored
/// before a quarter of the bulk jobs have finished (each bulk job takes 500 ms: in id
/// order the messages would wait for all 200, 25 s).
#[tokio::test]
async fn intake_messages_are_stored_while_200_bulk_jobs_wait() {
    const BULK: usize = 200;
    const MESSAGES: usize = 100;
    const WORKERS: usize = 4;
    let env = TestEnv::new().await;
    // The node's own workers are off: the test's pool runs every kind, bulk included.
    let app = TestApp::spawn_with(&env, |config| config.jobs.job_workers = 0).await;
    let progress = Arc::new(Progress::default());
    let mut registry = emporium::app::job_registry(&app.node);
    register_bulk(&mut registry, &progress, Duration::from_millis(500));
    app.state.jobs.enqueue_many(&app.state.db, bulk_jobs(BULK)).await.unwrap();
    let pool = workers_of(&app.state, "node-fair", registry, WORKERS);
    wait_for_bulk_running(&progress, WORKERS).await;

    let messages: Vec<serde_json::Value> = (0..MESSAGES)
        .map(|n| {
            let genre = if n % 2 == 0 { "scifi" } else { "romance" };
            json!({ "id": format!("fair-{n}"), "title": format!("Fair {n}"), "author": "T", "year": "2026", "genre": genre, "summary": "s" })
        })
        .collect();
    let response = app.http.post(app.url("/v1/intake")).json(&messages).send().await.expect("intake request");
    assert_eq!(response.status(), 202, "{}", response.text().await.unwrap_or_default());
    let queued_at = progress.bulk_finished.load(Ordering::SeqCst);

    #[derive(FromQueryResult)]
    struct Count {
        n: i64,
    }
    let stored_at = eventually(Duration::from_secs(60), "every message stored", || async {
        let sql = "SELECT COUNT(*) AS n FROM intake_messages WHERE status = 'stored'";
        let stored = Count::find_by_statement(stmt(&app.state.db, sql, [])).one(&app.state.db).await.unwrap();
        (stored.map_or(0, |row| row.n) == MESSAGES as i64).then(|| progress.bulk_finished.load(Ordering::SeqCst))
    })
    .await;
    eprintln!("bulk jobs finished: {queued_at} when the messages were queued, {stored_at} when all were stored");
    assert!(
        stored_at < BULK / 4,
        "all messages stored before a quarter of the bulk jobs: {stored_at} of {BULK} had finished"
    );
    pool.shutdown().await;
    app.stop().await;
}
