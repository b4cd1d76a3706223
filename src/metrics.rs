//! Prometheus metrics, served as text on a separate `--metrics-listen` address.
//!
//! Counters and histograms are process-wide atomics ([`METRICS`]): incrementing one is a
//! relaxed atomic add on the hot path, nothing more. Gauges (pending timers, due
//! backlog, connected connectors) are read from the engine and the dispatcher at scrape
//! time. The exposition is the Prometheus text format, version 0.0.4.

use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::domain::Channel;

/// A histogram with fixed upper bounds (plus +Inf), lock-free.
pub struct Histogram {
    bounds: &'static [f64],
    /// One counter per bound, plus one for +Inf. Not cumulative; summed at scrape.
    buckets: [AtomicU64; 16],
    /// Sum of observations, in micro-units (observations are scaled by 1e6).
    sum_micros: AtomicU64,
    count: AtomicU64,
}

impl Histogram {
    const fn new(bounds: &'static [f64]) -> Self {
        Histogram {
            bounds,
            buckets: [const { AtomicU64::new(0) }; 16],
            sum_micros: AtomicU64::new(0),
            count: AtomicU64::new(0),
        }
    }

    /// Records one observation.
    pub fn observe(&self, v: f64) {
        let i = self
            .bounds
            .iter()
            .position(|&b| v <= b)
            .unwrap_or(self.bounds.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.sum_micros
            .fetch_add((v.max(0.0) * 1e6) as u64, Relaxed);
        self.count.fetch_add(1, Relaxed);
    }

    fn render(&self, out: &mut String, name: &str, labels: &str) {
        let sep = if labels.is_empty() { "" } else { "," };
        let mut cum = 0;
        for (i, b) in self.bounds.iter().enumerate() {
            cum += self.buckets[i].load(Relaxed);
            let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"{b}\"}} {cum}");
        }
        cum += self.buckets[self.bounds.len()].load(Relaxed);
        let _ = writeln!(out, "{name}_bucket{{{labels}{sep}le=\"+Inf\"}} {cum}");
        let braces = if labels.is_empty() {
            String::new()
        } else {
            format!("{{{labels}}}")
        };
        let _ = writeln!(
            out,
            "{name}_sum{braces} {}",
            self.sum_micros.load(Relaxed) as f64 / 1e6
        );
        let _ = writeln!(out, "{name}_count{braces} {}", self.count.load(Relaxed));
    }
}

const SECONDS: &[f64] = &[
    0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 60.0, 300.0,
];
const BATCH: &[f64] = &[
    1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0, 256.0, 512.0, 1024.0, 2048.0,
];

/// Process-wide counters and histograms.
pub struct Metrics {
    pub schedules: AtomicU64,
    pub dispatches: AtomicU64,
    pub acks: AtomicU64,
    pub nacks: AtomicU64,
    pub abandoned_leases: AtomicU64,
    /// Answers that named no job their stream holds (forged, duplicate, malformed).
    pub ignored_answers: AtomicU64,
    /// Connector streams ended because a lease of theirs expired unanswered.
    pub stalled_connectors: AtomicU64,
    /// Items failed because their stored row could not be read.
    pub unreadable_items: AtomicU64,
    /// Lateness of first deliveries (handed to a connector minus send_at), per channel.
    pub lateness_email: Histogram,
    pub lateness_chat: Histogram,
    pub commit_batch_size: Histogram,
    pub commit_seconds: Histogram,
}

/// The metrics of this process.
pub static METRICS: Metrics = Metrics {
    schedules: AtomicU64::new(0),
    dispatches: AtomicU64::new(0),
    acks: AtomicU64::new(0),
    nacks: AtomicU64::new(0),
    abandoned_leases: AtomicU64::new(0),
    ignored_answers: AtomicU64::new(0),
    stalled_connectors: AtomicU64::new(0),
    unreadable_items: AtomicU64::new(0),
    lateness_email: Histogram::new(SECONDS),
    lateness_chat: Histogram::new(SECONDS),
    commit_batch_size: Histogram::new(BATCH),
    commit_seconds: Histogram::new(SECONDS),
};

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
    /// Timers on the wheel.
    fn pending_timers(&self) -> u64;
    /// Due items not yet leased, per channel.
    fn due_backlog(&self, ch: Channel) -> u64;
    /// Connector streams connected.
    fn connectors(&self) -> u64;
    /// Due items held back by a pause (`true`) or a rate limit (`false`).
    fn held_back(&self, paused: bool) -> u64;
}

/// Renders the whole exposition.
pub fn render(g: &dyn Gauges) -> String {
    let m = &METRICS;
    let mut out = String::with_capacity(4096);
    let mut counter = |name: &str, help: &str, v: u64| {
        let _ = writeln!(
            out,
            "# HELP {name} {help}\n# TYPE {name} counter\n{name} {v}"
        );
    };
    counter(
        "sendlater_schedules_total",
        "Items scheduled.",
        m.schedules.load(Relaxed),
    );
    counter(
        "sendlater_dispatches_total",
        "Jobs handed to connectors.",
        m.dispatches.load(Relaxed),
    );
    counter(
        "sendlater_acks_total",
        "Acks received.",
        m.acks.load(Relaxed),
    );
    counter(
        "sendlater_nacks_total",
        "Nacks received.",
        m.nacks.load(Relaxed),
    );
    counter(
        "sendlater_abandoned_leases_total",
        "Leases that ended without an answer (expired or stream dropped).",
        m.abandoned_leases.load(Relaxed),
    );
    counter(
        "sendlater_ignored_answers_total",
        "Acks/Nacks ignored: they named no job the answering stream holds.",
        m.ignored_answers.load(Relaxed),
    );
    counter(
        "sendlater_stalled_connectors_total",
        "Connector streams ended because a lease of theirs expired unanswered.",
        m.stalled_connectors.load(Relaxed),
    );
    counter(
        "sendlater_unreadable_items_total",
        "Items failed because their stored row could not be read.",
        m.unreadable_items.load(Relaxed),
    );
    let _ = writeln!(out, "# HELP sendlater_pending_timers Timers on the wheel.\n# TYPE sendlater_pending_timers gauge\nsendlater_pending_timers {}", g.pending_timers());
    let _ = writeln!(out, "# HELP sendlater_due_backlog Due items waiting for a connector.\n# TYPE sendlater_due_backlog gauge");
    for (ch, label) in [(Channel::Email, "email"), (Channel::Chat, "chat")] {
        let _ = writeln!(
            out,
            "sendlater_due_backlog{{channel=\"{label}\"}} {}",
            g.due_backlog(ch)
        );
    }
    let _ = writeln!(out, "# HELP sendlater_held_back Due items held back by a pause or a rate limit.\n# TYPE sendlater_held_back gauge");
    let _ = writeln!(
        out,
        "sendlater_held_back{{reason=\"pause\"}} {}",
        g.held_back(true)
    );
    let _ = writeln!(
        out,
        "sendlater_held_back{{reason=\"rate_limit\"}} {}",
        g.held_back(false)
    );
    let _ = writeln!(out, "# HELP sendlater_connectors Connected connector streams.\n# TYPE sendlater_connectors gauge\nsendlater_connectors {}", g.connectors());
    let _ = writeln!(out, "# HELP sendlater_dispatch_lateness_seconds First delivery to a connector minus send_at.\n# TYPE sendlater_dispatch_lateness_seconds histogram");
    m.lateness_email.render(
        &mut out,
        "sendlater_dispatch_lateness_seconds",
        "channel=\"email\"",
    );
    m.lateness_chat.render(
        &mut out,
        "sendlater_dispatch_lateness_seconds",
        "channel=\"chat\"",
    );
    let _ = writeln!(out, "# HELP sendlater_commit_batch_size Writes per group commit.\n# TYPE sendlater_commit_batch_size histogram");
    m.commit_batch_size
        .render(&mut out, "sendlater_commit_batch_size", "");
    let _ = writeln!(out, "# HELP sendlater_commit_seconds Group commit latency.\n# TYPE sendlater_commit_seconds histogram");
    m.commit_seconds
        .render(&mut out, "sendlater_commit_seconds", "");
    out
}

/// Serves `GET /metrics` on `addr` until `stop`; returns the bound address.
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
            let (mut sock, _) = tokio::select! {
                r = listener.accept() => match r { Ok(s) => s, Err(_) => continue },
                _ = stop.cancelled() => return,
            };
            let gauges = gauges.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 4096];
                let mut n = 0;
                // Read the request head (bounded); only the request line matters.
                while n < buf.len() {
                    match tokio::time::timeout(
                        std::time::Duration::from_secs(5),
                        sock.read(&mut buf[n..]),
                    )
                    .await
                    {
                        Ok(Ok(0)) | Err(_) | Ok(Err(_)) => break,
                        Ok(Ok(k)) => {
                            n += k;
                            if buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                                break;
                            }
                        }
                    }
                }
                let head = String::from_utf8_lossy(&buf[..n]);
                let line = head.lines().next().unwrap_or_default();
                let (status, ctype, body) = if line.starts_with("GET /metrics ") {
                    (
                        "200 OK",
                        "text/plain; version=0.0.4",
                        render(gauges.as_ref()),
                    )
                } else {
                    ("404 Not Found", "text/plain", "try /metrics\n".to_owned())
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                let _ = sock.write_all(resp.as_bytes()).await;
                let _ = sock.shutdown().await;
            });
        }
    });
    Ok(local)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_in_the_exposition() {
        static H: Histogram = Histogram::new(&[1.0, 10.0]);
        for v in [0.5, 5.0, 5.0, 50.0] {
            H.observe(v);
        }
        let mut s = String::new();
        H.render(&mut s, "x", "");
        assert!(s.contains("x_bucket{le=\"1\"} 1\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"10\"} 3\n"), "{s}");
        assert!(s.contains("x_bucket{le=\"+Inf\"} 4\n"), "{s}");
        assert!(s.contains("x_count 4\n"), "{s}");
        assert!(s.contains("x_sum 60.5\n"), "{s}");
    }
}
