//! Runs a client subcommand's [`Action`] against the server and prints the answer.
//!
//! One connection per invocation; the token, when given, goes with every request as
//! `authorization: Bearer TOKEN`. Output goes to stdout (a table, or `--json`); notes
//! such as "more pages" and "nothing found" go to stderr so stdout stays clean for pipes.
//! A connection that cannot be made is [`CliError::Unreachable`] (exit 69); an error
//! status from the server is [`CliError::Status`]. A missing business-hours setup
//! (GetBusinessHours NOT_FOUND, or a BUSINESS_HOURS schedule refused) says which command
//! sets the hours.

use std::io::Write;
use std::time::Duration;

use chrono::{DateTime, Utc};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use super::config::{replace_text, Action, ClientConfig, ClusterConfig, SettingsAction};
use super::error::{error_chain, CliError, Result};
use super::{hours, json, output, settings, signal, timestamp};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::scheduler_client::SchedulerClient;

/// How long to try to reach the server before giving up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// A connected client that adds the authorization header to each request.
struct Client {
    inner: SchedulerClient<Channel>,
    config: ClientConfig,
}

impl Client {
    async fn connect(config: &ClientConfig) -> Result<Self> {
        Ok(Self {
            inner: SchedulerClient::new(open_channel(&config.server).await?),
            config: config.clone(),
        })
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        if let Some(value) = &self.config.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        request
    }
}

/// A connection to `server` (a validated `--server`).
async fn open_channel(server: &str) -> Result<Channel> {
    Endpoint::from_shared(server.to_owned())
        .map_err(|e| CliError::Config(format!("--server {server:?}: {e}")))?
        .connect_timeout(CONNECT_TIMEOUT)
        .connect()
        .await
        .map_err(|e| CliError::Unreachable {
            server: server.to_owned(),
            reason: error_chain(&e),
        })
}

/// `sendlater cluster`: asks GetClusterStatus and prints the nodes and the partitions.
///
/// # Errors
/// As [`run`].
pub async fn cluster(config: &ClusterConfig) -> Result<()> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut printer = Printer {
        out: &mut stdout,
        notes: &mut stderr,
    };
    cluster_with(config, &mut printer).await
}

/// [`cluster`] with the output going to `printer`.
///
/// # Errors
/// As [`run`].
pub async fn cluster_with(config: &ClusterConfig, printer: &mut Printer<'_>) -> Result<()> {
    let mut client = ClusterClient::new(open_channel(&config.server).await?);
    let mut request = tonic::Request::new(pb::GetClusterStatusRequest {});
    if let Some(value) = &config.authorization {
        request
            .metadata_mut()
            .insert("authorization", value.clone());
    }
    let status = client.get_cluster_status(request).await?.into_inner();
    if config.json {
        return printer.json(&json::cluster(&status));
    }
    printer.print(&output::cluster_text(&status, config.tz))
}

/// Where output goes: the answer to `out` (stdout), remarks to `notes` (stderr).
pub struct Printer<'a> {
    pub out: &'a mut (dyn Write + Send),
    pub notes: &'a mut (dyn Write + Send),
}

impl Printer<'_> {
    /// Writes and flushes (so `watch` lines appear at once).
    fn print(&mut self, text: &str) -> Result<()> {
        self.out
            .write_all(text.as_bytes())
            .and_then(|()| self.out.flush())
            .map_err(CliError::output)
    }

    /// A remark for the person at the terminal.
    fn note(&mut self, text: &str) -> Result<()> {
        writeln!(self.notes, "{text}").map_err(CliError::output)
    }

    fn json(&mut self, value: &serde_json::Value) -> Result<()> {
        let text = serde_json::to_string_pretty(value)
            .map_err(|e| CliError::Protocol(format!("cannot encode JSON: {e}")))?;
        self.print(&format!("{text}\n"))
    }

    fn item(&mut self, config: &ClientConfig, item: &pb::ScheduledItem) -> Result<()> {
        if config.json {
            self.json(&json::item(item))
        } else {
            self.print(&output::item_detail(item, config.tz))
        }
    }

    fn hours(&mut self, config: &ClientConfig, hours: &pb::BusinessHours) -> Result<()> {
        if config.json {
            self.json(&settings::hours_json(hours))
        } else {
            self.print(&settings::hours_text(hours))
        }
    }

    fn controls(&mut self, config: &ClientConfig, controls: &pb::DispatchControls) -> Result<()> {
        if config.json {
            self.json(&settings::controls_json(controls))
        } else {
            self.print(&settings::controls_text(controls))
        }
    }
}

/// How to set business hours, appended to errors about their absence.
const SET_HOURS_HINT: &str =
    "set them with `sendlater hours set --tz ZONE --day \"1-5 09:00-18:00\"`";

/// The account's business hours; NOT_FOUND says how to set them.
async fn business_hours(client: &mut Client, account: &str) -> Result<pb::BusinessHours> {
    let request = client.request(pb::GetBusinessHoursRequest {
        account_id: account.to_owned(),
    });
    match client.inner.get_business_hours(request).await {
        Ok(response) => Ok(response.into_inner()),
        Err(status) if status.code() == Code::NotFound => Err(CliError::from(Status::not_found(
            format!("account {account:?} has no business hours; {SET_HOURS_HINT}"),
        ))),
        Err(status) => Err(status.into()),
    }
}

/// The send time of `--at "next business morning"`: the next opening of the account's
/// hours strictly after `after`.
async fn next_opening(
    client: &mut Client,
    account: &str,
    after: DateTime<Utc>,
) -> Result<prost_types::Timestamp> {
    let hours = business_hours(client, account).await?;
    hours::next_business_morning(&hours, after).map(timestamp::to_pb)
}

/// A schedule or reschedule refused because the account has no business hours gets the
/// hint of how to set them; other statuses pass unchanged.
fn with_hours_hint(status: Status) -> CliError {
    let no_hours = status.code() == Code::FailedPrecondition
        && status.message().starts_with("delivery_window:")
        && status.message().contains("no business hours");
    if no_hours {
        let message = format!("{} ({SET_HOURS_HINT})", status.message());
        return CliError::from(Status::failed_precondition(message));
    }
    status.into()
}

/// Connects, runs `action`, prints the result to stdout and remarks to stderr.
///
/// # Errors
/// The server is unreachable, answers with an error status, or stdout is closed.
pub async fn run(config: &ClientConfig, action: Action) -> Result<()> {
    let mut stdout = std::io::stdout();
    let mut stderr = std::io::stderr();
    let mut printer = Printer {
        out: &mut stdout,
        notes: &mut stderr,
    };
    run_with(config, action, &mut printer).await
}

/// [`run`] with the output going to `printer`.
///
/// # Errors
/// As [`run`].
pub async fn run_with(
    config: &ClientConfig,
    action: Action,
    printer: &mut Printer<'_>,
) -> Result<()> {
    let mut client = Client::connect(config).await?;
    let tz = config.tz;
    match action {
        Action::Schedule {
            kind,
            mut request,
            next_opening_after,
        } => {
            if let Some(after) = next_opening_after {
                let account = request.account_id.clone();
                request.send_at = Some(next_opening(&mut client, &account, after).await?);
            }
            let request = client.request(request);
            let item = match kind {
                pb::Kind::NewTicket => client.inner.schedule_ticket(request).await,
                _ => client.inner.schedule_message(request).await,
            }
            .map_err(with_hours_hint)?
            .into_inner();
            printer.item(config, &item)
        }
        Action::Get(item_ref) => {
            let item = client
                .inner
                .get_item(client.request(item_ref))
                .await?
                .into_inner();
            printer.item(config, &item)
        }
        Action::SendNow(item_ref) => {
            let item = client
                .inner
                .send_now(client.request(item_ref))
                .await?
                .into_inner();
            printer.item(config, &item)
        }
        Action::Cancel(item_ref) => {
            let item = client
                .inner
                .cancel(client.request(item_ref))
                .await?
                .into_inner();
            printer.item(config, &item)
        }
        Action::Reschedule {
            mut request,
            new_text,
            next_opening_after,
        } => {
            if let Some(after) = next_opening_after {
                let account = request.account_id.clone();
                request.send_at = Some(next_opening(&mut client, &account, after).await?);
            }
            if let Some(text) = new_text {
                // The API replaces content as a whole: start from the item's own content
                // so only the text changes.
                let current = client
                    .inner
                    .get_item(client.request(pb::ItemRef {
                        account_id: request.account_id.clone(),
                        item_id: request.item_id.clone(),
                    }))
                    .await?
                    .into_inner();
                request.content = Some(replace_text(&current, &text)?);
            }
            let item = client
                .inner
                .reschedule(client.request(request))
                .await
                .map_err(with_hours_hint)?
                .into_inner();
            printer.item(config, &item)
        }
        Action::List { mut request, all } => {
            let mut items = Vec::new();
            let next = loop {
                let page = client
                    .inner
                    .list_scheduled(client.request(request.clone()))
                    .await?
                    .into_inner();
                items.extend(page.items);
                if !all || page.next_page_token.is_empty() {
                    break page.next_page_token;
                }
                if page.next_page_token == request.page_token {
                    return Err(CliError::Protocol(
                        "the server returned the same page token twice".to_owned(),
                    ));
                }
                request.page_token = page.next_page_token;
            };
            if config.json {
                return printer.json(&json::items(&items, Some(&next)));
            }
            if items.is_empty() {
                printer.note("no items match")?;
            } else {
                printer.print(&output::items_table(&items, tz))?;
            }
            if !next.is_empty() {
                printer.note(&format!("more items: --page-token {next} (or --all)"))?;
            }
            Ok(())
        }
        Action::Tickets(request) => {
            let page = client
                .inner
                .list_deferred_tickets(client.request(request))
                .await?
                .into_inner();
            if config.json {
                return printer.json(&json::tickets(&page));
            }
            if page.tickets.is_empty() {
                printer.note("no tickets with deferred items")?;
            } else {
                printer.print(&output::tickets_table(&page.tickets, tz))?;
            }
            if !page.next_page_token.is_empty() {
                printer.note(&format!(
                    "more tickets: --page-token {}",
                    page.next_page_token
                ))?;
            }
            Ok(())
        }
        Action::Timeline(request) => {
            // Every page, in order (the server pages long timelines).
            let mut request = request;
            let mut items = Vec::new();
            loop {
                let page = client
                    .inner
                    .get_ticket_timeline(client.request(request.clone()))
                    .await?
                    .into_inner();
                items.extend(page.items);
                if page.next_page_token.is_empty() || page.next_page_token == request.page_token {
                    break;
                }
                request.page_token = page.next_page_token;
            }
            if config.json {
                return printer.json(&json::items(&items, None));
            }
            if items.is_empty() {
                return printer.note("the timeline is empty");
            }
            printer.print(&output::items_table(&items, tz))
        }
        Action::Activity(request) => {
            let affected = client
                .inner
                .record_ticket_activity(client.request(request))
                .await?
                .into_inner()
                .affected;
            if config.json {
                return printer.json(&json::affected(&affected));
            }
            if affected.is_empty() {
                return printer.note("no pending reply was affected");
            }
            printer.print(&output::items_table(&affected, tz))
        }
        Action::Watch(request) => watch(&mut client, request, printer).await,
        Action::Settings(action) => settings(&mut client, config, action, printer).await,
    }
}

/// Runs a settings request and prints the hours or controls the server answered with.
async fn settings(
    client: &mut Client,
    config: &ClientConfig,
    action: SettingsAction,
    printer: &mut Printer<'_>,
) -> Result<()> {
    let controls = match action {
        SettingsAction::HoursGet(request) => {
            let hours = business_hours(client, &request.account_id).await?;
            return printer.hours(config, &hours);
        }
        SettingsAction::HoursSet(request) => {
            let request = client.request(request);
            let hours = client.inner.set_business_hours(request).await?.into_inner();
            return printer.hours(config, &hours);
        }
        SettingsAction::Pause(request) => {
            let request = client.request(request);
            client.inner.pause_dispatch(request).await?
        }
        SettingsAction::Resume(request) => {
            let request = client.request(request);
            client.inner.resume_dispatch(request).await?
        }
        SettingsAction::RateLimit(request) => {
            let request = client.request(request);
            client.inner.set_rate_limit(request).await?
        }
        SettingsAction::Controls(request) => {
            let request = client.request(request);
            client.inner.get_dispatch_controls(request).await?
        }
    };
    printer.controls(config, &controls.into_inner())
}

/// Prints events until the server ends the stream or the user presses Ctrl-C.
async fn watch(
    client: &mut Client,
    request: pb::WatchEventsRequest,
    printer: &mut Printer<'_>,
) -> Result<()> {
    let request = client.request(request);
    let mut stream = client.inner.watch_events(request).await?.into_inner();
    let stop = signal::shutdown();
    tokio::pin!(stop);
    loop {
        tokio::select! {
            stopped = &mut stop => {
                return stopped.map_err(|source| CliError::Io {
                    context: "cannot install signal handlers",
                    source,
                });
            }
            message = stream.message() => {
                let Some(event) = message? else {
                    return printer.note("the server ended the event stream");
                };
                let line = if client.config.json {
                    json::event(&event).to_string()
                } else {
                    output::event_line(&event, client.config.tz)
                };
                printer.print(&format!("{line}\n"))?;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::pin::Pin;
    use std::sync::{Arc, Mutex};

    use tokio::sync::oneshot;
    use tonic::{Request, Response, Status};

    use super::*;
    use crate::pb::scheduler_server::{Scheduler, SchedulerServer};

    /// What the fake server saw and what it answers with.
    #[derive(Default)]
    struct State {
        /// "method page_token authorization" per call.
        calls: Mutex<Vec<String>>,
        /// The last Reschedule request.
        rescheduled: Mutex<Option<pb::RescheduleRequest>>,
        /// The last ScheduleMessage request.
        scheduled: Mutex<Option<pb::ScheduleRequest>>,
        /// The last pause, resume or rate-limit request, as "method channel per_minute".
        control: Mutex<Option<String>>,
    }

    /// A Scheduler that answers from fixed data, just enough to drive the client.
    struct Fake(Arc<State>);

    type Reply<T> = std::result::Result<Response<T>, Status>;

    impl Fake {
        fn record<T>(&self, method: &str, detail: &str, request: &Request<T>) {
            let auth = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok())
                .unwrap_or("-")
                .to_owned();
            self.0
                .calls
                .lock()
                .unwrap()
                .push(format!("{method} {detail} {auth}"));
        }
    }

    impl Fake {
        /// Records a control call and answers with fixed controls.
        fn control(&self, call: String) -> Reply<pb::DispatchControls> {
            *self.0.control.lock().unwrap() = Some(call);
            Ok(Response::new(pb::DispatchControls {
                account_id: "acme".into(),
                paused_channels: vec![pb::Channel::Email as i32],
                rate_limits: vec![pb::RateLimit {
                    channel: pb::Channel::Chat as i32,
                    per_minute: 60,
                }],
            }))
        }
    }

    /// Monday to Friday 09:00-18:00 in Moscow.
    fn moscow_hours(account: &str) -> pb::BusinessHours {
        pb::BusinessHours {
            account_id: account.into(),
            time_zone: "Europe/Moscow".into(),
            days: (1..=5)
                .map(|weekday| pb::BusinessDay {
                    weekday,
                    open: "09:00".into(),
                    close: "18:00".into(),
                })
                .collect(),
            holidays: vec![],
        }
    }

    fn stored_item(item_id: &str) -> pb::ScheduledItem {
        pb::ScheduledItem {
            item_id: item_id.into(),
            account_id: "acme".into(),
            ticket_id: "T-1".into(),
            kind: pb::Kind::Reply as i32,
            channel: pb::Channel::Email as i32,
            state: pb::State::Pending as i32,
            content: Some(pb::scheduled_item::Content::Email(pb::EmailContent {
                to: vec!["c@x.test".into()],
                subject: "S".into(),
                text_body: "old".into(),
                html_body: "<p>old</p>".into(),
                ..Default::default()
            })),
            send_at: Some(prost_types::Timestamp {
                seconds: 1_795_672_800,
                nanos: 0,
            }),
            ..Default::default()
        }
    }

    #[tonic::async_trait]
    impl Scheduler for Fake {
        async fn schedule_message(
            &self,
            r: Request<pb::ScheduleRequest>,
        ) -> Reply<pb::ScheduledItem> {
            self.record("schedule_message", "", &r);
            let request = r.into_inner();
            if request.account_id == "no-hours" {
                return Err(Status::failed_precondition(
                    "delivery_window: account \"no-hours\" has no business hours; set them \
                     with SetBusinessHours first",
                ));
            }
            let mut item = stored_item("new-1");
            item.ticket_id = request.ticket_id.clone();
            *self.0.scheduled.lock().unwrap() = Some(request);
            Ok(Response::new(item))
        }
        async fn schedule_ticket(
            &self,
            r: Request<pb::ScheduleRequest>,
        ) -> Reply<pb::ScheduledItem> {
            self.record("schedule_ticket", "", &r);
            Err(Status::already_exists(
                "request_id: used with other content",
            ))
        }
        async fn schedule_batch(
            &self,
            _: Request<pb::ScheduleBatchRequest>,
        ) -> Reply<pb::ScheduleBatchResponse> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_item(&self, r: Request<pb::ItemRef>) -> Reply<pb::ScheduledItem> {
            self.record("get_item", &r.get_ref().item_id.clone(), &r);
            match r.get_ref().item_id.as_str() {
                "missing" => Err(Status::not_found("no such item")),
                id => Ok(Response::new(stored_item(id))),
            }
        }
        async fn send_now(&self, _: Request<pb::ItemRef>) -> Reply<pb::ScheduledItem> {
            Err(Status::unimplemented("fake"))
        }
        async fn cancel(&self, _: Request<pb::ItemRef>) -> Reply<pb::ScheduledItem> {
            Err(Status::unimplemented("fake"))
        }
        async fn reschedule(&self, r: Request<pb::RescheduleRequest>) -> Reply<pb::ScheduledItem> {
            self.record("reschedule", &r.get_ref().item_id.clone(), &r);
            let request = r.into_inner();
            let item = stored_item(&request.item_id);
            *self.0.rescheduled.lock().unwrap() = Some(request);
            Ok(Response::new(item))
        }
        async fn record_ticket_activity(
            &self,
            _: Request<pb::RecordTicketActivityRequest>,
        ) -> Reply<pb::RecordTicketActivityResponse> {
            Err(Status::unimplemented("fake"))
        }
        async fn list_scheduled(
            &self,
            r: Request<pb::ListScheduledRequest>,
        ) -> Reply<pb::ListScheduledResponse> {
            self.record("list_scheduled", &r.get_ref().page_token.clone(), &r);
            let (items, next) = match r.get_ref().page_token.as_str() {
                "" => (vec![stored_item("it-a")], "p2"),
                "p2" => (vec![stored_item("it-b")], ""),
                _ => return Err(Status::invalid_argument("page_token: unknown")),
            };
            Ok(Response::new(pb::ListScheduledResponse {
                items,
                next_page_token: next.into(),
            }))
        }
        async fn list_deferred_tickets(
            &self,
            _: Request<pb::ListDeferredTicketsRequest>,
        ) -> Reply<pb::ListDeferredTicketsResponse> {
            Err(Status::unimplemented("fake"))
        }
        async fn get_ticket_timeline(
            &self,
            _: Request<pb::GetTicketTimelineRequest>,
        ) -> Reply<pb::GetTicketTimelineResponse> {
            Err(Status::unimplemented("fake"))
        }
        type WatchEventsStream = Pin<
            Box<dyn tokio_stream::Stream<Item = std::result::Result<pb::ItemEvent, Status>> + Send>,
        >;
        async fn watch_events(
            &self,
            _: Request<pb::WatchEventsRequest>,
        ) -> Reply<Self::WatchEventsStream> {
            Err(Status::unimplemented("fake"))
        }
        async fn set_business_hours(
            &self,
            r: Request<pb::BusinessHours>,
        ) -> Reply<pb::BusinessHours> {
            self.record("set_business_hours", &r.get_ref().account_id.clone(), &r);
            Ok(Response::new(r.into_inner()))
        }
        async fn get_business_hours(
            &self,
            r: Request<pb::GetBusinessHoursRequest>,
        ) -> Reply<pb::BusinessHours> {
            self.record("get_business_hours", &r.get_ref().account_id.clone(), &r);
            match r.get_ref().account_id.as_str() {
                "no-hours" => Err(Status::not_found("no business hours")),
                account => Ok(Response::new(moscow_hours(account))),
            }
        }
        async fn pause_dispatch(
            &self,
            r: Request<pb::DispatchControlRequest>,
        ) -> Reply<pb::DispatchControls> {
            self.control(format!("pause {}", r.get_ref().channel))
        }
        async fn resume_dispatch(
            &self,
            r: Request<pb::DispatchControlRequest>,
        ) -> Reply<pb::DispatchControls> {
            self.control(format!("resume {}", r.get_ref().channel))
        }
        async fn set_rate_limit(
            &self,
            r: Request<pb::SetRateLimitRequest>,
        ) -> Reply<pb::DispatchControls> {
            let r = r.get_ref();
            self.control(format!("rate_limit {} {}", r.channel, r.per_minute))
        }
        async fn get_dispatch_controls(
            &self,
            _: Request<pb::GetDispatchControlsRequest>,
        ) -> Reply<pb::DispatchControls> {
            self.control("controls".into())
        }
    }

    /// A fake server on a free loopback port; send on the returned sender to stop it.
    async fn start_fake() -> (String, Arc<State>, oneshot::Sender<()>) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", listener.local_addr().unwrap());
        let state = Arc::new(State::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let service = SchedulerServer::new(Fake(state.clone()));
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(service)
                .serve_with_incoming_shutdown(
                    tokio_stream::wrappers::TcpListenerStream::new(listener),
                    async {
                        let _ = stopped.await;
                    },
                ),
        );
        (url, state, stop)
    }

    fn config(server: &str, json: bool) -> ClientConfig {
        ClientConfig {
            server: server.to_owned(),
            authorization: Some("Bearer t0k".parse().unwrap()),
            account: "acme".into(),
            json,
            tz: chrono_tz::UTC,
            tz_given: false,
        }
    }

    /// Runs `action`, returning (stdout, stderr, result).
    async fn run_captured(config: &ClientConfig, action: Action) -> (String, String, Result<()>) {
        let mut out = Vec::new();
        let mut notes = Vec::new();
        let result = run_with(
            config,
            action,
            &mut Printer {
                out: &mut out,
                notes: &mut notes,
            },
        )
        .await;
        (
            String::from_utf8(out).unwrap(),
            String::from_utf8(notes).unwrap(),
            result,
        )
    }

    #[tokio::test]
    async fn list_all_follows_page_tokens_and_sends_the_bearer_token_each_time() {
        let (url, state, stop) = start_fake().await;
        let action = Action::List {
            request: pb::ListScheduledRequest {
                account_id: "acme".into(),
                ..Default::default()
            },
            all: true,
        };
        let (out, notes, result) = run_captured(&config(&url, false), action).await;
        result.unwrap();
        assert!(out.starts_with("ITEM "), "{out}");
        assert!(out.contains("\nit-a ") && out.contains("\nit-b "), "{out}");
        assert_eq!(notes, "");
        assert_eq!(
            *state.calls.lock().unwrap(),
            ["list_scheduled  Bearer t0k", "list_scheduled p2 Bearer t0k"]
        );
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn a_single_page_mentions_the_next_page_token_on_stderr() {
        let (url, _state, stop) = start_fake().await;
        let action = Action::List {
            request: pb::ListScheduledRequest::default(),
            all: false,
        };
        let (out, notes, result) = run_captured(&config(&url, false), action).await;
        result.unwrap();
        assert!(out.contains("it-a") && !out.contains("it-b"), "{out}");
        assert!(notes.contains("--page-token p2"), "{notes}");
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn reschedule_with_text_fetches_the_item_and_keeps_its_other_content() {
        let (url, state, stop) = start_fake().await;
        let action = Action::Reschedule {
            request: pb::RescheduleRequest {
                account_id: "acme".into(),
                item_id: "it-9".into(),
                ..Default::default()
            },
            new_text: Some("new".into()),
            next_opening_after: None,
        };
        let (_out, _notes, result) = run_captured(&config(&url, false), action).await;
        result.unwrap();
        assert_eq!(
            *state.calls.lock().unwrap(),
            ["get_item it-9 Bearer t0k", "reschedule it-9 Bearer t0k"]
        );
        let sent = state.rescheduled.lock().unwrap().clone().unwrap();
        let Some(pb::reschedule_request::Content::Email(email)) = sent.content else {
            panic!("no email content sent: {sent:?}");
        };
        assert_eq!(email.text_body, "new");
        assert_eq!(email.subject, "S");
        assert_eq!(email.html_body, "<p>old</p>");
        assert_eq!(email.to, ["c@x.test"]);
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn schedule_with_json_prints_the_item_as_json() {
        let (url, _state, stop) = start_fake().await;
        let action = Action::Schedule {
            kind: pb::Kind::Reply,
            request: pb::ScheduleRequest {
                ticket_id: "T-5".into(),
                ..Default::default()
            },
            next_opening_after: None,
        };
        let (out, _notes, result) = run_captured(&config(&url, true), action).await;
        result.unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["item_id"], "new-1");
        assert_eq!(value["ticket_id"], "T-5");
        assert_eq!(value["state"], "PENDING");
        assert_eq!(value["send_at"], "2026-11-26T06:00:00Z");
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn server_errors_keep_their_grpc_code_and_message() {
        let (url, _state, stop) = start_fake().await;
        let get = Action::Get(pb::ItemRef {
            account_id: "acme".into(),
            item_id: "missing".into(),
        });
        let (out, _notes, result) = run_captured(&config(&url, false), get).await;
        let err = result.unwrap_err();
        assert_eq!(err.to_string(), "NOT_FOUND: no such item");
        assert_eq!(err.exit_code(), 1);
        assert_eq!(out, "");

        let ticket = Action::Schedule {
            kind: pb::Kind::NewTicket,
            request: pb::ScheduleRequest::default(),
            next_opening_after: None,
        };
        let (_out, _notes, result) = run_captured(&config(&url, false), ticket).await;
        assert_eq!(
            result.unwrap_err().to_string(),
            "ALREADY_EXISTS: request_id: used with other content"
        );
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn next_business_morning_fetches_the_hours_and_sends_their_next_opening() {
        let (url, state, stop) = start_fake().await;
        // Friday 2026-11-27 20:00 in Moscow: the next opening is Monday 09:00 (06:00Z).
        let friday_evening = DateTime::parse_from_rfc3339("2026-11-27T17:00:00Z")
            .unwrap()
            .with_timezone(&Utc);
        let action = Action::Schedule {
            kind: pb::Kind::Reply,
            request: pb::ScheduleRequest {
                account_id: "acme".into(),
                delivery_window: pb::DeliveryWindow::BusinessHours as i32,
                ..Default::default()
            },
            next_opening_after: Some(friday_evening),
        };
        let (_out, _notes, result) = run_captured(&config(&url, false), action).await;
        result.unwrap();
        assert_eq!(
            *state.calls.lock().unwrap(),
            [
                "get_business_hours acme Bearer t0k",
                "schedule_message  Bearer t0k"
            ]
        );
        let sent = state.scheduled.lock().unwrap().clone().unwrap();
        assert_eq!(
            sent.send_at
                .as_ref()
                .and_then(timestamp::rfc3339_utc)
                .as_deref(),
            Some("2026-11-30T06:00:00Z")
        );
        assert_eq!(sent.send_at_local, None);
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn missing_business_hours_say_which_command_sets_them() {
        let (url, _state, stop) = start_fake().await;
        let get = Action::Settings(SettingsAction::HoursGet(pb::GetBusinessHoursRequest {
            account_id: "no-hours".into(),
        }));
        let (out, _notes, result) = run_captured(&config(&url, false), get).await;
        let message = result.unwrap_err().to_string();
        assert!(
            message.starts_with("NOT_FOUND: account \"no-hours\""),
            "{message}"
        );
        assert!(message.contains("sendlater hours set --tz"), "{message}");
        assert_eq!(out, "");

        let morning = Action::Schedule {
            kind: pb::Kind::Reply,
            request: pb::ScheduleRequest {
                account_id: "no-hours".into(),
                ..Default::default()
            },
            next_opening_after: Some(Utc::now()),
        };
        let (_out, _notes, result) = run_captured(&config(&url, false), morning).await;
        let message = result.unwrap_err().to_string();
        assert!(message.contains("sendlater hours set"), "{message}");

        let business = Action::Schedule {
            kind: pb::Kind::Reply,
            request: pb::ScheduleRequest {
                account_id: "no-hours".into(),
                ..Default::default()
            },
            next_opening_after: None,
        };
        let (_out, _notes, result) = run_captured(&config(&url, false), business).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 1);
        let message = err.to_string();
        assert!(
            message.starts_with("FAILED_PRECONDITION: delivery_window:"),
            "{message}"
        );
        assert!(message.contains("sendlater hours set"), "{message}");
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn hours_and_dispatch_controls_print_as_tables_or_json() {
        let (url, state, stop) = start_fake().await;
        let set = Action::Settings(SettingsAction::HoursSet(moscow_hours("acme")));
        let (out, _notes, result) = run_captured(&config(&url, false), set).await;
        result.unwrap();
        assert!(out.starts_with("time zone: Europe/Moscow\nDAY "), "{out}");
        assert!(out.contains("\n5 Friday     09:00-18:00\n"), "{out}");
        assert!(out.contains("\n7 Sunday     closed\n"), "{out}");

        let get = Action::Settings(SettingsAction::HoursGet(pb::GetBusinessHoursRequest {
            account_id: "acme".into(),
        }));
        let (out, _notes, result) = run_captured(&config(&url, true), get).await;
        result.unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["time_zone"], "Europe/Moscow");
        assert_eq!(value["days"].as_array().map(Vec::len), Some(5));

        let request = pb::DispatchControlRequest {
            account_id: "acme".into(),
            channel: pb::Channel::Email as i32,
        };
        let pause = Action::Settings(SettingsAction::Pause(request.clone()));
        let (out, _notes, result) = run_captured(&config(&url, false), pause).await;
        result.unwrap();
        assert!(out.contains("\nEMAIL    paused    -\n"), "{out}");
        assert_eq!(state.control.lock().unwrap().as_deref(), Some("pause 1"));
        let resume = Action::Settings(SettingsAction::Resume(request));
        let (_out, _notes, result) = run_captured(&config(&url, false), resume).await;
        result.unwrap();
        assert_eq!(state.control.lock().unwrap().as_deref(), Some("resume 1"));
        let limit = Action::Settings(SettingsAction::RateLimit(pb::SetRateLimitRequest {
            account_id: "acme".into(),
            channel: pb::Channel::Chat as i32,
            per_minute: 60,
        }));
        let (out, _notes, result) = run_captured(&config(&url, true), limit).await;
        result.unwrap();
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["rate_limits"][0]["per_minute"], 60);
        assert_eq!(
            state.control.lock().unwrap().as_deref(),
            Some("rate_limit 2 60")
        );
        let controls = Action::Settings(SettingsAction::Controls(pb::GetDispatchControlsRequest {
            account_id: "acme".into(),
        }));
        let (out, _notes, result) = run_captured(&config(&url, false), controls).await;
        result.unwrap();
        assert!(out.contains("\nCHAT     running   60/min\n"), "{out}");
        let _ = stop.send(());
    }

    #[tokio::test]
    async fn an_unreachable_server_exits_69() {
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let url = format!("http://{}", closed.local_addr().unwrap());
        drop(closed);
        let action = Action::Get(pb::ItemRef::default());
        let (_out, _notes, result) = run_captured(&config(&url, false), action).await;
        let err = result.unwrap_err();
        assert_eq!(err.exit_code(), 69, "{err}");
        assert!(
            err.to_string().starts_with("cannot reach the server"),
            "{err}"
        );
    }
}
