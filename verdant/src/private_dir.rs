//! The per-registry directory that holds private copies of libraries.
//!
//! glibc hands back an already-loaded object for the same path or the same
//! inode ([`docs::boundary`](crate::docs::boundary) §5), so every version is loaded from its own copy with
//! a unique name. Each registry makes a directory of its own,
//! `verdant-<pid>-<nanos>` with mode 0700, in `$TMPDIR` or in the directory
//! given to `Builder::private_dir`, so that no other user can swap a file in
//! between the check and the `dlopen`; it is removed with the registry.
//!
//! # Which directories are abandoned: a lock, not a pid
//!
//! A process killed with SIGKILL cannot remove its directory, so each new
//! registry removes the abandoned ones it finds beside its own. A registry
//! holds an exclusive `flock` on its directory for as long as it lives, and
//! the kernel drops that lock when the process dies, however it dies. So a
//! `verdant-*` directory of this user whose lock can be taken is abandoned,
//! and one whose lock is held belongs to a live registry, in this process or
//! another. The pid in the name is only for people reading it. Deciding by
//! whether that pid is alive was wrong both ways: a service that is pid 1 in
//! a container with a persistent `/tmp` saw its predecessor's directories
//! (pid 1, "alive") as live and never removed them, and a process in another
//! pid namespace sharing `/tmp` saw no process with a live registry's pid and
//! deleted its copies from under it.
//!
//! The directory itself is what is locked (`flock` works on a directory's
//! descriptor): nothing but copies in it, no lock file that could be deleted
//! on its own and make a live directory look abandoned, and
//! `systemd-tmpfiles` skips a locked directory when it cleans `/tmp` by age.
//!
//! Making a directory and locking it are two steps, and a registry cleaning
//! up may take the lock in between and remove the new directory. A cleaner
//! removes a directory only while it holds its lock, so the creator notices
//! (the lock is refused, or the path no longer leads to the directory it
//! locked) and starts over under a new name; once its lock is taken, the
//! directory is its own for good.
//!
//! # Spare files: the copy's inode is made ahead of time
//!
//! Creating a file on ext4 costs a walk past the inodes of the group
//! deleted in the last seconds (`recently_deleted`, on file systems without
//! a journal), and a reloading service deletes some with every reload
//! (retired copies, the artifacts its builds replace): in the reload
//! benchmark, 40 µs for the first reloads and up to 300 µs after a few
//! hundred back to back, a fifth of a release reload. So each directory
//! keeps a few *spares*: files made with `O_TMPFILE`, which have an inode
//! but no name, are visible to no other process and vanish when closed,
//! however the process ends. A copy is written into a spare and then given
//! its name (`linkat`), which adds a directory entry and allocates no
//! inode; the next spare is made afterwards, on the thread that writes the
//! copies' debug sections, once the reload's caller has its result
//! ([`PrivateDir::refill_later`], `loader::hold_background`). Each spare is
//! used once (taken out of the list), so a copy never holds bytes of
//! another; a spare never given a name leaves nothing on disk; where none
//! can be made (a file system without `O_TMPFILE`), copies are created by
//! name as before.
//!
//! A spare is also filled with zeros as long as the last copy written in
//! its directory (rounded up to whole pages): writing into pages already
//! in the page cache skips allocating them and ext4's per-page block
//! reservation. Measured on this machine's ext4, 488 KB into a new file
//! took 135-140 µs, over zeros already written 25-30 µs, and cutting off
//! the zeros past the copy's end (`set_len`) 25 µs more. The copy is cut to
//! the length of its bytes before it is named, so the zeros are never part
//! of it.

use std::fs::{self, File};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::os::unix::fs::{DirBuilderExt, MetadataExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &str = "verdant-";

/// How often creation starts over after losing a race with a cleaner (each
/// loss means another registry was cleaning at that very moment).
const ATTEMPTS: usize = 16;

/// How many spare files a directory keeps at most (see the module docs):
/// one per loadable copied by the last reloads, up to this many. Each is one
/// open descriptor, one inode and the last copy's length of zeros (at most
/// [`PREFILL_MAX`]) in the page cache, written to disk by the kernel if it
/// waits long enough.
const SPARES_KEPT: usize = 4;

/// A registry's private directory, locked while it lives and removed on drop.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: PathBuf,
    /// The directory, open and `flock`ed (exclusive); the lock goes when
    /// this descriptor is closed, after the directory was removed.
    _lock: File,
    /// Its spare files (module docs), shared with the refills queued on
    /// the copy thread, which hold it weakly: a refill that runs after the
    /// registry is gone makes nothing.
    spares: Arc<Spares>,
}

/// Unnamed empty files (`O_TMPFILE`) in a private directory, ready to
/// become copies (see the module docs).
#[derive(Debug)]
struct Spares {
    dir: PathBuf,
    /// Taken one at a time, each by one copy, under the lock: no spare is
    /// ever written twice.
    files: parking_lot::Mutex<Vec<Spare>>,
    /// Set once the file system refused `O_TMPFILE`: no more attempts.
    unsupported: AtomicBool,
    /// How long the last copy written here was: what the next spare is
    /// filled up to.
    last_len: AtomicUsize,
}

/// One spare file, and how many zero bytes it holds.
#[derive(Debug)]
struct Spare {
    file: File,
    len: u64,
}

/// The longest spare filled with zeros (a larger library's loaded part
/// takes the rest of its pages as a new file would).
const PREFILL_MAX: usize = 4 << 20;

/// The page size the zeros of a spare are rounded up to (the common one;
/// a larger one only leaves a page's end unfilled).
const PAGE: usize = 4096;

/// Writes `len` zero bytes into the new, empty `file` (module docs).
fn prefill(file: &File, len: usize) -> io::Result<()> {
    use std::os::unix::fs::FileExt;
    if len == 0 {
        return Ok(());
    }
    // Zeroed by the allocator (fresh pages from the kernel at this size),
    // not by a loop.
    let zeros = vec![0u8; len];
    file.write_all_at(&zeros, 0)
}

impl Spares {
    fn take(&self) -> Option<Spare> {
        self.files.lock().pop()
    }

    /// Makes one more spare, unless [`SPARES_KEPT`] are ready. The file is
    /// made outside the lock (it is the slow part), so a reload taking a
    /// spare meanwhile does not wait for it.
    fn refill(&self) {
        if self.unsupported.load(Ordering::Relaxed) || self.files.lock().len() >= SPARES_KEPT {
            return;
        }
        // Read-write: the copy's loaded part is written through it, its
        // debug sections later, and holes are punched in it on retirement.
        let made =
            fs::OpenOptions::new().read(true).write(true).mode(0o500).custom_flags(libc::O_TMPFILE).open(&self.dir);
        let made = made.and_then(|file| {
            let len = self.last_len.load(Ordering::Relaxed).min(PREFILL_MAX).next_multiple_of(PAGE);
            prefill(&file, len)?;
            Ok(Spare { file, len: len as u64 })
        });
        match made {
            Ok(spare) => {
                let mut files = self.files.lock();
                if files.len() < SPARES_KEPT {
                    files.push(spare);
                }
            }
            Err(error) => {
                // EOPNOTSUPP: the file system has no O_TMPFILE; EISDIR or
                // EINVAL: a kernel older than O_TMPFILE (3.11). Anything
                // else (no space, no descriptors) may pass: try next time.
                let never = matches!(error.raw_os_error(), Some(libc::EOPNOTSUPP | libc::EISDIR | libc::EINVAL));
                if never {
                    self.unsupported.store(true, Ordering::Relaxed);
                }
                tracing::debug!(dir = %self.dir.display(), %error, never, "cannot make a spare file; copies are created by name");
            }
        }
    }
}

impl PrivateDir {
    /// Removes abandoned directories from `configured` (created with mode
    /// 0700 if needed, or tightened to it) or `$TMPDIR`, and creates and
    /// locks a new `verdant-<pid>-<nanos>` there.
    pub(crate) fn create(configured: Option<&Path>) -> io::Result<PrivateDir> {
        let base = match configured {
            Some(path) => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
                path.to_owned()
            }
            None => std::env::temp_dir(),
        };
        remove_stale(&base);
        for _ in 0..ATTEMPTS {
            if let Some(dir) = create_locked(&base)? {
                return Ok(dir);
            }
        }
        Err(io::Error::other(format!(
            "another process removed each of {ATTEMPTS} new directories before they could be locked"
        )))
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }

    /// Writes `bytes` to a new file `name` in this directory, through a
    /// spare file when one is ready (module docs), else created by name
    /// ([`write_file`]); returns its path, a read-only descriptor of it and,
    /// with `more`, the writable one. A failed write leaves no file.
    ///
    /// Call [`refill_later`](Self::refill_later) once the copy's own
    /// background work is queued.
    pub(crate) fn write_copy(&self, name: &str, bytes: &[u8], more: bool) -> io::Result<(PathBuf, File, Option<File>)> {
        let path = self.path.join(name);
        // The next spares are filled up to this length.
        self.spares.last_len.store(bytes.len(), Ordering::Relaxed);
        let (read_only, writable) = match self.spares.take() {
            Some(spare) => write_spare(spare, &path, bytes, more)?,
            None => write_file(&path, bytes, more)?,
        };
        Ok((path, read_only, writable))
    }

    /// Queues the making of a spare file on the thread that writes the
    /// copies' debug sections (after the jobs queued before it): off the
    /// reload's path, and never two file creations at once on it.
    pub(crate) fn refill_later(&self) {
        let spares: Weak<Spares> = Arc::downgrade(&self.spares);
        crate::loader::in_background(Box::new(move || {
            if let Some(spares) = spares.upgrade() {
                spares.refill();
            }
        }));
    }
}

/// [`write_file`] into `spare`, an unnamed file of the directory: writes
/// `bytes`, then names it `path` (`linkat` through `/proc/self/fd`, the way
/// `open(2)` documents for `O_TMPFILE`) and opens it again by that name for
/// reading, checking that the name leads to the inode written.
///
/// Not reopened through `/proc/self/fd`: a descriptor keeps the name its
/// file was opened by, and an `O_TMPFILE` has none (`#<inode> (deleted)`),
/// so `/proc/self/maps` and `status()` readers would not see the copy's
/// name. If another file took the name between the link and the open (the
/// module docs of `loader.rs` say who could), the written inode is opened
/// through its descriptor after all: the right bytes, with the unnamed
/// file's name in the maps.
fn write_spare(spare: Spare, path: &Path, bytes: &[u8], more: bool) -> io::Result<(File, Option<File>)> {
    let Spare { file: mut spare, len: zeros } = spare;
    // Nothing is named until the bytes are all written: a failed write
    // leaves nothing behind (the spare goes when it is closed). Written
    // from the start over the zeros (they were written at their offsets;
    // the descriptor's offset is still 0), then the zeros past the bytes
    // are cut off: the file is exactly `bytes`.
    spare.write_all(bytes)?;
    if zeros > bytes.len() as u64 {
        spare.set_len(bytes.len() as u64)?;
    }
    link(&spare, path)?;
    let read_only = fs::OpenOptions::new().read(true).custom_flags(libc::O_NOFOLLOW).open(path).and_then(|file| {
        let (opened, written) = (file.metadata()?, spare.metadata()?);
        Ok((opened.dev() == written.dev() && opened.ino() == written.ino()).then_some(file))
    });
    let read_only = match read_only {
        Ok(Some(file)) => Ok(file),
        // The name leads elsewhere (or nowhere): the inode written, by its
        // descriptor.
        Ok(None) | Err(_) => reopen(&spare),
    };
    let writable = more.then_some(spare);
    read_only.map(|read_only| (read_only, writable)).inspect_err(|_| {
        if let Err(remove) = fs::remove_file(path) {
            tracing::warn!(copy = %path.display(), error = %remove, "cannot delete a library copy that could not be opened");
        }
    })
}

/// Gives the unnamed file `file` the name `path`.
///
/// `libc::linkat` by hand: std's `hard_link` passes no flags, so it would
/// link the `/proc/self/fd` symbolic link itself (refused across file
/// systems), and `AT_EMPTY_PATH` on the descriptor needs a capability
/// before Linux 6.10. Following the `/proc` link (`AT_SYMLINK_FOLLOW`) is
/// the unprivileged form `open(2)` documents. One call, with `libc`, which
/// verdant already uses, rather than a new dependency (`nix` or `rustix`)
/// for it.
fn link(file: &File, path: &Path) -> io::Result<()> {
    use std::os::unix::ffi::OsStrExt;
    let name = |bytes: &[u8]| {
        std::ffi::CString::new(bytes).map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "a path with a NUL byte"))
    };
    let from = name(format!("/proc/self/fd/{}", file.as_raw_fd()).as_bytes())?;
    let to = name(path.as_os_str().as_bytes())?;
    // SAFETY: both are NUL-terminated strings that live across the call;
    // linkat reads them and keeps no pointer.
    if unsafe { libc::linkat(libc::AT_FDCWD, from.as_ptr(), libc::AT_FDCWD, to.as_ptr(), libc::AT_SYMLINK_FOLLOW) } == 0
    {
        Ok(())
    } else {
        let error = io::Error::last_os_error();
        Err(io::Error::new(
            error.kind(),
            format!("cannot name the copy (linkat through /proc/self/fd; is /proc mounted?): {error}"),
        ))
    }
}

/// A read-only descriptor of `file`'s inode, opened through the descriptor
/// (`/proc/self/fd`), never by a name.
fn reopen(file: &File) -> io::Result<File> {
    File::open(format!("/proc/self/fd/{}", file.as_raw_fd())).map_err(|e| {
        io::Error::new(e.kind(), format!("cannot reopen it through /proc/self/fd (is /proc mounted?): {e}"))
    })
}

/// One attempt: `None` when a cleaner took the new directory first.
fn create_locked(base: &Path) -> io::Result<Option<PrivateDir>> {
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
    let path = base.join(format!("{PREFIX}{}-{nanos}", std::process::id()));
    match fs::DirBuilder::new().mode(0o700).create(&path) {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => return Ok(None),
        other => other?,
    }
    let dir = match open_directory(&path) {
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(None),
        other => other?,
    };
    if !try_lock(&dir).map_err(|e| io::Error::new(e.kind(), format!("cannot flock {}: {e}", path.display())))? {
        return Ok(None); // a cleaner holds it and is removing it
    }
    // A cleaner may have locked, removed and unlocked it before our lock.
    let locked = dir.metadata()?;
    match fs::symlink_metadata(&path) {
        Ok(now) if now.dev() == locked.dev() && now.ino() == locked.ino() => {
            let spares = Arc::new(Spares {
                dir: path.clone(),
                files: parking_lot::Mutex::new(Vec::new()),
                unsupported: AtomicBool::new(false),
                last_len: AtomicUsize::new(0),
            });
            // The first spare, for the first copy (the registry's attach).
            spares.refill();
            Ok(Some(PrivateDir { path, _lock: dir, spares }))
        }
        _ => Ok(None),
    }
}

/// Opens a directory itself, never a symbolic link in its place.
fn open_directory(path: &Path) -> io::Result<File> {
    fs::OpenOptions::new().read(true).custom_flags(libc::O_DIRECTORY | libc::O_NOFOLLOW).open(path)
}

/// Takes an exclusive `flock` without waiting: `false` when another open
/// descriptor, in this process or another, holds it.
///
/// `libc::flock` rather than `File::try_lock`, whose mechanism std leaves
/// open: the protocol needs `flock`, which is what other registries (of
/// older Rust versions too) and `systemd-tmpfiles` look at.
fn try_lock(file: &File) -> io::Result<bool> {
    // SAFETY: flock on a descriptor `file` owns and keeps open for the call.
    if unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } == 0 {
        return Ok(true);
    }
    let error = io::Error::last_os_error();
    if error.raw_os_error() == Some(libc::EWOULDBLOCK) {
        Ok(false)
    } else {
        Err(error)
    }
}

/// Writes `bytes` to a new file at `path`, a fresh inode per version, and
/// returns a read-only descriptor of that inode, and with `more`, the
/// writable one too, for a caller that writes the rest of the file later.
/// A failed write removes what it wrote.
///
/// The file is written with one `write` (std's `write_all` loops only on a
/// short write) and never synced: a private copy must survive no crash, only
/// be complete for this process, and the page cache gives it that.
fn write_file(path: &Path, bytes: &[u8], more: bool) -> io::Result<(File, Option<File>)> {
    // The directory is this registry's own and copy names never repeat in
    // it, so the file cannot exist yet.
    let mut file = fs::OpenOptions::new().write(true).create_new(true).mode(0o500).open(path)?;
    // Reopened through the descriptor, not the path: the same inode, for
    // reading only, even if the name was taken over meanwhile.
    let written = file.write_all(bytes).and_then(|()| reopen(&file));
    let writable = more.then_some(file);
    written.map(|read_only| (read_only, writable)).inspect_err(|_| {
        // A full disk (or a file size limit) fails the write part-way: the
        // bytes that fit stay on disk. A partial library must not outlive
        // the failed reload, taking space and looking like a copy.
        if let Err(remove) = fs::remove_file(path) {
            tracing::warn!(copy = %path.display(), error = %remove, "cannot delete a partial library copy");
        }
    })
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // Unlinking copies that are still mapped is harmless: the mapping
        // keeps the inode alive. The lock is released after this, when
        // `_lock` is closed.
        if let Err(error) = fs::remove_dir_all(&self.path) {
            tracing::warn!(dir = %self.path.display(), %error, "cannot remove verdant's private directory");
        }
    }
}

/// Removes the `verdant-*` directories of this user in `base` that no
/// registry holds locked: their registry's process is gone.
fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        if !entry.file_name().to_str().is_some_and(|name| name.starts_with(PREFIX)) {
            continue;
        }
        // `DirEntry::metadata` does not follow symbolic links.
        let ours = entry.metadata().is_ok_and(|m| m.is_dir() && m.uid() == current_uid());
        if !ours {
            continue;
        }
        let path = entry.path();
        let Ok(dir) = open_directory(&path) else { continue };
        // Removed only while locked: see the module docs.
        if let Ok(true) = try_lock(&dir) {
            if let Err(error) = fs::remove_dir_all(&path) {
                tracing::warn!(dir = %path.display(), %error, "cannot remove an abandoned private directory");
            }
        }
    }
}

fn current_uid() -> u32 {
    // SAFETY: getuid has no preconditions and cannot fail.
    unsafe { libc::getuid() }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::process::Command;

    /// Set in the environment of a child process that runs one helper test.
    const CHILD: &str = "VERDANT_PRIVATE_DIR_TEST_CHILD";

    /// This test binary, running only the ignored helper test `name` (with
    /// [`CHILD`] set, so that the helper does its work).
    fn child(name: &str) -> Command {
        let mut command = Command::new(std::env::current_exe().expect("own path"));
        command.args(["--exact", &format!("private_dir::tests::{name}"), "--ignored", "--nocapture"]).env(CHILD, "1");
        command
    }

    /// The directory a helper child works on.
    const DIR: &str = "VERDANT_PRIVATE_DIR_TEST_DIR";

    /// A pid no process has: above the largest one Linux hands out (2^22).
    const NO_SUCH_PID: u32 = 4_194_305;

    /// A directory `verdant-<pid>-<n>` in `base` holding a copy, as a
    /// registry leaves it.
    fn leftover(base: &Path, pid: u32, n: u32) -> PathBuf {
        let dir = base.join(format!("{PREFIX}{pid}-{n}"));
        fs::DirBuilder::new().mode(0o700).create(&dir).expect("create a leftover directory");
        fs::write(dir.join("library-1-0123456789ab.so"), b"a copy").expect("write a copy");
        dir
    }

    /// A helper child that holds something until its stdin is closed.
    struct Holder {
        child: std::process::Child,
        /// The rest of its output, read when it ends (an unread pipe would
        /// fail its last writes).
        stdout: io::Lines<io::BufReader<std::process::ChildStdout>>,
    }

    /// Starts helper `name` in a child with [`DIR`] set to `dir` and waits
    /// until it prints a line containing `ready`; returns the child and what
    /// follows `ready` on that line.
    fn start_holder(name: &str, dir: &Path, ready: &str) -> (Holder, String) {
        use std::io::BufRead;
        let mut child = child(name)
            .env(DIR, dir)
            .stdin(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .expect("start the helper");
        let mut stdout = io::BufReader::new(child.stdout.take().expect("piped")).lines();
        for line in stdout.by_ref() {
            let line = line.expect("read the helper's output");
            if let Some(rest) = line.split_once(ready).map(|(_, rest)| rest.trim().to_owned()) {
                return (Holder { child, stdout }, rest);
            }
        }
        panic!("the helper {name} ended without printing {ready:?}: {:?}", child.wait());
    }

    /// Ends a helper started by [`start_holder`] and checks that it passed.
    fn stop_holder(mut holder: Holder) {
        drop(holder.child.stdin.take());
        let rest: Vec<String> = holder.stdout.map_while(Result::ok).collect();
        let status = holder.child.wait().expect("wait for the helper");
        assert!(status.success(), "the helper failed ({status}):\n{}", rest.join("\n"));
    }

    /// Blocks until stdin is closed (by the parent test).
    fn wait_for_stdin_to_close() {
        let mut sink = Vec::new();
        io::Read::read_to_end(&mut io::stdin(), &mut sink).expect("read stdin");
    }

    #[test]
    fn unlocked_directories_are_removed_whatever_their_pid_says() {
        let base = tempfile::tempdir().expect("temp dir");
        // A container's pid 1 restarted on a persistent /tmp finds the
        // directories of its predecessor, also pid 1: a live pid, but
        // nobody holds them.
        let same_pid = leftover(base.path(), std::process::id(), 1);
        let dead_pid = leftover(base.path(), NO_SUCH_PID, 2);
        let not_ours = base.path().join("verdant.log");
        fs::write(&not_ours, b"not a private directory").unwrap();
        remove_stale(base.path());
        assert!(!same_pid.exists(), "an unlocked directory with a live pid was kept");
        assert!(!dead_pid.exists(), "an unlocked directory with a dead pid was kept");
        assert!(not_ours.exists(), "only verdant-* directories are removed");
    }

    #[test]
    fn a_directory_locked_by_another_process_is_kept_whatever_its_pid_says() {
        let base = tempfile::tempdir().expect("temp dir");
        // As a directory of a live registry in another pid namespace looks:
        // its pid names no process here.
        let live = leftover(base.path(), NO_SUCH_PID, 3);
        let (holder, _) = start_holder("hold_a_lock_until_stdin_closes", &live, "VERDANT-LOCKED");
        remove_stale(base.path());
        assert!(live.join("library-1-0123456789ab.so").exists(), "a locked directory lost its copy");
        stop_holder(holder);
        // Its process is gone, and its lock with it: now it is stale.
        remove_stale(base.path());
        assert!(!live.exists(), "an unlocked directory was kept");
    }

    #[test]
    #[ignore = "helper of a_directory_locked_by_another_process_is_kept_whatever_its_pid_says"]
    fn hold_a_lock_until_stdin_closes() {
        let Some(dir) = std::env::var_os(CHILD).and(std::env::var_os(DIR)) else { return };
        let dir = fs::File::open(dir).expect("open the directory");
        // SAFETY: flock on a descriptor `dir` owns.
        assert_eq!(unsafe { libc::flock(std::os::fd::AsRawFd::as_raw_fd(&dir), libc::LOCK_EX) }, 0);
        println!("VERDANT-LOCKED");
        wait_for_stdin_to_close();
    }

    #[test]
    fn a_registry_in_another_process_keeps_its_directory_while_it_lives() {
        let base = tempfile::tempdir().expect("temp dir");
        let (holder, created) = start_holder("hold_a_private_dir_until_stdin_closes", base.path(), "VERDANT-DIR");
        let created = PathBuf::from(created);
        assert_eq!(created.parent(), Some(base.path()), "{}", created.display());
        // Seen from another pid namespace, its pid names no process.
        let renamed = base.path().join(format!("{PREFIX}{NO_SUCH_PID}-4"));
        fs::rename(&created, &renamed).expect("rename the child's directory");

        let ours = PrivateDir::create(Some(base.path())).expect("a second registry");
        assert!(renamed.is_dir(), "the live registry's directory was removed");
        assert_ne!(ours.path(), renamed);
        stop_holder(holder);
        drop(ours);
        assert_eq!(fs::read_dir(base.path()).unwrap().count(), 1, "only the dead child's directory is left");

        // The child died without cleaning up; the next registry does it.
        let next = PrivateDir::create(Some(base.path())).expect("a third registry");
        assert!(!renamed.exists(), "the directory of a dead registry was kept");
        drop(next);
    }

    #[test]
    #[ignore = "helper of a_registry_in_another_process_keeps_its_directory_while_it_lives"]
    fn hold_a_private_dir_until_stdin_closes() {
        let Some(base) = std::env::var_os(CHILD).and(std::env::var_os(DIR)) else { return };
        let dir = PrivateDir::create(Some(Path::new(&base))).expect("create a private directory");
        println!("VERDANT-DIR {}", dir.path().display());
        wait_for_stdin_to_close();
        // Dies like a killed process: nothing is cleaned up.
        std::mem::forget(dir);
    }

    #[test]
    fn a_failed_write_removes_the_partial_copy() {
        // A real failure in the middle of the write, the way a full disk
        // fails it: the kernel writes what fits and then refuses the rest.
        // RLIMIT_FSIZE is per process, so it is lowered in a child.
        let output = child("write_past_the_file_size_limit").output().expect("run the child");
        assert!(
            output.status.success(),
            "the child failed ({}):\n{}{}",
            output.status,
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    #[test]
    #[ignore = "helper of a_failed_write_removes_the_partial_copy, which runs it in a child process"]
    fn write_past_the_file_size_limit() {
        if std::env::var_os(CHILD).is_none() {
            return; // lowering RLIMIT_FSIZE here would break every other test
        }
        let limit = 4096;
        // SAFETY: plain libc calls with valid arguments. SIGXFSZ is ignored so
        // that a write past the limit fails with EFBIG instead of killing the
        // process; only this child process runs this test.
        unsafe {
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            let mut current = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
            assert_eq!(libc::getrlimit(libc::RLIMIT_FSIZE, &mut current), 0);
            let lowered = libc::rlimit { rlim_cur: limit, rlim_max: current.rlim_max };
            assert_eq!(libc::setrlimit(libc::RLIMIT_FSIZE, &lowered), 0);
        }
        let dir = tempfile::tempdir().expect("temp dir");
        let path = dir.path().join("library-1-0123456789ab.so");
        let error = write_file(&path, &vec![0x5a; 16 * limit as usize], false).expect_err("the write must fail");
        assert_eq!(error.raw_os_error(), Some(libc::EFBIG), "{error}");
        let left = fs::metadata(&path).map(|m| m.len());
        assert!(left.is_err(), "a partial copy of {left:?} bytes was left at {}", path.display());

        // The same through a spare file: nothing gets a name.
        let private = PrivateDir::create(Some(dir.path())).expect("private dir");
        assert_eq!(spares(&private), 1, "a spare is made with the directory");
        let error = private.write_copy("library-2.so", &vec![0x5a; 16 * limit as usize], true).expect_err("must fail");
        assert_eq!(error.raw_os_error(), Some(libc::EFBIG), "{error}");
        assert_eq!(fs::read_dir(private.path()).expect("list").count(), 0, "a partial copy was named");
        assert_eq!(spares(&private), 0, "the spare written in part was not dropped");
    }

    /// How many spare files `dir` holds ready.
    fn spares(dir: &PrivateDir) -> usize {
        dir.spares.files.lock().len()
    }

    /// The targets of this process's open descriptors of files in `dir`
    /// (not of `dir` itself: its lock).
    fn open_under(dir: &Path) -> Vec<PathBuf> {
        fs::read_dir("/proc/self/fd")
            .expect("list /proc/self/fd")
            .filter_map(|entry| fs::read_link(entry.ok()?.path()).ok())
            .filter(|target| target.starts_with(dir) && target != dir)
            .collect()
    }

    /// Returns once the jobs queued on the copy thread before the call ran.
    fn background_done() {
        let (done, finished) = std::sync::mpsc::channel();
        crate::loader::in_background(Box::new(move || {
            let _ = done.send(());
        }));
        finished.recv_timeout(std::time::Duration::from_secs(30)).expect("the copy thread ran the jobs before");
    }

    #[test]
    fn a_copy_is_written_into_a_spare_and_opened_by_its_name() {
        let base = tempfile::tempdir().expect("temp dir");
        let dir = PrivateDir::create(Some(base.path())).expect("private dir");
        assert_eq!(spares(&dir), 1, "a spare is made with the directory");
        let bytes: Vec<u8> = (0..100_000u32).map(|i| (i * 7) as u8).collect();
        let (path, read_only, writable) = dir.write_copy("probe-1-aa.so", &bytes, true).expect("write");
        assert_eq!(spares(&dir), 0, "the copy did not use the spare");
        assert_eq!(path, dir.path().join("probe-1-aa.so"));
        assert!(fs::read(&path).expect("read the copy") == bytes);
        // The descriptor dlopen gets carries the copy's name (what
        // /proc/self/maps and status() readers see), not the unnamed file's.
        let fd = format!("/proc/self/fd/{}", read_only.as_raw_fd());
        assert_eq!(fs::read_link(&fd).expect("readlink"), path);
        let writable = writable.expect("asked for");
        for file in [&read_only, &writable] {
            assert_eq!(file.metadata().unwrap().ino(), fs::metadata(&path).unwrap().ino(), "another inode");
        }
        // The next spare is made on the copy thread.
        dir.refill_later();
        background_done();
        assert_eq!(spares(&dir), 1, "no spare made after the copy");
    }

    #[test]
    fn a_spare_is_written_once_and_a_copy_holds_only_its_own_bytes() {
        let base = tempfile::tempdir().expect("temp dir");
        let dir = PrivateDir::create(Some(base.path())).expect("private dir");
        let long = vec![0x11; 300_000];
        let short = vec![0x22; 1_000];
        let (first, first_file, _) = dir.write_copy("probe-1-aa.so", &long, false).expect("write");
        dir.spares.refill();
        // Filled with zeros as long as the last copy, in whole pages.
        let spare_len = dir.spares.files.lock().first().map(|spare| spare.len);
        assert_eq!(spare_len, Some(long.len().next_multiple_of(PAGE) as u64));
        let (second, second_file, _) = dir.write_copy("probe-2-bb.so", &short, false).expect("write");
        assert!(fs::read(&second).expect("read") == short, "the second copy holds more than its bytes");
        assert!(fs::read(&first).expect("read") == long);
        assert_ne!(first_file.metadata().unwrap().ino(), second_file.metadata().unwrap().ino(), "one inode twice");
        // With no spare ready, a copy is created by name.
        assert_eq!(spares(&dir), 0);
        let (third, _, _) = dir.write_copy("probe-3-cc.so", &short, false).expect("write");
        assert!(fs::read(&third).expect("read") == short);
    }

    #[test]
    fn spares_are_kept_up_to_a_few_and_vanish_with_their_directory() {
        let base = tempfile::tempdir().expect("temp dir");
        let dir = PrivateDir::create(Some(base.path())).expect("private dir");
        for _ in 0..SPARES_KEPT + 3 {
            dir.spares.refill();
        }
        assert_eq!(spares(&dir), SPARES_KEPT);
        let path = dir.path().to_owned();
        // Open, unnamed: nothing in the directory, one descriptor each.
        assert_eq!(fs::read_dir(&path).expect("list").count(), 0, "a spare has a name");
        assert_eq!(open_under(&path).len(), SPARES_KEPT, "{:?}", open_under(&path));
        // A refill queued before the registry goes makes nothing after.
        dir.refill_later();
        drop(dir);
        background_done();
        assert!(open_under(&path).is_empty(), "spares outlived their directory: {:?}", open_under(&path));
        assert_eq!(fs::read_dir(base.path()).expect("list").count(), 0, "the directory was left");
    }

    #[test]
    fn directories_sharing_a_base_keep_their_spares_and_copies_apart() {
        let base = tempfile::tempdir().expect("temp dir");
        let (one, two) = (PrivateDir::create(Some(base.path())), PrivateDir::create(Some(base.path())));
        let (one, two) = (one.expect("first"), two.expect("second"));
        assert_ne!(one.path(), two.path());
        let (a, _, _) = one.write_copy("probe-1-aa.so", b"one", false).expect("write");
        let (b, _, _) = two.write_copy("probe-1-aa.so", b"two", false).expect("write");
        assert_eq!((a.parent(), b.parent()), (Some(one.path()), Some(two.path())));
        assert_eq!((fs::read(&a).unwrap(), fs::read(&b).unwrap()), (b"one".to_vec(), b"two".to_vec()));
    }
}
