//! Salesforce's error shapes and the injectable faults: the REST error body
//! `[{"message","errorCode","fields"}]`, the canned answers of [`Fault`], and the HTML page a 503
//! sometimes carries instead of JSON.

use serde_json::{json, Value};
use std::time::Duration;

/// A failure the fake org imposes on the next API calls (see [`crate::FakeOrg::fail_next`]).
/// Token requests never consume a fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Fault {
    /// 401 `[{"message":"Session expired or invalid","errorCode":"INVALID_SESSION_ID"}]`, and every
    /// issued token really stops working (a new token must be requested).
    SessionExpired,
    /// 503 with an HTML (non-JSON) body; nothing is applied.
    ServerUnavailable,
    /// 403 `[{"message":"TotalRequests Limit exceeded.","errorCode":"REQUEST_LIMIT_EXCEEDED"}]`;
    /// nothing is applied.
    RequestLimitExceeded,
    /// In a composite request the first write subrequest fails `UNABLE_TO_LOCK_ROW` (with the
    /// usual allOrNone rollback); a plain write answers 400 with that error; a SOAP convertLead
    /// fails each conversion with it. Reads are served normally.
    UnableToLockRow,
    /// Sleep, then process the call normally.
    DelayBefore(Duration),
    /// Process and commit the call, then sleep before answering (a client with a shorter timeout
    /// gives up although the write happened).
    DelayAfter(Duration),
}

/// One Salesforce REST error: an HTTP status and the body element
/// `{"message","errorCode","fields"}` (plus `duplicateResult` for `DUPLICATES_DETECTED`).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct SfError {
    pub status: u16,
    pub code: String,
    pub message: String,
    pub fields: Option<Vec<String>>,
    pub duplicate_result: Option<Value>,
}

impl SfError {
    /// An error without a `fields` member.
    pub fn new(status: u16, code: &str, message: impl Into<String>) -> Self {
        SfError { status, code: code.to_string(), message: message.into(), fields: None, duplicate_result: None }
    }

    /// A 400 error on record fields (`fields` is always present, maybe empty).
    pub fn on_fields(code: &str, message: impl Into<String>, fields: &[&str]) -> Self {
        SfError {
            status: 400,
            code: code.to_string(),
            message: message.into(),
            fields: Some(fields.iter().map(|f| f.to_string()).collect()),
            duplicate_result: None,
        }
    }

    /// The element of the REST error array.
    pub fn element(&self) -> Value {
        let mut obj = serde_json::Map::new();
        if let Some(dup) = &self.duplicate_result {
            obj.insert("duplicateResult".into(), dup.clone());
        }
        obj.insert("errorCode".into(), json!(self.code));
        obj.insert("message".into(), json!(self.message));
        if let Some(fields) = &self.fields {
            obj.insert("fields".into(), json!(fields));
        }
        Value::Object(obj)
    }

    /// The REST error body: a one-element array.
    pub fn body(&self) -> Value {
        Value::Array(vec![self.element()])
    }
}

/// 401 `INVALID_SESSION_ID`.
pub(crate) fn invalid_session() -> SfError {
    SfError::new(401, "INVALID_SESSION_ID", "Session expired or invalid")
}

/// 403 `REQUEST_LIMIT_EXCEEDED` (the daily limit flavour).
pub(crate) fn request_limit_exceeded() -> SfError {
    SfError::new(403, "REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded.")
}

/// 400 `UNABLE_TO_LOCK_ROW`.
pub(crate) fn unable_to_lock_row() -> SfError {
    SfError::on_fields("UNABLE_TO_LOCK_ROW", "unable to obtain exclusive access to this record", &[])
}

/// 404 `NOT_FOUND` for an unknown resource or record.
pub(crate) fn not_found() -> SfError {
    SfError::new(404, "NOT_FOUND", "The requested resource does not exist")
}

/// 400 `JSON_PARSER_ERROR`.
pub(crate) fn json_parser_error(detail: impl Into<String>) -> SfError {
    SfError::new(400, "JSON_PARSER_ERROR", detail)
}

/// The page a 503 carries: HTML, not JSON, as Salesforce's maintenance pages do.
pub(crate) const SERVER_UNAVAILABLE_HTML: &str =
    "<!DOCTYPE html>\n<html><head><title>Service Unavailable</title></head>\
<body><h1>Service Unavailable</h1><p>The server is temporarily unable to service your request due to maintenance \
downtime or capacity problems. Please try again later.</p></body></html>\n";
