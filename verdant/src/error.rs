//! Errors: what failed, where, and what to do about it.
//!
//! Every error is `Clone` (I/O errors are shared behind an `Arc`) because one
//! reload can answer several coalesced callers.

use std::fmt;
use std::io;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use crate::report::ReloadReport;
use crate::Panicked;

/// A step of the load pipeline, named in every error and timed in every
/// report. In JSON, its name in lower case (`"attach"`).
///
/// ```
/// assert_eq!(verdant::Step::Attach.to_string(), "attach");
/// assert_eq!(serde_json::to_string(&verdant::Step::Attach).unwrap(), r#""attach""#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize)]
#[serde(rename_all = "lowercase")]
#[non_exhaustive]
pub enum Step {
    /// Reading the built artifact and hashing it; only its `fstat` when
    /// its inode, size and times are the serving version's.
    Read,
    /// Checking the bytes that will be the private copy: a complete shared
    /// object for this machine that defines exactly one Verdant descriptor.
    Validate,
    /// Writing the private copy (a fresh inode, [`docs::boundary`](crate::docs::boundary) §5), into a
    /// file made ahead of time where the file system allows (`O_TMPFILE`),
    /// then naming it; only the validated bytes are written, and only the
    /// inode written is opened (checked by its device and inode number),
    /// never whatever file has its name.
    Copy,
    /// `dlopen` and reading the descriptor header; refuses a library built
    /// with `panic = "abort"`, and one whose constructors still hold memory
    /// of the system allocator when the host's allocator is installed.
    Open,
    /// Comparing the `TypeId`s of every crossing type with the host's.
    Check,
    /// Running the attach hook under the time limit.
    Attach,
    /// Swapping the new version in.
    Swap,
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Step::Read => "read",
            Step::Copy => "copy",
            Step::Validate => "validate",
            Step::Open => "open",
            Step::Check => "check",
            Step::Attach => "attach",
            Step::Swap => "swap",
        })
    }
}

/// What was wrong with a library, or with loading it.
///
/// ```
/// # use verdant::LoadError;
/// fn advice(e: &LoadError) -> &'static str {
///     match e {
///         LoadError::Truncated { .. } | LoadError::Empty => "wait for the build to finish, then reload",
///         LoadError::TypeMismatch { .. } => "rebuild the library together with the host",
///         _ => "see the message",
///     }
/// }
/// assert_eq!(advice(&LoadError::Empty), "wait for the build to finish, then reload");
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum LoadError {
    /// The artifact could not be read.
    #[error("cannot read the library: {source}; build it first, or fix the path given to add()")]
    Read {
        /// The underlying I/O error.
        source: Arc<io::Error>,
    },
    /// The private copy could not be written.
    #[error("cannot write the private copy {copy}: {source}")]
    Copy {
        /// Where the copy was to go.
        copy: PathBuf,
        /// The underlying I/O error.
        source: Arc<io::Error>,
    },
    /// The file has no bytes.
    #[error("the file is empty (0 bytes); was it read while the build was still writing it?")]
    Empty,
    /// The file is not ELF at all.
    #[error("not an ELF file ({detail}); the path must name a built cdylib (lib<name>.so)")]
    NotElf {
        /// What the first bytes were.
        detail: String,
    },
    /// An ELF file for another machine or word size.
    #[error("an ELF file for {found}, but this host is {expected}; build the library for the host's target")]
    WrongArchitecture {
        /// The file's machine.
        found: String,
        /// The host's machine.
        expected: String,
    },
    /// An ELF file that is not a shared object.
    #[error("an ELF {found}, not a shared object; build the library with crate-type = [\"cdylib\"]")]
    NotSharedObject {
        /// The file's ELF type.
        found: String,
    },
    /// A segment or table lies past the end of the file.
    #[error("truncated: {detail}; it was probably copied while the build was still writing it: wait for the build, then reload")]
    Truncated {
        /// Which part lies outside the file.
        detail: String,
    },
    /// A structurally broken ELF file.
    #[error("malformed ELF file: {detail}")]
    Malformed {
        /// What the parser rejected.
        detail: String,
    },
    /// No Verdant descriptor is exported.
    #[error("not a Verdant library: it exports no `{symbol}` symbol; add `verdant_loadable::export!(YourType);` to the library crate")]
    NotVerdant {
        /// The symbol that was looked for.
        symbol: &'static str,
    },
    /// More than one descriptor, or one for another descriptor ABI.
    #[error("exports Verdant descriptor(s) {found:?}, but this host reads exactly one `{expected}`; rebuild the library against the host's verdant version")]
    DescriptorMismatch {
        /// The descriptor symbols found.
        found: Vec<String>,
        /// The symbol this host reads.
        expected: &'static str,
    },
    /// `dlopen` or `dlsym` failed.
    #[error("dlopen failed: {message}; if the private directory is on a noexec filesystem, choose another with Builder::private_dir")]
    Open {
        /// The dynamic loader's message.
        message: String,
    },
    /// The descriptor's header is wrong.
    #[error("the descriptor symbol does not hold a Verdant descriptor ({detail}); do not define `{symbol}` by hand, use verdant_loadable::export!")]
    BadDescriptor {
        /// The symbol.
        symbol: &'static str,
        /// What was wrong.
        detail: String,
    },
    /// Built by another compiler.
    #[error("built by {library}, host is {host}; rebuild the library with the host's toolchain")]
    RustcMismatch {
        /// The library's `rustc -V`.
        library: String,
        /// The host's `rustc -V`.
        host: String,
    },
    /// Built against another verdant.
    #[error("built with verdant {library}, host uses verdant {host}; rebuild the library against the host's verdant")]
    VerdantMismatch {
        /// The library's verdant version.
        library: String,
        /// The host's verdant version.
        host: String,
    },
    /// The library was built with `panic = "abort"`.
    #[error("package `{package}` was built with panic = \"abort\": its first panic would abort the whole service instead of failing one call, because no guard can catch it; build it with panic = \"unwind\" (remove `panic = \"abort\"` from the [profile] it is built with)")]
    PanicAbort {
        /// The library's package name, from its descriptor.
        package: String,
    },
    /// The library's constructors allocated memory that they still hold
    /// before the host's allocator was installed.
    #[error("the library allocated {blocks} time(s) in its constructors (code that `dlopen` runs: `.init_array` entries, the `ctor` crate, static initialisers) before Verdant could hand it the host's allocator, and still holds that memory; the host's allocator would later free memory it never allocated (heap corruption). Remove the constructor, or do that work in the attach hook")]
    ConstructorAllocated {
        /// How many blocks from the system allocator the constructors still
        /// held when the host's allocator was installed.
        blocks: usize,
    },
    /// A crossing type differs between host and library: the two were built
    /// with another version or feature set of some crate.
    #[error("the build of crate `{crate_name}` differs between host and library: its {role} type `{host_type}` is another type in the library (`{library_type}`){}. Cargo resolved another version or feature set for `{crate_name}`, or for a crate it depends on, than for the host; the crates built on it differ with it. Build host and library in one cargo invocation (`cargo build -p <host> -p <library>`), or give the workspace a workspace-hack crate (cargo-hakari) so that every build, even `cargo build -p <library>` alone, resolves one feature set; see verdant::docs::embedding", also_differ(.also))]
    TypeMismatch {
        /// The crate of the first crossing type that differs, in dependency
        /// order (leaves first): the crate whose build differs, or one of
        /// its dependencies does.
        crate_name: String,
        /// What the type is for (the first role that differs).
        role: String,
        /// The host's type name.
        host_type: String,
        /// The library's type name.
        library_type: String,
        /// Every later crossing type that differs too, as `role (type)`.
        also: Vec<String>,
    },
    /// The attach hook returned an error.
    #[error("the attach hook returned an error: {message}")]
    AttachFailed {
        /// The hook's message.
        message: String,
    },
    /// The attach hook panicked (caught in the library).
    #[error("the attach hook panicked: {message}")]
    AttachPanicked {
        /// The panic message.
        message: String,
    },
    /// The attach hook did not return in time.
    #[error("the attach hook did not return within {limit:?}; its thread `{thread}` was abandoned (see status().stuck_attaches); raise Builder::attach_timeout if attach is legitimately slow")]
    AttachTimedOut {
        /// The configured limit.
        limit: Duration,
        /// The abandoned thread's name.
        thread: String,
    },
    /// The attach thread could not be started.
    #[error("cannot start the attach thread: {source}")]
    Thread {
        /// The underlying I/O error.
        source: Arc<io::Error>,
    },
    /// The registry was revoked while the reload ran.
    #[error("the registry was revoked while this reload ran")]
    Revoked,
}

/// One loadable's failure: which loadable, at which step, with which file.
#[derive(Debug, Clone, thiserror::Error)]
#[error("loadable `{loadable}` failed at step `{step}` ({path}): {kind}", path = .path.display())]
pub struct StepError {
    /// The loadable's name.
    pub loadable: String,
    /// The step that failed.
    pub step: Step,
    /// The artifact path registered for the loadable.
    pub path: PathBuf,
    /// What went wrong.
    #[source]
    pub kind: LoadError,
}

/// A reload or attach in which at least one loadable failed, returned as an
/// error in strict mode ([`Builder::strict`](crate::Builder::strict)).
///
/// Every loadable, or [group](crate::Builder::group), is its own unit: a
/// failed unit keeps the versions it had (or stays unattached), and every
/// other unit was applied all the same. The report shows which: the
/// loadables that were swapped in are `Swapped` there and serve now.
///
/// Displays as the whole story: which transaction, what now serves, and the
/// first failure's loadable, step and cause.
///
/// ```
/// # fn show(error: &verdant::Error) {
/// if let Some(failure) = error.as_reload_failure() {
///     eprintln!("first failure: {}", failure.error);
///     for (name, error) in failure.report.failures() {
///         eprintln!("{name} failed at {}", error.step);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{} #{} failed, {}: {error}", .report.trigger.verb(), .report.generation, .report.consequence())]
pub struct ReloadFailure {
    /// The first failure, in registration order.
    #[source]
    pub error: StepError,
    /// The full report, with every loadable's outcome and step times,
    /// including the units that did commit.
    pub report: ReloadReport,
}

/// Errors of the registry API.
#[derive(Debug, Clone, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// The manifest does not parse or validate (or cannot be read); nothing
    /// was changed.
    #[error("{0}; nothing was changed: fix the manifest and reload again")]
    Manifest(#[from] crate::manifest::ManifestError),
    /// `Builder::mount` with a mount that cannot be a path prefix.
    #[error("loadable `{name}`: {reason}")]
    InvalidMount {
        /// The loadable.
        name: String,
        /// The mount as given.
        mount: String,
        /// What is wrong and how to write it.
        reason: String,
    },
    /// `add` with a name that is already registered.
    #[error("a loadable named `{name}` is already registered; names must be unique")]
    DuplicateName {
        /// The name.
        name: String,
    },
    /// No loadable has this name.
    #[error("no loadable named `{name}` (registered: {})", list(.registered))]
    UnknownLoadable {
        /// The name asked for.
        name: String,
        /// The names that exist.
        registered: Vec<String>,
    },
    /// `handle::<I>` with an interface other than the one given to `add`.
    #[error("loadable `{name}` serves `{actual}`, not `{requested}`")]
    WrongInterface {
        /// The loadable.
        name: String,
        /// The interface asked for.
        requested: &'static str,
        /// The interface it was added with.
        actual: &'static str,
    },
    /// A reload filter matched nothing (strict mode).
    #[error("reload filter `{filter}` matches no loadable (registered: {})", list(.registered))]
    NoMatch {
        /// The filter.
        filter: String,
        /// The names that exist.
        registered: Vec<String>,
    },
    /// A glob or regex filter that does not parse.
    #[error("invalid reload filter `{filter}`: {reason}")]
    InvalidFilter {
        /// The filter text.
        filter: String,
        /// The parser's message.
        reason: String,
    },
    /// Strict mode: a reload or attach in which at least one loadable
    /// failed. The failed units keep their previous versions; the others
    /// were applied, as the failure's report shows.
    #[error(transparent)]
    Reload(Box<ReloadFailure>),
    /// [`Builder::group`](crate::Builder::group) names a loadable that was
    /// not added to the builder.
    #[error("group `{group}` names `{name}`, which is not a loadable of this builder (registered: {}); add it with Builder::add, or fix the name", list(.registered))]
    UnknownGroupMember {
        /// The group.
        group: String,
        /// The name that matches no loadable.
        name: String,
        /// The names that exist.
        registered: Vec<String>,
    },
    /// A loadable named by two [groups](crate::Builder::group).
    #[error("loadable `{name}` is in two groups, `{first}` and `{second}`; a loadable can be in one group only: merge the groups or take it out of one")]
    GroupConflict {
        /// The loadable.
        name: String,
        /// The group that named it first.
        first: String,
        /// The other group.
        second: String,
    },
    /// Two [`Builder::group`](crate::Builder::group) calls with the same
    /// group name.
    #[error("group `{group}` is defined twice; list all of its members in one Builder::group call")]
    DuplicateGroup {
        /// The group.
        group: String,
    },
    /// The registry was revoked.
    #[error("this Verdant registry was revoked; create a new one")]
    Revoked,
    /// The private directory for library copies could not be set up.
    #[error("cannot set up the private directory {path}: {source}; choose another with Builder::private_dir", path = .path.display())]
    PrivateDir {
        /// The directory.
        path: PathBuf,
        /// The underlying I/O error.
        source: Arc<io::Error>,
    },
    /// A background thread could not be started or is gone.
    #[error("verdant's {what} thread is unavailable: {reason}")]
    Worker {
        /// Which thread.
        what: &'static str,
        /// Why.
        reason: String,
    },
    /// The SIGPIPE listener could not be installed.
    #[error("cannot listen for SIGPIPE: {source}")]
    Signal {
        /// The underlying I/O error.
        source: Arc<io::Error>,
    },
    /// `verdant::axum::mount` of a loadable whose name cannot be a URL path
    /// segment.
    #[error("loadable `{name}` cannot be mounted at `/{name}/`: a mounted loadable's name may contain only A-Z, a-z, 0-9, `-`, `.`, `_` and `~`, and may not be `.` or `..`; add it under such a name")]
    InvalidMountName {
        /// The name.
        name: String,
    },
    /// Library code panicked during a call to an interface method; see
    /// [`Panicked`]. The panic was contained in the library and the version
    /// keeps serving other calls.
    #[error(transparent)]
    Panicked(#[from] Panicked),
}

impl Error {
    /// The reload failure, if this error is one.
    ///
    /// ```
    /// # let error = verdant::Error::Revoked;
    /// if let Some(failure) = error.as_reload_failure() {
    ///     eprintln!("{} failed at {}", failure.error.loadable, failure.error.step);
    /// }
    /// ```
    pub fn as_reload_failure(&self) -> Option<&ReloadFailure> {
        match self {
            Error::Reload(failure) => Some(failure),
            _ => None,
        }
    }
}

/// Why a handle could not pin a version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum HandleError {
    /// The loadable has not been attached yet; call `Verdant::attach`.
    #[error("loadable `{name}` is not attached yet; call Verdant::attach() first")]
    NotAttached {
        /// The loadable.
        name: String,
    },
    /// The loadable is not serving because the last transaction that tried
    /// it failed (an attach or a reload); `Verdant::status()` has the
    /// failure in full ([`LoadableStatus::failure`](crate::LoadableStatus::failure)).
    #[error("loadable `{name}` is not serving: {reason}; fix it, then reload (Verdant::reload or kill -PIPE)")]
    AttachFailed {
        /// The loadable.
        name: String,
        /// Which transaction failed, at which step, and why.
        reason: String,
    },
    /// The registry was revoked.
    #[error("loadable `{name}` was revoked")]
    Revoked {
        /// The loadable.
        name: String,
    },
}

fn also_differ(also: &[String]) -> String {
    if also.is_empty() {
        String::new()
    } else {
        format!(" (also different: {})", also.join(", "))
    }
}

fn list(names: &[String]) -> String {
    if names.is_empty() {
        "none".to_owned()
    } else {
        names.join(", ")
    }
}

impl LoadError {
    /// A stable, machine-readable name of the variant (`"attach_failed"`),
    /// the `error` field of a [`StepError`] in JSON.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            LoadError::Read { .. } => "read",
            LoadError::Copy { .. } => "copy",
            LoadError::Empty => "empty",
            LoadError::NotElf { .. } => "not_elf",
            LoadError::WrongArchitecture { .. } => "wrong_architecture",
            LoadError::NotSharedObject { .. } => "not_shared_object",
            LoadError::Truncated { .. } => "truncated",
            LoadError::Malformed { .. } => "malformed",
            LoadError::NotVerdant { .. } => "not_verdant",
            LoadError::DescriptorMismatch { .. } => "descriptor_mismatch",
            LoadError::Open { .. } => "open",
            LoadError::BadDescriptor { .. } => "bad_descriptor",
            LoadError::RustcMismatch { .. } => "rustc_mismatch",
            LoadError::VerdantMismatch { .. } => "verdant_mismatch",
            LoadError::PanicAbort { .. } => "panic_abort",
            LoadError::ConstructorAllocated { .. } => "constructor_allocated",
            LoadError::TypeMismatch { .. } => "type_mismatch",
            LoadError::AttachFailed { .. } => "attach_failed",
            LoadError::AttachPanicked { .. } => "attach_panicked",
            LoadError::AttachTimedOut { .. } => "attach_timed_out",
            LoadError::Thread { .. } => "thread",
            LoadError::Revoked => "revoked",
        }
    }
}

/// In JSON: `{"loadable", "step", "path", "error", "cause"}`, where `error`
/// names the kind of failure (`"attach_failed"`, `"truncated"`, ...) and
/// `cause` is its message.
///
/// ```
/// let error = verdant::StepError {
///     loadable: "shop".into(),
///     step: verdant::Step::Read,
///     path: "target/debug/libshop_lib.so".into(),
///     kind: verdant::LoadError::Empty,
/// };
/// let json = serde_json::to_value(&error).unwrap();
/// assert_eq!(json["step"], "read");
/// assert_eq!(json["error"], "empty");
/// assert_eq!(json["path"], "target/debug/libshop_lib.so");
/// ```
impl serde::Serialize for StepError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("StepError", 5)?;
        out.serialize_field("loadable", &self.loadable)?;
        out.serialize_field("step", &self.step)?;
        out.serialize_field("path", &self.path.display().to_string())?;
        out.serialize_field("error", self.kind.code())?;
        out.serialize_field("cause", &self.kind.to_string())?;
        out.end()
    }
}

/// In JSON: `{"error": {..the first failure..}, "report": {..}}`.
impl serde::Serialize for ReloadFailure {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("ReloadFailure", 2)?;
        out.serialize_field("error", &self.error)?;
        out.serialize_field("report", &self.report)?;
        out.end()
    }
}

impl Error {
    /// A stable, machine-readable name of the variant (`"manifest"`), the
    /// `kind` field of an error in JSON.
    pub(crate) fn code(&self) -> &'static str {
        match self {
            Error::Manifest(_) => "manifest",
            Error::InvalidMount { .. } => "invalid_mount",
            Error::DuplicateName { .. } => "duplicate_name",
            Error::UnknownLoadable { .. } => "unknown_loadable",
            Error::WrongInterface { .. } => "wrong_interface",
            Error::NoMatch { .. } => "no_match",
            Error::InvalidFilter { .. } => "invalid_filter",
            Error::Reload(_) => "reload",
            Error::UnknownGroupMember { .. } => "unknown_group_member",
            Error::GroupConflict { .. } => "group_conflict",
            Error::DuplicateGroup { .. } => "duplicate_group",
            Error::Revoked => "revoked",
            Error::PrivateDir { .. } => "private_dir",
            Error::Worker { .. } => "worker",
            Error::Signal { .. } => "signal",
            Error::InvalidMountName { .. } => "invalid_mount_name",
            Error::Panicked(_) => "panicked",
        }
    }
}

/// In JSON: `{"kind": "manifest", "message": "..."}` and, where there is
/// more to say, a field with the details: `manifest` (file, line, column),
/// `failure` (the first failure and the whole report of a strict-mode
/// reload), `filter` and `registered` (a filter that matches nothing or
/// does not parse).
///
/// ```
/// let error = verdant::Error::NoMatch { filter: "shop-*".into(), registered: vec!["cart".into()] };
/// let json = serde_json::to_value(&error).unwrap();
/// assert_eq!(json["kind"], "no_match");
/// assert_eq!(json["filter"], "shop-*");
/// assert!(json["message"].as_str().unwrap().contains("matches no loadable"));
/// ```
impl serde::Serialize for Error {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeMap;
        let mut out = serializer.serialize_map(None)?;
        out.serialize_entry("kind", self.code())?;
        out.serialize_entry("message", &self.to_string())?;
        match self {
            Error::Manifest(manifest) => out.serialize_entry("manifest", manifest)?,
            Error::Reload(failure) => out.serialize_entry("failure", failure)?,
            Error::NoMatch { filter, registered } => {
                out.serialize_entry("filter", filter)?;
                out.serialize_entry("registered", registered)?;
            }
            Error::InvalidFilter { filter, reason } => {
                out.serialize_entry("filter", filter)?;
                out.serialize_entry("reason", reason)?;
            }
            Error::UnknownLoadable { name, registered } => {
                out.serialize_entry("name", name)?;
                out.serialize_entry("registered", registered)?;
            }
            _ => {}
        }
        out.end()
    }
}
