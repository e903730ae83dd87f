//! Host side of a router: serving a [`LibraryRouter`] that a proxy got
//! from the library, each request pinning the version that answers it.

use std::cell::RefCell;
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
use crate::site::{MountPrefix, RequestLine};

impl LibraryRouter {
    /// Host side: an ordinary `axum::Router` that serves every request with
    /// this library router. Each request pins the version `context` belongs
    /// to until its response body is finished or dropped; once that version
    /// is gone, the router answers 503 (ask the handle for the current one,
    /// or serve through `verdant::axum::mount`, which does).
    ///
    /// The proxy that `#[verdant_loadable::interface]` generates calls
    /// [`LibraryRouter::into_routes`] instead; you normally never call
    /// either.
    ///
    /// ```
    /// fn serve(library: verdant_loadable::router::LibraryRouter, context: &verdant_loadable::ProxyContext) -> axum::Router {
    ///     library.into_router(context)
    /// }
    /// ```
    pub fn into_router(self, context: &ProxyContext) -> Router {
        self.into_routes(context).router()
    }

    /// Host side: this library router as [`LibraryRoutes`], the service
    /// itself together with the `axum::Router` that wraps it. The proxy
    /// hands out the router and [offers](LibraryRoutes::offer) the service
    /// to a [capture](capture_library_routes), so that a host that asked
    /// for it (`verdant::axum::Pipeline::library_routes`) calls the service
    /// without a second routing pass.
    ///
    /// ```
    /// fn serve(library: verdant_loadable::router::LibraryRouter, context: &verdant_loadable::ProxyContext) -> axum::Router {
    ///     let routes = library.into_routes(context);
    ///     routes.offer();
    ///     routes.router()
    /// }
    /// ```
    pub fn into_routes(self, context: &ProxyContext) -> LibraryRoutes {
        let service = HostRouterService {
            shared: Arc::new(Shared {
                library: self,
                context: context.clone(),
                _library_pin: context.keep_library_loaded(),
            }),
            prefix: None,
        };
        let router = Router::new().fallback_service(service.clone());
        LibraryRoutes { service, router }
    }
}

/// A library router on the host side: the service that calls the library
/// (each request pinning the version that answers it) and the ordinary
/// `axum::Router` around it that the interface's method returns.
///
/// A host that serves the router as it came from the library (no layers,
/// not nested) can call [`LibraryRoutes::call`] directly: no second
/// routing pass through `axum`, no boxed clone of the service and no boxed
/// future per request, and the mount prefix for panic reports stored once
/// ([`LibraryRoutes::mounted_at`]) instead of in every request's
/// extensions. `verdant::axum::Pipeline::library_routes` does that.
///
/// Cheap to clone (two reference counts).
///
/// ```
/// # async fn demo(routes: verdant_loadable::router::LibraryRoutes) {
/// let routes = routes.mounted_at("/shop".into());
/// let response = routes.call(axum::http::Request::get("/hello").body(axum::body::Body::empty()).unwrap()).await;
/// # let _ = response; }
/// ```
#[derive(Clone)]
pub struct LibraryRoutes {
    service: HostRouterService,
    router: Router,
}

impl LibraryRoutes {
    /// The `axum::Router` that serves every request with this library
    /// router (one `Arc` clone).
    ///
    /// ```
    /// # fn demo(routes: verdant_loadable::router::LibraryRoutes) {
    /// let app: axum::Router = axum::Router::new().nest_service("/shop", routes.router());
    /// # let _ = app; }
    /// ```
    pub fn router(&self) -> Router {
        self.router.clone()
    }

    /// The same routes, whose panic reports name the request under
    /// `prefix` (the mount the host stripped: `GET /shop/quote/boom`
    /// instead of `GET /quote/boom`). Stored once here, not per request.
    ///
    /// ```
    /// # fn demo(routes: verdant_loadable::router::LibraryRoutes) {
    /// let routes = routes.mounted_at("/shop".into());
    /// # let _ = routes; }
    /// ```
    pub fn mounted_at(&self, prefix: Arc<str>) -> LibraryRoutes {
        let service = HostRouterService { shared: self.service.shared.clone(), prefix: Some(prefix) };
        LibraryRoutes { router: Router::new().fallback_service(service.clone()), service }
    }

    /// Serves `request` with the library router directly (no `axum`
    /// routing in between): the library's router sees `request` as is.
    /// The request pins the version until its response body ends; a
    /// library panic is reported once and answered with a 500.
    ///
    /// ```
    /// # async fn demo(routes: verdant_loadable::router::LibraryRoutes) {
    /// let response = routes.call(axum::http::Request::get("/hello").body(axum::body::Body::empty()).unwrap()).await;
    /// # let _ = response; }
    /// ```
    pub fn call(&self, request: Request<Body>) -> RoutesFuture {
        RoutesFuture(self.service.serve(request))
    }

    /// Hands a clone of these routes to the [capture](capture_library_routes)
    /// running on this thread, if any (a thread-local check otherwise).
    /// The proxy calls it every time its router method returns.
    ///
    /// ```
    /// # fn demo(routes: verdant_loadable::router::LibraryRoutes) {
    /// routes.offer();
    /// # }
    /// ```
    pub fn offer(&self) {
        CAPTURE.with(|capture| {
            if let Some(captured) = capture.borrow_mut().as_mut() {
                captured.push(self.clone());
            }
        });
    }
}

impl std::fmt::Debug for LibraryRoutes {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LibraryRoutes")
            .field("loadable", &self.service.shared.context.loadable())
            .field("prefix", &self.service.prefix)
            .finish()
    }
}

thread_local! {
    /// The library routes offered while [`capture_library_routes`] runs on
    /// this thread; `None` when no capture runs.
    static CAPTURE: RefCell<Option<Vec<LibraryRoutes>>> = const { RefCell::new(None) };
}

/// Runs `build` and returns what it returned together with every
/// [`LibraryRoutes`] a proxy's router method [offered](LibraryRoutes::offer)
/// meanwhile on this thread, in order. Captures nest: an inner capture
/// keeps its own, and the outer one's resume after it.
///
/// A panic in `build` propagates; the capture ends anyway.
///
/// ```
/// let (value, offered) = verdant_loadable::router::capture_library_routes(|| 7);
/// assert_eq!(value, 7);
/// assert!(offered.is_empty());
/// ```
pub fn capture_library_routes<T>(build: impl FnOnce() -> T) -> (T, Vec<LibraryRoutes>) {
    /// Restores the enclosing capture, also when `build` unwinds.
    struct Restore(Option<Vec<LibraryRoutes>>);
    impl Drop for Restore {
        fn drop(&mut self) {
            let outer = self.0.take();
            CAPTURE.with(|capture| *capture.borrow_mut() = outer);
        }
    }
    let restore = Restore(CAPTURE.with(|capture| capture.borrow_mut().replace(Vec::new())));
    let value = build();
    let captured = CAPTURE.with(|capture| capture.borrow_mut().take()).unwrap_or_default();
    drop(restore);
    (value, captured)
}

/// The response future of [`LibraryRoutes::call`]: the library's guarded
/// future, then its response with a body that holds the version pin.
pub struct RoutesFuture(InFlight);

impl Future for RoutesFuture {
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        // `InFlight` is `Unpin` (every field is).
        match Pin::new(&mut self.get_mut().0).poll(cx) {
            Poll::Ready(Ok(response)) => Poll::Ready(response),
            Poll::Ready(Err(never)) => match never {},
            Poll::Pending => Poll::Pending,
        }
    }
}

impl std::fmt::Debug for RoutesFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("RoutesFuture")
    }
}

/// Serves requests with a library's router (see [`LibraryRouter::into_routes`]).
///
/// Clones are reference counts, because axum clones the service for every
/// request it routes to it.
#[derive(Clone)]
struct HostRouterService {
    shared: Arc<Shared>,
    /// The mount the host stripped before this service (for reports), when
    /// the host said so once ([`LibraryRoutes::mounted_at`]); otherwise a
    /// request may carry it in its extensions ([`MountPrefix`], as
    /// `verdant::axum::mount` puts it there).
    prefix: Option<Arc<str>>,
}

/// What [`HostRouterService`] shares. Field order matters: the library
/// router (whose drop is library code) is dropped before the pin that
/// keeps the library loaded.
struct Shared {
    library: LibraryRouter,
    context: ProxyContext,
    _library_pin: LibraryPin,
}

impl HostRouterService {
    fn serve(&self, request: Request<Body>) -> InFlight {
        let shared = &*self.shared;
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
        let prefix = match &self.prefix {
            Some(prefix) => Some(prefix.clone()),
            None => request.extensions().get::<MountPrefix>().map(|prefix| prefix.0.clone()),
        };
        let line = RequestLine::with_prefix(&request, prefix.clone());
        InFlight::Running {
            future: shared.library.service.call(request, prefix),
            version: Some(version),
            shared: self.shared.clone(),
            line,
        }
    }
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
        self.serve(request)
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
        shared: Arc<Shared>,
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
            InFlight::Running { future, version, shared, line } => match future.as_mut().poll(cx) {
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
                    let context = &shared.context;
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
