//! SIGPIPE as a reload trigger (docs/boundary.md §6): `kill -PIPE <pid>` from
//! another process reloads; SIGPIPEs the process raises itself (a write to a
//! broken pipe, a self-`kill`) are counted and ignored; no SIGPIPE ever kills
//! the process, with or without the listener.
//!
//! Signals go to the whole process, so these tests expect a process each
//! (`cargo nextest`). Under `cargo test` they are at least serialised by
//! [`ONE_AT_A_TIME`].

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Mutex;

use verdant::Verdant;
use verdant_tests::{attached, poll_until, Artifact};

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

/// Sends SIGPIPE to this process from this process.
fn kill_self() {
    // SAFETY: sending a signal to ourselves.
    let sent = unsafe { libc::kill(libc::getpid(), libc::SIGPIPE) };
    assert_eq!(sent, 0, "kill: {}", std::io::Error::last_os_error());
}

/// `kill -PIPE <this pid>`, run as another process.
fn kill_from_another_process() {
    let status = std::process::Command::new("kill")
        .args(["-PIPE", &std::process::id().to_string()])
        .status()
        .expect("run kill(1)");
    assert!(status.success(), "kill -PIPE exited with {status}");
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
