//! The one API error type and its RFC 9457 problem+json rendering (SPEC §4).
//!
//! Handlers return [`ApiError`]; domain and store errors convert into it here and nowhere else. The body of
//! a 5xx never carries internals: the cause chain goes to the log, under the request's id.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde::Serialize;
use store::StoreError;
use utoipa::ToSchema;

/// One offending field of a request.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, ToSchema)]
pub struct FieldError {
    /// The field's path in the request body, e.g. `customer.idNumber`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self { field: field.into(), message: message.into() }
    }
}

/// An RFC 9457 problem document.
#[derive(Debug, Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct Problem {
    /// A URI naming the kind of problem: `urn:integration-service:problem:<code>`.
    #[serde(rename = "type")]
    pub kind: String,
    pub title: String,
    pub status: u16,
    pub detail: String,
    /// Stable machine-readable code, e.g. `VALIDATION_FAILED`.
    #[schema(example = "VALIDATION_FAILED")]
    pub code: String,
    /// Every offending field (empty unless the request broke a rule).
    pub errors: Vec<FieldError>,
    /// The id of the request, as in its `X-Request-Id` header and the logs.
    pub request_id: String,
}

/// Everything an API call can answer besides success, each with its HTTP status.
#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    /// 400 `MALFORMED_REQUEST`: the body is not JSON (or the path cannot be read).
    #[error("malformed request: {0}")]
    Malformed(String),
    /// 400 `MALFORMED_REQUEST`: the path cannot be read (for example invalid percent-encoding).
    #[error("bad path: {0}")]
    BadPath(String),
    /// 408 `REQUEST_TIMEOUT`: the request (body included) took longer than the configured limit.
    #[error("request timeout")]
    Timeout,
    /// 415 `UNSUPPORTED_MEDIA_TYPE`: the body is not `application/json`.
    #[error("unsupported media type")]
    UnsupportedMediaType,
    /// 413 `PAYLOAD_TOO_LARGE`: the body is over 64 KiB.
    #[error("payload too large")]
    PayloadTooLarge,
    /// 422 `VALIDATION_FAILED`: well-formed JSON that breaks a rule; lists every offending field.
    #[error("validation failed")]
    Validation(Vec<FieldError>),
    /// 401 `UNAUTHENTICATED`: no API key, or one the service does not know. Sets `WWW-Authenticate`.
    #[error("unauthenticated")]
    Unauthenticated,
    /// 403 `FORBIDDEN`: the API key belongs to another channel than the body's `channel`.
    #[error("forbidden")]
    Forbidden,
    /// 403 `FORBIDDEN`: the API key's role does not allow this path (a channel key on the reports, a
    /// reporting key anywhere else).
    #[error("forbidden for the key's role")]
    WrongRole,
    /// 404 `NOT_FOUND`: unknown record or path.
    #[error("not found")]
    NotFound(&'static str),
    /// 404 `NOT_FOUND`: no such path.
    #[error("no route")]
    NoRoute,
    /// 405 `METHOD_NOT_ALLOWED`: the path exists, the method does not.
    #[error("method not allowed")]
    MethodNotAllowed,
    /// 409 `INVALID_TRANSITION`: a status change the lifecycle forbids.
    #[error("invalid transition")]
    InvalidTransition(String),
    /// 409 `IDEMPOTENCY_KEY_IN_USE`: a request with this `Idempotency-Key` is still running. Sets `Retry-After`.
    #[error("idempotency key in use")]
    IdempotencyKeyInUse,
    /// 422 `IDEMPOTENCY_KEY_REUSED`: this `Idempotency-Key` was used for a different request.
    #[error("idempotency key reused")]
    IdempotencyKeyReused,
    /// 429 `RATE_LIMITED`: the channel sent more requests than its rate allows. Sets `Retry-After`.
    #[error("rate limited")]
    RateLimited { retry_after: Duration },
    /// 503 `OVERLOADED`: too many requests in flight; shed at once rather than queued. Sets `Retry-After`.
    #[error("overloaded")]
    Overloaded,
    /// 422 `CRM_REJECTED`: the CRM refused the request's data (a validation or duplicate rule of the org);
    /// `errors` names the CRM's error code (and the request field, when the CRM named one we map).
    #[error("rejected by the CRM: {code}")]
    CrmRejected { code: String, field: Option<String>, message: String },
    /// 502 `CRM_ERROR`: the CRM refused because of this service's configuration; details only in the log.
    #[error("CRM configuration error")]
    CrmError,
    /// 504 `CRM_OUTCOME_UNKNOWN`: a write reached the CRM and its outcome could not be established.
    #[error("CRM outcome unknown")]
    OutcomeUnknown,
    /// 503 `BACKEND_UNAVAILABLE`: the store is down or overloaded; nothing was changed. Sets `Retry-After`.
    #[error("backend unavailable")]
    Unavailable { retry_after: Duration },
    /// 500 `INTERNAL`: a bug. The cause is logged, never sent.
    #[error("internal error")]
    Internal,
}

impl ApiError {
    fn parts(&self) -> (StatusCode, &'static str, &'static str) {
        match self {
            Self::Malformed(_) | Self::BadPath(_) => {
                (StatusCode::BAD_REQUEST, "MALFORMED_REQUEST", "Malformed request")
            }
            Self::Timeout => (StatusCode::REQUEST_TIMEOUT, "REQUEST_TIMEOUT", "Request timeout"),
            Self::UnsupportedMediaType => {
                (StatusCode::UNSUPPORTED_MEDIA_TYPE, "UNSUPPORTED_MEDIA_TYPE", "Unsupported media type")
            }
            Self::PayloadTooLarge => (StatusCode::PAYLOAD_TOO_LARGE, "PAYLOAD_TOO_LARGE", "Payload too large"),
            Self::Validation(_) => (StatusCode::UNPROCESSABLE_ENTITY, "VALIDATION_FAILED", "Validation failed"),
            Self::Unauthenticated => (StatusCode::UNAUTHORIZED, "UNAUTHENTICATED", "Unauthenticated"),
            Self::Forbidden | Self::WrongRole => (StatusCode::FORBIDDEN, "FORBIDDEN", "Forbidden"),
            Self::NotFound(_) | Self::NoRoute => (StatusCode::NOT_FOUND, "NOT_FOUND", "Not found"),
            Self::MethodNotAllowed => (StatusCode::METHOD_NOT_ALLOWED, "METHOD_NOT_ALLOWED", "Method not allowed"),
            Self::InvalidTransition(_) => (StatusCode::CONFLICT, "INVALID_TRANSITION", "Invalid transition"),
            Self::IdempotencyKeyInUse => (StatusCode::CONFLICT, "IDEMPOTENCY_KEY_IN_USE", "Idempotency key in use"),
            Self::IdempotencyKeyReused => {
                (StatusCode::UNPROCESSABLE_ENTITY, "IDEMPOTENCY_KEY_REUSED", "Idempotency key reused")
            }
            Self::Unavailable { .. } => (StatusCode::SERVICE_UNAVAILABLE, "BACKEND_UNAVAILABLE", "Backend unavailable"),
            Self::CrmRejected { .. } => (StatusCode::UNPROCESSABLE_ENTITY, "CRM_REJECTED", "Rejected by the CRM"),
            Self::CrmError => (StatusCode::BAD_GATEWAY, "CRM_ERROR", "CRM configuration error"),
            Self::OutcomeUnknown => (StatusCode::GATEWAY_TIMEOUT, "CRM_OUTCOME_UNKNOWN", "CRM outcome unknown"),
            Self::Internal => (StatusCode::INTERNAL_SERVER_ERROR, "INTERNAL", "Internal error"),
            Self::RateLimited { .. } => (StatusCode::TOO_MANY_REQUESTS, "RATE_LIMITED", "Rate limited"),
            Self::Overloaded => (StatusCode::SERVICE_UNAVAILABLE, "OVERLOADED", "Overloaded"),
        }
    }

    fn detail(&self) -> String {
        match self {
            Self::Malformed(why) => format!("The request body is not valid JSON: {why}"),
            Self::BadPath(why) => format!("The request path cannot be read: {why}"),
            Self::Timeout => "The request did not complete in time; it may or may not have taken effect. \
                Retry with the same Idempotency-Key."
                .into(),
            Self::UnsupportedMediaType => "The request body must be sent as Content-Type: application/json.".into(),
            Self::PayloadTooLarge => "The request body is larger than 64 KiB.".into(),
            Self::Validation(errors) => {
                format!("{} field(s) break the contract; see errors.", errors.len())
            }
            Self::NotFound(what) => format!("No {what} has that id."),
            Self::Unauthenticated => "Send the channel's API key as Authorization: Bearer <key>.".into(),
            Self::Forbidden => "This API key belongs to another channel than the request's channel.".into(),
            Self::WrongRole => "This API key's role does not allow this path: the reports need a reporting key, \
                everything else a channel's key."
                .into(),
            Self::NoRoute => "There is nothing at this path; the API is described at /docs.".into(),
            Self::MethodNotAllowed => "This path does not accept that method.".into(),
            Self::InvalidTransition(why) => why.clone(),
            Self::IdempotencyKeyInUse => {
                "A request with this Idempotency-Key is still being processed; retry shortly.".into()
            }
            Self::IdempotencyKeyReused => {
                "This Idempotency-Key was already used for a different request (method, path or body).".into()
            }
            Self::Unavailable { .. } => "The CRM backend is unavailable; nothing was changed. Retry later.".into(),
            Self::CrmRejected { code, message, .. } => {
                format!("The CRM refused the request's data ({code}): {message}. Nothing was changed.")
            }
            Self::CrmError => "The CRM refused the request because of this service's configuration; nothing was \
                changed. The details are in the service's log under this request id."
                .into(),
            Self::OutcomeUnknown => "The CRM did not confirm the change in time; it may or may not have taken \
                effect. Retry with the same Idempotency-Key."
                .into(),
            Self::RateLimited { .. } => {
                "This channel is over its request rate; retry after Retry-After seconds.".into()
            }
            Self::Overloaded => {
                "The service is at its limit of requests in flight; nothing was done. Retry shortly.".into()
            }
            Self::Internal => "An internal error occurred; it has been logged under this request id.".into(),
        }
    }

    /// A single-field validation error.
    pub fn field(field: &str, message: &str) -> Self {
        Self::Validation(vec![FieldError::new(field, message)])
    }

    /// Store errors, with the record type for the 404's wording.
    pub fn from_store(e: StoreError, what: &'static str) -> Self {
        match e {
            StoreError::NotFound => Self::NotFound(what),
            StoreError::InvalidTransition { current } => {
                Self::InvalidTransition(format!("The {what} is {} and can no longer change.", current.as_str()))
            }
            StoreError::UnknownOwner => Self::field("ownerId", "is not a relationship manager the CRM knows"),
            StoreError::Unavailable { retry_after, source } => {
                tracing::warn!(error = %error_chain(&*source), "store unavailable");
                Self::Unavailable { retry_after }
            }
            StoreError::Rejected { code, field, message } => {
                tracing::info!(crm_code = %code, "the CRM rejected the request's data");
                Self::CrmRejected { code, field, message }
            }
            StoreError::Misconfigured(source) => {
                tracing::error!(error = %error_chain(&*source), "the CRM refused the service's configuration");
                Self::CrmError
            }
            StoreError::OutcomeUnknown(source) => {
                tracing::error!(error = %error_chain(&*source), "outcome of a CRM write unknown");
                Self::OutcomeUnknown
            }
            StoreError::Internal(source) => {
                // Display only: a database error's Debug can carry row values (personal data).
                tracing::error!(error = %error_chain(&*source), "store failure");
                Self::Internal
            }
        }
    }
}

/// An error and its causes, each by its `Display`, joined with `: `.
fn error_chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, code, title) = self.parts();
        let problem = Problem {
            kind: format!("urn:integration-service:problem:{}", code.to_ascii_lowercase().replace('_', "-")),
            title: title.into(),
            status: status.as_u16(),
            detail: self.detail(),
            code: code.into(),
            errors: match &self {
                Self::Validation(errors) => errors.clone(),
                Self::CrmRejected { code, field, .. } => {
                    vec![FieldError::new(field.clone().unwrap_or_else(|| "crm".into()), code.clone())]
                }
                _ => Vec::new(),
            },
            request_id: crate::telemetry::request::current_id().unwrap_or_default(),
        };
        let body = serde_json::to_vec(&problem).unwrap_or_default();
        let mut response = (status, body).into_response();
        let headers = response.headers_mut();
        headers.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/problem+json"));
        match self {
            Self::Unavailable { retry_after } | Self::RateLimited { retry_after } => {
                let secs = retry_after.as_secs() + u64::from(retry_after.subsec_nanos() > 0);
                headers.insert(header::RETRY_AFTER, HeaderValue::from(secs.max(1)));
            }
            Self::Overloaded => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            Self::IdempotencyKeyInUse => {
                headers.insert(header::RETRY_AFTER, HeaderValue::from(1u64));
            }
            Self::Unauthenticated => {
                headers.insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
            }
            _ => {}
        }
        response
    }
}
