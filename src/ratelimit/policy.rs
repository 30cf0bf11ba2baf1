//! What a request is counted against: the subject's key and its limit, and
//! the emission interval that limit means. The key formats live here alone.

/// One minute in nanoseconds: the window of the per-minute policies.
pub(super) const MINUTE_NANOS: i64 = 60_000_000_000;
/// One hour in nanoseconds: the window of the sign-up policy.
const HOUR_NANOS: i64 = 60 * MINUTE_NANOS;

/// What a request is counted against.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    /// Row key: `a:<account id>`, `ip:<IPv4 address>` or
    /// `ip:<IPv6 network>/64`, or `signup:` and the latter two.
    pub key: String,
    /// Requests per window (the burst too).
    pub limit: u32,
    /// The window `limit` is counted over, in nanoseconds.
    pub window_nanos: i64,
    /// `account`, `anonymous` or `signup`, for metrics.
    pub kind: &'static str,
}

impl Policy {
    /// The per-account policy of API-key requests.
    pub fn account(account_id: uuid::Uuid, limit: u32) -> Self {
        Self {
            key: format!("a:{account_id}"),
            limit,
            window_nanos: MINUTE_NANOS,
            kind: "account",
        }
    }

    /// [`Policy::account`]'s key in SQL, of the account id `id` (a uuid
    /// expression), for statements that find the subject themselves.
    pub fn account_key_sql(id: &str) -> String {
        format!("('a:' || {id})")
    }

    /// The per-IP policy of anonymous requests. An IPv6 client is keyed by
    /// its /64: one subscriber commonly holds a whole /64 and could rotate
    /// through its 2^64 addresses to get a fresh budget per request. IPv4
    /// (and IPv4-mapped IPv6) addresses stay whole.
    pub fn anonymous(ip: std::net::IpAddr, limit: u32) -> Self {
        Self {
            key: ip_subject(ip),
            limit,
            window_nanos: MINUTE_NANOS,
            kind: "anonymous",
        }
    }

    /// The per-IP policy of sign-ups, `limit` an hour, keyed as
    /// [`Policy::anonymous`] is (an IPv6 client by its /64), beside it: a
    /// sign-up counts against both.
    pub fn signup(ip: std::net::IpAddr, limit: u32) -> Self {
        Self {
            key: format!("signup:{}", ip_subject(ip)),
            limit,
            window_nanos: HOUR_NANOS,
            kind: "signup",
        }
    }

    /// The emission interval, in nanoseconds but a whole number of
    /// microseconds: the database's timestamps count microseconds, and an
    /// interval finer than that (60 s / 7 is 8.571428571 s) would be
    /// rounded on every step, so that a subject came up short of its burst
    /// by one request. Truncated to the microsecond, `L` intervals stay
    /// within the window. At least 1 µs: past a million requests a second
    /// the limit no longer binds.
    pub fn interval_nanos(&self) -> i64 {
        (self.window_nanos / 1_000 / i64::from(self.limit.max(1))).max(1) * 1_000
    }
}

/// `ip:` and the client's address, or its /64 for IPv6.
fn ip_subject(ip: std::net::IpAddr) -> String {
    match ip.to_canonical() {
        std::net::IpAddr::V4(v4) => format!("ip:{v4}"),
        std::net::IpAddr::V6(v6) => {
            let network = u128::from(v6) & !(u128::MAX >> 64);
            format!("ip:{}/64", std::net::Ipv6Addr::from(network))
        }
    }
}

/// [`Policy::interval_nanos`] in SQL, of the per-minute limit `rpm` (an
/// int8 expression).
pub fn interval_sql(rpm: &str) -> String {
    format!("(greatest(60000000 / greatest({rpm}, 1), 1) * 1000)")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ipv6_clients_are_keyed_by_their_64_and_ipv4_ones_whole() {
        let key = |ip: &str| Policy::anonymous(ip.parse().unwrap(), 60).key;
        assert_eq!(key("2001:db8:1:2:3:4:5:6"), "ip:2001:db8:1:2::/64");
        assert_eq!(key("2001:db8:1:2::ffff"), key("2001:db8:1:2:aaaa::1"));
        assert_ne!(key("2001:db8:1:2::1"), key("2001:db8:1:3::1"));
        assert_eq!(key("203.0.113.7"), "ip:203.0.113.7");
        assert_ne!(key("203.0.113.7"), key("203.0.113.8"));
        assert_eq!(key("::ffff:203.0.113.7"), "ip:203.0.113.7");
    }

    #[test]
    fn signups_are_keyed_apart_from_their_address_and_spread_over_the_hour() {
        let ip = "2001:db8:1:2:3:4:5:6".parse().unwrap();
        let p = Policy::signup(ip, 5);
        assert_eq!(p.key, "signup:ip:2001:db8:1:2::/64");
        assert_ne!(p.key, Policy::anonymous(ip, 5).key);
        // One sign-up every 12 minutes after a burst of five.
        assert_eq!(p.interval_nanos(), 720_000_000_000);
        assert_eq!(Policy::anonymous(ip, 5).interval_nanos(), 12_000_000_000);
    }
}
