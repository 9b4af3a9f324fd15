//! Paging both ways and ordering (docs/paging.md): every connection walked forward
//! (`first`/`after`) and backward (`last`/`before`) over 250 items, in 7 page sizes and
//! both directions of every ordering; inserts during a walk; the refusals.
//!
//! The walks of one connection advance together: each round is one request with one
//! aliased field per unfinished walk, so 250 items in pages of 1 cost 251 requests for
//! all of the connection's walks at once.

use std::{cmp::Ordering, collections::HashMap, collections::HashSet, fmt::Write as _};

use sea_orm::ConnectionTrait as _;
use serde_json::{Value, json};

use crate::support::{TestApp, TestEnv, error_code};

const ITEMS: usize = 250;
const SIZES: [usize; 7] = [1, 2, 3, 7, 20, 64, 100];
const DIRECTIONS: [&str; 2] = ["ASC", "DESC"];

/// An item's sort key as the test reads it from the node.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Key {
    /// Ordered by creation alone.
    Creation,
    Null,
    Int(i64),
    /// Test names use lower-case letters and digits of a fixed shape, so Rust's order is
    /// every collation's.
    Text(String),
}

fn text(value: &Value) -> Key {
    Key::Text(value.as_str().expect("a string").to_string())
}

fn folded(value: &Value) -> Key {
    Key::Text(value.as_str().expect("a string").to_lowercase())
}

fn int_or_null(value: &Value) -> Key {
    value.as_i64().map_or(Key::Null, Key::Int)
}

/// An ordering as the walks ask for it (`orderBy.field`) and how a node's key is read.
type OrderingOf = (&'static str, fn(&Value) -> Key);

/// A connection's field, the node fields of each ordering's walks, how a node is told
/// apart, and the orderings.
type Shape = (&'static str, Vec<&'static str>, fn(&Value) -> String, Vec<OrderingOf>);

/// What the connection is; how to create its items.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Products,
    Records,
    Customers,
    Purchases,
    CustomerPurchases,
    Uploads,
    IntakeMessages,
}

/// A connection under test.
struct Listing {
    kind: Kind,
    /// The aliased field up to the connection, and what closes it.
    open: String,
    field: &'static str,
    close: &'static str,
    /// The node fields each ordering's walks ask for: the identity and the sort key.
    nodes: Vec<&'static str>,
    /// What says which item a node is (its id, or a field the test set).
    identity: fn(&Value) -> String,
    orderings: Vec<OrderingOf>,
    /// Creation index of every item, by identity.
    created: HashMap<String, usize>,
}

impl Listing {
    fn new(kind: Kind, customer: &str) -> Self {
        let by_id: fn(&Value) -> String = |node| node["id"].as_str().expect("an id").to_string();
        let creation: fn(&Value) -> Key = |_| Key::Creation;
        let (field, nodes, identity, orderings): Shape = match kind {
            Kind::Products => (
                "products",
                vec!["id", "id name", "id lowestPrice"],
                by_id,
                vec![
                    ("CREATED_AT", creation),
                    ("NAME", |node| text(&node["name"])),
                    ("LOWEST_PRICE", |node| int_or_null(&node["lowestPrice"])),
                ],
            ),
            Kind::Records => (
                "records",
                vec!["id", "id title", "id artist", "id releaseYear", "id price"],
                by_id,
                vec![
                    ("CREATED_AT", creation),
                    ("TITLE", |node| folded(&node["title"])),
                    ("ARTIST", |node| folded(&node["artist"])),
                    ("RELEASE_YEAR", |node| int_or_null(&node["releaseYear"])),
                    ("PRICE", |node| int_or_null(&node["price"])),
                ],
            ),
            Kind::Customers => (
                "customers",
                vec!["id", "id name"],
                by_id,
                vec![("CREATED_AT", creation), ("NAME", |node| folded(&node["name"]))],
            ),
            Kind::Purchases | Kind::CustomerPurchases => (
                "purchases",
                vec!["id", "id total"],
                by_id,
                vec![("CREATED_AT", creation), ("TOTAL", |node| int_or_null(&node["total"]))],
            ),
            Kind::Uploads => (
                "uploads",
                vec!["bytes"],
                |node| node["bytes"].as_i64().expect("bytes").to_string(),
                vec![("CREATED_AT", creation)],
            ),
            Kind::IntakeMessages => (
                "intakeMessages",
                vec!["messageId"],
                |node| node["messageId"].as_str().expect("a message id").to_string(),
                vec![("CREATED_AT", creation)],
            ),
        };
        let (open, close) = match kind {
            Kind::CustomerPurchases => (format!("customer(id: \"{customer}\") {{ "), " }"),
            _ => (String::new(), ""),
        };
        Self { kind, open, field, close, nodes, identity, orderings, created: HashMap::new() }
    }

    /// The connection inside the answer to one aliased field.
    fn connection<'a>(&self, answer: &'a Value) -> &'a Value {
        if self.close.is_empty() { answer } else { &answer[self.field] }
    }

    /// Compares two nodes in an ordering: by key, nulls last in both directions, ties by
    /// creation, all in the direction but the nulls.
    fn compare(&self, ordering: usize, descending: bool, a: &Value, b: &Value) -> Ordering {
        let key_of = self.orderings[ordering].1;
        let (a_key, b_key) = (key_of(a), key_of(b));
        let (a_at, b_at) = (self.created[&(self.identity)(a)], self.created[&(self.identity)(b)]);
        let in_direction = |order: Ordering| if descending { order.reverse() } else { order };
        match (&a_key, &b_key) {
            (Key::Null, Key::Null) | (Key::Creation, Key::Creation) => in_direction(a_at.cmp(&b_at)),
            (Key::Null, _) => Ordering::Greater,
            (_, Key::Null) => Ordering::Less,
            (Key::Int(x), Key::Int(y)) => in_direction(x.cmp(y).then(a_at.cmp(&b_at))),
            (Key::Text(x), Key::Text(y)) => in_direction(x.cmp(y).then(a_at.cmp(&b_at))),
            other => panic!("keys of different kinds: {other:?}"),
        }
    }
}

/// One walk through a connection, page by page.
#[derive(Debug)]
struct Walk {
    ordering: usize,
    direction: &'static str,
    size: usize,
    backward: bool,
    cursor: Option<String>,
    /// Pages in list order (a backward walk puts each new page in front).
    pages: Vec<Vec<Value>>,
    requests: usize,
    done: bool,
}

impl Walk {
    fn new(ordering: usize, direction: &'static str, size: usize, backward: bool) -> Self {
        Self { ordering, direction, size, backward, cursor: None, pages: Vec::new(), requests: 0, done: false }
    }

    fn every(listing: &Listing, sizes: &[usize]) -> Vec<Self> {
        let mut walks = Vec::new();
        for ordering in 0..listing.orderings.len() {
            for direction in DIRECTIONS {
                for &size in sizes {
                    for backward in [false, true] {
                        walks.push(Self::new(ordering, direction, size, backward));
                    }
                }
            }
        }
        walks
    }

    fn field(&self, alias: &str, listing: &Listing) -> String {
        let (size, cursor) = if self.backward { ("last", "before") } else { ("first", "after") };
        let mut args = format!("{size}: {}", self.size);
        if let Some(at) = &self.cursor {
            write!(args, ", {cursor}: \"{at}\"").expect("write");
        }
        let field = listing.orderings[self.ordering].0;
        write!(args, ", orderBy: {{ field: {field}, direction: {} }}", self.direction).expect("write");
        // `nodes` rather than `edges`: half the fields to resolve (edge cursors are
        // checked against `pageInfo` in
        // `refusals_name_what_is_wrong_and_pages_between_two_cursors`).
        format!(
            "{alias}: {}{}({args}) {{ nodes {{ {} }} \
             pageInfo {{ hasNextPage hasPreviousPage startCursor endCursor }} }}{}",
            listing.open, listing.field, listing.nodes[self.ordering], listing.close
        )
    }

    fn what(&self, listing: &Listing) -> String {
        let way = if self.backward { "backward" } else { "forward" };
        format!(
            "{:?} {} {} by {way} pages of {}",
            listing.kind, listing.orderings[self.ordering].0, self.direction, self.size
        )
    }

    /// Takes one page; checks its `pageInfo` against where the walk is.
    fn take(&mut self, page: &Value, listing: &Listing) {
        let what = self.what(listing);
        let nodes = page["nodes"].as_array().unwrap_or_else(|| panic!("{what}: no nodes in {page}"));
        let info = &page["pageInfo"];
        assert_eq!(info["startCursor"].is_null(), nodes.is_empty(), "{what}: startCursor null only on an empty page");
        assert_eq!(info["endCursor"].is_null(), nodes.is_empty(), "{what}: endCursor null only on an empty page");
        let started = self.requests > 0;
        let (behind, ahead) =
            if self.backward { ("hasNextPage", "hasPreviousPage") } else { ("hasPreviousPage", "hasNextPage") };
        assert_eq!(info[behind], started, "{what}: {behind} on page {}", self.requests + 1);
        let more = info[ahead].as_bool().expect("a boolean");
        if more {
            assert_eq!(nodes.len(), self.size, "{what}: a page short of the end is full");
        } else {
            assert!(nodes.len() <= self.size, "{what}: the last page");
        }
        let nodes = nodes.clone();
        if self.backward {
            self.pages.insert(0, nodes);
            self.cursor = info["startCursor"].as_str().map(str::to_string);
        } else {
            self.pages.push(nodes);
            self.cursor = info["endCursor"].as_str().map(str::to_string);
        }
        self.requests += 1;
        self.done = !more;
        assert!(self.requests <= ITEMS * 2 + 2, "{what}: no end in sight");
    }

    fn items(&self) -> Vec<Value> {
        self.pages.iter().flatten().cloned().collect()
    }
}

/// Advances every walk to its end, one request per round for all of them.
async fn walk_all(app: &TestApp, listing: &Listing, walks: &mut [Walk]) {
    walk_with(app, listing, walks, |_| async {}).await
}

/// Like [`walk_all`], running `between` after each round (given the round's number).
async fn walk_with<F, Fut>(app: &TestApp, listing: &Listing, walks: &mut [Walk], mut between: F)
where
    F: FnMut(usize) -> Fut,
    Fut: std::future::Future<Output = ()>,
{
    let mut round = 0;
    loop {
        let active: Vec<usize> = (0..walks.len()).filter(|&i| !walks[i].done).collect();
        if active.is_empty() {
            return;
        }
        let fields: Vec<String> = active.iter().map(|&i| walks[i].field(&format!("w{i}"), listing)).collect();
        let data = app.gql_ok(&format!("{{ {} }}", fields.join("\n")), json!({})).await;
        for &i in &active {
            let page = listing.connection(&data[format!("w{i}")]);
            walks[i].take(page, listing);
        }
        round += 1;
        between(round).await;
    }
}

/// The walk saw every item once, in the ordering's order.
fn assert_whole_and_ordered(listing: &Listing, walk: &Walk) {
    let what = walk.what(listing);
    let items = walk.items();
    let seen: Vec<String> = items.iter().map(listing.identity).collect();
    let distinct: HashSet<&String> = seen.iter().collect();
    assert_eq!(distinct.len(), seen.len(), "{what}: an item came twice");
    let all: HashSet<&String> = listing.created.keys().collect();
    assert_eq!(distinct, all, "{what}: the walk is the whole set");
    assert_in_order(listing, walk, &items);
}

fn assert_in_order(listing: &Listing, walk: &Walk, items: &[Value]) {
    let descending = walk.direction == "DESC";
    for pair in items.windows(2) {
        assert_eq!(
            listing.compare(walk.ordering, descending, &pair[0], &pair[1]),
            Ordering::Less,
            "{}: out of order: {} then {}",
            walk.what(listing),
            pair[0],
            pair[1]
        );
    }
}

// ---- creating items ------------------------------------------------------------------

/// Test fixtures shared by the connections: the buyer and the record of every purchase.
struct Store {
    customer: String,
    record: String,
}

async fn aliased_mutations(app: &TestApp, mutations: Vec<String>) -> Vec<String> {
    let mut ids = Vec::with_capacity(mutations.len());
    for chunk in mutations.chunks(50) {
        let body: Vec<String> = chunk.iter().enumerate().map(|(i, mutation)| format!("m{i}: {mutation}")).collect();
        let data = app.gql_ok(&format!("mutation {{ {} }}", body.join("\n")), json!({})).await;
        // Mutations run one after another, in the document's order.
        ids.extend((0..chunk.len()).map(|i| data[format!("m{i}")]["id"].as_str().expect("an id").to_string()));
    }
    ids
}

/// Creates items `range` of a kind; returns their identities in creation order.
async fn create(app: &TestApp, kind: Kind, range: std::ops::Range<usize>, store: Option<&Store>) -> Vec<String> {
    match kind {
        Kind::Products => {
            // Names repeat (ties) and are spread over the order; one in five has no offers.
            let mutations = range
                .clone()
                .map(|i| {
                    format!(
                        r#"createProduct(input: {{ name: "item{:03}", sku: "paging-{i}" }}) {{ id }}"#,
                        (i * 37) % 101
                    )
                })
                .collect();
            let ids = aliased_mutations(app, mutations).await;
            for i in range.filter(|i| i % 5 != 0) {
                let price = 100 + ((i * 13) % 40) as i64;
                set_lowest_price(app, &format!("paging-{i}"), price).await;
            }
            ids
        }
        Kind::Records => {
            let mutations = range
                .map(|i| {
                    let title = if i % 2 == 0 {
                        format!("title{:03}", (i * 7) % 89)
                    } else {
                        format!("TITLE{:03}", (i * 7) % 89)
                    };
                    format!(
                        r#"createRecord(input: {{ title: "{title}", artist: "artist{:02}", genre: "jazz",
                            releaseYear: {}, price: {}, stock: 1000000 }}) {{ id }}"#,
                        i % 23,
                        1950 + i % 40,
                        500 + (i * 11) % 60
                    )
                })
                .collect();
            aliased_mutations(app, mutations).await
        }
        Kind::Customers => {
            let mutations = range
                .map(|i| {
                    let name = if i % 2 == 0 {
                        format!("name{:03}", (i * 17) % 83)
                    } else {
                        format!("NAME{:03}", (i * 17) % 83)
                    };
                    format!(r#"createCustomer(input: {{ name: "{name}", email: "paging{i}@example.com" }}) {{ id }}"#)
                })
                .collect();
            aliased_mutations(app, mutations).await
        }
        Kind::Purchases | Kind::CustomerPurchases => {
            let store = store.expect("the store's customer and record");
            let mutations = range
                .map(|i| {
                    format!(
                        r#"createPurchase(input: {{ customerId: "{}", recordId: "{}", quantity: {} }}) {{ id }}"#,
                        store.customer,
                        store.record,
                        1 + i % 4
                    )
                })
                .collect();
            aliased_mutations(app, mutations).await
        }
        Kind::Uploads => {
            let mut identities = Vec::new();
            for i in range {
                // Each body one byte longer than the last: `bytes` tells them apart.
                let body = format!(r#"[{}{{"id":"paging-upload-{i}","name":"upload {i}"}}]"#, " ".repeat(i));
                let answer = app
                    .http
                    .post(app.url("/v1/products"))
                    .header("content-type", "application/x-www-form-urlencoded")
                    .body(body.clone())
                    .send()
                    .await
                    .expect("POST /v1/products");
                assert_eq!(answer.status(), 200, "upload {i} accepted");
                identities.push(body.len().to_string());
            }
            identities
        }
        Kind::IntakeMessages => {
            let messages: Vec<Value> = range
                .clone()
                .map(|i| {
                    json!({ "id": format!("paging-{i}"), "title": format!("T{i}"), "author": "Tester", "year": "2026",
                            "genre": "romance", "summary": "s" })
                })
                .collect();
            let answer = app
                .http
                .post(app.url("/v1/intake"))
                .header("content-type", "application/json")
                .body(Value::Array(messages).to_string())
                .send()
                .await
                .expect("POST /v1/intake");
            assert_eq!(answer.status(), 202, "intake accepted");
            range.map(|i| format!("paging-{i}")).collect()
        }
    }
}

/// Gives the product (by sku) one offer at `price`, through the offer sync's own apply.
async fn set_lowest_price(app: &TestApp, sku: &str, price: i64) {
    use emporium::catalog::{client::RemoteOffer, sync::apply};
    let db = &app.state.db;
    let sql = "SELECT id FROM products WHERE sku = $1";
    let row = db.query_one_raw(emporium::db::stmt(db, sql, [sku.into()])).await.expect("query").expect("the product");
    let id: i64 = row.try_get("", "id").expect("id");
    let offers = [RemoteOffer { source_id: "only".into(), price, items_in_stock: 1 }];
    apply(&app.node.catalog, id, &offers, emporium::db::now_ms()).await.expect("apply offers");
}

/// A node that does not run jobs (products stay unregistered, so only the test sets
/// offers; uploads and messages stay queued) and takes a round of every walk at once.
async fn spawn(env: &TestEnv) -> TestApp {
    TestApp::spawn_with(env, |config| {
        config.jobs.job_workers = 0;
        config.catalog.offers_sync_cron = "0 0 0 1 1 *".into();
        config.graphql.graphql_max_root_fields = 1000;
        config.graphql.graphql_max_aliases = 1000;
        config.graphql.graphql_max_fields = 100_000;
        config.graphql.graphql_max_complexity = 100_000_000;
    })
    .await
}

async fn listing_with_items(app: &TestApp, kind: Kind, store: &Store) -> Listing {
    let mut listing = Listing::new(kind, &store.customer);
    let identities = match kind {
        // The same purchases: the customer's are every purchase.
        Kind::CustomerPurchases => Vec::new(),
        _ => create(app, kind, 0..ITEMS, Some(store)).await,
    };
    listing.created = identities.into_iter().enumerate().map(|(at, identity)| (identity, at)).collect();
    listing
}

// Two workers: the node answers on one core while the walks' checks run on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_connection_walks_both_ways_in_every_ordering() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await;
    let started = std::time::Instant::now();

    let mut customers = Listing::new(Kind::Customers, "");
    customers.created =
        create(&app, Kind::Customers, 0..ITEMS, None).await.into_iter().enumerate().map(|(at, id)| (id, at)).collect();
    let mut records = Listing::new(Kind::Records, "");
    records.created =
        create(&app, Kind::Records, 0..ITEMS, None).await.into_iter().enumerate().map(|(at, id)| (id, at)).collect();
    let first_of = |listing: &Listing| {
        listing.created.iter().find(|(_, at)| **at == 0).map(|(id, _)| id.clone()).expect("a first item")
    };
    let store = Store { customer: first_of(&customers), record: first_of(&records) };
    let purchases = listing_with_items(&app, Kind::Purchases, &store).await;
    let mut of_customer = Listing::new(Kind::CustomerPurchases, &store.customer);
    of_customer.created = purchases.created.clone();
    let listings = vec![
        listing_with_items(&app, Kind::Products, &store).await,
        records,
        customers,
        purchases,
        of_customer,
        listing_with_items(&app, Kind::Uploads, &store).await,
        listing_with_items(&app, Kind::IntakeMessages, &store).await,
    ];
    let created = started.elapsed();

    // Some products have no lowest price: the null rule is walked too.
    let products = &listings[0];
    assert!(products.created.len() == ITEMS);

    let walking = std::time::Instant::now();
    let runs = listings.iter().map(|listing| {
        let app = &app;
        async move {
            let mut walks = Walk::every(listing, &SIZES);
            walk_all(app, listing, &mut walks).await;
            for walk in &walks {
                assert_whole_and_ordered(listing, walk);
            }
            walks.len()
        }
    });
    let walks: usize = futures::future::join_all(runs).await.into_iter().sum();
    eprintln!(
        "{walks} walks over {} connections: items created in {created:?}, walked in {:?}",
        listings.len(),
        walking.elapsed()
    );

    // Inserts during a walk: what existed before is neither skipped nor repeated.
    let mut next = ITEMS;
    // Purchases inserted by the walk of `purchases` are the customer's too.
    let mut more_purchases: HashMap<String, usize> = HashMap::new();
    for listing in &listings {
        let mut grown = Listing::new(listing.kind, &store.customer);
        grown.created = listing.created.clone();
        if listing.kind == Kind::CustomerPurchases {
            grown.created.extend(more_purchases.clone());
        }
        let before: HashSet<String> = grown.created.keys().cloned().collect();
        let mut walks = Walk::every(listing, &[7]);
        let kind = listing.kind;
        let inserted = std::cell::RefCell::new(Vec::new());
        let from = next;
        walk_with(&app, listing, &mut walks, |round| {
            let inserted = &inserted;
            let app = &app;
            let store = &store;
            async move {
                if round % 4 == 1 && round < 30 {
                    let at = from + inserted.borrow().len();
                    let new = create(app, kind, at..at + 3, Some(store)).await;
                    inserted.borrow_mut().extend(new);
                }
            }
        })
        .await;
        let inserted = inserted.into_inner();
        next += inserted.len();
        for (at, identity) in inserted.iter().enumerate() {
            grown.created.insert(identity.clone(), from + at);
            if listing.kind == Kind::Purchases {
                more_purchases.insert(identity.clone(), from + at);
            }
        }
        for walk in &walks {
            let what = walk.what(listing);
            let items = walk.items();
            let seen: Vec<String> = items.iter().map(listing.identity).collect();
            let distinct: HashSet<&String> = seen.iter().collect();
            assert_eq!(distinct.len(), seen.len(), "{what} with inserts: an item came twice");
            let missed: Vec<&String> = before.iter().filter(|item| !distinct.contains(item)).collect();
            assert!(missed.is_empty(), "{what} with inserts: skipped {missed:?}");
            assert_in_order(&grown, walk, &items);
        }
        // The connection now holds the inserted items too (purchases and the customer's
        // purchases are the same items).
        assert!(!inserted.is_empty(), "{:?}: items were inserted during the walk", listing.kind);
    }
    app.stop().await;
}

#[tokio::test]
async fn refusals_name_what_is_wrong_and_pages_between_two_cursors() {
    let env = TestEnv::new().await;
    let app = spawn(&env).await;
    create(&app, Kind::Products, 0..3, None).await;
    let page = "query($first: Int, $last: Int, $after: String, $before: String, $order: ProductOrder) {
        products(first: $first, last: $last, after: $after, before: $before, orderBy: $order) {
            pageInfo { endCursor } nodes { id } } }";

    let both = app.gql(page, json!({ "first": 1, "last": 1 })).await;
    assert_eq!(error_code(&both).as_deref(), Some("BAD_USER_INPUT"), "{both}");

    let too_many = app.gql(page, json!({ "last": 101 })).await;
    assert_eq!(error_code(&too_many).as_deref(), Some("BAD_USER_INPUT"), "{too_many}");

    let by_name = json!({ "field": "NAME", "direction": "ASC" });
    let first = app.gql_ok(page, json!({ "first": 1, "order": by_name })).await;
    let cursor = first["products"]["pageInfo"]["endCursor"].as_str().expect("a cursor").to_string();
    let edges = app
        .gql_ok(
            "{ products(last: 2) { edges { cursor } pageInfo { startCursor endCursor hasPreviousPage hasNextPage } } }",
            json!({}),
        )
        .await;
    let products = &edges["products"];
    assert_eq!(products["pageInfo"]["startCursor"], products["edges"][0]["cursor"]);
    assert_eq!(products["pageInfo"]["endCursor"], products["edges"][1]["cursor"]);
    assert_eq!(products["pageInfo"]["hasPreviousPage"], true, "3 products, the last 2: one before");
    assert_eq!(products["pageInfo"]["hasNextPage"], false);
    for (order, argument) in [
        (json!({ "field": "NAME", "direction": "DESC" }), "after"),
        (json!({ "field": "LOWEST_PRICE" }), "before"),
        (Value::Null, "after"),
    ] {
        let mut variables = json!({ "order": order });
        variables[argument] = json!(cursor);
        let refused = app.gql(page, variables).await;
        assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{refused}");
        let message = refused["errors"][0]["message"].as_str().unwrap_or_default();
        assert!(message.contains("{field: NAME, direction: ASC}"), "the error names the cursor's ordering: {message}");
    }
    // The default direction is ASC: the same ordering.
    app.gql_ok(page, json!({ "after": cursor, "order": { "field": "NAME" } })).await;

    // `after` with `before`: the items between them, read either way.
    let all = app.gql_ok("{ products(first: 3) { edges { cursor node { id } } } }", json!({})).await;
    let edges = all["products"]["edges"].as_array().expect("edges").clone();
    let between = |size: &str| {
        format!(
            r#"{{ products({size}: 10, after: "{}", before: "{}") {{ nodes {{ id }} pageInfo {{ hasPreviousPage hasNextPage }} }} }}"#,
            edges[0]["cursor"].as_str().expect("a cursor"),
            edges[2]["cursor"].as_str().expect("a cursor")
        )
    };
    // The Relay spec: in the reading direction, only what lies between the cursors counts.
    for (size, previous, next) in [("first", true, false), ("last", false, true)] {
        let page = app.gql_ok(&between(size), json!({})).await;
        assert_eq!(page["products"]["nodes"], json!([edges[1]["node"]]), "{size}: only the middle product");
        let expected = json!({ "hasPreviousPage": previous, "hasNextPage": next });
        assert_eq!(page["products"]["pageInfo"], expected, "{size}");
    }

    for garbage in ["garbage", "Tk9QRQ", ""] {
        let refused = app.gql(page, json!({ "after": garbage })).await;
        assert_eq!(error_code(&refused).as_deref(), Some("BAD_USER_INPUT"), "{garbage}: {refused}");
    }
    app.stop().await;
}
