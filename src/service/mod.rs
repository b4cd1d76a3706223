//! The gRPC edge: tonic services, proto <-> domain conversion, error mapping.

pub mod auth;
pub mod cluster;
pub mod convert;
pub mod dispatch;
pub mod scheduler;
pub mod streams;

pub use cluster::ClusterService;
pub use dispatch::DispatchService;
pub use scheduler::SchedulerService;
