//! Case 2: downloads whose client never reads. One session uploads a file
//! (local folder backend, so intake serves its bytes), then opens
//! `DOWNLOADS` `GET /files/{id}/content` with a 4 KiB receive window and
//! reads nothing for `ATTACK_SECS`; the server runs with
//! `RESPONSE_WRITE_TIMEOUT_SECS` of `WRITE_TIMEOUT_SECS`.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use tokio::io::AsyncWriteExt;

use super::{Case, Held, RELEASE_AFTER, probe, raw, trickle::socket_of};
use crate::form::{self, Kind, MIB};

/// The receive buffer of each download's socket.
const WINDOW: u32 = 4096;

pub async fn run(case: &Case<'_>) {
    let s = case.s;
    let vars = [(
        "RESPONSE_WRITE_TIMEOUT_SECS",
        s.write_timeout_secs.to_string(),
    )];
    let (server, url) = case.intake(false, &vars).await;
    let (from, attacker) = case.attacker(&url).await;
    let (_, other) = case.other(&url).await;
    let data = Kind::MP4.random(s.download_mib * MIB);
    let file = attacker
        .upload(form::form("file", &[data], &Kind::MP4))
        .await;
    let id = file["id"].as_str().expect("the file id");
    println!(
        "unread downloads: {} GET /files/{{id}}/content of a {} MiB file by one session, \
         each with a {WINDOW}-byte receive window and never read, for {} s \
         (RESPONSE_WRITE_TIMEOUT_SECS={})",
        s.downloads, s.download_mib, s.attack_secs, s.write_timeout_secs
    );
    let head = attacker.raw_head("GET", &format!("/files/{id}/content"), "");
    let to = socket_of(&url);
    let mut held = Held::before(&server, &url);
    let start = Instant::now();
    let until = start + s.attack();
    let download = || async {
        let mut stream = raw::connect(from, to, Some(WINDOW)).await.ok()?;
        stream.write_all(&head).await.ok()?;
        Some(stream)
    };
    let opening = join_all((0..s.downloads).map(|_| download()));
    let probing = async {
        tokio::time::sleep(Duration::from_secs(2)).await;
        probe::run(&other, start + s.attack() / 2, until).await
    };
    let (streams, (), seen) = tokio::join!(
        async {
            let streams = opening.await;
            tokio::time::sleep_until((until + RELEASE_AFTER).into()).await;
            streams
        },
        held.watch(&server, None, until),
        probing
    );
    held.print(false);
    // What each download's first bytes say: 200 (the file began to come)
    // or a refusal.
    let mut statuses: BTreeMap<String, usize> = BTreeMap::new();
    for stream in &streams {
        let label = match stream {
            None => "not sent".to_owned(),
            Some(stream) => match raw::status_so_far(stream) {
                Some(status) => format!("answered {status}"),
                None => "nothing received".to_owned(),
            },
        };
        *statuses.entry(label).or_default() += 1;
    }
    let list: Vec<String> = statuses.iter().map(|(l, n)| format!("{l} {n}")).collect();
    println!("  downloads: {}", list.join("; "));
    println!("  {}", seen.line());
    drop(streams);
    server.stop();
}
