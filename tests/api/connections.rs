//! The server's own bounds on connections: header read timeout, body idle
//! timeout, connections at once, and what an answer given before the body
//! was read does to the connection.

use std::time::Duration;

use reqwest::StatusCode;
use serde_json::json;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::TcpStream,
};

use sha2::{Digest, Sha256};

use crate::helpers::{
    Backend, Form, Holdings, MIB, assert_problem,
    clients::{presign, tus},
    fixtures,
    raw::{After, BodyAt, keep_alive_exchange},
    spawn,
};

/// Opens a connection and sends the first half of a request's headers.
async fn half_a_header(addr: &str) -> TcpStream {
    let mut stream = TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(b"GET /healthz HTTP/1.1\r\nHost: intake\r\nX-Half: ")
        .await
        .unwrap();
    stream
}

/// Reads until the server closes the connection; `None` if it has not
/// within `bound`.
async fn closed_within(stream: &mut TcpStream, bound: Duration) -> Option<Vec<u8>> {
    let mut seen = Vec::new();
    tokio::time::timeout(bound, async {
        let mut buf = [0u8; 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => seen.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await
    .ok()
    .map(|()| seen)
}

#[tokio::test]
async fn half_a_request_header_is_closed_after_the_header_timeout() {
    let app = spawn().var("HEADER_READ_TIMEOUT_SECS", "1").start().await;
    let mut stalled = half_a_header(&app.socket_addr()).await;
    let seen = closed_within(&mut stalled, Duration::from_secs(10))
        .await
        .expect("the stalled connection is closed");
    // hyper says why before closing, when it can; never a 200.
    let text = String::from_utf8_lossy(&seen);
    assert!(
        text.is_empty() || text.starts_with("HTTP/1.1 408"),
        "{text}"
    );
    // The server itself is unharmed.
    let resp = app.get("/healthz").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn a_json_body_that_stalls_ends_with_408() {
    let app = spawn().var("UPLOAD_IDLE_TIMEOUT_SECS", "1").start().await;
    let account = app.account("free").await;
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Vec<u8>, std::io::Error>>(1);
    let body = futures_util::stream::unfold(rx, |mut rx| async move {
        rx.recv().await.map(|item| (item, rx))
    });
    tx.send(Ok(format!(
        "{{\"email\": \"{}\", \"password\": ",
        account.email
    )
    .into_bytes()))
        .await
        .unwrap();
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        app.post("/auth/login")
            .header("content-type", "application/json")
            .body(reqwest::Body::wrap_stream(body))
            .send(),
    )
    .await
    .expect("the stalled body is answered")
    .unwrap();
    let body = assert_problem(resp, StatusCode::REQUEST_TIMEOUT, "invalid_request").await;
    assert!(
        body["detail"].as_str().unwrap().contains("sent nothing"),
        "{body}"
    );
    drop(tx);
    // Nothing was logged in.
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 0);
    // A body that arrives in time still works.
    let resp = app
        .post("/auth/login")
        .json(&json!({"email": account.email, "password": crate::helpers::PASSWORD}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn connections_past_max_connections_wait_until_one_closes() {
    let app = spawn()
        .var("MAX_CONNECTIONS", "2")
        .var("HEADER_READ_TIMEOUT_SECS", "60")
        .start()
        .await;
    // Both slots held by connections that never finish a request.
    let first = half_a_header(&app.socket_addr()).await;
    let _second = half_a_header(&app.socket_addr()).await;
    let request = app.get("/healthz").send();
    let mut waiting = tokio::spawn(request);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut waiting)
            .await
            .is_err(),
        "a third connection is served while two are held"
    );
    drop(first);
    let resp = tokio::time::timeout(Duration::from_secs(10), waiting)
        .await
        .expect("served once a slot is free")
        .unwrap()
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
}

#[tokio::test]
async fn the_read_buffer_bounds_headers_and_uploads_still_arrive_whole() {
    let app = spawn().var("READ_BUFFER_BYTES", "8192").start().await;
    // 10,000 bytes of headers: past the buffer, hyper answers 431 and
    // nothing runs; the default 64 KiB buffer serves them.
    let padded = |app: &crate::helpers::TestApp| {
        app.get("/healthz")
            .header("x-pad", "p".repeat(10_000))
            .send()
    };
    let resp = padded(&app).await.unwrap();
    assert_eq!(resp.status(), StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE);
    let roomy = spawn().start().await;
    assert_eq!(padded(&roomy).await.unwrap().status(), StatusCode::OK);
    // An upload read 8 KiB at a time is stored whole.
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::png(3 * MIB + 5);
    let resp = app.upload(&key, "big.png", "image/png", &data).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(file["size"], data.len());
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, data.len() as i64)
    );
}

#[tokio::test]
async fn reads_larger_than_the_part_header_limit_still_upload_files_and_batches() {
    // Each read may carry more than a part header block may hold (1 MiB):
    // the bytes after a part's headers are not counted as headers.
    let app = spawn().var("READ_BUFFER_BYTES", "4194304").start().await;
    let (account, key) = app.account_with_key("professional").await;
    let data = fixtures::png(6 * MIB);
    let resp = app.upload(&key, "big.png", "image/png", &data).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let form = Form::pngs(4, 1536 * 1024);
    let resp = app.upload_form("/upload/stream-batch", &key, form).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body["uploaded"], 4, "{body}");
    let batch = 4 * 1536 * 1024;
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(5, data.len() as i64 + batch)
    );
}

/// A body that sends `chunks` one at a time, `every` apart.
fn trickled(chunks: Vec<Vec<u8>>, every: Duration) -> reqwest::Body {
    let stream = futures_util::stream::unfold(chunks.into_iter(), move |mut left| async move {
        let next = left.next()?;
        tokio::time::sleep(every).await;
        Some((Ok::<_, std::io::Error>(next), left))
    });
    reqwest::Body::wrap_stream(stream)
}

#[tokio::test]
async fn a_trickled_json_body_ends_with_408_at_the_body_deadline() {
    let app = spawn()
        .var("BODY_TIMEOUT_SECS", "1")
        .var("UPLOAD_IDLE_TIMEOUT_SECS", "30")
        .start()
        .await;
    let account = app.account("free").await;
    // A byte every 100 ms: never idle, but 20 s to arrive whole.
    let json = format!(
        "{{\"email\": \"{}\", \"password\": \"{}\"}}",
        account.email,
        crate::helpers::PASSWORD
    );
    let chunks: Vec<Vec<u8>> = json.bytes().map(|b| vec![b]).collect();
    assert!(chunks.len() > 20, "the body takes longer than the deadline");
    let resp = tokio::time::timeout(
        Duration::from_secs(15),
        app.post("/auth/login")
            .header("content-type", "application/json")
            .body(trickled(chunks, Duration::from_millis(100)))
            .send(),
    )
    .await
    .expect("answered at the deadline, before the body is whole")
    .unwrap();
    let body = assert_problem(resp, StatusCode::REQUEST_TIMEOUT, "invalid_request").await;
    assert!(
        body["detail"]
            .as_str()
            .unwrap()
            .contains("did not arrive whole within 1 s"),
        "{body}"
    );
    assert_eq!(app.scalar_i64("SELECT count(*) FROM sessions").await, 0);
}

#[tokio::test]
async fn an_upload_body_may_take_longer_than_the_body_deadline() {
    let app = spawn().var("BODY_TIMEOUT_SECS", "1").start().await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::png(40 * 1024);
    let form = Form::new()
        .part("file", "slow.png", "image/png", &data)
        .finish();
    let content_type = form.content_type();
    // Twenty pieces 100 ms apart: twice the deadline.
    let chunks: Vec<Vec<u8>> = form
        .body
        .chunks(form.body.len().div_ceil(20))
        .map(<[u8]>::to_vec)
        .collect();
    let resp = app
        .post("/upload/stream")
        .bearer_auth(&key)
        .header("content-type", content_type)
        .body(trickled(chunks, Duration::from_millis(100)))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(file["sha256"], hex::encode(Sha256::digest(&data)));
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, data.len() as i64)
    );
}

/// The head of a `POST` to `path` with the key, a type and a length.
fn post_head(path: &str, key: &str, content_type: &str, len: usize, extra: &str) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: {content_type}\r\nContent-Length: {len}\r\n{extra}\r\n"
    )
}

#[tokio::test]
async fn early_answers_on_streaming_uploads_keep_the_connection_or_say_it_closes() {
    let app = spawn()
        .var("STREAM_MAX_FILE_BYTES", &MIB.to_string())
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    let addr = app.socket_addr();
    let small = vec![b'x'; 1000];
    let large = vec![b'x'; 2 * MIB];
    let no_boundary = |len| post_head("/upload/stream", &key, "multipart/form-data", len, "");

    // Answered from the head alone, the body sent after the answer: a
    // rest that fits the drain bound is read away, the connection stays.
    let (answer, after) = keep_alive_exchange(
        &addr,
        &no_boundary(small.len()),
        small.clone(),
        BodyAt::AfterAnswer,
    )
    .await;
    answer.assert_problem(400, "invalid_request");
    assert_eq!(after, After::KeptOpen);
    let not_multipart = post_head("/upload/stream", &key, "application/json", small.len(), "");
    let (answer, after) =
        keep_alive_exchange(&addr, &not_multipart, small.clone(), BodyAt::AfterAnswer).await;
    answer.assert_problem(415, "unsupported_media_type");
    assert_eq!(after, After::KeptOpen);
    // A rest past the bound: the answer says the connection closes.
    let (answer, after) = keep_alive_exchange(
        &addr,
        &no_boundary(large.len()),
        large.clone(),
        BodyAt::WithHead,
    )
    .await;
    answer.assert_problem(400, "invalid_request");
    assert_eq!(after, After::Closed);
    // A client waiting for `100 Continue` is never asked for its body
    // after the answer.
    let expecting = post_head(
        "/upload/stream",
        &key,
        "multipart/form-data",
        small.len(),
        "Expect: 100-continue\r\n",
    );
    let (answer, after) =
        keep_alive_exchange(&addr, &expecting, small.clone(), BodyAt::AfterAnswer).await;
    answer.assert_problem(400, "invalid_request");
    assert_eq!(after, After::Closed);
    // Refused by the authentication of the route.
    let bad_key = post_head(
        "/upload/stream",
        "ik_nothing_x",
        "multipart/form-data; boundary=b",
        large.len(),
        "",
    );
    let (answer, after) =
        keep_alive_exchange(&addr, &bad_key, large.clone(), BodyAt::WithHead).await;
    answer.assert_problem(401, "unauthorized");
    assert_eq!(after, After::Closed);

    // Files refused mid-stream, with most of their bytes still coming.
    let form = Form::new()
        .part("file", "big.png", "image/png", &fixtures::png(2 * MIB))
        .finish();
    let head = post_head(
        "/upload/stream",
        &key,
        &form.content_type(),
        form.body.len(),
        "",
    );
    let (answer, after) = keep_alive_exchange(&addr, &head, form.body, BodyAt::WithHead).await;
    answer.assert_problem(413, "use_presigned_upload");
    assert_eq!(after, After::Closed);
    let form = Form::new()
        .part("file", "a.bin", "", &fixtures::elf(2 * MIB))
        .finish();
    let head = post_head(
        "/upload/stream",
        &key,
        &form.content_type(),
        form.body.len(),
        "",
    );
    let (answer, after) = keep_alive_exchange(&addr, &head, form.body, BodyAt::WithHead).await;
    answer.assert_problem(415, "unsupported_media_type");
    assert_eq!(after, After::Closed);
    // A batch past the tier's size, refused at its 21st part: whichever
    // way the connection goes, the client can go on (asserted inside).
    let form = Form::pngs(21, 100 * 1024).finish();
    let head = post_head(
        "/upload/stream-batch",
        &key,
        &form.content_type(),
        form.body.len(),
        "",
    );
    let (answer, _) = keep_alive_exchange(&addr, &head, form.body, BodyAt::WithHead).await;
    answer.assert_problem(413, "batch_too_large");

    // A whole upload sent chunked, whose reader stops at the closing
    // boundary: the end of the body follows at once, and is waited for.
    let form = Form::new()
        .part("file", "a.png", "image/png", &fixtures::png(1000))
        .finish();
    let mut chunked = format!("{:x}\r\n", form.body.len()).into_bytes();
    chunked.extend_from_slice(&form.body);
    chunked.extend_from_slice(b"\r\n0\r\n\r\n");
    let head = format!(
        "POST /upload/stream HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer {key}\r\n\
         Content-Type: {}\r\nTransfer-Encoding: chunked\r\n\r\n",
        form.content_type()
    );
    let (answer, after) = keep_alive_exchange(&addr, &head, chunked, BodyAt::WithHead).await;
    assert_eq!(answer.status, 201, "{answer:?}");
    assert_eq!(after, After::KeptOpen);

    // Nothing of the refused requests was left behind.
    app.assert_left_with(account.id, 1).await;
}

#[tokio::test]
async fn a_refused_tus_patch_keeps_the_connection_usable() {
    let app = spawn().start().await;
    let (account, key) = app.account_with_key("starter").await;
    let path = tus::created(&app, &key, 1000, &[("filename", "a.png")]).await;
    let head = format!(
        "PATCH {path} HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer {key}\r\n\
         Tus-Resumable: 1.0.0\r\nUpload-Offset: 5\r\n\
         Content-Type: application/offset+octet-stream\r\nContent-Length: 1000\r\n\r\n"
    );
    let (answer, after) = keep_alive_exchange(
        &app.socket_addr(),
        &head,
        fixtures::png(1000),
        BodyAt::AfterAnswer,
    )
    .await;
    answer.assert_problem(409, "conflict");
    assert_eq!(after, After::KeptOpen);
    // The upload took none of the bytes and still holds its reservation.
    assert_eq!(tus::offset_of(&app, &path, &key).await, 0);
    let h = app.holdings(account.id).await;
    assert_eq!((h.reserved, h.files), (1000, 0));
}

#[tokio::test]
async fn a_refused_presigned_data_put_says_it_closes() {
    let app = spawn().backend(Backend::Fs).start().await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::png(MIB);
    let issued = presign::issue(
        &app,
        &key,
        json!({"filename": "a.png", "content_type": "image/png", "size": data.len()}),
    )
    .await;
    let url = url::Url::parse(issued["url"].as_str().unwrap()).unwrap();
    let forged = url.query().unwrap().replace("signature=", "signature=x");
    let head = format!(
        "PUT {}?{forged} HTTP/1.1\r\nHost: intake\r\nContent-Type: image/png\r\n\
         Content-Length: {}\r\n\r\n",
        url.path(),
        data.len()
    );
    let (answer, after) =
        keep_alive_exchange(&app.socket_addr(), &head, data, BodyAt::WithHead).await;
    answer.assert_problem(403, "forbidden");
    assert_eq!(after, After::Closed);
    // Nothing was written; the upload still holds its reservation.
    assert!(app.every_object().await.is_empty());
    let h = app.holdings(account.id).await;
    assert_eq!((h.reserved, h.files), (MIB as i64, 0));
}
