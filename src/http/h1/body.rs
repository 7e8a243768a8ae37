//! The request body as the handler sees it ([`ReqBody`]): empty, already
//! read, or streamed through a one-item channel ([`Slot`]) that the
//! connection fills ([`feed`]) only as fast as the handler reads, in the
//! same task.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http_body::{Frame, SizeHint};
use tokio::net::TcpStream;

use super::decode::{Decoded, Decoder};
use super::io::{read_some, write_all};

/// A one-item channel from the connection (feeding the body) to the
/// handler (reading it), both polled by the same task.
#[derive(Default)]
pub(super) struct Slot(parking_lot::Mutex<SlotState>);

#[derive(Default)]
struct SlotState {
    item: Option<io::Result<Bytes>>,
    /// No more items after `item`.
    end: bool,
    /// The reader waits for an item.
    want: bool,
    /// The reader is gone.
    gone: bool,
    reader: Option<Waker>,
    feeder: Option<Waker>,
}

impl Slot {
    /// Ready(true) when the reader wants an item; Ready(false) when it is gone.
    fn poll_want(&self, cx: &mut Context<'_>) -> Poll<bool> {
        let mut s = self.0.lock();
        if s.gone {
            return Poll::Ready(false);
        }
        if s.want && s.item.is_none() {
            return Poll::Ready(true);
        }
        s.feeder = Some(cx.waker().clone());
        Poll::Pending
    }

    fn put(&self, item: io::Result<Bytes>, end: bool) {
        let mut s = self.0.lock();
        s.item = Some(item);
        s.end |= end;
        s.want = false;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }

    fn end(&self) {
        let mut s = self.0.lock();
        s.end = true;
        if let Some(w) = s.reader.take() {
            w.wake();
        }
    }
}

/// A request body as the handler sees it.
pub(super) enum ReqBody {
    Empty,
    Full(Option<Bytes>),
    Stream {
        slot: Arc<Slot>,
        /// Bytes still to come, when the length is known.
        remaining: Option<u64>,
    },
}

impl http_body::Body for ReqBody {
    type Data = Bytes;
    type Error = io::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, io::Error>>> {
        match self.get_mut() {
            ReqBody::Empty => Poll::Ready(None),
            ReqBody::Full(b) => Poll::Ready(b.take().map(|b| Ok(Frame::data(b)))),
            ReqBody::Stream { slot, remaining } => {
                let mut s = slot.0.lock();
                if let Some(item) = s.item.take() {
                    return Poll::Ready(Some(match item {
                        Ok(b) => {
                            if let Some(r) = remaining {
                                *r = r.saturating_sub(b.len() as u64);
                            }
                            Ok(Frame::data(b))
                        }
                        Err(e) => {
                            s.end = true;
                            Err(e)
                        }
                    }));
                }
                if s.end {
                    return Poll::Ready(None);
                }
                s.want = true;
                if !s.reader.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                    s.reader = Some(cx.waker().clone());
                }
                if let Some(w) = s.feeder.take() {
                    w.wake();
                }
                Poll::Pending
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ReqBody::Empty => true,
            ReqBody::Full(b) => b.is_none(),
            ReqBody::Stream { .. } => false,
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ReqBody::Empty => SizeHint::with_exact(0),
            ReqBody::Full(b) => SizeHint::with_exact(b.as_ref().map_or(0, |b| b.len() as u64)),
            ReqBody::Stream {
                remaining: Some(n), ..
            } => SizeHint::with_exact(*n),
            ReqBody::Stream { .. } => SizeHint::default(),
        }
    }
}

impl Drop for ReqBody {
    fn drop(&mut self) {
        if let ReqBody::Stream { slot, .. } = self {
            let mut s = slot.0.lock();
            s.gone = true;
            if let Some(w) = s.feeder.take() {
                w.wake();
            }
        }
    }
}

/// Feeds the request body to the handler through `slot`, reading only when
/// the handler asks for more. Ends when the body is complete, the handler
/// dropped it, or the body failed (the error goes to the handler).
pub(super) async fn feed(
    tcp: &TcpStream,
    buf: &mut BytesMut,
    dec: &mut Decoder,
    slot: &Slot,
    mut expect: Option<&mut bool>,
    send: Duration,
) {
    loop {
        if !std::future::poll_fn(|cx| slot.poll_want(cx)).await {
            return;
        }
        match dec.decode(buf) {
            Ok(Decoded::Data(b)) => {
                slot.put(Ok(b), dec.done());
                continue;
            }
            Ok(Decoded::Done) => return slot.end(),
            Ok(Decoded::More) => {}
            Err(msg) => {
                return slot.put(Err(io::Error::new(io::ErrorKind::InvalidData, msg)), true);
            }
        }
        if let Some(continued) = expect.take()
            && !*continued
        {
            *continued = true;
            let mut bufs = [IoSlice::new(b"HTTP/1.1 100 Continue\r\n\r\n")];
            if let Err(e) = write_all(tcp, &mut bufs, send).await {
                return slot.put(Err(e), true);
            }
        }
        let want = match dec {
            Decoder::Length(n) => usize::try_from(*n).unwrap_or(usize::MAX),
            Decoder::Chunked(_) => 16 * 1024,
        };
        if let Err(e) = read_some(tcp, buf, want).await {
            return slot.put(Err(e), true);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use http_body_util::BodyExt;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    use super::*;
    use crate::http::h1::io::socket_pair;
    use crate::http::h1::role::Framing;

    /// A streamed body and the slot that feeds it.
    fn channel(remaining: Option<u64>) -> (Arc<Slot>, ReqBody) {
        let slot = Arc::new(Slot::default());
        let body = ReqBody::Stream {
            slot: Arc::clone(&slot),
            remaining,
        };
        (slot, body)
    }

    const SEND: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn the_body_channel_feeds_on_demand() {
        let (tcp, mut client) = socket_pair().await;
        client.write_all(b"3\r\nabc\r\n").await.unwrap();
        let (slot, body) = channel(None);
        let mut buf = BytesMut::new();
        let mut dec = Decoder::new(Framing::Chunked);
        let mut continued = false;
        let reader = async move { body.collect().await.map(|c| c.to_bytes()) };
        let writer = async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            client
                .write_all(b"2;x=y\r\nde\r\n0\r\n\r\nNEXT")
                .await
                .unwrap();
            client
        };
        let feed = feed(&tcp, &mut buf, &mut dec, &slot, Some(&mut continued), SEND);
        let (got, (), mut client) = tokio::join!(reader, feed, writer);
        assert_eq!(got.unwrap(), Bytes::from_static(b"abcde"));
        assert!(dec.done());
        assert!(continued);
        assert_eq!(&buf[..], b"NEXT");
        let mut cont = [0u8; 25];
        client.read_exact(&mut cont).await.unwrap();
        assert_eq!(&cont, b"HTTP/1.1 100 Continue\r\n\r\n");
    }

    #[tokio::test]
    async fn a_truncated_body_is_an_error_for_the_handler() {
        let (tcp, mut client) = socket_pair().await;
        client.write_all(b"abc").await.unwrap();
        client.shutdown().await.unwrap();
        let (slot, body) = channel(Some(10));
        let mut buf = BytesMut::new();
        let mut dec = Decoder::new(Framing::Length(10));
        let reader = async move { body.collect().await.map(|c| c.to_bytes()) };
        let feed = feed(&tcp, &mut buf, &mut dec, &slot, None, SEND);
        let (got, ()) = tokio::join!(reader, feed);
        assert_eq!(got.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
