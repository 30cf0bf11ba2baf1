//! intake's admin API as the benches use it: an account of a tier, its
//! limits set where a bench needs them out of the way, and an API key.

use serde_json::{Value, json};

use crate::s3::env;

/// Admin calls to one intake, with ADMIN_TOKEN from the environment.
pub struct Admin {
    http: reqwest::Client,
    url: String,
    token: String,
}

impl Admin {
    /// The admin API of the intake at `intake_url` (`http://127.0.0.1:<port>`).
    pub fn new(intake_url: &str) -> Admin {
        Admin {
            http: reqwest::Client::new(),
            url: intake_url.to_owned(),
            token: env("ADMIN_TOKEN"),
        }
    }

    /// One call; any answer but a 2xx ends the bench with it.
    async fn call(&self, method: reqwest::Method, path: &str, body: Value) -> Value {
        let resp = self
            .http
            .request(method, format!("{}{path}", self.url))
            .bearer_auth(&self.token)
            .json(&body)
            .send()
            .await
            .unwrap_or_else(|e| panic!("admin {path}: {e}"));
        let status = resp.status();
        let body: Value = resp.json().await.expect("admin JSON");
        assert!(status.is_success(), "admin {path}: {status} {body}");
        body
    }

    /// Gives account `id` the `custom_limits` (the keys given; the others
    /// stay the tier's).
    pub async fn set_limits(&self, id: &str, custom_limits: Value) {
        self.call(
            reqwest::Method::PATCH,
            &format!("/admin/accounts/{id}"),
            json!({ "custom_limits": custom_limits }),
        )
        .await;
    }

    /// Creates an account (`email`, `tier`), gives it `custom_limits` when
    /// they are given, and returns a new API key of it.
    pub async fn key(&self, email: &str, tier: &str, custom_limits: Option<Value>) -> String {
        let account = self
            .call(
                reqwest::Method::POST,
                "/admin/accounts",
                json!({"email": email, "tier": tier}),
            )
            .await;
        let id = account["id"].as_str().expect("account id").to_owned();
        if let Some(limits) = custom_limits {
            self.set_limits(&id, limits).await;
        }
        let key = self
            .call(
                reqwest::Method::POST,
                &format!("/admin/accounts/{id}/api-keys"),
                json!({"name": "bench"}),
            )
            .await;
        key["key"].as_str().expect("the API key").to_owned()
    }
}
