//! Which iPXE runs the boot script. An iPXE that is not ramboot's own build (one
//! flashed on a NIC, VirtualBox's without bzImage, Mellanox FlexBoot without the
//! `iPXE` user class) is first handed ramboot's iPXE binary, as pixiecore and smee
//! do, so the script always runs in an iPXE whose features and bugs are known.
//!
//! Telling "ours" apart on the wire:
//! - **By user class.** Every reply that hands over one of ramboot's binaries carries
//!   option 77 = [`IpxePolicy::user_class`]. A BIOS iPXE (`undionly.kpxe`) reads the
//!   PXE stack's cached DHCPACK at start, takes its options as settings and sends
//!   that user class in its own DISCOVER. An iPXE built with
//!   `set user-class ramboot` in an embedded script sends it too.
//! - **By sequence.** The 2019 UEFI builds do not read the cached packet, and stock
//!   builds otherwise send the same bytes as any other iPXE of that version (user
//!   class `iPXE`, the same option 175). So the iPXE that asks from the same MAC in a
//!   *new* DHCP session (another xid) shortly after a handover is taken to be the
//!   one ramboot handed over. This also stops a chainload loop whatever the binary
//!   sends: at most one handover per boot goes unrecognised.

use crate::node::MacAddr;
use serde::Deserialize;
use std::collections::{BTreeSet, HashMap};

/// What to do with an iPXE that does not announce itself as ramboot's.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ForeignIpxe {
    /// Hand it ramboot's iPXE binary first (the default).
    #[default]
    Chain,
    /// Give it the boot script directly (for sites that flash a known iPXE on
    /// their NICs and want to skip the extra load).
    Script,
}

/// The operator's choices about iPXE builds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpxePolicy {
    /// The user class that marks ramboot's own iPXE.
    pub user_class: String,
    pub foreign: ForeignIpxe,
    /// Boot files the server found missing from its TFTP root: a foreign iPXE is
    /// not sent to load one (it runs the script as it is rather than fail).
    pub missing: BTreeSet<String>,
}

/// The user class ramboot's replies plant, and its own iPXE builds send.
pub const OWN_USER_CLASS: &str = "ramboot";

impl Default for IpxePolicy {
    fn default() -> Self {
        IpxePolicy { user_class: OWN_USER_CLASS.into(), foreign: ForeignIpxe::Chain, missing: BTreeSet::new() }
    }
}

/// Why an iPXE gets the boot script.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScriptFor {
    /// It sent ramboot's user class.
    OwnUserClass,
    /// It is the iPXE that asked right after ramboot handed over its binary.
    FollowsHandover,
    /// The operator lets any iPXE run the script (`foreign: script`).
    AnyIpxe,
    /// ramboot has no iPXE binary for its architecture to hand over instead (none
    /// configured, or missing from the TFTP root).
    NoOwnBinary,
}

impl ScriptFor {
    pub fn reason(self) -> &'static str {
        match self {
            ScriptFor::OwnUserClass => "ramboot's iPXE (user class): per-node script",
            ScriptFor::FollowsHandover => "the iPXE ramboot just handed over: per-node script",
            ScriptFor::AnyIpxe => "iPXE (foreign builds allowed): per-node script",
            ScriptFor::NoOwnBinary => "foreign iPXE, but no ramboot iPXE for its arch: per-node script",
        }
    }
}

/// How long after a handover the next DHCP session from that MAC counts as the
/// handed-over iPXE: a TFTP load and iPXE's start take seconds on hardware and
/// under a minute under QEMU's TCG; a reboot through POST takes longer.
pub const HANDOVER_WINDOW_SECS: u64 = 120;

/// Most MACs remembered; past it, expired entries go, and in a flood all of them
/// (a session that loses its entry is only handed the binary once more).
pub const HANDOVER_LOG_CAP: usize = 65_536;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Stage {
    /// ramboot gave the session `xid` one of its binaries.
    HandedOver,
    /// The session `xid` is the iPXE that followed the handover.
    Adopted,
}

#[derive(Debug, Clone, Copy)]
struct Handover {
    xid: u32,
    at: u64,
    stage: Stage,
}

/// Recent handovers of ramboot's iPXE, per MAC. Decision state like the lease
/// pools: no clock of its own (times are the caller's Unix seconds).
#[derive(Debug, Clone, Default)]
pub struct Handovers {
    by_mac: HashMap<MacAddr, Handover>,
}

impl Handovers {
    /// ramboot handed one of its iPXE binaries to the DHCP session `xid` of `mac`.
    pub fn handed_over(&mut self, mac: MacAddr, xid: u32, now: u64) {
        if self.by_mac.len() >= HANDOVER_LOG_CAP && !self.by_mac.contains_key(&mac) {
            self.by_mac.retain(|_, h| now.saturating_sub(h.at) <= HANDOVER_WINDOW_SECS);
            if self.by_mac.len() >= HANDOVER_LOG_CAP {
                self.by_mac.clear();
            }
        }
        self.by_mac.insert(mac, Handover { xid, at: now, stage: Stage::HandedOver });
    }

    /// Is the iPXE asking in session `xid` of `mac` the one ramboot handed over? A
    /// new session soon after a handover is (and is remembered, so its REQUEST gets
    /// the same answer); the handover's own session is not (it is the foreign iPXE,
    /// or the PXE ROM, asking again).
    pub fn follows_handover(&mut self, mac: MacAddr, xid: u32, now: u64) -> bool {
        let Some(h) = self.by_mac.get_mut(&mac) else { return false };
        if now.saturating_sub(h.at) > HANDOVER_WINDOW_SECS {
            return false;
        }
        match h.stage {
            Stage::HandedOver if h.xid != xid => {
                *h = Handover { xid, at: now, stage: Stage::Adopted };
                true
            }
            Stage::HandedOver => false,
            Stage::Adopted => h.xid == xid,
        }
    }

    pub fn len(&self) -> usize {
        self.by_mac.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_mac.is_empty()
    }
}

/// Does option 77 (its names, see `classify`) say this is ramboot's iPXE?
pub fn is_own(user_classes: &[String], policy: &IpxePolicy) -> bool {
    user_classes.contains(&policy.user_class)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    const MAC: MacAddr = MacAddr([2, 0, 0, 0, 0, 1]);

    #[test]
    fn the_session_after_a_handover_is_adopted_with_its_request() {
        let mut log = Handovers::default();
        log.handed_over(MAC, 0xa, 100);
        assert!(!log.follows_handover(MAC, 0xa, 101), "the foreign iPXE's own REQUEST");
        assert!(log.follows_handover(MAC, 0xb, 110), "the handed-over iPXE's DISCOVER");
        assert!(log.follows_handover(MAC, 0xb, 111), "... and its REQUEST");
        assert!(!log.follows_handover(MAC, 0xc, 112), "a third session is a new boot");
    }

    #[test]
    fn a_handover_is_forgotten_after_the_window() {
        let mut log = Handovers::default();
        log.handed_over(MAC, 1, 100);
        assert!(!log.follows_handover(MAC, 2, 100 + HANDOVER_WINDOW_SECS + 1));
        assert!(!log.follows_handover(MacAddr([2, 0, 0, 0, 0, 2]), 2, 101), "another MAC");
    }

    #[test]
    fn the_log_stays_bounded() {
        let full = || {
            let mut log = Handovers::default();
            for i in 0..HANDOVER_LOG_CAP as u64 {
                let b = i.to_be_bytes();
                log.handed_over(MacAddr([2, b[3], b[4], b[5], b[6], b[7]]), 1, 0);
            }
            assert_eq!(log.len(), HANDOVER_LOG_CAP);
            log
        };
        // Expired entries go first...
        let mut log = full();
        log.handed_over(MacAddr([6; 6]), 1, HANDOVER_WINDOW_SECS + 1);
        assert_eq!(log.len(), 1);
        // ... and in a flood of live ones, all of them.
        let mut log = full();
        log.handed_over(MacAddr([6; 6]), 1, 1);
        assert_eq!(log.len(), 1);
    }

    #[test]
    fn the_user_class_must_match_exactly() {
        let policy = IpxePolicy::default();
        assert!(is_own(&["ramboot".into()], &policy));
        assert!(is_own(&["iPXE".into(), "ramboot".into()], &policy));
        assert!(!is_own(&["iPXE".into()], &policy));
        assert!(!is_own(&["Ramboot".into()], &policy));
        assert!(!is_own(&[], &policy));
    }

    proptest! {
        /// Whatever sessions arrive, a run of foreign-iPXE sessions from one MAC
        /// (each handed the binary unless adopted) never gets two handovers in a row
        /// within the window: the chainload cannot loop.
        #[test]
        fn no_two_handovers_in_a_row(xids in proptest::collection::vec(any::<u32>(), 1..40)) {
            let mut log = Handovers::default();
            let mut last_xid = None;
            let mut handed_last_session = false;
            for (t, xid) in xids.into_iter().enumerate() {
                if last_xid == Some(xid) {
                    continue; // the same session asking again
                }
                let now = t as u64;
                if log.follows_handover(MAC, xid, now) {
                    handed_last_session = false;
                } else {
                    prop_assert!(!handed_last_session, "handed over twice in a row");
                    log.handed_over(MAC, xid, now);
                    handed_last_session = true;
                }
                last_xid = Some(xid);
            }
        }
    }
}
