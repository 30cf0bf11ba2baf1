//! Scale-out and faults: intake as several processes on one schema and one
//! bucket behind a round-robin load balancer. Every limit holds across them
//! exactly, and after `kill -9`, a storage outage, a database restart and a
//! graceful shutdown, `intake admin reconcile` finds no drift, no orphan
//! object and no stuck slot.

use std::{
    collections::HashMap,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Holdings, MIB, TestApp, assert_problem,
    clients::{
        stream::{channel_body, finish, open_stream, part_head},
        tus::{PART, created, offset_of, patch_when_free, stalled_patch, wait_for_offset},
    },
    cluster::Cluster,
    fixtures,
    processes::{PgServer, S3Server},
    within,
};

/// Waits (up to 30 s) until at least `n` of the account's uploads have a
/// part in storage (a multipart upload under way).
async fn parts_under_way(app: &TestApp, account: Uuid, n: i64) {
    let sql = format!(
        "SELECT count(*) FROM upload_leases WHERE account_id = '{account}' AND multipart_upload_id IS NOT NULL"
    );
    let reached = within(Duration::from_secs(30), || async {
        app.scalar_i64(&sql).await >= n
    })
    .await;
    assert!(reached, "{n} uploads with a part in storage");
}

#[tokio::test]
async fn three_instances_hold_a_starter_accounts_thirty_requests_a_minute_exactly() {
    let c = Cluster::start(3, &[]).await;
    let (_, key) = c.control.account_with_key("starter").await;
    let start = Instant::now();
    let answers =
        join_all((0..60).map(|_| c.request(Method::GET, "/me").bearer_auth(&key).send())).await;
    let elapsed = start.elapsed();
    let mut ok = 0;
    for resp in answers {
        let resp = resp.unwrap();
        assert_eq!(resp.headers()["x-ratelimit-limit"], "30");
        match resp.status() {
            StatusCode::OK => ok += 1,
            StatusCode::TOO_MANY_REQUESTS => {
                assert_problem(resp, StatusCode::TOO_MANY_REQUESTS, "rate_limited").await;
            }
            other => panic!("unexpected {other}"),
        }
    }
    // The burst is 30; one more request is earned every 2 s after it.
    let earned = (elapsed.as_secs_f64() / 2.0).floor() as usize;
    assert!(
        (30..=30 + earned).contains(&ok),
        "{ok} of 60 allowed in {elapsed:?}"
    );
    assert!(
        c.lb.served().iter().all(|&n| n >= 19),
        "every instance answered its share: {:?}",
        c.lb.served()
    );
}

#[tokio::test]
async fn three_instances_hold_twenty_upload_slots_exactly() {
    let c = Cluster::start(3, &[]).await;
    let (account, key) = c.roomy_account(json!({})).await;
    let opened = join_all((0..25).map(|i| {
        let (c, key) = (&c, &key);
        async move {
            open_stream(
                &c.client,
                c.lb.url("/upload/stream"),
                key,
                &format!("{i}.png"),
                "image/png",
                fixtures::png(64 * 1024),
            )
            .await
        }
    }))
    .await;
    // Five are refused at once; twenty hold their slots.
    let settled = within(Duration::from_secs(20), || async {
        opened.iter().filter(|(_, h)| h.is_finished()).count() == 5
            && c.control.holdings(account).await.leases == 20
    })
    .await;
    assert!(
        settled,
        "{} finished, {:?}",
        opened.iter().filter(|(_, h)| h.is_finished()).count(),
        c.control.holdings(account).await
    );
    assert_eq!(c.control.active(&key).await, 20);
    let mut created = 0;
    for (tx, handle) in opened {
        if handle.is_finished() {
            let resp = handle.await.unwrap().unwrap();
            assert_problem(
                resp,
                StatusCode::TOO_MANY_REQUESTS,
                "concurrent_upload_limit",
            )
            .await;
        } else {
            assert_eq!(finish(tx, handle).await.status(), StatusCode::CREATED);
            created += 1;
        }
    }
    assert_eq!(created, 20);
    c.assert_left_with(account, &key, 20).await;
    c.reconcile().await;
}

#[tokio::test]
async fn forty_uploads_racing_a_small_quota_across_instances_never_pass_it() {
    let c = Cluster::start(3, &[]).await;
    let size = 256 * 1024;
    let quota = 7 * size + size / 2;
    let (account, key) = c
        .roomy_account(json!({"storage_bytes": quota, "concurrent_uploads": 40}))
        .await;
    let data = fixtures::png(size);
    let answers = join_all((0..40).map(|i| {
        let (c, key, data) = (&c, &key, &data);
        async move { c.upload(key, &format!("{i}.png"), data).await }
    }))
    .await;
    let mut created = 0;
    for resp in answers {
        if resp.status() == StatusCode::CREATED {
            created += 1;
        } else {
            let body = assert_problem(
                resp,
                StatusCode::INSUFFICIENT_STORAGE,
                "storage_quota_exceeded",
            )
            .await;
            assert_eq!(body["limit"], quota);
        }
    }
    // Each file is smaller than a part, so it reserves its whole size at
    // once: exactly the seven that fit are stored.
    assert_eq!(created, 7, "{created} files stored");
    let h = c.control.settled(account).await;
    assert_eq!(h, Holdings::stored(created, created * size as i64));
    assert!(h.used as usize <= quota);
    c.assert_left_with(account, &key, created).await;
    c.reconcile().await;
}

#[tokio::test]
async fn the_reapers_of_three_instances_end_each_expired_lease_once() {
    let mut c = Cluster::start(3, &[]).await;
    let (account, key) = c.roomy_account(json!({})).await;
    // Six uploads on one instance, each with a part in storage.
    let mut open = Vec::new();
    for i in 0..6 {
        open.push(
            open_stream(
                &c.client,
                c.instances[0].url("/upload/stream"),
                &key,
                &format!("{i}.mp4"),
                "video/mp4",
                fixtures::mp4(6 * MIB),
            )
            .await,
        );
    }
    parts_under_way(&c.control, account, 6).await;
    c.instances[0].kill9().await;
    drop(open);
    c.control.leases_expired(account).await;
    // Three reaper passes at once from other processes, two in this one.
    let (cli, local) = tokio::join!(
        join_all((0..3).map(|_| c.reap())),
        join_all((0..2).map(|_| intake::reap(&c.control.state)))
    );
    let ended: u64 = cli.iter().map(|(l, _)| l).sum::<u64>()
        + local.into_iter().map(|r| r.unwrap().0).sum::<u64>();
    assert_eq!(ended, 6, "each lease ended once");
    c.assert_left_with(account, &key, 0).await;
    assert_eq!(
        c.control
            .scalar_i64("SELECT count(*) FROM object_deletions")
            .await,
        0
    );
    c.reconcile().await;
}

#[tokio::test]
async fn kill_9_mid_uploads_leaves_nothing_after_the_lease_ttl_and_one_reaper_pass() {
    let mut c = Cluster::start(2, &[]).await;
    let (account, key) = c.roomy_account(json!({})).await;
    let doomed = c.instances[0].url("");
    // Two streaming uploads, each with a part in storage.
    let mut streams = Vec::new();
    for i in 0..2 {
        streams.push(
            open_stream(
                &c.client,
                format!("{doomed}/upload/stream"),
                &key,
                &format!("{i}.mp4"),
                "video/mp4",
                fixtures::mp4(6 * MIB),
            )
            .await,
        );
    }
    // A batch: one whole small file, then a large one under way.
    let (batch_tx, body) = channel_body();
    let batch = tokio::spawn(
        c.client
            .post(format!("{doomed}/upload/stream-batch"))
            .bearer_auth(&key)
            .header("content-type", "multipart/form-data; boundary=open")
            .body(body)
            .send(),
    );
    let mut first = part_head("open", "files", "small.png", "image/png");
    first.extend(fixtures::png(1000));
    first.extend(b"\r\n");
    first.extend(part_head("open", "files", "big.mp4", "video/mp4"));
    batch_tx.send(Ok(first)).await.unwrap();
    for chunk in fixtures::mp4(6 * MIB).chunks(256 * 1024) {
        batch_tx.send(Ok(chunk.to_vec())).await.unwrap();
    }
    // A presigned upload issued by the doomed instance.
    let png = fixtures::png(50_000);
    let issued: Value = c
        .client
        .post(format!("{doomed}/upload/presigned"))
        .bearer_auth(&key)
        .json(&json!({"filename": "p.png", "content_type": "image/png", "size": png.len()}))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(issued["url"].is_string(), "{issued}");
    // A resumable upload with a PATCH in flight on it.
    let video = fixtures::mp4(2 * PART + 999);
    let path = created(
        &c.control,
        &key,
        video.len() as u64,
        &[("filename", "v.mp4")],
    )
    .await;
    let patch = stalled_patch(
        &c.client,
        format!("{doomed}{path}"),
        &key,
        0,
        video[..PART + 4096].to_vec(),
        video.len() as u64,
    );
    wait_for_offset(&c.control, &path, &key, PART as u64).await;
    parts_under_way(&c.control, account, 3).await;

    c.instances[0].kill9().await;
    for (_, handle) in streams {
        assert!(handle.await.unwrap().is_err(), "the connection broke");
    }
    assert!(batch.await.unwrap().is_err());
    drop(batch_tx);
    let _ = patch.await;

    // The presigned upload completes through the survivor.
    let put = c
        .client
        .put(issued["url"].as_str().unwrap())
        .headers(
            issued["headers"]
                .as_object()
                .unwrap()
                .iter()
                .filter(|(k, _)| k.as_str() != "content-length")
                .map(|(k, v)| (k.parse().unwrap(), v.as_str().unwrap().parse().unwrap()))
                .collect(),
        )
        .body(png)
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let done = c.complete(&key, &issued, json!({})).await;
    assert_eq!(done.status(), StatusCode::CREATED);
    // The resumable upload resumes from the part the dead instance stored.
    assert_eq!(offset_of(&c.control, &path, &key).await, PART as u64);
    let resp = patch_when_free(&c.control, &path, &key, PART as u64, &video[PART..]).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    c.control.leases_expired(account).await;
    let (ended, _) = c.reap().await;
    assert_eq!(ended, 3, "two streams and the batch");
    // The batch's first file was recorded before the kill, or not at all.
    let files = c.control.holdings(account).await.files;
    assert!((2..=3).contains(&files), "{files} files");
    c.assert_left_with(account, &key, files).await;
    c.reconcile().await;
}

#[tokio::test]
async fn storage_stopped_mid_upload_fails_it_with_503_and_recovers_without_a_restart() {
    let s3 = S3Server::start().await;
    let mut c = Cluster::start_with(&[&[], &[]], &[], Some(s3)).await;
    let (account, key) = c.roomy_account(json!({})).await;
    let before: Value = c
        .upload(&key, "before.png", &fixtures::png(10_000))
        .await
        .json()
        .await
        .unwrap();
    // A large upload with a part in storage when storage goes away.
    let (tx, handle) = c.movie(&key, "movie.mp4").await;
    parts_under_way(&c.control, account, 1).await;
    c.s3.as_mut().unwrap().stop().await;
    // Once intake has answered it reads no more, and the body may still be
    // held open on the way: a chunk nobody takes within a while ends the
    // sending, and the answer tells the rest.
    for chunk in fixtures::mp4(6 * MIB).chunks(256 * 1024) {
        match tokio::time::timeout(Duration::from_secs(10), tx.send(Ok(chunk.to_vec()))).await {
            Ok(Ok(())) => {}
            _ => break,
        }
    }
    let resp = finish(tx, handle).await;
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    // During the outage: uploads fail the same way, fast; deletes succeed
    // and are queued.
    let started = Instant::now();
    let resp = c.upload(&key, "during.png", &fixtures::png(10_000)).await;
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    assert!(started.elapsed() < Duration::from_secs(15));
    let resp = c
        .request(
            Method::DELETE,
            &format!("/files/{}", before["id"].as_str().unwrap()),
        )
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(c.control.settled(account).await, Holdings::NOTHING);
    assert!(
        c.control
            .scalar_i64("SELECT count(*) FROM object_deletions")
            .await
            >= 2,
        "the deleted file and the broken upload wait for storage"
    );

    c.s3.as_mut().unwrap().restart().await;
    // Without restarting intake, on every instance.
    for i in 0..2 {
        let resp = c
            .upload(&key, &format!("after{i}.png"), &fixtures::png(10_000))
            .await;
        assert_eq!(resp.status(), StatusCode::CREATED);
    }
    c.reap().await;
    assert_eq!(
        c.control
            .scalar_i64("SELECT count(*) FROM object_deletions")
            .await,
        0,
        "queued deletes are done"
    );
    c.assert_left_with(account, &key, 2).await;
    c.reconcile().await;
}

#[tokio::test]
async fn postgres_restarted_under_traffic_fails_cleanly_and_recovers_on_its_own() {
    let pg = PgServer::start().await;
    let c = Cluster::start_with(
        &[&[], &[("RATE_LIMIT_FAIL_OPEN", "false")]],
        &[("DATABASE_URL", &pg.url)],
        None,
    )
    .await;
    let (account, key) = c.roomy_account(json!({})).await;
    // Traffic on both instances: reads and small uploads, each answer
    // timed.
    let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let traffic = (0..4).map(|t| {
        let (client, key, stop) = (c.client.clone(), key.clone(), stop.clone());
        let url = c.lb.url("");
        tokio::spawn(async move {
            let mut seen: Vec<(u16, Duration)> = Vec::new();
            let mut n = 0;
            while !stop.load(std::sync::atomic::Ordering::SeqCst) {
                n += 1;
                let started = Instant::now();
                let req = if (n + t) % 3 == 0 {
                    let form = crate::helpers::Form::new()
                        .part("file", "t.png", "image/png", &fixtures::png(20_000))
                        .finish();
                    client
                        .post(format!("{url}/upload/stream"))
                        .header("content-type", form.content_type())
                        .body(form.body)
                } else {
                    client.get(format!("{url}/files"))
                };
                let status = req
                    .bearer_auth(&key)
                    .timeout(Duration::from_secs(30))
                    .send()
                    .await
                    .map_or(0, |r| r.status().as_u16());
                seen.push((status, started.elapsed()));
            }
            seen
        })
    });
    let traffic: Vec<_> = traffic.collect();
    assert!(
        within(Duration::from_secs(20), || async {
            c.control.holdings(account).await.files >= 1
        })
        .await,
        "traffic flows"
    );
    pg.down().await;
    // While it is down: 503 within the acquire timeout on both instances;
    // the anonymous limiter fails open on the first, closed on the second.
    for i in 0..2 {
        let started = Instant::now();
        let resp = c
            .at(i, Method::GET, "/me")
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
        assert!(
            started.elapsed() < Duration::from_secs(6),
            "{:?}",
            started.elapsed()
        );
    }
    let open = c.at(0, Method::GET, "/limits").send().await.unwrap();
    assert_eq!(open.status(), StatusCode::OK, "fails open");
    let closed = c.at(1, Method::GET, "/limits").send().await.unwrap();
    assert_problem(
        closed,
        StatusCode::SERVICE_UNAVAILABLE,
        "service_unavailable",
    )
    .await;
    pg.up().await;
    let recovered = within(Duration::from_secs(20), || async {
        let mut all = true;
        for i in 0..2 {
            all &= c
                .at(i, Method::GET, "/me")
                .bearer_auth(&key)
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK);
        }
        all
    })
    .await;
    assert!(recovered, "both instances answer again without a restart");
    // The test's own pool drops the connections the restart broke.
    for _ in 0..20 {
        let _ = sqlx::query("SELECT 1").execute(&c.control.state.db).await;
    }
    let limits = c.at(1, Method::GET, "/limits").send().await.unwrap();
    assert_eq!(limits.status(), StatusCode::OK);
    assert!(limits.headers().contains_key("x-ratelimit-limit"));
    stop.store(true, std::sync::atomic::Ordering::SeqCst);
    let mut by_status: HashMap<u16, usize> = HashMap::new();
    let mut slowest = Duration::ZERO;
    for t in traffic {
        for (status, took) in t.await.unwrap() {
            *by_status.entry(status).or_default() += 1;
            slowest = slowest.max(took);
        }
    }
    assert!(
        by_status.keys().all(|s| matches!(s, 200 | 201 | 503)),
        "answers during the restart: {by_status:?}"
    );
    assert!(by_status.get(&503).is_some_and(|&n| n > 0), "{by_status:?}");
    assert!(
        slowest < Duration::from_secs(10),
        "no request hung: the slowest took {slowest:?}"
    );
    // Uploads cut by the restart may have left leases: the reaper ends
    // them after their TTL, and nothing drifts.
    c.control.leases_expired(account).await;
    c.reap().await;
    let files = c.control.holdings(account).await.files;
    c.assert_left_with(account, &key, files).await;
    c.reconcile().await;
}

#[tokio::test]
async fn sigterm_lets_uploads_finish_within_the_grace_then_ends_the_rest_cleanly() {
    let mut c = Cluster::start(1, &[("SHUTDOWN_GRACE_SECS", "2")]).await;
    let (account, key) = c.roomy_account(json!({})).await;
    let url = c.instances[0].url("/upload/stream");
    let (quick_tx, quick) = open_stream(
        &c.client,
        url.clone(),
        &key,
        "quick.png",
        "image/png",
        fixtures::png(100_000),
    )
    .await;
    let (stuck_tx, stuck) = open_stream(
        &c.client,
        url,
        &key,
        "stuck.mp4",
        "video/mp4",
        fixtures::mp4(6 * MIB),
    )
    .await;
    assert!(
        within(Duration::from_secs(20), || async {
            c.control.holdings(account).await.leases == 2
        })
        .await
    );
    let signalled = Instant::now();
    c.instances[0].terminate();
    let port = c.instances[0].port;
    assert!(
        within(Duration::from_secs(5), || async {
            tokio::net::TcpStream::connect(("127.0.0.1", port))
                .await
                .is_err()
        })
        .await,
        "it stops accepting"
    );
    assert_eq!(finish(quick_tx, quick).await.status(), StatusCode::CREATED);
    let resp = stuck.await.unwrap().unwrap();
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "service_unavailable").await;
    drop(stuck_tx);
    let code = c.instances[0].exited_within(Duration::from_secs(10)).await;
    assert_eq!(code, Some(0), "{}", c.instances[0].log_tail());
    assert!(signalled.elapsed() < Duration::from_secs(10));
    c.assert_left_with(account, &key, 1).await;
    c.reconcile().await;
}

#[tokio::test]
async fn a_slow_client_keeps_its_lease_and_a_cut_one_gives_everything_back() {
    let c = Cluster::start(2, &[]).await;
    let (account, key) = c.roomy_account(json!({})).await;
    // 1 MiB at 256 KiB/s: four seconds, two lease lifetimes.
    c.lb.throttle(256 * 1024);
    let form = crate::helpers::Form::new()
        .part("file", "slow.png", "image/png", &fixtures::png(MIB))
        .finish();
    let slow = tokio::spawn(
        c.request(Method::POST, "/upload/stream")
            .bearer_auth(&key)
            .header("content-type", form.content_type())
            .body(form.body)
            .send(),
    );
    assert!(
        within(Duration::from_secs(10), || async {
            c.control.holdings(account).await.leases == 1
        })
        .await
    );
    // Past its first lifetime and more, still sending.
    assert!(
        within(Duration::from_secs(10), || async {
            c.control
                .scalar_i64(&format!(
                    "SELECT count(*) FROM upload_leases WHERE account_id = '{account}'
                     AND created_at < now() - interval '3 seconds'"
                ))
                .await
                == 1
        })
        .await
    );
    assert!(!slow.is_finished(), "still sending");
    let (ended, _) = c.reap().await;
    assert_eq!(ended, 0, "a renewed lease is not reaped");
    assert_eq!(slow.await.unwrap().unwrap().status(), StatusCode::CREATED);
    c.lb.throttle(0);
    // A client whose connection is cut mid-upload leaves nothing.
    let (tx, handle) = c.movie(&key, "cut.mp4").await;
    parts_under_way(&c.control, account, 1).await;
    c.lb.cut();
    assert!(handle.await.unwrap().is_err());
    drop(tx);
    c.lb.restore();
    c.assert_left_with(account, &key, 1).await;
    c.reconcile().await;
}

// Found by scripts/chaos.sh: after kill -9, queued deletions stayed queued
// for good, because s3s-fs refuses (403) the abort of a multipart upload it
// no longer has, and the queue took that refusal for a failure to retry.
#[tokio::test]
async fn a_dead_instances_upload_already_aborted_in_storage_leaves_no_queued_delete() {
    let app = crate::helpers::spawn_app().await;
    let (account, _) = app.account_with_key("starter").await;
    let object = format!("u/{}/{}", account.id, Uuid::now_v7());
    // The writer of the dead instance aborted its multipart upload; the
    // lease still names it, and an object sits under the key.
    let upload = app
        .state
        .store
        .create_multipart(&object, "video/mp4", false)
        .await
        .unwrap();
    app.state
        .store
        .abort_multipart(&object, &upload)
        .await
        .unwrap();
    app.state
        .store
        .put(&object, bytes::Bytes::from_static(b"partial"), "video/mp4")
        .await
        .unwrap();
    app.plant_lease(
        account.id,
        7,
        &[("object_key", &object), ("multipart_upload_id", &upload)],
        "-1 second",
    )
    .await;
    let (leases, _) = intake::reap(&app.state).await.unwrap();
    assert_eq!(leases, 1);
    assert_eq!(app.holdings(account.id).await, Holdings::NOTHING);
    assert!(app.objects(account.id).await.is_empty());
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM object_deletions")
            .await,
        0,
        "nothing left queued"
    );
}
