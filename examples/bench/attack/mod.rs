//! What one account can make the server hold: each attack of an ordinary
//! account (trickled JSON bodies, downloads never read, AI calls hung up
//! once the provider has them, the presigned abort-and-PUT loop, a sign-up
//! flood, slow streaming uploads, one-byte resumable PATCHes) run against
//! one intake build, with what it cost the server: connections held (its
//! sockets, from `/proc`), its memory, provider calls billed against units
//! counted, bytes left in the bucket, accounts created, storage traffic;
//! and, for the attacks on connections, whether another account is still
//! served meanwhile.
//!
//! Every case starts an intake of its own (a fresh process, so its memory
//! is the attack's), with the settings it names, on the database the
//! script made; the local folder backend, or S3 for the cases about the
//! bucket, part buffers and resumable tails. Each client is a loopback address of its own
//! (127.0.<case>.<role>), so intake counts the attacker and the other
//! account as two addresses, and the admin calls (from 127.0.0.1) as a
//! third. Builds that do not know a
//! setting ignore it; run the same command with INTAKE_BIN set to compare
//! another build.

mod ai;
mod downloads;
mod presign;
mod probe;
mod raw;
mod session;
mod signup;
mod trickle;
mod tus;

use std::{
    collections::BTreeMap,
    net::{IpAddr, Ipv4Addr},
    path::PathBuf,
    sync::atomic::{AtomicUsize, Ordering},
    time::{Duration, Instant},
};

use crate::servers::{self, Ready, Server};

// The settings, from the environment (or the same flags).
#[derive(clap::Args)]
pub struct Settings {
    /// The cases to run, comma-separated: trickle, downloads, ai, presign,
    /// signup, buffers, tus.
    #[arg(
        long,
        env = "ATTACKS",
        default_value = "trickle,downloads,ai,presign,signup,buffers,tus"
    )]
    attacks: String,
    /// Trickled JSON requests opened by the one account; the server runs
    /// with MAX_CONNECTIONS set to this, so that they can fill it.
    #[arg(long, env = "TRICKLE_CONNECTIONS", default_value_t = 1000)]
    trickle_connections: usize,
    /// Seconds between two bytes of a trickled body.
    #[arg(long, env = "TRICKLE_EVERY_SECS", default_value_t = 5)]
    trickle_every_secs: u64,
    /// Seconds each attack on connections lasts.
    #[arg(long, env = "ATTACK_SECS", default_value_t = 30)]
    attack_secs: u64,
    /// Downloads opened and never read.
    #[arg(long, env = "DOWNLOADS", default_value_t = 200)]
    downloads: usize,
    /// Size of the downloaded file, MiB.
    #[arg(long, env = "DOWNLOAD_MIB", default_value_t = 16)]
    download_mib: usize,
    /// RESPONSE_WRITE_TIMEOUT_SECS of the downloads case.
    #[arg(long, env = "WRITE_TIMEOUT_SECS", default_value_t = 5)]
    write_timeout_secs: u64,
    /// Describe requests hung up once the provider has them.
    #[arg(long, env = "AI_ROUNDS", default_value_t = 20)]
    ai_rounds: usize,
    /// Seconds the stand-in provider takes to answer.
    #[arg(long, env = "AI_DELAY_SECS", default_value_t = 2.0)]
    ai_delay_secs: f64,
    /// Rounds of the presigned abort-and-PUT loop.
    #[arg(long, env = "PRESIGN_ROUNDS", default_value_t = 20)]
    presign_rounds: usize,
    /// Bytes PUT in each round, MiB.
    #[arg(long, env = "PRESIGN_MIB", default_value_t = 16)]
    presign_mib: usize,
    /// Storage quota of the presign case's account, MiB.
    #[arg(long, env = "PRESIGN_QUOTA_MIB", default_value_t = 64)]
    presign_quota_mib: u64,
    /// Seconds of the sign-up flood.
    #[arg(long, env = "SIGNUP_SECS", default_value_t = 60)]
    signup_secs: u64,
    /// Sign-ups sent per second.
    #[arg(long, env = "SIGNUPS_PER_SEC", default_value_t = 4)]
    signups_per_sec: u64,
    /// Slow streaming uploads (by FREE accounts, ten each).
    #[arg(long, env = "SLOW_UPLOADS", default_value_t = 40)]
    slow_uploads: usize,
    /// MiB each slow upload sends at once before it trickles.
    #[arg(long, env = "SLOW_UPLOAD_MIB", default_value_t = 6)]
    slow_upload_mib: usize,
    /// UPLOAD_BUFFER_BUDGET_BYTES of the buffers case, MiB.
    #[arg(long, env = "BUFFER_BUDGET_MIB", default_value_t = 64)]
    buffer_budget_mib: u64,
    /// MiB of the resumable upload sent before the one-byte PATCHes.
    #[arg(long, env = "TUS_TAIL_MIB", default_value_t = 6)]
    tus_tail_mib: usize,
    /// One-byte PATCHes sent.
    #[arg(long, env = "TUS_PATCHES", default_value_t = 20)]
    tus_patches: usize,
    /// The intake binary.
    #[arg(long, env = "INTAKE_BIN")]
    intake_bin: String,
    /// A scratch folder (the servers' logs, the local folder backend).
    #[arg(long, env = "BENCH_WORK")]
    work: PathBuf,
}

impl Settings {
    fn attack(&self) -> Duration {
        Duration::from_secs(self.attack_secs)
    }

    fn every(&self) -> Duration {
        Duration::from_secs(self.trickle_every_secs)
    }
}

/// The API key the stand-in provider expects.
const AI_KEY: &str = "bench-ai-key";

/// One case's clients and servers.
pub struct Case<'a> {
    s: &'a Settings,
    /// The case's number, the third byte of its clients' addresses.
    number: u8,
    ai_url: &'a str,
}

impl Case<'_> {
    /// The loopback address of a client of this case: role 2 the attacker,
    /// 3 another account, from 10 on more attackers.
    fn address(&self, role: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(127, 0, self.number, role))
    }

    /// An e-mail address of this case.
    fn email(&self, who: &str) -> String {
        format!("{who}-{}@example.com", self.number)
    }

    /// The attacker, signed up from its address (role 2), whose requests
    /// share pooled connections: its address and its session.
    async fn attacker(&self, url: &str) -> (IpAddr, session::Session) {
        let from = self.address(2);
        let http = session::client_from(from, false);
        (
            from,
            session::sign_up(url, &self.email("attacker"), from, http).await,
        )
    }

    /// Another account, signed up from its own address (role 3), each of
    /// whose requests opens a connection of its own: its address and its
    /// session.
    async fn other(&self, url: &str) -> (IpAddr, session::Session) {
        let from = self.address(3);
        let http = session::client_from(from, true);
        (
            from,
            session::sign_up(url, &self.email("other"), from, http).await,
        )
    }

    /// Starts this case's intake on the local folder backend (`s3` false)
    /// or S3, with `vars` beside the common settings; it and its URL.
    async fn intake(&self, s3: bool, vars: &[(&str, String)]) -> (Server, String) {
        let port = servers::free_port();
        let addr = format!("127.0.0.1:{port}");
        let objects = self.s.work.join(format!("objects-{}", self.number));
        let backend = if s3 { "s3" } else { "fs" };
        let mut all = vec![
            ("COOKIE_SECURE", "false".to_owned()),
            ("STORAGE_BACKEND", backend.to_owned()),
            ("FS_ROOT", objects.display().to_string()),
            ("S3_KEY_PREFIX", format!("case{}/", self.number)),
            ("AI_BASE_URL", format!("{}/v1", self.ai_url)),
            ("AI_MODEL", "bench-standin".to_owned()),
            ("AI_API_KEY", AI_KEY.to_owned()),
        ];
        all.extend(vars.iter().cloned());
        let log = self.s.work.join(format!("intake-{}.log", self.number));
        let server = servers::start_intake(&self.s.intake_bin, &addr, &all, &[], &log).await;
        (server, format!("http://{addr}"))
    }
}

/// How long the attack's clients hold on after the last sample, so that
/// the sample at the end sees them all still there.
const RELEASE_AFTER: Duration = Duration::from_secs(1);

/// Seconds between two points of the series the report gives.
const SERIES_SECS: u64 = 5;

/// What the server held over an attack, sampled four times a second.
pub struct Held {
    /// The server's port, whose connections are the clients'.
    port: u16,
    started: Instant,
    /// The most client connections the server held, and the most requests
    /// the clients had sent and saw neither answered nor ended.
    peak_connections: usize,
    peak_open: usize,
    /// Every [`SERIES_SECS`] and at the end: seconds into the attack,
    /// connections held, requests open.
    series: Vec<(f64, usize, usize)>,
    /// The server's resident memory before the attack and at its end, MiB.
    rss_before: f64,
    rss_end: f64,
    /// Its peak resident memory during the attack, MiB.
    rss_peak: String,
}

impl Held {
    /// Starts watching `server`, which listens on `url`: its memory now.
    fn before(server: &Server, url: &str) -> Held {
        server.reset_peak_rss();
        Held {
            port: trickle::socket_of(url).port(),
            started: Instant::now(),
            peak_connections: 0,
            peak_open: 0,
            series: Vec::new(),
            rss_before: server.rss_mib(),
            rss_end: 0.0,
            rss_peak: String::new(),
        }
    }

    /// Samples `server`, and `open` when given, until `until`.
    async fn watch(&mut self, server: &Server, open: Option<&AtomicUsize>, until: Instant) {
        self.started = Instant::now();
        let mut next_point = Duration::from_secs(SERIES_SECS);
        loop {
            let connections = server.connections(self.port);
            let requests = open.map_or(0, |o| o.load(Ordering::SeqCst));
            self.peak_connections = self.peak_connections.max(connections);
            self.peak_open = self.peak_open.max(requests);
            let at = self.started.elapsed();
            if at >= next_point || Instant::now() >= until {
                self.series.push((at.as_secs_f64(), connections, requests));
                next_point += Duration::from_secs(SERIES_SECS);
            }
            if Instant::now() >= until {
                break;
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        self.rss_end = server.rss_mib();
        self.rss_peak = server.peak_rss_mib();
    }

    /// The report's lines on the server, and on the requests the clients
    /// saw open when `open` (a case whose clients know it).
    fn print(&self, open: bool) {
        let series = |pick: fn(&(f64, usize, usize)) -> usize| {
            self.series
                .iter()
                .map(|point| format!("{:.0} s: {}", point.0, pick(point)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        println!(
            "  client connections the server holds: peak {}; {}",
            self.peak_connections,
            series(|p| p.1)
        );
        if open {
            println!(
                "  requests open at the client (sent, neither answered nor ended): peak {}; {}",
                self.peak_open,
                series(|p| p.2)
            );
        }
        let end = self.series.last().map_or(0.0, |p| p.0);
        println!(
            "  server RSS: {:.1} MiB before, peak {} MiB, {:.1} MiB at {end:.0} s",
            self.rss_before, self.rss_peak, self.rss_end
        );
    }
}

/// Prints how many requests ended each way.
fn print_outcomes(outcomes: impl IntoIterator<Item = raw::Outcome>) {
    let mut counts: BTreeMap<raw::Outcome, usize> = BTreeMap::new();
    for outcome in outcomes {
        *counts.entry(outcome).or_default() += 1;
    }
    let list: Vec<String> = counts
        .iter()
        .map(|(outcome, n)| format!("{} {n}", outcome.label()))
        .collect();
    println!("  requests: {}", list.join("; "));
}

/// Starts the stand-in provider (`scripts/lib/ai-standin.py`), slow by
/// `delay` and taking requests without `max_tokens` as providers do.
async fn standin(s: &Settings) -> (Server, String) {
    let port = servers::free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut command = std::process::Command::new("python3");
    command.args([
        "scripts/lib/ai-standin.py",
        &s.work.join("ai.port").display().to_string(),
        AI_KEY,
        "--port",
        &port.to_string(),
        "--delay",
        &s.ai_delay_secs.to_string(),
        "--any-max-tokens",
    ]);
    let log = s.work.join("ai-standin.log");
    let ready = Ready::Healthy(format!("{url}/count"));
    let server = Server::start(command, &log, ready, Duration::from_secs(30)).await;
    (server, url)
}

pub async fn run(s: &Settings) {
    let wanted: Vec<&str> = s.attacks.split(',').map(str::trim).collect();
    let known = [
        "trickle",
        "downloads",
        "ai",
        "presign",
        "signup",
        "buffers",
        "tus",
    ];
    for name in &wanted {
        assert!(known.contains(name), "unknown attack {name:?} in ATTACKS");
    }
    if ["presign", "buffers", "tus"]
        .iter()
        .any(|name| wanted.contains(name))
    {
        crate::bench_bucket().await;
    }
    let (provider, ai_url) = standin(s).await;
    println!("intake: {}", s.intake_bin);
    for (number, name) in (1u8..).zip(known) {
        if !wanted.contains(&name) {
            continue;
        }
        let case = Case {
            s,
            number,
            ai_url: &ai_url,
        };
        println!();
        match name {
            "trickle" => trickle::json(&case).await,
            "downloads" => downloads::run(&case).await,
            "ai" => ai::run(&case).await,
            "presign" => presign::run(&case).await,
            "signup" => signup::run(&case).await,
            "buffers" => trickle::uploads(&case).await,
            _ => tus::run(&case).await,
        }
    }
    provider.stop();
}
