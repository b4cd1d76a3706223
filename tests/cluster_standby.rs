//! A standby's forwarding (`cluster::standby`): a call waits for an owner that can be
//! reached, until the caller's deadline, and is then answered by it.
mod common;

use std::time::{Duration, Instant};

use common::*;
use sendlater::cluster::standby::Standby;
use sendlater::pb;

/// Waits (bounded) until `what` of the standby reaches `n`.
async fn until(what: &str, n: u64, f: impl Fn() -> u64) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while f() < n {
        assert!(Instant::now() < deadline, "{what} never reached {n}");
        tokio::task::yield_now().await;
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn host_port(url: &str) -> String {
    url.trim_start_matches("http://").to_owned()
}

#[tokio::test]
async fn a_call_to_a_standby_that_knows_no_owner_waits_for_one_and_is_answered_by_it() {
    let mut t = TestServer::start().await;
    let standby = Standby::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let url = format!("http://{}", standby.local_addr);
    let mut via = connect(&url).await;
    let call = tokio::spawn(async move {
        via.schedule_message(email_reply("acme", "T1", T0 + 60_000))
            .await
    });
    until("the waits", 1, || standby.waits()).await;
    assert!(!call.is_finished(), "answered before an owner was known");
    standby.owner.set(Some(&host_port(&t.url())));
    let item = call
        .await
        .unwrap()
        .expect("answered by the owner")
        .into_inner();
    let got = t
        .client
        .get_item(item_ref("acme", &item.item_id))
        .await
        .expect("the owner has it")
        .into_inner();
    assert_eq!(got, item);
    assert_eq!(standby.forwarded(), 1);
    standby.stop().await;
    t.stop().await;
}

#[tokio::test]
async fn a_call_whose_owner_is_gone_goes_to_the_next_owner_once_and_only_once() {
    let mut t = TestServer::start().await;
    let standby = Standby::start("127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    // The owner died: nothing listens at its address.
    standby
        .owner
        .set(Some(&format!("127.0.0.1:{}", pg::free_port())));
    let url = format!("http://{}", standby.local_addr);
    let mut via = connect(&url).await;
    let call = tokio::spawn(async move {
        let mut req = email_reply("acme", "T1", T0 + 60_000);
        req.request_id = "r1".into();
        via.schedule_message(req).await
    });
    until("the refused forwards", 1, || standby.refused()).await;
    standby.owner.set(Some(&host_port(&t.url())));
    let item = call
        .await
        .unwrap()
        .expect("answered by the next owner")
        .into_inner();
    assert_eq!(item.request_id, "r1");
    let listed = t
        .client
        .list_scheduled(pb::ListScheduledRequest {
            account_id: "acme".into(),
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(listed.items.len(), 1, "sent to the next owner exactly once");
    standby.stop().await;
    t.stop().await;
}
