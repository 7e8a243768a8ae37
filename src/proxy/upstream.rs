//! The upstream request (proxy spec sections 5 and 8.1): which client
//! headers are forwarded (pure), and sending it through the webhook
//! client ([`HttpTransport::open`]: SSRF checks after DNS, rustls with
//! `webhook_ca_file`) within the header timeout. Redirects are never
//! followed: hyper's connection-level client does not follow them, and the
//! caller refuses a 3xx.

use std::time::Duration;

use axum::http::{HeaderMap, HeaderName, HeaderValue, Method, header};
use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;

use crate::subscriptions::delivery::{HttpTransport, NO_ALLOWED_ADDRESS};
use crate::subscriptions::ssrf::Target;

/// The proxy's own request headers (never forwarded).
pub const UPSTREAM_URL: HeaderName = HeaderName::from_static("upstream-url");
pub const UPSTREAM_METHOD: HeaderName = HeaderName::from_static("upstream-method");
pub const UPSTREAM_AUTHORIZATION: HeaderName = HeaderName::from_static("upstream-authorization");

/// Largest upstream error body passed through to the client.
pub const MAX_ERROR_BODY: usize = 64 * 1024;

/// Client headers never forwarded: hop-by-hop (section 5.2), the ones the
/// proxy replaces (`Host`, `Authorization`, framing), its own, and
/// `Accept-Encoding` (the stream stores the identity body: readers could
/// not decode a compressed one) and `Expect`.
const STRIPPED: &[&str] = &[
    "connection",
    "keep-alive",
    "proxy-authenticate",
    "proxy-authorization",
    "proxy-connection",
    "te",
    "trailer",
    "trailers",
    "transfer-encoding",
    "upgrade",
    "host",
    "authorization",
    "content-length",
    "accept-encoding",
    "expect",
    "upstream-url",
    "upstream-method",
    "upstream-authorization",
];

/// The methods an upstream request may use.
pub fn method(value: &str) -> Option<Method> {
    match value {
        "GET" => Some(Method::GET),
        "POST" => Some(Method::POST),
        "PUT" => Some(Method::PUT),
        "PATCH" => Some(Method::PATCH),
        "DELETE" => Some(Method::DELETE),
        _ => None,
    }
}

/// The headers sent upstream for a client request's `headers`: every one
/// not in `STRIPPED` nor named by the client's `Connection` header, plus
/// `Authorization` from `Upstream-Authorization`, `Host` of the target and
/// `Accept-Encoding: identity`.
pub fn forward_headers(client: &HeaderMap, target: &Target) -> HeaderMap {
    let named: Vec<String> = client
        .get_all(header::CONNECTION)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().to_ascii_lowercase())
        .collect();
    let mut out = HeaderMap::new();
    for (name, value) in client {
        let n = name.as_str();
        if STRIPPED.contains(&n) || named.iter().any(|t| t == n) {
            continue;
        }
        out.append(name.clone(), value.clone());
    }
    if let Some(auth) = client.get(UPSTREAM_AUTHORIZATION) {
        out.insert(header::AUTHORIZATION, auth.clone());
    }
    if let Ok(host) = HeaderValue::from_str(&target.host_header()) {
        out.insert(header::HOST, host);
    }
    out.insert(
        header::ACCEPT_ENCODING,
        HeaderValue::from_static("identity"),
    );
    out
}

/// Why the upstream gave no response.
#[derive(Debug)]
pub enum SendError {
    /// No response headers within the header timeout.
    Timeout,
    /// Every address the host resolves to is refused by the SSRF rules.
    Refused,
    /// Resolving, connecting, TLS or the exchange failed.
    Unreachable(String),
}

/// Sends one request and waits for the response's headers.
pub async fn send(
    transport: &HttpTransport,
    target: &Target,
    method: Method,
    headers: HeaderMap,
    body: Bytes,
    timeout: Duration,
) -> Result<hyper::Response<Incoming>, SendError> {
    let exchange = async {
        let mut send = transport.open(target).await?;
        let mut req = hyper::Request::builder()
            .method(method)
            .uri(target.path.as_str())
            .body(Full::new(body))
            .map_err(|e| format!("bad upstream request: {e}"))?;
        *req.headers_mut() = headers;
        send.send_request(req).await.map_err(|e| e.to_string())
    };
    match tokio::time::timeout(timeout, exchange).await {
        Err(_) => Err(SendError::Timeout),
        Ok(Err(e)) if e == NO_ALLOWED_ADDRESS => Err(SendError::Refused),
        Ok(Err(e)) => Err(SendError::Unreachable(e)),
        Ok(Ok(res)) => Ok(res),
    }
}

/// The first [`MAX_ERROR_BODY`] bytes of an error response's body (what
/// arrives within `timeout`; a failed read gives what there is: nothing).
pub async fn error_body(body: Incoming, timeout: Duration) -> Bytes {
    let read = async {
        let mut out = Vec::new();
        let mut body = body;
        while let Some(Ok(frame)) = body.frame().await {
            if let Ok(data) = frame.into_data() {
                let room = MAX_ERROR_BODY - out.len();
                out.extend_from_slice(&data[..data.len().min(room)]);
                if out.len() >= MAX_ERROR_BODY {
                    break;
                }
            }
        }
        Bytes::from(out)
    };
    tokio::time::timeout(timeout, read)
        .await
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::subscriptions::ssrf;

    #[test]
    fn strips_hop_by_hop_and_proxy_headers() {
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("connection", "keep-alive, x-secret"),
            ("keep-alive", "5"),
            ("te", "trailers"),
            ("transfer-encoding", "chunked"),
            ("upgrade", "h2c"),
            ("proxy-authorization", "Basic x"),
            ("host", "proxy.local"),
            ("authorization", "Bearer proxy-token"),
            ("upstream-url", "http://localhost/x"),
            ("upstream-method", "POST"),
            ("upstream-authorization", "Bearer sk-upstream"),
            ("x-secret", "dropped: named by Connection"),
            ("content-type", "application/json"),
            ("x-custom", "kept"),
            ("accept-encoding", "gzip"),
        ] {
            h.append(HeaderName::from_static(k), HeaderValue::from_static(v));
        }
        let t = ssrf::parse("http://localhost:8080/v1/chat").unwrap();
        let out = forward_headers(&h, &t);
        let names: Vec<&str> = {
            let mut n: Vec<&str> = out.keys().map(HeaderName::as_str).collect();
            n.sort_unstable();
            n
        };
        assert_eq!(
            names,
            [
                "accept-encoding",
                "authorization",
                "content-type",
                "host",
                "x-custom"
            ]
        );
        assert_eq!(out["authorization"], "Bearer sk-upstream");
        assert_eq!(out["host"], "localhost:8080");
        assert_eq!(out["accept-encoding"], "identity");
    }

    #[test]
    fn methods() {
        for m in ["GET", "POST", "PUT", "PATCH", "DELETE"] {
            assert!(method(m).is_some());
        }
        for m in ["get", "HEAD", "OPTIONS", "CONNECT", ""] {
            assert!(method(m).is_none());
        }
    }
}
