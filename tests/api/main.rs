//! The API test suite: every test boots intake against real Postgres and the
//! real S3 test server (see the `helpers` tree), through `scripts/test.sh`.

// Tests fail loudly: unwrapping is how they assert.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod admin;
mod ai;
mod auth;
mod auth_limits;
mod buffers;
mod cli;
mod cluster;
mod connections;
mod cors;
mod dashboard;
mod files;
mod garage_cluster;
mod helpers;
mod idempotency;
mod limits;
mod ops;
mod presign;
mod ratelimit;
mod reconcile;
mod schema;
mod sessions;
mod soak;
mod storage;
mod tus;
mod upload;
mod upload_tokens;
