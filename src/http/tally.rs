//! What one holder (an account, a client address) has running at once on
//! this instance: a count per key, taken by [`Tally::enter`] and given back
//! when the [`Held`] guard drops, wherever that happens (a handler's end, a
//! response body dropped by a connection that ended, a panic).
//!
//! The bounds that use it (requests in flight per account, connections
//! per address) are per instance by choice: they bound what a holder can
//! take of one process (its connections, tasks, memory), counting them in
//! the database would cost a statement per request and per connection, and
//! what spans instances (upload slots, storage, monthly quotas) is bounded
//! in Postgres already.

use std::{
    collections::HashMap,
    hash::Hash,
    sync::{Arc, Mutex, PoisonError},
};

/// Counts per key; cheap to share (`Arc`).
#[derive(Debug)]
pub struct Tally<K: Eq + Hash + Copy> {
    // A plain map behind a mutex held for one insert or removal: no await
    // inside, so contention is a few nanoseconds per request.
    counts: Mutex<HashMap<K, usize>>,
}

impl<K: Eq + Hash + Copy> Default for Tally<K> {
    fn default() -> Self {
        Self {
            counts: Mutex::new(HashMap::new()),
        }
    }
}

/// One entry of a [`Tally`], given back on drop.
#[derive(Debug)]
pub struct Held<K: Eq + Hash + Copy> {
    tally: Arc<Tally<K>>,
    key: K,
}

impl<K: Eq + Hash + Copy> Tally<K> {
    /// Counts one more for `key` and returns the guard with the count it
    /// makes (this one included). The caller refuses past its bound by
    /// dropping the guard: a refused entry is counted only while it is
    /// being refused.
    pub fn enter(self: &Arc<Self>, key: K) -> (Held<K>, usize) {
        let mut counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        let count = counts.entry(key).or_insert(0);
        *count += 1;
        let now = *count;
        drop(counts);
        (
            Held {
                tally: self.clone(),
                key,
            },
            now,
        )
    }

    /// How many `key` holds now.
    pub fn held(&self, key: &K) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.get(key).copied().unwrap_or(0)
    }

    /// How many are held in all, by every key.
    pub fn total(&self) -> usize {
        let counts = self.counts.lock().unwrap_or_else(PoisonError::into_inner);
        counts.values().sum()
    }
}

impl<K: Eq + Hash + Copy> Drop for Held<K> {
    fn drop(&mut self) {
        let mut counts = self
            .tally
            .counts
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = counts.get_mut(&self.key) {
            *count -= 1;
            // No entry is kept for a key that holds nothing: the map stays
            // as small as what is running.
            if *count == 0 {
                counts.remove(&self.key);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_per_key_and_gives_back_on_drop() {
        let tally = Arc::new(Tally::<u8>::default());
        let (a1, n) = tally.enter(1);
        assert_eq!(n, 1);
        let (a2, n) = tally.enter(1);
        assert_eq!(n, 2);
        let (_b, n) = tally.enter(2);
        assert_eq!(n, 1);
        assert_eq!((tally.held(&1), tally.total()), (2, 3));
        drop(a1);
        drop(a2);
        assert_eq!((tally.held(&1), tally.total()), (0, 1));
        assert!(!tally.counts.lock().unwrap().contains_key(&1));
    }
}
