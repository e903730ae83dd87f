//! Host side of a router: serving a [`LibraryRouter`] that a proxy got
//! from the library, each request pinning the version that answers it.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::axum::body::Body;
use ::axum::http::{Request, Response, StatusCode};
use ::axum::Router;

use crate::boundary::BoundaryFuture;
use crate::host::hold::HoldUntilEnd;
use crate::interface::{LibraryPin, ProxyContext, VersionPin};
use crate::library::router::LibraryRouter;
use crate::site::RequestLine;

impl LibraryRouter {
    /// Host side: an ordinary `axum::Router` that serves every request with
    /// this library router. Each request pins the version `context` belongs
    /// to until its response body is finished or dropped; once that version
    /// is gone, the router answers 503 (ask the handle for the current one,
    /// or serve through `verdant::axum::mount`, which does).
    ///
    /// The proxy that `#[verdant_loadable::interface]` generates calls this; you
    /// normally never do.
    ///
    /// ```
    /// fn serve(library: verdant_loadable::router::LibraryRouter, context: &verdant_loadable::ProxyContext) -> axum::Router {
    ///     library.into_router(context)
    /// }
    /// ```
    pub fn into_router(self, context: &ProxyContext) -> Router {
        let service = HostRouterService(Arc::new(Shared {
            library: self,
            context: context.clone(),
            _library_pin: context.keep_library_loaded(),
        }));
        Router::new().fallback_service(service)
    }
}

/// Serves requests with a library's router (see [`LibraryRouter::into_router`]).
///
/// One `Arc`, because axum clones the service for every request: a clone is
/// one reference count, not one per field.
#[derive(Clone)]
struct HostRouterService(Arc<Shared>);

/// What [`HostRouterService`] shares. Field order matters: the library
/// router (whose drop is library code) is dropped before the pin that
/// keeps the library loaded.
struct Shared {
    library: LibraryRouter,
    context: ProxyContext,
    _library_pin: LibraryPin,
}

impl tower::Service<Request<Body>> for HostRouterService {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = InFlight;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // A library router is always ready (axum routers are); readiness is
        // checked library-side, under the guard, inside `call`.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> InFlight {
        let shared = &*self.0;
        let Some(version) = shared.context.pin() else {
            return InFlight::Answered(Some(plain_response(
                StatusCode::SERVICE_UNAVAILABLE,
                format!(
                    "loadable `{}`: this router belongs to a version that was replaced; serve through \
                     verdant::axum::mount, which looks the current version up per request\n",
                    shared.context.loadable()
                ),
            )));
        };
        let line = RequestLine::of(&request);
        InFlight::Running {
            future: shared.library.service.call(request),
            version: Some(version),
            service: self.clone(),
            line,
        }
    }
}

/// The response future of [`HostRouterService`].
///
/// Field order matters: the library's future is dropped before the pin of
/// its version (which keeps its library loaded too).
enum InFlight {
    Running {
        future: BoundaryFuture<'static, Response<Body>>,
        version: Option<VersionPin>,
        /// For the loadable's name and the report of a panic.
        service: HostRouterService,
        /// What the request was, for the report of a panic.
        line: RequestLine,
    },
    Answered(Option<Response<Body>>),
}

impl Future for InFlight {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        // Every field is `Unpin`.
        let this = self.get_mut();
        let response = match this {
            InFlight::Answered(response) => response.take().unwrap_or_else(|| {
                plain_response(StatusCode::INTERNAL_SERVER_ERROR, "polled after completion\n".to_owned())
            }),
            InFlight::Running { future, version, service, line } => match future.as_mut().poll(cx) {
                Poll::Pending => return Poll::Pending,
                Poll::Ready(Ok(response)) => {
                    // The library's body (already guarded library-side) holds
                    // its version until it ends or is dropped.
                    response.map(|body| match version.take() {
                        Some(version) => HoldUntilEnd::wrap(body, version),
                        None => body,
                    })
                }
                Poll::Ready(Err(panic)) => {
                    // The one report of this panic; the 500 says no more.
                    let context = &service.0.context;
                    context.report_panic(&panic, &line.to_string());
                    internal_error(context.loadable())
                }
            },
        };
        Poll::Ready(Ok(response))
    }
}

/// A `text/plain` answer of the host's own (503 for a stale router, 500 for
/// a panic); the host crate's mount answers with it too.
pub fn plain_response(status: StatusCode, body: String) -> Response<Body> {
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        ::axum::http::header::CONTENT_TYPE,
        ::axum::http::HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

/// The answer to a panic: a plain 500 that names the loadable but not the
/// panic (the log has the message and the location).
pub fn internal_error(loadable: &str) -> Response<Body> {
    plain_response(StatusCode::INTERNAL_SERVER_ERROR, format!("internal server error in loadable `{loadable}`\n"))
}
