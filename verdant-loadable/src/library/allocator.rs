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
//! descriptor header is checked, before any other library code runs (Rust
//! `cdylib`s run no code of their own at `dlopen` that allocates). From then
//! on every allocation of the library goes through the host's
//! `std::alloc::alloc`, i.e. the host's global allocator.
//!
//! Consequence for library authors: a loadable cannot set a global
//! allocator of its own (the link would fail with two of them).

use std::alloc::{GlobalAlloc, Layout, System};
use std::ptr;
use std::sync::atomic::{AtomicPtr, Ordering};

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
}

impl HostAllocator {
    /// An allocator that uses the system allocator until
    /// [`install`](Self::install) is called.
    pub const fn new() -> Self {
        HostAllocator { table: AtomicPtr::new(ptr::null_mut()) }
    }

    /// Routes every later allocation to `table`. Called once by the loader,
    /// before the library allocates anything.
    pub fn install(&self, table: &'static AllocatorTable) {
        self.table.store(ptr::from_ref(table).cast_mut(), Ordering::Release);
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
// freed by the allocator that made it because the table is installed before
// the library allocates anything and never changes afterwards.
unsafe impl GlobalAlloc for HostAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self.table() {
                Some(table) => (table.alloc)(layout),
                None => System.alloc(layout),
            }
        }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: forwarded contract.
        unsafe {
            match self.table() {
                Some(table) => (table.alloc_zeroed)(layout),
                None => System.alloc_zeroed(layout),
            }
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: forwarded contract.
        unsafe {
            match self.table() {
                Some(table) => (table.dealloc)(ptr, layout),
                None => System.dealloc(ptr, layout),
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
