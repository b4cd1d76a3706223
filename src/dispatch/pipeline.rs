//! The dispatch write pipeline: the answers and leases of a round go to the store in
//! one write (`writes`, one group commit for both); the round's jobs leave as soon as
//! that write has *executed* in the writer's open group, before its fsync, and up to
//! [`WRITES_IN_FLIGHT`] such writes overlap. A write that does not commit puts its
//! answers back to be recorded again, one by one ("isolated", each in its own
//! savepoint) so that a bad one cannot hold back the others; answers an isolated write
//! could not record wait and are tried again, backing off from 1 s to a minute. None
//! is ever dropped.

use std::collections::HashMap;
use std::time::Duration;

use tokio::sync::oneshot;

use super::actor::Actor;
use super::plan::Planned;
use super::writes::{self, Outcome};
use super::{ConnectorEvent, BATCH};
use crate::domain::ItemId;
use crate::engine::Fired;

/// A dispatch write whose jobs went out when it executed, not yet known durable.
pub(super) struct PendingWrite {
    /// The answers it records: put back if it does not commit.
    pub(super) outcomes: Vec<Outcome>,
    /// Planned items it did not lease because an earlier write of the open group
    /// changed them: they wait in line again once it is done.
    pub(super) deferred: Vec<Planned>,
    /// It was an isolated write of this many outcomes.
    pub(super) isolated: usize,
}

/// The first wait before answers a write could not record are tried again on their own.
pub(super) const UNRECORDED_FIRST_RETRY: Duration = Duration::from_secs(1);
/// The longest such wait.
pub(super) const UNRECORDED_MAX_RETRY: Duration = Duration::from_secs(60);

/// Dispatch writes executed and not yet durable at once: the next rounds plan and hand
/// out while earlier writes wait for their fsync (a round waits only for its write to
/// *run*, which the writer does at once, even while the disk flushes). Bounds the
/// answers and jobs held for writes that might still fail.
pub(super) const WRITES_IN_FLIGHT: usize = 32;

impl Actor {
    /// Answers received and not yet recorded (queued, or in writes not yet durable).
    pub(super) fn answers_unrecorded(&self) -> usize {
        self.outcomes.len()
            + self
                .writes
                .values()
                .map(|w| w.outcomes.len())
                .sum::<usize>()
    }

    /// Records the answers and leases the planned items in one store write, and hands
    /// the leased jobs out as soon as the write has *executed* (its rows are in the
    /// writer's open transaction, so every later write sees them, e.g. a cancel finds
    /// the item DISPATCHING), without waiting for its commit and fsync: a lease need
    /// not be durable before the job leaves (at-least-once covers the redelivery a
    /// crash would cause, with the attempt count one low). The write's outcome comes
    /// back as [`ConnectorEvent::WriteDone`]; if it did not commit, its answers are
    /// recorded again and its items are due again.
    pub(super) async fn write_round(&mut self, planned: Vec<Planned>) {
        // Answers kept from an earlier write go with this one.
        self.requeue_unrecorded();
        let (n, isolated) = write_batch(self.outcomes.len(), self.isolate);
        let batch: Vec<Outcome> = self.outcomes.drain(..n).collect();
        let due: Vec<Fired> = planned.iter().map(|p| (p.id, p.due)).collect();
        let t = self.tuning;
        let (executed_tx, executed) = oneshot::channel::<writes::Leased>();
        let write = self.next_write;
        self.next_write += 1;
        let store = self.engine.store().clone();
        let events = self.events.clone();
        let records = batch.clone();
        // Queued in the order of the rounds (an answer recorded after an earlier one).
        let previous = self.last_queued.take();
        let (queued_tx, queued) = oneshot::channel::<()>();
        self.last_queued = Some(queued);
        tokio::spawn(async move {
            if let Some(previous) = previous {
                let _ = previous.await;
            }
            let queued = store
                .enqueue(move |tx| {
                    // Leases first: their jobs leave as soon as they have run, before
                    // the answers are recorded. (Should recording fail, or the group's
                    // commit, the write rolls back but its leases are given back as
                    // claims and applied again: the jobs are out.)
                    // One read for every item this write leases or answers for.
                    let ids: Vec<_> = due
                        .iter()
                        .map(|(id, _)| *id)
                        .chain(records.iter().map(|o| o.item()))
                        .collect();
                    tx.prefetch(&ids)?;
                    let leased = writes::lease(tx, &due, t)?;
                    let _ = executed_tx.send(leased);
                    let mut rng = rand::rng();
                    let mut jitter = || rand::RngExt::random::<f64>(&mut rng);
                    if isolated > 0 {
                        writes::record_isolated(tx, &records, t, &mut jitter)
                    } else {
                        writes::record(tx, &records, t, &mut jitter).map(|()| Vec::new())
                    }
                })
                .await;
            let _ = queued_tx.send(());
            let r = match queued {
                Ok(done) => done.await,
                Err(e) => Err(e),
            };
            if let Err(e) = &r {
                tracing::error!(error = %e, "dispatch write failed");
            }
            let (ok, kept) = match r {
                Ok(kept) => (true, kept),
                Err(_) => (false, Vec::new()),
            };
            let _ = events.send(ConnectorEvent::WriteDone { write, ok, kept });
        });
        let mut deferred = Vec::new();
        // With only answers to record there is nothing to wait for: the next round
        // goes on at once.
        if !planned.is_empty() {
            match executed.await {
                Ok(leased) => {
                    let conn_of: HashMap<ItemId, u64> =
                        planned.iter().map(|p| (p.id, p.conn)).collect();
                    for (item, token) in leased.jobs {
                        let conn = conn_of.get(&item.id).copied();
                        self.hand_out(conn, item, token);
                    }
                    let later: std::collections::HashSet<ItemId> =
                        leased.deferred.iter().map(|&(id, _)| id).collect();
                    deferred = planned
                        .into_iter()
                        .filter(|p| later.contains(&p.id))
                        .collect();
                }
                // The write failed before leasing: the planned items wait again, first
                // in line (the answers are put back when its WriteDone arrives).
                Err(_) => self.wait_again(planned),
            }
        }
        self.writes.insert(
            write,
            PendingWrite {
                outcomes: batch,
                deferred,
                isolated,
            },
        );
    }

    /// A write of ours finished. Durable: done. Not committed: its answers are recorded
    /// again (one by one, in case one of them is what failed); the jobs it handed out
    /// stay out (their leases are applied again by the store, see
    /// `Tx::leases_out`). Either way, the items it deferred wait in line again.
    pub(super) fn on_write_done(&mut self, write: u64, ok: bool, kept: Vec<Outcome>) {
        let Some(w) = self.writes.remove(&write) else {
            return;
        };
        if !kept.is_empty() {
            self.unrecorded.extend(kept);
            let wait = self.unrecorded_backoff;
            self.unrecorded_at = Some(tokio::time::Instant::now() + wait);
            self.unrecorded_backoff = next_backoff(wait);
        } else if ok && w.isolated > 0 {
            self.unrecorded_backoff = UNRECORDED_FIRST_RETRY;
        }
        if std::mem::take(&mut self.held_by_answers) {
            self.replan = true;
        }
        if !w.deferred.is_empty() {
            self.wait_again(w.deferred);
            self.replan = true;
        }
        if ok {
            self.isolate = self.isolate.saturating_sub(w.isolated);
            return;
        }
        self.write_failed = true;
        self.isolate = self.isolate.max(w.outcomes.len());
        self.outcomes.splice(0..0, w.outcomes);
    }

    /// Puts the kept answers back in front of the outcomes to record.
    pub(super) fn requeue_unrecorded(&mut self) {
        self.unrecorded_at = None;
        if !self.unrecorded.is_empty() {
            let kept = std::mem::take(&mut self.unrecorded);
            self.isolate += kept.len();
            self.outcomes.splice(0..0, kept);
        }
    }
}

/// How many of `queued` outcomes the next write records, and how many it records one
/// by one (`isolated`, after a failed write: the first `isolate` outcomes, at most a
/// [`BATCH`]); 0 isolated is an ordinary write of up to a [`BATCH`].
pub(super) fn write_batch(queued: usize, isolate: usize) -> (usize, usize) {
    let isolated = if isolate > 0 { isolate.min(BATCH) } else { 0 };
    let n = queued.min(if isolated > 0 { isolated } else { BATCH });
    (n, isolated)
}

/// The wait after `wait` before answers that could not be recorded are tried again:
/// doubled, at most [`UNRECORDED_MAX_RETRY`].
pub(super) fn next_backoff(wait: Duration) -> Duration {
    (wait * 2).min(UNRECORDED_MAX_RETRY)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ordinary_write_records_up_to_a_batch_of_answers() {
        assert_eq!(write_batch(0, 0), (0, 0));
        assert_eq!(write_batch(7, 0), (7, 0));
        assert_eq!(write_batch(BATCH + 1, 0), (BATCH, 0));
    }

    #[test]
    fn after_a_failed_write_only_the_answers_it_held_are_recorded_one_by_one() {
        // The 3 answers of the failed write are at the front: only they go, isolated.
        assert_eq!(write_batch(10, 3), (3, 3));
        // Fewer queued than to isolate (some were recorded meanwhile).
        assert_eq!(write_batch(2, 3), (2, 3));
        // Never more than a batch at once.
        assert_eq!(write_batch(5 * BATCH, 2 * BATCH), (BATCH, BATCH));
    }

    #[test]
    fn the_retry_of_unrecorded_answers_backs_off_from_a_second_to_a_minute() {
        let mut wait = UNRECORDED_FIRST_RETRY;
        let mut seen = vec![wait.as_secs()];
        for _ in 0..8 {
            wait = next_backoff(wait);
            seen.push(wait.as_secs());
        }
        assert_eq!(seen, [1, 2, 4, 8, 16, 32, 60, 60, 60]);
    }
}
