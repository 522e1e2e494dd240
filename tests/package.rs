//! How ramboot runs as a system service: the systemd unit the package installs
//! passes `systemd-analyze verify`, the default configuration it installs loads,
//! and `serve` speaks systemd's notification protocol (READY=1 once listening,
//! WATCHDOG=1 pings, STOPPING=1 on SIGTERM).

use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
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

/// The Debian package, built as `packaging/build-deb.sh` builds it, linted,
/// installed on this machine (CI's, which is disposable), checked, and used: the
/// installed `/usr/bin/ramboot` (the unit's ExecStart program) serves a QEMU VM
/// through `ramboot-lab` until the node is ready. Purged at the end. Runs once per
/// CI run (the SQLite pass): the package is the same on both.
#[test]
fn the_debian_package_builds_lints_installs_and_boots_a_node() {
    const TEST: &str = "the_debian_package_builds_lints_installs_and_boots_a_node";
    let ci = std::env::var_os("CI").is_some();
    if std::env::var_os("RAMBOOT_TEST_POSTGRES").is_some() {
        eprintln!("SKIPPED ({TEST}): the package was tested in the SQLite pass");
        return;
    }
    let cargo_deb = std::process::Command::new("cargo").args(["deb", "--version"]).output();
    let tools = [
        ("cargo-deb (cargo install cargo-deb --locked)", cargo_deb.is_ok_and(|o| o.status.success())),
        ("lintian", Path::new("/usr/bin/lintian").exists()),
        ("qemu-system-x86_64", Path::new("/usr/bin/qemu-system-x86_64").exists()),
        ("root", is_root()),
    ];
    if let Some((missing, _)) = tools.iter().find(|(_, here)| !here) {
        assert!(!ci, "CI has {missing}");
        eprintln!("SKIPPED ({TEST}): {missing} is missing");
        return;
    }
    let repo = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run_with = |program: &str, args: &[&str], env: &[(&str, &str)]| {
        let out = std::process::Command::new(program)
            .args(args)
            .envs(env.iter().copied())
            .current_dir(repo)
            .output()
            .unwrap();
        let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
        (out.status.success(), text)
    };
    let run = |program: &str, args: &[&str]| run_with(program, args, &[]);
    let started = Instant::now();
    // The package of this test run's own build: a release build would add minutes
    // to CI and test the same packaging.
    let profile = if cfg!(debug_assertions) { "dev" } else { "release" };
    let (built, log) = run_with("packaging/build-deb.sh", &[], &[("RAMBOOT_DEB_PROFILE", profile)]);
    assert!(built, "packaging/build-deb.sh failed:\n{log}");
    let deb = log.lines().rev().find(|l| l.ends_with(".deb")).expect("the .deb's path").trim().to_string();
    eprintln!("{TEST}: built {deb} in {:.0?}", started.elapsed());

    // lintian: no errors; the warnings are listed.
    let (_, lint) = run("lintian", &["--no-tag-display-limit", &deb]);
    let errors: Vec<&str> = lint.lines().filter(|l| l.starts_with("E: ")).collect();
    assert!(errors.is_empty(), "lintian errors:\n{lint}");
    eprintln!("lintian:\n{lint}");

    struct Purge;
    impl Drop for Purge {
        fn drop(&mut self) {
            let _ = std::process::Command::new("dpkg").args(["--purge", "ramboot"]).status();
        }
    }
    let (installed, out) = run("dpkg", &["-i", &deb]);
    let _purge = Purge;
    assert!(installed, "dpkg -i: {out}");
    let (ok, version) = run("/usr/bin/ramboot", &["--version"]);
    assert!(ok && version.contains(env!("CARGO_PKG_VERSION")), "{version}");
    let (ok, user) = run("id", &["ramboot"]);
    assert!(ok, "the service user: {user}");
    let (ok, out) = run("systemd-analyze", &["verify", "--man=no", "/usr/lib/systemd/system/ramboot.service"]);
    assert!(ok && out.trim().is_empty(), "systemd-analyze verify: {out}");
    for file in
        ["/etc/ramboot/ramboot.yaml", "/usr/lib/ramboot/ramboot-agent", "/usr/share/man/man1/ramboot-doctor.1.gz"]
    {
        assert!(Path::new(file).exists(), "{file} is not installed");
    }
    // The installed default configuration has placeholders, and doctor says which.
    let (ok, doctor) = run("/usr/bin/ramboot", &["doctor", "--no-probe", "--config", "/etc/ramboot/ramboot.yaml"]);
    assert!(!ok && doctor.contains("FAIL  interface eth1 does not exist"), "{doctor}");

    // README's install steps: images built from the installed recipes and agent.
    let work = tempfile::tempdir().unwrap();
    let (data, cache) = (work.path().join("data"), work.path().join("cache"));
    let (data, cache) = (data.to_str().unwrap(), cache.to_str().unwrap());
    for (recipe, agent) in [("stage1", Some("/usr/lib/ramboot/ramboot-agent")), ("tiny", None)] {
        let mut args = vec!["images", "build", recipe, "--recipes", "/usr/share/ramboot/images", "--data", data];
        args.extend(["--cache", cache]);
        if let Some(agent) = agent {
            args.extend(["--agent", agent]);
        }
        let (ok, out) = run("/usr/bin/ramboot", &args);
        assert!(ok, "ramboot images build {recipe} from the package: {out}");
    }

    // The unit's ExecStart program serves a VM until the node is ready.
    let unit = std::fs::read_to_string("/usr/lib/systemd/system/ramboot.service").unwrap();
    let exec = unit.lines().find_map(|l| l.strip_prefix("ExecStart=")).unwrap();
    let program = exec.split_whitespace().next().unwrap();
    let lab = ramboot_lab::bins::workspace().unwrap_or_else(|e| panic!("building ramboot-lab: {e}")).lab.clone();
    let dir = PathBuf::from(env!("CARGO_TARGET_TMPDIR")).join("lab-package");
    let status = std::process::Command::new(lab)
        .args(["--once", "--timeout", "300", "--profile", "tiny", "--ramboot", program, "--dir"])
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success(), "ramboot-lab with {program} failed ({status}); see {}/console.log", dir.display());
    eprintln!("{TEST}: {:.0?} in all", started.elapsed());
}
