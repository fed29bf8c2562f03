//! Response bodies (SPEC §2–3), shaped from the store's outcomes and records.

use lifecycle::{CreateResult, JourneyId, Reason, Status};
use serde::Serialize;
use store::{CloseWonOutcome, CreateOutcome, HistoryEntry, Record, RecordRef, RecordWithHistory, SearchResult};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::schema;

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Answer of the create operation (SPEC §2.1).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateResponse {
    #[schema(value_type = schema::CreateResult)]
    pub result: &'static str,
    #[schema(value_type = schema::RecordType)]
    pub record_type: &'static str,
    pub id: String,
    #[schema(value_type = schema::Status)]
    pub status: &'static str,
    #[schema(example = "RM001")]
    pub owner_id: String,
    /// What this call set to `Close Lost`; empty unless `REPLACED`.
    pub closed_record_ids: Vec<String>,
}

impl From<CreateOutcome> for CreateResponse {
    fn from(o: CreateOutcome) -> Self {
        Self {
            result: o.result.as_str(),
            record_type: o.record_type.as_str(),
            id: o.id,
            status: o.status.as_str(),
            owner_id: o.owner_id.into_string(),
            closed_record_ids: o.closed_record_ids,
        }
    }
}

impl CreateResponse {
    pub fn is_new(&self) -> bool {
        self.result != CreateResult::Existing.as_str()
    }
}

/// A record's id and status.
#[derive(Serialize, ToSchema)]
pub struct RecordStatus {
    pub id: String,
    #[schema(value_type = schema::Status)]
    pub status: &'static str,
}

impl From<RecordRef> for RecordStatus {
    fn from(r: RecordRef) -> Self {
        Self { id: r.id, status: r.status.as_str() }
    }
}

/// Answer of close-won (SPEC §2.2).
#[derive(Serialize, ToSchema)]
pub struct CloseWonResponse {
    pub lead: Option<RecordStatus>,
    pub opportunity: Option<RecordStatus>,
}

impl From<CloseWonOutcome> for CloseWonResponse {
    fn from(o: CloseWonOutcome) -> Self {
        Self { lead: o.lead.map(Into::into), opportunity: o.opportunity.map(Into::into) }
    }
}

/// Answer of close-lost for an opportunity (SPEC §2.3).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloseLostOpportunityResponse {
    pub opportunity_id: String,
    #[schema(value_type = schema::Status)]
    pub status: &'static str,
}

/// Answer of close-lost for a lead (SPEC §2.4).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloseLostLeadResponse {
    pub lead_id: String,
    #[schema(value_type = schema::Status)]
    pub status: &'static str,
}

/// One status change.
#[derive(Serialize, ToSchema)]
#[schema(as = History)]
#[serde(rename_all = "camelCase")]
pub struct HistoryDto {
    /// `null` at creation.
    #[schema(value_type = Option<schema::Status>)]
    pub from: Option<&'static str>,
    #[schema(value_type = schema::Status)]
    pub to: &'static str,
    pub at: String,
    pub request_id: String,
    pub channel: String,
    pub reason: Option<String>,
}

impl From<HistoryEntry> for HistoryDto {
    fn from(h: HistoryEntry) -> Self {
        Self {
            from: h.from.map(Status::as_str),
            to: h.to.as_str(),
            at: rfc3339(h.at),
            request_id: h.request_id,
            channel: h.channel.into_string(),
            reason: h.reason.map(Reason::into_string),
        }
    }
}

/// A lead or opportunity with every field of SPEC §1.
#[derive(Serialize, ToSchema)]
#[schema(as = Record)]
#[serde(rename_all = "camelCase")]
pub struct RecordDto {
    pub id: String,
    #[schema(value_type = schema::RecordType)]
    pub record_type: &'static str,
    #[schema(value_type = schema::Status)]
    pub status: &'static str,
    pub owner_id: String,
    #[schema(value_type = schema::CustomerType)]
    pub customer_type: &'static str,
    pub id_number: String,
    pub cif: Option<String>,
    pub full_name: Option<String>,
    pub phone: Option<String>,
    pub email: Option<String>,
    pub product: String,
    pub channel: String,
    pub journey_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converted_opportunity_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub converted_from_lead_id: Option<String>,
    pub created_at: String,
    pub updated_at: String,
    /// Status changes, oldest first (single-record reads only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub history: Option<Vec<HistoryDto>>,
}

impl From<Record> for RecordDto {
    fn from(r: Record) -> Self {
        Self {
            id: r.id,
            record_type: r.record_type.as_str(),
            status: r.status.as_str(),
            owner_id: r.owner_id.into_string(),
            customer_type: r.customer_type.as_str(),
            id_number: r.id_number.expose().to_owned(),
            cif: r.cif.map(|v| v.expose().to_owned()),
            full_name: r.full_name.map(|v| v.expose().to_owned()),
            phone: r.phone.map(|v| v.expose().to_owned()),
            email: r.email.map(|v| v.expose().to_owned()),
            product: r.product.into_string(),
            channel: r.channel.into_string(),
            journey_id: r.journey_id.map(JourneyId::into_string),
            converted_opportunity_id: r.converted_opportunity_id,
            converted_from_lead_id: r.converted_from_lead_id,
            created_at: rfc3339(r.created_at),
            updated_at: rfc3339(r.updated_at),
            history: None,
        }
    }
}

impl From<RecordWithHistory> for RecordDto {
    fn from(r: RecordWithHistory) -> Self {
        let mut dto = RecordDto::from(r.record);
        dto.history = Some(r.history.into_iter().map(Into::into).collect());
        dto
    }
}

/// Answer of search (SPEC §3): newest first, without history.
#[derive(Serialize, ToSchema)]
pub struct SearchResponse {
    pub leads: Vec<RecordDto>,
    pub opportunities: Vec<RecordDto>,
}

impl From<SearchResult> for SearchResponse {
    fn from(s: SearchResult) -> Self {
        Self {
            leads: s.leads.into_iter().map(Into::into).collect(),
            opportunities: s.opportunities.into_iter().map(Into::into).collect(),
        }
    }
}

/// `/health/*` answer.
#[derive(Serialize, ToSchema)]
pub struct Health {
    #[schema(example = "UP")]
    pub status: &'static str,
    /// What `/health/ready` adds when events are configured; informative, it never makes the service unready.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub details: Option<HealthDetails>,
}

/// The details of `/health/ready`.
#[derive(Serialize, ToSchema)]
pub struct HealthDetails {
    pub events: EventsHealth,
}

/// The event relay's state (docs/events.md).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct EventsHealth {
    /// Events committed but not yet published.
    pub outbox_pending: u64,
    /// How long the oldest of them has waited, in seconds.
    pub outbox_oldest_age_seconds: f64,
    /// Whether this replica is connected to NATS.
    pub nats_connected: bool,
    /// Whether this replica holds the relay lease (publishes for every replica).
    pub publishing: bool,
}
