//! The operations of SPEC §2–3. Each handler parses its body at the edge, calls the store port once, and
//! shapes the answer; the rules themselves run inside the store's atomic step. A write's success response
//! comes from [`Write::render`], the rendering the store records for an `Idempotency-Key` in the same step.

use axum::extract::State;
use axum::http::{header, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::{Extension, Json};
use lifecycle::RecordType;
use store::{Answer, RequestContext};

use super::answer::Write;
use super::auth::Caller;
use super::dto::schema::{
    CloseLostLeadRequest, CloseLostOpportunityRequest, CloseWonRequest, CreateLeadOpportunityRequest, SearchRequest,
};
use super::dto::*;
use super::error::{ApiError, Problem};
use super::extract::{JsonBody, RecordIdPath};
use super::responses::{BodyErrors, CrmErrors, ReadErrors, TransitionErrors};
use super::AppState;
use crate::observability;

/// The `Idempotency-Key` request header every POST accepts (SPEC §4).
#[derive(utoipa::IntoParams)]
#[into_params(parameter_in = Header)]
#[allow(dead_code)]
pub struct IdempotencyKeyHeader {
    /// 1–255 printable ASCII characters. A repeat within the retention time (24 h by default) with the same
    /// method, path and body answers the first response again with `Idempotent-Replayed: true`.
    #[param(rename = "Idempotency-Key", pattern = r"^[\u0020-\u007e]{1,255}$")]
    idempotency_key: Option<String>,
}

/// The `Idempotency-Key` the request holds, as the idempotency middleware claimed it.
type Claimed = Option<Extension<super::answer::Claimed>>;

/// Who asks, and (with an `Idempotency-Key`) the ticket with which the store records `write`'s answer.
fn context(
    channel: lifecycle::Channel,
    reason: Option<lifecycle::Reason>,
    write: Write,
    claimed: Claimed,
) -> RequestContext {
    let mut ctx = RequestContext::new(crate::telemetry::request::current_id().unwrap_or_default(), channel, reason);
    ctx.idempotency = write.ticket(claimed.map(|Extension(t)| t));
    ctx
}

fn what(record_type: RecordType) -> &'static str {
    match record_type {
        RecordType::Lead => "lead",
        RecordType::Opportunity => "opportunity",
    }
}

/// Create or reuse a Lead (NTB) or an Opportunity (ETB), handing over when the RM changes.
#[utoipa::path(
    post, path = "/integration-service/int/api/crm/v1/combo-create-lead-opportunity", tag = "lifecycle",
    request_body(content = CreateLeadOpportunityRequest, example = json!({
        "customerType": "NTB",
        "customer": {"idNumber": "079123456789", "cif": null, "fullName": "Nguyen Van A", "phone": "+84901234567",
                     "email": "a@example.com"},
        "product": "CREDIT_CARD", "ownerId": "RM001", "channel": "MOBILE_APP", "journeyId": "J-2026-000123"
    })),
    params(IdempotencyKeyHeader),
    responses(
        (status = 201, description = "CREATED or REPLACED", body = CreateResponse, headers(("Location" = String, description = "The new record"))),
        (status = 200, description = "EXISTING: an open record of the same RM", body = CreateResponse),
        BodyErrors, CrmErrors,
    )
)]
pub async fn create(
    State(state): State<AppState>,
    caller: Caller,
    claimed: Claimed,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let request = parse_create(&body.json()?)?;
    caller.check(&request.channel)?;
    let ctx = context(request.channel.clone(), None, Write::Create, claimed);
    let outcome = state.store.create(&request, &ctx).await.map_err(|e| ApiError::from_store(e, "record"))?;
    observability::lifecycle_outcome("create", outcome.result.as_str(), outcome.record_type);
    Ok(Write::Create.respond(&ctx, Answer::Create(&outcome)))
}

/// Close Won a Lead (converting it into an Opportunity by default) or an Opportunity.
#[utoipa::path(
    post, path = "/integration-service/int/api/crm/v1/combo-update-lead-opportunity", tag = "lifecycle",
    request_body = CloseWonRequest,
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Close Won (or already was: same body as the first time)", body = CloseWonResponse),
        BodyErrors, CrmErrors, TransitionErrors,
    )
)]
pub async fn close_won(
    State(state): State<AppState>,
    caller: Caller,
    claimed: Claimed,
    body: JsonBody,
) -> Result<Response, ApiError> {
    let cmd = parse_close_won(&body.json()?)?;
    caller.check(&cmd.channel)?;
    let ctx = context(cmd.channel, cmd.reason, Write::CloseWon, claimed);
    let outcome = state
        .store
        .close_won(cmd.record_type, cmd.id.as_str(), cmd.convert, &ctx)
        .await
        .map_err(|e| ApiError::from_store(e, what(cmd.record_type)))?;
    let converted = if outcome.lead.is_some() && outcome.opportunity.is_some() { "WON_CONVERTED" } else { "WON" };
    observability::lifecycle_outcome("close_won", converted, cmd.record_type);
    Ok(Write::CloseWon.respond(&ctx, Answer::CloseWon(&outcome)))
}

/// Close Lost an Opportunity (rejected by the credit bureau or AML checks).
#[utoipa::path(
    post, path = "/integration-service/api/crm/v1/update-opportunity-status", tag = "lifecycle",
    request_body = CloseLostOpportunityRequest,
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Close Lost (or already was)", body = CloseLostOpportunityResponse),
        BodyErrors, CrmErrors, TransitionErrors,
    )
)]
pub async fn close_lost_opportunity(
    State(state): State<AppState>,
    caller: Caller,
    claimed: Claimed,
    body: JsonBody,
) -> Result<Response, ApiError> {
    close_lost(&state, &caller, claimed, &body.json()?, RecordType::Opportunity).await
}

/// Close Lost a Lead (an NTB customer rejected by the credit bureau or AML checks).
#[utoipa::path(
    post, path = "/integration-service/api/crm/v1/update-lead-status", tag = "lifecycle",
    request_body = CloseLostLeadRequest,
    params(IdempotencyKeyHeader),
    responses(
        (status = 200, description = "Close Lost (or already was)", body = CloseLostLeadResponse),
        BodyErrors, CrmErrors, TransitionErrors,
    )
)]
pub async fn close_lost_lead(
    State(state): State<AppState>,
    caller: Caller,
    claimed: Claimed,
    body: JsonBody,
) -> Result<Response, ApiError> {
    close_lost(&state, &caller, claimed, &body.json()?, RecordType::Lead).await
}

/// SPEC §2.3–2.4: the two close-lost operations differ only in the record type and its id field.
async fn close_lost(
    state: &AppState,
    caller: &Caller,
    claimed: Claimed,
    body: &super::fields::Json<'_>,
    record_type: RecordType,
) -> Result<Response, ApiError> {
    let id_field = match record_type {
        RecordType::Lead => "leadId",
        RecordType::Opportunity => "opportunityId",
    };
    let cmd = parse_close_lost(body, id_field)?;
    caller.check(&cmd.channel)?;
    let write = Write::CloseLost(record_type);
    let ctx = context(cmd.channel, cmd.reason, write, claimed);
    let r = state
        .store
        .close_lost(record_type, cmd.id.as_str(), &ctx)
        .await
        .map_err(|e| ApiError::from_store(e, what(record_type)))?;
    observability::lifecycle_outcome("close_lost", "LOST", record_type);
    Ok(write.respond(&ctx, Answer::CloseLost(&r)))
}

async fn get_record(state: &AppState, record_type: RecordType, id: &str) -> Result<Json<RecordDto>, ApiError> {
    let found = state.store.get(record_type, id).await.map_err(|e| ApiError::from_store(e, what(record_type)))?;
    found.map(|r| Json(r.into())).ok_or(ApiError::NotFound(what(record_type)))
}

/// A lead with its history, oldest first.
#[utoipa::path(
    get, path = "/integration-service/int/api/crm/v1/leads/{id}", tag = "reading",
    params(("id" = super::dto::schema::RecordId, Path, description = "The lead's id")),
    responses((status = 200, description = "The lead", body = RecordDto), ReadErrors)
)]
pub async fn get_lead(
    State(state): State<AppState>,
    RecordIdPath(id): RecordIdPath,
) -> Result<Json<RecordDto>, ApiError> {
    get_record(&state, RecordType::Lead, id.as_str()).await
}

/// An opportunity with its history, oldest first.
#[utoipa::path(
    get, path = "/integration-service/int/api/crm/v1/opportunities/{id}", tag = "reading",
    params(("id" = super::dto::schema::RecordId, Path, description = "The opportunity's id")),
    responses((status = 200, description = "The opportunity", body = RecordDto), ReadErrors)
)]
pub async fn get_opportunity(
    State(state): State<AppState>,
    RecordIdPath(id): RecordIdPath,
) -> Result<Json<RecordDto>, ApiError> {
    get_record(&state, RecordType::Opportunity, id.as_str()).await
}

/// Every record of a customer (and product), newest first, without history.
#[utoipa::path(
    post, path = "/integration-service/int/api/crm/v1/search", tag = "reading",
    request_body = SearchRequest,
    params(IdempotencyKeyHeader),
    responses((status = 200, description = "Matching records", body = SearchResponse), BodyErrors)
)]
pub async fn search(State(state): State<AppState>, body: JsonBody) -> Result<Json<SearchResponse>, ApiError> {
    let (id_number, product) = parse_search(&body.json()?)?;
    let result =
        state.store.search(&id_number, product.as_ref()).await.map_err(|e| ApiError::from_store(e, "record"))?;
    Ok(Json(result.into()))
}

/// Liveness: the process answers. The answer never changes, so it is a constant (the JSON of [`LIVE`]):
/// orchestrators call this every few seconds, and serializing it cost as much as the rest of the route.
#[utoipa::path(get, path = "/health/live", tag = "operations", responses((status = 200, body = Health)))]
pub async fn live() -> Response {
    ([(header::CONTENT_TYPE, HeaderValue::from_static("application/json"))], LIVE_JSON).into_response()
}

/// What `/health/live` answers.
pub const LIVE: Health = Health { status: "UP", details: None };
/// [`LIVE`] as JSON (a test checks they agree).
const LIVE_JSON: &str = r#"{"status":"UP"}"#;

/// Readiness: the store answers. With events configured, `details.events` shows the outbox's lag and the
/// relay's state; a lag never makes the service unready (requests do not need NATS).
#[utoipa::path(
    get, path = "/health/ready", tag = "operations",
    responses(
        (status = 200, body = Health),
        (status = 503, description = "The store does not answer", body = Problem, content_type = "application/problem+json"),
    )
)]
pub async fn ready(State(state): State<AppState>) -> Result<Json<Health>, ApiError> {
    state.store.ready().await.map_err(|e| ApiError::from_store(e, "record"))?;
    let details = state.events.as_ref().map(|relay| {
        let s = relay.get();
        HealthDetails {
            events: EventsHealth {
                outbox_pending: s.lag.count,
                outbox_oldest_age_seconds: s.lag.oldest_age.as_secs_f64(),
                nats_connected: s.connected,
                publishing: s.publishing,
            },
        }
    });
    Ok(Json(Health { status: "UP", details }))
}

/// Prometheus metrics, text exposition format.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format", body = String, content_type = "text/plain")))]
pub async fn metrics() -> impl IntoResponse {
    ([(header::CONTENT_TYPE, "text/plain; version=0.0.4; charset=utf-8")], crate::observability::render())
}

pub async fn not_found() -> ApiError {
    ApiError::NoRoute
}

pub async fn method_not_allowed() -> ApiError {
    ApiError::MethodNotAllowed
}

#[cfg(test)]
mod tests {
    #[test]
    fn the_liveness_answer_is_the_health_documents_json() {
        assert_eq!(serde_json::to_string(&super::LIVE).unwrap(), super::LIVE_JSON);
    }
}
