//! The service each connection calls: a fast path for stream requests in
//! front of the [`router`].
//!
//! The router wraps every request in seven layers (observe, security
//! headers ×2, ETag weakening, compression, CORS, auth), each cloning the
//! service below it and often the state; with glibc malloc that was ~4× the
//! CPU of a bare axum handler per append. Stream requests that no layer
//! changes in substance (`GET` without `Accept-Encoding`, `HEAD`, `PUT`,
//! `POST`, `DELETE` on `/v1/stream/{name}`) are answered here instead, by the
//! same handler, with the same checks and headers applied inline: auth
//! and rate limits ([`auth::admit`]), `Cache-Control: private`, CORS
//! response headers, `X-Content-Type-Options`,
//! `Cross-Origin-Resource-Policy`, metrics and the request log. Everything
//! else (preflights, compressible reads, the `__ds` APIs, ops endpoints,
//! unknown paths) goes through the router unchanged.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Instant;

use axum::Router;
use axum::body::Body;
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, Method, header};
use axum::response::{IntoResponse, Response};
use tower::ServiceExt;

use super::park::{Finish, ParkCell, ParkOffer};
use super::{AppState, MOUNT, auth, dispatch, headers, limit, ops, router};

/// The CORS headers of a non-preflight response, precomputed from the
/// configuration exactly as the router derives them (its `CorsLayer`, then
/// [`super::cors_answer`]): `access-control-allow-origin` and
/// `access-control-expose-headers` only answer a request with an `Origin`
/// (only browsers read them, and a cross-origin browser request always has
/// one). Without them an answer to `curl` or a client library is ~430 bytes
/// shorter (the list of exposed headers alone is 300): less for every
/// client to parse and copy (a few per cent of an append on this machine,
/// within its noise on one stream: BENCHMARKS.md). `Vary: Origin` stays on
/// every answer, so a cache keeps the two apart.
struct Cors {
    /// `None`: any origin (`*`); otherwise the allowed origins, echoed.
    origins: Option<Vec<HeaderValue>>,
    expose: HeaderValue,
    /// The lines [`Front::common`] adds to an answer to a request with an
    /// `Origin`, but for `access-control-allow-origin`, encoded once.
    lines: Vec<u8>,
    /// The same for a request without one (no exposed headers).
    bare: Vec<u8>,
}

/// Only `Origin` decides the CORS headers of an answer that is not a
/// preflight (tower-http's triple, with the `Access-Control-Request-*`
/// headers, matters only to preflights, which the router answers).
const VARY: HeaderValue = HeaderValue::from_static("origin");
static ANY: HeaderValue = HeaderValue::from_static("*");
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const CROSS_ORIGIN: HeaderValue = HeaderValue::from_static("cross-origin");
const CORP: &str = "cross-origin-resource-policy";

/// The headers the fast path gives every response, left out of an
/// answer's map for a connection that writes them itself
/// ([`Front::handle_raw`]): five map inserts, their encoding and their drop
/// cost ~1,500 instructions per request; written pre-encoded they cost a
/// copy.
pub struct Common {
    origin: Option<HeaderValue>,
}

impl Common {
    /// The common headers of an answer to a request from `origin`.
    pub fn new(origin: Option<HeaderValue>) -> Self {
        Common { origin }
    }
}

/// The header lines of a [`Common`]: `lines` (each ending in CRLF), and
/// the `access-control-allow-origin` value when there is one.
pub struct CommonLines<'a> {
    pub lines: &'a [u8],
    pub allow_origin: Option<&'a [u8]>,
}

impl Cors {
    fn new(config: &[String]) -> Self {
        let origins = (!config.iter().any(|o| o == "*")).then(|| {
            config
                .iter()
                .filter_map(|o| HeaderValue::from_str(o).ok())
                .collect()
        });
        let expose = HeaderValue::from_str(&headers::EXPOSED.join(","))
            .unwrap_or_else(|_| HeaderValue::from_static(""));
        let encode = |with_expose: bool| {
            let mut lines = Vec::new();
            for (name, value) in [
                (header::VARY.as_str(), &VARY),
                (header::ACCESS_CONTROL_EXPOSE_HEADERS.as_str(), &expose),
                (header::X_CONTENT_TYPE_OPTIONS.as_str(), &NOSNIFF),
                (CORP, &CROSS_ORIGIN),
            ] {
                if !with_expose && name == header::ACCESS_CONTROL_EXPOSE_HEADERS {
                    continue;
                }
                lines.extend_from_slice(name.as_bytes());
                lines.extend_from_slice(b": ");
                lines.extend_from_slice(value.as_bytes());
                lines.extend_from_slice(b"\r\n");
            }
            lines
        };
        Cors {
            origins,
            lines: encode(true),
            bare: encode(false),
            expose,
        }
    }

    /// The `access-control-allow-origin` value of an answer to `origin`
    /// (none without one).
    fn allow<'a>(&'a self, origin: Option<&'a HeaderValue>) -> Option<&'a HeaderValue> {
        let origin = origin?;
        match &self.origins {
            None => Some(&ANY),
            Some(list) => list.contains(origin).then_some(origin),
        }
    }

    fn apply(&self, origin: Option<&HeaderValue>, res: &mut HeaderMap) {
        res.append(header::VARY, VARY);
        if origin.is_none() {
            return;
        }
        if let Some(o) = self.allow(origin) {
            res.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
        }
        res.insert(header::ACCESS_CONTROL_EXPOSE_HEADERS, self.expose.clone());
    }
}

/// The application as one cheap-to-clone service.
pub struct Front {
    state: AppState,
    router: Router,
    cors: Cors,
}

impl Front {
    pub fn new(state: AppState) -> Arc<Self> {
        Arc::new(Front {
            cors: Cors::new(&state.config.cors_origins),
            router: router(state.clone()),
            state,
        })
    }

    /// True when connections should tag each request with its
    /// [`limit::ClientAddr`] (only the rate limiter reads it; tagging costs
    /// an allocation per request).
    pub fn wants_client_addr(&self) -> bool {
        self.state.limiter.is_some()
    }

    /// The body limit when the HTTP/1 engine may answer plain appends
    /// itself (`h1::append`, which checks auth as [`auth::admit`] does):
    /// only without rate limits, whose checks read the request as axum
    /// sees it; `None` otherwise.
    pub fn append_limit(&self) -> Option<usize> {
        let s = &self.state;
        s.limiter
            .is_none()
            .then_some(s.config.limits.max_body_bytes)
    }

    /// The server state.
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// True when `req` can take the fast path (see the module docs). Live
    /// reads take it whatever their `Accept-Encoding`: they are never
    /// compressed.
    fn fast(req: &Request) -> bool {
        let Some(name) = req.uri().path().strip_prefix(MOUNT) else {
            return false;
        };
        if name.is_empty() || name.starts_with("__ds") {
            return false;
        }
        match *req.method() {
            Method::GET => {
                !req.headers().contains_key(header::ACCEPT_ENCODING)
                    || req.uri().query().is_some_and(|q| q.contains("live="))
            }
            Method::HEAD | Method::PUT | Method::POST | Method::DELETE => true,
            _ => false,
        }
    }

    /// Answers one request.
    pub async fn handle<B>(&self, req: axum::http::Request<B>) -> Result<Response, Infallible>
    where
        B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let (mut res, common) = self.handle_raw(req).await;
        if let Some(c) = common {
            self.common(c.origin.as_ref(), res.headers_mut());
        }
        Ok(res)
    }

    /// Answers one request, leaving out of the answer's map the headers
    /// in the [`Common`] it returns: the caller writes them
    /// ([`Front::common_lines`]) and drops those names from the map (as
    /// the inserts they stand for would have replaced them).
    pub async fn handle_raw<B>(&self, req: axum::http::Request<B>) -> (Response, Option<Common>)
    where
        B: http_body::Body<Data = axum::body::Bytes> + Send + 'static,
        B::Error: Into<axum::BoxError>,
    {
        let mut req = req.map(Body::new);
        if !Self::fast(&req) {
            // The router's layers could not be applied to an answer given
            // after parking.
            req.extensions_mut().remove::<ParkOffer>();
            let Ok(res) = self.router.clone().oneshot(req).await;
            return (res, None);
        }
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut res = match auth::admit(&self.state, &req) {
            Err(refusal) => refusal.into_response(),
            Ok((slot, access)) => {
                let mut res = dispatch(&self.state, req).await;
                if let Some(cell) = res.extensions().get::<ParkCell>().cloned() {
                    if cell.has_ticket() {
                        // A long-poller to park: its answer, given later,
                        // gets all of this then (`finish_live`).
                        cell.set_finish(Finish {
                            origin,
                            private: access.private,
                            slot,
                            started,
                        });
                        return (res, None);
                    }
                    // An SSE reader that may park: its live slot goes with it.
                    cell.set_finish(Finish {
                        origin: None,
                        private: false,
                        slot,
                        started,
                    });
                } else {
                    res = limit::hold(res, slot);
                }
                if access.private {
                    auth::privatize(res.headers_mut());
                }
                res
            }
        };
        if method == Method::HEAD {
            // As the router does: a HEAD answer carries the headers only
            // (hyper would drop the body on the wire too; this keeps the two
            // paths identical for in-process callers).
            *res.body_mut() = Body::empty();
        }
        ops::record(&self.state, &method, uri.path(), res.status(), started);
        (res, Some(Common { origin }))
    }

    /// The header lines of `c`, to write with its answer's head.
    pub fn common_lines<'a>(&'a self, c: &'a Common) -> CommonLines<'a> {
        CommonLines {
            lines: if c.origin.is_some() {
                &self.cors.lines
            } else {
                &self.cors.bare
            },
            allow_origin: self
                .cors
                .allow(c.origin.as_ref())
                .map(HeaderValue::as_bytes),
        }
    }

    /// Whether a header of an answer's map gives way to the lines of a
    /// [`Common`] (its inserts would have replaced it; `vary` is appended).
    pub fn replaced_by_common(name: &header::HeaderName) -> bool {
        name == header::ACCESS_CONTROL_ALLOW_ORIGIN
            || name == header::ACCESS_CONTROL_EXPOSE_HEADERS
            || name == header::X_CONTENT_TYPE_OPTIONS
            || name.as_str() == CORP
    }

    /// The headers the fast path gives every response.
    fn common(&self, origin: Option<&HeaderValue>, h: &mut HeaderMap) {
        self.cors.apply(origin, h);
        h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
        h.insert(header::HeaderName::from_static(CORP), CROSS_ORIGIN);
    }

    /// The answer of a long-poller that was parked, finished as the fast
    /// path finishes every answer (with what it kept in `f`), and logged
    /// and counted as the request on `path`. A poller that parks again
    /// keeps `f` in its cell.
    pub fn finish_live(
        &self,
        res: Result<Response, super::error::ApiError>,
        f: Option<Box<Finish>>,
        path: &str,
    ) -> Response {
        let mut res = res.unwrap_or_else(IntoResponse::into_response);
        let f = f.map_or_else(
            || Finish {
                origin: None,
                private: false,
                slot: None,
                started: Instant::now(),
            },
            |b| *b,
        );
        if let Some(cell) = res.extensions().get::<ParkCell>()
            && cell.has_ticket()
        {
            cell.set_finish(f);
            return res;
        }
        if f.private {
            auth::privatize(res.headers_mut());
        }
        let mut res = limit::hold(res, f.slot);
        self.common(f.origin.as_ref(), res.headers_mut());
        ops::record(&self.state, &Method::GET, path, res.status(), f.started);
        res
    }
}
