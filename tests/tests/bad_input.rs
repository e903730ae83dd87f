//! A bad build never takes the service down: whatever replaced the artifact,
//! the reload fails with a precise error that names the loadable, the step
//! and the file, and the version that was serving keeps serving.

use std::sync::Arc;
use std::time::Duration;

use fixture_api::{FixtureContext, Probe, Shared};
use verdant::{Builder, DetachState, Error, Handle, LoadError, Outcome, Step, StepError, Verdant};
use verdant_tests::{eventually, fixture, mismatch_fixture, system_library, Artifact};

/// A registry serving good-v1 from an artifact the test then spoils, in
/// strict mode, so that a refused build comes back as `Error::Reload` (what
/// non-strict mode returns instead is tested in `independent.rs`).
struct Serving {
    artifact: Artifact,
    verdant: Verdant,
    probe: Handle<dyn Probe>,
    shared: Arc<Shared>,
}

fn serving_v1(configure: impl FnOnce(Builder) -> Builder) -> Serving {
    let artifact = Artifact::new("good-v1");
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = configure(Verdant::builder(context).strict(true).add::<dyn Probe>("probe", artifact.path()))
        .build()
        .expect("build registry");
    let report = verdant.attach().expect("good-v1 attaches");
    assert_eq!(report.generation, 1);
    let probe = verdant.handle::<dyn Probe>("probe").expect("handle");
    assert_eq!(probe.get().expect("attached").version(), 1);
    Serving { artifact, verdant, probe, shared }
}

impl Serving {
    /// Reloads, expects a failure of `probe` at `step`, checks everything
    /// that must hold after any refused build, and returns the error and its
    /// message for the case's own checks.
    fn refused_at(&self, step: Step) -> (StepError, String) {
        let generation_before = self.verdant.status().generation;
        let result = self.verdant.reload_blocking(Some("probe"));
        let failure = match result {
            Err(Error::Reload(failure)) => failure,
            Err(other) => panic!("expected Error::Reload at {step}, got another error: {other:?}"),
            Ok(report) => panic!("expected Error::Reload at {step}, the reload succeeded:\n{report}"),
        };
        let message = Error::Reload(failure.clone()).to_string();
        println!("{message}");
        let error = failure.error.clone();
        assert_eq!(error.step, step, "{message}");
        assert_eq!(error.loadable, "probe");
        assert_eq!(error.path, self.artifact.path());
        assert!(message.contains("`probe`"), "the message names the loadable: {message}");
        assert!(message.contains(&self.artifact.path().display().to_string()), "the message names the path: {message}");
        assert!(message.contains(&format!("step `{step}`")), "the message names the step: {message}");
        assert!(message.contains("`probe` keeps its previous version"), "the message says what serves: {message}");

        // The report: one loadable, failed at this step, which is the last
        // step that ran.
        let report = &failure.report;
        assert_eq!(report.generation, generation_before + 1);
        assert_eq!(report.loadables.len(), 1);
        match report.outcome("probe") {
            Some(Outcome::Failed(reported)) => assert_eq!(reported.step, step),
            other => panic!("expected Outcome::Failed, got {other:?}"),
        }
        assert_eq!(report.loadables[0].steps.last().map(|s| s.step), Some(step));

        // Still serving generation 1, good-v1; nothing retired.
        assert_eq!(self.probe.get().expect("still attached").version(), 1);
        assert_eq!(self.probe.get().unwrap().generation(), 1);
        let status = self.verdant.status();
        assert_eq!(status.generation, generation_before + 1);
        let loadable = &status.loadables[0];
        let current = loadable.current.as_ref().expect("a version still serves");
        assert_eq!(current.generation, 1);
        assert_eq!(current.package_version, "0.1.0");
        assert!(loadable.retired.is_empty(), "nothing was retired: {status}");
        // A library refused before its attach hook ran never ran code that
        // could pin it, so it is unmapped again: only good-v1 stays mapped.
        if step < Step::Attach {
            assert!(
                eventually(|| self.mapped_copies().len() == 1),
                "a library refused at {step} is still mapped: {:?}",
                self.mapped_copies()
            );
        }
        (error, message)
    }

    /// The private copies this process maps (`/proc/self/maps`).
    fn mapped_copies(&self) -> std::collections::BTreeSet<String> {
        let dir = self.verdant.private_dir().display().to_string();
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
        maps.lines()
            .filter_map(|line| line.split_whitespace().nth(5))
            .filter(|path| path.starts_with(&dir))
            .map(str::to_owned)
            .collect()
    }

    fn steps_of_last_failure(&self) -> Vec<Step> {
        match self.verdant.reload_blocking(Some("probe")) {
            Err(Error::Reload(failure)) => failure.report.loadables[0].steps.iter().map(|s| s.step).collect(),
            other => panic!("expected a failure, got {other:?}"),
        }
    }

    /// The files in the private directory (copies of loaded versions).
    fn private_copies(&self) -> Vec<std::path::PathBuf> {
        std::fs::read_dir(self.verdant.private_dir())
            .expect("read private dir")
            .map(|entry| entry.expect("dir entry").path())
            .collect()
    }
}

#[test]
fn attach_error_is_reported_and_v1_keeps_serving() {
    let s = serving_v1(|b| b);
    s.artifact.install("attach-error");
    let (error, message) = s.refused_at(Step::Attach);
    match &error.kind {
        LoadError::AttachFailed { message } => assert_eq!(message, "fixture refuses to attach: no database"),
        other => panic!("expected AttachFailed, got {other:?}"),
    }
    assert!(message.contains("fixture refuses to attach: no database"), "{message}");
    // The hook failed before it created an instance, and the refused copy
    // is removed once the attach thread let go of it.
    assert_eq!(s.shared.attach_count(), 1);
    assert!(eventually(|| s.private_copies().len() == 1), "{:?}", s.private_copies());
}

#[test]
fn attach_panic_is_contained_and_v1_keeps_serving() {
    let s = serving_v1(|b| b);
    s.artifact.install("attach-panic");
    let (error, message) = s.refused_at(Step::Attach);
    match &error.kind {
        LoadError::AttachPanicked { message } => assert_eq!(message, "fixture attach panics on purpose"),
        other => panic!("expected AttachPanicked, got {other:?}"),
    }
    assert!(message.contains("fixture attach panics on purpose"), "{message}");
    assert_eq!(s.shared.attach_count(), 1);
    // The process survived the panic, and the registry still works: a
    // second attempt is refused the same way.
    s.refused_at(Step::Attach);
}

#[test]
fn attach_hang_times_out_and_the_thread_is_reported_stuck() {
    let limit = Duration::from_millis(300);
    let s = serving_v1(|b| b.attach_timeout(limit));
    s.artifact.install("attach-hang");
    let (error, message) = s.refused_at(Step::Attach);
    let thread = match &error.kind {
        LoadError::AttachTimedOut { limit: reported, thread } => {
            assert_eq!(*reported, limit);
            thread.clone()
        }
        other => panic!("expected AttachTimedOut, got {other:?}"),
    };
    assert!(message.contains(&thread), "the message names the abandoned thread: {message}");
    let stuck = s.verdant.status().stuck_attaches;
    assert_eq!(stuck.len(), 1, "{stuck:?}");
    assert_eq!(stuck[0].loadable, "probe");
    assert_eq!(stuck[0].thread, thread);
}

#[test]
fn a_shared_object_without_descriptor_is_refused_before_dlopen() {
    let s = serving_v1(|b| b);
    let libc = system_library();
    s.artifact.install_bytes(&std::fs::read(&libc).expect("read libc"));
    let (error, message) = s.refused_at(Step::Validate);
    assert!(matches!(error.kind, LoadError::NotVerdant { symbol: "__verdant_descriptor_v3" }), "{:?}", error.kind);
    assert!(message.contains("__verdant_descriptor_v3"), "{message}");
    // Refused before any copy was written or opened: only Read and Validate
    // ran, and the private directory holds only good-v1's copy.
    assert_eq!(s.steps_of_last_failure(), [Step::Read, Step::Validate]);
    assert_eq!(s.private_copies().len(), 1, "{:?}", s.private_copies());
}

#[test]
fn a_truncated_build_is_refused() {
    let s = serving_v1(|b| b);
    let v2 = std::fs::read(fixture("good-v2")).expect("read good-v2");
    s.artifact.install_bytes(&v2[..v2.len() / 3]);
    let (error, message) = s.refused_at(Step::Validate);
    assert!(matches!(error.kind, LoadError::Truncated { .. }), "{:?}", error.kind);
    assert!(message.contains("truncated"), "{message}");
    assert_eq!(s.steps_of_last_failure(), [Step::Read, Step::Validate]);
}

#[test]
fn a_build_that_differs_only_in_its_debug_sections_is_the_serving_version() {
    use object::read::elf::{FileHeader, ProgramHeader};
    let s = serving_v1(|b| b);
    let mut v1 = std::fs::read(fixture("good-v1")).expect("read good-v1");
    // A byte between the end of the last loaded segment and the section
    // header table: debug information, which a reload does not read.
    let header = object::elf::FileHeader64::<object::Endianness>::parse(&*v1).expect("ELF header");
    let endian = header.endian().expect("byte order");
    let loaded = header
        .program_headers(endian, &*v1)
        .expect("program headers")
        .iter()
        .map(|segment| segment.p_offset(endian) + segment.p_filesz(endian))
        .max()
        .expect("segments");
    let section_headers = header.e_shoff(endian);
    assert!(section_headers > loaded + 2, "the fixture has unloaded sections");
    v1[((loaded + section_headers) / 2) as usize] ^= 0x5a;
    s.artifact.install_bytes(&v1);
    let report = s.verdant.reload_blocking(Some("probe")).expect("reload");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Unchanged { .. })), "{report}");
    assert_eq!(s.probe.get().expect("serving").generation(), 1);
    assert_eq!(s.private_copies().len(), 1, "{:?}", s.private_copies());
}

#[test]
fn an_empty_file_is_refused() {
    let s = serving_v1(|b| b);
    s.artifact.install_bytes(&[]);
    let (error, _) = s.refused_at(Step::Validate);
    assert!(matches!(error.kind, LoadError::Empty), "{:?}", error.kind);
}

#[test]
fn random_bytes_are_refused() {
    let s = serving_v1(|b| b);
    // xorshift64: deterministic noise that does not start with "\x7fELF".
    let mut state = 0x9e37_79b9_7f4a_7c15_u64;
    let noise: Vec<u8> = (0..64 * 1024)
        .map(|_| {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            (state >> 24) as u8
        })
        .collect();
    assert_ne!(&noise[..4], b"\x7fELF");
    s.artifact.install_bytes(&noise);
    let (error, _) = s.refused_at(Step::Validate);
    assert!(matches!(error.kind, LoadError::NotElf { .. }), "{:?}", error.kind);
}

#[test]
fn a_missing_file_is_refused() {
    let s = serving_v1(|b| b);
    std::fs::remove_file(s.artifact.path()).expect("remove artifact");
    let (error, _) = s.refused_at(Step::Read);
    match &error.kind {
        LoadError::Read { source } => assert_eq!(source.kind(), std::io::ErrorKind::NotFound),
        other => panic!("expected Read, got {other:?}"),
    }
}

#[test]
fn a_build_with_another_feature_set_is_refused_at_check() {
    let mismatch = mismatch_fixture();
    let s = serving_v1(|b| b);
    s.artifact.install_bytes(&std::fs::read(&mismatch).expect("read mismatch fixture"));
    let (error, message) = s.refused_at(Step::Check);
    println!("the message a user sees: {message}");
    match &error.kind {
        LoadError::TypeMismatch { crate_name, role, host_type, library_type, also } => {
            // The fixture's tokio has one feature more; every crate before
            // tokio in dependency order (bytes, http, log, tracing-core) is
            // the same build, so tokio is named as the cause.
            assert_eq!(crate_name, "tokio");
            assert_eq!(role, "tokio runtime handle");
            assert!(host_type.starts_with("tokio::runtime"), "{host_type}");
            assert!(library_type.starts_with("tokio::runtime"), "{library_type}");
            assert!(message.contains("the build of crate `tokio` differs"), "the message names the crate: {message}");
            assert!(message.contains("cargo-hakari"), "the message says what to do: {message}");
            // Everything built on tokio differs with it, the interface too.
            assert!(also.iter().any(|t| t.contains("fixture_api::Probe")), "{also:?}");
            assert!(!also.iter().any(|t| t.contains("bytes") || t.contains("log::")), "{also:?}");
        }
        other => panic!("expected TypeMismatch, got {other:?}"),
    }
    // Refused before its attach hook ran; its copy is gone.
    assert_eq!(s.shared.attach_count(), 1);
    assert_eq!(s.private_copies().len(), 1, "{:?}", s.private_copies());
    assert_eq!(s.steps_of_last_failure(), [Step::Read, Step::Validate, Step::Copy, Step::Open, Step::Check]);
}

#[test]
fn a_good_build_after_a_bad_one_is_taken() {
    let s = serving_v1(|b| b);
    s.artifact.install_bytes(b"not a library");
    s.refused_at(Step::Validate);
    s.artifact.install("good-v2");
    let report = s.verdant.reload_blocking(Some("probe")).expect("good-v2 loads");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(report.generation, 3);
    assert_eq!(s.probe.get().unwrap().version(), 2);
}

#[test]
fn a_panicking_detach_hook_is_contained() {
    let artifact = Artifact::new("detach-panic");
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let verdant = Verdant::builder(context).add::<dyn Probe>("probe", artifact.path()).build().unwrap();
    verdant.attach().unwrap();
    let probe = verdant.handle::<dyn Probe>("probe").unwrap();
    assert_eq!(probe.get().unwrap().version(), 14);

    artifact.install("good-v2");
    let report = verdant.reload_blocking(Some("probe")).expect("good-v2 replaces detach-panic");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");

    let detach_state = || verdant.status().loadables[0].retired.first().map(|r| r.detach.clone());
    assert!(eventually(|| !matches!(detach_state(), None | Some(DetachState::Pending))), "{}", verdant.status());
    assert_eq!(detach_state(), Some(DetachState::Panicked("fixture detach panics on purpose".to_owned())));
    // The hook ran up to its panic, exactly once.
    assert_eq!(shared.detached(), [(1, 14)]);
    // The process lives and v2 serves.
    assert_eq!(probe.get().unwrap().version(), 2);
}

/// `fixture`'s bytes with every occurrence of `from` replaced by `to` (same
/// length); at least one occurrence must exist.
fn patched(fixture_name: &str, from: &[u8], to: &[u8]) -> Vec<u8> {
    assert_eq!(from.len(), to.len());
    let mut bytes = std::fs::read(fixture(fixture_name)).expect("read fixture");
    let mut count = 0;
    let mut at = 0;
    while let Some(offset) = bytes[at..].windows(from.len()).position(|w| w == from) {
        let start = at + offset;
        bytes[start..start + to.len()].copy_from_slice(to);
        at = start + to.len();
        count += 1;
    }
    assert!(count > 0, "{:?} does not occur in {fixture_name}", String::from_utf8_lossy(from));
    bytes
}

#[test]
fn an_elf_file_for_another_machine_is_refused() {
    let s = serving_v1(|b| b);
    let mut bytes = std::fs::read(fixture("good-v2")).unwrap();
    // e_machine = EM_AARCH64 (183), or EM_X86_64 (62) on an aarch64 host.
    let other: u16 = if cfg!(target_arch = "aarch64") { 62 } else { 183 };
    bytes[18..20].copy_from_slice(&other.to_le_bytes());
    s.artifact.install_bytes(&bytes);
    let (error, _) = s.refused_at(Step::Validate);
    assert!(matches!(error.kind, LoadError::WrongArchitecture { .. }), "{:?}", error.kind);
}

#[test]
fn an_elf_executable_is_refused() {
    let s = serving_v1(|b| b);
    let mut bytes = std::fs::read(fixture("good-v2")).unwrap();
    bytes[16..18].copy_from_slice(&2u16.to_le_bytes()); // e_type = ET_EXEC
    s.artifact.install_bytes(&bytes);
    let (error, _) = s.refused_at(Step::Validate);
    assert!(matches!(error.kind, LoadError::NotSharedObject { .. }), "{:?}", error.kind);
}

#[test]
fn a_descriptor_of_another_abi_is_refused_before_dlopen() {
    let s = serving_v1(|b| b);
    s.artifact.install_bytes(&patched("good-v2", b"__verdant_descriptor_v3", b"__verdant_descriptor_v9"));
    let (error, message) = s.refused_at(Step::Validate);
    match &error.kind {
        LoadError::DescriptorMismatch { found, expected } => {
            assert_eq!(found, &["__verdant_descriptor_v9"]);
            assert_eq!(*expected, "__verdant_descriptor_v3");
        }
        other => panic!("expected DescriptorMismatch, got {other:?}"),
    }
    assert!(message.contains("__verdant_descriptor_v9"), "{message}");
    assert_eq!(s.steps_of_last_failure(), [Step::Read, Step::Validate]);
}

#[test]
fn a_library_dlopen_refuses_is_reported_at_open_and_its_copy_removed() {
    let s = serving_v1(|b| b);
    // A dependency that does not exist: valid ELF, but dlopen fails.
    s.artifact.install_bytes(&patched("good-v2", b"libgcc_s.so.1\0", b"libgcc_q.so.1\0"));
    let (error, message) = s.refused_at(Step::Open);
    match &error.kind {
        LoadError::Open { message } => assert!(message.contains("libgcc_q.so.1"), "{message}"),
        other => panic!("expected Open, got {other:?}"),
    }
    assert!(message.contains("dlopen failed"), "{message}");
    assert_eq!(s.shared.attach_count(), 1);
    assert_eq!(s.private_copies().len(), 1, "the refused copy was removed: {:?}", s.private_copies());
}

#[test]
fn a_forged_descriptor_is_refused_at_open() {
    let s = serving_v1(|b| b);
    s.artifact.install_bytes(&patched("good-v2", b"verdant-loadable", b"verdant-loadablX"));
    let (error, _) = s.refused_at(Step::Open);
    assert!(
        matches!(&error.kind, LoadError::BadDescriptor { detail, .. } if detail.contains("magic")),
        "{:?}",
        error.kind
    );
    assert_eq!(s.shared.attach_count(), 1);
    assert!(eventually(|| s.private_copies().len() == 1), "{:?}", s.private_copies());
}

#[test]
fn a_library_built_by_another_rustc_is_refused_at_open() {
    let host = verdant::descriptor::RUSTC_VERSION;
    // The same string with its first digit changed: same length, other rustc.
    let digit = host.find(|c: char| c.is_ascii_digit()).expect("rustc -V has a version number");
    let mut forged = host.as_bytes().to_vec();
    forged[digit] = if forged[digit] == b'9' { b'8' } else { forged[digit] + 1 };
    let forged = String::from_utf8(forged).unwrap();

    let s = serving_v1(|b| b);
    s.artifact.install_bytes(&patched("good-v2", host.as_bytes(), forged.as_bytes()));
    let (error, message) = s.refused_at(Step::Open);
    match &error.kind {
        LoadError::RustcMismatch { library, host: reported } => {
            assert_eq!(library, &forged);
            assert_eq!(reported, host);
        }
        other => panic!("expected RustcMismatch, got {other:?}"),
    }
    assert!(message.contains(&forged) && message.contains(host), "{message}");
    assert_eq!(s.shared.attach_count(), 1);
}

#[test]
fn an_attach_that_returns_after_the_time_limit_is_detached_and_unlisted() {
    let s = serving_v1(|b| b.attach_timeout(Duration::from_millis(300)));
    // good-v2's attach hook waits at the gate until after the time limit.
    s.shared.attach_gate.close();
    s.artifact.install("good-v2");
    let (error, _) = s.refused_at(Step::Attach);
    assert!(matches!(error.kind, LoadError::AttachTimedOut { .. }), "{:?}", error.kind);
    assert_eq!(s.verdant.status().stuck_attaches.len(), 1);
    assert_eq!(s.private_copies().len(), 2, "the stuck attach still holds its copy");

    s.shared.attach_gate.open();
    // The late instance (number 2) is detached at once and never served.
    assert!(eventually(|| s.shared.detached() == [(2, 2)]), "{:?}", s.shared.detached());
    assert!(eventually(|| s.verdant.status().stuck_attaches.is_empty()), "{}", s.verdant.status());
    assert!(eventually(|| s.private_copies().len() == 1), "{:?}", s.private_copies());
    assert_eq!(s.probe.get().unwrap().version(), 1);
    assert!(s.verdant.status().loadables[0].retired.is_empty());

    // Now that the hook returns in time, the same build loads.
    let report = s.verdant.reload_blocking(Some("probe")).expect("good-v2 attaches in time");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(s.probe.get().unwrap().version(), 2);
    assert_eq!(s.probe.get().unwrap().instance(), 3);
}

/// `fixture`'s bytes as a build with `panic = "abort"` would have them: its
/// descriptor's `panic_unwind` field is `false`. The field is found, not
/// guessed: the descriptor symbol's offset in the file (from the dynamic
/// symbol table) plus the field's offset in `Descriptor`. The descriptor is
/// plain data in the file; only its pointer fields are relocated at load, so
/// the byte in the file is the byte the loader reads. (A real
/// `panic = "abort"` build needs a profile of its own and rebuilds every
/// dependency; this exercises the same loader path on a library that is
/// otherwise identical to good-v2.)
fn built_with_panic_abort(fixture_name: &str) -> Vec<u8> {
    use object::{Object, ObjectSection, ObjectSymbol};

    let mut bytes = std::fs::read(fixture(fixture_name)).expect("read fixture");
    let offset = {
        let file = object::File::parse(&*bytes).expect("parse the fixture");
        let symbol = file
            .dynamic_symbols()
            .find(|symbol| symbol.name() == Ok(verdant::descriptor::SYMBOL))
            .expect("the fixture exports its descriptor");
        let section =
            file.section_by_index(symbol.section_index().expect("a defined symbol")).expect("the descriptor's section");
        let (section_offset, _) = section.file_range().expect("the descriptor's section has bytes in the file");
        let field = std::mem::offset_of!(verdant::descriptor::Descriptor, panic_unwind) as u64;
        usize::try_from(section_offset + (symbol.address() - section.address()) + field).expect("fits")
    };
    assert_eq!(bytes[offset], 1, "a panic = \"unwind\" build has `true` there");
    bytes[offset] = 0;
    bytes
}

#[test]
fn a_library_built_with_panic_abort_is_refused_before_it_runs() {
    let s = serving_v1(|b| b);
    s.artifact.install_bytes(&built_with_panic_abort("good-v2"));
    let (error, message) = s.refused_at(Step::Open);
    match &error.kind {
        LoadError::PanicAbort { package } => assert_eq!(package, "fixture-good-v2"),
        other => panic!("expected PanicAbort, got {other:?}"),
    }
    assert!(message.contains("panic = \"unwind\"") && message.contains("remove `panic = \"abort\"`"), "{message}");
    // Refused before its attach hook ran; its copy is gone.
    assert_eq!(s.shared.attach_count(), 1);
    assert!(eventually(|| s.private_copies().len() == 1), "{:?}", s.private_copies());
}

#[test]
fn a_library_whose_constructor_keeps_allocations_is_refused_before_attach() {
    let s = serving_v1(|b| b);
    // Its constructor keeps two blocks of the system allocator and frees a
    // third (tests/fixtures/ctor-alloc).
    s.artifact.install("ctor-alloc");
    let (error, message) = s.refused_at(Step::Open);
    match &error.kind {
        LoadError::ConstructorAllocated { blocks } => assert_eq!(*blocks, 2, "only the blocks it kept count"),
        other => panic!("expected ConstructorAllocated, got {other:?}"),
    }
    assert!(message.contains("allocated 2 time(s) in its constructors"), "{message}");
    assert!(message.contains("do that work in the attach hook"), "the message says what to do: {message}");
    // Refused before its attach hook ran; its copy is gone.
    assert_eq!(s.shared.attach_count(), 1);
    assert!(eventually(|| s.private_copies().len() == 1), "{:?}", s.private_copies());
}

#[test]
fn a_hung_attach_thread_is_never_given_the_next_attach() {
    let s = serving_v1(|b| b.attach_timeout(Duration::from_millis(300)));
    // good-v2's attach hook waits at the gate until it opens.
    s.shared.attach_gate.close();
    s.artifact.install("good-v2");
    let timed_out_on = |s: &Serving| match s.refused_at(Step::Attach).0.kind {
        LoadError::AttachTimedOut { thread, .. } => thread,
        other => panic!("expected AttachTimedOut, got {other:?}"),
    };
    let first = timed_out_on(&s);
    // Attach threads are reused once their hook returned; this one still
    // hangs, so the next attach runs on another thread instead of queueing
    // behind it (it would then time out on the first one's name).
    let second = timed_out_on(&s);
    assert_ne!(first, second, "the second attach waited behind the hung hook");
    assert_eq!(s.verdant.status().stuck_attaches.len(), 2);

    s.shared.attach_gate.open();
    assert!(eventually(|| s.verdant.status().stuck_attaches.is_empty()), "{}", s.verdant.status());
    let report = s.verdant.reload_blocking(Some("probe")).expect("good-v2 attaches in time");
    assert!(matches!(report.outcome("probe"), Some(Outcome::Swapped { .. })), "{report}");
    assert_eq!(s.probe.get().unwrap().version(), 2);
}
