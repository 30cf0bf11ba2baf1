//! The monthly counters (AI descriptions, chat messages): one row per
//! account and calendar month (UTC) in `monthly_usage`, incremented by one
//! conditional statement so concurrent requests never pass the limit.
//!
//! The month is computed in SQL from the database clock, never from an
//! instance's clock, so every instance counts into the same row and a new
//! month starts for all of them at once.

use chrono::{DateTime, Datelike, NaiveDate, TimeZone, Utc};
use sqlx::PgPool;
use uuid::Uuid;

use crate::error::ApiError;

/// The month a counter row belongs to, from the database clock.
const THIS_MONTH: &str = "date_trunc('month', now() AT TIME ZONE 'UTC')::date";

/// Which monthly counter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Counter {
    /// `POST /files/{id}/describe`.
    AiDescriptions,
    /// `POST /chat`.
    ChatMessages,
}

impl Counter {
    /// The column of `monthly_usage` (a fixed identifier, never input).
    fn column(self) -> &'static str {
        match self {
            Self::AiDescriptions => "ai_descriptions",
            Self::ChatMessages => "chat_messages",
        }
    }

    /// The name used in metrics labels.
    pub fn as_str(self) -> &'static str {
        self.column()
    }
}

/// One unit taken from a counter, to give back with [`refund`] when the work
/// it paid for did not happen.
#[derive(Debug, Clone, Copy)]
#[must_use = "a ticket is refunded when the work it paid for fails"]
pub struct Ticket {
    /// Whose counter.
    pub account_id: Uuid,
    /// Which counter.
    pub counter: Counter,
    /// The month row that was incremented (a refund after midnight at the
    /// end of a month still goes to the month that was charged).
    pub month: NaiveDate,
}

/// Why a unit could not be taken.
#[derive(Debug, thiserror::Error)]
pub enum MonthlyError {
    /// The month's quota is used up.
    #[error("the monthly quota of {limit} is used up")]
    Exhausted {
        /// The limit.
        limit: u32,
        /// Used this month.
        used: i64,
        /// Whole seconds until the first instant of next month (UTC).
        retry_after: u64,
    },
    /// The database failed.
    #[error(transparent)]
    Db(#[from] sqlx::Error),
}

impl From<MonthlyError> for ApiError {
    fn from(e: MonthlyError) -> Self {
        match e {
            MonthlyError::Exhausted {
                limit,
                used,
                retry_after,
            } => ApiError::MonthlyQuotaExceeded {
                limit: u64::from(limit),
                used: u64::try_from(used).unwrap_or(0),
                retry_after,
            },
            MonthlyError::Db(e) => e.into(),
        }
    }
}

/// Takes one unit of `counter` for this month, unless `limit` units are
/// already used. One statement: the upsert's conditional update is decided
/// on the locked row, so concurrent requests never pass the limit.
pub async fn consume(
    db: &PgPool,
    account_id: Uuid,
    counter: Counter,
    limit: u32,
) -> Result<Ticket, MonthlyError> {
    let col = counter.column();
    let taken: Option<NaiveDate> = sqlx::query_scalar(&format!(
        "INSERT INTO monthly_usage (account_id, month, {col})
         SELECT $1, {THIS_MONTH}, 1 WHERE $2 > 0
         ON CONFLICT (account_id, month) DO UPDATE SET {col} = monthly_usage.{col} + 1
           WHERE monthly_usage.{col} < $2
         RETURNING month"
    ))
    .bind(account_id)
    .bind(i64::from(limit))
    .fetch_optional(db)
    .await?;
    if let Some(month) = taken {
        return Ok(Ticket {
            account_id,
            counter,
            month,
        });
    }
    // Refused: read what is used now, and the clock the month is decided by.
    let (used, now): (i64, DateTime<Utc>) = sqlx::query_as(&format!(
        "SELECT coalesce((SELECT {col} FROM monthly_usage
                           WHERE account_id = $1 AND month = {THIS_MONTH}), 0)::int8, now()"
    ))
    .bind(account_id)
    .fetch_one(db)
    .await?;
    let millis = u64::try_from((next_month_start(now) - now).num_milliseconds()).unwrap_or(0);
    Err(MonthlyError::Exhausted {
        limit,
        used,
        // Whole seconds, rounded up: retrying after them is in the new month.
        retry_after: millis.div_ceil(1000),
    })
}

/// Gives back a unit taken by [`consume`], to the month it was taken from
/// (never below zero).
pub async fn refund(db: &PgPool, ticket: Ticket) -> Result<(), sqlx::Error> {
    let col = ticket.counter.column();
    sqlx::query(&format!(
        "UPDATE monthly_usage SET {col} = {col} - 1
         WHERE account_id = $1 AND month = $2 AND {col} > 0"
    ))
    .bind(ticket.account_id)
    .bind(ticket.month)
    .execute(db)
    .await?;
    metrics::counter!("intake_ai_refunds_total", "counter" => ticket.counter.as_str()).increment(1);
    Ok(())
}

/// Gives back a unit, logging instead of failing: a refund runs on a path
/// that is already answering an error, which is the error worth answering.
pub async fn refund_logged(db: &PgPool, ticket: Ticket) {
    if let Err(e) = refund(db, ticket).await {
        tracing::error!(error = %e, account = %ticket.account_id, counter = ticket.counter.as_str(),
            "could not refund a monthly counter");
    }
}

/// A unit taken from a counter for work that someone bills (an AI
/// provider). Until the work is handed to them ([`Charge::spend`]), a
/// holder dropped on an early exit (an error, a client gone) gives the unit
/// back in the background. Once it is handed over the unit stays used
/// however the holder ends, a client gone included, since the work is
/// billed all the same; only [`Charge::refund`] gives it back, for work
/// that failed.
#[derive(Debug)]
pub struct Charge {
    db: PgPool,
    ticket: Option<Ticket>,
    spent: bool,
}

impl Charge {
    /// Takes one unit (see [`consume`]).
    pub async fn take(
        db: &PgPool,
        account_id: Uuid,
        counter: Counter,
        limit: u32,
    ) -> Result<Self, MonthlyError> {
        let ticket = consume(db, account_id, counter, limit).await?;
        Ok(Self {
            db: db.clone(),
            ticket: Some(ticket),
            spent: false,
        })
    }

    /// The work is being handed to whoever bills it: from now on the unit
    /// is not given back when the holder is dropped.
    pub fn spend(&mut self) {
        self.spent = true;
    }

    /// The work was done: the unit stays used.
    pub fn keep(mut self) {
        self.ticket = None;
    }

    /// The work failed: the unit goes back now.
    pub async fn refund(mut self) {
        if let Some(ticket) = self.ticket.take() {
            refund_logged(&self.db, ticket).await;
        }
    }
}

impl Drop for Charge {
    fn drop(&mut self) {
        if let Some(ticket) = self.ticket.take()
            && !self.spent
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            let db = self.db.clone();
            runtime.spawn(async move { refund_logged(&db, ticket).await });
        }
    }
}

/// This month's counters of an account.
#[derive(Debug, Clone, Copy)]
pub struct MonthUsage {
    /// AI descriptions used.
    pub ai_descriptions: i64,
    /// Chat messages used.
    pub chat_messages: i64,
    /// The first instant of next month (UTC), by the database clock.
    pub resets_at: DateTime<Utc>,
}

/// Reads this month's counters of an account (zero when it has no row).
pub async fn usage(db: &PgPool, account_id: Uuid) -> Result<MonthUsage, sqlx::Error> {
    let (ai_descriptions, chat_messages, now): (i64, i64, DateTime<Utc>) =
        sqlx::query_as(&format!(
            "SELECT coalesce(m.ai_descriptions, 0)::int8, coalesce(m.chat_messages, 0)::int8, now()
             FROM (SELECT 1) one
             LEFT JOIN monthly_usage m ON m.account_id = $1 AND m.month = {THIS_MONTH}"
        ))
        .bind(account_id)
        .fetch_one(db)
        .await?;
    Ok(MonthUsage {
        ai_descriptions,
        chat_messages,
        resets_at: next_month_start(now),
    })
}

/// The first instant of the month after `now` (UTC).
pub fn next_month_start(now: DateTime<Utc>) -> DateTime<Utc> {
    let (y, m) = if now.month() == 12 {
        (now.year() + 1, 1)
    } else {
        (now.year(), now.month() + 1)
    };
    Utc.with_ymd_and_hms(y, m, 1, 0, 0, 0)
        .single()
        .unwrap_or(now)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn months_roll_over_at_year_end() {
        let dec = Utc.with_ymd_and_hms(2026, 12, 31, 23, 59, 59).unwrap();
        assert_eq!(
            next_month_start(dec),
            Utc.with_ymd_and_hms(2027, 1, 1, 0, 0, 0).unwrap()
        );
        let nov = Utc.with_ymd_and_hms(2026, 11, 28, 1, 0, 0).unwrap();
        assert_eq!(
            next_month_start(nov),
            Utc.with_ymd_and_hms(2026, 12, 1, 0, 0, 0).unwrap()
        );
    }

    #[test]
    fn exhaustion_is_a_429_with_its_figures() {
        let e: ApiError = MonthlyError::Exhausted {
            limit: 15,
            used: 15,
            retry_after: 3600,
        }
        .into();
        let p = e.to_problem();
        assert_eq!(p["status"], 429);
        assert_eq!(p["code"], "monthly_quota_exceeded");
        assert_eq!(
            (p["limit"].clone(), p["used"].clone()),
            (15.into(), 15.into())
        );
        assert_eq!(p["retry_after"], 3600);
    }
}
