//! Support for the end-to-end tests: where the built libraries are, and an
//! artifact path that tests overwrite the way a rebuild does.

use std::path::{Path, PathBuf};

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
