//! WatchEvents is bounded: a caller holds at most a few live streams, the service at
//! most its global cap (RESOURCE_EXHAUSTED beyond, a closed stream frees its place), and
//! an `after_sequence` beyond the newest event is clamped to it, so the stream delivers
//! what comes next instead of waiting for a sequence that may never be reached.

mod common;

use std::time::Duration;

use common::*;
use sendlater::config::{Accounts, Role, TokenConfig};
use sendlater::pb;
use tonic::Code;

const TOKEN_A: &str = "token-a-0123456789abcdef";
const TOKEN_B: &str = "token-b-0123456789abcdef";

fn admin(token: &str) -> TokenConfig {
    TokenConfig {
        token: token.into(),
        role: Role::Admin,
        accounts: Accounts::All,
    }
}

async fn watch(
    t: &TestServer,
    token: Option<&str>,
    after: u64,
) -> Result<tonic::Streaming<pb::ItemEvent>, tonic::Status> {
    let mut r = tonic::Request::new(pb::WatchEventsRequest {
        account_id: "acme".into(),
        after_sequence: after,
    });
    if let Some(token) = token {
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().unwrap());
    }
    t.client
        .clone()
        .watch_events(r)
        .await
        .map(|r| r.into_inner())
}

#[tokio::test]
async fn a_token_holds_at_most_8_watch_streams_and_a_closed_one_frees_its_place() {
    let t = TestServer::start_with(|c| c.tokens = vec![admin(TOKEN_A), admin(TOKEN_B)]).await;
    let mut open = Vec::new();
    for _ in 0..8 {
        open.push(watch(&t, Some(TOKEN_A), 0).await.expect("a stream"));
    }
    let e = watch(&t, Some(TOKEN_A), 0).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    // Another token has its own places.
    let _b = watch(&t, Some(TOKEN_B), 0)
        .await
        .expect("another token's stream");
    // Closing one gives its place back once the server sees it gone.
    drop(open.pop());
    let mut reopened = None;
    for _ in 0..1000 {
        match watch(&t, Some(TOKEN_A), 0).await {
            Ok(s) => {
                reopened = Some(s);
                break;
            }
            Err(e) => {
                assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
    }
    assert!(reopened.is_some(), "the closed stream's place came back");
}

#[tokio::test]
async fn the_service_holds_at_most_its_global_cap_of_watch_streams() {
    let t = TestServer::start_with(|c| c.limits.max_streams = 3).await;
    let mut open = Vec::new();
    for _ in 0..3 {
        open.push(watch(&t, None, 0).await.expect("a stream"));
    }
    let e = watch(&t, None, 0).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
}

#[tokio::test]
async fn an_after_sequence_beyond_the_newest_event_is_clamped_to_it() {
    let t = TestServer::start().await;
    let mut events = watch(&t, None, 1_000_000).await.expect("a stream");
    let item = t.schedule(email_reply("acme", "T1", T0 + 3_600_000)).await;
    let ev = tokio::time::timeout(Duration::from_secs(10), events.message())
        .await
        .expect("the next event arrives (not held back until sequence 1,000,000)")
        .expect("no error")
        .expect("the stream is open");
    assert_eq!(ev.r#type, pb::EventType::Scheduled as i32);
    assert_eq!(ev.item.expect("its item").item_id, item.item_id);
}
