//! The per-file caps: the tier's cap for the file's category, the streaming
//! cap of the streaming routes, and the validity of text documents (UTF-8 to
//! the last byte). Every upload path asks this module what a file may be and
//! feeds it the bytes as they pass; none compares sizes of its own.

use crate::{
    error::ApiError,
    sniff::{Category, Kind, Utf8Stream},
    tiers::Limits,
};

/// The way a file arrives, which decides whether the streaming cap applies.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// `/upload/stream` and `/upload/stream-batch`: the bytes pass through
    /// one request, so they are also held to `STREAM_MAX_FILE_BYTES`.
    Streaming,
    /// Presigned and resumable uploads: only the category cap.
    Direct,
}

/// Why a file's bytes were refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum CapError {
    /// Above the category cap.
    #[error("the file is larger than the {limit} bytes allowed for it")]
    TooLarge {
        /// The cap that was hit.
        limit: u64,
    },
    /// Above the streaming cap, within the category cap.
    #[error("files above {limit} bytes must use a presigned upload")]
    UsePresigned {
        /// The streaming cap.
        limit: u64,
    },
    /// A text document that is not UTF-8.
    #[error("text documents must be valid UTF-8")]
    NotUtf8,
}

impl From<CapError> for ApiError {
    fn from(e: CapError) -> Self {
        match e {
            CapError::TooLarge { limit } => ApiError::FileTooLarge { limit },
            CapError::UsePresigned { limit } => ApiError::UsePresignedUpload { limit },
            CapError::NotUtf8 => ApiError::UnsupportedMediaType(e.to_string()),
        }
    }
}

/// The largest a file may be, and the error past it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cap {
    limit: u64,
    exceeded: CapError,
}

impl Cap {
    /// The cap of a file of `category` arriving by `route`, under `limits`;
    /// `stream_max` is the streaming cap.
    pub fn new(limits: &Limits, category: Category, route: Route, stream_max: u64) -> Self {
        let limit = category_cap(limits, category);
        match route {
            Route::Streaming if limit > stream_max => Self {
                limit: stream_max,
                exceeded: CapError::UsePresigned { limit: stream_max },
            },
            _ => Self {
                limit,
                exceeded: CapError::TooLarge { limit },
            },
        }
    }

    /// The largest cap any file may have on `route` under `limits`: what a
    /// file of a type not known yet is held to (a resumable upload before
    /// its first bytes arrive, `Tus-Max-Size`).
    pub fn largest(limits: &Limits, route: Route, stream_max: u64) -> Self {
        [Category::Image, Category::Document, Category::Video]
            .into_iter()
            .map(|c| Self::new(limits, c, route, stream_max))
            .max_by_key(|cap| cap.limit)
            .unwrap_or_else(|| Self::new(limits, Category::Video, route, stream_max))
    }

    /// A cap of a length already agreed and checked (the declared size of
    /// a presigned or resumable upload, whose bytes are verified later).
    pub fn exactly(size: u64) -> Self {
        Self {
            limit: size,
            exceeded: CapError::TooLarge { limit: size },
        }
    }

    /// The largest size allowed, in bytes.
    pub fn limit(&self) -> u64 {
        self.limit
    }

    /// Checks a size known ahead of the bytes (a declared length).
    pub fn check(&self, size: u64) -> Result<(), CapError> {
        if size > self.limit {
            Err(self.exceeded)
        } else {
            Ok(())
        }
    }
}

/// The tier's cap for a category.
pub fn category_cap(limits: &Limits, category: Category) -> u64 {
    match category {
        Category::Image => limits.max_image_bytes,
        Category::Document => limits.max_document_bytes,
        Category::Video => limits.max_video_bytes,
    }
}

/// The running check of one file's bytes as they pass: the cap on the
/// running count (refused the moment it is passed) and, for text
/// documents, UTF-8 across chunk boundaries.
#[derive(Debug)]
pub struct ContentCheck {
    cap: Cap,
    total: u64,
    utf8: Option<Utf8Stream>,
}

impl ContentCheck {
    /// Starts checking a file of `kind` held to `cap`.
    pub fn new(cap: Cap, kind: &Kind) -> Self {
        Self {
            cap,
            total: 0,
            utf8: kind.text.then(Utf8Stream::default),
        }
    }

    /// Counts and checks the next bytes.
    pub fn feed(&mut self, chunk: &[u8]) -> Result<(), CapError> {
        self.total += chunk.len() as u64;
        self.cap.check(self.total)?;
        let valid = self.utf8.as_mut().is_none_or(|utf8| utf8.feed(chunk));
        if valid {
            Ok(())
        } else {
            Err(CapError::NotUtf8)
        }
    }

    /// Checks the end of the file; returns its size.
    pub fn finish(&self) -> Result<u64, CapError> {
        match &self.utf8 {
            Some(utf8) if !utf8.finish() => Err(CapError::NotUtf8),
            _ => Ok(self.total),
        }
    }

    /// Bytes seen so far.
    pub fn total(&self) -> u64 {
        self.total
    }

    /// The cap in force.
    pub fn cap(&self) -> Cap {
        self.cap
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tiers::Tier;

    const MIB: u64 = 1024 * 1024;

    fn kind(text: bool) -> Kind {
        Kind {
            mime: if text { "text/plain" } else { "image/png" },
            category: if text {
                Category::Document
            } else {
                Category::Image
            },
            text,
        }
    }

    #[test]
    fn streaming_caps_at_the_smaller_of_category_and_stream_cap() {
        let free = Tier::Free.limits();
        let video = Cap::new(&free, Category::Video, Route::Streaming, 100 * MIB);
        assert_eq!(video.limit(), 100 * MIB);
        assert_eq!(
            video.check(100 * MIB + 1),
            Err(CapError::UsePresigned { limit: 100 * MIB })
        );
        let image = Cap::new(&free, Category::Image, Route::Streaming, 100 * MIB);
        assert_eq!(
            image.check(25 * MIB + 1),
            Err(CapError::TooLarge { limit: 25 * MIB })
        );
        assert!(image.check(25 * MIB).is_ok());
        let direct = Cap::new(&free, Category::Video, Route::Direct, 100 * MIB);
        assert_eq!(direct.limit(), 1024 * MIB);
        let largest = Cap::largest(&free, Route::Direct, 100 * MIB);
        assert_eq!(largest.limit(), 1024 * MIB);
        assert_eq!(
            largest.check(1024 * MIB + 1),
            Err(CapError::TooLarge { limit: 1024 * MIB })
        );
    }

    #[test]
    fn content_check_stops_at_the_cap_and_on_bad_utf8() {
        let free = Tier::Free.limits();
        let cap = Cap::new(&free, Category::Image, Route::Streaming, 10);
        let mut check = ContentCheck::new(cap, &kind(false));
        assert!(check.feed(b"0123456789").is_ok());
        assert_eq!(check.feed(b"x"), Err(CapError::UsePresigned { limit: 10 }));

        let cap = Cap::new(&free, Category::Document, Route::Direct, 10);
        let mut text = ContentCheck::new(cap, &kind(true));
        assert!(text.feed(&"é".as_bytes()[..1]).is_ok());
        assert_eq!(text.finish(), Err(CapError::NotUtf8));
        assert!(text.feed(&"é".as_bytes()[1..]).is_ok());
        assert_eq!(text.finish(), Ok(2));
        assert_eq!(text.feed(b"\xff"), Err(CapError::NotUtf8));
    }
}
