//! Upload tokens: minting them, what the database counts of each, and
//! their expiry brought forward.

use reqwest::StatusCode;
use serde_json::Value;

use super::app::TestApp;

/// What the database counts of a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, sqlx::FromRow)]
pub struct TokenCounters {
    /// `files_used`.
    pub files_used: i32,
    /// `bytes_used`.
    pub bytes_used: i64,
    /// `files_reserved`.
    pub files_reserved: i32,
    /// `bytes_reserved`.
    pub bytes_reserved: i64,
    /// The leases holding a share of it.
    pub holds: i64,
}

impl TokenCounters {
    /// `files` files of `bytes` in all used, and nothing held.
    pub const fn used(files: i32, bytes: i64) -> Self {
        Self {
            files_used: files,
            bytes_used: bytes,
            files_reserved: 0,
            bytes_reserved: 0,
            holds: 0,
        }
    }
}

impl TestApp {
    /// `POST /upload-tokens` with the key (or any bearer credential).
    pub async fn mint_answer(&self, key: &str, body: Value) -> reqwest::Response {
        self.post("/upload-tokens")
            .bearer_auth(key)
            .json(&body)
            .send()
            .await
            .unwrap()
    }

    /// Mints an upload token with the key; returns the answer (`token`,
    /// `id`, …).
    pub async fn mint(&self, key: &str, body: Value) -> Value {
        let resp = self.mint_answer(key, body).await;
        assert_eq!(
            resp.status(),
            StatusCode::CREATED,
            "{}",
            resp.text().await.unwrap()
        );
        resp.json().await.unwrap()
    }

    /// What the database counts of token `id`.
    pub async fn token_counters(&self, id: &str) -> TokenCounters {
        sqlx::query_as(
            "SELECT files_used, bytes_used, files_reserved, bytes_reserved,
                    (SELECT count(*) FROM upload_token_holds h WHERE h.token_id = t.id) AS holds
             FROM upload_tokens t WHERE id = $1",
        )
        .bind(id)
        .fetch_one(&self.state.db)
        .await
        .unwrap()
    }

    /// Brings token `id`'s expiry to now (by the database's clock), as the
    /// passing of its `expires_in` would.
    pub async fn expire_token(&self, id: &str) {
        sqlx::query("UPDATE upload_tokens SET expires_at = now() WHERE id = $1")
            .bind(id)
            .execute(&self.state.db)
            .await
            .unwrap();
    }
}
