//! The `sendlater` binary: parse the command line, start logging, run, exit.
//!
//! Everything else lives in [`sendlater::cli`], where it can be tested without a process.
#![forbid(unsafe_code)]

use std::process::ExitCode;

use clap::Parser;
use sendlater::cli;

#[tokio::main]
async fn main() -> ExitCode {
    let args = match cli::Args::try_parse() {
        Ok(args) => args,
        Err(error) => return cli::clap_exit(&error),
    };
    cli::logging::init(cli::log_settings(&args));
    cli::exit(cli::run(args).await)
}
