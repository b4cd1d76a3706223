//! The `sendlater.v1.Dispatch` gRPC service: one bidirectional stream per connector.
//! The first message must be Hello; then the server streams DeliveryJobs and the
//! connector answers Ack/Nack. The stream tasks only translate; the dispatcher actor
//! decides.

use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

use tokio::sync::mpsc;
use tokio_stream::Stream;
use tokio_util::sync::{CancellationToken, WaitForCancellationFutureOwned};
use tonic::{Request, Response, Status, Streaming};

use super::auth;
use super::convert;
use std::sync::Arc;

use tokio::sync::Semaphore;

use crate::dispatch::{parse_job_id, Answer, ConnectorEvent, Dispatcher, Job};
use crate::domain::{Channel, Error};
use crate::pb;

/// max_in_flight bounds (API.md).
const MAX_IN_FLIGHT: u32 = 10_000;

/// The Dispatch service.
#[derive(Clone)]
pub struct DispatchService {
    dispatcher: Dispatcher,
}

impl DispatchService {
    pub fn new(dispatcher: Dispatcher) -> Self {
        Self { dispatcher }
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::DeliveryJob, Status>> + Send>>;

fn hello_channels(h: &pb::Hello) -> Result<Vec<Channel>, Status> {
    if h.channels.is_empty() {
        return Err(Status::from(Error::invalid(
            "hello.channels",
            "name at least one channel",
        )));
    }
    let mut out = Vec::new();
    for (i, &c) in h.channels.iter().enumerate() {
        let ch = convert::channel(&format!("hello.channels[{i}]"), c)?.ok_or_else(|| {
            Status::from(Error::invalid(
                format!("hello.channels[{i}]"),
                "must be EMAIL or CHAT",
            ))
        })?;
        if !out.contains(&ch) {
            out.push(ch);
        }
    }
    Ok(out)
}

fn job_to_pb(j: Job) -> pb::DeliveryJob {
    pb::DeliveryJob {
        job_id: j.job_id,
        item: Some(j.item.into()),
        attempt: j.attempt,
        lease_expires_at: Some(convert::ts(j.lease_expires_at)),
    }
}

#[tonic::async_trait]
impl pb::dispatch_server::Dispatch for DispatchService {
    type ConnectStream = JobStream;

    async fn connect(
        &self,
        req: Request<Streaming<pb::ConnectorMessage>>,
    ) -> Result<Response<Self::ConnectStream>, Status> {
        let identity = auth::identity(&req)?;
        let mut inbound = req.into_inner();
        let hello = match inbound.message().await? {
            Some(pb::ConnectorMessage {
                msg: Some(pb::connector_message::Msg::Hello(h)),
            }) => h,
            _ => {
                return Err(Status::from(Error::invalid(
                    "hello",
                    "the first message on the stream must be Hello",
                )))
            }
        };
        let channels = hello_channels(&hello)?;
        if !(1..=MAX_IN_FLIGHT).contains(&hello.max_in_flight) {
            return Err(Status::from(Error::invalid(
                "hello.max_in_flight",
                format!("must be 1..{MAX_IN_FLIGHT}, got {}", hello.max_in_flight),
            )));
        }
        if hello.connector_id.is_empty() {
            return Err(Status::from(Error::invalid(
                "hello.connector_id",
                "is required",
            )));
        }
        let conn = self.dispatcher.next_conn();
        let max_in_flight = hello.max_in_flight as usize;
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(max_in_flight);
        let kick = CancellationToken::new();
        if !self.dispatcher.send(ConnectorEvent::Hello {
            conn,
            connector_id: hello.connector_id.clone(),
            channels,
            accounts: identity.accounts.clone(),
            max_in_flight,
            jobs: jobs_tx,
            kick: kick.clone(),
        }) {
            return Err(Status::unavailable("server shutting down"));
        }
        // Reader: answers from the connector; its end (or error) means the stream is
        // gone. It keeps reading during a graceful stop (the dispatcher records answers
        // until the jobs in flight are answered), and stops when the dispatcher ends the
        // stream. At most ANSWER_WINDOW answers of this stream wait in the dispatcher's
        // queue: a flood waits in HTTP/2 flow control instead of growing memory.
        let dispatcher = self.dispatcher.clone();
        let window = Arc::new(Semaphore::new(max_in_flight + ANSWER_SLACK));
        let reader_kick = kick.clone();
        let stopped = self.dispatcher.stopped();
        tokio::spawn(async move {
            tokio::pin!(stopped);
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = reader_kick.cancelled() => break,
                    _ = &mut stopped => break,
                };
                let Ok(Some(msg)) = msg else { break };
                let (job_id, answer) = match msg.msg {
                    Some(pb::connector_message::Msg::Ack(a)) => (
                        a.job_id,
                        Answer::Ack {
                            provider_message_id: a.provider_message_id,
                        },
                    ),
                    Some(pb::connector_message::Msg::Nack(n)) => (
                        n.job_id,
                        Answer::Nack {
                            error: n.error,
                            permanent: n.permanent,
                        },
                    ),
                    _ => {
                        dispatcher.metrics.ignored_answers.inc();
                        tracing::debug!(conn, "ignored a message that is neither Ack nor Nack");
                        continue;
                    }
                };
                let Some(job) = parse_job_id(&job_id) else {
                    dispatcher.metrics.ignored_answers.inc();
                    tracing::debug!(conn, "ignored an answer with a malformed job id");
                    continue;
                };
                let permit = tokio::select! {
                    p = window.clone().acquire_owned() => match p {
                        Ok(p) => p,
                        Err(_) => break,
                    },
                    _ = reader_kick.cancelled() => break,
                };
                let ev = ConnectorEvent::Answer {
                    conn,
                    job,
                    answer,
                    permit,
                };
                if !dispatcher.send(ev) {
                    break;
                }
            }
            dispatcher.send(ConnectorEvent::Gone { conn });
        });
        // The stream ends when the dispatcher drops its sender (it stopped, or the
        // connector left) or ends it (the connector stalled: a lease expired unanswered).
        Ok(Response::new(Box::pin(Jobs {
            jobs: jobs_rx,
            kick: Box::pin(kick.cancelled_owned()),
            done: false,
            dispatcher: self.dispatcher.clone(),
        })))
    }
}

/// Answers of one stream that may wait in the dispatcher's queue beyond its credit.
const ANSWER_SLACK: usize = 64;

/// The jobs of one stream; after the dispatcher ended the stream, one UNAVAILABLE.
struct Jobs {
    jobs: mpsc::Receiver<Job>,
    kick: Pin<Box<WaitForCancellationFutureOwned>>,
    done: bool,
    /// Asked just before a job is written out: a node whose trust window closed since
    /// the job was handed out (its process stopped in between, say) must not send it.
    dispatcher: Dispatcher,
}

impl Stream for Jobs {
    type Item = Result<pb::DeliveryJob, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        if self.kick.as_mut().poll(cx).is_ready() {
            self.done = true;
            return Poll::Ready(Some(Err(Status::unavailable(
                "a lease of this connector expired unanswered; reconnect",
            ))));
        }
        loop {
            return match self.jobs.poll_recv(cx) {
                Poll::Ready(Some(j)) if !self.dispatcher.may_hand_out() => {
                    // Not sent: its lease runs out and the partitions' owner sends it.
                    tracing::warn!(
                        item = j.item.id,
                        "a job was not sent: the node's trust window closed"
                    );
                    continue;
                }
                Poll::Ready(Some(j)) => Poll::Ready(Some(Ok(job_to_pb(j)))),
                Poll::Ready(None) => {
                    self.done = true;
                    Poll::Ready(None)
                }
                Poll::Pending => Poll::Pending,
            };
        }
    }
}
