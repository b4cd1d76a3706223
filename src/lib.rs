//! sendlater: schedule helpdesk replies and new tickets to be sent later.
//!
//! Map of the crate (see DESIGN.md):
#![forbid(unsafe_code)]

pub mod cli;
/// Wall-clock time behind a trait; `ManualClock` for tests.
pub mod clock;
/// Validated configuration: limits, dispatch tuning, storage.
pub mod config;
/// Generated protobuf/gRPC code.
pub mod pb;
/// Start and stop the service.
pub mod server;
/// The hierarchical timing wheel (pure, synchronous).
pub mod wheel;
