//! An HTTP/1.1 test client on hyper's `client::conn::http1`: each test
//! decides which requests share a connection and reads streaming bodies
//! frame by frame.
//!
//! Every network step is bounded by [`HANG_GUARD`], so a bug fails a test
//! instead of hanging it; that bound is a hang guard, never a performance
//! assertion.

use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::client::conn::http1::SendRequest;
use hyper_util::rt::TokioIo;

/// How long any single network step may take before the test gives up.
pub const HANG_GUARD: Duration = Duration::from_secs(30);

/// Runs `future`, failing the test if it makes no progress for [`HANG_GUARD`].
pub async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(value) => value,
        Err(_) => panic!("hang guard: no progress in {HANG_GUARD:?} while {what}"),
    }
}

/// Serves `app` on a fresh loopback port; the server runs until the test's
/// runtime ends.
pub async fn serve(app: axum::Router) -> SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.expect("bind 127.0.0.1:0");
    let addr = listener.local_addr().expect("local address");
    tokio::spawn(async move {
        if let Err(error) = axum::serve(listener, app).await {
            panic!("the test server failed: {error}");
        }
    });
    addr
}

/// A complete answer.
#[derive(Debug)]
pub struct Answer {
    /// The status.
    pub status: StatusCode,
    /// The headers.
    pub headers: HeaderMap,
    /// The body, as text.
    pub body: String,
}

impl Answer {
    /// Whether the server said it closes the connection after this answer.
    pub fn closes(&self) -> bool {
        self.header("connection").is_some_and(|value| value.eq_ignore_ascii_case("close"))
    }

    /// The value of header `name` as text, if present.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|value| value.to_str().ok())
    }

    /// The body parsed as JSON; panics with the body if it is not JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.body).unwrap_or_else(|error| panic!("not JSON ({error}): {}", self.body))
    }
}

/// One client connection (keep-alive: requests on it go one after another).
pub struct Connection {
    sender: SendRequest<Body>,
    /// The task that drives the connection: aborted by [`Connection::close`].
    task: tokio::task::AbortHandle,
}

impl Connection {
    /// Opens a connection to `addr`.
    pub async fn open(addr: SocketAddr) -> Connection {
        let stream = guard("connecting", tokio::net::TcpStream::connect(addr)).await.expect("connect");
        let (sender, connection) =
            guard("handshake", hyper::client::conn::http1::handshake(TokioIo::new(stream))).await.expect("handshake");
        let task = tokio::spawn(async move {
            // Ends when the test drops the sender or the server closes.
            let _ = connection.await;
        })
        .abort_handle();
        Connection { sender, task }
    }

    /// Hangs up at once, whatever is in flight: the socket is closed, as
    /// a client that goes away mid-body closes it.
    pub fn close(self) {
        self.task.abort();
    }

    /// Waits (under the hang guard) until the server has closed this
    /// connection; panics if it stays open for [`HANG_GUARD`].
    pub async fn wait_closed_by_server(&self) {
        guard("waiting for the server to close the connection", async {
            while !self.sender.is_closed() {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        })
        .await;
    }

    /// Sends `GET path` with `headers` and returns the response with its
    /// body still to read.
    pub async fn start(&mut self, path: &str, headers: &[(&str, &str)]) -> hyper::Response<Incoming> {
        self.start_request(Method::GET, path, headers).await
    }

    /// Sends `method path` with `headers` and an empty body, and returns the
    /// response with its body still to read.
    pub async fn start_request(
        &mut self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
    ) -> hyper::Response<Incoming> {
        let mut request = Request::builder().method(method.clone()).uri(path).header("host", "127.0.0.1");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let request = request.body(Body::empty()).expect("a valid request");
        guard("ready to send", self.sender.ready()).await.expect("the connection is open");
        guard(&format!("{method} {path}"), self.sender.send_request(request)).await.expect("a response")
    }

    /// Sends `GET path` with `headers` and reads the whole answer.
    pub async fn get(&mut self, path: &str, headers: &[(&str, &str)]) -> Answer {
        self.request(Method::GET, path, headers).await
    }

    /// Sends `method path` with `headers` and reads the whole answer.
    pub async fn request(&mut self, method: Method, path: &str, headers: &[(&str, &str)]) -> Answer {
        let response = self.start_request(method, path, headers).await;
        let (parts, body) = response.into_parts();
        let bytes = guard(&format!("reading the body of {path}"), body.collect()).await.expect("a complete body");
        Answer {
            status: parts.status,
            headers: parts.headers,
            body: String::from_utf8_lossy(&bytes.to_bytes()).into_owned(),
        }
    }
}

/// `GET path` with `headers` on a connection of its own.
pub async fn get(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    Connection::open(addr).await.get(path, headers).await
}

/// `POST path` (empty body) with `headers` on a connection of its own.
pub async fn post(addr: SocketAddr, path: &str, headers: &[(&str, &str)]) -> Answer {
    Connection::open(addr).await.request(Method::POST, path, headers).await
}

/// The next data frame of `body` as text: `Some(Ok(text))`, `None` at the
/// end, `Some(Err(..))` when the body broke off.
pub async fn next_chunk(body: &mut Incoming) -> Option<Result<String, hyper::Error>> {
    loop {
        match guard("reading a body frame", body.frame()).await? {
            Ok(frame) => match frame.into_data() {
                Ok(data) => return Some(Ok(String::from_utf8_lossy(&data).into_owned())),
                Err(_trailers) => continue,
            },
            Err(error) => return Some(Err(error)),
        }
    }
}
