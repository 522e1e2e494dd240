//! `ramboot serve` and its DHCP socket layer, end to end on loopback.

use dhcproto::v4::{DhcpOption, Message, MessageType, OptionCode};
use dhcproto::{Decodable, Decoder, Encodable};
use ramboot::config::Config;
use ramboot::store::Store;
use ramboot_core::profile::BootChain;
use std::net::{Ipv4Addr, UdpSocket};
use std::time::Duration;
use tokio_util::sync::CancellationToken;

fn is_root() -> bool {
    std::process::Command::new("id").arg("-u").output().map(|o| o.stdout == b"0\n").unwrap_or(false)
}

/// Two free UDP ports in a row: the server's and the client's (server + 1).
fn free_port_pair() -> u16 {
    for _ in 0..100 {
        let probe = UdpSocket::bind("127.0.0.1:0").unwrap();
        let port = probe.local_addr().unwrap().port();
        drop(probe);
        if port < 65000 && UdpSocket::bind(("127.0.0.1", port + 1)).is_ok() {
            return port;
        }
    }
    panic!("no free port pair");
}

/// ramboot's DHCP service on loopback with a SQLite store, and a client socket.
struct LoopbackDhcp {
    _dir: tempfile::TempDir,
    config: Config,
    store: Store,
    client: UdpSocket,
    port: u16,
    cancel: CancellationToken,
    service: tokio::task::JoinHandle<Result<(), ramboot::dhcp::io::DhcpIoError>>,
}

impl LoopbackDhcp {
    /// `None` (and a message) where binding to `lo` is not allowed.
    async fn start() -> Option<LoopbackDhcp> {
        if !is_root() {
            assert!(std::env::var_os("CI").is_none(), "CI runs as root");
            eprintln!("SKIPPED: binding DHCP to an interface (SO_BINDTODEVICE) needs root");
            return None;
        }
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let text = format!(
            "interface: lo\nserver_address: 127.0.0.1\ndhcp:\n  subnet: 127.0.0.0/8\n  \
             range: [127.0.0.100, 127.0.0.200]\n  port: {port}\ndefault_profile: tiny\n"
        );
        let config = Config::parse(&dir.path().join("ramboot.yaml"), &text).unwrap();
        std::fs::create_dir_all(&config.paths.data).unwrap();
        let store = Store::open(&config.database_url).await.unwrap();
        let socket = ramboot::dhcp::io::bind_all(&config).unwrap();
        let cancel = CancellationToken::new();
        let service = {
            let (config, store, cancel) = (config.clone(), store.clone(), cancel.clone());
            let profiles = std::sync::Arc::new(ramboot::profiles::LiveProfiles::fixed(
                &config.paths.profiles,
                ramboot::profiles::ProfileSet::default(),
            ));
            tokio::spawn(async move { ramboot::dhcp::io::serve(&config, socket, store, profiles, cancel).await })
        };
        let client = UdpSocket::bind(("0.0.0.0", port + 1)).unwrap();
        client.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        Some(LoopbackDhcp { _dir: dir, config, store, client, port, cancel, service })
    }

    fn send(&self, msg: &Message) {
        self.client.send_to(&msg.to_vec().unwrap(), ("127.0.0.1", self.port)).unwrap();
    }

    /// The next reply, or `None` within `wait`.
    fn reply(&self, wait: Duration) -> Option<Message> {
        self.client.set_read_timeout(Some(wait)).unwrap();
        let mut buf = [0u8; 1500];
        let (n, _) = self.client.recv_from(&mut buf).ok()?;
        Some(Message::decode(&mut Decoder::new(&buf[..n])).unwrap())
    }

    async fn stop(self) {
        assert!(!self.service.is_finished(), "the DHCP service is still running");
        self.cancel.cancel();
        self.service.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn garbage_is_dropped_and_a_lease_is_durable_before_its_ack() {
    let Some(dhcp) = LoopbackDhcp::start().await else { return };
    let (client, store) = (&dhcp.client, &dhcp.store);
    let server = ("127.0.0.1", dhcp.port);
    // Not DHCP at all; a truncated header; a BOOTREQUEST claiming a 255-byte hardware address.
    client.send_to(b"hello", server).unwrap();
    client.send_to(&[1u8; 100], server).unwrap();
    let mut bogus = Message::default();
    bogus.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    let mut bytes = bogus.to_vec().unwrap();
    bytes[2] = 255;
    client.send_to(&bytes, server).unwrap();

    // A client renewing 127.0.0.150 (RENEWING: ciaddr set, unicast reply to it).
    let mac = [0x52, 0x54, 0, 0, 0, 0x42];
    let ip = Ipv4Addr::new(127, 0, 0, 150);
    dhcp.send(&renewing(7, mac, ip));
    let ack = dhcp.reply(Duration::from_secs(5)).expect("an ACK after the garbage: the service survived it");
    assert_eq!(ack.opts().msg_type(), Some(MessageType::Ack));
    assert_eq!(ack.xid(), 7);
    assert_eq!(ack.yiaddr(), ip);
    assert_eq!(ack.opts().get(OptionCode::ServerIdentifier), Some(&DhcpOption::ServerIdentifier(Ipv4Addr::LOCALHOST)));
    // The ACK has arrived, so the lease must already be in the store.
    let leases = store.active_leases(0).await.unwrap();
    assert_eq!(leases.len(), 1, "{leases:?}");
    assert_eq!((leases[0].ip, leases[0].mac.to_string().as_str()), (ip, "52:54:00:00:00:42"));
    dhcp.stop().await;
}

/// A RENEWING REQUEST for `ip` (ciaddr set).
fn renewing(xid: u32, mac: [u8; 6], ip: Ipv4Addr) -> Message {
    let any = Ipv4Addr::UNSPECIFIED;
    let mut request = Message::new_with_id(xid, ip, any, any, any, &mac);
    request.opts_mut().insert(DhcpOption::MessageType(MessageType::Request));
    request
}

/// Two servers on one database: another one granted 127.0.0.150 (this server's pool
/// never heard of it). A client asking this server for it gets no ACK, the
/// holder keeps it, and the client's next DISCOVER is offered another address.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_another_server_leased_is_never_acked_twice() {
    let Some(dhcp) = LoopbackDhcp::start().await else { return };
    // "The other server": its own pool of connections to the same database.
    let other_server = Store::open(&dhcp.config.database_url).await.unwrap();
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap();
    let (holder, ip) = ("52:54:00:00:00:99".parse().unwrap(), Ipv4Addr::new(127, 0, 0, 150));
    let grant = ramboot::store::LeaseOp::Grant {
        mac: holder,
        ip,
        expires_at: now.as_secs() + 3600,
        netboot: false,
        known: false,
        arch: None,
        uuid: None,
    };
    assert_eq!(other_server.commit_dhcp(&[grant], now.as_millis() as i64).await.unwrap(), []);

    let mac = [0x52, 0x54, 0, 0, 0, 0x43];
    dhcp.send(&renewing(8, mac, ip));
    assert!(dhcp.reply(Duration::from_secs(2)).is_none(), "no ACK for another server's lease");
    let held: Vec<_> = dhcp.store.active_leases(0).await.unwrap().into_iter().map(|l| (l.ip, l.mac)).collect();
    assert_eq!(held, [(ip, holder)], "the holder keeps it");

    let any = Ipv4Addr::UNSPECIFIED;
    let mut discover = Message::new_with_id(9, any, any, any, any, &mac);
    discover.opts_mut().insert(DhcpOption::MessageType(MessageType::Discover));
    discover.opts_mut().insert(DhcpOption::RequestedIpAddress(ip));
    dhcp.send(&discover);
    let offer = dhcp.reply(Duration::from_secs(5)).expect("an offer");
    assert_eq!(offer.opts().msg_type(), Some(MessageType::Offer));
    assert_ne!(offer.yiaddr(), ip, "the pool learned the holder from the refusal");
    other_server.close().await;
    dhcp.stop().await;
}

#[test]
fn serve_refuses_a_broken_profile_with_its_position() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    std::fs::write(dir.path().join("profiles/good.yaml"), "name: good\nstage1: stage1\nimage: tiny\n").unwrap();
    std::fs::write(dir.path().join("profiles/bad.yaml"), "name: bad\nstage1: stage1\nimgae: tiny\n").unwrap();
    std::fs::write(
        dir.path().join("ramboot.yaml"),
        "interface: lo\nserver_address: 127.0.0.1\ndhcp:\n  subnet: 127.0.0.0/8\n  range: [127.0.0.100, 127.0.0.200]\n\
         default_profile: good\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["serve", "--config"])
        .arg(dir.path().join("ramboot.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(stderr.contains("bad.yaml:3:1: unknown field `imgae`"), "{stderr}");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["profiles", "validate"])
        .arg(dir.path().join("profiles"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("bad.yaml:3:1"));
}

#[test]
fn serve_refuses_a_config_with_an_unknown_key() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("ramboot.yaml"), "interface: lo\nserver_adress: 127.0.0.1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["serve", "--config"])
        .arg(dir.path().join("ramboot.yaml"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ramboot.yaml:2:1: unknown field `server_adress`"), "{stderr}");
}

/// A secrets file the group or others can read stops `ramboot serve` before any
/// socket opens, with the path and the fix; the data directory it had already
/// made private (0700, tightened from 0755) stays so.
#[test]
fn serve_refuses_a_world_readable_secrets_file_and_keeps_its_data_private() {
    use std::os::unix::fs::PermissionsExt;
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(dir.path().join("profiles")).unwrap();
    let data = dir.path().join("data");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::set_permissions(&data, std::fs::Permissions::from_mode(0o755)).unwrap();
    let secrets = dir.path().join("secrets.yaml");
    std::fs::write(&secrets, "db_password: hunter2\n").unwrap();
    std::fs::set_permissions(&secrets, std::fs::Permissions::from_mode(0o644)).unwrap();
    std::fs::write(
        dir.path().join("ramboot.yaml"),
        "interface: lo\nserver_address: 127.0.0.1\ndhcp:\n  subnet: 127.0.0.0/8\n  range: [127.0.0.100, 127.0.0.200]\n\
         secrets: secrets.yaml\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["serve", "--config"])
        .arg(dir.path().join("ramboot.yaml"))
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{stderr}");
    assert!(stderr.contains(&format!("chmod 600 {}", secrets.display())), "{stderr}");
    assert!(stderr.contains("mode 644"), "{stderr}");
    assert!(!stderr.contains("hunter2"), "{stderr}");
    assert!(!data.join("ramboot.db").exists(), "refused before the database was opened");
    assert_eq!(std::fs::metadata(&data).unwrap().permissions().mode() & 0o777, 0o700);
}

/// A UEFI PXE firmware's DISCOVER (arch 7), as OVMF sends it.
fn uefi_pxe_discover(xid: u32, mac: [u8; 6]) -> Message {
    let any = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(xid, any, any, any, any, &mac);
    msg.set_flags(dhcproto::v4::Flags::default().set_broadcast());
    let opts = msg.opts_mut();
    opts.insert(DhcpOption::MessageType(MessageType::Discover));
    opts.insert(DhcpOption::ClientSystemArchitecture(dhcproto::v4::Architecture::from(7)));
    opts.insert(DhcpOption::ClassIdentifier(b"PXEClient:Arch:00007:UNDI:003000".to_vec()));
    msg
}

/// A node's own `boot_chain` (set through the store as the API and the CLI's
/// `nodes boot-chain` do) reaches the running DHCP service: its UEFI PXE firmware
/// is offered shim instead of iPXE at once, and iPXE again once it is cleared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_nodes_boot_chain_changes_what_its_firmware_is_offered() {
    let Some(dhcp) = LoopbackDhcp::start().await else { return };
    let mac = [0x52, 0x54, 0, 0x5b, 0, 0x07];
    let offered = |xid: u32| {
        dhcp.send(&uefi_pxe_discover(xid, mac));
        let offer = dhcp.reply(Duration::from_secs(5)).expect("an offer");
        assert_eq!(offer.xid(), xid);
        match offer.opts().get(OptionCode::BootfileName) {
            Some(DhcpOption::BootfileName(name)) => String::from_utf8_lossy(name).trim_end_matches('\0').to_string(),
            other => panic!("no boot file: {other:?}"),
        }
    };
    assert_eq!(offered(1), "snponly.efi", "the default chain is iPXE");
    // An operator registered it (DHCP makes a node on its first grant).
    let node = dhcp.store.ensure_node(ramboot_core::node::MacAddr(mac), 0).await.unwrap();
    let set = |chain| ramboot::store::NodeChange { boot_chain: Some(chain), ..Default::default() };
    let actor = ramboot::store::Actor::Token { name: "test".into() };
    dhcp.store.update_node(node.id, &set(Some(BootChain::Signed)), &actor, 1).await.unwrap();
    // The DHCP service reloads its view on the store's notice: a moment, not a restart.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    let mut xid = 2;
    while offered(xid) != "shimx64.efi" {
        assert!(std::time::Instant::now() < deadline, "the node's signed chain never reached DHCP");
        std::thread::sleep(Duration::from_millis(100));
        xid += 1;
    }
    dhcp.store.update_node(node.id, &set(None), &actor, 2).await.unwrap();
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    while offered(xid) != "snponly.efi" {
        assert!(std::time::Instant::now() < deadline, "clearing the chain never reached DHCP");
        std::thread::sleep(Duration::from_millis(100));
        xid += 1;
    }
    dhcp.stop().await;
}

/// `serve`'s log lines fit where they go: plain text without colour codes when
/// stderr is not a terminal, or one JSON object per line with `--log-format json`.
#[test]
fn serve_logs_plain_text_off_a_terminal_and_json_on_request() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED: binding DHCP to an interface (SO_BINDTODEVICE) needs root");
        return;
    }
    for format in ["text", "json"] {
        let dir = tempfile::tempdir().unwrap();
        let port = free_port_pair();
        let config = format!(
            "interface: lo\nserver_address: 127.0.0.1\nhttp:\n  listen: 127.0.0.1:0\ntftp:\n  listen: 127.0.0.1:0\n\
             dhcp:\n  port: {port}\n  subnet: 127.0.0.0/8\n  range: [127.0.0.100, 127.0.0.200]\n\
             paths:\n  data: {d}/data\n  profiles: {d}/profiles\n  ipxe: {d}/ipxe\n",
            d = dir.path().display()
        );
        std::fs::write(dir.path().join("ramboot.yaml"), config).unwrap();
        for d in ["profiles", "ipxe"] {
            std::fs::create_dir_all(dir.path().join(d)).unwrap();
        }
        let log = dir.path().join("stderr");
        // No NO_COLOR here: off a terminal, text must come without colour by itself.
        let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
            .args(["serve", "--log-format", format, "--config"])
            .arg(dir.path().join("ramboot.yaml"))
            .env_remove("NO_COLOR")
            .env_remove("JOURNAL_STREAM")
            .env("RUST_LOG", "info")
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let started = std::time::Instant::now();
        while !std::fs::read_to_string(&log).unwrap_or_default().contains("DHCP serving") {
            assert!(started.elapsed() < Duration::from_secs(30), "{}", std::fs::read_to_string(&log).unwrap());
            assert!(child.try_wait().unwrap().is_none(), "{}", std::fs::read_to_string(&log).unwrap());
            std::thread::sleep(Duration::from_millis(100));
        }
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM)
            .unwrap();
        let status = child.wait().unwrap();
        let text = std::fs::read_to_string(&log).unwrap();
        assert!(status.success(), "{status}: {text}");
        assert!(!text.contains('\u{1b}'), "no colour codes off a terminal: {text}");
        if format == "json" {
            for line in text.lines() {
                let object: serde_json::Value =
                    serde_json::from_str(line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
                assert!(object["level"].is_string() && object["timestamp"].is_string(), "{line}");
            }
            assert!(text.lines().any(|l| l.contains("\"message\":\"DHCP serving\"")), "{text}");
        } else {
            assert!(text.lines().any(|l| l.contains(" INFO ") && l.contains("DHCP serving")), "{text}");
        }
    }
}
