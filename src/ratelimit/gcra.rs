//! The GCRA step in Postgres: the upsert that advances subjects' state on
//! the database clock, the statements built around it, and the decisions
//! of each request worked out from what it granted.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use sqlx::{PgConnection, PgPool};

use super::{
    decision::Decision,
    policy::{MINUTE_NANOS, Policy, interval_sql},
};

/// The GCRA step on a set of subjects, as an upsert over a CTE
/// `req(key, k, t, w)` that the statement defines first: `k` requests of
/// interval `t` nanoseconds each on subject `key`, whose window is `w`
/// nanoseconds (distinct keys, `k` at most the burst). It returns
/// `(key, granted, tat)` for every subject.
///
/// For `k` requests on a subject whose state is `tat`:
/// `granted = min(k, (w - max(tat - now, 0)) / T)` and the new state is
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
const GCRA_UPSERT: &str = "INSERT INTO rate_limits AS r (key, tat, granted, interval_ns, window_ns)
   SELECT key, now() + make_interval(secs => (k * t)::float8 / 1e9), k, t, w FROM req ORDER BY key
   ON CONFLICT (key) DO UPDATE SET
     granted = least(excluded.granted, greatest(0,
                 (excluded.window_ns - greatest(0, (extract(epoch FROM r.tat - now()) * 1e9)::int8))
                 / excluded.interval_ns)),
     tat = greatest(r.tat, now()) + make_interval(secs =>
             (least(excluded.granted, greatest(0,
                (excluded.window_ns - greatest(0, (extract(epoch FROM r.tat - now()) * 1e9)::int8))
                / excluded.interval_ns)) * excluded.interval_ns)::float8 / 1e9),
     interval_ns = excluded.interval_ns,
     window_ns = excluded.window_ns
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
           SELECT * FROM unnest($1::text[], $2::int8[], $3::int8[], $4::int8[]) AS x(key, k, t, w)
         ), upd AS ({GCRA_UPSERT})
         SELECT key, granted, tat, now() FROM upd"
    )
});

/// The statement that decides a batch of policies, for tests of its plan.
#[doc(hidden)]
pub fn decide_statement() -> &'static str {
    DECIDE.as_str()
}

/// Decides a batch of requests in one statement, in their order. Requests on
/// the same subject are grouped: the database lets through as many of them
/// as the subject's allowance holds and advances its state once.
pub(super) async fn decide_batch(
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
    let windows: Vec<i64> = subjects.iter().map(|(p, ..)| p.window_nanos).collect();
    let rows: Vec<(String, i64, DateTime<Utc>, DateTime<Utc>)> = sqlx::query_as(&DECIDE)
        .bind(&keys)
        .bind(&wanted)
        .bind(&intervals)
        .bind(&windows)
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

/// What the GCRA step returns beside each row of a subject source: what
/// it granted the row's subject (with the other rows of that subject in
/// the statement) and the state it left, `None` for rows not counted.
#[derive(Debug, Clone, sqlx::FromRow)]
pub struct Step {
    /// Requests granted to the subject by this statement.
    pub granted: Option<i64>,
    /// The subject's state after them.
    pub tat: Option<DateTime<Utc>>,
    /// The database's clock.
    pub now: DateTime<Utc>,
}

/// The statements that count the requests a caller's own SQL finds, so a
/// lookup the request needs anyway (the API key's) carries the GCRA step
/// and costs no round trip of its own. The limiter knows nothing of the
/// lookup: it reads two columns of the caller's relation, `subject` (a
/// [`Policy`] key) and `rpm` (the per-minute limit to count with, `NULL`
/// when the row is not counted), and returns every column of it followed
/// by [`Step`]'s.
#[derive(Debug, Clone)]
pub struct Counting {
    /// For a batch in which no row is counted: the lookup alone.
    pub uncounted: String,
    /// The lookup followed by the GCRA step on the counted rows' subjects.
    pub counted: String,
}

impl Counting {
    /// Statements over the relation `source`, which `ctes` (the body of a
    /// `WITH`, without the keyword) defines.
    pub fn over(ctes: &str, source: &str) -> Self {
        let uncounted = format!(
            "WITH {ctes}
             SELECT {source}.*, NULL::int8 AS granted, NULL::timestamptz AS tat, now() AS now
             FROM {source}"
        );
        let counted = format!(
            "WITH {ctes}, req AS (
               SELECT subject AS key, least(count(*), min(rpm)) AS k, {t} AS t,
                      {MINUTE_NANOS}::int8 AS w
               FROM {source} WHERE rpm IS NOT NULL GROUP BY subject
             ), upd AS ({GCRA_UPSERT})
             SELECT {source}.*, upd.granted, upd.tat, now() AS now
             FROM {source} LEFT JOIN upd ON {source}.rpm IS NOT NULL AND upd.key = {source}.subject",
            t = interval_sql("min(rpm)"),
        );
        Self { uncounted, counted }
    }
}

/// The decisions of the counted rows of a [`Counting`] statement, each
/// given with its position and the policy it was counted on (the one whose
/// limit the statement was given), as `(position, decision)`. Rows of one
/// subject share what it was granted, in their order; a row whose step is
/// empty is left out (the caller then checks it alone).
pub fn decide_counted(counted: Vec<(Policy, usize, Step)>) -> Vec<(usize, Decision)> {
    let stepped = counted
        .into_iter()
        .filter_map(|(policy, i, step)| Some((policy, i, (step.granted?, step.tat?, step.now))));
    let mut decided = Vec::new();
    for (policy, positions, (granted, tat, now)) in by_subject(stepped).0 {
        let decisions = spread(&policy, positions.len(), granted, tat, now);
        decided.extend(positions.into_iter().zip(decisions));
    }
    decided
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
}
