//! Readiness (`GET /readyz`): whether the database and the object store
//! answer. Each check costs a query and a storage call (a HeadBucket on
//! S3), and anyone may ask for it as often as they like, so an instance
//! checks at most once a second and answers every probe in between with
//! the last verdict; concurrent probes wait for the one check in flight.

use std::time::Duration;

use sqlx::PgPool;
use tokio::{sync::Mutex, time::Instant};

use crate::storage::ObjectStore;

/// How long a verdict stands before the next probe checks again.
pub const FRESH_FOR: Duration = Duration::from_secs(1);

/// Why an instance is not ready.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Unready {
    /// The database did not answer a query.
    #[error("the database is unreachable")]
    Database,
    /// The object store (of this kind) did not answer.
    #[error("the object store ({0}) is unreachable")]
    Storage(&'static str),
}

/// The last verdict and when it was reached.
#[derive(Debug, Default)]
pub struct Readiness {
    last: Mutex<Option<(Instant, Result<(), Unready>)>>,
}

impl Readiness {
    /// The verdict: the last one while it is fresh, else a new check.
    pub async fn check(&self, db: &PgPool, store: &dyn ObjectStore) -> Result<(), Unready> {
        let mut last = self.last.lock().await;
        if let Some((at, verdict)) = last.as_ref()
            && at.elapsed() < FRESH_FOR
        {
            return verdict.clone();
        }
        let verdict = probe(db, store).await;
        *last = Some((Instant::now(), verdict.clone()));
        verdict
    }
}

/// One check of both dependencies, logging what failed.
async fn probe(db: &PgPool, store: &dyn ObjectStore) -> Result<(), Unready> {
    if let Err(e) = sqlx::query("SELECT 1").execute(db).await {
        tracing::warn!(error = %e, "readiness: database unreachable");
        return Err(Unready::Database);
    }
    if let Err(e) = store.check().await {
        tracing::warn!(error = %e, backend = store.kind(), "readiness: storage unreachable");
        return Err(Unready::Storage(store.kind()));
    }
    Ok(())
}
