//! The S3 client of the benchmark tools: path-style addressing, checksums
//! only where required, the endpoint and credentials from S3_ENDPOINT,
//! S3_ACCESS_KEY_ID and S3_SECRET_ACCESS_KEY.

use aws_sdk_s3::config::{
    BehaviorVersion, Credentials, Region, RequestChecksumCalculation, ResponseChecksumValidation,
};

/// The value of an environment variable the tool needs.
pub fn env(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} must be set"))
}

/// A client for the S3 server the environment names.
pub fn client() -> aws_sdk_s3::Client {
    client_at(&env("S3_ENDPOINT"))
}

/// A client for the S3 server (or relay in front of it) at `endpoint`, with
/// the environment's credentials.
pub fn client_at(endpoint: &str) -> aws_sdk_s3::Client {
    let conf = aws_sdk_s3::config::Builder::new()
        .behavior_version(BehaviorVersion::latest())
        .region(Region::new("us-east-1"))
        .endpoint_url(endpoint)
        .credentials_provider(Credentials::new(
            env("S3_ACCESS_KEY_ID"),
            env("S3_SECRET_ACCESS_KEY"),
            None,
            None,
            "bench",
        ))
        .force_path_style(true)
        .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
        .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
        .build();
    aws_sdk_s3::Client::from_conf(conf)
}
