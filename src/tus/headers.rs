//! The tus request headers, parsed at the edge into values the rest of the
//! feature can trust (parse, don't validate), and the header values intake
//! answers with.

use base64::{
    Engine as _, alphabet,
    engine::{DecodePaddingMode, GeneralPurpose, GeneralPurposeConfig},
};
use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderValue};
use sha1::Digest as _;

use crate::error::ApiError;

/// The protocol version intake speaks.
pub const TUS_VERSION: &str = "1.0.0";
/// The extensions intake speaks.
pub const TUS_EXTENSIONS: &str = "creation,creation-with-upload,termination,expiration,checksum";
/// The checksum algorithms of the checksum extension.
pub const TUS_CHECKSUMS: &str = "sha1,sha256";
/// The content type of a PATCH body (and of a creation-with-upload body).
pub const OFFSET_OCTET_STREAM: &str = "application/offset+octet-stream";
/// Longest `Upload-Metadata` accepted, in bytes: it is stored and echoed.
pub const MAX_METADATA_BYTES: usize = 4096;

/// Base64 as tus clients send it: the standard alphabet, padded or not.
const BASE64: GeneralPurpose = GeneralPurpose::new(
    &alphabet::STANDARD,
    GeneralPurposeConfig::new().with_decode_padding_mode(DecodePaddingMode::Indifferent),
);

fn text<'a>(headers: &'a HeaderMap, name: &str) -> Result<Option<&'a str>, ApiError> {
    headers
        .get(name)
        .map(|v| {
            v.to_str()
                .map(str::trim)
                .map_err(|_| ApiError::bad_request(format!("{name} must be ASCII")))
        })
        .transpose()
}

/// Whether the request speaks tus 1.0.0.
pub fn speaks_tus(headers: &HeaderMap) -> bool {
    headers
        .get("tus-resumable")
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.trim() == TUS_VERSION)
}

/// A byte count of a tus header: decimal digits only, and small enough to
/// be a size at all (at most `i64::MAX`).
fn byte_count(name: &str, raw: &str) -> Result<u64, ApiError> {
    let valid = !raw.is_empty() && raw.bytes().all(|b| b.is_ascii_digit());
    raw.parse::<i64>()
        .ok()
        .filter(|_| valid)
        .and_then(|n| u64::try_from(n).ok())
        .ok_or_else(|| {
            ApiError::bad_request(format!(
                "{name} must be a whole number of bytes, got {raw:?}"
            ))
        })
}

/// `Upload-Length` of a creation: required (intake does not take deferred
/// lengths), at least 1 byte.
pub fn upload_length(headers: &HeaderMap) -> Result<u64, ApiError> {
    if headers.contains_key("upload-defer-length") {
        return Err(ApiError::bad_request(
            "deferred lengths are not supported: send Upload-Length",
        ));
    }
    let raw = text(headers, "upload-length")?
        .ok_or_else(|| ApiError::bad_request("Upload-Length is required"))?;
    match byte_count("Upload-Length", raw)? {
        0 => Err(ApiError::bad_request(
            "Upload-Length must be at least 1 byte: empty files are not stored",
        )),
        n => Ok(n),
    }
}

/// `Upload-Offset` of a PATCH: required.
pub fn upload_offset(headers: &HeaderMap) -> Result<u64, ApiError> {
    let raw = text(headers, "upload-offset")?
        .ok_or_else(|| ApiError::bad_request("Upload-Offset is required"))?;
    byte_count("Upload-Offset", raw)
}

/// Whether the body is tus upload bytes (`application/offset+octet-stream`).
pub fn is_offset_stream(headers: &HeaderMap) -> bool {
    headers
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split(';').next())
        .is_some_and(|v| v.trim().eq_ignore_ascii_case(OFFSET_OCTET_STREAM))
}

/// The body length the client announced, if it did.
pub fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse().ok())
}

/// `Upload-Metadata`: the raw header (echoed on HEAD) and the two keys
/// intake reads.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Metadata {
    /// The header as sent ('' when absent).
    pub raw: String,
    /// The `filename` key, decoded.
    pub filename: Option<String>,
    /// The `filetype` key, decoded.
    pub filetype: Option<String>,
}

impl Metadata {
    /// Parses `key base64,key base64,…`: keys unique and without spaces or
    /// commas, values valid base64 (a key may have none); `filename` and
    /// `filetype` UTF-8.
    pub fn parse(headers: &HeaderMap) -> Result<Self, ApiError> {
        let Some(raw) = text(headers, "upload-metadata")? else {
            return Ok(Self::default());
        };
        if raw.len() > MAX_METADATA_BYTES {
            return Err(ApiError::bad_request(format!(
                "Upload-Metadata may be at most {MAX_METADATA_BYTES} bytes"
            )));
        }
        let mut out = Self {
            raw: raw.to_owned(),
            ..Self::default()
        };
        let mut seen = std::collections::BTreeSet::new();
        for pair in raw.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (key, value) = match pair.split_once(' ') {
                Some((k, v)) => (k, Some(v.trim())),
                None => (pair, None),
            };
            if key.is_empty() || !seen.insert(key) {
                return Err(ApiError::bad_request(format!(
                    "Upload-Metadata has an empty or repeated key in {pair:?}"
                )));
            }
            let decoded = match value.filter(|v| !v.is_empty()) {
                Some(v) => Some(BASE64.decode(v).map_err(|_| {
                    ApiError::bad_request(format!(
                        "Upload-Metadata: the value of {key} is not base64"
                    ))
                })?),
                None => None,
            };
            let as_text = |bytes: Vec<u8>| {
                String::from_utf8(bytes).map_err(|_| {
                    ApiError::bad_request(format!("Upload-Metadata: {key} must be UTF-8"))
                })
            };
            match key {
                "filename" => out.filename = decoded.map(as_text).transpose()?,
                "filetype" => out.filetype = decoded.map(as_text).transpose()?,
                _ => {}
            }
        }
        Ok(out)
    }
}

/// The checksum algorithms of `Upload-Checksum`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Algorithm {
    /// SHA-1 (20 bytes).
    Sha1,
    /// SHA-256 (32 bytes).
    Sha256,
}

/// `Upload-Checksum: <algorithm> <base64 digest>` of a PATCH body.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Checksum {
    /// The algorithm.
    pub algorithm: Algorithm,
    /// The digest the body must have.
    pub digest: Vec<u8>,
}

impl Checksum {
    /// Parses the header, if present; an unknown algorithm or a digest of
    /// the wrong form is 400 (the checksum extension's answer).
    pub fn parse(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let Some(raw) = text(headers, "upload-checksum")? else {
            return Ok(None);
        };
        let (name, digest) = raw
            .split_once(' ')
            .ok_or_else(|| ApiError::bad_request("Upload-Checksum is <algorithm> <base64>"))?;
        let (algorithm, len) = match name.trim().to_ascii_lowercase().as_str() {
            "sha1" => (Algorithm::Sha1, 20),
            "sha256" => (Algorithm::Sha256, 32),
            other => {
                return Err(ApiError::bad_request(format!(
                    "checksum algorithm {other:?} is not supported; use one of {TUS_CHECKSUMS}"
                )));
            }
        };
        let digest = BASE64
            .decode(digest.trim())
            .ok()
            .filter(|d| d.len() == len)
            .ok_or_else(|| {
                ApiError::bad_request(format!("Upload-Checksum: not a base64 {name} digest"))
            })?;
        Ok(Some(Self { algorithm, digest }))
    }

    /// A hasher of the body for this checksum.
    pub fn hasher(&self) -> BodyHasher {
        match self.algorithm {
            Algorithm::Sha1 => BodyHasher::Sha1(sha1::Sha1::new()),
            Algorithm::Sha256 => BodyHasher::Sha256(sha2::Sha256::new()),
        }
    }
}

/// The running hash of one PATCH body.
pub enum BodyHasher {
    /// SHA-1.
    Sha1(sha1::Sha1),
    /// SHA-256.
    Sha256(sha2::Sha256),
}

impl BodyHasher {
    /// Hashes more of the body.
    pub fn update(&mut self, bytes: &[u8]) {
        match self {
            Self::Sha1(h) => h.update(bytes),
            Self::Sha256(h) => h.update(bytes),
        }
    }

    /// Whether the body hashed to `want`.
    pub fn matches(self, want: &[u8]) -> bool {
        match self {
            Self::Sha1(h) => h.finalize().to_vec() == want,
            Self::Sha256(h) => h.finalize().to_vec() == want,
        }
    }
}

/// An HTTP date (RFC 9110 IMF-fixdate), as `Upload-Expires` carries it.
pub fn http_date(at: DateTime<Utc>) -> HeaderValue {
    HeaderValue::from_str(&at.format("%a, %d %b %Y %H:%M:%S GMT").to_string())
        .unwrap_or_else(|_| HeaderValue::from_static("Thu, 01 Jan 1970 00:00:00 GMT"))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn with(name: &'static str, value: &str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(name, HeaderValue::from_str(value).unwrap());
        h
    }

    #[test]
    fn lengths_are_whole_positive_byte_counts() {
        assert_eq!(upload_length(&with("upload-length", "42")).unwrap(), 42);
        for bad in [
            "-1",
            "0",
            "1.5",
            "",
            "+3",
            "99999999999999999999999",
            "9223372036854775808",
        ] {
            assert!(upload_length(&with("upload-length", bad)).is_err(), "{bad}");
        }
        assert!(upload_length(&HeaderMap::new()).is_err());
        assert!(upload_length(&with("upload-defer-length", "1")).is_err());
    }

    #[test]
    fn metadata_keys_are_decoded_and_malformed_ones_refused() {
        let m = Metadata::parse(&with(
            "upload-metadata",
            "filename cGhvdG8ucG5n,filetype aW1hZ2UvcG5n,flag",
        ))
        .unwrap();
        assert_eq!(m.filename.as_deref(), Some("photo.png"));
        assert_eq!(m.filetype.as_deref(), Some("image/png"));
        let unpadded = Metadata::parse(&with("upload-metadata", "filename YQ")).unwrap();
        assert_eq!(unpadded.filename.as_deref(), Some("a"));
        for bad in [
            "filename !!!",
            "filename YQ==,filename Yg==",
            "filename /w==",
        ] {
            assert!(
                Metadata::parse(&with("upload-metadata", bad)).is_err(),
                "{bad}"
            );
        }
    }

    #[test]
    fn checksums_name_a_known_algorithm_and_a_digest_of_its_size() {
        let c = Checksum::parse(&with(
            "upload-checksum",
            "sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        ))
        .unwrap()
        .unwrap();
        assert!(c.hasher().matches(&c.digest), "sha1 of nothing");
        assert!(Checksum::parse(&with("upload-checksum", "md5 AAAA")).is_err());
        assert!(Checksum::parse(&with("upload-checksum", "sha256 AAAA")).is_err());
    }
}
