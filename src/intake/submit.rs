//! Submission: validate every message, then queue them all in one transaction (messages
//! and the jobs that write them), so a request is accepted whole or not at all.

use sea_orm::{ConnectionTrait as _, TransactionTrait as _, sea_query::Query};
use serde::Serialize;
use serde_json::{Map, value::RawValue};

use super::{
    Intake,
    config::genre_key,
    entity::intake_message::{self, Column},
    model::{IntakeStatus, MessageRow},
    names::object_name,
    process::{STORE_KIND, StoreBatch, ordering_key},
};
use crate::{
    db::now_ms,
    error::{AppError, AppResult},
    jobs::NewJob,
};

/// Most messages in one request.
pub const MAX_MESSAGES: usize = 10_000;
pub const MAX_TITLE_CHARS: usize = 10_000;
pub const MAX_GENRE_CHARS: usize = 100;
pub const MAX_ID_CHARS: usize = 256;
const MAX_AUTHOR_CHARS: usize = 1_000;
const MAX_YEAR_CHARS: usize = 32;
const MAX_SUMMARY_CHARS: usize = 100_000;
/// Errors listed in one refusal; the rest are summarized.
const MAX_REPORTED_ERRORS: usize = 5;

/// A validated message, ready to be queued.
#[derive(Debug, Clone)]
pub struct NewMessage {
    pub message_id: Option<String>,
    pub title: String,
    pub genre: String,
    /// The file's content: the JSON as submitted.
    pub body: String,
}

/// The standard message shape, for messages that arrive as GraphQL input: they are written
/// as this compact JSON, fields in the standard order, absent optional fields left out.
#[derive(Debug, Clone, Serialize)]
pub struct StandardMessage {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    pub title: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub author: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub year: Option<String>,
    pub genre: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub summary: Option<String>,
}

/// Parses a `POST /v1/intake` body: one message object or an array of them. Each
/// message keeps its exact bytes as sent, which become the file's content.
pub fn parse_body(bytes: &[u8]) -> AppResult<Vec<NewMessage>> {
    let raw: &RawValue = serde_json::from_slice(bytes)
        .map_err(|error| AppError::bad_input(format!("the body is not valid JSON: {error}")))?;
    let items: Vec<&RawValue> = match raw.get().as_bytes().first() {
        Some(b'[') => serde_json::from_str(raw.get())
            .map_err(|error| AppError::bad_input(format!("the body is not valid JSON: {error}")))?,
        Some(b'{') => vec![raw],
        _ => return Err(AppError::bad_input("the body must be a message object or an array of message objects")),
    };
    check_count(items.len())?;
    let mut errors = Vec::new();
    let mut messages = Vec::with_capacity(items.len());
    for (index, item) in items.iter().enumerate() {
        let fields = match serde_json::from_str::<Map<String, serde_json::Value>>(item.get()) {
            Ok(fields) => fields,
            Err(_) => {
                errors.push(format!("messages[{index}]: must be a JSON object"));
                continue;
            }
        };
        match validate(index, &fields) {
            Ok(valid) => messages.push(valid.into_message(item.get().to_string())),
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    refuse_if_any(errors)?;
    Ok(messages)
}

/// Validates messages that arrived as GraphQL input (the same rules as the REST route,
/// the same `INTAKE_MAX_BODY_BYTES`: `max_bytes` for all messages as written).
pub fn from_standard_messages(inputs: Vec<StandardMessage>, max_bytes: usize) -> AppResult<Vec<NewMessage>> {
    check_count(inputs.len())?;
    let mut errors = Vec::new();
    let mut messages = Vec::with_capacity(inputs.len());
    let mut total_bytes = 0usize;
    for (index, input) in inputs.into_iter().enumerate() {
        let body = serde_json::to_string(&input).map_err(AppError::internal)?;
        total_bytes = total_bytes.saturating_add(body.len());
        if total_bytes > max_bytes {
            return Err(AppError::PayloadTooLarge(format!(
                "the messages exceed INTAKE_MAX_BODY_BYTES ({max_bytes} bytes) from messages[{index}] on"
            )));
        }
        let fields = match serde_json::to_value(&input).map_err(AppError::internal)? {
            serde_json::Value::Object(fields) => fields,
            _ => Map::new(),
        };
        match validate(index, &fields) {
            Ok(valid) => messages.push(valid.into_message(body)),
            Err(mut problems) => errors.append(&mut problems),
        }
    }
    refuse_if_any(errors)?;
    Ok(messages)
}

fn check_count(count: usize) -> AppResult<()> {
    if count == 0 {
        return Err(AppError::bad_input("no messages: send a message object or a non-empty array"));
    }
    if count > MAX_MESSAGES {
        return Err(AppError::bad_input(format!("{count} messages in one request; at most {MAX_MESSAGES}")));
    }
    Ok(())
}

fn refuse_if_any(mut errors: Vec<String>) -> AppResult<()> {
    if errors.is_empty() {
        return Ok(());
    }
    let more = errors.len().saturating_sub(MAX_REPORTED_ERRORS);
    errors.truncate(MAX_REPORTED_ERRORS);
    let mut message = format!("invalid intake message, nothing was queued: {}", errors.join("; "));
    if more > 0 {
        message.push_str(&format!("; and {more} more"));
    }
    Err(AppError::bad_input(message))
}

/// The fields the pipeline itself needs.
struct Valid {
    message_id: Option<String>,
    title: String,
    genre: String,
}

impl Valid {
    fn into_message(self, body: String) -> NewMessage {
        NewMessage { message_id: self.message_id, title: self.title, genre: self.genre, body }
    }
}

/// The field rules: `title` and `genre` are required non-blank strings; `id` and
/// `year` are strings or integers; `author` and `summary` are strings; optional fields may
/// be null; other fields are kept as they are. No string may contain NUL (U+0000): no
/// real message has one and databases cannot store it.
fn validate(index: usize, fields: &Map<String, serde_json::Value>) -> Result<Valid, Vec<String>> {
    use serde_json::Value;
    let mut errors = Vec::new();
    let mut problem = |field: &str, what: String| errors.push(format!("messages[{index}].{field}: {what}"));

    let mut required = |field: &str, max: usize| -> Option<String> {
        match fields.get(field) {
            None | Some(Value::Null) => problem(field, "is required".into()),
            Some(Value::String(text)) if text.trim().is_empty() => problem(field, "must not be empty".into()),
            Some(Value::String(text)) => match text_problem(text, max) {
                Some(what) => problem(field, what),
                None => return Some(text.clone()),
            },
            Some(other) => problem(field, format!("must be a string, not {}", kind(other))),
        }
        None
    };
    let title = required("title", MAX_TITLE_CHARS);
    let genre = required("genre", MAX_GENRE_CHARS);

    let mut message_id = None;
    for (field, max, integers) in [
        ("id", MAX_ID_CHARS, true),
        ("year", MAX_YEAR_CHARS, true),
        ("author", MAX_AUTHOR_CHARS, false),
        ("summary", MAX_SUMMARY_CHARS, false),
    ] {
        let text = match fields.get(field) {
            None | Some(Value::Null) => continue,
            Some(Value::String(text)) => match text_problem(text, max) {
                Some(what) => {
                    problem(field, what);
                    continue;
                }
                None => text.clone(),
            },
            Some(Value::Number(number)) if integers && (number.is_i64() || number.is_u64()) => number.to_string(),
            Some(other) => {
                let expected = if integers { "a string or an integer" } else { "a string" };
                problem(field, format!("must be {expected}, not {}", kind(other)));
                continue;
            }
        };
        if field == "id" {
            message_id = Some(text);
        }
    }
    match (title, genre) {
        (Some(title), Some(genre)) if errors.is_empty() => Ok(Valid { message_id, title, genre }),
        _ => Err(errors),
    }
}

fn text_problem(text: &str, max: usize) -> Option<String> {
    if let Some(reason) = crate::db::unstorable_text(text) {
        return Some(reason.into());
    }
    let chars = text.chars().count();
    (chars > max).then(|| format!("is {chars} characters long; at most {max}"))
}

fn kind(value: &serde_json::Value) -> &'static str {
    match value {
        serde_json::Value::Null => "null",
        serde_json::Value::Bool(_) => "a boolean",
        serde_json::Value::Number(number) if number.is_f64() => "a fractional number",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "an array",
        serde_json::Value::Object(_) => "an object",
    }
}

/// Queues validated messages: one job per genre per `INTAKE_BATCH_SIZE` messages, each in
/// its genre's FIFO group, and the message rows pointing at their job — one transaction.
/// Returns the rows in submission order.
pub async fn queue(state: &Intake, messages: Vec<NewMessage>) -> AppResult<Vec<MessageRow>> {
    check_count(messages.len())?;
    let batch = state.config.intake_batch_size as usize;

    // Jobs: per genre, in order of first appearance, chunks of at most `batch` messages.
    let mut genres: Vec<(String, Vec<usize>)> = Vec::new();
    for (index, message) in messages.iter().enumerate() {
        let key = genre_key(&message.genre);
        match genres.iter_mut().find(|(genre, _)| *genre == key) {
            Some((_, members)) => members.push(index),
            None => genres.push((key, vec![index])),
        }
    }
    let mut plans: Vec<(String, &[usize])> = Vec::new();
    for (genre, members) in &genres {
        plans.extend(members.chunks(batch).map(|chunk| (genre.clone(), chunk)));
    }
    let jobs: Vec<NewJob> = plans
        .iter()
        .map(|(genre, _)| NewJob::new(STORE_KIND, &StoreBatch { genre: genre.clone() }).ordered_by(ordering_key(genre)))
        .collect();

    let now = now_ms();
    let txn = state.durable_db.begin().await?;
    // Ids grow in VALUES order; sorting makes that explicit whatever order RETURNING uses.
    let mut job_ids = state.jobs.enqueue_many(&txn, jobs).await?;
    job_ids.sort_unstable();
    let mut job_of = vec![0i64; messages.len()];
    for ((_, members), job_id) in plans.iter().zip(&job_ids) {
        for &index in *members {
            job_of[index] = *job_id;
        }
    }

    let names: Vec<String> = messages.iter().map(|message| object_name(&message.title)).collect();
    let mut ids = Vec::with_capacity(messages.len());
    const ROWS_PER_INSERT: usize = 500;
    for (chunk_number, chunk) in messages.chunks(ROWS_PER_INSERT).enumerate() {
        let offset = chunk_number * ROWS_PER_INSERT;
        let mut insert = Query::insert();
        insert.into_table(intake_message::Entity).columns([
            Column::MessageId,
            Column::Title,
            Column::Genre,
            Column::ObjectName,
            Column::Body,
            Column::Status,
            Column::JobId,
            Column::SubmittedAt,
        ]);
        for (i, message) in chunk.iter().enumerate() {
            insert
                .values([
                    message.message_id.clone().into(),
                    message.title.clone().into(),
                    message.genre.clone().into(),
                    names[offset + i].clone().into(),
                    message.body.clone().into(),
                    IntakeStatus::Queued.as_str().into(),
                    job_of[offset + i].into(),
                    now.into(),
                ])
                .map_err(|error| AppError::Internal(error.into()))?;
        }
        insert.returning(Query::returning().column(Column::Id));
        let mut rows = Vec::with_capacity(chunk.len());
        for row in txn.query_all(&insert).await? {
            rows.push(row.try_get::<i64>("", "id")?);
        }
        rows.sort_unstable();
        ids.extend(rows);
    }
    txn.commit().await?;
    if ids.len() != messages.len() {
        return Err(AppError::Internal(anyhow::anyhow!("queued {} of {} messages", ids.len(), messages.len())));
    }
    metrics::counter!("emporium_intake_submitted_total").increment(messages.len() as u64);

    Ok(messages
        .into_iter()
        .zip(names)
        .zip(ids.into_iter().zip(job_of))
        .map(|((message, object_name), (id, job_id))| MessageRow {
            id,
            message_id: message.message_id,
            title: message.title,
            genre: message.genre,
            object_name,
            body: message.body,
            status: IntakeStatus::Queued.as_str().into(),
            bucket: None,
            reason: None,
            job_id,
            submitted_at: now,
            processed_at: None,
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refusal(body: &str) -> String {
        match parse_body(body.as_bytes()) {
            Err(AppError::BadInput(message)) => message,
            other => panic!("expected a refusal for {body}, got {other:?}"),
        }
    }

    #[test]
    fn keeps_each_message_exactly_as_sent() {
        let body = "[ {\"id\": \"1\",  \"title\": \"A\", \"genre\": \"romance\", \"year\": 1960},\n{\"title\":\"B\",\"genre\":\"scifi\",\"extra\":[1, 2]} ]";
        let messages = parse_body(body.as_bytes()).expect("valid");
        assert_eq!(messages.len(), 2);
        assert_eq!(messages[0].body, "{\"id\": \"1\",  \"title\": \"A\", \"genre\": \"romance\", \"year\": 1960}");
        assert_eq!(messages[0].message_id.as_deref(), Some("1"));
        assert_eq!(messages[1].body, "{\"title\":\"B\",\"genre\":\"scifi\",\"extra\":[1, 2]}");
        let single = parse_body(b"  {\"id\": 7, \"title\": \"C\", \"genre\": \"x\"}\n").expect("valid");
        assert_eq!(single[0].body, "{\"id\": 7, \"title\": \"C\", \"genre\": \"x\"}");
        assert_eq!(single[0].message_id.as_deref(), Some("7"));
    }

    #[test]
    fn names_the_field_and_the_index_of_every_problem() {
        let message = refusal(r#"[{"title": "ok", "genre": "romance"}, {"title": "", "genre": "romance"}]"#);
        assert!(message.contains("messages[1].title: must not be empty"), "{message}");
        let message = refusal(r#"{"title": "x", "genre": 5}"#);
        assert!(message.contains("messages[0].genre: must be a string, not a number"), "{message}");
        let message = refusal(r#"{"title": "x", "genre": "g", "year": true, "id": 1.5, "author": 3}"#);
        assert!(message.contains("messages[0].year: must be a string or an integer, not a boolean"), "{message}");
        assert!(message.contains("messages[0].id: must be a string or an integer, not a fractional number"));
        assert!(message.contains("messages[0].author: must be a string, not a number"));
        assert!(refusal(r#"{"genre": "g"}"#).contains("messages[0].title: is required"));
        assert!(refusal(r#"{"title": "a\u0000b", "genre": "g"}"#).contains("messages[0].title: must not contain NUL"));
        let long = format!(r#"{{"title": "{}", "genre": "g"}}"#, "t".repeat(MAX_TITLE_CHARS + 1));
        assert!(refusal(&long).contains("messages[0].title: is 10001 characters long"));
        assert!(refusal(r#"[1]"#).contains("messages[0]: must be a JSON object"));
        assert!(refusal(r#""text""#).contains("must be a message object or an array"));
        assert!(refusal("[]").contains("no messages"));
        assert!(refusal("{\"title\": ").contains("not valid JSON"));
    }
}
