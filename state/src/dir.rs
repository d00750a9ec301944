//! `--cluster-dir`: a directory of manifests (the `picket reach` format),
//! watched with inotify and rescanned in full periodically as a safety net.
//!
//! Each rescan re-reads the files whose size, mtime or inode changed. A file
//! that fails to parse keeps its last good objects and logs the error once: a
//! half-written file must never mean "its policies were deleted". Then each
//! kind is replaced wholesale and committed. Does file I/O; the watch thread
//! is the only blocking code.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use tokio::sync::mpsc;

use crate::files::{self, ClusterObjects};
use crate::kind::Kind;
use crate::source::Source;
use crate::writer::StateWriter;

/// The default period of the full rescan.
pub const DEFAULT_RESYNC: Duration = Duration::from_secs(30);

/// The manifest directory and what each file last yielded.
#[derive(Debug)]
pub struct DirSource {
    dir: PathBuf,
    resync: Duration,
    files: BTreeMap<PathBuf, FileState>,
    loaded: bool,
    /// Whether a state was ever published: until then, every file must have
    /// parsed once (a half-written deny-all at boot must not open the pod).
    published: bool,
}

#[derive(Debug)]
struct FileState {
    signature: Signature,
    /// The objects of the last good parse (none if it never parsed).
    objects: ClusterObjects,
    /// Whether the file ever parsed.
    parsed: bool,
    /// The error of the last parse, if it failed (logged once).
    error: Option<String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
struct Signature {
    len: u64,
    modified: Option<SystemTime>,
    inode: u64,
}

/// What a rescan found.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Rescan {
    /// Whether the directory could be read at all.
    pub readable: bool,
    /// Whether the state was published (some file's objects changed).
    pub changed: bool,
}

// === impl DirSource ===

impl DirSource {
    /// A source for this directory, rescanned every [`DEFAULT_RESYNC`];
    /// nothing is read yet.
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self {
            dir: dir.into(),
            resync: DEFAULT_RESYNC,
            files: BTreeMap::new(),
            loaded: false,
            published: false,
        }
    }

    /// Sets the period of the full rescan.
    pub fn with_resync(mut self, resync: Duration) -> Self {
        self.resync = resync;
        self
    }

    /// Re-reads changed files and, when anything changed (or on the first
    /// successful read), replaces every kind in the state and commits. The
    /// first state is published only once every file has parsed: a file that
    /// fails at start-up has no last good version to fall back on.
    pub fn rescan(&mut self, writer: &mut StateWriter) -> Rescan {
        let Some(paths) = list(&self.dir) else {
            if self.loaded {
                tracing::warn!(dir = %self.dir.display(), "Cluster directory unreadable; keeping the last state");
            }
            return Rescan::default();
        };
        let mut changed = !self.published;
        // Files that disappeared: their objects go.
        let before = self.files.len();
        self.files.retain(|p, _| paths.contains(p));
        changed |= self.files.len() != before;
        for path in paths {
            let Some(signature) = signature(&path) else {
                continue;
            };
            if self
                .files
                .get(&path)
                .is_some_and(|f| f.signature == signature)
            {
                continue;
            }
            match files::load_file(&path) {
                Ok(objects) => {
                    for e in &objects.errors {
                        tracing::error!(error = %e, "Rule cannot be compiled; its policy isolates and allows nothing through it");
                    }
                    for w in &objects.warnings {
                        tracing::warn!("{w}");
                    }
                    self.files.insert(
                        path,
                        FileState {
                            signature,
                            objects,
                            parsed: true,
                            error: None,
                        },
                    );
                    changed = true;
                }
                Err(e) => {
                    let error = e.to_string();
                    let entry = self.files.entry(path).or_insert_with(|| FileState {
                        signature,
                        objects: ClusterObjects::default(),
                        parsed: false,
                        error: None,
                    });
                    if entry.error.as_deref() != Some(&error) {
                        tracing::error!(error = %error, "Manifest cannot be read; keeping its last good objects");
                    }
                    entry.signature = signature;
                    entry.error = Some(error);
                }
            }
        }
        let unparsed = self.files.values().filter(|f| !f.parsed).count();
        if changed && !self.published && unparsed > 0 {
            tracing::warn!(
                dir = %self.dir.display(),
                unparsed,
                "Not publishing a first state until every manifest has parsed once; connections wait, then reset"
            );
            changed = false;
        }
        if changed {
            self.publish(writer);
            self.published = true;
        }
        self.loaded = true;
        Rescan {
            readable: true,
            changed,
        }
    }

    fn publish(&self, writer: &mut StateWriter) {
        let mut all = ClusterObjects::default();
        for file in self.files.values() {
            all.merge(&file.objects);
        }
        all.synthesize_namespaces();
        for kind in Kind::ALL {
            writer.replace_all(kind, all.objects(kind));
        }
        writer.commit_if_complete();
    }
}

impl Source for DirSource {
    fn name(&self) -> &'static str {
        "files"
    }

    /// Watches the directory and rescans on every change and every resync
    /// period, publishing through `writer`.
    async fn run(mut self, mut writer: StateWriter) {
        let resync = self.resync;
        let (tx, mut rx) = mpsc::unbounded_channel();
        let dir = self.dir.clone();
        std::thread::Builder::new()
            .name("cluster-dir-watch".into())
            .spawn(move || watch_thread(&dir, &tx))
            .ok();
        let mut tick = tokio::time::interval(resync);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut was_readable = false;
        loop {
            let result = self.rescan(&mut writer);
            if result.readable && !was_readable {
                tracing::info!(dir = %self.dir.display(), "Cluster directory loaded");
            }
            was_readable = result.readable;
            tokio::select! {
                event = rx.recv() => {
                    if event.is_none() {
                        // No watcher: rely on the resync alone.
                        tick.tick().await;
                    }
                    // Editors write in bursts: let the burst finish.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    while rx.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
            }
        }
    }
}

fn list(dir: &Path) -> Option<Vec<PathBuf>> {
    let mut out = Vec::new();
    collect(dir, &mut out).ok()?;
    out.sort();
    Some(out)
}

fn collect(dir: &Path, out: &mut Vec<PathBuf>) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let path = entry?.path();
        let hidden = path
            .file_name()
            .and_then(|n| n.to_str())
            .is_some_and(|n| n.starts_with('.'));
        if hidden {
            continue;
        }
        if path.is_dir() {
            collect(&path, out)?;
        } else if files::is_manifest_file(&path) {
            out.push(path);
        }
    }
    Ok(())
}

fn signature(path: &Path) -> Option<Signature> {
    use std::os::unix::fs::MetadataExt;
    let meta = std::fs::metadata(path).ok()?;
    Some(Signature {
        len: meta.len(),
        modified: meta.modified().ok(),
        inode: meta.ino(),
    })
}

/// Blocks on inotify and sends a unit for every batch of events. While the
/// directory does not exist, waits for it to appear.
fn watch_thread(dir: &Path, tx: &mpsc::UnboundedSender<()>) {
    use rustix::fs::inotify;
    let Ok(fd) = inotify::init(inotify::CreateFlags::CLOEXEC) else {
        tracing::warn!("inotify unavailable; relying on the periodic resync");
        return;
    };
    let flags = inotify::WatchFlags::CREATE
        | inotify::WatchFlags::CLOSE_WRITE
        | inotify::WatchFlags::MODIFY
        | inotify::WatchFlags::MOVED_TO
        | inotify::WatchFlags::MOVED_FROM
        | inotify::WatchFlags::DELETE
        | inotify::WatchFlags::DELETE_SELF
        | inotify::WatchFlags::MOVE_SELF
        | inotify::WatchFlags::ATTRIB;
    let mut buf = [std::mem::MaybeUninit::<u8>::uninit(); 4096];
    loop {
        if inotify::add_watch(&fd, dir, flags).is_err() {
            std::thread::sleep(Duration::from_millis(100));
            if tx.is_closed() {
                return;
            }
            continue;
        }
        let _ = tx.send(());
        let mut reader = inotify::Reader::new(&fd, &mut buf);
        while let Ok(event) = reader.next() {
            let gone = event.events().intersects(
                inotify::ReadFlags::DELETE_SELF
                    | inotify::ReadFlags::MOVE_SELF
                    | inotify::ReadFlags::IGNORED,
            );
            if tx.send(()).is_err() {
                return;
            }
            if gone {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use picket_policy::ObjectKey;

    const POD: &str = "apiVersion: v1\nkind: Pod\nmetadata: {name: api, namespace: shop, labels: {app: api}}\nstatus: {podIP: 10.0.0.1}\n";
    const DENY: &str = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: deny, namespace: shop}\nspec: {podSelector: {}}\n";

    fn has_policy(rx: &crate::SnapshotRx, key: &ObjectKey) -> bool {
        rx.borrow()
            .as_ref()
            .is_some_and(|s| s.index.policy(key).is_some())
    }

    #[test]
    fn a_half_written_file_keeps_its_last_good_objects() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD).unwrap();
        std::fs::write(dir.path().join("deny.yaml"), DENY).unwrap();
        let (mut writer, rx) = StateWriter::new();
        let mut source = DirSource::new(dir.path());
        assert!(source.rescan(&mut writer).changed);
        let policy = ObjectKey::new("shop", "deny");
        assert!(has_policy(&rx, &policy));

        // Truncated mid-document: a parse error, and the policy stays.
        std::fs::write(dir.path().join("deny.yaml"), &DENY[..60]).unwrap();
        source.rescan(&mut writer);
        assert!(has_policy(&rx, &policy));

        // Removing the file removes its policy.
        std::fs::remove_file(dir.path().join("deny.yaml")).unwrap();
        assert!(source.rescan(&mut writer).changed);
        assert!(rx
            .borrow()
            .as_ref()
            .unwrap()
            .index
            .policy(&policy)
            .is_none());
    }

    #[test]
    fn a_broken_file_at_start_up_publishes_nothing_until_it_parses() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("pod.yaml"), POD).unwrap();
        // A deny-all half written when the sidecar starts: no last good version.
        std::fs::write(dir.path().join("deny.yaml"), &DENY[..60]).unwrap();
        let (mut writer, rx) = StateWriter::new();
        let mut source = DirSource::new(dir.path());
        assert!(!source.rescan(&mut writer).changed);
        assert!(
            rx.borrow().is_none(),
            "no state: not ready, connections wait, then reset"
        );
        assert!(
            !source.rescan(&mut writer).changed,
            "still broken: still nothing"
        );
        assert!(rx.borrow().is_none());
        std::fs::write(dir.path().join("deny.yaml"), DENY).unwrap();
        assert!(source.rescan(&mut writer).changed);
        assert!(has_policy(&rx, &ObjectKey::new("shop", "deny")));
    }

    #[test]
    fn a_missing_directory_publishes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, rx) = StateWriter::new();
        let mut source = DirSource::new(dir.path().join("absent"));
        assert!(!source.rescan(&mut writer).readable);
        assert!(
            rx.borrow().is_none(),
            "no state: connections wait, then reset"
        );
    }

    #[test]
    fn a_rename_into_place_is_picked_up() {
        let dir = tempfile::tempdir().unwrap();
        let (mut writer, rx) = StateWriter::new();
        let mut source = DirSource::new(dir.path());
        source.rescan(&mut writer);
        std::fs::write(dir.path().join(".deny.yaml.swp"), DENY).unwrap();
        assert!(
            !source.rescan(&mut writer).changed,
            "hidden files are ignored"
        );
        std::fs::rename(
            dir.path().join(".deny.yaml.swp"),
            dir.path().join("deny.yaml"),
        )
        .unwrap();
        assert!(source.rescan(&mut writer).changed);
        assert_eq!(rx.borrow().as_ref().unwrap().index.counts().policies, 1);
    }
}
