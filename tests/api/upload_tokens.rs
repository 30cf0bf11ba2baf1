//! Upload tokens: minting, listing and revoking them; the token as a caller
//! that opens only the upload routes and only its own uploads; its limits
//! on top of the account's on every upload path (stream, batch, presigned,
//! tus), at their edges and under concurrency; expiry and revocation in
//! the middle of uploads; the subject and metadata on its files.

use futures_util::future::join_all;
use reqwest::{Method, StatusCode};
use serde_json::{Value, json};

use crate::helpers::{
    Form, Holdings, TestApp, assert_problem,
    clients::{
        presign::{self, presign, put},
        stream::{channel_body, finish, open_stream},
        tus::{create, created, patch, tus},
    },
    eventually,
    fixtures::{TestAccount, pdf, png},
    spawn_app,
    tokens::TokenCounters,
};

/// The four upload paths a token opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Path {
    Stream,
    Batch,
    Presigned,
    Tus,
}

const PATHS: [Path; 4] = [Path::Stream, Path::Batch, Path::Presigned, Path::Tus];

/// What an upload came to: its file (`id` at least), or the status and
/// `code` it was refused with.
type Uploaded = Result<Value, (StatusCode, String)>;

async fn refusal(resp: reqwest::Response) -> (StatusCode, String) {
    let status = resp.status();
    let body: Value = resp.json().await.unwrap_or(Value::Null);
    (status, body["code"].as_str().unwrap_or_default().to_owned())
}

/// Uploads `data` as `name` of type `ct` through `path` with `cred`, the
/// way a client of that path does from start to end.
async fn upload_via(
    app: &TestApp,
    path: Path,
    cred: &str,
    name: &str,
    ct: &str,
    data: &[u8],
) -> Uploaded {
    match path {
        Path::Stream => {
            let resp = app.upload(cred, name, ct, data).await;
            if resp.status() != StatusCode::CREATED {
                return Err(refusal(resp).await);
            }
            Ok(resp.json().await.unwrap())
        }
        Path::Batch => {
            let form = Form::new().part("files", name, ct, data);
            let resp = app.upload_form("/upload/stream-batch", cred, form).await;
            if resp.status() != StatusCode::OK {
                return Err(refusal(resp).await);
            }
            let body: Value = resp.json().await.unwrap();
            let result = &body["results"][0];
            match result["status"].as_u64().unwrap() {
                201 => Ok(result["file"].clone()),
                status => Err((
                    StatusCode::from_u16(status as u16).unwrap(),
                    result["error"]["code"].as_str().unwrap().to_owned(),
                )),
            }
        }
        Path::Presigned => {
            let body = json!({"filename": name, "content_type": ct, "size": data.len()});
            let resp = presign(app, cred, body).await;
            if resp.status() != StatusCode::CREATED {
                return Err(refusal(resp).await);
            }
            let issued: Value = resp.json().await.unwrap();
            let stored = put(
                issued["url"].as_str().unwrap(),
                &issued["headers"],
                data.to_vec(),
            )
            .await;
            assert!(stored.is_success(), "PUT: {stored}");
            let id = issued["upload_id"].as_str().unwrap();
            let resp = presign::complete(app, cred, id, json!({})).await;
            if resp.status() != StatusCode::CREATED {
                return Err(refusal(resp).await);
            }
            Ok(resp.json().await.unwrap())
        }
        Path::Tus => {
            let meta = [("filename", name), ("filetype", ct)];
            let resp = create(app, cred, data.len() as u64, &meta).await;
            if resp.status() != StatusCode::CREATED {
                return Err(refusal(resp).await);
            }
            let at = crate::helpers::clients::tus::tus_path(&resp);
            let resp = patch(app, &at, cred, 0, data.to_vec()).await;
            if resp.status() != StatusCode::NO_CONTENT {
                return Err(refusal(resp).await);
            }
            let id = resp.headers()["intake-file-id"].to_str().unwrap();
            Ok(json!({"id": id}))
        }
    }
}

/// A STARTER account and its key, with room for a test's requests and
/// parallel uploads.
async fn roomy_account(app: &TestApp) -> (TestAccount, String) {
    let (account, key) = app.polling_account().await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"requests_per_minute": 100000, "concurrent_uploads": 50}}),
    )
    .await;
    (account, key)
}

/// Mints a token with `body`; returns its id and the token itself.
async fn token(app: &TestApp, key: &str, body: Value) -> (String, String) {
    let minted = app.mint(key, body).await;
    (
        minted["id"].as_str().unwrap().to_owned(),
        minted["token"].as_str().unwrap().to_owned(),
    )
}

/// The account has `files` files of `bytes` and holds nothing else, and the
/// bucket has as many objects.
async fn left_with(app: &TestApp, account: &TestAccount, files: i64, bytes: i64) {
    let held = app.settled(account.id).await;
    assert_eq!(held, Holdings::stored(files, bytes), "{held:?}");
    assert_eq!(app.objects(account.id).await.len() as i64, files, "objects");
}

#[tokio::test]
async fn minting_answers_the_token_once_and_lists_it_without() {
    let app = spawn_app().await;
    let (_, key) = app.account_with_key("starter").await;
    let minted = app
        .mint(
            &key,
            json!({"subject": "user-42", "expires_in": 600, "max_files": 3, "max_bytes": 1000,
                   "categories": ["image"], "metadata": {"plan": "pro"}}),
        )
        .await;
    let id = minted["id"].as_str().unwrap();
    let secret = minted["token"].as_str().unwrap();
    assert!(secret.starts_with(&format!("iut_{id}_")), "{minted}");
    assert_eq!(minted["subject"], "user-42");
    assert_eq!(
        (&minted["max_files"], &minted["max_bytes"]),
        (&json!(3), &json!(1000))
    );
    assert_eq!(minted["categories"], json!(["image"]));
    assert_eq!(minted["metadata"], json!({"plan": "pro"}));
    assert_eq!(
        (&minted["files_used"], &minted["bytes_used"]),
        (&json!(0), &json!(0))
    );
    let expires =
        chrono::DateTime::parse_from_rfc3339(minted["expires_at"].as_str().unwrap()).unwrap();
    let created =
        chrono::DateTime::parse_from_rfc3339(minted["created_at"].as_str().unwrap()).unwrap();
    assert_eq!((expires - created).num_seconds(), 600);

    // The defaults: an hour, every category, no limit of its own.
    let plain = app.mint(&key, json!({})).await;
    assert_eq!(plain["categories"], json!(["image", "document", "video"]));
    assert_eq!(
        (&plain["max_files"], &plain["subject"]),
        (&Value::Null, &Value::Null)
    );

    let listed: Value = app
        .get("/upload-tokens")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens = listed["upload_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{listed}");
    assert_eq!(tokens[0]["id"], minted["id"]);
    assert!(tokens.iter().all(|t| t.get("token").is_none()), "{listed}");

    // Metadata comes back as it was given, whatever JSON it holds.
    let odd = json!({"nul": "a\u{0}b", "big": 1.7976931348623157e308, "tiny": 5e-324});
    let minted_odd = app.mint(&key, json!({"metadata": odd})).await;
    assert_eq!(minted_odd["metadata"], odd);

    // An expired token is no longer listed.
    app.expire_token(id).await;
    let listed: Value = app
        .get("/upload-tokens")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let tokens = listed["upload_tokens"].as_array().unwrap();
    assert_eq!(tokens.len(), 2, "{listed}");
    assert_eq!(tokens[1]["metadata"], odd);
}

#[tokio::test]
async fn minting_holds_each_field_to_its_range_and_free_accounts_mint_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    for bad in [
        json!({"expires_in": 59}),
        json!({"expires_in": 21601}),
        json!({"max_files": 0}),
        json!({"max_bytes": 0}),
        json!({"categories": []}),
        json!({"categories": ["audio"]}),
        json!({"subject": "x".repeat(256)}),
        json!({"metadata": "not an object"}),
        json!({"metadata": {"blob": "x".repeat(4096)}}),
    ] {
        let resp = app.mint_answer(&key, bad.clone()).await;
        assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY, "invalid_request").await;
    }
    let count = app
        .scalar_i64(&format!(
            "SELECT count(*) FROM upload_tokens WHERE account_id = '{}'",
            account.id
        ))
        .await;
    assert_eq!(count, 0, "nothing minted");

    // FREE: with a session (a FREE account has no key).
    let free = app.account("free").await;
    let session = app.login(&free.email).await;
    let resp = app
        .with_session(Method::POST, "/upload-tokens", &session)
        .json(&json!({}))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::FORBIDDEN, "api_access_not_in_tier").await;
}

#[tokio::test]
async fn a_token_opens_only_the_upload_routes_and_counts_as_its_account() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let (_, tok) = token(&app, &key, json!({})).await;
    for (method, route) in [
        (Method::GET, "/files".to_owned()),
        (Method::GET, "/usage".to_owned()),
        (Method::GET, "/me".to_owned()),
        (Method::GET, "/upload-tokens".to_owned()),
        (Method::POST, "/upload-tokens".to_owned()),
        (Method::POST, "/chat".to_owned()),
        (Method::GET, "/api-keys".to_owned()),
        (Method::DELETE, format!("/files/{}", uuid::Uuid::now_v7())),
    ] {
        let resp = app
            .request(method.clone(), &route)
            .bearer_auth(&tok)
            .json(&json!({}))
            .send()
            .await
            .unwrap();
        // Every token request counts against the account's limit.
        assert_eq!(
            resp.headers()["x-ratelimit-limit"],
            "30",
            "{method} {route}"
        );
        assert_problem(resp, StatusCode::FORBIDDEN, "forbidden").await;
    }
    // The upload routes take it, and its requests spend the account's budget.
    let before = app.usage(&key).await["usage"]["requests"]["remaining"]
        .as_i64()
        .unwrap();
    let resp = app.upload(&tok, "a.png", "image/png", &png(1000)).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let remaining: i64 = resp.headers()["x-ratelimit-remaining"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    assert!(remaining < before, "{remaining} after {before}");

    // Unknown, malformed and revoked tokens are 401.
    let unknown = format!("iut_abcdefabcdef_{}", "0".repeat(64));
    for bad in [unknown.as_str(), "iut_short"] {
        let resp = app.upload(bad, "a.png", "image/png", &png(1000)).await;
        assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    }
    let (id, revoked) = token(&app, &key, json!({})).await;
    let resp = app
        .request(Method::DELETE, &format!("/upload-tokens/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = app.upload(&revoked, "a.png", "image/png", &png(1000)).await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    left_with(&app, &account, 1, 1000).await;
}

#[tokio::test]
async fn a_token_whose_account_moved_to_free_uploads_nothing() {
    let app = spawn_app().await;
    let (account, key) = app.account_with_key("starter").await;
    let (_, tok) = token(&app, &key, json!({})).await;
    app.patch_account(account.id, json!({"tier": "free"})).await;
    let resp = app.upload(&tok, "a.png", "image/png", &png(1000)).await;
    assert_problem(resp, StatusCode::FORBIDDEN, "api_access_not_in_tier").await;
    left_with(&app, &account, 0, 0).await;
}

/// A PNG of `len` bytes through `path` that the token refuses as spent:
/// 413 `upload_token_exhausted`.
async fn assert_exhausted(app: &TestApp, path: Path, tok: &str, name: &str, len: usize) {
    let refused = upload_via(app, path, tok, name, "image/png", &png(len)).await;
    let exhausted = (
        StatusCode::PAYLOAD_TOO_LARGE,
        "upload_token_exhausted".into(),
    );
    assert_eq!(refused.unwrap_err(), exhausted, "{path:?}");
}

/// What a token spent on two files of 1,000 bytes leaves, after the
/// `n`th path: its counters, and the account's files from every path so far.
async fn assert_two_files_spent(
    app: &TestApp,
    account: &TestAccount,
    id: &str,
    path: Path,
    n: usize,
) {
    let spent = TokenCounters::used(2, 2000);
    assert_eq!(app.token_counters(id).await, spent, "{path:?}");
    let files = 2 * (n as i64 + 1);
    left_with(app, account, files, files * 1000).await;
}

#[tokio::test]
async fn max_files_is_reached_exactly_then_refused_on_every_path() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    for (n, path) in PATHS.into_iter().enumerate() {
        let (id, tok) = token(&app, &key, json!({"max_files": 2})).await;
        for i in 0..2 {
            let name = format!("{i}.png");
            let done = upload_via(&app, path, &tok, &name, "image/png", &png(1000)).await;
            assert!(done.is_ok(), "{path:?} file {i}: {done:?}");
        }
        assert_exhausted(&app, path, &tok, "2.png", 1000).await;
        assert_two_files_spent(&app, &account, &id, path, n).await;
    }
}

#[tokio::test]
async fn max_bytes_is_reached_exactly_then_refused_on_every_path() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    for (n, path) in PATHS.into_iter().enumerate() {
        let (id, tok) = token(&app, &key, json!({"max_bytes": 2000})).await;
        let first = upload_via(&app, path, &tok, "a.png", "image/png", &png(1000)).await;
        assert!(first.is_ok(), "{path:?}: {first:?}");
        // One byte past what is left: refused, and nothing of it kept.
        assert_exhausted(&app, path, &tok, "b.png", 1001).await;
        assert_eq!(app.token_counters(&id).await, TokenCounters::used(1, 1000));
        // Exactly what is left: taken.
        let last = upload_via(&app, path, &tok, "c.png", "image/png", &png(1000)).await;
        assert!(last.is_ok(), "{path:?}: {last:?}");
        assert_exhausted(&app, path, &tok, "d.png", 100).await;
        assert_two_files_spent(&app, &account, &id, path, n).await;
    }
}

#[tokio::test]
async fn twenty_parallel_uploads_against_max_files_five_keep_exactly_five_on_every_path() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    for (n, path) in PATHS.into_iter().enumerate() {
        let (id, tok) = token(&app, &key, json!({"max_files": 5})).await;
        let data = png(4096);
        let uploads = (0..20).map(|i| {
            let (app, tok, data) = (&app, &tok, &data);
            async move {
                let name = format!("{i}.png");
                upload_via(app, path, tok, &name, "image/png", data).await
            }
        });
        let done = join_all(uploads).await;
        let kept = done.iter().filter(|d| d.is_ok()).count();
        assert_eq!(kept, 5, "{path:?}: {done:?}");
        for refused in done.iter().filter_map(|d| d.as_ref().err()) {
            assert_eq!(
                refused,
                &(
                    StatusCode::PAYLOAD_TOO_LARGE,
                    "upload_token_exhausted".to_owned()
                ),
                "{path:?}"
            );
        }
        assert_eq!(
            app.token_counters(&id).await,
            TokenCounters::used(5, 5 * 4096),
            "{path:?}"
        );
        let files = 5 * (n as i64 + 1);
        left_with(&app, &account, files, files * 4096).await;
    }
}

#[tokio::test]
async fn a_category_outside_the_token_is_refused_on_every_path() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (id, tok) = token(&app, &key, json!({"categories": ["image"]})).await;
    for path in PATHS {
        let refused = upload_via(&app, path, &tok, "a.pdf", "application/pdf", &pdf(2000)).await;
        assert_eq!(
            refused.unwrap_err(),
            (
                StatusCode::UNSUPPORTED_MEDIA_TYPE,
                "unsupported_media_type".into()
            ),
            "{path:?}"
        );
    }
    // A resumable upload that names no type is refused at its bytes, and
    // ended with everything it held.
    let at = created(&app, &tok, 2000, &[("filename", "notes")]).await;
    let resp = patch(&app, &at, &tok, 0, pdf(2000)).await;
    assert_problem(
        resp,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(0, 0));
    // The token's own category goes through on every path.
    for path in PATHS {
        let done = upload_via(&app, path, &tok, "a.png", "image/png", &png(1000)).await;
        assert!(done.is_ok(), "{path:?}: {done:?}");
    }
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(4, 4000));
    left_with(&app, &account, 4, 4000).await;
}

#[tokio::test]
async fn an_expired_token_starts_nothing_but_finishes_what_it_started() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (id, tok) = token(&app, &key, json!({})).await;
    let data = png(3000);
    let at = created(&app, &tok, 3000, &[("filename", "a.png")]).await;
    let resp = patch(&app, &at, &tok, 0, data[..1000].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let issued = presign::issue(
        &app,
        &tok,
        json!({"filename": "b.png", "content_type": "image/png", "size": 2000}),
    )
    .await;

    app.expire_token(&id).await;
    for path in PATHS {
        let refused = upload_via(&app, path, &tok, "c.png", "image/png", &png(1000)).await;
        assert_eq!(
            refused.unwrap_err(),
            (StatusCode::UNAUTHORIZED, "unauthorized".into()),
            "{path:?}"
        );
    }
    // Elsewhere too, an expired token is 401, not 403.
    let resp = app.get("/files").bearer_auth(&tok).send().await.unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // What it started goes on: the resumable upload to its last byte…
    let resp = tus(&app, Method::HEAD, &at, &tok).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = patch(&app, &at, &tok, 1000, data[1000..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert!(resp.headers().contains_key("intake-file-id"));
    // …and the presigned upload to its completion.
    let stored = put(
        issued["url"].as_str().unwrap(),
        &issued["headers"],
        png(2000),
    )
    .await;
    assert!(stored.is_success());
    let id_b = issued["upload_id"].as_str().unwrap();
    let resp = presign::complete(&app, &tok, id_b, json!({})).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(2, 5000));
    left_with(&app, &account, 2, 5000).await;
}

#[tokio::test]
async fn revoking_a_token_ends_its_uploads_at_once_and_gives_everything_back() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (id, tok) = token(&app, &key, json!({"max_bytes": 1_000_000})).await;
    // A resumable upload half sent, a presigned upload issued, a streamed
    // file whose bytes are all in (past what its type is decided on) but
    // whose body has not ended.
    let at = created(&app, &tok, 6000, &[("filename", "a.png")]).await;
    let resp = patch(&app, &at, &tok, 0, png(6000)[..3000].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let issued = presign::issue(
        &app,
        &tok,
        json!({"filename": "b.png", "content_type": "image/png", "size": 2000}),
    )
    .await;
    let stored = put(
        issued["url"].as_str().unwrap(),
        &issued["headers"],
        png(2000),
    )
    .await;
    assert!(stored.is_success());
    let (tx, streaming) = open_stream(
        &app.client,
        app.url("/upload/stream"),
        &tok,
        "c.png",
        "image/png",
        png(100_000),
    )
    .await;
    eventually("three uploads hold a file of the token each", || async {
        let held = app.token_counters(&id).await;
        (held.files_reserved, held.holds) == (3, 3)
    })
    .await;

    let resp = app
        .request(Method::DELETE, &format!("/upload-tokens/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);

    let resp = patch(&app, &at, &tok, 3000, png(6000)[3000..].to_vec()).await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let upload_id = issued["upload_id"].as_str().unwrap();
    let resp = presign::complete(&app, &tok, upload_id, json!({})).await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = finish(tx, streaming).await;
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;

    // The account sees its uploads ended.
    let resp = tus(&app, Method::HEAD, &at, &key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    let resp = presign::complete(&app, &key, upload_id, json!({})).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(0, 0));
    left_with(&app, &account, 0, 0).await;
    assert_eq!(app.every_object().await, Vec::<String>::new(), "the bucket");
    // Revoking again changes nothing.
    let resp = app
        .request(Method::DELETE, &format!("/upload-tokens/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
}

#[tokio::test]
async fn a_patch_writing_as_its_token_is_revoked_ends_its_upload_when_its_body_ends() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (id, tok) = token(&app, &key, json!({})).await;
    let at = created(&app, &tok, 6000, &[("filename", "a.png")]).await;
    let data = png(6000);
    let (tx, body) = channel_body();
    let patching = tokio::spawn(
        tus(&app, Method::PATCH, &at, &tok)
            .header("upload-offset", "0")
            .header("content-type", "application/offset+octet-stream")
            .body(body)
            .send(),
    );
    tx.send(Ok(data[..3000].to_vec())).await.unwrap();
    eventually("the PATCH holds the upload", || async {
        app.scalar_i64("SELECT count(*) FROM tus_uploads WHERE patch_token IS NOT NULL")
            .await
            == 1
    })
    .await;
    let resp = app
        .request(Method::DELETE, &format!("/upload-tokens/{id}"))
        .bearer_auth(&key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    // The revocation could not end the upload under its PATCH: the PATCH
    // ends it as its body ends.
    tx.send(Ok(data[3000..4000].to_vec())).await.unwrap();
    drop(tx);
    let resp = patching.await.unwrap().unwrap();
    assert_problem(resp, StatusCode::UNAUTHORIZED, "unauthorized").await;
    let resp = tus(&app, Method::HEAD, &at, &key).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::GONE);
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(0, 0));
    left_with(&app, &account, 0, 0).await;
    assert_eq!(app.every_object().await, Vec::<String>::new(), "the bucket");
}

#[tokio::test]
async fn uploads_the_reaper_ends_give_the_token_back_its_share() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (id, tok) = token(&app, &key, json!({"max_files": 2, "max_bytes": 5000})).await;
    created(&app, &tok, 2000, &[("filename", "a.png")]).await;
    presign::issue(
        &app,
        &tok,
        json!({"filename": "b.png", "content_type": "image/png", "size": 3000}),
    )
    .await;
    let held = app.token_counters(&id).await;
    assert_eq!(
        (held.files_reserved, held.bytes_reserved, held.holds),
        (2, 5000, 2)
    );
    let refused = upload_via(&app, Path::Stream, &tok, "c.png", "image/png", &png(100)).await;
    assert_eq!(refused.unwrap_err().1, "upload_token_exhausted");
    // Both uploads abandoned: their leases expire and the reaper (two at
    // once) ends them, giving the token back its share.
    sqlx::query("UPDATE upload_leases SET expires_at = now() - interval '1 second'")
        .execute(&app.state.db)
        .await
        .unwrap();
    let (a, b) = tokio::join!(intake::reap(&app.state), intake::reap(&app.state));
    assert_eq!(a.unwrap().0 + b.unwrap().0, 2);
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(0, 0));
    left_with(&app, &account, 0, 0).await;
    for name in ["d.png", "e.png"] {
        let done = upload_via(&app, Path::Stream, &tok, name, "image/png", &png(2500)).await;
        assert!(done.is_ok(), "{done:?}");
    }
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(2, 5000));
}

#[tokio::test]
async fn a_token_reaches_only_its_own_uploads() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (mine_token, mine) = token(&app, &key, json!({})).await;
    let (_, other) = token(&app, &key, json!({})).await;
    let of_mine = created(&app, &mine, 2000, &[("filename", "a.png")]).await;
    let of_account = created(&app, &key, 2000, &[("filename", "b.png")]).await;
    let issued_mine = presign::issue(
        &app,
        &mine,
        json!({"filename": "c.png", "content_type": "image/png", "size": 1000}),
    )
    .await;
    let issued_account = presign::issue(
        &app,
        &key,
        json!({"filename": "d.png", "content_type": "image/png", "size": 1000}),
    )
    .await;
    let (mine_id, account_id) = (
        issued_mine["upload_id"].as_str().unwrap(),
        issued_account["upload_id"].as_str().unwrap(),
    );
    // Another token's uploads, and the account's own: not found.
    for (cred, at, upload) in [
        (&other, &of_mine, mine_id),
        (&mine, &of_account, account_id),
    ] {
        for method in [Method::HEAD, Method::DELETE] {
            let resp = tus(&app, method.clone(), at, cred).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::NOT_FOUND, "{method} {at}");
        }
        let resp = patch(&app, at, cred, 0, png(2000)).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
        let resp = presign::complete(&app, cred, upload, json!({})).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
        let resp = presign::abort(&app, cred, upload).await;
        assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    }
    // The token's own, and the account (whose uploads they all are) too.
    let resp = tus(&app, Method::HEAD, &of_mine, &mine)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let resp = tus(&app, Method::HEAD, &of_mine, &key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    for (cred, at) in [(&mine, &of_mine), (&key, &of_account)] {
        let resp = tus(&app, Method::DELETE, at, cred).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    for (cred, upload) in [(&mine, mine_id), (&key, account_id)] {
        let resp = presign::abort(&app, cred, upload).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    }
    // Terminated and aborted, the token's uploads gave it back its share.
    assert_eq!(
        app.token_counters(&mine_token).await,
        TokenCounters::used(0, 0)
    );
    left_with(&app, &account, 0, 0).await;
}

#[tokio::test]
async fn files_carry_the_token_subject_and_metadata_and_list_by_subject() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (_, tok) = token(
        &app,
        &key,
        json!({"subject": "user-42", "metadata": {"album": 7, "tags": ["a"]}}),
    )
    .await;
    let (_, other) = token(&app, &key, json!({"subject": "user-43"})).await;
    let mut ids = Vec::new();
    for path in PATHS {
        let file = upload_via(&app, path, &tok, "a.png", "image/png", &png(1000))
            .await
            .unwrap();
        ids.push(file["id"].as_str().unwrap().to_owned());
    }
    upload_via(&app, Path::Stream, &other, "b.png", "image/png", &png(1000))
        .await
        .unwrap();
    let plain = upload_via(&app, Path::Stream, &key, "c.png", "image/png", &png(1000))
        .await
        .unwrap();
    assert_eq!(
        (&plain["subject"], &plain["metadata"]),
        (&Value::Null, &Value::Null)
    );

    let listed: Value = app
        .get("/files?subject=user-42")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let files = listed["files"].as_array().unwrap();
    let mut listed_ids: Vec<String> = files
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect();
    listed_ids.sort();
    ids.sort();
    assert_eq!(listed_ids, ids, "{listed}");
    for file in files {
        assert_eq!(file["subject"], "user-42");
        assert_eq!(file["metadata"], json!({"album": 7, "tags": ["a"]}));
    }
    let all: Value = app
        .get("/files")
        .bearer_auth(&key)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(all["files"].as_array().unwrap().len(), 6);
    left_with(&app, &account, 6, 6000).await;
}

#[tokio::test]
async fn a_batch_refused_as_a_whole_gives_its_files_back_to_the_token() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    app.patch_account(
        account.id,
        json!({"custom_limits": {"requests_per_minute": 100000, "concurrent_uploads": 50, "batch_size": 2}}),
    )
    .await;
    let (id, tok) = token(&app, &key, json!({"max_files": 10})).await;
    let resp = app
        .upload_form("/upload/stream-batch", &tok, Form::pngs(3, 1000))
        .await;
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE, "batch_too_large").await;
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(0, 0));
    left_with(&app, &account, 0, 0).await;
}

#[tokio::test]
async fn a_token_retries_safely_with_an_idempotency_key() {
    let app = spawn_app().await;
    let (account, key) = roomy_account(&app).await;
    let (id, tok) = token(&app, &key, json!({"max_files": 1})).await;
    let send = || {
        let form = Form::new()
            .part("file", "a.png", "image/png", &png(1000))
            .finish();
        app.post("/upload/stream")
            .bearer_auth(&tok)
            .header("idempotency-key", "retry-1")
            .header("content-type", form.content_type())
            .body(form.body)
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::CREATED);
    assert_eq!(again.headers()["idempotency-replayed"], "true");
    assert_eq!(app.token_counters(&id).await, TokenCounters::used(1, 1000));
    left_with(&app, &account, 1, 1000).await;
}
