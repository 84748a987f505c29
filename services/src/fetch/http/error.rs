//! The HTTP client's error: what failed, and where (the URL with its secrets removed).

use std::fmt;
use std::io;
use std::time::Duration;

/// What kind of failure an [`Error`] is.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum ErrorKind {
    /// The URL could not be parsed or is not `http`/`https`. The caller's fault.
    InvalidUrl,
    /// A header name or value, or another request setting, is invalid. The caller's fault.
    InvalidRequest,
    /// The host name did not resolve.
    Resolve,
    /// No connection could be made (refused, unreachable), after the retries.
    Connect,
    /// A timeout passed: connecting, waiting for data, waiting for a pooled connection, or
    /// the request's total time.
    Timeout,
    /// The TLS handshake failed (certificate not trusted, wrong name, protocol error).
    Tls,
    /// The connection failed while the request was sent or the response read.
    Io,
    /// The server's response is not valid HTTP/1.x.
    Malformed,
    /// The response is larger than the client's limit.
    TooLarge,
    /// More redirects than the limit, or a redirect loop.
    Redirect,
    /// The server answered with an error status (see [`Error::status`]).
    Status,
    /// The body is not the JSON that was expected.
    Json,
}

/// An HTTP client error. Its message names the URL (without password or secret-looking
/// query parameters; headers, where the api key travels, never appear), what failed, and for
/// a bad status or bad JSON the status and the start of the body.
#[derive(Debug)]
pub struct Error {
    kind: ErrorKind,
    url: String,
    message: String,
    status: Option<u16>,
    source: Option<io::Error>,
}

impl Error {
    pub(crate) fn new(kind: ErrorKind, url: &str, message: impl Into<String>) -> Error {
        Error {
            kind,
            url: url.to_string(),
            message: message.into(),
            status: None,
            source: None,
        }
    }

    pub(crate) fn io(kind: ErrorKind, url: &str, what: &str, e: io::Error) -> Error {
        Error {
            kind,
            url: url.to_string(),
            message: format!("{what}: {e}"),
            status: None,
            source: Some(e),
        }
    }

    pub(crate) fn with_status(mut self, status: u16) -> Error {
        self.status = Some(status);
        self
    }

    pub(crate) fn timeout(url: &str, what: &str, after: Duration) -> Error {
        Error::new(
            ErrorKind::Timeout,
            url,
            format!("{what} timed out after {after:?}"),
        )
    }

    /// What kind of failure this is.
    pub fn kind(&self) -> ErrorKind {
        self.kind
    }

    /// The URL of the request (the last one, after redirects), secrets removed.
    pub fn url(&self) -> &str {
        &self.url
    }

    /// The response status, for [`ErrorKind::Status`] and [`ErrorKind::Json`].
    pub fn status(&self) -> Option<u16> {
        self.status
    }

    /// Whether this is a timeout.
    pub fn is_timeout(&self) -> bool {
        self.kind == ErrorKind::Timeout
    }

    /// Whether a connection could not be made.
    pub fn is_connect(&self) -> bool {
        self.kind == ErrorKind::Connect
    }

    pub(crate) fn retry_count_note(mut self, attempts: u32) -> Error {
        if attempts > 1 {
            self.message = format!("{} (after {attempts} attempts)", self.message);
        }
        self
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.url, self.message)
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        self.source
            .as_ref()
            .map(|e| e as &(dyn std::error::Error + 'static))
    }
}

/// Query parameter names whose values are never shown.
fn is_secret_name(name: &str) -> bool {
    let n = name.to_ascii_lowercase();
    [
        "key",
        "token",
        "secret",
        "pass",
        "auth",
        "sig",
        "credential",
    ]
    .iter()
    .any(|s| n.contains(s))
}

/// The URL as it may appear in errors and logs: no password, secret-looking query values
/// replaced by `REDACTED`, no fragment.
pub fn redact(url: &url::Url) -> String {
    let mut u = url.clone();
    if u.password().is_some() {
        let _ = u.set_password(Some("REDACTED"));
    }
    u.set_fragment(None);
    if u.query().is_some() {
        let pairs: Vec<(String, String)> = u
            .query_pairs()
            .map(|(k, v)| {
                let v = if is_secret_name(&k) {
                    "REDACTED".to_string()
                } else {
                    v.into_owned()
                };
                (k.into_owned(), v)
            })
            .collect();
        if pairs.iter().any(|(k, _)| is_secret_name(k)) {
            u.query_pairs_mut().clear().extend_pairs(pairs);
        }
    }
    u.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_removes_password_and_secret_query_values() {
        let u = url::Url::parse("https://bob:hunter2@api.test/v1?username=al&apikey=SEKRET#frag")
            .unwrap();
        let r = redact(&u);
        assert!(
            !r.contains("hunter2") && !r.contains("SEKRET") && !r.contains("frag"),
            "{r}"
        );
        assert!(
            r.contains("username=al") && r.contains("api.test/v1"),
            "{r}"
        );
        let plain = url::Url::parse("http://h/p?a=1&b=2").unwrap();
        assert_eq!(redact(&plain), "http://h/p?a=1&b=2");
    }
}
