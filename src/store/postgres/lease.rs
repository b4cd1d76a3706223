//! Partition leases in PostgreSQL (`design/multi-node.md`, "Leases and fence").
//!
//! One row per partition in `partition_leases`: its owner, its epoch (bumped by every
//! grant) and its expiry **by the database's clock**, so the nodes' wall clocks never
//! decide who owns what. A node:
//! - takes partitions only once their lease has expired (or was released), or when it
//!   holds them itself under its own node id (a restart, or re-taking its own partitions
//!   after a commit whose outcome was unknown): `SELECT … FOR UPDATE` then bumps the
//!   epoch and logs the grant in `lease_log`. The `FOR UPDATE` waits for the writes in
//!   flight of the former owner, whose every commit holds the rows `FOR KEY SHARE`
//!   ([`fence_sql`]): so the new owner sees all the old one committed, and the old one
//!   commits nothing after (its fence then finds another epoch and aborts);
//! - renews only rows it owns at the epoch it was granted, in one statement (owner-scoped
//!   renewal: a stale node never extends another's lease, Oban #1488);
//! - releases its rows on a planned stop (expiry set to now), so another node takes them
//!   at its next look.
//!
//! The lease connection is its own session, with a lock timeout below any lease, so a
//! takeover waiting on a cut-off owner's locks gives up and retries instead of hanging.

use std::time::Duration;

use tokio::sync::Mutex;
use tokio_postgres::Client;

use crate::cluster::{ClusterStatus, NodeStatus, PartitionStatus};
use crate::store::StoreError;

use super::store::connect_client;

/// A grant: the partition and the epoch it was granted at.
pub type Held = (u32, i64);

/// How long a statement of the lease session may wait for a row lock.
const LOCK_TIMEOUT: &str = "2s";

/// Nodes not seen for this long drop out of the status.
const FORGET_NODES_AFTER: &str = "1 day";

/// Registers a node (parameters: id, address, ttl in ms) or refreshes it: seen now,
/// until the ttl from now.
const NODE_SEEN: &str = "INSERT INTO nodes (node_id, address, last_seen, expires_at) \
     VALUES ($1, $2, now(), now() + $3::bigint * interval '1 millisecond') \
     ON CONFLICT (node_id) DO UPDATE SET address = excluded.address, \
       last_seen = excluded.last_seen, expires_at = excluded.expires_at";

/// The fence every commit of an owner runs (parameters: owner, partitions, epochs,
/// how many): it holds the lease rows `FOR KEY SHARE` until the commit, and divides by
/// zero, aborting the transaction, unless every row still has this owner and epoch. A
/// renewal (a non-key update) does not wait for it; a takeover's `FOR UPDATE` does.
pub fn fence_sql() -> &'static str {
    "SELECT 1 / (count(*) = $4::bigint)::int FROM ( \
       SELECT 1 FROM partition_leases l \
       JOIN unnest($2::int[], $3::bigint[]) AS h(p, e) ON l.partition = h.p AND l.epoch = h.e \
       WHERE l.owner = $1 FOR KEY SHARE OF l) AS held"
}

/// Whether `e` is the fence's refusal (see [`fence_sql`]).
pub fn is_fence_refusal(e: &tokio_postgres::Error) -> bool {
    e.code() == Some(&tokio_postgres::error::SqlState::DIVISION_BY_ZERO)
}

/// The lease rows of one database, through a session of their own.
pub struct PgLeases {
    url: String,
    client: Mutex<Option<Client>>,
}

fn ms(d: Duration) -> i64 {
    i64::try_from(d.as_millis()).unwrap_or(i64::MAX)
}

impl PgLeases {
    /// Connects to `url` and brings its schema up to date.
    ///
    /// # Errors
    /// The database cannot be reached, or has a newer schema.
    pub async fn connect(url: &str) -> Result<PgLeases, StoreError> {
        let leases = PgLeases {
            url: url.to_owned(),
            client: Mutex::new(None),
        };
        let mut guard = leases.client.lock().await;
        let mut client = Self::open(url).await?;
        super::schema::migrate(&mut client).await?;
        *guard = Some(client);
        drop(guard);
        Ok(leases)
    }

    async fn open(url: &str) -> Result<Client, StoreError> {
        let client = connect_client(url).await?;
        client
            .batch_execute(&format!("SET lock_timeout = '{LOCK_TIMEOUT}'"))
            .await?;
        Ok(client)
    }

    /// Runs `f` on the session, reconnecting first when it was lost; a failure that
    /// closed the connection drops it, so the next call reconnects.
    async fn with<T, F>(&self, f: F) -> Result<T, StoreError>
    where
        F: for<'c> FnOnce(
            &'c mut Client,
        ) -> std::pin::Pin<
            Box<dyn std::future::Future<Output = Result<T, StoreError>> + Send + 'c>,
        >,
    {
        let mut guard = self.client.lock().await;
        if guard.as_ref().is_none_or(Client::is_closed) {
            *guard = Some(Self::open(&self.url).await?);
        }
        let Some(client) = guard.as_mut() else {
            return Err(StoreError::Closed);
        };
        let r = f(client).await;
        if r.is_err() && client.is_closed() {
            *guard = None;
        }
        r
    }

    /// Writes the partition count and the lease rows of a new database, or checks that
    /// the database has `partitions`.
    ///
    /// # Errors
    /// [`StoreError::PartitionsMismatch`] when the database was created with another
    /// count; database errors.
    pub async fn init(&self, partitions: u32) -> Result<(), StoreError> {
        self.with(|c| {
            Box::pin(async move {
                let tx = c.transaction().await?;
                tx.execute(
                    "INSERT INTO store_meta (key, value) VALUES ('partitions', $1) \
                     ON CONFLICT (key) DO NOTHING",
                    &[&partitions.to_string()],
                )
                .await?;
                let found: String = tx
                    .query_one("SELECT value FROM store_meta WHERE key = 'partitions'", &[])
                    .await?
                    .get(0);
                let found: u32 = found.parse().map_err(|_| {
                    StoreError::Corrupt(format!("store_meta.partitions is {found:?}"))
                })?;
                if found != partitions {
                    return Err(StoreError::PartitionsMismatch {
                        found,
                        configured: partitions,
                    });
                }
                let n = i32::try_from(partitions).unwrap_or(i32::MAX);
                // Nodes gone for long are forgotten here, at a node's start, not at every
                // look (the status leaves them out meanwhile).
                tx.execute(
                    &format!(
                        "DELETE FROM nodes WHERE expires_at < now() - interval '{FORGET_NODES_AFTER}'"
                    ),
                    &[],
                )
                .await?;
                tx.execute(
                    "INSERT INTO partition_leases (partition) \
                     SELECT generate_series(0, $1::int - 1) ON CONFLICT (partition) DO NOTHING",
                    &[&n],
                )
                .await?;
                // Rows written while the count was not fixed get their partition now.
                super::schema::assign_partitions(&tx).await?;
                tx.commit().await?;
                Ok(())
            })
        })
        .await
    }

    /// Registers (or refreshes) `node` at `address` until `ttl` from now.
    ///
    /// # Errors
    /// Database errors.
    pub async fn register(
        &self,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<(), StoreError> {
        let (node, address, ttl) = (node.to_owned(), address.to_owned(), ms(ttl));
        self.with(|c| {
            Box::pin(async move {
                c.execute(NODE_SEEN, &[&node, &address, &ttl]).await?;
                Ok(())
            })
        })
        .await
    }

    /// Takes every partition for `node` until `ttl` from now, if every lease has expired
    /// or is `node`'s own: bumps each epoch and logs the grants. `None` when another node
    /// holds one.
    ///
    /// # Errors
    /// Database errors (a lock wait beyond the lock timeout among them).
    pub async fn take_all(
        &self,
        node: &str,
        ttl: Duration,
    ) -> Result<Option<Vec<Held>>, StoreError> {
        let (node, ttl) = (node.to_owned(), ms(ttl));
        self.with(|c| {
            Box::pin(async move {
                // A look without locks first: a node looks often, and the row locks
                // of a take would make the owner's commits (their fence) and renewals
                // wait for it.
                let held_now: i64 = c
                    .query_one(
                        "SELECT count(*) FROM partition_leases \
                         WHERE expires_at > now() AND owner IS DISTINCT FROM $1",
                        &[&node],
                    )
                    .await?
                    .get(0);
                if held_now > 0 {
                    return Ok(None);
                }
                let tx = c.transaction().await?;
                let rows = tx
                    .query(
                        "SELECT partition, owner, expires_at <= now(), expires_at \
                         FROM partition_leases ORDER BY partition FOR UPDATE",
                        &[],
                    )
                    .await?;
                if rows.is_empty() {
                    return Err(StoreError::Corrupt("no partition lease rows".into()));
                }
                let held_elsewhere = rows.iter().any(|r| {
                    let owner: Option<String> = r.get(1);
                    let expired: bool = r.get(2);
                    !expired && owner.as_deref().is_some_and(|o| o != node)
                });
                if held_elsewhere {
                    return Ok(None);
                }
                let granted = tx
                    .query(
                        "WITH old AS (SELECT partition, owner, expires_at FROM partition_leases), \
                         up AS (UPDATE partition_leases l SET owner = $1, epoch = l.epoch + 1, \
                                  expires_at = now() + $2::bigint * interval '1 millisecond' \
                                FROM old WHERE old.partition = l.partition \
                                RETURNING l.partition, l.epoch, old.owner AS prev_owner, \
                                          old.expires_at AS prev_expires_at) \
                         INSERT INTO lease_log (partition, epoch, granted_at, prev_expires_at, owner, prev_owner) \
                         SELECT partition, epoch, now(), prev_expires_at, $1, prev_owner FROM up \
                         RETURNING partition, epoch",
                        &[&node, &ttl],
                    )
                    .await?;
                tx.commit().await?;
                let mut held: Vec<Held> = granted
                    .iter()
                    .map(|r| (u32::try_from(r.get::<_, i32>(0)).unwrap_or(0), r.get(1)))
                    .collect();
                held.sort_unstable();
                Ok(Some(held))
            })
        })
        .await
    }

    /// Extends `node`'s leases on `held` (each at its epoch) to `ttl` from now, and the
    /// node's registration. Returns the partitions renewed: one missing was lost.
    ///
    /// # Errors
    /// Database errors.
    pub async fn renew(
        &self,
        node: &str,
        address: &str,
        held: &[Held],
        ttl: Duration,
    ) -> Result<Vec<u32>, StoreError> {
        let (node, address, ttl) = (node.to_owned(), address.to_owned(), ms(ttl));
        let parts: Vec<i32> = held.iter().map(|&(p, _)| p as i32).collect();
        let epochs: Vec<i64> = held.iter().map(|&(_, e)| e).collect();
        self.with(|c| {
            Box::pin(async move {
                let renew_params: [&(dyn tokio_postgres::types::ToSql + Sync); 4] =
                    [&node, &parts, &epochs, &ttl];
                let seen_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [&node, &address, &ttl];
                let renewed = c.query(
                    "UPDATE partition_leases l \
                     SET expires_at = now() + $4::bigint * interval '1 millisecond' \
                     FROM unnest($2::int[], $3::bigint[]) AS h(p, e) \
                     WHERE l.partition = h.p AND l.epoch = h.e AND l.owner = $1 \
                     RETURNING l.partition",
                    &renew_params,
                );
                let seen = c.execute(NODE_SEEN, &seen_params);
                let (renewed, seen) = futures_util::future::join(renewed, seen).await;
                seen?;
                let mut parts: Vec<u32> = renewed?
                    .iter()
                    .map(|r| u32::try_from(r.get::<_, i32>(0)).unwrap_or(0))
                    .collect();
                parts.sort_unstable();
                Ok(parts)
            })
        })
        .await
    }

    /// Ends `node`'s leases on `held` now and its registration (a planned stop):
    /// another node may take them at once.
    ///
    /// # Errors
    /// Database errors.
    pub async fn release(&self, node: &str, held: &[Held]) -> Result<(), StoreError> {
        self.hand_over(node, held).await?;
        let node = node.to_owned();
        self.with(|c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE nodes SET expires_at = now() WHERE node_id = $1",
                    &[&node],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Registers `node` (as [`PgLeases::register`]) and reads what a node decides its
    /// share by: every live registration and every lease row with its owner's address.
    /// One round trip (the statements are pipelined).
    ///
    /// # Errors
    /// Database errors.
    pub async fn look(
        &self,
        node: &str,
        address: &str,
        ttl: Duration,
    ) -> Result<crate::cluster::share::Look, StoreError> {
        let (node, address, ttl) = (node.to_owned(), address.to_owned(), ms(ttl));
        self.with(|c| {
            Box::pin(async move {
                let seen_params: [&(dyn tokio_postgres::types::ToSql + Sync); 3] =
                    [&node, &address, &ttl];
                let seen = c.execute(NODE_SEEN, &seen_params);
                let nodes = c.query(
                    "SELECT node_id FROM nodes WHERE expires_at > now() ORDER BY node_id",
                    &[],
                );
                let rows = c.query(
                    "SELECT l.partition, l.owner, n.address, l.expires_at > now() \
                     FROM partition_leases l LEFT JOIN nodes n ON n.node_id = l.owner \
                     ORDER BY l.partition",
                    &[],
                );
                let (seen, nodes, rows) = futures_util::future::join3(seen, nodes, rows).await;
                seen?;
                Ok(crate::cluster::share::Look {
                    registered: nodes?.iter().map(|r| r.get(0)).collect(),
                    rows: rows?
                        .iter()
                        .map(|r| crate::cluster::share::LeaseRow {
                            partition: u32::try_from(r.get::<_, i32>(0)).unwrap_or(0),
                            owner: r.get(1),
                            address: r.get(2),
                            live: r.get(3),
                        })
                        .collect(),
                })
            })
        })
        .await
    }

    /// Takes those of `wanted` that are free for `node` (expired or released by the
    /// database's clock, or `node`'s own from an earlier run) until `ttl` from now:
    /// bumps each epoch and logs the grant. A partition another node took meanwhile is
    /// skipped (the update re-checks each row once its lock is free; a takeover waits
    /// for the former owner's commit under way, see [`fence_sql`]).
    ///
    /// # Errors
    /// Database errors (a lock wait beyond the lock timeout among them).
    pub async fn take(
        &self,
        node: &str,
        wanted: &[u32],
        ttl: Duration,
    ) -> Result<Vec<Held>, StoreError> {
        let (node, ttl) = (node.to_owned(), ms(ttl));
        let wanted: Vec<i32> = wanted
            .iter()
            .map(|&p| i32::try_from(p).unwrap_or(i32::MAX))
            .collect();
        self.with(|c| {
            Box::pin(async move {
                let granted = c
                    .query(
                        "WITH old AS (SELECT partition, owner, expires_at FROM partition_leases \
                                      WHERE partition = ANY($3::int[])), \
                         up AS (UPDATE partition_leases l SET owner = $1, epoch = l.epoch + 1, \
                                  expires_at = now() + $2::bigint * interval '1 millisecond' \
                                FROM old WHERE old.partition = l.partition \
                                  AND (l.expires_at <= now() OR l.owner = $1) \
                                RETURNING l.partition, l.epoch, old.owner AS prev_owner, \
                                          old.expires_at AS prev_expires_at) \
                         INSERT INTO lease_log (partition, epoch, granted_at, prev_expires_at, owner, prev_owner) \
                         SELECT partition, epoch, now(), prev_expires_at, $1, prev_owner FROM up \
                         RETURNING partition, epoch",
                        &[&node, &ttl, &wanted],
                    )
                    .await?;
                let mut held: Vec<Held> = granted
                    .iter()
                    .map(|r| (u32::try_from(r.get::<_, i32>(0)).unwrap_or(0), r.get(1)))
                    .collect();
                held.sort_unstable();
                Ok(held)
            })
        })
        .await
    }

    /// Ends `node`'s leases on `held` now, keeping its registration (a planned handoff
    /// of some partitions: another node may take them at once).
    ///
    /// # Errors
    /// Database errors.
    pub async fn hand_over(&self, node: &str, held: &[Held]) -> Result<(), StoreError> {
        let node = node.to_owned();
        let parts: Vec<i32> = held.iter().map(|&(p, _)| p as i32).collect();
        let epochs: Vec<i64> = held.iter().map(|&(_, e)| e).collect();
        self.with(|c| {
            Box::pin(async move {
                c.execute(
                    "UPDATE partition_leases l SET expires_at = now() \
                     FROM unnest($2::int[], $3::bigint[]) AS h(p, e) \
                     WHERE l.partition = h.p AND l.epoch = h.e AND l.owner = $1",
                    &[&node, &parts, &epochs],
                )
                .await?;
                Ok(())
            })
        })
        .await
    }

    /// Every node seen lately and every partition's lease.
    ///
    /// # Errors
    /// Database errors.
    pub async fn status(&self) -> Result<ClusterStatus, StoreError> {
        self.with(|c| {
            Box::pin(async move {
                let parts = c.query(
                    "SELECT partition, owner, epoch, \
                       (extract(epoch FROM expires_at) * 1000)::bigint, expires_at > now() \
                     FROM partition_leases ORDER BY partition",
                    &[],
                );
                let nodes_sql = format!(
                    "SELECT node_id, address, (extract(epoch FROM last_seen) * 1000)::bigint \
                     FROM nodes WHERE expires_at >= now() - interval '{FORGET_NODES_AFTER}' \
                     ORDER BY node_id"
                );
                let nodes = c.query(&nodes_sql, &[]);
                let (parts, nodes) = futures_util::future::join(parts, nodes).await;
                let (parts, nodes) = (parts?, nodes?);
                let mut status = ClusterStatus::default();
                let mut live: Vec<(String, u32)> = Vec::new();
                for r in &parts {
                    let partition = u32::try_from(r.get::<_, i32>(0)).unwrap_or(0);
                    let owner: Option<String> = r.get(1);
                    if r.get::<_, bool>(4) {
                        if let Some(o) = &owner {
                            live.push((o.clone(), partition));
                        }
                    }
                    status.partitions.push(PartitionStatus {
                        partition,
                        owner,
                        epoch: r.get(2),
                        expires_at: r.get(3),
                    });
                }
                for r in &nodes {
                    let node_id: String = r.get(0);
                    let partitions = live
                        .iter()
                        .filter(|(o, _)| *o == node_id)
                        .map(|&(_, p)| p)
                        .collect();
                    status.nodes.push(NodeStatus {
                        address: r.get(1),
                        last_seen: r.get(2),
                        partitions,
                        node_id,
                    });
                }
                Ok(status)
            })
        })
        .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::postgres::test_db::TestDb;

    const TTL: Duration = Duration::from_secs(30);

    async fn leases(db: &TestDb, partitions: u32) -> PgLeases {
        let l = PgLeases::connect(&db.url()).await.unwrap();
        l.init(partitions).await.unwrap();
        l
    }

    #[tokio::test]
    async fn the_partition_count_is_fixed_by_the_first_node_and_another_is_refused() {
        let db = TestDb::new().await;
        let l = leases(&db, 8).await;
        l.init(8).await.unwrap();
        match l.init(16).await {
            Err(StoreError::PartitionsMismatch {
                found: 8,
                configured: 16,
            }) => {}
            other => panic!("expected a mismatch, got {other:?}"),
        }
        let s = l.status().await.unwrap();
        assert_eq!(s.partitions.len(), 8);
        assert!(s
            .partitions
            .iter()
            .all(|p| p.owner.is_none() && p.epoch == 0));
    }

    #[tokio::test]
    async fn a_node_takes_free_partitions_and_another_cannot_until_they_are_released() {
        let db = TestDb::new().await;
        let (a, b) = (leases(&db, 4).await, leases(&db, 4).await);
        let held = a
            .take_all("n1", TTL)
            .await
            .unwrap()
            .expect("free partitions");
        assert_eq!(held, vec![(0, 1), (1, 1), (2, 1), (3, 1)]);
        assert_eq!(b.take_all("n2", TTL).await.unwrap(), None, "n1 holds them");
        // Owner-scoped renewal: n2 cannot extend n1's rows, nor n1 at a stale epoch.
        assert!(b.renew("n2", "b:1", &held, TTL).await.unwrap().is_empty());
        let stale: Vec<Held> = held.iter().map(|&(p, e)| (p, e - 1)).collect();
        assert!(a.renew("n1", "a:1", &stale, TTL).await.unwrap().is_empty());
        assert_eq!(
            a.renew("n1", "a:1", &held, TTL).await.unwrap(),
            vec![0, 1, 2, 3]
        );
        // Where calls for its accounts are forwarded: n1 (renewing registered it),
        // never the looking node itself.
        let look = b.look("n2", "b:1", TTL).await.unwrap();
        assert_eq!(
            look.owners_except("n2").get(&0).map(String::as_str),
            Some("a:1")
        );
        assert!(look.owners_except("n1").is_empty());
        // A planned stop: n2 takes them at once, each at the next epoch, and the grant
        // is logged with its predecessor.
        a.release("n1", &held).await.unwrap();
        let taken = b.take_all("n2", TTL).await.unwrap().expect("released");
        assert_eq!(taken, vec![(0, 2), (1, 2), (2, 2), (3, 2)]);
        assert!(
            a.renew("n1", "a:1", &held, TTL).await.unwrap().is_empty(),
            "n1 lost them"
        );
        let log = db
            .client
            .query(
                "SELECT owner, prev_owner FROM lease_log WHERE partition = 0 ORDER BY epoch",
                &[],
            )
            .await
            .unwrap();
        let log: Vec<(String, Option<String>)> = log.iter().map(|r| (r.get(0), r.get(1))).collect();
        assert_eq!(
            log,
            vec![("n1".into(), None), ("n2".into(), Some("n1".into()))]
        );
        let s = b.status().await.unwrap();
        assert!(s
            .partitions
            .iter()
            .all(|p| p.owner.as_deref() == Some("n2")));
        // A renewal registers the node too (n2's failed one did).
        let n2 = s
            .nodes
            .iter()
            .find(|n| n.node_id == "n2")
            .expect("n2 listed");
        assert_eq!(n2.partitions, vec![0, 1, 2, 3]);
    }

    #[tokio::test]
    async fn a_lease_moves_only_once_it_expired_by_the_databases_clock() {
        let db = TestDb::new().await;
        let (a, b) = (leases(&db, 2).await, leases(&db, 2).await);
        a.register("n1", "a:1", TTL).await.unwrap();
        let started = std::time::Instant::now();
        a.take_all("n1", Duration::from_millis(300))
            .await
            .unwrap()
            .expect("free");
        // n2 looks until the lease has expired (an observable change, not a timed wait).
        let taken = loop {
            if let Some(t) = b.take_all("n2", TTL).await.unwrap() {
                break t;
            }
            assert!(started.elapsed() < Duration::from_secs(10), "never expired");
            tokio::task::yield_now().await;
        };
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "taken before expiry"
        );
        assert_eq!(taken, vec![(0, 2), (1, 2)]);
        let s = a.status().await.unwrap();
        let n1 = s
            .nodes
            .iter()
            .find(|n| n.node_id == "n1")
            .expect("n1 registered");
        assert_eq!(n1.address, "a:1");
        assert!(n1.partitions.is_empty(), "n1 owns nothing now");
    }

    #[tokio::test]
    async fn a_node_restarted_under_its_id_takes_its_own_partitions_back_at_a_new_epoch() {
        let db = TestDb::new().await;
        let (a, b) = (leases(&db, 2).await, leases(&db, 2).await);
        a.take_all("n1", TTL).await.unwrap().expect("free");
        assert_eq!(
            b.take_all("n1", TTL).await.unwrap(),
            Some(vec![(0, 2), (1, 2)])
        );
    }

    /// The fence: a takeover's `FOR UPDATE` waits for an owner's commit under way (which
    /// holds the rows `FOR KEY SHARE`), and an owner's commit after a takeover aborts.
    #[tokio::test]
    async fn a_takeover_waits_for_the_owners_commit_and_then_fences_its_next_one() {
        let db = TestDb::new().await;
        let (a, b) = (leases(&db, 2).await, leases(&db, 2).await);
        let held = a.take_all("n1", TTL).await.unwrap().expect("free");
        a.release("n1", &held).await.unwrap();
        let parts: Vec<i32> = held.iter().map(|&(p, _)| p as i32).collect();
        let epochs: Vec<i64> = held.iter().map(|&(_, e)| e).collect();
        let n = parts.len() as i64;
        // n1's group: a write, then the fence (the lease released meanwhile does not
        // matter to it: the epoch is still n1's), not yet committed.
        let mut owner = db.connect().await;
        let tx = owner.transaction().await.unwrap();
        tx.execute(
            "INSERT INTO store_meta (key, value) VALUES ('probe', 'n1')",
            &[],
        )
        .await
        .unwrap();
        tx.query(fence_sql(), &[&"n1", &parts, &epochs, &n])
            .await
            .unwrap();
        let take = tokio::spawn(async move { b.take_all("n2", TTL).await });
        // The takeover waits on the fence's row locks.
        let watcher = db.connect().await;
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        loop {
            let waiting: i64 = watcher
                .query_one(
                    "SELECT count(*) FROM pg_stat_activity \
                     WHERE datname = current_database() AND wait_event_type = 'Lock'",
                    &[],
                )
                .await
                .unwrap()
                .get(0);
            if waiting > 0 {
                break;
            }
            assert!(
                !take.is_finished(),
                "the takeover did not wait for the owner's commit"
            );
            assert!(
                std::time::Instant::now() < deadline,
                "the takeover never waited"
            );
            tokio::task::yield_now().await;
        }
        tx.commit().await.unwrap();
        let taken = take
            .await
            .unwrap()
            .unwrap()
            .expect("taken after the commit");
        assert_eq!(taken, vec![(0, 2), (1, 2)]);
        // n1's next group is fenced: nothing of it commits.
        let tx = owner.transaction().await.unwrap();
        tx.execute(
            "UPDATE store_meta SET value = 'late' WHERE key = 'probe'",
            &[],
        )
        .await
        .unwrap();
        let e = tx
            .query(fence_sql(), &[&"n1", &parts, &epochs, &n])
            .await
            .expect_err("fenced");
        assert!(is_fence_refusal(&e), "{e}");
        // COMMIT of an aborted transaction answers ROLLBACK, not an error: what tells
        // the writer is the fence's own error.
        tx.commit().await.unwrap();
        let v: String = db
            .client
            .query_one("SELECT value FROM store_meta WHERE key = 'probe'", &[])
            .await
            .unwrap()
            .get(0);
        assert_eq!(
            v, "n1",
            "the write before the takeover is kept, the one after is not"
        );
    }
}
