//! Case 3: AI calls for free. A FREE session (15 describes a month)
//! uploads a text file and asks for its description `AI_ROUNDS` times,
//! hanging up each time as soon as the stand-in provider has the request
//! (the provider takes `AI_DELAY_SECS` to answer). A request refused 429
//! `concurrent_request_limit` is sent again after its `Retry-After`, as an
//! attacker would; any other answer ends its round. Then: the calls the
//! provider received (what a provider bills) against the units the
//! account's usage counts.

use std::{collections::BTreeMap, time::Duration};

use reqwest::Method;
use serde_json::Value;

use super::Case;

/// How often the attacker may be told to come back later, in all.
const MAX_RETRIES: usize = 500;

/// The stand-in provider's counts (`GET /count`).
async fn count(http: &reqwest::Client, ai_url: &str) -> Value {
    http.get(format!("{ai_url}/count"))
        .send()
        .await
        .and_then(reqwest::Response::error_for_status)
        .expect("the stand-in's count")
        .json()
        .await
        .expect("the count JSON")
}

pub async fn run(case: &Case<'_>) {
    let s = case.s;
    let (server, url) = case.intake(false, &[]).await;
    let (_, attacker) = case.attacker(&url).await;
    let text = "Minutes of the rowing club's spring meeting.";
    let boundary = "benchboundary7d3a";
    let body = format!(
        "--{boundary}\r\nContent-Disposition: form-data; name=\"file\"; filename=\"minutes.txt\"\r\n\
         Content-Type: text/plain\r\n\r\n{text}\r\n--{boundary}--\r\n"
    );
    let form = (
        format!("multipart/form-data; boundary={boundary}"),
        body.len() as u64,
        reqwest::Body::from(body),
    );
    let file = attacker.upload(form).await;
    let id = file["id"].as_str().expect("the file id");
    println!(
        "AI calls hung up: {} describes of a text file by one FREE session (15 a month), \
         each hung up once the stand-in provider has it (it answers in {} s)",
        s.ai_rounds, s.ai_delay_secs
    );
    let http = reqwest::Client::new();
    let at_start = count(&http, case.ai_url).await;
    let since_start = |now: &Value, field: &str| {
        now[field].as_u64().expect("a count") - at_start[field].as_u64().expect("a count")
    };
    let mut rounds: BTreeMap<String, usize> = BTreeMap::new();
    let mut retries = 0;
    let mut done = 0;
    while done < s.ai_rounds {
        let before = count(&http, case.ai_url).await["requests"]
            .as_u64()
            .expect("requests");
        let describe = attacker
            .request(Method::POST, &format!("/files/{id}/describe"))
            .send();
        let reached = async {
            while count(&http, case.ai_url).await["requests"].as_u64() <= Some(before) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        let outcome = tokio::time::timeout(Duration::from_secs(60), async {
            tokio::select! {
                // Dropping the request hangs up.
                () = reached => None,
                resp = describe => Some(resp.expect("the describe request")),
            }
        })
        .await
        .expect("a describe neither answered nor reaching the provider within a minute");
        let Some(resp) = outcome else {
            *rounds
                .entry("hung up once the provider had it".into())
                .or_default() += 1;
            done += 1;
            continue;
        };
        let status = resp.status().as_u16();
        let answer: Value = resp.json().await.unwrap_or_default();
        let code = answer["code"].as_str().unwrap_or_default().to_owned();
        if code == "concurrent_request_limit" {
            retries += 1;
            assert!(
                retries <= MAX_RETRIES,
                "refused {retries} times for concurrency"
            );
            tokio::time::sleep(Duration::from_secs(1)).await;
            continue;
        }
        *rounds
            .entry(format!("answered {status} {code}"))
            .or_default() += 1;
        done += 1;
    }
    // What the provider still has under way finishes (a describe that
    // goes on without its client) before the figures are read.
    let mut settled = count(&http, case.ai_url).await;
    for _ in 0..600 {
        if settled["in_flight"].as_u64() == Some(0) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
        settled = count(&http, case.ai_url).await;
    }
    let billed = since_start(&settled, "requests");
    let unbounded = since_start(&settled, "without_max_tokens");
    let usage = attacker.usage().await;
    let counted = &usage["usage"]["ai_descriptions"]["used"];
    let described = attacker
        .request(Method::GET, &format!("/files/{id}"))
        .send()
        .await
        .expect("GET the file")
        .json::<Value>()
        .await
        .expect("the file JSON")["description"]
        .is_string();
    let list: Vec<String> = rounds.iter().map(|(l, n)| format!("{l} {n}")).collect();
    println!("  describes: {}", list.join("; "));
    println!("  refused 429 concurrent_request_limit and sent again: {retries}");
    println!(
        "  provider calls billed (received by the provider): {billed}, \
         of which without max_tokens: {unbounded}"
    );
    println!("  units counted (GET /usage ai_descriptions.used): {counted}");
    println!(
        "  description stored on the file: {}",
        if described { "yes" } else { "no" }
    );
    server.stop();
}
