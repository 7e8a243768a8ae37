//! The socket side of a connection: vectored writes with the send-stall
//! timeout, reads into the connection's buffer that grow it only as
//! needed, and waiting for a response body's next frame while watching
//! for a client that hangs up. The socket is used directly
//! (`try_read_buf` and [`sock::send`] on readiness), so no buffer is held
//! between reads (see the [module docs](super)).

use std::io::{self, IoSlice};
use std::time::Duration;

use axum::body::Body;
use bytes::{Bytes, BytesMut};
use http_body::Frame;
use http_body_util::BodyExt;
use tokio::io::Interest;
use tokio::net::TcpStream;

use crate::http::sock;
use crate::zerocopy;

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
    if bufs.iter().any(|b| zerocopy::wants_splice(b)) {
        return Box::pin(write_spliced(tcp, bufs, send)).await;
    }
    write_copied(tcp, bufs, send).await
}

/// [`write_all`] of an answer with buffers the kernel may take by
/// reference ([`zerocopy`]): those go through a pipe, the runs of others
/// between them are copied.
async fn write_spliced(tcp: &TcpStream, bufs: &[IoSlice<'_>], send: Duration) -> io::Result<()> {
    let mut pipe = None;
    let mut from = 0;
    for (i, b) in bufs.iter().enumerate() {
        if !zerocopy::wants_splice(b) {
            continue;
        }
        let mut run: Vec<IoSlice<'_>> = bufs[from..i].to_vec();
        write_copied(tcp, &mut run, send).await?;
        from = i + 1;
        if pipe.is_none() {
            // Without a pipe (out of descriptors), copies.
            pipe = zerocopy::Pipe::new().ok();
        }
        let sent = match &pipe {
            Some(p) => p.send(tcp, b, send).await?,
            None => 0,
        };
        if sent < b.len() {
            write_copied(tcp, &mut [IoSlice::new(&b[sent..])], send).await?;
        }
    }
    let mut run: Vec<IoSlice<'_>> = bufs[from..].to_vec();
    write_copied(tcp, &mut run, send).await
}

/// Writes all of `bufs` with copying writes.
async fn write_copied(
    tcp: &TcpStream,
    mut bufs: &mut [IoSlice<'_>],
    send: Duration,
) -> io::Result<()> {
    while !bufs.is_empty() {
        // `send`, not tokio's `try_write_vectored` (a `writev`: [`sock`]).
        let wrote = match tcp.try_io(Interest::WRITABLE, || send_now(tcp, bufs)) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => send_now(tcp, bufs),
            other => other,
        };
        match wrote {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                zerocopy::writable_within(tcp, send).await?
            }
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// One send of `bufs` to the socket itself, for when tokio does not
/// know it writable: a connection just taken back from the parking has no
/// readiness yet (its first event comes with the reactor's next turn), and
/// waiting for that event cost every resumed long-poller a second wait for
/// a worker (BENCHMARKS.md, issue 15). A real `WouldBlock` from here is
/// waited out as tokio's: its next readiness event comes when the socket
/// takes data again (edge-triggered).
fn send_now(tcp: &TcpStream, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    use std::os::fd::AsFd;
    sock::send(tcp.as_fd(), bufs)
}

/// Reads at least one byte into `buf` (reserving up to `want`); the end of
/// the stream is an error.
pub(super) async fn read_some(tcp: &TcpStream, buf: &mut BytesMut, want: usize) -> io::Result<()> {
    loop {
        tcp.readable().await?;
        if buf.capacity() - buf.len() < READ_CHUNK / 4 {
            buf.reserve(want.clamp(READ_CHUNK, BODY_READ));
        }
        match try_read(tcp, buf) {
            Ok(0) => return Err(io::ErrorKind::UnexpectedEof.into()),
            Ok(_) => return Ok(()),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
}

/// Reads what the socket has into `buf` (on its spare capacity, which
/// must not be zero), as `try_read_buf` does, and when the read comes
/// short, also clears the socket's read readiness. A short read leaves the
/// receive queue empty, so the next read would only fail with
/// `WouldBlock` to clear it: that was one `recvfrom` in three of every
/// request/response exchange (measured, BENCHMARKS.md). Clearing is as
/// safe as after a real `WouldBlock`: tokio clears only if no readiness
/// event came since this read began, and (edge-triggered) every arrival
/// of data makes one.
pub(super) fn try_read(tcp: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    let mut got = None;
    let r = tcp.try_io(tokio::io::Interest::READABLE, || {
        let n = tcp.try_read_buf(buf)?;
        got = Some(n);
        if n > 0 && n < spare {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(())
    });
    match got {
        Some(n) => Ok(n),
        None => r.and(Err(io::ErrorKind::WouldBlock.into())),
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

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncWriteExt;

    /// A short read clears the read readiness (no `WouldBlock` read is
    /// needed to wait again), and input that comes later still wakes the
    /// reader and is read in full.
    #[tokio::test]
    async fn a_short_read_waits_again_and_later_input_wakes_it() {
        let (tcp, mut client) = socket_pair().await;
        client.write_all(b"first").await.unwrap();
        let mut buf = BytesMut::with_capacity(READ_CHUNK);
        tcp.readable().await.unwrap();
        assert_eq!(try_read(&tcp, &mut buf).unwrap(), 5);
        // Cleared: with nothing sent, the socket is no longer readable.
        let waited = tokio::time::timeout(Duration::from_millis(100), tcp.readable()).await;
        assert!(waited.is_err(), "readiness survived a short read");
        let e = try_read(&tcp, &mut buf).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::WouldBlock);
        client.write_all(b" second").await.unwrap();
        read_some(&tcp, &mut buf, READ_CHUNK).await.unwrap();
        assert_eq!(&buf[..], b"first second");
    }

    /// A read that fills the buffer keeps the readiness: more may wait.
    #[tokio::test]
    async fn a_full_read_keeps_the_readiness() {
        let (tcp, mut client) = socket_pair().await;
        client.write_all(&[7u8; 100]).await.unwrap();
        let mut buf = BytesMut::with_capacity(10);
        tcp.readable().await.unwrap();
        let n = try_read(&tcp, &mut buf).unwrap();
        assert_eq!(n, buf.capacity());
        let waited = tokio::time::timeout(Duration::from_millis(100), tcp.readable()).await;
        assert!(waited.is_ok(), "readiness lost after a full read");
        let mut rest = BytesMut::with_capacity(200);
        assert_eq!(try_read(&tcp, &mut rest).unwrap(), 100 - n);
    }

    /// A socket tokio has only just taken (no readiness known yet) is
    /// written at once, without waiting for its reactor; one whose buffer
    /// fills waits for room, and every byte arrives in order.
    #[tokio::test]
    async fn a_socket_without_known_readiness_is_written_at_once_and_in_full() {
        use tokio::io::AsyncReadExt;
        let (tcp, mut client) = socket_pair().await;
        let tcp = TcpStream::from_std(tcp.into_std().unwrap()).unwrap();
        let e = tcp.try_write(b"x").unwrap_err();
        assert_eq!(
            e.kind(),
            io::ErrorKind::WouldBlock,
            "tokio knows no readiness yet"
        );
        // Written by `send_now` before anything awaits: the future completes
        // on its first poll.
        let mut small = [IoSlice::new(b"hello")];
        let first = futures_util::FutureExt::now_or_never(write_copied(
            &tcp,
            &mut small,
            Duration::from_secs(1),
        ));
        assert!(matches!(first, Some(Ok(()))), "written at once");
        let mut got = [0u8; 5];
        client.read_exact(&mut got).await.unwrap();
        assert_eq!(&got, b"hello");
        // More than the socket's buffers hold: waits for the reader.
        let body: Vec<u8> = (0..8 << 20).map(|i| (i % 251) as u8).collect();
        let want = body.clone();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let mut got = vec![0u8; want.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == want, "bytes differ");
        });
        let mut big = [IoSlice::new(&body)];
        write_copied(&tcp, &mut big, Duration::from_secs(10))
            .await
            .unwrap();
        reader.await.unwrap();
    }

    /// An answer whose large buffers may go by reference: copied and
    /// spliced parts arrive whole and in order.
    #[tokio::test]
    async fn spliced_and_copied_parts_arrive_in_order() {
        use tokio::io::AsyncReadExt;
        let (tcp, mut client) = socket_pair().await;
        let body: Vec<u8> = (0..3 * zerocopy::SPLICE_MIN)
            .map(|i| (i % 249) as u8)
            .collect();
        zerocopy::register(body.as_ptr(), body.len());
        let (one, two) = body.split_at(zerocopy::SPLICE_MIN);
        assert!(zerocopy::wants_splice(one) && zerocopy::wants_splice(two));
        let mut want = Vec::new();
        let parts: [&[u8]; 5] = [b"HEAD\r\n\r\n", one, b"\r\nmid", two, b"end"];
        for p in parts {
            want.extend_from_slice(p);
        }
        let reader = tokio::spawn(async move {
            let mut got = vec![0u8; want.len()];
            client.read_exact(&mut got).await.unwrap();
            assert!(got == want, "bytes differ");
        });
        let mut slices = parts.map(IoSlice::new);
        write_all(&tcp, &mut slices, Duration::from_secs(10))
            .await
            .unwrap();
        reader.await.unwrap();
        zerocopy::unregister(body.as_ptr());
    }
}
