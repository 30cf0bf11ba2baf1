//! What a provider is shown of a file: an image decoded and downscaled, or
//! the text of a document, every step bounded in memory and time so that a
//! hostile file costs a bounded amount of the server and nothing more.
//! Decodes and extractions take turns on the process's workers
//! ([`super::workers`]); the text of PDFs is [`super::pdf`]'s.

use std::{
    io::Cursor,
    time::{Duration, Instant},
};

use base64::{Engine as _, engine::general_purpose::STANDARD};
use futures_util::TryStreamExt;
use image::{ImageFormat, ImageReader, codecs::jpeg::JpegEncoder, imageops::FilterType};
use uuid::Uuid;

use super::{pdf::pdf_text, workers::Workers};
use crate::{
    config::AiConfig,
    files::FileView,
    sniff::Category,
    storage::{ObjectStore, StorageError},
};

/// Images above this many pixels are refused before they are decoded.
pub const MAX_IMAGE_PIXELS: u64 = 100_000_000;

/// Decoded bytes one image may take (a 100-megapixel RGBA image is 400 MB).
const MAX_DECODE_ALLOC: u64 = 512 * 1024 * 1024;

/// How long a client is told to wait when no worker came free in time.
pub const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// Image types the decoder reads.
const IMAGE_TYPES: &[&str] = &[
    "image/jpeg",
    "image/png",
    "image/gif",
    "image/webp",
    "image/bmp",
    "image/tiff",
];

/// Text documents, sent as they are.
const TEXT_TYPES: &[&str] = &[
    "text/plain",
    "text/csv",
    "text/markdown",
    "application/json",
];

/// How a file is shown to the provider.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Source {
    /// Decoded and sent as a downscaled image.
    Image,
    /// Its text extracted.
    Pdf,
    /// A text document, sent as its text.
    Text,
}

/// What is sent.
#[derive(Debug, Clone)]
pub enum Input {
    /// A `data:` URL of the downscaled image.
    Image(String),
    /// Text, cut at `AI_MAX_INPUT_CHARS`.
    Text(String),
}

/// Why a file cannot be shown to the provider.
#[derive(Debug, thiserror::Error)]
pub enum ExtractError {
    /// Videos, and documents whose text cannot be extracted (415).
    #[error("{0}")]
    Unsupported(String),
    /// Past a bound of size, pixels or time (422).
    #[error("{0}")]
    Bound(String),
    /// No worker came free within the bound (503, with `Retry-After`).
    #[error("{0}")]
    Busy(String),
    /// Storage failed reading the file.
    #[error(transparent)]
    Storage(#[from] StorageError),
    /// A worker thread died.
    #[error("extraction worker failed: {0}")]
    Worker(String),
}

/// Decides how a file is shown, from what is recorded about it: nothing is
/// read yet, so a refusal here costs no quota.
pub fn plan(file: &FileView, config: &AiConfig) -> Result<Source, ExtractError> {
    let mime = file.content_type.as_str();
    let source = match file.category {
        Category::Video => {
            return Err(ExtractError::Unsupported(
                "videos cannot be described; images and text documents (txt, md, csv, json, PDF) can"
                    .into(),
            ));
        }
        Category::Image if IMAGE_TYPES.contains(&mime) => Source::Image,
        Category::Image => {
            return Err(ExtractError::Unsupported(format!(
                "images of type {mime} cannot be decoded to be described"
            )));
        }
        Category::Document if mime == "application/pdf" => Source::Pdf,
        Category::Document if TEXT_TYPES.contains(&mime) => Source::Text,
        Category::Document => {
            return Err(ExtractError::Unsupported(format!(
                "the text of {mime} documents cannot be extracted; text documents and PDFs can"
            )));
        }
    };
    // Text documents are read only as far as the character bound.
    if source != Source::Text
        && u64::try_from(file.size).unwrap_or(u64::MAX) > config.max_file_bytes
    {
        return Err(ExtractError::Bound(format!(
            "files above {} bytes are too large to describe",
            config.max_file_bytes
        )));
    }
    Ok(source)
}

/// Whether a file is a text document (its text is chat context).
pub fn is_text(file: &FileView) -> bool {
    file.category == Category::Document && TEXT_TYPES.contains(&file.content_type.as_str())
}

/// Where a file is read from and who asks.
#[derive(Clone, Copy)]
pub struct Reading<'a> {
    /// The store holding the file.
    pub store: &'a dyn ObjectStore,
    /// Its object key.
    pub key: &'a str,
    /// Its size in bytes.
    pub size: u64,
    /// The account asking: decodes and extractions queue per account.
    pub account: Uuid,
}

/// Reads the file and turns it into what the provider is sent. An image or
/// a PDF waits for its account's turn on a worker (at most
/// `AI_EXTRACT_TIMEOUT_SECS`; past it the server is busy, 503), then is
/// read and decoded within `AI_EXTRACT_TIMEOUT_SECS` from its turn.
pub async fn read(
    file: Reading<'_>,
    source: Source,
    config: &AiConfig,
    workers: &Workers,
) -> Result<Input, ExtractError> {
    let Reading {
        store,
        key,
        size,
        account,
    } = file;
    match source {
        Source::Text => Ok(Input::Text(
            read_text(store, key, size, config.max_input_chars).await?,
        )),
        Source::Image | Source::Pdf => {
            let (max_side, max_chars) = (config.image_max_pixels, config.max_input_chars);
            let bound = config.extract_timeout;
            let queued = Instant::now();
            let turn = tokio::time::timeout(bound, workers.turn(account))
                .await
                .map_err(|_| {
                    metrics::counter!("intake_ai_extraction_busy_total").increment(1);
                    ExtractError::Busy(format!(
                        "the server is busy reading other files to describe; no worker came free \
                         within {} s, try again shortly",
                        bound.as_secs()
                    ))
                })?;
            metrics::histogram!("intake_ai_extraction_wait_seconds")
                .record(queued.elapsed().as_secs_f64());
            let deadline = Instant::now() + bound;
            let work = async {
                // The turn is taken before the bytes are read, so that the
                // files held in memory are as few as the workers.
                let bytes = read_all(store, key, size.min(config.max_file_bytes)).await?;
                // A worker past the bound keeps its turn until it ends (the
                // PDF reader stops at its next look at the clock), so
                // runaway work cannot pile up threads.
                tokio::task::spawn_blocking(move || {
                    let result = match source {
                        Source::Image => image_data_url(&bytes, max_side).map(Input::Image),
                        _ => pdf_text(&bytes, max_chars, deadline).map(Input::Text),
                    };
                    drop(turn);
                    result
                })
                .await
                .map_err(|e| ExtractError::Worker(e.to_string()))?
            };
            let left = deadline.saturating_duration_since(Instant::now());
            tokio::time::timeout(left.max(Duration::from_millis(1)), work)
                .await
                .unwrap_or_else(|_| {
                    Err(ExtractError::Bound(format!(
                        "reading the file took longer than its {} s bound",
                        bound.as_secs()
                    )))
                })
        }
    }
}

/// The first `max_chars` characters of a text document, reading no more
/// of it than they can take (four bytes a character).
pub async fn read_text(
    store: &dyn ObjectStore,
    key: &str,
    size: u64,
    max_chars: usize,
) -> Result<String, ExtractError> {
    if size == 0 {
        return Ok(String::new());
    }
    let want = size.min(u64::try_from(max_chars.saturating_mul(4)).unwrap_or(u64::MAX));
    let bytes = read_range(store, key, want, size).await?;
    // Uploads are valid UTF-8 throughout; only the cut may split a character.
    let text = match std::str::from_utf8(&bytes) {
        Ok(t) => t,
        Err(e) => std::str::from_utf8(&bytes[..e.valid_up_to()]).unwrap_or_default(),
    };
    Ok(cut(text, max_chars).to_owned())
}

async fn read_all(store: &dyn ObjectStore, key: &str, size: u64) -> Result<Vec<u8>, ExtractError> {
    read_range(store, key, size, size).await
}

/// Reads the first `want` bytes of an object of `size` bytes.
async fn read_range(
    store: &dyn ObjectStore,
    key: &str,
    want: u64,
    size: u64,
) -> Result<Vec<u8>, ExtractError> {
    let range = (want < size).then_some(0..want);
    let body = store.get(key, range).await?;
    let mut bytes = Vec::with_capacity(usize::try_from(want).unwrap_or(0));
    let mut stream = body.stream;
    while let Some(chunk) = stream.try_next().await.map_err(StorageError::from)? {
        let room = usize::try_from(want)
            .unwrap_or(usize::MAX)
            .saturating_sub(bytes.len());
        bytes.extend_from_slice(&chunk[..chunk.len().min(room)]);
        if bytes.len() as u64 >= want {
            break;
        }
    }
    Ok(bytes)
}

/// Decodes an image (refusing it above [`MAX_IMAGE_PIXELS`] before the
/// pixels are decoded), shrinks it so its longest side is at most
/// `max_side`, and encodes it as a `data:` URL: PNG when it has
/// transparency, JPEG otherwise (smaller for photographs).
pub fn image_data_url(bytes: &[u8], max_side: u32) -> Result<String, ExtractError> {
    let undecodable =
        |e: image::ImageError| ExtractError::Bound(format!("the image could not be decoded: {e}"));
    let reader = || {
        ImageReader::new(Cursor::new(bytes))
            .with_guessed_format()
            .map_err(|e| ExtractError::Bound(format!("the image could not be read: {e}")))
    };
    let (width, height) = reader()?.into_dimensions().map_err(undecodable)?;
    if u64::from(width) * u64::from(height) > MAX_IMAGE_PIXELS {
        return Err(ExtractError::Bound(format!(
            "images above 100 megapixels cannot be described ({width}x{height})"
        )));
    }
    let mut limits = image::Limits::default();
    limits.max_image_width = Some(width);
    limits.max_image_height = Some(height);
    limits.max_alloc = Some(MAX_DECODE_ALLOC);
    let mut decoder = reader()?;
    decoder.limits(limits);
    let mut img = decoder.decode().map_err(undecodable)?;
    if width.max(height) > max_side {
        img = img.resize(max_side, max_side, FilterType::Triangle);
    }
    let mut out = Vec::new();
    let mime = if img.color().has_alpha() {
        img.write_to(&mut Cursor::new(&mut out), ImageFormat::Png)
            .map_err(undecodable)?;
        "image/png"
    } else {
        img.to_rgb8()
            .write_with_encoder(JpegEncoder::new_with_quality(&mut out, 85))
            .map_err(undecodable)?;
        "image/jpeg"
    };
    Ok(format!("data:{mime};base64,{}", STANDARD.encode(&out)))
}

/// The first `max_chars` characters of `text`.
pub fn cut(text: &str, max_chars: usize) -> &str {
    match text.char_indices().nth(max_chars) {
        Some((i, _)) => &text[..i],
        None => text,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cut_counts_characters_not_bytes() {
        assert_eq!(cut("Zürich", 2), "Zü");
        assert_eq!(cut("abc", 10), "abc");
    }

    #[test]
    fn images_shrink_to_the_longest_side() {
        let img = image::RgbImage::from_pixel(400, 100, image::Rgb([10, 200, 30]));
        let mut png = Vec::new();
        img.write_to(&mut Cursor::new(&mut png), ImageFormat::Png)
            .unwrap();
        let url = image_data_url(&png, 64).unwrap();
        let b64 = url.strip_prefix("data:image/jpeg;base64,").unwrap();
        let back = image::load_from_memory(&STANDARD.decode(b64).unwrap()).unwrap();
        assert_eq!((back.width(), back.height()), (64, 16));
    }

    #[test]
    fn garbage_is_not_an_image() {
        assert!(matches!(
            image_data_url(b"\x89PNG\r\n\x1a\nnot really", 64),
            Err(ExtractError::Bound(_))
        ));
    }
}
