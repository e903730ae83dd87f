//! Applying a manifest to the registered loadables: what to add, what to
//! reconfigure, what to remove, and in which order they run.
//!
//! The result is a new entry list, built completely before anything
//! changes, so a manifest is applied whole or not at all. The registry
//! stores it under the transaction lock and then revokes the removed
//! entries; the reload that follows loads what was added or changed.

use std::collections::BTreeSet;
use std::sync::Arc;

use verdant_loadable::http::HttpExtension;

use crate::entry::{Config, Entry};
use crate::manifest::Manifest;

/// A manifest applied to an entry list.
pub(crate) struct Diff {
    /// The new list: the loadables added in code that the manifest does not
    /// list (dormant ones included), then the manifest's entries in its
    /// order, which is the order their middlewares run in.
    pub entries: Vec<Arc<Entry>>,
    /// Entries the manifest no longer lists: revoke them.
    pub removed: Vec<Arc<Entry>>,
    /// Names that must be (re)loaded whatever a reload selects: added,
    /// listed again, or configured differently.
    pub touched: BTreeSet<Arc<str>>,
}

/// Applies `manifest` to `current`.
///
/// - A name the manifest lists that is registered (added in code, or by an
///   earlier manifest) keeps its slot, handles and history and takes the
///   manifest's path, mount, settings and group.
/// - A new name becomes an HTTP extension (`dyn HttpExtension`).
/// - A name the manifest configured before and lists no more is removed: an
///   HTTP extension leaves the list, a typed loadable added in code stays
///   registered but dormant (revoked; listing it again brings it back).
pub(crate) fn diff(current: &[Arc<Entry>], manifest: &Manifest) -> Diff {
    let listed: BTreeSet<&str> = manifest.loadables().iter().map(|entry| entry.name.as_str()).collect();
    let mut entries = Vec::with_capacity(current.len() + manifest.loadables().len());
    let mut removed = Vec::new();
    let mut touched = BTreeSet::new();
    for entry in current {
        if listed.contains(&*entry.name) {
            continue;
        }
        if entry.from_manifest {
            removed.push(entry.clone());
            if !entry.is_extension() {
                entries.push(Arc::new(entry.dormant()));
            }
        } else {
            entries.push(entry.clone());
        }
    }
    for listed in manifest.loadables() {
        let config = Config {
            path: &listed.path,
            mount: listed.mount.as_deref(),
            settings: &listed.settings,
            group: listed.group.as_deref(),
        };
        let name: Arc<str> = Arc::from(listed.name.as_str());
        match current.iter().find(|entry| *entry.name == *listed.name) {
            Some(entry) => {
                let (reconfigured, changed) = entry.reconfigured(&config);
                if changed {
                    touched.insert(name);
                    entries.push(Arc::new(reconfigured));
                } else {
                    entries.push(entry.clone());
                }
            }
            None => {
                let (entry, _) =
                    Entry::new::<dyn HttpExtension>(&listed.name, listed.path.clone()).reconfigured(&config);
                touched.insert(name);
                entries.push(Arc::new(entry));
            }
        }
    }
    Diff { entries, removed, touched }
}
