//! Counting live streams (WatchEvents, the console's Server-Sent Events), so that no
//! caller, and not all callers together, can hold more than a few open.
//!
//! A stream takes a [`StreamSlot`] before it starts, under one or more keys (a token, a
//! session, a peer address) each with its own cap, and under the global cap; the slot is
//! given back when dropped (the stream ended, its client left). The table holds only keys
//! with a live stream, so it is bounded by the global cap.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, Default)]
struct Counts {
    total: usize,
    by_key: HashMap<String, usize>,
}

/// The live streams of one kind; cheap to clone.
#[derive(Debug, Clone)]
pub struct LiveStreams {
    counts: Arc<Mutex<Counts>>,
    max_total: usize,
}

/// Why a stream could not open.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Full {
    /// This key already holds its maximum.
    Key { key: String, max: usize },
    /// The whole service holds its maximum.
    Total { max: usize },
}

impl std::fmt::Display for Full {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Full::Key { key, max } => write!(
                f,
                "this {} already has {max} live streams open (the most allowed); close one",
                key.split(':').next().unwrap_or("caller")
            ),
            Full::Total { max } => write!(
                f,
                "the service already has {max} live streams open (the most allowed); retry later"
            ),
        }
    }
}

/// One open stream; dropping it gives its place back.
#[derive(Debug)]
pub struct StreamSlot {
    counts: Arc<Mutex<Counts>>,
    keys: Vec<String>,
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        c.total = c.total.saturating_sub(1);
        for k in &self.keys {
            if let Some(n) = c.by_key.get_mut(k) {
                *n = n.saturating_sub(1);
                if *n == 0 {
                    c.by_key.remove(k);
                }
            }
        }
    }
}

impl LiveStreams {
    /// At most `max_total` streams in all.
    pub fn new(max_total: usize) -> Self {
        LiveStreams {
            counts: Arc::default(),
            max_total,
        }
    }

    /// A place for one more stream under every `(key, max)` given and the global cap.
    ///
    /// # Errors
    /// [`Full`] naming the first cap that is reached; nothing is taken then.
    pub fn try_open(&self, keys: &[(String, usize)]) -> Result<StreamSlot, Full> {
        let mut c = self.counts.lock().unwrap_or_else(|p| p.into_inner());
        if c.total >= self.max_total {
            return Err(Full::Total {
                max: self.max_total,
            });
        }
        for (key, max) in keys {
            if c.by_key.get(key).copied().unwrap_or(0) >= *max {
                return Err(Full::Key {
                    key: key.clone(),
                    max: *max,
                });
            }
        }
        c.total += 1;
        for (key, _) in keys {
            *c.by_key.entry(key.clone()).or_insert(0) += 1;
        }
        Ok(StreamSlot {
            counts: Arc::clone(&self.counts),
            keys: keys.iter().map(|(k, _)| k.clone()).collect(),
        })
    }

    /// Streams open now.
    pub fn open(&self) -> usize {
        self.counts.lock().unwrap_or_else(|p| p.into_inner()).total
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_key_and_the_total_are_capped_and_a_dropped_slot_frees_its_place() {
        let s = LiveStreams::new(3);
        let a = |n: &str| vec![(format!("token:{n}"), 2)];
        let a1 = s.try_open(&a("a")).unwrap();
        let _a2 = s.try_open(&a("a")).unwrap();
        assert!(matches!(s.try_open(&a("a")), Err(Full::Key { max: 2, .. })));
        let _b1 = s.try_open(&a("b")).unwrap();
        assert_eq!(s.try_open(&a("c")).err(), Some(Full::Total { max: 3 }));
        drop(a1);
        assert_eq!(s.open(), 2);
        assert!(s.try_open(&a("a")).is_ok());
    }

    #[test]
    fn a_stream_under_two_keys_needs_room_under_both() {
        let s = LiveStreams::new(10);
        let keys = |sid: &str| vec![(format!("session:{sid}"), 1), ("token:0".to_owned(), 2)];
        let _x = s.try_open(&keys("x")).unwrap();
        assert!(s.try_open(&keys("x")).is_err(), "the session is full");
        let _y = s.try_open(&keys("y")).unwrap();
        assert!(s.try_open(&keys("z")).is_err(), "the token is full");
        assert_eq!(s.open(), 2, "a refusal takes nothing");
    }
}
