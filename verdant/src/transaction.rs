//! The reload transaction: make-before-break, all-or-nothing.
//!
//! For each selected loadable, in registration order: read the artifact,
//! validate it, copy it, `dlopen` the copy, check its types, attach it. Only
//! when *every* loadable got that far are the new versions swapped in, one
//! slot store each; then the old versions are retired (detached once their
//! last pin is dropped). The first failure stops the transaction: the new
//! instances already attached are dropped uncommitted, which detaches them,
//! and every slot still holds the version it held before.
//!
//! The caller holds the registry's transaction lock, so transactions never
//! overlap. Readers never take that lock.

// `StepError` is large, but it is built at most once per reload, on a path
// that then does file and dlopen work; boxing it would buy nothing.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::entry::{Entry, Prepared};
use crate::error::{Error, LoadError, ReloadFailure, Step, StepError};
use crate::loader::copy_name;
use crate::registry::Inner;
use crate::report::{ContentHash, LoadableReport, Outcome, ReloadReport, StepTime, Trigger};
use crate::version::{DetachState, VersionMeta};

/// Whether a transaction (re)loads every target or only attaches those not
/// attached yet.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    Attach,
    Reload,
}

enum Loaded {
    Unchanged(Arc<VersionMeta>),
    Prepared(Box<dyn Prepared>),
}

/// Runs one transaction over `targets`. Call with the transaction lock held.
pub(crate) fn run(
    inner: &Inner,
    targets: &[Arc<Entry>],
    mode: Mode,
    trigger: Trigger,
    coalesced: usize,
) -> Result<ReloadReport, Error> {
    let started = Instant::now();
    let generation = inner.generation.fetch_add(1, Ordering::AcqRel) + 1;
    let span = tracing::info_span!("transaction", generation, ?trigger, coalesced);
    let _span = span.enter();

    let mut reports: Vec<LoadableReport> = Vec::with_capacity(targets.len());
    let mut loaded: Vec<Loaded> = Vec::with_capacity(targets.len());
    let mut failure = None;
    for entry in targets {
        let mut steps = Vec::new();
        let result = load(inner, entry, mode, generation, &mut steps);
        let outcome = match &result {
            Ok(Loaded::Unchanged(current)) => Outcome::Unchanged { current: current.info.clone() },
            // Filled in at commit or rollback.
            Ok(Loaded::Prepared(_)) => Outcome::NotReached,
            Err(error) => Outcome::Failed(error.clone()),
        };
        reports.push(LoadableReport { name: entry.name.to_string(), path: entry.path.clone(), outcome, steps });
        match result {
            Ok(one) => loaded.push(one),
            Err(error) => {
                tracing::error!(%error, "load failed; rolling back the transaction");
                failure = Some(error);
                break;
            }
        }
    }
    if failure.is_none() && inner.revoked.load(Ordering::Acquire) {
        return Err(Error::Revoked);
    }

    if let Some(error) = failure {
        // Uncommitted versions are dropped here: their instances detach.
        for (report, one) in reports.iter_mut().zip(loaded) {
            if let Loaded::Prepared(prepared) = one {
                report.outcome = Outcome::RolledBack { discarded: prepared.meta().info.clone() };
            }
        }
        for entry in &targets[reports.len()..] {
            reports.push(LoadableReport {
                name: entry.name.to_string(),
                path: entry.path.clone(),
                outcome: Outcome::NotReached,
                steps: Vec::new(),
            });
        }
        let report = ReloadReport { generation, trigger, coalesced, loadables: reports, duration: started.elapsed() };
        return Err(Error::Reload(Box::new(ReloadFailure { error, report })));
    }

    for ((entry, report), one) in targets.iter().zip(reports.iter_mut()).zip(loaded) {
        let Loaded::Prepared(prepared) = one else { continue };
        let new = prepared.meta().info.clone();
        let swap_started = Instant::now();
        let old = prepared.commit();
        report.steps.push(StepTime { step: Step::Swap, duration: swap_started.elapsed() });
        let old_info = old.as_ref().map(|retired| retired.meta.info.clone());
        if let Some(retired) = old {
            entry.record_retired(retired);
        }
        tracing::info!(loadable = %entry.name, version = %new, "swapped in");
        report.outcome = Outcome::Swapped { old: old_info, new };
    }
    let report = ReloadReport { generation, trigger, coalesced, loadables: reports, duration: started.elapsed() };
    tracing::info!(duration = ?report.duration, "transaction committed");
    Ok(report)
}

/// Runs one step, records its time, and names the loadable, step and file in
/// its error.
fn timed<T>(
    entry: &Entry,
    steps: &mut Vec<StepTime>,
    step: Step,
    f: impl FnOnce() -> Result<T, LoadError>,
) -> Result<T, StepError> {
    let started = Instant::now();
    let result = f();
    steps.push(StepTime { step, duration: started.elapsed() });
    result.map_err(|kind| StepError { loadable: entry.name.to_string(), step, path: entry.path.clone(), kind })
}

/// Loads one entry up to (not including) the swap.
fn load(
    inner: &Inner,
    entry: &Entry,
    mode: Mode,
    generation: u64,
    steps: &mut Vec<StepTime>,
) -> Result<Loaded, StepError> {
    let _span = tracing::info_span!("load", loadable = %entry.name, path = %entry.path.display()).entered();
    let current = entry.ops.current();
    let (bytes, hash) = timed(entry, steps, Step::Read, || {
        let bytes = inner.stages.read(&entry.path)?;
        let hash = ContentHash::of(&bytes);
        Ok((bytes, hash))
    })?;
    if let Some(current) = current.filter(|c| mode == Mode::Attach || c.info.hash == hash) {
        tracing::info!(version = %current.info, "unchanged");
        return Ok(Loaded::Unchanged(current));
    }
    timed(entry, steps, Step::Validate, || inner.stages.validate(&bytes))?;
    let copy = timed(entry, steps, Step::Copy, || {
        inner.stages.copy(inner.private_dir.path(), &copy_name(&entry.name, &hash), &bytes)
    })?;
    let copy_path = copy.path.clone();
    let library = timed(entry, steps, Step::Open, || {
        inner.stages.open(copy).inspect_err(|_| {
            // Never opened, so nothing maps it: the copy can go now.
            let _ = std::fs::remove_file(&copy_path);
        })
    })?;
    timed(entry, steps, Step::Check, || {
        library.check_fingerprints(&entry.ops.expected(entry.context_fingerprint(inner.context_fingerprint)))
    })?;
    // From the attach hook on, library code runs and may leave what no
    // one can track: the library stays mapped for the life of the process
    // (docs/boundary.md §4, "Why Verdant never unmaps an attached library").
    let mut library = library;
    library.set_unmap_on_drop(false);

    let identity = library.identity().clone();
    let meta = Arc::new(VersionMeta {
        info: crate::report::VersionInfo {
            generation,
            package: identity.package,
            package_version: identity.package_version,
            hash,
            loaded_at: SystemTime::now(),
        },
        copy: copy_path,
        retired_at: Mutex::new(None),
        detach: Mutex::new(DetachState::Pending),
        library: std::sync::OnceLock::new(),
    });
    let mut env = inner.attach_env();
    if let Some(context) = &entry.context {
        env.context = context.value.clone();
    }
    let prepared =
        timed(entry, steps, Step::Attach, || entry.ops.attach(Arc::new(library), meta, &env, &inner.retirement))?;
    Ok(Loaded::Prepared(prepared))
}
