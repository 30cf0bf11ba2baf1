//! CPU per request of intake builds, side by side: an unlimited
//! (RATE_LIMIT_ENABLED=false) authenticated `GET /me` from wrk on loopback,
//! each build on a fresh process in turn, ROUNDS times. Prints requests per
//! second and the CPU microseconds per request that intake and Postgres
//! spent (from `/proc`), which move less with the machine's load than
//! throughput does.

use std::path::PathBuf;

use crate::{
    admin::Admin,
    proc::{self, TICKS_PER_SECOND},
    servers,
    wrk::{self, Keys},
};

// The settings, from the environment (or the same flags).
#[derive(clap::Args)]
pub struct Settings {
    /// Rounds; each runs every build once.
    #[arg(long, env = "ROUNDS", default_value_t = 3)]
    rounds: usize,
    /// Length of each measurement, as wrk takes it.
    #[arg(long, env = "DURATION", default_value = "8s")]
    duration: String,
    /// wrk's connections.
    #[arg(long, env = "CONNECTIONS", default_value_t = 32)]
    connections: usize,
    /// A scratch folder (the servers' logs).
    #[arg(long, env = "BENCH_WORK")]
    work: PathBuf,
    /// The database of each binary, in the same order: builds with
    /// different migrations cannot share one schema.
    #[arg(
        long,
        env = "BENCH_DATABASE_URLS",
        value_delimiter = ' ',
        required = true
    )]
    database_urls: Vec<String>,
    /// The intake binaries to compare, in the order each round runs them.
    #[arg(required = true)]
    bins: Vec<String>,
}

/// Clock ticks (user + system) of every process named `postgres` on the
/// machine (the cluster's backends and its background processes).
fn postgres_ticks() -> u64 {
    let Ok(entries) = std::fs::read_dir("/proc") else {
        return 0;
    };
    entries
        .flatten()
        .filter(|e| {
            e.file_name()
                .to_str()
                .is_some_and(|n| n.bytes().all(|b| b.is_ascii_digit()))
        })
        .filter(|e| {
            std::fs::read_to_string(e.path().join("comm")).is_ok_and(|c| c.trim() == "postgres")
        })
        // A process that ends between the listing and the read counts nothing.
        .filter_map(|e| proc::try_cpu_ticks(e.path().join("stat").to_str()?))
        .sum()
}

pub async fn run(s: &Settings) {
    assert_eq!(
        s.database_urls.len(),
        s.bins.len(),
        "one database URL per binary"
    );
    // Each build's key, made on its own database the first time it runs.
    let mut keys: Vec<Option<String>> = vec![None; s.bins.len()];
    println!(
        "{:<6} {:<40} {:>10} {:>16} {:>18}",
        "round", "build", "req/s", "intake us/req", "postgres us/req"
    );
    for round in 1..=s.rounds {
        for (i, bin) in s.bins.iter().enumerate() {
            let addr = format!("127.0.0.1:{}", servers::free_port());
            let vars = [
                ("RATE_LIMIT_ENABLED", "false".to_owned()),
                ("DATABASE_URL", s.database_urls[i].clone()),
            ];
            let log = s.work.join("intake.log");
            let server = servers::start_intake(bin, &addr, &vars, &[], &log).await;
            let url = format!("http://{addr}");
            let key = match &keys[i] {
                Some(key) => key.clone(),
                None => {
                    let admin = Admin::new(&url);
                    let key = admin.key("cpu@example.com", "enterprise", None).await;
                    keys[i] = Some(key.clone());
                    key
                }
            };
            let keys = Keys::One(&key);
            let me = format!("{url}/me");
            // A warm-up, then the measured run.
            wrk::run(&me, &keys, s.connections, "2s", false);
            let (before, pg_before) = (server.cpu_ticks(), postgres_ticks());
            let report = wrk::run(&me, &keys, s.connections, &s.duration, false);
            let (after, pg_after) = (server.cpu_ticks(), postgres_ticks());
            server.stop();
            let per_request =
                |ticks: u64| ticks as f64 * 1e6 / TICKS_PER_SECOND / report.requests as f64;
            println!(
                "{round:<6} {bin:<40} {:>10.0} {:>16.1} {:>18.1}",
                report.rps,
                per_request(after - before),
                per_request(pg_after.saturating_sub(pg_before)),
            );
        }
    }
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    println!(
        "(wrk -t1 -c{} -d{} on 127.0.0.1; one ENTERPRISE key; {cores} cores shared by wrk, intake and Postgres)",
        s.connections, s.duration
    );
}
