//! Parsing request bodies into commands: each field through [`Fields`] into its domain type, so every
//! offending field is named (SPEC §4). The rules are the domain types' own; [`super::schema`] states them
//! in the document.

use crate::api::error::ApiError;
use crate::api::fields::{Fields, Json};
use lifecycle::{
    Channel, Cif, CreateRequest, Customer, CustomerType, Email, FullName, IdNumber, Invalid, JourneyId, OwnerId, Phone,
    Product, Reason, RecordType, Status,
};

/// A record's id as a request names it (a body field or a path segment). Ids are opaque, assigned by the
/// backend, but bounded: 1–128 characters without control characters, taken as they are (not trimmed).
/// No record has any other id, and some backends refuse such text outright.
#[derive(Clone, PartialEq, Eq, Debug)]
pub struct RecordId(String);

impl RecordId {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        let n = s.chars().count();
        if n == 0 || n > 128 || s.chars().any(char::is_control) {
            return Err(Invalid("must be 1-128 characters without control characters"));
        }
        Ok(Self(s.to_owned()))
    }
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

pub fn parse_create(body: &Json<'_>) -> Result<CreateRequest, ApiError> {
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
#[derive(Debug)]
pub struct CloseWonCommand {
    pub record_type: RecordType,
    pub id: RecordId,
    pub convert: bool,
    pub channel: Channel,
    pub reason: Option<Reason>,
}

pub fn parse_close_won(body: &Json<'_>) -> Result<CloseWonCommand, ApiError> {
    let mut f = Fields::default();
    let root = f.root(body);
    let lead = f.optional(root, "leadId", RecordId::parse);
    let opportunity = f.optional(root, "opportunityId", RecordId::parse);
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
    pub id: RecordId,
    pub channel: Channel,
    pub reason: Option<Reason>,
}

pub fn parse_close_lost(body: &Json<'_>, id_field: &str) -> Result<CloseLostCommand, ApiError> {
    let mut f = Fields::default();
    let root = f.root(body);
    let id = f.required(root, id_field, RecordId::parse);
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

pub fn parse_search(body: &Json<'_>) -> Result<(IdNumber, Option<Product>), ApiError> {
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

#[cfg(test)]
mod tests {
    //! Property tests of the parsing edge: no input panics; whatever passes satisfies the contract; and a
    //! valid body with one field spoiled is refused naming exactly that field.

    use proptest::prelude::*;
    use serde_json::{json, Value};

    use super::{CloseLostCommand, CloseWonCommand, CreateRequest, CustomerType, IdNumber, Product, RecordType};
    use crate::api::error::ApiError;
    use crate::api::fields::Json;

    /// The parsers as the handlers run them: on the body's text read as [`Json`].
    fn read<T>(v: &Value, parse: impl FnOnce(&Json<'_>) -> T) -> T {
        let text = serde_json::to_vec(v).unwrap();
        parse(&Json::parse(&text).unwrap())
    }
    fn parse_create(v: &Value) -> Result<CreateRequest, ApiError> {
        read(v, super::parse_create)
    }
    fn parse_close_won(v: &Value) -> Result<CloseWonCommand, ApiError> {
        read(v, super::parse_close_won)
    }
    fn parse_close_lost(v: &Value, id_field: &str) -> Result<CloseLostCommand, ApiError> {
        read(v, |j| super::parse_close_lost(j, id_field))
    }
    fn parse_search(v: &Value) -> Result<(IdNumber, Option<Product>), ApiError> {
        read(v, super::parse_search)
    }

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
                Ok(c) => prop_assert!(!c.id.as_str().is_empty()),
                Err(e) => prop_assert!(!errors(e).is_empty()),
            }
            match parse_close_lost(&v, "leadId") {
                Ok(c) => {
                    prop_assert_eq!(v["status"].as_str(), Some("Close Lost"));
                    prop_assert!(!c.id.as_str().is_empty());
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
    fn an_etb_customer_needs_a_cif_and_an_ntb_one_does_not() {
        let mut etb = valid_create();
        etb["customer"].as_object_mut().unwrap().remove("cif");
        assert_eq!(errors(parse_create(&etb).unwrap_err()), ["customer.cif"]);
        etb["customer"]["cif"] = Value::Null;
        assert_eq!(errors(parse_create(&etb).unwrap_err()), ["customer.cif"], "null is absent");
        let mut ntb = etb.clone();
        ntb["customerType"] = json!("NTB");
        let r = parse_create(&ntb).unwrap();
        assert_eq!((r.customer_type, r.customer.cif), (CustomerType::Ntb, None));
    }

    #[test]
    fn close_won_names_exactly_one_record_and_converts_leads_unless_told_not_to() {
        let won = |v: Value| parse_close_won(&v);
        let c = won(json!({"leadId": "L-1", "channel": "APP"})).unwrap();
        assert_eq!((c.record_type, c.id.as_str(), c.convert), (RecordType::Lead, "L-1", true));
        let c = won(json!({"leadId": "L-1", "channel": "APP", "convertToOpportunity": false})).unwrap();
        assert!(!c.convert);
        let c = won(json!({"opportunityId": "O-1", "channel": "APP", "convertToOpportunity": null})).unwrap();
        assert_eq!((c.record_type, c.id.as_str()), (RecordType::Opportunity, "O-1"));
        for convert in [true, false] {
            let body = json!({"opportunityId": "O-1", "channel": "APP", "convertToOpportunity": convert});
            assert_eq!(errors(won(body).unwrap_err()), ["convertToOpportunity"], "an opportunity is not converted");
        }
        let both = json!({"leadId": "L-1", "opportunityId": "O-1", "channel": "APP"});
        assert_eq!(errors(won(both).unwrap_err()), ["leadId", "opportunityId"]);
        assert_eq!(errors(won(json!({"channel": "APP"})).unwrap_err()), ["leadId", "opportunityId"]);
        let nulls = json!({"leadId": null, "opportunityId": null, "channel": "APP"});
        assert_eq!(errors(won(nulls).unwrap_err()), ["leadId", "opportunityId"]);
        assert_eq!(errors(won(json!(["L-1"])).unwrap_err()), ["body"], "not an object: said once");
    }

    #[test]
    fn the_valid_body_parses() {
        let r = parse_create(&valid_create()).unwrap();
        assert_eq!(r.customer.cif.unwrap().expose(), "C1");
        assert_eq!(r.owner_id.as_str(), "RM001");
    }
}
