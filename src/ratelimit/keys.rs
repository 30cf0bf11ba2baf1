//! The batched API-key statement: a batch of keys authenticated, and the
//! counted requests among them decided on their accounts' limits, in one
//! round trip.

use chrono::{DateTime, Utc};
use sqlx::PgConnection;

use super::{
    decision::Decision,
    gcra::{GCRA_UPSERT, by_subject, spread},
    policy::{Policy, interval_sql},
};
use crate::{
    auth::{ACCOUNT_COLUMNS, Account},
    tiers::Tier,
};

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
    /// The decision on the account's limit, when the request was counted
    /// (were the statement ever to return no state for a counted request,
    /// `None` too: the request is then checked alone).
    pub decision: Option<Decision>,
}

/// The statements of [`authenticate_batch`]: the lookup alone, and the
/// lookup with the GCRA step on the accounts of the counted requests.
pub(super) static KEYS_COUNTED: std::sync::LazyLock<(String, String)> =
    std::sync::LazyLock::new(|| {
        // The tier table's limits, written into the statement from the one place
        // they are defined.
        let tier_rpm: String = Tier::ALL
            .iter()
            .map(|t| {
                format!(
                    " WHEN '{}' THEN {}",
                    t.as_str(),
                    t.limits().requests_per_minute
                )
            })
            .collect();
        let auth = format!(
            "given AS (
           SELECT * FROM unnest($1::text[], $2::bytea[], $3::bool[]) WITH ORDINALITY
             AS x(key_id, digest, counted, i)
         ), auth AS (
           SELECT given.i, given.counted,
                  (k.last_used_at IS NULL OR k.last_used_at < now() - interval '1 minute') AS stale,
                  {ACCOUNT_COLUMNS},
                  coalesce((accounts.custom_limits->>'requests_per_minute')::int8,
                           CASE accounts.tier{tier_rpm} END) AS rpm,
                  'a:' || accounts.id AS subject
           FROM given
           JOIN api_keys k ON k.id = given.key_id AND k.revoked_at IS NULL
                          AND k.secret_sha256 = given.digest
           JOIN accounts ON accounts.id = k.account_id
         )"
        );
        let alone = format!(
            "WITH {auth}
         SELECT auth.*, NULL::int8 AS granted, NULL::timestamptz AS tat, now() AS now FROM auth"
        );
        let counted = format!(
            "WITH {auth}, req AS (
           SELECT subject AS key, least(count(*), min(rpm)) AS k,
                  {} AS t
           FROM auth WHERE counted GROUP BY subject
         ), upd AS ({GCRA_UPSERT})
         SELECT auth.*, upd.granted, upd.tat, now() AS now
         FROM auth LEFT JOIN upd ON auth.counted AND upd.key = auth.subject",
            interval_sql("min(rpm)"),
        );
        (alone, counted)
    });

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
///
/// An account's limit is its custom `requests_per_minute` or its tier's,
/// written into the statement from [`Tier::ALL`] so that it stays defined
/// once.
pub(super) async fn authenticate_batch(
    db: &mut PgConnection,
    checks: &[KeyCheck],
) -> Result<Vec<KeyOutcome>, sqlx::Error> {
    #[derive(sqlx::FromRow)]
    struct Row {
        i: i64,
        stale: bool,
        #[sqlx(flatten)]
        account: Account,
        rpm: i64,
        granted: Option<i64>,
        tat: Option<DateTime<Utc>>,
        now: DateTime<Utc>,
    }
    let ids: Vec<&str> = checks.iter().map(|c| c.id.as_str()).collect();
    let digests: Vec<&[u8]> = checks.iter().map(|c| c.digest.as_slice()).collect();
    let counted: Vec<bool> = checks.iter().map(|c| c.count).collect();
    let sql = if counted.iter().any(|&c| c) {
        &KEYS_COUNTED.1
    } else {
        &KEYS_COUNTED.0
    };
    let rows: Vec<Row> = sqlx::query_as(sql)
        .bind(&ids)
        .bind(&digests)
        .bind(&counted)
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
    // Counted requests per account, in their order, with what the
    // statement granted them.
    let mut decided = Vec::new();
    for row in rows {
        let i = usize::try_from(row.i - 1).map_err(|_| sqlx::Error::RowNotFound)?;
        // The headers report the limit the statement enforced, which is the
        // server's reading of the tier table and the overrides (a test holds
        // the two together); a difference is logged, not hidden.
        let limit = u32::try_from(row.rpm).unwrap_or(u32::MAX);
        let server = row.account.limits().requests_per_minute;
        if limit != server {
            tracing::error!(
                account = %row.account.id,
                database = row.rpm,
                server,
                "the batched key statement read another rate limit than the server"
            );
        }
        if checks[i].count {
            let policy = Policy::account(row.account.id, limit);
            if let (Some(granted), Some(tat)) = (row.granted, row.tat) {
                decided.push((policy, i, (granted, tat, row.now)));
            }
        }
        outcomes[i].account = Some(row.account);
        outcomes[i].stale = row.stale;
    }
    for (policy, positions, (granted, tat, now)) in by_subject(decided).0 {
        let decisions = spread(&policy, positions.len(), granted, tat, now);
        for (i, d) in positions.into_iter().zip(decisions) {
            outcomes[i].decision = Some(d);
        }
    }
    Ok(outcomes)
}
