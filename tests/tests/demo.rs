//! End-to-end: the real demo served by the real `scripts/demo`, hot-swapped
//! by the real `scripts/reload`.
//!
//! The test works in a copy of the workspace (`<target>/demo-e2e/workspace`,
//! synced from the repository's tracked and untracked-but-not-ignored files
//! on every run) with its own target directory (`<target>/demo-e2e/target`).
//! The copy is where it may bump `shop-lib`'s version, and the separate
//! target directory means its builds never wait on the build lock of the
//! `cargo` that runs this test. Both persist between runs, so only the first
//! run compiles tokio and axum (a minute or two).

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc::{self, RecvTimeoutError};
use std::time::{Duration, Instant};

/// How long the first `scripts/demo` may take to build and start: a cold
/// build of tokio and axum on a busy 2-core machine.
const STARTUP_LIMIT: Duration = Duration::from_secs(20 * 60);
/// Polls after `scripts/reload` returned, and the pause between them.
const RELOAD_POLLS: u32 = 60;
const POLL_PAUSE: Duration = Duration::from_millis(500);

#[test]
fn demo_serves_and_hot_reloads_through_scripts() {
    let (workspace, copy_target, _lock) = workspace_copy();
    // The last run may have left 0.1.1 in `deps/libshop_lib.so` while cargo
    // calls the 0.1.0 build fresh (a cdylib's file name carries no hash):
    // scripts/demo and scripts/reload must serve what is checked out anyway.
    let agent = http_agent();
    // The demo's manifest as the repository ships it (a run before this one
    // may have left an edited copy in the target directory).
    let manifest = copy_target.join("debug").join("verdant.toml");
    let shipped =
        std::fs::read_to_string(workspace.join("demo-app").join("verdant.toml")).expect("the shipped manifest");
    // The copy's target directory is empty on the first run: make its profile
    // directory, where the demo looks for its manifest.
    std::fs::create_dir_all(copy_target.join("debug")).expect("create the copy's target/debug");
    std::fs::write(&manifest, &shipped).expect("reset the demo's manifest");

    let mut demo = Demo::start(&workspace, &copy_target);
    let base = demo.base.clone();
    println!("demo started: {base} (pid {})", demo.pid);
    let pid_file = copy_target.join("debug").join("demo-app.pid");
    assert_eq!(read_trimmed(&pid_file), demo.pid.to_string(), "the pid file holds the demo's pid");

    // The routes, served by shop-lib 0.1.0's own router, mounted under /shop.
    let hello = get(&agent, &format!("{base}/shop/hello")).expect("GET /shop/hello");
    assert_eq!(hello.status, 200, "{hello:?}");
    assert!(hello.body.contains("Hello, you!") && hello.body.contains("shop-lib 0.1.0"), "{hello:?}");
    assert_eq!(hello.shop_lib_version.as_deref(), Some("0.1.0"), "the library stamps its answers: {hello:?}");
    assert_eq!(hello.generation, Some(1), "the host stamps the generation that answered: {hello:?}");
    let named = get(&agent, &format!("{base}/shop/hello?who=Ada")).expect("GET /shop/hello?who=Ada");
    assert!(named.body.contains("Hello, Ada!"), "{named:?}");
    let quote = get(&agent, &format!("{base}/shop/quote/coffee?qty=3")).expect("GET /shop/quote/coffee");
    assert_eq!((quote.status, quote.body.trim()), (200, "3 x coffee at 4.20 EUR = 12.60 EUR"), "{quote:?}");
    assert_eq!(quote.shop_lib_version.as_deref(), Some("0.1.0"), "{quote:?}");
    let unknown = get(&agent, &format!("{base}/shop/quote/tofu")).expect("GET /shop/quote/tofu");
    assert_eq!(unknown.status, 404, "{unknown:?}");
    let bad_qty = get(&agent, &format!("{base}/shop/quote/tea?qty=many")).expect("GET /shop/quote/tea?qty=many");
    assert_eq!(bad_qty.status, 400, "{bad_qty:?}");
    let zero = get(&agent, &format!("{base}/shop/quote/tea?qty=0")).expect("GET /shop/quote/tea?qty=0");
    assert_eq!(zero.status, 400, "{zero:?}");
    // A streaming body made by the library, one line per article.
    let catalog = get(&agent, &format!("{base}/shop/catalog?delay_ms=5")).expect("GET /shop/catalog");
    assert_eq!(catalog.status, 200, "{catalog:?}");
    assert_eq!(catalog.body.lines().count(), 4, "{catalog:?}");
    assert!(catalog.body.starts_with("coffee 4.20 EUR\n"), "{catalog:?}");
    // The library panics inside the handler; verdant contains the panic in
    // the library and answers 500 (the panic message goes to the log only).
    let boom = get(&agent, &format!("{base}/shop/quote/boom")).expect("GET /shop/quote/boom");
    assert_eq!(boom.status, 500, "a library panic answers 500: {boom:?}");
    assert!(boom.body.contains("loadable `shop`"), "the 500 names the loadable: {boom:?}");
    assert!(demo.is_running(), "the process survived the library panic");
    let again = get(&agent, &format!("{base}/shop/quote/coffee?qty=1")).expect("GET /shop/quote/coffee after boom");
    assert_eq!((again.status, again.body.trim()), (200, "1 x coffee at 4.20 EUR = 4.20 EUR"), "{again:?}");
    // Unknown paths: inside the shop's namespace the library's router answers,
    // elsewhere the host's.
    let no_shop_route = get(&agent, &format!("{base}/shop/no/such/path")).expect("GET /shop/no/such/path");
    assert_eq!(no_shop_route.status, 404, "{no_shop_route:?}");
    assert_eq!(no_shop_route.shop_lib_version.as_deref(), Some("0.1.0"), "{no_shop_route:?}");
    let nowhere = get(&agent, &format!("{base}/no/such/path")).expect("GET /no/such/path");
    assert_eq!(nowhere.status, 404, "{nowhere:?}");
    assert!(nowhere.body.contains("no route for GET /no/such/path"), "{nowhere:?}");
    assert_eq!(nowhere.shop_lib_version, None, "the host's 404 is not the library's: {nowhere:?}");

    // Clients that hang up mid-request must not reload the service
    // (docs/boundary.md §6: a broken pipe raises SIGPIPE in the writer itself).
    let addr = base.trim_start_matches("http://");
    hang_up(addr, b"GET /shop/hello HTTP/1.1\r\nHost: demo\r\n");
    hang_up(addr, b"GET /shop/hello HTTP/1.1\r\nHost: demo\r\n\r\n");
    std::thread::sleep(POLL_PAUSE);
    let status = get(&agent, &format!("{base}/verdant/status")).expect("GET /verdant/status");
    assert_eq!(reloads_triggered(&status.body), Some(0), "hang-ups triggered a reload:\n{}", status.body);

    // Bump the library's version in the copy and reload with the script; it
    // builds shop-lib alone, which the workspace-hack makes acceptable.
    let after = reload_to_version(&workspace, &copy_target, Some(demo.pid), &agent, &base, "0.1.1");
    assert_eq!(after.generation, Some(2), "{after:?}");

    // Same process, still serving, and it reloaded exactly once.
    assert!(demo.is_running(), "the demo process must survive the reload");
    assert_eq!(read_trimmed(&pid_file), demo.pid.to_string(), "still the same pid");
    let quote = get(&agent, &format!("{base}/shop/quote/tea?qty=2")).expect("GET /shop/quote/tea after reload");
    assert_eq!((quote.status, quote.body.trim()), (200, "2 x tea at 3.50 EUR = 7.00 EUR"), "{quote:?}");
    assert_eq!(quote.shop_lib_version.as_deref(), Some("0.1.1"), "{quote:?}");
    let boom = get(&agent, &format!("{base}/shop/quote/boom")).expect("GET /shop/quote/boom after reload");
    assert_eq!(boom.status, 500, "the new version's panic is contained too: {boom:?}");
    assert!(demo.is_running(), "the process survived the new version's panic");
    let status = get(&agent, &format!("{base}/verdant/status")).expect("GET /verdant/status");
    println!("{}", status.body);
    assert!(status.body.contains("serving shop-lib 0.1.1"), "{}", status.body);
    assert_eq!(reloads_triggered(&status.body), Some(1), "{}", status.body);

    // Back to a version cargo built before: the answer is that version, not
    // the newer build that cargo's stale artifact still holds.
    let back = reload_to_version(&workspace, &copy_target, Some(demo.pid), &agent, &base, "0.1.0");
    assert_eq!(back.generation, Some(3), "{back:?}");

    // The manifest: list the request-id extension (the lines the shipped
    // manifest has commented out), SIGPIPE, and every answer carries a
    // request id; take it out again and the header is gone.
    let listed = shipped.replace(
        "# [[loadable]]\n# name = \"request-id\"\n# path = \"libdemo_request_id.so\"",
        "[[loadable]]\nname = \"request-id\"\npath = \"libdemo_request_id.so\"",
    );
    assert_ne!(listed, shipped, "the shipped manifest lists request-id, commented out");
    for (text, present) in [(&listed, true), (&shipped, false)] {
        std::fs::write(&manifest, text).expect("edit the demo's manifest");
        // SAFETY: kill(2) with a pid we started and a signal number.
        unsafe { libc::kill(demo.pid as libc::pid_t, libc::SIGPIPE) };
        let mut hello = None;
        for _ in 0..60 {
            let reply = get(&agent, &format!("{base}/shop/hello")).expect("GET /shop/hello after a manifest edit");
            if reply.request_id.is_some() == present {
                hello = Some(reply);
                break;
            }
            std::thread::sleep(POLL_PAUSE);
        }
        let hello = hello.unwrap_or_else(|| panic!("x-request-id present={present} never held after SIGPIPE"));
        assert_eq!(hello.status, 200, "{hello:?}");
        assert_eq!(hello.shop_lib_version.as_deref(), Some("0.1.0"), "the shop is untouched: {hello:?}");
    }
    assert!(demo.is_running(), "the demo process survived the manifest edits");

    // SIGTERM shuts it down gracefully and removes the pid file.
    let exit = demo.terminate(Duration::from_secs(30));
    assert!(exit.success(), "the demo should exit cleanly on SIGTERM: {exit}");
    assert!(!pid_file.exists(), "the demo removes its pid file on shutdown");
}

#[test]
fn a_release_demo_reloads_a_release_library_built_alone() {
    let (workspace, copy_target, _lock) = workspace_copy();
    let agent = http_agent();

    let mut demo = Demo::start_with(&workspace, &copy_target, &["--release"]);
    let base = demo.base.clone();
    let hello = get(&agent, &format!("{base}/shop/hello")).expect("GET /shop/hello");
    assert_eq!(hello.shop_lib_version.as_deref(), Some("0.1.0"), "{hello:?}");
    assert_eq!(read_trimmed(&copy_target.join("release").join("demo-app.pid")), demo.pid.to_string());

    // No pid given: scripts/reload finds the running demo's pid file, and
    // from its executable (target/release/demo-app) the profile to build.
    let after = reload_to_version(&workspace, &copy_target, None, &agent, &base, "0.1.1");
    assert_eq!(after.generation, Some(2), "{after:?}");
    assert!(
        copy_target.join("release").join("libshop_lib.so").is_file(),
        "the library was built with the release profile"
    );
    assert!(demo.is_running());
    let exit = demo.terminate(Duration::from_secs(30));
    assert!(exit.success(), "the demo should exit cleanly on SIGTERM: {exit}");
}

/// The workspace copy and its target directory, synced from the repository,
/// and the lock that keeps other runs out of them until it is dropped:
/// another `cargo nextest run` (say, another checkout's CI) may run these
/// tests at the same time and they share the copy.
fn workspace_copy() -> (PathBuf, PathBuf, std::fs::File) {
    let repo = Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("tests/ lives in the repository root").to_owned();
    let cache = target_dir(&repo).join("demo-e2e");
    let lock = lock_exclusive(&cache.join("lock"));
    let workspace = cache.join("workspace");
    sync_workspace(&repo, &workspace);
    (workspace, cache.join("target"), lock)
}

/// Sets shop-lib's version in the copy to `version`, runs `scripts/reload`
/// (with `pid`, or letting it find the demo), and waits until the demo
/// answers with that version. Returns the first such answer.
fn reload_to_version(
    workspace: &Path,
    copy_target: &Path,
    pid: Option<u32>,
    agent: &ureq::Agent,
    base: &str,
    version: &str,
) -> Reply {
    set_package_version(&workspace.join("shop-lib").join("Cargo.toml"), version);
    let mut reload = Command::new(workspace.join("scripts").join("reload"));
    reload.args(pid.map(|pid| pid.to_string())).env("CARGO_TARGET_DIR", copy_target).current_dir(workspace);
    let status = reload.status().expect("run scripts/reload");
    assert!(status.success(), "scripts/reload failed: {status}");
    let mut last = None;
    for _ in 0..RELOAD_POLLS {
        match get(agent, &format!("{base}/shop/hello")) {
            Ok(reply) if reply.status == 200 && reply.body.contains(&format!("shop-lib {version}")) => {
                assert_eq!(reply.shop_lib_version.as_deref(), Some(version), "{reply:?}");
                return reply;
            }
            other => last = Some(other),
        }
        std::thread::sleep(POLL_PAUSE);
    }
    panic!("the demo never served shop-lib {version} after scripts/reload; last answer: {last:?}");
}

/// `CARGO_TARGET_DIR` (relative to the repository root if relative), else
/// `<repo>/target`.
fn target_dir(repo: &Path) -> PathBuf {
    match std::env::var_os("CARGO_TARGET_DIR") {
        Some(dir) if !dir.is_empty() => repo.join(dir),
        _ => repo.join("target"),
    }
}

/// Blocks until this process holds an exclusive `flock` on `path`; the lock
/// is released when the returned file is closed (also if the test panics or
/// the process dies).
fn lock_exclusive(path: &Path) -> std::fs::File {
    use std::os::fd::AsRawFd;
    if let Some(parent) = path.parent() {
        std::fs::create_dir_all(parent).expect("create the demo-e2e cache directory");
    }
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(path)
        .unwrap_or_else(|e| panic!("open {}: {e}", path.display()));
    // SAFETY: flock(2) on a descriptor this function owns.
    let locked = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX) };
    assert_eq!(locked, 0, "flock {}: {}", path.display(), std::io::Error::last_os_error());
    file
}

/// Makes `dest` hold exactly the repository's files (tracked, plus untracked
/// ones git does not ignore, so work in progress is tested too). Files whose
/// content is unchanged are left alone, keeping their timestamps, so the
/// copy's builds stay incremental.
fn sync_workspace(repo: &Path, dest: &Path) {
    let output = Command::new("git")
        .args(["ls-files", "-z", "--cached", "--others", "--exclude-standard"])
        .current_dir(repo)
        .output()
        .expect("run git ls-files (git must be installed)");
    assert!(output.status.success(), "git ls-files failed: {}", String::from_utf8_lossy(&output.stderr));
    let mut files: BTreeSet<PathBuf> = output
        .stdout
        .split(|&b| b == 0)
        .filter(|name| !name.is_empty())
        .map(|name| PathBuf::from(String::from_utf8(name.to_vec()).expect("UTF-8 file names")))
        // Deleted but still tracked files, and submodule directories.
        .filter(|name| repo.join(name).is_file())
        .collect();
    files.insert(PathBuf::from("Cargo.lock"));

    std::fs::create_dir_all(dest).expect("create the copy's directory");
    for stale in walk(dest).into_iter().filter(|path| !files.contains(path)) {
        std::fs::remove_file(dest.join(&stale)).expect("remove a file the repository no longer has");
    }
    for name in &files {
        let (from, to) = (repo.join(name), dest.join(name));
        let bytes = std::fs::read(&from).unwrap_or_else(|e| panic!("read {}: {e}", from.display()));
        if std::fs::read(&to).ok().as_deref() != Some(&bytes[..]) {
            if let Some(parent) = to.parent() {
                std::fs::create_dir_all(parent).expect("create a directory in the copy");
            }
            std::fs::write(&to, &bytes).unwrap_or_else(|e| panic!("write {}: {e}", to.display()));
        }
        let mode = std::fs::metadata(&from).expect("stat a source file").permissions().mode();
        if std::fs::metadata(&to).expect("stat a copied file").permissions().mode() != mode {
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(mode)).expect("copy a file's mode");
        }
    }
}

/// Every file under `root`, relative to it.
fn walk(root: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut dirs = vec![root.to_owned()];
    while let Some(dir) = dirs.pop() {
        for entry in std::fs::read_dir(&dir).expect("list a directory of the copy") {
            let path = entry.expect("read a directory entry").path();
            if path.is_dir() {
                dirs.push(path);
            } else if let Ok(relative) = path.strip_prefix(root) {
                files.push(relative.to_owned());
            }
        }
    }
    files
}

/// Rewrites the `version` line of the `[package]` table, and nothing else.
fn set_package_version(manifest: &Path, version: &str) {
    let text = std::fs::read_to_string(manifest).expect("read shop-lib/Cargo.toml");
    let mut in_package = false;
    let mut replaced = 0;
    let lines: Vec<String> = text
        .lines()
        .map(|line| {
            let trimmed = line.trim_start();
            if trimmed.starts_with('[') {
                in_package = trimmed.starts_with("[package]");
            } else if in_package && trimmed.split('=').next().map(str::trim) == Some("version") && replaced == 0 {
                replaced += 1;
                return format!("version = \"{version}\"");
            }
            line.to_owned()
        })
        .collect();
    assert_eq!(replaced, 1, "no `version = ...` line in the [package] table of {}", manifest.display());
    std::fs::write(manifest, lines.join("\n") + "\n").expect("write shop-lib/Cargo.toml");
}

fn read_trimmed(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())).trim().to_owned()
}

/// The "N reloads triggered" count of the status report's sigpipe line.
fn reloads_triggered(status: &str) -> Option<u64> {
    let line = status.lines().find(|line| line.trim_start().starts_with("sigpipe:"))?;
    let before = line.split(" reloads triggered").next()?;
    before.rsplit(' ').next()?.parse().ok()
}

/// Opens a connection, sends `bytes`, and hangs up without reading.
fn hang_up(addr: &str, bytes: &[u8]) {
    let mut stream = TcpStream::connect(addr).expect("connect to the demo");
    stream.write_all(bytes).expect("send a partial request");
    let _ = stream.shutdown(std::net::Shutdown::Both);
}

/// The running demo: a child in its own process group, so that dropping the
/// guard also ends a `cargo build` that `scripts/demo` is still running.
struct Demo {
    child: Child,
    pid: u32,
    base: String,
}

impl Demo {
    /// Runs `scripts/demo --addr 127.0.0.1:0` in the copy and waits for its
    /// "listening on" line.
    fn start(workspace: &Path, target: &Path) -> Demo {
        Demo::start_with(workspace, target, &[])
    }

    /// Runs `scripts/demo FIRST_ARGS... --addr 127.0.0.1:0`.
    fn start_with(workspace: &Path, target: &Path, first_args: &[&str]) -> Demo {
        let mut child = Command::new(workspace.join("scripts").join("demo"))
            .args(first_args)
            .args(["--addr", "127.0.0.1:0"])
            .env("CARGO_TARGET_DIR", target)
            // Verdant's report of the `boom` panic carries the library's
            // backtrace when asked; it would drown the log.
            .env("RUST_BACKTRACE", "0")
            .current_dir(workspace)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .expect("start scripts/demo");
        let stdout = child.stdout.take().expect("piped stdout");
        let (lines, received) = mpsc::channel();
        // Reads stdout to the end, so the demo never writes into a closed pipe.
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                let _ = lines.send(line);
            }
        });
        let mut demo = Demo { child, pid: 0, base: String::new() };
        let started = Instant::now();
        loop {
            let left = STARTUP_LIMIT.saturating_sub(started.elapsed());
            match received.recv_timeout(left) {
                Ok(line) => {
                    println!("demo stdout: {line}");
                    if let Some((base, pid)) = parse_listening(&line) {
                        assert_eq!(pid, demo.child.id(), "scripts/demo execs demo-app, so the pids match");
                        demo.pid = pid;
                        demo.base = base;
                        return demo;
                    }
                }
                Err(RecvTimeoutError::Disconnected) => {
                    let status = demo.child.wait().expect("wait for scripts/demo");
                    panic!("scripts/demo exited ({status}) before it was listening; see its stderr above");
                }
                Err(RecvTimeoutError::Timeout) => panic!("scripts/demo was not listening after {STARTUP_LIMIT:?}"),
            }
        }
    }

    fn is_running(&mut self) -> bool {
        matches!(self.child.try_wait(), Ok(None))
    }

    /// Sends SIGTERM and waits (bounded) for the exit status.
    fn terminate(mut self, limit: Duration) -> ExitStatus {
        // SAFETY: plain kill(2) on our own child.
        unsafe { libc::kill(self.pid as libc::pid_t, libc::SIGTERM) };
        let started = Instant::now();
        while started.elapsed() < limit {
            if let Some(status) = self.child.try_wait().expect("wait for the demo") {
                return status;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!("the demo did not exit within {limit:?} of SIGTERM");
    }
}

impl Drop for Demo {
    fn drop(&mut self) {
        if let Ok(None) = self.child.try_wait() {
            // SAFETY: kill(2) on the process group the child leads.
            unsafe { libc::kill(-(self.child.id() as libc::pid_t), libc::SIGKILL) };
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

#[derive(Debug)]
struct Reply {
    status: u16,
    /// The `x-shop-lib-version` header: which library version answered.
    shop_lib_version: Option<String>,
    /// The `x-verdant-generation` header the host stamps on library answers.
    generation: Option<u64>,
    /// The `x-request-id` header the request-id extension stamps.
    request_id: Option<String>,
    body: String,
}

fn http_agent() -> ureq::Agent {
    ureq::Agent::new_with_config(
        ureq::Agent::config_builder().http_status_as_error(false).timeout_global(Some(Duration::from_secs(10))).build(),
    )
}

fn get(agent: &ureq::Agent, url: &str) -> Result<Reply, ureq::Error> {
    let mut response = agent.get(url).call()?;
    let status = response.status().as_u16();
    let shop_lib_version =
        response.headers().get("x-shop-lib-version").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let generation = response
        .headers()
        .get("x-verdant-generation")
        .and_then(|value| value.to_str().ok())
        .and_then(|value| value.parse().ok());
    let request_id = response.headers().get("x-request-id").and_then(|value| value.to_str().ok()).map(str::to_owned);
    let body = response.body_mut().read_to_string()?;
    Ok(Reply { status, shop_lib_version, generation, request_id, body })
}
