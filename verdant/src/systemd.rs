//! systemd's notification protocol (`sd_notify`): readiness, and reloads
//! that `systemctl reload` can wait for.
//!
//! With `Type=notify-reload` and `ReloadSignal=SIGPIPE` in the unit,
//! `systemctl reload` sends the service SIGPIPE and waits until the service
//! says it has reloaded. Verdant already reloads on SIGPIPE
//! ([`Verdant::reload_on_sigpipe`](crate::Verdant::reload_on_sigpipe)); with
//! [`Builder::systemd`](crate::Builder::systemd) on (the default when
//! systemd started the process: `NOTIFY_SOCKET` is set) the registry also
//! sends, for every reload a signal triggered:
//!
//! 1. before it loads anything, one datagram
//!    `RELOADING=1`, `MONOTONIC_USEC=<CLOCK_MONOTONIC in µs>` and
//!    `STATUS=reloading …` (systemd uses the timestamp to tell this reload
//!    from an older one: it must not be older than the signal);
//! 2. when the reload is done, one datagram `READY=1` and a `STATUS=` that
//!    names the generation and the outcome: `reload ok, generation 2: …` or
//!    `reload FAILED, generation 3: …`.
//!
//! The host sends the first `READY=1` itself, once it serves (after
//! [`Verdant::attach`](crate::Verdant::attach) and after it bound its
//! listening socket), with [`notify_ready`]; reload notifications start
//! only after that, so that a signal during start-up cannot make systemd
//! think the service is ready. On shutdown, [`notify_stopping`].
//!
//! systemd (as of v257) has no way for a service to say that a reload
//! failed: `systemctl reload` returns 0 once `READY=1` arrives, whatever the
//! outcome. Read the outcome from the status text: `systemctl show -P
//! StatusText <unit>` starts with `reload ok` or `reload FAILED` (the
//! repository's `docs/operating.md` has a rolling reload that stops at the
//! first failure this way). A reload that never finishes makes `systemctl
//! reload` fail after the unit's `TimeoutStartSec=`.
//!
//! ```no_run
//! # async fn serve(verdant: verdant::Verdant) -> Result<(), Box<dyn std::error::Error>> {
//! let report = verdant.attach()?;
//! verdant.reload_on_sigpipe()?;
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:3000").await?;
//! verdant::systemd::notify_ready(&report)?; // READY=1, STATUS=serving, generation 1: …
//! // axum::serve(listener, app).await?;
//! verdant::systemd::notify_stopping()?;
//! # drop(listener); Ok(()) }
//! ```
//!
//! Without `NOTIFY_SOCKET` every function here does nothing and returns
//! `Ok(())`.

use std::io;
use std::sync::atomic::{AtomicBool, Ordering};

use sd_notify::NotifyState;

use crate::error::Error;
use crate::report::{Outcome, ReloadReport};

/// Set once the host said it is ready: reload notifications may go out.
static READY_SENT: AtomicBool = AtomicBool::new(false);

/// The longest status text sent; systemd keeps at most 16 KiB.
const STATUS_MAX: usize = 2000;

/// Tells systemd that the service is ready (`READY=1`), with a status text
/// that names the generation and what serves:
/// `STATUS=serving, generation 1: shop attached shop-lib 0.1.0`. Call it
/// once the service serves: after the first attach and after its listening
/// socket is bound. Pass the attach's report (from `Ok(report)`, or from
/// [`Error::Reload`]'s `failure.report` in strict mode).
///
/// # Errors
///
/// The `io::Error` of sending the datagram (the socket in `NOTIFY_SOCKET`
/// is gone, or not a datagram socket).
///
/// ```no_run
/// # fn f(verdant: &verdant::Verdant) -> Result<(), Box<dyn std::error::Error>> {
/// let report = verdant.attach()?;
/// verdant::systemd::notify_ready(&report)?;
/// # Ok(()) }
/// ```
pub fn notify_ready(report: &ReloadReport) -> io::Result<()> {
    let status = status_text(&format!("serving, generation {}: {}", report.generation, summary(report)));
    // Before the datagram: systemd may send the reload signal as soon as it
    // reads READY=1, and that reload must be announced.
    READY_SENT.store(true, Ordering::Release);
    sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)])
}

/// Tells systemd that the service is stopping (`STOPPING=1`): call it when
/// shutdown starts, before the requests in flight are finished.
///
/// # Errors
///
/// The `io::Error` of sending the datagram.
///
/// ```no_run
/// verdant::systemd::notify_stopping()?;
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn notify_stopping() -> io::Result<()> {
    sd_notify::notify(&[NotifyState::Stopping, NotifyState::Status("stopping")])
}

/// Whether systemd asked for notifications (`NOTIFY_SOCKET` is set and not
/// empty): the default of [`Builder::systemd`](crate::Builder::systemd).
pub(crate) fn under_systemd() -> bool {
    std::env::var_os("NOTIFY_SOCKET").is_some_and(|socket| !socket.is_empty())
}

/// Whether reload notifications go out now: the registry wants them and
/// the host has said it is ready.
pub(crate) fn reload_notifications(enabled: bool) -> bool {
    enabled && READY_SENT.load(Ordering::Acquire)
}

/// `RELOADING=1` and `MONOTONIC_USEC=` (taken now, so after the signal
/// that triggered the reload), in one datagram. A failure is logged: the
/// reload goes on regardless.
pub(crate) fn notify_reloading(sender: i32) {
    let sent = NotifyState::monotonic_usec_now().and_then(|now| {
        let status = format!("reloading (signal from pid {sender})");
        sd_notify::notify(&[NotifyState::Reloading, now, NotifyState::Status(&status)])
    });
    if let Err(error) = sent {
        tracing::warn!(%error, "cannot tell systemd that a reload starts (RELOADING=1)");
    }
}

/// `READY=1` and the reload's outcome as `STATUS=`, in one datagram.
/// `generation` is the registry's, for a reload that failed before it got
/// one (an invalid manifest).
pub(crate) fn notify_reloaded(result: &Result<ReloadReport, Error>, generation: u64) {
    let status = match result {
        Ok(report) if report.is_success() => {
            format!("reload ok, generation {}: {}", report.generation, summary(report))
        }
        Ok(report) => format!("reload FAILED, generation {}: {}", report.generation, summary(report)),
        Err(Error::Reload(failure)) => {
            format!("reload FAILED, generation {}: {}", failure.report.generation, summary(&failure.report))
        }
        Err(error) => format!("reload FAILED, generation {generation} keeps serving: {error}"),
    };
    let status = status_text(&status);
    if let Err(error) = sd_notify::notify(&[NotifyState::Ready, NotifyState::Status(&status)]) {
        tracing::warn!(%error, "cannot tell systemd that a reload ended (READY=1)");
    }
}

/// One short phrase per loadable: `shop swapped to shop-lib 0.1.1; api-key
/// FAILED at attach: …`.
fn summary(report: &ReloadReport) -> String {
    if report.loadables.is_empty() {
        return "nothing to do".to_owned();
    }
    let parts: Vec<String> = report
        .loadables
        .iter()
        .map(|loadable| {
            let name = &loadable.name;
            match &loadable.outcome {
                Outcome::Swapped { old: Some(_), new } => {
                    format!("{name} swapped to {} {}", new.package, new.package_version)
                }
                Outcome::Swapped { old: None, new } => {
                    format!("{name} attached {} {}", new.package, new.package_version)
                }
                Outcome::Unchanged { current } => {
                    format!("{name} unchanged ({} {})", current.package, current.package_version)
                }
                Outcome::Failed(error) => format!("{name} FAILED at {}: {}", error.step, error.kind),
                Outcome::RolledBack { .. } => format!("{name} rolled back (its group failed)"),
                _ => format!("{name} not reached (its group failed)"),
            }
        })
        .collect();
    parts.join("; ")
}

/// `text` as one line (a newline would end the `STATUS=` assignment) of at
/// most [`STATUS_MAX`] bytes.
fn status_text(text: &str) -> String {
    let mut line: String =
        text.split(['\n', '\r']).map(str::trim).filter(|part| !part.is_empty()).collect::<Vec<_>>().join(" / ");
    if line.len() > STATUS_MAX {
        let mut end = STATUS_MAX;
        while !line.is_char_boundary(end) {
            end -= 1;
        }
        line.truncate(end);
        line.push('…');
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_status_is_one_bounded_line() {
        assert_eq!(status_text("reload FAILED\n  at attach:\r\npanicked"), "reload FAILED / at attach: / panicked");
        let long = "é".repeat(STATUS_MAX);
        let text = status_text(&long);
        assert!(text.len() <= STATUS_MAX + '…'.len_utf8() && text.ends_with('…'), "{}", text.len());
    }
}
