//! The socket side of a connection: vectored writes with the send-stall
//! timeout, reads into the connection's buffer that grow it only as
//! needed, and waiting for a response body's next frame while watching
//! for a client that hangs up. The socket is used directly
//! (`try_read_buf`/`try_write_vectored` on readiness), so no buffer is held
//! between reads (see the [module docs](super)).

use std::io::{self, IoSlice};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::net::TcpStream;

/// The first allocation for a request head, and the smallest read.
pub(super) const READ_CHUNK: usize = 4096;
/// Largest read for a request body.
const BODY_READ: usize = 64 * 1024;

/// Writes all of `bufs` (vectored); fails once a write makes no progress
/// for `send`.
pub(super) async fn write_all(
    tcp: &TcpStream,
    mut bufs: &mut [IoSlice<'_>],
    send: Duration,
) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        match tcp.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                match tokio::time::timeout(send, tcp.writable()).await {
                    Ok(r) => r?,
                    Err(_) => {
                        return Err(io::Error::new(
                            io::ErrorKind::TimedOut,
                            "the client accepted no response bytes within send_timeout",
                        ));
                    }
                }
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Reads at least one byte into `buf` (reserving up to `want`); the end of
/// the stream is an error.
pub(super) async fn read_some(tcp: &TcpStream, buf: &mut BytesMut, want: usize) -> io::Result<()> {
    loop {
        tcp.readable().await?;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(want.clamp(READ_CHUNK, BODY_READ));
        }
        match tcp.try_read_buf(buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// The next frame of a response body; meanwhile notices a client that
/// hangs up (until it sends something: a pipelined request).
pub(super) async fn next_frame(
    tcp: &TcpStream,
    body: &mut Body,
    watch: &mut bool,
) -> io::Result<Option<Result<Frame<Bytes>, axum::Error>>> {
    loop {
        if !*watch {
            return Ok(body.frame().await);
        }
        let mut probe = [0u8; 1];
        tokio::select! {
            f = body.frame() => return Ok(f),
            r = tcp.peek(&mut probe) => match r {
                Ok(0) => return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the client closed the connection",
                )),
                Ok(_) => *watch = false,
                Err(e) => return Err(e),
            },
        }
    }
}

/// A connected pair of sockets on loopback: (server side, client side).
#[cfg(test)]
pub(super) async fn socket_pair() -> (TcpStream, TcpStream) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let client = TcpStream::connect(l.local_addr().unwrap());
    let (client, server) = tokio::join!(client, l.accept());
    (server.unwrap().0, client.unwrap())
}
