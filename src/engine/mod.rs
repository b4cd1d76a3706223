//! The engine: ties the domain rules, the store and the timing wheel together.
//!
//! Ownership (DESIGN.md principle 7): the wheel sits behind a `std::sync::Mutex` held
//! only for short, synchronous sections (a few wheel operations), never across an await
//! or I/O. Chosen over an actor because the writer thread applies committed timer
//! changes directly (in commit order) and the driver only needs the lock to advance:
//! an actor would add a channel hop to every schedule for no gain in safety.
//!
//! The driver task sleeps until the wheel's next deadline (or until a commit sets an
//! earlier one and wakes it), advances the wheel, and pushes the due item ids into the
//! ready queue that dispatch drains. The wheel is only an index of what is due when:
//! every decision is re-checked against SQLite when the item is leased.

mod commands;
mod controls;
mod queries;
mod settings;
mod timers;
pub(crate) mod transitions;

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use crate::clock::Clock;
use crate::config::{DispatchConfig, Limits, Synchronous};
use crate::domain::{self, ItemId, Millis};
use crate::store::{CommitHook, Effects, Store, StoreError};

pub use commands::Changes;
pub use controls::{Controls, ControlsSnapshot, EVERY_ACCOUNT};
pub use queries::{
    make_page_token, parse_page_token, Audience, DeferredTicket, Event, ListQuery, Order, Page,
};
pub use settings::{AccountControls, ControlChange};
pub use timers::{Fired, ReadyQueue, Timers};

/// Live (PENDING + DISPATCHING) item counts per account, for the pending quota:
/// committed live items plus slots reserved by writes not yet durable. A schedule
/// counts its slot inside its write (so the writes of one group cannot overshoot the
/// quota together) and the store gives it back if the write does not commit; a slot
/// freed by a cancel or an outcome is counted only once that write is durable. So the
/// count is never below the truth and returns to it once the writer is idle.
#[derive(Default)]
pub(crate) struct LiveCounts(Mutex<HashMap<String, u64>>);

/// Applies the store's effects to the wheel and the quota counts.
struct EngineHook {
    timers: Arc<Timers>,
    live: Arc<LiveCounts>,
}

impl CommitHook for EngineHook {
    fn durable(&self, fx: &Effects) {
        if !fx.timers.is_empty() {
            self.timers.apply(&fx.timers);
        }
        for account in &fx.released {
            self.live.sub(account, 1);
        }
    }

    fn abandoned(&self, fx: &Effects) {
        for account in &fx.reserved {
            self.live.sub(account, 1);
        }
    }
}

impl LiveCounts {
    fn get(&self, account: &str) -> u64 {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(account)
            .copied()
            .unwrap_or(0)
    }
    fn add(&self, account: &str, n: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        *m.entry(account.to_owned()).or_insert(0) += n;
    }
    fn sub(&self, account: &str, n: u64) {
        let mut m = self.0.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(c) = m.get_mut(account) {
            *c = c.saturating_sub(n);
        }
    }
}

/// How often a node among several re-reads the controls of every account (`*`): a
/// pause or rate limit set on `*`'s owner is in force on the others within about this.
pub const FOLLOW_EVERY_ACCOUNT: std::time::Duration = std::time::Duration::from_secs(1);

/// The engine handle; cheap to clone.
#[derive(Clone)]
pub struct Engine {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) store: Store,
    pub(crate) timers: Arc<Timers>,
    pub(crate) clock: Arc<dyn Clock>,
    pub(crate) limits: Limits,
    pub(crate) dispatch: DispatchConfig,
    pub(crate) live: Arc<LiveCounts>,
    pub(crate) controls: Controls,
    /// The trust window of a node owning partitions among several; `None`: one node.
    pub(crate) trust: Option<Arc<crate::cluster::trust::Trust>>,
}

/// What start-up recovery found.
#[derive(Debug, Clone, Copy)]
pub struct Recovery {
    /// Live items put back on the wheel.
    pub timers: usize,
    /// Of those, already due (they fire at once, oldest first).
    pub overdue: usize,
    /// Items that were leased (DISPATCHING) when the previous process stopped; they are
    /// redelivered at once.
    pub leased: usize,
}

impl Engine {
    /// Opens the store, rebuilds the wheel from the live rows, and starts the driver.
    ///
    /// # Errors
    /// The database cannot be opened or read.
    pub async fn open(
        path: &std::path::Path,
        sync: Synchronous,
        clock: Arc<dyn Clock>,
        limits: Limits,
        dispatch: DispatchConfig,
        ownership: Option<crate::cluster::Ownership>,
    ) -> Result<(Engine, Recovery), StoreError> {
        let timers = Arc::new(Timers::new(clock.now_ms()));
        let live = Arc::new(LiveCounts::default());
        let hook = Arc::new(EngineHook {
            timers: timers.clone(),
            live: live.clone(),
        });
        let target = crate::store::DbTarget::parse(&path.to_string_lossy());
        let fence = ownership.as_ref().map(|o| o.fence.clone());
        let metrics = ownership.as_ref().and_then(|o| o.metrics.clone());
        let store = Store::open_node(&target, sync, clock.clone(), hook, fence, metrics)?;
        let engine = Engine {
            inner: Arc::new(Inner {
                store,
                timers,
                clock,
                limits,
                dispatch,
                live,
                controls: Controls::default(),
                trust: ownership.map(|o| o.trust),
            }),
        };
        let recovery = engine.recover().await.map_err(|e| StoreError::Unusable {
            path: target.display().into(),
            reason: e.to_string(),
        })?;
        engine.inner.timers.spawn_driver(engine.inner.clock.clone());
        Ok((engine, recovery))
    }

    /// Rebuilds the wheel and the live counts from SQLite: ids and times only, read from
    /// the partial index `items_live` (the wheel fires overdue items oldest first).
    async fn recover(&self) -> domain::Result<Recovery> {
        let now = self.inner.clock.now_ms();
        let tickets = self.inner.store.live_tickets();
        let scan = self.inner.store.recovery_scan().await?;
        tickets.set_ready();
        self.inner.controls.replace(&scan.controls);
        let overdue = scan.timers.iter().filter(|(_, at)| *at <= now).count();
        self.inner.timers.load(&scan.timers);
        for (account, n) in scan.live_counts {
            self.inner.live.add(&account, n);
        }
        Ok(Recovery {
            timers: scan.timers.len(),
            overdue,
            leased: scan.leased,
        })
    }

    /// The store (for dispatch and event streaming).
    pub fn store(&self) -> &Store {
        &self.inner.store
    }

    /// This server's counters and histograms (`/metrics`).
    pub fn metrics(&self) -> &Arc<crate::metrics::Metrics> {
        self.inner.store.metrics()
    }

    /// The clock.
    pub fn clock(&self) -> &Arc<dyn Clock> {
        &self.inner.clock
    }

    /// The limits in force.
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// Dispatch tuning.
    pub fn dispatch_config(&self) -> &DispatchConfig {
        &self.inner.dispatch
    }

    /// Dispatch controls (pause, rate limits) in force.
    pub fn controls(&self) -> &Controls {
        &self.inner.controls
    }

    /// The queue of item ids that fell due.
    pub fn ready(&self) -> &ReadyQueue {
        &self.inner.timers.ready
    }

    /// Advances the wheel to `now` at once (the driver's work, done inline) and queues
    /// what is due.
    pub fn catch_up(&self, now: Millis) {
        self.inner.timers.catch_up(now);
    }

    /// Whether a timer is due by `now` and not yet queued.
    pub fn due_by(&self, now: Millis) -> bool {
        self.inner.timers.due_by(now)
    }

    /// Whether the item has a timer (on the wheel, or fired early and held back).
    pub fn has_timer(&self, id: ItemId) -> bool {
        self.inner.timers.contains(id)
    }

    /// Ids of every live (PENDING or DISPATCHING) item, from the store.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn live_item_ids(&self) -> domain::Result<Vec<ItemId>> {
        self.inner.store.live_item_ids().await
    }

    /// Whether jobs may leave now: always on one node; among several, only inside the
    /// trust window of the node's leases.
    pub fn may_hand_out(&self) -> bool {
        self.inner.trust.as_ref().is_none_or(|t| t.holds())
    }

    /// Resolves when the node's leases are renewed (the trust window may have opened);
    /// never on one node, whose window is always open.
    pub async fn trust_renewed(&self) {
        match &self.inner.trust {
            Some(t) => t.renewal().await,
            None => std::future::pending().await,
        }
    }

    /// Pending timers on the wheel.
    pub fn pending_timers(&self) -> usize {
        self.inner.timers.len()
    }

    /// Stops the driver and the store (after queued writes).
    pub async fn close(&self) {
        self.inner.timers.stop();
        self.inner.store.close().await;
    }
}

/// Events deleted per write when pruning.
pub const PRUNE_BATCH: u32 = 1_000;

impl Engine {
    /// Deletes events older than `retention_ms` (by the engine's clock); returns how
    /// many. Walks the sequence from its start in batches of [`PRUNE_BATCH`], one write
    /// each, so a large backlog never holds the writer for long.
    ///
    /// # Errors
    /// Storage errors.
    pub async fn prune_events(&self, retention_ms: i64) -> domain::Result<usize> {
        let cutoff = self.inner.clock.now_ms().saturating_sub(retention_ms);
        let mut total = 0;
        loop {
            let n = self
                .inner
                .store
                .write(move |tx| tx.prune_events(cutoff, PRUNE_BATCH))
                .await?;
            total += n;
            if n < PRUNE_BATCH as usize {
                return Ok(total);
            }
        }
    }

    /// Follows the dispatch controls of every account (`*`) that another node writes:
    /// re-reads their rows every [`FOLLOW_EVERY_ACCOUNT`] (real time) and applies a
    /// change as a local one is applied (see `controls`), until `stop` is cancelled. For
    /// a server owning some partitions among several nodes; one owning every partition
    /// writes `*` itself and needs none.
    pub fn spawn_every_account_follower(&self, stop: tokio_util::sync::CancellationToken) {
        let me = self.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(FOLLOW_EVERY_ACCOUNT);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            let mut failing = false;
            loop {
                tokio::select! {
                    _ = tick.tick() => {}
                    _ = stop.cancelled() => return,
                }
                let read_at = me.inner.controls.version();
                match me.inner.store.every_account_controls().await {
                    Ok(rows) => {
                        if failing {
                            failing = false;
                            tracing::info!("the controls of every account can be read again");
                        }
                        if me.inner.controls.follow_every_account(&rows, read_at) {
                            let (paused, limits) = me
                                .inner
                                .controls
                                .snapshot()
                                .of_account(controls::EVERY_ACCOUNT);
                            tracing::info!(
                                account = controls::EVERY_ACCOUNT,
                                paused = ?paused,
                                rate_limits = ?limits,
                                "the controls of every account changed on another node"
                            );
                        }
                    }
                    Err(e) if !failing => {
                        failing = true;
                        tracing::warn!(error = %e, "cannot read the controls of every account; keeping those known");
                    }
                    Err(_) => {}
                }
            }
        });
    }

    /// Prunes old events now and then (every tenth of the retention, at most hourly),
    /// on the engine's clock, until `stop` is cancelled.
    pub fn spawn_event_pruner(&self, retention_ms: i64, stop: tokio_util::sync::CancellationToken) {
        let me = self.clone();
        let every = (retention_ms / 10).clamp(1_000, 3_600_000);
        tokio::spawn(async move {
            loop {
                let next = me.inner.clock.now_ms() + every;
                tokio::select! {
                    _ = me.inner.clock.sleep_until(next) => {}
                    _ = stop.cancelled() => return,
                }
                match me.prune_events(retention_ms).await {
                    Ok(0) => {}
                    Ok(n) => tracing::info!(pruned = n, "pruned old events"),
                    Err(e) => tracing::warn!(error = %e, "event pruning failed"),
                }
            }
        });
    }
}
