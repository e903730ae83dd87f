//! Support for the end-to-end tests: where the built libraries are, and an
//! artifact path that tests overwrite the way a rebuild does.

pub mod baseline;
pub mod client;
pub mod demo_app;
pub mod events;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use fixture_api::{FixtureContext, Probe, Shared};
use verdant::{Handle, Verdant};

/// `target/<profile>`, found from the running test executable
/// (`target/<profile>/deps/<test>-<hash>`).
pub fn artifact_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("the test knows its own path");
    let deps = exe.parent().expect("test binaries live in target/<profile>/deps");
    deps.parent().expect("deps has a parent").to_owned()
}

/// The built fixture library `name` (e.g. `good-v1`).
///
/// Panics with the command to run when it was not built: `cargo nextest`
/// builds test hosts, not `cdylib` artifacts.
pub fn fixture(name: &str) -> PathBuf {
    let path = artifact_dir().join(format!("libfixture_{}.so", name.replace('-', "_")));
    assert!(
        path.is_file(),
        "{} is missing: build the fixture libraries first with `cargo build --workspace` (scripts/test does)",
        path.display()
    );
    path
}

/// A library path a test "rebuilds" by copying fixture builds over it.
pub struct Artifact {
    _dir: tempfile::TempDir,
    path: PathBuf,
}

impl Artifact {
    /// A new artifact path holding a copy of fixture `name`.
    pub fn new(name: &str) -> Artifact {
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("libloadable.so");
        let artifact = Artifact { _dir: dir, path };
        artifact.install(name);
        artifact
    }

    /// Where the registry finds the library.
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Replaces the artifact with fixture `name`, atomically, like a linker
    /// writing a new file and renaming it into place.
    pub fn install(&self, name: &str) {
        self.install_bytes(&std::fs::read(fixture(name)).expect("read fixture"));
    }

    /// Replaces the artifact with arbitrary bytes.
    pub fn install_bytes(&self, bytes: &[u8]) {
        let staging = self.path.with_extension("tmp");
        std::fs::write(&staging, bytes).expect("write artifact");
        std::fs::rename(&staging, &self.path).expect("rename artifact");
    }
}

/// Polls `condition` up to 400 times, 25 ms apart (at most about 10 s), and
/// returns whether it became true. For effects that happen on a background
/// thread (detach hooks, file removal); never a timing assertion.
pub fn eventually(mut condition: impl FnMut() -> bool) -> bool {
    for _ in 0..400 {
        if condition() {
            return true;
        }
        std::thread::sleep(std::time::Duration::from_millis(25));
    }
    condition()
}

/// [`eventually`], panicking with `what` and the registry's status if
/// `done` never holds.
pub fn poll_until(verdant: &Verdant, what: &str, done: impl FnMut() -> bool) {
    if !eventually(done) {
        panic!("timed out waiting for: {what}\n{}", verdant.status());
    }
}

/// A registry with one loadable `probe` served from `artifact` (which must
/// hold good-v1), attached as generation 1: the registry, the fixtures'
/// shared counters and a handle.
pub fn attached(artifact: &Artifact) -> (Verdant, Arc<Shared>, Handle<dyn Probe>) {
    attached_with(artifact, |builder| builder)
}

/// [`attached`], with builder settings of the test's own.
pub fn attached_with(
    artifact: &Artifact,
    configure: impl FnOnce(verdant::Builder) -> verdant::Builder,
) -> (Verdant, Arc<Shared>, Handle<dyn Probe>) {
    let context = FixtureContext::new();
    let shared = context.shared.clone();
    let builder = configure(Verdant::builder(context));
    let verdant = builder.add::<dyn Probe>("probe", artifact.path()).build().expect("build");
    let report = verdant.attach().expect("initial attach");
    assert!(report.is_success(), "{report}");
    assert_eq!(report.generation, 1, "{report}");
    let probe = verdant.handle::<dyn Probe>("probe").expect("handle");
    assert_eq!(probe.get().expect("get").version(), 1);
    assert_eq!(shared.attach_count(), 1);
    (verdant, shared, probe)
}

/// Installs `build` over `artifact` and starts a reload of everything on a
/// thread of its own, held inside the new version's attach hook (the
/// fixtures' attach gate, closed here); returns once the hook waits there.
/// Open `shared.attach_gate` to let the reload finish; join the thread for
/// its result.
pub fn reload_held_in_attach(
    verdant: &Verdant,
    shared: &Shared,
    artifact: &Artifact,
    build: &str,
) -> std::thread::JoinHandle<Result<verdant::ReloadReport, verdant::Error>> {
    shared.attach_gate.close();
    artifact.install(build);
    let reloading = {
        let verdant = verdant.clone();
        std::thread::spawn(move || verdant.reload_blocking(None))
    };
    shared.attach_gate.until_waiting(1);
    reloading
}

/// The path of a shared object every Linux process maps (the C library),
/// read from `/proc/self/maps`: a well-formed ELF shared object for this
/// machine that is not a Verdant library.
pub fn system_library() -> PathBuf {
    let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
    let path = maps
        .lines()
        .filter_map(|line| line.split_whitespace().nth(5))
        .find(|path| path.starts_with('/') && path.contains("/libc.so"))
        .expect("this process maps libc");
    PathBuf::from(path)
}

/// The feature-mismatch fixture: `tests/mismatch`, a loadable built in its
/// own cargo workspace whose tokio has one feature more than the root
/// workspace's, so its crossing types have other `TypeId`s than the test
/// host's (docs/boundary.md §3).
///
/// Built on first use with `cargo build --manifest-path
/// tests/mismatch/Cargo.toml --target-dir target/mismatch` (its own target
/// directory, so it never waits on the lock of the build running the tests)
/// and cached there across runs. Takes about a minute the first time.
pub fn mismatch_fixture() -> PathBuf {
    static BUILT: std::sync::OnceLock<PathBuf> = std::sync::OnceLock::new();
    BUILT.get_or_init(build_mismatch_fixture).clone()
}

fn build_mismatch_fixture() -> PathBuf {
    let workspace = Path::new(env!("CARGO_MANIFEST_DIR")).join("mismatch");
    let manifest = workspace.join("Cargo.toml");
    let lock = workspace.join("Cargo.lock");
    if !lock.exists() {
        // Same versions as the host's build: the feature set is the only
        // difference. Cargo trims the copy to the packages it needs.
        let root_lock = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.lock");
        std::fs::copy(&root_lock, &lock)
            .unwrap_or_else(|e| panic!("copy {} to {}: {e}", root_lock.display(), lock.display()));
    }
    let target_dir = outside_target_dir("mismatch");
    eprintln!("building the feature-mismatch fixture (cached in {})", target_dir.display());
    cargo_build_outside(&manifest, &target_dir, &[], &[]);
    let path = target_dir.join("debug").join("libfixture_mismatch.so");
    assert!(path.is_file(), "{} was not produced by the build", path.display());
    path
}

/// The target directory of an outside workspace (a fixture with its own
/// `[workspace]`): `target/<name>`, beside `target/<profile>`. Its own, so
/// that its builds never wait on the lock of the build running the tests,
/// and kept across runs.
pub fn outside_target_dir(name: &str) -> PathBuf {
    artifact_dir().parent().expect("target/<profile> has a parent").join(name)
}

/// Runs `cargo build ARGS` for the outside workspace of `manifest` into
/// `target_dir`, with `envs` set, and panics with cargo's output if it fails.
pub fn cargo_build_outside(manifest: &Path, target_dir: &Path, args: &[&str], envs: &[(&str, &str)]) {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| env!("CARGO").into());
    let output = std::process::Command::new(&cargo)
        .arg("build")
        .arg("--manifest-path")
        .arg(manifest)
        .arg("--target-dir")
        .arg(target_dir)
        .args(args)
        .envs(envs.iter().copied())
        .env_remove("CARGO_TARGET_DIR")
        .env_remove("CARGO_BUILD_TARGET_DIR")
        .output()
        .unwrap_or_else(|e| panic!("run {cargo:?}: {e}"));
    assert!(
        output.status.success(),
        "cargo build {args:?} of {} failed ({}):\n{}",
        manifest.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
}
