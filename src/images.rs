//! Images: a content-addressed artifact store plus named manifests, and the
//! `image build` driver that runs a recipe from `images/<name>/build.sh`.
//!
//! Layout under `<data>/images/`: `sha256/<hex>` holds each artifact exactly once;
//! `manifests/<name>.json` names the current build of an image and its artifacts.
//! Artifacts are immutable: the HTTP tier serves them with their digest as ETag.
//! Servers sharing one database fetch each other's images by digest (`sync`).

pub mod sync;

use serde::{Deserialize, Serialize};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::io::{Read, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::str::FromStr;

/// A SHA-256 digest, printed as 64 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Digest(pub [u8; 32]);

impl fmt::Display for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for Digest {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "sha256:{self}")
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("not a SHA-256 digest (64 lowercase hex digits)")]
pub struct DigestParseError;

impl FromStr for Digest {
    type Err = DigestParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let s = s.strip_prefix("sha256:").unwrap_or(s);
        // Lowercase only: the digest is also a file name, so one spelling per digest.
        if s.len() != 64 || !s.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
            return Err(DigestParseError);
        }
        let mut out = [0u8; 32];
        hex::decode_to_slice(s, &mut out).map_err(|_| DigestParseError)?;
        Ok(Digest(out))
    }
}

impl Serialize for Digest {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for Digest {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        String::deserialize(d)?.parse().map_err(serde::de::Error::custom)
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ImageKind {
    /// Kernel + initramfs with the agent.
    Stage1,
    /// A profile's root filesystem.
    Rootfs,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Artifact {
    pub digest: Digest,
    pub size: u64,
    /// e.g. `squashfs`, `cpio.zst`, `bzImage`.
    pub format: String,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Manifest {
    pub name: String,
    pub kind: ImageKind,
    pub built_at_ms: i64,
    /// `kernel` + `initrd` for stage one, `rootfs` for a root filesystem.
    pub artifacts: BTreeMap<String, Artifact>,
    /// What went in (package versions, module list), as the recipe reported it.
    pub inputs: BTreeMap<String, String>,
}

impl Manifest {
    /// The SHA-256 of the manifest's JSON as this version writes it: tells two
    /// builds of one name apart (sync warnings, tombstones).
    pub fn digest(&self) -> Digest {
        // A struct of strings, numbers and BTreeMaps always serialises.
        let json = serde_json::to_vec(self).unwrap_or_default();
        Digest(Sha256::digest(&json).into())
    }

    pub fn artifact(&self, role: &str) -> Result<&Artifact, ImageError> {
        self.artifacts
            .get(role)
            .ok_or_else(|| ImageError::MissingArtifact { image: self.name.clone(), role: role.to_string() })
    }
}

#[derive(Debug, thiserror::Error)]
pub enum ImageError {
    #[error("{path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("no image named {0:?} has been built (run `ramboot image build {0}`)")]
    NoSuchImage(String),
    #[error("image {image:?} has no {role} artifact")]
    MissingArtifact { image: String, role: String },
    #[error("manifest {path}: {message}")]
    BadManifest { path: PathBuf, message: String },
    #[error("invalid image name {0:?}: use letters, digits, '-' and '_'")]
    BadName(String),
    #[error("recipe {recipe}: {message}")]
    Recipe { recipe: String, message: String },
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> ImageError + '_ {
    move |source| ImageError::Io { path: path.to_path_buf(), source }
}

pub fn valid_name(name: &str) -> bool {
    !name.is_empty() && name.len() <= 64 && name.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
}

/// The content-addressed store rooted at `<data>/images`.
#[derive(Debug, Clone)]
pub struct ImageStore {
    root: PathBuf,
}

impl ImageStore {
    pub fn new(root: impl Into<PathBuf>) -> Self {
        ImageStore { root: root.into() }
    }

    pub fn blob_path(&self, digest: &Digest) -> PathBuf {
        self.blobs_dir().join(digest.to_string())
    }

    /// Where blobs live; temporary files beside them are named `.<digest>.…`, so
    /// they are never served nor collected as garbage.
    pub fn blobs_dir(&self) -> PathBuf {
        self.root.join("sha256")
    }

    pub fn manifests_dir(&self) -> PathBuf {
        self.root.join("manifests")
    }

    fn manifest_path(&self, name: &str) -> PathBuf {
        self.root.join("manifests").join(format!("{name}.json"))
    }

    /// `manifests/.deleted/<name>`: the digest of the manifest last deleted under
    /// that name, so image sync does not fetch it back from a peer that still has it.
    fn tombstone_path(&self, name: &str) -> PathBuf {
        self.root.join("manifests").join(".deleted").join(name)
    }

    /// Images deleted here: name → digest of the deleted manifest.
    pub fn tombstones(&self) -> Result<BTreeMap<String, Digest>, ImageError> {
        let dir = self.root.join("manifests").join(".deleted");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(BTreeMap::new()),
            Err(e) => return Err(ImageError::Io { path: dir, source: e }),
        };
        let mut out = BTreeMap::new();
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let text = std::fs::read_to_string(entry.path()).unwrap_or_default();
            // Anything else there (a half-written file) is not a tombstone.
            if let (true, Ok(digest)) = (valid_name(&name), text.trim().parse()) {
                out.insert(name, digest);
            }
        }
        Ok(out)
    }

    /// Hash `file` and copy it into the store (once per digest). The copy goes to a
    /// temporary name first and is renamed, so a reader never sees half a blob.
    pub fn ingest(&self, file: &Path, format: &str) -> Result<Artifact, ImageError> {
        let (digest, size) = hash_file(file)?;
        let dest = self.blob_path(&digest);
        if !dest.exists() {
            let dir = self.blobs_dir();
            std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
            let tmp = dir.join(format!(".{digest}.partial"));
            std::fs::copy(file, &tmp).map_err(io_err(&tmp))?;
            std::fs::rename(&tmp, &dest).map_err(io_err(&dest))?;
        }
        Ok(Artifact { digest, size, format: format.to_string() })
    }

    pub fn write_manifest(&self, manifest: &Manifest) -> Result<(), ImageError> {
        let path = self.manifest_path(&manifest.name);
        let dir = self.root.join("manifests");
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let tmp = dir.join(format!(".{}.json.partial", manifest.name));
        let text = serde_json::to_string_pretty(manifest)
            .map_err(|e| ImageError::BadManifest { path: path.clone(), message: e.to_string() })?;
        let mut f = std::fs::File::create(&tmp).map_err(io_err(&tmp))?;
        f.write_all(text.as_bytes()).and_then(|_| f.sync_all()).map_err(io_err(&tmp))?;
        std::fs::rename(&tmp, &path).map_err(io_err(&path))?;
        // Built (or fetched) again: no longer deleted.
        match std::fs::remove_file(self.tombstone_path(&manifest.name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(io_err(&path)(e)),
            _ => Ok(()),
        }
    }

    pub fn manifest(&self, name: &str) -> Result<Manifest, ImageError> {
        if !valid_name(name) {
            return Err(ImageError::BadName(name.to_string()));
        }
        let path = self.manifest_path(name);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(ImageError::NoSuchImage(name.to_string()))
            }
            Err(e) => return Err(ImageError::Io { path, source: e }),
        };
        serde_json::from_str(&text).map_err(|e| ImageError::BadManifest { path, message: e.to_string() })
    }

    pub fn list(&self) -> Result<Vec<Manifest>, ImageError> {
        let dir = self.root.join("manifests");
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(vec![]),
            Err(e) => return Err(ImageError::Io { path: dir, source: e }),
        };
        let mut out = vec![];
        for entry in entries {
            let name = entry.map_err(io_err(&dir))?.file_name();
            let name = name.to_string_lossy();
            if let Some(stem) = name.strip_suffix(".json").filter(|s| !s.starts_with('.')) {
                out.push(self.manifest(stem)?);
            }
        }
        out.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(out)
    }
}

/// What the boot planner reads of the store: the stage-one set's kernel and
/// initramfs, and a profile image's root filesystem, each as built.
impl ramboot_core::plan::Images for ImageStore {
    fn stage1(&self, name: &str) -> Result<ramboot_core::plan::StageOne, String> {
        let manifest = self.manifest(name).map_err(|e| e.to_string())?;
        let digest = |role| manifest.artifact(role).map(|a| a.digest.to_string()).map_err(|e| e.to_string());
        Ok(ramboot_core::plan::StageOne {
            kernel_digest: digest("kernel")?,
            initrd_digest: digest("initrd")?,
            name: manifest.name.clone(),
        })
    }

    fn rootfs(&self, name: &str) -> Result<ramboot_core::plan::BootImage, String> {
        let manifest = self.manifest(name).map_err(|e| e.to_string())?;
        let rootfs = manifest.artifact("rootfs").map_err(|e| e.to_string())?;
        Ok(ramboot_core::plan::BootImage {
            name: manifest.name.clone(),
            digest: rootfs.digest.to_string(),
            size: rootfs.size,
            format: rootfs.format.clone(),
        })
    }
}

impl ImageStore {
    /// Remove an image's manifest, then every blob no remaining manifest uses and
    /// no boot in progress has pinned (`pinned`: digests, from
    /// `Store::pinned_digests`).
    /// A tombstone remembers the deleted manifest, so image sync does not fetch it
    /// back from a peer (a different build of the name still comes).
    pub fn delete(&self, name: &str, pinned: &BTreeSet<String>) -> Result<(), ImageError> {
        let deleted = self.manifest(name)?;
        let tombstone = self.tombstone_path(name);
        if let Some(dir) = tombstone.parent() {
            std::fs::create_dir_all(dir).map_err(io_err(dir))?;
        }
        std::fs::write(&tombstone, format!("{}\n", deleted.digest())).map_err(io_err(&tombstone))?;
        let path = self.manifest_path(name);
        std::fs::remove_file(&path).map_err(io_err(&path))?;
        self.collect_garbage(pinned)
    }

    /// Remove the blobs that are garbage (see [`is_garbage`]).
    fn collect_garbage(&self, pinned: &BTreeSet<String>) -> Result<(), ImageError> {
        let live: BTreeSet<String> =
            self.list()?.iter().flat_map(|m| m.artifacts.values().map(|a| a.digest.to_string())).collect();
        let dir = self.blobs_dir();
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            Err(e) => return Err(ImageError::Io { path: dir, source: e }),
        };
        for entry in entries {
            let entry = entry.map_err(io_err(&dir))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            if is_garbage(&name, &live, pinned) {
                let path = entry.path();
                std::fs::remove_file(&path).map_err(io_err(&path))?;
            }
        }
        Ok(())
    }
}

/// A blob file is garbage when it is named as a blob (a digest: temporary and
/// foreign files are left alone), no manifest references it, and no boot in
/// progress pinned it: a node may be loading an image whose manifest has since
/// been rebuilt to a new digest, and its blob must outlive that boot.
pub fn is_garbage(file_name: &str, live: &BTreeSet<String>, pinned: &BTreeSet<String>) -> bool {
    file_name.parse::<Digest>().is_ok() && !live.contains(file_name) && !pinned.contains(file_name)
}

pub fn hash_file(path: &Path) -> Result<(Digest, u64), ImageError> {
    let file = std::fs::File::open(path).map_err(io_err(path))?;
    hash_copy(file, &mut std::io::sink(), |_| Ok(())).map_err(io_err(path))
}

/// Copy `from` to `to` while hashing it: its SHA-256 and length. `tick` sees the
/// bytes so far after each chunk; an error from it stops the copy (a caller's
/// cancellation or size limit).
pub fn hash_copy(
    mut from: impl Read,
    to: &mut impl Write,
    mut tick: impl FnMut(u64) -> std::io::Result<()>,
) -> std::io::Result<(Digest, u64)> {
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let mut size = 0u64;
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) => break,
            Ok(n) => n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        hasher.update(&buf[..n]);
        to.write_all(&buf[..n])?;
        size += n as u64;
        tick(size)?;
    }
    Ok((Digest(hasher.finalize().into()), size))
}

/// Manifest input: digest of the recipe's files (and the shared `images/lib`).
pub const RECIPE_DIGEST: &str = "recipe_sha256";
/// Manifest input: digest of the agent binary put into a stage-one set.
pub const AGENT_DIGEST: &str = "agent_sha256";

/// One digest over every file of `images/<recipe>/` and `images/lib/`, names
/// included: a build is stale when this changes.
pub fn recipe_digest(recipes_dir: &Path, recipe: &str) -> Result<Digest, ImageError> {
    let mut files = vec![];
    for dir in [recipes_dir.join(recipe), recipes_dir.join("lib")] {
        let entries = match std::fs::read_dir(&dir) {
            Ok(e) => e,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(ImageError::Io { path: dir, source: e }),
        };
        for entry in entries {
            let path = entry.map_err(io_err(&dir))?.path();
            if path.is_file() {
                files.push(path);
            }
        }
    }
    files.sort();
    let mut hasher = Sha256::new();
    for path in files {
        let rel = path.strip_prefix(recipes_dir).unwrap_or(&path);
        hasher.update(rel.to_string_lossy().as_bytes());
        hasher.update(hash_file(&path)?.0 .0);
    }
    Ok(Digest(hasher.finalize().into()))
}

/// What a recipe's build leaves in its output directory, and what it becomes.
const OUTPUTS: &[(&str, &str, &str, ImageKind)] = &[
    ("vmlinuz", "kernel", "bzImage", ImageKind::Stage1),
    ("initrd.img", "initrd", "cpio.zst", ImageKind::Stage1),
    ("rootfs.sqfs", "rootfs", "squashfs", ImageKind::Rootfs),
];

/// Inputs of one `ramboot image build`.
#[derive(Debug, Clone)]
pub struct BuildRequest {
    pub recipe: String,
    /// The directory holding `<recipe>/build.sh` (the repo's `images/`).
    pub recipes_dir: PathBuf,
    /// Downloads and intermediate results kept between builds.
    pub cache_dir: PathBuf,
    /// Static agent binary to put into a stage-one initramfs.
    pub agent: Option<PathBuf>,
    /// Build for another architecture (Debian's name, `arm64`): the image is named
    /// `<recipe>-<arch>` and the recipe gets `ARCH`. `None`: the host's.
    pub arch: Option<String>,
    pub now_ms: i64,
}

impl BuildRequest {
    /// The image this request builds: the recipe's name, with the architecture
    /// when it is another one's.
    pub fn image_name(&self) -> String {
        match &self.arch {
            Some(arch) => format!("{}-{arch}", self.recipe),
            None => self.recipe.clone(),
        }
    }
}

/// Run a recipe and ingest its outputs. The recipe's own progress lines stream to
/// the caller's terminal as they happen.
pub fn build(store: &ImageStore, req: &BuildRequest) -> Result<Manifest, ImageError> {
    let recipe_err = |message: String| ImageError::Recipe { recipe: req.recipe.clone(), message };
    if !valid_name(&req.recipe) {
        return Err(ImageError::BadName(req.recipe.clone()));
    }
    let script = req.recipes_dir.join(&req.recipe).join("build.sh");
    if !script.is_file() {
        return Err(recipe_err(format!("{} does not exist", script.display())));
    }
    let name = req.image_name();
    if !valid_name(&name) {
        return Err(ImageError::BadName(name));
    }
    let out = req.cache_dir.join("out").join(&name);
    if out.exists() {
        std::fs::remove_dir_all(&out).map_err(io_err(&out))?;
    }
    std::fs::create_dir_all(&out).map_err(io_err(&out))?;
    // One cache for every recipe: stage two runs on stage one's kernel, so the
    // profile images must carry modules of the very same kernel package.
    let cache = req.cache_dir.join("shared");
    std::fs::create_dir_all(&cache).map_err(io_err(&cache))?;
    let mut cmd = Command::new("bash");
    cmd.arg(&script).env("OUT", &out).env("CACHE", &cache);
    if let Some(agent) = &req.agent {
        cmd.env("AGENT", agent);
    }
    if let Some(arch) = &req.arch {
        cmd.env("ARCH", arch);
    }
    let status = cmd.status().map_err(io_err(&script))?;
    if !status.success() {
        return Err(recipe_err(format!("build.sh failed ({status})")));
    }
    let mut artifacts = BTreeMap::new();
    let mut kind = None;
    for (file, role, format, file_kind) in OUTPUTS {
        let path = out.join(file);
        if path.is_file() {
            artifacts.insert(role.to_string(), store.ingest(&path, format)?);
            kind = Some(*file_kind);
        }
    }
    let kind = kind.ok_or_else(|| recipe_err("produced none of vmlinuz, initrd.img, rootfs.sqfs".into()))?;
    if kind == ImageKind::Stage1 && !(artifacts.contains_key("kernel") && artifacts.contains_key("initrd")) {
        return Err(recipe_err("a stage-one set needs both vmlinuz and initrd.img".into()));
    }
    let mut inputs: BTreeMap<String, String> = std::fs::read_to_string(out.join("inputs.txt"))
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect();
    inputs.insert(RECIPE_DIGEST.into(), recipe_digest(&req.recipes_dir, &req.recipe)?.to_string());
    if let Some(agent) = &req.agent {
        inputs.insert(AGENT_DIGEST.into(), hash_file(agent)?.0.to_string());
    }
    let manifest = Manifest { name, kind, built_at_ms: req.now_ms, artifacts, inputs };
    store.write_manifest(&manifest)?;
    std::fs::remove_dir_all(&out).map_err(io_err(&out))?;
    Ok(manifest)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn digest_parsing_is_strict() {
        let hex = "ab".repeat(32);
        assert_eq!(hex.parse::<Digest>().unwrap().to_string(), hex);
        assert!(format!("sha256:{hex}").parse::<Digest>().is_ok());
        for bad in ["", "ab", &"AB".repeat(32), &format!("{}/..", &hex[..61]), &"zz".repeat(32)] {
            assert!(bad.parse::<Digest>().is_err(), "{bad}");
        }
    }

    #[test]
    fn ingest_is_content_addressed_and_manifests_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("images"));
        let src = dir.path().join("blob");
        std::fs::write(&src, b"hello").unwrap();
        let art = store.ingest(&src, "raw").unwrap();
        assert_eq!(art.digest.to_string(), "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824");
        assert_eq!(std::fs::read(store.blob_path(&art.digest)).unwrap(), b"hello");
        let manifest = Manifest {
            name: "tiny".into(),
            kind: ImageKind::Rootfs,
            built_at_ms: 1,
            artifacts: [("rootfs".to_string(), art)].into(),
            inputs: BTreeMap::new(),
        };
        store.write_manifest(&manifest).unwrap();
        assert_eq!(store.manifest("tiny").unwrap(), manifest);
        assert_eq!(store.list().unwrap(), vec![manifest.clone()]);
        assert!(matches!(store.manifest("nope"), Err(ImageError::NoSuchImage(_))));
        assert!(matches!(store.manifest("../x"), Err(ImageError::BadName(_))));
        let blob = store.blob_path(&manifest.artifacts["rootfs"].digest);
        store.delete("tiny", &BTreeSet::new()).unwrap();
        assert!(store.list().unwrap().is_empty());
        assert!(!blob.exists(), "unreferenced blobs are collected");
        assert_eq!(store.tombstones().unwrap(), BTreeMap::from([("tiny".to_string(), manifest.digest())]));
        store.write_manifest(&manifest).unwrap();
        assert!(store.tombstones().unwrap().is_empty(), "built again: no longer deleted");
    }

    #[test]
    fn gc_keeps_blobs_pinned_by_boots_in_progress() {
        let dir = tempfile::tempdir().unwrap();
        let store = ImageStore::new(dir.path().join("images"));
        let ingest = |bytes: &[u8]| {
            let src = dir.path().join("src");
            std::fs::write(&src, bytes).unwrap();
            store.ingest(&src, "squashfs").unwrap()
        };
        let manifest = |name: &str, art: &Artifact| Manifest {
            name: name.into(),
            kind: ImageKind::Rootfs,
            built_at_ms: 1,
            artifacts: [("rootfs".to_string(), art.clone())].into(),
            inputs: BTreeMap::new(),
        };
        // `web` was rebuilt while a node was loading its first build; `old` is unused.
        let (loading, rebuilt, other) = (ingest(b"web v1"), ingest(b"web v2"), ingest(b"old"));
        store.write_manifest(&manifest("web", &rebuilt)).unwrap();
        store.write_manifest(&manifest("old", &other)).unwrap();
        let pinned: BTreeSet<String> = [loading.digest.to_string()].into();
        store.delete("old", &pinned).unwrap();
        assert!(store.blob_path(&loading.digest).exists(), "pinned by a boot in progress");
        assert!(store.blob_path(&rebuilt.digest).exists(), "referenced by a manifest");
        assert!(!store.blob_path(&other.digest).exists(), "garbage");
        // Once the boot is over, the next collection takes it.
        store.write_manifest(&manifest("old", &other)).unwrap();
        store.delete("old", &BTreeSet::new()).unwrap();
        assert!(!store.blob_path(&loading.digest).exists());
        assert!(store.blob_path(&rebuilt.digest).exists());
    }

    #[test]
    fn only_digest_named_files_are_ever_garbage() {
        let digest = "2cf24dba5fb0a30e26e83b2ac5b9e29e1b161e5c1fa7425e73043362938b9824".to_string();
        let none = BTreeSet::new();
        let set = BTreeSet::from([digest.clone()]);
        assert!(is_garbage(&digest, &none, &none));
        assert!(!is_garbage(&digest, &set, &none));
        assert!(!is_garbage(&digest, &none, &set));
        assert!(!is_garbage(&format!(".{digest}.partial"), &none, &none));
        assert!(!is_garbage("README", &none, &none));
    }
}
