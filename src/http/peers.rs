//! Connections of one client address held at once on this instance, at
//! most `MAX_CONNECTIONS_PER_IP`: past it, the new connection's request is
//! answered 429 `concurrent_request_limit` and the connection closed. An
//! IPv6 client is its /64 (what one host is given), an IPv4-mapped IPv6
//! peer its IPv4 address.
//!
//! The address is the socket's peer. A connection from a trusted proxy
//! (`TRUSTED_PROXIES`) carries the requests of many clients, whose own
//! addresses only its requests name; such connections are counted but not
//! refused, and bounding them per client is the proxy's part.

use std::{
    net::{IpAddr, Ipv6Addr},
    sync::Arc,
};

use axum::{
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
};

use super::tally::Tally;
use crate::error::ApiError;

/// The connections of every client address on this instance.
pub type Connections = Arc<Tally<IpAddr>>;

/// Whole seconds a refused client is told to wait.
const RETRY_AFTER_SECS: u64 = 1;

/// The client a peer address stands for: an IPv4 address, or an IPv6 /64.
pub fn client_of(peer: IpAddr) -> IpAddr {
    match peer.to_canonical() {
        IpAddr::V4(v4) => IpAddr::V4(v4),
        IpAddr::V6(v6) => {
            let prefix = u128::from(v6) & !(u128::MAX >> 64);
            IpAddr::V6(Ipv6Addr::from(prefix))
        }
    }
}

/// The answer to every request of a connection past the bound; it closes
/// the connection.
pub fn refusal(limit: usize) -> Response {
    let mut response = ApiError::ConcurrentRequestLimit {
        limit: limit as u64,
        what: "connections from this address",
        retry_after: RETRY_AFTER_SECS,
    }
    .into_response();
    response
        .headers_mut()
        .insert(header::CONNECTION, HeaderValue::from_static("close"));
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn an_ipv6_client_is_its_64_and_a_mapped_ipv4_is_the_ipv4() {
        assert_eq!(client_of(ip("203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(client_of(ip("::ffff:203.0.113.9")), ip("203.0.113.9"));
        assert_eq!(
            client_of(ip("2001:db8:1:2:aaaa:bbbb:cccc:dddd")),
            ip("2001:db8:1:2::")
        );
        assert_eq!(
            client_of(ip("2001:db8:1:2::1")),
            client_of(ip("2001:db8:1:2:ffff::9"))
        );
        assert_ne!(
            client_of(ip("2001:db8:1:2::1")),
            client_of(ip("2001:db8:1:3::1"))
        );
    }

    #[test]
    fn the_refusal_closes_the_connection_and_says_when_to_retry() {
        let r = refusal(256);
        assert_eq!(r.status(), 429);
        assert_eq!(r.headers()["connection"], "close");
        assert_eq!(r.headers()["retry-after"], "1");
    }
}
