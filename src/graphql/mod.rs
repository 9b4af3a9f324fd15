//! The GraphQL schema: each domain contributes its query, mutation and subscription
//! objects, merged here. Cross-cutting rules live here too: the limits on what one
//! operation may ask ([`limits`]), bounded error lists, codes on every error, persisted
//! queries ([`persisted`]), and write protection (mutations need a valid token when
//! `API_TOKENS` is set, and POST).

pub mod limits;
mod nodes;
pub mod persisted;
mod system;

use std::sync::Arc;

use async_graphql::{
    MergedObject, MergedSubscription, Positioned, Request, Response, Schema, ServerError, ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe},
    parser::{
        parse_query,
        types::{ExecutableDocument, OperationType},
    },
};
use futures::{StreamExt as _, stream::BoxStream};
use tokio::sync::Semaphore;

use crate::{config::GraphqlConfig, error::AppError, node::Node};

/// Every read. Ids are global (Relay's object identification): opaque strings, unique
/// across types, that `node(id:)` resolves; an argument taking the id of one type refuses
/// a malformed id or another type's id with `BAD_USER_INPUT`. A lookup of one entity by id
/// (`node`, `product`, `offer`, `customer`, `record`, `purchase`, `upload`,
/// `intakeMessage`, `job`) is nullable: null when there is none, without an error. Paged lists (`…Connection`) are Relay cursor connections in creation
/// (id) order: `first` rows (20 when omitted, at most `PAGE_MAX`, 100 by default) after
/// the cursor `after`. Every error carries `extensions.code`.
#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    nodes::NodeQuery,
    system::SystemQuery,
    crate::catalog::graphql::CatalogQuery,
    crate::records::RecordsQuery,
    crate::intake::IntakeQuery,
    crate::uploads::UploadQuery,
    crate::feed::FeedQuery,
);

/// Every write. Refused over GET (`METHOD_NOT_ALLOWED`: use POST or the WebSocket) and,
/// when the server sets `API_TOKENS`, without `Authorization: Bearer <token>`
/// (`UNAUTHENTICATED`). Errors carry `extensions.code`: `BAD_USER_INPUT` (a malformed id,
/// or as each mutation says), `NOT_FOUND` and `CONFLICT` as each mutation says, and
/// `UPSTREAM_UNAVAILABLE` or `INTERNAL` for any.
#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    system::SystemMutation,
    crate::catalog::graphql::CatalogMutation,
    crate::records::RecordsMutation,
    crate::intake::IntakeMutation,
);

/// Live events, over a WebSocket at `/graphql/ws` only (subprotocol `graphql-transport-ws`,
/// or the older `graphql-ws`): over HTTP a subscription is `BAD_REQUEST`. Events published
/// while a client is disconnected are not replayed.
#[derive(MergedSubscription, Default)]
#[graphql(name = "Subscription")]
pub struct SubscriptionRoot(
    crate::catalog::graphql::CatalogSubscription,
    crate::intake::IntakeSubscription,
    crate::uploads::UploadSubscription,
);

pub type AppSchema = Schema<QueryRoot, MutationRoot, SubscriptionRoot>;

/// What the HTTP layer learned about the caller, for the write check.
#[derive(Debug, Clone, Copy)]
pub struct Caller {
    pub may_write: bool,
    /// Mutations over GET are refused: GET must stay safe (caches, prefetchers, CSRF).
    pub via_get: bool,
}

/// Which transport a schema serves. The cross-cutting rules (the checks before a document
/// runs, a code on every error after) are applied by the HTTP endpoint around each
/// request ([`admit`], [`finish_errors`]), so the HTTP schema carries no extension: with
/// any extension installed, async-graphql resolves every field through its instrumented
/// path (a `ResolveInfo` and a boxed hook chain per field), which cost a third of the
/// catalog query's time. Over a WebSocket, operations run inside async-graphql, so that
/// schema applies the same rules as extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

/// The checks on a document before it runs, from `GRAPHQL_MAX_*`, and the parser.
#[derive(Debug, Clone)]
pub struct Rules {
    pub limits: limits::OperationLimits,
    pub max_errors: usize,
    /// `GRAPHQL_INTROSPECTION`: when off, `__schema` and `__type` are refused.
    introspection: bool,
    cost: Arc<limits::CostModel>,
    parser: Parser,
}

impl Rules {
    pub fn new(config: &GraphqlConfig) -> Self {
        let limits = limits::OperationLimits {
            max_depth: config.graphql_max_depth,
            max_fields: config.graphql_max_fields,
            max_aliases: config.graphql_max_aliases,
            max_root_fields: config.graphql_max_root_fields,
            max_directives: config.graphql_max_directives,
            max_cost: config.graphql_max_complexity,
        };
        let cost = limits::CostModel {
            paged_fields: paged_fields(),
            default_page: u64::try_from(crate::paging::DEFAULT_PAGE).unwrap_or(u64::MAX),
        };
        Self {
            limits,
            max_errors: config.graphql_max_errors.max(1),
            introspection: config.graphql_introspection,
            cost: Arc::new(cost),
            parser: Parser::default(),
        }
    }

    /// Checks a parsed document against the limits; its shape (with its cost) if it passes.
    fn check(&self, document: &ExecutableDocument, variables: &Variables) -> ServerResult<limits::OperationShape> {
        let context = limits::Context { limits: &self.limits, cost: &self.cost, variables };
        let shape = limits::check(document, &context).map_err(limits::Refusal::into_server_error)?;
        if !self.introspection && asks_for_introspection(document) {
            let message = "introspection is off on this server (GRAPHQL_INTROSPECTION=false)";
            return Err(coded_error(message, "INTROSPECTION_DISABLED"));
        }
        Ok(shape)
    }
}

/// Whether any selection of `document` is `__schema` or `__type` (`__typename` is not
/// introspection: clients need it for caching).
fn asks_for_introspection(document: &ExecutableDocument) -> bool {
    use async_graphql::parser::types::{Selection, SelectionSet};
    fn walk(set: &SelectionSet) -> bool {
        set.items.iter().any(|selection| match &selection.node {
            Selection::Field(field) => {
                matches!(field.node.name.node.as_str(), "__schema" | "__type") || walk(&field.node.selection_set.node)
            }
            Selection::InlineFragment(inline) => walk(&inline.node.selection_set.node),
            Selection::FragmentSpread(_) => false,
        })
    }
    document.operations.iter().any(|(_, operation)| walk(&operation.node.selection_set.node))
        || document.fragments.values().any(|fragment| walk(&fragment.node.selection_set.node))
}

/// The names of the schema's fields that page (take `first`), read from its SDL.
fn paged_fields() -> std::collections::HashSet<String> {
    use async_graphql::parser::types::{TypeKind, TypeSystemDefinition};
    let Ok(schema) = async_graphql::parser::parse_schema(sdl()) else { return Default::default() };
    let mut names = std::collections::HashSet::new();
    for definition in schema.definitions {
        let TypeSystemDefinition::Type(definition) = definition else { continue };
        let fields = match &definition.node.kind {
            TypeKind::Object(object) => &object.fields,
            TypeKind::Interface(interface) => &interface.fields,
            _ => continue,
        };
        for field in fields {
            if field.node.arguments.iter().any(|argument| argument.node.name.node == "first") {
                names.insert(field.node.name.node.to_string());
            }
        }
    }
    names
}

/// Parses documents. A large one (up to `GRAPHQL_MAX_BODY_BYTES`: a second of CPU for a
/// megabyte of directives in a debug build) is parsed on a blocking thread, one at a time
/// per node, so a few of them cannot occupy every async worker and stall `/health` and
/// every other request.
#[derive(Debug, Clone)]
struct Parser {
    large: Arc<Semaphore>,
}

impl Default for Parser {
    fn default() -> Self {
        Self { large: Arc::new(Semaphore::new(1)) }
    }
}

impl Parser {
    /// Documents up to this size parse in a few hundred microseconds, on the spot.
    const LARGE_DOCUMENT_BYTES: usize = 32 * 1024;

    async fn parse(&self, query: &str) -> ServerResult<ExecutableDocument> {
        let parse_failed = |error: async_graphql::parser::Error| {
            let mut error = ServerError::from(error);
            error.extensions.get_or_insert_with(Default::default).set("code", "GRAPHQL_PARSE_FAILED");
            error
        };
        if query.len() <= Self::LARGE_DOCUMENT_BYTES {
            return parse_query(query).map_err(parse_failed);
        }
        let _slot = self.large.acquire().await;
        let query = query.to_owned();
        match tokio::task::spawn_blocking(move || parse_query(query)).await {
            Ok(parsed) => parsed.map_err(parse_failed),
            Err(error) => {
                let error: async_graphql::Error = AppError::Internal(error.into()).into();
                Err(error.into_server_error(async_graphql::Pos::default()))
            }
        }
    }
}

/// The schema of a node; without `state`, only for printing the SDL.
pub fn build(state: Option<Node>, transport: Transport) -> AppSchema {
    // `DateTime` is two Rust types: chrono's for output, ours for input (it also takes a
    // date); one GraphQL scalar (see `crate::dates`).
    let mut builder = Schema::build_with_ignore_name_conflicts(
        QueryRoot::default(),
        MutationRoot::default(),
        SubscriptionRoot::default(),
        [crate::dates::SCALAR_NAME],
    );
    if let Some(state) = state {
        // Depth and cost are [`limits`]', checked before async-graphql sees the document.
        if !state.config.graphql.graphql_introspection {
            builder = builder.disable_introspection();
        }
        if transport == Transport::WebSocket {
            let rules = Rules::new(&state.config.graphql);
            builder = builder.extension(Guard(rules.clone())).extension(ErrorCodes(rules));
        }
        // Each domain's resolvers find their own handle; system resolvers the node's.
        builder = builder
            .data(state.catalog.clone())
            .data(state.records.clone())
            .data(state.uploads.clone())
            .data(state.intake.clone())
            .data(state.feed.clone())
            .data(state);
    }
    // Types async-graphql defines, out of reach of our doc comments: chrono's `DateTime`
    // (its own text says how it is implemented) and the Relay connections.
    const DATE_TIME: &str = "A date-time. Output: RFC 3339, in UTC (e.g. `2026-12-04T10:15:00+00:00`, or \
        `2026-12-04T10:15:00.123+00:00` when it has milliseconds). Input: an RFC 3339 date-time with an offset \
        (`2026-12-04T10:15:00Z`, `2026-12-04T11:15:00+01:00`), converted to UTC, or a date (`2026-12-04`), \
        meaning that day's start, 00:00 UTC; anything else is BAD_USER_INPUT.";
    builder = builder
        .override_output_type_description::<chrono::DateTime<chrono::Utc>>(DATE_TIME)
        .override_input_type_description::<crate::dates::DateTimeInput>(DATE_TIME);
    builder = crate::catalog::graphql::CatalogQuery::describe_connections(builder);
    builder = crate::records::RecordsQuery::describe_connections(builder);
    builder = crate::intake::IntakeQuery::describe_connections(builder);
    builder = crate::uploads::UploadQuery::describe_connections(builder);
    builder.finish()
}

/// The SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    // `@specifiedBy` as introspection reports it (`DateTime` is RFC 3339).
    build(None, Transport::Http).sdl_with_options(async_graphql::SDLExportOptions::new().include_specified_by())
}

/// Everything checked before `request` runs, in order, each refusal a complete error: it
/// parses, its expanded shape is within the limits (in time linear in its size, before
/// async-graphql's own validation, which expands fragments), and `caller` may run it.
/// The parse is kept in the request for the execution; the shape tells its cost.
pub async fn admit(
    request: &mut Request,
    caller: Option<&Caller>,
    rules: &Rules,
) -> Result<limits::OperationShape, ServerError> {
    let document = rules.parser.parse(&request.query).await?;
    let shape = rules.check(&document, &request.variables)?;
    if let Some(refusal) = write_refusal(&document, caller) {
        return Err(refusal);
    }
    request.set_parsed_query(document);
    Ok(shape)
}

/// The code of a mutation sent with GET (the HTTP layer answers 405).
pub const MUTATION_OVER_GET: &str = "METHOD_NOT_ALLOWED";

/// The write check: why `caller` may not run `document`, if it may not. Mutations need
/// write access and POST; no `Caller` means an internal call (tests, the SDL printer).
fn write_refusal(document: &ExecutableDocument, caller: Option<&Caller>) -> Option<ServerError> {
    let has_mutation =
        document.operations.iter().any(|(_, op): (_, &Positioned<_>)| op.node.ty == OperationType::Mutation);
    let caller = caller.filter(|_| has_mutation)?;
    if caller.via_get {
        return Some(coded_error("mutations must be sent with POST: GET stays safe to repeat", MUTATION_OVER_GET));
    }
    if caller.may_write {
        return None;
    }
    let error: async_graphql::Error = AppError::Unauthenticated.into();
    Some(error.into_server_error(async_graphql::Pos::default()))
}

/// An error about the whole request (no location), with its `extensions.code`.
pub fn coded_error(message: impl Into<String>, code: &str) -> ServerError {
    let mut error = ServerError::new(message, None);
    error.extensions.get_or_insert_with(Default::default).set("code", code);
    error
}

/// A response as it goes out: every error with an `extensions.code` ([`give_codes`]), no
/// location at line 0 (a refusal that concerns no place in the document), at most
/// `GRAPHQL_MAX_ERRORS` errors plus one that counts the rest, at most a few locations
/// each (no request can make a response of unbounded size), and the operation's cost
/// in `extensions.cost` when it was admitted. Returns whether the request was refused
/// as a whole (it did not parse or validate: no data, and no error about a field).
pub fn finish(response: &mut Response, rules: &Rules, shape: Option<&limits::OperationShape>) -> bool {
    const MAX_LOCATIONS: usize = 5;
    let refused = response.data == async_graphql::Value::Null
        && !response.errors.is_empty()
        && response.errors.iter().all(|error| error.path.is_empty());
    let errors = &mut response.errors;
    give_codes(errors, refused);
    for error in errors.iter_mut() {
        error.locations.retain(|location| location.line > 0);
        error.locations.truncate(MAX_LOCATIONS);
    }
    if errors.len() > rules.max_errors {
        let omitted = errors.len() - rules.max_errors;
        errors.truncate(rules.max_errors);
        let mut summary = coded_error(
            format!("{omitted} more errors were left out (GRAPHQL_MAX_ERRORS is {})", rules.max_errors),
            "TOO_MANY_ERRORS",
        );
        if let Some(extensions) = summary.extensions.as_mut() {
            extensions.set("omitted", omitted);
        }
        errors.push(summary);
    }
    if let Some(shape) = shape {
        let cost = async_graphql::Value::from_json(serde_json::json!({
            "requestedQueryCost": shape.cost,
            "maximumAvailable": rules.limits.max_cost,
        }));
        if let Ok(cost) = cost {
            response.extensions.insert("cost".into(), cost);
        }
    }
    refused
}

/// Gives every error an `extensions.code`. Our resolvers' errors (loaders included) carry
/// one already, from `AppError`, and so do [`limits`]' refusals and parse errors. Errors
/// async-graphql raises on its own do not. Those that refuse the whole document are
/// `GRAPHQL_VALIDATION_FAILED` (an unknown field, a wrong argument type), except bad
/// variable values, which are the caller's input: `BAD_USER_INPUT`, like every error
/// about one field's arguments (an `Int` beyond 32 bits, a malformed `DateTime`).
fn give_codes(errors: &mut [ServerError], refused: bool) {
    for error in errors {
        if error.message.starts_with("Subscriptions are not supported on this transport") {
            error.message = "subscriptions are served over graphql-ws at /graphql/ws, not over HTTP".into();
            error.extensions.get_or_insert_with(Default::default).set("code", "BAD_REQUEST");
        }
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_some() {
            continue;
        }
        let about_variables = error.message.starts_with("Variable ") || error.message.contains("Invalid value for");
        let code = if refused && !about_variables { "GRAPHQL_VALIDATION_FAILED" } else { "BAD_USER_INPUT" };
        extensions.set("code", code);
    }
}

/// [`admit`] for operations sent over a WebSocket.
struct Guard(Rules);

impl ExtensionFactory for Guard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(Guard(self.0.clone()))
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for Guard {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        _next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // Parsed here rather than by `next` (no other extension hooks parsing), so a
        // large document is parsed off the async workers as over HTTP.
        let document = self.0.parser.parse(query).await?;
        self.0.check(&document, variables)?;
        match write_refusal(&document, ctx.data_opt::<Caller>()) {
            Some(refusal) => Err(refusal),
            None => Ok(document),
        }
    }
}

/// [`finish`] for operations sent over a WebSocket.
struct ErrorCodes(Rules);

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes(self.0.clone()))
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        finish(&mut response, &self.0, None);
        response
    }

    /// Every operation over a WebSocket (queries and mutations too) is a stream.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        let rules = self.0.clone();
        next.run(ctx, stream)
            .map(move |mut response| {
                finish(&mut response, &rules, None);
                response
            })
            .boxed()
    }
}

/// The node inside a resolver (every schema that serves is built with it).
fn state<'a>(ctx: &async_graphql::Context<'a>) -> &'a Node {
    ctx.data_unchecked::<Node>()
}
