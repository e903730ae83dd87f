//! Proxy handles: how callers reach the serving version of a loadable.
//!
//! The hot path is [`Handle::get`]: this thread's cached reference to the
//! slot's version, checked against the global epoch and pinned by a counter
//! only this thread writes (`pin_cache.rs`, whose invariants say why no new
//! call gets a retired version and why a cache never delays a detach). It
//! takes no lock, writes no cache line shared with other cores, and never
//! waits for a reload: a reload builds the new version completely before it
//! stores it, and the store returns only after every thread will see it.
//! The slow path (first call on a thread, after any reload, a thread whose
//! entry is busy, no `membarrier`) pins through `ArcSwapOption::load_full`.
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
use crate::pin_cache::{self, Loaded};
use crate::registry::Inner;
use crate::status::LoadableFailure;
use crate::version::{Version, VersionMeta};
use crate::Interface;

/// The current version of one loadable, shared by the registry and handles.
pub(crate) struct Slot<I: Interface + ?Sized> {
    pub(crate) name: Arc<str>,
    /// Its id in the per-thread caches, never reused.
    id: u64,
    /// Read here and by the slow path of `get`; written only by
    /// [`Slot::store`].
    pub(crate) current: ArcSwapOption<Version<I>>,
    pub(crate) revoked: AtomicBool,
    /// Why its newest build is not serving (read only when `get` fails).
    pub(crate) failure: Mutex<Option<Arc<LoadableFailure>>>,
    /// The registry, for what host code notices about the loadable (a
    /// contained panic, for the metrics); set when a handle is handed out.
    pub(crate) registry: OnceLock<Weak<Inner>>,
}

impl<I: Interface + ?Sized> Slot<I> {
    pub(crate) fn new(name: Arc<str>) -> Self {
        Slot {
            name,
            id: pin_cache::slot_id(),
            current: ArcSwapOption::empty(),
            revoked: AtomicBool::new(false),
            failure: Mutex::new(None),
            registry: OnceLock::new(),
        }
    }

    /// Stores `new` and returns the version it replaced. When it returns, no
    /// `get()` on any thread gets the old version any more, and no thread's
    /// cache holds it unless a call pinned it is still in flight
    /// (`pin_cache::retire`). `swap` itself returns only after every reader
    /// that loaded the old version through an arc-swap debt slot has had its
    /// debt paid, so from here on the old version's strong count is the
    /// number of owned pins and of caches with calls in flight (plus ours).
    pub(crate) fn store(&self, new: Option<Arc<Version<I>>>) -> Option<Arc<Version<I>>> {
        let old = self.current.swap(new);
        pin_cache::retire(self.id);
        old
    }
}

impl<I: Interface + ?Sized> Drop for Slot<I> {
    fn drop(&mut self) {
        // Caches must not keep the last version of a dropped slot (its
        // detach would never run).
        pin_cache::retire(self.id);
    }
}

/// Drops a reference that `Handle::get` turned into a raw pointer.
///
/// # Safety
///
/// `version` comes from `Arc::<Version<I>>::into_raw`, and this is its one
/// release.
unsafe fn release<I: Interface + ?Sized>(version: *mut ()) {
    // SAFETY: by the caller's contract.
    drop(unsafe { Arc::from_raw(version as *const Version<I>) });
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
        match pin_cache::pin(self.slot.id) {
            Some((entry, version)) => Ok(Pinned { version: Shared(version.cast()), entry: Some(entry) }),
            None => self.get_slow(),
        }
    }

    /// Loads the slot and caches its version for this thread.
    #[cold]
    fn get_slow(&self) -> Result<Pinned<I>, HandleError> {
        // `into_raw` is never null; the reference is released by `release::<I>`.
        let load = || {
            self.slot
                .current
                .load_full()
                .and_then(|version| NonNull::new(Arc::into_raw(version).cast_mut()))
                .map(NonNull::cast)
        };
        match pin_cache::load(self.slot.id, load, release::<I>) {
            Loaded::Pinned(entry, version) => Ok(Pinned { version: Shared(version.cast()), entry: Some(entry) }),
            Loaded::Owned(version) => Ok(Pinned { version: Shared(version.cast()), entry: None }),
            Loaded::Empty => Err(self.unavailable()),
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
    /// The pinned version: alive while this pin lives, through the cache
    /// entry that counts it, or through the strong reference this pin owns.
    version: Shared<Version<I>>,
    /// Where it is counted; `None`: `version` is this pin's own strong
    /// reference (`Arc::into_raw`).
    entry: Option<&'static pin_cache::Entry>,
}

/// The pointer of a pin: `Send` and `Sync` when an `Arc<T>` is.
struct Shared<T: ?Sized>(NonNull<T>);

// SAFETY: a pin is a shared reference to a `T` kept alive by a reference
// count, as an `Arc<T>` is, so it may cross threads when that `Arc` may:
// `T: Send + Sync`. Dropping a pin on another thread is what
// `pin_cache::unpin` counts apart (`foreign`). The bound is on `T` alone,
// not on `Interface`: `async` blocks that hold a pin are checked for every
// lifetime of `dyn Trait + '_`, and `Interface` is implemented only for
// `'static`.
unsafe impl<T: ?Sized + Send + Sync> Send for Shared<T> {}
// SAFETY: `&Shared<T>` gives only `&T`, as `&Arc<T>` does.
unsafe impl<T: ?Sized + Send + Sync> Sync for Shared<T> {}

impl<I: Interface + ?Sized> Drop for Pinned<I> {
    #[inline]
    fn drop(&mut self) {
        match self.entry {
            Some(entry) => pin_cache::unpin(entry),
            // SAFETY: an uncached pin owns one strong reference from
            // `Arc::into_raw` (`get_slow`), released here, once.
            None => unsafe { release::<I>(self.version.0.as_ptr().cast()) },
        }
    }
}

impl<I: Interface + ?Sized> Pinned<I> {
    /// Where panics of the pinned version are reported.
    pub(crate) fn panic_hook(&self) -> &verdant_loadable::__private::PanicHook {
        self.version().panic_hook()
    }

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
