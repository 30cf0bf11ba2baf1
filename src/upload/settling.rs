//! The files of one request that hold a reservation and are not recorded
//! or given back yet, so that a file refused for quota while they hold it
//! waits for them instead of failing.
//!
//! Every streamed file reserves quota before its bytes are held, ahead of
//! them by up to a part (see `pipeline::Sink::reserve_to`), and a finished
//! file gives the surplus back only when it is recorded. Near the quota,
//! the surplus of a batch's earlier files, still finishing beside the next
//! file's reading, could refuse that next file though the bytes it needs
//! will be free in a moment; it waits for them to settle and tries again,
//! so a batch at the quota stores the files it would store one by one.

use std::sync::{
    Arc,
    atomic::{AtomicU64, AtomicUsize, Ordering},
};

use tokio::sync::Notify;

/// The request's files between their reading and their settlement.
#[derive(Default, Clone)]
pub struct Settling(Arc<Inner>);

#[derive(Default)]
struct Inner {
    /// Files read whose reservation is not settled yet.
    open: AtomicUsize,
    /// Files settled so far (recorded or given back).
    settled: AtomicU64,
    notify: Notify,
}

/// A read file's place among those settling, until it is dropped (after
/// its settlement has committed).
pub struct Unsettled(Arc<Inner>);

impl Drop for Unsettled {
    fn drop(&mut self) {
        self.0.settled.fetch_add(1, Ordering::AcqRel);
        self.0.open.fetch_sub(1, Ordering::AcqRel);
        self.0.notify.notify_waiters();
    }
}

impl Settling {
    /// A read file, holding its reservation until it settles.
    pub fn enter(&self) -> Unsettled {
        self.0.open.fetch_add(1, Ordering::AcqRel);
        Unsettled(self.0.clone())
    }

    /// How many files have settled: taken before a reservation, handed to
    /// [`Settling::room_may_come`] if it is refused.
    pub fn mark(&self) -> u64 {
        self.0.settled.load(Ordering::Acquire)
    }

    /// After a reservation taken at `mark` was refused for quota: whether
    /// another may succeed, because a file settled since, or after waiting
    /// for the next one of those still open to settle. `false` when none is
    /// open: the refusal stands.
    pub async fn room_may_come(&self, mark: u64) -> bool {
        loop {
            let notified = self.0.notify.notified();
            let mut notified = std::pin::pin!(notified);
            notified.as_mut().enable();
            if self.mark() != mark {
                return true;
            }
            if self.0.open.load(Ordering::Acquire) == 0 {
                return false;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_refusal_stands_when_no_file_is_settling() {
        let settling = Settling::default();
        assert!(!settling.room_may_come(settling.mark()).await);
    }

    #[tokio::test]
    async fn a_refusal_waits_for_the_files_settling() {
        let settling = Settling::default();
        let first = settling.enter();
        let mark = settling.mark();
        let waiting = tokio::spawn({
            let settling = settling.clone();
            async move { settling.room_may_come(mark).await }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap());
        // A file that settled between the refusal and the question counts.
        let second = settling.enter();
        let mark = settling.mark();
        drop(second);
        assert!(settling.room_may_come(mark).await);
    }
}
