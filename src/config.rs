//! Configuration read from the environment only, parsed once at start-up.
//!
//! Every variable is documented in `.env.example`. A missing required variable
//! or a malformed value fails start-up with the variable's name; secrets are
//! wrapped in [`Secret`] so `Debug` output and logs never show them.

use std::{fmt, net::SocketAddr, str::FromStr, time::Duration};

use ipnet::IpNet;

/// A value that must never be printed: `Debug` shows `[redacted]`.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(String);

impl Secret {
    /// Wraps a secret value.
    pub fn new(value: impl Into<String>) -> Self {
        Self(value.into())
    }

    /// The secret itself, for the one place that needs it.
    pub fn expose(&self) -> &str {
        &self.0
    }
}

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("[redacted]")
    }
}

/// Why the configuration could not be read.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// A required variable is not set.
    #[error("environment variable {0} is required but not set")]
    Missing(&'static str),
    /// A variable is set to something that does not parse.
    #[error("environment variable {name} is invalid: {reason}")]
    Invalid {
        /// The variable.
        name: &'static str,
        /// What is wrong with it.
        reason: String,
    },
}

/// Where objects are stored.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A local folder (the embedded default).
    Fs {
        /// The folder that holds the objects.
        root: std::path::PathBuf,
    },
    /// An S3-compatible object store.
    S3(S3Config),
}

/// Settings of the S3 backend.
#[derive(Debug, Clone)]
pub struct S3Config {
    /// The bucket that holds every object.
    pub bucket: String,
    /// Endpoint the server talks to; `None` means AWS itself.
    pub endpoint: Option<String>,
    /// Endpoint written into presigned URLs, when clients reach storage
    /// through another address than the server does.
    pub public_endpoint: Option<String>,
    /// Region used for signing.
    pub region: String,
    /// Static credentials; `None` uses the default AWS credential chain.
    pub access_key_id: Option<String>,
    /// The secret half of the static credentials.
    pub secret_access_key: Option<Secret>,
    /// Path-style addressing (`endpoint/bucket/key`), needed by most
    /// S3-compatible servers.
    pub force_path_style: bool,
    /// Prefix put before every object key, so several deployments (or
    /// tests) can share one bucket.
    pub key_prefix: String,
    /// Bound on opening a connection to storage.
    pub connect_timeout: Duration,
    /// Bound on one storage call, its retries included (for a download, up
    /// to its first bytes).
    pub operation_timeout: Duration,
}

/// The OpenAI-compatible provider behind `/files/{id}/describe` and `/chat`.
#[derive(Debug, Clone)]
pub struct AiProvider {
    /// Base URL including the API version, e.g. `http://localhost:11434/v1`
    /// (no trailing slash); requests go to `{base_url}/chat/completions`.
    pub base_url: String,
    /// The model asked for.
    pub model: String,
    /// Sent as a Bearer token when set (local servers often need none).
    pub api_key: Option<Secret>,
}

/// Settings of the AI features.
#[derive(Debug, Clone)]
pub struct AiConfig {
    /// `None` when `AI_BASE_URL` is unset: the AI routes answer `ai_unavailable`.
    pub provider: Option<AiProvider>,
    /// Bound on one provider call, its retry included.
    pub timeout: Duration,
    /// Longest side, in pixels, of an image sent to the provider.
    pub image_max_pixels: u32,
    /// Characters of text sent to the provider at most.
    pub max_input_chars: usize,
    /// Bound on extracting a document's text (PDFs).
    pub extract_timeout: Duration,
    /// Largest file that is read to be described.
    pub max_file_bytes: u64,
}

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
    /// Postgres connection string.
    pub database_url: Secret,
    /// Connections in the main pool.
    pub database_max_connections: u32,
    /// How long a request waits for a database connection before it is
    /// answered 503 (a database that is down or restarting).
    pub database_acquire_timeout: Duration,
    /// Key that signs session JWTs and local-storage URL tokens.
    pub jwt_secret: Secret,
    /// Address the HTTP server binds.
    pub bind_addr: SocketAddr,
    /// Base URL clients use to reach this server (for URLs it hands out).
    pub public_base_url: String,
    /// Bearer token of the admin API; `None` disables it.
    pub admin_token: Option<Secret>,
    /// Whether the session cookie carries `Secure`.
    pub cookie_secure: bool,
    /// Lifetime of a login session.
    pub session_ttl: Duration,
    /// Requests per minute allowed to one anonymous client IP.
    pub anon_rate_limit_per_minute: u32,
    /// Proxies whose `X-Forwarded-For` is believed.
    pub trusted_proxies: Vec<IpNet>,
    /// Let requests through when the rate limiter's store fails.
    pub rate_limit_fail_open: bool,
    /// Whether per-minute limits apply at all (off: no limit, no headers).
    pub rate_limit_enabled: bool,
    /// Largest file accepted by the streaming routes.
    pub stream_max_file_bytes: u64,
    /// Size of one storage part while streaming.
    pub upload_part_bytes: u64,
    /// Lifetime of an upload lease between renewals.
    pub upload_lease_ttl: Duration,
    /// How long any request body (an upload's or a JSON one) may send
    /// nothing before the request ends with 408.
    pub upload_idle_timeout: Duration,
    /// How long a request body that is not an upload (JSON) may take to
    /// arrive whole, from its headers, before the request ends with 408.
    pub body_timeout: Duration,
    /// How long a connection may take to send a request's headers.
    pub header_read_timeout: Duration,
    /// Connections served at once; past it, new ones wait in the listen
    /// backlog until one closes.
    pub max_connections: usize,
    /// Largest read buffer of one connection: the size of the chunks an
    /// upload's body arrives in, and about the bound on a request's headers.
    pub read_buffer_bytes: usize,
    /// Password hashes (argon2, 19 MiB each) computed at once.
    pub password_hash_concurrency: usize,
    /// Password hashes that may wait for a free slot; past it, 503.
    pub password_hash_queue: usize,
    /// Lifetime of presigned URLs.
    pub presign_expiry: Duration,
    /// How long an unfinished resumable (tus) upload lives after its last
    /// byte; then the reaper gives back everything it held.
    pub tus_expiry: Duration,
    /// Object storage.
    pub storage: StorageConfig,
    /// Log format.
    pub log_format: LogFormat,
    /// How long graceful shutdown waits for uploads before ending them.
    pub shutdown_grace: Duration,
    /// How often each instance's reaper runs.
    pub reaper_interval: Duration,
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
        let env = Env { get: &get };
        let storage = match env.opt("STORAGE_BACKEND").as_deref() {
            None | Some("fs") => StorageConfig::Fs {
                root: env
                    .opt("FS_ROOT")
                    .unwrap_or_else(|| "./data/objects".into())
                    .into(),
            },
            Some("s3") => {
                let endpoint = env.opt("S3_ENDPOINT");
                let force_path_style = env.parse_or("S3_FORCE_PATH_STYLE", endpoint.is_some())?;
                StorageConfig::S3(S3Config {
                    bucket: env.required("S3_BUCKET")?,
                    public_endpoint: env.opt("S3_PUBLIC_ENDPOINT"),
                    endpoint,
                    region: env.opt("S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                    access_key_id: env.opt("S3_ACCESS_KEY_ID"),
                    secret_access_key: env.opt("S3_SECRET_ACCESS_KEY").map(Secret),
                    force_path_style,
                    key_prefix: env.opt("S3_KEY_PREFIX").unwrap_or_default(),
                    connect_timeout: Duration::from_secs(
                        env.positive("S3_CONNECT_TIMEOUT_SECS", 5)?,
                    ),
                    operation_timeout: Duration::from_secs(env.positive("S3_TIMEOUT_SECS", 60)?),
                })
            }
            Some(other) => {
                return Err(ConfigError::Invalid {
                    name: "STORAGE_BACKEND",
                    reason: format!("expected fs or s3, got {other:?}"),
                });
            }
        };
        let bind_addr: SocketAddr = env.parse_or("BIND_ADDR", ([0, 0, 0, 0], 8080).into())?;
        let public_base_url = env
            .opt("PUBLIC_BASE_URL")
            .unwrap_or_else(|| format!("http://localhost:{}", bind_addr.port()))
            .trim_end_matches('/')
            .to_owned();
        let trusted_proxies = match env.opt("TRUSTED_PROXIES") {
            None => Vec::new(),
            Some(list) => list
                .split(',')
                .map(str::trim)
                .filter(|s| !s.is_empty())
                .map(parse_net)
                .collect::<Result<_, _>>()
                .map_err(|reason| ConfigError::Invalid {
                    name: "TRUSTED_PROXIES",
                    reason,
                })?,
        };
        let jwt_secret = env.required("JWT_SECRET")?;
        check_secret("JWT_SECRET", &jwt_secret)?;
        let admin_token = env.opt("ADMIN_TOKEN");
        if let Some(token) = &admin_token {
            check_secret("ADMIN_TOKEN", token)?;
        }
        let cores = std::thread::available_parallelism().map_or(2, usize::from);
        let password_hash_concurrency = env.parse_or("PASSWORD_HASH_CONCURRENCY", cores)?;
        if password_hash_concurrency == 0 {
            return Err(ConfigError::Invalid {
                name: "PASSWORD_HASH_CONCURRENCY",
                reason: "must be at least 1".into(),
            });
        }
        let upload_part_bytes = env.parse_or("UPLOAD_PART_BYTES", 8 * MB)?;
        if upload_part_bytes < 5 * MB {
            return Err(ConfigError::Invalid {
                name: "UPLOAD_PART_BYTES",
                reason: "S3 multipart parts must be at least 5 MiB (5242880)".into(),
            });
        }
        let read_buffer_bytes = env.parse_or("READ_BUFFER_BYTES", 64 * 1024)?;
        if !(READ_BUFFER_MIN..=READ_BUFFER_MAX).contains(&read_buffer_bytes) {
            return Err(ConfigError::Invalid {
                name: "READ_BUFFER_BYTES",
                reason: format!("must be between {READ_BUFFER_MIN} and {READ_BUFFER_MAX}"),
            });
        }
        let ai = ai_config(&env)?;
        Ok(Self {
            database_url: Secret(env.required("DATABASE_URL")?),
            database_max_connections: env.parse_or("DATABASE_MAX_CONNECTIONS", 20)?,
            database_acquire_timeout: Duration::from_secs(
                env.positive("DATABASE_ACQUIRE_TIMEOUT_SECS", 10)?,
            ),
            jwt_secret: Secret(jwt_secret),
            bind_addr,
            public_base_url,
            admin_token: admin_token.map(Secret),
            cookie_secure: env.parse_or("COOKIE_SECURE", true)?,
            session_ttl: Duration::from_secs(env.parse_or("SESSION_TTL_SECS", 7 * 24 * 3600)?),
            anon_rate_limit_per_minute: env.parse_or("ANON_RATE_LIMIT_PER_MINUTE", 60)?,
            trusted_proxies,
            rate_limit_fail_open: env.parse_or("RATE_LIMIT_FAIL_OPEN", true)?,
            rate_limit_enabled: env.parse_or("RATE_LIMIT_ENABLED", true)?,
            stream_max_file_bytes: env.parse_or("STREAM_MAX_FILE_BYTES", 100 * MB)?,
            upload_part_bytes,
            presign_expiry: Duration::from_secs(env.parse_or("PRESIGN_EXPIRY_SECS", 3600)?),
            tus_expiry: Duration::from_secs(env.parse_or::<u64>("TUS_EXPIRY_SECS", 86_400)?.max(1)),
            upload_lease_ttl: Duration::from_secs(
                env.parse_or::<u64>("UPLOAD_LEASE_TTL_SECS", 30)?.max(2),
            ),
            upload_idle_timeout: Duration::from_secs(env.positive("UPLOAD_IDLE_TIMEOUT_SECS", 30)?),
            body_timeout: Duration::from_secs(env.positive("BODY_TIMEOUT_SECS", 10)?),
            header_read_timeout: Duration::from_secs(env.positive("HEADER_READ_TIMEOUT_SECS", 10)?),
            max_connections: usize::try_from(env.positive("MAX_CONNECTIONS", 10_000)?)
                .unwrap_or(usize::MAX),
            read_buffer_bytes,
            password_hash_concurrency,
            password_hash_queue: env
                .parse_or("PASSWORD_HASH_QUEUE", 4 * password_hash_concurrency)?,
            storage,
            log_format: match env.opt("LOG_FORMAT").as_deref() {
                None | Some("text") => LogFormat::Text,
                Some("json") => LogFormat::Json,
                Some(other) => {
                    return Err(ConfigError::Invalid {
                        name: "LOG_FORMAT",
                        reason: format!("expected text or json, got {other:?}"),
                    });
                }
            },
            shutdown_grace: Duration::from_secs(env.parse_or("SHUTDOWN_GRACE_SECS", 30)?),
            reaper_interval: Duration::from_secs(env.positive("REAPER_INTERVAL_SECS", 10)?),
            ai,
        })
    }
}

fn ai_config(env: &Env<'_>) -> Result<AiConfig, ConfigError> {
    let provider = match env.opt("AI_BASE_URL") {
        None => None,
        Some(raw) => {
            let base_url = raw.trim().trim_end_matches('/').to_owned();
            match url::Url::parse(&base_url) {
                Ok(u) if matches!(u.scheme(), "http" | "https") => {}
                _ => {
                    return Err(ConfigError::Invalid {
                        name: "AI_BASE_URL",
                        reason: format!("expected an http(s) URL, got {base_url:?}"),
                    });
                }
            }
            Some(AiProvider {
                base_url,
                model: env.required("AI_MODEL")?,
                api_key: env.opt("AI_API_KEY").map(Secret),
            })
        }
    };
    let positive = |name, default| env.positive(name, default);
    Ok(AiConfig {
        provider,
        timeout: Duration::from_secs(positive("AI_TIMEOUT_SECS", 60)?),
        image_max_pixels: u32::try_from(positive("AI_IMAGE_MAX_PIXELS", 1568)?).map_err(|_| {
            ConfigError::Invalid {
                name: "AI_IMAGE_MAX_PIXELS",
                reason: "too large".into(),
            }
        })?,
        max_input_chars: usize::try_from(positive("AI_MAX_INPUT_CHARS", 32_000)?).map_err(
            |_| ConfigError::Invalid {
                name: "AI_MAX_INPUT_CHARS",
                reason: "too large".into(),
            },
        )?,
        extract_timeout: Duration::from_secs(positive("AI_EXTRACT_TIMEOUT_SECS", 10)?),
        max_file_bytes: positive("AI_MAX_FILE_BYTES", 64 * MB)?,
    })
}

/// Values that documentation and examples put where a secret goes; a
/// server started with one of them has a secret that anyone can read.
const PLACEHOLDERS: [&str; 9] = [
    "change-me",
    "changeme",
    "change_me",
    "replace-me",
    "replaceme",
    "placeholder",
    "your-secret",
    "your_secret",
    "example",
];

/// Refuses a secret that is short or an obvious placeholder, naming the
/// variable so the operator knows which one to set.
fn check_secret(name: &'static str, value: &str) -> Result<(), ConfigError> {
    if value.chars().count() < 32 {
        return Err(ConfigError::Invalid {
            name,
            reason: "must be at least 32 characters".into(),
        });
    }
    let lower = value.to_ascii_lowercase();
    let mut chars = lower.chars();
    let first = chars.next();
    let one_character = chars.all(|c| Some(c) == first);
    if one_character || PLACEHOLDERS.iter().any(|p| lower.contains(p)) {
        return Err(ConfigError::Invalid {
            name,
            reason: "is a placeholder; set a random value (e.g. openssl rand -base64 48)".into(),
        });
    }
    Ok(())
}

fn parse_net(s: &str) -> Result<IpNet, String> {
    s.parse::<IpNet>()
        .or_else(|_| s.parse::<std::net::IpAddr>().map(IpNet::from))
        .map_err(|_| format!("{s:?} is not an IP address or CIDR network"))
}

struct Env<'a> {
    get: &'a dyn Fn(&str) -> Option<String>,
}

impl Env<'_> {
    fn opt(&self, name: &str) -> Option<String> {
        (self.get)(name).filter(|v| !v.trim().is_empty())
    }

    fn required(&self, name: &'static str) -> Result<String, ConfigError> {
        self.opt(name).ok_or(ConfigError::Missing(name))
    }

    /// A whole number of at least 1 (a duration or a count where 0 would
    /// disable a bound by accident).
    fn positive(&self, name: &'static str, default: u64) -> Result<u64, ConfigError> {
        match self.parse_or(name, default)? {
            0 => Err(ConfigError::Invalid {
                name,
                reason: "must be at least 1".into(),
            }),
            n => Ok(n),
        }
    }

    fn parse_or<T: FromStr>(&self, name: &'static str, default: T) -> Result<T, ConfigError>
    where
        T::Err: fmt::Display,
    {
        match self.opt(name) {
            None => Ok(default),
            Some(raw) => raw
                .trim()
                .parse()
                .map_err(|e: T::Err| ConfigError::Invalid {
                    name,
                    reason: e.to_string(),
                }),
        }
    }
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
        assert_eq!(c.tus_expiry, Duration::from_secs(86_400));
        assert_eq!(c.anon_rate_limit_per_minute, 60);
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
    fn the_example_jwt_secret_and_other_placeholders_are_refused() {
        let example = include_str!("../.env.example")
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
    fn server_bounds_have_their_documented_defaults() {
        let c = config(&BASE).unwrap();
        assert_eq!(c.header_read_timeout, Duration::from_secs(10));
        assert_eq!(c.upload_idle_timeout, Duration::from_secs(30));
        assert_eq!(c.body_timeout, Duration::from_secs(10));
        assert_eq!(c.max_connections, 10_000);
        assert_eq!(c.read_buffer_bytes, 64 * 1024);
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
        assert!(c.password_hash_concurrency >= 1);
        assert_eq!(c.password_hash_queue, 4 * c.password_hash_concurrency);
        for zero in [
            "HEADER_READ_TIMEOUT_SECS",
            "MAX_CONNECTIONS",
            "PASSWORD_HASH_CONCURRENCY",
            "UPLOAD_IDLE_TIMEOUT_SECS",
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
