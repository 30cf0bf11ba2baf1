//! The one harness every API test shares; a test file imports from here
//! and never from another test file.
//!
//! - [`ai`]: a stand-in AI provider, and an app that uses it;
//! - [`app`]: an intake in this process per test (port 0, its own schema,
//!   its own key prefix), and what a test asks of it;
//! - [`bucket`]: the test bucket and clients that look into it;
//! - [`fixtures`]: accounts, file contents, multipart forms;
//! - [`clients`]: clients of the three upload routes (stream, presigned,
//!   tus);
//! - [`relay`]: loopback stand-ins for the network (proxy, balancer, fake
//!   storage);
//! - [`processes`]: intake, S3 and Postgres as processes a test kills and
//!   restarts;
//! - [`cluster`]: several intake processes of one deployment behind a
//!   balancer;
//! - [`metrics`]: what `/metrics` says, read by difference;
//! - [`raw`]: HTTP/1.1 by hand on one connection (what happens to it
//!   after an answer);
//! - [`tokens`]: upload tokens minted, counted, expired;
//! - [`poll`]: the one way to wait for something.

pub mod ai;
pub mod app;
pub mod bucket;
pub mod clients;
pub mod cluster;
pub mod fixtures;
pub mod metrics;
pub mod poll;
pub mod processes;
pub mod raw;
pub mod relay;
pub mod tokens;

// The names nearly every test file uses, at the top of the tree.
pub use app::{Backend, Holdings, TestApp, assert_problem, download, env, spawn, spawn_app};
pub use bucket::{S3_BUCKET, s3_client, s3_keys, s3_region, s3_store};
pub use fixtures::{Form, MIB, PASSWORD, Session};
pub use poll::{eventually, past, within};
pub use relay::{FakeStorage, Relay};
