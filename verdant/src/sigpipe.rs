//! `kill -PIPE <pid>` as a reload trigger.
//!
//! SIGPIPE is also what the kernel raises in a process that writes to a pipe
//! or socket whose reader went away — a client hanging up mid-response, or
//! stdout piped into `head`. Rust starts programs with SIGPIPE ignored; once
//! a handler is installed, such writes deliver it, and `siginfo` reports the
//! writing process itself as the sender ([`docs::boundary`](crate::docs::boundary) §6). So only a SIGPIPE
//! whose sender is *another* process triggers a reload; the rest are counted
//! and ignored. With a handler installed the process never dies of SIGPIPE:
//! the write just fails with `EPIPE`, as before.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use signal_hook::consts::SIGPIPE;
use signal_hook::iterator::exfiltrator::WithOrigin;
use signal_hook::iterator::SignalsInfo;

use crate::registry::Inner;
use crate::report::Trigger;

/// SIGPIPE counters, as reported by [`Status`](crate::Status).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SigpipeStats {
    /// Whether `reload_on_sigpipe` is active.
    pub listening: bool,
    /// SIGPIPEs from other processes, each of which triggered a reload.
    pub reloads_triggered: u64,
    /// SIGPIPEs this process raised itself (broken pipes), ignored.
    pub ignored_self_sent: u64,
}

#[derive(Default)]
pub(crate) struct SigpipeCounters {
    listening: AtomicBool,
    triggered: AtomicU64,
    ignored: AtomicU64,
}

impl SigpipeCounters {
    pub(crate) fn stats(&self) -> SigpipeStats {
        SigpipeStats {
            listening: self.listening.load(Ordering::Acquire),
            reloads_triggered: self.triggered.load(Ordering::Relaxed),
            ignored_self_sent: self.ignored.load(Ordering::Relaxed),
        }
    }
}

/// A running listener; closing its handle ends the thread.
pub(crate) struct Listener {
    handle: signal_hook::iterator::Handle,
}

impl Drop for Listener {
    fn drop(&mut self) {
        self.handle.close();
    }
}

/// Installs the SIGPIPE handler and starts the listener thread.
pub(crate) fn listen(registry: Weak<Inner>, counters: Arc<SigpipeCounters>) -> std::io::Result<Listener> {
    let mut signals = SignalsInfo::<WithOrigin>::new([SIGPIPE])?;
    let handle = signals.handle();
    let own_pid = std::process::id() as libc::pid_t;
    let thread_counters = counters.clone();
    std::thread::Builder::new().name("verdant-sigpipe".to_owned()).spawn(move || {
        let counters = thread_counters;
        for origin in signals.forever() {
            match origin.process {
                Some(sender) if sender.pid != own_pid => {
                    counters.triggered.fetch_add(1, Ordering::Relaxed);
                    let Some(inner) = registry.upgrade() else { break };
                    tracing::info!(sender = sender.pid, "SIGPIPE from another process: reloading every loadable");
                    inner.trigger_all(Trigger::Signal { sender: sender.pid });
                }
                _ => {
                    counters.ignored.fetch_add(1, Ordering::Relaxed);
                    tracing::debug!(?origin, "SIGPIPE raised by this process (a broken pipe); ignored");
                }
            }
        }
        counters.listening.store(false, Ordering::Release);
    })?;
    counters.listening.store(true, Ordering::Release);
    Ok(Listener { handle })
}
