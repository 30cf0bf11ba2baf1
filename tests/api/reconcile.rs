//! `intake admin reconcile`: clean after every kind of upload, each kind of
//! drift found and repaired, and the same answer whatever the page size.

use intake::admin::reconcile::{self, Options};
use reqwest::StatusCode;
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Backend, Form, MIB, S3_BUCKET, TestApp,
    clients::{
        presign::{complete, issue, put, put_parts},
        tus::{created, patch},
    },
    env, fixtures, s3_client, spawn,
};

/// One in-process run, as JSON (the shape the command prints).
async fn run(app: &TestApp, opts: Options) -> Value {
    let report = reconcile::run(&app.state.db, app.state.store.as_ref(), &opts)
        .await
        .expect("reconcile runs");
    serde_json::to_value(report).unwrap()
}

fn paged(page_size: usize) -> Options {
    Options {
        page_size,
        ..Options::default()
    }
}

/// `intake admin reconcile <args>` against the app's schema and storage:
/// its exit code and its JSON.
async fn command(app: &TestApp, args: &[&str]) -> (i32, Value) {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_intake"));
    cmd.args(["admin", "reconcile"])
        .args(args)
        .env_clear()
        .env("DATABASE_URL", app.database_url())
        .env("JWT_SECRET", "test-jwt-secret-0123456789abcdefghijklmnop")
        .env("RUST_LOG", "warn");
    match app.backend {
        Backend::S3 => cmd
            .env("STORAGE_BACKEND", "s3")
            .env("S3_BUCKET", S3_BUCKET)
            .env("S3_ENDPOINT", env("TEST_S3_ENDPOINT"))
            .env("S3_REGION", crate::helpers::s3_region())
            .env("S3_ACCESS_KEY_ID", env("TEST_S3_ACCESS_KEY_ID"))
            .env("S3_SECRET_ACCESS_KEY", env("TEST_S3_SECRET_ACCESS_KEY"))
            .env("S3_KEY_PREFIX", &app.prefix),
        Backend::Fs => cmd
            .env("STORAGE_BACKEND", "fs")
            .env("FS_ROOT", app.fs_root.as_ref().unwrap().path()),
    };
    let out = cmd.output().await.expect("run intake");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json = serde_json::from_str(&stdout).unwrap_or_else(|_| {
        panic!(
            "not JSON: {stdout}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    });
    (out.status.code().unwrap_or(-1), json)
}

/// Writes an object straight into storage, behind intake's back.
async fn put_raw(app: &TestApp, key: &str, data: &[u8]) {
    match app.backend {
        Backend::S3 => {
            s3_client()
                .await
                .put_object()
                .bucket(S3_BUCKET)
                .key(format!("{}{key}", app.prefix))
                .body(data.to_vec().into())
                .send()
                .await
                .unwrap();
        }
        Backend::Fs => {
            let path = app.fs_root.as_ref().unwrap().path().join(key);
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(path, data).unwrap();
        }
    }
}

/// Removes an object straight from storage.
async fn delete_raw(app: &TestApp, key: &str) {
    match app.backend {
        Backend::S3 => {
            s3_client()
                .await
                .delete_object()
                .bucket(S3_BUCKET)
                .key(format!("{}{key}", app.prefix))
                .send()
                .await
                .unwrap();
        }
        Backend::Fs => {
            std::fs::remove_file(app.fs_root.as_ref().unwrap().path().join(key)).unwrap()
        }
    }
}

async fn exec(app: &TestApp, sql: &str) {
    sqlx::raw_sql(sql).execute(&app.state.db).await.unwrap();
}

async fn uploaded(app: &TestApp, key: &str, name: &str, data: &[u8]) -> String {
    let resp = app.upload(key, name, "", data).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: Value = resp.json().await.unwrap();
    file["id"].as_str().unwrap().to_owned()
}

fn keys_of(found: &Value) -> Vec<String> {
    let mut keys: Vec<String> = found["items"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o["key"].as_str().unwrap().to_owned())
        .collect();
    keys.sort();
    keys
}

#[tokio::test]
async fn reconcile_is_clean_after_uploads_of_every_kind_on_both_backends() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn()
            .backend(backend)
            .var("UPLOAD_PART_BYTES", &(5 * MIB).to_string())
            .start()
            .await;
        let (account, key) = app.account_with_key("starter").await;
        // Streaming: one file, a batch, and one deleted again.
        uploaded(&app, &key, "a.png", &fixtures::png(3000)).await;
        let form = Form::new()
            .part("files", "b.pdf", "", &fixtures::pdf(2000))
            .part("files", "c.csv", "text/csv", &fixtures::csv(40));
        let resp = app.upload_form("/upload/stream-batch", &key, form).await;
        assert_eq!(resp.status(), StatusCode::OK);
        let gone = uploaded(&app, &key, "d.png", &fixtures::png(1000)).await;
        let resp = app
            .request(reqwest::Method::DELETE, &format!("/files/{gone}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        let mut files = 3;

        // Presigned: one completed, one whose bytes are up but not completed.
        for completed in [true, false] {
            let data = fixtures::png(4000);
            let issued: Value = issue(
                &app,
                &key,
                json!({"filename": "p.png", "content_type": "image/png", "size": data.len()}),
            )
            .await;
            assert_eq!(
                put(issued["url"].as_str().unwrap(), &issued["headers"], data).await,
                StatusCode::OK
            );
            if completed {
                let id = issued["upload_id"].as_str().unwrap();
                assert_eq!(
                    complete(&app, &key, id, json!({})).await.status(),
                    StatusCode::CREATED
                );
                files += 1;
            }
        }
        if backend == Backend::S3 {
            let data = fixtures::mp4(9 * MIB);
            let issued: Value = issue(&app, &key, json!({"filename": "v.mp4", "content_type": "video/mp4", "size": data.len(), "multipart": true})).await;
            let parts = put_parts(&issued, &data).await;
            let id = issued["upload_id"].as_str().unwrap();
            assert_eq!(
                complete(&app, &key, id, json!({"parts": parts}))
                    .await
                    .status(),
                StatusCode::CREATED
            );
            files += 1;
        }

        // Resumable: one whole (two parts and a tail), one left open with a
        // tail of three segments (each PATCH under half the one before).
        let data = fixtures::png(2 * 5 * MIB + 777);
        let path = created(&app, &key, data.len() as u64, &[("filename", "r.png")]).await;
        let resp = patch(&app, &path, &key, 0, data.clone()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        files += 1;
        let open = created(&app, &key, 100_000, &[("filename", "open.png")]).await;
        let bytes = fixtures::png(100_000);
        for (from, to) in [(0, 50_000), (50_000, 51_000), (51_000, 51_100)] {
            let resp = patch(&app, &open, &key, from, bytes[from as usize..to].to_vec()).await;
            assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        }

        let objects = app.every_object().await;
        // In flight: the open resumable upload's three tail segments and,
        // on the local folder, the presigned upload's object not completed
        // yet (on S3 its bytes are a part of a multipart upload, not an
        // object).
        let in_flight = if backend == Backend::Fs { 4 } else { 3 };
        assert!(
            objects.iter().any(|k| k.starts_with("t/")) && objects.len() == files + in_flight,
            "{backend:?}: {files} files and {in_flight} in flight: {objects:?}"
        );
        for page in [1, 2, 1000] {
            let report = run(&app, paged(page)).await;
            assert_eq!(report["clean"], true, "{backend:?} page {page}: {report:#}");
            assert_eq!(report["checked"]["files"], files, "{report:#}");
            assert_eq!(report["checked"]["objects"], objects.len(), "{report:#}");
            assert!(report["checked"]["accounts"].as_u64().unwrap() >= 1);
            assert!(report.get("fixed").is_none());
        }
        // Still in flight after the checks: nothing was taken for an orphan.
        assert_eq!(
            app.holdings(account.id).await.leases,
            2,
            "two uploads in flight"
        );
        assert_eq!(app.every_object().await.len(), objects.len());
        let (code, report) = command(&app, &[]).await;
        assert_eq!((code, &report["clean"]), (0, &json!(true)), "{report:#}");
    }
}

#[tokio::test]
async fn each_kind_of_drift_is_reported_then_repaired_on_both_backends() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let a = fixtures::png(1000);
        let b = fixtures::pdf(2000);
        let c = fixtures::png(3000);
        uploaded(&app, &key, "a.png", &a).await;
        uploaded(&app, &key, "b.pdf", &b).await;
        let lost = uploaded(&app, &key, "c.png", &c).await;
        let stored = (a.len() + b.len() + c.len()) as i64;

        // Usage moved by hand.
        exec(&app, &format!(
            "UPDATE accounts SET storage_used_bytes = storage_used_bytes + 777,
                                 storage_reserved_bytes = storage_reserved_bytes + 55 WHERE id = '{}'",
            account.id
        ))
        .await;
        // Objects no row owns: one where a file would be, one anywhere.
        let orphan = format!("u/{}/{}", account.id, Uuid::now_v7());
        put_raw(&app, &orphan, b"left behind").await;
        put_raw(&app, "stray/thing.bin", &[7u8; 1234]).await;
        // A file whose object is gone.
        let lost_key = format!("u/{}/{lost}", account.id);
        delete_raw(&app, &lost_key).await;
        // A dead instance's lease, long expired, holding 500 bytes and an object.
        let leased = format!("u/{}/{}", account.id, Uuid::now_v7());
        put_raw(&app, &leased, b"half an upload").await;
        let lease = app
            .plant_lease(account.id, 500, &[("object_key", &leased)], "-1 hour")
            .await;

        let (code, report) = command(&app, &["--page-size", "2"]).await;
        assert_eq!(code, 1, "{report:#}");
        assert_eq!(report["clean"], false);
        assert_eq!(report["usage_drift"]["count"], 1, "{report:#}");
        assert_eq!(
            report["usage_drift"]["items"][0],
            json!({
                "account_id": account.id,
                "used": stored + 777,
                "files_bytes": stored,
                "reserved": 555,
                "leases_bytes": 500,
            })
        );
        assert_eq!(report["stuck_leases"]["count"], 1);
        let stuck = &report["stuck_leases"]["items"][0];
        assert_eq!(
            (&stuck["id"], &stuck["kind"], &stuck["reserved_bytes"]),
            (&json!(lease), &json!("stream"), &json!(500))
        );
        assert!(stuck["expired_secs"].as_f64().unwrap() >= 3600.0);
        assert_eq!(report["orphans"]["count"], 2);
        let mut want = vec![orphan.clone(), "stray/thing.bin".to_owned()];
        want.sort();
        assert_eq!(
            keys_of(&report["orphans"]),
            want,
            "the leased object is no orphan"
        );
        let sizes: Vec<u64> = report["orphans"]["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|o| o["size"].as_u64().unwrap())
            .collect();
        assert!(sizes.contains(&11) && sizes.contains(&1234), "{sizes:?}");
        assert_eq!(report["missing"]["count"], 1);
        assert_eq!(
            report["missing"]["items"][0],
            json!({"key": lost_key, "file_id": lost, "account_id": account.id, "size": c.len()})
        );
        assert_eq!(report["checked"]["files"], 3);
        assert!(report.get("fixed").is_none());
        // Reporting changed nothing, and any page size finds the same.
        let strip = |mut r: Value| {
            r["stuck_leases"]["items"][0]["expired_secs"] = Value::Null;
            r
        };
        for page in [1, 3, 1000] {
            assert_eq!(
                strip(run(&app, paged(page)).await),
                strip(report.clone()),
                "page {page}"
            );
        }

        // --fix without --forget-missing keeps the lost file's row.
        let (code, fixed) = command(&app, &["--fix"]).await;
        assert_eq!(code, 1, "drift was found: {fixed:#}");
        assert_eq!(
            fixed["fixed"],
            json!({"usage": 1, "orphans_queued": 2, "leases_ended": 1, "missing_forgotten": 0})
        );
        let h = app.holdings(account.id).await;
        assert_eq!((h.used, h.reserved, h.leases, h.files), (stored, 0, 0, 3));
        let (code, again) = command(&app, &[]).await;
        assert_eq!(code, 1);
        assert_eq!(
            (
                &again["usage_drift"]["count"],
                &again["orphans"]["count"],
                &again["stuck_leases"]["count"],
                &again["missing"]["count"]
            ),
            (&json!(0), &json!(0), &json!(0), &json!(1)),
            "{again:#}"
        );
        let (code, fixed) = command(&app, &["--fix", "--forget-missing"]).await;
        assert_eq!(code, 1);
        assert_eq!(fixed["fixed"]["missing_forgotten"], 1, "{fixed:#}");

        // A second run is clean, and the state is what it should be.
        let (code, clean) = command(&app, &[]).await;
        assert_eq!((code, &clean["clean"]), (0, &json!(true)), "{clean:#}");
        let kept = (a.len() + b.len()) as i64;
        assert_eq!(
            app.settled(account.id).await,
            crate::helpers::Holdings::stored(2, kept)
        );
        let mut objects = app.every_object().await;
        objects.sort();
        let mut files = app.objects(account.id).await;
        files.sort();
        assert_eq!(
            objects.len(),
            2,
            "orphans and the dead lease's object are gone: {objects:?}"
        );
        assert!(
            objects
                .iter()
                .all(|k| k.starts_with(&format!("u/{}/", account.id)))
        );
        assert_eq!(files.len(), 2);
        let queued: i64 = sqlx::query_scalar("SELECT count(*) FROM object_deletions")
            .fetch_one(&app.state.db)
            .await
            .unwrap();
        assert_eq!(queued, 0, "queued orphans were deleted at once");
    }
}

#[tokio::test]
async fn listings_come_in_pages_in_byte_order_on_both_backends() {
    use futures_util::TryStreamExt as _;
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        // A folder `a/` sorts after `a-c` and before `a0`, and `a/c/`
        // after `a/c-d`, as S3 sorts keys.
        for key in ["a0", "a/b", "a-c", "a/c-d", "a/c/z", "b", "A", "a/a"] {
            app.state
                .store
                .put(
                    key,
                    bytes::Bytes::from_static(b"x"),
                    "application/octet-stream",
                )
                .await
                .unwrap();
        }
        for page in [1, 2, 3, 100] {
            let pages: Vec<Vec<intake::storage::ListedObject>> =
                app.state.store.list(page).try_collect().await.unwrap();
            assert!(
                pages.iter().all(|p| p.len() <= page && !p.is_empty()),
                "{backend:?} {page}"
            );
            let keys: Vec<String> = pages.into_iter().flatten().map(|o| o.key).collect();
            assert_eq!(
                keys,
                ["A", "a-c", "a/a", "a/b", "a/c-d", "a/c/z", "a0", "b"],
                "{backend:?} page {page}"
            );
        }
    }
}
