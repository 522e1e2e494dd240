//! A real `ramboot` HTTP tier on 127.0.0.1:0 with a temporary store, profiles and
//! images, for tests that talk to it with real HTTP clients.

#![allow(dead_code)]

use ramboot::config::Config;
use ramboot::http::{router, AppState};
use ramboot::images::{ImageKind, ImageStore, Manifest};
use ramboot::store::Store;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub struct TestServer {
    pub base: String,
    pub dir: tempfile::TempDir,
    pub rootfs: Vec<u8>,
    pub rootfs_digest: String,
    _runtime: std::thread::JoinHandle<()>,
}

/// Deterministic, incompressible-looking bytes.
pub fn pattern(len: usize) -> Vec<u8> {
    let mut x: u32 = 0x9e37_79b9;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 17;
            x ^= x << 5;
            x as u8
        })
        .collect()
}

fn write_image(store: &ImageStore, dir: &Path, name: &str, kind: ImageKind, files: &[(&str, &str, &[u8])]) {
    let mut artifacts = BTreeMap::new();
    for (role, format, bytes) in files {
        let path = dir.join(format!("{name}-{role}"));
        std::fs::write(&path, bytes).unwrap();
        artifacts.insert(role.to_string(), store.ingest(&path, format).unwrap());
    }
    let manifest = Manifest { name: name.into(), kind, built_at_ms: 1, artifacts, inputs: BTreeMap::new() };
    store.write_manifest(&manifest).unwrap();
}

impl TestServer {
    pub fn start() -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        std::fs::write(
            root.join("profiles/tiny.yaml"),
            "name: tiny\nstage1: stage1\nimage: tiny\nkernel_args: [console=ttyS0]\n",
        )
        .unwrap();
        std::fs::write(root.join("profiles/ghost.yaml"), "name: ghost\nstage1: stage1\nimage: not-built\n").unwrap();
        let config_text = "interface: lo\nserver_address: 127.0.0.1\nhttp:\n  listen: 127.0.0.1:0\n\
             dhcp:\n  subnet: 127.0.0.0/8\n  range: [127.0.0.100, 127.0.0.200]\ndefault_profile: tiny\n";
        let config = Config::parse(&root.join("ramboot.yaml"), config_text).unwrap();
        let images = ImageStore::new(config.paths.images());
        let rootfs = pattern(3 * 1024 * 1024 + 17);
        write_image(
            &images,
            root,
            "stage1",
            ImageKind::Stage1,
            &[("kernel", "bzImage", b"kernel bytes"), ("initrd", "cpio.zst", b"initrd bytes")],
        );
        write_image(&images, root, "tiny", ImageKind::Rootfs, &[("rootfs", "squashfs", &rootfs)]);
        let rootfs_digest = images.manifest("tiny").unwrap().artifacts["rootfs"].digest.to_string();
        let profiles = ramboot::profiles::load_dir(&config.paths.profiles).unwrap();

        let (tx, rx) = std::sync::mpsc::channel();
        let runtime = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                std::fs::create_dir_all(&config.paths.data).unwrap();
                let store = Store::open(&config.database_url).await.unwrap();
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let mut config = config;
                config.http_listen = listener.local_addr().unwrap();
                let state = AppState { config: Arc::new(config), store, images, profiles: Arc::new(profiles) };
                tx.send(listener.local_addr().unwrap()).unwrap();
                axum::serve(listener, router(state)).await.unwrap();
            });
        });
        let addr = rx.recv().unwrap();
        TestServer { base: format!("http://{addr}"), dir, rootfs, rootfs_digest, _runtime: runtime }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }
}

pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(10)).build()
}

/// Status and body of a request, whatever the status.
pub fn call(req: ureq::Request) -> (u16, String) {
    match req.call() {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

pub fn send_json(req: ureq::Request, body: serde_json::Value) -> (u16, String) {
    match req.send_json(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("transport error: {e}"),
    }
}

/// The per-boot token the iPXE script passes on the kernel command line.
pub fn token_of(script: &str) -> String {
    script.split_whitespace().find_map(|w| w.strip_prefix("ramboot.token=")).expect("script has a token").to_string()
}
