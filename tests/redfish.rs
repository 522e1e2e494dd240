//! ramboot's Redfish client against a real BMC: sushy-tools' emulator (basic auth
//! on) in front of a private libvirtd whose QEMU domain sits on the test's bridge
//! (see `ramboot_lab::redfish`).
//!
//! The domain boots from its empty disk only, so a netboot on the bridge is the
//! BMC's doing: powered on plainly it stops at "No bootable device" without a
//! DHCP packet; after the client's one-time PXE override and power on, its iPXE ROM
//! sends DISCOVERs (captured with tcpdump); a PXE cycle boots iPXE again; off is
//! off in libvirt too. A wrong password is Unauthorized, a reset type the BMC does
//! not list is Unsupported, and a BMC nobody answers for is Unreachable within the
//! client's timeouts.
//!
//! Needs root, QEMU with the iPXE ROM, tcpdump, libvirt and sushy-tools (`.ci/run`
//! installs them all); elsewhere it skips with a message, in CI it fails.

use ramboot::bmc::{BmcError, BootTarget, Credentials, PowerCommand, PowerState, Redfish, ResetKind, Timeouts};
use ramboot_lab::harness::{read_lossy, tail, wait_for};
use ramboot_lab::pcap::{capture, read_pcap, TCPDUMP};
use ramboot_lab::redfish::{in_netns, lab_with_bmc_bridge, Bmc, Vm};
use ramboot_lab::wire::dhcp_of;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

const USER: &str = "ramboot";
const PASSWORD: &str = "bmc-Pa55word";
const MAC: &str = "52:54:00:72:66:01";
const BMC_ADDR: &str = "10.214.0.1";

/// DHCP DISCOVERs from `mac` in a capture so far.
fn discovers(pcap: &Path, mac: &str) -> usize {
    dhcp_of(&read_pcap(pcap)).iter().filter(|(_, d)| d.op == 1 && d.chaddr == mac && d.kind() == "DISCOVER").count()
}

/// How often the console shows iPXE starting (once per boot through the NIC).
fn ipxe_starts(console: &Path) -> usize {
    read_lossy(console).matches("iPXE initialising devices").count()
}

#[test]
fn redfish_power_and_one_time_pxe_against_sushy_and_libvirt() {
    let test = "redfish_power_and_one_time_pxe_against_sushy_and_libvirt";
    let Some((mut lab, ns, bridge)) = lab_with_bmc_bridge(test, &[("tcpdump", TCPDUMP)], 'F', BMC_ADDR) else {
        return;
    };
    let started = Instant::now();
    let pid = std::process::id();
    let (_tcpdump, pcap) = capture(&mut lab, &ns, &bridge, "udp port 67 or udp port 68");

    let vm = Vm {
        name: format!("rb{pid}"),
        mac: MAC.into(),
        bridge: bridge.clone(),
        tap: format!("R{pid}t0"),
        memory_mb: 128,
    };
    let listen: SocketAddr = format!("{BMC_ADDR}:8000").parse().unwrap();
    let bmc = Bmc::start(&ns, listen, (USER, PASSWORD), &[vm], &lab.path("sushy")).unwrap_or_else(|e| panic!("{e}"));
    let url = bmc.system_url(0);
    let console = bmc.domains[0].console.clone();
    let context =
        || format!("console:\n{}\nsushy:\n{}", tail(&read_lossy(&console), 20), tail(&read_lossy(bmc.sushy.log()), 20));
    eprintln!("BMC up in {:.1}s: {url}", started.elapsed().as_secs_f64());

    // The client runs in the namespace (sushy listens on the bridge's address there).
    in_netns(&ns, || {
        let client = Redfish::new(&url, Credentials::new(USER, PASSWORD), Timeouts::default()).unwrap();
        assert!(!format!("{client:?}").contains(PASSWORD));

        // Off, booting from disk.
        assert_eq!(client.power_state().unwrap(), PowerState::Off);
        assert_eq!(client.boot_override().unwrap().target, BootTarget::Hdd);

        // Plain power on: SeaBIOS tries the empty disk only, no DHCP.
        assert_eq!(client.power(PowerCommand::On).unwrap(), PowerState::On);
        assert!(bmc.domain_running(0).unwrap());
        wait_for(
            Duration::from_secs(60),
            "SeaBIOS to give up on the disk",
            || read_lossy(&console).contains("No bootable device").then_some(()),
            context,
        );
        assert_eq!(ipxe_starts(&console), 0, "{}", context());
        assert_eq!(discovers(&pcap, MAC), 0, "no netboot without the override");
        assert_eq!(client.power(PowerCommand::Off).unwrap(), PowerState::Off);
        assert!(!bmc.domain_running(0).unwrap(), "ForceOff stops the domain");

        // The one-time PXE override, then on: the NIC's iPXE asks for an address.
        client.set_boot_once(BootTarget::Pxe).unwrap();
        let boot = client.boot_override().unwrap();
        assert_eq!(boot.target, BootTarget::Pxe);
        eprintln!("sushy reports the override as {:?} (its libvirt driver keeps every override)", boot.enabled);
        let on_at = Instant::now();
        assert_eq!(client.power(PowerCommand::On).unwrap(), PowerState::On);
        wait_for(
            Duration::from_secs(90),
            "a DHCP DISCOVER from the VM",
            || (discovers(&pcap, MAC) > 0).then_some(()),
            context,
        );
        eprintln!("netboot seen {:.1}s after power on", on_at.elapsed().as_secs_f64());
        assert_eq!(client.power_state().unwrap(), PowerState::On);

        // A PXE cycle of a running node: it restarts (ForceRestart) and boots iPXE again.
        let before = ipxe_starts(&console);
        assert!(before >= 1, "{}", context());
        client.cycle_with_pxe().unwrap();
        wait_for(
            Duration::from_secs(60),
            "iPXE after the PXE cycle",
            || (ipxe_starts(&console) > before).then_some(()),
            context,
        );

        // Off is off.
        assert_eq!(client.power(PowerCommand::Off).unwrap(), PowerState::Off);
        assert!(!bmc.domain_running(0).unwrap());
        assert_eq!(client.power(PowerCommand::Status).unwrap(), PowerState::Off);

        // A reset type the BMC does not list is refused before it is sent.
        let e = client.reset(ResetKind::PowerCycle).unwrap_err();
        assert!(matches!(e, BmcError::Unsupported { .. }), "{e:?}");

        // Wrong password: the BMC really checks.
        let wrong = Redfish::new(&url, Credentials::new(USER, "not-the-password"), Timeouts::default()).unwrap();
        let e = wrong.power_state().unwrap_err();
        assert!(matches!(e, BmcError::Unauthorized { status: 401, .. }), "{e:?}");
        assert!(!format!("{e} {e:?}").contains("not-the-password"), "{e:?}");
        eprintln!("wrong password: {e}");

        // Nobody at that address (no ARP answer) or nothing on that port.
        let timeouts = Timeouts { attempts: 2, ..Timeouts::default() };
        let bound = timeouts.connect * timeouts.attempts + Duration::from_secs(3);
        for (what, system) in [
            ("an absent host", "http://10.214.0.99:8000/redfish/v1/Systems/x"),
            ("a closed port", "http://10.214.0.1:8001/redfish/v1/Systems/x"),
        ] {
            let absent = Redfish::new(system, Credentials::new(USER, PASSWORD), timeouts).unwrap();
            let asked = Instant::now();
            let e = absent.power_state().unwrap_err();
            let took = asked.elapsed();
            assert!(matches!(e, BmcError::Unreachable { .. }), "{what}: {e:?}");
            assert!(took < bound, "{what}: {took:?} for {e}");
            assert!(!format!("{e:?}").contains(PASSWORD));
            eprintln!("{what}: {e} ({:.1}s)", took.as_secs_f64());
        }
    })
    .unwrap_or_else(|e| panic!("{e}"));
    eprintln!("done in {:.1}s", started.elapsed().as_secs_f64());
}

/// A BMC serving https with a self-signed certificate, as real ones do: refused
/// until pinned (the refusal names the fingerprint to check on the BMC), trusted
/// once pinned, refused again when the certificate is not the pinned one.
#[test]
fn an_https_bmc_is_trusted_only_once_its_certificate_is_pinned() {
    let test = "an_https_bmc_is_trusted_only_once_its_certificate_is_pinned";
    let Some((lab, ns, bridge)) = lab_with_bmc_bridge(test, &[("openssl", &["/usr/bin/openssl"])], 'S', BMC_ADDR)
    else {
        return;
    };
    let pid = std::process::id();
    let vm = Vm { name: format!("rbs{pid}"), mac: MAC.into(), bridge, tap: format!("S{pid}t0"), memory_mb: 128 };
    let listen: SocketAddr = format!("{BMC_ADDR}:8443").parse().unwrap();
    let (bmc, fingerprint) =
        Bmc::start_tls(&ns, listen, (USER, PASSWORD), &[vm], &lab.path("sushy")).unwrap_or_else(|e| panic!("{e}"));
    let url = bmc.system_url(0);
    assert!(url.starts_with("https://"), "{url}");
    let creds = || Credentials::new(USER, PASSWORD);
    in_netns(&ns, || {
        let unpinned = Redfish::new(&url, creds(), Timeouts::default()).unwrap();
        let err = unpinned.power_state().unwrap_err();
        assert!(matches!(err, BmcError::Tls { .. }), "{err}");
        let message = err.to_string();
        assert!(message.contains(&fingerprint) && message.contains("pin it"), "{message}");
        assert!(!message.contains(PASSWORD));

        let pinned = Redfish::pinned(&url, Some(&fingerprint.to_uppercase()), creds(), Timeouts::default()).unwrap();
        assert_eq!(pinned.power_state().unwrap(), PowerState::Off, "trusted once pinned");

        let other = "00:".repeat(31) + "00";
        let wrong = Redfish::pinned(&url, Some(&other), creds(), Timeouts::default()).unwrap();
        let err = wrong.power_state().unwrap_err();
        assert!(matches!(err, BmcError::Tls { .. }) && err.to_string().contains("not the pinned"), "{err}");
    })
    .unwrap_or_else(|e| panic!("{e}"));
    drop(bmc);
    drop(lab);
}
