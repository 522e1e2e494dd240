//! How ramboot runs as a system service: the systemd unit the package installs
//! passes `systemd-analyze verify`, the default configuration it installs loads,
//! and `serve` speaks systemd's notification protocol (READY=1 once listening,
//! WATCHDOG=1 pings, STOPPING=1 on SIGTERM).

use std::os::unix::net::UnixDatagram;
use std::path::Path;
use std::time::{Duration, Instant};

const UNIT: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/ramboot.service");

fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

#[test]
fn the_systemd_unit_verifies_and_is_hardened() {
    let Some(analyze) =
        ["/usr/bin/systemd-analyze", "/bin/systemd-analyze"].into_iter().find(|p| Path::new(p).exists())
    else {
        assert!(std::env::var_os("CI").is_none(), "CI installs systemd");
        eprintln!("SKIPPED: systemd-analyze not found (apt-get install systemd)");
        return;
    };
    let unit = std::fs::read_to_string(UNIT).unwrap();
    for line in [
        "Type=notify",
        "WatchdogSec=",
        "NoNewPrivileges=yes",
        "ProtectSystem=strict",
        "PrivateTmp=yes",
        "StateDirectory=ramboot",
        "CapabilityBoundingSet=CAP_NET_BIND_SERVICE CAP_NET_RAW",
        "User=ramboot",
    ] {
        assert!(unit.lines().any(|l| l.starts_with(line)), "the unit lacks {line}");
    }
    // Verified against this build's binary (the package's /usr/bin/ramboot is
    // not installed here); man pages are not looked up.
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("ramboot.service");
    std::fs::write(&copy, unit.replace("/usr/bin/ramboot", env!("CARGO_BIN_EXE_ramboot"))).unwrap();
    let out = std::process::Command::new(analyze).args(["verify", "--man=no"]).arg(&copy).output().unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success() && text.trim().is_empty(), "systemd-analyze verify: {text}");
}

#[test]
fn the_default_configuration_loads() {
    let config =
        ramboot::config::Config::load(Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/packaging/ramboot.yaml")))
            .unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(config.paths.data, Path::new("/var/lib/ramboot"));
    assert_eq!(config.paths.ipxe, Path::new("/usr/lib/ipxe"), "Debian's ipxe package");
}

#[test]
fn serve_tells_systemd_it_is_ready_feeds_the_watchdog_and_says_when_it_stops() {
    if !is_root() {
        assert!(std::env::var_os("CI").is_none(), "CI runs as root");
        eprintln!("SKIPPED: binding DHCP to an interface (SO_BINDTODEVICE) needs root");
        return;
    }
    let dir = tempfile::tempdir().unwrap();
    for d in ["profiles", "ipxe"] {
        std::fs::create_dir_all(dir.path().join(d)).unwrap();
    }
    let dhcp_port = {
        let probe = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        probe.local_addr().unwrap().port()
    };
    std::fs::write(
        dir.path().join("ramboot.yaml"),
        format!(
            "interface: lo\nserver_address: 127.0.0.1\nhttp:\n  listen: 127.0.0.1:0\ntftp:\n  listen: 127.0.0.1:0\n\
             dhcp:\n  port: {dhcp_port}\n  subnet: 127.0.0.0/8\n  range: [127.0.0.100, 127.0.0.200]\n\
             paths:\n  data: {d}/data\n  profiles: {d}/profiles\n  ipxe: {d}/ipxe\n",
            d = dir.path().display()
        ),
    )
    .unwrap();
    let socket_path = dir.path().join("notify.sock");
    let socket = UnixDatagram::bind(&socket_path).unwrap();
    socket.set_read_timeout(Some(Duration::from_secs(1))).unwrap();
    let log = dir.path().join("stderr");
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_ramboot"))
        .args(["serve", "--config"])
        .arg(dir.path().join("ramboot.yaml"))
        .env("NOTIFY_SOCKET", &socket_path)
        .env("WATCHDOG_USEC", "400000")
        .env_remove("WATCHDOG_PID")
        .env("NO_COLOR", "1")
        .stderr(std::fs::File::create(&log).unwrap())
        .spawn()
        .unwrap();
    let mut seen: Vec<String> = Vec::new();
    let mut buf = [0u8; 512];
    let started = Instant::now();
    let context = |seen: &[String]| format!("{seen:?}\n{}", std::fs::read_to_string(&log).unwrap_or_default());
    while seen.iter().filter(|m| m.as_str() == "WATCHDOG=1").count() < 2 {
        assert!(started.elapsed() < Duration::from_secs(30), "{}", context(&seen));
        assert!(child.try_wait().unwrap().is_none(), "{}", context(&seen));
        if let Ok(n) = socket.recv(&mut buf) {
            seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
        }
    }
    let ready = seen.iter().position(|m| m.starts_with("READY=1")).unwrap_or_else(|| panic!("{}", context(&seen)));
    assert_eq!(ready, 0, "READY=1 first: {seen:?}");
    // READY=1 comes only once the sockets are bound: the log says DHCP listens.
    assert!(std::fs::read_to_string(&log).unwrap().contains("listening"), "{}", context(&seen));
    nix::sys::signal::kill(nix::unistd::Pid::from_raw(child.id() as i32), nix::sys::signal::Signal::SIGTERM).unwrap();
    let status = child.wait().unwrap();
    assert!(status.success(), "{status}: {}", context(&seen));
    while let Ok(n) = socket.recv(&mut buf) {
        seen.push(String::from_utf8_lossy(&buf[..n]).into_owned());
    }
    assert!(seen.iter().any(|m| m == "STOPPING=1"), "{seen:?}");
}
