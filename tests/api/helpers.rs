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

pub const ADMIN_TOKEN: &str = "test-admin-token-0123456789";
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
            client: reqwest::Client::builder()
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

/// The S3 client tests use to look into the bucket (never to upload on the
/// API's behalf).
pub async fn s3_client() -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        env("TEST_S3_ACCESS_KEY_ID"),
        env("TEST_S3_SECRET_ACCESS_KEY"),
        None,
        None,
        "test",
    );
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new("us-east-1"))
        .endpoint_url(env("TEST_S3_ENDPOINT"))
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
    let client = s3_client().await;
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

/// Waits a little, for background work that has no completion signal.
pub async fn settle() {
    tokio::time::sleep(Duration::from_millis(100)).await;
}
