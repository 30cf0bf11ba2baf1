//! One intake per test, in this process: booted on port 0 against its own
//! Postgres schema and its own key prefix in the S3 test server (or a
//! temporary folder), both removed when the test ends; and what a test asks
//! of such an app (requests, what an account holds, what storage holds).

use std::{collections::HashMap, time::Duration};

use intake::{App, AppState, Config};
use reqwest::{Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use sqlx::{Connection, PgConnection};
use tempfile::TempDir;
use tokio::sync::oneshot;
use uuid::Uuid;

use super::{
    bucket::{S3_BUCKET, ensure_bucket, s3_client, s3_keys, s3_region},
    fixtures::Session,
    poll::{eventually, within},
};

/// The admin API's bearer token in every test app.
pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789abcdefghij";

/// Where a test's objects go.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Backend {
    /// The S3 test server, below the app's key prefix.
    S3,
    /// A temporary local folder.
    Fs,
}

/// A variable scripts/test.sh sets; panics saying so when it is missing.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: run the suite with scripts/test.sh, which starts Postgres and the S3 test server")
    })
}

/// A running intake with its own schema and storage prefix.
pub struct TestApp {
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    /// A client whose pooled connections go before the server drops them.
    pub client: reqwest::Client,
    /// The app's own state, for looking into its database and store.
    pub state: AppState,
    /// The Postgres schema; empty on an instance that shares another's.
    pub schema: String,
    /// The key prefix of its objects in the test bucket.
    pub prefix: String,
    /// Where its objects go.
    pub backend: Backend,
    /// The local folder, on [`Backend::Fs`].
    pub fs_root: Option<TempDir>,
    vars: HashMap<String, String>,
    shutdown: Option<oneshot::Sender<()>>,
    server: Option<tokio::task::JoinHandle<()>>,
}

/// Builder of a test app's environment.
pub struct Spawn {
    backend: Backend,
    vars: HashMap<String, String>,
    schema: Option<String>,
    prefix: Option<String>,
}

impl Spawn {
    /// Stores objects on `backend` (S3 unless told).
    pub fn backend(mut self, backend: Backend) -> Self {
        self.backend = backend;
        self
    }

    /// Sets one environment variable of the app's configuration.
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

    /// Creates the schema (unless shared) and boots the app on port 0.
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
                let dir = tempfile::tempdir().expect("a temporary folder");
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
    /// `http://127.0.0.1:<port>`.
    pub addr: String,
    kill: Option<std::sync::mpsc::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Killable {
    /// The absolute URL of `path` on this instance.
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

/// A builder of a fresh app: S3, default settings, its own schema.
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

    /// The absolute URL of `path` on this app.
    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.addr)
    }

    /// A request to `path` through the app's client.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.url(path))
    }

    /// A GET of `path`.
    pub fn get(&self, path: &str) -> RequestBuilder {
        self.request(Method::GET, path)
    }

    /// A POST to `path`.
    pub fn post(&self, path: &str) -> RequestBuilder {
        self.request(Method::POST, path)
    }

    /// A request with the admin token.
    pub fn admin(&self, method: Method, path: &str) -> RequestBuilder {
        self.request(method, path).bearer_auth(ADMIN_TOKEN)
    }
}

impl TestApp {
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

    /// `GET /usage` with the key, as JSON.
    pub async fn usage(&self, key: &str) -> Value {
        self.get("/usage")
            .bearer_auth(key)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap()
    }

    /// The one `int8` a query over the app's schema returns.
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

impl TestApp {
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
        within(Duration::from_secs(10), || async {
            let h = self.holdings(account).await;
            h.reserved == 0 && h.leases == 0
        })
        .await;
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

impl TestApp {
    /// The server's address as `host:port`, for raw TCP tests.
    pub fn socket_addr(&self) -> String {
        self.addr.trim_start_matches("http://").to_owned()
    }
}
