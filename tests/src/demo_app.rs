//! The demo's binary as a child process: `target/<profile>/demo-app`, built
//! by `cargo build --workspace`, run with a manifest of its own (the shop
//! alone, from `target/<profile>/libshop_lib.so`), a free port and a
//! private pid file, so that tests see its real stderr, signals and
//! notifications. Cheaper than `tests/demo.rs`, which builds a copy of the
//! workspace with the real scripts.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use crate::artifact_dir;

/// How long the demo may take to print its "listening" line: a hang
/// guard, never a performance assertion.
pub const START_GUARD: Duration = Duration::from_secs(120);

/// A running `demo-app`; killed when dropped.
pub struct DemoApp {
    child: Child,
    dir: tempfile::TempDir,
    /// `http://127.0.0.1:PORT`.
    pub base: String,
    /// The demo's pid.
    pub pid: u32,
}

impl DemoApp {
    /// Starts the demo with `envs` added to its environment (and
    /// `RUST_LOG=info` unless `envs` sets it), waits until it listens.
    /// Its stderr goes to a file ([`DemoApp::stderr`]).
    pub fn start(envs: &[(&str, &str)]) -> DemoApp {
        let dir = tempfile::tempdir().expect("a temporary directory for the demo");
        let library = artifact_dir().join("libshop_lib.so");
        let binary = artifact_dir().join("demo-app");
        for built in [&library, &binary] {
            assert!(
                built.is_file(),
                "{} is missing: build it first with `cargo build --workspace` (scripts/test does)",
                built.display()
            );
        }
        let manifest = dir.path().join("verdant.toml");
        let text =
            format!("[[loadable]]\nname = \"shop\"\npath = {:?}\nmount = \"/shop\"\n", library.display().to_string());
        std::fs::write(&manifest, text).expect("write the demo's manifest");
        let stderr = std::fs::File::create(dir.path().join("stderr")).expect("create the demo's stderr file");
        let mut command = Command::new(&binary);
        command
            .arg("--addr")
            .arg("127.0.0.1:0")
            .arg("--manifest")
            .arg(&manifest)
            .arg("--pid-file")
            .arg(dir.path().join("demo-app.pid"))
            .env("RUST_LOG", "info")
            .env_remove("NOTIFY_SOCKET")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::from(stderr));
        for (name, value) in envs {
            command.env(name, value);
        }
        let mut child = command.spawn().unwrap_or_else(|e| panic!("start {}: {e}", binary.display()));
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        // Reads stdout to the end, so the demo never writes into a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let started = Instant::now();
        let mut demo = DemoApp { child, dir, base: String::new(), pid: 0 };
        loop {
            let left = START_GUARD.saturating_sub(started.elapsed());
            match received.recv_timeout(left) {
                Ok(line) => {
                    if let Some((base, pid)) = parse_listening(&line) {
                        demo.base = base;
                        demo.pid = pid;
                        return demo;
                    }
                }
                Err(_) => {
                    panic!("demo-app was not listening (it printed no listening line); its stderr:\n{}", demo.stderr())
                }
            }
        }
    }

    /// The temporary directory holding the manifest, the pid file and stderr.
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }

    /// Everything the demo wrote to stderr so far.
    pub fn stderr(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("stderr")).unwrap_or_default()
    }

    /// Sends SIGTERM and waits for the exit (bounded by [`START_GUARD`]).
    pub fn terminate(mut self) -> (ExitStatus, String) {
        // SAFETY: kill(2) on our own child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < START_GUARD {
            if let Some(status) = self.child.try_wait().expect("wait for demo-app") {
                return (status, self.stderr());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        panic!("demo-app did not exit after SIGTERM; its stderr:\n{}", self.stderr());
    }
}

impl Drop for DemoApp {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
    }
}

/// `verdant demo listening on http://127.0.0.1:PORT (pid N)` -> (base URL, pid).
fn parse_listening(line: &str) -> Option<(String, u32)> {
    let rest = line.strip_prefix("verdant demo listening on ")?;
    let (base, pid) = rest.split_once(" (pid ")?;
    Some((base.to_owned(), pid.strip_suffix(')')?.parse().ok()?))
}
