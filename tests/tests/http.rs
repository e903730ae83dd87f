//! End-to-end HTTP: the edge fixtures' routers served by a real axum server
//! through `verdant::axum::mount`, spoken to with hyper's HTTP/1.1 client
//! connection (`verdant_tests::client`), so that each test decides which
//! requests share a keep-alive connection and when a streaming body's next
//! frame is read.
//!
//! Every network step is bounded by a hang guard, so a bug fails a test
//! instead of hanging it; that bound is never a performance assertion.

use std::error::Error as StdError;
use std::net::SocketAddr;

use axum::http::StatusCode;
use fixture_api::edge::{Edge, EdgeContext};
use hyper::body::Incoming;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use verdant::{DetachState, Handle, Outcome, Verdant};
use verdant_tests::client::{guard, next_chunk, serve, Answer, Connection};
use verdant_tests::{eventually, Artifact};

type TestResult = Result<(), Box<dyn StdError>>;

/// `GET path` on a connection of its own.
async fn get(addr: SocketAddr, path: &str) -> Answer {
    verdant_tests::client::get(addr, path, &[]).await
}

/// Asserts a 200 answer with exactly `body`.
#[track_caller]
fn assert_ok(answer: &Answer, body: &str) {
    assert_eq!((answer.status, answer.body.as_str()), (StatusCode::OK, body), "{answer:?}");
}

/// Starts a streaming `GET path`: asserts a 200 with a chunked body and
/// returns the body, its frames still to read.
async fn start_stream(client: &mut Connection, path: &str) -> Incoming {
    let response = client.start(path, &[]).await;
    assert_eq!(response.status(), StatusCode::OK, "{path}: {response:?}");
    let chunked = response
        .headers()
        .get("transfer-encoding")
        .and_then(|value| value.to_str().ok())
        .is_some_and(|value| value.eq_ignore_ascii_case("chunked"));
    assert!(chunked, "a streaming body is chunked: {response:?}");
    response.into_body()
}

/// How a streaming body ended after the chunks read so far.
#[derive(Debug, PartialEq, Eq)]
enum Ending {
    /// Cleanly, with the terminating chunk.
    Complete,
    /// The connection broke off before the terminating chunk.
    Aborted,
}

/// Every remaining data frame of `body`, and how it ended.
async fn rest_of_chunks(body: &mut Incoming) -> (Vec<String>, Ending) {
    let mut chunks = Vec::new();
    loop {
        match next_chunk(body).await {
            Some(Ok(chunk)) => chunks.push(chunk),
            Some(Err(_)) => return (chunks, Ending::Aborted),
            None => return (chunks, Ending::Complete),
        }
    }
}

/// The next data frame of `body`, which must be there.
async fn chunk(body: &mut Incoming) -> String {
    match next_chunk(body).await {
        Some(Ok(chunk)) => chunk,
        other => panic!("expected a chunk, got {other:?}"),
    }
}

// ---------------------------------------------------------------------------
// The service under test.
// ---------------------------------------------------------------------------

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
        let mut client = Connection::open(addr).await;
        for (path, body) in [
            ("/edge/sleep/1".to_owned(), format!("slept 1 ms on edge {version}")),
            (format!("/edge/tcp/{port}"), "hello from the test's listener".to_owned()),
            ("/edge/spawn-timer".to_owned(), format!("timer fired on edge {version}")),
            ("/edge/spawn-plain".to_owned(), format!("plain task on edge {version}")),
        ] {
            let response = client.get(&path, &[]).await;
            assert_ok(&response, &body);
            assert!(!response.closes(), "{response:?}");
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
    let mut client = Connection::open(service.addr).await;
    for path in ["/edge/panic", "/edge/panic-later", "/edge/panic"] {
        let response = client.get(path, &[]).await;
        assert_eq!(response.status, StatusCode::INTERNAL_SERVER_ERROR, "{path}: {response:?}");
        assert!(response.body.contains("`edge`"), "the 500 names the loadable: {response:?}");
        assert!(!response.body.contains("as designed"), "the 500 does not carry the panic message: {response:?}");
        assert!(
            response.header("content-type").is_some_and(|t| t.starts_with("text/plain")),
            "a plain-text 500: {response:?}"
        );
        // hyper keeps the connection after a complete 500.
        assert!(!response.closes(), "{response:?}");
        assert_ok(&client.get("/edge/version", &[]).await, "edge 1");
        assert_ok(&get(service.addr, "/edge/version").await, "edge 1");
    }
    // Nothing that panicked still pins version 1.
    service.reload_to_v2().await?;
    service.wait_detached(&[1]).await;
    assert_ok(&client.get("/edge/version", &[]).await, "edge 2");
    Ok(())
}

/// A panic in the middle of a streaming body: the response started 200, the
/// client gets the chunks before the panic, then the connection ends
/// without the terminating chunk (an aborted response, not a clean one);
/// the service keeps serving, and the aborted body left nothing pinned.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_panic_mid_body_aborts_the_response_and_the_service_keeps_serving() -> TestResult {
    let service = Service::attached().await?;
    let mut client = Connection::open(service.addr).await;
    let mut body = start_stream(&mut client, "/edge/stream?chunks=5&delay_ms=20&panic_after=2").await;
    let (chunks, ending) = rest_of_chunks(&mut body).await;
    assert_eq!(ending, Ending::Aborted, "the response must not end cleanly after a panic; got {chunks:?}");
    let before_panic = ["chunk 0 of edge 1\n", "chunk 1 of edge 1\n"];
    assert!(
        chunks.len() <= before_panic.len() && chunks.iter().zip(before_panic).all(|(got, want)| got == want),
        "at most the chunks before the panic: {chunks:?}"
    );
    // The aborted connection is closed.
    client.wait_closed_by_server().await;

    assert_ok(&get(service.addr, "/edge/version").await, "edge 1");
    // The same route without the panic streams every chunk and ends cleanly,
    // so the abort above was the panic's doing.
    let mut client = Connection::open(service.addr).await;
    let mut body = start_stream(&mut client, "/edge/stream?chunks=5&delay_ms=1").await;
    let (chunks, ending) = rest_of_chunks(&mut body).await;
    assert_eq!(ending, Ending::Complete);
    assert_eq!(chunks, (0..5).map(|i| format!("chunk {i} of edge 1\n")).collect::<Vec<_>>());
    assert_ok(&client.get("/edge/version", &[]).await, "edge 1");

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

    let mut client = Connection::open(service.addr).await;
    let mut body = start_stream(&mut client, &format!("/edge/stream?chunks=6&gate={gate_port}")).await;
    let (mut gate, _) = guard("waiting for the handler to open the gate", gate_listener.accept()).await?;
    assert_eq!(chunk(&mut body).await, "chunk 0 of edge 1\n");

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
    assert_eq!(chunk(&mut body).await, "chunk 1 of edge 1\n");
    assert!(service.context.shared.detached().is_empty(), "{}", service.verdant.status());

    // Then the rest.
    guard("opening the gate", gate.write_all(b"go\ngo\ngo\ngo\n")).await?;
    let (chunks, ending) = rest_of_chunks(&mut body).await;
    assert_eq!(ending, Ending::Complete, "the body completes: {chunks:?}");
    assert_eq!(chunks, (2..6).map(|i| format!("chunk {i} of edge 1\n")).collect::<Vec<_>>());
    service.wait_detached(&[1]).await;

    // The same connection, next request: version 2.
    let response = client.get("/edge/version", &[]).await;
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
    assert_eq!(not_attached.status, StatusCode::SERVICE_UNAVAILABLE, "{not_attached:?}");
    assert!(not_attached.body.contains("`edge` is not attached"), "{not_attached:?}");

    // The mount looks the version up per request: attaching is enough.
    let report = service.verdant.reload(None).await?;
    assert!(matches!(report.outcome("edge"), Some(Outcome::Swapped { .. })), "{report}");
    assert_ok(&get(addr, "/edge/version").await, "edge 1");

    for path in ["/edge/nope", "/nope", "/edgeversion", "/version"] {
        let response = get(addr, path).await;
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{path}: {response:?}");
    }

    let mut client = Connection::open(addr).await;
    assert_ok(&client.get("/edge/version", &[]).await, "edge 1");
    service.verdant.revoke();
    // A keep-alive connection opened before the revoke, and a new one.
    for response in [client.get("/edge/version", &[]).await, get(addr, "/edge/version").await] {
        assert_eq!(response.status, StatusCode::NOT_FOUND, "{response:?}");
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
    let mut client = Connection::open(addr).await;
    assert_ok(&client.get("/version", &[]).await, "edge 1");
    assert_ok(&client.get("/sleep/1", &[]).await, "slept 1 ms on edge 1");

    service.reload_to_v2().await?;
    // Holding the router does not keep version 1 attached.
    service.wait_detached(&[1]).await;

    for response in [client.get("/version", &[]).await, get(addr, "/version").await, get(addr, "/sleep/1").await] {
        assert_eq!(response.status, StatusCode::SERVICE_UNAVAILABLE, "{response:?}");
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
    let mut client = Connection::open(service.addr).await;
    let mut body = start_stream(&mut client, &format!("/edge/stream?chunks=1000&gate={gate_port}")).await;
    let (gate, _) = guard("waiting for the handler to open the gate", gate_listener.accept()).await?;
    assert_eq!(chunk(&mut body).await, "chunk 0 of edge 1\n");
    service.reload_to_v2().await?;
    let status = service.verdant.status();
    assert!(status.loadables[0].retired.iter().any(|r| r.in_flight > 0), "the body pins v1:\n{status}");

    drop(body);
    client.close();
    service.wait_detached(&[1]).await;
    drop(gate);
    Ok(())
}
