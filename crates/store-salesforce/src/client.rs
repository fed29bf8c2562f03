//! The thin client over reqwest: every call to the org goes through [`Client::call`], which adds the
//! token, renews it once on 401, retries what is safe to repeat with backoff and jitter, reads
//! `Sforce-Limit-Info`, counts the call per operation, and keeps the circuit breaker.

use std::sync::Arc;
use std::time::{Duration, Instant};

use reqwest::{Method, StatusCode};
use secrecy::ExposeSecret;
use serde_json::Value;

use crate::auth::Tokens;
use crate::config::SalesforceConfig;
use crate::error::{without_url, OrgError, SfError};

/// Whether a call may be sent again when its answer is lost.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Repeat {
    /// A read: repeating it changes nothing.
    Safe,
    /// A write: repeated only when the org certainly did not process it (refused before processing, or a
    /// rolled-back `UNABLE_TO_LOCK_ROW`); otherwise the caller reads back.
    Once,
}

/// What a call is, for the `crm_backend_calls_total` metric and the logs.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Label {
    /// The port operation: create, close_won, close_lost, get, search, check.
    pub operation: &'static str,
    /// The step: read, write, convert, lookup, describe.
    pub step: &'static str,
}

pub(crate) enum Body<'a> {
    None,
    Json(&'a Value),
    /// A SOAP envelope; the closure receives the session id (the access token).
    Soap(&'a (dyn Fn(&str) -> String + Send + Sync)),
}

/// A circuit breaker: after `threshold` consecutive failures the org is left alone for `cooldown`, then one
/// more failure opens it again at once.
struct Breaker {
    threshold: u32,
    cooldown: Duration,
    state: std::sync::Mutex<(u32, Option<Instant>)>,
}

impl Breaker {
    fn check(&self) -> Result<(), SfError> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        match state.1 {
            Some(until) if until > Instant::now() => Err(SfError::Open { retry_after: until - Instant::now() }),
            _ => Ok(()),
        }
    }

    fn success(&self) {
        *self.state.lock().unwrap_or_else(|p| p.into_inner()) = (0, None);
    }

    fn failure(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.0 += 1;
        if state.0 >= self.threshold {
            if state.1.is_none_or(|until| until <= Instant::now()) {
                tracing::warn!(
                    failures = state.0,
                    cooldown_s = self.cooldown.as_secs(),
                    "salesforce: circuit breaker open"
                );
            }
            state.1 = Some(Instant::now() + self.cooldown);
            // Half-open after the cooldown: one more failure re-opens it.
            state.0 = self.threshold - 1;
        }
    }

    fn trip(&self, for_: Duration) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1 = Some(Instant::now() + for_);
        state.0 = self.threshold.saturating_sub(1);
    }

    fn open_for(&self) -> Option<Duration> {
        let state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.1.and_then(|until| until.checked_duration_since(Instant::now()))
    }
}

pub(crate) struct Client {
    http: reqwest::Client,
    pub config: Arc<SalesforceConfig>,
    tokens: Tokens,
    breaker: Breaker,
}

/// The whole daily allowance is spent: wait this long before trying again.
const LIMIT_BACKOFF: Duration = Duration::from_secs(300);

impl Client {
    pub fn new(config: Arc<SalesforceConfig>) -> Result<Self, SfError> {
        let http = reqwest::Client::builder()
            .timeout(config.timeout)
            .connect_timeout(config.timeout.min(Duration::from_secs(5)))
            .pool_idle_timeout(Duration::from_secs(60))
            .user_agent(concat!("integration-service/", env!("CARGO_PKG_VERSION")))
            .build()
            .map_err(|e| SfError::Config(format!("cannot build the HTTP client: {}", without_url(&e))))?;
        let breaker = Breaker {
            threshold: config.breaker_failures,
            cooldown: config.breaker_cooldown,
            state: std::sync::Mutex::new((0, None)),
        };
        Ok(Self { http, config, tokens: Tokens::new(), breaker })
    }

    /// `Some(remaining)` while the breaker keeps the org alone.
    pub fn breaker_open_for(&self) -> Option<Duration> {
        self.breaker.open_for()
    }

    /// Fetches a token now (start-up), so credentials are checked before the service answers.
    pub async fn authenticate(&self) -> Result<(), SfError> {
        self.tokens.get(&self.http, &self.config).await.map(|_| ())
    }

    pub fn data_path(&self, rest: &str) -> String {
        format!("/services/data/v{}{rest}", self.config.api_version)
    }

    /// One call to the org: `path` is absolute from the instance (`/services/data/v62.0/composite`).
    /// Answers the body of a 2xx (JSON, or the SOAP envelope as a string value).
    pub async fn call(
        &self,
        label: Label,
        method: Method,
        path: &str,
        body: Body<'_>,
        repeat: Repeat,
    ) -> Result<Value, SfError> {
        self.breaker.check()?;
        let url = format!("{}{path}", self.config.instance_url);
        let mut token = self.tokens.get(&self.http, &self.config).await?;
        let mut renewed = false;
        let mut attempt = 0;
        loop {
            attempt += 1;
            let outcome = self.once(label, &method, &url, &body, token.value.expose_secret()).await;
            let error = match outcome {
                Ok(value) => {
                    self.breaker.success();
                    return Ok(value);
                }
                Err(e) => e,
            };
            let retry = match &error {
                SfError::Api { status: 401, .. } if !renewed => {
                    // The session expired: one new token, then the same call again (it was not processed).
                    token = self.tokens.renew(&self.http, &self.config, token.generation).await?;
                    renewed = true;
                    attempt -= 1;
                    continue;
                }
                SfError::Api { status: 401, .. } => {
                    return Err(SfError::Config("the org refuses a token it has just issued".into()));
                }
                SfError::Limit { .. } => {
                    self.breaker.trip(LIMIT_BACKOFF);
                    return Err(error);
                }
                SfError::Api { errors, .. } => {
                    // Refused before any change: a row lock timeout (rolled back) or a concurrency limit.
                    errors.iter().any(|e| e.code == "UNABLE_TO_LOCK_ROW" || e.code == "REQUEST_LIMIT_EXCEEDED")
                }
                SfError::Transport { sent: false, .. } => {
                    self.breaker.failure();
                    true
                }
                SfError::Transport { sent: true, .. } | SfError::Server { .. } => {
                    self.breaker.failure();
                    repeat == Repeat::Safe
                }
                SfError::Config(_) | SfError::Unexpected { .. } | SfError::Open { .. } => false,
            };
            if !retry || attempt >= self.config.max_attempts {
                return Err(error);
            }
            // Full jitter over an exponential ceiling: replicas that failed together do not retry together.
            let ceiling = Duration::from_millis(100u64 << attempt.min(5)).min(Duration::from_secs(2));
            let pause = ceiling.mul_f64(fastrand::f64());
            tracing::debug!(attempt, pause_ms = pause.as_millis() as u64, error = %error, "salesforce: retrying");
            tokio::time::sleep(pause).await;
            self.breaker.check()?;
        }
    }

    async fn once(
        &self,
        label: Label,
        method: &Method,
        url: &str,
        body: &Body<'_>,
        token: &str,
    ) -> Result<Value, SfError> {
        let mut request = self.http.request(method.clone(), url);
        request = match body {
            Body::None => request.bearer_auth(token),
            Body::Json(v) => request.bearer_auth(token).json(v),
            Body::Soap(envelope) => request
                .header(reqwest::header::CONTENT_TYPE, "text/xml; charset=UTF-8")
                .header("SOAPAction", "\"\"")
                .body(envelope(token)),
        };
        let response = match request.send().await {
            Ok(r) => r,
            Err(e) => {
                let sent = !(e.is_connect() || e.is_builder());
                crate::metrics::call(label, "transport");
                return Err(SfError::Transport { sent, detail: without_url(&e) });
            }
        };
        let status = response.status();
        crate::metrics::call(label, status.as_str());
        if let Some(info) = response.headers().get("sforce-limit-info").and_then(|v| v.to_str().ok()) {
            crate::metrics::limit_info(info);
        }
        let retry_after = response
            .headers()
            .get(reqwest::header::RETRY_AFTER)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok())
            .map(Duration::from_secs);
        let text = response.text().await.map_err(|e| SfError::Transport { sent: true, detail: without_url(&e) })?;
        if status.is_success() {
            return match body {
                Body::Soap(_) => Ok(Value::String(text)),
                _ if text.is_empty() => Ok(Value::Null),
                _ => serde_json::from_str(&text).map_err(|_| SfError::Unexpected {
                    status: status.as_u16(),
                    detail: "a body that is not JSON".into(),
                }),
            };
        }
        if status.is_server_error() {
            if let Body::Soap(_) = body {
                // A SOAP fault comes as HTTP 500 with the fault code in the envelope.
                if let Some(code) = crate::soap::fault_code(&text) {
                    return Err(soap_fault(code));
                }
            }
            return Err(SfError::Server {
                status: status.as_u16(),
                retry_after: retry_after.unwrap_or(Duration::from_secs(5)),
            });
        }
        let errors: Vec<OrgError> = serde_json::from_str(&text).unwrap_or_default();
        if status == StatusCode::FORBIDDEN && errors.iter().any(|e| e.code == "REQUEST_LIMIT_EXCEEDED") {
            // TotalRequests is the daily allowance: nothing to gain from retrying soon. Other limits
            // (ConcurrentPerOrgLongTxn) are momentary and are retried.
            if errors.iter().any(|e| e.message.contains("TotalRequests")) {
                tracing::error!("salesforce: the org's daily API request limit is exhausted");
                return Err(SfError::Limit { retry_after: LIMIT_BACKOFF });
            }
        }
        if errors.is_empty() {
            return Err(SfError::Unexpected {
                status: status.as_u16(),
                detail: "an error without Salesforce's error body".into(),
            });
        }
        Err(SfError::Api { status: status.as_u16(), errors })
    }
}

fn soap_fault(code: String) -> SfError {
    let code = code.rsplit(':').next().unwrap_or_default().to_owned();
    if code == "INVALID_SESSION_ID" {
        return SfError::Api { status: 401, errors: vec![OrgError { message: String::new(), code, fields: vec![] }] };
    }
    if code == "REQUEST_LIMIT_EXCEEDED" {
        return SfError::Limit { retry_after: LIMIT_BACKOFF };
    }
    SfError::Api { status: 500, errors: vec![OrgError { message: String::new(), code, fields: vec![] }] }
}
