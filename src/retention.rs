//! The retention sweeper: applies the `[[retention]]` policies
//! ([`crate::config::retention`]) by trimming ([`Storage::trim`]) the
//! matching streams, run every `sweep_interval` while appends and reads go
//! on.
//!
//! * `max_bytes`: the records that lie wholly before the newest
//!   `max_bytes` bytes are dropped (the record the limit falls inside is
//!   kept, as a trim inside a record keeps it).
//! * `max_age`: records do not carry their append time, so the sweeper
//!   samples each stream's tail on every pass that finds it moved: a tail
//!   dated `t` means every record before it was appended by `t`. The date
//!   is the stream's last access, not the pass's time: every append sets
//!   it and is stored with it, so it is never earlier than the newest
//!   record's append, and data already stored when the process starts ages
//!   from its last write (or read) before the start ([`Sweeper::seed`]
//!   samples it before the first request), not from the start. Records are
//!   dropped once a sample at least `max_age` old covers them: within one
//!   sweep interval of their age, never early.
//!
//! Streams matched by several policies get the furthest trim of them. The
//! sweeper reads and trims "at" each stream's last access, so it never
//! renews a sliding TTL. On several nodes every one sweeps; trims are
//! idempotent.

use std::collections::{HashMap, VecDeque};

use crate::config::retention::RetentionPolicy;
use crate::offset::{Offset, ReadFrom};
use crate::storage::{Millis, ReadRequest, Storage, StorageError, StreamMeta};
use crate::subscriptions::glob;

/// The sweeper's state: the policies and the tail samples per stream.
pub struct Sweeper {
    policies: Vec<RetentionPolicy>,
    /// Per stream name: its incarnation and `(time, tail)` samples, oldest
    /// first.
    samples: HashMap<String, (u64, VecDeque<(Millis, Offset)>)>,
}

impl Sweeper {
    pub fn new(policies: Vec<RetentionPolicy>) -> Self {
        Sweeper {
            policies,
            samples: HashMap::new(),
        }
    }

    /// Samples the tail of every stream a `max_age` policy matches, trimming
    /// nothing: run once as the server starts, before it answers a request,
    /// so that the samples of the data already stored are dated by the last
    /// access stored with it, not by the first read after the start (a
    /// reader reconnecting at once would renew it). Blocking, as [`run`].
    ///
    /// [`run`]: Sweeper::run
    pub fn seed(&mut self, s: &dyn Storage, now: Millis) -> Result<(), StorageError> {
        if self.policies.iter().all(|p| p.max_age.is_none()) {
            return Ok(());
        }
        for (name, meta) in s.list_streams()? {
            let policies = self.matching(&name);
            if !policies.is_empty() && !meta.soft_deleted && !meta.is_expired(now) {
                self.age_cut(&name, &meta, &policies, now);
            }
        }
        Ok(())
    }

    fn matching(&self, name: &str) -> Vec<RetentionPolicy> {
        self.policies
            .iter()
            .filter(|p| glob::matches(&p.streams, name))
            .cloned()
            .collect()
    }

    /// One pass at time `now` over every stream; returns how many were
    /// trimmed. Blocking (storage calls): run it off the async workers. A
    /// stream that fails is logged and skipped; the pass goes on.
    pub fn run(&mut self, s: &dyn Storage, now: Millis) -> Result<usize, StorageError> {
        let mut trimmed = 0;
        let mut live = Vec::new();
        for (name, meta) in s.list_streams()? {
            let policies = self.matching(&name);
            if policies.is_empty() || meta.soft_deleted || meta.is_expired(now) {
                continue;
            }
            live.push(name.clone());
            let by_age = self.age_cut(&name, &meta, &policies, now);
            let mut cut = by_age;
            for p in &policies {
                if let Some(max) = p.max_bytes
                    && let Some(at) = bytes_cut(s, &name, &meta, max)?
                {
                    cut = Some(cut.map_or(at, |c: Offset| if at.pos > c.pos { at } else { c }));
                }
            }
            let Some(cut) = cut.filter(|c| c.pos > meta.earliest().pos) else {
                continue;
            };
            match s.trim(&name, cut, meta.last_access) {
                Ok(out) if out.moved => trimmed += 1,
                Ok(_) => {}
                // Deleted, expired or written meanwhile: next pass.
                Err(e @ (StorageError::NotFound | StorageError::Gone)) => {
                    tracing::debug!(stream = %name, error = %e, "retention skipped a stream");
                }
                Err(e) => tracing::warn!(stream = %name, error = %e, "retention trim failed"),
            }
        }
        self.samples.retain(|n, _| live.contains(n));
        Ok(trimmed)
    }

    /// Records the stream's tail now and answers the furthest tail seen at
    /// least `max_age` ago (of the policies that have one).
    fn age_cut(
        &mut self,
        name: &str,
        meta: &StreamMeta,
        policies: &[RetentionPolicy],
        now: Millis,
    ) -> Option<Offset> {
        let entry = self
            .samples
            .entry(name.to_string())
            .or_insert_with(|| (meta.id, VecDeque::new()));
        if entry.0 != meta.id {
            *entry = (meta.id, VecDeque::new());
        }
        let samples = &mut entry.1;
        if samples.back().is_none_or(|&(_, tail)| tail != meta.tail) {
            // Dated by the last access (module docs), kept in order and
            // never after now (another node's clock may run ahead).
            let last = samples.back().map_or(0, |&(t, _)| t);
            samples.push_back((meta.last_access.min(now).max(last), meta.tail));
        }
        let shortest = policies.iter().filter_map(|p| p.max_age).min()?;
        // Nothing can be `max_age` old before `max_age` has passed.
        let cutoff = now.checked_sub(shortest.as_millis() as Millis)?;
        // Samples older than the newest one before the cutoff are covered
        // by it: drop them.
        while samples.len() > 1 && samples[1].0 <= cutoff {
            samples.pop_front();
        }
        samples
            .front()
            .filter(|&&(t, _)| t <= cutoff)
            .map(|&(_, tail)| tail)
    }
}

/// The most bytes one read of [`bytes_cut`] asks for: the acid and postgres
/// backends copy what they read, and a stream gigabytes over its limit must
/// not be read into memory at once.
const CUT_STEP: u64 = 16 << 20;

/// Where a trim that keeps the newest `max` bytes goes: a position the
/// stream minted at (or, for JSON, before) `tail - max`, found by reading
/// up to it in steps of [`CUT_STEP`]; `None` when nothing is over the limit.
fn bytes_cut(
    s: &dyn Storage,
    name: &str,
    meta: &StreamMeta,
    max: u64,
) -> Result<Option<Offset>, StorageError> {
    bytes_cut_by(s, name, meta, max, CUT_STEP)
}

fn bytes_cut_by(
    s: &dyn Storage,
    name: &str,
    meta: &StreamMeta,
    max: u64,
    step: u64,
) -> Result<Option<Offset>, StorageError> {
    let earliest = meta.earliest();
    let held = meta.tail.pos - earliest.pos;
    if held <= max {
        return Ok(None);
    }
    let target = earliest.pos + (held - max);
    let (mut at, mut cut) = (earliest, None);
    while at.pos < target {
        let want = (target - at.pos).min(step);
        let req = ReadRequest {
            from: ReadFrom::At(at),
            max_bytes: usize::try_from(want).unwrap_or(usize::MAX),
            lend_bytes: 0,
            // At the last access: a retention pass renews nothing.
            now: meta.last_access,
        };
        match s.read(name, req) {
            // JSON reads return whole messages and may overshoot: the cut
            // stays at the last boundary before the target.
            Ok(out) if out.next.pos <= target && out.next != at => {
                cut = Some(out.next);
                at = out.next;
            }
            Ok(_) => break,
            Err(StorageError::NotFound | StorageError::Gone | StorageError::Trimmed { .. }) => {
                return Ok(None);
            }
            Err(e) => return Err(e),
        }
    }
    Ok(cut)
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::notify::WakeHub;
    use crate::storage::memory::MemoryStorage;
    use crate::storage::{AppendRequest, CreateRequest};

    fn policy(streams: &str, age: Option<u64>, bytes: Option<u64>) -> RetentionPolicy {
        RetentionPolicy {
            streams: streams.into(),
            max_age: age.map(Duration::from_secs),
            max_bytes: bytes,
        }
    }

    fn append(s: &MemoryStorage, name: &str, body: &str, now: Millis) {
        s.append(
            name,
            AppendRequest::new(Some("text/plain"), body.to_string(), now),
        )
        .unwrap();
    }

    /// A store holding one stream, created with `body` at time zero.
    fn written_at_zero(name: &str, body: &'static str) -> MemoryStorage {
        let s = MemoryStorage::new(WakeHub::new());
        s.create(name, CreateRequest::new(Some("text/plain"), body, 0))
            .unwrap();
        s
    }

    fn all(s: &MemoryStorage, name: &str, now: Millis) -> String {
        let out = s
            .read(name, ReadRequest::all(ReadFrom::Start, now))
            .unwrap();
        String::from_utf8(out.concat()).unwrap()
    }

    #[test]
    fn max_bytes_keeps_the_newest_whole_records() {
        let s = MemoryStorage::new(WakeHub::new());
        for name in ["logs/a", "other"] {
            s.create(name, CreateRequest::new(Some("text/plain"), "aaaa", 0))
                .unwrap();
            append(&s, name, "bbbb", 0);
            append(&s, name, "cccc", 0);
        }
        let mut sw = Sweeper::new(vec![policy("logs/*", None, Some(6))]);
        assert_eq!(sw.run(&s, 1).unwrap(), 1);
        // 6 bytes fall inside `bbbb`: it is kept whole.
        assert_eq!(all(&s, "logs/a", 1), "bbbbcccc");
        assert_eq!(all(&s, "other", 1), "aaaabbbbcccc");
        assert_eq!(sw.run(&s, 2).unwrap(), 0, "nothing more to drop");
        append(&s, "logs/a", "dd", 2);
        sw.run(&s, 3).unwrap();
        assert_eq!(all(&s, "logs/a", 3), "ccccdd");
    }

    #[test]
    fn max_age_drops_what_was_there_max_age_ago() {
        let s = MemoryStorage::new(WakeHub::new());
        s.create("logs/a", CreateRequest::new(Some("text/plain"), "old;", 0))
            .unwrap();
        let mut sw = Sweeper::new(vec![policy("**", Some(10), None)]);
        sw.run(&s, 1_000).unwrap();
        append(&s, "logs/a", "new;", 5_000);
        sw.run(&s, 5_000).unwrap();
        assert_eq!(all(&s, "logs/a", 5_000), "old;new;");
        // 10 s after `old;` was written, it goes; `new;` stays.
        assert_eq!(sw.run(&s, 11_000).unwrap(), 1);
        assert_eq!(all(&s, "logs/a", 11_000), "new;");
        sw.run(&s, 15_500).unwrap();
        // A pass renews no sliding TTL: the last access is the test's read.
        assert_eq!(s.list_streams().unwrap()[0].1.last_access, 11_000);
        assert_eq!(all(&s, "logs/a", 15_500), "", "new; is 10 s old too");
    }

    #[test]
    fn data_stored_before_a_start_ages_from_its_last_access() {
        let s = MemoryStorage::new(WakeHub::new());
        for name in ["idle", "read"] {
            s.create(name, CreateRequest::new(Some("text/plain"), "old;", 0))
                .unwrap();
        }
        // `read` was read at 15 s: its records may be as new as that.
        all(&s, "read", 15_000);
        // A sweeper that starts (as after a restart) at 20 s, max_age 10 s:
        // `idle` was last written at 0, so it all goes at once.
        let mut sw = Sweeper::new(vec![policy("**", Some(10), None)]);
        assert_eq!(sw.run(&s, 20_000).unwrap(), 1);
        assert_eq!(all(&s, "idle", 20_000), "");
        assert_eq!(all(&s, "read", 20_000), "old;", "never before 25 s");
        append(&s, "read", "new;", 21_000);
        sw.run(&s, 21_000).unwrap();
        assert_eq!(sw.run(&s, 25_000).unwrap(), 1);
        assert_eq!(all(&s, "read", 25_000), "new;");
        // Seeded before a read renews the last access: the read does not
        // move the date of what was there.
        let seeded = written_at_zero("s", "old;");
        let mut sw = Sweeper::new(vec![policy("**", Some(10), None)]);
        sw.seed(&seeded, 20_000).unwrap();
        all(&seeded, "s", 20_001);
        assert_eq!(sw.run(&seeded, 20_002).unwrap(), 1);
        assert_eq!(all(&seeded, "s", 20_003), "");
        // Within the first `max_age` of the clock nothing is old enough,
        // not even what was written at its zero.
        let fresh = written_at_zero("t", "x");
        let mut early = Sweeper::new(vec![policy("**", Some(10), None)]);
        assert_eq!(early.run(&fresh, 9_999).unwrap(), 0);
        assert_eq!(all(&fresh, "t", 9_999), "x");
    }

    #[test]
    fn a_cut_far_over_the_limit_is_found_in_bounded_reads() {
        let s = MemoryStorage::new(WakeHub::new());
        s.create("t", CreateRequest::new(Some("text/plain"), "aaaa", 0))
            .unwrap();
        for body in ["bbbb", "cccc", "dddd", "ee"] {
            append(&s, "t", body, 0);
        }
        let json = CreateRequest::new(Some("application/json"), r#"["aa","bb","cc"]"#, 0);
        s.create("j", json).unwrap();
        let meta = |n: &str| {
            let all = s.list_streams().unwrap();
            all.into_iter().find(|(name, _)| name == n).unwrap().1
        };
        // 18 bytes, keep 5: the cut lies at 13, inside `dddd`, reached in
        // reads of at most 3 bytes.
        let at = bytes_cut_by(&s, "t", &meta("t"), 5, 3).unwrap().unwrap();
        assert_eq!(at.pos, 13);
        assert_eq!(bytes_cut_by(&s, "t", &meta("t"), 18, 3).unwrap(), None);
        // JSON (`"aa",` is 5 bytes): keep 6 of 15, so 9 may go; reads of 4
        // bytes take one whole message each, the second overshoots.
        let at = bytes_cut_by(&s, "j", &meta("j"), 6, 4).unwrap().unwrap();
        assert_eq!(at.pos, 5);
    }
}
