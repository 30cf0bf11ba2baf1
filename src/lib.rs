//! intake: a self-hostable upload API server. Accounts on tiers stream files
//! or upload them through presigned URLs to S3-compatible storage or a local
//! folder, and every limit of their tier holds on every instance at once,
//! because every limit lives in Postgres.

pub mod admin;
pub mod ai;
pub mod auth;
pub mod body;
pub mod config;
pub mod dashboard;
pub mod db;
pub mod deletions;
pub mod error;
pub mod extract;
pub mod files;
pub mod http;
pub mod idempotency;
pub mod presign;
pub mod quota;
pub mod ratelimit;
pub mod readiness;
pub mod reaper;
pub mod sniff;
pub mod state;
pub mod storage;
pub mod telemetry;
pub mod tiers;
pub mod tus;
pub mod upload;
pub mod upload_tokens;

use std::future::Future;

use tokio::net::TcpListener;

pub use config::Config;
pub use reaper::{prune, reap};
pub use state::AppState;

/// A built server: bound to its port, connected, migrated, not yet serving.
pub struct App {
    listener: TcpListener,
    state: AppState,
}

impl App {
    /// Connects to the database (migrating it) and storage, and binds the
    /// listener (port 0 picks a free port; see [`App::port`]).
    pub async fn build(mut config: Config) -> anyhow::Result<Self> {
        let listener = TcpListener::bind(config.bind_addr).await?;
        // The default public URL names the bind port; with port 0 it is the
        // port the system picked.
        if config.public_base_url.ends_with(":0") {
            let port = listener.local_addr()?.port();
            config.public_base_url = format!("http://localhost:{port}");
        }
        let state = AppState::connect(config).await?;
        Ok(Self { listener, state })
    }

    /// The port the server listens on.
    pub fn port(&self) -> u16 {
        self.listener.local_addr().map(|a| a.port()).unwrap_or(0)
    }

    /// The shared state (tests use its pool and store to check what is left).
    pub fn state(&self) -> &AppState {
        &self.state
    }

    /// Serves until SIGINT or SIGTERM.
    pub async fn run(self) -> anyhow::Result<()> {
        self.run_until(shutdown_signal()).await
    }

    /// Serves until `shutdown` completes, then stops accepting and lets
    /// requests in flight finish.
    pub async fn run_until(
        self,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> anyhow::Result<()> {
        let state = self.state.clone();
        let housekeeping = tokio::spawn(reaper::housekeeping(state.clone()));
        tracing::info!(
            addr = %self.listener.local_addr()?,
            storage = state.store.kind(),
            "intake listening"
        );
        let router = http::router(state.clone());
        // Stop accepting at the signal; uploads still running after the
        // grace period are ended cleanly (released, nothing leaked).
        let (token, grace) = (state.shutdown.clone(), state.config.shutdown_grace);
        let signal = async move {
            shutdown.await;
            tracing::info!(
                grace_secs = grace.as_secs(),
                "shutting down: finishing requests in flight"
            );
            tokio::spawn(async move {
                tokio::time::sleep(grace).await;
                tracing::warn!("grace period over: ending uploads still running");
                token.cancel();
            });
        };
        let bounds = http::serve::Bounds {
            header_read_timeout: state.config.header_read_timeout,
            max_connections: state.config.max_connections,
            read_buffer_bytes: state.config.read_buffer_bytes,
            max_connections_per_ip: state.config.max_connections_per_ip,
            trusted_proxies: state.config.trusted_proxies.clone(),
            write_timeout: state.config.response_write_timeout,
        };
        let connections = state.connections.clone();
        http::serve::serve(self.listener, router, bounds, connections, signal).await;
        housekeeping.abort();
        Ok(())
    }
}

/// Completes on SIGINT (Ctrl-C) or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        let _ = tokio::signal::ctrl_c().await;
    };
    #[cfg(unix)]
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let terminate = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = terminate => {},
    }
}

/// How many cases each property test runs: `default`, or `PROPTEST_CASES`
/// when set (proptest's own variable, which an explicit count would
/// otherwise override), for longer runs by hand.
#[cfg(test)]
pub(crate) fn fuzz_cases(default: u32) -> u32 {
    std::env::var("PROPTEST_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}
