//! `sendlater connector email|chat`: runs a connector process until SIGINT/SIGTERM.

use tokio_util::sync::CancellationToken;

use super::args::{ConnectorArgs, ConnectorCommand};
use super::error::{CliError, Result};
use super::signal;
use crate::connector::{self, ChatConfig, ConnectorError, EmailConfig, RunnerConfig};

/// The runner settings of the connector flags (`--server` as given: the runner drops
/// repeats and checks each URL).
pub fn runner(args: &ConnectorArgs) -> RunnerConfig {
    let mut r = RunnerConfig::new(String::new());
    r.servers = args.server.clone();
    r.ca_file = args.ca_file.clone();
    r.token = args.token.clone();
    r.max_in_flight = args.max_in_flight;
    if let Some(id) = &args.connector_id {
        r.connector_id = id.clone();
    }
    r
}

/// Runs the connector; a signal stops it gracefully (sends in progress finish).
///
/// # Errors
/// A bad flag (exit 64) or the server refusing the connector (exit 1).
pub async fn run(cmd: &ConnectorCommand) -> Result<()> {
    let shutdown = CancellationToken::new();
    let stop = shutdown.clone();
    tokio::spawn(async move {
        if let Err(e) = signal::shutdown().await {
            tracing::error!(error = %e, "cannot install signal handlers; stopping");
        }
        stop.cancel();
    });
    let result = match cmd {
        ConnectorCommand::Email(a) => {
            let mut email = EmailConfig::new(a.smtp.clone());
            email.default_from = a.from.clone();
            connector::run_email(runner(&a.common), email, shutdown).await
        }
        ConnectorCommand::Chat(a) => {
            let mut chat = ChatConfig::new(a.webhook.clone());
            chat.secret = a.secret.clone();
            connector::run_chat(runner(&a.common), chat, shutdown).await
        }
    };
    result.map_err(|e| match e {
        ConnectorError::Config(m) => CliError::Config(format!("--{m}")),
        ConnectorError::Refused(status) => CliError::Status(Box::new(status)),
    })
}
