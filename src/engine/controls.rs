//! Dispatch controls in memory: which (account, channel) pairs are paused and which
//! have a rate limit. The durable copy is the `dispatch_controls` table; this copy is
//! loaded at start-up and replaced after each change is durable. Account `*` stands for
//! every account (an operator pausing a whole channel during a provider outage).
//!
//! Readers (the dispatcher, once per round) take an `Arc` of the current snapshot: no
//! lock is held while they use it.
//!
//! Several nodes on one PostgreSQL database: a change to `*` is written by the owner of
//! `*`'s partition only. Every other node re-reads the stored `*` rows about once a
//! second ([`Engine::spawn_every_account_follower`]) and applies a change the way a
//! local one is applied (the dispatcher is signalled: a pause holds items at once, a
//! resume wakes the line). So a pause or rate limit for every account reaches every
//! node within about a second; until then a node goes on with what it knew (and its
//! `GetDispatchControls` for `*` answers that).
//!
//! [`Engine::spawn_every_account_follower`]: super::Engine::spawn_every_account_follower

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};

use tokio::sync::Notify;

use crate::domain::Channel;
use crate::store::ControlRow;

/// The account that stands for every account.
pub const EVERY_ACCOUNT: &str = "*";

/// A pause: (account, channel).
pub type Paused = (String, Channel);
/// A rate limit: (account, channel, starts per minute).
pub type Limited = (String, Channel, u32);

/// One immutable view of the controls.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct ControlsSnapshot {
    paused: HashSet<(String, Channel)>,
    limits: HashMap<(String, Channel), u32>,
}

impl ControlsSnapshot {
    /// Whether items of `account` on `channel` are held back by a pause.
    pub fn is_paused(&self, account: &str, channel: Channel) -> bool {
        !self.paused.is_empty()
            && (self.paused.contains(&(account.to_owned(), channel))
                || self.paused.contains(&(EVERY_ACCOUNT.to_owned(), channel)))
    }

    /// At most this many starts per rolling minute for `account` on `channel`.
    pub fn limit(&self, account: &str, channel: Channel) -> Option<u32> {
        if self.limits.is_empty() {
            return None;
        }
        self.limits.get(&(account.to_owned(), channel)).copied()
    }

    /// Every pause (account, channel) and every rate limit (account, channel, per
    /// minute), sorted: for the operations page.
    pub fn entries(&self) -> (Vec<Paused>, Vec<Limited>) {
        let mut paused: Vec<Paused> = self.paused.iter().cloned().collect();
        paused.sort();
        let mut limits: Vec<Limited> = self
            .limits
            .iter()
            .map(|((a, c), n)| (a.clone(), *c, *n))
            .collect();
        limits.sort();
        (paused, limits)
    }

    /// A snapshot with these pauses and rate limits, for unit tests of its readers.
    #[cfg(test)]
    pub(crate) fn for_tests(paused: &[(&str, Channel)], limits: &[(&str, Channel, u32)]) -> Self {
        ControlsSnapshot {
            paused: paused.iter().map(|&(a, c)| (a.to_owned(), c)).collect(),
            limits: limits
                .iter()
                .map(|&(a, c, n)| ((a.to_owned(), c), n))
                .collect(),
        }
    }

    /// Adds one stored row (a pause and/or a rate limit).
    fn insert(&mut self, r: &ControlRow) {
        let key = (r.account_id.clone(), r.channel);
        if r.paused {
            self.paused.insert(key.clone());
        }
        if r.per_minute > 0 {
            self.limits.insert(key, r.per_minute);
        }
    }

    /// Whether nothing is paused or limited (the common case: dispatch skips the checks).
    pub fn is_empty(&self) -> bool {
        self.paused.is_empty() && self.limits.is_empty()
    }

    /// The paused channels (by the account's own pause or one of every account) and
    /// the rate limits of one account, in channel order.
    pub fn of_account(&self, account: &str) -> (Vec<Channel>, Vec<(Channel, u32)>) {
        let mut paused: Vec<Channel> = Channel::ALL
            .iter()
            .copied()
            .filter(|&c| self.is_paused(account, c))
            .collect();
        paused.sort();
        let limits = Channel::ALL
            .iter()
            .filter_map(|&c| self.limits.get(&(account.to_owned(), c)).map(|&n| (c, n)))
            .collect();
        (paused, limits)
    }
}

/// The controls and a signal for the dispatcher when they change.
#[derive(Default)]
pub struct Controls {
    /// The snapshot in force and how many times it was replaced.
    current: Mutex<(Arc<ControlsSnapshot>, u64)>,
    /// Signalled after every change (one stored permit).
    pub changed: Notify,
}

impl Controls {
    /// The current snapshot.
    pub fn snapshot(&self) -> Arc<ControlsSnapshot> {
        self.current
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .0
            .clone()
    }

    /// A number that changes at every replacement: taken before a read of the store,
    /// it tells [`Controls::follow_every_account`] whether a newer read was applied
    /// meanwhile.
    pub fn version(&self) -> u64 {
        self.current.lock().unwrap_or_else(|p| p.into_inner()).1
    }

    /// Puts the stored controls of every account (`*`, all of them: `rows` of other
    /// accounts are ignored) in place of those in force, unless the controls were
    /// replaced since `read_at` (from [`Controls::version`] before the store was read:
    /// that newer read wins). Signals the dispatcher when anything changed; returns
    /// whether it did.
    pub fn follow_every_account(&self, rows: &[ControlRow], read_at: u64) -> bool {
        let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
        if current.1 != read_at {
            return false;
        }
        let mut next = ControlsSnapshot::clone(&current.0);
        next.paused.retain(|(a, _)| a != EVERY_ACCOUNT);
        next.limits.retain(|(a, _), _| a != EVERY_ACCOUNT);
        for r in rows.iter().filter(|r| r.account_id == EVERY_ACCOUNT) {
            next.insert(r);
        }
        if next == *current.0 {
            return false;
        }
        *current = (Arc::new(next), current.1 + 1);
        drop(current);
        self.changed.notify_one();
        true
    }

    /// Replaces the controls with every stored row (at start-up, and after each change
    /// is durable): the table is a handful of rows, so the snapshot is rebuilt whole.
    pub fn replace(&self, rows: &[ControlRow]) {
        let mut next = ControlsSnapshot::default();
        for r in rows {
            next.insert(r);
        }
        {
            let mut current = self.current.lock().unwrap_or_else(|p| p.into_inner());
            *current = (Arc::new(next), current.1 + 1);
        }
        self.changed.notify_one();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn row(account: &str, channel: Channel, paused: bool, per_minute: u32) -> ControlRow {
        ControlRow {
            account_id: account.into(),
            channel,
            paused,
            per_minute,
        }
    }

    #[test]
    fn a_pause_of_every_account_holds_back_each_account() {
        let c = Controls::default();
        c.replace(&[row("*", Channel::Email, true, 0)]);
        let s = c.snapshot();
        assert!(s.is_paused("acme", Channel::Email));
        assert!(!s.is_paused("acme", Channel::Chat));
        c.replace(&[row("*", Channel::Email, false, 0)]);
        assert!(!c.snapshot().is_paused("acme", Channel::Email));
        assert!(c.snapshot().is_empty());
    }

    #[test]
    fn following_every_account_replaces_only_its_rows_signals_a_change_and_yields_to_a_newer_read()
    {
        let c = Controls::default();
        c.replace(&[row("acme", Channel::Chat, true, 60)]);
        let seen = c.version();
        // A stored permit from the replacement above, then one from this change.
        let _ = futures_util::FutureExt::now_or_never(c.changed.notified());
        assert!(c.follow_every_account(&[row("*", Channel::Email, true, 0)], seen));
        assert!(futures_util::FutureExt::now_or_never(c.changed.notified()).is_some());
        let s = c.snapshot();
        assert!(s.is_paused("globex", Channel::Email));
        assert!(
            s.is_paused("acme", Channel::Chat),
            "the account's own pause stays"
        );
        assert_eq!(s.limit("acme", Channel::Chat), Some(60));
        // The same rows again: nothing changes, nothing is signalled.
        let seen = c.version();
        assert!(!c.follow_every_account(&[row("*", Channel::Email, true, 0)], seen));
        assert_eq!(c.version(), seen);
        assert!(futures_util::FutureExt::now_or_never(c.changed.notified()).is_none());
        // A read taken before a local replacement is stale: it is not applied.
        c.replace(&[row("*", Channel::Chat, true, 0)]);
        assert!(!c.follow_every_account(&[], seen));
        assert!(c.snapshot().is_paused("acme", Channel::Chat));
        // A resume of every account: the `*` rows are gone, the others stay.
        c.replace(&[
            row("*", Channel::Email, true, 0),
            row("acme", Channel::Chat, true, 0),
        ]);
        assert!(c.follow_every_account(&[], c.version()));
        let s = c.snapshot();
        assert!(!s.is_paused("globex", Channel::Email));
        assert!(s.is_paused("acme", Channel::Chat));
    }

    #[test]
    fn a_rate_limit_is_per_account_and_channel_and_zero_removes_it() {
        let c = Controls::default();
        c.replace(&[row("acme", Channel::Chat, false, 60)]);
        assert_eq!(c.snapshot().limit("acme", Channel::Chat), Some(60));
        assert_eq!(c.snapshot().limit("acme", Channel::Email), None);
        assert_eq!(c.snapshot().limit("globex", Channel::Chat), None);
        c.replace(&[row("acme", Channel::Chat, false, 0)]);
        assert_eq!(c.snapshot().limit("acme", Channel::Chat), None);
    }
}
