//! Library side of a middleware: the guarded middleware function, and the
//! library half of [`Next::run`].
//!
//! A middleware crosses the boundary twice: the host calls the library's
//! function, and that function calls `next`, which is host code (the rest
//! of the host's pipeline). So the guards go both ways:
//!
//! - into the library: the host reaches the middleware only through the
//!   vtable of [`MiddlewareBoundary`], made here by [`Middleware::new`] in
//!   the library; creating its future, every poll, its drop and its response
//!   body run under the library's guard (like a router's, `router.rs`);
//! - into the host: [`Next`] holds a vtable the *host* made
//!   (`host/middleware.rs`), which runs the rest of the pipeline under the
//!   host's own `catch_unwind`, so a host panic becomes a 500 before it
//!   could unwind into library frames (which would abort the process,
//!   [`docs::boundary`](crate::docs::boundary) §1).

use std::future::Future;
use std::mem::ManuallyDrop;
use std::pin::Pin;

use ::axum::body::Body;
use ::axum::http::{Request, Response};
use ::axum::response::IntoResponse;

use crate::boundary::{guard_future, BoundaryFuture};
use crate::library::guard::{cleanup, report};
use crate::library::router::{guard_response, GuardedBody};
use crate::site::{BodySite, RequestLine};

/// A middleware made by library code: an async function of the request and
/// the rest of the pipeline ([`Next`]), wrapped so that the host can run it
/// without ever running an unguarded line of library code.
///
/// An [`HttpExtension`](crate::http::HttpExtension) returns one from its
/// `middleware` method. The host runs the middlewares of all extensions in
/// the order its manifest lists them, before the routes.
///
/// ```
/// use axum::http::HeaderValue;
/// use verdant_loadable::http::{Middleware, Next};
///
/// // Stamps every answer with the header `x-served-by: stamp`.
/// let middleware = Middleware::new(|request, next: Next| async move {
///     let mut response = next.run(request).await;
///     response.headers_mut().insert("x-served-by", HeaderValue::from_static("stamp"));
///     response
/// });
/// # let _ = middleware;
/// ```
pub struct Middleware {
    pub(crate) service: Box<dyn MiddlewareBoundary>,
}

/// The object-safe, panic-guarded face of a library's middleware.
pub(crate) trait MiddlewareBoundary: Send + Sync {
    /// Runs the middleware for one request. Creating the future, every poll
    /// and its drop run under the library's guard, inside the host's
    /// runtime; the response's body is a [`GuardedBody`].
    fn call(&self, request: Request<Body>, next: Next) -> BoundaryFuture<'static, Response<Body>>;
}

impl Middleware {
    /// Wraps the middleware function `f`: it gets the request and the rest
    /// of the pipeline, and answers with anything that is an axum
    /// `IntoResponse` (a `Response`, a `(StatusCode, Json<_>)`, ...). It may
    /// answer without calling `next` (an auth check that refuses), change
    /// the request before it, or change the response after it.
    ///
    /// Call this in library code only: the guards are those of the copy of
    /// verdant-loadable that runs this function.
    ///
    /// ```
    /// use axum::http::StatusCode;
    /// use verdant_loadable::http::{Middleware, Next};
    ///
    /// // Refuses requests without an `x-api-key` header.
    /// let middleware = Middleware::new(|request: axum::extract::Request, next: Next| async move {
    ///     if request.headers().contains_key("x-api-key") {
    ///         next.run(request).await
    ///     } else {
    ///         axum::response::IntoResponse::into_response((StatusCode::UNAUTHORIZED, "an x-api-key header is required\n"))
    ///     }
    /// });
    /// # let _ = middleware;
    /// ```
    pub fn new<F, Fut, R>(f: F) -> Self
    where
        F: Fn(Request<Body>, Next) -> Fut + Send + Sync + 'static,
        Fut: Future<Output = R> + Send + 'static,
        R: IntoResponse,
    {
        Middleware { service: Box::new(GuardedMiddleware { f: ManuallyDrop::new(f) }) }
    }
}

impl std::fmt::Debug for Middleware {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Middleware")
    }
}

/// The library's middleware function behind [`MiddlewareBoundary`].
struct GuardedMiddleware<F> {
    f: ManuallyDrop<F>,
}

impl<F, Fut, R> MiddlewareBoundary for GuardedMiddleware<F>
where
    F: Fn(Request<Body>, Next) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = R> + Send + 'static,
    R: IntoResponse,
{
    fn call(&self, request: Request<Body>, next: Next) -> BoundaryFuture<'static, Response<Body>> {
        let f = &*self.f;
        guard_future(move || {
            let site = BodySite::response(RequestLine::of(&request));
            let future = f(request, next);
            async move { guard_response(future.await.into_response(), site) }
        })
    }
}

impl<F> Drop for GuardedMiddleware<F> {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here.
        if let Err(panic) = cleanup(|| unsafe { ManuallyDrop::drop(&mut self.f) }) {
            report(&panic, &"dropping a library middleware");
        }
    }
}

/// The rest of the host's pipeline, as a middleware sees it: the
/// middlewares after this one, then the routes, then the host's fallback
/// (a 404 by default).
///
/// [`run`](Next::run) it at most once. It never panics into the library: a
/// panic in the host's part of the pipeline arrives as a 500 response.
///
/// ```
/// use verdant_loadable::http::Next;
///
/// async fn time_it(request: axum::extract::Request, next: Next) -> axum::response::Response {
///     let started = std::time::Instant::now();
///     let response = next.run(request).await;
///     tracing::info!(elapsed = ?started.elapsed(), status = %response.status(), "served");
///     response
/// }
/// ```
pub struct Next {
    pub(crate) inner: Box<dyn NextBoundary>,
}

/// The object-safe face of the host's part of the pipeline. Implemented
/// host-side only (`host/middleware.rs`), so its vtable leads into host
/// code that guards itself.
pub(crate) trait NextBoundary: Send {
    /// Runs the rest of the pipeline. Never panics and never returns a
    /// future that panics: host panics become a 500 response.
    fn run(self: Box<Self>, request: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>>;
}

impl Next {
    /// Passes `request` on to the rest of the pipeline and returns its
    /// response.
    ///
    /// The request's extensions are dropped here, in the library, because
    /// values this library put there have code of the library's (the host
    /// keeps its own extensions aside and puts them back before the
    /// request goes on). Its body is guarded, in case the library replaced
    /// it.
    ///
    /// ```
    /// # async fn f(request: axum::extract::Request, next: verdant_loadable::http::Next) {
    /// let response = next.run(request).await;
    /// # let _ = response; }
    /// ```
    pub async fn run(self, request: Request<Body>) -> Response<Body> {
        let site = BodySite::request(RequestLine::of(&request));
        let (mut parts, body) = request.into_parts();
        parts.extensions.clear();
        let request = Request::from_parts(parts, Body::new(GuardedBody::new(body, site)));
        self.inner.run(request).await
    }
}

impl std::fmt::Debug for Next {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Next")
    }
}
