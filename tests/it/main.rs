//! Black-box tests against spawned apps: in-process nodes on loopback, or `emporium`
//! processes for crash tests. SQLite by default; with `DATABASE_URL` (and `REDIS_URL`)
//! set, every test gets its own Postgres database (and Redis key prefix).

mod support;

mod backlog;
mod catalog;
mod cluster_s3;
mod feed;
mod foundation;
mod graphql_http;
mod hostile;
mod intake;
mod jobs;
mod nodes;
mod outage;
mod paging;
mod records;
mod schema_docs;
mod small_uploads;
mod upload_items;
mod uploads;
