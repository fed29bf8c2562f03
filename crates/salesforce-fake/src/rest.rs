//! The REST data API under `/services/data/vXX.X/`: query, describe, sObject rows and basic
//! information, limits. One synchronous `dispatch` serves both top-level calls and composite
//! subrequests, so a subrequest behaves exactly like the same call made alone.

use crate::dml;
use crate::faults::{not_found, SfError};
use crate::soql;
use crate::state::{CallKind, State};
use serde_json::{json, Map, Value};

/// An API answer before it becomes HTTP: status, JSON body (none for 204) and extra headers.
#[derive(Clone, Debug)]
pub(crate) struct ApiResponse {
    pub status: u16,
    pub body: Option<Value>,
    pub headers: Vec<(String, String)>,
}

impl ApiResponse {
    /// A JSON answer.
    pub fn json(status: u16, body: Value) -> Self {
        ApiResponse { status, body: Some(body), headers: Vec::new() }
    }

    /// A 204.
    pub fn no_content() -> Self {
        ApiResponse { status: 204, body: None, headers: Vec::new() }
    }

    /// An error answer.
    pub fn error(e: &SfError) -> Self {
        ApiResponse::json(e.status, e.body())
    }
}

impl From<SfError> for ApiResponse {
    fn from(e: SfError) -> Self {
        ApiResponse::error(&e)
    }
}

/// A request target split into (API version, decoded path segments, query pairs).
pub(crate) type Target = (String, Vec<String>, Vec<(String, String)>);

/// Splits `/services/data/vXX.X/a/b?x=y` into its version, segments and query pairs.
pub(crate) fn split_target(target: &str) -> Option<Target> {
    let (path, query) = match target.split_once('?') {
        Some((p, q)) => (p, q),
        None => (target, ""),
    };
    let rest = path.strip_prefix("/services/data/")?;
    let mut segs = rest.split('/').filter(|s| !s.is_empty());
    let version = segs.next()?;
    let v = version.strip_prefix('v')?;
    let (major, minor) = v.split_once('.')?;
    if major.is_empty()
        || !major.bytes().all(|b| b.is_ascii_digit())
        || minor.len() != 1
        || !minor.bytes().all(|b| b.is_ascii_digit())
    {
        return None;
    }
    let segs: Vec<String> = segs
        .map(|s| {
            form_urlencoded::parse(format!("x={s}").as_bytes()).next().map(|(_, v)| v.into_owned()).unwrap_or_default()
        })
        .collect();
    let pairs = form_urlencoded::parse(query.as_bytes()).map(|(k, v)| (k.into_owned(), v.into_owned())).collect();
    Some((v.to_string(), segs, pairs))
}

/// What kind of call a request target is (for the call log).
pub(crate) fn classify(method: &str, target: &str) -> CallKind {
    let path = target.split('?').next().unwrap_or_default();
    if path.starts_with("/services/Soap/") {
        return CallKind::Soap;
    }
    let Some((_, segs, _)) = split_target(target) else { return CallKind::Other };
    match segs.first().map(String::as_str) {
        Some("composite") if segs.len() == 1 && method == "POST" => CallKind::Composite,
        Some("query") | Some("queryAll") => CallKind::Query,
        Some("sobjects") if segs.len() == 3 && segs[2] == "describe" => CallKind::Describe,
        Some("sobjects") => CallKind::SObject,
        _ => CallKind::Other,
    }
}

fn method_not_allowed(method: &str, allowed: &str) -> ApiResponse {
    ApiResponse::error(&SfError::new(
        405,
        "METHOD_NOT_ALLOWED",
        format!("HTTP Method '{method}' not allowed. Allowed are {allowed}"),
    ))
}

/// A record as the sObject Rows resource returns it (optionally only `fields`).
fn record_json(state: &State, object: &str, id: &str, fields: Option<&str>) -> Result<Value, SfError> {
    let schema = state.schema.object(object).cloned().ok_or_else(not_found)?;
    let rec = state.get(&schema.name, id).cloned().ok_or_else(not_found)?;
    let mut out = Map::new();
    out.insert("attributes".into(), json!({ "type": schema.name, "url": state.record_url(&schema.name, id) }));
    match fields {
        Some(list) => {
            for name in list.split(',').map(str::trim).filter(|s| !s.is_empty()) {
                let f = schema.field(name).ok_or_else(|| {
                    SfError::new(400, "INVALID_FIELD", format!("No such column '{name}' on entity '{}'.", schema.name))
                })?;
                out.insert(f.name.clone(), rec.get(&f.name).cloned().unwrap_or(Value::Null));
            }
        }
        None => {
            for f in &schema.fields {
                out.insert(f.name.clone(), rec.get(&f.name).cloned().unwrap_or(Value::Null));
            }
        }
    }
    Ok(Value::Object(out))
}

/// Serves one REST call. `body` is the parsed JSON body (None when there is none).
pub(crate) fn dispatch(state: &mut State, method: &str, target: &str, body: Option<&Value>) -> ApiResponse {
    let Some((version, segs, params)) = split_target(target) else {
        return not_found().into();
    };
    let seg: Vec<&str> = segs.iter().map(String::as_str).collect();
    let param = |name: &str| params.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    let base = format!("/services/data/v{version}");
    match seg.as_slice() {
        [] => match method {
            "GET" => ApiResponse::json(
                200,
                json!({
                    "sobjects": format!("{base}/sobjects"),
                    "query": format!("{base}/query"),
                    "composite": format!("{base}/composite"),
                    "limits": format!("{base}/limits"),
                }),
            ),
            _ => method_not_allowed(method, "GET,HEAD"),
        },
        ["limits"] => match method {
            "GET" => ApiResponse::json(
                200,
                json!({ "DailyApiRequests": { "Max": state.api_max, "Remaining": state.api_max.saturating_sub(state.api_used) } }),
            ),
            _ => method_not_allowed(method, "GET,HEAD"),
        },
        ["query"] | ["queryAll"] => {
            if method != "GET" {
                return method_not_allowed(method, "GET,HEAD");
            }
            match param("q") {
                None => SfError::new(400, "MALFORMED_QUERY", "A query string has to be specified").into(),
                Some(q) => match soql::run(state, &q) {
                    Ok(v) => ApiResponse::json(200, v),
                    Err(e) => e.into(),
                },
            }
        }
        ["sobjects"] => match method {
            "GET" => {
                let list: Vec<Value> = state.schema.objects.iter().map(|o| o.summary(&version)).collect();
                ApiResponse::json(200, json!({ "encoding": "UTF-8", "maxBatchSize": 200, "sobjects": list }))
            }
            _ => method_not_allowed(method, "GET,HEAD"),
        },
        ["sobjects", object] => {
            let Some(schema) = state.schema.object(object).cloned() else { return not_found().into() };
            match method {
                "GET" => {
                    ApiResponse::json(200, json!({ "objectDescribe": schema.summary(&version), "recentItems": [] }))
                }
                "POST" => {
                    let Some(body) = body else {
                        return crate::faults::json_parser_error(
                            "The request body is empty: a JSON object is expected",
                        )
                        .into();
                    };
                    match dml::insert(state, &schema.name, body) {
                        Ok(id) => {
                            let mut r = ApiResponse::json(201, json!({ "id": id, "success": true, "errors": [] }));
                            r.headers.push(("Location".into(), format!("{base}/sobjects/{}/{id}", schema.name)));
                            r
                        }
                        Err(e) => e.into(),
                    }
                }
                _ => method_not_allowed(method, "GET,HEAD,POST"),
            }
        }
        ["sobjects", object, "describe"] => {
            let Some(schema) = state.schema.object(object) else { return not_found().into() };
            match method {
                "GET" => ApiResponse::json(200, schema.describe(&version)),
                _ => method_not_allowed(method, "GET,HEAD"),
            }
        }
        ["sobjects", object, raw_id] => {
            let Some(schema) = state.schema.object(object).cloned() else { return not_found().into() };
            match method {
                "GET" => {
                    let id = match dml::resolve_id(state, &schema, raw_id) {
                        Ok(id) => id,
                        Err(e) => return e.into(),
                    };
                    match record_json(state, &schema.name, &id, param("fields").as_deref()) {
                        Ok(v) => ApiResponse::json(200, v),
                        Err(e) => e.into(),
                    }
                }
                "PATCH" => {
                    let Some(body) = body else {
                        return crate::faults::json_parser_error(
                            "The request body is empty: a JSON object is expected",
                        )
                        .into();
                    };
                    match dml::update(state, &schema.name, raw_id, body) {
                        Ok(()) => ApiResponse::no_content(),
                        Err(e) => e.into(),
                    }
                }
                "DELETE" => match dml::delete(state, &schema.name, raw_id) {
                    Ok(()) => ApiResponse::no_content(),
                    Err(e) => e.into(),
                },
                _ => method_not_allowed(method, "GET,PATCH,HEAD,DELETE"),
            }
        }
        _ => not_found().into(),
    }
}
