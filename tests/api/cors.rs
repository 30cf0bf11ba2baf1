//! CORS on the upload routes for the origins `CORS_ALLOWED_ORIGINS` lists:
//! preflights answered before authentication and the rate limit, answers
//! (refusals included) readable by the page, nothing for other origins or
//! other routes, and nothing at all when no origin is listed.

use reqwest::{Method, Response, StatusCode};
use uuid::Uuid;

use crate::helpers::{TestApp, fixtures, spawn};

const PAGE: &str = "https://app.example";

/// A browser's preflight of `method` on `path` from `origin`.
async fn preflight(app: &TestApp, path: &str, origin: &str, method: &str) -> Response {
    app.request(Method::OPTIONS, path)
        .header("origin", origin)
        .header("access-control-request-method", method)
        .header(
            "access-control-request-headers",
            "authorization, tus-resumable, upload-length, upload-metadata, idempotency-key",
        )
        .send()
        .await
        .unwrap()
}

/// A header's value, lower-cased, or "" when it is missing.
fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .map(|v| v.to_str().unwrap().to_ascii_lowercase())
        .unwrap_or_default()
}

#[tokio::test]
async fn a_listed_origin_gets_preflights_and_readable_answers_on_the_upload_routes_only() {
    let app = spawn()
        .var(
            "CORS_ALLOWED_ORIGINS",
            &format!("{PAGE}, http://127.0.0.1:5173"),
        )
        // Preflights are not requests of anyone: they never meet this limit.
        .var("ANON_RATE_LIMIT_PER_MINUTE", "2")
        .start()
        .await;
    let (_, key) = app.account_with_key("starter").await;
    let upload_url = format!("/upload/tus/{}", Uuid::now_v7());
    for (path, method) in [
        ("/upload/stream", "POST"),
        ("/upload/stream-batch", "POST"),
        ("/upload/presigned", "POST"),
        ("/upload/tus", "POST"),
        (upload_url.as_str(), "PATCH"),
        (upload_url.as_str(), "HEAD"),
        (upload_url.as_str(), "DELETE"),
    ] {
        let resp = preflight(&app, path, PAGE, method).await;
        assert_eq!(resp.status(), StatusCode::OK, "{path}");
        assert_eq!(header(&resp, "access-control-allow-origin"), PAGE, "{path}");
        assert!(
            header(&resp, "access-control-allow-methods").contains(&method.to_ascii_lowercase())
        );
        let allowed = header(&resp, "access-control-allow-headers");
        for name in [
            "authorization",
            "content-type",
            "idempotency-key",
            "tus-resumable",
            "upload-length",
            "upload-offset",
            "upload-metadata",
            "upload-checksum",
            "x-http-method-override",
        ] {
            assert!(allowed.contains(name), "{path}: {allowed}");
        }
        assert_eq!(header(&resp, "access-control-max-age"), "86400");
        assert!(header(&resp, "vary").contains("origin"), "{path}");
        assert!(header(&resp, "access-control-allow-credentials").is_empty());
        assert!(header(&resp, "x-ratelimit-limit").is_empty(), "{path}");
    }

    // An origin not listed, and a route that is not an upload route, get
    // nothing the browser would accept.
    let other = preflight(&app, "/upload/stream", "https://elsewhere.example", "POST").await;
    assert!(header(&other, "access-control-allow-origin").is_empty());
    let files = preflight(&app, "/files", PAGE, "GET").await;
    assert!(header(&files, "access-control-allow-origin").is_empty());
    let listing = app
        .get("/files")
        .bearer_auth(&key)
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(listing.status(), StatusCode::OK);
    assert!(header(&listing, "access-control-allow-origin").is_empty());

    // The answer of an upload, and a refusal, are readable by the page.
    let form = fixtures::Form::new().part("file", "a.png", "image/png", &fixtures::png(2_000));
    let form = form.finish();
    let stored = app
        .post("/upload/stream")
        .bearer_auth(&key)
        .header("origin", PAGE)
        .header("content-type", form.content_type())
        .body(form.body)
        .send()
        .await
        .unwrap();
    assert_eq!(stored.status(), StatusCode::CREATED);
    assert_eq!(header(&stored, "access-control-allow-origin"), PAGE);
    let exposed = header(&stored, "access-control-expose-headers");
    for name in [
        "location",
        "upload-offset",
        "upload-length",
        "upload-expires",
        "tus-resumable",
        "tus-version",
        "tus-extension",
        "tus-max-size",
        "tus-checksum-algorithm",
        "intake-file-id",
        "idempotency-replayed",
        "retry-after",
        "x-ratelimit-limit",
        "x-ratelimit-remaining",
        "x-ratelimit-reset",
    ] {
        assert!(exposed.contains(name), "{exposed}");
    }
    let refused = app
        .post("/upload/stream")
        .header("origin", PAGE)
        .send()
        .await
        .unwrap();
    assert_eq!(refused.status(), StatusCode::UNAUTHORIZED);
    assert_eq!(header(&refused, "access-control-allow-origin"), PAGE);
}

#[tokio::test]
async fn every_origin_gets_a_star_only_when_the_operator_says_so() {
    let app = spawn().var("CORS_ALLOWED_ORIGINS", "*").start().await;
    let resp = preflight(&app, "/upload/tus", "https://any.example", "POST").await;
    assert_eq!(header(&resp, "access-control-allow-origin"), "*");
    let files = preflight(&app, "/files", "https://any.example", "GET").await;
    assert!(header(&files, "access-control-allow-origin").is_empty());

    let unset = spawn().start().await;
    for path in ["/upload/stream", "/upload/tus", "/files"] {
        let resp = preflight(&unset, path, PAGE, "POST").await;
        for name in [
            "access-control-allow-origin",
            "access-control-allow-methods",
            "access-control-allow-headers",
        ] {
            assert!(header(&resp, name).is_empty(), "{path}: {name}");
        }
    }
}
