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
    /// Dynamic ranges, inclusive, sorted and disjoint.
    ranges: Vec<(u32, u32)>,
    by_ip: BTreeMap<u32, Binding>,
    by_mac: HashMap<MacAddr, u32>,
    /// Reserved address → the MAC it belongs to (node inventory). Reserved addresses
    /// may lie outside the dynamic ranges; inside them, nobody else gets them.
    reserved: HashMap<u32, MacAddr>,
    reserved_for: HashMap<MacAddr, u32>,
    /// Where the next search for a free address starts: spreads allocations and
    /// keeps the common case (a fresh pool) O(1).
    cursor: u32,
}

impl LeasePool {
    pub fn new(ranges: &[(Ipv4Addr, Ipv4Addr)]) -> Self {
        let ranges: Vec<(u32, u32)> = ranges.iter().map(|(a, b)| (u32::from(*a), u32::from(*b))).collect();
        let cursor = ranges.first().map_or(0, |r| r.0);
        LeasePool {
            ranges,
            by_ip: BTreeMap::new(),
            by_mac: HashMap::new(),
            reserved: HashMap::new(),
            reserved_for: HashMap::new(),
            cursor,
        }
    }

    /// Is `ip` in a dynamic range?
    pub fn contains(&self, ip: Ipv4Addr) -> bool {
        let ip = u32::from(ip);
        self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&ip))
    }

    pub fn binding(&self, ip: Ipv4Addr) -> Option<&Binding> {
        self.by_ip.get(&u32::from(ip))
    }

    /// Replace the reservations (the inventory changed).
    pub fn set_reserved(&mut self, reserved: impl IntoIterator<Item = (Ipv4Addr, MacAddr)>) {
        self.reserved = reserved.into_iter().map(|(ip, mac)| (u32::from(ip), mac)).collect();
        self.reserved_for = self.reserved.iter().map(|(ip, mac)| (*mac, *ip)).collect();
        // Someone else's mere offer on a now-reserved address is withdrawn; a lease
        // stays until its holder renews (and is refused) or it expires, so the address
        // is never live for two MACs.
        let withdrawn: Vec<(u32, MacAddr)> = self
            .reserved
            .iter()
            .filter_map(|(ip, owner)| {
                let b = self.by_ip.get(ip)?;
                (b.mac != *owner && b.kind == BindingKind::Offered).then_some((*ip, b.mac))
            })
            .collect();
        for (ip, mac) in withdrawn {
            self.forget(mac, Ipv4Addr::from(ip));
        }
    }

    /// The address `mac` holds (offered or leased), if still live at `now`.
    pub fn held_by(&self, mac: MacAddr, now: u64) -> Option<Ipv4Addr> {
        let ip = *self.by_mac.get(&mac)?;
        let b = self.by_ip.get(&ip)?;
        (b.expires_at > now && b.kind != BindingKind::Quarantined).then_some(Ipv4Addr::from(ip))
    }

    /// Restore a persisted binding (at start-up).
    pub fn restore(&mut self, ip: Ipv4Addr, mac: MacAddr, expires_at: u64, kind: BindingKind) {
        match kind {
            BindingKind::Quarantined => {
                self.by_ip.insert(u32::from(ip), Binding { mac, kind, expires_at });
            }
            _ => self.bind(u32::from(ip), Binding { mac, kind, expires_at }),
        }
    }

    /// May `mac` ever hold `ip`? Its own reservation, or a dynamic address nobody
    /// has reserved.
    fn assignable(&self, ip: u32, mac: MacAddr) -> bool {
        match self.reserved.get(&ip) {
            Some(owner) => *owner == mac,
            None => self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&ip)),
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
    /// Preference: the MAC's reservation (unless someone else still holds it), then
    /// the address it already holds, then the one it asked for (option 50) if free,
    /// then the next free address after the cursor.
    pub fn offer(&mut self, mac: MacAddr, requested: Option<Ipv4Addr>, now: u64, hold_secs: u64) -> Option<Ipv4Addr> {
        let usable = |pool: &Self, ip: u32| pool.assignable(ip, mac) && pool.is_free(ip, mac, now);
        let chosen = self
            .reserved_for
            .get(&mac)
            .copied()
            .filter(|&ip| usable(self, ip))
            .or_else(|| self.held_by(mac, now).map(u32::from).filter(|&ip| usable(self, ip)))
            // RFC 2131 §4.3.1: a returning client gets its previous address if free.
            .or_else(|| self.by_mac.get(&mac).copied().filter(|&ip| usable(self, ip)))
            .or_else(|| requested.map(u32::from).filter(|&ip| usable(self, ip)))
            .or_else(|| self.next_free(mac, now))?;
        let live_lease = self
            .by_ip
            .get(&chosen)
            .filter(|b| b.mac == mac && b.kind == BindingKind::Leased && b.expires_at > now)
            .copied();
        // Never shorten a live lease because the client asked again.
        let binding = live_lease.unwrap_or(Binding { mac, kind: BindingKind::Offered, expires_at: now + hold_secs });
        self.bind(chosen, binding);
        Some(Ipv4Addr::from(chosen))
    }

    fn next_free(&mut self, mac: MacAddr, now: u64) -> Option<u32> {
        let total: u64 = self.ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
        let mut ip = self.cursor;
        for _ in 0..total {
            ip = self.wrap(ip);
            if self.assignable(ip, mac) && self.is_free(ip, mac, now) {
                self.cursor = ip.wrapping_add(1);
                return Some(ip);
            }
            ip = ip.wrapping_add(1);
        }
        None
    }

    /// `ip` if it is in a range, else the start of the next range (cyclically).
    fn wrap(&self, ip: u32) -> u32 {
        if self.ranges.iter().any(|(a, b)| (*a..=*b).contains(&ip)) {
            return ip;
        }
        self.ranges
            .iter()
            .map(|r| r.0)
            .find(|&start| start > ip)
            .or_else(|| self.ranges.first().map(|r| r.0))
            .unwrap_or(ip)
    }

    /// May `mac` be granted `ip` (a REQUEST)? True when the address may be its and is
    /// free or already bound to this MAC. A MAC with a reservation gets only that.
    pub fn can_grant(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        let ip = u32::from(ip);
        if self.reserved_for.get(&mac).is_some_and(|r| *r != ip && self.is_free(*r, mac, now)) {
            // Reservations win: NAK the old dynamic address so the client comes back
            // through DISCOVER and gets its reserved one.
            return false;
        }
        self.assignable(ip, mac) && self.is_free(ip, mac, now)
    }

    /// An INIT-REBOOT about `ip` from `mac` that this pool has no record of: neither
    /// the MAC nor the address is bound, and the address is not reserved.
    pub fn is_unknown(&self, mac: MacAddr, ip: Ipv4Addr, now: u64) -> bool {
        let ip = u32::from(ip);
        self.held_by(mac, now).is_none()
            && self.by_ip.get(&ip).is_none_or(|b| b.expires_at <= now)
            && !self.reserved.contains_key(&ip)
            && !self.reserved_for.contains_key(&mac)
    }

    /// Record a grant. The caller persists it before acknowledging, and calls
    /// [`LeasePool::forget`] if persisting fails.
    pub fn grant(&mut self, mac: MacAddr, ip: Ipv4Addr, expires_at: u64) {
        self.bind(u32::from(ip), Binding { mac, kind: BindingKind::Leased, expires_at });
    }

    /// The client gave `ip` back: free for anyone, but remembered as this MAC's
    /// previous address, which it gets again if still free.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr) {
        if self.by_ip.get(&u32::from(ip)).is_some_and(|b| b.mac == mac) {
            self.by_ip.remove(&u32::from(ip));
        }
    }

    /// Drop whatever `mac` holds at `ip` (a grant that failed to persist, an offer
    /// the client turned down).
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
        let ip = u32::from(ip);
        if self.by_mac.get(&mac) == Some(&ip) {
            self.by_mac.remove(&mac);
        }
        self.by_ip.insert(ip, Binding { mac, kind: BindingKind::Quarantined, expires_at: until });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn pool() -> LeasePool {
        LeasePool::new(&[(Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12))])
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

    #[test]
    fn several_ranges_are_walked_in_order_and_wrap() {
        let mut p = LeasePool::new(&[
            (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 11)),
            (Ipv4Addr::new(10, 0, 0, 50), Ipv4Addr::new(10, 0, 0, 50)),
        ]);
        let got: Vec<_> = (1..=3).map(|m| p.offer(mac(m), None, 0, 30).unwrap().octets()[3]).collect();
        assert_eq!(got, [10, 11, 50]);
        assert_eq!(p.offer(mac(4), None, 0, 30), None);
        assert_eq!(p.offer(mac(4), None, 31, 30).map(|ip| ip.octets()[3]), Some(10), "wraps to the first range");
    }

    #[test]
    fn a_released_address_goes_back_to_its_previous_owner() {
        let mut p = pool();
        let ip = p.offer(mac(1), None, 0, 30).unwrap();
        p.grant(mac(1), ip, 1000);
        p.release(mac(1), ip);
        assert!(p.can_grant(mac(2), ip, 1), "free for others");
        p.offer(mac(3), None, 1, 30);
        assert_eq!(p.offer(mac(1), None, 2, 30), Some(ip), "but the old owner gets it back first");
    }

    #[test]
    fn reservations_win_and_are_kept_from_others() {
        let mut p = pool();
        let reserved = Ipv4Addr::new(10, 0, 0, 11);
        let outside = Ipv4Addr::new(10, 0, 0, 99);
        p.set_reserved([(reserved, mac(1)), (outside, mac(2))]);
        // Nobody else is offered or granted a reserved address.
        let a = p.offer(mac(3), Some(reserved), 0, 30).unwrap();
        assert_ne!(a, reserved);
        assert!(!p.can_grant(mac(3), reserved, 0));
        // The owners get theirs, even outside the dynamic ranges.
        assert_eq!(p.offer(mac(1), None, 0, 30), Some(reserved));
        assert_eq!(p.offer(mac(2), None, 0, 30), Some(outside));
        assert!(p.can_grant(mac(2), outside, 0));
        // A reserved MAC renewing an old dynamic address is refused (then rediscovers).
        p.grant(mac(4), Ipv4Addr::new(10, 0, 0, 12), 1000);
        p.set_reserved([(Ipv4Addr::new(10, 0, 0, 99), mac(4))]);
        assert!(!p.can_grant(mac(4), Ipv4Addr::new(10, 0, 0, 12), 10));
        assert_eq!(p.offer(mac(4), None, 10, 30), Some(Ipv4Addr::new(10, 0, 0, 99)));
    }

    #[test]
    fn reservation_held_by_another_mac_is_not_taken_from_it() {
        let mut p = pool();
        let ip = Ipv4Addr::new(10, 0, 0, 10);
        p.grant(mac(2), ip, 1000);
        p.set_reserved([(ip, mac(1))]);
        // Until mac 2's lease ends, mac 1 gets a dynamic address instead: no IP twice.
        let got = p.offer(mac(1), None, 5, 30).unwrap();
        assert_ne!(got, ip);
        assert_eq!(p.offer(mac(1), None, 1000, 30), Some(ip));
    }

    proptest! {
        /// Whatever sequence of operations runs, no address is live for two MACs and
        /// no MAC holds two live addresses.
        #[test]
        fn never_two_owners(ops in proptest::collection::vec((0u8..6, 0u8..5, 0u64..50), 1..200)) {
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
                    3 => if let Some(ip) = p.held_by(mac(m), now) { p.quarantine(mac(m), ip, now + 40); },
                    _ => p.set_reserved([(Ipv4Addr::new(10, 0, 0, 10 + m % 4), mac(m))]),
                }
                let mut owners = HashMap::new();
                for m in 0..6 {
                    if let Some(ip) = p.held_by(mac(m), now) {
                        prop_assert!((10..=13).contains(&ip.octets()[3]), "{ip} is neither in range nor reserved");
                        prop_assert!(owners.insert(ip, m).is_none(), "{ip} held twice");
                    }
                }
            }
        }
    }
}
