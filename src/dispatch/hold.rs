//! Due items held back: by a pause, by a rate limit (starts per rolling minute), and
//! the lateness windows of waiting items. The actor parks held items out of the fair
//! queue (so they are not scanned again each round) and puts them back when they may go.

use std::collections::{HashMap, VecDeque};

use super::actor::Actor;
use super::writes::Outcome;
use crate::domain::{Channel, Millis};
use crate::engine::Fired;

/// Why due items wait without being handed out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Hold {
    Pause,
    RateLimit,
}

/// Starts of the last minute per account and channel, for rate limits.
#[derive(Default)]
pub(super) struct Limiter {
    starts: HashMap<(String, Channel), VecDeque<Millis>>,
}

/// The window of a rate limit.
const RATE_WINDOW_MS: Millis = 60_000;

impl Limiter {
    /// Counts a start at `now` if fewer than `per_minute` started in the last minute.
    pub(super) fn try_start(
        &mut self,
        account: &str,
        ch: Channel,
        per_minute: u32,
        now: Millis,
    ) -> bool {
        let q = self.starts.entry((account.to_owned(), ch)).or_default();
        while q.front().is_some_and(|&t| t <= now - RATE_WINDOW_MS) {
            q.pop_front();
        }
        if q.len() < per_minute as usize {
            q.push_back(now);
            true
        } else {
            false
        }
    }

    /// When the next start of `account` on `ch` is allowed.
    pub(super) fn next_free(&self, account: &str, ch: Channel) -> Option<Millis> {
        self.starts
            .get(&(account.to_owned(), ch))
            .and_then(|q| q.front())
            .map(|&t| t + RATE_WINDOW_MS)
    }
}

impl Actor {
    /// When the actor must look again without being told: the end of a lateness window
    /// or of a rate limit's minute (on the engine's clock).
    pub(super) fn next_wake(&self) -> Option<Millis> {
        let late = self.late_at.first().map(|&(t, _)| t);
        let rate = self
            .parked
            .iter()
            .filter(|(_, (h, _))| *h == Hold::RateLimit)
            .filter_map(|((a, ch), _)| self.limiter.next_free(a, *ch))
            .min();
        match (late, rate) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Waiting items whose lateness window ended: their policy applies now (the write
    /// checks again that they are still waiting and late).
    pub(super) fn expire_late(&mut self, now: Millis) {
        while let Some(&(at, id)) = self.late_at.first() {
            if at > now {
                break;
            }
            self.late_at.pop_first();
            self.outcomes.push(Outcome::Late { id });
        }
    }

    /// Puts held-back items back in line once their pause ended or their rate limit has
    /// room again; the plan holds back again whatever still may not start.
    pub(super) fn release_parked(&mut self, now: Millis) {
        if self.parked.is_empty() {
            return;
        }
        let controls = self.engine.controls().snapshot();
        let free: Vec<(String, Channel)> = self
            .parked
            .iter()
            .filter(|((a, ch), (hold, _))| match hold {
                Hold::Pause => !controls.is_paused(a, *ch),
                Hold::RateLimit => {
                    controls.limit(a, *ch).is_none()
                        || self.limiter.next_free(a, *ch).is_none_or(|t| t <= now)
                }
            })
            .map(|(k, _)| k.clone())
            .collect();
        for key in free {
            if let Some((_, items)) = self.parked.remove(&key) {
                let q = self.waiting.entry(key.1).or_default();
                for f in items {
                    q.push(&key.0, f);
                }
            }
        }
    }

    pub(super) fn park(&mut self, account: String, ch: Channel, hold: Hold, f: Fired) {
        let e = self
            .parked
            .entry((account, ch))
            .or_insert_with(|| (hold, VecDeque::new()));
        e.0 = hold;
        e.1.push_back(f);
    }
}
