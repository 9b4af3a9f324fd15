//! The catalog's GraphQL surface: thin resolvers over the catalog logic; nested fields of
//! a list go through the batch loaders ([`super::loaders`]).

use std::{collections::HashMap, sync::Arc};

use async_graphql::{
    Context, Enum, ID, InputObject, Json, MaybeUndefined, Object, SchemaBuilder, SimpleObject, Subscription,
};
use chrono::{DateTime, Utc};
use futures::{Stream, StreamExt as _};
use sea_orm::{ColumnTrait as _, EntityTrait as _, QueryFilter as _};

use super::{
    Catalog,
    entity::offer,
    loaders::{Batch, history_of, loader_error, offers_of, omnibus_of},
    model::{OfferRow, ProductRow, Registration},
    products::{self, NewProduct, ProductChanges, ProductFilter, ProductOrderField},
    sync::{PRICE_TOPIC, PriceChanges},
    trend,
};
use crate::{
    dates::DateTimeInput,
    db::to_datetime,
    error::{AppError, AppResult},
    events::EventBus,
    global_id,
    paging::{OrderDirection, Page, PageArgs, Paged, Totals, connection},
};

type Result<T> = async_graphql::Result<T>;

/// The catalog's handle inside a resolver (every schema that serves is built with it).
fn state<'a>(ctx: &Context<'a>) -> &'a Catalog {
    ctx.data_unchecked::<Arc<Catalog>>()
}

// ---- types ----------------------------------------------------------------------------

#[derive(Clone)]
pub struct Product {
    row: Arc<ProductRow>,
    /// Set when the product came in a list: its related rows load for the whole list at once.
    batch: Option<Arc<Batch>>,
}

impl Product {
    fn alone(row: ProductRow) -> Self {
        Self { row: Arc::new(row), batch: None }
    }
}

/// A catalog product, priced by the offers the partner offers service lists for it once
/// the product is registered there (see `registration`).
#[Object]
impl Product {
    /// The product's global id (opaque; `node(id:)` refetches it).
    pub async fn id(&self) -> ID {
        global_id::of::<Self>(self.row.id)
    }

    /// The client's own key (unique when present); bulk uploads match products by it.
    async fn sku(&self) -> Option<&str> {
        self.row.sku.as_deref()
    }

    /// 1–200 characters, trimmed.
    async fn name(&self) -> &str {
        &self.row.name
    }

    /// Up to 10,000 characters; empty when none was given.
    async fn description(&self) -> &str {
        &self.row.description
    }

    /// The product's other fields (a JSON object), as a bulk upload or `createProduct`
    /// gave them; null when there are none.
    async fn attributes(&self) -> Option<Json<serde_json::Value>> {
        self.row.attributes.as_deref().and_then(|text| serde_json::from_str(text).ok()).map(Json)
    }

    /// When the product was created.
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.row.created_at)
    }

    /// When its name, description, sku or attributes last changed (offers and
    /// registration do not count).
    async fn updated_at(&self) -> DateTime<Utc> {
        to_datetime(self.row.updated_at)
    }

    /// Where the product stands with the offers service.
    async fn registration(&self) -> ProductRegistration {
        ProductRegistration::of(&self.row)
    }

    /// The offers listed for the product now, cheapest first (read-only; refreshed by the
    /// offer sync); empty before registration or when none is listed.
    async fn offers(&self, ctx: &Context<'_>) -> Result<Vec<Offer>> {
        let offers = offers_of(&state(ctx).loaders, self.row.id, self.batch.as_ref()).await?;
        Ok(offers
            .iter()
            .map(|offer| Offer { row: offer.clone(), product: Some(self.row.clone()), batch: self.batch.clone() })
            .collect())
    }

    /// The lowest price among the current offers, in integer minor units as the offers
    /// service quotes them; null without offers.
    async fn lowest_price(&self) -> Option<i64> {
        // Kept with the offers, in the transaction that writes them (see sync.rs).
        self.row.lowest_price
    }

    /// The lowest price the product had (its lowest offer price at each moment) in the 30
    /// days before its current lowest price took effect, in integer minor units: the
    /// reference price of a reduction under the EU Omnibus rule (Directive 2019/2161,
    /// Art. 6a). Null without offers or without a price in that window.
    async fn lowest_price_last30_days(&self, ctx: &Context<'_>) -> Result<Option<i64>> {
        Ok(omnibus_of(&state(ctx).loaders, self.row.id, self.batch.as_ref()).await?.lowest_before)
    }

    /// Whether the current lowest price is a reduction: below `lowestPriceLast30Days`
    /// (false when that is null).
    async fn price_reduced(&self, ctx: &Context<'_>) -> Result<bool> {
        Ok(omnibus_of(&state(ctx).loaders, self.row.id, self.batch.as_ref()).await?.price_reduced())
    }

    /// The product's lowest offer price over a period, including offers withdrawn since.
    /// `from` after `to`, or a period longer than 31 days (`to` being now when omitted), is
    /// BAD_USER_INPUT.
    async fn price_trend(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Period start (inclusive): a date-time, or a date (its start, 00:00 UTC); a day \
                          before `to` when omitted.")]
        from: Option<DateTimeInput>,
        #[graphql(desc = "Period end (inclusive): a date-time, or a date (its start, 00:00 UTC); now when \
                          omitted.")]
        to: Option<DateTimeInput>,
    ) -> Result<PriceTrend> {
        let history = history_of(&state(ctx).loaders, self.row.id, utc(from), utc(to), self.batch.as_ref()).await?;
        Ok(PriceTrend::new(&history.lowest_points()))
    }

    /// Every recorded price change of the product's offers in a period (oldest first),
    /// including offers withdrawn since; `price` is null when an offer was withdrawn.
    /// Same period rules as `priceTrend`.
    async fn price_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Period start (inclusive): a date-time, or a date (its start, 00:00 UTC); a day \
                          before `to` when omitted.")]
        from: Option<DateTimeInput>,
        #[graphql(desc = "Period end (inclusive): a date-time, or a date (its start, 00:00 UTC); now when \
                          omitted.")]
        to: Option<DateTimeInput>,
    ) -> Result<Vec<OfferPriceRecord>> {
        let history = history_of(&state(ctx).loaders, self.row.id, utc(from), utc(to), self.batch.as_ref()).await?;
        Ok(history
            .before
            .iter()
            .filter(|row| row.recorded_at == history.from)
            .chain(history.during.iter())
            .map(|row| OfferPriceRecord {
                offer_source_id: row.offer_source_id.clone(),
                price: row.price,
                at: to_datetime(row.recorded_at),
            })
            .collect())
    }
}

/// A product's registration with the offers service. It has its own id (one per
/// product) so that client caches update it in place when it changes.
#[derive(SimpleObject, Clone)]
pub struct ProductRegistration {
    /// The registration's global id (opaque; one per product; `node(id:)` refetches it).
    #[graphql(owned)]
    pub id: ID,
    /// Where the registration stands.
    pub status: RegistrationStatus,
    /// Why the last registration attempt failed (PENDING: it will be retried; FAILED:
    /// given up), or, once REGISTERED, why the last offer sync of this product failed.
    /// Null when the last attempt succeeded.
    pub last_error: Option<String>,
    /// When the offers service last accepted the product; null if it never has.
    pub registered_at: Option<DateTime<Utc>>,
    /// When the offers last synced were fetched; null before the first sync.
    pub offers_updated_at: Option<DateTime<Utc>>,
}

impl ProductRegistration {
    fn of(row: &ProductRow) -> Self {
        Self {
            id: global_id::of::<Self>(row.id),
            status: RegistrationStatus::from(Registration::parse(&row.registration_status)),
            last_error: row.registration_error.clone(),
            registered_at: row.registered_at.map(to_datetime),
            offers_updated_at: row.offers_synced_at.map(to_datetime),
        }
    }
}

/// Where a product stands with the offers service.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Enum)]
pub enum RegistrationStatus {
    /// Not registered yet: registration is queued or being retried (the offers service
    /// may be down); it happens on its own.
    Pending,
    /// The offers service knows the product; its offers are kept up to date.
    Registered,
    /// The offers service refused the product, or retries ran out; see `lastError`.
    /// `registerProduct` tries again.
    Failed,
}

impl From<Registration> for RegistrationStatus {
    fn from(registration: Registration) -> Self {
        match registration {
            Registration::Pending => Self::Pending,
            Registration::Registered => Self::Registered,
            Registration::Failed => Self::Failed,
        }
    }
}

#[derive(Clone)]
pub struct Offer {
    row: OfferRow,
    /// The product, when the offer was reached through it.
    product: Option<Arc<ProductRow>>,
    batch: Option<Arc<Batch>>,
}

/// An offer for a product, as the offers service lists it (read-only, refreshed by the
/// offer sync; a withdrawn offer disappears).
#[Object]
impl Offer {
    /// The offer's global id (ours, opaque; `node(id:)` refetches it while the offer is
    /// listed).
    pub async fn id(&self) -> ID {
        global_id::of::<Self>(self.row.id)
    }

    /// The offers service's id of this offer.
    async fn source_id(&self) -> &str {
        &self.row.source_id
    }

    /// Integer minor units, as the offers service quotes them.
    async fn price(&self) -> i64 {
        self.row.price
    }

    /// Units in stock as the offers service reports them (zero or more).
    async fn items_in_stock(&self) -> i64 {
        self.row.items_in_stock
    }

    /// When we first saw the offer.
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.row.created_at)
    }

    /// When its price or stock last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        to_datetime(self.row.updated_at)
    }

    /// The lowest price this offer had in the 30 days before its current price took
    /// effect, in integer minor units (the EU Omnibus rule's reference price); null when
    /// it had no price in that window.
    async fn lowest_price_last30_days(&self, ctx: &Context<'_>) -> Result<Option<i64>> {
        let figures = omnibus_of(&state(ctx).loaders, self.row.product_id, self.batch.as_ref()).await?;
        Ok(figures.offers.get(&self.row.source_id).copied())
    }

    /// The product the offer is for.
    async fn product(&self, ctx: &Context<'_>) -> Result<Product> {
        if let Some(product) = &self.product {
            return Ok(Product { row: product.clone(), batch: self.batch.clone() });
        }
        let loaded = state(ctx).loaders.products.load_one(self.row.product_id).await.map_err(loader_error)?;
        let row = loaded.ok_or_else(|| AppError::not_found(format!("no product {}", self.row.product_id)))?;
        Ok(Product::alone(row))
    }

    /// The offer's recorded price changes in a period, oldest first. `from` after `to`, or
    /// a period longer than 31 days (`to` being now when omitted), is BAD_USER_INPUT.
    async fn price_history(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Period start (inclusive): a date-time, or a date (its start, 00:00 UTC); a day \
                          before `to` when omitted.")]
        from: Option<DateTimeInput>,
        #[graphql(desc = "Period end (inclusive): a date-time, or a date (its start, 00:00 UTC); now when \
                          omitted.")]
        to: Option<DateTimeInput>,
    ) -> Result<Vec<PricePoint>> {
        let history =
            history_of(&state(ctx).loaders, self.row.product_id, utc(from), utc(to), self.batch.as_ref()).await?;
        Ok(history.offer_changes(&self.row.source_id).into_iter().map(PricePoint::from).collect())
    }

    /// The offer's prices over a period: its price when the period starts, then every
    /// change. Same period rules as `priceHistory`.
    async fn price_trend(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Period start (inclusive): a date-time, or a date (its start, 00:00 UTC); a day \
                          before `to` when omitted.")]
        from: Option<DateTimeInput>,
        #[graphql(desc = "Period end (inclusive): a date-time, or a date (its start, 00:00 UTC); now when \
                          omitted.")]
        to: Option<DateTimeInput>,
    ) -> Result<PriceTrend> {
        let history =
            history_of(&state(ctx).loaders, self.row.product_id, utc(from), utc(to), self.batch.as_ref()).await?;
        Ok(PriceTrend::new(&history.offer_points(&self.row.source_id)))
    }
}

/// A price at a moment.
#[derive(SimpleObject)]
pub struct PricePoint {
    /// When the price took effect (the period's start, for the price already in effect then).
    pub at: DateTime<Utc>,
    /// Integer minor units.
    pub price: i64,
}

impl From<(i64, i64)> for PricePoint {
    fn from((at, price): (i64, i64)) -> Self {
        Self { at: to_datetime(at), price }
    }
}

/// One recorded price change of one of a product's offers.
#[derive(SimpleObject)]
pub struct OfferPriceRecord {
    /// The offers service's id of the offer (the offer itself may be gone).
    pub offer_source_id: String,
    /// Integer minor units; null when the offer was withdrawn at that moment.
    pub price: Option<i64>,
    /// When the change was recorded by the offer sync.
    pub at: DateTime<Utc>,
}

/// Prices over a period and how they moved.
#[derive(SimpleObject)]
pub struct PriceTrend {
    /// The prices in the period (integer minor units), oldest first: the price when it
    /// starts, then each change; empty when there was no price in the period.
    pub prices: Vec<i64>,
    /// The same prices with the moment each took effect.
    pub points: Vec<PricePoint>,
    /// The first of `prices`; null without data.
    pub first_price: Option<i64>,
    /// The last of `prices` (the price at the end of the period); null without data.
    pub last_price: Option<i64>,
    /// The lowest of `prices`; null without data.
    pub min_price: Option<i64>,
    /// The highest of `prices`; null without data.
    pub max_price: Option<i64>,
    /// Rise (+) or fall (−) from the first to the last price, in percent of the first
    /// (two decimals); null without data or when the first price is 0.
    pub change_percent: Option<f64>,
}

impl PriceTrend {
    fn new(points: &[(i64, i64)]) -> Self {
        let summary = trend::summarize(points);
        Self {
            prices: points.iter().map(|point| point.1).collect(),
            points: points.iter().copied().map(PricePoint::from).collect(),
            first_price: summary.first,
            last_price: summary.last,
            min_price: summary.min,
            max_price: summary.max,
            change_percent: summary.change_percent,
        }
    }
}

/// A change of one offer's price, found by the offer sync.
#[derive(SimpleObject, Clone)]
pub struct OfferPriceChange {
    /// The global id of the product whose offer changed.
    pub product_id: ID,
    /// The global id of the offer (`Offer.id`).
    pub offer_id: ID,
    /// The offers service's id of the offer.
    pub offer_source_id: String,
    /// The price before, in integer minor units; null when the offer just appeared.
    pub previous_price: Option<i64>,
    /// The new price, in integer minor units; null when the offer was withdrawn.
    pub price: Option<i64>,
    /// When the offer sync fetched the change.
    pub at: DateTime<Utc>,
}

// ---- inputs ---------------------------------------------------------------------------

/// A new product. Its registration with the offers service is queued with it.
#[derive(InputObject)]
pub struct CreateProductInput {
    /// 1–200 characters (surrounding spaces are trimmed).
    pub name: String,
    /// Up to 10,000 characters; empty when omitted.
    #[graphql(default)]
    pub description: String,
    /// Optional client key: 1–100 characters (trimmed, no control characters), unique
    /// (a taken sku is CONFLICT).
    pub sku: Option<String>,
    /// Optional extra fields: a JSON object of at most 64 KiB.
    pub attributes: Option<Json<serde_json::Value>>,
}

/// Fields to change; omitted fields stay as they are. At least one field must be given
/// (BAD_USER_INPUT otherwise).
#[derive(InputObject)]
pub struct UpdateProductInput {
    /// 1–200 characters (surrounding spaces are trimmed); null or omitted: unchanged.
    pub name: Option<String>,
    /// Up to 10,000 characters; null or omitted: unchanged.
    pub description: Option<String>,
    /// 1–100 characters, unique (a taken sku is CONFLICT); null removes the sku, omitted
    /// keeps it.
    pub sku: MaybeUndefined<String>,
    /// A JSON object of at most 64 KiB; null removes the attributes, omitted keeps them.
    pub attributes: MaybeUndefined<Json<serde_json::Value>>,
}

/// Which products to list; every given condition must hold.
#[derive(InputObject, Default)]
pub struct ProductsFilter {
    /// Case-insensitive part of the name or sku, at most 200 characters (longer is
    /// BAD_USER_INPUT); blank means no condition.
    pub search: Option<String>,
    /// Exactly this sku (case-sensitive; surrounding spaces are trimmed).
    pub sku: Option<String>,
}

/// A date-time argument as the catalog takes it.
fn utc(at: Option<DateTimeInput>) -> Option<DateTime<Utc>> {
    at.map(DateTimeInput::utc)
}

fn maybe<T>(value: MaybeUndefined<T>) -> Option<Option<T>> {
    match value {
        MaybeUndefined::Undefined => None,
        MaybeUndefined::Null => Some(None),
        MaybeUndefined::Value(value) => Some(Some(value)),
    }
}

/// How to order products: `{field: LOWEST_PRICE}` is cheapest first, `{field: NAME,
/// direction: DESC}` Z to A. Ties are broken by creation order (in the same direction).
#[derive(InputObject, Debug, Clone, Copy, Default)]
pub struct ProductOrder {
    /// The field to order by.
    pub field: ProductOrderField,
    /// ASC (smallest first) when omitted.
    #[graphql(default)]
    pub direction: OrderDirection,
}

// ---- roots ----------------------------------------------------------------------------

#[derive(Default)]
pub struct CatalogQuery;

#[Object]
impl CatalogQuery {
    /// Products, in creation order unless `orderBy` says otherwise (a Relay connection:
    /// `first`/`after` pages forward, `last`/`before` backward; both sizes are capped by
    /// PAGE_MAX).
    // Each parameter is an argument of the GraphQL field: the schema fixes how many.
    #[allow(clippy::too_many_arguments)]
    async fn products(
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
        order_by: Option<ProductOrder>,
        #[graphql(desc = "Only products matching it; all when omitted.")] filter: Option<ProductsFilter>,
    ) -> Result<Paged<Product>> {
        let state = state(ctx);
        let order = order_by.unwrap_or_default();
        let page =
            Page::new(PageArgs { first, after, last, before }, state.page_max, order.field.ordering(order.direction))?;
        let filter = filter.unwrap_or_default();
        let filter = ProductFilter { search: filter.search, sku: filter.sku };
        let rows = products::list(&state.db, &page, order.field, &filter).await?;
        let db = state.db.clone();
        let totals = Totals::new(move || async move { products::count(&db, &filter).await });
        let batch = Arc::new(Batch::new(rows.iter().map(|row| row.id).collect()));
        let nodes = rows.into_iter().map(|row| Product { row: Arc::new(row), batch: Some(batch.clone()) }).collect();
        Ok(connection(nodes, &page, |product| order.field.cursor(&product.row), totals))
    }

    /// A product by id; null when there is none (a malformed id is BAD_USER_INPUT).
    async fn product(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The product's id.")] id: ID,
    ) -> Result<Option<Product>> {
        let id = global_id::parse::<Product>(&id)?;
        Ok(products::find(&state(ctx).db, id).await?.map(Product::alone))
    }

    /// An offer by id; null when there is none (it may have been withdrawn; a malformed
    /// id is BAD_USER_INPUT).
    async fn offer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Our id of the offer (`Offer.id`).")] id: ID,
    ) -> Result<Option<Offer>> {
        let id = global_id::parse::<Offer>(&id)?;
        let db = &state(ctx).db;
        let row = offer::Entity::find_by_id(id).one(db).await.map_err(AppError::from)?;
        Ok(row.map(|row| Offer { row, product: None, batch: None }))
    }
}

impl CatalogQuery {
    /// Describes the connection this domain's lists return: async-graphql generates the
    /// type, so no doc comment reaches it.
    pub fn describe_connections<Q, M, S>(builder: SchemaBuilder<Q, M, S>) -> SchemaBuilder<Q, M, S> {
        builder.override_output_type_description::<Paged<Product>>(
            "A page of products in the order asked (`orderBy`; oldest first by default): `nodes` (or \
             `edges`, each with its cursor), `pageInfo` (`endCursor` to pass as `after` for the next page, \
             `startCursor` as `before` for the previous one), and `totalCount`.",
        )
    }
}

#[derive(Default)]
pub struct CatalogMutation;

#[Object]
impl CatalogMutation {
    /// Creates a product; its registration with the offers service is queued at once and
    /// survives outages (see `registration`). A taken sku is CONFLICT; a field beyond its
    /// limits is BAD_USER_INPUT.
    async fn create_product(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new product's fields.")] input: CreateProductInput,
    ) -> Result<Product> {
        let input = NewProduct {
            name: input.name,
            description: input.description,
            sku: input.sku,
            attributes: input.attributes.map(|json| json.0),
        };
        Ok(Product::alone(products::create(state(ctx), input).await?))
    }

    /// Changes a product's fields (not its offers: those come from the offers service).
    /// Unknown id: NOT_FOUND. Taken sku: CONFLICT. No field, or a field beyond its limits:
    /// BAD_USER_INPUT.
    async fn update_product(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The product to change.")] id: ID,
        #[graphql(desc = "The fields to change.")] input: UpdateProductInput,
    ) -> Result<Product> {
        let id = global_id::parse::<Product>(&id)?;
        let changes = ProductChanges {
            name: input.name,
            description: input.description,
            sku: maybe(input.sku),
            attributes: maybe(input.attributes).map(|json| json.map(|json| json.0)),
        };
        Ok(Product::alone(products::update(state(ctx), id, changes).await?))
    }

    /// Deletes a product with its offers and price history; returns its id. Unknown id:
    /// NOT_FOUND.
    async fn delete_product(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The product to delete.")] id: ID,
    ) -> Result<ID> {
        let product_id = global_id::parse::<Product>(&id)?;
        products::delete(state(ctx), product_id).await?;
        Ok(id)
    }

    /// Queues registration with the offers service again for a product that is not
    /// registered (FAILED, or PENDING with its retries stuck). CONFLICT when registered;
    /// NOT_FOUND for an unknown id.
    async fn register_product(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The product to register.")] id: ID,
    ) -> Result<Product> {
        let id = global_id::parse::<Product>(&id)?;
        Ok(Product::alone(products::register_again(state(ctx), id).await?))
    }
}

#[derive(Default)]
pub struct CatalogSubscription;

#[Subscription]
impl CatalogSubscription {
    /// Price changes of a product's offers (new offers, changed prices, withdrawn offers)
    /// as the offer sync finds them, on whichever node it runs: one event per offer.
    async fn offer_price_changed(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The product to follow; NOT_FOUND when there is none.")] product_id: ID,
    ) -> Result<impl Stream<Item = OfferPriceChange> + use<>> {
        let state = state(ctx);
        let id = global_id::parse::<Product>(&product_id)?;
        products::get(&state.db, id).await?;
        Ok(price_changes(state.events.clone(), id))
    }
}

/// The price changes of one product, one item per offer.
fn price_changes(events: EventBus, product_id: i64) -> impl Stream<Item = OfferPriceChange> + Send + 'static {
    events
        .subscribe::<PriceChanges>(PRICE_TOPIC)
        .filter(move |event| std::future::ready(event.product_id == product_id))
        .flat_map(|event| {
            let at = to_datetime(event.at);
            let product_id = global_id::of::<Product>(event.product_id);
            futures::stream::iter(event.changes.into_iter().map(move |change| OfferPriceChange {
                product_id: product_id.clone(),
                offer_id: global_id::of::<Offer>(change.offer_id),
                offer_source_id: change.source_id,
                previous_price: change.previous_price,
                price: change.price,
                at,
            }))
        })
}

// ---- lookups by global id (`node`, `nodes`) ---------------------------------------------

/// Products by row: one read through the shared batch loader.
pub async fn products_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, Product>> {
    let loaded = state(ctx).loaders.products.load_many(rows.iter().copied()).await.map_err(loader_error)?;
    Ok(loaded.into_iter().map(|(row, product)| (row, Product::alone(product))).collect())
}

/// Products' registrations by (product) row: the same read as their products.
pub async fn registrations_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, ProductRegistration>> {
    let loaded = state(ctx).loaders.products.load_many(rows.iter().copied()).await.map_err(loader_error)?;
    Ok(loaded.into_iter().map(|(row, product)| (row, ProductRegistration::of(&product))).collect())
}

/// Offers still listed, by row: one statement.
pub async fn offers_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, Offer>> {
    let found = offer::Entity::find()
        .filter(offer::Column::Id.is_in(rows.iter().copied()))
        .all(&state(ctx).db)
        .await
        .map_err(AppError::from)?;
    Ok(found.into_iter().map(|row| (row.id, Offer { row, product: None, batch: None })).collect())
}
