//! The intake tables as sea-orm entities (migrations `m20261121_000005_intake` and
//! `m20261205_000010_intake_notices`).

pub mod intake_message;
pub mod intake_notice;
