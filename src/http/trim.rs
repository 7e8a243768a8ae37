//! The trim API, our extension (PROTOCOL.md "Trimming and retention"):
//! `POST /v1/stream/__ds/trim/{name}?before=<offset>` drops a stream's data
//! before an offset. Under the reserved `__ds` prefix rather than a new
//! meaning of a base-protocol request, so that a server without the
//! extension answers it `404` instead of doing something else (a
//! `DELETE …?before=` would delete the whole stream there).

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use super::error::ApiError;
use super::headers as h;
use super::{AppState, finish};
use crate::offset::Offset;
use crate::storage::now_ms;

/// Where a trim request's stream name starts.
pub const PREFIX: &str = "/v1/stream/__ds/trim/";

/// The `before` parameter: exactly one concrete offset (`-1` and `now`
/// name no position to trim to).
pub fn before(query: Option<&str>) -> Result<Offset, ApiError> {
    let mut found = None;
    for pair in query.unwrap_or("").split('&').filter(|p| !p.is_empty()) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k != "before" {
            continue;
        }
        if found.is_some() {
            return Err(ApiError::bad_request(
                "INVALID_TRIM_OFFSET",
                "send the before parameter once",
            ));
        }
        found = Some(Offset::parse(v).ok_or_else(|| {
            ApiError::bad_request(
                "INVALID_TRIM_OFFSET",
                "before must be an offset of the stream, as in Stream-Next-Offset",
            )
        })?);
    }
    found.ok_or_else(|| {
        ApiError::bad_request(
            "MISSING_TRIM_OFFSET",
            "name the first offset to keep: ?before=<offset>",
        )
    })
}

/// The handler: `204` with the retained range (`Stream-Earliest-Offset`,
/// `Stream-Next-Offset`), the same for a retry.
pub async fn trim(State(state): State<AppState>, req: Request) -> Response {
    serve(&state, req)
        .await
        .unwrap_or_else(IntoResponse::into_response)
}

async fn serve(state: &AppState, req: Request) -> Result<Response, ApiError> {
    let raw = req.uri().path().strip_prefix(PREFIX).unwrap_or("");
    let name = h::stream_name(raw, state.config.limits.max_name_bytes)?.into_owned();
    let before = before(req.uri().query())?;
    let now = now_ms();
    let out = state.storage(move |s| s.trim(&name, before, now)).await?;
    let b = super::response(StatusCode::NO_CONTENT)
        .header(h::STREAM_EARLIEST_OFFSET, out.info.earliest.to_string())
        .header(h::STREAM_NEXT_OFFSET, out.info.tail.to_string());
    finish(b, Body::empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn before_parameter() {
        let o = Offset::new(2, 7);
        assert_eq!(before(Some(&format!("before={o}"))).unwrap(), o);
        assert_eq!(before(Some(&format!("x=1&before={o}"))).unwrap(), o);
        assert_eq!(before(None).unwrap_err().code, "MISSING_TRIM_OFFSET");
        assert_eq!(before(Some("x=1")).unwrap_err().code, "MISSING_TRIM_OFFSET");
        for bad in ["before=-1", "before=now", "before=", "before=12"] {
            assert_eq!(before(Some(bad)).unwrap_err().code, "INVALID_TRIM_OFFSET");
        }
        let twice = format!("before={o}&before={o}");
        assert_eq!(
            before(Some(&twice)).unwrap_err().code,
            "INVALID_TRIM_OFFSET"
        );
    }
}
