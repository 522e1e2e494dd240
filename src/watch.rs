//! Live profile reloads: watch `profiles/` (and the image manifests profiles refer
//! to) and reload on change. The directory is watched, not the files, because
//! editors save by writing a new file and renaming it over the old one.

use crate::images::ImageStore;
use crate::profiles::LiveProfiles;
use notify::RecursiveMode;
use notify_debouncer_full::new_debouncer;
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

/// Reload `live` whenever its directory or the image manifests change, until `cancel`.
pub async fn watch_profiles(
    live: Arc<LiveProfiles>,
    images: ImageStore,
    cancel: CancellationToken,
) -> Result<(), WatchError> {
    let (tx, mut rx) = tokio::sync::mpsc::channel(16);
    let mut debouncer = new_debouncer(DEBOUNCE, None, move |result| {
        // A full channel means a reload is already pending: dropping is fine.
        let _ = tx.try_send(result);
    })
    .map_err(|source| WatchError { path: live.dir().display().to_string(), source })?;
    let dir = live.dir().to_path_buf();
    debouncer
        .watch(&dir, RecursiveMode::Recursive)
        .map_err(|source| WatchError { path: dir.display().to_string(), source })?;
    let manifests = images.manifests_dir();
    if std::fs::create_dir_all(&manifests).is_ok() {
        if let Err(e) = debouncer.watch(&manifests, RecursiveMode::NonRecursive) {
            warn!(path = %manifests.display(), error = %e, "not watching image manifests; rebuilt images need a profile save to apply");
        }
    }
    info!(dir = %dir.display(), "watching profiles for changes");
    loop {
        let batch = tokio::select! {
            _ = cancel.cancelled() => return Ok(()),
            b = rx.recv() => match b { Some(b) => b, None => return Ok(()) },
        };
        if let Err(errors) = batch {
            for e in errors {
                warn!(error = %e, "profile watcher error");
            }
        }
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
}
