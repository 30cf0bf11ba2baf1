//! AI descriptions and chat against a stand-in provider (the harness's
//! `ai` module): a real HTTP server on 127.0.0.1 speaking the
//! chat-completions protocol, recording every request it gets and
//! answering from a script.

use std::time::{Duration, Instant};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use intake::ai::pdf::assemble;
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use crate::helpers::{
    Form, Session, TestApp,
    ai::{API_KEY, Gate, MODEL, Provider, Recorded, Reply, ai_app, png},
    assert_problem, eventually, fixtures,
    poll::poll,
    spawn,
};

// ---------------------------------------------------------------------------
// Helpers.

/// How a test's account reaches the API.
enum Auth {
    Key(String),
    Session(Session),
}

fn call(app: &TestApp, auth: &Auth, method: Method, path: &str) -> RequestBuilder {
    match auth {
        Auth::Key(key) => app.request(method, path).bearer_auth(key),
        Auth::Session(s) => app.with_session(method, path, s),
    }
}

async fn keyed(app: &TestApp, tier: &str) -> (Uuid, Auth) {
    let (account, key) = app.account_with_key(tier).await;
    (account.id, Auth::Key(key))
}

async fn upload(app: &TestApp, auth: &Auth, name: &str, ct: &str, data: &[u8]) -> String {
    let form = Form::new().part("file", name, ct, data).finish();
    let resp = call(app, auth, Method::POST, "/upload/stream")
        .header("content-type", form.content_type())
        .body(form.body)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED, "upload {name}");
    resp.json::<Value>().await.unwrap()["id"]
        .as_str()
        .unwrap()
        .to_owned()
}

async fn describe(app: &TestApp, auth: &Auth, file_id: &str) -> Response {
    call(
        app,
        auth,
        Method::POST,
        &format!("/files/{file_id}/describe"),
    )
    .send()
    .await
    .unwrap()
}

async fn chat(app: &TestApp, auth: &Auth, body: Value) -> Response {
    call(app, auth, Method::POST, "/chat")
        .json(&body)
        .send()
        .await
        .unwrap()
}

/// (AI descriptions used, chat messages used) as `GET /usage` shows them.
async fn used(app: &TestApp, auth: &Auth) -> (i64, i64) {
    let usage: Value = call(app, auth, Method::GET, "/usage")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    (
        usage["usage"]["ai_descriptions"]["used"].as_i64().unwrap(),
        usage["usage"]["chat_messages"]["used"].as_i64().unwrap(),
    )
}

/// Ids of the files `GET /files?q=` finds.
async fn search(app: &TestApp, auth: &Auth, q: &str) -> Vec<String> {
    let list: Value = call(app, auth, Method::GET, &format!("/files?q={q}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    list["files"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["id"].as_str().unwrap().to_owned())
        .collect()
}

async fn file(app: &TestApp, auth: &Auth, id: &str) -> Value {
    call(app, auth, Method::GET, &format!("/files/{id}"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap()
}

/// The user turn's text of a recorded request (joined text parts).
fn user_text(r: &Recorded) -> String {
    match &r.body["messages"][1]["content"] {
        Value::String(s) => s.clone(),
        Value::Array(parts) => parts
            .iter()
            .filter_map(|p| p["text"].as_str())
            .collect::<Vec<_>>()
            .join("\n"),
        other => panic!("unexpected content {other}"),
    }
}

/// A PNG whose header claims `width`×`height` (with valid checksums), and
/// no real pixels behind it.
fn png_claiming(width: u32, height: u32) -> Vec<u8> {
    fn crc32(bytes: &[u8]) -> u32 {
        let mut crc = !0u32;
        for &b in bytes {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0xEDB8_8320
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }
    fn chunk(out: &mut Vec<u8>, kind: &[u8], data: &[u8]) {
        out.extend_from_slice(&(data.len() as u32).to_be_bytes());
        let mut typed = kind.to_vec();
        typed.extend_from_slice(data);
        out.extend_from_slice(&typed);
        out.extend_from_slice(&crc32(&typed).to_be_bytes());
    }
    let mut out = b"\x89PNG\r\n\x1a\n".to_vec();
    let mut ihdr = Vec::new();
    ihdr.extend_from_slice(&width.to_be_bytes());
    ihdr.extend_from_slice(&height.to_be_bytes());
    ihdr.extend_from_slice(&[8, 2, 0, 0, 0]);
    chunk(&mut out, b"IHDR", &ihdr);
    chunk(
        &mut out,
        b"IDAT",
        &[0x78, 0x9c, 0x03, 0x00, 0x00, 0x00, 0x00, 0x01],
    );
    chunk(&mut out, b"IEND", &[]);
    out
}

/// A PDF of the given objects (numbered from 1, the first the catalog),
/// with a correct cross-reference table.
fn pdf(objects: &[String]) -> Vec<u8> {
    let objects: Vec<Vec<u8>> = objects.iter().map(|o| o.clone().into_bytes()).collect();
    assemble(&objects)
}

fn stream(content: &str) -> String {
    format!(
        "<< /Length {} >>\nstream\n{content}\nendstream",
        content.len()
    )
}

/// A one-page PDF showing `lines` in Helvetica.
fn text_pdf(lines: &[&str]) -> Vec<u8> {
    let mut content = String::from("BT /F1 12 Tf 72 720 Td 16 TL");
    for line in lines {
        content.push_str(&format!(" ({line}) Tj T*"));
    }
    content.push_str(" ET");
    pdf(&[
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Resources << /Font << /F1 4 0 R >> >> /Contents 5 0 R >>".into(),
        "<< /Type /Font /Subtype /Type1 /BaseFont /Helvetica /Encoding /WinAnsiEncoding >>".into(),
        stream(&content),
    ])
}

async fn this_month_set(app: &TestApp, account: Uuid, ai: i32, chat: i32) {
    sqlx::query(
        "INSERT INTO monthly_usage (account_id, month, ai_descriptions, chat_messages)
         VALUES ($1, date_trunc('month', now() AT TIME ZONE 'UTC')::date, $2, $3)
         ON CONFLICT (account_id, month) DO UPDATE SET ai_descriptions = $2, chat_messages = $3",
    )
    .bind(account)
    .bind(ai)
    .bind(chat)
    .execute(&app.state.db)
    .await
    .unwrap();
}

/// Seconds from the database clock to the first instant of next month (UTC).
async fn secs_to_next_month(app: &TestApp) -> i64 {
    app.scalar_i64(
        "SELECT ceil(extract(epoch FROM
            ((date_trunc('month', now() AT TIME ZONE 'UTC') + interval '1 month') AT TIME ZONE 'UTC') - now()))::int8",
    )
    .await
}

// ---------------------------------------------------------------------------
// What the provider is sent.

#[tokio::test]
async fn describe_sends_a_downscaled_image_with_key_and_model_and_stores_the_answer() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let id = upload(&app, &auth, "harbour.png", "image/png", &png(3000, 1200)).await;
    provider.then(Reply::Text(
        "A lighthouse on a rocky harbour wall at dusk.".into(),
    ));

    let resp = describe(&app, &auth, &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    assert_eq!(
        body,
        json!({"file_id": id, "description": "A lighthouse on a rocky harbour wall at dusk.", "model": MODEL})
    );

    let requests = provider.requests();
    assert_eq!(requests.len(), 1);
    let r = &requests[0];
    assert_eq!(r.path, "/v1/chat/completions");
    assert_eq!(
        r.authorization.as_deref(),
        Some(&*format!("Bearer {API_KEY}"))
    );
    assert_eq!(r.body["model"], MODEL);
    let parts = r.body["messages"][1]["content"].as_array().unwrap();
    let url = parts.iter().find(|p| p["type"] == "image_url").unwrap()["image_url"]["url"]
        .as_str()
        .unwrap();
    let (head, b64) = url.split_once(";base64,").unwrap();
    assert!(head.starts_with("data:image/"), "{head}");
    let sent = image::load_from_memory(&STANDARD.decode(b64).unwrap()).unwrap();
    assert_eq!(sent.width(), 1568, "longest side at AI_IMAGE_MAX_PIXELS");
    assert!(
        (626..=628).contains(&sent.height()),
        "aspect kept: {}",
        sent.height()
    );

    let f = file(&app, &auth, &id).await;
    assert_eq!(
        f["description"],
        "A lighthouse on a rocky harbour wall at dusk."
    );
    // The contract's field order, as the bytes come.
    let raw = call(&app, &auth, Method::GET, &format!("/files/{id}"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    let at: Vec<usize> = [
        "id",
        "filename",
        "content_type",
        "category",
        "size",
        "sha256",
        "description",
        "created_at",
    ]
    .iter()
    .map(|k| raw.find(&format!("\"{k}\":")).unwrap())
    .collect();
    assert!(at.windows(2).all(|w| w[0] < w[1]), "{raw}");
    assert_eq!(used(&app, &auth).await, (1, 0));
}

#[tokio::test]
async fn describe_sends_the_extracted_text_of_a_pdf_and_a_txt_cut_at_the_bound() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[("AI_MAX_INPUT_CHARS", "2000")]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let pdf_id = upload(
        &app,
        &auth,
        "harvest.pdf",
        "application/pdf",
        &text_pdf(&["Quarterly harvest report", "Apples picked: 1200 kg"]),
    )
    .await;
    let mut notes = String::from("Minutes of the rowing club meeting.\n");
    while notes.len() < 5000 {
        notes.push_str("Oars were counted again. ");
    }
    notes.push_str("THE-END-MARKER");
    let txt_id = upload(&app, &auth, "minutes.txt", "text/plain", notes.as_bytes()).await;

    assert_eq!(
        describe(&app, &auth, &pdf_id).await.status(),
        StatusCode::OK
    );
    assert_eq!(
        describe(&app, &auth, &txt_id).await.status(),
        StatusCode::OK
    );
    let requests = provider.requests();
    let pdf_text = user_text(&requests[0]);
    assert!(pdf_text.contains("Quarterly harvest report"), "{pdf_text}");
    assert!(pdf_text.contains("Apples picked: 1200 kg"), "{pdf_text}");
    let txt_text = user_text(&requests[1]);
    assert!(txt_text.contains("Minutes of the rowing club meeting."));
    assert!(
        !txt_text.contains("THE-END-MARKER"),
        "text is cut at AI_MAX_INPUT_CHARS"
    );
    assert!(txt_text.contains(&notes[..2000]));
    assert_eq!(used(&app, &auth).await, (2, 0));
}

#[tokio::test]
async fn description_search_finds_the_file_and_describing_again_replaces_it() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let id = upload(&app, &auth, "IMG_0042.png", "image/png", &png(40, 30)).await;
    upload(&app, &auth, "other.txt", "text/plain", b"nothing here").await;
    provider.then(Reply::Text("Two otters floating on their backs.".into()));
    assert_eq!(describe(&app, &auth, &id).await.status(), StatusCode::OK);

    assert_eq!(search(&app, &auth, "OTTERS").await, [id.as_str()]);
    assert_eq!(
        search(&app, &auth, "img_0042").await,
        [id.as_str()],
        "filenames still match"
    );

    provider.then(Reply::Text("A heron standing in reeds.".into()));
    assert_eq!(describe(&app, &auth, &id).await.status(), StatusCode::OK);
    assert_eq!(search(&app, &auth, "heron").await, [id.as_str()]);
    assert!(
        search(&app, &auth, "otters").await.is_empty(),
        "the old description is gone"
    );
    assert_eq!(
        used(&app, &auth).await,
        (2, 0),
        "describing again counts again"
    );
}

// ---------------------------------------------------------------------------
// Quota.

#[tokio::test]
async fn free_tier_fifteenth_describe_passes_and_the_sixteenth_is_429_until_next_month() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let account = app.account("free").await;
    let auth = Auth::Session(app.login(&account.email).await);
    let id = upload(&app, &auth, "note.md", "text/markdown", b"# A note").await;
    for n in 1..=15 {
        let resp = describe(&app, &auth, &id).await;
        assert_eq!(resp.status(), StatusCode::OK, "describe {n}");
    }
    let resp = describe(&app, &auth, &id).await;
    let retry_after: i64 = resp.headers()["retry-after"]
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    let body = assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "monthly_quota_exceeded",
    )
    .await;
    assert_eq!(
        (body["limit"].clone(), body["used"].clone()),
        (json!(15), json!(15))
    );
    let expected = secs_to_next_month(&app).await;
    assert!(
        (retry_after - expected).abs() <= 5,
        "Retry-After {retry_after} s is the time to next month ({expected} s)"
    );
    assert_eq!(body["retry_after"], json!(retry_after));
    assert_eq!(
        provider.requests().len(),
        15,
        "the 16th never reached the provider"
    );
    let usage: Value = call(&app, &auth, Method::GET, "/usage")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(usage["usage"]["ai_descriptions"]["used"], 15);
    assert_eq!(usage["limits"]["ai_descriptions_per_month"], 15);
    let resets_at = chrono::DateTime::parse_from_rfc3339(
        usage["usage"]["ai_descriptions"]["resets_at"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    let now = chrono::Utc::now();
    assert!(resets_at > now && resets_at.format("%d %H:%M:%S").to_string() == "01 00:00:00");
}

#[tokio::test]
async fn twenty_concurrent_describes_three_below_the_limit_give_exactly_three() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (account, auth) = keyed(&app, "professional").await;
    let id = upload(&app, &auth, "a.txt", "text/plain", b"short text").await;
    this_month_set(&app, account, 2_497, 0).await;

    let tasks = (0..20).map(|_| describe(&app, &auth, &id));
    let statuses: Vec<StatusCode> = futures_util::future::join_all(tasks)
        .await
        .into_iter()
        .map(|r| r.status())
        .collect();
    let ok = statuses.iter().filter(|s| **s == StatusCode::OK).count();
    let refused = statuses
        .iter()
        .filter(|s| **s == StatusCode::TOO_MANY_REQUESTS)
        .count();
    assert_eq!((ok, refused), (3, 17), "{statuses:?}");
    assert_eq!(used(&app, &auth).await, (2_500, 0));
    assert_eq!(provider.requests().len(), 3);
}

#[tokio::test]
async fn provider_500_timeout_and_malformed_answers_each_refund_and_answer_503() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[("AI_TIMEOUT_SECS", "2")]).await;
    let (_, auth) = keyed(&app, "professional").await;
    let id = upload(&app, &auth, "a.txt", "text/plain", b"some text").await;
    let before = app.metrics().await;

    for (what, replies, calls) in [
        (
            "500 twice (retried once)",
            vec![Reply::Status(500, Some("0")), Reply::Status(500, Some("0"))],
            2,
        ),
        ("a timeout", vec![Reply::Hang], 1),
        ("a malformed answer", vec![Reply::Malformed], 1),
    ] {
        let before = provider.requests().len();
        for r in replies {
            provider.then(r);
        }
        let started = Instant::now();
        let resp = describe(&app, &auth, &id).await;
        assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "ai_unavailable").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "{what}: bounded by AI_TIMEOUT_SECS"
        );
        assert_eq!(provider.requests().len() - before, calls, "{what}");
        assert_eq!(used(&app, &auth).await, (0, 0), "{what}: refunded");
        assert!(
            file(&app, &auth, &id).await["description"].is_null(),
            "{what}"
        );
    }

    provider.then(Reply::Status(503, None));
    provider.then(Reply::Status(502, None));
    let resp = chat(&app, &auth, json!({"message": "hello"})).await;
    assert_problem(resp, StatusCode::SERVICE_UNAVAILABLE, "ai_unavailable").await;
    assert_eq!(used(&app, &auth).await, (0, 0), "chat refunded too");

    // Other tests only add to these series: each grew at least by what
    // this test did (three failed describes, one failed chat, each
    // refunded).
    let after = app.metrics().await;
    for (operation, outcome) in [
        ("describe", "http_error"),
        ("describe", "timeout"),
        ("describe", "malformed"),
        ("chat", "http_error"),
    ] {
        assert!(
            after.grew(
                &before,
                "intake_ai_calls_total",
                &[("operation", operation), ("outcome", outcome)]
            ) >= 1.0,
            "{operation} {outcome} counted"
        );
    }
    for (counter, refunds) in [("ai_descriptions", 3.0), ("chat_messages", 1.0)] {
        assert!(
            after.grew(&before, "intake_ai_refunds_total", &[("counter", counter)]) >= refunds,
            "{counter} refunds counted"
        );
    }
    for (operation, calls) in [("describe", 3.0), ("chat", 1.0)] {
        assert!(
            after.grew(
                &before,
                "intake_ai_provider_duration_seconds_count",
                &[("operation", operation)]
            ) >= calls,
            "{operation} durations recorded"
        );
    }
}

/// Waits until the server has seen the client of an `operation` request go
/// away before its answer.
async fn client_gone_seen(
    app: &TestApp,
    before: &crate::helpers::metrics::Metrics,
    operation: &str,
) {
    eventually("the server sees the client gone", || async {
        app.metrics().await.grew(
            before,
            "intake_ai_clients_gone_total",
            &[("operation", operation)],
        ) >= 1.0
    })
    .await;
}

#[tokio::test]
async fn a_chat_whose_client_went_away_once_the_provider_had_it_stays_counted() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[("AI_CONCURRENCY_PER_ACCOUNT", "1")]).await;
    let (_, auth) = keyed(&app, "starter").await;
    provider.then(Reply::Hang);
    let before = app.metrics().await;
    let client = tokio::spawn(
        call(&app, &auth, Method::POST, "/chat")
            .json(&json!({"message": "hello"}))
            .send(),
    );
    eventually("the provider has the chat", || async {
        provider.requests().len() == 1
    })
    .await;
    client.abort();
    client_gone_seen(&app, &before, "chat").await;
    assert_eq!(
        used(&app, &auth).await,
        (0, 1),
        "the unit stays used once the provider has the request"
    );
    // The call ended with its request: the account's one AI call is free.
    let next = poll(Duration::from_secs(10), || async {
        let resp = chat(&app, &auth, json!({"message": "again"})).await;
        (resp.status() == StatusCode::OK).then_some(())
    })
    .await;
    assert!(next.is_some(), "the next chat is served");
    assert_eq!(used(&app, &auth).await, (0, 2));
}

#[tokio::test]
async fn a_describe_whose_client_went_away_still_stores_its_description() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let id = upload(
        &app,
        &auth,
        "minutes.txt",
        "text/plain",
        b"The rowing club met.",
    )
    .await;
    let gate = Gate::new();
    provider.then(gate.held("Minutes of a rowing club meeting."));
    let before = app.metrics().await;
    let client =
        tokio::spawn(call(&app, &auth, Method::POST, &format!("/files/{id}/describe")).send());
    eventually("the provider has the describe", || async {
        provider.requests().len() == 1
    })
    .await;
    client.abort();
    client_gone_seen(&app, &before, "describe").await;
    gate.open();
    eventually("the description is stored", || async {
        file(&app, &auth, &id).await["description"] == "Minutes of a rowing club meeting."
    })
    .await;
    assert_eq!(search(&app, &auth, "rowing%20club").await, [id.as_str()]);
    assert_eq!(used(&app, &auth).await, (1, 0), "counted once");
    assert_eq!(provider.requests().len(), 1);
}

#[tokio::test]
async fn every_provider_request_carries_max_tokens() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let id = upload(&app, &auth, "a.png", "image/png", &png(40, 30)).await;
    assert_eq!(describe(&app, &auth, &id).await.status(), StatusCode::OK);
    assert_eq!(
        chat(&app, &auth, json!({"message": "hi"})).await.status(),
        StatusCode::OK
    );
    let capped = ai_app(&provider, &[("AI_MAX_OUTPUT_TOKENS", "256")]).await;
    let (_, other) = keyed(&capped, "starter").await;
    assert_eq!(
        chat(&capped, &other, json!({"message": "hi"}))
            .await
            .status(),
        StatusCode::OK
    );
    let sent: Vec<Value> = provider
        .requests()
        .iter()
        .map(|r| r.body["max_tokens"].clone())
        .collect();
    assert_eq!(sent, [json!(1024), json!(1024), json!(256)]);
    assert_eq!(used(&app, &auth).await, (1, 1));
}

#[tokio::test]
async fn a_third_ai_call_of_an_account_at_once_is_429_on_any_instance_and_counts_nothing() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let second = app.second_instance().await;
    let (_, auth) = keyed(&app, "professional").await;
    let (_, other) = keyed(&app, "professional").await;
    let id = upload(&app, &auth, "a.txt", "text/plain", b"some text").await;
    let gate = Gate::new();
    provider
        .then(gate.held("First."))
        .then(gate.held("Second."));
    let running: Vec<_> = (0..2)
        .map(|_| {
            tokio::spawn(
                call(&app, &auth, Method::POST, "/chat")
                    .json(&json!({"message": "hello"}))
                    .send(),
            )
        })
        .collect();
    eventually("the provider has both chats", || async {
        provider.requests().len() == 2
    })
    .await;

    for (what, resp) in [
        (
            "a chat",
            chat(&second, &auth, json!({"message": "third"})).await,
        ),
        ("a describe", describe(&second, &auth, &id).await),
        (
            "a chat here",
            chat(&app, &auth, json!({"message": "third"})).await,
        ),
    ] {
        assert!(resp.headers().contains_key("retry-after"), "{what}");
        let body = assert_problem(
            resp,
            StatusCode::TOO_MANY_REQUESTS,
            "concurrent_request_limit",
        )
        .await;
        assert_eq!(body["limit"], 2, "{what}");
    }
    assert_eq!(used(&app, &auth).await, (0, 2), "refusals count nothing");
    assert_eq!(provider.requests().len(), 2, "nor reach the provider");

    // Another account is not held back.
    assert_eq!(
        chat(&second, &other, json!({"message": "hi"}))
            .await
            .status(),
        StatusCode::OK
    );
    gate.open();
    for task in running {
        assert_eq!(task.await.unwrap().unwrap().status(), StatusCode::OK);
    }
    // Both ended: the account may call again.
    assert_eq!(describe(&second, &auth, &id).await.status(), StatusCode::OK);
    assert_eq!(used(&app, &auth).await, (1, 2));
    assert_eq!(used(&app, &other).await, (0, 1));
}

#[tokio::test]
async fn provider_429_then_200_succeeds_after_one_retry_honouring_retry_after() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let id = upload(&app, &auth, "a.txt", "text/plain", b"some text").await;
    provider.then(Reply::Status(429, Some("1")));
    provider.then(Reply::Text("Retried and answered.".into()));
    let started = Instant::now();
    let resp = describe(&app, &auth, &id).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert!(
        started.elapsed() >= Duration::from_secs(1),
        "waited the provider's Retry-After"
    );
    assert_eq!(
        resp.json::<Value>().await.unwrap()["description"],
        "Retried and answered."
    );
    assert_eq!(provider.requests().len(), 2);
    assert_eq!(used(&app, &auth).await, (1, 0));
}

#[tokio::test]
async fn moving_the_counters_into_last_month_gives_a_fresh_quota() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (account, auth) = keyed(&app, "starter").await;
    app.patch_account(
        account,
        json!({"custom_limits": {"ai_descriptions_per_month": 1, "chat_messages_per_month": 1}}),
    )
    .await;
    let id = upload(&app, &auth, "a.txt", "text/plain", b"some text").await;
    assert_eq!(describe(&app, &auth, &id).await.status(), StatusCode::OK);
    assert_eq!(
        chat(&app, &auth, json!({"message": "hi"})).await.status(),
        StatusCode::OK
    );
    assert_problem(
        describe(&app, &auth, &id).await,
        StatusCode::TOO_MANY_REQUESTS,
        "monthly_quota_exceeded",
    )
    .await;
    assert_problem(
        chat(&app, &auth, json!({"message": "hi"})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "monthly_quota_exceeded",
    )
    .await;

    sqlx::query(
        "UPDATE monthly_usage SET month = (month - interval '1 month')::date WHERE account_id = $1",
    )
    .bind(account)
    .execute(&app.state.db)
    .await
    .unwrap();
    assert_eq!(
        used(&app, &auth).await,
        (0, 0),
        "a new month starts at zero"
    );
    assert_eq!(describe(&app, &auth, &id).await.status(), StatusCode::OK);
    assert_eq!(
        chat(&app, &auth, json!({"message": "hi"})).await.status(),
        StatusCode::OK
    );
    assert_eq!(used(&app, &auth).await, (1, 1));
    let last_month: i64 = app
        .scalar_i64(&format!(
            "SELECT ai_descriptions::int8 FROM monthly_usage WHERE account_id = '{account}'
               AND month < date_trunc('month', now() AT TIME ZONE 'UTC')::date"
        ))
        .await;
    assert_eq!(last_month, 1, "last month's row is kept as it was");
}

#[tokio::test]
async fn custom_limits_set_each_monthly_quota() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (account, auth) = keyed(&app, "enterprise").await;
    app.patch_account(
        account,
        json!({"custom_limits": {"ai_descriptions_per_month": 0, "chat_messages_per_month": 2}}),
    )
    .await;
    let id = upload(&app, &auth, "a.txt", "text/plain", b"some text").await;
    let body = assert_problem(
        describe(&app, &auth, &id).await,
        StatusCode::TOO_MANY_REQUESTS,
        "monthly_quota_exceeded",
    )
    .await;
    assert_eq!(
        (body["limit"].clone(), body["used"].clone()),
        (json!(0), json!(0))
    );
    for _ in 0..2 {
        assert_eq!(
            chat(&app, &auth, json!({"message": "hi"})).await.status(),
            StatusCode::OK
        );
    }
    let body = assert_problem(
        chat(&app, &auth, json!({"message": "hi"})).await,
        StatusCode::TOO_MANY_REQUESTS,
        "monthly_quota_exceeded",
    )
    .await;
    assert_eq!(
        (body["limit"].clone(), body["used"].clone()),
        (json!(2), json!(2))
    );
    assert_eq!(used(&app, &auth).await, (0, 2));
    assert_eq!(provider.requests().len(), 2);
}

// ---------------------------------------------------------------------------
// Chat.

#[tokio::test]
async fn chat_gives_the_model_descriptions_and_text_documents_as_context() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let image = upload(&app, &auth, "boat.png", "image/png", &png(64, 48)).await;
    let csv = upload(&app, &auth, "catch.csv", "text/csv", &fixtures::csv(3)).await;
    provider.then(Reply::Text("A red fishing boat in a small harbour.".into()));
    assert_eq!(describe(&app, &auth, &image).await.status(), StatusCode::OK);

    provider.then(Reply::Text("The boat is red.".into()));
    let resp = chat(
        &app,
        &auth,
        json!({"message": "What colour is the boat?", "file_ids": [image, csv]}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(
        resp.json::<Value>().await.unwrap(),
        json!({"reply": "The boat is red.", "model": MODEL})
    );
    let r = provider.requests().pop().unwrap();
    assert_eq!(r.path, "/v1/chat/completions");
    let system = r.body["messages"][0]["content"].as_str().unwrap();
    assert!(
        system.contains("A red fishing boat in a small harbour."),
        "{system}"
    );
    assert!(
        system.contains("2,name 2,Zürich"),
        "the CSV's text: {system}"
    );
    assert_eq!(r.body["messages"][1]["content"], "What colour is the boat?");
    assert_eq!(used(&app, &auth).await, (1, 1));
}

// ---------------------------------------------------------------------------
// Bad input.

#[tokio::test]
async fn bad_input_is_refused_and_counts_nothing() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let (_, other) = keyed(&app, "starter").await;
    let theirs = upload(&app, &other, "theirs.txt", "text/plain", b"private").await;
    let video = upload(&app, &auth, "clip.mp4", "video/mp4", &fixtures::mp4(2000)).await;
    let mine = upload(&app, &auth, "mine.txt", "text/plain", b"mine").await;

    assert_problem(
        describe(&app, &auth, &theirs).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        describe(&app, &auth, &Uuid::new_v4().to_string()).await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        describe(&app, &auth, &video).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_problem(
        chat(
            &app,
            &auth,
            json!({"message": "hi", "file_ids": [mine, theirs]}),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    )
    .await;
    assert_problem(
        chat(&app, &auth, json!({"message": ""})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_problem(
        chat(&app, &auth, json!({"message": "x".repeat(8_001)})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    let eleven: Vec<String> = (0..11).map(|_| mine.clone()).collect();
    assert_problem(
        chat(&app, &auth, json!({"message": "hi", "file_ids": eleven})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert_problem(
        chat(&app, &auth, json!({"file_ids": []})).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    let resp = call(&app, &auth, Method::POST, "/chat")
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::BAD_REQUEST, "invalid_request").await;
    let huge = json!({"message": "x".repeat(70 * 1024)});
    assert_problem(
        chat(&app, &auth, huge).await,
        StatusCode::PAYLOAD_TOO_LARGE,
        "payload_too_large",
    )
    .await;
    assert_eq!(used(&app, &auth).await, (0, 0));
    assert!(
        provider.requests().is_empty(),
        "nothing reached the provider"
    );

    // At the bounds, accepted.
    let ten: Vec<String> = (0..10).map(|_| mine.clone()).collect();
    let resp = chat(
        &app,
        &auth,
        json!({"message": "é".repeat(8_000), "file_ids": ten}),
    )
    .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(used(&app, &auth).await, (0, 1));
}

#[tokio::test]
async fn images_above_100_megapixels_are_422_and_refunded() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let id = upload(
        &app,
        &auth,
        "huge.png",
        "image/png",
        &png_claiming(12_000, 9_000),
    )
    .await;
    let body = assert_problem(
        describe(&app, &auth, &id).await,
        StatusCode::UNPROCESSABLE_ENTITY,
        "invalid_request",
    )
    .await;
    assert!(
        body["detail"].as_str().unwrap().contains("100 megapixels"),
        "{body}"
    );
    assert_eq!(used(&app, &auth).await, (0, 0));
    assert!(provider.requests().is_empty());
}

#[tokio::test]
async fn hostile_pdfs_are_handled_within_a_bound_and_refunded() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[("AI_EXTRACT_TIMEOUT_SECS", "5")]).await;
    let (_, auth) = keyed(&app, "starter").await;
    let depth = 200_000;
    let nested = pdf(&[
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        format!(
            "<< /Type /Pages /Kids [3 0 R] /Count 1 /Junk {}{} >>",
            "[".repeat(depth),
            "]".repeat(depth)
        ),
        "<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>".into(),
        stream(&format!("{}{}", "[".repeat(depth), "]".repeat(depth))),
    ]);
    let kids = "3 0 R ".repeat(200_000);
    let pages = pdf(&[
        "<< /Type /Catalog /Pages 2 0 R >>".into(),
        format!("<< /Type /Pages /Kids [{kids}] /Count 200000 >>"),
        "<< /Type /Page /Parent 2 0 R /Contents 4 0 R >>".into(),
        stream(""),
    ]);
    for (name, bytes) in [("nested.pdf", nested), ("pages.pdf", pages)] {
        let id = upload(&app, &auth, name, "application/pdf", &bytes).await;
        let started = Instant::now();
        let resp = describe(&app, &auth, &id).await;
        let elapsed = started.elapsed();
        assert_problem(
            resp,
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
        )
        .await;
        assert!(
            elapsed < Duration::from_secs(10),
            "{name}: answered in {elapsed:?}"
        );
        assert_eq!(used(&app, &auth).await, (0, 0), "{name}: refunded");
    }
    assert!(provider.requests().is_empty());
    // The server is still there for the next request.
    let id = upload(
        &app,
        &auth,
        "ok.pdf",
        "application/pdf",
        &text_pdf(&["Still standing"]),
    )
    .await;
    assert_eq!(describe(&app, &auth, &id).await.status(), StatusCode::OK);
}

/// A PDF of `pages` pages that all show one content stream of about
/// `content_bytes` bytes of line drawing and no text: each page costs its
/// parse, so reading them all takes long.
fn slow_pdf(pages: usize, content_bytes: usize) -> Vec<u8> {
    let content = pages + 3;
    let kids: Vec<String> = (3..3 + pages).map(|n| format!("{n} 0 R")).collect();
    let mut objects = vec![
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {pages} >>",
            kids.join(" ")
        ),
    ];
    objects.extend((0..pages).map(|_| {
        format!("<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {content} 0 R >>")
    }));
    let mut ops = String::new();
    while ops.len() < content_bytes {
        ops.push_str("0 0 m 612 792 l S\n");
    }
    objects.push(stream(&ops));
    pdf(&objects)
}

/// A Flate-compressed stream object of `content`.
fn deflated(content: &[u8]) -> Vec<u8> {
    use std::io::Write;
    let mut z = flate2::write::ZlibEncoder::new(Vec::new(), flate2::Compression::best());
    z.write_all(content).unwrap();
    let packed = z.finish().unwrap();
    let mut out = format!(
        "<< /Length {} /Filter /FlateDecode >>\nstream\n",
        packed.len()
    )
    .into_bytes();
    out.extend_from_slice(&packed);
    out.extend_from_slice(b"\nendstream");
    out
}

#[tokio::test]
async fn one_accounts_slow_pdfs_do_not_fail_another_accounts_describe() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[("AI_EXTRACT_TIMEOUT_SECS", "3")]).await;
    let (_, slow) = keyed(&app, "professional").await;
    let (_, other) = keyed(&app, "professional").await;
    let heavy = slow_pdf(2_000, 1024 * 1024);
    let mut theirs = Vec::new();
    for name in ["heavy-1.pdf", "heavy-2.pdf"] {
        theirs.push(upload(&app, &slow, name, "application/pdf", &heavy).await);
    }
    let mine = upload(
        &app,
        &other,
        "ok.pdf",
        "application/pdf",
        &text_pdf(&["Minutes of the harbour committee"]),
    )
    .await;

    let running: Vec<_> = theirs
        .iter()
        .map(|id| {
            tokio::spawn(call(&app, &slow, Method::POST, &format!("/files/{id}/describe")).send())
        })
        .collect();
    // Both have taken their unit: they are reading their files.
    eventually("the slow account's describes are under way", || async {
        used(&app, &slow).await == (2, 0)
    })
    .await;
    let resp = describe(&app, &other, &mine).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(used(&app, &other).await, (1, 0));
    assert!(user_text(&provider.requests()[0]).contains("harbour committee"));

    for task in running {
        let resp = task.await.unwrap().unwrap();
        let status = resp.status();
        let body: Value = resp.json().await.unwrap();
        assert!(
            [
                StatusCode::UNPROCESSABLE_ENTITY,
                StatusCode::SERVICE_UNAVAILABLE
            ]
            .contains(&status),
            "{status} {body}"
        );
        let code = if status == StatusCode::UNPROCESSABLE_ENTITY {
            "invalid_request"
        } else {
            "service_unavailable"
        };
        assert_eq!(body["code"], code, "{body}");
    }
    assert_eq!(used(&app, &slow).await, (0, 0), "both refunded");
    assert_eq!(provider.requests().len(), 1, "only the good one was sent");
}

#[tokio::test]
async fn pdfs_past_their_object_or_inflation_bound_are_422_and_refunded() {
    let provider = Provider::start().await;
    let app = ai_app(&provider, &[]).await;
    let (_, auth) = keyed(&app, "professional").await;
    let head = [
        "<< /Type /Catalog /Pages 2 0 R >>".to_string(),
        "<< /Type /Pages /Kids [3 0 R] /Count 1 >>".into(),
        "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents 4 0 R >>".into(),
        stream("BT /F1 12 Tf 72 720 Td (Hello) Tj ET"),
    ];
    let mut crowded = head.to_vec();
    crowded.extend((0..200_000).map(|_| "null".to_string()));
    // Forty pages, each a stream of 4 MiB of blanks packed into a few KiB:
    // each is under the bound of one stream, together far past the total.
    let pages = 40;
    let mut inflating = vec![
        b"<< /Type /Catalog /Pages 2 0 R >>".to_vec(),
        format!(
            "<< /Type /Pages /Kids [{}] /Count {pages} >>",
            (0..pages)
                .map(|i| format!("{} 0 R", 3 + 2 * i))
                .collect::<Vec<_>>()
                .join(" ")
        )
        .into_bytes(),
    ];
    let blanks = vec![b' '; 4 * 1024 * 1024];
    for i in 0..pages {
        inflating.push(
            format!(
                "<< /Type /Page /Parent 2 0 R /MediaBox [0 0 612 792] /Contents {} 0 R >>",
                4 + 2 * i
            )
            .into_bytes(),
        );
        inflating.push(deflated(&blanks));
    }
    for (name, bytes, bound) in [
        ("crowded.pdf", pdf(&crowded), "objects"),
        ("inflating.pdf", assemble(&inflating), "inflate"),
    ] {
        let id = upload(&app, &auth, name, "application/pdf", &bytes).await;
        let body = assert_problem(
            describe(&app, &auth, &id).await,
            StatusCode::UNPROCESSABLE_ENTITY,
            "invalid_request",
        )
        .await;
        assert!(
            body["detail"].as_str().unwrap().contains(bound),
            "{name}: {body}"
        );
        assert_eq!(used(&app, &auth).await, (0, 0), "{name}: refunded");
    }
    assert!(provider.requests().is_empty());
}

#[tokio::test]
async fn without_a_provider_ai_is_unavailable_before_any_quota() {
    let app = spawn().start().await;
    let (account, auth) = keyed(&app, "starter").await;
    this_month_set(&app, account, 300, 200).await;
    let id = upload(&app, &auth, "a.txt", "text/plain", b"some text").await;
    let video = upload(&app, &auth, "clip.mp4", "video/mp4", &fixtures::mp4(2000)).await;
    assert_problem(
        describe(&app, &auth, &id).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "ai_unavailable",
    )
    .await;
    assert_problem(
        chat(&app, &auth, json!({"message": "hi"})).await,
        StatusCode::SERVICE_UNAVAILABLE,
        "ai_unavailable",
    )
    .await;
    assert_problem(
        describe(&app, &auth, &video).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "unsupported_media_type",
    )
    .await;
    assert_eq!(
        used(&app, &auth).await,
        (300, 200),
        "nothing counted, though at the limit"
    );
}

#[tokio::test]
async fn openapi_documents_every_status_of_the_ai_routes() {
    let app = spawn().start().await;
    let doc: Value = app
        .get("/openapi.json")
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    for (path, statuses) in [
        (
            "/files/{id}/describe",
            &["200", "401", "403", "404", "415", "422", "429", "503"][..],
        ),
        (
            "/chat",
            &[
                "200", "400", "401", "403", "404", "408", "413", "415", "422", "429", "503",
            ][..],
        ),
    ] {
        let responses = doc["paths"][path]["post"]["responses"].as_object().unwrap();
        // Every status the route answers is documented (the common error
        // answers of every route may come on top).
        for status in statuses {
            assert!(responses.contains_key(*status), "{path}: {status}");
        }
    }
    let chat = &doc["components"]["schemas"]["ChatRequest"]["properties"];
    assert_eq!(chat["message"]["maxLength"], 8000);
    assert_eq!(chat["message"]["minLength"], 1);
    assert_eq!(chat["file_ids"]["maxItems"], 10);
}
