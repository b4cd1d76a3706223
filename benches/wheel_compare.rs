//! Timing wheel against three baselines on the same workloads, same run.
//!
//! Structures: `wheel` (ours), `delayqueue` (tokio-util's `DelayQueue` on a
//! current-thread runtime with paused time, polled with a no-op waker, with an
//! id -> `Key` map for cancel), `binaryheap` (`std::collections::BinaryHeap`
//! with lazy cancellation through an id -> generation map) and `btreemap`
//! (`BTreeMap<(deadline, id), ()>` plus an id -> deadline map). Every id map
//! in the baselines uses the same cheap multiply-xorshift hash as the wheel,
//! so the comparison is about the structures, not about SipHash.
//!
//! Workloads, for n timers with deadlines uniform over 1 hour or 30 days:
//! `insert-*` (insert n), `cancel10-*` (cancel 10% in random order),
//! `reschedule10-*` (move another 10% to a new random deadline), `expire-*`
//! (advance in random 1..=1000 ms steps until everything fired, cost per
//! expired timer) and `mixed-*` (n pending; advance in random 1..=1000 ms
//! steps and insert one new timer per expired one until n/2 expired, cost per
//! insert or expiry, advance calls with nothing due included).
//!
//! Each (structure, n, spread) runs in a fresh child process (this binary
//! re-executed with `--child`), and so does each memory measurement (VmRSS
//! before and after inserting n timers), so structures never share a heap.
//!
//! Usage: `cargo bench --bench wheel_compare [-- --quick]`; `--quick` runs
//! n = 1M only, otherwise 1M and 10M. Unknown arguments (cargo passes
//! `--bench`) are ignored. Output: `RESULT ...` lines, see BENCHMARKS.md.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap, HashMap};
use std::hash::{BuildHasherDefault, Hasher};
use std::hint::black_box;
use std::process::Command;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sendlater::wheel::TimingWheel;
use tokio_util::time::delay_queue::{DelayQueue, Key};

/// The wheels' time at the start of every workload (ms).
const T0: u64 = 1_000_000;
const HOUR_MS: u64 = 3_600_000;
const SPREADS: [(&str, u64); 2] = [("1h", HOUR_MS), ("30d", 30 * 24 * HOUR_MS)];
const STRUCTURES: [&str; 4] = ["wheel", "delayqueue", "binaryheap", "btreemap"];

/// Deterministic randomness for the workloads: a seeded `SmallRng`, the same every run.
fn seeded(seed: u64) -> SmallRng {
    SmallRng::seed_from_u64(seed)
}

/// The i-th id of a pseudo-random permutation of `1..=n` (i < n).
fn shuffled_id(i: u64, n: u64) -> u64 {
    // 2654435761 is prime, hence coprime with n = 10^k.
    1 + ((u128::from(i) * 2_654_435_761) % u128::from(n)) as u64
}

/// The wheel's id hash (MurmurHash3 finaliser) as a `Hasher` for baselines.
#[derive(Default)]
struct MixHasher(u64);

impl Hasher for MixHasher {
    fn finish(&self) -> u64 {
        let mut x = self.0;
        x ^= x >> 33;
        x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
        x ^= x >> 33;
        x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
        x ^ (x >> 33)
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) ^ u64::from(b) ^ (self.0 >> 56);
        }
    }
    fn write_u64(&mut self, x: u64) {
        self.0 = x;
    }
}

type IdMap<V> = HashMap<u64, V, BuildHasherDefault<MixHasher>>;

fn id_map<V>(n: usize) -> IdMap<V> {
    HashMap::with_capacity_and_hasher(n, BuildHasherDefault::default())
}

/// The operations every structure is driven through.
trait Timers {
    fn new(now: u64, n: usize) -> Self;
    fn insert(&mut self, id: u64, deadline: u64);
    fn cancel(&mut self, id: u64);
    fn reschedule(&mut self, id: u64, deadline: u64);
    /// Appends `(id, deadline)` of everything due at `now`.
    fn advance(&mut self, now: u64, out: &mut Vec<(u64, u64)>);
    /// Runs `f` in whatever context the structure needs (a tokio runtime).
    fn scoped<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        f(self)
    }
}

impl Timers for TimingWheel {
    fn new(now: u64, n: usize) -> Self {
        TimingWheel::with_capacity(now, n)
    }
    fn insert(&mut self, id: u64, deadline: u64) {
        TimingWheel::insert(self, id, deadline);
    }
    fn cancel(&mut self, id: u64) {
        TimingWheel::cancel(self, id);
    }
    fn reschedule(&mut self, id: u64, deadline: u64) {
        TimingWheel::reschedule(self, id, deadline);
    }
    fn advance(&mut self, now: u64, out: &mut Vec<(u64, u64)>) {
        TimingWheel::advance(self, now, out);
    }
}

/// `BinaryHeap` of `(deadline, id, generation)`; an entry is live iff the
/// map holds its id with the same generation (cancel = forget the id).
struct Heap {
    heap: BinaryHeap<Reverse<(u64, u64, u64)>>,
    live: IdMap<u64>,
    generation: u64,
}

impl Timers for Heap {
    fn new(_now: u64, n: usize) -> Self {
        Heap {
            heap: BinaryHeap::with_capacity(n),
            live: id_map(n),
            generation: 0,
        }
    }
    fn insert(&mut self, id: u64, deadline: u64) {
        self.generation += 1;
        self.live.insert(id, self.generation);
        self.heap.push(Reverse((deadline, id, self.generation)));
    }
    fn cancel(&mut self, id: u64) {
        self.live.remove(&id);
    }
    fn reschedule(&mut self, id: u64, deadline: u64) {
        if let Some(g) = self.live.get_mut(&id) {
            self.generation += 1;
            *g = self.generation;
            self.heap.push(Reverse((deadline, id, self.generation)));
        }
    }
    fn advance(&mut self, now: u64, out: &mut Vec<(u64, u64)>) {
        while let Some(&Reverse((deadline, id, g))) = self.heap.peek() {
            if deadline > now {
                break;
            }
            self.heap.pop();
            if self.live.get(&id) == Some(&g) {
                self.live.remove(&id);
                out.push((id, deadline));
            }
        }
    }
}

/// `BTreeMap` ordered by `(deadline, id)` plus an id -> deadline map.
struct Tree {
    by_time: BTreeMap<(u64, u64), ()>,
    by_id: IdMap<u64>,
}

impl Timers for Tree {
    fn new(_now: u64, n: usize) -> Self {
        Tree {
            by_time: BTreeMap::new(),
            by_id: id_map(n),
        }
    }
    fn insert(&mut self, id: u64, deadline: u64) {
        if let Some(old) = self.by_id.insert(id, deadline) {
            self.by_time.remove(&(old, id));
        }
        self.by_time.insert((deadline, id), ());
    }
    fn cancel(&mut self, id: u64) {
        if let Some(old) = self.by_id.remove(&id) {
            self.by_time.remove(&(old, id));
        }
    }
    fn reschedule(&mut self, id: u64, deadline: u64) {
        if let Some(d) = self.by_id.get_mut(&id) {
            self.by_time.remove(&(*d, id));
            *d = deadline;
            self.by_time.insert((deadline, id), ());
        }
    }
    fn advance(&mut self, now: u64, out: &mut Vec<(u64, u64)>) {
        while let Some(entry) = self.by_time.first_entry() {
            if entry.key().0 > now {
                break;
            }
            let ((deadline, id), ()) = entry.remove_entry();
            self.by_id.remove(&id);
            out.push((id, deadline));
        }
    }
}

/// tokio-util's `DelayQueue` on a paused current-thread runtime.
struct Dq {
    rt: Rc<tokio::runtime::Runtime>,
    queue: DelayQueue<u64>,
    keys: IdMap<Key>,
    /// The tokio instant standing for `base_ms`, the time at creation.
    base: tokio::time::Instant,
    base_ms: u64,
    now: u64,
}

impl Dq {
    fn at(&self, deadline: u64) -> tokio::time::Instant {
        self.base + Duration::from_millis(deadline.saturating_sub(self.base_ms))
    }
}

impl Timers for Dq {
    fn new(now: u64, n: usize) -> Self {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .start_paused(true)
            .build()
            .expect("a current-thread runtime builds");
        let rt = Rc::new(rt);
        let _guard = rt.enter();
        Dq {
            base: tokio::time::Instant::now(),
            queue: DelayQueue::with_capacity(n),
            keys: id_map(n),
            base_ms: now,
            now,
            rt: rt.clone(),
        }
    }
    fn insert(&mut self, id: u64, deadline: u64) {
        let at = self.at(deadline);
        if let Some(key) = self.keys.get(&id) {
            self.queue.reset_at(key, at);
        } else {
            let key = self.queue.insert_at(id, at);
            self.keys.insert(id, key);
        }
    }
    fn cancel(&mut self, id: u64) {
        if let Some(key) = self.keys.remove(&id) {
            self.queue.remove(&key);
        }
    }
    fn reschedule(&mut self, id: u64, deadline: u64) {
        let at = self.at(deadline);
        if let Some(key) = self.keys.get(&id) {
            self.queue.reset_at(key, at);
        }
    }
    fn advance(&mut self, now: u64, out: &mut Vec<(u64, u64)>) {
        if now > self.now {
            let step = Duration::from_millis(now - self.now);
            self.rt.block_on(tokio::time::advance(step));
            self.now = now;
        }
        let mut cx = Context::from_waker(Waker::noop());
        while let Poll::Ready(Some(expired)) = self.queue.poll_expired(&mut cx) {
            let deadline = self.base_ms + (expired.deadline() - self.base).as_millis() as u64;
            let id = expired.into_inner();
            self.keys.remove(&id);
            out.push((id, deadline));
        }
    }
    fn scoped<R>(&mut self, f: impl FnOnce(&mut Self) -> R) -> R {
        let rt = self.rt.clone();
        let _guard = rt.enter();
        f(self)
    }
}

/// On-CPU time of the calling thread. The machine is shared, so wall time
/// would also count the time this process spends descheduled.
fn thread_cpu_time() -> Duration {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime only writes to `ts`, a valid, exclusively
    // borrowed timespec that outlives the call.
    let rc = unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    assert_eq!(rc, 0, "CLOCK_THREAD_CPUTIME_ID is available on Linux");
    Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32)
}

/// Wall and thread-CPU stopwatch for one measured phase.
struct Stopwatch {
    wall: Instant,
    cpu: Duration,
}

impl Stopwatch {
    fn start() -> Stopwatch {
        Stopwatch {
            wall: Instant::now(),
            cpu: thread_cpu_time(),
        }
    }

    /// Prints the phase's `RESULT wheel-bench` line (CPU time per op) and a
    /// `WALL` line with wall time per op.
    fn report(self, structure: &str, workload: &str, spread: &str, n: u64, ops: u64) {
        let cpu = (thread_cpu_time() - self.cpu).as_nanos() as f64 / ops.max(1) as f64;
        let wall = self.wall.elapsed().as_nanos() as f64 / ops.max(1) as f64;
        println!(
            "RESULT wheel-bench structure={structure} workload={workload}-{spread} n={n} ns_per_op={cpu:.1}"
        );
        println!(
            "WALL structure={structure} workload={workload}-{spread} n={n} ns_per_op={wall:.1}"
        );
    }
}

/// insert-all, cancel 10%, reschedule 10%, expire-all on one structure.
fn phases<T: Timers>(name: &str, n: u64, spread_name: &str, spread: u64) {
    let mut rng = seeded(0x5eed ^ spread);
    let mut out = Vec::with_capacity(4096);
    let mut t = T::new(T0, n as usize);
    let (fired, checksum) = t.scoped(|t| {
        let clock = Stopwatch::start();
        for id in 1..=n {
            t.insert(id, T0 + rng.random_range(1..=spread));
        }
        clock.report(name, "insert", spread_name, n, n);

        let tenth = n / 10;
        let clock = Stopwatch::start();
        for i in 0..tenth {
            t.cancel(shuffled_id(i, n));
        }
        clock.report(name, "cancel10", spread_name, n, tenth);

        let clock = Stopwatch::start();
        for i in tenth..2 * tenth {
            t.reschedule(shuffled_id(i, n), T0 + rng.random_range(1..=spread));
        }
        clock.report(name, "reschedule10", spread_name, n, tenth);

        let (mut now, mut fired, mut checksum) = (T0, 0u64, 0u64);
        let clock = Stopwatch::start();
        while now <= T0 + spread {
            now += rng.random_range(1..=1000);
            out.clear();
            t.advance(now, &mut out);
            fired += out.len() as u64;
            checksum = out
                .iter()
                .fold(checksum, |c, &(id, d)| c ^ id.wrapping_mul(d));
        }
        clock.report(name, "expire", spread_name, n, fired);
        (fired, checksum)
    });
    let expected = n - n / 10;
    if fired != expected {
        println!("WARNING structure={name} expired {fired} of {expected} timers");
    }
    println!("CHECK structure={name} n={n} spread={spread_name} checksum={checksum:x}");
    black_box(t);
}

/// Steady state: n pending, one insert per expiry, until n/2 expired.
fn mixed<T: Timers>(name: &str, n: u64, spread_name: &str, spread: u64) {
    let mut rng = seeded(0x3a7e ^ spread);
    let mut out = Vec::with_capacity(4096);
    let mut t = T::new(T0, n as usize);
    t.scoped(|t| {
        for id in 1..=n {
            t.insert(id, T0 + rng.random_range(1..=spread));
        }
        let (mut now, mut next_id, mut expired) = (T0, n + 1, 0u64);
        let clock = Stopwatch::start();
        while expired < n / 2 {
            now += rng.random_range(1..=1000);
            out.clear();
            t.advance(now, &mut out);
            expired += out.len() as u64;
            for _ in 0..out.len() {
                t.insert(next_id, now + rng.random_range(1..=spread));
                next_id += 1;
            }
        }
        clock.report(name, "mixed", spread_name, n, 2 * expired);
    });
    black_box(t);
}

fn time_child<T: Timers>(name: &str, n: u64, spread_name: &str) {
    let spread = SPREADS
        .iter()
        .find(|(s, _)| *s == spread_name)
        .map_or(HOUR_MS, |&(_, ms)| ms);
    phases::<T>(name, n, spread_name, spread);
    mixed::<T>(name, n, spread_name, spread);
}

/// Resident set size of this process in bytes.
fn rss_bytes() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        .map_or(0, |kb| kb * 1024)
}

fn memory_child<T: Timers>(name: &str, n: u64) {
    let mut rng = seeded(0x6d65);
    let before = rss_bytes();
    let mut t = T::new(T0, n as usize);
    t.scoped(|t| {
        for id in 1..=n {
            t.insert(id, T0 + rng.random_range(1..=HOUR_MS));
        }
    });
    let after = rss_bytes();
    let per = after.saturating_sub(before) as f64 / n as f64;
    println!("RESULT wheel-memory structure={name} n={n} bytes_per_timer={per:.1}");
    black_box(t);
}

fn child(args: &[String]) {
    let n: u64 = args
        .get(2)
        .and_then(|s| s.parse().ok())
        .unwrap_or(1_000_000);
    let spread = args.get(3).map_or("1h", String::as_str);
    match (args[0].as_str(), args[1].as_str()) {
        ("time", "wheel") => time_child::<TimingWheel>("wheel", n, spread),
        ("time", "delayqueue") => time_child::<Dq>("delayqueue", n, spread),
        ("time", "binaryheap") => time_child::<Heap>("binaryheap", n, spread),
        ("time", "btreemap") => time_child::<Tree>("btreemap", n, spread),
        ("memory", "wheel") => memory_child::<TimingWheel>("wheel", n),
        ("memory", "delayqueue") => memory_child::<Dq>("delayqueue", n),
        ("memory", "binaryheap") => memory_child::<Heap>("binaryheap", n),
        ("memory", "btreemap") => memory_child::<Tree>("btreemap", n),
        (mode, s) => eprintln!("unknown child mode {mode} {s}"),
    }
}

/// Runs this binary as a child and returns its stdout lines.
fn spawn(args: &[String]) -> Vec<String> {
    let exe = std::env::current_exe().expect("the bench knows its own path");
    let output = Command::new(exe)
        .arg("--child")
        .args(args)
        .output()
        .expect("the bench can re-execute itself");
    if !output.status.success() {
        eprintln!(
            "child {args:?} failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    String::from_utf8_lossy(&output.stdout)
        .lines()
        .map(str::to_owned)
        .collect()
}

/// The value of `key=` in a RESULT line.
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    line.split_whitespace()
        .find_map(|kv| kv.strip_prefix(key)?.strip_prefix('='))
}

const WORKLOADS: [&str; 5] = ["insert", "cancel10", "reschedule10", "expire", "mixed"];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if let Some(pos) = args.iter().position(|a| a == "--child") {
        child(&args[pos + 1..]);
        return;
    }
    let sizes: &[u64] = if args.iter().any(|a| a == "--quick") {
        &[1_000_000]
    } else {
        &[1_000_000, 10_000_000]
    };
    // Each structure runs `runs` times (interleaved); the best run counts.
    let runs: usize = args
        .iter()
        .position(|a| a == "--runs")
        .and_then(|i| args.get(i + 1)?.parse().ok())
        .unwrap_or(2);
    println!("# wheel_compare: sizes={sizes:?} runs={runs} (best run reported; ns_per_op is thread CPU time)");
    for &n in sizes {
        for (spread, _) in SPREADS {
            // best[(structure, workload)] = lowest ns_per_op over the runs.
            let mut best: HashMap<(String, String), f64> = HashMap::new();
            for _ in 0..runs {
                for s in STRUCTURES {
                    for line in spawn(&["time".into(), s.into(), n.to_string(), spread.into()]) {
                        if !line.starts_with("RESULT wheel-bench") {
                            println!("{line}");
                            continue;
                        }
                        let key = (field(&line, "structure"), field(&line, "workload"));
                        let ns = field(&line, "ns_per_op").and_then(|v| v.parse::<f64>().ok());
                        if let ((Some(st), Some(w)), Some(ns)) = (key, ns) {
                            let slot = best.entry((st.into(), w.into())).or_insert(f64::INFINITY);
                            *slot = slot.min(ns);
                        }
                    }
                }
            }
            let get = |s: &str, w: &str| {
                best.get(&(s.to_owned(), w.to_owned()))
                    .copied()
                    .unwrap_or(f64::NAN)
            };
            for s in STRUCTURES {
                for w in WORKLOADS {
                    let w = format!("{w}-{spread}");
                    println!(
                        "RESULT wheel-bench structure={s} workload={w} n={n} ns_per_op={:.1}",
                        get(s, &w)
                    );
                }
            }
            for w in WORKLOADS {
                let w = format!("{w}-{spread}");
                let ours = get("wheel", &w);
                println!(
                    "RESULT wheel-ratio workload={w} n={n} vs_delayqueue={:.2} vs_binaryheap={:.2}",
                    get("delayqueue", &w) / ours,
                    get("binaryheap", &w) / ours
                );
            }
        }
    }
    for &n in sizes {
        for s in STRUCTURES {
            for line in spawn(&["memory".into(), s.into(), n.to_string()]) {
                println!("{line}");
            }
        }
    }
}
