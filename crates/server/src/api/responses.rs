//! The error answers of the operations, one declaration per group, for the OpenAPI document. Each is an
//! RFC 9457 problem document (see [`Problem`]). An operation lists the groups that apply to it; where two
//! groups declare the same status, the later one, more specific, is the one the document keeps.
//!
//! The answers that depend on the configuration (401 and 403 with API keys, 429 with a rate limit) are not
//! here: [`super::openapi`] adds them when the service runs that way.

#![allow(dead_code)]

use utoipa::IntoResponses;

use super::error::Problem;

/// What any operation with a JSON body may answer besides success.
#[derive(IntoResponses)]
pub enum BodyErrors {
    #[response(
        status = 400,
        description = "MALFORMED_REQUEST: the body is not JSON",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 408,
        description = "REQUEST_TIMEOUT: the request took longer than the configured limit",
        content_type = "application/problem+json"
    )]
    Timeout(Problem),
    #[response(
        status = 409,
        description = "IDEMPOTENCY_KEY_IN_USE: the same key is still being processed",
        content_type = "application/problem+json"
    )]
    KeyInUse(Problem),
    #[response(
        status = 413,
        description = "PAYLOAD_TOO_LARGE: the body is over 64 KiB",
        content_type = "application/problem+json"
    )]
    TooLarge(Problem),
    #[response(
        status = 415,
        description = "UNSUPPORTED_MEDIA_TYPE: not application/json",
        content_type = "application/problem+json"
    )]
    MediaType(Problem),
    #[response(
        status = 422,
        description = "VALIDATION_FAILED (`errors` names every offending field), IDEMPOTENCY_KEY_REUSED (the same key with another request), or for a write CRM_REJECTED (the CRM refused the data; `errors` names its code)",
        content_type = "application/problem+json"
    )]
    Invalid(Problem),
    #[response(status = 503, description = "BACKEND_UNAVAILABLE or OVERLOADED: nothing changed; retry later", content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds to wait before retrying")))]
    Unavailable(Problem),
    #[response(
        status = 500,
        description = "INTERNAL: a bug; details only in the log",
        content_type = "application/problem+json"
    )]
    Internal(Problem),
}

/// What a write may answer when the CRM is Salesforce.
#[derive(IntoResponses)]
pub enum CrmErrors {
    #[response(
        status = 502,
        description = "CRM_ERROR: the CRM refused because of this service's configuration; nothing changed",
        content_type = "application/problem+json"
    )]
    Misconfigured(Problem),
    #[response(
        status = 504,
        description = "CRM_OUTCOME_UNKNOWN: the CRM did not confirm a write and reading back could not tell; retry with the same Idempotency-Key",
        content_type = "application/problem+json"
    )]
    OutcomeUnknown(Problem),
}

/// What a status change of a named record may answer besides [`BodyErrors`] (listed after it).
#[derive(IntoResponses)]
pub enum TransitionErrors {
    #[response(
        status = 404,
        description = "NOT_FOUND: no record of that type has that id",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 409,
        description = "INVALID_TRANSITION: the record's status forbids the change (Close Won and Close Lost are final); or IDEMPOTENCY_KEY_IN_USE",
        content_type = "application/problem+json"
    )]
    Conflict(Problem),
}

/// What reading a record by id may answer besides success.
#[derive(IntoResponses)]
pub enum ReadErrors {
    #[response(
        status = 400,
        description = "MALFORMED_REQUEST: the path cannot be read",
        content_type = "application/problem+json"
    )]
    Malformed(Problem),
    #[response(
        status = 404,
        description = "NOT_FOUND: no record of that type has that id",
        content_type = "application/problem+json"
    )]
    NotFound(Problem),
    #[response(
        status = 408,
        description = "REQUEST_TIMEOUT: the request took longer than the configured limit",
        content_type = "application/problem+json"
    )]
    Timeout(Problem),
    #[response(status = 503, description = "BACKEND_UNAVAILABLE or OVERLOADED; retry later", content_type = "application/problem+json", headers(("Retry-After" = u32, description = "Seconds to wait before retrying")))]
    Unavailable(Problem),
    #[response(
        status = 500,
        description = "INTERNAL: a bug; details only in the log",
        content_type = "application/problem+json"
    )]
    Internal(Problem),
}
