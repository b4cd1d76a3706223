//! The domain: scheduled items, their states and transitions ([`machine`]), validation,
//! the ticket-activity rule, timelines and human time input ([`when`]), as plain types
//! and plain functions. No gRPC, no SQLite, no clock: every function that needs "now"
//! takes it as an argument (UTC milliseconds).

mod error;
mod hours;
mod item;
mod listing;
mod local_time;
pub mod machine;
mod timeline;
mod validate;
pub mod when;

pub use error::{Error, Result};
pub use hours::*;
pub use item::*;
pub use listing::{DeferredTicket, Event, ListQuery, Order};
pub use local_time::*;
pub use timeline::{clear_internal, timeline};
pub use validate::*;
