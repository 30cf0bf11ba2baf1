//! The benches of `scripts/bench/`, one subcommand each: the scripts
//! install the tools and start the services (Postgres, the S3 server), then
//! run this, which starts intake (and what each bench compares it with),
//! drives the load, repeats the timed runs, takes their medians and prints
//! every figure beside its baseline from the same run. Stock tools stay
//! where they are what a figure is about (wrk as the HTTP load generator,
//! the tus reference server and the tus client, boto3 as the direct S3
//! baseline); this runs them as processes and reads their output.
//!
//!   bench upload                 every case CASES names (`upload/mod.rs`)
//!   bench upload CASE COUNT MIB  one timed run of one upload case, printed
//!                                as `CASE count=… seconds=… mib_per_s=…`
//!   bench tus                    the tus reference server alone
//!   bench ratelimit              the limiter on and off, in pairs
//!   bench replay                 a replayed Idempotency-Key beside GET /me
//!   bench cpu BIN...             CPU per request of builds side by side
//!   bench presign                presigned multipart against boto3
//!   bench statements             SQL statements per operation
//!   bench attack                 what one account's attacks cost the server
//!
//! Settings come from the environment (each subcommand's `--help` names
//! them); S3_ENDPOINT, S3_BUCKET, S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY
//! locate the S3 server, BENCH_WORK is a scratch folder and INTAKE_BIN the
//! intake binary. A run that fails ends the bench with an error: no figure
//! is printed without all the runs it names.

// A benchmark: any failure ends the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod admin;
mod attack;
mod cpu;
mod form;
mod presign;
mod ratelimit;
mod replay;
mod servers;
mod statements;
mod stats;
mod tus;
mod upload;
mod wrk;

#[path = "../shared/proc.rs"]
mod proc;
#[path = "../shared/s3.rs"]
mod s3;

use clap::{Parser, Subcommand};
use s3::env;

#[derive(Parser)]
#[command(about = "The benches of scripts/bench/")]
struct Args {
    #[command(subcommand)]
    bench: Bench,
}

#[derive(Subcommand)]
enum Bench {
    /// Streaming uploads against direct S3 (CASES, REPEAT, PROFILE_MIB,
    /// INTAKE_WRAP), or one timed run of CASE.
    Upload {
        /// CASE COUNT MIB: one of direct-multipart, direct-put,
        /// direct-puts, intake, intake-concurrent, intake-batch, against
        /// INTAKE_URL with INTAKE_KEY.
        #[arg(num_args = 0..=3)]
        one: Vec<String>,
    },
    /// The tus reference server alone (TUS_BENCH_FILE: the file to send).
    Tus,
    /// The per-minute limiter on and off, measured back to back in pairs.
    Ratelimit(ratelimit::Settings),
    /// A replayed request (Idempotency-Key) beside a plain GET /me.
    Replay(replay::Settings),
    /// CPU per request of intake builds, side by side.
    Cpu(cpu::Settings),
    /// Presigned multipart against boto3, and issue/complete latency.
    Presign(presign::Settings),
    /// SQL statements per operation (pg_stat_statements).
    Statements(statements::Settings),
    /// What one account's attacks cost the server: connections, memory,
    /// provider calls, bucket bytes, accounts.
    Attack(attack::Settings),
}

/// Creates the bucket S3_BUCKET names on the S3 server; its name.
async fn bench_bucket() -> String {
    let bucket = env("S3_BUCKET");
    s3::client()
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create the bench bucket");
    bucket
}

/// The part size of the upload and tus benches (PART_BYTES, 8 MiB).
fn part_bytes() -> usize {
    std::env::var("PART_BYTES").map_or(8 * form::MIB, |v| v.parse().expect("PART_BYTES"))
}

#[tokio::main]
async fn main() {
    match Args::parse().bench {
        Bench::Upload { one } => upload_command(&one).await,
        Bench::Tus => tus::run(part_bytes()).await,
        Bench::Ratelimit(settings) => ratelimit::run(&settings).await,
        Bench::Replay(settings) => replay::run(&settings).await,
        Bench::Cpu(settings) => cpu::run(&settings).await,
        Bench::Presign(settings) => presign::run(&settings).await,
        Bench::Statements(settings) => statements::run(&settings).await,
        Bench::Attack(settings) => attack::run(&settings).await,
    }
}

async fn upload_command(one: &[String]) {
    let part = part_bytes();
    match one {
        [] => upload::all(part).await,
        [case, count, mib] => {
            let count: usize = count.parse().expect("COUNT");
            let mib: usize = mib.parse().expect("MIB");
            let to = upload::cases::Target {
                intake_url: env("INTAKE_URL"),
                intake_key: env("INTAKE_KEY"),
                s3_endpoint: env("S3_ENDPOINT"),
                part,
            };
            let secs = upload::cases::timed(case, count, mib, &to).await;
            println!(
                "{case} count={count} seconds={secs:.3} mib_per_s={:.1}",
                (count * mib) as f64 / secs
            );
        }
        _ => {
            eprintln!("usage: bench upload [CASE COUNT MIB]");
            std::process::exit(2);
        }
    }
}
