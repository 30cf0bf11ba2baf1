//! What tests are made of: accounts (with keys, limits, sessions), file
//! contents of each kind, multipart forms, and the one `MIB`.

use reqwest::{Method, StatusCode};
use serde_json::{Value, json};
use uuid::Uuid;

use super::app::TestApp;

/// One mebibyte, the unit of every size in the suite.
pub const MIB: usize = 1024 * 1024;

/// The password of every test account.
pub const PASSWORD: &str = "correct horse battery";

/// An account made through the admin API, with its password.
pub struct TestAccount {
    /// Its id.
    pub id: Uuid,
    /// Its unique email address.
    pub email: String,
}

/// A logged-in dashboard session.
pub struct Session {
    /// The `name=value` of the session cookie.
    pub cookie: String,
    /// The CSRF token the session's writes carry.
    pub csrf: String,
}

impl TestApp {
    /// Creates an account of the tier through the admin API.
    pub async fn account(&self, tier: &str) -> TestAccount {
        let email = format!("{}@example.com", Uuid::new_v4().simple());
        let resp = self
            .admin(Method::POST, "/admin/accounts")
            .json(&json!({"email": email, "password": PASSWORD, "tier": tier}))
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap()
        );
        let body: Value = resp.json().await.unwrap();
        TestAccount {
            id: body["id"].as_str().unwrap().parse().unwrap(),
            email,
        }
    }

    /// An API key for the account, through the admin API.
    pub async fn key_for(&self, account: &TestAccount) -> String {
        let resp = self
            .admin(
                Method::POST,
                &format!("/admin/accounts/{}/api-keys", account.id),
            )
            .json(&json!({"name": "test"}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::CREATED);
        resp.json::<Value>().await.unwrap()["key"]
            .as_str()
            .unwrap()
            .to_owned()
    }

    /// A new account of the tier and an API key of it.
    pub async fn account_with_key(&self, tier: &str) -> (TestAccount, String) {
        let account = self.account(tier).await;
        let key = self.key_for(&account).await;
        (account, key)
    }

    /// Changes an account through the admin API (tier, custom limits…).
    pub async fn patch_account(&self, id: Uuid, body: Value) {
        let resp = self
            .admin(Method::PATCH, &format!("/admin/accounts/{id}"))
            .json(&body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            resp.status(),
            StatusCode::OK,
            "{}",
            resp.text().await.unwrap()
        );
    }

    /// A STARTER account and its key, whose per-minute limit leaves room
    /// for a test's polling.
    pub async fn polling_account(&self) -> (TestAccount, String) {
        let (account, key) = self.account_with_key("starter").await;
        self.patch_account(
            account.id,
            json!({"custom_limits": {"requests_per_minute": 100000}}),
        )
        .await;
        (account, key)
    }

    /// Logs in and returns the cookie and CSRF token.
    pub async fn login(&self, email: &str) -> Session {
        let resp = self
            .post("/auth/login")
            .json(&json!({"email": email, "password": PASSWORD}))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::OK);
        let set_cookie = resp.headers()["set-cookie"].to_str().unwrap().to_owned();
        let cookie = set_cookie.split(';').next().unwrap().to_owned();
        let body: Value = resp.json().await.unwrap();
        Session {
            cookie,
            csrf: body["csrf_token"].as_str().unwrap().to_owned(),
        }
    }
}

// File contents of each kind.

/// `magic` followed by deterministic noise, `len` bytes in all (at least
/// the magic).
pub fn pad(magic: &[u8], len: usize) -> Vec<u8> {
    let mut v = magic.to_vec();
    let mut i = 0u32;
    while v.len() < len {
        i = i.wrapping_mul(1_103_515_245).wrapping_add(12_345);
        v.push((i >> 16) as u8);
    }
    v.truncate(len.max(magic.len()));
    v
}

/// A PNG of `len` bytes.
pub fn png(len: usize) -> Vec<u8> {
    pad(
        b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89",
        len,
    )
}

/// A JPEG of `len` bytes.
pub fn jpeg(len: usize) -> Vec<u8> {
    pad(
        b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0",
        len,
    )
}

/// A PDF of `len` bytes.
pub fn pdf(len: usize) -> Vec<u8> {
    pad(
        b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n",
        len,
    )
}

/// An MP4 of `len` bytes.
pub fn mp4(len: usize) -> Vec<u8> {
    pad(b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom\0\0\0\x08free", len)
}

/// An ELF executable of `len` bytes (a type intake refuses).
pub fn elf(len: usize) -> Vec<u8> {
    pad(
        b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0>\0\x01\0\0\0",
        len,
    )
}

/// A UTF-8 CSV of `rows` rows.
pub fn csv(rows: usize) -> Vec<u8> {
    let mut s = String::from("id,name,city\n");
    for i in 0..rows {
        s.push_str(&format!("{i},name {i},Zürich\n"));
    }
    s.into_bytes()
}

/// A multipart/form-data body built by hand, so tests can also build broken ones.
pub struct Form {
    /// The boundary between parts.
    pub boundary: String,
    /// The body so far.
    pub body: Vec<u8>,
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

impl Form {
    /// An empty form with a boundary of its own.
    pub fn new() -> Self {
        Self {
            boundary: format!("b{}", Uuid::new_v4().simple()),
            body: Vec::new(),
        }
    }

    /// A batch form of `count` PNG files of `len` bytes each.
    pub fn pngs(count: usize, len: usize) -> Self {
        (0..count).fold(Self::new(), |form, i| {
            form.part("files", &format!("{i}.png"), "image/png", &png(len))
        })
    }

    /// Adds a file part (no `Content-Type` line when `content_type` is empty).
    pub fn part(mut self, name: &str, filename: &str, content_type: &str, data: &[u8]) -> Self {
        self.body
            .extend_from_slice(format!("--{}\r\n", self.boundary).as_bytes());
        self.body.extend_from_slice(
            format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{filename}\"\r\n")
                .as_bytes(),
        );
        if !content_type.is_empty() {
            self.body
                .extend_from_slice(format!("Content-Type: {content_type}\r\n").as_bytes());
        }
        self.body.extend_from_slice(b"\r\n");
        self.body.extend_from_slice(data);
        self.body.extend_from_slice(b"\r\n");
        self
    }

    /// Closes the form.
    pub fn finish(mut self) -> Self {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        self
    }

    /// The request's `Content-Type`, naming the boundary.
    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }
}
