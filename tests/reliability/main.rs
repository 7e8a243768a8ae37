//! Crash safety and faults on the durable backends: kill -9 of the real
//! binary (streams and subscription state), a full disk, and a torn tail
//! after a redb database's clean close.

#[path = "../common/mod.rs"]
mod common;

mod crash;
mod crash_trim;
mod full_disk;
mod subscriptions_restart;
mod torn_acid;
