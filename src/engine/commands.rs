//! The Scheduler's writes: each is one closure run by the store's writer inside the
//! group transaction, re-reading the row it changes, applying a domain rule, writing
//! the row and its event, and recording the timer change for after the commit.

use super::transitions::{activity_rule, apply};
use super::Engine;
use crate::domain::machine::{self, Command, SendTime};
use crate::domain::{
    self, validate_content, validate_new, validate_send_at, Activity, Content, DeliveryWindow,
    Error, Item, ItemId, LocalTime, Millis, NewItem, OnActivity, Timing,
};
use crate::store::Tx;

/// A Reschedule request: each part optional.
#[derive(Debug, Clone, Default)]
pub struct Changes {
    pub send_at: Option<Millis>,
    /// The new send time was given as this local time (`send_at` is its instant).
    pub send_at_local: Option<LocalTime>,
    pub content: Option<Content>,
    pub on_activity: Option<OnActivity>,
}

fn not_found(id: ItemId) -> Error {
    Error::NotFound(format!("item {} not found", domain::format_item_id(id)))
}

fn load(tx: &mut Tx<'_>, account: &str, id: ItemId) -> domain::Result<Item> {
    tx.load(account, id)?.ok_or_else(|| not_found(id))
}

/// Loads the account's item `id`, applies `cmd` and stores the result.
fn change(tx: &mut Tx<'_>, account: &str, id: ItemId, cmd: Command) -> domain::Result<Item> {
    let mut item = load(tx, account, id)?;
    apply(tx, &mut item, cmd)?;
    Ok(item)
}

/// The send time of an item asked for at `requested` with `timing`: moved to the next
/// opening of the account's business hours when its window says so.
///
/// # Errors
/// `FailedPrecondition` when the window is BUSINESS_HOURS and the account has none set
/// (or they never open).
pub(crate) fn window_send_at(
    tx: &Tx<'_>,
    account: &str,
    requested: Millis,
    timing: &Timing,
    limits: &crate::config::Limits,
) -> domain::Result<Millis> {
    if timing.window() != DeliveryWindow::BusinessHours {
        return Ok(requested);
    }
    let hours = tx.business_hours(account)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "delivery_window: account {account:?} has no business hours; set them with \
             SetBusinessHours first"
        ))
    })?;
    // Bounded by the horizon: hours that stay closed (holidays) past it refuse the item
    // rather than schedule it years ahead.
    let until = requested.saturating_add(limits.max_horizon_ms());
    hours.next_opening_until(requested, until).ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "delivery_window: the business hours of account {account:?} do not open within \
             the horizon ({} days) of the requested time",
            limits.max_horizon_days
        ))
    })
}

impl Engine {
    /// Creates one item (ScheduleMessage / ScheduleTicket).
    ///
    /// # Errors
    /// Validation (`InvalidArgument`), `AlreadyExists` for a reused request_id with other
    /// content, `ResourceExhausted` over the account's pending quota.
    pub async fn schedule(&self, new: NewItem) -> domain::Result<Item> {
        let me = self.clone();
        self.inner
            .store
            .write(move |tx| me.insert_one(tx, &new))
            .await
            .inspect(|_| {
                self.metrics().schedules.inc();
            })
    }

    /// Creates up to `max_batch_entries` items, all or nothing.
    ///
    /// # Errors
    /// As [`Engine::schedule`], with the field path prefixed by `entries[i].`; any
    /// error commits nothing.
    pub async fn schedule_batch(&self, batch: Vec<NewItem>) -> domain::Result<Vec<Item>> {
        let max = self.inner.limits.max_batch_entries;
        if batch.is_empty() {
            return Err(Error::invalid("entries", "must hold at least one entry"));
        }
        if batch.len() > max {
            return Err(Error::invalid(
                "entries",
                format!("has {} entries, at most {max} allowed", batch.len()),
            ));
        }
        let now = self.inner.clock.now_ms();
        for (i, n) in batch.iter().enumerate() {
            validate_new(n, now, &self.inner.limits)
                .map_err(|e| e.in_field(&format!("entries[{i}].")))?;
        }
        let me = self.clone();
        self.inner
            .store
            .write(move |tx| {
                // An error rolls the savepoint back, and the store gives back the
                // quota slots the entries before it reserved.
                batch
                    .iter()
                    .enumerate()
                    .map(|(i, n)| {
                        me.insert_one(tx, n)
                            .map_err(|e| e.in_field(&format!("entries[{i}].")))
                    })
                    .collect::<domain::Result<Vec<Item>>>()
            })
            .await
            .inspect(|items| {
                self.metrics().schedules.inc_by(items.len() as u64);
            })
    }

    /// Inserts (or finds by request_id) one item inside a write.
    ///
    /// The idempotency lookup comes before validation: a client retrying a request that
    /// succeeded must get its item back even when, by now, its send_at lies in the past.
    fn insert_one(&self, tx: &mut Tx<'_>, new: &NewItem) -> domain::Result<Item> {
        if let Some(rid) = &new.request_id {
            if let Some((existing, fp)) = tx.find_by_request(&new.account_id, rid)? {
                return if fp == new.fingerprint() {
                    Ok(existing)
                } else {
                    Err(Error::AlreadyExists(format!(
                        "request_id: {rid:?} was already used for a different request ({})",
                        existing.public_id()
                    )))
                };
            }
        }
        validate_new(new, tx.now, &self.inner.limits)?;
        let max = self.inner.limits.max_pending_per_account;
        let live = self.inner.live.get(&new.account_id);
        if live >= max {
            return Err(Error::ResourceExhausted(format!(
                "account_id: account {:?} has {live} pending items, the quota is {max}",
                new.account_id
            )));
        }
        let send_at = window_send_at(
            tx,
            &new.account_id,
            new.send_at,
            &new.timing,
            &self.inner.limits,
        )?;
        // Counted now, so that the other writes of this group see it; given back by
        // the store if this write does not commit.
        self.inner.live.add(&new.account_id, 1);
        let (mut item, change) = machine::schedule(new.clone(), 0, send_at, tx.now);
        item.id = tx.insert(new, send_at, &item.timing)?;
        tx.save_new(&item, change)?;
        Ok(item)
    }

    /// SendNow: a PENDING item becomes due at the moment of the call.
    ///
    /// # Errors
    /// `NotFound`, or `FailedPrecondition` unless PENDING.
    pub async fn send_now(&self, account: String, id: ItemId) -> domain::Result<Item> {
        self.inner
            .store
            .write(move |tx| change(tx, &account, id, Command::SendNow))
            .await
    }

    /// Cancel: PENDING -> CANCELLED; OK again on CANCELLED.
    ///
    /// # Errors
    /// `NotFound`, or `FailedPrecondition` for DISPATCHING, SENT, FAILED, notes.
    pub async fn cancel(&self, account: String, id: ItemId) -> domain::Result<Item> {
        self.inner
            .store
            .write(move |tx| change(tx, &account, id, Command::Cancel))
            .await
    }

    /// Reschedule: a new send time, content and/or policy for a PENDING item.
    ///
    /// # Errors
    /// Validation of the new parts, `NotFound`, `FailedPrecondition` unless PENDING.
    pub async fn reschedule(
        &self,
        account: String,
        id: ItemId,
        changes: Changes,
    ) -> domain::Result<Item> {
        let now = self.inner.clock.now_ms();
        if let Some(at) = changes.send_at {
            validate_send_at(at, now, &self.inner.limits)?;
        }
        if let Some(c) = &changes.content {
            validate_content(c, &self.inner.limits)?;
        }
        let limits = self.inner.limits.clone();
        self.inner
            .store
            .write(move |tx| {
                let mut item = load(tx, &account, id)?;
                let send_at = match changes.send_at {
                    Some(at) if item.state == domain::State::Pending => Some(SendTime {
                        requested: at,
                        // The window applies again, from the new requested time.
                        at: window_send_at(tx, &item.account_id, at, &item.timing, &limits)?,
                        local: changes.send_at_local,
                    }),
                    Some(at) => Some(SendTime {
                        requested: at,
                        at,
                        local: changes.send_at_local,
                    }),
                    None => None,
                };
                let cmd = Command::Edit {
                    send_at,
                    content: changes.content,
                    on_activity: changes.on_activity,
                };
                apply(tx, &mut item, cmd)?;
                Ok(item)
            })
            .await
    }

    /// RecordTicketActivity: applies each PENDING reply's on_activity policy; returns the
    /// items converted or cancelled.
    ///
    /// # Errors
    /// Validation of ids.
    pub async fn record_activity(
        &self,
        account: String,
        ticket: String,
        activity: Activity,
    ) -> domain::Result<Vec<Item>> {
        domain::validate_id("account_id", &account)?;
        domain::validate_id("ticket_id", &ticket)?;
        domain::validate_id("message_id", &activity.message_id)?;
        self.inner
            .store
            .write(move |tx| {
                // One of our own sends, reported back by the backend: the rule already
                // ran when the connector acknowledged it.
                if tx.is_own_message(&account, &ticket, &activity.message_id)? {
                    return Ok(Vec::new());
                }
                activity_rule(tx, &account, &ticket, &activity, None)
            })
            .await
    }
}
