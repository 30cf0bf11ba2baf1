//! The order of the upload bench's cases and the lines it prints: which
//! server runs for which case, how many times each timed case repeats, and
//! every figure beside its baseline from the same run, in the same wording
//! whether the whole bench runs or one group of cases.
//!
//! From the environment (`scripts/bench/upload.sh` sets them): CASES (`all`,
//! `stream`, `batch`, `tus` or `profile`), REPEAT (3), PROFILE_MIB (100),
//! INTAKE_WRAP (a command intake runs under, e.g. a profiler),
//! INTAKE_BIN, ADMIN_TOKEN, DATABASE_URL, BENCH_WORK (a scratch folder),
//! BENCH_S3_ROOT (the S3 server's folder, emptied between cases so the disk
//! does not fill) and, for the tus cases, TUS_NODE_DIR (see `tus.rs`).
//! intake listens on a free port, the same one each time it restarts, and
//! inherits the rest of the environment.

pub mod cases;

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use sqlx::Connection;

use self::cases::Target;
use crate::{
    admin::Admin,
    form::{Kind, MIB},
    s3::env,
    servers::{self, Ready, Server, field},
    stats, tus,
};

/// The read buffer (READ_BUFFER_BYTES) of the second measurement of CPU per
/// GiB and of the 10 × 20 MiB peak RSS.
const BIG_READS: usize = 1_048_576;

/// `a / b` to `digits` decimals, or `n/a` when either is `n/a` (a build
/// without the feature measured).
fn divide(digits: usize, a: &str, b: &str) -> String {
    if a == "n/a" || b == "n/a" {
        return "n/a".into();
    }
    let (a, b): (f64, f64) = (a.parse().expect("a figure"), b.parse().expect("a figure"));
    format!("{:.digits$}", a / b)
}

/// MiB per second of `mib` MiB in `secs` seconds.
fn rate(mib: u32, secs: &str) -> String {
    divide(1, &mib.to_string(), secs)
}

/// The ratio of two figures, to two decimals.
fn ratio(a: &str, b: &str) -> String {
    divide(2, a, b)
}

/// A table row: the case, then its seconds, MiB/s and (when given) peak RSS.
fn row(case: &str, secs: &str, mib: u32, rss: Option<&str>) -> String {
    let line = format!("{case:<39}{secs:>7} {:>8}", rate(mib, secs));
    match rss {
        Some(rss) => format!("{line} {rss:>12}"),
        None => line,
    }
}

/// CPU seconds per GiB between two tick readings around `mib` MiB uploaded.
fn per_gib(t0: u64, t1: u64, mib: usize) -> String {
    format!(
        "{:.2}",
        (t1 - t0) as f64 / crate::proc::TICKS_PER_SECOND / (mib as f64 / 1024.0)
    )
}

/// The state of one bench run: the intake that runs now, where it writes.
struct Bench {
    bin: String,
    work: PathBuf,
    s3_root: PathBuf,
    bucket: String,
    repeat: usize,
    part: usize,
    to: Target,
    /// Where intake listens (its BIND_ADDR).
    addr: String,
    intake: Option<Server>,
}

impl Bench {
    /// Starts intake (READ_BUFFER_BYTES `read_buffer` when given, under
    /// `wrap` when given, else under INTAKE_WRAP, e.g. `perf record -g`)
    /// and waits for it to be healthy.
    async fn start_intake(&mut self, read_buffer: Option<usize>, wrap: &[String]) {
        assert!(self.intake.is_none(), "intake already runs");
        let from_env: Vec<String> = std::env::var("INTAKE_WRAP")
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_owned)
            .collect();
        let wrap = if wrap.is_empty() { &from_env } else { wrap };
        let vars: Vec<(&str, String)> = read_buffer
            .map(|bytes| ("READ_BUFFER_BYTES", bytes.to_string()))
            .into_iter()
            .collect();
        let log = self.work.join("intake.log");
        self.intake = Some(servers::start_intake(&self.bin, &self.addr, &vars, wrap, &log).await);
    }

    fn stop_intake(&mut self) {
        if let Some(intake) = self.intake.take() {
            intake.stop();
        }
    }

    fn intake(&self) -> &Server {
        self.intake.as_ref().expect("intake runs")
    }

    /// Deletes what the bucket holds between cases, so the disk does not
    /// fill.
    fn empty_bucket(&self) {
        let dir = self.s3_root.join(&self.bucket);
        for entry in std::fs::read_dir(&dir)
            .expect("the bucket's folder")
            .flatten()
        {
            let path = entry.path();
            let _ = if path.is_dir() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
        }
    }

    /// One untimed run (to warm a server, or to load it for its peak RSS).
    async fn once(&self, case: &str, count: usize, mib: usize) -> String {
        format!("{:.3}", cases::timed(case, count, mib, &self.to).await)
    }

    /// The median seconds of REPEAT runs of `case` with its direct cases
    /// sent to `s3_endpoint`, the bucket emptied after each. Every run must
    /// succeed: a failed one ends the bench rather than leave the median to
    /// the others.
    async fn median(&self, case: &str, count: usize, mib: usize, s3_endpoint: &str) -> String {
        let to = Target {
            s3_endpoint: s3_endpoint.to_owned(),
            intake_url: self.to.intake_url.clone(),
            intake_key: self.to.intake_key.clone(),
            part: self.to.part,
        };
        let mut times = Vec::with_capacity(self.repeat);
        for _ in 0..self.repeat {
            times.push(cases::timed(case, count, mib, &to).await);
            self.empty_bucket();
        }
        format!("{:.3}", stats::median(&times))
    }

    /// The median of `case` against the S3 server itself.
    async fn median_direct(&self, case: &str, count: usize, mib: usize) -> String {
        let endpoint = self.to.s3_endpoint.clone();
        self.median(case, count, mib, &endpoint).await
    }

    /// A bare relay (`examples/<name>.rs`) on a free port, with `args`
    /// after its address; its base URL and the process.
    async fn start_relay(&self, name: &str, args: &[&str]) -> (String, Server) {
        let port = servers::free_port();
        let url = format!("http://127.0.0.1:{port}");
        let mut command = Command::new(servers::sibling(name));
        command.arg(format!("127.0.0.1:{port}")).args(args);
        let log = self.work.join("relay.log");
        let relay = Server::start(
            command,
            &log,
            Ready::Answers(format!("{url}/")),
            Duration::from_secs(10),
        )
        .await;
        (url, relay)
    }
}

/// Creates the bench's account (enterprise, limits lifted so that only the
/// upload path is measured) through intake's admin API; its API key.
async fn bench_key(intake_url: &str) -> String {
    let limits = serde_json::json!({"concurrent_uploads": 64, "batch_size": 64,
        "requests_per_minute": 100000, "storage_bytes": null});
    Admin::new(intake_url)
        .key("bench@example.com", "enterprise", Some(limits))
        .await
}

/// The relay floor (`examples/relay_floor.rs`) over 2 GiB read `read_kib`
/// KiB at a time: its relay's CPU seconds per GiB and SHA-256's alone.
fn relay_floor(read_kib: usize) -> (String, String) {
    let out = Command::new(servers::sibling("relay_floor"))
        .args(["2", &read_kib.to_string()])
        .stderr(Stdio::inherit())
        .output()
        .expect("run relay_floor");
    assert!(out.status.success(), "relay_floor failed");
    let line = String::from_utf8_lossy(&out.stdout).into_owned();
    (
        field(&line, "relay_cpu_s_per_gib"),
        field(&line, "sha256_cpu_s_per_gib"),
    )
}

/// Runs the cases CASES names and prints their lines.
pub async fn all(part: usize) {
    let cases = std::env::var("CASES").unwrap_or_else(|_| "all".into());
    let repeat: usize = std::env::var("REPEAT").map_or(3, |r| r.parse().expect("REPEAT"));
    assert!(repeat > 0, "REPEAT must be at least 1");
    let bucket = crate::bench_bucket().await;
    let addr = format!("127.0.0.1:{}", servers::free_port());
    let mut b = Bench {
        bin: env("INTAKE_BIN"),
        work: PathBuf::from(env("BENCH_WORK")),
        s3_root: PathBuf::from(env("BENCH_S3_ROOT")),
        bucket,
        repeat,
        part,
        to: Target {
            intake_url: format!("http://{addr}"),
            intake_key: String::new(),
            s3_endpoint: env("S3_ENDPOINT"),
            part,
        },
        addr,
        intake: None,
    };
    b.start_intake(None, &[]).await;
    b.to.intake_key = bench_key(&b.to.intake_url).await;
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let shared = format!("{cores} cores shared by client, intake and s3s-fs");
    match cases.as_str() {
        "profile" => profile(&mut b).await,
        "batch" => {
            let batch = Batch::measure(&b).await;
            println!("\ncase                                   seconds    MiB/s");
            println!("{}\n", batch.rows());
            println!("{}", batch.summary());
            println!("(median of {repeat} runs; {shared})");
        }
        "stream" | "tus" | "all" => streams(&mut b, &cases, &shared).await,
        other => panic!("unknown CASES {other} (all, stream, batch, tus, profile)"),
    }
    b.stop_intake();
}

/// The batch of 50 × 1 MiB beside 50 direct PUTs.
struct Batch {
    direct_puts: String,
    intake_batch: String,
}

impl Batch {
    async fn measure(b: &Bench) -> Batch {
        Batch {
            direct_puts: b.median_direct("direct-puts", 50, 1).await,
            intake_batch: b.median_direct("intake-batch", 50, 1).await,
        }
    }

    fn rows(&self) -> String {
        [
            row("direct S3 50 x 1 MiB PUTs", &self.direct_puts, 50, None),
            row("intake batch 50 x 1 MiB", &self.intake_batch, 50, None),
        ]
        .join("\n")
    }

    fn summary(&self) -> String {
        format!(
            "intake / direct, batch 50 x 1 MiB:     {}   goal >= 0.80",
            ratio(&self.direct_puts, &self.intake_batch)
        )
    }
}

/// One 100 MiB file: intake beside a direct single PUT and the same PUT
/// through a bare relay, and intake's CPU per GiB beside the floor's.
struct Stream {
    direct_put: String,
    relay_put: String,
    intake_one: String,
    cpu_per_gib: String,
    cpu_per_gib_1m: String,
    floor_64: String,
    floor_1m: String,
    floor_sha: String,
}

impl Stream {
    fn summary(&self) -> String {
        format!(
            "intake / direct single PUT (100 MiB):  {}   goal >= 0.90
  floor, a bare relay (receive + SHA-256 + one PUT) / direct: {}
intake CPU seconds per GiB streamed:   {}   goal <= 1
  the same with 1 MiB reads (READ_BUFFER_BYTES={BIG_READS}): {}
  floor, receive + SHA-256 + send only: {} (64 KiB reads), {} (1 MiB reads); SHA-256 alone {}",
            ratio(&self.direct_put, &self.intake_one),
            ratio(&self.direct_put, &self.relay_put),
            self.cpu_per_gib,
            self.cpu_per_gib_1m,
            self.floor_64,
            self.floor_1m,
            self.floor_sha,
        )
    }
}

/// The cases of `all`, `stream` and `tus`, in the order (and on the server
/// processes) the bench has always run them, so their figures compare with
/// earlier runs.
async fn streams(b: &mut Bench, cases: &str, shared: &str) {
    let all = cases == "all";
    let stream_cases = all || cases == "stream";
    let repeat = b.repeat;
    // 1. One 100 MiB file: direct multipart, direct PUT, intake (with its CPU).
    let direct_mp = if all {
        b.median_direct("direct-multipart", 1, 100).await
    } else {
        String::new()
    };
    let (mut direct_put, mut relay_put) = (String::new(), String::new());
    if stream_cases {
        direct_put = b.median_direct("direct-put", 1, 100).await;
        // The same PUT through a relay that only receives, hashes and sends on.
        let (relay_url, relay) = b.start_relay("put_relay", &[]).await;
        relay_put = b.median("direct-put", 1, 100, &relay_url).await;
        relay.stop();
    }
    let t0 = b.intake().cpu_ticks();
    let intake_one = b.median_direct("intake", 1, 100).await;
    let t1 = b.intake().cpu_ticks();
    let mut stream = Stream {
        direct_put,
        relay_put,
        cpu_per_gib: per_gib(t0, t1, repeat * 100),
        intake_one,
        cpu_per_gib_1m: String::new(),
        floor_64: String::new(),
        floor_1m: String::new(),
        floor_sha: String::new(),
    };
    let mut rss10_1m = String::new();
    if stream_cases {
        // The same uploads on a server reading 1 MiB at a time
        // (READ_BUFFER_BYTES): less CPU per byte, more memory per upload.
        b.stop_intake();
        b.empty_bucket();
        b.start_intake(Some(BIG_READS), &[]).await;
        b.once("intake", 1, 1).await;
        b.empty_bucket();
        let t0 = b.intake().cpu_ticks();
        b.median_direct("intake", 1, 100).await;
        let t1 = b.intake().cpu_ticks();
        stream.cpu_per_gib_1m = per_gib(t0, t1, repeat * 100);
        if all {
            b.stop_intake();
            b.start_intake(Some(BIG_READS), &[]).await;
            b.once("intake-concurrent", 10, 20).await;
            rss10_1m = b.intake().peak_rss_mib();
            b.empty_bucket();
        }
        // Back on the default buffer, warmed as the server before it was.
        b.stop_intake();
        b.start_intake(None, &[]).await;
        b.once("intake", 1, 100).await;
        b.empty_bucket();
        // The least any server spends per GiB that receives, hashes and
        // sends on (examples/relay_floor.rs), on this machine, now.
        (stream.floor_64, stream.floor_sha) = relay_floor(64);
        stream.floor_1m = relay_floor(1024).0;
    }
    if cases == "stream" {
        println!("\ncase                                   seconds    MiB/s");
        println!(
            "{}",
            row(
                "direct S3 single PUT, 100 MiB",
                &stream.direct_put,
                100,
                None
            )
        );
        println!(
            "{}",
            row(
                "same PUT through a bare relay",
                &stream.relay_put,
                100,
                None
            )
        );
        println!(
            "{}\n",
            row(
                "intake /upload/stream, 100 MiB",
                &stream.intake_one,
                100,
                None
            )
        );
        println!("{}", stream.summary());
        println!("(median of {repeat} runs; {shared})");
        return;
    }

    let (mut batch, mut c20, mut rss20, mut c10, mut rss10) = Default::default();
    if all {
        // 2. Batch of 50 x 1 MiB vs 50 direct PUTs.
        batch = Some(Batch::measure(b).await);
        b.stop_intake();
        // 3. Peak RSS under concurrency, each on a fresh process.
        b.start_intake(None, &[]).await;
        c20 = b.once("intake-concurrent", 20, 100).await;
        rss20 = b.intake().peak_rss_mib();
        b.stop_intake();
        b.empty_bucket();
        b.start_intake(None, &[]).await;
        c10 = b.once("intake-concurrent", 10, 20).await;
        rss10 = b.intake().peak_rss_mib();
    }
    b.stop_intake();
    b.empty_bucket();

    // 4. The tus reference server and intake's /upload/tus, with the same
    // client and the same file (an MP4 header, so that intake accepts it,
    // then random bytes).
    let tus_file = b.work.join("clip.bin");
    std::fs::write(&tus_file, Kind::MP4.random(100 * MIB)).expect("write the tus file");
    let reference = tus::Reference::measure(&tus::Setup {
        file: &tus_file,
        s3_endpoint: &b.to.s3_endpoint,
        bucket: &b.bucket,
        part: b.part,
        work: &b.work,
    })
    .await;
    b.start_intake(None, &[]).await;
    b.once("intake", 1, 100).await;
    let rss_single = b.intake().peak_rss_mib();
    // A build without /upload/tus (an older one, through INTAKE_BIN) gets n/a.
    let tus_status = reqwest::Client::new()
        .request(
            reqwest::Method::OPTIONS,
            format!("{}/upload/tus", b.to.intake_url),
        )
        .send()
        .await
        .expect("OPTIONS /upload/tus")
        .status()
        .as_u16();
    b.stop_intake();
    b.empty_bucket();

    let tus = Tus {
        intake: if tus_status == 204 || tus_status == 200 {
            Some([
                intake_tus(b, &tus_file, 1, 100).await,
                intake_tus(b, &tus_file, 10, 20).await,
            ])
        } else {
            None
        },
        relay: [
            relay_tus(b, &tus_file, 1, 100).await,
            relay_tus(b, &tus_file, 10, 20).await,
        ],
        reference,
        intake_one: stream.intake_one.clone(),
    };
    let part_mib = b.part / MIB;
    let r = &tus.reference;
    if cases == "tus" {
        println!("\ncase                                   seconds    MiB/s   peak RSS MiB");
        println!(
            "{}",
            row(
                "intake /upload/stream, 100 MiB",
                &stream.intake_one,
                100,
                Some(&rss_single)
            )
        );
        println!(
            "{}",
            row("tus, 100 MiB", &r.single.secs, 100, Some(&r.single.rss))
        );
        println!(
            "{}",
            row(
                "tus 10 x 20 MiB concurrent",
                &r.c10.secs,
                200,
                Some(&r.c10.rss)
            )
        );
        println!("{}", tus.summary());
        println!(
            "(median of {repeat} runs for /upload/stream, one run for each tus case; part size {part_mib} MiB; {shared})"
        );
        return;
    }
    let batch = batch.expect("the batch ran");
    println!("\ncase                                   seconds    MiB/s   peak RSS MiB");
    for line in [
        row("direct S3 multipart, 100 MiB", &direct_mp, 100, None),
        row(
            "direct S3 single PUT, 100 MiB",
            &stream.direct_put,
            100,
            None,
        ),
        row(
            "same PUT through a bare relay",
            &stream.relay_put,
            100,
            None,
        ),
        row(
            "intake /upload/stream, 100 MiB",
            &stream.intake_one,
            100,
            Some(&rss_single),
        ),
        row("tus, 100 MiB", &r.single.secs, 100, Some(&r.single.rss)),
        row("intake 20 x 100 MiB concurrent", &c20, 2000, Some(&rss20)),
        row("intake 10 x 20 MiB concurrent", &c10, 200, Some(&rss10)),
        row(
            "tus 10 x 20 MiB concurrent",
            &r.c10.secs,
            200,
            Some(&r.c10.rss),
        ),
        batch.rows(),
    ] {
        println!("{line}");
    }
    println!();
    println!(
        "intake / direct multipart (100 MiB):   {}   goal >= 0.90",
        ratio(&direct_mp, &stream.intake_one)
    );
    println!("{}", stream.summary());
    println!(
        "peak RSS, 20 x 100 MiB:                {rss20} MiB   goal <= 64 MiB (32 + 20 x 1 MiB of chunks: one PUT each, no part)"
    );
    println!("peak RSS, 10 x 20 MiB:                 {rss10} MiB   goal <= 64 MiB");
    println!("  the same with 1 MiB reads (READ_BUFFER_BYTES={BIG_READS}): {rss10_1m} MiB");
    println!(
        "intake / tus throughput, 100 MiB:      {}   goal >= 2",
        ratio(&r.single.secs, &stream.intake_one)
    );
    println!(
        "intake / tus throughput, 10 x 20 MiB:  {}   goal >= 3",
        ratio(&r.c10.secs, &c10)
    );
    println!("{}", batch.summary());
    println!("{}", tus.summary());
    println!("(median of {repeat} runs for single cases; part size {part_mib} MiB; {shared})");
}

/// Seconds, peak RSS (intake only) and server CPU seconds of one tus load.
#[derive(Clone)]
struct TusRun {
    secs: String,
    rss: String,
    cpu: String,
}

/// intake's tus (none for a build without it) and the bare tus relay, each
/// for one 100 MiB upload and for 10 × 20 MiB, beside the reference.
struct Tus {
    intake: Option<[TusRun; 2]>,
    relay: [TusRun; 2],
    reference: tus::Reference,
    intake_one: String,
}

impl Tus {
    fn summary(&self) -> String {
        let na = || TusRun {
            secs: "n/a".into(),
            rss: "n/a".into(),
            cpu: "n/a".into(),
        };
        let [is, ic] = self.intake.clone().unwrap_or_else(|| [na(), na()]);
        let [rs, rc] = &self.relay;
        let r = &self.reference;
        [
            row("intake /upload/tus, 100 MiB", &is.secs, 100, Some(&is.rss)),
            row(
                "intake tus 10 x 20 MiB concurrent",
                &ic.secs,
                200,
                Some(&ic.rss),
            ),
            row("bare tus relay, 100 MiB", &rs.secs, 100, None),
            row("bare tus relay 10 x 20 MiB concurrent", &rc.secs, 200, None),
            String::new(),
            format!(
                "intake-tus / tus-reference throughput, 100 MiB:     {}   goal >= 2\n\
                 intake-tus / tus-reference throughput, 10 x 20 MiB: {}   goal >= 2\n\
                 intake-tus / tus-reference peak RSS, 100 MiB:       {}   goal < 0.5\n\
                 intake-tus / tus-reference peak RSS, 10 x 20 MiB:   {}   goal < 0.5",
                ratio(&r.single.secs, &is.secs),
                ratio(&r.c10.secs, &ic.secs),
                ratio(&is.rss, &r.single.rss),
                ratio(&ic.rss, &r.c10.rss),
            ),
            format!(
                "intake-tus / intake-stream throughput, 100 MiB:     {}",
                ratio(&self.intake_one, &is.secs)
            ),
            "  floor, a bare tus relay (receive + SHA-256 + one part per PATCH) / tus reference:"
                .into(),
            format!(
                "    100 MiB: {}   10 x 20 MiB: {}",
                ratio(&r.single.secs, &rs.secs),
                ratio(&r.c10.secs, &rc.secs)
            ),
            "  server CPU seconds, intake-tus / bare tus relay:".into(),
            format!(
                "    100 MiB: {} / {}   10 x 20 MiB: {} / {}",
                is.cpu, rs.cpu, ic.cpu, rc.cpu
            ),
        ]
        .join("\n")
    }
}

/// Removes intake's tus bench files (rows and objects).
async fn drop_tus_files(b: &Bench, db: &mut sqlx::PgConnection) {
    sqlx::query("DELETE FROM files WHERE filename LIKE 'bench-%.bin'")
        .execute(db)
        .await
        .expect("delete the bench files");
    b.empty_bucket();
}

/// On a fresh intake, `count` concurrent tus uploads of `mib` MiB once to
/// warm it, then timed. Every upload must have become a file of the full
/// size.
async fn intake_tus(b: &mut Bench, file: &Path, count: usize, mib: usize) -> TusRun {
    let mut db = sqlx::PgConnection::connect(&env("DATABASE_URL"))
        .await
        .expect("connect to the bench database");
    let url = format!("{}/upload/tus", b.to.intake_url);
    let auth = format!("Bearer {}", b.to.intake_key);
    b.start_intake(None, &[]).await;
    tus::load(&url, file, count, mib, b.part, Some(&auth));
    drop_tus_files(b, &mut db).await;
    b.intake().reset_peak_rss();
    let t0 = b.intake().cpu_ticks();
    let (secs, _) = tus::load(&url, file, count, mib, b.part, Some(&auth));
    let rss = b.intake().peak_rss_mib();
    let cpu = b.intake().cpu_seconds_since(t0);
    b.stop_intake();
    let files: i64 = sqlx::query_scalar(
        "SELECT count(*) FROM files
         WHERE filename LIKE 'bench-%.bin' AND size = $1 AND sha256 IS NOT NULL",
    )
    .bind((mib * MIB) as i64)
    .fetch_one(&mut db)
    .await
    .expect("count the bench files");
    assert_eq!(
        files, count as i64,
        "intake tus {count} x {mib} MiB: {files} files recorded, not {count}"
    );
    drop_tus_files(b, &mut db).await;
    TusRun {
        secs: format!("{secs:.3}"),
        rss,
        cpu,
    }
}

/// The same client and file against a bare tus relay (receive, SHA-256,
/// one S3 part per PATCH, complete: examples/tus_relay.rs), warmed and
/// timed alike. Every upload must have become an object of the full size.
async fn relay_tus(b: &Bench, file: &Path, count: usize, mib: usize) -> TusRun {
    let (url, relay) = b.start_relay("tus_relay", &[&b.bucket]).await;
    let url = format!("{url}/files");
    tus::load(&url, file, count, mib, b.part, None);
    b.empty_bucket();
    let t0 = relay.cpu_ticks();
    let (secs, _) = tus::load(&url, file, count, mib, b.part, None);
    let cpu = relay.cpu_seconds_since(t0);
    relay.stop();
    let full = (mib * MIB) as u64;
    let objects = std::fs::read_dir(b.s3_root.join(&b.bucket))
        .expect("the bucket's folder")
        .flatten()
        .filter(|e| e.metadata().is_ok_and(|m| m.is_file() && m.len() == full))
        .count();
    assert_eq!(
        objects, count,
        "bare tus relay {count} x {mib} MiB: {objects} objects of the full size, not {count}"
    );
    b.empty_bucket();
    TusRun {
        secs: format!("{secs:.3}"),
        rss: String::new(),
        cpu,
    }
}

/// intake under callgrind for one upload of PROFILE_MIB MiB: instruction
/// counts repeat from run to run whatever else the machine is doing.
async fn profile(b: &mut Bench) {
    let mib: usize = std::env::var("PROFILE_MIB").map_or(100, |m| m.parse().expect("PROFILE_MIB"));
    b.stop_intake();
    let out = b.work.join("callgrind.out");
    let wrap = [
        "valgrind".to_owned(),
        "--tool=callgrind".to_owned(),
        format!("--callgrind-out-file={}", out.display()),
    ];
    b.start_intake(None, &wrap).await;
    b.once("intake", 1, 1).await; // warm up: connections, first statements
    let pid = b.intake().pid().to_string();
    let control = |flag: &str| {
        let _ = Command::new("callgrind_control")
            .args([flag, &pid])
            .output();
    };
    control("-z");
    b.once("intake", 1, mib).await;
    // callgrind_control returns once the dump is written.
    control("-d");
    b.stop_intake();
    // The dump taken right after the upload (the first numbered one).
    let mut dumps: Vec<PathBuf> = std::fs::read_dir(&b.work)
        .expect("the work folder")
        .flatten()
        .map(|e| e.path())
        .filter(|p| {
            p.file_name()
                .and_then(|n| n.to_str())
                .is_some_and(|n| n.starts_with("callgrind.out."))
        })
        .collect();
    dumps.sort();
    let dump = dumps.first().expect("a callgrind dump");
    let annotate = |args: &[&str]| {
        let out = Command::new("callgrind_annotate")
            .args(args)
            .arg(dump)
            .output()
            .expect("run callgrind_annotate");
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let total: u64 = annotate(&[])
        .lines()
        .find(|l| l.contains("PROGRAM TOTALS"))
        .and_then(|l| l.split_whitespace().next())
        .map(|n| n.replace(',', ""))
        .and_then(|n| n.parse().ok())
        .expect("PROGRAM TOTALS in callgrind_annotate's output");
    println!();
    println!(
        "intake instructions for one {mib} MiB upload: {total} ({:.1} M per MiB)",
        total as f64 / mib as f64 / 1e6
    );
    let by_function = annotate(&["--inclusive=no"]);
    let from_ir = by_function
        .lines()
        .skip_while(|l| !l.starts_with("Ir"))
        .take(30);
    for line in from_ir {
        println!("{line}");
    }
}
