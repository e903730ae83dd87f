//! SIGPIPE as a reload trigger (docs/boundary.md §6): `kill -PIPE <pid>` from
//! another process reloads; SIGPIPEs the process raises itself (a write to a
//! broken pipe, a self-`kill`) are counted and ignored, and summarised in the
//! log rather than logged one by one; no flood of them hides an operator's
//! signal (§8); no SIGPIPE ever kills the process, with or without the
//! listener.
//!
//! Signals go to the whole process, so these tests expect a process each
//! (`cargo nextest`). Under `cargo test` they are at least serialised by
//! [`ONE_AT_A_TIME`].

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use std::future::Future;

use verdant::{Trigger, Verdant};
use verdant_tests::{attached, poll_until, reload_held_in_attach, Artifact};

static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

/// Set once a test of this process installed the listener: its signal
/// handler stays installed (signal-hook never uninstalls one), so only a
/// process that never listened still has SIGPIPE at `SIG_IGN`.
static LISTENED: AtomicBool = AtomicBool::new(false);

fn listen(verdant: &Verdant) {
    LISTENED.store(true, Ordering::SeqCst);
    verdant.reload_on_sigpipe().expect("reload_on_sigpipe");
}

/// Writes to a pipe whose read end is closed: the kernel raises SIGPIPE in
/// this thread, and the write fails with `EPIPE`. Returns only if the
/// process survived.
fn write_to_broken_pipe() {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: plain syscalls on descriptors this function owns.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe: {}", std::io::Error::last_os_error());
        assert_eq!(libc::close(fds[0]), 0);
        let written = libc::write(fds[1], b"x".as_ptr().cast(), 1);
        let error = std::io::Error::last_os_error();
        libc::close(fds[1]);
        assert_eq!(written, -1, "a write to a pipe without reader must fail");
        assert_eq!(error.raw_os_error(), Some(libc::EPIPE), "{error}");
    }
}

/// Threads that write to broken pipes until stopped (or dropped), raising
/// a SIGPIPE in this process with every write: a service whose clients keep
/// hanging up, or whose logs go to a closed stdout.
struct Flood {
    stop: Arc<AtomicBool>,
    threads: Vec<std::thread::JoinHandle<()>>,
}

impl Flood {
    fn start(threads: usize) -> Flood {
        let stop = Arc::new(AtomicBool::new(false));
        let threads = (0..threads)
            .map(|_| {
                let stop = stop.clone();
                std::thread::spawn(move || {
                    let mut fds = [0 as libc::c_int; 2];
                    // SAFETY: plain syscalls on descriptors this thread owns;
                    // the iovec points at a live local buffer.
                    unsafe {
                        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe: {}", std::io::Error::last_os_error());
                        assert_eq!(libc::close(fds[0]), 0);
                        let byte = [b'x'];
                        let iov = libc::iovec { iov_base: byte.as_ptr() as *mut libc::c_void, iov_len: 1 };
                        while !stop.load(Ordering::Relaxed) {
                            // A vectored write, like a socket response: EPIPE,
                            // and a SIGPIPE sent by this very process.
                            assert_eq!(libc::writev(fds[1], &iov, 1), -1, "a write without reader must fail");
                        }
                        libc::close(fds[1]);
                    }
                })
            })
            .collect();
        Flood { stop, threads }
    }

    /// Stops the flood and checks that every write failed as it should.
    fn stop(mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            thread.join().expect("a flood thread failed");
        }
    }
}

impl Drop for Flood {
    /// Stops the threads also when the test fails half-way.
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        for thread in self.threads.drain(..) {
            let _ = thread.join();
        }
    }
}

/// Sends SIGPIPE to this process from this process.
fn kill_self() {
    // SAFETY: sending a signal to ourselves.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGPIPE) };
    assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
}

/// `kill -PIPE <this pid>`, run as another process; returns that
/// process's pid (the signal's sender).
fn kill_from_another_process() -> u32 {
    let mut kill = std::process::Command::new("kill")
        .args(["-PIPE", &std::process::id().to_string()])
        .spawn()
        .expect("run kill(1)");
    let sender = kill.id();
    let status = kill.wait().expect("wait for kill(1)");
    assert!(status.success(), "kill -PIPE exited with {status}");
    sender
}

/// Whether SIGPIPE is ignored (`SIG_IGN`) in this process, from the
/// `SigIgn` mask in `/proc/self/status`.
fn sigpipe_ignored() -> bool {
    let status = std::fs::read_to_string("/proc/self/status").expect("/proc/self/status");
    let mask = status.lines().find_map(|l| l.strip_prefix("SigIgn:")).expect("SigIgn line").trim();
    let mask = u64::from_str_radix(mask, 16).expect("hex mask");
    mask & (1 << (libc::SIGPIPE - 1)) != 0
}

#[test]
fn self_sent_sigpipes_are_counted_and_ignored() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    listen(&verdant);
    verdant.reload_on_sigpipe().expect("reload_on_sigpipe is idempotent");
    assert!(verdant.status().sigpipe.listening);
    // A reload now would load v2, so one that happens shows.
    artifact.install("good-v2");

    // A broken pipe: what every disconnecting client causes.
    // Each signal is waited for before the next: two pending SIGPIPEs may
    // merge into one.
    let seen = || {
        let sigpipe = verdant.status().sigpipe;
        sigpipe.ignored_self_sent + sigpipe.reloads_triggered
    };
    write_to_broken_pipe();
    poll_until(&verdant, "the listener saw the broken-pipe SIGPIPE", || seen() >= 1);
    assert_eq!(verdant.status().sigpipe.reloads_triggered, 0, "a broken pipe triggered a reload\n{}", verdant.status());
    // A SIGPIPE this process sends itself.
    kill_self();
    poll_until(&verdant, "the listener saw the self-sent SIGPIPE", || seen() >= 2);

    let status = verdant.status();
    assert_eq!(status.sigpipe.ignored_self_sent, 2, "{status}");
    assert_eq!(status.sigpipe.reloads_triggered, 0, "{status}");
    assert_eq!(status.generation, 1, "a self-sent SIGPIPE reloaded\n{status}");
    assert_eq!(probe.get().unwrap().version(), 1);
    assert_eq!(shared.attach_count(), 1);

    // The listener still works afterwards: a real operator signal reloads.
    kill_from_another_process();
    poll_until(&verdant, "kill -PIPE reloads after ignored ones", || probe.get().unwrap().version() == 2);
    assert_eq!(verdant.status().sigpipe.reloads_triggered, 1);
}

#[test]
fn kill_pipe_from_another_process_reloads_once() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    listen(&verdant);
    artifact.install("good-v2");

    kill_from_another_process();
    poll_until(&verdant, "kill -PIPE reloads v2", || probe.get().unwrap().version() == 2);
    let status = verdant.status();
    assert_eq!(status.sigpipe.reloads_triggered, 1, "{status}");
    assert_eq!(status.sigpipe.ignored_self_sent, 0, "{status}");
    assert_eq!(status.generation, 2, "{status}");
    assert_eq!(probe.get().unwrap().generation(), 2);
    assert_eq!(shared.attach_count(), 2);

    // After revoke the listener stops; a SIGPIPE neither reloads nor kills.
    verdant.revoke();
    poll_until(&verdant, "the listener stopped after revoke", || !verdant.status().sigpipe.listening);
    artifact.install("good-v3");
    kill_from_another_process();
    write_to_broken_pipe();
    let status = verdant.status();
    assert_eq!(status.generation, 2, "{status}");
    assert_eq!(shared.attach_count(), 2);
}

/// A signal that arrives while a reload runs, after a call queued behind
/// it, is coalesced with the call into one follow-up reload, whose report
/// names the newest trigger: the signal, with its sender (the systemd
/// notification uses the same one).
#[test]
fn a_coalesced_batch_is_reported_under_its_newest_trigger() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    listen(&verdant);

    // Reload 1 (to v2) blocks inside v2's attach hook.
    let first = reload_held_in_attach(&verdant, &shared, &artifact, "good-v2");
    artifact.install("good-v3");

    // A call is queued first, then an operator's signal.
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let report = runtime.block_on(async {
        let mut call = Box::pin(verdant.reload(None));
        let mut noop = std::task::Context::from_waker(std::task::Waker::noop());
        // The first poll queues the call; the worker is inside reload 1.
        assert!(call.as_mut().poll(&mut noop).is_pending(), "the call was answered while reload 1 ran");
        let sender = kill_from_another_process();
        poll_until(&verdant, "the listener queued the signal", || verdant.status().sigpipe.reloads_triggered == 1);
        shared.attach_gate.open();
        (call.await, sender)
    });
    let (report, sender) = (report.0.expect("the follow-up reload"), report.1);

    let first = first.join().unwrap().expect("reload 1");
    assert_eq!((first.generation, first.trigger, first.coalesced), (2, Trigger::Call, 1), "{first}");
    assert_eq!(report.generation, 3, "{report}");
    assert_eq!(report.coalesced, 2, "the call and the signal share one reload\n{report}");
    assert_eq!(report.trigger, Trigger::Signal { sender: sender as i32 }, "{report}");
    assert_eq!(probe.get().unwrap().version(), 3);
}

/// A signal-triggered reload is a transaction per loadable too: one that
/// fails keeps its version, and the healthy one is swapped.
#[test]
fn kill_pipe_swaps_the_healthy_loadable_when_another_fails() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let (healthy, broken) = (Artifact::new("good-v1"), Artifact::new("good-v1"));
    let verdant = Verdant::builder(fixture_api::FixtureContext::new())
        .add::<dyn fixture_api::Probe>("healthy", healthy.path())
        .add::<dyn fixture_api::Probe>("broken", broken.path())
        .build()
        .expect("build");
    assert!(verdant.attach().expect("attach").is_success());
    let probe = |name: &str| verdant.handle::<dyn fixture_api::Probe>(name).expect("handle");
    listen(&verdant);
    healthy.install("good-v2");
    broken.install("attach-error");

    kill_from_another_process();
    poll_until(&verdant, "kill -PIPE swaps the healthy loadable", || probe("healthy").get().unwrap().version() == 2);
    let status = verdant.status();
    assert_eq!(status.sigpipe.reloads_triggered, 1, "{status}");
    assert_eq!(status.generation, 2, "{status}");
    let broken_status = status.loadables.iter().find(|l| l.name == "broken").expect("broken");
    assert_eq!(broken_status.current.as_ref().map(|c| c.generation), Some(1), "{status}");
    assert!(broken_status.retired.is_empty(), "{status}");
    assert_eq!(probe("broken").get().unwrap().version(), 1);
}

#[test]
fn sigpipe_without_the_listener_does_not_kill_the_process() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Rust starts programs with SIGPIPE ignored; verdant must not change
    // that unless asked to listen.
    let artifact = Artifact::new("good-v1");
    let (verdant, shared, probe) = attached(&artifact);
    let fresh_process = !LISTENED.load(Ordering::SeqCst);
    if fresh_process {
        assert!(sigpipe_ignored(), "SIGPIPE is not ignored in a registry without a listener");
    }
    artifact.install("good-v2");

    write_to_broken_pipe();
    kill_self();
    kill_from_another_process();

    if fresh_process {
        assert!(sigpipe_ignored());
    }
    let status = verdant.status();
    assert!(!status.sigpipe.listening, "{status}");
    assert_eq!((status.sigpipe.reloads_triggered, status.sigpipe.ignored_self_sent), (0, 0), "{status}");
    assert_eq!(status.generation, 1, "{status}");
    assert_eq!(probe.get().unwrap().version(), 1);
    assert_eq!(shared.attach_count(), 1);
}

/// Operator signals among a flood of self-raised SIGPIPEs: every one is
/// counted, and the last one is followed by a reload that loads the build
/// installed just before it. (signal-hook's 5-entry siginfo channel, full of
/// broken-pipe signals, used to drop most of them: docs/boundary.md §8.)
#[test]
fn every_kill_pipe_counts_under_a_flood_of_broken_pipes() {
    const KILLS: u64 = 20;
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let artifact = Artifact::new("good-v1");
    let (verdant, _shared, probe) = attached(&artifact);
    listen(&verdant);

    let flood = Flood::start(2);
    poll_until(&verdant, "the flood raises SIGPIPEs", || verdant.status().sigpipe.ignored_self_sent >= 1000);

    // Each signal is waited for before the next: the kernel merges a
    // SIGPIPE into one still pending, and that would not be our loss.
    let counted = |wanted: u64, what: &str| {
        if !verdant_tests::eventually(|| verdant.status().sigpipe.reloads_triggered >= wanted) {
            let status = verdant.status();
            panic!(
                "{what}: {} of {wanted} operator signals counted, {} self-sent ignored\n{status}",
                status.sigpipe.reloads_triggered, status.sigpipe.ignored_self_sent
            );
        }
    };
    for sent in 1..KILLS {
        kill_from_another_process();
        counted(sent, "an operator SIGPIPE was lost in the flood");
    }
    // Every reload queued so far has run once this one returns: nothing
    // but the last signal can load what is installed next.
    verdant.reload_blocking(None).expect("reload with v1 installed");
    let before_last = verdant.status().generation;
    assert_eq!(probe.get().unwrap().version(), 1);

    artifact.install("good-v2");
    kill_from_another_process();
    counted(KILLS, "the last operator SIGPIPE was lost in the flood");
    poll_until(&verdant, "the last kill -PIPE reloads v2", || probe.get().unwrap().version() == 2);
    assert!(probe.get().unwrap().generation() > before_last, "{}", verdant.status());
    flood.stop();

    let status = verdant.status();
    assert_eq!(status.sigpipe.reloads_triggered, KILLS, "broken pipes were taken for operator signals\n{status}");
    assert!(status.sigpipe.ignored_self_sent >= 1000, "{status}");
    assert!(status.sigpipe.listening, "{status}");
}

/// A layer that counts the SIGPIPE listener's events and writes each
/// as a line to a broken pipe, like logs going to a stdout whose reader
/// exited: every line raises one more SIGPIPE.
struct LogToBrokenStdout {
    sigpipe_events: Arc<AtomicU64>,
    stdout: libc::c_int,
}

impl<S: tracing::Subscriber> tracing_subscriber::Layer<S> for LogToBrokenStdout {
    fn on_event(&self, event: &tracing::Event<'_>, _context: tracing_subscriber::layer::Context<'_, S>) {
        if event.metadata().target() == "verdant::sigpipe" {
            self.sigpipe_events.fetch_add(1, Ordering::SeqCst);
        }
        // SAFETY: a write from a static buffer to a descriptor this
        // subscriber owns; it fails with EPIPE, as a log to a closed stdout.
        unsafe { libc::write(self.stdout, b"log line\n".as_ptr().cast(), 9) };
    }
}

/// Ignored SIGPIPEs are summarised, never logged one by one: a line per
/// signal written to a closed stdout raises another signal, without end.
#[test]
fn ignored_sigpipes_are_summarised_not_logged_one_by_one() {
    let _serial = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: plain syscalls on descriptors this test owns; the write end
    // stays open for the subscriber, for the rest of the process.
    unsafe {
        assert_eq!(libc::pipe(fds.as_mut_ptr()), 0, "pipe: {}", std::io::Error::last_os_error());
        assert_eq!(libc::close(fds[0]), 0);
    }
    let sigpipe_events = Arc::new(AtomicU64::new(0));
    let subscriber = tracing_subscriber::layer::SubscriberExt::with(
        tracing_subscriber::registry(),
        LogToBrokenStdout { sigpipe_events: sigpipe_events.clone(), stdout: fds[1] },
    );
    tracing::subscriber::set_global_default(subscriber).expect("the only global subscriber of this process");
    let artifact = Artifact::new("good-v1");
    let (verdant, _shared, _probe) = attached(&artifact);
    listen(&verdant);

    let started = std::time::Instant::now();
    let flood = Flood::start(2);
    poll_until(&verdant, "the flood raises SIGPIPEs", || verdant.status().sigpipe.ignored_self_sent >= 10_000);
    flood.stop();
    poll_until(&verdant, "the first summary, written at once", || sigpipe_events.load(Ordering::SeqCst) >= 1);
    // Read after the count: the bound below can only be looser than the
    // time the summaries had.
    let elapsed = started.elapsed();
    let events = sigpipe_events.load(Ordering::SeqCst);

    // The first summary at once, then at most one per 10 s (SUMMARY_EVERY).
    // Not a timing assertion: a slow machine only raises the bound.
    let allowed = 1 + elapsed.as_secs() / 10;
    assert!(
        events <= allowed,
        "{events} log lines from the SIGPIPE listener in {elapsed:?} (at most {allowed})\n{}",
        verdant.status()
    );
}
