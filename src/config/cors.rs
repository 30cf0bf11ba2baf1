//! `CORS_ALLOWED_ORIGINS`: the origins whose pages may call the upload
//! routes from a browser.

use axum::http::HeaderValue;

use super::env::{ConfigError, Env};

/// Which origins get CORS headers on the upload routes.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub enum CorsOrigins {
    /// None (the default): no CORS header at all.
    #[default]
    None,
    /// Every origin (`*`), as the operator's explicit choice.
    Any,
    /// These origins, each as a browser sends it.
    List(Vec<HeaderValue>),
}

/// Reads `CORS_ALLOWED_ORIGINS`: comma-separated origins, or `*` alone.
pub(super) fn cors(env: &Env) -> Result<CorsOrigins, ConfigError> {
    const NAME: &str = "CORS_ALLOWED_ORIGINS";
    let list = env.list(NAME, |s| Ok(s.to_owned()))?;
    if list.iter().any(|s| s == "*") {
        return if list.len() == 1 {
            Ok(CorsOrigins::Any)
        } else {
            Err(ConfigError::invalid(
                NAME,
                "* allows every origin: give it alone",
            ))
        };
    }
    if list.is_empty() {
        return Ok(CorsOrigins::None);
    }
    list.iter()
        .map(|s| origin(s))
        .collect::<Result<_, _>>()
        .map(CorsOrigins::List)
        .map_err(|reason| ConfigError::invalid(NAME, reason))
}

/// One origin (`scheme://host[:port]`), as the browser sends it.
fn origin(s: &str) -> Result<HeaderValue, String> {
    let url = url::Url::parse(s).map_err(|e| format!("{s:?} is not an origin: {e}"))?;
    let bare = url.path() == "/" && url.query().is_none() && url.fragment().is_none();
    if !matches!(url.scheme(), "http" | "https") || url.host().is_none() || !bare {
        return Err(format!(
            "{s:?} is not an origin: write scheme://host[:port], nothing after"
        ));
    }
    HeaderValue::from_str(&url.origin().ascii_serialization()).map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn origins_are_scheme_host_and_port_only() {
        assert_eq!(
            origin("https://app.example").unwrap(),
            "https://app.example"
        );
        assert_eq!(
            origin("http://127.0.0.1:5173/").unwrap(),
            "http://127.0.0.1:5173"
        );
        assert_eq!(
            origin("HTTPS://App.Example:443").unwrap(),
            "https://app.example"
        );
        for bad in [
            "app.example",
            "ftp://app.example",
            "https://app.example/x",
            "https://a.example?q",
        ] {
            assert!(origin(bad).is_err(), "{bad}");
        }
    }
}
