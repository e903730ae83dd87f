//! The reload transaction: make-before-break, unit by unit.
//!
//! A transaction splits its targets into *units*: every ungrouped loadable
//! is a unit of its own, and the targets of one group (`Entry::group`) form
//! one unit, placed where its first member is registered. Units run one
//! after the other, in that order; each is all-or-nothing and independent
//! of the others:
//!
//! 1. For each member, in registration order: read the artifact, validate
//!    it, copy it, `dlopen` the copy, check its types, attach it.
//! 2. If a member fails, the unit stops: the members after it are not
//!    reached, and the new instances of the members before it are dropped
//!    uncommitted, which detaches them (rolled back). Every slot of the unit
//!    still holds the version it held before (or none).
//! 3. Otherwise the new versions are swapped in, one slot store each; the
//!    old versions are retired (detached once their last pin is dropped).
//!
//! A failed unit is reported (the registry logs each failure once, in
//! `Inner::finish`); the next unit runs all the same. In strict mode a
//! transaction with any failure returns `Error::Reload`, whose report shows
//! the units that did commit. The whole transaction has one generation
//! number.
//!
//! The caller holds the registry's transaction lock, so transactions never
//! overlap. Readers never take that lock.

// `StepError` is large, but it is built at most once per loadable and
// reload, on a path that then does file and dlopen work; boxing it would buy
// nothing.
#![allow(clippy::result_large_err)]

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Instant, SystemTime};

use parking_lot::Mutex;

use crate::entry::{Entry, Prepared};
use crate::error::{Error, LoadError, ReloadFailure, Step, StepError};
use crate::loader::{copy_name, Artifact};
use crate::registry::Inner;
use crate::report::{LoadableReport, Outcome, ReloadReport, StepTime, Trigger, VersionInfo};
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

/// Runs one transaction over `targets` (in registration order). Call with
/// the transaction lock held.
///
/// Returns `Ok` with every unit's outcome, unless the registry was revoked
/// meanwhile (`Error::Revoked`) or, in strict mode, some loadable failed
/// (`Error::Reload`, carrying the same report).
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

    let mut reports: Vec<Option<LoadableReport>> = targets.iter().map(|_| None).collect();
    for unit in units(targets) {
        run_unit(inner, targets, &unit, mode, generation, &mut reports)?;
    }
    let loadables = reports.into_iter().map(|report| report.expect("every target belongs to one unit")).collect();
    let report = ReloadReport { generation, trigger, coalesced, loadables, duration: started.elapsed() };

    // The report is logged once, with every failure in it, where the
    // registry records the transaction's result (`Inner::finish`).
    if report.is_success() {
        return Ok(report);
    }
    if inner.strict {
        let (_, error) = report.failures().next().expect("a unit is not applied only when one of its members failed");
        let error = error.clone();
        return Err(Error::Reload(Box::new(ReloadFailure { error, report })));
    }
    Ok(report)
}

/// The units of a transaction over `targets`: indices into `targets`, one
/// list per ungrouped loadable and one per group (its members in
/// registration order), ordered by their first member.
fn units(targets: &[Arc<Entry>]) -> Vec<Vec<usize>> {
    let mut units: Vec<(Option<&Arc<str>>, Vec<usize>)> = Vec::new();
    for (index, entry) in targets.iter().enumerate() {
        let grouped = entry.group.as_ref();
        match grouped.and_then(|group| units.iter_mut().find(|(g, _)| *g == Some(group))) {
            Some((_, members)) => members.push(index),
            None => units.push((grouped, vec![index])),
        }
    }
    units.into_iter().map(|(_, members)| members).collect()
}

/// Runs one unit: loads its members up to the swap, then commits all of them
/// or none. Fills in `reports` for every member. Fails only when the
/// registry was revoked (then nothing of this unit is committed).
fn run_unit(
    inner: &Inner,
    targets: &[Arc<Entry>],
    unit: &[usize],
    mode: Mode,
    generation: u64,
    reports: &mut [Option<LoadableReport>],
) -> Result<(), Error> {
    if inner.revoked.load(Ordering::Acquire) {
        return Err(Error::Revoked);
    }
    let mut prepared: Vec<(usize, Box<dyn Prepared>)> = Vec::new();
    let mut failed = false;
    for &index in unit {
        let entry = &targets[index];
        let current = entry.ops.current();
        let mut report = LoadableReport {
            name: entry.name.to_string(),
            path: entry.path.clone(),
            group: entry.group.as_deref().map(str::to_owned),
            // Filled in below, or at commit or rollback.
            outcome: Outcome::NotReached,
            serving: current.as_ref().map(|meta| meta.info.clone()),
            steps: Vec::new(),
        };
        if !failed {
            match load(inner, entry, current, mode, generation, &mut report.steps) {
                Ok(Loaded::Unchanged(current)) => report.outcome = Outcome::Unchanged { current: current.info.clone() },
                Ok(Loaded::Prepared(version)) => prepared.push((index, version)),
                Err(error) => {
                    report.outcome = Outcome::Failed(error);
                    failed = true;
                }
            }
        }
        reports[index] = Some(report);
    }

    if failed {
        // Uncommitted versions are dropped here: their instances detach.
        for (index, version) in prepared {
            let discarded = version.meta().info.clone();
            tracing::info!(loadable = %targets[index].name, version = %discarded, "rolled back: another member of its group failed");
            report_of(reports, index).outcome = Outcome::RolledBack { discarded };
            // It never served, but it was attached: status() shows it.
            targets[index].record_retired(version.roll_back());
        }
        return Ok(());
    }
    if inner.revoked.load(Ordering::Acquire) {
        return Err(Error::Revoked);
    }
    for (index, version) in prepared {
        let entry = &targets[index];
        let report = report_of(reports, index);
        let new = version.meta().info.clone();
        let swap_started = Instant::now();
        let old = version.commit();
        report.steps.push(StepTime { step: Step::Swap, duration: swap_started.elapsed() });
        let old_info = old.as_ref().map(|retired| retired.meta.info.clone());
        if let Some(retired) = old {
            entry.record_retired(retired);
        }
        entry.reattach.store(false, Ordering::Release);
        tracing::info!(loadable = %entry.name, version = %new, "swapped in");
        report.serving = Some(new.clone());
        report.outcome = Outcome::Swapped { old: old_info, new };
    }
    Ok(())
}

fn report_of(reports: &mut [Option<LoadableReport>], index: usize) -> &mut LoadableReport {
    reports[index].as_mut().expect("reported when loaded")
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
    current: Option<Arc<VersionMeta>>,
    mode: Mode,
    generation: u64,
    steps: &mut Vec<StepTime>,
) -> Result<Loaded, StepError> {
    let _span = tracing::info_span!("load", loadable = %entry.name, path = %entry.path.display()).entered();
    // A changed attach context (an HTTP extension's mount or settings) needs a
    // new attach even for the same file.
    let reattach = entry.reattach.load(Ordering::Acquire);
    let keep = |current: &Option<Arc<VersionMeta>>| current.as_ref().filter(|_| !reattach).cloned();
    // The file is read and hashed only when its stamp differs from the
    // serving version's (`loader::FileStamp`); read and hash are one step.
    let serving_stamp = keep(&current).and_then(|current| *current.stamp.lock());
    let read = timed(entry, steps, Step::Read, || {
        Ok(match inner.stages.read(&entry.path, serving_stamp)? {
            Artifact::Same => None,
            Artifact::Read { stamp, bytes, hash, rest } => Some((stamp, bytes, hash, rest)),
        })
    })?;
    let Some((stamp, bytes, hash, rest)) = read else {
        let current = keep(&current).expect("a stamp was compared, so a version serves");
        tracing::info!(version = %current.info, "unchanged (same file)");
        return Ok(Loaded::Unchanged(current));
    };
    if let Some(current) = keep(&current).filter(|c| mode == Mode::Attach || c.info.hash == hash) {
        if current.info.hash == hash {
            // The same bytes in another file, or a file written again: the
            // next reload need not read it. (An attach keeps a serving
            // version whatever the file holds; its stamp stays, so that the
            // next reload reads the new file.)
            *current.stamp.lock() = stamp;
        }
        tracing::info!(version = %current.info, "unchanged");
        return Ok(Loaded::Unchanged(current));
    }
    let loaded = timed(entry, steps, Step::Validate, || inner.stages.validate(&bytes, rest.as_ref()))?;
    let copy = timed(entry, steps, Step::Copy, || {
        inner.stages.copy(&inner.private_dir, &copy_name(&entry.name, &hash), bytes, loaded, rest)
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
    // Once retired for good, what its copy can give back is released and
    // what it keeps is reported (`retained.rs`).
    let mut library = library;
    library.keep_mapped(inner.retained.clone());

    let identity = library.identity().clone();
    let meta = Arc::new(VersionMeta {
        info: VersionInfo {
            generation,
            package: identity.package,
            package_version: identity.package_version,
            hash,
            loaded_at: SystemTime::now(),
        },
        copy: copy_path,
        stamp: Mutex::new(stamp),
        retired_at: Mutex::new(None),
        detach: Mutex::new(DetachState::Pending),
        library: std::sync::OnceLock::new(),
        serving_pins: Default::default(),
    });
    let mut env = inner.attach_env();
    if let Some(context) = &entry.context {
        env.context = context.value.clone();
    }
    let prepared =
        timed(entry, steps, Step::Attach, || entry.ops.attach(Arc::new(library), meta, &env, &inner.retirement))?;
    Ok(Loaded::Prepared(prepared))
}
