//! Storage-level tests: the `Storage` contract on every backend, called
//! directly (no HTTP): the model-based driver (each durable backend against
//! the memory backend), control-plane records, postgres leadership, backup
//! archives, golden files of every on-disk format, and bounded fuzzing of
//! the parsers and of file-backend recovery.

#[path = "../common/mod.rs"]
mod common;

mod backup;
mod cluster;
mod control;
mod fuzz;
mod golden;
mod model;
mod trim;
