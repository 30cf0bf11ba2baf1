//! Per-minute rate limits: GCRA with its state in Postgres, decided by one
//! statement on the database clock, so every instance on the database
//! enforces one limit and instance clocks do not matter.
//!
//! For a limit of `L` requests per minute the emission interval is
//! `T = 60 s / L` and the burst is `L`: a subject may send `L` requests at
//! once, then one every `T`. The state is the theoretical arrival time `tat`;
//! a request at `now` is allowed when `max(tat, now) + T <= now + L·T`.

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};
use sqlx::PgPool;

/// One minute in nanoseconds: the window of every policy.
const WINDOW_NANOS: i64 = 60_000_000_000;

/// What a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Row key: `a:<account id>` or `ip:<address>`.
    pub key: String,
    /// Requests per minute (the burst too).
    pub limit: u32,
    /// `account` or `anonymous`, for metrics.
    pub kind: &'static str,
}

impl Policy {
    /// The per-account policy of API-key requests.
    pub fn account(account_id: uuid::Uuid, limit: u32) -> Self {
        Self {
            key: format!("a:{account_id}"),
            limit,
            kind: "account",
        }
    }

    /// The per-IP policy of anonymous requests.
    pub fn anonymous(ip: std::net::IpAddr, limit: u32) -> Self {
        Self {
            key: format!("ip:{ip}"),
            limit,
            kind: "anonymous",
        }
    }

    /// The emission interval; at least 1 ns even for absurd limits (the
    /// database clock counts microseconds, so past a million a second the
    /// limit no longer binds).
    fn interval_nanos(&self) -> i64 {
        (WINDOW_NANOS / i64::from(self.limit.max(1))).max(1)
    }
}

/// The outcome of one check, with everything the headers report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests per minute.
    pub limit: u32,
    /// Requests that would be allowed right now, after this one.
    pub remaining: u32,
    /// Unix second at which `remaining` is back to `limit`.
    pub reset_at: i64,
    /// Whole seconds until then.
    pub reset_after: u64,
    /// Whole seconds until the next request is allowed (refused requests).
    pub retry_after: Option<u64>,
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

fn ceil_div(n: i64, d: i64) -> i64 {
    if n <= 0 { 0 } else { (n + d - 1) / d }
}

impl Decision {
    fn compute(policy: &Policy, allowed: bool, tat: DateTime<Utc>, now: DateTime<Utc>) -> Self {
        let t = policy.interval_nanos();
        let limit = i64::from(policy.limit.max(1));
        // How far the subject is ahead of its allowance.
        let backlog = (tat - now).num_nanoseconds().unwrap_or(i64::MAX / 4).max(0);
        // A further request is allowed while backlog + T <= limit·T.
        let remaining = ((limit * t - backlog) / t).clamp(0, limit);
        let retry_after = (!allowed).then(|| {
            // The refused request would be allowed once backlog + T <= limit·T.
            ceil_div(backlog + t - limit * t, NANOS_PER_SEC).max(1) as u64
        });
        let reset_nanos = now.timestamp_micros() * 1_000 + backlog;
        Self {
            allowed,
            limit: policy.limit,
            remaining: remaining as u32,
            reset_at: ceil_div(reset_nanos, NANOS_PER_SEC),
            reset_after: ceil_div(backlog, NANOS_PER_SEC) as u64,
            retry_after,
        }
    }

    /// Writes `X-RateLimit-*`, `RateLimit-Policy`, `RateLimit` and, when
    /// refused, `Retry-After`.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("x-ratelimit-limit", self.limit.to_string());
        set("x-ratelimit-remaining", self.remaining.to_string());
        set("x-ratelimit-reset", self.reset_at.to_string());
        set(
            "ratelimit-policy",
            format!("\"minute\";q={};w=60", self.limit),
        );
        set(
            "ratelimit",
            format!("\"minute\";r={};t={}", self.remaining, self.reset_after),
        );
        if let Some(secs) = self.retry_after {
            set("retry-after", secs.to_string());
        }
    }
}

/// Counts one request against the policy, atomically, on the database clock.
pub async fn check(db: &PgPool, policy: &Policy) -> Result<Decision, sqlx::Error> {
    let t = policy.interval_nanos();
    let burst = t * i64::from(policy.limit.max(1));
    // The SET expressions all read the old row, so `allowed` and `tat` are
    // decided on the same state; the row lock serialises concurrent callers.
    let (allowed, tat, now): (bool, DateTime<Utc>, DateTime<Utc>) = sqlx::query_as(
        "INSERT INTO rate_limits AS r (key, tat, allowed)
         VALUES ($1, now() + make_interval(secs => $2::float8 / 1e9), true)
         ON CONFLICT (key) DO UPDATE SET
           allowed = greatest(r.tat, now()) + make_interval(secs => $2::float8 / 1e9)
                     <= now() + make_interval(secs => $3::float8 / 1e9),
           tat = CASE
                   WHEN greatest(r.tat, now()) + make_interval(secs => $2::float8 / 1e9)
                        <= now() + make_interval(secs => $3::float8 / 1e9)
                   THEN greatest(r.tat, now()) + make_interval(secs => $2::float8 / 1e9)
                   ELSE r.tat
                 END
         RETURNING allowed, tat, now()",
    )
    .bind(&policy.key)
    .bind(t)
    .bind(burst)
    .fetch_one(db)
    .await?;
    Ok(Decision::compute(policy, allowed, tat, now))
}

/// Deletes state rows that no longer hold anything (their `tat` has passed).
pub async fn prune(db: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(sqlx::query("DELETE FROM rate_limits WHERE tat < now()")
        .execute(db)
        .await?
        .rows_affected())
}

/// What `/usage` reports of an account's requests: remaining now, and the
/// Unix second it is back to the limit.
pub async fn peek(db: &PgPool, policy: &Policy) -> Result<(u32, i64), sqlx::Error> {
    let row: Option<(DateTime<Utc>, DateTime<Utc>)> =
        sqlx::query_as("SELECT tat, now() FROM rate_limits WHERE key = $1")
            .bind(&policy.key)
            .fetch_optional(db)
            .await?;
    let now_only: DateTime<Utc> = match &row {
        Some((_, now)) => *now,
        None => sqlx::query_scalar("SELECT now()").fetch_one(db).await?,
    };
    let tat = row.map(|(tat, _)| tat).unwrap_or(now_only);
    let d = Decision::compute(policy, true, tat, now_only);
    Ok((d.remaining, d.reset_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn absurd_limits_do_not_divide_by_zero() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), u32::MAX);
        let d = Decision::compute(&p, true, at(0), at(0));
        assert_eq!(d.remaining, u32::MAX);
    }

    fn at(micros: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(1_700_000_000_000_000 + micros)
            .unwrap()
    }

    #[test]
    fn a_fresh_subject_has_the_whole_burst_minus_one() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 30);
        // First request: tat = now + T (2 s).
        let d = Decision::compute(&p, true, at(2_000_000), at(0));
        assert_eq!(d.remaining, 29);
        assert_eq!(d.reset_after, 2);
        assert_eq!(d.retry_after, None);
    }

    #[test]
    fn an_exhausted_subject_waits_exactly_one_interval() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 60);
        // 60 requests at once: tat = now + 60 s.
        let d = Decision::compute(&p, false, at(60_000_000), at(0));
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(1));
        assert_eq!(d.reset_after, 60);
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 100);
        let d = Decision::compute(&p, true, at(37_000_000), at(0));
        let mut h = HeaderMap::new();
        d.apply(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"minute\";q=100;w=60");
        assert_eq!(h["ratelimit"], format!("\"minute\";r={};t=37", d.remaining));
        assert_eq!(d.remaining, 38);
        assert!(h.get("retry-after").is_none());
    }
}
