//! AI calls of an account running at once, as rows in Postgres: each
//! describe or chat holds one from before its unit is taken until it ends,
//! so the bound holds across every instance sharing the database.
//!
//! A row lives [`TTL`] unless renewed; its guard renews it while the call
//! runs (the one renewal heartbeat, [`Heartbeat`]) and deletes it when the
//! call ends, or in the background when the holder is dropped. A row whose
//! instance died stops counting when it expires, and is deleted by the next
//! call of its account.

use std::time::Duration;

use sqlx::PgPool;
use uuid::Uuid;

use crate::{db::heartbeat::Heartbeat, error::ApiError};

/// How long a call's row counts without renewal; renewed every third of it.
const TTL: Duration = Duration::from_secs(30);

/// How long a refused client is told to wait: calls take seconds.
const RETRY_AFTER_SECS: u64 = 1;

/// What the refusal names as counted.
const WHAT: &str = "AI calls of this account";

/// One running AI call; its row goes when the guard ends or is dropped.
#[must_use = "the call counts as running while the guard lives"]
pub struct AiCall {
    id: Uuid,
    db: PgPool,
    heartbeat: Heartbeat,
}

impl AiCall {
    /// Counts a call of the account as running, or answers 429
    /// `concurrent_request_limit` when `limit` already run (on any
    /// instance). The account's calls are serialized by a transaction-scoped
    /// advisory lock on the account, so that the count the insert checks is
    /// exact; expired rows of the account are deleted on the way.
    pub async fn begin(db: &PgPool, account_id: Uuid, limit: u32) -> Result<Self, ApiError> {
        let id = Uuid::now_v7();
        let mut tx = db.begin().await?;
        sqlx::query("SELECT pg_advisory_xact_lock(hashtextextended('ai_calls:' || $1::text, 0))")
            .bind(account_id)
            .execute(&mut *tx)
            .await?;
        let inserted = sqlx::query(
            "WITH expired AS (
               DELETE FROM ai_calls WHERE account_id = $2 AND expires_at <= now())
             INSERT INTO ai_calls (id, account_id, expires_at)
             SELECT $1, $2, now() + make_interval(secs => $4)
             WHERE (SELECT count(*) FROM ai_calls
                     WHERE account_id = $2 AND expires_at > now()) < $3",
        )
        .bind(id)
        .bind(account_id)
        .bind(i64::from(limit))
        .bind(TTL.as_secs_f64())
        .execute(&mut *tx)
        .await?;
        tx.commit().await?;
        if inserted.rows_affected() == 0 {
            metrics::counter!("intake_ai_concurrency_refusals_total").increment(1);
            return Err(ApiError::ConcurrentRequestLimit {
                limit: u64::from(limit),
                what: WHAT,
                retry_after: RETRY_AFTER_SECS,
            });
        }
        let renewing = db.clone();
        let heartbeat = Heartbeat::start(TTL / 3, "an AI call", id, move || {
            let db = renewing.clone();
            async move { renew(&db, id).await }
        })
        .on_drop({
            let db = db.clone();
            async move { end_logged(&db, id).await }
        });
        Ok(Self {
            id,
            db: db.clone(),
            heartbeat,
        })
    }

    /// The call is over: its row goes now.
    pub async fn end(mut self) {
        if self.heartbeat.stop() {
            end_logged(&self.db, self.id).await;
        }
    }
}

async fn renew(db: &PgPool, id: Uuid) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE ai_calls SET expires_at = now() + make_interval(secs => $2) WHERE id = $1")
        .bind(id)
        .bind(TTL.as_secs_f64())
        .execute(db)
        .await?;
    Ok(())
}

async fn end_logged(db: &PgPool, id: Uuid) {
    if let Err(e) = sqlx::query("DELETE FROM ai_calls WHERE id = $1")
        .bind(id)
        .execute(db)
        .await
    {
        // The row expires on its own.
        tracing::error!(error = %e, call = %id, "could not end an AI call");
    }
}
