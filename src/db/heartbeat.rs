//! The one renewal heartbeat. Work that outlives a statement (an upload's
//! lease, a resumable upload's hold on its row, a presigned upload's
//! writer claim) keeps a row alive by renewing it on a period while a
//! guard lives, and lets go of it when the work ends. The row's own expiry
//! covers an instance that dies; this guard covers everything else: it
//! stops renewing when dropped, and a holder dropped before it ended its
//! work (a client gone, an early `?`) has its let-go run in the background.

use std::{fmt::Display, future::Future, pin::Pin, time::Duration};

use tokio::task::JoinHandle;
use uuid::Uuid;

type LetGo = Pin<Box<dyn Future<Output = ()> + Send>>;

/// Renews a row while held; stops on drop. See the module docs.
#[must_use = "a heartbeat stops when dropped"]
pub struct Heartbeat {
    renewer: Option<JoinHandle<()>>,
    let_go: Option<LetGo>,
}

impl Heartbeat {
    /// Renews every `period` (the first time one period from now) until
    /// stopped or dropped. A failed renewal is logged, naming `what` and
    /// `id`, and tried again next period: the row lives for a few periods,
    /// so one failure loses nothing.
    ///
    /// A renewal already sent when the guard stops may still reach the
    /// database after the holder let go, so `renew` must change only a row
    /// the holder still holds (its token, its lease row, a claim not
    /// released), never take it again.
    pub fn start<F, Fut, T, E>(period: Duration, what: &'static str, id: Uuid, mut renew: F) -> Self
    where
        F: FnMut() -> Fut + Send + 'static,
        Fut: Future<Output = Result<T, E>> + Send,
        E: Display,
    {
        let renewer = tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            tick.tick().await;
            loop {
                tick.tick().await;
                if let Err(e) = renew().await {
                    tracing::warn!(error = %e, %id, "could not renew {what}");
                }
            }
        });
        Self {
            renewer: Some(renewer),
            let_go: None,
        }
    }

    /// A guard that renews nothing (the row's expiry outlasts the request)
    /// but still lets go when dropped early, with [`Heartbeat::on_drop`].
    pub fn none() -> Self {
        Self {
            renewer: None,
            let_go: None,
        }
    }

    /// What to run in the background if the guard is dropped before
    /// [`Heartbeat::stop`]: giving back what the work held.
    pub fn on_drop(mut self, let_go: impl Future<Output = ()> + Send + 'static) -> Self {
        self.let_go = Some(Box::pin(let_go));
        self
    }

    /// Stops renewing and disarms the let-go: the holder ends its work
    /// itself. Returns whether the guard was still armed, so that the
    /// holder lets go exactly once.
    pub fn stop(&mut self) -> bool {
        let renewing = self.renewer.take().map(|task| task.abort()).is_some();
        let armed = self.let_go.take().is_some();
        renewing || armed
    }
}

impl Drop for Heartbeat {
    fn drop(&mut self) {
        if let Some(task) = self.renewer.take() {
            task.abort();
        }
        if let Some(let_go) = self.let_go.take() {
            // Outside a runtime (the process is ending) the row's expiry
            // lets go instead.
            if let Ok(handle) = tokio::runtime::Handle::try_current() {
                handle.spawn(let_go);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    };

    use tokio::sync::Notify;

    use super::*;

    fn counting(renewals: &Arc<AtomicUsize>, beat: &Arc<Notify>) -> Heartbeat {
        let (renewals, beat) = (renewals.clone(), beat.clone());
        Heartbeat::start(
            Duration::from_millis(5),
            "a test row",
            Uuid::nil(),
            move || {
                let (renewals, beat) = (renewals.clone(), beat.clone());
                async move {
                    renewals.fetch_add(1, Ordering::SeqCst);
                    beat.notify_one();
                    Ok::<_, std::io::Error>(())
                }
            },
        )
    }

    #[tokio::test]
    async fn renews_while_held_and_not_after_drop() {
        let (renewals, beat) = (Arc::new(AtomicUsize::new(0)), Arc::new(Notify::new()));
        let heartbeat = counting(&renewals, &beat);
        beat.notified().await;
        beat.notified().await;
        drop(heartbeat);
        let after_drop = renewals.load(Ordering::SeqCst);
        assert!(after_drop >= 2);
        // Ten periods later nothing more has been renewed.
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(renewals.load(Ordering::SeqCst), after_drop);
    }

    #[tokio::test]
    async fn a_dropped_guard_lets_go_and_a_stopped_one_does_not() {
        let let_go = Arc::new(Notify::new());
        let signal = let_go.clone();
        let dropped = Heartbeat::none().on_drop(async move { signal.notify_one() });
        drop(dropped);
        tokio::time::timeout(Duration::from_secs(5), let_go.notified())
            .await
            .expect("the let-go ran in the background");

        let ran = Arc::new(AtomicUsize::new(0));
        let counter = ran.clone();
        let mut stopped = Heartbeat::none().on_drop(async move {
            counter.fetch_add(1, Ordering::SeqCst);
        });
        assert!(stopped.stop(), "armed until stopped");
        assert!(!stopped.stop(), "stops once");
        drop(stopped);
        tokio::task::yield_now().await;
        assert_eq!(ran.load(Ordering::SeqCst), 0);
    }
}
