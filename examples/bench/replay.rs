//! The cost of a replayed request (`Idempotency-Key`): the latency of a
//! `POST /upload/stream` that repeats a finished one's key, so that intake
//! answers it from the kept answer without reading its body, beside a plain
//! authenticated `GET /me`, on the same server with the same wrk settings,
//! measured one after the other (the order alternating by round). The goal:
//! a replay's median latency within 1.5 times `GET /me`'s.

use std::path::PathBuf;

use crate::{
    admin::Admin,
    form::Kind,
    servers,
    stats::median,
    wrk::{self, Keys},
};

// The settings, from the environment (or the same flags).
#[derive(clap::Args)]
pub struct Settings {
    /// Length of each measurement, as wrk takes it.
    #[arg(long, env = "DURATION", default_value = "5s")]
    duration: String,
    /// Rounds, each measuring both requests.
    #[arg(long, env = "ROUNDS", default_value_t = 4)]
    rounds: usize,
    /// wrk's connections.
    #[arg(long, env = "CONNECTIONS", default_value_t = 16)]
    connections: usize,
    /// The intake binary.
    #[arg(long, env = "INTAKE_BIN")]
    intake_bin: String,
    /// A scratch folder (the server's log, the body file).
    #[arg(long, env = "BENCH_WORK")]
    work: PathBuf,
}

/// A one-file multipart body of a small PNG: its content type and bytes.
fn small_form() -> (String, Vec<u8>) {
    let boundary = "benchreplay5e1c";
    let mut body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"replay.png\"\r\nContent-Type: image/png\r\n\r\n"
    )
    .into_bytes();
    body.extend_from_slice(&Kind::PNG.random(4096));
    body.extend_from_slice(format!("\r\n--{boundary}--\r\n").as_bytes());
    (format!("multipart/form-data; boundary={boundary}"), body)
}

pub async fn run(s: &Settings) {
    assert!(s.rounds > 0, "ROUNDS must be at least 1");
    let addr = format!("127.0.0.1:{}", servers::free_port());
    // The limiter off: both requests pass the same layers, and neither is
    // held back by the per-minute limit.
    let vars = [("RATE_LIMIT_ENABLED", "false".to_owned())];
    let log = s.work.join("intake.log");
    let server = servers::start_intake(&s.intake_bin, &addr, &vars, &[], &log).await;
    let url = format!("http://{addr}");
    let key = Admin::new(&url)
        .key("replay@example.com", "enterprise", None)
        .await;

    // The first request with the key: a stored file, whose answer every
    // later request with the key gets back.
    let (content_type, body) = small_form();
    let idempotency_key = "bench-replay-1";
    let http = reqwest::Client::new();
    let first = http
        .post(format!("{url}/upload/stream"))
        .bearer_auth(&key)
        .header("idempotency-key", idempotency_key)
        .header("content-type", &content_type)
        .body(body.clone())
        .send()
        .await
        .expect("the first upload");
    let status = first.status();
    assert_eq!(status, 201, "the first upload: {:?}", first.text().await);
    let body_file = s.work.join("replay.body");
    std::fs::write(&body_file, &body).expect("write the body file");
    let replay = Keys::Script {
        script: "scripts/bench/wrk/replay.lua",
        env: vec![
            ("BENCH_KEY", key.clone()),
            ("BENCH_IDEMPOTENCY_KEY", idempotency_key.to_owned()),
            ("BENCH_CONTENT_TYPE", content_type),
            ("BENCH_BODY_FILE", body_file.display().to_string()),
        ],
    };
    let me = Keys::One(&key);
    let targets = [
        ("GET /me", format!("{url}/me"), &me),
        (
            "replayed POST /upload/stream",
            format!("{url}/upload/stream"),
            &replay,
        ),
    ];
    // Warm-up of both.
    for (_, target, keys) in &targets {
        wrk::run(target, keys, s.connections, "2s", true);
    }

    println!(
        "{:<6} {:<30} {:>10} {:>10} {:>10} {:>9}",
        "round", "request", "req/s", "p50 ms", "p99 ms", "non-2xx"
    );
    // [GET /me, replay][round]
    let mut p50: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    let mut p99: [Vec<f64>; 2] = [Vec::new(), Vec::new()];
    for round in 1..=s.rounds {
        let order = if round % 2 == 0 { [1, 0] } else { [0, 1] };
        for i in order {
            let (name, target, keys) = &targets[i];
            let r = wrk::run(target, keys, s.connections, &s.duration, true);
            assert_eq!(r.non_2xx, 0, "{name}: {} answers were not 2xx", r.non_2xx);
            println!(
                "{round:<6} {name:<30} {:>10.0} {:>10.3} {:>10.3} {:>9}",
                r.rps, r.p50_ms, r.p99_ms, r.non_2xx
            );
            p50[i].push(r.p50_ms);
            p99[i].push(r.p99_ms);
        }
    }

    // Every replay answered from the kept answer: still one file.
    let listed: serde_json::Value = http
        .get(format!("{url}/files"))
        .bearer_auth(&key)
        .send()
        .await
        .expect("GET /files")
        .json()
        .await
        .expect("the listing");
    let files = listed["files"].as_array().map_or(0, Vec::len);
    assert_eq!(files, 1, "replays made files: {listed}");
    server.stop();

    let ratio = median(&p50[1]) / median(&p50[0]);
    println!();
    println!(
        "replay / GET /me, median p50: {ratio:.2}  (goal <= 1.5);  median p99: {:.3} / {:.3} ms",
        median(&p99[1]),
        median(&p99[0])
    );
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "(median of {} rounds; wrk -t1 -c{} -d{} on 127.0.0.1; {cores} cores shared by wrk, intake and Postgres; one file stored, every other answer a replay)",
        s.rounds, s.connections, s.duration
    );
}
