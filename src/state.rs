//! The state every handler shares: configuration, database pool, object
//! store, signing keys, metrics.

use std::{ops::Deref, sync::Arc};

use metrics_exporter_prometheus::PrometheusHandle;
use sqlx::PgPool;
use tokio_util::sync::CancellationToken;

use crate::{
    ai::client::AiClient, ai::workers::Workers, auth::KeyLane, auth::password::Hasher,
    auth::session::JwtKeys, config::Config, db, http, quota::buffers::Buffers, ratelimit::Limiter,
    readiness::Readiness, storage, storage::ObjectStore,
};

/// What the state holds.
pub struct Inner {
    /// Configuration.
    pub config: Config,
    /// Postgres pool.
    pub db: PgPool,
    /// Object storage.
    pub store: Arc<dyn ObjectStore>,
    /// Session JWT and CSRF keys.
    pub jwt: JwtKeys,
    /// Password hashing, bounded in how many hashes run at once.
    pub passwords: Hasher,
    /// Renders `/metrics`.
    pub metrics: PrometheusHandle,
    /// The last readiness verdict (`/readyz`).
    pub readiness: Readiness,
    /// Per-minute rate limits (decided in the database, in batches).
    pub limiter: Limiter,
    /// API keys, looked up (and counted) in batches.
    pub keys: KeyLane,
    /// The AI provider; `None` when none is configured.
    pub ai: Option<AiClient>,
    /// The workers that decode and extract files to describe, taken in
    /// turn by accounts.
    pub ai_workers: Workers,
    /// Cancelled when graceful shutdown's grace period is over: uploads
    /// still running end cleanly then.
    pub shutdown: CancellationToken,
    /// Requests of each account running on this instance.
    pub requests_in_flight: http::in_flight::Requests,
    /// Connections of each client address open on this instance.
    pub connections: http::peers::Connections,
    /// Upload bytes this instance holds in memory at once.
    pub upload_buffers: Buffers,
    /// Kept answers of `Idempotency-Key` this instance has seen.
    pub replays: crate::idempotency::Replays,
}

/// Cheap to clone; derefs to [`Inner`].
#[derive(Clone)]
pub struct AppState(Arc<Inner>);

impl Deref for AppState {
    type Target = Inner;
    fn deref(&self) -> &Inner {
        &self.0
    }
}

impl AppState {
    /// Connects to the database (migrating it) and the object store.
    pub async fn connect(config: Config) -> anyhow::Result<Self> {
        let db = db::connect(
            config.database_url.expose(),
            config.database_max_connections,
            config.database_acquire_timeout,
        )
        .await?;
        db::migrate(&db).await?;
        let store = storage::from_config(&config).await?;
        let ai = match &config.ai.provider {
            Some(provider) => Some(AiClient::new(
                provider,
                config.ai.timeout,
                config.ai.max_output_tokens,
            )?),
            None => None,
        };
        Ok(Self(Arc::new(Inner {
            ai,
            ai_workers: Workers::default(),
            jwt: JwtKeys::new(config.jwt_secret.expose()),
            passwords: Hasher::new(config.password_hash_concurrency, config.password_hash_queue),
            metrics: crate::telemetry::handle(),
            readiness: Readiness::default(),
            shutdown: CancellationToken::new(),
            limiter: Limiter::spawn(db.clone()),
            keys: KeyLane::spawn(db.clone()),
            requests_in_flight: Default::default(),
            connections: Default::default(),
            upload_buffers: Buffers::new(
                config.upload_buffer_budget_bytes,
                config.upload_idle_timeout,
            ),
            replays: Default::default(),
            config,
            db,
            store,
        })))
    }
}
