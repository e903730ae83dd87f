//! Demo HTTP extension: an API-key check for protected paths, and errors
//! answered as JSON.
//!
//! A middleware in the xstream sense, loaded by the demo from its manifest
//! without the host knowing it at compile time:
//!
//! - requests under the protected prefix (default `/shop/quote`) need the
//!   header `x-api-key` with the configured key; without it the answer is
//!   `401 {"error":"unauthorized",...}`, made here, before the rest of the
//!   pipeline runs;
//! - every error answer of the rest of the pipeline (status 400 and up,
//!   `text/plain`, up to 64 KiB) is rewritten as JSON
//!   `{"status":404,"error":"<the text>"}`.
//!
//! Settings (`[loadable.settings]` in the manifest):
//! - `key` (required: attach fails without it);
//! - `protect`: the protected path prefix (default `/shop/quote`).

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use verdant_loadable::http::{ExtensionContext, HttpExtension, Middleware, Next};
use verdant_loadable::{AttachError, Loadable};

/// The largest error body rewritten as JSON; larger ones pass unchanged.
const MAX_ERROR_BODY: usize = 64 * 1024;

/// The attached extension.
pub struct ApiKey {
    key: String,
    protect: String,
}

impl Loadable for ApiKey {
    type Context = ExtensionContext;
    type Interface = dyn HttpExtension;

    fn attach(context: &ExtensionContext) -> Result<Self, AttachError> {
        let key = context.setting("key").filter(|key| !key.is_empty()).ok_or_else(|| {
            AttachError::new(format!(
                "extension `{}` needs the setting `key` (the API key clients send in x-api-key): add it under \
                 [loadable.settings] in the manifest",
                context.name()
            ))
        })?;
        Ok(ApiKey { key: key.to_owned(), protect: context.setting("protect").unwrap_or("/shop/quote").to_owned() })
    }
}

impl HttpExtension for ApiKey {
    fn middleware(&self) -> Option<Middleware> {
        let (key, protect) = (self.key.clone(), self.protect.clone());
        Some(Middleware::new(move |request: Request, next: Next| {
            let path = request.uri().path();
            let protected =
                path.strip_prefix(protect.as_str()).is_some_and(|rest| rest.is_empty() || rest.starts_with('/'));
            let allowed =
                !protected || request.headers().get("x-api-key").is_some_and(|sent| sent.as_bytes() == key.as_bytes());
            async move {
                if !allowed {
                    return json(StatusCode::UNAUTHORIZED, "unauthorized: send the API key in the header x-api-key");
                }
                to_json(next.run(request).await).await
            }
        }))
    }
}

/// Rewrites a `text/plain` error answer as JSON; passes anything else.
async fn to_json(response: Response) -> Response {
    let status = response.status();
    let plain = response
        .headers()
        .get(header::CONTENT_TYPE)
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.starts_with("text/plain"));
    if !(status.is_client_error() || status.is_server_error()) || !plain {
        return response;
    }
    let (parts, body) = response.into_parts();
    match axum::body::to_bytes(body, MAX_ERROR_BODY).await {
        Ok(text) => {
            let mut answer = json(status, String::from_utf8_lossy(&text).trim());
            for (name, value) in &parts.headers {
                if name != header::CONTENT_TYPE && name != header::CONTENT_LENGTH {
                    answer.headers_mut().append(name, value.clone());
                }
            }
            answer
        }
        // Too long or broken: the status line is all there is to keep.
        Err(_) => Response::from_parts(parts, Body::empty()),
    }
}

fn json(status: StatusCode, error: &str) -> Response {
    let body = serde_json::json!({ "status": status.as_u16(), "error": error }).to_string();
    let mut response = (status, body).into_response();
    response.headers_mut().insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    response
}

verdant_loadable::export!(ApiKey);
