//! A copy of a database file, made with SQLite's online backup API page by page: safe
//! while the service runs (it copies one consistent snapshot; the writer goes on).
//!
//! # Contract
//! [`backup_to`] reads the file through its own read-only connection, not through the
//! store: it copies what is committed to the file, like any reader. A running service's
//! clients read through [`Store::read`](super::Store::read), which returns only what is
//! durable; [`Store::read_hint`](super::Store::read_hint) may see a commit whose fsync is
//! still running. The copy is checked with `PRAGMA integrity_check` before it is
//! reported good.

use std::path::Path;
use std::time::Duration;

use rusqlite::backup::Backup;
use rusqlite::{Connection, OpenFlags};

/// Pages copied per step.
const PAGES_PER_STEP: i32 = 1024;
/// The pause between steps, so the live writer is not starved on a busy database.
const PAUSE: Duration = Duration::from_millis(5);

/// Why a backup failed.
#[derive(Debug, thiserror::Error)]
pub enum BackupError {
    /// The database to copy cannot be opened.
    #[error("{0}")]
    Source(rusqlite::Error),
    /// Creating or writing the copy failed.
    #[error("{0}")]
    Copy(rusqlite::Error),
    /// The copy was made but fails `integrity_check` (its first message).
    #[error("the copy fails integrity_check: {0}")]
    Integrity(String),
}

/// Copies the database at `db` to a new file `out`, then checks the copy's integrity.
/// The caller makes sure `out` does not exist yet.
///
/// # Errors
/// [`BackupError::Source`] when `db` cannot be opened read-only, [`BackupError::Copy`]
/// when the copy cannot be written, [`BackupError::Integrity`] when it is corrupt.
pub fn backup_to(db: &Path, out: &Path) -> Result<(), BackupError> {
    let src = Connection::open_with_flags(db, OpenFlags::SQLITE_OPEN_READ_ONLY)
        .map_err(BackupError::Source)?;
    let mut dst = Connection::open(out).map_err(BackupError::Copy)?;
    Backup::new(&src, &mut dst)
        .and_then(|b| b.run_to_completion(PAGES_PER_STEP, PAUSE, None))
        .map_err(BackupError::Copy)?;
    let check: String = dst
        .query_row("PRAGMA integrity_check", [], |r| r.get(0))
        .map_err(BackupError::Copy)?;
    if check != "ok" {
        return Err(BackupError::Integrity(check));
    }
    Ok(())
}
