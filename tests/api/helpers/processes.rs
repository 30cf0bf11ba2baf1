//! Processes a test starts, kills and restarts: `intake serve` (so that
//! `kill -9` is real), one-off `intake` commands, a private S3 server and a
//! private Postgres cluster, so that a test stops and restarts them
//! without touching the shared ones. All on 127.0.0.1, every wait bounded.
//!
//! A test drives them through the handles here; what runs in front of them
//! (a balancer) is [`super::relay::Relay`], and several instances of one
//! deployment together are [`super::cluster::Cluster`].

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use serde_json::Value;
use tempfile::TempDir;
use tokio::{
    net::TcpStream,
    process::{Child, Command},
};

use super::{
    app::env,
    bucket::{S3_BUCKET, s3_client_at},
    poll::{poll, within},
};

/// A free TCP port on 127.0.0.1 (bound, then released for the child).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

async fn port_open(port: u16) -> bool {
    TcpStream::connect(("127.0.0.1", port)).await.is_ok()
}

fn tail(path: &Path) -> String {
    let bytes = std::fs::read(path).unwrap_or_default();
    let start = bytes.len().saturating_sub(4000);
    String::from_utf8_lossy(&bytes[start..]).into_owned()
}

/// One `intake serve` process.
pub struct Instance {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// Its port, the same across restarts.
    pub port: u16,
    vars: HashMap<String, String>,
    child: Option<Child>,
    log: PathBuf,
}

impl Instance {
    /// Starts `intake serve` with `vars` (its whole environment) on a free
    /// port, its log in `dir`, and waits (up to 60 s) for `/healthz`.
    pub async fn start(vars: &HashMap<String, String>, dir: &Path) -> Instance {
        let port = free_port();
        let mut vars = vars.clone();
        vars.insert("BIND_ADDR".into(), format!("127.0.0.1:{port}"));
        vars.insert("PUBLIC_BASE_URL".into(), format!("http://127.0.0.1:{port}"));
        vars.entry("RUST_LOG".into())
            .or_insert_with(|| "warn,intake=info".into());
        let mut instance = Instance {
            addr: format!("http://127.0.0.1:{port}"),
            port,
            vars,
            child: None,
            log: dir.join(format!("intake-{port}.log")),
        };
        instance.restart().await;
        instance
    }

    /// Starts the process again on the same port (after a kill).
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the instance is still running");
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .expect("open the instance log");
        let child = Command::new(env!("CARGO_BIN_EXE_intake"))
            .arg("serve")
            .env_clear()
            .envs(&self.vars)
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .kill_on_drop(true)
            .spawn()
            .expect("spawn intake");
        self.child = Some(child);
        let client = reqwest::Client::new();
        let health = self.url("/healthz");
        let (child, log) = (self.child.as_mut().unwrap(), &self.log);
        let healthy = poll(Duration::from_secs(60), || {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("intake exited with {status}:\n{}", tail(log));
            }
            let check = client.get(&health).timeout(Duration::from_secs(2)).send();
            async move {
                check
                    .await
                    .is_ok_and(|r| r.status().is_success())
                    .then_some(())
            }
        })
        .await;
        assert!(
            healthy.is_some(),
            "intake did not become healthy:\n{}",
            tail(&self.log)
        );
    }

    /// The absolute URL of `path` on this instance.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
    }

    /// Resident memory of the process in KiB (from /proc); the soak reads
    /// it to bound what a long run holds.
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
    }

    /// `kill -9`: the process stops wherever it is, nothing of it cleans up.
    pub async fn kill9(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// Sends SIGTERM (graceful shutdown) and leaves the process running.
    pub fn terminate(&self) {
        let pid = self.pid().expect("the instance runs");
        let status = std::process::Command::new("kill")
            .args(["-TERM", &pid.to_string()])
            .status()
            .expect("run kill");
        assert!(status.success());
    }

    /// Waits up to `bound` for the process to exit; its exit code, or
    /// `None` when it still runs.
    pub async fn exited_within(&mut self, bound: Duration) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = tokio::time::timeout(bound, child.wait()).await.ok()?;
        self.child = None;
        Some(status.ok().and_then(|s| s.code()).unwrap_or(-1))
    }

    /// The end of its log, for failure messages.
    pub fn log_tail(&self) -> String {
        tail(&self.log)
    }
}

/// Runs `intake <args>` once with `vars` (e.g. `admin reap`, `admin
/// reconcile`); its exit code and its stdout parsed as JSON.
pub async fn intake_cli(vars: &HashMap<String, String>, args: &[&str]) -> (i32, Value, String) {
    let out = tokio::time::timeout(
        Duration::from_secs(120),
        Command::new(env!("CARGO_BIN_EXE_intake"))
            .args(args)
            .env_clear()
            .envs(vars)
            .env("RUST_LOG", "warn")
            .stdin(Stdio::null())
            .output(),
    )
    .await
    .expect("intake command within 120 s")
    .expect("run intake");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.code().unwrap_or(-1),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

/// A private s3s-fs (the S3 test server) on a port of its own, that a test
/// stops and starts again on the same port and folder.
pub struct S3Server {
    // Declared first, so that the server stops before its folder goes.
    child: Option<Child>,
    /// `http://127.0.0.1:<port>`.
    pub endpoint: String,
    port: u16,
    root: TempDir,
}

impl S3Server {
    /// Starts a server on a free port with an empty folder and the test
    /// bucket.
    pub async fn start() -> S3Server {
        let port = free_port();
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            root: tempfile::tempdir().expect("a folder for the S3 server"),
            child: None,
        };
        server.restart().await;
        let client = s3_client_at(&server.endpoint).await;
        client
            .create_bucket()
            .bucket(S3_BUCKET)
            .send()
            .await
            .expect("create the bucket");
        server
    }

    /// Starts the server (again) and waits (up to 10 s) for its port.
    pub async fn restart(&mut self) {
        assert!(self.child.is_none(), "the S3 server is still running");
        let exe = std::env::var("S3S_FS").unwrap_or_else(|_| {
            let home = std::env::var("HOME").unwrap_or_default();
            let installed = format!("{home}/.cargo/bin/s3s-fs");
            if Path::new(&installed).exists() {
                installed
            } else {
                "s3s-fs".into()
            }
        });
        let child = Command::new(exe)
            .args(["--host", "127.0.0.1", "--port", &self.port.to_string()])
            .args(["--access-key", &env("TEST_S3_ACCESS_KEY_ID")])
            .args(["--secret-key", &env("TEST_S3_SECRET_ACCESS_KEY")])
            .arg(self.root.path())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()
            .expect("spawn s3s-fs (scripts/test.sh installs it)");
        self.child = Some(child);
        let port = self.port;
        assert!(
            within(Duration::from_secs(10), || port_open(port)).await,
            "s3s-fs did not open its port"
        );
    }

    /// Kills the server outright: connections in flight break, new ones are
    /// refused.
    pub async fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.start_kill();
            let _ = tokio::time::timeout(Duration::from_secs(10), child.wait()).await;
        }
    }

    /// A client of this server with the test credentials.
    pub async fn client(&self) -> aws_sdk_s3::Client {
        s3_client_at(&self.endpoint).await
    }
}

/// A private Postgres cluster on a port of its own, for a test that stops
/// and restarts it (the shared one serves every other test).
pub struct PgServer {
    /// `postgres://postgres@127.0.0.1:<port>/intake`.
    pub url: String,
    port: u16,
    bin: PathBuf,
    // Removed when dropped, after the cluster has stopped.
    dir: TempDir,
}

/// Runs a Postgres program as the postgres user when we are root (Postgres
/// refuses to run as root), bounded in time.
async fn pg_run(program: &Path, args: &[&str]) -> std::process::Output {
    let mut cmd = if running_as_root() {
        let mut c = Command::new("runuser");
        c.args(["-u", "postgres", "--"]).arg(program);
        c
    } else {
        Command::new(program)
    };
    cmd.args(args).stdin(Stdio::null()).kill_on_drop(true);
    tokio::time::timeout(Duration::from_secs(120), cmd.output())
        .await
        .expect("a Postgres program within 120 s")
        .expect("run a Postgres program")
}

fn running_as_root() -> bool {
    std::process::Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|o| o.stdout.starts_with(b"0\n"))
}

impl PgServer {
    /// Initialises and starts a throwaway cluster (durability off, as the
    /// shared test cluster) and creates the database `intake`.
    pub async fn start() -> PgServer {
        let bin = std::fs::read_dir("/usr/lib/postgresql")
            .expect("PostgreSQL is installed (scripts/test.sh installs it)")
            .flatten()
            .map(|e| e.path().join("bin"))
            .filter(|p| p.join("initdb").exists())
            .max_by_key(|p| {
                p.parent()
                    .and_then(|v| v.file_name())
                    .and_then(|v| v.to_str())
                    .and_then(|v| v.parse::<u32>().ok())
                    .unwrap_or(0)
            })
            .expect("an initdb");
        let port = free_port();
        let dir = tempfile::Builder::new()
            .prefix("intake-pg-")
            .tempdir()
            .expect("a folder for the cluster");
        if running_as_root() {
            let ok = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(dir.path())
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster folder to postgres");
        }
        let d = dir.path().to_str().unwrap().to_owned();
        let out = pg_run(
            &bin.join("initdb"),
            &[
                "-D",
                &d,
                "-U",
                "postgres",
                "--auth=trust",
                "--no-locale",
                "-E",
                "UTF8",
            ],
        )
        .await;
        assert!(
            out.status.success(),
            "initdb: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let server = PgServer {
            url: format!("postgres://postgres@127.0.0.1:{port}/intake"),
            port,
            bin,
            dir,
        };
        server.up().await;
        let out = pg_run(
            &server.bin.join("psql"),
            &[
                "-h",
                "127.0.0.1",
                "-p",
                &port.to_string(),
                "-U",
                "postgres",
                "-qc",
                "CREATE DATABASE intake",
            ],
        )
        .await;
        assert!(
            out.status.success(),
            "create database: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        server
    }

    /// Starts the cluster and waits until it accepts connections.
    pub async fn up(&self) {
        let d = self.dir.path().to_str().unwrap();
        let log = format!("{d}/server.log");
        let opts = format!(
            "-p {} -k {d} -c listen_addresses=127.0.0.1 -c fsync=off -c synchronous_commit=off -c full_page_writes=off",
            self.port
        );
        let out = pg_run(
            &self.bin.join("pg_ctl"),
            &["-D", d, "-l", &log, "-w", "-t", "60", "start", "-o", &opts],
        )
        .await;
        assert!(
            out.status.success(),
            "pg_ctl start: {}\n{}",
            String::from_utf8_lossy(&out.stderr),
            tail(Path::new(&log))
        );
    }

    /// Stops the cluster the way a restart does (`-m fast`: sessions are
    /// ended, their connections closed).
    pub async fn down(&self) {
        let d = self.dir.path().to_str().unwrap();
        let out = pg_run(
            &self.bin.join("pg_ctl"),
            &["-D", d, "-m", "fast", "-w", "-t", "60", "stop"],
        )
        .await;
        assert!(
            out.status.success(),
            "pg_ctl stop: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

impl Drop for PgServer {
    fn drop(&mut self) {
        let _ = std::process::Command::new(if running_as_root() { "runuser" } else { "env" })
            .args(if running_as_root() {
                vec!["-u", "postgres", "--"]
            } else {
                vec![]
            })
            .arg(self.bin.join("pg_ctl"))
            .args([
                "-D",
                self.dir.path().to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
    }
}
