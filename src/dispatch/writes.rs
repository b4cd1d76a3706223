//! The dispatch path's writes, each a batch in one store write (group commit): leasing
//! due items, recording acks and nacks, and ending expired leases.
//!
//! Every rule is re-checked against the row inside the transaction: the wheel and the
//! dispatcher's queues are hints, SQLite decides. So a cancelled, rescheduled or already
//! leased item that a stale timer pushed into the queue is simply skipped.

use crate::domain::{
    self, can_transition, retry_backoff_ms, Activity, AuthorKind, EventType, Item, ItemId, OnLate,
    State,
};
use crate::engine::{Engine, Fired};
use rand::RngExt;
use rusqlite::OptionalExtension;

use crate::store::rows::{
    delete_lease, fail_unreadable, get_item_any, get_item_checked, insert_lease, item_from_row,
    update_item, with_lease, ITEM_COLUMNS, LEASE_EXPIRES,
};
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
/// A lease is one row in the small, hot `leases` table plus the DISPATCHING event; the
/// item's own row (a random page of a big table, and three index entries keyed on its
/// state) is not written until the outcome (schema v3). A row that cannot be decoded
/// fails alone (FAILED, with the reason in last_error); the others are leased.
pub fn lease(tx: &mut Tx<'_>, fired: &[Fired], t: Tuning) -> domain::Result<Vec<(Item, u128)>> {
    let mut out = Vec::with_capacity(fired.len());
    let expires = tx.now + t.lease_ms;
    let mut rng = rand::rng();
    for &(id, due) in fired {
        let mut item = match get_item_checked(tx.conn, id)? {
            None => continue,
            Some(Ok(item)) => item,
            Some(Err(why)) => {
                fail_unreadable_item(tx, id, &why)?;
                continue;
            }
        };
        if item.state != State::Pending {
            continue; // leased already, cancelled, sent or converted
        }
        // Due by the deadline its timer fired for (not by a second reading of the
        // clock, which may have stepped back since). Later: it was rescheduled; its
        // timer is set again (the same one its reschedule set) so nothing is stranded.
        if item.next_send_at() > due.max(tx.now) {
            tx.set_timer(id, item.next_send_at());
            continue;
        }
        // Starting later than its lateness allows: its policy applies instead.
        if let Some(late_by) = item.timing.too_late(item.send_at, tx.now) {
            item.timing.late_by = Some(late_by);
            if item.timing.on_late() != OnLate::Send {
                apply_on_late(tx, item)?;
                continue;
            }
            update_item(tx.conn, &item)?;
        }
        insert_lease(tx.conn, id, expires)?;
        // As the item now reads back.
        (item.state, item.attempts) = with_lease(item.state, item.attempts, Some(expires));
        item.lease_expires_at = Some(expires);
        item.updated_at = tx.now;
        tx.event(EventType::Dispatching, &item)?;
        tx.set_timer(id, expires);
        out.push((item, rng.random::<u128>()));
    }
    Ok(out)
}

/// Applies a late item's on_late policy (CONVERT_TO_NOTE or FAIL) instead of sending
/// it: the outcome is an event like any other, with late_by set.
fn apply_on_late(tx: &mut Tx<'_>, mut item: Item) -> domain::Result<()> {
    let late_by = item.timing.late_by.unwrap_or_default();
    item.updated_at = tx.now;
    item.next_attempt_at = None;
    let event = match item.timing.on_late() {
        OnLate::ConvertToNote => {
            item.state = State::ConvertedToNote;
            item.note_at = Some(item.created_at);
            EventType::ConvertedToNote
        }
        OnLate::Fail | OnLate::Send => {
            item.state = State::Failed;
            item.last_error = Some(format!(
                "late by {} s, past its max_lateness of {} s: not sent (on_late FAIL)",
                late_by / 1000,
                item.timing.max_lateness.unwrap_or_default() / 1000
            ));
            EventType::Failed
        }
    };
    update_item(tx.conn, &item)?;
    tx.event(event, &item)?;
    tx.remove_timer(item.id);
    tx.release(&item.account_id);
    Ok(())
}

/// The lateness window of a waiting item ended: if it is still PENDING (not out at a
/// connector) and late, its policy applies; a SEND policy waits on.
fn late(tx: &mut Tx<'_>, id: ItemId) -> domain::Result<()> {
    let Some(mut item) = get_item_any(tx.conn, id)? else {
        return Ok(());
    };
    if item.state != State::Pending || item.next_send_at() > tx.now {
        return Ok(());
    }
    let Some(late_by) = item.timing.too_late(item.send_at, tx.now) else {
        return Ok(());
    };
    if item.timing.on_late() == OnLate::Send {
        return Ok(());
    }
    item.timing.late_by = Some(late_by);
    apply_on_late(tx, item)
}

/// Fails an item whose row cannot be decoded, without decoding it.
fn fail_unreadable_item(tx: &mut Tx<'_>, id: ItemId, why: &str) -> domain::Result<()> {
    let why = format!("stored item cannot be read: {why}");
    tracing::error!(item = id, reason = %why, "failing an item whose stored row cannot be read");
    crate::metrics::METRICS
        .unreadable_items
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    if let Some(account) = fail_unreadable(tx.conn, id, &why, tx.now)? {
        tx.release(&account);
    }
    tx.remove_timer(id);
    Ok(())
}

/// Records outcomes; jitter in [0,1) comes from `jitter`. Any error fails the write
/// (the dispatcher keeps the outcomes and records them again, isolated: see
/// [`record_isolated`]).
pub fn record(
    engine: &Engine,
    tx: &mut Tx<'_>,
    outcomes: &[Outcome],
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<()> {
    for o in outcomes {
        record_one(engine, tx, o, t, jitter)?;
    }
    Ok(())
}

/// Records outcomes each in its own savepoint, after a write of them failed: one that
/// cannot be recorded (its row cannot be decoded) is handled alone and the others are
/// recorded; a storage error that ends the whole transaction still fails the write.
pub fn record_isolated(
    engine: &Engine,
    tx: &mut Tx<'_>,
    outcomes: &[Outcome],
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<()> {
    for o in outcomes {
        tx.conn.prepare_cached("SAVEPOINT o")?.execute([])?;
        match record_one(engine, tx, o, t, jitter) {
            Ok(()) => {
                tx.conn.prepare_cached("RELEASE o")?.execute([])?;
            }
            Err(e) => {
                if tx.conn.is_autocommit() {
                    return Err(e);
                }
                tx.conn.execute_batch("ROLLBACK TO o; RELEASE o")?;
                let id = o.item();
                match get_item_checked(tx.conn, id)? {
                    Some(Err(why)) => fail_unreadable_item(tx, id, &why)?,
                    _ => {
                        tracing::error!(item = id, error = %e, outcome = ?o, "could not record a dispatch outcome; dropped")
                    }
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
    engine: &Engine,
    tx: &mut Tx<'_>,
    o: &Outcome,
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<()> {
    match o {
        Outcome::Ack {
            id,
            provider_message_id,
        } => ack(engine, tx, *id, provider_message_id),
        Outcome::Nack {
            id,
            attempt,
            error,
            permanent,
        } => failed_attempt(tx, *id, *attempt, error, *permanent, t, jitter),
        Outcome::Abandoned {
            id,
            attempt,
            reason,
        } => {
            crate::metrics::METRICS
                .abandoned_leases
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            // Retried at once (on another connector), not after a backoff.
            let at_once = Tuning {
                retry_base_ms: 0,
                ..t
            };
            failed_attempt(tx, *id, *attempt, reason, false, at_once, jitter)
        }
        Outcome::Unsent { id, attempt } => unsent(tx, *id, *attempt),
        Outcome::Unreadable { id, why } => fail_unreadable_item(tx, *id, why),
        Outcome::Late { id } => late(tx, *id),
    }
}

/// Takes back the lease of a job that never reached a stream: the item is PENDING
/// again with its attempts unchanged, due at once.
fn unsent(tx: &mut Tx<'_>, id: ItemId, attempt: u32) -> domain::Result<()> {
    let Some(mut item) = get_item_any(tx.conn, id)? else {
        return Ok(());
    };
    if item.state != State::Dispatching || item.attempts != attempt {
        return Ok(());
    }
    delete_lease(tx.conn, id)?;
    (item.state, item.attempts) = with_lease(State::Pending, attempt - 1, None);
    item.lease_expires_at = None;
    item.updated_at = tx.now;
    tx.event(EventType::Retrying, &item)?;
    tx.set_timer(id, tx.now);
    Ok(())
}

/// Ends attempt `attempt` of a DISPATCHING item that failed (a nack, or a lease that
/// ended unanswered): FAILED when permanent or out of attempts, else PENDING with a
/// backoff. An answer for an attempt that already ended changes nothing.
#[allow(clippy::too_many_arguments)]
fn failed_attempt(
    tx: &mut Tx<'_>,
    id: ItemId,
    attempt: u32,
    error: &str,
    permanent: bool,
    t: Tuning,
    jitter: &mut dyn FnMut() -> f64,
) -> domain::Result<()> {
    let Some(mut item) = get_item_any(tx.conn, id)? else {
        return Ok(());
    };
    if item.state != State::Dispatching || item.attempts != attempt {
        return Ok(());
    }
    delete_lease(tx.conn, id)?;
    item.last_error = Some(error.to_owned());
    item.lease_expires_at = None;
    item.updated_at = tx.now;
    if permanent || item.attempts >= t.max_attempts {
        item.state = State::Failed;
        item.next_attempt_at = None;
        update_item(tx.conn, &item)?;
        tx.event(EventType::Failed, &item)?;
        tx.remove_timer(item.id);
        tx.release(&item.account_id);
    } else {
        let backoff = retry_backoff_ms(item.attempts, t.retry_base_ms, t.retry_cap_ms, jitter());
        item.state = State::Pending;
        item.next_attempt_at = Some(tx.now + backoff);
        update_item(tx.conn, &item)?;
        tx.event(EventType::Retrying, &item)?;
        tx.set_timer(item.id, tx.now + backoff);
    }
    Ok(())
}

/// Records an ack: SENT (also after the lease expired, or after the item was failed:
/// the connector did send it); a duplicate ack changes nothing. Then the ticket's
/// older pending replies get their on_activity policy, in the same transaction.
fn ack(
    engine: &Engine,
    tx: &mut Tx<'_>,
    id: ItemId,
    provider_message_id: &str,
) -> domain::Result<()> {
    let provider = (!provider_message_id.is_empty()).then_some(provider_message_id);
    debug_assert_eq!(
        State::ALL
            .iter()
            .filter(|&&s| can_transition(s, State::Sent))
            .map(|s| s.as_i64())
            .collect::<Vec<_>>(),
        vec![1, 2, 4],
        "the SQL below encodes which states may become SENT"
    );
    // A leased (DISPATCHING) or PENDING item first (the common case, and the only one
    // that frees quota), then a late ack of a FAILED item. One UPDATE ... RETURNING
    // each: no separate read. The attempt that ended is counted into the row.
    // OR FAIL: with RETURNING, an UPDATE that may ABORT opens a statement journal inside
    // the group's savepoint, and releasing it truncates the in-memory sub-journal by
    // walking it from the start: 20% of the writer's CPU in a dispatch profile, drain
    // 5.3k -> 20.8k jobs/s without it (BENCHMARKS.md). The row is one row: FAIL and
    // ABORT leave it the same.
    let leased = delete_lease(tx.conn, id)?;
    // RETURNING reads only the updated table: the (just deleted) lease reads as NULL.
    static COLUMNS: std::sync::LazyLock<String> =
        std::sync::LazyLock::new(|| ITEM_COLUMNS.replace(LEASE_EXPIRES, "NULL"));
    let columns = COLUMNS.as_str();
    let mut sent = None;
    for (state, was_live) in [(State::Pending, true), (State::Failed, false)] {
        let mut st = tx.conn.prepare_cached(&format!(
            "UPDATE OR FAIL items SET state = {sent}, sent_at = ?2, provider_message_id = ?3, \
             attempts = attempts + ?4, next_attempt_at = NULL, next_send_at = send_at, \
             updated_at = ?2 WHERE id = ?1 AND state = ?5 RETURNING {columns}",
            sent = State::Sent.as_i64()
        ))?;
        if let Some(item) = st
            .query_row(
                rusqlite::params![id, tx.now, provider, i64::from(leased), state.as_i64()],
                item_from_row,
            )
            .optional()?
        {
            sent = Some((item, was_live));
            break;
        }
    }
    // Already SENT (a duplicate ack), or cancelled/converted meanwhile: nothing to do.
    let Some((item, was_live)) = sent else {
        return Ok(());
    };
    tx.event(EventType::Sent, &item)?;
    tx.remove_timer(id);
    if was_live {
        tx.release(&item.account_id);
    }
    // Our send is staff activity in the ticket, authored when it was scheduled: the
    // rule runs for the replies written before it.
    let activity = Activity {
        author_kind: AuthorKind::Staff,
        message_id: item.public_id(),
        occurred_at: item.created_at,
    };
    engine.apply_activity_rule(tx, &item.account_id, &item.ticket_id, &activity, Some(id))?;
    Ok(())
}
