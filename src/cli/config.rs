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
    ActivityArgs, AudienceArg, AuthorKindArg, ChannelArg, ClientArgs, Command, ContentArgs,
    KindArg, ListArgs, OnActivityArg, RescheduleArgs, ScheduleArgs, StateArg, TicketsArgs,
    TimelineArgs, WatchArgs,
};
use super::error::{CliError, Result};
use super::{timestamp, when};
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
    /// Zone for reading naive times and showing times.
    pub tz: Tz,
}

impl ClientConfig {
    /// Validates the connection flags.
    ///
    /// # Errors
    /// A `--server` that is not an `http://` URL, a `--token` that cannot be sent in a
    /// header, an empty `--account`, an unknown `--tz`.
    pub fn from_args(args: &ClientArgs) -> Result<Self> {
        let server = args.server.trim().to_owned();
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
        let authorization = match &args.token {
            None => None,
            Some(token) => {
                let token = token.trim();
                if token.is_empty() {
                    return Err(CliError::Config("--token: is empty".to_owned()));
                }
                let mut value: AsciiMetadataValue =
                    format!("Bearer {token}").parse().map_err(|_| {
                        CliError::Config(
                            "--token: must be printable ASCII without spaces".to_owned(),
                        )
                    })?;
                value.set_sensitive(true);
                Some(value)
            }
        };
        let account = args.account.trim().to_owned();
        if account.is_empty() {
            return Err(CliError::Config("--account: must not be empty".to_owned()));
        }
        let tz = match &args.tz {
            None => chrono_tz::UTC,
            Some(name) => name.trim().parse::<Tz>().map_err(|_| {
                CliError::Config(format!(
                    "--tz {name:?}: unknown time zone; use an IANA name such as \
                     Europe/Moscow or UTC"
                ))
            })?,
        };
        Ok(Self {
            server,
            authorization,
            account,
            json: args.json,
            tz,
        })
    }
}

/// A client subcommand, validated, with its request built.
#[derive(Debug, Clone, PartialEq)]
pub enum Action {
    /// ScheduleMessage (`kind` REPLY) or ScheduleTicket (`kind` NEW_TICKET).
    Schedule {
        kind: pb::Kind,
        request: pb::ScheduleRequest,
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
    Reschedule {
        request: pb::RescheduleRequest,
        new_text: Option<String>,
    },
    Activity(pb::RecordTicketActivityRequest),
    Watch(pb::WatchEventsRequest),
}

/// Builds the request of a client subcommand. `now` anchors relative times.
///
/// # Errors
/// A flag value that cannot work, named in the message. `serve` is not a client
/// subcommand and is refused.
pub fn action(command: &Command, config: &ClientConfig, now: DateTime<Utc>) -> Result<Action> {
    match command {
        Command::Serve(_) | Command::Connector(_) | Command::Backup(_) => {
            Err(CliError::Config("not a client subcommand".to_owned()))
        }
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
    }
}

fn schedule(args: &ScheduleArgs, config: &ClientConfig, now: DateTime<Utc>) -> Result<Action> {
    let send_at = send_time(
        args.when.at.as_deref(),
        args.when.in_.as_deref(),
        now,
        config.tz,
    )?
    .ok_or_else(|| CliError::Config("one of --at and --in is required".to_owned()))?;
    let content = match content(args.channel, &args.content)? {
        Content::Email(email) => pb::schedule_request::Content::Email(email),
        Content::Chat(chat) => pb::schedule_request::Content::Chat(chat),
    };
    let request = pb::ScheduleRequest {
        account_id: config.account.clone(),
        ticket_id: args.ticket.clone(),
        channel: pb::Channel::from(args.channel) as i32,
        author_id: args.author.clone(),
        content: Some(content),
        send_at: Some(timestamp::to_pb(send_at)),
        on_activity: on_activity(args.on_activity) as i32,
        request_id: args.request_id.clone().unwrap_or_default(),
        ..Default::default()
    };
    Ok(Action::Schedule {
        kind: pb::Kind::from(args.kind),
        request,
    })
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
    let send_at = send_time(
        args.when.at.as_deref(),
        args.when.in_.as_deref(),
        now,
        config.tz,
    )?;
    if send_at.is_none() && args.text.is_none() && args.on_activity.is_none() {
        return Err(CliError::Config(
            "nothing to change: give --at or --in, --text, or --on-activity".to_owned(),
        ));
    }
    let request = pb::RescheduleRequest {
        account_id: item.account_id,
        item_id: item.item_id,
        send_at: send_at.map(timestamp::to_pb),
        content: None,
        on_activity: on_activity(args.on_activity) as i32,
        ..Default::default()
    };
    Ok(Action::Reschedule {
        request,
        new_text: args.text.clone(),
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

/// `--at` or `--in`, whichever was given (clap lets at most one through).
fn send_time(
    at_flag: Option<&str>,
    in_flag: Option<&str>,
    now: DateTime<Utc>,
    tz: Tz,
) -> Result<Option<DateTime<Utc>>> {
    match (at_flag, in_flag) {
        (Some(s), _) => at("--at", s, now, tz).map(Some),
        (None, Some(s)) => when::parse_in(s, now)
            .map(Some)
            .map_err(|e| CliError::Config(format!("--in: {e}"))),
        (None, None) => Ok(None),
    }
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
            send_at: ts("2026-11-26T06:00:00Z"),
            on_activity: pb::OnActivity::Keep as i32,
            request_id: "r-1".into(),
            ..Default::default()
        };
        assert_eq!(
            action,
            Action::Schedule {
                kind: pb::Kind::Reply,
                request: expected
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
        let Action::Schedule { kind, request } = action else {
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
    fn client_flags_are_validated_and_the_token_becomes_a_bearer_header() {
        let mut args = ClientArgs {
            server: "http://127.0.0.1:50051".into(),
            token: Some("s3cret".into()),
            account: "acme".into(),
            json: false,
            tz: None,
        };
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
}
