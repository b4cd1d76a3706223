//! `sendlater migrate` (issue 20 item 4), run as a real process: a store built through
//! a real server (sent, failed, retrying, leased, cancelled, rescheduled, converted and
//! paused items, business hours, a pause and a rate limit) copied from SQLite to a
//! real PostgreSQL and back holds the same rows, and a server started on the copy
//! (SQLite or PostgreSQL) gives the same answers (GetItem, ListScheduled, ListDeferredTickets, timelines,
//! WatchEvents, hours, controls), with event sequences going on from the source's.
//! A non-empty target is refused and left unchanged (exit 64), a failed copy leaves
//! the target empty, progress and counts are printed, and no password ever is.
mod common;

use std::path::Path;
use std::process::Output;
use std::sync::Arc;
use std::time::Duration;

use common::*;
use sendlater::clock::ManualClock;
use sendlater::pb;

/// Runs `sendlater ARGS` to completion.
async fn sendlater(args: &[&str]) -> Output {
    let args: Vec<String> = args.iter().map(|s| s.to_string()).collect();
    tokio::task::spawn_blocking(move || {
        std::process::Command::new(env!("CARGO_BIN_EXE_sendlater"))
            .args(&args)
            .output()
            .expect("run sendlater")
    })
    .await
    .expect("join")
}

/// `sendlater migrate --from FROM --to TO [EXTRA]`, which must succeed; its stdout.
async fn migrate_ok(from: &str, to: &str, extra: &[&str]) -> (String, String) {
    let mut args = vec!["migrate", "--from", from, "--to", to];
    args.extend_from_slice(extra);
    let out = sendlater(&args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(0),
        "migrate {from} -> {to}\nstdout: {stdout}\nstderr: {stderr}"
    );
    (stdout, stderr)
}

/// The test server's URL with a password in it (trust authentication ignores it): a
/// password must never be printed.
const PASSWORD: &str = "pw-must-not-show-9f3c";

fn with_password(url: &str) -> String {
    let mut u = url::Url::parse(url).expect("url");
    u.set_password(Some(PASSWORD)).expect("password");
    u.to_string()
}

/// A server on the store at `db` (a path or a URL), on `clock`.
async fn serve_on(db: &str, clock: &ManualClock) -> TestServer {
    let db = db.to_owned();
    let clock = clock.clone();
    // start_sqlite_with: no fresh database is made for it; `db` says where it runs.
    TestServer::start_sqlite_with(move |c| {
        c.db_path = db.into();
        c.clock = Arc::new(clock);
    })
    .await
}

/// What a server answers about the store built by [`build_store`].
#[derive(Debug, PartialEq)]
struct Answers {
    items: Vec<pb::ScheduledItem>,
    lists: Vec<Vec<pb::ScheduledItem>>,
    deferred: Vec<pb::ListDeferredTicketsResponse>,
    timelines: Vec<pb::GetTicketTimelineResponse>,
    events: Vec<Vec<pb::ItemEvent>>,
    hours: pb::BusinessHours,
    controls: Vec<pb::DispatchControls>,
}

/// What [`build_store`] made: item ids, and each account's last item (its SCHEDULED
/// event is the account's last event).
struct Built {
    ids: Vec<(String, String)>,
    markers: Vec<(String, String)>,
    /// The item whose job was out at the connector when the server stopped.
    leased: String,
}

const ACCOUNTS: [&str; 2] = ["acme", "beta"];

/// Builds a store through the server: items in every state, business hours, a pause
/// and a rate limit.
async fn build_store(t: &TestServer) -> Built {
    let mut client = t.client.clone();
    let mut ids = Vec::new();
    let mut keep = |account: &str, item: &pb::ScheduledItem| {
        ids.push((account.to_string(), item.item_id.clone()));
        item.item_id.clone()
    };
    client
        .set_business_hours(pb::BusinessHours {
            account_id: "acme".into(),
            time_zone: "Europe/Moscow".into(),
            days: vec![pb::BusinessDay {
                weekday: 1,
                open: "09:00".into(),
                close: "18:00".into(),
            }],
            holidays: vec!["2026-12-31".into()],
        })
        .await
        .expect("hours");
    client
        .set_rate_limit(pb::SetRateLimitRequest {
            account_id: "beta".into(),
            channel: pb::Channel::Email as i32,
            per_minute: 30,
        })
        .await
        .expect("rate limit");
    client
        .pause_dispatch(pb::DispatchControlRequest {
            account_id: "acme".into(),
            channel: pb::Channel::Chat as i32,
        })
        .await
        .expect("pause");

    // Due in a second: sent, failed, retrying, left out at the connector.
    let sent = keep(
        "acme",
        &t.schedule(email_reply("acme", "T1", T0 + 1_000)).await,
    );
    let failed = keep(
        "acme",
        &t.schedule(email_reply("acme", "T1", T0 + 1_000)).await,
    );
    let retrying = keep(
        "acme",
        &t.schedule(email_reply("acme", "T2", T0 + 1_000)).await,
    );
    let leased = keep(
        "acme",
        &t.schedule(email_reply("acme", "T2", T0 + 1_000)).await,
    );
    // Paused: stays pending although due.
    keep(
        "acme",
        &t.schedule(chat_reply("acme", "T5", T0 + 1_000)).await,
    );
    // Later: cancelled, rescheduled with new text, converted to a note, pending.
    let cancelled = keep(
        "acme",
        &t.schedule(email_reply("acme", "T3", T0 + 3_600_000)).await,
    );
    let moved = keep(
        "acme",
        &t.schedule(email_reply("acme", "T3", T0 + 7_200_000)).await,
    );
    let mut note = email_reply("acme", "T4", T0 + 10_800_000);
    note.on_activity = pb::OnActivity::ConvertToNote as i32;
    keep("acme", &t.schedule(note).await);
    let mut idem = email_reply("beta", "T1", T0 + 18_000_000);
    idem.request_id = "req-1".into();
    keep("beta", &t.schedule(idem).await);
    keep(
        "beta",
        &t.schedule(chat_reply("beta", "T2", T0 + 20_000_000)).await,
    );

    client
        .cancel(item_ref("acme", &cancelled))
        .await
        .expect("cancel");
    client
        .reschedule(pb::RescheduleRequest {
            account_id: "acme".into(),
            item_id: moved.clone(),
            send_at: Some(ts(T0 + 9_000_000)),
            content: Some(pb::reschedule_request::Content::Email(pb::EmailContent {
                to: vec!["client@example.com".into()],
                subject: "Re: moved".into(),
                text_body: "A later, better answer.".into(),
                ..Default::default()
            })),
            ..Default::default()
        })
        .await
        .expect("reschedule");
    client
        .record_ticket_activity(pb::RecordTicketActivityRequest {
            account_id: "acme".into(),
            ticket_id: "T4".into(),
            author_kind: pb::AuthorKind::Client as i32,
            message_id: "client-msg-1".into(),
            occurred_at: Some(ts(T0 + 500)),
        })
        .await
        .expect("activity");

    let mut conn = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    t.advance(Duration::from_secs(1));
    for _ in 0..4 {
        let job = conn.next_job().await;
        let id = job_item(&job);
        if id == sent {
            conn.ack(&job, "prov-sent").await;
        } else if id == failed {
            conn.nack(&job, "mailbox does not exist", true).await;
        } else if id == retrying {
            conn.nack(&job, "try later", false).await;
        } else {
            assert_eq!(id, leased, "an unexpected job");
        }
    }
    wait_state(&t.client, "acme", &sent, pb::State::Sent).await;
    wait_state(&t.client, "acme", &failed, pb::State::Failed).await;
    wait_item(t, &retrying, "the retry", |i| {
        i.attempts == 1 && i.state == pb::State::Pending as i32
    })
    .await;
    wait_state(&t.client, "acme", &leased, pb::State::Dispatching).await;

    // Each account's last event: its marker's SCHEDULED.
    let mut markers = Vec::new();
    for account in ACCOUNTS {
        let m = t
            .schedule(email_reply(account, "T9", T0 + 30_000_000))
            .await;
        markers.push((account.to_string(), m.item_id.clone()));
        ids.push((account.to_string(), m.item_id));
    }
    t.settle().await;
    Built {
        ids,
        markers,
        leased,
    }
}

/// Every answer a client can get about the built store, once start-up's work (the
/// recovery of leases lost in a restart) is done.
async fn answers(t: &TestServer, built: &Built) -> Answers {
    t.settle().await;
    let mut client = t.client.clone();
    let mut items = Vec::new();
    for (account, id) in &built.ids {
        items.push(
            client
                .get_item(item_ref(account, id))
                .await
                .expect("get item")
                .into_inner(),
        );
    }
    let mut lists = Vec::new();
    let mut deferred = Vec::new();
    let mut timelines = Vec::new();
    let mut controls = Vec::new();
    for account in ACCOUNTS {
        for state in [
            pb::State::Pending,
            pb::State::Dispatching,
            pb::State::Sent,
            pb::State::Failed,
            pb::State::Cancelled,
            pb::State::ConvertedToNote,
        ] {
            lists.push(
                client
                    .list_scheduled(pb::ListScheduledRequest {
                        account_id: account.into(),
                        state: state as i32,
                        ..Default::default()
                    })
                    .await
                    .expect("list")
                    .into_inner()
                    .items,
            );
        }
        deferred.push(
            client
                .list_deferred_tickets(pb::ListDeferredTicketsRequest {
                    account_id: account.into(),
                    ..Default::default()
                })
                .await
                .expect("deferred")
                .into_inner(),
        );
        for ticket in ["T1", "T2", "T3", "T4", "T5", "T9"] {
            if let Ok(r) = client
                .get_ticket_timeline(pb::GetTicketTimelineRequest {
                    account_id: account.into(),
                    ticket_id: ticket.into(),
                    ..Default::default()
                })
                .await
            {
                timelines.push(r.into_inner());
            }
        }
        controls.push(
            client
                .get_dispatch_controls(pb::GetDispatchControlsRequest {
                    account_id: account.into(),
                })
                .await
                .expect("controls")
                .into_inner(),
        );
    }
    let mut events = Vec::new();
    for (account, marker) in &built.markers {
        events.push(events_until(t, account, 0, marker).await);
    }
    let hours = client
        .get_business_hours(pb::GetBusinessHoursRequest {
            account_id: "acme".into(),
        })
        .await
        .expect("hours")
        .into_inner();
    Answers {
        items,
        lists,
        deferred,
        timelines,
        events,
        hours,
        controls,
    }
}

/// The account's events after `after`, up to the SCHEDULED event of item `last`.
async fn events_until(t: &TestServer, account: &str, after: u64, last: &str) -> Vec<pb::ItemEvent> {
    let mut stream = t
        .client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            account_id: account.into(),
            after_sequence: after,
        })
        .await
        .expect("watch")
        .into_inner();
    let mut out = Vec::new();
    loop {
        let e = tokio::time::timeout(Duration::from_secs(10), stream.message())
            .await
            .expect("an event within 10 s")
            .expect("stream ok")
            .expect("stream open");
        let done = e.item.as_ref().is_some_and(|i| i.item_id == last)
            && e.r#type == pb::EventType::Scheduled as i32;
        out.push(e);
        if done {
            return out;
        }
    }
}

/// Every row of the SQLite file that a copy must carry, table by table, and where its
/// event sequence stands.
fn sqlite_rows(db: &Path) -> Vec<(String, Vec<Vec<rusqlite::types::Value>>)> {
    let c = rusqlite::Connection::open(db).expect("open");
    let mut out = Vec::new();
    for (name, sql) in [
        (
            "items",
            "SELECT id, account_id, ticket_id, kind, channel, author_id, content, send_at, \
          next_send_at, created_at, updated_at, state, on_activity, note_at, conv_author_kind, \
          conv_message_id, conv_occurred_at, attempts, last_error, next_attempt_at, sent_at, \
          provider_message_id, request_id, request_fp, timing FROM items ORDER BY id",
        ),
        (
            "leases",
            "SELECT item, expires_at FROM leases ORDER BY item",
        ),
        (
            "events",
            "SELECT seq, account_id, item_id, type, at, snapshot FROM events ORDER BY seq",
        ),
        (
            "business_hours",
            "SELECT account_id, spec, updated_at, rewindow_at, rewindow_id \
          FROM business_hours ORDER BY account_id",
        ),
        (
            "dispatch_controls",
            "SELECT account_id, channel, paused, per_minute \
          FROM dispatch_controls ORDER BY account_id, channel",
        ),
        (
            "sequence",
            "SELECT name, seq FROM sqlite_sequence WHERE name = 'events'",
        ),
    ] {
        let mut st = c.prepare(sql).expect(name);
        let n = st.column_count();
        let rows = st
            .query_map([], |r| {
                (0..n)
                    .map(|i| r.get::<_, rusqlite::types::Value>(i))
                    .collect()
            })
            .expect(name)
            .collect::<Result<Vec<_>, _>>()
            .expect(name);
        out.push((name.to_string(), rows));
    }
    out
}

async fn pg_client(url: &str) -> tokio_postgres::Client {
    let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
        .await
        .expect("connect to the test database");
    tokio::spawn(conn);
    client
}

/// Row counts of the data tables of a PostgreSQL database, and its store_meta.
async fn pg_counts(url: &str) -> Vec<(String, i64)> {
    let c = pg_client(url).await;
    let mut out = Vec::new();
    for table in [
        "items",
        "events",
        "business_hours",
        "dispatch_controls",
        "store_meta",
    ] {
        let n: i64 = c
            .query_one(&format!("SELECT COUNT(*) FROM {table}"), &[])
            .await
            .expect(table)
            .get(0);
        out.push((table.to_string(), n));
    }
    out
}

#[tokio::test]
async fn a_store_copied_to_postgresql_and_back_holds_the_same_rows_and_answers_the_same() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let built = build_store(&t).await;
    t.stop().await;
    // An item out at a connector (the stop may have kept its lease or given it back:
    // made certain here), and a business-hours re-resolution under way, as a crash
    // leaves it. Both are copied.
    let raw = rusqlite::Connection::open(t.db_path()).unwrap();
    raw.execute(
        "INSERT OR REPLACE INTO leases (item, expires_at) VALUES (?1, ?2)",
        [numeric_id(&built.leased), T0 + 600_000],
    )
    .unwrap();
    raw.execute(
        "UPDATE business_hours SET rewindow_at = ?1, rewindow_id = 0",
        [T0 + 1],
    )
    .unwrap();
    drop(raw);
    let original = t.db_path().to_string_lossy().into_owned();

    let pg = with_password(&pg::fresh_database().await);
    let (stdout, stderr) = migrate_ok(&original, &pg, &[]).await;
    for text in [&stdout, &stderr] {
        assert!(!text.contains(PASSWORD), "a password was printed: {text}");
    }
    assert!(
        stdout.contains("postgres:***@"),
        "the target, password hidden: {stdout}"
    );
    assert!(stdout.contains("counts equal on both sides"), "{stdout}");
    let items_line = stdout
        .lines()
        .find(|l| l.starts_with("items"))
        .unwrap_or_else(|| panic!("an items line: {stdout}"));
    assert!(items_line.contains(" 12 ("), "{items_line}");
    for s in [
        "CANCELLED 1",
        "CONVERTED_TO_NOTE 1",
        "DISPATCHING 1",
        "FAILED 1",
        "PENDING 7",
        "SENT 1",
    ] {
        assert!(items_line.contains(s), "{s} in {items_line}");
    }
    assert!(
        stdout.contains("business hours    1 (1 re-resolving)"),
        "{stdout}"
    );
    assert!(stdout.contains("dispatch controls 2"), "{stdout}");

    let back = t.dir.path().join("back.db");
    let back = back.to_string_lossy().into_owned();
    let (stdout_back, _) = migrate_ok(&pg, &back, &[]).await;
    assert_eq!(
        stdout.lines().skip(1).collect::<Vec<_>>(),
        stdout_back.lines().skip(1).collect::<Vec<_>>(),
        "the same counts both ways"
    );
    assert_eq!(
        sqlite_rows(Path::new(&original)),
        sqlite_rows(Path::new(&back)),
        "every row, lease, event, hours (with the cursor), control and the event sequence \
         came back as it was"
    );

    // A server on the copy answers as one on the original does.
    t.restart().await;
    let before = answers(&t, &built).await;
    t.stop().await;
    let mut copy = serve_on(&back, &t.clock).await;
    let after = answers(&copy, &built).await;
    assert_eq!(before.items, after.items);
    assert_eq!(before.lists, after.lists);
    assert_eq!(before.deferred, after.deferred);
    assert_eq!(before.timelines, after.timelines);
    assert_eq!(before.events, after.events);
    assert_eq!(before, after);
    // And so does one on the PostgreSQL copy (it too recovers the lease at start-up).
    let mut on_pg = serve_on(&pg, &t.clock).await;
    let after_pg = answers(&on_pg, &built).await;
    on_pg.stop().await;
    assert_eq!(
        before, after_pg,
        "a server on the PostgreSQL copy answers the same"
    );
    let leased = after
        .items
        .iter()
        .find(|i| i.item_id == built.leased)
        .unwrap();
    // The copy carried the lease: start-up recovered it as a lost one.
    assert_eq!(leased.last_error, "lease lost in a restart", "{leased:?}");

    // New events go on after the source's last sequence: a watch resumed there sees
    // the copy's own events next (start-up's recovery of the lease, the new item),
    // numbered from it, never a sequence used twice.
    let last = after
        .events
        .iter()
        .flatten()
        .map(|e| e.sequence)
        .max()
        .unwrap();
    let fresh = copy
        .schedule(email_reply("acme", "T7", T0 + 40_000_000))
        .await;
    let next = events_until(&copy, "acme", last, &fresh.item_id).await;
    let seqs: Vec<u64> = next.iter().map(|e| e.sequence).collect();
    let expected: Vec<u64> = (last + 1..=last + seqs.len() as u64).collect();
    assert_eq!(seqs, expected, "{next:?}");
    copy.stop().await;
}

/// A small store built through a server, stopped: acme's pending, cancelled and
/// rescheduled items, business hours and a pause; returns the server (its folder
/// holds the file) and acme's item ids.
async fn small_store() -> (TestServer, Vec<String>) {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    let mut client = t.client.clone();
    let mut ids = Vec::new();
    for i in 0..6 {
        let item = t
            .schedule(email_reply(
                "acme",
                &format!("T{}", i % 3),
                T0 + 3_600_000 * (i + 1),
            ))
            .await;
        ids.push(item.item_id);
    }
    client
        .cancel(item_ref("acme", &ids[1]))
        .await
        .expect("cancel");
    client
        .reschedule(pb::RescheduleRequest {
            account_id: "acme".into(),
            item_id: ids[2].clone(),
            send_at: Some(ts(T0 + 50_000_000)),
            ..Default::default()
        })
        .await
        .expect("reschedule");
    client
        .pause_dispatch(pb::DispatchControlRequest {
            account_id: "acme".into(),
            channel: pb::Channel::Email as i32,
        })
        .await
        .expect("pause");
    t.settle().await;
    t.stop().await;
    (t, ids)
}

fn path_str(p: &Path) -> String {
    p.to_string_lossy().into_owned()
}

/// `sendlater migrate ...` that must fail with `code`; its stderr.
async fn migrate_fails(from: &str, to: &str, code: i32) -> String {
    let out = sendlater(&["migrate", "--from", from, "--to", to]).await;
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(
        out.status.code(),
        Some(code),
        "migrate {from} -> {to}: stdout {} stderr {stderr}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(
        !stderr.contains(PASSWORD),
        "a password was printed: {stderr}"
    );
    stderr
}

#[tokio::test]
async fn a_non_empty_target_is_refused_with_exit_64_and_left_unchanged() {
    let (t, _) = small_store().await;
    let src = path_str(&t.db_path());

    // SQLite: a file holding a store already.
    let copy = t.dir.path().join("copy.db");
    migrate_ok(&src, &path_str(&copy), &[]).await;
    let bytes = std::fs::read(&copy).unwrap();
    let rows = sqlite_rows(&copy);
    let err = migrate_fails(&src, &path_str(&copy), 64).await;
    assert!(err.contains(&format!("--to {}", copy.display())), "{err}");
    assert!(err.contains("not empty (6 items, "), "{err}");
    assert!(err.contains("nothing was written"), "{err}");
    assert_eq!(
        std::fs::read(&copy).unwrap(),
        bytes,
        "the file is untouched"
    );
    assert_eq!(sqlite_rows(&copy), rows);

    // PostgreSQL: a database holding a store already.
    let url = pg::fresh_database().await;
    let pg = with_password(&url);
    migrate_ok(&src, &pg, &[]).await;
    let counts = pg_counts(&url).await;
    let err = migrate_fails(&path_str(&copy), &pg, 64).await;
    assert!(err.contains("--to postgres://postgres:***@"), "{err}");
    assert!(err.contains("not empty (6 items, "), "{err}");
    assert_eq!(pg_counts(&url).await, counts, "the database is untouched");

    // The source itself is never a target.
    let err = migrate_fails(&src, &src, 64).await;
    assert!(err.contains("the same store"), "{err}");
}

#[tokio::test]
async fn a_store_that_cannot_be_used_exits_64_naming_it_without_its_password() {
    let dir = tempfile::tempdir().unwrap();
    let target = dir.path().join("never.db");

    let missing = dir.path().join("missing.db");
    let err = migrate_fails(&path_str(&missing), &path_str(&target), 64).await;
    assert!(
        err.contains(&format!("--from {}", missing.display())),
        "{err}"
    );
    assert!(err.contains("no such file"), "{err}");

    let foreign = dir.path().join("notes.txt");
    std::fs::write(&foreign, "not a database, just some words to fill a page").unwrap();
    let err = migrate_fails(&path_str(&foreign), &path_str(&target), 64).await;
    assert!(
        err.contains(&format!("--from {}", foreign.display())),
        "{err}"
    );

    let empty_pg = pg::fresh_database().await;
    let err = migrate_fails(&with_password(&empty_pg), &path_str(&target), 64).await;
    assert!(err.contains("--from postgres://postgres:***@"), "{err}");
    assert!(err.contains("no sendlater schema"), "{err}");
    assert!(
        !target.exists(),
        "no target is created when the source cannot be read"
    );

    let (t, _) = small_store().await;
    let closed = format!("postgres://postgres:{PASSWORD}@127.0.0.1:1/sendlater");
    let err = migrate_fails(&path_str(&t.db_path()), &closed, 64).await;
    assert!(
        err.contains("--to postgres://postgres:***@127.0.0.1:1/sendlater: cannot connect"),
        "{err}"
    );
}

#[tokio::test]
async fn progress_lines_count_the_rows_up_to_the_total() {
    let (t, _) = small_store().await;
    let copy = t.dir.path().join("copy.db");
    let (_, stderr) = migrate_ok(
        &path_str(&t.db_path()),
        &path_str(&copy),
        &["--progress-every", "4"],
    )
    .await;
    // "migrate: copied 4/19 rows (21%), 1000 rows/s, items"
    let lines: Vec<(u64, u64)> = stderr
        .lines()
        .filter_map(|l| l.strip_prefix("migrate: copied "))
        .map(|l| {
            let (done, rest) = l.split_once('/').unwrap();
            let total = rest.split_once(' ').unwrap().0;
            (done.parse().unwrap(), total.parse().unwrap())
        })
        .collect();
    assert!(lines.len() >= 4, "a line every 4 rows: {stderr}");
    let total = lines[0].1;
    assert!(lines.iter().all(|l| l.1 == total), "{stderr}");
    assert!(
        lines.windows(2).all(|w| w[0].0 < w[1].0),
        "growing: {stderr}"
    );
    assert_eq!(
        lines.last().unwrap().0,
        total,
        "ends at the total: {stderr}"
    );
    assert_eq!(lines[0].0, 4, "{stderr}");
    // 6 items, their events, 0 business hours, 1 control.
    let events: u64 = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("SELECT COUNT(*) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(total, 6 + events + 1);
}

#[tokio::test]
async fn the_last_event_sequence_carries_over_when_every_event_was_pruned() {
    let (t, _) = small_store().await;
    let src = t.db_path();
    let raw = rusqlite::Connection::open(&src).unwrap();
    let last: i64 = raw
        .query_row(
            "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
            [],
            |r| r.get(0),
        )
        .unwrap();
    // Retention pruned every event (the rows reflect them all).
    raw.execute("DELETE FROM events", []).unwrap();
    drop(raw);

    let url = pg::fresh_database().await;
    let (stdout, _) = migrate_ok(&path_str(&src), &url, &[]).await;
    assert!(
        stdout.contains(&format!("last event seq    {last}")),
        "{stdout}"
    );
    let pruned: String = pg_client(&url)
        .await
        .query_one(
            "SELECT value FROM store_meta WHERE key = 'events_pruned_through'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    assert_eq!(pruned, last.to_string());

    // Back to SQLite, and SQLite to SQLite: the file's sequence stands at the source's.
    let back = t.dir.path().join("back.db");
    migrate_ok(&url, &path_str(&back), &[]).await;
    let direct = t.dir.path().join("direct.db");
    migrate_ok(&path_str(&src), &path_str(&direct), &[]).await;
    for copy in [&back, &direct] {
        let seq: i64 = rusqlite::Connection::open(copy)
            .unwrap()
            .query_row(
                "SELECT seq FROM sqlite_sequence WHERE name = 'events'",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(seq, last, "{}", copy.display());
    }

    // A server on the copy numbers its next event after the source's last.
    let mut copy = serve_on(&path_str(&back), &t.clock).await;
    let fresh = copy
        .schedule(email_reply("acme", "T8", T0 + 60_000_000))
        .await;
    let next = events_until(&copy, "acme", 0, &fresh.item_id).await;
    assert_eq!(next.len(), 1, "{next:?}");
    assert_eq!(next[0].sequence, last as u64 + 1);
    copy.stop().await;
}

#[tokio::test]
async fn a_copy_that_fails_half_way_leaves_the_target_empty_and_can_be_run_again() {
    let (t, _) = small_store().await;
    let src = t.db_path();
    // The newest event has a type PostgreSQL's smallint cannot hold: the items are
    // copied, then the events' COPY fails.
    let raw = rusqlite::Connection::open(&src).unwrap();
    let newest: i64 = raw
        .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))
        .unwrap();
    let kind: i64 = raw
        .query_row("SELECT type FROM events WHERE seq = ?1", [newest], |r| {
            r.get(0)
        })
        .unwrap();
    raw.execute("UPDATE events SET type = 70000 WHERE seq = ?1", [newest])
        .unwrap();

    let url = pg::fresh_database().await;
    let err = migrate_fails(&path_str(&src), &url, 1).await;
    assert!(err.contains("does not fit"), "{err}");
    assert!(err.contains("rolled back"), "{err}");
    assert!(
        pg_counts(&url).await.iter().all(|(_, n)| *n == 0),
        "nothing copied stays: {:?}",
        pg_counts(&url).await
    );

    // Fixed, the same (empty) target takes the copy.
    raw.execute("UPDATE events SET type = ?1 WHERE seq = ?2", [kind, newest])
        .unwrap();
    drop(raw);
    let (stdout, _) = migrate_ok(&path_str(&src), &url, &[]).await;
    assert!(stdout.contains("items             6 "), "{stdout}");

    // PostgreSQL to PostgreSQL too.
    let other = pg::fresh_database().await;
    migrate_ok(&url, &other, &[]).await;
    assert_eq!(pg_counts(&other).await, pg_counts(&url).await);
}

#[tokio::test]
async fn an_sqlite_source_whose_rows_lag_its_journal_is_copied_as_replayed_and_left_unchanged() {
    let (t, ids) = small_store().await;
    let src = t.db_path();
    let cancelled = numeric_id(&ids[1]);
    // As a stop that could not write rows back leaves it: the cancel is in the journal
    // (its event is past the watermark), the row still says PENDING.
    let raw = rusqlite::Connection::open(&src).unwrap();
    let cancel_seq: i64 = raw
        .query_row(
            "SELECT seq FROM events WHERE item_id = ?1 AND type = 7",
            [cancelled],
            |r| r.get(0),
        )
        .unwrap();
    raw.execute("UPDATE items SET state = 1 WHERE id = ?1", [cancelled])
        .unwrap();
    raw.execute("UPDATE sweep_mark SET swept_seq = ?1", [cancel_seq - 1])
        .unwrap();
    drop(raw);
    let before = sqlite_rows(&src);
    let mark = |p: &Path| -> i64 {
        rusqlite::Connection::open(p)
            .unwrap()
            .query_row("SELECT swept_seq FROM sweep_mark", [], |r| r.get(0))
            .unwrap()
    };

    let copy = t.dir.path().join("copy.db");
    let (stdout, _) = migrate_ok(&path_str(&src), &path_str(&copy), &[]).await;
    assert!(stdout.contains("CANCELLED 1"), "{stdout}");
    let state: i64 = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("SELECT state FROM items WHERE id = ?1", [cancelled], |r| {
            r.get(0)
        })
        .unwrap();
    assert_eq!(
        state,
        pb::State::Cancelled as i64,
        "the copy holds the replayed row"
    );

    assert_eq!(sqlite_rows(&src), before, "the source is left as it was");
    assert_eq!(mark(&src), cancel_seq - 1);
    let last: i64 = rusqlite::Connection::open(&copy)
        .unwrap()
        .query_row("SELECT MAX(seq) FROM events", [], |r| r.get(0))
        .unwrap();
    assert_eq!(mark(&copy), last, "the copy has nothing to replay");
}
