//! Reload reports: what each reload did, per loadable, with step times.

use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime};

use crate::error::{Step, StepError};

/// What started a transaction.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
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

    /// What a failure of this transaction means for what is serving.
    pub(crate) fn consequence(&self) -> &'static str {
        match self {
            Trigger::Attach => "nothing was attached (loadables attached earlier keep serving)",
            Trigger::Call | Trigger::Signal { .. } => "nothing was swapped and the previous versions keep serving",
        }
    }
}

/// A SHA-256 of a library artifact's content.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct ContentHash(pub [u8; 32]);

impl ContentHash {
    /// The hash of `bytes`.
    ///
    /// ```
    /// let h = verdant::ContentHash::of(b"");
    /// assert_eq!(h.to_string(), "e3b0c44298fc");
    /// ```
    pub fn of(bytes: &[u8]) -> Self {
        use sha2::Digest;
        ContentHash(sha2::Sha256::digest(bytes).into())
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

impl fmt::Debug for ContentHash {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "ContentHash({self})")
    }
}

/// One loaded version of a loadable.
#[derive(Debug, Clone, PartialEq, Eq)]
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
    pub loaded_at: SystemTime,
}

impl fmt::Display for VersionInfo {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {} (generation {}, {})", self.package, self.package_version, self.generation, self.hash)
    }
}

/// How long one step took.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StepTime {
    /// The step.
    pub step: Step,
    /// Its wall-clock duration.
    pub duration: Duration,
}

/// What a transaction did with one loadable.
#[derive(Debug, Clone)]
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
    /// This loadable failed; nothing in the transaction was swapped.
    Failed(StepError),
    /// This loadable was loaded and attached, but another one failed, so the
    /// new instance was detached again and never served.
    RolledBack {
        /// The version that was discarded.
        discarded: VersionInfo,
    },
    /// Not tried, because an earlier loadable of the transaction failed.
    NotReached,
}

/// One loadable's part of a [`ReloadReport`].
#[derive(Debug, Clone)]
pub struct LoadableReport {
    /// The loadable's name.
    pub name: String,
    /// Its registered artifact path.
    pub path: PathBuf,
    /// What happened.
    pub outcome: Outcome,
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
    /// What started it.
    pub trigger: Trigger,
    /// How many triggers this transaction served (coalesced requests).
    pub coalesced: usize,
    /// Per loadable, in registration order.
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
}

impl fmt::Display for ReloadReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{} #{} ({:?}, {:.1?}):", self.trigger.verb(), self.generation, self.trigger, self.duration)?;
        for loadable in &self.loadables {
            write!(f, "  {}: ", loadable.name)?;
            match &loadable.outcome {
                Outcome::Swapped { old: Some(old), new } => write!(f, "swapped {old} -> {new}")?,
                Outcome::Swapped { old: None, new } => write!(f, "attached {new}")?,
                Outcome::Unchanged { current } => write!(f, "unchanged, {current}")?,
                Outcome::Failed(error) => write!(f, "FAILED at {}: {}", error.step, error.kind)?,
                Outcome::RolledBack { discarded } => write!(f, "rolled back {discarded}")?,
                Outcome::NotReached => write!(f, "not reached")?,
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
