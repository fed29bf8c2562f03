//! Admission: what a request must pass before its route runs, in one middleware per group of routes.
//!
//! In order: room among the requests in flight (503 `OVERLOADED`, before the body is read), a key of the
//! routes' role (401, 403), and for the channels' routes the channel's rate (429), then their
//! `Idempotency-Key`. The steps are plain functions of their modules (`overload`, `auth`, `idempotency`)
//! run by one `from_fn` layer: as four layers, each request also paid four boxed services and futures, and
//! the clones of the state each layer holds, for checks that take a few hundred instructions.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::{self, Role};
use super::error::ApiError;
use super::overload::{self, Admitted};
use super::{idempotency, AppState};

/// The channels' routes (the lifecycle operations and the reads): in flight, a channel key, the rate, the
/// idempotency key.
pub async fn channels(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let admitted = match admit(&state, Role::Channel, &mut request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    if let Err(refused) = overload::check_rate(&state, &request) {
        return refused.into_response();
    }
    let response = idempotency::apply(state, request, next).await;
    drop(admitted);
    response
}

/// The reports' routes: in flight, a reporting key.
pub async fn reporting(State(state): State<AppState>, mut request: Request, next: Next) -> Response {
    let admitted = match admit(&state, Role::Reporting, &mut request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    let response = next.run(request).await;
    drop(admitted);
    response
}

/// A place among the requests in flight, then a key of `role`; a refused request gives its place back.
fn admit(state: &AppState, role: Role, request: &mut Request) -> Result<Admitted, ApiError> {
    let admitted = overload::admit(&state.in_flight, request)?;
    auth::admit(state, role, request)?;
    Ok(admitted)
}
