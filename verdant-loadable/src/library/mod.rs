//! Code that runs **in the library**: compiled into every loadable and
//! called by the host only through vtables and function pointers the
//! library made (the descriptor, the boundary trait objects, the router and
//! body wrappers), so that every guard here catches with the library's own
//! `std` and enters the runtime through the library's own tokio.

pub mod allocator;
pub(crate) mod export;
pub(crate) mod guard;
pub(crate) mod logging;
pub(crate) mod middleware;
pub(crate) mod router;
pub(crate) mod runtime_link;
pub mod task;
pub(crate) mod task_set;
