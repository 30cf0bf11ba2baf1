//! The SQL statements intake sends Postgres per operation (what its scale
//! costs the database), as pg_stat_statements counts them (`track = all`)
//! on a cluster of its own: each operation run REPEAT times one after
//! another, ROUNDS rounds, and the fewest statements per operation of the
//! rounds reported (a round that met the reaper counts its statements
//! too); then what an idle instance sends over 30 s.

use std::{path::PathBuf, time::Duration};

use base64::{Engine, engine::general_purpose::STANDARD as BASE64};
use bytes::Bytes;
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};

use crate::{
    admin::Admin,
    form::{Kind, MIB, form},
    servers,
};

// The settings, from the environment (or the same flags).
#[derive(clap::Args)]
pub struct Settings {
    /// Rounds of each operation.
    #[arg(long, env = "ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Operations per round (2 for the large ones).
    #[arg(long, env = "REPEAT", default_value_t = 10)]
    repeat: usize,
    /// The cluster's `intake` database, where pg_stat_statements is
    /// installed (intake's own DATABASE_URL names its schema in it).
    #[arg(long, env = "STATEMENTS_DATABASE_URL")]
    database: String,
    /// The intake binary.
    #[arg(long, env = "INTAKE_BIN")]
    intake_bin: String,
    /// A scratch folder (intake's log).
    #[arg(long, env = "BENCH_WORK")]
    work: PathBuf,
}

/// Statements counted so far: every statement of every connection to the
/// `intake` database but those that read or reset the count.
async fn statements(db: &mut PgConnection) -> i64 {
    sqlx::query_scalar(
        "SELECT coalesce(sum(calls), 0)::bigint FROM pg_stat_statements s
         JOIN pg_database d ON d.oid = s.dbid WHERE d.datname = 'intake'
         AND s.query NOT ILIKE '%pg_stat_statements%'",
    )
    .fetch_one(db)
    .await
    .expect("read pg_stat_statements")
}

async fn reset(db: &mut PgConnection) {
    sqlx::query("SELECT pg_stat_statements_reset()")
        .execute(db)
        .await
        .expect("reset pg_stat_statements");
}

/// The count once work an answer leaves behind (a lease ended after the
/// response) is done: it counts for the operation, so the count is read
/// until it stops moving.
async fn settled(db: &mut PgConnection) -> i64 {
    let mut last = statements(db).await;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        let now = statements(db).await;
        if now == last {
            return now;
        }
        last = now;
    }
}

/// intake and the API key the operations send.
struct Client {
    http: reqwest::Client,
    url: String,
    key: String,
}

/// A request that must succeed; its response.
async fn ok(request: reqwest::RequestBuilder) -> reqwest::Response {
    let resp = request.send().await.expect("a request to intake or S3");
    let status = resp.status();
    assert!(
        status.is_success(),
        "{} {status}: {}",
        resp.url().clone(),
        resp.text().await.unwrap_or_default()
    );
    resp
}

impl Client {
    async fn json(&self, request: reqwest::RequestBuilder) -> Value {
        ok(request.bearer_auth(&self.key))
            .await
            .json()
            .await
            .expect("intake's JSON")
    }

    async fn get(&self, path: &str) {
        ok(self
            .http
            .get(format!("{}{path}", self.url))
            .bearer_auth(&self.key))
        .await;
    }

    async fn form(&self, path: &str, field: &str, files: &[Bytes]) {
        let (content_type, len, body) = form(field, files, &Kind::PNG);
        ok(self
            .http
            .post(format!("{}{path}", self.url))
            .bearer_auth(&self.key)
            .header("content-type", content_type)
            .header("content-length", len)
            .body(body))
        .await;
    }

    /// Issue, PUT to storage (in its parts when `multipart`), complete.
    async fn presigned(&self, data: &Bytes, multipart: bool) {
        let mut ask = json!({"filename": "p.png", "content_type": "image/png", "size": data.len()});
        if multipart {
            ask["multipart"] = json!(true);
        }
        let up = self
            .json(
                self.http
                    .post(format!("{}/upload/presigned", self.url))
                    .json(&ask),
            )
            .await;
        let id = up["upload_id"].as_str().expect("upload_id");
        let complete = format!("{}/upload/presigned/{id}/complete", self.url);
        if multipart {
            let size = up["part_size"].as_u64().expect("part_size") as usize;
            let mut parts = Vec::new();
            for p in up["parts"].as_array().expect("parts") {
                let n = p["part_number"].as_u64().expect("part_number") as usize;
                let chunk = data.slice((n - 1) * size..(n * size).min(data.len()));
                let resp = ok(self
                    .http
                    .put(p["url"].as_str().expect("a part URL"))
                    .body(chunk))
                .await;
                let etag = resp.headers()["etag"].to_str().expect("an ETag").to_owned();
                parts.push(json!({"part_number": n, "etag": etag}));
            }
            self.json(self.http.post(complete).json(&json!({ "parts": parts })))
                .await;
        } else {
            let method = up["method"]
                .as_str()
                .expect("method")
                .parse()
                .expect("an HTTP method");
            let mut put = self
                .http
                .request(method, up["url"].as_str().expect("the upload URL"));
            for (name, value) in up["headers"].as_object().expect("headers") {
                if !name.eq_ignore_ascii_case("content-length") {
                    put = put.header(name, value.as_str().expect("a header value"));
                }
            }
            ok(put.body(data.clone())).await;
            self.json(self.http.post(complete).json(&json!({}))).await;
        }
    }

    /// Create, then `patches` PATCHes of an equal share of `data`.
    async fn tus(&self, data: &Bytes, patches: usize) {
        let meta = format!(
            "filename {},filetype {}",
            BASE64.encode("t.png"),
            BASE64.encode("image/png")
        );
        let created = ok(self
            .http
            .post(format!("{}/upload/tus", self.url))
            .bearer_auth(&self.key)
            .header("tus-resumable", "1.0.0")
            .header("upload-length", data.len())
            .header("upload-metadata", meta)
            .header("content-length", 0))
        .await;
        let location = created.headers()["location"]
            .to_str()
            .expect("a Location")
            .to_owned();
        let location = if location.starts_with("http") {
            location
        } else {
            format!("{}{location}", self.url)
        };
        let step = data.len().div_ceil(patches);
        for offset in (0..data.len()).step_by(step) {
            ok(self
                .http
                .patch(&location)
                .bearer_auth(&self.key)
                .header("tus-resumable", "1.0.0")
                .header("upload-offset", offset)
                .header("content-type", "application/offset+octet-stream")
                .body(data.slice(offset..(offset + step).min(data.len()))))
            .await;
        }
    }
}

/// The operations, in the order of the table.
#[derive(Clone, Copy)]
enum Op {
    GetMe,
    GetFiles,
    Stream1,
    Stream64,
    Batch,
    PresignedPut,
    PresignedMultipart,
    Tus1,
    Tus32,
}

impl Op {
    const ALL: [Op; 9] = [
        Op::GetMe,
        Op::GetFiles,
        Op::Stream1,
        Op::Stream64,
        Op::Batch,
        Op::PresignedPut,
        Op::PresignedMultipart,
        Op::Tus1,
        Op::Tus32,
    ];

    fn name(self) -> &'static str {
        match self {
            Op::GetMe => "GET /me (API key)",
            Op::GetFiles => "GET /files (API key)",
            Op::Stream1 => "POST /upload/stream, 1 MiB",
            Op::Stream64 => "POST /upload/stream, 64 MiB (one streamed PUT)",
            Op::Batch => "POST /upload/stream-batch, 10 x 100 KiB",
            Op::PresignedPut => "presigned PUT, 1 MiB (issue + PUT + complete)",
            Op::PresignedMultipart => "presigned multipart, 32 MiB (4 parts)",
            Op::Tus1 => "tus, 1 MiB in 1 PATCH (create + PATCH)",
            Op::Tus32 => "tus, 32 MiB in 4 PATCHes",
        }
    }

    /// Operations per round: REPEAT, or 2 for the large ones.
    fn count(self, repeat: usize) -> usize {
        match self {
            Op::Stream64 | Op::PresignedMultipart | Op::Tus32 => 2,
            _ => repeat,
        }
    }

    async fn run(self, c: &Client, small: &Bytes, big: &Bytes) {
        match self {
            Op::GetMe => c.get("/me").await,
            Op::GetFiles => c.get("/files").await,
            Op::Stream1 => {
                c.form("/upload/stream", "file", std::slice::from_ref(small))
                    .await
            }
            Op::Stream64 => {
                c.form("/upload/stream", "file", std::slice::from_ref(big))
                    .await
            }
            Op::Batch => {
                let files = vec![Kind::PNG.random(100 << 10); 10];
                c.form("/upload/stream-batch", "files", &files).await;
            }
            Op::PresignedPut => c.presigned(small, false).await,
            Op::PresignedMultipart => c.presigned(&big.slice(..32 * MIB), true).await,
            Op::Tus1 => c.tus(small, 1).await,
            Op::Tus32 => c.tus(&big.slice(..32 * MIB), 4).await,
        }
    }
}

pub async fn run(s: &Settings) {
    assert!(s.rounds > 0, "ROUNDS must be at least 1");
    let mut db = PgConnection::connect(&s.database)
        .await
        .expect("connect to the statements cluster");
    let addr = format!("127.0.0.1:{}", servers::free_port());
    let url = format!("http://{addr}");
    let log = s.work.join("intake.log");
    let intake = servers::start_intake(&s.intake_bin, &addr, &[], &[], &log).await;
    let email = format!("{}@example.com", uuid::Uuid::new_v4().simple());
    let limits = json!({"requests_per_minute": 100_000, "concurrent_uploads": 1000});
    let client = Client {
        http: reqwest::Client::new(),
        key: Admin::new(&url)
            .key(&email, "enterprise", Some(limits))
            .await,
        url,
    };
    let (small, big) = (Kind::PNG.random(MIB), Kind::PNG.random(64 * MIB));
    println!("{:<50} {:>10}", "operation", "statements");
    for op in Op::ALL {
        let n = op.count(s.repeat);
        let mut best = f64::INFINITY;
        for _ in 0..s.rounds {
            reset(&mut db).await;
            let before = statements(&mut db).await;
            for _ in 0..n {
                op.run(&client, &small, &big).await;
            }
            let per = (settled(&mut db).await - before) as f64 / n as f64;
            best = best.min(per);
        }
        println!("{:<50} {best:>10.1}", op.name());
    }
    // What an idle instance sends (the reaper's pass every 10 s, the
    // limiter's flushes), over 30 s.
    reset(&mut db).await;
    let before = statements(&mut db).await;
    tokio::time::sleep(Duration::from_secs(30)).await;
    let idle = (statements(&mut db).await - before) as f64 / 3.0;
    println!(
        "{:<50} {idle:>10.1}",
        "idle instance, per 10 s (reaper pass)"
    );
    intake.stop();
}
