//! The Scheduler's writes: each is one closure run by the store's writer inside the
//! group transaction, re-reading the row it changes, applying a domain rule, writing
//! the row and its event, and recording the timer change for after the commit.

use rusqlite::params;

use super::Engine;
use crate::domain::{
    self, activity_effect, apply_activity, cancel, require_pending, validate_content, validate_new,
    validate_send_at, Activity, CancelOutcome, Content, DeliveryWindow, Error, EventType, Item,
    ItemId, Kind, LocalTime, Millis, NewItem, OnActivity, State, Timing,
};
use crate::store::rows::{
    find_by_request, get_business_hours, get_item, insert_item, item_from_row, update_item,
    ITEM_COLUMNS,
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

fn load(tx: &Tx<'_>, account: &str, id: ItemId) -> domain::Result<Item> {
    get_item(tx.conn, account, id)?.ok_or_else(|| not_found(id))
}

/// The send time of an item asked for at `requested` with `timing`: moved to the next
/// opening of the account's business hours when its window says so.
///
/// # Errors
/// `FailedPrecondition` when the window is BUSINESS_HOURS and the account has none set
/// (or they never open).
pub(crate) fn window_send_at(
    conn: &rusqlite::Connection,
    account: &str,
    requested: Millis,
    timing: &Timing,
) -> domain::Result<Millis> {
    if timing.window() != DeliveryWindow::BusinessHours {
        return Ok(requested);
    }
    let hours = get_business_hours(conn, account)?.ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "delivery_window: account {account:?} has no business hours; set them with \
             SetBusinessHours first"
        ))
    })?;
    hours.next_opening(requested).ok_or_else(|| {
        Error::FailedPrecondition(format!(
            "delivery_window: the business hours of account {account:?} never open"
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
                crate::metrics::METRICS
                    .schedules
                    .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
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
                crate::metrics::METRICS
                    .schedules
                    .fetch_add(items.len() as u64, std::sync::atomic::Ordering::Relaxed);
            })
    }

    /// Inserts (or finds by request_id) one item inside a write.
    ///
    /// The idempotency lookup comes before validation: a client retrying a request that
    /// succeeded must get its item back even when, by now, its send_at lies in the past.
    fn insert_one(&self, tx: &mut Tx<'_>, new: &NewItem) -> domain::Result<Item> {
        if let Some(rid) = &new.request_id {
            if let Some((existing, fp)) = find_by_request(tx.conn, &new.account_id, rid)? {
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
        let mut timing = new.timing.clone();
        let send_at = window_send_at(tx.conn, &new.account_id, new.send_at, &timing)?;
        if timing.window() == DeliveryWindow::BusinessHours {
            timing.requested_send_at = Some(new.send_at);
        }
        let id = insert_item(tx.conn, new, send_at, &timing, tx.now)?;
        let mut item = new.clone().into_pending(id, tx.now);
        item.send_at = send_at;
        item.timing = timing;
        tx.event(EventType::Scheduled, &item)?;
        tx.set_timer(id, item.send_at);
        // Counted now, so that the other writes of this group see it; handed back by
        // the store if this write does not commit.
        self.inner.live.add(&item.account_id, 1);
        tx.reserved(&item.account_id);
        Ok(item)
    }

    /// SendNow: a PENDING item becomes due at the moment of the call.
    ///
    /// # Errors
    /// `NotFound`, or `FailedPrecondition` unless PENDING.
    pub async fn send_now(&self, account: String, id: ItemId) -> domain::Result<Item> {
        self.inner
            .store
            .write(move |tx| {
                let mut item = load(tx, &account, id)?;
                require_pending(&item, "send now")?;
                item.send_at = tx.now;
                item.next_attempt_at = None;
                item.updated_at = tx.now;
                update_item(tx.conn, &item)?;
                tx.event(EventType::Updated, &item)?;
                tx.set_timer(id, item.send_at);
                Ok(item)
            })
            .await
    }

    /// Cancel: PENDING -> CANCELLED; OK again on CANCELLED.
    ///
    /// # Errors
    /// `NotFound`, or `FailedPrecondition` for DISPATCHING, SENT, FAILED, notes.
    pub async fn cancel(&self, account: String, id: ItemId) -> domain::Result<Item> {
        self.inner
            .store
            .write(move |tx| {
                let mut item = load(tx, &account, id)?;
                if cancel(&item)? == CancelOutcome::AlreadyCancelled {
                    return Ok(item);
                }
                item.state = State::Cancelled;
                item.next_attempt_at = None;
                item.updated_at = tx.now;
                update_item(tx.conn, &item)?;
                tx.event(EventType::Cancelled, &item)?;
                tx.remove_timer(id);
                tx.release(&item.account_id);
                Ok(item)
            })
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
        self.inner
            .store
            .write(move |tx| {
                let mut item = load(tx, &account, id)?;
                require_pending(&item, "reschedule")?;
                if let Some(c) = changes.content {
                    if c.channel() != item.channel {
                        let field = match c.channel() {
                            domain::Channel::Email => "email",
                            domain::Channel::Chat => "chat",
                        };
                        return Err(Error::invalid(
                            field,
                            format!("the item goes out by {}", item.channel),
                        ));
                    }
                    item.content = c;
                }
                if let Some(at) = changes.send_at {
                    // The window applies again, from the new requested time.
                    item.timing.send_at_local = changes.send_at_local;
                    item.send_at = window_send_at(tx.conn, &item.account_id, at, &item.timing)?;
                    if item.timing.window() == DeliveryWindow::BusinessHours {
                        item.timing.requested_send_at = Some(at);
                    }
                    // A new send time replaces a pending retry time.
                    item.next_attempt_at = None;
                }
                if let Some(p) = changes.on_activity {
                    item.on_activity = p;
                }
                item.updated_at = tx.now;
                update_item(tx.conn, &item)?;
                tx.event(EventType::Updated, &item)?;
                tx.set_timer(id, item.next_send_at());
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
        let me = self.clone();
        self.inner
            .store
            .write(move |tx| {
                // One of our own sends, reported back by the backend: the rule already
                // ran when the connector acknowledged it.
                let ours: bool = tx
                    .conn
                    .prepare_cached(
                        "SELECT EXISTS (SELECT 1 FROM items INDEXED BY items_by_ticket \
                         WHERE account_id = ?1 AND ticket_id = ?2 \
                         AND (id = ?3 OR provider_message_id = ?4))",
                    )?
                    .query_row(
                        params![
                            account,
                            ticket,
                            domain::parse_item_id(&activity.message_id).unwrap_or(-1),
                            activity.message_id
                        ],
                        |r| r.get(0),
                    )?;
                if ours {
                    return Ok(Vec::new());
                }
                me.apply_activity_rule(tx, &account, &ticket, &activity, None)
            })
            .await
    }

    /// Applies the activity rule to the ticket's PENDING replies created before the
    /// activity, inside a write; `except` is an item to leave alone (the one being sent).
    pub(crate) fn apply_activity_rule(
        &self,
        tx: &mut Tx<'_>,
        account: &str,
        ticket: &str,
        activity: &Activity,
        except: Option<ItemId>,
    ) -> domain::Result<Vec<Item>> {
        let candidates: Vec<Item> = {
            let mut st = tx.conn.prepare_cached(&format!(
                "SELECT {ITEM_COLUMNS} FROM items INDEXED BY items_by_ticket \
                 WHERE account_id = ?1 AND ticket_id = ?2 AND created_at < ?3 \
                 AND state = ?4 AND kind = ?5 ORDER BY created_at, id"
            ))?;
            let rows = st.query_map(
                params![
                    account,
                    ticket,
                    activity.occurred_at,
                    State::Pending.as_i64(),
                    Kind::Reply.as_i64()
                ],
                item_from_row,
            )?;
            rows.collect::<Result<_, _>>()?
        };
        let mut affected = Vec::new();
        for mut item in candidates {
            if Some(item.id) == except {
                continue;
            }
            let Some(to) = activity_effect(&item, activity) else {
                continue;
            };
            apply_activity(&mut item, to, activity, tx.now);
            update_item(tx.conn, &item)?;
            let ev = if to == State::Cancelled {
                EventType::Cancelled
            } else {
                EventType::ConvertedToNote
            };
            tx.event(ev, &item)?;
            tx.remove_timer(item.id);
            tx.release(&item.account_id);
            affected.push(item);
        }
        Ok(affected)
    }
}
