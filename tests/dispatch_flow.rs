//! Dispatch over real gRPC: due items reach a connector stream, answers change state.
mod common;

use std::time::Duration;

use common::*;
use sendlater::pb;
use sendlater::pb::dispatch_client::DispatchClient;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Streaming;

/// A connector speaking the Dispatch protocol by hand.
struct TestConnector {
    tx: mpsc::Sender<pb::ConnectorMessage>,
    jobs: Streaming<pb::DeliveryJob>,
}

impl TestConnector {
    async fn connect(url: &str, channels: &[pb::Channel], max_in_flight: u32) -> TestConnector {
        let mut client = DispatchClient::new(channel(url).await);
        let (tx, rx) = mpsc::channel(64);
        tx.send(pb::ConnectorMessage {
            msg: Some(pb::connector_message::Msg::Hello(pb::Hello {
                connector_id: "test".into(),
                channels: channels.iter().map(|&c| c as i32).collect(),
                max_in_flight,
            })),
        })
        .await
        .unwrap();
        let jobs = client
            .connect(ReceiverStream::new(rx))
            .await
            .expect("connect")
            .into_inner();
        TestConnector { tx, jobs }
    }

    async fn next_job(&mut self) -> pb::DeliveryJob {
        tokio::time::timeout(Duration::from_secs(10), self.jobs.message())
            .await
            .expect("a job within 10 s")
            .expect("stream ok")
            .expect("stream open")
    }

    async fn ack(&self, job: &pb::DeliveryJob, provider_id: &str) {
        self.tx
            .send(pb::ConnectorMessage {
                msg: Some(pb::connector_message::Msg::Ack(pb::Ack {
                    job_id: job.job_id.clone(),
                    provider_message_id: provider_id.into(),
                })),
            })
            .await
            .unwrap();
    }
}

#[tokio::test]
async fn a_due_item_reaches_the_connector_and_an_ack_marks_it_sent() {
    let mut t = TestServer::start().await;
    let mut c = TestConnector::connect(&t.url(), &[pb::Channel::Email], 10).await;
    let item = t
        .client
        .schedule_message(email_reply("acme", "T1", T0 + 60_000))
        .await
        .unwrap()
        .into_inner();
    t.advance(Duration::from_secs(60));
    let job = c.next_job().await;
    assert_eq!(job.attempt, 1);
    let got = job.item.clone().unwrap();
    assert_eq!(got.item_id, item.item_id);
    assert_eq!(got.state, pb::State::Dispatching as i32);
    c.ack(&job, "<smtp-1@example.com>").await;
    let mut client = t.client.clone();
    let id = item.item_id.clone();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let now = client
            .get_item(item_ref("acme", &id))
            .await
            .unwrap()
            .into_inner();
        if now.state == pb::State::Sent as i32 {
            assert_eq!(now.provider_message_id, "<smtp-1@example.com>");
            assert_eq!(ms(&now.sent_at), T0 + 60_000);
            break;
        }
        assert!(std::time::Instant::now() < deadline, "not SENT: {now:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    t.stop().await;
}
