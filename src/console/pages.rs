//! The console's HTML, written with maud: every `(value)` is HTML-escaped, so item
//! text, subjects and ids are shown as text whatever they hold. No inline script or
//! style anywhere (the Content-Security-Policy forbids them).

use chrono::{DateTime, Utc};
use maud::{html, Markup, DOCTYPE};
use serde::Deserialize;

use super::Viewer;
use crate::config::Accounts;
use crate::dispatch::ConnectorInfo;
use crate::domain::{
    Channel, ChatContent, Content, DeliveryWindow, EmailContent, Item, Kind, LocalTime, Millis,
    NewItem, OnActivity, OnLate, State, Timing,
};
use crate::engine::ControlsSnapshot;
use crate::engine::{DeferredTicket, Order, Page};
use crate::metrics::Gauges;

/// Rows per page of the deferred-sending view.
pub const PAGE_SIZE: u32 = 25;

/// `s` as one URL path segment (ids are restricted, but never trust that here).
pub fn path_segment(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for b in s.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

fn utc(t: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(t)
        .map(|d| d.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| t.to_string())
}

fn iso(t: Millis) -> String {
    DateTime::<Utc>::from_timestamp_millis(t)
        .map(|d| d.to_rfc3339_opts(chrono::SecondsFormat::Millis, true))
        .unwrap_or_default()
}

/// A time: UTC in the HTML, turned into the viewer's zone by console.js.
fn time(t: Millis) -> Markup {
    html! { time.local datetime=(iso(t)) title=(utc(t)) { (utc(t)) } }
}

fn layout(title: &str, viewer: Option<&Viewer>, account: Option<&str>, body: Markup) -> Markup {
    html! {
        (DOCTYPE)
        html lang="en" {
            head {
                meta charset="utf-8";
                meta name="viewport" content="width=device-width, initial-scale=1";
                title { (title) " · sendlater" }
                link rel="stylesheet" href="/static/console.css";
                script src="/static/console.js" defer {}
            }
            body {
                header.top {
                    a.brand href="/" { "sendlater" }
                    @if let Some(a) = account {
                        nav {
                            a href={ "/accounts/" (path_segment(a)) "/deferred" } { "Deferred sending" }
                            a href={ "/accounts/" (path_segment(a)) "/schedule" } { "Schedule" }
                        }
                        span.account { "account " strong { (a) } }
                    }
                    @if let Some(v) = viewer {
                        @if matches!(v.identity.accounts, Accounts::All) {
                            a.ops href="/operations" { "Operations" }
                        }
                        form.logout method="post" action="/logout" {
                            input type="hidden" name="csrf" value=(v.csrf);
                            button type="submit" { "Log out" }
                        }
                    }
                }
                main { (body) }
            }
        }
    }
}

/// An error page.
pub fn error(title: &str, detail: &str) -> Markup {
    layout(
        title,
        None,
        None,
        html! {
            h1 { (title) }
            p.error { (detail) }
            p { a href="/" { "Back to the start" } }
        },
    )
}

/// The login form.
pub fn login(problem: Option<&str>, login_csrf: &str) -> Markup {
    layout(
        "Log in",
        None,
        None,
        html! {
            h1 { "Log in" }
            @if let Some(p) = problem { p.error { (p) } }
            form #login method="post" action="/login" {
                input type="hidden" name="login_csrf" value=(login_csrf);
                label { "Access token " input type="password" name="token" autocomplete="off" required; }
                button type="submit" { "Log in" }
            }
            p.hint { "The same bearer tokens as the gRPC API; a session sees only its token's accounts." }
        },
    )
}

/// The start page: the token's accounts, or a box to name one.
pub fn home(accounts: &Accounts) -> Markup {
    html! {
        (layout("Accounts", None, None, html! {
            h1 { "Accounts" }
            @match accounts {
                Accounts::Only(list) => {
                    ul.accounts {
                        @for a in list {
                            li { a href={ "/accounts/" (path_segment(a)) "/deferred" } { (a) } }
                        }
                    }
                }
                Accounts::All => {
                    form #go method="get" action="/" {
                        label { "Account " input type="text" name="account" required; }
                        button type="submit" { "Open" }
                    }
                    p { a href="/operations" { "Operations" } }
                }
            }
        }))
    }
}

/// The deferred-sending view.
pub fn deferred(
    account: &str,
    order: Order,
    token: &str,
    page: &Page<DeferredTicket>,
    after: u64,
    v: &Viewer,
) -> Markup {
    let base = format!("/accounts/{}/deferred", path_segment(account));
    layout(
        "Deferred sending",
        Some(v),
        Some(account),
        html! {
            h1 { "Deferred sending" }
            p.controls {
                "Sorted by next send time: "
                a #order-asc href={ (base) "?order=asc" } aria-current=[(order == Order::Asc).then_some("true")] { "soonest first" }
                " · "
                a #order-desc href={ (base) "?order=desc" } aria-current=[(order == Order::Desc).then_some("true")] { "latest first" }
                " · "
                a href={ "/accounts/" (path_segment(account)) "/schedule" } { "Schedule a message" }
            }
            div #live data-events={ "/accounts/" (path_segment(account)) "/events" }
                data-after=(after)
                data-fragment={ (base) "?order=" (order_param(order)) "&page_token=" (path_segment(token)) "&fragment=1" } {
                (deferred_table(account, order, page))
            }
        },
    )
}

fn order_param(o: Order) -> &'static str {
    match o {
        Order::Asc => "asc",
        Order::Desc => "desc",
    }
}

/// The table of the deferred-sending view (also served alone, for live updates).
pub fn deferred_table(account: &str, order: Order, page: &Page<DeferredTicket>) -> Markup {
    html! {
        @if page.items.is_empty() {
            p #empty { "Nothing is waiting to be sent." }
        } @else {
            table #deferred {
                thead { tr { th { "Ticket" } th { "Next send" } th { "Pending" } } }
                tbody {
                    @for t in &page.items {
                        tr.ticket data-ticket=(t.ticket_id) {
                            td { a.ticket-link href={ "/accounts/" (path_segment(account)) "/tickets/" (path_segment(&t.ticket_id)) } { (t.ticket_id) } }
                            td.next-send { (time(t.next_send_at)) }
                            td.count { (t.pending_count) }
                        }
                    }
                }
            }
        }
        @if !page.next_page_token.is_empty() {
            p { a #next-page href={ "/accounts/" (path_segment(account)) "/deferred?order=" (order_param(order)) "&page_token=" (path_segment(&page.next_page_token)) } { "Next page" } }
        }
    }
}

/// A ticket: the staff timeline (or the client's view).
pub fn ticket(
    account: &str,
    ticket: &str,
    items: &[Item],
    client: bool,
    after: u64,
    v: &Viewer,
) -> Markup {
    let base = format!(
        "/accounts/{}/tickets/{}",
        path_segment(account),
        path_segment(ticket)
    );
    layout(
        &format!("Ticket {ticket}"),
        Some(v),
        Some(account),
        html! {
            h1 { "Ticket " (ticket) }
            p.controls {
                @if client {
                    "The client's view: only what was sent. "
                    a #staff-view href=(base) { "Back to the staff view" }
                } @else {
                    a #client-view href={ (base) "?view=client" } { "Show the client's view" }
                    " · "
                    a href={ "/accounts/" (path_segment(account)) "/schedule?ticket_id=" (path_segment(ticket)) } { "Schedule a reply" }
                }
            }
            div #live data-events={ "/accounts/" (path_segment(account)) "/events" }
                data-after=(after)
                data-ticket=(ticket)
                data-fragment={ (base) "?fragment=1" @if client { "&view=client" } } {
                (timeline(account, items, client, &v.csrf))
            }
        },
    )
}

fn state_class(s: State) -> &'static str {
    match s {
        State::Pending | State::Dispatching => "pending",
        State::Sent => "sent",
        State::Failed => "failed",
        State::Cancelled => "cancelled",
        State::ConvertedToNote => "note",
    }
}

/// The timeline of a ticket (also served alone, for live updates).
pub fn timeline(account: &str, items: &[Item], client: bool, csrf: &str) -> Markup {
    html! {
        @if items.is_empty() {
            p #empty { @if client { "The client sees nothing in this ticket yet." } @else { "Nothing in this ticket." } }
        } @else {
            ol #timeline {
                @for i in items { (item(account, i, client, csrf)) }
            }
        }
    }
}

fn zone_note(i: &Item) -> Option<String> {
    let l = i.timing.send_at_local.as_ref()?;
    Some(format!(
        "scheduled as {} {}",
        l.local.format("%Y-%m-%d %H:%M"),
        l.zone_name()
    ))
}

fn item(account: &str, i: &Item, client: bool, csrf: &str) -> Markup {
    let id = i.public_id();
    let action = |a: &str| {
        format!(
            "/accounts/{}/items/{}/{a}",
            path_segment(account),
            path_segment(&id)
        )
    };
    html! {
        li class={ "item " (state_class(i.state)) } id=(id) data-item=(id) data-state=(i.state.name()) {
            div.meta {
                span.state { (state_label(i)) }
                " "
                span.kind { (i.kind.name()) " · " (i.channel.name()) }
                " "
                (time(i.timeline_at()))
                @if !client {
                    @if let Some(z) = zone_note(i) { " " span.zone { "(" (z) ")" } }
                    " " span.author { "by " (i.author_id) }
                }
            }
            div.content { (content(&i.content, client)) }
            @if !client {
                @match i.state {
                    State::Pending => {
                        div.actions {
                            form.send-now method="post" action=(action("send-now")) {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Send now" }
                            }
                            form.cancel method="post" action=(action("cancel")) {
                                input type="hidden" name="csrf" value=(csrf);
                                button type="submit" { "Cancel send" }
                            }
                            form.reschedule method="post" action=(action("reschedule")) {
                                input type="hidden" name="csrf" value=(csrf);
                                input.tz type="hidden" name="tz" value="UTC";
                                input type="text" name="when" placeholder="tomorrow 09:00" required;
                                button type="submit" { "Reschedule" }
                            }
                            details.edit {
                                summary { "Edit text" }
                                form.edit method="post" action=(action("edit")) {
                                    input type="hidden" name="csrf" value=(csrf);
                                    @if let Content::Email(e) = &i.content {
                                        input type="text" name="subject" value=(e.subject);
                                    }
                                    textarea name="text" rows="4" { (content_text(&i.content)) }
                                    button type="submit" { "Save" }
                                }
                            }
                        }
                    }
                    State::Dispatching => { p.hint { "Being sent by a connector." } }
                    State::ConvertedToNote => {
                        p.note-at {
                            "Internal note, at the time it was written; it was to go out at " (time(i.send_at)) "."
                            @if let Some(a) = &i.converted_by {
                                " Converted because " (a.author_kind.name().to_lowercase()) " message "
                                span.by { (a.message_id) } " came first (" (time(a.occurred_at)) ")."
                            } @else if let Some(l) = i.timing.late_by {
                                " Converted because it was " (l / 1000) " s late."
                            }
                        }
                    }
                    State::Sent => {
                        @if let Some(p) = &i.provider_message_id { p.provider { "Provider id " span.provider-id { (p) } } }
                    }
                    State::Failed => {
                        @if let Some(e) = &i.last_error { p.error { (e) } }
                    }
                    State::Cancelled => {}
                }
            }
        }
    }
}

fn state_label(i: &Item) -> &'static str {
    match i.state {
        State::Pending => "Scheduled",
        State::Dispatching => "Sending",
        State::Sent => "Sent",
        State::Failed => "Failed",
        State::Cancelled => "Cancelled",
        State::ConvertedToNote => "Note",
    }
}

fn content_text(c: &Content) -> &str {
    match c {
        Content::Email(e) => &e.text_body,
        Content::Chat(c) => &c.text,
    }
}

fn content(c: &Content, client: bool) -> Markup {
    html! {
        @match c {
            Content::Email(e) => {
                p.subject { strong { (e.subject) } }
                p.recipients { "To " (e.to.join(", ")) @if !client && !e.bcc.is_empty() { " · Bcc " (e.bcc.join(", ")) } }
                pre.body { (e.text_body) }
            }
            Content::Chat(ch) => {
                pre.body { (ch.text) }
            }
        }
    }
}

/// The schedule form's fields (also its prefill from the query string).
#[derive(Debug, Default, Deserialize)]
#[serde(default)]
pub struct ScheduleForm {
    pub csrf: String,
    pub kind: String,
    pub channel: String,
    pub ticket_id: String,
    pub author_id: String,
    pub to: String,
    pub subject: String,
    pub conversation_id: String,
    pub text: String,
    pub when: String,
    pub tz: String,
    pub delivery_window: String,
    pub max_lateness_minutes: String,
    pub on_late: String,
    pub on_activity: String,
}

/// Reads a send time as the CLI does (`tomorrow 09:00`, `in 30m`, `2026-12-01 09:00`,
/// RFC 3339) in zone `tz`: the instant, and the local time when one was given.
///
/// # Errors
/// A message naming the accepted forms.
pub fn parse_when(
    when: &str,
    tz: Option<&str>,
    now: Millis,
) -> Result<(Millis, Option<LocalTime>), String> {
    use crate::domain::when::{parse_in, parse_when_local, When};
    let zone: chrono_tz::Tz = tz
        .filter(|t| !t.is_empty())
        .unwrap_or("UTC")
        .parse()
        .map_err(|_| format!("unknown time zone {tz:?}"))?;
    let now = DateTime::<Utc>::from_timestamp_millis(now).ok_or("clock out of range")?;
    let when = when.trim();
    if let Some(rest) = when.strip_prefix("in ") {
        let t = parse_in(rest.trim(), now).map_err(|e| e.to_string())?;
        return Ok((t.timestamp_millis(), None));
    }
    match parse_when_local(when, now, zone).map_err(|e| e.to_string())? {
        When::Instant(t) => Ok((t.timestamp_millis(), None)),
        When::Local(local) => {
            let lt = LocalTime { local, zone };
            Ok((lt.resolve(), Some(lt)))
        }
    }
}

impl ScheduleForm {
    /// The item the form asks for, going out at `send_at` (read from `when` by the
    /// caller); validation proper is the engine's.
    ///
    /// # Errors
    /// A message for a field the form could not read.
    pub fn to_new_item(
        &self,
        account: &str,
        (send_at, send_at_local): (Millis, Option<LocalTime>),
    ) -> Result<NewItem, String> {
        let kind = match self.kind.as_str() {
            "new_ticket" => Kind::NewTicket,
            _ => Kind::Reply,
        };
        let content = match self.channel.as_str() {
            "chat" => Content::Chat(ChatContent {
                conversation_id: self.conversation_id.trim().to_owned(),
                text: self.text.clone(),
                attachments: Vec::new(),
            }),
            _ => Content::Email(EmailContent {
                to: self
                    .to
                    .split(',')
                    .map(str::trim)
                    .filter(|s| !s.is_empty())
                    .map(str::to_owned)
                    .collect(),
                subject: self.subject.clone(),
                text_body: self.text.clone(),
                ..Default::default()
            }),
        };
        let mut timing = Timing {
            send_at_local,
            ..Default::default()
        };
        if self.delivery_window == "business_hours" {
            timing.window = Some(DeliveryWindow::BusinessHours);
        }
        if !self.max_lateness_minutes.trim().is_empty() {
            let m: i64 = self
                .max_lateness_minutes
                .trim()
                .parse()
                .map_err(|_| "max lateness: a whole number of minutes".to_owned())?;
            // 0 is "no limit", as a zero Duration over gRPC; a negative number is
            // left to the engine's validation, which refuses it naming the field.
            timing.max_lateness = (m != 0).then(|| m.saturating_mul(60_000));
        }
        timing.on_late = match self.on_late.as_str() {
            "convert_to_note" => Some(OnLate::ConvertToNote),
            "fail" => Some(OnLate::Fail),
            _ => None,
        };
        Ok(NewItem {
            account_id: account.to_owned(),
            ticket_id: self.ticket_id.trim().to_owned(),
            kind,
            channel: content.channel(),
            author_id: self.author_id.trim().to_owned(),
            content,
            send_at,
            on_activity: match self.on_activity.as_str() {
                "keep" => OnActivity::Keep,
                "cancel" => OnActivity::Cancel,
                _ => OnActivity::ConvertToNote,
            },
            request_id: None,
            timing,
        })
    }
}

fn selected(cur: &str, v: &str) -> Option<&'static str> {
    (cur == v).then_some("selected")
}

/// The schedule form.
pub fn schedule(account: &str, f: &ScheduleForm, problem: Option<&str>, v: &Viewer) -> Markup {
    let action = format!("/accounts/{}/schedule", path_segment(account));
    layout(
        "Schedule",
        Some(v),
        Some(account),
        html! {
            h1 { "Schedule a message" }
            @if let Some(p) = problem { p.error #problem { (p) } }
            form #schedule method="post" action=(action) {
                input type="hidden" name="csrf" value=(v.csrf);
                input.tz type="hidden" name="tz" value=(if f.tz.is_empty() { "UTC" } else { &f.tz });
                fieldset {
                    label { "What " select name="kind" {
                        option value="reply" selected=[selected(&f.kind, "reply")] { "A reply in a ticket" }
                        option value="new_ticket" selected=[selected(&f.kind, "new_ticket")] { "A new ticket" }
                    } }
                    label { "By " select name="channel" {
                        option value="email" selected=[selected(&f.channel, "email")] { "email" }
                        option value="chat" selected=[selected(&f.channel, "chat")] { "chat" }
                    } }
                    label { "Ticket " input type="text" name="ticket_id" value=(f.ticket_id) required; }
                    label { "Author " input type="text" name="author_id" value=(f.author_id) required; }
                }
                fieldset.email {
                    legend { "Email" }
                    label { "To " input type="text" name="to" value=(f.to) placeholder="client@example.com"; }
                    label { "Subject " input type="text" name="subject" value=(f.subject); }
                }
                fieldset.chat {
                    legend { "Chat" }
                    label { "Conversation " input type="text" name="conversation_id" value=(f.conversation_id); }
                }
                label.text { "Text " textarea name="text" rows="6" required { (f.text) } }
                fieldset {
                    legend { "When it goes out" }
                    label { "When " input type="text" name="when" value=(f.when) placeholder="tomorrow 09:00, in 30m, next business morning" required; }
                    span.hint { "in your time zone, " span.tz-name { "UTC" } }
                    label { "Window " select name="delivery_window" {
                        option value="any" selected=[selected(&f.delivery_window, "any")] { "any time" }
                        option value="business_hours" selected=[selected(&f.delivery_window, "business_hours")] { "business hours only" }
                    } }
                    label { "At most " input type="number" min="1" name="max_lateness_minutes" value=(f.max_lateness_minutes); " minutes late" }
                    label { "If later " select name="on_late" {
                        option value="send" selected=[selected(&f.on_late, "send")] { "send anyway" }
                        option value="convert_to_note" selected=[selected(&f.on_late, "convert_to_note")] { "make it a note" }
                        option value="fail" selected=[selected(&f.on_late, "fail")] { "fail" }
                    } }
                    label { "If the ticket moves first " select name="on_activity" {
                        option value="convert_to_note" selected=[selected(&f.on_activity, "convert_to_note")] { "make it a note" }
                        option value="keep" selected=[selected(&f.on_activity, "keep")] { "send anyway" }
                        option value="cancel" selected=[selected(&f.on_activity, "cancel")] { "cancel it" }
                    } }
                }
                button type="submit" { "Schedule" }
            }
        },
    )
}

/// A histogram as a small bar chart: one bar per bucket (non-cumulative counts).
pub fn histogram_svg(id: &str, buckets: &[(f64, u64)]) -> Markup {
    let counts: Vec<u64> = buckets
        .iter()
        .scan(0u64, |prev, &(_, cum)| {
            let n = cum.saturating_sub(*prev);
            *prev = cum;
            Some(n)
        })
        .collect();
    let max = counts.iter().copied().max().unwrap_or(0).max(1);
    let w = 28usize;
    let h = 120u64;
    let width = w * counts.len().max(1);
    html! {
        svg id=(id) xmlns="http://www.w3.org/2000/svg" width=(width) height=(h + 30) role="img" {
            title { "lateness histogram" }
            @for (i, (&(bound, _), &n)) in buckets.iter().zip(&counts).enumerate() {
                @let bh = n * h / max;
                rect x=(i * w + 2) y=(h - bh) width=(w - 4) height=(bh) class="bar" {
                    title { "≤ " (bound_label(bound)) ": " (n) }
                }
                text x=(i * w + w / 2) y=(h + 14) text-anchor="middle" class="axis" { (bound_label(bound)) }
            }
        }
    }
}

fn bound_label(b: f64) -> String {
    if b.is_infinite() {
        "+∞".into()
    } else if b < 1.0 {
        format!("{}ms", (b * 1000.0).round())
    } else {
        format!("{b}s")
    }
}

fn mean(h: &crate::metrics::HistogramSnapshot) -> f64 {
    if h.count == 0 {
        0.0
    } else {
        h.sum / h.count as f64
    }
}

/// The node serving the console, for the operations page.
pub struct ThisNode {
    pub node_id: String,
    /// Its advertised gRPC address.
    pub advertise: String,
    /// The partitions it owns now, or why they cannot be read.
    pub partitions: Result<Vec<u32>, String>,
    /// Partitions of the database.
    pub of: u32,
}

/// The operations page.
pub fn operations(
    connectors: &[ConnectorInfo],
    controls: &ControlsSnapshot,
    gauges: &dyn Gauges,
    node: Option<&ThisNode>,
    v: &Viewer,
) -> Markup {
    let (paused, limits) = controls.entries();
    let snap = crate::metrics::snapshot(gauges);
    layout(
        "Operations",
        Some(v),
        None,
        html! {
            h1 { "Operations" }
            @if let Some(n) = node {
                section #node {
                    h2 { "This node" }
                    table {
                        tbody {
                            tr { td { "node id" } td.node-id { (n.node_id) } }
                            tr { td { "advertised address" } td.node-address { (n.advertise) } }
                            tr {
                                td { "partitions owned" }
                                td.node-partitions {
                                    @match &n.partitions {
                                        Ok(owned) => {
                                            (owned.len()) " of " (n.of)
                                            @if !owned.is_empty() {
                                                ": " (crate::cluster::partition_ranges(owned))
                                            }
                                        }
                                        Err(why) => { "cannot be read: " (why) }
                                    }
                                }
                            }
                        }
                    }
                }
            }
            section #connectors {
                h2 { "Connectors" }
                @if connectors.is_empty() { p { "No connector is connected." } } @else {
                    table {
                        thead { tr { th { "Connector" } th { "Channels" } th { "In flight" } th { "State" } } }
                        tbody {
                            @for c in connectors {
                                tr {
                                    td { (c.connector_id) }
                                    td { (c.channels.iter().map(|c| c.name()).collect::<Vec<_>>().join(", ")) }
                                    td { (c.in_flight) " / " (c.max_in_flight) }
                                    td { @if c.stalled { "stalled" } @else { "ok" } }
                                }
                            }
                        }
                    }
                }
            }
            section #backlog {
                h2 { "Backlog" }
                table {
                    thead { tr { th { "" } th { "Items" } } }
                    tbody {
                        tr { td { "pending timers" } td { (snap.pending_timers) } }
                        @for ch in Channel::ALL {
                            tr { td { "due, waiting (" (ch.name()) ")" } td { (snap.due_backlog.get(*ch)) } }
                        }
                        tr { td { "held back by a pause" } td { (snap.held_back_paused) } }
                        tr { td { "held back by a rate limit" } td { (snap.held_back_rate_limited) } }
                    }
                }
            }
            section #paused {
                h2 { "Paused and limited" }
                @if paused.is_empty() && limits.is_empty() { p { "Nothing is paused or limited." } }
                ul {
                    @for (a, ch) in &paused { li { "paused: " (a) " · " (ch.name()) } }
                    @for (a, ch, n) in &limits { li { "limited: " (a) " · " (ch.name()) " · " (n) " per minute" } }
                }
            }
            section #lateness {
                h2 { "Lateness (time from due to handed out)" }
                @for ch in Channel::ALL {
                    @let h = snap.lateness.get(*ch);
                    h3 { (ch.name()) " · " (h.count) " jobs" }
                    (histogram_svg(&format!("lateness-{}", ch.name().to_lowercase()), &h.buckets))
                }
            }
            section #commits {
                h2 { "Group commit" }
                table {
                    tbody {
                        tr { td { "groups" } td { (snap.commit_seconds.count) } }
                        tr { td { "mean writes per group" } td { (format!("{:.1}", mean(&snap.commit_batch_size))) } }
                        tr { td { "mean commit + fsync" } td { (format!("{:.2} ms", mean(&snap.commit_seconds) * 1000.0)) } }
                        tr { td { "schedules / dispatches / acks / nacks" } td { (snap.schedules) " / " (snap.dispatches) " / " (snap.acks) " / " (snap.nacks) } }
                    }
                }
                (histogram_svg("commit-sizes", &snap.commit_batch_size.buckets))
            }
        },
    )
}
