//! The web dashboard, the FREE tier's only way in: one page and its assets,
//! embedded in the binary (no CDN, works offline), served with a strict
//! Content-Security-Policy and caching that never serves a stale script.

use std::sync::Arc;

use axum::{
    extract::{Path, State},
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
};
use sha2::{Digest, Sha256};
use utoipa_axum::{router::OpenApiRouter, routes};

use crate::{
    config::{Config, StorageConfig},
    error::ApiError,
    state::AppState,
};

/// One embedded file below `/assets/<build>/`.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every asset the page loads. ES modules import each other by relative
/// name, so they all live under one versioned folder.
const ASSETS: &[Asset] = &[
    Asset {
        name: "app.js",
        content_type: JS,
        body: include_bytes!("assets/app.js"),
    },
    Asset {
        name: "api.js",
        content_type: JS,
        body: include_bytes!("assets/api.js"),
    },
    Asset {
        name: "upload.js",
        content_type: JS,
        body: include_bytes!("assets/upload.js"),
    },
    Asset {
        name: "ui.js",
        content_type: JS,
        body: include_bytes!("assets/ui.js"),
    },
    // tus-js-client's browser build, vendored from npm through the browser
    // tests' lockfile (scripts/lib/browser.sh checks it is that file).
    Asset {
        name: "tus.min.js",
        content_type: JS,
        body: include_bytes!("assets/tus.min.js"),
    },
    Asset {
        name: "style.css",
        content_type: "text/css; charset=utf-8",
        body: include_bytes!("assets/style.css"),
    },
    Asset {
        name: "icon.svg",
        content_type: "image/svg+xml",
        body: include_bytes!("assets/icon.svg"),
    },
];

/// The page; `{{build}}` and `{{storage}}` are filled in at start-up.
const INDEX: &str = include_str!("assets/index.html");

/// Assets change only with the binary, so their URLs carry a hash of all of
/// them and may be cached for a year.
const IMMUTABLE: &str = "public, max-age=31536000, immutable";

/// The rendered page, its validators and headers, built once per process.
pub struct Dashboard {
    build: String,
    index: String,
    index_etag: HeaderValue,
    asset_etags: Vec<HeaderValue>,
    csp: HeaderValue,
}

fn etag_of(bytes: &[u8]) -> HeaderValue {
    let digest = hex::encode(&Sha256::digest(bytes)[..12]);
    HeaderValue::from_str(&format!("\"{digest}\"")).unwrap_or(HeaderValue::from_static("\"0\""))
}

/// The origin that presigned URLs and download redirects point at, as a CSP
/// source; `None` when they point back to intake itself.
fn storage_source(config: &Config) -> Option<String> {
    let StorageConfig::S3(s3) = &config.storage else {
        return None;
    };
    let Some(endpoint) = s3.public_endpoint.as_ref().or(s3.endpoint.as_ref()) else {
        // AWS itself, virtual-hosted: the bucket is a subdomain.
        return Some("https://*.amazonaws.com".into());
    };
    let url = url::Url::parse(endpoint).ok()?;
    let host = url.host_str()?;
    let port = url.port().map(|p| format!(":{p}")).unwrap_or_default();
    // Without path style the bucket is a subdomain of the endpoint's host.
    let host = if s3.force_path_style {
        host.to_owned()
    } else {
        format!("*.{host}")
    };
    Some(format!("{}://{host}{port}", url.scheme()))
}

/// The page's policy: scripts and styles from intake only, no inline script,
/// no framing; images may also come from the object store (download
/// redirects), while every request the page makes goes to intake.
fn content_security_policy(config: &Config) -> String {
    let storage = storage_source(config)
        .map(|s| format!(" {s}"))
        .unwrap_or_default();
    format!(
        "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' blob: data:{storage}; \
         connect-src 'self'; object-src 'none'; frame-ancestors 'none'; base-uri 'none'; \
         form-action 'self'"
    )
}

impl Dashboard {
    /// Renders the page for this configuration.
    pub fn new(config: &Config) -> Self {
        let mut all = Sha256::new();
        for asset in ASSETS {
            all.update(asset.name.as_bytes());
            all.update([0]);
            all.update(asset.body);
        }
        let build = hex::encode(&all.finalize()[..8]);
        let storage = match config.storage {
            StorageConfig::Fs { .. } => "fs",
            StorageConfig::S3(_) => "s3",
        };
        let index = INDEX
            .replace("{{build}}", &build)
            .replace("{{storage}}", storage);
        let csp = HeaderValue::from_str(&content_security_policy(config))
            .unwrap_or(HeaderValue::from_static("default-src 'self'"));
        Self {
            index_etag: etag_of(index.as_bytes()),
            asset_etags: ASSETS.iter().map(|a| etag_of(a.body)).collect(),
            build,
            index,
            csp,
        }
    }
}

fn not_modified(headers: &HeaderMap, etag: &HeaderValue) -> bool {
    headers
        .get_all(header::IF_NONE_MATCH)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|t| t.trim().trim_start_matches("W/"))
        .any(|t| t == "*" || t.as_bytes() == etag.as_bytes())
}

/// Headers every dashboard answer carries.
fn security_headers(response: &mut Response, csp: &HeaderValue) {
    let h = response.headers_mut();
    h.insert(header::CONTENT_SECURITY_POLICY, csp.clone());
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
}

fn answer(
    dash: &Dashboard,
    headers: &HeaderMap,
    etag: &HeaderValue,
    cache: &'static str,
    content_type: &'static str,
    body: Vec<u8>,
) -> Response {
    let mut response = if not_modified(headers, etag) {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        ([(header::CONTENT_TYPE, content_type)], body).into_response()
    };
    let h = response.headers_mut();
    h.insert(header::ETAG, etag.clone());
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static(cache));
    security_headers(&mut response, &dash.csp);
    response
}

/// The dashboard page (no credentials needed: the page signs in).
#[utoipa::path(get, path = "/", tag = "dashboard",
    responses((status = 200, description = "the dashboard page", content_type = "text/html"),
              (status = 304, description = "unchanged since the ETag given in If-None-Match")))]
pub async fn index(State(dash): State<Arc<Dashboard>>, headers: HeaderMap) -> Response {
    // Revalidated on every load, so a new binary's assets are picked up at once.
    answer(
        &dash,
        &headers,
        &dash.index_etag,
        "no-cache",
        "text/html; charset=utf-8",
        dash.index.clone().into_bytes(),
    )
}

/// One of the page's scripts, styles or images, cached for a year: its URL
/// changes with the binary's assets.
#[utoipa::path(get, path = "/assets/{build}/{file}", tag = "dashboard",
    params(("build" = String, Path, description = "the assets' version, as the page names it"),
           ("file" = String, Path, description = "the asset's name")),
    responses((status = 200, description = "the asset"),
              (status = 304, description = "unchanged since the ETag given in If-None-Match"),
              (status = 404, description = "no such asset in this version")))]
pub async fn asset(
    State(dash): State<Arc<Dashboard>>,
    Path((build, file)): Path<(String, String)>,
    headers: HeaderMap,
) -> Result<Response, ApiError> {
    // Another version's URL is a 404, not today's file under yesterday's
    // immutable name.
    let found = (build == dash.build)
        .then(|| ASSETS.iter().position(|a| a.name == file))
        .flatten();
    let Some(i) = found else {
        return Err(ApiError::not_found("asset"));
    };
    let asset = &ASSETS[i];
    Ok(answer(
        &dash,
        &headers,
        &dash.asset_etags[i],
        IMMUTABLE,
        asset.content_type,
        asset.body.to_vec(),
    ))
}

/// Whether a path is one of the dashboard's static routes, which need no
/// credentials and count against no rate limit (a page load fetches several).
pub fn is_static_path(path: &str) -> bool {
    path == "/" || path.starts_with("/assets/")
}

/// The dashboard's routes, documented in the OpenAPI document like any other.
pub fn routes(config: &Config) -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(index))
        .routes(routes!(asset))
        .with_state(Arc::new(Dashboard::new(config)))
}
