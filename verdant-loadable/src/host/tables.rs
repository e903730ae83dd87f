//! The host functions a library forwards to.
//!
//! A library has its own global allocator, tracing dispatcher and `log`
//! logger (every static is per copy, [`crate::docs::boundary`] §7). The
//! loader hands it these tables instead: their functions are compiled into
//! the *host* binary (this crate's copy linked there), so they allocate with
//! the host's global allocator and log through the host's current
//! dispatcher and logger. The library side that calls them is
//! `library/allocator.rs` and `library/logging.rs`.

use crate::library::allocator::AllocatorTable;
use crate::library::logging::HostLogging;

/// The host's table: `std::alloc` of the host binary, so its global
/// allocator.
pub static HOST_ALLOCATOR: AllocatorTable = AllocatorTable {
    alloc: std::alloc::alloc,
    alloc_zeroed: std::alloc::alloc_zeroed,
    dealloc: std::alloc::dealloc,
    realloc: std::alloc::realloc,
};

/// The host's table: runs in the host binary, against its current
/// dispatcher and logger.
pub static HOST_LOGGING: HostLogging = HostLogging {
    with_dispatch: |f| tracing::dispatcher::get_default(|dispatch| f(dispatch)),
    log_enabled: |metadata| log::logger().enabled(metadata),
    log: |record| log::logger().log(record),
    log_flush: || log::logger().flush(),
};

/// Whether the calling thread is polling a tokio task, as the host's tokio
/// sees it (handed to the library as `AttachArgs::on_runtime_thread`): then
/// it is a thread a runtime owns (a worker, a blocking-pool thread, or the
/// thread driving a current-thread runtime), which ends with its runtime.
/// A plain thread inside `block_on` is not one: its root future is no task.
pub fn on_runtime_thread() -> bool {
    tokio::task::try_id().is_some()
}
