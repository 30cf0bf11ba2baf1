//! Presigned uploads: the client sends the bytes straight to object storage
//! (or, with the local folder, to intake's own data route) through signed
//! URLs, and intake keeps every limit anyway: the type and size are checked
//! at issue ([`quota::caps`]), the size is reserved from the quota
//! ([`quota::reservations`]) and a concurrent-upload slot ([`quota::slots`])
//! is held from issue to completion, abort or expiry; completion verifies
//! the stored object ([`verify`]) before it becomes a file.
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

pub use abort::{__path_abort, abort};
pub use complete::{__path_complete, complete};
pub use data::{__path_data, DataQuery, data};
pub use doc::{
    CompleteRequest, CompletedPart, PartUrl, PresignBody, PresignRequest, Presigned, document,
};
pub use issue::{__path_issue, issue, part_size};
pub use uploads::staged_in_flight;

/// How long after its URLs expire an unfinished upload keeps its slot, so a
/// PUT that started just before expiry can still complete.
const LEASE_GRACE: Duration = Duration::from_secs(60);
