//! Criterion micro-benches of the timing wheel's operations (insert, cancel,
//! advance over 100k timers), each with a baseline beside it in the same
//! group: a `BinaryHeap` with lazy cancellation through a std `HashMap`
//! (default hasher) from id to generation, i.e. what plain std gives you.
//! The full comparison, with DelayQueue and BTreeMap at 1M and 10M timers and
//! a fast hasher for every baseline, is `benches/wheel_compare.rs`.

use std::cmp::Reverse;
use std::collections::{BinaryHeap, HashMap};
use std::hint::black_box;
use std::time::Duration;

use criterion::{criterion_group, criterion_main, BatchSize, BenchmarkId, Criterion, Throughput};
use rand::rngs::SmallRng;
use rand::{RngExt, SeedableRng};
use sendlater::wheel::TimingWheel;

/// Timers per iteration.
const N: u64 = 100_000;
const HOUR_MS: u64 = 3_600_000;

/// Uniform deadlines in `1..=HOUR_MS` from a seeded `SmallRng`, the same for both
/// structures and every run.
fn deadlines() -> Vec<u64> {
    let mut rng = SmallRng::seed_from_u64(0x5eed);
    (0..N).map(|_| rng.random_range(1..=HOUR_MS)).collect()
}

/// The baseline: a min-heap whose cancelled entries are skipped when popped.
#[derive(Default)]
struct Heap {
    heap: BinaryHeap<Reverse<(u64, u64, u64)>>,
    live: HashMap<u64, u64>,
    generation: u64,
}

impl Heap {
    fn insert(&mut self, id: u64, deadline: u64) {
        self.generation += 1;
        self.live.insert(id, self.generation);
        self.heap.push(Reverse((deadline, id, self.generation)));
    }

    fn cancel(&mut self, id: u64) {
        self.live.remove(&id);
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

fn wheel_with(d: &[u64]) -> TimingWheel {
    let mut wheel = TimingWheel::with_capacity(0, d.len());
    for (id, &deadline) in (1..).zip(d) {
        wheel.insert(id, deadline);
    }
    wheel
}

fn heap_with(d: &[u64]) -> Heap {
    let mut heap = Heap::default();
    for (id, &deadline) in (1..).zip(d) {
        heap.insert(id, deadline);
    }
    heap
}

fn insert(c: &mut Criterion) {
    let d = deadlines();
    let mut group = c.benchmark_group("insert");
    group.throughput(Throughput::Elements(N));
    group.bench_function(BenchmarkId::new("wheel", N), |b| {
        b.iter(|| black_box(wheel_with(&d)))
    });
    group.bench_function(BenchmarkId::new("binaryheap", N), |b| {
        b.iter(|| black_box(heap_with(&d)))
    });
    group.finish();
}

fn cancel(c: &mut Criterion) {
    let d = deadlines();
    // Every 7th id in a scattered order.
    let ids: Vec<u64> = (0..N / 7).map(|i| 1 + (i * 7_919) % N).collect();
    let mut group = c.benchmark_group("cancel");
    group.throughput(Throughput::Elements(ids.len() as u64));
    group.bench_function(BenchmarkId::new("wheel", N), |b| {
        b.iter_batched(
            || wheel_with(&d),
            |mut w| {
                for &id in &ids {
                    black_box(w.cancel(id));
                }
                w
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function(BenchmarkId::new("binaryheap", N), |b| {
        b.iter_batched(
            || heap_with(&d),
            |mut h| {
                for &id in &ids {
                    h.cancel(id);
                }
                h
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

fn advance(c: &mut Criterion) {
    let d = deadlines();
    let mut group = c.benchmark_group("advance");
    group.throughput(Throughput::Elements(N));
    // Expire everything in 500 ms steps.
    group.bench_function(BenchmarkId::new("wheel", N), |b| {
        b.iter_batched(
            || (wheel_with(&d), Vec::with_capacity(4096)),
            |(mut w, mut out)| {
                for now in (500..=HOUR_MS + 500).step_by(500) {
                    out.clear();
                    w.advance(now, &mut out);
                }
                w
            },
            BatchSize::LargeInput,
        )
    });
    group.bench_function(BenchmarkId::new("binaryheap", N), |b| {
        b.iter_batched(
            || (heap_with(&d), Vec::with_capacity(4096)),
            |(mut h, mut out)| {
                for now in (500..=HOUR_MS + 500).step_by(500) {
                    out.clear();
                    h.advance(now, &mut out);
                }
                h
            },
            BatchSize::LargeInput,
        )
    });
    group.finish();
}

criterion_group! {
    name = benches;
    config = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(3));
    targets = insert, cancel, advance
}
criterion_main!(benches);
