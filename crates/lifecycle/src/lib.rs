//! The lead/opportunity lifecycle, as pure functions.
//!
//! This crate is the heart of the service and depends on nothing but `thiserror`: no I/O, no clock, no
//! async. Everything else (the HTTP layer, the SQLite, PostgreSQL and Salesforce adapters) points inward
//! to it.
//!
//! - [`domain`] holds the value types a request is parsed into at the edge (`IdNumber`, `OwnerId`, …);
//!   their constructors validate, so nothing past the edge re-checks them, and the personal ones mask
//!   themselves in `Debug` and `Display`.
//! - [`rules`] turns a request and a snapshot of the records it concerns into a plan: the decision tables
//!   of SPEC §2 and the readings of SPEC §6. A storage adapter reads the snapshot and executes the plan
//!   atomically; no adapter re-implements a rule.

pub mod domain;
pub mod rules;

pub use domain::*;
pub use rules::*;
