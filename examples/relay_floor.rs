//! The floor of intake's CPU per byte on this machine: what receiving bytes
//! from one socket, hashing them with SHA-256 and sending them on to another
//! costs with nothing else (no HTTP, no multipart, no storage protocol), the
//! least work intake does for every byte it streams. Source, relay and sink
//! are threads of this process over loopback; only the relay's CPU is
//! counted (from /proc/thread-self/stat).
//!
//!   cargo run --release --example relay_floor [GIB [READ_KIB]]   (2, 64)
//!
//! READ_KIB is the most the relay reads at once (64: what intake's server
//! reads at most, src/http/serve.rs). Prints `relay_cpu_s_per_gib=…
//! sha256_cpu_s_per_gib=…`: the relay's user plus system time per GiB, and
//! SHA-256 alone over the same bytes in memory.

// A measuring tool: any failure ends the run loudly.
#![allow(clippy::expect_used, clippy::unwrap_used)]

use std::{
    io::{Read, Write},
    net::{TcpListener, TcpStream},
    thread,
};

use sha2::{Digest, Sha256};

#[path = "shared/proc.rs"]
mod proc;

const GIB: usize = 1 << 30;
const KIB: usize = 1024;
/// What the source writes at once.
const WRITE: usize = 256 * KIB;

/// This thread's user plus system time, in seconds.
fn thread_cpu_seconds() -> f64 {
    proc::cpu_ticks("/proc/thread-self/stat") as f64 / proc::TICKS_PER_SECOND
}

fn main() {
    let gib: usize = std::env::args()
        .nth(1)
        .map_or(2, |a| a.parse().expect("GIB, a whole number"));
    let read: usize = std::env::args()
        .nth(2)
        .map_or(64, |a| a.parse().expect("READ_KIB, a whole number"))
        * KIB;
    let total = gib * GIB;
    let block: Vec<u8> = (0..WRITE).map(|i| (i * 7 + i / 251) as u8).collect();

    let sink = TcpListener::bind("127.0.0.1:0").unwrap();
    let sink_addr = sink.local_addr().unwrap();
    let sink = thread::spawn(move || {
        let (mut conn, _) = sink.accept().unwrap();
        let mut buf = vec![0u8; WRITE];
        let mut got = 0;
        loop {
            let n = conn.read(&mut buf).unwrap();
            if n == 0 {
                return got;
            }
            got += n;
        }
    });

    let relay = TcpListener::bind("127.0.0.1:0").unwrap();
    let relay_addr = relay.local_addr().unwrap();
    let relay = thread::spawn(move || {
        let (mut from, _) = relay.accept().unwrap();
        let mut to = TcpStream::connect(sink_addr).unwrap();
        let start = thread_cpu_seconds();
        let mut hasher = Sha256::new();
        let mut buf = vec![0u8; read];
        loop {
            let n = from.read(&mut buf).unwrap();
            if n == 0 {
                break;
            }
            hasher.update(&buf[..n]);
            to.write_all(&buf[..n]).unwrap();
        }
        drop(to);
        let _ = hasher.finalize();
        thread_cpu_seconds() - start
    });

    let mut source = TcpStream::connect(relay_addr).unwrap();
    let mut sent = 0;
    while sent < total {
        let n = block.len().min(total - sent);
        source.write_all(&block[..n]).unwrap();
        sent += n;
    }
    drop(source);
    let relay_cpu = relay.join().unwrap();
    assert_eq!(sink.join().unwrap(), total, "the sink got every byte");

    let start = thread_cpu_seconds();
    let mut hasher = Sha256::new();
    for _ in 0..total / block.len() {
        hasher.update(&block);
    }
    let _ = hasher.finalize();
    let sha_cpu = thread_cpu_seconds() - start;

    println!(
        "relay_cpu_s_per_gib={:.2} sha256_cpu_s_per_gib={:.2}",
        relay_cpu / gib as f64,
        sha_cpu / gib as f64
    );
}
