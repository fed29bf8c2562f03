//! Field-by-field validation of a JSON body into the lifecycle's domain types.
//!
//! serde stops at the first bad field; SPEC §4 wants every offending field named. So request bodies are
//! read as a [`Json`] document and each field is taken through [`Fields`], which records every problem
//! (missing, wrong type, breaking a rule) and returns `None` for it. Unknown fields are ignored.

use std::borrow::Cow;
use std::fmt;

use lifecycle::Invalid;
use serde::de::{Deserialize, Deserializer, IgnoredAny, MapAccess, SeqAccess, Visitor};

use super::error::{ApiError, FieldError};

/// A JSON document as the fields read it: its strings borrowed from the body unless they hold escapes,
/// objects as their members in order, and only the kind of a number or an array (no field of a request
/// is either). The same syntax as `serde_json::Value` (the same parser reads both), at about a third of
/// its cost in the mix: `Value` allocates every string and a tree node per member.
#[derive(Debug, PartialEq)]
pub enum Json<'a> {
    Null,
    Bool(bool),
    Number,
    String(Cow<'a, str>),
    Array,
    Object(Vec<(Cow<'a, str>, Json<'a>)>),
}

impl<'a> Json<'a> {
    /// Reads a request body; a syntax error is the parser's message.
    pub fn parse(body: &'a [u8]) -> Result<Self, serde_json::Error> {
        serde_json::from_slice(body)
    }

    /// The member `key` of an object; of a key given twice, the last, as `serde_json::Value` keeps it.
    pub fn get(&self, key: &str) -> Option<&Json<'a>> {
        self.members()?.iter().rev().find(|(k, _)| k == key).map(|(_, v)| v)
    }

    fn members(&self) -> Option<&[(Cow<'a, str>, Json<'a>)]> {
        match self {
            Json::Object(members) => Some(members),
            _ => None,
        }
    }

    pub fn is_object(&self) -> bool {
        matches!(self, Json::Object(_))
    }

    pub fn is_null(&self) -> bool {
        matches!(self, Json::Null)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Json<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(JsonVisitor)
    }
}

struct JsonVisitor;

/// The key under which serde_json with `arbitrary_precision` hands over a number.
const NUMBER_TOKEN: &str = "$serde_json::private::Number";

impl<'de> Visitor<'de> for JsonVisitor {
    type Value = Json<'de>;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON value")
    }
    fn visit_unit<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_none<E>(self) -> Result<Json<'de>, E> {
        Ok(Json::Null)
    }
    fn visit_bool<E>(self, b: bool) -> Result<Json<'de>, E> {
        Ok(Json::Bool(b))
    }
    fn visit_i64<E>(self, _: i64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }
    fn visit_u64<E>(self, _: u64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }
    fn visit_f64<E>(self, _: f64) -> Result<Json<'de>, E> {
        Ok(Json::Number)
    }
    fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Borrowed(s)))
    }
    fn visit_str<E>(self, s: &str) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s.to_owned())))
    }
    fn visit_string<E>(self, s: String) -> Result<Json<'de>, E> {
        Ok(Json::String(Cow::Owned(s)))
    }
    fn visit_seq<A: SeqAccess<'de>>(self, mut seq: A) -> Result<Json<'de>, A::Error> {
        // Each element read as a document, not skipped with `IgnoredAny`: serde_json's skipping scans numbers
        // with a parser of its own, whose errors read differently from `Value`'s ("invalid number" where
        // `Value` says "EOF while parsing a value", for `[0e`). No field of a request is an array.
        while seq.next_element::<Json<'de>>()?.is_some() {}
        Ok(Json::Array)
    }
    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<Json<'de>, A::Error> {
        let mut members = Vec::with_capacity(map.size_hint().unwrap_or(8));
        while let Some(Key(key)) = map.next_key()? {
            // serde_json built with `arbitrary_precision` (a dependency asks for it) hands a number over as a
            // map of this one key, as `Value` reads it too.
            if members.is_empty() && key == NUMBER_TOKEN {
                map.next_value::<IgnoredAny>()?;
                return Ok(Json::Number);
            }
            members.push((key, map.next_value()?));
        }
        Ok(Json::Object(members))
    }
}

/// An object's key, borrowed from the body unless it holds escapes.
struct Key<'a>(Cow<'a, str>);

impl<'de: 'a, 'a> Deserialize<'de> for Key<'a> {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct KeyVisitor;
        impl<'de> Visitor<'de> for KeyVisitor {
            type Value = Key<'de>;
            fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, s: &'de str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Borrowed(s)))
            }
            fn visit_str<E>(self, s: &str) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s.to_owned())))
            }
            fn visit_string<E>(self, s: String) -> Result<Key<'de>, E> {
                Ok(Key(Cow::Owned(s)))
            }
        }
        deserializer.deserialize_str(KeyVisitor)
    }
}

/// Collects the errors of one request body.
#[derive(Default)]
pub struct Fields {
    errors: Vec<FieldError>,
}

/// A JSON object being read, with the path prefix of its fields (`""` or `"customer."`).
#[derive(Clone, Copy)]
pub struct Obj<'a> {
    map: Option<&'a Json<'a>>,
    prefix: &'static str,
}

impl Fields {
    /// The body itself must be an object.
    pub fn root<'a>(&mut self, body: &'a Json<'a>) -> Obj<'a> {
        let map = body.is_object().then_some(body);
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
            Some(None | Some(Json::Null)) => {
                self.push(obj, key, "is required");
                None
            }
            Some(Some(m @ Json::Object(_))) => Some(m),
            Some(Some(_)) => {
                self.push(obj, key, "must be an object");
                None
            }
        };
        Obj { map, prefix }
    }

    fn string<'a>(&mut self, obj: Obj<'a>, key: &str, required: bool) -> Option<&'a str> {
        match obj.map?.get(key) {
            None | Some(Json::Null) => {
                if required {
                    self.push(obj, key, "is required");
                }
                None
            }
            Some(Json::String(s)) => Some(&**s),
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
            None | Some(Json::Null) => Some(None),
            Some(Json::Bool(b)) => Some(Some(*b)),
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

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use proptest::prelude::*;
    use serde_json::Value;

    use super::{Fields, Json};

    /// Whether `json` holds what `value` does, as far as the fields read it.
    fn mirrors(json: &Json<'_>, value: &Value) -> bool {
        match (json, value) {
            (Json::Null, Value::Null) | (Json::Number, Value::Number(_)) | (Json::Array, Value::Array(_)) => true,
            (Json::Bool(a), Value::Bool(b)) => a == b,
            (Json::String(a), Value::String(b)) => a == b,
            (Json::Object(_), Value::Object(map)) => {
                map.iter().all(|(k, v)| json.get(k).is_some_and(|j| mirrors(j, v)))
                    && matches!(json, Json::Object(m) if m.iter().all(|(k, _)| map.contains_key(&**k)))
            }
            _ => false,
        }
    }

    #[test]
    fn strings_are_borrowed_unless_escaped_and_the_last_of_a_repeated_key_counts() {
        let text = br#"{"a":"plain","b":"tab\tand \u00e9","a":"again","n":1.5,"l":[1,{"x":2}],"t":true,"z":null}"#;
        let json = Json::parse(text).unwrap();
        assert!(matches!(json.get("b"), Some(Json::String(Cow::Owned(s))) if s == "tab\tand é"));
        assert!(matches!(json.get("a"), Some(Json::String(Cow::Borrowed("again")))));
        assert_eq!(json.get("n"), Some(&Json::Number));
        assert_eq!(json.get("l"), Some(&Json::Array));
        assert_eq!(json.get("t"), Some(&Json::Bool(true)));
        assert!(json.get("z").is_some_and(Json::is_null));
        assert_eq!(json.get("missing"), None);
        assert_eq!(Json::parse(b"[1]").unwrap().get("a"), None, "not an object");
    }

    /// The (field, message) pairs `fields` has recorded.
    fn problems(fields: &Fields) -> Vec<(&str, &str)> {
        fields.errors.iter().map(|e| (e.field.as_str(), e.message.as_str())).collect()
    }

    #[test]
    fn a_body_that_is_not_an_object_is_named_as_such() {
        for text in [&b"[1]"[..], b"null", b"\"x\"", b"1", b"true"] {
            let body = Json::parse(text).unwrap();
            let mut fields = Fields::default();
            let root = fields.root(&body);
            assert!(!Fields::present(root, "leadId"));
            assert_eq!(problems(&fields), [("body", "must be a JSON object")], "{}", String::from_utf8_lossy(text));
        }
        let body = Json::parse(b"{}").unwrap();
        let mut fields = Fields::default();
        fields.root(&body);
        assert!(fields.finish().is_ok(), "an empty object is an object");
    }

    #[test]
    fn optional_booleans_and_presence() {
        let body = Json::parse(br#"{"yes":true,"no":false,"gone":null,"word":"true","one":1,"id":"L1"}"#).unwrap();
        let mut fields = Fields::default();
        let root = fields.root(&body);
        assert_eq!(fields.optional_bool(root, "yes"), Some(Some(true)));
        assert_eq!(fields.optional_bool(root, "no"), Some(Some(false)));
        assert_eq!(fields.optional_bool(root, "gone"), Some(None), "null is absent");
        assert_eq!(fields.optional_bool(root, "missing"), Some(None));
        assert!(problems(&fields).is_empty());
        assert_eq!(fields.optional_bool(root, "word"), None, "a string is not a boolean");
        assert_eq!(fields.optional_bool(root, "one"), None);
        assert_eq!(problems(&fields), [("word", "must be true or false"), ("one", "must be true or false")]);

        assert!(Fields::present(root, "id") && Fields::present(root, "no"), "false is a value");
        assert!(!Fields::present(root, "gone") && !Fields::present(root, "missing"));
        let nested = fields.object(root, "id", "x.");
        assert!(!Fields::present(nested, "id"), "not an object: nothing is present in it");
    }

    proptest! {
        /// The same parser reads both, so the same texts pass, with the same message for those that do not.
        #[test]
        fn texts_pass_or_fail_as_for_serde_json_value(text in prop_oneof![
            "\\PC{0,60}".prop_map(String::into_bytes),
            "[{}\\[\\]\",:0-9a-z\\\\ ]{0,40}".prop_map(String::into_bytes),
            any::<Vec<u8>>(),
        ]) {
            let ours = Json::parse(&text).map(|_| ()).map_err(|e| e.to_string());
            let theirs = serde_json::from_slice::<Value>(&text).map(|_| ()).map_err(|e| e.to_string());
            prop_assert_eq!(ours, theirs);
        }

        /// Whatever `serde_json::Value` reads, the document holds the same strings, booleans, nulls and
        /// members (the last of a repeated key, as in `Value`).
        #[test]
        fn documents_hold_what_value_holds(value in any_json()) {
            let text = serde_json::to_vec(&value).unwrap();
            let json = Json::parse(&text).unwrap();
            prop_assert!(mirrors(&json, &value), "{} -> {:?}", String::from_utf8_lossy(&text), json);
        }
    }

    fn any_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(Value::from),
            any::<i64>().prop_map(Value::from),
            "\\PC{0,20}".prop_map(Value::String),
            "[\"\\\\/\\n\\t\\u{0}-\\u{1f}a-z]{0,10}".prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 32, 6, |inner| {
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
                prop::collection::btree_map("[a-c\"\\\\]{0,3}", inner, 0..6)
                    .prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }
}
