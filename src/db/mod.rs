//! The Postgres pool and the schema migrations.

pub mod heartbeat;

use std::{str::FromStr, time::Duration};

use sqlx::{
    PgPool,
    migrate::Migrator,
    postgres::{PgConnectOptions, PgPoolOptions},
};

/// The migrations in `migrations/`, embedded in the binary.
pub static MIGRATOR: Migrator = sqlx::migrate!();

/// Opens a pool. `DATABASE_URL` may carry `options=-c search_path=…` to place
/// the schema elsewhere than `public` (the tests give each test its own).
/// `acquire_timeout` bounds how long a request waits for a connection, so
/// a database that is down answers 503 within it instead of hanging.
pub async fn connect(
    url: &str,
    max_connections: u32,
    acquire_timeout: Duration,
) -> anyhow::Result<PgPool> {
    let options = PgConnectOptions::from_str(url)?.application_name("intake");
    let pool = PgPoolOptions::new()
        .max_connections(max_connections)
        .acquire_timeout(acquire_timeout)
        // No ping before every checkout: it doubles the round trips of every
        // request; a connection that broke fails its query and is replaced.
        .test_before_acquire(false)
        .connect_with(options)
        .await?;
    Ok(pool)
}

/// Brings the schema up to date; safe to run from several instances at once
/// (sqlx takes an advisory lock).
pub async fn migrate(pool: &PgPool) -> anyhow::Result<()> {
    MIGRATOR.run(pool).await?;
    Ok(())
}
