//! The PostgreSQL schema and its migrations, versioned in the one-row table
//! `schema_version`.
//!
//! [`migrate`] runs every migration the database lacks, and the version bump, in one
//! transaction: an empty database gets the whole schema or nothing. A database whose
//! version is newer than this build knows is refused ([`StoreError::NewerSchema`]),
//! never "downgraded", and nothing is written to it.
//!
//! # The layout (version 1), and how it differs from SQLite's
//! The tables mirror SQLite's final schema (`store::schema`), with the same encodings
//! (`store::codec`), except where PostgreSQL is better served otherwise:
//! - Ids are `BIGINT` allocated by sendlater (`items.id`, `events.seq`): no sequence
//!   on the hot path, and several writers can share the table later.
//! - The lease is the nullable column `items.lease_expires_at`, not a table of its own:
//!   a leased (DISPATCHING) item is stored PENDING with the attempts that ended plus its
//!   lease expiry (`codec::at_rest` / `codec::with_lease`), as SQLite stores it with a
//!   `leases` row. A lease rewrites the row anyway (its `updated_at`); no index reads
//!   the column and the state does not change, so the rewrite can be a HOT update (a
//!   new row version in the same page, no index entry) where the page has room. The
//!   price: listing the DISPATCHING items of an account walks its live items (they come
//!   first in next-send order, being due).
//! - `state = 2` (DISPATCHING) is never stored, so the live predicate is `state = 1`.
//! - No sweep watermark: rows are written with their events. The last event sequence
//!   ever written survives pruning in `store_meta` (`events_pruned_through`).
//! - Enums are `SMALLINT`, account and ticket ids `COLLATE "C"` (bytewise, the order
//!   SQLite's listings and keyset paging use); columns ordered fixed-width first, so a
//!   row carries no alignment padding.
//! - Bytes per pending item (measured at 100k with the e2e benchmark's ~400-byte email:
//!   773 B with its SCHEDULED event and every index entry; the row is ~510 B of it;
//!   855 B from version 3 on, see below).
//!   Indexes keep only what a query needs: `items_live (account_id, next_send_at) WHERE
//!   state = 1` serves ListScheduled of live items (ties on the send time are sorted by
//!   id after the index, an incremental sort), the deferred tickets, the business-hours
//!   walk; `items_done` the listings of finished items; `items_by_ticket (account_id,
//!   ticket_id)` the timeline and the activity rule (a ticket's few items are sorted in
//!   memory); `items_by_request` the idempotency keys; `events_by_account (account_id,
//!   seq)` the per-account outbox. `items` keeps the default fillfactor (100): 90 cost
//!   58 B per item and made 44% of leases HOT instead of 36% (a drain in due order,
//!   groups of 100); `events` only grows at its end, so its primary key is packed full.
//!   `business_hours` and `dispatch_controls` rows are updated in place (fillfactor 70).
//!
//! # Version 3: partitions on the rows
//! `items.partition` and `events.partition` hold the account's partition
//! (`cluster::partition_of` of the count in `store_meta.partitions`), so a node of
//! several loads and prunes only its own partitions' rows. Events are found by
//! partition through `events_by_partition (partition, seq)` (the newest of a partition,
//! its oldest to prune: one probe). Live items have no index by partition: the start-up
//! scan reads every live row anyway (it needs their ticket and lease), and filters the
//! partition in the scan: at 300k live items (~400-byte rows), a third of 64 partitions
//! takes 60 ms of server time against 55-60 ms for them all, a sequential scan either
//! way, and a third of the rows to the node; an index would cost ~45 B per pending item.
//! A row written before the count was fixed has none (NULL) until
//! [`assign_partitions`] gives it its own: at every [`migrate`] (a node's start) and when
//! a node fixes the count (`PgLeases::init`), by distinct account through the partial
//! indexes `items_unassigned` / `events_unassigned` (empty otherwise, so free).
//!
//! The SQL sticks to what CockroachDB and YugabyteDB also run where that is cheap (no
//! advisory locks, no LISTEN/NOTIFY; `fillfactor` is ignored where not supported).

use tokio_postgres::error::SqlState;
use tokio_postgres::{Client, GenericClient};

use crate::store::StoreError;

/// Migrations; index `i` takes the database from version `i` to `i + 1`.
const MIGRATIONS: &[&str] = &[
    // 1: the whole schema.
    r#"
    CREATE TABLE store_meta (
        key   TEXT PRIMARY KEY,
        value TEXT NOT NULL
    );

    CREATE TABLE items (
        id                  BIGINT   PRIMARY KEY,
        send_at             BIGINT   NOT NULL,
        -- next_attempt_at between attempts, else send_at: listings sort on it, and it
        -- is the wheel deadline of a live item.
        next_send_at        BIGINT   NOT NULL,
        created_at          BIGINT   NOT NULL,
        updated_at          BIGINT   NOT NULL,
        -- The attempts that ended (one more is under way while leased).
        attempts            INTEGER  NOT NULL DEFAULT 0,
        state               SMALLINT NOT NULL,
        kind                SMALLINT NOT NULL,
        channel             SMALLINT NOT NULL,
        on_activity         SMALLINT NOT NULL,
        -- Set while the item is out at a connector (it then reads as DISPATCHING).
        lease_expires_at    BIGINT,
        next_attempt_at     BIGINT,
        sent_at             BIGINT,
        note_at             BIGINT,
        conv_occurred_at    BIGINT,
        request_fp          BIGINT,
        conv_author_kind    SMALLINT,
        account_id          TEXT COLLATE "C" NOT NULL,
        ticket_id           TEXT COLLATE "C" NOT NULL,
        author_id           TEXT     NOT NULL,
        content             BYTEA    NOT NULL,
        -- NULL: the default timing.
        timing              BYTEA,
        request_id          TEXT,
        provider_message_id TEXT,
        conv_message_id     TEXT,
        last_error          TEXT
    );
    CREATE INDEX items_live ON items (account_id, next_send_at)
        WHERE state = 1;
    CREATE INDEX items_done ON items (account_id, state, next_send_at)
        WHERE state <> 1;
    CREATE INDEX items_by_ticket ON items (account_id, ticket_id);
    CREATE UNIQUE INDEX items_by_request ON items (account_id, request_id)
        WHERE request_id IS NOT NULL;

    CREATE TABLE events (
        seq        BIGINT   PRIMARY KEY WITH (fillfactor = 100),
        item_id    BIGINT   NOT NULL,
        at         BIGINT   NOT NULL,
        type       SMALLINT NOT NULL,
        account_id TEXT COLLATE "C" NOT NULL,
        -- The item as it was right after the change (encoded ItemSnapshot).
        snapshot   BYTEA    NOT NULL
    );
    CREATE INDEX events_by_account ON events (account_id, seq);

    CREATE TABLE business_hours (
        account_id  TEXT COLLATE "C" PRIMARY KEY,
        spec        TEXT   NOT NULL,
        updated_at  BIGINT NOT NULL,
        -- Where a re-resolution of the account's live items stands, in
        -- (next_send_at, id) order; NULL when none is under way.
        rewindow_at BIGINT,
        rewindow_id BIGINT
    ) WITH (fillfactor = 70);

    CREATE TABLE dispatch_controls (
        account_id TEXT COLLATE "C" NOT NULL,
        channel    SMALLINT NOT NULL,
        paused     BOOLEAN  NOT NULL DEFAULT false,
        per_minute BIGINT   NOT NULL DEFAULT 0,
        PRIMARY KEY (account_id, channel)
    ) WITH (fillfactor = 70);
    "#,
    // 2: several nodes (`store::postgres::lease`): one lease row per partition (its
    // owner, its epoch, its expiry by the database's clock), the log of every grant,
    // and the nodes that registered. The partition count is `store_meta.partitions`,
    // written with the rows by the first node (fixed from then on).
    r#"
    CREATE TABLE partition_leases (
        partition  INTEGER     PRIMARY KEY,
        epoch      BIGINT      NOT NULL DEFAULT 0,
        expires_at TIMESTAMPTZ NOT NULL DEFAULT 'epoch',
        owner      TEXT
    ) WITH (fillfactor = 50);
    CREATE TABLE lease_log (
        partition       INTEGER     NOT NULL,
        epoch           BIGINT      NOT NULL,
        granted_at      TIMESTAMPTZ NOT NULL,
        prev_expires_at TIMESTAMPTZ NOT NULL,
        owner           TEXT        NOT NULL,
        prev_owner      TEXT,
        PRIMARY KEY (partition, epoch)
    );
    CREATE TABLE nodes (
        node_id   TEXT        PRIMARY KEY,
        address   TEXT        NOT NULL,
        last_seen TIMESTAMPTZ NOT NULL,
        expires_at TIMESTAMPTZ NOT NULL
    );
    "#,
    // 3: rows carry their account's partition (`cluster::partition_of`), so an owner
    // loads and prunes only its own partitions'. NULL until the partition count is
    // fixed: [`assign_partitions`] fills it in (rows written before this version, or
    // while no node had started on the database).
    r#"
    ALTER TABLE items ADD COLUMN partition INTEGER;
    ALTER TABLE events ADD COLUMN partition INTEGER;
    CREATE INDEX items_unassigned ON items (account_id) WHERE partition IS NULL;
    CREATE INDEX events_by_partition ON events (partition, seq);
    CREATE INDEX events_unassigned ON events (account_id) WHERE partition IS NULL;
    "#,
];

/// The version from which rows carry their partition.
const PARTITION_COLUMNS: i64 = 3;

/// The schema version this build writes.
pub const SCHEMA_VERSION: i64 = MIGRATIONS.len() as i64;

/// The version table, created (empty, at version 0) by the first [`migrate`].
const VERSION_TABLE: &str = "CREATE TABLE IF NOT EXISTS schema_version ( \
        id      SMALLINT PRIMARY KEY CHECK (id = 1), \
        version BIGINT   NOT NULL \
    ); \
    INSERT INTO schema_version (id, version) VALUES (1, 0) ON CONFLICT (id) DO NOTHING";

/// How many times a migration that lost a race with another process's is retried.
const RACE_RETRIES: usize = 3;

/// Brings the database to [`SCHEMA_VERSION`], in one transaction.
///
/// Two processes migrating the same database at once: the one that loses the race
/// (its `CREATE TABLE` collides with the other's) starts over and finds the schema
/// made.
///
/// # Errors
/// [`StoreError::NewerSchema`] for a database written by a newer sendlater (nothing
/// is written to it), or a PostgreSQL error.
pub async fn migrate(client: &mut Client) -> Result<(), StoreError> {
    let mut tries = 0;
    loop {
        match migrate_once(client, SCHEMA_VERSION).await {
            Err(StoreError::Postgres(e)) if tries < RACE_RETRIES && lost_race(&e) => {
                tries += 1;
                tracing::info!(error = %e, "schema migration raced another process; retrying");
            }
            other => return other,
        }
    }
}

/// Whether `e` is a collision with another process creating the same objects.
fn lost_race(e: &tokio_postgres::Error) -> bool {
    e.code().is_some_and(|c| {
        *c == SqlState::UNIQUE_VIOLATION
            || *c == SqlState::DUPLICATE_TABLE
            || *c == SqlState::DUPLICATE_OBJECT
            || *c == SqlState::T_R_SERIALIZATION_FAILURE
    })
}

/// Takes the database to version `to` (at most [`SCHEMA_VERSION`]) in one transaction.
async fn migrate_once(client: &mut Client, to: i64) -> Result<(), StoreError> {
    let tx = client.transaction().await?;
    tx.batch_execute(VERSION_TABLE).await?;
    // The row lock makes a concurrent migration wait for this one's outcome.
    let version: i64 = tx
        .query_one(
            "SELECT version FROM schema_version WHERE id = 1 FOR UPDATE",
            &[],
        )
        .await?
        .get(0);
    if version > SCHEMA_VERSION {
        return Err(StoreError::NewerSchema {
            found: version,
            supported: SCHEMA_VERSION,
        });
    }
    // Rows without a partition get theirs once the count is fixed (under the version
    // row's lock: one process does it).
    let partitioned = to >= PARTITION_COLUMNS;
    if version >= to {
        if partitioned && assign_partitions(&tx).await? > 0 {
            tx.commit().await?;
        }
        return Ok(());
    }
    for sql in MIGRATIONS.iter().take(to as usize).skip(version as usize) {
        tx.batch_execute(sql).await?;
    }
    tx.execute(
        "UPDATE schema_version SET version = $1 WHERE id = 1",
        &[&to],
    )
    .await?;
    if partitioned {
        assign_partitions(&tx).await?;
    }
    tx.commit().await?;
    tracing::info!(from = version, to, "applied PostgreSQL schema migrations");
    Ok(())
}

/// The database's partition count, once a node fixed it (`store_meta.partitions`).
///
/// # Errors
/// PostgreSQL errors; a stored count that is not a number.
pub async fn partition_count(c: &impl GenericClient) -> Result<Option<u32>, StoreError> {
    let Some(row) = c
        .query_opt("SELECT value FROM store_meta WHERE key = 'partitions'", &[])
        .await?
    else {
        return Ok(None);
    };
    let v: String = row.get(0);
    v.parse()
        .map(Some)
        .map_err(|_| StoreError::Corrupt(format!("store_meta.partitions is {v:?}")))
}

/// Gives the rows that have no partition yet (written before schema version 3, or
/// while the partition count was not fixed) their account's, once the count is fixed;
/// by distinct account (the hash is computed here, not in SQL). Returns how many rows
/// it changed. Cheap when there is nothing to do: two probes of empty partial indexes.
///
/// # Errors
/// PostgreSQL errors.
pub async fn assign_partitions(c: &impl GenericClient) -> Result<u64, StoreError> {
    let Some(n) = partition_count(c).await? else {
        return Ok(0);
    };
    let accounts: Vec<String> = c
        .query(
            "SELECT account_id FROM items WHERE partition IS NULL \
             UNION SELECT account_id FROM events WHERE partition IS NULL",
            &[],
        )
        .await?
        .iter()
        .map(|r| r.get(0))
        .collect();
    if accounts.is_empty() {
        return Ok(0);
    }
    let parts: Vec<i32> = accounts
        .iter()
        .map(|a| crate::cluster::partition_of(a, n) as i32)
        .collect();
    let mut changed = 0;
    for table in ["items", "events"] {
        changed += c
            .execute(
                &format!(
                    "UPDATE {table} t SET partition = a.p \
                     FROM unnest($1::text[], $2::int[]) AS a(account, p) \
                     WHERE t.partition IS NULL AND t.account_id = a.account"
                ),
                &[&accounts, &parts],
            )
            .await?;
    }
    tracing::info!(
        rows = changed,
        accounts = accounts.len(),
        partitions = n,
        "gave rows without a partition their account's"
    );
    Ok(changed)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::test_db::TestDb;

    async fn tables(c: &Client) -> Vec<String> {
        c.query(
            "SELECT tablename::text FROM pg_tables WHERE schemaname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
        .iter()
        .map(|r| r.get(0))
        .collect()
    }

    async fn version(c: &Client) -> i64 {
        c.query_one("SELECT version FROM schema_version", &[])
            .await
            .unwrap()
            .get(0)
    }

    #[tokio::test]
    async fn migrating_an_empty_database_creates_the_schema_and_twice_is_a_no_op() {
        let mut db = TestDb::new().await;
        migrate(&mut db.client).await.unwrap();
        let first = tables(&db.client).await;
        assert_eq!(
            first,
            [
                "business_hours",
                "dispatch_controls",
                "events",
                "items",
                "lease_log",
                "nodes",
                "partition_leases",
                "schema_version",
                "store_meta"
            ]
        );
        assert_eq!(version(&db.client).await, SCHEMA_VERSION);
        db.client
            .execute("INSERT INTO store_meta VALUES ('partitions', '64')", &[])
            .await
            .unwrap();
        migrate(&mut db.client).await.unwrap();
        assert_eq!(tables(&db.client).await, first);
        assert_eq!(version(&db.client).await, SCHEMA_VERSION);
        let kept: String = db
            .client
            .query_one("SELECT value FROM store_meta WHERE key = 'partitions'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(kept, "64", "a second migrate leaves the data alone");
    }

    #[tokio::test]
    async fn a_newer_schema_is_refused_with_a_clear_error_and_nothing_is_created() {
        let mut db = TestDb::new().await;
        db.client
            .batch_execute(&format!(
                "{VERSION_TABLE}; UPDATE schema_version SET version = {}",
                SCHEMA_VERSION + 1
            ))
            .await
            .unwrap();
        let err = migrate(&mut db.client).await.unwrap_err();
        assert!(
            matches!(err, StoreError::NewerSchema { found, supported }
                if found == SCHEMA_VERSION + 1 && supported == SCHEMA_VERSION),
            "{err:?}"
        );
        assert!(err.to_string().contains("newer"), "{err}");
        assert_eq!(tables(&db.client).await, ["schema_version"]);
        assert_eq!(version(&db.client).await, SCHEMA_VERSION + 1);
    }

    /// A migration that fails half-way leaves nothing behind: not the tables it had
    /// created, not the version table's bump.
    #[tokio::test]
    async fn a_migration_that_fails_half_way_creates_nothing() {
        let mut db = TestDb::new().await;
        // `events` exists already (a foreign table of that name): the script fails
        // after it created store_meta and items.
        db.client
            .batch_execute("CREATE TABLE events (x INT)")
            .await
            .unwrap();
        let err = migrate(&mut db.client).await.unwrap_err();
        assert!(matches!(err, StoreError::Postgres(_)), "{err:?}");
        assert_eq!(tables(&db.client).await, ["events"]);
    }

    /// A version-2 database (rows without partitions): `n` items of accounts
    /// `acct-0..` (ids 1..=n, each with a SCHEDULED event of the same sequence), the
    /// partition count `partitions` fixed when given, events pruned through `pruned`.
    async fn version_2(n: i64, partitions: Option<u32>, pruned: i64) -> TestDb {
        let mut db = TestDb::new().await;
        migrate_once(&mut db.client, 2).await.unwrap();
        for i in 1..=n {
            let account = format!("acct-{}", i % 5);
            db.client
                .execute(
                    "INSERT INTO items (id, send_at, next_send_at, created_at, updated_at, \
                     state, kind, channel, on_activity, account_id, ticket_id, author_id, \
                     content) VALUES ($1, $2, $2, 1, 1, 1, 1, 1, 1, $3, 't', 'u', '')",
                    &[&i, &(1_000 + i), &account],
                )
                .await
                .unwrap();
            if i > pruned {
                db.client
                    .execute(
                        "INSERT INTO events (seq, item_id, at, type, account_id, snapshot) \
                         VALUES ($1, $1, 1, 1, $2, '')",
                        &[&i, &account],
                    )
                    .await
                    .unwrap();
            }
        }
        if pruned > 0 {
            db.client
                .execute(
                    "INSERT INTO store_meta VALUES ('events_pruned_through', $1)",
                    &[&pruned.to_string()],
                )
                .await
                .unwrap();
        }
        if let Some(p) = partitions {
            db.client
                .execute(
                    "INSERT INTO store_meta VALUES ('partitions', $1)",
                    &[&p.to_string()],
                )
                .await
                .unwrap();
        }
        db
    }

    /// Each row's partition, and whether it is its account's.
    async fn partitions_of_rows(c: &Client, table: &str, count: u32) -> Vec<Option<i32>> {
        c.query(&format!("SELECT account_id, partition FROM {table}"), &[])
            .await
            .unwrap()
            .iter()
            .map(|r| {
                let (a, p): (String, Option<i32>) = (r.get(0), r.get(1));
                if let Some(p) = p {
                    assert_eq!(p, crate::cluster::partition_of(&a, count) as i32, "{a}");
                }
                p
            })
            .collect()
    }

    fn open_store(
        url: String,
        fence: Option<crate::store::Fence>,
    ) -> tokio::task::JoinHandle<Result<crate::store::Store, StoreError>> {
        tokio::task::spawn_blocking(move || {
            crate::store::Store::open_fenced(
                &crate::store::DbTarget::Postgres(url),
                crate::config::Synchronous::Full,
                std::sync::Arc::new(crate::clock::ManualClock::new(1_000)),
                std::sync::Arc::new(crate::store::test_support::NoHook),
                fence,
            )
        })
    }

    fn new_item(account: &str) -> crate::domain::NewItem {
        crate::domain::NewItem {
            account_id: account.into(),
            ..crate::store::test_support::new_chat()
        }
    }

    /// A version-2 database a node used (its partition count fixed): the upgrade gives
    /// every row its account's partition; a node's store then loads every old item, goes
    /// on after the old ids in partition 0's range (and from `p << 48` in the others),
    /// and numbers events above every old sequence, pruned ones included.
    #[tokio::test]
    async fn a_version_2_database_gets_its_rows_partitions_and_a_node_goes_on_after_its_ids() {
        let db = version_2(40, Some(8), 10).await;
        let leases = crate::store::postgres::PgLeases::connect(&db.url())
            .await
            .unwrap();
        assert_eq!(version(&db.client).await, SCHEMA_VERSION);
        let items = partitions_of_rows(&db.client, "items", 8).await;
        let events = partitions_of_rows(&db.client, "events", 8).await;
        assert_eq!((items.len(), events.len()), (40, 30));
        assert!(
            items.iter().chain(&events).all(Option::is_some),
            "every row has one"
        );
        leases.init(8).await.unwrap();
        let held = leases
            .take_all("n1", std::time::Duration::from_secs(3600))
            .await
            .unwrap()
            .unwrap();
        let fence = crate::store::Fence {
            node: "n1".into(),
            held: held.clone(),
            idle_limit: std::time::Duration::from_secs(60),
        };
        let store = open_store(db.url(), Some(fence)).await.unwrap().unwrap();
        let scan = store.recovery_scan().await.unwrap();
        assert_eq!(scan.timers.len(), 40, "every old live item is loaded");
        let zero = (0..)
            .map(|i| format!("acct-{i}"))
            .find(|a| crate::cluster::partition_of(a, 8) == 0)
            .unwrap();
        let other = (0..)
            .map(|i| format!("acct-{i}"))
            .find(|a| crate::cluster::partition_of(a, 8) == 3)
            .unwrap();
        let (z, o) = (new_item(&zero), new_item(&other));
        let (ids, seqs) = store
            .write(move |tx| {
                let mut ids = Vec::new();
                let mut seqs = Vec::new();
                for n in [&z, &o] {
                    let (mut item, change) =
                        crate::domain::machine::schedule(n.clone(), 0, n.send_at, tx.now);
                    item.id = tx.insert(n, n.send_at, &item.timing)?;
                    seqs.push(tx.save_new(&item, change)?);
                    ids.push(item.id);
                }
                Ok((ids, seqs))
            })
            .await
            .unwrap();
        assert_eq!(ids, vec![41, 3 << 48 | 1]);
        let epoch = |p: u32| held.iter().find(|h| h.0 == p).unwrap().1 as u64;
        assert_eq!(seqs, vec![epoch(0) << 40 | 1, epoch(3) << 40 | 3 << 28 | 1]);
        assert!(seqs.iter().all(|&s| s > 40));
        store.close().await;
        // The old items keep their ids and are found where they were.
        let kept: i64 = db
            .client
            .query_one("SELECT count(*) FROM items WHERE id <= 40", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(kept, 40);
    }

    /// A version-2 database no node used (no partition count: written by a tool): its
    /// rows stay without a partition, a store without a fence goes on numbering as
    /// before, and the first node's `init` gives every row its partition.
    #[tokio::test]
    async fn rows_of_a_database_without_a_partition_count_get_theirs_when_a_node_fixes_it() {
        let db = version_2(12, None, 0).await;
        let store = open_store(db.url(), None).await.unwrap().unwrap();
        let n = new_item("acct-3");
        let (id, seq) = store
            .write(move |tx| {
                let (mut item, change) =
                    crate::domain::machine::schedule(n.clone(), 0, n.send_at, tx.now);
                item.id = tx.insert(&n, n.send_at, &item.timing)?;
                Ok((item.id, tx.save_new(&item, change)?))
            })
            .await
            .unwrap();
        assert_eq!((id, seq), (13, 13), "numbered as before partitions");
        assert_eq!(store.recovery_scan().await.unwrap().timers.len(), 13);
        store.close().await;
        let items = partitions_of_rows(&db.client, "items", 8).await;
        assert!(items.iter().all(Option::is_none), "{items:?}");
        let leases = crate::store::postgres::PgLeases::connect(&db.url())
            .await
            .unwrap();
        leases.init(8).await.unwrap();
        let items = partitions_of_rows(&db.client, "items", 8).await;
        let events = partitions_of_rows(&db.client, "events", 8).await;
        assert_eq!((items.len(), events.len()), (13, 13));
        assert!(items.iter().chain(&events).all(Option::is_some));
    }

    /// Two processes starting on one empty database at once both come up, on one
    /// schema.
    #[tokio::test]
    async fn two_processes_migrating_at_once_both_succeed() {
        let db = TestDb::new().await;
        let mut a = db.connect().await;
        let mut b = db.connect().await;
        let (ra, rb) = tokio::join!(migrate(&mut a), migrate(&mut b));
        ra.unwrap();
        rb.unwrap();
        assert_eq!(version(&db.client).await, SCHEMA_VERSION);
        assert_eq!(tables(&db.client).await.len(), 9);
    }
}
