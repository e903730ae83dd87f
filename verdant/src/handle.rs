//! Proxy handles: how callers reach the serving version of a loadable.
//!
//! The hot path is [`Handle::get`]: this thread's cell for the slot
//! (`pin_cache.rs`, found through a const thread-local table), a plain
//! increment of a counter only this thread writes, a compiler fence, and a
//! check that the cell's cached version is still the slot's current one. It
//! takes no lock, executes no atomic read-modify-write, writes no cache line
//! another core writes, and never waits for a reload. A reload builds the new
//! version completely before [`Slot::store`] swaps it in; the store then runs
//! a process-wide barrier (`membarrier`) and takes back the caches' references
//! to the old version, so that no `get()` after it returned serves the old
//! version and a thread that never calls again keeps nothing alive. The slow
//! path (a thread's first call, the first after a reload, a thread whose
//! cell still has pins on an older version) pins through
//! `ArcSwapOption::load_full`. `status()` stays exact: a cache holding a
//! retired version counts as the pins made on it (`Retired::in_flight`).
//! Measured alternatives on this machine (issue #2): `Arc<dyn Trait>`
//! 1.8 ns, `ArcSwap::load` 12 ns, read lock + `Arc` clone 21 ns,
//! hot-lib-reloader's RwLock + `dlsym` per call 50 ns; a plain `Arc` clone
//! per call would bounce the reference count between cores.

use std::fmt;
use std::ops::Deref;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock, Weak};

use arc_swap::ArcSwapOption;
use parking_lot::Mutex;

use crate::error::HandleError;
use crate::pin_cache::{self, PinCell, PinCells, Repointed};
use crate::registry::Inner;
use crate::status::LoadableFailure;
use crate::version::{Version, VersionMeta};
use crate::Interface;

/// The current version of one loadable, shared by the registry and handles.
pub(crate) struct Slot<I: Interface + ?Sized> {
    pub(crate) name: Arc<str>,
    /// The serving version. Written only by [`Slot::store`], which keeps
    /// `cells` in step.
    pub(crate) current: ArcSwapOption<Version<I>>,
    /// The per-thread caches of `current` (`pin_cache`); shared with the
    /// retired versions, whose `in_flight` counts their pins.
    pub(crate) cells: Arc<PinCells>,
    pub(crate) revoked: AtomicBool,
    /// Why its newest build is not serving (read only when `get` fails).
    pub(crate) failure: Mutex<Option<Arc<LoadableFailure>>>,
    /// The registry, for what host code notices about the loadable (a
    /// contained panic, for the metrics); set when a handle is handed out.
    pub(crate) registry: OnceLock<Weak<Inner>>,
}

impl<I: Interface + ?Sized> Slot<I> {
    /// Stores `new` and returns the version it replaced. When it returns,
    /// no `get()` on any thread gets the old version any more, and no
    /// thread's cache holds it unless a pin of that cache is still in flight
    /// ([`PinCells::store`]). `swap` itself returns only after every reader
    /// that loaded the old version through an arc-swap debt slot has had its
    /// debt paid, so from here on the old version's strong count is its
    /// owned pins, plus one per cache holding it (whose pins
    /// [`PinCells::cached_pins`] counts), plus ours.
    pub(crate) fn store(&self, new: Option<Arc<Version<I>>>) -> Option<Arc<Version<I>>> {
        let current = new.as_ref().map_or(std::ptr::null(), |version| Arc::as_ptr(version).cast::<()>());
        let old = self.current.swap(new);
        self.cells.store(current);
        old
    }

    pub(crate) fn new(name: Arc<str>) -> Self {
        Slot {
            name,
            current: ArcSwapOption::empty(),
            cells: Arc::new(PinCells::new(pin_cache::slot_id(), release::<I>)),
            revoked: AtomicBool::new(false),
            failure: Mutex::new(None),
            registry: OnceLock::new(),
        }
    }
}

impl<I: Interface + ?Sized> Drop for Slot<I> {
    fn drop(&mut self) {
        // No cache may keep the last version of a dropped slot (its detach
        // would never run): idle ones are released now, busy ones by their
        // last pin.
        self.cells.store(std::ptr::null());
    }
}

/// Drops a reference that `Arc::into_raw` turned into a pointer (a cache's,
/// or an uncached pin's).
///
/// # Safety
///
/// `version` comes from `Arc::<Version<I>>::into_raw`, and this is its one
/// release.
unsafe fn release<I: Interface + ?Sized>(version: *const ()) {
    // SAFETY: by the caller's contract.
    drop(unsafe { Arc::from_raw(version.cast::<Version<I>>()) });
}

/// A cheap, cloneable handle to a loadable's interface.
///
/// Every [`get`](Handle::get) returns the version serving *now*; the
/// returned [`Pinned`] keeps that version alive (and its detach hook from
/// running) until it is dropped, even if a reload swaps in a new one
/// meanwhile.
///
/// ```no_run
/// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
/// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
/// # let verdant = verdant::Verdant::builder(()).add::<dyn Shop>("shop", "libshop.so").build()?;
/// let shop: verdant::Handle<dyn Shop> = verdant.handle("shop")?;
/// let answer = shop.get()?.hello("you");
/// # Ok(()) }
/// ```
pub struct Handle<I: Interface + ?Sized> {
    slot: Arc<Slot<I>>,
}

impl<I: Interface + ?Sized> Handle<I> {
    pub(crate) fn new(slot: Arc<Slot<I>>) -> Self {
        Handle { slot }
    }

    /// Pins the serving version for one call or one request.
    ///
    /// Fails when the loadable is not attached yet or the registry was
    /// revoked; never because a reload is running.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let verdant = verdant::Verdant::builder(()).add::<dyn Shop>("shop", "libshop.so").build()?;
    /// # let shop = verdant.handle::<dyn Shop>("shop")?;
    /// let pinned = shop.get()?;         // a reload can't retire this version now
    /// let a = pinned.hello("a");
    /// let b = pinned.hello("b");         // same version as `a`, guaranteed
    /// # Ok(()) }
    /// ```
    #[inline]
    pub fn get(&self) -> Result<Pinned<I>, HandleError> {
        let cells = &*self.slot.cells;
        if let Some(cell) = pin_cache::cached(cells.id) {
            if let Some(version) = cell.pin(cells) {
                return Ok(Pinned::cached(cell, version));
            }
        }
        self.get_slow()
    }

    /// Loads the slot and caches its version in this thread's cell.
    #[cold]
    fn get_slow(&self) -> Result<Pinned<I>, HandleError> {
        let Some(loaded) = self.slot.current.load_full() else { return Err(self.unavailable()) };
        let cells = &*self.slot.cells;
        let Some(cell) = pin_cache::cell(cells) else { return Ok(Pinned::owned(loaded)) };
        let raw = Arc::into_raw(loaded).cast::<()>();
        match cell.repoint(cells, raw) {
            Repointed::Pinned => Ok(Pinned::cached(cell, raw)),
            // SAFETY: a busy cell leaves `raw`, from `into_raw` above, ours.
            Repointed::Busy => Ok(Pinned::owned(unsafe { Arc::from_raw(raw.cast::<Version<I>>()) })),
            // A reload came in between: this thread caches again next time.
            Repointed::Retired => match self.slot.current.load_full() {
                Some(loaded) => Ok(Pinned::owned(loaded)),
                None => Err(self.unavailable()),
            },
        }
    }

    #[cold]
    fn unavailable(&self) -> HandleError {
        let name = self.slot.name.to_string();
        if self.slot.revoked.load(Ordering::Acquire) {
            HandleError::Revoked { name }
        } else if let Some(failure) = self.slot.failure.lock().as_deref() {
            HandleError::AttachFailed { name, reason: failure.to_string() }
        } else {
            HandleError::NotAttached { name }
        }
    }

    /// The loadable's registered name.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let verdant = verdant::Verdant::builder(()).add::<dyn Shop>("shop", "libshop.so").build()?;
    /// # let shop = verdant.handle::<dyn Shop>("shop")?;
    /// assert_eq!(shop.name(), "shop");
    /// # Ok(()) }
    /// ```
    pub fn name(&self) -> &str {
        &self.slot.name
    }
}

impl<I: Interface + ?Sized> Clone for Handle<I> {
    fn clone(&self) -> Self {
        Handle { slot: self.slot.clone() }
    }
}

// A panic cannot leave a handle inconsistent: its only shared state is the
// slot, which changes by single atomic stores of complete versions.
impl<I: Interface + ?Sized> std::panic::UnwindSafe for Handle<I> {}
impl<I: Interface + ?Sized> std::panic::RefUnwindSafe for Handle<I> {}
impl<I: Interface + ?Sized> std::panic::UnwindSafe for Pinned<I> {}
impl<I: Interface + ?Sized> std::panic::RefUnwindSafe for Pinned<I> {}

impl<I: Interface + ?Sized> fmt::Debug for Handle<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Handle").field("name", &self.slot.name).field("interface", &std::any::type_name::<I>()).finish()
    }
}

/// A pinned version of a loadable; dereferences to its interface.
///
/// Hold it for the duration of one call or request. It is `Send`, so it may
/// be held across `.await`. A panic inside a method called through it is
/// caught in the library and re-raised as a host panic carrying a
/// [`LibraryPanic`](crate::boundary::LibraryPanic).
pub struct Pinned<I: Interface + ?Sized> {
    /// The pinned version: alive while this pin lives, through the cell that
    /// counts it, or through the strong reference this pin owns.
    version: Shared<Version<I>>,
    /// The cell this pin is counted on; `None`: `version` is this pin's own
    /// strong reference (`Arc::into_raw`).
    cell: Option<&'static PinCell>,
}

/// The pointer of a pin: `Send` and `Sync` when an `Arc<T>` is.
struct Shared<T: ?Sized>(NonNull<T>);

// SAFETY: a pin is a shared reference to a `T` kept alive by a reference
// count, as an `Arc<T>` is, so it may cross threads when that `Arc` may:
// `T: Send + Sync`. A pin dropped on another thread than its cell's owner is
// counted apart (`PinCell::unpin`). The bound is on `T` alone, not on
// `Interface`: `async` blocks that hold a pin are checked for every lifetime
// of `dyn Trait + '_`, and `Interface` is implemented only for `'static`.
unsafe impl<T: ?Sized + Send + Sync> Send for Shared<T> {}
// SAFETY: `&Shared<T>` gives only `&T`, as `&Arc<T>` does.
unsafe impl<T: ?Sized + Send + Sync> Sync for Shared<T> {}

impl<I: Interface + ?Sized> Drop for Pinned<I> {
    #[inline]
    fn drop(&mut self) {
        match self.cell {
            Some(cell) => cell.unpin(cell.is_owner(pin_cache::token())),
            // SAFETY: an uncached pin owns one strong reference from
            // `Arc::into_raw` (`Pinned::owned`), released here, once.
            None => unsafe { release::<I>(self.version.0.as_ptr().cast_const().cast()) },
        }
    }
}

impl<I: Interface + ?Sized> Pinned<I> {
    /// A pin counted on `cell`, whose cached version is `version`.
    #[inline(always)]
    fn cached(cell: &'static PinCell, version: *const ()) -> Self {
        // SAFETY: a cell's cached version comes from `Arc::into_raw` of an
        // `Arc<Version<I>>` of this slot, never null.
        let version = unsafe { NonNull::new_unchecked(version.cast::<Version<I>>().cast_mut()) };
        Pinned { version: Shared(version), cell: Some(cell) }
    }

    /// A pin owning a strong reference of its own.
    fn owned(version: Arc<Version<I>>) -> Self {
        // SAFETY: `into_raw` is never null.
        let version = unsafe { NonNull::new_unchecked(Arc::into_raw(version).cast_mut()) };
        Pinned { version: Shared(version), cell: None }
    }

    /// Where panics of the pinned version are reported.
    pub(crate) fn panic_hook(&self) -> &verdant_loadable::__private::PanicHook {
        self.version().panic_hook()
    }

    #[inline(always)]
    fn version(&self) -> &Version<I> {
        // SAFETY: the version lives while this pin does (see the field).
        unsafe { self.version.0.as_ref() }
    }

    /// The generation of the transaction that loaded this version.
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let verdant = verdant::Verdant::builder(()).add::<dyn Shop>("shop", "libshop.so").build()?;
    /// # let shop = verdant.handle::<dyn Shop>("shop")?;
    /// let pinned = shop.get()?;
    /// tracing::debug!(generation = pinned.generation(), "serving");
    /// # Ok(()) }
    /// ```
    pub fn generation(&self) -> u64 {
        self.version().meta().info.generation
    }

    /// The library package version serving this call (from its descriptor).
    ///
    /// ```no_run
    /// # #[verdant_loadable::interface] pub trait Shop: Send + Sync { fn hello(&self, who: &str) -> String; }
    /// # fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// # let verdant = verdant::Verdant::builder(()).add::<dyn Shop>("shop", "libshop.so").build()?;
    /// # let shop = verdant.handle::<dyn Shop>("shop")?;
    /// assert_eq!(shop.get()?.package_version(), "0.1.0");
    /// # Ok(()) }
    /// ```
    pub fn package_version(&self) -> &str {
        &self.version().meta().info.package_version
    }

    /// The version's bookkeeping.
    pub(crate) fn meta(&self) -> &Arc<VersionMeta> {
        self.version().meta()
    }
}

impl<I: Interface + ?Sized> Deref for Pinned<I> {
    type Target = I;

    #[inline]
    fn deref(&self) -> &I {
        self.version().proxy()
    }
}

impl<I: Interface + ?Sized> fmt::Debug for Pinned<I> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Pinned").field("version", &self.version().meta().info).finish()
    }
}
