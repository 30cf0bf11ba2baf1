//! `GET /limits`: the tier table of the contract, byte for byte.

use reqwest::StatusCode;
use serde_json::{Value, json};

use crate::helpers::spawn_app;

const MB: u64 = 1_048_576;
const GB: u64 = 1_073_741_824;

#[tokio::test]
async fn limits_equal_the_tier_table_byte_for_byte() {
    let app = spawn_app().await;
    let resp = app.get("/limits").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let body: Value = resp.json().await.unwrap();
    let row = |rpm: u64,
               conc: u64,
               batch: u64,
               img: u64,
               vid: u64,
               storage: Value,
               ai: u64,
               chat: u64,
               keys: bool| {
        json!({
            "requests_per_minute": rpm, "concurrent_uploads": conc, "batch_size": batch,
            "max_image_bytes": img, "max_document_bytes": 50 * MB, "max_video_bytes": vid,
            "storage_bytes": storage, "ai_descriptions_per_month": ai,
            "chat_messages_per_month": chat, "api_keys": keys,
        })
    };
    let expected = json!({
        "tiers": {
            "free": row(10, 10, 10, 25 * MB, GB, json!(GB), 15, 10, false),
            "starter": row(30, 20, 20, 50 * MB, 2 * GB, json!(25 * GB), 300, 200, true),
            "professional": row(100, 30, 20, 100 * MB, 5 * GB, json!(100 * GB), 2500, 2000, true),
            "enterprise": row(500, 50, 50, 200 * MB, 10 * GB, Value::Null, 10000, 5000, true),
        },
        "stream_max_file_bytes": 100 * MB,
    });
    assert_eq!(body, expected);
}
