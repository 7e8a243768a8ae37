//! kill -9 through the real binary: every acknowledged write must survive.
//!
//! Starts `durable-streams serve --storage file`, writes streams of every
//! kind over HTTP (plain, JSON, closed, forked, with a TTL, with producer
//! appends), SIGKILLs the process (no shutdown, no final checkpoint), starts
//! it again on the same directory and checks every byte, offset, closure
//! flag and fork read, and that a retried producer append answers 204.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

struct Server {
    child: Child,
    addr: String,
}

impl Server {
    fn start(dir: &std::path::Path) -> Server {
        let mut child = Command::new(env!("CARGO_BIN_EXE_durable-streams"))
            .args([
                "serve",
                "--bind",
                "127.0.0.1:0",
                "--storage",
                "file",
                "--data-dir",
            ])
            .arg(dir)
            .env("NO_COLOR", "1")
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("start the server");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let addr = loop {
            let line = lines
                .next()
                .expect("server exited before listening")
                .expect("stdout line");
            if let Some(at) = line.find("listening on http://") {
                break line[at + "listening on http://".len()..]
                    .trim()
                    .trim_end_matches('/')
                    .to_string();
            }
        };
        // Keep draining stdout so the server never blocks on a full pipe.
        std::thread::spawn(move || for _ in lines {});
        Server { child, addr }
    }

    /// SIGKILL: no graceful shutdown, no checkpoint.
    fn kill(mut self) {
        self.child.kill().expect("kill");
        self.child.wait().expect("reap");
    }

    fn request(&self, method: &str, path: &str, headers: &[(&str, &str)], body: &[u8]) -> Response {
        let mut conn = TcpStream::connect(&self.addr).expect("connect");
        conn.set_read_timeout(Some(Duration::from_secs(20)))
            .unwrap();
        let mut req = format!(
            "{method} /v1/stream/{path} HTTP/1.1\r\nHost: {}\r\nConnection: close\r\nContent-Length: {}\r\n",
            self.addr,
            body.len()
        );
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("\r\n");
        conn.write_all(req.as_bytes()).unwrap();
        conn.write_all(body).unwrap();
        let mut raw = Vec::new();
        conn.read_to_end(&mut raw).expect("response");
        Response::parse(&raw)
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    fn parse(raw: &[u8]) -> Response {
        let split = raw
            .windows(4)
            .position(|w| w == b"\r\n\r\n")
            .expect("header end");
        let head = String::from_utf8_lossy(&raw[..split]).into_owned();
        let mut lines = head.split("\r\n");
        let status = lines
            .next()
            .unwrap()
            .split(' ')
            .nth(1)
            .unwrap()
            .parse()
            .unwrap();
        let headers: Vec<(String, String)> = lines
            .filter_map(|l| l.split_once(':'))
            .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
            .collect();
        let mut body = raw[split + 4..].to_vec();
        let chunked = headers
            .iter()
            .any(|(k, v)| k == "transfer-encoding" && v.eq_ignore_ascii_case("chunked"));
        if chunked {
            body = dechunk(&body);
        }
        Response {
            status,
            headers,
            body,
        }
    }

    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

fn dechunk(mut b: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    loop {
        let eol = b
            .windows(2)
            .position(|w| w == b"\r\n")
            .expect("chunk size line");
        let size = usize::from_str_radix(
            std::str::from_utf8(&b[..eol])
                .unwrap()
                .split(';')
                .next()
                .unwrap()
                .trim(),
            16,
        )
        .expect("chunk size");
        if size == 0 {
            return out;
        }
        out.extend_from_slice(&b[eol + 2..eol + 2 + size]);
        b = &b[eol + 2 + size + 2..];
    }
}

/// What one stream should hold after the restart.
struct Expect {
    path: &'static str,
    body: Vec<u8>,
    tail: String,
    closed: bool,
}

fn check(server: &Server, e: &Expect) {
    let r = server.request("GET", &format!("{}?offset=-1", e.path), &[], b"");
    assert_eq!(r.status, 200, "GET {}", e.path);
    assert_eq!(r.body, e.body, "body of {}", e.path);
    assert_eq!(
        r.header("stream-next-offset"),
        Some(e.tail.as_str()),
        "tail of {}",
        e.path
    );
    assert_eq!(
        r.header("stream-closed").is_some_and(|v| v == "true"),
        e.closed,
        "closure of {}",
        e.path
    );
}

#[test]
fn acknowledged_writes_survive_kill_9() {
    let dir = tempfile::tempdir().unwrap();
    let server = Server::start(dir.path());
    let plain = [("Content-Type", "text/plain")];
    let json = [("Content-Type", "application/json")];
    let mut expect = Vec::new();

    // Plain stream with several appends.
    assert_eq!(server.request("PUT", "plain", &plain, b"hello").status, 201);
    let mut tail = String::new();
    for i in 0..20 {
        let r = server.request("POST", "plain", &plain, format!(" {i}").as_bytes());
        assert_eq!(r.status, 204);
        tail = r.header("stream-next-offset").unwrap().to_string();
    }
    let mut body = b"hello".to_vec();
    (0..20).for_each(|i| body.extend_from_slice(format!(" {i}").as_bytes()));
    expect.push(Expect {
        path: "plain",
        body: body.clone(),
        tail: tail.clone(),
        closed: false,
    });

    // JSON stream.
    assert_eq!(
        server
            .request("PUT", "json", &json, b"[{\"a\":1},{\"b\":2}]")
            .status,
        201
    );
    let r = server.request("POST", "json", &json, b"{\"c\": 3.50}");
    assert_eq!(r.status, 204);
    expect.push(Expect {
        path: "json",
        body: b"[{\"a\":1},{\"b\":2},{\"c\": 3.50}]".to_vec(),
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    });

    // Closed by an append.
    assert_eq!(server.request("PUT", "closed", &plain, b"").status, 201);
    let r = server.request(
        "POST",
        "closed",
        &[plain[0], ("Stream-Closed", "true")],
        b"the end",
    );
    assert_eq!(r.status, 204);
    expect.push(Expect {
        path: "closed",
        body: b"the end".to_vec(),
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: true,
    });

    // A fork of "plain" part-way, with its own data.
    let fork_at = "0000000000000005_000000000000000d";
    let r = server.request(
        "PUT",
        "fork",
        &[
            ("Stream-Forked-From", "/v1/stream/plain"),
            ("Stream-Fork-Offset", fork_at),
            plain[0],
        ],
        b"",
    );
    assert_eq!(r.status, 201, "fork: {}", String::from_utf8_lossy(&r.body));
    let r = server.request("POST", "fork", &plain, b"+fork");
    assert_eq!(r.status, 204);
    let mut fork_body = body[..13].to_vec();
    fork_body.extend_from_slice(b"+fork");
    expect.push(Expect {
        path: "fork",
        body: fork_body,
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    });

    // A TTL stream.
    let r = server.request(
        "PUT",
        "ttl",
        &[plain[0], ("Stream-TTL", "3600")],
        b"ephemeral",
    );
    assert_eq!(r.status, 201);
    expect.push(Expect {
        path: "ttl",
        body: b"ephemeral".to_vec(),
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    });

    // Producer appends.
    assert_eq!(server.request("PUT", "producer", &plain, b"").status, 201);
    let producer = |seq: &'static str| {
        [
            plain[0],
            ("Producer-Id", "w1"),
            ("Producer-Epoch", "0"),
            ("Producer-Seq", seq),
        ]
    };
    let mut tail = String::new();
    for (seq, data) in [("0", "p0"), ("1", "p1"), ("2", "p2")] {
        let r = server.request("POST", "producer", &producer(seq), data.as_bytes());
        assert_eq!(r.status, 200, "producer append {seq}");
        tail = r.header("stream-next-offset").unwrap().to_string();
    }
    expect.push(Expect {
        path: "producer",
        body: b"p0p1p2".to_vec(),
        tail,
        closed: false,
    });

    server.kill();
    let server = Server::start(dir.path());
    for e in &expect {
        check(&server, e);
    }
    // The retry of an acknowledged producer append is a duplicate (204), not new data.
    let r = server.request("POST", "producer", &producer("2"), b"p2");
    assert_eq!(r.status, 204, "retried producer append");
    let r = server.request("HEAD", "ttl", &[], b"");
    assert_eq!(r.status, 200);
    assert!(r.header("stream-ttl").is_some_and(|v| v == "3600"));
    // Writes still work after recovery, and survive a second kill.
    let r = server.request("POST", "plain", &plain, b" more");
    assert_eq!(r.status, 204);
    let mut again = body.clone();
    again.extend_from_slice(b" more");
    let after = Expect {
        path: "plain",
        body: again,
        tail: r.header("stream-next-offset").unwrap().to_string(),
        closed: false,
    };
    server.kill();
    let server = Server::start(dir.path());
    check(&server, &after);
    for e in expect.iter().filter(|e| e.path != "plain") {
        check(&server, e);
    }
}
