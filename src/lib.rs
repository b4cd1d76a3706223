//! sendlater: schedule helpdesk replies and new tickets to be sent later.
//!
//! Map of the crate (see DESIGN.md):
#![forbid(unsafe_code)]

pub mod cli;
/// Wall-clock time behind a trait; `ManualClock` for tests.
pub mod clock;
/// Validated configuration: limits, dispatch tuning, storage.
pub mod config;
/// Connector processes: the Dispatch stream runner, email (SMTP) and chat (webhook).
pub mod connector;
/// The staff console: HTML pages over the engine, on their own address.
pub mod console;
/// Hands due items to connectors; records their answers.
pub mod dispatch;
/// Items, states, transitions, validation, activity rules (pure).
pub mod domain;
/// Ties domain, store and wheel together; drives the wheel.
pub mod engine;
/// Prometheus metrics.
pub mod metrics;
/// Generated protobuf/gRPC code.
pub mod pb;
/// Start and stop the service.
pub mod server;
/// gRPC services: Scheduler, Dispatch, conversions.
pub mod service;
/// SQLite: schema, group-commit writer, read pool.
pub mod store;
/// The hierarchical timing wheel (pure, synchronous).
pub mod wheel;
