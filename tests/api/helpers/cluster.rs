//! One deployment of several `intake serve` processes on one schema and
//! one bucket prefix, behind a round-robin [`Relay`], with an in-process
//! control instance that looks into the database.

use std::collections::HashMap;

use futures_util::future::join_all;
use reqwest::{Method, RequestBuilder, Response};
use serde_json::{Value, json};
use tempfile::TempDir;
use uuid::Uuid;

use super::{
    app::{TestApp, spawn},
    bucket::s3_keys_in,
    clients::stream::{Answer, BodySender, open_stream, send_form},
    fixtures::{Form, MIB, mp4},
    processes::{Instance, S3Server, intake_cli},
    relay::Relay,
};

/// What every cluster test runs with: leases that a dead instance gives up
/// within seconds, 5 MiB parts (so a few MiB reach storage as a multipart
/// upload), a reaper that runs only when a test asks (so a test counts
/// every pass), and a database wait short enough to observe.
const BASE: &[(&str, &str)] = &[
    ("UPLOAD_LEASE_TTL_SECS", "2"),
    ("UPLOAD_PART_BYTES", "5242880"),
    ("REAPER_INTERVAL_SECS", "3600"),
    ("DATABASE_ACQUIRE_TIMEOUT_SECS", "3"),
];

/// Several `intake serve` processes on one schema and one bucket prefix,
/// behind a [`Relay`]. `control` is an in-process instance of the same
/// deployment, not behind the balancer, that the test uses to create
/// accounts and to look at the database.
pub struct Cluster {
    // The processes go first (fields drop in order), before `control`
    // drops the schema under them.
    /// The `intake serve` processes.
    pub instances: Vec<Instance>,
    /// The balancer in front of the instances.
    pub lb: Relay,
    /// The in-process instance a test creates accounts with.
    pub control: TestApp,
    /// A client that opens a connection per request, so that consecutive
    /// requests go to consecutive instances.
    pub client: reqwest::Client,
    /// The private S3 server, when the test stops it.
    pub s3: Option<S3Server>,
    vars: HashMap<String, String>,
    _logs: TempDir,
}

impl Cluster {
    /// `n` instances with `vars` on top of [`BASE`], on the shared servers.
    pub async fn start(n: usize, vars: &[(&str, &str)]) -> Cluster {
        Self::start_with(&vec![&[][..]; n], vars, None).await
    }

    /// One instance per entry of `each` (its own variables on top of
    /// `vars`), on the private S3 server when one is given.
    pub async fn start_with(
        each: &[&[(&str, &str)]],
        vars: &[(&str, &str)],
        s3: Option<S3Server>,
    ) -> Cluster {
        let mut builder = spawn();
        for (k, v) in BASE.iter().chain(vars) {
            builder = builder.var(k, v);
        }
        if let Some(s3) = &s3 {
            builder = builder.var("S3_ENDPOINT", &s3.endpoint);
        }
        let control = builder.start().await;
        let vars = control.vars().clone();
        let logs = tempfile::tempdir().expect("a folder for the logs");
        let instances = join_all(each.iter().map(|extra| {
            let mut vars = vars.clone();
            vars.extend(
                extra
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), (*v).to_owned())),
            );
            let dir = logs.path().to_owned();
            async move { Instance::start(&vars, &dir).await }
        }))
        .await;
        let backends: Vec<&str> = instances.iter().map(|i| i.addr.as_str()).collect();
        let lb = Relay::balancing(&backends).await;
        Cluster {
            instances,
            lb,
            control,
            client: reqwest::Client::builder()
                .pool_max_idle_per_host(0)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .unwrap(),
            s3,
            vars,
            _logs: logs,
        }
    }

    /// A request through the balancer.
    pub fn request(&self, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.lb.url(path))
    }

    /// A request straight to instance `i`.
    pub fn at(&self, i: usize, method: Method, path: &str) -> RequestBuilder {
        self.client.request(method, self.instances[i].url(path))
    }

    /// A STARTER account and its key whose per-minute limit leaves room
    /// for a test's polling (the rate-limit test uses its own).
    pub async fn roomy_account(&self, extra: Value) -> (Uuid, String) {
        let (account, key) = self.control.account_with_key("starter").await;
        let mut limits = json!({"requests_per_minute": 100_000});
        limits
            .as_object_mut()
            .unwrap()
            .extend(extra.as_object().cloned().unwrap_or_default());
        self.control
            .patch_account(account.id, json!({"custom_limits": limits}))
            .await;
        (account.id, key)
    }

    /// `intake admin reconcile` over the deployment: asserts it exits 0
    /// (no drift, no orphan, no missing object) and returns its report.
    pub async fn reconcile(&self) -> Value {
        let (code, report, stderr) = intake_cli(&self.vars, &["admin", "reconcile"]).await;
        assert_eq!(code, 0, "reconcile found something: {report:#}\n{stderr}");
        report
    }

    /// A streaming upload of one PNG through the balancer.
    pub async fn upload(&self, key: &str, name: &str, data: &[u8]) -> Response {
        send_form(
            self.request(Method::POST, "/upload/stream"),
            key,
            Form::new().part("file", name, "image/png", data),
        )
        .await
    }

    /// Completes the presigned upload `issued` through the balancer.
    pub async fn complete(&self, key: &str, issued: &Value, body: Value) -> Response {
        let id = issued["upload_id"].as_str().unwrap();
        self.request(Method::POST, &format!("/upload/presigned/{id}/complete"))
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// A 6 MiB video streaming through the balancer, its body left open.
    pub async fn movie(&self, key: &str, name: &str) -> (BodySender, Answer) {
        let url = self.lb.url("/upload/stream");
        open_stream(&self.client, url, key, name, "video/mp4", mp4(6 * MIB)).await
    }

    /// One reaper pass (`intake admin reap`): leases ended, objects deleted.
    pub async fn reap(&self) -> (u64, u64) {
        let (code, out, stderr) = intake_cli(&self.vars, &["admin", "reap"]).await;
        assert_eq!(code, 0, "reap failed: {stderr}");
        (
            out["leases"].as_u64().unwrap(),
            out["objects"].as_u64().unwrap(),
        )
    }

    /// The account's objects in whichever S3 server the cluster uses.
    pub async fn objects(&self, account: Uuid) -> Vec<String> {
        match &self.s3 {
            Some(s3) => {
                let prefix = format!("{}u/{account}/", self.control.prefix);
                s3_keys_in(&s3.client().await, &prefix).await
            }
            None => self.control.objects(account).await,
        }
    }

    /// No lease, no reservation, `files` files whose sizes are the usage,
    /// as many objects, and no slot held.
    pub async fn assert_left_with(&self, account: Uuid, key: &str, files: i64) {
        let h = self.control.settled(account).await;
        assert_eq!((h.reserved, h.leases, h.files), (0, 0, files), "{h:?}");
        assert_eq!(h.used, h.file_bytes, "usage equals the stored sizes");
        assert_eq!(self.objects(account).await.len() as i64, files, "objects");
        assert_eq!(self.control.active(key).await, 0, "slots held");
    }
}
