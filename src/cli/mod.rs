//! The `sendlater` command line: `serve` and the client subcommands.
//!
//! The flow follows ripgrep: [`args`] is the command line as typed (clap derive);
//! [`serve::serve_config`] validates `serve`'s into a
//! [`ServerConfig`](crate::config::ServerConfig), [`config`] a client subcommand's into a
//! [`config::ClientConfig`] plus an [`config::Action`] carrying the finished gRPC
//! request; [`serve`] and [`client`] run those; [`output`] and [`json`] print. `main`
//! only parses, starts [`logging`], calls [`run`] and turns the result into an exit code
//! ([`error`] lists them). Human time input (`--at`, `--in`) is parsed by
//! [`domain::when`](crate::domain::when), which the console shares; business hours
//! (`hours set --day`, "next business morning") in [`hours`]; an item's
//! timing is shown by [`timing`], account settings by [`settings`].

pub mod args;
pub mod backup;
pub mod client;
pub mod config;
pub mod config_file;
pub mod connector;
pub mod error;
pub mod hours;
pub mod json;
pub mod logging;
pub mod migrate;
pub mod output;
pub mod serve;
pub mod settings;
pub mod signal;
pub mod timestamp;
pub mod timing;

use std::process::ExitCode;

use tracing_subscriber::filter::LevelFilter;

pub use args::Args;
pub use error::{CliError, Result};

use args::{Command, LogFormat};
use logging::LogSettings;

/// Runs a parsed command line to completion.
///
/// # Errors
/// Whatever the command failed with; [`CliError::exit_code`] gives the exit code.
pub async fn run(args: Args) -> Result<()> {
    match &args.command {
        Command::Serve(serve_args) => serve::run(serve::serve_config(serve_args)?).await,
        Command::Connector(c) => connector::run(c).await,
        Command::Backup(b) => backup::run(b),
        Command::Migrate(m) => migrate::run(m).await,
        Command::Cluster(c) => client::cluster(&config::ClusterConfig::from_args(c)?).await,
        command => {
            let client_args = command
                .client_args()
                .ok_or_else(|| CliError::Config("not a client subcommand".to_owned()))?;
            let client_config = config::ClientConfig::from_args(client_args)?;
            let now = config::now(client_args)?;
            let action = config::action(command, &client_config, now)?;
            client::run(&client_config, action).await
        }
    }
}

/// How to log for this command line: `serve` at info in its `--log-format`, client
/// subcommands at warn as text.
pub fn log_settings(args: &Args) -> LogSettings {
    match &args.command {
        Command::Serve(serve) => LogSettings {
            format: serve.log_format,
            default_level: LevelFilter::INFO,
        },
        // A connector is a long-running service too: it logs what it sends.
        Command::Connector(_) => LogSettings {
            format: LogFormat::Text,
            default_level: LevelFilter::INFO,
        },
        _ => LogSettings {
            format: LogFormat::Text,
            default_level: LevelFilter::WARN,
        },
    }
}

/// Prints a clap error (or `--help` / `--version`) and gives its exit code: 0 for help
/// and version, 64 for an invalid flag value (clap's message names the flag), 2 for
/// other usage errors.
pub fn clap_exit(error: &clap::Error) -> ExitCode {
    // Printing can only fail when stderr is gone; the exit code still tells.
    let _ = error.print();
    ExitCode::from(clap_exit_code(error))
}

/// The exit code of [`clap_exit`], without printing.
pub fn clap_exit_code(error: &clap::Error) -> u8 {
    match error.kind() {
        clap::error::ErrorKind::InvalidValue | clap::error::ErrorKind::ValueValidation => {
            error::EXIT_CONFIG
        }
        _ => u8::try_from(error.exit_code()).unwrap_or(2),
    }
}

/// The exit code for the outcome of [`run`], after printing `error: ...` to stderr.
/// A closed stdout (`| head`) is success.
pub fn exit(result: Result<()>) -> ExitCode {
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) if e.is_broken_pipe() => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(e.exit_code())
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[test]
    fn an_invalid_flag_value_exits_64_and_a_missing_flag_exits_2() {
        let bad_value = Args::try_parse_from(["sendlater", "serve", "--log-format", "xml"])
            .expect_err("xml is not a log format");
        assert!(bad_value.to_string().contains("--log-format"));
        assert_eq!(clap_exit_code(&bad_value), 64);
        let missing = Args::try_parse_from(["sendlater", "get"]).expect_err("no item id");
        assert_eq!(clap_exit_code(&missing), 2);
        let help = Args::try_parse_from(["sendlater", "--help"]).expect_err("help exits");
        assert_eq!(clap_exit_code(&help), 0);
    }

    #[test]
    fn serve_logs_at_info_and_clients_at_warn() {
        let serve =
            Args::try_parse_from(["sendlater", "serve", "--log-format", "json"]).expect("valid");
        assert_eq!(
            log_settings(&serve),
            LogSettings {
                format: LogFormat::Json,
                default_level: LevelFilter::INFO
            }
        );
        let list = Args::try_parse_from(["sendlater", "list", "--account", "a"]).expect("valid");
        assert_eq!(log_settings(&list).default_level, LevelFilter::WARN);
    }
}
