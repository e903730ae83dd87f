//! A registered loadable: its name, path and typed slot, behind a
//! type-erased face the transaction can drive.

use std::any::Any;
use std::collections::BTreeMap;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::time::SystemTime;

use parking_lot::Mutex;

use crate::attach::{self, AttachEnv};
use crate::descriptor::{self, Fingerprint};
use crate::error::LoadError;
use crate::handle::Slot;
use crate::loader::LoadedLibrary;
use crate::panic_report;
use crate::pin_cache::PinCells;
use crate::runtime_watch::RuntimeWatch;
use crate::status::{LoadableFailure, RetireReason};
use crate::version::{DetachState, LibraryKeepAlive, Retirement, Version, VersionMeta};
use crate::Interface;
use verdant_loadable::http::{ExtensionContext, HttpExtension};

/// A loadable as the registry keeps it.
pub(crate) struct Entry {
    pub name: Arc<str>,
    pub path: PathBuf,
    pub interface: &'static str,
    /// `Arc<Slot<I>>` of the interface given to `add`.
    pub slot: Arc<dyn Any + Send + Sync>,
    pub ops: Arc<dyn EntryOps>,
    /// Where the HTTP pipeline serves its routes (`/shop`), if anywhere.
    pub mount: Option<Arc<str>>,
    /// The settings of its manifest entry (an HTTP extension's attach hook
    /// gets them in its [`ExtensionContext`]).
    pub settings: BTreeMap<String, String>,
    /// Whether the manifest configures it (its path, mount, settings and
    /// group follow the manifest, and leaving the manifest removes it).
    pub from_manifest: bool,
    /// A typed loadable the manifest no longer lists: revoked, kept
    /// registered (code still holds its handles), and out of every reload
    /// and of the HTTP pipeline until the manifest lists it again.
    pub dormant: bool,
    /// Its attach context changed (mount or settings of an HTTP extension):
    /// the next transaction re-attaches it even if its file is unchanged.
    pub reattach: AtomicBool,
    /// The context its attach hook gets instead of the registry's: an
    /// [`ExtensionContext`] for every `dyn HttpExtension`.
    pub context: Option<EntryContext>,
    /// The group it belongs to (`Builder::group`), if any. A transaction
    /// derives its units from this field each time it runs: the members of
    /// one group among its targets form one all-or-nothing unit, and every
    /// ungrouped loadable is a unit of its own.
    pub group: Option<Arc<str>>,
    /// The group `Builder::group` gave it: kept when the manifest configures
    /// it without a group of its own.
    pub code_group: Option<Arc<str>>,
    /// Versions that stopped serving, oldest first (see `record_retired`);
    /// shared with the entries it is [reconfigured](Entry::reconfigured) into.
    retired: Arc<Mutex<Vec<Retired>>>,
}

/// How the manifest configures an entry.
pub(crate) struct Config<'a> {
    pub path: &'a std::path::Path,
    pub mount: Option<&'a str>,
    pub settings: &'a BTreeMap<String, String>,
    pub group: Option<&'a str>,
}

/// A context of an entry's own.
#[derive(Clone)]
pub(crate) struct EntryContext {
    pub value: Arc<dyn Any + Send + Sync>,
    pub fingerprint: Fingerprint,
}

impl EntryContext {
    fn extension(context: ExtensionContext) -> Self {
        EntryContext { value: Arc::new(context), fingerprint: Fingerprint::of::<ExtensionContext>("context") }
    }
}

/// How many finished (unpinned and detached) retired versions `status()`
/// keeps per loadable; versions still pinned or awaiting detach are always
/// kept, so a service that reloads for months does not grow this list.
const FINISHED_RETIRED_KEPT: usize = 32;

impl Entry {
    pub(crate) fn new<I: Interface + ?Sized>(name: &str, path: PathBuf) -> Entry {
        let name: Arc<str> = Arc::from(name);
        let slot = Arc::new(Slot::<I>::new(name.clone()));
        let context = is_extension::<I>()
            .then(|| EntryContext::extension(ExtensionContext::new(&*name, None, Default::default())));
        Entry {
            name,
            path,
            interface: std::any::type_name::<I>(),
            slot: slot.clone(),
            ops: Arc::new(TypedOps { slot }),
            mount: None,
            settings: BTreeMap::new(),
            from_manifest: false,
            dormant: false,
            reattach: AtomicBool::new(false),
            context,
            group: None,
            code_group: None,
            retired: Arc::default(),
        }
    }

    /// The same loadable (same slot, versions and retired list: handles
    /// keep working) as the manifest entry `config` configures it, and
    /// whether anything changed. A changed mount or settings of an HTTP
    /// extension marks it for re-attaching.
    pub(crate) fn reconfigured(&self, config: &Config<'_>) -> (Entry, bool) {
        let mount = config.mount.map(Arc::from);
        let group = config.group.map(Arc::from).or_else(|| self.code_group.clone());
        let context_changed = self.context.is_some() && (mount != self.mount || *config.settings != self.settings);
        let changed = context_changed
            || config.path != self.path
            || mount != self.mount
            || group != self.group
            || !self.from_manifest
            || self.dormant;
        let context = self.context.as_ref().map(|_| {
            EntryContext::extension(ExtensionContext::new(
                &*self.name,
                config.mount.map(str::to_owned),
                config.settings.clone(),
            ))
        });
        let entry = Entry {
            name: self.name.clone(),
            path: config.path.to_owned(),
            interface: self.interface,
            slot: self.slot.clone(),
            ops: self.ops.clone(),
            mount,
            settings: config.settings.clone(),
            from_manifest: true,
            dormant: false,
            reattach: AtomicBool::new(context_changed || self.reattach.load(Ordering::Acquire)),
            context,
            group,
            code_group: self.code_group.clone(),
            retired: self.retired.clone(),
        };
        (entry, changed)
    }

    /// The same loadable, dormant: the manifest no longer lists it.
    pub(crate) fn dormant(&self) -> Entry {
        Entry {
            name: self.name.clone(),
            path: self.path.clone(),
            interface: self.interface,
            slot: self.slot.clone(),
            ops: self.ops.clone(),
            mount: None,
            settings: BTreeMap::new(),
            from_manifest: false,
            dormant: true,
            reattach: AtomicBool::new(false),
            context: self.context.clone(),
            group: None,
            code_group: self.code_group.clone(),
            retired: self.retired.clone(),
        }
    }

    /// Whether it is an HTTP extension (`dyn HttpExtension`), which the
    /// manifest alone creates and removes.
    pub(crate) fn is_extension(&self) -> bool {
        self.context.is_some()
    }

    /// The fingerprint of the context its attach hook gets.
    pub(crate) fn context_fingerprint(&self, registry: Fingerprint) -> Fingerprint {
        self.context.as_ref().map_or(registry, |context| context.fingerprint)
    }
}

/// Whether `I` is the standard HTTP extension interface.
fn is_extension<I: Interface + ?Sized>() -> bool {
    std::any::TypeId::of::<I>() == std::any::TypeId::of::<dyn HttpExtension>()
}

impl Entry {
    /// Remembers a version that stopped serving, dropping the oldest
    /// finished ones beyond [`FINISHED_RETIRED_KEPT`].
    pub(crate) fn record_retired(&self, retired: Retired) {
        let mut list = self.retired.lock();
        list.push(retired);
        let finished = |r: &Retired| r.is_finished();
        let mut excess = list.iter().filter(|r| finished(r)).count().saturating_sub(FINISHED_RETIRED_KEPT);
        list.retain(|r| {
            if excess > 0 && finished(r) {
                excess -= 1;
                false
            } else {
                true
            }
        });
    }

    /// Calls `f` on every remembered retired version, oldest first.
    pub(crate) fn with_retired<R>(&self, f: impl FnOnce(&[Retired]) -> R) -> R {
        f(&self.retired.lock())
    }
}

/// A version that stopped serving (or never did: rolled back).
pub(crate) struct Retired {
    pub meta: Arc<VersionMeta>,
    /// The version itself, alive while calls still pin it.
    pub pins: Weak<dyn Any + Send + Sync>,
    pub reason: RetireReason,
    /// Its slot's per-thread caches: one of them holding it is one strong
    /// reference, whatever its pins.
    pub cells: Arc<PinCells>,
}

impl Retired {
    /// Calls and requests still running on it: its strong references, less
    /// those that serve it ([`VersionMeta::serving_pins`]), with each
    /// per-thread cache holding it counted as the pins made on it rather
    /// than once ([`PinCells::cached_pins`]). Exact when no pin comes or
    /// goes meanwhile; a pin racing with it may be counted though gone.
    pub(crate) fn in_flight(&self) -> usize {
        let Some(version) = self.pins.upgrade() else { return 0 };
        // The upgrade keeps the address from being reused while the caches
        // are searched for it.
        let (holders, cached) = self.cells.cached_pins(Arc::as_ptr(&version).cast::<()>());
        // Less the upgrade's reference.
        let strong = Arc::strong_count(&version) - 1;
        (strong + cached).saturating_sub(holders + self.meta.serving_pins.load(Ordering::Acquire))
    }

    /// Unpinned and detached (or its detach failed): nothing will change.
    pub(crate) fn is_finished(&self) -> bool {
        self.pins.strong_count() == 0 && *self.meta.detach.lock() != DetachState::Pending
    }
}

/// The typed operations of an entry.
pub(crate) trait EntryOps: Send + Sync {
    /// The fingerprints a library must match for this entry.
    fn expected(&self, context: Fingerprint) -> Vec<Fingerprint>;
    /// Attaches a checked library; the result serves once committed.
    fn attach(
        &self,
        library: Arc<LoadedLibrary>,
        meta: Arc<VersionMeta>,
        env: &AttachEnv,
        retirement: &Retirement,
    ) -> Result<Box<dyn Prepared>, LoadError>;
    /// The serving version's bookkeeping.
    fn current(&self) -> Option<Arc<VersionMeta>>;
    /// Stops serving (revoke): the slot becomes empty and refuses pins.
    fn revoke(&self) -> Option<Retired>;
    /// Undoes [`revoke`](Self::revoke)'s refusal: the slot may serve again
    /// once a new version is committed (the manifest lists it again).
    fn reinstate(&self);
    /// Why its newest build is not serving, if it failed last.
    fn failure(&self) -> Option<Arc<LoadableFailure>>;
    /// Records (or, `None`, clears) why its newest build is not serving.
    fn set_failure(&self, failure: Option<Arc<LoadableFailure>>);
    /// Points its handles at the registry (see `Slot::registry`).
    fn set_registry(&self, registry: Weak<crate::registry::Inner>);
}

/// An attached version waiting for the transaction to commit. Dropping it
/// uncommitted detaches the instance (rollback).
pub(crate) trait Prepared: Send {
    fn meta(&self) -> &Arc<VersionMeta>;
    /// Swaps the version in and returns the one it replaced.
    fn commit(self: Box<Self>) -> Option<Retired>;
    /// Drops the version uncommitted (its instance detaches) and returns it
    /// as a retired version, for `status()`.
    fn roll_back(self: Box<Self>) -> Retired;
}

struct TypedOps<I: Interface + ?Sized> {
    slot: Arc<Slot<I>>,
}

impl<I: Interface + ?Sized> EntryOps for TypedOps<I> {
    fn expected(&self, context: Fingerprint) -> Vec<Fingerprint> {
        descriptor::fingerprints::<I>(context).to_vec()
    }

    fn attach(
        &self,
        library: Arc<LoadedLibrary>,
        meta: Arc<VersionMeta>,
        env: &AttachEnv,
        retirement: &Retirement,
    ) -> Result<Box<dyn Prepared>, LoadError> {
        let watch = RuntimeWatch::start(env.runtime.as_ref());
        let runtime_gone = watch.gone();
        let keep_alive = Arc::new(LibraryKeepAlive::new(library.clone(), retirement.clone(), watch));
        let _ = meta.library.set(Arc::downgrade(&keep_alive));
        let panic_hook = panic_report::hook_for(env.panics.clone(), self.slot.name.clone(), meta.info.clone());
        let instance =
            attach::attach::<I>(&library, env, &self.slot.name, keep_alive.clone(), runtime_gone, panic_hook.clone())?;
        let version =
            Version::new(instance, library, keep_alive, meta, retirement.clone(), self.slot.name.clone(), panic_hook);
        Ok(Box::new(PreparedVersion { slot: self.slot.clone(), version }))
    }

    fn current(&self) -> Option<Arc<VersionMeta>> {
        self.slot.current.load().as_ref().map(|version| version.meta().clone())
    }

    fn revoke(&self) -> Option<Retired> {
        self.slot.revoked.store(true, std::sync::atomic::Ordering::Release);
        self.slot.store(None).map(|old| retire(old, RetireReason::Revoked, &self.slot.cells))
    }

    fn reinstate(&self) {
        self.slot.revoked.store(false, std::sync::atomic::Ordering::Release);
    }

    fn failure(&self) -> Option<Arc<LoadableFailure>> {
        self.slot.failure.lock().clone()
    }

    fn set_failure(&self, failure: Option<Arc<LoadableFailure>>) {
        *self.slot.failure.lock() = failure;
    }

    fn set_registry(&self, registry: Weak<crate::registry::Inner>) {
        let _ = self.slot.registry.set(registry);
    }
}

struct PreparedVersion<I: Interface + ?Sized> {
    slot: Arc<Slot<I>>,
    version: Arc<Version<I>>,
}

impl<I: Interface + ?Sized> Prepared for PreparedVersion<I> {
    fn meta(&self) -> &Arc<VersionMeta> {
        self.version.meta()
    }

    fn commit(self: Box<Self>) -> Option<Retired> {
        // From here on the old version's strong count counts its pins (see
        // `Slot::store`), plus ours.
        self.slot.store(Some(self.version)).map(|old| retire(old, RetireReason::Replaced, &self.slot.cells))
    }

    fn roll_back(self: Box<Self>) -> Retired {
        retire(self.version, RetireReason::RolledBack, &self.slot.cells)
    }
}

/// Marks `old` retired and lets go of the slot's reference: if no call pins
/// it, it is detached right away (on the retirement thread).
fn retire<I: Interface + ?Sized>(old: Arc<Version<I>>, reason: RetireReason, cells: &Arc<PinCells>) -> Retired {
    *old.meta().retired_at.lock() = Some(SystemTime::now());
    let meta = old.meta().clone();
    let pins: Weak<dyn Any + Send + Sync> = Arc::downgrade(&old) as Weak<dyn Any + Send + Sync>;
    drop(old);
    Retired { meta, pins, reason, cells: cells.clone() }
}
