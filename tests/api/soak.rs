//! The soak under faults behind `scripts/chaos.sh`: CHAOS_INSTANCES intake
//! processes behind the round-robin balancer, on a Postgres cluster and an
//! S3 server of their own (so they can be restarted), a mixed workload for
//! CHAOS_SECS with faults at random moments, and the figures of the run.
//! Ignored by the suite (it runs for minutes):
//! `cargo test --test api -- --ignored soak --nocapture`.
//!
//! Settings from the environment (defaults in brackets): CHAOS_SECS (300),
//! CHAOS_INSTANCES (3), CHAOS_WORKERS (6), CHAOS_SEED (the time: replays a
//! run's choices), CHAOS_RSS_BOUND_MIB (64), CHAOS_LOG_DIR (where the
//! instances log; a temporary folder without it).

use std::{
    collections::{BTreeMap, HashMap},
    path::{Path, PathBuf},
    sync::{Arc, Mutex},
    time::{Duration, Instant},
};

use base64::Engine;
use rand::{
    Rng, SeedableRng,
    distributions::{Distribution, WeightedIndex},
    rngs::StdRng,
};
use reqwest::{Method, RequestBuilder, header::HeaderMap};
use serde_json::{Value, json};
use tokio::sync::watch;

use crate::helpers::{
    Form, MIB, Relay, S3_BUCKET, env, fixtures,
    processes::{Instance, PgServer, S3Server, intake_cli},
    within,
};

const LEASE_TTL: u64 = 4;
const PRESIGN_EXPIRY: u64 = 20;
const TUS_EXPIRY: u64 = 20;
const ADMIN: &str = "chaos-admin-token-0123456789abcdefghij";

/// A whole-number setting from the environment, or its default.
fn setting(name: &str, default: u64) -> u64 {
    std::env::var(name).map_or(default, |v| {
        v.parse()
            .unwrap_or_else(|_| panic!("{name} must be a number"))
    })
}

/// What every answer of the run adds up to.
#[derive(Default)]
struct Tally {
    /// "op status" (with the reason of a 409) -> count.
    answers: BTreeMap<String, u64>,
    /// Status (or `conn_error`) -> count, for answers from intake.
    codes: BTreeMap<String, u64>,
    /// Seconds of every HTTP exchange.
    latencies: Vec<f64>,
}

/// The run's clock and its log on stderr, `[  12.3s] what`.
#[derive(Clone, Copy)]
struct Clock(Instant);

impl Clock {
    fn elapsed(self) -> f64 {
        self.0.elapsed().as_secs_f64()
    }

    fn log(self, msg: &str) {
        eprintln!("[{:6.1}s] {msg}", self.elapsed());
    }
}

/// One answer: its status (`None` when the connection failed), headers
/// and body as JSON when it is JSON.
struct Answer {
    status: Option<u16>,
    headers: HeaderMap,
    body: Option<Value>,
}

impl Answer {
    fn is(&self, status: u16) -> bool {
        self.status == Some(status)
    }
}

/// Why a 409 was answered: the upload is complete (or being completed), or
/// the offset sent is not the upload's; the soak tells them apart.
fn conflict_reason(body: Option<&Value>) -> &'static str {
    let detail = body.and_then(|b| b["detail"].as_str()).unwrap_or_default();
    if detail.contains("being completed") {
        " (completing)"
    } else if detail.contains("complete") {
        " (complete)"
    } else if detail.contains("Upload-Offset is") {
        " (offset)"
    } else {
        ""
    }
}

/// A worker of the workload: an account's key, the files it holds.
struct Client {
    base: String,
    key: String,
    files: Vec<String>,
    http: reqwest::Client,
    rng: StdRng,
    tally: Arc<Mutex<Tally>>,
}

impl Client {
    /// Sends `req` (on a connection of its own, as the balancer spreads
    /// connections) and counts its answer under `op`.
    async fn call(&self, op: &str, req: RequestBuilder) -> Answer {
        let started = Instant::now();
        let sent = req
            .bearer_auth(&self.key)
            .header("connection", "close")
            .timeout(Duration::from_secs(60))
            .send()
            .await;
        let answer = match sent {
            Ok(resp) => {
                let status = resp.status().as_u16();
                let headers = resp.headers().clone();
                match resp.text().await {
                    Ok(text) => Answer {
                        status: Some(status),
                        headers,
                        body: serde_json::from_str(&text).ok(),
                    },
                    Err(_) => Answer {
                        status: None,
                        headers: HeaderMap::new(),
                        body: None,
                    },
                }
            }
            Err(_) => Answer {
                status: None,
                headers: HeaderMap::new(),
                body: None,
            },
        };
        let status = answer
            .status
            .map_or_else(|| "conn_error".to_owned(), |s| s.to_string());
        let reason = if answer.is(409) {
            conflict_reason(answer.body.as_ref())
        } else {
            ""
        };
        let mut tally = self.tally.lock().unwrap();
        tally.latencies.push(started.elapsed().as_secs_f64());
        *tally
            .answers
            .entry(format!("{op} {status}{reason}"))
            .or_default() += 1;
        *tally.codes.entry(status).or_default() += 1;
        answer
    }

    fn request(&self, method: Method, path: &str) -> RequestBuilder {
        let url = if path.starts_with("http") {
            path.to_owned()
        } else {
            format!("{}{path}", self.base)
        };
        self.http.request(method, url)
    }

    async fn list(&mut self) {
        self.call("list", self.request(Method::GET, "/files?limit=20"))
            .await;
    }

    async fn stream(&mut self, size: usize, mp4: bool) {
        let (data, name, ct) = if mp4 {
            (fixtures::mp4(size), "f.mp4", "video/mp4")
        } else {
            (fixtures::png(size), "f.png", "image/png")
        };
        let form = Form::new().part("file", name, ct, &data).finish();
        let req = self
            .request(Method::POST, "/upload/stream")
            .header("content-type", form.content_type())
            .body(form.body);
        let answer = self.call("stream", req).await;
        if let (true, Some(id)) = (
            answer.is(201),
            answer.body.as_ref().and_then(|b| b["id"].as_str()),
        ) {
            self.files.push(id.to_owned());
        }
    }

    async fn batch(&mut self) {
        let count = self.rng.gen_range(2..=5);
        let form = (0..count)
            .fold(Form::new(), |form, i| {
                let len = self.rng.gen_range(1000..=100_000);
                form.part(
                    "files",
                    &format!("b{i}.png"),
                    "image/png",
                    &fixtures::png(len),
                )
            })
            .finish();
        let req = self
            .request(Method::POST, "/upload/stream-batch")
            .header("content-type", form.content_type())
            .body(form.body);
        let answer = self.call("batch", req).await;
        if answer.is(200) {
            let results = answer.body.as_ref().and_then(|b| b["results"].as_array());
            for r in results.into_iter().flatten() {
                if r["status"] == 201
                    && let Some(id) = r["file"]["id"].as_str()
                {
                    self.files.push(id.to_owned());
                }
            }
        }
    }

    async fn presigned(&mut self) {
        let data = fixtures::png(self.rng.gen_range(10_000..=300_000));
        let req = self
            .request(Method::POST, "/upload/presigned")
            .json(&json!({"filename": "p.png", "content_type": "image/png", "size": data.len()}));
        let answer = self.call("presign", req).await;
        let Some(issued) = answer.body.filter(|_| answer.status == Some(201)) else {
            return;
        };
        // The PUT goes to the store, not to intake: it counts among the
        // answers and latencies, not among intake's statuses.
        let mut put = self
            .http
            .put(issued["url"].as_str().unwrap_or_default())
            .timeout(Duration::from_secs(30))
            .body(data);
        for (k, v) in issued["headers"].as_object().into_iter().flatten() {
            if !k.eq_ignore_ascii_case("content-length") {
                put = put.header(k.as_str(), v.as_str().unwrap_or_default());
            }
        }
        let started = Instant::now();
        let status = put.send().await.map_or_else(
            |_| "conn_error".to_owned(),
            |r| r.status().as_u16().to_string(),
        );
        {
            let mut tally = self.tally.lock().unwrap();
            tally.latencies.push(started.elapsed().as_secs_f64());
            *tally
                .answers
                .entry(format!("presign-put {status}"))
                .or_default() += 1;
        }
        let upload = issued["upload_id"].as_str().unwrap_or_default().to_owned();
        let complete = format!("/upload/presigned/{upload}/complete");
        for _ in 0..3 {
            let req = self.request(Method::POST, &complete).json(&json!({}));
            let answer = self.call("presign-complete", req).await;
            if answer.is(201)
                && let Some(id) = answer.body.as_ref().and_then(|b| b["id"].as_str())
            {
                self.files.push(id.to_owned());
                return;
            }
            if [422, 404, 410].iter().any(|s| answer.is(*s)) {
                return;
            }
            // The workload's pace between retries (a client backing off).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let abort = self.request(Method::DELETE, &format!("/upload/presigned/{upload}"));
        self.call("presign-abort", abort).await;
    }

    async fn tus(&mut self) {
        let len = if self.rng.gen_bool(0.5) {
            200_000
        } else {
            6 * MIB
        };
        let data = fixtures::mp4(len);
        let meta = format!(
            "filename {}",
            base64::engine::general_purpose::STANDARD.encode("t.mp4")
        );
        let create = self
            .request(Method::POST, "/upload/tus")
            .header("tus-resumable", "1.0.0")
            .header("upload-length", data.len().to_string())
            .header("upload-metadata", meta);
        let answer = self.call("tus-create", create).await;
        if !answer.is(201) {
            return;
        }
        let location = answer
            .headers
            .get("location")
            .and_then(|l| l.to_str().ok())
            .unwrap_or_default();
        let Some(at) = location.find("/upload/tus/") else {
            return;
        };
        let path = location[at..].to_owned();
        for _ in 0..4 {
            let head = self
                .request(Method::HEAD, &path)
                .header("tus-resumable", "1.0.0");
            let answer = self.call("tus-head", head).await;
            let offset = answer
                .headers
                .get("upload-offset")
                .and_then(|o| o.to_str().ok())
                .and_then(|o| o.parse::<usize>().ok());
            let Some(offset) = offset.filter(|_| answer.is(200)) else {
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            };
            let patch = self
                .request(Method::PATCH, &path)
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", offset.to_string())
                .header("content-type", "application/offset+octet-stream")
                .body(data[offset.min(data.len())..].to_vec());
            let answer = self.call("tus-patch", patch).await;
            if answer.is(204) {
                if let Some(id) = answer
                    .headers
                    .get("intake-file-id")
                    .and_then(|v| v.to_str().ok())
                {
                    self.files.push(id.to_owned());
                }
                return;
            }
            // The workload's pace between retries (a client backing off).
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
        let terminate = self
            .request(Method::DELETE, &path)
            .header("tus-resumable", "1.0.0");
        self.call("tus-terminate", terminate).await;
    }

    async fn delete(&mut self) {
        if !self.files.is_empty() {
            let at = self.rng.gen_range(0..self.files.len());
            let id = self.files.swap_remove(at);
            self.call(
                "delete",
                self.request(Method::DELETE, &format!("/files/{id}")),
            )
            .await;
        }
    }

    /// The mixed workload until `stop`: each turn one operation, picked by
    /// its weight.
    async fn work(mut self, stop: watch::Receiver<bool>) {
        let weights = WeightedIndex::new([25, 25, 4, 10, 10, 6, 20]).unwrap();
        while !*stop.borrow() {
            match weights.sample(&mut self.rng) {
                0 => self.list().await,
                1 => {
                    let size = self.rng.gen_range(1000..=200_000);
                    self.stream(size, false).await;
                }
                2 => {
                    let size = self.rng.gen_range(6..=12) * MIB;
                    self.stream(size, true).await;
                }
                3 => self.batch().await,
                4 => self.presigned().await,
                5 => self.tus().await,
                _ => self.delete().await,
            }
        }
    }

    /// An account held at its per-minute limit: `GET /me` twice a second
    /// until `stop`.
    async fn hammer(self, mut stop: watch::Receiver<bool>) {
        while !*stop.borrow() {
            self.call("hammer", self.request(Method::GET, "/me")).await;
            tokio::select! {
                () = tokio::time::sleep(Duration::from_millis(500)) => {}
                _ = stop.changed() => {}
            }
        }
    }
}

/// Creates an account of `tier` (with `limits` when given) through the
/// admin API at `base`; its API key.
async fn account(http: &reqwest::Client, base: &str, tier: &str, limits: Option<Value>) -> String {
    let admin = |method: Method, path: String, body: Value| {
        let req = http
            .request(method, format!("{base}{path}"))
            .bearer_auth(ADMIN)
            .json(&body)
            .timeout(Duration::from_secs(30));
        async move {
            let resp = req.send().await.expect("admin call");
            assert!(
                resp.status().is_success(),
                "admin {path}: {}",
                resp.status()
            );
            resp.json::<Value>().await.unwrap_or(Value::Null)
        }
    };
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let acct = admin(
        Method::POST,
        "/admin/accounts".into(),
        json!({"email": email, "password": "chaos password 1", "tier": tier}),
    )
    .await;
    let id = acct["id"].as_str().expect("account id").to_owned();
    if let Some(limits) = limits {
        admin(
            Method::PATCH,
            format!("/admin/accounts/{id}"),
            json!({"custom_limits": limits}),
        )
        .await;
    }
    let key = admin(
        Method::POST,
        format!("/admin/accounts/{id}/api-keys"),
        json!({"name": "chaos"}),
    )
    .await;
    key["key"].as_str().expect("an API key").to_owned()
}

/// The services the faults strike, handed back when the run ends.
struct Victims {
    /// Every instance but the steady one.
    instances: Vec<Instance>,
    s3: S3Server,
    pg: PgServer,
}

/// Strikes every 10 to 25 s until `stop`: `kill -9` and restart of an
/// instance (twice as likely), an S3 server stop and restart, a Postgres
/// restart. A service that fails to come back panics, which ends the run.
async fn inject(
    mut v: Victims,
    mut rng: StdRng,
    mut stop: watch::Receiver<bool>,
    faults: Arc<Mutex<Vec<(f64, String)>>>,
    clock: Clock,
) -> Victims {
    loop {
        let wait = Duration::from_secs_f64(rng.gen_range(10.0..25.0));
        tokio::select! {
            () = tokio::time::sleep(wait) => {}
            _ = stop.changed() => return v,
        }
        let fault = ["kill9", "kill9", "s3", "postgres"][rng.gen_range(0..4)];
        let record = |what: String| {
            clock.log(&what);
            faults.lock().unwrap().push((clock.elapsed(), what));
        };
        // How long a killed service stays down is part of the fault.
        match fault {
            "kill9" => {
                let at = rng.gen_range(0..v.instances.len());
                let inst = &mut v.instances[at];
                inst.kill9().await;
                record(format!("kill -9 instance {}", at + 1));
                tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(0.5..3.0))).await;
                inst.restart().await;
            }
            "s3" => {
                v.s3.stop().await;
                record("S3 server stopped".into());
                tokio::time::sleep(Duration::from_secs_f64(rng.gen_range(1.0..4.0))).await;
                v.s3.restart().await;
            }
            _ => {
                record("Postgres restart".into());
                v.pg.down().await;
                v.pg.up().await;
            }
        }
    }
}

/// `p`th percentile of `values` (the nearest rank, ties to even, as the
/// soak has always computed it).
fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return 0.0;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let at = (p / 100.0 * (v.len() - 1) as f64).round_ties_even() as usize;
    v[at.min(v.len() - 1)]
}

/// JSON on one line with a space after each `,` and `:`, as the soak's
/// report has always printed the reaper's answer.
fn one_line(value: &Value) -> String {
    match value {
        Value::Object(map) => {
            let fields: Vec<String> = map
                .iter()
                .map(|(k, v)| format!("{}: {}", Value::from(k.as_str()), one_line(v)))
                .collect();
            format!("{{{}}}", fields.join(", "))
        }
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(one_line).collect();
            format!("[{}]", items.join(", "))
        }
        other => other.to_string(),
    }
}

/// The `internal error` lines of an instance's log, without colours, each
/// cut to 300 characters.
fn internal_errors(log: &Path) -> Vec<String> {
    let text = std::fs::read(log)
        .unwrap_or_else(|e| panic!("read the instance log {}: {e}", log.display()));
    String::from_utf8_lossy(&text)
        .lines()
        .filter(|l| l.contains("internal error"))
        .map(|l| {
            let mut plain = String::new();
            let mut chars = l.chars();
            while let Some(c) = chars.next() {
                if c == '\u{1b}' {
                    // An ANSI colour: ESC [ digits and semicolons, then m.
                    for c in chars.by_ref() {
                        if c == 'm' {
                            break;
                        }
                    }
                } else {
                    plain.push(c);
                }
            }
            plain.trim().chars().take(300).collect()
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
#[ignore = "a soak of minutes under faults: scripts/chaos.sh runs it"]
async fn soak() {
    let secs = setting("CHAOS_SECS", 300);
    let instances_n = setting("CHAOS_INSTANCES", 3) as usize;
    let workers = setting("CHAOS_WORKERS", 6) as usize;
    let seed = setting(
        "CHAOS_SEED",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_secs(),
    );
    // Growth of the steady instance's RSS from the first sample to the
    // last, beyond which the run fails (allocator caches and pools warm up
    // first).
    let rss_bound_mib = setting("CHAOS_RSS_BOUND_MIB", 64);
    assert!(instances_n >= 2, "CHAOS_INSTANCES: one steady, one to kill");
    let clock = Clock(Instant::now());
    let temp_logs = tempfile::tempdir().unwrap();
    let log_dir =
        std::env::var("CHAOS_LOG_DIR").map_or_else(|_| temp_logs.path().to_owned(), PathBuf::from);

    let s3 = S3Server::start().await;
    let pg = PgServer::start().await;
    let vars: HashMap<String, String> = [
        ("DATABASE_URL", pg.url.clone()),
        (
            "JWT_SECRET",
            "chaos-jwt-secret-0123456789abcdefghijklmnop".into(),
        ),
        ("ADMIN_TOKEN", ADMIN.into()),
        ("COOKIE_SECURE", "false".into()),
        ("STORAGE_BACKEND", "s3".into()),
        ("S3_BUCKET", S3_BUCKET.into()),
        ("S3_ENDPOINT", s3.endpoint.clone()),
        ("S3_ACCESS_KEY_ID", env("TEST_S3_ACCESS_KEY_ID")),
        ("S3_SECRET_ACCESS_KEY", env("TEST_S3_SECRET_ACCESS_KEY")),
        ("S3_TIMEOUT_SECS", "10".into()),
        ("UPLOAD_PART_BYTES", (5 * MIB).to_string()),
        ("UPLOAD_LEASE_TTL_SECS", LEASE_TTL.to_string()),
        ("PRESIGN_EXPIRY_SECS", PRESIGN_EXPIRY.to_string()),
        ("TUS_EXPIRY_SECS", TUS_EXPIRY.to_string()),
        ("REAPER_INTERVAL_SECS", "5".into()),
        ("DATABASE_ACQUIRE_TIMEOUT_SECS", "5".into()),
        ("DATABASE_MAX_CONNECTIONS", "10".into()),
        ("SHUTDOWN_GRACE_SECS", "5".into()),
        ("RUST_LOG", "warn".into()),
        ("PATH", std::env::var("PATH").unwrap_or_default()),
    ]
    .into_iter()
    .map(|(k, v): (&str, String)| (k.to_owned(), v))
    .collect();
    let (code, _, err) = intake_cli(&vars, &["migrate"]).await;
    assert_eq!(code, 0, "migrate failed: {err}");
    let mut instances = Vec::with_capacity(instances_n);
    for _ in 0..instances_n {
        instances.push(Instance::start(&vars, &log_dir).await);
    }
    let addrs: Vec<&str> = instances.iter().map(|i| i.addr.as_str()).collect();
    let lb = Relay::balancing(&addrs).await;
    let logs: Vec<PathBuf> = instances
        .iter()
        .map(|i| log_dir.join(format!("intake-{}.log", i.port)))
        .collect();

    let http = reqwest::Client::new();
    let direct = instances[0].addr.clone();
    let roomy = json!({"requests_per_minute": 100000, "concurrent_uploads": 50});
    let mut tight = roomy.clone();
    tight["storage_bytes"] = json!(2 * MIB);
    let tally = Arc::new(Mutex::new(Tally::default()));
    let client = |key: String, n: u64| Client {
        base: lb.addr.clone(),
        key,
        files: Vec::new(),
        http: reqwest::Client::new(),
        rng: StdRng::seed_from_u64(seed.wrapping_add(n)),
        tally: tally.clone(),
    };
    let mut clients = Vec::new();
    for n in 0..workers {
        let key = account(&http, &direct, "professional", Some(roomy.clone())).await;
        clients.push(client(key, n as u64 + 1));
    }
    // One account near its quota (507s), one STARTER at its per-minute
    // limit (429s).
    let key = account(&http, &direct, "starter", Some(tight)).await;
    clients.push(client(key, workers as u64 + 1));
    let hammer_key = account(&http, &direct, "starter", None).await;
    let hammers = [
        client(hammer_key.clone(), workers as u64 + 2),
        client(hammer_key, workers as u64 + 3),
    ];
    let tasks_n = clients.len() + hammers.len();
    clock.log(&format!(
        "seed {seed}: {instances_n} instances, {tasks_n} workers, {secs} s"
    ));
    let (stop_tx, stop) = watch::channel(false);
    let mut tasks: Vec<_> = clients
        .into_iter()
        .map(|c| tokio::spawn(c.work(stop.clone())))
        .collect();
    tasks.extend(hammers.map(|c| tokio::spawn(c.hammer(stop.clone()))));

    // The workload warms up before the steady instance's memory is first
    // sampled (the run's schedule, not a wait for a condition).
    let warm_up = Duration::from_secs_f64((secs as f64 / 10.0).min(10.0));
    tokio::time::sleep(warm_up).await;
    let steady = instances.remove(0);
    let rss_start = steady.rss_kib().expect("the steady instance's RSS");
    let faults = Arc::new(Mutex::new(Vec::new()));
    let mut injector = tokio::spawn(inject(
        Victims { instances, s3, pg },
        StdRng::seed_from_u64(seed),
        stop.clone(),
        faults.clone(),
        clock,
    ));
    let finished_early = tokio::select! {
        () = tokio::time::sleep(Duration::from_secs(secs)) => None,
        ended = &mut injector => Some(ended),
    };
    stop_tx.send(true).unwrap();
    for task in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(120), task).await;
    }
    let victims = match finished_early {
        Some(ended) => ended.expect("a fault's service did not come back"),
        None => injector.await.expect("the fault injector"),
    };
    let rss_end = steady.rss_kib().expect("the steady instance's RSS");

    // Everything a fault left open expires, then one reaper pass ends it.
    clock.log("workload stopped; waiting for leases and URLs to expire");
    let db = sqlx::PgPool::connect(&victims.pg.url).await.unwrap();
    let open = "SELECT (SELECT count(*) FROM upload_leases WHERE expires_at > now())
                     + (SELECT count(*) FROM presigned_uploads WHERE expires_at > now())
                     + (SELECT count(*) FROM tus_uploads WHERE expires_at > now())";
    let bound = Duration::from_secs(LEASE_TTL.max(PRESIGN_EXPIRY).max(TUS_EXPIRY) + 30);
    let expired = within(bound, || {
        let db = db.clone();
        async move {
            let left = sqlx::query_scalar::<_, i64>(open).fetch_one(&db).await;
            left.is_ok_and(|n| n == 0)
        }
    })
    .await;
    // What is still open, to tell which owner kept it, when something is.
    let left: Vec<(String, String, f64)> = if expired {
        Vec::new()
    } else {
        sqlx::query_as(
            "SELECT 'lease', kind::text, extract(epoch FROM expires_at - now())::float8
               FROM upload_leases WHERE expires_at > now()
             UNION ALL SELECT 'presigned', state::text, extract(epoch FROM expires_at - now())::float8
               FROM presigned_uploads WHERE expires_at > now()
             UNION ALL SELECT 'tus', state::text, extract(epoch FROM expires_at - now())::float8
               FROM tus_uploads WHERE expires_at > now()",
        )
        .fetch_all(&db)
        .await
        .unwrap_or_default()
    };
    db.close().await;
    assert!(
        expired,
        "leases and URLs still open {bound:?} after the run (what, state, seconds left): {left:?}"
    );
    let (reap_code, reaped, _) = intake_cli(&vars, &["admin", "reap"]).await;
    let (rec_code, report, rec_err) = intake_cli(&vars, &["admin", "reconcile"]).await;
    drop(steady);
    drop(victims);
    drop(lb);

    let tally = tally.lock().unwrap();
    let faults = faults.lock().unwrap();
    let served: u64 = tally.codes.values().sum();
    let grew = (rss_end as f64 - rss_start as f64) / 1024.0;
    println!("== chaos run");
    println!(
        "seed {seed}, {secs} s, {instances_n} instances behind the balancer, {tasks_n} workers"
    );
    println!("faults injected: {}", faults.len());
    for (at, what) in faults.iter() {
        println!("  {at:6.1}s  {what}");
    }
    println!(
        "requests served: {served} ({:.1}/s)",
        served as f64 / secs as f64
    );
    let by_status: Vec<String> = tally
        .codes
        .iter()
        .map(|(k, v)| {
            format!(
                "{k}: {v} ({:.2}%)",
                100.0 * *v as f64 / served.max(1) as f64
            )
        })
        .collect();
    println!("answers by status: {}", by_status.join(", "));
    println!("answers by operation:");
    for (k, v) in &tally.answers {
        println!("  {k}: {v}");
    }
    println!(
        "latency p50 {:.1} ms, p99 {:.1} ms",
        1000.0 * percentile(&tally.latencies, 50.0),
        1000.0 * percentile(&tally.latencies, 99.0)
    );
    println!(
        "steady instance RSS: {:.1} MiB at the start, {:.1} MiB at the end ({grew:+.1} MiB; bound {rss_bound_mib} MiB)",
        rss_start as f64 / 1024.0,
        rss_end as f64 / 1024.0
    );
    println!("reaper pass: exit {reap_code}, {}", one_line(&reaped));
    // Every 500 is a bug to find: its log line, whether or not the logs
    // are kept.
    let internal: Vec<String> = logs
        .iter()
        .enumerate()
        .flat_map(|(i, log)| {
            internal_errors(log)
                .into_iter()
                .map(move |l| format!("  instance {i}: {l}"))
        })
        .collect();
    println!("internal errors logged: {}", internal.len());
    for line in internal.iter().take(10) {
        println!("{line}");
    }
    println!("reconcile: exit {rec_code}");
    println!("{}", serde_json::to_string_pretty(&report).unwrap());
    if !rec_err.trim().is_empty() {
        eprintln!("{}", rec_err.trim());
    }
    let failed = rec_code != 0 || reap_code != 0 || grew > rss_bound_mib as f64;
    println!("chaos: {}", if failed { "FAILED" } else { "clean" });
    assert!(!failed, "the soak left work behind or grew past its bound");
}
