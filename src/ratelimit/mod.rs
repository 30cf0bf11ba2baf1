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
use std::sync::Arc;

use sqlx::PgPool;
use tokio::sync::{mpsc, oneshot};

/// One minute in nanoseconds: the window of every policy.
const WINDOW_NANOS: i64 = 60_000_000_000;

/// What a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Row key: `a:<account id>`, `ip:<IPv4 address>` or `ip:<IPv6 network>/64`.
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

    /// The per-IP policy of anonymous requests. An IPv6 client is keyed by
    /// its /64: one subscriber commonly holds a whole /64 and could rotate
    /// through its 2^64 addresses to get a fresh budget per request. IPv4
    /// (and IPv4-mapped IPv6) addresses stay whole.
    pub fn anonymous(ip: std::net::IpAddr, limit: u32) -> Self {
        let subject = match ip.to_canonical() {
            std::net::IpAddr::V4(v4) => v4.to_string(),
            std::net::IpAddr::V6(v6) => {
                let network = u128::from(v6) & !(u128::MAX >> 64);
                format!("{}/64", std::net::Ipv6Addr::from(network))
            }
        };
        Self {
            key: format!("ip:{subject}"),
            limit,
            kind: "anonymous",
        }
    }

    /// The emission interval; at least 1 ns even for absurd limits (the
    /// database clock counts microseconds, so past a million a second the
    /// limit no longer binds).
    pub fn interval_nanos(&self) -> i64 {
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
    pub(crate) fn compute(
        policy: &Policy,
        allowed: bool,
        tat: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        let t = policy.interval_nanos();
        let limit = i64::from(policy.limit.max(1));
        // How far the subject is ahead of its allowance.
        let backlog = (tat - now).num_nanoseconds().unwrap_or(i64::MAX / 4).max(0);
        // A further request is allowed while backlog + T <= the window.
        let remaining = ((WINDOW_NANOS - backlog) / t).clamp(0, limit);
        let retry_after = (!allowed).then(|| {
            // The refused request would be allowed once backlog + T <= the window.
            ceil_div(backlog + t - WINDOW_NANOS, NANOS_PER_SEC).max(1) as u64
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

/// Why the limiter could not decide.
#[derive(Debug, Clone, thiserror::Error)]
#[error("rate limiter store failed: {0}")]
pub struct LimiterError(String);

/// Decides a batch of requests in one statement, in their order. Requests on
/// the same subject are grouped: the database lets through as many of them
/// as the subject's allowance holds and advances its state once.
///
/// For `k` requests with interval `T` on a subject whose state is `tat`:
/// `granted = min(k, (window - max(tat - now, 0)) / T)` and the new state is
/// `max(tat, now) + granted·T`. The SET expressions all read the old row and
/// the row lock serialises callers on every instance, so the limit is exact.
async fn decide_batch(db: &PgPool, policies: &[Policy]) -> Result<Vec<Decision>, sqlx::Error> {
    // Subjects in first-seen order, with the positions of their requests.
    let mut subjects: Vec<(&Policy, Vec<usize>)> = Vec::new();
    for (i, p) in policies.iter().enumerate() {
        match subjects.iter_mut().find(|(q, _)| q.key == p.key) {
            Some((_, positions)) => positions.push(i),
            None => subjects.push((p, vec![i])),
        }
    }
    // Existing subjects are updated in place (no conflict arbitration per
    // row); new ones are inserted. A subject another instance inserted after
    // this statement's snapshot gets no row from either half and is decided
    // again by the next statement, which sees it.
    let mut rows: Vec<(String, i64, DateTime<Utc>, DateTime<Utc>)> = Vec::new();
    let mut todo: Vec<&(&Policy, Vec<usize>)> = subjects.iter().collect();
    for _ in 0..3 {
        if todo.is_empty() {
            break;
        }
        let keys: Vec<&str> = todo.iter().map(|(p, _)| p.key.as_str()).collect();
        let wanted: Vec<i64> = todo
            .iter()
            .map(|(p, pos)| (pos.len() as i64).min(i64::from(p.limit.max(1))))
            .collect();
        let intervals: Vec<i64> = todo.iter().map(|(p, _)| p.interval_nanos()).collect();
        let decided: Vec<(String, i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(
            "WITH req AS (
               SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]) AS x(key, k, t)
             ), upd AS (
               UPDATE rate_limits r SET
                 granted = least(req.k, greatest(0,
                             (60000000000 - greatest(0, (extract(epoch FROM r.tat - now()) * 1e9)::int8))
                             / req.t)),
                 tat = greatest(r.tat, now()) + make_interval(secs =>
                         (least(req.k, greatest(0,
                            (60000000000 - greatest(0, (extract(epoch FROM r.tat - now()) * 1e9)::int8))
                            / req.t)) * req.t)::float8 / 1e9),
                 interval_ns = req.t
               FROM req WHERE r.key = req.key
               RETURNING r.key, r.granted, r.tat
             ), ins AS (
               INSERT INTO rate_limits (key, tat, granted, interval_ns)
               SELECT key, now() + make_interval(secs => (k * t)::float8 / 1e9), k, t FROM req
               WHERE NOT EXISTS (SELECT 1 FROM upd WHERE upd.key = req.key)
               ON CONFLICT (key) DO NOTHING
               RETURNING key, granted, tat
             )
             SELECT key, granted, tat, now() FROM upd
             UNION ALL
             SELECT key, granted, tat, now() FROM ins",
        )
        .bind(&keys)
        .bind(&wanted)
        .bind(&intervals)
        .fetch_all(db)
        .await?;
        todo.retain(|(p, _)| !decided.iter().any(|(k, ..)| *k == p.key));
        rows.extend(decided);
    }
    let mut decisions: Vec<Option<Decision>> = vec![None; policies.len()];
    for (key, granted, tat, now) in rows {
        let Some((policy, positions)) = subjects.iter().find(|(p, _)| p.key == key) else {
            continue;
        };
        let t = chrono::Duration::nanoseconds(policy.interval_nanos());
        for (j, &i) in positions.iter().enumerate() {
            let j = j as i64;
            let allowed = j < granted;
            // The state as it was right after this request.
            let tat_j = if allowed {
                tat - t * i32::try_from(granted - 1 - j).unwrap_or(i32::MAX)
            } else {
                tat
            };
            decisions[i] = Some(Decision::compute(policy, allowed, tat_j, now));
        }
    }
    decisions
        .into_iter()
        .map(|d| d.ok_or(sqlx::Error::RowNotFound))
        .collect()
}

/// Requests waiting for a decision.
struct Pending {
    policy: Policy,
    reply: oneshot::Sender<Result<Decision, LimiterError>>,
}

/// Lanes of one instance's limiter: a subject always goes to the same lane,
/// each lane has one statement in the database at a time, so two statements
/// of one instance never wait on each other's row lock.
const LANES: usize = 2;
/// Requests decided by one statement at most.
const MAX_BATCH: usize = 256;

/// The limiter of one instance: requests that arrive while earlier ones are
/// being decided are decided together, in one statement, so under load the
/// database does one write per batch instead of one per request. Nothing is
/// decided in the process: every decision is the database's.
#[derive(Clone)]
pub struct Limiter {
    lanes: Arc<[mpsc::Sender<Pending>]>,
}

impl Limiter {
    /// Starts the limiter's lanes on the current runtime.
    pub fn spawn(db: PgPool) -> Self {
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(4096);
                tokio::spawn(run(db.clone(), rx));
                tx
            })
            .collect();
        Self { lanes }
    }

    /// Counts one request against the policy.
    pub async fn check(&self, policy: Policy) -> Result<Decision, LimiterError> {
        let lane = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            policy.key.hash(&mut h);
            (h.finish() as usize) % self.lanes.len()
        };
        let (reply, answer) = oneshot::channel();
        self.lanes[lane]
            .send(Pending { policy, reply })
            .await
            .map_err(|_| LimiterError("limiter stopped".into()))?;
        answer
            .await
            .map_err(|_| LimiterError("limiter dropped the request".into()))?
    }
}

async fn run(db: PgPool, mut rx: mpsc::Receiver<Pending>) {
    while let Some(first) = rx.recv().await {
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        metrics::histogram!("intake_ratelimit_batch_size").record(batch.len() as f64);
        let (policies, replies): (Vec<Policy>, Vec<_>) =
            batch.into_iter().map(|p| (p.policy, p.reply)).unzip();
        match decide_batch(&db, &policies).await {
            Ok(decisions) => {
                for (reply, d) in replies.into_iter().zip(decisions) {
                    let _ = reply.send(Ok(d));
                }
            }
            Err(e) => {
                let e = LimiterError(e.to_string());
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
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
    let (tat, now): (Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as("SELECT (SELECT tat FROM rate_limits WHERE key = $1), now()")
            .bind(&policy.key)
            .fetch_one(db)
            .await?;
    let d = Decision::compute(policy, true, tat.unwrap_or(now), now);
    Ok((d.remaining, d.reset_at))
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_ipv4_ones_whole() {
        let key = |ip: &str| Policy::anonymous(ip.parse().unwrap(), 60).key;
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2::ffff"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.7"), "ip:203.0.113.7");
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        assert_eq!(key("::ffff:203.0.113.7"), "ip:203.0.113.7");
    }

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
