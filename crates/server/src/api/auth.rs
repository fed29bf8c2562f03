//! API keys per channel (SPEC §4), and keys for reporting.
//!
//! A channel sends `Authorization: Bearer <key>`. Each key has a role: a `channel` key (the default) calls
//! the lifecycle operations and reads records; a `reporting` key reads the reports (and the dashboard's
//! data) and nothing else. Each is refused (403 `FORBIDDEN`) where the other belongs. The service holds only the SHA-256 of each key (keys are
//! 256 random bits, so a fast hash is enough: there is nothing to brute-force) and compares hashes in
//! constant time. A key belongs to one channel; the body's `channel` must be that channel (checked in the
//! handlers, which own the body). Missing or unknown key: 401 `UNAUTHENTICATED`; wrong channel: 403
//! `FORBIDDEN`. With no keys configured the service runs open, and the settings allow that only on a
//! loopback address.

use std::fmt;

use axum::extract::{FromRequestParts, Request};
use axum::http::{header, request::Parts};
use base64::Engine;
use lifecycle::Channel;
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use super::error::ApiError;
use super::AppState;

/// What a key may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Role {
    /// A digital channel: the lifecycle operations and the reads.
    #[default]
    Channel,
    /// Reporting: the reports, nothing else.
    Reporting,
}

impl Role {
    pub fn parse(s: &str) -> Result<Self, String> {
        match s {
            "channel" => Ok(Self::Channel),
            "reporting" => Ok(Self::Reporting),
            other => Err(format!("role {other:?} must be channel or reporting")),
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Channel => "channel",
            Self::Reporting => "reporting",
        }
    }
}

/// One configured key: the channel it belongs to (for a reporting key, the name it is logged under), its
/// role, and the SHA-256 of the key.
#[derive(Clone, PartialEq, Eq)]
pub struct ApiKey {
    pub channel: Channel,
    pub role: Role,
    pub sha256: [u8; 32],
}

impl fmt::Debug for ApiKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ApiKey({}, {}, sha256:…)", self.channel, self.role.as_str())
    }
}

fn sha256(s: &str) -> [u8; 32] {
    Sha256::digest(s.as_bytes()).into()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

impl ApiKey {
    /// `CHANNEL:hex-sha256` (a channel key) or `reporting:NAME:hex-sha256`, as in `CRM_API_KEYS`.
    pub fn parse_entry(entry: &str) -> Result<Self, String> {
        let (name, hash) =
            entry.trim().rsplit_once(':').ok_or("must be CHANNEL:SHA256 or reporting:NAME:SHA256 (64 hex digits)")?;
        match name.split_once(':') {
            Some((role, name)) => Ok(Self { role: Role::parse(role)?, ..Self::new(name, hash)? }),
            None => Self::new(name, hash),
        }
    }

    pub fn new(channel: &str, sha256_hex: &str) -> Result<Self, String> {
        let channel = Channel::parse(channel).map_err(|e| format!("channel {channel:?} {e}"))?;
        let hash = sha256_hex.trim();
        if hash.len() != 64 || !hash.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(format!(
                "the hash for {channel} must be 64 hex digits (the SHA-256 of the key, never the key)"
            ));
        }
        let mut sha = [0u8; 32];
        for (i, byte) in sha.iter_mut().enumerate() {
            *byte = u8::from_str_radix(&hash[i * 2..i * 2 + 2], 16).map_err(|e| e.to_string())?;
        }
        Ok(Self { channel, role: Role::Channel, sha256: sha })
    }

    /// A new random key for `channel`: the key (to hand to the channel, once) and its configuration entry.
    pub fn generate(channel: &Channel) -> Result<(String, ApiKey), String> {
        Self::generate_with(channel, Role::Channel)
    }

    /// A new random key of `role`, named `channel`.
    pub fn generate_with(channel: &Channel, role: Role) -> Result<(String, ApiKey), String> {
        let mut secret = [0u8; 32];
        getrandom::getrandom(&mut secret).map_err(|e| format!("no randomness: {e}"))?;
        let key = format!("crm_{}", base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(secret));
        Ok((key.clone(), ApiKey { channel: channel.clone(), role, sha256: sha256(&key) }))
    }

    pub fn sha256_hex(&self) -> String {
        hex(&self.sha256)
    }

    /// The entry to configure for this key, as `parse_entry` reads it.
    pub fn entry(&self) -> String {
        match self.role {
            Role::Channel => format!("{}:{}", self.channel, self.sha256_hex()),
            Role::Reporting => format!("reporting:{}:{}", self.channel, self.sha256_hex()),
        }
    }
}

/// The configured keys.
#[derive(Debug, Clone, Default)]
pub struct ApiKeys(pub Vec<ApiKey>);

impl ApiKeys {
    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }

    /// The key `presented` is. Every configured hash is compared, in constant time.
    pub fn authenticate(&self, presented: &str) -> Option<&ApiKey> {
        let hash = sha256(presented);
        let mut found = None;
        for key in &self.0 {
            if bool::from(key.sha256.ct_eq(&hash)) {
                found = Some(key);
            }
        }
        found
    }
}

/// Who is calling: the channel its API key belongs to, or `None` when the service runs open.
#[derive(Debug, Clone, Default)]
pub struct Caller(pub Option<Channel>);

impl Caller {
    /// SPEC §4: the body's `channel` must be the key's.
    pub fn check(&self, channel: &Channel) -> Result<(), ApiError> {
        match &self.0 {
            Some(own) if own != channel => Err(ApiError::Forbidden),
            _ => Ok(()),
        }
    }
}

impl<S: Send + Sync> FromRequestParts<S> for Caller {
    type Rejection = std::convert::Infallible;

    async fn from_request_parts(parts: &mut Parts, _: &S) -> Result<Self, Self::Rejection> {
        Ok(parts.extensions.get::<Caller>().cloned().unwrap_or_default())
    }
}

fn bearer(request: &Request) -> Option<&str> {
    let value = request.headers().get(header::AUTHORIZATION)?.to_str().ok()?;
    let (scheme, token) = value.split_once(' ')?;
    scheme.eq_ignore_ascii_case("bearer").then(|| token.trim()).filter(|t| !t.is_empty())
}

/// Admits a request with a known key of `role`, naming its channel in the request's log lines and putting
/// its [`Caller`] in the request's extensions; with no keys configured (open, on loopback only), admits
/// every request. Otherwise the refusal: 401 for a missing or unknown key, 403 for a key of the other role.
/// Part of the routes' admission (`super::admission`).
pub fn admit(state: &AppState, role: Role, request: &mut Request) -> Result<(), ApiError> {
    if state.api_keys.is_empty() {
        return Ok(());
    }
    let Some(key) = bearer(request).and_then(|key| state.api_keys.authenticate(key)).cloned() else {
        return Err(ApiError::Unauthenticated);
    };
    let channel = key.channel;
    crate::telemetry::request::set_channel(channel.as_str());
    if key.role != role {
        return Err(ApiError::WrongRole);
    }
    request.extensions_mut().insert(Caller(Some(channel)));
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn generated_keys_authenticate_their_channel_only() {
        let mobile = Channel::parse("MOBILE_APP").unwrap();
        let (key, entry) = ApiKey::generate(&mobile).unwrap();
        assert!(key.starts_with("crm_") && key.len() > 40);
        let parsed = ApiKey::parse_entry(&format!("MOBILE_APP:{}", entry.sha256_hex())).unwrap();
        assert_eq!(parsed, entry);
        let (other_key, other) = ApiKey::generate(&Channel::parse("LENDING").unwrap()).unwrap();
        let keys = ApiKeys(vec![entry, other]);
        assert_eq!(keys.authenticate(&key).map(|k| &k.channel), Some(&mobile));
        assert_eq!(keys.authenticate(&other_key).map(|k| k.channel.as_str()), Some("LENDING"));
        assert_eq!(keys.authenticate("crm_guess"), None);
        assert_eq!(keys.authenticate(""), None);
        assert!(!format!("{keys:?}").contains(&parsed.sha256_hex()), "Debug hides hashes");
    }

    #[test]
    fn entries_must_hold_a_hash_not_a_key() {
        assert!(ApiKey::parse_entry("MOBILE_APP").is_err());
        assert!(ApiKey::parse_entry("MOBILE_APP:crm_abc").is_err());
        assert!(ApiKey::parse_entry(&format!(":{}", "a".repeat(64))).is_err());
        assert!(ApiKey::parse_entry(&format!("M:{}", "g".repeat(64))).is_err());
        assert!(ApiKey::parse_entry(&format!("M:{}", "A".repeat(64))).is_ok());
    }

    #[test]
    fn reporting_entries_carry_their_role() {
        let hash = "a".repeat(64);
        let key = ApiKey::parse_entry(&format!("reporting:ANALYTICS:{hash}")).unwrap();
        assert_eq!((key.channel.as_str(), key.role), ("ANALYTICS", Role::Reporting));
        assert_eq!(ApiKey::parse_entry(&key.entry()).unwrap(), key);
        assert_eq!(ApiKey::parse_entry(&format!("channel:MOBILE_APP:{hash}")).unwrap().role, Role::Channel);
        assert_eq!(ApiKey::parse_entry(&format!("MOBILE_APP:{hash}")).unwrap().role, Role::Channel);
        assert!(ApiKey::parse_entry(&format!("admin:X:{hash}")).is_err());
        let (secret, generated) =
            ApiKey::generate_with(&Channel::parse("ANALYTICS").unwrap(), Role::Reporting).unwrap();
        let keys = ApiKeys(vec![generated.clone()]);
        assert_eq!(keys.authenticate(&secret).map(|k| k.role), Some(Role::Reporting));
        assert_eq!(ApiKey::parse_entry(&generated.entry()).unwrap(), generated);
    }
}
