//! Wall-clock time for the engine, behind a trait so tests drive it by hand.
//!
//! Everything inside sendlater is UTC milliseconds since the Unix epoch (`i64`). The
//! engine never calls `SystemTime::now()` itself: it asks its [`Clock`], and it waits for
//! a deadline with [`Clock::sleep_until`]. [`SystemClock`] is the real one;
//! [`ManualClock`] only moves when a test calls [`ManualClock::advance`] or
//! [`ManualClock::set`], which wakes every sleeper whose deadline has come.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicI64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;

/// A boxed future, so `Clock` stays object safe.
pub type BoxFuture<'a> = Pin<Box<dyn Future<Output = ()> + Send + 'a>>;

/// A source of "now" in UTC milliseconds, and a way to wait until a given "now".
pub trait Clock: Send + Sync + 'static {
    /// Milliseconds since the Unix epoch, UTC.
    fn now_ms(&self) -> i64;
    /// Completes once `now_ms() >= deadline_ms` (at once if that is already so).
    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'_>;
}

/// The machine's clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl Clock for SystemClock {
    fn now_ms(&self) -> i64 {
        chrono::Utc::now().timestamp_millis()
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'_> {
        Box::pin(async move {
            // The system clock may step; re-check after each sleep instead of trusting
            // one long sleep computed from a stale "now".
            loop {
                let now = self.now_ms();
                if now >= deadline_ms {
                    return;
                }
                let wait = (deadline_ms - now).clamp(1, 60_000) as u64;
                tokio::time::sleep(Duration::from_millis(wait)).await;
            }
        })
    }
}

/// A clock that moves only when told to; for tests. Cheap to clone (shared state).
#[derive(Debug, Clone)]
pub struct ManualClock {
    now: Arc<AtomicI64>,
    changed: Arc<watch::Sender<i64>>,
}

impl ManualClock {
    /// A clock reading `start_ms`.
    pub fn new(start_ms: i64) -> Self {
        let (tx, _rx) = watch::channel(start_ms);
        Self {
            now: Arc::new(AtomicI64::new(start_ms)),
            changed: Arc::new(tx),
        }
    }

    /// A clock reading the current wall-clock time (so API validation of `send_at`
    /// against real timestamps keeps working), frozen there.
    pub fn starting_now() -> Self {
        Self::new(SystemClock.now_ms())
    }

    /// Moves the clock forward by `by` and wakes the sleepers that are due.
    pub fn advance(&self, by: Duration) {
        let ms = i64::try_from(by.as_millis()).unwrap_or(i64::MAX);
        let new = self.now.fetch_add(ms, Ordering::SeqCst) + ms;
        self.changed.send_replace(new);
    }

    /// Sets the clock to `ms` (it may go backwards, as real clocks do).
    pub fn set(&self, ms: i64) {
        self.now.store(ms, Ordering::SeqCst);
        self.changed.send_replace(ms);
    }
}

impl Clock for ManualClock {
    fn now_ms(&self) -> i64 {
        self.now.load(Ordering::SeqCst)
    }

    fn sleep_until(&self, deadline_ms: i64) -> BoxFuture<'_> {
        let mut rx = self.changed.subscribe();
        Box::pin(async move {
            // `wait_for` checks the current value first, so a change made between
            // subscribe and here is not missed.
            let _ = rx.wait_for(|_| self.now_ms() >= deadline_ms).await;
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn manual_clock_sleeper_wakes_only_when_advanced_past_deadline() {
        let clock = ManualClock::new(1_000);
        let c2 = clock.clone();
        let sleeper = tokio::spawn(async move { c2.sleep_until(1_500).await });
        tokio::task::yield_now().await;
        clock.advance(Duration::from_millis(499));
        tokio::task::yield_now().await;
        assert!(!sleeper.is_finished(), "woke before its deadline");
        clock.advance(Duration::from_millis(1));
        tokio::time::timeout(Duration::from_secs(5), sleeper)
            .await
            .expect("sleeper did not wake at its deadline")
            .expect("sleeper task panicked");
        assert_eq!(clock.now_ms(), 1_500);
    }

    #[tokio::test]
    async fn sleeping_until_a_past_deadline_returns_at_once() {
        let clock = ManualClock::new(10);
        tokio::time::timeout(Duration::from_secs(5), clock.sleep_until(5))
            .await
            .expect("a past deadline must not block");
    }
}
