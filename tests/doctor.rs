//! `ramboot doctor` against a good setup and deliberately broken ones, in network
//! namespaces of its own: a missing interface, an address not on it, port 67 held
//! by another program, another DHCP server answering on the boot network, missing
//! iPXE binaries, a broken profile, a database a newer ramboot migrated, a data
//! directory short of space. The data directory is a tmpfs of the test's own, so the
//! free space doctor judges is the test's choice, not the CI machine's.

mod common;

use ramboot_lab::harness::{ip_in, start_site_dnsmasq, veth, Lab, DNSMASQ};
use ramboot_lab::tmpfs::Tmpfs;
use std::net::Ipv4Addr;
use std::path::PathBuf;
use std::process::Command;

const SERVER_IP: &str = "10.77.0.1";

/// Where a doctored setup keeps its files: profiles and iPXE binaries under `dir`,
/// the data directory (database, images) at `data`.
struct Site {
    dir: PathBuf,
    data: PathBuf,
}

/// `ramboot doctor` in `ns` with `config` (the site's paths added): exit code and output.
fn doctor(ns: &str, site: &Site, config: &str, args: &[&str]) -> (i32, String) {
    let paths = format!(
        "paths:\n  data: {data}\n  profiles: {d}/profiles\n  ipxe: {d}/ipxe\n",
        data = site.data.display(),
        d = site.dir.display()
    );
    let file = site.dir.join("ramboot.yaml");
    std::fs::write(&file, format!("{config}{paths}")).unwrap();
    let out = Command::new("ip")
        .args(["netns", "exec", ns, env!("CARGO_BIN_EXE_ramboot"), "doctor", "--config"])
        .arg(&file)
        .args(args)
        .output()
        .unwrap();
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.code().unwrap_or(-1), text)
}

fn line<'a>(out: &'a str, needle: &str) -> &'a str {
    out.lines().find(|l| l.contains(needle)).unwrap_or_else(|| panic!("no line with {needle:?}:\n{out}"))
}

#[test]
fn doctor_passes_a_good_setup_and_names_each_broken_one_with_its_fix() {
    const TEST: &str = "doctor_passes_a_good_setup_and_names_each_broken_one_with_its_fix";
    let Some(mut lab) = Lab::for_test(TEST, &[("dnsmasq (dnsmasq-base)", DNSMASQ)]) else { return };
    let base = format!("rd{}", std::process::id());
    let (server_ns, peer_ns) = (lab.netns(&format!("{base}s")), lab.netns(&format!("{base}p")));
    let (server_if, peer_if) = (format!("{base}s0"), format!("{base}p0"));
    veth((&server_ns, &server_if), (&peer_ns, &peer_if));
    ip_in(&server_ns, &["addr", "add", &format!("{SERVER_IP}/24"), "dev", &server_if]);
    ip_in(&peer_ns, &["addr", "add", "10.77.0.2/24", "dev", &peer_if]);
    for (ns, ifname) in [(&server_ns, &server_if), (&peer_ns, &peer_if)] {
        ip_in(ns, &["link", "set", ifname, "up"]);
    }
    let dir = lab.dir().to_path_buf();
    // Room to spare (doctor fails a data directory under 1 GiB, warns under 8); a
    // tmpfs's size is a limit, not memory taken.
    let roomy = Tmpfs::mount("16g");
    let site = Site { dir: dir.clone(), data: roomy.path("data") };
    for d in [site.data.clone(), dir.join("profiles"), dir.join("ipxe")] {
        std::fs::create_dir_all(d).unwrap();
    }
    for file in ["undionly.kpxe", "snponly.efi"] {
        std::fs::write(dir.join("ipxe").join(file), b"stand-in").unwrap();
    }
    let good = format!(
        "interface: {server_if}\nserver_address: {SERVER_IP}\nhttp:\n  listen: {SERVER_IP}:8080\n\
         dhcp:\n  subnet: 10.77.0.0/24\n  range: [10.77.0.100, 10.77.0.200]\n"
    );

    // A good setup: nothing fails (no profiles yet is a warning), exit 0.
    let (code, out) = doctor(&server_ns, &site, &good, &[]);
    assert_eq!(code, 0, "{out}");
    assert!(!out.contains("FAIL"), "{out}");
    assert!(line(&out, "holds server_address").starts_with("ok"), "{out}");
    assert!(line(&out, "no other DHCP server answers").starts_with("ok"), "{out}");
    assert!(line(&out, "UDP 67 (DHCP) is free").starts_with("ok"), "{out}");
    assert!(line(&out, "no profiles").starts_with("warn"), "{out}");
    assert!(line(&out, "free under").starts_with("ok"), "{out}");

    // The wrong interface; then the right one without the address.
    let wrong = good.replace(&format!("interface: {server_if}"), "interface: eth9");
    let (code, out) = doctor(&server_ns, &site, &wrong, &["--no-probe"]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "interface eth9 does not exist").starts_with("FAIL"), "{out}");
    let elsewhere = good
        .replace(&format!("server_address: {SERVER_IP}"), "server_address: 10.77.0.9")
        .replace(&format!("listen: {SERVER_IP}:"), "listen: 10.77.0.9:");
    let (code, out) = doctor(&server_ns, &site, &elsewhere, &["--no-probe"]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "does not hold server_address 10.77.0.9").contains("ip addr add"), "{out}");

    // Another DHCP server on the boot network (dnsmasq in the peer namespace).
    let peer: Ipv4Addr = "10.77.0.2".parse().unwrap();
    let range = ("10.77.0.50".parse().unwrap(), "10.77.0.60".parse().unwrap());
    let rogue = start_site_dnsmasq(&mut lab, &peer_ns, &peer_if, peer, range, &[]);
    let (code, out) = doctor(&server_ns, &site, &good, &[]);
    assert_eq!(code, 1, "{out}");
    let found = line(&out, "another DHCP server answers");
    // dnsmasq picks the address from a hash of the probe's MAC: any of its range.
    let offered = found.split("10.77.0.2 offered ").nth(1).and_then(|rest| rest.split(':').next());
    let in_range = offered.and_then(|ip| ip.parse::<Ipv4Addr>().ok()).is_some_and(|ip| ip >= range.0 && ip <= range.1);
    assert!(found.starts_with("FAIL") && in_range, "an address of dnsmasq's range: {out}");
    assert!(found.contains("dhcp.mode: proxy"), "the fix names proxy mode: {found}");
    // In proxy mode that server is what is wanted.
    let proxy = good.replace("dhcp:\n", "dhcp:\n  mode: proxy\n");
    let (_, out) = doctor(&server_ns, &site, &proxy, &[]);
    assert!(line(&out, "the site's DHCP server answers").starts_with("ok"), "{out}");
    lab.stop(rogue, std::time::Duration::from_secs(5));

    // Port 67 taken on this machine (dnsmasq in the server's namespace).
    let server_ip: Ipv4Addr = SERVER_IP.parse().unwrap();
    let range = ("10.77.0.70".parse().unwrap(), "10.77.0.80".parse().unwrap());
    let squatter = start_site_dnsmasq(&mut lab, &server_ns, &server_if, server_ip, range, &[]);
    let (code, out) = doctor(&server_ns, &site, &good, &["--no-probe"]);
    assert_eq!(code, 1, "{out}");
    let held = line(&out, "UDP 67 (DHCP) is held by");
    assert!(held.starts_with("FAIL") && held.contains("dnsmasq (pid"), "{out}");
    lab.stop(squatter, std::time::Duration::from_secs(5));

    // Missing iPXE binaries, a broken profile, a database from a newer ramboot.
    std::fs::remove_file(dir.join("ipxe/undionly.kpxe")).unwrap();
    std::fs::write(dir.join("profiles/bad.yaml"), "name: bad\nstage1: stage1\nimgae: tiny\n").unwrap();
    let db = site.data.join("ramboot.db");
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    rt.block_on(async {
        let store = ramboot::store::Store::open(&format!("sqlite://{}", db.display())).await.unwrap();
        store.close().await;
    });
    let newer = Command::new("sqlite3")
        .arg(&db)
        .arg("INSERT INTO _sqlx_migrations (version, description, success, checksum, execution_time) VALUES (99999, 'future', 1, x'00', 0)")
        .status();
    let (code, out) = doctor(&server_ns, &site, &good, &["--no-probe"]);
    assert_eq!(code, 1, "{out}");
    assert!(line(&out, "iPXE binaries missing").contains("undionly.kpxe (bios)"), "{out}");
    assert!(line(&out, "bad.yaml:3:1").starts_with("FAIL"), "{out}");
    let have_sqlite3 = newer.is_ok_and(|s| s.success());
    assert!(have_sqlite3 || std::env::var_os("CI").is_none(), "CI installs sqlite3");
    if have_sqlite3 {
        assert!(line(&out, "newer than this ramboot knows").starts_with("FAIL"), "{out}");
    } else {
        eprintln!("NOTE: no sqlite3 program here; the newer-database case is covered by the store's own test");
    }

    // A data directory short of space: images and the database are at risk.
    let cramped = Tmpfs::mount("64m");
    let site = Site { dir: dir.clone(), data: cramped.path("data") };
    let (code, out) = doctor(&server_ns, &site, &good, &["--no-probe"]);
    assert_eq!(code, 1, "{out}");
    let space = line(&out, "free under");
    assert!(
        space.starts_with("FAIL") && space.contains(" MiB free under") && space.contains("ramboot images ls"),
        "{out}"
    );
}
