//! Command-line arguments, parsed by hand.

use std::path::{Path, PathBuf};

/// The usage text printed by `--help` and after an argument error.
pub const USAGE: &str = "\
usage: demo-app [--addr HOST:PORT] [--manifest PATH] [--pid-file PATH]

  --addr HOST:PORT   where to listen (default 127.0.0.1:3000; port 0 picks a free port)
  --manifest PATH    the manifest listing the libraries to run (default: verdant.toml
                     next to this executable, written with the shop alone if missing)
  --pid-file PATH    where to write this process's pid for scripts/reload
                     (default: demo-app.pid next to this executable)
  -h, --help         print this text

After a rebuild or an edit of the manifest, `kill -PIPE <pid>` re-reads the
manifest and reloads what changed (scripts/reload rebuilds the shop first).";

/// The demo's settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Args {
    /// The address to bind.
    pub addr: String,
    /// The manifest listing the loadables.
    pub manifest: PathBuf,
    /// Whether `manifest` is the default (written if missing) rather than
    /// one the user named (which must exist).
    pub default_manifest: bool,
    /// Where to write the pid.
    pub pid_file: PathBuf,
}

/// What the command line asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Run the service.
    Run(Args),
    /// Print the usage text and exit.
    Help,
}

/// Parses the arguments after the program name. `exe_dir` is the directory
/// the defaults for `--manifest` and `--pid-file` are relative to.
///
/// Both `--flag value` and `--flag=value` are accepted.
pub fn parse(args: impl IntoIterator<Item = String>, exe_dir: &Path) -> Result<Command, String> {
    let mut addr = None;
    let mut manifest = None;
    let mut pid_file = None;
    let mut args = args.into_iter();
    while let Some(arg) = args.next() {
        let (flag, inline) = match arg.split_once('=') {
            Some((flag, value)) if flag.starts_with("--") => (flag.to_owned(), Some(value.to_owned())),
            _ => (arg.clone(), None),
        };
        let slot = match flag.as_str() {
            "-h" | "--help" if inline.is_none() => return Ok(Command::Help),
            "--addr" => &mut addr,
            "--manifest" => &mut manifest,
            "--pid-file" => &mut pid_file,
            _ => return Err(format!("unknown argument `{arg}`")),
        };
        let value = match inline {
            Some(value) => value,
            None => args.next().ok_or_else(|| format!("{flag} needs a value"))?,
        };
        if value.is_empty() {
            return Err(format!("{flag} needs a non-empty value"));
        }
        if slot.replace(value).is_some() {
            return Err(format!("{flag} given twice"));
        }
    }
    Ok(Command::Run(Args {
        addr: addr.unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
        default_manifest: manifest.is_none(),
        manifest: manifest.map_or_else(|| exe_dir.join("verdant.toml"), PathBuf::from),
        pid_file: pid_file.map_or_else(|| exe_dir.join("demo-app.pid"), PathBuf::from),
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn run(args: &[&str]) -> Result<Command, String> {
        parse(args.iter().map(|s| s.to_string()), Path::new("/opt/demo"))
    }

    #[test]
    fn defaults_sit_next_to_the_executable() {
        assert_eq!(
            run(&[]),
            Ok(Command::Run(Args {
                addr: "127.0.0.1:3000".to_owned(),
                manifest: PathBuf::from("/opt/demo/verdant.toml"),
                default_manifest: true,
                pid_file: PathBuf::from("/opt/demo/demo-app.pid"),
            }))
        );
    }

    #[test]
    fn both_value_styles_work() {
        let Ok(Command::Run(args)) = run(&["--addr", "127.0.0.1:0", "--manifest=/x/v.toml", "--pid-file", "p"]) else {
            panic!("should parse");
        };
        assert_eq!(args.addr, "127.0.0.1:0");
        assert_eq!((args.manifest, args.default_manifest), (PathBuf::from("/x/v.toml"), false));
        assert_eq!(args.pid_file, PathBuf::from("p"));
    }

    #[test]
    fn mistakes_are_named() {
        assert_eq!(run(&["--port", "1"]), Err("unknown argument `--port`".to_owned()));
        assert_eq!(run(&["--addr"]), Err("--addr needs a value".to_owned()));
        assert_eq!(run(&["--addr", "a", "--addr=b"]), Err("--addr given twice".to_owned()));
        assert_eq!(run(&["-h"]), Ok(Command::Help));
    }
}
