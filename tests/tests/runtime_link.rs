//! The link from a loaded library to the host's tokio runtime
//! (docs/boundary.md §2): it must not keep a runtime alive after its version
//! is gone, and a version whose runtime was shut down fails every call with
//! an error that names the cause instead of running library code that would
//! find no reactor.
//!
//! The edge fixture's detach hook and instance drop run library code; these
//! tests check that they still run once the runtime is gone.

use fixture_api::edge::{Edge, EdgeContext, EdgeError};
use verdant::{DetachState, Handle, Verdant};
use verdant_tests::{eventually, Artifact};

/// How many descriptors this process has open, leaving out the ones that
/// hold a loaded library copy open (one per version kept mapped, by design:
/// the loader `dlopen`s each copy through its descriptor).
fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .expect("read /proc/self/fd")
        .filter_map(|entry| std::fs::read_link(entry.ok()?.path()).ok())
        .filter(|target| {
            let in_private_dir = target
                .parent()
                .and_then(|dir| dir.file_name())
                .is_some_and(|name| name.to_string_lossy().starts_with("verdant-"));
            !in_private_dir
        })
        .count()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("build a runtime")
}

/// A registry serving edge-v1 in `runtime`, attached from this (plain) thread.
fn attach_in(runtime: &tokio::runtime::Runtime, artifact: &Artifact) -> (Verdant, Handle<dyn Edge>) {
    let verdant = Verdant::builder(EdgeContext::default())
        .runtime(runtime.handle().clone())
        .add::<dyn Edge>("edge", artifact.path())
        .build()
        .expect("build");
    verdant.attach().expect("attach edge-v1");
    let edge = verdant.handle::<dyn Edge>("edge").expect("handle");
    (verdant, edge)
}

/// Build a runtime, attach, call library code on a plain thread and on a
/// runtime worker (timers included), revoke, wait for the detach, drop the
/// registry and shut the runtime down.
fn cycle(artifact: &Artifact) {
    let runtime = runtime();
    let (verdant, edge) = attach_in(&runtime, artifact);
    assert_eq!(edge.get().expect("get").version(), 1, "a call from a plain thread");
    let on_worker = edge.clone();
    let napped = runtime
        .block_on(runtime.spawn(async move { on_worker.get().expect("get").nap(1).await }))
        .expect("a call with a timer on a runtime worker");
    assert_eq!(napped, 1);
    verdant.revoke();
    assert!(
        eventually(|| verdant.status().loadables[0].retired.iter().all(|r| r.detach == DetachState::Detached)),
        "edge-v1 was never detached:\n{}",
        verdant.status()
    );
    drop((edge, verdant));
    drop(runtime);
}

#[test]
fn a_registry_cycle_leaves_no_runtime_behind() {
    let artifact = Artifact::new("edge-v1");
    // The first cycle opens what the process keeps for good (the private
    // directory, the test harness's own descriptors).
    cycle(&artifact);
    let baseline = open_fds();
    for round in 1..=4 {
        cycle(&artifact);
        // A runtime kept alive by a library's link keeps its driver's
        // descriptors (epoll, eventfd, timer) open: 4 per cycle before the
        // link was released.
        assert!(
            eventually(|| open_fds() <= baseline),
            "after {round} more cycles {} descriptors are open, {baseline} after the first: a retired library keeps \
             its runtime alive",
            open_fds()
        );
    }
}

#[test]
fn a_version_whose_runtime_was_shut_down_fails_each_call_with_the_cause() {
    let artifact = Artifact::new("edge-v1");
    let runtime = runtime();
    let (verdant, edge) = attach_in(&runtime, &artifact);
    let alive = edge.get().expect("get").fail("runtime alive").expect_err("fail panics");
    assert!(alive.to_string().contains("runtime alive"), "library code runs while the runtime lives: {alive}");
    drop(runtime);

    // The runtime's shutdown is seen by the registry's watch on it; until
    // then a call may still run (and find no reactor).
    let gone = |error: &EdgeError| {
        error.to_string().contains("tokio runtime this version was attached with has been shut down")
    };
    assert!(
        eventually(|| matches!(edge.get().expect("get").fail("library code ran"), Err(ref e) if gone(e))),
        "a sync call never named the shut-down runtime: {:?}",
        edge.get().expect("get").fail("library code ran")
    );
    // Library code does not run at all: the message is the cause, not the
    // method's own panic, for sync and async methods alike.
    let error = edge.get().expect("get").fail("library code ran").expect_err("the call fails");
    assert!(!error.to_string().contains("library code ran"), "{error}");
    let other = tokio::runtime::Builder::new_current_thread().enable_all().build().expect("another runtime");
    let spawned = other.block_on(async { edge.get().expect("get").spawn_timer(1).await });
    match spawned {
        Err(error) => assert!(gone(&error), "{error}"),
        Ok(answer) => panic!("library code ran without its runtime: {answer}"),
    }

    // Detach and drop still run, exactly once, without the runtime.
    verdant.revoke();
    assert!(
        eventually(|| verdant.status().loadables[0].retired.iter().all(|r| r.detach == DetachState::Detached)),
        "edge-v1 was never detached after its runtime was gone:\n{}",
        verdant.status()
    );
}
