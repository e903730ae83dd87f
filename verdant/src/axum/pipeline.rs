//! The HTTP pipeline: every extension's middleware in manifest order, then
//! the routes of the loadable whose mount matches, then the host's fallback.
//!
//! # How a request runs
//!
//! The pipeline keeps one [`Snapshot`] of what serves: for each loadable in
//! registry (manifest) order, its middleware and its router, made once per
//! loaded version, together with a pin of that version. A request loads the
//! current snapshot (one `Arc` clone) and runs on it to the end: the
//! middlewares one after another (each gets a [`Next`] that runs the rest),
//! then the route whose mount matches its path, else the fallback. The
//! response body holds the snapshot until it ends, so every version the
//! request went through stays attached until its last byte is sent.
//!
//! # When it changes
//!
//! The registry tells the pipeline after every transaction, revocation and
//! manifest change, before the call that made the change returns; the
//! pipeline then builds a new snapshot and stores it with one atomic swap.
//! New requests see the new one; requests in flight finish on theirs. A
//! replaced snapshot is dropped when its last request ends, which unpins
//! the versions only it held, so they detach.
//!
//! Invariant: a snapshot holds a version pinned for as long as the snapshot
//! is current or a request still uses it; after a change, the registry's
//! call returns only once the snapshot without the old version is current.
//!
//! # A library router without a second routing pass
//!
//! An interface's router method hands the host an ordinary `axum::Router`
//! (the proxy wraps the library's router in one). Served as a router
//! ([`Pipeline::routes`]), a request is routed twice: by mount here, then
//! by axum inside that router, whose only route is a `fallback_service`
//! (a boxed clone of the service and a boxed future per request), and the
//! mount prefix for panic reports has to travel in the request's
//! extensions (one more allocation). [`Pipeline::library_routes`] (and the
//! routes of every HTTP extension) calls the library router's host service
//! ([`LibraryRoutes`]) directly instead, with the mount stored in it once
//! per version.
//!
//! How the pipeline gets that service without a second API on the
//! interface: the proxy's router method builds the router together with
//! its service and, each time it returns, *offers* the service to a
//! thread-local capture ([`capture_library_routes`]); the pipeline runs
//! the host's closure under a capture once per version and serves what was
//! offered. This was chosen over a hidden method that the macro would add
//! to every interface with router methods because it keeps an embedder's
//! code as it is (the same closure, `|shop| shop.router()`, works with
//! `routes` and `library_routes`), adds nothing to the interface trait or
//! the proxy's public surface, and names the method through the ordinary
//! call, never by a string. The cost is that `axum::Router` has no identity:
//! a closure that wraps the library's router in a layer cannot be told from
//! one that returns it unchanged. So the direct path is opt-in, through an
//! API whose contract says "returned unchanged", and refuses (503 with the
//! reason, and an error in the log) what it can detect: no router method
//! called, or several. `routes` stays the general path.
//!
//! A snapshot's pins serve the version; they are not requests
//! ([`ServingPin`]), so a retired version's `in_flight` in `status()`
//! counts the requests in its routes (each pinned by the library router
//! until its body ends), not the snapshots that still hold it.

use std::any::Any;
use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};

use ::axum::body::Body;
use ::axum::http::uri::PathAndQuery;
use ::axum::http::{Request, Response, StatusCode, Uri};
use ::axum::Router;
use arc_swap::ArcSwap;
use bytes::Bytes;
use parking_lot::{Mutex, RwLock};
use tower::util::Oneshot;
use verdant_loadable::http::{HttpExtension, Middleware, Next};
use verdant_loadable::router::{capture_library_routes, LibraryRoutes, RoutesFuture};

use verdant_loadable::__private::{
    host_panic_text, internal_error, plain_response as text, HoldUntilEnd, MountPrefix, PanicHook, RequestLine,
};

use crate::axum::Served;
use crate::entry::Entry;
use crate::handle::{Handle, Pinned, Slot};
use crate::registry::{ChangeListener, Inner};
use crate::version::ServingPin;
use crate::{Interface, Verdant};

/// The HTTP pipeline of a registry's loadables, as a `tower::Service`
/// (see [`pipeline`]). Cheap to clone; all clones share one pipeline.
#[derive(Clone)]
pub struct Pipeline {
    shared: Arc<Shared>,
}

/// Serves every loadable of `verdant` over HTTP: the middleware of each
/// HTTP extension in manifest order, then the routes of the loadable whose
/// mount matches the request path (with the mount stripped from the path),
/// then the host's fallback (by default a 404).
///
/// HTTP extensions (`dyn verdant_loadable::http::HttpExtension`) offer
/// their routes and middleware themselves. A typed loadable with a mount
/// serves routes once you tell the pipeline how to get them with
/// [`Pipeline::routes`]. A mount whose loadable is not attached (its attach
/// failed) answers 503 with the reason; a loadable removed from the
/// manifest is gone: its mount answers 404 and its middleware is out of the
/// chain for every new request.
///
/// Put it behind the host's own routes and layers:
///
/// ```no_run
/// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn router(&self) -> axum::Router; }
/// # fn demo(verdant: verdant::Verdant) {
/// use axum::routing::get;
/// let pipeline = verdant::axum::pipeline(&verdant).routes::<dyn Shop>(|shop| shop.router());
/// let app: axum::Router = axum::Router::new()
///     .route("/health", get(|| async { "ok" }))   // host routes: outside the pipeline
///     .fallback_service(pipeline);                // everything else: extensions
/// # let _ = app; }
/// ```
pub fn pipeline(verdant: &Verdant) -> Pipeline {
    let inner = verdant.inner();
    let shared = Arc::new(Shared {
        registry: Arc::downgrade(inner),
        sources: RwLock::new(Vec::new()),
        fallback: RwLock::new(None),
        current: ArcSwap::from_pointee(Snapshot::default()),
        rebuilding: Mutex::new(()),
        configured: std::sync::atomic::AtomicBool::new(false),
    });
    let listener: Weak<dyn ChangeListener> = Arc::downgrade(&shared) as Weak<dyn ChangeListener>;
    inner.subscribe(listener);
    shared.rebuild(inner);
    Pipeline { shared }
}

impl Pipeline {
    /// Serves the routes of every loadable of interface `I` that has a mount,
    /// with the router `router` returns (called once per loaded version; the
    /// router the interface macro generates is built once per version too).
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn router(&self) -> axum::Router; }
    /// # fn demo(verdant: verdant::Verdant) {
    /// let pipeline = verdant::axum::pipeline(&verdant).routes::<dyn Shop>(|shop| shop.router());
    /// # let _ = pipeline; }
    /// ```
    ///
    /// This is the general way: the router may be wrapped in layers, nested
    /// or merged, and is served as a router (after the pipeline's own
    /// routing by mount, axum routes the request again). When `router`
    /// returns the interface's router method unchanged, prefer
    /// [`Pipeline::library_routes`], which calls the library without that
    /// second pass.
    pub fn routes<I: Interface + ?Sized>(self, router: impl Fn(&I) -> Router + Send + Sync + 'static) -> Self {
        self.add_source::<I>(move |loadable| {
            catch_unwind(AssertUnwindSafe(|| router(loadable))).map(Target::Router).map_err(|payload| {
                Unbuilt::Panicked(format!("building its router panicked: {}", host_panic_text(&*payload)))
            })
        })
    }

    /// Serves the routes of every loadable of interface `I` that has a
    /// mount, calling the library router that `router` returns directly:
    /// `router` must return the router of one of the interface's router
    /// methods (`fn ...(&self) -> axum::Router`) **unchanged**, as in
    /// `|shop| shop.router()`.
    ///
    /// Compared with [`Pipeline::routes`], a request reaches the library
    /// without a second routing pass through `axum` (and without the two
    /// allocations of that pass), and the mount that panic reports name is
    /// stored once per version instead of in every request.
    ///
    /// How: `router` runs once per loaded version (like in `routes`) while
    /// the pipeline captures the library routes that the interface's proxy
    /// offers as its router method returns
    /// ([`verdant_loadable::router::LibraryRoutes`]); the pipeline serves
    /// that one and drops the `Router` that `router` returned. So whatever
    /// `router` did to the router on the way (a layer, a nest, a merge with
    /// host routes) is **not** served; use [`Pipeline::routes`] for that.
    /// What can be detected is refused: if `router` called no router method
    /// of a loadable (it built a router of its own), or more than one, the
    /// mount answers 503 saying so, and the log has the same error.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn router(&self) -> axum::Router; }
    /// # fn demo(verdant: verdant::Verdant) {
    /// let pipeline = verdant::axum::pipeline(&verdant).library_routes::<dyn Shop>(|shop| shop.router());
    /// # let _ = pipeline; }
    /// ```
    pub fn library_routes<I: Interface + ?Sized>(self, router: impl Fn(&I) -> Router + Send + Sync + 'static) -> Self {
        self.add_source::<I>(move |loadable| {
            let built = catch_unwind(AssertUnwindSafe(|| capture_library_routes(|| drop(router(loadable)))));
            let ((), mut offered) = built.map_err(|payload| {
                Unbuilt::Panicked(format!("building its router panicked: {}", host_panic_text(&*payload)))
            })?;
            match offered.len() {
                1 => Ok(Target::Library(offered.remove(0))),
                found => {
                    let error = format!(
                        "Pipeline::library_routes: the closure must return one router method's router of the \
                         loadable unchanged (such as `|shop| shop.router()`), but it called {found} router \
                         methods of a loadable; use Pipeline::routes to serve a router it builds, wraps or merges"
                    );
                    tracing::error!(interface = std::any::type_name::<I>(), "{error}");
                    Err(Unbuilt::Refused(error))
                }
            }
        })
    }

    /// Adds how the routes of the loadables of interface `I` are made.
    fn add_source<I: Interface + ?Sized>(
        self,
        build: impl Fn(&I) -> Result<Target, Unbuilt> + Send + Sync + 'static,
    ) -> Self {
        let source: RouteSource = Arc::new(move |entry: &Entry| {
            let slot = entry.slot.clone().downcast::<Slot<I>>().ok()?;
            Some(match Handle::new(slot).get() {
                Ok(pinned) => {
                    let served = served(entry, pinned.generation(), pinned.package_version());
                    let built = build(&pinned);
                    let meta = pinned.meta().clone();
                    let pin: Arc<dyn Any + Send + Sync> = Arc::new(ServingPin::new(pinned, meta));
                    built.map(|target| (target, served, pin))
                }
                Err(error) => Err(Unbuilt::NotServing(error.to_string())),
            })
        });
        self.shared.sources.write().push(source);
        self.rebuild();
        self
    }

    /// What answers requests that no mount matches, inside the pipeline (so
    /// the extensions' middleware runs for them too). Default: a plain 404.
    ///
    /// ```no_run
    /// # fn demo(verdant: verdant::Verdant) {
    /// use axum::routing::get;
    /// let host_routes = axum::Router::new().route("/", get(|| async { "home" }));
    /// let pipeline = verdant::axum::pipeline(&verdant).fallback(host_routes);
    /// # let _ = pipeline; }
    /// ```
    pub fn fallback(self, router: Router) -> Self {
        *self.shared.fallback.write() = Some(router);
        self.rebuild();
        self
    }

    fn rebuild(&self) {
        self.shared.configured.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(inner) = self.shared.registry.upgrade() {
            self.shared.rebuild(&inner);
        }
    }

    /// The mounts and middlewares serving now, in order: for tests and
    /// status pages.
    ///
    /// ```no_run
    /// # fn demo(verdant: verdant::Verdant) {
    /// let pipeline = verdant::axum::pipeline(&verdant);
    /// println!("middleware: {:?}", pipeline.describe().middleware);
    /// # }
    /// ```
    pub fn describe(&self) -> PipelineLayout {
        let snapshot = self.shared.current.load();
        PipelineLayout {
            middleware: snapshot.stages.iter().map(|stage| stage.name.to_string()).collect(),
            mounts: snapshot
                .routes
                .iter()
                .map(|route| (route.mount.to_string(), route.name.to_string()))
                .chain(snapshot.unavailable.iter().map(|down| (down.mount.to_string(), down.name.to_string())))
                .collect(),
        }
    }
}

/// What a [`Pipeline`] runs now ([`Pipeline::describe`]).
#[derive(Debug, Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct PipelineLayout {
    /// The loadables whose middleware runs, in order.
    pub middleware: Vec<String>,
    /// `(mount, loadable)` for every mount.
    pub mounts: Vec<(String, String)>,
}

impl std::fmt::Debug for Pipeline {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Pipeline").field("layout", &self.describe()).finish()
    }
}

/// How the routes of a typed loadable are made: `None` when the entry is
/// not of the source's interface.
type RouteSource = Arc<dyn Fn(&Entry) -> Option<Result<Built, Unbuilt>> + Send + Sync>;

/// Routes, what they serve as, and the (serving) pin of their version.
type Built = (Target, Served, Arc<dyn Any + Send + Sync>);

/// Why a typed loadable's routes could not be made.
enum Unbuilt {
    /// It has no serving version (the handle's error).
    NotServing(String),
    /// Building its router panicked in the library (contained).
    Panicked(String),
    /// `Pipeline::library_routes` got no library router, or several.
    Refused(String),
}

/// What serves a mount.
enum Target {
    /// A router, routed again by axum (`Pipeline::routes`).
    Router(Router),
    /// A library router's service, called directly
    /// (`Pipeline::library_routes`, HTTP extensions).
    Library(LibraryRoutes),
}

impl Target {
    /// The target serving under `mount`: a library router's service keeps
    /// the mount for its panic reports (once here, not per request).
    fn mounted(self, mount: &Arc<str>) -> Target {
        match self {
            Target::Library(routes) => Target::Library(routes.mounted_at(mount.clone())),
            router => router,
        }
    }
}

struct Shared {
    registry: Weak<Inner>,
    sources: RwLock<Vec<RouteSource>>,
    fallback: RwLock<Option<Router>>,
    current: ArcSwap<Snapshot>,
    /// Serialises rebuilds, so the last one stored is built from the latest
    /// state.
    rebuilding: Mutex<()>,
    /// Whether the host is done configuring the pipeline (it called
    /// `routes` or `fallback`, or the registry changed since): only then is
    /// a mount without routes worth a warning, not in the first build that
    /// `pipeline()` makes before the host could call `routes`.
    configured: std::sync::atomic::AtomicBool,
}

impl ChangeListener for Shared {
    fn changed(&self, inner: &Inner) {
        self.configured.store(true, std::sync::atomic::Ordering::Relaxed);
        self.rebuild(inner);
    }
}

impl Shared {
    fn rebuild(&self, inner: &Inner) {
        let _rebuilding = self.rebuilding.lock();
        let sources = self.sources.read().clone();
        let mut snapshot = Snapshot { fallback: self.fallback.read().clone(), ..Snapshot::default() };
        for entry in inner.entries() {
            if entry.dormant {
                continue;
            }
            if let Ok(slot) = entry.slot.clone().downcast::<Slot<dyn HttpExtension>>() {
                add_extension(&mut snapshot, &entry, Handle::new(slot));
            } else if let Some(mount) = &entry.mount {
                let built = sources.iter().find_map(|source| source(&entry));
                match built {
                    Some(Ok((target, served, pin))) => snapshot.routes.push(Route {
                        mount: mount.clone(),
                        name: entry.name.clone(),
                        target: target.mounted(mount),
                        served,
                        _pin: pin,
                    }),
                    Some(Err(unbuilt)) => {
                        let reason = match unbuilt {
                            Unbuilt::NotServing(reason) => reason,
                            // A library panic was reported (and counted) by the
                            // proxy that re-raised it.
                            Unbuilt::Panicked(reason) => reason,
                            // Logged where it was found.
                            Unbuilt::Refused(reason) => reason,
                        };
                        snapshot.unavailable.push(Unavailable {
                            mount: mount.clone(),
                            name: entry.name.clone(),
                            reason: reason.into(),
                        })
                    }
                    None if self.configured.load(std::sync::atomic::Ordering::Relaxed) => {
                        tracing::warn!(loadable = %entry.name, mount = %mount, interface = entry.interface,
                            "the loadable has a mount but the pipeline has no routes for its interface \
                             (call Pipeline::routes::<dyn YourTrait>(..)); nothing is served there");
                    }
                    None => {}
                }
            }
        }
        let layout: Vec<&str> = snapshot.stages.iter().map(|stage| &*stage.name).collect();
        tracing::debug!(middleware = ?layout, mounts = snapshot.routes.len(), "HTTP pipeline rebuilt");
        self.current.store(Arc::new(snapshot));
    }
}

/// Adds an HTTP extension's middleware and routes to `snapshot`.
fn add_extension(snapshot: &mut Snapshot, entry: &Entry, handle: Handle<dyn HttpExtension>) {
    let pinned = match handle.get() {
        Ok(pinned) => {
            let meta = pinned.meta().clone();
            Arc::new(ServingPin::new(pinned, meta))
        }
        Err(error) => {
            if let Some(mount) = &entry.mount {
                snapshot.unavailable.push(Unavailable {
                    mount: mount.clone(),
                    name: entry.name.clone(),
                    reason: error.to_string().into(),
                });
            }
            return;
        }
    };
    // A library panic in these calls is reported and re-raised by the
    // proxy as a host panic: caught here, the extension is left out of the
    // pipeline (the report has the panic; this says what follows from it).
    match catch_unwind(AssertUnwindSafe(|| pinned.middleware())) {
        Ok(Some(middleware)) => {
            let panic_hook = pinned.panic_hook().clone();
            snapshot.stages.push(Stage { name: entry.name.clone(), middleware, panic_hook, _pin: pinned.clone() });
        }
        Ok(None) => {}
        Err(_) => {
            tracing::warn!(loadable = %entry.name,
                "the extension's middleware() panicked (reported above); its middleware is left out of the pipeline");
        }
    }
    let Some(mount) = &entry.mount else { return };
    // The pipeline calls the router method itself, so the router is the
    // library's, unchanged: its service is called directly when the proxy
    // offered it (a proxy generated by this build of the macro always does).
    match catch_unwind(AssertUnwindSafe(|| capture_library_routes(|| pinned.router()))) {
        Ok((router, mut offered)) => snapshot.routes.push(Route {
            mount: mount.clone(),
            name: entry.name.clone(),
            target: match offered.len() {
                1 => Target::Library(offered.remove(0)),
                _ => Target::Router(router),
            }
            .mounted(mount),
            served: served(entry, pinned.generation(), pinned.package_version()),
            _pin: pinned,
        }),
        Err(payload) => {
            // Reported (and counted) by the proxy that re-raised it.
            snapshot.unavailable.push(Unavailable {
                mount: mount.clone(),
                name: entry.name.clone(),
                reason: format!("building its router panicked: {}", host_panic_text(&*payload)).into(),
            })
        }
    }
}

fn served(entry: &Entry, generation: u64, package_version: &str) -> Served {
    Served { loadable: entry.name.clone(), generation, package_version: Arc::from(package_version) }
}

/// What serves, as of one change. Field order matters in every part: the
/// library's objects (middleware, router) are dropped before their pins.
#[derive(Default)]
struct Snapshot {
    stages: Vec<Stage>,
    routes: Vec<Route>,
    unavailable: Vec<Unavailable>,
    fallback: Option<Router>,
}

struct Stage {
    name: Arc<str>,
    middleware: Middleware,
    /// Reports a panic of the middleware's version.
    panic_hook: PanicHook,
    _pin: Arc<ServingPin<Pinned<dyn HttpExtension>>>,
}

struct Route {
    mount: Arc<str>,
    name: Arc<str>,
    target: Target,
    served: Served,
    _pin: Arc<dyn Any + Send + Sync>,
}

/// A mount whose loadable does not serve: 503 with the reason.
struct Unavailable {
    mount: Arc<str>,
    name: Arc<str>,
    reason: Arc<str>,
}

impl tower::Service<Request<Body>> for Pipeline {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = PipelineFuture;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: Request<Body>) -> PipelineFuture {
        let snapshot = self.shared.current.load_full();
        if snapshot.stages.is_empty() {
            // No middleware: the route's router pins its own version for the
            // response (its body holds the pin) when it is first polled; the
            // snapshot keeps that version alive until then (a reload may
            // replace the snapshot meanwhile), and the future is not boxed.
            let routed = route(&snapshot, request);
            return PipelineFuture { path: Path::Routed { routed, snapshot: Some(snapshot) } };
        }
        // Middleware: the response body holds the whole snapshot, so every
        // version the request went through stays attached until it ends.
        let running = run(snapshot.clone(), 0, request);
        let running: Running = Box::pin(async move {
            let response = running.await;
            response.map(|body| HoldUntilEnd::wrap(body, snapshot))
        });
        PipelineFuture { path: Path::Running { running } }
    }
}

pin_project_lite::pin_project! {
    /// The response future of [`Pipeline`].
    pub struct PipelineFuture {
        #[pin]
        path: Path,
    }
}

pin_project_lite::pin_project! {
    #[project = PathProjection]
    enum Path {
        // Straight to a route (no middleware); the snapshot is held until
        // the first poll, when the route's router has pinned its version.
        Routed { #[pin] routed: Routed, snapshot: Option<Arc<Snapshot>> },
        // Through the middlewares.
        Running { running: Running },
    }
}

impl Future for PipelineFuture {
    type Output = Result<Response<Body>, Infallible>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        match self.project().path.project() {
            PathProjection::Routed { routed, snapshot } => {
                let polled = routed.poll(cx);
                // Polled once: the router called its service, which pinned
                // the version it serves with (or answered already).
                snapshot.take();
                polled.map(Ok)
            }
            PathProjection::Running { running } => running.as_mut().poll(cx).map(Ok),
        }
    }
}

impl std::fmt::Debug for PipelineFuture {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("PipelineFuture")
    }
}

pin_project_lite::pin_project! {
    // The last stage of the pipeline, unboxed: a route's router, the
    // fallback, or an answer of the pipeline's own.
    #[project = RoutedProjection]
    enum Routed {
        // A loadable's routes; `served` goes into the response's extensions.
        Route { #[pin] call: Oneshot<Router, Request<Body>>, served: Option<Served> },
        // A library router's service, called directly.
        Library { #[pin] call: RoutesFuture, served: Option<Served> },
        // The host's fallback.
        Fallback { #[pin] call: Oneshot<Router, Request<Body>> },
        // A 404 or 503 of the pipeline's own.
        Answered { response: Option<Response<Body>> },
    }
}

impl Future for Routed {
    type Output = Response<Body>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Response<Body>> {
        match self.project() {
            RoutedProjection::Route { call, served } => {
                let mut response = match std::task::ready!(call.poll(cx)) {
                    Ok(response) => response,
                    Err(never) => match never {},
                };
                if let Some(served) = served.take() {
                    response.extensions_mut().insert(served);
                }
                Poll::Ready(response)
            }
            RoutedProjection::Library { call, served } => {
                let mut response = std::task::ready!(call.poll(cx));
                if let Some(served) = served.take() {
                    response.extensions_mut().insert(served);
                }
                Poll::Ready(response)
            }
            RoutedProjection::Fallback { call } => match std::task::ready!(call.poll(cx)) {
                Ok(response) => Poll::Ready(response),
                Err(never) => match never {},
            },
            RoutedProjection::Answered { response } => Poll::Ready(response.take().unwrap_or_else(|| {
                text(StatusCode::INTERNAL_SERVER_ERROR, "the pipeline was polled after it answered\n".to_owned())
            })),
        }
    }
}

impl std::fmt::Debug for Routed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Routed")
    }
}

type Running = Pin<Box<dyn Future<Output = Response<Body>> + Send>>;

/// Runs the pipeline from stage `index` on.
fn run(snapshot: Arc<Snapshot>, index: usize, request: Request<Body>) -> Running {
    let Some(stage) = snapshot.stages.get(index) else {
        return Box::pin(route(&snapshot, request));
    };
    // The host's extensions stay on this side: the library gets a request
    // without them, and `next` puts them back before the rest runs. Those
    // of the response the rest makes are kept aside the same way.
    let (mut parts, body) = request.into_parts();
    let host_extensions = std::mem::take(&mut parts.extensions);
    let request = Request::from_parts(parts, body);
    let response_extensions: Arc<Mutex<Option<::axum::http::Extensions>>> = Arc::default();
    let next = {
        let snapshot = snapshot.clone();
        let response_extensions = response_extensions.clone();
        Next::from_host(move |mut request: Request<Body>| {
            *request.extensions_mut() = host_extensions;
            async move {
                let mut response = run(snapshot, index + 1, request).await;
                *response_extensions.lock() = Some(std::mem::take(response.extensions_mut()));
                response
            }
        })
    };
    let line = RequestLine::of(&request);
    let future = stage.middleware.serve(request, next);
    let name = stage.name.clone();
    let panic_hook = stage.panic_hook.clone();
    Box::pin(async move {
        match future.await {
            Ok(mut response) => {
                if let Some(extensions) = response_extensions.lock().take() {
                    response.extensions_mut().extend(extensions);
                }
                response
            }
            Err(panic) => {
                // The one report of this panic; the 500 says no more.
                panic_hook.report(&panic, &format!("{line} (middleware)"));
                internal_error(&name)
            }
        }
    })
}

/// The last stage: the route whose mount matches, else the fallback.
fn route(snapshot: &Snapshot, request: Request<Body>) -> Routed {
    let path = request.uri().path();
    if let Some(route) = snapshot.routes.iter().find(|route| under(path, &route.mount)) {
        let mut request = strip(request, route.mount.len());
        let served = Some(route.served.clone());
        return match &route.target {
            // The service has the mount for its reports.
            Target::Library(routes) => Routed::Library { call: routes.call(request), served },
            Target::Router(router) => {
                // Reports of the library's panics name the path the client asked for.
                request.extensions_mut().insert(MountPrefix(route.mount.clone()));
                Routed::Route { call: tower::ServiceExt::oneshot(router.clone(), request), served }
            }
        };
    }
    if let Some(down) = snapshot.unavailable.iter().find(|down| under(path, &down.mount)) {
        let answer = text(
            StatusCode::SERVICE_UNAVAILABLE,
            format!("loadable `{}` is not serving: {}\n", down.name, down.reason),
        );
        return Routed::Answered { response: Some(answer) };
    }
    match &snapshot.fallback {
        Some(fallback) => Routed::Fallback { call: tower::ServiceExt::oneshot(fallback.clone(), request) },
        None => Routed::Answered { response: Some(text(StatusCode::NOT_FOUND, format!("no route for `{path}`\n"))) },
    }
}

/// Whether `path` is `mount` or below it (`/shop`, `/shop/x`; not `/shopping`).
fn under(path: &str, mount: &str) -> bool {
    path.strip_prefix(mount).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'))
}

/// The request with the first `prefix` bytes of its path removed (`/shop/x`
/// becomes `/x`, `/shop` becomes `/`), as `nest_service` does.
///
/// The rest of the path is a slice of the request's own path and query,
/// kept by one `Bytes` owner: one allocation, after which every clone of
/// the URI (the request line that panic reports keep, on both sides of the
/// boundary) is a reference count. A path built as a `String` costs the
/// same allocation, plus a second one at its first clone, when `bytes`
/// moves it into a shared buffer.
fn strip(request: Request<Body>, prefix: usize) -> Request<Body> {
    let (mut parts, body) = request.into_parts();
    let mut uri = std::mem::take(&mut parts.uri).into_parts();
    if let Some(original) = uri.path_and_query.take() {
        uri.path_and_query = Some(strip_path(original, prefix));
    }
    parts.uri = Uri::from_parts(uri).unwrap_or_default();
    Request::from_parts(parts, body)
}

/// `original` without its first `prefix` bytes, which `under` matched as
/// a mount: what is left of the path is empty or starts with `/`.
fn strip_path(original: PathAndQuery, prefix: usize) -> PathAndQuery {
    if original.path().len() <= prefix {
        // The mount itself (`/shop`, `/shop?q`): the path becomes `/`.
        let rebuilt = match original.query() {
            Some(query) => format!("/?{query}"),
            None => "/".to_owned(),
        };
        return PathAndQuery::try_from(rebuilt).unwrap_or(original);
    }
    let whole = Bytes::from_owner(OwnedPath(original));
    // A suffix of a valid path and query that starts with `/` is valid
    // too; should `http` ever disagree, the request keeps its whole path.
    PathAndQuery::from_maybe_shared(whole.slice(prefix..))
        .or_else(|_| PathAndQuery::from_maybe_shared(whole))
        .unwrap_or_else(|_| PathAndQuery::from_static("/"))
}

/// A request's path and query as the owner of the `Bytes` that
/// [`strip_path`] slices.
struct OwnedPath(PathAndQuery);

impl AsRef<[u8]> for OwnedPath {
    fn as_ref(&self) -> &[u8] {
        self.0.as_str().as_bytes()
    }
}

#[cfg(test)]
mod tests {
    use ::axum::body::Body;
    use ::axum::http::Request;

    use super::under;

    #[test]
    fn a_mount_matches_itself_and_below_only() {
        assert!(under("/shop", "/shop"));
        assert!(under("/shop/", "/shop"));
        assert!(under("/shop/a/b", "/shop"));
        assert!(!under("/shopping", "/shop"));
        assert!(!under("/", "/shop"));
        assert!(under("/a/b/c", "/a/b"));
    }

    #[test]
    fn stripping_a_mount_keeps_the_rest_and_the_query() {
        let strip = |uri: &'static str| {
            let request = Request::get(uri).body(Body::empty()).expect("a valid request");
            super::strip(request, "/shop".len()).uri().to_string()
        };
        assert_eq!(strip("/shop/hello"), "/hello");
        assert_eq!(strip("/shop/hello?qty=2&x=%20"), "/hello?qty=2&x=%20");
        assert_eq!(strip("/shop"), "/");
        assert_eq!(strip("/shop?qty=2"), "/?qty=2");
        assert_eq!(strip("/shop/"), "/");
        assert_eq!(strip("http://example.com/shop/a/b?c"), "http://example.com/a/b?c");
    }
}
