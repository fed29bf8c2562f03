//! `integration-service`: the HTTP face of the lead/opportunity lifecycle.
//!
//! A guided tour, outside in:
//! - [`config`] layers the settings (defaults → `--config` file → `CRM_*` environment → flags) and
//!   validates them once, at start-up.
//! - [`startup`] builds the [`startup::Application`]: it opens the store chosen by the settings, binds the
//!   listener (port 0 in tests) and serves until a shutdown signal, finishing requests in flight.
//! - [`connections`] accepts connections up to a ceiling and closes those too slow to send a request head
//!   or idle too long, serving the router on each with hyper's HTTP/1.
//! - [`api`] is the HTTP layer: request parsing into the lifecycle's domain types (the edge), the four
//!   operations and the reads, problem+json errors, request ids, the OpenAPI document and `/docs`.
//! - The rules themselves live in the `lifecycle` crate and storage behind the `store::Store` port; this
//!   crate only wires them.

pub mod api;
pub mod config;
pub mod connections;
pub mod observability;
pub mod startup;
pub mod telemetry;
