//! The GraphQL schema: each domain contributes its query, mutation and subscription
//! objects, merged here. Cross-cutting rules live here too: depth and complexity limits,
//! and write protection (mutations need a valid token when `API_TOKENS` is set).

pub mod pagination;
mod system;

use std::sync::Arc;

use async_graphql::{
    MergedObject, MergedSubscription, Positioned, Response, Schema, ServerError, ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest, NextSubscribe},
    parser::types::{ExecutableDocument, OperationType},
};
use futures::{StreamExt as _, stream::BoxStream};

use crate::{config::HttpConfig, error::AppError, state::AppState};

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

/// Which transport a schema serves. The cross-cutting rules (the write check before a
/// document runs, a code on every error after) are applied by `http::execute` around
/// each HTTP request, so the HTTP schema carries no extension: with any extension
/// installed, async-graphql resolves every field through its instrumented path (a
/// `ResolveInfo` and a boxed hook chain per field), which cost a third of the catalog
/// query's time. Over a WebSocket, operations run inside async-graphql, so that schema
/// applies the same two rules as extensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    Http,
    WebSocket,
}

/// The schema with its limits; `state` is absent only when printing the SDL.
pub fn build(state: Option<AppState>, limits: &HttpConfig, transport: Transport) -> AppSchema {
    let mut builder = Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .limit_depth(limits.graphql_max_depth)
        .limit_complexity(limits.graphql_max_complexity);
    if transport == Transport::WebSocket {
        builder = builder.extension(WriteGuard).extension(ErrorCodes);
    }
    if let Some(state) = state {
        builder = builder.data(crate::store::loader(state.db.clone())).data(state);
    }
    builder.finish()
}

/// The SDL, as committed in `schema.graphql`.
pub fn sdl() -> String {
    let limits = HttpConfig {
        max_inflight_requests: 0,
        graphql_max_depth: 0,
        graphql_max_complexity: 0,
        page_max: 0,
        request_timeout: std::time::Duration::ZERO,
    };
    build(None, &limits, Transport::Http).sdl()
}

/// The write check: why `caller` may not run `document`, if it may not. Mutations need
/// write access and POST; no `Caller` means an internal call (tests, the SDL printer).
pub fn write_refusal(document: &ExecutableDocument, caller: Option<&Caller>) -> Option<ServerError> {
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

/// Gives every error an `extensions.code`. Our resolvers' errors (loaders included) carry
/// one already, from `AppError`. Errors async-graphql raises on its own do not: a query
/// that does not parse or validate (unknown field, wrong type, an `Int` beyond 32 bits,
/// too deep or too complex), no operation to run, an undefined variable, or an argument
/// that fails its scalar's parsing (a malformed `DateTime`). Those are the client's to
/// fix: `BAD_USER_INPUT`.
pub fn give_codes(errors: &mut [ServerError]) {
    for error in errors {
        let extensions = error.extensions.get_or_insert_with(Default::default);
        if extensions.get("code").is_none() {
            extensions.set("code", "BAD_USER_INPUT");
        }
    }
}

/// [`write_refusal`] for operations sent over a WebSocket.
struct WriteGuard;

impl ExtensionFactory for WriteGuard {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(WriteGuard)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for WriteGuard {
    async fn parse_query(
        &self,
        ctx: &ExtensionContext<'_>,
        query: &str,
        variables: &Variables,
        next: NextParseQuery<'_>,
    ) -> ServerResult<ExecutableDocument> {
        let document = next.run(ctx, query, variables).await?;
        match write_refusal(&document, ctx.data_opt::<Caller>()) {
            Some(refusal) => Err(refusal),
            None => Ok(document),
        }
    }
}

/// [`give_codes`] for operations sent over a WebSocket.
struct ErrorCodes;

impl ExtensionFactory for ErrorCodes {
    fn create(&self) -> Arc<dyn Extension> {
        Arc::new(ErrorCodes)
    }
}

#[async_graphql::async_trait::async_trait]
impl Extension for ErrorCodes {
    async fn request(&self, ctx: &ExtensionContext<'_>, next: NextRequest<'_>) -> Response {
        let mut response = next.run(ctx).await;
        give_codes(&mut response.errors);
        response
    }

    /// Every operation over a WebSocket (queries and mutations too) is a stream.
    fn subscribe<'s>(
        &self,
        ctx: &ExtensionContext<'_>,
        stream: BoxStream<'s, Response>,
        next: NextSubscribe<'_>,
    ) -> BoxStream<'s, Response> {
        next.run(ctx, stream)
            .map(|mut response| {
                give_codes(&mut response.errors);
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
