//! A change of business hours on a large account (issue 19 item 10): its pending
//! business-hours items are re-resolved in writes of a bounded size, not in one write
//! holding the writer for every tenant, and a stop in the middle is resumed by the
//! restart.
mod common;

use common::*;
use sendlater::pb;

const HOUR: i64 = 3_600_000;
/// Live items one re-resolution write walks at most (the default of
/// `Limits::rewindow_chunk`).
const CHUNK: usize = 1000;
/// Saturday 2026-11-28 20:00 Moscow.
const SATURDAY_EVENING: i64 = T0 + 77 * HOUR;

/// Monday to Friday 09:00-18:00 in Moscow, plus Sunday from `sunday_open`.
fn week(account: &str, sunday_open: Option<&str>) -> pb::BusinessHours {
    let mut days: Vec<pb::BusinessDay> = (1..=5)
        .map(|weekday| pb::BusinessDay {
            weekday,
            open: "09:00".into(),
            close: "18:00".into(),
        })
        .collect();
    if let Some(open) = sunday_open {
        days.push(pb::BusinessDay {
            weekday: 7,
            open: open.into(),
            close: "24:00".into(),
        });
    }
    pb::BusinessHours {
        account_id: account.into(),
        time_zone: "Europe/Moscow".into(),
        days,
        holidays: vec![],
    }
}

/// `n` business-hours replies of acme, each in its own ticket, requested for
/// Saturday evening; returns their ids.
async fn schedule_many(t: &TestServer, n: usize) -> Vec<String> {
    let mut ids = Vec::new();
    let mut client = t.client.clone();
    for start in (0..n).step_by(1000) {
        let entries = (start..n.min(start + 1000))
            .map(|i| {
                let mut r = email_reply("acme", &format!("T{i}"), SATURDAY_EVENING);
                r.delivery_window = pb::DeliveryWindow::BusinessHours as i32;
                batch_entry(r)
            })
            .collect();
        let items = client
            .schedule_batch(pb::ScheduleBatchRequest { entries })
            .await
            .expect("batch")
            .into_inner()
            .items;
        ids.extend(items.into_iter().map(|i| i.item_id));
    }
    ids
}

/// Waits (bounded) until every item's send time is `at`.
async fn all_at(t: &TestServer, ids: &[String], at: i64) {
    for id in ids {
        wait_item(t, id, "its move to the new opening", |i| {
            ms(&i.send_at) == at
        })
        .await;
    }
}

/// Monday 09:00 Moscow, and Sunday 19:00 Moscow, in UTC.
const MONDAY_OPENING: i64 = T0 + 5 * 24 * HOUR - 6 * HOUR;
const SUNDAY_19: i64 = T0 + 4 * 24 * HOUR + 4 * HOUR;

#[tokio::test]
async fn a_change_of_hours_on_a_large_account_moves_its_items_in_bounded_writes() {
    let mut t = TestServer::start().await;
    t.client
        .clone()
        .set_business_hours(week("acme", None))
        .await
        .unwrap();
    let ids = schedule_many(&t, CHUNK + 500).await;
    assert_eq!(ms(&t.get_acme(&ids[0]).await.send_at), MONDAY_OPENING);
    // Sunday opens at 19:00: every item moves there. The write that stores the hours
    // moves one chunk; on main it moved all 1500 in that one write.
    let hours = sendlater::service::convert::business_hours(&week("acme", Some("19:00")))
        .expect("valid hours");
    let (_, moved) = t
        .running()
        .engine()
        .set_business_hours("acme".into(), hours)
        .await
        .expect("set");
    assert!(
        !moved.is_empty() && moved.len() <= CHUNK,
        "{} items moved in the write of the hours",
        moved.len()
    );
    // The rest follow in further writes.
    all_at(&t, &ids, SUNDAY_19).await;
    t.stop().await;
}

// Reads or damages the SQLite engine's file, or holds its writer's durability: SQLite only.
#[tokio::test]
async fn a_re_resolution_a_stop_interrupted_goes_on_after_the_restart() {
    let mut t = TestServer::start_sqlite_with(|_| {}).await;
    t.client
        .clone()
        .set_business_hours(week("acme", None))
        .await
        .unwrap();
    let ids = schedule_many(&t, 30).await;
    // The hours of another account, to copy as acme's new hours below.
    t.client
        .clone()
        .set_business_hours(week("other", Some("19:00")))
        .await
        .unwrap();
    t.stop().await;
    // As a stop right after the write of new hours leaves it: the hours stored, the
    // walk of the account's items at its start, no item moved yet.
    {
        let db = rusqlite::Connection::open(t.db_path()).unwrap();
        db.execute_batch(
            "UPDATE business_hours SET spec = (SELECT spec FROM business_hours \
             WHERE account_id = 'other'), rewindow_at = -9223372036854775808, rewindow_id = 0 \
             WHERE account_id = 'acme'",
        )
        .unwrap();
    }
    t.restart().await;
    all_at(&t, &ids, SUNDAY_19).await;
    t.stop().await;
}
