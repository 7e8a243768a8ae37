//! The real binary on real sockets (`CARGO_BIN_EXE_durable-streams` on port
//! 0, through `common::server`): start-up and configuration, the native
//! HTTP/1.1 engine, hostile requests and clients, the container contract,
//! https webhooks, and a bounded soak.

#[path = "../common/mod.rs"]
mod common;

mod container;
mod h1;
mod hostile;
mod hostile_clients;
mod retention;
mod soak;
mod startup;
mod webhook_tls;
