//! The PostgreSQL statements against the SQLite ones: the same operations on both
//! engines (SQLite in memory, a fresh PostgreSQL database from `SENDLATER_TEST_PG`), the
//! same answers.

use std::fmt::Debug;

use rusqlite::Connection;

use super::rows::{self, EventRow, NewRow, Statements};
use super::schema;
use super::test_db::TestDb;
use crate::domain::{
    Activity, Attachment, AuthorKind, BusinessHours, Channel, ChatContent, Content, DeliveryWindow,
    EmailContent, EventType, Item, ItemId, Kind, ListQuery, LocalTime, Millis, NewItem, OnActivity,
    OnLate, Order, State, Timing,
};
use crate::store::sqlite::parity as lite;
use crate::store::tickets::LiveTickets;

/// One SQLite database and one PostgreSQL database, written alike.
struct Both {
    lite: Connection,
    db: TestDb,
    st: Statements,
}

impl Both {
    async fn new() -> Both {
        let mut l = Connection::open_in_memory().unwrap();
        lite::migrate(&mut l).unwrap();
        let mut db = TestDb::new().await;
        schema::migrate(&mut db.client).await.unwrap();
        Both {
            lite: l,
            db,
            st: Statements::default(),
        }
    }

    fn pg(&self) -> (&tokio_postgres::Client, &Statements) {
        (&self.db.client, &self.st)
    }

    /// Inserts on both; PostgreSQL gets the id SQLite allocated.
    async fn insert(&self, n: &NewItem, send_at: Millis, timing: &Timing, now: Millis) -> ItemId {
        let id = lite::insert_item(&self.lite, n, send_at, timing, now).unwrap();
        rows::insert_item(&self.pg(), id, n, send_at, timing, now, None)
            .await
            .unwrap();
        id
    }

    /// Writes a changed item on both (SQLite: as its sweep writes it back).
    async fn write(&self, item: &Item) {
        lite::sweep(&self.lite, [item], None).unwrap();
        rows::update_item(&self.pg(), item).await.unwrap();
    }

    /// Appends an event on both; PostgreSQL gets the sequence SQLite allocated.
    async fn event(&self, kind: EventType, item: &Item, now: Millis) -> u64 {
        let seq = lite::insert_event(&self.lite, kind, item, now).unwrap();
        rows::insert_event(&self.pg(), seq, kind, item, now, None)
            .await
            .unwrap();
        seq
    }

    /// The item as both read it (they must agree).
    async fn get(&self, id: ItemId) -> Item {
        let l = lite::get_item_any(&self.lite, id).unwrap().unwrap();
        let p = rows::get_item_any(&self.pg(), id).await.unwrap().unwrap();
        same(&l, &p);
        p
    }

    /// Runs SQL on both (it must mean the same on each).
    async fn sql(&self, sql: &str) {
        self.lite.execute_batch(sql).unwrap();
        self.db.client.batch_execute(sql).await.unwrap();
    }
}

#[track_caller]
fn same<T: PartialEq + Debug>(sqlite: &T, postgres: &T) {
    assert_eq!(
        sqlite, postgres,
        "SQLite (left) and PostgreSQL (right) differ"
    );
}

fn sample(account: &str, ticket: &str, i: i64) -> NewItem {
    let content = if i % 2 == 0 {
        Content::Email(EmailContent {
            from: "desk@example.com".into(),
            to: vec!["client@example.org".into()],
            cc: vec!["boss@example.org".into()],
            subject: format!("subject {i}"),
            text_body: "Hello, é ✓".into(),
            html_body: "<p>Hello</p>".into(),
            in_reply_to: "<m1@example.org>".into(),
            attachments: vec![Attachment {
                filename: "a.pdf".into(),
                content_type: "application/pdf".into(),
                url: "https://files.example.com/a.pdf".into(),
                size_bytes: 1234,
            }],
            ..Default::default()
        })
    } else {
        Content::Chat(ChatContent {
            conversation_id: "conv-1".into(),
            text: format!("text {i}"),
            attachments: vec![],
        })
    };
    NewItem {
        account_id: account.into(),
        ticket_id: ticket.into(),
        kind: if i % 3 == 0 {
            Kind::NewTicket
        } else {
            Kind::Reply
        },
        channel: content.channel(),
        author_id: format!("agent-{}", i % 2),
        content,
        send_at: 10_000 + i * 1_000,
        on_activity: match i % 3 {
            0 => OnActivity::ConvertToNote,
            1 => OnActivity::Keep,
            _ => OnActivity::Cancel,
        },
        request_id: (i % 4 == 0).then(|| format!("req-{i}")),
        timing: Timing::default(),
    }
}

fn rich_timing() -> Timing {
    Timing {
        send_at_local: Some(LocalTime::parse("2026-03-01T09:30", "Europe/Paris", "t").unwrap()),
        requested_send_at: Some(5_000),
        window: Some(DeliveryWindow::BusinessHours),
        max_lateness: Some(60_000),
        on_late: Some(OnLate::ConvertToNote),
        late_by: Some(7),
    }
}

/// Every field set, written and read back: both engines return the same item, and
/// PostgreSQL's columns hold SQLite's bytes (content, timing).
#[tokio::test]
async fn an_item_with_every_field_set_reads_back_as_sqlite_reads_it() {
    let b = Both::new().await;
    let mut n = sample("acme", "T1", 4);
    n.timing = rich_timing();
    let id = b.insert(&n, 12_345, &n.timing, 100).await;
    let fresh = b.get(id).await;
    assert_eq!(
        (fresh.state, fresh.send_at, fresh.created_at),
        (State::Pending, 12_345, 100)
    );
    assert_eq!(fresh.timing, rich_timing());

    let mut item = fresh.clone();
    item.content = Content::Chat(ChatContent {
        conversation_id: "c9".into(),
        text: "edited".into(),
        attachments: vec![],
    });
    item.send_at = 99_000;
    item.updated_at = 200;
    item.state = State::ConvertedToNote;
    item.on_activity = OnActivity::Cancel;
    item.note_at = Some(100);
    item.converted_by = Some(Activity {
        author_kind: AuthorKind::Client,
        message_id: "msg-7".into(),
        occurred_at: 150,
    });
    item.attempts = 3;
    item.last_error = Some("smtp 451".into());
    item.next_attempt_at = Some(98_000);
    item.sent_at = Some(170);
    item.provider_message_id = Some("prov-1".into());
    item.timing.late_by = Some(9);
    b.write(&item).await;
    assert_eq!(b.get(id).await, item);

    let (l, p) = (
        lite::get_item(&b.lite, "acme", id).unwrap(),
        rows::get_item(&b.pg(), "acme", id).await.unwrap(),
    );
    same(&l, &p);
    assert_eq!(
        rows::get_item(&b.pg(), "other", id).await.unwrap(),
        None,
        "another account's item is not found"
    );
    same(
        &lite::get_item_checked(&b.lite, id).unwrap(),
        &rows::get_item_checked(&b.pg(), id).await.unwrap(),
    );
    same(
        &lite::get_item_lenient(&b.lite, id).unwrap(),
        &rows::get_item_lenient(&b.pg(), id).await.unwrap(),
    );
    same(
        &lite::find_by_request(&b.lite, "acme", "req-4").unwrap(),
        &rows::find_by_request(&b.pg(), "acme", "req-4")
            .await
            .unwrap(),
    );
    assert_eq!(
        rows::find_by_request(&b.pg(), "acme", "req-4")
            .await
            .unwrap()
            .map(|(_, fp)| fp),
        Some(n.fingerprint())
    );
    // The stored bytes are SQLite's.
    let (content, timing): (Vec<u8>, Option<Vec<u8>>) = b
        .lite
        .query_row(
            "SELECT content, timing FROM items WHERE id = ?1",
            [id],
            |r| Ok((r.get(0)?, r.get(1)?)),
        )
        .unwrap();
    let r =
        b.db.client
            .query_one("SELECT content, timing FROM items WHERE id = $1", &[&id])
            .await
            .unwrap();
    assert_eq!(r.get::<_, Vec<u8>>(0), content);
    assert_eq!(r.get::<_, Option<Vec<u8>>>(1), timing);
    for (id_or_provider, want) in [
        (crate::domain::format_item_id(id), true),
        ("prov-1".to_owned(), true),
        ("prov-2".to_owned(), false),
        ("itm_999".to_owned(), false),
    ] {
        let l = lite::is_own_message(&b.lite, "acme", "T1", &id_or_provider).unwrap();
        let p = rows::is_own_message(&b.pg(), "acme", "T1", &id_or_provider)
            .await
            .unwrap();
        same(&l, &p);
        assert_eq!(p, want, "{id_or_provider}");
    }
}

/// A lease is stored beside the PENDING row and reads back DISPATCHING on attempt
/// attempts + 1; its outcome clears it. Both engines agree at every step.
#[tokio::test]
async fn a_leased_item_reads_dispatching_and_its_outcome_clears_the_lease_as_in_sqlite() {
    let b = Both::new().await;
    let id = b
        .insert(&sample("acme", "T1", 1), 10_000, &Timing::default(), 1)
        .await;
    let mut item = b.get(id).await;
    item.state = State::Dispatching;
    item.attempts = 1;
    item.lease_expires_at = Some(40_000);
    b.write(&item).await;
    let leased = b.get(id).await;
    assert_eq!(
        (leased.state, leased.attempts, leased.lease_expires_at),
        (State::Dispatching, 1, Some(40_000))
    );
    let stored =
        b.db.client
            .query_one(
                "SELECT state, attempts, lease_expires_at FROM items WHERE id = $1",
                &[&id],
            )
            .await
            .unwrap();
    assert_eq!(
        (
            stored.get::<_, i16>(0),
            stored.get::<_, i32>(1),
            stored.get::<_, Option<i64>>(2)
        ),
        (1, 0, Some(40_000)),
        "stored PENDING with the attempts that ended"
    );
    let mut sent = leased.clone();
    sent.state = State::Sent;
    sent.lease_expires_at = None;
    sent.sent_at = Some(11_000);
    b.write(&sent).await;
    let done = b.get(id).await;
    assert_eq!(
        (done.state, done.attempts, done.lease_expires_at),
        (State::Sent, 1, None)
    );
}

/// Taking a lease changes no indexed column: PostgreSQL writes the new row version in
/// the same page (a HOT update) and no index entry.
#[tokio::test]
async fn taking_a_lease_is_a_hot_update() {
    let mut b = Both::new().await;
    let id = b
        .insert(&sample("acme", "T1", 4), 10_000, &Timing::default(), 1)
        .await;
    let mut item = b.get(id).await;
    item.state = State::Dispatching;
    item.attempts = 1;
    item.lease_expires_at = Some(40_000);
    let tx = b.db.client.transaction().await.unwrap();
    rows::update_item(&(&tx, &b.st), &item).await.unwrap();
    let r = tx
        .query_one(
            "SELECT n_tup_upd, n_tup_hot_upd FROM pg_stat_xact_user_tables \
             WHERE relname = 'items'",
            &[],
        )
        .await
        .unwrap();
    assert_eq!((r.get::<_, i64>(0), r.get::<_, i64>(1)), (1, 1));
    tx.commit().await.unwrap();
}

/// The outbox: events of two accounts interleaved, read whole and per account in
/// pages, resume exactly after the last sequence seen; each event carries the item as
/// it was then (the content as it is now, as in SQLite).
#[tokio::test]
async fn events_after_resume_in_order_per_account_as_in_sqlite() {
    let b = Both::new().await;
    let mut items = Vec::new();
    for (i, account) in ["a", "b", "a", "c", "b", "a"].iter().enumerate() {
        let n = sample(account, &format!("T{}", i % 2), i as i64);
        let id = b.insert(&n, n.send_at, &n.timing, 10 + i as i64).await;
        let item = b.get(id).await;
        b.event(EventType::Scheduled, &item, 10 + i as i64).await;
        items.push(item);
    }
    // Later changes: an edit (the content travels with UPDATED), a send, a cancel.
    let mut edited = items[0].clone();
    edited.content = Content::Chat(ChatContent {
        text: "new".into(),
        ..Default::default()
    });
    edited.updated_at = 50;
    b.write(&edited).await;
    b.event(EventType::Updated, &edited, 50).await;
    let mut sent = items[1].clone();
    sent.state = State::Sent;
    sent.sent_at = Some(60);
    b.write(&sent).await;
    b.event(EventType::Sent, &sent, 60).await;
    let mut cancelled = items[2].clone();
    cancelled.state = State::Cancelled;
    b.write(&cancelled).await;
    b.event(EventType::Cancelled, &cancelled, 70).await;

    let key = |e: &crate::domain::Event| (e.sequence, e.kind, e.at, e.item.clone());
    for account in [None, Some("a"), Some("b"), Some("c"), Some("zz")] {
        for page in [1, 2, 100] {
            let mut after = 0;
            let mut walked = Vec::new();
            loop {
                let l = lite::events_after(&b.lite, account, after, page).unwrap();
                let p = rows::events_after(&b.pg(), account, after, page, None)
                    .await
                    .unwrap();
                same(
                    &(l.oldest, l.events.iter().map(key).collect::<Vec<_>>()),
                    &(p.oldest, p.events.iter().map(key).collect::<Vec<_>>()),
                );
                let Some(last) = p.events.last() else { break };
                after = last.sequence;
                walked.extend(p.events.iter().map(|e| e.sequence));
            }
            let mut sorted = walked.clone();
            sorted.sort_unstable();
            sorted.dedup();
            assert_eq!(walked, sorted, "in order, each once ({account:?}, {page})");
            if account.is_none() {
                assert_eq!(walked, (1..=9).collect::<Vec<u64>>());
            }
            let l = lite::event_heads(&b.lite, account.unwrap_or("a"), 0, page).unwrap();
            let p = rows::event_heads(&b.pg(), account.unwrap_or("a"), 0, page)
                .await
                .unwrap();
            same(&l, &p);
        }
    }
    // The first event shows the item as scheduled, not as edited.
    let first = rows::events_after(&b.pg(), Some("a"), 0, 1, None)
        .await
        .unwrap();
    assert_eq!(first.events[0].item.updated_at, items[0].updated_at);
}

/// The activity rule's candidates: PENDING replies created before the message, oldest
/// first (ties by id), a leased one reading DISPATCHING.
#[tokio::test]
async fn pending_replies_come_oldest_first_as_in_sqlite() {
    let b = Both::new().await;
    let mut ids = Vec::new();
    for (i, created) in [30, 10, 20, 10, 50].into_iter().enumerate() {
        let mut n = sample("acme", "T1", i as i64);
        n.kind = Kind::Reply;
        ids.push(b.insert(&n, n.send_at, &n.timing, created).await);
    }
    b.insert(&sample("acme", "T2", 1), 1, &Timing::default(), 5)
        .await;
    let mut leased = b.get(ids[2]).await;
    leased.state = State::Dispatching;
    leased.attempts = 1;
    leased.lease_expires_at = Some(99);
    b.write(&leased).await;
    let mut done = b.get(ids[0]).await;
    done.state = State::Cancelled;
    b.write(&done).await;
    let l = lite::pending_replies(&b.lite, "acme", "T1", 40).unwrap();
    let p = rows::pending_replies(&b.pg(), "acme", "T1", 40)
        .await
        .unwrap();
    same(&l, &p);
    let got: Vec<(ItemId, State)> = p
        .iter()
        .map(|r| r.as_ref().map(|i| (i.id, i.state)).unwrap())
        .collect();
    assert_eq!(
        got,
        vec![
            (ids[1], State::Pending),
            (ids[3], State::Pending),
            (ids[2], State::Dispatching)
        ]
    );
}

/// A store with items in every state, several tickets and accounts.
async fn populated() -> (Both, Vec<ItemId>) {
    let b = Both::new().await;
    let mut ids = Vec::new();
    for i in 0..40i64 {
        let account = if i % 5 == 4 { "beta" } else { "acme" };
        let n = sample(account, &format!("T{}", i % 7), i);
        // Repeated send times, so ties are broken by id.
        let send_at = 1_000 * (i % 9);
        ids.push(b.insert(&n, send_at, &n.timing, i).await);
    }
    for (k, &id) in ids.iter().enumerate() {
        let mut item = b.get(id).await;
        match k % 6 {
            1 => {
                item.state = State::Dispatching;
                item.attempts = 2;
                item.lease_expires_at = Some(90_000 + k as i64);
            }
            2 => {
                item.state = State::Sent;
                item.sent_at = Some(5);
            }
            3 => item.state = State::Cancelled,
            4 => {
                // Waiting for a retry: listed by its next attempt.
                item.attempts = 1;
                item.next_attempt_at = Some(500 + k as i64);
            }
            _ => continue,
        }
        b.write(&item).await;
    }
    (b, ids)
}

#[tokio::test]
async fn listings_filter_order_and_page_as_in_sqlite() {
    let (b, _) = populated().await;
    let mut queries = Vec::new();
    for state in [
        None,
        Some(State::Pending),
        Some(State::Dispatching),
        Some(State::Sent),
        Some(State::Cancelled),
        Some(State::Failed),
    ] {
        for order in [Order::Asc, Order::Desc] {
            queries.push(ListQuery {
                account_id: "acme".into(),
                state,
                order,
                ..Default::default()
            });
        }
    }
    queries.push(ListQuery {
        account_id: "acme".into(),
        ticket_id: Some("T3".into()),
        ..Default::default()
    });
    queries.push(ListQuery {
        account_id: "acme".into(),
        channel: Some(Channel::Chat),
        author_id: Some("agent-1".into()),
        kind: Some(Kind::Reply),
        ..Default::default()
    });
    queries.push(ListQuery {
        account_id: "acme".into(),
        send_at_from: Some(2_000),
        send_at_to: Some(6_000),
        order: Order::Desc,
        ..Default::default()
    });
    for q in &queries {
        for limit in [1, 3, 100] {
            let mut after = None;
            let mut seen = 0;
            loop {
                let l = lite::list_items(&b.lite, q, after, limit).unwrap();
                let p = rows::list_items(&b.pg(), q, after, limit).await.unwrap();
                same(&(&l.rows, l.more), &(&p.rows, p.more));
                seen += p.rows.len();
                match p.rows.last() {
                    Some(i) if p.more => after = Some((i.next_send_at(), i.id)),
                    _ => break,
                }
            }
            if q.state != Some(State::Failed) {
                assert!(seen > 0, "the query lists something: {q:?}");
            }
        }
    }
    for account in ["acme", "beta", "none"] {
        for order in [Order::Asc, Order::Desc] {
            for limit in [1, 2, 100] {
                let mut after: Option<(Millis, String)> = None;
                loop {
                    let a = after.as_ref().map(|(t, s)| (*t, s.as_str()));
                    let l = lite::deferred_tickets(&b.lite, account, order, a, limit).unwrap();
                    let p = rows::deferred_tickets(&b.pg(), account, order, a, limit)
                        .await
                        .unwrap();
                    same(&(&l.rows, l.more), &(&p.rows, p.more));
                    match p.rows.last() {
                        Some(t) if p.more => after = Some((t.next_send_at, t.ticket_id.clone())),
                        _ => break,
                    }
                }
            }
        }
    }
    for ticket in ["T0", "T3", "nope"] {
        let mut l = lite::ticket_items(&b.lite, "acme", ticket).unwrap();
        let mut p = rows::ticket_items(&b.pg(), "acme", ticket).await.unwrap();
        l.sort_by_key(|i| i.id);
        p.sort_by_key(|i| i.id);
        same(&l, &p);
    }
    let all = rows::ticket_items(&b.pg(), "acme", "T3").await.unwrap();
    assert!(!all.is_empty());
}

/// Start-up: the live items' ids and times, the live count per account, the leased
/// count, the controls, and the ticket filter, as SQLite reads them.
#[tokio::test]
async fn recovery_reads_what_sqlite_reads() {
    let (b, _) = populated().await;
    lite::put_control(&b.lite, "acme", Channel::Email, Some(true), None).unwrap();
    rows::put_control(&b.pg(), "acme", Channel::Email, Some(true), None)
        .await
        .unwrap();
    let (lt, pt) = (LiveTickets::default(), LiveTickets::default());
    let mut l = lite::recovery_scan(&b.lite, &lt).unwrap();
    let mut p = rows::recovery_scan(&b.pg(), &pt, None).await.unwrap();
    l.timers.sort_unstable();
    p.timers.sort_unstable();
    l.live_counts.sort_unstable();
    p.live_counts.sort_unstable();
    same(&l.timers, &p.timers);
    same(&l.live_counts, &p.live_counts);
    same(&l.leased, &p.leased);
    same(&l.controls, &p.controls);
    assert!(p.leased > 0 && !p.timers.is_empty());
    lt.set_ready();
    pt.set_ready();
    for account in ["acme", "beta"] {
        for t in 0..8 {
            for own in 0..4 {
                let ticket = format!("T{t}");
                same(
                    &lt.nothing_else_live(account, &ticket, own),
                    &pt.nothing_else_live(account, &ticket, own),
                );
            }
        }
    }
    same(
        &lite::live_item_ids(&b.lite).unwrap(),
        &rows::live_item_ids(&b.pg(), None).await.unwrap(),
    );
    let (max_item, max_seq) = rows::max_ids(&b.pg()).await.unwrap();
    assert_eq!((max_item, max_seq), (40, 0));
}

/// A row that cannot be decoded: told apart where SQLite tells it apart, failed alone,
/// passed over by the walk of live items.
#[tokio::test]
async fn an_unreadable_row_is_told_apart_as_in_sqlite() {
    let (b, ids) = populated().await;
    let (bad_state, bad_content) = (ids[0], ids[6]);
    b.sql(&format!(
        "UPDATE items SET state = 99 WHERE id = {bad_state}; \
         UPDATE items SET kind = 42 WHERE id = {bad_content}"
    ))
    .await;
    b.lite
        .execute(
            "UPDATE items SET content = x'ff' WHERE id = ?1",
            [bad_content],
        )
        .unwrap();
    b.db.client
        .execute(
            "UPDATE items SET content = '\\xff'::bytea WHERE id = $1",
            &[&bad_content],
        )
        .await
        .unwrap();
    let (mut li, mut lm) = lite::due_items(&b.lite, &ids).unwrap();
    let (mut pi, mut pm) = rows::due_items(&b.pg(), &ids).await.unwrap();
    li.sort_by_key(|i| i.id);
    pi.sort_by_key(|i| i.id);
    same(&li, &pi);
    let meta = |m: &crate::store::ItemMeta| {
        (
            m.id,
            m.account.clone(),
            m.decoded.clone(),
            m.lease_expires_at,
            m.attempts,
            m.send_at,
        )
    };
    lm.sort_by_key(|m| m.id);
    pm.sort_by_key(|m| m.id);
    same(
        &lm.iter().map(meta).collect::<Vec<_>>(),
        &pm.iter().map(meta).collect::<Vec<_>>(),
    );
    assert_eq!(pm.len(), 2);
    for id in [bad_state, bad_content] {
        assert!(rows::get_item(&b.pg(), "acme", id).await.is_err());
        let l = lite::get_item_checked(&b.lite, id).unwrap();
        let p = rows::get_item_checked(&b.pg(), id).await.unwrap();
        assert!(matches!((&l, &p), (Some(Err(_)), Some(Err(_)))), "{p:?}");
        same(
            &lite::get_item_lenient(&b.lite, id).unwrap(),
            &rows::get_item_lenient(&b.pg(), id).await.unwrap(),
        );
    }
    let l = lite::live_items_after(&b.lite, "acme", (Millis::MIN, 0), 100).unwrap();
    let p = rows::live_items_after(&b.pg(), "acme", (Millis::MIN, 0), 100)
        .await
        .unwrap();
    same(&l, &p);
    assert!(p.iter().any(|(_, i)| i.is_none()));
    let l = lite::live_items_after(&b.lite, "acme", p[2].0, 3).unwrap();
    same(
        &l,
        &rows::live_items_after(&b.pg(), "acme", p[2].0, 3)
            .await
            .unwrap(),
    );
    for id in [bad_content, bad_state, ids[2]] {
        let l = lite::fail_unreadable(&b.lite, id, "cannot read", 77).unwrap();
        let p = rows::fail_unreadable(&b.pg(), id, "cannot read", 77)
            .await
            .unwrap();
        same(&l, &p);
    }
    same(
        &lite::get_item_lenient(&b.lite, bad_content).unwrap(),
        &rows::get_item_lenient(&b.pg(), bad_content).await.unwrap(),
    );
}

#[tokio::test]
async fn business_hours_rewindow_cursors_and_controls_as_in_sqlite() {
    let b = Both::new().await;
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
    for account in ["acme", "beta"] {
        lite::put_business_hours(&b.lite, account, &hours, 5).unwrap();
        rows::put_business_hours(&b.pg(), account, &hours, 5)
            .await
            .unwrap();
    }
    let l = lite::get_business_hours(&b.lite, "acme").unwrap();
    let p = rows::get_business_hours(&b.pg(), "acme").await.unwrap();
    same(&l, &p);
    assert_eq!(p, Some(hours.clone()));
    same(
        &lite::get_business_hours(&b.lite, "none").unwrap(),
        &rows::get_business_hours(&b.pg(), "none").await.unwrap(),
    );
    for (account, cursor) in [
        ("beta", Some((Millis::MIN, 0))),
        ("acme", Some((1_000, 7))),
        ("beta", None),
        ("none", Some((1, 1))),
    ] {
        lite::set_rewindow_cursor(&b.lite, account, cursor).unwrap();
        rows::set_rewindow_cursor(&b.pg(), account, cursor)
            .await
            .unwrap();
        for a in ["acme", "beta", "none"] {
            same(
                &lite::rewindow_cursor(&b.lite, a).unwrap(),
                &rows::rewindow_cursor(&b.pg(), a).await.unwrap(),
            );
        }
        same(
            &lite::rewindows_under_way(&b.lite).unwrap(),
            &rows::rewindows_under_way(&b.pg()).await.unwrap(),
        );
    }
    assert_eq!(
        rows::rewindow_cursor(&b.pg(), "acme").await.unwrap(),
        Some((1_000, 7))
    );
    // Replacing the hours keeps the walk where it stands, as in SQLite.
    lite::put_business_hours(&b.lite, "acme", &hours, 9).unwrap();
    rows::put_business_hours(&b.pg(), "acme", &hours, 9)
        .await
        .unwrap();
    same(
        &lite::rewindow_cursor(&b.lite, "acme").unwrap(),
        &rows::rewindow_cursor(&b.pg(), "acme").await.unwrap(),
    );
    for (account, channel, paused, per_minute) in [
        ("acme", Channel::Email, Some(true), None),
        ("acme", Channel::Email, None, Some(60)),
        ("*", Channel::Chat, None, Some(u32::MAX)),
        ("acme", Channel::Email, Some(false), None),
        ("beta", Channel::Chat, Some(true), Some(5)),
        ("beta", Channel::Chat, Some(false), Some(0)),
    ] {
        lite::put_control(&b.lite, account, channel, paused, per_minute).unwrap();
        rows::put_control(&b.pg(), account, channel, paused, per_minute)
            .await
            .unwrap();
        let mut l = lite::all_controls(&b.lite).unwrap();
        let mut p = rows::all_controls(&b.pg()).await.unwrap();
        l.sort_by(|a, b| (&a.account_id, a.channel).cmp(&(&b.account_id, b.channel)));
        p.sort_by(|a, b| (&a.account_id, a.channel).cmp(&(&b.account_id, b.channel)));
        same(&l, &p);
        // Those of every account alone: the rows of `*` among all of them.
        l.retain(|r| r.account_id == "*");
        same(&l, &rows::every_account_controls(&b.pg()).await.unwrap());
    }
    assert_eq!(
        rows::every_account_controls(&b.pg()).await.unwrap().len(),
        1
    );
}

/// Pruning walks the sequence from its start in batches and stops at the first recent
/// event; once every event is gone, the sequence still does not go back: start-up
/// and `events_after` see where it stood.
#[tokio::test]
async fn pruning_never_takes_the_sequence_back() {
    let b = Both::new().await;
    let id = b
        .insert(&sample("acme", "T1", 1), 1, &Timing::default(), 1)
        .await;
    let item = b.get(id).await;
    for at in [10, 10, 10, 10, 10, 1_000, 10, 1_000] {
        b.event(EventType::Updated, &item, at).await;
    }
    // SQLite prunes only what its rows reflect: mark them all written back.
    lite::sweep(&b.lite, std::iter::empty::<&Item>(), None).unwrap();
    for (batch, want) in [(3, 3), (3, 2), (3, 0)] {
        let l = lite::prune_events(&b.lite, 500, batch).unwrap();
        let p = rows::prune_events(&b.pg(), 500, batch).await.unwrap();
        same(&l, &p);
        assert_eq!(p, want);
        same(
            &lite::event_bounds(&b.lite).unwrap(),
            &rows::event_bounds(&b.pg()).await.unwrap(),
        );
    }
    assert_eq!(rows::event_bounds(&b.pg()).await.unwrap(), (6, 8));
    let gap = rows::events_after(&b.pg(), None, 2, 10, None)
        .await
        .unwrap();
    assert_eq!(
        gap.oldest, 6,
        "events 3..5 were pruned: the caller can tell"
    );
    assert_eq!(
        gap.events.iter().map(|e| e.sequence).collect::<Vec<_>>(),
        [6, 7, 8]
    );
    // Everything old now: every event goes, the sequence stays.
    let p = rows::prune_events(&b.pg(), 5_000, 100).await.unwrap();
    let l = lite::prune_events(&b.lite, 5_000, 100).unwrap();
    same(&l, &p);
    assert_eq!(p, 3);
    same(
        &lite::event_bounds(&b.lite).unwrap(),
        &rows::event_bounds(&b.pg()).await.unwrap(),
    );
    assert_eq!(rows::event_bounds(&b.pg()).await.unwrap(), (9, 8));
    assert_eq!(rows::max_ids(&b.pg()).await.unwrap(), (id, 8));
    let l = lite::events_after(&b.lite, None, 0, 10).unwrap();
    let p = rows::events_after(&b.pg(), None, 0, 10, None)
        .await
        .unwrap();
    same(&(l.oldest, l.events.len()), &(p.oldest, p.events.len()));
    assert_eq!(p.oldest, 9);
}

/// A batch schedule in one statement each for the items and their events writes what
/// one insert at a time writes.
#[tokio::test]
async fn a_batch_insert_writes_what_single_inserts_write() {
    let b = Both::new().await;
    let news: Vec<NewItem> = (0..25)
        .map(|i| {
            let mut n = sample(if i % 2 == 0 { "acme" } else { "beta" }, "T1", i);
            if i % 5 == 0 {
                n.timing = rich_timing();
            }
            n
        })
        .collect();
    let mut ids = Vec::new();
    for (i, n) in news.iter().enumerate() {
        ids.push(lite::insert_item(&b.lite, n, n.send_at + 1, &n.timing, 100 + i as i64).unwrap());
    }
    let batch: Vec<NewRow<'_>> = news
        .iter()
        .zip(&ids)
        .enumerate()
        .map(|(i, (n, &id))| NewRow {
            id,
            new: n,
            send_at: n.send_at + 1,
            timing: &n.timing,
            now: 100 + i as i64,
            partition: None,
        })
        .collect();
    rows::insert_items(&b.pg(), &batch).await.unwrap();
    let items: Vec<Item> = {
        let mut v = Vec::new();
        for &id in &ids {
            v.push(b.get(id).await);
        }
        v
    };
    let mut seqs = Vec::new();
    for item in &items {
        seqs.push(
            lite::insert_event(&b.lite, EventType::Scheduled, item, item.created_at).unwrap(),
        );
    }
    let events: Vec<EventRow<'_>> = items
        .iter()
        .zip(&seqs)
        .map(|(item, &seq)| EventRow {
            seq,
            kind: EventType::Scheduled,
            item,
            at: item.created_at,
            partition: None,
        })
        .collect();
    rows::insert_events(&b.pg(), &events).await.unwrap();
    let key = |e: &crate::domain::Event| (e.sequence, e.kind, e.at, e.item.clone());
    let l = lite::events_after(&b.lite, None, 0, 100).unwrap();
    let p = rows::events_after(&b.pg(), None, 0, 100, None)
        .await
        .unwrap();
    same(
        &l.events.iter().map(key).collect::<Vec<_>>(),
        &p.events.iter().map(key).collect::<Vec<_>>(),
    );
    assert_eq!(p.events.len(), 25);
    // The snapshots are the same bytes.
    let l: Vec<Vec<u8>> = b
        .lite
        .prepare("SELECT snapshot FROM events ORDER BY seq")
        .unwrap()
        .query_map([], |r| r.get(0))
        .unwrap()
        .collect::<Result<_, _>>()
        .unwrap();
    let p: Vec<Vec<u8>> =
        b.db.client
            .query("SELECT snapshot FROM events ORDER BY seq", &[])
            .await
            .unwrap()
            .iter()
            .map(|r| r.get(0))
            .collect();
    same(&l, &p);
    assert_eq!(rows::max_ids(&b.pg()).await.unwrap(), (25, 25));
    // A batch that breaks a rule (a taken id) inserts nothing.
    let again = [
        NewRow {
            id: 999,
            ..batch[0]
        },
        batch[1],
    ];
    assert!(rows::insert_items(&b.pg(), &again).await.is_err());
    assert_eq!(rows::get_item_any(&b.pg(), 999).await.unwrap(), None);
}

/// The e2e benchmark's email (a ~300-byte body): what a pending item holds.
fn bench_item(i: i64) -> NewItem {
    let body = "Hello, thanks for reaching out. We looked into the billing issue you reported \
                and the duplicate charge has been refunded; it should appear on your statement \
                within three to five business days. If anything else looks off, just reply to \
                this email and we will pick it up right away. Kind regards, the support team.";
    NewItem {
        account_id: format!("acct-{}", i % 64),
        ticket_id: format!("T{i}"),
        kind: Kind::Reply,
        channel: Channel::Email,
        author_id: "agent-7".into(),
        content: Content::Email(EmailContent {
            to: vec![format!("client{}@example.com", i % 10_000)],
            subject: "Re: duplicate charge on my invoice".into(),
            text_body: body[..300].into(),
            in_reply_to: "<msg-1@helpdesk.example>".into(),
            ..Default::default()
        }),
        send_at: 1_800_000_000_000 + (i * 7_919) % 86_400_000,
        on_activity: OnActivity::ConvertToNote,
        request_id: None,
        timing: Timing::default(),
    }
}

/// Schedules `n` bench items with their SCHEDULED events, in batches; returns the bytes
/// per item of every table with its indexes (and TOAST).
async fn bytes_per_pending_item(n: i64) -> f64 {
    let mut db = TestDb::new().await;
    schema::migrate(&mut db.client).await.unwrap();
    let st = Statements::default();
    let c = (&db.client, &st);
    for start in (0..n).step_by(1_000) {
        let news: Vec<NewItem> = (start..(start + 1_000).min(n)).map(bench_item).collect();
        let batch: Vec<NewRow<'_>> = news
            .iter()
            .zip(start..)
            .map(|(new, i)| NewRow {
                id: i + 1,
                new,
                send_at: new.send_at,
                timing: &new.timing,
                now: 1_700_000_000_000 + i,
                partition: Some(crate::cluster::partition_of(&new.account_id, 64) as i32),
            })
            .collect();
        rows::insert_items(&c, &batch).await.unwrap();
        let ids: Vec<ItemId> = batch.iter().map(|r| r.id).collect();
        let (items, _) = rows::due_items(&c, &ids).await.unwrap();
        let events: Vec<EventRow<'_>> = items
            .iter()
            .map(|item| EventRow {
                seq: item.id as u64,
                kind: EventType::Scheduled,
                item,
                at: item.created_at,
                partition: Some(crate::cluster::partition_of(&item.account_id, 64) as i32),
            })
            .collect();
        rows::insert_events(&c, &events).await.unwrap();
    }
    let total: i64 = db
        .client
        .query_one(
            "SELECT SUM(pg_total_relation_size(c.oid))::bigint FROM pg_class c \
             JOIN pg_namespace s ON s.oid = c.relnamespace \
             WHERE s.nspname = 'public' AND c.relkind = 'r'",
            &[],
        )
        .await
        .unwrap()
        .get(0);
    for r in db
        .client
        .query(
            "SELECT c.relname::text, pg_relation_size(c.oid), pg_total_relation_size(c.oid) \
             FROM pg_class c JOIN pg_namespace s ON s.oid = c.relnamespace \
             WHERE s.nspname = 'public' ORDER BY 1",
            &[],
        )
        .await
        .unwrap()
    {
        eprintln!(
            "{:24} {:>8.1} {:>8.1}",
            r.get::<_, String>(0),
            r.get::<_, i64>(1) as f64 / n as f64,
            r.get::<_, i64>(2) as f64 / n as f64
        );
    }
    total as f64 / n as f64
}

/// What a pending item costs in the database at 100k: its row (a ~400-byte email),
/// its index entries and its SCHEDULED event with theirs. Measured 855 B: 773 B before
/// rows carried their partition (schema 3: the `partition` column of items and events,
/// and `events_by_partition`, ~35 B, by which an owner finds its partitions' newest and
/// oldest events). pg-boss: ~700-770 B per pending job of a ~300-byte payload, durable
/// settings, 100k jobs.
#[tokio::test]
async fn a_pending_item_takes_under_880_bytes_with_its_event_and_indexes() {
    let per_item = bytes_per_pending_item(100_000).await;
    eprintln!("{per_item:.0} B per pending item (tables, indexes, TOAST)");
    assert!(per_item < 880.0, "{per_item:.0} B per pending item");
}
