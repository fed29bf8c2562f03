//! A local HTTP server that behaves like a Salesforce org *as Salesforce documents it*, for the
//! tests of the Salesforce adapter and of the HTTP service: OAuth token flows (client credentials,
//! JWT bearer), the REST data API (query, describe, sObject rows, composite) and the SOAP
//! `convertLead` call, with Salesforce's validation rules and error shapes, plus test controls
//! (fault injection, call log, sessions, API usage, validation and duplicate rules).
//!
//! ```no_run
//! # async fn demo() {
//! use salesforce_fake::{FakeOrg, OrgConfig};
//! let org = FakeOrg::start(OrgConfig::default()).await;
//! let rm = org.add_user("RM001", true);
//! let lead = org.insert("Lead", serde_json::json!({"LastName": "Nguyen", "Company": "Nguyen", "OwnerId": rm}));
//! assert!(org.record("Lead", &lead).is_some());
//! # }
//! ```
//!
//! This file owns the public API and the HTTP edge (routing every request to auth, REST,
//! composite or SOAP, call logging, faults, the `Sforce-Limit-Info` header).

mod auth;
mod composite;
mod dml;
mod faults;
mod ids;
mod rest;
pub mod schema;
mod soap;
mod soql;
mod state;

pub use faults::Fault;
pub use schema::{FieldDef, FieldType, LeadStatusDef, ObjectSchema, OpportunityStageDef, PicklistValue, Schema};
pub use state::{Call, CallKind};

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::Response;
use serde_json::Value;
use state::{Data, Record, State, ValidationRule};
use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex, MutexGuard};

/// The largest request body accepted (Salesforce's REST limit is far above anything tests send).
const MAX_BODY: usize = 16 * 1024 * 1024;

/// How the fake org is set up. `OrgConfig::default()` is the standard org.
#[derive(Clone, Debug)]
pub struct OrgConfig {
    /// The External Client App's consumer key (default `test-client-id`).
    pub client_id: String,
    /// Its consumer secret (default `test-client-secret`).
    pub client_secret: String,
    /// PEM of the RSA public key that verifies JWT bearer assertions; `None` disables that flow.
    pub jwt_public_key_pem: Option<String>,
    /// The username JWT assertions must name in `sub`, also the integration user's Username
    /// (default `integration@bank.example`).
    pub jwt_username: String,
    /// The API version the org advertises (default `62.0`); any `vNN.N` path is served.
    pub api_version: String,
    /// The org's metadata.
    pub schema: Schema,
}

impl Default for OrgConfig {
    fn default() -> Self {
        OrgConfig {
            client_id: "test-client-id".into(),
            client_secret: "test-client-secret".into(),
            jwt_public_key_pem: None,
            jwt_username: "integration@bank.example".into(),
            api_version: "62.0".into(),
            schema: Schema::standard(),
        }
    }
}

/// A running fake org. Cheap to clone; every clone controls the same org. The server task lives
/// as long as the tokio runtime that started it.
#[derive(Clone)]
pub struct FakeOrg {
    inner: Arc<Mutex<State>>,
    url: String,
}

impl std::fmt::Debug for FakeOrg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FakeOrg").field("url", &self.url).finish()
    }
}

fn lock(inner: &Mutex<State>) -> MutexGuard<'_, State> {
    inner.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

impl FakeOrg {
    /// Binds `127.0.0.1:0` and serves the org in a tokio task.
    ///
    /// # Panics
    /// When no local port can be bound (the test cannot run at all then).
    pub async fn start(config: OrgConfig) -> FakeOrg {
        let listener =
            tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0 for the fake Salesforce org");
        let addr = listener.local_addr().expect("local address of the fake Salesforce org");
        let url = format!("http://{addr}");
        let jwt_key = config
            .jwt_public_key_pem
            .as_deref()
            .and_then(|pem| jsonwebtoken::DecodingKey::from_rsa_pem(pem.as_bytes()).ok());
        let mut state = State {
            client_id: config.client_id,
            client_secret: config.client_secret,
            jwt_key,
            jwt_username: config.jwt_username,
            api_version: config.api_version,
            url: url.clone(),
            org_id: ids::make_id("00D", 1),
            integration_user_id: String::new(),
            schema: config.schema,
            data: Data::default(),
            sessions: HashSet::new(),
            calls: Vec::new(),
            token_requests: 0,
            faults: VecDeque::new(),
            api_used: 0,
            api_max: 100_000,
            validation_rules: Vec::new(),
            duplicate_rules: Vec::new(),
        };
        state.seed();
        let inner = Arc::new(Mutex::new(state));
        let shared = inner.clone();
        let app = axum::Router::new().fallback(move |req: Request| {
            let shared = shared.clone();
            async move { serve(shared, req).await }
        });
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        FakeOrg { inner, url }
    }

    /// `http://127.0.0.1:PORT`: the instance URL (My Domain) and the token endpoint's host.
    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// The id of the integration user (the token's user and default owner).
    pub fn integration_user_id(&self) -> String {
        lock(&self.inner).integration_user_id.clone()
    }

    /// Adds a User whose FederationIdentifier is `rm_code`; returns its Id.
    pub fn add_user(&self, rm_code: &str, active: bool) -> String {
        let mut st = lock(&self.inner);
        let mut r = Record::new();
        r.insert("Username".into(), Value::String(format!("{}@bank.example", rm_code.to_lowercase())));
        r.insert("FederationIdentifier".into(), Value::String(rm_code.into()));
        r.insert("IsActive".into(), Value::Bool(active));
        r.insert("Name".into(), Value::String(format!("RM {rm_code}")));
        st.store_new("User", r, None)
    }

    /// A record "made by hand" in the org by an RM: no API call is counted and no validation runs;
    /// field names are matched case-insensitively to the schema, defaults (Status, OwnerId,
    /// booleans) and derived fields (IsClosed, IsWon, timestamps) are filled. Returns its Id.
    pub fn insert(&self, sobject: &str, fields: Value) -> String {
        let mut st = lock(&self.inner);
        let schema = st.schema.object(sobject).cloned();
        let mut r = Record::new();
        if let Value::Object(map) = fields {
            for (k, v) in map {
                let name = schema.as_ref().and_then(|s| s.field(&k)).map(|f| f.name.clone()).unwrap_or(k);
                r.insert(name, v);
            }
        }
        let actor = r.get("OwnerId").and_then(Value::as_str).map(str::to_string);
        st.store_new(sobject, r, actor)
    }

    /// Every field of a record (derived ones included), or `None`.
    pub fn record(&self, sobject: &str, id: &str) -> Option<Value> {
        let st = lock(&self.inner);
        let id = ids::normalize(id)?;
        st.get(sobject, &id).cloned().map(Value::Object)
    }

    /// Every record of an object, in creation order.
    pub fn records(&self, sobject: &str) -> Vec<Value> {
        let st = lock(&self.inner);
        let name = st.object_name(sobject);
        st.data.records.get(&name).map(|m| m.values().cloned().map(Value::Object).collect()).unwrap_or_default()
    }

    /// Every API call received (token requests excluded), in order.
    pub fn calls(&self) -> Vec<Call> {
        lock(&self.inner).calls.clone()
    }

    /// Forgets the calls received so far.
    pub fn clear_calls(&self) {
        lock(&self.inner).calls.clear();
    }

    /// Every issued token becomes invalid (the next API call answers `INVALID_SESSION_ID`).
    pub fn expire_sessions(&self) {
        lock(&self.inner).sessions.clear();
    }

    /// How many token requests arrived (successful or not).
    pub fn token_requests(&self) -> usize {
        lock(&self.inner).token_requests
    }

    /// The next `times` API calls (token requests never) get `fault`; queued after any fault
    /// already pending.
    pub fn fail_next(&self, fault: Fault, times: usize) {
        let mut st = lock(&self.inner);
        st.faults.extend(std::iter::repeat_n(fault, times));
    }

    /// A validation rule: an API insert or update that leaves `sobject.field` equal to `value`
    /// fails `FIELD_CUSTOM_VALIDATION_EXCEPTION` with `message` (lead conversion included).
    pub fn validation_rule(&self, sobject: &str, field: &str, value: &str, message: &str) {
        lock(&self.inner).validation_rules.push(ValidationRule {
            object: sobject.into(),
            field: field.into(),
            value: value.into(),
            message: message.into(),
        });
    }

    /// A blocking duplicate rule: an API insert whose `field` equals an existing record's answers
    /// `DUPLICATES_DETECTED` with a `duplicateResult` naming the existing records.
    pub fn duplicate_rule(&self, sobject: &str, field: &str) {
        let mut st = lock(&self.inner);
        let obj = st.object_name(sobject);
        let field =
            st.schema.object(&obj).and_then(|o| o.field(field)).map(|f| f.name.clone()).unwrap_or_else(|| field.into());
        st.duplicate_rules.push((obj, field));
    }

    /// Sets the daily API usage reported in `Sforce-Limit-Info` (`api-usage=USED/MAX`).
    pub fn set_api_usage(&self, used: u64, max: u64) {
        let mut st = lock(&self.inner);
        st.api_used = used;
        st.api_max = max;
    }

    /// The API usage counter (calls served so far plus whatever `set_api_usage` set).
    pub fn api_usage(&self) -> (u64, u64) {
        let st = lock(&self.inner);
        (st.api_used, st.api_max)
    }
}

fn header<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers.get(name).and_then(|v| v.to_str().ok())
}

fn response(
    status: u16,
    content_type: &str,
    body: String,
    limit_info: Option<String>,
    extra: &[(String, String)],
) -> Response {
    let mut res = Response::new(Body::from(body));
    *res.status_mut() = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let h = res.headers_mut();
    if !content_type.is_empty() {
        h.insert("content-type", HeaderValue::from_str(content_type).unwrap_or(HeaderValue::from_static("text/plain")));
    }
    if let Some(info) = limit_info.and_then(|i| HeaderValue::from_str(&i).ok()) {
        h.insert("sforce-limit-info", info);
    }
    for (k, v) in extra {
        if let (Ok(k), Ok(v)) = (axum::http::HeaderName::from_bytes(k.as_bytes()), HeaderValue::from_str(v)) {
            h.insert(k, v);
        }
    }
    res
}

const JSON: &str = "application/json;charset=UTF-8";
const XML: &str = "text/xml;charset=UTF-8";

fn json_response(r: &rest::ApiResponse, limit_info: String) -> Response {
    let body = r.body.as_ref().map(|b| b.to_string()).unwrap_or_default();
    let ct = if r.body.is_some() { JSON } else { "" };
    let mut extra = r.headers.clone();
    if r.status == 401 {
        extra.push(("WWW-Authenticate".into(), "Token".into()));
    }
    response(r.status, ct, body, Some(limit_info), &extra)
}

async fn serve(inner: Arc<Mutex<State>>, req: Request) -> Response {
    let (parts, body) = req.into_parts();
    let bytes = to_bytes(body, MAX_BODY).await.unwrap_or_default();
    let method = parts.method.as_str().to_string();
    let target =
        parts.uri.path_and_query().map(|p| p.as_str().to_string()).unwrap_or_else(|| parts.uri.path().to_string());
    let path = parts.uri.path().to_string();
    let authorization = header(&parts.headers, "authorization").map(str::to_string);

    if path == "/services/oauth2/token" {
        let mut st = lock(&inner);
        if method != "POST" {
            st.token_requests += 1;
            return response(
                400,
                JSON,
                serde_json::json!({"error":"invalid_request","error_description":"must use HTTP POST"}).to_string(),
                None,
                &[],
            );
        }
        let (status, body) = auth::token(&mut st, &bytes, authorization.as_deref());
        return response(status, JSON, body.to_string(), None, &[]);
    }

    let kind = rest::classify(&method, &target);
    let parsed_body: Option<Value> = serde_json::from_slice(&bytes).ok();
    let composite_parse = (kind == CallKind::Composite).then(|| composite::parse(&bytes));
    let soap_action = header(&parts.headers, "soapaction").map(str::to_string);
    let fault = {
        let mut st = lock(&inner);
        st.calls.push(Call {
            kind,
            method: method.clone(),
            path: target.clone(),
            body: parsed_body.clone(),
            raw_body: String::from_utf8_lossy(&bytes).into_owned(),
            subrequests: match &composite_parse {
                Some(Ok((_, subs))) => subs.iter().map(|s| (s.method.clone(), s.url.clone())).collect(),
                _ => Vec::new(),
            },
            soap_action,
        });
        st.take_fault()
    };
    if let Some(Fault::DelayBefore(d)) = fault {
        ::tokio::time::sleep(d).await;
    }
    let is_soap = kind == CallKind::Soap;
    let answer = {
        let mut st = lock(&inner);
        match fault {
            Some(Fault::ServerUnavailable) => {
                let info = st.limit_info();
                return response(
                    503,
                    "text/html;charset=UTF-8",
                    faults::SERVER_UNAVAILABLE_HTML.into(),
                    Some(info),
                    &[],
                );
            }
            Some(Fault::RequestLimitExceeded) => {
                let info = st.limit_info();
                if is_soap {
                    return response(
                        500,
                        XML,
                        soap::fault("sf:REQUEST_LIMIT_EXCEEDED", "TotalRequests Limit exceeded."),
                        Some(info),
                        &[],
                    );
                }
                return json_response(&faults::request_limit_exceeded().into(), info);
            }
            Some(Fault::SessionExpired) => st.sessions.clear(),
            _ => {}
        }
        let lock_fault = fault == Some(Fault::UnableToLockRow);
        if is_soap {
            serve_soap(&mut st, &path, &bytes, lock_fault)
        } else {
            let authorized = auth::bearer(authorization.as_deref()).is_some_and(|t| st.sessions.contains(t));
            let r = if !authorized {
                faults::invalid_session().into()
            } else {
                st.api_used += 1;
                match (kind, composite_parse) {
                    (CallKind::Composite, Some(Ok((all_or_none, subs)))) => {
                        composite::run(&mut st, all_or_none, &subs, lock_fault)
                    }
                    (CallKind::Composite, Some(Err(e))) => e.into(),
                    _ => serve_rest(&mut st, &method, &target, &bytes, parsed_body.as_ref(), lock_fault),
                }
            };
            json_response(&r, st.limit_info())
        }
    };
    if let Some(Fault::DelayAfter(d)) = fault {
        ::tokio::time::sleep(d).await;
    }
    answer
}

fn serve_rest(
    st: &mut State,
    method: &str,
    target: &str,
    bytes: &[u8],
    parsed: Option<&Value>,
    lock_fault: bool,
) -> rest::ApiResponse {
    let has_body = !bytes.iter().all(u8::is_ascii_whitespace);
    if has_body && parsed.is_none() && matches!(method, "POST" | "PATCH" | "PUT") {
        return faults::json_parser_error("Unexpected character in the request body: it is not valid JSON").into();
    }
    if lock_fault && matches!(method, "POST" | "PATCH" | "PUT" | "DELETE") {
        return faults::unable_to_lock_row().into();
    }
    rest::dispatch(st, method, target, parsed)
}

fn serve_soap(st: &mut State, path: &str, bytes: &[u8], lock_fault: bool) -> Response {
    let valid_path = path.strip_prefix("/services/Soap/u/").is_some_and(|v| {
        v.trim_end_matches('/').split_once('.').is_some_and(|(a, b)| {
            !a.is_empty()
                && a.bytes().all(|c| c.is_ascii_digit())
                && b.len() == 1
                && b.bytes().all(|c| c.is_ascii_digit())
        })
    });
    if !valid_path {
        let info = st.limit_info();
        return response(404, JSON, faults::not_found().body().to_string(), Some(info), &[]);
    }
    let parsed = soap::parse(bytes);
    let (status, xml) = match parsed {
        Err(msg) => (500, soap::fault("soapenv:Client", &msg)),
        Ok(req) => {
            let authorized = req.session_id.as_deref().is_some_and(|t| st.sessions.contains(t));
            if !authorized {
                (500, soap::invalid_session_fault())
            } else {
                st.api_used += 1;
                soap::handle(st, &req, lock_fault)
            }
        }
    };
    let info = st.limit_info();
    response(status, XML, xml, Some(info), &[])
}
