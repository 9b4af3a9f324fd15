//! The intake table as a sea-orm entity (migration `m20261121_000005_intake`).

pub mod intake_message;
