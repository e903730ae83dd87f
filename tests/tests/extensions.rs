//! HTTP extensions from a manifest, end to end: real extension libraries
//! (`tests/fixtures/ext-v1`, `ext-v2`: `fixture_api::ext::StampExtension`)
//! listed in a real `verdant.toml`, served through `verdant::axum::pipeline`
//! by a real axum server, spoken to over loopback with hyper's client.
//! Each test edits the manifest and triggers a reload the way an operator
//! would, and checks what appears and disappears.
//!
//! The stamp extension's middleware puts its tag in front of the response
//! header `x-trail`, so `x-trail: a,b` means middleware `a` ran before `b`.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

use axum::http::StatusCode;
use axum::routing::get;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpListener;
use verdant::{DetachState, Error, Outcome, Verdant};
use verdant_tests::client::{self, guard, next_chunk, Connection};
use verdant_tests::{eventually, fixture, Artifact};

type TestResult = Result<(), Box<dyn StdError>>;

/// One `[[loadable]]` of a test manifest.
#[derive(Clone)]
struct Listed {
    name: &'static str,
    path: PathBuf,
    mount: Option<&'static str>,
    group: Option<&'static str>,
    settings: Vec<(&'static str, &'static str)>,
}

impl Listed {
    /// The stamp extension `name` from `path`, mounted at `/<name>`.
    fn mounted(name: &'static str, path: &Path) -> Listed {
        let mount: &'static str = Box::leak(format!("/{name}").into_boxed_str());
        Listed { name, path: path.to_owned(), mount: Some(mount), group: None, settings: Vec::new() }
    }

    fn setting(mut self, key: &'static str, value: &'static str) -> Listed {
        self.settings.push((key, value));
        self
    }

    fn group(mut self, group: &'static str) -> Listed {
        self.group = Some(group);
        self
    }
}

/// A manifest file the test rewrites, and the service it configures.
struct Service {
    _dir: tempfile::TempDir,
    manifest: PathBuf,
    verdant: Verdant,
    addr: SocketAddr,
}

impl Service {
    /// Writes `listed` as the manifest, builds the registry from it,
    /// attaches, and serves the pipeline with a host fallback that has
    /// `/host` and `/host-panic` (which panics in host code).
    async fn start(listed: &[Listed]) -> Result<Service, Box<dyn StdError>> {
        let dir = tempfile::tempdir()?;
        let manifest = dir.path().join("verdant.toml");
        write_manifest(&manifest, listed);
        let verdant = Verdant::builder(()).manifest(&manifest).build()?;
        let report = verdant.attach()?;
        assert!(report.is_success(), "{report}");
        let fallback =
            axum::Router::new().route("/host", get(|| async { "host route\n" })).route("/host-panic", get(host_panics));
        let pipeline = verdant::axum::pipeline(&verdant).fallback(fallback);
        let addr = client::serve(axum::Router::new().fallback_service(pipeline)).await;
        Ok(Service { _dir: dir, manifest, verdant, addr })
    }

    /// Rewrites the manifest and reloads, as `kill -PIPE` would.
    async fn relist(&self, listed: &[Listed]) -> Result<verdant::ReloadReport, Error> {
        write_manifest(&self.manifest, listed);
        self.verdant.reload(None).await
    }

    async fn get(&self, path: &str) -> client::Answer {
        client::get(self.addr, path, &[]).await
    }
}

async fn host_panics() -> &'static str {
    panic!("a host handler panicked under the pipeline, as designed")
}

fn write_manifest(path: &Path, listed: &[Listed]) {
    let mut text = String::from("# written by tests/tests/extensions.rs\n");
    for entry in listed {
        text.push_str(&format!("\n[[loadable]]\nname = {:?}\npath = {:?}\n", entry.name, entry.path));
        if let Some(mount) = entry.mount {
            text.push_str(&format!("mount = {mount:?}\n"));
        }
        if let Some(group) = entry.group {
            text.push_str(&format!("group = {group:?}\n"));
        }
        if !entry.settings.is_empty() {
            text.push_str("[loadable.settings]\n");
            for (key, value) in &entry.settings {
                text.push_str(&format!("{key} = {value:?}\n"));
            }
        }
    }
    // Written beside and renamed into place, as an editor saving it would.
    let staging = path.with_extension("toml.tmp");
    std::fs::write(&staging, text).expect("write the manifest");
    std::fs::rename(&staging, path).expect("rename the manifest into place");
}

/// Adding means live: a new entry serves its routes and its middleware on
/// the first request after the reload; unchanged entries are untouched.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_added_extension_serves_on_the_first_request_after_the_reload() -> TestResult {
    let v1 = fixture("ext-v1");
    let service = Service::start(&[Listed::mounted("a", &v1)]).await?;
    let hello = service.get("/a/hello").await;
    assert_eq!((hello.status, hello.body.as_str()), (StatusCode::OK, "hello from a v1\n"));
    assert_eq!(hello.header("x-trail"), Some("a"));
    assert_eq!(service.get("/b/hello").await.status, StatusCode::NOT_FOUND);

    let report = service.relist(&[Listed::mounted("a", &v1), Listed::mounted("b", &v1)]).await?;
    assert!(matches!(report.outcome("a"), Some(Outcome::Unchanged { .. })), "{report}");
    assert!(matches!(report.outcome("b"), Some(Outcome::Swapped { old: None, .. })), "{report}");

    let hello = service.get("/b/hello").await;
    assert_eq!((hello.status, hello.body.as_str()), (StatusCode::OK, "hello from b v1\n"));
    assert_eq!(hello.header("x-trail"), Some("a,b"), "both middlewares, in manifest order");
    assert_eq!(service.get("/a/hello").await.header("x-trail"), Some("a,b"));
    Ok(())
}

/// The middlewares run in manifest order, for routes, host fallback routes
/// and 404s alike, and a reorder of the manifest reorders them.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn middleware_runs_in_manifest_order_and_follows_a_reorder() -> TestResult {
    let v1 = fixture("ext-v1");
    let (a, b, c) = (Listed::mounted("a", &v1), Listed::mounted("b", &v1), Listed::mounted("c", &v1));
    let service = Service::start(&[a.clone(), b.clone(), c.clone()]).await?;
    for path in ["/a/hello", "/c/hello", "/host", "/nowhere"] {
        assert_eq!(service.get(path).await.header("x-trail"), Some("a,b,c"), "{path}");
    }
    assert_eq!(service.get("/nowhere").await.status, StatusCode::NOT_FOUND);
    assert_eq!(service.get("/host").await.body, "host route\n");

    let report = service.relist(&[c.clone(), a.clone(), b.clone()]).await?;
    assert!(report.is_success(), "{report}");
    for path in ["/a/hello", "/b/hello", "/host", "/nowhere"] {
        assert_eq!(service.get(path).await.header("x-trail"), Some("c,a,b"), "{path}");
    }
    // A middleware that answers by itself: the ones before it still wrap
    // its answer, the ones after it never run.
    let refused = client::get(service.addr, "/a/hello", &[("x-refuse-in", "a")]).await;
    assert_eq!((refused.status, refused.header("x-trail")), (StatusCode::UNAUTHORIZED, Some("c,a")));
    let layout = verdant::axum::pipeline(&service.verdant).describe();
    assert_eq!(layout.middleware, ["c", "a", "b"]);
    Ok(())
}

/// Removal means gone: a removed extension's routes answer 404 and its
/// middleware is out of the chain for every new request, while a streaming
/// response it started before the removal completes intact; its version
/// detaches once that response is done.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_extension_is_gone_for_new_requests_while_its_stream_completes() -> TestResult {
    let v1 = fixture("ext-v1");
    let (a, b) = (Listed::mounted("a", &v1), Listed::mounted("b", &v1));
    let service = Service::start(&[a.clone(), b.clone()]).await?;

    let gate = TcpListener::bind("127.0.0.1:0").await?;
    let port = gate.local_addr()?.port();
    let mut streaming = Connection::open(service.addr).await;
    let response = streaming.start(&format!("/a/stream?chunks=3&gate={port}"), &[]).await;
    let (mut gate_line, _) = guard("the library connecting to the gate", gate.accept()).await?;
    assert_eq!(response.status(), StatusCode::OK);
    assert_eq!(response.headers().get("x-trail").and_then(|v| v.to_str().ok()), Some("a,b"));
    let mut body = response.into_body();
    assert_eq!(next_chunk(&mut body).await.transpose()?.as_deref(), Some("chunk 0 of edge 1\n"));

    let report = service.relist(std::slice::from_ref(&b)).await?;
    assert!(report.outcome("a").is_none(), "a is not part of the reload any more: {report}");
    let gone = service.get("/a/hello").await;
    assert_eq!(gone.status, StatusCode::NOT_FOUND, "{}", gone.body);
    assert_eq!(gone.header("x-trail"), Some("b"), "a's middleware is out of the chain");
    assert_eq!(service.get("/b/hello").await.header("x-trail"), Some("b"));
    assert!(!service.verdant.names().contains(&"a".to_owned()));

    let removed = |verdant: &Verdant| {
        verdant
            .status()
            .removed
            .iter()
            .find(|l| l.name == "a")
            .map(|l| l.retired.iter().map(|r| (r.in_flight, r.detach.clone())).collect::<Vec<_>>())
    };
    // One request in flight: the stream. The pipeline's snapshot that the
    // request still runs on keeps the version attached too, but it is not a
    // request, so it is not counted.
    let pinned = removed(&service.verdant);
    assert_eq!(
        pinned,
        Some(vec![(1, DetachState::Pending)]),
        "the stream is the one request on the removed version\n{}",
        service.verdant.status()
    );
    // The stream started before the removal goes on, on the removed version.
    for i in 1..3 {
        gate_line.write_all(b"go\n").await?;
        assert_eq!(next_chunk(&mut body).await.transpose()?, Some(format!("chunk {i} of edge 1\n")));
    }
    drop(gate_line);
    assert!(next_chunk(&mut body).await.is_none(), "the body ends cleanly");
    drop(body);
    let verdant = service.verdant.clone();
    let detached =
        tokio::task::spawn_blocking(move || eventually(|| removed(&verdant) == Some(vec![(0, DetachState::Detached)])))
            .await?;
    assert!(detached, "the removed version detaches once its stream ended:\n{}", service.verdant.status());
    assert!(service.verdant.status().to_string().contains("a ("), "{}", service.verdant.status());
    Ok(())
}

/// A changed file is reloaded, an unchanged one is untouched, and a
/// changed setting re-attaches the extension with the new setting.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_changed_file_or_setting_is_reloaded_and_the_rest_untouched() -> TestResult {
    let artifact = Artifact::new("ext-v1");
    let v1 = fixture("ext-v1");
    let a = Listed::mounted("a", artifact.path());
    let b = Listed::mounted("b", &v1);
    let service = Service::start(&[a.clone(), b.clone()]).await?;
    assert_eq!(service.get("/a/hello").await.body, "hello from a v1\n");

    artifact.install("ext-v2");
    let report = service.relist(&[a.clone(), b.clone()]).await?;
    assert!(matches!(report.outcome("a"), Some(Outcome::Swapped { old: Some(_), .. })), "{report}");
    assert!(matches!(report.outcome("b"), Some(Outcome::Unchanged { .. })), "{report}");
    let hello = service.get("/a/hello").await;
    assert_eq!(hello.body, "hello from a v2\n");
    assert_eq!((hello.header("x-stamp-a"), hello.header("x-stamp-b")), (Some("2"), Some("1")));

    let report = service.relist(&[a.clone(), b.clone().setting("tag", "bee")]).await?;
    assert!(matches!(report.outcome("b"), Some(Outcome::Swapped { old: Some(_), .. })), "{report}");
    assert!(matches!(report.outcome("a"), Some(Outcome::Unchanged { .. })), "{report}");
    assert_eq!(service.get("/b/hello").await.body, "hello from bee v1\n");
    assert_eq!(service.get("/a/hello").await.header("x-trail"), Some("a,bee"));
    Ok(())
}

/// A manifest that does not validate changes nothing: the reload fails
/// with file, line and column, and every route and middleware keeps
/// serving as before.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_bad_manifest_changes_nothing() -> TestResult {
    let v1 = fixture("ext-v1");
    let a = Listed::mounted("a", &v1);
    let service = Service::start(std::slice::from_ref(&a)).await?;
    let generation = service.verdant.status().generation;

    // A duplicate name, on the line of the second `name`.
    let error = service.relist(&[a.clone(), Listed::mounted("b", &v1), a.clone()]).await.unwrap_err();
    let Error::Manifest(bad) = &error else { panic!("expected a manifest error, got {error}") };
    assert_eq!((bad.line(), bad.column()), (14, 8), "{error}");
    assert!(
        error.to_string().contains("verdant.toml:14:8: duplicate loadable name `a` (first declared on line 4)"),
        "{error}"
    );
    assert!(error.to_string().contains("duplicate"), "{error}");

    // Syntax, an unknown key, a missing file: refused the same way.
    std::fs::write(&service.manifest, "[[loadable]]\nname = \"a\"\npath = \n")?;
    assert!(matches!(service.verdant.reload(None).await, Err(Error::Manifest(_))));
    std::fs::write(&service.manifest, format!("[[loadable]]\nname = \"a\"\npath = {v1:?}\nmonut = \"/a\"\n"))?;
    assert!(matches!(service.verdant.reload(None).await, Err(Error::Manifest(_))));
    write_manifest(&service.manifest, &[a.clone(), Listed::mounted("b", Path::new("/nonexistent/libb.so"))]);
    assert!(matches!(service.verdant.reload(None).await, Err(Error::Manifest(_))));

    assert_eq!(service.verdant.names(), ["a"]);
    let hello = service.get("/a/hello").await;
    assert_eq!((hello.body.as_str(), hello.header("x-trail")), ("hello from a v1\n", Some("a")));
    assert_eq!(service.get("/b/hello").await.status, StatusCode::NOT_FOUND);
    assert_eq!(service.verdant.status().generation, generation, "no transaction ran");
    Ok(())
}

/// A host panic inside `next` is answered 500 by the host-side guard
/// before it could unwind into the library's middleware, and the library
/// middleware still stamps that answer; a library panic in a middleware
/// is a 500 too. The process keeps serving.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn panics_on_either_side_of_next_are_500s() -> TestResult {
    let v1 = fixture("ext-v1");
    let service = Service::start(&[Listed::mounted("a", &v1), Listed::mounted("b", &v1)]).await?;

    let host = service.get("/host-panic").await;
    assert_eq!(host.status, StatusCode::INTERNAL_SERVER_ERROR, "{}", host.body);
    assert_eq!(host.header("x-trail"), Some("a,b"), "the library middlewares got the 500 back from next");

    let library = client::get(service.addr, "/a/hello", &[("x-panic-in", "b")]).await;
    assert_eq!(library.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(library.header("x-trail"), Some("a"), "a wrapped b's 500");
    assert!(library.body.contains("`b`"), "{}", library.body);

    let handler = service.get("/b/panic").await;
    assert_eq!(handler.status, StatusCode::INTERNAL_SERVER_ERROR);

    let hello = service.get("/a/hello").await;
    assert_eq!((hello.status, hello.header("x-trail")), (StatusCode::OK, Some("a,b")));
    Ok(())
}

/// One extension whose attach fails does not take the others down: its
/// mount answers 503 with the reason, the others serve; fixing its entry
/// and reloading brings it up.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_extension_that_fails_to_attach_blocks_nobody() -> TestResult {
    let v1 = fixture("ext-v1");
    let a = Listed::mounted("a", &v1);
    let broken = Listed::mounted("b", &v1).setting("attach", "fail");
    let dir = tempfile::tempdir()?;
    let manifest = dir.path().join("verdant.toml");
    write_manifest(&manifest, &[a.clone(), broken]);
    let verdant = Verdant::builder(()).strict(false).manifest(&manifest).build()?;
    let report = verdant.attach()?;
    assert!(matches!(report.outcome("a"), Some(Outcome::Swapped { .. })), "{report}");
    assert!(matches!(report.outcome("b"), Some(Outcome::Failed(_))), "{report}");
    let pipeline = verdant::axum::pipeline(&verdant);
    let addr = client::serve(axum::Router::new().fallback_service(pipeline)).await;

    assert_eq!(client::get(addr, "/a/hello", &[]).await.header("x-trail"), Some("a"));
    let down = client::get(addr, "/b/hello", &[]).await;
    assert_eq!(down.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(down.body.contains("attach"), "{}", down.body);

    write_manifest(&manifest, &[a, Listed::mounted("b", &v1)]);
    let report = verdant.reload(None).await?;
    assert!(report.is_success(), "{report}");
    assert_eq!(client::get(addr, "/b/hello", &[]).await.header("x-trail"), Some("a,b"));
    Ok(())
}

/// A group from the manifest is all-or-nothing: when one member fails, the
/// other keeps its previous version; an ungrouped entry is still updated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_group_reloads_all_or_nothing() -> TestResult {
    let (a_file, b_file, c_file) = (Artifact::new("ext-v1"), Artifact::new("ext-v1"), Artifact::new("ext-v1"));
    let a = Listed::mounted("a", a_file.path()).group("pair");
    let b = Listed::mounted("b", b_file.path()).group("pair");
    let c = Listed::mounted("c", c_file.path());
    let service = Service::start(&[a.clone(), b.clone(), c.clone()]).await?;

    for file in [&a_file, &b_file, &c_file] {
        file.install("ext-v2");
    }
    let broken_b = b.clone().setting("attach", "fail");
    let report = match service.relist(&[a.clone(), broken_b, c.clone()]).await {
        Ok(report) => report,
        Err(Error::Reload(failure)) => failure.report.clone(),
        Err(other) => return Err(other.into()),
    };
    assert!(matches!(report.outcome("a"), Some(Outcome::RolledBack { .. })), "{report}");
    assert!(matches!(report.outcome("b"), Some(Outcome::Failed(_))), "{report}");
    assert!(matches!(report.outcome("c"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(service.get("/a/hello").await.body, "hello from a v1\n");
    assert_eq!(service.get("/b/hello").await.body, "hello from b v1\n");
    assert_eq!(service.get("/c/hello").await.body, "hello from c v2\n");
    Ok(())
}

/// A registry with the typed loadable `edge` (edge-v1, added in code with a
/// placeholder path) and the extension `a` (ext-v1), both listed and
/// mounted by a manifest written in `dir`; attached.
fn edge_behind_an_extension(dir: &std::path::Path) -> Result<Verdant, Box<dyn StdError>> {
    use fixture_api::edge::{Edge, EdgeContext};
    let manifest = dir.join("verdant.toml");
    let edge = Listed::mounted("edge", &fixture("edge-v1"));
    write_manifest(&manifest, &[edge, Listed::mounted("a", &fixture("ext-v1"))]);
    let verdant = Verdant::builder(EdgeContext::default())
        .add::<dyn Edge>("edge", "/nonexistent/set/by/the/manifest.so")
        .manifest(&manifest)
        .build()?;
    let report = verdant.attach()?;
    assert!(report.is_success(), "{report}");
    Ok(verdant)
}

/// A typed loadable added in code takes its path and mount from the
/// manifest entry of its name.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_manifest_entry_sets_the_path_of_a_typed_loadable() -> TestResult {
    use fixture_api::edge::Edge;
    let dir = tempfile::tempdir()?;
    let verdant = edge_behind_an_extension(dir.path())?;
    assert_eq!(verdant.handle::<dyn Edge>("edge")?.get()?.version(), 1);
    let pipeline = verdant::axum::pipeline(&verdant).routes::<dyn Edge>(|edge| edge.router());
    let addr = client::serve(axum::Router::new().fallback_service(pipeline)).await;
    let version = client::get(addr, "/edge/version", &[]).await;
    assert_eq!((version.body.as_str(), version.header("x-trail")), ("edge 1", Some("a")));
    Ok(())
}

/// `Pipeline::library_routes` serves the library router a closure returns
/// unchanged, with the extensions' middleware in front, and refuses (503,
/// with the reason) a closure that built a router of its own or merged
/// several library routers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn library_routes_serves_the_library_router_and_refuses_anything_else() -> TestResult {
    use fixture_api::edge::Edge;
    let dir = tempfile::tempdir()?;
    let verdant = edge_behind_an_extension(dir.path())?;

    let direct = verdant::axum::pipeline(&verdant).library_routes::<dyn Edge>(|edge| edge.router());
    let addr = client::serve(axum::Router::new().fallback_service(direct)).await;
    let version = client::get(addr, "/edge/version", &[]).await;
    assert_eq!((version.body.as_str(), version.header("x-trail")), ("edge 1", Some("a")));
    assert_eq!(client::get(addr, "/edge", &[]).await.status, StatusCode::NOT_FOUND, "the library's own 404");
    assert_eq!(client::get(addr, "/edge/panic", &[]).await.status, StatusCode::INTERNAL_SERVER_ERROR);
    assert_eq!(client::get(addr, "/edge/version", &[]).await.body, "edge 1", "still serving after a panic");

    // A router of the host's own: no library router was returned.
    let own = verdant::axum::pipeline(&verdant)
        .library_routes::<dyn Edge>(|_| axum::Router::new().route("/version", get(|| async { "host" })));
    let addr = client::serve(axum::Router::new().fallback_service(own)).await;
    let refused = client::get(addr, "/edge/version", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    assert!(
        refused.body.contains("called 0 router methods") && refused.body.contains("Pipeline::routes"),
        "{refused:?}"
    );

    // Two library routers merged: which one to serve is not known.
    let merged = verdant::axum::pipeline(&verdant)
        .library_routes::<dyn Edge>(|edge| edge.router().nest_service("/again", edge.router()));
    let addr = client::serve(axum::Router::new().fallback_service(merged)).await;
    let refused = client::get(addr, "/edge/version", &[]).await;
    assert_eq!(refused.status, StatusCode::SERVICE_UNAVAILABLE, "{refused:?}");
    assert!(refused.body.contains("called 2 router methods"), "{refused:?}");
    Ok(())
}

/// Extensions added and removed through the manifest over and over (a new
/// name each time: a new slot), each called over HTTP on the runtime's
/// threads while listed: the per-thread pin cache cells of removed ones are
/// recycled once the registry lets go of them (it keeps the last few removed
/// for `status()`), so the cells ever allocated stop growing (verdant's
/// `pin_cache.rs`, invariant 5).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn extensions_removed_through_the_manifest_leave_no_cells_behind() -> TestResult {
    const ROUNDS: usize = 40;
    let v1 = fixture("ext-v1");
    let a = Listed::mounted("a", &v1);
    let service = Service::start(std::slice::from_ref(&a)).await?;
    let mut allocated = Vec::new();
    for round in 0..ROUNDS {
        let name: &'static str = Box::leak(format!("x{round}").into_boxed_str());
        let report = service.relist(&[a.clone(), Listed::mounted(name, &v1)]).await?;
        assert!(report.is_success(), "{report}");
        for _ in 0..4 {
            let hello = service.get(&format!("/{name}/hello")).await;
            assert_eq!(hello.status, StatusCode::OK, "{}", hello.body);
        }
        let report = service.relist(std::slice::from_ref(&a)).await?;
        assert!(report.is_success(), "{report}");
        allocated.push(verdant::__private::pin_cells_allocated());
    }
    // About one cell per slot alive (the registry keeps 8 removed ones):
    // 11 here. A removed version detaching late may keep one more slot a
    // little longer; without recycling it grows by a cell or more a round.
    let (half, last) = (allocated[ROUNDS / 2 - 1], allocated[ROUNDS - 1]);
    assert!(last <= half + 2, "still growing over the last {} rounds: {allocated:?}", ROUNDS / 2);
    Ok(())
}
