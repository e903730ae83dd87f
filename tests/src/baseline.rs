//! What the benchmarks compare Verdant with: a host-local `Probe` (the
//! floor of a call) and hot-lib-reloader's generated module, both on the
//! fixture libraries `hlr-v1`/`hlr-v2`.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use fixture_api::{Gate, Probe};

/// A `Probe` compiled into the host: an `Arc<dyn Probe>` call on it is the
/// floor the benchmarks measure a call through a handle against.
pub struct LocalProbe;

impl Probe for LocalProbe {
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

/// The directory hot-lib-reloader watches (`lib_dir`), set once by
/// [`watch`] before the first call into [`hot`], which reads it then.
static HLR_DIR: OnceLock<PathBuf> = OnceLock::new();

fn hlr_dir() -> &'static Path {
    HLR_DIR.get().expect("call verdant_tests::baseline::watch before the first call into `hot`")
}

/// Makes hot-lib-reloader watch `dir` (for `libhlr.so`); once per process,
/// before the first call into [`hot`].
pub fn watch(dir: &Path) {
    HLR_DIR.set(dir.to_owned()).expect("hot-lib-reloader watches one directory per process");
}

/// What `#[hot_module]` generates: a global `LibReloader` for
/// `<dir>/libhlr.so` (see [`watch`]), made on the first call, with a
/// file-watcher thread (debounce 5 ms instead of its default 500 ms) and an
/// update thread; a wrapper per declared function.
#[hot_lib_reloader::hot_module(dylib = "hlr", lib_dir = crate::baseline::hlr_dir(), file_watch_debounce = 5)]
pub mod hot {
    #[hot_function]
    pub fn hlr_version() -> u32 {}

    #[lib_change_subscription]
    pub fn subscribe() -> hot_lib_reloader::LibReloadObserver {}
}
