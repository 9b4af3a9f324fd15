//! The uploads table as a sea-orm entity (migration `m20261121_000004_uploads`).

pub mod upload;
