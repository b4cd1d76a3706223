//! The SQL behind the Scheduler's hot reads is answered from an index, never by
//! scanning `items`: checked with `EXPLAIN QUERY PLAN` on the file a real server wrote.
//!
//! The statements copy the shapes of `src/engine/queries.rs` and
//! `src/engine/commands.rs` (and the lookups of `src/store/rows.rs`); when those change,
//! change them here too.
mod common;
mod scheduler_helpers;

use common::*;
use rusqlite::{Connection, OpenFlags};
use scheduler_helpers::*;
use sendlater::pb;
use sendlater::store::rows::ITEM_COLUMNS;

/// A server with a few hundred items over several accounts, tickets and states, and a
/// read-only connection to its database.
async fn populated() -> (TestServer, Connection) {
    let mut t = TestServer::start().await;
    for account in ["acme", "globex", "initech"] {
        let mut entries = Vec::new();
        for k in 0..200 {
            let req = email_reply(account, &format!("T{}", k % 10), T0 + HOUR + k * MINUTE);
            entries.push(reply_entry(req));
        }
        let items = batch(&mut t, entries).await;
        cancel(&mut t, account, &items[0].item_id).await;
        schedule_ticket(&mut t, chat_reply(account, "NEW", T0 + HOUR)).await;
    }
    t.advance(std::time::Duration::from_secs(1));
    record_activity(
        &mut t,
        activity_req("acme", "T1", pb::AuthorKind::Client, "m", T0 + 500),
    )
    .await;
    let conn = Connection::open_with_flags(
        t.db_path(),
        OpenFlags::SQLITE_OPEN_READ_ONLY | OpenFlags::SQLITE_OPEN_NO_MUTEX,
    )
    .expect("open the test database read-only");
    (t, conn)
}

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

/// Every line that touches `items` searches it through `index`; no line scans it.
fn assert_searches(conn: &Connection, sql: &str, index: &str) -> Vec<String> {
    let lines = plan(conn, sql);
    let on_items: Vec<&String> = lines
        .iter()
        .filter(|l| l.contains(" items") || l.starts_with("items"))
        .collect();
    assert!(
        !on_items.is_empty(),
        "no plan line on items: {lines:?}\n{sql}"
    );
    for l in &on_items {
        assert!(
            l.starts_with("SEARCH items USING INDEX ")
                || l.starts_with("SEARCH items USING COVERING INDEX ")
                || l.starts_with("SEARCH items USING INTEGER PRIMARY KEY"),
            "not an index search: {l:?} in {lines:?}\n{sql}"
        );
        assert!(
            index.is_empty() || l.contains(index),
            "expected {index}: {l:?}\n{sql}"
        );
    }
    lines
}

fn list_sql(from: &str, state: &str, dir: &str, cmp: &str, filters: &str, cursor: bool) -> String {
    let cursor = if cursor {
        format!(" AND (next_send_at, id) {cmp} (?, ?)")
    } else {
        String::new()
    };
    format!(
        "SELECT {ITEM_COLUMNS}, next_send_at FROM {from} \
         WHERE account_id = ? AND {state}{filters}{cursor} \
         ORDER BY next_send_at {dir}, id {dir} LIMIT 101"
    )
}

const FILTERS: [&str; 3] = [
    "",
    " AND ticket_id = ?",
    " AND ticket_id = ? AND channel = ? AND author_id = ? AND kind = ? \
     AND next_send_at >= ? AND next_send_at < ?",
];

#[tokio::test]
async fn list_scheduled_searches_the_live_or_done_index_and_needs_no_sort() {
    let (mut t, conn) = populated().await;
    // The state terms list_items writes for PENDING and the finished states.
    let states = [
        (
            "items_live",
            "state IN (1, 2) AND NOT EXISTS (SELECT 1 FROM leases WHERE item = id)",
        ),
        ("items_done", "state NOT IN (1, 2) AND state = ?"),
    ];
    for (index, state) in states {
        for (dir, cmp) in [("ASC", ">"), ("DESC", "<")] {
            for filters in FILTERS {
                for cursor in [false, true] {
                    let from = format!("items INDEXED BY {index}");
                    let sql = list_sql(&from, state, dir, cmp, filters, cursor);
                    let lines = assert_searches(&conn, &sql, index);
                    assert!(
                        !lines.iter().any(|l| l.contains("TEMP B-TREE")),
                        "the listing sorts instead of reading the index in order: {lines:?}\n{sql}"
                    );
                }
            }
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn list_scheduled_dispatching_walks_the_leases_not_the_pending_items() {
    let (mut t, conn) = populated().await;
    for (dir, cmp) in [("ASC", ">"), ("DESC", "<")] {
        for filters in FILTERS {
            for cursor in [false, true] {
                let from = "leases CROSS JOIN items ON items.id = leases.item";
                let sql = list_sql(from, "state = 1", dir, cmp, filters, cursor);
                let lines = plan(&conn, &sql);
                assert!(
                    lines.iter().any(|l| l.starts_with("SCAN leases")),
                    "{lines:?}\n{sql}"
                );
                assert!(
                    lines
                        .iter()
                        .filter(|l| l.contains(" items"))
                        .all(|l| l.starts_with("SEARCH items USING INTEGER PRIMARY KEY")),
                    "items must be reached by id from each lease: {lines:?}\n{sql}"
                );
            }
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn list_deferred_tickets_searches_the_partial_deferred_index() {
    let (mut t, conn) = populated().await;
    for (dir, cmp) in [("ASC", ">"), ("DESC", "<")] {
        for having in [
            String::new(),
            format!("HAVING (next_at, ticket_id) {cmp} (?2, ?3)"),
        ] {
            let sql = format!(
                "SELECT ticket_id, MIN(next_send_at) AS next_at, COUNT(*) \
                 FROM items INDEXED BY items_deferred \
                 WHERE account_id = ?1 AND state IN (1, 2) GROUP BY ticket_id {having} \
                 ORDER BY next_at {dir}, ticket_id {dir} LIMIT 101"
            );
            assert_searches(&conn, &sql, "items_deferred");
        }
    }
    t.stop().await;
}

#[tokio::test]
async fn record_ticket_activity_searches_items_by_ticket() {
    let (mut t, conn) = populated().await;
    let candidates = format!(
        "SELECT {ITEM_COLUMNS} FROM items INDEXED BY items_by_ticket \
         WHERE account_id = ?1 AND ticket_id = ?2 AND created_at < ?3 \
         AND state = ?4 AND kind = ?5 ORDER BY created_at, id"
    );
    assert_searches(&conn, &candidates, "items_by_ticket");
    let ours = "SELECT EXISTS (SELECT 1 FROM items INDEXED BY items_by_ticket \
                WHERE account_id = ?1 AND ticket_id = ?2 \
                AND (id = ?3 OR provider_message_id = ?4))";
    assert_searches(&conn, ours, "items_by_ticket");
    t.stop().await;
}

#[tokio::test]
async fn the_ticket_timeline_searches_items_by_ticket() {
    let (mut t, conn) = populated().await;
    let sql = format!(
        "SELECT {ITEM_COLUMNS} FROM items INDEXED BY items_by_ticket \
         WHERE account_id = ?1 AND ticket_id = ?2"
    );
    assert_searches(&conn, &sql, "items_by_ticket");
    t.stop().await;
}

#[tokio::test]
async fn item_and_request_id_lookups_use_the_primary_key_and_the_request_index() {
    let (mut t, conn) = populated().await;
    let by_id = format!("SELECT {ITEM_COLUMNS} FROM items WHERE id = ?1 AND account_id = ?2");
    assert_searches(&conn, &by_id, "PRIMARY KEY");
    let by_request = format!(
        "SELECT {ITEM_COLUMNS}, request_fp FROM items WHERE account_id = ?1 AND request_id = ?2"
    );
    assert_searches(&conn, &by_request, "items_by_request");
    t.stop().await;
}
