//! GraphQL surface of the intake pipeline: thin resolvers over `submit` and `read`.

use std::collections::HashMap;

use async_graphql::{Context, ID, InputObject, Object, SchemaBuilder, SimpleObject, Subscription};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};

use super::{
    Intake,
    config::genre_key,
    model::{IntakeStatus, MessageRow, Notice},
    notices::{self, IntakeNoticeOrderField, Start},
    read::{self, IntakeMessageOrderField, MessageFilter},
    submit::{self, StandardMessage},
};
use crate::{
    db::to_datetime,
    error::{AppError, AppResult},
    global_id,
    jobs::graphql::Job,
    paging::{Cursor, OrderDirection, Page, PageArgs, Paged, Totals, connection, decode_cursor, encode_cursor},
};

/// The intake's handle inside a resolver (every schema that serves is built with it).
fn state<'a>(ctx: &Context<'a>) -> &'a Intake {
    ctx.data_unchecked::<Intake>()
}

#[derive(Clone)]
pub struct IntakeMessage(MessageRow);

/// A message submitted to the intake pipeline: queued, then written as
/// `<title>.json` to the bucket of its genre.
///
/// Object names: letters and digits of any script, space and `- _ . , ' ( ) ! &
/// +` are kept; every other character (`/`, `\`, `%`, `~`, control characters, …) is
/// percent-encoded per UTF-8 byte, and so is a leading `.` or space, so no title can
/// name a path outside its bucket. Names longer than 200 bytes are cut and end with `~`
/// and 32 hex digits of the title's hash. Case is kept: `Dune` and `DUNE` are two
/// objects (object stores are case-sensitive). Messages of one genre are written in
/// submission order, so when two share a title the later one is the object's content.
#[Object]
impl IntakeMessage {
    /// The submission's global id (opaque; every submission gets one, even when the
    /// client's `messageId` repeats; `node(id:)` refetches it).
    pub async fn id(&self) -> ID {
        global_id::of::<Self>(self.0.id)
    }

    /// The client's own `id` field, as text (not unique: resubmitting a message queues it again).
    async fn message_id(&self) -> Option<&str> {
        self.0.message_id.as_deref()
    }

    /// The title as submitted; it names the object (see `key`).
    async fn title(&self) -> &str {
        &self.0.title
    }

    /// The genre as submitted; it chooses the bucket (matched case-insensitively).
    async fn genre(&self) -> &str {
        &self.0.genre
    }

    /// Where the message is in the pipeline.
    async fn status(&self) -> IntakeStatus {
        IntakeStatus::from_column(&self.0.status)
    }

    /// The bucket the message was written to (set when `STORED`).
    async fn bucket(&self) -> Option<&str> {
        self.0.bucket.as_deref()
    }

    /// The object's name inside its bucket: `<title>.json`, encoded as described on this type.
    /// The object is at `<bucket>/<key>` under the object store's root.
    async fn key(&self) -> &str {
        &self.0.object_name
    }

    /// Why the message will not be written (set when `FAILED`).
    async fn reason(&self) -> Option<&str> {
        self.0.reason.as_deref()
    }

    /// The message's JSON exactly as submitted: the object's content. (Messages submitted
    /// through GraphQL are written as compact JSON with the standard fields in the standard order.)
    async fn json(&self) -> &str {
        &self.0.body
    }

    /// The global id of the durable job that writes this message (see `job(id)`).
    async fn job_id(&self) -> ID {
        global_id::of::<Job>(self.0.job_id)
    }

    /// When the message was queued.
    async fn submitted_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.submitted_at)
    }

    /// When the message became `STORED` or `FAILED`; null while `QUEUED`.
    async fn processed_at(&self) -> Option<DateTime<Utc>> {
        self.0.processed_at.map(to_datetime)
    }
}

#[derive(Clone)]
pub struct IntakeNotice(Notice);

/// The result notice of a stored message: an entry of the durable output queue. Every
/// stored message has exactly one, recorded in the transaction that stored it; the queue
/// is read with `intakeNotices` (or `GET /v1/intake/notices`) and followed with
/// `intakeProcessed`.
#[Object]
impl IntakeNotice {
    /// The notice's global id (opaque; one notice per stored message, never reused):
    /// de-duplicate by it. `node(id:)` refetches it.
    pub async fn id(&self) -> ID {
        global_id::of::<Self>(self.0.sequence)
    }

    /// The notice's position in the queue: notices are committed in this order, so
    /// numbers only grow (some may be skipped). REST's `after` takes it.
    async fn sequence(&self) -> i64 {
        self.0.sequence
    }

    /// The notice's position as a cursor of queue order: pass it as `after` to
    /// `intakeProcessed`, or to `intakeNotices` in queue order, to go on after this notice.
    async fn cursor(&self) -> String {
        encode_cursor(&notices::queue_order(), &Cursor::by_id(self.0.sequence))
    }

    /// The global id of the stored message (`IntakeMessage.id`).
    async fn intake_message_id(&self) -> ID {
        global_id::of::<IntakeMessage>(self.0.intake_message_id)
    }

    /// The client's own `id` field.
    async fn message_id(&self) -> Option<&str> {
        self.0.message_id.as_deref()
    }

    /// The message's title, as submitted.
    async fn title(&self) -> &str {
        &self.0.title
    }

    /// The message's genre, as submitted.
    async fn genre(&self) -> &str {
        &self.0.genre
    }

    /// The bucket the file was written to.
    async fn bucket(&self) -> &str {
        &self.0.bucket
    }

    /// The file's name inside the bucket (`<title>.json`, encoded).
    async fn key(&self) -> &str {
        &self.0.object_name
    }

    /// When the file was written (and the notice recorded).
    async fn stored_at(&self) -> DateTime<Utc> {
        to_datetime(self.0.stored_at)
    }
}

/// Messages per status, cluster-wide.
#[derive(Debug, Clone, SimpleObject)]
pub struct IntakeCounts {
    /// Messages accepted and not written yet.
    pub queued: i64,
    /// Messages written to their bucket.
    pub stored: i64,
    /// Messages that will not be written (the dead-letter list).
    pub failed: i64,
}

/// A message in the standard shape. `title` and `genre` must be non-blank; no field may
/// contain NUL. (Over REST, `id` and `year` may also be integers.)
#[derive(Debug, Clone, InputObject)]
pub struct IntakeMessageInput {
    /// The client's own message id (stored as `messageId`; not unique), at most 256
    /// characters.
    pub id: Option<String>,
    /// Becomes the file name `<title>.json` (at most 10,000 characters).
    pub title: String,
    /// At most 1,000 characters.
    pub author: Option<String>,
    /// As text (e.g. `"1965"`), at most 32 characters.
    pub year: Option<String>,
    /// Chooses the bucket (`INTAKE_BUCKETS`), at most 100 characters; an unknown genre is
    /// accepted and ends `FAILED`.
    pub genre: String,
    /// At most 100,000 characters.
    pub summary: Option<String>,
}

impl From<IntakeMessageInput> for StandardMessage {
    fn from(input: IntakeMessageInput) -> Self {
        Self {
            id: input.id,
            title: input.title,
            author: input.author,
            year: input.year,
            genre: input.genre,
            summary: input.summary,
        }
    }
}

/// How to order intake messages: `{field: CREATED_AT, direction: DESC}` is the newest
/// first.
#[derive(InputObject, Debug, Clone, Copy, Default)]
pub struct IntakeMessageOrder {
    /// The field to order by.
    pub field: IntakeMessageOrderField,
    /// ASC (oldest first) when omitted.
    #[graphql(default)]
    pub direction: OrderDirection,
}

/// How to order intake notices: `{field: SEQUENCE, direction: DESC}` is the newest first.
#[derive(InputObject, Debug, Clone, Copy, Default)]
pub struct IntakeNoticeOrder {
    /// The field to order by.
    pub field: IntakeNoticeOrderField,
    /// ASC (queue order, oldest first) when omitted.
    #[graphql(default)]
    pub direction: OrderDirection,
}

#[derive(Default)]
pub struct IntakeQuery;

#[Object]
impl IntakeQuery {
    /// Intake messages, oldest first unless `orderBy` says otherwise. `status: FAILED` is the dead-letter list; `messageId`
    /// finds the submissions of one client message id.
    // Each parameter is an argument of the GraphQL field: the schema fixes how many.
    #[allow(clippy::too_many_arguments)]
    async fn intake_messages(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Forward paging: the page size, 0 to PAGE_MAX (100 by default); 20 when neither \
                          `first` nor `last` is given. Beyond that range, or together with `last`: BAD_USER_INPUT.")]
        first: Option<i32>,
        #[graphql(desc = "Forward paging: the items after this cursor (the previous page's \
                          `pageInfo.endCursor`); from the start when omitted. A malformed cursor, or one made for \
                          another `orderBy`, is BAD_USER_INPUT.")]
        after: Option<String>,
        #[graphql(desc = "Backward paging: the page size counted back from `before` (or from the end), 0 to \
                          PAGE_MAX; the page's items still come in the list's order. Beyond that range, or \
                          together with `first`: BAD_USER_INPUT.")]
        last: Option<i32>,
        #[graphql(desc = "Backward paging: the items before this cursor (the next page's \
                          `pageInfo.startCursor`); up to the end when omitted. A malformed cursor, or one made for \
                          another `orderBy`, is BAD_USER_INPUT.")]
        before: Option<String>,
        #[graphql(desc = "The list's order; creation order (`{field: CREATED_AT, direction: ASC}`) when omitted. \
                          A cursor belongs to one ordering: after changing it, start again from the first page.")]
        order_by: Option<IntakeMessageOrder>,
        #[graphql(desc = "Only messages in this status; all when omitted.")] status: Option<IntakeStatus>,
        #[graphql(desc = "Only submissions with exactly this client message id.")] message_id: Option<String>,
    ) -> async_graphql::Result<Paged<IntakeMessage>> {
        let state = state(ctx);
        if let Some(reason) = message_id.as_deref().and_then(crate::db::unstorable_text) {
            // No stored message can have such an id: refused, not an internal error.
            return Err(AppError::bad_input(format!("`messageId` {reason}")).into());
        }
        let order = order_by.unwrap_or_default();
        let page =
            Page::new(PageArgs { first, after, last, before }, state.page_max, order.field.ordering(order.direction))?;
        let filter = MessageFilter { status, message_id };
        let rows = read::list(&state.db, &filter, &page).await?;
        let db = state.db.clone();
        let totals = Totals::new(move || async move { read::count(&db, &filter).await });
        let messages = rows.into_iter().map(IntakeMessage).collect();
        Ok(connection(messages, &page, |message: &IntakeMessage| Cursor::by_id(message.0.id), totals))
    }

    /// One intake message by our id; null when there is none (a malformed id is
    /// BAD_USER_INPUT).
    async fn intake_message(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The message's global id (`IntakeMessage.id`).")] id: ID,
    ) -> async_graphql::Result<Option<IntakeMessage>> {
        let id = global_id::parse::<IntakeMessage>(&id)?;
        Ok(read::get(&state(ctx).db, id).await?.map(IntakeMessage))
    }

    /// The output queue: one notice per stored message, in the order they were committed
    /// (`sequence`) unless `orderBy` says otherwise. A consumer pages forward with
    /// `first`/`after` from its last cursor and never misses a notice: one committed later
    /// always comes after every cursor handed out before. `intakeProcessed(after:)`
    /// follows the same queue live.
    async fn intake_notices(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Forward paging: the page size, 0 to PAGE_MAX (100 by default); 20 when neither \
                          `first` nor `last` is given. Beyond that range, or together with `last`: BAD_USER_INPUT.")]
        first: Option<i32>,
        #[graphql(desc = "Forward paging: the notices after this cursor (the previous page's \
                          `pageInfo.endCursor`, or a notice's `cursor`); from the start of the queue when omitted. \
                          A malformed cursor, or one made for another `orderBy`, is BAD_USER_INPUT.")]
        after: Option<String>,
        #[graphql(desc = "Backward paging: the page size counted back from `before` (or from the end), 0 to \
                          PAGE_MAX; the page's notices still come in the list's order. Beyond that range, or \
                          together with `first`: BAD_USER_INPUT.")]
        last: Option<i32>,
        #[graphql(desc = "Backward paging: the notices before this cursor (the next page's \
                          `pageInfo.startCursor`); up to the end when omitted. A malformed cursor, or one made for \
                          another `orderBy`, is BAD_USER_INPUT.")]
        before: Option<String>,
        #[graphql(desc = "The list's order; queue order (`{field: SEQUENCE, direction: ASC}`) when omitted. \
                          A cursor belongs to one ordering: after changing it, start again from the first page.")]
        order_by: Option<IntakeNoticeOrder>,
    ) -> async_graphql::Result<Paged<IntakeNotice>> {
        let state = state(ctx);
        let order = order_by.unwrap_or_default();
        let page =
            Page::new(PageArgs { first, after, last, before }, state.page_max, order.field.ordering(order.direction))?;
        let rows = notices::list(&state.db, &page).await?;
        let db = state.db.clone();
        let totals = Totals::new(move || async move { notices::count(&db).await });
        let notices = rows.into_iter().map(IntakeNotice).collect();
        Ok(connection(notices, &page, |notice: &IntakeNotice| Cursor::by_id(notice.0.sequence), totals))
    }

    /// How many messages are queued, stored and failed.
    async fn intake_counts(&self, ctx: &Context<'_>) -> async_graphql::Result<IntakeCounts> {
        let counts = read::counts(&state(ctx).db).await?;
        let get = |status: IntakeStatus| counts.get(status.as_str()).copied().unwrap_or(0);
        Ok(IntakeCounts {
            queued: get(IntakeStatus::Queued),
            stored: get(IntakeStatus::Stored),
            failed: get(IntakeStatus::Failed),
        })
    }
}

impl IntakeQuery {
    /// Describes the connection this domain's list returns: async-graphql generates the
    /// type, so no doc comment reaches it.
    pub fn describe_connections<Q, M, S>(builder: SchemaBuilder<Q, M, S>) -> SchemaBuilder<Q, M, S> {
        builder
            .override_output_type_description::<Paged<IntakeMessage>>(
                "A page of intake messages in the order asked (`orderBy`; oldest first by default): `nodes` \
                 (or `edges`, each with its cursor), `pageInfo` (`endCursor` to pass as `after` for the next \
                 page, `startCursor` as `before` for the previous one), and `totalCount`.",
            )
            .override_output_type_description::<Paged<IntakeNotice>>(
                "A page of the intake's output queue in the order asked (`orderBy`; queue order by default): \
                 `nodes` (or `edges`, each with its cursor), `pageInfo` (`endCursor` to pass as `after` for the \
                 next page, or to `intakeProcessed` to follow the queue live), and `totalCount`.",
            )
    }
}

#[derive(Default)]
pub struct IntakeMutation;

#[Object]
impl IntakeMutation {
    /// Queues messages for writing (like `POST /v1/intake`) and returns them, `QUEUED`, in
    /// order, as soon as they are durably queued. All or nothing: if any message is invalid,
    /// none is queued and the error (BAD_USER_INPUT) names each bad field as
    /// `messages[i].field`.
    async fn submit_intake(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "1 to 10,000 messages, together at most INTAKE_MAX_BODY_BYTES (10 MiB by default) as JSON.")]
        messages: Vec<IntakeMessageInput>,
    ) -> async_graphql::Result<Vec<IntakeMessage>> {
        let state = state(ctx);
        let max_bytes = state.config.intake_max_body_bytes;
        let messages =
            submit::from_standard_messages(messages.into_iter().map(StandardMessage::from).collect(), max_bytes)?;
        let rows = submit::queue(state, messages).await?;
        Ok(rows.into_iter().map(IntakeMessage).collect())
    }
}

#[derive(Default)]
pub struct IntakeSubscription;

#[Subscription]
impl IntakeSubscription {
    /// The output queue, live: a notice for each message stored, on whichever node wrote
    /// it, in queue order. Without `after` (or `fromStart`) it starts with the notices
    /// stored from now on. With `after` it first replays every notice after that cursor
    /// and then goes on live, with no gap and no repeat at the switch: a consumer that
    /// reconnects with the `cursor` of the last notice it handled misses nothing (and can
    /// still de-duplicate by `id`). `genre` narrows to one genre.
    async fn intake_processed(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Replay from here: a notice's `cursor`, or `intakeNotices`' `pageInfo.endCursor`; the \
                          notices after it come first, then the live ones. A malformed cursor, or one of another \
                          `orderBy` than queue order, is BAD_USER_INPUT.")]
        after: Option<String>,
        #[graphql(desc = "true: replay the whole queue from its first notice, then go on live (for a consumer \
                          that has no cursor yet). Together with `after`: BAD_USER_INPUT.")]
        from_start: Option<bool>,
        #[graphql(desc = "Only notices of this genre, ignoring case and surrounding spaces; every genre when \
                          omitted. Blank is BAD_USER_INPUT.")]
        genre: Option<String>,
    ) -> async_graphql::Result<impl Stream<Item = IntakeNotice>> {
        let wanted = genre.map(|genre| genre_key(&genre));
        if wanted.as_deref() == Some("") {
            return Err(AppError::bad_input("`genre` must not be empty").into());
        }
        let start = match (after, from_start.unwrap_or(false)) {
            (Some(_), true) => {
                return Err(AppError::bad_input("give `after` or `fromStart: true`, not both").into());
            }
            (Some(cursor), false) => Start::After(decode_cursor(&cursor, &notices::queue_order())?.id),
            (None, true) => Start::After(0),
            (None, false) => Start::Now,
        };
        let notices = notices::follow(state(ctx), start).await?;
        Ok(notices.filter_map(move |notice| {
            let keep = wanted.as_ref().is_none_or(|wanted| genre_key(&notice.genre) == *wanted);
            async move { keep.then_some(IntakeNotice(notice)) }
        }))
    }
}

/// Intake messages by row (`node`, `nodes`): one statement.
pub async fn messages_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, IntakeMessage>> {
    let found = read::by_ids(&state(ctx).db, rows).await?;
    Ok(found.into_iter().map(|row| (row.id, IntakeMessage(row))).collect())
}

/// Intake notices by row (their sequence; `node`, `nodes`): one statement.
pub async fn notices_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, IntakeNotice>> {
    let found = notices::by_sequences(&state(ctx).db, rows).await?;
    Ok(found.into_iter().map(|notice| (notice.sequence, IntakeNotice(notice))).collect())
}
