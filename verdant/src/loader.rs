//! Loading one library version: read, validate, copy, `dlopen`, identify and
//! type-check, each a named [`Step`](crate::Step). The background work of a
//! copy (its debug sections, the next spare file) runs on the kept
//! `verdant-copy-tail` thread once the transaction's caller has its result
//! ([`hold_background`]).
//!
//! # Opening the file that was checked
//!
//! The part of the private copy that `dlopen` reads and maps is written from
//! the bytes that were validated (the debug sections after it are copied
//! later, and only if the artifact did not change meanwhile), and `dlopen`
//! is given a read-only descriptor of the very inode that was written
//! (`/proc/self/fd/N`), never the copy's path: if something replaced the
//! file under that name between the write and the `dlopen` (anything that
//! can write the private directory: a process of the same user, a cleaner
//! that got ownership wrong), the inode that was written and validated is
//! still the one mapped, and no unchecked code runs. That descriptor is
//! opened through the one that wrote the copy, or, for a copy written into
//! a spare file made ahead of time (`private_dir.rs`: no file is created on
//! the reload's path), by the name just given to it and kept only if it is
//! the inode written (device and inode number; the written descriptor keeps
//! that inode from being reused meanwhile), else again through the writing
//! descriptor.
//!
//! glibc returns an already-loaded library when `dlopen` is given the name
//! it was loaded by, and a retired library stays loaded — mapped, with its
//! name — for the rest of the process (or longer than its `dlclose`, when
//! thread-local destructors are pending, [`docs::boundary`](crate::docs::boundary) §4). Were its
//! descriptor closed, a later copy could get the same number N, and its
//! `dlopen("/proc/self/fd/N")` would silently return the old library. So
//! the descriptor stays open exactly as long as the library may be loaded:
//! for the life of the process unless it is really unloaded. That costs one
//! descriptor per version kept mapped, beside the mapping it already costs
//! (the mapping holds the same open file). The names stay valid for
//! debuggers and backtraces that reopen a library by its name.
//!
//! Built on `libloading` directly. hot-lib-reloader closes the old version
//! before it loads the new one and keeps one version; Verdant needs the
//! opposite (make-before-break, old versions alive while pinned), so it only
//! borrows `libloading`'s `dlopen`/`dlsym` wrappers.

use std::fs::File;
use std::mem::ManuallyDrop;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use libc::RTLD_NOLOAD;
use libloading::os::unix::{Library, RTLD_LAZY, RTLD_LOCAL, RTLD_NOW};

use crate::descriptor::{self, Descriptor, Fingerprint};
use crate::error::LoadError;
use crate::private_dir::PrivateDir;
use crate::report::ContentHash;

/// The file-system and `dlopen` steps of the pipeline, behind a trait so a
/// unit test can make exactly one of them fail.
#[cfg_attr(test, mockall::automock)]
pub(crate) trait Stages: Send + Sync {
    /// [`Step::Read`](crate::Step::Read): the artifact's stamp, and its
    /// bytes unless the stamp equals `serving` (the serving version's): the
    /// whole file, or the part `dlopen` needs and the file's [`Rest`].
    fn read(&self, path: &Path, serving: Option<FileStamp>) -> Result<Artifact, LoadError>;
    /// [`Step::Copy`](crate::Step::Copy): writes the private copy: `bytes`,
    /// then the `rest` of the file, if it was not read; the first `loaded`
    /// bytes before it returns (see [`Stages::validate`]).
    fn copy(
        &self,
        dir: &PrivateDir,
        file_name: &str,
        bytes: Vec<u8>,
        loaded: usize,
        rest: Option<Rest>,
    ) -> Result<PrivateCopy, LoadError>;
    /// [`Step::Validate`](crate::Step::Validate): checks the bytes read
    /// (and the section headers of the `rest`, if the file was not read
    /// whole) and returns how many of them `dlopen` reads or maps (`elf.rs`).
    // mockall needs the lifetime of a reference inside an `Option` named.
    #[allow(clippy::needless_lifetimes)]
    fn validate<'a>(&self, bytes: &[u8], rest: Option<&'a Rest>) -> Result<usize, LoadError>;
    /// [`Step::Open`](crate::Step::Open): `dlopen` and the descriptor header.
    fn open(&self, copy: PrivateCopy) -> Result<LoadedLibrary, LoadError>;
}

/// What identifies an artifact's content without reading it: its inode,
/// size, and modification and change times (nanoseconds), from `fstat` of
/// the descriptor the bytes are then read from.
///
/// A reload compares the artifact's stamp with the serving version's and
/// reads and hashes the file only when they differ; most reloads of a
/// service with several loadables change one of them. Whatever writes the
/// file changes its change time (which no one can set, short of changing the
/// system clock) or its inode (a linker that writes a new file and renames
/// it); a file rewritten with the same bytes is read, hashed and found
/// `Unchanged`. The stamp is taken before the bytes are read, so a write
/// that races the read leaves a stamp older than the content, and the next
/// reload reads again. A file changed less than a second before it was read
/// gets no stamp: a kernel that stamps writes with a coarse clock (a tick of
/// a few ms, before multigrain timestamps) could give an in-place rewrite of
/// the same size in that tick the very same times.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct FileStamp {
    dev: u64,
    ino: u64,
    size: u64,
    modified: (i64, i64),
    changed: (i64, i64),
}

impl FileStamp {
    fn of(metadata: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            dev: metadata.dev(),
            ino: metadata.ino(),
            size: metadata.size(),
            modified: (metadata.mtime(), metadata.mtime_nsec()),
            changed: (metadata.ctime(), metadata.ctime_nsec()),
        }
    }

    /// Whether the file last changed more than a second ago (see above).
    fn settled(&self) -> bool {
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        let changed = u64::try_from(self.changed.0).unwrap_or(0);
        now.as_secs() > changed.saturating_add(1)
    }
}

/// What [`Stages::read`] found.
#[derive(Debug)]
// One per reload, moved once: boxing the large variant would buy nothing.
#[allow(clippy::large_enum_variant)]
pub(crate) enum Artifact {
    /// The stamp equals the serving version's: not read.
    Same,
    /// Another file, or the same one changed: its bytes, their hash, and
    /// its stamp unless it changed too recently to tell the next change by
    /// it. `bytes` is the whole file when `rest` is `None`, else the part
    /// `dlopen` needs ([`read_artifact`]).
    Read { stamp: Option<FileStamp>, bytes: Vec<u8>, hash: ContentHash, rest: Option<Rest> },
}

/// The part of an artifact a reload did not read: the sections past the
/// last loaded segment (debug sections, symbol tables), which only debuggers
/// and backtraces read. They are copied into the private copy from the
/// artifact's own descriptor, after the load when they are long
/// ([`write_copy`]).
#[derive(Debug)]
pub(crate) struct Rest {
    /// The artifact, open: the same inode as the bytes read, whatever
    /// happens to its name.
    source: File,
    /// The artifact's stamp when it was read: a copy of the rest is kept only
    /// if the artifact still has it afterwards.
    stamp: FileStamp,
    /// Where the rest starts (the length of the bytes read) and the file's
    /// length.
    range: (u64, u64),
    /// The section header table's offset and bytes, which were read (and
    /// hashed and validated) with the loaded part.
    pub section_headers: (u64, Vec<u8>),
}

impl Rest {
    /// The artifact's length in bytes when it was read.
    pub fn file_len(&self) -> u64 {
        self.range.1
    }
}

/// Copies of an artifact read whole whose unloaded tail (debug sections,
/// symbol tables, section headers: everything past the last loaded segment)
/// is at least this long write it after the load instead of before (see
/// [`write_copy`]). A library read in part ([`Rest`]) always does.
const DEFERRED_TAIL: usize = 256 * 1024;

/// A private copy as [`Stages::copy`] wrote it.
#[derive(Debug)]
pub(crate) struct PrivateCopy {
    /// Its name in the private directory, for people, `status()` and
    /// `/proc/self/maps`.
    pub path: PathBuf,
    /// A read-only descriptor of the very file that was written: what
    /// [`Stages::open`] opens.
    pub file: File,
    /// The descriptor it was written through, until the version retires
    /// and its unloaded bytes are punched out (`retained::release`), or its
    /// tail was not written yet (see [`write_copy`]).
    pub writable: Writable,
}

/// A copy's writable descriptor, shared by the thread that writes its
/// deferred tail and the version, which takes it when it retires. Whoever
/// holds the lock owns the file's unloaded part: the tail thread writes it
/// only if the descriptor is still there, so a version retired before its
/// tail was written never gets it written after its holes were punched.
pub(crate) type Writable = Arc<parking_lot::Mutex<Option<File>>>;

/// The real pipeline.
pub(crate) struct System;

impl Stages for System {
    fn read(&self, path: &Path, serving: Option<FileStamp>) -> Result<Artifact, LoadError> {
        let error = |e| LoadError::Read { source: Arc::new(e) };
        // One descriptor for the stamp and the bytes: both are of one inode.
        let file = File::open(path).map_err(error)?;
        let stamp = FileStamp::of(&file.metadata().map_err(error)?);
        if serving == Some(stamp) {
            return Ok(Artifact::Same);
        }
        let (bytes, hash, rest) = read_artifact(file, stamp).map_err(error)?;
        Ok(Artifact::Read { stamp: stamp.settled().then_some(stamp), bytes, hash, rest })
    }

    fn copy(
        &self,
        dir: &PrivateDir,
        file_name: &str,
        bytes: Vec<u8>,
        loaded: usize,
        rest: Option<Rest>,
    ) -> Result<PrivateCopy, LoadError> {
        write_copy(dir, file_name, bytes, loaded, rest, whole_copy_before_load())
            .map_err(|e| LoadError::Copy { copy: dir.path().join(file_name), source: Arc::new(e) })
    }

    fn validate(&self, bytes: &[u8], rest: Option<&Rest>) -> Result<usize, LoadError> {
        match rest {
            None => crate::elf::validate(bytes),
            Some(rest) => crate::elf::validate_parts(bytes, rest.file_len(), &rest.section_headers.1),
        }
    }

    fn open(&self, copy: PrivateCopy) -> Result<LoadedLibrary, LoadError> {
        LoadedLibrary::open(copy)
    }
}

/// Writes the private copy of `bytes` (and of the `rest` of the artifact,
/// when it was not read) as `name` in `dir` (into one of its spare files
/// when one is ready: no file is created on the reload's path, see
/// `private_dir.rs`); returns it with a read-only descriptor and the
/// writable one it was written through, and queues the next spare.
///
/// `dlopen` reads the headers and maps the loaded segments, all within the
/// first `loaded` bytes (`elf::validate`); of a debug build, that is a tenth
/// of the file (8.9 MB fixture: 850 KB), the rest being debug sections that
/// only debuggers and backtraces read, by the copy's name. Writing them took
/// most of a debug reload's time (15 MB: up to 35 ms). So a long tail is
/// written after the copy is returned, by a thread of its own, at its
/// offset, through a second descriptor of the same inode: the load waits
/// only for the part it maps, and the copy is whole a few milliseconds later.
/// The tail is never mapped, so the pages `dlopen` maps are complete when it
/// runs. The cost: a backtrace taken in those milliseconds (a panic in the
/// attach hook, say) finds no file and line for the library's frames.
/// A tail that cannot be written is logged and cut off (`set_len`), so the
/// copy stays a valid shared object without debug information. A version
/// that retires before its tail was written takes the writable descriptor
/// first ([`Writable`]), and the tail is never written.
///
/// With `whole` ([`whole_copy_before_load`]), the tail is written before
/// this returns, on the calling thread.
fn write_copy(
    dir: &PrivateDir,
    name: &str,
    bytes: Vec<u8>,
    loaded: usize,
    rest: Option<Rest>,
    whole: bool,
) -> std::io::Result<PrivateCopy> {
    let loaded = loaded.min(bytes.len());
    // A rest not read is always copied later: reading it now would cost
    // the load as much as writing it.
    let deferred = rest.is_some() || bytes.len() - loaded >= DEFERRED_TAIL;
    let first = if deferred { &bytes[..loaded] } else { &bytes[..] };
    let (path, file, writable) = dir.write_copy(name, first, true)?;
    let writable: Writable = Arc::new(parking_lot::Mutex::new(writable));
    let from = match rest {
        Some(rest) => Some(TailSource::Artifact(rest)),
        None if deferred => Some(TailSource::Bytes(bytes)),
        // Short, and `first` was all of it.
        None => None,
    };
    if let Some(from) = from {
        let tail = Tail { copy: path.clone(), loaded, from };
        let tail_writable = writable.clone();
        let write_tail = move || {
            // Held for the write: the version's retirement waits for it, or
            // took the descriptor before and nothing is written.
            let writable = tail_writable.lock();
            if let Some(written) = writable.as_ref() {
                tail.write(written);
            }
        };
        if whole {
            write_tail();
        } else {
            in_background(Box::new(write_tail));
        }
    }
    // The next copy's file, made after this one's tail (module docs of
    // `private_dir.rs`).
    dir.refill_later();
    Ok(PrivateCopy { path, file, writable })
}

/// Whether private copies are written whole, debug sections included,
/// before `dlopen` (the environment variable `VERDANT_WHOLE_COPY` set to
/// anything but empty or `0`, read once per process).
///
/// For tools that read a library's symbols from its file the moment it is
/// loaded, in the process itself: valgrind and its tools, heaptrack, a
/// sanitizer's symbolizer. They would otherwise find the copy's section
/// header table and symbols not written yet (the tail, `write_copy`), and
/// name none of the library's functions. It costs a debug reload the time
/// of writing its debug sections (15 MB: tens of milliseconds).
fn whole_copy_before_load() -> bool {
    static WHOLE: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *WHOLE.get_or_init(|| std::env::var_os("VERDANT_WHOLE_COPY").is_some_and(|value| !value.is_empty() && value != "0"))
}

/// Runs `job` on the process's one `verdant-copy-tail` thread, after the
/// jobs before it (on the calling thread if that thread cannot be started).
///
/// One thread kept for every copy's tail rather than one started per copy:
/// starting a thread cost a release reload about as much as writing a
/// quarter of its copy, and the tails need no parallelism (they are not on
/// any reload's path). The thread lives as long as the process; it only
/// copies files and makes the private directories' spare files
/// (`PrivateDir::refill_later`); no user code runs on it.
///
/// Inside a [`hold_background`] scope of the calling thread (a reload or
/// attach transaction), the job is queued when the scope ends instead.
pub(crate) fn in_background(job: Job) {
    let job = HELD.with(|held| match held.borrow_mut().as_mut() {
        Some(jobs) => {
            jobs.push(job);
            None
        }
        None => Some(job),
    });
    if let Some(job) = job {
        run_in_background(job);
    }
}

/// A job for the copy thread.
pub(crate) type Job = Box<dyn FnOnce() + Send>;

std::thread_local! {
    /// The jobs held back by this thread's [`hold_background`] scope, if
    /// one is open.
    static HELD: std::cell::RefCell<Option<Vec<Job>>> = const { std::cell::RefCell::new(None) };
}

/// Holds back the copy thread's jobs queued on this thread ([`in_background`])
/// until the returned guard is dropped, which queues them in order.
///
/// A transaction holds them until its caller has its result: writing a
/// copy's debug sections and making the next spare file would otherwise run
/// beside the same reload's `dlopen` and attach hook, and on two cores they
/// did take the core the attach thread waited for (measured in the reload
/// benchmark: attach 70 -> 340 µs median). Nothing waits for these jobs;
/// held, they run while the service is idle. Nested scopes hold until the
/// outermost ends.
pub(crate) fn hold_background() -> BackgroundHeld {
    let outermost = HELD.with(|held| {
        let mut held = held.borrow_mut();
        let outermost = held.is_none();
        held.get_or_insert_with(Vec::new);
        outermost
    });
    BackgroundHeld { outermost, _this_thread: std::marker::PhantomData }
}

/// The guard of [`hold_background`]; it belongs to the thread that made it.
pub(crate) struct BackgroundHeld {
    outermost: bool,
    _this_thread: std::marker::PhantomData<*const ()>,
}

impl Drop for BackgroundHeld {
    fn drop(&mut self) {
        if !self.outermost {
            return;
        }
        let jobs = HELD.with(|held| held.borrow_mut().take()).unwrap_or_default();
        for job in jobs {
            run_in_background(job);
        }
    }
}

/// Queues `job` on the copy thread now (see [`in_background`]).
fn run_in_background(job: Job) {
    type Jobs = std::sync::mpsc::Sender<Job>;
    static JOBS: std::sync::OnceLock<Option<Jobs>> = std::sync::OnceLock::new();
    let jobs = JOBS.get_or_init(|| {
        let (jobs, to_run) = std::sync::mpsc::channel::<Job>();
        let started = std::thread::Builder::new().name("verdant-copy-tail".to_owned()).spawn(move || {
            for job in to_run {
                job();
            }
        });
        started.inspect_err(|error| tracing::warn!(%error, "cannot start the thread that copies debug sections; reloads copy them themselves")).ok().map(|_| jobs)
    });
    match jobs {
        Some(jobs) => {
            if let Err(std::sync::mpsc::SendError(job)) = jobs.send(job) {
                job();
            }
        }
        None => job(),
    }
}

/// What a private copy still lacks after its first `loaded` bytes were
/// written, and where it comes from.
struct Tail {
    /// The copy's path, for the log.
    copy: PathBuf,
    loaded: usize,
    from: TailSource,
}

/// Where the tail of a private copy comes from.
enum TailSource {
    /// The whole artifact was read: these bytes, from `loaded` on.
    Bytes(Vec<u8>),
    /// Only the loaded part was read: the rest is in the artifact.
    Artifact(Rest),
}

impl Tail {
    /// Writes the tail into `copy` (the writable descriptor); cuts the copy
    /// after its loaded part if that fails or the artifact changed
    /// meanwhile, so that it never holds the debug sections of another build.
    fn write(&self, copy: &File) {
        use std::os::unix::fs::FileExt;
        let written = match &self.from {
            TailSource::Bytes(bytes) => copy.write_all_at(&bytes[self.loaded..], self.loaded as u64),
            TailSource::Artifact(rest) => copy_rest(rest, copy),
        };
        if let Err(error) = written {
            tracing::warn!(copy = %self.copy.display(), %error, "cannot write the debug sections of a library copy; backtraces through it will lack them");
            let _ = copy.set_len(self.loaded as u64);
        }
    }
}

/// Copies the part of the artifact that was not read into `copy`, at the
/// same offset, inside the kernel where it can (`std::io::copy` of two files is
/// `copy_file_range` on Linux, or `sendfile`). Fails if the artifact is not
/// the one read any more: its stamp changed (written in place), it is
/// shorter, or its section headers are other bytes than those validated.
fn copy_rest(rest: &Rest, copy: &File) -> std::io::Result<()> {
    use std::io::{Read, Seek, SeekFrom};
    use std::os::unix::fs::FileExt;
    let changed = |what: &str| std::io::Error::other(format!("the artifact changed while it was copied: {what}"));
    let (from, to) = rest.range;
    let mut source = &rest.source;
    source.seek(SeekFrom::Start(from))?;
    let mut target = copy;
    target.seek(SeekFrom::Start(from))?;
    let copied = std::io::copy(&mut source.take(to - from), &mut target)?;
    if copied != to - from {
        return Err(changed("it is shorter"));
    }
    if FileStamp::of(&rest.source.metadata()?) != rest.stamp {
        return Err(changed("it was written again"));
    }
    let (offset, validated) = &rest.section_headers;
    let mut headers = vec![0; validated.len()];
    rest.source.read_exact_at(&mut headers, *offset)?;
    if &headers != validated {
        return Err(changed("other section headers"));
    }
    Ok(())
}

/// Loaded parts (or artifacts read whole) at least this long are hashed on
/// more than one thread: a large library's, not the 1 MB or so of a
/// typical one, release or debug ([`read_artifact`] reads no debug section).
///
/// Measured on two cores (BLAKE3 with AVX2, best of 30). With a core to
/// spare, one thread hashes 2 MiB in 0.54 ms, 4 MiB in 1.15 ms, 8.9 MB in
/// 2.9 ms and 15 MiB in 5.6 ms; two threads in 0.42, 0.89, 2.2 and 3.4 ms.
/// With both cores busy (load average 3.7) two threads still won from
/// 8.9 MB up (2.8 -> 1.9 ms, 5.2 -> 2.9 ms) but lost below (4 MiB: 1.06 ->
/// 1.18 ms): starting a thread and waiting for a core costs more than the
/// half of a short hash it takes over.
const PARALLEL_HASH_MIN: usize = 8 * HASH_PIECE;

/// The size of the subtrees the hashing threads take, one after another: small
/// enough that two threads end close together, large enough that taking one
/// costs nothing next to hashing it.
const HASH_PIECE: usize = 1 << 20;

/// At most this many threads hash one artifact.
const HASH_THREADS: usize = 4;

/// The BLAKE3 hash of an artifact's bytes, the very value of
/// [`ContentHash::of`], computed on several threads when it is long.
///
/// When reloads read whole debug builds (9-15 MB), hashing them on one core
/// took more of a debug reload than any other step; a large library's
/// loaded part can be as long. BLAKE3 is a tree: the bytes
/// are cut into the subtrees the tree itself has (`left_subtree_len`, at most
/// [`HASH_PIECE`] long), the threads hash them in any order, and their
/// chaining values are merged up the same tree. Hand-written on `blake3`'s
/// own `hazmat` tree functions rather than its `rayon` feature, which would
/// start a process-wide thread pool in every embedder and add a dependency
/// set to theirs for one call per reload; the unit tests compare the result
/// with `blake3::hash` on lengths around every boundary. The threads take
/// pieces from a shared counter, so a thread that does not get a core soon
/// (a busy machine) leaves its share to the others, and the hash is never
/// much slower than on one thread.
pub(crate) fn content_hash(bytes: &[u8]) -> ContentHash {
    let threads = hash_threads();
    if bytes.len() < PARALLEL_HASH_MIN || threads < 2 {
        return ContentHash::of(bytes);
    }
    let mut pieces = Vec::new();
    tree_pieces(bytes.len(), 0, &mut pieces);
    let next = std::sync::atomic::AtomicUsize::new(0);
    // Hashes pieces until none is left; returns (index, chaining value).
    let work = || {
        use blake3::hazmat::HasherExt;
        let mut done = Vec::new();
        loop {
            let index = next.fetch_add(1, Ordering::Relaxed);
            let Some(&(offset, len)) = pieces.get(index) else { return done };
            let cv = blake3::Hasher::new()
                .set_input_offset(offset as u64)
                .update(&bytes[offset..offset + len])
                .finalize_non_root();
            done.push((index, cv));
        }
    };
    let mut cvs = vec![[0u8; blake3::OUT_LEN]; pieces.len()];
    std::thread::scope(|scope| {
        // A thread that cannot be started leaves its share to the others.
        let helpers: Vec<_> = (1..threads)
            .filter_map(|_| std::thread::Builder::new().name("verdant-hash".to_owned()).spawn_scoped(scope, work).ok())
            .collect();
        let mut done = work();
        for helper in helpers {
            // The helpers only hash (no user code): a panic would be a bug
            // here, and is passed on as it is.
            done.extend(helper.join().unwrap_or_else(|panic| std::panic::resume_unwind(panic)));
        }
        for (index, cv) in done {
            cvs[index] = cv;
        }
    });
    let root = merge_pieces(bytes.len(), &mut cvs.iter());
    ContentHash(root)
}

/// How many first bytes of an artifact [`read_artifact`] reads to find its
/// layout: the ELF header and the program header table, which linkers put
/// at the start.
const LAYOUT_PROBE: u64 = 64 * 1024;

/// Reads the artifact `file` (whose stamp is `stamp`) and hashes what it
/// read: the bytes, their [`ContentHash`], and the [`Rest`] not read.
///
/// A reload reads only what `dlopen` needs and what tells a whole build:
/// the first bytes up to the end of the last loaded segment, and the
/// section header table, which linkers write last, at the end. The sections
/// between (debug information, symbol tables: nine tenths of a debug build)
/// are copied into the private copy later, from the same descriptor
/// ([`copy_rest`]). The hash is BLAKE3 over the loaded part's BLAKE3 and
/// the section headers: two builds with the same code, data and section
/// layout are one version even if their debug information differs in
/// content (the serving copy keeps its own); any other change to the file
/// is a new version.
///
/// A file whose layout cannot be read this way (not ELF, another machine,
/// truncated, no section headers) is read whole, and hashed whole
/// (`blake3::hash` of the file): validation then says what is wrong with
/// it. The file is read, not mapped: a file that cargo truncates while it
/// is mapped raises SIGBUS in whoever reads the mapping.
fn read_artifact(file: File, stamp: FileStamp) -> std::io::Result<(Vec<u8>, ContentHash, Option<Rest>)> {
    use std::io::Read;
    use std::os::unix::fs::FileExt;
    let size = stamp.size;
    // Every read until the file is read whole is a `pread`: the descriptor's
    // offset stays at the start for `read_to_end`.
    let mut bytes = vec![0; usize::try_from(size.min(LAYOUT_PROBE)).unwrap_or(0)];
    let layout = match file.read_exact_at(&mut bytes, 0) {
        Ok(()) => crate::elf::layout(&bytes, size),
        // Shorter than `fstat` said (being written): read whole, below.
        Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => None,
        Err(error) => return Err(error),
    };
    if let Some(layout) = layout {
        let loaded = usize::try_from(layout.loaded).unwrap_or(usize::MAX);
        let (offset, len) = layout.section_headers;
        if loaded <= bytes.len() {
            bytes.truncate(loaded);
        } else {
            // One `pread` for the rest of the loaded part: `read_to_end`
            // would grow its reads from 8 KiB (ten calls for 488 KB).
            let mut head = zeroed(loaded)?;
            head[..bytes.len()].copy_from_slice(&bytes);
            let from = bytes.len();
            bytes = head;
            if let Err(error) = file.read_exact_at(&mut bytes[from..], from as u64) {
                // Shorter than `fstat` said (being written): read whole, below.
                if error.kind() != std::io::ErrorKind::UnexpectedEof {
                    return Err(error);
                }
                bytes.truncate(0);
            }
        }
        let mut section_headers = vec![0; usize::try_from(len).unwrap_or(usize::MAX)];
        match file.read_exact_at(&mut section_headers, offset) {
            Ok(()) if bytes.len() == loaded => {
                let mut hasher = blake3::Hasher::new();
                hasher.update(&content_hash(&bytes).0).update(&section_headers);
                let hash = ContentHash(*hasher.finalize().as_bytes());
                let rest = (layout.loaded < size).then_some(Rest {
                    source: file,
                    stamp,
                    range: (layout.loaded, size),
                    section_headers: (offset, section_headers),
                });
                return Ok((bytes, hash, rest));
            }
            // Shorter than `fstat` said (being written): read whole.
            Ok(()) => {}
            Err(error) if error.kind() == std::io::ErrorKind::UnexpectedEof => {}
            Err(error) => return Err(error),
        }
    }
    bytes.clear();
    // Room for the whole file, as `std::fs::read` makes (one byte more, so
    // that the read that finds the end needs no second allocation); a size
    // that cannot be allocated is an error, not an abort.
    let whole = usize::try_from(size).unwrap_or(usize::MAX).saturating_add(1);
    bytes.try_reserve_exact(whole.saturating_sub(bytes.len())).map_err(|error| {
        std::io::Error::new(std::io::ErrorKind::OutOfMemory, format!("{size} bytes do not fit in memory: {error}"))
    })?;
    (&file).read_to_end(&mut bytes)?;
    let hash = content_hash(&bytes);
    Ok((bytes, hash, None))
}

/// `len` zero bytes, or an `OutOfMemory` error: the length comes from the
/// artifact's headers (at most its size), and a foreign file must not abort
/// the process by claiming more than fits.
fn zeroed(len: usize) -> std::io::Result<Vec<u8>> {
    let mut bytes: Vec<u8> = Vec::new();
    bytes.try_reserve_exact(len).map_err(|error| {
        std::io::Error::new(std::io::ErrorKind::OutOfMemory, format!("{len} bytes do not fit in memory: {error}"))
    })?;
    // SAFETY: `try_reserve_exact` made room for `len` bytes; `write_bytes`
    // initialises all of them before `set_len` exposes them. Not `resize`,
    // which an unoptimised build (an embedder's debug host) runs byte by
    // byte, 5 ms per MB; `write_bytes` is a `memset` in any build.
    unsafe {
        bytes.as_mut_ptr().write_bytes(0, len);
        bytes.set_len(len);
    }
    Ok(bytes)
}

/// How many threads hash one long artifact.
fn hash_threads() -> usize {
    static THREADS: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    // Read once: it looks at the cgroup's CPU quota, a few files.
    *THREADS.get_or_init(|| std::thread::available_parallelism().map_or(1, usize::from).min(HASH_THREADS))
}

/// The subtrees of a BLAKE3 tree over `len` bytes at `offset` that are at
/// most [`HASH_PIECE`] long, in order: (offset, length) each.
fn tree_pieces(len: usize, offset: usize, pieces: &mut Vec<(usize, usize)>) {
    if len <= HASH_PIECE {
        pieces.push((offset, len));
        return;
    }
    let left = blake3::hazmat::left_subtree_len(len as u64) as usize;
    tree_pieces(left, offset, pieces);
    tree_pieces(len - left, offset + left, pieces);
}

/// Merges the chaining values of [`tree_pieces`]`(len, ..)`, in order, up
/// the same tree; `len` is more than one piece, so the top is a parent node,
/// finalized as the root.
fn merge_pieces(len: usize, cvs: &mut std::slice::Iter<'_, blake3::hazmat::ChainingValue>) -> [u8; 32] {
    use blake3::hazmat::{merge_subtrees_non_root, merge_subtrees_root, ChainingValue, Mode};
    fn subtree(len: usize, cvs: &mut std::slice::Iter<'_, ChainingValue>) -> ChainingValue {
        if len <= HASH_PIECE {
            return *cvs.next().expect("one chaining value per piece");
        }
        let left = blake3::hazmat::left_subtree_len(len as u64) as usize;
        let left_cv = subtree(left, cvs);
        let right_cv = subtree(len - left, cvs);
        merge_subtrees_non_root(&left_cv, &right_cv, Mode::Hash)
    }
    let left = blake3::hazmat::left_subtree_len(len as u64) as usize;
    let left_cv = subtree(left, cvs);
    let right_cv = subtree(len - left, cvs);
    *merge_subtrees_root(&left_cv, &right_cv, Mode::Hash).as_bytes()
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
    /// The copy's descriptor, closed only once the library is unloaded.
    file: ManuallyDrop<File>,
    /// Its writable descriptor, until it is released on drop.
    writable: Writable,
    /// Where a released copy is recorded (`status().retained`); set for
    /// libraries kept mapped ([`LoadedLibrary::keep_mapped`]).
    retained: Option<Arc<crate::retained::Retained>>,
    /// What it was loaded by: `/proc/self/fd/<file>`.
    loaded_as: String,
    identity: LibraryIdentity,
    unmap_on_drop: bool,
}

// SAFETY: the descriptor pointer refers to immutable static data inside the
// mapped library, which stays mapped while this value lives; `Library` and
// `File` are Send + Sync themselves.
unsafe impl Send for LoadedLibrary {}
// SAFETY: as above.
unsafe impl Sync for LoadedLibrary {}

impl LoadedLibrary {
    /// `dlopen`s a validated copy, through its descriptor, and checks the
    /// descriptor header.
    fn open(copy: PrivateCopy) -> Result<LoadedLibrary, LoadError> {
        let loaded_as = format!("/proc/self/fd/{}", copy.file.as_raw_fd());
        // SAFETY: loading runs the library's initialisers. The file opened
        // is the inode written from the validated bytes (a complete ELF
        // shared object for this machine that defines a Verdant descriptor),
        // reached through its descriptor, which is as much as can be known
        // before running its code; Rust cdylibs have no initialisers of their
        // own that allocate, and one that keeps memory is refused below
        // (`check_header`). RTLD_NOW makes missing symbols fail here rather
        // than later. A failed dlopen leaves nothing loaded by that name, so
        // `copy.file` may close then.
        let library = unsafe { Library::open(Some(&loaded_as), RTLD_NOW | RTLD_LOCAL) }
            .map_err(|e| LoadError::Open { message: e.to_string() })?;
        let mut loaded = LoadedLibrary {
            library: ManuallyDrop::new(library),
            descriptor: std::ptr::null(),
            copy: copy.path,
            file: ManuallyDrop::new(copy.file),
            writable: copy.writable,
            retained: None,
            loaded_as,
            identity: LibraryIdentity { package: String::new(), package_version: String::new() },
            // Until the attach hook runs, no library code has run that could
            // pin it or leave pointers into it: a library refused before
            // attach (a missing symbol, the header check) is unmapped again
            // instead of leaking its mapping. The transaction turns this off
            // before attach (docs/boundary.md §4).
            unmap_on_drop: true,
        };
        let mut symbol_name = descriptor::SYMBOL.as_bytes().to_vec();
        symbol_name.push(0);
        // SAFETY: the symbol is a static `Descriptor` by the validation above;
        // it is read as a pointer, not yet dereferenced.
        loaded.descriptor = unsafe { loaded.library.get::<*const Descriptor>(&symbol_name) }
            .map(|symbol| symbol.into_raw() as *const Descriptor)
            .map_err(|e| LoadError::Open { message: e.to_string() })?;
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

    /// Whether dropping the last reference `dlclose`s the library: only for
    /// a library refused before its attach hook ran, whose code never ran
    /// (docs/boundary.md §4 says why an attached one is never unmapped).
    #[cfg(test)]
    pub(crate) fn set_unmap_on_drop(&mut self, unmap: bool) {
        self.unmap_on_drop = unmap;
    }

    /// Keeps the library mapped for the life of the process (the attach
    /// hook is about to run), and, once its last reference is dropped,
    /// releases what its copy can give back (`retained::release`) and
    /// records the copy in `retained`.
    pub(crate) fn keep_mapped(&mut self, retained: Arc<crate::retained::Retained>) {
        self.unmap_on_drop = false;
        self.retained = Some(retained);
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
        if !self.unmap_on_drop {
            // Kept mapped for the life of the process (docs/boundary.md §4),
            // and dropped after its detach hook and tasks, with every instance,
            // proxy, router and pin: no code of this copy runs again but
            // thread-local destructors, so what can come back unchanged
            // from the file is given back. The descriptor is still never
            // closed: it moves to `retained` (or is forgotten).
            let writable = self.writable.lock().take();
            // SAFETY: taken once, here; `file` is not used again.
            let file = unsafe { ManuallyDrop::take(&mut self.file) };
            // Any address inside the library finds its segments.
            crate::retained::release(&file, writable.as_ref(), &self.copy, self.descriptor as usize);
            match &self.retained {
                Some(retained) => retained.add(ManuallyDrop::new(file)),
                None => std::mem::forget(file),
            }
            return;
        }
        // SAFETY: every instance and proxy of this library was dropped
        // before its last `Arc<LoadedLibrary>` (see `version.rs`), and a
        // library refused before attach never handed out any value.
        unsafe { ManuallyDrop::drop(&mut self.library) };
        if !still_loaded(&self.loaded_as) {
            // SAFETY: dropped once, here; nothing is loaded by its name
            // any more, so its number may be reused.
            unsafe { ManuallyDrop::drop(&mut self.file) };
        }
        // Otherwise (glibc keeps it for pending TLS destructors) the
        // library, its name and so its descriptor stay for the life of the
        // process (see the module docs).
    }
}

/// Whether a library is still loaded under `name` (after `dlclose`, glibc
/// keeps a library whose thread-local destructors are pending).
fn still_loaded(name: &str) -> bool {
    // SAFETY: RTLD_NOLOAD loads nothing and runs no code: it only returns
    // another reference to a library already loaded by this name or inode,
    // which dropping the handle gives back at once.
    unsafe { Library::open(Some(name), RTLD_NOLOAD | RTLD_LAZY) }.is_ok()
}

/// Raises this process's soft limit of open descriptors to its hard limit,
/// once.
///
/// Every version that stays mapped keeps the descriptor it was `dlopen`ed
/// through open (`LoadedLibrary::file`): glibc knows the library by the name
/// `/proc/self/fd/N`, and a later copy opened under the same N would get the
/// old library back. A service reloaded every few minutes would otherwise
/// reach the common soft limit of 1024 after about a thousand reloads, and
/// then fail to accept connections as well as to load. The hard limit is the
/// administrator's ceiling and stays as it is; raising the soft limit to it
/// is what Go's runtime does at start-up for the same reason. Failure is
/// logged and otherwise ignored: the limit only matters after many reloads.
pub(crate) fn raise_open_file_limit() {
    static RAISED: std::sync::Once = std::sync::Once::new();
    RAISED.call_once(|| {
        let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: getrlimit writes the struct it is given, which lives here.
        if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
            tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
            return;
        }
        if limit.rlim_cur >= limit.rlim_max {
            return;
        }
        let raised = libc::rlimit { rlim_cur: limit.rlim_max, rlim_max: limit.rlim_max };
        // SAFETY: setrlimit reads the struct it is given; lowering nothing.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            tracing::debug!(from = limit.rlim_cur, to = limit.rlim_max, "raised the soft open-file limit");
        } else {
            tracing::warn!(
                error = %std::io::Error::last_os_error(),
                soft = limit.rlim_cur,
                "cannot raise the soft open-file limit; each retained version keeps one descriptor open"
            );
        }
    });
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

#[cfg(test)]
mod tests {
    use std::os::unix::fs::MetadataExt;

    use super::*;

    /// A fixture library built by `cargo build --workspace` beside this
    /// test binary (`target/<profile>/deps/..`): `good_v1` or `good_v2`.
    fn fixture_bytes(name: &str) -> Vec<u8> {
        let exe = std::env::current_exe().expect("own path");
        let dir = exe.parent().and_then(Path::parent).expect("target/<profile>");
        let path = dir.join(format!("libfixture_{name}.so"));
        std::fs::read(&path).unwrap_or_else(|e| {
            panic!("{}: {e}; run `cargo build --workspace` first (scripts/test does)", path.display())
        })
    }

    /// Writes `bytes` as copy `name` in `dir`, the way the pipeline does.
    fn copy(dir: &PrivateDir, name: &str, bytes: &[u8]) -> PrivateCopy {
        System.copy(dir, name, bytes.to_vec(), bytes.len(), None).expect("write the copy")
    }

    /// The inodes of the files this process maps, from `/proc/self/maps`.
    fn mapped_inodes() -> Vec<u64> {
        let maps = std::fs::read_to_string("/proc/self/maps").expect("read /proc/self/maps");
        maps.lines()
            .filter_map(|line| line.split_whitespace().nth(4)?.parse().ok())
            .filter(|&inode| inode != 0)
            .collect()
    }

    // The unit-test binary is another build of verdant than the one the
    // fixtures link, so their fingerprints differ; `open` stops before that
    // check, which is all these tests need.

    #[test]
    fn the_parallel_hash_is_blake3_of_the_whole_file() {
        let chunk = blake3::CHUNK_LEN;
        let lengths = [
            0,
            1,
            chunk,
            PARALLEL_HASH_MIN - 1,
            PARALLEL_HASH_MIN,
            PARALLEL_HASH_MIN + 1,
            PARALLEL_HASH_MIN + HASH_PIECE / 2 + chunk + 7,
            12 * HASH_PIECE,
            4 * HASH_PIECE + 1,
            8_929_336,
            15 * HASH_PIECE + 12_345,
        ];
        // Bytes that differ from chunk to chunk, so a piece hashed at the
        // wrong offset or merged in the wrong order changes the result.
        let longest = lengths.iter().max().copied().unwrap_or(0);
        let bytes: Vec<u8> = (0..longest).map(|i| (i.wrapping_mul(31) ^ (i >> 10)) as u8).collect();
        for len in lengths {
            let input = &bytes[..len];
            assert_eq!(content_hash(input), ContentHash::of(input), "{len} bytes");
        }
    }

    /// `bytes` written to a new file in `dir`, read as a reload reads it.
    fn read(dir: &Path, name: &str, bytes: &[u8]) -> (Vec<u8>, ContentHash, Option<Rest>) {
        let path = dir.join(name);
        std::fs::write(&path, bytes).expect("write the artifact");
        read_path(&path)
    }

    fn read_path(path: &Path) -> (Vec<u8>, ContentHash, Option<Rest>) {
        let file = File::open(path).expect("open the artifact");
        let stamp = FileStamp::of(&file.metadata().expect("fstat"));
        read_artifact(file, stamp).expect("read the artifact")
    }

    #[test]
    fn a_library_is_read_up_to_its_loaded_part_and_hashed_with_its_section_headers() {
        let whole = fixture_bytes("good_v1");
        let loaded = crate::elf::validate(&whole).expect("a valid library");
        let dir = tempfile::tempdir().expect("temp dir");
        let (bytes, hash, rest) = read(dir.path(), "v1.so", &whole);
        assert!(bytes == whole[..loaded], "the loaded part, nothing more");
        let rest = rest.expect("a debug build has sections past its loaded part");
        assert_eq!(rest.range, (loaded as u64, whole.len() as u64));
        let (offset, headers) = &rest.section_headers;
        assert!(headers[..] == whole[*offset as usize..*offset as usize + headers.len()]);
        assert_eq!(System.validate(&bytes, Some(&rest)).expect("valid"), loaded);

        // A byte of the debug sections (between the loaded part and the
        // section headers) is not part of the version; a byte of the code or
        // of the section headers is.
        let changed = |at: usize| {
            let mut other = whole.clone();
            other[at] ^= 0x55;
            read(dir.path(), &format!("changed-{at}.so"), &other).1
        };
        assert_eq!(changed((loaded + *offset as usize) / 2), hash, "debug information alone");
        assert_ne!(changed(loaded - 100), hash, "the loaded part");
        assert_ne!(changed(*offset as usize + 70), hash, "the section headers");
    }

    #[test]
    fn a_file_that_is_not_a_whole_library_is_read_whole_and_hashed_whole() {
        let whole = fixture_bytes("good_v1");
        let dir = tempfile::tempdir().expect("temp dir");
        let garbage: Vec<u8> = (0..100_000u32).map(|i| (i.wrapping_mul(2_654_435_761) >> 7) as u8).collect();
        // Cut anywhere after the loaded part: the section headers are gone.
        for (name, bytes) in [("truncated", &whole[..whole.len() - 10]), ("garbage", &garbage[..]), ("empty", &[][..])]
        {
            let (read, hash, rest) = read(dir.path(), name, bytes);
            assert!(rest.is_none(), "{name}: read whole");
            assert!(read == bytes, "{name}: its bytes");
            assert_eq!(hash, ContentHash::of(bytes), "{name}: hashed whole");
        }
        let (read, _, rest) = read(dir.path(), "truncated.so", &whole[..whole.len() - 10]);
        let error = System.validate(&read, rest.as_ref()).expect_err("refused");
        assert!(matches!(error, LoadError::Truncated { .. }), "{error:?}");
    }

    #[test]
    fn the_rest_of_an_artifact_rewritten_in_place_is_not_copied() {
        let whole = fixture_bytes("good_v1");
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("artifact.so");
        std::fs::write(&path, &whole).expect("write the artifact");
        let (bytes, _, rest) = read_path(&path);
        let loaded = System.validate(&bytes, rest.as_ref()).expect("valid");
        // Written again in place (same inode) between the read and the copy.
        let mut other = whole.clone();
        let middle = (loaded + whole.len()) / 2;
        other[middle] ^= 0xff;
        std::fs::write(&path, &other).expect("rewrite in place");
        let private = PrivateDir::create(Some(dir.path())).expect("private dir");
        let copy = System.copy(&private, "copy.so", bytes, loaded, rest).expect("write the copy");
        // The tail is copied on the tail thread; it gives up, and the copy
        // ends with its loaded part. (Its length is that before the tail
        // job runs too: wait for the job first.)
        tail_jobs_done();
        let copied = std::fs::read(&copy.path).expect("read the copy");
        assert_eq!(copied.len(), loaded, "the copy was not cut after its loaded part");
        assert!(copied == whole[..loaded]);
    }

    /// Returns once every tail job queued before the call has run: the
    /// tail thread runs its jobs in order.
    fn tail_jobs_done() {
        let (done, finished) = std::sync::mpsc::channel();
        in_background(Box::new(move || {
            let _ = done.send(());
        }));
        finished.recv_timeout(std::time::Duration::from_secs(30)).expect("the tail thread ran the jobs before");
    }

    #[test]
    fn jobs_queued_while_held_run_once_the_outermost_hold_ends() {
        use std::sync::atomic::AtomicUsize;
        let ran = Arc::new(AtomicUsize::new(0));
        // Returns once the copy thread ran what was queued before (not
        // held itself).
        let barrier = || {
            let (done, finished) = std::sync::mpsc::channel();
            run_in_background(Box::new(move || {
                let _ = done.send(());
            }));
            finished.recv_timeout(std::time::Duration::from_secs(30)).expect("the copy thread runs");
        };
        let job = |ran: &Arc<AtomicUsize>| -> Job {
            let ran = ran.clone();
            Box::new(move || {
                ran.fetch_add(1, Ordering::SeqCst);
            })
        };
        let outer = hold_background();
        in_background(job(&ran));
        {
            let _inner = hold_background();
            in_background(job(&ran));
        }
        barrier();
        assert_eq!(ran.load(Ordering::SeqCst), 0, "a held job ran before its transaction ended");
        // Another thread's jobs are not held by this one's scope.
        let other = ran.clone();
        std::thread::spawn(move || in_background(job(&other))).join().expect("other thread");
        barrier();
        assert_eq!(ran.load(Ordering::SeqCst), 1, "another thread's job was held");
        drop(outer);
        barrier();
        assert_eq!(ran.load(Ordering::SeqCst), 3, "the held jobs never ran");
    }

    #[test]
    fn the_file_that_was_written_is_the_one_opened_even_if_its_name_is_taken_over() {
        let dir = tempfile::tempdir().expect("temp dir");
        let private = PrivateDir::create(Some(dir.path())).expect("private dir");
        let written = copy(&private, "probe-1-000000000001.so", &fixture_bytes("good_v1"));
        let inode = written.file.metadata().expect("fstat the copy").ino();
        // Between the write and the dlopen, another file takes the copy's
        // name: whatever can write the private directory (a process of the
        // same user, a cleaner that got it wrong) could do that.
        let impostor = dir.path().join("impostor.so");
        std::fs::write(&impostor, fixture_bytes("good_v2")).expect("write the impostor");
        std::fs::rename(&impostor, &written.path).expect("take over the copy's name");

        let library = System.open(written).expect("open the copy");
        assert_eq!(library.identity().package, "fixture-good-v1", "the library at the path was loaded instead");
        assert!(mapped_inodes().contains(&inode), "the inode that was written (and validated) is mapped");
    }

    #[test]
    fn a_copy_is_opened_before_its_debug_sections_are_written_and_ends_up_whole() {
        let bytes = fixture_bytes("good_v1");
        let dir = tempfile::tempdir().expect("temp dir");
        let private = PrivateDir::create(Some(dir.path())).expect("private dir");
        for (name, whole) in [("read-whole", true), ("read-in-part", false)] {
            let (read, _, rest) = read(dir.path(), &format!("{name}.so"), &bytes);
            assert!(rest.is_some(), "a debug build is read in part");
            let (read, rest) = if whole { (bytes.clone(), None) } else { (read, rest) };
            let loaded = System.validate(&read, rest.as_ref()).expect("a valid library");
            assert!(loaded < bytes.len());
            let written =
                System.copy(&private, &format!("probe-{name}.so"), read, loaded, rest).expect("write the copy");
            assert_copy_becomes_whole(written, &bytes);
        }
    }

    #[test]
    fn a_whole_copy_has_its_debug_sections_before_it_is_opened() {
        let bytes = fixture_bytes("good_v1");
        let dir = tempfile::tempdir().expect("temp dir");
        let private = PrivateDir::create(Some(dir.path())).expect("private dir");
        // Held: no background job (the tail, when deferred) runs until the
        // end of the test's scope.
        let _held = hold_background();
        for whole in [false, true] {
            let (read, _, rest) = read(dir.path(), &format!("artifact-{whole}.so"), &bytes);
            let loaded = System.validate(&read, rest.as_ref()).expect("a valid library");
            let written =
                write_copy(&private, &format!("probe-{whole}.so"), read, loaded, rest, whole).expect("write the copy");
            let copied = std::fs::read(&written.path).expect("read the copy");
            if whole {
                assert!(copied == bytes, "VERDANT_WHOLE_COPY: the copy is whole before dlopen");
            } else {
                assert_eq!(copied.len(), loaded, "by default the tail waits for the background");
            }
        }
    }

    fn assert_copy_becomes_whole(written: PrivateCopy, bytes: &[u8]) {
        let path = written.path.clone();
        let library = System.open(written).expect("open the copy before its tail is written");
        assert_eq!(library.identity().package, "fixture-good-v1");
        // The tail is written on a thread of its own; soon the copy is the
        // whole file (for debuggers and backtraces).
        let whole = (0..400).any(|_| {
            if std::fs::read(&path).is_ok_and(|copy| copy == bytes) {
                return true;
            }
            std::thread::sleep(std::time::Duration::from_millis(25));
            false
        });
        assert!(whole, "the copy never became whole");
    }

    #[test]
    fn a_new_copy_never_gets_an_older_library_back() {
        // glibc hands back a loaded library whose name equals the name
        // given to dlopen; a retired library stays loaded (and named) for the
        // life of the process, whether it is unmapped or not.
        let dir = tempfile::tempdir().expect("temp dir");
        let dir = PrivateDir::create(Some(dir.path())).expect("private dir");
        let v1 = System.open(copy(&dir, "probe-1-000000000001.so", &fixture_bytes("good_v1"))).expect("v1");
        assert_eq!(v1.identity().package, "fixture-good-v1");
        drop(v1); // retired; stays mapped (the default)
        let v2 = System.open(copy(&dir, "probe-2-000000000002.so", &fixture_bytes("good_v2"))).expect("v2");
        assert_eq!(v2.identity().package, "fixture-good-v2", "the retired version was handed back");
        let mut v2 = v2;
        v2.set_unmap_on_drop(true);
        drop(v2); // retired and dlclosed
        let v1 = System.open(copy(&dir, "probe-3-000000000003.so", &fixture_bytes("good_v1"))).expect("v1");
        assert_eq!(v1.identity().package, "fixture-good-v1", "the unmapped version was handed back");
    }
}
