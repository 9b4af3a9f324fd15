//! The GraphQL schema: each domain contributes its query, mutation and subscription
//! objects, merged here. Cross-cutting rules live here too: depth and complexity limits,
//! and write protection (mutations need a valid token when `API_TOKENS` is set).

pub mod pagination;
mod system;

use std::sync::Arc;

use async_graphql::{
    MergedObject, MergedSubscription, Positioned, Response, Schema, ServerError, ServerResult, Variables,
    extensions::{Extension, ExtensionContext, ExtensionFactory, NextParseQuery, NextRequest},
    parser::types::{ExecutableDocument, OperationType},
};

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

/// The schema with its limits; `state` is absent only when printing the SDL.
pub fn build(state: Option<AppState>, limits: &HttpConfig) -> AppSchema {
    let mut builder = Schema::build(QueryRoot::default(), MutationRoot::default(), SubscriptionRoot::default())
        .limit_depth(limits.graphql_max_depth)
        .limit_complexity(limits.graphql_max_complexity)
        .extension(WriteGuard)
        .extension(ErrorCodes);
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
    build(None, &limits).sdl()
}

/// Refuses mutations from callers without write access, before anything executes.
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
        let has_mutation =
            document.operations.iter().any(|(_, op): (_, &Positioned<_>)| op.node.ty == OperationType::Mutation);
        if has_mutation {
            // No `Caller` means an internal call (tests, the SDL printer): allowed.
            if let Some(caller) = ctx.data_opt::<Caller>() {
                let refusal = if caller.via_get {
                    Some(AppError::bad_input("mutations must be sent with POST"))
                } else if !caller.may_write {
                    Some(AppError::Unauthenticated)
                } else {
                    None
                };
                if let Some(refusal) = refusal {
                    let error: async_graphql::Error = refusal.into();
                    return Err(error.into_server_error(async_graphql::Pos::default()));
                }
            }
        }
        Ok(document)
    }
}

/// Gives every error an `extensions.code`. Our resolvers' errors (loaders included) carry
/// one already, from `AppError`. Errors async-graphql raises on its own do not: a query
/// that does not parse or validate (unknown field, wrong type, an `Int` beyond 32 bits,
/// too deep or too complex), no operation to run, an undefined variable, or an argument
/// that fails its scalar's parsing (a malformed `DateTime`). Those are the client's to
/// fix: `BAD_USER_INPUT`.
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
        for error in &mut response.errors {
            let extensions = error.extensions.get_or_insert_with(Default::default);
            if extensions.get("code").is_none() {
                extensions.set("code", "BAD_USER_INPUT");
            }
        }
        response
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
