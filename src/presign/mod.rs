//! Presigned uploads: the client sends the bytes straight to object storage
//! (or, with the local folder, to intake's own data route) through signed
//! URLs, and intake keeps every limit anyway: the type and size are checked
//! at issue ([`quota::caps`]), the size is reserved from the quota
//! ([`quota::reservations`]) and a concurrent-upload slot ([`quota::slots`])
//! is held from issue to completion, abort or expiry; completion verifies
//! the stored object ([`verify`]) before it becomes a file. The URLs write
//! the file's own key and die with their upload: on S3 every upload is a
//! multipart upload that completion completes (no copy) and abort aborts;
//! the local folder's data route takes bytes only while it is pending.
//!
//! One file per job: the bodies and their schemas (`doc`), issuing
//! (`issue`), completing (`complete`), ending (`abort`), the local
//! folder's upload URL (`data`), the rows (`uploads`).

mod abort;
mod complete;
mod data;
mod doc;
mod issue;
mod uploads;
mod verify;

use std::time::Duration;

pub use abort::{__path_abort, abort, end_for_token};
pub use complete::{__path_complete, complete};
pub use data::{__path_data, DataQuery, data};
pub use doc::{
    CompleteRequest, CompletedPart, PartUrl, PresignBody, PresignRequest, Presigned, document,
};
pub use issue::{__path_issue, issue, part_size};

/// How long after its URLs expire an unfinished upload keeps its slot, so a
/// PUT that started just before expiry can still complete.
const LEASE_GRACE: Duration = Duration::from_secs(60);
