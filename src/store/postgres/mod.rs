//! The PostgreSQL engine behind the store's contract (see `store`).

use std::sync::Arc;

use super::{CommitHook, StoreError};
use crate::clock::Clock;
use crate::config::Synchronous;

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
