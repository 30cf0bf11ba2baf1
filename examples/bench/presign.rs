//! The presigned-upload bench, against one S3 server on loopback: a
//! multipart upload through intake's presigned URLs (issue, PUT the parts
//! straight to S3, complete) beside the same upload done by boto3 directly
//! (same part size, parts one after another, same checksum policy,
//! payloads unsigned as in intake's presigned URLs), the parts of both sent
//! by the same Python client (`scripts/bench/presign/client.py`); and the
//! latency of issue and complete calls with CONCURRENT presigned uploads in
//! flight at once.

use std::{
    io::Write,
    path::PathBuf,
    process::{Command, Stdio},
    time::Instant,
};

use bytes::Bytes;
use serde_json::{Value, json};

use crate::{
    admin::Admin,
    form::{Kind, MIB},
    s3::{self, env},
    servers,
    stats::percentile,
};

/// The direct upload's part size (intake's default part size).
const PART: usize = 8 * MIB;

// The settings, from the environment (or the same flags).
#[derive(clap::Args)]
pub struct Settings {
    /// Size of the multipart upload, in MiB.
    #[arg(long, env = "SIZE_MIB", default_value_t = 1024)]
    size_mib: usize,
    /// Presigned uploads issued, and then completed, at once.
    #[arg(long, env = "CONCURRENT", default_value_t = 50)]
    concurrent: usize,
    /// The intake binary.
    #[arg(long, env = "INTAKE_BIN")]
    intake_bin: String,
    /// A scratch folder (intake's log).
    #[arg(long, env = "BENCH_WORK")]
    work: PathBuf,
}

/// Runs the Python client with `args` (and `input` on its stdin): its
/// seconds and the parts' ETags.
fn client(args: &[&str], input: Option<&Value>) -> (f64, Vec<String>) {
    let mut child = Command::new("python3")
        .arg("scripts/bench/presign/client.py")
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .expect("run the Python client");
    let mut stdin = child.stdin.take().expect("the client's stdin");
    if let Some(input) = input {
        stdin
            .write_all(input.to_string().as_bytes())
            .expect("write to the client");
    }
    drop(stdin);
    let out = child.wait_with_output().expect("the client's output");
    let report = servers::json_report(&out, &format!("the Python client {args:?}"));
    let secs = report["seconds"].as_f64().expect("seconds");
    (secs, servers::strings(&report, "etags"))
}

/// A call to intake that must answer 201; its JSON.
async fn created(request: reqwest::RequestBuilder, what: &str) -> Value {
    let resp = request
        .send()
        .await
        .unwrap_or_else(|e| panic!("{what}: {e}"));
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert_eq!(status, 201, "{what}: {status} {text}");
    serde_json::from_str(&text).unwrap_or(Value::Null)
}

/// Issues a small presigned upload on `http`, a client of its own (a new
/// connection, as a fresh client would open); the seconds it took and the
/// upload.
async fn issue_one(http: &reqwest::Client, url: &str, key: &str, size: usize) -> (f64, Value) {
    let t = Instant::now();
    let issued = created(
        http.post(format!("{url}/upload/presigned"))
            .bearer_auth(key)
            .json(&json!({"filename": "s.mp4", "content_type": "video/mp4", "size": size})),
        "issue",
    )
    .await;
    (t.elapsed().as_secs_f64(), issued)
}

/// PUTs `data` to an issued upload's URL, then completes it, on `http`, a
/// client of its own (a new connection to intake, as a fresh client would
/// open); the seconds the complete took.
async fn complete_one(
    http: &reqwest::Client,
    url: &str,
    key: &str,
    issued: &Value,
    data: Bytes,
) -> f64 {
    let mut put = http.put(issued["url"].as_str().expect("the upload URL"));
    for (name, value) in issued["headers"].as_object().expect("the upload's headers") {
        if name != "content-length" {
            put = put.header(name, value.as_str().expect("a header value"));
        }
    }
    put.body(data)
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("PUT to the presigned URL");
    let id = issued["upload_id"].as_str().expect("upload_id");
    let t = Instant::now();
    created(
        http.post(format!("{url}/upload/presigned/{id}/complete"))
            .bearer_auth(key)
            .json(&json!({})),
        "complete",
    )
    .await;
    t.elapsed().as_secs_f64()
}

pub async fn run(s: &Settings) {
    let bucket = crate::bench_bucket().await;
    let store = s3::client();
    let addr = format!("127.0.0.1:{}", servers::free_port());
    let url = format!("http://{addr}");
    let vars = [("DATABASE_MAX_CONNECTIONS", "20".to_owned())];
    let log = s.work.join("intake.log");
    let intake = servers::start_intake(&s.intake_bin, &addr, &vars, &[], &log).await;
    let limits = json!({"concurrent_uploads": 200, "requests_per_minute": 1_000_000,
        "storage_bytes": null});
    let key = Admin::new(&url)
        .key("b@example.com", "enterprise", Some(limits))
        .await;
    let size = s.size_mib * MIB;

    // 1. Direct multipart with boto3.
    let (direct, _) = client(
        &[
            "direct",
            &env("S3_ENDPOINT"),
            &bucket,
            "direct",
            &size.to_string(),
            &PART.to_string(),
        ],
        None,
    );
    store
        .delete_object()
        .bucket(&bucket)
        .key("direct")
        .send()
        .await
        .expect("delete the direct upload");

    // 2. The same through intake's presigned URLs: issued and completed
    // here, the parts PUT by the same client.
    let http = reqwest::Client::new();
    let t = Instant::now();
    let issued = created(
        http.post(format!("{url}/upload/presigned"))
            .bearer_auth(&key)
            .json(&json!({"filename": "big.mp4", "content_type": "video/mp4",
                "size": size, "multipart": true})),
        "issue the multipart upload",
    )
    .await;
    let issue_s = t.elapsed().as_secs_f64();
    let parts = issued["parts"].as_array().expect("the part URLs");
    let urls: Vec<&str> = parts
        .iter()
        .map(|p| p["url"].as_str().expect("a part URL"))
        .collect();
    let ask = json!({"size": size, "part_size": issued["part_size"], "urls": urls});
    let (puts_s, etags) = client(&["presigned"], Some(&ask));
    let done: Vec<Value> = parts
        .iter()
        .zip(&etags)
        .map(|(p, etag)| json!({"part_number": p["part_number"], "etag": etag}))
        .collect();
    let id = issued["upload_id"].as_str().expect("upload_id");
    let t = Instant::now();
    created(
        http.post(format!("{url}/upload/presigned/{id}/complete"))
            .bearer_auth(&key)
            .json(&json!({ "parts": done })),
        "complete the multipart upload",
    )
    .await;
    let complete_s = t.elapsed().as_secs_f64();
    let through = issue_s + puts_s + complete_s;

    // 3. Issue and complete latency with CONCURRENT uploads at once.
    // Each call on a client made beforehand, so that no call's time holds
    // the making of another's client.
    let small = Kind::MP4.random(Kind::MP4.header.len() + 256 * 1024);
    let clients =
        || -> Vec<reqwest::Client> { (0..s.concurrent).map(|_| reqwest::Client::new()).collect() };
    let issuers = clients();
    let issues = futures_util::future::join_all(
        issuers
            .iter()
            .map(|http| issue_one(http, &url, &key, small.len())),
    )
    .await;
    let completers = clients();
    let completes = futures_util::future::join_all(
        completers
            .iter()
            .zip(&issues)
            .map(|(http, (_, up))| complete_one(http, &url, &key, up, small.clone())),
    )
    .await;
    intake.stop();
    let issue_times: Vec<f64> = issues.iter().map(|(t, _)| *t).collect();
    let ms = |values: &[f64], q: f64| percentile(values, q) * 1000.0;

    let mib = s.size_mib;
    println!("\ncase                                         seconds   MiB/s");
    println!(
        "direct boto3 multipart, {mib} MiB            {direct:8.2} {:7.1}",
        mib as f64 / direct
    );
    println!(
        "intake presigned multipart, {mib} MiB        {through:8.2} {:7.1}",
        mib as f64 / through
    );
    println!(
        "  of which issue {:.1} ms ({} part URLs), complete {:.1} ms",
        issue_s * 1000.0,
        parts.len(),
        complete_s * 1000.0
    );
    println!("\nintake / direct throughput: {:.2}", direct / through);
    println!(
        "{} concurrent presigns: issue p50 {:.1} ms, p99 {:.1} ms",
        s.concurrent,
        ms(&issue_times, 0.5),
        ms(&issue_times, 0.99)
    );
    println!(
        "{} concurrent completes: p50 {:.1} ms, p99 {:.1} ms",
        s.concurrent,
        ms(&completes, 0.5),
        ms(&completes, 0.99)
    );
    println!(
        "(parts {} MiB, sent one after another by the same Python client; s3s-fs on loopback)",
        PART / MIB
    );
}
