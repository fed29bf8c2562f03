//! The SOAP partner API at `/services/Soap/u/XX.X`, limited to `convertLead`: envelope parsing with
//! quick-xml (session id from the `SessionHeader`, the operation, each `leadConverts`), the
//! conversion itself (Account, Contact, optional Opportunity, the lead flagged converted), and the
//! partner WSDL's response and fault shapes.

use crate::dml::{self, Op};
use crate::faults::SfError;
use crate::ids;
use crate::state::{format_date, Record, State};
use quick_xml::escape::escape;
use quick_xml::events::Event;
use quick_xml::Reader;
use serde_json::Value;
use std::collections::HashMap;

const ENVELOPE_OPEN: &str = "<?xml version=\"1.0\" encoding=\"UTF-8\"?><soapenv:Envelope \
xmlns:soapenv=\"http://schemas.xmlsoap.org/soap/envelope/\" xmlns=\"urn:partner.soap.sforce.com\" \
xmlns:sf=\"urn:fault.partner.soap.sforce.com\" xmlns:xsi=\"http://www.w3.org/2001/XMLSchema-instance\">";

/// A parsed SOAP request.
#[derive(Debug, Default)]
pub(crate) struct SoapRequest {
    pub session_id: Option<String>,
    pub operation: Option<String>,
    /// For convertLead: each `leadConverts` as child name → text (`None` for `xsi:nil`).
    pub lead_converts: Vec<HashMap<String, Option<String>>>,
}

fn local(name: &[u8]) -> String {
    let s = String::from_utf8_lossy(name);
    s.rsplit(':').next().unwrap_or_default().to_string()
}

fn is_nil(e: &quick_xml::events::BytesStart) -> bool {
    e.attributes().flatten().any(|a| local(a.key.as_ref()) == "nil" && matches!(&*a.value, b"true" | b"1"))
}

/// Parses an envelope; `Err` carries a description for a `soapenv:Client` fault.
pub(crate) fn parse(raw: &[u8]) -> Result<SoapRequest, String> {
    let mut reader = Reader::from_reader(raw);
    reader.config_mut().trim_text(true);
    let mut stack: Vec<String> = Vec::new();
    let mut req = SoapRequest::default();
    let mut current: Option<HashMap<String, Option<String>>> = None;
    let mut text = String::new();
    let mut buf = Vec::new();
    let mut saw_envelope = false;
    loop {
        let ev = reader.read_event_into(&mut buf).map_err(|e| format!("Unable to parse the request: {e}"))?;
        match ev {
            Event::Start(e) => {
                let name = local(e.name().as_ref());
                if stack.is_empty() {
                    if name != "Envelope" {
                        return Err(format!("Expected a SOAP Envelope, found {name}"));
                    }
                    saw_envelope = true;
                }
                if stack.last().map(String::as_str) == Some("Body") && req.operation.is_none() {
                    req.operation = Some(name.clone());
                }
                if name == "leadConverts" && stack.len() >= 3 {
                    current = Some(HashMap::new());
                }
                if is_nil(&e) {
                    if let (Some(c), true) =
                        (current.as_mut(), stack.last().map(String::as_str) == Some("leadConverts"))
                    {
                        c.insert(name.clone(), None);
                    }
                }
                text.clear();
                stack.push(name);
            }
            Event::Empty(e) => {
                let name = local(e.name().as_ref());
                if stack.last().map(String::as_str) == Some("Body") && req.operation.is_none() {
                    req.operation = Some(name.clone());
                }
                if let (Some(c), true) = (current.as_mut(), stack.last().map(String::as_str) == Some("leadConverts")) {
                    c.insert(name, if is_nil(&e) { None } else { Some(String::new()) });
                }
            }
            Event::Text(t) => {
                let s = t.unescape().map_err(|e| format!("Unable to parse the request: {e}"))?;
                text.push_str(&s);
            }
            Event::CData(t) => text.push_str(&String::from_utf8_lossy(&t)),
            Event::End(_) => {
                let Some(name) = stack.pop() else { return Err("Unbalanced XML".into()) };
                let parent = stack.last().map(String::as_str);
                if name == "sessionId" && parent == Some("SessionHeader") {
                    req.session_id = Some(text.trim().to_string());
                } else if name == "leadConverts" {
                    if let Some(c) = current.take() {
                        req.lead_converts.push(c);
                    }
                } else if parent == Some("leadConverts") {
                    if let Some(c) = current.as_mut() {
                        c.entry(name).or_insert_with(|| Some(text.trim().to_string()));
                    }
                }
                text.clear();
            }
            Event::Eof => break,
            _ => {}
        }
        buf.clear();
    }
    if !saw_envelope || !stack.is_empty() {
        return Err("Unable to parse the request: not a complete SOAP Envelope".into());
    }
    Ok(req)
}

/// A SOAP fault (HTTP 500). `code` like `sf:INVALID_SESSION_ID` or `soapenv:Client`.
pub(crate) fn fault(code: &str, message: &str) -> String {
    let exception = code.strip_prefix("sf:");
    let detail = exception
        .map(|c| {
            format!(
                "<detail><sf:UnexpectedErrorFault xsi:type=\"sf:UnexpectedErrorFault\"><sf:exceptionCode>{c}</sf:exceptionCode>\
<sf:exceptionMessage>{}</sf:exceptionMessage></sf:UnexpectedErrorFault></detail>",
                escape(message)
            )
        })
        .unwrap_or_default();
    let faultstring = match exception {
        Some(c) => format!("{c}: {message}"),
        None => message.to_string(),
    };
    format!(
        "{ENVELOPE_OPEN}<soapenv:Body><soapenv:Fault><faultcode>{code}</faultcode><faultstring>{}</faultstring>{detail}</soapenv:Fault></soapenv:Body></soapenv:Envelope>",
        escape(&faultstring)
    )
}

/// The `INVALID_SESSION_ID` fault.
pub(crate) fn invalid_session_fault() -> String {
    fault("sf:INVALID_SESSION_ID", "Invalid Session ID found in SessionHeader: Illegal Session")
}

/// Result of one conversion.
struct ConvertResult {
    account_id: Option<String>,
    contact_id: Option<String>,
    lead_id: Option<String>,
    opportunity_id: Option<String>,
    errors: Vec<SfError>,
}

fn id_elem(name: &str, v: &Option<String>) -> String {
    match v {
        Some(id) => format!("<{name}>{}</{name}>", escape(id.as_str())),
        None => format!("<{name} xsi:nil=\"true\"/>"),
    }
}

fn result_xml(r: &ConvertResult) -> String {
    let errors: String = r
        .errors
        .iter()
        .map(|e| {
            let fields: String =
                e.fields.iter().flatten().map(|f| format!("<fields>{}</fields>", escape(f.as_str()))).collect();
            format!(
                "<errors>{fields}<message>{}</message><statusCode>{}</statusCode></errors>",
                escape(e.message.as_str()),
                e.code
            )
        })
        .collect();
    format!(
        "<result>{}{}{}{}{}<success>{}</success></result>",
        id_elem("accountId", &r.account_id),
        id_elem("contactId", &r.contact_id),
        errors,
        id_elem("leadId", &r.lead_id),
        id_elem("opportunityId", &r.opportunity_id),
        r.errors.is_empty()
    )
}

fn flag(c: &HashMap<String, Option<String>>, name: &str) -> bool {
    matches!(c.get(name).cloned().flatten().as_deref(), Some("true") | Some("1"))
}

fn text<'a>(c: &'a HashMap<String, Option<String>>, name: &str) -> Option<&'a str> {
    c.get(name).and_then(|v| v.as_deref()).filter(|s| !s.is_empty())
}

fn err(code: &str, message: impl Into<String>, fields: &[&str]) -> SfError {
    SfError::on_fields(code, message, fields)
}

/// Validates an id argument that must name a record of `object`.
fn existing(state: &State, object: &str, raw: &str, field: &str) -> Result<String, SfError> {
    let id = ids::normalize(raw)
        .ok_or_else(|| err("MALFORMED_ID", format!("{field}: id value of incorrect type: {raw}"), &[field]))?;
    if state.get(object, &id).is_none() {
        return Err(err("INVALID_CROSS_REFERENCE_KEY", format!("invalid cross reference id: {raw}"), &[field]));
    }
    Ok(id)
}

fn convert_one(
    state: &mut State,
    c: &HashMap<String, Option<String>>,
    lock_fault: bool,
) -> Result<ConvertResult, SfError> {
    let raw_lead = text(c, "leadId")
        .ok_or_else(|| err("REQUIRED_FIELD_MISSING", "Required fields are missing: [leadId]", &["leadId"]))?;
    let lead_id = existing(state, "Lead", raw_lead, "leadId")?;
    if lock_fault {
        return Err(crate::faults::unable_to_lock_row());
    }
    let lead = state.get("Lead", &lead_id).cloned().unwrap_or_default();
    if lead.get("IsConverted").and_then(Value::as_bool) == Some(true) {
        return Err(err("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", &[]));
    }
    let status = text(c, "convertedStatus").ok_or_else(|| {
        err("REQUIRED_FIELD_MISSING", "Required fields are missing: [convertedStatus]", &["convertedStatus"])
    })?;
    let status_ok = state.data.records.get("LeadStatus").is_some_and(|m| {
        m.values().any(|r| {
            r.get("ApiName").and_then(Value::as_str) == Some(status)
                && r.get("IsConverted").and_then(Value::as_bool) == Some(true)
        })
    });
    if !status_ok {
        return Err(err("INVALID_STATUS", format!("invalid convertedStatus: {status}"), &[]));
    }
    let owner = match text(c, "ownerId") {
        Some(raw) => {
            let id = existing(state, "User", raw, "ownerId")?;
            if state.get("User", &id).and_then(|u| u.get("IsActive")).and_then(Value::as_bool) != Some(true) {
                return Err(err(
                    "INACTIVE_OWNER_OR_USER",
                    format!("operation performed with inactive user [{id}] as owner of record"),
                    &[],
                ));
            }
            id
        }
        None => lead
            .get("OwnerId")
            .and_then(Value::as_str)
            .map(str::to_string)
            .unwrap_or_else(|| state.integration_user_id.clone()),
    };
    let account_arg = text(c, "accountId").map(|raw| existing(state, "Account", raw, "accountId")).transpose()?;
    let contact_arg = text(c, "contactId").map(|raw| existing(state, "Contact", raw, "contactId")).transpose()?;
    if let Some(contact) = &contact_arg {
        let parent =
            state.get("Contact", contact).and_then(|r| r.get("AccountId")).and_then(Value::as_str).map(str::to_string);
        if account_arg.is_none() || parent != account_arg {
            return Err(err(
                "INVALID_CROSS_REFERENCE_KEY",
                "The contact must belong to the specified account",
                &["contactId"],
            ));
        }
    }
    let lead_text = |name: &str| lead.get(name).cloned().unwrap_or(Value::Null);
    let company = lead.get("Company").and_then(Value::as_str).unwrap_or_default().to_string();
    let no_opp = flag(c, "doNotCreateOpportunity");
    let opp_name = text(c, "opportunityName").map(str::to_string).unwrap_or_else(|| company.clone());
    if !no_opp && opp_name.chars().count() > 120 {
        return Err(err(
            "STRING_TOO_LONG",
            format!("Name: data value too large: {opp_name} (max length=120)"),
            &["opportunityName"],
        ));
    }

    let account_id = match account_arg {
        Some(id) => id,
        None => {
            let mut a = Record::new();
            a.insert("Name".into(), Value::String(company.clone()));
            a.insert("OwnerId".into(), Value::String(owner.clone()));
            dml::check_rules(state, "Account", &a, None, Op::Insert)?;
            state.store_new("Account", a, None)
        }
    };
    let contact_id = match contact_arg {
        Some(id) => id,
        None => {
            let mut ct = Record::new();
            ct.insert("LastName".into(), lead_text("LastName"));
            ct.insert("FirstName".into(), lead_text("FirstName"));
            ct.insert("Email".into(), lead_text("Email"));
            ct.insert("Phone".into(), lead_text("Phone"));
            ct.insert("AccountId".into(), Value::String(account_id.clone()));
            ct.insert("OwnerId".into(), Value::String(owner.clone()));
            dml::check_rules(state, "Contact", &ct, None, Op::Insert)?;
            state.store_new("Contact", ct, None)
        }
    };
    let opportunity_id = if no_opp {
        None
    } else {
        let stage = state
            .schema
            .opportunity_stages
            .iter()
            .find(|s| !s.is_closed)
            .map(|s| s.api_name.clone())
            .unwrap_or_else(|| "Prospecting".into());
        let mut o = Record::new();
        o.insert("Name".into(), Value::String(opp_name));
        o.insert("StageName".into(), Value::String(stage));
        o.insert("CloseDate".into(), Value::String(format_date(state.today_plus(30))));
        o.insert("OwnerId".into(), Value::String(owner.clone()));
        o.insert("AccountId".into(), Value::String(account_id.clone()));
        dml::check_rules(state, "Opportunity", &o, None, Op::Insert)?;
        Some(state.store_new("Opportunity", o, None))
    };
    let mut changes = Record::new();
    changes.insert("IsConverted".into(), Value::Bool(true));
    changes.insert("Status".into(), Value::String(status.to_string()));
    changes.insert("ConvertedAccountId".into(), Value::String(account_id.clone()));
    changes.insert("ConvertedContactId".into(), Value::String(contact_id.clone()));
    changes.insert("ConvertedOpportunityId".into(), opportunity_id.clone().map(Value::String).unwrap_or(Value::Null));
    changes.insert("ConvertedDate".into(), Value::String(format_date(state.today())));
    let mut after = lead.clone();
    for (k, v) in &changes {
        after.insert(k.clone(), v.clone());
    }
    dml::check_rules(state, "Lead", &after, Some(&lead_id), Op::Update)?;
    state.store_update("Lead", &lead_id, changes);
    Ok(ConvertResult {
        account_id: Some(account_id),
        contact_id: Some(contact_id),
        lead_id: Some(lead_id),
        opportunity_id,
        errors: Vec::new(),
    })
}

/// Serves an authenticated SOAP request; returns (HTTP status, XML).
pub(crate) fn handle(state: &mut State, req: &SoapRequest, lock_fault: bool) -> (u16, String) {
    let op = req.operation.clone().unwrap_or_default();
    if op != "convertLead" {
        return (
            500,
            fault(
                "soapenv:Client",
                &format!("No operation available for request {{urn:partner.soap.sforce.com}}{op}, please check the WSDL for the service."),
            ),
        );
    }
    if req.lead_converts.len() > 200 {
        return (
            500,
            fault("sf:EXCEEDED_ID_LIMIT", "record limit reached. cannot submit more than 200 records into this call"),
        );
    }
    let mut results = String::new();
    for c in &req.lead_converts {
        // Each conversion is its own transaction: a failure leaves nothing behind.
        let snapshot = state.data.clone();
        let r = match convert_one(state, c, lock_fault) {
            Ok(r) => r,
            Err(e) => {
                state.data = snapshot;
                ConvertResult {
                    account_id: None,
                    contact_id: None,
                    lead_id: text(c, "leadId").and_then(ids::normalize),
                    opportunity_id: None,
                    errors: vec![e],
                }
            }
        };
        results.push_str(&result_xml(&r));
    }
    let limit = format!(
        "<soapenv:Header><LimitInfoHeader><limitInfo><current>{}</current><limit>{}</limit><type>API REQUESTS</type></limitInfo></LimitInfoHeader></soapenv:Header>",
        state.api_used, state.api_max
    );
    (200, format!("{ENVELOPE_OPEN}{limit}<soapenv:Body><convertLeadResponse>{results}</convertLeadResponse></soapenv:Body></soapenv:Envelope>"))
}
