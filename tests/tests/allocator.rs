//! A library allocates with the host's global allocator (docs/boundary.md §7).
//!
//! This test binary's global allocator is deliberately *not* the system
//! allocator's twin: every block carries a 16-byte header with a magic
//! number in front of the pointer it hands out, and freeing a block without
//! that header aborts the process. If a loaded library allocated from
//! `malloc` directly, the first `String` it returned would abort this test
//! when the host dropped it; so would a host `String` that the library
//! freed with `free`.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

use fixture_api::edge::{Edge, EdgeContext};
use verdant::Verdant;
use verdant_tests::{attached, Artifact};

const MAGIC: u64 = 0x7665_7264_616e_7421; // "verdant!"

struct Prefixed;

thread_local! {
    /// Allocations made on this thread by `Prefixed` (const-initialised, no
    /// destructor: safe to touch inside an allocator).
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn allocations_here() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

impl Prefixed {
    fn outer(layout: Layout) -> (Layout, usize) {
        let pad = layout.align().max(16);
        let outer = Layout::from_size_align(layout.size() + pad, pad).expect("layout fits");
        (outer, pad)
    }
}

// SAFETY: blocks come from `System` with room for a header in front; the
// pointer handed out is aligned as asked (pad is a multiple of the
// alignment) and `dealloc` undoes exactly what `alloc` did.
unsafe impl GlobalAlloc for Prefixed {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let (outer, pad) = Prefixed::outer(layout);
        // SAFETY: `outer` has a non-zero size.
        let base = unsafe { System.alloc(outer) };
        if base.is_null() {
            return base;
        }
        ALLOCATIONS.with(|n| n.set(n.get() + 1));
        // SAFETY: `pad >= 16`, so the header lies inside the block.
        unsafe {
            let user = base.add(pad);
            user.cast::<u64>().sub(1).write_unaligned(MAGIC);
            user
        }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        let (outer, pad) = Prefixed::outer(layout);
        // SAFETY: a block from `alloc` has its header right before `ptr`; a
        // foreign block makes this read garbage, which the check catches.
        let magic = unsafe { ptr.cast::<u64>().sub(1).read_unaligned() };
        if magic != MAGIC {
            // A block this allocator never made: a mismatched free.
            std::process::abort();
        }
        // SAFETY: undoes `alloc`.
        unsafe { System.dealloc(ptr.sub(pad), outer) }
    }
}

#[global_allocator]
static ALLOCATOR: Prefixed = Prefixed;

#[test]
fn values_allocated_on_either_side_are_freed_by_the_same_allocator() {
    let artifact = Artifact::new("good-v1");
    let (verdant, _shared, probe) = attached(&artifact);
    let pinned = probe.get().unwrap();

    let before = allocations_here();
    let text = pinned.describe();
    assert!(allocations_here() > before, "the library's String came from the host's allocator");
    assert_eq!(text, "fixture version 1 instance 1");
    drop(text); // the host frees what the library allocated

    // The library frees what the host allocated.
    assert_eq!(pinned.consume(String::from("made by the host")), 16);

    // A panic message is a String made in the library and dropped here.
    let caught = std::panic::catch_unwind(|| pinned.explode("allocated in the library")).unwrap_err();
    let panic = caught.downcast_ref::<verdant::boundary::LibraryPanic>().unwrap();
    assert_eq!(panic.0.message(), "allocated in the library");
    drop(caught);
    drop(pinned);

    // A reload: v2 allocates through the host too, v1 detaches and frees.
    artifact.install("good-v2");
    let report = verdant.reload_blocking(None).unwrap();
    drop(report);
    assert_eq!(probe.get().unwrap().describe(), "fixture version 2 instance 2");
    verdant.revoke();
}

#[test]
fn a_vec_of_strings_made_by_the_library_comes_from_the_hosts_allocator() {
    let artifact = Artifact::new("edge-v1");
    let verdant =
        Verdant::builder(EdgeContext::default()).add::<dyn Edge>("edge", artifact.path()).build().expect("build");
    verdant.attach().expect("attach edge-v1");
    let edge = verdant.handle::<dyn Edge>("edge").expect("handle");
    let pinned = edge.get().unwrap();

    // A sync method runs on this thread, so this thread's count sees every
    // allocation the library makes through the host's allocator.
    let before = allocations_here();
    let strings = pinned.allocate(100);
    let made = allocations_here() - before;
    assert!(made >= 101, "100 strings and their vector came from the host's allocator, but it saw {made} allocations");
    assert_eq!(strings.len(), 100);
    assert_eq!(strings[0], "string 0 from edge 1");
    assert_eq!(strings[99], "string 99 from edge 1");

    // The host frees all 101 blocks; a block from another allocator would
    // fail the header check and abort the process.
    drop(strings);
    drop(pinned);
    verdant.revoke();
}
