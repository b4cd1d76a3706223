//! Logging to stderr with `tracing-subscriber`: the filter comes from `RUST_LOG`, the
//! format (human text or JSON lines) from `serve --log-format`.
//!
//! `serve` logs at `info` unless `RUST_LOG` says otherwise; client subcommands at
//! `warn`, so their stdout/stderr stay readable.

use tracing_subscriber::filter::{EnvFilter, LevelFilter};

use super::args::LogFormat;

/// How to log.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LogSettings {
    pub format: LogFormat,
    /// Used when `RUST_LOG` is unset; invalid `RUST_LOG` directives are ignored.
    pub default_level: LevelFilter,
}

/// Installs the global subscriber. Only the first call in a process has any effect.
pub fn init(settings: LogSettings) {
    let filter = EnvFilter::builder()
        .with_default_directive(settings.default_level.into())
        .from_env_lossy();
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        // Colours only for a person at a terminal, not in files or log collectors.
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()));
    let installed = match settings.format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().try_init(),
    };
    if let Err(error) = installed {
        // Another subscriber is already installed (tests): keep that one.
        tracing::debug!(%error, "logging already initialised");
    }
}
