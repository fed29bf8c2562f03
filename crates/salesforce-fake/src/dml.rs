//! Record writes through the API (sObject create/update/delete, composite subrequests, lead
//! conversion): field checks against the schema, in Salesforce's error vocabulary, then the
//! admin's validation and duplicate rules, then the unique External ID.

use crate::faults::SfError;
use crate::ids;
use crate::schema::{FieldDef, FieldType, ObjectSchema};
use crate::state::{parse_date, parse_datetime, Record, State};
use serde_json::{json, Value};

/// Insert or update.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Op {
    Insert,
    Update,
}

/// The schema of a writable object, or `NOT_FOUND` (unknown type) / `INVALID_TYPE` (read-only type).
pub(crate) fn writable_object(state: &State, object: &str) -> Result<ObjectSchema, SfError> {
    let schema = state.schema.object(object).cloned().ok_or_else(crate::faults::not_found)?;
    if !schema.writable {
        return Err(SfError::new(
            400,
            "INVALID_TYPE",
            format!("sObject type '{}' is not supported for this operation.", schema.name),
        ));
    }
    Ok(schema)
}

/// Turns a JSON value into the stored value of `field`, or a `JSON_PARSER_ERROR`.
fn coerce(field: &FieldDef, value: &Value) -> Result<Value, SfError> {
    let bad = |what: &str| {
        crate::faults::json_parser_error(format!(
            "Cannot deserialize instance of {what} from {} value {} or request may be missing a required field",
            match value {
                Value::String(_) => "VALUE_STRING",
                Value::Number(_) => "VALUE_NUMBER",
                Value::Bool(_) => "VALUE_TRUE",
                Value::Array(_) => "START_ARRAY",
                Value::Object(_) => "START_OBJECT",
                Value::Null => "VALUE_NULL",
            },
            value
        ))
    };
    if value.is_null() {
        return Ok(Value::Null);
    }
    match field.field_type {
        FieldType::Boolean => value.as_bool().map(Value::Bool).ok_or_else(|| bad("boolean")),
        FieldType::Double => match value {
            Value::Number(_) => Ok(value.clone()),
            Value::String(s) => s.trim().parse::<f64>().map(|_| value.clone()).map_err(|_| bad("double")),
            _ => Err(bad("double")),
        },
        FieldType::Date => {
            let s = value.as_str().ok_or_else(|| bad("date"))?;
            if s.is_empty() {
                return Ok(Value::Null);
            }
            parse_date(s).map(|_| Value::String(s.to_string())).ok_or_else(|| bad("date"))
        }
        FieldType::DateTime => {
            let s = value.as_str().ok_or_else(|| bad("datetime"))?;
            parse_datetime(s).map(|t| Value::String(crate::state::format_datetime(t))).ok_or_else(|| bad("datetime"))
        }
        _ => {
            let s = match value {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                Value::Bool(b) => b.to_string(),
                _ => return Err(bad("string")),
            };
            // Salesforce stores an empty string as null.
            Ok(if s.is_empty() { Value::Null } else { Value::String(s) })
        }
    }
}

fn valid_email(s: &str) -> bool {
    let Some((local, domain)) = s.split_once('@') else { return false };
    !local.is_empty()
        && !domain.is_empty()
        && !domain.contains('@')
        && domain.contains('.')
        && !domain.starts_with('.')
        && !domain.ends_with('.')
        && !s.chars().any(|c| c.is_whitespace() || c == ',' || c == ';' || c == '<' || c == '>')
}

/// Checks the body of a write and returns the changes in schema spelling.
fn parse_body(schema: &ObjectSchema, body: &Value, op: Op) -> Result<Record, SfError> {
    let obj = body.as_object().ok_or_else(|| {
        crate::faults::json_parser_error("Cannot deserialize instance of sObject from a non-object value")
    })?;
    let mut changes = Record::new();
    for (key, value) in obj {
        if key == "attributes" {
            continue;
        }
        let Some(field) = schema.field(key) else {
            return Err(SfError::on_fields(
                "INVALID_FIELD",
                format!("No such column '{key}' on sobject of type {}", schema.name),
                &[],
            ));
        };
        let allowed = match op {
            Op::Insert => field.createable,
            Op::Update => field.updateable,
        };
        if !allowed {
            return Err(SfError::on_fields(
                "INVALID_FIELD_FOR_INSERT_UPDATE",
                format!(
                    "Unable to create/update fields: {}. Please check the security settings of this field and verify that it is read/write for your profile or permission set.",
                    field.name
                ),
                &[&field.name],
            ));
        }
        changes.insert(field.name.clone(), coerce(field, value)?);
    }
    Ok(changes)
}

/// Field-level checks of the record as it would be after the write.
fn check_fields(state: &State, schema: &ObjectSchema, after: &Record, changes: &Record, op: Op) -> Result<(), SfError> {
    let missing: Vec<&str> = schema
        .fields
        .iter()
        .filter(|f| f.is_required())
        .filter(|f| match op {
            Op::Insert => after.get(&f.name).is_none_or(Value::is_null),
            Op::Update => changes.get(&f.name).is_some_and(Value::is_null),
        })
        .map(|f| f.name.as_str())
        .collect();
    if !missing.is_empty() {
        return Err(SfError::on_fields(
            "REQUIRED_FIELD_MISSING",
            format!("Required fields are missing: [{}]", missing.join(", ")),
            &missing,
        ));
    }
    for (name, value) in changes {
        let Some(field) = schema.field(name) else { continue };
        let Some(text) = value.as_str() else { continue };
        if field.field_type.is_text() && field.length > 0 && text.chars().count() > field.length as usize {
            return Err(SfError::on_fields(
                "STRING_TOO_LONG",
                format!("{}: data value too large: {} (max length={})", field.label, text, field.length),
                &[&field.name],
            ));
        }
        match field.field_type {
            FieldType::Picklist
                if field.restricted_picklist && !field.picklist_values.iter().any(|v| v.active && v.value == text) =>
            {
                return Err(SfError::on_fields(
                    "INVALID_OR_NULL_FOR_RESTRICTED_PICKLIST",
                    format!("{}: bad value for restricted picklist field: {}", field.label, text),
                    &[&field.name],
                ));
            }
            FieldType::Email if !valid_email(text) => {
                return Err(SfError::on_fields(
                    "INVALID_EMAIL_ADDRESS",
                    format!("{}: invalid email address: {}", field.label, text),
                    &[&field.name],
                ));
            }
            FieldType::Reference => check_reference(state, field, text)?,
            _ => {}
        }
    }
    Ok(())
}

/// A reference must be a well-formed id of a record of the target object; an owner must be active.
fn check_reference(state: &State, field: &FieldDef, raw: &str) -> Result<(), SfError> {
    let Some(id) = ids::normalize(raw) else {
        return Err(SfError::on_fields(
            "MALFORMED_ID",
            format!("{}: id value of incorrect type: {}", field.label, raw),
            &[&field.name],
        ));
    };
    let target = field.reference_to.iter().find_map(|t| state.get(t, &id).map(|r| (t.clone(), r)));
    let Some((target_obj, rec)) = target else {
        return Err(SfError::on_fields(
            "INVALID_CROSS_REFERENCE_KEY",
            format!("{}: invalid cross reference id", field.label),
            &[&field.name],
        ));
    };
    if target_obj == "User" && rec.get("IsActive").and_then(Value::as_bool) != Some(true) {
        return Err(SfError::on_fields(
            "INACTIVE_OWNER_OR_USER",
            format!("operation performed with inactive user [{id}] as owner of record"),
            &[],
        ));
    }
    Ok(())
}

/// The admin's rules, then uniqueness. `self_id` is the record being updated (excluded from
/// uniqueness checks).
pub(crate) fn check_rules(
    state: &State,
    object: &str,
    after: &Record,
    self_id: Option<&str>,
    op: Op,
) -> Result<(), SfError> {
    for rule in state.validation_rules.iter().filter(|r| r.object.eq_ignore_ascii_case(object)) {
        let hit =
            after.iter().any(|(k, v)| k.eq_ignore_ascii_case(&rule.field) && v.as_str() == Some(rule.value.as_str()));
        if hit {
            return Err(SfError::on_fields("FIELD_CUSTOM_VALIDATION_EXCEPTION", rule.message.clone(), &[]));
        }
    }
    let schema = state.schema.object(object);
    let existing = state.data.records.get(object);
    let others = || existing.into_iter().flat_map(|m| m.iter()).filter(|(id, _)| Some(id.as_str()) != self_id);
    if op == Op::Insert {
        for (obj, field) in state.duplicate_rules.iter().filter(|(o, _)| o.eq_ignore_ascii_case(object)) {
            let value = after.iter().find(|(k, _)| k.eq_ignore_ascii_case(field)).and_then(|(_, v)| v.as_str());
            let Some(value) = value else { continue };
            let matches: Vec<&String> = others()
                .filter(|(_, r)| r.iter().any(|(k, v)| k.eq_ignore_ascii_case(field) && v.as_str() == Some(value)))
                .map(|(id, _)| id)
                .collect();
            if !matches.is_empty() {
                let mut err = SfError::new(400, "DUPLICATES_DETECTED", "Use one of these records?");
                err.duplicate_result = Some(json!({
                    "allowSave": false,
                    "duplicateRule": format!("{obj}_{field}_Duplicate_Rule"),
                    "duplicateRuleEntityType": obj,
                    "errorMessage": "You're creating a duplicate record. We recommend you use an existing record instead.",
                    "matchResults": [{
                        "entityType": obj,
                        "errors": [],
                        "matchEngine": "ExactMatchEngine",
                        "matchRecords": matches.iter().map(|id| json!({
                            "additionalInformation": [],
                            "fieldDiffs": [],
                            "matchConfidence": 100.0,
                            "record": { "attributes": { "type": obj, "url": state.record_url(obj, id) }, "Id": id },
                        })).collect::<Vec<_>>(),
                        "rule": format!("{obj}_{field}_Match_Rule"),
                        "size": matches.len(),
                        "success": true,
                    }],
                }));
                return Err(err);
            }
        }
    }
    if let Some(schema) = schema {
        for field in schema.fields.iter().filter(|f| f.unique) {
            let Some(value) = after.get(&field.name).and_then(Value::as_str) else { continue };
            let dup = others().find(|(_, r)| {
                r.get(&field.name).and_then(Value::as_str).is_some_and(|v| v.eq_ignore_ascii_case(value))
            });
            if let Some((id, _)) = dup {
                return Err(SfError::on_fields(
                    "DUPLICATE_VALUE",
                    format!("duplicate value found: {} duplicates value on record with id: {}", field.name, id),
                    &[],
                ));
            }
        }
    }
    Ok(())
}

/// `POST /sobjects/{object}`: validates and creates; returns the new id.
pub(crate) fn insert(state: &mut State, object: &str, body: &Value) -> Result<String, SfError> {
    let schema = writable_object(state, object)?;
    let changes = parse_body(&schema, body, Op::Insert)?;
    let mut after = changes.clone();
    for f in &schema.fields {
        if !after.contains_key(&f.name) || (after.get(&f.name).is_some_and(Value::is_null) && f.defaulted_on_create) {
            if f.name == "OwnerId" {
                after.insert(f.name.clone(), Value::String(state.integration_user_id.clone()));
            } else if let Some(d) = f.default_picklist_value().filter(|_| f.defaulted_on_create) {
                after.insert(f.name.clone(), Value::String(d.into()));
            }
        }
    }
    // Defaults are checked like given values (an owner default is always the active integration user).
    let mut checked = changes.clone();
    for (k, v) in &after {
        if !checked.contains_key(k) && !v.is_null() && schema.field(k).is_some_and(|f| f.createable) {
            checked.insert(k.clone(), v.clone());
        }
    }
    check_fields(state, &schema, &after, &checked, Op::Insert)?;
    check_rules(state, &schema.name, &after, None, Op::Insert)?;
    Ok(state.store_new(&schema.name, after, None))
}

/// Resolves a record id in a URL: `MALFORMED_ID` when it is not an id of this object, `NOT_FOUND`
/// when no such record exists.
pub(crate) fn resolve_id(state: &State, schema: &ObjectSchema, raw: &str) -> Result<String, SfError> {
    let malformed = || {
        SfError::on_fields("MALFORMED_ID", format!("{} ID: id value of incorrect type: {}", schema.label, raw), &["Id"])
    };
    let id = ids::normalize(raw).ok_or_else(malformed)?;
    if !id.starts_with(&schema.key_prefix) {
        return Err(malformed());
    }
    if state.get(&schema.name, &id).is_none() {
        return Err(crate::faults::not_found());
    }
    Ok(id)
}

/// `PATCH /sobjects/{object}/{id}`.
pub(crate) fn update(state: &mut State, object: &str, raw_id: &str, body: &Value) -> Result<(), SfError> {
    let schema = writable_object(state, object)?;
    let id = resolve_id(state, &schema, raw_id)?;
    let current = state.get(&schema.name, &id).cloned().unwrap_or_default();
    if schema.name == "Lead" && current.get("IsConverted").and_then(Value::as_bool) == Some(true) {
        return Err(SfError::on_fields("CANNOT_UPDATE_CONVERTED_LEAD", "cannot reference converted lead", &[]));
    }
    let changes = parse_body(&schema, body, Op::Update)?;
    let mut after = current;
    for (k, v) in &changes {
        after.insert(k.clone(), v.clone());
    }
    check_fields(state, &schema, &after, &changes, Op::Update)?;
    check_rules(state, &schema.name, &after, Some(&id), Op::Update)?;
    state.store_update(&schema.name, &id, changes);
    Ok(())
}

/// `DELETE /sobjects/{object}/{id}`.
pub(crate) fn delete(state: &mut State, object: &str, raw_id: &str) -> Result<(), SfError> {
    let schema = writable_object(state, object)?;
    let id = resolve_id(state, &schema, raw_id)?;
    if let Some(m) = state.data.records.get_mut(&schema.name) {
        m.remove(&id);
    }
    Ok(())
}
