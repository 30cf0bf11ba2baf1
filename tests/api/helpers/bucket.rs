//! The test bucket: which S3 server the suite runs against, clients that
//! look into it (never upload on the API's behalf), and its listing.

use super::app::env;

/// The bucket every test app stores in, each below its own prefix.
pub const S3_BUCKET: &str = "intake-test";

/// Which S3 server the suite runs against (`TEST_S3_STORE`, set by
/// scripts/test.sh): `s3s-fs` (the S3 test server) or `garage`.
pub fn s3_store() -> String {
    std::env::var("TEST_S3_STORE").unwrap_or_else(|_| "s3s-fs".into())
}

/// The region the S3 server signs for (Garage's is its `s3_region`).
pub fn s3_region() -> String {
    std::env::var("TEST_S3_REGION").unwrap_or_else(|_| "us-east-1".into())
}

/// The S3 client tests use to look into the bucket (never to upload on the
/// API's behalf).
pub async fn s3_client() -> aws_sdk_s3::Client {
    s3_client_at(&env("TEST_S3_ENDPOINT")).await
}

/// The same client for another S3 server with the test credentials (a
/// private one that a test stops and restarts).
pub async fn s3_client_at(endpoint: &str) -> aws_sdk_s3::Client {
    let creds = aws_sdk_s3::config::Credentials::new(
        env("TEST_S3_ACCESS_KEY_ID"),
        env("TEST_S3_SECRET_ACCESS_KEY"),
        None,
        None,
        "test",
    );
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(aws_sdk_s3::config::BehaviorVersion::latest())
        .region(aws_sdk_s3::config::Region::new(s3_region()))
        .endpoint_url(endpoint)
        .credentials_provider(creds)
        .force_path_style(true)
        .request_checksum_calculation(aws_sdk_s3::config::RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(aws_sdk_s3::config::ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}

/// Creates the test bucket unless it exists.
pub(super) async fn ensure_bucket() {
    let client = s3_client().await;
    if client.head_bucket().bucket(S3_BUCKET).send().await.is_err() {
        // Parallel tests may race to create it; either way it exists after.
        let _ = client.create_bucket().bucket(S3_BUCKET).send().await;
    }
}

/// Keys under a prefix in the test bucket.
pub async fn s3_keys(prefix: &str) -> Vec<String> {
    s3_keys_in(&s3_client().await, prefix).await
}

/// Keys under a prefix of the test bucket, through a given client.
pub async fn s3_keys_in(client: &aws_sdk_s3::Client, prefix: &str) -> Vec<String> {
    let mut keys = Vec::new();
    let mut token = None;
    loop {
        let out = client
            .list_objects_v2()
            .bucket(S3_BUCKET)
            .prefix(prefix)
            .set_continuation_token(token)
            .send()
            .await
            .expect("list objects");
        keys.extend(
            out.contents()
                .iter()
                .filter_map(|o| o.key().map(str::to_owned)),
        );
        match out.next_continuation_token() {
            Some(t) => token = Some(t.to_owned()),
            None => break,
        }
    }
    keys
}
