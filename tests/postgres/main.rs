//! The postgres backend through the real binary and the test harness
//! itself: several nodes on one database, TLS to the database, and
//! `common::pg` (fresh databases, the shared server's restart). Storage-level
//! postgres tests (model, control records, leadership) are in `storage`.

#[path = "../common/mod.rs"]
mod common;

mod cluster;
mod harness;
mod if_match;
mod tls;
