//! `POST /services/data/vXX.X/composite`: up to 25 subrequests (at most 5 queries) run in order in
//! one transaction; `@{ref.field}` / `@{ref.records[N].Field}` references resolved in urls and body
//! strings; allOrNone rollback (a real restore of the state) with `PROCESSING_HALTED` for every
//! other subrequest; the whole request counts as one API call.

use crate::faults::{json_parser_error, unable_to_lock_row, SfError};
use crate::rest::{self, ApiResponse};
use crate::state::State;
use serde_json::{json, Map, Value};

const MAX_SUBREQUESTS: usize = 25;
const MAX_QUERIES: usize = 5;
const HALTED_ROLLBACK: &str = "The transaction was rolled back since another operation in the same transaction failed.";

/// One parsed subrequest.
#[derive(Clone, Debug)]
pub(crate) struct Subrequest {
    pub method: String,
    pub url: String,
    pub reference_id: String,
    pub body: Option<Value>,
}

/// Parses a composite body; errors are top-level 400s.
pub(crate) fn parse(raw: &[u8]) -> Result<(bool, Vec<Subrequest>), SfError> {
    let v: Value = serde_json::from_slice(raw)
        .map_err(|e| json_parser_error(format!("Unexpected character or end of input: {e}")))?;
    let obj = v
        .as_object()
        .ok_or_else(|| json_parser_error("Cannot deserialize instance of CompositeRequest from a non-object value"))?;
    let all_or_none = match obj.get("allOrNone") {
        None | Some(Value::Null) => false,
        Some(Value::Bool(b)) => *b,
        Some(other) => {
            return Err(json_parser_error(format!("Cannot deserialize instance of boolean from value {other}")))
        }
    };
    let list = obj
        .get("compositeRequest")
        .and_then(Value::as_array)
        .ok_or_else(|| json_parser_error("compositeRequest: a JSON array of subrequests is required"))?;
    let mut subs = Vec::with_capacity(list.len());
    for item in list {
        let o = item.as_object().ok_or_else(|| {
            json_parser_error("Cannot deserialize instance of CompositeSubrequest from a non-object value")
        })?;
        let text = |name: &str| -> Result<String, SfError> {
            o.get(name)
                .and_then(Value::as_str)
                .map(str::to_string)
                .ok_or_else(|| json_parser_error(format!("Missing or invalid required field in subrequest: {name}")))
        };
        let method = text("method")?;
        if !matches!(method.as_str(), "GET" | "POST" | "PATCH" | "PUT" | "DELETE" | "HEAD") {
            return Err(json_parser_error(format!("Invalid method in subrequest: {method}")));
        }
        let reference_id = text("referenceId")?;
        if reference_id.is_empty() || !reference_id.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            return Err(SfError::new(
                400,
                "INVALID_INPUT",
                format!("Invalid referenceId '{reference_id}': only letters, numbers and underscores are allowed"),
            ));
        }
        if subs.iter().any(|s: &Subrequest| s.reference_id == reference_id) {
            return Err(SfError::new(
                400,
                "INVALID_INPUT",
                format!("Duplicate referenceId provided in the request: {reference_id}"),
            ));
        }
        subs.push(Subrequest { method, url: text("url")?, reference_id, body: o.get("body").cloned() });
    }
    if subs.len() > MAX_SUBREQUESTS {
        return Err(SfError::new(
            400,
            "LIMIT_EXCEEDED",
            format!(
                "Limit Exceeded: compositeRequest holds {} subrequests; at most {MAX_SUBREQUESTS} are allowed",
                subs.len()
            ),
        ));
    }
    let queries = subs.iter().filter(|s| is_query(&s.url)).count();
    if queries > MAX_QUERIES {
        return Err(SfError::new(
            400,
            "LIMIT_EXCEEDED",
            format!("Limit Exceeded: compositeRequest holds {queries} query or sObject Collections subrequests; at most {MAX_QUERIES} are allowed"),
        ));
    }
    Ok((all_or_none, subs))
}

fn is_query(url: &str) -> bool {
    let path = url.split('?').next().unwrap_or_default();
    path.contains("/query") || path.contains("/queryAll") || path.contains("/composite/sobjects")
}

fn is_write(method: &str) -> bool {
    matches!(method, "POST" | "PATCH" | "PUT" | "DELETE")
}

/// Looks up `ref.path` among earlier successful results.
fn lookup(results: &Map<String, Value>, expr: &str) -> Option<Value> {
    let (head, rest) = match expr.find(['.', '[']) {
        Some(i) => (&expr[..i], &expr[i..]),
        None => (expr, ""),
    };
    let mut cur = results.get(head)?.clone();
    let mut rest = rest;
    while !rest.is_empty() {
        if let Some(r) = rest.strip_prefix('.') {
            let end = r.find(['.', '[']).unwrap_or(r.len());
            let key = &r[..end];
            let obj = cur.as_object()?;
            cur =
                obj.get(key).or_else(|| obj.iter().find(|(k, _)| k.eq_ignore_ascii_case(key)).map(|(_, v)| v))?.clone();
            rest = &r[end..];
        } else if let Some(r) = rest.strip_prefix('[') {
            let end = r.find(']')?;
            let idx: usize = r[..end].trim().parse().ok()?;
            cur = cur.as_array()?.get(idx)?.clone();
            rest = &r[end + 1..];
        } else {
            return None;
        }
    }
    match cur {
        Value::Null | Value::Object(_) | Value::Array(_) => None,
        v => Some(v),
    }
}

fn halted(message: String) -> SfError {
    SfError::new(400, "PROCESSING_HALTED", message)
}

fn missing_reference(expr: &str) -> SfError {
    let head = expr.split(['.', '[']).next().unwrap_or(expr);
    halted(format!("Invalid reference specified. No value for {expr} found in {head}"))
}

fn as_text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        other => other.to_string(),
    }
}

/// Replaces every `@{...}` in a string.
fn resolve_str(results: &Map<String, Value>, s: &str) -> Result<Value, SfError> {
    // A string that is exactly one reference keeps the referenced value's JSON type.
    if let Some(inner) = s.strip_prefix("@{").and_then(|r| r.strip_suffix('}')) {
        if !inner.contains('}') {
            return lookup(results, inner).ok_or_else(|| missing_reference(inner));
        }
    }
    let mut out = String::new();
    let mut rest = s;
    while let Some(start) = rest.find("@{") {
        out.push_str(&rest[..start]);
        let after = &rest[start + 2..];
        let Some(end) = after.find('}') else {
            out.push_str(&rest[start..]);
            rest = "";
            break;
        };
        let expr = &after[..end];
        let v = lookup(results, expr).ok_or_else(|| missing_reference(expr))?;
        out.push_str(&as_text(&v));
        rest = &after[end + 1..];
    }
    out.push_str(rest);
    Ok(Value::String(out))
}

fn resolve_value(results: &Map<String, Value>, v: &Value) -> Result<Value, SfError> {
    Ok(match v {
        Value::String(s) => resolve_str(results, s)?,
        Value::Array(a) => Value::Array(a.iter().map(|x| resolve_value(results, x)).collect::<Result<_, _>>()?),
        Value::Object(o) => {
            let mut m = Map::new();
            for (k, x) in o {
                m.insert(k.clone(), resolve_value(results, x)?);
            }
            Value::Object(m)
        }
        other => other.clone(),
    })
}

fn entry(reference_id: &str, r: &ApiResponse) -> Value {
    let headers: Map<String, Value> = r.headers.iter().map(|(k, v)| (k.clone(), Value::String(v.clone()))).collect();
    json!({
        "body": r.body.clone().unwrap_or(Value::Null),
        "httpHeaders": headers,
        "httpStatusCode": r.status,
        "referenceId": reference_id,
    })
}

/// Runs a parsed composite request. `lock_fault` makes the first write subrequest fail
/// `UNABLE_TO_LOCK_ROW`.
pub(crate) fn run(state: &mut State, all_or_none: bool, subs: &[Subrequest], mut lock_fault: bool) -> ApiResponse {
    let snapshot = state.data.clone();
    let mut results: Map<String, Value> = Map::new();
    let mut responses: Vec<Option<ApiResponse>> = vec![None; subs.len()];
    let mut failed: Option<usize> = None;
    for (i, sub) in subs.iter().enumerate() {
        if all_or_none && failed.is_some() {
            break;
        }
        let resolved = resolve_str(&results, &sub.url).map(|u| as_text(&u)).and_then(|url| {
            let body = sub.body.as_ref().map(|b| resolve_value(&results, b)).transpose()?;
            Ok((url, body))
        });
        let response = match resolved {
            Err(e) => ApiResponse::error(&e),
            Ok(_) if lock_fault && is_write(&sub.method) => {
                lock_fault = false;
                ApiResponse::error(&unable_to_lock_row())
            }
            Ok((url, body)) => {
                if rest::classify(&sub.method, &url) == crate::state::CallKind::Composite {
                    ApiResponse::error(&SfError::new(400, "INVALID_API_INPUT", "Composite requests cannot be nested"))
                } else {
                    rest::dispatch(state, &sub.method, &url, body.as_ref())
                }
            }
        };
        if response.status >= 400 {
            failed.get_or_insert(i);
        } else {
            results.insert(sub.reference_id.clone(), response.body.clone().unwrap_or(Value::Null));
        }
        responses[i] = Some(response);
    }
    if let (true, Some(bad)) = (all_or_none, failed) {
        state.data = snapshot;
        for (i, slot) in responses.iter_mut().enumerate() {
            if i != bad {
                *slot = Some(ApiResponse::error(&halted(HALTED_ROLLBACK.into())));
            }
        }
    }
    let list: Vec<Value> = subs
        .iter()
        .zip(responses.iter())
        .map(|(s, r)| match r {
            Some(r) => entry(&s.reference_id, r),
            None => entry(&s.reference_id, &ApiResponse::error(&halted(HALTED_ROLLBACK.into()))),
        })
        .collect();
    ApiResponse::json(200, json!({ "compositeResponse": list }))
}
