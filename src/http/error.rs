//! The one place errors become HTTP responses: `application/problem+json`
//! (RFC 9457) with a stable `code`, plus the protocol headers some errors
//! must carry (closure, producer epoch, expected sequence).

use axum::http::{HeaderName, HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use serde::Serialize;

use super::header_names as h;
use crate::storage::StorageError;

/// An error answered to a client.
#[derive(Debug)]
pub struct ApiError {
    pub status: StatusCode,
    /// Stable, machine-readable code (SCREAMING_SNAKE_CASE).
    pub code: &'static str,
    /// What went wrong and what to do about it, for humans.
    pub detail: String,
    /// Protocol headers to attach.
    pub headers: Vec<(HeaderName, String)>,
}

impl ApiError {
    pub fn new(status: StatusCode, code: &'static str, detail: impl Into<String>) -> Self {
        ApiError {
            status,
            code,
            detail: detail.into(),
            headers: Vec::new(),
        }
    }

    /// A 400 for a malformed request.
    pub fn bad_request(code: &'static str, detail: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, code, detail)
    }

    pub fn with_header(mut self, name: HeaderName, value: impl ToString) -> Self {
        self.headers.push((name, value.to_string()));
        self
    }
}

#[derive(Serialize)]
struct Problem<'a> {
    #[serde(rename = "type")]
    kind: &'a str,
    title: &'a str,
    status: u16,
    code: &'a str,
    detail: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let title = self.status.canonical_reason().unwrap_or("Error");
        let body = serde_json::to_vec(&Problem {
            kind: "about:blank",
            title,
            status: self.status.as_u16(),
            code: self.code,
            detail: &self.detail,
        })
        .unwrap_or_default();
        let mut res = (self.status, body).into_response();
        let headers = res.headers_mut();
        headers.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/problem+json"),
        );
        headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
        for (name, value) in self.headers {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(name, v);
            }
        }
        res
    }
}

impl From<StorageError> for ApiError {
    fn from(e: StorageError) -> Self {
        use StatusCode as S;
        use StorageError as E;
        let detail = e.to_string();
        match e {
            E::NotFound => ApiError::new(S::NOT_FOUND, "STREAM_NOT_FOUND", detail),
            E::Gone => ApiError::new(S::GONE, "STREAM_GONE", detail),
            E::ConfigMismatch => ApiError::new(S::CONFLICT, "CONFIG_MISMATCH", detail),
            E::PathReserved => ApiError::new(S::CONFLICT, "PATH_RESERVED", detail),
            E::AlreadyExists => ApiError::new(S::CONFLICT, "STREAM_EXISTS", detail),
            E::InvalidRestore(_) => ApiError::bad_request("INVALID_RESTORE", detail),
            E::Closed { tail } => ApiError::new(S::CONFLICT, "STREAM_CLOSED", detail)
                .with_header(h::STREAM_CLOSED, "true")
                .with_header(h::STREAM_NEXT_OFFSET, tail),
            E::PreconditionFailed { tail, closed } => {
                let e = ApiError::new(S::PRECONDITION_FAILED, "PRECONDITION_FAILED", detail)
                    .with_header(header::ETAG, format!("\"{tail}\""))
                    .with_header(h::STREAM_NEXT_OFFSET, tail);
                if closed {
                    e.with_header(h::STREAM_CLOSED, "true")
                } else {
                    e
                }
            }
            E::Trimmed { earliest } => ApiError::new(S::GONE, "OFFSET_TRIMMED", detail)
                .with_header(h::STREAM_EARLIEST_OFFSET, earliest),
            E::TrimBeyondTail { tail } => ApiError::bad_request("TRIM_BEYOND_TAIL", detail)
                .with_header(h::STREAM_NEXT_OFFSET, tail),
            E::IfMatchWithProducer => ApiError::bad_request("IF_MATCH_WITH_PRODUCER", detail),
            E::ContentTypeMismatch { .. } => {
                ApiError::new(S::CONFLICT, "CONTENT_TYPE_MISMATCH", detail)
            }
            E::MissingContentType => ApiError::bad_request("MISSING_CONTENT_TYPE", detail),
            E::SeqRegression { .. } => ApiError::new(S::CONFLICT, "SEQUENCE_CONFLICT", detail),
            E::StaleEpoch { current, .. } => {
                ApiError::new(S::FORBIDDEN, "STALE_PRODUCER_EPOCH", detail)
                    .with_header(h::PRODUCER_EPOCH, current)
            }
            E::EpochMustStartAtZero => ApiError::bad_request("INVALID_PRODUCER_SEQ", detail),
            E::SeqGap { expected, received } => {
                ApiError::new(S::CONFLICT, "PRODUCER_SEQ_GAP", detail)
                    .with_header(h::PRODUCER_EXPECTED_SEQ, expected)
                    .with_header(h::PRODUCER_RECEIVED_SEQ, received)
            }
            E::EmptyBody => ApiError::bad_request("EMPTY_BODY", detail),
            E::InvalidJson(_) => ApiError::bad_request("INVALID_JSON", detail),
            E::EmptyJsonArray => ApiError::bad_request("EMPTY_JSON_ARRAY", detail),
            E::ForkSourceNotFound => ApiError::new(S::NOT_FOUND, "FORK_SOURCE_NOT_FOUND", detail),
            E::ForkSourceGone => ApiError::new(S::CONFLICT, "FORK_SOURCE_GONE", detail),
            E::ForkOffsetBeyondTail => ApiError::bad_request("FORK_OFFSET_BEYOND_TAIL", detail),
            E::InvalidOffset => ApiError::bad_request("INVALID_OFFSET", detail),
            E::SubOffsetOutOfRange => ApiError::bad_request("INVALID_SUB_OFFSET", detail),
            E::TooLarge(_) => ApiError::new(S::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", detail),
            E::NoSpace => ApiError::new(
                S::INSUFFICIENT_STORAGE,
                "INSUFFICIENT_STORAGE",
                "the server has no storage space left",
            ),
            E::Unavailable(_) => {
                tracing::warn!(error = %detail, "storage temporarily unavailable");
                ApiError::new(
                    S::SERVICE_UNAVAILABLE,
                    "STORAGE_UNAVAILABLE",
                    "storage is temporarily unavailable; retry shortly",
                )
                .with_header(header::RETRY_AFTER, 1)
            }
            E::Io(_) | E::Corrupt(_) => {
                tracing::error!(error = %detail, "storage failure");
                ApiError::new(
                    S::INTERNAL_SERVER_ERROR,
                    "INTERNAL_ERROR",
                    "internal storage error",
                )
            }
        }
    }
}
