//! Writes to a connected socket by `send`/`sendmsg`, not the file layer's
//! `write`/`writev`: the same bytes, without the VFS steps a socket does
//! not need (~2.5 % less CPU per memory append, BENCHMARKS.md, nineteenth
//! session). `MSG_NOSIGNAL`: a peer that hung up is an `EPIPE`, never a
//! signal.

use std::io::{self, IoSlice};
use std::os::fd::{AsRawFd, BorrowedFd};

/// Most slices one call takes (Linux's `IOV_MAX`); the rest are left for
/// the next call, as a short write.
pub const MAX_IOV: usize = 1024;

/// One non-blocking send of `bufs` (up to [`MAX_IOV`] of them): the bytes
/// the socket took, or its error (`WouldBlock` included).
pub fn send(fd: BorrowedFd<'_>, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
    let n = bufs.len().min(MAX_IOV);
    let r = match bufs {
        [] => return Ok(0),
        // SAFETY: the slice outlives the call, and the descriptor is open
        // while `fd` is borrowed.
        [one, ..] if n == 1 => unsafe {
            libc::send(
                fd.as_raw_fd(),
                one.as_ptr().cast(),
                one.len(),
                libc::MSG_NOSIGNAL,
            )
        },
        // SAFETY: `IoSlice` is ABI-compatible with `iovec` on Unix, the
        // slices outlive the call, the header only points at them (the
        // kernel does not write through `msg_iov`), and the descriptor is
        // open while `fd` is borrowed.
        _ => unsafe {
            let mut msg: libc::msghdr = std::mem::zeroed();
            msg.msg_iov = bufs.as_ptr().cast::<libc::iovec>().cast_mut();
            msg.msg_iovlen = n as _;
            libc::sendmsg(fd.as_raw_fd(), &msg, libc::MSG_NOSIGNAL)
        },
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r as usize)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;
    use std::net::{TcpListener, TcpStream};
    use std::os::fd::AsFd;

    fn pair() -> (TcpStream, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let a = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (b, _) = l.accept().unwrap();
        (a, b)
    }

    #[test]
    fn one_slice_and_several_arrive_in_order() {
        let (a, mut b) = pair();
        assert_eq!(send(a.as_fd(), &[IoSlice::new(b"head ")]).unwrap(), 5);
        let parts = [
            IoSlice::new(b"one "),
            IoSlice::new(b""),
            IoSlice::new(b"two"),
        ];
        assert_eq!(send(a.as_fd(), &parts).unwrap(), 7);
        assert_eq!(send(a.as_fd(), &[]).unwrap(), 0);
        drop(a);
        let mut got = String::new();
        b.read_to_string(&mut got).unwrap();
        assert_eq!(got, "head one two");
    }

    #[test]
    fn a_full_socket_would_block_and_a_closed_peer_is_an_error_not_a_signal() {
        let (a, b) = pair();
        a.set_nonblocking(true).unwrap();
        let chunk = vec![7u8; 1 << 16];
        let err = loop {
            match send(a.as_fd(), &[IoSlice::new(&chunk)]) {
                Ok(n) => assert!(n > 0),
                Err(e) => break e,
            }
        };
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        drop(b);
        // The reset may take a send or two to be seen; a SIGPIPE would end
        // the test process instead.
        let err = (0..100)
            .find_map(|_| {
                send(a.as_fd(), &[IoSlice::new(b"x")])
                    .err()
                    .filter(|e| e.kind() != io::ErrorKind::WouldBlock)
            })
            .expect("a send to a closed peer fails");
        assert!(
            matches!(
                err.kind(),
                io::ErrorKind::BrokenPipe | io::ErrorKind::ConnectionReset
            ),
            "{err}"
        );
    }
}
