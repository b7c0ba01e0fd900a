//! The targets-file source (`targets_file`): the target list from a watched file, JSON or
//! TOML, as consul-template, confd or a mounted ConfigMap write it. The file is re-read when
//! it changes, checked every [`FILE_POLL`] (a stat; read only when it changed); a file that
//! does not parse keeps the last good list, and says so in `/health`. Its names are resolved
//! like configured targets (see [`super`]).

use super::{lock, SourceStatus};
use crate::upstream::target::{FileTarget, TargetSpec};
use std::path::PathBuf;
use std::sync::Mutex;
use std::time::Duration;

/// How often a targets file is checked for a change (a stat; read only when it changed).
pub(crate) const FILE_POLL: Duration = Duration::from_millis(250);

/// A watched targets file.
pub(super) struct TargetsFile {
    path: PathBuf,
    /// What the file looked like when last read: a change of any of these reads it again.
    stamp: Mutex<Option<FileStamp>>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
struct FileStamp {
    modified: Option<std::time::SystemTime>,
    len: u64,
    inode: u64,
}

impl FileStamp {
    fn of(meta: &std::fs::Metadata) -> FileStamp {
        use std::os::unix::fs::MetadataExt;
        FileStamp {
            modified: meta.modified().ok(),
            len: meta.len(),
            inode: meta.ino(),
        }
    }
}

/// A targets file: a JSON array of targets or `{"targets": [...]}`; TOML `[[targets]]`.
#[derive(Debug, serde::Deserialize)]
#[serde(untagged)]
enum FileTargets {
    List(Vec<FileTarget>),
    Table { targets: Vec<FileTarget> },
}

/// Parse a targets file's text (`path` decides JSON or TOML by its extension; any other
/// is tried as JSON, then TOML).
pub(crate) fn parse_targets_file(
    path: &std::path::Path,
    text: &str,
) -> Result<Vec<TargetSpec>, String> {
    let ext = path.extension().and_then(|e| e.to_str()).unwrap_or("");
    let parsed: FileTargets = match ext {
        "toml" => toml::from_str(text).map_err(|e| e.to_string())?,
        "json" => serde_json::from_str(text).map_err(|e| e.to_string())?,
        _ => serde_json::from_str(text)
            .or_else(|_| toml::from_str(text))
            .map_err(|e: toml::de::Error| e.to_string())?,
    };
    let (FileTargets::List(list) | FileTargets::Table { targets: list }) = parsed;
    let mut seen = std::collections::HashSet::new();
    let mut out = Vec::with_capacity(list.len());
    for (i, t) in list.iter().enumerate() {
        let spec = t.spec().map_err(|e| format!("targets[{i}]: {e}"))?;
        if !seen.insert((spec.host.clone(), spec.port)) {
            return Err(format!("targets[{i}]: duplicate target {}", t.address));
        }
        out.push(spec);
    }
    if out.is_empty() {
        return Err("lists no target".into());
    }
    Ok(out)
}

impl TargetsFile {
    /// Watch the file at `path`, as it looks now (its first good read is the caller's).
    pub(super) fn new(path: PathBuf) -> TargetsFile {
        let stamp = std::fs::metadata(&path).ok().map(|m| FileStamp::of(&m));
        TargetsFile {
            path,
            stamp: Mutex::new(stamp),
        }
    }

    /// Read the file again if it changed, into `targets`; `true` when the list changed. A
    /// failure is noted in `status` and keeps the last good list.
    pub(super) async fn reread(
        &self,
        targets: &Mutex<Vec<TargetSpec>>,
        status: &Mutex<SourceStatus>,
    ) -> bool {
        let meta = match tokio::fs::metadata(&self.path).await {
            Ok(m) => m,
            Err(e) => {
                failed(status, format!("cannot read {}: {e}", self.path.display()));
                return false;
            }
        };
        let stamp = FileStamp::of(&meta);
        if lock(&self.stamp).as_ref() == Some(&stamp) {
            return false;
        }
        let parsed = match tokio::fs::read_to_string(&self.path).await {
            Ok(text) => parse_targets_file(&self.path, &text),
            Err(e) => Err(e.to_string()),
        };
        *lock(&self.stamp) = Some(stamp);
        match parsed {
            Ok(specs) => {
                lock(status).error = None;
                let mut targets = lock(targets);
                let changed = *targets != specs;
                *targets = specs;
                changed
            }
            Err(e) => {
                failed(status, format!("{}: {e}", self.path.display()));
                false
            }
        }
    }
}

/// Note why the file could not be taken (logged once per distinct reason).
fn failed(status: &Mutex<SourceStatus>, why: String) {
    let mut status = lock(status);
    if status.error.as_deref() != Some(why.as_str()) {
        log::warn!("targets file: {why}; the last good targets keep serving");
    }
    status.error = Some(why);
}
