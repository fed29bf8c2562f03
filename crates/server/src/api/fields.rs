//! Field-by-field validation of a JSON body into the lifecycle's domain types.
//!
//! serde stops at the first bad field; SPEC §4 wants every offending field named. So request bodies are
//! read as a `serde_json::Value` and each field is taken through [`Fields`], which records every problem
//! (missing, wrong type, breaking a rule) and returns `None` for it. Unknown fields are ignored.

use lifecycle::Invalid;
use serde_json::{Map, Value};

use super::error::{ApiError, FieldError};

/// Collects the errors of one request body.
#[derive(Default)]
pub struct Fields {
    errors: Vec<FieldError>,
}

/// A JSON object being read, with the path prefix of its fields (`""` or `"customer."`).
#[derive(Clone, Copy)]
pub struct Obj<'a> {
    map: Option<&'a Map<String, Value>>,
    prefix: &'static str,
}

impl Fields {
    /// The body itself must be an object.
    pub fn root<'a>(&mut self, body: &'a Value) -> Obj<'a> {
        let map = body.as_object();
        if map.is_none() {
            self.errors.push(FieldError::new("body", "must be a JSON object"));
        }
        Obj { map, prefix: "" }
    }

    fn push(&mut self, obj: Obj<'_>, key: &str, message: impl Into<String>) {
        self.errors.push(FieldError::new(format!("{}{key}", obj.prefix), message));
    }

    /// A nested object that must be present (for example `customer`).
    pub fn object<'a>(&mut self, obj: Obj<'a>, key: &str, prefix: &'static str) -> Obj<'a> {
        let map = match obj.map.map(|m| m.get(key)) {
            None => None, // the parent is already reported
            Some(None | Some(Value::Null)) => {
                self.push(obj, key, "is required");
                None
            }
            Some(Some(Value::Object(m))) => Some(m),
            Some(Some(_)) => {
                self.push(obj, key, "must be an object");
                None
            }
        };
        Obj { map, prefix }
    }

    fn string<'a>(&mut self, obj: Obj<'a>, key: &str, required: bool) -> Option<&'a str> {
        match obj.map?.get(key) {
            None | Some(Value::Null) => {
                if required {
                    self.push(obj, key, "is required");
                }
                None
            }
            Some(Value::String(s)) => Some(s),
            Some(_) => {
                self.push(obj, key, "must be a string");
                None
            }
        }
    }

    fn parsed<T>(
        &mut self,
        obj: Obj<'_>,
        key: &str,
        raw: Option<&str>,
        parse: impl Fn(&str) -> Result<T, Invalid>,
    ) -> Option<T> {
        match parse(raw?) {
            Ok(v) => Some(v),
            Err(Invalid(why)) => {
                self.push(obj, key, why);
                None
            }
        }
    }

    /// A required string field, parsed into its domain type.
    pub fn required<T>(&mut self, obj: Obj<'_>, key: &str, parse: impl Fn(&str) -> Result<T, Invalid>) -> Option<T> {
        let raw = self.string(obj, key, true);
        self.parsed(obj, key, raw, parse)
    }

    /// An optional string field: absent or `null` is `None`; anything else must parse.
    pub fn optional<T>(&mut self, obj: Obj<'_>, key: &str, parse: impl Fn(&str) -> Result<T, Invalid>) -> Option<T> {
        let raw = self.string(obj, key, false);
        self.parsed(obj, key, raw, parse)
    }

    /// An optional boolean; `Some(None)` when absent or null, `None` when of the wrong type.
    pub fn optional_bool(&mut self, obj: Obj<'_>, key: &str) -> Option<Option<bool>> {
        match obj.map?.get(key) {
            None | Some(Value::Null) => Some(None),
            Some(Value::Bool(b)) => Some(Some(*b)),
            Some(_) => {
                self.push(obj, key, "must be true or false");
                None
            }
        }
    }

    /// Whether the object has a non-null value under `key`.
    pub fn present(obj: Obj<'_>, key: &str) -> bool {
        obj.map.and_then(|m| m.get(key)).is_some_and(|v| !v.is_null())
    }

    /// Records a rule that spans fields (e.g. "exactly one of").
    pub fn reject(&mut self, obj: Obj<'_>, key: &str, message: &str) {
        self.push(obj, key, message);
    }

    /// `Ok` only when no field was refused.
    pub fn finish(self) -> Result<(), ApiError> {
        if self.errors.is_empty() {
            Ok(())
        } else {
            Err(ApiError::Validation(self.errors))
        }
    }
}
