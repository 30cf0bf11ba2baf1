//! A held lease as the limit modules name it: its id, its account and how
//! long it lives unrenewed. Its row is [`super::slots`]'s, the bytes it
//! holds [`super::reservations`]'s; both act on this one type, so neither
//! needs the other's.

use std::time::Duration;

use uuid::Uuid;

/// A held lease. Not `Clone`: one lease, one owner.
#[derive(Debug)]
pub struct Lease {
    /// Lease id.
    pub id: Uuid,
    /// Its account.
    pub account_id: Uuid,
    pub(super) ttl: Duration,
}

impl Lease {
    /// A lease taken earlier by another request (a presigned upload's
    /// completion acts on the lease its issue took).
    pub fn existing(id: Uuid, account_id: Uuid, ttl: Duration) -> Self {
        Self {
            id,
            account_id,
            ttl,
        }
    }

    /// How long the lease lives without renewal.
    pub fn ttl(&self) -> Duration {
        self.ttl
    }
}
