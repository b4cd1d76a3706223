//! When it goes out: local times with their zone, business hours and holidays, the
//! lateness policy, pause/resume and rate limits, over real gRPC with the manual clock
//! (which starts on Wednesday 2026-11-25 12:00 UTC).
mod common;

use std::time::Duration;

use common::*;
use sendlater::pb;

const HOUR: i64 = 3_600_000;
const MINUTE: i64 = 60_000;

fn local(local_time: &str, zone: &str) -> Option<pb::LocalTime> {
    Some(pb::LocalTime {
        local_time: local_time.into(),
        time_zone: zone.into(),
    })
}

fn at_local(mut r: pb::ScheduleRequest, local_time: &str, zone: &str) -> pb::ScheduleRequest {
    r.send_at = None;
    r.send_at_local = local(local_time, zone);
    r
}

fn lateness(mut r: pb::ScheduleRequest, max_ms: i64, on_late: pb::OnLate) -> pb::ScheduleRequest {
    r.max_lateness = Some(prost_types::Duration {
        seconds: max_ms / 1000,
        nanos: 0,
    });
    r.on_late = on_late as i32;
    r
}

fn business(mut r: pb::ScheduleRequest) -> pb::ScheduleRequest {
    r.delivery_window = pb::DeliveryWindow::BusinessHours as i32;
    r
}

/// Monday to Friday 09:00-13:00 and 14:00-18:00 in Moscow, with a holiday on Monday
/// 2026-11-30.
fn moscow_week(holidays: &[&str]) -> pb::BusinessHours {
    let mut days = Vec::new();
    for weekday in 1..=5 {
        days.push(pb::BusinessDay {
            weekday,
            open: "09:00".into(),
            close: "13:00".into(),
        });
        days.push(pb::BusinessDay {
            weekday,
            open: "14:00".into(),
            close: "18:00".into(),
        });
    }
    pb::BusinessHours {
        account_id: "acme".into(),
        time_zone: "Europe/Moscow".into(),
        days,
        holidays: holidays.iter().map(|h| h.to_string()).collect(),
    }
}

async fn set_hours(t: &TestServer, h: pb::BusinessHours) -> pb::BusinessHours {
    t.client
        .clone()
        .set_business_hours(h)
        .await
        .expect("set business hours")
        .into_inner()
}

#[tokio::test]
async fn a_local_time_is_resolved_in_its_zone_and_kept_as_given() {
    let mut t = TestServer::start().await;
    let item = t
        .schedule(at_local(
            email_reply("acme", "T1", 0),
            "2026-11-26T09:00",
            "Europe/Moscow",
        ))
        .await;
    // 09:00 in Moscow (UTC+3) is 06:00 UTC.
    assert_eq!(ms(&item.send_at), T0 + 18 * HOUR);
    assert_eq!(
        item.send_at_local,
        local("2026-11-26T09:00:00", "Europe/Moscow")
    );
    let again = t.get_acme(&item.item_id).await;
    assert_eq!(again.send_at_local, item.send_at_local);
    t.stop().await;
}

#[tokio::test]
async fn a_local_time_in_a_spring_forward_gap_moves_forward_by_the_gap() {
    let mut t = TestServer::start().await;
    // 2027-03-14 02:30 does not exist in New York (02:00 -> 03:00): it is 03:30 EDT.
    let item = t
        .schedule(at_local(
            email_reply("acme", "T1", 0),
            "2027-03-14T02:30",
            "America/New_York",
        ))
        .await;
    let expected = chrono::DateTime::parse_from_rfc3339("2027-03-14T07:30:00Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(ms(&item.send_at), expected);
    // An ambiguous one (fall back) is the earlier instant: 01:30 EDT.
    let overlap = t
        .schedule(at_local(
            email_reply("acme", "T2", 0),
            "2027-11-07T01:30",
            "America/New_York",
        ))
        .await;
    let expected = chrono::DateTime::parse_from_rfc3339("2027-11-07T05:30:00Z")
        .unwrap()
        .timestamp_millis();
    assert_eq!(ms(&overlap.send_at), expected);
    t.stop().await;
}

#[tokio::test]
async fn bad_send_times_are_invalid_argument_naming_the_field_and_store_nothing() {
    let mut t = TestServer::start().await;
    let mut both = email_reply("acme", "T1", T0 + HOUR);
    both.send_at_local = local("2026-11-26T09:00", "Europe/Moscow");
    assert_status(
        t.client.clone().schedule_message(both).await,
        tonic::Code::InvalidArgument,
        "send_at:",
    );
    let mut neither = email_reply("acme", "T1", T0 + HOUR);
    neither.send_at = None;
    assert_status(
        t.client.clone().schedule_message(neither).await,
        tonic::Code::InvalidArgument,
        "send_at:",
    );
    let zone = at_local(
        email_reply("acme", "T1", 0),
        "2026-11-26T09:00",
        "Mars/Olympus",
    );
    assert_status(
        t.client.clone().schedule_message(zone).await,
        tonic::Code::InvalidArgument,
        "send_at_local.time_zone:",
    );
    for bad in [
        "2026-11-26 09:00",
        "2026-13-01T09:00",
        "2026-11-26T09:00+03:00",
        "",
    ] {
        let r = at_local(email_reply("acme", "T1", 0), bad, "Europe/Moscow");
        assert_status(
            t.client.clone().schedule_message(r).await,
            tonic::Code::InvalidArgument,
            "send_at_local.local_time:",
        );
    }
    let mut ticket = lateness(
        email_reply("acme", "T9", T0 + HOUR),
        60_000,
        pb::OnLate::ConvertToNote,
    );
    ticket.ticket_id = "NEW".into();
    assert_status(
        t.client.clone().schedule_ticket(ticket).await,
        tonic::Code::InvalidArgument,
        "on_late:",
    );
    let mut negative = email_reply("acme", "T1", T0 + HOUR);
    negative.max_lateness = Some(prost_types::Duration {
        seconds: -5,
        nanos: 0,
    });
    assert_status(
        t.client.clone().schedule_message(negative).await,
        tonic::Code::InvalidArgument,
        "max_lateness:",
    );
    let listed = t.pending_acme().await;
    assert!(listed.items.is_empty(), "{listed:?}");
    t.stop().await;
}

#[tokio::test]
async fn business_hours_move_a_send_time_to_the_next_opening_skipping_holidays() {
    let mut t = TestServer::start().await;
    // No hours yet: FAILED_PRECONDITION.
    let r = business(email_reply("acme", "T1", T0 + HOUR));
    assert_status(
        t.client.clone().schedule_message(r).await,
        tonic::Code::FailedPrecondition,
        "delivery_window:",
    );
    let stored = set_hours(&t, moscow_week(&["2026-11-30"])).await;
    assert_eq!(stored.time_zone, "Europe/Moscow");
    assert_eq!(stored.days.len(), 10);
    // Saturday 20:00 Moscow -> Monday is a holiday -> Tuesday 09:00 Moscow (06:00 UTC).
    let saturday_evening = T0 + 77 * HOUR;
    let item = t
        .schedule(business(email_reply("acme", "T1", saturday_evening)))
        .await;
    assert_eq!(ms(&item.send_at), T0 + 6 * 24 * HOUR - 6 * HOUR);
    assert_eq!(ms(&item.requested_send_at), saturday_evening);
    assert_eq!(
        item.delivery_window,
        pb::DeliveryWindow::BusinessHours as i32
    );
    // Inside the lunch break (13:30 Moscow on Thursday) -> 14:00.
    let lunch = T0 + 24 * HOUR - 2 * HOUR + 30 * MINUTE; // Thu 10:30 UTC = 13:30 MSK
    let item = t.schedule(business(email_reply("acme", "T2", lunch))).await;
    assert_eq!(ms(&item.send_at), lunch + 30 * MINUTE);
    // Inside the hours: unchanged.
    let open = T0 + 24 * HOUR; // Thu 12:00 UTC = 15:00 MSK
    let item = t.schedule(business(email_reply("acme", "T3", open))).await;
    assert_eq!(ms(&item.send_at), open);
    t.stop().await;
}

#[tokio::test]
async fn changing_the_hours_moves_pending_business_hours_items_from_their_requested_time() {
    let mut t = TestServer::start().await;
    set_hours(&t, moscow_week(&[])).await;
    let saturday_evening = T0 + 77 * HOUR;
    let moved = t
        .schedule(business(email_reply("acme", "T1", saturday_evening)))
        .await;
    let fixed = t
        .schedule(email_reply("acme", "T2", saturday_evening))
        .await;
    // Monday 09:00 Moscow.
    assert_eq!(ms(&moved.send_at), T0 + 5 * 24 * HOUR - 6 * HOUR);
    // Saturdays open 10:00-14:00 from now on.
    let mut week = moscow_week(&[]);
    week.days.push(pb::BusinessDay {
        weekday: 6,
        open: "10:00".into(),
        close: "14:00".into(),
    });
    set_hours(&t, week).await;
    // Requested Saturday 20:00 -> Monday 09:00 still (Saturday closes at 14:00);
    // now make Sunday open too, from 19:00.
    let mut week = moscow_week(&[]);
    week.days.push(pb::BusinessDay {
        weekday: 7,
        open: "19:00".into(),
        close: "24:00".into(),
    });
    set_hours(&t, week).await;
    let now = t.get_acme(&moved.item_id).await;
    // Sunday 19:00 Moscow = 16:00 UTC = T0 + 4 days + 4 h.
    assert_eq!(ms(&now.send_at), T0 + 4 * 24 * HOUR + 4 * HOUR);
    assert_eq!(ms(&now.requested_send_at), saturday_evening);
    assert_eq!(t.get_acme(&fixed.item_id).await.send_at, fixed.send_at);
    // And it goes out then (after the fixed one, due on Saturday evening).
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    t.clock.set(T0 + 4 * 24 * HOUR + 4 * HOUR - 1);
    let job = c.next_job().await;
    assert_eq!(job_item(&job), fixed.item_id);
    c.ack(&job, "ok").await;
    wait_state(&t.client, "acme", &fixed.item_id, pb::State::Sent).await;
    t.settle().await;
    assert_eq!(
        t.get_acme(&moved.item_id).await.state,
        pb::State::Pending as i32
    );
    t.advance(Duration::from_millis(1));
    let job = c.next_job().await;
    assert_eq!(job_item(&job), moved.item_id);
    c.ack(&job, "ok").await;
    wait_state(&t.client, "acme", &moved.item_id, pb::State::Sent).await;
    t.stop().await;
}

#[tokio::test]
async fn bad_business_hours_are_invalid_argument_naming_the_field_and_store_nothing() {
    let mut t = TestServer::start().await;
    type Spoil = Box<dyn Fn(&mut pb::BusinessHours)>;
    let cases: Vec<(Spoil, &str)> = vec![
        (
            Box::new(|h| h.time_zone = "Nowhere/Land".into()),
            "time_zone:",
        ),
        (Box::new(|h| h.days[1].weekday = 8), "days[1].weekday:"),
        (Box::new(|h| h.days[0].weekday = 0), "days[0].weekday:"),
        (Box::new(|h| h.days[2].open = "9am".into()), "days[2].open:"),
        (
            Box::new(|h| h.days[3].close = "25:00".into()),
            "days[3].close:",
        ),
        (
            Box::new(|h| {
                h.days[0].open = "18:00".into();
                h.days[0].close = "09:00".into();
            }),
            "days[0].close:",
        ),
        (
            Box::new(|h| h.holidays = vec!["2026-02-30".into()]),
            "holidays[0]:",
        ),
        (Box::new(|h| h.days.clear()), "days:"),
    ];
    for (spoil, field) in cases {
        let mut h = moscow_week(&[]);
        spoil(&mut h);
        assert_status(
            t.client.clone().set_business_hours(h).await,
            tonic::Code::InvalidArgument,
            field,
        );
    }
    let r = t
        .client
        .clone()
        .get_business_hours(pb::GetBusinessHoursRequest {
            account_id: "acme".into(),
        })
        .await;
    assert_status(r, tonic::Code::NotFound, "");
    t.stop().await;
}

#[tokio::test]
async fn business_hours_and_a_pause_survive_a_restart() {
    let mut t = TestServer::start().await;
    set_hours(&t, moscow_week(&["2026-12-31"])).await;
    pause(&t, "acme", pb::Channel::Chat).await;
    t.restart().await;
    let h = t
        .client
        .clone()
        .get_business_hours(pb::GetBusinessHoursRequest {
            account_id: "acme".into(),
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(h.holidays, vec!["2026-12-31".to_string()]);
    assert_eq!(h.days.len(), 10);
    let c = controls(&t, "acme").await;
    assert_eq!(c.paused_channels, vec![pb::Channel::Chat as i32]);
    // The pause is in force after the restart: a due chat item waits.
    let mut conn = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 10).await;
    let item = t.schedule(chat_reply("acme", "T1", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    t.settle().await;
    assert_eq!(
        t.get_acme(&item.item_id).await.state,
        pb::State::Pending as i32
    );
    resume(&t, "acme", pb::Channel::Unspecified).await;
    let job = conn.next_job().await;
    assert_eq!(job_item(&job), item.item_id);
    conn.ack(&job, "ok").await;
    wait_state(&t.client, "acme", &item.item_id, pb::State::Sent).await;
    t.stop().await;
}

async fn pause(t: &TestServer, account: &str, channel: pb::Channel) -> pb::DispatchControls {
    t.client
        .clone()
        .pause_dispatch(pb::DispatchControlRequest {
            account_id: account.into(),
            channel: channel as i32,
        })
        .await
        .expect("pause")
        .into_inner()
}

async fn resume(t: &TestServer, account: &str, channel: pb::Channel) -> pb::DispatchControls {
    t.client
        .clone()
        .resume_dispatch(pb::DispatchControlRequest {
            account_id: account.into(),
            channel: channel as i32,
        })
        .await
        .expect("resume")
        .into_inner()
}

async fn controls(t: &TestServer, account: &str) -> pb::DispatchControls {
    t.client
        .clone()
        .get_dispatch_controls(pb::GetDispatchControlsRequest {
            account_id: account.into(),
        })
        .await
        .expect("controls")
        .into_inner()
}

#[tokio::test]
async fn a_paused_account_waits_while_others_flow_and_resumes_fairly() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 1).await;
    let paused = pause(&t, "acme", pb::Channel::Email).await;
    assert_eq!(paused.paused_channels, vec![pb::Channel::Email as i32]);
    let mut held = Vec::new();
    for i in 0..6 {
        held.push(
            t.schedule(email_reply("acme", &format!("A{i}"), T0 + 1_000))
                .await,
        );
    }
    let other = t.schedule(email_reply("globex", "G1", T0 + 1_000)).await;
    t.advance(Duration::from_secs(1));
    // Only globex goes out.
    let job = c.next_job().await;
    assert_eq!(job_item(&job), other.item_id);
    c.ack(&job, "ok").await;
    wait_state(&t.client, "globex", &other.item_id, pb::State::Sent).await;
    t.settle().await;
    for it in &held {
        assert_eq!(
            t.get_acme(&it.item_id).await.state,
            pb::State::Pending as i32
        );
    }
    // Another globex item falls due while acme is still paused; then acme resumes:
    // globex is not starved behind acme's backlog (round-robin across accounts).
    let other2 = t.schedule(email_reply("globex", "G2", T0 + 2_000)).await;
    resume(&t, "acme", pb::Channel::Email).await;
    t.advance(Duration::from_secs(1));
    let mut order = Vec::new();
    for _ in 0..7 {
        let job = c.next_job().await;
        order.push(job_item(&job));
        c.ack(&job, "ok").await;
    }
    let pos = order
        .iter()
        .position(|i| *i == other2.item_id)
        .expect("globex sent");
    assert!(pos <= 2, "globex waited behind acme's backlog: {order:?}");
    assert_eq!(
        controls(&t, "acme").await.paused_channels,
        Vec::<i32>::new()
    );
    t.stop().await;
}

#[tokio::test]
async fn a_rate_limit_starts_at_most_n_jobs_per_rolling_minute() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 100).await;
    let set = t
        .client
        .clone()
        .set_rate_limit(pb::SetRateLimitRequest {
            account_id: "acme".into(),
            channel: pb::Channel::Chat as i32,
            per_minute: 2,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(set.rate_limits.len(), 1);
    assert_eq!(set.rate_limits[0].per_minute, 2);
    let mut items = Vec::new();
    for i in 0..5 {
        items.push(
            t.schedule(chat_reply("acme", &format!("T{i}"), T0 + 1_000))
                .await,
        );
    }
    t.advance(Duration::from_secs(1));
    for _ in 0..2 {
        let job = c.next_job().await;
        c.ack(&job, "ok").await;
        wait_state(&t.client, "acme", &job_item(&job), pb::State::Sent).await;
    }
    t.settle().await;
    let pending = |t: &TestServer| {
        let ids: Vec<String> = items.iter().map(|i| i.item_id.clone()).collect();
        let client = t.client.clone();
        async move {
            let mut n = 0;
            for id in ids {
                let it = client
                    .clone()
                    .get_item(item_ref("acme", &id))
                    .await
                    .unwrap()
                    .into_inner();
                if it.state == pb::State::Pending as i32 {
                    n += 1;
                }
            }
            n
        }
    };
    assert_eq!(pending(&t).await, 3, "more than 2 started within a minute");
    // A minute later, two more.
    t.advance(Duration::from_secs(60));
    for _ in 0..2 {
        let job = c.next_job().await;
        c.ack(&job, "ok").await;
        wait_state(&t.client, "acme", &job_item(&job), pb::State::Sent).await;
    }
    t.settle().await;
    assert_eq!(pending(&t).await, 1);
    // Negative: INVALID_ARGUMENT naming the field; 0 removes the limit.
    let bad = t
        .client
        .clone()
        .set_rate_limit(pb::SetRateLimitRequest {
            account_id: "acme".into(),
            channel: pb::Channel::Chat as i32,
            per_minute: -1,
        })
        .await;
    assert_status(bad, tonic::Code::InvalidArgument, "per_minute:");
    t.client
        .clone()
        .set_rate_limit(pb::SetRateLimitRequest {
            account_id: "acme".into(),
            channel: pb::Channel::Chat as i32,
            per_minute: 0,
        })
        .await
        .unwrap();
    let job = c.next_job().await;
    c.ack(&job, "ok").await;
    wait_state(&t.client, "acme", &job_item(&job), pb::State::Sent).await;
    assert_eq!(controls(&t, "acme").await.rate_limits.len(), 0);
    t.stop().await;
}

#[tokio::test]
async fn an_item_past_its_max_lateness_gets_its_on_late_policy_instead_of_a_send() {
    let mut t = TestServer::start().await;
    let note = t
        .schedule(lateness(
            email_reply("acme", "T1", T0 + 1_000),
            60_000,
            pb::OnLate::ConvertToNote,
        ))
        .await;
    let fail = t
        .schedule(lateness(
            email_reply("acme", "T2", T0 + 1_000),
            60_000,
            pb::OnLate::Fail,
        ))
        .await;
    let send = t
        .schedule(lateness(
            email_reply("acme", "T3", T0 + 1_000),
            60_000,
            pb::OnLate::Send,
        ))
        .await;
    // No connector for 2 minutes: a backlog.
    t.advance(Duration::from_secs(121));
    t.settle().await;
    let n = t.get_acme(&note.item_id).await;
    assert_eq!(n.state, pb::State::ConvertedToNote as i32, "{n:?}");
    assert_eq!(ms(&n.note_at), ms(&n.created_at));
    assert!(n.late_by.as_ref().unwrap().seconds >= 60, "{n:?}");
    let f = t.get_acme(&fail.item_id).await;
    assert_eq!(f.state, pb::State::Failed as i32, "{f:?}");
    assert!(f.last_error.contains("late"), "{f:?}");
    assert_eq!(
        t.get_acme(&send.item_id).await.state,
        pb::State::Pending as i32
    );
    // SEND goes out late, and says by how much.
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let job = c.next_job().await;
    assert_eq!(job_item(&job), send.item_id);
    c.ack(&job, "ok").await;
    let sent = wait_state(&t.client, "acme", &send.item_id, pb::State::Sent).await;
    assert_eq!(sent.late_by.as_ref().unwrap().seconds, 120);
    t.stop().await;
}

#[tokio::test]
async fn an_item_whose_lateness_passed_while_the_server_was_down_gets_its_policy_at_start_up() {
    let mut t = TestServer::start().await;
    let item = t
        .schedule(lateness(
            chat_reply("acme", "T1", T0 + 10_000),
            60_000,
            pb::OnLate::ConvertToNote,
        ))
        .await;
    let on_time = t.schedule(chat_reply("acme", "T2", T0 + 10_000)).await;
    t.stop().await;
    t.advance(Duration::from_secs(3_600));
    t.restart().await;
    t.settle().await;
    let it = t.get_acme(&item.item_id).await;
    assert_eq!(it.state, pb::State::ConvertedToNote as i32, "{it:?}");
    assert_eq!(
        t.get_acme(&on_time.item_id).await.state,
        pb::State::Pending as i32
    );
    t.stop().await;
}

#[tokio::test]
async fn a_paused_item_past_its_max_lateness_is_failed_and_not_sent_on_resume() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    pause(&t, "acme", pb::Channel::Unspecified).await;
    let late = t
        .schedule(lateness(
            email_reply("acme", "T1", T0 + 1_000),
            30_000,
            pb::OnLate::Fail,
        ))
        .await;
    let ok = t.schedule(email_reply("acme", "T2", T0 + 1_000)).await;
    t.advance(Duration::from_secs(60));
    t.settle().await;
    resume(&t, "acme", pb::Channel::Unspecified).await;
    let job = c.next_job().await;
    assert_eq!(job_item(&job), ok.item_id);
    c.ack(&job, "ok").await;
    wait_state(&t.client, "acme", &ok.item_id, pb::State::Sent).await;
    let l = t.get_acme(&late.item_id).await;
    assert_eq!(l.state, pb::State::Failed as i32, "{l:?}");
    t.stop().await;
}

#[tokio::test]
async fn reschedule_with_a_local_time_applies_the_window_again() {
    let mut t = TestServer::start().await;
    set_hours(&t, moscow_week(&[])).await;
    let item = t
        .schedule(business(email_reply("acme", "T1", T0 + HOUR)))
        .await;
    let r = t
        .client
        .clone()
        .reschedule(pb::RescheduleRequest {
            account_id: "acme".into(),
            item_id: item.item_id.clone(),
            send_at_local: local("2026-11-28T20:00", "Europe/Moscow"),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    // Saturday 20:00 Moscow -> Monday 09:00 Moscow.
    assert_eq!(ms(&r.send_at), T0 + 5 * 24 * HOUR - 6 * HOUR);
    assert_eq!(
        r.send_at_local,
        local("2026-11-28T20:00:00", "Europe/Moscow")
    );
    assert_eq!(ms(&r.requested_send_at), T0 + 77 * HOUR);
    t.stop().await;
}

#[tokio::test]
async fn an_operator_pause_of_a_channel_holds_every_account_and_shows_in_metrics() {
    let mut t =
        TestServer::start_with(|c| c.metrics_listen = Some("127.0.0.1:0".parse().unwrap())).await;
    let mut c =
        TestConnector::connect(&t.url(), &[pb::Channel::Email, pb::Channel::Chat], 10).await;
    // The provider is down: every account's email waits, chat flows.
    pause(&t, "*", pb::Channel::Email).await;
    let a = t.schedule(email_reply("acme", "T1", T0 + 1_000)).await;
    let b = t.schedule(email_reply("globex", "T2", T0 + 1_000)).await;
    let chat = t.schedule(chat_reply("acme", "T3", T0 + 1_000)).await;
    // A rate limit holds back the rest of a burst.
    t.client
        .clone()
        .set_rate_limit(pb::SetRateLimitRequest {
            account_id: "initech".into(),
            channel: pb::Channel::Chat as i32,
            per_minute: 1,
        })
        .await
        .unwrap();
    for i in 0..3 {
        t.schedule(chat_reply("initech", &format!("I{i}"), T0 + 1_000))
            .await;
    }
    t.advance(Duration::from_secs(1));
    let mut got = Vec::new();
    for _ in 0..2 {
        let job = c.next_job().await;
        got.push(job_item(&job));
        c.ack(&job, "ok").await;
    }
    assert!(got.contains(&chat.item_id), "{got:?}");
    t.settle().await;
    let addr = t.running().metrics_addr().expect("metrics on");
    let body = scrape_metrics(addr).await;
    assert_eq!(
        metric_value(&body, "sendlater_held_back{reason=\"pause\"}"),
        2.0
    );
    assert_eq!(
        metric_value(&body, "sendlater_held_back{reason=\"rate_limit\"}"),
        2.0
    );
    for id in [&a.item_id, &b.item_id] {
        let account = if id == &a.item_id { "acme" } else { "globex" };
        let it = t
            .client
            .clone()
            .get_item(item_ref(account, id))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(it.state, pb::State::Pending as i32);
    }
    resume(&t, "*", pb::Channel::Email).await;
    let mut rest = Vec::new();
    for _ in 0..2 {
        let job = c.next_job().await;
        rest.push(job_item(&job));
        c.ack(&job, "ok").await;
    }
    rest.sort();
    let mut want = vec![a.item_id.clone(), b.item_id.clone()];
    want.sort();
    assert_eq!(rest, want);
    t.stop().await;
}

#[tokio::test]
async fn a_pause_of_every_account_shows_in_each_accounts_controls_and_a_rate_limit_needs_one_account(
) {
    let mut t = TestServer::start().await;
    pause(&t, "*", pb::Channel::Email).await;
    assert_eq!(
        controls(&t, "acme").await.paused_channels,
        vec![pb::Channel::Email as i32]
    );
    let r = t
        .client
        .clone()
        .set_rate_limit(pb::SetRateLimitRequest {
            account_id: "*".into(),
            channel: pb::Channel::Chat as i32,
            per_minute: 1,
        })
        .await;
    assert_status(r, tonic::Code::InvalidArgument, "account_id:");
    assert!(controls(&t, "*").await.rate_limits.is_empty());
    t.stop().await;
}
