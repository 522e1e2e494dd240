//! Image sync between servers sharing one database (`cluster.peers`, issue 13): a
//! server fetches the images its peers built, so an image built on one server
//! boots from every server without a shared filesystem.
//!
//! Each round asks every peer for its manifests (`GET /artifacts/manifests`, public
//! like the blobs: names, sizes and digests only). For each manifest whose name this
//! server lacks, it downloads the blobs it lacks (`GET /artifacts/sha256/<digest>`),
//! one at a time, to a temporary file beside the blobs while hashing them; a blob
//! whose SHA-256 or size differs from the manifest is discarded, counted and tried
//! again next round, so a bad blob is never served. The manifest is written last,
//! so no manifest ever names a missing blob; the profile watcher picks it up.
//!
//! What it does not do: replace a local image. A name both servers have with
//! different content keeps the local one (warned once per peer, name and digest);
//! an image deleted here is not fetched back while the peer's manifest is the one
//! deleted (the tombstone, see [`ImageStore::delete`]).
//!
//! The pure parts ([`plan`], [`verify`], [`copy_verified`], [`parse_list`]) decide;
//! [`Syncer`] does the blocking HTTP and file I/O, run on tokio's blocking pool.

use super::{valid_name, Artifact, Digest, ImageError, ImageStore, Manifest};
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::io::Read;
use std::net::SocketAddrV4;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;
use tracing::{debug, error, info, warn};

/// A peer's manifest list larger than this is refused: real lists are kilobytes.
pub const MAX_LIST_BYTES: u64 = 8 << 20;
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// The longest a peer may leave a read waiting (a stalled download).
const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// How often a long download logs its progress.
const PROGRESS_EVERY: Duration = Duration::from_secs(5);

/// The body of `GET /artifacts/manifests`.
#[derive(Debug, Serialize, Deserialize)]
pub struct ManifestList<M> {
    pub manifests: Vec<M>,
}

#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error("{0}")]
    Peer(String),
    #[error("blob {expected}: the peer sent {got} bytes, the manifest says {size}", expected = .want.digest, size = .want.size)]
    Size { want: Artifact, got: String },
    #[error("blob {expected}: the peer's bytes hash to {got}", expected = .want.digest)]
    Digest { want: Artifact, got: Digest },
    #[error("transfer: {0}")]
    Transfer(std::io::Error),
    #[error("blob {0} vanished before its manifest was written (deleted meanwhile)")]
    Vanished(Digest),
    #[error(transparent)]
    Image(#[from] ImageError),
    #[error("stopped: the server is shutting down")]
    Cancelled,
}

impl SyncError {
    /// The `outcome` label of `ramboot_image_sync_blobs_total` for a failed blob.
    pub fn outcome(&self) -> &'static str {
        match self {
            SyncError::Peer(_) => "peer_error",
            SyncError::Size { .. } => "bad_size",
            SyncError::Digest { .. } => "bad_digest",
            SyncError::Transfer(_) => "transfer_error",
            SyncError::Vanished(_) | SyncError::Image(_) => "local_error",
            SyncError::Cancelled => "cancelled",
        }
    }
}

/// The same image: the same kind and the same artifacts (when it was built, or
/// what the recipe reported as inputs, may differ).
fn same_image(a: &Manifest, b: &Manifest) -> bool {
    a.kind == b.kind && a.artifacts == b.artifacts
}

/// A peer's manifest this server should have, and the blobs it lacks for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Wanted {
    pub manifest: Manifest,
    pub missing: Vec<Artifact>,
}

/// What to do with one peer's manifests.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Plan {
    pub fetch: Vec<Wanted>,
    /// Names both servers have with different images: (name, the peer's manifest digest).
    pub conflicts: Vec<(String, Digest)>,
}

/// Decide what to fetch from a peer: every manifest whose name this server lacks
/// (unless it is the very manifest deleted here: `deleted`, name → manifest digest),
/// with the blobs `have` says are not here, each once.
pub fn plan(
    local: &BTreeMap<String, Manifest>,
    deleted: &BTreeMap<String, Digest>,
    peer: Vec<Manifest>,
    have: impl Fn(&Digest) -> bool,
) -> Plan {
    let mut out = Plan::default();
    for manifest in peer {
        match local.get(&manifest.name) {
            Some(mine) if same_image(mine, &manifest) => {}
            Some(_) => out.conflicts.push((manifest.name.clone(), manifest.digest())),
            None if deleted.get(&manifest.name) == Some(&manifest.digest()) => {}
            None => {
                let mut missing: Vec<Artifact> =
                    manifest.artifacts.values().filter(|a| !have(&a.digest)).cloned().collect();
                missing.sort_by_key(|a| a.digest);
                missing.dedup_by_key(|a| a.digest);
                out.fetch.push(Wanted { manifest, missing });
            }
        }
    }
    out
}

/// A peer's manifest list: the manifests, and how many entries were refused (not
/// a manifest, or an invalid name: never a path this server writes).
pub fn parse_list(body: &[u8]) -> Result<(Vec<Manifest>, usize), SyncError> {
    let list: ManifestList<serde_json::Value> =
        serde_json::from_slice(body).map_err(|e| SyncError::Peer(format!("manifest list: {e}")))?;
    let total = list.manifests.len();
    let mut seen = HashSet::new();
    let manifests: Vec<Manifest> = list
        .manifests
        .into_iter()
        .filter_map(|v| serde_json::from_value::<Manifest>(v).ok())
        .filter(|m| valid_name(&m.name) && seen.insert(m.name.clone()))
        .collect();
    let refused = total - manifests.len();
    Ok((manifests, refused))
}

/// Does what arrived match the manifest's artifact?
pub fn verify(want: &Artifact, got: Digest, size: u64) -> Result<(), SyncError> {
    if size != want.size {
        return Err(SyncError::Size { want: want.clone(), got: size.to_string() });
    }
    if got != want.digest {
        return Err(SyncError::Digest { want: want.clone(), got });
    }
    Ok(())
}

/// Copy a blob's body to `to`, hashing it, and verify it against `want`. Reads at
/// most one byte past the manifest's size, so an endless body is cut short.
/// `progress` sees the bytes so far; `false` stops the copy ([`SyncError::Cancelled`]).
pub fn copy_verified(
    from: impl Read,
    to: &mut impl std::io::Write,
    want: &Artifact,
    mut progress: impl FnMut(u64) -> bool,
) -> Result<(), SyncError> {
    let mut stopped = false;
    let copied = super::hash_copy(from.take(want.size.saturating_add(1)), to, |n| {
        if progress(n) {
            Ok(())
        } else {
            stopped = true;
            Err(std::io::Error::other("stopped"))
        }
    });
    match copied {
        Err(_) if stopped => Err(SyncError::Cancelled),
        Err(e) => Err(SyncError::Transfer(e)),
        Ok((_, size)) if size > want.size => {
            Err(SyncError::Size { want: want.clone(), got: format!("more than {}", want.size) })
        }
        Ok((digest, size)) => verify(want, digest, size),
    }
}

/// What one round did.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Round {
    pub images: usize,
    pub blobs: usize,
    pub failures: usize,
}

/// Fetches peers' images into this server's store (blocking I/O: run it on the
/// blocking pool). One download at a time.
pub struct Syncer {
    images: ImageStore,
    peers: Vec<SocketAddrV4>,
    agent: ureq::Agent,
    /// Conflicts and failures already warned about: (peer, name, the peer's
    /// manifest digest). A repeat is logged at debug level: a bad blob fails
    /// every round until the peer's image changes.
    warned: HashSet<(SocketAddrV4, String, Digest)>,
    cancel: CancellationToken,
}

impl Syncer {
    pub fn new(images: ImageStore, peers: Vec<SocketAddrV4>, cancel: CancellationToken) -> Syncer {
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(CONNECT_TIMEOUT)
            .timeout_read(STALL_TIMEOUT)
            .timeout_write(STALL_TIMEOUT)
            .redirects(0)
            .build();
        Syncer { images, peers, agent, warned: HashSet::new(), cancel }
    }

    /// Ask every peer in turn; a peer's failure is logged and counted, and the
    /// next round tries again.
    pub fn round(&mut self) -> Round {
        let mut round = Round::default();
        for peer in self.peers.clone() {
            if self.cancel.is_cancelled() {
                break;
            }
            if let Err(e) = self.sync_peer(peer, &mut round) {
                metrics::counter!("ramboot_image_sync_peer_errors_total").increment(1);
                warn!(peer = %peer, error = %e, "image sync: peer unavailable; trying again next round");
            }
        }
        round
    }

    fn sync_peer(&mut self, peer: SocketAddrV4, round: &mut Round) -> Result<(), SyncError> {
        let (manifests, refused) = parse_list(&self.fetch_list(peer)?)?;
        if refused > 0 {
            warn!(peer = %peer, refused, "image sync: the peer listed manifests this server cannot read");
        }
        let local = self.images.list()?.into_iter().map(|m| (m.name.clone(), m)).collect();
        let deleted = self.images.tombstones()?;
        let plan = plan(&local, &deleted, manifests, |d| self.images.blob_path(d).exists());
        for (name, digest) in plan.conflicts {
            if self.warned.insert((peer, name.clone(), digest)) {
                warn!(peer = %peer, image = %name, peer_manifest = %digest,
                    "image sync: the peer's image differs from this server's; keeping this server's");
            }
        }
        for wanted in plan.fetch {
            if self.cancel.is_cancelled() {
                return Err(SyncError::Cancelled);
            }
            match self.fetch_image(peer, &wanted) {
                Ok(blobs) => {
                    round.images += 1;
                    round.blobs += blobs;
                }
                Err(SyncError::Cancelled) => return Err(SyncError::Cancelled),
                Err(e) => {
                    round.failures += 1;
                    let (image, digest) = (&wanted.manifest.name, wanted.manifest.digest());
                    if self.warned.insert((peer, image.clone(), digest)) {
                        warn!(peer = %peer, image = %image, error = %e, "image sync: not fetched; trying again each round");
                    } else {
                        debug!(peer = %peer, image = %image, error = %e, "image sync: not fetched again");
                    }
                }
            }
        }
        Ok(())
    }

    fn fetch_list(&self, peer: SocketAddrV4) -> Result<Vec<u8>, SyncError> {
        let response = self.agent.get(&format!("http://{peer}/artifacts/manifests")).call().map_err(peer_error)?;
        let mut body = Vec::new();
        response.into_reader().take(MAX_LIST_BYTES + 1).read_to_end(&mut body).map_err(SyncError::Transfer)?;
        if body.len() as u64 > MAX_LIST_BYTES {
            return Err(SyncError::Peer(format!("manifest list over {MAX_LIST_BYTES} bytes")));
        }
        Ok(body)
    }

    /// Fetch `wanted`'s missing blobs, then write its manifest. Returns the blobs fetched.
    fn fetch_image(&self, peer: SocketAddrV4, wanted: &Wanted) -> Result<usize, SyncError> {
        let mut fetched = 0;
        for artifact in &wanted.missing {
            // An earlier image of this round may have brought it.
            if self.images.blob_path(&artifact.digest).exists() {
                continue;
            }
            let started = Instant::now();
            let outcome = self.fetch_blob(peer, artifact);
            metrics::counter!("ramboot_image_sync_blobs_total", "outcome" => match &outcome {
                Ok(()) => "fetched",
                Err(e) => e.outcome(),
            })
            .increment(1);
            outcome?;
            metrics::counter!("ramboot_image_sync_bytes_total").increment(artifact.size);
            fetched += 1;
            info!(peer = %peer, image = %wanted.manifest.name, digest = %artifact.digest, bytes = artifact.size,
                mb_per_s = format!("{:.1}", rate(artifact.size, started.elapsed())), "image sync: blob fetched and verified");
        }
        // A concurrent image delete collects blobs no manifest names yet, and a
        // local build may have taken the name meanwhile: check both last.
        let manifest = &wanted.manifest;
        if let Some(gone) = manifest.artifacts.values().find(|a| !self.images.blob_path(&a.digest).exists()) {
            return Err(SyncError::Vanished(gone.digest));
        }
        match self.images.manifest(&manifest.name) {
            Err(ImageError::NoSuchImage(_)) => {}
            Ok(_) => return Ok(fetched),
            Err(e) => return Err(e.into()),
        }
        self.images.write_manifest(manifest)?;
        metrics::counter!("ramboot_image_sync_images_total").increment(1);
        info!(peer = %peer, image = %manifest.name, blobs = fetched, "image sync: image fetched from peer");
        Ok(fetched)
    }

    /// Download one blob to a temporary file, verify it, and only then rename it
    /// into place; on any failure the temporary file is removed.
    fn fetch_blob(&self, peer: SocketAddrV4, want: &Artifact) -> Result<(), SyncError> {
        let url = format!("http://{peer}/artifacts/sha256/{}", want.digest);
        let response = self.agent.get(&url).call().map_err(peer_error)?;
        if let Some(len) = response.header("content-length").and_then(|v| v.parse::<u64>().ok()) {
            if len != want.size {
                return Err(SyncError::Size { want: want.clone(), got: len.to_string() });
            }
        }
        let dir = self.images.blobs_dir();
        let io = |path: &std::path::Path| {
            let path = path.to_path_buf();
            move |source| SyncError::Image(ImageError::Io { path, source })
        };
        std::fs::create_dir_all(&dir).map_err(io(&dir))?;
        let tmp = dir.join(format!(".{}.sync", want.digest));
        let result = (|| {
            let mut file = std::fs::File::create(&tmp).map_err(io(&tmp))?;
            let (started, mut logged) = (Instant::now(), Instant::now());
            copy_verified(response.into_reader(), &mut file, want, |n| {
                if logged.elapsed() >= PROGRESS_EVERY {
                    logged = Instant::now();
                    info!(peer = %peer, digest = %want.digest, bytes = n, of = want.size,
                        mb_per_s = format!("{:.1}", rate(n, started.elapsed())), "image sync: downloading");
                }
                !self.cancel.is_cancelled()
            })?;
            file.sync_all().map_err(io(&tmp))?;
            std::fs::rename(&tmp, self.images.blob_path(&want.digest)).map_err(io(&tmp))
        })();
        if result.is_err() {
            let _ = std::fs::remove_file(&tmp);
        }
        result
    }
}

fn rate(bytes: u64, elapsed: Duration) -> f64 {
    bytes as f64 / 1e6 / elapsed.as_secs_f64().max(1e-3)
}

fn peer_error(e: ureq::Error) -> SyncError {
    match e {
        ureq::Error::Status(code, response) => SyncError::Peer(format!("{} answered {code}", response.get_url())),
        ureq::Error::Transport(t) => SyncError::Peer(t.to_string()),
    }
}

/// One round on the blocking pool. `None` when the server is stopping (the round
/// stops at its next chunk) or the round panicked.
pub async fn round(mut syncer: Syncer) -> Option<(Syncer, Round)> {
    let cancel = syncer.cancel.clone();
    let task = tokio::task::spawn_blocking(move || {
        let round = syncer.round();
        (syncer, round)
    });
    tokio::select! {
        _ = cancel.cancelled() => None,
        done = task => match done {
            Ok(done) => Some(done),
            Err(e) => {
                error!(error = %e, "image sync panicked; stopping it");
                None
            }
        },
    }
}

/// Fetch the peers' images every `every` until the server stops (`serve` starts
/// this when `cluster.peers` is set).
pub async fn run(mut syncer: Syncer, every: Duration) {
    let cancel = syncer.cancel.clone();
    loop {
        let Some((next, done)) = round(syncer).await else { return };
        if done != Round::default() {
            info!(images = done.images, blobs = done.blobs, failures = done.failures, "image sync round");
        }
        syncer = next;
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every) => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::images::ImageKind;
    use sha2::{Digest as _, Sha256};

    fn artifact(bytes: &[u8], format: &str) -> Artifact {
        Artifact { digest: Digest(Sha256::digest(bytes).into()), size: bytes.len() as u64, format: format.into() }
    }

    fn manifest(name: &str, blobs: &[&[u8]]) -> Manifest {
        let artifacts = blobs.iter().enumerate().map(|(i, b)| (format!("role{i}"), artifact(b, "raw"))).collect();
        Manifest { name: name.into(), kind: ImageKind::Rootfs, built_at_ms: 1, artifacts, inputs: BTreeMap::new() }
    }

    fn by_name(ms: &[Manifest]) -> BTreeMap<String, Manifest> {
        ms.iter().map(|m| (m.name.clone(), m.clone())).collect()
    }

    #[test]
    fn plan_fetches_missing_names_and_only_the_blobs_not_here() {
        let shared: &[u8] = b"kernel both have";
        let local = by_name(&[manifest("web", &[b"web"])]);
        let have = artifact(shared, "raw").digest;
        let peer = vec![
            // Same image, rebuilt at another time: nothing to do, no warning.
            Manifest { built_at_ms: 99, ..manifest("web", &[b"web"]) },
            manifest("db", &[shared, b"db rootfs", b"db rootfs"]),
        ];
        let plan = plan(&local, &BTreeMap::new(), peer, |d| *d == have);
        assert!(plan.conflicts.is_empty());
        assert_eq!(plan.fetch.len(), 1);
        assert_eq!(plan.fetch[0].manifest.name, "db");
        assert_eq!(plan.fetch[0].missing, vec![artifact(b"db rootfs", "raw")], "each missing blob once");
    }

    #[test]
    fn a_name_both_have_with_other_content_stays_local_and_is_reported() {
        let local = by_name(&[manifest("web", &[b"web v1"])]);
        let theirs = manifest("web", &[b"web v2"]);
        let plan = plan(&local, &BTreeMap::new(), vec![theirs.clone()], |_| false);
        assert!(plan.fetch.is_empty());
        assert_eq!(plan.conflicts, vec![("web".to_string(), theirs.digest())]);
    }

    #[test]
    fn an_image_deleted_here_is_not_fetched_back_but_a_rebuild_is() {
        let old = manifest("web", &[b"web v1"]);
        let deleted = BTreeMap::from([("web".to_string(), old.digest())]);
        assert!(plan(&BTreeMap::new(), &deleted, vec![old], |_| false).fetch.is_empty());
        let rebuilt = manifest("web", &[b"web v2"]);
        assert_eq!(plan(&BTreeMap::new(), &deleted, vec![rebuilt], |_| false).fetch.len(), 1);
    }

    #[test]
    fn lists_with_bad_entries_keep_the_good_ones() {
        let good = manifest("web", &[b"web"]);
        let mut evil = serde_json::to_value(manifest("x", &[b"x"])).unwrap();
        evil["name"] = "../../etc/passwd".into();
        let body = serde_json::json!({"manifests": [good, evil, {"name": "junk"}, good]});
        let (manifests, refused) = parse_list(body.to_string().as_bytes()).unwrap();
        assert_eq!(manifests, vec![good.clone()]);
        assert_eq!(refused, 3, "a bad name, a non-manifest and a duplicate");
        assert!(parse_list(b"<html>").is_err());
    }

    #[test]
    fn only_the_exact_bytes_are_accepted() {
        let want = artifact(b"the rootfs", "squashfs");
        let mut out = Vec::new();
        copy_verified(&b"the rootfs"[..], &mut out, &want, |_| true).unwrap();
        assert_eq!(out, b"the rootfs");
        for (bytes, outcome) in [
            (&b"the rootfz"[..], "bad_digest"),
            (&b"the root"[..], "bad_size"),
            (&b"the rootfs and more"[..], "bad_size"),
        ] {
            let mut out = Vec::new();
            let err = copy_verified(bytes, &mut out, &want, |_| true).unwrap_err();
            assert_eq!(err.outcome(), outcome, "{err}");
            assert!(out.len() as u64 <= want.size + 1, "reads stop just past the manifest's size");
        }
        let err = copy_verified(&b"the rootfs"[..], &mut Vec::new(), &want, |_| false).unwrap_err();
        assert!(matches!(err, SyncError::Cancelled));
    }

    /// A reader that fails: a peer that stalls past the read timeout.
    struct Stalls;
    impl Read for Stalls {
        fn read(&mut self, _: &mut [u8]) -> std::io::Result<usize> {
            Err(std::io::ErrorKind::TimedOut.into())
        }
    }

    #[test]
    fn a_stalled_transfer_is_an_error_not_a_short_blob() {
        let want = artifact(b"x", "raw");
        let err = copy_verified(Stalls, &mut Vec::new(), &want, |_| true).unwrap_err();
        assert_eq!(err.outcome(), "transfer_error");
    }

    #[test]
    fn a_peer_that_is_not_there_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("images"));
        let syncer = Syncer::new(store.clone(), vec![], CancellationToken::new());
        let want = artifact(b"blob", "raw");
        // Nothing listens on loopback's discard port: the connection is refused.
        let err = syncer.fetch_blob("127.0.0.1:9".parse().unwrap(), &want).unwrap_err();
        assert_eq!(err.outcome(), "peer_error", "{err}");
        assert!(!store.blob_path(&want.digest).exists());
        let leftovers = std::fs::read_dir(store.blobs_dir()).map(|d| d.count()).unwrap_or(0);
        assert_eq!(leftovers, 0);
    }
}
