//! What `Verdant::status()` reports: serving and retired versions, pins in
//! flight, detach results, whether retired files are still mapped, stuck
//! attach threads and SIGPIPE counters.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::attach::StuckAttach;
use crate::report::VersionInfo;
use crate::sigpipe::SigpipeStats;
use crate::version::DetachState;

/// A snapshot of a registry.
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// let status = verdant.status();
/// println!("{status}");
/// for retired in status.loadables.iter().flat_map(|l| &l.retired) {
///     println!("{} pins, mapped: {}", retired.in_flight, retired.mapped);
/// }
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct Status {
    /// The generation of the last transaction started, including a failed
    /// or still running one (0 before the first attach). Every transaction
    /// takes a number, so failed reloads are visible as gaps between the
    /// generations of serving versions.
    pub generation: u64,
    /// Whether `revoke()` was called.
    pub revoked: bool,
    /// Whether strict mode is on.
    pub strict: bool,
    /// Where private copies of libraries live.
    pub private_dir: PathBuf,
    /// Every loadable, in registration order (the manifest's entries in its
    /// order).
    pub loadables: Vec<LoadableStatus>,
    /// Loadables the manifest no longer lists, while a version of theirs is
    /// still pinned or awaiting detach, and the last 8 finished ones.
    pub removed: Vec<LoadableStatus>,
    /// Attach hooks that exceeded the time limit and have not returned.
    pub stuck_attaches: Vec<StuckAttach>,
    /// SIGPIPE listener counters.
    pub sigpipe: SigpipeStats,
}

/// One loadable in a [`Status`].
#[derive(Debug, Clone)]
pub struct LoadableStatus {
    /// Its name.
    pub name: String,
    /// Its registered artifact path.
    pub path: PathBuf,
    /// The interface it serves.
    pub interface: &'static str,
    /// Where the HTTP pipeline serves its routes, if anywhere.
    pub mount: Option<String>,
    /// The all-or-nothing group it belongs to, if any.
    pub group: Option<String>,
    /// The version serving now.
    pub current: Option<VersionInfo>,
    /// Versions that stopped serving, oldest first: every one still pinned
    /// or awaiting detach, and the newest 32 finished ones.
    pub retired: Vec<RetiredStatus>,
}

/// A version that stopped serving.
#[derive(Debug, Clone)]
pub struct RetiredStatus {
    /// Which version.
    pub version: VersionInfo,
    /// When it stopped serving.
    pub retired_at: Option<SystemTime>,
    /// Calls, futures or responses still pinned to it.
    pub in_flight: usize,
    /// Tasks it started with [`verdant_loadable::spawn`] that are still
    /// running; they keep its library loaded (and may outlive its detach,
    /// unless the detach hook aborted them).
    pub tasks_running: usize,
    /// Whether its detach hook ran.
    pub detach: DetachState,
    /// Whether its private copy is still mapped into the process (read from
    /// `/proc/self/maps`). Usually true: glibc keeps a library mapped while
    /// threads that ran its code hold its thread-local destructors
    /// ([`docs::boundary`](crate::docs::boundary) §4).
    pub mapped: bool,
    /// How many bytes of address space its mappings still take (the sum of
    /// its `/proc/self/maps` ranges; 0 once unmapped). This is what a
    /// retired version costs the process, measured rather than guessed.
    pub mapped_bytes: u64,
    /// Its private copy (deleted once retired; the mapping outlives the name).
    pub copy: PathBuf,
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "verdant: generation {}, strict {}, revoked {}, private dir {}",
            self.generation,
            self.strict,
            self.revoked,
            self.private_dir.display()
        )?;
        let removed = self.removed.iter().map(|loadable| (loadable, true));
        for (loadable, removed) in self.loadables.iter().map(|loadable| (loadable, false)).chain(removed) {
            let mut place = String::new();
            if let Some(mount) = &loadable.mount {
                place.push_str(&format!(" at {mount}"));
            }
            if let Some(group) = &loadable.group {
                place.push_str(&format!(" in group {group}"));
            }
            let (name, path) = (&loadable.name, loadable.path.display());
            match &loadable.current {
                _ if removed => writeln!(f, "  {name} ({path}): removed from the manifest")?,
                Some(current) => writeln!(f, "  {name} ({path}){place}: serving {current}")?,
                None => writeln!(f, "  {name} ({path}){place}: not attached")?,
            }
            for retired in &loadable.retired {
                let mapping = if retired.mapped {
                    format!("still mapped ({} KiB)", retired.mapped_bytes / 1024)
                } else {
                    "unmapped".to_owned()
                };
                writeln!(
                    f,
                    "    retired {}: {} in flight, {} tasks running, detach {:?}, {mapping}",
                    retired.version, retired.in_flight, retired.tasks_running, retired.detach
                )?;
            }
        }
        for stuck in &self.stuck_attaches {
            writeln!(f, "  STUCK attach of {} on thread {}", stuck.loadable, stuck.thread)?;
        }
        writeln!(
            f,
            "  sigpipe: listening {}, {} reloads triggered, {} self-sent ignored",
            self.sigpipe.listening, self.sigpipe.reloads_triggered, self.sigpipe.ignored_self_sent
        )
    }
}

/// The files mapped into this process and the bytes each maps, from
/// `/proc/self/maps`.
pub(crate) struct Mappings {
    bytes: HashMap<PathBuf, u64>,
}

impl Mappings {
    pub(crate) fn read() -> Mappings {
        let text = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
        let mut bytes = HashMap::new();
        for line in text.lines() {
            // address perms offset dev inode pathname; the path may hold
            // spaces and ends in " (deleted)" once unlinked.
            let mut fields = line.splitn(6, char::is_whitespace);
            let Some((start, end)) = fields.next().and_then(|range| range.split_once('-')) else { continue };
            let Some(path) = fields.nth(4).map(str::trim_start) else { continue };
            let path = path.strip_suffix(" (deleted)").unwrap_or(path);
            let (Ok(start), Ok(end)) = (u64::from_str_radix(start, 16), u64::from_str_radix(end, 16)) else { continue };
            if path.starts_with('/') {
                *bytes.entry(PathBuf::from(path)).or_insert(0) += end.saturating_sub(start);
            }
        }
        Mappings { bytes }
    }

    /// Bytes mapped from `path` (0 when it is not mapped).
    pub(crate) fn bytes(&self, path: &Path) -> u64 {
        self.bytes.get(path).copied().unwrap_or(0)
    }
}
