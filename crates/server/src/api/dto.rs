//! The wire formats of SPEC §2–3: request schemas (for the OpenAPI document), the parsers that turn a
//! request body into domain types, and the response bodies.

use lifecycle::{
    Channel, Cif, CreateRequest, CreateResult, Customer, CustomerType, Email, FullName, IdNumber, Invalid, JourneyId,
    OwnerId, Phone, Product, Reason, RecordType, Status,
};
use serde::Serialize;
use serde_json::Value;
use store::{CloseWonOutcome, CreateOutcome, HistoryEntry, Record, RecordRef, RecordWithHistory, SearchResult};
use time::format_description::well_known::Rfc3339;
use time::OffsetDateTime;
use utoipa::ToSchema;

use super::error::ApiError;
use super::fields::Fields;

// ---------------------------------------------------------------- requests (schemas for the document)

/// `NTB` (New To Bank) or `ETB` (Existing To Bank).
#[derive(ToSchema)]
#[schema(as = CustomerType)]
#[allow(dead_code, clippy::upper_case_acronyms)]
pub enum CustomerTypeDto {
    NTB,
    ETB,
}

/// A record's status, exactly as on the wire (SPEC §1).
#[derive(ToSchema)]
#[schema(as = Status)]
#[allow(dead_code)]
pub enum StatusDto {
    #[schema(rename = "New Lead")]
    NewLead,
    #[schema(rename = "New Opportunity")]
    NewOpportunity,
    #[schema(rename = "Close Won")]
    CloseWon,
    #[schema(rename = "Close Lost")]
    CloseLost,
}

/// The kind of record.
#[derive(ToSchema)]
#[schema(as = RecordType)]
#[allow(dead_code, clippy::upper_case_acronyms)]
pub enum RecordTypeDto {
    LEAD,
    OPPORTUNITY,
}

/// What a create did: `CREATED` (201), `REPLACED` (201: records of another RM closed) or `EXISTING` (200).
#[derive(ToSchema)]
#[schema(as = CreateResult)]
#[allow(dead_code, clippy::upper_case_acronyms)]
pub enum CreateResultDto {
    CREATED,
    REPLACED,
    EXISTING,
}

/// The customer a journey is for. Personal data: never logged unmasked.
#[derive(ToSchema)]
#[schema(as = Customer)]
#[allow(dead_code, non_snake_case)]
pub struct CustomerDto {
    /// National ID or passport number: 1–32 of `A-Z a-z 0-9 -`. With `product`, the matching key.
    #[schema(example = "079123456789", pattern = "^[A-Za-z0-9-]{1,32}$")]
    idNumber: String,
    /// Customer number; required for ETB.
    #[schema(example = json!(null))]
    cif: Option<String>,
    #[schema(example = "Nguyen Van A", max_length = 200)]
    fullName: Option<String>,
    /// 6–20 digits with an optional leading `+`.
    #[schema(example = "+84901234567", pattern = "^\\+?[0-9]{6,20}$")]
    phone: Option<String>,
    #[schema(example = "a@example.com", format = "email")]
    email: Option<String>,
}

/// Body of the create operation (SPEC §2.1). Unknown fields are ignored.
#[derive(ToSchema)]
#[schema(as = CreateLeadOpportunityRequest)]
#[allow(dead_code, non_snake_case)]
pub struct CreateRequestDto {
    customerType: CustomerTypeDto,
    customer: CustomerDto,
    #[schema(example = "CREDIT_CARD", min_length = 1, max_length = 64)]
    product: String,
    /// The relationship manager's code.
    #[schema(example = "RM001", min_length = 1, max_length = 64)]
    ownerId: String,
    #[schema(example = "MOBILE_APP", min_length = 1, max_length = 64)]
    channel: String,
    #[schema(example = "J-2026-000123", max_length = 128)]
    journeyId: Option<String>,
}

/// Body of close-won (SPEC §2.2): exactly one of `leadId` and `opportunityId`.
#[derive(ToSchema)]
#[schema(as = CloseWonRequest)]
#[allow(dead_code, non_snake_case)]
pub struct CloseWonRequestDto {
    #[schema(min_length = 1, max_length = 128)]
    leadId: Option<String>,
    #[schema(min_length = 1, max_length = 128)]
    opportunityId: Option<String>,
    /// Only with `leadId`; default `true`: convert the lead into a `Close Won` opportunity.
    #[schema(default = true)]
    convertToOpportunity: Option<bool>,
    #[schema(example = "MOBILE_APP")]
    channel: String,
    reason: Option<String>,
}

/// The only status the close-lost operations accept.
#[derive(ToSchema)]
#[allow(dead_code)]
pub enum CloseLostStatus {
    #[schema(rename = "Close Lost")]
    CloseLost,
}

/// Body of close-lost for an opportunity (SPEC §2.3).
#[derive(ToSchema)]
#[schema(as = CloseLostOpportunityRequest)]
#[allow(dead_code, non_snake_case)]
pub struct CloseLostOpportunityRequestDto {
    #[schema(min_length = 1, max_length = 128)]
    opportunityId: String,
    status: CloseLostStatus,
    #[schema(example = "LENDING_APP")]
    channel: String,
    /// For example `NCB_REJECTED` or `AML_REJECTED`.
    #[schema(example = "NCB_REJECTED")]
    reason: Option<String>,
}

/// Body of close-lost for a lead (SPEC §2.4).
#[derive(ToSchema)]
#[schema(as = CloseLostLeadRequest)]
#[allow(dead_code, non_snake_case)]
pub struct CloseLostLeadRequestDto {
    #[schema(min_length = 1, max_length = 128)]
    leadId: String,
    status: CloseLostStatus,
    #[schema(example = "MOBILE_APP")]
    channel: String,
    #[schema(example = "AML_REJECTED")]
    reason: Option<String>,
}

/// Body of search (SPEC §3). A POST, so the id number never travels in a URL.
#[derive(ToSchema)]
#[schema(as = SearchRequest)]
#[allow(dead_code, non_snake_case)]
pub struct SearchRequestDto {
    #[schema(example = "079123456789", pattern = "^[A-Za-z0-9-]{1,32}$")]
    idNumber: String,
    #[schema(min_length = 1, max_length = 64)]
    product: Option<String>,
}

// ---------------------------------------------------------------- requests (parsers)

/// Record ids are opaque, but bounded: 1–128 characters, no control characters.
fn record_id(s: &str) -> Result<String, Invalid> {
    if s.is_empty() || s.chars().count() > 128 || s.chars().any(char::is_control) {
        return Err(Invalid("must be 1-128 characters without control characters"));
    }
    Ok(s.to_owned())
}

pub fn parse_create(body: &Value) -> Result<CreateRequest, ApiError> {
    let mut f = Fields::default();
    let root = f.root(body);
    let customer_type = f.required(root, "customerType", CustomerType::parse);
    let c = f.object(root, "customer", "customer.");
    let id_number = f.required(c, "idNumber", IdNumber::parse);
    let cif = match customer_type {
        Some(CustomerType::Etb) => f.required(c, "cif", Cif::parse),
        _ => f.optional(c, "cif", Cif::parse),
    };
    let full_name = f.optional(c, "fullName", FullName::parse);
    let phone = f.optional(c, "phone", Phone::parse);
    let email = f.optional(c, "email", Email::parse);
    let product = f.required(root, "product", Product::parse);
    let owner_id = f.required(root, "ownerId", OwnerId::parse);
    let channel = f.required(root, "channel", Channel::parse);
    let journey_id = f.optional(root, "journeyId", JourneyId::parse);
    f.finish()?;
    let (Some(customer_type), Some(id_number), Some(product), Some(owner_id), Some(channel)) =
        (customer_type, id_number, product, owner_id, channel)
    else {
        return Err(ApiError::Internal); // unreachable: finish() reported every missing field
    };
    Ok(CreateRequest {
        customer_type,
        customer: Customer { id_number, cif, full_name, phone, email },
        product,
        owner_id,
        channel,
        journey_id,
    })
}

/// A validated close-won request.
pub struct CloseWonCommand {
    pub record_type: RecordType,
    pub id: String,
    pub convert: bool,
    pub channel: Channel,
    pub reason: Option<Reason>,
}

pub fn parse_close_won(body: &Value) -> Result<CloseWonCommand, ApiError> {
    let mut f = Fields::default();
    let root = f.root(body);
    let lead = f.optional(root, "leadId", record_id);
    let opportunity = f.optional(root, "opportunityId", record_id);
    let (has_lead, has_opp) = (Fields::present(root, "leadId"), Fields::present(root, "opportunityId"));
    if body.is_object() && has_lead == has_opp {
        let msg = "exactly one of leadId and opportunityId is required";
        f.reject(root, "leadId", msg);
        f.reject(root, "opportunityId", msg);
    }
    let convert = f.optional_bool(root, "convertToOpportunity");
    if has_opp && !has_lead && matches!(convert, Some(Some(_))) {
        f.reject(root, "convertToOpportunity", "applies only with leadId");
    }
    let channel = f.required(root, "channel", Channel::parse);
    let reason = f.optional(root, "reason", Reason::parse);
    f.finish()?;
    let target = lead.map(|id| (RecordType::Lead, id)).or(opportunity.map(|id| (RecordType::Opportunity, id)));
    let (Some((record_type, id)), Some(channel)) = (target, channel) else {
        return Err(ApiError::Internal);
    };
    Ok(CloseWonCommand { record_type, id, convert: convert.flatten().unwrap_or(true), channel, reason })
}

/// A validated close-lost request.
pub struct CloseLostCommand {
    pub id: String,
    pub channel: Channel,
    pub reason: Option<Reason>,
}

pub fn parse_close_lost(body: &Value, id_field: &str) -> Result<CloseLostCommand, ApiError> {
    let mut f = Fields::default();
    let root = f.root(body);
    let id = f.required(root, id_field, record_id);
    f.required(root, "status", |s| match Status::parse(s) {
        Ok(Status::CloseLost) => Ok(()),
        _ => Err(Invalid("must be Close Lost")),
    });
    let channel = f.required(root, "channel", Channel::parse);
    let reason = f.optional(root, "reason", Reason::parse);
    f.finish()?;
    let (Some(id), Some(channel)) = (id, channel) else {
        return Err(ApiError::Internal);
    };
    Ok(CloseLostCommand { id, channel, reason })
}

pub fn parse_search(body: &Value) -> Result<(IdNumber, Option<Product>), ApiError> {
    let mut f = Fields::default();
    let root = f.root(body);
    let id_number = f.required(root, "idNumber", IdNumber::parse);
    let product = f.optional(root, "product", Product::parse);
    f.finish()?;
    let Some(id_number) = id_number else {
        return Err(ApiError::Internal);
    };
    Ok((id_number, product))
}

// ---------------------------------------------------------------- responses

fn rfc3339(t: OffsetDateTime) -> String {
    t.format(&Rfc3339).unwrap_or_default()
}

/// Answer of the create operation (SPEC §2.1).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CreateResponse {
    #[schema(value_type = CreateResultDto)]
    pub result: &'static str,
    #[schema(value_type = RecordTypeDto)]
    pub record_type: &'static str,
    pub id: String,
    #[schema(value_type = StatusDto)]
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
    #[schema(value_type = StatusDto)]
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
    #[schema(value_type = StatusDto)]
    pub status: &'static str,
}

/// Answer of close-lost for a lead (SPEC §2.4).
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct CloseLostLeadResponse {
    pub lead_id: String,
    #[schema(value_type = StatusDto)]
    pub status: &'static str,
}

/// One status change.
#[derive(Serialize, ToSchema)]
#[serde(rename_all = "camelCase")]
pub struct HistoryDto {
    /// `null` at creation.
    #[schema(value_type = Option<StatusDto>)]
    pub from: Option<&'static str>,
    #[schema(value_type = StatusDto)]
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
    #[schema(value_type = RecordTypeDto)]
    pub record_type: &'static str,
    #[schema(value_type = StatusDto)]
    pub status: &'static str,
    pub owner_id: String,
    #[schema(value_type = CustomerTypeDto)]
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
}

#[cfg(test)]
mod tests {
    //! Property tests of the parsing edge: no input panics; whatever passes satisfies the contract; and a
    //! valid body with one field spoiled is refused naming exactly that field.

    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::*;

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            "\\PC{0,40}".prop_map(Value::String),
            "[A-Za-z0-9-]{1,33}".prop_map(Value::String),
            prop::sample::select(vec!["NTB", "ETB", "Close Lost", "Close Won", ""]).prop_map(|s| json!(s)),
        ];
        leaf.prop_recursive(3, 24, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map(
                    prop::sample::select(vec![
                        "customerType",
                        "customer",
                        "idNumber",
                        "cif",
                        "phone",
                        "email",
                        "fullName",
                        "product",
                        "ownerId",
                        "channel",
                        "journeyId",
                        "leadId",
                        "opportunityId",
                        "convertToOpportunity",
                        "status",
                        "reason",
                        "other",
                    ])
                    .prop_map(str::to_owned),
                    inner,
                    0..8
                )
                .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    fn errors(e: ApiError) -> Vec<String> {
        match e {
            ApiError::Validation(errors) => errors.into_iter().map(|e| e.field).collect(),
            other => panic!("not a validation error: {other:?}"),
        }
    }

    fn valid_create() -> Value {
        json!({"customerType": "ETB", "customer": {"idNumber": "079123456789", "cif": "C1", "fullName": "A B",
               "phone": "+84901234567", "email": "a@example.com"},
               "product": "CARD", "ownerId": "RM001", "channel": "MOBILE_APP", "journeyId": "J1"})
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]

        #[test]
        fn parsers_never_panic_and_accept_only_valid_requests(v in any_json()) {
            match parse_create(&v) {
                Ok(r) => {
                    prop_assert!(IdNumber::parse(r.customer.id_number.expose()).is_ok());
                    prop_assert!(r.customer_type != CustomerType::Etb || r.customer.cif.is_some());
                }
                Err(e) => prop_assert!(!errors(e).is_empty()),
            }
            match parse_close_won(&v) {
                Ok(c) => prop_assert!(!c.id.is_empty()),
                Err(e) => prop_assert!(!errors(e).is_empty()),
            }
            match parse_close_lost(&v, "leadId") {
                Ok(c) => {
                    prop_assert_eq!(v["status"].as_str(), Some("Close Lost"));
                    prop_assert!(!c.id.is_empty());
                }
                Err(e) => prop_assert!(!errors(e).is_empty()),
            }
            if let Err(e) = parse_search(&v) {
                prop_assert!(!errors(e).is_empty());
            }
        }

        #[test]
        fn one_spoiled_field_is_named(
            field in prop::sample::select(vec![
                "customerType", "customer.idNumber", "customer.cif", "customer.phone", "customer.email",
                "customer.fullName", "product", "ownerId", "channel", "journeyId",
            ]),
            bad in prop_oneof![Just(json!(12)), Just(json!([])), Just(json!({})), Just(json!(true)), Just(json!("")), "\\PC{300,310}".prop_map(Value::String)],
        ) {
            let mut body = valid_create();
            match field.split_once('.') {
                Some((outer, inner)) => body[outer][inner] = bad,
                None => body[field] = bad,
            }
            prop_assert_eq!(errors(parse_create(&body).unwrap_err()), vec![field.to_owned()]);
        }
    }

    #[test]
    fn the_valid_body_parses() {
        let r = parse_create(&valid_create()).unwrap();
        assert_eq!(r.customer.cif.unwrap().expose(), "C1");
        assert_eq!(r.owner_id.as_str(), "RM001");
    }
}
