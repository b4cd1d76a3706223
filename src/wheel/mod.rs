//! TEMPORARY stand-in with the wheel's API (a BTreeMap), replaced by the real
//! hierarchical timing wheel from the `wheel` branch.
use std::collections::{BTreeMap, HashMap};

pub struct TimingWheel {
    now: u64,
    by_deadline: BTreeMap<(u64, u64), ()>,
    by_id: HashMap<u64, u64>,
}

impl TimingWheel {
    pub fn new(now_ms: u64) -> Self {
        Self {
            now: now_ms,
            by_deadline: BTreeMap::new(),
            by_id: HashMap::new(),
        }
    }
    pub fn insert(&mut self, id: u64, deadline: u64) {
        self.cancel(id);
        self.by_id.insert(id, deadline);
        self.by_deadline.insert((deadline, id), ());
    }
    pub fn cancel(&mut self, id: u64) -> Option<u64> {
        let d = self.by_id.remove(&id)?;
        self.by_deadline.remove(&(d, id));
        Some(d)
    }
    pub fn advance(&mut self, now: u64, out: &mut Vec<(u64, u64)>) {
        if now < self.now {
            return;
        }
        self.now = now;
        while let Some((&(d, id), _)) = self.by_deadline.first_key_value() {
            if d > now {
                break;
            }
            self.by_deadline.pop_first();
            self.by_id.remove(&id);
            out.push((id, d));
        }
    }
    pub fn next_deadline(&self) -> Option<u64> {
        self.by_deadline.first_key_value().map(|(&(d, _), _)| d)
    }
    pub fn len(&self) -> usize {
        self.by_id.len()
    }
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}
