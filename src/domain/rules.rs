//! The state machine and the domain rules over it, as pure functions.
//!
//! ```text
//!            schedule
//!               |
//!               v          lease             ack
//!   +------> PENDING ---------------> DISPATCHING ------> SENT
//!   |  retry  |  |  |                   |    |
//!   +---------+  |  | cancel            |    | permanent nack / attempts exhausted
//!   (from        |  v                   |    v
//!   DISPATCHING) | CANCELLED            |  FAILED
//!                v                      |
//!       CONVERTED_TO_NOTE               +--> PENDING (transient nack, lease expiry)
//! ```
//! SENT, FAILED, CANCELLED and CONVERTED_TO_NOTE are terminal. DISPATCHING items are
//! never touched by staff actions or ticket activity: a connector may be sending them.

use super::{Activity, Error, Item, Kind, Millis, OnActivity, Result, State};

/// Whether `from -> to` is an allowed transition.
pub fn can_transition(from: State, to: State) -> bool {
    use State::*;
    matches!(
        (from, to),
        (Pending, Pending)               // reschedule, edit, send-now
            | (Pending, Dispatching)     // leased to a connector
            | (Pending, Cancelled)
            | (Pending, ConvertedToNote)
            | (Pending, Failed)          // past its lateness window, on_late FAIL (or unreadable)
            | (Dispatching, Sent)
            | (Dispatching, Pending)     // retry after a failed attempt
            | (Dispatching, Failed)
            | (Dispatching, Dispatching) // lease handed to another connector
            | (Pending, Sent)            // a late ack after the lease expired
            | (Failed, Sent) // a late ack after attempts ran out: the connector did send
    )
}

/// What a cancel request does to an item.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CancelOutcome {
    /// PENDING -> CANCELLED.
    Cancel,
    /// Already cancelled: OK, nothing changes (cancel is idempotent).
    AlreadyCancelled,
}

/// Cancel: PENDING -> CANCELLED, idempotent on CANCELLED.
///
/// # Errors
/// `FailedPrecondition` in any other state.
pub fn cancel(item: &Item) -> Result<CancelOutcome> {
    match item.state {
        State::Pending => Ok(CancelOutcome::Cancel),
        State::Cancelled => Ok(CancelOutcome::AlreadyCancelled),
        other => Err(not_pending("cancel", item, other)),
    }
}

/// Checks that staff may change the item (SendNow, Reschedule).
///
/// # Errors
/// `FailedPrecondition` unless PENDING.
pub fn require_pending(item: &Item, action: &str) -> Result<()> {
    match item.state {
        State::Pending => Ok(()),
        other => Err(not_pending(action, item, other)),
    }
}

fn not_pending(action: &str, item: &Item, state: State) -> Error {
    Error::FailedPrecondition(format!(
        "cannot {action} item {}: it is {state}, not PENDING",
        item.public_id()
    ))
}

/// The state `activity` moves `item` to, or `None` when the item is left alone.
///
/// The rule: a PENDING REPLY created before the activity gets its on_activity policy.
/// NEW_TICKET items, items already leased (DISPATCHING) or finished, and replies written
/// after the activity (their author knew of it) are untouched; so is the item whose own
/// send *is* the activity.
pub fn activity_effect(item: &Item, activity: &Activity) -> Option<State> {
    if item.kind != Kind::Reply || item.state != State::Pending {
        return None;
    }
    if item.created_at >= activity.occurred_at {
        return None;
    }
    if activity.message_id == item.public_id() {
        return None;
    }
    match item.on_activity {
        OnActivity::ConvertToNote => Some(State::ConvertedToNote),
        OnActivity::Cancel => Some(State::Cancelled),
        OnActivity::Keep => None,
    }
}

/// Applies an effect computed by [`activity_effect`] to the item in memory.
pub fn apply_activity(item: &mut Item, to: State, activity: &Activity, now: Millis) {
    debug_assert!(
        can_transition(item.state, to),
        "activity moved {} from {} to {}",
        item.id,
        item.state,
        to
    );
    item.state = to;
    item.updated_at = now;
    item.next_attempt_at = None;
    if to == State::ConvertedToNote {
        item.note_at = Some(item.created_at);
        item.converted_by = Some(activity.clone());
    }
}

/// The backoff before retry number `attempt + 1` after `attempt` failed attempts
/// (`attempt >= 1`): `base * 2^(attempt-1)`, capped, with "equal jitter" (half fixed,
/// half random from `jitter_unit` in [0, 1)), so retries of many items spread out but
/// never come sooner than half the nominal backoff.
pub fn retry_backoff_ms(attempt: u32, base_ms: i64, cap_ms: i64, jitter_unit: f64) -> i64 {
    let exp = attempt.saturating_sub(1).min(40);
    let nominal = base_ms.saturating_mul(1_i64 << exp).min(cap_ms).max(0);
    let half = nominal / 2;
    half + ((nominal - half) as f64 * jitter_unit.clamp(0.0, 1.0)) as i64
}

/// A ticket's timeline from all its items.
///
/// Staff see every item but the cancelled ones, each at [`Item::timeline_at`]. The
/// client sees SENT items only, with internal fields cleared; a ticket that holds an
/// unsent (or cancelled) NEW_TICKET and nothing sent does not exist for the client.
///
/// # Errors
/// `NotFound` for the client in that last case.
pub fn timeline(mut items: Vec<Item>, for_client: bool) -> Result<Vec<Item>> {
    if for_client {
        let any_sent = items.iter().any(|i| i.state == State::Sent);
        let hidden_ticket = items
            .iter()
            .any(|i| i.kind == Kind::NewTicket && i.state != State::Sent);
        if !any_sent && hidden_ticket {
            return Err(Error::NotFound("ticket not found".into()));
        }
        items.retain(|i| i.state == State::Sent);
        for i in &mut items {
            clear_internal(i);
        }
    } else {
        items.retain(|i| i.state != State::Cancelled);
    }
    items.sort_by_key(|i| (i.timeline_at(), i.id));
    Ok(items)
}

/// Clears what a client must never see: bcc, author, idempotency key, delivery
/// bookkeeping, policy.
pub fn clear_internal(item: &mut Item) {
    if let super::Content::Email(e) = &mut item.content {
        e.bcc.clear();
    }
    item.author_id.clear();
    item.request_id = None;
    item.attempts = 0;
    item.last_error = None;
    item.next_attempt_at = None;
    item.lease_expires_at = None;
    item.on_activity = OnActivity::ConvertToNote;
    item.converted_by = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuthorKind, Channel, ChatContent, Content, NewItem};

    fn item(state: State, kind: Kind, created_at: Millis, policy: OnActivity) -> Item {
        let new = NewItem {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            kind,
            channel: Channel::Chat,
            author_id: "u".into(),
            content: Content::Chat(ChatContent::default()),
            send_at: 10_000,
            on_activity: policy,
            request_id: None,
            timing: Default::default(),
        };
        Item {
            state,
            ..new.into_pending(7, created_at)
        }
    }

    fn activity(at: Millis) -> Activity {
        Activity {
            author_kind: AuthorKind::Client,
            message_id: "m1".into(),
            occurred_at: at,
        }
    }

    #[test]
    fn terminal_states_allow_no_transition_except_late_ack() {
        for &from in &[State::Sent, State::Cancelled, State::ConvertedToNote] {
            for &to in State::ALL {
                assert!(!can_transition(from, to), "{from} -> {to} must be refused");
            }
        }
        assert!(can_transition(State::Failed, State::Sent));
        assert!(!can_transition(State::Failed, State::Pending));
    }

    #[test]
    fn cancel_is_idempotent_and_refuses_non_pending() {
        use State::*;
        let cases = [
            (Pending, Ok(CancelOutcome::Cancel)),
            (Cancelled, Ok(CancelOutcome::AlreadyCancelled)),
        ];
        for (s, want) in cases {
            assert_eq!(cancel(&item(s, Kind::Reply, 0, OnActivity::Keep)), want);
        }
        for s in [Dispatching, Sent, Failed, ConvertedToNote] {
            let err = cancel(&item(s, Kind::Reply, 0, OnActivity::Keep)).unwrap_err();
            assert!(matches!(err, Error::FailedPrecondition(ref m) if m.contains(s.name())));
        }
    }

    #[test]
    fn activity_applies_policy_only_to_pending_replies_created_before_it() {
        use OnActivity::*;
        use State::*;
        // (state, kind, created_at, policy, activity at, expected)
        let table = [
            (
                Pending,
                Kind::Reply,
                100,
                ConvertToNote,
                200,
                Some(ConvertedToNote),
            ),
            (Pending, Kind::Reply, 100, Cancel, 200, Some(Cancelled)),
            (Pending, Kind::Reply, 100, Keep, 200, None),
            (Pending, Kind::Reply, 200, ConvertToNote, 200, None), // same instant: knew of it
            (Pending, Kind::Reply, 300, ConvertToNote, 200, None), // written after
            (Pending, Kind::NewTicket, 100, ConvertToNote, 200, None),
            (Dispatching, Kind::Reply, 100, ConvertToNote, 200, None),
            (Sent, Kind::Reply, 100, ConvertToNote, 200, None),
            (Cancelled, Kind::Reply, 100, ConvertToNote, 200, None),
        ];
        for (i, (state, kind, created, policy, at, want)) in table.into_iter().enumerate() {
            let it = item(state, kind, created, policy);
            assert_eq!(activity_effect(&it, &activity(at)), want, "row {i}");
        }
    }

    #[test]
    fn an_items_own_id_as_activity_does_not_touch_it() {
        let it = item(State::Pending, Kind::Reply, 100, OnActivity::ConvertToNote);
        let mut a = activity(200);
        a.message_id = it.public_id();
        assert_eq!(activity_effect(&it, &a), None);
    }

    #[test]
    fn conversion_puts_the_note_at_created_at_and_records_the_cause() {
        let mut it = item(State::Pending, Kind::Reply, 100, OnActivity::ConvertToNote);
        let a = activity(200);
        apply_activity(&mut it, State::ConvertedToNote, &a, 250);
        assert_eq!(it.state, State::ConvertedToNote);
        assert_eq!(it.note_at, Some(100));
        assert_eq!(it.converted_by, Some(a));
        assert_eq!(it.timeline_at(), 100);
    }

    #[test]
    fn client_timeline_shows_only_sent_items_without_internal_fields() {
        let mut sent = item(State::Sent, Kind::Reply, 100, OnActivity::Keep);
        sent.sent_at = Some(500);
        sent.author_id = "agent".into();
        sent.attempts = 2;
        let pending = Item {
            id: 8,
            ..item(State::Pending, Kind::Reply, 50, OnActivity::Keep)
        };
        let got = timeline(vec![pending, sent], true).unwrap();
        assert_eq!(got.len(), 1);
        assert_eq!(got[0].author_id, "");
        assert_eq!(got[0].attempts, 0);
    }

    #[test]
    fn an_unsent_new_ticket_does_not_exist_for_the_client() {
        let t = item(State::Pending, Kind::NewTicket, 100, OnActivity::Keep);
        assert!(matches!(
            timeline(vec![t.clone()], true),
            Err(Error::NotFound(_))
        ));
        let c = Item {
            state: State::Cancelled,
            ..t.clone()
        };
        assert!(matches!(
            timeline(vec![c.clone()], true),
            Err(Error::NotFound(_))
        ));
        // Staff see the pending one, not the cancelled one.
        assert_eq!(timeline(vec![t], false).unwrap().len(), 1);
        assert!(timeline(vec![c], false).unwrap().is_empty());
        // A ticket with nothing at all is just empty.
        assert!(timeline(vec![], true).unwrap().is_empty());
    }

    #[test]
    fn staff_timeline_orders_by_sent_note_or_send_time() {
        let mut sent = item(State::Sent, Kind::Reply, 10, OnActivity::Keep);
        sent.sent_at = Some(300);
        let mut note = Item {
            id: 8,
            ..item(State::Pending, Kind::Reply, 20, OnActivity::ConvertToNote)
        };
        apply_activity(&mut note, State::ConvertedToNote, &activity(400), 400);
        let pending = Item {
            id: 9,
            send_at: 200,
            ..item(State::Pending, Kind::Reply, 30, OnActivity::Keep)
        };
        let got = timeline(vec![sent, pending, note], false).unwrap();
        let ids: Vec<_> = got.iter().map(|i| i.id).collect();
        assert_eq!(ids, vec![8, 9, 7]); // note at 20, pending at 200, sent at 300
    }

    #[test]
    fn backoff_doubles_is_capped_and_jitter_stays_within_half_to_full() {
        assert_eq!(retry_backoff_ms(1, 1000, 600_000, 1.0), 1000);
        assert_eq!(retry_backoff_ms(1, 1000, 600_000, 0.0), 500);
        assert_eq!(retry_backoff_ms(4, 1000, 600_000, 1.0), 8000);
        assert_eq!(retry_backoff_ms(30, 1000, 600_000, 1.0), 600_000);
        assert_eq!(retry_backoff_ms(u32::MAX, 1000, 600_000, 0.0), 300_000);
        for j in [0.0, 0.3, 0.99] {
            let b = retry_backoff_ms(3, 1000, 600_000, j);
            assert!((2000..=4000).contains(&b), "{b}");
        }
    }
}
