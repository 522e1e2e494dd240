//! Image sync (issue 13): two `ramboot serve` on one PostgreSQL database, each with
//! its own data directory. Server 0 built the images; server 1 has none and fetches
//! them from server 0 by digest over HTTP (`images::sync`), so its profiles load
//! and it serves the same bytes. A blob whose bytes do not match its manifest is
//! never taken, and an image deleted on server 1 is not fetched back.
//!
//! The servers, each in its own namespace, are ports of one bridge. Needs
//! PostgreSQL (`RAMBOOT_TEST_POSTGRES`): peers are refused on SQLite.

mod common;

use common::netns::{Ramboot, ServeInLab};
use common::{pattern, write_image};
use ramboot::images::{hash_file, Digest, ImageKind, ImageStore, Manifest};
use ramboot_lab::harness::{bridge_port_ns, bridge_with_tap, log_text, tail, wait_for, Lab};
use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

const SERVERS: [&str; 2] = ["10.68.0.1", "10.68.0.2"];
/// Long enough to cross several of the syncer's 1 MiB chunks.
const ROOTFS_BYTES: usize = (3 << 20) + 12_345;
const PROFILE: &str = "name: tiny\nstage1: stage1\nimage: tiny\nkernel_args: [console=ttyS0]\n";
const LATER_PROFILE: &str = "name: later\nstage1: stage1\nimage: later\nkernel_args: [console=ttyS0]\n";

struct Pair {
    lab: Lab,
    ns: Vec<String>,
    servers: Vec<Option<Ramboot>>,
}

impl Pair {
    fn new(mut lab: Lab) -> Pair {
        let pid = std::process::id();
        let switch = lab.netns(&format!("rbi{pid}"));
        let (bridge, _tap) = bridge_with_tap(&switch, 'i', &[]);
        let ns = SERVERS
            .iter()
            .zip(['a', 'b'])
            .map(|(ip, tag)| bridge_port_ns(&mut lab, (&switch, &bridge), tag, &[format!("{ip}/16")], 1500).0)
            .collect();
        Pair { lab, ns, servers: vec![None, None] }
    }

    /// Server `i`'s image store, as the server itself opens it.
    fn images(&self, i: usize) -> ImageStore {
        ImageStore::new(self.lab.path(&format!("server-{i}/data/images")))
    }

    fn profiles_dir(&self, i: usize) -> std::path::PathBuf {
        let dir = self.lab.path(&format!("server-{i}/profiles"));
        std::fs::create_dir_all(&dir).unwrap();
        dir
    }

    fn start(&mut self, i: usize) {
        let (ip, peer) = (SERVERS[i], SERVERS[1 - i]);
        let iface = format!("{}{}v", ['a', 'b'][i], std::process::id());
        let config = format!(
            "interface: {iface}\nserver_address: {ip}\nhttp:\n  listen: {ip}:8080\ntftp:\n  listen: {ip}:69\n\
             dhcp:\n  subnet: 10.68.0.0/16\n  range: [10.68.1.0, 10.68.1.255]\n  router: {ip}\n\
             cluster:\n  name: server-{i}\n  peers: [\"http://{peer}:8080\"]\n  image_sync_secs: 1\n"
        );
        let ns = self.ns[i].clone();
        self.servers[i] = Some(self.lab.start_named_ramboot(&format!("server-{i}"), &ns, &config, "info"));
    }

    fn stop(&mut self, i: usize) -> String {
        let ramboot = self.servers[i].take().expect("running");
        self.lab.stop_ramboot(&ramboot)
    }

    fn log(&self, i: usize) -> String {
        log_text(&self.lab.path(&format!("server-{i}/ramboot.log")))
    }

    /// `curl` from server `i`'s namespace to its own HTTP path: (status, body bytes).
    fn get(&self, i: usize, path: &str, token: Option<&str>) -> (u16, Vec<u8>) {
        let body = self.lab.path("curl.body");
        let mut cmd = ramboot_lab::net::in_ns(&self.ns[i], &["curl", "-sS", "--max-time", "20", "-w", "%{http_code}"]);
        cmd.arg("-o").arg(&body);
        if let Some(token) = token {
            cmd.args(["-H", &format!("Authorization: Bearer {token}")]);
        }
        let out = cmd.arg(format!("http://{}:8080{path}", SERVERS[i])).output().expect("curl");
        let status = String::from_utf8_lossy(&out.stdout).trim().parse().unwrap_or(0);
        (status, std::fs::read(&body).unwrap_or_default())
    }

    fn delete(&self, i: usize, path: &str, token: &str) -> String {
        let out = ramboot_lab::net::in_ns(&self.ns[i], &["curl", "-sS", "--max-time", "20", "-o", "/dev/null", "-w"])
            .args(["%{http_code}", "-X", "DELETE", "-H", &format!("Authorization: Bearer {token}")])
            .arg(format!("http://{}:8080{path}", SERVERS[i]))
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Server `i`'s counter `name{labels}` (0 when absent).
    fn metric(&self, i: usize, series: &str) -> f64 {
        let (_, body) = self.get(i, "/metrics", None);
        common::prometheus_sum(&String::from_utf8_lossy(&body), series)
    }

    /// The names of server `i`'s loaded profiles, and its profile errors.
    fn profiles(&self, i: usize, token: &str) -> (Vec<String>, Vec<String>) {
        let (status, body) = self.get(i, "/api/v1/profiles", Some(token));
        assert_eq!(status, 200, "{}", String::from_utf8_lossy(&body));
        let list: ramboot_api::ProfileList = serde_json::from_slice(&body).expect("a profile list");
        let names = list.profiles.iter().map(|p| p.profile.name.clone()).collect();
        (names, list.errors.iter().map(|e| e.to_string()).collect())
    }
}

fn sha256(bytes: &[u8]) -> String {
    use sha2::Digest as _;
    hex::encode(sha2::Sha256::digest(bytes))
}

/// The blobs server 1 serves for `manifest` are byte for byte server 0's, and the
/// manifest it serves is server 0's.
fn assert_same_image(pair: &Pair, manifest: &Manifest) {
    let (status, body) = pair.get(1, &format!("/artifacts/manifests/{}", manifest.name), None);
    assert_eq!(status, 200, "server 1 serves {}'s manifest", manifest.name);
    let theirs: Manifest = serde_json::from_slice(&body).expect("a manifest");
    assert_eq!(&theirs, manifest);
    for (role, artifact) in &manifest.artifacts {
        let (status, body) = pair.get(1, &format!("/artifacts/sha256/{}", artifact.digest), None);
        assert_eq!(status, 200, "server 1 serves {}/{role}", manifest.name);
        assert_eq!(body.len() as u64, artifact.size);
        assert_eq!(sha256(&body), artifact.digest.to_string(), "{}/{role}: other bytes", manifest.name);
        let original = std::fs::read(pair.images(0).blob_path(&artifact.digest)).unwrap();
        assert!(body == original, "{}/{role}: not server 0's bytes", manifest.name);
    }
}

/// A rootfs image whose blob on disk no longer matches its manifest (bit rot, or a
/// peer that lies): written blob first, damaged, then the manifest.
fn write_damaged_image(store: &ImageStore, dir: &Path, name: &str) -> Digest {
    let src = dir.join(format!("{name}-rootfs"));
    std::fs::write(&src, pattern(100_000)).unwrap();
    let artifact = store.ingest(&src, "squashfs").unwrap();
    let blob = store.blob_path(&artifact.digest);
    let mut bytes = std::fs::read(&blob).unwrap();
    bytes[50_000] ^= 0xff;
    std::fs::write(&blob, bytes).unwrap();
    assert_ne!(hash_file(&blob).unwrap().0, artifact.digest);
    let artifacts = BTreeMap::from([("rootfs".to_string(), artifact.clone())]);
    let manifest =
        Manifest { name: name.into(), kind: ImageKind::Rootfs, built_at_ms: 1, artifacts, inputs: BTreeMap::new() };
    store.write_manifest(&manifest).unwrap();
    artifact.digest
}

#[test]
fn a_server_fetches_the_images_its_peer_built_and_only_verified_blobs() {
    const TEST: &str = "a_server_fetches_the_images_its_peer_built_and_only_verified_blobs";
    if common::skipped_without_postgres(TEST) {
        return;
    }
    let Some(lab) = Lab::for_test(TEST, &[("curl", &["/usr/bin/curl"])]) else { return };
    let mut pair = Pair::new(lab);
    let (a, work) = (pair.images(0), pair.lab.path("src"));
    std::fs::create_dir_all(&work).unwrap();
    let stage1: &[(&str, &str, &[u8])] = &[("kernel", "bzImage", b"a kernel"), ("initrd", "cpio.zst", b"an initrd")];
    write_image(&a, &work, "stage1", ImageKind::Stage1, stage1);
    write_image(&a, &work, "tiny", ImageKind::Rootfs, &[("rootfs", "squashfs", &pattern(ROOTFS_BYTES))]);
    write_image(&a, &work, "extra", ImageKind::Rootfs, &[("rootfs", "squashfs", b"an image no profile uses")]);
    let damaged = write_damaged_image(&a, &work, "broken");
    // Profiles are deployed to both servers; server 1 has none of their images.
    for i in 0..2 {
        std::fs::write(pair.profiles_dir(i).join("tiny.yaml"), PROFILE).unwrap();
    }

    pair.start(0);
    // Its profiles name images it lacks: it fetches them before checking them.
    pair.start(1);
    let token = std::fs::read_to_string(pair.lab.path("server-0/data/admin.token")).expect("admin token");
    let token = token.trim();
    for name in ["stage1", "tiny", "extra"] {
        assert_same_image(&pair, &a.manifest(name).unwrap());
    }
    let (loaded, errors) = pair.profiles(1, token);
    assert_eq!((loaded, errors), (vec!["tiny".to_string()], vec![]), "server 1's profile is valid");

    // A damaged blob is refused every round: never renamed into place, its manifest
    // never written, nothing left behind.
    let bad_digest = "ramboot_image_sync_blobs_total{outcome=\"bad_digest\"}";
    wait_for(
        Duration::from_secs(30),
        "server 1 to refuse the damaged blob twice (at start and in a later round)",
        || (pair.metric(1, bad_digest) >= 2.0).then_some(()),
        || tail(&pair.log(1), 20),
    );
    let b = pair.images(1);
    assert!(!b.blob_path(&damaged).exists(), "the damaged blob is not in server 1's store");
    assert!(b.manifest("broken").is_err(), "no manifest names a blob server 1 refused");
    assert_eq!(pair.get(1, "/artifacts/manifests/broken", None).0, 404);
    assert_eq!(pair.get(1, &format!("/artifacts/sha256/{damaged}"), None).0, 404);
    let leftovers: Vec<_> = std::fs::read_dir(b.blobs_dir())
        .unwrap()
        .filter_map(|e| e.ok()?.file_name().into_string().ok())
        .filter(|n| n.starts_with('.'))
        .collect();
    assert!(leftovers.is_empty(), "temporary files left: {leftovers:?}");
    assert!(pair.log(1).contains("image sync: not fetched; trying again"), "the refusal is logged");

    // While both run: an image built on server 0 and a profile for it on server 1.
    // The profile is an error until the image arrives, then it loads.
    write_image(&a, &work, "later", ImageKind::Rootfs, &[("rootfs", "squashfs", &pattern(70_000)[1000..])]);
    std::fs::write(pair.profiles_dir(1).join("later.yaml"), LATER_PROFILE).unwrap();
    wait_for(
        Duration::from_secs(30),
        "server 1 to fetch `later` and load the profile that names it",
        || {
            let (loaded, errors) = pair.profiles(1, token);
            (loaded.contains(&"later".to_string()) && errors.is_empty()).then_some(())
        },
        || format!("{:?}\n{}", pair.profiles(1, token), tail(&pair.log(1), 20)),
    );
    assert_same_image(&pair, &a.manifest("later").unwrap());

    // An image deleted on server 1 stays deleted though server 0 still has it.
    assert_eq!(pair.delete(1, "/api/v1/images/extra", token), "204");
    let rounds = pair.metric(1, bad_digest);
    // Each round refuses `broken` before it reaches `extra` (names in order): two
    // more refusals mean a whole round has passed since the delete.
    wait_for(
        Duration::from_secs(30),
        "two more image sync rounds on server 1",
        || (pair.metric(1, bad_digest) >= rounds + 2.0).then_some(()),
        || tail(&pair.log(1), 20),
    );
    assert_eq!(pair.get(1, "/artifacts/manifests/extra", None).0, 404, "a deleted image is not fetched back");

    let fetched = pair.metric(1, "ramboot_image_sync_blobs_total{outcome=\"fetched\"}");
    assert_eq!(fetched, 5.0, "stage1's two blobs, tiny, extra and later: each once");
    assert_eq!(pair.metric(0, "ramboot_image_sync_images_total"), 0.0, "server 0 had nothing to fetch");
    for i in [1, 0] {
        let log = pair.stop(i);
        // Server 1 refused `later.yaml` until its image arrived: that error was wanted.
        let errors: Vec<&str> =
            log.lines().filter(|l| l.contains(" ERROR ") && !l.contains("later.yaml:3:1: no image named")).collect();
        assert!(errors.is_empty(), "server {i} logged errors:\n{}", errors.join("\n"));
    }
}
