//! The writer's health: *degraded* (it cannot do all its work now, and may recover)
//! and *fatal* (it stopped; writes fail from then on).
//!
//! Degraded has two causes, each set by its own failure and cleared by its own next
//! success: write-backs of rows failing (`sweep_failing`) and group commits failing
//! (`commit_failing`). Watchers of [`Progress::degraded`] are woken only when the store
//! goes from working to degraded or back; the reason shown is the commit's first.
//!
//! Fatal is set once, by the first thread that dies (a panic, or a body that ended
//! without a close: see [`spawn_thread`]); later reasons are dropped. The writer's
//! queue closes with its thread, so every later write fails, and readers waiting on
//! the durable barrier are released with an error.

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::Arc;

use tokio::sync::watch;

use super::progress::Progress;
use crate::store::sqlite::StoreError;

impl Progress {
    /// Why the writer cannot do all its work now, `None` while it can.
    pub(in crate::store::sqlite) fn degraded(&self) -> watch::Receiver<Option<String>> {
        self.degraded.subscribe()
    }

    /// Whether write-backs are failing now.
    pub(in crate::store::sqlite) fn sweep_failing(&self) -> bool {
        self.sweep_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some()
    }

    /// Records that write-backs fail (`Some(why)`) or succeed again (`None`).
    pub(in crate::store::sqlite) fn set_sweep_failing(&self, why: Option<String>) {
        *self.sweep_failing.lock().unwrap_or_else(|p| p.into_inner()) = why;
        self.publish_degraded();
    }

    /// Records that group commits fail (`Some(why)`) or succeed again (`None`).
    pub(super) fn set_commit_failing(&self, why: Option<String>) {
        *self
            .commit_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = why;
        self.publish_degraded();
    }

    fn publish_degraded(&self) {
        let now = self
            .commit_failing
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .clone()
            .or_else(|| {
                self.sweep_failing
                    .lock()
                    .unwrap_or_else(|p| p.into_inner())
                    .clone()
            });
        self.degraded.send_if_modified(|d| {
            let changed = d.is_some() != now.is_some();
            if changed {
                match &now {
                    Some(why) => tracing::error!(reason = %why, "the store cannot do all its work; out of rotation until it can"),
                    None => tracing::info!("the store works again"),
                }
            }
            *d = now;
            changed
        });
    }

    /// Resolves with the reason once the writer or the sync stage died.
    pub(in crate::store::sqlite) fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    pub(super) fn die(&self, why: String) {
        tracing::error!(reason = %why, "the store's writer stopped; writes fail from now on");
        self.fatal.send_if_modified(|f| {
            let first = f.is_none();
            if first {
                *f = Some(why.clone());
            }
            first
        });
    }
}

/// Runs `body` on a named thread; a panic (or an early end) marks the store dead.
pub(super) fn spawn_thread(
    name: &'static str,
    progress: Arc<Progress>,
    body: impl FnOnce() -> bool + Send + 'static,
) -> Result<std::thread::JoinHandle<()>, StoreError> {
    std::thread::Builder::new()
        .name(format!("sendlater-{name}"))
        .spawn(move || match catch_unwind(AssertUnwindSafe(body)) {
            Ok(true) => {}
            Ok(false) => progress.die(format!("the {name} thread stopped unexpectedly")),
            Err(panic) => {
                let what = panic
                    .downcast_ref::<&str>()
                    .map(|s| s.to_string())
                    .or_else(|| panic.downcast_ref::<String>().cloned())
                    .unwrap_or_default();
                progress.die(format!("the {name} thread panicked: {what}"));
            }
        })
        .map_err(|e| StoreError::Unusable {
            path: Default::default(),
            reason: format!("cannot start the {name} thread: {e}"),
        })
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use super::*;
    use crate::clock::SystemClock;
    use crate::config::Synchronous;
    use crate::store::sqlite::test_support::NoHook;
    use crate::store::sqlite::Store;

    #[test]
    fn a_panic_on_the_writer_thread_is_reported_as_fatal() {
        let progress = Progress::new();
        let fatal = progress.fatal();
        let t = spawn_thread("writer", progress.clone(), || panic!("boom")).unwrap();
        let _ = t.join();
        let why = fatal.borrow().clone().expect("fatal set");
        assert!(why.contains("writer") && why.contains("boom"), "{why}");
    }

    #[test]
    fn a_thread_that_ends_without_a_close_is_fatal_and_one_that_closed_is_not() {
        let progress = Progress::new();
        let fatal = progress.fatal();
        let _ = spawn_thread("sync", progress.clone(), || true)
            .unwrap()
            .join();
        assert_eq!(*fatal.borrow(), None, "a thread that ended by a close");
        let _ = spawn_thread("sync", progress.clone(), || false)
            .unwrap()
            .join();
        let why = fatal.borrow().clone().expect("fatal set");
        assert!(why.contains("sync thread stopped unexpectedly"), "{why}");
    }

    #[test]
    fn only_the_first_reason_of_death_is_kept() {
        let progress = Progress::new();
        let mut fatal = progress.fatal();
        progress.die("first".into());
        assert!(fatal.has_changed().unwrap());
        assert_eq!(fatal.borrow_and_update().as_deref(), Some("first"));
        progress.die("second".into());
        assert!(
            !fatal.has_changed().unwrap(),
            "a second death was published"
        );
        assert_eq!(fatal.borrow().as_deref(), Some("first"));
    }

    /// Each cause is cleared by its own success; the commit's reason shows first;
    /// watchers wake only when the store goes from working to degraded or back.
    #[test]
    fn degraded_lasts_while_either_cause_does_and_wakes_watchers_only_when_it_flips() {
        let progress = Progress::new();
        let mut d = progress.degraded();
        assert_eq!(*d.borrow_and_update(), None);
        progress.set_sweep_failing(Some("rows".into()));
        assert!(progress.sweep_failing());
        assert!(d.has_changed().unwrap());
        assert_eq!(d.borrow_and_update().as_deref(), Some("rows"));
        progress.set_commit_failing(Some("commit".into()));
        assert!(!d.has_changed().unwrap(), "still degraded: no wake-up");
        assert_eq!(
            d.borrow().as_deref(),
            Some("commit"),
            "the commit's reason first"
        );
        progress.set_commit_failing(None);
        assert_eq!(
            d.borrow().as_deref(),
            Some("rows"),
            "write-backs still fail"
        );
        progress.set_sweep_failing(None);
        assert!(!progress.sweep_failing());
        assert!(d.has_changed().unwrap());
        assert_eq!(*d.borrow_and_update(), None);
    }

    /// A panic inside a write kills the writer thread: the store says why, the write
    /// that panicked and every later one fail, and nothing hangs.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_that_panics_kills_the_writer_and_every_later_write_fails() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(
            &dir.path().join("f.db"),
            Synchronous::Full,
            Arc::new(SystemClock),
            Arc::new(NoHook),
        )
        .unwrap();
        store.write(|_| Ok(())).await.expect("a write before");
        let mut fatal = store.fatal();
        let r = store
            .write(|_| -> crate::domain::Result<()> { panic!("injected in a write") })
            .await;
        assert!(r.is_err(), "the write that panicked was answered Ok");
        let why = fatal
            .wait_for(|f| f.is_some())
            .await
            .unwrap()
            .clone()
            .unwrap();
        assert!(
            why.contains("writer thread panicked") && why.contains("injected in a write"),
            "{why}"
        );
        let later = store.write(|_| Ok(())).await;
        assert!(
            matches!(later, Err(crate::domain::Error::Unavailable(_))),
            "{later:?}"
        );
        store.close().await;
    }
}
