//! Library side of a router: the guarded service and body.
//!
//! Everything in this file runs in the library. The host reaches it only
//! through the vtable of [`RouterBoundary`] (made by [`LibraryRouter::new`],
//! which the generated boundary calls in the library) and through the
//! vtable of the response body (made by [`guard_response`], also in the
//! library). So every `catch` below is the library's own, which is the only
//! kind that can catch a library panic ([`docs::boundary`](crate::docs::boundary) §1).

use std::mem::ManuallyDrop;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::axum::body::Body;
use ::axum::http::{Request, Response};
use ::axum::Router;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::boundary::{call, guard_future, BoundaryFuture, Panic};
use crate::library::guard::{cleanup, report};
use crate::site::{BodySite, RequestLine};

/// A router made by library code, wrapped so that the host can serve it
/// without ever running an unguarded line of library code.
///
/// The library side makes it with [`LibraryRouter::new`] (the code that
/// `#[verdant_loadable::interface]` generates for a method returning
/// `axum::Router` does); the host side turns it into an ordinary
/// `axum::Router` with [`LibraryRouter::into_router`] (or into
/// [`LibraryRoutes`](crate::router::LibraryRoutes)). You normally never
/// touch it yourself.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use axum::routing::get;
/// let library = verdant_loadable::router::LibraryRouter::new(axum::Router::new().route("/hi", get(|| async { "hi" })));
/// # let _ = library;
/// # }
/// ```
pub struct LibraryRouter {
    pub(crate) service: Box<dyn RouterBoundary>,
}

/// The object-safe, panic-guarded face of a library's router.
pub(crate) trait RouterBoundary: Send + Sync {
    /// Serves one request, which the host took from under `prefix` (a
    /// mount, for the reports of a panic in the response body; passed here
    /// because the host knows it once per mount, where a request extension
    /// would cost an allocation per request). Creating the future, every
    /// poll of it and its drop run under the library's guard, inside the
    /// host's runtime; the response's body is a [`GuardedBody`].
    fn call(&self, request: Request<Body>, prefix: Option<Arc<str>>) -> BoundaryFuture<'static, Response<Body>>;
}

impl LibraryRouter {
    /// Wraps `router`. Call this in library code only: the guards are those
    /// of the copy of verdant that runs this function.
    ///
    /// ```
    /// let library = verdant_loadable::router::LibraryRouter::new(axum::Router::new());
    /// # let _ = library;
    /// ```
    pub fn new(router: Router) -> Self {
        LibraryRouter { service: Box::new(GuardedRouter { router: ManuallyDrop::new(router) }) }
    }
}

impl std::fmt::Debug for LibraryRouter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("LibraryRouter")
    }
}

/// The library's router behind [`RouterBoundary`].
struct GuardedRouter {
    router: ManuallyDrop<Router>,
}

impl RouterBoundary for GuardedRouter {
    fn call(&self, request: Request<Body>, prefix: Option<Arc<str>>) -> BoundaryFuture<'static, Response<Body>> {
        let router = &self.router;
        guard_future(move || {
            // A `Router` clone is an `Arc` clone; axum clones routers per
            // connection the same way.
            let router = Router::clone(router);
            let site = BodySite::response(RequestLine::with_prefix(&request, prefix));
            async move {
                let response = match tower::ServiceExt::oneshot(router, request).await {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                guard_response(response, site)
            }
        })
    }
}

impl Drop for GuardedRouter {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here.
        if let Err(panic) = cleanup(|| unsafe { ManuallyDrop::drop(&mut self.router) }) {
            report(&panic, &"dropping a library router");
        }
    }
}

/// Prepares a library response for the host: its body becomes a
/// [`GuardedBody`] (reporting as `site`), and its extensions are dropped
/// here, inside the library, because they are type-erased values whose code
/// (their `Drop`) is the library's.
pub(crate) fn guard_response(response: Response<Body>, site: BodySite) -> Response<Body> {
    let (mut parts, body) = response.into_parts();
    parts.extensions.clear();
    Response::from_parts(parts, Body::new(GuardedBody::new(body, site)))
}

/// A response body whose every `poll_frame`, `is_end_stream`, `size_hint`
/// and drop run under the library's guard, inside the host's runtime.
///
/// A panic in the middle of the body ends it with an error frame: the
/// status line and the frames before it were already sent, so hyper can
/// only abort the response (the client sees a truncated body or a reset
/// connection), and the service keeps running. The panic has nowhere to go
/// as a value (the error frame is all hyper sees, and hyper does not log
/// it), so it is reported here, once, through the host's reporter, naming
/// `site`.
pub(crate) struct GuardedBody {
    inner: ManuallyDrop<Body>,
    failed: bool,
    site: BodySite,
}

impl GuardedBody {
    /// Guards `body`, a body whose code may be the library's. Library side
    /// only: the guard is this copy's.
    pub(crate) fn new(body: Body, site: BodySite) -> Self {
        GuardedBody { inner: ManuallyDrop::new(body), failed: false, site }
    }
}

/// The error a [`GuardedBody`] ends with after a panic.
#[derive(Debug)]
struct BodyPanicked(Panic);

impl std::fmt::Display for BodyPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the library's response body {}", self.0)
    }
}

impl std::error::Error for BodyPanicked {}

impl HttpBody for GuardedBody {
    type Data = Bytes;
    type Error = ::axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ::axum::Error>>> {
        // `Body` is `Unpin`, and so is this type.
        let this = self.get_mut();
        if this.failed {
            return Poll::Ready(None);
        }
        let inner = &mut this.inner;
        match call(move || Pin::new(&mut **inner).poll_frame(cx)) {
            Ok(frame) => frame,
            Err(panic) => {
                this.failed = true;
                report(&panic, &this.site.during("mid-stream: the response is aborted"));
                Poll::Ready(Some(Err(::axum::Error::new(BodyPanicked(panic)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        self.failed
            || call(|| self.inner.is_end_stream()).unwrap_or_else(|panic| {
                report(&panic, &self.site.during("is_end_stream"));
                true
            })
    }

    fn size_hint(&self) -> SizeHint {
        if self.failed {
            return SizeHint::with_exact(0);
        }
        call(|| self.inner.size_hint()).unwrap_or_else(|panic| {
            report(&panic, &self.site.during("size_hint"));
            SizeHint::default()
        })
    }
}

impl Drop for GuardedBody {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here.
        if let Err(panic) = cleanup(|| unsafe { ManuallyDrop::drop(&mut self.inner) }) {
            report(&panic, &self.site.during("drop"));
        }
    }
}
