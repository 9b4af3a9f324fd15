//! The uploads' tables as sea-orm entities (migrations `m20261121_000004_uploads` and
//! `m20261206_000012_upload_bodies`).

pub mod upload;
pub mod upload_body;
