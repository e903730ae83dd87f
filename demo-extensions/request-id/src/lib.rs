//! Demo HTTP extension: a request id on every request and every answer.
//!
//! A middleware in the Frontity/xstream sense, loaded by the demo from its
//! manifest without the host knowing it at compile time. Each request gets
//! the id the client sent in the header (default `x-request-id`), or a new
//! one `<prefix>-<n>`; the rest of the pipeline sees it in the request, and
//! the answer carries it back, whoever made the answer.
//!
//! Settings (`[loadable.settings]` in the manifest), all optional:
//! - `header`: the header name (default `x-request-id`);
//! - `prefix`: the prefix of new ids (default `req`).

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use axum::extract::Request;
use axum::http::{HeaderName, HeaderValue};
use verdant_loadable::http::{ExtensionContext, HttpExtension, Middleware, Next};
use verdant_loadable::{AttachError, Loadable};

/// The attached extension.
pub struct RequestId {
    header: HeaderName,
    prefix: String,
    issued: Arc<AtomicU64>,
}

impl Loadable for RequestId {
    type Context = ExtensionContext;
    type Interface = dyn HttpExtension;

    fn attach(context: &ExtensionContext) -> Result<Self, AttachError> {
        let header = context.setting("header").unwrap_or("x-request-id");
        let header = HeaderName::try_from(header)
            .map_err(|e| AttachError::new(format!("setting `header` = {header:?} is not a header name: {e}")))?;
        Ok(RequestId {
            header,
            prefix: context.setting("prefix").unwrap_or("req").to_owned(),
            issued: Arc::new(AtomicU64::new(0)),
        })
    }
}

impl HttpExtension for RequestId {
    fn middleware(&self) -> Option<Middleware> {
        let (header, prefix, issued) = (self.header.clone(), self.prefix.clone(), self.issued.clone());
        Some(Middleware::new(move |mut request: Request, next: Next| {
            let header = header.clone();
            let id = match request.headers().get(&header) {
                Some(id) => id.clone(),
                None => {
                    let n = issued.fetch_add(1, Ordering::Relaxed) + 1;
                    // `prefix` comes from the manifest: fall back to a plain
                    // number if it cannot be part of a header value.
                    HeaderValue::try_from(format!("{prefix}-{n}")).unwrap_or_else(|_| HeaderValue::from(n))
                }
            };
            request.headers_mut().insert(header.clone(), id.clone());
            async move {
                let mut response = next.run(request).await;
                response.headers_mut().insert(header, id);
                response
            }
        }))
    }
}

verdant_loadable::export!(RequestId);
