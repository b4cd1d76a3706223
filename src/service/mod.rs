//! The gRPC edge: tonic services, proto <-> domain conversion, error mapping.

pub mod convert;
pub mod scheduler;

pub use scheduler::SchedulerService;
