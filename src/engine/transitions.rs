//! Applies the state machine (`domain::machine`) to stored items inside a write: load,
//! step, save. The one path by which the Scheduler's writes, the dispatch path and the
//! settings change an item; what follows a change (event, timer, quota) is recorded by
//! `Tx::save` and takes effect once the write is durable.

use crate::domain::machine::{self, Command, Step};
use crate::domain::{self, Activity, AuthorKind, EventType, Item, ItemId};
use crate::store::Tx;

/// Applies `cmd` to `item` (as just loaded in this write) and stores the result; an
/// item that went out is activity in its ticket, so the ticket's older pending replies
/// get their policy in the same write. Returns the step.
///
/// # Errors
/// The machine's errors (the item is then unchanged and nothing is written), or
/// storage errors.
pub(crate) fn apply(tx: &mut Tx<'_>, item: &mut Item, cmd: Command) -> domain::Result<Step> {
    let step = machine::step(item, cmd, tx.now)?;
    match step {
        Step::Changed(change) => {
            tx.save(item, change)?;
            if change.event == EventType::Sent {
                // Our send is staff activity in the ticket, authored when it was
                // scheduled: the rule runs for the replies written before it.
                let activity = Activity {
                    author_kind: AuthorKind::Staff,
                    message_id: item.public_id(),
                    occurred_at: item.created_at,
                };
                // The item counts among the ticket's live items only if it was live
                // before this step: a late Ack turns a FAILED item (no longer
                // counted once that was durable) into SENT.
                let own = usize::from(change.from.is_live());
                activity_rule(
                    tx,
                    &item.account_id,
                    &item.ticket_id,
                    &activity,
                    Some((item.id, own)),
                )?;
            }
        }
        Step::Unchanged { rearm: Some(at) } => tx.rearm(item.id, at),
        Step::Unchanged { rearm: None } => {}
    }
    Ok(step)
}

/// Leases `item` (as just loaded in this write) for its timer's deadline `due` until
/// `expires`, or applies its lateness policy, saving the change as [`apply`] does.
/// Returns the step; a DISPATCHING one is a lease the caller hands out, after marking
/// it out with [`Tx::leases_out`] (so it then survives a rollback).
///
/// # Errors
/// As [`apply`].
pub(crate) fn lease(
    tx: &mut Tx<'_>,
    item: &mut Item,
    due: crate::domain::Millis,
    expires: crate::domain::Millis,
) -> domain::Result<Step> {
    let step = machine::step(item, Command::Lease { due, expires }, tx.now)?;
    match step {
        Step::Changed(change) if change.event == EventType::Dispatching => {
            // Marked out (Tx::leases_out) by the caller once every lease is recorded.
            tx.save(item, change)?;
        }
        Step::Changed(change) => {
            debug_assert_ne!(change.event, EventType::Sent, "a lease never sends");
            tx.save(item, change)?;
        }
        Step::Unchanged { rearm: Some(at) } => tx.rearm(item.id, at),
        Step::Unchanged { rearm: None } => {}
    }
    Ok(step)
}

/// Applies the activity rule to the ticket's PENDING replies created before the
/// activity; `except` is an item to leave alone (the one being sent) with how many of
/// the ticket's live items it counts as (1 if it was live, 0 if it was not: the
/// ticket filter may then skip the lookup only when nothing at all is live). Returns
/// the items converted or cancelled.
///
/// # Errors
/// Storage errors.
pub(crate) fn activity_rule(
    tx: &mut Tx<'_>,
    account: &str,
    ticket: &str,
    activity: &Activity,
    except: Option<(ItemId, usize)>,
) -> domain::Result<Vec<Item>> {
    let mut affected = Vec::new();
    let (except, own) = match except {
        Some((id, own)) => (Some(id), own),
        None => (None, 0),
    };
    for r in tx.pending_replies(account, ticket, activity.occurred_at, own)? {
        let mut item = match r {
            Ok(item) => item,
            // Fails alone: the rule goes on for the ticket's other replies.
            Err((id, why)) => {
                fail_unreadable(tx, id, &why)?;
                continue;
            }
        };
        if Some(item.id) == except {
            continue;
        }
        if let Step::Changed(_) = apply(tx, &mut item, Command::Activity(activity.clone()))? {
            affected.push(item);
        }
    }
    Ok(affected)
}

/// Fails a live item whose stored row cannot be decoded: FAILED with the reason in
/// last_error and a FAILED event (`Tx::fail_unreadable`), counted in
/// `sendlater_unreadable_items_total`.
///
/// # Errors
/// Storage errors.
pub(crate) fn fail_unreadable(tx: &mut Tx<'_>, id: ItemId, why: &str) -> domain::Result<()> {
    let why = format!("stored item cannot be read: {why}");
    if tx.fail_unreadable(id, &why)? {
        tracing::error!(item = id, reason = %why, "failed an item whose stored row cannot be read");
        tx.count_unreadable();
    }
    Ok(())
}
