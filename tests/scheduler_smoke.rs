//! A first end-to-end check: schedule, get, list, cancel over real gRPC.
mod common;

use common::*;
use sendlater::pb;

#[tokio::test]
async fn a_scheduled_reply_can_be_read_listed_and_cancelled() {
    let mut t = TestServer::start().await;
    let item = t
        .client
        .schedule_message(email_reply("acme", "T1", T0 + 3_600_000))
        .await
        .expect("schedule")
        .into_inner();
    assert_eq!(item.state, pb::State::Pending as i32);
    assert_eq!(ms(&item.send_at), T0 + 3_600_000);
    assert_eq!(ms(&item.created_at), T0);
    let got = t
        .client
        .get_item(item_ref("acme", &item.item_id))
        .await
        .expect("get")
        .into_inner();
    assert_eq!(got, item);
    let list = t
        .client
        .list_scheduled(pb::ListScheduledRequest {
            account_id: "acme".into(),
            ..Default::default()
        })
        .await
        .expect("list")
        .into_inner();
    assert_eq!(list.items.len(), 1);
    let c = t
        .client
        .cancel(item_ref("acme", &item.item_id))
        .await
        .expect("cancel")
        .into_inner();
    assert_eq!(c.state, pb::State::Cancelled as i32);
    t.stop().await;
}
