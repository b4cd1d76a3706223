//! Connectors: processes that take delivery jobs from the Dispatch stream and send them
//! out over one channel (email over SMTP, chat over a signed webhook).
//!
//! The [`runner`] is shared: it holds a Dispatch stream open to each server it is given
//! (the nodes of a cluster; each reconnecting with its own backoff), runs up to
//! `max_in_flight` sends at once across all of them and answers each job with an Ack or
//! a Nack on the stream it came from. What differs per channel is a [`Sender`]: [`email::EmailSender`] and
//! [`chat::ChatSender`]. [`run_email`] and [`run_chat`] put the two together for the
//! `sendlater connector email|chat` subcommands.
//!
//! Delivery is at least once: a job whose answer is lost (the stream dropped) is sent
//! again, possibly by another connector. Both senders make a repeat recognisable: the
//! email carries a `Message-ID` derived from the item id, the webhook an
//! `Idempotency-Key` equal to the item id.

pub mod chat;
pub mod email;
mod mime;
pub mod runner;
pub mod signature;

use std::future::Future;
use std::sync::Arc;

use tokio_util::sync::CancellationToken;

use crate::pb;

pub use chat::{ChatConfig, ChatSender};
pub use email::{EmailConfig, EmailSender};
pub use runner::{run, RunnerConfig};

/// Why one send failed, and whether trying again can help.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct SendError {
    /// Human-readable cause; becomes the item's `last_error`.
    pub message: String,
    /// `true`: retrying cannot help (e.g. SMTP 5xx, HTTP 400); the item fails at once.
    pub permanent: bool,
}

impl SendError {
    /// A failure worth retrying later (network, 4xx SMTP, 5xx HTTP, timeouts).
    pub fn transient(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            permanent: false,
        }
    }

    /// A failure that retrying cannot fix.
    pub fn permanent(message: impl Into<String>) -> SendError {
        SendError {
            message: message.into(),
            permanent: true,
        }
    }
}

/// Sends one delivery job over a channel.
///
/// # Contract
/// - `send` returns the provider's message id on success; the runner acks with it.
/// - The same job may be sent more than once (at-least-once delivery); implementations
///   mark repeats so the far side can recognise them, and never depend on `attempt`
///   for that.
/// - `send` must not panic; if it does, the runner answers a transient Nack.
pub trait Sender: Send + Sync + 'static {
    /// The channel this sender serves, announced in Hello.
    fn channel(&self) -> pb::Channel;

    /// Sends the job's item.
    ///
    /// # Errors
    /// [`SendError`] with `permanent` set when retrying cannot help.
    fn send(&self, job: &pb::DeliveryJob)
        -> impl Future<Output = Result<String, SendError>> + Send;
}

/// Errors that stop a connector: bad configuration, or the server refusing it.
#[derive(Debug, thiserror::Error)]
pub enum ConnectorError {
    /// A configuration value is unusable; the message names it.
    #[error("{0}")]
    Config(String),
    /// The server refused the connector for a reason retrying cannot fix
    /// (bad token, permission, invalid Hello).
    #[error("server refused the connector: {0}")]
    Refused(tonic::Status),
}

/// Result alias of the connector layer.
pub type Result<T, E = ConnectorError> = std::result::Result<T, E>;

/// Runs the email connector until `shutdown` is cancelled.
///
/// # Errors
/// [`ConnectorError::Config`] for a bad SMTP URL, `--from` or runner setting;
/// [`ConnectorError::Refused`] when the server rejects the connector.
pub async fn run_email(
    runner: RunnerConfig,
    email: EmailConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let sender = EmailSender::new(email)?;
    run(runner, Arc::new(sender), shutdown).await
}

/// Runs the chat connector until `shutdown` is cancelled.
///
/// # Errors
/// [`ConnectorError::Config`] for a bad webhook URL or runner setting;
/// [`ConnectorError::Refused`] when the server rejects the connector.
pub async fn run_chat(
    runner: RunnerConfig,
    chat: ChatConfig,
    shutdown: CancellationToken,
) -> Result<()> {
    let sender = ChatSender::new(chat)?;
    run(runner, Arc::new(sender), shutdown).await
}
