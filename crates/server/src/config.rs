//! Settings, layered: built-in defaults, then the `--config` TOML file, then `CRM_*` environment
//! variables, then command-line flags (clap resolves the last two: a flag beats its variable).
//! Everything is validated here, once; a bad value stops start-up with one line naming the setting.

use std::net::SocketAddr;
use std::num::NonZeroU32;
use std::path::{Path, PathBuf};
use std::time::Duration;

use lifecycle::Matching;
use serde::Deserialize;

use crate::api::auth::{ApiKey, ApiKeys, Role};
use store_salesforce::{SalesforceConfig, SalesforceSection};

/// Where records live, from `--store` / `CRM_STORE` / `store =`. `Debug` hides a PostgreSQL password.
#[derive(Clone, PartialEq, Eq)]
pub enum StoreUrl {
    /// `sqlite://PATH`: the embedded store (the default, `sqlite://./data/crm.db`).
    Sqlite(PathBuf),
    /// `postgres://…`: several replicas on one database.
    Postgres(String),
    /// `salesforce`: the CRM itself, through its REST API.
    Salesforce,
}

impl std::fmt::Debug for StoreUrl {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Sqlite(p) => write!(f, "sqlite://{}", p.display()),
            Self::Postgres(url) => f.write_str(&store_postgres::redact(url)),
            Self::Salesforce => f.write_str("salesforce"),
        }
    }
}

impl StoreUrl {
    pub fn parse(s: &str) -> Result<Self, String> {
        if let Some(path) = s.strip_prefix("sqlite://").or_else(|| s.strip_prefix("sqlite:")) {
            if path.is_empty() {
                return Err("sqlite:// needs a file path, for example sqlite://./data/crm.db".into());
            }
            return Ok(Self::Sqlite(PathBuf::from(path)));
        }
        if s.starts_with("postgres://") || s.starts_with("postgresql://") {
            return Ok(Self::Postgres(s.to_owned()));
        }
        if s == "salesforce" {
            return Ok(Self::Salesforce);
        }
        Err("must be sqlite://PATH, postgres://… or salesforce".into())
    }
}

/// How log lines are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// One JSON object per line, for log shippers.
    Json,
    /// Short human-readable lines.
    Compact,
}

/// The validated settings the application runs with.
#[derive(Debug, Clone)]
pub struct Settings {
    pub listen: SocketAddr,
    pub store: StoreUrl,
    pub matching: Matching,
    pub log_format: LogFormat,
    pub log_filter: String,
    /// Most write jobs the embedded store commits in one transaction.
    pub sqlite_max_batch: usize,
    /// PostgreSQL connections per replica.
    pub postgres_max_connections: u32,
    /// Most concurrent writes one PostgreSQL transaction carries; 1 gives each its own.
    pub postgres_max_batch: usize,
    /// Most PostgreSQL write transactions a replica runs at once.
    pub postgres_batches: usize,
    /// Longest a request may take, body included, before it is answered 408.
    pub request_timeout: Duration,
    /// After SIGTERM, how long requests in flight may take before the process exits anyway.
    pub shutdown_grace: Duration,
    /// How long an `Idempotency-Key` and its response are kept (SPEC §4: 24 hours).
    pub idempotency_ttl: Duration,
    /// The channels' API keys (hashes only). Empty: the service runs open, on loopback only.
    pub api_keys: ApiKeys,
    /// Requests in flight at most; beyond, 503 `OVERLOADED` at once.
    pub max_in_flight: usize,
    /// Per-channel requests per second (and burst), if limited.
    pub rate_limit: Option<(NonZeroU32, NonZeroU32)>,
    /// How long a request waits for a PostgreSQL connection before answering 503.
    pub postgres_acquire_timeout: Duration,
    /// The `[salesforce]` section, validated; present exactly when `store` is `salesforce`.
    pub salesforce: Option<SalesforceConfig>,
    /// Longest a connection may take to send a request head (from its accept, or the head's first byte).
    pub header_read_timeout: Duration,
    /// Longest a keep-alive connection may sit idle between requests.
    pub idle_timeout: Duration,
    /// Most connections open at once; beyond, new ones are refused at once.
    pub max_connections: usize,
    /// The `[events]` section: lifecycle events to NATS JetStream; `None` (off) unless a NATS URL is set.
    pub events: Option<EventsSettings>,
}

/// Where lifecycle events go (docs/events.md).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EventsSettings {
    /// `nats://host:port`, or several separated by commas.
    pub nats_url: String,
    /// The JetStream stream, created if missing.
    pub stream: String,
    /// The first token(s) of every subject: `PREFIX.lead.created`.
    pub subject_prefix: String,
}

/// The `[events]` section of the file.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileEvents {
    pub nats_url: Option<String>,
    pub stream: Option<String>,
    pub subject_prefix: Option<String>,
}

impl Default for Settings {
    fn default() -> Self {
        Self {
            listen: SocketAddr::from(([127, 0, 0, 1], 8080)),
            store: StoreUrl::Sqlite(PathBuf::from("./data/crm.db")),
            matching: Matching::IdNumberAndProduct,
            log_format: LogFormat::Json,
            log_filter: "info".into(),
            sqlite_max_batch: 256,
            postgres_max_connections: 16,
            postgres_max_batch: 64,
            postgres_batches: 2,
            request_timeout: Duration::from_secs(30),
            shutdown_grace: Duration::from_secs(30),
            idempotency_ttl: Duration::from_secs(24 * 3600),
            api_keys: ApiKeys::default(),
            max_in_flight: 1024,
            rate_limit: None,
            postgres_acquire_timeout: Duration::from_secs(3),
            salesforce: None,
            header_read_timeout: Duration::from_secs(10),
            idle_timeout: Duration::from_secs(60),
            max_connections: 1024,
            events: None,
        }
    }
}

/// The `--config` file. Unknown keys are refused, so a typo is an error rather than a silent default.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileSettings {
    pub listen: Option<String>,
    pub store: Option<String>,
    pub matching: Option<String>,
    pub log_format: Option<LogFormat>,
    pub log_filter: Option<String>,
    pub sqlite_max_batch: Option<usize>,
    pub postgres_max_connections: Option<u32>,
    pub postgres_max_batch: Option<usize>,
    pub postgres_batches: Option<usize>,
    pub postgres_acquire_timeout_ms: Option<u64>,
    pub request_timeout_ms: Option<u64>,
    pub shutdown_grace_ms: Option<u64>,
    pub idempotency_ttl_secs: Option<u64>,
    pub api_keys: Option<Vec<FileApiKey>>,
    pub max_in_flight: Option<usize>,
    pub rate_limit_per_second: Option<u32>,
    pub rate_limit_burst: Option<u32>,
    pub header_read_timeout_ms: Option<u64>,
    pub idle_timeout_ms: Option<u64>,
    pub max_connections: Option<usize>,
    /// The Salesforce backend's settings (`store = "salesforce"`); see docs/salesforce.md.
    pub salesforce: Option<SalesforceSection>,
    /// Lifecycle events to NATS JetStream; see docs/events.md.
    pub events: Option<FileEvents>,
}

/// One `[[api_keys]]` entry of the file: a channel (for a reporting key, the name it is logged under), the
/// SHA-256 (hex) of its key, and its role (`channel`, the default, or `reporting`).
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FileApiKey {
    pub channel: String,
    pub sha256: String,
    pub role: Option<String>,
}

/// Values from the environment or the command line, which override the file.
#[derive(Debug, Default, Clone, clap::Args)]
pub struct Overrides {
    /// Address to listen on [default: 127.0.0.1:8080]
    #[arg(long, env = "CRM_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,
    /// sqlite://PATH, postgres://… or salesforce [default: sqlite://./data/crm.db]
    #[arg(long, env = "CRM_STORE", value_name = "URL")]
    pub store: Option<String>,
    /// TOML file with the settings (each of its keys can also be set by a variable or a flag)
    #[arg(long, env = "CRM_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// API keys as CHANNEL:SHA256 entries separated by commas (see `generate-key`); replaces the file's
    #[arg(long, env = "CRM_API_KEYS", value_name = "CHANNEL:SHA256,…")]
    pub api_keys: Option<String>,
    /// Log line format: json or compact [default: json]
    #[arg(long, env = "CRM_LOG_FORMAT", value_name = "FORMAT")]
    pub log_format: Option<String>,
    /// Longest wait for a request head, in milliseconds [default: 10000]
    #[arg(long, env = "CRM_HEADER_READ_TIMEOUT_MS", value_name = "MS")]
    pub header_read_timeout_ms: Option<u64>,
    /// Longest a keep-alive connection may sit idle, in milliseconds [default: 60000]
    #[arg(long, env = "CRM_IDLE_TIMEOUT_MS", value_name = "MS")]
    pub idle_timeout_ms: Option<u64>,
    /// Most connections open at once; beyond, new ones are refused [default: 1024]
    #[arg(long, env = "CRM_MAX_CONNECTIONS", value_name = "N")]
    pub max_connections: Option<usize>,
    /// Matching key: id_number_and_product or id_number [default: id_number_and_product]
    #[arg(long, env = "CRM_MATCHING", value_name = "MODE")]
    pub matching: Option<String>,
    /// Log filter, in RUST_LOG's syntax (RUST_LOG itself beats it) [default: info]
    #[arg(long, env = "CRM_LOG_FILTER", value_name = "FILTER")]
    pub log_filter: Option<String>,
    /// Most write jobs the embedded store commits in one transaction [default: 256]
    #[arg(long, env = "CRM_SQLITE_MAX_BATCH", value_name = "N")]
    pub sqlite_max_batch: Option<usize>,
    /// PostgreSQL connections per replica [default: 16]
    #[arg(long, env = "CRM_POSTGRES_MAX_CONNECTIONS", value_name = "N")]
    pub postgres_max_connections: Option<u32>,
    /// Most concurrent writes one PostgreSQL transaction carries; 1 gives each its own [default: 64]
    #[arg(long, env = "CRM_POSTGRES_MAX_BATCH", value_name = "N")]
    pub postgres_max_batch: Option<usize>,
    /// Most PostgreSQL write transactions a replica runs at once [default: 2]
    #[arg(long, env = "CRM_POSTGRES_BATCHES", value_name = "N")]
    pub postgres_batches: Option<usize>,
    /// Longest wait for a PostgreSQL connection before a 503, in milliseconds [default: 3000]
    #[arg(long, env = "CRM_POSTGRES_ACQUIRE_TIMEOUT_MS", value_name = "MS")]
    pub postgres_acquire_timeout_ms: Option<u64>,
    /// Longest a request may take before a 408, in milliseconds [default: 30000]
    #[arg(long, env = "CRM_REQUEST_TIMEOUT_MS", value_name = "MS")]
    pub request_timeout_ms: Option<u64>,
    /// After SIGTERM, how long requests in flight may take, in milliseconds [default: 30000]
    #[arg(long, env = "CRM_SHUTDOWN_GRACE_MS", value_name = "MS")]
    pub shutdown_grace_ms: Option<u64>,
    /// How long an Idempotency-Key and its response are kept, in seconds [default: 86400]
    #[arg(long, env = "CRM_IDEMPOTENCY_TTL_SECS", value_name = "SECS")]
    pub idempotency_ttl_secs: Option<u64>,
    /// Requests in flight at most; beyond, 503 OVERLOADED [default: 1024]
    #[arg(long, env = "CRM_MAX_IN_FLIGHT", value_name = "N")]
    pub max_in_flight: Option<usize>,
    /// Requests per second per channel [default: unlimited]
    #[arg(long, env = "CRM_RATE_LIMIT_PER_SECOND", value_name = "N")]
    pub rate_limit_per_second: Option<u32>,
    /// Burst per channel above the rate [default: the rate]
    #[arg(long, env = "CRM_RATE_LIMIT_BURST", value_name = "N")]
    pub rate_limit_burst: Option<u32>,
    /// NATS server for lifecycle events (nats://host:port); events are off without it
    #[arg(long, env = "CRM_EVENTS_NATS_URL", value_name = "URL")]
    pub events_nats_url: Option<String>,
    /// JetStream stream of the events [default: CRM_EVENTS]
    #[arg(long, env = "CRM_EVENTS_STREAM", value_name = "NAME")]
    pub events_stream: Option<String>,
    /// First token(s) of every event subject [default: crm]
    #[arg(long, env = "CRM_EVENTS_SUBJECT_PREFIX", value_name = "PREFIX")]
    pub events_subject_prefix: Option<String>,
}

/// The `[salesforce]` keys from `CRM_SALESFORCE_*` variables (nested ones joined with `_`:
/// `CRM_SALESFORCE_FIELDS_ID_NUMBER` is `fields.id_number`), over the file's. Whether any was set.
fn salesforce_from_env(
    section: &mut SalesforceSection,
    var: impl Fn(&str) -> Option<String>,
) -> Result<bool, ConfigError> {
    let mut any = false;
    macro_rules! text {
        ($($field:expr => $name:literal),* $(,)?) => {$(
            if let Some(v) = var($name) {
                $field = Some(v);
                any = true;
            }
        )*};
    }
    macro_rules! number {
        ($($field:expr => $name:literal),* $(,)?) => {$(
            if let Some(v) = var($name) {
                $field = Some(v.trim().parse().map_err(|e| bad($name, format!("{v:?}: {e}")))?);
                any = true;
            }
        )*};
    }
    let s = section;
    text! {
        s.instance_url => "CRM_SALESFORCE_INSTANCE_URL",
        s.token_url => "CRM_SALESFORCE_TOKEN_URL",
        s.api_version => "CRM_SALESFORCE_API_VERSION",
        s.auth => "CRM_SALESFORCE_AUTH",
        s.client_id => "CRM_SALESFORCE_CLIENT_ID",
        s.username => "CRM_SALESFORCE_USERNAME",
        s.audience => "CRM_SALESFORCE_AUDIENCE",
        s.local_store => "CRM_SALESFORCE_LOCAL_STORE",
        s.owner_user_field => "CRM_SALESFORCE_OWNER_USER_FIELD",
        s.fields.id_number => "CRM_SALESFORCE_FIELDS_ID_NUMBER",
        s.fields.cif => "CRM_SALESFORCE_FIELDS_CIF",
        s.fields.product => "CRM_SALESFORCE_FIELDS_PRODUCT",
        s.fields.customer_type => "CRM_SALESFORCE_FIELDS_CUSTOMER_TYPE",
        s.fields.channel => "CRM_SALESFORCE_FIELDS_CHANNEL",
        s.fields.journey_id => "CRM_SALESFORCE_FIELDS_JOURNEY_ID",
        s.fields.open_key => "CRM_SALESFORCE_FIELDS_OPEN_KEY",
        s.lead_status.open => "CRM_SALESFORCE_LEAD_STATUS_OPEN",
        s.lead_status.lost => "CRM_SALESFORCE_LEAD_STATUS_LOST",
        s.lead_status.converted => "CRM_SALESFORCE_LEAD_STATUS_CONVERTED",
        s.opportunity_stage.open => "CRM_SALESFORCE_OPPORTUNITY_STAGE_OPEN",
        s.opportunity_stage.won => "CRM_SALESFORCE_OPPORTUNITY_STAGE_WON",
        s.opportunity_stage.lost => "CRM_SALESFORCE_OPPORTUNITY_STAGE_LOST",
    }
    for (field, name) in [
        (&mut s.client_secret_file, "CRM_SALESFORCE_CLIENT_SECRET_FILE"),
        (&mut s.private_key_file, "CRM_SALESFORCE_PRIVATE_KEY_FILE"),
    ] {
        if let Some(v) = var(name) {
            *field = Some(PathBuf::from(v));
            any = true;
        }
    }
    number! {
        s.close_date_days => "CRM_SALESFORCE_CLOSE_DATE_DAYS",
        s.timeout_ms => "CRM_SALESFORCE_TIMEOUT_MS",
        s.max_attempts => "CRM_SALESFORCE_MAX_ATTEMPTS",
        s.owner_cache_secs => "CRM_SALESFORCE_OWNER_CACHE_SECS",
        s.breaker_failures => "CRM_SALESFORCE_BREAKER_FAILURES",
        s.breaker_cooldown_secs => "CRM_SALESFORCE_BREAKER_COOLDOWN_SECS",
    }
    Ok(any)
}

/// A setting that stops start-up. Its `Display` is the one line the operator sees.
#[derive(Debug, thiserror::Error)]
#[error("invalid setting {name}: {message}")]
pub struct ConfigError {
    pub name: String,
    pub message: String,
}

fn bad(name: &str, message: impl std::fmt::Display) -> ConfigError {
    ConfigError { name: name.to_owned(), message: message.to_string() }
}

fn read_file(path: &Path) -> Result<FileSettings, ConfigError> {
    let name = format!("--config {}", path.display());
    let text = std::fs::read_to_string(path).map_err(|e| bad(&name, e))?;
    toml::from_str(&text).map_err(|e| bad(&name, e.message()))
}

impl Settings {
    /// Layers defaults, the file named by `overrides.config`, then the overrides.
    pub fn load(overrides: &Overrides) -> Result<Self, ConfigError> {
        let file = match &overrides.config {
            Some(path) => read_file(path)?,
            None => FileSettings::default(),
        };
        let section_in_file = file.salesforce.is_some();
        let mut s = Settings::default();
        if let Some(v) = overrides.listen.as_ref().or(file.listen.as_ref()) {
            s.listen = v.parse().map_err(|e| bad("listen (--listen, CRM_LISTEN)", format!("{v:?}: {e}")))?;
        }
        if let Some(v) = overrides.store.as_ref().or(file.store.as_ref()) {
            s.store = StoreUrl::parse(v).map_err(|e| bad("store (--store, CRM_STORE)", e))?;
        }
        if let Some(v) = overrides.matching.as_ref().or(file.matching.as_ref()) {
            s.matching = Matching::parse(v).map_err(|e| bad("matching (--matching, CRM_MATCHING)", e))?;
        }
        if let Some(v) = &overrides.log_format {
            s.log_format = match v.as_str() {
                "json" => LogFormat::Json,
                "compact" => LogFormat::Compact,
                _ => {
                    return Err(bad(
                        "log format (--log-format, CRM_LOG_FORMAT)",
                        format!("{v:?}: must be json or compact"),
                    ))
                }
            };
        } else if let Some(v) = file.log_format {
            s.log_format = v;
        }
        if let Some(v) = overrides.log_filter.clone().or(file.log_filter) {
            tracing_subscriber::EnvFilter::try_new(&v)
                .map_err(|e| bad("log_filter (--log-filter, CRM_LOG_FILTER)", e))?;
            s.log_filter = v;
        }
        if let Some(v) = overrides.sqlite_max_batch.or(file.sqlite_max_batch) {
            if v == 0 || v > 10_000 {
                return Err(bad("sqlite_max_batch (--sqlite-max-batch, CRM_SQLITE_MAX_BATCH)", "must be 1-10000"));
            }
            s.sqlite_max_batch = v;
        }
        if let Some(v) = overrides.postgres_max_connections.or(file.postgres_max_connections) {
            if v == 0 || v > 1000 {
                return Err(bad(
                    "postgres_max_connections (--postgres-max-connections, CRM_POSTGRES_MAX_CONNECTIONS)",
                    "must be 1-1000",
                ));
            }
            s.postgres_max_connections = v;
        }
        if let Some(v) = overrides.postgres_max_batch.or(file.postgres_max_batch) {
            if v == 0 || v > 1000 {
                return Err(bad("postgres_max_batch (--postgres-max-batch, CRM_POSTGRES_MAX_BATCH)", "must be 1-1000"));
            }
            s.postgres_max_batch = v;
        }
        if let Some(v) = overrides.postgres_batches.or(file.postgres_batches) {
            if v == 0 || v > 1000 {
                return Err(bad("postgres_batches (--postgres-batches, CRM_POSTGRES_BATCHES)", "must be 1-1000"));
            }
            s.postgres_batches = v;
        }
        for (name, value, target) in [
            (
                "request_timeout_ms (--request-timeout-ms, CRM_REQUEST_TIMEOUT_MS)",
                overrides.request_timeout_ms.or(file.request_timeout_ms),
                &mut s.request_timeout,
            ),
            (
                "shutdown_grace_ms (--shutdown-grace-ms, CRM_SHUTDOWN_GRACE_MS)",
                overrides.shutdown_grace_ms.or(file.shutdown_grace_ms),
                &mut s.shutdown_grace,
            ),
        ] {
            if let Some(v) = value {
                if v == 0 || v > 3_600_000 {
                    return Err(bad(name, "must be 1-3600000"));
                }
                *target = Duration::from_millis(v);
            }
        }
        for (name, value, target) in [
            (
                "header_read_timeout_ms (--header-read-timeout-ms, CRM_HEADER_READ_TIMEOUT_MS)",
                overrides.header_read_timeout_ms.or(file.header_read_timeout_ms),
                &mut s.header_read_timeout,
            ),
            (
                "idle_timeout_ms (--idle-timeout-ms, CRM_IDLE_TIMEOUT_MS)",
                overrides.idle_timeout_ms.or(file.idle_timeout_ms),
                &mut s.idle_timeout,
            ),
        ] {
            if let Some(v) = value {
                if v == 0 || v > 3_600_000 {
                    return Err(bad(name, "must be 1-3600000"));
                }
                *target = Duration::from_millis(v);
            }
        }
        if let Some(v) = overrides.max_connections.or(file.max_connections) {
            if v == 0 || v > 1_000_000 {
                return Err(bad("max_connections (--max-connections, CRM_MAX_CONNECTIONS)", "must be 1-1000000"));
            }
            s.max_connections = v;
        }
        if let Some(v) = overrides.idempotency_ttl_secs.or(file.idempotency_ttl_secs) {
            if v == 0 || v > 30 * 24 * 3600 {
                return Err(bad(
                    "idempotency_ttl_secs (--idempotency-ttl-secs, CRM_IDEMPOTENCY_TTL_SECS)",
                    "must be 1-2592000 (30 days)",
                ));
            }
            s.idempotency_ttl = Duration::from_secs(v);
        }
        if let Some(v) = &overrides.api_keys {
            let entries = v.split(',').filter(|e| !e.trim().is_empty());
            let keys = entries.map(ApiKey::parse_entry).collect::<Result<Vec<_>, _>>();
            s.api_keys = ApiKeys(keys.map_err(|e| bad("api keys (--api-keys, CRM_API_KEYS)", e))?);
        } else if let Some(entries) = file.api_keys {
            let keys = entries
                .iter()
                .map(|e| {
                    let role = e.role.as_deref().map(Role::parse).transpose()?.unwrap_or_default();
                    Ok(ApiKey { role, ..ApiKey::new(&e.channel, &e.sha256)? })
                })
                .collect::<Result<Vec<_>, String>>();
            s.api_keys = ApiKeys(keys.map_err(|e| bad("api_keys", e))?);
        }
        if let Some(v) = overrides.max_in_flight.or(file.max_in_flight) {
            if v == 0 || v > 1_000_000 {
                return Err(bad("max_in_flight (--max-in-flight, CRM_MAX_IN_FLIGHT)", "must be 1-1000000"));
            }
            s.max_in_flight = v;
        }
        let rate_limit = (
            overrides.rate_limit_per_second.or(file.rate_limit_per_second),
            overrides.rate_limit_burst.or(file.rate_limit_burst),
        );
        match rate_limit {
            (None, None) => {}
            (Some(rate), burst) => {
                let rate = NonZeroU32::new(rate).ok_or_else(|| bad("rate_limit_per_second", "must be at least 1"))?;
                let burst = match burst {
                    Some(b) => NonZeroU32::new(b).ok_or_else(|| bad("rate_limit_burst", "must be at least 1"))?,
                    None => rate,
                };
                s.rate_limit = Some((rate, burst));
            }
            (None, Some(_)) => return Err(bad("rate_limit_burst", "needs rate_limit_per_second")),
        }
        if s.api_keys.is_empty() && !s.listen.ip().is_loopback() {
            return Err(bad(
                "listen (--listen, CRM_LISTEN)",
                format!(
                    "{}: no API keys are configured, so the service runs open and only on a loopback address (127.0.0.1 or ::1)",
                    s.listen
                ),
            ));
        }
        if let Some(v) = overrides.postgres_acquire_timeout_ms.or(file.postgres_acquire_timeout_ms) {
            if v == 0 || v > 600_000 {
                return Err(bad(
                    "postgres_acquire_timeout_ms (--postgres-acquire-timeout-ms, CRM_POSTGRES_ACQUIRE_TIMEOUT_MS)",
                    "must be 1-600000",
                ));
            }
            s.postgres_acquire_timeout = Duration::from_millis(v);
        }
        s.events = events(overrides, file.events)?;
        let mut section = file.salesforce;
        if s.store == StoreUrl::Salesforce {
            let mut from_env = section.take().unwrap_or_default();
            let any = salesforce_from_env(&mut from_env, |name| std::env::var(name).ok())?;
            section = (any || section_in_file).then_some(from_env);
        }
        match (&s.store, section) {
            (StoreUrl::Salesforce, Some(section)) => {
                let secret = std::env::var("CRM_SALESFORCE_CLIENT_SECRET").ok();
                let config = section.validate(secret).map_err(|e| bad(&e.key, e.message))?;
                StoreUrl::parse(&config.local_store).map_err(|e| bad("salesforce.local_store", e))?;
                s.salesforce = Some(config);
            }
            (StoreUrl::Salesforce, None) => {
                return Err(bad(
                    "store",
                    "salesforce needs a [salesforce] section in the --config file or CRM_SALESFORCE_* variables (see docs/salesforce.md)",
                ))
            }
            (_, _) => {}
        }
        Ok(s)
    }
}

/// The `[events]` settings: off unless a NATS URL is given (file or `CRM_EVENTS_NATS_URL`).
fn events(overrides: &Overrides, file: Option<FileEvents>) -> Result<Option<EventsSettings>, ConfigError> {
    let file = file.unwrap_or_default();
    let url = overrides.events_nats_url.clone().or(file.nats_url).filter(|u| !u.trim().is_empty());
    let stream = overrides.events_stream.clone().or(file.stream);
    let prefix = overrides.events_subject_prefix.clone().or(file.subject_prefix);
    let Some(nats_url) = url else {
        if stream.is_some() || prefix.is_some() {
            return Err(bad(
                "events.nats_url (CRM_EVENTS_NATS_URL)",
                "is needed when events.stream or events.subject_prefix is set",
            ));
        }
        return Ok(None);
    };
    for server in nats_url.split(',') {
        let ok = ["nats://", "tls://", "ws://", "wss://"].iter().any(|scheme| server.trim().starts_with(scheme));
        if !ok {
            return Err(bad(
                "events.nats_url (CRM_EVENTS_NATS_URL)",
                "must be nats://host:port (several separated by commas)",
            ));
        }
    }
    let stream = stream.unwrap_or_else(|| "CRM_EVENTS".into());
    let name_ok = |c: char| c.is_ascii_alphanumeric() || c == '_' || c == '-';
    if stream.is_empty() || stream.len() > 64 || !stream.chars().all(name_ok) {
        return Err(bad("events.stream (CRM_EVENTS_STREAM)", "must be 1-64 letters, digits, _ or -"));
    }
    let prefix = prefix.unwrap_or_else(|| "crm".into());
    let token_ok = |t: &str| !t.is_empty() && t.chars().all(name_ok);
    if prefix.len() > 128 || !prefix.split('.').all(token_ok) {
        return Err(bad(
            "events.subject_prefix (CRM_EVENTS_SUBJECT_PREFIX)",
            "must be dot-separated tokens of letters, digits, _ or - (no wildcards)",
        ));
    }
    Ok(Some(EventsSettings { nats_url, stream, subject_prefix: prefix }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_match_the_spec() {
        let s = Settings::load(&Overrides::default()).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:8080");
        assert_eq!(s.store, StoreUrl::Sqlite("./data/crm.db".into()));
    }

    #[test]
    fn flags_beat_the_file_and_bad_values_name_the_setting() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        std::fs::write(
            &file,
            "listen = \"127.0.0.1:9000\"\nstore = \"sqlite:///tmp/x.db\"\nmatching = \"id_number\"\n",
        )
        .unwrap();
        let mut o = Overrides { config: Some(file.clone()), ..Default::default() };
        let s = Settings::load(&o).unwrap();
        assert_eq!(s.listen.to_string(), "127.0.0.1:9000");
        assert_eq!(s.store, StoreUrl::Sqlite("/tmp/x.db".into()));
        assert_eq!(s.matching, Matching::IdNumber);
        o.listen = Some("127.0.0.1:7000".into());
        assert_eq!(Settings::load(&o).unwrap().listen.to_string(), "127.0.0.1:7000");

        o.listen = Some("0.0.0.0:8080".into());
        let e = Settings::load(&o).unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("loopback"), "{e}");
        o.listen = Some("[::1]:8080".into());
        assert!(Settings::load(&o).is_ok());
        o.listen = Some("nonsense".into());
        let e = Settings::load(&o).unwrap_err().to_string();
        assert!(e.contains("listen") && e.contains("nonsense"), "{e}");
        o.listen = None;
        o.store = Some("mysql://x".into());
        assert!(Settings::load(&o).unwrap_err().to_string().contains("store"));

        o.store = None;
        std::fs::write(&file, "[events]\nnats_url = \"nats://127.0.0.1:4222\"\nsubject_prefix = \"bank.crm\"\n")
            .unwrap();
        let events = Settings::load(&o).unwrap().events.expect("events on");
        assert_eq!((events.stream.as_str(), events.subject_prefix.as_str()), ("CRM_EVENTS", "bank.crm"));
        o.events_stream = Some("LIFECYCLE".into());
        assert_eq!(Settings::load(&o).unwrap().events.unwrap().stream, "LIFECYCLE");
        o.events_subject_prefix = Some("crm.*".into());
        assert!(Settings::load(&o).unwrap_err().to_string().contains("events.subject_prefix"));
        o.events_subject_prefix = None;
        o.events_nats_url = Some("http://x".into());
        assert!(Settings::load(&o).unwrap_err().to_string().contains("events.nats_url"));
        o.events_nats_url = None;
        o.events_stream = None;
        std::fs::write(&file, "[events]\nstream = \"X\"\n").unwrap();
        assert!(Settings::load(&o).unwrap_err().to_string().contains("events.nats_url"));
        std::fs::write(&file, "").unwrap();
        assert_eq!(Settings::load(&o).unwrap().events, None, "off when not set");

        std::fs::write(&file, "lisen = \"x\"\n").unwrap();
        o.store = None;
        let e = Settings::load(&o).unwrap_err().to_string();
        assert!(e.contains("--config") && e.contains("lisen"), "{e}");
    }

    /// Each number a setting takes is checked at both ends: 0 and one past its most are refused naming the
    /// setting, 1 and its most are taken as given.
    #[test]
    fn every_number_is_bounded_at_both_ends_and_named_when_refused() {
        type Set = fn(&mut Overrides, u64);
        type Get = fn(&Settings) -> u64;
        let cases: [(&str, u64, Set, Get); 12] = [
            ("sqlite_max_batch", 10_000, |o, v| o.sqlite_max_batch = Some(v as usize), |s| s.sqlite_max_batch as u64),
            (
                "postgres_max_connections",
                1000,
                |o, v| o.postgres_max_connections = Some(v as u32),
                |s| s.postgres_max_connections as u64,
            ),
            (
                "postgres_max_batch",
                1000,
                |o, v| o.postgres_max_batch = Some(v as usize),
                |s| s.postgres_max_batch as u64,
            ),
            ("postgres_batches", 1000, |o, v| o.postgres_batches = Some(v as usize), |s| s.postgres_batches as u64),
            (
                "request_timeout_ms",
                3_600_000,
                |o, v| o.request_timeout_ms = Some(v),
                |s| s.request_timeout.as_millis() as u64,
            ),
            (
                "shutdown_grace_ms",
                3_600_000,
                |o, v| o.shutdown_grace_ms = Some(v),
                |s| s.shutdown_grace.as_millis() as u64,
            ),
            (
                "header_read_timeout_ms",
                3_600_000,
                |o, v| o.header_read_timeout_ms = Some(v),
                |s| s.header_read_timeout.as_millis() as u64,
            ),
            ("idle_timeout_ms", 3_600_000, |o, v| o.idle_timeout_ms = Some(v), |s| s.idle_timeout.as_millis() as u64),
            ("max_connections", 1_000_000, |o, v| o.max_connections = Some(v as usize), |s| s.max_connections as u64),
            (
                "idempotency_ttl_secs",
                2_592_000,
                |o, v| o.idempotency_ttl_secs = Some(v),
                |s| s.idempotency_ttl.as_secs(),
            ),
            ("max_in_flight", 1_000_000, |o, v| o.max_in_flight = Some(v as usize), |s| s.max_in_flight as u64),
            (
                "postgres_acquire_timeout_ms",
                600_000,
                |o, v| o.postgres_acquire_timeout_ms = Some(v),
                |s| s.postgres_acquire_timeout.as_millis() as u64,
            ),
        ];
        for (name, most, set, get) in cases {
            for good in [1, most] {
                let mut o = Overrides::default();
                set(&mut o, good);
                let s = Settings::load(&o).unwrap_or_else(|e| panic!("{name} = {good}: {e}"));
                assert_eq!(get(&s), good, "{name} = {good} is taken as given");
            }
            for bad in [0, most + 1] {
                let mut o = Overrides::default();
                set(&mut o, bad);
                let e = Settings::load(&o).expect_err(name).to_string();
                assert!(e.starts_with(&format!("invalid setting {name} ")), "{name} = {bad}: {e}");
            }
        }
    }

    #[test]
    fn rates_log_formats_and_store_urls() {
        let load = |o: Overrides| Settings::load(&o);
        let rate = |r: Option<u32>, b: Option<u32>| Overrides {
            rate_limit_per_second: r,
            rate_limit_burst: b,
            ..Default::default()
        };
        let limit = |s: Settings| s.rate_limit.map(|(r, b)| (r.get(), b.get()));
        assert_eq!(limit(load(rate(None, None)).unwrap()), None);
        assert_eq!(limit(load(rate(Some(5), None)).unwrap()), Some((5, 5)), "the burst defaults to the rate");
        assert_eq!(limit(load(rate(Some(5), Some(20))).unwrap()), Some((5, 20)));
        for (r, b, named) in [
            (Some(0), None, "rate_limit_per_second"),
            (Some(5), Some(0), "rate_limit_burst"),
            (None, Some(5), "rate_limit_burst"),
        ] {
            let e = load(rate(r, b)).unwrap_err().to_string();
            assert!(e.starts_with(&format!("invalid setting {named}:")), "{e}");
        }

        let format = |f: &str| load(Overrides { log_format: Some(f.into()), ..Default::default() });
        assert_eq!(format("json").unwrap().log_format, LogFormat::Json);
        assert_eq!(format("compact").unwrap().log_format, LogFormat::Compact);
        assert!(format("JSON").unwrap_err().to_string().contains("must be json or compact"));

        assert_eq!(StoreUrl::parse("sqlite:crm.db"), Ok(StoreUrl::Sqlite("crm.db".into())));
        assert!(StoreUrl::parse("sqlite://").is_err() && StoreUrl::parse("sqlite:").is_err());
        assert_eq!(StoreUrl::parse("postgresql://h/db"), Ok(StoreUrl::Postgres("postgresql://h/db".into())));
        assert_eq!(StoreUrl::parse("salesforce"), Ok(StoreUrl::Salesforce));
        assert!(StoreUrl::parse("Salesforce").is_err());
        let pg = StoreUrl::parse("postgres://u:secret@h/db").unwrap();
        assert_eq!(format!("{pg:?}"), "postgres://u:***@h/db", "Debug hides the password");
    }

    #[test]
    fn salesforce_keys_come_from_their_variables_over_the_file() {
        let vars = [
            ("CRM_SALESFORCE_INSTANCE_URL", "https://bank.my.salesforce.com"),
            ("CRM_SALESFORCE_FIELDS_ID_NUMBER", "National_Id__c"),
            ("CRM_SALESFORCE_TIMEOUT_MS", " 2500 "),
            ("CRM_SALESFORCE_PRIVATE_KEY_FILE", "/keys/sf.pem"),
        ];
        let var = |name: &str| vars.iter().find(|(n, _)| *n == name).map(|(_, v)| v.to_string());
        let mut s = SalesforceSection { api_version: Some("v61.0".into()), ..Default::default() };
        assert!(salesforce_from_env(&mut s, var).unwrap(), "some variable was set");
        assert_eq!(s.instance_url.as_deref(), Some("https://bank.my.salesforce.com"));
        assert_eq!(s.fields.id_number.as_deref(), Some("National_Id__c"));
        assert_eq!(s.timeout_ms, Some(2500));
        assert_eq!(s.private_key_file, Some(PathBuf::from("/keys/sf.pem")));
        assert_eq!(s.api_version.as_deref(), Some("v61.0"), "the file's value stays where no variable is set");

        assert!(!salesforce_from_env(&mut SalesforceSection::default(), |_| None).unwrap(), "none set");
        let three = |name: &str| (name == "CRM_SALESFORCE_MAX_ATTEMPTS").then(|| "three".to_owned());
        let e = salesforce_from_env(&mut SalesforceSection::default(), three).unwrap_err().to_string();
        assert!(e.starts_with("invalid setting CRM_SALESFORCE_MAX_ATTEMPTS: \"three\""), "{e}");
    }

    #[test]
    fn a_reporting_key_in_the_file_keeps_its_role() {
        // A key whose role were dropped would get the default, a channel's: the lifecycle operations.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("c.toml");
        let hash = "ab".repeat(32);
        std::fs::write(
            &file,
            format!(
                "[[api_keys]]\nchannel = \"BI\"\nsha256 = \"{hash}\"\nrole = \"reporting\"\n\
                 [[api_keys]]\nchannel = \"MOBILE_APP\"\nsha256 = \"{hash}\"\n"
            ),
        )
        .unwrap();
        let s = Settings::load(&Overrides { config: Some(file.clone()), ..Default::default() }).unwrap();
        let roles: Vec<_> = s.api_keys.0.iter().map(|k| (k.channel.as_str().to_owned(), k.role)).collect();
        assert_eq!(roles, [("BI".to_owned(), Role::Reporting), ("MOBILE_APP".to_owned(), Role::Channel)]);
        std::fs::write(&file, format!("[[api_keys]]\nchannel = \"BI\"\nsha256 = \"{hash}\"\nrole = \"admin\"\n"))
            .unwrap();
        let e = Settings::load(&Overrides { config: Some(file), ..Default::default() }).unwrap_err().to_string();
        assert!(e.starts_with("invalid setting api_keys:"), "{e}");
    }
}
