//! `sendlater serve`: start the service on a validated [`ServerConfig`], wait for
//! SIGINT/SIGTERM, stop gracefully.
//!
//! The configuration was checked before this runs (see [`super::config::serve_config`]),
//! so no port is bound for a configuration that cannot work. Shutdown drains in-flight
//! RPCs, commits and closes streams ([`RunningServer::shutdown`]); if that takes longer
//! than [`SHUTDOWN_GRACE`], we say so and exit anyway.
//!
//! [`RunningServer::shutdown`]: crate::server::RunningServer::shutdown

use std::time::Duration;

use super::error::{CliError, Result};
use super::signal;
use crate::config::ServerConfig;
use crate::server;

/// How long a graceful shutdown may take before the process exits regardless.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(30);

/// Runs the service until the process is asked to stop.
///
/// # Errors
/// The service cannot start (storage, bind), a signal handler cannot be installed, or
/// the shutdown fails or overruns [`SHUTDOWN_GRACE`].
pub async fn run(config: ServerConfig) -> Result<()> {
    let listen = config.listen;
    let db = config.db_path.clone();
    if !listen.ip().is_loopback() {
        tracing::warn!(%listen, "listening beyond loopback without auth tokens (--insecure)");
    }
    let running = server::start(config).await?;
    tracing::info!(
        addr = %running.local_addr(),
        db = %db.display(),
        "sendlater is serving"
    );

    let waited = signal::shutdown().await;
    if let Err(error) = &waited {
        // Without signal handlers we cannot wait for a stop request: stop now rather
        // than run unstoppable.
        tracing::error!(%error, "cannot install signal handlers; stopping");
    }

    match tokio::time::timeout(SHUTDOWN_GRACE, running.shutdown()).await {
        Ok(Ok(())) => {
            tracing::info!("stopped");
            waited.map_err(|source| CliError::Io {
                context: "cannot install signal handlers",
                source,
            })
        }
        Ok(Err(error)) => Err(error.into()),
        Err(_elapsed) => {
            tracing::error!(
                grace_secs = SHUTDOWN_GRACE.as_secs(),
                "graceful shutdown did not finish in time"
            );
            Err(CliError::ShutdownTimeout(SHUTDOWN_GRACE.as_secs()))
        }
    }
}
