//! The boot planner: what a node boots, decided once from one snapshot of
//! everything that matters (the node, the profiles, the built images, the lifecycle
//! rules), so a profile reload in the middle of a request can never mix two
//! revisions into one boot.
//!
//! The order of the questions is the operator's order of precedence: a node in
//! maintenance is told not to boot; one that used up its retries waits for an
//! operator; otherwise its explicit profile, else the most specific selector, else
//! the default profile, else a discovery boot (stage one only). A profile whose
//! images are not built is refused with the reason, never half-booted.

use crate::lifecycle::Lifecycle;
use crate::node::NodeState;
use crate::profile::{NodeFacts, Profile, Selector};
use serde::{Deserialize, Serialize};
use std::time::Duration;

/// Kernel arguments of a boot that has no profile (discovery): a console on both
/// the screen and the first serial port.
pub const DISCOVERY_KERNEL_ARGS: [&str; 2] = ["console=tty0", "console=ttyS0,115200n8"];

/// A loaded profile and the revision (short hash of its file) it was loaded at.
#[derive(Debug, Clone, Copy)]
pub struct ProfileRef<'a> {
    pub profile: &'a Profile,
    pub revision: &'a str,
    /// Some overlay template calls `secret()` (the loader knows; the core does not
    /// parse templates).
    pub renders_secrets: bool,
}

impl ProfileRef<'_> {
    /// Booting it hands the node something another host must not get: rendered
    /// secrets, or iSCSI volumes (and their CHAP credentials).
    pub fn holds_secrets(&self) -> bool {
        self.renders_secrets || !self.profile.volumes.is_empty()
    }
}

/// One snapshot of the valid profiles.
pub trait Profiles {
    fn get(&self, name: &str) -> Option<ProfileRef<'_>>;
    /// The profile whose most specific selector matches, and that selector.
    fn select(&self, facts: &NodeFacts) -> Option<(ProfileRef<'_>, &Selector)>;
}

/// How a node's profile was chosen, and whether that choice is an operator's word
/// about this very node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// An operator assigned the profile to the node.
    Assigned,
    /// A selector matched. It vouches for the node only if it names the node's MAC
    /// (the address DHCP leased is bound to it) or labels (which only operators
    /// set); serial, UUID and architecture are what the node says of itself.
    Selector { description: String, vouches: bool },
    /// Nothing named the node: the server's default profile.
    Default,
}

impl Selection {
    pub fn of(selector: &Selector) -> Selection {
        Selection::Selector {
            description: selector.describe(),
            vouches: selector.mac.is_some() || !selector.labels.is_empty(),
        }
    }

    /// The reason as the event log records it.
    pub fn describe(&self) -> String {
        match self {
            Selection::Assigned => "assigned".into(),
            Selection::Selector { description, .. } => format!("selector {description}"),
            Selection::Default => "default profile".into(),
        }
    }

    pub fn vouches(&self) -> bool {
        match self {
            Selection::Assigned => true,
            Selection::Selector { vouches, .. } => *vouches,
            Selection::Default => false,
        }
    }
}

/// Why `node` must wait for an operator's approval before it may boot `profile`
/// (`None`: it may). A profile that holds secrets goes only to nodes an operator
/// vouched for: approved, assigned, or named by MAC or labels.
pub fn approval_needed(node: &NodeView, profile: ProfileRef, selection: &Selection) -> Option<String> {
    if !profile.holds_secrets() || node.approved || selection.vouches() {
        return None;
    }
    let what = match (profile.renders_secrets, profile.profile.volumes.is_empty()) {
        (true, false) => "renders secrets and attaches volumes",
        (true, true) => "renders secrets",
        _ => "attaches volumes",
    };
    Some(format!(
        "profile {} {what}, and this node was matched only by {} (facts it reports itself): \
         waiting for an operator to approve it (`ramboot nodes approve <node>`) or assign it",
        profile.profile.name,
        selection.describe()
    ))
}

/// The image store's manifests, as far as a boot needs them. An `Err` is the reason
/// the image cannot be used (not built, or missing an artifact), said to the operator.
pub trait Images {
    fn stage1(&self, name: &str) -> Result<StageOne, String>;
    fn rootfs(&self, name: &str) -> Result<BootImage, String>;
}

/// A built stage-one set: the kernel and initramfs iPXE loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StageOne {
    pub name: String,
    pub kernel_digest: String,
    pub initrd_digest: String,
}

/// The root filesystem a boot was planned with.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[cfg_attr(feature = "openapi", derive(utoipa::ToSchema))]
pub struct BootImage {
    pub name: String,
    pub digest: String,
    pub size: u64,
    pub format: String,
}

/// What the planner needs to know of a node.
#[derive(Debug, Clone)]
pub struct NodeView<'a> {
    pub state: NodeState,
    /// Consecutive failed boots.
    pub failures: i64,
    pub maintenance_reason: Option<&'a str>,
    /// An operator's explicit assignment.
    pub assigned_profile: Option<&'a str>,
    pub hostname: &'a str,
    /// What selectors match against.
    pub facts: NodeFacts,
    /// An operator approved (or registered) it: it may get profiles that hold secrets.
    pub approved: bool,
    /// How long it has been in `state`.
    pub in_state_for: Duration,
}

/// The server-wide settings a boot decision reads.
#[derive(Debug, Clone, Copy)]
pub struct Settings<'a> {
    pub lifecycle: &'a Lifecycle,
    pub default_profile: Option<&'a str>,
    /// The stage-one set a discovery boot loads.
    pub discovery_stage1: &'a str,
}

/// Why a node is not booted now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Refusal {
    /// An operator took it out of service.
    Maintenance { reason: Option<String> },
    /// It failed this many boots in a row, more than the lifecycle allows.
    RetriesExhausted { failures: u32 },
    /// Its profile or images cannot be used: an operator must fix something. Such a
    /// refusal goes into the node's event log.
    Unbootable { reason: String },
    /// Its last boot failed: the next one starts after `remaining`. The server
    /// enforces this (no token before then), not the script.
    BackingOff { failures: u32, remaining: Duration },
}

impl Refusal {
    /// The one line the iPXE console and the logs show.
    pub fn reason(&self) -> String {
        match self {
            Refusal::Maintenance { reason } => {
                format!("in maintenance ({})", reason.as_deref().unwrap_or("no reason given"))
            }
            Refusal::RetriesExhausted { failures } => {
                format!("{failures} boots failed in a row; reprovision the node to try again")
            }
            Refusal::Unbootable { reason } => reason.clone(),
            Refusal::BackingOff { failures, remaining } => {
                format!("{failures} failed boot(s): backing off, next boot in {} s", remaining.as_secs().max(1))
            }
        }
    }

    /// When the node should ask again, if the refusal says (else the caller's default).
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            Refusal::BackingOff { remaining, .. } => Some((*remaining).max(Duration::from_secs(1))),
            _ => None,
        }
    }
}

/// A volume a node's profile declares, under the node's own name for it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VolumeWanted {
    pub name: String,
    pub size_bytes: u64,
}

/// A boot of a profile, pinned to the profile's revision and its image's digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProfileBoot {
    pub profile: String,
    pub revision: String,
    pub image: BootImage,
    /// How the profile was chosen (`assigned`, `selector …`, `default profile`).
    pub why: String,
}

impl ProfileBoot {
    /// The boot's reason as the event log records it.
    pub fn describe(&self) -> String {
        format!("revision {}, {}", self.revision, self.why)
    }
}

/// What the iPXE script loads.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BootPlan {
    pub stage1: StageOne,
    /// The profile's kernel arguments (the server adds its own after them).
    pub kernel_args: Vec<String>,
    /// `None`: a discovery boot (stage one reports and waits for an assignment).
    pub profile: Option<ProfileBoot>,
    /// A discovery boot of a node whose profile waits for an operator's approval:
    /// why (see [`approval_needed`]).
    pub awaiting_approval: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    Boot(Box<BootPlan>),
    Refuse(Refusal),
}

/// Decide what `node` boots now.
pub fn plan_boot(node: &NodeView, profiles: &dyn Profiles, images: &dyn Images, settings: Settings) -> Decision {
    if node.state == NodeState::Maintenance {
        return Decision::Refuse(Refusal::Maintenance { reason: node.maintenance_reason.map(str::to_string) });
    }
    let failures = u32::try_from(node.failures).unwrap_or(u32::MAX);
    let Some(retry_delay) = settings.lifecycle.retry_delay(failures) else {
        return Decision::Refuse(Refusal::RetriesExhausted { failures });
    };
    if node.state == NodeState::Failed && node.in_state_for < retry_delay {
        return Decision::Refuse(Refusal::BackingOff { failures, remaining: retry_delay - node.in_state_for });
    }
    let unbootable = |reason: String| Decision::Refuse(Refusal::Unbootable { reason });
    let discovery = |awaiting_approval: Option<String>| match images.stage1(settings.discovery_stage1) {
        Err(reason) => unbootable(reason),
        Ok(stage1) => Decision::Boot(Box::new(BootPlan {
            stage1,
            kernel_args: DISCOVERY_KERNEL_ARGS.iter().map(|a| a.to_string()).collect(),
            profile: None,
            awaiting_approval,
        })),
    };
    match resolve_profile(node, profiles, settings.default_profile) {
        Err(reason) => unbootable(reason),
        Ok(Some((profile, selection))) => {
            if let Some(wait) = approval_needed(node, profile, &selection) {
                return discovery(Some(wait));
            }
            match profile_boot(profile, selection.describe(), images) {
                Err(reason) => unbootable(reason),
                Ok((stage1, boot)) => Decision::Boot(Box::new(BootPlan {
                    stage1,
                    kernel_args: profile.profile.kernel_args.clone(),
                    profile: Some(boot),
                    awaiting_approval: None,
                })),
            }
        }
        Ok(None) => discovery(None),
    }
}

/// Which profile a node boots, and why; `Ok(None)` means discovery, `Err` a profile
/// that is named but not loaded.
pub fn resolve_profile<'p>(
    node: &NodeView,
    profiles: &'p dyn Profiles,
    default_profile: Option<&str>,
) -> Result<Option<(ProfileRef<'p>, Selection)>, String> {
    if let Some(name) = node.assigned_profile {
        return match profiles.get(name) {
            Some(p) => Ok(Some((p, Selection::Assigned))),
            None => Err(format!("assigned profile {name:?} does not exist (or failed validation)")),
        };
    }
    if let Some((profile, selector)) = profiles.select(&node.facts) {
        return Ok(Some((profile, Selection::of(selector))));
    }
    match default_profile {
        Some(name) => match profiles.get(name) {
            Some(p) => Ok(Some((p, Selection::Default))),
            None => Err(format!("default profile {name:?} does not exist (or failed validation)")),
        },
        None => Ok(None),
    }
}

/// A profile's boot with its images as built: the stage-one set and the root
/// filesystem pinned by digest.
pub fn profile_boot(profile: ProfileRef, why: String, images: &dyn Images) -> Result<(StageOne, ProfileBoot), String> {
    let stage1 = images.stage1(&profile.profile.stage1)?;
    let image = images.rootfs(&profile.profile.image)?;
    let boot =
        ProfileBoot { profile: profile.profile.name.clone(), revision: profile.revision.to_string(), image, why };
    Ok((stage1, boot))
}

/// The volumes a profile declares, named for the node that gets them.
pub fn volumes_wanted(profile: &Profile, hostname: &str) -> Vec<VolumeWanted> {
    profile.volumes.iter().map(|v| VolumeWanted { name: v.volume_name(hostname), size_bytes: v.size_bytes() }).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::profile::{ProfileVolume, Selector};
    use std::collections::BTreeMap;

    struct Set(Vec<(Profile, String)>);

    impl Profiles for Set {
        fn get(&self, name: &str) -> Option<ProfileRef<'_>> {
            self.0.iter().find(|(p, _)| p.name == name).map(|(profile, revision)| ProfileRef {
                profile,
                revision,
                renders_secrets: false,
            })
        }
        fn select(&self, facts: &NodeFacts) -> Option<(ProfileRef<'_>, &Selector)> {
            let (profile, selector) = crate::profile::select(self.0.iter().map(|(p, _)| p), facts)?;
            Some((self.get(&profile.name)?, selector))
        }
    }

    /// Built: `stage1` and `compute-node`; anything else is "not built".
    struct Built;

    impl Images for Built {
        fn stage1(&self, name: &str) -> Result<StageOne, String> {
            (name == "stage1")
                .then(|| StageOne { name: name.into(), kernel_digest: "k".into(), initrd_digest: "i".into() })
                .ok_or_else(|| format!("image {name:?} is not built"))
        }
        fn rootfs(&self, name: &str) -> Result<BootImage, String> {
            (name == "compute-node")
                .then(|| BootImage { name: name.into(), digest: "d".into(), size: 7, format: "squashfs".into() })
                .ok_or_else(|| format!("image {name:?} is not built"))
        }
    }

    fn profile(name: &str, image: &str, selectors: Vec<Selector>) -> (Profile, String) {
        let p = Profile {
            name: name.into(),
            description: String::new(),
            stage1: "stage1".into(),
            image: image.into(),
            kernel_args: vec![format!("{name}.arg")],
            selectors,
            vars: BTreeMap::new(),
            files: vec![],
            volumes: vec![ProfileVolume { name: "vm".into(), size: "1G".into() }],
            boot_chain: None,
        };
        (p, format!("rev-{name}"))
    }

    fn lifecycle() -> Lifecycle {
        Lifecycle {
            booting_timeout: Duration::from_secs(60),
            stage1_timeout: Duration::from_secs(60),
            loading_timeout: Duration::from_secs(60),
            handoff_timeout: Duration::from_secs(60),
            max_retries: 3,
            retry_backoff: Duration::from_secs(10),
            retry_backoff_max: Duration::from_secs(300),
        }
    }

    fn node() -> NodeView<'static> {
        NodeView {
            state: NodeState::Discovered,
            failures: 0,
            maintenance_reason: None,
            assigned_profile: None,
            hostname: "n1",
            facts: NodeFacts::default(),
            // Approved: the tests of trust below clear it.
            approved: true,
            in_state_for: Duration::from_secs(3600),
        }
    }

    fn plan(node: &NodeView, set: &Set, default_profile: Option<&str>) -> Decision {
        let lifecycle = lifecycle();
        let settings = Settings { lifecycle: &lifecycle, default_profile, discovery_stage1: "stage1" };
        plan_boot(node, set, &Built, settings)
    }

    fn profile_of(d: &Decision) -> Option<(&str, &str, &str)> {
        match d {
            Decision::Boot(plan) => plan.profile.as_ref().map(|p| (&*p.profile, &*p.revision, &*p.why)),
            Decision::Refuse(_) => None,
        }
    }

    #[test]
    fn assignment_beats_selector_beats_default() {
        let by_label = Selector { labels: [("role".into(), "hv".into())].into(), ..Selector::default() };
        let set = Set(vec![profile("a", "compute-node", vec![by_label]), profile("b", "compute-node", vec![])]);
        let mut n = node();
        assert_eq!(profile_of(&plan(&n, &set, Some("b"))), Some(("b", "rev-b", "default profile")));
        n.facts.labels.insert("role".into(), "hv".into());
        assert_eq!(profile_of(&plan(&n, &set, Some("b"))), Some(("a", "rev-a", "selector label role=hv")));
        n.assigned_profile = Some("b");
        assert_eq!(profile_of(&plan(&n, &set, None)), Some(("b", "rev-b", "assigned")));
    }

    #[test]
    fn a_profile_boot_is_pinned_to_its_revision_and_image() {
        let set = Set(vec![profile("a", "compute-node", vec![])]);
        let Decision::Boot(plan) = plan(&node(), &set, Some("a")) else { panic!("refused") };
        let boot = plan.profile.expect("a profile boot");
        assert_eq!(boot.image.digest, "d");
        assert_eq!(boot.describe(), "revision rev-a, default profile");
        assert_eq!(plan.kernel_args, ["a.arg"]);
        assert_eq!(plan.stage1.kernel_digest, "k");
    }

    #[test]
    fn no_profile_is_a_discovery_boot_with_console_args() {
        let Decision::Boot(plan) = plan(&node(), &Set(vec![]), None) else { panic!("refused") };
        assert_eq!(plan.profile, None);
        assert_eq!(plan.kernel_args, DISCOVERY_KERNEL_ARGS);
    }

    #[test]
    fn refusals_in_order_of_precedence() {
        let set = Set(vec![profile("a", "compute-node", vec![]), profile("unbuilt", "nope", vec![])]);
        let mut n = node();
        n.assigned_profile = Some("missing");
        let refusal = |d: Decision| match d {
            Decision::Refuse(r) => r.reason(),
            Decision::Boot(_) => "booted".into(),
        };
        assert_eq!(refusal(plan(&n, &set, None)), "assigned profile \"missing\" does not exist (or failed validation)");
        n.assigned_profile = Some("unbuilt");
        assert_eq!(refusal(plan(&n, &set, None)), "image \"nope\" is not built");
        n.failures = 4;
        assert_eq!(refusal(plan(&n, &set, None)), "4 boots failed in a row; reprovision the node to try again");
        n.state = NodeState::Maintenance;
        n.maintenance_reason = Some("DIMM swap");
        assert_eq!(refusal(plan(&n, &set, None)), "in maintenance (DIMM swap)");
        assert_eq!(
            refusal(plan(&node(), &set, Some("gone"))),
            "default profile \"gone\" does not exist (or failed validation)"
        );
    }

    #[test]
    fn failures_back_off_on_the_server_before_the_next_boot() {
        let set = Set(vec![profile("a", "compute-node", vec![])]);
        let mut n = node();
        n.failures = 2;
        n.state = NodeState::Failed;
        n.in_state_for = Duration::from_secs(5);
        assert_eq!(
            plan(&n, &set, Some("a")),
            Decision::Refuse(Refusal::BackingOff { failures: 2, remaining: Duration::from_secs(15) })
        );
        n.in_state_for = Duration::from_secs(20);
        assert!(matches!(plan(&n, &set, Some("a")), Decision::Boot(_)));
        // Another state (an operator moved it, or a boot started since) does not wait.
        n.state = NodeState::Assigned;
        n.in_state_for = Duration::ZERO;
        assert!(matches!(plan(&n, &set, Some("a")), Decision::Boot(_)));
    }

    #[test]
    fn secrets_go_only_to_nodes_an_operator_vouched_for() {
        let by_serial = Selector { serial: Some("SN1".into()), ..Selector::default() };
        let by_mac = Selector { mac: Some("52:54:00:00:00:01".parse().unwrap()), ..Selector::default() };
        // `a` declares a volume, so it holds secrets.
        let set = Set(vec![profile("a", "compute-node", vec![by_serial]), profile("m", "compute-node", vec![by_mac])]);
        let mut n = node();
        n.approved = false;
        n.facts.serial = Some("SN1".into());
        let Decision::Boot(waiting) = plan(&n, &set, None) else { panic!("refused") };
        assert_eq!(waiting.profile, None, "matched only by its serial: discovery");
        let why = waiting.awaiting_approval.expect("says why it waits");
        assert!(why.contains("profile a attaches volumes") && why.contains("serial=SN1"), "{why}");
        // The default profile vouches for nobody either.
        n.facts.serial = None;
        assert!(matches!(plan(&n, &set, Some("a")), Decision::Boot(p) if p.awaiting_approval.is_some()));
        // An operator's word: approval, an assignment, or a selector naming the MAC.
        n.approved = true;
        assert_eq!(profile_of(&plan(&n, &set, Some("a"))).map(|p| p.0), Some("a"));
        n.approved = false;
        n.assigned_profile = Some("a");
        assert_eq!(profile_of(&plan(&n, &set, None)).map(|p| p.0), Some("a"));
        n.assigned_profile = None;
        n.facts.mac = Some("52:54:00:00:00:01".parse().unwrap());
        assert_eq!(profile_of(&plan(&n, &set, None)).map(|p| p.0), Some("m"));
    }

    #[test]
    fn a_profile_without_secrets_needs_no_approval() {
        let (mut plain, rev) = profile("p", "compute-node", vec![]);
        plain.volumes.clear();
        let set = Set(vec![(plain, rev)]);
        let mut n = node();
        n.approved = false;
        assert_eq!(profile_of(&plan(&n, &set, Some("p"))).map(|p| p.0), Some("p"));
    }

    proptest::proptest! {
        /// Whatever the node: maintenance and spent retries always refuse, a boot
        /// always loads a built stage one, a profile boot is pinned to the profile
        /// it names (with that profile's revision and image), and the back-off grows
        /// with the failures.
        #[test]
        fn decisions_respect_precedence(
            state in proptest::sample::select(NodeState::ALL.to_vec()),
            failures in 0i64..8,
            assigned in proptest::option::of(proptest::sample::select(vec!["a", "unbuilt", "missing"])),
            labelled in proptest::bool::ANY,
            default_profile in proptest::option::of(proptest::sample::select(vec!["a", "missing"])),
            approved in proptest::bool::ANY,
            in_state_secs in 0u64..400,
        ) {
            let by_label = Selector { labels: [("role".into(), "hv".into())].into(), ..Selector::default() };
            let set = Set(vec![profile("a", "compute-node", vec![]), profile("b", "compute-node", vec![by_label]),
                profile("unbuilt", "nope", vec![])]);
            let mut n = node();
            n.state = state;
            n.failures = failures;
            n.assigned_profile = assigned;
            n.approved = approved;
            n.in_state_for = Duration::from_secs(in_state_secs);
            if labelled {
                n.facts.labels.insert("role".into(), "hv".into());
            }
            let lifecycle = lifecycle();
            let decision = plan(&n, &set, default_profile);
            match decision {
                Decision::Refuse(Refusal::Maintenance { .. }) => proptest::prop_assert_eq!(state, NodeState::Maintenance),
                Decision::Refuse(Refusal::RetriesExhausted { failures: f }) => {
                    proptest::prop_assert!(state != NodeState::Maintenance);
                    proptest::prop_assert!(i64::from(f) > i64::from(lifecycle.max_retries));
                }
                Decision::Refuse(Refusal::Unbootable { .. }) => {
                    proptest::prop_assert!(state != NodeState::Maintenance && failures <= 3);
                }
                Decision::Refuse(Refusal::BackingOff { remaining, .. }) => {
                    proptest::prop_assert_eq!(state, NodeState::Failed);
                    let delay = lifecycle.retry_delay(failures as u32).unwrap_or_default();
                    proptest::prop_assert_eq!(remaining + Duration::from_secs(in_state_secs), delay);
                }
                Decision::Boot(plan) => {
                    proptest::prop_assert!(state != NodeState::Maintenance && failures <= 3);
                    proptest::prop_assert_eq!(&plan.stage1.name, "stage1");
                    if state == NodeState::Failed {
                        let delay = lifecycle.retry_delay(failures as u32).unwrap_or_default();
                        proptest::prop_assert!(Duration::from_secs(in_state_secs) >= delay);
                    }
                    // Every profile here declares a volume: only vouched-for nodes get one.
                    let vouched = approved || assigned.is_some() || labelled;
                    match (&plan.profile, assigned) {
                        (Some(_), _) if !vouched => proptest::prop_assert!(false, "secrets for an unvouched node"),
                        (Some(boot), Some(name)) => proptest::prop_assert_eq!(boot.profile.as_str(), name),
                        (Some(boot), None) if labelled => proptest::prop_assert_eq!(boot.profile.as_str(), "b"),
                        (Some(boot), None) => proptest::prop_assert_eq!(Some(boot.profile.as_str()), default_profile),
                        (None, _) => proptest::prop_assert!(
                            plan.awaiting_approval.is_some() || (assigned.is_none() && !labelled && default_profile.is_none())
                        ),
                    }
                    if let Some(boot) = &plan.profile {
                        proptest::prop_assert_eq!(&boot.revision, &format!("rev-{}", boot.profile));
                        proptest::prop_assert_eq!(&boot.image.name, "compute-node");
                    }
                }
            }
        }
    }

    #[test]
    fn volumes_are_named_for_the_node() {
        let (p, _) = profile("a", "compute-node", vec![]);
        assert_eq!(volumes_wanted(&p, "n1"), [VolumeWanted { name: "n1-vm".into(), size_bytes: 1 << 30 }]);
    }
}
