//! Prometheus metrics (`GET /metrics`) and the store decorator that times every call of the port.
//!
//! Names and labels:
//! - `http_requests_total{method,route,status}`, `http_request_duration_seconds{method,route,status}`:
//!   `route` is the matched route template, never the raw path, so cardinality stays bounded;
//! - `http_requests_in_flight`, `http_requests_shed_total`, `http_requests_rate_limited_total{channel}`;
//! - `crm_lifecycle_outcomes_total{operation,result,record_type}`: what the lifecycle did;
//! - `crm_store_duration_seconds{operation,outcome}`: every call of the storage port;
//! - `crm_backend_calls_total{backend,operation,status}` and `crm_backend_api_usage{backend,limit}`: a CRM
//!   backend's own calls and API allowance, recorded by such an adapter through [`backend_call`] and
//!   [`backend_api_usage`].

use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use lifecycle::{IdNumber, Product, RecordType};
use metrics_exporter_prometheus::{Matcher, PrometheusBuilder, PrometheusHandle};
use store::reports::{FunnelRow, GroupBy, HandoverRow, Period, RejectionRow, Rows, StalePage, StaleQuery};
use store::{
    Backend, Claim, CloseWonOutcome, CreateOutcome, CreateRequest, Idempotency, RecordRef, RecordWithHistory, Reports,
    RequestContext, SearchResult, Store, StoreError, StoredResponse,
};
use tracing::Instrument;

static HANDLE: OnceLock<Option<PrometheusHandle>> = OnceLock::new();

const LATENCY_BUCKETS: &[f64] =
    &[0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0];

/// How often the recorder folds the samples histograms collected into their buckets.
const UPKEEP_EVERY: Duration = Duration::from_secs(5);

/// The process-wide recorder, installed on first use (every application in the process shares it).
///
/// The exporter's histograms keep each recorded sample in a queue until they are folded into buckets,
/// which it does on a scrape or on an upkeep call. A service nobody scrapes would keep every request's
/// latency forever (memory growing with requests served), so a thread runs the upkeep every few seconds.
pub fn handle() -> Option<&'static PrometheusHandle> {
    HANDLE
        .get_or_init(|| {
            let handle = PrometheusBuilder::new()
                .set_buckets_for_metric(Matcher::Suffix("_seconds".into()), LATENCY_BUCKETS)
                .ok()?
                .install_recorder()
                .ok()?;
            let upkeep = handle.clone();
            std::thread::Builder::new()
                .name("metrics-upkeep".into())
                .spawn(move || loop {
                    std::thread::sleep(UPKEEP_EVERY);
                    upkeep.run_upkeep();
                })
                .ok()?;
            Some(handle)
        })
        .as_ref()
}

/// The text exposition format.
pub fn render() -> String {
    handle().map(PrometheusHandle::render).unwrap_or_default()
}

/// The methods a label may name; any other (clients may send any token) is counted as `OTHER`, so a
/// client cannot grow the number of series.
const METHODS: [&str; 8] = ["GET", "POST", "PUT", "DELETE", "PATCH", "HEAD", "OPTIONS", "OTHER"];

fn method_label(method: &str) -> &'static str {
    METHODS.iter().find(|m| **m == method).copied().unwrap_or("OTHER")
}

/// One request series: `http_requests_total` and `http_request_duration_seconds` for a method, route and
/// status.
struct HttpSeries {
    total: metrics::Counter,
    duration: metrics::Histogram,
}

#[derive(Hash, PartialEq, Eq)]
struct SeriesKey {
    method: &'static str,
    route: Box<str>,
    status: u16,
}

/// A borrowed [`SeriesKey`], to look one up without allocating (field order and types hash alike).
#[derive(Hash)]
struct SeriesRef<'a> {
    method: &'static str,
    route: &'a str,
    status: u16,
}

impl hashbrown::Equivalent<SeriesKey> for SeriesRef<'_> {
    fn equivalent(&self, key: &SeriesKey) -> bool {
        self.method == key.method && self.route == &*key.route && self.status == key.status
    }
}

thread_local! {
    /// Each worker thread's handles of the series it has recorded. Registering a series builds its labels
    /// and looks it up in the recorder's shared registry; doing that once per thread and series instead of
    /// once per request took that cost off every request. Bounded: routes are the router's templates (or
    /// `unmatched`), methods are [`METHODS`], statuses are three digits.
    static HTTP_SERIES: std::cell::RefCell<hashbrown::HashMap<SeriesKey, HttpSeries>> =
        std::cell::RefCell::new(hashbrown::HashMap::new());
}

/// Records one HTTP request: `route` is the matched route template (or `unmatched`), never a raw path.
pub fn http_request(method: &str, route: &str, status: u16, elapsed: Duration) {
    let method = method_label(method);
    let seconds = elapsed.as_secs_f64();
    HTTP_SERIES.with(|cache| {
        if let Some(series) = cache.borrow().get(&SeriesRef { method, route, status }) {
            series.record(seconds);
            return;
        }
        let labels = [("method", method.to_owned()), ("route", route.to_owned()), ("status", status.to_string())];
        let series = HttpSeries {
            total: metrics::counter!("http_requests_total", &labels),
            duration: metrics::histogram!("http_request_duration_seconds", &labels),
        };
        series.record(seconds);
        cache.borrow_mut().insert(SeriesKey { method, route: route.into(), status }, series);
    });
}

impl HttpSeries {
    fn record(&self, seconds: f64) {
        self.total.increment(1);
        self.duration.record(seconds);
    }
}

thread_local! {
    /// Each worker thread's handles of `crm_lifecycle_outcomes_total` and `crm_store_duration_seconds`, as
    /// for [`HTTP_SERIES`]: their labels are a few fixed names, so the maps stay small. Looked up in the
    /// recorder's registry on every call, the two took about 3 500 instructions of each request of the mix.
    static OUTCOMES: std::cell::RefCell<hashbrown::HashMap<[&'static str; 3], metrics::Counter>> =
        std::cell::RefCell::new(hashbrown::HashMap::new());
    static STORE_CALLS: std::cell::RefCell<hashbrown::HashMap<[&'static str; 2], metrics::Histogram>> =
        std::cell::RefCell::new(hashbrown::HashMap::new());
}

pub fn lifecycle_outcome(operation: &'static str, result: &'static str, record_type: RecordType) {
    let record_type = record_type.as_str();
    OUTCOMES.with(|cache| {
        cache
            .borrow_mut()
            .entry([operation, result, record_type])
            .or_insert_with(|| {
                metrics::counter!(
                    "crm_lifecycle_outcomes_total",
                    "operation" => operation,
                    "result" => result,
                    "record_type" => record_type
                )
            })
            .increment(1)
    });
}

fn store_call(operation: &'static str, outcome: &'static str, seconds: f64) {
    STORE_CALLS.with(|cache| {
        cache
            .borrow_mut()
            .entry([operation, outcome])
            .or_insert_with(
                || metrics::histogram!("crm_store_duration_seconds", "operation" => operation, "outcome" => outcome),
            )
            .record(seconds)
    });
}

/// For a CRM backend adapter: one call to the CRM's own API.
pub fn backend_call(backend: &'static str, operation: &'static str, status: u16) {
    metrics::counter!("crm_backend_calls_total", "backend" => backend, "operation" => operation, "status" => status.to_string())
        .increment(1);
}

/// For a CRM backend adapter: the API allowance it reports (used and limit).
pub fn backend_api_usage(backend: &'static str, used: f64, limit: f64) {
    metrics::gauge!("crm_backend_api_usage", "backend" => backend, "limit" => "used").set(used);
    metrics::gauge!("crm_backend_api_usage", "backend" => backend, "limit" => "max").set(limit);
}

/// Wraps a backend: every call of the port runs inside a `store` span naming the operation (so whatever the
/// adapter logs, and the database driver's own events, say which call they belong to) and is timed.
pub struct Instrumented(pub Arc<dyn Backend>);

async fn timed<T>(
    operation: &'static str,
    call: impl std::future::Future<Output = Result<T, StoreError>>,
) -> Result<T, StoreError> {
    let started = Instant::now();
    let result = call.instrument(tracing::info_span!("store", operation)).await;
    let outcome = match &result {
        Ok(_)
        | Err(
            StoreError::NotFound
            | StoreError::InvalidTransition { .. }
            | StoreError::UnknownOwner
            | StoreError::Rejected { .. },
        ) => "ok",
        Err(StoreError::OutcomeUnknown(_)) => "unknown",
        Err(StoreError::Misconfigured(_)) => "misconfigured",
        Err(StoreError::Unavailable { .. }) => "unavailable",
        Err(StoreError::Internal(_)) => "error",
    };
    store_call(operation, outcome, started.elapsed().as_secs_f64());
    result
}

#[async_trait]
impl Store for Instrumented {
    async fn create(&self, request: &CreateRequest, ctx: &RequestContext) -> Result<CreateOutcome, StoreError> {
        timed("create", self.0.create(request, ctx)).await
    }
    async fn close_won(
        &self,
        record_type: RecordType,
        id: &str,
        convert: bool,
        ctx: &RequestContext,
    ) -> Result<CloseWonOutcome, StoreError> {
        timed("close_won", self.0.close_won(record_type, id, convert, ctx)).await
    }
    async fn close_lost(
        &self,
        record_type: RecordType,
        id: &str,
        ctx: &RequestContext,
    ) -> Result<RecordRef, StoreError> {
        timed("close_lost", self.0.close_lost(record_type, id, ctx)).await
    }
    async fn get(&self, record_type: RecordType, id: &str) -> Result<Option<RecordWithHistory>, StoreError> {
        timed("get", self.0.get(record_type, id)).await
    }
    async fn search(&self, id_number: &IdNumber, product: Option<&Product>) -> Result<SearchResult, StoreError> {
        timed("search", self.0.search(id_number, product)).await
    }
    async fn ready(&self) -> Result<(), StoreError> {
        timed("ready", self.0.ready()).await
    }
}

#[async_trait]
impl Idempotency for Instrumented {
    async fn claim(
        &self,
        key: &str,
        fingerprint: &str,
        holder: &str,
        lease: Duration,
        ttl: Duration,
    ) -> Result<Claim, StoreError> {
        timed("idempotency_claim", self.0.claim(key, fingerprint, holder, lease, ttl)).await
    }
    async fn renew(&self, key: &str, holder: &str, lease: Duration) -> Result<bool, StoreError> {
        timed("idempotency_renew", self.0.renew(key, holder, lease)).await
    }
    async fn complete(&self, key: &str, holder: &str, response: &StoredResponse) -> Result<(), StoreError> {
        timed("idempotency_complete", self.0.complete(key, holder, response)).await
    }
    async fn release(&self, key: &str, holder: &str) -> Result<(), StoreError> {
        timed("idempotency_release", self.0.release(key, holder)).await
    }
    async fn purge_expired(&self) -> Result<u64, StoreError> {
        timed("idempotency_purge", self.0.purge_expired()).await
    }
}

#[async_trait]
impl Reports for Instrumented {
    async fn funnel(&self, period: &Period, group_by: GroupBy) -> Result<Rows<FunnelRow>, StoreError> {
        timed("report_funnel", self.0.funnel(period, group_by)).await
    }
    async fn rejections(&self, period: &Period) -> Result<Rows<RejectionRow>, StoreError> {
        timed("report_rejections", self.0.rejections(period)).await
    }
    async fn handovers(&self, period: &Period) -> Result<Rows<HandoverRow>, StoreError> {
        timed("report_handovers", self.0.handovers(period)).await
    }
    async fn stale(&self, query: &StaleQuery) -> Result<StalePage, StoreError> {
        timed("report_stale", self.0.stale(query)).await
    }
}

#[cfg(test)]
mod tests {
    #[test]
    fn methods_outside_the_known_set_share_one_label() {
        assert_eq!(super::method_label("GET"), "GET");
        assert_eq!(super::method_label("OPTIONS"), "OPTIONS");
        assert_eq!(super::method_label("get"), "OTHER");
        assert_eq!(super::method_label("BREW"), "OTHER");
        assert_eq!(super::method_label(""), "OTHER");
    }
}
