//! `ramboot-sim` against a real `ramboot serve` in network namespaces: 20 simulated
//! nodes boot at once over real DHCP (relayed), TFTP and HTTP, and the server's
//! store shows each of them ready with its own lease. `ramboot-sim` is the lab
//! crate's binary, built (with cargo, once) by `ramboot_lab::bins`.

mod common;

use common::netns::{store_leases, ServeInLab};
use common::{pattern, write_image};
use ramboot::images::{ImageKind, ImageStore};
use ramboot::store::Store;
use ramboot_core::node::NodeState;
use ramboot_lab::harness::{ip_in, log_text, read_lossy, tail, veth, Lab};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const SERVER_IP: &str = "10.67.0.1";
const RELAY_IP: &str = "10.67.0.2";
const NODES: usize = 20;

#[test]
fn twenty_simulated_nodes_boot_to_ready_through_dhcp_tftp_and_http() {
    const TEST: &str = "twenty_simulated_nodes_boot_to_ready_through_dhcp_tftp_and_http";
    let Some(mut lab) = Lab::for_test(TEST, &[]) else { return };
    let started = Instant::now();
    let sim = ramboot_lab::bins::workspace().unwrap_or_else(|e| panic!("building ramboot-sim: {e}")).sim.display();
    let sim = sim.to_string();
    let base = format!("rbm{}", std::process::id());
    let (server_ns, client_ns) = (lab.netns(&format!("{base}s")), lab.netns(&format!("{base}c")));
    let (server_if, client_if) = (format!("{base}s0"), format!("{base}c0"));
    veth((&server_ns, &server_if), (&client_ns, &client_if));
    ip_in(&server_ns, &["addr", "add", &format!("{SERVER_IP}/16"), "dev", &server_if]);
    ip_in(&client_ns, &["addr", "add", &format!("{RELAY_IP}/16"), "dev", &client_if]);
    for (ns, ifname) in [(&server_ns, &server_if), (&client_ns, &client_if)] {
        ip_in(ns, &["link", "set", ifname, "up"]);
        ip_in(ns, &["link", "set", "lo", "up"]);
    }
    // The simulated nodes speak HTTP from their leased addresses (the server binds
    // each boot to its lease): the simulator's host owns the whole range.
    ip_in(&client_ns, &["route", "add", "local", "10.67.1.0/24", "dev", "lo"]);

    // What the server serves: an iPXE binary over TFTP, a stage one and a root image.
    let root = lab.dir().to_path_buf();
    let ipxe_binary = pattern(70_001);
    std::fs::create_dir_all(root.join("ipxe")).unwrap();
    std::fs::write(root.join("ipxe/undionly.kpxe"), &ipxe_binary).unwrap();
    let images = ImageStore::new(root.join("data/images"));
    let (kernel, initrd, rootfs) = (pattern(1 << 20), pattern((2 << 20) + 5), pattern((8 << 20) + 3));
    write_image(
        &images,
        &root,
        "stage1",
        ImageKind::Stage1,
        &[("kernel", "bzImage", &kernel), ("initrd", "cpio.zst", &initrd)],
    );
    write_image(&images, &root, "tiny", ImageKind::Rootfs, &[("rootfs", "squashfs", &rootfs)]);
    std::fs::create_dir_all(root.join("profiles")).unwrap();
    std::fs::write(
        root.join("profiles/tiny.yaml"),
        "name: tiny\nstage1: stage1\nimage: tiny\nkernel_args: [console=ttyS0]\n\
         files:\n  - path: /etc/motd\n    template: \"{{ node.hostname }}\\n\"\n",
    )
    .unwrap();
    // The simulator's nodes all fetch from its one address: more TFTP sessions per
    // address than a real node needs (HTTP's default of 64 covers 20 nodes).
    let config = format!(
        "interface: {server_if}\nserver_address: {SERVER_IP}\nhttp:\n  listen: {SERVER_IP}:8080\n\
         tftp:\n  listen: {SERVER_IP}:69\n  max_sessions_per_source: 64\ndhcp:\n  subnet: 10.67.0.0/16\n  range: [10.67.1.0, 10.67.1.250]\n  \
         router: {SERVER_IP}\ndefault_profile: tiny\n"
    );
    let ramboot = lab.start_ramboot(&server_ns, &config, "info");

    let report_path = lab.path("sim.json");
    let sim_log = lab.path("sim.log");
    let program = [
        sim.as_str(),
        "--server",
        SERVER_IP,
        "--relay",
        RELAY_IP,
        "--nodes",
        &NODES.to_string(),
        "--timeout-secs",
        "120",
        "--json",
        &report_path.display().to_string(),
    ]
    .map(String::from);
    let status = lab.run(&client_ns, &program, &sim_log, Duration::from_secs(180));
    let sim_output = read_lossy(&sim_log);
    let context = || format!("sim:\n{}\nramboot:\n{}", tail(&sim_output, 40), tail(&log_text(&ramboot.log), 40));
    assert!(status.success(), "ramboot-sim failed: {status}\n{}", context());
    eprintln!("{sim_output}");

    // The simulator's own account.
    let report: serde_json::Value = serde_json::from_slice(&std::fs::read(&report_path).unwrap()).unwrap();
    assert_eq!(report["ready"], NODES, "{}", context());
    assert_eq!(report["failed"], 0);
    let results = report["results"].as_array().unwrap();
    assert_eq!(results.len(), NODES);
    for r in results {
        let phases: Vec<&str> = r["phases"].as_array().unwrap().iter().map(|p| p[0].as_str().unwrap()).collect();
        assert_eq!(
            phases,
            ["dhcp_firmware", "tftp", "dhcp_ipxe", "script", "kernel_initrd", "hello_plan", "image", "ready"],
            "{r}"
        );
        assert_eq!(r["tftp_bytes"], ipxe_binary.len(), "each node fetched the whole iPXE binary over TFTP");
        let images = (kernel.len() + initrd.len() + rootfs.len()) as u64;
        assert!(r["http_bytes"].as_u64().unwrap() > images, "{r}");
    }
    for phase in report["phases"].as_array().unwrap() {
        assert!(phase["p50"].as_f64().unwrap() > 0.0, "every phase timed: {phase}");
    }
    assert!(report["all_ready_secs"].as_f64().unwrap() > 0.0);
    // On a private link nothing is lost: no node waits out a DHCP or TFTP timeout.
    assert_eq!(report["retransmits"]["nodes"], 0, "retransmissions {}: {}", report["retransmits"], context());
    assert!(sim_output.contains("20 of 20 nodes ready"), "the summary table is printed");

    // The server's account: every node ready, each with its own lease and its events.
    let log = lab.stop_ramboot(&ramboot);
    assert!(!log.contains(" ERROR "), "ramboot logged errors:\n{}", tail(&log, 40));
    let url = lab.database_url();
    let nodes = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(async {
        let store = Store::open(&url).await.unwrap();
        let nodes = store.nodes().await.unwrap();
        store.close().await;
        nodes
    });
    assert_eq!(nodes.len(), NODES);
    for node in &nodes {
        assert_eq!(node.state, NodeState::Ready, "node {} ({})", node.id, node.mac);
        assert_eq!(node.arch.as_deref(), Some("bios"));
        let serial = node.inventory.as_ref().and_then(|i| i["dmi"]["serial"].as_str()).unwrap_or_default();
        assert!(serial.starts_with("SIM"), "the agent's hello was stored: {:?}", node.inventory);
    }
    let leases: Vec<_> = store_leases(&url).into_iter().filter(|l| l.state.as_str() == "active").collect();
    let macs: BTreeSet<String> = leases.iter().map(|l| l.mac.to_string()).collect();
    let ips: BTreeSet<_> = leases.iter().map(|l| l.ip).collect();
    assert_eq!((macs.len(), ips.len(), leases.len()), (NODES, NODES, NODES), "one lease per node, no IP twice");
    eprintln!("{TEST}: took {:.1?}", started.elapsed());
}
