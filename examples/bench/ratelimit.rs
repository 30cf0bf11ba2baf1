//! The per-minute limiter's bench: requests per second and p50/p99 latency
//! of a light authenticated GET (`/me`) with the limiter on and off, for
//! one hot account and for many accounts taken in turn, from wrk on
//! loopback.
//!
//! Two intakes run side by side on one database, one with the limiter off
//! and one with it on, and each round measures the two back to back (off
//! first in odd rounds, on first in even ones). On a shared machine the
//! throughput drifts by more than the limiter costs over a minute; a pair a
//! few seconds apart sees the same machine, and the median of the pairs is
//! what is reported, beside every pair.

use std::path::PathBuf;

use crate::{
    admin::Admin,
    servers::{self, Server},
    stats::median,
    wrk::{self, Keys},
};

// The settings, from the environment (or the same flags).
#[derive(clap::Args)]
pub struct Settings {
    /// Length of each measurement, as wrk takes it.
    #[arg(long, env = "DURATION", default_value = "5s")]
    duration: String,
    /// Back-to-back pairs measured.
    #[arg(long, env = "ROUNDS", default_value_t = 6)]
    rounds: usize,
    /// wrk's connections.
    #[arg(long, env = "CONNECTIONS", default_value_t = 32)]
    connections: usize,
    /// Accounts of the "many" scenario.
    #[arg(long, env = "ACCOUNTS", default_value_t = 200)]
    accounts: usize,
    /// The intake binary.
    #[arg(long, env = "INTAKE_BIN")]
    intake_bin: String,
    /// A scratch folder (the servers' logs, the keys file).
    #[arg(long, env = "BENCH_WORK")]
    work: PathBuf,
}

/// One intake of the pair.
struct Instance {
    url: String,
    server: Server,
}

/// The figures of one measurement: wrk's, and the key lane's mean
/// requests per statement and mean statement time (the server's wait for
/// Postgres) during it.
struct Measure {
    rps: f64,
    p50_ms: f64,
    p99_ms: f64,
    non_2xx: u64,
    batch: f64,
    statement_ms: f64,
}

/// The key lane's statements, their seconds and the requests they decided
/// so far, from an intake's `/metrics`.
async fn key_lane(url: &str) -> [f64; 3] {
    let text = reqwest::get(format!("{url}/metrics"))
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("GET /metrics")
        .text()
        .await
        .expect("the metrics text");
    let value = |name: &str| {
        let prefix = format!("{name}{{lane=\"keys\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .map_or(0.0, |v| v.trim().parse().expect("a metric value"))
    };
    [
        value("intake_ratelimit_statement_seconds_count"),
        value("intake_ratelimit_statement_seconds_sum"),
        value("intake_ratelimit_batch_size_sum"),
    ]
}

pub async fn run(s: &Settings) {
    assert!(s.rounds > 0, "ROUNDS must be at least 1");
    let start = |limiter: bool| {
        let addr = format!("127.0.0.1:{}", servers::free_port());
        let log = s.work.join(format!("server-{limiter}.log"));
        let bin = s.intake_bin.clone();
        async move {
            let vars = [("RATE_LIMIT_ENABLED", limiter.to_string())];
            let server = servers::start_intake(&bin, &addr, &vars, &[], &log).await;
            Instance {
                url: format!("http://{addr}"),
                server,
            }
        }
    };
    // Index 0: the limiter off; 1: on.
    let on = start(true).await;
    let off = start(false).await;
    let pair = [off, on];

    // Accounts with a limit far above what the machine can send, so every
    // request takes the allowed path and the limiter's cost is what is
    // measured.
    let admin = Admin::new(&pair[1].url);
    let limits = serde_json::json!({"requests_per_minute": 100_000_000});
    let mut keys = Vec::with_capacity(s.accounts);
    for i in 0..s.accounts {
        let email = format!("bench{i}@example.com");
        keys.push(admin.key(&email, "enterprise", Some(limits.clone())).await);
    }
    let keys_file = s.work.join("keys.txt");
    std::fs::write(&keys_file, keys.join("\n") + "\n").expect("write the keys file");
    let scenarios = [
        ("hot", Keys::One(&keys[0]), 1),
        ("many", Keys::File(&keys_file), s.accounts),
    ];
    let url_of = |i: usize| format!("{}/me", pair[i].url);

    // Warm both servers' pools, statements and caches in both scenarios.
    for i in 0..2 {
        for (_, keys, _) in &scenarios {
            wrk::run(&url_of(i), keys, s.connections, "2s", true);
        }
    }

    // rounds[round][scenario] = [off, on]
    let mut rounds: Vec<Vec<[Measure; 2]>> = Vec::with_capacity(s.rounds);
    for round in 1..=s.rounds {
        let order = if round % 2 == 0 { [1, 0] } else { [0, 1] };
        let mut this = Vec::with_capacity(scenarios.len());
        for (_, keys, _) in &scenarios {
            let mut measured: [Option<Measure>; 2] = [None, None];
            for i in order {
                let [b0, s0, r0] = key_lane(&pair[i].url).await;
                let report = wrk::run(&url_of(i), keys, s.connections, &s.duration, true);
                let [b1, s1, r1] = key_lane(&pair[i].url).await;
                let batches = (b1 - b0).max(1.0);
                measured[i] = Some(Measure {
                    rps: report.rps,
                    p50_ms: report.p50_ms,
                    p99_ms: report.p99_ms,
                    non_2xx: report.non_2xx,
                    batch: (r1 - r0) / batches,
                    statement_ms: (s1 - s0) / batches * 1000.0,
                });
            }
            this.push(measured.map(|m| m.expect("both limiters measured")));
        }
        rounds.push(this);
    }
    for instance in pair {
        instance.server.stop();
    }

    println!(
        "\n{:<6} {:<8} {:<8} {:>10} {:>9} {:>9} {:>8} {:>7} {:>9}",
        "round", "limiter", "accounts", "req/s", "p50 ms", "p99 ms", "non-2xx", "batch", "stmt ms"
    );
    for (round, measured) in rounds.iter().enumerate() {
        for ((_, _, accounts), pair) in scenarios.iter().zip(measured) {
            for (label, m) in ["off", "on"].into_iter().zip(pair) {
                println!(
                    "{:<6} {label:<8} {accounts:<8} {:>10} {:>9} {:>9} {:>8} {:>7} {:>9}",
                    round + 1,
                    format!("{:.0}", m.rps),
                    format!("{:.3}", m.p50_ms),
                    format!("{:.3}", m.p99_ms),
                    m.non_2xx,
                    format!("{:.1}", m.batch),
                    format!("{:.3}", m.statement_ms),
                );
            }
        }
    }
    println!();
    for (n, (name, _, _)) in scenarios.iter().enumerate() {
        let each = |f: &dyn Fn(&Measure, &Measure) -> f64| -> Vec<f64> {
            rounds
                .iter()
                .map(|r| {
                    let [off, on] = &r[n];
                    f(on, off)
                })
                .collect()
        };
        let ratios = each(&|on, off| on.rps / off.rps);
        let added = each(&|on, off| on.p99_ms - off.p99_ms);
        let statement = each(&|on, off| on.statement_ms - off.statement_ms);
        let list = |values: &[f64], f: fn(&f64) -> String| {
            values.iter().map(f).collect::<Vec<_>>().join(", ")
        };
        println!(
            "{name}: throughput on/off = {:.2}  (goal >= 0.90);  p99 added = {:+.3} ms  (goal < 1 ms)",
            median(&ratios),
            median(&added)
        );
        println!(
            "  each round: on/off {};  p99 added {} ms",
            list(&ratios, |r| format!("{r:.2}")),
            list(&added, |a| format!("{a:+.3}"))
        );
        println!(
            "  key statement time added by the limiter: {:+.3} ms per batch (median)",
            median(&statement)
        );
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "(median of {} back-to-back pairs; wrk -t1 -c{} -d{} on 127.0.0.1; {cores} cores shared by wrk, intake and Postgres)",
        s.rounds, s.connections, s.duration
    );
}
