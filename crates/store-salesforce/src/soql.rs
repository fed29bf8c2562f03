//! SOQL text: string literals escaped as SOQL defines them, record ids checked before they reach a query,
//! and query URLs in which only the service's own composite references (`@{ref.records[0].Id}`) stay live.

use lifecycle::RecordType;

/// A SOQL string literal, quotes included. Backslash escapes per the SOQL reference, so no value can close
/// the literal early.
pub(crate) fn literal(value: &str) -> String {
    let mut out = String::with_capacity(value.len() + 2);
    out.push('\'');
    for c in value.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\'' => out.push_str("\\'"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c => out.push(c),
        }
    }
    out.push('\'');
    out
}

/// The sObject a record type lives in.
pub(crate) fn sobject(record_type: RecordType) -> &'static str {
    match record_type {
        RecordType::Lead => "Lead",
        RecordType::Opportunity => "Opportunity",
    }
}

/// Whether `id` can be a Salesforce id of that type: 15 or 18 letters and digits with the object's key
/// prefix (`00Q` Lead, `006` Opportunity), and for 18 characters the case-safe suffix that encodes the
/// case of the first 15. Anything else is unknown without asking the org, which also keeps arbitrary text
/// out of queries (the org refuses a malformed id in a filter with an error, not an empty answer).
pub(crate) fn is_record_id(record_type: RecordType, id: &str) -> bool {
    let prefix = match record_type {
        RecordType::Lead => "00Q",
        RecordType::Opportunity => "006",
    };
    let shape = (id.len() == 15 || id.len() == 18) && id.bytes().all(|b| b.is_ascii_alphanumeric());
    shape && id.starts_with(prefix) && (id.len() == 15 || id[15..] == case_suffix(&id[..15]))
}

/// The 18-character form of a record id of that type (the form the org answers with, and the one the
/// local store keeps history and keys under), or `None` when `id` cannot be one.
pub(crate) fn full_id(record_type: RecordType, id: &str) -> Option<String> {
    if !is_record_id(record_type, id) {
        return None;
    }
    Some(if id.len() == 15 { format!("{id}{}", case_suffix(id)) } else { id.to_owned() })
}

/// The three characters Salesforce appends to a 15-character id: for each group of five, a bit per
/// upper-case letter, as one of `A`–`Z`, `0`–`5`.
fn case_suffix(id15: &str) -> String {
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";
    id15.as_bytes()
        .chunks(5)
        .map(|chunk| {
            let bits =
                chunk.iter().enumerate().fold(0usize, |acc, (i, b)| acc | (usize::from(b.is_ascii_uppercase()) << i));
            char::from(ALPHABET[bits])
        })
        .collect()
}

/// The `q=` parameter of a query URL, percent-encoded throughout. A request value may hold `@{…}`, which
/// the composite API would read as a reference to another subrequest's result: encoded, it stays text.
pub(crate) fn encode_query(soql: &str) -> String {
    url::form_urlencoded::byte_serialize(soql.as_bytes()).collect()
}

/// The `q=` parameter of a query whose SOQL is `before`, then the composite reference `@{reference}`, then
/// `after`. Only the reference is left as the org resolves it; the rest is encoded as [`encode_query`] does.
pub(crate) fn encode_query_with_reference(before: &str, reference: &str, after: &str) -> String {
    format!("{}@{{{reference}}}{}", encode_query(before), encode_query(after))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_cannot_be_closed_early() {
        assert_eq!(literal("O'Brien"), r"'O\'Brien'");
        assert_eq!(literal(r"a\' OR Id != null"), r"'a\\\' OR Id != null'");
        assert_eq!(literal("x\ny"), r"'x\ny'");
        assert_eq!(literal(""), "''");
    }

    #[test]
    fn record_ids_are_checked_by_shape_and_prefix() {
        // Salesforce's documented example: 001A0000006Vm9r → 001A0000006Vm9rIAC.
        assert_eq!(case_suffix("001A0000006Vm9r"), "IAC");
        assert!(is_record_id(RecordType::Lead, "00Q5g00000ABCDE"));
        assert!(is_record_id(RecordType::Lead, &format!("00Q5g00000ABCDE{}", case_suffix("00Q5g00000ABCDE"))));
        assert!(!is_record_id(RecordType::Lead, "00Q5g00000ABCDEAAA"), "wrong suffix");
        let full = format!("00Q5g00000ABCDE{}", case_suffix("00Q5g00000ABCDE"));
        assert_eq!(full_id(RecordType::Lead, "00Q5g00000ABCDE").as_deref(), Some(full.as_str()));
        assert_eq!(full_id(RecordType::Lead, &full).as_deref(), Some(full.as_str()));
        assert_eq!(full_id(RecordType::Opportunity, &full), None);
        assert!(!is_record_id(RecordType::Opportunity, "00Q5g00000ABCDE"));
        assert!(is_record_id(RecordType::Opportunity, "0065g00000ABCDE"));
        for bad in ["", "00Q", "00Q5g00000ABCDEFG", "00Q5g00000ABCDEF'H", "00Q5g00000ABC EFGH", "00Q5g00000ABCDEFGHI"] {
            assert!(!is_record_id(RecordType::Lead, bad), "{bad}");
        }
    }

    #[test]
    fn references_survive_encoding_and_values_cannot_make_one() {
        assert_eq!(
            encode_query_with_reference("SELECT Id FROM User WHERE Id = '", "rec.records[0].OwnerId", "'"),
            "SELECT+Id+FROM+User+WHERE+Id+%3D+%27@{rec.records[0].OwnerId}%27"
        );
        assert_eq!(encode_query("a = '1&2'"), "a+%3D+%271%262%27");
        assert_eq!(encode_query("p = 'x@{y}'"), "p+%3D+%27x%40%7By%7D%27");
    }
}
