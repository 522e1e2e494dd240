//! A tgtd whose port another process took is reported as such (so callers retry on
//! fresh ports), our tgtd is stopped, and the process that holds the port is left
//! alone. Needs root and tgt (CI installs it).

use ramboot_lab::harness::{loopback_tgtd, skipped, tgtd_skip_reason};
use ramboot_lab::tgtd::{control_port, Tgtd, TgtdOptions};
use ramboot_lab::LabError;
use std::net::{Ipv4Addr, TcpListener};
use std::process::Command;

fn options(control: u16, port: u16) -> TgtdOptions {
    let log = std::env::temp_dir().join(format!("ramboot-test-tgtd-{control}-{port}.log"));
    TgtdOptions { netns: None, control, host: Ipv4Addr::LOCALHOST.into(), port, log, remove_log: true }
}

fn answers(control: u16) -> bool {
    let show = ["--op", "show", "--mode", "system"];
    Command::new("tgtadm").arg("-C").arg(control.to_string()).args(show).output().is_ok_and(|o| o.status.success())
}

#[test]
fn a_taken_portal_is_reported_and_our_tgtd_stopped() {
    if skipped("a_taken_portal_is_reported_and_our_tgtd_stopped", tgtd_skip_reason()) {
        return;
    }
    let holder = TcpListener::bind("127.0.0.1:0").expect("a loopback port");
    let port = holder.local_addr().expect("its address").port();
    let control = control_port();
    match Tgtd::start(options(control, port)) {
        Err(LabError::PortTaken { what, .. }) => assert!(what.contains(&port.to_string()), "{what}"),
        Err(e) => panic!("expected the portal to be reported as taken, got: {e}"),
        Ok(_) => panic!("tgtd started on a portal another socket holds"),
    }
    assert!(!answers(control), "our tgtd was stopped");
    assert!(holder.local_addr().is_ok(), "the holder keeps its port");
}

#[test]
fn a_taken_control_port_is_reported_and_the_other_tgtd_left_alone() {
    if skipped("a_taken_control_port_is_reported_and_the_other_tgtd_left_alone", tgtd_skip_reason()) {
        return;
    }
    let first = loopback_tgtd();
    let free = TcpListener::bind("127.0.0.1:0").expect("a loopback port").local_addr().expect("its address").port();
    match Tgtd::start(options(first.control, free)) {
        Err(LabError::PortTaken { what, .. }) => assert!(what.contains("control port"), "{what}"),
        Err(e) => panic!("expected the control port to be reported as taken, got: {e}"),
        Ok(_) => panic!("a second tgtd started on a control port the first one holds"),
    }
    assert!(answers(first.control), "the first tgtd still answers on its control port");
}
