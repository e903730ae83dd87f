//! Host side of a middleware: running a library's [`Middleware`], and the
//! host's half of [`Next`], which guards the rest of the pipeline with the
//! host's own `catch_unwind`.
//!
//! Everything here is compiled into the host (the host binary links this
//! crate too), so `catch_unwind` below is the host's: it catches host
//! panics. A library panic never reaches it: library code runs only behind
//! the library's own guards (`library/middleware.rs`).

use std::any::Any;
use std::future::Future;
use std::mem::ManuallyDrop;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::task::{Context, Poll};

use ::axum::body::Body;
use ::axum::http::{Request, Response, StatusCode};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

use crate::boundary::BoundaryFuture;
use crate::host::router::plain_response;
use crate::library::middleware::{Middleware, Next, NextBoundary};

impl Middleware {
    /// Host side: runs the middleware for one request, with `next` as the
    /// rest of the pipeline. The future and the response body it yields run
    /// library code under the library's guard; a library panic arrives as
    /// `Err(Panic)`.
    ///
    /// The host must keep the version that made this middleware pinned until
    /// the future and the response body are gone (`verdant::axum::pipeline`
    /// does).
    ///
    /// ```
    /// # async fn f(middleware: &verdant_loadable::http::Middleware, request: axum::extract::Request) {
    /// use verdant_loadable::http::Next;
    /// let next = Next::from_host(|_request| async { axum::response::IntoResponse::into_response("from the host") });
    /// let response = middleware.serve(request, next).await;
    /// # let _ = response; }
    /// ```
    pub fn serve(&self, request: Request<Body>, next: Next) -> BoundaryFuture<'static, Response<Body>> {
        self.service.call(request, next)
    }
}

impl Next {
    /// Host side: a `next` that runs `rest` (host code) for the request the
    /// middleware passes on.
    ///
    /// `rest`, its future and the body of its response run under the
    /// host's `catch_unwind`: a host panic is logged and answered with a
    /// plain 500 (mid-body: the body ends with an error), so it never
    /// unwinds into the library frames that called it.
    ///
    /// ```
    /// use verdant_loadable::http::Next;
    /// let next = Next::from_host(|request: axum::extract::Request| async move {
    ///     axum::response::IntoResponse::into_response(format!("host saw {}", request.uri()))
    /// });
    /// # let _ = next;
    /// ```
    pub fn from_host<F, Fut>(rest: F) -> Next
    where
        F: FnOnce(Request<Body>) -> Fut + Send + 'static,
        Fut: Future<Output = Response<Body>> + Send + 'static,
    {
        Next { inner: Box::new(HostNext { rest }) }
    }
}

struct HostNext<F> {
    rest: F,
}

impl<F, Fut> NextBoundary for HostNext<F>
where
    F: FnOnce(Request<Body>) -> Fut + Send + 'static,
    Fut: Future<Output = Response<Body>> + Send + 'static,
{
    fn run(self: Box<Self>, request: Request<Body>) -> Pin<Box<dyn Future<Output = Response<Body>> + Send>> {
        let rest = self.rest;
        match catch_unwind(AssertUnwindSafe(move || rest(request))) {
            Ok(future) => Box::pin(HostGuarded { future: Some(Box::pin(future)) }),
            Err(payload) => {
                let response = host_panicked(&*payload, "starting the rest of the pipeline");
                Box::pin(std::future::ready(response))
            }
        }
    }
}

/// A host future polled by library code: every poll and its drop run under
/// the host's `catch_unwind`, and its response body is a
/// [`HostGuardedBody`].
struct HostGuarded<Fut> {
    future: Option<Pin<Box<Fut>>>,
}

impl<Fut: Future<Output = Response<Body>>> Future for HostGuarded<Fut> {
    type Output = Response<Body>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        // `HostGuarded` is `Unpin`: the inner future is boxed.
        let Some(future) = self.future.as_mut() else {
            return Poll::Ready(plain_response(
                StatusCode::INTERNAL_SERVER_ERROR,
                "the rest of the pipeline was polled after it completed\n".to_owned(),
            ));
        };
        match catch_unwind(AssertUnwindSafe(|| future.as_mut().poll(cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(response)) => {
                self.drop_future();
                Poll::Ready(response.map(|body| Body::new(HostGuardedBody { inner: ManuallyDrop::new(body) })))
            }
            Err(payload) => {
                self.drop_future();
                Poll::Ready(host_panicked(&*payload, "the rest of the pipeline"))
            }
        }
    }
}

impl<Fut> HostGuarded<Fut> {
    fn drop_future(&mut self) {
        let future = self.future.take();
        if let Err(payload) = catch_unwind(AssertUnwindSafe(move || drop(future))) {
            tracing::error!(panic = %panic_text(&*payload), "dropping the rest of the pipeline panicked; contained");
        }
    }
}

impl<Fut> Drop for HostGuarded<Fut> {
    fn drop(&mut self) {
        self.drop_future();
    }
}

/// A host response body read by library code: every call into it runs
/// under the host's `catch_unwind`; a panic ends the body with an error.
struct HostGuardedBody {
    inner: ManuallyDrop<Body>,
}

/// The error a [`HostGuardedBody`] ends with after a host panic.
#[derive(Debug)]
struct HostBodyPanicked(String);

impl std::fmt::Display for HostBodyPanicked {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "the host's response body panicked: {}", self.0)
    }
}

impl std::error::Error for HostBodyPanicked {}

impl HttpBody for HostGuardedBody {
    type Data = Bytes;
    type Error = ::axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ::axum::Error>>> {
        // `Body` is `Unpin`, and so is this type.
        let inner = &mut *self.get_mut().inner;
        match catch_unwind(AssertUnwindSafe(|| Pin::new(inner).poll_frame(cx))) {
            Ok(frame) => frame,
            Err(payload) => {
                let text = panic_text(&*payload);
                tracing::error!(panic = %text, "a host response body panicked under a library middleware; the response is aborted");
                Poll::Ready(Some(Err(::axum::Error::new(HostBodyPanicked(text)))))
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        catch_unwind(AssertUnwindSafe(|| self.inner.is_end_stream())).unwrap_or(true)
    }

    fn size_hint(&self) -> SizeHint {
        catch_unwind(AssertUnwindSafe(|| self.inner.size_hint())).unwrap_or_default()
    }
}

impl Drop for HostGuardedBody {
    fn drop(&mut self) {
        // SAFETY: dropped exactly once, here.
        let inner = &mut self.inner;
        if let Err(payload) = catch_unwind(AssertUnwindSafe(|| unsafe { ManuallyDrop::drop(inner) })) {
            tracing::error!(panic = %panic_text(&*payload), "dropping a host response body panicked; contained");
        }
    }
}

/// Logs a host panic caught under a library middleware and answers 500.
fn host_panicked(payload: &(dyn Any + Send), what: &str) -> Response<Body> {
    tracing::error!(panic = %panic_text(payload), "{what} panicked in the host under a library middleware; answered 500");
    plain_response(StatusCode::INTERNAL_SERVER_ERROR, "internal server error\n".to_owned())
}

/// The text of a host panic payload (a re-raised library panic's message
/// included).
pub fn panic_text(payload: &(dyn Any + Send)) -> String {
    if let Some(library) = payload.downcast_ref::<crate::boundary::LibraryPanic>() {
        library.0.to_string()
    } else if let Some(text) = payload.downcast_ref::<&'static str>() {
        (*text).to_owned()
    } else if let Some(text) = payload.downcast_ref::<String>() {
        text.clone()
    } else {
        "<non-string panic payload>".to_owned()
    }
}
