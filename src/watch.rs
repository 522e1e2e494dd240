//! Live profile reloads: watch `profiles/` (and the image manifests profiles refer
//! to) and reload on change. The directory is watched, not the files, because
//! editors save by writing a new file and renaming it over the old one.

use crate::images::ImageStore;
use crate::profiles::LiveProfiles;
use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{error, info, warn};

/// Editors write a file in several steps; act once they are done.
const DEBOUNCE: Duration = Duration::from_millis(300);

#[derive(Debug, thiserror::Error)]
#[error("watching {path}: {source}")]
pub struct WatchError {
    path: String,
    #[source]
    source: notify::Error,
}

/// Does this event change what a reload would read?
pub fn is_change(kind: &notify::EventKind) -> bool {
    use notify::EventKind;
    matches!(kind, EventKind::Create(_) | EventKind::Modify(_) | EventKind::Remove(_) | EventKind::Any)
}

/// Debounced change notices for a few directories. The directory is watched, not
/// the files: editors save by writing a new file and renaming it over the old one.
pub struct DirWatch {
    debouncer: notify_debouncer_full::Debouncer<notify::RecommendedWatcher, notify_debouncer_full::RecommendedCache>,
    rx: tokio::sync::mpsc::Receiver<notify_debouncer_full::DebounceEventResult>,
}

impl DirWatch {
    pub fn new() -> Result<DirWatch, WatchError> {
        let (tx, rx) = tokio::sync::mpsc::channel(16);
        let debouncer = new_debouncer(DEBOUNCE, None, move |result: notify_debouncer_full::DebounceEventResult| {
            // Reloading reads the files, and inotify reports reads (open, close) as
            // access events: reacting to those would reload forever. Only changes count.
            let changed = match &result {
                Ok(events) => events.iter().any(|e| is_change(&e.kind)),
                Err(_) => true,
            };
            if changed {
                // A full channel means a reload is already pending: dropping is fine.
                let _ = tx.try_send(result);
            }
        })
        .map_err(|source| WatchError { path: "(watcher)".into(), source })?;
        Ok(DirWatch { debouncer, rx })
    }

    pub fn watch(&mut self, dir: &std::path::Path, mode: RecursiveMode) -> Result<(), WatchError> {
        self.debouncer.watch(dir, mode).map_err(|source| WatchError { path: dir.display().to_string(), source })
    }

    /// Wait for the next change (a burst of saves counts once); `false` once
    /// `cancel` fires.
    pub async fn changed(&mut self, cancel: &CancellationToken) -> bool {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return false,
            b = self.rx.recv() => match b { Some(b) => b, None => return false },
        };
        if let Err(errors) = batch {
            for e in errors {
                warn!(error = %e, "file watcher error");
            }
        }
        while self.rx.try_recv().is_ok() {}
        true
    }
}

/// Reload `live` whenever its directory or the image manifests change, until `cancel`.
pub async fn watch_profiles(
    live: Arc<LiveProfiles>,
    images: ImageStore,
    cancel: CancellationToken,
) -> Result<(), WatchError> {
    let mut watch = DirWatch::new()?;
    let dir = live.dir().to_path_buf();
    watch.watch(&dir, RecursiveMode::Recursive)?;
    let manifests = images.manifests_dir();
    if std::fs::create_dir_all(&manifests).is_ok() {
        if let Err(e) = watch.watch(&manifests, RecursiveMode::NonRecursive) {
            warn!(path = %manifests.display(), error = %e, "not watching image manifests; rebuilt images need a profile save to apply");
        }
    }
    info!(dir = %dir.display(), "watching profiles for changes");
    while watch.changed(&cancel).await {
        let (live, images) = (live.clone(), images.clone());
        let report = match tokio::task::spawn_blocking(move || live.reload(&images)).await {
            Ok(r) => r,
            Err(e) => {
                error!(error = %e, "profile reload panicked; the previous profiles keep serving");
                continue;
            }
        };
        if report.errors.is_empty() {
            metrics::counter!("ramboot_profile_reloads_total", "outcome" => "success").increment(1);
            info!(profiles = report.profiles, "profiles reloaded");
        } else {
            metrics::counter!("ramboot_profile_reloads_total", "outcome" => "failure").increment(1);
            for e in &report.errors {
                // The operator's editor jumps to `file:line:col`.
                error!("profile refused, last good version keeps serving: {e}");
            }
        }
    }
    Ok(())
}

/// How often the inventory is applied again without a change: it heals what a
/// refused apply left (an address whose lease since ended) and a database restored
/// from a backup.
const INVENTORY_REAPPLY: std::time::Duration = std::time::Duration::from_secs(60);

/// Apply the inventory now, then on every change to its directory (or to the
/// profiles, which it refers to) and every [`INVENTORY_REAPPLY`], until `cancel`.
pub async fn watch_inventory(
    live: Arc<crate::inventory::LiveInventory>,
    profiles: Arc<LiveProfiles>,
    store: crate::store::Store,
    config: Arc<crate::config::Config>,
    cancel: CancellationToken,
) -> Result<(), WatchError> {
    let mut watch = DirWatch::new()?;
    // Profiles are watched too: a declaration naming a profile not yet valid
    // applies once it is.
    let _ = watch.watch(profiles.dir(), RecursiveMode::NonRecursive);
    // A missing directory is an empty inventory. Its parent is watched until it
    // appears; then the directory itself, and it is read once more in case files
    // landed before its watch began.
    let parent = live.dir().parent().filter(|p| p.is_dir()).map(Path::to_path_buf);
    if let Some(parent) = &parent {
        let _ = watch.watch(parent, RecursiveMode::NonRecursive);
    }
    let mut watching = false;
    let mut last_errors = vec![];
    loop {
        if !watching && live.dir().is_dir() && watch.watch(live.dir(), RecursiveMode::NonRecursive).is_ok() {
            watching = true;
            info!(dir = %live.dir().display(), "watching the inventory for changes");
        }
        let names = profiles.current().iter().map(|(p, _)| p.name.clone()).collect();
        match crate::inventory::Checks::for_config(&config, names) {
            Ok(checks) => {
                let report = live.reload(&store, &checks, crate::clock::now_ms()).await;
                let outcome = if report.errors.is_empty() { "success" } else { "failure" };
                metrics::counter!("ramboot_inventory_reloads_total", "outcome" => outcome).increment(1);
                if report.changes > 0 {
                    info!(files = report.files, changes = report.changes, "inventory applied");
                }
                // Said once per new set of errors, not at every re-apply.
                if report.errors != last_errors {
                    for e in &report.errors {
                        error!("inventory file refused, its last good version stays: {e}");
                    }
                    last_errors = report.errors;
                }
            }
            Err(e) => error!("inventory not applied: {e}"),
        }
        if !watching && live.dir().is_dir() {
            continue;
        }
        tokio::select! {
            _ = tokio::time::sleep(INVENTORY_REAPPLY) => {}
            changed = watch.changed(&cancel) => if !changed { return Ok(()) },
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use notify::event::{AccessKind, AccessMode, CreateKind, ModifyKind, RenameMode};
    use notify::EventKind;

    #[test]
    fn reads_do_not_trigger_reloads_but_saves_do() {
        assert!(!is_change(&EventKind::Access(AccessKind::Open(AccessMode::Read))));
        assert!(!is_change(&EventKind::Access(AccessKind::Close(AccessMode::Read))));
        assert!(is_change(&EventKind::Modify(ModifyKind::Name(RenameMode::To))));
        assert!(is_change(&EventKind::Create(CreateKind::File)));
    }

    /// The real watcher over a real directory: a save reloads once, and the reload's
    /// own reads do not start another.
    #[tokio::test]
    async fn a_save_reloads_once() {
        let dir = tempfile::tempdir().unwrap();
        let images = ImageStore::new(dir.path().join("images"));
        for (name, role) in [("stage1", "kernel"), ("tiny", "rootfs")] {
            let blob = dir.path().join(name);
            std::fs::write(&blob, name).unwrap();
            let art = images.ingest(&blob, "raw").unwrap();
            let kind =
                if role == "kernel" { crate::images::ImageKind::Stage1 } else { crate::images::ImageKind::Rootfs };
            images
                .write_manifest(&crate::images::Manifest {
                    name: name.into(),
                    kind,
                    built_at_ms: 0,
                    artifacts: [(role.to_string(), art)].into(),
                    inputs: Default::default(),
                })
                .unwrap();
        }
        let profiles = dir.path().join("profiles");
        std::fs::create_dir_all(&profiles).unwrap();
        let file = profiles.join("tiny.yaml");
        std::fs::write(&file, "name: tiny\nstage1: stage1\nimage: tiny\n").unwrap();
        let live = Arc::new(LiveProfiles::load(&profiles, &images).unwrap());
        let cancel = CancellationToken::new();
        let task = tokio::spawn(watch_profiles(live.clone(), images.clone(), cancel.clone()));
        tokio::time::sleep(Duration::from_millis(500)).await;
        // Saved as editors do: a new file renamed over the old one.
        let tmp = profiles.join(".tiny.yaml.swp");
        std::fs::write(&tmp, "name: tiny\nstage1: stage1\nimage: [broken\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        tokio::time::sleep(Duration::from_millis(800)).await;
        assert_eq!(live.errors().len(), 1, "the broken save is refused");
        std::fs::write(&tmp, "name: tiny\nstage1: stage1\nimage: tiny\nkernel_args: [quiet]\n").unwrap();
        std::fs::rename(&tmp, &file).unwrap();
        let mut applied = false;
        for _ in 0..50 {
            tokio::time::sleep(Duration::from_millis(100)).await;
            if live.current().get("tiny").is_some_and(|p| p.kernel_args == ["quiet"]) {
                applied = true;
                break;
            }
        }
        assert!(applied, "the save was applied");
        let revision = live.current().loaded("tiny").map(|p| p.revision.clone());
        // Quiet afterwards: no reload storm (each reload would build a new set).
        let before = Arc::as_ptr(&live.current());
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert_eq!(Arc::as_ptr(&live.current()), before, "no reloads without changes");
        assert_eq!(live.current().loaded("tiny").map(|p| p.revision.clone()), revision);
        cancel.cancel();
        task.await.unwrap().unwrap();
    }
}
