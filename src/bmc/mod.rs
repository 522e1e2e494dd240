//! Power control of nodes through their BMCs (issue 14): what a power command means
//! for a system in a given state, independent of the protocol that carries it.
//!
//! [`plan`] turns a [`PowerCommand`] and what the BMC said about the system
//! ([`SystemInfo`]) into [`Step`]s; it does no I/O and is what the tests pin down.
//! [`redfish`] speaks Redfish to carry the steps out (blocking, over `ureq`: callers
//! run it on the blocking pool). Nothing here stores credentials or nodes: callers
//! hand in a system URL and [`Credentials`], which never print their password.

pub mod redfish;
pub mod service;
pub mod tls;

pub use redfish::{BmcError, Redfish};

use std::fmt;
use std::time::Duration;

/// A BMC user name and password. Debug output shows the user name only, so the
/// credentials may sit in structs that get logged.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub username: String,
    password: String,
}

impl Credentials {
    pub fn new(username: impl Into<String>, password: impl Into<String>) -> Credentials {
        Credentials { username: username.into(), password: password.into() }
    }

    /// The password, for the one place that sends it.
    pub(crate) fn password(&self) -> &str {
        &self.password
    }
}

impl fmt::Debug for Credentials {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Credentials").field("username", &self.username).field("password", &"<redacted>").finish()
    }
}

/// How long a BMC gets. A BMC is a small, often slow computer: the totals are
/// generous, the connect timeout is not (an unreachable BMC should say so quickly).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Timeouts {
    /// To open the TCP connection.
    pub connect: Duration,
    /// For one whole request (connect, send, answer).
    pub request: Duration,
    /// For the system to reach a power state a step waits for.
    pub settle: Duration,
    /// Attempts of an idempotent request (GET, PATCH) whose transport failed or
    /// that got a 5xx; at least 1.
    pub attempts: u32,
}

impl Default for Timeouts {
    fn default() -> Timeouts {
        Timeouts {
            connect: Duration::from_secs(3),
            request: Duration::from_secs(10),
            settle: Duration::from_secs(60),
            attempts: 3,
        }
    }
}

/// A system's power state (Redfish `PowerState`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PowerState {
    On,
    Off,
    PoweringOn,
    PoweringOff,
    /// Anything else, or no `PowerState` at all (empty), as the BMC said it.
    Unknown(String),
}

impl PowerState {
    pub fn from_redfish(s: &str) -> PowerState {
        match s {
            "On" => PowerState::On,
            "Off" => PowerState::Off,
            "PoweringOn" => PowerState::PoweringOn,
            "PoweringOff" => PowerState::PoweringOff,
            other => PowerState::Unknown(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            PowerState::On => "On",
            PowerState::Off => "Off",
            PowerState::PoweringOn => "PoweringOn",
            PowerState::PoweringOff => "PoweringOff",
            PowerState::Unknown(s) if s.is_empty() => "unknown",
            PowerState::Unknown(s) => s,
        }
    }
}

impl fmt::Display for PowerState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A Redfish `ResetType` this client uses (others are kept as the BMC names them).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum ResetKind {
    On,
    ForceOn,
    ForceOff,
    GracefulShutdown,
    GracefulRestart,
    ForceRestart,
    PowerCycle,
    Other(String),
}

impl ResetKind {
    pub fn from_redfish(s: &str) -> ResetKind {
        match s {
            "On" => ResetKind::On,
            "ForceOn" => ResetKind::ForceOn,
            "ForceOff" => ResetKind::ForceOff,
            "GracefulShutdown" => ResetKind::GracefulShutdown,
            "GracefulRestart" => ResetKind::GracefulRestart,
            "ForceRestart" => ResetKind::ForceRestart,
            "PowerCycle" => ResetKind::PowerCycle,
            other => ResetKind::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            ResetKind::On => "On",
            ResetKind::ForceOn => "ForceOn",
            ResetKind::ForceOff => "ForceOff",
            ResetKind::GracefulShutdown => "GracefulShutdown",
            ResetKind::GracefulRestart => "GracefulRestart",
            ResetKind::ForceRestart => "ForceRestart",
            ResetKind::PowerCycle => "PowerCycle",
            ResetKind::Other(s) => s,
        }
    }
}

impl fmt::Display for ResetKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the next boot goes (Redfish `BootSourceOverrideTarget`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BootTarget {
    Pxe,
    Hdd,
    /// No override.
    None,
    Other(String),
}

impl BootTarget {
    pub fn from_redfish(s: &str) -> BootTarget {
        match s {
            "Pxe" => BootTarget::Pxe,
            "Hdd" => BootTarget::Hdd,
            "None" => BootTarget::None,
            other => BootTarget::Other(other.to_string()),
        }
    }

    pub fn as_str(&self) -> &str {
        match self {
            BootTarget::Pxe => "Pxe",
            BootTarget::Hdd => "Hdd",
            BootTarget::None => "None",
            BootTarget::Other(s) => s,
        }
    }
}

/// How long an override lasts (Redfish `BootSourceOverrideEnabled`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum OverrideEnabled {
    Disabled,
    Once,
    Continuous,
    Other(String),
}

impl OverrideEnabled {
    pub fn from_redfish(s: &str) -> OverrideEnabled {
        match s {
            "Disabled" => OverrideEnabled::Disabled,
            "Once" => OverrideEnabled::Once,
            "Continuous" => OverrideEnabled::Continuous,
            other => OverrideEnabled::Other(other.to_string()),
        }
    }
}

/// The boot source override as the BMC reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootOverride {
    pub target: BootTarget,
    /// `None` when the BMC does not say.
    pub enabled: Option<OverrideEnabled>,
    /// The targets the BMC accepts (`None`: it does not say).
    pub allowed_targets: Option<Vec<BootTarget>>,
}

/// What a power command needs to know about a system.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SystemInfo {
    pub power_state: PowerState,
    /// The reset action's target (`Actions."#ComputerSystem.Reset".target`), as
    /// the BMC wrote it (usually a path); `None` when the system has no reset action.
    pub reset_target: Option<String>,
    /// `ResetType@Redfish.AllowableValues` (`None`: the BMC does not say, so any
    /// standard type may work).
    pub allowed_resets: Option<Vec<ResetKind>>,
    pub boot: Option<BootOverride>,
}

impl SystemInfo {
    /// Whether the BMC accepts `kind` (or does not say what it accepts).
    pub fn allows(&self, kind: &ResetKind) -> bool {
        self.allowed_resets.as_ref().is_none_or(|allowed| allowed.contains(kind))
    }
}

/// What an operator asks of a node's power.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PowerCommand {
    On,
    Off,
    /// Off and on again (just on, if it is off).
    Cycle,
    Status,
}

/// One thing to do to a BMC.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Step {
    Reset(ResetKind),
    /// Boot from this target on the next boot only.
    SetBootOnce(BootTarget),
    /// Poll until the system reports this state (bounded by [`Timeouts::settle`]).
    WaitFor(PowerState),
}

/// Why a command cannot be carried out on this system at all.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the BMC offers no reset type to {wanted} (it offers: {offered})")]
pub struct NoWay {
    pub wanted: &'static str,
    pub offered: String,
}

/// The first of `kinds` the system allows.
fn first_allowed(system: &SystemInfo, kinds: &[ResetKind]) -> Option<ResetKind> {
    kinds.iter().find(|k| system.allows(k)).cloned()
}

fn no_way(system: &SystemInfo, wanted: &'static str) -> NoWay {
    let offered = match &system.allowed_resets {
        Some(kinds) if !kinds.is_empty() => kinds.iter().map(ResetKind::as_str).collect::<Vec<_>>().join(", "),
        Some(_) => "nothing".into(),
        None => "no list".into(),
    };
    NoWay { wanted, offered }
}

/// The steps that carry out `cmd` on a system in the state `system` describes.
///
/// A command already satisfied is no steps (on when on, off when off). "Off" is a
/// forced off: a node that is re-provisioned has nothing worth a graceful shutdown,
/// and a hung OS would ignore one. "Cycle" prefers one reset that restarts
/// (`ForceRestart`, then `PowerCycle`), else forced off, wait, on; an off system
/// is just turned on. A system in transition is waited out first.
pub fn plan(cmd: PowerCommand, system: &SystemInfo) -> Result<Vec<Step>, NoWay> {
    use PowerState as S;
    let on = || first_allowed(system, &[ResetKind::On, ResetKind::ForceOn]).ok_or_else(|| no_way(system, "power on"));
    let off = || {
        first_allowed(system, &[ResetKind::ForceOff, ResetKind::GracefulShutdown])
            .ok_or_else(|| no_way(system, "power off"))
    };
    Ok(match (cmd, &system.power_state) {
        (PowerCommand::Status, _) => vec![],
        (PowerCommand::On, S::On | S::PoweringOn) => vec![],
        (PowerCommand::On, S::PoweringOff) => vec![Step::WaitFor(S::Off), Step::Reset(on()?)],
        (PowerCommand::On, _) => vec![Step::Reset(on()?)],
        (PowerCommand::Off, S::Off | S::PoweringOff) => vec![],
        (PowerCommand::Off, _) => vec![Step::Reset(off()?)],
        (PowerCommand::Cycle, S::Off) => vec![Step::Reset(on()?)],
        (PowerCommand::Cycle, S::PoweringOff) => vec![Step::WaitFor(S::Off), Step::Reset(on()?)],
        (PowerCommand::Cycle, S::On) => {
            match first_allowed(system, &[ResetKind::ForceRestart, ResetKind::PowerCycle]) {
                Some(restart) => vec![Step::Reset(restart)],
                None => vec![Step::Reset(off()?), Step::WaitFor(S::Off), Step::Reset(on()?)],
            }
        }
        // Booting, or a state we cannot read: a restart of a half-on system is not
        // well defined on every BMC, off-then-on is.
        (PowerCommand::Cycle, S::PoweringOn | S::Unknown(_)) => {
            vec![Step::Reset(off()?), Step::WaitFor(S::Off), Step::Reset(on()?)]
        }
    })
}

/// [`plan`] for "boot from the network once, now": the one-time PXE override, then
/// a cycle (or just on, if the system is off).
pub fn plan_cycle_with_pxe(system: &SystemInfo) -> Result<Vec<Step>, NoWay> {
    let mut steps = vec![Step::SetBootOnce(BootTarget::Pxe)];
    steps.extend(plan(PowerCommand::Cycle, system)?);
    Ok(steps)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn system(state: PowerState, allowed: Option<&[&str]>) -> SystemInfo {
        SystemInfo {
            power_state: state,
            reset_target: Some("/redfish/v1/Systems/1/Actions/ComputerSystem.Reset".into()),
            allowed_resets: allowed.map(|a| a.iter().map(|s| ResetKind::from_redfish(s)).collect()),
            boot: None,
        }
    }

    const SUSHY: &[&str] = &["On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"];

    #[test]
    fn a_satisfied_command_is_no_steps() {
        assert_eq!(plan(PowerCommand::On, &system(PowerState::On, Some(SUSHY))), Ok(vec![]));
        assert_eq!(plan(PowerCommand::On, &system(PowerState::PoweringOn, Some(SUSHY))), Ok(vec![]));
        assert_eq!(plan(PowerCommand::Off, &system(PowerState::Off, Some(SUSHY))), Ok(vec![]));
        assert_eq!(plan(PowerCommand::Status, &system(PowerState::On, Some(&[]))), Ok(vec![]));
    }

    #[test]
    fn on_and_off_use_what_the_bmc_offers() {
        let off = system(PowerState::Off, Some(SUSHY));
        assert_eq!(plan(PowerCommand::On, &off), Ok(vec![Step::Reset(ResetKind::On)]));
        let force_on_only = system(PowerState::Off, Some(&["ForceOn", "ForceOff"]));
        assert_eq!(plan(PowerCommand::On, &force_on_only), Ok(vec![Step::Reset(ResetKind::ForceOn)]));
        let on = system(PowerState::On, Some(SUSHY));
        assert_eq!(plan(PowerCommand::Off, &on), Ok(vec![Step::Reset(ResetKind::ForceOff)]));
        let graceful_only = system(PowerState::On, Some(&["On", "GracefulShutdown"]));
        assert_eq!(plan(PowerCommand::Off, &graceful_only), Ok(vec![Step::Reset(ResetKind::GracefulShutdown)]));
        // No list: the standard types.
        assert_eq!(plan(PowerCommand::Off, &system(PowerState::On, None)), Ok(vec![Step::Reset(ResetKind::ForceOff)]));
    }

    #[test]
    fn cycle_prefers_one_restart_and_falls_back_to_off_then_on() {
        let on = system(PowerState::On, Some(SUSHY));
        assert_eq!(plan(PowerCommand::Cycle, &on), Ok(vec![Step::Reset(ResetKind::ForceRestart)]));
        let power_cycle = system(PowerState::On, Some(&["On", "ForceOff", "PowerCycle"]));
        assert_eq!(plan(PowerCommand::Cycle, &power_cycle), Ok(vec![Step::Reset(ResetKind::PowerCycle)]));
        let plain = system(PowerState::On, Some(&["On", "ForceOff"]));
        let off_on = vec![Step::Reset(ResetKind::ForceOff), Step::WaitFor(PowerState::Off), Step::Reset(ResetKind::On)];
        assert_eq!(plan(PowerCommand::Cycle, &plain), Ok(off_on.clone()));
        let unknown = system(PowerState::Unknown(String::new()), Some(SUSHY));
        assert_eq!(plan(PowerCommand::Cycle, &unknown), Ok(off_on));
        // An off system is just turned on.
        assert_eq!(
            plan(PowerCommand::Cycle, &system(PowerState::Off, Some(SUSHY))),
            Ok(vec![Step::Reset(ResetKind::On)])
        );
        let stopping = system(PowerState::PoweringOff, Some(SUSHY));
        assert_eq!(
            plan(PowerCommand::Cycle, &stopping),
            Ok(vec![Step::WaitFor(PowerState::Off), Step::Reset(ResetKind::On)])
        );
    }

    #[test]
    fn a_bmc_without_a_way_says_what_it_offers() {
        let err = plan(PowerCommand::On, &system(PowerState::Off, Some(&["Nmi"]))).unwrap_err();
        assert_eq!(err.to_string(), "the BMC offers no reset type to power on (it offers: Nmi)");
        let err = plan(PowerCommand::Cycle, &system(PowerState::On, Some(&["On"]))).unwrap_err();
        assert!(err.to_string().contains("power off"), "{err}");
    }

    #[test]
    fn cycle_with_pxe_sets_the_override_first() {
        let steps = plan_cycle_with_pxe(&system(PowerState::Off, Some(SUSHY))).unwrap();
        assert_eq!(steps, vec![Step::SetBootOnce(BootTarget::Pxe), Step::Reset(ResetKind::On)]);
        let steps = plan_cycle_with_pxe(&system(PowerState::On, Some(SUSHY))).unwrap();
        assert_eq!(steps, vec![Step::SetBootOnce(BootTarget::Pxe), Step::Reset(ResetKind::ForceRestart)]);
    }

    #[test]
    fn credentials_never_print_the_password() {
        let c = Credentials::new("admin", "hunter2");
        let shown = format!("{c:?} {:#?}", Some(&c));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("admin"), "{shown}");
    }
}
