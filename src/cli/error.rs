//! Everything that can make a `sendlater` command fail, and the exit code for each.
//!
//! Exit codes (sysexits(3) where one fits):
//!
//! | code | meaning |
//! |---|---|
//! | 0 | success (also: stdout closed early, as in `sendlater list \| head`) |
//! | 1 | the server answered with an error, or the service failed |
//! | 2 | usage error found by clap: unknown flag, missing argument |
//! | 64 | a flag value or configuration that cannot work (`EX_USAGE`) |
//! | 69 | the server cannot be reached (`EX_UNAVAILABLE`) |

use crate::server::ServerError;

/// `EX_USAGE`: a bad flag value or configuration.
pub const EXIT_CONFIG: u8 = 64;
/// `EX_UNAVAILABLE`: the server is not reachable.
pub const EXIT_UNAVAILABLE: u8 = 69;
/// The server said no, or the service failed.
pub const EXIT_FAILURE: u8 = 1;

/// The `Result` of the command line layer.
pub type Result<T, E = CliError> = std::result::Result<T, E>;

/// Why a command failed. `Display` is the message after `error: `.
#[derive(Debug, thiserror::Error)]
pub enum CliError {
    /// A flag value or configuration that cannot work; the message names the flag.
    #[error("{0}")]
    Config(String),
    /// No connection to the server.
    #[error("cannot reach the server at {server}: {reason}")]
    Unreachable { server: String, reason: String },
    /// The server answered with an error status. Boxed: a `Status` is large.
    #[error("{}: {}", code_name(.0.code()), .0.message())]
    Status(Box<tonic::Status>),
    /// The service could not start or stop.
    #[error(transparent)]
    Server(#[from] ServerError),
    /// The service did not stop within its grace period.
    #[error("the service did not stop within {0} s; exiting anyway")]
    ShutdownTimeout(u64),
    /// The server sent something this client cannot use.
    #[error("unexpected response: {0}")]
    Protocol(String),
    /// Writing output or installing signal handlers failed.
    #[error("{context}: {source}")]
    Io {
        context: &'static str,
        source: std::io::Error,
    },
}

impl CliError {
    /// The process exit code for this error (module docs).
    pub fn exit_code(&self) -> u8 {
        match self {
            CliError::Config(_) => EXIT_CONFIG,
            // The database named by --db cannot be reached: a configuration to fix.
            CliError::Server(ServerError::Store(crate::store::StoreError::Connect { .. })) => {
                EXIT_CONFIG
            }
            CliError::Unreachable { .. } => EXIT_UNAVAILABLE,
            CliError::Status(status) if status.code() == tonic::Code::Unavailable => {
                EXIT_UNAVAILABLE
            }
            CliError::Status(_)
            | CliError::Server(_)
            | CliError::ShutdownTimeout(_)
            | CliError::Protocol(_)
            | CliError::Io { .. } => EXIT_FAILURE,
        }
    }

    /// Stdout was closed by the reader (`| head`): not worth an error message.
    pub fn is_broken_pipe(&self) -> bool {
        matches!(self, CliError::Io { source, .. } if source.kind() == std::io::ErrorKind::BrokenPipe)
    }

    /// An output error.
    pub fn output(source: std::io::Error) -> Self {
        CliError::Io {
            context: "cannot write output",
            source,
        }
    }
}

impl From<tonic::Status> for CliError {
    fn from(status: tonic::Status) -> Self {
        CliError::Status(Box::new(status))
    }
}

/// The gRPC name of a status code, as in the API contract (`NOT_FOUND`).
pub fn code_name(code: tonic::Code) -> &'static str {
    use tonic::Code;
    match code {
        Code::Ok => "OK",
        Code::Cancelled => "CANCELLED",
        Code::Unknown => "UNKNOWN",
        Code::InvalidArgument => "INVALID_ARGUMENT",
        Code::DeadlineExceeded => "DEADLINE_EXCEEDED",
        Code::NotFound => "NOT_FOUND",
        Code::AlreadyExists => "ALREADY_EXISTS",
        Code::PermissionDenied => "PERMISSION_DENIED",
        Code::ResourceExhausted => "RESOURCE_EXHAUSTED",
        Code::FailedPrecondition => "FAILED_PRECONDITION",
        Code::Aborted => "ABORTED",
        Code::OutOfRange => "OUT_OF_RANGE",
        Code::Unimplemented => "UNIMPLEMENTED",
        Code::Internal => "INTERNAL",
        Code::Unavailable => "UNAVAILABLE",
        Code::DataLoss => "DATA_LOSS",
        Code::Unauthenticated => "UNAUTHENTICATED",
    }
}

/// An error and its sources, joined with ": " (transport errors hide the cause there).
pub fn error_chain(error: &dyn std::error::Error) -> String {
    let mut message = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let text = cause.to_string();
        if !message.contains(&text) {
            message.push_str(": ");
            message.push_str(&text);
        }
        source = cause.source();
    }
    message
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_server_error_prints_its_grpc_code_and_message() {
        let err = CliError::from(tonic::Status::not_found("item x"));
        assert_eq!(err.to_string(), "NOT_FOUND: item x");
        assert_eq!(err.exit_code(), 1);
    }

    #[test]
    fn each_kind_of_failure_has_its_exit_code() {
        assert_eq!(CliError::Config("--at: bad".into()).exit_code(), 64);
        let unreachable = CliError::Unreachable {
            server: "http://127.0.0.1:1".into(),
            reason: "refused".into(),
        };
        assert_eq!(unreachable.exit_code(), 69);
        assert_eq!(
            CliError::from(tonic::Status::unavailable("down")).exit_code(),
            69
        );
        assert_eq!(
            CliError::from(tonic::Status::failed_precondition("sent")).exit_code(),
            1
        );
    }

    #[test]
    fn a_closed_stdout_is_recognised_as_a_broken_pipe() {
        let err = CliError::output(std::io::Error::from(std::io::ErrorKind::BrokenPipe));
        assert!(err.is_broken_pipe());
        assert!(!CliError::Config(String::new()).is_broken_pipe());
    }
}
