//! Helpers shared by every test binary, reached the same way from each
//! (`#[path = "../common/mod.rs"] mod common;` in its `main.rs`):
//!
//! * [`server`]: the real binary on a free port, minimal HTTP/1.1 over a
//!   plain socket (re-exported here: `common::Server`, `common::request`);
//! * [`router`]: the axum router in-process over the memory backend, driven
//!   with `oneshot` (no socket);
//! * [`json_api`]: JSON API calls through the router;
//! * [`observed`]: a memory backend whose reads are counted and can fail;
//! * [`pg`]: the PostgreSQL server and fresh databases for postgres tests;
//! * [`stores`]: file and acid stores opened the usual way;
//! * [`upstream`]: a fake upstream (SSE tokens, failing, stalling,
//!   redirecting) for the proxy tests.
//!
//! Each binary uses only part of this, hence the `dead_code` allowance.
#![allow(dead_code)]

pub mod json_api;
pub mod observed;
pub mod pg;
pub mod router;
pub mod server;
pub mod stores;
pub mod upstream;

#[allow(unused_imports)] // each binary uses a part
pub use server::{Reply, Server, parse, request, try_request};
