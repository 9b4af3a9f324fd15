//! Catalog benchmark helpers, driven by `bench/catalog.sh`.
//!
//! - `helpers catalog-baseline LISTEN DATABASE_URL`: the reference for the GraphQL catalog query.
//!   A minimal axum handler that answers any request to `/graphql` with exactly the JSON
//!   of `products(first: 50) { nodes { name offers { price itemsInStock } } }`, built
//!   from one hand-written SQL query.
//! - `helpers catalog-sync DATABASE_URL`: times full offer syncs of every registered product
//!   against the bundled simulator (in-process, on loopback), through the same code the
//!   periodic job runs.

use std::{net::SocketAddr, time::Instant};

use axum::{Json, Router, extract::State, routing::any};
use clap::Parser as _;
use futures::StreamExt as _;
use sea_orm::{
    ConnectionTrait as _,
    sqlx::{self, postgres::PgPoolOptions},
};
use serde::Serialize;

#[derive(Serialize)]
struct Offer {
    price: i64,
    #[serde(rename = "itemsInStock")]
    items_in_stock: i64,
}

#[derive(Serialize)]
struct Product {
    name: String,
    offers: Vec<Offer>,
}

pub async fn baseline(listen: SocketAddr, database_url: &str) -> anyhow::Result<()> {
    let pool = PgPoolOptions::new().max_connections(16).connect(database_url).await?;
    let app = Router::new().route("/graphql", any(first_page)).with_state(pool);
    let listener = tokio::net::TcpListener::bind(listen).await?;
    axum::serve(listener, app).await?;
    Ok(())
}

/// The first 50 products (by id) with their offers (cheapest first), in one query.
async fn first_page(State(pool): State<sqlx::PgPool>) -> Result<Json<serde_json::Value>, String> {
    let rows: Vec<(i64, String, Option<i64>, Option<i64>)> = sqlx::query_as(
        "SELECT p.id, p.name, o.price, o.items_in_stock
         FROM (SELECT id, name FROM products ORDER BY id LIMIT 50) p
         LEFT JOIN offers o ON o.product_id = p.id
         ORDER BY p.id, o.price, o.id",
    )
    .fetch_all(&pool)
    .await
    .map_err(|error| error.to_string())?;
    let mut nodes: Vec<Product> = Vec::with_capacity(50);
    let mut last_id = None;
    for (id, name, price, items_in_stock) in rows {
        if last_id != Some(id) {
            nodes.push(Product { name, offers: Vec::new() });
            last_id = Some(id);
        }
        if let (Some(price), Some(items_in_stock), Some(product)) = (price, items_in_stock, nodes.last_mut()) {
            product.offers.push(Offer { price, items_in_stock });
        }
    }
    Ok(Json(serde_json::json!({ "data": { "products": { "nodes": nodes } } })))
}

pub async fn sync(database_url: &str) -> anyhow::Result<()> {
    let sim = sim::Simulator::start(
        SocketAddr::from(([127, 0, 0, 1], 0)),
        sim::SimConfig {
            offers_tick: std::time::Duration::ZERO,
            feed_periods: vec![std::time::Duration::ZERO; 3],
            ..sim::SimConfig::default()
        },
    )
    .await?;
    let data = std::env::temp_dir().join(format!("emporium-bench-{}", std::process::id()));
    let mut config = emporium::config::Cli::try_parse_from(["emporium"])?.serve;
    config.listen = SocketAddr::from(([127, 0, 0, 1], 0));
    config.database.database_url = Some(database_url.to_string());
    config.database.data_dir = data.clone();
    config.upstreams.offers_url = Some(sim.offers_url());
    config.upstreams.feed_sources = sim.feed_urls().into_iter().map(|(url, _)| format!("{url}@3600s")).collect();
    config.catalog.offers_sync_cron = "0 0 0 1 1 *".into();
    config.log_filter = "warn".into();
    emporium::telemetry::init_logging("text", &config.log_filter);
    let concurrency = config.catalog.offers_sync_concurrency;
    let app = emporium::app::App::build(config).await?;
    let state = app.node.catalog.clone();

    // The seeded products are registered in our database; register them with this fresh
    // simulator too (not timed), so the sync finds their offers.
    let ids = emporium::catalog::sync::registered_product_ids(&state.db).await?;
    let (client, db) = (&state.offers, &state.db);
    client.token(db).await?;
    let failures = futures::stream::iter(ids.iter().copied())
        .map(|id| async move { client.register(db, id, "bench product", "").await.is_err() })
        .buffer_unordered(64)
        .filter(|failed| std::future::ready(*failed))
        .count()
        .await;
    anyhow::ensure!(failures == 0, "{failures} products could not be registered with the simulator");

    for (label, tick) in [("first sync (replaces the seeded offers)", false), ("sync after a price tick", true)] {
        if tick {
            sim.tick_offers();
        }
        let started = Instant::now();
        let report = emporium::catalog::sync_offers(&state).await?;
        let seconds = started.elapsed().as_secs_f64();
        println!(
            "offer sync, {label}: {} products in {seconds:.2} s = {:.0} products/s \
             (OFFERS_SYNC_CONCURRENCY={concurrency}; synced {}, failed {}, {} offer price changes)",
            report.products,
            report.products as f64 / seconds,
            report.synced,
            report.failed,
            report.price_changes,
        );
    }
    let history = state
        .db
        .query_one_raw(emporium::db::stmt(&state.db, "SELECT COUNT(*) AS n FROM price_history", []))
        .await?
        .and_then(|row| row.try_get::<i64>("", "n").ok())
        .unwrap_or_default();
    println!("price history rows after the syncs: {history}");
    sim.shutdown().await;
    let _ = std::fs::remove_dir_all(data);
    Ok(())
}
