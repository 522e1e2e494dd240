//! A QEMU VM that network-boots with its NIC's iPXE ROM, on a bridge in a test's
//! namespace (see LAB.md for why these flags).

use super::netns::{ip_in, tool, Lab};
use super::pcap::TCPDUMP;
use std::path::Path;

pub const QEMU: &[&str] = &["/usr/bin/qemu-system-x86_64"];
pub const PXE_ROM: &[&str] = &["/usr/lib/ipxe/qemu/pxe-e1000.rom"];
pub const DNSMASQ: &[&str] = &["/usr/sbin/dnsmasq", "/sbin/dnsmasq"];

/// What a test with a network-booting VM beside dnsmasq needs (CI installs it all).
pub const VM_BESIDE_DNSMASQ: [(&str, &[&str]); 4] = [
    ("dnsmasq (dnsmasq-base)", DNSMASQ),
    ("qemu-system-x86_64 (qemu-system-x86)", QEMU),
    ("pxe-e1000.rom (ipxe-qemu)", PXE_ROM),
    ("tcpdump", TCPDUMP),
];

/// The lab of `test` (`None`: skipped, see [`Lab::for_test`]) needing
/// [`VM_BESIDE_DNSMASQ`] and `more` tools, with a namespace `rb<tag><pid>` holding
/// [`bridge_with_tap`]. Returns (lab, namespace, bridge, tap).
pub fn lab_with_bridge(
    test: &str,
    more: &[(&str, &[&str])],
    tag: char,
    addresses: &[String],
) -> Option<(Lab, String, String, String)> {
    let tools: Vec<(&str, &[&str])> = VM_BESIDE_DNSMASQ.iter().chain(more).copied().collect();
    let mut lab = Lab::for_test(test, &tools)?;
    let ns = lab.netns(&format!("rb{tag}{}", std::process::id()));
    let (bridge, tap) = bridge_with_tap(&ns, tag, addresses);
    Some((lab, ns, bridge, tap))
}

/// A bridge `<tag><pid>br` in `ns` with a tap `<tag><pid>tp` enslaved, both up, the
/// bridge carrying `addresses` (CIDR; the first is the primary). Returns (bridge, tap).
pub fn bridge_with_tap(ns: &str, tag: char, addresses: &[String]) -> (String, String) {
    let pid = std::process::id();
    let (bridge, tap) = (format!("{tag}{pid}br"), format!("{tag}{pid}tp"));
    assert!(bridge.len() <= 15 && tap.len() <= 15, "interface names too long: {bridge} {tap}");
    ip_in(ns, &["link", "add", &bridge, "type", "bridge", "forward_delay", "0"]);
    ip_in(ns, &["tuntap", "add", "dev", &tap, "mode", "tap"]);
    ip_in(ns, &["link", "set", &tap, "master", &bridge]);
    for address in addresses {
        ip_in(ns, &["addr", "add", address, "dev", &bridge]);
    }
    ip_in(ns, &["link", "set", &tap, "up"]);
    ip_in(ns, &["link", "set", &bridge, "up"]);
    (bridge, tap)
}

/// Start QEMU (TCG, SeaBIOS, 256 MiB) booting from the network through the e1000
/// iPXE ROM on `tap`, MAC `mac`, serial console to `console`; QEMU's own output goes
/// to `log`. Returns the lab's index of the process.
pub fn spawn_pxe_vm(lab: &mut Lab, ns: &str, tap: &str, mac: &str, console: &Path, log: &Path) -> usize {
    let program: Vec<String> = [
        tool(QEMU).as_str(),
        "-accel",
        "tcg",
        "-m",
        "256",
        "-nographic",
        "-serial",
        &format!("file:{}", console.display()),
        "-monitor",
        "none",
        "-no-reboot",
        "-boot",
        "n",
        "-device",
        &format!("e1000,netdev=n0,mac={mac},romfile={},bootindex=1", tool(PXE_ROM)),
        "-netdev",
        &format!("tap,id=n0,ifname={tap},script=no,downscript=no"),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    lab.spawn("qemu", ns, &program, log, &[])
}
