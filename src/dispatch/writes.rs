//! The dispatch path's writes, each a batch in one store write (group commit): leasing
//! due items, recording acks and nacks, and ending expired leases.
//!
//! Every rule is re-checked against the stored item inside the transaction, by the
//! state machine (`domain::machine`, applied by `engine::transitions`): the wheel and
//! the dispatcher's queues are hints, the store decides. So a cancelled, rescheduled or
//! already leased item that a stale timer pushed into the queue is simply skipped.

use crate::domain::machine::{Command, Retry};
use crate::domain::{self, EventType, Item, ItemId};
use crate::engine::{transitions::apply, Fired};
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

/// Leases the given fired items (PENDING, and due by the deadline their timer fired
/// for): DISPATCHING, attempt + 1, lease timer. Returns each leased item with its
/// lease token (the secret part of its job id).
///
/// A row that cannot be decoded fails alone (FAILED, with the reason in last_error);
/// the others are leased. An item whose lateness window has passed gets its on_late
/// policy instead.
pub fn lease(tx: &mut Tx<'_>, fired: &[Fired], t: Tuning) -> domain::Result<Vec<(Item, u128)>> {
    let mut out = Vec::with_capacity(fired.len());
    let expires = tx.now + t.lease_ms;
    let mut rng = rand::rng();
    for &(id, due) in fired {
        let mut item = match tx.load_checked(id)? {
            None => continue,
            Some(Ok(item)) => item,
            Some(Err(why)) => {
                fail_unreadable_item(tx, id, &why)?;
                continue;
            }
        };
        let step = apply(tx, &mut item, Command::Lease { due, expires })?;
        if step
            .change()
            .is_some_and(|c| c.event == EventType::Dispatching)
        {
            out.push((item, rng.random::<u128>()));
        }
    }
    Ok(out)
}

/// Fails an item whose row cannot be decoded, without decoding it.
fn fail_unreadable_item(tx: &mut Tx<'_>, id: ItemId, why: &str) -> domain::Result<()> {
    let why = format!("stored item cannot be read: {why}");
    tracing::error!(item = id, reason = %why, "failing an item whose stored row cannot be read");
    crate::metrics::METRICS.unreadable_items.inc();
    tx.fail_unreadable(id, &why)
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
/// cannot be recorded (its row cannot be decoded) is handled alone and the others are
/// recorded; a storage error that ends the whole transaction still fails the write.
pub fn record_isolated(
    tx: &mut Tx<'_>,
    outcomes: &[Outcome],
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<()> {
    for o in outcomes {
        if let Err(e) = tx.isolated(|tx| record_one(tx, o, t, jitter))? {
            let id = o.item();
            match tx.load_checked(id)? {
                Some(Err(why)) => fail_unreadable_item(tx, id, &why)?,
                _ => {
                    tracing::error!(item = id, error = %e, outcome = ?o, "could not record a dispatch outcome; dropped")
                }
            }
        }
    }
    Ok(())
}

impl Outcome {
    fn item(&self) -> ItemId {
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
            crate::metrics::METRICS.abandoned_leases.inc();
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
