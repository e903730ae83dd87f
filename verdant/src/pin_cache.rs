//! The per-thread cache behind [`Handle::get`](crate::Handle::get).
//!
//! `get()` used to pin through `ArcSwapOption::load`, whose debt slot costs
//! an atomic swap (a full barrier) per call: 9.3 ns with the call, against
//! 1.6 ns for an `Arc<dyn Trait>`. Here each thread keeps, per slot it uses,
//! one strong reference to the version it last got, and pins it by bumping a
//! counter only it writes; a reload makes the cached references stale and
//! takes back those of idle threads itself.
//!
//! # Invariants
//!
//! 1. **No new call gets a retired version.** Every store to any slot
//!    (commit, revoke, drop of the slot) bumps [`EPOCH`] after the slot holds
//!    its new value, then runs a process-wide memory barrier
//!    (`membarrier(MEMBARRIER_CMD_PRIVATE_EXPEDITED)`: every thread of the
//!    process executes a full fence, or is between two of its time slices,
//!    before it returns), and only then returns. An entry is used only while
//!    its `epoch` equals `EPOCH`. So once the store returned, every thread's
//!    next `EPOCH` load sees the bump and takes the slow path, which loads
//!    the slot itself. `get()` after `reload()` returned never serves the old
//!    version, on any thread.
//! 2. **A retired version is dropped once its last call is done** (its
//!    detach hook runs then), even if the thread that cached it never calls
//!    `get()` again. An entry's cached reference is released by whichever
//!    comes first: the reloader (step 3 below) when the entry has no pin in
//!    flight; the owner thread when it drops its last pin and sees the epoch
//!    moved; another thread dropping the last pin (a `Pinned` moved across
//!    an `.await`), once the barrier of that epoch is done; the owner's next
//!    `get()`; the owner's exit.
//! 3. **The fast path has no hardware barrier.** The owner's pin is a plain
//!    store of its counter (`pins`), a compiler fence, then a load of
//!    `EPOCH`; the unpin is a plain store, a compiler fence, a load of
//!    `EPOCH`. The reloader pays instead: bump `EPOCH`, `membarrier`, then
//!    read the counters. The barrier lands on the owner either before its
//!    `EPOCH` load (which then sees the bump: the owner goes to the slow
//!    path, or releases the entry itself) or after it (then the counter
//!    store before that load is visible to the reloader, which leaves a
//!    pinned entry alone and releases an idle one). This is the asymmetric
//!    fence of RCU's `membarrier` flavour and of folly's hazard pointers.
//! 4. **Only the owner fills an entry; others only empty it**, with a
//!    compare-and-swap of `state`, a tag that every fill changes: whoever
//!    swaps the full state for empty owns the reference and releases it,
//!    exactly once. A thief that read a counter of an earlier fill fails its
//!    swap.
//! 5. **Counting pins dropped elsewhere.** `Pinned` is `Send`; a pin dropped
//!    on another thread adds one to `foreign` (an atomic add, only then);
//!    the pins in flight on an entry are `pins - foreign`. Entries live in
//!    nodes that are never freed (a thread that exits gives its node back
//!    for the next thread), so a pin can always reach its entry.
//!
//! Without `membarrier` (Linux before 4.14, or a seccomp filter that refuses
//! it) there is no cache: every `get()` takes the slow path, an owned
//! strong reference through arc-swap, as before.
//!
//! # Costs
//!
//! - A thread keeps the versions it cached while they serve; after a reload
//!   (of any slot: the epoch is global) its next `get()` of each slot it
//!   uses takes the slow path once, and an idle thread loses its cache.
//! - A reload pays one `membarrier` (about 1 µs here; an IPI to each CPU
//!   running a thread of the process) and a walk over every thread's node.
//! - `status()`'s `in_flight` counts strong references: an entry with calls
//!   in flight counts once however many it has.
//! - A node is 512 bytes per thread that ever called `get()` at the same
//!   time as others, never freed.

use std::cell::Cell;
use std::ptr::NonNull;
use std::sync::atomic::{compiler_fence, AtomicBool, AtomicPtr, AtomicU64, AtomicU8, AtomicUsize, Ordering};
use std::sync::{Mutex, PoisonError};

/// Bumped after every store to any slot; an entry filled at epoch `e` may
/// be used while `EPOCH == e`.
static EPOCH: AtomicU64 = AtomicU64::new(1);

/// The highest epoch whose bump was followed by a finished `membarrier`:
/// an entry filled before it has its owner's pins visible to everyone.
static BARRIER_EPOCH: AtomicU64 = AtomicU64::new(0);

/// Every node ever made; a node whose thread exited is free for the next.
static NODES: Mutex<Vec<&'static Node>> = Mutex::new(Vec::new());

/// Slots get process-wide ids, never reused (0: no slot).
static SLOT_IDS: AtomicU64 = AtomicU64::new(1);

/// Whether the cache is on: `membarrier` registered (see [`enabled`]).
static STATE: AtomicU8 = AtomicU8::new(UNKNOWN);
const UNKNOWN: u8 = 0;
const ON: u8 = 1;
const OFF: u8 = 2;

/// Entries per node; slot `id` uses entry `id % ENTRIES`.
const ENTRIES: usize = 8;

/// `state`: the fill's tag shifted left by one, and the low bit set while
/// the entry holds a reference.
const FULL: u64 = 1;

/// A new slot's id.
pub(crate) fn slot_id() -> u64 {
    SLOT_IDS.fetch_add(1, Ordering::Relaxed)
}

/// One cached version of one slot, in one thread's node. One cache line:
/// the owner writes it on every pin, no other thread reads it then.
#[repr(align(64))]
pub(crate) struct Entry {
    /// Tag and `FULL`; see invariant 4.
    state: AtomicU64,
    /// The slot cached (owner only).
    slot: AtomicU64,
    /// `EPOCH` when filled (owner only).
    epoch: AtomicU64,
    /// `Arc::into_raw` of the cached `Arc<Version<I>>` (owner only).
    version: AtomicPtr<()>,
    /// Drops `version` as the `Arc` it is (owner only).
    release: AtomicPtr<()>,
    /// Pins made minus pins dropped on the owner thread (owner only).
    pins: AtomicUsize,
    /// Pins dropped on other threads.
    foreign: AtomicUsize,
}

impl Entry {
    const fn new() -> Entry {
        Entry {
            state: AtomicU64::new(0),
            slot: AtomicU64::new(0),
            epoch: AtomicU64::new(0),
            version: AtomicPtr::new(std::ptr::null_mut()),
            release: AtomicPtr::new(std::ptr::null_mut()),
            pins: AtomicUsize::new(0),
            foreign: AtomicUsize::new(0),
        }
    }

    fn in_flight(&self) -> usize {
        self.pins.load(Ordering::SeqCst).wrapping_sub(self.foreign.load(Ordering::SeqCst))
    }

    /// Empties a full entry whose pins are all dropped, and releases its
    /// reference; `stale` decides from the fill's epoch. The caller is the
    /// owner, or proved that the owner's pins are visible to it (see
    /// invariant 3).
    fn take_if_idle(&self, stale: impl Fn(u64) -> bool) -> Option<Taken> {
        let state = self.state.load(Ordering::Acquire);
        if state & FULL == 0 || !stale(self.epoch.load(Ordering::Relaxed)) || self.in_flight() != 0 {
            return None;
        }
        let taken =
            Taken { version: self.version.load(Ordering::Relaxed), release: self.release.load(Ordering::Relaxed) };
        // Fails if the owner refilled it (a new tag) or someone took it.
        self.state.compare_exchange(state, state & !FULL, Ordering::AcqRel, Ordering::Relaxed).ok().map(|_| taken)
    }
}

/// A reference taken out of an entry, released when dropped.
struct Taken {
    version: *mut (),
    release: *mut (),
}

impl Drop for Taken {
    fn drop(&mut self) {
        // SAFETY: `release` is the `release::<I>` that the fill stored with
        // this `version` (both read under one tag: invariant 4), and the one
        // strong reference it stands for was taken out of the entry exactly
        // once, by whoever emptied the state.
        unsafe {
            let release: unsafe fn(*mut ()) = std::mem::transmute(self.release);
            release(self.version);
        }
    }
}

/// A thread's entries.
struct Node {
    entries: [Entry; ENTRIES],
    /// Whether a live thread owns it (changed under `NODES`' lock).
    owned: AtomicBool,
}

/// This thread's node; its drop gives the node back.
struct Local(Cell<Option<&'static Node>>);

impl Drop for Local {
    fn drop(&mut self) {
        let Some(node) = self.0.take() else { return };
        // Pins still in flight elsewhere keep their entry; the next reload
        // or their last drop empties it.
        let taken: Vec<Taken> = node.entries.iter().filter_map(|entry| entry.take_if_idle(|_| true)).collect();
        let _nodes = NODES.lock().unwrap_or_else(PoisonError::into_inner);
        node.owned.store(false, Ordering::Relaxed);
        drop(_nodes);
        drop(taken);
    }
}

thread_local! {
    static LOCAL: Local = const { Local(Cell::new(None)) };
}

/// Whether the cache can be used: `membarrier` is registered (once per
/// process).
fn enabled() -> bool {
    match STATE.load(Ordering::SeqCst) {
        ON => true,
        OFF => false,
        _ => {
            let on = membarrier::register();
            if !on {
                tracing::info!("membarrier is not available: Handle::get pins through arc-swap alone");
            }
            // SeqCst: before this thread's first fill reads the epoch, and
            // against `retire`'s load of it (see there).
            STATE.store(if on { ON } else { OFF }, Ordering::SeqCst);
            on
        }
    }
}

/// This thread's node, made or adopted on first use; `None` while the
/// thread's locals are being destroyed or when the cache is off.
fn node() -> Option<&'static Node> {
    LOCAL
        .try_with(|local| {
            if let Some(node) = local.0.get() {
                return Some(node);
            }
            if !enabled() {
                return None;
            }
            let mut nodes = NODES.lock().unwrap_or_else(PoisonError::into_inner);
            let node = match nodes.iter().find(|node| !node.owned.load(Ordering::Relaxed)) {
                Some(node) => *node,
                None => {
                    // Never freed: pins and reloaders reach entries without
                    // a lock (invariant 5).
                    let node: &'static Node = Box::leak(Box::new(Node {
                        entries: [const { Entry::new() }; ENTRIES],
                        owned: AtomicBool::new(false),
                    }));
                    nodes.push(node);
                    node
                }
            };
            node.owned.store(true, Ordering::Relaxed);
            local.0.set(Some(node));
            Some(node)
        })
        .ok()
        .flatten()
}

/// The fast path: pins `slot`'s cached version on this thread's entry.
#[inline]
pub(crate) fn pin(slot: u64) -> Option<(&'static Entry, NonNull<()>)> {
    let node = LOCAL.try_with(|local| local.0.get()).ok()??;
    let entry = &node.entries[slot as usize % ENTRIES];
    if entry.slot.load(Ordering::Relaxed) != slot || entry.state.load(Ordering::Relaxed) & FULL == 0 {
        return None;
    }
    let pins = entry.pins.load(Ordering::Relaxed);
    entry.pins.store(pins.wrapping_add(1), Ordering::Relaxed);
    // Invariant 3: the pin is visible before the epoch is read, on this
    // CPU's side by this fence, on the reloader's by its membarrier.
    compiler_fence(Ordering::SeqCst);
    if EPOCH.load(Ordering::Acquire) != entry.epoch.load(Ordering::Relaxed) {
        entry.pins.store(pins, Ordering::Relaxed);
        return None;
    }
    // Non-null while full; only the owner (this thread) fills it.
    let version = NonNull::new(entry.version.load(Ordering::Relaxed))?;
    Some((entry, version))
}

/// Drops a pin made by [`pin`] (on any thread).
#[inline]
pub(crate) fn unpin(entry: &'static Entry) {
    let owner = LOCAL
        .try_with(|local| {
            local.0.get().is_some_and(|node| node.entries.as_ptr_range().contains(&(entry as *const Entry)))
        })
        .unwrap_or(false);
    if owner {
        let pins = entry.pins.load(Ordering::Relaxed);
        entry.pins.store(pins.wrapping_sub(1), Ordering::Release);
        compiler_fence(Ordering::SeqCst);
        if EPOCH.load(Ordering::Relaxed) != entry.epoch.load(Ordering::Relaxed) {
            release_stale(entry);
        }
    } else {
        unpin_foreign(entry);
    }
}

/// The owner's last pin of a stale entry is gone: release it now, so an
/// idle thread keeps no retired version (invariant 2).
#[cold]
fn release_stale(entry: &Entry) {
    drop(entry.take_if_idle(|epoch| epoch != EPOCH.load(Ordering::SeqCst)));
}

/// A pin dropped on another thread than its entry's owner.
#[cold]
fn unpin_foreign(entry: &Entry) {
    entry.foreign.fetch_add(1, Ordering::SeqCst);
    // The owner's pins are known complete only once the barrier after the
    // bump that made the entry stale is done; before that, the reloader's
    // walk (which reads `foreign` after publishing the barrier) covers it.
    drop(entry.take_if_idle(|epoch| BARRIER_EPOCH.load(Ordering::SeqCst) > epoch));
}

/// What [`load`] got.
pub(crate) enum Loaded {
    /// The slot's version, cached in this thread's entry and pinned there.
    Pinned(&'static Entry, NonNull<()>),
    /// The slot's version, not cached (the cache is off, or this thread's
    /// entry is pinned on another fill): one strong reference, the
    /// caller's.
    Owned(NonNull<()>),
    /// The slot holds no version.
    Empty,
}

/// The slow path of `get()`: `load`s the slot (`Arc::into_raw` of a new
/// strong reference of its `Arc<Version<I>>`, which `release` drops again),
/// caches it in this thread's entry for `slot` if that entry has no pin in
/// flight, and pins it.
pub(crate) fn load(slot: u64, load: impl Fn() -> Option<NonNull<()>>, release: unsafe fn(*mut ())) -> Loaded {
    let owned = |version: Option<NonNull<()>>| version.map_or(Loaded::Empty, Loaded::Owned);
    // The node first: making the first one turns the cache on, which must
    // come before the epoch is read (see `retire`).
    let Some(node) = node() else { return owned(load()) };
    let entry = &node.entries[slot as usize % ENTRIES];
    if entry.in_flight() != 0 {
        // Pinned on its current fill (maybe another slot's): leave it.
        return owned(load());
    }
    // The epoch before the slot: a reload in between leaves a fill that is
    // stale at once, never one that looks fresh and is not.
    let epoch = EPOCH.load(Ordering::SeqCst);
    let Some(version) = load() else { return Loaded::Empty };
    // Empty the entry (unless a thief did) and release the old fill.
    let state = entry.state.swap(entry.state.load(Ordering::Relaxed) & !FULL, Ordering::AcqRel);
    if state & FULL != 0 {
        drop(Taken { version: entry.version.load(Ordering::Relaxed), release: entry.release.load(Ordering::Relaxed) });
    }
    entry.slot.store(slot, Ordering::Relaxed);
    entry.epoch.store(epoch, Ordering::Relaxed);
    entry.version.store(version.as_ptr(), Ordering::Relaxed);
    entry.release.store(release as *mut (), Ordering::Relaxed);
    let tag = (state >> 1).wrapping_add(1);
    entry.state.store(tag << 1 | FULL, Ordering::Release);
    match pin(slot) {
        Some((entry, version)) => Loaded::Pinned(entry, version),
        None => {
            // A reload came between the epoch read and now. If its walk
            // missed this fill, `pin`'s epoch load saw the bump (invariant
            // 3): the fill is released here, and the slot loaded again.
            release_stale(entry);
            owned(load())
        }
    }
}

/// After a store to `slot`: bumps the epoch, waits for the barrier, and
/// releases every idle entry of `slot` (invariants 1 to 3).
pub(crate) fn retire(slot: u64) {
    let epoch = EPOCH.fetch_add(1, Ordering::SeqCst) + 1;
    // The cache turns on (SeqCst) before the first fill reads the epoch
    // (SeqCst): either that read sees this bump, so the fill is fresh, or
    // this load sees the cache on.
    if STATE.load(Ordering::SeqCst) != ON {
        return;
    }
    membarrier::run();
    BARRIER_EPOCH.fetch_max(epoch, Ordering::SeqCst);
    let taken: Vec<Taken> = {
        let nodes = NODES.lock().unwrap_or_else(PoisonError::into_inner);
        nodes
            .iter()
            .flat_map(|node| node.entries.iter())
            .filter(|entry| entry.slot.load(Ordering::Relaxed) == slot)
            .filter_map(|entry| entry.take_if_idle(|filled| filled < epoch))
            .collect()
    };
    // Released outside the lock: a last reference detaches its version
    // (which only queues the detach, but takes no chances).
    drop(taken);
}

/// `membarrier(2)`, private expedited.
mod membarrier {
    const CMD_PRIVATE_EXPEDITED: libc::c_int = 1 << 3;
    const CMD_REGISTER_PRIVATE_EXPEDITED: libc::c_int = 1 << 4;

    fn call(cmd: libc::c_int) -> libc::c_long {
        // SAFETY: membarrier takes no pointers; an unknown or refused
        // command returns -1 (ENOSYS, EINVAL, EPERM).
        unsafe { libc::syscall(libc::SYS_membarrier, cmd, 0 as libc::c_uint, 0 as libc::c_int) }
    }

    /// Registers the process for private expedited barriers; whether it can
    /// use them.
    pub(super) fn register() -> bool {
        call(CMD_REGISTER_PRIVATE_EXPEDITED) == 0
    }

    /// A full memory barrier on every running thread of this process.
    pub(super) fn run() {
        if call(CMD_PRIVATE_EXPEDITED) != 0 {
            // Registered, so this cannot fail; were it to, readers could
            // serve a retired version, which is worse than stopping.
            panic!("membarrier failed after registration: {}", std::io::Error::last_os_error());
        }
    }
}
