//! The reaper: the periodic clean-up every instance runs. It ends expired
//! upload leases (uploads of dead instances, abandoned presigned uploads),
//! retries queued object deletions, prunes state that holds nothing any
//! more (idle rate-limit rows, forgotten failed-login streaks, ended
//! sessions, expired idempotency keys) and closes idle scratch files of tus parts
//! ([`tus::trim_spills`]). Each step is safe on several instances at once:
//! rows are claimed with `SKIP LOCKED`, so each lease is ended and each
//! object deleted once.

use std::time::Duration;

use crate::{auth, deletions, idempotency, quota::slots, ratelimit, state::AppState, tus};

/// State that holds nothing any more is pruned about this often.
const PRUNE_PERIOD: Duration = Duration::from_secs(60);

/// Runs the reaper until the task is aborted.
pub async fn housekeeping(state: AppState) {
    // Every `REAPER_INTERVAL_SECS` (10 by default); pruning stays about
    // once a minute whatever the interval.
    let interval = state.config.reaper_interval;
    let prune_every = (PRUNE_PERIOD.as_secs() / interval.as_secs().max(1)).max(1);
    let mut tick = tokio::time::interval(interval);
    // Idle scratch files of tus parts are closed on their own clock, so a
    // long reaper interval does not keep them.
    let mut trim = tokio::time::interval(tus::SPILL_IDLE);
    let mut round: u64 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = trim.tick() => {
                tus::trim_spills(tus::SPILL_IDLE);
                continue;
            }
        }
        round += 1;
        if let Err(e) = reap(&state).await {
            tracing::warn!(error = %e, "reaping failed; will retry");
        }
        if round.is_multiple_of(prune_every) {
            match prune(&state).await {
                Ok(n) if n > 0 => tracing::debug!(rows = n, "pruned idle state"),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "could not prune idle state"),
            }
        }
    }
}

/// Deletes the rows that hold nothing any more: rate-limit state whose
/// time has passed, failed-login streaks that are forgotten, sessions
/// that have ended (revoked, expired or idle), and idempotency keys past
/// their time. Returns how many it deleted.
pub async fn prune(state: &AppState) -> Result<u64, sqlx::Error> {
    let limits = ratelimit::prune(&state.db).await?;
    let logins = auth::backoff::prune(&state.db).await?;
    let sessions = auth::session::prune(&state.db, state.config.session_idle_timeout).await?;
    let keys = idempotency::prune(&state.db).await?;
    Ok(limits + logins + sessions + keys)
}

/// One pass of the reaper: expired leases (their objects, reservations and
/// slots), then object deletions that failed before. Returns how many
/// leases it ended and how many queued objects it deleted.
pub async fn reap(state: &AppState) -> Result<(u64, u64), sqlx::Error> {
    let leases = slots::end_expired(&state.db, state.store.as_ref()).await?;
    let objects = deletions::retry(&state.db, state.store.as_ref()).await?;
    if leases > 0 || objects > 0 {
        tracing::info!(leases, objects, "reaped");
        metrics::counter!("intake_reaped_leases_total").increment(leases);
        metrics::counter!("intake_reaped_objects_total").increment(objects);
    }
    Ok((leases, objects))
}
