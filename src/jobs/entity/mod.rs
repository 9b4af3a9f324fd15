//! The job queue's and periodic jobs' tables as sea-orm entities (migration
//! `m20261121_000001_foundation`).

pub mod job;
pub mod periodic_lease;
pub mod periodic_run;
