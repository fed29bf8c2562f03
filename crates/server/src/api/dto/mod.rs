//! The wire formats of SPEC §2–3, by concern:
//! - [`parse`]: request bodies into commands of domain types (422 naming every offending field);
//! - [`response`]: the response bodies;
//! - [`schema`]: schema-only types, so the OpenAPI document states exactly the rules [`parse`] enforces.

pub mod parse;
pub mod response;
pub mod schema;

pub use parse::*;
pub use response::*;
