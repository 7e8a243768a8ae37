//! Large answers sent without copying them into the socket.
//!
//! A `write` copies every byte into the socket's buffers: for a 1 MiB
//! record read by many readers that copy was over half of the server's
//! time (`_copy_from_iter`, BENCHMARKS.md). `vmsplice` puts the pages of
//! our memory into a pipe by reference and `splice` moves them on into the
//! socket, so the kernel sends our pages themselves — which is only right
//! for pages that nothing writes again while the kernel may still hold them
//! (until the receiver has them; over a network, until they are
//! acknowledged). Heap memory is freed and reused, so it never qualifies.
//!
//! What qualifies is registered here ([`register`]): the file backend's
//! last large record of a data file (`storage/file/recent.rs`) when it is kept as bytes
//! of the file's read-only shared mapping. Those pages are the page
//! cache's, and a data file's bytes below its tail are never written again
//! while the store is open: appends go past them, a trim's hole punches
//! whole pages only (a punched page leaves the file, the kernel's
//! reference keeps its bytes), and files are cut back only during
//! recovery, before any read. The native HTTP/1 engine sends the registered
//! buffers of an answer by reference ([`Pipe`]) and copies the rest.
//!
//! Only that record, the one many readers at the tail read again and
//! again: there the copy is the sender's cost per reader. Older records
//! read from the same mapping (catch-up) are copied: one large answer to
//! one reader measured slower by reference on loopback (1.4-2.7 against
//! 2.5-3.2 GB/s), where the receiver then copies out of 4 KiB page
//! fragments rather than out of the sender's larger ones (BENCHMARKS.md).

use std::collections::BTreeMap;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::RwLock;
use tokio::io::Interest;
use tokio::net::TcpStream;

/// The registered ranges: start address → length.
static STABLE: RwLock<BTreeMap<usize, usize>> = RwLock::new(BTreeMap::new());

/// Bytes sent by reference so far (`/metrics`).
static SENT: AtomicU64 = AtomicU64::new(0);

/// Bytes sent by reference since the process started.
pub fn sent() -> u64 {
    SENT.load(Ordering::Relaxed)
}

/// Smallest buffer worth a pipe (four system calls) instead of a copy.
pub const SPLICE_MIN: usize = 64 << 10;

/// Pipe capacity asked for (the default is 64 KiB).
const PIPE_SIZE: libc::c_int = 1 << 20;

/// The size of a memory page.
pub fn page_size() -> u64 {
    static PAGE: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *PAGE.get_or_init(|| {
        // SAFETY: sysconf has no preconditions.
        let n = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
        u64::try_from(n).ok().filter(|&n| n > 0).unwrap_or(4096)
    })
}

/// Registers `len` bytes at `start` as memory whose pages are never
/// written again while mapped (see the module docs); [`unregister`] before
/// unmapping it.
pub fn register(start: *const u8, len: usize) {
    STABLE.write().insert(start as usize, len);
}

/// Forgets the range registered at `start`.
pub fn unregister(start: *const u8) {
    STABLE.write().remove(&(start as usize));
}

/// True when `buf` lies wholly within one registered range.
pub fn is_stable(buf: &[u8]) -> bool {
    let at = buf.as_ptr() as usize;
    let map = STABLE.read();
    map.range(..=at)
        .next_back()
        .is_some_and(|(&start, &len)| at + buf.len() <= start + len)
}

/// True when `buf` is worth sending by reference and may be: at least
/// [`SPLICE_MIN`] bytes, wholly in registered memory.
pub fn wants_splice(buf: &[u8]) -> bool {
    buf.len() >= SPLICE_MIN && is_stable(buf)
}

/// Waits until `tcp` takes bytes again; a stall of `send` is an error
/// (the client takes no response bytes).
pub async fn writable_within(tcp: &TcpStream, send: Duration) -> io::Result<()> {
    match tokio::time::timeout(send, tcp.writable()).await {
        Ok(r) => r,
        Err(_) => Err(io::Error::new(
            io::ErrorKind::TimedOut,
            "the client accepted no response bytes within send_timeout",
        )),
    }
}

/// A pipe for one answer's spliced buffers; empty between them.
pub struct Pipe {
    read: OwnedFd,
    write: OwnedFd,
}

impl Pipe {
    pub fn new() -> io::Result<Pipe> {
        let mut fds = [0 as libc::c_int; 2];
        // SAFETY: `fds` has room for the two descriptors pipe2 returns.
        if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_NONBLOCK | libc::O_CLOEXEC) } != 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: both descriptors are fresh and owned by nothing else.
        let (read, write) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        // A larger pipe means fewer rounds per buffer; refused (past
        // `fs.pipe-max-size` or the user's pipe quota), the default works.
        // SAFETY: a valid pipe descriptor.
        unsafe { libc::fcntl(write.as_raw_fd(), libc::F_SETPIPE_SZ, PIPE_SIZE) };
        Ok(Pipe { read, write })
    }

    /// Sends `buf` (registered memory, see [`wants_splice`]) into `tcp`
    /// through the pipe; fails once the socket takes nothing for `send`.
    /// Returns how much of `buf` went: all of it, unless the kernel
    /// refused to take pages into the pipe (the rest is the caller's to
    /// copy).
    pub async fn send(&self, tcp: &TcpStream, buf: &[u8], send: Duration) -> io::Result<usize> {
        let mut done = 0;
        while done < buf.len() {
            let rest = &buf[done..];
            let n = {
                let iov = libc::iovec {
                    iov_base: rest.as_ptr() as *mut libc::c_void,
                    iov_len: rest.len(),
                };
                // SAFETY: `iov` describes live memory of `buf`; the pipe
                // takes references to its pages (no gift), which is sound
                // for registered memory (module docs).
                unsafe { libc::vmsplice(self.write.as_raw_fd(), &iov, 1, libc::SPLICE_F_NONBLOCK) }
            };
            if n <= 0 {
                // Refused (a sandbox without `vmsplice`, the user's pipe
                // quota spent): the pipe is empty, the caller copies the
                // rest.
                return Ok(done);
            }
            let n = n as usize;
            self.drain(tcp, n, send).await?;
            done += n;
        }
        Ok(done)
    }

    /// Moves `left` bytes from the pipe into `tcp`, waiting for room.
    async fn drain(&self, tcp: &TcpStream, mut left: usize, send: Duration) -> io::Result<()> {
        while left > 0 {
            let moved = tcp.try_io(Interest::WRITABLE, || {
                // SAFETY: two valid descriptors; no offsets (pipe and socket).
                let n = unsafe {
                    libc::splice(
                        self.read.as_raw_fd(),
                        std::ptr::null_mut(),
                        tcp.as_raw_fd(),
                        std::ptr::null_mut(),
                        left,
                        libc::SPLICE_F_NONBLOCK | libc::SPLICE_F_MOVE,
                    )
                };
                if n < 0 {
                    Err(io::Error::last_os_error())
                } else {
                    Ok(n as usize)
                }
            });
            match moved {
                Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
                Ok(n) => {
                    left -= n;
                    SENT.fetch_add(n as u64, Ordering::Relaxed);
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                    writable_within(tcp, send).await?
                }
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    /// A connected pair on loopback: (server side, client side).
    async fn pair() -> (TcpStream, TcpStream) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap());
        let (client, server) = tokio::join!(client, l.accept());
        (server.unwrap().0, client.unwrap())
    }

    #[test]
    fn only_buffers_wholly_inside_a_registered_range_qualify() {
        let mem = vec![7u8; 4 * SPLICE_MIN];
        register(mem.as_ptr(), 3 * SPLICE_MIN);
        assert!(wants_splice(&mem[..SPLICE_MIN]));
        assert!(wants_splice(&mem[SPLICE_MIN..3 * SPLICE_MIN]));
        assert!(!wants_splice(&mem[..SPLICE_MIN - 1]), "too small");
        assert!(!wants_splice(&mem[SPLICE_MIN..]), "runs past the range");
        let other = vec![7u8; SPLICE_MIN];
        assert!(!wants_splice(&other), "never registered");
        unregister(mem.as_ptr());
        assert!(!wants_splice(&mem[..SPLICE_MIN]), "unregistered");
    }

    /// A buffer larger than the pipe and the socket's buffers, to a
    /// reader that takes its time: every byte arrives, in order.
    #[tokio::test]
    async fn a_pipe_sends_a_large_buffer_whole_to_a_slow_reader() {
        let (server, mut client) = pair().await;
        let data: Vec<u8> = (0..(5 << 20)).map(|i| (i % 253) as u8).collect();
        let want = data.clone();
        let reader = tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let mut got = Vec::new();
            client.read_to_end(&mut got).await.unwrap();
            got
        });
        let pipe = Pipe::new().unwrap();
        pipe.send(&server, &data, Duration::from_secs(10))
            .await
            .unwrap();
        pipe.send(&server, &data[..SPLICE_MIN], Duration::from_secs(10))
            .await
            .unwrap();
        drop(server);
        let got = reader.await.unwrap();
        assert_eq!(got.len(), want.len() + SPLICE_MIN);
        assert!(got[..want.len()] == want[..], "the large buffer");
        assert!(got[want.len()..] == want[..SPLICE_MIN], "the one after it");
    }

    /// A reader that takes nothing: the send fails after the stall timeout.
    #[tokio::test]
    async fn a_send_nobody_reads_times_out() {
        let (server, _client) = pair().await;
        let data = vec![1u8; 64 << 20];
        let pipe = Pipe::new().unwrap();
        let e = pipe
            .send(&server, &data, Duration::from_millis(200))
            .await
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    /// A pipe the kernel refuses pages to sends nothing and says so; the
    /// socket is untouched.
    #[tokio::test]
    async fn a_refused_vmsplice_sends_nothing() {
        let (server, _client) = pair().await;
        let mut pipe = Pipe::new().unwrap();
        // Not a pipe: vmsplice fails.
        pipe.write = std::fs::File::open("/dev/null").unwrap().into();
        let data = vec![3u8; 2 * SPLICE_MIN];
        let sent = pipe.send(&server, &data, Duration::from_secs(1)).await;
        assert_eq!(sent.unwrap(), 0);
    }
}
