//! Configuration read from the environment only, parsed once at start-up.
//!
//! Every variable is documented in `.env.example`. A missing required variable
//! or a malformed value fails start-up with the variable's name; secrets are
//! wrapped in [`Secret`] so `Debug` output and logs never show them.
//!
//! The settings are read here by feature (server, database, sessions, rate
//! limits, uploads; storage and AI in modules of their own) through the
//! helpers of `env`, one call per variable, as crates.io's
//! `crates_io_env_vars` does. No configuration crate is used: the serde-based
//! ones (`envy`, `figment`, `config`, `envconfig`) parse what they are given,
//! while `.env.example` leaves variables empty to mean their default, several
//! defaults follow other variables (`PUBLIC_BASE_URL` from `BIND_ADDR`'s
//! port, `S3_FORCE_PATH_STYLE` from `S3_ENDPOINT`, `PASSWORD_HASH_QUEUE` from
//! the concurrency), and the ranges and secret checks would still be code of
//! our own after the crate; `clap`'s `env` reads only the process
//! environment, which tests cannot give each app separately.

mod ai;
mod cors;
mod env;
mod secret;
mod storage;

use std::{net::SocketAddr, time::Duration};

use ipnet::IpNet;

pub use ai::{AiConfig, AiProvider};
pub use cors::CorsOrigins;
pub use env::ConfigError;
use env::Env;
pub use secret::Secret;
pub use storage::{S3Config, StorageConfig};

/// Log output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// The whole configuration of one intake instance.
#[derive(Debug, Clone)]
pub struct Config {
    // Server.
    /// Address the HTTP server binds.
    pub bind_addr: SocketAddr,
    /// Base URL clients use to reach this server (for URLs it hands out).
    pub public_base_url: String,
    /// Log format.
    pub log_format: LogFormat,
    /// How long graceful shutdown waits for uploads before ending them.
    pub shutdown_grace: Duration,
    /// How often each instance's reaper runs.
    pub reaper_interval: Duration,
    /// How long a connection may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Connections served at once; past it, new ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// Largest read buffer of one connection: the size of the chunks an
    /// upload's body arrives in, and about the bound on a request's headers.
    pub read_buffer_bytes: usize,
    /// Connections one client address (an IPv6 /64) may hold at once on
    /// this instance; past it, a new one is answered 429 and closed.
    pub max_connections_per_ip: usize,
    /// Requests of one account (uploads aside) running at once on this
    /// instance; past it, 429.
    pub max_requests_in_flight_per_account: usize,
    /// How long an answer may wait for the client to read it before its
    /// connection ends.
    pub response_write_timeout: Duration,

    // Database.
    /// Postgres connection string.
    pub database_url: Secret,
    /// Connections in the main pool.
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before it is
    /// answered 503 (a database that is down or restarting).
    pub database_acquire_timeout: Duration,

    // Sessions and administration.
    /// Key that signs session JWTs and local-storage URL tokens.
    pub jwt_secret: Secret,
    /// Bearer token of the admin API; `None` disables it.
    pub admin_token: Option<Secret>,
    /// Bearer token `/metrics` asks for; `None` leaves it open.
    pub metrics_token: Option<Secret>,
    /// Whether the session cookie carries `Secure`.
    pub cookie_secure: bool,
    /// Lifetime of a login session.
    pub session_ttl: Duration,
    /// How long a login session may go unused before it ends.
    pub session_idle_timeout: Duration,
    /// Password hashes (argon2, 19 MiB each) computed at once.
    pub password_hash_concurrency: usize,
    /// Password hashes that may wait for a free slot; past it, 503.
    pub password_hash_queue: usize,

    // Rate limits.
    /// Requests per minute allowed to one anonymous client IP.
    pub anon_rate_limit_per_minute: u32,
    /// Sign-ups per hour allowed to one client IP (IPv6: one /64), beside
    /// the anonymous per-minute limit.
    pub signup_rate_limit_per_hour: u32,
    /// Failed logins in a row of one e-mail address after which its logins
    /// wait (a minute, doubling with each further failure).
    pub login_failures_before_delay: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Origins whose pages may call the upload routes (CORS).
    pub cors_allowed_origins: CorsOrigins,
    /// Let requests through when the rate limiter's store fails.
    pub rate_limit_fail_open: bool,
    /// Whether per-minute limits apply at all (off: no limit, no headers).
    pub rate_limit_enabled: bool,

    // Uploads.
    /// Largest file accepted by the streaming routes.
    pub stream_max_file_bytes: u64,
    /// Size of one storage part while streaming.
    pub upload_part_bytes: u64,
    /// Upload bytes the process may hold in memory at once.
    pub upload_buffer_budget_bytes: u64,
    /// Lifetime of an upload lease between renewals.
    pub upload_lease_ttl: Duration,
    /// How long any request body (an upload's or a JSON one) may send
    /// nothing before the request ends with 408.
    pub upload_idle_timeout: Duration,
    /// How long a request body that is not an upload (JSON) may take to
    /// arrive whole, from its headers, before the request ends with 408.
    pub body_timeout: Duration,
    /// Lifetime of presigned URLs.
    pub presign_expiry: Duration,
    /// How long an unfinished resumable (tus) upload lives after its last
    /// byte; then the reaper gives back everything it held.
    pub tus_expiry: Duration,

    // Idempotency.
    /// How long the answer of a request with an `Idempotency-Key` is kept
    /// for the requests that repeat the key, from when it ended.
    pub idempotency_ttl: Duration,

    /// Object storage.
    pub storage: StorageConfig,
    /// AI descriptions and chat.
    pub ai: AiConfig,
}

/// One megabyte as the tier table counts it (binary).
pub const MB: u64 = 1024 * 1024;

/// The smallest read buffer hyper accepts.
const READ_BUFFER_MIN: usize = 8 * 1024;
/// The largest read buffer accepted: past a few MiB a bigger read saves no
/// more CPU, and each upload holds a few buffers.
const READ_BUFFER_MAX: usize = 16 * 1024 * 1024;

impl Config {
    /// Reads the configuration from the process environment.
    pub fn from_env() -> Result<Self, ConfigError> {
        Self::from_lookup(|name| std::env::var(name).ok())
    }

    /// Reads the configuration from any variable lookup (tests pass a map).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigError> {
        let env = Env::new(&get);
        let bind_addr: SocketAddr = env.parse_or("BIND_ADDR", ([0, 0, 0, 0], 8080).into())?;
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let password_hash_concurrency = env.parse_where(
            "PASSWORD_HASH_CONCURRENCY",
            cores,
            |n| *n > 0,
            || "must be at least 1".into(),
        )?;
        Ok(Self {
            bind_addr,
            public_base_url: env
                .opt("PUBLIC_BASE_URL")
                .unwrap_or_else(|| format!("http://localhost:{}", bind_addr.port()))
                .trim_end_matches('/')
                .to_owned(),
            log_format: env.choice(
                "LOG_FORMAT",
                LogFormat::Text,
                &[("text", LogFormat::Text), ("json", LogFormat::Json)],
            )?,
            shutdown_grace: env.secs("SHUTDOWN_GRACE_SECS", 30)?,
            reaper_interval: env.positive_secs("REAPER_INTERVAL_SECS", 10)?,
            header_read_timeout: env.positive_secs("HEADER_READ_TIMEOUT_SECS", 10)?,
            // Saturates where usize is narrower than the figure given.
            max_connections: usize::try_from(env.positive("MAX_CONNECTIONS", 10_000)?)
                .unwrap_or(usize::MAX),
            read_buffer_bytes: env.parse_where(
                "READ_BUFFER_BYTES",
                64 * 1024,
                |n| (READ_BUFFER_MIN..=READ_BUFFER_MAX).contains(n),
                || format!("must be between {READ_BUFFER_MIN} and {READ_BUFFER_MAX}"),
            )?,
            max_connections_per_ip: usize::try_from(env.positive("MAX_CONNECTIONS_PER_IP", 256)?)
                .unwrap_or(usize::MAX),
            max_requests_in_flight_per_account: usize::try_from(
                env.positive("MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT", 32)?,
            )
            .unwrap_or(usize::MAX),
            response_write_timeout: env.positive_secs("RESPONSE_WRITE_TIMEOUT_SECS", 60)?,

            database_url: Secret::new(env.required("DATABASE_URL")?),
            database_max_connections: env.parse_or("DATABASE_MAX_CONNECTIONS", 20)?,
            database_acquire_timeout: env.positive_secs("DATABASE_ACQUIRE_TIMEOUT_SECS", 10)?,

            jwt_secret: env.strong_secret("JWT_SECRET")?,
            admin_token: env.opt_strong_secret("ADMIN_TOKEN")?,
            metrics_token: env.opt_strong_secret("METRICS_TOKEN")?,
            cookie_secure: env.parse_or("COOKIE_SECURE", true)?,
            session_ttl: env.secs("SESSION_TTL_SECS", 7 * 24 * 3600)?,
            session_idle_timeout: env.positive_secs("SESSION_IDLE_TIMEOUT_SECS", 86_400)?,
            password_hash_concurrency,
            password_hash_queue: env
                .parse_or("PASSWORD_HASH_QUEUE", 4 * password_hash_concurrency)?,

            anon_rate_limit_per_minute: env.parse_or("ANON_RATE_LIMIT_PER_MINUTE", 60)?,
            signup_rate_limit_per_hour: env.positive_as("SIGNUP_RATE_LIMIT_PER_HOUR", 5)?,
            login_failures_before_delay: env.positive_as("LOGIN_FAILURES_BEFORE_DELAY", 10)?,
            trusted_proxies: env.list("TRUSTED_PROXIES", parse_net)?,
            cors_allowed_origins: cors::cors(&env)?,
            rate_limit_fail_open: env.parse_or("RATE_LIMIT_FAIL_OPEN", true)?,
            rate_limit_enabled: env.parse_or("RATE_LIMIT_ENABLED", true)?,

            stream_max_file_bytes: env.parse_or("STREAM_MAX_FILE_BYTES", 100 * MB)?,
            upload_part_bytes: env.parse_where(
                "UPLOAD_PART_BYTES",
                8 * MB,
                |n| *n >= 5 * MB,
                || "S3 multipart parts must be at least 5 MiB (5242880)".into(),
            )?,
            upload_buffer_budget_bytes: env.parse_where(
                "UPLOAD_BUFFER_BUDGET_BYTES",
                512 * MB,
                |n| *n >= 5 * MB,
                || "must be at least 5 MiB (5242880), one storage part".into(),
            )?,
            upload_lease_ttl: Duration::from_secs(
                env.parse_or::<u64>("UPLOAD_LEASE_TTL_SECS", 30)?.max(2),
            ),
            upload_idle_timeout: env.positive_secs("UPLOAD_IDLE_TIMEOUT_SECS", 30)?,
            body_timeout: env.positive_secs("BODY_TIMEOUT_SECS", 10)?,
            presign_expiry: env.secs("PRESIGN_EXPIRY_SECS", 3600)?,
            tus_expiry: Duration::from_secs(env.parse_or::<u64>("TUS_EXPIRY_SECS", 86_400)?.max(1)),

            idempotency_ttl: env.positive_secs("IDEMPOTENCY_TTL_SECS", 86_400)?,

            storage: storage::storage(&env)?,
            ai: ai::ai(&env)?,
        })
    }
}

/// One entry of `TRUSTED_PROXIES`: an address or a CIDR network.
fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn config(vars: &[(&str, &str)]) -> Result<Config, ConfigError> {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Config::from_lookup(|k| map.get(k).cloned())
    }

    const BASE: [(&str, &str); 2] = [
        ("DATABASE_URL", "postgres://u:hunter2@localhost/db"),
        ("JWT_SECRET", "0123456789abcdef0123456789abcdef"),
    ];

    #[test]
    fn missing_required_variable_is_named() {
        let err = config(&[("JWT_SECRET", BASE[1].1)]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable DATABASE_URL is required but not set"
        );
        let err = config(&[BASE[0]]).unwrap_err();
        assert!(err.to_string().contains("JWT_SECRET"));
    }

    #[test]
    fn malformed_value_is_named() {
        let err = config(&[BASE[0], BASE[1], ("ANON_RATE_LIMIT_PER_MINUTE", "lots")]).unwrap_err();
        assert!(
            err.to_string().contains("ANON_RATE_LIMIT_PER_MINUTE"),
            "{err}"
        );
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let c = config(&BASE).unwrap();
        assert_eq!(c.bind_addr.to_string(), "0.0.0.0:8080");
        assert_eq!(c.stream_max_file_bytes, 100 * MB);
        assert_eq!(c.upload_part_bytes, 8 * MB);
        assert_eq!(c.upload_buffer_budget_bytes, 512 * MB);
        assert_eq!(c.cors_allowed_origins, CorsOrigins::None);
        assert_eq!(c.tus_expiry, Duration::from_secs(86_400));
        assert_eq!(c.idempotency_ttl, Duration::from_secs(86_400));
        assert_eq!(c.anon_rate_limit_per_minute, 60);
        assert_eq!(c.signup_rate_limit_per_hour, 5);
        assert_eq!(c.login_failures_before_delay, 10);
        assert_eq!(c.session_idle_timeout, Duration::from_secs(86_400));
        assert!(c.rate_limit_fail_open && c.cookie_secure);
        assert!(matches!(c.storage, StorageConfig::Fs { .. }));
    }

    #[test]
    fn secrets_never_show_in_debug_output() {
        let token = "admin-secret-token-9f8e7d6c5b4a3210";
        let c = config(&[BASE[0], BASE[1], ("ADMIN_TOKEN", token)]).unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2"));
        assert!(!shown.contains("0123456789abcdef"));
        assert!(!shown.contains(token));
    }

    #[test]
    fn ai_is_off_without_a_base_url_and_needs_a_model_with_one() {
        let c = config(&BASE).unwrap();
        assert!(c.ai.provider.is_none());
        assert_eq!(c.ai.timeout, Duration::from_secs(60));
        assert_eq!(c.ai.image_max_pixels, 1568);
        assert_eq!(c.ai.max_input_chars, 32_000);
        assert_eq!(
            (c.ai.max_output_tokens, c.ai.concurrency_per_account),
            (1024, 2)
        );
        let err = config(&[
            BASE[0],
            BASE[1],
            ("AI_BASE_URL", "http://localhost:11434/v1"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("AI_MODEL"), "{err}");
        let c = config(&[
            BASE[0],
            BASE[1],
            ("AI_BASE_URL", "http://localhost:11434/v1/"),
            ("AI_MODEL", "llava"),
            ("AI_API_KEY", "sk-very-secret"),
        ])
        .unwrap();
        let p = c.ai.provider.as_ref().unwrap();
        assert_eq!(p.base_url, "http://localhost:11434/v1");
        assert!(!format!("{c:?}").contains("sk-very-secret"));
        assert!(
            config(&[
                BASE[0],
                BASE[1],
                ("AI_BASE_URL", "localhost"),
                ("AI_MODEL", "m")
            ])
            .is_err()
        );
    }

    #[test]
    fn s3_path_style_defaults_on_with_an_endpoint() {
        let c = config(&[
            BASE[0],
            BASE[1],
            ("STORAGE_BACKEND", "s3"),
            ("S3_BUCKET", "b"),
            ("S3_ENDPOINT", "http://127.0.0.1:9000"),
        ])
        .unwrap();
        let StorageConfig::S3(s3) = c.storage else {
            panic!("not s3")
        };
        assert!(s3.force_path_style);
        let err = config(&[BASE[0], BASE[1], ("STORAGE_BACKEND", "s3")]).unwrap_err();
        assert!(err.to_string().contains("S3_BUCKET"));
    }

    #[test]
    fn trusted_proxies_accept_addresses_and_networks() {
        let c = config(&[
            BASE[0],
            BASE[1],
            ("TRUSTED_PROXIES", "10.0.0.0/8, 127.0.0.1"),
        ])
        .unwrap();
        assert_eq!(c.trusted_proxies.len(), 2);
        assert!(config(&[BASE[0], BASE[1], ("TRUSTED_PROXIES", "nope")]).is_err());
    }

    #[test]
    fn cors_origins_are_a_list_or_every_origin_alone() {
        let with = |v: &str| config(&[BASE[0], BASE[1], ("CORS_ALLOWED_ORIGINS", v)]);
        assert_eq!(with("*").unwrap().cors_allowed_origins, CorsOrigins::Any);
        assert_eq!(with(" ").unwrap().cors_allowed_origins, CorsOrigins::None);
        let CorsOrigins::List(list) = with("https://a.example, http://127.0.0.1:5173")
            .unwrap()
            .cors_allowed_origins
        else {
            panic!("a list")
        };
        assert_eq!(list, ["https://a.example", "http://127.0.0.1:5173"]);
        for bad in [
            "*, https://a.example",
            "https://a.example/path",
            "a.example",
        ] {
            let err = with(bad).unwrap_err();
            assert!(err.to_string().contains("CORS_ALLOWED_ORIGINS"), "{err}");
        }
    }

    #[test]
    fn the_example_jwt_secret_and_other_placeholders_are_refused() {
        let example = include_str!("../../.env.example")
            .lines()
            .find_map(|l| l.strip_prefix("JWT_SECRET="))
            .unwrap();
        for secret in [
            example,
            "changeme-changeme-changeme-changeme",
            "replace-me-with-a-random-string-of-32",
            "your-secret-here-at-least-32-characters",
            "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx",
        ] {
            let err = config(&[BASE[0], ("JWT_SECRET", secret)]).unwrap_err();
            assert!(
                err.to_string()
                    .starts_with("environment variable JWT_SECRET is invalid: is a placeholder"),
                "{secret}: {err}"
            );
        }
        assert!(config(&BASE).is_ok());
    }

    #[test]
    fn an_admin_token_needs_32_characters_when_set() {
        let err = config(&[
            BASE[0],
            BASE[1],
            ("ADMIN_TOKEN", "0123456789abcdef0123456789abcde"),
        ])
        .unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable ADMIN_TOKEN is invalid: must be at least 32 characters"
        );
        let err = config(&[
            BASE[0],
            BASE[1],
            ("ADMIN_TOKEN", "change-me-to-a-long-random-admin-token"),
        ])
        .unwrap_err();
        assert!(err.to_string().contains("ADMIN_TOKEN"), "{err}");
        let c = config(&[
            BASE[0],
            BASE[1],
            ("ADMIN_TOKEN", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap();
        assert!(c.admin_token.is_some());
        // Unset or empty: the admin API is off, which needs no token.
        let c = config(&[BASE[0], BASE[1], ("ADMIN_TOKEN", "")]).unwrap();
        assert!(c.admin_token.is_none());
    }

    #[test]
    fn a_metrics_token_is_held_to_the_secret_rule_when_set() {
        let err = config(&[BASE[0], BASE[1], ("METRICS_TOKEN", "short")]).unwrap_err();
        assert_eq!(
            err.to_string(),
            "environment variable METRICS_TOKEN is invalid: must be at least 32 characters"
        );
        let c = config(&[
            BASE[0],
            BASE[1],
            ("METRICS_TOKEN", "0123456789abcdef0123456789abcdef"),
        ])
        .unwrap();
        assert!(c.metrics_token.is_some());
        // Unset: /metrics is open.
        assert!(config(&BASE).unwrap().metrics_token.is_none());
    }

    #[test]
    fn server_bounds_have_their_documented_defaults() {
        let c = config(&BASE).unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.body_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.read_buffer_bytes, 64 * 1024);
        assert_eq!(c.max_connections_per_ip, 256);
        assert_eq!(c.max_requests_in_flight_per_account, 32);
        assert_eq!(c.response_write_timeout, Duration::from_secs(60));
        for (value, ok) in [
            ("8191", false),
            ("8192", true),
            ("1048576", true),
            ("16777216", true),
            ("16777217", false),
        ] {
            let c = config(&[BASE[0], BASE[1], ("READ_BUFFER_BYTES", value)]);
            assert_eq!(c.is_ok(), ok, "READ_BUFFER_BYTES={value}");
            if let Err(err) = c {
                assert!(err.to_string().contains("READ_BUFFER_BYTES"), "{err}");
            }
        }
        for (value, ok) in [("5242879", false), ("5242880", true), ("68719476736", true)] {
            let c = config(&[BASE[0], BASE[1], ("UPLOAD_BUFFER_BUDGET_BYTES", value)]);
            assert_eq!(c.is_ok(), ok, "UPLOAD_BUFFER_BUDGET_BYTES={value}");
            if let Err(err) = c {
                assert!(
                    err.to_string().contains("UPLOAD_BUFFER_BUDGET_BYTES"),
                    "{err}"
                );
            }
        }
        assert!(c.password_hash_concurrency >= 1);
        assert_eq!(c.password_hash_queue, 4 * c.password_hash_concurrency);
        for zero in [
            "HEADER_READ_TIMEOUT_SECS",
            "MAX_CONNECTIONS",
            "MAX_CONNECTIONS_PER_IP",
            "MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT",
            "RESPONSE_WRITE_TIMEOUT_SECS",
            "PASSWORD_HASH_CONCURRENCY",
            "UPLOAD_IDLE_TIMEOUT_SECS",
            "IDEMPOTENCY_TTL_SECS",
        ] {
            let err = config(&[BASE[0], BASE[1], (zero, "0")]).unwrap_err();
            assert!(err.to_string().contains(zero), "{err}");
        }
        let c = config(&[
            BASE[0],
            BASE[1],
            ("STORAGE_BACKEND", "s3"),
            ("S3_BUCKET", "b"),
        ])
        .unwrap();
        let StorageConfig::S3(s3) = c.storage else {
            panic!("not s3")
        };
        assert_eq!(s3.connect_timeout, Duration::from_secs(5));
        assert_eq!(s3.operation_timeout, Duration::from_secs(60));
    }
}
