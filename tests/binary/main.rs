//! The real binary on real sockets (`CARGO_BIN_EXE_durable-streams` on port
//! 0, through `common::server`): start-up and configuration, the native
//! HTTP/1.1 engine, hostile requests and clients, the container contract,
//! https webhooks, HTTPS serving (TLS, HTTP/2 by ALPN), the proxy (shutdown,
//! kill -9, https upstreams), and a bounded soak.

#[path = "../common/mod.rs"]
mod common;

mod auth;
mod container;
mod h1;
mod hostile;
mod hostile_clients;
mod proxy;
mod proxy_tls;
mod rate_limit;
mod retention;
mod soak;
mod startup;
mod tls;
mod webhook_tls;
