//! The command line exactly as the user types it: clap derive structs.
//!
//! These types check only what clap checks (required flags, enum values, numbers).
//! Everything that needs thought (time expressions, time zones, addresses, which flags
//! fit which channel) is left as text here and validated by [`super::config`], which
//! turns these low-level args into the config and requests the commands run on. Doc
//! comments are the `--help` text. Every flag a deployment would set has an `env =`.

use std::path::PathBuf;

use clap::{Args as ClapArgs, Parser, Subcommand, ValueEnum};

/// Schedule helpdesk replies and new tickets to be sent later, over email or chat.
///
/// `sendlater serve` runs the service; the other subcommands talk to it over gRPC.
#[derive(Debug, Parser)]
#[command(name = "sendlater", version, about, long_about = None)]
pub struct Args {
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
// Built once per process from argv; boxing the big variants would buy nothing.
#[allow(clippy::large_enum_variant)]
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Run the service (gRPC on one port, SQLite storage) until SIGINT or SIGTERM.
    Serve(ServeArgs),
    /// Schedule a reply in a ticket (or, with --kind ticket, a new ticket) to be sent later.
    Schedule(ScheduleArgs),
    /// List scheduled items (default: the pending ones, soonest first).
    List(ListArgs),
    /// The "Deferred sending" view: tickets with items not yet sent.
    Tickets(TicketsArgs),
    /// A ticket's items in time order, as staff or the client see them.
    Timeline(TimelineArgs),
    /// Show one item.
    Get(ItemArgs),
    /// Make a pending item due right now.
    SendNow(ItemArgs),
    /// Cancel a pending item (idempotent).
    Cancel(ItemArgs),
    /// Change when a pending item is sent, and/or its text.
    Reschedule(RescheduleArgs),
    /// Report a new message in a ticket, applying pending replies' --on-activity policy.
    Activity(ActivityArgs),
    /// Print item events as they happen, one line each, until Ctrl-C.
    Watch(WatchArgs),
    /// Run a connector process: receive due items from the server and send them.
    #[command(subcommand)]
    Connector(ConnectorCommand),
    /// Copy the database to a file with SQLite's online backup API (safe while serving).
    Backup(BackupArgs),
    /// Copy a whole store (SQLite file or PostgreSQL URL) into an empty one, and check
    /// the counts.
    Migrate(MigrateArgs),
    /// Show or set the account's business hours (used by --business-hours).
    #[command(subcommand)]
    Hours(HoursCommand),
    /// Hold due items of the account (one channel, or all) until `resume`; durable.
    Pause(DispatchControlArgs),
    /// Let held items of the account (one channel, or all) go out again.
    Resume(DispatchControlArgs),
    /// Start at most N jobs of the account per rolling minute (0 removes the limit).
    RateLimit(RateLimitArgs),
    /// Show the account's paused channels and rate limits.
    Controls(ControlsArgs),
    /// Show the nodes sharing the database and the partitions each one owns (an admin
    /// token when tokens are configured).
    Cluster(ClusterArgs),
}

/// `sendlater hours get|set`.
#[derive(Debug, Subcommand)]
pub enum HoursCommand {
    /// Show the account's business hours.
    Get(HoursGetArgs),
    /// Replace the account's business hours, read in the --tz zone (required here);
    /// pending --business-hours items move at once.
    Set(HoursSetArgs),
}

/// `sendlater hours get`.
#[derive(Debug, Clone, ClapArgs)]
pub struct HoursGetArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater hours set`. The zone of the hours is `--tz` (required here).
#[derive(Debug, Clone, ClapArgs)]
pub struct HoursSetArgs {
    /// Opening hours of some weekdays: "DAYS HH:MM-HH:MM[,HH:MM-HH:MM...]", where DAYS
    /// are ISO weekdays (1 = Monday .. 7 = Sunday) as a day, a range or a list
    /// ("1-5", "6", "1-3,5"); close may be 24:00. Repeat for other days, e.g.
    /// --day "1-5 09:00-13:00,14:00-18:00" --day "6 10:00-14:00".
    #[arg(long = "day", value_name = "SPEC", required = true)]
    pub days: Vec<String>,
    /// A date (YYYY-MM-DD, in --tz) with no opening; repeat for several.
    #[arg(long = "holiday", value_name = "DATE")]
    pub holidays: Vec<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater pause|resume`.
#[derive(Debug, Clone, ClapArgs)]
pub struct DispatchControlArgs {
    /// Only this channel (default: every channel).
    #[arg(long, value_enum)]
    pub channel: Option<ChannelArg>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater rate-limit`.
#[derive(Debug, Clone, ClapArgs)]
pub struct RateLimitArgs {
    /// Only this channel (default: every channel, each with its own limit).
    #[arg(long, value_enum)]
    pub channel: Option<ChannelArg>,
    /// Jobs started in any rolling 60 s; 0 removes the limit.
    #[arg(long, value_name = "N")]
    pub per_minute: u32,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater controls`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ControlsArgs {
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater connector email|chat`.
#[derive(Debug, Subcommand)]
pub enum ConnectorCommand {
    /// Send email over SMTP.
    Email(EmailConnectorArgs),
    /// POST chat messages to a webhook, signed with HMAC-SHA256.
    Chat(ChatConnectorArgs),
}

/// Flags every connector takes.
#[derive(Debug, ClapArgs)]
pub struct ConnectorArgs {
    /// The sendlater server; for several nodes repeat the flag or give a comma-separated
    /// list (the connector streams from every one; repeats count once).
    #[arg(
        long,
        env = "SENDLATER_SERVER",
        value_delimiter = ',',
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: Vec<String>,
    /// For an https:// server: PEM file of the CA its certificate chains to (or the
    /// certificate itself) [default: the system's roots].
    #[arg(long, env = "SENDLATER_CA_FILE", value_name = "PEM")]
    pub ca_file: Option<PathBuf>,
    /// Bearer token of a `connector` (or `admin`) role.
    #[arg(long, env = "SENDLATER_TOKEN", hide_env_values = true)]
    pub token: Option<String>,
    /// Jobs processed at once (1..10000).
    #[arg(long, env = "SENDLATER_MAX_IN_FLIGHT", default_value_t = 16)]
    pub max_in_flight: u32,
    /// Name of this connector in the server's logs [default: connector-<pid>].
    #[arg(long, env = "SENDLATER_CONNECTOR_ID")]
    pub connector_id: Option<String>,
}

/// `sendlater connector email`.
#[derive(Debug, ClapArgs)]
pub struct EmailConnectorArgs {
    /// SMTP server: smtp://[user:pass@]HOST:PORT[?tls=starttls|opportunistic] or smtps://.
    #[arg(long, env = "SENDLATER_SMTP", hide_env_values = true)]
    pub smtp: String,
    /// Sender address for items that name none.
    #[arg(long, env = "SENDLATER_FROM")]
    pub from: Option<String>,
    #[command(flatten)]
    pub common: ConnectorArgs,
}

/// `sendlater connector chat`.
#[derive(Debug, ClapArgs)]
pub struct ChatConnectorArgs {
    /// Webhook URL the messages are POSTed to.
    #[arg(long, env = "SENDLATER_WEBHOOK", hide_env_values = true)]
    pub webhook: String,
    /// Shared secret for the X-Sendlater-Signature header (unsigned when absent).
    #[arg(long, env = "SENDLATER_WEBHOOK_SECRET", hide_env_values = true)]
    pub secret: Option<String>,
    #[command(flatten)]
    pub common: ConnectorArgs,
}

/// `sendlater backup`.
#[derive(Debug, ClapArgs)]
pub struct BackupArgs {
    /// The live database file.
    #[arg(long, env = "SENDLATER_DB", default_value = "./sendlater.db")]
    pub db: PathBuf,
    /// Where to write the copy (must not exist).
    #[arg(long)]
    pub out: PathBuf,
}

/// `sendlater migrate`.
#[derive(Debug, ClapArgs)]
pub struct MigrateArgs {
    /// The store to copy: an SQLite file or a postgres:// URL. Read in one snapshot
    /// and left as it is; stop the service on it first.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub from: String,
    /// The empty store to copy into: an SQLite file (created when missing) or a
    /// postgres:// URL (an existing, empty database). A non-empty one is refused.
    #[arg(long, value_name = "PATH_OR_URL")]
    pub to: String,
    /// A progress line on stderr every this many rows (and at least every second).
    #[arg(long, value_name = "ROWS", default_value_t = 100_000)]
    pub progress_every: u64,
}

/// `sendlater serve`.
#[derive(Debug, ClapArgs)]
pub struct ServeArgs {
    /// Address to listen on, HOST:PORT [default: 127.0.0.1:50051]. Anything but
    /// loopback (127.0.0.0/8, ::1, localhost) needs auth tokens or --insecure.
    #[arg(long, env = "SENDLATER_LISTEN", value_name = "ADDR")]
    pub listen: Option<String>,

    /// The SQLite database file, created with its schema when missing
    /// [default: ./sendlater.db].
    #[arg(long, env = "SENDLATER_DB", value_name = "FILE")]
    pub db: Option<PathBuf>,

    /// TOML config file (limits, dispatch tuning, tokens, TLS, metrics); flags
    /// override it.
    #[arg(long, env = "SENDLATER_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,

    /// Serve Prometheus metrics on this address (off when absent).
    #[arg(long, env = "SENDLATER_METRICS_LISTEN", value_name = "ADDR")]
    pub metrics_listen: Option<String>,

    /// The staff console (HTML) on this address, or "off". Default: 127.0.0.1:8080 when
    /// --listen is a loopback address, off otherwise. Beyond loopback it needs auth
    /// tokens or --insecure, as --listen does.
    #[arg(long, env = "SENDLATER_CONSOLE_LISTEN", value_name = "ADDR|off")]
    pub console_listen: Option<String>,

    /// A host name the console also answers to (e.g. behind a reverse proxy), NAME or
    /// NAME:PORT; repeat for several. Requests naming any other host are refused
    /// (DNS rebinding); its own address, localhost and loopback always work.
    #[arg(long = "console-host", value_name = "NAME")]
    pub console_hosts: Vec<String>,

    /// This node's id among the nodes sharing a PostgreSQL database; unique
    /// [default: HOSTNAME:PORT of --listen].
    #[arg(long, env = "SENDLATER_NODE_ID", value_name = "ID")]
    pub node_id: Option<String>,

    /// The gRPC address other nodes and connectors reach this node at, HOST:PORT
    /// [default: --listen, with the host name for a wildcard address such as 0.0.0.0].
    #[arg(long, env = "SENDLATER_ADVERTISE", value_name = "HOST:PORT")]
    pub advertise: Option<String>,

    /// Listen on a non-loopback address although no auth tokens are configured: anyone
    /// who reaches the port can read and send every account's messages.
    #[arg(long, env = "SENDLATER_INSECURE")]
    pub insecure: bool,

    /// Log format on stderr. RUST_LOG sets the filter (default: info).
    #[arg(long, env = "SENDLATER_LOG_FORMAT", value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// SQLite durability.
    #[arg(long, env = "SENDLATER_SYNC", value_enum, default_value_t = SyncMode::Full)]
    pub sync: SyncMode,
}

/// How logs are written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// SQLite `synchronous` setting.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum SyncMode {
    /// Survives power loss.
    Full,
    /// May lose the last transactions on power loss (never on a crash); for benchmarks.
    Normal,
}

/// Flags shared by every client subcommand.
#[derive(Debug, Clone, ClapArgs)]
#[command(next_help_heading = "Connection")]
pub struct ClientArgs {
    /// The sendlater server (http:// URL).
    #[arg(
        long,
        env = "SENDLATER_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// Bearer token, sent as `authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "SENDLATER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// The account (helpdesk customer) to act for.
    #[arg(long, env = "SENDLATER_ACCOUNT", value_name = "ACCOUNT")]
    pub account: String,

    /// Print the response as JSON for scripts (`watch`: one object per line).
    #[arg(long)]
    pub json: bool,

    /// IANA time zone (e.g. Europe/Moscow) for reading times without an offset and for
    /// showing times. Default: UTC. When given, a wall-clock --at is sent as a local
    /// time in this zone, so the zone is on record with the item.
    #[arg(long, env = "SENDLATER_TZ", value_name = "ZONE")]
    pub tz: Option<String>,

    /// For tests only: the instant (RFC 3339) this command takes as "now" for relative
    /// times ("tomorrow 09:00", --in, "next business morning"). Default: the clock.
    #[arg(
        long,
        env = "SENDLATER_NOW",
        value_name = "RFC3339",
        hide_short_help = true
    )]
    pub now: Option<String>,
}

/// `sendlater cluster`: the connection flags of a client subcommand, without an
/// account (the cluster is no account's).
#[derive(Debug, Clone, ClapArgs)]
pub struct ClusterArgs {
    /// The sendlater server (http:// URL): any node of the cluster.
    #[arg(
        long,
        env = "SENDLATER_SERVER",
        value_name = "URL",
        default_value = "http://127.0.0.1:50051"
    )]
    pub server: String,

    /// Bearer token (an admin one), sent as `authorization: Bearer TOKEN`.
    #[arg(
        long,
        env = "SENDLATER_TOKEN",
        value_name = "TOKEN",
        hide_env_values = true
    )]
    pub token: Option<String>,

    /// Print the response as JSON for scripts.
    #[arg(long)]
    pub json: bool,

    /// IANA time zone (e.g. Europe/Moscow) for showing times. Default: UTC.
    #[arg(long, env = "SENDLATER_TZ", value_name = "ZONE")]
    pub tz: Option<String>,
}

/// When to send: exactly one of `--at` and `--in`.
#[derive(Debug, Clone, ClapArgs)]
#[group(id = "send_time", required = true, multiple = false)]
pub struct SendTimeArgs {
    /// When to send: 2026-11-26T09:00:00+03:00, "2026-11-26 09:00", "tomorrow 09:00",
    /// "today 18:30", "next monday [10:00]", "09:00" (next time the clock shows it) or
    /// "next business morning" (the next opening of the account's business hours).
    /// Times without an offset are in --tz; a time skipped by a DST change is moved
    /// forward by the gap, a repeated one means its first occurrence.
    #[arg(long, value_name = "WHEN")]
    pub at: Option<String>,

    /// Send after this long: 45s, 30m, 2h, 1d, 1h30m.
    #[arg(long = "in", value_name = "DURATION")]
    pub in_: Option<String>,
}

/// A new send time: at most one of `--at` and `--in`.
#[derive(Debug, Clone, ClapArgs)]
#[group(id = "new_time", required = false, multiple = false)]
pub struct NewTimeArgs {
    /// New send time; same forms as `schedule --at`.
    #[arg(long, value_name = "WHEN")]
    pub at: Option<String>,

    /// New send time, this long from now: 45s, 30m, 2h, 1d, 1h30m.
    #[arg(long = "in", value_name = "DURATION")]
    pub in_: Option<String>,
}

/// What to send. Email flags and chat flags do not mix.
#[derive(Debug, Clone, Default, ClapArgs)]
#[command(next_help_heading = "Content")]
pub struct ContentArgs {
    /// Email recipient; repeat for several.
    #[arg(long, value_name = "ADDR")]
    pub to: Vec<String>,
    /// Email copy recipient; repeat for several.
    #[arg(long, value_name = "ADDR")]
    pub cc: Vec<String>,
    /// Email blind-copy recipient; repeat for several.
    #[arg(long, value_name = "ADDR")]
    pub bcc: Vec<String>,
    /// Email sender (default: the connector's).
    #[arg(long, value_name = "ADDR")]
    pub from: Option<String>,
    /// Email subject.
    #[arg(long)]
    pub subject: Option<String>,
    /// Plain-text body (email) or the message (chat).
    #[arg(long)]
    pub text: Option<String>,
    /// HTML body (email).
    #[arg(long)]
    pub html: Option<String>,
    /// Message-ID this email answers, for threading.
    #[arg(long, value_name = "MESSAGE_ID")]
    pub in_reply_to: Option<String>,
    /// Chat conversation to post in.
    #[arg(long, value_name = "ID")]
    pub conversation: Option<String>,
}

/// `sendlater schedule`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ScheduleArgs {
    /// The ticket (conversation) in the helpdesk.
    #[arg(long)]
    pub ticket: String,

    /// How it is delivered.
    #[arg(long, value_enum)]
    pub channel: ChannelArg,

    /// A reply in an existing ticket, or a new ticket hidden from the client until sent.
    #[arg(long, value_enum, default_value_t = KindArg::Reply)]
    pub kind: KindArg,

    /// The staff member scheduling it.
    #[arg(long)]
    pub author: String,

    #[command(flatten)]
    pub when: SendTimeArgs,

    /// What happens if the ticket gets new activity first (server default: convert).
    #[arg(long, value_enum)]
    pub on_activity: Option<OnActivityArg>,

    /// Idempotency key: scheduling again with the same key returns the same item.
    #[arg(long, value_name = "KEY")]
    pub request_id: Option<String>,

    /// Send only within the account's business hours (see `sendlater hours`): a time
    /// outside them, or on a holiday, moves to the next opening.
    #[arg(long)]
    pub business_hours: bool,

    /// Do not start later than this after the send time (after an outage, a pause, a
    /// backlog or a rate limit): 30m, 2h, 1d; then --on-late applies. Default: no limit.
    #[arg(long, value_name = "DURATION")]
    pub max_lateness: Option<String>,

    /// What to do with an item later than --max-lateness (server default: send).
    #[arg(long, value_enum, requires = "max_lateness")]
    pub on_late: Option<OnLateArg>,

    #[command(flatten)]
    pub content: ContentArgs,

    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater list`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ListArgs {
    /// Only items in this state (server default: pending).
    #[arg(long, value_enum)]
    pub state: Option<StateArg>,
    /// Only this ticket's items.
    #[arg(long)]
    pub ticket: Option<String>,
    /// Only this channel.
    #[arg(long, value_enum)]
    pub channel: Option<ChannelArg>,
    /// Only items scheduled by this staff member.
    #[arg(long)]
    pub author: Option<String>,
    /// Only replies or only new tickets.
    #[arg(long, value_enum)]
    pub kind: Option<KindArg>,
    /// Only items sent at or after this time (forms of `schedule --at`).
    #[arg(long, value_name = "WHEN")]
    pub from: Option<String>,
    /// Only items sent before this time (forms of `schedule --at`).
    #[arg(long, value_name = "WHEN")]
    pub to: Option<String>,
    /// Latest first.
    #[arg(long)]
    pub desc: bool,
    #[command(flatten)]
    pub page: PageArgs,
    /// Fetch every page, not just the first.
    #[arg(long, conflicts_with = "page_token")]
    pub all: bool,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// Pagination.
#[derive(Debug, Clone, ClapArgs)]
pub struct PageArgs {
    /// Items per page (server default 100, at most 1000).
    #[arg(long, value_name = "N")]
    pub page_size: Option<u32>,
    /// Continue from a previous page's next page token.
    #[arg(long, value_name = "TOKEN")]
    pub page_token: Option<String>,
}

/// `sendlater tickets`.
#[derive(Debug, Clone, ClapArgs)]
pub struct TicketsArgs {
    /// Latest next send time first.
    #[arg(long)]
    pub desc: bool,
    #[command(flatten)]
    pub page: PageArgs,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater timeline`.
#[derive(Debug, Clone, ClapArgs)]
pub struct TimelineArgs {
    /// The ticket.
    #[arg(long)]
    pub ticket: String,
    /// Whose view (server default: staff).
    #[arg(long, value_enum)]
    pub audience: Option<AudienceArg>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater get|send-now|cancel ITEM_ID`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ItemArgs {
    /// The item's id, as printed by `schedule` and `list`.
    #[arg(value_name = "ITEM_ID")]
    pub item_id: String,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater reschedule`.
#[derive(Debug, Clone, ClapArgs)]
pub struct RescheduleArgs {
    /// The item's id.
    #[arg(value_name = "ITEM_ID")]
    pub item_id: String,
    #[command(flatten)]
    pub when: NewTimeArgs,
    /// New text: replaces the email's text body or the chat message, keeping the rest.
    #[arg(long)]
    pub text: Option<String>,
    /// New policy for activity in the ticket.
    #[arg(long, value_enum)]
    pub on_activity: Option<OnActivityArg>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater activity`.
#[derive(Debug, Clone, ClapArgs)]
pub struct ActivityArgs {
    /// The ticket that got a new message.
    #[arg(long)]
    pub ticket: String,
    /// Who wrote it.
    #[arg(long, value_enum)]
    pub author_kind: AuthorKindArg,
    /// The helpdesk's id of the new message.
    #[arg(long, value_name = "ID")]
    pub message_id: String,
    /// When it was written (forms of `schedule --at`; default: now).
    #[arg(long, value_name = "WHEN")]
    pub at: Option<String>,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `sendlater watch`.
#[derive(Debug, Clone, ClapArgs)]
pub struct WatchArgs {
    /// Resume after this event sequence number (0: from the oldest retained event).
    #[arg(long, value_name = "SEQ", default_value_t = 0)]
    pub after: u64,
    #[command(flatten)]
    pub client: ClientArgs,
}

/// `--channel`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum ChannelArg {
    Email,
    Chat,
}

/// `--kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum KindArg {
    /// A reply in an existing ticket.
    Reply,
    /// A new ticket, invisible to the client until sent.
    Ticket,
}

/// `--on-activity`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnActivityArg {
    /// Turn the pending reply into an internal note.
    Convert,
    /// Send it anyway.
    Keep,
    /// Cancel it.
    Cancel,
}

/// `--on-late`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OnLateArg {
    /// Send it anyway, late.
    Send,
    /// Turn it into an internal note (replies only).
    Note,
    /// Mark it failed.
    Fail,
}

/// `--state`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum StateArg {
    Pending,
    Dispatching,
    Sent,
    Failed,
    Cancelled,
    /// Converted to an internal note.
    Note,
}

/// `--audience`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AudienceArg {
    Staff,
    Client,
}

/// `--author-kind`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AuthorKindArg {
    Client,
    Staff,
}

impl Command {
    /// The connection flags of a client subcommand; `None` for `serve`.
    pub fn client_args(&self) -> Option<&ClientArgs> {
        match self {
            Command::Serve(_)
            | Command::Connector(_)
            | Command::Backup(_)
            | Command::Migrate(_)
            | Command::Cluster(_) => None,
            Command::Schedule(a) => Some(&a.client),
            Command::List(a) => Some(&a.client),
            Command::Tickets(a) => Some(&a.client),
            Command::Timeline(a) => Some(&a.client),
            Command::Get(a) | Command::SendNow(a) | Command::Cancel(a) => Some(&a.client),
            Command::Reschedule(a) => Some(&a.client),
            Command::Activity(a) => Some(&a.client),
            Command::Watch(a) => Some(&a.client),
            Command::Hours(HoursCommand::Get(a)) => Some(&a.client),
            Command::Hours(HoursCommand::Set(a)) => Some(&a.client),
            Command::Pause(a) | Command::Resume(a) => Some(&a.client),
            Command::RateLimit(a) => Some(&a.client),
            Command::Controls(a) => Some(&a.client),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn the_clap_definition_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn schedule_needs_exactly_one_of_at_and_in() {
        let base = [
            "sendlater",
            "schedule",
            "--account",
            "acme",
            "--ticket",
            "T1",
            "--channel",
            "chat",
            "--author",
            "alice",
        ];
        let neither = Args::try_parse_from(base);
        assert!(neither.is_err());
        let both = Args::try_parse_from(base.iter().chain(&["--at", "09:00", "--in", "1h"]));
        assert!(both.is_err());
        let one = Args::try_parse_from(base.iter().chain(&["--in", "1h"]));
        assert!(one.is_ok(), "{one:?}");
    }

    #[test]
    fn list_all_and_page_token_do_not_mix() {
        let parsed = Args::try_parse_from([
            "sendlater",
            "list",
            "--account",
            "a",
            "--all",
            "--page-token",
            "x",
        ]);
        assert!(parsed.is_err());
    }
}
