//! Runs a client subcommand's [`Action`] against the server and prints the answer.
//!
//! One connection per invocation; the token, when given, goes with every request as
//! `authorization: Bearer TOKEN`. Output goes to stdout (a table, or `--json`); notes
//! such as "more pages" and "nothing found" go to stderr so stdout stays clean for pipes.
//! A connection that cannot be made is [`CliError::Unreachable`] (exit 69); an error
//! status from the server is [`CliError::Status`].

use std::io::Write;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::config::{replace_text, Action, ClientConfig};
use super::error::{error_chain, CliError, Result};
use super::{json, output, signal};
use crate::pb;
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
        let endpoint = Endpoint::from_shared(config.server.clone())
            .map_err(|e| CliError::Config(format!("--server {:?}: {e}", config.server)))?
            .connect_timeout(CONNECT_TIMEOUT);
        let channel = endpoint
            .connect()
            .await
            .map_err(|e| CliError::Unreachable {
                server: config.server.clone(),
                reason: error_chain(&e),
            })?;
        Ok(Self {
            inner: SchedulerClient::new(channel),
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

/// Connects, runs `action`, prints the result.
///
/// # Errors
/// The server is unreachable, answers with an error status, or stdout is closed.
pub async fn run(config: &ClientConfig, action: Action) -> Result<()> {
    let mut client = Client::connect(config).await?;
    let tz = config.tz;
    match action {
        Action::Schedule { kind, request } => {
            let request = client.request(request);
            let item = match kind {
                pb::Kind::NewTicket => client.inner.schedule_ticket(request).await?,
                _ => client.inner.schedule_message(request).await?,
            }
            .into_inner();
            print_item(config, &item)
        }
        Action::Get(item_ref) => {
            let item = client
                .inner
                .get_item(client.request(item_ref))
                .await?
                .into_inner();
            print_item(config, &item)
        }
        Action::SendNow(item_ref) => {
            let item = client
                .inner
                .send_now(client.request(item_ref))
                .await?
                .into_inner();
            print_item(config, &item)
        }
        Action::Cancel(item_ref) => {
            let item = client
                .inner
                .cancel(client.request(item_ref))
                .await?
                .into_inner();
            print_item(config, &item)
        }
        Action::Reschedule {
            mut request,
            new_text,
        } => {
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
                .await?
                .into_inner();
            print_item(config, &item)
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
                return print_json(&json::items(&items, Some(&next)));
            }
            if items.is_empty() {
                note("no items match")?;
            } else {
                print(&output::items_table(&items, tz))?;
            }
            if !next.is_empty() {
                note(&format!("more items: --page-token {next} (or --all)"))?;
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
                return print_json(&json::tickets(&page));
            }
            if page.tickets.is_empty() {
                note("no tickets with deferred items")?;
            } else {
                print(&output::tickets_table(&page.tickets, tz))?;
            }
            if !page.next_page_token.is_empty() {
                note(&format!(
                    "more tickets: --page-token {}",
                    page.next_page_token
                ))?;
            }
            Ok(())
        }
        Action::Timeline(request) => {
            let items = client
                .inner
                .get_ticket_timeline(client.request(request))
                .await?
                .into_inner()
                .items;
            if config.json {
                return print_json(&json::items(&items, None));
            }
            if items.is_empty() {
                return note("the timeline is empty");
            }
            print(&output::items_table(&items, tz))
        }
        Action::Activity(request) => {
            let affected = client
                .inner
                .record_ticket_activity(client.request(request))
                .await?
                .into_inner()
                .affected;
            if config.json {
                return print_json(&json::affected(&affected));
            }
            if affected.is_empty() {
                return note("no pending reply was affected");
            }
            print(&output::items_table(&affected, tz))
        }
        Action::Watch(request) => watch(&mut client, request).await,
    }
}

/// Prints events until the server ends the stream or the user presses Ctrl-C.
async fn watch(client: &mut Client, request: pb::WatchEventsRequest) -> Result<()> {
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
                    return note("the server ended the event stream");
                };
                let line = if client.config.json {
                    json::event(&event).to_string()
                } else {
                    output::event_line(&event, client.config.tz)
                };
                print(&format!("{line}\n"))?;
            }
        }
    }
}

fn print_item(config: &ClientConfig, item: &pb::ScheduledItem) -> Result<()> {
    if config.json {
        print_json(&json::item(item))
    } else {
        print(&output::item_detail(item, config.tz))
    }
}

fn print_json(value: &serde_json::Value) -> Result<()> {
    let text = serde_json::to_string_pretty(value)
        .map_err(|e| CliError::Protocol(format!("cannot encode JSON: {e}")))?;
    print(&format!("{text}\n"))
}

/// Writes to stdout and flushes (so `watch` lines appear at once).
fn print(text: &str) -> Result<()> {
    let mut stdout = std::io::stdout().lock();
    stdout
        .write_all(text.as_bytes())
        .and_then(|()| stdout.flush())
        .map_err(CliError::output)
}

/// A remark for the person at the terminal, on stderr.
fn note(text: &str) -> Result<()> {
    writeln!(std::io::stderr(), "{text}").map_err(CliError::output)
}
