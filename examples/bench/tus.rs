//! The tus side of the benches: the stock tus reference server
//! (@tus/server with @tus/s3-store, installed from npm by the scripts and
//! started here) measured over one 100 MiB upload and 10 × 20 MiB, and the
//! one tus client (`scripts/bench/tus/client.mjs`) that drives it, intake's
//! `/upload/tus` and the bare tus relay alike.
//!
//! Each reference case runs on a fresh server process, once to warm it (as
//! a server up for a while: connections, caches) and then timed, with the
//! peak RSS of the timed pass. Every upload is checked for its size in the
//! bucket and then deleted; a missing or short object ends the bench.

use std::{
    path::{Path, PathBuf},
    process::{Command, Stdio},
    time::Duration,
};

use crate::{
    form::MIB,
    s3::{self, env},
    servers::{self, Ready, Server},
};

/// The reference server's seconds and peak RSS (MiB) of one case, as
/// printed: seconds to three decimals, RSS to one.
pub struct Case {
    pub secs: String,
    pub rss: String,
}

/// The reference server's figures: one 100 MiB upload and 10 concurrent
/// 20 MiB uploads.
pub struct Reference {
    pub single: Case,
    pub c10: Case,
}

/// Where the reference server runs from and writes to.
pub struct Setup<'a> {
    /// The source file (at least 100 MiB); the 20 MiB uploads read its
    /// first 20 MiB.
    pub file: &'a Path,
    pub s3_endpoint: &'a str,
    pub bucket: &'a str,
    /// The store's part size, and the client's PATCH size.
    pub part: usize,
    /// A scratch folder: the server's log and the parts it spools.
    pub work: &'a Path,
}

impl Reference {
    /// Measures both cases. The server is `server.mjs` in TUS_NODE_DIR,
    /// beside the npm packages the script installed there.
    pub async fn measure(setup: &Setup<'_>) -> Reference {
        Reference {
            single: reference_case(setup, "single", 1, 100).await,
            c10: reference_case(setup, "10x20", 10, 20).await,
        }
    }
}

/// `bench tus`: the reference alone, one line per case.
pub async fn run(part: usize) {
    let work = PathBuf::from(env("BENCH_WORK"));
    let bucket = crate::bench_bucket().await;
    let file = match std::env::var("TUS_BENCH_FILE") {
        Ok(file) => PathBuf::from(file),
        Err(_) => {
            let file = work.join("data.bin");
            std::fs::write(&file, crate::form::Kind::MP4.random(100 * MIB))
                .expect("write the upload file");
            file
        }
    };
    let endpoint = env("S3_ENDPOINT");
    let setup = Setup {
        file: &file,
        s3_endpoint: &endpoint,
        bucket: &bucket,
        part,
        work: &work,
    };
    let r = Reference::measure(&setup).await;
    for (name, case, total) in [("single", &r.single, 100.0), ("10x20", &r.c10, 200.0)] {
        let secs: f64 = case.secs.parse().expect("seconds");
        println!(
            "tus {name} seconds={} mib_per_s={:.1} peak_rss_mib={}",
            case.secs,
            total / secs,
            case.rss
        );
    }
}

/// One case on a fresh reference server: warmed, then timed.
async fn reference_case(setup: &Setup<'_>, name: &str, count: usize, mib: usize) -> Case {
    let node_dir = PathBuf::from(env("TUS_NODE_DIR"));
    // The store spools every part to a file in the OS temp folder; it goes
    // in the work folder so that what is left is removed with it.
    let tmp = setup.work.join("tus-tmp");
    std::fs::create_dir_all(&tmp).expect("the tus temp folder");
    let port = servers::free_port();
    let url = format!("http://127.0.0.1:{port}/files");
    let mut node = Command::new("node");
    node.arg(node_dir.join("server.mjs"))
        .env("TMPDIR", &tmp)
        .env("TUS_PORT", port.to_string())
        .env("TUS_S3_ENDPOINT", setup.s3_endpoint)
        .env("TUS_S3_BUCKET", setup.bucket)
        .env("TUS_S3_ACCESS_KEY", env("S3_ACCESS_KEY_ID"))
        .env("TUS_S3_SECRET_KEY", env("S3_SECRET_ACCESS_KEY"))
        .env("TUS_PART_BYTES", setup.part.to_string());
    let log = setup.work.join("tus-server.log");
    let server = Server::start(
        node,
        &log,
        Ready::Answers(url.clone()),
        Duration::from_secs(10),
    )
    .await;
    eprintln!("case {name}: {count} x {mib} MiB to {port}");
    let mut secs = 0.0;
    for pass in ["warm", "timed"] {
        let ids;
        (secs, ids) = load(&url, setup.file, count, mib, setup.part, None);
        verify_and_delete(setup.bucket, (mib * MIB) as i64, &ids).await;
        if pass == "warm" {
            server.reset_peak_rss();
        }
    }
    let rss = server.peak_rss_mib();
    server.stop();
    Case {
        secs: format!("{secs:.3}"),
        rss,
    }
}

/// Checks that every upload landed as an object of `size` bytes, then
/// deletes it with the store's side objects (`.info`, `.part`).
async fn verify_and_delete(bucket: &str, size: i64, ids: &[String]) {
    assert!(!ids.is_empty(), "the tus client reported no upload");
    let s3 = s3::client();
    let mut bad = Vec::new();
    for key in ids {
        match s3.head_object().bucket(bucket).key(key).send().await {
            Ok(head) if head.content_length() == Some(size) => {}
            Ok(head) => bad.push(format!(
                "{key}: expected {size} bytes, got {:?}",
                head.content_length()
            )),
            Err(e) => bad.push(format!("{key}: {e:?}")),
        }
        let listed = s3
            .list_objects_v2()
            .bucket(bucket)
            .prefix(key)
            .send()
            .await
            .expect("list the upload's objects");
        for object in listed.contents() {
            s3.delete_object()
                .bucket(bucket)
                .key(object.key().expect("an object key"))
                .send()
                .await
                .expect("delete an upload's object");
        }
    }
    assert!(
        bad.is_empty(),
        "tus uploads not stored whole:\n{}",
        bad.join("\n")
    );
}

/// The tus client (`scripts/bench/tus/client.mjs`): `count` concurrent
/// uploads of the first `mib` MiB of `file`, created at `url`, in PATCHes
/// of `part` bytes; the seconds it reports and the uploads' ids (their
/// object keys on the reference server).
pub fn load(
    url: &str,
    file: &Path,
    count: usize,
    mib: usize,
    part: usize,
    authorization: Option<&str>,
) -> (f64, Vec<String>) {
    let mut node = Command::new("node");
    node.arg("scripts/bench/tus/client.mjs")
        .arg(url)
        .arg(file)
        .args([(mib * MIB).to_string(), count.to_string(), part.to_string()])
        .stderr(Stdio::inherit());
    if let Some(auth) = authorization {
        node.env("TUS_AUTHORIZATION", auth);
    }
    let out = node.output().expect("run the tus client");
    let report = servers::json_report(&out, &format!("the tus client against {url}"));
    let secs = report["seconds"]
        .as_f64()
        .expect("seconds in the tus client's line");
    (secs, servers::strings(&report, "ids"))
}
