//! The dynamic address pool: which address each MAC holds, and until when.
//!
//! Pure state with no clock (`now` is passed in, as Unix seconds) and no I/O. The
//! socket layer rebuilds it from the store at start and persists every grant before
//! acknowledging it, so this index is a cache of the durable lease table, never ahead
//! of it on disk for an acknowledged lease.

use crate::node::MacAddr;
use std::collections::{BTreeMap, HashMap};
use std::net::Ipv4Addr;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BindingKind {
    /// Offered, not yet requested: held briefly so two clients never get one offer.
    Offered,
    /// Acknowledged and persisted.
    Leased,
    /// Declined by a client (address conflict): kept away from everyone until expiry.
    Quarantined,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Binding {
    pub mac: MacAddr,
    pub kind: BindingKind,
    pub expires_at: u64,
}

#[derive(Debug, Clone)]
pub struct LeasePool {
    start: u32,
    end: u32,
    by_ip: BTreeMap<u32, Binding>,
    by_mac: HashMap<MacAddr, u32>,
    /// Where the next search for a free address starts: spreads allocations and
    /// keeps the common case (a fresh pool) O(1).
    cursor: u32,
}

impl LeasePool {
    pub fn new(start: Ipv4Addr, end: Ipv4Addr) -> Self {
        let (start, end) = (u32::from(start), u32::from(end));
        LeasePool { start, end, by_ip: BTreeMap::new(), by_mac: HashMap::new(), cursor: start }
    }

    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        (self.start..=self.end).contains(&u32::from(ip))
    }

    pub fn binding(&self, ip: Ipv4Addr) -> Option<&Binding> {
        self.by_ip.get(&u32::from(ip))
    }

    /// The address `mac` holds (offered or leased), if still live at `now`.
    pub fn held_by(&self, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        let ip = *self.by_mac.get(&mac)?;
        let b = self.by_ip.get(&ip)?;
        (b.expires_at > now && b.kind != BindingKind::Quarantined).then_some(Ipv4Addr::from(ip))
    }

    /// Restore a persisted lease (at start-up).
    pub fn restore(&mut self, ip: Ipv4Addr, mac: MacAddr, expires_at: u64) {
        if self.contains(ip) {
            self.bind(u32::from(ip), Binding { mac, kind: BindingKind::Leased, expires_at });
        }
    }

    fn is_free(&self, ip: u32, mac: MacAddr, now: u64) -> bool {
        match self.by_ip.get(&ip) {
            None => true,
            Some(b) => b.expires_at <= now || (b.mac == mac && b.kind != BindingKind::Quarantined),
        }
    }

    fn bind(&mut self, ip: u32, binding: Binding) {
        if let Some(old_ip) = self.by_mac.insert(binding.mac, ip) {
            if old_ip != ip
                && self.by_ip.get(&old_ip).is_some_and(|b| b.mac == binding.mac && b.kind != BindingKind::Quarantined)
            {
                self.by_ip.remove(&old_ip);
            }
        }
        if let Some(previous) = self.by_ip.insert(ip, binding) {
            if previous.mac != binding.mac && self.by_mac.get(&previous.mac) == Some(&ip) {
                self.by_mac.remove(&previous.mac);
            }
        }
    }

    /// Choose an address for a DISCOVER and hold it until `now + hold_secs`.
    ///
    /// Preference: the address the MAC already holds, then the one it asked for
    /// (option 50) if free, then the next free address after the cursor.
    pub fn offer(&mut self, mac: MacAddr, requested: Option<Ipv4Addr>, now: u64, hold_secs: u64) -> Option<Ipv4Addr> {
        let chosen = self
            .held_by(mac, now)
            .map(u32::from)
            .or_else(|| {
                requested.map(u32::from).filter(|&ip| self.contains(Ipv4Addr::from(ip)) && self.is_free(ip, mac, now))
            })
            .or_else(|| self.next_free(mac, now))?;
        let expires_at = match self.by_ip.get(&chosen) {
            // Never shorten a live lease because the client asked again.
            Some(b) if b.mac == mac && b.kind == BindingKind::Leased && b.expires_at > now => b.expires_at,
            _ => now + hold_secs,
        };
        let kind = match self.by_ip.get(&chosen) {
            Some(b) if b.mac == mac && b.kind == BindingKind::Leased && b.expires_at > now => BindingKind::Leased,
            _ => BindingKind::Offered,
        };
        self.bind(chosen, Binding { mac, kind, expires_at });
        Some(Ipv4Addr::from(chosen))
    }

    fn next_free(&mut self, mac: MacAddr, now: u64) -> Option<u32> {
        let size = u64::from(self.end - self.start) + 1;
        let mut ip = self.cursor.clamp(self.start, self.end);
        for _ in 0..size {
            if self.is_free(ip, mac, now) {
                self.cursor = if ip == self.end { self.start } else { ip + 1 };
                return Some(ip);
            }
            ip = if ip == self.end { self.start } else { ip + 1 };
        }
        None
    }

    /// May `mac` be granted `ip` (a REQUEST)? True when the address is in the pool
    /// and either free or already bound to this MAC.
    pub fn can_grant(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        self.contains(ip) && self.is_free(u32::from(ip), mac, now)
    }

    /// Record a grant. The caller persists it before acknowledging, and calls
    /// [`LeasePool::forget`] if persisting fails.
    pub fn grant(&mut self, mac: MacAddr, ip: Ipv4Addr, expires_at: u64) {
        self.bind(u32::from(ip), Binding { mac, kind: BindingKind::Leased, expires_at });
    }

    /// Drop whatever `mac` holds at `ip` (RELEASE, or a grant that failed to persist).
    pub fn forget(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        let ip = u32::from(ip);
        if self.by_ip.get(&ip).is_some_and(|b| b.mac == mac) {
            self.by_ip.remove(&ip);
            if self.by_mac.get(&mac) == Some(&ip) {
                self.by_mac.remove(&mac);
            }
        }
    }

    /// Keep `ip` away from every client until `until` (DECLINE: someone else uses it).
    pub fn quarantine(&mut self, mac: MacAddr, ip: Ipv4Addr, until: u64) {
        if self.contains(ip) {
            let ip = u32::from(ip);
            if self.by_mac.get(&mac) == Some(&ip) {
                self.by_mac.remove(&mac);
            }
            self.by_ip.insert(ip, Binding { mac, kind: BindingKind::Quarantined, expires_at: until });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool() -> LeasePool {
        LeasePool::new(Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12))
    }
    fn mac(n: u8) -> MacAddr {
        MacAddr([2, 0, 0, 0, 0, n])
    }

    #[test]
    fn same_mac_gets_same_offer_and_pool_exhausts() {
        let mut p = pool();
        let a = p.offer(mac(1), None, 100, 30).unwrap();
        assert_eq!(p.offer(mac(1), None, 101, 30), Some(a));
        let b = p.offer(mac(2), None, 100, 30).unwrap();
        let c = p.offer(mac(3), None, 100, 30).unwrap();
        assert_ne!(a, b);
        assert_ne!(b, c);
        assert_eq!(p.offer(mac(4), None, 100, 30), None, "pool of three is full");
        // Offers lapse: after the hold time the address is free again.
        assert!(p.offer(mac(4), None, 200, 30).is_some());
    }

    #[test]
    fn requested_address_is_honoured_when_free() {
        let mut p = pool();
        let want = Ipv4Addr::new(10, 0, 0, 12);
        assert_eq!(p.offer(mac(1), Some(want), 0, 30), Some(want));
        assert_ne!(p.offer(mac(2), Some(want), 0, 30), Some(want));
    }

    #[test]
    fn leased_address_is_not_granted_to_another_mac() {
        let mut p = pool();
        let ip = p.offer(mac(1), None, 0, 30).unwrap();
        p.grant(mac(1), ip, 3600);
        assert!(!p.can_grant(mac(2), ip, 10));
        assert!(p.can_grant(mac(1), ip, 10));
        assert!(p.can_grant(mac(2), ip, 3600), "expired leases are reusable");
    }

    #[test]
    fn quarantine_keeps_everyone_out_until_expiry() {
        let mut p = pool();
        let ip = p.offer(mac(1), None, 0, 30).unwrap();
        p.quarantine(mac(1), ip, 500);
        assert!(!p.can_grant(mac(1), ip, 10));
        assert!(!p.can_grant(mac(2), ip, 10));
        assert_ne!(p.offer(mac(1), None, 10, 30), Some(ip));
        assert!(p.can_grant(mac(2), ip, 500));
    }

    proptest! {
        /// Whatever sequence of operations runs, no address is live for two MACs and
        /// no MAC holds two live addresses.
        #[test]
        fn never_two_owners(ops in proptest::collection::vec((0u8..6, 0u8..4, 0u64..50), 1..200)) {
            let mut p = pool();
            let mut now = 0u64;
            for (m, op, dt) in ops {
                now += dt;
                match op {
                    0 => { p.offer(mac(m), None, now, 30); }
                    1 => if let Some(ip) = p.held_by(mac(m), now) {
                        if p.can_grant(mac(m), ip, now) { p.grant(mac(m), ip, now + 100); }
                    },
                    2 => if let Some(ip) = p.held_by(mac(m), now) { p.forget(mac(m), ip); },
                    _ => if let Some(ip) = p.held_by(mac(m), now) { p.quarantine(mac(m), ip, now + 40); },
                }
                let mut owners = HashMap::new();
                for m in 0..6 {
                    if let Some(ip) = p.held_by(mac(m), now) {
                        prop_assert!(p.contains(ip));
                        prop_assert!(owners.insert(ip, m).is_none(), "{ip} held twice");
                    }
                }
            }
        }
    }
}
