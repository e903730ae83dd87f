//! A reload of a real fixture library (read → swap), against the I/O floor
//! measured in the same run.
//!
//! Run with `scripts/bench` (it builds the fixture libraries first). It runs
//! this benchmark twice: in the bench profile, loading the release builds of
//! the fixtures, and with `--profile dev`, loading their debug builds from an
//! unoptimised host (what an embedder's debug build does; the debug fixture
//! is several times larger). Read the results as ratios to `io_floor` of
//! the same run and profile, never as absolute numbers: the machines are
//! shared and noisy.
//!
//! - `io_floor`: `std::fs::read` of the artifact and `std::fs::write` of its
//!   bytes to a new file in `$TMPDIR` (where the private copies go): what
//!   a reload that reads the whole file and writes a private copy of it
//!   spends on I/O. A reload reads and writes less before `dlopen` (the
//!   loaded part and the section headers; the rest is copied afterwards),
//!   so a changed reload can take less than this floor.
//! - `hash`: `ContentHash::of` the artifact's bytes (the whole file, more
//!   than a reload hashes).
//! - `reload_changed`: `reload_blocking` after a new build was installed
//!   (good-v1 and good-v2 in turn): read, hash, validate, copy, `dlopen`,
//!   check, attach (the fixture's hook does next to nothing), swap.
//!   The median time of each step over these reloads is printed after
//!   the group (`step medians`), with the time outside the steps (between
//!   them, and around the transaction: the hand-off to the registry's
//!   reload thread and back) and the whole reload's median.
//! - `reload_unchanged`: `reload_blocking` of the same file, once it last
//!   changed more than a second ago: what a reload of a loadable that was
//!   not rebuilt costs (one `fstat`).
//!
//! The group `reload_<profile>_15mb` measures `io_floor` and
//! `reload_changed` again with both builds padded to 15 MiB (bytes appended
//! after the section headers, as longer debug sections would be): what a
//! 15 MB debug library costs a reload (the padding, like debug sections, is
//! copied after the load).
//!
//! `reload_<profile>_spaced` (printed, not a criterion group) runs first:
//! 40 changed reloads 50 ms apart, each with the I/O floor of the same
//! moment, as a service that reloads now and then sees them (see
//! [`spaced`] for why criterion's back-to-back reloads cost more).
//!
//! Every changed reload keeps its copy mapped for the life of the process
//! (docs/boundary.md §4), so the measurement time is short and the number
//! of reloads bounded.

use std::hint::black_box;
use std::time::{Duration, Instant};

use criterion::{criterion_group, criterion_main, Criterion, SamplingMode};
use verdant::{ContentHash, Outcome};
use verdant_tests::{attached, fixture, Artifact};

/// `release` or `debug`: which fixture builds this run loads (those of its
/// own profile; a library built with another profile has other `TypeId`s).
fn profile() -> &'static str {
    if cfg!(debug_assertions) {
        "debug"
    } else {
        "release"
    }
}

/// How long the padded builds of `reload_<profile>_15mb` are: the size of a
/// larger library's debug build.
const PADDED: usize = 15 << 20;

fn reload(c: &mut Criterion) {
    let builds = [std::fs::read(fixture("good-v1")).expect("v1"), std::fs::read(fixture("good-v2")).expect("v2")];
    spaced(&format!("reload_{}_spaced", profile()), &builds);
    measure(c, &format!("reload_{}", profile()), &builds, true);
    // The same builds with bytes appended up to 15 MiB, as if their debug
    // sections were that much longer (nothing reads past an ELF file's
    // section headers): what reading, hashing and copying a 15 MB debug
    // library costs. Its loaded part, and so `dlopen`, stay the fixture's.
    let padded = builds.map(|mut build| {
        let pad = PADDED.saturating_sub(build.len());
        build.extend((0..pad).map(|i| (i.wrapping_mul(2_654_435_761) >> 13) as u8));
        build
    });
    measure(c, &format!("reload_{}_15mb", profile()), &padded, false);
}

/// How many reloads [`spaced`] measures, and how far apart.
const SPACED_RELOADS: usize = 40;
const SPACING: Duration = Duration::from_millis(50);

/// Changed reloads as a service sees them: [`SPACED_RELOADS`] of them,
/// [`SPACING`] apart, first thing in the process, each next to the I/O
/// floor of the same moment (read the file, write it elsewhere). Not a
/// criterion group: criterion runs hundreds of reloads back to back, and
/// each keeps its copy mapped and its inode allocated (docs/boundary.md
/// §4), so its later reloads also measure `dlopen` walking hundreds of
/// loaded objects, ext4 skipping hundreds of inodes deleted within the
/// last seconds, and the previous version's release competing for the
/// cores. Prints the medians and their ratio, and the step medians.
fn spaced(name: &str, builds: &[Vec<u8>; 2]) {
    let artifact = Artifact::new("good-v1");
    artifact.install_bytes(&builds[0]);
    let (verdant, _shared, _probe) = attached(&artifact);
    let scratch = tempfile::tempdir().expect("scratch dir");
    let (mut reloads, mut floors) = (Vec::new(), Vec::new());
    let mut steps: Steps = Vec::new();
    for i in 0..SPACED_RELOADS {
        std::thread::sleep(SPACING);
        let copy = scratch.path().join(format!("copy-{i}.so"));
        let started = Instant::now();
        let bytes = std::fs::read(artifact.path()).expect("read");
        std::fs::write(&copy, &bytes).expect("write");
        floors.push(started.elapsed());
        std::fs::remove_file(&copy).expect("remove");
        artifact.install_bytes(&builds[(i + 1) % 2]);
        std::thread::sleep(SPACING);
        let started = Instant::now();
        let report = verdant.reload_blocking(None).expect("reload");
        let elapsed = started.elapsed();
        reloads.push(elapsed);
        assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
        record_steps(&mut steps, &report, elapsed);
    }
    let median = |times: &mut Vec<Duration>| {
        times.sort();
        times[times.len() / 2]
    };
    let (reload, floor) = (median(&mut reloads), median(&mut floors));
    eprintln!(
        "{name}: median of {SPACED_RELOADS} changed reloads {SPACING:?} apart {reload:.2?} = {:.2} x io_floor ({floor:.2?}); p90 {:.2?}",
        reload.as_secs_f64() / floor.as_secs_f64(),
        reloads[reloads.len() * 9 / 10],
    );
    print_steps(name, &mut steps);
}

/// Each step's durations over some reloads, by step name (in the order
/// first seen).
type Steps = Vec<(String, Vec<Duration>)>;

/// Adds the step times of `report` (a reload that took `elapsed` around
/// `reload_blocking`) to `steps`, and what no step measures: inside the
/// transaction (between and around the steps), and around it (handing the
/// reload to the registry's reload thread and the result back, the
/// result's bookkeeping).
fn record_steps(steps: &mut Steps, report: &verdant::ReloadReport, elapsed: Duration) {
    let mut record = |step: String, duration: Duration| match steps.iter_mut().find(|(name, _)| *name == step) {
        Some((_, durations)) => durations.push(duration),
        None => steps.push((step, vec![duration])),
    };
    let mut in_steps = Duration::ZERO;
    for time in report.loadables.iter().flat_map(|loadable| &loadable.steps) {
        in_steps += time.duration;
        record(time.step.to_string(), time.duration);
    }
    record("between steps".to_owned(), report.duration.saturating_sub(in_steps));
    record("around the transaction".to_owned(), elapsed.saturating_sub(report.duration));
    record("whole reload".to_owned(), elapsed);
}

/// Prints the median (and mean) of each step of `steps`: where a reload
/// goes, less noisy than one report.
fn print_steps(name: &str, steps: &mut Steps) {
    let medians: Vec<String> = steps
        .iter_mut()
        .map(|(step, durations)| {
            durations.sort();
            let mean = durations.iter().sum::<Duration>() / durations.len().max(1) as u32;
            format!("{step} {:.1?} (mean {mean:.1?})", durations[durations.len() / 2])
        })
        .collect();
    let reloads = steps.first().map_or(0, |(_, durations)| durations.len());
    eprintln!("{name} step medians over {reloads} reloads: {}", medians.join(", "));
}

/// The group `name`: `io_floor` and `reload_changed` of `builds` (installed
/// in turn), and with `all`, `hash` and `reload_unchanged` too.
fn measure(c: &mut Criterion, name: &str, builds: &[Vec<u8>; 2], all: bool) {
    let artifact = Artifact::new("good-v1");
    artifact.install_bytes(&builds[0]);
    let (verdant, _shared, probe) = attached(&artifact);
    let scratch = tempfile::tempdir().expect("scratch dir");
    eprintln!("{name}: fixture good-v1, {} bytes", builds[0].len());

    let mut group = c.benchmark_group(name);
    group
        .sampling_mode(SamplingMode::Flat)
        .sample_size(10)
        .warm_up_time(Duration::from_millis(300))
        .measurement_time(Duration::from_secs(1));

    let mut copies = 0u64;
    group.bench_function("io_floor", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                copies += 1;
                let copy = scratch.path().join(format!("copy-{copies}.so"));
                let started = Instant::now();
                let bytes = std::fs::read(artifact.path()).expect("read");
                std::fs::write(&copy, &bytes).expect("write");
                total += started.elapsed();
                std::fs::remove_file(&copy).expect("remove");
            }
            total
        })
    });

    if all {
        group.bench_function("hash", |b| b.iter(|| ContentHash::of(black_box(&builds[0]))));
    }

    let mut next = 1;
    // Every measured changed reload's step times, for their medians.
    let mut steps: Steps = Vec::new();
    group.bench_function("reload_changed", |b| {
        b.iter_custom(|iters| {
            let mut total = Duration::ZERO;
            for _ in 0..iters {
                artifact.install_bytes(&builds[next]);
                let started = Instant::now();
                let report = verdant.reload_blocking(None).expect("reload");
                let elapsed = started.elapsed();
                total += elapsed;
                assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
                record_steps(&mut steps, &report, elapsed);
                next = 1 - next;
            }
            total
        })
    });
    assert_eq!(probe.get().expect("serving").version(), 2 - next as u32, "the last build installed serves");

    // A file that changed less than a second ago is read and hashed on
    // every reload (its times cannot yet tell the next change apart), so
    // the unchanged reload is measured once the last install has settled
    // and one reload has recorded its stamp: what a reload of a loadable
    // that was not rebuilt costs.
    if all {
        std::thread::sleep(Duration::from_millis(2100));
        verdant.reload_blocking(None).expect("reload");
        group.bench_function("reload_unchanged", |b| {
            b.iter(|| {
                let report = verdant.reload_blocking(None).expect("reload");
                assert!(matches!(report.outcome("probe"), Some(Outcome::Unchanged { .. })), "{report}");
                report
            })
        });
    }
    group.finish();

    // The median of each step over the changed reloads (warm-up included).
    print_steps(name, &mut steps);

    // One more changed reload, whose step times are printed for the record.
    artifact.install_bytes(&builds[next]);
    eprintln!("{}", verdant.reload_blocking(None).expect("reload"));
}

criterion_group!(benches, reload);
criterion_main!(benches);
