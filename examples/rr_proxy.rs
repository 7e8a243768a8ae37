//! A round-robin HTTP/1.1 reverse proxy for tests: every *request* (not every
//! connection) goes to the next backend, so consecutive requests of one
//! keep-alive client land on different nodes of a multi-node deployment.
//!
//! ```text
//! cargo build --release --example rr_proxy
//! rr_proxy --bind 127.0.0.1:0 --backend http://127.0.0.1:8001 --backend http://127.0.0.1:8002
//! ```
//!
//! Prints `rr_proxy listening on http://HOST:PORT` on stdout, the form the
//! server prints, so `scripts/lib/server.sh` finds the port the same way.
//!
//! - Request bodies are read into memory first (a test tool), so a request
//!   whose backend refuses the connection (a killed node) is retried on the
//!   next one. Once a request may have reached a backend it is never
//!   retried: a failure then is answered `502` with a problem+json body.
//! - Responses stream through frame by frame, unbuffered: SSE and long-poll
//!   work live.
//! - End-to-end headers, `Host` included, pass unchanged; hop-by-hop headers
//!   (RFC 9110 §7.6.1, and those named in `Connection`) are dropped.
//! - Connections to the backends are pooled and kept alive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::Bytes;
use clap::Parser;
use http_body_util::{BodyExt, Full, combinators::BoxBody};
use hyper::body::Incoming;
use hyper::header::{self, HeaderMap, HeaderName, HeaderValue};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response, StatusCode, Uri, Version};
use hyper_util::client::legacy::{Client, connect::HttpConnector};
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;

#[derive(Parser)]
#[command(about = "Round-robin HTTP/1.1 reverse proxy (a test tool)")]
struct Args {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:0")]
    bind: SocketAddr,
    /// Backend base URL, e.g. http://127.0.0.1:8001; repeat for each node.
    #[arg(long = "backend", required = true)]
    backends: Vec<Uri>,
    /// Log one line per request on stderr: method, path, backend, status.
    #[arg(long)]
    log: bool,
}

type Body = BoxBody<Bytes, hyper::Error>;

struct Proxy {
    client: Client<HttpConnector, Full<Bytes>>,
    backends: Vec<Uri>,
    /// Index of the backend the next request starts with.
    next: AtomicUsize,
    log: bool,
}

/// Hop-by-hop headers: they describe one connection, never the next one.
const HOP_BY_HOP: [HeaderName; 6] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::TRANSFER_ENCODING,
    header::TE,
    header::TRAILER,
    header::UPGRADE,
];

/// Removes hop-by-hop headers, `Proxy-*` and any header `Connection` names.
fn strip_hop_by_hop(headers: &mut HeaderMap) {
    let named: Vec<HeaderName> = headers
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .filter_map(|name| HeaderName::from_bytes(name.trim().as_bytes()).ok())
        .collect();
    for name in HOP_BY_HOP.iter().chain(&named) {
        headers.remove(name);
    }
    let proxy: Vec<HeaderName> = headers
        .keys()
        .filter(|k| k.as_str().starts_with("proxy-"))
        .cloned()
        .collect();
    for name in proxy {
        headers.remove(name);
    }
}

/// A `502`/`400` answer in the server's problem+json form.
fn problem(status: StatusCode, detail: &str) -> Response<Body> {
    let body = serde_json::json!({
        "type": "about:blank",
        "title": status.canonical_reason().unwrap_or("Error"),
        "status": status.as_u16(),
        "detail": detail,
    });
    let mut resp = Response::new(
        Full::new(Bytes::from(body.to_string()))
            .map_err(|never| match never {})
            .boxed(),
    );
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/problem+json"),
    );
    resp
}

/// `e` and its sources: hyper's own messages ("client error (Connect)") hide the cause.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}

/// `base` with the path and query of `uri`.
fn backend_uri(base: &Uri, uri: &Uri) -> Result<Uri, hyper::http::Error> {
    let path = uri.path_and_query().map_or("/", |p| p.as_str());
    Uri::builder()
        .scheme(base.scheme_str().unwrap_or("http"))
        .authority(base.authority().map_or("", |a| a.as_str()))
        .path_and_query(path)
        .build()
}

impl Proxy {
    async fn handle(&self, req: Request<Incoming>) -> Result<Response<Body>, Infallible> {
        let (mut parts, body) = req.into_parts();
        let body = match body.collect().await {
            Ok(b) => b.to_bytes(),
            Err(e) => {
                let detail = format!("reading the request body failed: {e}");
                return Ok(problem(StatusCode::BAD_REQUEST, &detail));
            }
        };
        strip_hop_by_hop(&mut parts.headers);
        parts.version = Version::HTTP_11;

        let start = self.next.fetch_add(1, Ordering::Relaxed);
        let mut last_error = String::from("no backend");
        for i in 0..self.backends.len() {
            let base = &self.backends[(start + i) % self.backends.len()];
            let mut out = Request::from_parts(parts.clone(), Full::new(body.clone()));
            *out.uri_mut() = match backend_uri(base, &parts.uri) {
                Ok(u) => u,
                Err(e) => return Ok(problem(StatusCode::BAD_GATEWAY, &e.to_string())),
            };
            match self.client.request(out).await {
                Ok(resp) => {
                    if self.log {
                        eprintln!("{} {} -> {base} {}", parts.method, parts.uri, resp.status());
                    }
                    let (mut rparts, rbody) = resp.into_parts();
                    strip_hop_by_hop(&mut rparts.headers);
                    return Ok(Response::from_parts(rparts, rbody.boxed()));
                }
                // The connection was never made: nothing was sent, try the next node.
                Err(e) if e.is_connect() => {
                    if self.log {
                        eprintln!(
                            "{} {} -> {base} connect failed: {}",
                            parts.method,
                            parts.uri,
                            chain(&e)
                        );
                    }
                    last_error = format!("{base}: {}", chain(&e));
                }
                Err(e) => {
                    if self.log {
                        eprintln!(
                            "{} {} -> {base} failed: {}",
                            parts.method,
                            parts.uri,
                            chain(&e)
                        );
                    }
                    let detail = format!("backend {base} failed: {}", chain(&e));
                    return Ok(problem(StatusCode::BAD_GATEWAY, &detail));
                }
            }
        }
        let detail = format!("no backend accepted the connection (last: {last_error})");
        Ok(problem(StatusCode::BAD_GATEWAY, &detail))
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let args = Args::parse();
    for b in &args.backends {
        if b.scheme_str() != Some("http") || b.authority().is_none() {
            eprintln!("rr_proxy: --backend {b}: expected http://HOST:PORT");
            std::process::exit(2);
        }
    }
    let client = Client::builder(TokioExecutor::new()).build(HttpConnector::new());
    let proxy = Arc::new(Proxy {
        client,
        backends: args.backends,
        next: AtomicUsize::new(0),
        log: args.log,
    });
    let listener = TcpListener::bind(args.bind).await?;
    println!("rr_proxy listening on http://{}", listener.local_addr()?);
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            // Out of file descriptors and the like: wait, do not exit.
            Err(e) => {
                eprintln!("rr_proxy: accept failed: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = Arc::clone(&proxy);
        tokio::spawn(async move {
            let service = service_fn(move |req| {
                let proxy = Arc::clone(&proxy);
                async move { proxy.handle(req).await }
            });
            // Client disconnects mid-response are normal (SSE readers leave).
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}
