//! Loading one library version: read, copy, validate, `dlopen`, identify and
//! type-check, each a named [`Step`](crate::Step).
//!
//! Built on `libloading` directly. hot-lib-reloader closes the old version
//! before it loads the new one and keeps one version; Verdant needs the
//! opposite (make-before-break, old versions alive while pinned), so it only
//! borrows `libloading`'s `dlopen`/`dlsym` wrappers.

use std::mem::ManuallyDrop;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libloading::os::unix::{Library, RTLD_LOCAL, RTLD_NOW};

use crate::descriptor::{self, Descriptor, Fingerprint};
use crate::error::LoadError;
use crate::report::ContentHash;

/// The file-system and `dlopen` steps of the pipeline, behind a trait so a
/// unit test can make exactly one of them fail.
#[cfg_attr(test, mockall::automock)]
pub(crate) trait Stages: Send + Sync {
    /// [`Step::Read`](crate::Step::Read): the artifact's bytes.
    fn read(&self, path: &Path) -> Result<Vec<u8>, LoadError>;
    /// [`Step::Copy`](crate::Step::Copy): writes the private copy.
    fn copy(&self, dir: &Path, file_name: &str, bytes: &[u8]) -> Result<PathBuf, LoadError>;
    /// [`Step::Validate`](crate::Step::Validate): checks the copy's bytes.
    fn validate(&self, bytes: &[u8]) -> Result<(), LoadError>;
    /// [`Step::Open`](crate::Step::Open): `dlopen` and the descriptor header.
    fn open(&self, copy: &Path) -> Result<LoadedLibrary, LoadError>;
}

/// The real pipeline.
pub(crate) struct System;

impl Stages for System {
    fn read(&self, path: &Path) -> Result<Vec<u8>, LoadError> {
        std::fs::read(path).map_err(|e| LoadError::Read { source: Arc::new(e) })
    }

    fn copy(&self, dir: &Path, file_name: &str, bytes: &[u8]) -> Result<PathBuf, LoadError> {
        let copy = dir.join(file_name);
        crate::private_dir::write_file(&copy, bytes)
            .map_err(|e| LoadError::Copy { copy: copy.clone(), source: Arc::new(e) })?;
        Ok(copy)
    }

    fn validate(&self, bytes: &[u8]) -> Result<(), LoadError> {
        crate::elf::validate(bytes)
    }

    fn open(&self, copy: &Path) -> Result<LoadedLibrary, LoadError> {
        LoadedLibrary::open(copy)
    }
}

/// What a library's descriptor says about its build.
#[derive(Debug, Clone)]
pub(crate) struct LibraryIdentity {
    pub package: String,
    pub package_version: String,
}

/// A `dlopen`ed private copy whose descriptor header matched this host.
pub(crate) struct LoadedLibrary {
    library: ManuallyDrop<Library>,
    descriptor: *const Descriptor,
    copy: PathBuf,
    identity: LibraryIdentity,
    unmap_on_drop: bool,
}

// SAFETY: the descriptor pointer refers to immutable static data inside the
// mapped library, which stays mapped while this value lives; `Library` is
// Send + Sync itself.
unsafe impl Send for LoadedLibrary {}
// SAFETY: as above.
unsafe impl Sync for LoadedLibrary {}

impl LoadedLibrary {
    /// `dlopen`s a validated copy and checks the descriptor header.
    fn open(copy: &Path) -> Result<LoadedLibrary, LoadError> {
        // SAFETY: loading runs the library's initialisers. The copy was
        // validated (a complete ELF shared object for this machine that
        // defines a Verdant descriptor), which is as much as can be known
        // before running its code; Rust cdylibs have no initialisers of their
        // own that allocate, and one that keeps memory is refused below
        // (`check_header`). RTLD_NOW makes missing symbols fail here rather
        // than later.
        let library = unsafe { Library::open(Some(copy), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| LoadError::Open { message: e.to_string() })?;
        let mut symbol_name = descriptor::SYMBOL.as_bytes().to_vec();
        symbol_name.push(0);
        // SAFETY: the symbol is a static `Descriptor` by the validation above;
        // it is read as a pointer, not yet dereferenced.
        let descriptor: *const Descriptor = unsafe { library.get::<*const Descriptor>(&symbol_name) }
            .map(|symbol| symbol.into_raw() as *const Descriptor)
            .map_err(|e| LoadError::Open { message: e.to_string() })?;
        let loaded = LoadedLibrary {
            library: ManuallyDrop::new(library),
            descriptor,
            copy: copy.to_owned(),
            identity: LibraryIdentity { package: String::new(), package_version: String::new() },
            // Libraries whose code ran on tokio workers stay mapped anyway
            // ([`docs::boundary`](crate::docs::boundary) §4); never unmapping is the one safe default.
            unmap_on_drop: false,
        };
        loaded.check_header()
    }

    /// Checks the `#[repr(C)]` header (magic, ABI, rustc and verdant
    /// versions), then the library's panic strategy, then installs the
    /// host's allocator and checks that the library's constructors hold no
    /// memory of the system allocator.
    fn check_header(mut self) -> Result<LoadedLibrary, LoadError> {
        // SAFETY: only the `#[repr(C)]` header is read here; its layout is the
        // same for every compiler, and the pointer is non-null (dlsym
        // succeeded) and points into the mapped file.
        let header = unsafe { &*self.descriptor };
        let bad = |detail: String| LoadError::BadDescriptor { symbol: descriptor::SYMBOL, detail };
        if header.magic != descriptor::MAGIC {
            return Err(bad("wrong magic number".to_owned()));
        }
        if header.abi_version != descriptor::ABI_VERSION {
            return Err(bad(format!(
                "descriptor ABI {} under the v{} symbol name",
                header.abi_version,
                descriptor::ABI_VERSION
            )));
        }
        // SAFETY: RawStr fields of a descriptor made by `export!` in a mapped
        // library.
        let (rustc, verdant, package, package_version) = unsafe {
            (
                header.rustc_version.read(),
                header.verdant_version.read(),
                header.package_name.read(),
                header.package_version.read(),
            )
        };
        if rustc != descriptor::RUSTC_VERSION {
            return Err(LoadError::RustcMismatch { library: rustc, host: descriptor::RUSTC_VERSION.to_owned() });
        }
        if verdant != descriptor::VERDANT_VERSION {
            return Err(LoadError::VerdantMismatch { library: verdant, host: descriptor::VERDANT_VERSION.to_owned() });
        }
        // Same rustc and verdant: the rest of the descriptor is readable.
        // A library that cannot unwind would abort the host on its first
        // panic, whatever guards it has; refuse it before any of its
        // functions is called. This comes before the type check on purpose:
        // the panic strategy is part of the profile, which feeds every
        // crate's metadata hash, so a `panic = "abort"` build would also fail
        // there, with a message that names the wrong cause.
        if !header.panic_unwind {
            return Err(LoadError::PanicAbort { package });
        }
        self.identity = LibraryIdentity { package, package_version };
        // Before any other library code runs, its allocations are routed to
        // the host's allocator (values cross the boundary by ownership).
        // Only its constructors ran before; memory they still hold is the
        // system allocator's, and the host's would free it later.
        let blocks = (header.use_host_allocator)(&verdant_loadable::__private::HOST_ALLOCATOR);
        if blocks > 0 {
            return Err(LoadError::ConstructorAllocated { blocks });
        }
        Ok(self)
    }

    /// [`Step::Check`](crate::Step::Check): every crossing type must be the
    /// host's, by `TypeId`.
    pub(crate) fn check_fingerprints(&self, expected: &[Fingerprint]) -> Result<(), LoadError> {
        let mut found = Vec::with_capacity(expected.len());
        // SAFETY: same rustc and verdant version (checked in the header), so
        // the Rust-ABI part of the descriptor has the host's layout.
        (self.descriptor().fingerprints)(&mut |fingerprint| found.push(fingerprint));
        let mut differing = expected.iter().filter_map(|host| {
            let library = found.iter().find(|f| f.role == host.role);
            match library {
                Some(library) if library.id == host.id => None,
                _ => Some((host, library)),
            }
        });
        let Some((host, library)) = differing.next() else { return Ok(()) };
        let library_type = match library {
            Some(library) if library.type_name == host.type_name => {
                format!("{} (same name, another build of its crate or of a crate it depends on)", library.type_name)
            }
            Some(library) => library.type_name.to_owned(),
            None => "<missing>".to_owned(),
        };
        Err(LoadError::TypeMismatch {
            crate_name: descriptor::crate_of(host.type_name).to_owned(),
            role: host.role.to_owned(),
            host_type: host.type_name.to_owned(),
            library_type,
            also: differing.map(|(host, _)| format!("{} (`{}`)", host.role, host.type_name)).collect(),
        })
    }

    /// The descriptor; only valid after [`check_header`](Self::check_header).
    pub(crate) fn descriptor(&self) -> &Descriptor {
        // SAFETY: static data in a library that stays mapped while `self`
        // lives; the header check established the layout.
        unsafe { &*self.descriptor }
    }

    /// Whether dropping the last reference `dlclose`s the library (off by
    /// default; see [`Builder::unmap_retired`](crate::Builder::unmap_retired)).
    pub(crate) fn set_unmap_on_drop(&mut self, unmap: bool) {
        self.unmap_on_drop = unmap;
    }

    pub(crate) fn identity(&self) -> &LibraryIdentity {
        &self.identity
    }
}

impl Drop for LoadedLibrary {
    fn drop(&mut self) {
        // The mapping keeps the inode alive; the copy's name is no longer
        // needed once the library is retired.
        if let Err(error) = std::fs::remove_file(&self.copy) {
            if error.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(copy = %self.copy.display(), %error, "cannot delete a retired library copy");
            }
        }
        if self.unmap_on_drop {
            // SAFETY: every instance and proxy of this library was dropped
            // before its last `Arc<LoadedLibrary>` (see `version.rs`), and a
            // library refused before attach never handed out any value.
            unsafe { ManuallyDrop::drop(&mut self.library) };
        }
    }
}

/// Numbers private copies across every registry of this process.
static COPY_SEQUENCE: AtomicU64 = AtomicU64::new(1);

/// The file name of a private copy: readable in `/proc/self/maps` and in
/// `status()`, and unique in its registry's private directory (names of
/// loadables may differ only in characters that are replaced here; the
/// sequence number is process-wide). The directory's name carries the pid.
pub(crate) fn copy_name(loadable: &str, hash: &ContentHash) -> String {
    let safe: String =
        loadable.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' }).collect();
    let sequence = COPY_SEQUENCE.fetch_add(1, Ordering::Relaxed);
    format!("{safe}-{sequence}-{hash}.so")
}
