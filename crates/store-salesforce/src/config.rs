//! The `[salesforce]` section of the configuration file: the exact keys the issue fixed, their defaults,
//! and validation into [`SalesforceConfig`]. Every refusal is one line naming the key.

use std::path::{Path, PathBuf};
use std::time::Duration;

use secrecy::SecretString;
use serde::Deserialize;

/// The `[salesforce]` section as written in the file. Unknown keys are refused.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SalesforceSection {
    pub instance_url: Option<String>,
    pub token_url: Option<String>,
    pub api_version: Option<String>,
    pub auth: Option<String>,
    pub client_id: Option<String>,
    pub client_secret_file: Option<PathBuf>,
    pub username: Option<String>,
    pub private_key_file: Option<PathBuf>,
    pub audience: Option<String>,
    pub local_store: Option<String>,
    pub owner_user_field: Option<String>,
    #[serde(default)]
    pub fields: FieldsSection,
    #[serde(default)]
    pub lead_status: LeadStatusSection,
    #[serde(default)]
    pub opportunity_stage: StageSection,
    /// Days from today an opportunity's `CloseDate` is set to when it is created (Salesforce requires one).
    pub close_date_days: Option<u32>,
    /// Longest one call to the org may take.
    pub timeout_ms: Option<u64>,
    /// Attempts for a call that may be repeated safely (reads, refused-before-processing writes).
    pub max_attempts: Option<u32>,
    /// How long an RM code → User mapping is trusted.
    pub owner_cache_secs: Option<u64>,
    /// Consecutive failed calls that open the circuit breaker.
    pub breaker_failures: Option<u32>,
    /// How long the breaker stays open before one trial call.
    pub breaker_cooldown_secs: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FieldsSection {
    pub id_number: Option<String>,
    pub cif: Option<String>,
    pub product: Option<String>,
    pub customer_type: Option<String>,
    pub channel: Option<String>,
    pub journey_id: Option<String>,
    /// Accepted for compatibility with the table; this design does not use an open-key field (the
    /// per-key lock in the local store keeps the invariant; see docs/salesforce.md).
    pub open_key: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LeadStatusSection {
    pub open: Option<String>,
    pub lost: Option<String>,
    pub converted: Option<String>,
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StageSection {
    pub open: Option<String>,
    pub won: Option<String>,
    pub lost: Option<String>,
}

/// How the service obtains its OAuth token.
#[derive(Clone)]
pub enum Auth {
    /// OAuth 2.0 client credentials: the External Client App's consumer key and secret ("Run As" user).
    ClientCredentials { client_secret: SecretString },
    /// OAuth 2.0 JWT bearer: an RS256 assertion signed with the app's private key, for `username`.
    JwtBearer { username: String, private_key_pem: SecretString, audience: String },
}

impl std::fmt::Debug for Auth {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::ClientCredentials { .. } => f.write_str("ClientCredentials { client_secret: [redacted] }"),
            Self::JwtBearer { username, audience, .. } => f
                .debug_struct("JwtBearer")
                .field("username", username)
                .field("audience", audience)
                .field("private_key_pem", &"[redacted]")
                .finish(),
        }
    }
}

/// The custom fields the service reads and writes on Lead and Opportunity.
#[derive(Debug, Clone)]
pub struct Fields {
    pub id_number: String,
    pub cif: String,
    pub product: String,
    pub customer_type: String,
    pub channel: String,
    pub journey_id: String,
}

/// The org's picklist values for our four statuses.
#[derive(Debug, Clone)]
pub struct Statuses {
    pub lead_open: String,
    pub lead_lost: String,
    pub lead_converted: String,
    pub stage_open: String,
    pub stage_won: String,
    pub stage_lost: String,
}

/// The validated Salesforce settings. `Debug` never shows a secret.
#[derive(Debug, Clone)]
pub struct SalesforceConfig {
    pub instance_url: String,
    pub token_url: String,
    pub api_version: String,
    pub client_id: String,
    pub auth: Auth,
    pub local_store: String,
    pub owner_user_field: String,
    pub fields: Fields,
    pub statuses: Statuses,
    pub close_date_days: u32,
    pub timeout: Duration,
    pub max_attempts: u32,
    pub owner_cache: Duration,
    pub breaker_failures: u32,
    pub breaker_cooldown: Duration,
    /// How long a create or close may hold its matching key's lock (a holder that died frees it after this).
    pub lock_lease: Duration,
    /// How long a request waits for its key's lock.
    pub lock_wait: Duration,
    /// Whether every status change also hands its events to the local store's outbox. Not a
    /// `[salesforce]` setting: the service turns it on when `[events]` is configured.
    pub events: bool,
}

/// A refused setting: `key` is the name as the operator writes it (`salesforce.instance_url`).
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {key}: {message}")]
pub struct ConfigError {
    pub key: String,
    pub message: String,
}

fn bad(key: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError { key: format!("salesforce.{key}"), message: message.to_string() }
}

fn required(value: Option<String>, key: &str) -> Result<String, ConfigError> {
    match value.map(|v| v.trim().to_owned()) {
        Some(v) if !v.is_empty() => Ok(v),
        _ => Err(bad(key, "is required with store = \"salesforce\"")),
    }
}

/// `https://` only, except on a loopback host, where `http://` is accepted for local stand-ins.
fn check_url(key: &str, raw: &str) -> Result<String, ConfigError> {
    let url = url::Url::parse(raw).map_err(|e| bad(key, format!("{raw:?} is not a URL: {e}")))?;
    let loopback = match url.host() {
        Some(url::Host::Domain(d)) => d == "localhost",
        Some(url::Host::Ipv4(ip)) => ip.is_loopback(),
        Some(url::Host::Ipv6(ip)) => ip.is_loopback(),
        None => return Err(bad(key, format!("{raw:?} has no host"))),
    };
    match url.scheme() {
        "https" => {}
        "http" if loopback => {}
        _ => return Err(bad(key, format!("{raw:?} must be https:// (http:// only on a loopback address)"))),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(bad(key, "must not carry credentials"));
    }
    Ok(raw.trim_end_matches('/').to_owned())
}

/// A custom field's API name: letters, digits and underscores.
fn api_name(key: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = value.unwrap_or_else(|| default.to_owned());
    let ok = !v.is_empty()
        && v.len() <= 80
        && v.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'_')
        && v.as_bytes()[0].is_ascii_alphabetic();
    if ok {
        Ok(v)
    } else {
        Err(bad(key, format!("{v:?} is not a Salesforce field API name")))
    }
}

fn picklist(key: &str, value: Option<String>, default: &str) -> Result<String, ConfigError> {
    let v = value.unwrap_or_else(|| default.to_owned());
    if v.trim().is_empty() || v.len() > 255 || v.chars().any(char::is_control) {
        return Err(bad(key, format!("{v:?} is not a picklist value")));
    }
    Ok(v)
}

fn read_secret(key: &str, path: &Path) -> Result<SecretString, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|e| bad(key, format!("cannot read {}: {e}", path.display())))?;
    let text = text.trim();
    if text.is_empty() {
        return Err(bad(key, format!("{} is empty", path.display())));
    }
    Ok(SecretString::from(text.to_owned()))
}

fn bounded<T: PartialOrd + std::fmt::Display + Copy>(
    key: &str,
    value: Option<T>,
    default: T,
    min: T,
    max: T,
) -> Result<T, ConfigError> {
    let v = value.unwrap_or(default);
    if v < min || v > max {
        return Err(bad(key, format!("must be {min}-{max}")));
    }
    Ok(v)
}

impl SalesforceSection {
    /// Validates the section. `client_secret_env` is `CRM_SALESFORCE_CLIENT_SECRET`, which beats
    /// `client_secret_file`.
    pub fn validate(self, client_secret_env: Option<String>) -> Result<SalesforceConfig, ConfigError> {
        let instance_url = check_url("instance_url", &required(self.instance_url, "instance_url")?)?;
        let token_url = match self.token_url {
            Some(t) => check_url("token_url", &t)?,
            None => format!("{instance_url}/services/oauth2/token"),
        };
        let api_version = self.api_version.unwrap_or_else(|| "62.0".into());
        let version_ok = api_version
            .split_once('.')
            .is_some_and(|(a, b)| a.parse::<u32>().is_ok_and(|n| n >= 50) && b.parse::<u32>().is_ok());
        if !version_ok {
            return Err(bad("api_version", format!("{api_version:?} must look like \"62.0\" (50.0 or later)")));
        }
        let client_id = required(self.client_id, "client_id")?;
        let auth = match required(self.auth, "auth")?.as_str() {
            "client_credentials" => {
                let client_secret =
                    match (client_secret_env.filter(|s| !s.trim().is_empty()), &self.client_secret_file) {
                        (Some(s), _) => SecretString::from(s.trim().to_owned()),
                        (None, Some(path)) => read_secret("client_secret_file", path)?,
                        (None, None) => return Err(bad(
                            "client_secret_file",
                            "client_credentials needs the secret in CRM_SALESFORCE_CLIENT_SECRET or client_secret_file",
                        )),
                    };
                Auth::ClientCredentials { client_secret }
            }
            "jwt_bearer" => {
                let username = required(self.username, "username")?;
                let path =
                    self.private_key_file.ok_or_else(|| bad("private_key_file", "is required for jwt_bearer"))?;
                let private_key_pem = read_secret("private_key_file", &path)?;
                {
                    use secrecy::ExposeSecret;
                    jsonwebtoken::EncodingKey::from_rsa_pem(private_key_pem.expose_secret().as_bytes()).map_err(
                        |e| {
                            bad("private_key_file", format!("{} is not an RSA private key in PEM: {e}", path.display()))
                        },
                    )?;
                }
                let audience = self.audience.unwrap_or_else(|| "https://login.salesforce.com".into());
                check_url("audience", &audience)?;
                Auth::JwtBearer { username, private_key_pem, audience }
            }
            other => return Err(bad("auth", format!("{other:?} must be client_credentials or jwt_bearer"))),
        };
        let local_store = self.local_store.unwrap_or_else(|| "sqlite://./data/crm.db".into());
        if !(local_store.starts_with("sqlite:")
            || local_store.starts_with("postgres://")
            || local_store.starts_with("postgresql://"))
        {
            return Err(bad("local_store", "must be sqlite://PATH or postgres://…"));
        }
        let f = self.fields;
        let fields = Fields {
            id_number: api_name("fields.id_number", f.id_number, "IdNumber__c")?,
            cif: api_name("fields.cif", f.cif, "Cif__c")?,
            product: api_name("fields.product", f.product, "Product__c")?,
            customer_type: api_name("fields.customer_type", f.customer_type, "CustomerType__c")?,
            channel: api_name("fields.channel", f.channel, "Channel__c")?,
            journey_id: api_name("fields.journey_id", f.journey_id, "JourneyId__c")?,
        };
        if let Some(open_key) = f.open_key {
            api_name("fields.open_key", Some(open_key), "")?;
        }
        let (l, s) = (self.lead_status, self.opportunity_stage);
        let statuses = Statuses {
            lead_open: picklist("lead_status.open", l.open, "Open - Not Contacted")?,
            lead_lost: picklist("lead_status.lost", l.lost, "Closed - Not Converted")?,
            lead_converted: picklist("lead_status.converted", l.converted, "Closed - Converted")?,
            stage_open: picklist("opportunity_stage.open", s.open, "Prospecting")?,
            stage_won: picklist("opportunity_stage.won", s.won, "Closed Won")?,
            stage_lost: picklist("opportunity_stage.lost", s.lost, "Closed Lost")?,
        };
        let timeout = Duration::from_millis(bounded("timeout_ms", self.timeout_ms, 10_000, 100, 120_000)?);
        Ok(SalesforceConfig {
            instance_url,
            token_url,
            api_version,
            client_id,
            auth,
            local_store,
            owner_user_field: api_name("owner_user_field", self.owner_user_field, "FederationIdentifier")?,
            fields,
            statuses,
            close_date_days: bounded("close_date_days", self.close_date_days, 30, 0, 3650)?,
            timeout,
            max_attempts: bounded("max_attempts", self.max_attempts, 3, 1, 10)?,
            owner_cache: Duration::from_secs(bounded("owner_cache_secs", self.owner_cache_secs, 300, 0, 86_400)?),
            breaker_failures: bounded("breaker_failures", self.breaker_failures, 5, 1, 1000)?,
            breaker_cooldown: Duration::from_secs(bounded(
                "breaker_cooldown_secs",
                self.breaker_cooldown_secs,
                30,
                1,
                3600,
            )?),
            lock_lease: Duration::from_secs(120),
            lock_wait: Duration::from_secs(20),
            events: false,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn minimal() -> SalesforceSection {
        SalesforceSection {
            instance_url: Some("https://bank.my.salesforce.com".into()),
            auth: Some("client_credentials".into()),
            client_id: Some("3MVG9".into()),
            ..Default::default()
        }
    }

    #[test]
    fn the_minimal_section_takes_every_default() {
        let c = minimal().validate(Some("s3cret".into())).unwrap();
        assert_eq!(c.token_url, "https://bank.my.salesforce.com/services/oauth2/token");
        assert_eq!(c.api_version, "62.0");
        assert_eq!(c.local_store, "sqlite://./data/crm.db");
        assert_eq!(c.owner_user_field, "FederationIdentifier");
        assert_eq!(c.fields.id_number, "IdNumber__c");
        assert_eq!(c.fields.journey_id, "JourneyId__c");
        assert_eq!(c.statuses.lead_lost, "Closed - Not Converted");
        assert_eq!(c.statuses.stage_won, "Closed Won");
        assert!(!format!("{c:?}").contains("s3cret"), "Debug shows the secret");
    }

    #[test]
    fn urls_must_be_https_except_on_loopback() {
        for (url, ok) in [
            ("https://x.my.salesforce.com", true),
            ("http://127.0.0.1:9999", true),
            ("http://localhost:1", true),
            ("http://[::1]:1", true),
            ("http://bank.my.salesforce.com", false),
            ("ftp://127.0.0.1", false),
            ("not a url", false),
            ("https://user:pw@x.example", false),
        ] {
            let mut s = minimal();
            s.instance_url = Some(url.into());
            let r = s.validate(Some("x".into()));
            assert_eq!(r.is_ok(), ok, "{url}: {r:?}");
            if let Err(e) = r {
                assert!(e.to_string().starts_with("invalid setting salesforce.instance_url"), "{e}");
            }
        }
    }

    #[test]
    fn each_refusal_names_its_key() {
        type Change = Box<dyn Fn(&mut SalesforceSection)>;
        let cases: Vec<(Change, &str)> = vec![
            (Box::new(|s| s.client_id = None), "salesforce.client_id"),
            (Box::new(|s| s.auth = Some("password".into())), "salesforce.auth"),
            (Box::new(|s| s.api_version = Some("v62".into())), "salesforce.api_version"),
            (Box::new(|s| s.fields.product = Some("Product c".into())), "salesforce.fields.product"),
            (Box::new(|s| s.local_store = Some("mysql://x".into())), "salesforce.local_store"),
            (Box::new(|s| s.timeout_ms = Some(0)), "salesforce.timeout_ms"),
            (Box::new(|s| s.lead_status.lost = Some(" ".into())), "salesforce.lead_status.lost"),
        ];
        for (change, key) in cases {
            let mut s = minimal();
            change(&mut s);
            let e = s.validate(Some("x".into())).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid setting {key}:")), "{e}");
        }
        let e = minimal().validate(None).unwrap_err().to_string();
        assert!(e.contains("CRM_SALESFORCE_CLIENT_SECRET"), "{e}");
    }

    #[test]
    fn jwt_bearer_needs_a_readable_rsa_key() {
        let mut s = minimal();
        s.auth = Some("jwt_bearer".into());
        s.username = Some("integration@bank.example".into());
        let dir = tempfile::tempdir().unwrap();
        let key = dir.path().join("key.pem");
        std::fs::write(&key, "not a key").unwrap();
        s.private_key_file = Some(key);
        let e = s.validate(None).unwrap_err().to_string();
        assert!(e.starts_with("invalid setting salesforce.private_key_file") && !e.contains("not a key"), "{e}");
    }
}
