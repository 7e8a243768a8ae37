//! Response compression for catch-up reads only.
//!
//! A catch-up read marks its response with [`CatchUp`]; the compression
//! layer compresses only marked responses whose body is at least
//! `compression_min_bytes`, with gzip or br as the client's
//! `Accept-Encoding` allows. SSE and long-poll responses are never marked,
//! so they are never compressed or buffered: their bytes must reach the
//! client as soon as they are written.

use axum::http::{HeaderValue, header};
use axum::response::Response;
use tower_http::compression::predicate::{NotForContentType, Predicate, SizeAbove};
use tower_http::compression::{CompressionLayer, CompressionLevel};

/// Response extension marking a catch-up read body as compressible.
#[derive(Clone, Copy, Debug)]
pub struct CatchUp;

/// The compression layer for the router.
pub fn layer(min_bytes: u16) -> CompressionLayer<impl Predicate> {
    let marked = |_: axum::http::StatusCode,
                  _: axum::http::Version,
                  _: &axum::http::HeaderMap,
                  ext: &axum::http::Extensions| ext.get::<CatchUp>().is_some();
    CompressionLayer::new()
        .gzip(true)
        .br(true)
        .no_deflate()
        .no_zstd()
        // Reads are answered often; favour speed over the last few percent.
        .quality(CompressionLevel::Fastest)
        .compress_when(
            SizeAbove::new(min_bytes)
                .and(NotForContentType::IMAGES)
                .and(marked),
        )
}

/// A compressed body is a different representation of the same data, so
/// its entity tag becomes weak (RFC 9110 §8.8.1); `If-None-Match` compares
/// weakly, so revalidation still answers 304.
pub async fn weaken_etag(mut res: Response) -> Response {
    if res.headers().contains_key(header::CONTENT_ENCODING)
        && let Some(tag) = res.headers().get(header::ETAG)
        && tag.as_bytes().starts_with(b"\"")
    {
        let mut weak = b"W/".to_vec();
        weak.extend_from_slice(tag.as_bytes());
        if let Ok(v) = HeaderValue::from_bytes(&weak) {
            res.headers_mut().insert(header::ETAG, v);
        }
    }
    res
}
