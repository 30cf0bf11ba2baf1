//! The limits of an account, each decided in one submodule that every path
//! calls: [`caps`] (per-file size caps and text validity), [`slots`]
//! (concurrent uploads), [`reservations`] (the storage quota), [`monthly`]
//! (the AI counters), [`ai_calls`] (AI calls of an account at once),
//! [`buffers`] (upload bytes the process holds in memory), [`tokens`] (an
//! upload token's limits on top of the account's). Here too: the
//! public tier table (`GET /limits`) and the caller's usage (`GET /usage`).

pub mod ai_calls;
pub mod buffers;
pub mod caps;
mod lease;
pub mod monthly;
pub mod reservations;
pub mod slots;
pub mod tokens;

use std::collections::BTreeMap;

use axum::extract::State;
use chrono::{DateTime, Utc};
use serde::Serialize;
use sqlx::PgPool;
use utoipa::ToSchema;

use crate::{
    auth::{Account, CurrentAccount},
    error::ApiError,
    extract::Json,
    ratelimit::{self, Policy},
    state::AppState,
    tiers::{Limits, Tier},
};

/// `GET /limits`: every tier's row in exact figures.
#[derive(Debug, Serialize, ToSchema)]
pub struct LimitsTable {
    /// `free`, `starter`, `professional`, `enterprise`.
    pub tiers: BTreeMap<&'static str, Limits>,
    /// Largest file the streaming routes accept, whatever the tier.
    pub stream_max_file_bytes: u64,
}

/// The tier table.
#[utoipa::path(get, path = "/limits", tag = "limits", responses((status = 200, body = LimitsTable)))]
pub async fn limits(State(state): State<AppState>) -> Json<LimitsTable> {
    Json(LimitsTable {
        tiers: Tier::ALL.iter().map(|t| (t.as_str(), t.limits())).collect(),
        stream_max_file_bytes: state.config.stream_max_file_bytes,
    })
}

/// Requests left in the current window.
#[derive(Debug, Serialize, ToSchema)]
pub struct RequestsUsage {
    /// Requests allowed right now.
    pub remaining: u32,
    /// Unix second at which `remaining` is back to the limit.
    pub reset: i64,
}

/// Uploads in flight.
#[derive(Debug, Serialize, ToSchema)]
pub struct ConcurrentUsage {
    /// Slots held (streaming and presigned uploads).
    pub active: i64,
}

/// Storage use.
#[derive(Debug, Serialize, ToSchema)]
pub struct StorageUsage {
    /// Bytes of recorded files.
    pub used: i64,
    /// Bytes held by uploads in flight.
    pub reserved: i64,
}

/// A monthly counter.
#[derive(Debug, Serialize, ToSchema)]
pub struct MonthlyUsage {
    /// Used this calendar month (UTC).
    pub used: i64,
    /// When the counter starts again (the first instant of next month, UTC).
    pub resets_at: DateTime<Utc>,
}

/// Every counted use.
#[derive(Debug, Serialize, ToSchema)]
pub struct UsageCounters {
    /// Per-minute requests (API-key policy).
    pub requests: RequestsUsage,
    /// Concurrent uploads.
    pub concurrent_uploads: ConcurrentUsage,
    /// Storage.
    pub storage_bytes: StorageUsage,
    /// AI descriptions this month.
    pub ai_descriptions: MonthlyUsage,
    /// Chat messages this month.
    pub chat_messages: MonthlyUsage,
}

/// `GET /usage`.
#[derive(Debug, Serialize, ToSchema)]
pub struct Usage {
    /// The account's tier.
    pub tier: Tier,
    /// Effective limits (tier row with custom overrides).
    pub limits: Limits,
    /// What is used.
    pub usage: UsageCounters,
}

/// Reads an account's usage.
pub async fn usage_of(db: &PgPool, account: &Account) -> Result<Usage, ApiError> {
    let limits = account.limits();
    #[derive(sqlx::FromRow)]
    struct Row {
        used: i64,
        reserved: i64,
        active: i64,
    }
    let row: Row = sqlx::query_as(
        "SELECT a.storage_used_bytes AS used, a.storage_reserved_bytes AS reserved,
                (SELECT count(*) FROM upload_leases l
                  WHERE l.account_id = a.id AND l.expires_at > now()) AS active
         FROM accounts a
         WHERE a.id = $1",
    )
    .bind(account.id)
    .fetch_optional(db)
    .await?
    .ok_or_else(|| ApiError::not_found("account"))?;
    let month = monthly::usage(db, account.id).await?;
    let (remaining, reset) =
        ratelimit::peek(db, &Policy::account(account.id, limits.requests_per_minute)).await?;
    Ok(Usage {
        tier: account.tier,
        limits,
        usage: UsageCounters {
            requests: RequestsUsage { remaining, reset },
            concurrent_uploads: ConcurrentUsage { active: row.active },
            storage_bytes: StorageUsage {
                used: row.used,
                reserved: row.reserved,
            },
            ai_descriptions: MonthlyUsage {
                used: month.ai_descriptions,
                resets_at: month.resets_at,
            },
            chat_messages: MonthlyUsage {
                used: month.chat_messages,
                resets_at: month.resets_at,
            },
        },
    })
}

/// The caller's limits and use.
#[utoipa::path(get, path = "/usage", tag = "limits", responses((status = 200, body = Usage), (status = 401)))]
pub async fn usage(
    State(state): State<AppState>,
    auth: CurrentAccount,
) -> Result<Json<Usage>, ApiError> {
    Ok(Json(usage_of(&state.db, &auth.account).await?))
}
