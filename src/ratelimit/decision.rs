//! What one check decided, worked out from the state the database left,
//! and how it is told to the client: the `X-RateLimit-*`, `RateLimit` and
//! `Retry-After` headers.

use chrono::{DateTime, Utc};
use http::{HeaderMap, HeaderName, HeaderValue};

use super::policy::Policy;
use crate::error::ApiError;

/// The outcome of one check, with everything the headers report.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Whether the request may proceed.
    pub allowed: bool,
    /// Requests per window.
    pub limit: u32,
    /// Requests that would be allowed right now, after this one.
    pub remaining: u32,
    /// Unix second at which `remaining` is back to `limit`.
    pub reset_at: i64,
    /// Whole seconds until then.
    pub reset_after: u64,
    /// Whole seconds until the next request is allowed (refused requests).
    pub retry_after: Option<u64>,
}

const NANOS_PER_SEC: i64 = 1_000_000_000;

fn ceil_div(n: i64, d: i64) -> i64 {
    if n <= 0 { 0 } else { (n + d - 1) / d }
}

impl Decision {
    pub(crate) fn compute(
        policy: &Policy,
        allowed: bool,
        tat: DateTime<Utc>,
        now: DateTime<Utc>,
    ) -> Self {
        let t = policy.interval_nanos();
        let window = policy.window_nanos;
        let limit = i64::from(policy.limit.max(1));
        // How far the subject is ahead of its allowance.
        let backlog = (tat - now).num_nanoseconds().unwrap_or(i64::MAX / 4).max(0);
        // A further request is allowed while backlog + T <= the window.
        let remaining = ((window - backlog) / t).clamp(0, limit);
        let retry_after = (!allowed).then(|| {
            // The refused request would be allowed once backlog + T <= the window.
            ceil_div(backlog + t - window, NANOS_PER_SEC).max(1) as u64
        });
        let reset_nanos = now.timestamp_micros() * 1_000 + backlog;
        Self {
            allowed,
            limit: policy.limit,
            remaining: remaining as u32,
            reset_at: ceil_div(reset_nanos, NANOS_PER_SEC),
            reset_after: ceil_div(backlog, NANOS_PER_SEC) as u64,
            retry_after,
        }
    }

    /// The 429 `rate_limited` of a refused request, `None` for an allowed
    /// one; `what` names what the limit counts, per what.
    pub fn refusal(&self, what: &'static str) -> Option<ApiError> {
        (!self.allowed).then(|| ApiError::RateLimited {
            limit: u64::from(self.limit),
            what,
            retry_after: self.retry_after.unwrap_or(1),
        })
    }

    /// Writes `X-RateLimit-*`, `RateLimit-Policy`, `RateLimit` and, when
    /// refused, `Retry-After`: the headers of a per-minute policy, the one
    /// limit they describe on every response.
    pub fn apply(&self, headers: &mut HeaderMap) {
        let mut set = |name: &'static str, value: String| {
            if let Ok(v) = HeaderValue::from_str(&value) {
                headers.insert(HeaderName::from_static(name), v);
            }
        };
        set("x-ratelimit-limit", self.limit.to_string());
        set("x-ratelimit-remaining", self.remaining.to_string());
        set("x-ratelimit-reset", self.reset_at.to_string());
        set(
            "ratelimit-policy",
            format!("\"minute\";q={};w=60", self.limit),
        );
        set(
            "ratelimit",
            format!("\"minute\";r={};t={}", self.remaining, self.reset_after),
        );
        if let Some(secs) = self.retry_after {
            set("retry-after", secs.to_string());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::TimeZone;

    fn at(micros: i64) -> DateTime<Utc> {
        Utc.timestamp_micros(1_700_000_000_000_000 + micros)
            .unwrap()
    }

    #[test]
    fn absurd_limits_do_not_divide_by_zero() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), u32::MAX);
        let d = Decision::compute(&p, true, at(0), at(0));
        // One request per microsecond at most: 60 million a minute.
        assert_eq!(d.remaining, 60_000_000);
    }

    #[test]
    fn a_fresh_subject_has_the_whole_burst_minus_one() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 30);
        // First request: tat = now + T (2 s).
        let d = Decision::compute(&p, true, at(2_000_000), at(0));
        assert_eq!(d.remaining, 29);
        assert_eq!(d.reset_after, 2);
        assert_eq!(d.retry_after, None);
    }

    #[test]
    fn an_exhausted_subject_waits_exactly_one_interval() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 60);
        // 60 requests at once: tat = now + 60 s.
        let d = Decision::compute(&p, false, at(60_000_000), at(0));
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(1));
        assert_eq!(d.reset_after, 60);
    }

    #[test]
    fn a_limit_that_does_not_divide_the_minute_keeps_its_whole_burst() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 7);
        let t = p.interval_nanos() / 1_000;
        assert_eq!(t, 8_571_428);
        // After the first request and after the sixth, as the database
        // leaves the state (whole microseconds).
        assert_eq!(Decision::compute(&p, true, at(t), at(0)).remaining, 6);
        assert_eq!(Decision::compute(&p, true, at(6 * t), at(0)).remaining, 1);
        assert_eq!(Decision::compute(&p, true, at(7 * t), at(0)).remaining, 0);
    }

    #[test]
    fn a_spent_hourly_burst_waits_one_interval_of_the_hour() {
        let p = Policy::signup("192.0.2.1".parse().unwrap(), 5);
        // Five at once: tat = now + 60 min; the next is due in 12 min.
        let d = Decision::compute(&p, false, at(3_600_000_000), at(0));
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after, Some(720));
        assert_eq!(d.reset_after, 3_600);
        let d = Decision::compute(&p, true, at(720_000_000), at(0));
        assert_eq!(d.remaining, 4);
    }

    #[test]
    fn headers_follow_the_draft_syntax() {
        let p = Policy::anonymous("127.0.0.1".parse().unwrap(), 100);
        let d = Decision::compute(&p, true, at(37_000_000), at(0));
        let mut h = HeaderMap::new();
        d.apply(&mut h);
        assert_eq!(h["ratelimit-policy"], "\"minute\";q=100;w=60");
        assert_eq!(h["ratelimit"], format!("\"minute\";r={};t=37", d.remaining));
        assert_eq!(d.remaining, 38);
        assert!(h.get("retry-after").is_none());
    }
}
