//! Prometheus metrics, served as text on a separate `--metrics-listen` address.
//!
//! The instruments and the exposition are the Prometheus project's `prometheus-client`
//! crate. Counters ([`Counter`]) and histograms ([`Histogram`]) belong to a server: each
//! store holds its own [`Metrics`] (the engine, the dispatcher and the writer count into
//! it), so two servers in one process (tests) never see each other's figures and a test
//! can assert exact values. A counter increment is one relaxed atomic add; a histogram
//! observation takes the histogram's own uncontended lock for a few additions (each
//! histogram has a single writer: the dispatcher for lateness, the writer thread for
//! group commits).
//!
//! Gauges (pending timers, due backlog, connectors, held back) are read at scrape time:
//! each scrape builds a [`Registry`] that holds handles on the server's counters and
//! histograms ([`Gauges::metrics`]) plus the gauges of the [`Gauges`] it was given, read
//! at that moment as constant gauges.
//!
//! [`render`] is the Prometheus text format, version 0.0.4. [`snapshot`] is the same text
//! read back into numbers, for the staff console: it shows what `/metrics` serves.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::{TokioIo, TokioTimer};
use prometheus_client::encoding::{prometheus_text, EncodeMetric, MetricEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::gauge::{ConstGauge, Gauge};
use prometheus_client::metrics::histogram::Histogram;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::Channel;

/// Upper bounds of the seconds histograms (lateness, commit latency); +Inf is implied.
const SECONDS: [f64; 15] = [
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];
/// Upper bounds of the writes-per-group-commit histogram; +Inf is implied.
const BATCH: [f64; 12] = [
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// The counters and histograms of one server.
pub struct Metrics {
    pub schedules: Counter,
    pub dispatches: Counter,
    /// Leases the dispatcher took itself, without waiting for the writer.
    pub claimed_leases: Counter,
    pub acks: Counter,
    pub nacks: Counter,
    pub abandoned_leases: Counter,
    /// Answers that named no job their stream holds (forged, duplicate, malformed).
    pub ignored_answers: Counter,
    /// Connector streams ended because a lease of theirs expired unanswered.
    pub stalled_connectors: Counter,
    /// Items failed because their stored row could not be read.
    pub unreadable_items: Counter,
    /// Group commits whose connection was lost around COMMIT (PostgreSQL): the writer
    /// learned their outcome again from the group marker.
    pub commit_outcome_unknown: Counter,
    /// Lateness of first deliveries (handed to a connector minus send_at), per channel.
    pub lateness_email: Histogram,
    pub lateness_chat: Histogram,
    pub commit_batch_size: Histogram,
    pub commit_seconds: Histogram,
    /// Partitions whose lease this node holds (several nodes on PostgreSQL; on SQLite
    /// one node owns them all).
    pub partitions_owned: Gauge,
    /// Partitions this node took over from another owner (or took for the first time).
    pub partition_takeovers: Counter,
    /// How long one renewal of this node's leases took.
    pub lease_renew_seconds: Histogram,
    /// Writes this node forwarded to the owner of their partition.
    pub forwarded_requests: Counter,
    /// Forwarded calls this node answered "moved": it does not own their partition.
    pub moved_requests: Counter,
    /// Writes refused because their partition's epoch had moved on (a stale owner).
    pub fenced_writes: Counter,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            schedules: Counter::default(),
            dispatches: Counter::default(),
            claimed_leases: Counter::default(),
            acks: Counter::default(),
            nacks: Counter::default(),
            abandoned_leases: Counter::default(),
            ignored_answers: Counter::default(),
            stalled_connectors: Counter::default(),
            unreadable_items: Counter::default(),
            commit_outcome_unknown: Counter::default(),
            lateness_email: Histogram::new(SECONDS),
            lateness_chat: Histogram::new(SECONDS),
            commit_batch_size: Histogram::new(BATCH),
            commit_seconds: Histogram::new(SECONDS),
            partitions_owned: Gauge::default(),
            partition_takeovers: Counter::default(),
            lease_renew_seconds: Histogram::new(SECONDS),
            forwarded_requests: Counter::default(),
            moved_requests: Counter::default(),
            fenced_writes: Counter::default(),
        }
    }
}

impl Metrics {
    /// The lateness histogram of a channel.
    pub fn lateness(&self, ch: Channel) -> &Histogram {
        match ch {
            Channel::Email => &self.lateness_email,
            Channel::Chat => &self.lateness_chat,
        }
    }
}

/// Gauges read at scrape time.
pub trait Gauges: Send + Sync + 'static {
    /// The server's counters and histograms.
    fn metrics(&self) -> &Metrics;
    /// Timers on the wheel.
    fn pending_timers(&self) -> u64;
    /// Due items not yet leased, per channel.
    fn due_backlog(&self, ch: Channel) -> u64;
    /// Connector streams connected.
    fn connectors(&self) -> u64;
    /// Due items held back by a pause (`true`) or a rate limit (`false`).
    fn held_back(&self, paused: bool) -> u64;
}

/// The `channel` label value of a channel.
fn channel_label(ch: Channel) -> &'static str {
    match ch {
        Channel::Email => "email",
        Channel::Chat => "chat",
    }
}

/// One metric family whose series differ by the value of one label.
#[derive(Debug)]
struct ByLabel<M> {
    label: &'static str,
    series: Vec<(&'static str, M)>,
    metric_type: MetricType,
}

impl<M: EncodeMetric + std::fmt::Debug> EncodeMetric for ByLabel<M> {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), std::fmt::Error> {
        for (value, metric) in &self.series {
            metric.encode(encoder.encode_family(&[(self.label, *value)])?)?;
        }
        Ok(())
    }

    fn metric_type(&self) -> MetricType {
        self.metric_type
    }
}

/// What one scrape encodes: the process-wide instruments and `g`'s gauges, read now.
fn registry(g: &dyn Gauges) -> Registry {
    let m = g.metrics();
    let mut r = Registry::with_prefix("sendlater");
    // The library adds `_total` to counter names and a full stop to help texts.
    for (name, help, counter) in [
        ("schedules", "Items scheduled", &m.schedules),
        ("dispatches", "Jobs handed to connectors", &m.dispatches),
        (
            "claimed_leases",
            "Leases dispatch took without waiting for the store's writer (the rest were written first)",
            &m.claimed_leases,
        ),
        ("acks", "Acks received", &m.acks),
        ("nacks", "Nacks received", &m.nacks),
        (
            "abandoned_leases",
            "Leases that ended without an answer (expired or stream dropped)",
            &m.abandoned_leases,
        ),
        (
            "ignored_answers",
            "Acks/Nacks ignored: they named no job the answering stream holds",
            &m.ignored_answers,
        ),
        (
            "stalled_connectors",
            "Connector streams ended because a lease of theirs expired unanswered",
            &m.stalled_connectors,
        ),
        (
            "unreadable_items",
            "Items failed because their stored row could not be read",
            &m.unreadable_items,
        ),
        (
            "commit_outcome_unknown",
            "Group commits whose connection was lost around COMMIT; their outcome was read back from the database",
            &m.commit_outcome_unknown,
        ),
        (
            "partition_takeovers",
            "Partitions this node took the lease of",
            &m.partition_takeovers,
        ),
        (
            "forwarded_requests",
            "Writes forwarded to the node owning their partition",
            &m.forwarded_requests,
        ),
        (
            "moved_requests",
            "Forwarded calls answered moved: this node does not own their partition",
            &m.moved_requests,
        ),
        (
            "fenced_writes",
            "Writes refused because their partition's epoch moved on (a stale owner)",
            &m.fenced_writes,
        ),
    ] {
        r.register(name, help, counter.clone());
    }
    r.register(
        "pending_timers",
        "Timers on the wheel",
        ConstGauge::new(g.pending_timers()),
    );
    r.register(
        "due_backlog",
        "Due items waiting for a connector",
        ByLabel {
            label: "channel",
            series: [Channel::Email, Channel::Chat]
                .map(|ch| (channel_label(ch), ConstGauge::new(g.due_backlog(ch))))
                .into(),
            metric_type: MetricType::Gauge,
        },
    );
    r.register(
        "held_back",
        "Due items held back by a pause or a rate limit",
        ByLabel {
            label: "reason",
            series: vec![
                ("pause", ConstGauge::new(g.held_back(true))),
                ("rate_limit", ConstGauge::new(g.held_back(false))),
            ],
            metric_type: MetricType::Gauge,
        },
    );
    r.register(
        "connectors",
        "Connected connector streams",
        ConstGauge::new(g.connectors()),
    );
    r.register_with_unit(
        "dispatch_lateness",
        "First delivery to a connector minus send_at",
        Unit::Seconds,
        ByLabel {
            label: "channel",
            series: [Channel::Email, Channel::Chat]
                .map(|ch| (channel_label(ch), m.lateness(ch).clone()))
                .into(),
            metric_type: MetricType::Histogram,
        },
    );
    r.register(
        "commit_batch_size",
        "Writes per group commit",
        m.commit_batch_size.clone(),
    );
    r.register_with_unit(
        "commit",
        "Group commit latency",
        Unit::Seconds,
        m.commit_seconds.clone(),
    );
    r.register(
        "partitions_owned",
        "Partitions whose lease this node holds",
        m.partitions_owned.clone(),
    );
    r.register_with_unit(
        "lease_renew",
        "Time one renewal of this node's partition leases took",
        Unit::Seconds,
        m.lease_renew_seconds.clone(),
    );
    r
}

/// Renders the whole exposition (Prometheus text format 0.0.4).
pub fn render(g: &dyn Gauges) -> String {
    let mut out = String::with_capacity(8192);
    prometheus_text::encode(&mut out, &registry(g)).expect("formatting into a String");
    out
}

/// A histogram as exposed: cumulative buckets, sum and count.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct HistogramSnapshot {
    /// `(upper bound, observations <= it)`, ascending; the last bound is `f64::INFINITY`
    /// and its count equals `count`. Bounds are in the histogram's unit (seconds, or
    /// writes for the batch size).
    pub buckets: Vec<(f64, u64)>,
    /// Sum of the observations.
    pub sum: f64,
    /// Number of observations.
    pub count: u64,
}

/// One figure per channel.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct PerChannel<T> {
    pub email: T,
    pub chat: T,
}

impl<T> PerChannel<T> {
    /// The figure of `ch`.
    pub fn get(&self, ch: Channel) -> &T {
        match ch {
            Channel::Email => &self.email,
            Channel::Chat => &self.chat,
        }
    }

    fn get_mut(&mut self, ch: Channel) -> &mut T {
        match ch {
            Channel::Email => &mut self.email,
            Channel::Chat => &mut self.chat,
        }
    }
}

/// Everything `/metrics` serves, as numbers (see [`snapshot`]).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Snapshot {
    /// `sendlater_schedules_total`.
    pub schedules: u64,
    /// `sendlater_dispatches_total`.
    pub dispatches: u64,
    /// `sendlater_acks_total`.
    pub acks: u64,
    /// `sendlater_nacks_total`.
    pub nacks: u64,
    /// `sendlater_abandoned_leases_total`.
    pub abandoned_leases: u64,
    /// `sendlater_ignored_answers_total`.
    pub ignored_answers: u64,
    /// `sendlater_stalled_connectors_total`.
    pub stalled_connectors: u64,
    /// `sendlater_unreadable_items_total`.
    pub unreadable_items: u64,
    /// `sendlater_pending_timers`.
    pub pending_timers: u64,
    /// `sendlater_due_backlog{channel}`.
    pub due_backlog: PerChannel<u64>,
    /// `sendlater_connectors`.
    pub connectors: u64,
    /// `sendlater_held_back{reason="pause"}`.
    pub held_back_paused: u64,
    /// `sendlater_held_back{reason="rate_limit"}`.
    pub held_back_rate_limited: u64,
    /// `sendlater_dispatch_lateness_seconds{channel}`.
    pub lateness: PerChannel<HistogramSnapshot>,
    /// `sendlater_commit_batch_size`.
    pub commit_batch_size: HistogramSnapshot,
    /// `sendlater_commit_seconds`.
    pub commit_seconds: HistogramSnapshot,
}

/// The figures `/metrics` serves right now, with `g`'s gauges: the exposition of
/// [`render`] read back, so the console and a scrape cannot disagree.
pub fn snapshot(g: &dyn Gauges) -> Snapshot {
    Snapshot::parse(&render(g))
}

/// One sample line of a text exposition: `name{labels} value`.
struct Sample<'a> {
    name: &'a str,
    labels: Vec<(&'a str, &'a str)>,
    value: &'a str,
}

impl<'a> Sample<'a> {
    /// Parses a sample line; `None` for comments, blank lines and anything malformed.
    /// Label values are taken as written (the values this module exposes need no
    /// escapes).
    fn parse(line: &'a str) -> Option<Self> {
        if line.is_empty() || line.starts_with('#') {
            return None;
        }
        let (series, value) = line.rsplit_once(' ')?;
        let (name, labels) = match series.split_once('{') {
            None => (series, Vec::new()),
            Some((name, rest)) => {
                let labels = rest
                    .strip_suffix('}')?
                    .split(',')
                    .filter(|kv| !kv.is_empty())
                    .map(|kv| {
                        let (k, v) = kv.split_once('=')?;
                        Some((k, v.strip_prefix('"')?.strip_suffix('"')?))
                    })
                    .collect::<Option<Vec<_>>>()?;
                (name, labels)
            }
        };
        Some(Sample {
            name,
            labels,
            value,
        })
    }

    fn label(&self, key: &str) -> Option<&'a str> {
        self.labels.iter().find(|(k, _)| *k == key).map(|(_, v)| *v)
    }

    fn channel(&self) -> Option<Channel> {
        match self.label("channel")? {
            "email" => Some(Channel::Email),
            "chat" => Some(Channel::Chat),
            _ => None,
        }
    }

    fn u64(&self) -> u64 {
        self.value
            .parse()
            .unwrap_or_else(|_| self.value.parse::<f64>().unwrap_or(0.0) as u64)
    }

    fn f64(&self) -> f64 {
        self.value.parse().unwrap_or(0.0)
    }

    /// Adds this `_bucket`, `_sum` or `_count` sample of a histogram named `name` to `h`.
    fn fill(&self, name: &str, h: &mut HistogramSnapshot) {
        match self.name.strip_prefix(name) {
            Some("_bucket") => {
                if let Some(le) = self.label("le").and_then(|le| le.parse::<f64>().ok()) {
                    h.buckets.push((le, self.u64()));
                }
            }
            Some("_sum") => h.sum = self.f64(),
            Some("_count") => h.count = self.u64(),
            _ => {}
        }
    }
}

impl Snapshot {
    /// Reads an exposition made by [`render`]; series it does not know are skipped.
    fn parse(text: &str) -> Snapshot {
        let mut s = Snapshot::default();
        for sample in text.lines().filter_map(Sample::parse) {
            let n = sample.u64();
            match sample.name {
                "sendlater_schedules_total" => s.schedules = n,
                "sendlater_dispatches_total" => s.dispatches = n,
                "sendlater_acks_total" => s.acks = n,
                "sendlater_nacks_total" => s.nacks = n,
                "sendlater_abandoned_leases_total" => s.abandoned_leases = n,
                "sendlater_ignored_answers_total" => s.ignored_answers = n,
                "sendlater_stalled_connectors_total" => s.stalled_connectors = n,
                "sendlater_unreadable_items_total" => s.unreadable_items = n,
                "sendlater_pending_timers" => s.pending_timers = n,
                "sendlater_connectors" => s.connectors = n,
                "sendlater_due_backlog" => {
                    if let Some(ch) = sample.channel() {
                        *s.due_backlog.get_mut(ch) = n;
                    }
                }
                "sendlater_held_back" => match sample.label("reason") {
                    Some("pause") => s.held_back_paused = n,
                    Some("rate_limit") => s.held_back_rate_limited = n,
                    _ => {}
                },
                name if name.starts_with("sendlater_dispatch_lateness_seconds_") => {
                    if let Some(ch) = sample.channel() {
                        sample.fill(
                            "sendlater_dispatch_lateness_seconds",
                            s.lateness.get_mut(ch),
                        );
                    }
                }
                name if name.starts_with("sendlater_commit_batch_size_") => {
                    sample.fill("sendlater_commit_batch_size", &mut s.commit_batch_size);
                }
                name if name.starts_with("sendlater_commit_seconds_") => {
                    sample.fill("sendlater_commit_seconds", &mut s.commit_seconds);
                }
                _ => {}
            }
        }
        s
    }
}

/// The answer to one request on the metrics port.
fn respond(req: &Request<hyper::body::Incoming>, g: &dyn Gauges) -> Response<Full<Bytes>> {
    let (status, ctype, body) = match (req.method(), req.uri().path()) {
        (&Method::GET | &Method::HEAD, "/metrics") => {
            (StatusCode::OK, prometheus_text::CONTENT_TYPE, render(g))
        }
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "try /metrics\n".to_owned(),
        ),
    };
    let mut resp = Response::new(Full::new(Bytes::from(body)));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(ctype),
    );
    resp
}

/// Serves `GET /metrics` on `addr` until `stop`; returns the bound address. One
/// request per connection (the answer closes it); a request head must arrive within
/// 5 s.
///
/// # Errors
/// The address cannot be bound.
pub async fn serve(
    addr: SocketAddr,
    gauges: Arc<dyn Gauges>,
    stop: CancellationToken,
) -> std::io::Result<SocketAddr> {
    let listener = TcpListener::bind(addr).await?;
    let local = listener.local_addr()?;
    tokio::spawn(async move {
        loop {
            let (sock, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                () = stop.cancelled() => return,
            };
            let gauges = gauges.clone();
            tokio::spawn(async move {
                let service = hyper::service::service_fn(move |req| {
                    let resp = respond(&req, gauges.as_ref());
                    async move { Ok::<_, Infallible>(resp) }
                });
                let conn = hyper::server::conn::http1::Builder::new()
                    .keep_alive(false)
                    .timer(TokioTimer::new())
                    .header_read_timeout(Duration::from_secs(5))
                    .serve_connection(TokioIo::new(sock), service);
                // Bounds a client that reads the answer too slowly.
                let _ = tokio::time::timeout(Duration::from_secs(30), conn).await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Fixed gauges beside a fresh set of counters and histograms.
    #[derive(Default)]
    struct Fixed(Metrics);

    impl Gauges for Fixed {
        fn metrics(&self) -> &Metrics {
            &self.0
        }
        fn pending_timers(&self) -> u64 {
            7
        }
        fn due_backlog(&self, ch: Channel) -> u64 {
            match ch {
                Channel::Email => 3,
                Channel::Chat => 4,
            }
        }
        fn connectors(&self) -> u64 {
            2
        }
        fn held_back(&self, paused: bool) -> u64 {
            if paused {
                5
            } else {
                6
            }
        }
    }

    /// The value of one series in an exposition (as `tests/common::metric_value`).
    fn value(body: &str, series: &str) -> f64 {
        body.lines()
            .find(|l| l.starts_with(series) && l[series.len()..].starts_with(' '))
            .unwrap_or_else(|| panic!("{series} missing in:\n{body}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    }

    /// `h` against the `_bucket`/`_sum`/`_count` series `name{labels,le=...}` of `body`.
    fn assert_histogram(
        body: &str,
        h: &HistogramSnapshot,
        name: &str,
        labels: &str,
        bounds: &[f64],
    ) {
        let sep = if labels.is_empty() { "" } else { "," };
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        assert_eq!(h.buckets.len(), bounds.len() + 1, "{name}{braces}: {h:?}");
        for (i, &(le, n)) in h.buckets.iter().enumerate() {
            let want_le = bounds.get(i).copied().unwrap_or(f64::INFINITY);
            assert_eq!(le, want_le);
            let le = if le.is_infinite() {
                "+Inf".to_owned()
            } else {
                le.to_string()
            };
            let series = format!("{name}_bucket{{{labels}{sep}le=\"{le}\"}}");
            assert_eq!(n as f64, value(body, &series), "{series}");
        }
        assert!(
            h.buckets.windows(2).all(|w| w[0].1 <= w[1].1),
            "cumulative: {h:?}"
        );
        assert_eq!(h.buckets.last().unwrap().1, h.count);
        assert_eq!(
            h.count as f64,
            value(body, &format!("{name}_count{braces}"))
        );
        assert_eq!(h.sum, value(body, &format!("{name}_sum{braces}")));
    }

    #[test]
    fn the_exposition_keeps_every_name_label_and_type() {
        let body = render(&Fixed::default());
        for (name, kind) in [
            ("sendlater_schedules_total", "counter"),
            ("sendlater_dispatches_total", "counter"),
            ("sendlater_acks_total", "counter"),
            ("sendlater_nacks_total", "counter"),
            ("sendlater_abandoned_leases_total", "counter"),
            ("sendlater_ignored_answers_total", "counter"),
            ("sendlater_stalled_connectors_total", "counter"),
            ("sendlater_unreadable_items_total", "counter"),
            ("sendlater_commit_outcome_unknown_total", "counter"),
            ("sendlater_pending_timers", "gauge"),
            ("sendlater_due_backlog", "gauge"),
            ("sendlater_held_back", "gauge"),
            ("sendlater_connectors", "gauge"),
            ("sendlater_dispatch_lateness_seconds", "histogram"),
            ("sendlater_commit_batch_size", "histogram"),
            ("sendlater_commit_seconds", "histogram"),
            ("sendlater_partitions_owned", "gauge"),
            ("sendlater_partition_takeovers_total", "counter"),
            ("sendlater_lease_renew_seconds", "histogram"),
            ("sendlater_forwarded_requests_total", "counter"),
            ("sendlater_fenced_writes_total", "counter"),
        ] {
            assert!(
                body.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} {kind}:\n{body}"
            );
            assert!(body.contains(&format!("# HELP {name} ")), "{name}:\n{body}");
        }
        assert_eq!(value(&body, "sendlater_pending_timers"), 7.0);
        assert_eq!(
            value(&body, "sendlater_due_backlog{channel=\"email\"}"),
            3.0
        );
        assert_eq!(value(&body, "sendlater_due_backlog{channel=\"chat\"}"), 4.0);
        assert_eq!(value(&body, "sendlater_held_back{reason=\"pause\"}"), 5.0);
        assert_eq!(
            value(&body, "sendlater_held_back{reason=\"rate_limit\"}"),
            6.0
        );
        assert_eq!(value(&body, "sendlater_connectors"), 2.0);
        assert_eq!(value(&body, "sendlater_partitions_owned"), 0.0);
        for series in [
            "sendlater_dispatch_lateness_seconds_bucket{channel=\"chat\",le=\"0.001\"}",
            "sendlater_dispatch_lateness_seconds_bucket{channel=\"email\",le=\"300\"}",
            "sendlater_dispatch_lateness_seconds_bucket{channel=\"email\",le=\"+Inf\"}",
            "sendlater_dispatch_lateness_seconds_count{channel=\"chat\"}",
            "sendlater_dispatch_lateness_seconds_sum{channel=\"email\"}",
            "sendlater_commit_batch_size_bucket{le=\"1\"}",
            "sendlater_commit_batch_size_bucket{le=\"2048\"}",
            "sendlater_commit_batch_size_bucket{le=\"+Inf\"}",
            "sendlater_commit_seconds_bucket{le=\"0.025\"}",
            "sendlater_commit_seconds_count",
            "sendlater_commit_seconds_sum",
        ] {
            value(&body, series);
        }
    }

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        let fixed = Fixed::default();
        let before = snapshot(&fixed).commit_batch_size;
        for v in [0.5, 3.0, 3.0, 5000.0] {
            fixed.0.commit_batch_size.observe(v);
        }
        let after = snapshot(&fixed).commit_batch_size;
        let delta = |le: f64| {
            let at = |h: &HistogramSnapshot| h.buckets.iter().find(|b| b.0 == le).unwrap().1;
            at(&after) - at(&before)
        };
        // Its own histogram: nothing else observes it, so the figures are exact.
        assert_eq!(before.count, 0);
        assert_eq!(delta(1.0), 1);
        assert_eq!(delta(4.0), 3);
        assert_eq!(delta(2048.0), 3);
        assert_eq!(delta(f64::INFINITY), 4);
        assert_eq!(after.count, 4);
        assert_eq!(after.sum, 5006.5);
    }

    #[test]
    fn the_snapshot_shows_what_the_exposition_says() {
        let fixed = Fixed::default();
        fixed.0.schedules.inc_by(2);
        fixed.0.acks.inc();
        fixed.0.unreadable_items.inc();
        fixed.0.lateness(Channel::Chat).observe(0.003);
        fixed.0.lateness(Channel::Email).observe(42.0);
        fixed.0.commit_seconds.observe(0.0004);
        let body = render(&fixed);
        let s = Snapshot::parse(&body);
        for (n, series) in [
            (s.schedules, "sendlater_schedules_total"),
            (s.dispatches, "sendlater_dispatches_total"),
            (s.acks, "sendlater_acks_total"),
            (s.nacks, "sendlater_nacks_total"),
            (s.abandoned_leases, "sendlater_abandoned_leases_total"),
            (s.ignored_answers, "sendlater_ignored_answers_total"),
            (s.stalled_connectors, "sendlater_stalled_connectors_total"),
            (s.unreadable_items, "sendlater_unreadable_items_total"),
            (s.pending_timers, "sendlater_pending_timers"),
            (
                s.due_backlog.email,
                "sendlater_due_backlog{channel=\"email\"}",
            ),
            (
                s.due_backlog.chat,
                "sendlater_due_backlog{channel=\"chat\"}",
            ),
            (s.connectors, "sendlater_connectors"),
            (s.held_back_paused, "sendlater_held_back{reason=\"pause\"}"),
            (
                s.held_back_rate_limited,
                "sendlater_held_back{reason=\"rate_limit\"}",
            ),
        ] {
            assert_eq!(n as f64, value(&body, series), "{series}");
        }
        assert_eq!(
            (s.schedules, s.acks, s.unreadable_items, s.dispatches),
            (2, 1, 1, 0)
        );
        assert_eq!(
            (
                s.pending_timers,
                s.connectors,
                s.held_back_paused,
                s.held_back_rate_limited
            ),
            (7, 2, 5, 6)
        );
        assert_eq!(
            (s.due_backlog.email, *s.due_backlog.get(Channel::Chat)),
            (3, 4)
        );
        for ch in [Channel::Email, Channel::Chat] {
            let labels = format!("channel=\"{}\"", channel_label(ch));
            assert_histogram(
                &body,
                s.lateness.get(ch),
                "sendlater_dispatch_lateness_seconds",
                &labels,
                &SECONDS,
            );
            assert_eq!(s.lateness.get(ch).count, 1);
        }
        assert_histogram(
            &body,
            &s.commit_batch_size,
            "sendlater_commit_batch_size",
            "",
            &BATCH,
        );
        assert_histogram(
            &body,
            &s.commit_seconds,
            "sendlater_commit_seconds",
            "",
            &SECONDS,
        );
        assert_eq!(s.commit_seconds.buckets[0].1, 1, "0.0004 s is under 1 ms");
        // `snapshot` is this very reading of a fresh exposition.
        let again = snapshot(&fixed);
        assert_eq!(again.schedules, s.schedules);
        assert_eq!(again.due_backlog, s.due_backlog);
    }

    #[test]
    fn the_cluster_figures_are_exposed_as_counted() {
        let fixed = Fixed::default();
        fixed.0.partitions_owned.set(21);
        fixed.0.partition_takeovers.inc_by(3);
        fixed.0.forwarded_requests.inc();
        fixed.0.fenced_writes.inc_by(2);
        fixed.0.lease_renew_seconds.observe(0.004);
        let body = render(&fixed);
        for (series, want) in [
            ("sendlater_partitions_owned", 21.0),
            ("sendlater_partition_takeovers_total", 3.0),
            ("sendlater_forwarded_requests_total", 1.0),
            ("sendlater_fenced_writes_total", 2.0),
            ("sendlater_lease_renew_seconds_bucket{le=\"0.002\"}", 0.0),
            ("sendlater_lease_renew_seconds_bucket{le=\"0.005\"}", 1.0),
            ("sendlater_lease_renew_seconds_count", 1.0),
            ("sendlater_lease_renew_seconds_sum", 0.004),
        ] {
            assert_eq!(value(&body, series), want, "{series}");
        }
    }

    /// One raw HTTP/1.1 exchange with the metrics port.
    async fn exchange(addr: SocketAddr, request: &str) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
        s.write_all(request.as_bytes()).await.unwrap();
        let mut out = String::new();
        s.read_to_string(&mut out).await.unwrap();
        out
    }

    #[tokio::test]
    async fn the_port_serves_metrics_as_text_and_nothing_else() {
        let stop = CancellationToken::new();
        let addr = serve(
            "127.0.0.1:0".parse().unwrap(),
            Arc::new(Fixed::default()),
            stop.clone(),
        )
        .await
        .unwrap();
        let ok = exchange(addr, "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(ok.starts_with("HTTP/1.1 200 OK\r\n"), "{ok}");
        assert!(
            ok.contains("\r\ncontent-type: text/plain; version=0.0.4; charset=utf-8\r\n"),
            "{ok}"
        );
        assert!(ok.contains("\nsendlater_pending_timers 7\n"), "{ok}");
        let missing = exchange(addr, "GET / HTTP/1.1\r\nHost: x\r\n\r\n").await;
        assert!(
            missing.starts_with("HTTP/1.1 404 Not Found\r\n"),
            "{missing}"
        );
        assert!(missing.ends_with("try /metrics\n"), "{missing}");
        stop.cancel();
    }
}
