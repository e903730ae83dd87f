//! End-to-end HTTP: the edge fixtures' routers served by a real axum server
//! through `verdant::axum::mount`, spoken to over raw HTTP/1.1 sockets so
//! that each test decides which requests share a keep-alive connection and
//! when a streaming body is read.
//!
//! Every read is bounded by [`HANG_GUARD`], so a bug fails a test instead of
//! hanging it; that bound is a hang guard, never a performance assertion.

use std::error::Error as StdError;
use std::future::Future;
use std::net::SocketAddr;
use std::time::Duration;

use fixture_api::edge::{Edge, EdgeContext};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use verdant::{DetachState, Handle, Outcome, Verdant};
use verdant_tests::{eventually, Artifact};

type TestResult = Result<(), Box<dyn StdError>>;

/// How long any single network step may take before the test gives up.
const HANG_GUARD: Duration = Duration::from_secs(30);

// ---------------------------------------------------------------------------
// A minimal HTTP/1.1 client over a raw socket.
// ---------------------------------------------------------------------------

/// Runs `future`, failing the test if it makes no progress for [`HANG_GUARD`].
async fn guard<T>(what: &str, future: impl Future<Output = T>) -> T {
    match tokio::time::timeout(HANG_GUARD, future).await {
        Ok(value) => value,
        Err(_) => panic!("hang guard: no progress in {HANG_GUARD:?} while {what}"),
    }
}

/// A response's status line and headers.
#[derive(Debug)]
struct Head {
    status: u16,
    headers: Vec<(String, String)>,
}

impl Head {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(n, _)| n.eq_ignore_ascii_case(name)).map(|(_, v)| v.as_str())
    }

    fn is_chunked(&self) -> bool {
        self.header("transfer-encoding").is_some_and(|v| v.to_ascii_lowercase().contains("chunked"))
    }

    fn closes(&self) -> bool {
        self.header("connection").is_some_and(|v| v.eq_ignore_ascii_case("close"))
    }
}

/// One frame of a chunked body.
#[derive(Debug, PartialEq, Eq)]
enum Chunk {
    Data(String),
    /// The terminating zero-length chunk (and the trailer section after it).
    End,
    /// The connection ended before the terminating chunk.
    Aborted,
}

/// A complete response.
#[derive(Debug)]
struct Response {
    head: Head,
    body: String,
}

/// One client connection: requests are written on it in turn, so it is
/// reused (keep-alive) unless the server closes it.
struct Client {
    stream: TcpStream,
    buffer: Vec<u8>,
    eof: bool,
}

impl Client {
    async fn connect(addr: SocketAddr) -> Client {
        let stream = guard("connecting", TcpStream::connect(addr)).await.expect("connect to the test service");
        Client { stream, buffer: Vec::new(), eof: false }
    }

    async fn send_get(&mut self, path: &str) {
        let request = format!("GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n");
        guard("writing a request", self.stream.write_all(request.as_bytes())).await.expect("write the request");
    }

    /// Reads more bytes into the buffer; false once the peer closed (or
    /// reset) the connection.
    async fn fill(&mut self) -> bool {
        if self.eof {
            return false;
        }
        let mut bytes = [0u8; 4096];
        match guard("reading from the service", self.stream.read(&mut bytes)).await {
            Ok(0) => {
                self.eof = true;
                false
            }
            Ok(read) => {
                self.buffer.extend_from_slice(&bytes[..read]);
                true
            }
            Err(e) if matches!(e.kind(), std::io::ErrorKind::ConnectionReset | std::io::ErrorKind::BrokenPipe) => {
                self.eof = true;
                false
            }
            Err(e) => panic!("reading from the service: {e}"),
        }
    }

    /// A CRLF-terminated line without its CRLF; `None` if the connection
    /// ended first.
    async fn line(&mut self) -> Option<String> {
        loop {
            if let Some(end) = self.buffer.windows(2).position(|w| w == b"\r\n") {
                let line = String::from_utf8(self.buffer[..end].to_vec()).expect("an ASCII protocol line");
                self.buffer.drain(..end + 2);
                return Some(line);
            }
            if !self.fill().await {
                return None;
            }
        }
    }

    /// Exactly `len` bytes; `None` if the connection ended first.
    async fn bytes(&mut self, len: usize) -> Option<Vec<u8>> {
        while self.buffer.len() < len {
            if !self.fill().await {
                return None;
            }
        }
        Some(self.buffer.drain(..len).collect())
    }

    async fn head(&mut self) -> Head {
        let status_line = self.line().await.expect("the connection ended before a status line");
        let mut parts = status_line.splitn(3, ' ');
        assert_eq!(parts.next(), Some("HTTP/1.1"), "status line: {status_line:?}");
        let status = parts.next().and_then(|s| s.parse().ok()).unwrap_or_else(|| panic!("status: {status_line:?}"));
        let mut headers = Vec::new();
        loop {
            let line = self.line().await.expect("the connection ended inside the headers");
            if line.is_empty() {
                return Head { status, headers };
            }
            let (name, value) = line.split_once(':').unwrap_or_else(|| panic!("header line: {line:?}"));
            headers.push((name.trim().to_owned(), value.trim().to_owned()));
        }
    }

    /// The next frame of a chunked body.
    async fn chunk(&mut self) -> Chunk {
        let Some(size_line) = self.line().await else { return Chunk::Aborted };
        let size = size_line.split(';').next().unwrap_or_default().trim();
        let size = usize::from_str_radix(size, 16).unwrap_or_else(|_| panic!("chunk size line: {size_line:?}"));
        if size == 0 {
            // Trailers, up to an empty line.
            loop {
                match self.line().await {
                    Some(line) if line.is_empty() => return Chunk::End,
                    Some(_) => continue,
                    None => return Chunk::Aborted,
                }
            }
        }
        let Some(data) = self.bytes(size).await else { return Chunk::Aborted };
        match self.line().await {
            Some(rest) if rest.is_empty() => Chunk::Data(String::from_utf8(data).expect("a UTF-8 chunk")),
            Some(rest) => panic!("chunk of {size} bytes followed by {rest:?} instead of CRLF"),
            None => Chunk::Aborted,
        }
    }

    /// Every remaining chunk of a chunked body, and how it ended.
    async fn rest_of_chunks(&mut self) -> (Vec<String>, Chunk) {
        let mut chunks = Vec::new();
        loop {
            match self.chunk().await {
                Chunk::Data(data) => chunks.push(data),
                ending => return (chunks, ending),
            }
        }
    }

    /// A complete body after `head` (chunked or with a content length).
    async fn body(&mut self, head: &Head) -> String {
        if head.is_chunked() {
            let (chunks, ending) = self.rest_of_chunks().await;
            assert_eq!(ending, Chunk::End, "the body was cut off after {chunks:?}");
            return chunks.concat();
        }
        let length: usize = head
            .header("content-length")
            .unwrap_or_else(|| panic!("neither chunked nor a content length: {head:?}"))
            .parse()
            .expect("a numeric content length");
        let body = self.bytes(length).await.unwrap_or_else(|| panic!("the body was cut off: {head:?}"));
        String::from_utf8(body).expect("a UTF-8 body")
    }

    /// One complete request on this connection.
    async fn get(&mut self, path: &str) -> Response {
        self.send_get(path).await;
        let head = self.head().await;
        let body = self.body(&head).await;
        Response { head, body }
    }

    /// Whether the server closed the connection without sending anything
    /// more (waits for it, under the hang guard).
    async fn closed_by_server(&mut self) -> bool {
        self.buffer.is_empty() && !self.fill().await
    }
}

/// One request on a fresh connection.
async fn get(addr: SocketAddr, path: &str) -> Response {
    Client::connect(addr).await.get(path).await
}

/// Asserts a 200 answer with exactly `body`.
#[track_caller]
fn assert_ok(response: &Response, body: &str) {
    assert_eq!((response.head.status, response.body.as_str()), (200, body), "{response:?}");
}

// ---------------------------------------------------------------------------
// The service under test.
// ---------------------------------------------------------------------------

/// Serves `app` on 127.0.0.1 from a background task; its address.
async fn serve(app: axum::Router) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the test service");
    let addr = listener.local_addr().expect("its address");
    tokio::spawn(async move {
        axum::serve(listener, app).await.expect("the test service stopped");
    });
    addr
}

/// A registry with the edge loadable (edge-v1 installed), mounted and served.
struct Service {
    artifact: Artifact,
    context: EdgeContext,
    verdant: Verdant,
    edge: Handle<dyn Edge>,
    addr: SocketAddr,
}

impl Service {
    /// Registered, mounted and served, but not attached.
    async fn registered() -> Result<Service, Box<dyn StdError>> {
        let artifact = Artifact::new("edge-v1");
        let context = EdgeContext::default();
        let verdant = Verdant::builder(context.clone()).add::<dyn Edge>("edge", artifact.path()).build()?;
        let edge = verdant.handle::<dyn Edge>("edge")?;
        let app = axum::Router::new().merge(verdant::axum::mount(edge.clone(), |e| e.router())?);
        let addr = serve(app).await;
        Ok(Service { artifact, context, verdant, edge, addr })
    }

    /// Attached (edge-v1), mounted and served.
    async fn attached() -> Result<Service, Box<dyn StdError>> {
        let service = Service::registered().await?;
        let report = service.verdant.reload(None).await?;
        assert!(matches!(report.outcome("edge"), Some(Outcome::Swapped { .. })), "{report}");
        assert_eq!(service.edge.get()?.version(), 1);
        Ok(service)
    }

    /// Installs edge-v2 and reloads; the reload must swap it in.
    async fn reload_to_v2(&self) -> TestResult {
        self.artifact.install("edge-v2");
        let report = self.verdant.reload(None).await?;
        match report.outcome("edge") {
            Some(Outcome::Swapped { old: Some(old), new }) => {
                assert_eq!(
                    (old.package_version.as_str(), new.package_version.as_str()),
                    ("0.1.0", "0.2.0"),
                    "{report}"
                );
            }
            _ => panic!("expected edge-v1 swapped for edge-v2: {report}"),
        }
        assert_eq!(self.edge.get()?.version(), 2);
        Ok(())
    }

    /// Waits (off the runtime's workers) until the detach hooks that ran
    /// are exactly `versions`.
    async fn wait_detached(&self, versions: &[u32]) {
        let shared = self.context.shared.clone();
        let expected = versions.to_vec();
        let done = tokio::task::spawn_blocking(move || eventually(|| shared.detached() == expected))
            .await
            .expect("the waiting thread");
        assert!(
            done,
            "detached {:?}, expected {versions:?}\n{}",
            self.context.shared.detached(),
            self.verdant.status()
        );
    }
}

/// A listener on 127.0.0.1 that answers each connection with `line` and a
/// newline; its port.
async fn line_server(line: &'static str) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind the line server");
    let port = listener.local_addr().expect("its address").port();
    tokio::spawn(async move {
        while let Ok((mut socket, _)) = listener.accept().await {
            let _ = socket.write_all(format!("{line}\n").as_bytes()).await;
            let _ = socket.shutdown().await;
        }
    });
    port
}

// ---------------------------------------------------------------------------
// The tests.
// ---------------------------------------------------------------------------

/// Handlers compiled into the library use tokio timers, tokio I/O,
/// `verdant_loadable::spawn` with a timer and a plain `tokio::spawn`: each answers
/// 200 with its own text, on version 1 and again on version 2 (a second
/// copy of the library, with its own copy of tokio's thread-locals).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handlers_use_tokio_timers_io_and_tasks() -> TestResult {
    let service = Service::attached().await?;
    let port = line_server("hello from the test's listener").await;
    for version in [1, 2] {
        if version == 2 {
            service.reload_to_v2().await?;
        }
        let addr = service.addr;
        assert_ok(&get(addr, "/edge/version").await, &format!("edge {version}"));
        assert_ok(&get(addr, "/edge/sleep/20").await, &format!("slept 20 ms on edge {version}"));
        assert_ok(&get(addr, &format!("/edge/tcp/{port}")).await, "hello from the test's listener");
        assert_ok(&get(addr, "/edge/spawn-timer").await, &format!("timer fired on edge {version}"));
        assert_ok(&get(addr, "/edge/spawn-plain").await, &format!("plain task on edge {version}"));
        // The same routes, one after the other on one keep-alive connection.
        let mut client = Client::connect(addr).await;
        for (path, body) in [
            ("/edge/sleep/1".to_owned(), format!("slept 1 ms on edge {version}")),
            (format!("/edge/tcp/{port}"), "hello from the test's listener".to_owned()),
            ("/edge/spawn-timer".to_owned(), format!("timer fired on edge {version}")),
            ("/edge/spawn-plain".to_owned(), format!("plain task on edge {version}")),
        ] {
            let response = client.get(&path).await;
            assert_ok(&response, &body);
            assert!(!response.head.closes(), "{response:?}");
        }
    }
    // The requests left nothing pinned: version 1 was detached.
    service.wait_detached(&[1]).await;
    Ok(())
}

/// A panic in a handler, before or after an await, answers a plain 500
/// that names the loadable; the process survives, the same keep-alive
/// connection and new ones keep being served, and the panicked requests
/// leave their version unpinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_handler_panic_answers_500_and_the_service_keeps_serving() -> TestResult {
    let service = Service::attached().await?;
    let mut client = Client::connect(service.addr).await;
    for path in ["/edge/panic", "/edge/panic-later", "/edge/panic"] {
        let response = client.get(path).await;
        assert_eq!(response.head.status, 500, "{path}: {response:?}");
        assert!(response.body.contains("`edge`"), "the 500 names the loadable: {response:?}");
        assert!(!response.body.contains("as designed"), "the 500 does not carry the panic message: {response:?}");
        assert!(
            response.head.header("content-type").is_some_and(|t| t.starts_with("text/plain")),
            "a plain-text 500: {response:?}"
        );
        // hyper keeps the connection after a complete 500.
        assert!(!response.head.closes(), "{response:?}");
        assert_ok(&client.get("/edge/version").await, "edge 1");
        assert_ok(&get(service.addr, "/edge/version").await, "edge 1");
    }
    // Nothing that panicked still pins version 1.
    service.reload_to_v2().await?;
    service.wait_detached(&[1]).await;
    assert_ok(&client.get("/edge/version").await, "edge 2");
    Ok(())
}

/// A panic in the middle of a streaming body: the response started 200, the
/// client gets the chunks before the panic, then the connection ends
/// without the terminating chunk (an aborted response, not a clean one);
/// the service keeps serving, and the aborted body left nothing pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_mid_body_aborts_the_response_and_the_service_keeps_serving() -> TestResult {
    let service = Service::attached().await?;
    let mut client = Client::connect(service.addr).await;
    client.send_get("/edge/stream?chunks=5&delay_ms=20&panic_after=2").await;
    let head = client.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.is_chunked(), "a streaming body is chunked: {head:?}");
    let (chunks, ending) = client.rest_of_chunks().await;
    assert_eq!(ending, Chunk::Aborted, "the response must not end cleanly after a panic; got {chunks:?}");
    let before_panic = ["chunk 0 of edge 1\n", "chunk 1 of edge 1\n"];
    assert!(
        chunks.len() <= before_panic.len() && chunks.iter().zip(before_panic).all(|(got, want)| got == want),
        "at most the chunks before the panic: {chunks:?}"
    );
    assert!(client.closed_by_server().await, "the aborted connection is closed");

    assert_ok(&get(service.addr, "/edge/version").await, "edge 1");
    // The same route without the panic streams every chunk and ends cleanly,
    // so the abort above was the panic's doing.
    let mut client = Client::connect(service.addr).await;
    client.send_get("/edge/stream?chunks=5&delay_ms=1").await;
    assert_eq!(client.head().await.status, 200);
    let (chunks, ending) = client.rest_of_chunks().await;
    assert_eq!(ending, Chunk::End);
    assert_eq!(chunks, (0..5).map(|i| format!("chunk {i} of edge 1\n")).collect::<Vec<_>>());
    assert_ok(&client.get("/edge/version").await, "edge 1");

    service.reload_to_v2().await?;
    service.wait_detached(&[1]).await;
    assert_ok(&get(service.addr, "/edge/version").await, "edge 2");
    Ok(())
}

/// A body that version 1 is streaming completes on version 1 while version
/// 2 is swapped in and serves new requests; version 1 is detached only
/// once the body ended, and the next request on the same keep-alive
/// connection is served by version 2.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_streaming_body_finishes_on_its_version_across_a_reload() -> TestResult {
    let service = Service::attached().await?;
    // The body waits for one line from this gate before each chunk after
    // the first, so the test, not a timer, decides when it goes on.
    let gate_listener = TcpListener::bind("127.0.0.1:0").await?;
    let gate_port = gate_listener.local_addr()?.port();

    let mut client = Client::connect(service.addr).await;
    client.send_get(&format!("/edge/stream?chunks=6&gate={gate_port}")).await;
    let (mut gate, _) = guard("waiting for the handler to open the gate", gate_listener.accept()).await?;
    let head = client.head().await;
    assert_eq!(head.status, 200, "{head:?}");
    assert!(head.is_chunked(), "{head:?}");
    assert_eq!(client.chunk().await, Chunk::Data("chunk 0 of edge 1\n".to_owned()));

    // Reload while the body is streaming: it succeeds and swaps.
    service.reload_to_v2().await?;
    assert_ok(&get(service.addr, "/edge/version").await, "edge 2");
    let status = service.verdant.status();
    let edge = &status.loadables[0];
    assert_eq!(edge.current.as_ref().map(|v| v.package_version.as_str()), Some("0.2.0"), "{status}");
    let v1 = edge.retired.iter().find(|r| r.version.package_version == "0.1.0").expect("v1 retired");
    assert!(v1.in_flight > 0, "the streaming body pins v1:\n{status}");
    assert_eq!(v1.detach, DetachState::Pending, "{status}");
    assert!(service.context.shared.detached().is_empty(), "v1 detached while its body streams:\n{status}");

    // Let one more chunk through: still version 1, still attached.
    guard("opening the gate", gate.write_all(b"go\n")).await?;
    assert_eq!(client.chunk().await, Chunk::Data("chunk 1 of edge 1\n".to_owned()));
    assert!(service.context.shared.detached().is_empty(), "{}", service.verdant.status());

    // Then the rest.
    guard("opening the gate", gate.write_all(b"go\ngo\ngo\ngo\n")).await?;
    let (chunks, ending) = client.rest_of_chunks().await;
    assert_eq!(ending, Chunk::End, "the body completes: {chunks:?}");
    assert_eq!(chunks, (2..6).map(|i| format!("chunk {i} of edge 1\n")).collect::<Vec<_>>());
    service.wait_detached(&[1]).await;

    // The same connection, next request: version 2.
    let response = client.get("/edge/version").await;
    assert_ok(&response, "edge 2");
    Ok(())
}

/// The answers of the mount itself: 503 while the loadable is registered but
/// not attached (and the same app serves once it is), 404 for paths that
/// no router knows, inside the namespace and outside it, and 404 once the
/// registry was revoked.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_mount_answers_503_before_attach_and_404_after_revoke() -> TestResult {
    let service = Service::registered().await?;
    let addr = service.addr;
    let not_attached = get(addr, "/edge/version").await;
    assert_eq!(not_attached.head.status, 503, "{not_attached:?}");
    assert!(not_attached.body.contains("`edge` is not attached"), "{not_attached:?}");

    // The mount looks the version up per request: attaching is enough.
    let report = service.verdant.reload(None).await?;
    assert!(matches!(report.outcome("edge"), Some(Outcome::Swapped { .. })), "{report}");
    assert_ok(&get(addr, "/edge/version").await, "edge 1");

    for path in ["/edge/nope", "/nope", "/edgeversion", "/version"] {
        let response = get(addr, path).await;
        assert_eq!(response.head.status, 404, "{path}: {response:?}");
    }

    let mut client = Client::connect(addr).await;
    assert_ok(&client.get("/edge/version").await, "edge 1");
    service.verdant.revoke();
    // A keep-alive connection opened before the revoke, and a new one.
    for response in [client.get("/edge/version").await, get(addr, "/edge/version").await] {
        assert_eq!(response.head.status, 404, "{response:?}");
        assert!(response.body.contains("`edge` was revoked"), "{response:?}");
    }
    service.wait_detached(&[1]).await;
    Ok(())
}

/// A router taken from a pinned version, and served after that version was
/// replaced and detached, refuses with 503 instead of running code of a
/// detached instance (or crashing); while its version lives it serves.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_of_a_detached_version_answers_503() -> TestResult {
    let service = Service::attached().await?;
    let router = service.edge.get()?.router();
    let addr = serve(router).await;
    let mut client = Client::connect(addr).await;
    assert_ok(&client.get("/version").await, "edge 1");
    assert_ok(&client.get("/sleep/1").await, "slept 1 ms on edge 1");

    service.reload_to_v2().await?;
    // Holding the router does not keep version 1 attached.
    service.wait_detached(&[1]).await;

    for response in [client.get("/version").await, get(addr, "/version").await, get(addr, "/sleep/1").await] {
        assert_eq!(response.head.status, 503, "{response:?}");
        assert!(response.body.contains("`edge`") && response.body.contains("replaced"), "{response:?}");
    }
    // The mounted service is unaffected.
    assert_ok(&get(service.addr, "/edge/version").await, "edge 2");
    Ok(())
}

/// `mount` refuses a loadable whose name cannot be a path segment, before
/// any router is built, and accepts one that can.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mount_refuses_a_name_that_is_not_a_path_segment() -> TestResult {
    let artifact = Artifact::new("edge-v1");
    let bad = ["my shop", "a/b", "", "shop?x", "%20", ".", ".."];
    let mut builder = Verdant::builder(EdgeContext::default()).add::<dyn Edge>("edge-1.x_~", artifact.path());
    for name in bad {
        builder = builder.add::<dyn Edge>(name, artifact.path());
    }
    let verdant = builder.build()?;
    for name in bad {
        let handle = verdant.handle::<dyn Edge>(name)?;
        match verdant::axum::mount(handle, |e| e.router()) {
            Err(verdant::Error::InvalidMountName { name: refused }) => assert_eq!(refused, name),
            Err(other) => panic!("{name:?}: expected InvalidMountName, got {other:?}"),
            Ok(_) => panic!("{name:?}: mounted a name that is not a path segment"),
        }
    }
    // Every allowed character, and the mount serves under that name.
    verdant.reload(None).await?;
    let good = verdant.handle::<dyn Edge>("edge-1.x_~")?;
    let addr = serve(verdant::axum::mount(good, |e| e.router())?).await;
    assert_ok(&get(addr, "/edge-1.x_~/version").await, "edge 1");
    Ok(())
}

/// A client that hangs up in the middle of a streaming body releases the
/// version the body pinned: version 1, replaced meanwhile, is detached
/// although its body never finished.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_hanging_up_mid_body_releases_its_version() -> TestResult {
    let service = Service::attached().await?;
    let gate_listener = TcpListener::bind("127.0.0.1:0").await?;
    let gate_port = gate_listener.local_addr()?.port();
    let mut client = Client::connect(service.addr).await;
    client.send_get(&format!("/edge/stream?chunks=1000&gate={gate_port}")).await;
    let (gate, _) = guard("waiting for the handler to open the gate", gate_listener.accept()).await?;
    assert_eq!(client.head().await.status, 200);
    assert_eq!(client.chunk().await, Chunk::Data("chunk 0 of edge 1\n".to_owned()));
    service.reload_to_v2().await?;
    let status = service.verdant.status();
    assert!(status.loadables[0].retired.iter().any(|r| r.in_flight > 0), "the body pins v1:\n{status}");

    drop(client);
    service.wait_detached(&[1]).await;
    drop(gate);
    Ok(())
}
