//! Admission: what a request must pass before its route runs, in one middleware per group of routes.
//!
//! In order: room among the requests in flight (503 `OVERLOADED`, before the body is read), a key of the
//! routes' role (401, 403), and for the channels' routes the channel's rate (429). The checks are plain
//! functions of their modules (`overload`, `auth`) run by one `from_fn` layer: as three layers, each
//! request also paid three boxed services and futures, and the clones of the state each layer holds, for
//! checks that take a few hundred instructions.

use axum::extract::{Request, State};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::auth::{self, Role};
use super::{overload, AppState};

/// The channels' routes (the lifecycle operations and the reads): in flight, a channel key, the rate.
pub async fn channels(State(state): State<AppState>, request: Request, next: Next) -> Response {
    admit(&state, Role::Channel, true, request, next).await
}

/// The reports' routes: in flight, a reporting key.
pub async fn reporting(State(state): State<AppState>, request: Request, next: Next) -> Response {
    admit(&state, Role::Reporting, false, request, next).await
}

async fn admit(state: &AppState, role: Role, rated: bool, mut request: Request, next: Next) -> Response {
    let admitted = match overload::admit(&state.in_flight, &mut request) {
        Ok(admitted) => admitted,
        Err(refused) => return refused.into_response(),
    };
    if let Err(refused) = auth::admit(state, role, &mut request) {
        return refused.into_response();
    }
    if rated {
        if let Err(refused) = overload::check_rate(state, &request) {
            return refused.into_response();
        }
    }
    let response = next.run(request).await;
    drop(admitted);
    response
}
