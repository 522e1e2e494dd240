//! Real firmware boot paths in QEMU (issue 12, item 4), with the real `ramboot serve`,
//! each pinning a row of `docs/firmware-quirks.md`:
//!
//! 1. **EDK2's own PXE.** OVMF on a virtio-net NIC with no option ROM, so the
//!    firmware's UEFI PXE stack (NetworkPkg), not iPXE, does the DHCP; dnsmasq hands
//!    out addresses only and ramboot, in proxy mode, must get the firmware to
//!    TFTP-load `snponly.efi`, whose iPXE then fetches the boot script. The wire must
//!    show what older EDK2 builds need: no option 43 in a port-67 proxy offer to a
//!    UEFI client, option 60 `PXEClient`, 300 bytes or more, NUL-terminated boot file.
//! 2. **A boot network of MTU 1400 that drops IP fragments** (UNDI ROMs do; so do
//!    overlays). A BIOS iPXE ROM still loads `undionly.kpxe`: ramboot grants at most
//!    the link MTU − 32 as blksize.
//! 3. **TFTP from a secondary address.** ramboot's `server_address` is the boot
//!    interface's secondary address and TFTP listens on `0.0.0.0`: every TFTP answer
//!    must come from the address the ROM asked, which firmware filters on.
//!
//! In 2 and 3 ramboot is the authoritative DHCP server: QEMU's ROM iPXE is not
//! ramboot's build, so it is handed `undionly.kpxe` over TFTP first, and the chained
//! iPXE gets the script (`ramboot_core::dhcp::ipxe`). Whether the script comes after
//! one TFTP round or more, the assertions are "a complete transfer at least once"
//! and "the script eventually".
//!
//! Each test stops once the VM's iPXE has fetched `/boot.ipxe?mac=…`. Each makes its
//! own namespaces (named after the test process's PID), and its guard stops every
//! process it started (by PID) and deletes them, also when an assertion fails.

mod common;

use common::netns::{tftp_reads, Ramboot, ServeInLab};
use ramboot_lab::harness::{
    bridge_port_ns, ip_in, lab_with_bridge, log_text, logs_context, spawn_pxe_vm, spawn_secure_boot_pxe_vm,
    spawn_uefi_firmware_pxe_vm, spawn_uefi_http_boot_vm, start_site_dnsmasq, tail, tool, wait_for, Lab,
};
use ramboot_lab::net::in_ns;
use ramboot_lab::pcap::{capture, read_pcap, wait_capture, Packet};
use ramboot_lab::wire::{describe, describe_all, dhcp_of, http_requests, tftp_of, Dhcp, TftpPacket};
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::{Duration, Instant};

const SNPONLY: &[&str] = &["/usr/lib/ipxe/snponly.efi"];
const UNDIONLY: &[&str] = &["/usr/lib/ipxe/undionly.kpxe"];
const OVMF: &[&str] = &[ramboot_lab::qemu::OVMF_CODE];
const OVMF_SECURE_BOOT: &[&str] = &[ramboot_lab::qemu::OVMF_SECBOOT_CODE];
const NFT: &[&str] = &["/usr/sbin/nft", "/sbin/nft"];
const BUSYBOX: &[&str] = &["/usr/bin/busybox", "/bin/busybox"];

/// How long a VM under TCG may take to each milestone: generous, only against hangs
/// (a boot step takes 5 to 40 s here, more on a busy machine).
const VM_STEP: Duration = Duration::from_secs(150);

/// `file` of Debian's `ipxe` package, put into ramboot's TFTP root (`paths.ipxe`).
fn serve_ipxe_binary(lab: &Lab, paths: &[&str], file: &str) -> Vec<u8> {
    let bytes = std::fs::read(tool(paths)).unwrap_or_else(|e| panic!("reading {file}: {e}"));
    std::fs::create_dir_all(lab.path("ipxe")).unwrap();
    std::fs::write(lab.path("ipxe").join(file), &bytes).unwrap();
    bytes
}

/// The value of `key=` in a log line (up to the next space).
fn field<'a>(line: &'a str, key: &str) -> Option<&'a str> {
    let at = line.find(&format!(" {key}="))? + key.len() + 2;
    line[at..].split_whitespace().next()
}

/// The `/boot.ipxe` requests a capture saw: (client address, target).
fn script_requests(packets: &[Packet]) -> Vec<(Ipv4Addr, String)> {
    http_requests(packets, 8080).into_iter().filter(|(_, r)| r.starts_with("GET /boot.ipxe")).collect()
}

/// Stop the VM, the DHCP server and ramboot (which must exit cleanly), then tcpdump
/// once the capture holds the script request; ramboot's log and the capture.
fn finish(
    lab: &mut Lab,
    (before_ramboot, tcpdump): (&[usize], usize),
    ramboot: &Ramboot,
    pcap: &Path,
) -> (String, Vec<Packet>) {
    // The VM first, then any site daemon.
    for &idx in before_ramboot {
        lab.stop(idx, Duration::from_secs(5));
    }
    let log = lab.stop_ramboot(ramboot);
    wait_capture(pcap, Duration::from_secs(5), |packets| !script_requests(packets).is_empty());
    lab.stop(tcpdump, Duration::from_secs(5));
    // By level (the second word): a DEBUG line may quote a client's TFTP "ERROR".
    let errors: Vec<&str> = log.lines().filter(|l| l.split_whitespace().nth(1) == Some("ERROR")).collect();
    assert!(errors.is_empty(), "ramboot logged errors: {errors:#?}");
    assert!(!log.contains("TFTP transfer aborted"), "a TFTP transfer was aborted:\n{}", tail(&log, 40));
    (log, read_pcap(pcap))
}

// ---------------------------------------------------------------------------------
// 1. EDK2's own PXE through ramboot's proxyDHCP

const PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 1);
const PROXY_SITE_IP: Ipv4Addr = Ipv4Addr::new(10, 77, 0, 2);
const UEFI_MAC: &str = "52:54:00:77:77:01";

/// Is `d` a request of OVMF's own PXE stack (arch 7, no iPXE user class), rather
/// than of the iPXE it loads?
fn from_edk2(d: &Dhcp) -> bool {
    let class = d.opt_str(60).unwrap_or_default();
    d.op == 1 && class.starts_with("PXEClient:Arch:00007") && !d.user_class().is_some_and(|u| u.contains("iPXE"))
}

/// OVMF's own network boot (PXE, or with `http_boot` its HTTP Boot client) on a
/// lab bridge where another host's dnsmasq leases addresses and ramboot, in proxy
/// mode, names the boot file; the VM started, the wire captured.
struct ProxyBoot {
    lab: Lab,
    ramboot: Ramboot,
    dnsmasq: usize,
    qemu: usize,
    tcpdump: usize,
    pcap: std::path::PathBuf,
    console: std::path::PathBuf,
    qemu_log: std::path::PathBuf,
    dnsmasq_log: std::path::PathBuf,
    snponly: Vec<u8>,
    vm_started: Instant,
}

impl ProxyBoot {
    fn start(
        test: &str,
        tags: (char, char),
        (proxy_ip, site_ip, range): (Ipv4Addr, Ipv4Addr, (Ipv4Addr, Ipv4Addr)),
        mac: &str,
        http_boot: bool,
    ) -> Option<ProxyBoot> {
        let more = [("OVMF (ovmf)", OVMF), ("snponly.efi (ipxe)", SNPONLY)];
        let (mut lab, ns, bridge, tap) = lab_with_bridge(test, &more, tags.0, &[format!("{proxy_ip}/24")])?;
        // The site's DHCP server is another host on the boot network (on the bridge's
        // own address it would answer from ramboot's, and the wire could not tell them apart).
        let (site_ns, site_if) = bridge_port_ns(&mut lab, (&ns, &bridge), tags.1, &[format!("{site_ip}/24")], 1500);
        let snponly = serve_ipxe_binary(&lab, SNPONLY, "snponly.efi");
        let (tcpdump, pcap) = capture(&mut lab, &ns, &bridge, "udp or tcp port 8080");
        let config = format!(
            "interface: {bridge}\nserver_address: {proxy_ip}\nipv6_ra: true\nhttp: {{listen: \"{proxy_ip}:8080\"}}\n\
             tftp: {{listen: \"{proxy_ip}:69\"}}\ndhcp:\n  mode: proxy\n"
        );
        // tower_http at debug logs each request's URI; tftp at debug, EDK2's size probes.
        let ramboot = lab.start_ramboot(&ns, &config, "info,tower_http=debug,ramboot::tftp=debug");
        let dnsmasq = start_site_dnsmasq(&mut lab, &site_ns, &site_if, site_ip, range, &[]);
        let (console, qemu_log, dnsmasq_log) = (lab.path("console.log"), lab.path("qemu.log"), lab.path("dnsmasq.log"));
        let vm_started = Instant::now();
        let spawn = if http_boot { spawn_uefi_http_boot_vm } else { spawn_uefi_firmware_pxe_vm };
        let qemu = spawn(&mut lab, &ns, &tap, mac, &console, &qemu_log);
        Some(ProxyBoot {
            lab,
            ramboot,
            dnsmasq,
            qemu,
            tcpdump,
            pcap,
            console,
            qemu_log,
            dnsmasq_log,
            snponly,
            vm_started,
        })
    }

    /// What to show when a wait times out: the logs as they are then.
    fn context(&self) -> impl Fn() -> String {
        let paths = [&self.console, &self.qemu_log, &self.dnsmasq_log, &self.ramboot.log].map(|p| p.clone());
        move || {
            let [console, qemu, dnsmasq, ramboot] = &paths;
            logs_context(30, &[("console", console), ("qemu", qemu), ("dnsmasq", dnsmasq), ("ramboot", ramboot)])
        }
    }

    /// Stop everything (see [`finish`]): ramboot's log and the capture.
    fn finish(&mut self) -> (String, Vec<Packet>) {
        finish(&mut self.lab, (&[self.qemu, self.dnsmasq], self.tcpdump), &self.ramboot, &self.pcap)
    }
}

#[test]
fn uefi_firmware_pxe_boots_through_ramboot_proxy_beside_dnsmasq() {
    const TEST: &str = "uefi_firmware_pxe_boots_through_ramboot_proxy_beside_dnsmasq";
    let started = Instant::now();
    let range = (Ipv4Addr::new(10, 77, 0, 50), Ipv4Addr::new(10, 77, 0, 90));
    let Some(mut vm) = ProxyBoot::start(TEST, ('u', 'v'), (PROXY_IP, PROXY_SITE_IP, range), UEFI_MAC, false) else {
        return;
    };
    let context = vm.context();
    vm.ramboot.wait_tftp_read(&mut vm.lab, vm.qemu, "snponly.efi", VM_STEP, &context);
    let loaded_at = vm.vm_started.elapsed();
    vm.ramboot.wait_script_served(&mut vm.lab, vm.qemu, UEFI_MAC, VM_STEP, &context);
    let script_at = vm.vm_started.elapsed();
    let (log, packets) = vm.finish();
    let (snponly, console) = (&vm.snponly, &vm.console);

    let msgs: Vec<(Packet, Dhcp)> = dhcp_of(&packets).into_iter().filter(|(_, d)| d.chaddr == UEFI_MAC).collect();
    let wire = describe_all(&msgs);
    // (a) The VM's first DISCOVER is the firmware's own: arch 7, no iPXE user class.
    let first = msgs.iter().find(|(_, d)| d.kind() == "DISCOVER").unwrap_or_else(|| panic!("no DISCOVER:\n{wire}"));
    assert!(from_edk2(&first.1), "the first DISCOVER is not EDK2's PXE: {}", describe(&first.0, &first.1));
    let edk2_xids: Vec<u32> = msgs.iter().filter(|(_, d)| from_edk2(d)).map(|(_, d)| d.xid).collect();

    // (b) ramboot's port-67 proxy offers to the firmware: no option 43 (older EDK2
    // takes it for a "PXE10" offer it never caches), `PXEClient`, 300 bytes or more,
    // the boot file NUL-terminated in `file` and option 67.
    let to_edk2 = |p: &Packet, d: &Dhcp| d.op == 2 && edk2_xids.contains(&d.xid) && p.src == PROXY_IP;
    let offers: Vec<&(Packet, Dhcp)> = msgs.iter().filter(|(p, d)| to_edk2(p, d) && p.sport == 67).collect();
    assert!(!offers.is_empty(), "no proxy offer from ramboot to EDK2's DISCOVER:\n{wire}");
    for (p, d) in &offers {
        let line = describe(p, d);
        assert_eq!(d.kind(), "OFFER", "{line}");
        assert!(d.yiaddr.is_unspecified(), "a proxy offer carries no address: {line}");
        assert!(d.opt(43).is_none(), "option 43 in a port-67 proxy offer to a UEFI client: {line}");
        assert_eq!(d.opt(60), Some(b"PXEClient".as_slice()), "{line}");
        assert!(p.payload.len() >= 300, "{} bytes: {line}", p.payload.len());
        assert_eq!(d.opt(67), Some(b"snponly.efi\0".as_slice()), "option 67, NUL-terminated: {line}");
        assert!(d.file == "snponly.efi" && d.file_field[d.file.len()] == 0, "`file`, NUL-terminated: {line}");
        assert_eq!((d.siaddr, d.opt_addr(54)), (PROXY_IP, Some(PROXY_IP)), "next server, server id: {line}");
    }
    // (c) Without option 43 EDK2 asks the boot server on port 4011 (PXE 2.1 §2.2.4):
    // if it did, ramboot's ACK names the boot file.
    let asked_4011: Vec<&(Packet, Dhcp)> = msgs.iter().filter(|(p, d)| d.op == 1 && p.dport == 4011).collect();
    let acks_4011: Vec<&(Packet, Dhcp)> =
        msgs.iter().filter(|(p, d)| to_edk2(p, d) && p.sport == 4011 && d.kind() == "ACK").collect();
    if !asked_4011.is_empty() {
        assert!(!acks_4011.is_empty(), "EDK2 asked on port 4011 and got no ACK:\n{wire}");
        for (p, d) in &acks_4011 {
            let line = describe(p, d);
            assert_eq!(d.boot_file(), "snponly.efi", "{line}");
            assert_eq!(d.opt(67).and_then(|v| v.last()), Some(&0), "option 67, NUL-terminated: {line}");
            assert!(p.payload.len() >= 300, "{} bytes: {line}", p.payload.len());
        }
    }

    // (d) ramboot served snponly.efi whole, at least once (another round is the
    // handover of ramboot's own iPXE), and the firmware asked for it.
    let reads = tftp_reads(&log, "snponly.efi");
    let whole = format!("bytes={}", snponly.len());
    assert!(reads.iter().any(|l| l.contains(&whole)), "no whole transfer of snponly.efi: {reads:#?}");
    let tftp = tftp_of(&packets);
    let rrqs: Vec<&(Packet, TftpPacket)> = tftp
        .iter()
        .filter(|(p, t)| p.dport == 69 && matches!(t, TftpPacket::Rrq { file, .. } if file == "snponly.efi"))
        .collect();
    assert!(!rrqs.is_empty(), "no RRQ for snponly.efi on the wire");

    // The console says the same: EDK2's PXE loaded the NBP, iPXE drove the NIC
    // through the firmware's SNP.
    let console_text = log_text(console);
    for step in ["Start PXE over IPv4", "NBP filename is snponly.efi", "NBP file downloaded successfully", "using SNP"]
    {
        assert!(console_text.contains(step), "the console lacks {step:?}:\n{console_text}");
    }

    // (e) The iPXE it started fetched the script for this MAC, from the address dnsmasq
    // leased (the ACKs that named it).
    let leased: Vec<Ipv4Addr> =
        msgs.iter().filter(|(p, d)| d.kind() == "ACK" && p.src == PROXY_SITE_IP).map(|(_, d)| d.yiaddr).collect();
    let scripts = script_requests(&packets);
    let wanted = format!("GET /boot.ipxe?mac={UEFI_MAC}");
    assert!(
        scripts.iter().any(|(src, target)| *target == wanted && leased.contains(src)),
        "no {wanted} from a dnsmasq lease {leased:?}: {scripts:?}"
    );
    eprintln!(
        "{TEST}: EDK2 DISCOVER {:?}; {} proxy offer(s) on 67, {} request(s) and {} ACK(s) on 4011; RRQs {:?}; \
         snponly.efi loaded {loaded_at:.1?} and the script fetched {script_at:.1?} after QEMU started; {} TFTP \
         read(s): {}; test took {:.1?}",
        first.1.opt_str(60).unwrap_or_default(),
        offers.len(),
        asked_4011.len(),
        acks_4011.len(),
        rrqs.iter().map(|(_, t)| format!("{t:?}")).collect::<Vec<_>>(),
        reads.len(),
        reads.first().and_then(|l| l.split("TFTP read").nth(1)).unwrap_or_default(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 1b. EDK2's own HTTP Boot through ramboot's proxyDHCP

const HTTP_PROXY_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const HTTP_SITE_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 2);
const HTTP_MAC: &str = "52:54:00:79:79:01";

/// OVMF with its PXE off boots with its UEFI HTTP Boot client; the site's dnsmasq
/// gives the address, ramboot (proxy mode) the URL of `snponly.efi`, which the
/// firmware fetches from ramboot's HTTP server (`/ipxe/`), and that iPXE fetches
/// the script.
#[test]
fn uefi_http_boot_through_ramboot_proxy_beside_dnsmasq() {
    const TEST: &str = "uefi_http_boot_through_ramboot_proxy_beside_dnsmasq";
    let started = Instant::now();
    let range = (Ipv4Addr::new(10, 79, 0, 50), Ipv4Addr::new(10, 79, 0, 90));
    let Some(mut vm) = ProxyBoot::start(TEST, ('h', 'w'), (HTTP_PROXY_IP, HTTP_SITE_IP, range), HTTP_MAC, true) else {
        return;
    };
    let context = vm.context();
    vm.ramboot.wait_script_served(&mut vm.lab, vm.qemu, HTTP_MAC, VM_STEP, &context);
    let script_at = vm.vm_started.elapsed();
    let (_log, packets) = vm.finish();
    let (snponly, console) = (&vm.snponly, &vm.console);

    let msgs: Vec<(Packet, Dhcp)> = dhcp_of(&packets).into_iter().filter(|(_, d)| d.chaddr == HTTP_MAC).collect();
    let wire = describe_all(&msgs);
    // The firmware asked as an HTTP Boot client (arch 16), and ramboot's proxy
    // offer answered in kind: `HTTPClient` and the URL, no address.
    let first = msgs.iter().find(|(_, d)| d.kind() == "DISCOVER").unwrap_or_else(|| panic!("no DISCOVER:\n{wire}"));
    let class = first.1.opt_str(60).unwrap_or_default();
    assert!(class.starts_with("HTTPClient:Arch:00016"), "the first DISCOVER is not HTTP Boot's: {class}");
    let url = format!("http://{HTTP_PROXY_IP}:8080/ipxe/snponly.efi");
    let offers: Vec<&(Packet, Dhcp)> =
        msgs.iter().filter(|(p, d)| d.op == 2 && p.src == HTTP_PROXY_IP && d.opt(60) == Some(b"HTTPClient")).collect();
    assert!(!offers.is_empty(), "no HTTPClient proxy offer from ramboot:\n{wire}");
    for (p, d) in &offers {
        let line = describe(p, d);
        assert!(d.yiaddr.is_unspecified(), "a proxy offer carries no address: {line}");
        assert_eq!(d.boot_file(), url, "{line}");
    }
    // The firmware fetched the binary over HTTP (the whole of it), then its iPXE the
    // script, from the address dnsmasq leased.
    let requests = http_requests(&packets, 8080);
    assert!(requests.iter().any(|(_, r)| r.starts_with("GET /ipxe/snponly.efi")), "no GET of the binary: {requests:?}");
    let console_text = log_text(console);
    for step in ["Start HTTP Boot over IPv4", &format!("URI: {url}"), "using SNP"] {
        assert!(console_text.contains(step), "the console lacks {step:?}:\n{console_text}");
    }
    assert!(!console_text.contains("Start PXE over IPv4"), "the firmware tried PXE");
    let leased: Vec<Ipv4Addr> =
        msgs.iter().filter(|(p, d)| d.kind() == "ACK" && p.src == HTTP_SITE_IP).map(|(_, d)| d.yiaddr).collect();
    let wanted = format!("GET /boot.ipxe?mac={HTTP_MAC}");
    let scripts = script_requests(&packets);
    assert!(
        scripts.iter().any(|(src, target)| *target == wanted && leased.contains(src)),
        "no {wanted} from a dnsmasq lease {leased:?}: {scripts:?}"
    );
    eprintln!(
        "{TEST}: {} HTTPClient proxy offer(s); snponly.efi ({} bytes) over HTTP; the script fetched {script_at:.1?} \
         after QEMU started; test took {:.1?}",
        offers.len(),
        snponly.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 2. MTU 1400, fragments dropped

const MTU_RAMBOOT_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 1);
const MTU_SITE_IP: Ipv4Addr = Ipv4Addr::new(10, 78, 0, 2);
const MTU_MAC: &str = "52:54:00:78:78:01";
const MTU: u32 = 1400;
/// 1400 − 20 (IPv4) − 8 (UDP) − 4 (TFTP header).
const MTU_BLKSIZE: u64 = 1368;

/// The bridge-family table that drops IPv4 fragments entering the bridge from any
/// port. Every fragment: MF set or a non-zero offset.
const FRAGMENT_DROP: &str =
    "table bridge rbfrag {\n  chain pre {\n    type filter hook prerouting priority -300;\n    \
                             ip frag-off & 0x3fff != 0 counter drop\n  }\n}\n";

/// How many fragments the bridge in `ns` dropped.
fn dropped_fragments(ns: &str) -> u64 {
    let out = in_ns(ns, &[tool(NFT).as_str(), "list", "chain", "bridge", "rbfrag", "pre"]).output().expect("nft");
    let text = String::from_utf8_lossy(&out.stdout);
    let counted = text.split_once("counter packets ").and_then(|(_, rest)| rest.split_whitespace().next());
    counted.and_then(|n| n.parse().ok()).unwrap_or_else(|| panic!("no counter in {text}"))
}

/// Did one ping of `size` data bytes from `ns` to `to` get its answer?
fn ping(lab: &Lab, ns: &str, to: Ipv4Addr, size: u32) -> bool {
    let log = lab.path(&format!("ping-{size}.log"));
    let program = [tool(BUSYBOX), "ping".into(), "-c".into(), "1".into(), "-W".into(), "3".into(), "-s".into()];
    let program: Vec<String> = program.into_iter().chain([size.to_string(), to.to_string()]).collect();
    lab.run(ns, &program, &log, Duration::from_secs(15)).success()
}

/// The boot network: ramboot in a namespace of its own on a veth whose other end is
/// a port of the bridge the VM's tap is on, so everything between ramboot and the VM
/// is *forwarded* by the bridge. A bridge-family nftables rule at prerouting drops
/// every IPv4 fragment that enters the bridge, as an UNDI ROM or an overlay does,
/// without touching whole datagrams. (An inet-family rule would not do: a bridge
/// does not pass frames through IP's hooks, and a forwarding router in between
/// would need DHCP relaying.) Every link has MTU 1400.
#[test]
fn a_1400_mtu_boot_network_that_drops_fragments_still_loads_ipxe_over_tftp() {
    const TEST: &str = "a_1400_mtu_boot_network_that_drops_fragments_still_loads_ipxe_over_tftp";
    let addresses = [format!("{MTU_SITE_IP}/24")];
    let more = [("undionly.kpxe (ipxe)", UNDIONLY), ("nft (nftables)", NFT), ("busybox (busybox-static)", BUSYBOX)];
    let Some((mut lab, ns, bridge, tap)) = lab_with_bridge(TEST, &more, 'f', &addresses) else { return };
    let started = Instant::now();
    let mtu = MTU.to_string();
    for interface in [&tap, &bridge] {
        ip_in(&ns, &["link", "set", interface, "mtu", &mtu]);
    }
    let (server_ns, server_if) = bridge_port_ns(&mut lab, (&ns, &bridge), 'g', &[format!("{MTU_RAMBOOT_IP}/24")], MTU);
    let rules = lab.path("fragments.nft");
    std::fs::write(&rules, FRAGMENT_DROP).unwrap();
    let status = lab.run(
        &ns,
        &[tool(NFT), "-f".into(), rules.display().to_string()],
        &lab.path("nft.log"),
        Duration::from_secs(10),
    );
    assert!(status.success(), "nft -f: {}", log_text(&lab.path("nft.log")));

    // The path really drops fragments: a ping that fits one frame is answered, one
    // that does not is not, and the rule counted its fragments.
    assert!(ping(&lab, &server_ns, MTU_SITE_IP, 1000), "a 1028-byte ping across the bridge is answered");
    let before = dropped_fragments(&ns);
    assert!(!ping(&lab, &server_ns, MTU_SITE_IP, 1450), "a fragmented ping across the bridge is not answered");
    let after_ping = dropped_fragments(&ns);
    assert!(after_ping > before, "the bridge dropped the ping's fragments ({before} → {after_ping})");

    let undionly = serve_ipxe_binary(&lab, UNDIONLY, "undionly.kpxe");
    // What ramboot sends and receives, on its own link.
    let (tcpdump, pcap) = capture(&mut lab, &server_ns, &server_if, "udp or tcp port 8080");
    // ramboot is the authoritative DHCP server: the VM's ROM iPXE is not ramboot's
    // build, so it loads undionly.kpxe over TFTP first.
    let config = format!(
        "interface: {server_if}\nserver_address: {MTU_RAMBOOT_IP}\nipv6_ra: true\n\
         http: {{listen: \"{MTU_RAMBOOT_IP}:8080\"}}\ntftp: {{listen: \"{MTU_RAMBOOT_IP}:69\"}}\n\
         dhcp:\n  subnet: 10.78.0.0/24\n  range: [10.78.0.50, 10.78.0.90]\n"
    );
    let ramboot = lab.start_ramboot(&server_ns, &config, "info,tower_http=debug");

    let (console, qemu_log) = (lab.path("console.log"), lab.path("qemu.log"));
    let vm_started = Instant::now();
    let qemu = spawn_pxe_vm(&mut lab, &ns, &tap, MTU_MAC, &console, &qemu_log);
    let logs = [("console", &console), ("qemu", &qemu_log), ("ramboot", &ramboot.log)];
    let context = || logs_context(30, &logs);
    ramboot.wait_tftp_read(&mut lab, qemu, "undionly.kpxe", VM_STEP, context);
    let loaded_at = vm_started.elapsed();
    ramboot.wait_script_served(&mut lab, qemu, MTU_MAC, VM_STEP, context);
    let script_at = vm_started.elapsed();
    let after_boot = dropped_fragments(&ns);
    let (log, packets) = finish(&mut lab, (&[qemu], tcpdump), &ramboot, &pcap);

    // ramboot: whole transfers, each at a block that fits one 1400-byte frame.
    let reads = tftp_reads(&log, "undionly.kpxe");
    assert!(!reads.is_empty(), "no complete transfer of undionly.kpxe:\n{}", tail(&log, 30));
    for line in &reads {
        let blksize: u64 = field(line, "blksize").and_then(|b| b.parse().ok()).unwrap_or(u64::MAX);
        assert!(blksize <= MTU_BLKSIZE, "blksize {blksize} > {MTU_BLKSIZE}: {line}");
        assert_eq!(field(line, "bytes"), Some(undionly.len().to_string().as_str()), "{line}");
        assert_eq!(field(line, "link_mtu"), Some("Some(1400)"), "{line}");
    }
    // The wire: every OACK granted at most 1368, no DATA was larger, and the ROM had
    // asked for more (or the cap proved nothing).
    let tftp = tftp_of(&packets);
    let asked: Vec<u64> = tftp
        .iter()
        .filter(|(p, _)| p.dport == 69)
        .filter_map(|(_, t)| t.option("blksize").and_then(|b| b.parse().ok()))
        .collect();
    let granted: Vec<u64> = tftp
        .iter()
        .filter(|(p, t)| p.src == MTU_RAMBOOT_IP && matches!(t, TftpPacket::Oack { .. }))
        .filter_map(|(_, t)| t.option("blksize").and_then(|b| b.parse().ok()))
        .collect();
    assert!(asked.iter().any(|&b| b > MTU_BLKSIZE), "the ROM asked for blksize {asked:?}");
    assert!(!granted.is_empty() && granted.iter().all(|&b| b <= MTU_BLKSIZE), "granted blksize {granted:?}");
    let largest = tftp
        .iter()
        .filter_map(|(p, t)| match t {
            TftpPacket::Data { data, .. } if p.src == MTU_RAMBOOT_IP => Some(data.len() as u64),
            _ => None,
        })
        .max();
    assert!(largest.is_some_and(|n| n <= MTU_BLKSIZE), "the largest DATA block: {largest:?}");
    // Nothing was fragmented on the way (the rule counted only the ping's), and the
    // chained iPXE fetched the script.
    assert_eq!(after_boot, after_ping, "fragments crossed the bridge during the boot");
    let scripts = script_requests(&packets);
    let wanted = format!("GET /boot.ipxe?mac={MTU_MAC}");
    assert!(scripts.iter().any(|(_, target)| *target == wanted), "no {wanted}: {scripts:?}");
    eprintln!(
        "{TEST}: ping 1028 B answered, 1478 B not ({} fragments dropped); the ROM asked blksize {asked:?}, granted \
         {granted:?}; {} whole transfer(s), undionly.kpxe loaded {loaded_at:.1?} and the script fetched \
         {script_at:.1?} after QEMU started; test took {:.1?}",
        after_ping - before,
        reads.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 3. TFTP from a secondary address

const PRIMARY_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 1);
const SECONDARY_IP: Ipv4Addr = Ipv4Addr::new(10, 79, 0, 9);
const SECONDARY_MAC: &str = "52:54:00:79:79:01";

#[test]
fn a_bios_rom_loads_ipxe_over_tftp_from_a_secondary_server_address() {
    const TEST: &str = "a_bios_rom_loads_ipxe_over_tftp_from_a_secondary_server_address";
    // The bridge's primary address first: the kernel's choice of source towards the VM.
    let addresses = [format!("{PRIMARY_IP}/24"), format!("{SECONDARY_IP}/24")];
    let more = [("undionly.kpxe (ipxe)", UNDIONLY)];
    let Some((mut lab, ns, bridge, tap)) = lab_with_bridge(TEST, &more, 'y', &addresses) else { return };
    let started = Instant::now();
    let undionly = serve_ipxe_binary(&lab, UNDIONLY, "undionly.kpxe");
    let (tcpdump, pcap) = capture(&mut lab, &ns, &bridge, "udp or tcp port 8080");
    // ramboot is the authoritative DHCP server and names the secondary address as
    // next-server: the VM's ROM iPXE is not ramboot's build, so it is told to load
    // undionly.kpxe from there first. TFTP listens on every address: answering from
    // the one asked is ramboot's job, not the listener's.
    let config = format!(
        "interface: {bridge}\nserver_address: {SECONDARY_IP}\nipv6_ra: true\n\
         http: {{listen: \"{SECONDARY_IP}:8080\"}}\ntftp: {{listen: \"0.0.0.0:69\"}}\n\
         dhcp:\n  subnet: 10.79.0.0/24\n  range: [10.79.0.50, 10.79.0.90]\n"
    );
    let ramboot = lab.start_ramboot(&ns, &config, "info,tower_http=debug");

    let (console, qemu_log) = (lab.path("console.log"), lab.path("qemu.log"));
    let vm_started = Instant::now();
    let qemu = spawn_pxe_vm(&mut lab, &ns, &tap, SECONDARY_MAC, &console, &qemu_log);
    let logs = [("console", &console), ("qemu", &qemu_log), ("ramboot", &ramboot.log)];
    let context = || logs_context(30, &logs);
    ramboot.wait_tftp_read(&mut lab, qemu, "undionly.kpxe", VM_STEP, context);
    let loaded_at = vm_started.elapsed();
    ramboot.wait_script_served(&mut lab, qemu, SECONDARY_MAC, VM_STEP, context);
    let script_at = vm_started.elapsed();
    let (log, packets) = finish(&mut lab, (&[qemu], tcpdump), &ramboot, &pcap);
    // ramboot's offers named the secondary address as next-server.
    let offers: Vec<Dhcp> =
        dhcp_of(&packets).into_iter().map(|(_, d)| d).filter(|d| d.op == 2 && d.chaddr == SECONDARY_MAC).collect();
    assert!(!offers.is_empty() && offers.iter().all(|d| d.siaddr == SECONDARY_IP), "next-server: {offers:#?}");

    let reads = tftp_reads(&log, "undionly.kpxe");
    let whole = format!("bytes={}", undionly.len());
    assert!(reads.iter().any(|l| l.contains(&whole)), "no whole transfer of undionly.kpxe: {reads:#?}");
    assert!(
        reads.iter().all(|l| field(l, "from") == Some(SECONDARY_IP.to_string().as_str())),
        "sessions' source: {reads:#?}"
    );
    // The wire: the ROM asked the secondary address, and every TFTP packet back to
    // its transfer ports came from it, from a port of the session's own.
    let tftp = tftp_of(&packets);
    let rrqs: Vec<&Packet> =
        tftp.iter().filter(|(p, t)| p.dport == 69 && matches!(t, TftpPacket::Rrq { .. })).map(|(p, _)| p).collect();
    assert!(!rrqs.is_empty(), "no RRQ on the wire");
    assert!(rrqs.iter().all(|p| p.dst == SECONDARY_IP), "RRQs to {:?}", rrqs.iter().map(|p| p.dst).collect::<Vec<_>>());
    let clients: Vec<(Ipv4Addr, u16)> = rrqs.iter().map(|p| (p.src, p.sport)).collect();
    let answers: Vec<&(Packet, TftpPacket)> =
        tftp.iter().filter(|(p, _)| clients.contains(&(p.dst, p.dport))).collect();
    let data = answers.iter().filter(|(_, t)| matches!(t, TftpPacket::Data { .. })).count();
    assert!(data > 0, "no DATA to the ROM on the wire");
    let strays: Vec<String> = answers
        .iter()
        .filter(|(p, _)| p.src != SECONDARY_IP || p.sport == 69)
        .map(|(p, t)| format!("{}:{} > {}:{} {t:?}", p.src, p.sport, p.dst, p.dport))
        .take(5)
        .collect();
    assert!(strays.is_empty(), "TFTP answers not from {SECONDARY_IP} on a transfer port: {strays:#?}");
    let scripts = script_requests(&packets);
    let wanted = format!("GET /boot.ipxe?mac={SECONDARY_MAC}");
    assert!(scripts.iter().any(|(_, target)| *target == wanted), "no {wanted}: {scripts:?}");
    eprintln!(
        "{TEST}: {} RRQ(s) to {SECONDARY_IP}, {data} DATA packets back, all from it; undionly.kpxe loaded \
         {loaded_at:.1?} and the script fetched {script_at:.1?} after QEMU started; test took {:.1?}",
        rrqs.len(),
        started.elapsed()
    );
}

// ---------------------------------------------------------------------------------
// 4. Secure Boot firmware refuses the unsigned iPXE

const SECURE_IP: Ipv4Addr = Ipv4Addr::new(10, 82, 0, 1);
const SECURE_MAC: &str = "52:54:00:82:82:01";

/// The other half of the Secure Boot proof (the signed chain booting to `ready` is
/// `tests/lab_e2e.rs::qemu_secure_boot_signed_chain_boots_into_ram`): the same
/// enforcing firmware, handed ramboot's unsigned `snponly.efi` (a node on the
/// default `boot_chain: ipxe`), downloads it whole over TFTP and refuses to run it.
/// On the way it pins the authoritative offer a UEFI PXE client needs: a plain
/// DHCP offer with the boot file, which it loads without asking port 4011.
#[test]
fn secure_boot_firmware_refuses_unsigned_ipxe() {
    const TEST: &str = "secure_boot_firmware_refuses_unsigned_ipxe";
    let more = [("OVMF Secure Boot (ovmf)", OVMF_SECURE_BOOT), ("snponly.efi (ipxe)", SNPONLY)];
    let Some((mut lab, ns, bridge, tap)) = lab_with_bridge(TEST, &more, 'k', &[format!("{SECURE_IP}/24")]) else {
        return;
    };
    let snponly = serve_ipxe_binary(&lab, SNPONLY, "snponly.efi");
    let config = format!(
        "interface: {bridge}\nserver_address: {SECURE_IP}\nipv6_ra: true\n\
         http: {{listen: \"{SECURE_IP}:8080\"}}\ntftp: {{listen: \"{SECURE_IP}:69\"}}\n\
         dhcp:\n  subnet: 10.82.0.0/24\n  range: [10.82.0.50, 10.82.0.90]\n"
    );
    let ramboot = lab.start_ramboot(&ns, &config, "info");
    let (console, qemu_log) = (lab.path("console.log"), lab.path("qemu.log"));
    let qemu = spawn_secure_boot_pxe_vm(&mut lab, &ns, &tap, SECURE_MAC, &console, &qemu_log);
    let logs = [("console", &console), ("qemu", &qemu_log), ("ramboot", &ramboot.log)];
    let context = || logs_context(30, &logs);
    ramboot.wait_tftp_read(&mut lab, qemu, "snponly.efi", VM_STEP, context);
    // EDK2's image verification (DxeImageVerificationLib) denies an image that no
    // key in `db` signed; BdsDxe says so and moves on to the next boot option.
    let refused = || {
        let text = log_text(&console);
        text.lines().find(|l| l.contains("failed to load") && l.contains("Access Denied")).map(str::to_string)
    };
    let line = wait_for(VM_STEP, "the firmware to refuse snponly.efi", refused, context);
    lab.stop(qemu, Duration::from_secs(5));
    let log = lab.stop_ramboot(&ramboot);
    assert!(line.contains("UEFI PXEv4"), "{line}");
    let text = log_text(&console);
    assert!(text.contains("NBP filename is snponly.efi"), "{}", tail(&text, 30));
    assert!(!text.contains("PXE-E16"), "the firmware found no usable offer:\n{}", tail(&text, 30));
    let whole = format!("bytes={}", snponly.len());
    assert!(tftp_reads(&log, "snponly.efi").iter().any(|l| l.contains(&whole)), "{}", tail(&log, 30));
    assert!(!log.contains("boot started"), "no iPXE ran, so no boot started:\n{}", tail(&log, 30));
}
