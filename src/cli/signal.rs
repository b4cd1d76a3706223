//! Waiting for the operating system to ask us to stop, after linkerd's `linkerd-signal`.
//!
//! [`shutdown`] completes on the first SIGINT (Ctrl-C) or SIGTERM (what systemd,
//! `docker stop` and Kubernetes send); elsewhere than Unix, on Ctrl-C. `serve` then
//! drains and stops; `watch` just ends.

/// Completes when the process is asked to stop.
///
/// # Errors
/// When a signal handler cannot be installed.
pub async fn shutdown() -> std::io::Result<()> {
    imp::shutdown().await
}

#[cfg(unix)]
mod imp {
    use tokio::signal::unix::{signal, SignalKind};

    pub(super) async fn shutdown() -> std::io::Result<()> {
        let mut interrupt = signal(SignalKind::interrupt())?;
        let mut terminate = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = interrupt.recv() => tracing::info!("received SIGINT, starting graceful shutdown"),
            _ = terminate.recv() => tracing::info!("received SIGTERM, starting graceful shutdown"),
        }
        Ok(())
    }
}

#[cfg(not(unix))]
mod imp {
    pub(super) async fn shutdown() -> std::io::Result<()> {
        tokio::signal::ctrl_c().await?;
        tracing::info!("received Ctrl-C, starting graceful shutdown");
        Ok(())
    }
}
