//! The processes the upload bench starts, stops and measures: intake
//! (afresh for the cases that need a fresh server, with the read buffer or
//! the wrapper a case asks for), the bare relays, the relay floor, the tus
//! reference server's own script and the tus client.

use std::{
    fs::File,
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use crate::proc;

/// A free TCP port on 127.0.0.1 (bound, then released for the child).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// The path of another bench tool built beside this one (the relays and the
/// floor are examples of the same build).
pub fn sibling(name: &str) -> PathBuf {
    std::env::current_exe()
        .expect("this tool's path")
        .with_file_name(name)
}

/// What a started server must answer before it counts as up.
pub enum Ready {
    /// A 2xx from this URL.
    Healthy(String),
    /// Any HTTP answer from this URL.
    Answers(String),
}

/// A server process of the bench, stopped (SIGTERM, then waited for) by
/// [`Server::stop`] or, when the bench fails half-way, on drop.
pub struct Server {
    child: Option<Child>,
    log: PathBuf,
}

impl Server {
    /// Spawns `command` with its output in `log` and waits up to `bound`
    /// for `ready`; a server that exits or never answers fails the bench
    /// with the end of its log.
    pub async fn start(mut command: Command, log: &Path, ready: Ready, bound: Duration) -> Server {
        let out = File::create(log).expect("create the server log");
        let child = command
            .stdin(Stdio::null())
            .stdout(out.try_clone().expect("log handle"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("spawn {command:?}: {e}"));
        let mut server = Server {
            child: Some(child),
            log: log.to_owned(),
        };
        let http = reqwest::Client::new();
        let deadline = Instant::now() + bound;
        loop {
            let (url, need_success) = match &ready {
                Ready::Healthy(url) => (url, true),
                Ready::Answers(url) => (url, false),
            };
            let answer = http.get(url).timeout(Duration::from_secs(1)).send().await;
            if answer.is_ok_and(|r| !need_success || r.status().is_success()) {
                return server;
            }
            let exited = server
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten());
            if exited.is_some() || Instant::now() >= deadline {
                let log = std::fs::read_to_string(&server.log).unwrap_or_default();
                panic!("{command:?} did not come up ({exited:?}):\n{log}");
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("the server runs").id()
    }

    /// User plus system clock ticks the server has spent so far.
    pub fn cpu_ticks(&self) -> u64 {
        proc::cpu_ticks(&format!("/proc/{}/stat", self.pid()))
    }

    /// CPU seconds the server spent since [`Server::cpu_ticks`] gave `t0`,
    /// to two decimals.
    pub fn cpu_seconds_since(&self, t0: u64) -> String {
        format!(
            "{:.2}",
            (self.cpu_ticks() - t0) as f64 / proc::TICKS_PER_SECOND
        )
    }

    /// The server's peak resident memory (VmHWM) in MiB, to one decimal.
    pub fn peak_rss_mib(&self) -> String {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        let kib: f64 = status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .expect("VmHWM in /proc status");
        format!("{:.1}", kib / 1024.0)
    }

    /// Starts the peak resident memory again from the current one, so the
    /// next peak is that of what follows.
    pub fn reset_peak_rss(&self) {
        std::fs::write(format!("/proc/{}/clear_refs", self.pid()), "5").expect("write clear_refs");
    }

    /// Asks the server to stop (SIGTERM, so intake shuts down as it would in
    /// production and a profiler writes its data) and waits for it.
    pub fn stop(mut self) {
        self.end();
    }

    fn end(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.end();
    }
}

/// The relay floor (`examples/relay_floor.rs`) over 2 GiB read `read_kib`
/// KiB at a time: its relay's CPU seconds per GiB and SHA-256's alone.
pub fn relay_floor(read_kib: usize) -> (String, String) {
    let out = Command::new(sibling("relay_floor"))
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

/// The value of `name=value` in a tool's output line.
pub fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_owned()
}

/// The tus reference server's figures from its own script
/// (`scripts/bench/tus.sh`), over `file`: seconds and peak RSS of one
/// 100 MiB upload and of 10 × 20 MiB.
pub struct TusReference {
    /// Seconds of one 100 MiB upload.
    pub single: String,
    /// The server's peak RSS in MiB during it.
    pub single_rss: String,
    /// Seconds of 10 concurrent 20 MiB uploads.
    pub c10: String,
    /// The server's peak RSS in MiB during them.
    pub c10_rss: String,
}

impl TusReference {
    /// Runs the script against the bench's S3 server and bucket.
    pub fn measure(file: &Path, s3_endpoint: &str, bucket: &str, part: usize) -> TusReference {
        let out = Command::new("scripts/bench/tus.sh")
            .args([
                s3_endpoint,
                &crate::s3::env("S3_ACCESS_KEY_ID"),
                &crate::s3::env("S3_SECRET_ACCESS_KEY"),
                bucket,
                &part.to_string(),
            ])
            .env("TUS_BENCH_FILE", file)
            .stderr(Stdio::inherit())
            .output()
            .expect("run scripts/bench/tus.sh");
        assert!(out.status.success(), "scripts/bench/tus.sh failed");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let line = |case: &str| {
            text.lines()
                .find(|l| l.starts_with(case))
                .unwrap_or_else(|| panic!("no {case:?} line from tus.sh:\n{text}"))
                .to_owned()
        };
        let (single, c10) = (line("tus single"), line("tus 10x20"));
        TusReference {
            single: field(&single, "seconds"),
            single_rss: field(&single, "peak_rss_mib"),
            c10: field(&c10, "seconds"),
            c10_rss: field(&c10, "peak_rss_mib"),
        }
    }
}

/// The bench's tus client (`scripts/bench/tus/client.mjs`): `count`
/// concurrent uploads of the first `mib` MiB of `file`, created at `url`,
/// in PATCHes of `part` bytes; the seconds it reports.
pub fn tus_load(
    url: &str,
    file: &Path,
    count: usize,
    mib: usize,
    part: usize,
    authorization: Option<&str>,
) -> f64 {
    let mut node = Command::new("node");
    node.arg("scripts/bench/tus/client.mjs")
        .arg(url)
        .arg(file)
        .args([
            (mib * crate::cases::MIB).to_string(),
            count.to_string(),
            part.to_string(),
        ])
        .stderr(Stdio::inherit());
    if let Some(auth) = authorization {
        node.env("TUS_AUTHORIZATION", auth);
    }
    let out = node.output().expect("run the tus client");
    assert!(out.status.success(), "the tus client failed");
    let report: serde_json::Value =
        serde_json::from_slice(&out.stdout).expect("the tus client's JSON line");
    report["seconds"]
        .as_f64()
        .expect("seconds in the tus client's line")
}
