//! The object-store settings: which backend, and the S3 backend's bucket,
//! addresses, credentials and bounds.

use std::{path::PathBuf, time::Duration};

use super::{
    env::{ConfigError, Env},
    secret::Secret,
};

/// Where objects are stored.
#[derive(Debug, Clone)]
pub enum StorageConfig {
    /// A local folder (the embedded default).
    Fs {
        /// The folder that holds the objects.
        root: PathBuf,
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

#[derive(Clone, Copy)]
enum Backend {
    Fs,
    S3,
}

/// `STORAGE_BACKEND` and the variables of the backend it names.
pub(super) fn storage(env: &Env<'_>) -> Result<StorageConfig, ConfigError> {
    let backend = env.choice(
        "STORAGE_BACKEND",
        Backend::Fs,
        &[("fs", Backend::Fs), ("s3", Backend::S3)],
    )?;
    Ok(match backend {
        Backend::Fs => StorageConfig::Fs {
            root: env
                .opt("FS_ROOT")
                .unwrap_or_else(|| "./data/objects".into())
                .into(),
        },
        Backend::S3 => {
            let endpoint = env.opt("S3_ENDPOINT");
            // A server at an endpoint of its own is S3-compatible, and most of
            // those address buckets by path only.
            let force_path_style = env.parse_or("S3_FORCE_PATH_STYLE", endpoint.is_some())?;
            StorageConfig::S3(S3Config {
                bucket: env.required("S3_BUCKET")?,
                public_endpoint: env.opt("S3_PUBLIC_ENDPOINT"),
                endpoint,
                region: env.opt("S3_REGION").unwrap_or_else(|| "us-east-1".into()),
                access_key_id: env.opt("S3_ACCESS_KEY_ID"),
                secret_access_key: env.opt_secret("S3_SECRET_ACCESS_KEY"),
                force_path_style,
                key_prefix: env.opt("S3_KEY_PREFIX").unwrap_or_default(),
                connect_timeout: env.positive_secs("S3_CONNECT_TIMEOUT_SECS", 5)?,
                operation_timeout: env.positive_secs("S3_TIMEOUT_SECS", 60)?,
            })
        }
    })
}
