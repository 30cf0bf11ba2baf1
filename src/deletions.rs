//! The durable queue of objects to delete: every object intake gives up (a
//! deleted file, a failed or abandoned upload) passes through it, so none is
//! forgotten when storage is down or the instance dies.
//!
//! It owns the `object_deletions` table. The pattern everywhere is "write,
//! commit, then call storage": an object is queued in the transaction that
//! gives it up, storage is called after the commit with no connection held,
//! and the queue entry goes once storage has done it. The reaper retries
//! what is still queued.

use sqlx::{PgConnection, PgPool};

use crate::storage::ObjectStore;

/// An object to remove, and the multipart upload still writing it, if any.
#[derive(Debug, Clone, PartialEq, Eq, sqlx::FromRow)]
pub struct Doomed {
    /// The object's key.
    pub object_key: String,
    /// The multipart upload to abort first.
    pub multipart_upload_id: Option<String>,
}

impl Doomed {
    /// An object with no multipart upload.
    pub fn object(key: impl Into<String>) -> Self {
        Self {
            object_key: key.into(),
            multipart_upload_id: None,
        }
    }
}

/// Queues an object for deletion, inside the caller's transaction.
pub async fn enqueue(tx: &mut PgConnection, doomed: &Doomed) -> Result<(), sqlx::Error> {
    sqlx::query(
        "INSERT INTO object_deletions (object_key, multipart_upload_id) VALUES ($1, $2)
         ON CONFLICT (object_key) DO UPDATE
           SET multipart_upload_id = coalesce(EXCLUDED.multipart_upload_id, object_deletions.multipart_upload_id)",
    )
    .bind(&doomed.object_key)
    .bind(&doomed.multipart_upload_id)
    .execute(tx)
    .await?;
    Ok(())
}

/// Queues objects with no multipart upload, in one statement, inside the
/// caller's transaction.
pub async fn enqueue_objects(tx: &mut PgConnection, keys: &[String]) -> Result<(), sqlx::Error> {
    if keys.is_empty() {
        return Ok(());
    }
    sqlx::query(
        "INSERT INTO object_deletions (object_key) SELECT unnest($1::text[])
         ON CONFLICT (object_key) DO NOTHING",
    )
    .bind(keys)
    .execute(tx)
    .await?;
    Ok(())
}

/// Asks storage to remove the object: the multipart upload first, then the
/// object itself (deleting a missing object succeeds). The object is deleted
/// even when the abort fails (a multipart upload that was completed after
/// all, on servers that answer more than NoSuchUpload for it).
async fn remove(
    store: &dyn ObjectStore,
    doomed: &Doomed,
) -> Result<(), crate::storage::StorageError> {
    let aborted = match &doomed.multipart_upload_id {
        Some(upload_id) => store.abort_multipart(&doomed.object_key, upload_id).await,
        None => Ok(()),
    };
    let deleted = store.delete(&doomed.object_key).await;
    match aborted {
        // Storage that cannot be reached now may be reached later: retry.
        Err(e @ crate::storage::StorageError::Unavailable(_)) => Err(e),
        // Storage answered and refused the abort of an upload it no longer
        // has (aborted by the writer that left it, or completed by an
        // instance that died before recording it; s3s-fs answers 403 for
        // those): asking again gets the same answer forever, so once the
        // object is gone the entry is done.
        Err(e) => {
            tracing::warn!(error = %e, key = doomed.object_key, "storage refused to abort the multipart upload; taking it as ended");
            deleted
        }
        Ok(()) => deleted,
    }
}

/// Deletes objects already queued (after the commit that queued them); what
/// storage refuses now stays queued for [`retry`].
pub async fn delete_queued(db: &PgPool, store: &dyn ObjectStore, doomed: &[Doomed]) {
    for d in doomed {
        match remove(store, d).await {
            Ok(()) => {
                if let Err(e) = sqlx::query("DELETE FROM object_deletions WHERE object_key = $1")
                    .bind(&d.object_key)
                    .execute(db)
                    .await
                {
                    tracing::warn!(error = %e, key = d.object_key, "object deleted, but its queue entry remains");
                }
            }
            Err(e) => {
                tracing::warn!(error = %e, key = d.object_key, "object delete failed; will retry");
            }
        }
    }
}

/// Removes an object that something else still tracks until this returns
/// (an upload's lease): storage now, and the queue only if storage refuses.
pub async fn remove_or_enqueue(
    db: &PgPool,
    store: &dyn ObjectStore,
    doomed: &Doomed,
) -> Result<(), sqlx::Error> {
    if let Err(e) = remove(store, doomed).await {
        tracing::warn!(error = %e, key = doomed.object_key, "could not remove an unfinished upload's object; queued");
        let mut conn = db.acquire().await?;
        enqueue(&mut conn, doomed).await?;
    }
    Ok(())
}

/// Retries queued deletions that are due, with a growing delay between
/// attempts. Rows are claimed with `SKIP LOCKED` and a push of their next
/// attempt, then the claim commits before storage is called, so several
/// instances never work on one row and no connection waits on storage.
/// Returns how many were done.
pub async fn retry(db: &PgPool, store: &dyn ObjectStore) -> Result<u64, sqlx::Error> {
    let due: Vec<Doomed> = sqlx::query_as(
        "UPDATE object_deletions SET attempts = attempts + 1,
           next_attempt_at = now() + make_interval(secs => least(3600, 10 * 2 ^ least(attempts, 12)))
         WHERE object_key IN (
           SELECT object_key FROM object_deletions WHERE next_attempt_at <= now()
           ORDER BY next_attempt_at LIMIT 100 FOR UPDATE SKIP LOCKED)
         RETURNING object_key, multipart_upload_id",
    )
    .fetch_all(db)
    .await?;
    let mut done = 0;
    for d in &due {
        match remove(store, d).await {
            Ok(()) => {
                sqlx::query("DELETE FROM object_deletions WHERE object_key = $1")
                    .bind(&d.object_key)
                    .execute(db)
                    .await?;
                done += 1;
            }
            Err(e) => {
                tracing::warn!(error = %e, key = d.object_key, "queued object delete failed again")
            }
        }
    }
    Ok(done)
}

/// Of `keys`, those queued for deletion (for `intake admin reconcile`: an
/// object on its way out is no orphan).
pub async fn queued_keys(db: &PgPool, keys: &[String]) -> Result<Vec<String>, sqlx::Error> {
    sqlx::query_scalar("SELECT object_key FROM object_deletions WHERE object_key = ANY($1)")
        .bind(keys)
        .fetch_all(db)
        .await
}
