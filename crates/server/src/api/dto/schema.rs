//! Schema-only types: what the OpenAPI document says a request may be. Nothing is deserialized into them
//! (the parsers of [`super::parse`] read bodies field by field); they exist so the document states exactly
//! the rules those parsers enforce, and the tests below check that it does, pattern by pattern.
//!
//! Where a rule spans fields, the schema says it with `oneOf`: a create is NTB or ETB (ETB requires a
//! `cif`), a close-won names a lead or an opportunity. An optional field may also be `null`, which means
//! absent, as the parsers read it. Unknown fields are allowed, as they are ignored.

#![allow(dead_code, non_snake_case, clippy::upper_case_acronyms)]

use std::borrow::Cow;

use utoipa::openapi::schema::{ObjectBuilder, Schema, Type};
use utoipa::openapi::RefOr;
use utoipa::{PartialSchema, ToSchema};

/// Unicode's White_Space, which Rust's `str::trim` removes around a code.
const WHITE_SPACE: &str = r"\t\n\u000b\f\r \u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000";
/// Unicode's control characters (category Cc), which no text field may hold.
const CONTROL: &str = r"\u0000-\u001f\u007f-\u009f";

/// A code as the parsers take it: surrounding white space is trimmed, and what remains is 1..=`max`
/// characters without control characters.
pub fn code_pattern(max: usize) -> String {
    let space = format!("[{WHITE_SPACE}]*");
    let edge = format!("[^{CONTROL}{WHITE_SPACE}]");
    format!("^{space}{edge}(?:[^{CONTROL}]{{0,{}}}{edge})?{space}$", max - 2)
}

/// A record id: 1–128 characters without control characters, taken as is.
pub fn record_id_pattern() -> String {
    format!("^[^{CONTROL}]{{1,128}}$")
}

pub const ID_NUMBER_PATTERN: &str = "^[A-Za-z0-9-]{1,32}$";
pub const PHONE_PATTERN: &str = r"^\+?[0-9]{6,20}$";

/// `local@domain`: no white space or control characters, one `@`, at most 64 characters before it, and a
/// domain of two or more dot-separated labels, none empty and none starting or ending with `-`. The whole
/// is at most 254 characters (said by `maxLength`).
pub fn email_pattern() -> String {
    let local = format!("[^@{CONTROL}{WHITE_SPACE}]");
    let inner = format!("[^@.{CONTROL}{WHITE_SPACE}]");
    let edge = format!("[^@.\\-{CONTROL}{WHITE_SPACE}]");
    let label = format!("{edge}(?:{inner}*{edge})?");
    format!("^{local}{{1,64}}@{label}(?:\\.{label})+$")
}

/// Declares a named string schema (a component of the document) with its pattern.
macro_rules! text {
    ($(#[$doc:meta])* $name:ident, $description:expr, $example:expr, $pattern:expr $(, max = $max:expr)?) => {
        $(#[$doc])*
        pub struct $name;

        impl PartialSchema for $name {
            fn schema() -> RefOr<Schema> {
                ObjectBuilder::new()
                    .schema_type(Type::String)
                    .description(Some($description))
                    .pattern(Some($pattern))
                    $(.max_length(Some($max)))?
                    .examples([$example])
                    .into()
            }
        }

        impl ToSchema for $name {
            fn name() -> Cow<'static, str> {
                Cow::Borrowed(stringify!($name))
            }
        }
    };
}

text!(
    IdNumber,
    "National ID or passport number: 1–32 of `A-Z a-z 0-9 -`. With `product`, the matching key.",
    "079123456789",
    ID_NUMBER_PATTERN
);
text!(
    Cif,
    "Customer number: 1–32 characters after trimming surrounding white space, no control characters.",
    "CIF0012345",
    code_pattern(32)
);
text!(
    FullName,
    "1–200 characters after trimming surrounding white space, no control characters.",
    "Nguyen Van A",
    code_pattern(200)
);
text!(Phone, "6–20 digits with an optional leading `+`.", "+84901234567", PHONE_PATTERN);
text!(
    Email,
    "An e-mail address: `local@domain`, the domain dotted, no white space, at most 254 characters.",
    "a@example.com",
    email_pattern(),
    max = 254
);
text!(
    Product,
    "The product: 1–64 characters after trimming surrounding white space, no control characters.",
    "CREDIT_CARD",
    code_pattern(64)
);
text!(
    OwnerId,
    "The relationship manager's code: 1–64 characters after trimming, no control characters.",
    "RM001",
    code_pattern(64)
);
text!(
    Channel,
    "The calling channel: 1–64 characters after trimming, no control characters. With API keys \
    configured, it must be the key's channel.",
    "MOBILE_APP",
    code_pattern(64)
);
text!(
    JourneyId,
    "The channel's journey reference: 1–128 characters after trimming, no control characters.",
    "J-2026-000123",
    code_pattern(128)
);
text!(
    Reason,
    "Why the status changes (for example `NCB_REJECTED`, `AML_REJECTED`): 1–255 characters after \
    trimming, no control characters.",
    "NCB_REJECTED",
    code_pattern(255)
);
text!(
    RecordId,
    "A record's id, as the service returned it: 1–128 characters, no control characters.",
    "0193b6f0-6c2a-7d7e-9a51-0c4b3f0e2a11",
    record_id_pattern()
);

/// Only `null`, the same as leaving the field out: how one branch of a `oneOf` names the other's field.
fn null_only() -> RefOr<Schema> {
    ObjectBuilder::new().schema_type(Type::Null).into()
}

/// `NTB` (New To Bank) or `ETB` (Existing To Bank).
#[derive(ToSchema)]
pub enum CustomerType {
    NTB,
    ETB,
}

/// A record's status, exactly as on the wire (SPEC §1).
#[derive(ToSchema)]
pub enum Status {
    #[schema(rename = "New Lead")]
    NewLead,
    #[schema(rename = "New Opportunity")]
    NewOpportunity,
    #[schema(rename = "Close Won")]
    CloseWon,
    #[schema(rename = "Close Lost")]
    CloseLost,
}

/// The kind of record.
#[derive(ToSchema)]
pub enum RecordType {
    LEAD,
    OPPORTUNITY,
}

/// What a create did: `CREATED` (201), `REPLACED` (201: records of another RM closed) or `EXISTING` (200).
#[derive(ToSchema)]
pub enum CreateResult {
    CREATED,
    REPLACED,
    EXISTING,
}

/// A New To Bank customer.
#[derive(ToSchema)]
pub enum Ntb {
    NTB,
}

/// An Existing To Bank customer.
#[derive(ToSchema)]
pub enum Etb {
    ETB,
}

/// What a customer is described by besides the customer number. Personal data: never logged unmasked.
#[derive(ToSchema)]
pub struct CustomerDetails {
    idNumber: IdNumber,
    fullName: Option<FullName>,
    phone: Option<Phone>,
    email: Option<Email>,
}

/// A New To Bank customer: the customer number is optional.
#[derive(ToSchema)]
pub struct NtbCustomer {
    #[serde(flatten)]
    details: CustomerDetails,
    cif: Option<Cif>,
}

/// An Existing To Bank customer: the customer number is required.
#[derive(ToSchema)]
pub struct EtbCustomer {
    #[serde(flatten)]
    details: CustomerDetails,
    cif: Cif,
}

/// The fields of a create besides the customer.
#[derive(ToSchema)]
pub struct Journey {
    product: Product,
    ownerId: OwnerId,
    channel: Channel,
    journeyId: Option<JourneyId>,
}

/// A create for a New To Bank customer: makes or reuses a Lead.
#[derive(ToSchema)]
pub struct NtbCreateRequest {
    customerType: Ntb,
    customer: NtbCustomer,
    #[serde(flatten)]
    journey: Journey,
}

/// A create for an Existing To Bank customer: makes or reuses an Opportunity; `customer.cif` is required.
#[derive(ToSchema)]
pub struct EtbCreateRequest {
    customerType: Etb,
    customer: EtbCustomer,
    #[serde(flatten)]
    journey: Journey,
}

/// Body of the create operation (SPEC §2.1): NTB or ETB, told apart by `customerType`. Unknown fields are
/// ignored.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum CreateLeadOpportunityRequest {
    Ntb(NtbCreateRequest),
    Etb(EtbCreateRequest),
}

/// Who closes, and why.
#[derive(ToSchema)]
pub struct ChannelAndReason {
    channel: Channel,
    reason: Option<Reason>,
}

/// Close Won a lead; by default it is converted into a `Close Won` opportunity.
#[derive(ToSchema)]
pub struct CloseWonLeadRequest {
    leadId: RecordId,
    #[schema(schema_with = null_only)]
    opportunityId: Option<()>,
    /// Default `true`: convert the lead into a `Close Won` opportunity.
    #[schema(default = true)]
    convertToOpportunity: Option<bool>,
    #[serde(flatten)]
    by: ChannelAndReason,
}

/// Close Won an opportunity.
#[derive(ToSchema)]
pub struct CloseWonOpportunityRequest {
    opportunityId: RecordId,
    #[schema(schema_with = null_only)]
    leadId: Option<()>,
    /// Applies only to a lead.
    #[schema(schema_with = null_only)]
    convertToOpportunity: Option<()>,
    #[serde(flatten)]
    by: ChannelAndReason,
}

/// Body of close-won (SPEC §2.2): exactly one of `leadId` and `opportunityId`.
#[derive(ToSchema)]
#[serde(untagged)]
pub enum CloseWonRequest {
    Lead(CloseWonLeadRequest),
    Opportunity(CloseWonOpportunityRequest),
}

/// The only status the close-lost operations accept.
#[derive(ToSchema)]
pub enum CloseLostStatus {
    #[schema(rename = "Close Lost")]
    CloseLost,
}

/// Body of close-lost for an opportunity (SPEC §2.3).
#[derive(ToSchema)]
pub struct CloseLostOpportunityRequest {
    opportunityId: RecordId,
    status: CloseLostStatus,
    #[serde(flatten)]
    by: ChannelAndReason,
}

/// Body of close-lost for a lead (SPEC §2.4).
#[derive(ToSchema)]
pub struct CloseLostLeadRequest {
    leadId: RecordId,
    status: CloseLostStatus,
    #[serde(flatten)]
    by: ChannelAndReason,
}

/// Body of search (SPEC §3). A POST, so the id number never travels in a URL.
#[derive(ToSchema)]
pub struct SearchRequest {
    idNumber: IdNumber,
    product: Option<Product>,
}

#[cfg(test)]
mod tests {
    //! The document's patterns say exactly what the parsers accept: for strings of every sort, a pattern
    //! matches if and only if the domain type parses.

    use lifecycle::{Channel, Cif, Email, FullName, IdNumber, Invalid, JourneyId, OwnerId, Phone, Product, Reason};
    use std::sync::LazyLock;

    use proptest::prelude::*;
    use regex::Regex;

    use super::*;
    use crate::api::dto::RecordId as ParsedRecordId;
    use store::reports::StaleCursor;

    type Parser = fn(&str) -> Result<(), Invalid>;
    type Rule = (&'static str, Regex, Option<usize>, Parser);

    /// Each field's pattern (and `maxLength`, if any) beside its parser; compiled once.
    static RULES: LazyLock<Vec<Rule>> = LazyLock::new(|| {
        let re = |p: &str| Regex::new(p).unwrap();
        vec![
            ("idNumber", re(ID_NUMBER_PATTERN), None, |s| IdNumber::parse(s).map(drop)),
            ("cif", re(&code_pattern(32)), None, |s| Cif::parse(s).map(drop)),
            ("fullName", re(&code_pattern(200)), None, |s| FullName::parse(s).map(drop)),
            ("phone", re(PHONE_PATTERN), None, |s| Phone::parse(s).map(drop)),
            ("email", re(&email_pattern()), Some(254), |s| Email::parse(s).map(drop)),
            ("product", re(&code_pattern(64)), None, |s| Product::parse(s).map(drop)),
            ("ownerId", re(&code_pattern(64)), None, |s| OwnerId::parse(s).map(drop)),
            ("channel", re(&code_pattern(64)), None, |s| Channel::parse(s).map(drop)),
            ("journeyId", re(&code_pattern(128)), None, |s| JourneyId::parse(s).map(drop)),
            ("reason", re(&code_pattern(255)), None, |s| Reason::parse(s).map(drop)),
            ("recordId", re(&record_id_pattern()), None, |s| ParsedRecordId::parse(s).map(drop)),
            ("cursor", re(StaleCursor::PATTERN), None, |s| StaleCursor::parse(s).map(drop).ok_or(Invalid("a cursor"))),
        ]
    });

    fn agree(s: &str) -> Result<(), TestCaseError> {
        for (name, pattern, max_length, parse) in RULES.iter() {
            let by_schema = pattern.is_match(s) && max_length.is_none_or(|m| s.chars().count() <= m);
            prop_assert_eq!(by_schema, parse(s).is_ok(), "{} disagrees on {:?}", name, s);
        }
        Ok(())
    }

    /// Strings near the rules' edges: white space and control characters at either end, lengths around the
    /// limits, `@` and `.` and `-` where e-mail labels begin and end, and anything else.
    fn tricky() -> impl Strategy<Value = String> {
        let piece = prop_oneof![
            Just(" ".to_owned()),
            Just("\t".to_owned()),
            Just("\u{85}".to_owned()),
            Just("\u{a0}".to_owned()),
            Just("\u{3000}".to_owned()),
            Just("\u{0}".to_owned()),
            Just("\u{1f}".to_owned()),
            Just("\u{9f}".to_owned()),
            Just("@".to_owned()),
            Just(".".to_owned()),
            Just("-".to_owned()),
            Just("+".to_owned()),
            "[0-9]{1,8}",
            "[0-9]{17,19}",
            "[A-Za-z]{1,8}",
            "[a-z]{60,70}",
            "\\PC{1,4}",
            "\\p{Cc}",
            "\\s",
        ];
        prop::collection::vec(piece, 0..12).prop_map(|v| v.concat())
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(3000))]

        #[test]
        fn patterns_match_exactly_what_parses(s in tricky()) {
            agree(&s)?;
        }

        #[test]
        fn patterns_match_exactly_what_parses_for_any_text(s in "\\PC{0,300}|.{0,300}") {
            agree(&s)?;
        }
    }

    #[test]
    fn edges() {
        for s in [
            "",
            " ",
            "a",
            " a ",
            "\ta\n",
            "a b",
            "a\u{0}b",
            "\u{85}a",
            &"a".repeat(64),
            &"a".repeat(65),
            &format!(" {} ", "a".repeat(64)),
            "a@b.c",
            "a@b",
            "a@-b.c",
            "a@b-.c",
            "a@b..c",
            "a@@b.c",
            "@b.c",
            &format!("{}@b.c", "a".repeat(64)),
            &format!("{}@b.c", "a".repeat(65)),
            &format!("a@{}.c", "b".repeat(250)),
            "+123456",
            "12345",
            "AB-12",
            "AB_12",
            "1.2",
            "0.0",
            "123456789012345678.1",
            "1234567890123456789.1",
            "1.1234567890123456789",
            "1.2\n",
        ] {
            agree(s).unwrap();
        }
    }
}
