//! The embedding guide (`docs/embedding.md`), done by the book in an outside
//! workspace (`tests/external`: its own `Cargo.toml`, lock file, target
//! directory and workspace-hack, path dependencies on this repository's
//! crates): the host is built on its own, the library is built on its own
//! (`cargo build -p greeter-lib`, as a library team would), and the running
//! host reloads a second build of the library on `kill -PIPE`.
//!
//! Without the workspace-hack this fails: the host's `tracing-subscriber`
//! (`env-filter`) and `tower-http` turn on features of crates the library
//! shares, so a library built alone has other `TypeId`s and is refused.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use verdant_tests::{cargo_build_outside, outside_target_dir};

/// How long the host may take to print its address after it was started.
const STARTUP_LIMIT: Duration = Duration::from_secs(60);
/// How long the reload may take to show after `kill -PIPE`.
const RELOAD_LIMIT: Duration = Duration::from_secs(60);

#[test]
fn a_library_built_on_its_own_is_reloaded_in_a_host_built_on_its_own() {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("external").join("Cargo.toml");
    let target = outside_target_dir("external");
    // Each build is its own cargo invocation, as the guide says: the host
    // alone, then the library alone.
    cargo_build_outside(&manifest, &target, &["-p", "greeter-host"], &[]);
    cargo_build_outside(&manifest, &target, &["-p", "greeter-lib"], &[]);
    let library = target.join("debug").join("libgreeter_lib.so");

    let mut host = Host::start(&target.join("debug").join("greeter-host"), &library);
    let agent = ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build(),
    );
    let hello = format!("{}/greeter/hello", host.base);
    assert_eq!(get(&agent, &hello), (200, "Hello, web! (edition 1)".to_owned()));

    // A second edition of the library, built alone again; the running host
    // swaps it in on SIGPIPE.
    cargo_build_outside(&manifest, &target, &["-p", "greeter-lib"], &[("GREETER_EDITION", "edition 2")]);
    // SAFETY: kill(2) on our own child.
    assert_eq!(unsafe { libc::kill(host.child.id() as libc::pid_t, libc::SIGPIPE) }, 0);
    let started = Instant::now();
    let mut last = get(&agent, &hello);
    while last.1 != "Hello, web! (edition 2)" && started.elapsed() < RELOAD_LIMIT {
        std::thread::sleep(Duration::from_millis(100));
        last = get(&agent, &hello);
    }
    assert_eq!(last, (200, "Hello, web! (edition 2)".to_owned()), "the host never served the library built alone");
    assert!(matches!(host.child.try_wait(), Ok(None)), "the host process keeps running");
    host.stop();
}

fn get(agent: &ureq::Agent, url: &str) -> (u16, String) {
    let mut response = agent.get(url).call().unwrap_or_else(|e| panic!("GET {url}: {e}"));
    let status = response.status().as_u16();
    (status, response.body_mut().read_to_string().unwrap_or_else(|e| panic!("read the body of {url}: {e}")))
}

/// The running greeter host, killed when dropped.
struct Host {
    child: Child,
    base: String,
}

impl Host {
    /// Starts `exe 127.0.0.1:0 library` and waits for its "listening on" line.
    fn start(exe: &Path, library: &Path) -> Host {
        let mut child = Command::new(exe)
            .arg("127.0.0.1:0")
            .arg(library)
            .env("RUST_LOG", "info")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("start {}: {e}", exe.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        // Reads stdout to the end, so the host never writes into a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut host = Host { child, base: String::new() };
        let started = Instant::now();
        // Its log (tracing-subscriber's fmt) goes to stdout too.
        loop {
            let left = STARTUP_LIMIT.saturating_sub(started.elapsed());
            let line = received
                .recv_timeout(left)
                .unwrap_or_else(|e| panic!("greeter-host printed no address within {STARTUP_LIMIT:?} ({e})"));
            println!("greeter-host: {line}");
            if let Some(rest) = line.strip_prefix("greeter-host listening on ") {
                host.base = rest.split(' ').next().unwrap_or_default().to_owned();
                return host;
            }
        }
    }

    fn stop(mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
