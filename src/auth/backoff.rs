//! Failed logins per e-mail address, whatever address they come from: an
//! address whose logins fail `LOGIN_FAILURES_BEFORE_DELAY` times in a row
//! within 15 minutes is refused for a minute, then for twice as long after
//! each further failure (at most an hour); a success ends the streak. The
//! per-IP limit alone lets a guesser with many addresses try one account
//! without end.
//!
//! The state is a row of `login_failures` per e-mail address, advanced by
//! one upsert: the row lock orders the attempts of every instance, so the
//! count is exact however many arrive at once. Each attempt counts when it
//! starts, before its password is checked, and a success deletes the row:
//! a burst of guesses cannot all pass the check before the first of them
//! is counted. Unknown addresses are counted the same way, so the answers
//! say nothing of which accounts exist.

use std::sync::LazyLock;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use sqlx::PgPool;

use super::password::Email;
use crate::error::ApiError;

/// How long a streak lasts with no delay come of it (from its first
/// failure), and after its last delay ended.
const STREAK: &str = "interval '15 minutes'";
/// The first delay, in seconds; each next one is twice the last.
const FIRST_DELAY_SECS: u32 = 60;
/// The longest delay, in seconds.
const MAX_DELAY_SECS: u32 = 3_600;

/// An e-mail address as the streaks are keyed: the SHA-256 of what it is
/// once parsed (or would be, for input that is no address), so the table
/// never holds what people typed into the field, a password at times.
pub struct Subject([u8; 32]);

impl Subject {
    /// The subject of the e-mail a login gives.
    pub fn of(email: &str) -> Self {
        Self(Sha256::digest(Email::normalize(email).as_bytes()).into())
    }
}

/// The SQL of a step of a streak whose state is (`failures`, `delays`,
/// `locked_until`, `expires_at`), as the values of the columns of the same
/// names and of `refused`, in that order. `$2` is the failures before a
/// delay.
fn step(failures: &str, delays: &str, locked_until: &str, expires_at: &str) -> String {
    let refused = format!("coalesce({locked_until} > now(), false)");
    let delays_now = format!("NOT {refused} AND {failures} + 1 >= $2");
    let delay = format!(
        "make_interval(secs => least({FIRST_DELAY_SECS} * power(2, least({delays}, 16)), {MAX_DELAY_SECS}))"
    );
    format!(
        "CASE WHEN {refused} THEN {failures} ELSE {failures} + 1 END,
         CASE WHEN {delays_now} THEN {delays} + 1 ELSE {delays} END,
         CASE WHEN {delays_now} THEN now() + {delay} ELSE {locked_until} END,
         CASE WHEN {refused} THEN {expires_at}
              WHEN {delays_now} THEN now() + {delay} + {STREAK}
              WHEN {failures} = 0 THEN now() + {STREAK}
              ELSE {expires_at} END,
         {refused}"
    )
}

/// The statement that counts an attempt: a first one inserts the row, a
/// later one steps the row's streak (a forgotten one as if there were
/// none), or only notes that it was refused.
static ATTEMPT: LazyLock<String> = LazyLock::new(|| {
    let live = |column: &str, otherwise: &str| {
        format!("(CASE WHEN f.expires_at > now() THEN f.{column} ELSE {otherwise} END)")
    };
    format!(
        "INSERT INTO login_failures AS f
           (email_sha256, failures, delays, locked_until, expires_at, refused)
         VALUES ($1, {fresh})
         ON CONFLICT (email_sha256) DO UPDATE SET
           (failures, delays, locked_until, expires_at, refused) = ROW({stepped})
         RETURNING f.refused, f.locked_until, now()",
        fresh = step("0", "0", "NULL::timestamptz", "now()"),
        stepped = step(
            &live("failures", "0"),
            &live("delays", "0"),
            &live("locked_until", "NULL::timestamptz"),
            "f.expires_at",
        ),
    )
});

/// Counts a login attempt of the subject before its password is checked.
/// An address whose delay is running is refused (429 `rate_limited` with
/// `Retry-After`); a store that cannot count refuses too (503).
pub async fn attempt(db: &PgPool, subject: &Subject, threshold: u32) -> Result<(), ApiError> {
    let (refused, locked_until, now): (bool, Option<DateTime<Utc>>, DateTime<Utc>) =
        sqlx::query_as(&ATTEMPT)
            .bind(subject.0.as_slice())
            .bind(i32::try_from(threshold).unwrap_or(i32::MAX))
            .fetch_one(db)
            .await
            .map_err(unavailable)?;
    if !refused {
        return Ok(());
    }
    metrics::counter!("intake_login_delays_total").increment(1);
    let left = locked_until.map_or(0, |until| (until - now).num_milliseconds());
    Err(ApiError::LoginDelayed {
        retry_after: u64::try_from(left).unwrap_or(0).div_ceil(1_000).max(1),
    })
}

/// Ends the subject's streak: its password was right.
pub async fn succeeded(db: &PgPool, subject: &Subject) -> Result<(), ApiError> {
    sqlx::query("DELETE FROM login_failures WHERE email_sha256 = $1")
        .bind(subject.0.as_slice())
        .execute(db)
        .await
        .map_err(unavailable)?;
    Ok(())
}

/// Deletes forgotten streaks.
pub async fn prune(db: &PgPool) -> Result<u64, sqlx::Error> {
    Ok(
        sqlx::query("DELETE FROM login_failures WHERE expires_at <= now()")
            .execute(db)
            .await?
            .rows_affected(),
    )
}

/// A login that cannot be counted is refused, as the rate limiter's
/// failures are on `/auth/*`.
fn unavailable(e: sqlx::Error) -> ApiError {
    tracing::error!(error = %e, "login failure store failed; refusing the login");
    ApiError::ServiceUnavailable("the login limiter is unavailable; retry shortly".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_address_is_one_subject_however_it_is_typed() {
        assert_eq!(
            Subject::of(" Ann@Example.com ").0,
            Subject::of("ann@example.com").0
        );
        assert_ne!(
            Subject::of("ann@example.com").0,
            Subject::of("bo@example.com").0
        );
    }
}
