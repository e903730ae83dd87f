//! HTTP extensions: the one interface every loadable can serve without the
//! host knowing it at compile time (shared by host and library).

use std::collections::BTreeMap;

use crate::library::middleware::Middleware;

/// A loadable that extends the host's HTTP service: routes under a mount
/// point and, optionally, a middleware that sees every request.
///
/// The host needs no code of the extension's: a manifest entry without a
/// typed loadable of that name loads its library as a `dyn HttpExtension`,
/// and `verdant::axum::pipeline` composes, per request, the host's own
/// layers, then the middleware of every extension in manifest order, then
/// the routes of the extension (or typed loadable) whose mount matches the
/// path, then the host's fallback (a 404 by default).
///
/// Both methods have defaults (no routes, no middleware), so an extension
/// implements what it offers. Both are called once per loaded version.
///
/// ```
/// use axum::http::HeaderValue;
/// use axum::routing::get;
/// use verdant_loadable::http::{ExtensionContext, HttpExtension, Middleware, Next};
/// use verdant_loadable::{AttachError, Loadable};
///
/// pub struct Stamp { tag: String }
///
/// impl HttpExtension for Stamp {
///     fn router(&self) -> axum::Router {
///         let tag = self.tag.clone();
///         axum::Router::new().route("/hello", get(move || async move { format!("hello from {tag}\n") }))
///     }
///
///     fn middleware(&self) -> Option<Middleware> {
///         let tag = HeaderValue::try_from(self.tag.as_str()).ok()?;
///         Some(Middleware::new(move |request, next: Next| {
///             let tag = tag.clone();
///             async move {
///                 let mut response = next.run(request).await;
///                 response.headers_mut().append("x-stamp", tag);
///                 response
///             }
///         }))
///     }
/// }
///
/// impl Loadable for Stamp {
///     type Context = ExtensionContext;
///     type Interface = dyn HttpExtension;
///     fn attach(context: &ExtensionContext) -> Result<Self, AttachError> {
///         Ok(Stamp { tag: context.setting("tag").unwrap_or(context.name()).to_owned() })
///     }
/// }
///
/// verdant_loadable::export!(Stamp);
/// ```
#[crate::interface]
pub trait HttpExtension: Send + Sync {
    /// The extension's routes, relative to its mount point (`/hello` here is
    /// served at `/greet/hello` for `mount = "/greet"`). Without a mount the
    /// routes are not served. Default: none.
    fn router(&self) -> axum::Router {
        axum::Router::new()
    }

    /// The extension's middleware, run for every request that reaches the
    /// pipeline, in manifest order. Default: none.
    fn middleware(&self) -> Option<Middleware> {
        None
    }
}

/// What an [`HttpExtension`]'s attach hook gets: its own name, mount and
/// settings from the manifest, never anything of the host's. (Typed
/// loadables attach with the host's context instead.)
///
/// ```
/// use std::collections::BTreeMap;
/// use verdant_loadable::http::ExtensionContext;
///
/// let settings = BTreeMap::from([("header".to_owned(), "x-request-id".to_owned())]);
/// let context = ExtensionContext::new("request-id", None, settings);
/// assert_eq!(context.setting("header"), Some("x-request-id"));
/// assert_eq!(context.setting("missing"), None);
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ExtensionContext {
    name: String,
    mount: Option<String>,
    settings: BTreeMap<String, String>,
}

impl ExtensionContext {
    /// A context for the extension `name` (made by the host's registry).
    ///
    /// ```
    /// let context = verdant_loadable::http::ExtensionContext::new("greet", Some("/greet".into()), Default::default());
    /// assert_eq!(context.mount(), Some("/greet"));
    /// ```
    pub fn new(name: impl Into<String>, mount: Option<String>, settings: BTreeMap<String, String>) -> Self {
        ExtensionContext { name: name.into(), mount, settings }
    }

    /// The extension's name in the manifest.
    ///
    /// ```
    /// let context = verdant_loadable::http::ExtensionContext::new("greet", None, Default::default());
    /// assert_eq!(context.name(), "greet");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Where its routes are served (`/greet`), if anywhere.
    ///
    /// ```
    /// let context = verdant_loadable::http::ExtensionContext::new("greet", None, Default::default());
    /// assert_eq!(context.mount(), None);
    /// ```
    pub fn mount(&self) -> Option<&str> {
        self.mount.as_deref()
    }

    /// One setting of the manifest entry's `[loadable.settings]` table.
    ///
    /// ```
    /// let context = verdant_loadable::http::ExtensionContext::new("greet", None, [("tag".to_owned(), "a".to_owned())].into());
    /// assert_eq!(context.setting("tag"), Some("a"));
    /// ```
    pub fn setting(&self, key: &str) -> Option<&str> {
        self.settings.get(key).map(String::as_str)
    }

    /// All settings, sorted by key.
    ///
    /// ```
    /// let context = verdant_loadable::http::ExtensionContext::new("greet", None, Default::default());
    /// assert!(context.settings().is_empty());
    /// ```
    pub fn settings(&self) -> &BTreeMap<String, String> {
        &self.settings
    }
}
