//! Records the exact rustc that compiles this crate.
//!
//! Host and loadable library each link their own copy of `verdant`, so each
//! copy carries the compiler that built it; the loader refuses a library whose
//! rustc differs from the host's before touching any Rust-ABI item. Written by
//! hand because it is one command (`$RUSTC -vV`) and a crate for it would be a
//! build dependency of every loadable.
use std::process::Command;

fn main() {
    let rustc = std::env::var("RUSTC").unwrap_or_else(|_| "rustc".to_owned());
    let version = Command::new(&rustc)
        .arg("-V")
        .output()
        .ok()
        .filter(|out| out.status.success())
        .and_then(|out| String::from_utf8(out.stdout).ok())
        .map(|s| s.trim().to_owned())
        .unwrap_or_else(|| format!("unknown ({rustc} -V failed)"));
    println!("cargo:rustc-env=VERDANT_RUSTC_VERSION={version}");
    println!("cargo:rerun-if-env-changed=RUSTC");
}
