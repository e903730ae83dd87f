//! The hot path: `handle.get()` plus one interface call into a real loaded
//! library, against the baselines issue #2 names, all measured in one run.
//!
//! Run with `scripts/bench` (it builds the fixture libraries in release
//! first). Read the results as ratios to `arc_dyn` of the same run, never
//! as absolute numbers: the machines are shared and noisy.
//!
//! - `arc_dyn`: a host-local `Arc<dyn Probe>` call, the floor.
//! - `arcswap_load`: `ArcSwap::load` then the call (what `get()` pinned
//!   through before the per-thread pin cache; still its slow path).
//! - `rwlock_arc_clone`: read lock, `Arc` clone, call (the obvious design).
//! - `verdant_get_call`: `handle.get()?.version()` into the loaded library,
//!   through the host proxy and the library's panic guard.
//! - `verdant_pinned_call`: a call on an already pinned version (the cost of
//!   the proxy and guard alone).
//! - `verdant_get_only`: `handle.get()` and the drop of its pin, no call:
//!   what pinning costs (`verdant_get_call` is about this plus
//!   `verdant_pinned_call`). After the first call it is the pin cache's fast
//!   path: two owner-only counter writes and a pointer check.
//! - `verdant_get_call_runtime`: the same, from a registry with a tokio
//!   runtime, which library code must find (docs/boundary.md §2). The bench
//!   threads are not threads of a runtime, so each call enters the runtime
//!   and leaves it (a runtime's own threads enter once, for good: see
//!   verdant-loadable's `library/runtime_link.rs`); this is that slow path.
//! - `async/*`: an `async fn` of the interface that is ready at once, polled
//!   once: a host-local `async_trait` object (`local_async`) against the
//!   loaded library through the proxy, the library's future guard and the
//!   runtime entry (`verdant_async`).
//! - `two_threads/*`: the same per-call work on two threads at once, timed
//!   for both; a design that writes a shared reference count per call
//!   bounces that cache line between the cores (entering the runtime around
//!   every call did: 74 ns here before it became once per thread).
//!   `two_threads/arc_dyn` (both threads call through one shared
//!   `Arc<dyn Probe>`) is the floor there, `arc_clone_call` the cost of a
//!   shared reference count.
//!
//! `scripts/bench` prints the ratios of `verdant_get_call` to `arc_dyn`, on
//! one thread and on two.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use std::hint::black_box;

use std::future::Future;
use std::task::{Context, Poll, Waker};

use criterion::{criterion_group, criterion_main, Criterion};
use fixture_api::edge::{Edge, EdgeContext};
use fixture_api::{FixtureContext, Probe};
use verdant::Verdant;
use verdant_tests::baseline::LocalProbe;

/// The async baseline: the same boxed-future shape the interface uses,
/// without a library behind it.
#[verdant_loadable::__private::async_trait]
trait LocalEcho: Send + Sync {
    async fn echo(&self, x: u64) -> u64;
}

#[verdant_loadable::__private::async_trait]
impl LocalEcho for LocalProbe {
    async fn echo(&self, x: u64) -> u64 {
        x
    }
}

/// Polls a future that is ready at once.
fn ready<F: Future>(future: F) -> F::Output {
    let mut future = std::pin::pin!(future);
    match future.as_mut().poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(value) => value,
        Poll::Pending => unreachable!("the benchmarked futures are ready at once"),
    }
}

fn loaded() -> (Verdant, verdant::Handle<dyn Probe>) {
    let verdant = Verdant::builder(FixtureContext::new())
        .add::<dyn Probe>("probe", verdant_tests::fixture("good-v1"))
        .build()
        .expect("registry");
    verdant.attach().expect("the release fixture attaches (run scripts/bench, which builds it)");
    let handle = verdant.handle::<dyn Probe>("probe").expect("handle");
    (verdant, handle)
}

/// The edge library from a registry that has a tokio runtime, so library
/// code runs inside it.
fn loaded_in_runtime(runtime: &tokio::runtime::Runtime) -> (Verdant, verdant::Handle<dyn Edge>) {
    let verdant = Verdant::builder(EdgeContext::default())
        .runtime(runtime.handle().clone())
        .add::<dyn Edge>("edge", verdant_tests::fixture("edge-v1"))
        .build()
        .expect("registry");
    verdant.attach().expect("the release fixture attaches (run scripts/bench, which builds it)");
    let handle = verdant.handle::<dyn Edge>("edge").expect("handle");
    (verdant, handle)
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().expect("runtime")
}

/// Runs `work` `iters` times on each of two threads and returns the time
/// until both finished.
fn on_two_threads(iters: u64, work: impl Fn() + Sync) -> Duration {
    let barrier = std::sync::Barrier::new(2);
    std::thread::scope(|scope| {
        let worker = || {
            barrier.wait();
            let started = Instant::now();
            for _ in 0..iters {
                work();
            }
            started.elapsed()
        };
        let other = scope.spawn(worker);
        let mine = worker();
        mine.max(other.join().expect("bench thread"))
    })
}

fn single_thread(c: &mut Criterion) {
    let (_verdant, handle) = loaded();
    let local: Arc<dyn Probe> = Arc::new(LocalProbe);
    let swap: ArcSwap<Box<dyn Probe>> = ArcSwap::from_pointee(Box::new(LocalProbe));
    let lock: RwLock<Arc<dyn Probe>> = RwLock::new(Arc::new(LocalProbe));

    // `HANDLE_ONLY=NAME:N`: N calls of `arc_dyn`, `verdant_get_call`,
    // `verdant_get_only` or `verdant_pinned_call`, then exit without
    // criterion: a fixed workload for an instruction count
    // (`scripts/instructions --handle`), which the machine's noise cannot
    // move.
    if let Ok(only) = std::env::var("HANDLE_ONLY") {
        let (name, count) = only.split_once(':').expect("HANDLE_ONLY=NAME:N");
        let count: u64 = count.parse().expect("HANDLE_ONLY=NAME:N, N a number");
        let pinned = handle.get().expect("attached");
        for _ in 0..count {
            match name {
                "arc_dyn" => drop(black_box(black_box(&local).version())),
                "verdant_get_call" => drop(black_box(black_box(&handle).get().map(|p| p.version()))),
                "verdant_get_only" => drop(black_box(black_box(&handle).get().is_ok())),
                "verdant_pinned_call" => drop(black_box(black_box(&pinned).version())),
                other => panic!("HANDLE_ONLY: no workload `{other}`"),
            }
        }
        std::process::exit(0);
    }

    let mut group = c.benchmark_group("call");
    group.bench_function("arc_dyn", |b| b.iter(|| black_box(&local).version()));
    group.bench_function("arcswap_load", |b| b.iter(|| black_box(&swap).load().version()));
    group.bench_function("rwlock_arc_clone", |b| {
        b.iter(|| {
            let current = black_box(&lock).read().map(|guard| guard.clone()).unwrap_or_else(|e| e.into_inner().clone());
            current.version()
        })
    });
    group.bench_function("verdant_get_call", |b| b.iter(|| black_box(&handle).get().map(|p| p.version())));
    group.bench_function("verdant_get_only", |b| b.iter(|| black_box(black_box(&handle).get().is_ok())));
    let pinned = handle.get().expect("attached");
    group.bench_function("verdant_pinned_call", |b| b.iter(|| black_box(&pinned).version()));
    let runtime = runtime();
    let (_edge_verdant, edge) = loaded_in_runtime(&runtime);
    group.bench_function("verdant_get_call_runtime", |b| b.iter(|| black_box(&edge).get().map(|p| p.version())));
    group.finish();

    let mut group = c.benchmark_group("async");
    let local_echo: Arc<dyn LocalEcho> = Arc::new(LocalProbe);
    group.bench_function("local_async", |b| b.iter(|| ready(black_box(&local_echo).echo(black_box(7)))));
    group.bench_function("verdant_async", |b| {
        b.iter(|| {
            let pinned = black_box(&edge).get().expect("attached");
            ready(pinned.echo(black_box(7)))
        })
    });
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let (_verdant, handle) = loaded();
    let shared: Arc<dyn Probe> = Arc::new(LocalProbe);

    let mut group = c.benchmark_group("two_threads");
    group.bench_function("arc_dyn", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(black_box(&shared).version());
            })
        })
    });
    group.bench_function("arc_clone_call", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                let current = Arc::clone(black_box(&shared));
                black_box(current.version());
            })
        })
    });
    group.bench_function("verdant_get_call", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                let _ = black_box(handle.get().map(|p| p.version()));
            })
        })
    });
    group.bench_function("verdant_get_only", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                black_box(handle.get().is_ok());
            })
        })
    });
    let runtime = runtime();
    let (_edge_verdant, edge) = loaded_in_runtime(&runtime);
    group.bench_function("verdant_get_call_runtime", |b| {
        b.iter_custom(|iters| {
            on_two_threads(iters, || {
                let _ = black_box(edge.get().map(|p| p.version()));
            })
        })
    });
    group.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
