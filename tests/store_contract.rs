//! The store's contract (`src/store/mod.rs`, "Contract (every backend)"), checked through
//! the public API on both engines: every test runs once on a temporary SQLite file and
//! once on a fresh PostgreSQL database (`common::pg::fresh_database`, which fails without
//! `SENDLATER_TEST_PG`: PostgreSQL is required, never skipped).
//!
//! Items and their changes come from the state machine (`domain::machine::schedule` and
//! `step`), as the engine makes them; the [`CommitHook`] records what it is handed.
//! Several writes are made to share a group by queueing them behind a first write that
//! holds the writer until they are all queued (no sleeps, no time windows).
mod common;

use std::collections::{BTreeMap, BTreeSet};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use sendlater::clock::ManualClock;
use sendlater::config::Synchronous;
use sendlater::domain::machine::{self, Command, Retry, SendTime, Step};
use sendlater::domain::{
    self, Activity, AuthorKind, BusinessHours, Channel, ChatContent, Content, DeferredTicket,
    EmailContent, Error, EventType, Item, ItemId, Kind, ListQuery, Millis, NewItem, OnActivity,
    Order, State, Timing,
};
use sendlater::store::{CommitHook, ControlRow, DbTarget, Effects, Store, StoreError, Tx, WheelOp};

/// The manual clock's start: 2026-11-25T12:00:00Z (as `common::T0`).
const T0: Millis = common::T0;
const MINUTE: Millis = 60_000;
const HOUR: Millis = 60 * MINUTE;

// ---------------------------------------------------------------------------------------
// The two engines
// ---------------------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Engine {
    Sqlite,
    Postgres,
}

/// Runs the contract test `$name` (an `async fn(Engine)`) on each engine, as
/// `$name::on_sqlite` and `$name::on_postgres`.
macro_rules! on_both_engines {
    ($($name:ident),+ $(,)?) => {$(
        mod $name {
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_sqlite() {
                super::$name(super::Engine::Sqlite).await
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
            async fn on_postgres() {
                super::$name(super::Engine::Postgres).await
            }
        }
    )+};
}

on_both_engines!(
    a_write_resolves_only_after_its_effects_reached_the_hook_in_commit_order,
    a_write_that_fails_rolls_back_alone_and_its_effects_are_handed_back_as_abandoned,
    an_isolated_step_that_fails_rolls_back_only_that_step,
    reads_inside_a_write_see_its_own_changes_and_those_of_earlier_writes,
    after_a_write_resolves_every_read_sees_it,
    events_after_resumes_exactly_across_pages_in_commit_order_and_per_account,
    event_sequence_watchers_see_a_sequence_only_once_its_write_is_durable,
    reopening_keeps_every_acknowledged_write_and_ids_and_sequences_keep_growing,
    event_sequences_are_not_reused_after_every_event_was_pruned_and_the_store_reopened,
    recovery_scan_after_reopen_reports_exactly_the_live_items_counts_leases_and_controls,
    find_by_request_returns_the_current_item_and_the_fingerprint_of_its_request,
    a_database_with_a_newer_schema_is_refused,
);

/// What the store handed to its [`CommitHook`], in the order it was handed.
#[derive(Default)]
struct Hook {
    durable: Mutex<Vec<Effects>>,
    abandoned: Mutex<Vec<Effects>>,
    /// The highest event sequence handed over as durable.
    durable_seq: AtomicU64,
}

impl CommitHook for Hook {
    fn durable(&self, fx: &Effects) {
        self.durable.lock().unwrap().push(fx.clone());
        self.durable_seq.fetch_max(fx.max_seq, Ordering::SeqCst);
    }
    fn abandoned(&self, fx: &Effects) {
        self.abandoned.lock().unwrap().push(fx.clone());
    }
}

impl Hook {
    fn durable_all(&self) -> Effects {
        let mut all = Effects::default();
        for fx in self.durable.lock().unwrap().iter() {
            all.append(fx.clone());
        }
        all
    }
    fn abandoned_all(&self) -> Effects {
        let mut all = Effects::default();
        for fx in self.abandoned.lock().unwrap().iter() {
            all.append(fx.clone());
        }
        all
    }
}

/// One database of one engine, with the clock its stores run on.
struct Db {
    engine: Engine,
    target: DbTarget,
    clock: ManualClock,
    _dir: tempfile::TempDir,
}

impl Db {
    async fn new(engine: Engine) -> Db {
        let dir = tempfile::tempdir().expect("a temporary folder");
        let target = match engine {
            Engine::Sqlite => DbTarget::Sqlite(dir.path().join("contract.db")),
            Engine::Postgres => DbTarget::Postgres(common::pg::fresh_database().await),
        };
        Db {
            engine,
            target,
            clock: ManualClock::new(T0),
            _dir: dir,
        }
    }

    async fn try_open(&self) -> Result<(Store, Arc<Hook>), StoreError> {
        let hook = Arc::new(Hook::default());
        let (target, clock, h) = (self.target.clone(), self.clock.clone(), hook.clone());
        tokio::task::spawn_blocking(move || {
            Store::open_target(&target, Synchronous::Full, Arc::new(clock), h)
        })
        .await
        .expect("open does not panic")
        .map(|store| (store, hook))
    }

    async fn open(&self) -> (Store, Arc<Hook>) {
        self.try_open().await.unwrap_or_else(|e| {
            panic!(
                "{:?}: cannot open {}: {e}",
                self.engine,
                self.target.display()
            )
        })
    }

    fn clock_now(&self) -> Millis {
        use sendlater::clock::Clock;
        self.clock.now_ms()
    }

    /// Advances the clock by a second (so successive writes have distinct times).
    fn tick(&self) {
        self.clock.advance(std::time::Duration::from_secs(1));
    }
}

// ---------------------------------------------------------------------------------------
// Items and their changes, through the state machine
// ---------------------------------------------------------------------------------------

fn new_item(account: &str, ticket: &str, n: i64) -> NewItem {
    let content = if n % 3 == 2 {
        Content::Chat(ChatContent {
            conversation_id: format!("conv-{ticket}"),
            text: format!("chat reply {n}"),
            attachments: vec![],
        })
    } else {
        Content::Email(EmailContent {
            to: vec![format!("client{n}@example.org")],
            subject: format!("Re: case {ticket}"),
            text_body: format!("Hello, reply {n} é ✓"),
            ..Default::default()
        })
    };
    NewItem {
        account_id: account.into(),
        ticket_id: ticket.into(),
        kind: if n % 5 == 4 {
            Kind::NewTicket
        } else {
            Kind::Reply
        },
        channel: content.channel(),
        author_id: format!("agent-{}", n % 4),
        content,
        // Distinct times, not in id order.
        send_at: T0 + HOUR + (n * 7_919 % 1_000) * MINUTE + n,
        on_activity: OnActivity::ConvertToNote,
        request_id: None,
        timing: Timing::default(),
    }
}

/// Stores a new item as the engine does: `machine::schedule`, `insert`, `save_new`.
fn insert(tx: &mut Tx<'_>, new: &NewItem) -> domain::Result<(Item, u64)> {
    let (mut item, change) = machine::schedule(new.clone(), 0, new.send_at, tx.now);
    item.id = tx.insert(new, new.send_at, &item.timing)?;
    let seq = tx.save_new(&item, change)?;
    Ok((item, seq))
}

/// Applies `cmd` to `item` through the state machine and saves the change; returns
/// the event's sequence and type. An unchanged item is an error (the tests only make
/// changes).
fn apply_event(tx: &mut Tx<'_>, item: &mut Item, cmd: Command) -> domain::Result<(u64, EventType)> {
    match machine::step(item, cmd.clone(), tx.now)? {
        Step::Changed(change) => Ok((tx.save(item, change)?, change.event)),
        Step::Unchanged { .. } => Err(Error::Internal(format!(
            "{cmd:?} changed nothing on item {} ({})",
            item.id, item.state
        ))),
    }
}

/// As [`apply_event`], returning the sequence.
fn apply(tx: &mut Tx<'_>, item: &mut Item, cmd: Command) -> domain::Result<u64> {
    Ok(apply_event(tx, item, cmd)?.0)
}

/// Loads the account's item `id` in the write, applies `cmd`, saves it.
fn change(tx: &mut Tx<'_>, account: &str, id: ItemId, cmd: Command) -> domain::Result<(Item, u64)> {
    let mut item = tx
        .load(account, id)?
        .ok_or_else(|| Error::NotFound(format!("item {id}")))?;
    let seq = apply(tx, &mut item, cmd)?;
    Ok((item, seq))
}

fn lease(item: &Item, now: Millis) -> Command {
    Command::Lease {
        due: item.next_send_at(),
        expires: now + 5 * MINUTE,
    }
}

fn retry() -> Retry {
    Retry {
        max_attempts: 5,
        base_ms: 10_000,
        cap_ms: HOUR,
        jitter: 0.5,
    }
}

/// A write that holds the writer until the returned sender is used (or dropped), so
/// the writes queued meanwhile run together in the next group.
async fn hold_the_writer(store: &Store) -> (std::sync::mpsc::Sender<()>, impl Future<Output = ()>) {
    let (release, held) = std::sync::mpsc::channel::<()>();
    let (running_tx, running) = tokio::sync::oneshot::channel::<()>();
    let done = store
        .enqueue(move |_tx| {
            let _ = running_tx.send(());
            let _ = held.recv();
            Ok(())
        })
        .await
        .expect("the holding write is queued");
    running.await.expect("the holding write runs");
    (release, async move {
        done.await.expect("the holding write commits");
    })
}

fn account_query(account: &str, state: Option<State>) -> ListQuery {
    ListQuery {
        account_id: account.into(),
        state,
        ..Default::default()
    }
}

// ---------------------------------------------------------------------------------------
// Group commit and the hook
// ---------------------------------------------------------------------------------------

/// Contract: a write's effects reach the hook after its group is durable, in commit
/// order, before its caller is answered. 64 writes queued together, each awaited on its
/// own task: when one resolves, its timer is already in the hook's durable effects; the
/// hook saw the timers in the order the writes ran (their sequences), which is the
/// order they were queued.
async fn a_write_resolves_only_after_its_effects_reached_the_hook_in_commit_order(e: Engine) {
    let db = Db::new(e).await;
    let (store, hook) = db.open().await;
    let (release, held) = hold_the_writer(&store).await;
    let mut waiting = Vec::new();
    for n in 0..64 {
        let new = new_item(
            if n % 2 == 0 { "acme" } else { "beta" },
            &format!("t{n}"),
            n,
        );
        let done = store
            .enqueue(move |tx| insert(tx, &new))
            .await
            .expect("queued");
        let hook = hook.clone();
        waiting.push(tokio::spawn(async move {
            let (item, seq) = done.await.expect("the write commits");
            let seen = hook
                .durable_all()
                .timers
                .contains(&WheelOp::Set(item.id, item.send_at));
            (item, seq, seen)
        }));
    }
    release.send(()).unwrap();
    held.await;
    let mut written = Vec::new();
    for w in waiting {
        written.push(w.await.unwrap());
    }
    for (item, seq, seen) in &written {
        assert!(
            seen,
            "{e:?}: the write of item {} (event {seq}) resolved before its timer reached the hook",
            item.id
        );
    }
    // Queue order is commit order: ids and sequences grow with it.
    for pair in written.windows(2) {
        assert!(
            pair[0].0.id < pair[1].0.id && pair[0].1 < pair[1].1,
            "{e:?}: writes queued in order ran out of order: {:?} then {:?}",
            (pair[0].0.id, pair[0].1),
            (pair[1].0.id, pair[1].1)
        );
    }
    let timers = hook.durable_all().timers;
    let expected: Vec<WheelOp> = written
        .iter()
        .map(|(item, _, _)| WheelOp::Set(item.id, item.send_at))
        .collect();
    assert_eq!(
        timers, expected,
        "{e:?}: the hook's timers, in commit order"
    );
    let seqs: Vec<u64> = hook
        .durable
        .lock()
        .unwrap()
        .iter()
        .map(|fx| fx.max_seq)
        .filter(|&s| s > 0)
        .collect();
    assert!(
        seqs.windows(2).all(|w| w[0] < w[1]),
        "{e:?}: durable effects handed over out of commit order: {seqs:?}"
    );
    assert_eq!(seqs.last().copied(), written.last().map(|w| w.1));
    assert!(
        hook.abandoned_all().timers.is_empty(),
        "{e:?}: nothing was abandoned"
    );
    store.close().await;
}

/// Contract: a write whose closure returns `Err` rolls back alone, while the other
/// writes of its group commit; its effects are handed back as abandoned before its
/// caller sees the error. Every fourth of 40 writes queued together (each on an
/// account of its own) inserts an item, cancels it, then fails.
async fn a_write_that_fails_rolls_back_alone_and_its_effects_are_handed_back_as_abandoned(
    e: Engine,
) {
    let db = Db::new(e).await;
    let (store, hook) = db.open().await;
    let (release, held) = hold_the_writer(&store).await;
    let mut waiting = Vec::new();
    for n in 0..40 {
        let fails = n % 4 == 1;
        let account = if fails {
            format!("bad{n}")
        } else {
            "good".to_string()
        };
        let mut new = new_item(&account, &format!("t{n}"), n);
        new.request_id = Some(format!("r{n}"));
        let done = store
            .enqueue(move |tx| {
                let (mut item, _) = insert(tx, &new)?;
                if fails {
                    change(tx, &item.account_id, item.id, Command::Cancel)?;
                    return Err(Error::FailedPrecondition(format!("write {n} refuses")));
                }
                if n == 2 {
                    // A change the last write of the group looks for.
                    apply(tx, &mut item, Command::SendNow)?;
                }
                Ok(item)
            })
            .await
            .expect("queued");
        let hook = hook.clone();
        waiting.push(tokio::spawn(async move {
            let r = done.await;
            let abandoned = hook.abandoned_all();
            (n, account, r, abandoned)
        }));
    }
    // The last write of the group: write 2's change is in the open group, uncommitted.
    let last = store
        .enqueue(|tx| {
            let (item, _) = tx
                .find_by_request("good", "r2")?
                .ok_or_else(|| Error::NotFound("r2".into()))?;
            Ok(tx.changed_in_group(item.id))
        })
        .await
        .expect("queued");
    release.send(()).unwrap();
    held.await;
    assert_eq!(
        last.await,
        Ok(true),
        "{e:?}: the writes queued together ran in one group"
    );
    let mut good = Vec::new();
    for w in waiting {
        let (n, account, r, abandoned_then) = w.await.unwrap();
        if n % 4 == 1 {
            assert_eq!(
                r,
                Err(Error::FailedPrecondition(format!("write {n} refuses"))),
                "{e:?}: the failing write gets its own error"
            );
            assert!(
                abandoned_then.reserved.contains(&account)
                    && abandoned_then.released.contains(&account),
                "{e:?}: write {n}'s effects were not handed back as abandoned before it \
                 was answered: {abandoned_then:?}"
            );
        } else {
            good.push(r.unwrap_or_else(|err| panic!("{e:?}: write {n} failed: {err}")));
        }
    }
    assert_eq!(good.len(), 30);
    let durable = hook.durable_all();
    assert!(
        durable
            .reserved
            .iter()
            .chain(&durable.released)
            .all(|a| a == "good"),
        "{e:?}: a failed write's effects were handed over as durable: {durable:?}"
    );
    let sets = durable
        .timers
        .iter()
        .filter(|t| matches!(t, WheelOp::Set(..)))
        .count();
    assert_eq!(
        sets, 31,
        "{e:?}: one durable timer per committed write, and send now's"
    );
    assert!(
        !durable
            .timers
            .iter()
            .any(|t| matches!(t, WheelOp::Remove(_))),
        "{e:?}: the failed writes' cancels must not take effect: {:?}",
        durable.timers
    );
    let abandoned = hook.abandoned_all();
    assert_eq!(abandoned.reserved.len(), 10, "{e:?}: {abandoned:?}");
    let mut missing = Vec::new();
    for item in &good {
        if store
            .get_item("good".into(), item.id)
            .await
            .unwrap()
            .is_none()
        {
            missing.push(item.id);
        }
    }
    let evs = store.events_after(None, 0, 1000).await.unwrap().events;
    let stored: Vec<(u64, ItemId)> = evs.iter().map(|ev| (ev.sequence, ev.item.id)).collect();
    let written: Vec<ItemId> = good.iter().map(|i| i.id).collect();
    assert!(
        missing.is_empty(),
        "{e:?}: committed writes of the group are missing: {missing:?}; written {written:?}; events {stored:?}"
    );
    for item in &good {
        assert_eq!(
            store
                .get_item("good".into(), item.id)
                .await
                .unwrap()
                .as_ref(),
            Some(item),
            "{e:?}: a committed write of the group is missing"
        );
    }
    for n in (1..40).step_by(4) {
        let account = format!("bad{n}");
        assert!(
            store
                .ticket_items(account.clone(), format!("t{n}"))
                .await
                .unwrap()
                .is_empty(),
            "{e:?}: write {n} failed but its item is stored"
        );
        assert!(
            store
                .events_after(Some(account.clone()), 0, 10)
                .await
                .unwrap()
                .events
                .is_empty(),
            "{e:?}: write {n} failed but its events are stored"
        );
    }
    let events = store.events_after(None, 0, 1000).await.unwrap().events;
    assert_eq!(
        events.len(),
        31,
        "{e:?}: one SCHEDULED event per committed write, and send now's UPDATED"
    );
    assert!(events.iter().all(|ev| ev.item.account_id == "good"));
    store.close().await;
}

/// `Tx::isolated`: an inner `Err` rolls back only what the inner step did (its row
/// changes, its events, its effects); the write goes on, sees the item as before the
/// step, and commits its own changes, including those of a later isolated step that
/// succeeded.
async fn an_isolated_step_that_fails_rolls_back_only_that_step(e: Engine) {
    let db = Db::new(e).await;
    let (store, hook) = db.open().await;
    let (a, b) = store
        .write(|tx| {
            let (a, _) = insert(tx, &new_item("acme", "t1", 1))?;
            let (b, _) = insert(tx, &new_item("acme", "t1", 2))?;
            Ok((a, b))
        })
        .await
        .unwrap();
    db.tick();
    let moved_to = T0 + 30 * HOUR;
    let (a_id, b_id) = (a.id, b.id);
    let (inner_err, b_after_failed_step, inner_ok, after) = store
        .write(move |tx| {
            change(tx, "acme", a_id, Command::Cancel)?;
            let inner_err = tx.isolated(|tx| {
                change(
                    tx,
                    "acme",
                    b_id,
                    Command::Edit {
                        send_at: Some(SendTime {
                            requested: moved_to,
                            at: moved_to,
                            local: None,
                        }),
                        content: None,
                        on_activity: Some(OnActivity::Keep),
                    },
                )?;
                change(tx, "acme", b_id, Command::Cancel)?;
                Err::<(), _>(Error::FailedPrecondition("the inner step gives up".into()))
            })?;
            let b_after_failed_step = tx.load("acme", b_id)?;
            let inner_ok = tx.isolated(|tx| Ok(change(tx, "acme", b_id, Command::SendNow)?.0))?;
            let after = tx.load("acme", b_id)?;
            Ok((inner_err, b_after_failed_step, inner_ok, after))
        })
        .await
        .unwrap_or_else(|err| panic!("{e:?}: the write must commit: {err}"));
    assert_eq!(
        inner_err,
        Err(Error::FailedPrecondition("the inner step gives up".into()))
    );
    assert_eq!(
        b_after_failed_step.as_ref(),
        Some(&b),
        "{e:?}: inside the write, the failed step's changes are gone"
    );
    let sent_now = inner_ok.expect("the second isolated step succeeds");
    assert_eq!(sent_now.send_at, db.clock_now());
    assert_eq!(after.as_ref(), Some(&sent_now));

    let stored_b = store.get_item("acme".into(), b.id).await.unwrap().unwrap();
    assert_eq!(
        stored_b, sent_now,
        "{e:?}: B as the successful step left it"
    );
    assert_eq!(stored_b.on_activity, OnActivity::ConvertToNote);
    let stored_a = store.get_item("acme".into(), a.id).await.unwrap().unwrap();
    assert_eq!(
        stored_a.state,
        State::Cancelled,
        "{e:?}: the outer part committed"
    );
    let kinds: Vec<(EventType, ItemId)> = store
        .events_after(Some("acme".into()), 0, 100)
        .await
        .unwrap()
        .events
        .iter()
        .map(|ev| (ev.kind, ev.item.id))
        .collect();
    assert_eq!(
        kinds,
        [
            (EventType::Scheduled, a.id),
            (EventType::Scheduled, b.id),
            (EventType::Cancelled, a.id),
            (EventType::Updated, b.id),
        ],
        "{e:?}: no event of the rolled-back step"
    );
    let timers = hook.durable_all().timers;
    assert!(
        !timers.contains(&WheelOp::Set(b.id, moved_to)) && !timers.contains(&WheelOp::Remove(b.id)),
        "{e:?}: the rolled-back step's timers took effect: {timers:?}"
    );
    assert!(timers.contains(&WheelOp::Remove(a.id)));
    assert!(timers.contains(&WheelOp::Set(b.id, sent_now.send_at)));
    store.close().await;
}

// ---------------------------------------------------------------------------------------
// Reads inside and after writes
// ---------------------------------------------------------------------------------------

/// Contract: inside a write, reads see every change made before them, the write's own
/// and those of earlier writes of the same (uncommitted) group.
async fn reads_inside_a_write_see_its_own_changes_and_those_of_earlier_writes(e: Engine) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    let (release, held) = hold_the_writer(&store).await;
    let mut new = new_item("acme", "t1", 1);
    new.request_id = Some("req-1".into());
    let fingerprint = new.fingerprint();
    let first = store
        .enqueue(move |tx| {
            let (item, _) = insert(tx, &new)?;
            let loaded = tx.load("acme", item.id)?;
            let other_account = tx.load("beta", item.id)?;
            let by_request = tx.find_by_request("acme", "req-1")?;
            let mut leased = item.clone();
            apply(tx, &mut leased, lease(&item, tx.now))?;
            let checked = tx.load_checked(leased.id)?;
            Ok((item, loaded, other_account, by_request, leased, checked))
        })
        .await
        .unwrap();
    // Queued behind, in the same group: sees the first write's item as it left it.
    let second = store
        .enqueue(move |tx| {
            let found = tx.find_by_request("acme", "req-1")?;
            let Some((mut item, _)) = found.clone() else {
                return Ok((found, None, None));
            };
            apply(
                tx,
                &mut item,
                Command::Ack {
                    provider_message_id: Some("<p1@mail>".into()),
                },
            )?;
            let after_ack = tx.load_checked(item.id)?;
            let (other, _) = insert(tx, &new_item("acme", "t1", 2))?;
            let mut cancelled = other.clone();
            apply(tx, &mut cancelled, Command::Cancel)?;
            let other_now = tx.load("acme", other.id)?;
            Ok((found, after_ack, other_now))
        })
        .await
        .unwrap();
    release.send(()).unwrap();
    held.await;
    let (item, loaded, other_account, by_request, leased, checked) =
        first.await.unwrap_or_else(|err| panic!("{e:?}: {err}"));
    assert_eq!(loaded.as_ref(), Some(&item), "{e:?}: load after insert");
    assert_eq!(other_account, None, "{e:?}: load checks the account");
    assert_eq!(
        by_request,
        Some((item.clone(), fingerprint)),
        "{e:?}: find_by_request after insert"
    );
    assert_eq!(leased.state, State::Dispatching);
    assert_eq!(
        checked,
        Some(Ok(leased.clone())),
        "{e:?}: load_checked after save"
    );
    let (found, after_ack, other_now) = second.await.unwrap_or_else(|err| panic!("{e:?}: {err}"));
    assert_eq!(
        found,
        Some((leased, fingerprint)),
        "{e:?}: a later write of the group sees the earlier write's lease"
    );
    let sent = match after_ack {
        Some(Ok(sent)) => sent,
        other => panic!("{e:?}: load_checked after the ack: {other:?}"),
    };
    assert_eq!(sent.state, State::Sent);
    assert_eq!(sent.provider_message_id.as_deref(), Some("<p1@mail>"));
    assert_eq!(other_now.map(|i| i.state), Some(State::Cancelled));
    assert_eq!(
        store.get_item("acme".into(), sent.id).await.unwrap(),
        Some(sent),
        "{e:?}: committed as the group left it"
    );
    store.close().await;
}

/// What the tests expect the store to hold for one account: every item as last
/// written, and every event as written (sequence, type, the item right after).
#[derive(Default)]
struct Model {
    items: BTreeMap<ItemId, Item>,
    events: Vec<(u64, EventType, Item)>,
}

impl Model {
    fn record(&mut self, seq: u64, kind: EventType, item: &Item) {
        self.items.insert(item.id, item.clone());
        self.events.push((seq, kind, item.clone()));
    }

    /// Checks every read of the contract against the model.
    async fn check(&self, e: Engine, store: &Store, account: &str, step: &str) {
        let ctx = format!("{e:?}, after {step}");
        for item in self.items.values() {
            assert_eq!(
                store
                    .get_item(account.into(), item.id)
                    .await
                    .unwrap()
                    .as_ref(),
                Some(item),
                "{ctx}: get_item"
            );
        }
        let tickets: BTreeSet<&str> = self.items.values().map(|i| i.ticket_id.as_str()).collect();
        for t in &tickets {
            let want: Vec<&Item> = self.items.values().filter(|i| i.ticket_id == *t).collect();
            let got = store
                .ticket_items(account.into(), t.to_string())
                .await
                .unwrap();
            assert_eq!(
                got.iter().collect::<Vec<_>>(),
                want,
                "{ctx}: ticket_items({t})"
            );
        }
        // ListScheduled: PENDING in (next send time, id) order; other states as sets.
        let mut pending: Vec<&Item> = self
            .items
            .values()
            .filter(|i| i.state == State::Pending)
            .collect();
        pending.sort_by_key(|i| (i.next_send_at(), i.id));
        let got = store
            .list_items(account_query(account, None), None, 1000)
            .await
            .unwrap();
        assert_eq!(
            got.rows.iter().collect::<Vec<_>>(),
            pending,
            "{ctx}: list_items PENDING"
        );
        assert!(!got.more);
        for state in [
            State::Dispatching,
            State::Sent,
            State::Failed,
            State::Cancelled,
            State::ConvertedToNote,
        ] {
            let want: BTreeMap<ItemId, &Item> = self
                .items
                .values()
                .filter(|i| i.state == state)
                .map(|i| (i.id, i))
                .collect();
            let got = store
                .list_items(account_query(account, Some(state)), None, 1000)
                .await
                .unwrap();
            let got: BTreeMap<ItemId, &Item> = got.rows.iter().map(|i| (i.id, i)).collect();
            assert_eq!(got, want, "{ctx}: list_items {state}");
        }
        // The deferred view: tickets with live items, by earliest next send time.
        let mut deferred: BTreeMap<&str, DeferredTicket> = BTreeMap::new();
        for i in self.items.values().filter(|i| i.state.is_live()) {
            let d = deferred.entry(&i.ticket_id).or_insert(DeferredTicket {
                ticket_id: i.ticket_id.clone(),
                next_send_at: Millis::MAX,
                pending_count: 0,
            });
            d.next_send_at = d.next_send_at.min(i.next_send_at());
            d.pending_count += 1;
        }
        let mut deferred: Vec<DeferredTicket> = deferred.into_values().collect();
        deferred
            .sort_by(|a, b| (a.next_send_at, &a.ticket_id).cmp(&(b.next_send_at, &b.ticket_id)));
        let got = store
            .deferred_tickets(account.into(), Order::Asc, None, 1000)
            .await
            .unwrap();
        assert_eq!(got.rows, deferred, "{ctx}: deferred_tickets");
        // The outbox and its heads.
        let got = store
            .events_after(Some(account.into()), 0, 10_000)
            .await
            .unwrap();
        let got: Vec<(u64, EventType, &Item)> = got
            .events
            .iter()
            .map(|ev| (ev.sequence, ev.kind, &ev.item))
            .collect();
        let want: Vec<(u64, EventType, &Item)> =
            self.events.iter().map(|(s, k, i)| (*s, *k, i)).collect();
        assert_eq!(got, want, "{ctx}: events_after");
        let heads = store.event_heads(account.into(), 0, 10_000).await.unwrap();
        let want: Vec<(u64, EventType, ItemId, String)> = self
            .events
            .iter()
            .map(|(s, k, i)| (*s, *k, i.id, i.ticket_id.clone()))
            .collect();
        assert_eq!(heads, want, "{ctx}: event_heads");
    }
}

/// Contract: once a write resolved, every read sees it (get_item, list_items,
/// ticket_items, deferred_tickets, events_after, event_heads), each after each write of
/// a realistic life: schedules, a staff edit, send now, a lease, a retry, an ack, a
/// failure, a cancel, a reply turned into a note by client activity.
async fn after_a_write_resolves_every_read_sees_it(e: Engine) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    let mut m = Model::default();
    let acc = "acme";

    async fn one(
        store: &Store,
        f: impl FnOnce(&mut Tx<'_>) -> domain::Result<Vec<(Item, u64, EventType)>> + Send + 'static,
    ) -> Vec<(Item, u64, EventType)> {
        store.write(f).await.unwrap()
    }

    let mut ids = Vec::new();
    for n in 0..6 {
        let ticket = format!("t{}", n % 3);
        let written = one(&store, move |tx| {
            let (item, seq) = insert(tx, &new_item("acme", &ticket, n))?;
            Ok(vec![(item, seq, EventType::Scheduled)])
        })
        .await;
        for (item, seq, kind) in &written {
            ids.push(item.id);
            m.record(*seq, *kind, item);
        }
        m.check(e, &store, acc, &format!("schedule {n}")).await;
        db.tick();
    }
    // An item of another account in the same ticket ids: never seen by acme's reads.
    store
        .write(|tx| insert(tx, &new_item("beta", "t0", 9)))
        .await
        .unwrap();
    m.check(e, &store, acc, "another account's schedule").await;

    let moved_to = T0 + 40 * HOUR;
    let steps: Vec<(&str, ItemId, Vec<Command>)> = vec![
        (
            "edit",
            ids[0],
            vec![Command::Edit {
                send_at: Some(SendTime {
                    requested: moved_to,
                    at: moved_to,
                    local: None,
                }),
                content: None,
                on_activity: Some(OnActivity::Cancel),
            }],
        ),
        ("send now", ids[1], vec![Command::SendNow]),
        ("lease", ids[2], vec![]),
        (
            "retry",
            ids[2],
            vec![Command::AttemptFailed {
                attempt: 1,
                error: "421 try later".into(),
                permanent: false,
                retry: retry(),
            }],
        ),
        ("lease again", ids[2], vec![]),
        (
            "ack",
            ids[2],
            vec![Command::Ack {
                provider_message_id: Some("<sent-2@mail>".into()),
            }],
        ),
        ("lease 3", ids[3], vec![]),
        (
            "permanent failure",
            ids[3],
            vec![Command::AttemptFailed {
                attempt: 1,
                error: "550 no such user".into(),
                permanent: true,
                retry: retry(),
            }],
        ),
        ("cancel", ids[4], vec![Command::Cancel]),
        (
            "client activity",
            ids[5],
            vec![Command::Activity(Activity {
                author_kind: AuthorKind::Client,
                message_id: "<client@mail>".into(),
                occurred_at: T0 + 10 * HOUR,
            })],
        ),
        ("lease 1", ids[1], vec![]),
    ];
    for (name, id, cmds) in steps {
        let written = one(&store, move |tx| {
            let mut item = tx
                .load("acme", id)?
                .ok_or_else(|| Error::NotFound(id.to_string()))?;
            let cmds = if cmds.is_empty() {
                vec![lease(&item, tx.now)]
            } else {
                cmds
            };
            let mut out = Vec::new();
            for cmd in cmds {
                let (seq, kind) = apply_event(tx, &mut item, cmd)?;
                out.push((item.clone(), seq, kind));
            }
            Ok(out)
        })
        .await;
        for (item, seq, kind) in &written {
            assert!(
                m.events.last().is_none_or(|(s, _, _)| s < seq),
                "{e:?}: {name}: event {seq} not after the previous ones"
            );
            m.record(*seq, *kind, item);
        }
        m.check(e, &store, acc, name).await;
        db.tick();
    }
    let states: BTreeSet<State> = m.items.values().map(|i| i.state).collect();
    assert_eq!(
        states.len(),
        6,
        "{e:?}: the life covers every state: {states:?}"
    );
    store.close().await;
}

/// Contract: event sequence numbers grow in commit order, overall and per account, and
/// `events_after` resumes exactly (no gap, no repeat) across many pages.
async fn events_after_resumes_exactly_across_pages_in_commit_order_and_per_account(e: Engine) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    let (release, held) = hold_the_writer(&store).await;
    let mut waiting = Vec::new();
    for n in 0..120 {
        let account = ["acme", "beta", "gamma"][(n % 3) as usize];
        let new = new_item(account, &format!("t{}", n % 7), n);
        let done = store
            .enqueue(move |tx| {
                let (mut item, s1) = insert(tx, &new)?;
                let mut seqs = vec![(s1, EventType::Scheduled, item.id)];
                if n % 4 == 0 {
                    let s2 = apply(tx, &mut item, Command::Cancel)?;
                    seqs.push((s2, EventType::Cancelled, item.id));
                }
                Ok((item.account_id.clone(), seqs))
            })
            .await
            .expect("queued");
        waiting.push(done);
    }
    release.send(()).unwrap();
    held.await;
    let mut written: Vec<(String, u64, EventType, ItemId)> = Vec::new();
    for w in waiting {
        let (account, seqs) = w.await.unwrap();
        for (s, k, id) in seqs {
            written.push((account.clone(), s, k, id));
        }
    }
    assert!(
        written.windows(2).all(|w| w[0].1 < w[1].1),
        "{e:?}: sequences grow in the order the writes were queued"
    );
    let all = store.events_after(None, 0, 100_000).await.unwrap();
    let got: Vec<(String, u64, EventType, ItemId)> = all
        .events
        .iter()
        .map(|ev| (ev.item.account_id.clone(), ev.sequence, ev.kind, ev.item.id))
        .collect();
    assert_eq!(
        got, written,
        "{e:?}: every committed event, in sequence order"
    );
    assert!(all.oldest <= written[0].1);

    // Paging, overall and per account: the pages join up exactly.
    let page = |account: Option<&str>, size: usize| {
        let store = store.clone();
        let account = account.map(str::to_owned);
        async move {
            let mut after = 0;
            let mut out = Vec::new();
            let mut pages = 0;
            loop {
                let p = store
                    .events_after(account.clone(), after, size)
                    .await
                    .unwrap();
                assert!(p.events.len() <= size);
                let Some(last) = p.events.last() else { break };
                after = last.sequence;
                pages += 1;
                out.extend(
                    p.events
                        .iter()
                        .map(|ev| (ev.item.account_id.clone(), ev.sequence, ev.kind, ev.item.id)),
                );
            }
            (out, pages)
        }
    };
    let (paged, pages) = page(None, 7).await;
    assert_eq!(paged, written, "{e:?}: all accounts, pages of 7");
    assert!(pages > 20);
    for account in ["acme", "beta", "gamma"] {
        let want: Vec<_> = written.iter().filter(|w| w.0 == account).cloned().collect();
        let (paged, _) = page(Some(account), 5).await;
        assert_eq!(paged, want, "{e:?}: account {account}, pages of 5");
        // event_heads resumes exactly too.
        let mut after = 0;
        let mut heads = Vec::new();
        loop {
            let p = store.event_heads(account.into(), after, 6).await.unwrap();
            assert!(p.len() <= 6);
            let Some(last) = p.last() else { break };
            after = last.0;
            heads.extend(
                p.into_iter()
                    .map(|(s, k, id, _)| (account.to_string(), s, k, id)),
            );
        }
        assert_eq!(heads, want, "{e:?}: event_heads of {account}, pages of 6");
    }
    store.close().await;
}

/// Contract: events become visible to `event_sequence` watchers only once durable. A
/// watcher checks, on every value it sees, that the hook already got that sequence as
/// durable and that a read returns that event; and once a write resolved, the watch
/// shows its sequence.
async fn event_sequence_watchers_see_a_sequence_only_once_its_write_is_durable(e: Engine) {
    let db = Db::new(e).await;
    let (store, hook) = db.open().await;
    let mut watch = store.event_sequence();
    assert_eq!(
        *watch.borrow_and_update(),
        0,
        "{e:?}: a new store has no event"
    );
    let total = 80u64;
    let watcher = {
        let (store, hook) = (store.clone(), hook.clone());
        tokio::spawn(async move {
            let mut seen = Vec::new();
            loop {
                watch.changed().await.expect("the store is open");
                let v = *watch.borrow_and_update();
                let durable = hook.durable_seq.load(Ordering::SeqCst);
                assert!(
                    v <= durable,
                    "{e:?}: the watch shows {v} before the hook got it as durable ({durable})"
                );
                let read = store.events_after(None, v - 1, 1).await.unwrap();
                assert_eq!(
                    read.events.first().map(|ev| ev.sequence),
                    Some(v),
                    "{e:?}: the watch shows {v} but a read does not return it"
                );
                seen.push(v);
                if v >= total {
                    return seen;
                }
            }
        })
    };
    let mut writes = Vec::new();
    for n in 0..total as i64 {
        let store = store.clone();
        writes.push(tokio::spawn(async move {
            let new = new_item("acme", &format!("t{n}"), n);
            let (_, seq) = store.write(move |tx| insert(tx, &new)).await.unwrap();
            let shown = *store.event_sequence().borrow();
            (seq, shown)
        }));
    }
    let mut seqs = Vec::new();
    for w in writes {
        let (seq, shown) = w.await.unwrap();
        assert!(
            shown >= seq,
            "{e:?}: write of event {seq} resolved while the watch still shows {shown}"
        );
        seqs.push(seq);
    }
    seqs.sort_unstable();
    assert_eq!(
        seqs,
        (1..=total).collect::<Vec<_>>(),
        "{e:?}: sequences of a fresh store"
    );
    let seen = watcher.await.unwrap();
    assert!(seen.windows(2).all(|w| w[0] < w[1]), "{e:?}: {seen:?}");
    store.close().await;
}

// ---------------------------------------------------------------------------------------
// Reopening
// ---------------------------------------------------------------------------------------

/// What `populate` wrote.
struct Populated {
    items: Vec<Item>,
    hours: BusinessHours,
    controls: Vec<ControlRow>,
}

/// Writes items in every state over two accounts, business hours and controls, each
/// write acknowledged before the next.
async fn populate(db: &Db, store: &Store) -> Populated {
    let mut items = BTreeMap::new();
    let mut ids = Vec::new();
    for n in 0..10 {
        let account = if n < 7 { "acme" } else { "beta" };
        let mut new = new_item(account, &format!("t{}", n % 4), n);
        if n == 0 {
            new.request_id = Some("req-0".into());
        }
        let (item, _) = store.write(move |tx| insert(tx, &new)).await.unwrap();
        ids.push((item.account_id.clone(), item.id));
        items.insert(item.id, item);
        db.tick();
    }
    let activity = Activity {
        author_kind: AuthorKind::Client,
        message_id: "<client-1@mail>".into(),
        occurred_at: T0 + HOUR,
    };
    let life: Vec<(usize, Vec<Command>)> = vec![
        // 0: PENDING, untouched. 1: PENDING, waiting for a retry.
        (
            1,
            vec![
                Command::Lease {
                    due: items[&ids[1].1].send_at,
                    expires: T0 + 2 * HOUR,
                },
                Command::AttemptFailed {
                    attempt: 1,
                    error: "timeout".into(),
                    permanent: false,
                    retry: retry(),
                },
            ],
        ),
        // 2: DISPATCHING (leased when the store closes).
        (
            2,
            vec![Command::Lease {
                due: items[&ids[2].1].send_at,
                expires: T0 + 3 * HOUR,
            }],
        ),
        // 3: SENT.
        (
            3,
            vec![
                Command::Lease {
                    due: items[&ids[3].1].send_at,
                    expires: T0 + 3 * HOUR,
                },
                Command::Ack {
                    provider_message_id: Some("<sent-3@mail>".into()),
                },
            ],
        ),
        // 4: FAILED.
        (
            4,
            vec![
                Command::Lease {
                    due: items[&ids[4].1].send_at,
                    expires: T0 + 3 * HOUR,
                },
                Command::AttemptFailed {
                    attempt: 1,
                    error: "550 rejected".into(),
                    permanent: true,
                    retry: retry(),
                },
            ],
        ),
        // 5: CANCELLED.
        (5, vec![Command::Cancel]),
        // 6: CONVERTED_TO_NOTE by client activity.
        (6, vec![Command::Activity(activity)]),
        // 7 (beta): edited, PENDING.
        (
            7,
            vec![Command::Edit {
                send_at: Some(SendTime {
                    requested: T0 + 50 * HOUR,
                    at: T0 + 50 * HOUR,
                    local: None,
                }),
                content: Some(Content::Email(EmailContent {
                    to: vec!["new@example.org".into()],
                    subject: "edited".into(),
                    ..Default::default()
                })),
                on_activity: Some(OnActivity::Keep),
            }],
        ),
        // 8 (beta): sent now, PENDING. 9 (beta): PENDING, untouched.
        (8, vec![Command::SendNow]),
    ];
    for (i, cmds) in life {
        let (account, id) = ids[i].clone();
        let item = store
            .write(move |tx| {
                let mut item = tx
                    .load(&account, id)?
                    .ok_or_else(|| Error::NotFound(id.to_string()))?;
                for cmd in cmds {
                    apply(tx, &mut item, cmd)?;
                }
                Ok(item)
            })
            .await
            .unwrap_or_else(|err| panic!("populate item {i}: {err}"));
        items.insert(item.id, item);
        db.tick();
    }
    let hours = BusinessHours::parse(
        "Europe/Paris",
        &[
            (1, "09:00", "12:00"),
            (1, "13:00", "18:00"),
            (5, "09:00", "17:00"),
        ],
        &["2026-12-25"],
    )
    .unwrap();
    let h = hours.clone();
    store
        .write(move |tx| {
            tx.put_business_hours("acme", &h)?;
            tx.put_control("acme", Channel::Email, Some(true), Some(30))?;
            tx.put_control("*", Channel::Chat, None, Some(100))?;
            tx.put_control("beta", Channel::Chat, Some(true), None)?;
            // Not paused and no limit: the same as no control (neither engine keeps it).
            tx.put_control("beta", Channel::Email, Some(false), Some(0))?;
            Ok(())
        })
        .await
        .unwrap();
    let mut controls = vec![
        ControlRow {
            account_id: "acme".into(),
            channel: Channel::Email,
            paused: true,
            per_minute: 30,
        },
        ControlRow {
            account_id: "*".into(),
            channel: Channel::Chat,
            paused: false,
            per_minute: 100,
        },
        ControlRow {
            account_id: "beta".into(),
            channel: Channel::Chat,
            paused: true,
            per_minute: 0,
        },
    ];
    sort_controls(&mut controls);
    Populated {
        items: items.into_values().collect(),
        hours,
        controls,
    }
}

fn sort_controls(c: &mut [ControlRow]) {
    c.sort_by(|a, b| (&a.account_id, a.channel).cmp(&(&b.account_id, b.channel)));
}

/// Contract: an OK means committed durably, so closing and opening the store again
/// keeps every acknowledged write: items (in every state), events, business hours,
/// controls. Ids and event sequences keep growing after the reopen (never reused).
async fn reopening_keeps_every_acknowledged_write_and_ids_and_sequences_keep_growing(e: Engine) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    let p = populate(&db, &store).await;
    let states: BTreeSet<State> = p.items.iter().map(|i| i.state).collect();
    assert_eq!(states.len(), 6, "{e:?}: every state is covered: {states:?}");
    let events_before = store.events_after(None, 0, 10_000).await.unwrap().events;
    let last_seq = events_before.last().unwrap().sequence;
    let max_id = p.items.iter().map(|i| i.id).max().unwrap();
    store.close().await;
    drop(store);

    let (store, _hook) = db.open().await;
    assert_eq!(
        *store.event_sequence().borrow(),
        last_seq,
        "{e:?}: the watch starts at the last durable event"
    );
    for item in &p.items {
        assert_eq!(
            store
                .get_item(item.account_id.clone(), item.id)
                .await
                .unwrap()
                .as_ref(),
            Some(item),
            "{e:?}: item {} ({}) after reopen",
            item.id,
            item.state
        );
    }
    let events_after = store.events_after(None, 0, 10_000).await.unwrap().events;
    let key = |evs: &[domain::Event]| -> Vec<(u64, EventType, Millis, Item)> {
        evs.iter()
            .map(|ev| (ev.sequence, ev.kind, ev.at, ev.item.clone()))
            .collect()
    };
    assert_eq!(
        key(&events_after),
        key(&events_before),
        "{e:?}: the outbox after reopen"
    );
    assert_eq!(
        store.business_hours("acme".into()).await.unwrap(),
        Some(p.hours.clone()),
        "{e:?}: business hours after reopen"
    );
    assert_eq!(store.business_hours("beta".into()).await.unwrap(), None);
    let mut controls = store.recovery_scan().await.unwrap().controls;
    sort_controls(&mut controls);
    assert_eq!(controls, p.controls, "{e:?}: controls after reopen");

    db.tick();
    let (item, seq) = store
        .write(|tx| insert(tx, &new_item("acme", "t9", 99)))
        .await
        .unwrap();
    assert!(
        item.id > max_id,
        "{e:?}: id {} reused (max was {max_id})",
        item.id
    );
    assert!(
        seq > last_seq,
        "{e:?}: sequence {seq} reused (last was {last_seq})"
    );
    store.close().await;
}

/// Sequences are never reused: with every event pruned (retention), a reopened store
/// goes on after the last sequence it ever wrote, and says none is retained before it.
async fn event_sequences_are_not_reused_after_every_event_was_pruned_and_the_store_reopened(
    e: Engine,
) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    let mut last = 0;
    for n in 0..5 {
        let (mut item, _) = store
            .write(move |tx| insert(tx, &new_item("acme", "t1", n)))
            .await
            .unwrap();
        last = store
            .write(move |tx| apply(tx, &mut item, Command::Cancel))
            .await
            .unwrap();
        db.tick();
    }
    assert_eq!(last, 10);
    let pruned = store
        .write(|tx| tx.prune_events(T0 + 1000 * HOUR, 1000))
        .await
        .unwrap();
    assert_eq!(pruned, 10, "{e:?}: every event is past the cutoff");
    let left = store.events_after(None, 0, 100).await.unwrap();
    assert!(left.events.is_empty());
    assert_eq!(left.oldest, last + 1, "{e:?}: nothing retained");
    store.close().await;
    drop(store);

    let (store, _hook) = db.open().await;
    assert_eq!(
        *store.event_sequence().borrow(),
        last,
        "{e:?}: the watch after reopen"
    );
    let left = store.events_after(None, 0, 100).await.unwrap();
    assert!(left.events.is_empty());
    assert_eq!(
        left.oldest,
        last + 1,
        "{e:?}: nothing retained, after reopen"
    );
    let (_, seq) = store
        .write(|tx| insert(tx, &new_item("acme", "t2", 50)))
        .await
        .unwrap();
    assert_eq!(
        seq,
        last + 1,
        "{e:?}: the next sequence after a full prune and reopen"
    );
    store.close().await;
}

/// What start-up rebuilds from: exactly the live items with their next send times, the
/// live count of each account, the leased count and the controls.
async fn recovery_scan_after_reopen_reports_exactly_the_live_items_counts_leases_and_controls(
    e: Engine,
) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    let p = populate(&db, &store).await;
    store.close().await;
    drop(store);

    let (store, _hook) = db.open().await;
    let scan = store.recovery_scan().await.unwrap();
    let live: Vec<&Item> = p.items.iter().filter(|i| i.state.is_live()).collect();
    let mut want: Vec<(ItemId, Millis)> = live.iter().map(|i| (i.id, i.next_send_at())).collect();
    want.sort_unstable();
    let mut timers = scan.timers.clone();
    timers.sort_unstable();
    assert_eq!(timers, want, "{e:?}: the live items and their due times");
    let mut counts = scan.live_counts.clone();
    counts.sort();
    let mut want_counts: BTreeMap<String, u64> = BTreeMap::new();
    for i in &live {
        *want_counts.entry(i.account_id.clone()).or_default() += 1;
    }
    assert_eq!(
        counts,
        want_counts.into_iter().collect::<Vec<_>>(),
        "{e:?}: live counts, each account once"
    );
    assert_eq!(
        scan.leased,
        p.items
            .iter()
            .filter(|i| i.state == State::Dispatching)
            .count(),
        "{e:?}: leased count"
    );
    assert_eq!(scan.leased, 1);
    let mut controls = scan.controls;
    sort_controls(&mut controls);
    assert_eq!(controls, p.controls, "{e:?}: controls");
    let mut live_ids = store.live_item_ids().await.unwrap();
    live_ids.sort_unstable();
    assert_eq!(
        live_ids,
        want.iter().map(|(id, _)| *id).collect::<Vec<_>>(),
        "{e:?}: live_item_ids"
    );
    store.close().await;
}

/// Idempotency: `find_by_request` returns the item holding the key, as it is now, and
/// the fingerprint of the request that created it; the key is per account; it holds
/// after a reopen.
async fn find_by_request_returns_the_current_item_and_the_fingerprint_of_its_request(e: Engine) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    let mut a = new_item("acme", "t1", 1);
    a.request_id = Some("req-1".into());
    let mut b = new_item("beta", "t1", 2);
    b.request_id = Some("req-1".into());
    let (fa, fb) = (a.fingerprint(), b.fingerprint());
    assert_ne!(fa, fb);
    let (ia, ib) = store
        .write(move |tx| Ok((insert(tx, &a)?.0, insert(tx, &b)?.0)))
        .await
        .unwrap();
    let (ga, gb, none1, none2) = find_req1(&store).await.unwrap();
    assert_eq!(ga, Some((ia.clone(), fa)), "{e:?}");
    assert_eq!(gb, Some((ib.clone(), fb)), "{e:?}");
    assert_eq!((none1, none2), (None, None), "{e:?}");
    db.tick();
    let cancelled = store
        .write(move |tx| Ok(change(tx, "acme", ia.id, Command::Cancel)?.0))
        .await
        .unwrap();
    let (ga, _, _, _) = find_req1(&store).await.unwrap();
    assert_eq!(
        ga,
        Some((cancelled.clone(), fa)),
        "{e:?}: the item as it is now"
    );
    store.close().await;
    drop(store);
    let (store, _hook) = db.open().await;
    let (ga, gb, _, _) = find_req1(&store).await.unwrap();
    assert_eq!(ga, Some((cancelled, fa)), "{e:?}: after reopen");
    assert_eq!(gb, Some((ib, fb)), "{e:?}: after reopen");
    store.close().await;
}

/// A database written by a newer sendlater (a higher schema version) is refused with
/// `StoreError::NewerSchema`, on SQLite (`PRAGMA user_version`) as on PostgreSQL (the
/// `schema_version` table), and left as it was.
async fn a_database_with_a_newer_schema_is_refused(e: Engine) {
    let db = Db::new(e).await;
    let (store, _hook) = db.open().await;
    store
        .write(|tx| insert(tx, &new_item("acme", "t1", 1)))
        .await
        .unwrap();
    store.close().await;
    drop(store);
    let current = match &db.target {
        DbTarget::Sqlite(path) => {
            let c = rusqlite::Connection::open(path).unwrap();
            let v: i64 = c
                .query_row("PRAGMA user_version", [], |r| r.get(0))
                .unwrap();
            c.pragma_update(None, "user_version", v + 1000).unwrap();
            v
        }
        DbTarget::Postgres(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            let v: i64 = client
                .query_one("SELECT version FROM schema_version", &[])
                .await
                .unwrap()
                .get(0);
            client
                .execute("UPDATE schema_version SET version = version + 1000", &[])
                .await
                .unwrap();
            v
        }
    };
    assert!(current >= 1);
    match db.try_open().await {
        Ok(_) => panic!(
            "{e:?}: a database of schema version {} was opened",
            current + 1000
        ),
        Err(StoreError::NewerSchema { found, supported }) => {
            assert_eq!((found, supported), (current + 1000, current), "{e:?}");
        }
        Err(other) => panic!("{e:?}: expected NewerSchema, got {other:?}"),
    }
    // Refused without a change: the version is as it was.
    let after = match &db.target {
        DbTarget::Sqlite(path) => rusqlite::Connection::open(path)
            .unwrap()
            .query_row("PRAGMA user_version", [], |r| r.get::<_, i64>(0))
            .unwrap(),
        DbTarget::Postgres(url) => {
            let (client, conn) = tokio_postgres::connect(url, tokio_postgres::NoTls)
                .await
                .unwrap();
            tokio::spawn(conn);
            client
                .query_one("SELECT version FROM schema_version", &[])
                .await
                .unwrap()
                .get(0)
        }
    };
    assert_eq!(
        after,
        current + 1000,
        "{e:?}: the refused database is left alone"
    );
}

/// Looks up `req-1` in acme and beta, and two keys that do not exist, in a write.
async fn find_req1(store: &Store) -> domain::Result<(Found, Found, Found, Found)> {
    store
        .write(|tx| {
            Ok((
                tx.find_by_request("acme", "req-1")?,
                tx.find_by_request("beta", "req-1")?,
                tx.find_by_request("acme", "req-2")?,
                tx.find_by_request("gamma", "req-1")?,
            ))
        })
        .await
}

type Found = Option<(Item, u64)>;
