//! Boundary shim: the library allocates with the host's global allocator.
//!
//! A loadable links its own `std`, and with it its own `#[global_allocator]`
//! (the system allocator unless it says otherwise, [`docs::boundary`](crate::docs::boundary) §7). Values
//! cross the boundary by ownership all the time — a `String` a method
//! returns is freed by the host, an argument the host passes may be freed by
//! the library, a panic message crosses as a `String` — so both sides must
//! use one allocator. Hosts often set jemalloc or mimalloc.
//!
//! [`export!`](crate::export!) therefore makes [`HostAllocator`] the library's
//! global allocator. Until the host installs its table it allocates from the
//! system allocator; the loader installs the table right after the
//! descriptor header is checked, before any other library function is
//! called. From then on every allocation of the library goes through the
//! host's `std::alloc::alloc`, i.e. the host's global allocator.
//!
//! Only constructors run before that: `dlopen` runs the library's
//! `.init_array` (`#[used] #[link_section = ".init_array"]` statics, the
//! `ctor` crate, C++ static initialisers of linked code). Rust `cdylib`s have
//! none that allocate (measured: every fixture and the demo's shop-lib make
//! no allocation before the table is installed). A constructor that
//! allocates and keeps the memory would leave blocks of the system allocator
//! that the host's allocator later frees or reallocates: heap corruption
//! under a jemalloc or mimalloc host. So [`HostAllocator`] counts the blocks
//! the system allocator hands out before installation and are not freed
//! before it; [`install`](HostAllocator::install) returns that count, and
//! the loader refuses a library for which it is not zero. Blocks a
//! constructor frees again are harmless and not counted.
//!
//! Consequences for library authors: a loadable cannot set a global
//! allocator of its own (the link would fail with two of them), and it
//! allocates nothing that outlives its constructors: that work belongs in
//! the attach hook.

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicPtr, AtomicUsize, Ordering};

/// The host's allocation functions, handed to a library at load time.
#[doc(hidden)]
pub struct AllocatorTable {
    pub(crate) alloc: unsafe fn(Layout) -> *mut u8,
    pub(crate) alloc_zeroed: unsafe fn(Layout) -> *mut u8,
    pub(crate) dealloc: unsafe fn(*mut u8, Layout),
    pub(crate) realloc: unsafe fn(*mut u8, Layout, usize) -> *mut u8,
}

/// The global allocator [`export!`](crate::export!) gives every loadable.
///
/// Outside a loaded library (an executable that happens to use `export!`,
/// a doctest) it is the system allocator.
#[doc(hidden)]
pub struct HostAllocator {
    table: AtomicPtr<AllocatorTable>,
    /// Blocks the system allocator handed out before the table was
    /// installed, minus those freed before then. An atomic counter: the
    /// allocator must not allocate itself.
    system_blocks: AtomicUsize,
}

impl HostAllocator {
    /// An allocator that uses the system allocator until
    /// [`install`](Self::install) is called.
    pub const fn new() -> Self {
        HostAllocator { table: AtomicPtr::new(ptr::null_mut()), system_blocks: AtomicUsize::new(0) }
    }

    /// Routes every later allocation to `table`. Called once by the loader,
    /// before any library function runs; returns how many blocks the
    /// system allocator handed out before (to the library's constructors)
    /// that are still allocated. The loader refuses the library unless
    /// that is zero: the host's allocator would free those blocks.
    ///
    /// ```
    /// use std::alloc::{GlobalAlloc, Layout};
    /// use verdant_loadable::allocator::HostAllocator;
    ///
    /// let allocator = HostAllocator::new();
    /// let layout = Layout::new::<u64>();
    /// // SAFETY: a non-zero-sized layout; each block is freed once, with
    /// // its layout, by the allocator that made it (the system allocator).
    /// let (kept, freed) = unsafe { (allocator.alloc(layout), allocator.alloc(layout)) };
    /// // SAFETY: as above; `freed` came from `allocator` before installation.
    /// unsafe { allocator.dealloc(freed, layout) };
    /// // One block made before installation is still allocated.
    /// assert_eq!(allocator.install(&verdant_loadable::__private::HOST_ALLOCATOR), 1);
    /// // SAFETY: `kept` is the system allocator's (see above).
    /// unsafe { std::alloc::System.dealloc(kept, layout) };
    /// ```
    pub fn install(&self, table: &'static AllocatorTable) -> usize {
        self.table.store(ptr::from_ref(table).cast_mut(), Ordering::Release);
        // An allocation racing with the store (on a thread a constructor
        // started) may be counted after this load: refusing a library is
        // best effort for such libraries, exact for the ordinary case of
        // constructors that ran on the `dlopen` thread.
        self.system_blocks.load(Ordering::Acquire)
    }

    /// Counts a block the system allocator handed out (not a failed
    /// allocation). A `realloc` before installation moves a counted block and
    /// counts nothing.
    fn counted(&self, block: *mut u8) -> *mut u8 {
        if !block.is_null() {
            self.system_blocks.fetch_add(1, Ordering::AcqRel);
        }
        block
    }

    fn table(&self) -> Option<&'static AllocatorTable> {
        // SAFETY: the pointer is null or was made from a `&'static`.
        unsafe { self.table.load(Ordering::Acquire).as_ref() }
    }
}

impl Default for HostAllocator {
    fn default() -> Self {
        HostAllocator::new()
    }
}

// SAFETY: every method forwards to an allocator that upholds the
// `GlobalAlloc` contract (the host's global allocator, or `System` before
// the table is installed), with the caller's arguments unchanged. Memory is
// freed by the allocator that made it: the table is installed before any
// library function runs and never changes afterwards, and the loader refuses
// a library whose constructors still hold system blocks at installation
// (the count `install` returns). The counter is an atomic: nothing here
// allocates.
unsafe impl GlobalAlloc for HostAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self.table() {
                Some(table) => (table.alloc)(layout),
                None => self.counted(System.alloc(layout)),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self.table() {
                Some(table) => (table.alloc_zeroed)(layout),
                None => self.counted(System.alloc_zeroed(layout)),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            match self.table() {
                Some(table) => (table.dealloc)(ptr, layout),
                None => {
                    // Before installation every block is the system
                    // allocator's and was counted when it was made.
                    self.system_blocks.fetch_sub(1, Ordering::AcqRel);
                    System.dealloc(ptr, layout)
                }
            }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self.table() {
                Some(table) => (table.realloc)(ptr, layout, new_size),
                None => System.realloc(ptr, layout, new_size),
            }
        }
    }
}
