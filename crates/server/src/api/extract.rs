//! The request-body edge: content type, size and JSON syntax, in that order (415, 413, 400). What passes
//! is a [`Json`] document for [`super::fields`] to validate field by field (422).

use axum::body::{to_bytes, Body, Bytes};
use axum::extract::rejection::PathRejection;
use axum::extract::{FromRequest, FromRequestParts, Path, Request};
use axum::http::{header, request::Parts};
use http_body_util::LengthLimitError;

use super::dto::RecordId;
use super::error::ApiError;
use super::fields::Json;

/// The largest request body (SPEC §2): 64 KiB.
pub const BODY_LIMIT: usize = 64 * 1024;

/// Whether the request declares (`Content-Length`) a body over the limit: refused before a byte is read.
pub fn declared_too_large(headers: &axum::http::HeaderMap) -> bool {
    let declared = headers.get(header::CONTENT_LENGTH).and_then(|v| v.to_str().ok()?.parse::<u64>().ok());
    declared.is_some_and(|n| n > BODY_LIMIT as u64)
}

/// A request body checked for content type and size; [`JsonBody::json`] reads it (400 for bad syntax), its
/// strings borrowed from the body.
pub struct JsonBody(Bytes);

impl JsonBody {
    pub fn json(&self) -> Result<Json<'_>, ApiError> {
        Json::parse(&self.0).map_err(|e| ApiError::Malformed(e.to_string()))
    }
}

/// The checks of a request head, in the order every route applies them (with or without an
/// `Idempotency-Key`): 415 for a content type other than JSON, then 413 for a declared length over the
/// limit, refused before a byte of the body is read.
pub fn check_head(headers: &axum::http::HeaderMap) -> Result<(), ApiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !is_json(content_type) {
        return Err(ApiError::UnsupportedMediaType);
    }
    if declared_too_large(headers) {
        return Err(ApiError::PayloadTooLarge);
    }
    Ok(())
}

/// Reads a body of at most [`BODY_LIMIT`] bytes. Only a body over the limit is 413; one that fails to
/// arrive (the client hung up, a broken chunked encoding) is 400, whatever its size so far.
pub async fn read_body(body: Body) -> Result<Bytes, ApiError> {
    to_bytes(body, BODY_LIMIT).await.map_err(|e| {
        let e = e.into_inner();
        if e.downcast_ref::<LengthLimitError>().is_some() {
            ApiError::PayloadTooLarge
        } else {
            ApiError::Malformed("the body did not arrive in full".into())
        }
    })
}

fn is_json(content_type: &str) -> bool {
    let mut parts = content_type.split(';');
    let essence = parts.next().unwrap_or("").trim();
    if !essence.eq_ignore_ascii_case("application/json") {
        return false;
    }
    // JSON is UTF-8 (RFC 8259); a different declared charset is refused rather than misread.
    parts.all(|p| match p.split_once('=') {
        Some((k, v)) if k.trim().eq_ignore_ascii_case("charset") => {
            v.trim().trim_matches('"').eq_ignore_ascii_case("utf-8")
        }
        _ => true,
    })
}

impl<S: Send + Sync> FromRequest<S> for JsonBody {
    type Rejection = ApiError;

    async fn from_request(req: Request, _state: &S) -> Result<Self, ApiError> {
        check_head(req.headers())?;
        read_body(req.into_body()).await.map(JsonBody)
    }
}

/// A record id in the path. One that breaks [`RecordId`]'s rule names no record, so it is a 404 like any
/// unknown id; a path that cannot be read at all (bad percent-encoding) is a 400 problem document.
pub struct RecordIdPath(pub RecordId);

impl<S: Send + Sync> FromRequestParts<S> for RecordIdPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|e: PathRejection| ApiError::BadPath(e.body_text()))?;
        RecordId::parse(&id).map(RecordIdPath).map_err(|_| ApiError::NotFound("record"))
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn content_types() {
        for ok in [
            "application/json",
            "Application/JSON",
            "application/json; charset=utf-8",
            "application/json;charset=\"UTF-8\"",
        ] {
            assert!(super::is_json(ok), "{ok}");
        }
        for bad in [
            "",
            "text/plain",
            "application/jsonx",
            "application/json; charset=latin1",
            "application/x-www-form-urlencoded",
        ] {
            assert!(!super::is_json(bad), "{bad}");
        }
    }
}
