//! The record store's tables as sea-orm entities (migration `m20261121_000003_store`).

pub mod customer;
pub mod purchase;
pub mod record;
