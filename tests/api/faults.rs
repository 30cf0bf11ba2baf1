//! The fault harness: intake as real processes (so `kill -9` is real), a
//! round-robin load balancer in front of them that can also cut or slow
//! connections, and a private S3 server and a private Postgres cluster
//! that a test stops and restarts without touching the shared ones. All on
//! 127.0.0.1, every wait bounded.

#![allow(dead_code)]

use std::{
    collections::HashMap,
    path::{Path, PathBuf},
    process::Stdio,
    sync::{
        Arc,
        atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use serde_json::Value;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    process::{Child, Command},
    sync::Notify,
};

use crate::helpers::{S3_BUCKET, env, s3_client_at, tempfile_dir::TempDir};

/// A free TCP port on 127.0.0.1 (bound, then released for the child).
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Polls `condition` every 50 ms until it holds or `bound` passes; returns
/// whether it held.
pub async fn within<F, Fut>(bound: Duration, mut condition: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + bound;
    loop {
        if condition().await {
            return true;
        }
        if Instant::now() >= deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
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
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            let up = client
                .get(&health)
                .timeout(Duration::from_secs(2))
                .send()
                .await
                .is_ok_and(|r| r.status().is_success());
            if up {
                return;
            }
            if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                panic!("intake exited with {status}:\n{}", tail(&self.log));
            }
            assert!(
                Instant::now() < deadline,
                "intake did not become healthy:\n{}",
                tail(&self.log)
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// The process id, while it runs.
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().and_then(Child::id)
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

    /// Resident memory of the process in KiB (from /proc).
    pub fn rss_kib(&self) -> Option<u64> {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()?)).ok()?;
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmRSS:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
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

struct Switches {
    backends: Vec<String>,
    next: AtomicUsize,
    down: AtomicBool,
    cut: Notify,
    /// Bytes per second each connection may carry each way; 0 = unbounded.
    rate: AtomicU64,
    /// Connections handed to each backend.
    served: Vec<AtomicU64>,
}

/// A loopback TCP load balancer: each new connection goes to the next
/// backend in turn (skipping backends that refuse it, as a load balancer's
/// health check would), and a test can cut every connection or slow them.
///
/// Our own rather than a crate: it is forty lines over tokio, and the
/// switches (cut, throttle, count per backend) are what the tests need.
pub struct Balancer {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    switches: Arc<Switches>,
    task: tokio::task::JoinHandle<()>,
}

impl Balancer {
    /// Balances over `backends` (`http://host:port` or `host:port`).
    pub async fn start(backends: &[&str]) -> Balancer {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let switches = Arc::new(Switches {
            backends: backends
                .iter()
                .map(|b| b.trim_start_matches("http://").to_owned())
                .collect(),
            next: AtomicUsize::new(0),
            down: AtomicBool::new(false),
            cut: Notify::new(),
            rate: AtomicU64::new(0),
            served: backends.iter().map(|_| AtomicU64::new(0)).collect(),
        });
        let s = switches.clone();
        let task = tokio::spawn(async move {
            while let Ok((client, _)) = listener.accept().await {
                if s.down.load(Ordering::SeqCst) {
                    continue;
                }
                tokio::spawn(relay(client, s.clone()));
            }
        });
        Balancer {
            addr,
            switches,
            task,
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.switches.down.store(true, Ordering::SeqCst);
        self.switches.cut.notify_waiters();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.switches.down.store(false, Ordering::SeqCst);
    }

    /// Holds each connection to `bytes_per_sec` each way (0: unbounded).
    pub fn throttle(&self, bytes_per_sec: u64) {
        self.switches.rate.store(bytes_per_sec, Ordering::SeqCst);
    }

    /// Connections handed to each backend so far.
    pub fn served(&self) -> Vec<u64> {
        self.switches
            .served
            .iter()
            .map(|n| n.load(Ordering::SeqCst))
            .collect()
    }
}

impl Drop for Balancer {
    fn drop(&mut self) {
        self.task.abort();
        self.switches.cut.notify_waiters();
    }
}

async fn relay(mut client: TcpStream, s: Arc<Switches>) {
    let n = s.backends.len();
    let first = s.next.fetch_add(1, Ordering::SeqCst);
    let mut server = None;
    for i in 0..n {
        let at = (first + i) % n;
        let connect = TcpStream::connect(&s.backends[at]);
        if let Ok(Ok(stream)) = tokio::time::timeout(Duration::from_secs(1), connect).await {
            s.served[at].fetch_add(1, Ordering::SeqCst);
            server = Some(stream);
            break;
        }
    }
    let Some(mut server) = server else {
        return;
    };
    let (mut cr, mut cw) = client.split();
    let (mut sr, mut sw) = server.split();
    let cut = s.cut.notified();
    tokio::pin!(cut);
    cut.as_mut().enable();
    if s.down.load(Ordering::SeqCst) {
        return;
    }
    tokio::select! {
        _ = async { tokio::join!(pump(&mut cr, &mut sw, &s.rate), pump(&mut sr, &mut cw, &s.rate)) } => {}
        () = cut => {}
    }
}

/// Copies one direction until its end, at most `rate` bytes a second, then
/// half-closes the other side.
async fn pump(
    from: &mut (impl AsyncReadExt + Unpin),
    to: &mut (impl AsyncWriteExt + Unpin),
    rate: &AtomicU64,
) {
    let mut buf = vec![0u8; 16 * 1024];
    loop {
        let limit = rate.load(Ordering::SeqCst);
        // A slow link carries a tenth of its rate every 100 ms.
        let chunk = if limit == 0 {
            buf.len()
        } else {
            (limit as usize / 10).clamp(1, buf.len())
        };
        let n = match from.read(&mut buf[..chunk]).await {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        if to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        if limit != 0 {
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let _ = to.shutdown().await;
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
    pub async fn start() -> S3Server {
        let port = free_port();
        let mut server = S3Server {
            endpoint: format!("http://127.0.0.1:{port}"),
            port,
            root: TempDir::new(),
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
    dir: PathBuf,
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
        let dir = std::env::temp_dir().join(format!("intake-pg-{}", uuid::Uuid::new_v4().simple()));
        std::fs::create_dir_all(&dir).unwrap();
        if running_as_root() {
            let ok = std::process::Command::new("chown")
                .args(["postgres:postgres"])
                .arg(&dir)
                .status()
                .is_ok_and(|s| s.success());
            assert!(ok, "chown the cluster folder to postgres");
        }
        let d = dir.to_str().unwrap().to_owned();
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
        let d = self.dir.to_str().unwrap();
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
        let d = self.dir.to_str().unwrap();
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
                self.dir.to_str().unwrap(),
                "-m",
                "immediate",
                "-w",
                "stop",
            ])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .status();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}
