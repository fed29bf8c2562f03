//! No input, however malformed, produces a 5xx (SPEC §4): random JSON, valid bodies with one field
//! replaced by anything, and random bytes, against every operation of the real app.

use proptest::prelude::*;
use proptest::test_runner::{Config, TestRunner};
use serde_json::{json, Value};

use crate::helpers::*;

fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(|n| json!(n)),
        any::<f64>().prop_filter("finite", |f| f.is_finite()).prop_map(|f| json!(f)),
        ".{0,40}".prop_map(Value::String),
        Just(json!("Close Lost")),
        Just(json!("NTB")),
        Just(json!("ETB")),
    ];
    leaf.prop_recursive(4, 32, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
            prop::collection::btree_map(".{0,12}", inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A valid body for `path`, naming real records so mutations reach the store's transitions.
fn valid_body(path: &str, lead: &Value, opp: &Value) -> Value {
    match path {
        CREATE => ntb("H1", "CARD", "RM001"),
        CLOSE_WON => json!({"leadId": lead, "channel": "C", "convertToOpportunity": true, "reason": "R"}),
        LOST_OPP => json!({"opportunityId": opp, "status": "Close Lost", "channel": "C"}),
        LOST_LEAD => json!({"leadId": lead, "status": "Close Lost", "channel": "C"}),
        _ => json!({"idNumber": "H1", "product": "CARD"}),
    }
}

const FIELDS: &[&str] = &[
    "customerType",
    "customer",
    "product",
    "ownerId",
    "channel",
    "journeyId",
    "leadId",
    "opportunityId",
    "convertToOpportunity",
    "reason",
    "status",
    "idNumber",
];
const CUSTOMER_FIELDS: &[&str] = &["idNumber", "cif", "fullName", "phone", "email"];

#[derive(Debug, Clone)]
enum Input {
    Json(Value),
    Mutated { field: usize, nested: bool, value: Value },
    Bytes(Vec<u8>),
}

fn input() -> impl Strategy<Value = Input> {
    prop_oneof![
        any_json().prop_map(Input::Json),
        (any::<usize>(), any::<bool>(), any_json())
            .prop_map(|(field, nested, value)| { Input::Mutated { field, nested, value } }),
        prop::collection::vec(any::<u8>(), 0..200).prop_map(Input::Bytes),
    ]
}

#[test]
fn random_input_never_causes_a_5xx_on_sqlite() {
    random_input_never_causes_a_5xx(Backend::Sqlite);
}

#[test]
fn random_input_never_causes_a_5xx_on_postgres() {
    random_input_never_causes_a_5xx(Backend::Postgres);
}

fn random_input_never_causes_a_5xx(backend: Backend) {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let app = rt.block_on(spawn(backend));
    let (_, lead) = rt.block_on(app.create(&ntb("H0", "CARD", "RM001")));
    let (_, opp) = rt.block_on(app.create(&etb("H0", "CARD", "RM001")));
    let (lead, opp) = (lead["id"].clone(), opp["id"].clone());
    let paths = [CREATE, CLOSE_WON, LOST_OPP, LOST_LEAD, SEARCH, "GET leads", "GET opportunities"];
    let mut runner = TestRunner::new(Config { cases: 400, failure_persistence: None, ..Config::default() });
    runner
        .run(&(0..paths.len(), input()), |(p, input)| {
            let path = paths[p];
            let bytes = match input {
                Input::Json(v) => v.to_string().into_bytes(),
                Input::Bytes(b) => b,
                Input::Mutated { field, nested, value } => {
                    let mut body = valid_body(path, &lead, &opp);
                    if nested && path == CREATE {
                        body["customer"][CUSTOMER_FIELDS[field % CUSTOMER_FIELDS.len()]] = value;
                    } else {
                        body[FIELDS[field % FIELDS.len()]] = value;
                    }
                    body.to_string().into_bytes()
                }
            };
            let r = match path.strip_prefix("GET ") {
                // Arbitrary bytes as a record id in the path, percent-encoded.
                Some(kind) => {
                    let id: String = bytes.iter().map(|b| format!("%{b:02X}")).collect();
                    rt.block_on(app.get(&format!("{INT}/{kind}/{}", if id.is_empty() { "x".into() } else { id })))
                }
                None => rt.block_on(app.post_raw(path, Some("application/json"), bytes.clone())),
            };
            let status = r.status().as_u16();
            prop_assert!(status < 500, "{} on {} with {:?}", status, path, String::from_utf8_lossy(&bytes));
            prop_assert!(r.headers().contains_key("x-request-id"));
            Ok(())
        })
        .unwrap();
    // The service still answers normally afterwards.
    let (status, _) = rt.block_on(app.create(&ntb("H2", "CARD", "RM001")));
    assert_eq!(status, 201);
}
