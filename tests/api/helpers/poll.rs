//! The one way tests wait for something that happens in the background:
//! poll every 50 ms, bounded. Fixed sleeps are never a test's wait.

use std::{
    future::Future,
    time::{Duration, Instant},
};

/// How often a condition is tried again.
const INTERVAL: Duration = Duration::from_millis(50);

/// Tries `attempt` every 50 ms until it yields a value or `bound` passes;
/// the value, or `None` when the bound passed first. Every other wait of
/// the harness is this one.
pub async fn poll<T, F, Fut>(bound: Duration, mut attempt: F) -> Option<T>
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + bound;
    loop {
        if let Some(value) = attempt().await {
            return Some(value);
        }
        if Instant::now() >= deadline {
            return None;
        }
        tokio::time::sleep(INTERVAL).await;
    }
}

/// Whether `condition` came to hold within `bound`.
pub async fn within<F, Fut>(bound: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    poll(bound, || {
        let holds = condition();
        async move { holds.await.then_some(()) }
    })
    .await
    .is_some()
}

/// Waits (up to 10 s) until `condition` holds; panics naming `what`
/// otherwise. For work that ends in the background.
pub async fn eventually<F, Fut>(what: &str, condition: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    assert!(
        within(Duration::from_secs(10), condition).await,
        "timed out waiting for: {what}"
    );
}

/// Waits until the wall clock is past `instant` (an expiry the server
/// announced), plus `margin` for a clock read in whole seconds elsewhere.
/// A deadline, not a guess: the server named the instant.
pub async fn past(instant: chrono::DateTime<chrono::Utc>, margin: Duration) {
    let target = instant + chrono::Duration::from_std(margin).unwrap();
    let left = (target - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
}
