//! WatchEvents over real gRPC: backlog then live with no gap, resume, account filter,
//! retention.
mod common;

use std::time::Duration;

use common::*;
use sendlater::pb;
use tonic::Streaming;

async fn watch(t: &TestServer, account: &str, after: u64) -> Streaming<pb::ItemEvent> {
    t.client
        .clone()
        .watch_events(pb::WatchEventsRequest {
            account_id: account.into(),
            after_sequence: after,
        })
        .await
        .expect("watch")
        .into_inner()
}

async fn next(s: &mut Streaming<pb::ItemEvent>) -> pb::ItemEvent {
    tokio::time::timeout(Duration::from_secs(10), s.message())
        .await
        .expect("an event within 10 s")
        .expect("stream ok")
        .expect("stream open")
}

#[tokio::test]
async fn backlog_then_live_events_arrive_once_each_in_sequence_order() {
    let mut t = TestServer::start().await;
    let mut ids = Vec::new();
    for i in 0..50 {
        let it = t
            .client
            .schedule_message(chat_reply("acme", &format!("T{i}"), T0 + 60_000))
            .await
            .unwrap()
            .into_inner();
        ids.push(it.item_id);
    }
    let mut s = watch(&t, "acme", 0).await;
    // More schedules race with the switch from backlog to live.
    let mut client = t.client.clone();
    let writer = tokio::spawn(async move {
        let mut more = Vec::new();
        for i in 0..150 {
            let it = client
                .schedule_message(chat_reply("acme", &format!("L{i}"), T0 + 60_000))
                .await
                .unwrap()
                .into_inner();
            more.push(it.item_id);
        }
        more
    });
    let mut seen = Vec::new();
    let mut last = 0;
    while seen.len() < 200 {
        let ev = next(&mut s).await;
        assert!(ev.sequence > last, "sequence {} after {last}", ev.sequence);
        last = ev.sequence;
        assert_eq!(ev.r#type, pb::EventType::Scheduled as i32);
        seen.push(ev.item.unwrap().item_id);
    }
    ids.extend(writer.await.unwrap());
    assert_eq!(seen, ids, "every item once, in commit order");
    t.stop().await;
}

#[tokio::test]
async fn a_watcher_resumes_after_the_last_sequence_it_saw_with_nothing_missed() {
    let mut t = TestServer::start().await;
    let a = t
        .client
        .schedule_message(chat_reply("acme", "T1", T0 + 60_000))
        .await
        .unwrap()
        .into_inner();
    let mut s = watch(&t, "acme", 0).await;
    let first = next(&mut s).await;
    drop(s);
    // While disconnected: a cancel and a new item.
    t.client.cancel(item_ref("acme", &a.item_id)).await.unwrap();
    let b = t
        .client
        .schedule_message(chat_reply("acme", "T2", T0 + 60_000))
        .await
        .unwrap()
        .into_inner();
    let mut s = watch(&t, "acme", first.sequence).await;
    let e1 = next(&mut s).await;
    assert_eq!(e1.r#type, pb::EventType::Cancelled as i32);
    assert_eq!(e1.item.as_ref().unwrap().item_id, a.item_id);
    assert_eq!(e1.item.as_ref().unwrap().state, pb::State::Cancelled as i32);
    let e2 = next(&mut s).await;
    assert_eq!(e2.r#type, pb::EventType::Scheduled as i32);
    assert_eq!(e2.item.unwrap().item_id, b.item_id);
    t.stop().await;
}

#[tokio::test]
async fn events_carry_the_item_as_it_was_at_the_change() {
    let mut t = TestServer::start().await;
    let a = t
        .client
        .schedule_message(chat_reply("acme", "T1", T0 + 60_000))
        .await
        .unwrap()
        .into_inner();
    t.client
        .send_now(item_ref("acme", &a.item_id))
        .await
        .unwrap();
    let mut s = watch(&t, "acme", 0).await;
    let scheduled = next(&mut s).await;
    assert_eq!(ms(&scheduled.item.unwrap().send_at), T0 + 60_000);
    let updated = next(&mut s).await;
    assert_eq!(updated.r#type, pb::EventType::Updated as i32);
    assert_eq!(ms(&updated.item.unwrap().send_at), T0);
    t.stop().await;
}

#[tokio::test]
async fn a_watcher_sees_only_its_own_accounts_events() {
    let mut t = TestServer::start().await;
    t.client
        .schedule_message(chat_reply("other", "T1", T0 + 60_000))
        .await
        .unwrap();
    let mine = t
        .client
        .schedule_message(chat_reply("acme", "T1", T0 + 60_000))
        .await
        .unwrap()
        .into_inner();
    t.client
        .schedule_message(chat_reply("other", "T2", T0 + 60_000))
        .await
        .unwrap();
    let mut s = watch(&t, "acme", 0).await;
    let ev = next(&mut s).await;
    assert_eq!(ev.item.unwrap().item_id, mine.item_id);
    // A fence: the stream is in sequence order, so the next event being this later
    // one of acme means the other account's event in between was not sent here.
    let fence = t
        .client
        .schedule_message(chat_reply("acme", "T3", T0 + 60_000))
        .await
        .unwrap()
        .into_inner();
    let ev = next(&mut s).await;
    assert_eq!(
        ev.item.unwrap().item_id,
        fence.item_id,
        "no event of another account"
    );
    t.stop().await;
}

#[tokio::test]
async fn events_older_than_the_retention_are_pruned() {
    let mut t = TestServer::start_with(|c| c.event_retention_ms = 60_000).await;
    t.client
        .schedule_message(chat_reply("acme", "old", T0 + 3_600_000))
        .await
        .unwrap();
    t.advance(Duration::from_secs(61));
    let fresh = t
        .client
        .schedule_message(chat_reply("acme", "new", T0 + 3_600_000))
        .await
        .unwrap()
        .into_inner();
    // The background pruner may already have run when the clock moved; pruning now
    // makes sure it has, whichever did it.
    t.running().engine().prune_events(60_000).await.unwrap();
    let mut s = watch(&t, "acme", 0).await;
    assert_eq!(next(&mut s).await.item.unwrap().item_id, fresh.item_id);
    t.stop().await;
}

#[tokio::test]
async fn dispatch_outcomes_are_events() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Chat], 4).await;
    let it = t
        .client
        .schedule_message(chat_reply("acme", "T1", T0))
        .await
        .unwrap()
        .into_inner();
    let job = c.next_job().await;
    assert_eq!(job_item(&job), it.item_id);
    c.nack(&job, "busy", false).await;
    let mut s = watch(&t, "acme", 0).await;
    let events: Vec<(i32, String)> = [next(&mut s).await, next(&mut s).await, next(&mut s).await]
        .into_iter()
        .map(|e| (e.r#type, e.item.expect("the event's item").item_id))
        .collect();
    assert_eq!(
        events,
        vec![
            (pb::EventType::Scheduled as i32, it.item_id.clone()),
            (pb::EventType::Dispatching as i32, it.item_id.clone()),
            (pb::EventType::Retrying as i32, it.item_id.clone())
        ]
    );
    t.stop().await;
}
