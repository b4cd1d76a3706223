//! One home for item transitions.
//!
//! Every change to a stored item — staff actions (send now, cancel, reschedule), ticket
//! activity, a business-hours change, and the dispatch path (lease, ack, nack, lease
//! expiry, a job never sent, a lateness window that ended) — is a [`Command`] applied by
//! [`step`] to the item as it is now. `step` is pure: it checks the rules of
//! `rules.rs`, changes the item in place and says what follows from the change
//! ([`Change`]: the event, the timer, whether the item left the live set and so frees
//! its quota slot). The store writes the item and the event and, once the write is
//! durable, applies the timer and quota effects (`store::Tx::save`); nothing else
//! changes an item.
//!
//! A command that does not apply to the item's state (a stale timer, a duplicate
//! answer, an answer for an attempt that already ended, a cancel of a cancelled item)
//! is [`Step::Unchanged`], never an error; what staff may not do (send now, reschedule
//! or cancel an item that is not PENDING) is `FailedPrecondition`.

use super::{
    activity_effect, apply_activity, can_transition, cancel, require_pending, retry_backoff_ms,
    Activity, CancelOutcome, Channel, Content, DeliveryWindow, Error, EventType, Item, LocalTime,
    Millis, NewItem, OnActivity, OnLate, Result, State,
};

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
            if cancel(item)? == CancelOutcome::AlreadyCancelled {
                return Ok(Step::Unchanged { rearm: None });
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::domain::{AuthorKind, ChatContent, EmailContent, Kind, Timing};

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
