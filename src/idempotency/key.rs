//! The `Idempotency-Key` header, parsed at the edge.

use axum::http::HeaderMap;

use crate::error::ApiError;

/// The request header that carries the key.
pub const HEADER: &str = "idempotency-key";

/// The longest key accepted, in characters (bytes: keys are ASCII).
pub const MAX_LEN: usize = 255;

/// A key as a client sent it: 1 to [`MAX_LEN`] printable ASCII characters
/// (space to `~`).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Key(String);

impl Key {
    /// The key of a request: `None` without the header, 400
    /// `invalid_request` for a value that is not a key or for more than
    /// one header.
    pub fn from_headers(headers: &HeaderMap) -> Result<Option<Self>, ApiError> {
        let mut values = headers.get_all(HEADER).iter();
        let Some(value) = values.next() else {
            return Ok(None);
        };
        if values.next().is_some() {
            return Err(ApiError::bad_request("send one Idempotency-Key header"));
        }
        Self::parse(value.as_bytes()).map(Some)
    }

    pub(super) fn parse(value: &[u8]) -> Result<Self, ApiError> {
        let printable = value.iter().all(|b| (0x20..=0x7e).contains(b));
        match std::str::from_utf8(value) {
            Ok(key) if printable && (1..=MAX_LEN).contains(&key.len()) => Ok(Self(key.to_owned())),
            _ => Err(ApiError::bad_request(format!(
                "Idempotency-Key must be 1 to {MAX_LEN} printable ASCII characters"
            ))),
        }
    }

    /// The key as sent.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(value: &[u8]) -> Result<Option<Key>, ApiError> {
        let mut headers = HeaderMap::new();
        headers.insert(
            HEADER,
            axum::http::HeaderValue::from_bytes(value).expect("a header value"),
        );
        Key::from_headers(&headers)
    }

    #[test]
    fn keys_are_one_to_255_printable_ascii_characters() {
        assert_eq!(key(b"a").unwrap().unwrap().as_str(), "a");
        let longest = "k".repeat(MAX_LEN);
        assert_eq!(
            key(longest.as_bytes()).unwrap().unwrap().as_str(),
            longest.as_str()
        );
        assert!(key(b"order 17: ~!\"#").unwrap().is_some());
        for bad in [
            b"".to_vec(),
            "k".repeat(MAX_LEN + 1).into_bytes(),
            b"tab\there".to_vec(),
            b"caf\xc3\xa9".to_vec(),
        ] {
            let err = key(&bad).unwrap_err();
            assert_eq!(
                (err.status().as_u16(), err.code()),
                (400, "invalid_request")
            );
        }
    }

    #[test]
    fn no_header_is_no_key_and_two_are_refused() {
        assert!(Key::from_headers(&HeaderMap::new()).unwrap().is_none());
        let mut headers = HeaderMap::new();
        headers.append(HEADER, "a".parse().unwrap());
        headers.append(HEADER, "b".parse().unwrap());
        assert_eq!(
            Key::from_headers(&headers).unwrap_err().code(),
            "invalid_request"
        );
    }
}
