//! A small pool of read-only connections, used on tokio's blocking threads.

use std::path::PathBuf;
use std::sync::Mutex;

use rusqlite::{Connection, OpenFlags};

use crate::domain;

use super::StoreError;

pub(super) struct ReadPool {
    path: PathBuf,
    /// Idle connections; at most `max_idle` are kept.
    idle: Mutex<Vec<Connection>>,
    max_idle: usize,
}

impl ReadPool {
    pub(super) fn new(path: PathBuf, max_idle: usize) -> Self {
        Self {
            path,
            idle: Mutex::new(Vec::new()),
            max_idle,
        }
    }

    fn take(&self) -> Result<Connection, StoreError> {
        if let Some(c) = self.idle.lock().unwrap_or_else(|p| p.into_inner()).pop() {
            return Ok(c);
        }
        let c = Connection::open_with_flags(
            &self.path,
            OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
        )?;
        super::trace::install(&c);
        c.busy_handler(Some(super::wait_briefly))?;
        c.pragma_update(None, "cache_size", -16384)?;
        Ok(c)
    }

    fn put(&self, c: Connection) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        if idle.len() < self.max_idle {
            idle.push(c);
        }
    }

    /// Runs `f` on a pooled connection on this thread (which it blocks).
    pub(super) fn read_here<T>(
        &self,
        f: impl FnOnce(&Connection) -> domain::Result<T>,
    ) -> domain::Result<T> {
        let conn = self.take()?;
        let r = f(&conn);
        self.put(conn);
        r
    }

    pub(super) async fn read<T, F>(self: &std::sync::Arc<Self>, f: F) -> domain::Result<T>
    where
        T: Send + 'static,
        F: FnOnce(&Connection) -> domain::Result<T> + Send + 'static,
    {
        let pool = self.clone();
        tokio::task::spawn_blocking(move || {
            let conn = pool.take()?;
            let r = f(&conn);
            pool.put(conn);
            r
        })
        .await
        .map_err(|e| domain::Error::Internal(format!("read task failed: {e}")))?
    }
}
