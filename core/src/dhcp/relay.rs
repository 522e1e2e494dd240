//! Which relay-supplied information a packet may be believed on (RFC 3046 §2.1 and
//! §5, RFC 3527, RFC 3011).
//!
//! A relay's giaddr routing is ordinary DHCP and works for any relay whose giaddr
//! falls in a configured subnet. What a relay *asserts* about the client — relay
//! agent information (option 82), and above all the link it names (sub-option 5,
//! or option 118), which picks the subnet and so the address — is believed only
//! from a configured trusted relay: anyone on a boot network can put those options
//! in a packet. Option 82 in a packet no relay touched (giaddr 0) is dropped, as RFC
//! 3046 §2.1 has a relay do with it. Pure: the socket layer counts and logs what
//! [`screen`] reports.

use super::decide::Arrival;
use super::policy::DhcpPolicy;
use dhcproto::v4::{relay, DhcpOption, Message, OptionCode};
use std::net::Ipv4Addr;

/// Relay-supplied options [`screen`] disregarded, because the packet did not come
/// from a trusted relay.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Disregarded {
    /// Option 82 (its sub-options are not used for anything; it is still echoed to
    /// the relay, RFC 3046 §2.2).
    pub agent_info: bool,
    /// Option 82 sub-option 5 (RFC 3527): the subnet is chosen without it.
    pub link_selection: bool,
    /// Option 118 (RFC 3011): likewise.
    pub subnet_selection: bool,
}

impl Disregarded {
    pub fn any(self) -> bool {
        self.agent_info || self.link_selection || self.subnet_selection
    }

    /// Did this change the subnet choice (a selector was disregarded)?
    pub fn selector(self) -> bool {
        self.link_selection || self.subnet_selection
    }

    /// Metric and log names of what was disregarded.
    pub fn names(self) -> impl Iterator<Item = &'static str> {
        [
            (self.agent_info, "agent_info"),
            (self.link_selection, "link_selection"),
            (self.subnet_selection, "subnet_selection"),
        ]
        .into_iter()
        .filter_map(|(set, name)| set.then_some(name))
    }
}

/// What to make of a packet's relay information.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Screen {
    /// From a trusted relay: every selector is believed.
    Trusted,
    /// Not from a trusted relay (a direct client, or a relay not in the list): the
    /// listed options, if any, are disregarded.
    Untrusted(Disregarded),
    /// Option 82 with giaddr 0: no relay added it, so the client forged it (RFC 3046
    /// §2.1). Dropped.
    Drop,
}

impl Screen {
    /// May the packet's link selection / subnet selection pick its subnet?
    pub fn trusted(self) -> bool {
        self == Screen::Trusted
    }
}

/// Is `addr` inside one of the policy's trusted relay networks?
fn listed(policy: &DhcpPolicy, addr: Ipv4Addr) -> bool {
    policy.trusted_relays.iter().any(|net| net.contains(&addr))
}

/// Screen `msg`, which came from `arrival.peer`. A relay is trusted when both its
/// giaddr and the UDP source address of the packet are listed: the giaddr alone is
/// whatever the sender wrote.
pub fn screen(msg: &Message, arrival: Arrival, policy: &DhcpPolicy) -> Screen {
    let agent_info = msg.opts().get(OptionCode::RelayAgentInformation);
    let giaddr = msg.giaddr();
    if giaddr.is_unspecified() && agent_info.is_some() {
        return Screen::Drop;
    }
    if !giaddr.is_unspecified() && listed(policy, giaddr) && listed(policy, arrival.peer) {
        return Screen::Trusted;
    }
    let link_selection = matches!(
        agent_info,
        Some(DhcpOption::RelayAgentInformation(info)) if info.get(relay::RelayCode::LinkSelection).is_some()
    );
    Screen::Untrusted(Disregarded {
        agent_info: agent_info.is_some(),
        link_selection,
        subnet_selection: msg.opts().get(OptionCode::SubnetSelection).is_some(),
    })
}

#[cfg(test)]
mod tests {
    use super::super::classify::tests::request;
    use super::super::decide::Port;
    use super::super::policy::{default_boot_files, DhcpMode};
    use super::*;
    use dhcproto::v4::MessageType;
    use proptest::prelude::*;

    const RELAY: Ipv4Addr = Ipv4Addr::new(10, 9, 0, 1);
    const RELAY_UP: Ipv4Addr = Ipv4Addr::new(10, 213, 0, 2);

    fn policy(trusted: &[&str]) -> DhcpPolicy {
        DhcpPolicy {
            mode: DhcpMode::Authoritative,
            tftp_server: Ipv4Addr::new(10, 213, 0, 1),
            boot_url: "http://10.213.0.1:8080".into(),
            boot_files: default_boot_files(),
            signed_boot_files: crate::dhcp::policy::default_signed_boot_files(),
            boot_chain: Default::default(),
            subnets: vec![],
            trusted_relays: trusted.iter().map(|n| n.parse().unwrap()).collect(),
            offer_hold_secs: 60,
            quarantine_secs: 600,
            ipxe: Default::default(),
            share: Default::default(),
        }
    }

    fn arrival(peer: Ipv4Addr) -> Arrival {
        Arrival { local_addr: Ipv4Addr::new(10, 213, 0, 1), peer, port: Port::Dhcp }
    }

    fn with_agent_info(mut msg: Message, link: Option<Ipv4Addr>) -> Message {
        let mut info = relay::RelayAgentInformation::default();
        info.insert(relay::RelayInfo::AgentCircuitId(b"eth7".to_vec()));
        if let Some(link) = link {
            info.insert(relay::RelayInfo::LinkSelection(link));
        }
        msg.opts_mut().insert(DhcpOption::RelayAgentInformation(info));
        msg
    }

    #[test]
    fn option_82_without_a_relay_is_dropped_whoever_sends_it() {
        let msg = with_agent_info(request([2, 0, 0, 0, 0, 1], MessageType::Discover), None);
        // Even from a listed address: giaddr 0 means no relay handled it.
        assert_eq!(screen(&msg, arrival(RELAY_UP), &policy(&["10.0.0.0/8"])), Screen::Drop);
        assert_eq!(screen(&msg, arrival(Ipv4Addr::UNSPECIFIED), &policy(&[])), Screen::Drop);
    }

    #[test]
    fn a_listed_relay_is_believed_an_unlisted_one_is_not() {
        let mut msg = with_agent_info(request([2, 0, 0, 0, 0, 1], MessageType::Discover), Some(RELAY));
        msg.set_giaddr(RELAY);
        msg.opts_mut().insert(DhcpOption::SubnetSelection(RELAY));
        let trusted = policy(&["10.9.0.1/32", "10.213.0.2/32"]);
        assert_eq!(screen(&msg, arrival(RELAY_UP), &trusted), Screen::Trusted);
        let all = Disregarded { agent_info: true, link_selection: true, subnet_selection: true };
        assert_eq!(screen(&msg, arrival(RELAY_UP), &policy(&[])), Screen::Untrusted(all));
        // The giaddr alone is not enough: the sender must be listed too.
        assert_eq!(screen(&msg, arrival(Ipv4Addr::new(10, 213, 0, 66)), &trusted), Screen::Untrusted(all));
        assert_eq!(all.names().collect::<Vec<_>>(), ["agent_info", "link_selection", "subnet_selection"]);
    }

    #[test]
    fn plain_packets_disregard_nothing_and_option_118_from_a_client_is_disregarded() {
        let msg = request([2, 0, 0, 0, 0, 1], MessageType::Discover);
        let nothing = screen(&msg, arrival(Ipv4Addr::UNSPECIFIED), &policy(&[]));
        assert_eq!(nothing, Screen::Untrusted(Disregarded::default()));
        assert!(!Disregarded::default().any());
        let mut msg = msg;
        msg.opts_mut().insert(DhcpOption::SubnetSelection(RELAY));
        let Screen::Untrusted(d) = screen(&msg, arrival(Ipv4Addr::UNSPECIFIED), &policy(&["0.0.0.0/0"])) else {
            panic!("a direct client is no relay")
        };
        assert!(d.subnet_selection && d.selector() && !d.agent_info);
    }

    proptest! {
        /// Whatever the addresses and options: option 82 without giaddr is always
        /// dropped, and a packet is trusted only when giaddr and source are both listed.
        #[test]
        fn trust_needs_giaddr_and_source_listed(
            giaddr in any::<u32>(), peer in any::<u32>(), agent in any::<bool>(), link in any::<bool>(),
            sel in any::<bool>(), prefix in 0u8..=32,
        ) {
            let (giaddr, peer) = (Ipv4Addr::from(giaddr), Ipv4Addr::from(peer));
            let mut msg = request([2, 0, 0, 0, 0, 1], MessageType::Discover);
            msg.set_giaddr(giaddr);
            if agent {
                msg = with_agent_info(msg, link.then_some(RELAY));
            }
            if sel {
                msg.opts_mut().insert(DhcpOption::SubnetSelection(RELAY));
            }
            let net = ipnet::Ipv4Net::new(Ipv4Addr::new(10, 9, 0, 0), prefix).unwrap().trunc();
            let p = policy(&[&net.to_string()]);
            let got = screen(&msg, arrival(peer), &p);
            if giaddr.is_unspecified() && agent {
                prop_assert_eq!(got, Screen::Drop);
            } else if !giaddr.is_unspecified() && net.contains(&giaddr) && net.contains(&peer) {
                prop_assert_eq!(got, Screen::Trusted);
            } else {
                let want = Disregarded { agent_info: agent, link_selection: agent && link, subnet_selection: sel };
                prop_assert_eq!(got, Screen::Untrusted(want));
            }
        }
    }
}
