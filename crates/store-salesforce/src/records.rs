//! Between the org's records and ours: which fields are read, how a record's status follows from the org's
//! own flags (`IsConverted`, `IsClosed`, `IsWon`) rather than labels, and the bodies the service writes.

use lifecycle::{
    Channel, Cif, CreateRequest, CustomerType, Email, FullName, IdNumber, JourneyId, Matching, OwnerId, Phone, Product,
    RecordType, Status,
};
use serde_json::{json, Map, Value};
use store::Record;
use time::format_description::FormatItem;
use time::macros::format_description;
use time::OffsetDateTime;

use crate::config::SalesforceConfig;
use crate::soql::literal;

/// What a lead's `LastName` holds when the channel sent no name (Salesforce requires one).
pub(crate) const NO_NAME: &str = "[not provided]";

/// Salesforce's datetime format: `2026-11-27T10:00:00.000+0000`.
const SF_TIME: &[FormatItem<'static>] = format_description!(
    "[year]-[month]-[day]T[hour]:[minute]:[second].[subsecond digits:3][offset_hour sign:mandatory][offset_minute]"
);

pub(crate) fn parse_time(v: Option<&Value>) -> OffsetDateTime {
    v.and_then(Value::as_str)
        .and_then(|s| OffsetDateTime::parse(s, SF_TIME).ok())
        .map(|t| t.to_offset(time::UtcOffset::UTC))
        .unwrap_or(OffsetDateTime::UNIX_EPOCH)
}

fn text<'a>(record: &'a Value, field: &str) -> Option<&'a str> {
    record.get(field).and_then(Value::as_str).filter(|s| !s.is_empty())
}

fn flag(record: &Value, field: &str) -> bool {
    record.get(field).and_then(Value::as_bool).unwrap_or(false)
}

pub(crate) fn id(record: &Value) -> Option<&str> {
    text(record, "Id")
}

pub(crate) fn owner_user(record: &Value) -> Option<&str> {
    text(record, "OwnerId")
}

/// The field list of a full read of `record_type`.
pub(crate) fn select(config: &SalesforceConfig, record_type: RecordType) -> String {
    let f = &config.fields;
    let custom = [&f.id_number, &f.cif, &f.product, &f.customer_type, &f.channel, &f.journey_id];
    let standard: &[&str] = match record_type {
        RecordType::Lead => &[
            "Id",
            "Status",
            "IsConverted",
            "ConvertedOpportunityId",
            "OwnerId",
            "FirstName",
            "LastName",
            "Email",
            "Phone",
            "CreatedDate",
            "LastModifiedDate",
        ],
        RecordType::Opportunity => {
            &["Id", "StageName", "IsClosed", "IsWon", "OwnerId", "CreatedDate", "LastModifiedDate"]
        }
    };
    let mut fields: Vec<&str> = standard.to_vec();
    fields.extend(custom.iter().map(|s| s.as_str()));
    fields.join(", ")
}

/// The `WHERE` conditions of a customer (and product), as matching reads them.
pub(crate) fn customer_filter(config: &SalesforceConfig, id_number: &IdNumber, product: Option<&Product>) -> String {
    let f = &config.fields;
    let mut filter = format!("{} = {}", f.id_number, literal(id_number.expose()));
    if let Some(p) = product {
        filter.push_str(&format!(" AND {} = {}", f.product, literal(p.as_str())));
    }
    filter
}

/// Whether a record read with [`customer_filter`] is really of that customer (and product). SOQL compares
/// text without regard to case, the matching key (and the lock that guards it) does not: `ab12` and `AB12`
/// are two keys, as on the SQL backends.
pub(crate) fn is_of(
    config: &SalesforceConfig,
    record: &Value,
    id_number: &IdNumber,
    product: Option<&Product>,
) -> bool {
    let f = &config.fields;
    let field = |name: &str| record.get(name).and_then(Value::as_str);
    // Stored id numbers are compared without regard to case: the service writes them upper-cased, but a
    // record made by hand in the org may hold `b1234567` (SOQL's `=` already matches it case-insensitively).
    field(&f.id_number).is_some_and(|v| v.eq_ignore_ascii_case(id_number.expose()))
        && product.is_none_or(|p| field(&f.product) == Some(p.as_str()))
}

/// The product a matching read filters on: none when matching by id number alone.
pub(crate) fn matched_product(request: &CreateRequest, matching: Matching) -> Option<&Product> {
    (matching == Matching::IdNumberAndProduct).then_some(&request.product)
}

/// The open records of one type for a matching key, newest first (SPEC §6 reading 3 wants the newest).
pub(crate) fn open_query(
    config: &SalesforceConfig,
    record_type: RecordType,
    request: &CreateRequest,
    matching: Matching,
) -> String {
    let product = matched_product(request, matching);
    let filter = customer_filter(config, &request.customer.id_number, product);
    let open = match record_type {
        RecordType::Lead => format!("IsConverted = false AND Status != {}", literal(&config.statuses.lead_lost)),
        RecordType::Opportunity => "IsClosed = false".to_owned(),
    };
    format!(
        "SELECT Id, OwnerId, {}, {} FROM {} WHERE {filter} AND {open} ORDER BY CreatedDate DESC, Id DESC LIMIT 200",
        config.fields.id_number,
        config.fields.product,
        crate::soql::sobject(record_type)
    )
}

/// A record's status on our side, from the org's flags: a converted lead is `Close Won`; a lead in the
/// configured lost status is `Close Lost`; any other lead status is open. An opportunity is open unless
/// `IsClosed`, and then won or lost by `IsWon`.
pub(crate) fn status(config: &SalesforceConfig, record_type: RecordType, record: &Value) -> Status {
    match record_type {
        RecordType::Lead if flag(record, "IsConverted") => Status::CloseWon,
        RecordType::Lead if text(record, "Status") == Some(config.statuses.lead_lost.as_str()) => Status::CloseLost,
        RecordType::Lead => Status::NewLead,
        RecordType::Opportunity if flag(record, "IsClosed") && flag(record, "IsWon") => Status::CloseWon,
        RecordType::Opportunity if flag(record, "IsClosed") => Status::CloseLost,
        RecordType::Opportunity => Status::NewOpportunity,
    }
}

/// The matching key of a record read from the org. A record without an id number (made by hand without
/// our fields) gets a key of its own, so it is still locked consistently.
pub(crate) fn match_key(
    config: &SalesforceConfig,
    record_type: RecordType,
    record: &Value,
    matching: Matching,
) -> String {
    let f = &config.fields;
    match (text(record, &f.id_number).and_then(|s| IdNumber::parse(s).ok()), text(record, &f.product)) {
        (Some(id_number), Some(product)) => {
            matching.key(&id_number, &Product::from_stored(product.to_owned())).expose().to_owned()
        }
        _ => format!("{}:{}", crate::soql::sobject(record_type), id(record).unwrap_or_default()),
    }
}

/// A full record of the org in the port's terms. `owner_code` is the RM code of its owner, when known.
pub(crate) fn to_record(
    config: &SalesforceConfig,
    record_type: RecordType,
    record: &Value,
    owner_code: Option<String>,
    converted_from_lead_id: Option<String>,
) -> Record {
    let f = &config.fields;
    let owned = |field: &str| text(record, field).map(str::to_owned);
    let customer_type = match text(record, &f.customer_type) {
        Some("ETB") => CustomerType::Etb,
        Some("NTB") => CustomerType::Ntb,
        // Made by hand without our field: a lead is a prospect, an opportunity a customer's.
        _ if record_type == RecordType::Lead => CustomerType::Ntb,
        _ => CustomerType::Etb,
    };
    let (full_name, email, phone) = match record_type {
        RecordType::Lead => to_record_customer(record),
        RecordType::Opportunity => (None, None, None),
    };
    let owner = owner_code.or_else(|| owned("OwnerId")).unwrap_or_default();
    Record {
        id: owned("Id").unwrap_or_default(),
        record_type,
        status: status(config, record_type, record),
        owner_id: OwnerId::from_stored(owner),
        customer_type,
        id_number: IdNumber::from_stored(owned(&f.id_number).unwrap_or_default()),
        cif: owned(&f.cif).map(Cif::from_stored),
        full_name,
        phone,
        email,
        product: Product::from_stored(owned(&f.product).unwrap_or_default()),
        channel: Channel::from_stored(owned(&f.channel).unwrap_or_else(|| "CRM".into())),
        journey_id: owned(&f.journey_id).map(JourneyId::from_stored),
        converted_opportunity_id: match record_type {
            RecordType::Lead => owned("ConvertedOpportunityId"),
            RecordType::Opportunity => None,
        },
        converted_from_lead_id,
        created_at: parse_time(record.get("CreatedDate")),
        updated_at: parse_time(record.get("LastModifiedDate")),
    }
}

/// The lead fields an opportunity converted from it shows as its customer's: Salesforce keeps the name,
/// e-mail and phone on the lead (and the contact made from it), not on the opportunity.
pub(crate) const LEAD_CUSTOMER: &str = "Id, FirstName, LastName, Email, Phone";

/// Gives an opportunity converted from `lead` that lead's name, e-mail and phone.
pub(crate) fn customer_from_lead(record: &mut Record, lead: &Value) {
    let lead = to_record_customer(lead);
    record.full_name = lead.0;
    record.email = lead.1;
    record.phone = lead.2;
}

fn to_record_customer(lead: &Value) -> (Option<FullName>, Option<Email>, Option<Phone>) {
    let name = [text(lead, "FirstName"), text(lead, "LastName").filter(|n| *n != NO_NAME)]
        .into_iter()
        .flatten()
        .collect::<Vec<_>>()
        .join(" ");
    (
        (!name.is_empty()).then(|| FullName::from_stored(name)),
        text(lead, "Email").map(|e| Email::from_stored(e.to_owned())),
        text(lead, "Phone").map(|p| Phone::from_stored(p.to_owned())),
    )
}

fn truncate(s: &str, max: usize) -> String {
    s.chars().take(max).collect()
}

/// Our custom fields, as a create request fills them.
fn custom_fields(config: &SalesforceConfig, body: &mut Map<String, Value>, r: &CreateRequest) {
    let f = &config.fields;
    body.insert(f.id_number.clone(), json!(r.customer.id_number.expose()));
    if let Some(cif) = &r.customer.cif {
        body.insert(f.cif.clone(), json!(cif.expose()));
    }
    body.insert(f.product.clone(), json!(r.product.as_str()));
    body.insert(f.customer_type.clone(), json!(r.customer_type.as_str()));
    body.insert(f.channel.clone(), json!(r.channel.as_str()));
    if let Some(j) = &r.journey_id {
        body.insert(f.journey_id.clone(), json!(j.as_str()));
    }
}

/// An opportunity's `Name` (required, at most 120 characters): the product and the customer's name, or
/// the journey when there is no name.
pub(crate) fn opportunity_name(product: &str, full_name: Option<&str>, journey: Option<&str>) -> String {
    let who = full_name.or(journey).unwrap_or("customer");
    truncate(&format!("{product} - {who}"), 120)
}

/// The body of a new record of `record_type` for `r`, owned by `owner_user`.
pub(crate) fn new_record(
    config: &SalesforceConfig,
    record_type: RecordType,
    r: &CreateRequest,
    owner_user: &str,
    today: time::Date,
) -> Value {
    let mut body = Map::new();
    body.insert("OwnerId".into(), json!(owner_user));
    let full_name = r.customer.full_name.as_ref().map(FullName::expose);
    match record_type {
        RecordType::Lead => {
            // Salesforce requires LastName (80) and Company (255); a retail prospect has no company, so the
            // customer's own name stands in for both.
            body.insert("LastName".into(), json!(truncate(full_name.unwrap_or(NO_NAME), 80)));
            body.insert("Company".into(), json!(truncate(full_name.unwrap_or(NO_NAME), 255)));
            body.insert("Status".into(), json!(config.statuses.lead_open));
            if let Some(e) = &r.customer.email {
                body.insert("Email".into(), json!(e.expose()));
            }
            if let Some(p) = &r.customer.phone {
                body.insert("Phone".into(), json!(p.expose()));
            }
        }
        RecordType::Opportunity => {
            let journey = r.journey_id.as_ref().map(JourneyId::as_str);
            body.insert("Name".into(), json!(opportunity_name(r.product.as_str(), full_name, journey)));
            body.insert("StageName".into(), json!(config.statuses.stage_open));
            body.insert("CloseDate".into(), json!(close_date(config, today)));
        }
    }
    custom_fields(config, &mut body, r);
    Value::Object(body)
}

pub(crate) fn close_date(config: &SalesforceConfig, today: time::Date) -> String {
    let d = today + time::Duration::days(i64::from(config.close_date_days));
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// The update that moves a record to a final status.
pub(crate) fn close_body(config: &SalesforceConfig, record_type: RecordType, to: Status) -> Value {
    match (record_type, to) {
        (RecordType::Lead, _) => json!({ "Status": config.statuses.lead_lost }),
        (RecordType::Opportunity, Status::CloseWon) => json!({ "StageName": config.statuses.stage_won }),
        (RecordType::Opportunity, _) => json!({ "StageName": config.statuses.stage_lost }),
    }
}

/// The update that finishes a conversion: the opportunity at the won stage, closing today, carrying the
/// lead's customer, product, channel and journey (the org's lead field mapping may not copy our fields).
pub(crate) fn won_conversion(config: &SalesforceConfig, lead: &Value, today: time::Date) -> Value {
    let f = &config.fields;
    let mut body = Map::new();
    body.insert("StageName".into(), json!(config.statuses.stage_won));
    body.insert(
        "CloseDate".into(),
        json!(close_date(&SalesforceConfig { close_date_days: 0, ..config.clone() }, today)),
    );
    for field in [&f.id_number, &f.cif, &f.product, &f.customer_type, &f.channel, &f.journey_id] {
        if let Some(v) = lead.get(field.as_str()).filter(|v| !v.is_null()) {
            body.insert(field.clone(), v.clone());
        }
    }
    Value::Object(body)
}

/// The first request field whose value the composite API would read as a reference (`@{…}`) to another
/// subrequest's result. The org then refuses the write (`PROCESSING_HALTED`): the request's data.
pub(crate) fn value_read_as_reference(r: &CreateRequest) -> Option<&'static str> {
    let c = &r.customer;
    [
        ("customer.idNumber", Some(c.id_number.expose())),
        ("customer.cif", c.cif.as_ref().map(Cif::expose)),
        ("customer.fullName", c.full_name.as_ref().map(FullName::expose)),
        ("customer.phone", c.phone.as_ref().map(Phone::expose)),
        ("customer.email", c.email.as_ref().map(Email::expose)),
        ("product", Some(r.product.as_str())),
        ("channel", Some(r.channel.as_str())),
        ("journeyId", r.journey_id.as_ref().map(JourneyId::as_str)),
    ]
    .into_iter()
    .find_map(|(field, value)| value.is_some_and(|v| v.contains("@{")).then_some(field))
}

/// The request field an org field carries, to name it in a 422 `CRM_REJECTED`. Fields the service fills
/// on its own (statuses, names) map to nothing: a refusal there is our configuration.
pub(crate) fn request_field(config: &SalesforceConfig, org_field: &str) -> Option<&'static str> {
    let f = &config.fields;
    let eq = |a: &str| a.eq_ignore_ascii_case(org_field);
    if eq(&f.id_number) {
        Some("customer.idNumber")
    } else if eq(&f.cif) {
        Some("customer.cif")
    } else if eq(&f.product) {
        Some("product")
    } else if eq(&f.customer_type) {
        Some("customerType")
    } else if eq(&f.channel) {
        Some("channel")
    } else if eq(&f.journey_id) {
        Some("journeyId")
    } else if eq("Email") {
        Some("customer.email")
    } else if eq("Phone") {
        Some("customer.phone")
    } else if eq("LastName") || eq("Company") || eq("FirstName") {
        Some("customer.fullName")
    } else if eq("OwnerId") {
        Some("ownerId")
    } else {
        None
    }
}
