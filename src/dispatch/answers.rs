//! Answers: what connectors say about their jobs (Ack, Nack), streams that leave, and
//! leases that end unanswered. An answer counts only for the job its stream holds
//! (same attempt, same secret lease token); what it settles is queued as an
//! [`Outcome`] for the next dispatch write (`pipeline`).

use super::actor::Actor;
use super::conn::Held;
use super::meta::Meta;
use super::writes::Outcome;
use super::{Answer, JobKey};
use crate::domain::{ItemId, Millis};

impl Actor {
    /// An answer counts only for a job its stream holds right now: this connection,
    /// this item, this attempt, this lease token. Anything else is ignored.
    pub(super) fn on_answer(&mut self, conn: u64, job: JobKey, answer: Answer) {
        let held = self
            .connectors
            .get(&conn)
            .and_then(|c| c.held.get(&job.item))
            .copied();
        let Some(held) = held.filter(|h| is_for(h, &job)) else {
            self.engine.metrics().ignored_answers.inc();
            tracing::debug!(
                conn,
                item = job.item,
                attempt = job.attempt,
                "ignored an answer for a job this stream does not hold"
            );
            return;
        };
        if let Some(c) = self.connectors.get_mut(&conn) {
            c.take(job.item);
        }
        match answer {
            Answer::Ack { .. } => self.engine.metrics().acks.inc(),
            Answer::Nack { .. } => self.engine.metrics().nacks.inc(),
        };
        let (ends_lease, outcome) = settle(held, &job, answer);
        if ends_lease {
            self.inflight.remove(&job.item);
        }
        self.outcomes.extend(outcome);
        self.kick_if_stalled(conn);
    }

    pub(super) fn on_gone(&mut self, conn: u64) {
        let Some(c) = self.connectors.remove(&conn) else {
            return;
        };
        tracing::info!(conn, connector_id = %c.connector_id, in_flight = c.in_flight(), "connector disconnected");
        for (id, h) in c.held {
            if !h.expired {
                self.inflight.remove(&id);
                self.outcomes.push(Outcome::Abandoned {
                    id,
                    attempt: h.attempt,
                    reason: "connector disconnected before answering",
                });
            }
        }
    }

    /// Ends the stream of a stalled connector once it holds no unexpired job.
    pub(super) fn kick_if_stalled(&mut self, conn: u64) {
        let Some(c) = self.connectors.get(&conn) else {
            return;
        };
        if c.stalled && c.in_flight() == 0 {
            tracing::warn!(conn, connector_id = %c.connector_id, "ending the stream of a connector whose lease expired unanswered");
            self.engine.metrics().stalled_connectors.inc();
            c.kick.cancel();
            self.connectors.remove(&conn);
        }
    }

    /// A lease timer fired (or a leased item was found after a restart): if the lease
    /// ended by the deadline the timer fired for, the attempt ends and the item goes
    /// back in line; the stream that held it gets no more jobs.
    pub(super) fn on_lease_timer(&mut self, m: &Meta) {
        let holder = self.inflight.get(&m.id).copied();
        let Some(reason) = lease_ended(holder.is_some(), m.lease_expires_at, m.due) else {
            return; // a stale timer of an earlier lease; this lease has its own timer
        };
        if let Some(conn) = holder {
            self.inflight.remove(&m.id);
            if let Some(c) = self.connectors.get_mut(&conn) {
                c.expire(m.id);
                c.stalled = true;
            }
            self.kick_if_stalled(conn);
        }
        self.outcomes.push(Outcome::Abandoned {
            id: m.id,
            attempt: m.attempts,
            reason,
        });
    }

    /// The item left the dispatching states: no stream holds a live lease of it.
    pub(super) fn forget(&mut self, id: ItemId) {
        if let Some(conn) = self.inflight.remove(&id) {
            if let Some(c) = self.connectors.get_mut(&conn) {
                c.expire(id);
            }
            self.kick_if_stalled(conn);
        }
    }
}

/// Whether an answer is for the job the stream holds: the same attempt and the same
/// lease token (the item is the key it was found under).
pub(super) fn is_for(held: &Held, job: &JobKey) -> bool {
    held.attempt == job.attempt && held.token == job.token
}

/// What an answer to a held job settles: whether it ends the stream's live lease (it
/// had not expired), and what to record. An Ack is recorded even after the lease
/// expired (the connector did send it); a Nack after that says nothing new (that
/// attempt already ended).
pub(super) fn settle(held: Held, job: &JobKey, answer: Answer) -> (bool, Option<Outcome>) {
    let live = !held.expired;
    match answer {
        Answer::Ack {
            provider_message_id,
        } => (
            live,
            Some(Outcome::Ack {
                id: job.item,
                provider_message_id,
            }),
        ),
        Answer::Nack { error, permanent } => (
            live,
            live.then_some(Outcome::Nack {
                id: job.item,
                attempt: job.attempt,
                error,
                permanent,
            }),
        ),
    }
}

/// Why a lease timer that fired for `due` ends the attempt, or `None` for a stale timer
/// of an earlier lease (a stream holds the item and its lease runs past `due`). An item
/// leased and held by no stream (after a restart) always ends its attempt.
pub(super) fn lease_ended(
    held: bool,
    lease_expires_at: Option<Millis>,
    due: Millis,
) -> Option<&'static str> {
    let expired = lease_expires_at.is_none_or(|t| t <= due);
    match (held, expired) {
        (true, false) => None,
        (true, true) => Some("lease expired without an answer"),
        (false, _) => Some("lease lost in a restart"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ITEM: ItemId = 42;

    fn held(attempt: u32, token: u128, expired: bool) -> Held {
        Held {
            attempt,
            token,
            expired,
        }
    }

    fn key(attempt: u32, token: u128) -> JobKey {
        JobKey {
            item: ITEM,
            attempt,
            token,
        }
    }

    fn ack() -> Answer {
        Answer::Ack {
            provider_message_id: "m-1".into(),
        }
    }

    fn nack() -> Answer {
        Answer::Nack {
            error: "mailbox full".into(),
            permanent: false,
        }
    }

    #[test]
    fn an_answer_counts_only_for_the_attempt_and_token_the_stream_holds() {
        let h = held(3, 7, false);
        assert!(is_for(&h, &key(3, 7)));
        assert!(!is_for(&h, &key(2, 7)), "an earlier attempt");
        assert!(!is_for(&h, &key(3, 8)), "a guessed token");
    }

    #[test]
    fn an_ack_is_recorded_even_after_the_lease_expired_but_ends_only_a_live_lease() {
        let (ends, outcome) = settle(held(1, 7, false), &key(1, 7), ack());
        assert!(ends);
        assert!(matches!(
            outcome,
            Some(Outcome::Ack { id: ITEM, ref provider_message_id }) if provider_message_id == "m-1"
        ));
        let (ends, outcome) = settle(held(1, 7, true), &key(1, 7), ack());
        assert!(!ends, "the expired lease was already ended");
        assert!(matches!(outcome, Some(Outcome::Ack { id: ITEM, .. })));
    }

    #[test]
    fn a_nack_after_the_lease_expired_records_nothing() {
        let (ends, outcome) = settle(held(2, 7, false), &key(2, 7), nack());
        assert!(ends);
        assert!(matches!(
            outcome,
            Some(Outcome::Nack { id: ITEM, attempt: 2, permanent: false, ref error }) if error == "mailbox full"
        ));
        let (ends, outcome) = settle(held(2, 7, true), &key(2, 7), nack());
        assert!(!ends);
        assert!(outcome.is_none());
    }

    #[test]
    fn a_lease_timer_ends_the_attempt_only_when_the_lease_ended_by_its_deadline() {
        // Held, lease running past the deadline the timer fired for: a stale timer.
        assert_eq!(lease_ended(true, Some(2_000), 1_000), None);
        // Held, lease ended at or before it: expired unanswered.
        assert_eq!(
            lease_ended(true, Some(1_000), 1_000),
            Some("lease expired without an answer")
        );
        assert_eq!(
            lease_ended(true, None, 1_000),
            Some("lease expired without an answer")
        );
        // Held by no stream (a restart): the attempt ends whatever the lease says.
        assert_eq!(
            lease_ended(false, Some(2_000), 1_000),
            Some("lease lost in a restart")
        );
    }
}
