//! The accounts of the attacks as an attacker holds them: signed up and
//! logged in from one client address, then used through the session's
//! cookie and CSRF token (session requests have no per-minute limit).

use std::{net::IpAddr, time::Duration};

use reqwest::{Method, RequestBuilder, StatusCode};
use serde_json::{Value, json};

/// Every account's password.
const PASSWORD: &str = "bench-password-0123";

/// A client whose connections come from `from`; with `fresh`, every
/// request opens a connection of its own (as a new visitor would) instead
/// of reusing one.
pub fn client_from(from: IpAddr, fresh: bool) -> reqwest::Client {
    let mut builder = reqwest::Client::builder().local_address(from);
    if fresh {
        builder = builder.pool_max_idle_per_host(0);
    }
    builder.build().expect("an HTTP client")
}

/// A logged-in session of an account.
pub struct Session {
    /// The account's id.
    pub id: String,
    /// The session cookie, as a `Cookie` header value.
    pub cookie: String,
    /// The token state-changing requests carry as `X-CSRF-Token`.
    pub csrf: String,
    url: String,
    http: reqwest::Client,
}

/// Signs `email` up and logs it in, both from `from`; `http` (a client
/// from the same address) carries the session's requests afterwards.
pub async fn sign_up(url: &str, email: &str, from: IpAddr, http: reqwest::Client) -> Session {
    let credentials = json!({"email": email, "password": PASSWORD});
    let anonymous = client_from(from, false);
    let signed = anonymous
        .post(format!("{url}/auth/signup"))
        .json(&credentials)
        .send()
        .await
        .expect("sign up");
    let status = signed.status();
    let account: Value = signed.json().await.unwrap_or_default();
    assert_eq!(status, StatusCode::CREATED, "sign up {email}: {account}");
    let login = anonymous
        .post(format!("{url}/auth/login"))
        .json(&credentials)
        .send()
        .await
        .expect("log in");
    assert_eq!(login.status(), StatusCode::OK, "log in {email}");
    let cookie = login
        .headers()
        .get_all(reqwest::header::SET_COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .find_map(|v| {
            v.split(';')
                .next()
                .filter(|c| c.starts_with("intake_session="))
        })
        .expect("the session cookie")
        .to_owned();
    let body: Value = login.json().await.expect("the login answer");
    Session {
        id: account["id"].as_str().expect("the account id").to_owned(),
        cookie,
        csrf: body["csrf_token"].as_str().expect("csrf_token").to_owned(),
        url: url.to_owned(),
        http,
    }
}

impl Session {
    /// A request of this session (with the CSRF token, which only
    /// state-changing requests need).
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.url))
            .header("cookie", &self.cookie)
            .header("x-csrf-token", &self.csrf)
    }

    /// The head of a raw request of this session: request line, host,
    /// cookie and CSRF token, then `headers` (each ending with CRLF), then
    /// the blank line.
    pub fn raw_head(&self, method: &str, path: &str, headers: &str) -> Vec<u8> {
        format!(
            "{method} {path} HTTP/1.1\r\nHost: bench\r\nCookie: {}\r\nX-CSRF-Token: {}\r\n{headers}\r\n",
            self.cookie, self.csrf
        )
        .into_bytes()
    }

    /// `GET /usage`.
    pub async fn usage(&self) -> Value {
        self.request(Method::GET, "/usage")
            .timeout(Duration::from_secs(10))
            .send()
            .await
            .and_then(reqwest::Response::error_for_status)
            .expect("GET /usage")
            .json()
            .await
            .expect("the usage JSON")
    }

    /// Uploads `body` (a multipart form of one file, see `form::form`);
    /// the stored file.
    pub async fn upload(&self, (content_type, len, body): (String, u64, reqwest::Body)) -> Value {
        let resp = self
            .request(Method::POST, "/upload/stream")
            .header("content-type", content_type)
            .header("content-length", len)
            .body(body)
            .send()
            .await
            .expect("upload");
        let status = resp.status();
        let file: Value = resp.json().await.unwrap_or_default();
        assert_eq!(status, StatusCode::CREATED, "upload: {file}");
        file
    }
}
