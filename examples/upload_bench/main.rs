//! The streaming-upload benchmark of `scripts/bench/upload.sh`: the script
//! installs and starts Postgres and the S3 server; this tool drives every
//! case (intake restarted as each case needs, the bare relays, the tus
//! reference server), repeats the timed ones, takes their medians and CPU
//! per GiB, and prints each figure beside its baseline from the same run.
//!
//!   upload_bench                    every case CASES names (see `run.rs`)
//!   upload_bench CASE COUNT MIB     one timed run of one case, printed as
//!                                   `CASE count=… seconds=… mib_per_s=…`
//!
//! CASE is one of `direct-multipart`, `direct-put`, `direct-puts`, `intake`,
//! `intake-concurrent`, `intake-batch`. Settings come from the environment:
//! S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY_ID, S3_SECRET_ACCESS_KEY,
//! PART_BYTES, and for a single run INTAKE_URL and INTAKE_KEY.

// A benchmark: any failure ends the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod cases;
mod run;
mod servers;

#[path = "../shared/proc.rs"]
mod proc;
#[path = "../shared/s3.rs"]
mod s3;

use s3::env;

#[tokio::main]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let part: usize = std::env::var("PART_BYTES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(8 * cases::MIB);
    match args.as_slice() {
        [] => run::all(part).await,
        [case, count, mib] => {
            let count: usize = count.parse().expect("COUNT");
            let mib: usize = mib.parse().expect("MIB");
            let to = cases::Target {
                intake_url: env("INTAKE_URL"),
                intake_key: env("INTAKE_KEY"),
                s3_endpoint: env("S3_ENDPOINT"),
                part,
            };
            let secs = cases::timed(case, count, mib, &to).await;
            println!(
                "{case} count={count} seconds={secs:.3} mib_per_s={:.1}",
                (count * mib) as f64 / secs
            );
        }
        _ => {
            eprintln!("usage: upload_bench [CASE COUNT MIB]");
            std::process::exit(2);
        }
    }
}
