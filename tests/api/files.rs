//! The files API: listing, search, pagination, ETags, content, delete, and
//! another account's files.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use crate::helpers::{Backend, Holdings, Relay, assert_problem, env, fixtures, spawn, spawn_app};

async fn upload_named(
    app: &crate::helpers::TestApp,
    key: &str,
    name: &str,
    ct: &str,
    data: &[u8],
) -> Value {
    let resp = app.upload(key, name, ct, data).await;
    assert_eq!(resp.status(), StatusCode::CREATED, "{name}");
    resp.json().await.unwrap()
}

#[tokio::test]
async fn listing_is_newest_first_filtered_searched_and_paged() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let mut ids = Vec::new();
    for (name, ct, data) in [
        ("Holiday_Beach.png", "image/png", fixtures::png(100)),
        ("budget.csv", "text/csv", fixtures::csv(3)),
        ("beach-video.mp4", "video/mp4", fixtures::mp4(1000)),
        ("50%_off.pdf", "application/pdf", fixtures::pdf(500)),
        ("notes.md", "text/markdown", b"# notes".to_vec()),
    ] {
        ids.push(
            upload_named(&app, &key, name, ct, &data).await["id"]
                .as_str()
                .unwrap()
                .to_owned(),
        );
    }
    let list = |q: &str| app.get(&format!("/files{q}")).bearer_auth(&key).send();

    let all: Value = list("").await.unwrap().json().await.unwrap();
    let got: Vec<&str> = all["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap())
        .collect();
    let mut newest_first = ids.clone();
    newest_first.reverse();
    assert_eq!(got, newest_first);
    assert!(all["next_cursor"].is_null());

    let docs: Value = list("?category=document")
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(docs["files"].as_array().unwrap().len(), 3);
    let beach: Value = list("?q=BEACH").await.unwrap().json().await.unwrap();
    let names: Vec<&str> = beach["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["filename"].as_str().unwrap())
        .collect();
    assert_eq!(names, ["beach-video.mp4", "Holiday_Beach.png"]);
    let percent: Value = list("?q=50%25_").await.unwrap().json().await.unwrap();
    assert_eq!(
        percent["files"].as_array().unwrap().len(),
        1,
        "% and _ match literally"
    );

    // Pages of two, following the cursor, cover every file once.
    let mut seen = Vec::new();
    let mut cursor = String::new();
    loop {
        let page: Value = list(&format!("?limit=2&cursor={cursor}"))
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        seen.extend(
            page["files"]
                .as_array()
                .unwrap()
                .iter()
                .map(|f| f["id"].as_str().unwrap().to_owned()),
        );
        match page["next_cursor"].as_str() {
            Some(c) => cursor = c.to_owned(),
            None => break,
        }
    }
    assert_eq!(seen, newest_first);

    for bad in [
        "?limit=0",
        "?limit=500",
        "?cursor=garbage",
        "?category=audio",
    ] {
        let resp = list(bad).await.unwrap();
        assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
}

#[tokio::test]
async fn etags_answer_304_until_something_changes() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let file = upload_named(&app, &key, "a.png", "image/png", &fixtures::png(100)).await;
    for path in [
        "/files".to_owned(),
        format!("/files/{}", file["id"].as_str().unwrap()),
    ] {
        let first = app.get(&path).bearer_auth(&key).send().await.unwrap();
        let etag = first.headers()["etag"].to_str().unwrap().to_owned();
        let again = app
            .get(&path)
            .bearer_auth(&key)
            .header("if-none-match", &etag)
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{path}");
        assert_eq!(again.headers()["etag"], etag.as_str());
        assert!(again.headers().get("x-ratelimit-limit").is_some());
        let other = app
            .get(&path)
            .bearer_auth(&key)
            .header("if-none-match", "\"other\"")
            .send()
            .await
            .unwrap();
        assert_eq!(other.status(), StatusCode::OK);
    }
    let list = app.get("/files").bearer_auth(&key).send().await.unwrap();
    let etag = list.headers()["etag"].to_str().unwrap().to_owned();
    upload_named(&app, &key, "b.png", "image/png", &fixtures::png(100)).await;
    let changed = app
        .get("/files")
        .bearer_auth(&key)
        .header("if-none-match", &etag)
        .send()
        .await
        .unwrap();
    assert_eq!(changed.status(), StatusCode::OK);
}

#[tokio::test]
async fn content_round_trips_as_an_attachment_on_both_backends() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (_, key) = app.account_with_key("starter").await;
        let data = fixtures::pdf(200_000);
        let file = upload_named(
            &app,
            &key,
            "Quarterly report é.pdf",
            "application/pdf",
            &data,
        )
        .await;
        let resp = app
            .get(&format!("/files/{}/content", file["id"].as_str().unwrap()))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let resp = match backend {
            Backend::S3 => {
                assert_eq!(resp.status(), StatusCode::FOUND);
                assert!(
                    resp.headers()["content-disposition"]
                        .to_str()
                        .unwrap()
                        .starts_with("attachment;")
                );
                let location = resp.headers()["location"].to_str().unwrap().to_owned();
                reqwest::get(location).await.unwrap()
            }
            Backend::Fs => resp,
        };
        assert_eq!(resp.status(), StatusCode::OK);
        let disposition = resp.headers()["content-disposition"]
            .to_str()
            .unwrap()
            .to_owned();
        assert_eq!(
            disposition,
            "attachment; filename=\"Quarterly report _.pdf\"; filename*=UTF-8''Quarterly%20report%20%C3%A9.pdf"
        );
        assert_eq!(
            resp.bytes().await.unwrap().as_ref(),
            data.as_slice(),
            "{backend:?}"
        );
    }
}

#[tokio::test]
async fn a_text_file_named_html_is_served_as_text_in_an_attachment_on_both_backends() {
    // Text to the sniffer (a page that starts with a tag is refused as
    // HTML), a page with a script to a browser that renders it.
    let page = b"Notes\n<script>alert(document.cookie)</script>\n";
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let file = upload_named(&app, &key, "x.html", "text/plain", page).await;
        assert_eq!(file["content_type"], "text/plain");
        let id = file["id"].as_str().unwrap();
        let resp = app
            .get(&format!("/files/{id}/content"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        let resp = match backend {
            Backend::S3 => {
                assert_eq!(resp.status(), StatusCode::FOUND);
                // Storage is told that the object is a page; the signed
                // GET still decides how it is answered.
                let object = format!("{}u/{}/{id}", app.prefix, account.id);
                crate::helpers::s3_client()
                    .await
                    .put_object()
                    .bucket(crate::helpers::S3_BUCKET)
                    .key(&object)
                    .content_type("text/html")
                    .body(page.to_vec().into())
                    .send()
                    .await
                    .unwrap();
                let location = resp.headers()["location"].to_str().unwrap().to_owned();
                let url = url::Url::parse(&location).unwrap();
                let signed: Vec<String> = url.query_pairs().map(|(k, _)| k.into_owned()).collect();
                for bound in ["response-content-type", "response-content-disposition"] {
                    assert!(signed.iter().any(|k| k == bound), "{bound} in {location}");
                }
                reqwest::get(location).await.unwrap()
            }
            Backend::Fs => {
                let headers = resp.headers();
                assert_eq!(headers["content-security-policy"], "sandbox");
                assert_eq!(headers["cross-origin-resource-policy"], "same-origin");
                resp
            }
        };
        assert_eq!(resp.status(), StatusCode::OK, "{backend:?}");
        let headers = resp.headers();
        assert_eq!(headers["content-type"], "text/plain", "{backend:?}");
        let disposition = headers["content-disposition"].to_str().unwrap();
        assert!(disposition.starts_with("attachment;"), "{disposition}");
        if backend == Backend::Fs {
            assert_eq!(headers["x-content-type-options"], "nosniff");
        }
        assert_eq!(resp.bytes().await.unwrap().as_ref(), page, "{backend:?}");
    }
}

#[tokio::test]
async fn delete_drops_usage_and_the_object() {
    for backend in [Backend::S3, Backend::Fs] {
        let app = spawn().backend(backend).start().await;
        let (account, key) = app.account_with_key("starter").await;
        let file = upload_named(&app, &key, "a.png", "image/png", &fixtures::png(4096)).await;
        let path = format!("/files/{}", file["id"].as_str().unwrap());
        let resp = app
            .request(Method::DELETE, &path)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
        assert_eq!(app.holdings(account.id).await, Holdings::NOTHING);
        assert!(app.objects(account.id).await.is_empty(), "{backend:?}");
        assert_problem(
            app.get(&path).bearer_auth(&key).send().await.unwrap(),
            StatusCode::NOT_FOUND,
            "not_found",
        )
        .await;
        let again = app
            .request(Method::DELETE, &path)
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_problem(again, StatusCode::NOT_FOUND, "not_found").await;
    }
}

#[tokio::test]
async fn a_delete_that_storage_refuses_is_retried_and_usage_is_right_at_once() {
    let proxy = Relay::to(&env("TEST_S3_ENDPOINT")).await;
    let app = spawn().var("S3_ENDPOINT", &proxy.addr).start().await;
    let (account, key) = app.account_with_key("starter").await;
    let file = upload_named(&app, &key, "a.png", "image/png", &fixtures::png(4096)).await;
    proxy.cut();
    let resp = app
        .request(
            Method::DELETE,
            &format!("/files/{}", file["id"].as_str().unwrap()),
        )
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(app.holdings(account.id).await, Holdings::NOTHING);
    assert_eq!(
        app.objects(account.id).await.len(),
        1,
        "storage was unreachable"
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM object_deletions")
            .await,
        1
    );
    proxy.restore();
    sqlx::query("UPDATE object_deletions SET next_attempt_at = now()")
        .execute(&app.state.db)
        .await
        .unwrap();
    let (_, objects) = intake::reap(&app.state).await.unwrap();
    assert_eq!(objects, 1);
    assert!(app.objects(account.id).await.is_empty());
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM object_deletions")
            .await,
        0
    );
}

#[tokio::test]
async fn another_accounts_files_are_not_found() {
    let app = spawn_app().await;
    let (_, owner) = app.account_with_key("starter").await;
    let (_, intruder) = app.account_with_key("starter").await;
    let file = upload_named(&app, &owner, "secret.png", "image/png", &fixtures::png(100)).await;
    let id = file["id"].as_str().unwrap();
    for (method, path) in [
        (Method::GET, format!("/files/{id}")),
        (Method::GET, format!("/files/{id}/content")),
        (Method::DELETE, format!("/files/{id}")),
    ] {
        let resp = app
            .request(method, &path)
            .bearer_auth(&intruder)
            .send()
            .await
            .unwrap();
        assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    let list: Value = app
        .get("/files")
        .bearer_auth(&intruder)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(list["files"].as_array().unwrap().is_empty());
    assert_eq!(
        app.get(&format!("/files/{id}"))
            .bearer_auth(&owner)
            .send()
            .await
            .unwrap()
            .status(),
        StatusCode::OK
    );
}

#[tokio::test]
async fn usage_reports_stored_bytes() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    upload_named(&app, &key, "a.png", "image/png", &fixtures::png(12_345)).await;
    let usage: Value = app
        .get("/usage")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["usage"]["storage_bytes"]["used"], 12_345);
    assert_eq!(usage["usage"]["storage_bytes"]["reserved"], 0);
    assert_eq!(usage["usage"]["concurrent_uploads"]["active"], 0);
}

#[tokio::test]
async fn a_cursor_with_an_out_of_range_timestamp_is_invalid_request() {
    use base64::Engine as _;
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let id = uuid::Uuid::now_v7();
    // chrono accepts these years; Postgres does not (before 4713 BC), and
    // i64::MAX is beyond chrono too.
    for micros in [-8_000_000_000_000_000_000_i64, i64::MAX] {
        let cursor =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(format!("{micros}.{id}"));
        let resp = app
            .get(&format!("/files?cursor={cursor}"))
            .bearer_auth(&key)
            .send()
            .await
            .unwrap();
        assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    }
    // The listing itself still answers.
    let resp = app.get("/files").bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}
