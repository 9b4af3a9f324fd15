//! Global object identification: the `Node` interface every entity implements, and
//! `node(id:)` / `nodes(ids:)`, which refetch any entity by its global id (what Relay
//! needs to refetch, and what lets any normalizing cache key objects by `id` alone).
//! The ids themselves are [`crate::global_id`]'s.

use std::collections::{BTreeMap, HashMap};

use async_graphql::{Context, ID, Interface, Object, OutputType};

use super::state;
use crate::{
    catalog::graphql::{self as catalog, Offer, Product, ProductRegistration},
    error::{AppError, AppResult},
    global_id::{self, GlobalId},
    intake::{self, IntakeMessage, IntakeNotice},
    jobs::graphql::Job,
    records::{self, Customer, Purchase, Record},
    uploads::{self, Upload},
};

/// An object with a global id: `id` is opaque, unique across every type, and stable, so
/// `node(id:)` refetches the object and caches can key objects by `id` alone. Objects
/// that are not nodes (prices, trends, counts, pages, event payloads) are values: caches
/// embed them in the object that holds them.
#[derive(Clone, Interface)]
#[graphql(
    name = "Node",
    field(name = "id", ty = "ID", desc = "The object's global id: opaque; the same object always has the same id.")
)]
pub enum NodeObject {
    Product(Product),
    ProductRegistration(ProductRegistration),
    Offer(Offer),
    Customer(Customer),
    Record(Record),
    Purchase(Purchase),
    Upload(Upload),
    IntakeMessage(IntakeMessage),
    IntakeNotice(IntakeNotice),
    Job(Job),
}

#[derive(Default)]
pub struct NodeQuery;

#[Object]
impl NodeQuery {
    /// Any object by its global id (`id` of any type implementing `Node`); null when there
    /// is none. A malformed id is BAD_USER_INPUT.
    async fn node(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "A global id, as some object's `id` gave it.")] id: ID,
    ) -> async_graphql::Result<Option<NodeObject>> {
        Ok(load(ctx, std::slice::from_ref(&id)).await?.pop().flatten())
    }

    /// Several objects by global id, in the order asked: null for each id that names no
    /// object. At most PAGE_MAX (100 by default) ids; one read per type asked for. A
    /// malformed id is BAD_USER_INPUT.
    async fn nodes(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Global ids, as objects' `id` gave them; at most PAGE_MAX.")] ids: Vec<ID>,
    ) -> async_graphql::Result<Vec<Option<NodeObject>>> {
        let max = state(ctx).config.paging.page_max;
        if ids.len() > max {
            return Err(
                AppError::bad_input(format!("`nodes` takes at most {max} ids; {} were given", ids.len())).into()
            );
        }
        Ok(load(ctx, &ids).await?)
    }
}

fn is<T: OutputType>(type_name: &str) -> bool {
    T::type_name() == type_name
}

/// Loads `ids` with one batched read per type, answering in their order.
async fn load(ctx: &Context<'_>, ids: &[ID]) -> AppResult<Vec<Option<NodeObject>>> {
    let decoded: Vec<GlobalId> = ids.iter().map(global_id::decode).collect::<AppResult<_>>()?;
    let mut rows_by_type: BTreeMap<&str, Vec<i64>> = BTreeMap::new();
    for id in &decoded {
        rows_by_type.entry(id.type_name.as_str()).or_default().push(id.row);
    }
    let mut found: HashMap<(&str, i64), NodeObject> = HashMap::new();
    for (type_name, rows) in rows_by_type {
        let objects = load_type(ctx, type_name, &rows).await?;
        found.extend(objects.into_iter().map(|(row, object)| ((type_name, row), object)));
    }
    Ok(decoded.iter().map(|id| found.get(&(id.type_name.as_str(), id.row)).cloned()).collect())
}

/// The objects of one type by row. A type that has no global ids is refused like a
/// malformed id: such an id was never handed out.
async fn load_type(ctx: &Context<'_>, type_name: &str, rows: &[i64]) -> AppResult<HashMap<i64, NodeObject>> {
    fn wrap<T>(found: HashMap<i64, T>, variant: fn(T) -> NodeObject) -> HashMap<i64, NodeObject> {
        found.into_iter().map(|(row, object)| (row, variant(object))).collect()
    }
    Ok(match type_name {
        name if is::<Product>(name) => wrap(catalog::products_by_row(ctx, rows).await?, NodeObject::Product),
        name if is::<ProductRegistration>(name) => {
            wrap(catalog::registrations_by_row(ctx, rows).await?, NodeObject::ProductRegistration)
        }
        name if is::<Offer>(name) => wrap(catalog::offers_by_row(ctx, rows).await?, NodeObject::Offer),
        name if is::<Customer>(name) => {
            wrap(records::graphql::customers_by_row(ctx, rows).await?, NodeObject::Customer)
        }
        name if is::<Record>(name) => wrap(records::graphql::records_by_row(ctx, rows).await?, NodeObject::Record),
        name if is::<Purchase>(name) => {
            wrap(records::graphql::purchases_by_row(ctx, rows).await?, NodeObject::Purchase)
        }
        name if is::<Upload>(name) => wrap(uploads::uploads_by_row(ctx, rows).await?, NodeObject::Upload),
        name if is::<IntakeMessage>(name) => wrap(intake::messages_by_row(ctx, rows).await?, NodeObject::IntakeMessage),
        name if is::<IntakeNotice>(name) => wrap(intake::notices_by_row(ctx, rows).await?, NodeObject::IntakeNotice),
        name if is::<Job>(name) => {
            let jobs = state(ctx).shared.jobs.by_ids(rows).await?;
            jobs.into_iter().map(|job| (job.id, NodeObject::Job(Job::from(job)))).collect()
        }
        other => return Err(AppError::bad_input(format!("no object has an id of type `{other}`"))),
    })
}
