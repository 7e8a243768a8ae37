//! Router-level tests: the whole HTTP layer in-process, driven with
//! `tower::ServiceExt::oneshot` (no socket), mostly over the memory backend.
//! Scaffolding: `common::router` and `common::json_api`.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod compression;
mod front_parity;
mod http_router;
mod if_match;
mod jwt;
mod live;
mod ops;
mod proxy;
mod proxy_hostile;
mod subscriptions;
mod subscriptions_links;
mod subscriptions_timing;
mod trim;
