//! The process-wide budget of upload bytes held in memory
//! (`UPLOAD_BUFFER_BUDGET_BYTES`). A writer that keeps bytes in memory
//! before storage has them (on S3, the part being filled and the one being
//! sent) takes [`Room`] for the most it can hold before its first byte, and
//! gives it back when it ends. An upload that finds no room waits for it,
//! at most its idle timeout (`UPLOAD_IDLE_TIMEOUT_SECS`), then ends with 503
//! `service_unavailable` and `Retry-After`.
//!
//! Room is taken whole, once per writer, never a chunk at a time: writers
//! that each held part of a part and waited for more could all wait for one
//! another until they timed out; a writer with its room can always finish
//! its part and let go of it.
//!
//! Kept in memory, per process, as the other bounds on what one process
//! holds (`http::in_flight`, `http::peers`): the memory it bounds is the
//! process's own.

use std::{sync::Arc, time::Duration};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::ApiError;

/// Room is counted in units of this many bytes, so that any budget fits the
/// semaphore's 32-bit requests.
const UNIT: u64 = 1024;

/// The budget of one process.
#[derive(Clone)]
pub struct Buffers {
    room: Arc<Semaphore>,
    /// The budget, in units.
    units: u32,
    /// How long an upload may wait for room.
    wait: Duration,
}

impl Buffers {
    /// A budget of `bytes` (rounded up to a whole KiB), for which an upload
    /// waits at most `wait`.
    pub fn new(bytes: u64, wait: Duration) -> Self {
        let units = u32::try_from(bytes.div_ceil(UNIT).max(1)).unwrap_or(u32::MAX);
        Self {
            room: Arc::new(Semaphore::new(units as usize)),
            units,
            wait,
        }
    }

    /// Room for `bytes` (at most the whole budget: a budget smaller than
    /// one writer's bytes lets such writers run one at a time), waiting for
    /// others to give theirs back; `None` when nothing needs room. Past the
    /// wait, 503 `service_unavailable`.
    pub async fn take(&self, bytes: u64) -> Result<Option<Room>, ApiError> {
        if bytes == 0 {
            return Ok(None);
        }
        let units = u32::try_from(bytes.div_ceil(UNIT))
            .unwrap_or(u32::MAX)
            .min(self.units);
        let permit = match self.room.clone().try_acquire_many_owned(units) {
            Ok(permit) => permit,
            Err(_) => {
                metrics::counter!("intake_upload_buffer_waits_total").increment(1);
                let waited =
                    tokio::time::timeout(self.wait, self.room.clone().acquire_many_owned(units))
                        .await;
                match waited {
                    Ok(Ok(permit)) => permit,
                    // Timed out (the semaphore is never closed).
                    _ => {
                        metrics::counter!("intake_upload_buffer_refusals_total").increment(1);
                        return Err(ApiError::Busy {
                            detail: "the server holds as many upload bytes in memory as it \
                                     may; retry shortly"
                                .into(),
                            retry_after: 1,
                        });
                    }
                }
            }
        };
        let room = Room {
            budget: self.clone(),
            permit: Some(permit),
        };
        room.budget.report();
        Ok(Some(room))
    }

    /// Bytes held now.
    pub fn held(&self) -> u64 {
        let free = self.room.available_permits() as u64;
        (u64::from(self.units).saturating_sub(free)) * UNIT
    }

    fn report(&self) {
        metrics::gauge!("intake_upload_buffer_bytes").set(self.held() as f64);
    }
}

/// Room in the budget, given back when dropped.
pub struct Room {
    budget: Buffers,
    permit: Option<OwnedSemaphorePermit>,
}

impl Drop for Room {
    fn drop(&mut self) {
        drop(self.permit.take());
        self.budget.report();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn room_is_taken_whole_and_given_back_on_drop() {
        let buffers = Buffers::new(10 * UNIT, Duration::from_millis(50));
        assert!(buffers.take(0).await.unwrap().is_none());
        let a = buffers.take(6 * UNIT).await.unwrap();
        assert_eq!(buffers.held(), 6 * UNIT);
        // Not enough left: the wait ends with 503 and takes nothing.
        let refused = buffers.take(5 * UNIT).await.err().unwrap();
        assert_eq!(refused.code(), "service_unavailable");
        assert_eq!(buffers.held(), 6 * UNIT);
        drop(a);
        assert_eq!(buffers.held(), 0);
        // More than the whole budget takes all of it.
        let all = buffers.take(100 * UNIT).await.unwrap();
        assert_eq!(buffers.held(), 10 * UNIT);
        drop(all);
    }

    #[tokio::test]
    async fn a_waiting_writer_gets_the_room_given_back() {
        let buffers = Buffers::new(4 * UNIT, Duration::from_secs(30));
        let first = buffers.take(4 * UNIT).await.unwrap();
        let waiting = tokio::spawn({
            let buffers = buffers.clone();
            async move { buffers.take(2 * UNIT).await.map(|r| r.is_some()) }
        });
        tokio::task::yield_now().await;
        assert!(!waiting.is_finished());
        drop(first);
        assert!(waiting.await.unwrap().unwrap());
        assert_eq!(buffers.held(), 0);
    }
}
