//! `sendlater backup --db FILE --out COPY`: SQLite's online backup API, page by page,
//! safe while the service is running (it reads a consistent snapshot; writers go on).

use std::time::Duration;

use rusqlite::{Connection, OpenFlags};

use super::args::BackupArgs;
use super::error::{CliError, Result};

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
    let io = |e: rusqlite::Error| CliError::Io {
        context: "backup",
        source: std::io::Error::other(e.to_string()),
    };
    let src = Connection::open_with_flags(&args.db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(|e| CliError::Config(format!("--db {}: {e}", args.db.display())))?;
    let mut dst = Connection::open(&args.out).map_err(io)?;
    {
        let backup = rusqlite::backup::Backup::new(&src, &mut dst).map_err(io)?;
        // 1024 pages a step, a short pause between steps so the live writer is not
        // starved on a busy database.
        backup
            .run_to_completion(1024, Duration::from_millis(5), None)
            .map_err(io)?;
    }
    let check: String = dst
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(io)?;
    if check != "ok" {
        return Err(CliError::Protocol(format!(
            "the copy fails integrity_check: {check}"
        )));
    }
    eprintln!("backed up {} to {}", args.db.display(), args.out.display());
    Ok(())
}
