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
//!
//! # Counting in the handler
//!
//! A busy service can raise tens of thousands of broken-pipe SIGPIPEs a
//! second, and none of them may crowd out an operator's: a queue of signals
//! (signal-hook's iterator keeps the siginfo of 5 and drops the rest) lost
//! most operator signals under such a flood ([`docs::boundary`](crate::docs::boundary) §8). So
//! nothing is queued per signal. The handler ([`on_sigpipe`]) sorts each
//! signal by its `siginfo_t` and adds one to a counter: operator signals to
//! one, the rest to another. After counting an operator signal it sends one
//! byte on a socket that wakes the listener thread; when the socket is full
//! the byte is dropped, which loses nothing, since the thread is then awake
//! anyway and the counter holds the count.
//!
//! The listener thread ([`run`]) reads from the socket *first* and reads the
//! operator counter *after*, then queues one reload for every operator signal
//! counted since its previous read. A signal counted later sent its byte
//! after that read and wakes the thread again. So every operator signal is
//! followed by a reload queued after it was counted, and the reload worker
//! never starts a reload before its last trigger arrived
//! ([`trigger`](crate::trigger)): the build installed before the last signal
//! is the one loaded. Signals that arrive together share one reload.
//!
//! # Who sent a SIGPIPE
//!
//! A SIGPIPE is an operator's when `si_code` says a process sent it
//! (`SI_USER` from `kill`, `SI_QUEUE` from `sigqueue`, `SI_TKILL` from
//! `tgkill`) and `si_pid` is not this process's pid. A broken-pipe SIGPIPE
//! carries `SI_USER` and the pid of the writing process, that is our own, as
//! does a `kill` or `raise` of this process by itself; those, and anything
//! with another `si_code` (sent by the kernel with no sender, or with no pid
//! in `siginfo`), are counted as self-sent and ignored.
//!
//! `si_pid == 0` is an operator's. The kernel gives the sender's pid as seen
//! from the receiver's pid namespace, and 0 when the sender is not visible
//! there: a `kill` from a parent namespace, such as from the host into a
//! container. A process is always visible in its own namespace, so what it
//! sends itself, broken pipes included, carries its own non-zero pid. The
//! one other `SI_USER` with pid 0 is a signal whose siginfo the kernel could
//! not allocate (out of memory); if that was a broken pipe, it costs one
//! needless reload, which finds the builds unchanged.
//!
//! Self-sent signals are never logged one by one: with logs on a closed
//! stdout, each line would raise another SIGPIPE. The listener writes at most
//! one debug summary per [`SUMMARY_EVERY`], with the count since the previous
//! one.

use std::io::Read;
use std::os::fd::AsRawFd;
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicBool, AtomicI32, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use crate::registry::Inner;
use crate::report::Trigger;

/// The shortest time between two debug summaries of ignored SIGPIPEs.
pub(crate) const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// SIGPIPE counters, as reported by [`Status`](crate::Status).
///
/// ```no_run
/// # let verdant = verdant::Verdant::builder(()).build()?;
/// verdant.reload_on_sigpipe()?;
/// let sigpipe = verdant.status().sigpipe;
/// println!("{} operator signals, {} broken pipes", sigpipe.reloads_triggered, sigpipe.ignored_self_sent);
/// # Ok::<(), verdant::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct SigpipeStats {
    /// Whether `reload_on_sigpipe` is active.
    pub listening: bool,
    /// SIGPIPEs sent by other processes (`kill -PIPE`, including a sender
    /// outside this process's pid namespace, whose pid reads as 0) for which
    /// a reload has been queued. Each such signal is followed by a reload
    /// that starts after it arrived; signals that arrive together share
    /// one, so this counts signals, not reloads. It lags the signal by the
    /// moment the listener thread takes to wake, and is updated before the
    /// reload it queued starts.
    pub reloads_triggered: u64,
    /// SIGPIPEs this process raised itself (broken pipes, its own `kill` or
    /// `raise`) or that name no sending process, counted as they arrive and
    /// ignored.
    pub ignored_self_sent: u64,
}

/// The counters, shared by the registry, the listener thread and the
/// signal handler.
///
/// Invariants: `received` and `ignored` are only ever incremented, and only
/// by the handler; `triggered` only by the listener thread, which never
/// sets it above the `received` it read before queueing the reload.
#[derive(Default)]
pub(crate) struct SigpipeCounters {
    listening: AtomicBool,
    /// Operator signals counted by the handler.
    received: AtomicU64,
    /// Operator signals covered by a queued reload (`reloads_triggered`).
    triggered: AtomicU64,
    /// Self-sent signals counted by the handler.
    ignored: AtomicU64,
    /// The pid of the latest operator signal, stored before `received` is
    /// incremented.
    last_sender: AtomicI32,
    /// Set by the handler when a self-sent signal arrives after the last
    /// summary; the handler wakes the listener only when it sets it, so a
    /// flood wakes the thread once per summary, not once per signal.
    summary_due: AtomicBool,
}

impl SigpipeCounters {
    pub(crate) fn stats(&self) -> SigpipeStats {
        SigpipeStats {
            listening: self.listening.load(Ordering::Acquire),
            reloads_triggered: self.triggered.load(Ordering::Acquire),
            ignored_self_sent: self.ignored.load(Ordering::Relaxed),
        }
    }
}

/// The write end of the socket that wakes the listener thread.
struct Waker(UnixStream);

impl Waker {
    /// Sends one byte without blocking. Async-signal-safe: one `send`
    /// syscall. A full socket (`EAGAIN`) is fine, the reader is awake
    /// anyway; `MSG_NOSIGNAL` keeps a closed reader from raising a SIGPIPE
    /// in the SIGPIPE handler.
    fn wake(&self) {
        // SAFETY: `send` of one byte from a static buffer on a socket this
        // value owns; any error is deliberately ignored.
        unsafe {
            libc::send(self.0.as_raw_fd(), b"!".as_ptr().cast(), 1, libc::MSG_DONTWAIT | libc::MSG_NOSIGNAL);
        }
    }
}

/// A running listener: dropping it removes the handler's action and ends
/// the thread.
pub(crate) struct Listener {
    action: signal_hook_registry::SigId,
    stop: Arc<AtomicBool>,
    waker: Arc<Waker>,
}

impl Drop for Listener {
    fn drop(&mut self) {
        // Once this returns no handler runs our action any more (the
        // registry waits for running handlers before it lets go of it).
        // SIGPIPE itself stays caught: signal-hook-registry never restores
        // the previous disposition, so a SIGPIPE still cannot kill the
        // process; it is just no longer counted.
        signal_hook_registry::unregister(self.action);
        self.stop.store(true, Ordering::Release);
        self.waker.wake();
    }
}

/// The pid of the process that sent this SIGPIPE, if it was another
/// process: see the module docs for the rules, `si_pid == 0` included.
/// Async-signal-safe.
fn operator_pid(info: &libc::siginfo_t) -> Option<libc::pid_t> {
    if !matches!(info.si_code, libc::SI_USER | libc::SI_QUEUE | libc::SI_TKILL) {
        return None;
    }
    // SAFETY: for these codes the kernel filled in the sender fields of the
    // union (`_kill` or `_rt`, both starting with `si_pid`).
    let sender = unsafe { info.si_pid() };
    // SAFETY: no preconditions; `getpid` is async-signal-safe and not cached
    // by glibc, so it is right after a `fork` too.
    let own = unsafe { libc::getpid() };
    (sender != own).then_some(sender)
}

/// The signal handler's action: sorts and counts one SIGPIPE.
///
/// It runs on whichever thread the signal interrupted, at any point of that
/// thread's work (inside `malloc`, holding a lock, writing a log line), so
/// it does only what is async-signal-safe: reads `siginfo_t`, calls
/// `getpid`, updates atomics and sends one byte without blocking. No lock,
/// no allocation, no log, no panic. signal-hook-registry saves and restores
/// `errno` around it.
fn on_sigpipe(counters: &SigpipeCounters, waker: &Waker, info: &libc::siginfo_t) {
    match operator_pid(info) {
        Some(sender) => {
            counters.last_sender.store(sender, Ordering::Relaxed);
            // Release: the listener that sees this count sees the sender.
            counters.received.fetch_add(1, Ordering::Release);
            // After the count: the listener reads the counter after the
            // socket (module docs).
            waker.wake();
        }
        None => {
            counters.ignored.fetch_add(1, Ordering::Relaxed);
            // A plain load first: under a flood the flag is set, and a load
            // does not fight over the cache line the way a swap does.
            if !counters.summary_due.load(Ordering::Relaxed) && !counters.summary_due.swap(true, Ordering::AcqRel) {
                waker.wake();
            }
        }
    }
}

/// Installs the SIGPIPE handler and starts the listener thread.
pub(crate) fn listen(registry: Weak<Inner>, counters: Arc<SigpipeCounters>) -> std::io::Result<Listener> {
    let (reader, writer) = UnixStream::pair()?;
    let waker = Arc::new(Waker(writer));
    let stop = Arc::new(AtomicBool::new(false));
    // Listening before the action exists, so that a thread that ends at
    // once (registry gone) leaves it false.
    counters.listening.store(true, Ordering::Release);
    let thread = {
        let (counters, stop) = (counters.clone(), stop.clone());
        std::thread::Builder::new()
            .name("verdant-sigpipe".to_owned())
            .spawn(move || run(reader, &registry, &counters, &stop))
    };
    if let Err(error) = thread {
        counters.listening.store(false, Ordering::Release);
        return Err(error);
    }
    let action = {
        let waker = waker.clone();
        // SAFETY: the action is async-signal-safe (see `on_sigpipe`), and it
        // owns what it uses (`Arc`s that the registry keeps until the action
        // is unregistered and no handler runs it).
        unsafe {
            signal_hook_registry::register_sigaction(libc::SIGPIPE, move |info| on_sigpipe(&counters, &waker, info))
        }
    };
    match action {
        Ok(action) => Ok(Listener { action, stop, waker }),
        Err(error) => {
            stop.store(true, Ordering::Release);
            waker.wake();
            Err(error)
        }
    }
}

/// The listener thread: queues reloads for operator signals and writes the
/// summaries of ignored ones. Ends when the listener is dropped or the
/// registry is gone.
fn run(mut socket: UnixStream, registry: &Weak<Inner>, counters: &SigpipeCounters, stop: &AtomicBool) {
    // Operator signals for which a reload was queued; only this thread
    // moves it, and only up to a `received` it has read.
    let mut covered = 0;
    let mut summary = Summary::new(SUMMARY_EVERY);
    // Bytes carry no information: the counters do.
    let mut bytes = [0u8; 64];
    loop {
        let wait = if counters.summary_due.load(Ordering::Acquire) { Some(summary.wait(Instant::now())) } else { None };
        if wait == Some(Duration::ZERO) {
            // Cleared before the count is read: a signal after the read
            // sets it again and gets the next summary.
            counters.summary_due.store(false, Ordering::Release);
            let ignored = counters.ignored.load(Ordering::Relaxed);
            if let Some(new) = summary.take(Instant::now(), ignored) {
                tracing::debug!(
                    ignored = new,
                    total = ignored,
                    "SIGPIPEs raised by this process (broken pipes) ignored since the last summary"
                );
            }
            continue;
        }
        // `None` blocks until a byte arrives; a zero wait never gets here.
        if let Err(error) = socket.set_read_timeout(wait) {
            tracing::error!(%error, "SIGPIPE listener cannot wait on its socket; kill -PIPE no longer reloads until the process restarts; reload with Verdant::reload meanwhile");
            break;
        }
        match socket.read(&mut bytes) {
            Ok(0) => break,
            Ok(_) => {}
            Err(error)
                if matches!(
                    error.kind(),
                    std::io::ErrorKind::Interrupted | std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                ) => {}
            Err(error) => {
                tracing::error!(%error, "SIGPIPE listener cannot read its socket; kill -PIPE no longer reloads until the process restarts; reload with Verdant::reload meanwhile");
                break;
            }
        }
        if stop.load(Ordering::Acquire) {
            break;
        }
        // After the read (module docs). Acquire: pairs with the handler's
        // increment, so `last_sender` is at least that signal's.
        let received = counters.received.load(Ordering::Acquire);
        if received > covered {
            let Some(inner) = registry.upgrade() else { break };
            let sender = counters.last_sender.load(Ordering::Relaxed);
            tracing::info!(
                signals = received - covered,
                sender,
                "SIGPIPE from another process: reloading every loadable"
            );
            // Published once the reload is queued and before it can start:
            // whoever sees the count can rely on the reload, and whoever
            // sees the reload (a new generation) sees the count.
            inner.trigger_all(Trigger::Signal { sender }, || counters.triggered.store(received, Ordering::Release));
            covered = received;
        }
    }
    counters.listening.store(false, Ordering::Release);
}

/// When the listener may write the next summary of ignored signals: at
/// most one per `every`, the first one at once.
struct Summary {
    every: Duration,
    last: Option<Instant>,
    reported: u64,
}

impl Summary {
    fn new(every: Duration) -> Self {
        Summary { every, last: None, reported: 0 }
    }

    /// How long from `now` until the next summary may be written (zero:
    /// now).
    fn wait(&self, now: Instant) -> Duration {
        self.last.map_or(Duration::ZERO, |last| (last + self.every).saturating_duration_since(now))
    }

    /// Takes a summary at `now` of `total` ignored signals so far: the count
    /// since the previous summary, or `None` when there is nothing new (and
    /// then nothing was taken).
    fn take(&mut self, now: Instant, total: u64) -> Option<u64> {
        let new = total.checked_sub(self.reported).filter(|&new| new > 0)?;
        self.reported = total;
        self.last = Some(now);
        Some(new)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summaries_of_ignored_signals_are_at_most_one_per_period() {
        let start = Instant::now();
        let mut summary = Summary::new(Duration::from_secs(10));
        assert_eq!(summary.wait(start), Duration::ZERO, "the first summary is written at once");
        assert_eq!(summary.take(start, 3), Some(3));
        // A flood right after: the next summary waits out the period.
        assert_eq!(summary.wait(start + Duration::from_secs(4)), Duration::from_secs(6));
        assert_eq!(summary.wait(start + Duration::from_secs(10)), Duration::ZERO);
        assert_eq!(summary.take(start + Duration::from_secs(10), 50_003), Some(50_000));
        // Nothing new: nothing written, and the period does not restart.
        assert_eq!(summary.take(start + Duration::from_secs(30), 50_003), None);
        assert_eq!(summary.wait(start + Duration::from_secs(30)), Duration::ZERO);
    }
}
