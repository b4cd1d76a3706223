//! The dispatch path's writes, each a batch in one store write (group commit): leasing
//! due items, recording acks and nacks, and ending expired leases.
//!
//! Every rule is re-checked against the stored item inside the transaction, by the
//! state machine (`domain::machine`, applied by `engine::transitions`): the wheel and
//! the dispatcher's queues are hints, the store decides. So a cancelled, rescheduled or
//! already leased item that a stale timer pushed into the queue is simply skipped.

use crate::domain::machine::{Command, Retry};
use crate::domain::{self, EventType, Item, ItemId};
use crate::engine::{
    transitions::{self, apply},
    Fired,
};
use rand::RngExt;

use crate::store::Tx;

/// What the dispatcher records about a job.
#[derive(Debug, Clone)]
pub enum Outcome {
    Ack {
        id: ItemId,
        provider_message_id: String,
    },
    Nack {
        id: ItemId,
        attempt: u32,
        error: String,
        permanent: bool,
    },
    /// The lease of this attempt ended without an answer (expired, or the stream
    /// dropped): the attempt counts, the item is retried at once.
    Abandoned {
        id: ItemId,
        attempt: u32,
        reason: &'static str,
    },
    /// The job of this attempt was never written to a stream: not an attempt; the
    /// lease is taken back and the item is due again at once.
    Unsent { id: ItemId, attempt: u32 },
    /// The item's stored row cannot be decoded: it fails with `why`, alone.
    Unreadable { id: ItemId, why: String },
    /// The item's lateness window ended while it waited (for a connector, a pause, a
    /// rate limit): its on_late policy applies, if it is still waiting and late.
    Late { id: ItemId },
}

/// Tuning the writes need, copied out of the config.
#[derive(Debug, Clone, Copy)]
pub struct Tuning {
    pub lease_ms: i64,
    pub retry_base_ms: i64,
    pub retry_cap_ms: i64,
    pub max_attempts: u32,
}

/// What [`lease`] did with the fired items.
#[derive(Debug, Default)]
pub struct Leased {
    /// Each leased item with its lease token (the secret part of its job id): its job
    /// may leave once the write has run (the lease outlives a rollback, see
    /// `Tx::leases_out`).
    pub jobs: Vec<(Item, u128)>,
    /// Fired items that a write earlier in the open group changed: not leased now (a
    /// job would carry a change that may not commit); due again once this write is done.
    pub deferred: Vec<Fired>,
}

/// Leases the given fired items (PENDING, and due by the deadline their timer fired
/// for): DISPATCHING, attempt + 1, lease timer.
///
/// A row that cannot be decoded fails alone (FAILED, with the reason in last_error);
/// the others are leased. An item whose lateness window has passed gets its on_late
/// policy instead.
pub fn lease(tx: &mut Tx<'_>, fired: &[Fired], t: Tuning) -> domain::Result<Leased> {
    let mut out = Leased {
        jobs: Vec::with_capacity(fired.len()),
        deferred: Vec::new(),
    };
    let expires = tx.now + t.lease_ms;
    let mut rng = rand::rng();
    let mut leases = Vec::new();
    for &(id, due) in fired {
        if tx.changed_in_group(id) {
            out.deferred.push((id, due));
            continue;
        }
        let mut item = match tx.load_checked(id)? {
            None => continue,
            Some(Ok(item)) => item,
            Some(Err(why)) => {
                fail_unreadable_item(tx, id, &why)?;
                continue;
            }
        };
        let step = transitions::lease(tx, &mut item, due, expires)?;
        if let Some(change) = step.change().filter(|c| c.event == EventType::Dispatching) {
            leases.push((item.clone(), change));
            out.jobs.push((item, rng.random::<u128>()));
        }
    }
    // Every lease is recorded: their jobs leave once this returns, so from now on a
    // rollback gives the leases back as claims (a failure above rolled them back).
    tx.leases_out(leases);
    Ok(out)
}

/// Fails an item whose row cannot be decoded (see `transitions::fail_unreadable`).
fn fail_unreadable_item(tx: &mut Tx<'_>, id: ItemId, why: &str) -> domain::Result<()> {
    transitions::fail_unreadable(tx, id, why)
}

/// Records outcomes; jitter in [0,1) comes from `jitter`. Any error fails the write
/// (the dispatcher keeps the outcomes and records them again, isolated: see
/// [`record_isolated`]).
pub fn record(
    tx: &mut Tx<'_>,
    outcomes: &[Outcome],
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<()> {
    for o in outcomes {
        record_one(tx, o, t, jitter)?;
    }
    Ok(())
}

/// Records outcomes each in its own savepoint, after a write of them failed: one that
/// cannot be recorded because its row cannot be decoded fails its item alone; one that
/// cannot be recorded for another reason is returned, to be recorded by a later write
/// (an answer is never dropped); the others are recorded. A storage error that ends
/// the whole transaction still fails the write.
pub fn record_isolated(
    tx: &mut Tx<'_>,
    outcomes: &[Outcome],
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<Vec<Outcome>> {
    let mut kept = Vec::new();
    for o in outcomes {
        if let Err(e) = tx.isolated(|tx| record_one(tx, o, t, jitter))? {
            let id = o.item();
            match tx.load_checked(id)? {
                Some(Err(why)) => fail_unreadable_item(tx, id, &why)?,
                _ => {
                    tracing::error!(item = id, error = %e, outcome = ?o, "could not record a dispatch outcome; kept for a later write");
                    kept.push(o.clone());
                }
            }
        }
    }
    Ok(kept)
}

impl Outcome {
    pub(crate) fn item(&self) -> ItemId {
        match self {
            Outcome::Ack { id, .. }
            | Outcome::Nack { id, .. }
            | Outcome::Abandoned { id, .. }
            | Outcome::Unsent { id, .. }
            | Outcome::Unreadable { id, .. }
            | Outcome::Late { id } => *id,
        }
    }
}

fn record_one(
    tx: &mut Tx<'_>,
    o: &Outcome,
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<()> {
    let mut retry = |base_ms| Retry {
        max_attempts: t.max_attempts,
        base_ms,
        cap_ms: t.retry_cap_ms,
        jitter: jitter(),
    };
    let (id, cmd) = match o {
        Outcome::Ack {
            id,
            provider_message_id,
        } => (
            *id,
            Command::Ack {
                provider_message_id: Some(provider_message_id.clone()),
            },
        ),
        Outcome::Nack {
            id,
            attempt,
            error,
            permanent,
        } => (
            *id,
            Command::AttemptFailed {
                attempt: *attempt,
                error: error.clone(),
                permanent: *permanent,
                retry: retry(t.retry_base_ms),
            },
        ),
        Outcome::Abandoned {
            id,
            attempt,
            reason,
        } => {
            tx.count_abandoned();
            // Retried at once (on another connector), not after a backoff.
            (
                *id,
                Command::AttemptFailed {
                    attempt: *attempt,
                    error: (*reason).to_owned(),
                    permanent: false,
                    retry: retry(0),
                },
            )
        }
        Outcome::Unsent { id, attempt } => (*id, Command::Unsent { attempt: *attempt }),
        Outcome::Unreadable { id, why } => return fail_unreadable_item(tx, *id, why),
        Outcome::Late { id } => (*id, Command::Late),
    };
    let Some(mut item) = tx.load_checked(id)?.transpose().map_err(|why| {
        domain::Error::Internal(format!("stored item {id} cannot be read: {why}"))
    })?
    else {
        return Ok(());
    };
    apply(tx, &mut item, cmd)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::machine::{self, Step};
    use crate::domain::{ChatContent, Content, Error, State};
    use crate::store::test_support::{store_with_item, stored};

    const T: Tuning = Tuning {
        lease_ms: 30_000,
        retry_base_ms: 1_000,
        retry_cap_ms: 60_000,
        max_attempts: 3,
    };

    /// A lease taken in a write that then fails is not rolled back with it: its job
    /// has left (on main the item was PENDING again, so a cancel answered OK while a
    /// connector sent it, and it was leased a second time).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_outlives_the_rollback_of_the_write_that_took_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_item(&dir).await;
        let r = store
            .write(move |tx| {
                let leased = lease(tx, &[(id, 1)], T)?;
                assert_eq!(leased.jobs.len(), 1, "{leased:?}");
                Err::<(), _>(Error::Internal("recording the answers failed".into()))
            })
            .await;
        assert!(r.is_err());
        let now = stored(&store, id).await;
        assert_eq!((now.state, now.attempts), (State::Dispatching, 1));
    }

    /// a lease write whose closure fails *before* its jobs were handed out (the
    /// dispatcher's `writes::lease(tx, ..)?` returns before `executed_tx.send`) must not
    /// leave the leases taken: no job left. Here the second item's DISPATCHING event
    /// cannot be appended, so `lease` returns Err after leasing the first.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_lease_whose_job_never_left_is_not_given_back_as_a_claim() {
        let dir = tempfile::tempdir().unwrap();
        let (store, a) = store_with_item(&dir).await;
        let new = crate::store::test_support::new_chat();
        let b = store
            .write(move |tx| tx.insert(&new, 1, &Default::default()))
            .await
            .unwrap();
        crate::store::test_support::refuse_events_of(&store, b).await;
        // What write_round's closure does: `let leased = writes::lease(tx, &due, t)?;`
        // and only then `executed_tx.send(leased)` (the jobs leave).
        let mut handed_out = 0;
        let r = store
            .write(move |tx| lease(tx, &[(a, 1), (b, 1)], T).map(|l| l.jobs.len()))
            .await;
        if let Ok(n) = &r {
            handed_out = *n;
        }
        assert!(r.is_err(), "the lease write failed: {r:?}");
        assert_eq!(handed_out, 0, "no job left");
        crate::store::test_support::allow_events(&store).await;
        let now = stored(&store, a).await;
        assert_eq!(
            (now.state, now.attempts),
            (State::Pending, 0),
            "item {a} is DISPATCHING with no job out (stranded until its lease expires, then an attempt is counted)"
        );
    }

    /// A job never carries a change that may not commit: an item an earlier write of
    /// the open group changed (here an edit of its text) is not leased in this group.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn an_item_changed_earlier_in_the_open_group_is_not_leased_in_it() {
        let dir = tempfile::tempdir().unwrap();
        let (store, id) = store_with_item(&dir).await;
        let leased = store
            .write(move |tx| {
                let mut item = tx.load("a", id)?.expect("exists");
                let edit = Command::Edit {
                    send_at: None,
                    content: Some(Content::Chat(ChatContent {
                        text: "edited, not committed yet".into(),
                        ..Default::default()
                    })),
                    on_activity: None,
                };
                let Step::Changed(change) = machine::step(&mut item, edit, tx.now)? else {
                    panic!("edited")
                };
                tx.save(&item, change)?;
                lease(tx, &[(id, 1)], T)
            })
            .await
            .unwrap();
        assert!(leased.jobs.is_empty(), "{leased:?}");
        assert_eq!(leased.deferred, vec![(id, 1)]);
        // Once that group is done, the item is leased with the committed text.
        let leased = store
            .write(move |tx| lease(tx, &[(id, 1)], T))
            .await
            .unwrap();
        assert_eq!(leased.jobs.len(), 1);
        let Content::Chat(c) = &leased.jobs[0].0.content else {
            panic!("chat")
        };
        assert_eq!(c.text, "edited, not committed yet");
    }
}
