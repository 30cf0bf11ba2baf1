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
use std::{collections::HashMap, sync::Arc};

use sqlx::{PgConnection, PgPool, Postgres, pool::PoolConnection};
use tokio::sync::{mpsc, oneshot};

use crate::{
    auth::{ACCOUNT_COLUMNS, Account},
    tiers::Tier,
};

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

    /// The emission interval, in nanoseconds but a whole number of
    /// microseconds: the database's timestamps count microseconds, and an
    /// interval finer than that (60 s / 7 is 8.571428571 s) would be
    /// rounded on every step, so that a subject came up short of its burst
    /// by one request. Truncated to the microsecond, `L` intervals stay
    /// within the window. At least 1 µs: past a million requests a second
    /// the limit no longer binds.
    pub fn interval_nanos(&self) -> i64 {
        (WINDOW_NANOS / 1_000 / i64::from(self.limit.max(1))).max(1) * 1_000
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
#[error("rate limiter store failed: {message}")]
pub struct LimiterError {
    message: String,
    /// Whether the database was out of reach (rather than the statement
    /// failing), as [`crate::error::database_unavailable`] says.
    pub unavailable: bool,
}

impl LimiterError {
    fn stopped(message: &str) -> Self {
        Self {
            message: message.to_owned(),
            unavailable: false,
        }
    }
}

impl From<&sqlx::Error> for LimiterError {
    fn from(e: &sqlx::Error) -> Self {
        Self {
            message: e.to_string(),
            unavailable: crate::error::database_unavailable(e),
        }
    }
}

/// The GCRA step on a set of subjects, as an upsert over a CTE
/// `req(key, k, t)` that the statement defines first: `k` requests of
/// interval `t` nanoseconds each on subject `key` (distinct keys, `k` at most
/// the burst). It returns `(key, granted, tat)` for every subject.
///
/// For `k` requests on a subject whose state is `tat`:
/// `granted = min(k, (window - max(tat - now, 0)) / T)` and the new state is
/// `max(tat, now) + granted·T`; a new subject is granted all `k`. The SET
/// expressions all read the old row and the row lock serialises callers on
/// every instance, so the limit is exact; a subject another instance is
/// creating at the same moment is waited for, then updated.
///
/// An upsert rather than an UPDATE joined to `req`: its lookup of each
/// subject is a probe of the primary key whatever the table's statistics
/// say. The join was planned from them, and a plan made while the table
/// held a handful of rows (a seq scan of it on the outside of a nested
/// loop) stayed cached while it grew: it cut the 200-account bench to a
/// third of its throughput in about half of the runs. Subjects are taken
/// in key order, so two instances' statements lock their rows in the same
/// order and cannot deadlock.
const GCRA_UPSERT: &str = "INSERT INTO rate_limits AS r (key, tat, granted, interval_ns)
   SELECT key, now() + make_interval(secs => (k * t)::float8 / 1e9), k, t FROM req ORDER BY key
   ON CONFLICT (key) DO UPDATE SET
     granted = least(excluded.granted, greatest(0,
                 (60000000000 - greatest(0, (extract(epoch FROM r.tat - now()) * 1e9)::int8))
                 / excluded.interval_ns)),
     tat = greatest(r.tat, now()) + make_interval(secs =>
             (least(excluded.granted, greatest(0,
                (60000000000 - greatest(0, (extract(epoch FROM r.tat - now()) * 1e9)::int8))
                / excluded.interval_ns)) * excluded.interval_ns)::float8 / 1e9),
     interval_ns = excluded.interval_ns
   RETURNING r.key, r.granted, r.tat";

/// The decisions of `count` requests on one subject, in their order, from
/// what the statement granted them together and the state it left.
fn spread(
    policy: &Policy,
    count: usize,
    granted: i64,
    tat: DateTime<Utc>,
    now: DateTime<Utc>,
) -> impl Iterator<Item = Decision> + '_ {
    let t = chrono::Duration::nanoseconds(policy.interval_nanos());
    (0..count as i64).map(move |j| {
        let allowed = j < granted;
        // The state as it was right after this request.
        let tat_j = if allowed {
            tat - t * i32::try_from(granted - 1 - j).unwrap_or(i32::MAX)
        } else {
            tat
        };
        Decision::compute(policy, allowed, tat_j, now)
    })
}

/// Subjects in first-seen order, each with the positions of its requests
/// and what came with its first one.
type Groups<P, T> = Vec<(P, Vec<usize>, T)>;

/// Requests grouped by subject, with where each subject's key is in the
/// groups (to match the statement's rows to them). Linear in the batch (a
/// batch may hold hundreds of subjects).
fn by_subject<P: std::borrow::Borrow<Policy>, T>(
    requests: impl IntoIterator<Item = (P, usize, T)>,
) -> (Groups<P, T>, HashMap<String, usize>) {
    let mut subjects: Groups<P, T> = Vec::new();
    let mut index: HashMap<String, usize> = HashMap::new();
    for (p, i, extra) in requests {
        match index.get(&p.borrow().key) {
            Some(&at) => subjects[at].1.push(i),
            None => {
                index.insert(p.borrow().key.clone(), subjects.len());
                subjects.push((p, vec![i], extra));
            }
        }
    }
    (subjects, index)
}

/// The statement of [`decide_batch`].
static DECIDE: std::sync::LazyLock<String> = std::sync::LazyLock::new(|| {
    format!(
        "WITH req AS (
           SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[]) AS x(key, k, t)
         ), upd AS ({GCRA_UPSERT})
         SELECT key, granted, tat, now() FROM upd"
    )
});

/// Decides a batch of requests in one statement, in their order. Requests on
/// the same subject are grouped: the database lets through as many of them
/// as the subject's allowance holds and advances its state once.
async fn decide_batch(
    db: &mut PgConnection,
    policies: &[Policy],
) -> Result<Vec<Decision>, sqlx::Error> {
    let (subjects, index) = by_subject(policies.iter().enumerate().map(|(i, p)| (p, i, ())));
    let keys: Vec<&str> = subjects.iter().map(|(p, ..)| p.key.as_str()).collect();
    let wanted: Vec<i64> = subjects
        .iter()
        .map(|(p, pos, _)| (pos.len() as i64).min(i64::from(p.limit.max(1))))
        .collect();
    let intervals: Vec<i64> = subjects.iter().map(|(p, ..)| p.interval_nanos()).collect();
    let rows: Vec<(String, i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(&DECIDE)
        .bind(&keys)
        .bind(&wanted)
        .bind(&intervals)
        .fetch_all(&mut *db)
        .await?;
    let mut decisions: Vec<Option<Decision>> = vec![None; policies.len()];
    for (key, granted, tat, now) in rows {
        let Some((policy, positions, _)) = index.get(key.as_str()).map(|&at| &subjects[at]) else {
            continue;
        };
        for (&i, d) in positions
            .iter()
            .zip(spread(policy, positions.len(), granted, tat, now))
        {
            decisions[i] = Some(d);
        }
    }
    decisions
        .into_iter()
        .map(|d| d.ok_or(sqlx::Error::RowNotFound))
        .collect()
}

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

/// [`Policy::interval_nanos`] in SQL, of the limit `rpm` (an int8 expression).
pub fn interval_sql(rpm: &str) -> String {
    format!("(greatest(60000000 / greatest({rpm}, 1), 1) * 1000)")
}

/// The statements of [`authenticate_batch`]: the lookup alone, and the
/// lookup with the GCRA step on the accounts of the counted requests.
static KEYS_COUNTED: std::sync::LazyLock<(String, String)> = std::sync::LazyLock::new(|| {
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

/// The two statements that advance GCRA state (a batch of policies; a
/// batch of API keys with the counted ones), for tests of their plans.
#[doc(hidden)]
pub fn counting_statements() -> [&'static str; 2] {
    [DECIDE.as_str(), KEYS_COUNTED.1.as_str()]
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
///
/// An account's limit is its custom `requests_per_minute` or its tier's,
/// written into the statement from [`Tier::ALL`] so that it stays defined
/// once.
async fn authenticate_batch(
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

/// A request waiting for its lane's statement.
struct Pending<J, O> {
    job: J,
    reply: oneshot::Sender<Result<O, LimiterError>>,
}

/// Lanes of one instance's limiter for policies: a subject always goes to
/// the same lane, each lane has one statement in the database at a time, so
/// two statements of one instance never wait on each other's row lock.
/// API keys have one lane of their own: their account (the subject) is only
/// known inside the statement, so they cannot be split by subject.
const LANES: usize = 2;
/// Requests decided by one statement at most.
const MAX_BATCH: usize = 256;

/// The limiter of one instance: requests that arrive while earlier ones are
/// being decided are decided together, in one statement, so under load the
/// database does one write per batch instead of one per request. Nothing is
/// decided in the process: every decision is the database's.
#[derive(Clone)]
pub struct Limiter {
    lanes: Arc<[mpsc::Sender<Pending<Policy, Decision>>]>,
    keys: mpsc::Sender<Pending<KeyCheck, KeyOutcome>>,
}

impl Limiter {
    /// Starts the limiter's lanes on the current runtime.
    pub fn spawn(db: PgPool) -> Self {
        let decide = |mut conn: PoolConnection<Postgres>, batch: Vec<Policy>| async move {
            decide_batch(&mut conn, &batch).await
        };
        let lanes = (0..LANES)
            .map(|_| {
                let (tx, rx) = mpsc::channel(4096);
                tokio::spawn(run("policies", rx, db.clone(), decide));
                tx
            })
            .collect();
        let (keys, rx) = mpsc::channel(4096);
        tokio::spawn(run(
            "keys",
            rx,
            db,
            |mut conn, batch: Vec<KeyCheck>| async move { authenticate_batch(&mut conn, &batch).await },
        ));
        Self { lanes, keys }
    }

    /// Counts one request against the policy.
    pub async fn check(&self, policy: Policy) -> Result<Decision, LimiterError> {
        let lane = {
            use std::hash::{Hash, Hasher};
            let mut h = std::collections::hash_map::DefaultHasher::new();
            policy.key.hash(&mut h);
            (h.finish() as usize) % self.lanes.len()
        };
        submit(&self.lanes[lane], policy).await
    }

    /// Authenticates an API key and, when `check.count`, counts the request
    /// against its account's limit, batched with other requests' keys.
    pub async fn check_key(&self, check: KeyCheck) -> Result<KeyOutcome, LimiterError> {
        submit(&self.keys, check).await
    }
}

async fn submit<J, O>(lane: &mpsc::Sender<Pending<J, O>>, job: J) -> Result<O, LimiterError> {
    let (reply, answer) = oneshot::channel();
    lane.send(Pending { job, reply })
        .await
        .map_err(|_| LimiterError::stopped("limiter stopped"))?;
    answer
        .await
        .map_err(|_| LimiterError::stopped("limiter dropped the request"))?
}

/// A lane: takes a connection, then what is queued (up to [`MAX_BATCH`]),
/// decides it with one call of `decide`, answers each request, and repeats.
///
/// The connection is taken before the batch is gathered: when the database
/// is out of reach, every request that queued while the lane waited for a
/// connection is answered with that failure at once, so no request waits
/// longer than one acquire timeout.
///
/// `lane` labels the lane's metrics: its batch sizes, and how long each
/// batch's statement took from the lane's side until the database answered
/// or the statement failed, which is what every request of the batch
/// waited for (a batch that got no connection ran no statement and is not
/// timed).
async fn run<J, O, F, Fut>(
    lane: &'static str,
    mut rx: mpsc::Receiver<Pending<J, O>>,
    db: PgPool,
    decide: F,
) where
    F: Fn(PoolConnection<Postgres>, Vec<J>) -> Fut,
    Fut: std::future::Future<Output = Result<Vec<O>, sqlx::Error>>,
{
    while let Some(first) = rx.recv().await {
        let conn = db.acquire().await;
        let mut batch = vec![first];
        gather(&mut rx, &mut batch).await;
        metrics::histogram!("intake_ratelimit_batch_size", "lane" => lane)
            .record(batch.len() as f64);
        let (jobs, replies): (Vec<J>, Vec<_>) = batch.into_iter().map(|p| (p.job, p.reply)).unzip();
        let decided = match conn {
            Ok(conn) => {
                let started = std::time::Instant::now();
                let decided = decide(conn, jobs).await;
                metrics::histogram!("intake_ratelimit_statement_seconds", "lane" => lane)
                    .record(started.elapsed().as_secs_f64());
                decided
            }
            Err(e) => Err(e),
        };
        match decided {
            Ok(outcomes) => {
                for (reply, o) in replies.into_iter().zip(outcomes) {
                    let _ = reply.send(Ok(o));
                }
            }
            Err(e) => {
                let e = LimiterError::from(&e);
                for reply in replies {
                    let _ = reply.send(Err(e.clone()));
                }
            }
        }
    }
}

/// Rounds of [`gather`] at most.
const GATHER_ROUNDS: usize = 8;

/// Takes what is queued into the batch, then lets the runtime run other
/// tasks and takes what they queued, for as long as each round brings more
/// (at most [`GATHER_ROUNDS`] rounds, [`MAX_BATCH`] requests). Handlers
/// already running on this instance reach the queue within a few polls;
/// gathered now, they share this statement instead of waiting for the next
/// one. On the limiter bench this doubled the requests per statement (from
/// about 10 to about 20) and cut Postgres's CPU per request by a third to a
/// half; an idle instance spends one yield, microseconds, per request.
async fn gather<T>(rx: &mut mpsc::Receiver<T>, batch: &mut Vec<T>) {
    for round in 0..=GATHER_ROUNDS {
        if round > 0 {
            tokio::task::yield_now().await;
        }
        let before = batch.len();
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(p) => batch.push(p),
                Err(_) => break,
            }
        }
        if (round > 0 && batch.len() == before) || batch.len() >= MAX_BATCH {
            return;
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
        // One request per microsecond at most: 60 million a minute.
        assert_eq!(d.remaining, 60_000_000);
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
    fn requests_are_grouped_by_subject_in_first_seen_order() {
        let ip = |last: u8| Policy::anonymous(std::net::IpAddr::from([192, 0, 2, last]), 10);
        let batch = [ip(2), ip(1), ip(2), ip(3), ip(1), ip(2)];
        let (grouped, index) = by_subject(batch.iter().enumerate().map(|(i, p)| (p, i, i * 10)));
        let seen: Vec<(&str, Vec<usize>, usize)> = grouped
            .iter()
            .map(|(p, positions, first)| (p.key.as_str(), positions.clone(), *first))
            .collect();
        assert_eq!(
            seen,
            [
                ("ip:192.0.2.2", vec![0, 2, 5], 0),
                ("ip:192.0.2.1", vec![1, 4], 10),
                ("ip:192.0.2.3", vec![3], 30),
            ]
        );
        for (at, (p, ..)) in grouped.iter().enumerate() {
            assert_eq!(index[&p.key], at);
        }
        assert_eq!(index.len(), grouped.len());
    }

    #[tokio::test]
    async fn requests_queued_while_the_batch_gathers_join_it_up_to_the_maximum() {
        let (tx, mut rx) = mpsc::channel(1024);
        tx.send(0).await.unwrap();
        // Tasks that queue their request once they get to run, one of them
        // only after another round.
        for i in 1..=3 {
            let tx = tx.clone();
            tokio::spawn(async move { tx.send(i).await.unwrap() });
        }
        let later = tx.clone();
        tokio::spawn(async move {
            tokio::task::yield_now().await;
            later.send(4).await.unwrap();
        });
        let mut batch = Vec::new();
        gather(&mut rx, &mut batch).await;
        assert_eq!(batch, [0, 1, 2, 3, 4]);

        // No more than a statement takes; the rest waits for the next one.
        for i in 0..MAX_BATCH + 10 {
            tx.send(i).await.unwrap();
        }
        let mut batch = Vec::new();
        gather(&mut rx, &mut batch).await;
        assert_eq!(batch.len(), MAX_BATCH);
        let mut next = Vec::new();
        gather(&mut rx, &mut next).await;
        assert_eq!(next, (MAX_BATCH..MAX_BATCH + 10).collect::<Vec<_>>());
    }

    #[test]
    fn a_limit_that_does_not_divide_the_minute_keeps_its_whole_burst() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 7);
        let t = p.interval_nanos() / 1_000;
        assert_eq!(t, 8_571_428);
        // After the first request and after the sixth, as the database
        // leaves the state (whole microseconds).
        assert_eq!(Decision::compute(&p, true, at(t), at(0)).remaining, 6);
        assert_eq!(Decision::compute(&p, true, at(6 * t), at(0)).remaining, 1);
        assert_eq!(Decision::compute(&p, true, at(7 * t), at(0)).remaining, 0);
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
