//! Node identity and lifecycle vocabulary shared by every service.
//!
//! A node is identified on the wire by its boot NIC's MAC address. Its lifecycle
//! state moves `discovered → assigned → booting → stage1 → loading → handoff →
//! ready`, or to `failed` with a reason, and an operator can put it in `maintenance`
//! (it is told not to boot). Every move is recorded as an event by the store.

use serde::{Deserialize, Serialize};
use std::fmt;
use std::str::FromStr;

/// An Ethernet MAC address, printed lowercase with colons.
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct MacAddr(pub [u8; 6]);

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(f, "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}", b[0], b[1], b[2], b[3], b[4], b[5])
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid MAC address {0:?}: expected six hex bytes separated by ':' or '-'")]
pub struct MacParseError(pub String);

impl FromStr for MacAddr {
    type Err = MacParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || MacParseError(s.chars().take(64).collect());
        let mut out = [0u8; 6];
        let mut parts = s.split([':', '-']);
        for byte in out.iter_mut() {
            let part = parts.next().ok_or_else(err)?;
            if part.len() != 2 {
                return Err(err());
            }
            *byte = u8::from_str_radix(part, 16).map_err(|_| err())?;
        }
        if parts.next().is_some() {
            return Err(err());
        }
        Ok(MacAddr(out))
    }
}

impl Serialize for MacAddr {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// What a label key or value may look like (as in Kubernetes, minus the prefix).
pub const LABEL_RULE: &str = "labels are 1-63 characters of letters, digits, '-', '_' and '.', starting and ending \
                              with a letter or digit";

pub fn valid_label(s: &str) -> bool {
    let ok_edge = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        && ok_edge(s.chars().next())
        && ok_edge(s.chars().last())
}

/// An RFC 1123 host name label (we name nodes, not domains).
pub fn valid_hostname(s: &str) -> bool {
    (1..=63).contains(&s.len())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        && !s.starts_with('-')
        && !s.ends_with('-')
}

/// Where a node is in its life. Stored as its lowercase name.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
#[serde(rename_all = "lowercase")]
pub enum NodeState {
    /// Seen (DHCP, or a discovery boot's inventory) and has no profile yet.
    Discovered,
    /// Has a profile (explicit or by selector); boots it next time it boots.
    Assigned,
    /// Its iPXE script was served: stage one is loading.
    Booting,
    /// The stage-one agent said hello.
    Stage1,
    /// The agent is fetching and verifying the profile image.
    Loading,
    /// The image is mounted; the agent is switching root into it.
    Handoff,
    /// Stage two reported that it is up.
    Ready,
    /// The boot failed; the reason is in the event log. Retried with backoff.
    Failed,
    /// An operator took the node out of service: it is told not to boot.
    Maintenance,
}

impl NodeState {
    pub const ALL: [NodeState; 9] = [
        NodeState::Discovered,
        NodeState::Assigned,
        NodeState::Booting,
        NodeState::Stage1,
        NodeState::Loading,
        NodeState::Handoff,
        NodeState::Ready,
        NodeState::Failed,
        NodeState::Maintenance,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            NodeState::Discovered => "discovered",
            NodeState::Assigned => "assigned",
            NodeState::Booting => "booting",
            NodeState::Stage1 => "stage1",
            NodeState::Loading => "loading",
            NodeState::Handoff => "handoff",
            NodeState::Ready => "ready",
            NodeState::Failed => "failed",
            NodeState::Maintenance => "maintenance",
        }
    }

    /// Whether an agent report may move a node from `self` to `next`.
    ///
    /// Reports only move forward within one boot (a retried HTTP request must not
    /// rewind the timeline); `failed` is reachable from any in-boot state. A
    /// discovery boot starts from `discovered`/`assigned` and joins the sequence once
    /// the node has a profile. Nothing moves a node out of `maintenance` but an operator.
    pub fn agent_may_move_to(self, next: NodeState) -> bool {
        use NodeState::*;
        let rank = |s: NodeState| match s {
            Discovered | Assigned => Some(0),
            Booting => Some(1),
            Stage1 => Some(2),
            Loading => Some(3),
            Handoff => Some(4),
            Ready => Some(5),
            Failed | Maintenance => None,
        };
        match (rank(self), next) {
            (Some(_), Failed) => true,
            (Some(now), next) => rank(next).is_some_and(|n| n > now),
            (None, _) => false,
        }
    }
}

impl fmt::Display for NodeState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

#[derive(Debug, thiserror::Error)]
#[error("unknown node state {0:?}")]
pub struct StateParseError(pub String);

impl FromStr for NodeState {
    type Err = StateParseError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        NodeState::ALL.into_iter().find(|state| state.as_str() == s).ok_or_else(|| StateParseError(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mac_round_trips_and_rejects_garbage() {
        let mac: MacAddr = "52:54:00:AB:cd:01".parse().unwrap();
        assert_eq!(mac.to_string(), "52:54:00:ab:cd:01");
        assert_eq!("52-54-00-ab-cd-01".parse::<MacAddr>().unwrap(), mac);
        for bad in ["", "52:54:00:ab:cd", "52:54:00:ab:cd:01:02", "5:54:00:ab:cd:01", "zz:54:00:ab:cd:01"] {
            assert!(bad.parse::<MacAddr>().is_err(), "{bad}");
        }
    }

    #[test]
    fn agent_reports_only_move_forward() {
        use NodeState::*;
        assert!(Booting.agent_may_move_to(Stage1));
        assert!(Stage1.agent_may_move_to(Ready));
        assert!(Loading.agent_may_move_to(Failed));
        assert!(!Ready.agent_may_move_to(Loading));
        assert!(Discovered.agent_may_move_to(Loading), "a discovery boot that got its assignment");
        assert!(!Ready.agent_may_move_to(Assigned));
        assert!(!Failed.agent_may_move_to(Ready));
        assert!(!Maintenance.agent_may_move_to(Stage1));
        assert!(!Maintenance.agent_may_move_to(Failed));
    }

    #[test]
    fn labels_and_hostnames() {
        for good in ["r1", "rack.a-1", "A_b"] {
            assert!(valid_label(good), "{good}");
        }
        for bad in ["", "-a", "a-", "a b", "a/b", &"x".repeat(64)] {
            assert!(!valid_label(bad), "{bad}");
        }
        assert!(valid_hostname("node-01"));
        assert!(!valid_hostname("node_01") && !valid_hostname("-n") && !valid_hostname(""));
    }

    #[test]
    fn states_parse_from_their_names() {
        for state in NodeState::ALL {
            assert_eq!(state.as_str().parse::<NodeState>().unwrap(), state);
        }
    }
}
