//! Emporium: one service for a retailer's catalog (priced by live partner offers), record
//! store, bulk product uploads, intake pipeline and partner feed gateway.
//!
//! Layout: one module per domain owning its model, logic and API surface; GraphQL and
//! HTTP layers thin on top; cross-cutting parts (config, db, jobs, errors, events,
//! storage, telemetry) in their own modules.

// Infrastructure: knows no domain.
pub mod dates;
pub mod db;
pub mod error;
pub mod events;
pub mod global_id;
pub mod guard;
pub mod health;
pub mod jobs;
pub mod paging;
pub mod server;
pub mod settings;
pub mod state;
pub mod storage;
pub mod telemetry;

// Domains: each owns its model, entities, logic, handle and settings section.
pub mod catalog;
pub mod feed;
pub mod intake;
pub mod records;
pub mod uploads;

// Assembly: the settings, the node's wiring, GraphQL and HTTP, and running a node.
pub mod app;
pub mod config;
pub mod graphql;
pub mod http;
pub mod node;
