//! Bodies that never end: JSON requests of one session trickled a byte at
//! a time (case 1), and streaming uploads that send a few MiB at once,
//! then a byte at a time (case 6, the part buffers on S3).

use std::{
    net::SocketAddr,
    sync::atomic::AtomicUsize,
    time::{Duration, Instant},
};

use futures_util::future::join_all;

use super::{
    Case, Held, RELEASE_AFTER, print_outcomes, probe, raw,
    session::{self, client_from},
};
use crate::form::{Kind, MIB};

/// The socket address of an intake URL (`http://127.0.0.1:<port>`).
pub fn socket_of(url: &str) -> SocketAddr {
    url.strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("an intake URL of the form http://ip:port")
}

/// Case 1: `TRICKLE_CONNECTIONS` `POST /chat` of one session, each
/// declaring a 64 KiB body and sending a byte of it every
/// `TRICKLE_EVERY_SECS`, for `ATTACK_SECS`; the server runs with
/// `MAX_CONNECTIONS` set to their number.
pub async fn json(case: &Case<'_>) {
    let s = case.s;
    let n = s.trickle_connections;
    let (server, url) = case
        .intake(false, &[("MAX_CONNECTIONS", n.to_string())])
        .await;
    let (from, attacker) = case.attacker(&url).await;
    let (_, other) = case.other(&url).await;
    println!(
        "trickled JSON bodies: {n} POST /chat of one session, Content-Length 65536, \
         one byte every {} s, for {} s (MAX_CONNECTIONS={n})",
        s.trickle_every_secs, s.attack_secs
    );
    let head = attacker.raw_head(
        "POST",
        "/chat",
        "Content-Type: application/json\r\nContent-Length: 65536\r\n",
    );
    let to = socket_of(&url);
    let open = AtomicUsize::new(0);
    let mut held = Held::before(&server, &url);
    let start = Instant::now();
    let until = start + s.attack();
    let release = until + RELEASE_AFTER;
    let start_of = [head.as_slice()];
    let attack = join_all(
        (0..n).map(|_| raw::trickle(from, to, &start_of, b" ", s.every(), release, &open)),
    );
    // Once the attack's connections are made, another account, from
    // another address, lists its files and uploads one.
    let probing = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        probe::run(&other, start + s.attack() / 2, until).await
    };
    let (outcomes, (), seen) =
        tokio::join!(attack, held.watch(&server, Some(&open), until), probing);
    held.print(true);
    print_outcomes(outcomes);
    println!("  {}", seen.line());
    server.stop();
}

/// Case 6: `SLOW_UPLOADS` streaming uploads on S3, ten for each of as many
/// FREE accounts as that takes (each from an address of its own), each
/// sending `SLOW_UPLOAD_MIB` of a video at once, then a byte every
/// `TRICKLE_EVERY_SECS`, for `ATTACK_SECS`. The bodies are chunked, so
/// that no length is known up front and each file's bytes go to storage in
/// parts; the server runs with `UPLOAD_BUFFER_BUDGET_BYTES` of
/// `BUFFER_BUDGET_MIB` (a build that does not know it ignores it).
pub async fn uploads(case: &Case<'_>) {
    let s = case.s;
    let budget = s.buffer_budget_mib * MIB as u64;
    let (server, url) = case
        .intake(true, &[("UPLOAD_BUFFER_BUDGET_BYTES", budget.to_string())])
        .await;
    let accounts = s.slow_uploads.div_ceil(10);
    let mut uploaders = Vec::with_capacity(accounts);
    for i in 0..accounts {
        let from = case.address(10 + u8::try_from(i).expect("at most 245 accounts"));
        let email = case.email(&format!("uploader{i}"));
        let session = session::sign_up(&url, &email, from, client_from(from, false)).await;
        uploaders.push((from, session));
    }
    println!(
        "slow streaming uploads on S3: {} uploads ({accounts} FREE accounts), each sending \
         {} MiB at once, then one byte every {} s, for {} s \
         (UPLOAD_BUFFER_BUDGET_BYTES={budget}, the chunked bodies having no length)",
        s.slow_uploads, s.slow_upload_mib, s.trickle_every_secs, s.attack_secs
    );
    let boundary = "benchboundary7d3a";
    let part_head = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; \
         filename=\"slow.mp4\"\r\nContent-Type: video/mp4\r\n\r\n"
    );
    let first = [
        part_head.as_bytes(),
        &Kind::MP4.random(s.slow_upload_mib * MIB)[..],
    ]
    .concat();
    let chunk_head = format!("{:x}\r\n", first.len());
    let heads: Vec<Vec<u8>> = uploaders
        .iter()
        .map(|(_, session)| {
            let mut head = session.raw_head(
                "POST",
                "/upload/stream",
                &format!(
                    "Content-Type: multipart/form-data; boundary={boundary}\r\n\
                     Transfer-Encoding: chunked\r\n"
                ),
            );
            head.extend_from_slice(chunk_head.as_bytes());
            head
        })
        .collect();
    let to = socket_of(&url);
    let open = AtomicUsize::new(0);
    let mut held = Held::before(&server, &url);
    let until = Instant::now() + s.attack();
    let release = until + RELEASE_AFTER;
    let attack =
        join_all(
            (0..s.slow_uploads).map(|i| {
                let (from, _) = uploaders[i / 10];
                let start: [&[u8]; 3] = [&heads[i / 10], &first, b"\r\n"];
                let open = &open;
                async move {
                    raw::trickle(from, to, &start, b"1\r\nx\r\n", s.every(), release, open).await
                }
            }),
        );
    let (outcomes, ()) = tokio::join!(attack, held.watch(&server, Some(&open), until));
    held.print(true);
    print_outcomes(outcomes);
    server.stop();
}
