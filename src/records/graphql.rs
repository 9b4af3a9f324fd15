//! The store's GraphQL surface: thin resolvers over `customers`, `records` and
//! `purchases`. Nested lookups go through the shared DataLoader (`loaders`).

use std::collections::HashMap;

use async_graphql::{Context, ID, InputObject, Object, SchemaBuilder};
use chrono::{DateTime, Utc};

use super::{
    Records,
    customers::{self, CustomerChanges, CustomerOrderField},
    loaders::{BatchError, CustomerKey, PurchaseCountKey, RecordKey, StoreLoader},
    model::{Customer, Purchase, PurchaseStatus, Record},
    purchases::{self, CustomerPage, NewPurchase, PurchaseOrderField},
    record::{self, NewRecord, RecordChanges, RecordOrderField},
    validate,
};
use crate::{
    dates::DateTimeInput,
    db::to_datetime,
    error::{AppError, AppResult},
    global_id,
    paging::{OrderDirection, Page, PageArgs, Paged, Totals, connection},
};

type Result<T> = async_graphql::Result<T>;

/// The record store's handle inside a resolver (every schema that serves is built with it).
fn state<'a>(ctx: &Context<'a>) -> &'a Records {
    ctx.data_unchecked::<Records>()
}

fn loader(ctx: &Context<'_>) -> AppResult<StoreLoader> {
    Ok(state(ctx).loader.clone())
}

/// Stored money and counts are checked to fit the API's 32-bit `Int` when written.
fn int(value: i64, what: &str) -> AppResult<i32> {
    i32::try_from(value).map_err(|_| AppError::Internal(anyhow::anyhow!("{what} {value} does not fit in Int")))
}

fn optional_id<T: async_graphql::OutputType>(id: Option<&ID>) -> AppResult<Option<i64>> {
    id.map(global_id::parse::<T>).transpose()
}

/// A customer account of the record store. A deactivated account stays, with its
/// purchases, but can no longer buy.
#[Object]
impl Customer {
    /// The customer's global id (opaque; `node(id:)` refetches it).
    pub async fn id(&self) -> ID {
        global_id::of::<Self>(self.id)
    }

    /// 1–200 characters, trimmed.
    async fn name(&self) -> &str {
        &self.name
    }

    /// As entered (trimmed). Unique among all customers, active or not, ignoring case.
    async fn email(&self) -> &str {
        &self.email
    }

    /// False once deactivated; an inactive customer keeps its history but cannot purchase.
    async fn active(&self) -> bool {
        self.active
    }

    /// When the account was opened.
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.created_at)
    }

    /// When its name, e-mail address or activity last changed.
    async fn updated_at(&self) -> DateTime<Utc> {
        to_datetime(self.updated_at)
    }

    /// When the account was deactivated; null while active.
    async fn deactivated_at(&self) -> Option<DateTime<Utc>> {
        self.deactivated_at.map(to_datetime)
    }

    /// This customer's purchases of every status, oldest first unless `orderBy` says otherwise.
    async fn purchases(
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
        order_by: Option<PurchaseOrder>,
    ) -> Result<Paged<Purchase>> {
        let order = order_by.unwrap_or_default();
        let page = Page::new(
            PageArgs { first, after, last, before },
            state(ctx).page_max,
            order.field.ordering(order.direction),
        )?;
        let loader = loader(ctx)?;
        let key = CustomerPage { customer_id: self.id, page: page.clone(), order: order.field };
        let rows = loader.load_one(key).await.map_err(BatchError::into_app_error)?.unwrap_or_default();
        let customer_id = self.id;
        let totals = Totals::new(move || async move {
            let count = loader.load_one(PurchaseCountKey(customer_id)).await.map_err(BatchError::into_app_error)?;
            Ok(count.unwrap_or(0))
        });
        Ok(connection(rows, &page, |purchase| order.field.cursor(purchase), totals))
    }
}

/// A record (disc) the store sells, with its current price and the units on hand.
#[Object]
impl Record {
    /// The record's global id (opaque; `node(id:)` refetches it).
    pub async fn id(&self) -> ID {
        global_id::of::<Self>(self.id)
    }

    /// 1–200 characters, trimmed.
    async fn title(&self) -> &str {
        &self.title
    }

    /// 1–200 characters, trimmed.
    async fn artist(&self) -> &str {
        &self.artist
    }

    /// 1–200 characters, trimmed, as entered (the `genre` filter ignores case).
    async fn genre(&self) -> &str {
        &self.genre
    }

    /// From 1860 to next year.
    async fn release_year(&self) -> i32 {
        self.release_year
    }

    /// Current price in minor units (cents). Purchases keep the price they were made at.
    async fn price(&self) -> Result<i32> {
        Ok(int(self.price, "price")?)
    }

    /// Units on hand; never negative.
    async fn stock(&self) -> i32 {
        self.stock
    }

    /// Whether at least one unit is on hand.
    async fn in_stock(&self) -> bool {
        self.stock > 0
    }

    /// When the record was added.
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.created_at)
    }

    /// Last change of any field, stock included.
    async fn updated_at(&self) -> DateTime<Utc> {
        to_datetime(self.updated_at)
    }
}

/// One customer's purchase of units of one record, at the price of the moment. An
/// attempt without enough stock is stored too, as `OUT_OF_STOCK`.
#[Object]
impl Purchase {
    /// The purchase's global id (opaque; `node(id:)` refetches it).
    pub async fn id(&self) -> ID {
        global_id::of::<Self>(self.id)
    }

    /// The buyer.
    async fn customer(&self, ctx: &Context<'_>) -> Result<Customer> {
        let customer =
            loader(ctx)?.load_one(CustomerKey(self.customer_id)).await.map_err(BatchError::into_app_error)?;
        Ok(customer.ok_or_else(|| AppError::Internal(anyhow::anyhow!("purchase {} has no customer", self.id)))?)
    }

    /// The record bought.
    async fn record(&self, ctx: &Context<'_>) -> Result<Record> {
        let record = loader(ctx)?.load_one(RecordKey(self.record_id)).await.map_err(BatchError::into_app_error)?;
        Ok(record.ok_or_else(|| AppError::Internal(anyhow::anyhow!("purchase {} has no record", self.id)))?)
    }

    /// Units bought, one or more.
    async fn quantity(&self) -> i32 {
        self.quantity
    }

    /// The record's price when the purchase was made, in minor units (cents).
    async fn unit_price(&self) -> Result<i32> {
        Ok(int(self.unit_price, "unit price")?)
    }

    /// `unitPrice × quantity`, in minor units (cents); at most 2147483647.
    async fn total(&self) -> Result<i32> {
        Ok(int(self.total, "total")?)
    }

    /// True while the purchase holds its units (status `EFFECTIVE`); false when it was
    /// out of stock or has been cancelled.
    async fn effective(&self) -> Result<bool> {
        Ok(self.current_status()? == PurchaseStatus::Effective)
    }

    /// Where the purchase stands.
    async fn status(&self) -> Result<PurchaseStatus> {
        Ok(self.current_status()?)
    }

    /// When the purchase was made.
    async fn created_at(&self) -> DateTime<Utc> {
        to_datetime(self.created_at)
    }

    /// When it was cancelled; null unless `CANCELLED`.
    async fn cancelled_at(&self) -> Option<DateTime<Utc>> {
        self.cancelled_at.map(to_datetime)
    }
}

/// Which customers to list; every given condition must hold.
#[derive(Debug, Default, InputObject)]
#[graphql(name = "CustomerFilter")]
pub struct CustomerFilterInput {
    /// Only active (true) or only deactivated (false) customers.
    pub active: Option<bool>,
    /// Case-insensitive substring of the name or the e-mail address; blank means no
    /// condition.
    pub search: Option<String>,
}

/// Which records to list; every given condition must hold.
#[derive(Debug, Default, InputObject)]
#[graphql(name = "RecordFilter")]
pub struct RecordFilterInput {
    /// Case-insensitive substring of the artist; blank means no condition.
    pub artist: Option<String>,
    /// Case-insensitive substring of the title; blank means no condition.
    pub title: Option<String>,
    /// The genre, ignoring case and surrounding spaces (exact otherwise); blank means no
    /// condition.
    pub genre: Option<String>,
    /// Exact release year, 1860 to next year (BAD_USER_INPUT otherwise).
    pub release_year: Option<i32>,
    /// True: at least one unit on hand. False: sold out.
    pub in_stock: Option<bool>,
}

/// Which purchases to list; every given condition must hold. The period is half-open
/// and compared in UTC: `from` inclusive, `to` exclusive (offsets in the given
/// date-times are honoured); `from` after `to` is BAD_USER_INPUT.
#[derive(Debug, Default, InputObject)]
#[graphql(name = "PurchaseFilter")]
pub struct PurchaseFilterInput {
    /// Only this customer's purchases.
    pub customer_id: Option<ID>,
    /// Only purchases of this record.
    pub record_id: Option<ID>,
    /// Purchases made at or after this instant (inclusive); a date means its start
    /// (00:00 UTC).
    pub from: Option<DateTimeInput>,
    /// Purchases made before this instant (exclusive); a date means its start (00:00 UTC),
    /// so `to: "2026-12-05"` ends with December 4th.
    pub to: Option<DateTimeInput>,
    /// Only purchases in this status.
    pub status: Option<PurchaseStatus>,
}

/// A new customer account; it starts active.
#[derive(Debug, InputObject)]
pub struct CreateCustomerInput {
    /// 1 to 200 characters (trimmed, no control characters).
    pub name: String,
    /// A valid address of at most 254 characters (trimmed), unique ignoring case
    /// (deactivated customers keep theirs).
    pub email: String,
}

/// Omitted fields keep their value.
#[derive(Debug, InputObject)]
pub struct UpdateCustomerInput {
    /// 1 to 200 characters (trimmed); null or omitted: unchanged.
    pub name: Option<String>,
    /// A valid address, unique ignoring case (CONFLICT when taken); null or omitted:
    /// unchanged.
    pub email: Option<String>,
}

/// A new record for the catalog.
#[derive(Debug, InputObject)]
pub struct CreateRecordInput {
    /// 1 to 200 characters (trimmed, no control characters).
    pub title: String,
    /// 1 to 200 characters (trimmed, no control characters).
    pub artist: String,
    /// 1 to 200 characters (trimmed, no control characters).
    pub genre: String,
    /// 1860 to next year.
    pub release_year: i32,
    /// Minor units (cents), zero or more.
    pub price: i32,
    /// Units on hand, zero or more.
    pub stock: i32,
}

/// Omitted fields keep their value. Stock is not set here: it changes only through
/// purchases, cancellations and `restockRecord`, so concurrent changes add up.
#[derive(Debug, InputObject)]
pub struct UpdateRecordInput {
    /// 1 to 200 characters (trimmed); null or omitted: unchanged.
    pub title: Option<String>,
    /// 1 to 200 characters (trimmed); null or omitted: unchanged.
    pub artist: Option<String>,
    /// 1 to 200 characters (trimmed); null or omitted: unchanged.
    pub genre: Option<String>,
    /// 1860 to next year; null or omitted: unchanged.
    pub release_year: Option<i32>,
    /// Minor units (cents), zero or more; applies to purchases made from now on. Null or
    /// omitted: unchanged.
    pub price: Option<i32>,
}

/// A purchase to make (see `createPurchase`).
#[derive(Debug, InputObject)]
pub struct CreatePurchaseInput {
    /// The buyer: an active customer.
    pub customer_id: ID,
    /// The record to buy.
    pub record_id: ID,
    /// One or more units.
    pub quantity: i32,
}

/// How to order customers: `{field: NAME}` is A to Z ignoring case. Ties are broken by
/// creation order (in the same direction).
#[derive(InputObject, Debug, Clone, Copy, Default)]
pub struct CustomerOrder {
    /// The field to order by.
    pub field: CustomerOrderField,
    /// ASC (smallest first) when omitted.
    #[graphql(default)]
    pub direction: OrderDirection,
}

/// How to order records: `{field: PRICE}` is cheapest first, `{field: RELEASE_YEAR,
/// direction: DESC}` newest releases first. Ties are broken by creation order (in the
/// same direction).
#[derive(InputObject, Debug, Clone, Copy, Default)]
pub struct RecordOrder {
    /// The field to order by.
    pub field: RecordOrderField,
    /// ASC (smallest first) when omitted.
    #[graphql(default)]
    pub direction: OrderDirection,
}

/// How to order purchases: `{field: TOTAL, direction: DESC}` is the largest first. Ties
/// are broken by creation order (in the same direction).
#[derive(InputObject, Debug, Clone, Copy, Default)]
pub struct PurchaseOrder {
    /// The field to order by.
    pub field: PurchaseOrderField,
    /// ASC (smallest first) when omitted.
    #[graphql(default)]
    pub direction: OrderDirection,
}

#[derive(Default)]
pub struct RecordsQuery;

#[Object]
impl RecordsQuery {
    /// Customers, oldest first unless `orderBy` says otherwise.
    // Each parameter is an argument of the GraphQL field: the schema fixes how many.
    #[allow(clippy::too_many_arguments)]
    async fn customers(
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
        order_by: Option<CustomerOrder>,
        #[graphql(desc = "Only customers matching it; all when omitted.")] filter: Option<CustomerFilterInput>,
    ) -> Result<Paged<Customer>> {
        let state = state(ctx);
        let order = order_by.unwrap_or_default();
        let page =
            Page::new(PageArgs { first, after, last, before }, state.page_max, order.field.ordering(order.direction))?;
        let filter = filter.unwrap_or_default();
        let filter = customers::CustomerFilter {
            active: filter.active,
            search: validate::filter_text("search", filter.search)?,
        };
        let rows = customers::list(&state.db, &filter, &page, order.field).await?;
        let db = state.db.clone();
        let totals = Totals::new(move || async move { customers::count(&db, &filter).await });
        Ok(connection(rows, &page, |customer| order.field.cursor(customer), totals))
    }

    /// A customer by id; null when there is none (a malformed id is BAD_USER_INPUT).
    async fn customer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customer's id.")] id: ID,
    ) -> Result<Option<Customer>> {
        Ok(customers::find(&state(ctx).db, global_id::parse::<Customer>(&id)?).await?)
    }

    /// Records (the store's discs), oldest first unless `orderBy` says otherwise.
    // Each parameter is an argument of the GraphQL field: the schema fixes how many.
    #[allow(clippy::too_many_arguments)]
    async fn records(
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
        order_by: Option<RecordOrder>,
        #[graphql(desc = "Only records matching it; all when omitted.")] filter: Option<RecordFilterInput>,
    ) -> Result<Paged<Record>> {
        let state = state(ctx);
        let order = order_by.unwrap_or_default();
        let page =
            Page::new(PageArgs { first, after, last, before }, state.page_max, order.field.ordering(order.direction))?;
        let filter = filter.unwrap_or_default();
        let filter = record::RecordFilter {
            artist: validate::filter_text("artist", filter.artist)?,
            title: validate::filter_text("title", filter.title)?,
            genre: validate::filter_text("genre", filter.genre)?,
            release_year: filter.release_year,
            in_stock: filter.in_stock,
        };
        let rows = record::list(&state.db, &filter, &page, order.field).await?;
        let db = state.db.clone();
        let totals = Totals::new(move || async move { record::count(&db, &filter).await });
        Ok(connection(rows, &page, |record| order.field.cursor(record), totals))
    }

    /// A record by id; null when there is none (a malformed id is BAD_USER_INPUT).
    async fn record(&self, ctx: &Context<'_>, #[graphql(desc = "The record's id.")] id: ID) -> Result<Option<Record>> {
        Ok(record::find(&state(ctx).db, global_id::parse::<Record>(&id)?).await?)
    }

    /// Purchases of every status, oldest first unless `orderBy` says otherwise; filtered by
    /// customer, by record, by period, by status.
    // Each parameter is an argument of the GraphQL field: the schema fixes how many.
    #[allow(clippy::too_many_arguments)]
    async fn purchases(
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
        order_by: Option<PurchaseOrder>,
        #[graphql(desc = "Only purchases matching it; all when omitted.")] filter: Option<PurchaseFilterInput>,
    ) -> Result<Paged<Purchase>> {
        let state = state(ctx);
        let order = order_by.unwrap_or_default();
        let page =
            Page::new(PageArgs { first, after, last, before }, state.page_max, order.field.ordering(order.direction))?;
        let filter = filter.unwrap_or_default();
        let filter = purchases::PurchaseFilter {
            customer_id: optional_id::<Customer>(filter.customer_id.as_ref())?,
            record_id: optional_id::<Record>(filter.record_id.as_ref())?,
            from: filter.from.map(DateTimeInput::utc),
            to: filter.to.map(DateTimeInput::utc),
            status: filter.status,
        };
        let rows = purchases::list(&state.db, &filter, &page, order.field).await?;
        let db = state.db.clone();
        let totals = Totals::new(move || async move { purchases::count(&db, &filter).await });
        Ok(connection(rows, &page, |purchase| order.field.cursor(purchase), totals))
    }

    /// A purchase by id; null when there is none (a malformed id is BAD_USER_INPUT).
    async fn purchase(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The purchase's id.")] id: ID,
    ) -> Result<Option<Purchase>> {
        Ok(purchases::find(&state(ctx).db, global_id::parse::<Purchase>(&id)?).await?)
    }
}

impl RecordsQuery {
    /// Describes the connections this domain's lists return: async-graphql generates the
    /// types, so no doc comment reaches them.
    pub fn describe_connections<Q, M, S>(builder: SchemaBuilder<Q, M, S>) -> SchemaBuilder<Q, M, S> {
        builder
            .override_output_type_description::<Paged<Customer>>(
                "A page of customers in the order asked (`orderBy`; oldest first by default): `nodes` (or \
                 `edges`, each with its cursor), `pageInfo` (`endCursor` to pass as `after` for the next \
                 page, `startCursor` as `before` for the previous one), and `totalCount`.",
            )
            .override_output_type_description::<Paged<Record>>(
                "A page of records in the order asked (`orderBy`; oldest first by default): `nodes` (or \
                 `edges`, each with its cursor), `pageInfo` (`endCursor` to pass as `after` for the next \
                 page, `startCursor` as `before` for the previous one), and `totalCount`.",
            )
            .override_output_type_description::<Paged<Purchase>>(
                "A page of purchases in the order asked (`orderBy`; oldest first by default): `nodes` (or \
                 `edges`, each with its cursor), `pageInfo` (`endCursor` to pass as `after` for the next \
                 page, `startCursor` as `before` for the previous one), and `totalCount`.",
            )
    }
}

#[derive(Default)]
pub struct RecordsMutation;

#[Object]
impl RecordsMutation {
    /// Opens a customer account. A malformed e-mail is BAD_USER_INPUT; an address
    /// already used by any customer (ignoring case) is CONFLICT.
    async fn create_customer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new account's name and e-mail address.")] input: CreateCustomerInput,
    ) -> Result<Customer> {
        Ok(customers::create(&state(ctx).db, &input.name, &input.email).await?)
    }

    /// Changes a customer's name or e-mail (same rules as `createCustomer`); an unknown id
    /// is NOT_FOUND.
    async fn update_customer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customer to change.")] id: ID,
        #[graphql(desc = "The fields to change.")] input: UpdateCustomerInput,
    ) -> Result<Customer> {
        let id = global_id::parse::<Customer>(&id)?;
        let changes = CustomerChanges { name: input.name, email: input.email };
        Ok(customers::update(&state(ctx).db, id, changes).await?)
    }

    /// Deactivates an account: it stays, with its purchases, but can no longer buy.
    /// Deactivating an inactive customer is CONFLICT; an unknown id is NOT_FOUND.
    async fn deactivate_customer(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The customer to deactivate.")] id: ID,
    ) -> Result<Customer> {
        Ok(customers::deactivate(&state(ctx).db, global_id::parse::<Customer>(&id)?).await?)
    }

    /// Adds a record to the catalog. A field beyond its limits is BAD_USER_INPUT.
    async fn create_record(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The new record's fields.")] input: CreateRecordInput,
    ) -> Result<Record> {
        let new = NewRecord {
            title: input.title,
            artist: input.artist,
            genre: input.genre,
            release_year: input.release_year,
            price: input.price,
            stock: input.stock,
        };
        Ok(record::create(&state(ctx).db, new).await?)
    }

    /// Changes a record's catalog data or price (not its stock; see `restockRecord`).
    /// Unknown id: NOT_FOUND. A field beyond its limits: BAD_USER_INPUT.
    async fn update_record(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The record to change.")] id: ID,
        #[graphql(desc = "The fields to change.")] input: UpdateRecordInput,
    ) -> Result<Record> {
        let id = global_id::parse::<Record>(&id)?;
        let changes = RecordChanges {
            title: input.title,
            artist: input.artist,
            genre: input.genre,
            release_year: input.release_year,
            price: input.price,
        };
        Ok(record::update(&state(ctx).db, id, changes).await?)
    }

    /// Adds `quantity` (one or more) units to the stock, atomically. Unknown id: NOT_FOUND.
    /// Quantity below 1, or a stock that would pass 2147483647: BAD_USER_INPUT.
    async fn restock_record(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The record to restock.")] id: ID,
        #[graphql(desc = "Units to add, one or more.")] quantity: i32,
    ) -> Result<Record> {
        Ok(record::restock(&state(ctx).db, global_id::parse::<Record>(&id)?, quantity).await?)
    }

    /// Buys `quantity` units of a record at its current price. With enough stock the
    /// units are taken and the purchase is `EFFECTIVE`; otherwise the purchase is still
    /// stored, as `OUT_OF_STOCK` (`effective: false`), and stock is untouched — never
    /// oversold, however many buy at once. Unknown customer or record: NOT_FOUND.
    /// Deactivated customer: CONFLICT. Quantity below 1, or a total above 2147483647
    /// minor units: BAD_USER_INPUT. Nothing is stored on an error.
    async fn create_purchase(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "Who buys how many units of which record.")] input: CreatePurchaseInput,
    ) -> Result<Purchase> {
        let new = NewPurchase {
            customer_id: global_id::parse::<Customer>(&input.customer_id)?,
            record_id: global_id::parse::<Record>(&input.record_id)?,
            quantity: input.quantity,
        };
        Ok(purchases::create(&state(ctx).db, new).await?)
    }

    /// Cancels an `EFFECTIVE` purchase: it becomes `CANCELLED` and its units return to
    /// stock, exactly once. Cancelling a cancelled or out-of-stock purchase is CONFLICT;
    /// an unknown id is NOT_FOUND.
    async fn cancel_purchase(
        &self,
        ctx: &Context<'_>,
        #[graphql(desc = "The purchase to cancel.")] id: ID,
    ) -> Result<Purchase> {
        Ok(purchases::cancel(&state(ctx).db, global_id::parse::<Purchase>(&id)?).await?)
    }
}

// ---- lookups by global id (`node`, `nodes`) ---------------------------------------------

/// Customers by row: one read through the shared batch loader.
pub async fn customers_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, Customer>> {
    let keys = rows.iter().copied().map(CustomerKey);
    let loaded = loader(ctx)?.load_many(keys).await.map_err(BatchError::into_app_error)?;
    Ok(loaded.into_iter().map(|(key, customer)| (key.0, customer)).collect())
}

/// Records by row: one read through the shared batch loader.
pub async fn records_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, Record>> {
    let keys = rows.iter().copied().map(RecordKey);
    let loaded = loader(ctx)?.load_many(keys).await.map_err(BatchError::into_app_error)?;
    Ok(loaded.into_iter().map(|(key, record)| (key.0, record)).collect())
}

/// Purchases by row: one statement.
pub async fn purchases_by_row(ctx: &Context<'_>, rows: &[i64]) -> AppResult<HashMap<i64, Purchase>> {
    let found = purchases::by_ids(&state(ctx).db, rows).await?;
    Ok(found.into_iter().map(|purchase| (purchase.id, purchase)).collect())
}
