//! The `sendlater.v1.Scheduler` gRPC service: thin handlers that convert the request,
//! call the engine and convert the answer back.

use std::pin::Pin;

use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status};

use super::auth;
use super::convert::{self, ScheduleFields};
use super::streams::LiveStreams;
use crate::domain::{self, parse_item_id, Error, ItemId, Kind};
use crate::engine::{Changes, ControlChange, Engine, ListQuery, EVERY_ACCOUNT};
use crate::pb;

/// What a ScheduleBatch answer adds to each entry at most (item id, four times, the
/// states and enums, the message framing), bounded generously over what was measured
/// (BENCHMARKS.md, "Figures that explain the code").
const BATCH_ITEM_OVERHEAD: usize = 160;

/// The Scheduler service.
#[derive(Clone)]
pub struct SchedulerService {
    engine: Engine,
    /// Cancelled at shutdown: event streams end so the server can drain.
    shutdown: CancellationToken,
    /// The live WatchEvents streams (capped per caller and in all).
    watchers: LiveStreams,
}

impl SchedulerService {
    pub fn new(engine: Engine, shutdown: CancellationToken) -> Self {
        let watchers = LiveStreams::new(engine.limits().max_streams);
        Self {
            engine,
            shutdown,
            watchers,
        }
    }
}

/// Checks the caller's token against the account the request names, before any lookup.
fn authorize<T>(req: &Request<T>, account: &str) -> Result<(), Status> {
    let id = auth::identity(req)?;
    auth::check_account(&id, account)
}

/// GetItem, SendNow and Cancel: authorise, parse the reference, run `f`, answer the item.
async fn on_item<F, Fut>(
    req: Request<pb::ItemRef>,
    f: F,
) -> Result<Response<pb::ScheduledItem>, Status>
where
    F: FnOnce(String, ItemId) -> Fut,
    Fut: std::future::Future<Output = domain::Result<crate::domain::Item>>,
{
    authorize(&req, &req.get_ref().account_id)?;
    let r = req.into_inner();
    let (account, id) = item_ref(&r.account_id, &r.item_id)?;
    let item = f(account, id).await?;
    Ok(Response::new(item.into()))
}

fn item_ref(account: &str, item_id: &str) -> Result<(String, ItemId), Status> {
    domain::validate_id("account_id", account)?;
    let id = parse_item_id(item_id).ok_or_else(|| {
        if item_id.is_empty() {
            Status::from(Error::invalid("item_id", "is required"))
        } else {
            Status::not_found(format!("item {item_id} not found"))
        }
    })?;
    Ok((account.to_owned(), id))
}

type EventStream = Pin<Box<dyn tokio_stream::Stream<Item = Result<pb::ItemEvent, Status>> + Send>>;

/// Events read from the store per query while streaming, at most (fewer once events
/// are seen to be large: see [`EVENT_BYTES`]).
const EVENT_BATCH: usize = 512;

/// What one stream holds of events at once, in bytes (approximately): a batch read is
/// sized so that its events fit, and events beyond it wait in the table for the next
/// read; the channel to the transport holds [`EVENT_QUEUE`] more.
const EVENT_BYTES: usize = 4 * 1024 * 1024;

/// Events queued between a stream's reader and the transport.
const EVENT_QUEUE: usize = 16;

#[tonic::async_trait]
impl pb::scheduler_server::Scheduler for SchedulerService {
    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn schedule_message(
        &self,
        req: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::ScheduledItem>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let new = ScheduleFields::from(req.into_inner()).into_new_item(Kind::Reply)?;
        let item = self.engine.schedule(new).await?;
        Ok(Response::new(item.into()))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn schedule_ticket(
        &self,
        req: Request<pb::ScheduleRequest>,
    ) -> Result<Response<pb::ScheduledItem>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let new = ScheduleFields::from(req.into_inner()).into_new_item(Kind::NewTicket)?;
        let item = self.engine.schedule(new).await?;
        Ok(Response::new(item.into()))
    }

    #[tracing::instrument(skip_all, fields(entries = req.get_ref().entries.len()))]
    async fn schedule_batch(
        &self,
        req: Request<pb::ScheduleBatchRequest>,
    ) -> Result<Response<pb::ScheduleBatchResponse>, Status> {
        let id = auth::identity(&req)?;
        for e in &req.get_ref().entries {
            auth::check_account(&id, &e.account_id)?;
        }
        let entries = req.into_inner().entries;
        let max = self.engine.limits().max_batch_entries;
        if entries.len() > max {
            return Err(Status::from(Error::invalid(
                "entries",
                format!("has {} entries, at most {max} allowed", entries.len()),
            )));
        }
        // The answer echoes every entry with its id, times and states: refuse a batch
        // whose answer could not be sent in one message before anything is stored
        // (the items would commit and the caller would see only an error).
        let answer: usize = entries
            .iter()
            .map(|e| prost::Message::encoded_len(e) + BATCH_ITEM_OVERHEAD)
            .sum();
        let limit = self.engine.limits().effective_message_bytes();
        if answer > limit {
            return Err(Status::from(Error::invalid(
                "entries",
                format!(
                    "the answer would take about {answer} bytes, over the {limit}-byte message \
                     limit; send fewer entries per batch"
                ),
            )));
        }
        let mut batch = Vec::with_capacity(entries.len());
        for (i, e) in entries.into_iter().enumerate() {
            let prefix = format!("entries[{i}].");
            let (kind, fields) = convert::batch_entry(e).map_err(|e| e.in_field(&prefix))?;
            batch.push(
                fields
                    .into_new_item(kind)
                    .map_err(|e| e.in_field(&prefix))?,
            );
        }
        let items = self.engine.schedule_batch(batch).await?;
        Ok(Response::new(pb::ScheduleBatchResponse {
            items: items.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id, item = %req.get_ref().item_id))]
    async fn get_item(
        &self,
        req: Request<pb::ItemRef>,
    ) -> Result<Response<pb::ScheduledItem>, Status> {
        on_item(req, |account, id| self.engine.get(account, id)).await
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id, item = %req.get_ref().item_id))]
    async fn send_now(
        &self,
        req: Request<pb::ItemRef>,
    ) -> Result<Response<pb::ScheduledItem>, Status> {
        on_item(req, |account, id| self.engine.send_now(account, id)).await
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id, item = %req.get_ref().item_id))]
    async fn cancel(
        &self,
        req: Request<pb::ItemRef>,
    ) -> Result<Response<pb::ScheduledItem>, Status> {
        on_item(req, |account, id| self.engine.cancel(account, id)).await
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id, item = %req.get_ref().item_id))]
    async fn reschedule(
        &self,
        req: Request<pb::RescheduleRequest>,
    ) -> Result<Response<pb::ScheduledItem>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        let (account, id) = item_ref(&r.account_id, &r.item_id)?;
        let (send_at, send_at_local) = match (&r.send_at, &r.send_at_local) {
            (None, None) => (None, None),
            (t, l) => {
                let (at, local) = convert::send_time(t.as_ref(), l.as_ref())?;
                (Some(at), local)
            }
        };
        let changes = Changes {
            send_at,
            send_at_local,
            content: r.content.map(|c| match c {
                pb::reschedule_request::Content::Email(e) => convert::email(e),
                pb::reschedule_request::Content::Chat(c) => convert::chat(c),
            }),
            on_activity: convert::on_activity("on_activity", r.on_activity)?,
        };
        let item = self.engine.reschedule(account, id, changes).await?;
        Ok(Response::new(item.into()))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id, ticket = %req.get_ref().ticket_id))]
    async fn record_ticket_activity(
        &self,
        req: Request<pb::RecordTicketActivityRequest>,
    ) -> Result<Response<pb::RecordTicketActivityResponse>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        let activity = convert::activity(&r)?;
        let affected = self
            .engine
            .record_activity(r.account_id, r.ticket_id, activity)
            .await?;
        Ok(Response::new(pb::RecordTicketActivityResponse {
            affected: affected.into_iter().map(Into::into).collect(),
        }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn list_scheduled(
        &self,
        req: Request<pb::ListScheduledRequest>,
    ) -> Result<Response<pb::ListScheduledResponse>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        let q = ListQuery {
            state: convert::state("state", r.state)?,
            ticket_id: (!r.ticket_id.is_empty()).then_some(r.ticket_id),
            channel: convert::channel("channel", r.channel)?,
            author_id: (!r.author_id.is_empty()).then_some(r.author_id),
            kind: convert::kind("kind", r.kind)?,
            send_at_from: convert::optional_ms("send_at_from", r.send_at_from.as_ref())?,
            send_at_to: convert::optional_ms("send_at_to", r.send_at_to.as_ref())?,
            order: convert::order(r.order)?,
            page_size: r.page_size,
            page_token: r.page_token,
            account_id: r.account_id,
        };
        let page = self.engine.list(q).await?;
        Ok(Response::new(pb::ListScheduledResponse {
            items: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn list_deferred_tickets(
        &self,
        req: Request<pb::ListDeferredTicketsRequest>,
    ) -> Result<Response<pb::ListDeferredTicketsResponse>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        let order = convert::order(r.order)?;
        let page = self
            .engine
            .deferred_tickets(r.account_id, order, r.page_size, r.page_token)
            .await?;
        Ok(Response::new(pb::ListDeferredTicketsResponse {
            tickets: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id, ticket = %req.get_ref().ticket_id))]
    async fn get_ticket_timeline(
        &self,
        req: Request<pb::GetTicketTimelineRequest>,
    ) -> Result<Response<pb::GetTicketTimelineResponse>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        let audience = convert::audience(r.audience)?;
        let page = self
            .engine
            .timeline_page(
                r.account_id,
                r.ticket_id,
                audience,
                r.page_size,
                r.page_token,
            )
            .await?;
        Ok(Response::new(pb::GetTicketTimelineResponse {
            items: page.items.into_iter().map(Into::into).collect(),
            next_page_token: page.next_page_token,
        }))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn set_business_hours(
        &self,
        req: Request<pb::BusinessHours>,
    ) -> Result<Response<pb::BusinessHours>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        let hours = convert::business_hours(&r)?;
        let (hours, moved) = self
            .engine
            .set_business_hours(r.account_id.clone(), hours)
            .await?;
        tracing::info!(moved = moved.len(), "business hours set");
        Ok(Response::new(convert::business_hours_pb(
            r.account_id,
            &hours,
        )))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn get_business_hours(
        &self,
        req: Request<pb::GetBusinessHoursRequest>,
    ) -> Result<Response<pb::BusinessHours>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let account = req.into_inner().account_id;
        let hours = self.engine.business_hours(account.clone()).await?;
        Ok(Response::new(convert::business_hours_pb(account, &hours)))
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn pause_dispatch(
        &self,
        req: Request<pb::DispatchControlRequest>,
    ) -> Result<Response<pb::DispatchControls>, Status> {
        self.control(req, ControlChange::Pause).await
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn resume_dispatch(
        &self,
        req: Request<pb::DispatchControlRequest>,
    ) -> Result<Response<pb::DispatchControls>, Status> {
        self.control(req, ControlChange::Resume).await
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn set_rate_limit(
        &self,
        req: Request<pb::SetRateLimitRequest>,
    ) -> Result<Response<pb::DispatchControls>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        let per_minute = u32::try_from(r.per_minute).map_err(|_| {
            Status::from(Error::invalid(
                "per_minute",
                format!("must be 0 (no limit) .. {}, got {}", u32::MAX, r.per_minute),
            ))
        })?;
        self.change_controls(
            r.account_id,
            r.channel,
            ControlChange::RateLimit(per_minute),
        )
        .await
    }

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id))]
    async fn get_dispatch_controls(
        &self,
        req: Request<pb::GetDispatchControlsRequest>,
    ) -> Result<Response<pb::DispatchControls>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let account = req.into_inner().account_id;
        if account != EVERY_ACCOUNT {
            domain::validate_id("account_id", &account)?;
        }
        Ok(Response::new(convert::controls_pb(
            self.engine.controls_of(account),
        )))
    }

    type WatchEventsStream = EventStream;

    #[tracing::instrument(skip_all, fields(account = %req.get_ref().account_id, after = req.get_ref().after_sequence))]
    async fn watch_events(
        &self,
        req: Request<pb::WatchEventsRequest>,
    ) -> Result<Response<Self::WatchEventsStream>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        // The caller: its token, or (no tokens configured) its address.
        let caller = match auth::identity(&req)?.token_index {
            Some(i) => format!("token:{i}"),
            None => format!(
                "address:{}",
                req.remote_addr()
                    .map_or_else(String::new, |a| a.ip().to_string())
            ),
        };
        let r = req.into_inner();
        domain::validate_id("account_id", &r.account_id)?;
        let per_caller = self.engine.limits().max_streams_per_caller;
        let slot = self
            .watchers
            .try_open(&[(caller, per_caller)])
            .map_err(|full| Status::resource_exhausted(format!("WatchEvents: {full}")))?;
        // A sequence beyond the newest is clamped to it: the stream delivers what comes
        // next instead of waiting for a sequence that may never be reached. The
        // account's newest: another partition's sequences may be far above its own.
        let newest = self
            .engine
            .store()
            .newest_event(r.account_id.clone())
            .await?;
        let after = r.after_sequence.min(newest);
        let (tx, rx) = mpsc::channel(EVENT_QUEUE);
        let engine = self.engine.clone();
        let shutdown = self.shutdown.clone();
        tokio::spawn(async move {
            let _slot = slot;
            stream_events(engine, r.account_id, after, tx, shutdown).await;
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

impl SchedulerService {
    /// PauseDispatch / ResumeDispatch.
    async fn control(
        &self,
        req: Request<pb::DispatchControlRequest>,
        change: ControlChange,
    ) -> Result<Response<pb::DispatchControls>, Status> {
        authorize(&req, &req.get_ref().account_id)?;
        let r = req.into_inner();
        self.change_controls(r.account_id, r.channel, change).await
    }

    /// A control change on the request's channel (UNSPECIFIED: every channel), answered
    /// with the account's controls in force.
    async fn change_controls(
        &self,
        account: String,
        channel: i32,
        change: ControlChange,
    ) -> Result<Response<pb::DispatchControls>, Status> {
        let channels = convert::channels("channel", channel)?;
        let c = self
            .engine
            .change_controls(account, channels, change)
            .await?;
        Ok(Response::new(convert::controls_pb(c)))
    }
}

/// Streams the backlog after `after`, then live events, with no gap and no duplicate
/// at the switch-over: there is no switch-over. Every event is read from the table by
/// sequence; the commit notification only says "read again". A notification that comes
/// while reading is kept (`borrow_and_update` before the read), so nothing is missed.
async fn stream_events(
    engine: Engine,
    account: String,
    mut after: u64,
    tx: mpsc::Sender<Result<pb::ItemEvent, Status>>,
    shutdown: CancellationToken,
) {
    let mut seq = engine.store().event_sequence();
    let mut limit = EVENT_BATCH.min(16);
    loop {
        seq.borrow_and_update();
        let mut batch = match engine
            .events_after(Some(account.clone()), after, limit)
            .await
        {
            Ok(b) => b,
            Err(e) => {
                let _ = tx.send(Err(e.into())).await;
                return;
            }
        };
        let mut full = batch.len() == limit;
        // Bounded in bytes: keep what fits (at least one), read the rest next time, and
        // size the next read by what these weighed.
        let mut bytes = 0usize;
        let fits = batch
            .iter()
            .position(|ev| {
                bytes = bytes.saturating_add(ev.item.approx_wire_bytes());
                bytes > EVENT_BYTES
            })
            .map_or(batch.len(), |at| at.max(1));
        if fits < batch.len() {
            batch.truncate(fits);
            full = true;
        }
        if !batch.is_empty() {
            let per_event = (bytes / batch.len()).max(1);
            limit = (EVENT_BYTES / per_event).clamp(1, EVENT_BATCH);
        }
        for ev in batch {
            after = ev.sequence;
            if tx.send(Ok(ev.into())).await.is_err() {
                return; // the client left
            }
        }
        if full {
            continue;
        }
        tokio::select! {
            changed = seq.changed() => if changed.is_err() { return },
            _ = tx.closed() => return,
            _ = shutdown.cancelled() => {
                let _ = tx.send(Err(Status::unavailable("server shutting down; resume with after_sequence"))).await;
                return;
            }
        }
    }
}
