//! Multipart uploads on S3: which parts a completion names, checked
//! against the parts storage lists (with their checksums, where the upload
//! has them), and the ETag their object must get.

use aws_sdk_s3::{
    operation::complete_multipart_upload::CompleteMultipartUploadOutput,
    types::{ChecksumAlgorithm, CompletedMultipartUpload, CompletedPart},
};

use super::{S3Store, already_gone, map_err};
use crate::storage::StorageError;

impl S3Store {
    /// Starts a multipart upload of the object at `full_key`; with
    /// `sha256_parts`, one whose parts carry their SHA-256 (S3 refuses a
    /// part's checksum of an algorithm the upload was not started with).
    pub(super) async fn create_upload(
        &self,
        full_key: &str,
        content_type: &str,
        sha256_parts: bool,
    ) -> Result<String, StorageError> {
        let out = self
            .client
            .create_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .content_type(content_type)
            .set_checksum_algorithm(sha256_parts.then_some(ChecksumAlgorithm::Sha256))
            .send()
            .await
            .map_err(map_err)?;
        out.upload_id()
            .map(str::to_owned)
            .ok_or_else(|| StorageError::backend(anyhow::anyhow!("no upload id returned")))
    }

    /// Aborts a multipart upload; one storage no longer knows is already gone.
    pub(super) async fn abort_upload(
        &self,
        full_key: &str,
        upload_id: &str,
    ) -> Result<(), StorageError> {
        let result = self
            .client
            .abort_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .send()
            .await;
        already_gone(result)
    }

    /// Every part of a multipart upload, paging through ListParts (AWS and
    /// MinIO answer at most 1,000 parts a page).
    async fn list_parts(&self, key: &str, upload_id: &str) -> Result<Vec<Listed>, StorageError> {
        let mut parts = Vec::new();
        let mut marker: Option<String> = None;
        loop {
            let page = self
                .client
                .list_parts()
                .bucket(&self.bucket)
                .key(self.full_key(key))
                .upload_id(upload_id)
                .max_parts(1000)
                .set_part_number_marker(marker.take())
                .send()
                .await
                .map_err(map_err)?;
            parts.extend(page.parts().iter().map(|p| Listed {
                number: p.part_number().unwrap_or(0),
                etag: unquote(p.e_tag().unwrap_or_default()),
                size: p.size(),
                sha256: p.checksum_sha256().map(str::to_owned),
            }));
            // A server that says "more" without moving on would loop forever.
            match (page.is_truncated(), page.next_part_number_marker()) {
                (Some(true), Some(next))
                    if !next.is_empty() && page.part_number_marker() != Some(next) =>
                {
                    marker = Some(next.to_owned());
                }
                _ => return Ok(parts),
            }
        }
    }

    /// Completes a multipart upload with the parts given.
    pub(super) async fn complete(
        &self,
        full_key: &str,
        upload_id: &str,
        parts: Vec<CompletedPart>,
    ) -> Result<CompleteMultipartUploadOutput, StorageError> {
        self.client
            .complete_multipart_upload()
            .bucket(&self.bucket)
            .key(full_key)
            .upload_id(upload_id)
            .multipart_upload(
                CompletedMultipartUpload::builder()
                    .set_parts(Some(parts))
                    .build(),
            )
            .send()
            .await
            .map_err(map_err)
    }

    /// Completes a presigned multipart upload with the parts its client
    /// lists, once they are checked against the parts storage holds.
    pub(super) async fn complete_as_given(
        &self,
        key: &str,
        upload_id: &str,
        parts: &[(i32, String)],
    ) -> Result<(), StorageError> {
        // Check the client's list against what storage holds, so a wrong
        // ETag or a missing part fails here even on servers that do not check.
        let mut stored: Vec<(i32, String)> = self
            .list_parts(key, upload_id)
            .await?
            .into_iter()
            .map(|p| (p.number, p.etag))
            .collect();
        stored.sort_unstable();
        let given: Vec<(i32, String)> = parts.iter().map(|(n, e)| (*n, unquote(e))).collect();
        // Some S3-compatible servers list parts without their ETags; those
        // are compared by number only (storage checks the ETags itself).
        let same = stored.len() == given.len()
            && stored
                .iter()
                .zip(&given)
                .all(|((sn, se), (gn, ge))| sn == gn && (se.is_empty() || se == ge));
        if !same {
            return Err(StorageError::backend(anyhow::anyhow!(
                "the parts listed {given:?} are not the parts uploaded {stored:?}"
            )));
        }
        let expected = composite_etag(&given);
        let completed: Vec<CompletedPart> = parts
            .iter()
            .map(|(n, etag)| CompletedPart::builder().part_number(*n).e_tag(etag).build())
            .collect();
        let out = self
            .complete(&self.full_key(key), upload_id, completed)
            .await?;
        // The object's ETag is made from its parts' real ETags: a client's
        // wrong ETag shows here even where completion did not check it.
        if let (Some(expected), Some(actual)) = (expected, out.e_tag().map(unquote))
            && is_composite(&actual)
            && actual != expected
        {
            return Err(StorageError::backend(anyhow::anyhow!(
                "the parts' ETags do not match the stored parts"
            )));
        }
        Ok(())
    }

    /// Completes a multipart upload written part by part by this server
    /// (a resumable upload), with the parts storage lists: exactly the
    /// `parts` numbered from 1, of `size` bytes in all.
    pub(super) async fn complete_as_stored(
        &self,
        key: &str,
        upload_id: &str,
        parts: i32,
        size: u64,
    ) -> Result<(), StorageError> {
        // The ETags come from storage itself.
        let mut listed = self.list_parts(key, upload_id).await?;
        listed.retain(|p| (1..=parts).contains(&p.number));
        listed.sort_unstable_by_key(|p| p.number);
        listed.dedup_by_key(|p| p.number);
        let numbered = listed.len() == usize::try_from(parts).unwrap_or(0)
            && listed.iter().zip(1..).all(|(p, want)| p.number == want);
        let sizes: Option<i64> = listed.iter().map(|p| p.size).sum();
        if !numbered || sizes.is_some_and(|total| u64::try_from(total).ok() != Some(size)) {
            return Err(StorageError::backend(anyhow::anyhow!(
                "storage holds parts {:?}, not the {parts} parts of {size} bytes recorded",
                listed
                    .iter()
                    .map(|p| (p.number, p.size))
                    .collect::<Vec<_>>()
            )));
        }
        let completed: Vec<CompletedPart> = listed
            .into_iter()
            .map(|p| {
                // Some S3-compatible servers list parts without ETags (and do
                // not check them at completion). An upload whose parts carry
                // a SHA-256 completes with them (S3 requires it).
                CompletedPart::builder()
                    .part_number(p.number)
                    .set_e_tag((!p.etag.is_empty()).then_some(p.etag))
                    .set_checksum_sha256(p.sha256)
                    .build()
            })
            .collect();
        self.complete(&self.full_key(key), upload_id, completed)
            .await?;
        Ok(())
    }
}

/// A part as ListParts gives it.
struct Listed {
    number: i32,
    /// Empty where the server lists none.
    etag: String,
    /// Where the server gives it.
    size: Option<i64>,
    /// For uploads whose parts carry their SHA-256.
    sha256: Option<String>,
}

fn unquote(etag: &str) -> String {
    etag.trim_matches('"').to_owned()
}

/// `<32 hex>-<parts>`: the ETag S3 gives a multipart object.
fn is_composite(etag: &str) -> bool {
    etag.split_once('-').is_some_and(|(md5, n)| {
        md5.len() == 32 && md5.bytes().all(|b| b.is_ascii_hexdigit()) && n.parse::<u32>().is_ok()
    })
}

/// The multipart object's ETag these part ETags make: MD5 of the parts'
/// binary MD5s, then `-<parts>`. `None` when a part ETag is not an MD5.
fn composite_etag(parts: &[(i32, String)]) -> Option<String> {
    use md5::Digest as _;
    let mut md5 = md5::Md5::new();
    for (_, etag) in parts {
        let bytes = hex::decode(etag).ok().filter(|b| b.len() == 16)?;
        md5.update(bytes);
    }
    Some(format!("{}-{}", hex::encode(md5.finalize()), parts.len()))
}

#[cfg(test)]
mod tests {
    #[test]
    fn composite_etags_are_made_from_part_md5s() {
        let parts = vec![(1, "0123456789abcdef0123456789abcdef".to_owned())];
        let etag = super::composite_etag(&parts).unwrap();
        assert!(super::is_composite(&etag) && etag.ends_with("-1"));
        assert_eq!(super::composite_etag(&[(1, "not-an-md5".to_owned())]), None);
        assert!(!super::is_composite("d41d8cd98f00b204e9800998ecf8427e"));
    }
}
