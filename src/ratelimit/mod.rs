//! Rate limits: GCRA with its state in Postgres, decided by one statement
//! on the database clock, so every instance on the database enforces one
//! limit and instance clocks do not matter. Requests are limited per
//! minute; sign-ups per hour.
//!
//! For a limit of `L` requests per window `W` (a minute, or an hour) the
//! emission interval is `T = W / L` and the burst is `L`: a subject may
//! send `L` requests at once, then one every `T`. The state is the
//! theoretical arrival time `tat`; a request at `now` is allowed when
//! `max(tat, now) + T <= now + L·T`.
//!
//! One job per file: [`policy`] (subjects, their keys and intervals),
//! [`gcra`] (the step in SQL and the statements around it), [`decision`]
//! (a check's outcome and its headers), [`lanes`] (batching per instance).
//!
//! The limiter knows subjects and limits, never accounts: a caller names
//! the subject and the limit ([`Policy`]), or hands over SQL of its own
//! that finds them ([`Counting`]), as `auth` does for API keys.

mod decision;
mod gcra;
mod lanes;
mod policy;

pub use decision::Decision;
pub use gcra::{Counting, Step, decide_counted, decide_statement, peek, prune};
pub use lanes::{Lane, Limiter, LimiterError};
pub use policy::{Policy, interval_sql};
