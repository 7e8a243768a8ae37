//! `GET ?live=sse`: Server-Sent Events.
//!
//! Each chunk read from storage becomes one `data` event (a JSON array for
//! JSON streams, base64 for binary streams, text lines otherwise) followed by
//! one `control` event with the next offset. At the tail the connection waits
//! for wakes, sends keep-alive comments, and ends after the reconnect
//! interval, at EOF, or at shutdown. Events are produced one at a time and
//! only when the connection has room, so a slow consumer holds at most one
//! chunk in memory.

use std::convert::Infallible;

use super::error::ApiError;
use super::headers::{self as h, ReadQuery};
use super::live::{LiveRead, Mode, Step};
use super::park::{ParkCell, Ticket};
use super::read::{cursor, json_body};
use super::{AppState, finish};
use crate::storage::ReadOutcome;
use axum::body::{Body, Bytes};
use axum::http::{StatusCode, header};
use axum::response::Response;
use base64::Engine;

/// How data events are encoded for a stream's content type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Encoding {
    Json,
    Text,
    Base64,
}

impl Encoding {
    fn for_type(content_type: &str) -> Self {
        let essence = crate::storage::model::essence(content_type);
        if essence == "application/json" {
            Encoding::Json
        } else if essence.starts_with("text/") {
            Encoding::Text
        } else {
            Encoding::Base64
        }
    }
}

/// Writes `text` as the `data:` lines of one event; every kind of line
/// break in the payload starts a new `data:` line, so payload bytes can
/// never end the event or inject fields.
fn push_data_lines(out: &mut Vec<u8>, text: &str) {
    let mut rest = text;
    loop {
        let cut = rest.find(['\r', '\n']);
        let (line, tail) = match cut {
            Some(i) => {
                let skip = if rest[i..].starts_with("\r\n") { 2 } else { 1 };
                (&rest[..i], Some(&rest[i + skip..]))
            }
            None => (rest, None),
        };
        // Parsers drop one space after the colon; keep a leading space.
        out.extend_from_slice(if line.starts_with(' ') {
            b"data: "
        } else {
            b"data:"
        });
        out.extend_from_slice(line.as_bytes());
        out.push(b'\n');
        match tail {
            Some(t) => rest = t,
            None => break,
        }
    }
}

/// Encodes one `data` event for a chunk.
fn data_event(out: &ReadOutcome, enc: Encoding) -> Vec<u8> {
    data_event_of(&out.chunks, enc)
}

/// Encodes one `data` event for stored records (JSON messages each
/// followed by `,` when `enc` is [`Encoding::Json`]).
pub fn data_event_of(records: &[Bytes], enc: Encoding) -> Vec<u8> {
    let len: usize = records.iter().map(Bytes::len).sum();
    let mut ev = Vec::with_capacity(len + 64);
    ev.extend_from_slice(b"event: data\n");
    match enc {
        Encoding::Base64 => {
            let raw: Vec<u8> = records.iter().flat_map(|c| c.iter().copied()).collect();
            let b64 = base64::engine::general_purpose::STANDARD.encode(raw);
            // Lines of at most 76 characters keep proxies happy.
            if b64.is_empty() {
                ev.extend_from_slice(b"data:\n");
            }
            for line in b64.as_bytes().chunks(76) {
                ev.extend_from_slice(b"data:");
                ev.extend_from_slice(line);
                ev.push(b'\n');
            }
        }
        Encoding::Json | Encoding::Text => {
            let raw: Vec<u8> = json_body(records, enc == Encoding::Json)
                .iter()
                .flat_map(|c| c.iter().copied())
                .collect();
            push_data_lines(&mut ev, &String::from_utf8_lossy(&raw));
        }
    }
    ev.push(b'\n');
    ev
}

/// The `control` event after a read.
fn control_event(state: &AppState, out: &ReadOutcome, client_cursor: Option<u64>) -> Bytes {
    let eof = out.at_eof();
    let cursor = (!eof).then(|| cursor(state, client_cursor));
    control_bytes(
        &out.next.to_string(),
        cursor.as_deref(),
        out.up_to_date(),
        eof,
    )
}

/// A `control` event, written by hand: offsets and cursors are
/// `[0-9a-f_]` only, so nothing needs escaping. Field order and omissions
/// match serde's camelCase output of the same fields (tested below).
pub fn control_bytes(next: &str, cursor: Option<&str>, up_to_date: bool, closed: bool) -> Bytes {
    let mut ev = String::with_capacity(160);
    ev.push_str("event: control\ndata:{\"streamNextOffset\":\"");
    ev.push_str(next);
    ev.push('"');
    if let Some(c) = cursor {
        ev.push_str(",\"streamCursor\":\"");
        ev.push_str(c);
        ev.push('"');
    }
    if up_to_date {
        ev.push_str(",\"upToDate\":true");
    }
    if closed {
        ev.push_str(",\"streamClosed\":true");
    }
    ev.push_str("}\n\n");
    Bytes::from(ev)
}

/// Data events up to this size travel in one body frame with their
/// control event (larger ones are not copied for that).
const JOIN_EVENTS_MAX: usize = 16 * 1024;

/// Serves an SSE connection. The first read happens before the response
/// starts, so a missing stream is an ordinary 404; the waiting is
/// [`LiveRead`]'s. With `offer` (the connection can park readers), a
/// subscriber at rest is left in the response's [`ParkCell`] and its body
/// ends there (see [`super::park`]).
pub async fn serve(
    state: &AppState,
    name: String,
    query: ReadQuery,
    offer: bool,
) -> Result<Response, ApiError> {
    let live = LiveRead::open(state, name, query.from, Mode::Sse).await?;
    let enc = Encoding::for_type(&live.out().info.content_type);
    let cell = offer.then(ParkCell::default);
    let events = events(live, enc, query.cursor, true, false, cell.clone());
    let mut b = super::response(StatusCode::OK)
        .header(header::CONTENT_TYPE, "text/event-stream")
        .header(header::CACHE_CONTROL, "no-cache")
        .header("x-accel-buffering", "no");
    if enc == Encoding::Base64 {
        b = b.header(h::STREAM_SSE_DATA_ENCODING, "base64");
    }
    if let Some(cell) = cell {
        b = b.extension(cell);
    }
    finish(b, events)
}

/// The rest of the body of a subscriber that was parked at `next`: it reads
/// storage from there and streams on. A failed read (the stream deleted
/// meanwhile) ends the body; the client's reconnect gets the error.
#[allow(clippy::too_many_arguments)]
pub async fn resume(
    state: &AppState,
    name: String,
    next: crate::offset::Offset,
    deadline: tokio::time::Instant,
    live: crate::metrics::LiveGuard,
    enc: Encoding,
    cursor: Option<u64>,
    cell: Option<ParkCell>,
) -> Body {
    match LiveRead::resume(state, name, next, deadline, Mode::Sse, live).await {
        Ok(live) => events(live, enc, cursor, false, false, cell),
        Err(_) => Body::empty(),
    }
}

/// The body of a subscriber that did not park after all (news came, or
/// input, as it was to park). Its last answer's events were sent before
/// it was to park: they are not sent again (they were, once: a record
/// delivered twice, when an append came as the reader parked).
pub fn go_on(live: LiveRead, enc: Encoding, cursor: Option<u64>, cell: Option<ParkCell>) -> Body {
    events(live, enc, cursor, false, true, cell)
}

/// The events of `live` from its last answer on: that answer's events
/// (always a control event when `announce`; none when `sent` already),
/// then one per step. With a `cell`, the body ends where the reader is at
/// rest, leaving the reader in the cell.
fn events(
    mut live: LiveRead,
    enc: Encoding,
    client_cursor: Option<u64>,
    mut announce: bool,
    mut sent: bool,
    cell: Option<ParkCell>,
) -> Body {
    // Moved into the body stream: dropped when the connection ends for any
    // reason, client disconnects included.
    let events = async_stream::stream! {
        // The data event of `out` when a wake brought it already encoded.
        let mut shared: Option<Bytes> = None;
        loop {
            let out = live.out();
            if std::mem::take(&mut sent) {
                // Its events went out with the body before.
            } else if !out.is_empty() {
                let data = shared
                    .take()
                    .unwrap_or_else(|| Bytes::from(data_event(out, enc)));
                let control = control_event(live.state(), out, client_cursor);
                if data.len() <= JOIN_EVENTS_MAX {
                    // One frame: a proxy passing frames on keeps an event
                    // and its control event in one read for the client.
                    let mut both = Vec::with_capacity(data.len() + control.len());
                    both.extend_from_slice(&data);
                    both.extend_from_slice(&control);
                    yield Ok::<Bytes, Infallible>(Bytes::from(both));
                } else {
                    yield Ok::<Bytes, Infallible>(data);
                    yield Ok(control);
                }
            } else if announce || out.at_eof() {
                yield Ok(control_event(live.state(), out, client_cursor));
            }
            if live.out().at_eof() {
                break;
            }
            // A read without new data (e.g. after a lagged receiver) is
            // not news.
            announce = false;
            if let Some(cell) = &cell
                && live.at_rest()
            {
                cell.put(Ticket::Sse {
                    live: Box::new(live),
                    enc,
                    cursor: client_cursor,
                });
                return;
            }
            loop {
                match live.next().await {
                    Step::Read { appended } => {
                        // Records from a wake: encoded once for every
                        // connection at this position.
                        if let Some(a) = appended {
                            let out = live.out();
                            shared = Some(
                                a.sse
                                    .get_or_init(|| Bytes::from(data_event(out, enc)))
                                    .clone(),
                            );
                        }
                        break;
                    }
                    Step::KeepAlive => yield Ok(Bytes::from_static(b": keep-alive\n\n")),
                    // Deleted or expired meanwhile: end the stream; the
                    // client's reconnect gets the error as an HTTP status.
                    Step::Expired | Step::Failed(_) => return,
                }
            }
        }
    };
    Body::from_stream(events)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Serialize;

    #[tokio::test]
    async fn a_subscriber_that_did_not_park_sends_its_last_event_once() {
        use crate::storage::{AppendRequest, CreateRequest, Storage, now_ms};
        use http_body_util::BodyExt;
        let hub = crate::notify::WakeHub::new();
        let storage = std::sync::Arc::new(crate::storage::memory::MemoryStorage::new(
            std::sync::Arc::clone(&hub),
        ));
        let create = CreateRequest {
            content_type: Some("text/plain".into()),
            expiry: None,
            closed: false,
            fork: None,
            body: Bytes::from_static(b"first"),
            now: now_ms(),
        };
        storage.create("s", create).unwrap();
        let config = crate::config::ServerConfig::default();
        let state = crate::server::state(config, storage, hub);
        // At rest at the tail, its last answer ("first") sent.
        let from = crate::offset::ReadFrom::Start;
        let mut live = LiveRead::open(&state, "s".into(), from, Mode::Sse)
            .await
            .unwrap();
        assert!(live.at_rest());
        // An append as it was to park: it goes on instead.
        let append = AppendRequest {
            content_type: Some("text/plain".into()),
            close: false,
            stream_seq: None,
            producer: None,
            if_match: None,
            body: Bytes::from_static(b"second"),
            now: now_ms(),
        };
        state.append("s", append).await.unwrap();
        assert!(!live.at_rest());
        let mut body = go_on(live, Encoding::Text, None, None);
        let frame = body.frame().await.unwrap().unwrap().into_data().unwrap();
        let text = String::from_utf8_lossy(&frame);
        assert!(text.contains("data:second"), "{text}");
        assert!(!text.contains("first"), "sent again: {text}");
    }

    #[derive(Serialize)]
    #[serde(rename_all = "camelCase")]
    struct Control {
        stream_next_offset: String,
        #[serde(skip_serializing_if = "Option::is_none")]
        stream_cursor: Option<String>,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        up_to_date: bool,
        #[serde(skip_serializing_if = "std::ops::Not::not")]
        stream_closed: bool,
    }

    #[test]
    fn control_events_match_serde() {
        for cursor in [None, Some("123")] {
            for up in [false, true] {
                for closed in [false, true] {
                    let c = Control {
                        stream_next_offset: "0000000000000001_0000000000000005".into(),
                        stream_cursor: cursor.map(str::to_string),
                        up_to_date: up,
                        stream_closed: closed,
                    };
                    let want = format!(
                        "event: control\ndata:{}\n\n",
                        serde_json::to_string(&c).unwrap()
                    );
                    let got = control_bytes(&c.stream_next_offset, cursor, up, closed);
                    assert_eq!(got, want.as_bytes());
                }
            }
        }
    }

    #[test]
    fn line_breaks_become_data_lines() {
        let mut out = Vec::new();
        push_data_lines(&mut out, "a\r\n\r\nevent: x\r b\nc");
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "data:a\ndata:\ndata:event: x\ndata:  b\ndata:c\n"
        );
    }
}
