//! The processes every bench starts, stops and measures: intake (as many
//! instances as a bench compares, each on its own port and settings), the
//! relays, the tus reference server; each stopped with SIGTERM and waited
//! for, or on drop when a bench fails half-way, so no run leaves a server
//! behind.

use std::{
    collections::HashSet,
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
        format!("{:.1}", self.status_kib("VmHWM") / 1024.0)
    }

    /// The server's resident memory now (VmRSS) in MiB.
    pub fn rss_mib(&self) -> f64 {
        self.status_kib("VmRSS") / 1024.0
    }

    /// A field of the server's `/proc` status, in KiB.
    fn status_kib(&self, field: &str) -> f64 {
        let status = std::fs::read_to_string(format!("/proc/{}/status", self.pid()))
            .expect("the server's /proc status");
        status
            .lines()
            .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
            .unwrap_or_else(|| panic!("{field} in /proc status"))
    }

    /// The client connections the server holds on `port`: its sockets
    /// (from its file descriptors in `/proc`) that the kernel's TCP table
    /// lists on that local port, listeners aside. Its database and storage
    /// connections are on other ports.
    pub fn connections(&self, port: u16) -> usize {
        let inodes: HashSet<String> = std::fs::read_dir(format!("/proc/{}/fd", self.pid()))
            .expect("the server's /proc fd folder")
            .flatten()
            // A descriptor closed between the listing and the read is no socket.
            .filter_map(|fd| std::fs::read_link(fd.path()).ok())
            .filter_map(|target| {
                let target = target.to_string_lossy();
                Some(
                    target
                        .strip_prefix("socket:[")?
                        .strip_suffix(']')?
                        .to_owned(),
                )
            })
            .collect();
        let local_port = format!(":{port:04X}");
        ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|table| std::fs::read_to_string(table).ok())
            .map(|table| {
                table
                    .lines()
                    .skip(1)
                    .filter(|line| {
                        // sl, local address, remote address, state, …, inode.
                        let fields: Vec<&str> = line.split_whitespace().collect();
                        fields.len() > 9
                            && fields[1].ends_with(&local_port)
                            && fields[3] != "0A"
                            && inodes.contains(fields[9])
                    })
                    .count()
            })
            .sum()
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
            if child.try_wait().is_ok_and(|status| status.is_some()) {
                return;
            }
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

/// Starts `bin serve` listening on `addr` (`127.0.0.1:<port>`), with
/// `vars` beside the environment it inherits, under `wrap` (a command and
/// its arguments, e.g. a profiler) when that is not empty, its output in
/// `log`, and waits up to a minute for its `/healthz`.
pub async fn start_intake(
    bin: &str,
    addr: &str,
    vars: &[(&str, String)],
    wrap: &[String],
    log: &Path,
) -> Server {
    let mut command = match wrap.split_first() {
        Some((program, args)) => {
            let mut c = Command::new(program);
            c.args(args).arg(bin);
            c
        }
        None => Command::new(bin),
    };
    command
        .arg("serve")
        .env("BIND_ADDR", addr)
        .envs(vars.iter().cloned());
    let health = Ready::Healthy(format!("http://{addr}/healthz"));
    Server::start(command, log, health, Duration::from_secs(60)).await
}

/// The JSON line a tool printed, once it has exited with success; `what`
/// names the tool in the error that ends the bench otherwise.
pub fn json_report(out: &std::process::Output, what: &str) -> serde_json::Value {
    assert!(out.status.success(), "{what} failed");
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("{what}'s JSON line: {e}"))
}

/// The strings of the list `key` of a tool's JSON report.
pub fn strings(report: &serde_json::Value, key: &str) -> Vec<String> {
    let list = report[key]
        .as_array()
        .unwrap_or_else(|| panic!("no list {key} in {report}"));
    list.iter()
        .map(|v| v.as_str().expect("a string").to_owned())
        .collect()
}

/// The value of `name=value` in a tool's output line.
pub fn field(line: &str, name: &str) -> String {
    line.split_whitespace()
        .find_map(|w| w.strip_prefix(name)?.strip_prefix('='))
        .unwrap_or_else(|| panic!("no {name}= in {line:?}"))
        .to_owned()
}
