//! Command-line arguments, parsed by hand.

use std::path::{Path, PathBuf};

/// The usage text printed by `--help` and after an argument error.
pub const USAGE: &str = "\
usage: demo-app [--addr HOST:PORT] [--manifest PATH] [--pid-file PATH]
                [--admin-addr HOST:PORT --admin-token-file PATH]

  --addr HOST:PORT          where to listen (default 127.0.0.1:3000; port 0 picks a free port)
  --manifest PATH           the manifest listing the libraries to run (default: verdant.toml
                            next to this executable, written with the shop alone if missing)
  --pid-file PATH           where to write this process's pid for scripts/reload
                            (default: demo-app.pid next to this executable)
  --admin-addr HOST:PORT    serve the admin API (GET /status, POST /reload, GET /metrics)
                            on a listener of its own; bind it to loopback (127.0.0.1:3001).
                            Default: no admin API
  --admin-token-file PATH   the file holding the admin API's bearer token (read at start-up;
                            required with --admin-addr)
  -h, --help                print this text

After a rebuild or an edit of the manifest, `kill -PIPE <pid>` re-reads the
manifest and reloads what changed (scripts/reload rebuilds the shop first);
with the admin API, so does
`curl -X POST -H \"Authorization: Bearer $(cat PATH)\" http://127.0.0.1:3001/reload`.";

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
    /// The admin API, if asked for.
    pub admin: Option<AdminArgs>,
}

/// Where to serve the admin API, and its token.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminArgs {
    /// The address to bind.
    pub addr: String,
    /// The file holding the bearer token.
    pub token_file: PathBuf,
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
    let mut admin_addr = None;
    let mut admin_token_file = None;
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
            "--admin-addr" => &mut admin_addr,
            "--admin-token-file" => &mut admin_token_file,
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
    let admin = match (admin_addr, admin_token_file) {
        (Some(addr), Some(token_file)) => Some(AdminArgs { addr, token_file: PathBuf::from(token_file) }),
        (None, None) => None,
        (Some(_), None) => {
            return Err(
                "--admin-addr needs --admin-token-file: the admin API is never served without a token".to_owned()
            )
        }
        (None, Some(_)) => return Err("--admin-token-file needs --admin-addr: where to serve the admin API".to_owned()),
    };
    Ok(Command::Run(Args {
        addr: addr.unwrap_or_else(|| "127.0.0.1:3000".to_owned()),
        default_manifest: manifest.is_none(),
        manifest: manifest.map_or_else(|| exe_dir.join("verdant.toml"), PathBuf::from),
        pid_file: pid_file.map_or_else(|| exe_dir.join("demo-app.pid"), PathBuf::from),
        admin,
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
                admin: None,
            }))
        );
    }

    #[test]
    fn the_admin_api_needs_an_address_and_a_token_file() {
        let Ok(Command::Run(args)) = run(&["--admin-addr", "127.0.0.1:3001", "--admin-token-file=/run/demo/token"])
        else {
            panic!("should parse");
        };
        let expected = AdminArgs { addr: "127.0.0.1:3001".to_owned(), token_file: PathBuf::from("/run/demo/token") };
        assert_eq!(args.admin, Some(expected));
        let lone_addr = run(&["--admin-addr", "127.0.0.1:3001"]).unwrap_err();
        assert!(lone_addr.contains("needs --admin-token-file"), "{lone_addr}");
        let lone_token = run(&["--admin-token-file", "t"]).unwrap_err();
        assert!(lone_token.contains("needs --admin-addr"), "{lone_token}");
        assert_eq!(run(&["--admin-addr", ""]), Err("--admin-addr needs a non-empty value".to_owned()));
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
