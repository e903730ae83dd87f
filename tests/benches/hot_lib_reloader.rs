//! Verdant against hot-lib-reloader (0.8, the hot-reload crate the design
//! names), in one criterion run, on the same library files.
//!
//! Run with `scripts/bench` (it builds the fixture libraries in release
//! first, and prints the ratios below). Read the results as ratios within a
//! group, never as absolute numbers: the machines are shared and noisy.
//!
//! Both sides load the fixtures `hlr-v1` and `hlr-v2`: each is a Verdant
//! library (`Probe`) that also exports `#[no_mangle] pub fn hlr_version()`,
//! which hot-lib-reloader's generated wrapper calls. Both return the build's
//! version number, so the calls do the same work and the reloads read,
//! copy and map the same bytes.
//!
//! Calls (`hlr_call`):
//!
//! - `arc_dyn`: a host-local `Arc<dyn Probe>` call, the floor (as in
//!   `benches/handle.rs`).
//! - `verdant_get_call`: `handle.get()?.version()` into the loaded library
//!   (pin, proxy, the library's panic guard).
//! - `hot_lib_reloader_call`: `hot::hlr_version()`, the function that
//!   `#[hot_module]` generates: a read lock of its global `RwLock`, a
//!   `dlsym` of the name, the call through the function pointer. No panic
//!   guard: a panic in the library aborts the process (docs/boundary.md §1).
//!
//! Reloads (`hlr_reload`), each iteration installing the other build over
//! the file (a new file renamed into place, as `Artifact::install_bytes`
//! does):
//!
//! - `verdant_reload`: `reload_blocking`, as `reload_changed` in
//!   `benches/reload.rs`: read, hash (BLAKE3), validate, private copy,
//!   `dlopen`, type checks, attach hook, swap. Make-before-break: the old
//!   version serves until the swap and stays mapped.
//! - `hot_lib_reloader_reload`: from the moment its update thread is let go
//!   (the `BlockReload` of `wait_for_about_to_reload` dropped) until
//!   `wait_for_reload` returns: `dlclose` of the old version, copy,
//!   CRC32 of the copy, `dlopen`, and the two channel hand-overs. This is
//!   the part comparable with `verdant_reload`. The new build is then
//!   observed through the generated function (outside the timing).
//! - `hot_lib_reloader_change_to_reload`: from the install of the file until
//!   `wait_for_reload` returns: the above plus notify's debouncer and the
//!   watcher's CRC32 of the whole file. hot-lib-reloader reloads only when
//!   its file watcher saw a change; it has no on-demand reload, so this is
//!   what an application waits for. The debouncer holds every event for
//!   [`DEBOUNCE_MS`] (`file_watch_debounce`; the default is 500 ms), set low
//!   here to keep the run short: the figure is at least that.
//!
//! What is not comparable: hot-lib-reloader unloads the old version before
//! it loads the new one (break-before-make: calls wait on its lock meanwhile,
//! and a failed load leaves nothing loaded), runs no attach hook, checks
//! neither types nor the ELF file, and `dlclose`s the old version (this
//! fixture has no thread-local destructors, so it really unmaps; Verdant
//! keeps every attached version mapped, docs/boundary.md §4). Verdant's
//! figure includes a type check and an attach hook that does next to
//! nothing.
//!
//! Every Verdant reload keeps its copy mapped for the life of the process,
//! so the measurement time is short and the number of reloads bounded.

use std::hint::black_box;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use fixture_api::Probe;
use verdant::Outcome;
use verdant_tests::baseline::{hot, watch, LocalProbe};
use verdant_tests::{attached, fixture, Artifact};

/// hot-lib-reloader's `file_watch_debounce` in this benchmark, in
/// milliseconds (its default is 500). Must equal the literal in the
/// `hot_module` attribute of `verdant_tests::baseline::hot`, which takes
/// only a literal.
const DEBOUNCE_MS: u64 = 5;

/// How long a reload may take before the benchmark gives up: far above any
/// real figure, only there so that a lost file event fails the run instead
/// of hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

/// Replaces `path` with `bytes` atomically: a new file renamed into place,
/// as a linker does and as `Artifact::install_bytes` does for Verdant.
fn install(path: &Path, bytes: &[u8]) {
    let staging = path.with_extension("tmp");
    std::fs::write(&staging, bytes).expect("write library");
    std::fs::rename(&staging, path).expect("rename library");
}

/// Waits for hot-lib-reloader's next reload: returns the time from letting
/// its update thread go until the reload was announced, and when that was.
fn next_hlr_reload(observer: &hot_lib_reloader::LibReloadObserver) -> (Duration, Instant) {
    let blocker = observer
        .wait_for_about_to_reload_timeout(PATIENCE)
        .expect("hot-lib-reloader saw the new file (its watcher reported no change)");
    let released = Instant::now();
    drop(blocker);
    assert!(observer.wait_for_reload_timeout(PATIENCE), "hot-lib-reloader finished its reload");
    let reloaded = Instant::now();
    (reloaded - released, reloaded)
}

fn compare(c: &mut Criterion) {
    let builds = [std::fs::read(fixture("hlr-v1")).expect("v1"), std::fs::read(fixture("hlr-v2")).expect("v2")];
    eprintln!("hot_lib_reloader: fixtures hlr-v1 and hlr-v2, {} and {} bytes", builds[0].len(), builds[1].len());

    // Verdant: its own artifact path, holding hlr-v1.
    let artifact = Artifact::new("hlr-v1");
    let (verdant, _shared, handle) = attached(&artifact);

    // hot-lib-reloader: a directory of its own (it writes its copies next to
    // the watched file), holding hlr-v1, loaded by the first call.
    let watched = tempfile::tempdir().expect("watched dir");
    let library = watched.path().join("libhlr.so");
    install(&library, &builds[0]);
    watch(watched.path());
    let observer = hot::subscribe();
    assert_eq!(hot::hlr_version(), 1, "hot-lib-reloader loaded hlr-v1");

    let local: Arc<dyn Probe> = Arc::new(LocalProbe);
    let mut group = c.benchmark_group("hlr_call");
    group.warm_up_time(Duration::from_secs(1)).measurement_time(Duration::from_secs(3));
    group.bench_function("arc_dyn", |b| b.iter(|| black_box(&local).version()));
    group.bench_function("verdant_get_call", |b| b.iter(|| black_box(&handle).get().map(|p| p.version())));
    group.bench_function("hot_lib_reloader_call", |b| b.iter(hot::hlr_version));
    group.finish();

    let mut group = c.benchmark_group("hlr_reload");
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(200))
        .measurement_time(Duration::from_millis(500));

    let mut verdant_next = 1;
    group.bench_function("verdant_reload", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                artifact.install_bytes(&builds[verdant_next]);
                let started = Instant::now();
                let report = verdant.reload_blocking(None).expect("reload");
                total += started.elapsed();
                assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
                verdant_next = 1 - verdant_next;
            }
            total
        })
    });
    assert_eq!(handle.get().expect("serving").version(), 2 - verdant_next as u32, "the last build installed serves");

    let mut hlr_next = 1;
    group.bench_function("hot_lib_reloader_reload", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                install(&library, &builds[hlr_next]);
                let (reload, _) = next_hlr_reload(&observer);
                total += reload;
                assert_eq!(hot::hlr_version(), hlr_next as u32 + 1, "the new build is called");
                hlr_next = 1 - hlr_next;
            }
            total
        })
    });

    // Each iteration waits at least the debounce: fewer, shorter samples.
    group.warm_up_time(Duration::from_millis(100)).measurement_time(Duration::from_millis(300));
    group.bench_function("hot_lib_reloader_change_to_reload", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                install(&library, &builds[hlr_next]);
                let installed = Instant::now();
                let (_, reloaded) = next_hlr_reload(&observer);
                total += reloaded - installed;
                assert_eq!(hot::hlr_version(), hlr_next as u32 + 1, "the new build is called");
                hlr_next = 1 - hlr_next;
            }
            total
        })
    });
    group.finish();
    eprintln!("hot_lib_reloader: file_watch_debounce = {DEBOUNCE_MS} ms");
}

criterion_group!(benches, compare);
criterion_main!(benches);
