//! Our own HTTP/1.1 connection loop, in place of hyper's (the default
//! `http_engine = "native"`; `"hyper"` keeps hyper's for comparison).
//!
//! Why: hyper gives every connection a read buffer and a write buffer of
//! 8 KiB each for its whole life, so an idle keep-alive connection or an
//! idle SSE subscriber cost ~17 KiB of server memory; and its generic
//! dispatcher is a large share of the instructions of a small request.
//! Here a connection waiting for its next request holds no buffer at all:
//! it waits with `TcpStream::readable()` and allocates 4 KiB (growing up
//! to the 64 KiB head limit only as a head needs) when bytes arrive, and
//! drops it again once the buffered input is used up. Response heads are
//! written into one small buffer sent with the body in one system call.
//!
//! Measured against hyper (same binary, `--http-engine hyper`, alternating
//! runs on a shared 2-core machine): 1.8 vs 15.3 KiB of server RSS per idle
//! keep-alive connection and 10.5 vs 17.3 KiB per idle SSE subscriber (1,000
//! of each); 28k vs 35k instructions (callgrind) and 18-22 vs 25-29 us of
//! server CPU per 1-byte append; after ~130k such appends to the memory
//! backend 41-46 MB vs 520-600 MB RSS (small bodies are copied out of the
//! read buffer instead of pinning it, below).
//!
//! What it does (and what it refuses):
//!
//! * Heads are parsed with `httparse`: malformed heads answer 400, heads
//!   over 64 KiB or with more than 100 headers 431, and close. So do
//!   conflicting or non-numeric `Content-Length`s, a `Transfer-Encoding`
//!   other than `chunked`, and `Transfer-Encoding` with `Content-Length`.
//! * Bodies: `Content-Length` or chunked (extensions ignored, trailers
//!   skipped, lines limited). A body already in the read buffer is handed
//!   over as one `Bytes` without copying; otherwise the handler reads it
//!   from a one-slot channel fed by this connection, in the same task, only
//!   as fast as the handler asks (`Expect: 100-continue` is answered when
//!   it first asks). An unread remainder of at most 64 KiB is drained after
//!   the response; a larger one closes the connection.
//! * Keep-alive by default on HTTP/1.1, on HTTP/1.0 only with
//!   `Connection: keep-alive`; pipelined requests are answered in order.
//! * Responses: `content-length` when the body's size is known, otherwise
//!   chunked with one chunk per body frame, each written at once (SSE
//!   events leave as they come); close-delimited for HTTP/1.0 clients. No
//!   body for HEAD, 1xx, 204 and 304. A cached `date` header.
//! * A live `GET` (HTTP/1.1, no body) is offered parking
//!   ([`ParkOffer`](super::park::ParkOffer)): when its handler leaves a reader
//!   at rest in the response's cell, the connection writes what the body had
//!   (for SSE, without ending it), hands its socket to
//!   [`park`](super::park) and its task ends; a parked reader that becomes
//!   active gets a new task that finishes the response and goes on with the
//!   request loop (`dispatch::resume`).
//! * While a response body waits for its next frame, a client that hangs
//!   up is noticed at once (the body is dropped, ending the subscription).
//! * Timeouts as in [`serve`](super::serve): the next request's head must
//!   be complete within `header_read_timeout` of the previous response (or
//!   of the accept), and a write that makes no progress for `send_timeout`
//!   closes the connection.
//! * The HTTP/2 preface hands the connection to hyper (prior-knowledge
//!   h2c). `Upgrade` is not supported: the header is ignored.
//!
//! # Layout
//!
//! As hyper's `proto/h1`, one duty per file:
//!
//! - `append`: plain appends answered without a header map;
//! - `dispatch`: the connection loop (`serve`) and one exchange (run the
//!   handler while feeding it the body, respond, drain);
//! - `conn`: the connection's steps: read a head, write a response,
//!   drain, reject, close;
//! - `role`: request head parsing and response head writing (pure);
//! - `decode`: request body framing, `Content-Length` and chunked (pure);
//! - `encode`: response body framing (pure);
//! - `body`: the request body the handler reads and the channel that
//!   feeds it;
//! - `io`: socket reads and vectored writes with the send timeout;
//! - `date`: the cached `date` header.

mod append;
mod body;
mod conn;
mod date;
mod decode;
mod dispatch;
mod encode;
mod io;
mod role;

pub(super) use dispatch::{Ctx, serve};
