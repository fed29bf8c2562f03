//! Salesforce record ids: 15-character case-sensitive ids made case-insensitive by the 3-character
//! checksum suffix (the documented 18-character form), key prefixes, and the "is this a well-formed
//! id" check that decides between `MALFORMED_ID` and `NOT_FOUND`.

const BASE62: &[u8; 62] = b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz";
const SUFFIX: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ012345";

/// The 3-character suffix that turns a 15-character id into its 18-character form: for each block
/// of 5 characters, a bit per upper-case letter, read as an index into `A-Z0-5`.
fn checksum(id15: &[u8]) -> String {
    let mut out = String::with_capacity(3);
    for block in id15.chunks(5).take(3) {
        let mut flags = 0usize;
        for (i, c) in block.iter().enumerate() {
            if c.is_ascii_uppercase() {
                flags |= 1 << i;
            }
        }
        out.push(SUFFIX[flags & 31] as char);
    }
    out
}

/// A new 18-character id with `prefix` for sequence number `seq`. Ids sort (as strings) in the
/// order of `seq`, because the record number is fixed-width base 62 in ASCII order.
pub(crate) fn make_id(prefix: &str, seq: u64) -> String {
    let mut digits = [b'0'; 9];
    let mut n = seq;
    for slot in digits.iter_mut().rev() {
        *slot = BASE62[(n % 62) as usize];
        n /= 62;
    }
    let mut id15 = String::with_capacity(18);
    id15.push_str(prefix);
    id15.push_str("Wt0");
    id15.push_str(std::str::from_utf8(&digits).unwrap_or("000000000"));
    let suffix = checksum(id15.as_bytes());
    id15.push_str(&suffix);
    id15
}

/// The 18-character form of a well-formed 15- or 18-character id, or `None` when `raw` is not one
/// (wrong length, characters outside `[0-9A-Za-z]`, or an 18-character id whose suffix does not match).
pub(crate) fn normalize(raw: &str) -> Option<String> {
    let bytes = raw.as_bytes();
    if !(bytes.len() == 15 || bytes.len() == 18) || !bytes.iter().all(u8::is_ascii_alphanumeric) {
        return None;
    }
    let expected = checksum(&bytes[..15]);
    if bytes.len() == 18 {
        if !raw[15..].eq_ignore_ascii_case(&expected) {
            return None;
        }
        return Some(format!("{}{}", &raw[..15], expected));
    }
    Some(format!("{raw}{expected}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_are_18_chars_increasing_and_self_checking() {
        let a = make_id("00Q", 1);
        let b = make_id("00Q", 62);
        assert_eq!(a.len(), 18);
        assert!(a < b);
        assert_eq!(normalize(&a).as_deref(), Some(a.as_str()));
        assert_eq!(normalize(&a[..15]).as_deref(), Some(a.as_str()));
        assert!(normalize("not-an-id").is_none());
        assert!(normalize("00QWt000000000BXXX").is_none());
    }

    #[test]
    fn known_salesforce_checksum() {
        // Documented example pair: 001A0000006Vm9r -> 001A0000006Vm9rIAC.
        assert_eq!(normalize("001A0000006Vm9r").as_deref(), Some("001A0000006Vm9rIAC"));
    }
}
