//! `sendlater migrate` (issue 20 item 4), run as a real process: a store built through
//! a real server (sent, failed, retrying, leased, cancelled, rescheduled, converted and
//! paused items, business hours, a pause and a rate limit) copied from SQLite to a
//! real PostgreSQL and back holds the same rows, and a server started on the copy
//! gives the same answers (GetItem, ListScheduled, ListDeferredTickets, timelines,
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
    TestServer::start_with(move |c| {
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

/// Every answer a client can get about the built store.
async fn answers(t: &TestServer, built: &Built) -> Answers {
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
    let mut t = TestServer::start().await;
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
