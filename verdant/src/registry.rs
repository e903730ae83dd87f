//! The registry: [`Verdant`] and its [`Builder`].

use std::any::Any;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Weak};
use std::time::{Duration, Instant, SystemTime};

use parking_lot::{Mutex, RwLock};

use crate::attach::{AttachEnv, StuckAttaches};
use crate::descriptor::Fingerprint;
use crate::entry::Entry;
use crate::error::Error;
use crate::filter::Select;
use crate::handle::{Handle, Slot};
use crate::loader::{Stages, System};
use crate::manifest::Manifest;
use crate::manifest_diff;
use crate::metrics::{Gauges, Metrics};
use crate::panic_report::{OnPanic, PanicReport, PanicSink};
use crate::private_dir::PrivateDir;
use crate::report::{Outcome, ReloadReport, Trigger};
use crate::retained::Retained;
use crate::sigpipe::{self, SigpipeCounters};
use crate::status::{LastReload, LoadableFailure, LoadableStatus, Mappings, RetireReason, RetiredStatus, Status};
use crate::transaction::{self, Mode};
use crate::trigger::{self, Coordinator, Request, Waiter};
use crate::version::Retirement;
use crate::Interface;

/// The default attach time limit.
pub const DEFAULT_ATTACH_TIMEOUT: Duration = Duration::from_secs(30);

/// Configures a [`Verdant`] registry. Every setting has a default.
///
/// ```no_run
/// # use std::time::Duration;
/// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
/// # struct ShopContext;
/// let verdant = verdant::Verdant::builder(ShopContext)
///     .strict(true)
///     .attach_timeout(Duration::from_secs(5))
///     .add::<dyn Shop>("shop", "target/debug/libshop_lib.so")
///     .build()?;
/// verdant.attach()?;
/// # Ok::<(), verdant::Error>(())
/// ```
pub struct Builder {
    context: Arc<dyn Any + Send + Sync>,
    context_fingerprint: Fingerprint,
    strict: bool,
    private_dir: Option<PathBuf>,
    attach_timeout: Duration,
    runtime: Option<tokio::runtime::Handle>,
    entries: Vec<Entry>,
    /// `group` calls: group name and member names, in call order.
    groups: Vec<(Arc<str>, Vec<String>)>,
    /// `mount` calls: loadable name and mount, in call order.
    mounts: Vec<(String, String)>,
    manifest: Option<PathBuf>,
    stages: Arc<dyn Stages>,
    on_panic: Option<OnPanic>,
    /// `systemd` calls; `None`: on when `NOTIFY_SOCKET` is set.
    systemd: Option<bool>,
}

impl Builder {
    /// Strict mode decides what the caller of [`Verdant::attach`],
    /// [`Verdant::reload`] and [`Verdant::reload_blocking`] sees when a
    /// loadable fails. Default: on in release builds, off in debug builds
    /// (greenium's production default).
    ///
    /// What is *applied* is the same in both modes: every loadable (or
    /// [group](Self::group)) is loaded, attached and swapped in on its own,
    /// a failing one keeps its previous version (or stays unattached), and
    /// the others are applied regardless. Every failure is logged once at
    /// ERROR with the loadable, the step and the cause.
    ///
    /// - Off: those calls return `Ok(report)` even when some loadables
    ///   failed; [`ReloadReport::failures`] and
    ///   [`ReloadReport::is_success`] tell.
    /// - On: any failure makes them return [`Error::Reload`]; its
    ///   [`ReloadFailure`](crate::ReloadFailure) carries the first error and
    ///   the full report, which shows the loadables that did commit. A
    ///   reload filter that matches nothing is an error too
    ///   ([`Error::NoMatch`]) instead of a warning.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
    /// let verdant = verdant::Verdant::builder(())
    ///     .strict(true)
    ///     .add::<dyn Shop>("shop", "target/debug/libshop_lib.so")
    ///     .build()?;
    /// match verdant.attach() {
    ///     Ok(report) => assert!(report.is_success()),
    ///     Err(verdant::Error::Reload(failure)) => {
    ///         eprintln!("{failure}\n{}", failure.report);
    ///     }
    ///     Err(other) => return Err(other),
    /// }
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn strict(mut self, strict: bool) -> Self {
        self.strict = strict;
        self
    }

    /// Where private copies of libraries go: the registry makes its own
    /// directory `verdant-<pid>-<nanos>` (mode 0700) in `dir` (created, or
    /// tightened to mode 0700) instead of `$TMPDIR`, and removes it when it
    /// is dropped. The filesystem must allow executable mappings and
    /// `flock`.
    ///
    /// A registry holds a lock on its directory while it lives; a new
    /// registry removes the directories in the same place whose lock nobody
    /// holds (left by processes that were killed), and never one whose lock
    /// is held, whatever pid its name shows (a container's pid 1, a process
    /// in another pid namespace).
    ///
    /// Choose its filesystem deliberately: every retired version keeps its
    /// loaded segments there for the life of the process
    /// ([`Status::retained`](crate::Status::retained)). On a tmpfs (a
    /// common `/tmp`, systemd's `PrivateTmp=`) that is RAM; on a disk
    /// filesystem (ext4, xfs, btrfs) it is disk, with pages in RAM only
    /// while read. A service that reloads often should put it on a disk.
    ///
    /// ```
    /// let builder = verdant::Verdant::builder(()).private_dir("/var/lib/my-service/verdant");
    /// ```
    pub fn private_dir(mut self, dir: impl Into<PathBuf>) -> Self {
        self.private_dir = Some(dir.into());
        self
    }

    /// How long an attach hook may run before the reload fails and its
    /// thread is abandoned. Default: [`DEFAULT_ATTACH_TIMEOUT`] (30 s).
    ///
    /// ```
    /// let builder = verdant::Verdant::builder(()).attach_timeout(std::time::Duration::from_secs(2));
    /// ```
    pub fn attach_timeout(mut self, limit: Duration) -> Self {
        self.attach_timeout = limit;
        self
    }

    /// The tokio runtime that attach hooks (and SIGPIPE-triggered reloads)
    /// run in; set it when the registry is used from more than one runtime.
    /// Default: the runtime `build()`, `attach()` or `reload()` was last
    /// called from.
    ///
    /// ```
    /// let runtime = tokio::runtime::Runtime::new().unwrap();
    /// let builder = verdant::Verdant::builder(()).runtime(runtime.handle().clone());
    /// ```
    pub fn runtime(mut self, runtime: tokio::runtime::Handle) -> Self {
        self.runtime = Some(runtime);
        self
    }

    /// Registers a loadable serving interface `I` from the `cdylib` at
    /// `path`. Nothing is loaded until [`Verdant::attach`]. A duplicate name
    /// makes `build()` fail.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
    /// let builder = verdant::Verdant::builder(()).add::<dyn Shop>("shop", "target/debug/libshop_lib.so");
    /// ```
    pub fn add<I: Interface + ?Sized>(mut self, name: &str, path: impl Into<PathBuf>) -> Self {
        self.entries.push(Entry::new::<I>(name, path.into()));
        self
    }

    /// Runs the loadables the manifest at `path` lists (see
    /// [`manifest`](crate::manifest) for its format; [`DEFAULT_MANIFEST`]
    /// is the conventional name). `build()` reads it; every reload (a
    /// [`reload`](Verdant::reload) call, `kill -PIPE`) reads it again and
    /// applies the difference before it loads anything:
    ///
    /// - a new name is loaded and attached as an HTTP extension
    ///   (`dyn verdant_loadable::http::HttpExtension`), unless a loadable of
    ///   that name was [added](Self::add) in code: then the entry sets its
    ///   path, mount and group;
    /// - a name that is no longer listed is revoked: its handles answer
    ///   `Revoked`, its routes 404 and its middleware leaves the HTTP
    ///   pipeline at once; its version detaches once its last request is
    ///   done (a loadable added in code stays registered, dormant, until
    ///   the manifest lists it again);
    /// - a changed path or file is reloaded; a changed `mount` or
    ///   `settings` of an extension re-attaches it;
    /// - an unchanged entry is untouched (its reload reports `Unchanged`).
    ///
    /// The entries' order is the order their middlewares run in. A manifest
    /// that does not parse or validate changes nothing: `build()` or the
    /// reload fails with [`Error::Manifest`], which names the file, line and
    /// column.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn router(&self) -> axum::Router; }
    /// // verdant.toml:
    /// //   [[loadable]]
    /// //   name = "shop"
    /// //   path = "target/debug/libshop_lib.so"
    /// //   mount = "/shop"
    /// let verdant = verdant::Verdant::builder(())
    ///     .add::<dyn Shop>("shop", "target/debug/libshop_lib.so")
    ///     .manifest(verdant::manifest::DEFAULT_MANIFEST)
    ///     .build()?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn manifest(mut self, path: impl Into<PathBuf>) -> Self {
        self.manifest = Some(path.into());
        self
    }

    /// Serves the routes of loadable `name` under `mount` (`"/shop"`) in the
    /// HTTP pipeline ([`crate::axum::pipeline`]); a manifest entry of that
    /// name sets its own mount instead. `build()` fails for an unknown name
    /// or a malformed mount (it must look like `/shop` or `/api/v1`).
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn router(&self) -> axum::Router; }
    /// let verdant = verdant::Verdant::builder(())
    ///     .add::<dyn Shop>("shop", "target/debug/libshop_lib.so")
    ///     .mount("shop", "/shop")
    ///     .build()?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn mount(mut self, name: &str, mount: &str) -> Self {
        self.mounts.push((name.to_owned(), mount.to_owned()));
        self
    }

    /// Makes the loadables `members` one all-or-nothing unit named `name`.
    ///
    /// Without groups every loadable is loaded, attached and swapped in on
    /// its own, so one bad build blocks nobody else. The members of a group
    /// are loaded together, in registration order, and swapped in together
    /// only if every one of them got as far as attaching: when one fails,
    /// the members already attached are detached again
    /// ([`Outcome::RolledBack`](crate::Outcome::RolledBack)), those after it
    /// are not tried ([`Outcome::NotReached`](crate::Outcome::NotReached)),
    /// and the whole group keeps its previous versions. Loadables outside
    /// the group are unaffected. A reload that selects any member reloads
    /// the whole group.
    ///
    /// Use it for loadables that must change together (one calls the
    /// other's new interface, say). `build()` fails for a member that was
    /// not [added](Self::add) ([`Error::UnknownGroupMember`]), a loadable
    /// in two groups ([`Error::GroupConflict`]), or a group name given
    /// twice ([`Error::DuplicateGroup`]).
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Cart: Send + Sync { fn size(&self) -> usize; }
    /// # #[verdant_loadable::interface] pub trait Pay: Send + Sync { fn pay(&self) -> bool; }
    /// let verdant = verdant::Verdant::builder(())
    ///     .add::<dyn Cart>("cart", "target/debug/libcart.so")
    ///     .add::<dyn Pay>("payment", "target/debug/libpayment.so")
    ///     .group("checkout", ["cart", "payment"])
    ///     .build()?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn group(mut self, name: &str, members: impl IntoIterator<Item = impl AsRef<str>>) -> Self {
        self.groups.push((Arc::from(name), members.into_iter().map(|m| m.as_ref().to_owned()).collect()));
        self
    }

    /// Calls `callback` once for every panic of library code, with a
    /// [`PanicReport`]: the loadable, its version, where it panicked (the
    /// method, or the HTTP request), the message, the library's
    /// `file:line:column`, and the library's backtrace when `RUST_BACKTRACE`
    /// asks for one. Plug error tracking (Sentry and the like) in here: the
    /// host's panic hook never sees a panic that Verdant contains, and a
    /// library panic that a method without a `Result` re-raises in the host
    /// skips that hook too, because it was reported here already (see
    /// [`boundary::Panic::resume`](crate::boundary::Panic::resume)).
    ///
    /// Every report is also one `tracing` ERROR event (target
    /// `verdant::panic_report`), with or without a callback. The callback
    /// runs on the thread that caught the panic (a request's, the
    /// retirement thread for a detach hook), possibly inside library frames:
    /// keep it short and never block; a panic in it is caught and logged.
    /// Do not call loadables from it: for a panic outside any guard (a
    /// thread the library started) it runs inside the library's panic hook,
    /// where a second panic of that library aborts the process.
    ///
    /// ```
    /// use std::sync::atomic::{AtomicU64, Ordering};
    /// use std::sync::Arc;
    ///
    /// let panics = Arc::new(AtomicU64::new(0));
    /// let counter = panics.clone();
    /// let verdant = verdant::Verdant::builder(())
    ///     .on_panic(move |report: &verdant::PanicReport| {
    ///         counter.fetch_add(1, Ordering::Relaxed);
    ///         eprintln!("{report}"); // loadable `shop` (shop-lib 0.1.0, generation 1) panicked in quote at src/lib.rs:94:13: ...
    ///     })
    ///     .build()?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn on_panic(mut self, callback: impl Fn(&PanicReport) + Send + Sync + 'static) -> Self {
        self.on_panic = Some(Arc::new(callback));
        self
    }

    /// Whether the registry tells systemd about reloads that a signal
    /// triggered (`Type=notify-reload` with `ReloadSignal=SIGPIPE`, so that
    /// `systemctl reload` waits for the result): `RELOADING=1` with
    /// `MONOTONIC_USEC=` before it loads anything, then `READY=1` with a
    /// `STATUS=` naming the generation and the outcome. Default: on when the
    /// environment variable `NOTIFY_SOCKET` is set when `build()` runs (it is
    /// when systemd started the process with `Type=notify` or
    /// `Type=notify-reload`), off otherwise; without `NOTIFY_SOCKET` nothing
    /// is sent either way.
    ///
    /// The first `READY=1` is the host's to send, once it serves:
    /// [`systemd::notify_ready`](crate::systemd::notify_ready). Reload
    /// notifications start only after it, so a signal during start-up
    /// cannot mark the service ready early. See [`crate::systemd`].
    ///
    /// ```
    /// let builder = verdant::Verdant::builder(()).systemd(false); // even under systemd
    /// ```
    pub fn systemd(mut self, notify: bool) -> Self {
        self.systemd = Some(notify);
        self
    }

    #[cfg(test)]
    pub(crate) fn stages(mut self, stages: Arc<dyn Stages>) -> Self {
        self.stages = stages;
        self
    }

    /// Creates the registry: its private directory and its reload and
    /// retirement threads. It also raises the process's soft limit of open
    /// descriptors to the hard limit (once per process): every version kept
    /// mapped holds one descriptor open for good.
    ///
    /// ```
    /// let verdant = verdant::Verdant::builder(()).build()?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn build(mut self) -> Result<Verdant, Error> {
        let mut names = BTreeSet::new();
        for entry in &self.entries {
            if !names.insert(entry.name.clone()) {
                return Err(Error::DuplicateName { name: entry.name.to_string() });
            }
        }
        assign_groups(&mut self.entries, &self.groups)?;
        assign_mounts(&mut self.entries, &self.mounts)?;
        let mut entries: Vec<Arc<Entry>> = self.entries.into_iter().map(Arc::new).collect();
        if let Some(path) = &self.manifest {
            let manifest = Manifest::load(path)?;
            entries = manifest_diff::diff(&entries, &manifest).entries;
        }
        crate::loader::raise_open_file_limit();
        let private_dir = PrivateDir::create(self.private_dir.as_deref()).map_err(|e| Error::PrivateDir {
            path: self.private_dir.clone().unwrap_or_else(std::env::temp_dir),
            source: Arc::new(e),
        })?;
        let retirement =
            Retirement::start().map_err(|e| Error::Worker { what: "retirement", reason: e.to_string() })?;
        let coordinator = Arc::new(Coordinator::default());
        let current_runtime = tokio::runtime::Handle::try_current().ok();
        let panics = Arc::new(PanicSink::new(self.on_panic));
        let systemd = self.systemd.unwrap_or_else(crate::systemd::under_systemd);
        let inner = Arc::new_cyclic(|inner: &Weak<Inner>| Inner {
            metrics: Metrics::new(inner.clone()),
            last_reload: Mutex::new(None),
            context: self.context,
            context_fingerprint: self.context_fingerprint,
            strict: self.strict,
            attach_timeout: self.attach_timeout,
            explicit_runtime: self.runtime,
            last_runtime: Mutex::new(current_runtime),
            private_dir,
            retained: Arc::default(),
            stages: self.stages,
            entries: RwLock::new(entries),
            manifest: self.manifest,
            removed: Mutex::new(Vec::new()),
            transaction: Mutex::new(()),
            generation: AtomicU64::new(0),
            revoked: AtomicBool::new(false),
            retirement,
            stuck: Arc::new(StuckAttaches::default()),
            coordinator: coordinator.clone(),
            sigpipe: Arc::new(SigpipeCounters::default()),
            sigpipe_listener: Mutex::new(None),
            listeners: Mutex::new(Vec::new()),
            panics,
            systemd,
        });
        inner.panics.set_registry(Arc::downgrade(&inner));
        trigger::start_worker(coordinator, Arc::downgrade(&inner))
            .map_err(|e| Error::Worker { what: "reload", reason: e.to_string() })?;
        Ok(Verdant { inner })
    }
}

/// One loadable's part of `status()`.
fn loadable_status(entry: &Entry, mappings: &Mappings) -> LoadableStatus {
    LoadableStatus {
        name: entry.name.to_string(),
        path: entry.path.clone(),
        interface: entry.interface,
        mount: entry.mount.as_deref().map(str::to_owned),
        group: entry.group.as_deref().map(str::to_owned),
        current: entry.ops.current().map(|meta| meta.info.clone()),
        failure: entry.ops.failure().map(|failure| (*failure).clone()),
        retired: entry.with_retired(|retired| {
            retired
                .iter()
                .map(|retired| RetiredStatus {
                    version: retired.meta.info.clone(),
                    reason: retired.reason,
                    retired_at: *retired.meta.retired_at.lock(),
                    in_flight: retired.in_flight(),
                    tasks_running: retired.meta.tasks_running(),
                    detach: retired.meta.detach.lock().clone(),
                    mapped: mappings.bytes(&retired.meta.copy) > 0,
                    mapped_bytes: mappings.bytes(&retired.meta.copy),
                    copy: retired.meta.copy.clone(),
                })
                .collect()
        }),
    }
}

/// Logs each failed loadable of `report` once, at ERROR, with the loadable,
/// step, file and cause as fields, and what keeps serving.
fn log_failures(report: &ReloadReport) {
    for loadable in &report.loadables {
        let Outcome::Failed(error) = &loadable.outcome else { continue };
        let consequence = match (&loadable.group, &loadable.serving) {
            (Some(group), Some(_)) => format!("no member of group `{group}` is swapped in; they keep what they had"),
            (Some(group), None) => format!("no member of group `{group}` is swapped in; this loadable is not serving"),
            (None, Some(serving)) => format!("{serving} keeps serving"),
            (None, None) => "this loadable is not serving".to_owned(),
        };
        tracing::error!(
            generation = report.generation,
            loadable = %error.loadable,
            step = %error.step,
            path = %error.path.display(),
            cause = %error.kind,
            "{} #{} failed to load `{}`; {consequence}",
            report.trigger.verb(),
            report.generation,
            error.loadable
        );
    }
}

/// How many removed loadables whose versions all finished `status()` keeps
/// showing (those with a version still pinned or awaiting detach are
/// always shown).
const FINISHED_REMOVED_KEPT: usize = 8;

/// Drops the oldest removed loadables whose versions all finished beyond
/// [`FINISHED_REMOVED_KEPT`], so the list stays bounded.
fn prune_removed(removed: &mut Vec<Arc<Entry>>) {
    let finished = |entry: &Arc<Entry>| entry.with_retired(|retired| retired.iter().all(|r| r.is_finished()));
    let mut excess = removed.iter().filter(|e| finished(e)).count().saturating_sub(FINISHED_REMOVED_KEPT);
    removed.retain(|entry| {
        if excess > 0 && finished(entry) {
            excess -= 1;
            false
        } else {
            true
        }
    });
}

/// Sets `Entry::mount` from the builder's `mount` calls.
fn assign_mounts(entries: &mut [Entry], mounts: &[(String, String)]) -> Result<(), Error> {
    for (name, mount) in mounts {
        crate::manifest::check_mount(mount).map_err(|reason| Error::InvalidMount {
            name: name.clone(),
            mount: mount.clone(),
            reason,
        })?;
        let Some(at) = entries.iter().position(|e| &*e.name == name.as_str()) else {
            let registered = entries.iter().map(|e| e.name.to_string()).collect();
            return Err(Error::UnknownLoadable { name: name.clone(), registered });
        };
        entries[at].mount = Some(Arc::from(mount.as_str()));
    }
    Ok(())
}

/// Sets `Entry::group` from the builder's `group` calls, refusing unknown
/// members, a loadable in two groups, and a group name given twice.
fn assign_groups(entries: &mut [Entry], groups: &[(Arc<str>, Vec<String>)]) -> Result<(), Error> {
    for (at, (group, members)) in groups.iter().enumerate() {
        if groups[..at].iter().any(|(earlier, _)| earlier == group) {
            return Err(Error::DuplicateGroup { group: group.to_string() });
        }
        for member in members {
            let Some(entry) = entries.iter().position(|e| &*e.name == member.as_str()) else {
                return Err(Error::UnknownGroupMember {
                    group: group.to_string(),
                    name: member.clone(),
                    registered: entries.iter().map(|e| e.name.to_string()).collect(),
                });
            };
            let entry = &mut entries[entry];
            match &entry.group {
                Some(first) if first != group => {
                    return Err(Error::GroupConflict {
                        name: member.clone(),
                        first: first.to_string(),
                        second: group.to_string(),
                    })
                }
                _ => {
                    entry.group = Some(group.clone());
                    entry.code_group = Some(group.clone());
                }
            }
        }
    }
    Ok(())
}

/// The reload supervisor: a registry of loadables sharing one context.
///
/// Cheap to clone (all clones are the same registry). See the crate docs for
/// the life cycle and [`Builder`] for settings. Dropping the last clone
/// stops the reload worker and the SIGPIPE listener but does not revoke:
/// handles keep serving their last version. Call [`revoke`](Self::revoke)
/// to detach everything.
///
/// ```no_run
/// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
/// # struct ShopContext;
/// # async fn run() -> Result<(), Box<dyn std::error::Error>> {
/// use verdant::Verdant;
/// let verdant = Verdant::builder(ShopContext)
///     .add::<dyn Shop>("shop", "target/debug/libshop_lib.so")
///     .build()?;
/// verdant.attach()?;
/// let shop = verdant.handle::<dyn Shop>("shop")?;
/// println!("{}", shop.get()?.hello("you"));
/// verdant.reload_on_sigpipe()?;          // kill -PIPE <pid>
/// verdant.reload(Some("shop")).await?;   // or from code
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct Verdant {
    inner: Arc<Inner>,
}

pub(crate) struct Inner {
    pub(crate) context: Arc<dyn Any + Send + Sync>,
    pub(crate) context_fingerprint: Fingerprint,
    /// `Builder::strict`: failures are returned as errors.
    pub(crate) strict: bool,
    attach_timeout: Duration,
    /// `Builder::runtime`: always wins.
    explicit_runtime: Option<tokio::runtime::Handle>,
    /// The runtime `build`, `attach` or `reload` was last called from.
    last_runtime: Mutex<Option<tokio::runtime::Handle>>,
    pub(crate) private_dir: PrivateDir,
    /// The copies of versions retired for good, still mapped
    /// (`status().retained`).
    pub(crate) retained: Arc<Retained>,
    pub(crate) stages: Arc<dyn Stages>,
    entries: RwLock<Vec<Arc<Entry>>>,
    /// `Builder::manifest`: read again by every reload.
    manifest: Option<PathBuf>,
    /// Loadables the manifest removed, for `status()` (bounded, see
    /// `prune_removed`).
    removed: Mutex<Vec<Arc<Entry>>>,
    /// Held for the whole of every transaction; never by readers.
    transaction: Mutex<()>,
    pub(crate) generation: AtomicU64,
    pub(crate) revoked: AtomicBool,
    pub(crate) retirement: Retirement,
    stuck: Arc<StuckAttaches>,
    coordinator: Arc<Coordinator>,
    sigpipe: Arc<SigpipeCounters>,
    sigpipe_listener: Mutex<Option<sigpipe::Listener>>,
    /// Told after every change of what serves (see [`ChangeListener`]).
    listeners: Mutex<Vec<Weak<dyn ChangeListener>>>,
    /// The registry's Prometheus metrics.
    metrics: Metrics,
    /// The last transaction's result (`finish`).
    last_reload: Mutex<Option<LastReload>>,
    /// Where the panic reports of every version go (`Builder::on_panic`).
    pub(crate) panics: Arc<PanicSink>,
    /// `Builder::systemd`: signal-triggered reloads notify systemd.
    pub(crate) systemd: bool,
}

/// Something that derives state from what serves (the HTTP pipeline) and
/// must rebuild it after every transaction, revocation or manifest change,
/// before the call that made the change returns.
pub(crate) trait ChangeListener: Send + Sync {
    /// What serves changed; `inner` is the registry.
    fn changed(&self, inner: &Inner);
}

impl Verdant {
    /// Starts configuring a registry whose loadables attach with `context`.
    ///
    /// ```
    /// struct ShopContext { currency: &'static str }
    /// let builder = verdant::Verdant::builder(ShopContext { currency: "EUR" });
    /// ```
    pub fn builder<C: Send + Sync + 'static>(context: C) -> Builder {
        Builder {
            context: Arc::new(context),
            context_fingerprint: Fingerprint::of::<C>("context"),
            strict: !cfg!(debug_assertions),
            private_dir: None,
            attach_timeout: DEFAULT_ATTACH_TIMEOUT,
            runtime: None,
            entries: Vec::new(),
            groups: Vec::new(),
            mounts: Vec::new(),
            manifest: None,
            stages: Arc::new(System),
            on_panic: None,
            systemd: None,
        }
    }

    /// Registers another loadable at run time; [`attach`](Self::attach)
    /// loads it. A duplicate name is refused.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Cart: Send + Sync { fn size(&self) -> usize; }
    /// # let verdant = verdant::Verdant::builder(()).build()?;
    /// verdant.add::<dyn Cart>("cart", "target/debug/libcart.so")?;
    /// verdant.attach()?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn add<I: Interface + ?Sized>(&self, name: &str, path: impl Into<PathBuf>) -> Result<(), Error> {
        self.inner.check_not_revoked()?;
        let mut entries = self.inner.entries.write();
        if entries.iter().any(|e| &*e.name == name) {
            return Err(Error::DuplicateName { name: name.to_owned() });
        }
        entries.push(Arc::new(Entry::new::<I>(name, path.into())));
        Ok(())
    }

    /// A handle to loadable `name`, which must have been added with
    /// interface `I`. Works before `attach` (its `get()` fails until then).
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
    /// # let verdant = verdant::Verdant::builder(()).add::<dyn Shop>("shop", "x.so").build()?;
    /// let shop = verdant.handle::<dyn Shop>("shop")?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn handle<I: Interface + ?Sized>(&self, name: &str) -> Result<Handle<I>, Error> {
        let entry = self.inner.entry(name)?;
        entry.ops.set_registry(Arc::downgrade(&self.inner));
        match entry.slot.clone().downcast::<Slot<I>>() {
            Ok(slot) => Ok(Handle::new(slot)),
            Err(_) => Err(Error::WrongInterface {
                name: name.to_owned(),
                requested: std::any::type_name::<I>(),
                actual: entry.interface,
            }),
        }
    }

    /// Loads and attaches every loadable that is not attached yet, each on
    /// its own (the members of a [group](Builder::group) together): every
    /// loadable that can attach serves, whatever the others do. A loadable
    /// that failed stays unattached (its handle's `get()` answers
    /// [`HandleError::AttachFailed`](crate::HandleError::AttachFailed) with
    /// the step and the cause), and the next `attach` or reload tries it
    /// again.
    /// Repeated calls with nothing new to attach do nothing and return an
    /// empty report.
    ///
    /// The result depends on [strict mode](Builder::strict): outside it,
    /// `Ok(report)` even when some loadables failed (each failure is logged
    /// at ERROR; [`ReloadReport::failures`] lists them); in strict mode any
    /// failure is an [`Error::Reload`] whose report shows what did attach.
    ///
    /// Blocking: it runs attach hooks (up to the attach time limit). Call it
    /// before serving, or from `tokio::task::spawn_blocking`.
    ///
    /// ```no_run
    /// # let verdant = verdant::Verdant::builder(()).build()?;
    /// let report = verdant.attach()?;
    /// println!("{report}");
    /// for (name, error) in report.failures() {
    ///     eprintln!("{name} is not serving: {error}");
    /// }
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn attach(&self) -> Result<ReloadReport, Error> {
        self.inner.remember_runtime();
        let _transaction = self.inner.transaction.lock();
        self.inner.check_not_revoked()?;
        let targets: Vec<Arc<Entry>> =
            self.inner.entries.read().iter().filter(|e| !e.dormant && e.ops.current().is_none()).cloned().collect();
        if targets.is_empty() {
            return Ok(self.inner.empty_report(Trigger::Attach));
        }
        let started = Instant::now();
        // Until the attach has returned (`loader::hold_background`).
        let _held = crate::loader::hold_background();
        let result = transaction::run(&self.inner, &targets, Mode::Attach, Trigger::Attach, 1);
        self.inner.finish(Trigger::Attach, started, &result);
        self.inner.notify_changed();
        result
    }

    /// Reloads the selected loadables: `None` for all, `Some("shop")`, a
    /// glob like `"shop-*"`, or a [`Filter`](crate::Filter). Selecting a
    /// member of a [group](Builder::group) selects the whole group.
    ///
    /// Make-before-break, loadable by loadable: each one (each group as a
    /// whole) is loaded, checked, attached and swapped in on its own; one
    /// that fails keeps serving its previous version (or stays unattached)
    /// and blocks no other. A loadable whose file did not change is reported
    /// `Unchanged`. The whole reload has one generation number. Reloads are
    /// serialised; calls that arrive while one runs are coalesced into one
    /// follow-up reload, whose result they all get.
    ///
    /// Outside [strict mode](Builder::strict) it returns `Ok(report)` even
    /// when some loadables failed (each failure is logged at ERROR; see
    /// [`ReloadReport::failures`]); in strict mode any failure is an
    /// [`Error::Reload`] whose report shows what was swapped in all the
    /// same. A filter that matches nothing fails in strict mode and returns
    /// an empty report (with a warning) otherwise. Dropping the future does
    /// not cancel the reload: it was queued when first polled.
    ///
    /// ```no_run
    /// # async fn f(verdant: verdant::Verdant) -> Result<(), verdant::Error> {
    /// let report = verdant.reload(Some("shop")).await?;
    /// println!("{report}");
    /// # Ok(()) }
    /// ```
    pub async fn reload(&self, select: impl Into<Select>) -> Result<ReloadReport, Error> {
        self.inner.remember_runtime();
        let names = match self.inner.select(&select.into())? {
            Some(names) => names,
            None => return Ok(self.inner.empty_report(Trigger::Call)),
        };
        let (sender, receiver) = tokio::sync::oneshot::channel();
        self.inner.coordinator.submit(Request { names, trigger: Trigger::Call, waiter: Waiter::Async(sender) });
        receiver
            .await
            .map_err(|_| Error::Worker { what: "reload", reason: "it stopped before answering".to_owned() })?
    }

    /// [`reload`](Self::reload), blocking the calling thread until done.
    ///
    /// When no reload runs or waits, the calling thread runs this one
    /// itself instead of handing it to the registry's reload thread (the
    /// attach hooks still run on their own thread); calls and signals that
    /// arrive meanwhile are coalesced into one follow-up reload as usual.
    ///
    /// ```no_run
    /// # let verdant = verdant::Verdant::builder(()).build()?;
    /// verdant.reload_blocking(None)?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn reload_blocking(&self, select: impl Into<Select>) -> Result<ReloadReport, Error> {
        self.inner.remember_runtime();
        let names = match self.inner.select(&select.into())? {
            Some(names) => names,
            None => return Ok(self.inner.empty_report(Trigger::Call)),
        };
        // Nothing runs or waits: this thread runs the transaction itself
        // (`trigger.rs`), without waking the reload thread and being woken.
        if let Some(_running) = self.inner.coordinator.run_here()? {
            let _held = crate::loader::hold_background();
            return self.inner.run_reload(&names.into_iter().collect(), Trigger::Call, 1);
        }
        let (sender, receiver) = mpsc::sync_channel(1);
        self.inner.coordinator.submit(Request { names, trigger: Trigger::Call, waiter: Waiter::Blocking(sender) });
        receiver
            .recv()
            .map_err(|_| Error::Worker { what: "reload", reason: "it stopped before answering".to_owned() })?
    }

    /// Reloads every loadable when another process sends SIGPIPE
    /// (`kill -PIPE <pid>`); SIGPIPEs this process raises itself (broken
    /// pipes) are counted and ignored. Every signal is followed by a reload
    /// that starts after it arrived, however many broken pipes arrive with
    /// it; signals that arrive together share one reload. Idempotent; stops
    /// when the registry is dropped or revoked.
    ///
    /// ```no_run
    /// # let verdant = verdant::Verdant::builder(()).build()?;
    /// verdant.reload_on_sigpipe()?;
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn reload_on_sigpipe(&self) -> Result<(), Error> {
        self.inner.check_not_revoked()?;
        let mut listener = self.inner.sigpipe_listener.lock();
        if listener.is_none() {
            *listener = Some(
                sigpipe::listen(Arc::downgrade(&self.inner), self.inner.sigpipe.clone())
                    .map_err(|e| Error::Signal { source: Arc::new(e) })?,
            );
        }
        Ok(())
    }

    /// Detaches every loadable and makes the registry and all its handles
    /// inactive: `get()` returns `Revoked`, reloads fail. Calls in flight
    /// finish on their pinned versions, whose detach hooks run after them.
    /// A reload waiting on an attach hook finishes first (at most the attach
    /// time limit), swaps nothing more, and returns [`Error::Revoked`];
    /// what it swapped in before is revoked with the rest.
    ///
    /// ```no_run
    /// # let verdant = verdant::Verdant::builder(()).build()?;
    /// verdant.revoke();
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn revoke(&self) {
        self.inner.revoked.store(true, Ordering::Release);
        self.inner.sigpipe_listener.lock().take();
        let _transaction = self.inner.transaction.lock();
        for entry in self.inner.entries.read().iter() {
            if let Some(retired) = entry.ops.revoke() {
                entry.record_retired(retired);
            }
        }
        self.inner.notify_changed();
        tracing::info!("verdant registry revoked");
    }

    /// A snapshot of every loadable's serving and retired versions.
    ///
    /// ```no_run
    /// # let verdant = verdant::Verdant::builder(()).build()?;
    /// println!("{}", verdant.status());
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn status(&self) -> Status {
        let mappings = Mappings::read();
        let loadables = self.inner.entries.read().iter().map(|entry| loadable_status(entry, &mappings)).collect();
        let removed = {
            let mut removed = self.inner.removed.lock();
            prune_removed(&mut removed);
            removed.iter().map(|entry| loadable_status(entry, &mappings)).collect()
        };
        Status {
            retained: self.inner.retained.summary(mappings.all()),
            generation: self.inner.generation.load(Ordering::Acquire),
            revoked: self.inner.revoked.load(Ordering::Acquire),
            strict: self.inner.strict,
            private_dir: self.inner.private_dir.path().to_owned(),
            loadables,
            removed,
            stuck_attaches: self.inner.stuck.snapshot(),
            late_attaches: self.inner.stuck.late(),
            sigpipe: self.inner.sigpipe.stats(),
            last_reload: self.inner.last_reload.lock().clone(),
        }
    }

    /// The registry's metrics in the Prometheus text exposition format
    /// (serve it with the `Content-Type` [`METRICS_CONTENT_TYPE`](crate::METRICS_CONTENT_TYPE)),
    /// for a host that has a metrics endpoint of its own; the admin router
    /// ([`axum::admin`](crate::axum::admin)) serves it as `GET /metrics`.
    /// The metrics and what they mean:
    ///
    /// | metric | type | meaning |
    /// |---|---|---|
    /// | `verdant_reloads_total{result="success\|failure"}` | counter | transactions: attaches, reload calls, signals; a manifest that does not validate is a failure |
    /// | `verdant_last_reload_successful` | gauge | 1 if the last one applied every loadable it selected, else 0 (1 before the first) |
    /// | `verdant_last_reload_success_timestamp_seconds` | gauge | when the last successful one ended, in seconds since the Unix epoch (0: never) |
    /// | `verdant_reload_duration_seconds` | histogram | how long each took, reading the manifest included |
    /// | `verdant_generation` | gauge | the generation of the last transaction started |
    /// | `verdant_requests_in_flight{loadable,version,generation}` | gauge | calls and requests still running on a retired version ([`RetiredStatus::in_flight`]) |
    /// | `verdant_retired_versions` | gauge | loaded versions that do not serve (replaced, removed, rolled back, or whose attach failed) and are still mapped |
    /// | `verdant_retired_mapped_bytes` | gauge | the address space those libraries still take |
    /// | `verdant_retained_versions` | gauge | versions retired for good (detached, nothing of theirs running) that stay mapped for the life of the process ([`Status::retained`](crate::Status::retained)) |
    /// | `verdant_retained_resident_bytes` | gauge | the resident memory (RSS) of their mappings |
    /// | `verdant_retained_file_bytes` | gauge | the space their private copies take on the private directory's filesystem (RAM on a tmpfs) |
    /// | `verdant_library_panics_total{loadable}` | counter | panics in library code that the host contained and saw |
    /// | `verdant_sigpipe_ignored_total` | counter | SIGPIPEs this process raised itself (broken pipes), ignored |
    ///
    /// Every registry has metrics of its own; nothing is process-global.
    ///
    /// ```
    /// let verdant = verdant::Verdant::builder(()).build()?;
    /// let text = verdant.metrics_text();
    /// assert!(text.contains("verdant_reloads_total{result=\"failure\"} 0"));
    /// assert!(text.contains("verdant_generation 0"));
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn metrics_text(&self) -> String {
        self.inner.metrics.encode()
    }

    /// The registered loadable names, in registration order.
    ///
    /// ```
    /// let verdant = verdant::Verdant::builder(()).build()?;
    /// assert!(verdant.names().is_empty());
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn names(&self) -> Vec<String> {
        self.inner.names()
    }

    /// The private directory holding library copies: this registry's own,
    /// locked while it lives (see [`Builder::private_dir`]).
    ///
    /// ```
    /// let verdant = verdant::Verdant::builder(()).build()?;
    /// assert!(verdant.private_dir().is_dir());
    /// # Ok::<(), verdant::Error>(())
    /// ```
    pub fn private_dir(&self) -> &Path {
        self.inner.private_dir.path()
    }

    pub(crate) fn inner(&self) -> &Arc<Inner> {
        &self.inner
    }
}

impl std::fmt::Debug for Verdant {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Verdant").field("loadables", &self.names()).finish_non_exhaustive()
    }
}

impl Inner {
    fn names(&self) -> Vec<String> {
        self.entries.read().iter().map(|e| e.name.to_string()).collect()
    }

    fn entry(&self, name: &str) -> Result<Arc<Entry>, Error> {
        self.entries
            .read()
            .iter()
            .find(|e| &*e.name == name)
            .cloned()
            .ok_or_else(|| Error::UnknownLoadable { name: name.to_owned(), registered: self.names() })
    }

    fn check_not_revoked(&self) -> Result<(), Error> {
        if self.revoked.load(Ordering::Acquire) {
            Err(Error::Revoked)
        } else {
            Ok(())
        }
    }

    fn remember_runtime(&self) {
        if self.explicit_runtime.is_none() {
            if let Ok(runtime) = tokio::runtime::Handle::try_current() {
                *self.last_runtime.lock() = Some(runtime);
            }
        }
    }

    pub(crate) fn attach_env(&self) -> AttachEnv {
        AttachEnv {
            context: self.context.clone(),
            runtime: self.explicit_runtime.clone().or_else(|| self.last_runtime.lock().clone()),
            timeout: self.attach_timeout,
            stuck: self.stuck.clone(),
            panics: self.panics.clone(),
        }
    }

    fn empty_report(&self, trigger: Trigger) -> ReloadReport {
        ReloadReport {
            generation: self.generation.load(Ordering::Acquire),
            trigger,
            coalesced: 1,
            loadables: Vec::new(),
            duration: Duration::ZERO,
        }
    }

    /// The names `select` picks; `None` when it picks nothing outside strict
    /// mode.
    fn select(&self, select: &Select) -> Result<Option<Vec<Arc<str>>>, Error> {
        self.check_not_revoked()?;
        let filter = select.resolve()?;
        let names: Vec<Arc<str>> = self
            .entries
            .read()
            .iter()
            .filter(|e| filter.as_ref().is_none_or(|f| f.matches(&e.name)))
            .map(|e| e.name.clone())
            .collect();
        if names.is_empty() {
            let shown = filter.map_or_else(|| "<all>".to_owned(), |f| f.to_string());
            if self.strict {
                return Err(Error::NoMatch { filter: shown, registered: self.names() });
            }
            tracing::warn!(filter = %shown, registered = ?self.names(), "reload filter matches no loadable; nothing to do");
            return Ok(None);
        }
        Ok(Some(names))
    }

    /// Queues a reload of everything without waiting (signals); `queued`
    /// runs once it is queued and before it can start (see
    /// `Coordinator::submit_then`).
    pub(crate) fn trigger_all(&self, trigger: Trigger, queued: impl FnOnce()) {
        let names = self.entries.read().iter().map(|e| e.name.clone()).collect();
        self.coordinator.submit_then(Request { names, trigger, waiter: Waiter::Nobody }, queued);
    }

    /// Runs one reload transaction over `names` (the worker's job).
    pub(crate) fn run_reload(
        &self,
        names: &BTreeSet<Arc<str>>,
        trigger: Trigger,
        coalesced: usize,
    ) -> Result<ReloadReport, Error> {
        let _transaction = self.transaction.lock();
        self.check_not_revoked()?;
        let started = Instant::now();
        let touched = match self.apply_manifest() {
            Ok(touched) => touched,
            Err(error) => {
                let result = Err(error);
                self.finish(trigger, started, &result);
                return result;
            }
        };
        let entries = self.entries.read().clone();
        let selected = |e: &Entry| !e.dormant && (names.contains(&e.name) || touched.contains(&e.name));
        // A group is reloaded as a whole: selecting a member selects it.
        let groups: BTreeSet<&Arc<str>> =
            entries.iter().filter(|e| selected(e)).filter_map(|e| e.group.as_ref()).collect();
        let targets: Vec<Arc<Entry>> = entries
            .iter()
            .filter(|e| selected(e) || (!e.dormant && e.group.as_ref().is_some_and(|g| groups.contains(g))))
            .cloned()
            .collect();
        let result = transaction::run(self, &targets, Mode::Reload, trigger, coalesced);
        self.finish(trigger, started, &result);
        self.notify_changed();
        result
    }

    /// Where every transaction ends (attach, reload call, signal; a
    /// manifest that does not validate too): logs its result once (each
    /// failed loadable at ERROR with its step and cause and what keeps
    /// serving, then the report at INFO without the causes again; a
    /// manifest error at ERROR), records why each failed loadable is not
    /// serving, counts it in the metrics and keeps it as the last reload.
    /// Call before `notify_changed`, so that what is rebuilt then sees the
    /// failures.
    fn finish(&self, trigger: Trigger, started: Instant, result: &Result<ReloadReport, Error>) {
        let (report, error) = match result {
            Ok(report) => (Some(report), None),
            Err(Error::Reload(failure)) => (Some(&failure.report), None),
            // Revoked meanwhile: nothing is served any more, nothing to tell.
            Err(Error::Revoked) => return,
            Err(error) => (None, Some(error)),
        };
        let finished_at = SystemTime::now();
        let success = error.is_none() && report.is_some_and(ReloadReport::is_success);
        if let Some(report) = report {
            self.record_failures(report, finished_at);
            if success {
                tracing::info!("{}", report.to_string().trim_end());
            } else {
                log_failures(report);
                tracing::info!("{}", report.overview().trim_end());
            }
        }
        if let Some(error) = error {
            tracing::error!(%error, "{} failed", trigger.verb());
        }
        self.metrics.reloaded(success, started.elapsed(), finished_at);
        *self.last_reload.lock() =
            Some(LastReload { trigger, finished_at, success, report: report.cloned(), error: error.cloned() });
    }

    /// Records, for every loadable of `report`, why its newest build is not
    /// serving (its own failure, or that of the member of its group that
    /// failed), or clears it when it was applied.
    fn record_failures(&self, report: &ReloadReport, failed_at: SystemTime) {
        let entries = self.entries.read().clone();
        for loadable in &report.loadables {
            let Some(entry) = entries.iter().find(|e| *e.name == loadable.name) else { continue };
            let failure = |error: &crate::StepError, own: bool| {
                Some(Arc::new(LoadableFailure { generation: report.generation, failed_at, error: error.clone(), own }))
            };
            let failure = match &loadable.outcome {
                Outcome::Swapped { .. } | Outcome::Unchanged { .. } => None,
                Outcome::Failed(error) => failure(error, true),
                Outcome::RolledBack { .. } | Outcome::NotReached => report
                    .loadables
                    .iter()
                    .filter(|other| other.group.is_some() && other.group == loadable.group)
                    .find_map(|other| match &other.outcome {
                        Outcome::Failed(error) => failure(error, false),
                        _ => None,
                    }),
            };
            entry.ops.set_failure(failure);
        }
    }

    /// Counts a panic in `loadable`'s library code that the host contained
    /// (`verdant_library_panics_total`). Call it wherever host code sees
    /// one: a request answered 500, an `Err(Panicked)` delivered, a panic
    /// re-raised and caught.
    pub(crate) fn count_library_panic(&self, loadable: &str) {
        self.metrics.library_panic(loadable);
    }

    /// What the metrics read at scrape time.
    pub(crate) fn gauges(&self) -> Gauges {
        let mappings = Mappings::read();
        let mut entries = self.entries.read().clone();
        entries.extend(self.removed.lock().iter().cloned());
        let mut serving = BTreeSet::new();
        // A dormant loadable and its removed entry share their retired
        // versions: keyed by loadable and generation, each counts once.
        let mut in_flight = BTreeMap::new();
        for entry in &entries {
            if let Some(current) = entry.ops.current() {
                serving.insert(current.copy.clone());
            }
            entry.with_retired(|retired| {
                for retired in retired.iter().filter(|r| !r.is_finished()) {
                    let info = &retired.meta.info;
                    in_flight.insert(
                        (entry.name.to_string(), info.generation),
                        (info.package_version.clone(), retired.in_flight()),
                    );
                }
            });
        }
        let (mut retired_versions, mut retired_mapped_bytes) = (0, 0);
        for (copy, bytes) in mappings.under(self.private_dir.path()) {
            if !serving.contains(copy) {
                retired_versions += 1;
                retired_mapped_bytes += bytes;
            }
        }
        Gauges {
            retained: self.retained.summary(mappings.all()),
            generation: self.generation.load(Ordering::Acquire),
            in_flight: in_flight
                .into_iter()
                .map(|((loadable, generation), (version, count))| (loadable, version, generation, count))
                .collect(),
            retired_versions,
            retired_mapped_bytes,
            sigpipe_ignored: self.sigpipe.stats().ignored_self_sent,
        }
    }

    /// Reads the manifest again and applies it (call with the transaction
    /// lock held): the new entry list replaces the old one in one store,
    /// then the removed entries are revoked. Returns the names that must be
    /// reloaded whatever was selected. A manifest that does not parse or
    /// validate changes nothing.
    fn apply_manifest(&self) -> Result<BTreeSet<Arc<str>>, Error> {
        let Some(path) = &self.manifest else { return Ok(BTreeSet::new()) };
        let manifest = Manifest::load(path)?;
        let diff = manifest_diff::diff(&self.entries.read(), &manifest);
        for entry in diff.entries.iter().filter(|e| diff.touched.contains(&e.name)) {
            // Listed again after a removal: it may serve once loaded.
            entry.ops.reinstate();
        }
        *self.entries.write() = diff.entries;
        for entry in &diff.removed {
            if let Some(mut retired) = entry.ops.revoke() {
                retired.reason = RetireReason::Removed;
                entry.record_retired(retired);
            }
            tracing::info!(loadable = %entry.name, manifest = %path.display(), "removed: the manifest no longer lists it");
        }
        let mut removed = self.removed.lock();
        removed.extend(diff.removed);
        prune_removed(&mut removed);
        Ok(diff.touched)
    }

    /// The registered loadables, in order.
    pub(crate) fn entries(&self) -> Vec<Arc<Entry>> {
        self.entries.read().clone()
    }

    /// Registers `listener`; it is told of every later change until it is
    /// dropped.
    pub(crate) fn subscribe(&self, listener: Weak<dyn ChangeListener>) {
        self.listeners.lock().push(listener);
    }

    /// Tells every live listener that what serves changed.
    pub(crate) fn notify_changed(&self) {
        let listeners: Vec<Arc<dyn ChangeListener>> = {
            let mut list = self.listeners.lock();
            list.retain(|listener| listener.strong_count() > 0);
            list.iter().filter_map(Weak::upgrade).collect()
        };
        for listener in listeners {
            listener.changed(self);
        }
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.coordinator.shutdown();
        self.sigpipe_listener.get_mut().take();
    }
}
