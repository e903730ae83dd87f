//! The short storm CI runs (the long one is `scripts/loadtest`): keep-alive
//! clients and streaming responses over loopback through the HTTP pipeline
//! while the library is reloaded back and forth between two real builds.
//! A single failed request or broken stream fails the test.
//!
//! Bounded by work, not time: 40 reloads, while 16 connections request
//! without pause and 4 clients stream; nothing here measures speed.

use std::error::Error as StdError;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use axum::http::StatusCode;
use fixture_api::edge::{Edge, EdgeContext};
use verdant::{Outcome, Verdant};
use verdant_tests::client::{self, next_chunk, Connection};
use verdant_tests::Artifact;

type TestResult = Result<(), Box<dyn StdError>>;

const RELOADS: usize = 40;
const CONNECTIONS: usize = 16;
const STREAMERS: usize = 4;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_and_streams_survive_a_reload_storm() -> TestResult {
    let artifact = Artifact::new("edge-v1");
    let verdant = Verdant::builder(EdgeContext::default())
        .add::<dyn Edge>("edge", artifact.path())
        .mount("edge", "/edge")
        .build()?;
    let report = verdant.attach()?;
    assert!(report.is_success(), "{report}");
    // The direct path (what the demo serves): the library router's service
    // called without routing again; `Pipeline::routes` shares the rest.
    let pipeline = verdant::axum::pipeline(&verdant).library_routes::<dyn Edge>(|edge| edge.router());
    let addr = client::serve(axum::Router::new().fallback_service(pipeline)).await;

    let stop = Arc::new(AtomicBool::new(false));
    let served = Arc::new(AtomicU64::new(0));
    let mut clients = Vec::new();
    for _ in 0..CONNECTIONS {
        let (stop, served) = (stop.clone(), served.clone());
        clients.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await;
            let mut failures = Vec::new();
            while !stop.load(Ordering::Relaxed) {
                let answer = connection.get("/edge/version", &[]).await;
                if answer.status != StatusCode::OK || !matches!(answer.body.as_str(), "edge 1" | "edge 2") {
                    failures.push(format!("{} {:?}", answer.status, answer.body));
                }
                served.fetch_add(1, Ordering::Relaxed);
            }
            failures
        }));
    }
    let mut streamers = Vec::new();
    for _ in 0..STREAMERS {
        let stop = stop.clone();
        streamers.push(tokio::spawn(async move {
            let mut connection = Connection::open(addr).await;
            let (mut complete, mut broken) = (0u32, Vec::new());
            while !stop.load(Ordering::Relaxed) {
                let response = connection.start("/edge/stream?chunks=5&delay_ms=5", &[]).await;
                let mut body = response.into_body();
                let mut chunks = Vec::new();
                while let Some(chunk) = next_chunk(&mut body).await {
                    match chunk {
                        Ok(text) => chunks.push(text),
                        Err(error) => {
                            broken.push(format!("after {chunks:?}: {error}"));
                            break;
                        }
                    }
                }
                // One version from the first chunk to the last.
                let version = chunks.first().and_then(|c| c.trim_end().rsplit(' ').next()).unwrap_or("?").to_owned();
                let expected: Vec<String> = (0..5).map(|i| format!("chunk {i} of edge {version}\n")).collect();
                if chunks == expected {
                    complete += 1;
                } else {
                    broken.push(format!("{chunks:?}"));
                }
            }
            (complete, broken)
        }));
    }

    for round in 0..RELOADS {
        artifact.install(if round % 2 == 0 { "edge-v2" } else { "edge-v1" });
        let report = verdant.reload(None).await?;
        assert!(matches!(report.outcome("edge"), Some(Outcome::Swapped { .. })), "reload {round}: {report}");
    }
    stop.store(true, Ordering::Relaxed);

    let mut failures = Vec::new();
    for client in clients {
        failures.extend(client.await?);
    }
    let (mut streams, mut broken) = (0, Vec::new());
    for streamer in streamers {
        let (complete, more) = streamer.await?;
        streams += complete;
        broken.extend(more);
    }
    let served = served.load(Ordering::Relaxed);
    println!("{served} requests and {streams} streams across {RELOADS} reloads");
    assert!(
        failures.is_empty(),
        "{} of {served} requests failed: {:?}",
        failures.len(),
        &failures[..failures.len().min(5)]
    );
    assert!(broken.is_empty(), "{} streams broke: {:?}", broken.len(), &broken[..broken.len().min(5)]);
    assert!(served > 0 && streams > 0, "the clients ran ({served} requests, {streams} streams)");
    Ok(())
}
