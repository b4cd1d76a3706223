//! The SQL the service really runs is answered from indexes, never by scanning `items`.
//!
//! The store records the text of every statement its connections run
//! (`sendlater::store::trace`); this test drives a real server through every listing,
//! filter, order and page, the lookups, the writes and a dispatch round, then runs
//! `EXPLAIN QUERY PLAN` on each recorded statement that touches `items`. So a query
//! changed in the code is checked as it is, with no copy here to keep in step.
mod common;
mod scheduler_helpers;

use common::*;
use rusqlite::{Connection, OpenFlags};
use scheduler_helpers::*;
use sendlater::pb;

/// The plan lines of `sql` (parameters bound to NULL: the plan does not depend on them).
fn plan(conn: &Connection, sql: &str) -> Vec<String> {
    let mut st = conn
        .prepare(&format!("EXPLAIN QUERY PLAN {sql}"))
        .unwrap_or_else(|e| panic!("prepare {sql}: {e}"));
    let n = st.parameter_count();
    let nulls = vec![rusqlite::types::Value::Null; n];
    let rows = st
        .query_map(rusqlite::params_from_iter(nulls), |r| r.get::<_, String>(3))
        .expect("explain");
    rows.collect::<Result<_, _>>().expect("plan rows")
}

/// Drives every read and write path the Scheduler and Dispatch offer.
async fn exercise(t: &mut TestServer) {
    for account in ["acme", "globex"] {
        let mut entries = Vec::new();
        for k in 0..120 {
            let mut req = email_reply(account, &format!("T{}", k % 10), T0 + HOUR + k * MINUTE);
            if k % 3 == 0 {
                req = chat_reply(account, &format!("T{}", k % 10), T0 + HOUR + k * MINUTE);
            }
            entries.push(reply_entry(req));
        }
        let items = batch(t, entries).await;
        cancel(t, account, &items[0].item_id).await;
        schedule_ticket(t, chat_reply(account, "NEW", T0 + HOUR)).await;
        let rid = with_request_id(email_reply(account, "R", T0 + HOUR), "req-1");
        schedule(t, rid.clone()).await;
        schedule(t, rid).await; // the idempotency lookup
    }
    t.advance(std::time::Duration::from_secs(1));
    record_activity(
        t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 500),
    )
    .await;
    // A dispatch round: lease, ack, nack, so SENT, FAILED and DISPATCHING rows exist.
    let mut c =
        TestConnector::connect(&t.url(), &[pb::Channel::Email, pb::Channel::Chat], 50).await;
    t.advance(std::time::Duration::from_secs(3_600 + 10 * 60));
    let first = c.next_job().await;
    let second = c.next_job().await;
    let _held = c.next_job().await;
    c.ack(&first, "<a@example.com>").await;
    c.nack(&second, "550 no such user", true).await;
    wait_state(&t.client, "acme", &job_item(&first), pb::State::Sent).await;
    // Every listing: state x order x filter combination, with a second page.
    let states = [
        pb::State::Unspecified,
        pb::State::Pending,
        pb::State::Dispatching,
        pb::State::Sent,
        pb::State::Failed,
        pb::State::Cancelled,
        pb::State::ConvertedToNote,
    ];
    for state in states {
        for order in [pb::Order::SendAtAsc, pb::Order::SendAtDesc] {
            for filter in 0..4 {
                let mut req = list_req("acme");
                req.state = state as i32;
                req.order = order as i32;
                req.page_size = 2;
                if filter >= 1 {
                    req.ticket_id = "T2".into();
                }
                if filter >= 2 {
                    req.channel = pb::Channel::Email as i32;
                    req.author_id = "agent-1".into();
                    req.kind = pb::Kind::Reply as i32;
                }
                if filter >= 3 {
                    req.send_at_from = Some(ts(T0));
                    req.send_at_to = Some(ts(T0 + 10 * HOUR));
                }
                let page = list(t, req.clone()).await;
                if !page.next_page_token.is_empty() {
                    req.page_token = page.next_page_token;
                    list(t, req).await;
                }
            }
        }
    }
    for order in [pb::Order::SendAtAsc, pb::Order::SendAtDesc] {
        all_tickets(t, "acme", order, 3).await;
    }
    for audience in [pb::Audience::Staff, pb::Audience::Client] {
        let _ = timeline(t, "acme", "T3", audience).await;
        let _ = timeline(t, "acme", "NEW", audience).await;
    }
    get(t, "acme", &job_item(&first)).await;
    t.running().engine().prune_events(1).await.expect("prune");
    drop(c);
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn every_statement_the_service_runs_reads_items_through_an_index() {
    sendlater::store::trace::start_recording();
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    exercise(&mut t).await;
    let conn = Connection::open_with_flags(
        t.db_path(),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the test database read-only");
    let recorded = sendlater::store::trace::recorded();
    let on_items: Vec<&String> = recorded
        .iter()
        .filter(|s| {
            let head = s.trim_start().to_uppercase();
            // Schema migrations are not queries.
            s.contains(" items")
                && !["CREATE", "DROP", "ALTER", "PRAGMA"]
                    .iter()
                    .any(|k| head.starts_with(k))
                && !s.contains(';')
        })
        .collect();
    // The workload reached every family of queries (else this test checks too little).
    for family in [
        "INDEXED BY items_live",
        "INDEXED BY items_done",
        "leases CROSS JOIN items",
        "INDEXED BY items_by_ticket",
        "request_id = ?",
        "UPDATE items",
        "INSERT INTO items",
    ] {
        assert!(
            on_items.iter().any(|s| s.contains(family)),
            "no recorded statement with {family:?}; recorded:\n{}",
            recorded.join("\n")
        );
    }
    let mut checked = 0;
    for sql in &on_items {
        let lines = plan(&conn, sql);
        // Start-up recovery reads every live item in items_live order: the one
        // statement that may scan (through that index, never the table alone); the
        // index covers it (schema v7 put `state` in it).
        let recovery = sql.contains("INDEXED BY items_live") && !sql.contains("account_id = ?");
        for l in &lines {
            let scans_items = l == "SCAN items" || l.starts_with("SCAN items ");
            assert!(
                !scans_items || (recovery && l.contains("COVERING INDEX items_live")),
                "a scan of items: {l:?} in {lines:?}\n{sql}"
            );
        }
        // ListScheduled reads an index in order. DISPATCHING sorts the leases (the jobs
        // out at connectors, bounded by their credit), by design; ListDeferredTickets
        // groups the account's live items by ticket and sorts the groups (known: O(live
        // items of the account) per page; a per-ticket summary would remove it).
        let listing = sql.contains("ORDER BY next_send_at");
        if listing && !sql.contains("leases CROSS JOIN items") {
            assert!(
                !lines.iter().any(|l| l.contains("TEMP B-TREE FOR ORDER BY")),
                "the listing sorts instead of reading an index in order: {lines:?}\n{sql}"
            );
        }
        if sql.contains("leases CROSS JOIN items") {
            assert!(
                lines.iter().any(|l| l.starts_with("SCAN leases")),
                "DISPATCHING must walk the leases: {lines:?}\n{sql}"
            );
        }
        checked += 1;
    }
    assert!(
        checked >= 20,
        "only {checked} statements on items were checked"
    );
    // Event pruning walks the sequence, never the table by time.
    let prune = recorded
        .iter()
        .find(|s| s.starts_with("DELETE FROM events"))
        .expect("the pruning statement ran");
    let lines = plan(&conn, prune);
    assert!(
        lines
            .iter()
            .any(|l| l.starts_with("SEARCH events USING INTEGER PRIMARY KEY")),
        "{lines:?}\n{prune}"
    );
    t.stop().await;
}
