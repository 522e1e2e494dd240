//! A lease commit on a full disk: the store's error says so, the DHCP pool keeps the
//! binding the failed grant replaced (so the address is never offered to a second
//! client), reads go on working, and once there is room again the next commit
//! succeeds without a restart, with nothing lost.
//!
//! The fault is real: the database lives on a small tmpfs this test mounts, and a
//! filler file takes every free byte. The DHCP side is the decision core the
//! server's decider runs (`decide` + `Leases::undo`, as `dhcp::io` calls them on a
//! failed batch) against the real store. Needs root (mount); elsewhere it skips
//! with a message, CI fails instead.

use dhcproto::v4::{DhcpOption, Message, MessageType};
use dhcproto::{Decodable, Encodable};
use ramboot::store::{EventKind, LeaseOp, LeaseState, Store, StoreError, SyncLeaseWriter, Taken, WriteRefused};
use ramboot_core::dhcp::decide::{decide, Arrival, Decision, Hosts, Inbound, LeaseGrant, Leases, Port};
use ramboot_core::dhcp::policy::{default_boot_files, DhcpMode, DhcpPolicy, SubnetConfig, UnknownClients};
use ramboot_core::dhcp::pool::BindingKind;
use ramboot_core::node::MacAddr;
use ramboot_lab::harness::skipped;
use ramboot_lab::tmpfs::Tmpfs;
use std::io::Write;
use std::net::Ipv4Addr;
use std::path::Path;
use std::time::Duration;

const SERVER: Ipv4Addr = Ipv4Addr::new(10, 0, 0, 1);

/// Take every free byte of the file system at `path` (bounded: stops at ENOSPC or
/// after 64 MiB, far more than the tmpfs holds).
fn fill(path: &Path) {
    let mut f = std::fs::File::create(path).unwrap();
    let chunk = vec![0u8; 4096];
    for _ in 0..(64 << 20) / chunk.len() {
        if let Err(e) = f.write_all(&chunk).and_then(|()| f.sync_data()) {
            assert_eq!(e.raw_os_error(), Some(nix::libc::ENOSPC), "filling: {e}");
            return;
        }
    }
    panic!("{} never filled up", path.display());
}

fn policy() -> DhcpPolicy {
    DhcpPolicy {
        mode: DhcpMode::Authoritative,
        tftp_server: SERVER,
        boot_url: "http://10.0.0.1:8080".into(),
        boot_files: default_boot_files(),
        signed_boot_files: ramboot::config::default_signed_boot_files(),
        boot_chain: Default::default(),
        // Three addresses: when the others are taken, nothing is left to give away.
        subnets: vec![SubnetConfig {
            net: "10.0.0.0/24".parse().unwrap(),
            ranges: vec![(Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12))],
            router: Some(SERVER),
            dns: vec![],
            domain: None,
            lease_time: Duration::from_secs(600),
            unknown_clients: UnknownClients::Discovery,
        }],
        trusted_relays: vec![],
        offer_hold_secs: 60,
        quarantine_secs: 600,
        ipxe: Default::default(),
        share: Default::default(),
    }
}

fn mac(n: u8) -> [u8; 6] {
    [2, 0, 0, 0, 0, n]
}

fn message(client: u8, kind: MessageType, opts: &[DhcpOption]) -> Message {
    let any = Ipv4Addr::UNSPECIFIED;
    let mut msg = Message::new_with_id(0x4242_0000 + u32::from(client), any, any, any, any, &mac(client));
    msg.opts_mut().insert(DhcpOption::MessageType(kind));
    for o in opts {
        msg.opts_mut().insert(o.clone());
    }
    msg
}

/// The decider: the pools, restored from the store as `dhcp::io::serve` does.
struct Decider {
    policy: DhcpPolicy,
    leases: Leases,
}

impl Decider {
    async fn restored(store: &Store, now: u64) -> Decider {
        let policy = policy();
        let mut leases = Leases::new(&policy);
        for b in store.live_bindings(now).await.unwrap() {
            assert!(leases.restore(&policy, b.ip, b.mac, b.expires_at, BindingKind::Leased));
        }
        Decider { policy, leases }
    }

    fn run(&mut self, msg: &Message, now: u64) -> Decision {
        let raw = msg.to_vec().unwrap();
        let msg = Message::decode(&mut dhcproto::Decoder::new(&raw)).unwrap();
        let arrival = Arrival { local_addr: SERVER, peer: Ipv4Addr::UNSPECIFIED, port: Port::Dhcp };
        decide(&Inbound { msg: &msg, raw: &raw, arrival }, &self.policy, &mut self.leases, &Hosts::default(), now)
    }

    /// DISCOVER: the address offered, if any.
    fn offer(&mut self, client: u8, now: u64) -> Option<Ipv4Addr> {
        match self.run(&message(client, MessageType::Discover, &[]), now) {
            Decision::Reply { reply, .. } => Some(reply.yiaddr()),
            _ => None,
        }
    }

    /// REQUEST in SELECTING for `ip`: the grant of an ACK, or the reply kind otherwise.
    fn request(&mut self, client: u8, ip: Ipv4Addr, now: u64) -> Result<LeaseGrant, Option<MessageType>> {
        let opts = [DhcpOption::RequestedIpAddress(ip), DhcpOption::ServerIdentifier(SERVER)];
        match self.run(&message(client, MessageType::Request, &opts), now) {
            Decision::Reply { grant: Some(g), .. } => Ok(g),
            Decision::Reply { reply, .. } => Err(reply.opts().msg_type()),
            _ => Err(None),
        }
    }

    /// REQUEST in RENEWING (ciaddr set, unicast).
    fn renew(&mut self, client: u8, ip: Ipv4Addr, now: u64) -> LeaseGrant {
        let mut msg = message(client, MessageType::Request, &[]);
        msg.set_ciaddr(ip);
        match self.run(&msg, now) {
            Decision::Reply { grant: Some(g), .. } => g,
            other => panic!("renewal of {ip} not granted: {other:?}"),
        }
    }
}

fn op(g: &LeaseGrant) -> LeaseOp {
    LeaseOp::Grant {
        mac: g.mac,
        ip: g.ip,
        expires_at: g.expires_at,
        netboot: false,
        known: false,
        arch: None,
        uuid: None,
    }
}

/// How the test commits: as `dhcp::io` does on SQLite (the synchronous writer on a
/// thread of its own), or through the pool (`Store::commit_dhcp`, PostgreSQL's way).
struct Committer {
    store: Store,
    writer: Option<SyncLeaseWriter>,
}

impl Committer {
    async fn commit(&mut self, ops: &[LeaseOp], now_ms: i64) -> Result<Vec<Taken>, StoreError> {
        match &mut self.writer {
            Some(writer) => self.store.commit_dhcp_sync(writer, ops, now_ms),
            None => self.store.commit_dhcp(ops, now_ms).await,
        }
    }
}

#[tokio::test]
async fn a_lease_commit_on_a_full_disk_fails_clearly_keeps_the_binding_and_recovers() {
    full_disk("a_lease_commit_on_a_full_disk_fails_clearly_keeps_the_binding_and_recovers", true).await;
}

#[tokio::test]
async fn a_pool_lease_commit_on_a_full_disk_fails_clearly_keeps_the_binding_and_recovers() {
    full_disk("a_pool_lease_commit_on_a_full_disk_fails_clearly_keeps_the_binding_and_recovers", false).await;
}

async fn full_disk(test: &str, sync_writer: bool) {
    let not_root = (!nix::unistd::geteuid().is_root()).then_some("needs root (mounts a tmpfs)");
    if skipped(test, not_root) {
        return;
    }
    let fs = Tmpfs::mount("2m");
    let store = Store::open(&format!("sqlite://{}", fs.path("ramboot.db").display())).await.unwrap();
    let writer = if sync_writer { Some(store.sync_lease_writer().unwrap().expect("a SQLite writer")) } else { None };
    let mut committer = Committer { store: store.clone(), writer };
    let mut now = 1_000u64;
    let mut d = Decider::restored(&store, now).await;

    // Client 1 gets a lease, durably.
    let ip = d.offer(1, now).expect("an offer");
    let first = d.request(1, ip, now).expect("an ACK");
    committer.commit(&[op(&first)], 1).await.unwrap();

    // The disk fills up. Client 1 renews: the commit fails, and says why.
    fill(&fs.path("filler"));
    now += 300;
    let renewal = d.renew(1, ip, now);
    let err = committer.commit(&[op(&renewal)], 2).await.expect_err("a commit on a full disk");
    assert!(matches!(err, StoreError::Unwritable { reason: WriteRefused::DiskFull, .. }), "{err:?}");
    assert!(err.to_string().starts_with("database write refused: disk full"), "{err}");
    // What `dhcp::io` does with a failed batch: no ACK, the pool rolled back.
    d.leases.undo(&d.policy, &renewal.undo);

    // The pool still gives the address to client 1 only, until its stored expiry.
    let binding = *d.leases.pool(0).unwrap().binding(ip).expect("the binding is kept, not forgotten");
    assert_eq!((binding.mac, binding.kind, binding.expires_at), (MacAddr(mac(1)), BindingKind::Leased, 1_600));
    assert_eq!(d.request(2, ip, now).unwrap_err(), Some(MessageType::Nak), "a second client asking for it");
    let others: Vec<_> = (2..=5).filter_map(|c| d.offer(c, now)).collect();
    assert_eq!(others.len(), 2, "the two other addresses, then the pool is exhausted: {others:?}");
    assert!(!others.contains(&ip), "{ip} offered to a second client: {others:?}");

    // Reads still work on the full disk, and the stored lease is intact.
    let stored = store.live_bindings(now).await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!((stored[0].ip, stored[0].mac, stored[0].expires_at), (ip, MacAddr(mac(1)), 1_600));

    // Room again: the client's next renewal commits, with no restart.
    std::fs::remove_file(fs.path("filler")).unwrap();
    now += 10;
    let renewal = d.renew(1, ip, now);
    committer.commit(&[op(&renewal)], 3).await.expect("the first commit after the disk has room");
    let stored = store.leases().await.unwrap();
    assert_eq!(stored.len(), 1, "{stored:?}");
    assert_eq!((stored[0].ip, stored[0].expires_at, stored[0].state), (ip, now + 600, LeaseState::Active));

    // And a restart (the pool rebuilt from the store) agrees.
    let mut again = Decider::restored(&store, now).await;
    assert_eq!(again.request(2, ip, now).unwrap_err(), Some(MessageType::Nak));
    drop(committer);
    store.close().await;
}

/// The HTTP tier's writes (events, scripts, hellos) share group commits on a
/// connection of the group's own: on a full disk such a write is refused as
/// such, and once there is room the next one commits on the same store.
#[tokio::test]
async fn a_grouped_write_on_a_full_disk_fails_clearly_and_the_next_one_commits() {
    let test = "a_grouped_write_on_a_full_disk_fails_clearly_and_the_next_one_commits";
    let not_root = (!nix::unistd::geteuid().is_root()).then_some("needs root (mounts a tmpfs)");
    if skipped(test, not_root) {
        return;
    }
    let fs = Tmpfs::mount("2m");
    let store = Store::open(&format!("sqlite://{}", fs.path("ramboot.db").display())).await.unwrap();
    let node = store.ensure_node(MacAddr(mac(1)), 1).await.unwrap();
    store.add_event(node.id, None, EventKind::Info, "before", 2).await.unwrap();

    fill(&fs.path("filler"));
    // Larger than any free page the WAL may still hold, so the write must grow it.
    let big = "x".repeat(256 * 1024);
    let err = store.add_event(node.id, None, EventKind::Info, &big, 3).await.expect_err("a write on a full disk");
    assert!(matches!(err, StoreError::Unwritable { reason: WriteRefused::DiskFull, .. }), "{err:?}");

    std::fs::remove_file(fs.path("filler")).unwrap();
    store.add_event(node.id, None, EventKind::Info, "after", 4).await.expect("the first write after the disk has room");
    let messages: Vec<String> = store.events(node.id, 0, 100).await.unwrap().into_iter().map(|e| e.message).collect();
    assert!(messages.contains(&"before".to_string()) && messages.contains(&"after".to_string()), "{messages:?}");
    assert!(!messages.iter().any(|m| m.starts_with('x')), "the refused write left nothing");
    store.close().await;
}
