//! How a call to the org can fail, and what each failure means for the port.
//!
//! The classification is the heart of "never answer 'nothing changed' when something may have": a write
//! whose request may have reached the org ([`SfError::may_have_applied`]) is read back before answering.

use std::time::Duration;

use serde::Deserialize;
use store::StoreError;

/// One entry of Salesforce's error array: `[{"message", "errorCode", "fields"}]`. Inside sObject
/// Collections the code is under `statusCode`, so both are read.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct OrgError {
    #[serde(default)]
    pub message: String,
    #[serde(rename = "errorCode", alias = "statusCode", default)]
    pub code: String,
    #[serde(default)]
    pub fields: Vec<String>,
}

#[derive(Debug, Clone, thiserror::Error)]
pub enum SfError {
    /// The request could not be sent (`sent: false`: nothing reached the org) or its answer was lost
    /// (`sent: true`: a timeout or a reset after sending).
    #[error("salesforce transport error (request sent: {sent}): {detail}")]
    Transport { sent: bool, detail: String },
    /// A 5xx from the org.
    #[error("salesforce answered HTTP {status}")]
    Server { status: u16, retry_after: Duration },
    /// The daily API allowance is spent (403 `REQUEST_LIMIT_EXCEEDED`, TotalRequests).
    #[error("salesforce API request limit exceeded")]
    Limit { retry_after: Duration },
    /// The org refused the request with its own error codes.
    #[error("salesforce refused the request: {}", describe(.errors))]
    Api { status: u16, errors: Vec<OrgError> },
    /// Something in this service's configuration the org refuses (credentials, mapping).
    #[error("salesforce configuration: {0}")]
    Config(String),
    /// An answer this client does not understand.
    #[error("unexpected answer from salesforce (HTTP {status}): {detail}")]
    Unexpected { status: u16, detail: String },
    /// The circuit breaker is open after repeated failures; no call was made.
    #[error("salesforce circuit breaker open")]
    Open { retry_after: Duration },
}

/// The codes and messages, for logs. Messages come from the org and may quote values the request sent, so
/// only the codes and field names are logged.
fn describe(errors: &[OrgError]) -> String {
    errors.iter().map(|e| format!("{} {:?}", e.code, e.fields)).collect::<Vec<_>>().join(", ")
}

/// A reqwest error without its URL: a query's URL carries SOQL with the customer's id number.
pub(crate) fn without_url(e: &reqwest::Error) -> String {
    let mut text = String::new();
    let mut source: Option<&(dyn std::error::Error + 'static)> = Some(e);
    // The top-level Display names the URL; its causes do not.
    let kind = if e.is_timeout() {
        "timed out"
    } else if e.is_connect() {
        "cannot connect"
    } else if e.is_body() || e.is_decode() {
        "broken body"
    } else {
        "request failed"
    };
    text.push_str(kind);
    while let Some(s) = source.and_then(|s| s.source()) {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = Some(s);
    }
    text
}

/// Codes that mean "the data of this request", not our configuration: the channel gets 422 `CRM_REJECTED`.
const DATA_CODES: &[&str] = &[
    "FIELD_CUSTOM_VALIDATION_EXCEPTION",
    "DUPLICATES_DETECTED",
    "DUPLICATE_VALUE",
    "INVALID_EMAIL_ADDRESS",
    "STRING_TOO_LONG",
    "FIELD_INTEGRITY_EXCEPTION",
    "FIELD_FILTER_VALIDATION_EXCEPTION",
    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
    "CANNOT_UPDATE_CONVERTED_LEAD",
    "CANNOT_EXECUTE_FLOW_TRIGGER",
];

impl SfError {
    /// Whether the org may have applied a write that failed this way: the request was (or may have been)
    /// delivered and no answer says it was refused.
    pub fn may_have_applied(&self) -> bool {
        matches!(self, Self::Transport { sent: true, .. } | Self::Server { .. } | Self::Unexpected { .. })
    }

    /// Whether the org was done with a request that failed this way, so that a read-back showing no change
    /// proves that nothing changed. After a timeout or a reset it may still be working on it (a transaction
    /// runs on when its client leaves), and a gateway's 502 or 504 says the same of the org behind it.
    pub fn org_is_done(&self) -> bool {
        match self {
            Self::Server { status, .. } => !matches!(status, 502 | 504),
            Self::Transport { sent, .. } => !sent,
            _ => false,
        }
    }

    /// The org's first meaningful error: a rolled-back composite answers `PROCESSING_HALTED` for every
    /// subrequest but the one that failed.
    pub fn org_error(&self) -> Option<&OrgError> {
        match self {
            Self::Api { errors, .. } => errors.iter().find(|e| e.code != "PROCESSING_HALTED").or(errors.first()),
            _ => None,
        }
    }

    /// The port's view. `data_fields` are the org fields whose values come from the request (a restricted
    /// picklist refusing one of them is the request's fault; refusing a status is ours); `to_request_field`
    /// names the request field an org field carries.
    pub fn into_store(self, to_request_field: impl Fn(&str) -> Option<&'static str>) -> StoreError {
        match self {
            Self::Transport { sent: false, .. } => StoreError::unavailable(self),
            Self::Transport { sent: true, .. } => StoreError::unavailable(self),
            Self::Server { retry_after, .. } | Self::Limit { retry_after } | Self::Open { retry_after } => {
                StoreError::Unavailable { retry_after, source: Box::new(self) }
            }
            Self::Config(_) | Self::Unexpected { .. } => StoreError::Misconfigured(Box::new(self)),
            Self::Api { .. } => {
                let Some(e) = self.org_error().cloned() else {
                    return StoreError::Misconfigured(Box::new(self));
                };
                match e.code.as_str() {
                    "INACTIVE_OWNER_OR_USER" => StoreError::UnknownOwner,
                    "NOT_FOUND" | "ENTITY_IS_DELETED" | "INVALID_ID_FIELD" | "MALFORMED_ID" => StoreError::NotFound,
                    // A row lock held too long, or a concurrency limit (the daily one is `Limit`): the org
                    // refused before any change, and the retries ran out.
                    "UNABLE_TO_LOCK_ROW" | "REQUEST_LIMIT_EXCEEDED" => {
                        StoreError::Unavailable { retry_after: Duration::from_secs(2), source: Box::new(self) }
                    }
                    code if DATA_CODES.contains(&code) => {
                        let field = e.fields.iter().find_map(|f| to_request_field(f)).map(str::to_owned);
                        // A restricted picklist refusing a value we chose (a status) is our configuration.
                        if code == "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST" && field.is_none() {
                            return StoreError::Misconfigured(Box::new(self));
                        }
                        StoreError::Rejected { code: e.code, field, message: e.message }
                    }
                    _ => StoreError::Misconfigured(Box::new(self)),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn api(code: &str, fields: &[&str]) -> SfError {
        let halted = OrgError { message: "rolled back".into(), code: "PROCESSING_HALTED".into(), fields: vec![] };
        let error = OrgError {
            message: "the org's words".into(),
            code: code.into(),
            fields: fields.iter().map(|f| (*f).to_owned()).collect(),
        };
        SfError::Api { status: 400, errors: vec![halted, error] }
    }

    fn request_field(org_field: &str) -> Option<&'static str> {
        (org_field == "Product__c").then_some("product")
    }

    #[test]
    fn each_org_code_maps_to_what_it_means_for_the_channel() {
        let kind = |e: SfError| match e.into_store(request_field) {
            StoreError::UnknownOwner => "owner".to_owned(),
            StoreError::NotFound => "not found".to_owned(),
            StoreError::Unavailable { .. } => "unavailable".to_owned(),
            StoreError::Rejected { code, field, .. } => format!("rejected {code} {field:?}"),
            StoreError::Misconfigured(_) => "misconfigured".to_owned(),
            other => format!("{other:?}"),
        };
        assert_eq!(kind(api("INACTIVE_OWNER_OR_USER", &[])), "owner");
        for code in ["NOT_FOUND", "ENTITY_IS_DELETED", "INVALID_ID_FIELD", "MALFORMED_ID"] {
            assert_eq!(kind(api(code, &[])), "not found", "{code}");
        }
        assert_eq!(kind(api("UNABLE_TO_LOCK_ROW", &[])), "unavailable");
        assert_eq!(kind(api("REQUEST_LIMIT_EXCEEDED", &[])), "unavailable", "ConcurrentPerOrgLongTxn, retries spent");
        assert_eq!(
            kind(api("FIELD_CUSTOM_VALIDATION_EXCEPTION", &[])),
            "rejected FIELD_CUSTOM_VALIDATION_EXCEPTION None"
        );
        assert_eq!(kind(api("DUPLICATES_DETECTED", &[])), "rejected DUPLICATES_DETECTED None");
        assert_eq!(
            kind(api("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", &["Product__c"])),
            "rejected INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST Some(\"product\")",
            "a request field's picklist value is the request's fault"
        );
        assert_eq!(
            kind(api("INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST", &["Status"])),
            "misconfigured",
            "a status the org lacks is ours"
        );
        for code in [
            "INVALID_FIELD",
            "INVALID_FIELD_FOR_INSERT_UPDATE",
            "INSUFFICIENT_ACCESS_OR_READONLY",
            "REQUIRED_FIELD_MISSING",
        ] {
            assert_eq!(kind(api(code, &[])), "misconfigured", "{code}");
        }
        assert_eq!(kind(SfError::Config("x".into())), "misconfigured");
        assert_eq!(kind(SfError::Limit { retry_after: std::time::Duration::from_secs(300) }), "unavailable");
        assert_eq!(kind(SfError::Transport { sent: false, detail: String::new() }), "unavailable");
    }

    #[test]
    fn only_a_delivered_write_without_a_refusal_may_have_applied() {
        assert!(SfError::Transport { sent: true, detail: String::new() }.may_have_applied());
        assert!(SfError::Server { status: 503, retry_after: std::time::Duration::ZERO }.may_have_applied());
        assert!(!SfError::Transport { sent: false, detail: String::new() }.may_have_applied());
        assert!(!api("FIELD_CUSTOM_VALIDATION_EXCEPTION", &[]).may_have_applied());
        assert!(!SfError::Limit { retry_after: std::time::Duration::ZERO }.may_have_applied());
    }

    #[test]
    fn only_an_answer_of_the_org_itself_says_it_is_done() {
        let server = |status| SfError::Server { status, retry_after: std::time::Duration::ZERO };
        assert!(server(503).org_is_done() && server(500).org_is_done());
        assert!(!server(502).org_is_done() && !server(504).org_is_done(), "a gateway gave up, not the org");
        assert!(!SfError::Transport { sent: true, detail: String::new() }.org_is_done());
        assert!(!SfError::Unexpected { status: 200, detail: String::new() }.org_is_done());
    }

    #[test]
    fn logged_errors_name_codes_not_the_org_s_words() {
        let text = api("DUPLICATES_DETECTED", &["Email"]).to_string();
        assert!(text.contains("DUPLICATES_DETECTED") && text.contains("Email"), "{text}");
        assert!(!text.contains("the org's words"), "{text}");
    }

    #[tokio::test]
    async fn transport_errors_lose_the_url_and_its_query() {
        // Port 1 on loopback refuses: a connect error whose Display names the URL, SOQL and all.
        let e =
            reqwest::get("http://127.0.0.1:1/services/data/v62.0/query?q=SELECT+Id+WHERE+IdNumber__c='079123456789'")
                .await
                .unwrap_err();
        assert!(e.to_string().contains("079123456789"), "reqwest names the URL: {e}");
        let text = without_url(&e);
        assert!(text.starts_with("cannot connect"), "{text}");
        assert!(!text.contains("079123456789") && !text.contains("query"), "{text}");
    }
}
