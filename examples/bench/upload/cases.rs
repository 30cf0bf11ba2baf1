//! The timed cases of the upload bench: the same bytes sent to intake and
//! straight to the S3 server with the same operations, each run timed on its
//! own, with clients of its own (as a fresh process would have).

use std::time::Instant;

use aws_sdk_s3::{
    primitives::ByteStream,
    types::{CompletedMultipartUpload, CompletedPart},
};
use bytes::Bytes;

use crate::{
    form::{Kind, MIB, form},
    s3::{self, env},
};

/// Where a run sends its bytes.
pub struct Target {
    /// intake's base URL (`http://127.0.0.1:<port>`).
    pub intake_url: String,
    /// The API key intake's uploads authenticate with.
    pub intake_key: String,
    /// The S3 endpoint of the direct cases: the S3 server, or a relay in
    /// front of it.
    pub s3_endpoint: String,
    /// The part size of the direct multipart upload (intake's own).
    pub part: usize,
}

/// Bytes that look like an MP4 to the type check and do not compress.
fn payload(len: usize) -> Bytes {
    let mut v = Kind::MP4.header.to_vec();
    let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
    while v.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        v.extend_from_slice(&x.to_le_bytes());
    }
    v.truncate(len);
    Bytes::from(v)
}

/// Sends an S3 request with its payload unsigned (as intake sends its
/// own); a failure ends the bench.
macro_rules! send_unsigned {
    ($request:expr, $what:literal) => {
        $request
            .customize()
            .disable_payload_signing()
            .send()
            .await
            .expect($what)
    };
}

async fn direct_put(client: &aws_sdk_s3::Client, key: &str, data: Bytes) {
    let request = client
        .put_object()
        .bucket(env("S3_BUCKET"))
        .key(key)
        .content_length(data.len() as i64)
        .body(ByteStream::from(data));
    send_unsigned!(request, "put_object");
}

/// Multipart upload with parts sent one after another, as intake does.
async fn direct_multipart(client: &aws_sdk_s3::Client, key: &str, data: Bytes, part: usize) {
    let bucket = env("S3_BUCKET");
    let created = client
        .create_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .send()
        .await
        .expect("create");
    let id = created.upload_id().expect("upload id").to_owned();
    let mut parts = Vec::new();
    for (i, start) in (0..data.len()).step_by(part).enumerate() {
        let chunk = data.slice(start..(start + part).min(data.len()));
        let n = i as i32 + 1;
        let request = client
            .upload_part()
            .bucket(&bucket)
            .key(key)
            .upload_id(&id)
            .part_number(n)
            .content_length(chunk.len() as i64)
            .body(ByteStream::from(chunk));
        let out = send_unsigned!(request, "upload_part");
        parts.push(
            CompletedPart::builder()
                .part_number(n)
                .set_e_tag(out.e_tag().map(str::to_owned))
                .build(),
        );
    }
    let done = CompletedMultipartUpload::builder()
        .set_parts(Some(parts))
        .build();
    let request = client.complete_multipart_upload().multipart_upload(done);
    request
        .bucket(&bucket)
        .key(key)
        .upload_id(&id)
        .send()
        .await
        .expect("complete");
}

async fn intake(
    to: &Target,
    client: &reqwest::Client,
    path: &str,
    field: &str,
    files: &[Bytes],
) -> reqwest::StatusCode {
    let (ct, len, body) = form(field, files, &Kind::MP4);
    let resp = client
        .post(format!("{}{path}", to.intake_url))
        .bearer_auth(&to.intake_key)
        .header("content-type", ct)
        .header("content-length", len)
        .body(body)
        .send()
        .await
        .expect("intake request");
    let status = resp.status();
    let text = resp.text().await.unwrap_or_default();
    assert!(status.is_success(), "{status}: {text}");
    if path.ends_with("batch") {
        assert!(
            text.contains(&format!("\"uploaded\":{}", files.len())),
            "{text}"
        );
    }
    status
}

/// Runs `case` once (COUNT files of MIB MiB each) against `to` and returns
/// its seconds. A run that fails panics: the bench ends loudly rather than
/// reporting a figure without it.
pub async fn timed(case: &str, count: usize, mib: usize, to: &Target) -> f64 {
    let data = payload(mib * MIB);
    let s3 = s3::client_at(&to.s3_endpoint);
    let http = reqwest::Client::new();
    let run = uuid::Uuid::new_v4().simple().to_string();
    let stream_one = || {
        let file = std::slice::from_ref(&data);
        intake(to, &http, "/upload/stream", "file", file)
    };
    let start = Instant::now();
    match case {
        "direct-multipart" => {
            direct_multipart(&s3, &format!("bench/{run}"), data.clone(), to.part).await
        }
        "direct-put" => direct_put(&s3, &format!("bench/{run}"), data.clone()).await,
        "direct-puts" => {
            for i in 0..count {
                direct_put(&s3, &format!("bench/{run}/{i}"), data.clone()).await;
            }
        }
        "intake" => {
            stream_one().await;
        }
        "intake-concurrent" => {
            futures_util::future::join_all((0..count).map(|_| stream_one())).await;
        }
        "intake-batch" => {
            let files = vec![data.clone(); count];
            intake(to, &http, "/upload/stream-batch", "files", &files).await;
        }
        other => panic!("unknown case {other}"),
    }
    start.elapsed().as_secs_f64()
}
