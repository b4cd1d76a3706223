//! The PostgreSQL engine behind the store's contract (see `store`).
//!
//! Its SQL: the schema and its migrations ([`schema`]), and the statements every
//! operation runs ([`rows`]), with the meaning of the SQLite engine's. Rows hold the
//! same encodings as SQLite's (`store::codec`): content, timing and event snapshots are
//! the same bytes, enums the same integers. Item ids and event sequence numbers are
//! allocated by sendlater (no sequence on the hot path); start-up reads where they
//! stand with `rows::max_ids`.

use std::sync::Arc;

use super::{CommitHook, StoreError};
use crate::clock::Clock;
use crate::config::Synchronous;

// Until the PostgreSQL backend calls them, parts of these are unused outside tests.
#[allow(dead_code)]
pub(crate) mod rows;
#[allow(dead_code)]
pub(crate) mod schema;

#[cfg(test)]
pub(crate) mod test_db;
#[cfg(test)]
mod tests;

/// The PostgreSQL store.
pub struct PgStore {}

impl PgStore {
    /// Opens the store at `url`.
    ///
    /// # Errors
    /// The database cannot be reached or is not usable.
    pub fn open(
        url: &str,
        _sync: Synchronous,
        _clock: Arc<dyn Clock>,
        _hook: Arc<dyn CommitHook>,
    ) -> Result<Arc<dyn super::Backend>, StoreError> {
        Err(StoreError::Connect {
            url: super::redact_url(url),
            reason: "not built yet".into(),
        })
    }
}
