//! The admin API: status, reloads and metrics over HTTP, behind a bearer
//! token.
//!
//! Meant for a listener of its own, bound to loopback (or a private
//! network), never the service's public one: whoever holds the token can
//! make the service load the builds on its disk.

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use ::axum::extract::{Query, Request, State};
use ::axum::http::header::{AUTHORIZATION, CONTENT_TYPE, WWW_AUTHENTICATE};
use ::axum::http::{HeaderValue, StatusCode};
use ::axum::middleware::Next;
use ::axum::response::{IntoResponse, Response};
use ::axum::routing::{get, post};
use ::axum::{Json, Router};
use serde::{Deserialize, Serialize};
use subtle::ConstantTimeEq;

use crate::error::{Error, StepError};
use crate::filter::Select;
use crate::report::ReloadReport;
use crate::Verdant;

/// The admin API of `verdant`, as a router to serve on a listener of its
/// own, bound to loopback:
///
/// | request | answer |
/// |---|---|
/// | `GET /status` | 200, JSON: [`Verdant::status`], with the last reload's report in `last_reload` |
/// | `POST /reload` | runs a reload of every loadable (as `kill -PIPE` does) and answers its report as JSON |
/// | `POST /reload?filter=shop` | reloads those the filter selects: a name, a glob (`shop-*`) or a regex (`re:^shop`), as [`Filter::parse`](crate::Filter::parse) reads it |
/// | `GET /metrics` | 200, the Prometheus text format ([`Verdant::metrics_text`]) |
///
/// Every request needs the header `Authorization: Bearer <token>`: without
/// one it is answered 401 (with `WWW-Authenticate: Bearer`), with another
/// token 403. The token is compared in constant time and appears in no log,
/// error or `Debug` output.
///
/// `POST /reload` answers `{"success", "report", "failures"}`, or
/// `{"success": false, "error"}` when no transaction could run, with:
///
/// - **200**: every selected loadable was applied (swapped in, or
///   unchanged).
/// - **500**: the reload ran and at least one loadable failed: `failures`
///   lists each with its step and cause (`{"loadable", "step", "path",
///   "error", "cause"}`), and the report shows that the failed ones keep
///   what they had and the others were applied. (500, not 409: nothing the
///   caller sent conflicts with anything; the service could not load a
///   build it was told to.)
/// - **422**: the manifest does not validate; nothing was changed; `error`
///   has its `file`, `line` and `column` (under `manifest`).
/// - **404**: in [strict mode](crate::Builder::strict), the filter matches
///   no loadable (outside it: 200, an empty report and a `warning`).
/// - **400**: the filter does not parse.
/// - **503**: the registry was revoked.
///
/// ```no_run
/// # async fn serve(verdant: verdant::Verdant) -> Result<(), Box<dyn std::error::Error>> {
/// let token = verdant::axum::AdminToken::from_file("/etc/my-service/admin-token")?;
/// let admin = verdant::axum::admin(&verdant, token);
/// let listener = tokio::net::TcpListener::bind("127.0.0.1:9090").await?;
/// tokio::spawn(async move { axum::serve(listener, admin).await });
/// // curl -H "Authorization: Bearer $(cat /etc/my-service/admin-token)" -X POST 'http://127.0.0.1:9090/reload?filter=shop'
/// # Ok(()) }
/// ```
pub fn admin(verdant: &Verdant, token: AdminToken) -> Router {
    let admin = Arc::new(Admin { verdant: verdant.clone(), token });
    Router::new()
        .route("/status", get(status))
        .route("/reload", post(reload))
        .route("/metrics", get(metrics))
        .fallback(not_found)
        // On every route and the fallback: an unknown path is refused the
        // same way, and reveals nothing without the token.
        .layer(::axum::middleware::from_fn_with_state(admin.clone(), authorize))
        .with_state(admin)
}

/// The admin API's bearer token, read once at start-up.
///
/// Only its BLAKE3 digest is kept: requests are checked by comparing
/// digests in constant time (so neither the token's bytes nor its length
/// leak through timing), and no `Debug` output or error can show it.
///
/// ```
/// let token = verdant::axum::AdminToken::new("3f9a0c2b7d1e4f5a")?;
/// assert_eq!(format!("{token:?}"), "AdminToken(<redacted>)");
/// # Ok::<(), verdant::axum::AdminTokenError>(())
/// ```
#[derive(Clone)]
pub struct AdminToken {
    digest: [u8; 32],
}

impl AdminToken {
    /// Reads the token from the file at `path`: its content without leading
    /// and trailing whitespace (a final newline, say). Refused when the
    /// file cannot be read, is empty, or holds a character that cannot be
    /// sent in an `Authorization` header (a control character, a space
    /// inside, anything outside ASCII). A file that other users may read
    /// is accepted with a warning in the log.
    ///
    /// ```
    /// let dir = tempfile::tempdir()?;
    /// let path = dir.path().join("admin-token");
    /// std::fs::write(&path, "3f9a0c2b7d1e4f5a\n")?;
    /// let token = verdant::axum::AdminToken::from_file(&path)?;
    ///
    /// std::fs::write(&path, "\n")?;
    /// let empty = verdant::axum::AdminToken::from_file(&path).unwrap_err();
    /// assert!(empty.to_string().contains("is empty"));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn from_file(path: impl AsRef<Path>) -> Result<AdminToken, AdminTokenError> {
        let path = path.as_ref();
        let text = std::fs::read(path).map_err(|source| AdminTokenError::Read { path: path.to_owned(), source })?;
        warn_if_shared(path);
        check(&text, Some(path))
    }

    /// A token given directly (from a secret store, say), checked like
    /// [`from_file`](Self::from_file)'s content.
    ///
    /// ```
    /// assert!(verdant::axum::AdminToken::new("  ").is_err());
    /// assert!(verdant::axum::AdminToken::new("two words").is_err());
    /// ```
    pub fn new(token: &str) -> Result<AdminToken, AdminTokenError> {
        check(token.as_bytes(), None)
    }

    /// Whether `presented` is the token, in time that depends on neither.
    fn matches(&self, presented: &[u8]) -> bool {
        let presented = digest(presented);
        bool::from(self.digest.ct_eq(&presented))
    }
}

impl fmt::Debug for AdminToken {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("AdminToken(<redacted>)")
    }
}

fn digest(bytes: &[u8]) -> [u8; 32] {
    *blake3::hash(bytes).as_bytes()
}

/// Trims `raw` and checks it is a token that fits a header.
fn check(raw: &[u8], path: Option<&Path>) -> Result<AdminToken, AdminTokenError> {
    let token = raw.trim_ascii();
    if token.is_empty() {
        return Err(AdminTokenError::Empty { path: path.map(Path::to_owned) });
    }
    if let Some(position) = token.iter().position(|byte| !byte.is_ascii_graphic()) {
        return Err(AdminTokenError::Invalid { path: path.map(Path::to_owned), position });
    }
    Ok(AdminToken { digest: digest(token) })
}

/// Logs a warning when users other than the owner may read `path`.
fn warn_if_shared(path: &Path) {
    use std::os::unix::fs::PermissionsExt;
    if let Ok(metadata) = std::fs::metadata(path) {
        let mode = metadata.permissions().mode();
        if mode & 0o077 != 0 {
            tracing::warn!(
                path = %path.display(),
                mode = format!("{:o}", mode & 0o777),
                "the admin token file can be read by other users; `chmod 600` it"
            );
        }
    }
}

/// Why an [`AdminToken`] was refused. Never shows the token.
///
/// ```
/// let error = verdant::axum::AdminToken::from_file("/nonexistent/admin-token").unwrap_err();
/// assert!(error.to_string().starts_with("cannot read the admin token file /nonexistent/admin-token"));
/// ```
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum AdminTokenError {
    /// The file could not be read.
    #[error("cannot read the admin token file {}: {source}; create it with a long random token (e.g. `openssl rand -hex 32 > {0}`, then `chmod 600 {0}`), or fix the path", path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The I/O error.
        source: io::Error,
    },
    /// Nothing but whitespace.
    #[error("{} is empty (or only whitespace); put a long random token there (e.g. `openssl rand -hex 32`)", describe(.path.as_deref()))]
    Empty {
        /// The file, if the token came from one.
        path: Option<PathBuf>,
    },
    /// A character that cannot be sent in an `Authorization` header.
    #[error("{} has a control character, a space or a non-ASCII character at byte {position} (after trimming); a token must be visible ASCII, e.g. hex", describe(.path.as_deref()))]
    Invalid {
        /// The file, if the token came from one.
        path: Option<PathBuf>,
        /// Where the first such byte is, counted from 0 (never the byte).
        position: usize,
    },
}

fn describe(path: Option<&Path>) -> String {
    match path {
        Some(path) => format!("the admin token file {}", path.display()),
        None => "the admin token".to_owned(),
    }
}

struct Admin {
    verdant: Verdant,
    token: AdminToken,
}

/// Lets a request through only with the right bearer token.
async fn authorize(State(admin): State<Arc<Admin>>, request: Request, next: Next) -> Response {
    let presented = match request.headers().get(AUTHORIZATION) {
        None => return unauthorized("this admin API needs the header `Authorization: Bearer <token>`"),
        Some(value) => match bearer(value) {
            Some(token) => token,
            None => return unauthorized("the Authorization header must be `Bearer <token>`"),
        },
    };
    if !admin.token.matches(presented) {
        tracing::warn!(method = %request.method(), path = %request.uri().path(), "admin request refused: wrong token");
        return refusal(StatusCode::FORBIDDEN, "forbidden", "wrong admin token");
    }
    next.run(request).await
}

/// The token of an `Authorization: Bearer <token>` value.
fn bearer(value: &HeaderValue) -> Option<&[u8]> {
    let value = value.as_bytes();
    let scheme = value.get(..7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = value[7..].trim_ascii();
    (!token.is_empty()).then_some(token)
}

fn unauthorized(message: &str) -> Response {
    let mut response = refusal(StatusCode::UNAUTHORIZED, "unauthorized", message);
    response.headers_mut().insert(WWW_AUTHENTICATE, HeaderValue::from_static("Bearer realm=\"verdant-admin\""));
    response
}

/// An error answer: `{"error": "...", "message": "..."}`.
fn refusal(status: StatusCode, error: &'static str, message: &str) -> Response {
    #[derive(Serialize)]
    struct Refusal<'a> {
        error: &'static str,
        message: &'a str,
    }
    (status, Json(Refusal { error, message })).into_response()
}

/// `GET /status`.
async fn status(State(admin): State<Arc<Admin>>) -> Response {
    Json(admin.verdant.status()).into_response()
}

/// `GET /metrics`.
async fn metrics(State(admin): State<Arc<Admin>>) -> Response {
    ([(CONTENT_TYPE, crate::METRICS_CONTENT_TYPE)], admin.verdant.metrics_text()).into_response()
}

async fn not_found(request: Request) -> Response {
    let message = format!(
        "no admin route {} {}; try GET /status, POST /reload[?filter=NAME|GLOB|re:REGEX], GET /metrics",
        request.method(),
        request.uri().path()
    );
    refusal(StatusCode::NOT_FOUND, "not_found", &message)
}

#[derive(Deserialize)]
struct ReloadQuery {
    filter: Option<String>,
}

/// The answer of `POST /reload`.
#[derive(Serialize)]
struct Reloaded<'a> {
    success: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    report: Option<&'a ReloadReport>,
    #[serde(skip_serializing_if = "Option::is_none")]
    failures: Option<Vec<&'a StepError>>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<&'a Error>,
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

/// `POST /reload[?filter=..]`.
async fn reload(State(admin): State<Arc<Admin>>, Query(query): Query<ReloadQuery>) -> Response {
    let filter = query.filter.filter(|filter| !filter.is_empty());
    let select = filter.clone().map_or(Select::All, Select::Text);
    let error = match admin.verdant.reload(select).await {
        Ok(report) => return reported(&report, filter.as_deref()),
        Err(Error::Reload(failure)) => return reported(&failure.report, filter.as_deref()),
        Err(error) => error,
    };
    let status = match error {
        Error::Manifest(_) => StatusCode::UNPROCESSABLE_ENTITY,
        Error::NoMatch { .. } => StatusCode::NOT_FOUND,
        Error::InvalidFilter { .. } => StatusCode::BAD_REQUEST,
        Error::Revoked => StatusCode::SERVICE_UNAVAILABLE,
        _ => StatusCode::INTERNAL_SERVER_ERROR,
    };
    let answer = Reloaded { success: false, report: None, failures: None, error: Some(&error), warning: None };
    (status, Json(answer)).into_response()
}

/// The answer for a reload that ran: 200 if every loadable was applied,
/// else 500 with the failures.
fn reported(report: &ReloadReport, filter: Option<&str>) -> Response {
    let failures: Vec<&StepError> = report.failures().map(|(_, error)| error).collect();
    let success = report.is_success();
    let warning = match filter {
        Some(filter) if report.loadables.is_empty() => {
            Some(format!("the filter `{filter}` selects no loadable; nothing was reloaded"))
        }
        _ => None,
    };
    let status = if success { StatusCode::OK } else { StatusCode::INTERNAL_SERVER_ERROR };
    let answer = Reloaded { success, report: Some(report), failures: Some(failures), error: None, warning };
    (status, Json(answer)).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_token_is_trimmed_and_must_be_visible_ascii() {
        let token = AdminToken::new("  s3cret\n").expect("trimmed");
        assert!(token.matches(b"s3cret"));
        assert!(!token.matches(b"s3cret "));
        assert!(!token.matches(b"s3cre"));
        assert!(!token.matches(b""));
        assert!(matches!(AdminToken::new("\n\t "), Err(AdminTokenError::Empty { path: None })));
        assert!(matches!(AdminToken::new("a b"), Err(AdminTokenError::Invalid { position: 1, .. })));
        assert!(matches!(AdminToken::new("café"), Err(AdminTokenError::Invalid { position: 3, .. })));
    }

    #[test]
    fn errors_and_debug_never_show_the_token() {
        let token = AdminToken::new("hunter2-hunter2").expect("valid");
        assert!(!format!("{token:?}").contains("hunter2"));
        let invalid = AdminToken::new("hunter2 hunter2").expect_err("a space inside");
        assert!(!invalid.to_string().contains("hunter2"), "{invalid}");
        assert!(!format!("{invalid:?}").contains("hunter2"), "{invalid:?}");
    }

    #[test]
    fn only_the_bearer_scheme_is_read() {
        let value = |text: &'static str| HeaderValue::from_static(text);
        assert_eq!(bearer(&value("Bearer abc")), Some(&b"abc"[..]));
        assert_eq!(bearer(&value("bearer  abc ")), Some(&b"abc"[..]));
        assert_eq!(bearer(&value("Basic YWJj")), None);
        assert_eq!(bearer(&value("Bearer ")), None);
        assert_eq!(bearer(&value("Bearer")), None);
    }
}
