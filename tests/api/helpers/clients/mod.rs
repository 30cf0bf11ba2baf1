//! Clients of the three upload routes, as a user's client drives them.

pub mod presign;
pub mod stream;
pub mod tus;
