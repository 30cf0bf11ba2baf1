//! wrk, the HTTP load generator of the request benches: one run against a
//! URL with one API key or a request script, and the figures its report
//! gives. A run that fails or sends no request ends the bench.

use std::{path::Path, process::Command};

/// What each request of a run carries.
pub enum Keys<'a> {
    /// The same API key on every request.
    One(&'a str),
    /// Each key of this file in turn (`scripts/bench/wrk/keys.lua`).
    File(&'a Path),
    /// A request script of `scripts/bench/wrk/` and what it reads from its
    /// environment.
    Script {
        script: &'a str,
        env: Vec<(&'a str, String)>,
    },
}

/// The figures of one wrk run.
pub struct Report {
    /// Requests completed.
    pub requests: u64,
    /// Requests per second.
    pub rps: f64,
    /// Median latency in milliseconds (a run with `latency`).
    pub p50_ms: f64,
    /// 99th percentile latency in milliseconds (a run with `latency`).
    pub p99_ms: f64,
    /// Answers that were not 2xx or 3xx.
    pub non_2xx: u64,
}

/// `wrk -t1 -c<connections> -d<duration>` against `url` (with its latency
/// distribution when `latency`).
pub fn run(url: &str, keys: &Keys, connections: usize, duration: &str, latency: bool) -> Report {
    let mut wrk = Command::new("wrk");
    wrk.args(["-t1", &format!("-c{connections}"), &format!("-d{duration}")]);
    if latency {
        wrk.arg("--latency");
    }
    match keys {
        Keys::One(key) => {
            wrk.args(["-H", &format!("Authorization: Bearer {key}")]);
        }
        Keys::File(path) => {
            wrk.args(["-s", "scripts/bench/wrk/keys.lua"])
                .env("BENCH_KEYS_FILE", path);
        }
        Keys::Script { script, env } => {
            wrk.args(["-s", script]).envs(env.iter().cloned());
        }
    }
    let out = wrk.arg(url).output().expect("run wrk (is it installed?)");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "wrk against {url} failed: {}\n{text}",
        String::from_utf8_lossy(&out.stderr)
    );
    let report = parse(&text, latency);
    assert!(
        report.requests > 0,
        "wrk made no request against {url}:\n{text}"
    );
    report
}

/// The figures of a wrk report; a report without one of them ends the
/// bench with the report.
fn parse(text: &str, latency: bool) -> Report {
    let after = |label: &str| {
        text.lines()
            .find_map(|l| l.trim().strip_prefix(label).map(str::trim))
            .unwrap_or_else(|| panic!("no {label:?} in wrk's report:\n{text}"))
    };
    let requests = text
        .lines()
        .find(|l| l.contains(" requests in "))
        .and_then(|l| l.split_whitespace().next())
        .and_then(|n| n.parse().ok())
        .unwrap_or_else(|| panic!("no request count in wrk's report:\n{text}"));
    let rps = after("Requests/sec:").parse().expect("Requests/sec");
    let (p50_ms, p99_ms) = if latency {
        (millis(after("50%")), millis(after("99%")))
    } else {
        (f64::NAN, f64::NAN)
    };
    let non_2xx = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("Non-2xx or 3xx responses:"))
        .map_or(0, |n| n.trim().parse().expect("non-2xx count"));
    Report {
        requests,
        rps,
        p50_ms,
        p99_ms,
        non_2xx,
    }
}

/// A wrk duration (`812.00us`, `1.23ms`, `2.01s`) in milliseconds.
fn millis(value: &str) -> f64 {
    let split = value
        .find(|c: char| c.is_ascii_alphabetic())
        .unwrap_or_else(|| panic!("no unit in wrk's {value:?}"));
    let (number, unit) = value.split_at(split);
    let number: f64 = number.parse().expect("a wrk latency");
    number
        * match unit {
            "us" => 0.001,
            "ms" => 1.0,
            "s" => 1000.0,
            "m" => 60_000.0,
            other => panic!("wrk latency unit {other:?}"),
        }
}
