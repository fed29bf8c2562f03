//! Overload: a bound on requests in flight with a fast 503 beyond it (shedding instead of an unbounded
//! queue), and an optional per-channel rate limit answering 429 with `Retry-After`.

use std::num::NonZeroU32;
use std::sync::Arc;
use std::time::Duration;

use axum::extract::Request;
use governor::clock::{Clock, DefaultClock};
use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::auth::Caller;
use super::error::ApiError;
use super::AppState;

/// Requests per second per channel, with a burst allowance.
pub fn rate_limiter(per_second: NonZeroU32, burst: NonZeroU32) -> Arc<DefaultKeyedRateLimiter<String>> {
    Arc::new(RateLimiter::keyed(Quota::per_second(per_second).allow_burst(burst)))
}

/// First of the routes' admission (`super::admission`): admits a request only while fewer than the bound
/// are in flight; otherwise answers 503 `OVERLOADED` at once, before reading the body. Health, metrics and
/// docs are not counted, so an overloaded replica still answers its orchestrator.
///
/// The request's place is an [`Admitted`] in its extensions: work that outlives the answer (an idempotent
/// run that goes on after a 408) keeps a clone, and still counts until it ends. The caller keeps the one
/// returned until the request is answered.
pub fn admit(in_flight: &Arc<Semaphore>, request: &mut Request) -> Result<Admitted, ApiError> {
    let Ok(permit) = in_flight.clone().try_acquire_owned() else {
        metrics::counter!("http_requests_shed_total").increment(1);
        return Err(ApiError::Overloaded);
    };
    let admitted = Admitted(Arc::new((permit, InFlight::enter())));
    request.extensions_mut().insert(admitted.clone());
    Ok(admitted)
}

/// A request's place among those in flight (its permit, and its count in `http_requests_in_flight`),
/// given back when the last clone is dropped.
#[derive(Clone)]
pub struct Admitted(#[allow(dead_code)] Arc<(OwnedSemaphorePermit, InFlight)>);

/// Counts a request in `http_requests_in_flight` for as long as it lives, cancelled or not.
struct InFlight;

thread_local! {
    /// Each thread's handle of `http_requests_in_flight`, as for the HTTP series (`observability`): looked up
    /// in the recorder's registry, it cost every request two lookups and two allocations.
    static IN_FLIGHT: metrics::Gauge = metrics::gauge!("http_requests_in_flight");
}

impl InFlight {
    fn enter() -> Self {
        IN_FLIGHT.with(|g| g.increment(1.0));
        InFlight
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        IN_FLIGHT.with(|g| g.decrement(1.0));
    }
}

/// On the API routes, after authentication: one bucket per channel (the API key's; all open callers share
/// one bucket when the service runs without keys). Otherwise the refusal: 429 with `Retry-After`.
pub fn check_rate(state: &AppState, request: &Request) -> Result<(), ApiError> {
    let Some(limiter) = &state.rate_limit else {
        return Ok(());
    };
    let channel = request
        .extensions()
        .get::<Caller>()
        .and_then(|c| c.0.as_ref())
        .map(|c| c.as_str().to_owned())
        .unwrap_or_else(|| "open".to_owned());
    if let Err(not_until) = limiter.check_key(&channel) {
        let wait = not_until.wait_time_from(DefaultClock::default().now());
        metrics::counter!("http_requests_rate_limited_total", "channel" => channel).increment(1);
        return Err(ApiError::RateLimited { retry_after: wait.max(Duration::from_secs(1)) });
    }
    Ok(())
}
