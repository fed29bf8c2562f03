//! The HTTP layer: routes at the exact paths of SPEC §2–3 (two with `/int/`, two without), the middleware
//! stack, and the OpenAPI 3.1 document generated from the handlers' annotations, as the configuration
//! serves it (see [`openapi`]).

pub mod admission;
pub mod answer;
pub mod auth;
pub mod dashboard;
pub mod dto;
pub mod error;
pub mod extract;
pub mod fields;
pub mod handlers;
pub mod idempotency;
pub mod overload;
pub mod reports;
pub mod request_id;
pub mod responses;

use std::sync::Arc;

use std::time::Duration;

use axum::extract::DefaultBodyLimit;
use axum::routing::{get, post};
use axum::Router;
use store::Backend;
use tower::ServiceBuilder;
use utoipa::OpenApi;
use utoipa_swagger_ui::SwaggerUi;

/// Prefix of the internal operations (create, close-won, reads).
pub const API_INT: &str = "/integration-service/int/api/crm/v1";
/// Prefix of the close-lost operations, which have no `/int` segment (SPEC §2.3–2.4).
pub const API_PUBLIC: &str = "/integration-service/api/crm/v1";

/// What every handler shares: one reference-counted value, so that the copies axum makes for each request
/// (its middleware and every handler take the state by value) cost one atomic count, not one per field.
#[derive(Clone)]
pub struct AppState(Arc<Shared>);

impl AppState {
    pub fn new(shared: Shared) -> Self {
        Self(Arc::new(shared))
    }
}

impl std::ops::Deref for AppState {
    type Target = Shared;

    fn deref(&self) -> &Shared {
        &self.0
    }
}

/// The contents of [`AppState`].
pub struct Shared {
    pub store: Arc<dyn Backend>,
    /// Longest a request may take, body included.
    pub request_timeout: Duration,
    /// How long a running idempotency claim is held before a retry may take it over, unless its run renews it.
    pub idempotency_lease: Duration,
    /// How long an idempotency key and its response are kept.
    pub idempotency_ttl: Duration,
    /// The channels' API keys; empty when the service runs open.
    pub api_keys: Arc<auth::ApiKeys>,
    /// Per-channel rate limit, if configured.
    pub rate_limit: Option<Arc<governor::DefaultKeyedRateLimiter<String>>>,
    /// Permits for requests in flight.
    pub in_flight: Arc<tokio::sync::Semaphore>,
    /// The event relay's state, when events are configured (for `/health/ready`).
    pub events: Option<events::StatusHandle>,
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "integration-service",
        description = "Keeps the lead/opportunity lifecycle right between a bank's digital channels and its CRM. \
            Every error is RFC 9457 application/problem+json; every response carries X-Request-Id.",
    ),
    paths(
        handlers::create, handlers::close_won, handlers::close_lost_opportunity, handlers::close_lost_lead,
        handlers::get_lead, handlers::get_opportunity, handlers::search, handlers::live, handlers::ready,
        handlers::metrics, reports::funnel, reports::rejections, reports::handovers, reports::stale,
    ),
    tags(
        (name = "lifecycle", description = "The four operations channels call, in the order of a journey"),
        (name = "reading", description = "Records and their history"),
        (name = "operations", description = "Health"),
        (name = "reports", description = "Reports for a reporting API key (docs/reports.md)"),
    )
)]
pub struct ApiDoc;

/// The document as the service runs: with API keys configured, every operation under `/integration-service`
/// requires the `bearer` scheme and may answer 401 (and the four lifecycle operations 403, for a key of
/// another channel); open, it declares no security at all. With a rate limit, those operations may answer 429.
pub fn openapi(api_keys: bool, rate_limited: bool) -> utoipa::openapi::OpenApi {
    use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityRequirement, SecurityScheme};

    let mut doc = ApiDoc::openapi();
    if api_keys {
        let scheme = HttpBuilder::new()
            .scheme(HttpAuthScheme::Bearer)
            .description(Some("The channel's API key (integration-service generate-key)"))
            .build();
        doc.components.get_or_insert_with(Default::default).add_security_scheme("bearer", SecurityScheme::Http(scheme));
    }
    for (path, item) in doc.paths.paths.iter_mut() {
        if !path.starts_with("/integration-service/") {
            continue;
        }
        for op in [item.get.as_mut(), item.post.as_mut()].into_iter().flatten() {
            let answers = &mut op.responses.responses;
            if api_keys {
                op.security = Some(vec![SecurityRequirement::new("bearer", Vec::<String>::new())]);
                answers.insert(
                    "401".into(),
                    problem("UNAUTHENTICATED: missing or unknown API key", Some("WWW-Authenticate")),
                );
                if op.tags.iter().flatten().any(|t| t == "lifecycle") {
                    answers.insert(
                        "403".into(),
                        problem("FORBIDDEN: the API key belongs to another channel than `channel`", None),
                    );
                }
            } else {
                // Open: no key is asked for, so none can be missing or of the wrong role (the reports'
                // annotations declare both for the keyed document).
                op.security = None;
                answers.remove("401");
                answers.remove("403");
            }
            if rate_limited {
                answers
                    .insert("429".into(), problem("RATE_LIMITED: the channel is over its rate", Some("Retry-After")));
            }
        }
    }
    doc
}

/// A problem+json answer, with the header it carries if any.
fn problem(description: &str, header: Option<&str>) -> utoipa::openapi::RefOr<utoipa::openapi::Response> {
    use utoipa::openapi::{ContentBuilder, HeaderBuilder, Ref, ResponseBuilder, Type};

    let content = ContentBuilder::new().schema(Some(Ref::from_schema_name("Problem"))).build();
    let mut response = ResponseBuilder::new().description(description).content("application/problem+json", content);
    if let Some(name) = header {
        response = response.header(
            name,
            HeaderBuilder::new().schema(utoipa::openapi::ObjectBuilder::new().schema_type(Type::String)).build(),
        );
    }
    response.build().into()
}

/// The whole application router.
pub fn router(state: AppState) -> Router {
    // Each `route_layer` (and `layer`) call wraps every route in a boxed service of its own, which every
    // request goes through: the layers of a group go in as one stack.
    let api = Router::new()
        .route(&format!("{API_INT}/combo-create-lead-opportunity"), post(handlers::create))
        .route(&format!("{API_INT}/combo-update-lead-opportunity"), post(handlers::close_won))
        .route(&format!("{API_PUBLIC}/update-opportunity-status"), post(handlers::close_lost_opportunity))
        .route(&format!("{API_PUBLIC}/update-lead-status"), post(handlers::close_lost_lead))
        .route(&format!("{API_INT}/leads/{{id}}"), get(handlers::get_lead))
        .route(&format!("{API_INT}/opportunities/{{id}}"), get(handlers::get_opportunity))
        .route(&format!("{API_INT}/search"), post(handlers::search))
        .route_layer(
            ServiceBuilder::new()
                .layer(axum::middleware::from_fn_with_state(state.clone(), admission::channels))
                // The bodies are read by `extract::read_body`, which enforces the limit itself; this tells
                // axum's own body extractors the same limit, should a handler ever use one.
                .layer(DefaultBodyLimit::max(extract::BODY_LIMIT)),
        )
        .with_state(state.clone());
    let reports = Router::new()
        .route(&format!("{API_INT}/reports/funnel"), get(reports::funnel))
        .route(&format!("{API_INT}/reports/rejections"), get(reports::rejections))
        .route(&format!("{API_INT}/reports/handovers"), get(reports::handovers))
        .route(&format!("{API_INT}/reports/stale"), get(reports::stale))
        .route_layer(
            ServiceBuilder::new().layer(axum::middleware::from_fn_with_state(state.clone(), admission::reporting)),
        )
        .with_state(state.clone());
    let operations = Router::new()
        .route("/health/live", get(handlers::live))
        .route("/health/ready", get(handlers::ready))
        .route("/metrics", get(handlers::metrics))
        .route("/dashboard", get(dashboard::page))
        .with_state(state.clone());
    let document = openapi(!state.api_keys.is_empty(), state.rate_limit.is_some());
    let docs = SwaggerUi::new("/docs").url("/openapi.json", document);
    Router::new()
        .merge(api)
        .merge(reports)
        .merge(operations)
        .merge(docs)
        .route("/", get(|| async { axum::response::Redirect::temporary("/docs/") }))
        .fallback(handlers::not_found)
        .method_not_allowed_fallback(handlers::method_not_allowed)
        // Request id, span, log line, metrics, the request timeout and a panic's 500.
        .layer(request_id::RequestLayer::new(state.request_timeout))
}
