//! The state machine: the one place where item transitions are decided.
//!
//! Every change to a stored item — staff actions (send now, cancel, reschedule), ticket
//! activity, a business-hours change, and the dispatch path (lease, ack, nack, lease
//! expiry, a job never sent, a lateness window that ended) — is a [`Command`] applied by
//! [`step`] to the item as it is now. `step` is pure: it checks the rules, changes the
//! item in place and says what follows from the change ([`Change`]: the event, the
//! timer, whether the item left the live set and so frees its quota slot). The store
//! writes the item and the event and, once the write is durable, applies the timer and
//! quota effects (`store::Tx::save`); nothing else changes an item.
//!
//! ```text
//!                      schedule
//!                         |
//!                         v
//!    send now,      +-> PENDING ---+--------------+------------------+
//!    reschedule,    |    | | ^     |              |                  |
//!    hours change   +----+ | |     | cancel;      | activity;        | late (on_late FAIL);
//!                          | |     | activity     | late (on_late    | unreadable
//!                    lease | |     | (CANCEL)     | CONVERT_TO_NOTE) |
//!                          v |     v              v                  v
//!                DISPATCHING |   CANCELLED   CONVERTED_TO_NOTE     FAILED
//!                   |  |  |  |                                      ^  |
//!                   |  |  +--+ retry: a transient nack or an        |  |
//!                   |  |       unanswered lease with attempts       |  |
//!                   |  |       left; a job never sent               |  |
//!                   |  +--------------------------------------------+  |
//!                   |    permanent nack; attempts ran out; unreadable  |
//!               ack |                                                  |
//!                   v                                                  |
//!                  SENT <------------ late ack (attempts ran out) -----+
//!                   ^
//!                   +---------------- late ack from PENDING (its lease had ended)
//! ```
//!
//! The same edges, as [`TRANSITIONS`] holds them (a test drives [`step`] with every
//! command from every state and checks it makes exactly these):
//!
//! | from | to | by |
//! |---|---|---|
//! | PENDING | PENDING | send now, reschedule or edit, a business-hours change |
//! | PENDING | DISPATCHING | lease (due, not too late or on_late SEND) |
//! | PENDING | CANCELLED | cancel; activity with on_activity CANCEL |
//! | PENDING | CONVERTED_TO_NOTE | activity with on_activity CONVERT_TO_NOTE; too late with on_late CONVERT_TO_NOTE |
//! | PENDING | FAILED | too late with on_late FAIL; its row cannot be decoded |
//! | PENDING | SENT | a late ack (the lease had ended; the connector did send) |
//! | DISPATCHING | SENT | ack |
//! | DISPATCHING | PENDING | a transient nack or an unanswered lease with attempts left (retry); a job never sent (not an attempt) |
//! | DISPATCHING | FAILED | a permanent nack; the attempts ran out; its row cannot be decoded |
//! | FAILED | SENT | a late ack after the attempts ran out |
//!
//! SENT, CANCELLED and CONVERTED_TO_NOTE are terminal; FAILED is, but for a late ack.
//! DISPATCHING items are never touched by staff actions or ticket activity: a connector
//! may be sending them.
//!
//! A command that does not apply to the item's state (a stale timer, a duplicate
//! answer, an answer for an attempt that already ended, a cancel of a cancelled item)
//! is [`Step::Unchanged`], never an error; what staff may not do (send now, reschedule
//! or cancel an item that is not PENDING) is `FailedPrecondition`.

use super::{
    Activity, Channel, Content, DeliveryWindow, Error, EventType, Item, Kind, LocalTime, Millis,
    NewItem, OnActivity, OnLate, Result, State,
};

/// Every allowed transition (from, to); see the module documentation for what makes each.
pub const TRANSITIONS: &[(State, State)] = &[
    (State::Pending, State::Pending),
    (State::Pending, State::Dispatching),
    (State::Pending, State::Cancelled),
    (State::Pending, State::ConvertedToNote),
    (State::Pending, State::Failed),
    (State::Pending, State::Sent),
    (State::Dispatching, State::Sent),
    (State::Dispatching, State::Pending),
    (State::Dispatching, State::Failed),
    (State::Failed, State::Sent),
];

/// Whether `from -> to` is an allowed transition ([`TRANSITIONS`]).
pub fn can_transition(from: State, to: State) -> bool {
    TRANSITIONS.contains(&(from, to))
}

/// A new send time, as resolved by the caller (the delivery window applied).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SendTime {
    /// The instant asked for, before the business-hours move.
    pub requested: Millis,
    /// The instant it goes out.
    pub at: Millis,
    /// It was asked as this local time.
    pub local: Option<LocalTime>,
}

/// How failed attempts are retried.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Retry {
    pub max_attempts: u32,
    pub base_ms: i64,
    pub cap_ms: i64,
    /// In [0, 1): where in the jitter range this retry lands.
    pub jitter: f64,
}

/// What may happen to an item.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Staff: due at the moment of the call.
    SendNow,
    /// Staff: PENDING -> CANCELLED (idempotent).
    Cancel,
    /// Staff: a new send time, content and/or activity policy.
    Edit {
        send_at: Option<SendTime>,
        content: Option<Content>,
        on_activity: Option<OnActivity>,
    },
    /// The account's business hours changed: the item goes out at `at` instead.
    Rewindow { at: Millis },
    /// A message landed in the ticket (the activity rule).
    Activity(Activity),
    /// Its timer fired for `due`: lease it to a connector until `expires`.
    Lease { due: Millis, expires: Millis },
    /// A connector sent it.
    Ack { provider_message_id: Option<String> },
    /// Attempt `attempt` failed: a nack, or its lease ended unanswered.
    AttemptFailed {
        attempt: u32,
        error: String,
        permanent: bool,
        retry: Retry,
    },
    /// The job of attempt `attempt` never reached a connector: not an attempt.
    Unsent { attempt: u32 },
    /// Its lateness window ended while it waited.
    Late,
    /// Its stored row cannot be decoded: a live item fails with `why` (it can never be
    /// sent as stored).
    Unreadable { why: String },
}

/// What the item's timer does after a change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Fires at this time (inserted or moved).
    Set(Millis),
    /// The item no longer needs one.
    Remove,
}

/// What follows from a change, once it is durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Change {
    /// The state before.
    pub from: State,
    pub event: EventType,
    pub timer: Timer,
    /// The item left the live set (PENDING/DISPATCHING): its quota slot is free.
    pub left_live: bool,
}

/// The result of [`step`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step {
    /// The item changed (in place).
    Changed(Change),
    /// Nothing changed; the item's timer is set again to this time if given (a timer
    /// that fired early, for a send time moved since).
    Unchanged { rearm: Option<Millis> },
}

impl Step {
    /// The change, if the item changed.
    pub fn change(&self) -> Option<Change> {
        match self {
            Step::Changed(c) => Some(*c),
            Step::Unchanged { .. } => None,
        }
    }
}

/// A new item, PENDING at `send_at`, and what follows from scheduling it.
pub fn schedule(new: NewItem, id: super::ItemId, send_at: Millis, now: Millis) -> (Item, Change) {
    let mut timing = new.timing.clone();
    if timing.window() == DeliveryWindow::BusinessHours {
        timing.requested_send_at = Some(new.send_at);
    }
    let mut item = new.into_pending(id, now);
    item.send_at = send_at;
    item.timing = timing;
    let change = Change {
        from: State::Pending,
        event: EventType::Scheduled,
        timer: Timer::Set(send_at),
        left_live: false,
    };
    (item, change)
}

/// Applies `cmd` to `item` at `now`.
///
/// # Errors
/// `FailedPrecondition` when staff act on an item that is not PENDING (a cancel of a
/// CANCELLED item is fine), `InvalidArgument` for new content on another channel. On
/// error the item is unchanged.
pub fn step(item: &mut Item, cmd: Command, now: Millis) -> Result<Step> {
    let from = item.state;
    let changed = |item: &Item, event, timer| {
        debug_assert!(
            can_transition(from, item.state),
            "{from} -> {} is not a transition",
            item.state
        );
        Step::Changed(Change {
            from,
            event,
            timer,
            left_live: from.is_live() && !item.state.is_live(),
        })
    };
    match cmd {
        Command::SendNow => {
            require_pending(item, "send now")?;
            item.send_at = now;
            item.next_attempt_at = None;
            item.updated_at = now;
            Ok(changed(item, EventType::Updated, Timer::Set(now)))
        }
        Command::Cancel => {
            match item.state {
                State::Pending => {}
                // Cancel is idempotent.
                State::Cancelled => return Ok(Step::Unchanged { rearm: None }),
                other => return Err(not_pending("cancel", item, other)),
            }
            item.state = State::Cancelled;
            item.next_attempt_at = None;
            item.updated_at = now;
            Ok(changed(item, EventType::Cancelled, Timer::Remove))
        }
        Command::Edit {
            send_at,
            content,
            on_activity,
        } => {
            require_pending(item, "reschedule")?;
            if let Some(c) = &content {
                if c.channel() != item.channel {
                    let field = match c.channel() {
                        Channel::Email => "email",
                        Channel::Chat => "chat",
                    };
                    return Err(Error::invalid(
                        field,
                        format!("the item goes out by {}", item.channel),
                    ));
                }
            }
            if let Some(c) = content {
                item.content = c;
            }
            if let Some(t) = send_at {
                // The window applies again, from the new requested time; a new send
                // time replaces a pending retry time.
                item.timing.send_at_local = t.local;
                item.send_at = t.at;
                if item.timing.window() == DeliveryWindow::BusinessHours {
                    item.timing.requested_send_at = Some(t.requested);
                }
                item.next_attempt_at = None;
            }
            if let Some(p) = on_activity {
                item.on_activity = p;
            }
            item.updated_at = now;
            let at = item.next_send_at();
            Ok(changed(item, EventType::Updated, Timer::Set(at)))
        }
        Command::Rewindow { at } => {
            if item.state != State::Pending || at == item.send_at {
                return Ok(Step::Unchanged { rearm: None });
            }
            item.send_at = at;
            item.updated_at = now;
            let next = item.next_send_at();
            Ok(changed(item, EventType::Updated, Timer::Set(next)))
        }
        Command::Activity(activity) => {
            let Some(to) = activity_effect(item, &activity) else {
                return Ok(Step::Unchanged { rearm: None });
            };
            apply_activity(item, to, &activity, now);
            let event = if to == State::Cancelled {
                EventType::Cancelled
            } else {
                EventType::ConvertedToNote
            };
            Ok(changed(item, event, Timer::Remove))
        }
        Command::Lease { due, expires } => {
            if item.state != State::Pending {
                return Ok(Step::Unchanged { rearm: None }); // leased, cancelled, sent...
            }
            // Due by the deadline its timer fired for (not by a second reading of the
            // clock, which may have stepped back since). Later: it was rescheduled; its
            // timer is set again so nothing is stranded.
            if item.next_send_at() > due.max(now) {
                return Ok(Step::Unchanged {
                    rearm: Some(item.next_send_at()),
                });
            }
            // Starting later than its lateness allows: its policy applies instead.
            if let Some(late_by) = item.timing.too_late(item.send_at, now) {
                item.timing.late_by = Some(late_by);
                if item.timing.on_late() != OnLate::Send {
                    let event = on_late(item, now);
                    return Ok(changed(item, event, Timer::Remove));
                }
            }
            item.state = State::Dispatching;
            item.attempts += 1;
            item.lease_expires_at = Some(expires);
            item.updated_at = now;
            Ok(changed(item, EventType::Dispatching, Timer::Set(expires)))
        }
        Command::Ack {
            provider_message_id,
        } => {
            // Also after the lease expired (PENDING again) or the attempts ran out
            // (FAILED): the connector did send it. A duplicate changes nothing.
            if !matches!(
                item.state,
                State::Pending | State::Dispatching | State::Failed
            ) {
                return Ok(Step::Unchanged { rearm: None });
            }
            item.state = State::Sent;
            item.sent_at = Some(now);
            item.provider_message_id = provider_message_id.filter(|p| !p.is_empty());
            item.next_attempt_at = None;
            item.lease_expires_at = None;
            item.updated_at = now;
            Ok(changed(item, EventType::Sent, Timer::Remove))
        }
        Command::AttemptFailed {
            attempt,
            error,
            permanent,
            retry,
        } => {
            if item.state != State::Dispatching || item.attempts != attempt {
                return Ok(Step::Unchanged { rearm: None }); // that attempt already ended
            }
            item.last_error = Some(error);
            item.lease_expires_at = None;
            item.updated_at = now;
            if permanent || item.attempts >= retry.max_attempts {
                item.state = State::Failed;
                item.next_attempt_at = None;
                Ok(changed(item, EventType::Failed, Timer::Remove))
            } else {
                let backoff =
                    retry_backoff_ms(item.attempts, retry.base_ms, retry.cap_ms, retry.jitter);
                item.state = State::Pending;
                item.next_attempt_at = Some(now + backoff);
                Ok(changed(
                    item,
                    EventType::Retrying,
                    Timer::Set(now + backoff),
                ))
            }
        }
        Command::Unsent { attempt } => {
            if item.state != State::Dispatching || item.attempts != attempt {
                return Ok(Step::Unchanged { rearm: None });
            }
            item.state = State::Pending;
            item.attempts = attempt - 1;
            item.lease_expires_at = None;
            item.updated_at = now;
            Ok(changed(item, EventType::Retrying, Timer::Set(now)))
        }
        Command::Unreadable { why } => {
            if !item.state.is_live() {
                return Ok(Step::Unchanged { rearm: None });
            }
            item.state = State::Failed;
            item.last_error = Some(why);
            item.lease_expires_at = None;
            item.next_attempt_at = None;
            item.updated_at = now;
            Ok(changed(item, EventType::Failed, Timer::Remove))
        }
        Command::Late => {
            if item.state != State::Pending || item.next_send_at() > now {
                return Ok(Step::Unchanged { rearm: None });
            }
            let Some(late_by) = item.timing.too_late(item.send_at, now) else {
                return Ok(Step::Unchanged { rearm: None });
            };
            if item.timing.on_late() == OnLate::Send {
                return Ok(Step::Unchanged { rearm: None }); // it waits on, and goes
            }
            item.timing.late_by = Some(late_by);
            let event = on_late(item, now);
            Ok(changed(item, event, Timer::Remove))
        }
    }
}

/// A late item's on_late policy (CONVERT_TO_NOTE or FAIL) instead of sending it;
/// `late_by` is set. Returns the event.
fn on_late(item: &mut Item, now: Millis) -> EventType {
    let late_by = item.timing.late_by.unwrap_or_default();
    item.updated_at = now;
    item.next_attempt_at = None;
    match item.timing.on_late() {
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
    }
}

/// Checks that staff may change the item (send now, reschedule).
///
/// # Errors
/// `FailedPrecondition` unless PENDING.
fn require_pending(item: &Item, action: &str) -> Result<()> {
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
fn activity_effect(item: &Item, activity: &Activity) -> Option<State> {
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

/// Applies an effect computed by [`activity_effect`] to the item.
fn apply_activity(item: &mut Item, to: State, activity: &Activity, now: Millis) {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuthorKind, ChatContent, EmailContent, Timing};

    const RETRY: Retry = Retry {
        max_attempts: 3,
        base_ms: 1000,
        cap_ms: 60_000,
        jitter: 0.0,
    };

    fn pending() -> Item {
        let new = NewItem {
            account_id: "acme".into(),
            ticket_id: "T1".into(),
            kind: Kind::Reply,
            channel: Channel::Chat,
            author_id: "u".into(),
            content: Content::Chat(ChatContent::default()),
            send_at: 10_000,
            on_activity: OnActivity::ConvertToNote,
            request_id: None,
            timing: Timing::default(),
        };
        schedule(new, 7, 10_000, 1_000).0
    }

    fn leased() -> Item {
        let mut i = pending();
        lease(&mut i, 40_000, 10_000);
        i
    }

    /// Leases `i` for its timer at 10_000, with a lease until `expires`, at `now`.
    fn lease(i: &mut Item, expires: Millis, now: Millis) -> Step {
        step(
            i,
            Command::Lease {
                due: 10_000,
                expires,
            },
            now,
        )
        .unwrap()
    }

    fn changed(s: Step) -> Change {
        s.change().expect("the item changed")
    }

    /// An item in `state`, as stored: created at `created_at`, with `policy`.
    fn item_in(state: State, kind: Kind, created_at: Millis, policy: OnActivity) -> Item {
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

    /// Every command `step` knows, in the variants that lead to different states.
    fn every_command() -> Vec<Command> {
        let failed = |permanent, max_attempts| Command::AttemptFailed {
            attempt: 1,
            error: "e".into(),
            permanent,
            retry: Retry {
                max_attempts,
                ..RETRY
            },
        };
        vec![
            Command::SendNow,
            Command::Cancel,
            Command::Edit {
                send_at: Some(SendTime {
                    requested: 20_000,
                    at: 20_000,
                    local: None,
                }),
                content: None,
                on_activity: None,
            },
            Command::Rewindow { at: 30_000 },
            Command::Activity(activity(50_000)),
            Command::Lease {
                due: 10_000,
                expires: 90_000,
            },
            Command::Ack {
                provider_message_id: None,
            },
            failed(false, 3),
            failed(true, 3),
            failed(false, 1),
            Command::Unsent { attempt: 1 },
            Command::Late,
            Command::Unreadable { why: "bad".into() },
        ]
    }

    #[test]
    fn step_makes_exactly_the_transitions_of_the_table_and_the_diagram() {
        let mut made = std::collections::BTreeSet::new();
        for &state in State::ALL {
            for policy in [
                OnActivity::ConvertToNote,
                OnActivity::Cancel,
                OnActivity::Keep,
            ] {
                for on_late in [OnLate::Send, OnLate::ConvertToNote, OnLate::Fail] {
                    for cmd in every_command() {
                        let mut i = item_in(state, Kind::Reply, 1_000, policy);
                        i.attempts = u32::from(state == State::Dispatching);
                        i.timing.max_lateness = Some(5_000);
                        i.timing.on_late = Some(on_late);
                        // 20 s after its send time: due, and past its lateness window.
                        if let Ok(Step::Changed(c)) = step(&mut i, cmd.clone(), 30_000) {
                            assert_eq!(c.from, state);
                            assert!(
                                can_transition(state, i.state),
                                "{cmd:?} moved {state} to {}, not in TRANSITIONS",
                                i.state
                            );
                            made.insert((state, i.state));
                        }
                    }
                }
            }
        }
        let table: std::collections::BTreeSet<_> = TRANSITIONS.iter().copied().collect();
        assert_eq!(
            made, table,
            "every transition in the table is made by some command"
        );
    }

    #[test]
    fn terminal_states_allow_no_transition_except_a_late_ack() {
        for &from in &[State::Sent, State::Cancelled, State::ConvertedToNote] {
            for &to in State::ALL {
                assert!(!can_transition(from, to), "{from} -> {to} must be refused");
            }
        }
        assert!(can_transition(State::Failed, State::Sent));
        assert!(!can_transition(State::Failed, State::Pending));
        assert!(!can_transition(State::Dispatching, State::Dispatching));
    }

    #[test]
    fn cancel_is_idempotent_and_refuses_what_is_not_pending() {
        use State::*;
        let mut i = item_in(Cancelled, Kind::Reply, 0, OnActivity::Keep);
        assert_eq!(
            step(&mut i, Command::Cancel, 1).unwrap(),
            Step::Unchanged { rearm: None }
        );
        for s in [Dispatching, Sent, Failed, ConvertedToNote] {
            let mut i = item_in(s, Kind::Reply, 0, OnActivity::Keep);
            let err = step(&mut i, Command::Cancel, 1).unwrap_err();
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
            let it = item_in(state, kind, created, policy);
            assert_eq!(activity_effect(&it, &activity(at)), want, "row {i}");
        }
    }

    #[test]
    fn an_items_own_id_as_activity_does_not_touch_it() {
        let mut it = item_in(State::Pending, Kind::Reply, 100, OnActivity::ConvertToNote);
        let mut a = activity(200);
        a.message_id = it.public_id();
        assert_eq!(activity_effect(&it, &a), None);
        assert_eq!(
            step(&mut it, Command::Activity(a), 300).unwrap(),
            Step::Unchanged { rearm: None }
        );
    }

    #[test]
    fn conversion_puts_the_note_at_created_at_and_records_the_cause() {
        let mut it = item_in(State::Pending, Kind::Reply, 100, OnActivity::ConvertToNote);
        let a = activity(200);
        let c = changed(step(&mut it, Command::Activity(a.clone()), 250).unwrap());
        assert_eq!(
            (it.state, c.event),
            (State::ConvertedToNote, EventType::ConvertedToNote)
        );
        assert_eq!(it.note_at, Some(100));
        assert_eq!(it.converted_by, Some(a));
        assert_eq!(it.timeline_at(), 100);
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

    #[test]
    fn a_lease_takes_a_due_pending_item_out_with_one_more_attempt_and_a_lease_timer() {
        let mut i = pending();
        let c = changed(lease(&mut i, 40_000, 10_005));
        assert_eq!(
            (i.state, i.attempts, i.lease_expires_at),
            (State::Dispatching, 1, Some(40_000))
        );
        assert_eq!(c.event, EventType::Dispatching);
        assert_eq!(c.timer, Timer::Set(40_000));
        assert!(!c.left_live);
    }

    #[test]
    fn a_stale_timer_leases_nothing_and_rearms_for_the_new_send_time() {
        let mut i = pending();
        i.send_at = 50_000; // rescheduled after the timer was set
        let before = i.clone();
        let s = lease(&mut i, 40_000, 10_000);
        assert_eq!(
            s,
            Step::Unchanged {
                rearm: Some(50_000)
            }
        );
        assert_eq!(i, before);
        // Not PENDING: nothing, and no timer either.
        let mut l = leased();
        let s = lease(&mut l, 90_000, 20_000);
        assert_eq!(s, Step::Unchanged { rearm: None });
        assert_eq!(l.lease_expires_at, Some(40_000));
    }

    #[test]
    fn a_late_item_gets_its_policy_instead_of_a_lease() {
        for (policy, state, event) in [
            (
                OnLate::ConvertToNote,
                State::ConvertedToNote,
                EventType::ConvertedToNote,
            ),
            (OnLate::Fail, State::Failed, EventType::Failed),
        ] {
            let mut i = pending();
            i.timing.max_lateness = Some(5_000);
            i.timing.on_late = Some(policy);
            let c = changed(lease(&mut i, 90_000, 16_000));
            assert_eq!((i.state, c.event, c.timer), (state, event, Timer::Remove));
            assert!(c.left_live);
            assert_eq!(i.timing.late_by, Some(6_000));
            assert_eq!(i.attempts, 0);
        }
        // SEND: leased, with late_by recorded.
        let mut i = pending();
        i.timing.max_lateness = Some(5_000);
        let c = changed(lease(&mut i, 90_000, 16_000));
        assert_eq!(
            (i.state, i.timing.late_by, c.event),
            (State::Dispatching, Some(6_000), EventType::Dispatching)
        );
    }

    #[test]
    fn an_ack_sends_a_leased_a_retrying_or_a_failed_item_and_nothing_else() {
        let mut l = leased();
        let c = changed(
            step(
                &mut l,
                Command::Ack {
                    provider_message_id: Some("p1".into()),
                },
                11_000,
            )
            .unwrap(),
        );
        assert_eq!(
            (l.state, l.attempts, l.sent_at),
            (State::Sent, 1, Some(11_000))
        );
        assert_eq!(l.provider_message_id.as_deref(), Some("p1"));
        assert!(c.left_live);
        assert_eq!(c.timer, Timer::Remove);
        // A duplicate changes nothing.
        let s = step(
            &mut l,
            Command::Ack {
                provider_message_id: Some("p2".into()),
            },
            12_000,
        )
        .unwrap();
        assert_eq!(s, Step::Unchanged { rearm: None });
        assert_eq!(l.provider_message_id.as_deref(), Some("p1"));
        // A late ack of a FAILED item: sent, but its quota slot was freed already.
        let mut f = leased();
        f.state = State::Failed;
        let c = changed(
            step(
                &mut f,
                Command::Ack {
                    provider_message_id: None,
                },
                12_000,
            )
            .unwrap(),
        );
        assert!(!c.left_live);
        for s in [State::Cancelled, State::ConvertedToNote] {
            let mut i = pending();
            i.state = s;
            assert_eq!(
                step(
                    &mut i,
                    Command::Ack {
                        provider_message_id: None
                    },
                    1
                )
                .unwrap(),
                Step::Unchanged { rearm: None }
            );
        }
    }

    #[test]
    fn a_failed_attempt_retries_with_backoff_until_the_attempts_run_out() {
        let fail = |attempt, permanent| Command::AttemptFailed {
            attempt,
            error: "smtp 451".into(),
            permanent,
            retry: RETRY,
        };
        let mut i = leased();
        let c = changed(step(&mut i, fail(1, false), 11_000).unwrap());
        assert_eq!((i.state, i.next_attempt_at), (State::Pending, Some(11_500)));
        assert_eq!(
            (c.event, c.timer, c.left_live),
            (EventType::Retrying, Timer::Set(11_500), false)
        );
        assert_eq!(i.last_error.as_deref(), Some("smtp 451"));
        // An answer for an attempt that already ended changes nothing.
        assert_eq!(
            step(&mut i, fail(1, false), 11_100).unwrap(),
            Step::Unchanged { rearm: None }
        );
        for attempt in 2..=3 {
            step(
                &mut i,
                Command::Lease {
                    due: 100_000 * i64::from(attempt),
                    expires: 100_000 * i64::from(attempt) + 30_000,
                },
                100_000 * i64::from(attempt),
            )
            .unwrap();
            assert_eq!(i.attempts, attempt);
            step(
                &mut i,
                fail(attempt, false),
                100_000 * i64::from(attempt) + 1,
            )
            .unwrap();
        }
        assert_eq!((i.state, i.next_attempt_at), (State::Failed, None));
        let mut p = leased();
        let c = changed(step(&mut p, fail(1, true), 11_000).unwrap());
        assert_eq!(
            (p.state, c.event, c.left_live),
            (State::Failed, EventType::Failed, true)
        );
    }

    #[test]
    fn an_unsent_job_gives_the_lease_back_without_counting_an_attempt() {
        let mut i = leased();
        let c = changed(step(&mut i, Command::Unsent { attempt: 1 }, 10_010).unwrap());
        assert_eq!(
            (i.state, i.attempts, i.lease_expires_at),
            (State::Pending, 0, None)
        );
        assert_eq!(c.timer, Timer::Set(10_010));
        assert_eq!(
            step(&mut i, Command::Unsent { attempt: 1 }, 1).unwrap(),
            Step::Unchanged { rearm: None }
        );
    }

    #[test]
    fn staff_actions_need_a_pending_item_and_change_nothing_when_refused() {
        let mut l = leased();
        let before = l.clone();
        for cmd in [
            Command::SendNow,
            Command::Cancel,
            Command::Edit {
                send_at: None,
                content: None,
                on_activity: Some(OnActivity::Keep),
            },
        ] {
            let e = step(&mut l, cmd, 1).unwrap_err();
            assert!(matches!(e, Error::FailedPrecondition(_)), "{e:?}");
            assert_eq!(l, before);
        }
        // Cancel is idempotent on CANCELLED.
        let mut i = pending();
        let c = changed(step(&mut i, Command::Cancel, 2_000).unwrap());
        assert_eq!(
            (i.state, c.timer, c.left_live),
            (State::Cancelled, Timer::Remove, true)
        );
        assert_eq!(
            step(&mut i, Command::Cancel, 3_000).unwrap(),
            Step::Unchanged { rearm: None }
        );
    }

    #[test]
    fn an_edit_checks_the_channel_before_changing_anything() {
        let mut i = pending();
        let before = i.clone();
        let e = step(
            &mut i,
            Command::Edit {
                send_at: Some(SendTime {
                    requested: 1,
                    at: 1,
                    local: None,
                }),
                content: Some(Content::Email(EmailContent::default())),
                on_activity: None,
            },
            5,
        )
        .unwrap_err();
        assert!(matches!(e, Error::InvalidArgument { .. }), "{e:?}");
        assert_eq!(i, before);
        i.next_attempt_at = Some(99_000);
        let c = changed(
            step(
                &mut i,
                Command::Edit {
                    send_at: Some(SendTime {
                        requested: 20_000,
                        at: 30_000,
                        local: None,
                    }),
                    content: None,
                    on_activity: None,
                },
                5,
            )
            .unwrap(),
        );
        // A new send time replaces a pending retry time.
        assert_eq!(
            (i.send_at, i.next_attempt_at, c.timer),
            (30_000, None, Timer::Set(30_000))
        );
    }

    #[test]
    fn activity_converts_an_older_pending_reply_and_leaves_a_leased_one() {
        let act = Activity {
            author_kind: AuthorKind::Client,
            message_id: "m1".into(),
            occurred_at: 5_000,
        };
        let mut i = pending();
        let c = changed(step(&mut i, Command::Activity(act.clone()), 6_000).unwrap());
        assert_eq!(
            (i.state, i.note_at, c.event),
            (
                State::ConvertedToNote,
                Some(1_000),
                EventType::ConvertedToNote
            )
        );
        assert!(c.left_live);
        let mut l = leased();
        assert_eq!(
            step(&mut l, Command::Activity(act), 6_000).unwrap(),
            Step::Unchanged { rearm: None }
        );
    }

    #[test]
    fn a_late_window_applies_only_to_a_waiting_late_item_whose_policy_is_not_send() {
        let mut i = pending();
        i.timing.max_lateness = Some(1_000);
        i.timing.on_late = Some(OnLate::Fail);
        assert_eq!(
            step(&mut i, Command::Late, 10_500).unwrap(),
            Step::Unchanged { rearm: None }
        );
        let c = changed(step(&mut i, Command::Late, 12_000).unwrap());
        assert_eq!((i.state, c.event), (State::Failed, EventType::Failed));
        assert!(i.last_error.unwrap().contains("late by 2 s"));
    }
}
