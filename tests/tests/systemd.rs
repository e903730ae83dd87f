//! systemd's notify-reload protocol, without systemd (issue 10 §3): the
//! test plays the service manager. It binds the unix datagram socket that
//! `NOTIFY_SOCKET` names, starts the built `demo-app` with it, waits for
//! `READY=1`, sends SIGPIPE as `ReloadSignal=SIGPIPE` would, and reads what
//! `systemctl reload` waits for: `RELOADING=1` with a `MONOTONIC_USEC=` not
//! older than the signal, in one datagram, then `READY=1` with the outcome.
//!
//! No test asserts on a duration; each receive is bounded by a hang guard.

use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use verdant_tests::demo_app::DemoApp;

/// How long one notification may take to arrive: a hang guard, never a
/// performance assertion.
const HANG_GUARD: Duration = Duration::from_secs(60);

/// The next datagram on `socket`, as text; `demo`'s stderr if none comes.
fn receive(socket: &UnixDatagram, demo: &DemoApp, waiting_for: &str) -> String {
    let mut buffer = vec![0_u8; 64 * 1024];
    match socket.recv(&mut buffer) {
        Ok(length) => {
            let datagram = String::from_utf8_lossy(&buffer[..length]).into_owned();
            println!("datagram ({waiting_for}):\n{datagram}");
            datagram
        }
        Err(error) => {
            panic!("no datagram ({waiting_for}) within {HANG_GUARD:?}: {error}; the demo's stderr:\n{}", demo.stderr())
        }
    }
}

/// The value of `KEY=` in a datagram, and that it appears once.
fn field<'a>(datagram: &'a str, key: &str) -> Option<&'a str> {
    let mut values = datagram.lines().filter_map(|line| line.strip_prefix(key)?.strip_prefix('='));
    let value = values.next();
    assert!(values.next().is_none(), "{key} appears once: {datagram}");
    value
}

/// CLOCK_MONOTONIC now, in microseconds, as systemd reads it.
fn monotonic_usec() -> u128 {
    let mut now = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: clock_gettime writes the timespec it is given.
    let read = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut now) };
    assert_eq!(read, 0, "clock_gettime(CLOCK_MONOTONIC): {}", std::io::Error::last_os_error());
    u128::try_from(now.tv_sec).expect("a non-negative clock") * 1_000_000
        + u128::try_from(now.tv_nsec).expect("non-negative nanoseconds") / 1_000
}

/// `kill -PIPE pid`, as systemd's `ReloadSignal=SIGPIPE` does; returns
/// CLOCK_MONOTONIC read right before it.
fn send_reload_signal(pid: u32) -> u128 {
    let before = monotonic_usec();
    // SAFETY: kill(2) on the demo, our own child.
    let sent = unsafe { libc::kill(pid as libc::pid_t, libc::SIGPIPE) };
    assert_eq!(sent, 0, "kill -PIPE {pid}: {}", std::io::Error::last_os_error());
    before
}

/// Checks the datagram a signal-triggered reload starts with.
fn assert_reloading(datagram: &str, signalled_at: u128) {
    assert_eq!(datagram.lines().next(), Some("RELOADING=1"), "RELOADING=1 comes first: {datagram}");
    let monotonic: u128 = field(datagram, "MONOTONIC_USEC")
        .unwrap_or_else(|| panic!("MONOTONIC_USEC= is in the same datagram as RELOADING=1: {datagram}"))
        .parse()
        .unwrap_or_else(|e| panic!("MONOTONIC_USEC is a number: {e}: {datagram}"));
    assert!(monotonic >= signalled_at, "MONOTONIC_USEC={monotonic} is not older than the signal ({signalled_at})");
    assert_eq!(field(datagram, "READY"), None, "not ready while reloading: {datagram}");
    let status = field(datagram, "STATUS").unwrap_or_default();
    assert_eq!(status, format!("reloading (signal from pid {})", std::process::id()), "{datagram}");
}

#[test]
fn a_signalled_reload_is_announced_to_systemd_and_its_outcome_reported() {
    let dir = tempfile::tempdir().expect("a temporary directory for the socket");
    let path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&path).expect("bind the notify socket");
    socket.set_read_timeout(Some(HANG_GUARD)).expect("a read timeout");
    let path_text = path.to_str().expect("a UTF-8 socket path");
    let demo = DemoApp::start(&[("NOTIFY_SOCKET", path_text), ("RUST_BACKTRACE", "0")]);

    // Start-up: READY=1 once it listens (it printed its listening line).
    let ready = receive(&socket, &demo, "start-up");
    assert_eq!(field(&ready, "READY"), Some("1"), "{ready}");
    assert_eq!(
        field(&ready, "STATUS"),
        Some("serving, generation 1: shop attached shop-lib 0.1.0"),
        "the status names the generation and what serves: {ready}"
    );

    // `systemctl reload`: RELOADING=1 and the time in one datagram, before
    // loading; then READY=1 with the outcome. The file did not change.
    let signalled_at = send_reload_signal(demo.pid);
    let reloading = receive(&socket, &demo, "reload start");
    assert_reloading(&reloading, signalled_at);
    let reloaded = receive(&socket, &demo, "reload end");
    assert_eq!(reloaded.lines().next(), Some("READY=1"), "{reloaded}");
    assert_eq!(
        field(&reloaded, "STATUS"),
        Some("reload ok, generation 2: shop unchanged (shop-lib 0.1.0)"),
        "{reloaded}"
    );

    // A reload that fails (the manifest points at a file that is no
    // library): still READY=1 (the old version serves), and the status
    // says it failed.
    std::fs::write(demo.dir().join("libbroken.so"), "not a library").expect("write a broken library");
    let manifest = demo.dir().join("verdant.toml");
    std::fs::write(&manifest, "[[loadable]]\nname = \"shop\"\npath = \"libbroken.so\"\nmount = \"/shop\"\n")
        .expect("rewrite the demo's manifest");
    let signalled_at = send_reload_signal(demo.pid);
    assert_reloading(&receive(&socket, &demo, "failing reload start"), signalled_at);
    let failed = receive(&socket, &demo, "failing reload end");
    assert_eq!(failed.lines().next(), Some("READY=1"), "{failed}");
    let status = field(&failed, "STATUS").unwrap_or_default();
    assert!(status.starts_with("reload FAILED, generation 3: shop FAILED at validate: "), "{failed}");

    // Shutdown: STOPPING=1.
    let pid = demo.pid;
    let (exit, stderr) = demo.terminate();
    assert!(exit.success(), "the demo ({pid}) exits cleanly on SIGTERM: {exit}\n{stderr}");
    let mut buffer = vec![0_u8; 64 * 1024];
    let length = socket.recv(&mut buffer).unwrap_or_else(|e| panic!("no STOPPING=1: {e}; stderr:\n{stderr}"));
    let stopping = String::from_utf8_lossy(&buffer[..length]).into_owned();
    println!("datagram (shutdown):\n{stopping}");
    assert_eq!(field(&stopping, "STOPPING"), Some("1"), "{stopping}");
}
