//! The catalog's tables as sea-orm entities (migration `m20261121_000002_catalog`, and
//! `settings` from the foundation migration, which only the catalog uses).

pub mod offer;
pub mod price_history;
pub mod product;
pub mod setting;
