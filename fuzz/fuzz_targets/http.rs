//! Whatever a client can send, over one connection, to a whole server
//! running in this process (the memory backend, or `DS_FUZZ_STORAGE=file`
//! or `acid` in a fresh temporary data directory): a panic anywhere in it (the
//! hook below aborts, where tokio would catch it in the task) or a `500`
//! as the first answer is a finding. Streams and producers persist across inputs, as on
//! a server that has been up a while. See `fuzz/README.md`.

#![no_main]

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::OnceLock;
use std::time::Duration;

use durable_streams::config::{ServerConfig, StorageKind};
use libfuzzer_sys::fuzz_target;

/// The server's address, started on the first input.
fn server() -> SocketAddr {
    static ADDR: OnceLock<SocketAddr> = OnceLock::new();
    *ADDR.get_or_init(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            previous(info);
            std::process::abort();
        }));
        let addr = std::net::TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .expect("a free port");
        let storage = match std::env::var("DS_FUZZ_STORAGE").as_deref() {
            Ok("file") => StorageKind::File,
            Ok("acid") => StorageKind::Acid,
            _ => StorageKind::Memory,
        };
        let data_dir = std::env::temp_dir().join(format!("ds-fuzz-data.{}", std::process::id()));
        let config = ServerConfig {
            bind: addr,
            storage,
            data_dir,
            // Live reads end soon, so an input that opens one costs little.
            long_poll_timeout: Duration::from_millis(50),
            header_read_timeout: Duration::from_millis(500),
            body_read_timeout: Duration::from_millis(500),
            ..ServerConfig::default()
        };
        std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .expect("runtime");
            rt.block_on(durable_streams::server::run(config, std::future::pending()))
                .expect("server runs");
        });
        while TcpStream::connect(addr).is_err() {
            std::thread::sleep(Duration::from_millis(10));
        }
        addr
    })
}

fuzz_target!(|data: &[u8]| {
    let mut s = TcpStream::connect(server()).expect("the server accepts");
    let _ = s.set_nodelay(true);
    let _ = s.set_read_timeout(Some(Duration::from_millis(200)));
    // The server may answer and close before it has read everything.
    let _ = s.write_all(data);
    let _ = s.shutdown(Shutdown::Write);
    let mut answer = Vec::new();
    let mut buf = [0u8; 16 << 10];
    // Until the server closes, or a live read stays open past the timeout.
    while let Ok(n) = s.read(&mut buf) {
        if n == 0 || answer.len() > 1 << 20 {
            break;
        }
        answer.extend_from_slice(&buf[..n]);
    }
    // The first answer's status only: a later one's place is unknown
    // without parsing, and a stream's data may hold any bytes.
    let internal = answer.starts_with(b"HTTP/1.1 500 ") || answer.starts_with(b"HTTP/1.0 500 ");
    assert!(
        !internal,
        "a 500 answer:\n{}",
        String::from_utf8_lossy(&answer[..answer.len().min(4096)])
    );
});
