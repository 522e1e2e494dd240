//! The dynamic address pool: which address each MAC holds, and until when.
//!
//! Pure state with no clock (`now` is passed in, as Unix seconds) and no I/O. The
//! socket layer rebuilds it from the store at start and persists every grant before
//! acknowledging it, so this index is a cache of the durable lease table, never ahead
//! of it on disk for an acknowledged lease. A change that fails to persist is
//! rolled back with the [`Undo`] it returned: the binding it replaced comes back
//! (never simply forgotten, which would free an address the table still gives to
//! its holder).

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

/// What a grant or release replaced, so the change can be rolled back if it fails
/// to persist ([`LeasePool::undo`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Undo {
    ip: u32,
    mac: MacAddr,
    /// What the change left at `ip`; a later decision that changed it wins over the
    /// rollback.
    after: Option<Binding>,
    /// What was at `ip` before.
    before: Option<Binding>,
    /// The MAC's binding elsewhere that the change dropped (it moved addresses).
    moved_from: Option<(u32, Binding)>,
}

impl Undo {
    pub fn ip(&self) -> Ipv4Addr {
        Ipv4Addr::from(self.ip)
    }
}

/// This server's share of every range when several servers allocate from one
/// lease database: the addresses whose number modulo `of` is `index`. A server
/// offers from its own share first and from the rest only when that is full, so
/// two servers rarely offer one address at the same moment (the database still
/// settles the rare race). One server alone has the whole range (`of` = 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Share {
    pub index: u32,
    pub of: u32,
}

impl Share {
    pub const WHOLE: Share = Share { index: 0, of: 1 };

    fn contains(&self, ip: u32) -> bool {
        self.of <= 1 || ip % self.of == self.index
    }
}

impl Default for Share {
    fn default() -> Share {
        Share::WHOLE
    }
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
    share: Share,
}

impl LeasePool {
    pub fn new(ranges: &[(Ipv4Addr, Ipv4Addr)]) -> Self {
        LeasePool::with_share(ranges, Share::WHOLE)
    }

    /// A pool that offers from `share` of its ranges first.
    pub fn with_share(ranges: &[(Ipv4Addr, Ipv4Addr)], share: Share) -> Self {
        let ranges: Vec<(u32, u32)> = ranges.iter().map(|(a, b)| (u32::from(*a), u32::from(*b))).collect();
        let cursor = ranges.first().map_or(0, |r| r.0);
        LeasePool {
            ranges,
            by_ip: BTreeMap::new(),
            by_mac: HashMap::new(),
            reserved: HashMap::new(),
            reserved_for: HashMap::new(),
            cursor,
            share,
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
        // A released address stays the MAC's remembered one (`by_mac`) after someone
        // else took it: that is not holding it.
        (b.mac == mac && b.expires_at > now && b.kind != BindingKind::Quarantined).then_some(Ipv4Addr::from(ip))
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

    /// The next free address after the cursor: in this server's share if any is
    /// free, else anywhere in the ranges.
    fn next_free(&mut self, mac: MacAddr, now: u64) -> Option<u32> {
        let share = self.share;
        self.next_free_where(mac, now, |ip| share.contains(ip)).or_else(|| {
            if share.of > 1 {
                self.next_free_where(mac, now, |_| true)
            } else {
                None
            }
        })
    }

    fn next_free_where(&mut self, mac: MacAddr, now: u64, wanted: impl Fn(u32) -> bool) -> Option<u32> {
        let total: u64 = self.ranges.iter().map(|(a, b)| u64::from(b - a) + 1).sum();
        let mut ip = self.cursor;
        for _ in 0..total {
            ip = self.wrap(ip);
            if wanted(ip) && self.assignable(ip, mac) && self.is_free(ip, mac, now) {
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

    /// Record a grant. The caller persists it before acknowledging, and hands the
    /// returned [`Undo`] to [`LeasePool::undo`] if persisting fails.
    pub fn grant(&mut self, mac: MacAddr, ip: Ipv4Addr, expires_at: u64) -> Undo {
        let ip = u32::from(ip);
        let before = self.by_ip.get(&ip).copied();
        let moved_from = self
            .by_mac
            .get(&mac)
            .filter(|&&old| old != ip)
            .and_then(|&old| Some((old, *self.by_ip.get(&old)?)))
            .filter(|(_, b)| b.mac == mac && b.kind != BindingKind::Quarantined);
        let after = Binding { mac, kind: BindingKind::Leased, expires_at };
        self.bind(ip, after);
        Undo { ip, mac, after: Some(after), before, moved_from }
    }

    /// The client gave `ip` back: free for anyone, but remembered as this MAC's
    /// previous address, which it gets again if still free.
    pub fn release(&mut self, mac: MacAddr, ip: Ipv4Addr) -> Undo {
        let ip = u32::from(ip);
        let before = self.by_ip.get(&ip).copied();
        if before.is_some_and(|b| b.mac == mac) {
            self.by_ip.remove(&ip);
        }
        Undo { ip, mac, after: self.by_ip.get(&ip).copied(), before, moved_from: None }
    }

    /// Roll back a grant or release that failed to persist: the MAC's binding it
    /// replaced comes back (its lease, or the offer it was answering), so an
    /// address the durable table still gives to its holder is never offered to
    /// anyone else. Nothing a later decision did is undone: if the address changed
    /// since, or the moved-from address was taken, that stays. Undo a batch's
    /// changes newest first.
    pub fn undo(&mut self, undo: &Undo) {
        let ip = undo.ip;
        if undo.after == undo.before || self.by_ip.get(&ip) != undo.after.as_ref() {
            return;
        }
        if let Some(after) = undo.after {
            self.by_ip.remove(&ip);
            if self.by_mac.get(&after.mac) == Some(&ip) {
                self.by_mac.remove(&after.mac);
            }
        }
        // Another MAC's binding a grant replaced had expired (or it could not have
        // been granted): free either way, nothing to bring back.
        let before = undo.before.filter(|b| b.mac == undo.mac && b.kind != BindingKind::Quarantined);
        match undo.moved_from {
            Some((old, b)) if !self.by_ip.contains_key(&old) => self.put_back(old, b),
            _ => {
                if let Some(b) = before {
                    self.put_back(ip, b);
                }
            }
        }
    }

    /// Reinstate `b` at `ip` (free now) without evicting anything: if its MAC has
    /// since bound another address, that stays its current one and `b` only keeps
    /// `ip` from everyone else until it expires.
    fn put_back(&mut self, ip: u32, b: Binding) {
        let elsewhere =
            self.by_mac.get(&b.mac).is_some_and(|&c| c != ip && self.by_ip.get(&c).is_some_and(|x| x.mac == b.mac));
        self.by_ip.insert(ip, b);
        if !elsewhere {
            self.by_mac.insert(b.mac, ip);
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
    fn a_server_offers_from_its_share_until_it_is_full() {
        let range = [(Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 15))];
        let mut pools: Vec<LeasePool> =
            (0..2).map(|index| LeasePool::with_share(&range, Share { index, of: 2 })).collect();
        let mac = |n: u8| MacAddr([2, 0, 0, 0, 0, n]);
        let offered: Vec<Vec<u8>> = pools
            .iter_mut()
            .enumerate()
            .map(|(p, pool)| {
                (0..3).map(|n| pool.offer(mac(p as u8 * 10 + n), None, 0, 60).unwrap().octets()[3]).collect()
            })
            .collect();
        // Disjoint halves: no address offered by both servers.
        assert_eq!(offered, [vec![10, 12, 14], vec![11, 13, 15]]);
        // A full share spills over into the rest of the range.
        assert_eq!(pools[0].offer(mac(9), None, 0, 60), Some(Ipv4Addr::new(10, 0, 0, 15)));
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

    #[test]
    fn a_renewal_that_fails_to_persist_keeps_the_lease_it_renewed() {
        let mut p = pool();
        let ip = p.offer(mac(1), None, 0, 30).unwrap();
        p.grant(mac(1), ip, 1000);
        // The renewal's commit fails (disk full): the durable lease still runs to 1000.
        let undo = p.grant(mac(1), ip, 2000);
        p.undo(&undo);
        assert_eq!(p.binding(ip), Some(&Binding { mac: mac(1), kind: BindingKind::Leased, expires_at: 1000 }));
        assert_eq!(p.held_by(mac(1), 500), Some(ip));
        assert!(!p.can_grant(mac(2), ip, 500), "never offered to a second client");
        assert_ne!(p.offer(mac(2), Some(ip), 500, 30), Some(ip));
    }

    #[test]
    fn a_move_that_fails_to_persist_gives_the_old_address_back() {
        let mut p = pool();
        let (old, new) = (Ipv4Addr::new(10, 0, 0, 10), Ipv4Addr::new(10, 0, 0, 12));
        p.grant(mac(1), old, 1000);
        let undo = p.grant(mac(1), new, 1500);
        assert!(p.binding(old).is_none(), "moving drops the old binding");
        p.undo(&undo);
        assert_eq!(p.held_by(mac(1), 10), Some(old));
        assert!(p.binding(new).is_none());
        // If the old address went to someone else meanwhile, that stays theirs.
        let undo = p.grant(mac(1), new, 1500);
        p.grant(mac(2), old, 900);
        p.undo(&undo);
        assert_eq!(p.held_by(mac(2), 10), Some(old));
        assert!(p.held_by(mac(1), 10).is_none());
    }

    #[test]
    fn a_later_decision_wins_over_an_undo() {
        let mut p = pool();
        let ip = Ipv4Addr::new(10, 0, 0, 11);
        p.grant(mac(1), ip, 1000);
        let first = p.grant(mac(1), ip, 2000);
        let second = p.grant(mac(1), ip, 3000);
        // Newest first, as the committer does: both roll back to the durable lease.
        p.undo(&second);
        p.undo(&first);
        assert_eq!(p.binding(ip).map(|b| b.expires_at), Some(1000));
        // A release decided after a failed grant is not undone by the grant's undo.
        let undo = p.grant(mac(1), ip, 2000);
        p.release(mac(1), ip);
        p.undo(&undo);
        assert!(p.binding(ip).is_none());
    }

    /// What a decision can observe of the pool at `now`: who holds what, and who may be granted what.
    fn observable(p: &LeasePool, now: u64) -> Vec<(Option<Ipv4Addr>, Vec<bool>)> {
        (0..6)
            .map(|m| {
                let grantable = (8..=14).map(|o| p.can_grant(mac(m), Ipv4Addr::new(10, 0, 0, o), now)).collect();
                (p.held_by(mac(m), now), grantable)
            })
            .collect()
    }

    proptest! {
        /// A batch of grants and releases that fails to persist, undone newest first,
        /// leaves the pool as it was: every holder keeps its address, nobody gains one.
        #[test]
        fn an_undone_batch_restores_the_pool(
            setup in proptest::collection::vec((0u8..6, 0u8..4, 0u64..20), 0..60),
            batch in proptest::collection::vec((0u8..6, 0u8..7, any::<bool>()), 1..20),
        ) {
            let mut p = pool();
            let mut now = 0u64;
            for (m, op, dt) in setup {
                now += dt;
                match op {
                    0 => { p.offer(mac(m), None, now, 30); }
                    1 => if let Some(ip) = p.held_by(mac(m), now) {
                        if p.can_grant(mac(m), ip, now) { p.grant(mac(m), ip, now + 100); }
                    },
                    2 => if let Some(ip) = p.held_by(mac(m), now) { p.quarantine(mac(m), ip, now + 40); },
                    _ => p.set_reserved([(Ipv4Addr::new(10, 0, 0, 10 + m % 4), mac(m))]),
                }
            }
            let before = observable(&p, now);
            let mut undos = Vec::new();
            for (m, o, release) in batch {
                let ip = Ipv4Addr::new(10, 0, 0, 8 + o);
                if release {
                    if p.binding(ip).is_some_and(|b| b.mac == mac(m) && b.kind == BindingKind::Leased) {
                        undos.push(p.release(mac(m), ip));
                    }
                } else if p.can_grant(mac(m), ip, now) {
                    undos.push(p.grant(mac(m), ip, now + 200));
                }
            }
            for undo in undos.iter().rev() {
                p.undo(undo);
            }
            prop_assert_eq!(observable(&p, now), before);
        }

        /// Whatever sequence of operations runs, no address is live for two MACs and
        /// no MAC holds two live addresses.
        #[test]
        fn never_two_owners(ops in proptest::collection::vec((0u8..6, 0u8..7, 0u64..50), 1..200)) {
            let mut p = pool();
            let mut now = 0u64;
            // Grants and releases waiting for their commit.
            let mut pending = Vec::new();
            for (m, op, dt) in ops {
                now += dt;
                match op {
                    0 => { p.offer(mac(m), None, now, 30); }
                    1 => if let Some(ip) = p.held_by(mac(m), now) {
                        if p.can_grant(mac(m), ip, now) { pending.push(p.grant(mac(m), ip, now + 100)); }
                    },
                    2 => if let Some(ip) = p.held_by(mac(m), now) { p.forget(mac(m), ip); },
                    3 => if let Some(ip) = p.held_by(mac(m), now) { p.quarantine(mac(m), ip, now + 40); },
                    4 => if let Some(ip) = p.held_by(mac(m), now) { pending.push(p.release(mac(m), ip)); },
                    // The commit fails: newest first.
                    5 => for undo in pending.drain(..).rev() { p.undo(&undo); },
                    _ => { pending.clear(); p.set_reserved([(Ipv4Addr::new(10, 0, 0, 10 + m % 4), mac(m))]) }
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
