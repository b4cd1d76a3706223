//! Round-robin across accounts (DESIGN.md principle 9): due items wait per account, and
//! each pop takes the oldest item of the next account in turn, so one tenant's burst of
//! a million sends cannot starve the others.

use std::collections::{HashMap, VecDeque};

/// Due items of one channel (`T`: the id and what goes with it), queued per account.
#[derive(Debug)]
pub struct FairQueue<T> {
    /// Accounts with at least one queued id, in serving order.
    turn: VecDeque<String>,
    /// Invariant: every queue here is non-empty and its account is in `turn` once.
    queues: HashMap<String, VecDeque<T>>,
    len: usize,
}

impl<T> Default for FairQueue<T> {
    fn default() -> Self {
        Self {
            turn: VecDeque::new(),
            queues: HashMap::new(),
            len: 0,
        }
    }
}

impl<T> FairQueue<T> {
    /// Queues `id` behind the account's earlier ids.
    pub fn push(&mut self, account: &str, id: T) {
        match self.queues.get_mut(account) {
            Some(q) => q.push_back(id),
            None => {
                self.queues.insert(account.to_owned(), VecDeque::from([id]));
                self.turn.push_back(account.to_owned());
            }
        }
        self.len += 1;
    }

    /// Puts an id back at the head of its account's queue (it could not be placed).
    pub fn push_front(&mut self, account: &str, id: T) {
        match self.queues.get_mut(account) {
            Some(q) => q.push_front(id),
            None => {
                self.queues.insert(account.to_owned(), VecDeque::from([id]));
                self.turn.push_front(account.to_owned());
            }
        }
        self.len += 1;
    }

    /// The oldest id of the account whose turn it is, with the account.
    pub fn pop(&mut self) -> Option<(String, T)> {
        let account = self.turn.pop_front()?;
        let q = self.queues.get_mut(&account)?;
        let id = q.pop_front();
        debug_assert!(id.is_some(), "empty queue of {account} left in turn");
        let empty = q.is_empty();
        if empty {
            self.queues.remove(&account);
        }
        self.len -= 1;
        let id = id?;
        if empty {
            Some((account, id))
        } else {
            self.turn.push_back(account.clone());
            Some((account, id))
        }
    }

    /// Every queued entry with its account, in no particular order.
    pub fn iter(&self) -> impl Iterator<Item = (&str, &T)> {
        self.queues
            .iter()
            .flat_map(|(a, q)| q.iter().map(move |t| (a.as_str(), t)))
    }

    /// Ids queued.
    pub fn len(&self) -> usize {
        self.len
    }

    /// Whether nothing is queued.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_burst_of_one_account_does_not_starve_another() {
        let mut f = FairQueue::<i64>::default();
        for id in 0..100 {
            f.push("big", id);
        }
        f.push("small", 1000);
        f.push("small", 1001);
        let first: Vec<_> = (0..4).map(|_| f.pop().unwrap().1).collect();
        assert_eq!(first, vec![0, 1000, 1, 1001]);
        assert_eq!(f.len(), 98);
        let rest: Vec<_> = std::iter::from_fn(|| f.pop().map(|p| p.1)).collect();
        assert_eq!(rest, (2..100).collect::<Vec<_>>());
        assert!(f.is_empty());
    }

    #[test]
    fn an_id_put_back_is_served_first_again() {
        let mut f = FairQueue::<i64>::default();
        f.push("a", 1);
        f.push("a", 2);
        let (acc, id) = f.pop().unwrap();
        f.push_front(&acc, id);
        assert_eq!(f.pop(), Some(("a".to_owned(), 1)));
        assert_eq!(f.pop(), Some(("a".to_owned(), 2)));
        assert_eq!(f.pop(), None);
    }
}
