//! The decode and extraction workers of one process, handed out fairly
//! between accounts: an account runs at most one decode or extraction at a
//! time, and a free worker goes to the account whose oldest waiting request
//! came first. One account's slow files then hold one worker and queue
//! behind each other, while every other account is served by the rest.
//!
//! Written here rather than taken from a crate: tokio's semaphore is fair
//! between waiters but knows nothing of accounts, and the rule above is a
//! few lines over a mutex.

use std::{
    collections::{BTreeMap, HashSet},
    sync::{Arc, Mutex, MutexGuard},
};

use tokio::sync::Notify;
use uuid::Uuid;

/// Decodes and extractions running at once in this process. Each holds a
/// file and its decoded form in memory on a blocking thread, so their
/// number bounds the memory and threads that AI requests can take.
pub const WORKERS: usize = 2;

#[derive(Debug)]
struct Queue {
    free: usize,
    running: HashSet<Uuid>,
    /// Waiting requests by arrival: ticket → account.
    waiting: BTreeMap<u64, Uuid>,
    next_ticket: u64,
}

impl Queue {
    /// Whether `ticket` is the request a free worker goes to: the oldest
    /// waiting one whose account runs nothing.
    fn is_next(&self, ticket: u64) -> bool {
        self.free > 0
            && self
                .waiting
                .iter()
                .find(|(_, account)| !self.running.contains(account))
                .is_some_and(|(t, _)| *t == ticket)
    }
}

#[derive(Debug)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Notify,
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Queue> {
        // The queue holds plain counters, consistent after every statement:
        // a panic elsewhere leaves nothing half-done to recover.
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The process's workers. Cheap to clone.
#[derive(Debug, Clone)]
pub struct Workers(Arc<Shared>);

impl Default for Workers {
    fn default() -> Self {
        Self::new(WORKERS)
    }
}

impl Workers {
    /// `n` workers.
    pub fn new(n: usize) -> Self {
        Self(Arc::new(Shared {
            queue: Mutex::new(Queue {
                free: n,
                running: HashSet::new(),
                waiting: BTreeMap::new(),
                next_ticket: 0,
            }),
            changed: Notify::new(),
        }))
    }

    /// Waits for the account's turn on a worker. Dropped while waiting, the
    /// request leaves the queue.
    pub async fn turn(&self, account: Uuid) -> Turn {
        let ticket = {
            let mut q = self.0.lock();
            let t = q.next_ticket;
            q.next_ticket += 1;
            q.waiting.insert(t, account);
            t
        };
        let mut waiting = Waiting {
            shared: &self.0,
            ticket: Some(ticket),
        };
        loop {
            let changed = self.0.changed.notified();
            tokio::pin!(changed);
            changed.as_mut().enable();
            {
                let mut q = self.0.lock();
                if q.is_next(ticket) {
                    q.waiting.remove(&ticket);
                    q.free -= 1;
                    q.running.insert(account);
                    waiting.ticket = None;
                    return Turn {
                        shared: self.0.clone(),
                        account,
                    };
                }
            }
            changed.await;
        }
    }
}

/// Takes a request that stopped waiting out of the queue.
struct Waiting<'a> {
    shared: &'a Shared,
    ticket: Option<u64>,
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket {
            self.shared.lock().waiting.remove(&ticket);
            // A later request may be next now.
            self.shared.changed.notify_waiters();
        }
    }
}

/// A worker held by an account; given back on drop.
#[derive(Debug)]
pub struct Turn {
    shared: Arc<Shared>,
    account: Uuid,
}

impl Drop for Turn {
    fn drop(&mut self) {
        {
            let mut q = self.shared.lock();
            q.running.remove(&self.account);
            q.free += 1;
        }
        self.shared.changed.notify_waiters();
    }
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    async fn soon(turn: impl std::future::Future<Output = Turn>) -> Option<Turn> {
        tokio::time::timeout(Duration::from_millis(50), turn)
            .await
            .ok()
    }

    #[tokio::test]
    async fn an_account_holds_one_worker_and_others_take_the_rest() {
        let workers = Workers::new(2);
        let (a, b, c) = (Uuid::new_v4(), Uuid::new_v4(), Uuid::new_v4());
        let first = workers.turn(a).await;
        assert!(soon(workers.turn(a)).await.is_none(), "a waits for its own");
        let second = soon(workers.turn(b)).await.expect("b is served");
        assert!(soon(workers.turn(c)).await.is_none(), "both workers busy");
        drop(second);
        let third = soon(workers.turn(c)).await.expect("c takes b's worker");
        drop((first, third));
        let q = workers.0.lock();
        assert_eq!((q.free, q.running.len(), q.waiting.len()), (2, 0, 0));
    }

    #[tokio::test]
    async fn a_free_worker_goes_to_the_oldest_account_that_runs_nothing() {
        let workers = Workers::new(1);
        let (a, b) = (Uuid::new_v4(), Uuid::new_v4());
        let held = workers.turn(a).await;
        let again = tokio::spawn({
            let w = workers.clone();
            async move { w.turn(a).await }
        });
        let other = tokio::spawn({
            let w = workers.clone();
            async move { w.turn(b).await }
        });
        while workers.0.lock().waiting.len() < 2 {
            tokio::task::yield_now().await;
        }
        drop(held);
        // a's second request came first and a now runs nothing: it goes first.
        let next = again.await.unwrap();
        assert!(!other.is_finished());
        drop(next);
        drop(other.await.unwrap());
    }
}
