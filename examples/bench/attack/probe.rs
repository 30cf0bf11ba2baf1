//! Whether another account is still served while an attack runs: from an
//! address of its own, a `GET /files` every half second on a new
//! connection each, and one 1 MiB upload half-way through.

use std::time::{Duration, Instant};

use reqwest::Method;

use super::session::Session;
use crate::{
    form::{self, Kind, MIB},
    stats::percentile,
};

/// How long a listing may take before it counts as not served.
const LISTING_BOUND: Duration = Duration::from_secs(3);
/// How long the upload may take before it counts as not served.
const UPLOAD_BOUND: Duration = Duration::from_secs(10);

/// What the other account saw.
pub struct Seen {
    /// Latencies, in milliseconds, of the listings answered 200.
    served_ms: Vec<f64>,
    /// Listings sent.
    sent: usize,
    /// The upload's status (or the error that ended it) and its
    /// milliseconds.
    upload: (String, f64),
}

impl Seen {
    /// One line for the report.
    pub fn line(&self) -> String {
        let listings = if self.served_ms.is_empty() {
            format!("GET /files served 0 of {}", self.sent)
        } else {
            format!(
                "GET /files served {} of {} (p50 {:.1} ms, max {:.1} ms)",
                self.served_ms.len(),
                self.sent,
                percentile(&self.served_ms, 0.5),
                percentile(&self.served_ms, 1.0)
            )
        };
        let (upload, ms) = &self.upload;
        format!("another account: {listings}; a 1 MiB upload {upload} in {ms:.0} ms")
    }
}

/// Probes as `other` until `until`, the upload starting at `upload_at`.
pub async fn run(other: &Session, upload_at: Instant, until: Instant) -> Seen {
    let upload = async {
        tokio::time::sleep_until(upload_at.into()).await;
        let t = Instant::now();
        let (content_type, len, body) = form::form("file", &[Kind::MP4.random(MIB)], &Kind::MP4);
        let resp = other
            .request(Method::POST, "/upload/stream")
            .header("content-type", content_type)
            .header("content-length", len)
            .body(body)
            .timeout(UPLOAD_BOUND)
            .send()
            .await;
        let status = match resp {
            Ok(r) => r.status().as_u16().to_string(),
            Err(e) if e.is_timeout() => format!("not answered within {UPLOAD_BOUND:?}"),
            Err(e) => format!("failed ({e})"),
        };
        (status, t.elapsed().as_secs_f64() * 1000.0)
    };
    let listings = async {
        let mut served_ms = Vec::new();
        let mut sent = 0;
        while Instant::now() < until {
            let t = Instant::now();
            sent += 1;
            let resp = other
                .request(Method::GET, "/files")
                .timeout(LISTING_BOUND)
                .send()
                .await;
            if resp.is_ok_and(|r| r.status().is_success()) {
                served_ms.push(t.elapsed().as_secs_f64() * 1000.0);
            }
            tokio::time::sleep(Duration::from_millis(500).saturating_sub(t.elapsed())).await;
        }
        (served_ms, sent)
    };
    let (upload, (served_ms, sent)) = tokio::join!(upload, listings);
    Seen {
        served_ms,
        sent,
        upload,
    }
}
