//! The reports dashboard at `/dashboard`: one page served from the binary (its script, styles and charts
//! are inline; the charts are SVG drawn by the page itself). The page holds no data: it asks for a
//! reporting key and reads the JSON reports with it, so it is served without a key, like `/docs`. Its
//! content security policy lets it load nothing and call nothing outside this service.

use axum::http::header;
use axum::response::IntoResponse;

const PAGE: &str = include_str!("dashboard.html");

/// What the page may do: inline script and styles, calls to this service, nothing from elsewhere.
const POLICY: &str = "default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; \
    connect-src 'self'; img-src 'self' data:; form-action 'none'; base-uri 'none'; frame-ancestors 'none'";

pub async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CONTENT_SECURITY_POLICY, POLICY),
            (header::CACHE_CONTROL, "no-store"),
        ],
        PAGE,
    )
}
