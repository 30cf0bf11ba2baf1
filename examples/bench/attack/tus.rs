//! Case 7: one-byte tus PATCHes on S3. One session creates a resumable
//! upload, sends `TUS_TAIL_MIB` of it (less than a part, so it stays an
//! unfinished tail), then `TUS_PATCHES` PATCHes of one byte each; the bytes
//! intake exchanges with storage meanwhile, counted by a relay between the
//! two, are what each one-byte PATCH costs the storage.

use std::{
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Instant,
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use reqwest::{Method, StatusCode};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
};

use super::{Case, session::Session};
use crate::{
    form::{Kind, MIB},
    s3::env,
    stats::median,
};

/// Bytes a relay carried: to storage, and back from it.
#[derive(Default)]
struct Carried {
    to_storage: AtomicU64,
    from_storage: AtomicU64,
}

impl Carried {
    fn now(&self) -> (u64, u64) {
        (
            self.to_storage.load(Ordering::SeqCst),
            self.from_storage.load(Ordering::SeqCst),
        )
    }
}

/// Copies `from` into `to`, counting the bytes in `count`, until either
/// side ends.
async fn pipe(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    count: &AtomicU64,
) {
    let mut buf = vec![0u8; 64 * 1024];
    while let Ok(n) = from.read(&mut buf).await {
        if n == 0 || to.write_all(&buf[..n]).await.is_err() {
            break;
        }
        count.fetch_add(n as u64, Ordering::SeqCst);
    }
    let _ = to.shutdown().await;
}

/// A TCP relay on a free port of 127.0.0.1 to `upstream`, counting what
/// it carries each way; its address. It lives as long as the bench.
async fn relay(upstream: SocketAddr, carried: Arc<Carried>) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0")
        .await
        .expect("bind the relay");
    let addr = listener.local_addr().expect("the relay's address");
    tokio::spawn(async move {
        while let Ok((client, _)) = listener.accept().await {
            let Ok(server) = TcpStream::connect(upstream).await else {
                continue;
            };
            let carried = carried.clone();
            tokio::spawn(async move {
                let (client_read, client_write) = client.into_split();
                let (server_read, server_write) = server.into_split();
                tokio::join!(
                    pipe(client_read, server_write, &carried.to_storage),
                    pipe(server_read, client_write, &carried.from_storage),
                );
            });
        }
    });
    addr
}

/// A tus request of `session` with the protocol's version header.
fn tus(session: &Session, method: Method, path: &str) -> reqwest::RequestBuilder {
    session
        .request(method, path)
        .header("tus-resumable", "1.0.0")
}

/// PATCHes `bytes` at `offset` of upload `path`; the new offset.
async fn patch(session: &Session, path: &str, offset: u64, bytes: Vec<u8>) -> u64 {
    let resp = tus(session, Method::PATCH, path)
        .header("upload-offset", offset)
        .header("content-type", "application/offset+octet-stream")
        .body(bytes)
        .send()
        .await
        .expect("PATCH");
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "PATCH at {offset}");
    resp.headers()["upload-offset"]
        .to_str()
        .ok()
        .and_then(|v| v.parse().ok())
        .expect("Upload-Offset")
}

pub async fn run(case: &Case<'_>) {
    let s = case.s;
    let storage: SocketAddr = env("S3_ENDPOINT")
        .strip_prefix("http://")
        .and_then(|a| a.parse().ok())
        .expect("S3_ENDPOINT as http://ip:port");
    let carried = Arc::new(Carried::default());
    let through = relay(storage, carried.clone()).await;
    let vars = [("S3_ENDPOINT", format!("http://{through}"))];
    let (server, url) = case.intake(true, &vars).await;
    let (_, attacker) = case.attacker(&url).await;
    let length = 64 * MIB as u64;
    let metadata = format!(
        "filename {},filetype {}",
        STANDARD.encode("clip.mp4"),
        STANDARD.encode("video/mp4")
    );
    let created = tus(&attacker, Method::POST, "/upload/tus")
        .header("upload-length", length)
        .header("upload-metadata", metadata)
        .send()
        .await
        .expect("create the upload");
    assert_eq!(created.status(), StatusCode::CREATED, "create the upload");
    let location = created.headers()["location"]
        .to_str()
        .expect("Location")
        .to_owned();
    let id = location.rsplit('/').next().expect("the upload id");
    let path = format!("/upload/tus/{id}");
    println!(
        "one-byte tus PATCHes on S3: one session's upload of {} MiB, {} MiB sent \
         (less than a part), then {} PATCHes of one byte each",
        length / MIB as u64,
        s.tus_tail_mib,
        s.tus_patches
    );
    let mut offset = patch(
        &attacker,
        &path,
        0,
        Kind::MP4.random(s.tus_tail_mib * MIB).to_vec(),
    )
    .await;
    let (sent0, read0) = carried.now();
    let mut times = Vec::with_capacity(s.tus_patches);
    for _ in 0..s.tus_patches {
        let t = Instant::now();
        offset = patch(&attacker, &path, offset, vec![b'x']).await;
        times.push(t.elapsed().as_secs_f64() * 1000.0);
    }
    let (sent1, read1) = carried.now();
    let per_patch = |bytes: u64| bytes as f64 / s.tus_patches as f64 / 1024.0;
    println!(
        "  storage traffic per one-byte PATCH: {:.1} KiB sent to storage, {:.1} KiB read \
         back (the requests' headers and answers included)",
        per_patch(sent1 - sent0),
        per_patch(read1 - read0)
    );
    println!(
        "  time per one-byte PATCH: median {:.1} ms, max {:.1} ms",
        median(&times),
        times.iter().copied().fold(0.0, f64::max)
    );
    let ended = tus(&attacker, Method::DELETE, &path)
        .send()
        .await
        .expect("terminate the upload");
    assert!(ended.status().is_success(), "terminate the upload");
    server.stop();
}
