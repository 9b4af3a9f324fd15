//! The intake pipeline: messages come in on a durable queue, each is written
//! as `<title>.json` to the bucket of its genre, and a result notice is recorded on a
//! durable output queue that consumers read and follow.
//!
//! **Input.** `POST /v1/intake` (one message object or an array) and the GraphQL mutation
//! `submitIntake` validate every message first — `title` and `genre` non-blank strings,
//! `id` and `year` strings or integers (REST; clients send `"1960"`), `author` and
//! `summary` strings, sizes bounded, no NUL — and refuse the whole request (400 /
//! `BAD_USER_INPUT`, naming `messages[i].field`) if any is invalid. Otherwise, in one
//! transaction, they insert the message rows and their jobs and answer 202 with our ids.
//! An unknown genre is not a submission error: configuration decides buckets, and can
//! change, so the message is queued and ends `FAILED` ("no bucket for genre X").
//!
//! **Ids.** Every submission gets our own id. The client's `id` is kept as `messageId`
//! and is not unique: a resubmitted message is processed again (it rewrites the same
//! file with its content — FIFO queues do not promise deduplication beyond a short
//! window either).
//!
//! **Processing.** A submission is split per genre into jobs of at most
//! `INTAKE_BATCH_SIZE` messages, each job in the FIFO group `intake:<genre>`: jobs of one
//! genre run one at a time in submission order, so when two messages share a title the
//! later submission's content is the one left in the bucket. Batches keep that order cheap:
//! one claim, one read and one status update per batch instead of per message, and inside a
//! batch different titles are written concurrently (`INTAKE_WRITE_CONCURRENCY`) while equal
//! titles are written in order. A running job also writes the messages of the jobs queued
//! behind it in its group (up to 2,000, in their order): none of them could run before it
//! anyway, so a backlog drains in large batches and those jobs later find little or nothing
//! left. A message stays its own job's: only that job's last failed attempt fails it.
//! Different genres proceed in parallel. (Two genres mapped to the same bucket are ordered
//! independently of each other.)
//!
//! **Content.** The object is the message's JSON exactly as submitted (the bytes of that
//! object in the request body). Messages submitted through GraphQL have no such bytes; they
//! are written as compact JSON with the standard fields in the standard order.
//!
//! **Object names.** See [`names`]: letters, digits and a few punctuation characters are
//! kept, everything else (`/`, `\`, `%`, control characters, a leading `.`) is
//! percent-encoded, long names are cut and end with a hash, case is kept. No title can
//! name anything outside its bucket; NUL is refused at submission.
//!
//! **Notices and exactly-once effects.** After a batch's writes, one transaction moves the
//! written messages from `queued` to `stored` (bucket, key, time) and inserts one notice per
//! message it actually moved into `intake_notices`, the output queue, numbered by
//! `sequence`. A job rerun after a crash rewrites the same content to the same keys and
//! changes no already-stored row, so each message is stored once and has exactly one
//! notice (a unique key on the message makes a second one impossible). Notices commit in
//! sequence order (an advisory lock on Postgres, see `process::mark_stored`), so readers
//! of `sequence > cursor` — `GET /v1/intake/notices?after=`, `intakeNotices(after:)`,
//! `intakeProcessed(after:)` — never pass over one. The event bus only wakes subscribers
//! up; they read the table ([`notices::follow`]).
//!
//! **Failures.** Storage errors are retried by the queue with backoff; on the last attempt
//! the batch's remaining messages become `FAILED` with the error. A periodic sweep fails
//! messages whose job was lost otherwise (its node died on the last attempt). `FAILED` is
//! final (the dead-letter list); resubmitting is the way to try again.
//!
//! **Known limit.** Ordering relies on the job lease: a node frozen past its lease (no
//! heartbeat for `JOB_LEASE`) and then resuming could still finish an old write after a newer
//! one. Object stores offer no fencing for plain writes; the heartbeat makes this unlikely.

mod config;
pub mod entity;
mod graphql;
mod http;
mod model;
pub mod names;
mod notices;
mod process;
mod read;
mod submit;

pub use config::{BucketRoute, IntakeConfig};
pub use graphql::{
    IntakeMessage, IntakeMutation, IntakeNotice, IntakeQuery, IntakeSubscription, messages_by_row, notices_by_row,
};
pub use http::routes;
pub use model::{IntakeStatus, Notice};
pub use process::{NOTICE_ORDER_LOCK_KEY, STORE_KIND, object_path, reconcile};
pub use read::health;

use std::{sync::Arc, time::Duration};

use sea_orm::DatabaseConnection;

use crate::{
    events::EventBus,
    jobs::{JobQueue, JobRegistry, periodic::Periodic},
    state::AppState,
    storage::ObjectStorage,
};

/// The intake's handle: what it uses of the shared infrastructure and its settings.
#[derive(Clone)]
pub struct Intake {
    pub db: DatabaseConnection,
    /// Submissions commit here: their 202 promises they are stored (`db::connect_durable`).
    pub durable_db: DatabaseConnection,
    pub objects: ObjectStorage,
    pub jobs: JobQueue,
    pub events: EventBus,
    pub config: Arc<IntakeConfig>,
    /// `PAGE_MAX`.
    pub page_max: usize,
    /// `REQUEST_TIMEOUT`: how long `POST /v1/intake` may take to send its body.
    pub request_timeout: Duration,
}

impl Intake {
    pub fn new(shared: &AppState, config: IntakeConfig, request_timeout: Duration) -> Self {
        Self {
            db: shared.db.clone(),
            durable_db: shared.durable_db.clone(),
            objects: shared.objects.clone(),
            jobs: shared.jobs.clone(),
            events: shared.events.clone(),
            config: Arc::new(config),
            page_max: shared.page_max,
            request_timeout,
        }
    }
}

/// The job that writes batches of messages.
pub fn register_jobs(intake: &Intake, registry: &mut JobRegistry) {
    let intake = intake.clone();
    registry.register(STORE_KIND, move |ctx, batch| process::store_batch(intake.clone(), ctx, batch));
}

/// The sweep that dead-letters messages whose job was lost.
pub fn periodic(intake: &Intake) -> Vec<Periodic> {
    let intake = intake.clone();
    vec![Periodic::new("intake.reconcile", "40 * * * * *", move || {
        let intake = intake.clone();
        async move { process::reconcile(&intake).await }
    })]
}
