//! Case 5: a sign-up flood from one address: `SIGNUPS_PER_SEC` sign-ups a
//! second, each with a new e-mail address, for `SIGNUP_SECS`; the accounts
//! created in that time against the sign-ups refused.

use std::{
    collections::BTreeMap,
    time::{Duration, Instant},
};

use futures_util::future::join_all;
use serde_json::{Value, json};

use super::{Case, session::client_from};

pub async fn run(case: &Case<'_>) {
    let s = case.s;
    let (server, url) = case.intake(false, &[]).await;
    let http = client_from(case.address(2), false);
    println!(
        "sign-up flood: {} sign-ups a second from one address for {} s",
        s.signups_per_sec, s.signup_secs
    );
    let start = Instant::now();
    let every = Duration::from_secs(1) / u32::try_from(s.signups_per_sec.max(1)).unwrap_or(1);
    let total = s.signup_secs * s.signups_per_sec;
    let signups = (0..total).map(|i| {
        let (http, url) = (&http, &url);
        let email = case.email(&format!("flood{i}"));
        async move {
            tokio::time::sleep_until((start + every * u32::try_from(i).unwrap_or(0)).into()).await;
            let resp = http
                .post(format!("{url}/auth/signup"))
                .json(&json!({"email": email, "password": "bench-password-0123"}))
                .send()
                .await
                .expect("sign up");
            let status = resp.status().as_u16();
            let code = resp.json::<Value>().await.unwrap_or_default()["code"]
                .as_str()
                .map(str::to_owned);
            (status, code, start.elapsed())
        }
    });
    let answers = join_all(signups).await;
    let mut counts: BTreeMap<String, usize> = BTreeMap::new();
    for (status, code, _) in &answers {
        let label = match code {
            Some(code) => format!("{status} {code}"),
            None => status.to_string(),
        };
        *counts.entry(label).or_default() += 1;
    }
    let created = answers
        .iter()
        .filter(|(status, _, _)| *status == 201)
        .count();
    let last = answers
        .iter()
        .map(|(_, _, at)| *at)
        .max()
        .unwrap_or_default();
    let list: Vec<String> = counts.iter().map(|(l, n)| format!("{l} {n}")).collect();
    println!("  answers: {}", list.join("; "));
    println!(
        "  accounts created: {created} (the last answer {:.1} s after the first sign-up)",
        last.as_secs_f64()
    );
    server.stop();
}
