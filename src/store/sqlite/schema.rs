//! The schema and its migrations, versioned with `PRAGMA user_version`.
//!
//! Each migration runs once, in order, inside one transaction with the version bump.
//! A file whose version is newer than this build knows is refused (we would not know
//! what its columns mean), never "downgraded".

use rusqlite::Connection;

use super::StoreError;

/// Migrations; index `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: items and the events outbox.
    r#"
    CREATE TABLE items (
        id                  INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id          TEXT    NOT NULL,
        ticket_id           TEXT    NOT NULL,
        kind                INTEGER NOT NULL,
        channel             INTEGER NOT NULL,
        author_id           TEXT    NOT NULL,
        content             BLOB    NOT NULL,
        send_at             INTEGER NOT NULL,
        -- next_attempt_at between attempts, else send_at: listings sort on it, and it
        -- is the wheel deadline of a PENDING item.
        next_send_at        INTEGER NOT NULL,
        created_at          INTEGER NOT NULL,
        updated_at          INTEGER NOT NULL,
        state               INTEGER NOT NULL,
        on_activity         INTEGER NOT NULL,
        note_at             INTEGER,
        conv_author_kind    INTEGER,
        conv_message_id     TEXT,
        conv_occurred_at    INTEGER,
        attempts            INTEGER NOT NULL DEFAULT 0,
        last_error          TEXT,
        next_attempt_at     INTEGER,
        lease_expires_at    INTEGER,
        sent_at             INTEGER,
        provider_message_id TEXT,
        request_id          TEXT,
        request_fp          INTEGER
    );
    -- ListScheduled: one account, one state, in next-send order.
    CREATE INDEX items_by_state ON items(account_id, state, next_send_at, id);
    -- Timeline and ticket activity.
    CREATE INDEX items_by_ticket ON items(account_id, ticket_id, created_at);
    -- ListDeferredTickets (PENDING + DISPATCHING only, so it stays small).
    CREATE INDEX items_deferred ON items(account_id, ticket_id, next_send_at)
        WHERE state IN (1, 2);
    -- Start-up recovery reads (id, next_send_at) of live items from this index alone.
    CREATE INDEX items_live ON items(next_send_at) WHERE state IN (1, 2);
    -- Idempotency keys, one namespace per account.
    CREATE UNIQUE INDEX items_by_request ON items(account_id, request_id)
        WHERE request_id IS NOT NULL;

    CREATE TABLE events (
        seq        INTEGER PRIMARY KEY AUTOINCREMENT,
        account_id TEXT    NOT NULL,
        item_id    INTEGER NOT NULL,
        type       INTEGER NOT NULL,
        at         INTEGER NOT NULL,
        -- The item as it was right after the change (encoded ItemSnapshot).
        snapshot   BLOB    NOT NULL
    );
    CREATE INDEX events_by_account ON events(account_id, seq);
    "#,
    // 2: the recovery index covers the recovery query (id, next_send_at, state), so a
    // restart reads only the index, never the rows (measured 1.86 s -> 0.65 s at 1M).
    r#"
    DROP INDEX items_live;
    CREATE INDEX items_live ON items(next_send_at, state) WHERE state IN (1, 2);
    "#,
    // 3: a lease is a row of its own, not a rewrite of the item. Leasing used to update
    // the item (state, attempts, lease time: a random table page and three index
    // entries per delivery); now the item row stays PENDING and untouched until the
    // outcome, and DISPATCHING is "PENDING with a lease row", the attempt in flight
    // being attempts + 1. The table holds only the jobs out at connectors, so its few
    // pages stay hot. items.lease_expires_at is no longer written.
    r#"
    CREATE TABLE leases (
        item       INTEGER PRIMARY KEY,
        expires_at INTEGER NOT NULL
    );
    INSERT INTO leases (item, expires_at)
        SELECT id, COALESCE(lease_expires_at, 0) FROM items WHERE state = 2;
    UPDATE items SET state = 1, attempts = attempts - 1, lease_expires_at = NULL
        WHERE state = 2;
    "#,
    // 4: fewer index entries to move per state change, one recovery scan. Live items
    // (PENDING, DISPATCHING) are listed and recovered from items_live, finished ones
    // listed from items_done; items_by_state (every row, keyed on the state) went. A
    // schedule now writes 3 index entries instead of 4, an outcome or cancel moves 3
    // instead of 4, a reschedule or retry 4 instead of 6; start-up reads ids, times
    // and the per-account counts in one pass over items_live.
    r#"
    DROP INDEX items_by_state;
    DROP INDEX items_live;
    CREATE INDEX items_live ON items(account_id, next_send_at) WHERE state IN (1, 2);
    CREATE INDEX items_done ON items(account_id, state, next_send_at) WHERE state NOT IN (1, 2);
    "#,
    // 5: when it goes out. `timing` holds what an item asked of its send time (local
    // time and zone, delivery window, requested instant, lateness policy, late_by) in a
    // small encoded blob, NULL for the default (most items): one column, no index.
    // Accounts' business hours and dispatch controls (pause, rate limit) are tiny
    // tables read at start-up and on change.
    r#"
    ALTER TABLE items ADD COLUMN timing BLOB;
    CREATE TABLE business_hours (
        account_id TEXT    PRIMARY KEY,
        spec       TEXT    NOT NULL,
        updated_at INTEGER NOT NULL
    ) WITHOUT ROWID;
    CREATE TABLE dispatch_controls (
        account_id TEXT    NOT NULL,
        channel    INTEGER NOT NULL,
        paused     INTEGER NOT NULL DEFAULT 0,
        per_minute INTEGER NOT NULL DEFAULT 0,
        PRIMARY KEY (account_id, channel)
    ) WITHOUT ROWID;
    "#,
    // 6: the journal layout. A change to an item appends its event (whose snapshot now
    // carries the timing, and the content on UPDATED) and is written back to `items`
    // and `leases` later, sorted and in bulk, by a sweep; `swept_seq` is the last
    // event the rows reflect, and start-up replays the events after it. A file
    // written by v5 reflects every event already.
    r#"
    CREATE TABLE sweep_mark (
        id        INTEGER PRIMARY KEY CHECK (id = 1),
        swept_seq INTEGER NOT NULL
    );
    INSERT INTO sweep_mark (id, swept_seq) SELECT 1, COALESCE(MAX(seq), 0) FROM events;
    "#,
    // 7: one live index instead of two. items_deferred (account, ticket, time) served
    // only ListDeferredTickets, which groups every live item of the account anyway; it
    // reads items_live now, which carries the ticket and the state (so that listing
    // and start-up recovery read the index alone) and the id (so listings still read
    // it in (next_send_at, id) order). A schedule writes 2 random index entries
    // instead of 3, and a finished item moves 2 instead of 3.
    r#"
    DROP INDEX items_deferred;
    DROP INDEX items_live;
    CREATE INDEX items_live ON items(account_id, next_send_at, id, ticket_id, state)
        WHERE state IN (1, 2);
    "#,
    // 8: business hours are re-resolved in bounded chunks after a change (not in one
    // write holding the writer for every tenant): where the account's walk of its live
    // items stands, in (next_send_at, id) order; NULL when none is under way. Start-up
    // resumes a walk a stop interrupted.
    r#"
    ALTER TABLE business_hours ADD COLUMN rewindow_at INTEGER;
    ALTER TABLE business_hours ADD COLUMN rewindow_id INTEGER;
    "#,
];

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// Brings the database to [`SCHEMA_VERSION`].
///
/// # Errors
/// [`StoreError::NewerSchema`] for a file written by a newer sendlater, or a SQLite error.
pub fn migrate(conn: &mut Connection) -> Result<(), StoreError> {
    let version: i64 = conn.query_row("PRAGMA user_version", [], |r| r.get(0))?;
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    migrate_to(conn, version, SCHEMA_VERSION)
}

/// Applies the migrations that take `from` to `to`.
fn migrate_to(conn: &mut Connection, from: i64, to: i64) -> Result<(), StoreError> {
    for (i, sql) in MIGRATIONS
        .iter()
        .enumerate()
        .take(to as usize)
        .skip(from as usize)
    {
        let tx = conn.transaction()?;
        tx.execute_batch(sql)?;
        tx.pragma_update(None, "user_version", i as i64 + 1)?;
        tx.commit()?;
        tracing::info!(version = i + 1, "applied schema migration");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migrating_twice_is_a_no_op_and_sets_the_version() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate(&mut c).unwrap();
        migrate(&mut c).unwrap();
        let v: i64 = c
            .query_row("PRAGMA user_version", [], |r| r.get(0))
            .unwrap();
        assert_eq!(v, SCHEMA_VERSION);
    }

    #[test]
    fn v3_turns_a_dispatching_row_into_a_pending_row_with_a_lease() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate_to(&mut c, 0, 2).unwrap();
        c.execute_batch(
            "INSERT INTO items (id, account_id, ticket_id, kind, channel, author_id, content, \
             send_at, next_send_at, created_at, updated_at, state, on_activity, attempts, \
             lease_expires_at) VALUES \
             (7, 'a', 't', 1, 1, 'u', x'', 10, 10, 1, 1, 2, 1, 3, 5000), \
             (8, 'a', 't', 1, 1, 'u', x'', 20, 20, 1, 1, 1, 1, 0, NULL)",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let rows: Vec<(i64, i64, i64, Option<i64>)> = c
            .prepare(
                "SELECT id, state, attempts, (SELECT expires_at FROM leases WHERE item = id) \
                 FROM items ORDER BY id",
            )
            .unwrap()
            .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        // Attempt 3 was in flight: two ended, the lease keeps the third.
        assert_eq!(rows, vec![(7, 1, 2, Some(5000)), (8, 1, 0, None)]);
    }

    #[test]
    fn v5_keeps_the_items_of_a_v4_file_and_adds_their_timing_as_default() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate_to(&mut c, 0, 4).unwrap();
        c.execute_batch(
            "INSERT INTO items (id, account_id, ticket_id, kind, channel, author_id, content, \
             send_at, next_send_at, created_at, updated_at, state, on_activity, attempts) \
             VALUES (7, 'a', 't', 1, 1, 'u', x'', 10, 10, 1, 1, 1, 1, 0)",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let (id, timing): (i64, Option<Vec<u8>>) = c
            .query_row("SELECT id, timing FROM items", [], |r| {
                Ok((r.get(0)?, r.get(1)?))
            })
            .unwrap();
        assert_eq!((id, timing), (7, None));
        let tables: i64 = c
            .query_row(
                "SELECT COUNT(*) FROM sqlite_master WHERE name IN \
                 ('business_hours', 'dispatch_controls')",
                [],
                |r| r.get(0),
            )
            .unwrap();
        assert_eq!(tables, 2);
    }

    /// A file written by v4 or v5 reflects every event on its rows: the watermark
    /// starts at its last event, so a start-up replays nothing of it.
    #[test]
    fn v6_starts_the_sweep_watermark_at_the_last_event_of_an_older_file() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate_to(&mut c, 0, 4).unwrap();
        c.execute_batch(
            "INSERT INTO items (id, account_id, ticket_id, kind, channel, author_id, content, \
             send_at, next_send_at, created_at, updated_at, state, on_activity, attempts) \
             VALUES (7, 'a', 't', 1, 1, 'u', x'', 10, 10, 1, 1, 5, 1, 0); \
             INSERT INTO events (account_id, item_id, type, at, snapshot) VALUES \
             ('a', 7, 1, 1, x''), ('a', 7, 7, 2, x'');",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let mark: i64 = c
            .query_row("SELECT swept_seq FROM sweep_mark", [], |r| r.get(0))
            .unwrap();
        assert_eq!(mark, 2);
        assert_eq!(super::super::rows::replay(&c).unwrap(), 0);
        let state: i64 = c
            .query_row("SELECT state FROM items WHERE id = 7", [], |r| r.get(0))
            .unwrap();
        assert_eq!(state, 5, "the row is kept as it was");
    }

    /// v7: the live items of a v6 file are listed by ticket from the one live index
    /// left (items_deferred is gone), covering: the rows are not read.
    #[test]
    fn v7_lists_deferred_tickets_of_a_v6_file_from_items_live_alone() {
        let mut c = Connection::open_in_memory().unwrap();
        migrate_to(&mut c, 0, 6).unwrap();
        c.execute_batch(
            "INSERT INTO items (id, account_id, ticket_id, kind, channel, author_id, content, \
             send_at, next_send_at, created_at, updated_at, state, on_activity, attempts) VALUES \
             (1, 'a', 't2', 1, 1, 'u', x'', 30, 30, 1, 1, 1, 1, 0), \
             (2, 'a', 't1', 1, 1, 'u', x'', 20, 20, 1, 1, 1, 1, 0), \
             (3, 'a', 't2', 1, 1, 'u', x'', 10, 10, 1, 1, 1, 1, 0), \
             (4, 'a', 't3', 1, 1, 'u', x'', 5, 5, 1, 1, 3, 1, 0), \
             (5, 'b', 't9', 1, 1, 'u', x'', 1, 1, 1, 1, 1, 1, 0);",
        )
        .unwrap();
        migrate(&mut c).unwrap();
        let indexes: Vec<String> = c
            .prepare("SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'items' ORDER BY name")
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            !indexes.iter().any(|n| n == "items_deferred"),
            "{indexes:?}"
        );
        let page =
            super::super::queries::deferred_tickets(&c, "a", crate::domain::Order::Asc, None, 10)
                .unwrap();
        let got: Vec<(String, i64, u32)> = page
            .rows
            .iter()
            .map(|t| (t.ticket_id.clone(), t.next_send_at, t.pending_count))
            .collect();
        assert_eq!(got, vec![("t2".into(), 10, 2), ("t1".into(), 20, 1)]);
        let plan: Vec<String> = c
            .prepare(
                "EXPLAIN QUERY PLAN SELECT ticket_id, MIN(next_send_at), COUNT(*) FROM items \
                 INDEXED BY items_live WHERE account_id = 'a' AND state IN (1, 2) GROUP BY ticket_id",
            )
            .unwrap()
            .query_map([], |r| r.get(3))
            .unwrap()
            .collect::<Result<_, _>>()
            .unwrap();
        assert!(
            plan.iter().any(|l| l.contains("COVERING INDEX items_live")),
            "{plan:?}"
        );
    }

    #[test]
    fn a_newer_schema_is_refused_with_a_clear_error() {
        let mut c = Connection::open_in_memory().unwrap();
        c.pragma_update(None, "user_version", SCHEMA_VERSION + 1)
            .unwrap();
        let err = migrate(&mut c).unwrap_err();
        assert!(err.to_string().contains("newer"), "{err}");
    }
}
