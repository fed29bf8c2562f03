//! API tests: the real application on port 0 with a fresh embedded database each, driven over HTTP.
//! One test binary, a module per area.

#[path = "../common/binary.rs"]
mod binary;
mod helpers;
#[path = "../common/nats.rs"]
mod nats;

mod auth;
mod close_lost;
mod close_won;
mod concurrency;
mod connections;
mod create;
mod errors;
mod events;
mod faults;
mod hostile;
mod idempotency;
mod observability;
mod operations;
mod reading;
mod reports;
mod salesforce;
