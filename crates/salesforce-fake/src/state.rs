//! The org's mutable state behind the mutex: records (the part a transaction snapshots and
//! restores), sessions, the call log, pending faults, API usage and the admin's rules; plus the
//! low-level record helpers every write path shares (ids, timestamps, defaults, derived fields).

use crate::faults::Fault;
use crate::ids;
use crate::schema::{FieldType, Schema};
use serde_json::{Map, Value};
use std::collections::{BTreeMap, HashSet, VecDeque};
use time::{Duration as TimeDuration, OffsetDateTime};

/// What kind of API call a [`Call`] was.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallKind {
    /// `POST /services/data/vXX.X/composite`.
    Composite,
    /// `GET /services/data/vXX.X/query`.
    Query,
    /// `/services/data/vXX.X/sobjects/...` other than describe.
    SObject,
    /// `GET /services/data/vXX.X/sobjects/{Obj}/describe`.
    Describe,
    /// `POST /services/Soap/u/XX.X`.
    Soap,
    /// Anything else (unknown paths included).
    Other,
}

/// One API call the org received (token requests are not API calls).
#[derive(Clone, Debug, PartialEq)]
pub struct Call {
    /// Its kind.
    pub kind: CallKind,
    /// HTTP method.
    pub method: String,
    /// The request target as sent: path, plus `?query` when there is one (still percent-encoded).
    pub path: String,
    /// The body parsed as JSON, when it is JSON.
    pub body: Option<Value>,
    /// The body as text (lossy UTF-8).
    pub raw_body: String,
    /// For a composite call, each subrequest's (method, url) as sent (references unresolved).
    pub subrequests: Vec<(String, String)>,
    /// The `SOAPAction` header, when present.
    pub soap_action: Option<String>,
}

/// One record: field name (schema spelling) → value.
pub(crate) type Record = Map<String, Value>;

/// The transactional part of the state: what a rollback restores.
#[derive(Clone, Debug, Default)]
pub(crate) struct Data {
    /// Object name (schema spelling) → id → record. Ids sort in creation order.
    pub records: BTreeMap<String, BTreeMap<String, Record>>,
    /// Next id sequence number (shared by every object so ids are globally increasing).
    pub next_seq: u64,
    /// Last timestamp handed out, in Unix milliseconds (timestamps never go backwards).
    pub last_ms: i128,
}

/// A validation rule: writing `field = value` on `object` fails with `message`.
#[derive(Clone, Debug)]
pub(crate) struct ValidationRule {
    pub object: String,
    pub field: String,
    pub value: String,
    pub message: String,
}

/// Everything the org holds.
pub(crate) struct State {
    pub client_id: String,
    pub client_secret: String,
    pub jwt_key: Option<jsonwebtoken::DecodingKey>,
    pub jwt_username: String,
    pub api_version: String,
    pub url: String,
    pub org_id: String,
    pub integration_user_id: String,
    pub schema: Schema,
    pub data: Data,
    pub sessions: HashSet<String>,
    pub calls: Vec<Call>,
    pub token_requests: usize,
    pub faults: VecDeque<Fault>,
    pub api_used: u64,
    pub api_max: u64,
    pub validation_rules: Vec<ValidationRule>,
    pub duplicate_rules: Vec<(String, String)>,
}

/// `2026-11-27T10:00:00.000+0000`, Salesforce's datetime format.
pub(crate) fn format_datetime(t: OffsetDateTime) -> String {
    let t = t.to_offset(time::UtcOffset::UTC);
    format!(
        "{:04}-{:02}-{:02}T{:02}:{:02}:{:02}.{:03}+0000",
        t.year(),
        u8::from(t.month()),
        t.day(),
        t.hour(),
        t.minute(),
        t.second(),
        t.millisecond()
    )
}

/// `YYYY-MM-DD`.
pub(crate) fn format_date(d: time::Date) -> String {
    format!("{:04}-{:02}-{:02}", d.year(), u8::from(d.month()), d.day())
}

/// Parses a Salesforce or ISO-8601 datetime (`...+0000`, `...Z`, `...+07:00`).
pub(crate) fn parse_datetime(s: &str) -> Option<OffsetDateTime> {
    use time::format_description::well_known::Rfc3339;
    if let Ok(t) = OffsetDateTime::parse(s, &Rfc3339) {
        return Some(t);
    }
    // +0000 → +00:00
    let b = s.as_bytes();
    if b.len() > 5
        && (b[b.len() - 5] == b'+' || b[b.len() - 5] == b'-')
        && b[b.len() - 4..].iter().all(u8::is_ascii_digit)
    {
        let fixed = format!("{}:{}", &s[..s.len() - 2], &s[s.len() - 2..]);
        return OffsetDateTime::parse(&fixed, &Rfc3339).ok();
    }
    None
}

/// Parses `YYYY-MM-DD`.
pub(crate) fn parse_date(s: &str) -> Option<time::Date> {
    let fmt = time::macros::format_description!("[year]-[month]-[day]");
    if s.len() != 10 {
        return None;
    }
    time::Date::parse(s, &fmt).ok()
}

impl State {
    /// Key prefix of an object (unknown objects get `a00`, like a custom object would).
    pub fn key_prefix(&self, object: &str) -> String {
        self.schema.object(object).map(|o| o.key_prefix.clone()).unwrap_or_else(|| "a00".into())
    }

    /// The schema spelling of an object name (unknown objects keep theirs).
    pub fn object_name(&self, object: &str) -> String {
        self.schema.object(object).map(|o| o.name.clone()).unwrap_or_else(|| object.to_string())
    }

    /// A new id for `object`.
    pub fn next_id(&mut self, object: &str) -> String {
        self.data.next_seq += 1;
        ids::make_id(&self.key_prefix(object), self.data.next_seq)
    }

    /// The current time for a write, never before the previous one (millisecond precision).
    pub fn now(&mut self) -> OffsetDateTime {
        let now = OffsetDateTime::now_utc();
        let ms = now.unix_timestamp_nanos() / 1_000_000;
        let ms = ms.max(self.data.last_ms);
        self.data.last_ms = ms;
        OffsetDateTime::from_unix_timestamp_nanos(ms * 1_000_000).unwrap_or(now)
    }

    /// Today's date (UTC).
    pub fn today(&self) -> time::Date {
        OffsetDateTime::now_utc().date()
    }

    /// Today + `days`.
    pub fn today_plus(&self, days: i64) -> time::Date {
        self.today().checked_add(TimeDuration::days(days)).unwrap_or_else(|| self.today())
    }

    /// The record `object`/`id` (id already normalized).
    pub fn get(&self, object: &str, id: &str) -> Option<&Record> {
        self.data.records.get(&self.object_name(object)).and_then(|m| m.get(id))
    }

    /// Fills defaults, derived fields and system fields on a new record, stores it, returns its id.
    /// No validation: callers validate first (or, for records "made by hand", not at all).
    pub fn store_new(&mut self, object: &str, mut rec: Record, actor: Option<String>) -> String {
        let object = self.object_name(object);
        let id = self.next_id(&object);
        let stamp = Value::String(format_datetime(self.now()));
        let actor = actor.unwrap_or_else(|| self.integration_user_id.clone());
        if let Some(schema) = self.schema.object(&object).cloned() {
            for f in &schema.fields {
                if !rec.contains_key(&f.name) {
                    let default = if f.name == "OwnerId" {
                        Value::String(actor.clone())
                    } else if f.field_type == FieldType::Boolean {
                        Value::Bool(f.name == "IsActive")
                    } else if f.field_type == FieldType::Picklist && f.defaulted_on_create {
                        f.default_picklist_value().map(|v| Value::String(v.into())).unwrap_or(Value::Null)
                    } else {
                        Value::Null
                    };
                    rec.insert(f.name.clone(), default);
                }
            }
            let set = |rec: &mut Record, name: &str, v: Value| {
                if schema.field(name).is_some() {
                    rec.insert(name.to_string(), v);
                }
            };
            set(&mut rec, "Id", Value::String(id.clone()));
            set(&mut rec, "CreatedDate", stamp.clone());
            set(&mut rec, "LastModifiedDate", stamp.clone());
            set(&mut rec, "SystemModstamp", stamp);
            set(&mut rec, "CreatedById", Value::String(actor.clone()));
            set(&mut rec, "LastModifiedById", Value::String(actor));
        } else {
            rec.insert("Id".into(), Value::String(id.clone()));
            rec.insert("CreatedDate".into(), stamp.clone());
            rec.insert("LastModifiedDate".into(), stamp.clone());
            rec.insert("SystemModstamp".into(), stamp);
        }
        self.derive(&object, &mut rec);
        self.data.records.entry(object).or_default().insert(id.clone(), rec);
        id
    }

    /// Applies `changes` (schema spelling) to an existing record and bumps its modification stamps.
    pub fn store_update(&mut self, object: &str, id: &str, changes: Record) {
        let object = self.object_name(object);
        let stamp = Value::String(format_datetime(self.now()));
        let actor = Value::String(self.integration_user_id.clone());
        let Some(mut rec) = self.data.records.get(&object).and_then(|m| m.get(id)).cloned() else {
            return;
        };
        for (k, v) in changes {
            rec.insert(k, v);
        }
        rec.insert("LastModifiedDate".into(), stamp.clone());
        rec.insert("SystemModstamp".into(), stamp);
        rec.insert("LastModifiedById".into(), actor);
        self.derive(&object, &mut rec);
        self.data.records.entry(object).or_default().insert(id.to_string(), rec);
    }

    /// Derived fields: Opportunity IsClosed/IsWon from its stage's `OpportunityStage` row.
    fn derive(&self, object: &str, rec: &mut Record) {
        if object == "Opportunity" {
            let stage = rec.get("StageName").and_then(Value::as_str).unwrap_or_default().to_string();
            let row =
                self.data.records.get("OpportunityStage").and_then(|m| {
                    m.values().find(|r| r.get("ApiName").and_then(Value::as_str) == Some(stage.as_str()))
                });
            let flag = |name: &str| row.and_then(|r| r.get(name)).and_then(Value::as_bool).unwrap_or(false);
            rec.insert("IsClosed".into(), Value::Bool(flag("IsClosed")));
            rec.insert("IsWon".into(), Value::Bool(flag("IsWon")));
        }
    }

    /// Takes the next pending fault, if any.
    pub fn take_fault(&mut self) -> Option<Fault> {
        self.faults.pop_front()
    }

    /// The `Sforce-Limit-Info` header value.
    pub fn limit_info(&self) -> String {
        format!("api-usage={}/{}", self.api_used, self.api_max)
    }

    /// The REST url of a record.
    pub fn record_url(&self, object: &str, id: &str) -> String {
        format!("/services/data/v{}/sobjects/{}/{}", self.api_version, object, id)
    }

    /// The seed rows: the integration user, LeadStatus and OpportunityStage.
    pub fn seed(&mut self) {
        let mut user = Record::new();
        user.insert("Username".into(), Value::String(self.jwt_username.clone()));
        user.insert("Name".into(), Value::String("Integration User".into()));
        user.insert("IsActive".into(), Value::Bool(true));
        user.insert("FederationIdentifier".into(), Value::Null);
        // The integration user owns (and created) itself.
        self.integration_user_id = ids::make_id("005", self.data.next_seq + 1);
        let id = self.store_new("User", user, None);
        self.integration_user_id = id;

        let allowed = |schema: &Schema, obj: &str, field: &str, value: &str| {
            schema
                .object(obj)
                .and_then(|o| o.field(field))
                .is_some_and(|f| f.picklist_values.iter().any(|v| v.value == value))
        };
        for s in self.schema.lead_statuses.clone() {
            if !allowed(&self.schema, "Lead", "Status", &s.api_name) {
                continue;
            }
            let mut r = Record::new();
            r.insert("ApiName".into(), Value::String(s.api_name.clone()));
            r.insert("MasterLabel".into(), Value::String(s.api_name.clone()));
            r.insert("IsConverted".into(), Value::Bool(s.is_converted));
            r.insert("IsDefault".into(), Value::Bool(s.is_default));
            self.store_new("LeadStatus", r, None);
        }
        for s in self.schema.opportunity_stages.clone() {
            if !allowed(&self.schema, "Opportunity", "StageName", &s.api_name) {
                continue;
            }
            let mut r = Record::new();
            r.insert("ApiName".into(), Value::String(s.api_name.clone()));
            r.insert("MasterLabel".into(), Value::String(s.api_name.clone()));
            r.insert("IsClosed".into(), Value::Bool(s.is_closed));
            r.insert("IsWon".into(), Value::Bool(s.is_won));
            r.insert("IsActive".into(), Value::Bool(true));
            self.store_new("OpportunityStage", r, None);
        }
    }
}
