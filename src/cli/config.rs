//! From the low-level [`args`](super::args) of a client subcommand to what it runs on:
//! a [`ClientConfig`] (where and as whom to connect, how to print) plus an [`Action`]
//! holding the finished gRPC request. (`serve`'s flags are validated in
//! [`super::serve`].)
//!
//! Everything here is pure: `now` is an argument, nothing touches the network. Every
//! error is a [`CliError::Config`] whose message starts with the flag at fault, and
//! exits with code 64.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use tonic::metadata::AsciiMetadataValue;

use super::args::{
    ActivityArgs, AudienceArg, AuthorKindArg, ChannelArg, ClientArgs, ClusterArgs, Command,
    ContentArgs, DispatchControlArgs, HoursCommand, HoursSetArgs, KindArg, ListArgs, OnActivityArg,
    OnLateArg, RateLimitArgs, RescheduleArgs, ScheduleArgs, StateArg, TicketsArgs, TimelineArgs,
    WatchArgs,
};
use super::error::{CliError, Result};
use super::{hours, timestamp};
use crate::domain::when;
use crate::pb;

/// Where and as whom a client subcommand connects, and how it prints.
#[derive(Debug, Clone)]
pub struct ClientConfig {
    /// An `http://` URL (validated).
    pub server: String,
    /// `Bearer TOKEN`, ready to send as `authorization` metadata; marked sensitive.
    pub authorization: Option<AsciiMetadataValue>,
    /// Never empty.
    pub account: String,
    /// Print JSON instead of tables.
    pub json: bool,
    /// Zone for reading naive times and showing times (UTC unless given).
    pub tz: Tz,
    /// Whether the user named the zone (`--tz` or `SENDLATER_TZ`). Only then is a
    /// wall-clock `--at` sent as `send_at_local`, so the zone the agent meant is on record;
    /// `hours set` needs it.
    pub tz_given: bool,
}

/// The instant relative times are read from: `--now` (`SENDLATER_NOW`, for tests) when
/// given, else the clock.
///
/// # Errors
/// A `--now` that is not an RFC 3339 instant.
pub fn now(args: &ClientArgs) -> Result<DateTime<Utc>> {
    match &args.now {
        None => Ok(Utc::now()),
        Some(s) => DateTime::parse_from_rfc3339(s.trim())
            .map(|t| t.with_timezone(&Utc))
            .map_err(|e| {
                CliError::Config(format!(
                    "--now {s:?}: {e}; expected RFC 3339 such as 2026-11-25T12:00:00Z"
                ))
            }),
    }
}

impl ClientConfig {
    /// Validates the connection flags.
    ///
    /// # Errors
    /// A `--server` that is not an `http://` URL, a `--token` that cannot be sent in a
    /// header, an empty `--account`, an unknown `--tz`.
    pub fn from_args(args: &ClientArgs) -> Result<Self> {
        let server = server_url(&args.server)?;
        let authorization = authorization(args.token.as_deref())?;
        let account = args.account.trim().to_owned();
        if account.is_empty() {
            return Err(CliError::Config("--account: must not be empty".to_owned()));
        }
        let tz = time_zone(args.tz.as_deref())?;
        Ok(Self {
            server,
            authorization,
            account,
            json: args.json,
            tz,
            tz_given: args.tz.is_some(),
        })
    }
}

/// Where and as whom `sendlater cluster` connects, and how it prints.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// An `http://` URL (validated).
    pub server: String,
    /// `Bearer TOKEN`, ready to send; marked sensitive.
    pub authorization: Option<AsciiMetadataValue>,
    /// Print JSON instead of tables.
    pub json: bool,
    /// Zone for showing times (UTC unless given).
    pub tz: Tz,
}

impl ClusterConfig {
    /// Validates `sendlater cluster`'s flags.
    ///
    /// # Errors
    /// As [`ClientConfig::from_args`], without an account.
    pub fn from_args(args: &ClusterArgs) -> Result<Self> {
        Ok(Self {
            server: server_url(&args.server)?,
            authorization: authorization(args.token.as_deref())?,
            json: args.json,
            tz: time_zone(args.tz.as_deref())?,
        })
    }
}

/// `--server`, trimmed: an `http://` URL tonic can connect to.
fn server_url(input: &str) -> Result<String> {
    let server = input.trim().to_owned();
    let rest = server.strip_prefix("http://").ok_or_else(|| {
        CliError::Config(format!(
            "--server {server:?}: expected an http:// URL such as http://127.0.0.1:50051 \
             (this build has no TLS)"
        ))
    })?;
    if rest.is_empty() || tonic::transport::Endpoint::from_shared(server.clone()).is_err() {
        return Err(CliError::Config(format!(
            "--server {server:?}: not a valid URL"
        )));
    }
    Ok(server)
}

/// `--token` as the `authorization` metadata value (`Bearer TOKEN`), marked sensitive.
fn authorization(token: Option<&str>) -> Result<Option<AsciiMetadataValue>> {
    let Some(token) = token else {
        return Ok(None);
    };
    let token = token.trim();
    if token.is_empty() {
        return Err(CliError::Config("--token: is empty".to_owned()));
    }
    let mut value: AsciiMetadataValue = format!("Bearer {token}").parse().map_err(|_| {
        CliError::Config("--token: must be printable ASCII without spaces".to_owned())
    })?;
    value.set_sensitive(true);
    Ok(Some(value))
}

/// `--tz`: an IANA zone; UTC when absent.
fn time_zone(name: Option<&str>) -> Result<Tz> {
    match name {
        None => Ok(chrono_tz::UTC),
        Some(name) => name.trim().parse::<Tz>().map_err(|_| {
            CliError::Config(format!(
                "--tz {name:?}: unknown time zone; use an IANA name such as \
                 Europe/Moscow or UTC"
            ))
        }),
    }
}

/// A client subcommand, validated, with its request built.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// ScheduleMessage (`kind` REPLY) or ScheduleTicket (`kind` NEW_TICKET). With
    /// `next_opening_after` (`--at "next business morning"`), the request has no send time
    /// yet: the client fetches the account's business hours and sets `send_at` to their
    /// next opening strictly after that instant (see [`hours::next_business_morning`]).
    Schedule {
        kind: pb::Kind,
        request: pb::ScheduleRequest,
        next_opening_after: Option<DateTime<Utc>>,
    },
    /// ListScheduled; `all` follows `next_page_token` to the end.
    List {
        request: pb::ListScheduledRequest,
        all: bool,
    },
    Tickets(pb::ListDeferredTicketsRequest),
    Timeline(pb::GetTicketTimelineRequest),
    Get(pb::ItemRef),
    SendNow(pb::ItemRef),
    Cancel(pb::ItemRef),
    /// Reschedule. With `new_text`, the item is fetched first and its content, with the
    /// text replaced (see [`replace_text`]), goes into `request.content`.
    /// `next_opening_after` as for [`Action::Schedule`].
    Reschedule {
        request: pb::RescheduleRequest,
        new_text: Option<String>,
        next_opening_after: Option<DateTime<Utc>>,
    },
    Activity(pb::RecordTicketActivityRequest),
    Watch(pb::WatchEventsRequest),
    /// The account's business hours or dispatch controls.
    Settings(SettingsAction),
}

/// A request about the account's settings (API.md "When it goes out").
#[derive(Debug, Clone, PartialEq)]
pub enum SettingsAction {
    /// GetBusinessHours.
    HoursGet(pb::GetBusinessHoursRequest),
    /// SetBusinessHours, validated as the server will.
    HoursSet(pb::BusinessHours),
    /// PauseDispatch.
    Pause(pb::DispatchControlRequest),
    /// ResumeDispatch.
    Resume(pb::DispatchControlRequest),
    /// SetRateLimit.
    RateLimit(pb::SetRateLimitRequest),
    /// GetDispatchControls.
    Controls(pb::GetDispatchControlsRequest),
}

/// When to send, as the flags said it.
#[derive(Debug, Clone, PartialEq)]
enum SendTime {
    /// An instant: RFC 3339, `--in`, or a wall-clock time read in the default zone.
    At(DateTime<Utc>),
    /// A wall-clock time in the zone the user named.
    Local(pb::LocalTime),
    /// `--at "next business morning"`: the next opening after this instant (now).
    NextOpening(DateTime<Utc>),
}

/// Builds the request of a client subcommand. `now` anchors relative times.
///
/// # Errors
/// A flag value that cannot work, named in the message. `serve` is not a client
/// subcommand and is refused.
pub fn action(command: &Command, config: &ClientConfig, now: DateTime<Utc>) -> Result<Action> {
    match command {
        Command::Serve(_)
        | Command::Connector(_)
        | Command::Backup(_)
        | Command::Migrate(_)
        | Command::Cluster(_) => Err(CliError::Config("not a client subcommand".to_owned())),
        Command::Schedule(args) => schedule(args, config, now),
        Command::List(args) => list(args, config, now),
        Command::Tickets(args) => Ok(Action::Tickets(tickets(args, config))),
        Command::Timeline(args) => Ok(Action::Timeline(timeline(args, config))),
        Command::Get(args) => Ok(Action::Get(item_ref(&args.item_id, config)?)),
        Command::SendNow(args) => Ok(Action::SendNow(item_ref(&args.item_id, config)?)),
        Command::Cancel(args) => Ok(Action::Cancel(item_ref(&args.item_id, config)?)),
        Command::Reschedule(args) => reschedule(args, config, now),
        Command::Activity(args) => activity(args, config, now),
        Command::Watch(args) => Ok(Action::Watch(watch(args, config))),
        Command::Hours(_)
        | Command::Pause(_)
        | Command::Resume(_)
        | Command::RateLimit(_)
        | Command::Controls(_) => settings(command, config).map(Action::Settings),
    }
}

/// The request of a settings subcommand (`hours`, `pause`, `resume`, `rate-limit`,
/// `controls`).
fn settings(command: &Command, config: &ClientConfig) -> Result<SettingsAction> {
    let account_id = config.account.clone();
    match command {
        Command::Hours(HoursCommand::Get(_)) => {
            Ok(SettingsAction::HoursGet(pb::GetBusinessHoursRequest {
                account_id,
            }))
        }
        Command::Hours(HoursCommand::Set(args)) => hours_set(args, config),
        Command::Pause(args) => Ok(SettingsAction::Pause(dispatch_control(args, config))),
        Command::Resume(args) => Ok(SettingsAction::Resume(dispatch_control(args, config))),
        Command::RateLimit(args) => Ok(SettingsAction::RateLimit(rate_limit(args, config))),
        Command::Controls(_) => Ok(SettingsAction::Controls(pb::GetDispatchControlsRequest {
            account_id,
        })),
        _ => Err(CliError::Config("not a settings subcommand".to_owned())),
    }
}

fn schedule(args: &ScheduleArgs, config: &ClientConfig, now: DateTime<Utc>) -> Result<Action> {
    let when = send_time(
        args.when.at.as_deref(),
        args.when.in_.as_deref(),
        now,
        config,
    )?
    .ok_or_else(|| CliError::Config("one of --at and --in is required".to_owned()))?;
    let content = match content(args.channel, &args.content)? {
        Content::Email(email) => pb::schedule_request::Content::Email(email),
        Content::Chat(chat) => pb::schedule_request::Content::Chat(chat),
    };
    let (send_at, send_at_local, next_opening_after) = split_send_time(when);
    let business_hours = args.business_hours || next_opening_after.is_some();
    let request = pb::ScheduleRequest {
        account_id: config.account.clone(),
        ticket_id: args.ticket.clone(),
        channel: pb::Channel::from(args.channel) as i32,
        author_id: args.author.clone(),
        content: Some(content),
        send_at,
        on_activity: on_activity(args.on_activity) as i32,
        request_id: args.request_id.clone().unwrap_or_default(),
        send_at_local,
        delivery_window: delivery_window(business_hours) as i32,
        max_lateness: max_lateness(args.max_lateness.as_deref())?,
        on_late: on_late(args.on_late) as i32,
    };
    Ok(Action::Schedule {
        kind: pb::Kind::from(args.kind),
        request,
        next_opening_after,
    })
}

/// The request fields of a send time: `send_at`, `send_at_local`, and the instant after
/// which the next business opening is wanted.
fn split_send_time(
    when: SendTime,
) -> (
    Option<prost_types::Timestamp>,
    Option<pb::LocalTime>,
    Option<DateTime<Utc>>,
) {
    match when {
        SendTime::At(t) => (Some(timestamp::to_pb(t)), None, None),
        SendTime::Local(local) => (None, Some(local), None),
        SendTime::NextOpening(after) => (None, None, Some(after)),
    }
}

fn delivery_window(business_hours: bool) -> pb::DeliveryWindow {
    if business_hours {
        pb::DeliveryWindow::BusinessHours
    } else {
        pb::DeliveryWindow::Unspecified
    }
}

/// `--max-lateness` as a protobuf duration (same forms as `--in`).
fn max_lateness(flag: Option<&str>) -> Result<Option<prost_types::Duration>> {
    let Some(input) = flag else {
        return Ok(None);
    };
    let delta = when::parse_duration(input)
        .map_err(|e| CliError::Config(format!("--max-lateness: {e}")))?;
    Ok(Some(prost_types::Duration {
        seconds: delta.num_seconds(),
        nanos: 0,
    }))
}

fn on_late(arg: Option<OnLateArg>) -> pb::OnLate {
    match arg {
        None => pb::OnLate::Unspecified,
        Some(OnLateArg::Send) => pb::OnLate::Send,
        Some(OnLateArg::Note) => pb::OnLate::ConvertToNote,
        Some(OnLateArg::Fail) => pb::OnLate::Fail,
    }
}

/// `hours set`: the zone is `--tz`, which must be given.
fn hours_set(args: &HoursSetArgs, config: &ClientConfig) -> Result<SettingsAction> {
    if !config.tz_given {
        return Err(CliError::Config(
            "--tz: required by `hours set`: the zone the hours are in, e.g. \
             --tz Europe/Moscow"
                .to_owned(),
        ));
    }
    let request = hours::business_hours_request(
        &config.account,
        config.tz.name(),
        &args.days,
        &args.holidays,
    )?;
    Ok(SettingsAction::HoursSet(request))
}

fn dispatch_control(
    args: &DispatchControlArgs,
    config: &ClientConfig,
) -> pb::DispatchControlRequest {
    pb::DispatchControlRequest {
        account_id: config.account.clone(),
        channel: channel_or_every(args.channel) as i32,
    }
}

fn rate_limit(args: &RateLimitArgs, config: &ClientConfig) -> pb::SetRateLimitRequest {
    pb::SetRateLimitRequest {
        account_id: config.account.clone(),
        channel: channel_or_every(args.channel) as i32,
        per_minute: i64::from(args.per_minute),
    }
}

/// A channel flag; none means every channel (CHANNEL_UNSPECIFIED).
fn channel_or_every(arg: Option<ChannelArg>) -> pb::Channel {
    arg.map_or(pb::Channel::Unspecified, pb::Channel::from)
}

/// Content of either channel, before it goes into a request's `oneof`.
enum Content {
    Email(pb::EmailContent),
    Chat(pb::ChatContent),
}

/// The content flags for `channel`; flags of the other channel are refused rather than
/// silently dropped.
fn content(channel: ChannelArg, c: &ContentArgs) -> Result<Content> {
    match channel {
        ChannelArg::Email => {
            if c.conversation.is_some() {
                return Err(CliError::Config(
                    "--conversation: only for --channel chat".to_owned(),
                ));
            }
            Ok(Content::Email(pb::EmailContent {
                from: c.from.clone().unwrap_or_default(),
                to: c.to.clone(),
                cc: c.cc.clone(),
                bcc: c.bcc.clone(),
                subject: c.subject.clone().unwrap_or_default(),
                text_body: c.text.clone().unwrap_or_default(),
                html_body: c.html.clone().unwrap_or_default(),
                in_reply_to: c.in_reply_to.clone().unwrap_or_default(),
                attachments: Vec::new(),
            }))
        }
        ChannelArg::Chat => {
            let email_only = [
                ("--to", !c.to.is_empty()),
                ("--cc", !c.cc.is_empty()),
                ("--bcc", !c.bcc.is_empty()),
                ("--from", c.from.is_some()),
                ("--subject", c.subject.is_some()),
                ("--html", c.html.is_some()),
                ("--in-reply-to", c.in_reply_to.is_some()),
            ];
            if let Some((flag, _)) = email_only.iter().find(|(_, given)| *given) {
                return Err(CliError::Config(format!(
                    "{flag}: only for --channel email; a chat message takes \
                     --conversation and --text"
                )));
            }
            Ok(Content::Chat(pb::ChatContent {
                conversation_id: c.conversation.clone().unwrap_or_default(),
                text: c.text.clone().unwrap_or_default(),
                attachments: Vec::new(),
            }))
        }
    }
}

fn list(args: &ListArgs, config: &ClientConfig, now: DateTime<Utc>) -> Result<Action> {
    let from = args
        .from
        .as_deref()
        .map(|s| at("--from", s, now, config.tz))
        .transpose()?;
    let to = args
        .to
        .as_deref()
        .map(|s| at("--to", s, now, config.tz))
        .transpose()?;
    let request = pb::ListScheduledRequest {
        account_id: config.account.clone(),
        state: args.state.map_or(pb::State::Unspecified, pb::State::from) as i32,
        ticket_id: args.ticket.clone().unwrap_or_default(),
        channel: args
            .channel
            .map_or(pb::Channel::Unspecified, pb::Channel::from) as i32,
        author_id: args.author.clone().unwrap_or_default(),
        kind: args.kind.map_or(pb::Kind::Unspecified, pb::Kind::from) as i32,
        send_at_from: from.map(timestamp::to_pb),
        send_at_to: to.map(timestamp::to_pb),
        order: order(args.desc) as i32,
        page_size: args.page.page_size.unwrap_or(0),
        page_token: args.page.page_token.clone().unwrap_or_default(),
    };
    Ok(Action::List {
        request,
        all: args.all,
    })
}

fn tickets(args: &TicketsArgs, config: &ClientConfig) -> pb::ListDeferredTicketsRequest {
    pb::ListDeferredTicketsRequest {
        account_id: config.account.clone(),
        order: order(args.desc) as i32,
        page_size: args.page.page_size.unwrap_or(0),
        page_token: args.page.page_token.clone().unwrap_or_default(),
    }
}

fn timeline(args: &TimelineArgs, config: &ClientConfig) -> pb::GetTicketTimelineRequest {
    let audience = match args.audience {
        None => pb::Audience::Unspecified,
        Some(AudienceArg::Staff) => pb::Audience::Staff,
        Some(AudienceArg::Client) => pb::Audience::Client,
    };
    pb::GetTicketTimelineRequest {
        account_id: config.account.clone(),
        ticket_id: args.ticket.clone(),
        audience: audience as i32,
        ..Default::default()
    }
}

fn item_ref(item_id: &str, config: &ClientConfig) -> Result<pb::ItemRef> {
    let item_id = item_id.trim();
    if item_id.is_empty() {
        return Err(CliError::Config("ITEM_ID: must not be empty".to_owned()));
    }
    Ok(pb::ItemRef {
        account_id: config.account.clone(),
        item_id: item_id.to_owned(),
    })
}

fn reschedule(args: &RescheduleArgs, config: &ClientConfig, now: DateTime<Utc>) -> Result<Action> {
    let item = item_ref(&args.item_id, config)?;
    let when = send_time(
        args.when.at.as_deref(),
        args.when.in_.as_deref(),
        now,
        config,
    )?;
    if when.is_none() && args.text.is_none() && args.on_activity.is_none() {
        return Err(CliError::Config(
            "nothing to change: give --at or --in, --text, or --on-activity".to_owned(),
        ));
    }
    let (send_at, send_at_local, next_opening_after) =
        when.map_or((None, None, None), split_send_time);
    let request = pb::RescheduleRequest {
        account_id: item.account_id,
        item_id: item.item_id,
        send_at,
        content: None,
        on_activity: on_activity(args.on_activity) as i32,
        send_at_local,
    };
    Ok(Action::Reschedule {
        request,
        new_text: args.text.clone(),
        next_opening_after,
    })
}

/// The item's content with its text replaced: the email's text body (subject, HTML
/// body, recipients kept) or the chat message.
///
/// # Errors
/// [`CliError::Protocol`] when the item came without content.
pub fn replace_text(
    item: &pb::ScheduledItem,
    text: &str,
) -> Result<pb::reschedule_request::Content> {
    use pb::scheduled_item::Content;
    match &item.content {
        Some(Content::Email(email)) => {
            Ok(pb::reschedule_request::Content::Email(pb::EmailContent {
                text_body: text.to_owned(),
                ..email.clone()
            }))
        }
        Some(Content::Chat(chat)) => Ok(pb::reschedule_request::Content::Chat(pb::ChatContent {
            text: text.to_owned(),
            ..chat.clone()
        })),
        None => Err(CliError::Protocol(format!(
            "item {} has no content to edit",
            item.item_id
        ))),
    }
}

fn activity(args: &ActivityArgs, config: &ClientConfig, now: DateTime<Utc>) -> Result<Action> {
    let occurred_at = match &args.at {
        Some(s) => at("--at", s, now, config.tz)?,
        None => now,
    };
    let author_kind = match args.author_kind {
        AuthorKindArg::Client => pb::AuthorKind::Client,
        AuthorKindArg::Staff => pb::AuthorKind::Staff,
    };
    Ok(Action::Activity(pb::RecordTicketActivityRequest {
        account_id: config.account.clone(),
        ticket_id: args.ticket.clone(),
        author_kind: author_kind as i32,
        message_id: args.message_id.clone(),
        occurred_at: Some(timestamp::to_pb(occurred_at)),
    }))
}

fn watch(args: &WatchArgs, config: &ClientConfig) -> pb::WatchEventsRequest {
    pb::WatchEventsRequest {
        account_id: config.account.clone(),
        after_sequence: args.after,
    }
}

/// `--at` or `--in`, whichever was given (clap lets at most one through). A wall-clock
/// `--at` is a [`SendTime::Local`] when the user named the zone, else it is resolved in
/// UTC; RFC 3339 and `--in` are instants.
fn send_time(
    at_flag: Option<&str>,
    in_flag: Option<&str>,
    now: DateTime<Utc>,
    config: &ClientConfig,
) -> Result<Option<SendTime>> {
    match (at_flag, in_flag) {
        (Some(s), _) if when::is_next_business_morning(s) => Ok(Some(SendTime::NextOpening(now))),
        (Some(s), _) if config.tz_given => wall_clock(s, now, config.tz).map(Some),
        (Some(s), _) => at("--at", s, now, config.tz).map(|t| Some(SendTime::At(t))),
        (None, Some(s)) => when::parse_in(s, now)
            .map(|t| Some(SendTime::At(t)))
            .map_err(|e| CliError::Config(format!("--in: {e}"))),
        (None, None) => Ok(None),
    }
}

/// A `--at` in the zone the user named: an instant for RFC 3339, else the wall-clock
/// time it names, to be sent as `send_at_local` ("YYYY-MM-DDTHH:MM:SS" and the zone).
fn wall_clock(input: &str, now: DateTime<Utc>, tz: Tz) -> Result<SendTime> {
    let parsed = when::parse_when_local(input, now, tz)
        .map_err(|e| CliError::Config(format!("--at: {e}")))?;
    Ok(match parsed {
        when::When::Instant(t) => SendTime::At(t),
        when::When::Local(local) => SendTime::Local(pb::LocalTime {
            local_time: local.format("%Y-%m-%dT%H:%M:%S").to_string(),
            time_zone: tz.name().to_owned(),
        }),
    })
}

/// A time flag read by [`when::parse_when`], errors prefixed with the flag.
fn at(flag: &str, input: &str, now: DateTime<Utc>, tz: Tz) -> Result<DateTime<Utc>> {
    when::parse_when(input, now, tz).map_err(|e| CliError::Config(format!("{flag}: {e}")))
}

fn order(desc: bool) -> pb::Order {
    if desc {
        pb::Order::SendAtDesc
    } else {
        pb::Order::SendAtAsc
    }
}

fn on_activity(arg: Option<OnActivityArg>) -> pb::OnActivity {
    match arg {
        None => pb::OnActivity::Unspecified,
        Some(OnActivityArg::Convert) => pb::OnActivity::ConvertToNote,
        Some(OnActivityArg::Keep) => pb::OnActivity::Keep,
        Some(OnActivityArg::Cancel) => pb::OnActivity::Cancel,
    }
}

impl From<ChannelArg> for pb::Channel {
    fn from(c: ChannelArg) -> Self {
        match c {
            ChannelArg::Email => pb::Channel::Email,
            ChannelArg::Chat => pb::Channel::Chat,
        }
    }
}

impl From<KindArg> for pb::Kind {
    fn from(k: KindArg) -> Self {
        match k {
            KindArg::Reply => pb::Kind::Reply,
            KindArg::Ticket => pb::Kind::NewTicket,
        }
    }
}

impl From<StateArg> for pb::State {
    fn from(s: StateArg) -> Self {
        match s {
            StateArg::Pending => pb::State::Pending,
            StateArg::Dispatching => pb::State::Dispatching,
            StateArg::Sent => pb::State::Sent,
            StateArg::Failed => pb::State::Failed,
            StateArg::Cancelled => pb::State::Cancelled,
            StateArg::Note => pb::State::ConvertedToNote,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cli::args::Args;
    use clap::Parser;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2026-11-25T10:00:00Z")
            .expect("valid")
            .with_timezone(&Utc)
    }

    /// Parses a command line as the binary would and builds its action.
    fn build(argv: &[&str]) -> Result<Action> {
        let args = Args::try_parse_from(std::iter::once("sendlater").chain(argv.iter().copied()))
            .unwrap_or_else(|e| panic!("clap refused {argv:?}: {e}"));
        let client = args.command.client_args().expect("a client subcommand");
        let config = ClientConfig::from_args(client)?;
        action(&args.command, &config, now())
    }

    fn config_error(result: Result<Action>) -> String {
        match result {
            Err(CliError::Config(message)) => message,
            other => panic!("expected a config error, got {other:?}"),
        }
    }

    fn local(local_time: &str, time_zone: &str) -> Option<pb::LocalTime> {
        Some(pb::LocalTime {
            local_time: local_time.into(),
            time_zone: time_zone.into(),
        })
    }

    /// `schedule` of a chat message in account acme with `extra` flags.
    fn schedule_with(extra: &[&str]) -> Result<Action> {
        let base = [
            "schedule",
            "--account",
            "acme",
            "--ticket",
            "T",
            "--channel",
            "chat",
            "--author",
            "a",
            "--conversation",
            "c",
            "--text",
            "hi",
        ];
        build(&[&base[..], extra].concat())
    }

    /// The request of a `schedule` command line that must be valid.
    fn scheduled(extra: &[&str]) -> (pb::ScheduleRequest, Option<DateTime<Utc>>) {
        match schedule_with(extra) {
            Ok(Action::Schedule {
                request,
                next_opening_after,
                ..
            }) => (request, next_opening_after),
            other => panic!("{extra:?}: not a schedule action: {other:?}"),
        }
    }

    fn ts(s: &str) -> Option<prost_types::Timestamp> {
        Some(timestamp::to_pb(
            DateTime::parse_from_rfc3339(s)
                .expect("valid")
                .with_timezone(&Utc),
        ))
    }

    #[test]
    fn schedule_email_args_build_the_full_schedule_request() {
        let action = build(&[
            "schedule",
            "--account",
            "acme",
            "--ticket",
            "T-1",
            "--channel",
            "email",
            "--author",
            "alice",
            "--at",
            "tomorrow 09:00",
            "--tz",
            "Europe/Moscow",
            "--to",
            "a@example.com",
            "--to",
            "b@example.com",
            "--cc",
            "c@example.com",
            "--from",
            "support@acme.test",
            "--subject",
            "Re: refund",
            "--text",
            "Done.",
            "--in-reply-to",
            "<m1@acme.test>",
            "--on-activity",
            "keep",
            "--request-id",
            "r-1",
        ])
        .expect("valid schedule");
        let expected = pb::ScheduleRequest {
            account_id: "acme".into(),
            ticket_id: "T-1".into(),
            channel: pb::Channel::Email as i32,
            author_id: "alice".into(),
            content: Some(pb::schedule_request::Content::Email(pb::EmailContent {
                from: "support@acme.test".into(),
                to: vec!["a@example.com".into(), "b@example.com".into()],
                cc: vec!["c@example.com".into()],
                bcc: vec![],
                subject: "Re: refund".into(),
                text_body: "Done.".into(),
                html_body: String::new(),
                in_reply_to: "<m1@acme.test>".into(),
                attachments: vec![],
            })),
            // "tomorrow" is read in --tz, and the wall-clock time goes with its zone.
            send_at: None,
            send_at_local: local("2026-11-26T09:00:00", "Europe/Moscow"),
            on_activity: pb::OnActivity::Keep as i32,
            request_id: "r-1".into(),
            ..Default::default()
        };
        assert_eq!(
            action,
            Action::Schedule {
                kind: pb::Kind::Reply,
                request: expected,
                next_opening_after: None,
            }
        );
    }

    #[test]
    fn schedule_kind_ticket_with_chat_and_in_builds_a_new_ticket_request() {
        let action = build(&[
            "schedule",
            "--account",
            "acme",
            "--ticket",
            "T-2",
            "--channel",
            "chat",
            "--kind",
            "ticket",
            "--author",
            "bob",
            "--in",
            "1h30m",
            "--conversation",
            "c-9",
            "--text",
            "Hello",
        ])
        .expect("valid schedule");
        let Action::Schedule { kind, request, .. } = action else {
            panic!("not a schedule action: {action:?}");
        };
        assert_eq!(kind, pb::Kind::NewTicket);
        assert_eq!(request.channel, pb::Channel::Chat as i32);
        assert_eq!(request.send_at, ts("2026-11-25T11:30:00Z"));
        assert_eq!(request.on_activity, pb::OnActivity::Unspecified as i32);
        assert_eq!(request.request_id, "");
        assert_eq!(
            request.content,
            Some(pb::schedule_request::Content::Chat(pb::ChatContent {
                conversation_id: "c-9".into(),
                text: "Hello".into(),
                attachments: vec![],
            }))
        );
    }

    #[test]
    fn a_wall_clock_at_with_tz_is_sent_as_a_local_time_in_that_zone() {
        // now = Wednesday 2026-11-25 10:00Z = 13:00 in Moscow.
        let table: &[(&str, &str)] = &[
            ("2026-12-01 09:00", "2026-12-01T09:00:00"),
            ("2026-12-01T09:00:30", "2026-12-01T09:00:30"),
            ("2026-12-01", "2026-12-01T09:00:00"),
            ("tomorrow 09:00", "2026-11-26T09:00:00"),
            ("today 18:30", "2026-11-25T18:30:00"),
            ("next monday 10:00", "2026-11-30T10:00:00"),
            ("09:00", "2026-11-26T09:00:00"),
            ("18:00", "2026-11-25T18:00:00"),
        ];
        for (at, want) in table {
            let (request, after) = scheduled(&["--at", at, "--tz", "Europe/Moscow"]);
            assert_eq!(request.send_at, None, "{at}");
            assert_eq!(request.send_at_local, local(want, "Europe/Moscow"), "{at}");
            assert_eq!(after, None);
        }
        // "tomorrow" is tomorrow in --tz: at 22:30Z it is already the 26th in Moscow,
        // checked through the wall-clock parser the request is built from.
        let late = DateTime::parse_from_rfc3339("2026-11-25T22:30:00Z")
            .expect("valid")
            .with_timezone(&Utc);
        assert_eq!(
            when::parse_when_local("tomorrow 09:00", late, chrono_tz::Europe::Moscow),
            Ok(when::When::Local(
                chrono::NaiveDate::from_ymd_opt(2026, 11, 27)
                    .and_then(|d| d.and_hms_opt(9, 0, 0))
                    .expect("valid")
            ))
        );
    }

    #[test]
    fn an_rfc3339_at_or_an_in_is_sent_as_send_at_even_with_tz() {
        let (request, _) = scheduled(&["--at", "2026-12-01T09:00:00+03:00", "--tz", "Asia/Tokyo"]);
        assert_eq!(request.send_at, ts("2026-12-01T06:00:00Z"));
        assert_eq!(request.send_at_local, None);
        let (request, _) = scheduled(&["--in", "30m", "--tz", "Europe/Moscow"]);
        assert_eq!(request.send_at, ts("2026-11-25T10:30:00Z"));
        assert_eq!(request.send_at_local, None);
    }

    #[test]
    fn a_wall_clock_at_without_tz_is_sent_as_a_utc_send_at() {
        let (request, _) = scheduled(&["--at", "2026-12-01 09:00"]);
        assert_eq!(request.send_at, ts("2026-12-01T09:00:00Z"));
        assert_eq!(request.send_at_local, None);
        assert_eq!(
            request.delivery_window,
            pb::DeliveryWindow::Unspecified as i32
        );
        assert_eq!(request.max_lateness, None);
        assert_eq!(request.on_late, pb::OnLate::Unspecified as i32);
    }

    #[test]
    fn business_hours_flag_asks_for_the_business_hours_window() {
        let (request, after) = scheduled(&["--in", "1h", "--business-hours"]);
        assert_eq!(
            request.delivery_window,
            pb::DeliveryWindow::BusinessHours as i32
        );
        assert_eq!(request.send_at, ts("2026-11-25T11:00:00Z"));
        assert_eq!(after, None);
    }

    #[test]
    fn next_business_morning_leaves_the_send_time_to_the_hours_and_asks_for_the_window() {
        for at in ["next business morning", "Next Business Morning"] {
            let (request, after) = scheduled(&["--at", at, "--tz", "Europe/Moscow"]);
            assert_eq!(request.send_at, None, "{at}");
            assert_eq!(request.send_at_local, None, "{at}");
            assert_eq!(
                request.delivery_window,
                pb::DeliveryWindow::BusinessHours as i32
            );
            assert_eq!(after, Some(now()), "{at}");
        }
    }

    #[test]
    fn max_lateness_and_on_late_set_the_lateness_policy() {
        let table: &[(&str, &str, i64, pb::OnLate)] = &[
            ("30m", "send", 1_800, pb::OnLate::Send),
            ("2h", "note", 7_200, pb::OnLate::ConvertToNote),
            ("1h30m", "fail", 5_400, pb::OnLate::Fail),
        ];
        for (max, policy, seconds, want) in table {
            let (request, _) =
                scheduled(&["--in", "1h", "--max-lateness", max, "--on-late", policy]);
            assert_eq!(
                request.max_lateness,
                Some(prost_types::Duration {
                    seconds: *seconds,
                    nanos: 0
                }),
                "{max}"
            );
            assert_eq!(request.on_late, *want as i32, "{policy}");
        }
        let (request, _) = scheduled(&["--in", "1h", "--max-lateness", "45s"]);
        assert_eq!(request.on_late, pb::OnLate::Unspecified as i32);
        let message = config_error(schedule_with(&["--in", "1h", "--max-lateness", "soon"]));
        assert!(message.starts_with("--max-lateness: "), "{message}");
        assert!(message.contains("1h30m"), "{message}");
    }

    #[test]
    fn on_late_without_max_lateness_and_unknown_policies_are_usage_errors() {
        let base = [
            "sendlater",
            "schedule",
            "--account",
            "a",
            "--ticket",
            "T",
            "--channel",
            "chat",
            "--author",
            "a",
            "--in",
            "1h",
        ];
        let alone = Args::try_parse_from(base.iter().chain(&["--on-late", "fail"]))
            .expect_err("--on-late needs --max-lateness");
        assert!(alone.to_string().contains("--max-lateness"), "{alone}");
        let unknown =
            Args::try_parse_from(
                base.iter()
                    .chain(&["--max-lateness", "1m", "--on-late", "drop"]),
            )
            .expect_err("no such policy");
        assert_eq!(crate::cli::clap_exit_code(&unknown), 64);
    }

    #[test]
    fn reschedule_with_a_wall_clock_and_tz_sends_a_local_time() {
        let Ok(Action::Reschedule { request, .. }) = build(&[
            "reschedule",
            "it-1",
            "--account",
            "acme",
            "--at",
            "next monday 10:00",
            "--tz",
            "Europe/Moscow",
        ]) else {
            panic!("not a reschedule action");
        };
        assert_eq!(request.send_at, None);
        assert_eq!(
            request.send_at_local,
            local("2026-11-30T10:00:00", "Europe/Moscow")
        );
        let Ok(Action::Reschedule { request, .. }) = build(&[
            "reschedule",
            "it-1",
            "--account",
            "acme",
            "--at",
            "2026-11-30T10:00:00Z",
            "--tz",
            "Europe/Moscow",
        ]) else {
            panic!("not a reschedule action");
        };
        assert_eq!(request.send_at, ts("2026-11-30T10:00:00Z"));
        assert_eq!(request.send_at_local, None);
        let Ok(Action::Reschedule {
            request,
            next_opening_after,
            ..
        }) = build(&[
            "reschedule",
            "it-1",
            "--account",
            "acme",
            "--at",
            "next business morning",
        ])
        else {
            panic!("not a reschedule action");
        };
        assert_eq!((request.send_at, next_opening_after), (None, Some(now())));
    }

    #[test]
    fn hours_set_builds_the_business_hours_in_the_tz_zone() {
        let action = build(&[
            "hours",
            "set",
            "--account",
            "acme",
            "--tz",
            "Europe/Moscow",
            "--day",
            "1-5 09:00-13:00,14:00-18:00",
            "--day",
            "6 10:00-14:00",
            "--holiday",
            "2026-12-31",
            "--holiday",
            "2027-01-01",
        ])
        .expect("valid hours");
        let Action::Settings(SettingsAction::HoursSet(hours)) = action else {
            panic!("not an hours set action: {action:?}");
        };
        assert_eq!(hours.account_id, "acme");
        assert_eq!(hours.time_zone, "Europe/Moscow");
        let days: Vec<(i32, &str, &str)> = hours
            .days
            .iter()
            .map(|d| (d.weekday, d.open.as_str(), d.close.as_str()))
            .collect();
        assert_eq!(days.len(), 11);
        assert_eq!(days[0], (1, "09:00", "13:00"));
        assert_eq!(days[1], (1, "14:00", "18:00"));
        assert_eq!(days[9], (5, "14:00", "18:00"));
        assert_eq!(days[10], (6, "10:00", "14:00"));
        assert_eq!(hours.holidays, ["2026-12-31", "2027-01-01"]);
        assert_eq!(
            build(&["hours", "get", "--account", "acme"]).ok(),
            Some(Action::Settings(SettingsAction::HoursGet(
                pb::GetBusinessHoursRequest {
                    account_id: "acme".into()
                }
            )))
        );
    }

    #[test]
    fn bad_hours_are_refused_naming_the_flag_with_exit_code_64() {
        let base = ["hours", "set", "--account", "acme"];
        let cases: &[(&[&str], &str)] = &[
            (&["--day", "1-5 09:00-18:00"], "--tz: "),
            (
                &["--tz", "Europe/Moscow", "--day", "1-5 9-18"],
                "--day \"1-5 9-18\": ",
            ),
            (
                &["--tz", "Europe/Moscow", "--day", "monday 09:00-18:00"],
                "--day \"monday 09:00-18:00\": ",
            ),
            (
                &[
                    "--tz",
                    "UTC",
                    "--day",
                    "1 09:00-18:00",
                    "--day",
                    "8 09:00-18:00",
                ],
                "--day \"8 09:00-18:00\": ",
            ),
            (
                &["--tz", "UTC", "--day", "1-5 18:00-09:00"],
                "--day \"1-5 18:00-09:00\": ",
            ),
            (
                &[
                    "--tz",
                    "UTC",
                    "--day",
                    "1 09:00-18:00",
                    "--holiday",
                    "31.12.2026",
                ],
                "--holiday \"31.12.2026\": ",
            ),
        ];
        for (extra, prefix) in cases {
            let result = build(&[&base[..], extra].concat());
            let Err(error) = result else {
                panic!("{extra:?} was accepted: {result:?}");
            };
            assert_eq!(error.exit_code(), 64, "{error}");
            let message = error.to_string();
            assert!(message.starts_with(prefix), "{extra:?}: {message}");
        }
        let no_day = Args::try_parse_from(["sendlater", "hours", "set", "--account", "a"]);
        assert!(no_day.is_err(), "--day is required");
    }

    #[test]
    fn pause_resume_rate_limit_and_controls_name_a_channel_or_every_channel() {
        let control = |channel: pb::Channel| pb::DispatchControlRequest {
            account_id: "acme".into(),
            channel: channel as i32,
        };
        assert_eq!(
            build(&["pause", "--account", "acme"]).ok(),
            Some(Action::Settings(SettingsAction::Pause(control(
                pb::Channel::Unspecified
            ))))
        );
        assert_eq!(
            build(&["pause", "--account", "acme", "--channel", "email"]).ok(),
            Some(Action::Settings(SettingsAction::Pause(control(
                pb::Channel::Email
            ))))
        );
        assert_eq!(
            build(&["resume", "--account", "acme", "--channel", "chat"]).ok(),
            Some(Action::Settings(SettingsAction::Resume(control(
                pb::Channel::Chat
            ))))
        );
        assert_eq!(
            build(&["resume", "--account", "acme"]).ok(),
            Some(Action::Settings(SettingsAction::Resume(control(
                pb::Channel::Unspecified
            ))))
        );
        assert_eq!(
            build(&[
                "rate-limit",
                "--account",
                "acme",
                "--channel",
                "chat",
                "--per-minute",
                "60"
            ])
            .ok(),
            Some(Action::Settings(SettingsAction::RateLimit(
                pb::SetRateLimitRequest {
                    account_id: "acme".into(),
                    channel: pb::Channel::Chat as i32,
                    per_minute: 60,
                }
            )))
        );
        assert_eq!(
            build(&["rate-limit", "--account", "acme", "--per-minute", "0"]).ok(),
            Some(Action::Settings(SettingsAction::RateLimit(
                pb::SetRateLimitRequest {
                    account_id: "acme".into(),
                    channel: pb::Channel::Unspecified as i32,
                    per_minute: 0,
                }
            )))
        );
        assert_eq!(
            build(&["controls", "--account", "acme"]).ok(),
            Some(Action::Settings(SettingsAction::Controls(
                pb::GetDispatchControlsRequest {
                    account_id: "acme".into()
                }
            )))
        );
        let negative = Args::try_parse_from([
            "sendlater",
            "rate-limit",
            "--account",
            "a",
            "--per-minute",
            "lots",
        ])
        .expect_err("not a number");
        assert_eq!(crate::cli::clap_exit_code(&negative), 64);
    }

    #[test]
    fn email_flags_on_a_chat_message_are_refused_naming_the_flag() {
        let message = config_error(build(&[
            "schedule",
            "--account",
            "acme",
            "--ticket",
            "T",
            "--channel",
            "chat",
            "--author",
            "a",
            "--in",
            "1h",
            "--subject",
            "hi",
        ]));
        assert!(message.starts_with("--subject:"), "{message}");
        let message = config_error(build(&[
            "schedule",
            "--account",
            "acme",
            "--ticket",
            "T",
            "--channel",
            "email",
            "--author",
            "a",
            "--in",
            "1h",
            "--conversation",
            "c",
        ]));
        assert!(message.starts_with("--conversation:"), "{message}");
    }

    #[test]
    fn bad_time_values_are_refused_naming_the_flag_and_the_accepted_forms() {
        let base = [
            "schedule",
            "--account",
            "acme",
            "--ticket",
            "T",
            "--channel",
            "chat",
            "--author",
            "a",
        ];
        let at = config_error(build(&[&base[..], &["--at", "someday"]].concat()));
        assert!(at.starts_with("--at: "), "{at}");
        assert!(at.contains("tomorrow"), "{at}");
        let in_ = config_error(build(&[&base[..], &["--in", "soon"]].concat()));
        assert!(in_.starts_with("--in: "), "{in_}");
        let tz = config_error(build(
            &[&base[..], &["--in", "1h", "--tz", "Mars/Olympus"]].concat(),
        ));
        assert!(tz.starts_with("--tz "), "{tz}");
    }

    #[test]
    fn list_args_become_filters_range_order_and_paging() {
        let action = build(&[
            "list",
            "--account",
            "acme",
            "--state",
            "note",
            "--ticket",
            "T-1",
            "--channel",
            "email",
            "--author",
            "alice",
            "--kind",
            "ticket",
            "--from",
            "2026-11-26",
            "--to",
            "2026-11-27 18:00",
            "--tz",
            "Europe/Moscow",
            "--desc",
            "--page-size",
            "50",
            "--page-token",
            "p2",
        ])
        .expect("valid list");
        let expected = pb::ListScheduledRequest {
            account_id: "acme".into(),
            state: pb::State::ConvertedToNote as i32,
            ticket_id: "T-1".into(),
            channel: pb::Channel::Email as i32,
            author_id: "alice".into(),
            kind: pb::Kind::NewTicket as i32,
            send_at_from: ts("2026-11-26T06:00:00Z"),
            send_at_to: ts("2026-11-27T15:00:00Z"),
            order: pb::Order::SendAtDesc as i32,
            page_size: 50,
            page_token: "p2".into(),
        };
        assert_eq!(
            action,
            Action::List {
                request: expected,
                all: false
            }
        );
    }

    #[test]
    fn a_bare_list_leaves_every_filter_to_the_server_defaults() {
        let action = build(&["list", "--account", "acme", "--all"]).expect("valid list");
        let expected = pb::ListScheduledRequest {
            account_id: "acme".into(),
            ..Default::default()
        };
        assert_eq!(
            action,
            Action::List {
                request: expected,
                all: true
            }
        );
    }

    #[test]
    fn item_subcommands_build_item_refs_and_others_their_requests() {
        let item = pb::ItemRef {
            account_id: "acme".into(),
            item_id: "it-1".into(),
        };
        assert_eq!(
            build(&["get", "it-1", "--account", "acme"]).ok(),
            Some(Action::Get(item.clone()))
        );
        assert_eq!(
            build(&["send-now", "it-1", "--account", "acme"]).ok(),
            Some(Action::SendNow(item.clone()))
        );
        assert_eq!(
            build(&["cancel", "--account", "acme", "it-1"]).ok(),
            Some(Action::Cancel(item))
        );
        assert_eq!(
            build(&["tickets", "--account", "acme", "--desc", "--page-size", "7"]).ok(),
            Some(Action::Tickets(pb::ListDeferredTicketsRequest {
                account_id: "acme".into(),
                order: pb::Order::SendAtDesc as i32,
                page_size: 7,
                page_token: String::new(),
            }))
        );
        assert_eq!(
            build(&[
                "timeline",
                "--account",
                "acme",
                "--ticket",
                "T",
                "--audience",
                "client"
            ])
            .ok(),
            Some(Action::Timeline(pb::GetTicketTimelineRequest {
                account_id: "acme".into(),
                ticket_id: "T".into(),
                audience: pb::Audience::Client as i32,
                ..Default::default()
            }))
        );
        assert_eq!(
            build(&["watch", "--account", "acme", "--after", "42"]).ok(),
            Some(Action::Watch(pb::WatchEventsRequest {
                account_id: "acme".into(),
                after_sequence: 42,
            }))
        );
    }

    #[test]
    fn activity_occurs_now_unless_at_is_given() {
        let base = [
            "activity",
            "--account",
            "acme",
            "--ticket",
            "T",
            "--author-kind",
            "client",
            "--message-id",
            "m-1",
        ];
        let Ok(Action::Activity(request)) = build(&base) else {
            panic!("not an activity action");
        };
        assert_eq!(request.author_kind, pb::AuthorKind::Client as i32);
        assert_eq!(request.message_id, "m-1");
        assert_eq!(request.occurred_at, Some(timestamp::to_pb(now())));
        let Ok(Action::Activity(request)) =
            build(&[&base[..], &["--at", "2026-11-25T09:00:00Z"]].concat())
        else {
            panic!("not an activity action");
        };
        assert_eq!(request.occurred_at, ts("2026-11-25T09:00:00Z"));
    }

    #[test]
    fn reschedule_needs_something_to_change() {
        let message = config_error(build(&["reschedule", "it-1", "--account", "acme"]));
        assert!(message.starts_with("nothing to change"), "{message}");
        let action = build(&[
            "reschedule",
            "it-1",
            "--account",
            "acme",
            "--in",
            "2h",
            "--text",
            "new",
        ])
        .expect("valid reschedule");
        assert_eq!(
            action,
            Action::Reschedule {
                request: pb::RescheduleRequest {
                    account_id: "acme".into(),
                    item_id: "it-1".into(),
                    send_at: ts("2026-11-25T12:00:00Z"),
                    content: None,
                    on_activity: 0,
                    ..Default::default()
                },
                new_text: Some("new".into()),
                next_opening_after: None,
            }
        );
    }

    #[test]
    fn new_text_replaces_only_the_text_body_of_an_email() {
        let email = pb::EmailContent {
            from: "f@x".into(),
            to: vec!["t@x".into()],
            subject: "S".into(),
            text_body: "old".into(),
            html_body: "<p>old</p>".into(),
            ..Default::default()
        };
        let item = pb::ScheduledItem {
            item_id: "it-1".into(),
            content: Some(pb::scheduled_item::Content::Email(email.clone())),
            ..Default::default()
        };
        let replaced = replace_text(&item, "new").expect("has content");
        assert_eq!(
            replaced,
            pb::reschedule_request::Content::Email(pb::EmailContent {
                text_body: "new".into(),
                ..email
            })
        );
        let chat = pb::ScheduledItem {
            content: Some(pb::scheduled_item::Content::Chat(pb::ChatContent {
                conversation_id: "c".into(),
                text: "old".into(),
                attachments: vec![],
            })),
            ..Default::default()
        };
        assert_eq!(
            replace_text(&chat, "new").ok(),
            Some(pb::reschedule_request::Content::Chat(pb::ChatContent {
                conversation_id: "c".into(),
                text: "new".into(),
                attachments: vec![],
            }))
        );
        assert!(replace_text(&pb::ScheduledItem::default(), "x").is_err());
    }

    #[test]
    fn now_is_the_override_when_given_and_a_bad_override_names_the_flag() {
        let mut args = ClientArgs {
            server: "http://127.0.0.1:50051".into(),
            token: None,
            account: "acme".into(),
            json: false,
            tz: None,
            now: Some("2026-11-25T15:00:00+03:00".into()),
        };
        assert_eq!(
            super::now(&args).expect("valid").to_rfc3339(),
            "2026-11-25T12:00:00+00:00"
        );
        args.now = Some("yesterday".into());
        let Err(CliError::Config(m)) = super::now(&args) else {
            panic!("a --now that is not RFC 3339 must be refused");
        };
        assert!(m.starts_with("--now \"yesterday\""), "{m}");
        args.now = None;
        let before = Utc::now();
        let now = super::now(&args).expect("the clock");
        assert!(before <= now && now <= Utc::now(), "{now}");
    }

    #[test]
    fn client_flags_are_validated_and_the_token_becomes_a_bearer_header() {
        let mut args = ClientArgs {
            server: "http://127.0.0.1:50051".into(),
            token: Some("s3cret".into()),
            account: "acme".into(),
            json: false,
            tz: None,
            now: None,
        };
        assert!(!ClientConfig::from_args(&args).expect("valid").tz_given);
        let config = ClientConfig::from_args(&args).expect("valid");
        assert_eq!(
            config.authorization.as_ref().map(|v| v.to_str().ok()),
            Some(Some("Bearer s3cret"))
        );
        assert_eq!(config.tz, chrono_tz::UTC);

        args.server = "127.0.0.1:50051".into();
        let Err(CliError::Config(m)) = ClientConfig::from_args(&args) else {
            panic!("a server without scheme must be refused");
        };
        assert!(m.starts_with("--server"), "{m}");

        args.server = "http://127.0.0.1:50051".into();
        args.token = Some("bad\ntoken".into());
        let Err(CliError::Config(m)) = ClientConfig::from_args(&args) else {
            panic!("a token with a newline must be refused");
        };
        assert!(m.starts_with("--token"), "{m}");

        args.token = None;
        args.account = "  ".into();
        assert!(ClientConfig::from_args(&args).is_err());
    }

    #[test]
    fn cluster_needs_no_account_and_checks_its_connection_flags_like_the_others() {
        let parse = |argv: &[&str]| {
            let mut all = vec!["sendlater", "cluster"];
            all.extend_from_slice(argv);
            match Args::try_parse_from(all)
                .expect("clap accepts cluster")
                .command
            {
                Command::Cluster(args) => ClusterConfig::from_args(&args),
                other => panic!("not cluster: {other:?}"),
            }
        };
        let config = parse(&[
            "--server",
            "http://node-2:50051",
            "--token",
            "s3cret",
            "--tz",
            "Europe/Moscow",
            "--json",
        ])
        .expect("valid");
        assert_eq!(config.server, "http://node-2:50051");
        assert_eq!(
            config.authorization.as_ref().map(|v| v.to_str().ok()),
            Some(Some("Bearer s3cret"))
        );
        assert_eq!(config.tz, chrono_tz::Europe::Moscow);
        assert!(config.json);
        for (argv, flag) in [
            (&["--server", "node-2:50051"][..], "--server"),
            (&["--token", " "][..], "--token"),
            (&["--token", "bad\ntoken"][..], "--token"),
            (&["--tz", "Mars/Olympus"][..], "--tz"),
        ] {
            let err = parse(argv).expect_err(flag);
            assert_eq!(err.exit_code(), 64, "{err}");
            assert!(err.to_string().starts_with(flag), "{err}");
        }
    }
}
