//! A stand-in AI provider: a real HTTP server on 127.0.0.1 speaking the
//! chat-completions protocol, recording every request it gets and
//! answering from a script; and an app that uses it.

use std::{
    collections::VecDeque,
    sync::{Arc, Mutex},
    time::Duration,
};

use axum::{
    body::Bytes,
    extract::State,
    http::{HeaderMap, StatusCode as AxStatus, Uri},
    response::{IntoResponse, Response as AxResponse},
};
use serde_json::{Value, json};
use tokio::sync::watch;

use super::app::{TestApp, spawn};

/// The model every stand-in app names.
pub const MODEL: &str = "test-vision-model";
/// The provider key every stand-in app sends.
pub const API_KEY: &str = "sk-test-0123456789";

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Reply {
    /// 200 with a chat completion whose content is this text.
    Text(String),
    /// An error status, with a Retry-After when given.
    Status(u16, Option<&'static str>),
    /// Answers nothing for a minute (longer than any test's timeout).
    Hang,
    /// 200 with a body that is not a chat completion.
    Malformed,
    /// 200 with this text once the test opens the gate it was made from.
    Held(watch::Receiver<bool>, String),
}

/// Holds the answers made from it until the test opens it.
pub struct Gate(watch::Sender<bool>);

impl Default for Gate {
    fn default() -> Self {
        Self::new()
    }
}

impl Gate {
    /// A closed gate.
    pub fn new() -> Gate {
        Gate(watch::channel(false).0)
    }

    /// An answer of `text` held until [`Gate::open`].
    pub fn held(&self, text: &str) -> Reply {
        Reply::Held(self.0.subscribe(), text.into())
    }

    /// Lets every answer held by the gate go.
    pub fn open(&self) {
        self.0.send_replace(true);
    }
}

/// A request the provider received.
#[derive(Debug, Clone)]
pub struct Recorded {
    /// The path asked for.
    pub path: String,
    /// Its `Authorization` header.
    pub authorization: Option<String>,
    /// Its JSON body.
    pub body: Value,
}

#[derive(Default)]
struct Script {
    replies: Mutex<VecDeque<Reply>>,
    requests: Mutex<Vec<Recorded>>,
}

pub struct Provider {
    /// `AI_BASE_URL`: the version is part of it, as with real providers.
    pub base_url: String,
    script: Arc<Script>,
}

impl Provider {
    /// Starts the provider on a port of its own.
    pub async fn start() -> Provider {
        let script = Arc::new(Script::default());
        let app = axum::Router::new()
            .fallback(answer)
            .with_state(script.clone());
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base_url = format!("http://{}/v1", listener.local_addr().unwrap());
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Provider { base_url, script }
    }

    /// Queues answers; once they are used up every request gets a default text.
    pub fn then(&self, reply: Reply) -> &Self {
        self.script.replies.lock().unwrap().push_back(reply);
        self
    }

    /// Every request received so far.
    pub fn requests(&self) -> Vec<Recorded> {
        self.script.requests.lock().unwrap().clone()
    }
}

async fn answer(
    State(script): State<Arc<Script>>,
    uri: Uri,
    headers: HeaderMap,
    body: Bytes,
) -> AxResponse {
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    script.requests.lock().unwrap().push(Recorded {
        path: uri.path().to_owned(),
        authorization: headers
            .get("authorization")
            .map(|v| v.to_str().unwrap().to_owned()),
        body: body.clone(),
    });
    let reply = script
        .replies
        .lock()
        .unwrap()
        .pop_front()
        .unwrap_or_else(|| Reply::Text("A stand-in description.".into()));
    match reply {
        Reply::Text(text) => completion(&body, &text),
        Reply::Held(mut open, text) => {
            let _ = open.wait_for(|open| *open).await;
            completion(&body, &text)
        }
        Reply::Status(code, retry_after) => {
            let mut resp = (
                AxStatus::from_u16(code).unwrap(),
                axum::Json(json!({"error": {"message": "stand-in error", "type": "server_error"}})),
            )
                .into_response();
            if let Some(secs) = retry_after {
                resp.headers_mut()
                    .insert("retry-after", secs.parse().unwrap());
            }
            resp
        }
        Reply::Hang => {
            tokio::time::sleep(Duration::from_secs(60)).await;
            AxStatus::GATEWAY_TIMEOUT.into_response()
        }
        Reply::Malformed => (
            [("content-type", "application/json")],
            "{\"choices\": \"not what you think\"}",
        )
            .into_response(),
    }
}

fn completion(request: &Value, text: &str) -> AxResponse {
    axum::Json(json!({
        "id": "chatcmpl-standin",
        "object": "chat.completion",
        "created": 1_764_000_000,
        "model": request["model"],
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": text},
            "finish_reason": "stop"
        }],
        "usage": {"prompt_tokens": 10, "completion_tokens": 5, "total_tokens": 15}
    }))
    .into_response()
}

/// A fresh app whose AI provider is `provider`, with extra variables.
pub async fn ai_app(provider: &Provider, vars: &[(&str, &str)]) -> TestApp {
    let mut spawn = spawn()
        .var("AI_BASE_URL", &provider.base_url)
        .var("AI_MODEL", MODEL)
        .var("AI_API_KEY", API_KEY);
    for (k, v) in vars {
        spawn = spawn.var(k, v);
    }
    spawn.start().await
}

/// A real PNG of `width`×`height` pixels, which a describe decodes.
pub fn png(width: u32, height: u32) -> Vec<u8> {
    let img = image::RgbImage::from_fn(width, height, |x, y| {
        image::Rgb([(x % 256) as u8, (y % 256) as u8, 128])
    });
    let mut out = Vec::new();
    img.write_to(&mut std::io::Cursor::new(&mut out), image::ImageFormat::Png)
        .unwrap();
    out
}
