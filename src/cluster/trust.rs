//! The trust window: an owner acts for a partition (hands out its jobs) only until
//! `renew_started + lease − margin` on the local monotonic clock. The lease expires by
//! the database's clock at `renewed_at + lease`, and the renewal was sent after
//! `renew_started`, so the window ends before any other node can take the partition
//! (River's `attemptStarted + TTL − 1s`), whatever the wall clocks say.

use std::sync::Mutex;
use std::time::{Duration, Instant};

/// The margin kept between the end of the trust window and the lease's expiry: a
/// hand-out decided just before the end still reaches the connector before another
/// node may take the partition.
pub const MARGIN: Duration = Duration::from_secs(1);

/// Until when this node may act as owner. Starts closed.
#[derive(Debug, Default)]
pub struct Trust {
    until: Mutex<Option<Instant>>,
    /// Signalled by every renewal (one stored permit: the one waiter, dispatch, never
    /// misses a renewal that comes while it is busy).
    renewals: tokio::sync::Notify,
}

impl Trust {
    /// A closed window.
    pub fn new() -> Self {
        Self::default()
    }

    /// A renewal (or take) sent at `started` succeeded for a lease of `lease`: the window
    /// extends to `started + lease − margin` (never shortens while open).
    pub fn renewed(&self, started: Instant, lease: Duration) {
        let end = started + lease.saturating_sub(MARGIN.min(lease / 2));
        let mut u = self.until.lock().unwrap_or_else(|p| p.into_inner());
        if u.is_none_or(|cur| cur < end) {
            *u = Some(end);
        }
        drop(u);
        self.renewals.notify_one();
    }

    /// Resolves at the next renewal (or at once if one came since the last wait): what
    /// items waiting for a closed window wait on.
    pub async fn renewal(&self) {
        self.renewals.notified().await;
    }

    /// Closes the window at once (the lease was lost, released or fenced).
    pub fn close(&self) {
        *self.until.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Whether this node may act as owner at `now`.
    pub fn holds_at(&self, now: Instant) -> bool {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .is_some_and(|u| now < u)
    }

    /// Whether this node may act as owner now.
    pub fn holds(&self) -> bool {
        self.holds_at(Instant::now())
    }

    /// How long the window stays open from `now` (zero when closed).
    pub fn remaining_at(&self, now: Instant) -> Duration {
        self.until
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .map_or(Duration::ZERO, |u| u.saturating_duration_since(now))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_window_ends_a_margin_before_the_lease_counted_from_the_renewals_start() {
        let t = Trust::new();
        let start = Instant::now();
        assert!(!t.holds_at(start), "closed until the first renewal");
        t.renewed(start, Duration::from_secs(10));
        assert!(t.holds_at(start + Duration::from_millis(8_999)));
        assert!(!t.holds_at(start + Duration::from_secs(9)));
        // An older renewal's answer arriving late never shortens the window.
        t.renewed(start - Duration::from_secs(5), Duration::from_secs(10));
        assert!(t.holds_at(start + Duration::from_millis(8_999)));
        t.close();
        assert!(!t.holds_at(start));
        assert_eq!(t.remaining_at(start), Duration::ZERO);
    }

    #[test]
    fn a_short_lease_keeps_half_of_itself_as_the_window() {
        let t = Trust::new();
        let start = Instant::now();
        t.renewed(start, Duration::from_millis(1_500));
        assert!(t.holds_at(start + Duration::from_millis(749)));
        assert!(!t.holds_at(start + Duration::from_millis(750)));
    }
}
