//! The comparison fixtures of `benches/hot_lib_reloader.rs` (`hlr-v1`,
//! `hlr-v2`) load in both Verdant and hot-lib-reloader, and both follow a
//! new build installed over the file. Benchmarks are only compiled by the
//! test suite, not run; this keeps what the benchmark relies on working.

use std::time::Duration;

use verdant::Outcome;
use verdant_tests::baseline::{hot, watch};
use verdant_tests::{attached, fixture, Artifact};

/// Far above any real reload; a lost file event fails the test instead of
/// hanging it.
const PATIENCE: Duration = Duration::from_secs(30);

#[test]
fn both_reloaders_load_and_follow_the_comparison_fixtures() {
    let artifact = Artifact::new("hlr-v1");
    let (verdant, _shared, probe) = attached(&artifact);

    let watched = tempfile::tempdir().expect("watched dir");
    let library = watched.path().join("libhlr.so");
    std::fs::copy(fixture("hlr-v1"), &library).expect("install hlr-v1");
    watch(watched.path());
    let observer = hot::subscribe();
    assert_eq!(hot::hlr_version(), 1);

    artifact.install("hlr-v2");
    let report = verdant.reload_blocking(None).expect("reload");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(probe.get().expect("serving").version(), 2);

    let staging = library.with_extension("tmp");
    std::fs::copy(fixture("hlr-v2"), &staging).expect("write hlr-v2");
    std::fs::rename(&staging, &library).expect("install hlr-v2");
    let blocker = observer.wait_for_about_to_reload_timeout(PATIENCE).expect("hot-lib-reloader saw the new file");
    drop(blocker);
    assert!(observer.wait_for_reload_timeout(PATIENCE), "hot-lib-reloader reloaded");
    assert_eq!(hot::hlr_version(), 2);
}
