//! Value types of the lifecycle. Each is built only through `parse`, which enforces the rules of SPEC §2;
//! past the HTTP edge nothing is checked again.

use std::fmt;

/// Why a raw value was refused. The HTTP layer pairs it with the field's name.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct Invalid(pub &'static str);

fn length_between(s: &str, min: usize, max: usize, msg: &'static str) -> Result<(), Invalid> {
    let n = s.chars().count();
    if n < min || n > max {
        return Err(Invalid(msg));
    }
    Ok(())
}

/// No control characters: they have no place in codes or names and would corrupt logs and CSV exports.
fn printable(s: &str, msg: &'static str) -> Result<(), Invalid> {
    if s.chars().any(char::is_control) {
        return Err(Invalid(msg));
    }
    Ok(())
}

/// A trimmed code: 1..=max characters, no control characters, no surrounding whitespace.
fn code(s: &str, max: usize, msg: &'static str) -> Result<String, Invalid> {
    let t = s.trim();
    length_between(t, 1, max, msg)?;
    printable(t, msg)?;
    Ok(t.to_owned())
}

macro_rules! plain_code {
    ($(#[$doc:meta])* $name:ident, $max:expr, $msg:expr) => {
        $(#[$doc])*
        #[derive(Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Debug)]
        pub struct $name(String);

        impl $name {
            /// Validates and trims the raw value.
            pub fn parse(s: &str) -> Result<Self, Invalid> {
                code(s, $max, $msg).map(Self)
            }
            /// A value read back from a store, taken as it is: records written outside the service need
            /// not meet the input rules, and refusing to read them would make a customer unreadable.
            pub fn from_stored(s: String) -> Self {
                Self(s)
            }
            pub fn as_str(&self) -> &str {
                &self.0
            }
            pub fn into_string(self) -> String {
                self.0
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(&self.0)
            }
        }
    };
}

plain_code!(
    /// The product a journey is for (`CREDIT_CARD`, `PERSONAL_LOAN`, …): 1–64 characters.
    Product, 64, "must be 1-64 characters without control characters"
);
plain_code!(
    /// The relationship manager's code in the bank (`RM001`): 1–64 characters.
    OwnerId, 64, "must be 1-64 characters without control characters"
);
plain_code!(
    /// The calling channel (`MOBILE_APP`): 1–64 characters.
    Channel, 64, "must be 1-64 characters without control characters"
);
plain_code!(
    /// The channel's journey reference: 1–128 characters.
    JourneyId, 128, "must be 1-128 characters without control characters"
);
plain_code!(
    /// Why a status changed (`NCB_REJECTED`, `AML_REJECTED`, `OWNER_CHANGED`): 1–255 characters.
    Reason, 255, "must be 1-255 characters without control characters"
);

impl Reason {
    /// The reason recorded when a create closes records of another relationship manager.
    pub fn owner_changed() -> Self {
        Reason("OWNER_CHANGED".to_owned())
    }
}

/// Keeps the first and last `keep` characters, stars the rest: enough to correlate log lines, not enough
/// to identify a customer.
fn mask(f: &mut fmt::Formatter<'_>, s: &str, keep: usize) -> fmt::Result {
    let chars: Vec<char> = s.chars().collect();
    if chars.len() <= keep * 2 + 2 {
        return f.write_str(&"*".repeat(chars.len().max(1)));
    }
    let head: String = chars[..keep].iter().collect();
    let tail: String = chars[chars.len() - keep..].iter().collect();
    write!(f, "{head}{}{tail}", "*".repeat(chars.len() - keep * 2))
}

macro_rules! personal {
    ($(#[$doc:meta])* $name:ident, $keep:expr, $check:expr) => {
        $(#[$doc])*
        ///
        /// Personal data (SPEC §4): `Debug` and `Display` mask the value, so no log line prints it by
        /// accident. [`Self::expose`] is the one deliberate way to the raw value.
        #[derive(Clone, PartialEq, Eq, Hash)]
        pub struct $name(String);

        impl $name {
            /// Validates the raw value.
            pub fn parse(s: &str) -> Result<Self, Invalid> {
                #[allow(clippy::redundant_closure_call)]
                ($check)(s).map(Self)
            }
            /// A value read back from a store, taken as it is (see `Product::from_stored`).
            pub fn from_stored(s: String) -> Self {
                Self(s)
            }
            /// The raw value, for storage and for the API's own responses only.
            pub fn expose(&self) -> &str {
                &self.0
            }
        }

        impl fmt::Debug for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(concat!(stringify!($name), "("))?;
                mask(f, &self.0, $keep)?;
                f.write_str(")")
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                mask(f, &self.0, $keep)
            }
        }
    };
}

personal!(
    /// The customer's national ID or passport number: 1–32 of `A-Z a-z 0-9 -`. Part of the matching key.
    ///
    /// Letters are compared without regard to case (`b1234567` and `B1234567` are one passport), so the
    /// value is upper-cased here, once, and every store sees that one form.
    IdNumber,
    2,
    |s: &str| {
        if s.is_empty() || s.len() > 32 || !s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-') {
            return Err(Invalid("must be 1-32 characters of A-Z, a-z, 0-9 and -"));
        }
        Ok(s.to_ascii_uppercase())
    }
);
personal!(
    /// The customer number of an existing customer: 1–32 characters.
    Cif,
    1,
    |s: &str| code(s, 32, "must be 1-32 characters without control characters")
);
personal!(
    /// The customer's name as the channel captured it: 1–200 characters.
    FullName,
    0,
    |s: &str| code(s, 200, "must be 1-200 characters without control characters")
);
personal!(
    /// A phone number: 6–20 digits with an optional leading `+`.
    Phone,
    2,
    |s: &str| {
        let digits = s.strip_prefix('+').unwrap_or(s);
        if digits.len() < 6 || digits.len() > 20 || !digits.bytes().all(|b| b.is_ascii_digit()) {
            return Err(Invalid("must be 6-20 digits with an optional leading +"));
        }
        Ok(s.to_owned())
    }
);
personal!(
    /// An e-mail address: `local@domain` with a dotted domain, at most 254 characters (64 before the `@`).
    /// Lengths count characters, as every other rule does and as a JSON Schema `maxLength` can say.
    Email,
    1,
    |s: &str| {
        const MSG: &str = "must be an e-mail address";
        if s.chars().count() > 254 || s.chars().any(|c| c.is_whitespace() || c.is_control()) {
            return Err(Invalid(MSG));
        }
        let Some((local, domain)) = s.rsplit_once('@') else {
            return Err(Invalid(MSG));
        };
        let labels_ok = domain.split('.').all(|l| !l.is_empty() && !l.starts_with('-') && !l.ends_with('-'));
        if local.is_empty() || local.chars().count() > 64 || local.contains('@') || !domain.contains('.') || !labels_ok {
            return Err(Invalid(MSG));
        }
        Ok(s.to_owned())
    }
);

/// New To Bank or Existing To Bank.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CustomerType {
    Ntb,
    Etb,
}

impl CustomerType {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "NTB" => Ok(Self::Ntb),
            "ETB" => Ok(Self::Etb),
            _ => Err(Invalid("must be NTB or ETB")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Ntb => "NTB",
            Self::Etb => "ETB",
        }
    }
}

/// The two record types of the CRM.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum RecordType {
    Lead,
    Opportunity,
}

impl RecordType {
    /// The wire name: `LEAD` / `OPPORTUNITY`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Lead => "LEAD",
            Self::Opportunity => "OPPORTUNITY",
        }
    }
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "LEAD" => Ok(Self::Lead),
            "OPPORTUNITY" => Ok(Self::Opportunity),
            _ => Err(Invalid("must be LEAD or OPPORTUNITY")),
        }
    }
    /// The open status of this type: `New Lead` or `New Opportunity`.
    pub fn open_status(self) -> Status {
        match self {
            Self::Lead => Status::NewLead,
            Self::Opportunity => Status::NewOpportunity,
        }
    }
}

/// The four statuses of SPEC §1, spelled on the wire exactly as [`Status::as_str`] returns.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Status {
    NewLead,
    NewOpportunity,
    CloseWon,
    CloseLost,
}

impl Status {
    pub const ALL: [Status; 4] = [Status::NewLead, Status::NewOpportunity, Status::CloseWon, Status::CloseLost];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::NewLead => "New Lead",
            Self::NewOpportunity => "New Opportunity",
            Self::CloseWon => "Close Won",
            Self::CloseLost => "Close Lost",
        }
    }
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        Self::ALL
            .into_iter()
            .find(|st| st.as_str() == s)
            .ok_or(Invalid("must be New Lead, New Opportunity, Close Won or Close Lost"))
    }
    /// Open means `New Lead` / `New Opportunity` (SPEC §6, reading 2: a `Close Won` lead is final).
    pub fn is_open(self) -> bool {
        matches!(self, Self::NewLead | Self::NewOpportunity)
    }
}

/// How records are matched to a request (SPEC §1): by `idNumber` and `product`, or widened to `idNumber`
/// alone by configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Matching {
    #[default]
    IdNumberAndProduct,
    IdNumber,
}

impl Matching {
    pub fn parse(s: &str) -> Result<Self, Invalid> {
        match s {
            "id_number_and_product" => Ok(Self::IdNumberAndProduct),
            "id_number" => Ok(Self::IdNumber),
            _ => Err(Invalid("must be id_number_and_product or id_number")),
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Self::IdNumberAndProduct => "id_number_and_product",
            Self::IdNumber => "id_number",
        }
    }
    /// The matching key of a request. An `IdNumber` never contains `/`, so the two parts cannot collide.
    pub fn key(self, id_number: &IdNumber, product: &Product) -> MatchKey {
        match self {
            Self::IdNumberAndProduct => MatchKey(format!("{}/{}", id_number.expose(), product.as_str())),
            Self::IdNumber => MatchKey(id_number.expose().to_owned()),
        }
    }
}

/// The matching key of SPEC §1. It contains the id number, so it masks itself like one.
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct MatchKey(String);

impl MatchKey {
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for MatchKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("MatchKey(")?;
        mask(f, &self.0, 2)?;
        f.write_str(")")
    }
}

/// The customer part of a create request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Customer {
    pub id_number: IdNumber,
    pub cif: Option<Cif>,
    pub full_name: Option<FullName>,
    pub phone: Option<Phone>,
    pub email: Option<Email>,
}

/// A validated create request (SPEC §2.1). For `Etb`, `customer.cif` is always present.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CreateRequest {
    pub customer_type: CustomerType,
    pub customer: Customer,
    pub product: Product,
    pub owner_id: OwnerId,
    pub channel: Channel,
    pub journey_id: Option<JourneyId>,
}

impl CreateRequest {
    pub fn match_key(&self, matching: Matching) -> MatchKey {
        matching.key(&self.customer.id_number, &self.product)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn personal_values_never_print_raw() {
        let id = IdNumber::parse("079123456789").unwrap();
        let phone = Phone::parse("+84901234567").unwrap();
        let email = Email::parse("nguyen.van.a@example.com").unwrap();
        let name = FullName::parse("Nguyen Van A").unwrap();
        let cif = Cif::parse("CIF0012345").unwrap();
        let printed = format!("{id} {id:?} {phone} {phone:?} {email} {email:?} {name} {name:?} {cif} {cif:?}");
        for raw in ["079123456789", "84901234567", "nguyen.van.a", "Nguyen", "0012345"] {
            assert!(!printed.contains(raw), "{raw} leaked in {printed}");
        }
        let key = Matching::IdNumberAndProduct.key(&id, &Product::parse("CARD").unwrap());
        assert!(!format!("{key:?}").contains("079123456789"));
    }

    #[test]
    fn id_number_rules() {
        assert_eq!(IdNumber::parse("AB-123-cd").unwrap().expose(), "AB-123-CD", "upper-cased, once, here");
        assert!(IdNumber::parse(&"9".repeat(32)).is_ok());
        for bad in ["", " 1", "12 3", "12/3", "１２３", &"9".repeat(33)] {
            assert!(IdNumber::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn phone_and_email_rules() {
        for ok in ["+84901234567", "123456", "12345678901234567890"] {
            assert!(Phone::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["12345", "+", "++123456", "123-456-789", "123456789012345678901", "12345a"] {
            assert!(Phone::parse(bad).is_err(), "{bad}");
        }
        for ok in ["a@example.com", "first.last+tag@sub.example.co"] {
            assert!(Email::parse(ok).is_ok(), "{ok}");
        }
        for bad in ["", "a", "a@", "@example.com", "a@example", "a b@example.com", "a@exa mple.com", "a@.com"] {
            assert!(Email::parse(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn codes_are_trimmed_and_bounded() {
        assert_eq!(OwnerId::parse(" RM001 ").unwrap().as_str(), "RM001");
        assert!(OwnerId::parse("   ").is_err());
        assert!(Product::parse(&"P".repeat(65)).is_err());
        assert!(Channel::parse("MOBILE\u{0}APP").is_err());
    }

    #[test]
    fn masks_keep_the_ends_and_star_the_middle() {
        // Exact forms: a mask that printed nothing, or kept a character more, would still hide the raw
        // value from the test above, but not be the mask the logs are read with.
        let id = IdNumber::parse("079123456789").unwrap();
        assert_eq!((format!("{id}"), format!("{id:?}")), ("07********89".into(), "IdNumber(07********89)".into()));
        // Up to keep * 2 + 2 characters the whole value is starred; past that, the first and last `keep` show.
        assert_eq!(IdNumber::parse("ABCDEF").unwrap().to_string(), "******");
        assert_eq!(IdNumber::parse("ABCDEFG").unwrap().to_string(), "AB***FG");
        assert_eq!(Cif::parse("C123").unwrap().to_string(), "****");
        assert_eq!(Cif::parse("C1234").unwrap().to_string(), "C***4");
        assert_eq!(Email::parse("a@b.vn").unwrap().to_string(), "a****n");
        assert_eq!(FullName::parse("Nguyen Van A").unwrap().to_string(), "************", "a name keeps nothing");
        assert_eq!(FullName::parse("An").unwrap().to_string(), "**");
        assert_eq!(Phone::parse("+84901234567").unwrap().to_string(), "+8********67");
        // Characters, not bytes.
        assert_eq!(FullName::parse("Đặng").unwrap().to_string(), "****");
        assert_eq!(IdNumber::from_stored(String::new()).to_string(), "*", "even nothing prints as something");

        let key = Matching::IdNumberAndProduct.key(&id, &Product::parse("CARD").unwrap());
        assert_eq!(key.expose(), "079123456789/CARD");
        assert_eq!(format!("{key:?}"), "MatchKey(07*************RD)");
        let widened = Matching::IdNumber.key(&id, &Product::parse("CARD").unwrap());
        assert_eq!(widened.expose(), "079123456789");
    }

    /// `parse` takes 1..=`max` characters (of any width) and refuses an empty value and one more.
    fn bounded<T>(parse: fn(&str) -> Result<T, Invalid>, max: usize, what: &str) {
        assert!(parse("x").is_ok(), "{what}: one character is the least");
        assert!(parse("").is_err(), "{what}: empty");
        assert!(parse(&"x".repeat(max)).is_ok(), "{what}: {max} characters");
        assert!(parse(&"é".repeat(max)).is_ok(), "{what}: {max} characters of two bytes each");
        assert!(parse(&"x".repeat(max + 1)).is_err(), "{what}: {} characters", max + 1);
    }

    #[test]
    fn lengths_are_inclusive_and_counted_in_characters() {
        bounded(Product::parse, 64, "product");
        bounded(OwnerId::parse, 64, "ownerId");
        bounded(Channel::parse, 64, "channel");
        bounded(JourneyId::parse, 128, "journeyId");
        bounded(Reason::parse, 255, "reason");
        bounded(Cif::parse, 32, "cif");
        bounded(FullName::parse, 200, "fullName");
    }

    #[test]
    fn wire_names_are_the_specs_and_read_back() {
        // Statuses: tests/rules.rs.
        for (value, wire) in [(CustomerType::Ntb, "NTB"), (CustomerType::Etb, "ETB")] {
            assert_eq!((value.as_str(), CustomerType::parse(wire)), (wire, Ok(value)));
        }
        for (value, wire) in [(RecordType::Lead, "LEAD"), (RecordType::Opportunity, "OPPORTUNITY")] {
            assert_eq!((value.as_str(), RecordType::parse(wire)), (wire, Ok(value)));
        }
        for (value, wire) in
            [(Matching::IdNumberAndProduct, "id_number_and_product"), (Matching::IdNumber, "id_number")]
        {
            assert_eq!((value.as_str(), Matching::parse(wire)), (wire, Ok(value)));
        }
        // Exact spellings only: the SPEC's, not a case-folded or padded one.
        assert!(CustomerType::parse("ntb").is_err() && CustomerType::parse(" NTB").is_err());
        assert!(RecordType::parse("Lead").is_err() && RecordType::parse("").is_err());
        assert!(Matching::parse("ID_NUMBER").is_err() && Matching::parse("product").is_err());
    }

    #[test]
    fn widened_matching_ignores_product() {
        let id = IdNumber::parse("X1").unwrap();
        let a = Product::parse("CARD").unwrap();
        let b = Product::parse("LOAN").unwrap();
        assert_ne!(Matching::IdNumberAndProduct.key(&id, &a), Matching::IdNumberAndProduct.key(&id, &b));
        assert_eq!(Matching::IdNumber.key(&id, &a), Matching::IdNumber.key(&id, &b));
    }
}
