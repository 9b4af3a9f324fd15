//! The GraphQL schema: each domain contributes its query, mutation and subscription
//! objects, merged here. Cross-cutting rules live here too: the limits on what one
//! operation may ask ([`limits`], complexity), bounded error lists, and write protection (mutations need a valid token when `API_TOKENS` is set).

pub mod limits;
pub mod pagination;
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

use crate::{config::GraphqlConfig, error::AppError, state::AppState};

#[derive(MergedObject, Default)]
#[graphql(name = "Query")]
pub struct QueryRoot(
    system::SystemQuery,
    crate::catalog::graphql::CatalogQuery,
    crate::store::StoreQuery,
    crate::intake::IntakeQuery,
    crate::uploads::UploadQuery,
    crate::feed::FeedQuery,
);

#[derive(MergedObject, Default)]
#[graphql(name = "Mutation")]
pub struct MutationRoot(
    system::SystemMutation,
    crate::catalog::graphql::CatalogMutation,
    crate::store::StoreMutation,
    crate::intake::IntakeMutation,
);

#[derive(MergedSubscription, Default)]
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
        };
        Self { limits, max_errors: config.graphql_max_errors.max(1), parser: Parser::default() }
    }
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
        if query.len() <= Self::LARGE_DOCUMENT_BYTES {
            return parse_query(query).map_err(Into::into);
        }
        let _slot = self.large.acquire().await;
        let query = query.to_owned();
        match tokio::task::spawn_blocking(move || parse_query(query)).await {
            Ok(parsed) => parsed.map_err(Into::into),
            Err(error) => {
                let error: async_graphql::Error = AppError::Internal(error.into()).into();
                Err(error.into_server_error(async_graphql::Pos::default()))
            }
        }
    }
}

/// The schema of a node; without `state`, only for printing the SDL.
pub fn build(state: Option<AppState>, transport: Transport) -> AppSchema {
    let mut builder = Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default());
    if let Some(state) = state {
        // Depth is [`limits`]' (it does not count introspection's `ofType` chain);
        // complexity is async-graphql's, computed after `limits` bounded the document.
        builder = builder.limit_complexity(state.config.graphql.graphql_max_complexity);
        if transport == Transport::WebSocket {
            let rules = Rules::new(&state.config.graphql);
            builder = builder.extension(Guard(rules.clone())).extension(ErrorCodes(rules));
        }
        builder = builder.data(crate::store::loader(state.db.clone())).data(state);
    }
    builder.finish()
}

/// The SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    build(None, Transport::Http).sdl()
}

/// Everything checked before `request` runs, in order, each refusal a complete error: it
/// parses, its expanded shape is within the limits (in time linear in its size, before
/// async-graphql's own validation, which expands fragments), and `caller` may run it.
/// The parse is kept in the request for the execution.
pub async fn admit(request: &mut Request, caller: Option<&Caller>, rules: &Rules) -> Result<(), ServerError> {
    let document = rules.parser.parse(&request.query).await?;
    limits::check(&document, &rules.limits).map_err(limits::Refusal::into_server_error)?;
    if let Some(refusal) = write_refusal(&document, caller) {
        return Err(refusal);
    }
    request.set_parsed_query(document);
    Ok(())
}

/// The write check: why `caller` may not run `document`, if it may not. Mutations need
/// write access and POST; no `Caller` means an internal call (tests, the SDL printer).
fn write_refusal(document: &ExecutableDocument, caller: Option<&Caller>) -> Option<ServerError> {
    let has_mutation =
        document.operations.iter().any(|(_, op): (_, &Positioned<_>)| op.node.ty == OperationType::Mutation);
    let caller = caller.filter(|_| has_mutation)?;
    let refusal = if caller.via_get {
        AppError::bad_input("mutations must be sent with POST")
    } else if !caller.may_write {
        AppError::Unauthenticated
    } else {
        return None;
    };
    let error: async_graphql::Error = refusal.into();
    Some(error.into_server_error(async_graphql::Pos::default()))
}

/// Errors as a response carries them: each with an `extensions.code` ([`give_codes`]),
/// no location at line 0 (a refusal that concerns no place in the document), at most
/// `GRAPHQL_MAX_ERRORS` of them plus one that counts the rest, and at most a few
/// locations each, so no request can make a response of unbounded size.
pub fn finish_errors(errors: &mut Vec<ServerError>, rules: &Rules) {
    const MAX_LOCATIONS: usize = 5;
    give_codes(errors);
    for error in errors.iter_mut() {
        error.locations.retain(|location| location.line > 0);
        error.locations.truncate(MAX_LOCATIONS);
    }
    if errors.len() > rules.max_errors {
        let omitted = errors.len() - rules.max_errors;
        errors.truncate(rules.max_errors);
        let mut summary = ServerError::new(
            format!("{omitted} more errors were left out (GRAPHQL_MAX_ERRORS is {})", rules.max_errors),
            None,
        );
        let extensions = summary.extensions.get_or_insert_with(Default::default);
        extensions.set("code", "TOO_MANY_ERRORS");
        extensions.set("omitted", omitted);
        errors.push(summary);
    }
}

/// Gives every error an `extensions.code`. Our resolvers' errors (loaders included) carry
/// one already, from `AppError`, and so do [`limits`]' refusals. Errors async-graphql
/// raises on its own do not: a query that does not parse or validate (unknown field, wrong
/// type, an `Int` beyond 32 bits), no operation to run, an undefined variable, or an
/// argument that fails its scalar's parsing (a malformed `DateTime`). Those are the
/// client's to fix: `BAD_USER_INPUT`; too complex a query names its limit.
fn give_codes(errors: &mut [ServerError]) {
    for error in errors {
        let too_complex = error.message == "Query is too complex.";
        if too_complex {
            error.message = "the operation is too complex (GRAPHQL_MAX_COMPLEXITY): ask for fewer items per list \
                             (`first`) or fewer fields"
                .into();
        }
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if too_complex {
            extensions.set("code", "COMPLEXITY_LIMIT_EXCEEDED");
        } else if extensions.get("code").is_none() {
            extensions.set("code", "BAD_USER_INPUT");
        }
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
        _variables: &Variables,
        _next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        // Parsed here rather than by `next` (no other extension hooks parsing), so a
        // large document is parsed off the async workers as over HTTP.
        let document = self.0.parser.parse(query).await?;
        limits::check(&document, &self.0.limits).map_err(limits::Refusal::into_server_error)?;
        match write_refusal(&document, ctx.data_opt::<Caller>()) {
            Some(refusal) => Err(refusal),
            None => Ok(document),
        }
    }
}

/// [`finish_errors`] for operations sent over a WebSocket.
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
        finish_errors(&mut response.errors, &self.0);
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
                finish_errors(&mut response.errors, &rules);
                response
            })
            .boxed()
    }
}

/// The shared state inside a resolver.
pub fn state<'a>(ctx: &async_graphql::Context<'a>) -> &'a AppState {
    ctx.data_unchecked::<AppState>()
}

/// True when an error list holds an `UNAUTHENTICATED` error (the HTTP layer answers 401).
pub fn is_unauthenticated(errors: &[ServerError]) -> bool {
    errors.iter().any(|error| {
        error
            .extensions
            .as_ref()
            .and_then(|ext| ext.get("code"))
            .is_some_and(|code| *code == async_graphql::Value::from("UNAUTHENTICATED"))
    })
}
