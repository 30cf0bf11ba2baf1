//! Per-minute rate limits: GCRA with its state in Postgres, decided by one
//! statement on the database clock, so every instance on the database
//! enforces one limit and instance clocks do not matter.
//!
//! For a limit of `L` requests per minute the emission interval is
//! `T = 60 s / L` and the burst is `L`: a subject may send `L` requests at
//! once, then one every `T`. The state is the theoretical arrival time `tat`;
//! a request at `now` is allowed when `max(tat, now) + T <= now + L·T`.
//!
//! One job per file: [`policy`] (subjects, their keys and intervals),
//! [`gcra`] (the step in SQL and the statements around it), [`decision`]
//! (a check's outcome and its headers), [`lanes`] (batching per instance).

mod decision;
mod gcra;
mod keys;
mod lanes;
mod policy;

pub use decision::Decision;
pub use gcra::{peek, prune};
pub use keys::{KeyCheck, KeyOutcome};
pub use lanes::{Lane, Limiter, LimiterError};
pub use policy::{Policy, interval_sql};

/// The two statements that advance GCRA state (a batch of policies; a
/// batch of API keys with the counted ones), for tests of their plans.
#[doc(hidden)]
pub fn counting_statements() -> [&'static str; 2] {
    [gcra::decide_statement(), keys::KEYS_COUNTED.1.as_str()]
}
