//! What `Verdant::status()` reports: serving and retired versions, calls
//! and requests in flight, detach results, whether retired files are still
//! mapped, why a loadable is not serving, the last reload, stuck and late
//! attach threads and SIGPIPE counters.
//!
//! Every type here serializes (serde) to the JSON of the admin API's
//! `/status`: times in seconds since the Unix epoch (floats), paths as
//! strings, hashes as hex.

use std::collections::HashMap;
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use serde::Serialize;

use crate::attach::{LateAttach, StuckAttach};
use crate::error::{Error, StepError};
use crate::report::{ReloadReport, Trigger, VersionInfo};
use crate::retained::Mapping;
use crate::sigpipe::SigpipeStats;
use crate::version::DetachState;

/// A snapshot of a registry.
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// let status = verdant.status();
/// println!("{status}");
/// for retired in status.loadables.iter().flat_map(|l| &l.retired) {
///     println!("{} requests in flight, mapped: {}", retired.in_flight, retired.mapped);
/// }
/// let json = serde_json::to_value(&status).unwrap(); // what the admin API's /status answers
/// assert_eq!(json["generation"], 0);
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, Serialize)]
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
    #[serde(serialize_with = "crate::serialize::path")]
    pub private_dir: PathBuf,
    /// Every loadable, in registration order (the manifest's entries in its
    /// order).
    pub loadables: Vec<LoadableStatus>,
    /// Loadables the manifest no longer lists, while a version of theirs is
    /// still pinned or awaiting detach, and the last 8 finished ones.
    pub removed: Vec<LoadableStatus>,
    /// Attach hooks that exceeded the time limit and have not returned.
    pub stuck_attaches: Vec<StuckAttach>,
    /// Attach hooks that returned after the time limit (the newest 8):
    /// their instances were detached at once and never served.
    pub late_attaches: Vec<LateAttach>,
    /// SIGPIPE listener counters.
    pub sigpipe: SigpipeStats,
    /// What the versions retired for good keep, for the life of the process:
    /// what every reload has cost so far and will go on costing.
    pub retained: RetainedSummary,
    /// The last attach or reload (a call, a signal), successful or not;
    /// `None` before the first. A manifest that does not validate is a
    /// failed reload too.
    pub last_reload: Option<LastReload>,
}

/// What a registry's versions retired for good keep, in [`Status::retained`]:
/// versions whose detach hook ran and whose library nothing uses any more
/// (no call, request, task or router), which stay mapped for the life of
/// the process ([`docs::boundary`](crate::docs::boundary) §4).
///
/// When a version gets there, Verdant gives back what can come back
/// unchanged from its private copy: the resident pages of its read-only
/// mappings (`madvise`), its clean page cache (`posix_fadvise`), and every
/// byte of the copy outside its loaded segments (holes punched over debug
/// sections and symbol tables). What is left is measured here, from
/// `/proc/self/maps`, `/proc/self/pagemap` and `fstat`, each time `status()` or the metrics are
/// asked for: the anonymous pages of its writable data (what its code
/// wrote), a few pages faulted back in, and its loaded segments on the
/// private directory's filesystem (RAM when that is a tmpfs; see
/// [`Builder::private_dir`](crate::Builder::private_dir)).
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// let retained = verdant.status().retained;
/// if retained.versions > 0 {
///     println!(
///         "{} retired versions keep {} KiB resident and {} KiB of files ({} KiB per version)",
///         retained.versions,
///         retained.rss_bytes / 1024,
///         retained.file_bytes / 1024,
///         (retained.rss_bytes + retained.file_bytes) / retained.versions / 1024
///     );
/// }
/// let json = serde_json::to_value(verdant.status()).unwrap();
/// assert_eq!(json["retained"]["versions"], 0);
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize)]
pub struct RetainedSummary {
    /// How many versions retired for good are still mapped.
    pub versions: u64,
    /// The resident memory of their mappings (their pages present in
    /// `/proc/self/pagemap`: what smaps calls `Rss`), in bytes.
    pub rss_bytes: u64,
    /// The space their (deleted) private copies take on the private
    /// directory's filesystem: allocated blocks, in bytes.
    pub file_bytes: u64,
}

/// The last transaction of a registry, in [`Status::last_reload`].
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// if let Some(last) = verdant.status().last_reload {
///     if !last.success {
///         eprintln!("the last reload failed: {}", last.summary());
///     }
/// }
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct LastReload {
    /// What started it.
    pub trigger: Trigger,
    /// When it ended.
    #[serde(serialize_with = "crate::serialize::time")]
    pub finished_at: SystemTime,
    /// Whether every loadable it selected was applied.
    pub success: bool,
    /// Its report; `None` when it failed before any loadable was tried (a
    /// manifest that does not validate: see `error`).
    pub report: Option<ReloadReport>,
    /// What failed it as a whole, when that is not a loadable's failure
    /// (those are in the report): the manifest error, say.
    pub error: Option<Error>,
}

impl LastReload {
    /// One line: the generation and what failed, or that it succeeded.
    ///
    /// ```
    /// # fn f(last: &verdant::LastReload) {
    /// println!("last reload: {}", last.summary());
    /// # }
    /// ```
    pub fn summary(&self) -> String {
        if let Some(error) = &self.error {
            return format!("failed: {error}");
        }
        let Some(report) = &self.report else { return "no report".to_owned() };
        let failures: Vec<String> = report
            .failures()
            .map(|(name, error)| format!("`{name}` at step `{}`: {}", error.step, error.kind))
            .collect();
        if failures.is_empty() {
            format!("#{} succeeded", report.generation)
        } else {
            format!("#{} failed: {}", report.generation, failures.join("; "))
        }
    }
}

/// Why a loadable's newest build is not serving: the failure of the last
/// transaction that tried it, kept until a later one applies it
/// ([`LoadableStatus::failure`]). A handle whose loadable never attached
/// says it in its error ([`HandleError::AttachFailed`](crate::HandleError::AttachFailed)).
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// for loadable in verdant.status().loadables {
///     if let Some(failure) = &loadable.failure {
///         eprintln!("{}: {failure}", loadable.name);
///     }
/// }
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct LoadableFailure {
    /// The generation of the transaction that failed it.
    pub generation: u64,
    /// When that transaction ended.
    #[serde(serialize_with = "crate::serialize::time")]
    pub failed_at: SystemTime,
    /// The failure: this loadable's own, or, when `own` is false, that of
    /// the member of its [group](crate::Builder::group) that failed.
    pub error: StepError,
    /// Whether `error` is this loadable's own. False: its own build was
    /// fine, but its group was not applied (it was rolled back or not
    /// reached).
    pub own: bool,
}

impl fmt::Display for LoadableFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let error = &self.error;
        if self.own {
            write!(
                f,
                "transaction #{} failed at step `{}` ({}): {}",
                self.generation,
                error.step,
                error.path.display(),
                error.kind
            )
        } else {
            write!(
                f,
                "transaction #{} did not apply its group: `{}` failed at step `{}`: {}",
                self.generation, error.loadable, error.step, error.kind
            )
        }
    }
}

/// One loadable in a [`Status`].
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// for loadable in verdant.status().loadables {
///     match &loadable.current {
///         Some(version) => println!("{}: {version}", loadable.name),
///         None => println!("{}: not serving", loadable.name),
///     }
/// }
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct LoadableStatus {
    /// Its name.
    pub name: String,
    /// Its registered artifact path.
    #[serde(serialize_with = "crate::serialize::path")]
    pub path: PathBuf,
    /// The interface it serves.
    pub interface: &'static str,
    /// Where the HTTP pipeline serves its routes, if anywhere.
    pub mount: Option<String>,
    /// The all-or-nothing group it belongs to, if any.
    pub group: Option<String>,
    /// The version serving now.
    pub current: Option<VersionInfo>,
    /// Why its newest build is not serving, if the last transaction that
    /// tried it failed (cleared once one applies it).
    pub failure: Option<LoadableFailure>,
    /// Versions that stopped serving or never served (rolled back), oldest
    /// first: every one still pinned or awaiting detach, and the newest 32
    /// finished ones.
    pub retired: Vec<RetiredStatus>,
}

/// Why a version stopped serving, or never did.
///
/// ```
/// assert_eq!(serde_json::to_string(&verdant::RetireReason::RolledBack).unwrap(), r#""rolled_back""#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum RetireReason {
    /// A newer version was swapped in.
    Replaced,
    /// The manifest no longer lists its loadable.
    Removed,
    /// [`Verdant::revoke`](crate::Verdant::revoke).
    Revoked,
    /// It attached, but another member of its [group](crate::Builder::group)
    /// failed, so it was detached again without ever serving.
    RolledBack,
}

impl fmt::Display for RetireReason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            RetireReason::Replaced => "replaced",
            RetireReason::Removed => "removed",
            RetireReason::Revoked => "revoked",
            RetireReason::RolledBack => "rolled back",
        })
    }
}

/// A version that stopped serving (or, rolled back, never served).
///
/// ```
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// for retired in verdant.status().loadables.iter().flat_map(|l| &l.retired) {
///     println!("{} ({}): {} in flight", retired.version, retired.reason, retired.in_flight);
/// }
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, Serialize)]
pub struct RetiredStatus {
    /// Which version.
    pub version: VersionInfo,
    /// Why it is not serving.
    pub reason: RetireReason,
    /// When it stopped serving.
    #[serde(serialize_with = "crate::serialize::optional_time")]
    pub retired_at: Option<SystemTime>,
    /// Calls and requests still running on it: one per
    /// [`Pinned`](crate::Pinned) that [`Handle::get`](crate::Handle::get)
    /// returned and is still held, and one per HTTP request in its routes
    /// (served through [`axum::pipeline`](crate::axum::pipeline) or
    /// [`axum::mount`](crate::axum::mount)) until the response body ends.
    /// What the HTTP pipeline holds to serve the version is not counted,
    /// nor a request that only passes through its middleware (the pipeline
    /// keeps the version attached for it all the same). It detaches once
    /// this is 0 and nothing else holds it.
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
    #[serde(serialize_with = "crate::serialize::path")]
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
            if let Some(failure) = &loadable.failure {
                writeln!(f, "    newest build not serving: {failure}")?;
            }
            for retired in &loadable.retired {
                let mapping = if retired.mapped {
                    format!("still mapped ({} KiB)", retired.mapped_bytes / 1024)
                } else {
                    "unmapped".to_owned()
                };
                writeln!(
                    f,
                    "    {} {}: {} in flight, {} tasks running, detach {:?}, {mapping}",
                    if retired.reason == RetireReason::RolledBack { "rolled back" } else { "retired" },
                    retired.version,
                    retired.in_flight,
                    retired.tasks_running,
                    retired.detach
                )?;
            }
        }
        for stuck in &self.stuck_attaches {
            writeln!(f, "  STUCK attach of {} on thread {}", stuck.loadable, stuck.thread)?;
        }
        for late in &self.late_attaches {
            writeln!(
                f,
                "  late attach of {} ({}) on thread {}: {}",
                late.loadable, late.library, late.thread, late.result
            )?;
        }
        if let Some(last) = &self.last_reload {
            writeln!(
                f,
                "  last {}: {}",
                if last.trigger == Trigger::Attach { "attach" } else { "reload" },
                last.summary()
            )?;
        }
        let retained = &self.retained;
        writeln!(
            f,
            "  retained for ever: {} retired versions, {} KiB resident, {} KiB of files",
            retained.versions,
            retained.rss_bytes / 1024,
            retained.file_bytes / 1024
        )?;
        writeln!(
            f,
            "  sigpipe: listening {}, {} reloads triggered, {} self-sent ignored",
            self.sigpipe.listening, self.sigpipe.reloads_triggered, self.sigpipe.ignored_self_sent
        )
    }
}

/// The mappings of this process, from `/proc/self/maps` (read once per
/// `status()` or scrape), and the bytes each file maps.
pub(crate) struct Mappings {
    all: Vec<Mapping>,
    bytes: HashMap<PathBuf, u64>,
}

impl Mappings {
    pub(crate) fn read() -> Mappings {
        let all = crate::retained::read_maps();
        let mut bytes = HashMap::new();
        for mapping in &all {
            if mapping.path.starts_with('/') {
                *bytes.entry(PathBuf::from(&mapping.path)).or_insert(0) += mapping.end.saturating_sub(mapping.start);
            }
        }
        Mappings { all, bytes }
    }

    /// Every mapping.
    pub(crate) fn all(&self) -> &[Mapping] {
        &self.all
    }

    /// Bytes mapped from `path` (0 when it is not mapped).
    pub(crate) fn bytes(&self, path: &Path) -> u64 {
        self.bytes.get(path).copied().unwrap_or(0)
    }

    /// Every mapped file in `dir` and the bytes it maps.
    pub(crate) fn under<'a>(&'a self, dir: &'a Path) -> impl Iterator<Item = (&'a Path, u64)> + 'a {
        self.bytes.iter().filter(move |(path, _)| path.starts_with(dir)).map(|(path, bytes)| (path.as_path(), *bytes))
    }
}
