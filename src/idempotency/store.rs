//! The `idempotency_keys` table: claiming a key, holding it while its
//! request runs, keeping the answer or freeing the key, and pruning keys
//! past their time. Nothing else reads or writes the table.

use std::{sync::Arc, time::Duration};

use sqlx::{PgPool, types::Json};
use uuid::Uuid;

use super::{answer::Kept, key::Key};
use crate::db::heartbeat::Heartbeat;

/// What a key belongs to: the account, the key, the method and the path
/// with its parameters.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Scope {
    /// The account that sent it.
    pub account_id: Uuid,
    /// The key.
    pub key: Key,
    /// The request's method.
    pub method: String,
    /// The request's path (its parameters included).
    pub path: String,
}

/// What a claim found.
#[derive(Debug)]
pub enum Claim {
    /// The key was free: it is the caller's now.
    Ours,
    /// A request with the key ran before, and this is its kept answer, with
    /// the hash of its body (on routes that compare bodies).
    Kept {
        /// SHA-256 of the first request's body, where compared.
        request_hash: Option<Vec<u8>>,
        /// Its answer.
        answer: Kept,
        /// How long it is kept from now.
        remaining: Duration,
    },
    /// A request with the key is running (or had just ended when the claim
    /// looked), with the hash of its body where known.
    Running {
        /// SHA-256 of the running request's body, where compared.
        request_hash: Option<Vec<u8>>,
    },
}

#[derive(sqlx::FromRow)]
struct Found {
    claimed: Option<bool>,
    request_hash: Option<Vec<u8>>,
    status: Option<i16>,
    headers: Option<Json<Vec<(String, String)>>>,
    body: Option<Vec<u8>>,
    remaining: Option<f64>,
}

/// Claims the key for the request `holder`, held for `hold` unless
/// renewed, or reads what holds it. One statement: a live row (kept or
/// running) is only read, by its primary key; a missing or expired one is
/// taken by an insert that replaces an expired row. Two requests racing
/// for a free key: one inserts, the other's insert meets the committed row
/// that its snapshot cannot show, and it reads as [`Claim::Running`] with
/// nothing known, which is what it is answered anyway (retry in a second).
pub async fn claim(
    db: &PgPool,
    scope: &Scope,
    request_hash: Option<&[u8]>,
    holder: Uuid,
    hold: Duration,
) -> Result<Claim, sqlx::Error> {
    let found: Found = sqlx::query_as(
        "WITH live AS (
             SELECT request_hash, status, headers, body,
                    extract(epoch FROM expires_at - now())::float8 AS remaining
             FROM idempotency_keys
             WHERE account_id = $1 AND key = $2 AND method = $3 AND path = $4
               AND expires_at > now()
         ), claimed AS (
             INSERT INTO idempotency_keys AS k
                    (account_id, key, method, path, request_hash, holder, expires_at)
             SELECT $1, $2, $3, $4, $5, $6, now() + make_interval(secs => $7)
             WHERE NOT EXISTS (SELECT 1 FROM live)
             ON CONFLICT (account_id, key, method, path) DO UPDATE
                SET request_hash = EXCLUDED.request_hash, holder = EXCLUDED.holder,
                    status = NULL, headers = NULL, body = NULL,
                    expires_at = EXCLUDED.expires_at
              WHERE k.expires_at <= now()
             RETURNING true AS claimed
         )
         SELECT (SELECT claimed FROM claimed) AS claimed,
                live.request_hash, live.status, live.headers, live.body, live.remaining
         FROM (VALUES (1)) AS one LEFT JOIN live ON true",
    )
    .bind(scope.account_id)
    .bind(scope.key.as_str())
    .bind(&scope.method)
    .bind(&scope.path)
    .bind(request_hash)
    .bind(holder)
    .bind(hold.as_secs_f64())
    .fetch_one(db)
    .await?;
    if found.claimed == Some(true) {
        return Ok(Claim::Ours);
    }
    Ok(match (found.status, found.headers, found.body) {
        (Some(status), Some(Json(headers)), Some(body)) => Claim::Kept {
            request_hash: found.request_hash,
            answer: Kept {
                status: u16::try_from(status).unwrap_or(500),
                headers,
                body,
            },
            remaining: Duration::try_from_secs_f64(found.remaining.unwrap_or(0.0))
                .unwrap_or_default(),
        },
        _ => Claim::Running {
            request_hash: found.request_hash,
        },
    })
}

/// A claimed key, for as long as its request runs: renewed every third of
/// its hold, and freed in the background if dropped before
/// [`Hold::keep`] or [`Hold::free`] (the request was dropped: its client
/// went away).
pub struct Hold {
    db: PgPool,
    scope: Arc<Scope>,
    holder: Uuid,
    heartbeat: Heartbeat,
}

impl Hold {
    /// Starts holding a key that [`claim`] gave `holder`.
    pub fn start(db: &PgPool, scope: Scope, holder: Uuid, hold: Duration) -> Self {
        let scope = Arc::new(scope);
        let heartbeat = {
            let (db, scope) = (db.clone(), scope.clone());
            Heartbeat::start(hold / 3, "an idempotency key", holder, move || {
                let (db, scope) = (db.clone(), scope.clone());
                async move { renew(&db, &scope, holder, hold).await }
            })
        }
        .on_drop({
            let (db, scope) = (db.clone(), scope.clone());
            async move {
                if let Err(e) = free(&db, &scope, holder).await {
                    // Its hold lapses instead.
                    tracing::warn!(error = %e, "could not free an idempotency key");
                }
            }
        });
        Self {
            db: db.clone(),
            scope,
            holder,
            heartbeat,
        }
    }

    /// Keeps `answer` as the key's answer for `ttl` from now.
    pub async fn keep(mut self, answer: &Kept, ttl: Duration) -> Result<(), sqlx::Error> {
        self.heartbeat.stop();
        held(
            "UPDATE idempotency_keys
                SET holder = NULL, status = $6, headers = $7, body = $8,
                    expires_at = now() + make_interval(secs => $9)
              WHERE account_id = $1 AND key = $2 AND method = $3 AND path = $4
                AND holder = $5",
            &self.scope,
            self.holder,
        )
        .bind(i16::try_from(answer.status).unwrap_or(i16::MAX))
        .bind(Json(&answer.headers))
        .bind(&answer.body)
        .bind(ttl.as_secs_f64())
        .execute(&self.db)
        .await?;
        Ok(())
    }

    /// Frees the key: the next request with it runs anew.
    pub async fn free(mut self) -> Result<(), sqlx::Error> {
        self.heartbeat.stop();
        free(&self.db, &self.scope, self.holder).await
    }
}

/// Extends the hold of a key still held by `holder` (never shortening it).
async fn renew(
    db: &PgPool,
    scope: &Scope,
    holder: Uuid,
    hold: Duration,
) -> Result<(), sqlx::Error> {
    held(
        "UPDATE idempotency_keys
            SET expires_at = greatest(expires_at, now() + make_interval(secs => $6))
          WHERE account_id = $1 AND key = $2 AND method = $3 AND path = $4 AND holder = $5",
        scope,
        holder,
    )
    .bind(hold.as_secs_f64())
    .execute(db)
    .await?;
    Ok(())
}

/// Deletes the row of a key still held by `holder`.
async fn free(db: &PgPool, scope: &Scope, holder: Uuid) -> Result<(), sqlx::Error> {
    held(
        "DELETE FROM idempotency_keys
          WHERE account_id = $1 AND key = $2 AND method = $3 AND path = $4 AND holder = $5",
        scope,
        holder,
    )
    .execute(db)
    .await?;
    Ok(())
}

/// A statement on the row of `scope` while `holder` holds it: the
/// statement's `$1` to `$5` are the scope's columns and the holder, in
/// that order (its own arguments follow from `$6`).
fn held<'q>(
    sql: &'q str,
    scope: &'q Scope,
    holder: Uuid,
) -> sqlx::query::Query<'q, sqlx::Postgres, sqlx::postgres::PgArguments> {
    sqlx::query(sql)
        .bind(scope.account_id)
        .bind(scope.key.as_str())
        .bind(&scope.method)
        .bind(&scope.path)
        .bind(holder)
}

/// Deletes the keys past their time: kept answers older than their ttl,
/// and holds that lapsed (their instance died). Returns how many.
pub async fn prune(db: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM idempotency_keys WHERE expires_at <= now()")
            .execute(db)
            .await?
            .rows_affected(),
    )
}
