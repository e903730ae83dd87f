//! The per-thread pin cache behind [`Handle::get`](crate::Handle::get).
//!
//! arc-swap's `load` pins through a debt slot: an atomic swap on the load and
//! a compare-and-swap on the drop, a locked instruction each. Here each
//! thread keeps, per slot it uses, a [`PinCell`]: one strong reference to the
//! version it last got, and counters of the pins made on it. A pin on the
//! fast path is a plain increment of a counter only this thread writes, a
//! compiler fence, and a check that the cached version is still the slot's
//! current one; its drop is a plain increment of another owner-only counter.
//! The reload pays instead: a process-wide barrier (`membarrier`), then a
//! walk over the slot's cells, which takes back the references of idle cells
//! and marks busy ones stale for their last pin to release.
//!
//! # Invariants
//!
//! 1. **A cell's pins are `acquired − released_local − released_remote`**
//!    (wrapping). `acquired` and `released_local` are written only by the
//!    cell's owner thread (a load and a store, no read-modify-write);
//!    `released_remote` only by `fetch_add`, from pins dropped on other
//!    threads (a `Pinned` is `Send`). Every counter only grows.
//! 2. **A cached version is never freed while a pin of its cell uses it.**
//!    Its strong reference is dropped only under the cell's lock, by
//!    whoever sees the cell's pins at zero *and* the version not current:
//!    the reloader's walk, the last pin's drop of a stale cell, the owner's
//!    slow path (repointing), the owner's exit, or the drop of the slot's
//!    cells.
//! 3. **No new call gets a retired version after `reload()` returned.** A
//!    fast pin increments `acquired`, runs `membarrier::light()`, then
//!    compares the cached pointer with [`PinCells::current`]; only an equal,
//!    non-null pointer is used. A store sets `current`, runs
//!    `membarrier::heavy()`, and only then reads the cells' counters. The
//!    pair is a store-buffering pattern with full fences on both sides: either
//!    the pin's `current` load sees the new value (the pin fails, undoes its
//!    increment, and takes the slow path), or the reloader's counter read
//!    sees the increment (and leaves the version alive, marking the cell
//!    stale). After the store returned, every pin's `current` load sees the
//!    new pointer. The same argument makes invariant 2 hold for the fast
//!    pin: a version the reloader saw idle is never validated afterwards.
//!    One case needs more: the cached pointer is read, then the thread
//!    stops for a while; meanwhile the cell's stale version is released
//!    (by a remote last pin), and a reload allocates the next version *at
//!    the same address* and makes it current. The compare would then pass
//!    on a cell that caches nothing, and a later reload would free that
//!    version under the pin. So the pin reads `version` again after its
//!    `Acquire` load of `current`: the release nulled `version` before the
//!    old version was freed, that is before the new one was allocated at
//!    its address and stored in `current`, so a pin that read the new
//!    `current` reads the null and fails. Loom cannot show this case (its
//!    versions never share an address); it is argued here.
//! 4. **A retired version never stays cached without a pin.** The reloader
//!    takes back idle cells' references itself; for busy ones it sets
//!    `stale`, runs `heavy()` again and re-reads their counters. A last pin
//!    dropped concurrently stores its release, runs `light()` (or does a
//!    `SeqCst` `fetch_add` on another thread), then reads `stale`: either it
//!    sees `stale` and releases the reference itself, or the reloader's
//!    re-read sees its release and takes the reference back. So a thread that
//!    never calls again does not keep a retired version from detaching.
//! 5. **A cell is never freed, but it is recycled once its slot is gone**
//!    (cells are leaked: a pin, the slot and the thread all reach one
//!    without a lock). A thread that exits gives its cells up (`owner` 0,
//!    references of idle ones released); the next thread that needs a cell
//!    of that slot adopts one, counters and all, under the cell's lock. When
//!    a slot's [`PinCells`] is dropped (its last handle, its slot and every
//!    retired record of it are gone, so no `get()` names its id again), each
//!    of its cells without pins gives its cached reference back and goes to
//!    the process-wide free list ([`FreeCells`]); a cell with pins in flight
//!    (a `Pinned` may outlive its slot) is marked `orphaned` and stale, and
//!    whoever then sees it idle under its lock (its last pin's drop, the
//!    drop's second look after `heavy()`, or its owner's exit) releases the
//!    reference and frees it: the same store-buffering pair as invariant 4,
//!    so one of them does. [`PinCells::cell_for`] takes a free cell before
//!    allocating one, so the cells ever allocated are bounded by the threads
//!    times the slots alive at once, not by the slots ever created.
//! 6. **`in_flight` is exact when nothing moves**: the strong count of a
//!    retired version counts each cell caching it once, whatever its pins;
//!    [`PinCells::cached_pins`] gives both the number of such cells and their
//!    pins, so `status()` subtracts the one and adds the other. It reads the
//!    released counters before `acquired`, so a pin racing with it is counted
//!    rather than missed.
//! 7. **A thread reaches a cell only through its own entries `(slot id,
//!    cell)`**, made when it got the cell for that slot (the table and
//!    `OWNED` below), and matches them by the entry's id, never by the
//!    cell's current slot. A cell is bound to another slot (or thread) only
//!    after it was freed (invariant 5), when its old slot's [`PinCells`] is
//!    gone: no `get()` names that id again (a handle keeps the slot, and so
//!    its `PinCells`, alive; ids are never reused), so a stale entry is never
//!    matched. A cell is freed only with no pin on it, so the owner a pin's
//!    drop reads ([`PinCell::is_owner`]) is the one it was made under. A
//!    pin's drop that runs on after its release was counted may find the
//!    cell rebound: it then only reads `stale` and, if set, does under the
//!    lock what the new binding's own last pin would do, which is sound at
//!    any time (invariant 2). A thread's exit gives up a cell only if it is
//!    still bound to the entry's id and owned by the thread (checked under
//!    the cell's lock); stale entries are pruned when a new one is added.
//!
//! # Costs
//!
//! - A store runs `membarrier` once, twice when a cell was busy (an IPI to
//!   each CPU running a thread of the process), and locks each cell of the
//!   slot once or twice.
//! - A thread whose cell has pins on a retired version (a long request
//!   across a reload) pins every new `get()` through arc-swap's
//!   `load_full` (an atomic increment) until those pins are dropped.
//! - A cell is 192 bytes, one per thread and slot alive, never given
//!   back to the allocator: an exited thread's cells serve the next threads
//!   of the slot, and a dropped slot's cells (once their pins are gone) any
//!   thread of any later slot. Dropping a slot locks each of its cells once
//!   or twice and runs `membarrier` when one of them still has pins.
//!
//! Under `--cfg verdant_loom` the fences are `SeqCst` fences (what
//! `membarrier` stands for in its formal model) and the atomics and locks are
//! loom's; `scripts/loom` runs [`model`] over every interleaving.

use std::ptr;

#[cfg(not(verdant_loom))]
use std::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

#[cfg(verdant_loom)]
use loom::sync::atomic::{AtomicBool, AtomicPtr, AtomicUsize, Ordering};

use crate::sync::{lock, Mutex};

/// The reader's side of the asymmetric fence: a compiler fence when
/// [`heavy`] makes every thread run a full fence, a full fence otherwise.
///
/// On Linux x86/x86-64 the `membarrier` crate's `heavy()` always does (the
/// `membarrier` system call, or where the kernel lacks it the crate's
/// `mprotect` trick, which it supports on every x86), and its `light()` is
/// then a compiler fence; but it decides so through a `lazy_static` on every
/// call, which is not inlined and was a quarter of the fast path's time. So
/// the compiler fence is spelled out here for those targets, and the crate
/// decides elsewhere.
#[inline(always)]
fn light() {
    #[cfg(all(not(verdant_loom), target_os = "linux", any(target_arch = "x86", target_arch = "x86_64")))]
    std::sync::atomic::compiler_fence(Ordering::SeqCst);
    #[cfg(all(not(verdant_loom), not(all(target_os = "linux", any(target_arch = "x86", target_arch = "x86_64")))))]
    membarrier::light();
    #[cfg(verdant_loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// The writer's side: a full fence on every running thread of the process.
fn heavy() {
    #[cfg(not(verdant_loom))]
    membarrier::heavy();
    #[cfg(verdant_loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// A full fence on this thread.
fn fence() {
    #[cfg(not(verdant_loom))]
    std::sync::atomic::fence(Ordering::SeqCst);
    #[cfg(verdant_loom)]
    loom::sync::atomic::fence(Ordering::SeqCst);
}

/// Drops one strong reference that `Arc::into_raw` turned into a pointer.
pub(crate) type Release = unsafe fn(*const ());

/// One thread's cache of one slot. See the module's invariants.
///
/// `repr(C)`, in this order: the remote releases on a line of their own, and
/// what the fast path touches (`acquired`, `released_local`, `version`,
/// `owner`, `stale`) together on the next one; left to itself the compiler
/// put `stale` on a third line once the binding grew.
#[repr(C)]
pub(crate) struct PinCell {
    /// Pins dropped on other threads; on a line of its own, so that they do
    /// not disturb the owner's counters.
    released_remote: Padded,
    /// Pins made (owner only: invariant 1).
    acquired: AtomicUsize,
    /// Pins dropped on the owner thread, and failed fast pins (owner only).
    released_local: AtomicUsize,
    /// The cached version (`Arc::into_raw`), or null. Changed only under
    /// `lock`.
    version: AtomicPtr<()>,
    /// The owner thread's token ([`token`]); 0 while no thread owns it.
    /// Changed only under `lock`, by the owner (to 0), an adopter, or when
    /// the cell is freed or bound (invariant 5).
    owner: AtomicUsize,
    /// The cached version stopped serving while pins were in flight: the
    /// last one releases it (invariant 4). Changed only under `lock`.
    stale: AtomicBool,
    /// Which slot the cell serves, and the slow-path changes of `version`,
    /// `stale` and `owner`.
    lock: Mutex<Binding>,
    /// The free list the cell goes back to (invariant 5; immutable).
    pool: &'static FreeCells,
}

/// What a cell serves now; under the cell's lock.
struct Binding {
    /// The slot's id; 0 while the cell is free.
    slot: u64,
    /// Drops the cached version's reference (the slot's `Release`).
    release: Release,
    /// The slot's [`PinCells`] was dropped while pins were in flight: the
    /// one that sees the cell idle frees it (invariant 5).
    orphaned: bool,
}

#[repr(align(64))]
struct Padded(AtomicUsize);

/// The cells of dropped slots, for [`PinCells::cell_for`] to take before it
/// allocates one (invariant 5), and how many cells were ever allocated.
pub(crate) struct FreeCells {
    free: Mutex<Vec<&'static PinCell>>,
    /// Cells ever allocated from this pool (a std atomic even under loom: a
    /// statistic, not part of the protocol).
    allocated: std::sync::atomic::AtomicUsize,
}

impl FreeCells {
    /// An empty pool.
    #[cfg(verdant_loom)]
    pub(crate) fn new() -> FreeCells {
        FreeCells { free: Mutex::new(Vec::new()), allocated: std::sync::atomic::AtomicUsize::new(0) }
    }

    /// How many cells were ever allocated (never goes down: cells are
    /// recycled, not freed).
    pub(crate) fn allocated(&self) -> usize {
        self.allocated.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// How many cells are free now.
    #[cfg(verdant_loom)]
    fn free(&self) -> usize {
        lock(&self.free).len()
    }
}

/// The process's pool of cells.
#[cfg(not(verdant_loom))]
static FREE_CELLS: FreeCells =
    FreeCells { free: Mutex::new(Vec::new()), allocated: std::sync::atomic::AtomicUsize::new(0) };

/// The process's pool of cells: every slot's, and what the test-only count
/// of allocated cells reads.
#[cfg(not(verdant_loom))]
pub(crate) fn free_cells() -> &'static FreeCells {
    &FREE_CELLS
}

/// A cell just freed (under its lock), pushed onto its pool when dropped,
/// after the lock.
struct Freed(&'static PinCell);

impl Drop for Freed {
    fn drop(&mut self) {
        lock(&self.0.pool.free).push(self.0);
    }
}

/// The release function of a free cell's binding: a free cell caches
/// nothing, so it is never called with a reference.
unsafe fn release_nothing(_: *const ()) {}

impl PinCell {
    /// Pins in flight (invariant 1). The released counters are read first:
    /// a pin made meanwhile is counted, one dropped meanwhile may be too,
    /// but none in flight throughout is missed.
    fn pins(&self) -> usize {
        let remote = self.released_remote.0.load(Ordering::SeqCst);
        let local = self.released_local.load(Ordering::SeqCst);
        self.acquired.load(Ordering::SeqCst).wrapping_sub(local).wrapping_sub(remote)
    }

    /// Owner only: one more pin.
    #[inline(always)]
    fn acquire(&self) {
        let acquired = self.acquired.load(Ordering::Relaxed);
        self.acquired.store(acquired.wrapping_add(1), Ordering::Relaxed);
    }

    /// Owner only: one pin less.
    #[inline(always)]
    fn release_local(&self) {
        let released = self.released_local.load(Ordering::Relaxed);
        self.released_local.store(released.wrapping_add(1), Ordering::Release);
    }

    /// The fast pin (owner only): the cached version if it is `current`.
    ///
    /// Invariant 3: the increment is published before `current` is read by
    /// this fence and the reloader's `heavy()`.
    #[inline(always)]
    pub(crate) fn pin(&self, cells: &PinCells) -> Option<*const ()> {
        self.acquire();
        light();
        let version = self.version.load(Ordering::Relaxed);
        // Acquire, and `version` read again after it (invariant 3, the
        // address reuse case): a plain `mov` each on x86.
        if !version.is_null()
            && version == cells.current.load(Ordering::Acquire)
            && version == self.version.load(Ordering::Relaxed)
        {
            return Some(version);
        }
        self.release_local();
        None
    }

    /// Drops a pin made on this cell; `owner` says whether this thread owns
    /// the cell (see [`is_owner`](Self::is_owner)). The pinned version must
    /// not be touched afterwards.
    #[inline(always)]
    pub(crate) fn unpin(&'static self, owner: bool) {
        if owner {
            self.release_local();
            light();
            if !self.stale.load(Ordering::Relaxed) {
                return;
            }
        } else if !self.unpin_remote() {
            return;
        }
        self.release_if_stale();
    }

    /// A pin dropped on another thread; whether the cell is stale.
    ///
    /// The fence makes the add and the load the store-buffering half that
    /// invariant 4 needs against the reloader's `stale` store and `heavy()`.
    /// (A `SeqCst` read-modify-write already is a full fence on x86; loom
    /// models `SeqCst` accesses as acquire-release only, so the fence is
    /// spelled out.)
    #[cold]
    fn unpin_remote(&self) -> bool {
        self.released_remote.0.fetch_add(1, Ordering::SeqCst);
        fence();
        self.stale.load(Ordering::Relaxed)
    }

    /// Whether the thread with `token` owns this cell. The answer is stable
    /// for that thread while it holds a pin of the cell: only the owner
    /// gives a cell up, only a cell without owner is adopted, and only a
    /// cell without pins is freed (invariant 7).
    #[inline(always)]
    pub(crate) fn is_owner(&self, token: usize) -> bool {
        self.owner.load(Ordering::Relaxed) == token
    }

    /// Under the lock (`binding`): takes the cached reference out if it has
    /// no pin and is not `current`; an orphaned cell is freed with it
    /// (invariant 5).
    fn take_if_idle(&'static self, binding: &mut Binding, current: *const ()) -> Option<Taken> {
        let version = self.version.load(Ordering::SeqCst);
        if version.is_null() || version.cast_const() == current || self.pins() != 0 {
            return None;
        }
        self.version.store(ptr::null_mut(), Ordering::SeqCst);
        self.stale.store(false, Ordering::SeqCst);
        let release = binding.release;
        let freed = binding.orphaned.then(|| self.free(binding));
        Some(Taken { version, release, _freed: freed })
    }

    /// Under the lock (`binding`), with no pin and nothing cached: unbinds
    /// the cell, for its pool (when the returned [`Freed`] is dropped).
    fn free(&'static self, binding: &mut Binding) -> Freed {
        debug_assert!(self.version.load(Ordering::SeqCst).is_null());
        *binding = Binding { slot: 0, release: release_nothing, orphaned: false };
        self.stale.store(false, Ordering::SeqCst);
        self.owner.store(0, Ordering::SeqCst);
        Freed(self)
    }

    /// The last pin of a stale cell may be gone: release its reference
    /// (invariant 4), and free the cell if its slot is gone (invariant 5).
    #[cold]
    fn release_if_stale(&'static self) {
        let taken = {
            let mut binding = lock(&self.lock);
            if !self.stale.load(Ordering::SeqCst) {
                return;
            }
            // Stale means the cached version is not the slot's: it is never
            // `current` again (the cell's reference keeps its address from
            // being reused).
            self.take_if_idle(&mut binding, ptr::null())
        };
        drop(taken);
    }

    /// The owner's slow path, with `loaded` a new strong reference to the
    /// slot's version (`Arc::into_raw`): caches it if the cell has no pin in
    /// flight, and pins it. On [`Repointed::Busy`], `loaded` is still the
    /// caller's; otherwise the cell took it.
    pub(crate) fn repoint(&'static self, cells: &PinCells, loaded: *const ()) -> Repointed {
        let mut taken = Vec::new();
        let outcome = {
            let binding = lock(&self.lock);
            if self.pins() != 0 {
                return Repointed::Busy;
            }
            // No pin in flight: the cell is ours to change (a remote drop
            // only reads it, and only while stale, under the lock). Its slot
            // is alive (the caller's handle), so it is not orphaned.
            let old = self.version.swap(loaded.cast_mut(), Ordering::SeqCst);
            if !old.is_null() {
                // The old version, or a second reference to `loaded`.
                taken.push(Taken { version: old, release: binding.release, _freed: None });
            }
            self.stale.store(false, Ordering::SeqCst);
            if self.pin(cells).is_some() {
                Repointed::Pinned
            } else {
                // A store came after the load (invariant 3): its walk may
                // have missed this cell, so do not keep what it retired.
                self.version.store(ptr::null_mut(), Ordering::SeqCst);
                taken.push(Taken { version: loaded.cast_mut(), release: binding.release, _freed: None });
                Repointed::Retired
            }
        };
        drop(taken);
        outcome
    }

    /// The owner thread (`token`) exits: if the cell still serves slot `id`
    /// for it (invariant 7), releases the cached reference if idle and gives
    /// the cell up for adoption (invariant 5). Pins still in flight on other
    /// threads keep the version cached: it is the slot's current one (or the
    /// cell is stale, and the last pin releases it), and the next store
    /// takes it back.
    pub(crate) fn give_up(&'static self, id: u64, token: usize) {
        let taken = {
            let mut binding = lock(&self.lock);
            if binding.slot != id || self.owner.load(Ordering::SeqCst) != token {
                // Freed since, and maybe bound anew: not this thread's.
                return;
            }
            self.owner.store(0, Ordering::SeqCst);
            // The owner is this thread: no fast pin races with the take.
            self.take_if_idle(&mut binding, ptr::null())
        };
        drop(taken);
    }

    /// Whether the cell still serves slot `id` for the thread with `token`
    /// (invariant 7: false once it was freed).
    fn serves(&self, id: u64, token: usize) -> bool {
        let binding = lock(&self.lock);
        binding.slot == id && self.owner.load(Ordering::SeqCst) == token
    }

    /// Adopts a cell without owner for the thread with `token`; whether it
    /// did.
    fn adopt(&self, token: usize) -> bool {
        let _binding = lock(&self.lock);
        if self.owner.load(Ordering::SeqCst) != 0 {
            return false;
        }
        self.owner.store(token, Ordering::SeqCst);
        true
    }

    /// Binds a free cell to `cells`' slot for the thread with `token`.
    fn bind(&self, cells: &PinCells, token: usize) {
        let mut binding = lock(&self.lock);
        debug_assert_eq!(binding.slot, 0, "a free cell is bound to no slot");
        *binding = Binding { slot: cells.id, release: cells.release, orphaned: false };
        self.owner.store(token, Ordering::SeqCst);
    }
}

/// What [`PinCell::repoint`] did with the loaded reference.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Repointed {
    /// Cached and pinned: the caller's pin is on the cell.
    Pinned,
    /// The cell has pins on another version: `loaded` is still the caller's.
    Busy,
    /// A store retired it meanwhile; it was released here.
    Retired,
}

/// A strong reference taken out of a cell, released when dropped (outside
/// the cell's lock: a last reference detaches its version); with the cell
/// itself when that freed it, which then goes to its pool.
struct Taken {
    version: *mut (),
    release: Release,
    /// Dropped after the release (fields drop after `Drop::drop`).
    _freed: Option<Freed>,
}

impl Drop for Taken {
    fn drop(&mut self) {
        // SAFETY: `version` is the cell's reference from `Arc::into_raw`,
        // and `release` the function of the slot that made it (read from
        // the cell's binding under the same lock); whoever took it out of
        // the cell did so under the cell's lock, once.
        unsafe { (self.release)(self.version) }
    }
}

/// A slot's cells, and the pointer of its current version that fast pins
/// check against. Not generic: `status()` reaches it from a retired version.
pub(crate) struct PinCells {
    /// The slot's id (never reused).
    pub(crate) id: u64,
    /// `Arc::as_ptr` of the slot's version (null: none). Set by [`store`]
    /// only.
    ///
    /// [`store`]: PinCells::store
    current: AtomicPtr<()>,
    /// Every cell bound to the slot (invariant 5: until this is dropped).
    cells: Mutex<Vec<&'static PinCell>>,
    release: Release,
    /// Where the cells come from and go back to.
    pool: &'static FreeCells,
}

impl PinCells {
    /// The cells of a new slot, from the process's pool.
    #[cfg(not(verdant_loom))]
    pub(crate) fn new(id: u64, release: Release) -> PinCells {
        PinCells::with_pool(id, release, free_cells())
    }

    /// The cells of a new slot. Under loom, whose locks are not `const`
    /// (no static pool), from a pool of its own: the models build their
    /// slots with [`with_pool`](Self::with_pool), handles are not modelled.
    #[cfg(verdant_loom)]
    pub(crate) fn new(id: u64, release: Release) -> PinCells {
        PinCells::with_pool(id, release, Box::leak(Box::new(FreeCells::new())))
    }

    /// The cells of a new slot, from `pool`.
    pub(crate) fn with_pool(id: u64, release: Release, pool: &'static FreeCells) -> PinCells {
        PinCells { id, current: AtomicPtr::new(ptr::null_mut()), cells: Mutex::new(Vec::new()), release, pool }
    }

    /// After the slot itself holds `current` (`Arc::as_ptr`, null for none):
    /// publishes it to fast pins, and takes back or marks stale every cell
    /// that caches another version (invariants 3 and 4). When it returns, no
    /// new pin gets any other version.
    pub(crate) fn store(&self, current: *const ()) {
        self.current.store(current.cast_mut(), Ordering::SeqCst);
        heavy();
        let cells = lock(&self.cells).clone();
        let mut taken = Vec::new();
        let mut busy = Vec::new();
        for cell in cells {
            let mut binding = lock(&cell.lock);
            if let Some(idle) = cell.take_if_idle(&mut binding, current) {
                taken.push(idle);
            } else {
                let version = cell.version.load(Ordering::SeqCst);
                if !version.is_null() && version.cast_const() != current {
                    cell.stale.store(true, Ordering::SeqCst);
                    busy.push(cell);
                }
            }
        }
        if !busy.is_empty() {
            // Invariant 4: a last pin that missed `stale` is visible now.
            heavy();
            for cell in busy {
                let mut binding = lock(&cell.lock);
                if cell.stale.load(Ordering::SeqCst) {
                    taken.extend(cell.take_if_idle(&mut binding, current));
                }
            }
        }
        drop(taken);
    }

    /// This thread's cell of the slot: one it gives up adopted, else a free
    /// one bound, else a new one.
    pub(crate) fn cell_for(&self, token: usize) -> &'static PinCell {
        let mut cells = lock(&self.cells);
        if let Some(cell) = cells.iter().find(|cell| cell.owner.load(Ordering::SeqCst) == 0 && cell.adopt(token)) {
            return cell;
        }
        // Invariant 5: a free cell has no pin, caches nothing, and no entry
        // of any thread matches it any more.
        let free = lock(&self.pool.free).pop();
        let cell = match free {
            Some(cell) => {
                cell.bind(self, token);
                cell
            }
            None => {
                self.pool.allocated.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                // Never freed: invariant 5.
                let binding = Binding { slot: self.id, release: self.release, orphaned: false };
                Box::leak(Box::new(PinCell {
                    released_remote: Padded(AtomicUsize::new(0)),
                    acquired: AtomicUsize::new(0),
                    released_local: AtomicUsize::new(0),
                    version: AtomicPtr::new(ptr::null_mut()),
                    owner: AtomicUsize::new(token),
                    stale: AtomicBool::new(false),
                    lock: Mutex::new(binding),
                    pool: self.pool,
                }))
            }
        };
        cells.push(cell);
        cell
    }

    /// How many cells cache `version` (`Arc::as_ptr`, kept alive by the
    /// caller), and the pins in flight on them (invariant 6).
    pub(crate) fn cached_pins(&self, version: *const ()) -> (usize, usize) {
        let cells = lock(&self.cells).clone();
        let (mut holders, mut pins) = (0, 0);
        for cell in cells {
            let _binding = lock(&cell.lock);
            if cell.version.load(Ordering::SeqCst).cast_const() == version {
                holders += 1;
                pins += cell.pins();
            }
        }
        (holders, pins)
    }
}

impl Drop for PinCells {
    /// The slot is gone: frees its cells (invariant 5). Those without pins
    /// give back what they cache and are freed now; those with pins (which
    /// may outlive the slot) are orphaned and stale, and after `heavy()` the
    /// same two-sided look as [`store`](PinCells::store)'s makes sure either
    /// this or their last pin's drop sees them idle and frees them.
    fn drop(&mut self) {
        let cells = std::mem::take(&mut *lock(&self.cells));
        let mut taken = Vec::new();
        let mut freed = Vec::new();
        let mut busy = Vec::new();
        for cell in cells {
            let mut binding = lock(&cell.lock);
            if cell.version.load(Ordering::SeqCst).is_null() {
                // Nothing cached, so no pin: no `get()` reaches the cell any
                // more (invariant 7).
                freed.push(cell.free(&mut binding));
                continue;
            }
            binding.orphaned = true;
            match cell.take_if_idle(&mut binding, ptr::null()) {
                Some(idle) => taken.push(idle),
                None => {
                    cell.stale.store(true, Ordering::SeqCst);
                    busy.push(cell);
                }
            }
        }
        if !busy.is_empty() {
            // Invariant 4's pair: a last pin that missed `stale` is visible
            // now.
            heavy();
            for cell in busy {
                let mut binding = lock(&cell.lock);
                if binding.orphaned {
                    taken.extend(cell.take_if_idle(&mut binding, ptr::null()));
                }
            }
        }
        drop(taken);
        drop(freed);
    }
}

/// Slots get process-wide ids, never reused (0: none).
static SLOT_IDS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(1);

/// A new slot's id.
pub(crate) fn slot_id() -> u64 {
    SLOT_IDS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
}

/// This thread's cells, found by slot id.
///
/// `TABLE` is the fast path's lookup: const-initialised and without a
/// destructor, so reaching it is one thread-pointer-relative address and it
/// works at any point of the thread's life. Slot `id` uses entry
/// `id % TABLE_SIZE`; a slot whose entry another slot took finds its cell
/// again in `OWNED` (slow path). `OWNED` lists every cell this thread got,
/// with the id of the slot it got it for (invariant 7: entries are matched
/// by that id, and those whose cell was freed since are pruned when one is
/// added); its destructor gives them up (invariant 5) and empties `TABLE`.
mod local {
    use std::cell::{Cell, RefCell};

    use super::{PinCell, PinCells};

    const TABLE_SIZE: usize = 8;

    type Entry = Cell<(u64, *const PinCell)>;

    pub(super) struct Table([Entry; TABLE_SIZE]);

    struct Owned(RefCell<Vec<(u64, &'static PinCell)>>);

    impl Drop for Owned {
        fn drop(&mut self) {
            TABLE.with(|table| table.0.iter().for_each(|entry| entry.set((0, std::ptr::null()))));
            let token = token();
            for (id, cell) in self.0.borrow_mut().drain(..) {
                cell.give_up(id, token);
            }
        }
    }

    thread_local! {
        static TABLE: Table = const { Table([const { Cell::new((0, std::ptr::null())) }; TABLE_SIZE]) };
        static OWNED: Owned = const { Owned(RefCell::new(Vec::new())) };
    }

    /// This thread's token: the address of its table (unique among live
    /// threads, never 0).
    #[inline(always)]
    pub(crate) fn token() -> usize {
        TABLE.with(|table| table as *const Table as usize)
    }

    /// This thread's cell of the slot with `id`, if the table has it.
    #[inline(always)]
    pub(crate) fn cached(id: u64) -> Option<&'static PinCell> {
        let (found, cell) = TABLE.with(|table| table.0[id as usize % TABLE_SIZE].get());
        // SAFETY: cells are never freed (invariant 5), and an entry whose id
        // a live slot has holds this thread's cell of that slot (invariant
        // 7).
        (found == id && !cell.is_null()).then(|| unsafe { &*cell })
    }

    /// This thread's cell of `cells`' slot, adopted, recycled or made on
    /// first use; `None` once the thread's locals are being destroyed.
    pub(crate) fn cell(cells: &PinCells) -> Option<&'static PinCell> {
        if let Some(cell) = cached(cells.id) {
            return Some(cell);
        }
        let cell = OWNED
            .try_with(|owned| {
                let mut owned = owned.0.borrow_mut();
                if let Some((_, cell)) = owned.iter().find(|(id, _)| *id == cells.id) {
                    return *cell;
                }
                // Invariant 7: entries of cells freed since go (their slots
                // are gone); the others are this thread's.
                let token = token();
                owned.retain(|(id, cell)| cell.serves(*id, token));
                let cell = cells.cell_for(token);
                owned.push((cells.id, cell));
                cell
            })
            .ok()?;
        TABLE.with(|table| table.0[cells.id as usize % TABLE_SIZE].set((cells.id, cell)));
        Some(cell)
    }
}

pub(crate) use local::{cached, cell, token};

/// The model checks of the protocol (`scripts/loom`). `loom_pin_cache`: an
/// owner thread pins and unpins (and hands one pin to another thread, which
/// drops it), while a reloader stores a new version. Checked in every interleaving: no pin
/// runs on a version whose reference is gone; `status()`'s count of pins on
/// the old version (strong count − caching cells + their pins) is never
/// below the pins really held; once every pin is dropped and the store
/// returned, the old version is freed (no cell keeps it).
/// `loom_pin_cache_slot_drop`: a slot dropped while its cell has pins in
/// flight, against their drops and the cell's reuse (invariants 5 and 7).
#[cfg(all(test, verdant_loom))]
mod model {
    use super::*;
    // std's `Arc` for the versions: loom's has no `Weak`, which the in-flight
    // count needs; the reference count itself is not what is checked.
    use std::sync::{Arc, Weak};

    /// A version: clears its flag when dropped.
    struct Version {
        alive: Arc<AtomicBool>,
    }

    impl Drop for Version {
        fn drop(&mut self) {
            self.alive.store(false, Ordering::SeqCst);
        }
    }

    unsafe fn release(version: *const ()) {
        // SAFETY: the model's cells hold `Arc<Version>` references.
        drop(unsafe { Arc::from_raw(version.cast::<Version>()) });
    }

    struct Slot {
        current: Mutex<Option<Arc<Version>>>,
        cells: PinCells,
    }

    /// A pool of cells of the model's own (one per execution).
    fn pool() -> &'static FreeCells {
        Box::leak(Box::new(FreeCells::new()))
    }

    impl Slot {
        fn new(id: u64, pool: &'static FreeCells) -> Slot {
            Slot { current: Mutex::new(None), cells: PinCells::with_pool(id, release, pool) }
        }

        /// `get()`: the fast pin, else the slow path.
        fn get(&self, cell: &'static PinCell) -> Pin {
            if let Some(version) = cell.pin(&self.cells) {
                return Pin::Cached(cell, version);
            }
            loop {
                let Some(loaded) = lock(&self.current).clone() else { panic!("the model always has a version") };
                let raw = Arc::into_raw(loaded).cast::<()>();
                match cell.repoint(&self.cells, raw) {
                    Repointed::Pinned => return Pin::Cached(cell, raw),
                    // SAFETY: still ours, from `into_raw` above.
                    Repointed::Busy => return Pin::Owned(unsafe { Arc::from_raw(raw.cast::<Version>()) }),
                    Repointed::Retired => continue,
                }
            }
        }

        fn store_none(&self) -> Option<Arc<Version>> {
            let old = lock(&self.current).take();
            self.cells.store(std::ptr::null());
            old
        }

        fn store(&self, new: Arc<Version>) -> Option<Arc<Version>> {
            let ptr = Arc::as_ptr(&new).cast::<()>();
            let old = lock(&self.current).replace(new);
            self.cells.store(ptr);
            old
        }
    }

    enum Pin {
        Cached(&'static PinCell, *const ()),
        Owned(Arc<Version>),
    }

    // SAFETY: the model moves a pin to another thread, as `Pinned` may.
    unsafe impl Send for Pin {}

    impl Pin {
        fn ptr(&self) -> *const () {
            match self {
                Pin::Cached(_, version) => *version,
                Pin::Owned(version) => Arc::as_ptr(version).cast(),
            }
        }

        fn drop_on(self, owner: bool) {
            if let Pin::Cached(cell, _) = self {
                cell.unpin(owner);
            }
        }
    }

    /// The two versions of the model, known by address: a call checks the
    /// flag of the one it pinned without touching the version itself.
    struct Versions {
        v1: (*const (), Arc<AtomicBool>),
        v2: (*const (), Arc<AtomicBool>),
    }

    // SAFETY: the addresses are only compared, never dereferenced.
    unsafe impl Send for Versions {}
    // SAFETY: as for `Send`; the flags are atomics.
    unsafe impl Sync for Versions {}

    impl Versions {
        fn call(&self, pin: &Pin) {
            let alive = if pin.ptr() == self.v1.0 { &self.v1.1 } else { &self.v2.1 };
            assert!(alive.load(Ordering::SeqCst), "a call ran on a dropped version");
        }
    }

    fn version() -> (Arc<Version>, *const (), Arc<AtomicBool>) {
        let alive = Arc::new(AtomicBool::new(true));
        let version = Arc::new(Version { alive: alive.clone() });
        let ptr = Arc::as_ptr(&version).cast();
        (version, ptr, alive)
    }

    /// Calls on `v1`'s pins in flight as `status()` counts them.
    fn counted(slot: &Slot, v1: &Weak<Version>) -> usize {
        let Some(v1) = v1.upgrade() else { return 0 };
        let (holders, pins) = slot.cells.cached_pins(Arc::as_ptr(&v1).cast());
        let current = usize::from(lock(&slot.current).as_ref().is_some_and(|c| Arc::ptr_eq(c, &v1)));
        (Arc::strong_count(&v1) - 1 + pins).saturating_sub(holders + current)
    }

    #[test]
    fn loom_pin_cache() {
        // Bounded (every interleaving with up to 4 preemptions, ~13 s in
        // release; unbounded it runs for hours); `LOOM_MAX_PREEMPTIONS`
        // overrides it.
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = builder.preemption_bound.or(Some(4));
        builder.check(|| {
            let (v1, v1_ptr, v1_alive) = version();
            let (v2, v2_ptr, v2_alive) = version();
            let versions = Arc::new(Versions { v1: (v1_ptr, v1_alive.clone()), v2: (v2_ptr, v2_alive) });
            let v1_weak = Arc::downgrade(&v1);
            let slot = loom::sync::Arc::new(Slot::new(1, pool()));
            slot.store(v1);
            let cell = slot.cells.cell_for(1);
            // A warm cache, and a pin that moves to another thread.
            let moved = slot.get(cell);
            versions.call(&moved);
            let moved_on_v1 = moved.ptr() == v1_ptr;
            let moved_done = loom::sync::Arc::new(AtomicBool::new(false));

            let reloader = {
                let slot = slot.clone();
                loom::thread::spawn(move || drop(slot.store(v2)))
            };
            let remote = {
                let (versions, done) = (versions.clone(), moved_done.clone());
                loom::thread::spawn(move || {
                    versions.call(&moved);
                    moved.drop_on(false);
                    done.store(true, Ordering::SeqCst);
                })
            };

            // The owner: one more call, counted while in flight.
            let pin = slot.get(cell);
            versions.call(&pin);
            let held =
                usize::from(pin.ptr() == v1_ptr) + usize::from(moved_on_v1 && !moved_done.load(Ordering::SeqCst));
            // Read after `held`: pins only go away meanwhile, so the count
            // may only be higher than `held`, never lower.
            let seen = counted(&slot, &v1_weak);
            let held_now = usize::from(pin.ptr() == v1_ptr);
            assert!(seen >= held_now, "in flight under-counted: {seen} < {held_now} (held {held})");
            pin.drop_on(true);

            reloader.join().unwrap();
            remote.join().unwrap();
            // Every pin dropped, the store returned: nothing keeps v1, and
            // the count says so.
            assert_eq!(counted(&slot, &v1_weak), 0);
            assert!(!v1_alive.load(Ordering::SeqCst), "a retired version outlived its pins");
            // The owner's next get is the new version.
            let pin = slot.get(cell);
            assert_eq!(pin.ptr(), v2_ptr);
            pin.drop_on(true);
            cell.give_up(1, 1);
            drop(slot.store_none());
        });
    }

    /// A slot dropped while pins of its cell are in flight (a `Pinned` may
    /// outlive its slot): one dropped by the owner, one moved to another
    /// thread and dropped there, while the owner takes a cell for a new
    /// slot (the freed one if it is free by then). Checked: no call runs on
    /// a dropped version; the retired version is freed once its pins are
    /// gone; the cell is freed exactly once (every cell ends on the free
    /// list, and a later slot allocates none); the owner's exit gives up
    /// only the cell it still owns. Twice: with the slot's store
    /// of "none" before its cells are dropped (what `Slot`'s drop does), and
    /// without (the cells' own drop then marks them stale, and its second
    /// look after `heavy()` is what frees a cell whose last pin missed it).
    #[test]
    fn loom_pin_cache_slot_drop() {
        slot_drop_model(true);
        slot_drop_model(false);
    }

    fn slot_drop_model(store_none_first: bool) {
        // Bounded as `loom_pin_cache` (both variants ~8 s in release).
        let mut builder = loom::model::Builder::new();
        builder.preemption_bound = builder.preemption_bound.or(Some(4));
        builder.check(move || {
            let pool = pool();
            let (v1, v1_ptr, v1_alive) = version();
            let (v2, v2_ptr, v2_alive) = version();
            let versions = Arc::new(Versions { v1: (v1_ptr, v1_alive.clone()), v2: (v2_ptr, v2_alive.clone()) });
            let slot = Slot::new(1, pool);
            slot.store(v1);
            let cell = slot.cells.cell_for(1);
            let mine = slot.get(cell);
            let moved = slot.get(cell);
            assert_eq!((mine.ptr(), moved.ptr()), (v1_ptr, v1_ptr));

            // The registry drops the slot: its version goes, then its cells.
            let dropper = loom::thread::spawn(move || {
                if store_none_first {
                    drop(slot.store_none());
                }
                drop(slot);
            });
            let remote = {
                let versions = versions.clone();
                loom::thread::spawn(move || {
                    versions.call(&moved);
                    moved.drop_on(false);
                })
            };

            // The owner: its pin, then a new slot's cell and a call on it.
            versions.call(&mine);
            mine.drop_on(true);
            dropper.join().unwrap();
            let slot2 = Slot::new(2, pool);
            slot2.store(v2);
            let cell2 = slot2.cells.cell_for(1);
            let pin = slot2.get(cell2);
            assert_eq!(pin.ptr(), v2_ptr);
            versions.call(&pin);
            pin.drop_on(true);
            remote.join().unwrap();

            assert!(!v1_alive.load(Ordering::SeqCst), "a dropped slot's version outlived its pins");
            assert!(pool.allocated() <= 2);
            // The owner exits (invariant 7): its entry of the dropped slot
            // leaves the cell alone, whoever it serves now (maybe `cell2`).
            cell.give_up(1, 1);
            assert!(cell2.is_owner(1), "a stale entry gave up a rebound cell");
            cell2.give_up(2, 1);
            assert!(!cell2.is_owner(1));
            drop(slot2.store_none());
            drop(slot2);
            assert!(!v2_alive.load(Ordering::SeqCst), "a dropped slot's version outlived its pins");
            assert_eq!(pool.free(), pool.allocated(), "a cell was lost, or freed twice");
            // A later slot recycles a cell rather than allocating one.
            let allocated = pool.allocated();
            let slot3 = Slot::new(3, pool);
            let _cell = slot3.cells.cell_for(1);
            assert_eq!(pool.allocated(), allocated);
        });
    }
}
/// The layout the fast path relies on.
#[cfg(all(test, not(verdant_loom)))]
mod tests {
    use std::mem::offset_of;

    use super::PinCell;

    /// What a fast pin and its drop touch is on one cache line, and not on
    /// the remote releases' line.
    #[test]
    fn the_fast_path_touches_one_cache_line() {
        let line = offset_of!(PinCell, acquired) / 64;
        for (field, offset) in [
            ("released_local", offset_of!(PinCell, released_local)),
            ("version", offset_of!(PinCell, version)),
            ("owner", offset_of!(PinCell, owner)),
            ("stale", offset_of!(PinCell, stale)),
        ] {
            assert_eq!(offset / 64, line, "{field} is not on `acquired`'s line");
        }
        assert_ne!(offset_of!(PinCell, released_remote) / 64, line);
    }
}
