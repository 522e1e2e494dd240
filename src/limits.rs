//! Bounds against floods shared by the TFTP and HTTP services: how many sessions,
//! connections or event streams one source address (and everyone together) may hold
//! at once, and a throttle for the warnings refusals log.
//!
//! A [`SourceSlots`] counts what is open per source address; a [`Slot`] is one
//! of them, given back when dropped, so a task that ends any way at all frees it.
//! Caps are passed to each [`SourceSlots::try_acquire`], not stored, so one
//! counter serves whatever limits its caller currently has. No I/O and no clock:
//! the throttle takes `now` as an argument.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Why a slot was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("this address already holds {0} (its limit)")]
    Source(usize),
    #[error("{0} are open (the server's limit)")]
    Total(usize),
}

impl Refused {
    /// The metric label for this refusal.
    pub fn label(self) -> &'static str {
        match self {
            Refused::Source(_) => "per_source",
            Refused::Total(_) => "total",
        }
    }
}

/// Open sessions (or connections, or streams) by source address. Cheap to clone:
/// clones share the counts.
#[derive(Debug, Clone, Default)]
pub struct SourceSlots {
    inner: Arc<Mutex<Counts>>,
}

#[derive(Debug, Default)]
struct Counts {
    by_source: HashMap<IpAddr, usize>,
    total: usize,
}

/// One open session of `source`; dropping it gives the slot back.
#[derive(Debug)]
pub struct Slot {
    slots: SourceSlots,
    source: IpAddr,
}

/// An IPv4 client reaching a dual-stack socket appears as `::ffff:a.b.c.d`: the
/// same source either way.
fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

impl SourceSlots {
    fn counts(&self) -> std::sync::MutexGuard<'_, Counts> {
        // The counts stay consistent even if a holder panicked: every change is one
        // statement.
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// A slot for `source`, if it holds fewer than `per_source` and all sources
    /// together fewer than `total` (`None`: no overall cap).
    pub fn try_acquire(&self, source: IpAddr, per_source: usize, total: Option<usize>) -> Result<Slot, Refused> {
        let source = canonical(source);
        let mut counts = self.counts();
        if let Some(total) = total {
            if counts.total >= total {
                return Err(Refused::Total(total));
            }
        }
        // Looked up before inserting: a refusal must not leave an empty entry behind.
        if counts.by_source.get(&source).is_some_and(|&held| held >= per_source) || per_source == 0 {
            return Err(Refused::Source(per_source));
        }
        *counts.by_source.entry(source).or_insert(0) += 1;
        counts.total += 1;
        Ok(Slot { slots: self.clone(), source })
    }

    /// Slots `source` holds now.
    pub fn held_by(&self, source: IpAddr) -> usize {
        self.counts().by_source.get(&canonical(source)).copied().unwrap_or(0)
    }

    /// Slots held by every source together.
    pub fn total(&self) -> usize {
        self.counts().total
    }

    /// Sources with a slot open: a source that holds none has no entry, so a flood
    /// from many addresses leaves nothing behind.
    pub fn sources(&self) -> usize {
        self.counts().by_source.len()
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        let mut counts = self.slots.counts();
        counts.total = counts.total.saturating_sub(1);
        if let Some(held) = counts.by_source.get_mut(&self.source) {
            *held -= 1;
            if *held == 0 {
                counts.by_source.remove(&self.source);
            }
        }
    }
}

/// Lets a warning through at most once per `interval`, counting what it held back,
/// so a flood of refusals costs one log line per interval, not one per packet.
#[derive(Debug)]
pub struct Throttle {
    interval: Duration,
    last: Option<Instant>,
    suppressed: u64,
}

impl Throttle {
    pub fn new(interval: Duration) -> Throttle {
        Throttle { interval, last: None, suppressed: 0 }
    }

    /// `Some(n)` if a warning may be logged at `now` (`n`: how many were held back
    /// since the last one), else `None` (and this one is counted).
    pub fn allow(&mut self, now: Instant) -> Option<u64> {
        match self.last {
            Some(at) if now.saturating_duration_since(at) < self.interval => {
                self.suppressed += 1;
                None
            }
            _ => {
                self.last = Some(now);
                Some(std::mem::take(&mut self.suppressed))
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::{Ipv4Addr, Ipv6Addr};

    const A: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 1));
    const B: IpAddr = IpAddr::V4(Ipv4Addr::new(10, 0, 0, 2));

    #[test]
    fn a_source_is_capped_and_others_are_not() {
        let slots = SourceSlots::default();
        let held: Vec<Slot> = (0..3).map(|_| slots.try_acquire(A, 3, None).unwrap()).collect();
        assert_eq!(slots.try_acquire(A, 3, None).unwrap_err(), Refused::Source(3));
        let b = slots.try_acquire(B, 3, None).expect("another source is served");
        assert_eq!((slots.held_by(A), slots.held_by(B), slots.total()), (3, 1, 4));
        drop(held);
        drop(b);
        assert_eq!((slots.total(), slots.sources()), (0, 0), "nothing left behind");
        assert!(slots.try_acquire(A, 3, None).is_ok(), "slots come back");
    }

    #[test]
    fn the_total_cap_holds_across_sources_and_refusals_take_nothing() {
        let slots = SourceSlots::default();
        let _a = slots.try_acquire(A, 5, Some(2)).unwrap();
        let _b = slots.try_acquire(B, 5, Some(2)).unwrap();
        assert_eq!(slots.try_acquire(A, 5, Some(2)).unwrap_err(), Refused::Total(2));
        assert_eq!(slots.try_acquire(B, 1, Some(3)).unwrap_err(), Refused::Source(1));
        assert_eq!((slots.total(), slots.held_by(A), slots.held_by(B)), (2, 1, 1));
        assert_eq!((Refused::Total(2).label(), Refused::Source(1).label()), ("total", "per_source"));
    }

    #[test]
    fn ipv4_mapped_addresses_count_as_their_ipv4_source() {
        let slots = SourceSlots::default();
        let mapped = IpAddr::V6(Ipv4Addr::new(10, 0, 0, 1).to_ipv6_mapped());
        let _one = slots.try_acquire(A, 1, None).unwrap();
        assert!(slots.try_acquire(mapped, 1, None).is_err());
        assert!(slots.try_acquire(IpAddr::V6(Ipv6Addr::LOCALHOST), 1, None).is_ok());
    }

    #[test]
    fn the_throttle_lets_one_through_per_interval_and_counts_the_rest() {
        let mut t = Throttle::new(Duration::from_secs(10));
        let start = Instant::now();
        assert_eq!(t.allow(start), Some(0));
        assert_eq!(t.allow(start + Duration::from_secs(1)), None);
        assert_eq!(t.allow(start + Duration::from_secs(9)), None);
        assert_eq!(t.allow(start + Duration::from_secs(10)), Some(2));
        assert_eq!(t.allow(start + Duration::from_secs(11)), None);
    }
}
