//! The dashboard's page and assets: security headers, validators, caching,
//! and that loading them spends no anonymous rate-limit budget.

use reqwest::StatusCode;

use crate::helpers::{Backend, assert_problem, env, spawn, spawn_app};

/// The asset URLs the page names (`/assets/<build>/<file>`).
fn asset_urls(page: &str) -> Vec<String> {
    let mut urls: Vec<String> = page
        .split('"')
        .filter(|s| s.starts_with("/assets/"))
        .map(str::to_owned)
        .collect();
    urls.sort();
    urls.dedup();
    urls
}

fn directive<'a>(csp: &'a str, name: &str) -> &'a str {
    csp.split(';')
        .map(str::trim)
        .find(|d| d.split(' ').next() == Some(name))
        .unwrap_or_else(|| panic!("no {name} in {csp}"))
}

#[tokio::test]
async fn the_page_allows_no_inline_script_no_framing_and_revalidates_by_etag() {
    let app = spawn().backend(Backend::Fs).start().await;
    let resp = app.get("/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    let h = resp.headers().clone();
    assert_eq!(h["content-type"], "text/html; charset=utf-8");
    let csp = h["content-security-policy"].to_str().unwrap();
    assert_eq!(directive(csp, "script-src"), "script-src 'self'");
    assert_eq!(directive(csp, "frame-ancestors"), "frame-ancestors 'none'");
    assert_eq!(directive(csp, "connect-src"), "connect-src 'self'");
    assert!(
        !csp.contains("unsafe-inline") && !csp.contains("unsafe-eval"),
        "{csp}"
    );
    assert_eq!(h["x-frame-options"], "DENY");
    assert_eq!(h["x-content-type-options"], "nosniff");
    assert_eq!(h["referrer-policy"], "no-referrer");
    assert_eq!(h["cache-control"], "no-cache");
    let page = resp.text().await.unwrap();
    // Every script is a file of its own, with nothing inline.
    let scripts: Vec<&str> = page.split("<script").skip(1).collect();
    assert_eq!(scripts.len(), 2, "tus-js-client and the page's module");
    for script in scripts {
        let (tag, rest) = script.split_once('>').unwrap();
        assert!(tag.contains(" src=\"/assets/"), "{tag}");
        assert!(rest.starts_with("</script>"), "{rest}");
    }
    assert!(page.contains("<meta name=\"intake-storage\" content=\"fs\">"));

    let etag = h["etag"].clone();
    let again = app
        .get("/")
        .header("if-none-match", etag.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(again.status(), StatusCode::NOT_MODIFIED);
    assert_eq!(again.headers()["etag"], etag);
    assert!(again.headers().contains_key("content-security-policy"));
    assert!(again.bytes().await.unwrap().is_empty());
    let other = app
        .get("/")
        .header("if-none-match", "\"something-else\"")
        .send()
        .await
        .unwrap();
    assert_eq!(other.status(), StatusCode::OK);
}

#[tokio::test]
async fn assets_are_cached_for_a_year_under_their_version_and_absent_under_another() {
    let app = spawn().backend(Backend::Fs).start().await;
    let page = app.get("/").send().await.unwrap().text().await.unwrap();
    let urls = asset_urls(&page);
    assert!(
        urls.iter().any(|u| u.ends_with("/app.js"))
            && urls.iter().any(|u| u.ends_with("/style.css")),
        "{urls:?}"
    );
    for url in &urls {
        let resp = app.get(url).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{url}");
        let h = resp.headers().clone();
        assert_eq!(
            h["cache-control"], "public, max-age=31536000, immutable",
            "{url}"
        );
        let want = if url.ends_with(".js") {
            "text/javascript; charset=utf-8"
        } else if url.ends_with(".css") {
            "text/css; charset=utf-8"
        } else {
            "image/svg+xml"
        };
        assert_eq!(h["content-type"], want, "{url}");
        assert_eq!(h["x-content-type-options"], "nosniff");
        assert!(!resp.bytes().await.unwrap().is_empty(), "{url}");
        let again = app
            .get(url)
            .header("if-none-match", h["etag"].clone())
            .send()
            .await
            .unwrap();
        assert_eq!(again.status(), StatusCode::NOT_MODIFIED, "{url}");
    }
    // The modules the page imports are served from the same version.
    let app_js = urls.iter().find(|u| u.ends_with("/app.js")).unwrap();
    let version = app_js.trim_end_matches("app.js");
    for module in ["api.js", "ui.js", "upload.js"] {
        let resp = app.get(&format!("{version}{module}")).send().await.unwrap();
        assert_eq!(resp.status(), StatusCode::OK, "{module}");
    }
    let resp = app
        .get("/assets/0000000000000000/app.js")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
    let resp = app
        .get(&format!("{version}missing.js"))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::NOT_FOUND, "not_found").await;
}

#[tokio::test]
async fn on_s3_the_policy_lets_images_come_from_the_object_store_and_requests_only_from_intake() {
    let app = spawn_app().await;
    let resp = app.get("/").send().await.unwrap();
    let csp = resp.headers()["content-security-policy"]
        .to_str()
        .unwrap()
        .to_owned();
    let storage = env("TEST_S3_ENDPOINT");
    // Uploads go through intake (tus), so the page never calls storage.
    assert_eq!(directive(&csp, "connect-src"), "connect-src 'self'");
    assert!(
        directive(&csp, "img-src").ends_with(&format!(" {storage}")),
        "{csp}"
    );
    assert_eq!(directive(&csp, "script-src"), "script-src 'self'");
    let page = resp.text().await.unwrap();
    assert!(page.contains("<meta name=\"intake-storage\" content=\"s3\">"));
}

#[tokio::test]
async fn loading_the_page_spends_no_anonymous_budget() {
    let app = spawn()
        .backend(Backend::Fs)
        .var("ANON_RATE_LIMIT_PER_MINUTE", "2")
        .start()
        .await;
    let page = app.get("/").send().await.unwrap().text().await.unwrap();
    let urls = asset_urls(&page);
    for _ in 0..3 {
        for path in std::iter::once(&"/".to_owned()).chain(&urls) {
            let resp = app.get(path).send().await.unwrap();
            assert_eq!(resp.status(), StatusCode::OK, "{path}");
            assert!(!resp.headers().contains_key("x-ratelimit-limit"), "{path}");
        }
    }
    // The visitor's whole budget is still there for signing in.
    let resp = app.get("/limits").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(resp.headers()["x-ratelimit-remaining"], "1");
}
