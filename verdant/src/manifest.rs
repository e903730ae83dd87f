//! The manifest: which loadables a service runs, read from a TOML file
//! ([`DEFAULT_MANIFEST`], `verdant.toml`, by default).
//!
//! ```toml
//! [[loadable]]
//! name = "shop"
//! path = "target/debug/libshop_lib.so"   # relative to the manifest's directory
//! mount = "/shop"                        # optional: serve its routes here
//! group = "checkout"                     # optional: loadables of one group reload all-or-nothing
//! [loadable.settings]                    # optional: string settings handed to an HTTP extension's attach hook
//! header = "x-request-id"
//! ```
//!
//! Reading a manifest has two steps:
//!
//! 1. [`Manifest::parse`] checks the text and touches nothing else: TOML
//!    syntax, the known keys and their types, names (unique, made of
//!    `A-Z a-z 0-9 - . _ ~`), mounts (well-formed, none inside another) and
//!    settings (strings only). Relative paths are resolved against the
//!    directory of the manifest file, without looking at the filesystem.
//! 2. [`Manifest::check_files`] checks that every resolved path names an
//!    existing regular file.
//!
//! [`Manifest::load`] reads the file and does both. Every step stops at the
//! first problem, and its [`ManifestError`] names the file, the 1-based line
//! and column, what is wrong and what to do about it:
//!
//! ```
//! use std::path::Path;
//! use verdant::Manifest;
//!
//! let text = r#"[[loadable]]
//! name = "shop"
//! path = "target/debug/libshop_lib.so"
//!
//! [[loadable]]
//! path = "target/debug/libcart_lib.so"
//! name = "shop"
//! "#;
//! let err = Manifest::parse(text, Path::new("verdant.toml")).unwrap_err();
//! assert_eq!(
//!     err.to_string(),
//!     "verdant.toml:7:8: duplicate loadable name `shop` (first declared on line 2): \
//!      every [[loadable]] needs its own name"
//! );
//! ```

use std::collections::btree_map::Entry as MapEntry;
use std::collections::BTreeMap;
use std::io;
use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use serde::Deserialize;
use toml::Spanned;

/// The manifest file a service reads when it is given none: `verdant.toml`,
/// in the service's working directory.
///
/// ```
/// use std::path::Path;
/// use verdant::manifest::DEFAULT_MANIFEST;
///
/// assert_eq!(Path::new(DEFAULT_MANIFEST).extension().unwrap(), "toml");
/// ```
pub const DEFAULT_MANIFEST: &str = "verdant.toml";

/// A checked manifest: the loadables a service runs, in the order of the
/// file.
///
/// Only [`Manifest::parse`] and [`Manifest::load`] make one, so every
/// manifest holds valid, unique names and non-overlapping mounts.
///
/// ```
/// use std::path::Path;
/// use verdant::Manifest;
///
/// let text = r#"
/// [[loadable]]
/// name = "shop"
/// path = "target/debug/libshop_lib.so"
/// mount = "/shop"
/// "#;
/// let manifest = Manifest::parse(text, Path::new("deploy/verdant.toml"))?;
/// assert_eq!(manifest.file(), Path::new("deploy/verdant.toml"));
/// assert_eq!(manifest.loadables()[0].path, Path::new("deploy/target/debug/libshop_lib.so"));
/// # Ok::<(), verdant::ManifestError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Manifest {
    file: PathBuf,
    loadables: Vec<ManifestEntry>,
    /// Where each entry's `path` value is, for [`Manifest::check_files`];
    /// parallel to `loadables`.
    path_positions: Vec<Position>,
}

/// One `[[loadable]]` of a [`Manifest`].
///
/// ```
/// use std::path::Path;
/// use verdant::Manifest;
///
/// let text = r#"
/// [[loadable]]
/// name = "edge"
/// path = "/opt/svc/libedge.so"
/// group = "front"
/// [loadable.settings]
/// header = "x-request-id"
/// "#;
/// let manifest = Manifest::parse(text, Path::new("verdant.toml"))?;
/// let edge = &manifest.loadables()[0];
/// assert_eq!(edge.name, "edge");
/// assert_eq!(edge.path, Path::new("/opt/svc/libedge.so"));
/// assert_eq!(edge.mount, None);
/// assert_eq!(edge.group.as_deref(), Some("front"));
/// assert_eq!(edge.settings["header"], "x-request-id");
/// assert_eq!(edge.line, 3);
/// # Ok::<(), verdant::ManifestError>(())
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ManifestEntry {
    /// The loadable's name: non-empty, only `A-Z a-z 0-9 - . _ ~`, not `.`
    /// or `..`, unique in the manifest.
    pub name: String,
    /// The library to load. A relative `path` in the file is joined to the
    /// manifest file's directory; an absolute one is kept as written.
    pub path: PathBuf,
    /// Where its routes are served, such as `/shop`: starts with `/`, has no
    /// trailing `/`, no empty, `.` or `..` segment and only
    /// `A-Z a-z 0-9 - . _ ~` in its segments. Such a mount is already in
    /// normal form, so it is kept as written. No mount is equal to another
    /// or lies under another.
    pub mount: Option<String>,
    /// Loadables of one group reload all-or-nothing.
    pub group: Option<String>,
    /// String settings handed to an HTTP extension's attach hook.
    pub settings: BTreeMap<String, String>,
    /// The 1-based line of the entry's `name`, for messages.
    pub line: usize,
}

/// A 1-based line and column in the manifest file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Position {
    line: usize,
    column: usize,
}

impl Manifest {
    /// Reads the manifest at `path`, [parses](Manifest::parse) it and
    /// [checks](Manifest::check_files) that every library it names is a
    /// regular file.
    ///
    /// An unreadable file gives a [`ManifestErrorKind::Read`] error, whose
    /// line and column are 0.
    ///
    /// ```
    /// use verdant::Manifest;
    ///
    /// let dir = tempfile::tempdir()?;
    /// std::fs::write(dir.path().join("libshop.so"), b"")?;
    /// let file = dir.path().join("verdant.toml");
    /// std::fs::write(&file, "[[loadable]]\nname = \"shop\"\npath = \"libshop.so\"\n")?;
    ///
    /// let manifest = Manifest::load(&file)?;
    /// assert_eq!(manifest.loadables()[0].path, dir.path().join("libshop.so"));
    ///
    /// let missing = Manifest::load(&dir.path().join("nope.toml")).unwrap_err();
    /// assert_eq!(missing.kind(), verdant::manifest::ManifestErrorKind::Read);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn load(path: &Path) -> Result<Manifest, ManifestError> {
        let text = std::fs::read_to_string(path).map_err(|source| ManifestError::read(path, source))?;
        let manifest = Manifest::parse(&text, path)?;
        manifest.check_files()?;
        Ok(manifest)
    }

    /// Parses and checks `text` as if it were the contents of `file`.
    ///
    /// Pure: it reads nothing, not even `file`, which only names the file in
    /// errors and gives the directory that relative library paths are
    /// joined to. [`Manifest::check_files`] is the step that looks at the
    /// libraries. An empty text is a valid manifest with no loadables.
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// assert!(Manifest::parse("", Path::new("verdant.toml"))?.loadables().is_empty());
    ///
    /// let text = "[[loadable]]\nname = \"shop\"\npath = \"libshop.so\"\nmount = \"shop\"\n";
    /// let err = Manifest::parse(text, Path::new("verdant.toml")).unwrap_err();
    /// assert_eq!((err.line(), err.column()), (4, 9));
    /// assert!(err.to_string().starts_with("verdant.toml:4:9: mount `shop` must start with `/`"));
    /// # Ok::<(), verdant::ManifestError>(())
    /// ```
    pub fn parse(text: &str, file: &Path) -> Result<Manifest, ManifestError> {
        Parser { text, file }.parse()
    }

    /// Checks that every library path names an existing regular file (a
    /// symbolic link to one is fine). Stops at the first that does not; the
    /// error points at its `path` value and names the resolved path.
    ///
    /// ```
    /// use verdant::Manifest;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let text = "[[loadable]]\nname = \"shop\"\npath = \"libshop.so\"\n";
    /// let manifest = Manifest::parse(text, &dir.path().join("verdant.toml"))?;
    ///
    /// let err = manifest.check_files().unwrap_err();
    /// assert_eq!((err.line(), err.column()), (3, 8));
    /// assert!(err.to_string().contains("does not exist"));
    ///
    /// std::fs::write(dir.path().join("libshop.so"), b"")?;
    /// manifest.check_files()?;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn check_files(&self) -> Result<(), ManifestError> {
        for (entry, at) in self.loadables.iter().zip(&self.path_positions) {
            let fail = |message: String| ManifestError::at(&self.file, *at, ManifestErrorKind::MissingLibrary, message);
            match std::fs::metadata(&entry.path) {
                Ok(meta) if meta.is_file() => {}
                Ok(meta) => {
                    let what = if meta.is_dir() { "a directory" } else { "not a regular file" };
                    return Err(fail(format!(
                        "library `{}` of loadable `{}` is {what}: `path` must name the built library file (lib<crate>.so)",
                        entry.path.display(),
                        entry.name
                    )));
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    return Err(fail(format!(
                        "library `{}` of loadable `{}` does not exist: build it (`cargo build -p <its crate>`), or fix `path` (relative paths start at the manifest's directory)",
                        entry.path.display(),
                        entry.name
                    )));
                }
                Err(e) => {
                    return Err(fail(format!(
                        "cannot inspect library `{}` of loadable `{}`: {e}; check the path and its permissions",
                        entry.path.display(),
                        entry.name
                    )));
                }
            }
        }
        Ok(())
    }

    /// The manifest file, as given to [`Manifest::load`] or
    /// [`Manifest::parse`].
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let manifest = Manifest::parse("", Path::new("conf/verdant.toml"))?;
    /// assert_eq!(manifest.file(), Path::new("conf/verdant.toml"));
    /// # Ok::<(), verdant::ManifestError>(())
    /// ```
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The loadables, in the order of the file.
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let text = "[[loadable]]\nname = \"a\"\npath = \"liba.so\"\n[[loadable]]\nname = \"b\"\npath = \"libb.so\"\n";
    /// let manifest = Manifest::parse(text, Path::new("verdant.toml"))?;
    /// let names: Vec<&str> = manifest.loadables().iter().map(|e| e.name.as_str()).collect();
    /// assert_eq!(names, ["a", "b"]);
    /// # Ok::<(), verdant::ManifestError>(())
    /// ```
    pub fn loadables(&self) -> &[ManifestEntry] {
        &self.loadables
    }

    /// The loadable called `name`, if the manifest has one.
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let text = "[[loadable]]\nname = \"shop\"\npath = \"libshop.so\"\n";
    /// let manifest = Manifest::parse(text, Path::new("verdant.toml"))?;
    /// assert_eq!(manifest.get("shop").map(|e| e.line), Some(2));
    /// assert!(manifest.get("cart").is_none());
    /// # Ok::<(), verdant::ManifestError>(())
    /// ```
    pub fn get(&self, name: &str) -> Option<&ManifestEntry> {
        self.loadables.iter().find(|e| e.name == name)
    }
}

/// What kind of problem a [`ManifestError`] reports.
///
/// ```
/// use std::path::Path;
/// use verdant::manifest::ManifestErrorKind;
/// use verdant::Manifest;
///
/// let err = Manifest::parse("[[loadable]]\nname = \"a b\"\npath = \"x.so\"\n", Path::new("verdant.toml")).unwrap_err();
/// assert_eq!(err.kind(), ManifestErrorKind::InvalidName);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
#[non_exhaustive]
pub enum ManifestErrorKind {
    /// The manifest file could not be read (missing, unreadable, not UTF-8).
    Read,
    /// The text is not valid TOML.
    Syntax,
    /// Valid TOML, but an unknown key or a value of the wrong type.
    Schema,
    /// A `[[loadable]]` without `name` or `path`, or with an empty `path`.
    MissingField,
    /// A name that is empty, `.`, `..` or has a character outside
    /// `A-Z a-z 0-9 - . _ ~`.
    InvalidName,
    /// A name declared twice.
    DuplicateName,
    /// A mount that is not a normalised path.
    InvalidMount,
    /// A mount equal to an earlier one, or inside or around it.
    OverlappingMount,
    /// A setting whose value is not a string.
    InvalidSetting,
    /// A library path that does not name an existing regular file
    /// ([`Manifest::check_files`]).
    MissingLibrary,
}

/// A problem with a manifest: the file, the 1-based line and column, what is
/// wrong and what to do about it.
///
/// Displays as `file:line:column: message`, or `file: message` for a
/// [`ManifestErrorKind::Read`] error, which has no position (its line and
/// column are 0) and whose [`source`](std::error::Error::source) is the I/O
/// error.
///
/// ```
/// use std::path::Path;
/// use verdant::Manifest;
///
/// let text = "[[loadable]]\nname = \"shop\"\npath = \"a.so\"\nmount = \"/shop\"\n\n\
///             [[loadable]]\nname = \"admin\"\npath = \"b.so\"\nmount = \"/shop/admin\"\n";
/// let err = Manifest::parse(text, Path::new("verdant.toml")).unwrap_err();
/// assert_eq!(err.file(), Path::new("verdant.toml"));
/// assert_eq!((err.line(), err.column()), (9, 9));
/// assert!(err.to_string().starts_with(
///     "verdant.toml:9:9: mount `/shop/admin` overlaps mount `/shop` of loadable `shop` (line 4)"
/// ));
/// ```
#[derive(Debug, Clone, thiserror::Error)]
#[error("{}", self.render())]
pub struct ManifestError {
    file: PathBuf,
    line: usize,
    column: usize,
    kind: ManifestErrorKind,
    message: String,
    #[source]
    source: Option<Arc<io::Error>>,
}

impl ManifestError {
    fn at(file: &Path, at: Position, kind: ManifestErrorKind, message: String) -> ManifestError {
        ManifestError { file: file.to_path_buf(), line: at.line, column: at.column, kind, message, source: None }
    }

    fn read(file: &Path, source: io::Error) -> ManifestError {
        let advice = if source.kind() == io::ErrorKind::NotFound {
            "create it, or give the path of an existing manifest"
        } else {
            "check that it is a readable UTF-8 text file"
        };
        ManifestError {
            file: file.to_path_buf(),
            line: 0,
            column: 0,
            kind: ManifestErrorKind::Read,
            message: format!("cannot read the manifest: {source}; {advice}"),
            source: Some(Arc::new(source)),
        }
    }

    fn render(&self) -> String {
        if self.line == 0 {
            format!("{}: {}", self.file.display(), self.message)
        } else {
            format!("{}:{}:{}: {}", self.file.display(), self.line, self.column, self.message)
        }
    }

    /// The manifest file, as given to [`Manifest::load`] or
    /// [`Manifest::parse`].
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let err = Manifest::parse("[loadable", Path::new("conf/verdant.toml")).unwrap_err();
    /// assert_eq!(err.file(), Path::new("conf/verdant.toml"));
    /// ```
    pub fn file(&self) -> &Path {
        &self.file
    }

    /// The 1-based line of the problem; 0 when the file could not be read.
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let err = Manifest::parse("\n\n[[loadable]]\npath = \"a.so\"\n", Path::new("verdant.toml")).unwrap_err();
    /// assert_eq!(err.line(), 3);
    /// ```
    pub fn line(&self) -> usize {
        self.line
    }

    /// The 1-based column of the problem, counted in characters; 0 when the
    /// file could not be read.
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let err = Manifest::parse("[[loadable]]\nname = \"\"\npath = \"a.so\"\n", Path::new("verdant.toml")).unwrap_err();
    /// assert_eq!((err.line(), err.column()), (2, 8));
    /// ```
    pub fn column(&self) -> usize {
        self.column
    }

    /// What kind of problem this is.
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::manifest::ManifestErrorKind;
    /// use verdant::Manifest;
    ///
    /// let err = Manifest::parse("[[loadable]]\nname = 1\n", Path::new("verdant.toml")).unwrap_err();
    /// assert_eq!(err.kind(), ManifestErrorKind::Schema);
    /// ```
    pub fn kind(&self) -> ManifestErrorKind {
        self.kind
    }

    /// The I/O error of a [`ManifestErrorKind::Read`] error; `None` for
    /// every other kind. It is also the error's
    /// [`source`](std::error::Error::source) (as an `Arc<io::Error>`, so
    /// that the error can be cloned).
    ///
    /// ```
    /// use std::io::ErrorKind;
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let dir = tempfile::tempdir()?;
    /// let err = Manifest::load(&dir.path().join("verdant.toml")).unwrap_err();
    /// assert_eq!(err.io_error().map(|e| e.kind()), Some(ErrorKind::NotFound));
    /// # Ok::<(), std::io::Error>(())
    /// ```
    pub fn io_error(&self) -> Option<&io::Error> {
        self.source.as_deref()
    }

    /// What is wrong and what to do, without the file and position.
    ///
    /// ```
    /// use std::path::Path;
    /// use verdant::Manifest;
    ///
    /// let err = Manifest::parse("[[loadable]]\nname = \"shop\"\n", Path::new("verdant.toml")).unwrap_err();
    /// assert!(err.message().starts_with("loadable `shop` has no `path`"));
    /// ```
    pub fn message(&self) -> &str {
        &self.message
    }
}

/// In JSON: `{"file", "line", "column", "kind", "message"}` (line and column
/// are 1-based; 0 for a file that could not be read).
///
/// ```
/// use std::path::Path;
/// let err = verdant::Manifest::parse("[loadable", Path::new("verdant.toml")).unwrap_err();
/// let json = serde_json::to_value(&err).unwrap();
/// assert_eq!((json["file"].as_str(), json["line"].as_u64()), (Some("verdant.toml"), Some(1)));
/// assert_eq!(json["kind"], "syntax");
/// ```
impl serde::Serialize for ManifestError {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("ManifestError", 5)?;
        out.serialize_field("file", &self.file.display().to_string())?;
        out.serialize_field("line", &self.line)?;
        out.serialize_field("column", &self.column)?;
        out.serialize_field("kind", &self.kind)?;
        out.serialize_field("message", &self.message)?;
        out.end()
    }
}

// The file as written, before any check. Every value keeps its span (byte
// offsets into the text) for the messages; `name` and `path` are optional
// here so that a missing one gets a message of ours rather than serde's.

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    #[serde(default)]
    loadable: Vec<Spanned<RawEntry>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawEntry {
    name: Option<Spanned<String>>,
    path: Option<Spanned<String>>,
    mount: Option<Spanned<String>>,
    group: Option<Spanned<String>>,
    /// Any value, so that a non-string one gets a message of ours.
    settings: Option<BTreeMap<String, Spanned<toml::Value>>>,
}

struct Parser<'a> {
    text: &'a str,
    file: &'a Path,
}

impl Parser<'_> {
    fn parse(&self) -> Result<Manifest, ManifestError> {
        // Two phases, so that a syntax error and a schema error (unknown
        // key, wrong type) can be told apart.
        let de = toml::de::Deserializer::parse(self.text)
            .map_err(|e| self.toml_error(&e, ManifestErrorKind::Syntax, "invalid TOML: ", "fix the syntax here"))?;
        let raw = RawManifest::deserialize(de).map_err(|e| {
            // serde's messages are stable ("unknown field `x`, expected ...",
            // "invalid type: integer `5`, expected a string"); they choose
            // the advice only.
            let message = e.message();
            let advice = if message.starts_with("unknown field") {
                "remove the key or correct its spelling; a [[loadable]] has the keys name, path, mount, group and settings, and the manifest nothing but [[loadable]]s"
            } else if message.ends_with("expected a string") {
                "quote the value: name, path, mount and group are strings"
            } else if message.ends_with("expected a map") {
                "settings are a table: write [loadable.settings] under the [[loadable]], then one key = \"value\" a line"
            } else if message.ends_with("expected a sequence") {
                "write [[loadable]], with two brackets: every loadable is one entry of an array of tables"
            } else {
                "a [[loadable]] has the string keys name, path, mount and group, and a [loadable.settings] table of strings"
            };
            self.toml_error(&e, ManifestErrorKind::Schema, "", advice)
        })?;

        let base = self.file.parent().unwrap_or(Path::new(""));
        let mut loadables: Vec<ManifestEntry> = Vec::with_capacity(raw.loadable.len());
        let mut path_positions = Vec::with_capacity(raw.loadable.len());
        // For each mount so far: its segments, loadable and line.
        let mut mounts: Vec<(Vec<&str>, &str, usize)> = Vec::new();
        let mut names: BTreeMap<&str, usize> = BTreeMap::new();

        for entry in &raw.loadable {
            let entry_at = self.position(entry.span().start);
            let raw_entry = entry.get_ref();

            let Some(name) = &raw_entry.name else {
                let what = match &raw_entry.path {
                    Some(p) => format!(" (the one with path `{}`)", p.get_ref()),
                    None => String::new(),
                };
                return Err(self.error(
                    entry_at,
                    ManifestErrorKind::MissingField,
                    format!("this [[loadable]]{what} has no `name`: add one, such as name = \"shop\""),
                ));
            };
            let name_at = self.position(name.span().start);
            let name_str = name.get_ref().as_str();
            if let Err(problem) = check_name(name_str) {
                return Err(self.error(name_at, ManifestErrorKind::InvalidName, problem));
            }
            match names.entry(name_str) {
                MapEntry::Occupied(first) => {
                    return Err(self.error(
                        name_at,
                        ManifestErrorKind::DuplicateName,
                        format!(
                            "duplicate loadable name `{name_str}` (first declared on line {}): every [[loadable]] needs its own name",
                            first.get()
                        ),
                    ));
                }
                MapEntry::Vacant(slot) => {
                    slot.insert(name_at.line);
                }
            }

            let Some(path) = &raw_entry.path else {
                return Err(self.error(
                    entry_at,
                    ManifestErrorKind::MissingField,
                    format!(
                        "loadable `{name_str}` has no `path`: add the path of its built library, such as path = \"target/debug/lib{}.so\"",
                        name_str.replace(['-', '.', '~'], "_")
                    ),
                ));
            };
            let path_at = self.position(path.span().start);
            if path.get_ref().is_empty() {
                return Err(self.error(
                    path_at,
                    ManifestErrorKind::MissingField,
                    format!("the `path` of loadable `{name_str}` is empty: give the path of its built library"),
                ));
            }
            let written = Path::new(path.get_ref());
            let resolved = if written.is_absolute() { written.to_path_buf() } else { base.join(written) };

            if let Some(mount) = &raw_entry.mount {
                let mount_at = self.position(mount.span().start);
                let mount_str = mount.get_ref().as_str();
                let segments =
                    check_mount(mount_str).map_err(|m| self.error(mount_at, ManifestErrorKind::InvalidMount, m))?;
                for (earlier, earlier_name, earlier_line) in &mounts {
                    let shorter = segments.len().min(earlier.len());
                    if segments[..shorter] != earlier[..shorter] {
                        continue;
                    }
                    let earlier_mount = format!("/{}", earlier.join("/"));
                    let message = if segments.len() == earlier.len() {
                        format!(
                            "mount `{mount_str}` is already the mount of loadable `{earlier_name}` (line {earlier_line}): give each loadable its own mount"
                        )
                    } else {
                        let (outer, inner) = if segments.len() < earlier.len() {
                            (mount_str, earlier_mount.as_str())
                        } else {
                            (earlier_mount.as_str(), mount_str)
                        };
                        format!(
                            "mount `{mount_str}` overlaps mount `{earlier_mount}` of loadable `{earlier_name}` (line {earlier_line}): `{inner}` lies inside `{outer}`, so one would hide routes of the other; mount them side by side, such as `/a` and `/b`"
                        )
                    };
                    return Err(self.error(mount_at, ManifestErrorKind::OverlappingMount, message));
                }
                mounts.push((segments, name_str, mount_at.line));
            }

            let mut settings = BTreeMap::new();
            for (key, value) in raw_entry.settings.iter().flatten() {
                match value.get_ref() {
                    toml::Value::String(s) => {
                        settings.insert(key.clone(), s.clone());
                    }
                    other => {
                        let at = self.position(value.span().start);
                        let raw_value = self.text.get(value.span()).unwrap_or("");
                        let advice = match other {
                            toml::Value::Array(_) | toml::Value::Table(_) => {
                                "write it as one string and split it in the attach hook".to_string()
                            }
                            _ => format!("quote it: {} = {:?}", toml_key(key), raw_value),
                        };
                        return Err(self.error(
                            at,
                            ManifestErrorKind::InvalidSetting,
                            format!(
                                "setting `{key}` of loadable `{name_str}` is {}, but settings are strings: {advice}",
                                value_kind(other)
                            ),
                        ));
                    }
                }
            }

            loadables.push(ManifestEntry {
                name: name_str.to_string(),
                path: resolved,
                mount: raw_entry.mount.as_ref().map(|m| m.get_ref().clone()),
                group: raw_entry.group.as_ref().map(|g| g.get_ref().clone()),
                settings,
                line: name_at.line,
            });
            path_positions.push(path_at);
        }

        Ok(Manifest { file: self.file.to_path_buf(), loadables, path_positions })
    }

    fn position(&self, offset: usize) -> Position {
        let (line, column) = line_column(self.text, offset);
        Position { line, column }
    }

    fn error(&self, at: Position, kind: ManifestErrorKind, message: String) -> ManifestError {
        ManifestError::at(self.file, at, kind, message)
    }

    fn toml_error(&self, e: &toml::de::Error, kind: ManifestErrorKind, prefix: &str, advice: &str) -> ManifestError {
        // toml gives a span for every error it raises on this input; should
        // one come without, the start of the file is the honest fallback.
        let at = self.position(e.span().map_or(0, |s: Range<usize>| s.start));
        let message = e.message().trim_end().trim_end_matches('.');
        self.error(at, kind, format!("{prefix}{message}; {advice}"))
    }
}

/// The 1-based line and column (in characters) of byte `offset` in `text`.
///
/// Hand-written: serde_spanned and toml give byte ranges only (toml computes
/// line and column inside its own `Display`, which it does not expose), and
/// these few lines do not justify another dependency. Safe for any offset,
/// even one inside a multi-byte character or past the end.
fn line_column(text: &str, offset: usize) -> (usize, usize) {
    let mut end = offset.min(text.len());
    // An offset inside a character stands for that character.
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    let before = &text[..end];
    let line_start = before.rfind('\n').map_or(0, |i| i + 1);
    let line = before.matches('\n').count() + 1;
    let column = before[line_start..].chars().count() + 1;
    (line, column)
}

/// The characters allowed in names and mount segments: RFC 3986's
/// unreserved characters, safe in a URL path, a file name and a log line.
fn unreserved(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '.' | '_' | '~')
}

const ALLOWED: &str = "letters A-Z a-z, digits 0-9, '-', '.', '_' and '~'";

fn check_name(name: &str) -> Result<(), String> {
    if name.is_empty() {
        return Err(format!("the loadable name is empty: give it a name made of {ALLOWED}, such as name = \"shop\""));
    }
    if name == "." || name == ".." {
        return Err(format!(
            "`{name}` cannot be a loadable name: choose a name made of {ALLOWED} that is not `.` or `..`"
        ));
    }
    if let Some(bad) = name.chars().find(|&c| !unreserved(c)) {
        return Err(format!("invalid loadable name `{name}`: {:?} is not allowed; use only {ALLOWED}", bad));
    }
    Ok(())
}

/// Checks a mount and returns its segments.
pub(crate) fn check_mount(mount: &str) -> Result<Vec<&str>, String> {
    // What the mount would be with empty segments dropped, for advice.
    let tidy = || {
        let segments: Vec<&str> = mount.split('/').filter(|s| !s.is_empty()).collect();
        format!("/{}", segments.join("/"))
    };
    if !mount.starts_with('/') {
        return Err(format!("mount `{mount}` must start with `/`: write `{}`", tidy()));
    }
    if mount.split('/').all(str::is_empty) {
        return Err(format!(
            "mount `{mount}` would take every route of the service: mount the loadable under a path of its own, such as `/shop`"
        ));
    }
    if mount.ends_with('/') {
        return Err(format!("mount `{mount}` ends with `/`: write `{}`", tidy()));
    }
    let segments: Vec<&str> = mount[1..].split('/').collect();
    for segment in &segments {
        if segment.is_empty() {
            return Err(format!("mount `{mount}` has an empty segment (`//`): write `{}`", tidy()));
        }
        if *segment == "." || *segment == ".." {
            return Err(format!(
                "mount `{mount}` has a `{segment}` segment: a mount is a literal path; write it without `.` and `..` segments"
            ));
        }
        if let Some(bad) = segment.chars().find(|&c| !unreserved(c)) {
            return Err(format!(
                "mount `{mount}` has the character {bad:?}, which is not allowed in a mount; use only {ALLOWED} between the `/`s"
            ));
        }
    }
    Ok(segments)
}

/// `key` as TOML would accept it on the left of `=`.
fn toml_key(key: &str) -> String {
    if !key.is_empty() && key.chars().all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '_') {
        key.to_string()
    } else {
        format!("{key:?}")
    }
}

fn value_kind(value: &toml::Value) -> &'static str {
    match value {
        toml::Value::String(_) => "a string",
        toml::Value::Integer(_) => "an integer",
        toml::Value::Float(_) => "a float",
        toml::Value::Boolean(_) => "a boolean",
        toml::Value::Datetime(_) => "a date-time",
        toml::Value::Array(_) => "an array",
        toml::Value::Table(_) => "a table",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FILE: &str = "verdant.toml";

    fn parse(text: &str) -> Result<Manifest, ManifestError> {
        Manifest::parse(text, Path::new(FILE))
    }

    /// Parses `text`, expects an error of `kind` at `line`:`column` whose
    /// message contains `part`, and returns it.
    #[track_caller]
    fn fails(text: &str, kind: ManifestErrorKind, line: usize, column: usize, part: &str) -> ManifestError {
        let err = match parse(text) {
            Ok(m) => panic!("parsed, expected {kind:?} at {line}:{column}: {m:?}"),
            Err(e) => e,
        };
        assert_eq!((err.kind(), err.line(), err.column()), (kind, line, column), "{err}");
        assert!(err.message().contains(part), "{err:?} lacks {part:?}");
        assert_eq!(err.to_string(), format!("{FILE}:{line}:{column}: {}", err.message()));
        err
    }

    /// One [[loadable]] with a valid name and path, then `extra` lines.
    fn entry(extra: &str) -> String {
        format!("[[loadable]]\nname = \"shop\"\npath = \"libshop.so\"\n{extra}")
    }

    // --- valid manifests ---------------------------------------------------

    #[test]
    fn empty_manifest_has_no_loadables() {
        for text in ["", "\n\n", "# nothing here yet\n", "loadable = []\n"] {
            let manifest = parse(text).expect(text);
            assert!(manifest.loadables().is_empty());
            assert_eq!(manifest.file(), Path::new(FILE));
        }
    }

    #[test]
    fn full_entry_is_read() {
        let text = "# service\n\n[[loadable]]\nname = \"shop\"\npath = \"target/debug/libshop_lib.so\"\nmount = \"/shop\"\ngroup = \"checkout\"\n[loadable.settings]\nheader = \"x-request-id\"\nlimit = \"5\"\n\n[[loadable]]\npath = \"libcart.so\"\nname = \"cart\"\n";
        let manifest = parse(text).unwrap();
        assert_eq!(
            manifest.loadables(),
            [
                ManifestEntry {
                    name: "shop".into(),
                    path: "target/debug/libshop_lib.so".into(),
                    mount: Some("/shop".into()),
                    group: Some("checkout".into()),
                    settings: [("header", "x-request-id"), ("limit", "5")]
                        .into_iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    line: 4,
                },
                ManifestEntry {
                    name: "cart".into(),
                    path: "libcart.so".into(),
                    mount: None,
                    group: None,
                    settings: BTreeMap::new(),
                    line: 14,
                },
            ]
        );
        assert_eq!(manifest.get("cart").map(|e| e.line), Some(14));
        assert!(manifest.get("nope").is_none());
    }

    #[test]
    fn inline_array_of_tables_is_read() {
        let manifest = parse("loadable = [{ name = \"a\", path = \"a.so\", settings = { k = \"v\" } }]\n").unwrap();
        assert_eq!(manifest.loadables()[0].name, "a");
        assert_eq!(manifest.loadables()[0].settings["k"], "v");
        assert_eq!(manifest.loadables()[0].line, 1);
    }

    #[test]
    fn all_allowed_name_characters() {
        let manifest = parse("[[loadable]]\nname = \"Az09-._~\"\npath = \"a.so\"\n").unwrap();
        assert_eq!(manifest.loadables()[0].name, "Az09-._~");
        // A name may contain dots, just not be `.` or `..`.
        parse("[[loadable]]\nname = \"...\"\npath = \"a.so\"\n").unwrap();
    }

    // --- path resolution ---------------------------------------------------

    fn resolved(file: &str, path: &str) -> PathBuf {
        let text = format!("[[loadable]]\nname = \"a\"\npath = {path:?}\n");
        Manifest::parse(&text, Path::new(file)).unwrap().loadables()[0].path.clone()
    }

    #[test]
    fn relative_paths_start_at_the_manifest_directory() {
        assert_eq!(resolved("verdant.toml", "target/debug/liba.so"), Path::new("target/debug/liba.so"));
        assert_eq!(resolved("deploy/verdant.toml", "liba.so"), Path::new("deploy/liba.so"));
        assert_eq!(resolved("/srv/app/verdant.toml", "../lib/liba.so"), Path::new("/srv/app/../lib/liba.so"));
        assert_eq!(resolved("/srv/app/verdant.toml", "./liba.so"), Path::new("/srv/app/./liba.so"));
    }

    #[test]
    fn absolute_paths_are_kept() {
        assert_eq!(resolved("/srv/app/verdant.toml", "/opt/liba.so"), Path::new("/opt/liba.so"));
        assert_eq!(resolved("verdant.toml", "/opt/liba.so"), Path::new("/opt/liba.so"));
    }

    #[test]
    fn load_resolves_against_the_real_directory() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("lib")).unwrap();
        std::fs::write(dir.path().join("lib/liba.so"), b"x").unwrap();
        let absolute = dir.path().join("libabs.so");
        std::fs::write(&absolute, b"x").unwrap();
        let file = dir.path().join("verdant.toml");
        let text = format!(
            "[[loadable]]\nname = \"a\"\npath = \"lib/liba.so\"\n[[loadable]]\nname = \"b\"\npath = {:?}\n",
            absolute.to_str().unwrap()
        );
        std::fs::write(&file, text).unwrap();

        let manifest = Manifest::load(&file).unwrap();
        assert_eq!(manifest.file(), file);
        assert_eq!(manifest.loadables()[0].path, dir.path().join("lib/liba.so"));
        assert_eq!(manifest.loadables()[1].path, absolute);
    }

    // --- reading the file ----------------------------------------------------

    #[test]
    fn missing_manifest_is_a_read_error_without_position() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verdant.toml");
        let err = Manifest::load(&file).unwrap_err();
        assert_eq!((err.kind(), err.line(), err.column()), (ManifestErrorKind::Read, 0, 0));
        assert_eq!(err.file(), file);
        assert!(err.message().starts_with("cannot read the manifest: "), "{err}");
        assert!(err.message().ends_with("create it, or give the path of an existing manifest"), "{err}");
        assert_eq!(err.to_string(), format!("{}: {}", file.display(), err.message()));
        assert_eq!(err.io_error().map(io::Error::kind), Some(io::ErrorKind::NotFound));
        let source = std::error::Error::source(&err).expect("the I/O error is the source");
        assert!(source.downcast_ref::<Arc<io::Error>>().is_some(), "{source:?}");
    }

    #[test]
    fn non_utf8_manifest_is_a_read_error() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verdant.toml");
        std::fs::write(&file, b"name = \"\xff\"\n").unwrap();
        let err = Manifest::load(&file).unwrap_err();
        assert_eq!((err.kind(), err.line(), err.column()), (ManifestErrorKind::Read, 0, 0));
        assert!(err.message().contains("readable UTF-8 text file"), "{err}");
    }

    #[test]
    fn load_reports_parse_errors_with_the_file() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verdant.toml");
        std::fs::write(&file, "[[loadable]]\nname = \"a b\"\npath = \"a.so\"\n").unwrap();
        let err = Manifest::load(&file).unwrap_err();
        assert_eq!((err.kind(), err.line(), err.column()), (ManifestErrorKind::InvalidName, 2, 8));
        assert!(err.to_string().starts_with(&format!("{}:2:8: invalid loadable name `a b`", file.display())));
    }

    // --- TOML syntax, unknown keys, types -------------------------------------

    #[test]
    fn syntax_errors() {
        fails("[[loadable]\n", ManifestErrorKind::Syntax, 1, 12, "invalid TOML: unclosed array table");
        fails("[[loadable]]\nname = \"shop\npath = \"a.so\"\n", ManifestErrorKind::Syntax, 2, 13, "invalid TOML");
        fails(&entry("mount =\n"), ManifestErrorKind::Syntax, 4, 8, "fix the syntax here");
        // A key given twice is a TOML error, caught by the parser.
        fails(&entry("name = \"cart\"\n"), ManifestErrorKind::Syntax, 4, 1, "duplicate key");
    }

    #[test]
    fn unknown_keys() {
        let err = fails(&entry("colour = \"red\"\n"), ManifestErrorKind::Schema, 4, 1, "unknown field `colour`");
        assert!(err.message().contains("remove the key or correct its spelling"), "{err}");
        fails("version = 2\n", ManifestErrorKind::Schema, 1, 1, "unknown field `version`, expected `loadable`");
        fails("[service]\nport = 1\n", ManifestErrorKind::Schema, 1, 2, "unknown field `service`");
        fails("[[loadables]]\nname = \"a\"\n", ManifestErrorKind::Schema, 1, 3, "unknown field `loadables`");
        fails(
            "loadable = [{ name = \"a\", path = \"a.so\", mont = \"/a\" }]\n",
            ManifestErrorKind::Schema,
            1,
            42,
            "unknown field `mont`",
        );
    }

    #[test]
    fn wrong_value_types() {
        fails(
            "[[loadable]]\nname = 5\npath = \"a.so\"\n",
            ManifestErrorKind::Schema,
            2,
            8,
            "invalid type: integer `5`",
        );
        let err = fails(
            "[[loadable]]\nname = \"a\"\npath = [\"a.so\"]\n",
            ManifestErrorKind::Schema,
            3,
            8,
            "invalid type: sequence, expected a string",
        );
        assert!(err.message().ends_with("quote the value: name, path, mount and group are strings"), "{err}");
        fails(&entry("mount = true\n"), ManifestErrorKind::Schema, 4, 9, "invalid type: boolean `true`");
        fails(&entry("group = 1.5\n"), ManifestErrorKind::Schema, 4, 9, "invalid type: floating point `1.5`");
        fails(&entry("settings = \"x\"\n"), ManifestErrorKind::Schema, 4, 12, "write [loadable.settings]");
        fails("[loadable]\nname = \"a\"\npath = \"a.so\"\n", ManifestErrorKind::Schema, 1, 1, "with two brackets");
        fails("loadable = \"a\"\n", ManifestErrorKind::Schema, 1, 12, "expected a sequence");
    }

    // --- missing fields --------------------------------------------------------

    #[test]
    fn missing_name_points_at_the_entry() {
        fails(
            "[[loadable]]\nname = \"a\"\npath = \"a.so\"\n\n[[loadable]]\npath = \"b.so\"\n",
            ManifestErrorKind::MissingField,
            5,
            1,
            "this [[loadable]] (the one with path `b.so`) has no `name`",
        );
        fails("  [[loadable]]\nmount = \"/a\"\n", ManifestErrorKind::MissingField, 1, 3, "has no `name`: add one");
    }

    #[test]
    fn missing_or_empty_path() {
        fails(
            "[[loadable]]\nname = \"shop-v2\"\n",
            ManifestErrorKind::MissingField,
            1,
            1,
            "loadable `shop-v2` has no `path`: add the path of its built library, such as path = \"target/debug/libshop_v2.so\"",
        );
        fails(
            "[[loadable]]\nname = \"a\"\npath = \"\"\n",
            ManifestErrorKind::MissingField,
            3,
            8,
            "the `path` of loadable `a` is empty",
        );
    }

    // --- names -------------------------------------------------------------------

    #[test]
    fn invalid_names() {
        let named = |name: &str| format!("[[loadable]]\nname = {name:?}\npath = \"a.so\"\n");
        fails(&named(""), ManifestErrorKind::InvalidName, 2, 8, "the loadable name is empty");
        fails(&named("."), ManifestErrorKind::InvalidName, 2, 8, "`.` cannot be a loadable name");
        fails(&named(".."), ManifestErrorKind::InvalidName, 2, 8, "`..` cannot be a loadable name");
        fails(
            &named("my shop"),
            ManifestErrorKind::InvalidName,
            2,
            8,
            "invalid loadable name `my shop`: ' ' is not allowed",
        );
        fails(&named("a/b"), ManifestErrorKind::InvalidName, 2, 8, "'/' is not allowed");
        fails(&named("shop:v2"), ManifestErrorKind::InvalidName, 2, 8, "':' is not allowed");
        let err = fails(&named("café"), ManifestErrorKind::InvalidName, 2, 8, "'é' is not allowed");
        assert!(err.message().ends_with("use only letters A-Z a-z, digits 0-9, '-', '.', '_' and '~'"), "{err}");
    }

    #[test]
    fn duplicate_name_points_at_the_second() {
        let text = "[[loadable]]\nname = \"shop\"\npath = \"a.so\"\n\n[[loadable]]\npath = \"b.so\"\nname = \"shop\"\n";
        let err = fails(text, ManifestErrorKind::DuplicateName, 7, 8, "");
        assert_eq!(
            err.to_string(),
            "verdant.toml:7:8: duplicate loadable name `shop` (first declared on line 2): every [[loadable]] needs its own name"
        );
        // Names are case-sensitive.
        parse("[[loadable]]\nname = \"shop\"\npath = \"a.so\"\n[[loadable]]\nname = \"Shop\"\npath = \"b.so\"\n")
            .unwrap();
    }

    // --- mounts --------------------------------------------------------------------

    #[test]
    fn malformed_mounts() {
        let mounted = |mount: &str| entry(&format!("mount = {mount:?}\n"));
        let bad = |mount: &str, part: &str| {
            fails(&mounted(mount), ManifestErrorKind::InvalidMount, 4, 9, part);
        };
        bad("shop", "mount `shop` must start with `/`: write `/shop`");
        bad("", "mount `` must start with `/`");
        bad("/", "mount `/` would take every route of the service");
        bad("//", "mount `//` would take every route");
        bad("/shop/", "mount `/shop/` ends with `/`: write `/shop`");
        bad("/shop//admin", "mount `/shop//admin` has an empty segment (`//`): write `/shop/admin`");
        bad("/shop/./admin", "has a `.` segment");
        bad("/shop/..", "has a `..` segment");
        bad("/../shop", "has a `..` segment");
        bad("/shop admin", "has the character ' ', which is not allowed in a mount");
        bad("/shop/{id}", "has the character '{'");
        bad("/shop/*rest", "has the character '*'");
        bad("/shop?x=1", "has the character '?'");
        // Dots inside a segment are fine.
        let manifest = parse(&mounted("/v1.2/.well-known/~x_y")).unwrap();
        assert_eq!(manifest.loadables()[0].mount.as_deref(), Some("/v1.2/.well-known/~x_y"));
    }

    fn two_mounts(first: &str, second: &str) -> String {
        format!(
            "[[loadable]]\nname = \"shop\"\npath = \"a.so\"\nmount = {first:?}\n\n[[loadable]]\nname = \"admin\"\npath = \"b.so\"\nmount = {second:?}\n"
        )
    }

    #[test]
    fn equal_mounts_overlap() {
        fails(
            &two_mounts("/shop", "/shop"),
            ManifestErrorKind::OverlappingMount,
            9,
            9,
            "mount `/shop` is already the mount of loadable `shop` (line 4): give each loadable its own mount",
        );
    }

    #[test]
    fn nested_mounts_overlap_either_way() {
        fails(
            &two_mounts("/shop", "/shop/admin"),
            ManifestErrorKind::OverlappingMount,
            9,
            9,
            "mount `/shop/admin` overlaps mount `/shop` of loadable `shop` (line 4): `/shop/admin` lies inside `/shop`",
        );
        fails(
            &two_mounts("/shop/admin/users", "/shop"),
            ManifestErrorKind::OverlappingMount,
            9,
            9,
            "mount `/shop` overlaps mount `/shop/admin/users` of loadable `shop` (line 4): `/shop/admin/users` lies inside `/shop`",
        );
    }

    #[test]
    fn mounts_that_share_only_a_prefix_of_characters_do_not_overlap() {
        for (a, b) in [("/shop", "/shopping"), ("/shop/admin", "/shop/api"), ("/a/b", "/b/a"), ("/shop-v1", "/shop")] {
            let manifest = parse(&two_mounts(a, b)).unwrap_or_else(|e| panic!("{a} {b}: {e}"));
            assert_eq!(manifest.loadables()[1].mount.as_deref(), Some(b));
        }
    }

    #[test]
    fn overlap_is_checked_against_every_earlier_mount() {
        let text = "[[loadable]]\nname = \"a\"\npath = \"a.so\"\nmount = \"/a\"\n[[loadable]]\nname = \"b\"\npath = \"b.so\"\n[[loadable]]\nname = \"c\"\npath = \"c.so\"\nmount = \"/c\"\n[[loadable]]\nname = \"d\"\npath = \"d.so\"\nmount = \"/a/d\"\n";
        fails(text, ManifestErrorKind::OverlappingMount, 15, 9, "overlaps mount `/a` of loadable `a` (line 4)");
    }

    // --- settings ----------------------------------------------------------------------

    #[test]
    fn settings_must_be_strings() {
        let setting = |value: &str| entry(&format!("[loadable.settings]\nheader = \"x\"\nlimit = {value}\n"));
        let bad = |value: &str, part: &str| {
            fails(&setting(value), ManifestErrorKind::InvalidSetting, 6, 9, part);
        };
        bad("5", "setting `limit` of loadable `shop` is an integer, but settings are strings: quote it: limit = \"5\"");
        bad("0x1F", "is an integer, but settings are strings: quote it: limit = \"0x1F\"");
        bad("true", "is a boolean, but settings are strings: quote it: limit = \"true\"");
        bad("2.5", "is a float, but settings are strings: quote it: limit = \"2.5\"");
        bad("1979-05-27", "is a date-time, but settings are strings: quote it: limit = \"1979-05-27\"");
        bad("[1, 2]", "is an array, but settings are strings: write it as one string");
        bad("{ a = \"b\" }", "is a table, but settings are strings: write it as one string");
        // A key that needs quotes in TOML is quoted in the advice.
        fails(
            &entry("[loadable.settings]\n\"x.y\" = 1\n"),
            ManifestErrorKind::InvalidSetting,
            5,
            9,
            "quote it: \"x.y\" = \"1\"",
        );
        // A sub-table of settings is a table value.
        fails(
            &entry("[loadable.settings]\nh = \"x\"\n[loadable.settings.deep]\nq = \"r\"\n"),
            ManifestErrorKind::InvalidSetting,
            6,
            1,
            "setting `deep` of loadable `shop` is a table",
        );
    }

    #[test]
    fn settings_of_each_entry_are_their_own() {
        let text = "[[loadable]]\nname = \"a\"\npath = \"a.so\"\n[loadable.settings]\nk = \"1\"\n[[loadable]]\nname = \"b\"\npath = \"b.so\"\n";
        let manifest = parse(text).unwrap();
        assert_eq!(manifest.loadables()[0].settings.len(), 1);
        assert!(manifest.loadables()[1].settings.is_empty());
    }

    // --- files ---------------------------------------------------------------------------

    #[test]
    fn check_files_wants_existing_regular_files() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("verdant.toml");
        let text = "[[loadable]]\nname = \"a\"\npath = \"liba.so\"\n\n[[loadable]]\nname = \"b\"\n  path   =   \"lib/libb.so\"\n";
        std::fs::write(&file, text).unwrap();
        std::fs::write(dir.path().join("liba.so"), b"x").unwrap();

        // Missing: the error names the resolved path and suggests building.
        let err = Manifest::load(&file).unwrap_err();
        let libb = dir.path().join("lib/libb.so");
        assert_eq!((err.kind(), err.line(), err.column()), (ManifestErrorKind::MissingLibrary, 7, 14));
        assert_eq!(
            err.message(),
            format!(
                "library `{}` of loadable `b` does not exist: build it (`cargo build -p <its crate>`), or fix `path` (relative paths start at the manifest's directory)",
                libb.display()
            )
        );
        assert_eq!(err.to_string(), format!("{}:7:14: {}", file.display(), err.message()));

        // A directory is not a library.
        std::fs::create_dir_all(&libb).unwrap();
        let err = Manifest::load(&file).unwrap_err();
        assert_eq!((err.kind(), err.line(), err.column()), (ManifestErrorKind::MissingLibrary, 7, 14));
        assert!(
            err.message().contains(&format!("library `{}` of loadable `b` is a directory", libb.display())),
            "{err}"
        );

        // A regular file, and a symbolic link to one, are.
        std::fs::remove_dir(&libb).unwrap();
        std::os::unix::fs::symlink(dir.path().join("liba.so"), &libb).unwrap();
        Manifest::load(&file).unwrap();

        // A dangling link is missing.
        std::fs::remove_file(dir.path().join("liba.so")).unwrap();
        let err = Manifest::load(&file).unwrap_err();
        assert_eq!((err.line(), err.column()), (3, 8));
        assert!(err.message().contains("liba.so` of loadable `a` does not exist"), "{err}");
    }

    #[test]
    fn parse_does_not_touch_the_filesystem() {
        let manifest = Manifest::parse(
            "[[loadable]]\nname = \"a\"\npath = \"liba.so\"\n",
            Path::new("/nonexistent-verdant-dir/verdant.toml"),
        )
        .unwrap();
        assert_eq!(manifest.loadables()[0].path, Path::new("/nonexistent-verdant-dir/liba.so"));
        assert_eq!(manifest.check_files().unwrap_err().kind(), ManifestErrorKind::MissingLibrary);
    }

    // --- positions -------------------------------------------------------------------------

    #[test]
    fn line_column_counts_characters_from_one() {
        let text = "ab\ncdé\r\nfg";
        assert_eq!(line_column(text, 0), (1, 1));
        assert_eq!(line_column(text, 2), (1, 3)); // the newline itself
        assert_eq!(line_column(text, 3), (2, 1));
        assert_eq!(line_column(text, 5), (2, 3)); // é
        assert_eq!(line_column(text, 6), (2, 3)); // inside é: no panic, same column
        assert_eq!(line_column(text, 7), (2, 4)); // \r
        assert_eq!(line_column(text, 9), (3, 1));
        assert_eq!(line_column(text, 11), (3, 3)); // end of text
        assert_eq!(line_column(text, 99), (3, 3)); // past it
        assert_eq!(line_column("", 0), (1, 1));
    }

    #[test]
    fn columns_after_non_ascii_text_count_characters() {
        fails(
            "loadable = [{ path = \"ä€😀.so\", name = \"x\", mount = \"y\" }]\n",
            ManifestErrorKind::InvalidMount,
            1,
            52,
            "must start with `/`",
        );
        fails(
            "[[loadable]]\r\nname = \"x y\"\r\npath = \"a.so\"\r\n",
            ManifestErrorKind::InvalidName,
            2,
            8,
            "invalid loadable name",
        );
    }

    #[test]
    fn errors_are_clone_and_std_errors() {
        fn is_error<E: std::error::Error + Clone + Send + Sync + 'static>(_: &E) {}
        let err = parse("[[loadable]]\nname = 1\n").unwrap_err();
        is_error(&err);
        let copy = err.clone();
        assert_eq!(copy.to_string(), err.to_string());
        assert!(std::error::Error::source(&err).is_none());
        assert!(err.io_error().is_none());
    }
}
