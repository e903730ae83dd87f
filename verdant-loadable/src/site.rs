//! Where a library panic happened, as its report names it (shared by host
//! and library): the request a router, middleware or body was serving.
//! Not an API: the host crate names these through `__private`.

use std::fmt;
use std::sync::Arc;

use ::axum::http::{Method, Request, Uri};

/// The path prefix the host stripped before a library router saw the
/// request (the mount of a pipeline route, `/shop`), kept in the request's
/// extensions so that a report names the path the client asked for
/// (`GET /shop/quote/boom`, not `GET /quote/boom`). Put there by the host;
/// read by both sides.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct MountPrefix(pub Arc<str>);

/// A request's method and path, kept per request for a report that may
/// never be made: cheap clones (the method, the `Uri`'s shared bytes, the
/// prefix's `Arc`), formatted only when a panic is reported.
#[doc(hidden)]
#[derive(Debug, Clone)]
pub struct RequestLine {
    method: Method,
    prefix: Option<Arc<str>>,
    uri: Uri,
}

impl RequestLine {
    /// The line of `request`, with the [`MountPrefix`] it carries.
    pub fn of<B>(request: &Request<B>) -> Self {
        RequestLine {
            method: request.method().clone(),
            prefix: request.extensions().get::<MountPrefix>().map(|prefix| prefix.0.clone()),
            uri: request.uri().clone(),
        }
    }

    /// The line of `request` under `prefix` (the mount the host stripped,
    /// known without looking at the request's extensions).
    pub fn with_prefix<B>(request: &Request<B>, prefix: Option<Arc<str>>) -> Self {
        RequestLine { method: request.method().clone(), prefix, uri: request.uri().clone() }
    }
}

impl fmt::Display for RequestLine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let prefix = self.prefix.as_deref().unwrap_or("");
        let path = self.uri.path();
        // A stripped request for the mount itself reads `/`: `/shop`, not `/shop/`.
        let path = if !prefix.is_empty() && path == "/" { "" } else { path };
        write!(f, "{} {prefix}{path}", self.method)
    }
}

/// Where a guarded body lives, for its reports: `response body of GET /x`.
#[derive(Debug, Clone)]
pub(crate) struct BodySite {
    what: &'static str,
    request: RequestLine,
}

impl BodySite {
    /// The response body of a request.
    pub(crate) fn response(request: RequestLine) -> Self {
        BodySite { what: "response body", request }
    }

    /// A request body a library middleware passes on.
    pub(crate) fn request(request: RequestLine) -> Self {
        BodySite { what: "request body", request }
    }

    /// The same site, one call deeper: `response body of GET /x (is_end_stream)`.
    pub(crate) fn during(&self, call: &'static str) -> impl fmt::Display + '_ {
        struct During<'a>(&'a BodySite, &'static str);
        impl fmt::Display for During<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                write!(f, "{} ({})", self.0, self.1)
            }
        }
        During(self, call)
    }
}

impl fmt::Display for BodySite {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} of {}", self.what, self.request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_line_names_the_path_the_client_asked_for() {
        let mut request = Request::get("/quote/boom?qty=2").body(()).unwrap();
        assert_eq!(RequestLine::of(&request).to_string(), "GET /quote/boom");
        request.extensions_mut().insert(MountPrefix(Arc::from("/shop")));
        assert_eq!(RequestLine::of(&request).to_string(), "GET /shop/quote/boom");
        let root = {
            let mut root = Request::post("/").body(()).unwrap();
            root.extensions_mut().insert(MountPrefix(Arc::from("/shop")));
            root
        };
        let line = RequestLine::of(&root);
        assert_eq!(line.to_string(), "POST /shop");
        let site = BodySite::response(line);
        assert_eq!(site.during("size_hint").to_string(), "response body of POST /shop (size_hint)");
    }
}
