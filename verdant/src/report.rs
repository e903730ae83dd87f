//! Reload reports: what each reload did, per loadable, with step times.
//!
//! Every type here serializes (serde) to readable JSON, as the admin API
//! answers it: times in seconds since the Unix epoch and durations in
//! seconds (floats), paths as strings, hashes as full hex.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::{Step, StepError};

/// What started a transaction. In JSON: `{"kind": "signal", "sender": 4242}`.
///
/// ```
/// let json = serde_json::to_string(&verdant::Trigger::Signal { sender: 4242 }).unwrap();
/// assert_eq!(json, r#"{"kind":"signal","sender":4242}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Trigger {
    /// [`Verdant::attach`](crate::Verdant::attach).
    Attach,
    /// A call of `reload`/`reload_blocking`.
    Call,
    /// `kill -PIPE` from another process. Signals that arrive together
    /// share one reload.
    Signal {
        /// The pid of the latest of those signals' senders; 0 when it sent
        /// from outside this process's pid namespace (a `kill` from the host
        /// into a container).
        sender: i32,
    },
}

impl Trigger {
    pub(crate) fn verb(&self) -> &'static str {
        match self {
            Trigger::Attach => "attach",
            Trigger::Call | Trigger::Signal { .. } => "reload",
        }
    }
}

/// A BLAKE3 hash of a library artifact's content: what tells a rebuilt
/// library from one that did not change, shown as its first 12 hex digits.
///
/// For a library, the hash covers what is loaded and the file's layout, not
/// its debug information: it is BLAKE3 over the BLAKE3 of the file's first
/// bytes up to the end of its last loaded segment, followed by its section
/// header table. A reload reads only those parts before it loads the
/// library (nine tenths of a debug build are debug sections, which the
/// private copy gets afterwards). So it is not the `b3sum` of the file, and
/// two builds that differ only in the content of their debug sections (same
/// code, same sizes) are one version; the serving copy keeps its own debug
/// information. A file that is not a whole library (refused anyway) is
/// hashed whole, as [`ContentHash::of`].
///
/// BLAKE3 rather than SHA-256 because every reload of a changed file hashes
/// it, in the embedder's build of this crate, whatever that build's
/// profile: the `blake3` crate's compression loops are assembly on x86-64
/// (and intrinsics elsewhere), so an unoptimised debug build hashes at about
/// two thirds of release speed, where unoptimised SHA-256 took ~1 s for a
/// 9 MB debug library (measured on the development machine: 8.7 MB in 4.7 ms
/// at opt-level 0 and 3.1 ms at opt-level 3, SHA-256 0.5–1.2 s at opt-level
/// 0, all while other builds ran). A reload hashes only files whose size,
/// modification or change time or inode differ from the serving version's
/// (`loader.rs`, `FileStamp`).
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of `bytes`.
    ///
    /// ```
    /// let h = verdant::ContentHash::of(b"");
    /// assert_eq!(h.to_string(), "af1349b9f5f9");
    /// ```
    pub fn of(bytes: &[u8]) -> Self {
        ContentHash(*blake3::hash(bytes).as_bytes())
    }

    /// The full hash as lowercase hex.
    ///
    /// ```
    /// assert_eq!(verdant::ContentHash::of(b"").to_hex().len(), 64);
    /// ```
    pub fn to_hex(&self) -> String {
        self.0.iter().map(|b| format!("{b:02x}")).collect()
    }
}

/// Shows the first 12 hex digits, like a short git hash.
impl fmt::Display for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for byte in &self.0[..6] {
            write!(f, "{byte:02x}")?;
        }
        Ok(())
    }
}

/// In JSON: the full hash as lowercase hex.
impl serde::Serialize for ContentHash {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.serialize_str(&self.to_hex())
    }
}

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

/// One loaded version of a loadable.
///
/// ```
/// # fn f(version: &verdant::VersionInfo) {
/// println!("{version}"); // shop-lib 0.1.1 (generation 2, 7f833c0c09fd)
/// let json = serde_json::to_value(version).unwrap();
/// assert!(json["loaded_at"].is_f64()); // seconds since the Unix epoch
/// # }
/// ```
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct VersionInfo {
    /// The generation of the transaction that loaded it.
    pub generation: u64,
    /// The library package's name (from its descriptor).
    pub package: String,
    /// The library package's version (from its descriptor).
    pub package_version: String,
    /// The artifact's content hash.
    pub hash: ContentHash,
    /// When it was loaded.
    #[serde(serialize_with = "crate::serialize::time")]
    pub loaded_at: SystemTime,
}

impl fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (generation {}, {})", self.package, self.package_version, self.generation, self.hash)
    }
}

/// How long one step took. In JSON: `{"step": "read", "duration": 0.0175}`
/// (seconds).
///
/// ```
/// let time = verdant::StepTime { step: verdant::Step::Read, duration: std::time::Duration::from_millis(250) };
/// assert_eq!(serde_json::to_string(&time).unwrap(), r#"{"step":"read","duration":0.25}"#);
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct StepTime {
    /// The step.
    pub step: Step,
    /// Its wall-clock duration.
    #[serde(serialize_with = "crate::serialize::duration")]
    pub duration: Duration,
}

/// What a transaction did with one loadable.
///
/// Each ungrouped loadable is a unit of its own; the members of a
/// [group](crate::Builder::group) are one unit. `Failed`, `RolledBack` and
/// `NotReached` mean that the loadable's unit was not applied: the loadable
/// keeps the version it had ([`LoadableReport::serving`]), while other units
/// were applied regardless.
///
/// In JSON the variant is the field `outcome` (`"swapped"`, `"unchanged"`,
/// `"failed"`, `"rolled_back"`, `"not_reached"`) beside the variant's
/// fields; a failure's are those of its [`StepError`].
///
/// ```
/// # fn f(outcome: &verdant::Outcome) -> &'static str {
/// match outcome {
///     verdant::Outcome::Swapped { .. } | verdant::Outcome::Unchanged { .. } => "applied",
///     _ => "kept what it had",
/// }
/// # }
/// let json = serde_json::to_string(&verdant::Outcome::NotReached).unwrap();
/// assert_eq!(json, r#"{"outcome":"not_reached"}"#);
/// ```
#[derive(Debug, Clone, serde::Serialize)]
#[serde(tag = "outcome", rename_all = "snake_case")]
#[non_exhaustive]
pub enum Outcome {
    /// The new version is serving; `old` (if any) is retired.
    Swapped {
        /// The version that was serving before.
        old: Option<VersionInfo>,
        /// The version now serving.
        new: VersionInfo,
    },
    /// The artifact's content equals the serving version's: nothing loaded.
    Unchanged {
        /// The version that keeps serving.
        current: VersionInfo,
    },
    /// This loadable failed. It keeps the version it had (if it had one),
    /// and so does the rest of its group; other loadables are unaffected.
    Failed(StepError),
    /// This loadable was loaded and attached, but another member of its
    /// group failed, so the new instance was detached again and never
    /// served; the loadable keeps the version it had.
    RolledBack {
        /// The version that was discarded.
        discarded: VersionInfo,
    },
    /// Not tried, because an earlier member of its group failed; the
    /// loadable keeps the version it had.
    NotReached,
}

impl Outcome {
    /// Swapped or unchanged: what the transaction meant for this loadable
    /// holds now.
    fn is_applied(&self) -> bool {
        matches!(self, Outcome::Swapped { .. } | Outcome::Unchanged { .. })
    }
}

/// One loadable's part of a [`ReloadReport`].
///
/// ```
/// # fn f(report: &verdant::LoadableReport) {
/// let json = serde_json::to_value(report).unwrap();
/// println!("{}: {}", json["name"], json["outcome"]["outcome"]);
/// # }
/// ```
#[derive(Debug, Clone, serde::Serialize)]
pub struct LoadableReport {
    /// The loadable's name.
    pub name: String,
    /// Its registered artifact path.
    #[serde(serialize_with = "crate::serialize::path")]
    pub path: PathBuf,
    /// The [group](crate::Builder::group) it belongs to, if any: the
    /// loadables that were applied or kept together with it.
    pub group: Option<String>,
    /// What happened.
    pub outcome: Outcome,
    /// The version serving this loadable when the transaction ended: the new
    /// one if it was swapped in, otherwise the one it had before. `None`: it
    /// is not serving (it has never attached).
    pub serving: Option<VersionInfo>,
    /// The steps that ran, in order, with their durations.
    pub steps: Vec<StepTime>,
}

/// The result of one reload or attach transaction.
///
/// ```
/// # fn show(report: &verdant::ReloadReport) {
/// println!("{report}");
/// for loadable in &report.loadables {
///     if let verdant::Outcome::Swapped { new, .. } = &loadable.outcome {
///         println!("{} now serves {}", loadable.name, new.package_version);
///     }
/// }
/// # }
/// ```
#[derive(Debug, Clone)]
pub struct ReloadReport {
    /// The transaction's generation number (1 for the first attach).
    pub generation: u64,
    /// What started it: when several triggers were coalesced, the newest
    /// (the one that arrived last).
    pub trigger: Trigger,
    /// How many triggers this transaction served (coalesced requests).
    pub coalesced: usize,
    /// Per loadable, in registration order. A loadable's outcome depends
    /// only on its own unit (itself, or its group).
    pub loadables: Vec<LoadableReport>,
    /// Total wall-clock time.
    pub duration: Duration,
}

impl ReloadReport {
    /// The outcome for the loadable `name`, if it took part.
    ///
    /// ```
    /// # fn f(report: &verdant::ReloadReport) {
    /// if let Some(verdant::Outcome::Unchanged { .. }) = report.outcome("shop") {
    ///     println!("shop was already up to date");
    /// }
    /// # }
    /// ```
    pub fn outcome(&self, name: &str) -> Option<&Outcome> {
        self.loadables.iter().find(|l| l.name == name).map(|l| &l.outcome)
    }

    /// The loadables that failed, with their errors, in registration order.
    /// Their groups' other members are `RolledBack` or `NotReached`; every
    /// other loadable was applied.
    ///
    /// ```
    /// # fn f(report: &verdant::ReloadReport) {
    /// for (name, error) in report.failures() {
    ///     eprintln!("{name} failed at step {}: {}", error.step, error.kind);
    /// }
    /// # }
    /// ```
    pub fn failures(&self) -> impl Iterator<Item = (&str, &StepError)> {
        self.loadables.iter().filter_map(|l| match &l.outcome {
            Outcome::Failed(error) => Some((l.name.as_str(), error)),
            _ => None,
        })
    }

    /// Whether every loadable of the transaction was applied: swapped in or
    /// unchanged. True for a report with no loadables. (In JSON, the field
    /// `success`.)
    ///
    /// ```
    /// # fn f(verdant: &verdant::Verdant) -> Result<(), verdant::Error> {
    /// let report = verdant.attach()?;
    /// if !report.is_success() {
    ///     eprintln!("some loadables did not attach:\n{report}");
    /// }
    /// # Ok(()) }
    /// ```
    pub fn is_success(&self) -> bool {
        self.loadables.iter().all(|l| l.outcome.is_applied())
    }

    /// What a failed transaction means for what is serving, for
    /// [`ReloadFailure`](crate::ReloadFailure)'s message: which loadables
    /// keep their previous version, which are not serving, and that the
    /// others were applied.
    pub(crate) fn consequence(&self) -> String {
        let kept = |serving: bool| -> Vec<String> {
            self.loadables
                .iter()
                .filter(|l| !l.outcome.is_applied() && l.serving.is_some() == serving)
                .map(|l| format!("`{}`", l.name))
                .collect()
        };
        let (keeping, dark) = (kept(true), kept(false));
        let mut parts = Vec::new();
        match keeping.len() {
            0 => {}
            1 => parts.push(format!("{} keeps its previous version", keeping[0])),
            _ => parts.push(format!("{} keep their previous versions", keeping.join(", "))),
        }
        match dark.len() {
            0 => {}
            1 => parts.push(format!("{} is not serving", dark[0])),
            _ => parts.push(format!("{} are not serving", dark.join(", "))),
        }
        if self.loadables.iter().any(|l| l.outcome.is_applied()) {
            parts.push(format!(
                "the others were {}",
                if self.trigger == Trigger::Attach { "attached" } else { "applied" }
            ));
        }
        parts.join(", ")
    }
}

/// In JSON: `{"generation", "trigger", "coalesced", "success", "duration",
/// "loadables"}`, where `success` is [`ReloadReport::is_success`] and
/// `duration` is in seconds.
///
/// ```
/// # fn f(report: &verdant::ReloadReport) {
/// let json = serde_json::to_value(report).unwrap();
/// assert_eq!(json["success"].as_bool(), Some(report.is_success()));
/// # }
/// ```
impl serde::Serialize for ReloadReport {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        use serde::ser::SerializeStruct;
        let mut out = serializer.serialize_struct("ReloadReport", 6)?;
        out.serialize_field("generation", &self.generation)?;
        out.serialize_field("trigger", &self.trigger)?;
        out.serialize_field("coalesced", &self.coalesced)?;
        out.serialize_field("success", &self.is_success())?;
        out.serialize_field("duration", &self.duration.as_secs_f64())?;
        out.serialize_field("loadables", &self.loadables)?;
        out.end()
    }
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.write(f, true)
    }
}

impl ReloadReport {
    /// The report as [`Display`](fmt::Display) shows it, except that a
    /// failed loadable's cause is left out (the registry logs each failure
    /// on its own, with the cause, right before this).
    pub(crate) fn overview(&self) -> String {
        struct Overview<'a>(&'a ReloadReport);
        impl fmt::Display for Overview<'_> {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                self.0.write(f, false)
            }
        }
        Overview(self).to_string()
    }

    fn write(&self, f: &mut fmt::Formatter<'_>, causes: bool) -> fmt::Result {
        writeln!(f, "{} #{} ({:?}, {:.1?}):", self.trigger.verb(), self.generation, self.trigger, self.duration)?;
        for loadable in &self.loadables {
            write!(f, "  {}", loadable.name)?;
            if let Some(group) = &loadable.group {
                write!(f, " (group {group})")?;
            }
            write!(f, ": ")?;
            // What serves a loadable whose unit was not applied.
            let kept = || match &loadable.serving {
                Some(serving) => format!("still serving {serving}"),
                None => "not serving".to_owned(),
            };
            match &loadable.outcome {
                Outcome::Swapped { old: Some(old), new } => write!(f, "swapped {old} -> {new}")?,
                Outcome::Swapped { old: None, new } => write!(f, "attached {new}")?,
                Outcome::Unchanged { current } => write!(f, "unchanged, {current}")?,
                Outcome::Failed(error) if causes => write!(f, "FAILED at {}, {}: {}", error.step, kept(), error.kind)?,
                Outcome::Failed(error) => {
                    write!(f, "FAILED at {}, {} (the error is logged above)", error.step, kept())?
                }
                Outcome::RolledBack { discarded } => write!(f, "rolled back {discarded}, {}", kept())?,
                Outcome::NotReached => write!(f, "not reached, {}", kept())?,
            }
            let steps: Vec<String> = loadable.steps.iter().map(|s| format!("{} {:.1?}", s.step, s.duration)).collect();
            if !steps.is_empty() {
                write!(f, " [{}]", steps.join(", "))?;
            }
            writeln!(f)?;
        }
        Ok(())
    }
}
