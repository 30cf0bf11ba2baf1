//! What a streamed file reserves before its bytes are held: under an
//! upload token, the token's share first ([`quota::tokens`]), then the
//! storage quota ([`quota::reservations`]), a step ahead of the bytes and,
//! near either limit, what is left of it. Both or neither.

use super::pipeline::Ctx;
use crate::{
    error::ApiError,
    quota::{
        reservations::{self, ReserveError},
        tokens::{self, TokenError},
    },
};

/// A reservation refused; `for_room` when what refused it (the storage
/// quota, the token's files or bytes) may have room once the request's
/// earlier files settle.
pub(super) struct Refused {
    /// What the client is told.
    pub error: ApiError,
    /// Whether room may come.
    pub for_room: bool,
}

impl From<ReserveError> for Refused {
    fn from(e: ReserveError) -> Self {
        let for_room = matches!(e, ReserveError::Quota { .. });
        Self {
            error: e.into(),
            for_room,
        }
    }
}

impl From<TokenError> for Refused {
    fn from(e: TokenError) -> Self {
        let for_room = matches!(e, TokenError::Exhausted { .. });
        Self {
            error: e.into(),
            for_room,
        }
    }
}

impl Ctx<'_> {
    /// Reserves between `need` and `step` bytes for a file under the
    /// request's lease (with the file itself when it is its `first`
    /// reservation, which also records `key` on the lease): under a token,
    /// the token's share first, at most what the token has left, then the
    /// storage quota for what the token granted, at most what the quota has
    /// left; the token gets back what storage did not grant. Both or
    /// neither. Returns what was granted.
    pub(super) async fn reserve(
        &self,
        need: u64,
        step: u64,
        first: bool,
        key: Option<&str>,
    ) -> Result<u64, Refused> {
        let Some(token) = self.token else {
            return self.reserve_storage(need, step, key).await;
        };
        let (db, lease) = (&self.state.db, self.lease);
        let files = u32::from(first);
        let step = match tokens::reserve(db, lease, &token.id, files, step).await {
            Ok(()) => step,
            Err(TokenError::Exhausted {
                what: "max_bytes",
                limit,
                used,
            }) if step > need => {
                let left = limit.saturating_sub(used).clamp(need, step);
                tokens::reserve(db, lease, &token.id, files, left).await?;
                left
            }
            Err(e) => return Err(e.into()),
        };
        let storage = self.reserve_storage(need, step, key).await;
        let back = match &storage {
            Ok(granted) => (0, step - granted),
            Err(_) => (files, step),
        };
        if back != (0, 0)
            && let Err(e) = tokens::unreserve(db, lease, back.0, back.1).await
        {
            tracing::error!(error = %e, "could not give an upload token back what storage refused; the lease's end will");
        }
        storage
    }

    /// One reservation of the storage quota of at least `need` bytes: `step`,
    /// or near the quota what is left of it, so a file that fits is
    /// accepted. Returns what was granted.
    async fn reserve_storage(
        &self,
        need: u64,
        step: u64,
        key: Option<&str>,
    ) -> Result<u64, Refused> {
        let (db, lease) = (&self.state.db, self.lease);
        let quota = self.limits.storage_bytes;
        match reservations::reserve(db, lease, step, quota, key).await {
            Ok(()) => Ok(step),
            Err(ReserveError::Quota { limit, used }) if step > need => {
                let left = limit.saturating_sub(used).clamp(need, step);
                reservations::reserve(db, lease, left, quota, key).await?;
                Ok(left)
            }
            Err(e) => Err(e.into()),
        }
    }
}
