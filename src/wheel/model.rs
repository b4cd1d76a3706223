//! Property test: the wheel against a `BTreeMap` model.
//!
//! Random sequences of insert / cancel / reschedule / advance run against both
//! the wheel and an obviously correct model (a `BTreeMap` ordered by
//! `(deadline, id)` plus an id -> deadline map). After every step they must
//! agree on what expired and in which order, on `next_deadline`, `len`, `now`
//! and the touched id's deadline, and the wheel's internal invariants must
//! hold. Time jumps and deadlines mix small steps, level-sized steps, far
//! jumps past the six fine levels (2^36 ms) and the `u64` extremes.

use std::collections::{BTreeMap, HashMap};

use proptest::prelude::*;

use super::TimingWheel;

/// The obviously correct reference.
#[derive(Debug, Default)]
struct Model {
    now: u64,
    by_time: BTreeMap<(u64, u64), ()>,
    by_id: HashMap<u64, u64>,
}

impl Model {
    fn insert(&mut self, id: u64, deadline: u64) -> Option<u64> {
        let old = self.cancel(id);
        self.by_time.insert((deadline, id), ());
        self.by_id.insert(id, deadline);
        old
    }

    fn cancel(&mut self, id: u64) -> Option<u64> {
        let deadline = self.by_id.remove(&id)?;
        self.by_time.remove(&(deadline, id));
        Some(deadline)
    }

    fn reschedule(&mut self, id: u64, deadline: u64) -> Option<u64> {
        if self.by_id.contains_key(&id) {
            self.insert(id, deadline)
        } else {
            None
        }
    }

    fn advance(&mut self, now: u64) -> Vec<(u64, u64)> {
        if now < self.now {
            return Vec::new();
        }
        self.now = now;
        let mut out = Vec::new();
        while let Some((&(deadline, id), ())) = self.by_time.first_key_value() {
            if deadline > now {
                break;
            }
            self.by_time.pop_first();
            self.by_id.remove(&id);
            out.push((id, deadline));
        }
        out
    }

    fn next_deadline(&self) -> Option<u64> {
        self.by_time.first_key_value().map(|(&(d, _), ())| d)
    }
}

/// A time relative to the current one, resolved when the step runs.
#[derive(Clone, Copy, Debug)]
enum When {
    /// `now - x`
    Past(u64),
    /// `now + x` for x in the first levels.
    Near(u64),
    /// `now + x` for x anywhere in the six fine levels.
    Mid(u64),
    /// `now + x` past the six fine levels (2^36 ms and beyond).
    Far(u64),
    /// An absolute time anywhere in `u64` (often far behind or ahead).
    Anywhere(u64),
    /// `u64::MAX`
    End,
}

impl When {
    fn at(self, now: u64) -> u64 {
        match self {
            When::Past(x) => now.saturating_sub(x),
            When::Near(x) | When::Mid(x) | When::Far(x) => now.saturating_add(x),
            When::Anywhere(t) => t,
            When::End => u64::MAX,
        }
    }
}

fn when() -> impl Strategy<Value = When> {
    prop_oneof![
        3 => (0u64..1_000).prop_map(When::Past),
        8 => (0u64..300).prop_map(When::Near),
        6 => (0u64..1 << 36).prop_map(When::Mid),
        2 => ((1u64 << 36)..(1 << 50)).prop_map(When::Far),
        1 => any::<u64>().prop_map(When::Anywhere),
        1 => Just(When::End),
    ]
}

/// Time steps: mostly small, some level-sized, rarely huge.
fn step() -> impl Strategy<Value = When> {
    prop_oneof![
        10 => (0u64..100).prop_map(When::Near),
        4 => (0u64..1 << 30).prop_map(When::Mid),
        1 => ((1u64 << 36)..(1 << 44)).prop_map(When::Far),
        1 => (0u64..1_000).prop_map(When::Past),
        1 => any::<u64>().prop_map(When::Anywhere),
        1 => Just(When::End),
    ]
}

#[derive(Clone, Copy, Debug)]
enum Op {
    Insert(u64, When),
    Cancel(u64),
    Reschedule(u64, When),
    Advance(When),
    /// Advance to the wheel's `next_deadline` (or stay at `now` if that is
    /// overdue), as the driver does.
    AdvanceToNext,
}

fn op() -> impl Strategy<Value = Op> {
    // Few ids so that replace, cancel and reschedule often hit.
    let id = 0u64..48;
    prop_oneof![
        8 => (id.clone(), when()).prop_map(|(i, w)| Op::Insert(i, w)),
        2 => id.clone().prop_map(Op::Cancel),
        2 => (id, when()).prop_map(|(i, w)| Op::Reschedule(i, w)),
        4 => step().prop_map(Op::Advance),
        2 => Just(Op::AdvanceToNext),
    ]
}

/// Runs `ops` on a wheel and the model, comparing after every step.
fn run(start: u64, ops: &[Op]) {
    let mut wheel = TimingWheel::new(start);
    let mut model = Model {
        now: start,
        ..Model::default()
    };
    let mut out = Vec::new();
    for (step, &op) in ops.iter().enumerate() {
        let now = model.now;
        let touched = match op {
            Op::Insert(id, w) => {
                let d = w.at(now);
                assert_eq!(
                    wheel.insert(id, d),
                    model.insert(id, d),
                    "step {step} {op:?}"
                );
                Some(id)
            }
            Op::Cancel(id) => {
                assert_eq!(wheel.cancel(id), model.cancel(id), "step {step} {op:?}");
                Some(id)
            }
            Op::Reschedule(id, w) => {
                let d = w.at(now);
                assert_eq!(
                    wheel.reschedule(id, d),
                    model.reschedule(id, d),
                    "step {step} {op:?}"
                );
                Some(id)
            }
            Op::Advance(w) => {
                let to = w.at(now);
                out.clear();
                wheel.advance(to, &mut out);
                assert_eq!(out, model.advance(to), "step {step} {op:?} to {to}");
                None
            }
            Op::AdvanceToNext => {
                if let Some(next) = wheel.next_deadline() {
                    // A driver never sleeps into the past.
                    let to = next.max(now);
                    out.clear();
                    wheel.advance(to, &mut out);
                    let expected = model.advance(to);
                    assert!(
                        !expected.is_empty(),
                        "step {step}: woke at {to} for nothing"
                    );
                    assert_eq!(out, expected, "step {step} {op:?} to {to}");
                }
                None
            }
        };
        wheel.check_invariants();
        assert_eq!(wheel.now(), model.now, "step {step} {op:?}");
        assert_eq!(wheel.len(), model.by_id.len(), "step {step} {op:?}");
        assert_eq!(
            wheel.next_deadline(),
            model.next_deadline(),
            "step {step} {op:?}"
        );
        if let Some(id) = touched {
            assert_eq!(wheel.deadline(id), model.by_id.get(&id).copied());
            assert_eq!(wheel.contains(id), model.by_id.contains_key(&id));
        }
    }
    // Draining at the end of time yields everything left, in order.
    out.clear();
    wheel.advance(u64::MAX, &mut out);
    assert_eq!(out, model.advance(u64::MAX));
    assert!(wheel.is_empty());
}

fn start() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        4 => 0u64..1 << 40,
        1 => (u64::MAX - (1 << 20))..=u64::MAX,
    ]
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn the_wheel_agrees_with_a_btreemap_model_at_every_step(
        start in start(),
        ops in prop::collection::vec(op(), 1..200),
    ) {
        run(start, &ops);
    }
}

#[test]
fn the_model_runner_catches_a_scripted_scenario() {
    // A fixed sequence crossing levels, the far levels and the end of time.
    run(
        5,
        &[
            Op::Insert(1, When::Near(64)),
            Op::Insert(2, When::Mid(1 << 20)),
            Op::Insert(3, When::Far(1 << 40)),
            Op::Insert(4, When::End),
            Op::Insert(5, When::Past(3)),
            Op::AdvanceToNext,
            Op::AdvanceToNext,
            Op::Reschedule(3, When::Near(1)),
            Op::Advance(When::Mid(1 << 21)),
            Op::AdvanceToNext,
            Op::Cancel(4),
            Op::Advance(When::End),
        ],
    );
}
