//! Test-only glue: a real `ramboot` HTTP tier on 127.0.0.1:0 with a temporary store,
//! profiles and images, for tests that talk to it with real HTTP clients; and (in
//! `netns`) the real `ramboot serve` in a namespace lab. The labs themselves
//! (namespaces, bridges, taps, QEMU, tgtd, captures) are `ramboot_lab`'s.

#![allow(dead_code)]

pub mod browser;
pub mod netns;
pub mod perfdhcp;
// The store's own test-database helper, shared rather than copied.
#[path = "../../src/store/testdb.rs"]
pub mod testdb;

#[allow(unused_imports)] // not every test skips
pub use ramboot_lab::harness::skipped;

/// The operator a test's own store writes are made as.
pub fn operator() -> ramboot::store::Actor {
    ramboot::store::Actor::Token { name: "test-operator".into() }
}

/// Skip a test that needs PostgreSQL when `RAMBOOT_TEST_POSTGRES` names none,
/// saying why. CI never skips it: its first pass (SQLite) says a PostgreSQL pass
/// follows ([`testdb::POSTGRES_PASS_FOLLOWS`]), which runs it; anywhere else in CI
/// a missing server fails the test.
pub fn skipped_without_postgres(test: &str) -> bool {
    let Some(reason) = testdb::TestDb::postgres_missing() else { return false };
    if std::env::var_os(testdb::POSTGRES_PASS_FOLLOWS).is_some() {
        eprintln!("SKIPPED {test} in this pass: {reason}; the PostgreSQL pass runs it");
        return true;
    }
    skipped(test, Some(&reason))
}

use ramboot::config::Config;
use ramboot::http::{router, AppState};
use ramboot::images::{ImageKind, ImageStore, Manifest};
use ramboot::store::{Role, Store};
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;

pub struct TestServer {
    pub base: String,
    pub admin: String,
    pub reader: String,
    pub dir: tempfile::TempDir,
    pub rootfs: Vec<u8>,
    pub rootfs_digest: String,
    /// Stops the server (as SIGTERM does `ramboot serve`); `runtime` then ends.
    pub shutdown: tokio_util::sync::CancellationToken,
    pub runtime: std::thread::JoinHandle<()>,
    /// ramboot's TFTP server with the signed chain's generated files, on loopback.
    pub tftp: std::net::SocketAddr,
    /// The server's store and runtime, for what only DHCP does (leases).
    pub store: Store,
    pub handle: tokio::runtime::Handle,
    /// The server's PostgreSQL database when `RAMBOOT_TEST_POSTGRES` names a server
    /// (dropped last); otherwise the store is SQLite under `dir`.
    pub db: Option<testdb::TestDb>,
}

/// The sum of a Prometheus text exposition's samples of `series`: a metric name
/// (all its label sets) or one full series (`name{label="v"}`).
pub fn prometheus_sum(text: &str, series: &str) -> f64 {
    text.lines()
        .filter(|l| l.strip_prefix(series).is_some_and(|rest| rest.starts_with([' ', '{'])))
        .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

/// Where loopback tests' requests come from.
pub const LOOPBACK: std::net::Ipv4Addr = std::net::Ipv4Addr::LOCALHOST;

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

pub fn write_image(store: &ImageStore, dir: &Path, name: &str, kind: ImageKind, files: &[(&str, &str, &[u8])]) {
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
        Self::start_with(Some("tiny"), &[], "")
    }

    /// A server with `default_profile`, extra profile files (name, YAML), and extra
    /// config lines.
    pub fn start_with(
        default_profile: Option<&str>,
        extra_profiles: &[(&str, &str)],
        extra_config: &str,
    ) -> TestServer {
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir_all(root.join("profiles")).unwrap();
        std::fs::write(
            root.join("profiles/tiny.yaml"),
            "name: tiny\nstage1: stage1\nimage: tiny\nkernel_args: [console=ttyS0]\n",
        )
        .unwrap();
        for (name, text) in extra_profiles {
            std::fs::write(root.join(format!("profiles/{name}.yaml")), text).unwrap();
        }
        let mut config_text = "interface: lo\nserver_address: 127.0.0.1\nhttp:\n  listen: 127.0.0.1:0\n\
             dhcp:\n  subnet: 127.0.0.0/8\n  range: [127.0.0.100, 127.0.0.200]\n"
            .to_string();
        if let Some(p) = default_profile {
            config_text.push_str(&format!("default_profile: {p}\n"));
        }
        config_text.push_str(extra_config);
        let mut config = Config::parse(&root.join("ramboot.yaml"), &config_text).unwrap();
        let db = testdb::TestDb::postgres();
        if let Some(db) = &db {
            config.database_url = db.url().to_string();
        }
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
        let profiles = ramboot::profiles::LiveProfiles::load(&config.paths.profiles, &images).unwrap();
        let (admin, reader) = (ramboot::token::generate().unwrap(), ramboot::token::generate().unwrap());
        let tokens = [
            ("admin", Role::Admin, ramboot::token::hash(&admin)),
            ("reader", Role::Read, ramboot::token::hash(&reader)),
        ];

        let (tx, rx) = std::sync::mpsc::channel();
        let shutdown = tokio_util::sync::CancellationToken::new();
        let server_shutdown = shutdown.clone();
        let runtime = std::thread::spawn(move || {
            let shutdown = server_shutdown;
            let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
            rt.block_on(async move {
                std::fs::create_dir_all(&config.paths.data).unwrap();
                ramboot::http::metrics::handle();
                let store = Store::open(&config.database_url).await.unwrap();
                // Event streams hear of new events as `ramboot serve`'s do.
                tokio::spawn({
                    let (store, shutdown) = (store.clone(), shutdown.clone());
                    async move { store.listen(shutdown).await }
                });
                for (name, role, hash) in tokens {
                    store.create_token(name, role, &hash, None, &config.cluster.actor(), 0).await.unwrap();
                }
                let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
                let mut config = config;
                config.http_listen = listener.local_addr().unwrap();
                let volumes = config.iscsi.clone().map(|cfg| {
                    let backend = ramboot::iscsi::tgt::Tgt { control_port: cfg.tgt_control_port };
                    Arc::new(ramboot::iscsi::service::Volumes { backend, config: cfg, store: store.clone() })
                });
                let profiles = Arc::new(profiles);
                let config = Arc::new(config);
                // The inventory is applied and watched as `ramboot serve` does.
                let inventory = Arc::new(ramboot::inventory::LiveInventory::new(&config.paths.inventory));
                tokio::spawn(ramboot::watch::watch_inventory(
                    inventory.clone(),
                    profiles.clone(),
                    store.clone(),
                    config.clone(),
                    shutdown.clone(),
                ));
                let power = Arc::new(ramboot::bmc::service::Power::from_config(&config));
                let reboot = ramboot::rollout::bmc_reboot(power.clone());
                let rollouts = ramboot::rollout::Driver::new(store.clone(), config.clone(), Some(reboot));
                tokio::spawn(rollouts.clone().run(shutdown.clone()));
                let state = AppState {
                    config,
                    store: store.clone(),
                    images,
                    profiles,
                    inventory,
                    rollouts,
                    volumes,
                    limits: Default::default(),
                    power,
                    shutdown: shutdown.clone(),
                };
                // TFTP as `ramboot serve` runs it, with the signed chain's files.
                std::fs::create_dir_all(&state.config.paths.ipxe).unwrap();
                let tftp_socket = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
                let tftp = tftp_socket.local_addr().unwrap();
                let signed: Arc<dyn ramboot::tftp::GeneratedFiles> = Arc::new(
                    ramboot::http::boot::grub::SignedChainFiles::new(state.clone(), tokio::runtime::Handle::current()),
                );
                tokio::spawn({
                    let (root, shutdown) = (state.config.paths.ipxe.clone(), shutdown.clone());
                    async move {
                        ramboot::tftp::serve_with(&root, tftp_socket, Default::default(), Some(signed), shutdown).await
                    }
                });
                tx.send((listener.local_addr().unwrap(), tftp, store.clone(), tokio::runtime::Handle::current()))
                    .unwrap();
                let limits = Default::default();
                let artifacts = Some(ramboot::http::sendfile::Artifacts { images: state.images.clone() });
                ramboot::http::server::serve(listener, router(state), artifacts, limits, shutdown).await;
            });
        });
        let (addr, tftp, store, handle) = rx.recv().unwrap();
        let base = format!("http://{addr}");
        TestServer { base, admin, reader, dir, rootfs, rootfs_digest, shutdown, runtime, tftp, store, handle, db }
    }

    /// What a DHCP grant does: `mac` holds a lease on `ip` (and is a node).
    /// `mac` now holds the lease on `ip`: whoever held it releases it first, as a
    /// client leaving the address would (the store refuses a grant of an address
    /// another MAC holds).
    pub fn lease_at(&self, mac: &str, ip: std::net::Ipv4Addr) {
        let mut ops = Vec::new();
        if let Some(holder) = self.handle.block_on(self.store.lease_holder(ip, 0)).unwrap() {
            ops.push(ramboot::store::LeaseOp::Release { mac: holder, ip });
        }
        ops.push(ramboot::store::LeaseOp::Grant {
            mac: mac.parse().unwrap(),
            ip,
            expires_at: u64::from(u32::MAX),
            netboot: true,
            known: false,
            arch: Some("bios".into()),
            uuid: None,
        });
        let taken = self.handle.block_on(self.store.commit_dhcp(&ops, 1)).unwrap();
        assert_eq!(taken, [], "the lease on {ip} went to {mac}");
    }

    /// `mac` holds the lease on 127.0.0.1, where this test's requests come from.
    pub fn lease(&self, mac: &str) {
        self.lease_at(mac, LOOPBACK);
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn admin_auth(&self) -> String {
        format!("Bearer {}", self.admin)
    }

    pub fn read_auth(&self) -> String {
        format!("Bearer {}", self.reader)
    }
}

/// A fresh connection per request: the server answers some requests (401/403/413)
/// without reading their bodies and then closes the connection, and a pooled
/// connection reused in that moment reads EOF (a client-side race, not a server bug).
pub fn agent() -> ureq::Agent {
    ureq::AgentBuilder::new().timeout(std::time::Duration::from_secs(10)).max_idle_connections(0).build()
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
    let shown: String = body.to_string().chars().take(120).collect();
    match req.send_json(body) {
        Ok(r) => (r.status(), r.into_string().unwrap()),
        Err(ureq::Error::Status(code, r)) => (code, r.into_string().unwrap()),
        Err(e) => panic!("transport error: {e} (sending {shown})"),
    }
}

/// The per-boot token the iPXE script passes on the kernel command line.
pub fn token_of(script: &str) -> String {
    script.split_whitespace().find_map(|w| w.strip_prefix("ramboot.token=")).expect("script has a token").to_string()
}

/// Send a body over the server's limit. The server answers 413 and closes as soon
/// as the limit is passed, so a client still writing may see the connection cut
/// instead: both are a refusal. Returns the error code of a 413, or "cut".
pub fn send_oversize(req: ureq::Request, body: serde_json::Value) -> String {
    match req.send_json(body) {
        Ok(r) => panic!("oversize body accepted with {}", r.status()),
        Err(ureq::Error::Status(413, r)) => {
            let v: serde_json::Value = r.into_json().unwrap();
            v["error"]["code"].as_str().unwrap().to_string()
        }
        Err(ureq::Error::Status(code, _)) => panic!("oversize body answered {code}, not 413"),
        Err(ureq::Error::Transport(t)) => {
            let text = t.to_string();
            assert!(text.contains("Broken pipe") || text.contains("reset"), "unexpected transport error: {text}");
            "cut".to_string()
        }
    }
}

/// One HTTP/1.1 request from `local` (another host on the boot network, as far as
/// the server can tell: any 127/8 address is ours on loopback). ureq cannot choose
/// its source address. Returns the status and body.
pub fn call_from(
    local: std::net::Ipv4Addr,
    method: &str,
    url: &str,
    token: Option<&str>,
    body: Option<&serde_json::Value>,
) -> (u16, String) {
    use std::io::{Read, Write};
    let rest = url.strip_prefix("http://").expect("an http URL");
    let (authority, path) = rest.split_at(rest.find('/').unwrap_or(rest.len()));
    let server: std::net::SocketAddr = authority.parse().expect("an ip:port authority");
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.bind(&std::net::SocketAddr::from((local, 0)).into()).unwrap();
    socket.connect(&server.into()).unwrap();
    let mut stream: std::net::TcpStream = socket.into();
    stream.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let body = body.map(|b| b.to_string()).unwrap_or_default();
    let mut head = format!("{method} {path} HTTP/1.1\r\nHost: {authority}\r\nConnection: close\r\n");
    if let Some(t) = token {
        head.push_str(&format!("Authorization: Bearer {t}\r\n"));
    }
    if !body.is_empty() {
        head.push_str(&format!("Content-Type: application/json\r\nContent-Length: {}\r\n", body.len()));
    }
    head.push_str("\r\n");
    stream.write_all(head.as_bytes()).unwrap();
    stream.write_all(body.as_bytes()).unwrap();
    let mut raw = Vec::new();
    stream.read_to_end(&mut raw).unwrap();
    let text = String::from_utf8_lossy(&raw).into_owned();
    let (headers, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let status = headers.split_whitespace().nth(1).and_then(|s| s.parse().ok()).expect("a status line");
    let chunked = headers.to_ascii_lowercase().contains("transfer-encoding: chunked");
    (status, if chunked { unchunk(body) } else { body.to_string() })
}

fn unchunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else { break };
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

/// A fresh store in `dir` and the iSCSI volume service over `tgtd` (a loopback
/// tgtd), its volumes under `dir/volumes`.
pub async fn loopback_volumes(
    tgtd: &ramboot_lab::tgtd::Tgtd,
    dir: &Path,
) -> (Store, ramboot::iscsi::service::Volumes<ramboot::iscsi::tgt::Tgt>) {
    let store = Store::open(&format!("sqlite://{}", dir.join("t.db").display())).await.unwrap();
    let config = ramboot::config::IscsiConfig {
        portal: format!("127.0.0.1:{}", tgtd.portal).parse().unwrap(),
        iqn_prefix: "iqn.2026-11.io.ramboot".into(),
        tgt_control_port: Some(tgtd.control),
        volumes_dir: dir.join("volumes"),
    };
    let volumes = ramboot::iscsi::service::Volumes { backend: tgtd.backend(), config, store: store.clone() };
    (store, volumes)
}
