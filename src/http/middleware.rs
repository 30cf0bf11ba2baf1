//! The middleware that decides who a request is from and counts it against
//! its rate limit, before routing, so every route and every status (the 404
//! fallback included) carries the rate-limit headers.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use axum::{
    extract::{ConnectInfo, Request, State},
    middleware::Next,
    response::{IntoResponse, Response},
};
use ipnet::IpNet;

use super::in_flight;
use crate::{
    auth::{self, Principal},
    dashboard,
    error::ApiError,
    ratelimit::Policy,
    state::AppState,
};

/// Routes that count against no limit and need no credentials.
const EXEMPT: [&str; 3] = ["/healthz", "/readyz", "/metrics"];

/// Routes that are always anonymous for rate limiting, whatever credentials
/// they carry, so that a session cannot lift the per-IP guessing limit.
const ALWAYS_ANONYMOUS: [&str; 2] = ["/auth/signup", "/auth/login"];

/// Where a limiter that cannot decide refuses whatever
/// `RATE_LIMIT_FAIL_OPEN` says: letting sign-ups and password guesses
/// through unlimited is what an outage of the limiter must not allow.
const FAILS_CLOSED: &str = "/auth/";

/// The client's address: the socket peer, or behind trusted proxies the
/// rightmost `X-Forwarded-For` entry that is not itself a trusted proxy.
pub fn client_ip(peer: Option<IpAddr>, headers: &http::HeaderMap, trusted: &[IpNet]) -> IpAddr {
    let peer = peer.unwrap_or(IpAddr::V4(Ipv4Addr::LOCALHOST));
    let is_trusted = |ip: &IpAddr| trusted.iter().any(|net| net.contains(ip));
    if !is_trusted(&peer) {
        return peer;
    }
    let hops: Vec<&str> = headers
        .get_all("x-forwarded-for")
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(str::trim)
        .collect();
    let mut client = peer;
    for hop in hops.iter().rev() {
        match hop.parse::<IpAddr>() {
            Ok(ip) => {
                client = ip;
                if !is_trusted(&ip) {
                    break;
                }
            }
            // A garbled entry: nothing left of it can be believed.
            Err(_) => break,
        }
    }
    client
}

/// Resolves the [`Principal`], applies the rate limit and writes its headers.
pub async fn authenticate_and_limit(
    State(state): State<AppState>,
    mut req: Request,
    next: Next,
) -> Response {
    let path = req.uri().path().to_owned();
    // The dashboard's page and assets are static and public: a page load
    // fetches several, which must not spend a visitor's anonymous budget.
    if EXEMPT.contains(&path.as_str()) || dashboard::is_static_path(&path) {
        return next.run(req).await;
    }
    let peer = req
        .extensions()
        .get::<ConnectInfo<SocketAddr>>()
        .map(|c| c.0.ip());
    let ip = client_ip(peer, req.headers(), &state.config.trusted_proxies);
    let is_admin = path == "/admin" || path.starts_with("/admin/");
    let always_anonymous = ALWAYS_ANONYMOUS.contains(&path.as_str());
    let counts_as_account = state.config.rate_limit_enabled && !always_anonymous;
    // An API key is authenticated and, on the account's limit, counted by
    // one batched statement; anything else, or a failure of that statement,
    // takes the separate lookup and limiter check, and a key whose account's
    // limit the statement was not given is counted alone below.
    let keyed = match auth::presented_key(req.headers()).filter(|_| !is_admin) {
        Some(key) => match auth::resolve_key(&state, key, ip, counts_as_account).await {
            Ok(keyed) => keyed,
            Err(e) => return e.into_response(),
        },
        None => None,
    };
    let (principal, decided) = match keyed {
        Some(keyed) => keyed,
        None => match auth::resolve(&state, req.headers(), is_admin, ip).await {
            Ok(p) => (p, None),
            Err(e) => return e.into_response(),
        },
    };
    let anonymous = || Policy::anonymous(ip, state.config.anon_rate_limit_per_minute);
    let policy = if !state.config.rate_limit_enabled || decided.is_some() {
        None
    } else if always_anonymous {
        Some(anonymous())
    } else {
        match &principal {
            // An upload token's requests are its account's.
            Principal::ApiKey { account, .. } | Principal::UploadToken { account, .. } => Some(
                Policy::account(account.id, account.limits().requests_per_minute),
            ),
            Principal::Session { .. } | Principal::Admin => None,
            Principal::Anonymous { .. } => Some(anonymous()),
        }
    };
    let outcome = match (decided, policy) {
        (Some(d), _) => Some(("account", Ok(d))),
        (None, Some(policy)) => Some((policy.kind, state.limiter.check(policy).await)),
        (None, None) => None,
    };
    let decision = match outcome {
        None => None,
        Some((kind, Ok(d))) => {
            let result = if d.allowed { "allowed" } else { "refused" };
            metrics::counter!("intake_ratelimit_decisions_total", "policy" => kind, "result" => result)
                .increment(1);
            Some(d)
        }
        Some((kind, Err(e))) => {
            metrics::counter!("intake_ratelimit_store_errors_total", "policy" => kind).increment(1);
            if state.config.rate_limit_fail_open && !path.starts_with(FAILS_CLOSED) {
                tracing::error!(error = %e, "rate limiter store failed; letting the request through");
                None
            } else {
                return ApiError::from(e).into_response();
            }
        }
    };
    if let Some(d) = &decision
        && let Some(refusal) = d.refusal("requests per minute")
    {
        let mut response = refusal.into_response();
        d.apply(response.headers_mut());
        return response;
    }
    // Past the per-minute limit, the account's requests running at once
    // (uploads aside: their slots bound them).
    let in_flight = match &principal {
        Principal::ApiKey { account, .. }
        | Principal::Session { account, .. }
        | Principal::UploadToken { account, .. }
            if !in_flight::is_upload(req.method(), &path) =>
        {
            let limit = state.config.max_requests_in_flight_per_account;
            match in_flight::admit(&state.requests_in_flight, account.id, limit) {
                Some(held) => Some(held),
                None => {
                    let has_body = !http_body::Body::is_end_stream(req.body());
                    let mut refused = in_flight::refusal(limit, has_body);
                    if let Some(d) = &decision {
                        d.apply(refused.headers_mut());
                    }
                    return refused;
                }
            }
        }
        _ => None,
    };
    req.extensions_mut().insert(principal);
    req.extensions_mut().insert(auth::ClientIp(ip));
    let mut response = next.run(req).await;
    if let Some(d) = &decision {
        d.apply(response.headers_mut());
    }
    match in_flight {
        Some(held) => in_flight::hold_until_sent(response, held),
        None => response,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn xff(v: &str) -> http::HeaderMap {
        let mut h = http::HeaderMap::new();
        h.insert("x-forwarded-for", v.parse().unwrap());
        h
    }

    #[test]
    fn forwarded_for_is_ignored_from_untrusted_peers() {
        let peer: IpAddr = "203.0.113.9".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        assert_eq!(client_ip(Some(peer), &xff("1.2.3.4"), &trusted), peer);
    }

    #[test]
    fn the_rightmost_untrusted_hop_is_the_client() {
        let proxy: IpAddr = "10.0.0.2".parse().unwrap();
        let trusted: Vec<IpNet> = vec!["10.0.0.0/8".parse().unwrap()];
        // The client forged the first entry; the proxy appended the real one.
        let h = xff("6.6.6.6, 198.51.100.7, 10.0.0.1");
        assert_eq!(
            client_ip(Some(proxy), &h, &trusted),
            "198.51.100.7".parse::<IpAddr>().unwrap()
        );
        assert_eq!(
            client_ip(Some(proxy), &http::HeaderMap::new(), &trusted),
            proxy
        );
    }
}
