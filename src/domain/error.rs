//! The domain error, shared by the store and the engine; the service maps it to a
//! gRPC status (API.md "Errors and limits").

/// What went wrong, in the caller's terms.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Bad input; `field` is the path of the offending field (`email.to[1]`).
    #[error("{field}: {reason}")]
    InvalidArgument { field: String, reason: String },
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    ResourceExhausted(String),
    /// A position the caller resumes from is no longer available (pruned events).
    #[error("{0}")]
    OutOfRange(String),
    /// The service is shutting down or a component stopped.
    #[error("{0}")]
    Unavailable(String),
    /// A bug or a storage failure; the details are logged, not sent to clients.
    #[error("{0}")]
    Internal(String),
}

impl Error {
    /// An `InvalidArgument` for `field`.
    pub fn invalid(field: impl Into<String>, reason: impl Into<String>) -> Self {
        Error::InvalidArgument {
            field: field.into(),
            reason: reason.into(),
        }
    }

    /// The same error with `prefix` put before the field path (for batch entries).
    pub fn in_field(self, prefix: &str) -> Self {
        match self {
            Error::InvalidArgument { field, reason } => Error::InvalidArgument {
                field: format!("{prefix}{field}"),
                reason,
            },
            other => other,
        }
    }
}

/// Result alias of the domain layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;
