//! The server's own bounds on connections: header read timeout, body idle
//! timeout, connections at once, connections of one address, requests of
//! one account at once, answers the client does not read, and what an
//! answer given before the body was read does to the connection.

use std::{
    net::{IpAddr, Ipv4Addr, SocketAddr},
    sync::atomic::{AtomicUsize, Ordering},
    time::Duration,
};

use reqwest::{Method, StatusCode};
use serde_json::json;
use tokio::{
    io::{AsyncRead, AsyncReadExt, AsyncWriteExt},
    net::{TcpSocket, TcpStream},
};

use sha2::{Digest, Sha256};

use crate::helpers::{
    Backend, Form, Holdings, MIB, Session, TestApp, assert_problem,
    clients::{presign, tus},
    eventually, fixtures,
    raw::{After, BodyAt, keep_alive_exchange},
    spawn, within,
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
    for (form, status, code) in [
        (
            Form::new().part("file", "big.png", "image/png", &fixtures::png(2 * MIB)),
            413,
            "use_presigned_upload",
        ),
        (
            Form::new().part("file", "a.bin", "", &fixtures::elf(2 * MIB)),
            415,
            "unsupported_media_type",
        ),
    ] {
        let form = form.finish();
        let len = form.body.len();
        let head = post_head("/upload/stream", &key, &form.content_type(), len, "");
        let (answer, after) = keep_alive_exchange(&addr, &head, form.body, BodyAt::WithHead).await;
        answer.assert_problem(status, code);
        assert_eq!(after, After::Closed, "{code}");
    }
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

/// The loopback address the raw connections of these tests come from, so
/// that what the server counts for it is the test's own doing (the app's
/// client comes from 127.0.0.1).
const ELSEWHERE: IpAddr = IpAddr::V4(Ipv4Addr::new(127, 0, 0, 2));

/// A connection to the app from [`ELSEWHERE`], with a receive buffer of
/// `recv_buffer` bytes when given (a client that reads nothing then holds
/// back little of an answer).
async fn connect(app: &TestApp, recv_buffer: Option<u32>) -> TcpStream {
    let socket = TcpSocket::new_v4().unwrap();
    if let Some(size) = recv_buffer {
        socket.set_recv_buffer_size(size).unwrap();
    }
    socket.bind(SocketAddr::new(ELSEWHERE, 0)).unwrap();
    socket
        .connect(app.socket_addr().parse().unwrap())
        .await
        .unwrap()
}

/// The start of a JSON request whose body is `length` bytes and of which
/// only the first byte is sent; `auth` are header lines (credentials).
fn unfinished_json(path: &str, auth: &str, length: usize) -> String {
    format!(
        "POST {path} HTTP/1.1\r\nHost: intake\r\n{auth}Content-Type: application/json\r\nContent-Length: {length}\r\n\r\n{{"
    )
}

/// The header lines of a session (cookie and CSRF token).
fn session_lines(s: &Session) -> String {
    format!("Cookie: {}\r\nX-CSRF-Token: {}\r\n", s.cookie, s.csrf)
}

/// The status line and headers of an answer (lower-cased), and its body
/// (as far as `Content-Length` goes) if it is an error's. Reads a little at
/// a time, so that the body of a success stays unread.
async fn read_answer(stream: &mut (impl AsyncRead + Unpin)) -> (String, Vec<u8>) {
    let mut seen = Vec::new();
    let mut buf = [0u8; 64];
    let head_end = loop {
        if let Some(at) = seen.windows(4).position(|w| w == b"\r\n\r\n") {
            break at + 4;
        }
        let n = stream.read(&mut buf).await.unwrap_or(0);
        assert!(n > 0, "the connection ended before an answer: {seen:?}");
        seen.extend_from_slice(&buf[..n]);
    };
    let head = String::from_utf8_lossy(&seen[..head_end]).to_lowercase();
    let length = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length: "))
        .map_or(0, |v| v.trim().parse::<usize>().unwrap());
    let mut body = seen[head_end..].to_vec();
    if status_of(&head) >= 400 {
        while body.len() < length {
            let n = stream.read(&mut buf).await.unwrap_or(0);
            if n == 0 {
                break;
            }
            body.extend_from_slice(&buf[..n]);
        }
    }
    (head, body)
}

/// The status code of an answer's head.
fn status_of(head: &str) -> u16 {
    head.split(' ').nth(1).unwrap().parse().unwrap()
}

/// Asserts that an answer's head and body are the 429 of a concurrency
/// bound, of `limit`.
fn assert_concurrency_refusal(head: &str, body: &[u8], limit: u64) {
    assert_eq!(status_of(head), 429, "{head}");
    assert!(head.contains("\r\nretry-after: 1\r\n"), "{head}");
    let problem: serde_json::Value = serde_json::from_slice(body).unwrap();
    assert_eq!(problem["code"], "concurrent_request_limit", "{problem}");
    assert_eq!(problem["limit"], limit, "{problem}");
}

/// Bytes a stream gives until it ends (closed or reset); `None` if it has
/// not ended within `bound`.
async fn read_to_end_within(stream: &mut TcpStream, bound: Duration) -> Option<usize> {
    tokio::time::timeout(bound, async {
        let mut total = 0;
        let mut buf = vec![0u8; 64 * 1024];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break total,
                Ok(n) => total += n,
            }
        }
    })
    .await
    .ok()
}

#[tokio::test]
async fn requests_of_one_account_past_the_bound_are_refused_with_429() {
    let app = spawn()
        .var("MAX_REQUESTS_IN_FLIGHT_PER_ACCOUNT", "3")
        .var("BODY_TIMEOUT_SECS", "60")
        .var("UPLOAD_IDLE_TIMEOUT_SECS", "60")
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    let session = app.login(&account.email).await;
    let (_, other_key) = app.account_with_key("starter").await;
    let in_flight = || app.state.requests_in_flight.held(&account.id);
    // Three requests whose bodies never come, two by the session and one
    // by the key: the account's bound is full.
    let mut held = Vec::new();
    for auth in [
        session_lines(&session),
        format!("Authorization: Bearer {key}\r\n"),
        session_lines(&session),
    ] {
        let mut stream = connect(&app, None).await;
        let request = unfinished_json("/upload/presigned", &auth, 1000);
        stream.write_all(request.as_bytes()).await.unwrap();
        held.push(stream);
        let count = held.len();
        eventually(
            "the request is counted",
            || async move { in_flight() == count },
        )
        .await;
    }
    // A fourth, by either credential, is refused; so is a body-less one.
    let resp = app
        .with_session(Method::POST, "/upload/presigned", &session)
        .json(&json!({"filename": "a.png", "content_type": "image/png", "size": 10}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    // Its body was read by no one: the connection is not kept.
    assert_eq!(resp.headers()["connection"], "close");
    let body = assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_request_limit",
    )
    .await;
    assert_eq!(body["limit"], 3);
    let resp = app.get("/files").bearer_auth(&key).send().await.unwrap();
    assert_eq!(resp.headers()["retry-after"], "1");
    assert_problem(
        resp,
        StatusCode::TOO_MANY_REQUESTS,
        "concurrent_request_limit",
    )
    .await;
    assert_eq!(in_flight(), 3, "refused requests are not counted");
    // Uploads are bounded by their slots, not by this.
    let data = fixtures::png(64 * 1024);
    let resp = app.upload(&key, "a.png", "image/png", &data).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    // Another account is served.
    let resp = app
        .get("/files")
        .bearer_auth(&other_key)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // One ends (its client hangs up): one more is served.
    held.pop();
    eventually("the ended request is let go", || async { in_flight() == 2 }).await;
    let resp = app
        .with_session(Method::GET, "/files", &session)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    drop(held);
    eventually("every request is let go", || async { in_flight() == 0 }).await;
    assert_eq!(app.state.requests_in_flight.total(), 0);
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, data.len() as i64)
    );
}

#[tokio::test]
async fn connections_of_one_address_past_the_bound_are_answered_429_and_closed() {
    let app = spawn()
        .var("MAX_CONNECTIONS_PER_IP", "3")
        .var("HEADER_READ_TIMEOUT_SECS", "60")
        .start()
        .await;
    let from_there = || app.state.connections.held(&ELSEWHERE);
    let mut held = Vec::new();
    for _ in 0..3 {
        let mut stream = connect(&app, None).await;
        stream
            .write_all(b"GET /healthz HTTP/1.1\r\nHost: intake\r\nX-Half: ")
            .await
            .unwrap();
        held.push(stream);
    }
    eventually("three connections are open", || async { from_there() == 3 }).await;
    // A fourth is answered 429 and closed, its request body unread.
    let mut extra = connect(&app, None).await;
    extra
        .write_all(b"POST /auth/login HTTP/1.1\r\nHost: intake\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{")
        .await
        .unwrap();
    let (head, body) = read_answer(&mut extra).await;
    assert_concurrency_refusal(&head, &body, 3);
    assert!(head.contains("\r\nconnection: close\r\n"), "{head}");
    assert!(
        read_to_end_within(&mut extra, Duration::from_secs(10))
            .await
            .is_some(),
        "the refused connection is closed"
    );
    drop(extra);
    eventually("the refused connection is let go", || async {
        from_there() == 3
    })
    .await;
    // Another address is served meanwhile.
    let resp = app.get("/healthz").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    // One closes: the address is served again.
    held.pop();
    eventually("the closed connection is let go", || async {
        from_there() == 2
    })
    .await;
    let mut next = connect(&app, None).await;
    next.write_all(b"GET /healthz HTTP/1.1\r\nHost: intake\r\nConnection: close\r\n\r\n")
        .await
        .unwrap();
    let (head, _) = read_answer(&mut next).await;
    assert_eq!(status_of(&head), 200, "{head}");
    drop((held, next));
    eventually("every connection is let go", || async { from_there() == 0 }).await;
}

#[tokio::test]
async fn an_answer_the_client_does_not_read_ends_its_connection_at_the_write_timeout() {
    let app = spawn()
        .backend(Backend::Fs)
        .var("RESPONSE_WRITE_TIMEOUT_SECS", "1")
        .start()
        .await;
    let (account, key) = app.account_with_key("starter").await;
    let data = fixtures::png(16 * MIB);
    let resp = app.upload(&key, "big.png", "image/png", &data).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: serde_json::Value = resp.json().await.unwrap();
    // A download whose client reads its head and then nothing: far more
    // than the socket buffers hold waits to be written.
    let mut stream = connect(&app, Some(4096)).await;
    let request = format!(
        "GET /files/{}/content HTTP/1.1\r\nHost: intake\r\nAuthorization: Bearer {key}\r\n\r\n",
        file["id"].as_str().unwrap()
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, _) = read_answer(&mut stream).await;
    assert_eq!(status_of(&head), 200, "{head}");
    assert_eq!(app.state.requests_in_flight.held(&account.id), 1);
    assert_eq!(app.state.connections.held(&ELSEWHERE), 1);
    // The server ends the connection, and with it the request.
    assert!(
        within(Duration::from_secs(15), || async {
            app.state.connections.held(&ELSEWHERE) == 0
                && app.state.requests_in_flight.held(&account.id) == 0
        })
        .await,
        "the unread answer still holds its connection"
    );
    let got = read_to_end_within(&mut stream, Duration::from_secs(10))
        .await
        .expect("the connection is closed");
    assert!(got < data.len(), "the whole file was read: {got}");
    // Nothing else changed: the file is whole and served.
    assert_eq!(app.download(&key, file["id"].as_str().unwrap()).await, data);
    assert_eq!(
        app.settled(account.id).await,
        Holdings::stored(1, data.len() as i64)
    );
}

/// How a request of the flood ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Outcome {
    /// 429 `concurrent_request_limit`.
    Refused,
    /// A JSON body that never came ended at the body deadline (408).
    TimedOut,
    /// A download answered 200 and then left unread.
    Unread,
}

/// A JSON request from the session whose body trickles a byte every
/// 300 ms, never whole; how it ended.
async fn trickling_request(app: &TestApp, session: &Session) -> Outcome {
    let stream = connect(app, None).await;
    let (mut read, mut write) = stream.into_split();
    let head = unfinished_json("/upload/presigned", &session_lines(session), 1000);
    write.write_all(head.as_bytes()).await.unwrap();
    let trickle = tokio::spawn(async move {
        let mut every = tokio::time::interval(Duration::from_millis(300));
        loop {
            every.tick().await;
            if write.write_all(b" ").await.is_err() {
                break;
            }
        }
    });
    let (head, body) = read_answer(&mut read).await;
    trickle.abort();
    match status_of(&head) {
        429 => {
            assert_concurrency_refusal(&head, &body, 32);
            Outcome::Refused
        }
        408 => Outcome::TimedOut,
        _ => panic!("unexpected answer: {head}"),
    }
}

/// A download from the session that reads the answer's head and nothing
/// more; how it was answered, and the connection (kept unread).
async fn unread_download(app: &TestApp, session: &Session, file: &str) -> (Outcome, TcpStream) {
    let mut stream = connect(app, Some(4096)).await;
    let request = format!(
        "GET /files/{file}/content HTTP/1.1\r\nHost: intake\r\nCookie: {}\r\n\r\n",
        session.cookie
    );
    stream.write_all(request.as_bytes()).await.unwrap();
    let (head, body) = read_answer(&mut stream).await;
    match status_of(&head) {
        429 => {
            assert_concurrency_refusal(&head, &body, 32);
            (Outcome::Refused, stream)
        }
        200 => (Outcome::Unread, stream),
        _ => panic!("unexpected answer: {head}"),
    }
}

#[tokio::test]
async fn one_account_holding_requests_and_unread_downloads_leaves_another_served() {
    let app = spawn()
        .backend(Backend::Fs)
        .var("BODY_TIMEOUT_SECS", "6")
        .var("UPLOAD_IDLE_TIMEOUT_SECS", "3")
        .var("RESPONSE_WRITE_TIMEOUT_SECS", "6")
        .start()
        .await;
    let (attacker, attacker_key) = app.account_with_key("starter").await;
    let data = fixtures::png(16 * MIB);
    let resp = app
        .upload(&attacker_key, "big.png", "image/png", &data)
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let file: serde_json::Value = resp.json().await.unwrap();
    let file = file["id"].as_str().unwrap().to_owned();
    let session = app.login(&attacker.email).await;
    let (victim, victim_key) = app.account_with_key("professional").await;
    let in_flight = || app.state.requests_in_flight.held(&attacker.id);

    // The flood, from the attacker's session (no per-minute limit): 100
    // JSON bodies that trickle and 50 downloads never read, interleaved.
    let refused = AtomicUsize::new(0);
    let flood = futures_util::future::join_all((0..150).map(|i| {
        let (app, session, file, refused) = (&app, &session, &file, &refused);
        async move {
            let (outcome, unread) = if i % 3 == 2 {
                let (outcome, stream) = unread_download(app, session, file).await;
                (outcome, (outcome == Outcome::Unread).then_some(stream))
            } else {
                (trickling_request(app, session).await, None)
            };
            if outcome == Outcome::Refused {
                refused.fetch_add(1, Ordering::SeqCst);
            }
            (outcome, unread)
        }
    }));
    let meanwhile = async {
        // Every request of the flood is either held or refused.
        assert!(
            within(Duration::from_secs(20), || async {
                refused.load(Ordering::SeqCst) + in_flight() >= 150
            })
            .await,
            "the flood was not all answered or held"
        );
        assert_eq!(in_flight(), 32, "the account holds its bound, no more");
        assert_eq!(refused.load(Ordering::SeqCst), 150 - 32);
        // Another account's uploads and listings are served meanwhile.
        for i in 0..3 {
            let png = fixtures::png(MIB + i);
            let resp = app
                .upload(&victim_key, &format!("v{i}.png"), "image/png", &png)
                .await;
            assert_eq!(resp.status(), StatusCode::CREATED);
            let resp = app
                .get("/files")
                .bearer_auth(&victim_key)
                .send()
                .await
                .unwrap();
            assert_eq!(resp.status(), StatusCode::OK);
            let listed: serde_json::Value = resp.json().await.unwrap();
            assert_eq!(listed["files"].as_array().unwrap().len(), i + 1, "{listed}");
        }
        assert!(in_flight() > 0, "the flood still held the account's bound");
    };
    let (outcomes, ()) = tokio::join!(flood, meanwhile);

    let count = |o: Outcome| outcomes.iter().filter(|(x, _)| *x == o).count();
    assert_eq!(count(Outcome::Refused), 150 - 32);
    assert_eq!(count(Outcome::TimedOut) + count(Outcome::Unread), 32);
    // The unread downloads were cut by the write timeout.
    for (_, stream) in outcomes {
        if let Some(mut stream) = stream {
            let got = read_to_end_within(&mut stream, Duration::from_secs(15))
                .await
                .expect("the unread download's connection is closed");
            assert!(got < data.len(), "a whole file was read: {got}");
        }
    }
    // Nothing is left held: requests, connections, upload slots.
    eventually("the account's requests are let go", || async {
        app.state.requests_in_flight.total() == 0
    })
    .await;
    eventually("the flood's connections are closed", || async {
        app.state.connections.held(&ELSEWHERE) == 0
    })
    .await;
    assert_eq!(
        app.settled(attacker.id).await,
        Holdings::stored(1, data.len() as i64)
    );
    assert_eq!(
        app.settled(victim.id).await,
        Holdings::stored(3, 3 * MIB as i64 + 3)
    );
    assert_eq!(
        app.scalar_i64("SELECT count(*) FROM presigned_uploads")
            .await,
        0
    );
}
