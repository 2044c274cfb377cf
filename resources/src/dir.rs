//! A directory of YAML files, watched by polling: each file's last good parse is kept, so a
//! bad edit is reported once and changes nothing.

use std::collections::BTreeMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::time::SystemTime;

use crate::Resources;

/// The last good parse of every file in the directory.
#[derive(Default)]
pub struct ResourceDir {
    dir: PathBuf,
    files: BTreeMap<PathBuf, (Option<Stamp>, Resources)>,
    /// Files rejected so far.
    pub errors: u64,
}

/// What tells a file changed: its modification time and length, and its inode, which a
/// replacement by rename (how editors and tools write atomically) changes even where the
/// file system's clock is too coarse to tell two quick writes of the same length apart.
type Stamp = (SystemTime, u64, u64);

fn yaml_files(dir: &Path, out: &mut Vec<PathBuf>) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    for e in entries.flatten() {
        let p = e.path();
        let hidden = p
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if p.is_dir() {
            yaml_files(&p, out);
        } else if matches!(p.extension().and_then(|e| e.to_str()), Some("yaml" | "yml")) {
            out.push(p);
        }
    }
}

impl ResourceDir {
    pub fn new(dir: &Path) -> Self {
        ResourceDir {
            dir: dir.to_path_buf(),
            files: BTreeMap::new(),
            errors: 0,
        }
    }

    /// Re-reads files that changed and forgets files that are gone. A file that fails to parse
    /// is reported (file, resource, field) and its last good content is kept. Returns whether
    /// anything changed.
    pub fn scan(&mut self) -> bool {
        let mut paths = Vec::new();
        yaml_files(&self.dir, &mut paths);
        let mut changed = false;
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        if self.files.len() != before {
            changed = true;
            tracing::info!("resource file(s) removed");
        }
        for p in paths {
            let stamp = std::fs::metadata(&p)
                .ok()
                .and_then(|m| Some((m.modified().ok()?, m.len(), m.ino())));
            if self.files.get(&p).is_some_and(|(s, _)| *s == stamp) {
                continue;
            }
            let mut res = Resources::default();
            match res.add_file(&p) {
                Ok(()) => {
                    tracing::info!(file = %p.display(), "resources loaded");
                    self.files.insert(p, (stamp, res));
                    changed = true;
                }
                Err(e) => {
                    self.errors += 1;
                    tracing::error!(error = %e, "resource file rejected; keeping its last good content");
                    // Remember the stamp so the same bad content is reported once.
                    let last = self.files.remove(&p).map(|(_, r)| r).unwrap_or_default();
                    self.files.insert(p, (stamp, last));
                }
            }
        }
        changed
    }

    pub fn merged(&self) -> Resources {
        let mut all = Resources::default();
        for (_, r) in self.files.values() {
            all.extend(r.clone());
        }
        all
    }
}
