//! The batched API-key lookup: the keys that requests on this instance
//! present are looked up together, in one statement that also counts the
//! counted ones on their accounts' limits (the limiter's GCRA step,
//! composed over this module's lookup), so an API-key request costs one
//! round trip. The limit it counts with is the server's
//! ([`Account::limits`]); no SQL works it out again.

use std::{
    collections::HashMap,
    sync::{Arc, LazyLock, Mutex},
};

use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};

use super::{ACCOUNT_COLUMNS, Account};
use crate::ratelimit::{Counting, Decision, Lane, LimiterError, Policy, Step, decide_counted};

/// An API key to authenticate, and whether to count the request against its
/// account's limit.
#[derive(Debug, Clone)]
pub struct KeyCheck {
    /// The key's public id.
    pub id: String,
    /// The SHA-256 of the secret the request presented.
    pub digest: [u8; 32],
    /// Whether the request counts against the account's per-minute limit.
    pub count: bool,
}

/// What the database said of a [`KeyCheck`].
#[derive(Debug, Clone)]
pub struct KeyOutcome {
    /// The key's account, or `None` when the key is unknown, revoked or its
    /// secret wrong.
    pub account: Option<Account>,
    /// Whether the key's last use is more than a minute old (to record it).
    pub stale: bool,
    /// The decision on the account's limit, when the request was counted.
    /// `None` for a counted request too when this instance did not know the
    /// account's limit as it stands (the key's first request here, or the
    /// account's tier or overrides changed since): the caller then counts
    /// it alone, on the limit of the account this outcome carries.
    pub decision: Option<Decision>,
}

/// What this instance computed of a key's account's limit, and from which
/// version of the account's tier and overrides (`accounts.limits_version`,
/// which a trigger moves on every change of either).
struct Known {
    version: i64,
    rpm: u32,
}

/// Keys whose account's limit this instance knows. Forgotten whole when it
/// reaches this size: each key then costs one more round trip, once.
const KNOWN_MAX: usize = 100_000;

/// The statements of [`authenticate_batch`]: the lookup alone, and the
/// lookup with the GCRA step on the accounts of the counted requests whose
/// limit the batch brings (`rpm`, with the version of the account's limit
/// inputs it was computed from; the lookup passes it on only while the
/// account is still at that version).
static STATEMENTS: LazyLock<Counting> = LazyLock::new(|| {
    let lookup = format!(
        "given AS (
           SELECT * FROM unnest($1::text[], $2::bytea[], $3::int8[], $4::int8[]) WITH ORDINALITY
             AS x(key_id, digest, known_rpm, known_version, i)
         ), auth AS (
           SELECT given.i,
                  (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute') AS stale,
                  {ACCOUNT_COLUMNS},
                  accounts.limits_version,
                  CASE WHEN accounts.limits_version = given.known_version THEN given.known_rpm END AS rpm,
                  {subject} AS subject
           FROM given
           JOIN api_keys k ON k.id = given.key_id AND k.revoked_at IS NULL
                          AND k.secret_sha256 = given.digest
           JOIN accounts ON accounts.id = k.account_id
         )",
        subject = Policy::account_key_sql("accounts.id"),
    );
    Counting::over(&lookup, "auth")
});

/// The statement that advances GCRA state for a batch of keys, for tests of
/// its plan.
#[doc(hidden)]
pub fn counted_key_statement() -> &'static str {
    STATEMENTS.counted.as_str()
}

/// Authenticates a batch of API keys and counts the requests of the valid
/// ones against their accounts' limits, in one statement: the credential
/// lookup every API-key request needs anyway carries its rate-limit
/// decision, so the limiter costs no round trip of its own.
///
/// The secret's digest is compared in the database (`=` on `bytea`), so a
/// key id without its secret never spends its account's budget. The
/// comparison is not constant-time, which is safe here: it compares
/// SHA-256 digests, and learning a prefix of a stored digest does not help
/// find a secret that hashes to it.
async fn authenticate_batch(
    db: &mut PgConnection,
    known: &Mutex<HashMap<String, Known>>,
    checks: &[KeyCheck],
) -> Result<Vec<KeyOutcome>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        i: i64,
        stale: bool,
        #[sqlx(flatten)]
        account: Account,
        limits_version: i64,
        rpm: Option<i64>,
        #[sqlx(flatten)]
        step: Step,
    }
    let ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
    let digests: Vec<&[u8]> = checks.iter().map(|c| c.digest.as_slice()).collect();
    let (rpms, versions): (Vec<Option<i64>>, Vec<Option<i64>>) = {
        let known = known.lock().unwrap_or_else(|e| e.into_inner());
        checks
            .iter()
            .map(|c| match known.get(&c.id).filter(|_| c.count) {
                Some(k) => (Some(i64::from(k.rpm)), Some(k.version)),
                None => (None, None),
            })
            .unzip()
    };
    let sql = if rpms.iter().any(Option::is_some) {
        &STATEMENTS.counted
    } else {
        &STATEMENTS.uncounted
    };
    let rows: Vec<Row> = sqlx::query_as(sql)
        .bind(&ids)
        .bind(&digests)
        .bind(&rpms)
        .bind(&versions)
        .fetch_all(&mut *db)
        .await?;

    let mut outcomes = vec![
        KeyOutcome {
            account: None,
            stale: false,
            decision: None,
        };
        checks.len()
    ];
    let mut counted = Vec::new();
    let mut learned = Vec::new();
    for row in rows {
        let i = usize::try_from(row.i - 1).map_err(|_| sqlx::Error::RowNotFound)?;
        if let Some(rpm) = row.rpm {
            // Counted with what this instance knew, which the statement
            // found still current: nothing to learn.
            let limit = u32::try_from(rpm).unwrap_or(u32::MAX);
            counted.push((Policy::account(row.account.id, limit), i, row.step));
        } else if checks[i].count {
            // Learned only for a request that counts: an uncounted one (the
            // limiter off, or a route outside it) has no use for the limit.
            let rpm = row.account.limits().requests_per_minute;
            learned.push((i, row.limits_version, rpm));
        }
        outcomes[i].account = Some(row.account);
        outcomes[i].stale = row.stale;
    }
    for (i, d) in decide_counted(counted) {
        outcomes[i].decision = Some(d);
    }
    // Only keys that authenticated are learned, and a failed lookup forgets
    // nothing: a request with a key's id and a wrong secret must not cost
    // the key's owner a round trip (a revoked key's entry is harmless; the
    // statement no longer finds the key).
    if learned.is_empty() {
        return Ok(outcomes);
    }
    let mut known = known.lock().unwrap_or_else(|e| e.into_inner());
    if known.len() + learned.len() > KNOWN_MAX {
        known.clear();
    }
    for (i, version, rpm) in learned {
        known.insert(checks[i].id.clone(), Known { version, rpm });
    }
    Ok(outcomes)
}

/// This instance's lane of API keys: the keys presented while a statement
/// runs are looked up (and counted) together by the next one. One lane:
/// a key's account, the subject, is only known inside the statement, so
/// keys cannot be split by subject. Cheap to clone.
#[derive(Clone)]
pub struct KeyLane {
    lane: Lane<KeyCheck, KeyOutcome>,
}

impl KeyLane {
    /// Starts the lane on the current runtime.
    pub fn spawn(db: PgPool) -> Self {
        let known = Arc::new(Mutex::new(HashMap::new()));
        let lane = Lane::spawn(
            "keys",
            db,
            move |mut conn: PoolConnection<Postgres>, batch: Vec<KeyCheck>| {
                let known = Arc::clone(&known);
                async move { authenticate_batch(&mut conn, &known, &batch).await }
            },
        );
        Self { lane }
    }

    /// Authenticates an API key and, when `check.count`, counts the request
    /// against its account's limit, batched with other requests' keys.
    pub async fn check(&self, check: KeyCheck) -> Result<KeyOutcome, LimiterError> {
        self.lane.submit(check).await
    }
}
