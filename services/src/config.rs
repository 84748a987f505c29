//! Checked configuration values for the `stats-pipeline` CLI: each parser's error names what
//! is wrong (and never echoes a secret). Precedence is flags, then the environment, then a
//! `.env` file in the working directory (loaded without overriding the environment).

use crate::store::{Date, StoreUrl};

/// Exit codes of `stats-pipeline`.
pub mod exit {
    /// Everything done.
    pub const OK: i32 = 0;
    /// A failure of the pipeline itself (the store unreachable, a bug).
    pub const FAILURE: i32 = 1;
    /// Bad configuration (a flag, an environment variable, the `.env` file).
    pub const CONFIG: i32 = 2;
    /// The upstream refused the api key (401/403).
    pub const REFUSED: i32 = 3;
    /// Some users or rows failed; the date stays to be crunched again.
    pub const PARTIAL: i32 = 4;
    /// Stopped by SIGINT/SIGTERM before the work was complete.
    pub const INTERRUPTED: i32 = 5;
}

/// `BASE_URL`: an `http`/`https` URL with a host and no query; a trailing `/` is added.
pub fn base_url(s: &str) -> Result<String, String> {
    let u = url::Url::parse(s)
        .map_err(|e| format!("not a URL ({e}); expected e.g. http://127.0.0.1:8080/"))?;
    if u.scheme() != "http" && u.scheme() != "https" {
        return Err(format!(
            "the scheme is {:?}; expected http or https",
            u.scheme()
        ));
    }
    if u.host_str().is_none_or(|h| h.is_empty()) {
        return Err("no host".into());
    }
    if u.query().is_some() || u.fragment().is_some() {
        return Err("it must not have a query or fragment (the views are appended to it)".into());
    }
    if !u.username().is_empty() || u.password().is_some() {
        return Err("credentials in the URL are not supported; the api key goes in APIKEY".into());
    }
    let mut out = u.to_string();
    if !out.ends_with('/') {
        out.push('/');
    }
    Ok(out)
}

/// `DATABASE_URL`: `sqlite://PATH` or `mysql://USER:PASSWORD@HOST:PORT/DB` (the error never
/// shows the password).
pub fn database_url(s: &str) -> Result<String, String> {
    StoreUrl::parse(s).map(|_| s.to_string())
}

/// A date `YYYY-MM-DD`.
pub fn date(s: &str) -> Result<Date, String> {
    Date::parse(s)
}

/// A probability in `0..=1`.
pub fn rate(s: &str) -> Result<f64, String> {
    match s.trim().parse::<f64>() {
        Ok(v) if (0.0..=1.0).contains(&v) => Ok(v),
        _ => Err("expected a number from 0 to 1".into()),
    }
}

/// The api key: non-empty, printable ASCII without spaces (it travels in a header). The error
/// never shows it.
pub fn api_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the api key (--api-key or APIKEY) is empty".into());
    }
    if !s.bytes().all(|b| b.is_ascii_graphic()) {
        return Err(
            "the api key (--api-key or APIKEY) must be printable ASCII without spaces".into(),
        );
    }
    Ok(s.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_checked() {
        assert_eq!(
            base_url("http://127.0.0.1:8080").unwrap(),
            "http://127.0.0.1:8080/"
        );
        assert_eq!(
            base_url("https://api.example.com/v1/").unwrap(),
            "https://api.example.com/v1/"
        );
        for bad in [
            "127.0.0.1:8080",
            "ftp://x/",
            "http:///",
            "http://x/?a=1",
            "http://u:p@x/",
        ] {
            assert!(base_url(bad).is_err(), "{bad}");
        }
        assert!(base_url("http://u:hunter2@x/")
            .unwrap_err()
            .find("hunter2")
            .is_none());
        assert!(
            rate("0.5").is_ok()
                && rate("1").is_ok()
                && rate("1.5").is_err()
                && rate("x").is_err()
                && rate("-0.1").is_err()
        );
        assert!(api_key("abc").is_ok());
        let e = api_key("se cret").unwrap_err();
        assert!(!e.contains("se cret"));
        assert!(database_url("sqlite://./x.db").is_ok() && database_url("redis://x").is_err());
    }
}
