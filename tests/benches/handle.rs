//! The hot path: `handle.get()` plus one interface call into a real loaded
//! library, against the baselines issue #2 names, all measured in one run.
//!
//! Run with `scripts/bench` (it builds the fixture libraries in release
//! first). Read the results as ratios to `arc_dyn` of the same run, never
//! as absolute numbers: the machines are shared and noisy.
//!
//! - `arc_dyn`: a host-local `Arc<dyn Probe>` call, the floor.
//! - `arcswap_load`: `ArcSwap::load` then the call (what `get()` is built on).
//! - `rwlock_arc_clone`: read lock, `Arc` clone, call (the obvious design).
//! - `verdant_get_call`: `handle.get()?.version()` into the loaded library,
//!   through the host proxy and the library's panic guard.
//! - `verdant_pinned_call`: a call on an already pinned version (the cost of
//!   the proxy and guard alone).
//! - `two_threads/*`: the same per-call work on two threads at once, timed
//!   for both; a design that writes a shared reference count per call
//!   bounces that cache line between the cores.

use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use std::hint::black_box;

use criterion::{criterion_group, criterion_main, Criterion};
use fixture_api::{FixtureContext, Gate, Probe};
use verdant::Verdant;

struct Local;

impl Probe for Local {
    fn version(&self) -> u32 {
        1
    }
    fn instance(&self) -> u64 {
        0
    }
    fn version_after(&self, _gate: &Gate) -> u32 {
        1
    }
    fn explode(&self, message: &str) -> u32 {
        panic!("{message}")
    }
    fn attached_in_runtime(&self) -> bool {
        false
    }
    fn describe(&self) -> String {
        "local".to_owned()
    }
    fn consume(&self, text: String) -> usize {
        text.len()
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
    let local: Arc<dyn Probe> = Arc::new(Local);
    let swap: ArcSwap<Box<dyn Probe>> = ArcSwap::from_pointee(Box::new(Local));
    let lock: RwLock<Arc<dyn Probe>> = RwLock::new(Arc::new(Local));

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
    let pinned = handle.get().expect("attached");
    group.bench_function("verdant_pinned_call", |b| b.iter(|| black_box(&pinned).version()));
    group.finish();
}

fn two_threads(c: &mut Criterion) {
    let (_verdant, handle) = loaded();
    let shared: Arc<dyn Probe> = Arc::new(Local);

    let mut group = c.benchmark_group("two_threads");
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
    group.finish();
}

criterion_group!(benches, single_thread, two_threads);
criterion_main!(benches);
