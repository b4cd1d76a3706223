//! The "when it goes out" commands end to end: the real `sendlater` binary against a
//! real server (tests/common's `TestServer`), checked through its output and through
//! the gRPC API.
//!
//! The server's manual clock starts at 2026-11-25T12:00Z (a Wednesday), and every run of
//! the command line is given the same "now" (`SENDLATER_NOW`, [`NOW`]), so every date
//! here is fixed: the tests mean the same thing whatever day they run.
mod common;

use std::process::Command;

use chrono::DateTime;
use common::cli::{run_off_runtime, Run};
use common::*;
use sendlater::pb;

/// The command line's "now": the server's manual clock at start (`common::T0`).
const NOW: &str = "2026-11-25T12:00:00Z";

/// Runs `sendlater ARGS` against `t` as account `account`, off the runtime's thread so
/// the in-process server keeps serving meanwhile.
async fn cli_as(t: &TestServer, account: &str, args: &[&str]) -> Run {
    let mut command = Command::new(env!("CARGO_BIN_EXE_sendlater"));
    command
        .args(args)
        .env("SENDLATER_SERVER", t.url())
        .env("SENDLATER_ACCOUNT", account)
        .env("SENDLATER_NOW", NOW)
        .env_remove("SENDLATER_TZ")
        .env_remove("SENDLATER_TOKEN");
    run_off_runtime(command).await
}

async fn cli(t: &TestServer, args: &[&str]) -> Run {
    cli_as(t, "acme", args).await
}

async fn get_item(t: &TestServer, id: &str) -> pb::ScheduledItem {
    t.client
        .clone()
        .get_item(item_ref("acme", id))
        .await
        .expect("get item")
        .into_inner()
}

async fn controls(t: &TestServer) -> pb::DispatchControls {
    t.client
        .clone()
        .get_dispatch_controls(pb::GetDispatchControlsRequest {
            account_id: "acme".into(),
        })
        .await
        .expect("controls")
        .into_inner()
}

fn utc(s: &str) -> Option<prost_types::Timestamp> {
    let t = DateTime::parse_from_rfc3339(s)
        .expect("valid")
        .timestamp_millis();
    Some(ts(t))
}

/// `schedule` of a chat reply in ticket `ticket` with `extra` flags, printed as JSON.
async fn schedule(t: &TestServer, ticket: &str, extra: &[&str]) -> serde_json::Value {
    let base = [
        "schedule",
        "--ticket",
        ticket,
        "--channel",
        "chat",
        "--author",
        "ann",
        "--conversation",
        "c-1",
        "--text",
        "Good morning!",
        "--json",
    ];
    cli(t, &[&base[..], extra].concat()).await.json()
}

fn item_id(item: &serde_json::Value) -> String {
    item["item_id"].as_str().expect("an item id").to_owned()
}

/// Monday to Friday 09:00-18:00 in Moscow, set through the command line.
async fn set_weekday_hours(t: &TestServer) {
    cli(
        t,
        &[
            "hours",
            "set",
            "--tz",
            "Europe/Moscow",
            "--day",
            "1-5 09:00-18:00",
        ],
    )
    .await
    .ok();
}

#[tokio::test]
async fn hours_set_then_hours_get_show_the_same_table() {
    let mut t = TestServer::start().await;
    let missing = cli(&t, &["hours", "get"]).await;
    assert_eq!(missing.code, Some(1), "{}", missing.stderr);
    assert!(
        missing.stderr.contains("sendlater hours set"),
        "{}",
        missing.stderr
    );
    let bad = cli(
        &t,
        &["hours", "set", "--tz", "Europe/Moscow", "--day", "1-5 9-18"],
    )
    .await;
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
    assert!(
        bad.stderr.starts_with("error: --day \"1-5 9-18\": "),
        "{}",
        bad.stderr
    );

    let set = cli(
        &t,
        &[
            "hours",
            "set",
            "--tz",
            "Europe/Moscow",
            "--day",
            "1-5 09:00-13:00,14:00-18:00",
            "--day",
            "6 10:00-14:00",
            "--holiday",
            "2026-12-31",
        ],
    )
    .await
    .ok();
    let want = "\
time zone: Europe/Moscow
DAY          HOURS
1 Monday     09:00-13:00, 14:00-18:00
2 Tuesday    09:00-13:00, 14:00-18:00
3 Wednesday  09:00-13:00, 14:00-18:00
4 Thursday   09:00-13:00, 14:00-18:00
5 Friday     09:00-13:00, 14:00-18:00
6 Saturday   10:00-14:00
7 Sunday     closed
holidays:  2026-12-31
";
    assert_eq!(set, want);
    assert_eq!(cli(&t, &["hours", "get"]).await.ok(), want);
    let json = cli(&t, &["hours", "get", "--json"]).await.json();
    assert_eq!(json["account_id"], "acme");
    assert_eq!(json["days"].as_array().map(Vec::len), Some(11));
    assert_eq!(json["holidays"], serde_json::json!(["2026-12-31"]));
    t.stop().await;
}

#[tokio::test]
async fn a_wall_clock_time_with_tz_is_stored_with_its_zone_and_shown_beside_utc() {
    let mut t = TestServer::start().await;
    let (day, next) = ("2026-12-01", "2026-12-02");
    let item = schedule(
        &t,
        "T-1",
        &["--at", &format!("{day} 09:00"), "--tz", "Europe/Moscow"],
    )
    .await;
    let id = item_id(&item);
    let stored = get_item(&t, &id).await;
    assert_eq!(
        stored.send_at_local,
        Some(pb::LocalTime {
            local_time: format!("{day}T09:00:00"),
            time_zone: "Europe/Moscow".into(),
        })
    );
    assert_eq!(stored.send_at, utc(&format!("{day}T06:00:00Z")));
    assert_eq!(item["send_at_local"]["time_zone"], "Europe/Moscow");

    let shown = cli(&t, &["get", &id]).await.ok();
    let line = format!("\nsend at:         {day}T06:00:00Z ({day} 09:00 Europe/Moscow)\n");
    assert!(shown.contains(&line), "{line:?} missing in:\n{shown}");
    let line = format!("\nsend at local:   {day} 09:00 Europe/Moscow\n");
    assert!(shown.contains(&line), "{line:?} missing in:\n{shown}");
    let listed = cli(&t, &["list"]).await.ok();
    assert!(
        listed.lines().next().is_some_and(|h| h.contains(" LOCAL ")),
        "{listed}"
    );
    let cell = format!("{day}T06:00:00Z  {day} 09:00 Europe/Moscow  ");
    assert!(listed.contains(&cell), "{cell:?} missing in:\n{listed}");

    // RFC 3339 and --in are instants: no local time on record, even with --tz.
    let rfc = format!("{day}T09:00:00+03:00");
    let rfc = schedule(&t, "T-2", &["--at", &rfc, "--tz", "Europe/Moscow"]).await;
    let stored = get_item(&t, &item_id(&rfc)).await;
    assert_eq!(stored.send_at_local, None);
    assert_eq!(stored.send_at, utc(&format!("{day}T06:00:00Z")));
    let relative = schedule(&t, "T-3", &["--in", "2h", "--tz", "Europe/Moscow"]).await;
    let stored = get_item(&t, &item_id(&relative)).await;
    assert_eq!(stored.send_at_local, None);
    assert_eq!(stored.send_at, utc("2026-11-25T14:00:00Z"), "now + 2h");
    // Without --tz a wall-clock time is UTC, sent as an instant.
    let plain = schedule(&t, "T-4", &["--at", &format!("{day} 09:00")]).await;
    let stored = get_item(&t, &item_id(&plain)).await;
    assert_eq!(stored.send_at_local, None);
    assert_eq!(stored.send_at, utc(&format!("{day}T09:00:00Z")));

    // Reschedule with a local time keeps the zone too.
    let at = format!("{next} 10:30");
    cli(&t, &["reschedule", &id, "--at", &at, "--tz", "Asia/Tokyo"])
        .await
        .ok();
    let moved = get_item(&t, &id).await;
    assert_eq!(moved.send_at, utc(&format!("{next}T01:30:00Z")));
    assert_eq!(
        moved.send_at_local.map(|l| (l.local_time, l.time_zone)),
        Some((format!("{next}T10:30:00"), "Asia/Tokyo".into()))
    );
    t.stop().await;
}

#[tokio::test]
async fn business_hours_and_the_lateness_policy_are_sent_and_shown() {
    let mut t = TestServer::start().await;
    let refused = cli(
        &t,
        &[
            "schedule",
            "--ticket",
            "T-0",
            "--channel",
            "chat",
            "--author",
            "ann",
            "--conversation",
            "c",
            "--text",
            "x",
            "--in",
            "1h",
            "--business-hours",
        ],
    )
    .await;
    assert_eq!(refused.code, Some(1), "{}", refused.stderr);
    assert!(
        refused
            .stderr
            .contains("FAILED_PRECONDITION: delivery_window:")
            && refused.stderr.contains("sendlater hours set"),
        "{}",
        refused.stderr
    );
    set_weekday_hours(&t).await;
    // Saturday 20:00 Moscow moves to Monday 09:00 (06:00Z).
    let (saturday, monday) = ("2026-11-28", "2026-11-30");
    let item = schedule(
        &t,
        "T-1",
        &[
            "--at",
            &format!("{saturday} 20:00"),
            "--tz",
            "Europe/Moscow",
            "--business-hours",
            "--max-lateness",
            "30m",
            "--on-late",
            "fail",
        ],
    )
    .await;
    let id = item_id(&item);
    let stored = get_item(&t, &id).await;
    assert_eq!(stored.send_at, utc(&format!("{monday}T06:00:00Z")));
    assert_eq!(
        stored.requested_send_at,
        utc(&format!("{saturday}T17:00:00Z"))
    );
    assert_eq!(
        stored.delivery_window,
        pb::DeliveryWindow::BusinessHours as i32
    );
    assert_eq!(stored.max_lateness.map(|d| d.seconds), Some(1_800));
    assert_eq!(stored.on_late, pb::OnLate::Fail as i32);
    assert_eq!(item["delivery_window"], "BUSINESS_HOURS");
    assert_eq!(item["max_lateness"], "1800s");
    assert_eq!(item["on_late"], "FAIL");

    let shown = cli(&t, &["get", &id]).await.ok();
    for line in [
        format!("\nsend at:         {monday}T06:00:00Z ({monday} 09:00 Europe/Moscow)\n"),
        format!("\nsend at local:   {saturday} 20:00 Europe/Moscow\n"),
        format!("\nrequested at:    {saturday}T17:00:00Z ({saturday} 20:00 Europe/Moscow)\n"),
        "\ndelivery window: BUSINESS_HOURS\n".to_owned(),
        "\nmax lateness:    30m\n".to_owned(),
        "\non late:         FAIL\n".to_owned(),
    ] {
        assert!(shown.contains(&line), "{line:?} missing in:\n{shown}");
    }
    t.stop().await;
}

#[tokio::test]
async fn next_business_morning_is_the_next_opening_of_the_accounts_hours() {
    let mut t = TestServer::start().await;
    let none = cli(
        &t,
        &[
            "schedule",
            "--ticket",
            "T-0",
            "--channel",
            "chat",
            "--author",
            "ann",
            "--conversation",
            "c",
            "--text",
            "x",
            "--at",
            "next business morning",
        ],
    )
    .await;
    assert_eq!(none.code, Some(1), "{}", none.stderr);
    assert!(
        none.stderr.contains("sendlater hours set"),
        "{}",
        none.stderr
    );

    set_weekday_hours(&t).await;
    // Now is Wednesday 15:00 in Moscow: the next business morning is Thursday 09:00.
    let item = schedule(&t, "T-1", &["--at", "next business morning"]).await;
    let stored = get_item(&t, &item_id(&item)).await;
    assert_eq!(stored.send_at, utc("2026-11-26T06:00:00Z"));
    assert_eq!(
        stored.delivery_window,
        pb::DeliveryWindow::BusinessHours as i32
    );
    assert_eq!(stored.send_at_local, None);
    t.stop().await;
}

#[tokio::test]
async fn pause_controls_and_resume_change_the_dispatch_controls() {
    let mut t = TestServer::start().await;
    let empty = cli(&t, &["controls"]).await.ok();
    assert_eq!(
        empty,
        "account: acme\nCHANNEL  DISPATCH  RATE LIMIT\nEMAIL    running   -\nCHAT     running   -\n"
    );
    let paused = cli(&t, &["pause", "--channel", "email"]).await.ok();
    assert!(paused.contains("\nEMAIL    paused    -\n"), "{paused}");
    assert!(paused.contains("\nCHAT     running   -\n"), "{paused}");
    assert_eq!(
        controls(&t).await.paused_channels,
        vec![pb::Channel::Email as i32]
    );
    cli(&t, &["pause"]).await.ok();
    let mut both = controls(&t).await.paused_channels;
    both.sort_unstable();
    assert_eq!(
        both,
        vec![pb::Channel::Email as i32, pb::Channel::Chat as i32]
    );
    let json = cli(&t, &["controls", "--json"]).await.json();
    assert_eq!(json["paused_channels"].as_array().map(Vec::len), Some(2));
    let resumed = cli(&t, &["resume", "--channel", "email"]).await.ok();
    assert!(resumed.contains("\nEMAIL    running   -\n"), "{resumed}");
    assert!(resumed.contains("\nCHAT     paused    -\n"), "{resumed}");
    cli(&t, &["resume"]).await.ok();
    assert!(controls(&t).await.paused_channels.is_empty());
    t.stop().await;
}

#[tokio::test]
async fn rate_limit_sets_a_limit_per_channel_and_zero_removes_it() {
    let mut t = TestServer::start().await;
    let set = cli(
        &t,
        &["rate-limit", "--channel", "chat", "--per-minute", "60"],
    )
    .await
    .ok();
    assert!(set.contains("\nCHAT     running   60/min\n"), "{set}");
    assert!(set.contains("\nEMAIL    running   -\n"), "{set}");
    let limits = controls(&t).await.rate_limits;
    assert_eq!(
        limits,
        vec![pb::RateLimit {
            channel: pb::Channel::Chat as i32,
            per_minute: 60
        }]
    );
    let shown = cli(&t, &["controls"]).await.ok();
    assert!(shown.contains("\nCHAT     running   60/min\n"), "{shown}");
    let bad = cli(
        &t,
        &["rate-limit", "--channel", "chat", "--per-minute", "many"],
    )
    .await;
    assert_eq!(bad.code, Some(64), "{}", bad.stderr);
    cli(
        &t,
        &["rate-limit", "--channel", "chat", "--per-minute", "0"],
    )
    .await
    .ok();
    assert!(controls(&t).await.rate_limits.is_empty());
    t.stop().await;
}
