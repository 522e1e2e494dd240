//! Who may use a boot: the rules behind the boot path's checks, decided from what
//! the server knows (leases, the boot's record) and the request's source address.
//!
//! The boot network is shared, so a request's claims (a MAC in a query string, a
//! bearer token) are not enough. A boot token is issued only to the address DHCP
//! bound to the MAC, every later request of that boot must come from that address,
//! and the boot's secrets (plan with CHAP credentials, rendered overlay) are released
//! once, before handoff. See `docs/threat-model.md`.

use crate::node::{MacAddr, NodeState};
use std::net::IpAddr;
use std::time::Duration;

/// How long a proxyDHCP sighting binds a MAC to an address: the script request
/// follows the PXE exchange within seconds; an old sighting proves nothing.
pub const SIGHTING_TTL: Duration = Duration::from_secs(300);

/// Reports (state changes, progress) one boot may make; enough for a chatty boot,
/// small enough that a leaked token cannot fill the event log.
pub const MAX_REPORTS_PER_BOOT: u32 = 300;

/// What DHCP says about the address a script request came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AddressClaim {
    /// Authoritative mode: the MAC that holds an active lease on the source address.
    Lease { holder: Option<MacAddr> },
    /// Proxy mode (another server leases): the address ramboot saw this MAC use in
    /// its PXE/iPXE exchange, and how long ago. Weaker: the client states it.
    Sighting { ip: Option<IpAddr>, age: Option<Duration> },
}

/// One of the agent's calls, as far as trust goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum AgentCall {
    Hello,
    /// The plan: its iSCSI part carries CHAP credentials.
    Plan,
    /// The rendered overlay: may carry `secret()`s.
    Overlay,
    /// A state change or progress message.
    Report,
    /// Stage two's poll for a command (a reboot): releases nothing secret, so it
    /// is allowed in every state of the boot, from the bound address only.
    Command,
}

impl AgentCall {
    pub fn name(self) -> &'static str {
        match self {
            AgentCall::Hello => "hello",
            AgentCall::Plan => "plan",
            AgentCall::Overlay => "overlay",
            AgentCall::Report => "report",
            AgentCall::Command => "command",
        }
    }
}

/// What the server recorded of the boot a token belongs to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootUse {
    /// The address the token was issued to (`None`: a boot from before binding).
    pub bound_ip: Option<IpAddr>,
    /// The node's state in this boot.
    pub state: NodeState,
    pub plan_released: bool,
    pub overlay_released: bool,
    pub reports: u32,
}

/// Why a boot-path request is refused. Each is said to the client, counted in
/// `/metrics` under [`Refused::metric`], and (where a node is known) recorded in its
/// event log.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refused {
    #[error("no node has MAC {0}: nodes are created only by DHCP (or an operator)")]
    UnknownNode(MacAddr),
    #[error("{from} does not hold the DHCP lease of {mac}")]
    NotLeaseHolder { mac: MacAddr, from: IpAddr },
    #[error("{mac} was not seen at {from} in a recent PXE/iPXE DHCP exchange")]
    NotSeen { mac: MacAddr, from: IpAddr },
    #[error("this boot's token is bound to {}, not {from}", bound.map_or("no address".into(), |b| b.to_string()))]
    WrongSource { bound: Option<IpAddr>, from: IpAddr },
    #[error("the {} of this boot is released only before handoff", .0.name())]
    AfterHandoff(AgentCall),
    #[error("the {} of this boot was already fetched: it is released once", .0.name())]
    AlreadyReleased(AgentCall),
    #[error("this boot made {MAX_REPORTS_PER_BOOT} reports, the most one boot may make")]
    TooManyReports,
}

impl Refused {
    /// The `reason` label of `ramboot_boot_refusals_total`.
    pub fn metric(&self) -> &'static str {
        match self {
            Refused::UnknownNode(_) => "unknown_node",
            Refused::NotLeaseHolder { .. } => "not_lease_holder",
            Refused::NotSeen { .. } => "not_seen",
            Refused::WrongSource { .. } => "wrong_source",
            Refused::AfterHandoff(_) => "after_handoff",
            Refused::AlreadyReleased(_) => "already_released",
            Refused::TooManyReports => "too_many_reports",
        }
    }
}

/// May `source` have a boot token for `mac`?
pub fn script_allowed(mac: MacAddr, source: IpAddr, claim: &AddressClaim) -> Result<(), Refused> {
    let source = source.to_canonical();
    match claim {
        AddressClaim::Lease { holder } if *holder == Some(mac) => Ok(()),
        AddressClaim::Lease { .. } => Err(Refused::NotLeaseHolder { mac, from: source }),
        AddressClaim::Sighting { ip: Some(ip), age: Some(age) } if *ip == source && *age <= SIGHTING_TTL => Ok(()),
        AddressClaim::Sighting { .. } => Err(Refused::NotSeen { mac, from: source }),
    }
}

/// May `source` make `call` with the token of `boot`?
pub fn agent_call_allowed(call: AgentCall, source: IpAddr, boot: &BootUse) -> Result<(), Refused> {
    let source = source.to_canonical();
    if boot.bound_ip.map(|b| b.to_canonical()) != Some(source) {
        return Err(Refused::WrongSource { bound: boot.bound_ip, from: source });
    }
    let handed_off =
        matches!(boot.state, NodeState::Handoff | NodeState::Ready | NodeState::Failed | NodeState::Maintenance);
    match call {
        AgentCall::Report if boot.reports >= MAX_REPORTS_PER_BOOT => Err(Refused::TooManyReports),
        AgentCall::Report | AgentCall::Command => Ok(()),
        AgentCall::Hello | AgentCall::Plan | AgentCall::Overlay if handed_off => Err(Refused::AfterHandoff(call)),
        AgentCall::Plan if boot.plan_released => Err(Refused::AlreadyReleased(call)),
        AgentCall::Overlay if boot.overlay_released => Err(Refused::AlreadyReleased(call)),
        AgentCall::Hello | AgentCall::Plan | AgentCall::Overlay => Ok(()),
    }
}

/// A token bucket: `burst` calls at once, then `per_sec` a second. The caller keeps
/// one per key (a boot, a source) and passes the time in.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Bucket {
    tokens: f64,
    last_ms: i64,
}

impl Bucket {
    pub fn full(burst: u32, now_ms: i64) -> Bucket {
        Bucket { tokens: f64::from(burst), last_ms: now_ms }
    }

    /// When it was last used (for forgetting idle buckets).
    pub fn last_ms(&self) -> i64 {
        self.last_ms
    }

    /// Take one token if there is one.
    pub fn take(&mut self, now_ms: i64, per_sec: f64, burst: u32) -> bool {
        let elapsed = (now_ms - self.last_ms).max(0) as f64 / 1000.0;
        self.tokens = (self.tokens + elapsed * per_sec).min(f64::from(burst));
        self.last_ms = self.last_ms.max(now_ms);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use std::net::Ipv4Addr;

    const MAC: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 1]);
    const OTHER: MacAddr = MacAddr([0x52, 0x54, 0, 0, 0, 2]);

    fn ip(last: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(10, 0, 0, last))
    }

    fn boot() -> BootUse {
        BootUse {
            bound_ip: Some(ip(5)),
            state: NodeState::Stage1,
            plan_released: false,
            overlay_released: false,
            reports: 0,
        }
    }

    #[test]
    fn a_script_goes_only_to_the_lease_holder() {
        let held = AddressClaim::Lease { holder: Some(MAC) };
        assert_eq!(script_allowed(MAC, ip(5), &held), Ok(()));
        let theirs = AddressClaim::Lease { holder: Some(OTHER) };
        assert_eq!(script_allowed(MAC, ip(5), &theirs), Err(Refused::NotLeaseHolder { mac: MAC, from: ip(5) }));
        let none = AddressClaim::Lease { holder: None };
        assert_eq!(script_allowed(MAC, ip(5), &none).unwrap_err().metric(), "not_lease_holder");
    }

    #[test]
    fn in_proxy_mode_a_recent_sighting_binds() {
        let seen = |ip, secs| AddressClaim::Sighting { ip: Some(ip), age: Some(Duration::from_secs(secs)) };
        assert_eq!(script_allowed(MAC, ip(5), &seen(ip(5), 3)), Ok(()));
        assert!(script_allowed(MAC, ip(6), &seen(ip(5), 3)).is_err(), "another address");
        assert!(script_allowed(MAC, ip(5), &seen(ip(5), 301)).is_err(), "too old");
        assert!(script_allowed(MAC, ip(5), &AddressClaim::Sighting { ip: None, age: None }).is_err());
        // An IPv4 client seen through a dual-stack socket.
        let mapped = "::ffff:10.0.0.5".parse().unwrap();
        assert_eq!(script_allowed(MAC, mapped, &seen(ip(5), 3)), Ok(()));
    }

    #[test]
    fn a_token_works_only_from_its_address() {
        assert_eq!(agent_call_allowed(AgentCall::Hello, ip(5), &boot()), Ok(()));
        for call in [AgentCall::Hello, AgentCall::Plan, AgentCall::Overlay, AgentCall::Report, AgentCall::Command] {
            assert_eq!(
                agent_call_allowed(call, ip(9), &boot()),
                Err(Refused::WrongSource { bound: Some(ip(5)), from: ip(9) })
            );
        }
        let unbound = BootUse { bound_ip: None, ..boot() };
        assert_eq!(agent_call_allowed(AgentCall::Report, ip(5), &unbound).unwrap_err().metric(), "wrong_source");
    }

    #[test]
    fn secrets_once_and_before_handoff_reports_capped() {
        let released = BootUse { plan_released: true, overlay_released: true, ..boot() };
        assert_eq!(
            agent_call_allowed(AgentCall::Plan, ip(5), &released),
            Err(Refused::AlreadyReleased(AgentCall::Plan))
        );
        assert_eq!(
            agent_call_allowed(AgentCall::Overlay, ip(5), &released),
            Err(Refused::AlreadyReleased(AgentCall::Overlay))
        );
        let ready = BootUse { state: NodeState::Ready, ..boot() };
        assert_eq!(
            agent_call_allowed(AgentCall::Overlay, ip(5), &ready),
            Err(Refused::AfterHandoff(AgentCall::Overlay))
        );
        assert_eq!(agent_call_allowed(AgentCall::Report, ip(5), &ready), Ok(()));
        let chatty = BootUse { reports: MAX_REPORTS_PER_BOOT, ..ready };
        assert_eq!(agent_call_allowed(AgentCall::Report, ip(5), &chatty), Err(Refused::TooManyReports));
        // Polling for a command releases nothing and is not a report: any state, any count.
        assert_eq!(agent_call_allowed(AgentCall::Command, ip(5), &chatty), Ok(()));
    }

    #[test]
    fn buckets_allow_a_burst_then_a_rate() {
        let mut b = Bucket::full(3, 0);
        assert!((0..3).all(|_| b.take(0, 1.0, 3)));
        assert!(!b.take(0, 1.0, 3));
        assert!(!b.take(500, 1.0, 3));
        assert!(b.take(1000, 1.0, 3));
        // A clock that steps back takes nothing extra.
        assert!(!b.take(0, 1.0, 3));
    }

    proptest! {
        /// Whatever the boot's record: only the bound address gets anything, secrets
        /// never after handoff and never twice.
        #[test]
        fn no_secret_leaves_its_boot(
            bound in proptest::option::of(0u8..4),
            source in 0u8..4,
            state in proptest::sample::select(NodeState::ALL.to_vec()),
            plan_released in any::<bool>(),
            overlay_released in any::<bool>(),
            reports in 0u32..400,
            call in proptest::sample::select(vec![
                AgentCall::Hello, AgentCall::Plan, AgentCall::Overlay, AgentCall::Report, AgentCall::Command,
            ]),
        ) {
            let use_ = BootUse { bound_ip: bound.map(ip), state, plan_released, overlay_released, reports };
            if agent_call_allowed(call, ip(source), &use_).is_ok() {
                prop_assert_eq!(bound, Some(source));
                let handed_off = matches!(state, NodeState::Handoff | NodeState::Ready | NodeState::Failed | NodeState::Maintenance);
                match call {
                    AgentCall::Plan => prop_assert!(!plan_released && !handed_off),
                    AgentCall::Overlay => prop_assert!(!overlay_released && !handed_off),
                    AgentCall::Hello => prop_assert!(!handed_off),
                    AgentCall::Report => prop_assert!(reports < MAX_REPORTS_PER_BOOT),
                    AgentCall::Command => {}
                }
            }
        }
    }
}
