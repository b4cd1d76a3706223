//! `sendlater backup --db FILE --out COPY`: SQLite's online backup API, page by page,
//! safe while the service is running (it reads a consistent snapshot; writers go on).
//! The copy itself is `store::backup`; this module checks the arguments and reports.

use super::args::BackupArgs;
use super::error::{CliError, Result};
use crate::store::backup::{backup_to, BackupError};

/// Copies the database.
///
/// # Errors
/// The source cannot be opened, the target exists, or the copy fails.
pub fn run(args: &BackupArgs) -> Result<()> {
    if args.out.exists() {
        return Err(CliError::Config(format!(
            "--out {}: already exists; choose a new file",
            args.out.display()
        )));
    }
    backup_to(&args.db, &args.out).map_err(|e| match e {
        BackupError::Source(e) => CliError::Config(format!("--db {}: {e}", args.db.display())),
        BackupError::Copy(e) => CliError::Io {
            context: "backup",
            source: std::io::Error::other(e.to_string()),
        },
        e @ BackupError::Integrity(_) => CliError::Protocol(e.to_string()),
    })?;
    eprintln!("backed up {} to {}", args.db.display(), args.out.display());
    Ok(())
}
