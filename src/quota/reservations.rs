//! The storage quota: bytes reserved ahead of the bytes that arrive, and
//! their conversion into usage when a file is recorded.
//!
//! Reservations are held by an upload's lease ([`Lease`]) and
//! counted in the account's `storage_reserved_bytes`; recorded files are
//! counted in `storage_used_bytes`. This module is the only writer of those
//! two columns and of the lease's `reserved_bytes`. Every change is one
//! conditional statement (or a statement inside the caller's transaction),
//! so many uploads on many instances never reserve past the quota together.
//!
//! Lock order, everywhere: the lease row first, then the account row.

use sqlx::{PgConnection, PgPool, Postgres, QueryBuilder};
use uuid::Uuid;

use super::lease::Lease;
use crate::error::ApiError;

/// Why a reservation failed.
#[derive(Debug, thiserror::Error)]
pub enum ReserveError {
    /// The quota would be exceeded.
    #[error("storage quota exceeded")]
    Quota {
        /// The quota.
        limit: u64,
        /// Used plus reserved at the time.
        used: u64,
    },
    /// The lease expired (and may have been reaped) while the upload ran.
    #[error("the upload's lease expired")]
    LeaseLost,
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<ReserveError> for ApiError {
    fn from(e: ReserveError) -> Self {
        match e {
            ReserveError::Quota { limit, used } => ApiError::StorageQuotaExceeded { limit, used },
            ReserveError::LeaseLost => {
                ApiError::ServiceUnavailable("the upload's lease expired; retry".into())
            }
            ReserveError::Db(e) => e.into(),
        }
    }
}

fn bigint(n: u64) -> i64 {
    i64::try_from(n).unwrap_or(i64::MAX)
}

/// Reserves exactly `bytes` more of the account's `quota` under `lease`
/// (renewing it, and recording `object_key` as the object being written),
/// or nothing. One statement: the lease row is locked first, then the
/// account's counters move by one conditional update.
pub async fn reserve(
    db: &PgPool,
    lease: &Lease,
    bytes: u64,
    quota: Option<u64>,
    object_key: Option<&str>,
) -> Result<(), ReserveError> {
    let n = i64::try_from(bytes).map_err(|_| ReserveError::Quota {
        limit: quota.unwrap_or(0),
        used: 0,
    })?;
    let quota = quota.map(bigint);
    let granted: Option<i64> = sqlx::query_scalar(
        "WITH l AS (
           SELECT id FROM upload_leases WHERE id = $1 AND expires_at > now() FOR UPDATE
         ), a AS (
           UPDATE accounts SET storage_reserved_bytes = storage_reserved_bytes + $3
           WHERE id = $2 AND EXISTS (SELECT 1 FROM l)
             AND ($4::int8 IS NULL OR storage_used_bytes + storage_reserved_bytes + $3 <= $4)
           RETURNING id
         )
         UPDATE upload_leases SET reserved_bytes = reserved_bytes + $3,
                                  expires_at = now() + make_interval(secs => $5),
                                  -- A new object while the last one is still
                                  -- unrecorded: the last one is finishing.
                                  finishing_keys = CASE WHEN $6 IS NOT NULL AND object_key IS NOT NULL
                                                        AND object_key <> $6
                                                        THEN array_append(finishing_keys, object_key)
                                                        ELSE finishing_keys END,
                                  object_key = coalesce($6, object_key)
         WHERE id = $1 AND EXISTS (SELECT 1 FROM a)
         RETURNING reserved_bytes",
    )
    .bind(lease.id)
    .bind(lease.account_id)
    .bind(n)
    .bind(quota)
    .bind(lease.ttl().as_secs_f64())
    .bind(object_key)
    .fetch_optional(db)
    .await?;
    if granted.is_some() {
        return Ok(());
    }
    // Refused: say why (only on this path, so it costs nothing otherwise).
    let (alive, used): (bool, i64) = sqlx::query_as(
        "SELECT EXISTS (SELECT 1 FROM upload_leases WHERE id = $1 AND expires_at > now()),
                (SELECT storage_used_bytes + storage_reserved_bytes FROM accounts WHERE id = $2)",
    )
    .bind(lease.id)
    .bind(lease.account_id)
    .fetch_one(db)
    .await?;
    if !alive {
        return Err(ReserveError::LeaseLost);
    }
    Err(ReserveError::Quota {
        limit: quota.unwrap_or(0) as u64,
        used: used.max(0) as u64,
    })
}

/// Gives back up to `bytes` of the lease's reservation and forgets the
/// object `key` it tracked (a file that failed and was removed).
pub async fn unreserve(
    db: &PgPool,
    lease: &Lease,
    bytes: u64,
    key: &str,
) -> Result<(), sqlx::Error> {
    sqlx::query(
        "WITH l AS (
           SELECT id, account_id, least($2, reserved_bytes) AS n
           FROM upload_leases WHERE id = $1 FOR UPDATE
         ), ul AS (
           UPDATE upload_leases SET reserved_bytes = reserved_bytes - (SELECT n FROM l),
             multipart_upload_id = CASE WHEN object_key = $3 THEN NULL ELSE multipart_upload_id END,
             object_key = CASE WHEN object_key = $3 THEN NULL ELSE object_key END,
             finishing_keys = array_remove(finishing_keys, $3)
           WHERE id IN (SELECT id FROM l)
         )
         UPDATE accounts SET storage_reserved_bytes = storage_reserved_bytes - (SELECT n FROM l)
         WHERE id = (SELECT account_id FROM l)",
    )
    .bind(lease.id)
    .bind(bigint(bytes))
    .bind(key)
    .execute(db)
    .await?;
    Ok(())
}

/// A file's settlement: of the `reserved` bytes `lease` holds for the file,
/// `size` become the account's usage and the rest is given back, and the
/// object `object_key` passes from the lease to the file. A typed value
/// rather than SQL text, so that the statement recording the file (one
/// round trip) never numbers or binds this module's arguments: it starts
/// with [`Settlement::statement`] and takes the size and key it inserts
/// from what was settled.
#[derive(Debug, Clone, Copy)]
pub struct Settlement<'a> {
    /// The lease holding the reservation.
    pub lease: &'a Lease,
    /// The object the file's bytes are in.
    pub object_key: &'a str,
    /// The bytes the lease reserved for the file.
    pub reserved: u64,
    /// The file's size.
    pub size: u64,
}

/// The settlement over its arguments (the one-row relation `settle`): the
/// lease row locked first, then the account row.
const SETTLE: &str = "l AS (
       SELECT upload_leases.id FROM upload_leases, settle
       WHERE upload_leases.id = settle.lease_id
         AND upload_leases.reserved_bytes >= settle.reserved AND settle.reserved >= settle.size
       FOR UPDATE OF upload_leases
     ), ul AS (
       UPDATE upload_leases SET reserved_bytes = upload_leases.reserved_bytes - settle.reserved,
         multipart_upload_id = CASE WHEN upload_leases.object_key = settle.object_key
                                    THEN NULL ELSE upload_leases.multipart_upload_id END,
         object_key = CASE WHEN upload_leases.object_key = settle.object_key
                           THEN NULL ELSE upload_leases.object_key END,
         finishing_keys = array_remove(upload_leases.finishing_keys, settle.object_key)
       FROM settle
       WHERE upload_leases.id IN (SELECT id FROM l)
       RETURNING upload_leases.account_id
     ), settled AS (
       UPDATE accounts SET storage_reserved_bytes = accounts.storage_reserved_bytes - settle.reserved,
                           storage_used_bytes = accounts.storage_used_bytes + settle.size
       FROM settle
       WHERE accounts.id = (SELECT account_id FROM ul)
       RETURNING accounts.id AS account_id, settle.size, settle.object_key
     )";

impl<'a> Settlement<'a> {
    /// A statement that starts with the `WITH` list that settles, each
    /// argument bound beside the name it has in the SQL; the caller pushes
    /// the rest. The list defines the relation
    /// `settled(account_id, size, object_key)`, which has no row when the
    /// lease is gone or holds less than `reserved`: the file must not be
    /// recorded then.
    pub fn statement(&self) -> QueryBuilder<'a, Postgres> {
        let mut query = QueryBuilder::new("WITH ");
        self.push(&mut query, None);
        query
    }

    /// Pushes the settling part of a `WITH` list (as [`Settlement::statement`]
    /// starts with) into `query`, which has pushed `WITH` and the relations
    /// before it. With `only_with`, the name of a relation pushed before,
    /// nothing settles (and `settled` has no row) unless it has a row.
    pub fn push(&self, query: &mut QueryBuilder<'a, Postgres>, only_with: Option<&str>) {
        query
            .push("settle AS (SELECT ")
            .push_bind(self.lease.id)
            .push("::uuid AS lease_id, ")
            .push_bind(bigint(self.reserved))
            .push("::int8 AS reserved, ")
            .push_bind(bigint(self.size))
            .push("::int8 AS size, ")
            .push_bind(self.object_key)
            .push("::text AS object_key");
        if let Some(gate) = only_with {
            query.push(" FROM ").push(gate);
        }
        query.push("), ").push(SETTLE).push(" ");
    }
}

/// Gives back the usage of a deleted file, inside the caller's transaction
/// (the one that deletes its row).
pub async fn free(tx: &mut PgConnection, account_id: Uuid, size: u64) -> Result<(), sqlx::Error> {
    sqlx::query("UPDATE accounts SET storage_used_bytes = storage_used_bytes - $2 WHERE id = $1")
        .bind(account_id)
        .bind(bigint(size))
        .execute(tx)
        .await?;
    Ok(())
}

/// Gives back whatever a lease still holds, inside the transaction that
/// deletes the lease (which holds its row).
pub(super) async fn release_lease(
    tx: &mut PgConnection,
    account_id: Uuid,
    reserved: i64,
) -> Result<(), sqlx::Error> {
    if reserved == 0 {
        return Ok(());
    }
    sqlx::query(
        "UPDATE accounts SET storage_reserved_bytes = storage_reserved_bytes - $2 WHERE id = $1",
    )
    .bind(account_id)
    .bind(reserved)
    .execute(tx)
    .await?;
    Ok(())
}

/// An account's storage counters beside what its rows add up to.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, sqlx::FromRow)]
pub struct Counters {
    /// The account.
    pub account_id: Uuid,
    /// `storage_used_bytes`.
    pub used: i64,
    /// The sum of its files' sizes.
    pub files_bytes: i64,
    /// `storage_reserved_bytes`.
    pub reserved: i64,
    /// The sum of its leases' reservations (streaming, presigned and
    /// resumable uploads in flight).
    pub leases_bytes: i64,
}

impl Counters {
    /// Whether the counters say what the rows say.
    pub fn agree(&self) -> bool {
        self.used == self.files_bytes && self.reserved == self.leases_bytes
    }
}

/// The counters of up to `limit` accounts whose ids come after `after`,
/// in id order, each read in one statement (so an upload's transaction is
/// seen whole or not at all).
pub async fn audit(db: &PgPool, after: Uuid, limit: usize) -> Result<Vec<Counters>, sqlx::Error> {
    sqlx::query_as(
        "SELECT a.id AS account_id, a.storage_used_bytes AS used, f.bytes AS files_bytes,
                a.storage_reserved_bytes AS reserved, l.bytes AS leases_bytes
         FROM accounts a
         CROSS JOIN LATERAL (SELECT coalesce(sum(size), 0)::int8 AS bytes
                             FROM files WHERE account_id = a.id) f
         CROSS JOIN LATERAL (SELECT coalesce(sum(reserved_bytes), 0)::int8 AS bytes
                             FROM upload_leases WHERE account_id = a.id) l
         WHERE a.id > $1 ORDER BY a.id LIMIT $2",
    )
    .bind(after)
    .bind(i64::try_from(limit).unwrap_or(i64::MAX))
    .fetch_all(db)
    .await
}

/// Sets an account's counters to what its rows add up to (the repair of
/// `intake admin reconcile --fix`); returns them as they were, `None` when
/// they agreed by then. The account row is locked before the rows are
/// summed: every change to a file's size or a lease's reservation also
/// updates the account row in its transaction, so none can slip between
/// the sums and the update.
pub async fn recount(db: &PgPool, account_id: Uuid) -> Result<Option<Counters>, sqlx::Error> {
    let mut tx = db.begin().await?;
    let locked = sqlx::query("SELECT 1 FROM accounts WHERE id = $1 FOR UPDATE")
        .bind(account_id)
        .execute(&mut *tx)
        .await?;
    if locked.rows_affected() == 0 {
        return Ok(None);
    }
    let before: Counters = sqlx::query_as(
        "SELECT a.id AS account_id, a.storage_used_bytes AS used,
                (SELECT coalesce(sum(size), 0)::int8 FROM files WHERE account_id = a.id) AS files_bytes,
                a.storage_reserved_bytes AS reserved,
                (SELECT coalesce(sum(reserved_bytes), 0)::int8 FROM upload_leases
                  WHERE account_id = a.id) AS leases_bytes
         FROM accounts a WHERE a.id = $1",
    )
    .bind(account_id)
    .fetch_one(&mut *tx)
    .await?;
    if before.agree() {
        return Ok(None);
    }
    sqlx::query(
        "UPDATE accounts SET storage_used_bytes = $2, storage_reserved_bytes = $3 WHERE id = $1",
    )
    .bind(account_id)
    .bind(before.files_bytes)
    .bind(before.leases_bytes)
    .execute(&mut *tx)
    .await?;
    tx.commit().await?;
    Ok(Some(before))
}
