//! Kept answers this instance has seen, so that a replay found here costs
//! no statement. A kept answer never changes until it expires (nothing
//! updates a kept row; only the prune deletes it, once expired), so an
//! instance may answer from memory until the row's own expiry, which it
//! learns with the answer. Only small answers are held, and all of them
//! together within a bound (oldest out first); a key not found here is
//! looked up in Postgres as before.

use std::{
    collections::{HashMap, VecDeque},
    sync::Mutex,
    time::Duration,
};

use tokio::time::Instant;

use super::{answer::Kept, store::Scope};

/// The largest answer held (the answer of an upload, a describe or a chat
/// is a few KiB; a presigned upload of many parts is not held).
const MAX_ANSWER: usize = 64 * 1024;

/// What all held answers may take together.
const MAX_BYTES: usize = 16 * 1024 * 1024;

/// A kept answer, the hash of its request's body where compared, and when
/// its row expires.
#[derive(Clone)]
pub struct Replay {
    /// The answer.
    pub answer: Kept,
    /// SHA-256 of the first request's body, where compared.
    pub request_hash: Option<Vec<u8>>,
    until: Instant,
}

#[derive(Default)]
struct Inner {
    held: HashMap<Scope, Replay>,
    /// Scopes in the order they were first held.
    order: VecDeque<Scope>,
    bytes: usize,
}

/// The kept answers of one instance.
#[derive(Default)]
pub struct Replays(Mutex<Inner>);

fn size(scope: &Scope, replay: &Replay) -> usize {
    let headers: usize = replay
        .answer
        .headers
        .iter()
        .map(|(n, v)| n.len() + v.len())
        .sum();
    replay.answer.body.len() + headers + scope.path.len() + scope.key.as_str().len() + 64
}

impl Replays {
    /// The answer kept for `scope`, unless it expired or was never held.
    pub fn get(&self, scope: &Scope) -> Option<Replay> {
        let mut inner = self.0.lock().ok()?;
        let replay = inner.held.get(scope)?.clone();
        if replay.until > Instant::now() {
            return Some(replay);
        }
        if let Some(gone) = inner.held.remove(scope) {
            inner.bytes -= size(scope, &gone);
        }
        None
    }

    /// Holds the answer kept for `scope` until a second before `remaining`
    /// from now (the row's expiry, learnt a moment ago), if it is small
    /// enough.
    pub fn hold(
        &self,
        scope: &Scope,
        answer: Kept,
        request_hash: Option<Vec<u8>>,
        remaining: Duration,
    ) {
        let remaining = remaining.saturating_sub(Duration::from_secs(1));
        if answer.body.len() > MAX_ANSWER || remaining.is_zero() {
            return;
        }
        self.insert(
            scope,
            Replay {
                answer,
                request_hash,
                until: Instant::now() + remaining,
            },
        );
    }

    fn insert(&self, scope: &Scope, replay: Replay) {
        let Ok(mut inner) = self.0.lock() else {
            return;
        };
        if inner.held.contains_key(scope) {
            return;
        }
        inner.bytes += size(scope, &replay);
        inner.held.insert(scope.clone(), replay);
        inner.order.push_back(scope.clone());
        while inner.bytes > MAX_BYTES {
            let Some(oldest) = inner.order.pop_front() else {
                break;
            };
            if let Some(gone) = inner.held.remove(&oldest) {
                inner.bytes -= size(&oldest, &gone);
            }
        }
        // Scopes already gone (expired on a read) leave the order here.
        if inner.order.len() > 2 * inner.held.len() + 64 {
            let Inner { held, order, .. } = &mut *inner;
            order.retain(|s| held.contains_key(s));
        }
    }
}

#[cfg(test)]
mod tests {
    use uuid::Uuid;

    use super::*;
    use crate::idempotency::key::Key;

    fn scope(key: &str) -> Scope {
        Scope {
            account_id: Uuid::nil(),
            key: Key::parse(key.as_bytes()).expect("a key"),
            method: "POST".into(),
            path: "/upload/stream".into(),
        }
    }

    fn answer(len: usize) -> Kept {
        Kept {
            status: 201,
            headers: vec![("content-type".into(), "application/json".into())],
            body: vec![b'x'; len],
        }
    }

    #[test]
    fn an_answer_is_held_until_its_rows_expiry_and_large_ones_are_not() {
        let replays = Replays::default();
        let minute = Duration::from_secs(60);
        replays.hold(&scope("a"), answer(10), None, minute);
        replays.hold(&scope("big"), answer(MAX_ANSWER + 1), None, minute);
        // A row about to expire is not worth holding.
        replays.hold(&scope("late"), answer(10), None, Duration::from_secs(1));
        assert_eq!(replays.get(&scope("a")).map(|r| r.answer), Some(answer(10)));
        for none in ["big", "late", "other"] {
            assert!(replays.get(&scope(none)).is_none(), "{none}");
        }
        // Past its expiry an answer is forgotten.
        let expired = Replay {
            answer: answer(10),
            request_hash: None,
            until: Instant::now(),
        };
        replays.insert(&scope("expired"), expired);
        assert!(replays.get(&scope("expired")).is_none());
        assert_eq!(replays.0.lock().expect("the lock").held.len(), 1);
    }

    #[test]
    fn the_oldest_answers_go_first_past_the_bound() {
        let replays = Replays::default();
        let n = MAX_BYTES / MAX_ANSWER + 2;
        for i in 0..n {
            replays.hold(
                &scope(&format!("k{i}")),
                answer(MAX_ANSWER),
                None,
                Duration::from_secs(60),
            );
        }
        assert!(replays.get(&scope("k0")).is_none());
        assert!(replays.get(&scope(&format!("k{}", n - 1))).is_some());
        let inner = replays.0.lock().expect("the lock");
        assert!(inner.bytes <= MAX_BYTES);
    }
}
