//! What completion checks before a presigned upload becomes a file: intake
//! never trusts what sits behind a URL, so the stored object itself is held
//! to what was declared.

use futures_util::StreamExt;
use sha2::{Digest, Sha256};

use super::uploads::Upload;
use crate::{
    quota::caps::{Cap, ContentCheck},
    sniff::{self, SNIFF_BYTES},
    storage::ObjectStore,
};

/// Checks the stored object against the declaration: its size, its type
/// (first bytes), for text documents UTF-8 to the last byte, and, when a
/// SHA-256 was declared, the hash of the stored bytes (read back, whatever
/// the storage server claims). The error says what did not match.
pub async fn verify(store: &dyn ObjectStore, upload: &Upload) -> Result<(), String> {
    let key = upload.key();
    let unreadable = |e: crate::storage::StorageError| {
        tracing::warn!(error = %e, key, "a presigned upload's object cannot be read");
        "the stored object cannot be read".to_owned()
    };
    let size = match store.head(&key).await {
        Ok(Some(size)) => size,
        Ok(None) => return Err("nothing was uploaded".into()),
        Err(e) => return Err(unreadable(e)),
    };
    if size != upload.size() {
        return Err(format!(
            "{size} bytes were stored, {} were declared",
            upload.size
        ));
    }
    let whole = size <= SNIFF_BYTES as u64;
    let head = read(store, &key, Some(0..size.min(SNIFF_BYTES as u64)))
        .await
        .map_err(unreadable)?;
    let kind = sniff::sniff(&head, whole, &upload.content_type, &upload.filename)
        .map_err(|e| e.to_string())?;
    let declared = upload.sha256();
    if !kind.text && declared.is_none() {
        return Ok(());
    }
    let mut check = ContentCheck::new(Cap::exactly(size), &kind);
    let mut hasher = Sha256::new();
    let mut feed = |chunk: &[u8]| {
        hasher.update(chunk);
        check.feed(chunk).map_err(|e| e.to_string())
    };
    if whole {
        feed(&head)?;
    } else {
        let mut body = store.get(&key, None).await.map_err(unreadable)?;
        while let Some(chunk) = body.stream.next().await {
            feed(&chunk.map_err(|e| unreadable(e.into()))?)?;
        }
    }
    check.finish().map_err(|e| e.to_string())?;
    if let Some(want) = declared {
        let got: [u8; 32] = hasher.finalize().into();
        if got != want {
            return Err("the stored bytes do not match the declared sha256".into());
        }
    }
    Ok(())
}

/// Reads an object (or a range of it) into memory: only for its first
/// [`SNIFF_BYTES`].
async fn read(
    store: &dyn ObjectStore,
    key: &str,
    range: Option<std::ops::Range<u64>>,
) -> Result<Vec<u8>, crate::storage::StorageError> {
    let mut body = store.get(key, range).await?;
    let mut out = Vec::with_capacity(usize::try_from(body.len).unwrap_or(0));
    while let Some(chunk) = body.stream.next().await {
        out.extend_from_slice(&chunk?);
    }
    Ok(out)
}
