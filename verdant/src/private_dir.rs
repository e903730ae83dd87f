//! The per-process directory that holds private copies of libraries.
//!
//! glibc hands back an already-loaded object for the same path or the same
//! inode ([`docs::boundary`](crate::docs::boundary) §5), so every version is loaded from its own copy with
//! a unique name. The directory is created with mode 0700 so that no other
//! user can swap a file in between the check and the `dlopen`.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{SystemTime, UNIX_EPOCH};

const PREFIX: &str = "verdant-";

/// A private directory; removed on drop when verdant created it.
#[derive(Debug)]
pub(crate) struct PrivateDir {
    path: PathBuf,
    created: bool,
}

impl PrivateDir {
    /// Uses `configured`, or creates `$TMPDIR/verdant-<pid>-<nanos>`.
    pub(crate) fn create(configured: Option<&Path>) -> io::Result<PrivateDir> {
        match configured {
            Some(path) => {
                fs::DirBuilder::new().recursive(true).mode(0o700).create(path)?;
                fs::set_permissions(path, fs::Permissions::from_mode(0o700))?;
                remove_copies_of_dead_processes(path);
                Ok(PrivateDir { path: path.to_owned(), created: false })
            }
            None => {
                let base = std::env::temp_dir();
                remove_stale(&base);
                let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_nanos());
                let path = base.join(format!("{PREFIX}{}-{nanos}", std::process::id()));
                fs::DirBuilder::new().mode(0o700).create(&path)?;
                Ok(PrivateDir { path, created: true })
            }
        }
    }

    pub(crate) fn path(&self) -> &Path {
        &self.path
    }
}

/// Writes `bytes` to a new file at `path`: a fresh inode per version. A
/// failed write removes what it wrote.
///
/// Copy names carry the pid and a process-wide sequence number, so an
/// existing file of that name was left by an earlier process that had the
/// same pid (a restarted container's pid 1); it is replaced. Unlinking it
/// cannot disturb a mapping, which holds the old inode.
pub(crate) fn write_file(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let open = || fs::OpenOptions::new().write(true).create_new(true).mode(0o500).open(path);
    let mut file = match open() {
        Err(error) if error.kind() == io::ErrorKind::AlreadyExists => {
            fs::remove_file(path)?;
            open()?
        }
        other => other?,
    };
    if let Err(error) = file.write_all(bytes) {
        // A full disk (or a file size limit) fails the write part-way: the
        // bytes that fit stay on disk. A partial library must not outlive
        // the failed reload, taking space and looking like a copy.
        drop(file);
        if let Err(remove) = fs::remove_file(path) {
            tracing::warn!(copy = %path.display(), error = %remove, "cannot delete a partial library copy");
        }
        return Err(error);
    }
    Ok(())
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        // Unlinking copies that are still mapped is harmless: the mapping
        // keeps the inode alive.
        if self.created {
            if let Err(error) = fs::remove_dir_all(&self.path) {
                tracing::warn!(dir = %self.path.display(), %error, "cannot remove verdant's private directory");
            }
        }
    }
}

/// Removes `verdant-<pid>-*` directories of processes that no longer exist
/// (a process killed with SIGKILL cannot clean up after itself).
fn remove_stale(base: &Path) {
    let Ok(entries) = fs::read_dir(base) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(rest) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else { continue };
        let Some(pid) = rest.split('-').next().and_then(|p| p.parse::<u32>().ok()) else { continue };
        let ours = entry.metadata().map(|m| std::os::unix::fs::MetadataExt::uid(&m)).ok() == Some(current_uid());
        if ours && !process_exists(pid) {
            let _ = fs::remove_dir_all(entry.path());
        }
    }
}

/// In a configured directory, which outlives processes: removes copies
/// (`<name>-p<pid>-<n>-<hash>.so`) whose process is gone.
fn remove_copies_of_dead_processes(dir: &Path) {
    let Ok(entries) = fs::read_dir(dir) else { return };
    for entry in entries.flatten() {
        let name = entry.file_name();
        let Some(name) = name.to_str().and_then(|n| n.strip_suffix(".so")) else { continue };
        // The pid is the third field from the end; loadable names may
        // contain '-' themselves.
        let mut fields = name.rsplitn(4, '-');
        let pid = fields.nth(2).and_then(|p| p.strip_prefix('p')).and_then(|p| p.parse::<u32>().ok());
        if let Some(pid) = pid {
            if !process_exists(pid) {
                let _ = fs::remove_file(entry.path());
            }
        }
    }
}

fn process_exists(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
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
        let error = write_file(&path, &vec![0x5a; 16 * limit as usize]).expect_err("the write must fail");
        assert_eq!(error.raw_os_error(), Some(libc::EFBIG), "{error}");
        let left = fs::metadata(&path).map(|m| m.len());
        assert!(left.is_err(), "a partial copy of {left:?} bytes was left at {}", path.display());
    }
}
