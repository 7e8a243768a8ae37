//! The service each connection calls: a fast path for stream requests in
//! front of the [`router`](super::router).
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

use super::{AppState, MOUNT, auth, dispatch, headers, limit, ops, router};

/// The CORS headers of a non-preflight response, precomputed from the
/// configuration exactly as the router's `CorsLayer` derives them.
struct Cors {
    /// `None`: any origin (`*`); otherwise the allowed origins, echoed.
    origins: Option<Vec<HeaderValue>>,
    expose: HeaderValue,
}

const VARY: HeaderValue = HeaderValue::from_static(
    "origin, access-control-request-method, access-control-request-headers",
);
const ANY: HeaderValue = HeaderValue::from_static("*");
const NOSNIFF: HeaderValue = HeaderValue::from_static("nosniff");
const CROSS_ORIGIN: HeaderValue = HeaderValue::from_static("cross-origin");

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
        Cors { origins, expose }
    }

    fn apply(&self, origin: Option<&HeaderValue>, res: &mut HeaderMap) {
        res.append(header::VARY, VARY);
        match &self.origins {
            None => {
                res.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, ANY);
            }
            Some(list) => {
                if let Some(o) = origin.filter(|o| list.contains(o)) {
                    res.insert(header::ACCESS_CONTROL_ALLOW_ORIGIN, o.clone());
                }
            }
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

    /// True when `req` can take the fast path (see the module docs).
    fn fast(req: &Request) -> bool {
        let Some(name) = req.uri().path().strip_prefix(MOUNT) else {
            return false;
        };
        if name.is_empty() || name.starts_with("__ds") {
            return false;
        }
        match *req.method() {
            Method::GET => !req.headers().contains_key(header::ACCEPT_ENCODING),
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
        let req = req.map(Body::new);
        if !Self::fast(&req) {
            return self.router.clone().oneshot(req).await;
        }
        let started = Instant::now();
        let method = req.method().clone();
        let uri = req.uri().clone();
        let origin = req.headers().get(header::ORIGIN).cloned();
        let mut res = match auth::admit(&self.state, &req) {
            Err(refusal) => refusal.into_response(),
            Ok((slot, access)) => {
                let mut res = dispatch(&self.state, req).await;
                if access.private {
                    auth::privatize(res.headers_mut());
                }
                limit::hold(res, slot)
            }
        };
        if method == Method::HEAD {
            // As the router does: a HEAD answer carries the headers only
            // (hyper would drop the body on the wire too; this keeps the two
            // paths identical for in-process callers).
            *res.body_mut() = Body::empty();
        }
        let h = res.headers_mut();
        self.cors.apply(origin.as_ref(), h);
        h.insert(header::X_CONTENT_TYPE_OPTIONS, NOSNIFF);
        h.insert(
            header::HeaderName::from_static("cross-origin-resource-policy"),
            CROSS_ORIGIN,
        );
        ops::record(&self.state, &method, uri.path(), res.status(), started);
        Ok(res)
    }
}
