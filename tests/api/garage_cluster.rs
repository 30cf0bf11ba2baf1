//! Three intake instances behind the test balancer, on one Postgres and a
//! three-node Garage cluster (replication factor 3), while a node dies in
//! the middle of a streaming, a presigned and a resumable upload: each one
//! finishes on the quorum of the two nodes left, nothing is lost, and
//! `intake admin reconcile` is clean after.
//!
//! Then a second node dies, the cluster loses its quorum, and a new upload
//! ends with 503 `service_unavailable`, holding nothing.
//!
//! The test kills nodes of the cluster, so it runs alone on a cluster of
//! its own: scripts/test.sh starts one (`garage_cluster_start`), points the
//! suite at node 0, names two other nodes to kill in `TEST_GARAGE_VICTIMS`
//! (`<pid>:<S3 port>` each, space-separated), then runs this module with
//! `--ignored`.

use std::time::Duration;

use reqwest::{Method, Response, StatusCode};
use serde_json::{Value, json};
use sha2::{Digest, Sha256};

use crate::helpers::{
    MIB, S3_BUCKET, TestApp, assert_problem,
    clients::{
        stream::{STREAM_END, open_stream},
        tus::{metadata, tus_path},
    },
    cluster::Cluster,
    download, env, eventually, fixtures, s3_client,
};

/// Kills the `n`th node of `TEST_GARAGE_VICTIMS` (SIGKILL, as when its host
/// dies) and waits until its S3 port refuses connections.
async fn kill_victim(n: usize) {
    let victims = env("TEST_GARAGE_VICTIMS");
    let victim = victims.split_whitespace().nth(n).expect("a victim to kill");
    let (pid, port) = victim.split_once(':').expect("<pid>:<port>");
    let status = std::process::Command::new("kill")
        .args(["-9", pid])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -9 {pid}");
    eventually("the killed node stops answering", || {
        let addr = format!("127.0.0.1:{port}");
        async move { tokio::net::TcpStream::connect(addr).await.is_err() }
    })
    .await;
}

/// Whether storage holds a multipart upload below the app's prefix with at
/// least one part stored (the streaming upload is under way).
async fn a_part_is_stored(app: &TestApp) -> bool {
    let s3 = s3_client().await;
    let Ok(uploads) = s3
        .list_multipart_uploads()
        .bucket(S3_BUCKET)
        .prefix(&app.prefix)
        .send()
        .await
    else {
        return false;
    };
    for upload in uploads.uploads() {
        let parts = s3
            .list_parts()
            .bucket(S3_BUCKET)
            .key(upload.key().unwrap_or_default())
            .upload_id(upload.upload_id().unwrap_or_default())
            .send()
            .await;
        if parts.is_ok_and(|p| !p.parts().is_empty()) {
            return true;
        }
    }
    false
}

async fn put_part(url: &str, data: &[u8]) -> String {
    let resp = reqwest::Client::new()
        .put(url)
        .body(data.to_vec())
        .send()
        .await
        .unwrap();
    assert!(resp.status().is_success(), "part PUT: {}", resp.status());
    resp.headers()["etag"].to_str().unwrap().to_owned()
}

/// A tus request through the balancer.
fn tus(c: &Cluster, method: Method, path: &str, key: &str) -> reqwest::RequestBuilder {
    c.request(method, path)
        .bearer_auth(key)
        .header("tus-resumable", "1.0.0")
}

async fn tus_patch(c: &Cluster, path: &str, key: &str, offset: usize, data: &[u8]) -> Response {
    tus(c, Method::PATCH, path, key)
        .header("upload-offset", offset.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(data.to_vec())
        .send()
        .await
        .unwrap()
}

#[tokio::test]
#[ignore = "kills a Garage node: needs the three-node cluster that scripts/test.sh starts for it"]
async fn uploads_under_way_finish_on_three_instances_when_a_garage_node_dies() {
    // Parts of 5 MiB (the cluster's), requests through the balancer.
    let c = Cluster::start(3, &[]).await;
    let (account, key) = c.roomy_account(json!({})).await;

    // Streaming: 20 MiB, of which the first 10 MiB (a part stored).
    let streamed = fixtures::png(20 * MIB);
    let (tx, stream_answer) = open_stream(
        &c.client,
        c.lb.url("/upload/stream"),
        &key,
        "s.png",
        "image/png",
        streamed[..10 * MIB].to_vec(),
    )
    .await;
    eventually("the streaming upload has stored a part", || {
        a_part_is_stored(&c.control)
    })
    .await;

    // Presigned multipart: 16 MiB in two parts, the first one stored.
    let presigned = fixtures::mp4(16 * MIB);
    let resp = c
        .request(Method::POST, "/upload/presigned")
        .bearer_auth(&key)
        .json(&json!({"filename": "p.mp4", "content_type": "video/mp4",
                      "size": presigned.len(), "multipart": true}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let issued: Value = resp.json().await.unwrap();
    let part_size = issued["part_size"].as_u64().unwrap() as usize;
    let urls: Vec<String> = issued["parts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["url"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(urls.len(), 2, "two parts of {part_size}");
    let first_etag = put_part(&urls[0], &presigned[..part_size]).await;

    // Resumable: 16 MiB, the first 5 MiB (one whole part) stored.
    let resumable = fixtures::png(16 * MIB);
    let resp = tus(&c, Method::POST, "/upload/tus", &key)
        .header("upload-length", resumable.len().to_string())
        .header(
            "upload-metadata",
            metadata(&[("filename", "t.png"), ("filetype", "image/png")]),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let path = tus_path(&resp);
    const TUS_FIRST: usize = 5 * MIB;
    let resp = tus_patch(&c, &path, &key, 0, &resumable[..TUS_FIRST]).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    kill_victim(0).await;

    // Each upload goes on from where it stood, on the two nodes left, each
    // request to whichever instance the balancer picks.
    for chunk in streamed[10 * MIB..].chunks(256 * 1024) {
        tx.send(Ok(chunk.to_vec())).await.unwrap();
    }
    tx.send(Ok(STREAM_END.to_vec())).await.unwrap();
    drop(tx);
    let resp = tokio::time::timeout(Duration::from_secs(60), stream_answer)
        .await
        .expect("the streaming upload is answered")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "streaming");
    let stream_file: Value = resp.json().await.unwrap();

    let second_etag = put_part(&urls[1], &presigned[part_size..]).await;
    let resp = c
        .complete(
            &key,
            &issued,
            json!({"parts": [{"part_number": 1, "etag": first_etag},
                             {"part_number": 2, "etag": second_etag}]}),
        )
        .await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "presigned: {}",
        resp.text().await.unwrap()
    );
    let presigned_file: Value = resp.json().await.unwrap();

    let resp = tus_patch(&c, &path, &key, TUS_FIRST, &resumable[TUS_FIRST..]).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT, "resumable");
    let tus_file = resp.headers()["intake-file-id"]
        .to_str()
        .unwrap()
        .to_owned();

    // A new upload after the loss works too.
    let late = fixtures::png(300_000);
    let resp = c.upload(&key, "late.png", &late).await;
    assert_eq!(
        resp.status(),
        StatusCode::CREATED,
        "an upload after the loss"
    );
    let late_file: Value = resp.json().await.unwrap();

    // Nothing is lost: every file reads back whole from the two nodes left,
    // the account holds exactly these four files, objects and usage, and
    // reconcile finds no drift, no orphan and no missing object.
    for (id, data) in [
        (stream_file["id"].as_str().unwrap(), &streamed),
        (presigned_file["id"].as_str().unwrap(), &presigned),
        (tus_file.as_str(), &resumable),
        (late_file["id"].as_str().unwrap(), &late),
    ] {
        let back = download(
            c.request(Method::GET, &format!("/files/{id}/content"))
                .bearer_auth(&key),
        )
        .await;
        assert_eq!(
            Sha256::digest(&back),
            Sha256::digest(data),
            "file {id} reads back whole"
        );
    }
    c.assert_left_with(account, &key, 4).await;
    let expected = (streamed.len() + presigned.len() + resumable.len() + late.len()) as i64;
    assert_eq!(c.control.holdings(account).await.used, expected);
    assert!(
        c.lb.served().iter().all(|&n| n > 0),
        "every instance took requests"
    );
    c.reconcile().await;

    // A second node gone: no quorum, so storage cannot take the bytes. The
    // upload is answered 503 (retry later), not 500, and holds nothing.
    kill_victim(1).await;
    let (other, other_key) = c.roomy_account(json!({})).await;
    let resp = c
        .upload(&other_key, "lost.png", &fixtures::png(100_000))
        .await;
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    let h = c.control.settled(other).await;
    assert_eq!((h.files, h.used, h.reserved, h.leases), (0, 0, 0, 0));
    assert_eq!(
        c.control.holdings(account).await.files,
        4,
        "the recorded files stay recorded"
    );
}
