//! Unit tests of the transaction's failure handling: mockall makes exactly
//! one pipeline step fail, the other steps are the real ones. Loading real
//! libraries end to end is covered by the `verdant-tests` package.

use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use crate::loader::{MockStages, Stages, System};
use crate::{Error, HandleError, LoadError, Outcome, Step, Verdant};

#[verdant_loadable::interface]
#[allow(dead_code)] // only its type matters: nothing is ever attached
trait Nothing: Send + Sync {
    fn nothing(&self) -> u32;
}

/// Real stages except `fail`, which returns `error`.
fn stages_failing_at(fail: Step, error: LoadError) -> MockStages {
    let mut mock = MockStages::new();
    let error = Arc::new(error);
    let at = move |step: Step| -> Option<LoadError> { (step == fail).then(|| (*error).clone()) };
    let read_at = at.clone();
    mock.expect_read()
        .returning(move |path, serving| read_at(Step::Read).map_or_else(|| System.read(path, serving), Err));
    let validate_at = at.clone();
    mock.expect_validate()
        .returning(move |bytes, rest| validate_at(Step::Validate).map_or_else(|| System.validate(bytes, rest), Err));
    let copy_at = at.clone();
    mock.expect_copy().returning(move |dir, name, bytes, loaded, rest| {
        copy_at(Step::Copy).map_or_else(|| System.copy(dir, name, bytes, loaded, rest), Err)
    });
    mock.expect_open().returning(move |copy| at(Step::Open).map_or_else(|| System.open(copy), Err));
    mock
}

/// A real Verdant library, so that every step before the injected failure
/// passes for real.
fn some_library() -> PathBuf {
    // The unit-test binary lives in target/<profile>/deps; fixture libraries
    // are built beside it by `cargo build --workspace`.
    let exe = std::env::current_exe().expect("own path");
    let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
    let path = dir.join("libfixture_good_v1.so");
    assert!(path.is_file(), "{} is missing: run `cargo build --workspace` first (scripts/test does)", path.display());
    path
}

/// A strict registry, so that the failure comes back as `Error::Reload`.
fn registry(stages: MockStages) -> Verdant {
    Verdant::builder(())
        .strict(true)
        .stages(Arc::new(stages))
        .add::<dyn Nothing>("nothing", some_library())
        .build()
        .expect("registry")
}

fn failure(result: Result<crate::ReloadReport, Error>) -> crate::ReloadFailure {
    match result {
        Err(Error::Reload(failure)) => *failure,
        other => panic!("expected a reload failure, got {other:?}"),
    }
}

fn files_in(dir: &Path) -> Vec<PathBuf> {
    std::fs::read_dir(dir).expect("private dir").map(|e| e.expect("entry").path()).collect()
}

#[test]
fn a_failed_read_names_the_step_and_loads_nothing() {
    let denied = LoadError::Read { source: Arc::new(io::Error::from(io::ErrorKind::PermissionDenied)) };
    let verdant = registry(stages_failing_at(Step::Read, denied));
    let failure = failure(verdant.attach());
    assert_eq!(failure.error.step, Step::Read);
    assert_eq!(failure.error.loadable, "nothing");
    assert!(matches!(failure.error.kind, LoadError::Read { .. }));
    assert_eq!(failure.report.loadables[0].steps.len(), 1);
    assert!(files_in(verdant.private_dir()).is_empty());
    let handle = verdant.handle::<dyn Nothing>("nothing").expect("handle");
    match handle.get() {
        Err(HandleError::AttachFailed { reason, .. }) => assert!(reason.contains("failed at step `read`"), "{reason}"),
        other => panic!("expected AttachFailed, got {other:?}"),
    }
}

#[test]
fn a_full_disk_at_copy_leaves_no_partial_copy() {
    let full = LoadError::Copy {
        copy: PathBuf::from("/private/nothing.so"),
        source: Arc::new(io::Error::from(io::ErrorKind::StorageFull)),
    };
    let verdant = registry(stages_failing_at(Step::Copy, full));
    let failure = failure(verdant.attach());
    assert_eq!(failure.error.step, Step::Copy);
    let steps: Vec<Step> = failure.report.loadables[0].steps.iter().map(|s| s.step).collect();
    assert_eq!(steps, [Step::Read, Step::Validate, Step::Copy]);
    assert!(files_in(verdant.private_dir()).is_empty());
    let message = Error::Reload(Box::new(failure)).to_string();
    assert!(message.contains("`nothing`") && message.contains("step `copy`"), "{message}");
}

#[test]
fn a_failed_dlopen_deletes_the_copy_it_could_not_open() {
    let refused = LoadError::Open { message: "simulated: cannot map segment".to_owned() };
    let verdant = registry(stages_failing_at(Step::Open, refused));
    let failure = failure(verdant.attach());
    assert_eq!(failure.error.step, Step::Open);
    assert!(files_in(verdant.private_dir()).is_empty(), "the unopened copy must be removed");
    assert_eq!(verdant.status().generation, 1, "the failed attach still had a generation");
}

#[test]
fn the_real_pipeline_refuses_a_library_built_for_another_host_crate() {
    // This unit-test binary is a different build of verdant than the one
    // the fixture links (it has cfg(test)), so the type check must refuse
    // it: the very check that protects users from mismatched builds.
    let verdant = registry(stages_failing_at(Step::Swap, LoadError::Revoked));
    let failure = failure(verdant.attach());
    assert_eq!(failure.error.step, Step::Check, "{}", failure.error);
    assert!(matches!(failure.error.kind, LoadError::TypeMismatch { .. }));
}

#[test]
fn outside_strict_mode_a_failure_is_reported_not_returned() {
    let denied = LoadError::Read { source: Arc::new(io::Error::from(io::ErrorKind::PermissionDenied)) };
    let verdant = Verdant::builder(())
        .strict(false)
        .stages(Arc::new(stages_failing_at(Step::Read, denied)))
        .add::<dyn Nothing>("nothing", some_library())
        .build()
        .expect("registry");
    let report = verdant.attach().expect("not strict: the report, not an error");
    assert!(!report.is_success(), "{report}");
    let failures: Vec<(&str, Step)> = report.failures().map(|(name, error)| (name, error.step)).collect();
    assert_eq!(failures, [("nothing", Step::Read)]);
    assert!(matches!(report.outcome("nothing"), Some(Outcome::Failed(_))));
    assert!(report.loadables[0].serving.is_none());
    assert!(report.to_string().contains("nothing: FAILED at read, not serving: "), "{report}");
    assert!(files_in(verdant.private_dir()).is_empty());
    let handle = verdant.handle::<dyn Nothing>("nothing").expect("handle");
    match handle.get() {
        Err(HandleError::AttachFailed { reason, .. }) => assert!(reason.contains("failed at step `read`"), "{reason}"),
        other => panic!("expected AttachFailed, got {other:?}"),
    }
}
