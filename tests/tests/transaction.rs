//! Reloads are transactions: make-before-break, all-or-nothing per unit (a
//! loadable, or a group), numbered, reported step by step, and they clean up
//! after themselves. That ungrouped loadables are independent units is
//! tested in `independent.rs`.

use std::os::unix::fs::PermissionsExt;
use std::sync::Arc;

use fixture_api::{FixtureContext, Probe, Shared};
use verdant::{DetachState, Error, LoadError, Outcome, RetireReason, Step, Trigger, Verdant, VersionInfo};
use verdant_tests::{attached, eventually, reload_held_in_attach, Artifact};

/// Two loadables, `a` and `b`, both attached on good-v1, in one group (so
/// that they are one all-or-nothing unit), in strict mode (so that a failure
/// comes back as `Error::Reload`).
struct Pair {
    a: Artifact,
    b: Artifact,
    verdant: Verdant,
    shared: Arc<Shared>,
}

fn pair() -> Pair {
    let a = Artifact::new("good-v1");
    let b = Artifact::new("good-v1");
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context)
        .strict(true)
        .add::<dyn Probe>("a", a.path())
        .add::<dyn Probe>("b", b.path())
        .group("pair", ["a", "b"])
        .build()
        .unwrap();
    let report = verdant.attach().unwrap();
    assert!(report.is_success(), "{report}");
    Pair { a, b, verdant, shared }
}

impl Pair {
    fn version(&self, name: &str) -> u32 {
        self.verdant.handle::<dyn Probe>(name).unwrap().get().unwrap().version()
    }
    fn instance(&self, name: &str) -> u64 {
        self.verdant.handle::<dyn Probe>(name).unwrap().get().unwrap().instance()
    }
}

#[test]
fn a_failure_of_one_group_member_rolls_back_the_other() {
    let p = pair();
    let (a1, b1) = (p.instance("a"), p.instance("b"));
    assert_eq!(p.shared.attach_count(), 2);
    p.a.install("good-v2");
    p.b.install("attach-error");

    let failure = match p.verdant.reload_blocking(None) {
        Err(Error::Reload(failure)) => failure,
        other => panic!("expected Error::Reload, got {other:?}"),
    };
    let message = Error::Reload(failure.clone()).to_string();
    println!("{message}\n{}", failure.report);
    assert_eq!(failure.error.loadable, "b");
    assert_eq!(failure.error.step, Step::Attach);
    assert!(matches!(failure.error.kind, LoadError::AttachFailed { .. }), "{:?}", failure.error.kind);
    assert!(message.contains("`b`"), "{message}");
    assert!(message.contains("`a`, `b` keep their previous versions"), "{message}");
    for loadable in &failure.report.loadables {
        assert_eq!(loadable.group.as_deref(), Some("pair"), "{}", failure.report);
        assert_eq!(loadable.serving.as_ref().map(|v| v.generation), Some(1), "{}", failure.report);
    }
    assert_eq!(failure.report.failures().map(|(name, _)| name).collect::<Vec<_>>(), ["b"]);

    // a was loaded and attached as good-v2 (instance 3), then discarded.
    match failure.report.outcome("a") {
        Some(Outcome::RolledBack { discarded }) => {
            assert_eq!(discarded.package_version, "0.2.0");
            assert_eq!(discarded.generation, 2);
        }
        other => panic!("expected a RolledBack, got {other:?}"),
    }
    match failure.report.outcome("b") {
        Some(Outcome::Failed(error)) => assert_eq!(error.step, Step::Attach),
        other => panic!("expected b Failed, got {other:?}"),
    }
    assert_eq!(p.shared.attach_count(), 3, "a's good-v2 instance was attached");

    // Both still answer good-v1, with their original instances.
    assert_eq!((p.version("a"), p.version("b")), (1, 1));
    assert_eq!((p.instance("a"), p.instance("b")), (a1, b1));
    // status() lists a's discarded version as rolled back; it never served.
    let status = p.verdant.status();
    for loadable in &status.loadables {
        assert_eq!(loadable.current.as_ref().map(|c| c.generation), Some(1), "{status}");
        let retired: Vec<(RetireReason, u64)> =
            loadable.retired.iter().map(|r| (r.reason, r.version.generation)).collect();
        let expected = if loadable.name == "a" { vec![(RetireReason::RolledBack, 2)] } else { Vec::new() };
        assert_eq!(retired, expected, "{status}");
    }

    // The discarded good-v2 instance of a was detached; the serving ones
    // were not.
    assert!(eventually(|| p.shared.detached().contains(&(3, 2))), "detached: {:?}", p.shared.detached());
    assert_eq!(p.shared.detached(), [(3, 2)]);
    // Its private copy, and b's refused one, are removed: only the two
    // serving copies are left.
    let copies = || std::fs::read_dir(p.verdant.private_dir()).unwrap().count();
    assert!(eventually(|| copies() == 2), "{} copies left", copies());
}

#[test]
fn group_members_after_the_failing_one_are_not_reached() {
    let p = pair();
    p.a.install("attach-error");
    p.b.install("good-v2");
    let failure = match p.verdant.reload_blocking(None) {
        Err(Error::Reload(failure)) => failure,
        other => panic!("expected Error::Reload, got {other:?}"),
    };
    assert_eq!(failure.error.loadable, "a");
    assert!(matches!(failure.report.outcome("a"), Some(Outcome::Failed(_))));
    assert!(matches!(failure.report.outcome("b"), Some(Outcome::NotReached)), "{}", failure.report);
    let b_steps = &failure.report.loadables[1].steps;
    assert!(b_steps.is_empty(), "{b_steps:?}");
    assert_eq!(p.shared.attach_count(), 2, "b's good-v2 was never attached");
    assert_eq!((p.version("a"), p.version("b")), (1, 1));
}

#[test]
fn an_unchanged_file_is_not_reloaded() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    let instance = probe.get().unwrap().instance();

    // Rewritten with the same content (a fresh inode, as a no-op rebuild).
    artifact.install("good-v1");
    let report = verdant.reload_blocking(Some("probe")).unwrap();
    println!("{report}");
    match report.outcome("probe") {
        Some(Outcome::Unchanged { current }) => assert_eq!(current.generation, 1),
        other => panic!("expected Unchanged, got {other:?}"),
    }
    let steps: Vec<Step> = report.loadables[0].steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, [Step::Read]);
    assert_eq!(shared.attach_count(), 1, "no new instance");
    assert_eq!(probe.get().unwrap().instance(), instance);
    assert_eq!(probe.get().unwrap().generation(), 1);
    assert!(verdant.status().loadables[0].retired.is_empty());
}

/// A reload reads a file only when its stamp (inode, size, modification and
/// change times) differs from the serving version's; a file rewritten in
/// place, same inode and same size, is read again and swapped.
#[test]
fn a_file_is_read_only_when_its_stamp_changed_and_an_in_place_rewrite_is_seen() {
    // Both builds padded to one size with zeros after their last byte (an
    // ELF file may carry bytes nothing refers to), so that an in-place
    // rewrite keeps inode and size: only the times tell the difference.
    let v1 = std::fs::read(verdant_tests::fixture("good-v1")).unwrap();
    let mut v2 = std::fs::read(verdant_tests::fixture("good-v2")).unwrap();
    let size = v1.len().max(v2.len());
    let mut padded_v1 = v1.clone();
    padded_v1.resize(size, 0);
    v2.resize(size, 0);
    let artifact = Artifact::new("good-v1");
    artifact.install_bytes(&padded_v1);
    let (verdant, _shared, probe) = attached(&artifact);

    // Untouched: not read, nothing hashed (the read step is one fstat).
    let report = verdant.reload_blocking(Some("probe")).unwrap();
    assert!(matches!(report.outcome("probe"), Some(Outcome::Unchanged { .. })), "{report}");

    // Written over the same inode, with the same size.
    let inode = std::os::unix::fs::MetadataExt::ino(&std::fs::metadata(artifact.path()).unwrap());
    {
        use std::io::Write;
        let mut file = std::fs::OpenOptions::new().write(true).open(artifact.path()).unwrap();
        file.write_all(&v2).unwrap();
    }
    let after = std::fs::metadata(artifact.path()).unwrap();
    assert_eq!((std::os::unix::fs::MetadataExt::ino(&after), after.len()), (inode, size as u64));
    let report = verdant.reload_blocking(Some("probe")).unwrap();
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(probe.get().unwrap().version(), 2);
}

#[test]
fn a_changed_file_is_swapped_with_every_step_timed() {
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new()).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    let attached = verdant.attach().unwrap();
    let v1: VersionInfo = match attached.outcome("probe") {
        Some(Outcome::Swapped { old: None, new }) => new.clone(),
        other => panic!("expected the attach to swap in v1, got {other:?}"),
    };
    assert_eq!(v1.generation, 1);
    assert_eq!(v1.package_version, "0.1.0");

    artifact.install("good-v2");
    let report = verdant.reload_blocking(Some("probe")).unwrap();
    println!("{report}");
    match report.outcome("probe") {
        Some(Outcome::Swapped { old, new }) => {
            assert_eq!(old.as_ref(), Some(&v1));
            assert_eq!(new.generation, 2);
            assert_eq!(new.package_version, "0.2.0");
            assert_ne!(new.hash, v1.hash);
        }
        other => panic!("expected Swapped, got {other:?}"),
    }
    let steps = &report.loadables[0].steps;
    let names: Vec<Step> = steps.iter().map(|s| s.step).collect();
    assert_eq!(names, [Step::Read, Step::Validate, Step::Copy, Step::Open, Step::Check, Step::Attach, Step::Swap]);
    // The steps are disjoint parts of the transaction.
    let total: std::time::Duration = steps.iter().map(|s| s.duration).sum();
    assert!(total <= report.duration, "steps {total:?} > transaction {:?}", report.duration);
    // Steps that do I/O or start a thread were measured.
    for step in steps.iter().filter(|s| matches!(s.step, Step::Read | Step::Copy | Step::Open | Step::Attach)) {
        assert!(!step.duration.is_zero(), "{step:?}");
    }
    assert_eq!(verdant.handle::<dyn Probe>("probe").unwrap().get().unwrap().version(), 2);
}

#[test]
fn generations_increase_by_one_per_transaction() {
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new()).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    assert_eq!(verdant.status().generation, 0);

    assert_eq!(verdant.attach().unwrap().generation, 1);
    assert_eq!(probe.get().unwrap().generation(), 1);

    artifact.install("good-v2");
    assert_eq!(verdant.reload_blocking(None).unwrap().generation, 2);
    assert_eq!(probe.get().unwrap().generation(), 2);

    // Unchanged: still a transaction, still numbered.
    assert_eq!(verdant.reload_blocking(None).unwrap().generation, 3);
    assert_eq!(probe.get().unwrap().generation(), 2);

    // Failed: numbered too (reported, not returned as an error outside
    // strict mode).
    artifact.install("attach-error");
    let failed = verdant.reload_blocking(None).unwrap();
    assert!(matches!(failed.outcome("probe"), Some(Outcome::Failed(_))), "{failed}");
    assert_eq!(failed.generation, 4);
    assert_eq!(probe.get().unwrap().generation(), 2);

    artifact.install("good-v3");
    assert_eq!(verdant.reload_blocking(None).unwrap().generation, 5);
    assert_eq!(probe.get().unwrap().generation(), 5);
    assert_eq!(probe.get().unwrap().version(), 3);
    assert_eq!(verdant.status().generation, 5);
}

#[test]
fn a_retired_copy_is_deleted_but_stays_mapped() {
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new()).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    verdant.attach().unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    assert_eq!(probe.get().unwrap().version(), 1);
    artifact.install("good-v2");
    verdant.reload_blocking(None).unwrap();

    let retired = || verdant.status().loadables[0].retired[0].clone();
    let copy = retired().copy;
    assert!(copy.starts_with(verdant.private_dir()), "{}", copy.display());
    assert!(eventually(|| !copy.exists()), "{} still exists: {}", copy.display(), verdant.status());
    let retired = retired();
    assert_eq!(retired.detach, DetachState::Detached);
    assert_eq!(retired.in_flight, 0);
    assert!(retired.retired_at.is_some());
    assert!(retired.mapped, "the retired library is still mapped (docs/boundary.md §4): {}", verdant.status());
    assert!(retired.mapped_bytes >= 4096, "its mappings are measured: {} bytes", retired.mapped_bytes);

    // Only the serving version's copy is left.
    let left: Vec<_> = std::fs::read_dir(verdant.private_dir()).unwrap().map(|e| e.unwrap().path()).collect();
    assert_eq!(left.len(), 1, "{left:?}");
    assert_ne!(left[0], copy);
    assert_eq!(probe.get().unwrap().version(), 2);
}

#[test]
fn the_private_dir_is_mode_0700() {
    let verdant = Verdant::builder(FixtureContext::new()).build().unwrap();
    let dir = verdant.private_dir().to_owned();
    let mode = std::fs::metadata(&dir).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", dir.display());
    // Verdant created it, so it removes it with the registry.
    drop(verdant);
    assert!(eventually(|| !dir.exists()), "{} outlived its registry", dir.display());

    // A configured directory is created 0700, or tightened to it.
    let base = tempfile::tempdir().unwrap();
    let configured = base.path().join("copies");
    let verdant = Verdant::builder(FixtureContext::new()).private_dir(&configured).build().unwrap();
    let mode = std::fs::metadata(&configured).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", configured.display());
    drop(verdant);
    let loose = base.path().join("loose");
    std::fs::create_dir(&loose).unwrap();
    std::fs::set_permissions(&loose, std::fs::Permissions::from_mode(0o755)).unwrap();
    let verdant = Verdant::builder(FixtureContext::new()).private_dir(&loose).build().unwrap();
    let mode = std::fs::metadata(&loose).unwrap().permissions().mode() & 0o777;
    assert_eq!(mode, 0o700, "{} has mode {mode:o}", loose.display());
    drop(verdant);
}

#[test]
fn reports_name_their_trigger() {
    let artifact = Artifact::new("good-v1");
    let verdant = Verdant::builder(FixtureContext::new()).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    let attached = verdant.attach().unwrap();
    assert_eq!(attached.trigger, Trigger::Attach);
    assert_eq!(attached.coalesced, 1);
    artifact.install("good-v2");
    let reloaded = verdant.reload_blocking(None).unwrap();
    assert_eq!(reloaded.trigger, Trigger::Call);
    assert_eq!(reloaded.coalesced, 1);
    assert_eq!(reloaded.loadables[0].path, artifact.path());
}

#[test]
fn a_slow_attach_blocks_neither_calls_nor_status() {
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);

    // good-v2's attach hook is now running (blocked at the gate).
    let reloading = reload_held_in_attach(&verdant, &shared, &artifact, "good-v2");
    assert_eq!(probe.get().unwrap().version(), 1);
    let status = verdant.status();
    assert_eq!(status.loadables[0].current.as_ref().map(|c| c.generation), Some(1), "{status}");
    let other = Artifact::new("good-v3");
    verdant.add::<dyn Probe>("other", other.path()).unwrap();

    shared.attach_gate.open();
    let report = reloading.join().unwrap().expect("the reload completes once attach returns");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(probe.get().unwrap().version(), 2);
}

#[test]
fn a_restart_with_a_configured_private_dir_attaches_again() {
    // A service configured with Builder::private_dir stops without its
    // registry being dropped (SIGKILL, a crash, std::process::exit, or main
    // returning before the retirement thread deleted the copies), then
    // starts again on the same build.
    let base = tempfile::tempdir().unwrap();
    let dir = base.path().join("copies");
    let artifact = Artifact::new("good-v1");
    let previous_run = Verdant::builder(FixtureContext::new())
        .private_dir(&dir)
        .add::<dyn Probe>("probe", artifact.path())
        .build()
        .unwrap();
    previous_run.attach().unwrap();
    std::mem::forget(previous_run); // the process is gone; its copy stays
    assert_eq!(std::fs::read_dir(&dir).unwrap().count(), 1);

    let verdant = Verdant::builder(FixtureContext::new())
        .private_dir(&dir)
        .add::<dyn Probe>("probe", artifact.path())
        .build()
        .unwrap();
    verdant.attach().unwrap_or_else(|e| panic!("the restarted service attaches: {e}"));
    assert_eq!(verdant.handle::<dyn Probe>("probe").unwrap().get().unwrap().version(), 1);
}
