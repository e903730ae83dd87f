//! Mounting a loadable's router, looked up per request.

use std::convert::Infallible;
use std::future::Future;
use std::panic::{catch_unwind, AssertUnwindSafe};
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use ::axum::body::Body;
use ::axum::http::{Request, Response, StatusCode};
use ::axum::Router;

use verdant_loadable::__private::{internal_error, plain_response as text, MountPrefix};

use crate::error::{Error, HandleError};
use crate::handle::Handle;
use crate::version::ServingPin;
use crate::Interface;
/// Mounts a loadable's router under `/<name>/`, where `<name>` is the name
/// the loadable was added with.
///
/// Each request looks the serving version up through `handle` and asks it
/// for its router with `router` (the generated proxy builds the router once
/// per version and hands out cheap clones). So a reload takes effect on the
/// next request, even on a keep-alive connection (axum clones a router per
/// connection; this lookup is per request). The response pins its version
/// until its body is finished or dropped.
///
/// Answers of its own: 503 while the loadable is not attached, 404 once it
/// was revoked (its namespace is gone), 500 when the library panicked.
/// Paths under the namespace that the library's router does not know get
/// the library router's fallback (404 by default).
///
/// # Errors
///
/// [`Error::InvalidMountName`] when the loadable's name cannot be a path
/// segment (it must be non-empty, not `.` or `..`, and contain only
/// `A-Z a-z 0-9 - . _ ~`).
///
/// ```no_run
/// # #[verdant_loadable::interface]
/// # pub trait Shop: Send + Sync { fn router(&self) -> axum::Router; }
/// # fn demo(verdant: verdant::Verdant) -> Result<(), verdant::Error> {
/// let shop: verdant::Handle<dyn Shop> = verdant.handle("shop")?;
/// let app = axum::Router::new()
///     .merge(verdant::axum::mount(shop, |shop| shop.router())?);
/// // GET /shop/hello is served by the library's `/hello` route.
/// # let _ = app; Ok(()) }
/// ```
pub fn mount<I, F>(handle: Handle<I>, router: F) -> Result<Router, Error>
where
    I: Interface + ?Sized,
    F: Fn(&I) -> Router + Clone + Send + Sync + 'static,
{
    let name = handle.name();
    let valid = |c: char| c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~');
    // `.` and `..` are dot-segments: clients resolve them away before sending.
    if name.is_empty() || name == "." || name == ".." || !name.chars().all(valid) {
        return Err(Error::InvalidMountName { name: name.to_owned() });
    }
    let path = format!("/{name}");
    let prefix = MountPrefix(Arc::from(path.as_str()));
    Ok(Router::new().nest_service(&path, Mount { handle, router, prefix }))
}

/// Which version answered a request served through [`mount`], in the
/// response's extensions (put there by the host, so any host layer may read
/// it; a library cannot forge it).
///
/// ```
/// use axum::http::HeaderValue;
/// use verdant::axum::Served;
///
/// // A host layer that tells clients which build answered.
/// async fn stamp(response: axum::response::Response) -> axum::response::Response {
///     let mut response = response;
///     if let Some(served) = response.extensions().get::<Served>().cloned() {
///         response.headers_mut().insert("x-verdant-generation", HeaderValue::from(served.generation));
///     }
///     response
/// }
/// let app: axum::Router = axum::Router::new().layer(axum::middleware::map_response(stamp));
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Served {
    /// The loadable's registered name.
    pub loadable: Arc<str>,
    /// The generation of the transaction that loaded the version.
    pub generation: u64,
    /// The library's package version, from its descriptor.
    pub package_version: Arc<str>,
}

/// The per-request lookup behind [`mount`].
struct Mount<I: Interface + ?Sized, F> {
    handle: Handle<I>,
    router: F,
    /// `/<name>`, which `nest_service` strips: reports name the full path.
    prefix: MountPrefix,
}

impl<I: Interface + ?Sized, F: Clone> Clone for Mount<I, F> {
    fn clone(&self) -> Self {
        Mount { handle: self.handle.clone(), router: self.router.clone(), prefix: self.prefix.clone() }
    }
}

impl<I, F> tower::Service<Request<Body>> for Mount<I, F>
where
    I: Interface + ?Sized,
    F: Fn(&I) -> Router + Clone + Send + Sync + 'static,
{
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, mut request: Request<Body>) -> Self::Future {
        let pinned = match self.handle.get() {
            Ok(pinned) => pinned,
            Err(error @ HandleError::Revoked { .. }) => {
                return Box::pin(std::future::ready(Ok(text(StatusCode::NOT_FOUND, format!("{error}\n")))))
            }
            Err(error) => {
                return Box::pin(std::future::ready(Ok(text(StatusCode::SERVICE_UNAVAILABLE, format!("{error}\n")))))
            }
        };
        // A library panic while building the router reaches the host as a
        // host panic (reported, then re-raised by the proxy): catch it here,
        // with the host's std, which raised it. A panic of the host's own
        // `router` closure was printed by the host's panic hook.
        let select = &self.router;
        let router = match catch_unwind(AssertUnwindSafe(|| select(&pinned))) {
            Ok(router) => router,
            Err(_) => return Box::pin(std::future::ready(Ok(internal_error(self.handle.name())))),
        };
        request.extensions_mut().insert(self.prefix.clone());
        let served = Served {
            loadable: Arc::from(self.handle.name()),
            generation: pinned.generation(),
            package_version: Arc::from(pinned.package_version()),
        };
        // The version this request was routed to stays pinned until the
        // router has pinned it for the response (on its first poll). That
        // routing pin serves the request but is not one (`in_flight` in
        // `status()` counts the router's pin alone).
        let meta = pinned.meta().clone();
        let pinned = ServingPin::new(pinned, meta);
        Box::pin(async move {
            let mut response = tower::ServiceExt::oneshot(router, request).await;
            drop(pinned);
            if let Ok(response) = &mut response {
                response.extensions_mut().insert(served);
            }
            response
        })
    }
}
