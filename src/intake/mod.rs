//! The intake pipeline (seed 001): messages come in on a durable queue, each is written
//! as `<title>.json` to the bucket of its genre, and a result notice is recorded and
//! pushed to subscribers.
//!
//! **Input.** `POST /v1/intake` (one message object or an array) and the GraphQL mutation
//! `submitIntake` validate every message first — `title` and `genre` non-blank strings,
//! `id` and `year` strings or integers (REST; the seed sends `"1960"`), `author` and
//! `summary` strings, sizes bounded, no NUL — and refuse the whole request (400 /
//! `BAD_USER_INPUT`, naming `messages[i].field`) if any is invalid. Otherwise, in one
//! transaction, they insert the message rows and their jobs and answer 202 with our ids.
//! An unknown genre is not a submission error: configuration decides buckets, and can
//! change, so the message is queued and ends `FAILED` ("no bucket for genre X").
//!
//! **Ids.** Every submission gets our own id. The client's `id` is kept as `messageId`
//! and is not unique: a resubmitted message is processed again (it rewrites the same
//! file with its content — the seed's FIFO queues did not promise deduplication beyond
//! a short window either).
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
//! are written as compact JSON with the seed's fields in the seed's order.
//!
//! **Object names.** See [`names`]: letters, digits and a few punctuation characters are
//! kept, everything else (`/`, `\`, `%`, control characters, a leading `.`) is
//! percent-encoded, long names are cut and end with a hash, case is kept. No title can
//! name anything outside its bucket; NUL is refused at submission.
//!
//! **Notices and exactly-once effects.** After a batch's writes, one statement moves the
//! written messages from `queued` to `stored` (bucket, key, time) and returns exactly the
//! rows it changed; those become the notices, published to `intakeProcessed` on every node.
//! A job rerun after a crash rewrites the same content to the same keys and changes no
//! already-stored row, so each message is stored and announced once. The subscription is
//! a live feed; `intakeMessages(status: STORED)` is the durable record.
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
mod process;
mod read;
mod submit;

pub use config::{BucketRoute, IntakeConfig};
pub use graphql::{IntakeMutation, IntakeQuery, IntakeSubscription};
pub use http::routes;
pub use model::{IntakeStatus, Notice, PROCESSED_TOPIC};
pub use process::{STORE_KIND, object_path, reconcile};
pub use read::health;

use crate::jobs::{JobRegistry, periodic::Periodic};

/// The job that writes batches of messages.
pub fn register_jobs(registry: &mut JobRegistry) {
    registry.register(STORE_KIND, process::store_batch);
}

/// The sweep that dead-letters messages whose job was lost.
pub fn periodic(_config: &crate::config::Config) -> Vec<Periodic> {
    vec![Periodic::new("intake.reconcile", "40 * * * * *", |state| async move { process::reconcile(&state).await })]
}
