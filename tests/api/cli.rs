//! The `intake` command line: migrate and the admin commands, against the
//! same schema a running instance uses.

use reqwest::{Method, StatusCode};
use serde_json::Value;

use tempfile::TempDir;

use crate::helpers::spawn_app;

fn intake(app: &crate::helpers::TestApp, root: &TempDir, args: &[&str]) -> (bool, Value, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_intake"))
        .args(args)
        .env_clear()
        .env("DATABASE_URL", app.database_url())
        .env("JWT_SECRET", "test-jwt-secret-0123456789abcdefghijklmnop")
        .env("STORAGE_BACKEND", "fs")
        .env("FS_ROOT", root.path())
        .env("RUST_LOG", "warn")
        .output()
        .expect("run intake");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    (
        out.status.success(),
        serde_json::from_str(&stdout).unwrap_or(Value::Null),
        stderr,
    )
}

#[tokio::test]
async fn admin_commands_manage_accounts_keys_and_usage() {
    let app = spawn_app().await;
    // The command line's own local folder, gone with the test.
    let root = tempfile::tempdir().unwrap();
    let (ok, _, err) = intake(&app, &root, &["migrate"]);
    assert!(ok, "{err}");
    let (ok, account, err) = intake(
        &app,
        &root,
        &[
            "admin",
            "create-account",
            "--email",
            "Cli@Example.com",
            "--tier",
            "starter",
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(account["email"], "cli@example.com");
    let id = account["id"].as_str().unwrap().to_owned();

    let (ok, updated, err) = intake(
        &app,
        &root,
        &[
            "admin",
            "update-account",
            "--account",
            &id,
            "--tier",
            "professional",
            "--custom-limits",
            r#"{"storage_bytes":null}"#,
        ],
    );
    assert!(ok, "{err}");
    assert_eq!(updated["tier"], "professional");
    assert!(updated["limits"]["storage_bytes"].is_null());

    let (ok, key, err) = intake(
        &app,
        &root,
        &["admin", "create-api-key", "--account", &id, "--name", "cli"],
    );
    assert!(ok, "{err}");
    let key = key["key"].as_str().unwrap().to_owned();
    let me = app.get("/me").bearer_auth(&key).send().await.unwrap();
    assert_eq!(me.status(), StatusCode::OK);

    let (ok, usage, err) = intake(&app, &root, &["admin", "usage", "--account", &id]);
    assert!(ok, "{err}");
    assert_eq!(usage["tier"], "professional");
    assert_eq!(usage["usage"]["requests"]["remaining"], 99);

    // A session ended by its logout is pruned by the reaper's pass.
    let member = app.account("free").await;
    let session = app.login(&member.email).await;
    let out = app
        .with_session(Method::POST, "/auth/logout", &session)
        .send()
        .await
        .unwrap();
    assert!(out.status().is_success(), "{}", out.status());
    let ended = "SELECT count(*) FROM sessions WHERE revoked_at IS NOT NULL";
    assert_eq!(app.scalar_i64(ended).await, 1);

    let (ok, reaped, err) = intake(&app, &root, &["admin", "reap"]);
    assert!(ok, "{err}");
    assert_eq!(reaped["leases"], 0);
    assert!(
        reaped["pruned"].as_u64().is_some_and(|n| n >= 1),
        "{reaped}"
    );
    assert_eq!(app.scalar_i64(ended).await, 0);

    // Bad input fails with a message, not a panic.
    let (ok, _, err) = intake(
        &app,
        &root,
        &[
            "admin",
            "create-account",
            "--email",
            "cli@example.com",
            "--tier",
            "starter",
        ],
    );
    assert!(!ok && err.contains("already exists"), "{err}");
    let (ok, _, err) = intake(
        &app,
        &root,
        &[
            "admin",
            "create-account",
            "--email",
            "x@example.com",
            "--tier",
            "gold",
        ],
    );
    assert!(!ok && err.contains("unknown tier"), "{err}");
}

#[tokio::test]
async fn a_missing_required_variable_is_named_at_start_up() {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_intake"))
        .arg("serve")
        .env_clear()
        .env("JWT_SECRET", "test-jwt-secret-0123456789abcdefghijklmnop")
        .output()
        .expect("run intake");
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("DATABASE_URL"), "{stderr}");
}
