//! A response body that keeps something alive until it ends: the host's
//! one wrapper for "this body's versions stay attached while it streams".

use std::pin::Pin;
use std::task::{Context, Poll};

use ::axum::body::Body;
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};

/// A response body holding `K` (a version pin, a snapshot of pinned
/// versions) until the body ends, fails or is dropped.
///
/// Invariant: the inner body is gone before `K` is released. At the end of
/// the stream `poll_frame` replaces it with an empty body first (`Body::empty`
/// does not allocate); a body dropped early goes first by field order. So
/// library code in the inner body never runs after the version it belongs
/// to may have been detached.
pub struct HoldUntilEnd<K> {
    body: Body,
    keep: Option<K>,
}

impl<K: Send + Unpin + 'static> HoldUntilEnd<K> {
    /// `body`, holding `keep` until it ends.
    pub fn wrap(body: Body, keep: K) -> Body {
        Body::new(HoldUntilEnd { body, keep: Some(keep) })
    }
}

impl<K: Unpin> HttpBody for HoldUntilEnd<K> {
    type Data = Bytes;
    type Error = ::axum::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, ::axum::Error>>> {
        // `Body` is `Unpin`, and `K` is required to be.
        let this = self.get_mut();
        let frame = Pin::new(&mut this.body).poll_frame(cx);
        if let Poll::Ready(None | Some(Err(_))) = frame {
            // Finished: the inner body first (it may run library code when
            // dropped), then what it was holding.
            this.body = Body::empty();
            this.keep = None;
        }
        frame
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}
