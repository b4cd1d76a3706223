//! The `sendlater.v1.Dispatch` gRPC service: one bidirectional stream per connector.
//! The first message must be Hello; then the server streams DeliveryJobs and the
//! connector answers Ack/Nack. The stream tasks only translate; the dispatcher actor
//! decides.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::{Stream, StreamExt};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use super::auth;
use super::convert::{self, status};
use crate::dispatch::{parse_job_id, ConnectorEvent, Dispatcher, Job};
use crate::domain::{Channel, Error};
use crate::pb;

/// max_in_flight bounds (API.md).
const MAX_IN_FLIGHT: u32 = 10_000;

/// The Dispatch service.
#[derive(Clone)]
pub struct DispatchService {
    dispatcher: Dispatcher,
    shutdown: CancellationToken,
}

impl DispatchService {
    pub fn new(dispatcher: Dispatcher, shutdown: CancellationToken) -> Self {
        Self {
            dispatcher,
            shutdown,
        }
    }
}

type JobStream = Pin<Box<dyn Stream<Item = Result<pb::DeliveryJob, Status>> + Send>>;

fn hello_channels(h: &pb::Hello) -> Result<Vec<Channel>, Status> {
    if h.channels.is_empty() {
        return Err(status(Error::invalid(
            "hello.channels",
            "name at least one channel",
        )));
    }
    let mut out = Vec::new();
    for (i, &c) in h.channels.iter().enumerate() {
        let ch = convert::channel(&format!("hello.channels[{i}]"), c)
            .map_err(status)?
            .ok_or_else(|| {
                status(Error::invalid(
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
                return Err(status(Error::invalid(
                    "hello",
                    "the first message on the stream must be Hello",
                )))
            }
        };
        let channels = hello_channels(&hello)?;
        if !(1..=MAX_IN_FLIGHT).contains(&hello.max_in_flight) {
            return Err(status(Error::invalid(
                "hello.max_in_flight",
                format!("must be 1..{MAX_IN_FLIGHT}, got {}", hello.max_in_flight),
            )));
        }
        if hello.connector_id.is_empty() {
            return Err(status(Error::invalid("hello.connector_id", "is required")));
        }
        let conn = self.dispatcher.next_conn();
        let (jobs_tx, jobs_rx) = mpsc::channel::<Job>(hello.max_in_flight as usize);
        if !self.dispatcher.send(ConnectorEvent::Hello {
            conn,
            connector_id: hello.connector_id.clone(),
            channels,
            accounts: identity.accounts.clone(),
            max_in_flight: hello.max_in_flight as usize,
            jobs: jobs_tx,
        }) {
            return Err(Status::unavailable("server shutting down"));
        }
        // Reader: answers from the connector; its end (or error) means the stream is gone.
        let dispatcher = self.dispatcher.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            loop {
                let msg = tokio::select! {
                    m = inbound.message() => m,
                    _ = shutdown.cancelled() => break,
                };
                let Ok(Some(msg)) = msg else { break };
                let ev = match msg.msg {
                    Some(pb::connector_message::Msg::Ack(a)) => {
                        parse_job_id(&a.job_id).map(|job| ConnectorEvent::Ack {
                            conn,
                            job,
                            provider_message_id: a.provider_message_id,
                        })
                    }
                    Some(pb::connector_message::Msg::Nack(n)) => {
                        parse_job_id(&n.job_id).map(|job| ConnectorEvent::Nack {
                            conn,
                            job,
                            error: n.error,
                            permanent: n.permanent,
                        })
                    }
                    _ => None,
                };
                match ev {
                    Some(ev) => {
                        if !dispatcher.send(ev) {
                            break;
                        }
                    }
                    None => tracing::warn!(conn, "ignored a malformed message from a connector"),
                }
            }
            dispatcher.send(ConnectorEvent::Gone { conn });
        });
        // The stream ends when the dispatcher drops its sender: at shutdown, or when
        // the connector left.
        let jobs = tokio_stream::wrappers::ReceiverStream::new(jobs_rx).map(|j| Ok(job_to_pb(j)));
        Ok(Response::new(Box::pin(jobs)))
    }
}
