//! Emporium: one service for a retailer's catalog (priced by live partner offers), record
//! store, bulk product uploads, intake pipeline and partner feed gateway.
//!
//! Layout: one module per domain owning its model, logic and API surface; GraphQL and
//! HTTP layers thin on top; cross-cutting parts (config, db, jobs, errors, events,
//! storage, telemetry) in their own modules.

pub mod app;
pub mod catalog;
pub mod config;
pub mod db;
pub mod error;
pub mod events;
pub mod feed;
pub mod graphql;
pub mod guard;
pub mod health;
pub mod http;
pub mod intake;
pub mod jobs;
pub mod records;
pub mod server;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod uploads;
