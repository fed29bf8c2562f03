//! The response of a successful write, rendered in one place.
//!
//! When a request holds an `Idempotency-Key`, the store records the answer to replay in the operation's own
//! transaction, so it renders the response itself, through the [`Ticket`] the request carries. The handler
//! builds the response it sends from the very same function, so a replay is byte for byte the first answer
//! (status, `Content-Type`, `Location`, body), and the middleware knows from the [`Recorded`] marker that it
//! has nothing left to write.

use std::sync::Arc;

use axum::body::Body;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use lifecycle::RecordType;
use serde::Serialize;
use store::{Answer, RequestContext, StoredResponse, Ticket};

use super::dto::{CloseLostLeadResponse, CloseLostOpportunityResponse, CloseWonResponse, CreateResponse};
use super::API_INT;

/// The write a handler runs, which decides how its answer reads.
#[derive(Debug, Clone, Copy)]
pub enum Write {
    Create,
    CloseWon,
    /// The two close-lost routes answer alike but for the name of the id field.
    CloseLost(RecordType),
}

/// On a response whose idempotent answer the store already recorded with the operation.
#[derive(Debug, Clone, Copy)]
pub struct Recorded;

fn json(status: StatusCode, location: Option<String>, body: &impl Serialize) -> StoredResponse {
    StoredResponse {
        status: status.as_u16(),
        content_type: Some("application/json".into()),
        location,
        // Serializing these plain structs cannot fail.
        body: serde_json::to_vec(body).unwrap_or_default(),
    }
}

impl Write {
    /// The response for `answer` (SPEC §2): 201 with `Location` for a new record, else 200.
    pub fn render(self, answer: Answer<'_>) -> StoredResponse {
        match answer {
            Answer::Create(o) => {
                let response = CreateResponse::from(o.clone());
                if !response.is_new() {
                    return json(StatusCode::OK, None, &response);
                }
                let kind = if o.record_type == RecordType::Lead { "leads" } else { "opportunities" };
                json(StatusCode::CREATED, Some(format!("{API_INT}/{kind}/{}", o.id)), &response)
            }
            Answer::CloseWon(o) => json(StatusCode::OK, None, &CloseWonResponse::from(o.clone())),
            Answer::CloseLost(r) => match self {
                Write::CloseLost(RecordType::Lead) => json(
                    StatusCode::OK,
                    None,
                    &CloseLostLeadResponse { lead_id: r.id.clone(), status: r.status.as_str() },
                ),
                // The opportunity route (the only other one with this answer).
                _ => json(
                    StatusCode::OK,
                    None,
                    &CloseLostOpportunityResponse { opportunity_id: r.id.clone(), status: r.status.as_str() },
                ),
            },
        }
    }

    /// The ticket for the store: the request's claimed `Idempotency-Key` (if any) with this write's rendering.
    pub fn ticket(self, claimed: Option<Claimed>) -> Option<Ticket> {
        claimed.map(|c| Ticket { key: c.key, holder: c.holder, render: Arc::new(move |answer| self.render(answer)) })
    }

    /// The response to send for `answer`, rendered as the store recorded it; marked [`Recorded`] when the
    /// request's context held a ticket.
    pub fn respond(self, ctx: &RequestContext, answer: Answer<'_>) -> Response {
        let mut response = into_response(self.render(answer));
        if ctx.idempotency.is_some() {
            response.extensions_mut().insert(Recorded);
        }
        response
    }
}

/// The `Idempotency-Key` a request has claimed, as the idempotency middleware hands it to the handler (a
/// request extension); the handler makes it a [`Ticket`] with its write's rendering ([`Write::ticket`]).
#[derive(Debug, Clone)]
pub struct Claimed {
    pub key: String,
    pub holder: String,
}

/// A stored response as sent: the first time by the handler, again on every replay.
pub fn into_response(r: StoredResponse) -> Response {
    let mut response = Response::new(Body::from(r.body));
    *response.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
    let headers = response.headers_mut();
    if let Some(ct) = r.content_type.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::CONTENT_TYPE, ct);
    }
    if let Some(location) = r.location.and_then(|v| HeaderValue::from_str(&v).ok()) {
        headers.insert(header::LOCATION, location);
    }
    response
}
