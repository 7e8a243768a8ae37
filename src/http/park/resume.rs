//! A parked reader made active again: why it left the parking, and what
//! its connection must do next ([`Resume`]), handed to the engine that
//! runs connections ([`Conns`]).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;

use super::{ConnToken, Finish, Group, Kind, Member, Parking, Ticket};
use crate::http::sse::Encoding;
use crate::metrics::LiveGuard;
use crate::offset::Offset;

/// A parked reader made active again, and why.
pub(super) struct Unpark {
    pub(super) member: Member,
    pub(super) why: Why,
}

pub(super) enum Why {
    /// Read storage from the reader's offset and go on (no usable records
    /// in a wake, a deadline, shutdown). `park`: it may park again.
    Reread { park: bool },
    /// SSE: the socket took only part of an event; the rest is this.
    Partial(Bytes),
    /// SSE: the stream closed with the event just written (of which the
    /// socket did not take this rest): end the response.
    End(Option<Bytes>),
    /// Long-poll, answered: the socket took only part of the answer; the
    /// rest is this.
    Written(Bytes),
}

/// What the parking needs of the connection it takes over.
pub struct Handover {
    pub tcp: tokio::net::TcpStream,
    pub peer: SocketAddr,
    pub keep: bool,
    pub token: ConnToken,
    /// Input is pending on the connection (buffered or seen by the body
    /// loop): it must stay active.
    pub input: bool,
}

/// What the connection must do when it is active again.
pub enum Resume {
    /// A reader that did not park after all: go on with it.
    Active(Ticket),
    /// A parked SSE subscriber: write `leftover`, then stream on from
    /// `next` (reading storage first).
    Sse {
        name: String,
        next: Offset,
        deadline: tokio::time::Instant,
        live: LiveGuard,
        enc: Encoding,
        cursor: Option<u64>,
        leftover: Option<Bytes>,
        park: bool,
    },
    /// A parked SSE subscriber whose stream closed: write `leftover`, end
    /// the response.
    SseEnd { leftover: Option<Bytes> },
    /// A long-poller answered while parked: write `leftover`, then go on
    /// with the connection's next request (or close it, without `keep`).
    Answered { leftover: Option<Bytes> },
    /// A parked long-poller: read from `next` (a deadline, a wake without
    /// usable records, input, shutdown, an answer that was not ready).
    LongPoll {
        name: String,
        next: Offset,
        deadline: tokio::time::Instant,
        live: LiveGuard,
        cursor: Option<u64>,
        park: bool,
    },
}

/// The connection of a reader made active again.
pub struct Resumed {
    pub tcp: std::net::TcpStream,
    pub peer: SocketAddr,
    pub keep: bool,
    pub token: ConnToken,
    pub finish: Option<Box<Finish>>,
    pub resume: Resume,
    /// A next poll's turn ([`super::turns`]): the engine drops it when the
    /// connection's task starts.
    pub turn: Option<super::turns::Turn>,
}

/// What the parking needs of the HTTP engine whose connections it holds
/// (the `h1` engine's).
pub trait Conns: Send + Sync {
    /// Runs a connection made active again, on a task of its own.
    fn resume(&self, r: Resumed);
    /// The bytes of the long-poll answer `res` to a request on `path`,
    /// finished as the fast path finishes every answer (with `f`: headers,
    /// log line, metrics), and whether the connection stays open after it
    /// (`keep`, unless the answer or a shutdown says otherwise). `None`
    /// when the body is not all ready at once (never for answers made of
    /// a wake's records).
    fn encode(
        &self,
        res: Result<axum::response::Response, crate::http::error::ApiError>,
        f: Option<Box<Finish>>,
        path: &str,
        keep: bool,
    ) -> Option<(Vec<Bytes>, bool)>;
    /// How long an answered connection may wait for its next request.
    fn idle(&self) -> Duration;
}

/// The engine of a parking lot's connections.
pub type Spawn = Arc<dyn Conns>;

impl Parking {
    /// An answered connection's next request came: its task starts in
    /// turn ([`super::turns`]).
    pub(super) fn next_poll(&self, group: &Group, member: Member, spawn: &Spawn) {
        let why = Why::Reread { park: false };
        if let Some(r) = resumed(group, member, why, self) {
            self.turns.push(r, spawn);
        }
    }

    /// Makes `list` active again: each gets a task of its own.
    pub(super) fn unpark(&self, group: &Group, list: Vec<Unpark>, spawn: &Spawn) {
        for Unpark { member, why } in list {
            if let Some(r) = resumed(group, member, why, self) {
                spawn.resume(r);
            }
        }
    }
}

/// The connection and instructions for a member made active.
fn resumed(group: &Group, m: Member, why: Why, p: &Parking) -> Option<Resumed> {
    let deadline = p.to_instant(m.deadline);
    let name = group.name.clone();
    let resume = match (m.kind, why, m.live) {
        (Kind::Answered, Why::Reread { .. }, _) => Resume::Answered { leftover: None },
        (Kind::Answered, Why::Written(rest), _) => Resume::Answered {
            leftover: Some(rest),
        },
        (Kind::Sse { enc, cursor }, Why::Reread { park }, Some(live)) => Resume::Sse {
            name,
            next: m.next,
            deadline,
            live,
            enc,
            cursor,
            leftover: None,
            park,
        },
        (Kind::Sse { enc, cursor }, Why::Partial(rest), Some(live)) => Resume::Sse {
            name,
            next: m.next,
            deadline,
            live,
            enc,
            cursor,
            leftover: Some(rest),
            park: true,
        },
        (Kind::Sse { .. }, Why::End(leftover), _) => Resume::SseEnd { leftover },
        (Kind::LongPoll { cursor }, Why::Reread { park }, Some(live)) => Resume::LongPoll {
            name,
            next: m.next,
            deadline,
            live,
            cursor,
            park,
        },
        _ => return None,
    };
    Some(Resumed {
        tcp: m.tcp,
        peer: m.peer,
        keep: m.keep,
        token: m.token,
        finish: m.finish,
        resume,
        turn: None,
    })
}
