//! Boots intake on port 0 against its own Postgres schema and its own key
//! prefix in the real S3 test server (or a temporary folder), and removes
//! both when the test ends.

#![allow(dead_code)]

use std::{collections::HashMap, time::Duration};

use intake::{App, AppState, Config};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::{Value, json};
use sqlx::{Connection, PgConnection};
use tokio::sync::oneshot;
use uuid::Uuid;

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghij";
pub const PASSWORD: &str = "correct horse battery";
pub const S3_BUCKET: &str = "intake-test";

/// Where a test's objects go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    S3,
    Fs,
}

pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test.sh, which starts Postgres and the S3 test server")
    })
}

/// A running intake with its own schema and storage prefix.
pub struct TestApp {
    pub addr: String,
    pub client: reqwest::Client,
    pub state: AppState,
    pub schema: String,
    pub prefix: String,
    pub backend: Backend,
    pub fs_root: Option<tempfile_dir::TempDir>,
    vars: HashMap<String, String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// A tiny temporary-directory helper (std only).
pub mod tempfile_dir {
    use std::path::{Path, PathBuf};

    pub struct TempDir(PathBuf);

    impl TempDir {
        pub fn new() -> Self {
            let path = std::env::temp_dir().join(format!("intake-test-{}", uuid::Uuid::new_v4()));
            std::fs::create_dir_all(&path).unwrap();
            Self(path)
        }
        pub fn path(&self) -> &Path {
            &self.0
        }
    }

    impl Drop for TempDir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
}

/// Builder of a test app's environment.
pub struct Spawn {
    backend: Backend,
    vars: HashMap<String, String>,
    schema: Option<String>,
    prefix: Option<String>,
}

impl Spawn {
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    pub fn var(mut self, name: &str, value: &str) -> Self {
        self.vars.insert(name.into(), value.into());
        self
    }

    /// Shares another app's schema and storage (a second instance).
    pub fn sharing(mut self, other: &TestApp) -> Self {
        self.schema = Some(other.schema.clone());
        self.prefix = Some(other.prefix.clone());
        self.backend = other.backend;
        self.vars = other.vars.clone();
        self
    }

    pub async fn start(self) -> TestApp {
        let schema = self
            .schema
            .clone()
            .unwrap_or_else(|| format!("t_{}", Uuid::new_v4().simple()));
        let prefix = self.prefix.clone().unwrap_or_else(|| format!("{schema}/"));
        let base_url = env("TEST_DATABASE_URL");
        if self.schema.is_none() {
            let mut conn = PgConnection::connect(&base_url)
                .await
                .expect("connect to the test database");
            sqlx::query(&format!("CREATE SCHEMA {schema}"))
                .execute(&mut conn)
                .await
                .unwrap();
            conn.close().await.ok();
        }
        let mut vars: HashMap<String, String> = HashMap::from([
            (
                "DATABASE_URL".into(),
                format!("{base_url}?options=-c%20search_path%3D{schema}"),
            ),
            ("DATABASE_MAX_CONNECTIONS".into(), "10".into()),
            (
                "JWT_SECRET".into(),
                "test-jwt-secret-0123456789abcdefghijklmnop".into(),
            ),
            ("BIND_ADDR".into(), "127.0.0.1:0".into()),
            ("ADMIN_TOKEN".into(), ADMIN_TOKEN.into()),
            ("COOKIE_SECURE".into(), "false".into()),
        ]);
        let fs_root = match self.backend {
            Backend::S3 => {
                vars.insert("STORAGE_BACKEND".into(), "s3".into());
                vars.insert("S3_BUCKET".into(), S3_BUCKET.into());
                vars.insert("S3_ENDPOINT".into(), env("TEST_S3_ENDPOINT"));
                vars.insert("S3_REGION".into(), s3_region());
                vars.insert("S3_ACCESS_KEY_ID".into(), env("TEST_S3_ACCESS_KEY_ID"));
                vars.insert(
                    "S3_SECRET_ACCESS_KEY".into(),
                    env("TEST_S3_SECRET_ACCESS_KEY"),
                );
                vars.insert("S3_KEY_PREFIX".into(), prefix.clone());
                ensure_bucket().await;
                None
            }
            Backend::Fs => {
                let dir = tempfile_dir::TempDir::new();
                vars.insert("STORAGE_BACKEND".into(), "fs".into());
                vars.insert("FS_ROOT".into(), dir.path().display().to_string());
                Some(dir)
            }
        };
        vars.extend(self.vars);
        let config = Config::from_lookup(|k| vars.get(k).cloned()).expect("test configuration");
        let app = App::build(config).await.expect("app builds");
        let addr = format!("http://127.0.0.1:{}", app.port());
        let state = app.state().clone();
        let (tx, rx) = oneshot::channel();
        let server = tokio::spawn(async move {
            app.run_until(async move {
                let _ = rx.await;
            })
            .await
            .expect("server runs");
        });
        TestApp {
            addr,
            // The server closes a kept-alive connection once it has waited
            // `HEADER_READ_TIMEOUT_SECS` for the next request; a client that
            // reuses it at that moment gets a cut answer. As docs/api.md
            // advises, the pool lets connections go well before that.
            client: reqwest::Client::builder()
                .pool_idle_timeout(state.config.header_read_timeout / 2)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            state,
            schema,
            prefix,
            backend: self.backend,
            fs_root,
            vars,
            shutdown: Some(tx),
            server: Some(server),
        }
    }
}

/// An instance on a runtime of its own, that a test can kill outright: its
/// tasks stop wherever they are, nothing of it cleans up, as when the
/// process dies.
pub struct Killable {
    pub addr: String,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// Stops the instance's runtime at once.
    pub fn kill(&mut self) {
        self.kill.take();
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Killable {
    fn drop(&mut self) {
        self.kill();
    }
}

impl Spawn {
    /// Starts a second instance (after [`Spawn::sharing`]) that can be killed.
    pub fn start_killable(self) -> Killable {
        assert!(
            self.schema.is_some(),
            "a killable instance shares another's schema"
        );
        let vars = self.vars.clone();
        let (port_tx, port_rx) = std::sync::mpsc::channel();
        let (kill_tx, kill_rx) = std::sync::mpsc::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread()
                .worker_threads(2)
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let config = Config::from_lookup(|k| vars.get(k).cloned()).unwrap();
                let app = App::build(config).await.expect("app builds");
                port_tx.send(app.port()).unwrap();
                tokio::spawn(async move {
                    let _ = app.run_until(std::future::pending()).await;
                });
            });
            // Until killed; then every task is dropped where it stands.
            let _ = kill_rx.recv();
            rt.shutdown_background();
        });
        let port = port_rx.recv().expect("the killable instance started");
        Killable {
            addr: format!("http://127.0.0.1:{port}"),
            kill: Some(kill_tx),
            thread: Some(thread),
        }
    }
}

/// Which S3 server the suite runs against (`TEST_S3_STORE`, set by
/// scripts/test.sh): `s3s-fs` (the S3 test server) or `garage`.
pub fn s3_store() -> String {
    std::env::var("TEST_S3_STORE").unwrap_or_else(|_| "s3s-fs".into())
}

/// The region the S3 server signs for (Garage's is its `s3_region`).
pub fn s3_region() -> String {
    std::env::var("TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into())
}

/// The S3 client tests use to look into the bucket (never to upload on the
/// API's behalf).
pub async fn s3_client() -> aws_sdk_s3::Client {
    s3_client_at(&env("TEST_S3_ENDPOINT")).await
}

/// The same client for another S3 server with the test credentials (a
/// private one that a test stops and restarts).
pub async fn s3_client_at(endpoint: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        env("TEST_S3_ACCESS_KEY_ID"),
        env("TEST_S3_SECRET_ACCESS_KEY"),
        None,
        None,
        "test",
    );
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(s3_region()))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

async fn ensure_bucket() {
    let client = s3_client().await;
    if client.head_bucket().bucket(S3_BUCKET).send().await.is_err() {
        // Parallel tests may race to create it; either way it exists after.
        let _ = client.create_bucket().bucket(S3_BUCKET).send().await;
    }
}

/// Keys under a prefix in the test bucket.
pub async fn s3_keys(prefix: &str) -> Vec<String> {
    s3_keys_in(&s3_client().await, prefix).await
}

/// Keys under a prefix of the test bucket, through a given client.
pub async fn s3_keys_in(client: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(S3_BUCKET)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list objects");
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match out.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    keys
}

pub fn spawn() -> Spawn {
    Spawn {
        backend: Backend::S3,
        vars: HashMap::new(),
        schema: None,
        prefix: None,
    }
}

/// A fresh app on the S3 backend with default settings.
pub async fn spawn_app() -> TestApp {
    spawn().start().await
}

/// An account made through the admin API, with its password.
pub struct TestAccount {
    pub id: Uuid,
    pub email: String,
}

/// A logged-in dashboard session.
pub struct Session {
    pub cookie: String,
    pub csrf: String,
}

impl TestApp {
    /// The environment the app was started with (another process of the
    /// same deployment starts with it).
    pub fn vars(&self) -> &HashMap<String, String> {
        &self.vars
    }

    /// The connection string of this app's schema.
    pub fn database_url(&self) -> String {
        self.vars["DATABASE_URL"].clone()
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(ADMIN_TOKEN)
    }

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

    /// A request with the session cookie and its CSRF token.
    pub fn with_session(&self, method: Method, path: &str, s: &Session) -> RequestBuilder {
        self.request(method, path)
            .header("cookie", &s.cookie)
            .header("x-csrf-token", &s.csrf)
    }

    /// A second instance on the same database and storage.
    pub async fn second_instance(&self) -> TestApp {
        let mut other = spawn().sharing(self).start().await;
        // Only the first instance cleans up what they share.
        other.schema.clear();
        other
    }

    /// Sends the shutdown signal, as SIGTERM would.
    pub fn signal_shutdown(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
    }

    /// Waits for the server to stop after [`TestApp::signal_shutdown`].
    pub async fn stopped(&mut self) {
        if let Some(server) = self.server.take() {
            let _ = tokio::time::timeout(Duration::from_secs(30), server).await;
        }
    }

    /// Plants a lease as an instance that died leaves it: holding
    /// `reserved` bytes (added to the account's reservation) and the storage
    /// `columns` given, expiring `expires` from now (an interval, negative
    /// when already expired).
    pub async fn plant_lease(
        &self,
        account: Uuid,
        reserved: i64,
        columns: &[(&str, &str)],
        expires: &str,
    ) -> Uuid {
        let id = Uuid::now_v7();
        let names: String = columns.iter().map(|(c, _)| format!(", {c}")).collect();
        let params: String = (0..columns.len())
            .map(|i| format!(", ${}", i + 5))
            .collect();
        let sql = format!(
            "INSERT INTO upload_leases (id, account_id, kind, reserved_bytes, expires_at{names})
             VALUES ($1, $2, 'stream', $3, now() + $4::interval{params})"
        );
        let mut insert = sqlx::query(&sql)
            .bind(id)
            .bind(account)
            .bind(reserved)
            .bind(expires);
        for (_, value) in columns {
            insert = insert.bind(*value);
        }
        let mut tx = self.state.db.begin().await.unwrap();
        insert.execute(&mut *tx).await.unwrap();
        sqlx::query(
            "UPDATE accounts SET storage_reserved_bytes = storage_reserved_bytes + $2 WHERE id = $1",
        )
        .bind(account)
        .bind(reserved)
        .execute(&mut *tx)
        .await
        .unwrap();
        tx.commit().await.unwrap();
        id
    }

    pub async fn scalar_i64(&self, sql: &str) -> i64 {
        sqlx::query_scalar(sql)
            .fetch_one(&self.state.db)
            .await
            .unwrap()
    }
}

/// Asserts a problem+json answer and returns its body.
pub async fn assert_problem(resp: Response, status: StatusCode, code: &str) -> Value {
    assert_eq!(resp.status(), status, "unexpected status");
    let ct = resp
        .headers()
        .get("content-type")
        .map(|v| v.to_str().unwrap().to_owned())
        .unwrap_or_default();
    assert_eq!(ct, "application/problem+json", "problem content type");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["code"], code, "{body}");
    assert_eq!(body["status"], status.as_u16(), "{body}");
    assert!(
        body["title"].is_string() && body["detail"].is_string() && body["type"].is_string(),
        "{body}"
    );
    body
}

impl Drop for TestApp {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(server) = self.server.take() {
            server.abort();
        }
        if self.schema.is_empty() {
            return;
        }
        let (schema, prefix, backend) = (self.schema.clone(), self.prefix.clone(), self.backend);
        let cleanup = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                if let Ok(mut conn) = PgConnection::connect(&env("TEST_DATABASE_URL")).await {
                    let _ = sqlx::query("SET lock_timeout = '10s'")
                        .execute(&mut conn)
                        .await;
                    let _ = sqlx::query(&format!("DROP SCHEMA IF EXISTS {schema} CASCADE"))
                        .execute(&mut conn)
                        .await;
                    let _ = conn.close().await;
                }
                if backend == Backend::S3 {
                    let client = s3_client().await;
                    for key in s3_keys(&prefix).await {
                        let _ = client
                            .delete_object()
                            .bucket(S3_BUCKET)
                            .key(key)
                            .send()
                            .await;
                    }
                }
            });
        });
        let _ = cleanup.join();
    }
}

/// Waits (up to 10 s, polling) until `condition` holds; panics naming
/// `what` otherwise. For work that ends in the background.
pub async fn eventually<F, Fut>(what: &str, mut condition: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    for _ in 0..200 {
        if condition().await {
            return;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    panic!("timed out waiting for: {what}");
}

/// Waits until the wall clock is past `instant` (an expiry the server
/// announced), plus `margin` for a clock read in whole seconds elsewhere.
pub async fn past(instant: chrono::DateTime<chrono::Utc>, margin: Duration) {
    let target = instant + chrono::Duration::from_std(margin).unwrap();
    let left = (target - chrono::Utc::now()).to_std().unwrap_or_default();
    tokio::time::sleep(left).await;
}

/// What an account holds, as the database counts it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct Holdings {
    /// `storage_used_bytes`.
    pub used: i64,
    /// `storage_reserved_bytes`.
    pub reserved: i64,
    /// Upload leases, live or not.
    pub leases: i64,
    /// File rows.
    pub files: i64,
    /// The sum of the file rows' sizes.
    pub file_bytes: i64,
}

impl Holdings {
    /// Nothing at all.
    pub const NOTHING: Holdings = Holdings::stored(0, 0);

    /// `files` files of `bytes` in all, counted as usage, and nothing else.
    pub const fn stored(files: i64, bytes: i64) -> Holdings {
        Holdings {
            used: bytes,
            reserved: 0,
            leases: 0,
            files,
            file_bytes: bytes,
        }
    }
}

/// File contents of each kind, `len` bytes long (at least the magic).
pub mod fixtures {
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
    pub fn png(len: usize) -> Vec<u8> {
        pad(
            b"\x89PNG\r\n\x1a\n\0\0\0\rIHDR\0\0\0\x01\0\0\0\x01\x08\x06\0\0\0\x1f\x15\xc4\x89",
            len,
        )
    }
    pub fn jpeg(len: usize) -> Vec<u8> {
        pad(
            b"\xff\xd8\xff\xe0\0\x10JFIF\0\x01\x01\0\0\x01\0\x01\0\0",
            len,
        )
    }
    pub fn pdf(len: usize) -> Vec<u8> {
        pad(
            b"%PDF-1.7\n%\xe2\xe3\xcf\xd3\n1 0 obj\n<< >>\nendobj\n",
            len,
        )
    }
    pub fn mp4(len: usize) -> Vec<u8> {
        pad(b"\0\0\0\x18ftypmp42\0\0\0\0mp42isom\0\0\0\x08free", len)
    }
    pub fn elf(len: usize) -> Vec<u8> {
        pad(
            b"\x7fELF\x02\x01\x01\0\0\0\0\0\0\0\0\0\x02\0>\0\x01\0\0\0",
            len,
        )
    }
    pub fn csv(rows: usize) -> Vec<u8> {
        let mut s = String::from("id,name,city\n");
        for i in 0..rows {
            s.push_str(&format!("{i},name {i},Zürich\n"));
        }
        s.into_bytes()
    }
}

/// A multipart/form-data body built by hand, so tests can also build broken ones.
pub struct Form {
    pub boundary: String,
    pub body: Vec<u8>,
}

impl Default for Form {
    fn default() -> Self {
        Self::new()
    }
}

impl Form {
    pub fn new() -> Self {
        Self {
            boundary: format!("b{}", Uuid::new_v4().simple()),
            body: Vec::new(),
        }
    }

    /// A batch form of `count` PNG files of `len` bytes each.
    pub fn pngs(count: usize, len: usize) -> Self {
        (0..count).fold(Self::new(), |form, i| {
            form.part(
                "files",
                &format!("{i}.png"),
                "image/png",
                &fixtures::png(len),
            )
        })
    }

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

    pub fn finish(mut self) -> Self {
        self.body
            .extend_from_slice(format!("--{}--\r\n", self.boundary).as_bytes());
        self
    }

    pub fn content_type(&self) -> String {
        format!("multipart/form-data; boundary={}", self.boundary)
    }
}

impl TestApp {
    /// Sends a finished form to an upload route with the key.
    pub async fn upload_form(&self, path: &str, key: &str, form: Form) -> Response {
        let form = form.finish();
        self.post(path)
            .bearer_auth(key)
            .header("content-type", form.content_type())
            .body(form.body)
            .send()
            .await
            .unwrap()
    }

    /// Uploads one file through `/upload/stream`.
    pub async fn upload(
        &self,
        key: &str,
        filename: &str,
        content_type: &str,
        data: &[u8],
    ) -> Response {
        self.upload_form(
            "/upload/stream",
            key,
            Form::new().part("file", filename, content_type, data),
        )
        .await
    }

    /// What the account holds.
    pub async fn holdings(&self, account: Uuid) -> Holdings {
        sqlx::query_as(
            "SELECT a.storage_used_bytes AS used, a.storage_reserved_bytes AS reserved,
                    (SELECT count(*) FROM upload_leases l WHERE l.account_id = a.id) AS leases,
                    (SELECT count(*) FROM files f WHERE f.account_id = a.id) AS files,
                    (SELECT coalesce(sum(size), 0)::int8 FROM files f WHERE f.account_id = a.id)
                      AS file_bytes
             FROM accounts a WHERE a.id = $1",
        )
        .bind(account)
        .fetch_one(&self.state.db)
        .await
        .unwrap()
    }

    /// Waits (up to 10 s) until the account holds no lease and no
    /// reservation (uploads end their leases in the background when a
    /// client goes away), then returns what it holds.
    pub async fn settled(&self, account: Uuid) -> Holdings {
        for _ in 0..100 {
            let h = self.holdings(account).await;
            if h.reserved == 0 && h.leases == 0 {
                return h;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        self.holdings(account).await
    }

    /// Waits until every upload lease of the account has expired (by the
    /// database's clock, which decides).
    pub async fn leases_expired(&self, account: Uuid) {
        eventually("the account's leases expire", || async {
            self.scalar_i64(&format!(
                "SELECT count(*) FROM upload_leases WHERE account_id = '{account}' AND expires_at > now()"
            ))
            .await
                == 0
        })
        .await;
    }

    /// Waits until the server accepts no new connection (graceful shutdown
    /// has begun).
    pub async fn not_accepting(&self) {
        let addr = self.addr.trim_start_matches("http://").to_owned();
        eventually("the server stops accepting", || {
            let addr = addr.clone();
            async move { tokio::net::TcpStream::connect(addr).await.is_err() }
        })
        .await;
    }

    /// A file's bytes as a client gets them: following the redirect to
    /// storage (S3) or straight from intake (local folder).
    pub async fn download(&self, key: &str, file_id: &str) -> Vec<u8> {
        download(
            self.get(&format!("/files/{file_id}/content"))
                .bearer_auth(key),
        )
        .await
    }

    /// Asserts what an account is left with once its uploads have ended: no
    /// reservation, no lease, `files` file rows, usage equal to their sizes,
    /// and as many objects in storage.
    pub async fn assert_left_with(&self, account: Uuid, files: i64) {
        let h = self.settled(account).await;
        assert_eq!(
            (h.reserved, h.leases, h.files),
            (0, 0, files),
            "reserved, leases, file rows"
        );
        assert_eq!(h.used, h.file_bytes, "usage equals the stored sizes");
        assert_eq!(
            self.objects(account).await.len() as i64,
            files,
            "objects in storage"
        );
    }

    /// Object keys stored for the account, whatever the backend.
    pub async fn objects(&self, account: Uuid) -> Vec<String> {
        match self.backend {
            Backend::S3 => s3_keys(&format!("{}u/{account}/", self.prefix)).await,
            Backend::Fs => {
                let dir = self
                    .fs_root
                    .as_ref()
                    .unwrap()
                    .path()
                    .join("u")
                    .join(account.to_string());
                let mut keys = Vec::new();
                if let Ok(entries) = std::fs::read_dir(dir) {
                    for e in entries.flatten() {
                        keys.push(e.file_name().to_string_lossy().into_owned());
                    }
                }
                keys
            }
        }
    }

    /// Every object the app's storage holds (S3: below its prefix; the local
    /// folder: every file but partial writes), as keys without the prefix.
    pub async fn every_object(&self) -> Vec<String> {
        match self.backend {
            Backend::S3 => s3_keys(&self.prefix)
                .await
                .into_iter()
                .map(|k| k.trim_start_matches(&self.prefix).to_owned())
                .collect(),
            Backend::Fs => {
                fn walk(dir: &std::path::Path, root: &std::path::Path, out: &mut Vec<String>) {
                    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
                        let path = e.path();
                        if path.is_dir() {
                            if e.file_name() != ".tmp" {
                                walk(&path, root, out);
                            }
                        } else {
                            let rel = path.strip_prefix(root).unwrap();
                            out.push(rel.to_string_lossy().into_owned());
                        }
                    }
                }
                let root = self.fs_root.as_ref().unwrap().path();
                let mut keys = Vec::new();
                walk(root, root, &mut keys);
                keys
            }
        }
    }

    /// Files in the local backend's temporary folder (partial writes).
    pub fn fs_partials(&self) -> usize {
        std::fs::read_dir(self.fs_root.as_ref().unwrap().path().join(".tmp"))
            .map(|d| d.count())
            .unwrap_or(0)
    }
}

/// The bytes a `GET /files/{id}/content` request fetches, following the
/// redirect to storage (S3) or straight from intake (local folder).
pub async fn download(content: reqwest::RequestBuilder) -> Vec<u8> {
    let resp = content.send().await.unwrap();
    let resp = if resp.status() == reqwest::StatusCode::FOUND {
        reqwest::get(resp.headers()["location"].to_str().unwrap())
            .await
            .unwrap()
    } else {
        resp
    };
    assert_eq!(resp.status(), reqwest::StatusCode::OK);
    resp.bytes().await.unwrap().to_vec()
}

/// A TCP proxy in front of a server, that a test can cut to make the server
/// unreachable mid-request.
pub struct Proxy {
    pub addr: String,
    cut: Arc<tokio::sync::Notify>,
    down: Arc<std::sync::atomic::AtomicBool>,
    held: Arc<std::sync::atomic::AtomicBool>,
    pub forwarded: Arc<std::sync::atomic::AtomicU64>,
}

use std::sync::Arc;

impl Proxy {
    pub async fn start(upstream: &str) -> Proxy {
        let upstream = upstream.trim_start_matches("http://").to_owned();
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let cut = Arc::new(tokio::sync::Notify::new());
        let down = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let forwarded = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let held = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (c, d, f, h) = (cut.clone(), down.clone(), forwarded.clone(), held.clone());
        tokio::spawn(async move {
            loop {
                let Ok((mut client, _)) = listener.accept().await else {
                    return;
                };
                if d.load(std::sync::atomic::Ordering::SeqCst) {
                    continue;
                }
                let (upstream, cut, forwarded, held) =
                    (upstream.clone(), c.clone(), f.clone(), h.clone());
                tokio::spawn(async move {
                    let Ok(mut server) = tokio::net::TcpStream::connect(&upstream).await else {
                        return;
                    };
                    let (mut cr, mut cw) = client.split();
                    let (mut sr, mut sw) = server.split();
                    let up = async {
                        let mut buf = vec![0u8; 64 * 1024];
                        loop {
                            if held.load(std::sync::atomic::Ordering::SeqCst) {
                                // Until the cut: the server gets no more bytes.
                                std::future::pending::<()>().await;
                            }
                            let n = tokio::io::AsyncReadExt::read(&mut cr, &mut buf)
                                .await
                                .unwrap_or(0);
                            if n == 0 {
                                break;
                            }
                            forwarded.fetch_add(n as u64, std::sync::atomic::Ordering::SeqCst);
                            if tokio::io::AsyncWriteExt::write_all(&mut sw, &buf[..n])
                                .await
                                .is_err()
                            {
                                break;
                            }
                        }
                    };
                    let down = tokio::io::copy(&mut sr, &mut cw);
                    tokio::select! {
                        _ = async { tokio::join!(up, down) } => {}
                        _ = cut.notified() => {}
                    }
                });
            }
        });
        Proxy {
            addr,
            cut,
            down,
            held,
            forwarded,
        }
    }

    /// Stops passing the client's bytes on (the server takes no more), until
    /// `cut`.
    pub fn hold(&self) {
        self.held.store(true, std::sync::atomic::Ordering::SeqCst);
    }

    /// Drops every connection and refuses new ones.
    pub fn cut(&self) {
        self.down.store(true, std::sync::atomic::Ordering::SeqCst);
        self.cut.notify_waiters();
    }

    /// Lets connections through again.
    pub fn restore(&self) {
        self.down.store(false, std::sync::atomic::Ordering::SeqCst);
        self.held.store(false, std::sync::atomic::Ordering::SeqCst);
    }
}

/// A server on 127.0.0.1 standing in for storage that misbehaves; it stops
/// when dropped.
pub struct FakeStorage {
    pub addr: String,
    task: tokio::task::JoinHandle<()>,
}

impl FakeStorage {
    async fn serve<F>(accept: impl FnOnce(tokio::net::TcpListener) -> F) -> FakeStorage
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = format!("http://{}", listener.local_addr().unwrap());
        let task = tokio::spawn(accept(listener));
        FakeStorage { addr, task }
    }

    /// Accepts connections and never answers: storage (or anything) that
    /// has stopped responding without closing its sockets.
    pub async fn blackhole() -> FakeStorage {
        Self::serve(|listener| async move {
            let mut held = Vec::new();
            while let Ok((socket, _)) = listener.accept().await {
                held.push(socket);
            }
        })
        .await
    }

    /// Reads each request to its last byte and then closes the connection
    /// without answering: storage that died after taking a request, as a
    /// killed S3 server does.
    pub async fn hangup() -> FakeStorage {
        use tokio::io::AsyncReadExt;
        Self::serve(|listener| async move {
            while let Ok((mut socket, _)) = listener.accept().await {
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = vec![0u8; 64 * 1024];
                    let (head_end, body_len) = loop {
                        let Ok(n) = socket.read(&mut buf).await else {
                            return;
                        };
                        if n == 0 {
                            return;
                        }
                        got.extend_from_slice(&buf[..n]);
                        if let Some(at) = memchr::memmem::find(&got, b"\r\n\r\n") {
                            let head = String::from_utf8_lossy(&got[..at]).to_ascii_lowercase();
                            let len = head
                                .lines()
                                .find_map(|l| l.strip_prefix("content-length:"))
                                .and_then(|v| v.trim().parse::<usize>().ok())
                                .unwrap_or(0);
                            break (at + 4, len);
                        }
                    };
                    let mut left = (head_end + body_len).saturating_sub(got.len());
                    while left > 0 {
                        match socket.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => left = left.saturating_sub(n),
                        }
                    }
                    // Dropped with nothing unread: a clean close, no answer.
                });
            }
        })
        .await
    }
}

impl Drop for FakeStorage {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl TestApp {
    /// The server's address as `host:port`, for raw TCP tests.
    pub fn socket_addr(&self) -> String {
        self.addr.trim_start_matches("http://").to_owned()
    }
}
