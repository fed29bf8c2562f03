//! `Idempotency-Key` on every POST (SPEC §4; the IETF httpapi Idempotency-Key draft).
//!
//! The same key with the same method, path and body (compared after canonicalising the JSON, so key order
//! and whitespace do not matter; the body carries the channel) replays the first response byte for byte
//! with `Idempotent-Replayed: true` and changes nothing. The same key with another request is 422
//! `IDEMPOTENCY_KEY_REUSED`; a repeat while the first still runs is 409 `IDEMPOTENCY_KEY_IN_USE`. Keys live
//! in the store, so this holds across restarts and replicas, and expire after the configured time.
//!
//! A claim is taken with a holder token of its own and leased; while the run is alive a heartbeat renews
//! the lease, so a run that waits long (a busy customer, a slow CRM), or goes on after its client was
//! answered 408, is never taken over by a retry (which gets 409 until the run ends, then the replay). Only
//! the holder completes or releases the claim. If the process dies, the lease runs out and a retry runs
//! the request again. The run, even after a 408, keeps its place among the requests in flight.
//!
//! Responses of 5xx, 408 and 429 are not kept: they say nothing happened (or nothing is known), so a
//! retry with the same key runs the request again.
//!
//! A write's success is kept by the store itself, in the operation's transaction (a crash between the
//! operation and a second write here would let a retry run it again): the claimed key travels to the
//! handler as a [`store::Ticket`] in the request's extensions, and a response marked
//! [`answer::Recorded`] needs nothing more. Every other answer kept (a 404, a 409, a 422) is completed here.

use std::sync::Arc;
use std::time::Duration;

use axum::body::{to_bytes, Body};
use axum::extract::Request;
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use serde_json::Value;
use sha2::{Digest, Sha256};
use store::{Backend, Claim, StoredResponse};

use super::answer::{self, Recorded};
use super::auth::Caller;
use super::error::ApiError;
use super::extract::{check_head, read_body};
use super::overload::Admitted;
use super::AppState;
use tracing::Instrument;

pub static IDEMPOTENCY_KEY: HeaderName = HeaderName::from_static("idempotency-key");
pub static IDEMPOTENT_REPLAYED: HeaderName = HeaderName::from_static("idempotent-replayed");

/// 1–255 printable ASCII characters.
fn valid(key: &HeaderValue) -> Option<&str> {
    let bytes = key.as_bytes();
    ((1..=255).contains(&bytes.len()) && bytes.iter().all(|b| (0x20..=0x7e).contains(b))).then(|| key.to_str().ok())?
}

/// JSON with object keys sorted at every level, so equal documents hash equally.
fn canonical(v: &Value, out: &mut String) {
    match v {
        Value::Object(map) => {
            let mut keys: Vec<&String> = map.keys().collect();
            keys.sort();
            out.push('{');
            for (i, k) in keys.into_iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                out.push_str(&Value::String(k.clone()).to_string());
                out.push(':');
                canonical(&map[k], out);
            }
            out.push('}');
        }
        Value::Array(items) => {
            out.push('[');
            for (i, item) in items.iter().enumerate() {
                if i > 0 {
                    out.push(',');
                }
                canonical(item, out);
            }
            out.push(']');
        }
        other => out.push_str(&other.to_string()),
    }
}

/// What makes two requests "the same": method, path and (canonical) body.
pub fn fingerprint(method: &Method, path: &str, body: &[u8]) -> String {
    let mut hash = Sha256::new();
    hash.update(method.as_str());
    hash.update(b"\n");
    hash.update(path);
    hash.update(b"\n");
    match serde_json::from_slice::<Value>(body) {
        Ok(v) => {
            let mut text = String::with_capacity(body.len());
            canonical(&v, &mut text);
            hash.update(text);
        }
        Err(_) => hash.update(body),
    }
    format!("{:x}", hash.finalize())
}

fn keep(status: StatusCode) -> bool {
    !(status.is_server_error() || status == StatusCode::REQUEST_TIMEOUT || status == StatusCode::TOO_MANY_REQUESTS)
}

fn replay(r: StoredResponse) -> Response {
    let mut response = answer::into_response(r);
    response.headers_mut().insert(IDEMPOTENT_REPLAYED.clone(), HeaderValue::from_static("true"));
    response
}

/// Releases a claim whose request failed to produce an answer (a panic), so a retry need not wait for the
/// lease to run out.
struct Claimed {
    store: Arc<dyn Backend>,
    key: String,
    holder: String,
    settled: bool,
}

impl Drop for Claimed {
    fn drop(&mut self) {
        if self.settled {
            return;
        }
        let (store, key, holder) =
            (self.store.clone(), std::mem::take(&mut self.key), std::mem::take(&mut self.holder));
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                if let Err(e) = store.release(&key, &holder).await {
                    tracing::warn!(error = %e, "idempotency: cannot release an abandoned claim; its lease will expire");
                }
            });
        }
    }
}

/// Renews the claim's lease every third of it while the run is alive; stopped when dropped.
struct Heartbeat(tokio::task::JoinHandle<()>);

impl Heartbeat {
    fn start(claim: &Claimed, lease: Duration) -> Self {
        let (store, key, holder) = (claim.store.clone(), claim.key.clone(), claim.holder.clone());
        Self(tokio::spawn(async move {
            loop {
                tokio::time::sleep(lease / 3).await;
                match store.renew(&key, &holder, lease).await {
                    Ok(true) => {}
                    Ok(false) => {
                        // Only if renewals failed for a whole lease: a retry took the key over, and this run's
                        // answer will not be kept (the store refuses a stale holder's completion).
                        tracing::warn!("idempotency: the claim was taken over while this run was alive");
                        return;
                    }
                    Err(e) => tracing::warn!(error = %e, "idempotency: cannot renew a claim's lease"),
                }
            }
        }))
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Runs the claimed request and records its answer (or releases the claim when the answer is not kept),
/// renewing the claim while it runs.
async fn run_and_record(mut claim: Claimed, lease: Duration, next: Next, request: Request) -> Response {
    let heartbeat = Heartbeat::start(&claim, lease);
    let response = next.run(request).await;
    if response.extensions().get::<Recorded>().is_some() {
        claim.settled = true; // the store completed the key with the operation
        return response;
    }
    let (parts, body) = response.into_parts();
    let Ok(body) = to_bytes(body, usize::MAX).await else {
        return ApiError::Internal.into_response(); // the claim is released on drop
    };
    let outcome = if keep(parts.status) {
        let stored = StoredResponse {
            status: parts.status.as_u16(),
            content_type: parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).map(Into::into),
            location: parts.headers.get(header::LOCATION).and_then(|v| v.to_str().ok()).map(Into::into),
            body: body.to_vec(),
        };
        claim.store.complete(&claim.key, &claim.holder, &stored).await
    } else {
        claim.store.release(&claim.key, &claim.holder).await
    };
    drop(heartbeat);
    match outcome {
        Ok(()) => claim.settled = true,
        // The operation itself stands; the claim stays running until its lease ends. A retry after that
        // runs the operation again, which finds its own effect (a create answers EXISTING, a close as
        // before) and changes nothing more.
        Err(e) => {
            claim.settled = true;
            tracing::warn!(error = %e, "idempotency: cannot record the response");
        }
    }
    Response::from_parts(parts, Body::from(body))
}

/// Runs an admitted request of the API routes (`super::admission`) under its `Idempotency-Key`, if it has one.
pub async fn apply(state: AppState, request: Request, next: Next) -> Response {
    if request.method() != Method::POST {
        return next.run(request).await;
    }
    let Some(raw) = request.headers().get(&IDEMPOTENCY_KEY) else {
        return next.run(request).await;
    };
    let Some(key) = valid(raw).map(str::to_owned) else {
        return ApiError::field("Idempotency-Key", "must be 1-255 printable ASCII characters").into_response();
    };
    // Keys are the caller's own: with API keys, one channel's key never collides with another's.
    let key = match request.extensions().get::<Caller>().and_then(|c| c.0.as_ref()) {
        Some(channel) => format!("{}\u{1f}{key}", channel.as_str()),
        None => key,
    };
    let (parts, body) = request.into_parts();
    // The handler's own checks, in its order, before anything is claimed: a request refused here is
    // refused the same way with or without a key.
    if let Err(e) = check_head(&parts.headers) {
        return e.into_response();
    }
    let bytes = match read_body(body).await {
        Ok(b) => b,
        Err(e) => return e.into_response(),
    };
    let fp = fingerprint(&parts.method, parts.uri.path(), &bytes);
    let holder = uuid::Uuid::new_v4().to_string();
    match state.store.claim(&key, &fp, &holder, state.idempotency_lease, state.idempotency_ttl).await {
        Err(e) => ApiError::from_store(e, "record").into_response(),
        Ok(Claim::Mismatch) => ApiError::IdempotencyKeyReused.into_response(),
        Ok(Claim::InUse) => ApiError::IdempotencyKeyInUse.into_response(),
        Ok(Claim::Replay(stored)) => replay(stored),
        Ok(Claim::Proceed) => {
            let mut request = Request::from_parts(parts, Body::from(bytes));
            request.extensions_mut().insert(answer::Claimed { key: key.clone(), holder: holder.clone() });
            // Counted in flight until the run ends, even when the client has long been answered 408.
            let admitted = request.extensions().get::<Admitted>().cloned();
            let claim = Claimed { store: state.store.clone(), key, holder, settled: false };
            // The request runs to the end and its answer is recorded even if the client goes away or the
            // request timeout fires: a retry then gets the replay rather than a second run.
            let lease = state.idempotency_lease;
            let run = async move {
                let response = run_and_record(claim, lease, next, request).await;
                drop(admitted);
                response
            };
            let run = crate::telemetry::request::carry(run).in_current_span();
            match tokio::spawn(run).await {
                Ok(response) => response,
                Err(_) => ApiError::Internal.into_response(), // it panicked; the claim was released on drop
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn equal_json_has_equal_fingerprints() {
        let a = fingerprint(&Method::POST, "/p", br#"{"b": 1, "a": {"y": [1, 2], "x": null}}"#);
        let b = fingerprint(&Method::POST, "/p", br#"{"a":{"x":null,"y":[1,2]},"b":1}"#);
        assert_eq!(a, b);
        assert_ne!(a, fingerprint(&Method::POST, "/q", br#"{"a":{"x":null,"y":[1,2]},"b":1}"#));
        assert_ne!(a, fingerprint(&Method::POST, "/p", br#"{"a":{"x":null,"y":[2,1]},"b":1}"#));
        assert_ne!(fingerprint(&Method::POST, "/p", b"not json"), fingerprint(&Method::POST, "/p", b"not  json"));
    }

    #[test]
    fn the_canonical_text_sorts_keys_at_every_level_and_keeps_array_order() {
        let v: Value =
            serde_json::from_slice(br#"{ "b": [3, {"z": 1, "y": "\u00e9"}, []], "a": {}, "c": null }"#).unwrap();
        let mut text = String::new();
        canonical(&v, &mut text);
        assert_eq!(text, r#"{"a":{},"b":[3,{"y":"é","z":1},[]],"c":null}"#);
    }

    #[test]
    fn only_answers_that_say_what_happened_are_kept() {
        for kept in [200, 201, 400, 404, 409, 413, 415, 422] {
            assert!(keep(StatusCode::from_u16(kept).unwrap()), "{kept}");
        }
        for not_kept in [408, 429, 500, 502, 503, 504] {
            assert!(!keep(StatusCode::from_u16(not_kept).unwrap()), "{not_kept}");
        }
    }

    #[test]
    fn key_rules() {
        assert!(valid(&HeaderValue::from_static("abc-123 ~!")).is_some());
        assert!(valid(&HeaderValue::from_static("")).is_none());
        assert!(valid(&HeaderValue::from_str(&"k".repeat(256)).unwrap()).is_none());
        assert!(valid(&HeaderValue::from_str(&"k".repeat(255)).unwrap()).is_some());
        assert!(valid(&HeaderValue::from_bytes(b"caf\xc3\xa9").unwrap()).is_none());
        assert!(valid(&HeaderValue::from_bytes(b"tab\there").unwrap()).is_none());
    }
}
