//! E-mail and password newtypes (parsed at the edge) and argon2id hashing,
//! always off the async runtime and bounded: each hash holds 19 MiB, so a
//! login flood must not run an unbounded number of them at once.

use std::sync::{Arc, OnceLock};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use argon2::{
    Argon2, PasswordHash, PasswordHasher, PasswordVerifier,
    password_hash::{SaltString, rand_core::OsRng},
};

use crate::error::ApiError;

/// A syntactically valid e-mail address, lower-cased.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Email(String);

impl Email {
    /// Parses an address: one `@`, a non-empty local part, a dotted domain,
    /// no white space or control characters, at most 254 characters.
    pub fn parse(raw: &str) -> Result<Self, ApiError> {
        let email = Self::normalize(raw);
        let valid = email.len() <= 254
            && !email.chars().any(|c| c.is_whitespace() || c.is_control())
            && match email.split_once('@') {
                Some((local, domain)) => {
                    !local.is_empty()
                        && local.len() <= 64
                        && !domain.contains('@')
                        && domain.contains('.')
                        && !domain.starts_with('.')
                        && !domain.ends_with('.')
                        && !domain.contains("..")
                }
                None => false,
            };
        if valid {
            Ok(Self(email))
        } else {
            Err(ApiError::unprocessable(
                "email is not a valid e-mail address",
            ))
        }
    }

    /// The address.
    pub fn as_str(&self) -> &str {
        &self.0
    }

    /// What an address is once parsed, of any input: trimmed, lower-cased.
    pub fn normalize(raw: &str) -> String {
        raw.trim().to_lowercase()
    }
}

/// A password acceptable for a new account: 8 to 1024 bytes.
pub struct Password(String);

impl Password {
    /// Smallest accepted length, in characters.
    pub const MIN_CHARS: usize = 8;
    /// Largest accepted length, in bytes (argon2 time grows with it).
    pub const MAX_BYTES: usize = 1024;

    /// Checks a new password.
    pub fn parse(raw: String) -> Result<Self, ApiError> {
        if raw.chars().count() < Self::MIN_CHARS {
            return Err(ApiError::unprocessable(format!(
                "password must be at least {} characters",
                Self::MIN_CHARS
            )));
        }
        if raw.len() > Self::MAX_BYTES {
            return Err(ApiError::unprocessable(format!(
                "password must be at most {} bytes",
                Self::MAX_BYTES
            )));
        }
        Ok(Self(raw))
    }
}

impl std::fmt::Debug for Password {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Password([redacted])")
    }
}

/// Seconds a refused caller is told to wait: a hash takes well under one.
const BUSY_RETRY_AFTER_SECS: u64 = 1;

/// Runs argon2id on the blocking pool, at most `concurrency` hashes at once
/// and `queue` more waiting for a turn; past that a caller is refused with
/// 503 at once, so memory stays bounded (one 19 MiB buffer per running
/// hash) however many logins arrive.
#[derive(Clone)]
pub struct Hasher {
    running: Arc<Semaphore>,
    admitted: Arc<Semaphore>,
}

impl Hasher {
    /// A hasher running `concurrency` hashes at once with `queue` waiting.
    pub fn new(concurrency: usize, queue: usize) -> Self {
        Self {
            running: Arc::new(Semaphore::new(concurrency.max(1))),
            admitted: Arc::new(Semaphore::new(concurrency.max(1).saturating_add(queue))),
        }
    }

    /// A place among the hashes running and waiting, or 503 at once. A
    /// login takes it before anything counts the attempt, so a login
    /// refused for want of room is no attempt.
    pub fn admit(&self) -> Result<Admitted, ApiError> {
        let admitted = self.admitted.clone().try_acquire_owned().map_err(|_| {
            metrics::counter!("intake_password_hash_refused_total").increment(1);
            ApiError::Busy {
                detail: "too many password checks at once; retry shortly".into(),
                retry_after: BUSY_RETRY_AFTER_SECS,
            }
        })?;
        Ok(Admitted {
            hasher: self.clone(),
            admitted,
        })
    }

    /// A turn to hash: admitted (or refused) at once, then waiting for one
    /// of the running slots.
    async fn turn(&self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ApiError> {
        self.admit()?.turn().await
    }

    /// Hashes a password with argon2id.
    pub async fn hash(&self, password: Password) -> Result<String, ApiError> {
        let turn = self.turn().await?;
        let hashed = tokio::task::spawn_blocking(move || {
            let _turn = turn;
            let salt = SaltString::generate(&mut OsRng);
            Argon2::default()
                .hash_password(password.0.as_bytes(), &salt)
                .map(|h| h.to_string())
                .map_err(|e| anyhow::anyhow!("argon2 hashing failed: {e}"))
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
        Ok(hashed)
    }

    /// Checks a password against a stored hash (see [`Admitted::verify`]).
    pub async fn verify(&self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        self.admit()?.verify(password, stored).await
    }
}

/// A place among the hashes running and waiting ([`Hasher::admit`]).
pub struct Admitted {
    hasher: Hasher,
    admitted: OwnedSemaphorePermit,
}

impl Admitted {
    /// Waits for one of the running slots.
    async fn turn(self) -> Result<(OwnedSemaphorePermit, OwnedSemaphorePermit), ApiError> {
        let running = self
            .hasher
            .running
            .clone()
            .acquire_owned()
            .await
            .map_err(|e| ApiError::Internal(e.into()))?;
        Ok((self.admitted, running))
    }

    /// Checks a password against a stored hash. With no stored hash
    /// (unknown e-mail, or an account without a password) it still spends
    /// the same time on a dummy hash, so answers do not reveal which e-mail
    /// addresses exist.
    pub async fn verify(self, password: String, stored: Option<String>) -> Result<bool, ApiError> {
        let turn = self.turn().await?;
        let ok = tokio::task::spawn_blocking(move || {
            // Held until the hash is done, even if the request is dropped.
            let _turn = turn;
            let (phc, real) = match stored {
                Some(phc) => (phc, true),
                None => (dummy_hash().to_owned(), false),
            };
            let parsed = PasswordHash::new(&phc)
                .map_err(|e| anyhow::anyhow!("stored hash is invalid: {e}"))?;
            let ok = Argon2::default()
                .verify_password(password.as_bytes(), &parsed)
                .is_ok();
            anyhow::Ok(ok && real)
        })
        .await
        .map_err(|e| ApiError::Internal(e.into()))??;
        Ok(ok)
    }
}

fn dummy_hash() -> &'static str {
    static DUMMY: OnceLock<String> = OnceLock::new();
    DUMMY.get_or_init(|| {
        let salt = SaltString::generate(&mut OsRng);
        Argon2::default()
            .hash_password(b"not a real password", &salt)
            .map(|h| h.to_string())
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn emails_are_checked_and_lower_cased() {
        assert_eq!(
            Email::parse(" Ann@Example.COM ").unwrap().as_str(),
            "ann@example.com"
        );
        for bad in [
            "",
            "ann",
            "ann@",
            "@example.com",
            "ann@example",
            "a b@example.com",
            "ann@@example.com",
            "ann@example..com",
        ] {
            assert!(Email::parse(bad).is_err(), "{bad:?} accepted");
        }
    }

    #[test]
    fn short_and_huge_passwords_are_refused() {
        assert!(Password::parse("1234567".into()).is_err());
        assert!(Password::parse("12345678".into()).is_ok());
        assert!(Password::parse("x".repeat(1025)).is_err());
    }

    #[tokio::test]
    async fn hashes_verify_only_the_right_password() {
        let hasher = Hasher::new(2, 0);
        let phc = hasher
            .hash(Password::parse("correct horse".into()).unwrap())
            .await
            .unwrap();
        assert!(phc.starts_with("$argon2id$"));
        assert!(
            hasher
                .verify("correct horse".into(), Some(phc.clone()))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("wrong horse".into(), Some(phc))
                .await
                .unwrap()
        );
        assert!(
            !hasher
                .verify("not a real password".into(), None)
                .await
                .unwrap()
        );
    }

    #[tokio::test]
    async fn past_the_running_and_waiting_hashes_callers_are_refused_at_once() {
        let hasher = Hasher::new(1, 1);
        // One running, one waiting: the third is refused without waiting.
        let (first, second) = (hasher.turn().await.unwrap(), hasher.clone());
        let waiting = tokio::spawn(async move { second.turn().await.map(drop) });
        while hasher.admitted.available_permits() > 0 {
            tokio::task::yield_now().await;
        }
        let refused = hasher.turn().await.map(drop).unwrap_err();
        assert_eq!(refused.code(), "service_unavailable");
        assert_eq!(refused.retry_after(), Some(1));
        drop(first);
        waiting.await.unwrap().unwrap();
        assert!(hasher.turn().await.is_ok(), "slots come back");
    }
}
