//! The rolling re-provision ("rollout") as a pure state machine: the persisted
//! rollout, fresh observations of its nodes, hook and power results, an operator
//! command and `now` in; the next persisted rollout, the actions to run and the
//! events to record out. It owns the sequencing rules (batch, failure budget,
//! pause, halt, abort, timeouts); it must not touch hooks, BMCs, the store or a
//! clock: the server's driver does, around [`step`].
//!
//! Per node: drain hook → reboot (BMC power cycle with a one-time PXE override, or
//! the agent's reboot when the node has no BMC) → wait for `ready` on the target
//! revision → undrain hook → done. Either hook may be absent.
//!
//! # The driver's contract (what makes a restart safe)
//!
//! 1. Call [`step`] with the persisted rollout, an observation of every rollout
//!    node that still exists (one store snapshot), the results that came back,
//!    at most one operator command, and `now`.
//! 2. Persist [`Next::rollout`] and [`Next::events`] in one transaction.
//! 3. Only then run [`Next::actions`], each bounded by its timeout in the spec,
//!    and feed each result back (with the attempt the action carried).
//!
//! Every action is emitted in the same step as the phase that records it
//! ("drain started at T"), so a crash before step 2 loses both (the next step
//! decides again: the action never ran), and a crash after it leaves a node in
//! `Draining`/`Rebooting`/`Undraining` with no result: it waits out the step's
//! timeout and fails. An action is therefore run **at most once per attempt**,
//! never twice: hooks need not be idempotent (a webhook that moves capacity, a
//! command that pages someone), and a power cycle of a node that did reboot
//! would cut its new boot short. Retrying is the operator's call (`resume`,
//! which starts a new attempt); results carry the attempt so a late result of
//! an old attempt is ignored.
//!
//! # Down, in flight, and the batch
//!
//! A node is *in flight* from drain start until its undrain finished, and *down*
//! from drain start until it is seen ready (`down_since_ms`). A node holds one of
//! the `batch_size` slots while it is in flight **or** down, so a node that failed
//! while down (a boot that never came up) keeps its slot until it is seen `ready`
//! again (on any revision): the batch bounds the capacity the rollout takes away,
//! failures included; the failure budget bounds how many nodes fail.
//!
//! # Ending
//!
//! The rollout halts when more than `max_failures` nodes are `Failed` (nodes in
//! flight still finish); `resume` puts failed nodes back to `Pending` for a new
//! attempt. It is `Done` when no node is pending or in flight and it did not
//! halt: that includes up to `max_failures` failed nodes, listed by
//! [`Rollout::progress`] (a rollout with failures is not silently a success).

use crate::node::NodeState;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// What an operator asked for, validated by [`Rollout::new`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RolloutSpec {
    /// Nodes that may be in flight or down at once.
    pub batch_size: u32,
    /// Failed nodes tolerated; one more halts the rollout.
    pub max_failures: u32,
    /// From the reboot's result until the node is ready on the target revision.
    pub ready_timeout_ms: i64,
    /// Each hook (drain, undrain), from the moment it is started.
    pub hook_timeout_ms: i64,
    /// From the reboot being issued until its result comes back.
    pub reboot_timeout_ms: i64,
    /// Whether a drain hook runs (what it runs, a command or a webhook, is the
    /// server's: the core only sequences it).
    pub drain_hook: bool,
    pub undrain_hook: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum SpecError {
    #[error("batch size must be at least 1")]
    ZeroBatch,
    #[error("a rollout needs at least one node")]
    NoNodes,
    #[error("node {0} is listed twice")]
    DuplicateNode(i64),
    #[error("{0} must be positive")]
    Timeout(&'static str),
}

/// The rollout as a whole.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "status", rename_all = "snake_case")]
pub enum RolloutStatus {
    Running,
    /// An operator paused it: nothing new starts, nodes in flight finish.
    Paused,
    /// The failure budget ran out: nothing new starts until `resume`.
    Halted {
        reason: String,
    },
    /// Terminal: nodes in flight were left to the operator.
    Aborted,
    /// Terminal: nothing pending or in flight, within the failure budget.
    Done,
}

impl RolloutStatus {
    pub fn name(&self) -> &'static str {
        match self {
            RolloutStatus::Running => "running",
            RolloutStatus::Paused => "paused",
            RolloutStatus::Halted { .. } => "halted",
            RolloutStatus::Aborted => "aborted",
            RolloutStatus::Done => "done",
        }
    }

    pub fn is_terminal(&self) -> bool {
        matches!(self, RolloutStatus::Aborted | RolloutStatus::Done)
    }

    /// Whether `command` applies now; the API refuses it (409) otherwise, and
    /// [`step`] ignores it.
    pub fn accepts(&self, command: Command) -> Result<(), CommandRefused> {
        let ok = match command {
            Command::Pause => matches!(self, RolloutStatus::Running),
            Command::Resume => matches!(self, RolloutStatus::Paused | RolloutStatus::Halted { .. }),
            Command::Abort => !self.is_terminal(),
        };
        if ok {
            Ok(())
        } else {
            Err(CommandRefused { command, status: self.name() })
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("cannot {command:?} a rollout that is {status}")]
pub struct CommandRefused {
    pub command: Command,
    pub status: &'static str,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Command {
    Pause,
    /// From paused or halted: failed nodes are retried, the failure count starts over.
    Resume,
    Abort,
}

/// Where one node is in the rollout. Times are the driver's `now` when the phase began.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "phase", rename_all = "snake_case")]
pub enum NodePhase {
    Pending,
    Draining {
        since_ms: i64,
    },
    Rebooting {
        since_ms: i64,
    },
    /// `reboot_issued_ms` tells the new boot from the old one; the ready timeout
    /// runs from `since_ms` (the reboot's result).
    WaitingReady {
        reboot_issued_ms: i64,
        since_ms: i64,
    },
    Undraining {
        since_ms: i64,
    },
    Done {
        at_ms: i64,
    },
    Failed {
        reason: String,
        at_ms: i64,
    },
    /// The rollout was aborted while this node was in flight, in phase `during`:
    /// it was left as it was.
    Aborted {
        at_ms: i64,
        during: String,
    },
}

impl NodePhase {
    pub fn name(&self) -> &'static str {
        match self {
            NodePhase::Pending => "pending",
            NodePhase::Draining { .. } => "draining",
            NodePhase::Rebooting { .. } => "rebooting",
            NodePhase::WaitingReady { .. } => "waiting_ready",
            NodePhase::Undraining { .. } => "undraining",
            NodePhase::Done { .. } => "done",
            NodePhase::Failed { .. } => "failed",
            NodePhase::Aborted { .. } => "aborted",
        }
    }

    /// From drain start until the undrain finished.
    pub fn in_flight(&self) -> bool {
        matches!(
            self,
            NodePhase::Draining { .. }
                | NodePhase::Rebooting { .. }
                | NodePhase::WaitingReady { .. }
                | NodePhase::Undraining { .. }
        )
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutNode {
    pub node_id: i64,
    pub phase: NodePhase,
    /// Attempts started (a resume retries a failed node with the next one).
    pub attempts: u32,
    /// Set at drain start, cleared when the node is seen ready.
    pub down_since_ms: Option<i64>,
}

impl RolloutNode {
    /// Holds a batch slot.
    fn occupies(&self) -> bool {
        self.phase.in_flight() || self.down_since_ms.is_some()
    }
}

/// A rollout and its nodes, in the operator's order: the whole persisted state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Rollout {
    pub spec: RolloutSpec,
    pub status: RolloutStatus,
    pub nodes: Vec<RolloutNode>,
}

/// What the store says about a node now.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeSeen {
    pub state: NodeState,
    /// When the node's current boot started, if it has one.
    pub boot_started_at_ms: Option<i64>,
    /// The current boot is of the rollout's target revision (the server compares).
    pub boot_revision_matches: bool,
    /// Why the current boot failed, when `state` is `Failed`.
    pub boot_failed_reason: Option<String>,
    /// Reboot through the BMC; otherwise through the node's agent.
    pub has_bmc: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum StepKind {
    Drain,
    Reboot,
    Undrain,
}

/// The result of an [`Action`], reported back with the attempt it carried.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct StepResult {
    pub node_id: i64,
    pub attempt: u32,
    pub step: StepKind,
    pub result: Result<(), String>,
}

/// Everything one [`step`] reacts to besides the persisted rollout.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Input {
    pub command: Option<Command>,
    pub results: Vec<StepResult>,
    /// Every rollout node that still exists; a missing one was deleted.
    pub seen: BTreeMap<i64, NodeSeen>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RebootVia {
    /// One-time PXE boot override, then a power cycle.
    BmcPxeOnce,
    /// Ask the booted node's agent to reboot.
    Agent,
}

/// What the driver must do after persisting the step.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(tag = "action", rename_all = "snake_case")]
pub enum Action {
    Drain { node_id: i64, attempt: u32 },
    Reboot { node_id: i64, attempt: u32, via: RebootVia },
    Undrain { node_id: i64, attempt: u32 },
}

/// A line for the event log, recorded with the step's state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RolloutEvent {
    pub node_id: Option<i64>,
    pub message: String,
}

/// What a [`step`] decided: persist `rollout` and `events` together, then run `actions`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Next {
    pub rollout: Rollout,
    pub actions: Vec<Action>,
    pub events: Vec<RolloutEvent>,
}

/// For the CLI and the API.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Progress {
    pub status: RolloutStatus,
    pub total: u32,
    pub pending: u32,
    pub draining: u32,
    pub rebooting: u32,
    pub waiting_ready: u32,
    pub undraining: u32,
    pub done: u32,
    pub failed: u32,
    pub aborted: u32,
    pub failures: Vec<NodeFailure>,
    /// Nodes down now (drained and not yet seen ready), failed ones included.
    pub down: Vec<i64>,
    /// Nodes done, out of all, rounded down.
    pub percent: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeFailure {
    pub node_id: i64,
    pub reason: String,
}

impl Rollout {
    /// A running rollout over `node_ids`, in that order, nothing started yet.
    pub fn new(spec: RolloutSpec, node_ids: &[i64]) -> Result<Rollout, SpecError> {
        if spec.batch_size == 0 {
            return Err(SpecError::ZeroBatch);
        }
        for (name, value) in [
            ("ready timeout", spec.ready_timeout_ms),
            ("hook timeout", spec.hook_timeout_ms),
            ("reboot timeout", spec.reboot_timeout_ms),
        ] {
            if value <= 0 {
                return Err(SpecError::Timeout(name));
            }
        }
        if node_ids.is_empty() {
            return Err(SpecError::NoNodes);
        }
        let mut seen = std::collections::BTreeSet::new();
        if let Some(&dup) = node_ids.iter().find(|&&id| !seen.insert(id)) {
            return Err(SpecError::DuplicateNode(dup));
        }
        let nodes = node_ids
            .iter()
            .map(|&node_id| RolloutNode { node_id, phase: NodePhase::Pending, attempts: 0, down_since_ms: None })
            .collect();
        Ok(Rollout { spec, status: RolloutStatus::Running, nodes })
    }

    /// Nodes failed since the start or the last resume.
    pub fn failures(&self) -> u32 {
        count(self.nodes.iter().filter(|n| matches!(n.phase, NodePhase::Failed { .. })))
    }

    pub fn in_flight(&self) -> u32 {
        count(self.nodes.iter().filter(|n| n.phase.in_flight()))
    }

    pub fn down(&self) -> u32 {
        count(self.nodes.iter().filter(|n| n.down_since_ms.is_some()))
    }

    /// The earliest time a timeout fires, so the driver can sleep until then
    /// (it steps on every event too).
    pub fn next_deadline_ms(&self) -> Option<i64> {
        let spec = &self.spec;
        self.nodes
            .iter()
            .filter_map(|n| match n.phase {
                NodePhase::Draining { since_ms } | NodePhase::Undraining { since_ms } => {
                    Some(since_ms.saturating_add(spec.hook_timeout_ms))
                }
                NodePhase::Rebooting { since_ms } => Some(since_ms.saturating_add(spec.reboot_timeout_ms)),
                NodePhase::WaitingReady { since_ms, .. } => Some(since_ms.saturating_add(spec.ready_timeout_ms)),
                _ => None,
            })
            .min()
    }

    pub fn progress(&self) -> Progress {
        let mut p = Progress {
            status: self.status.clone(),
            total: count(self.nodes.iter()),
            pending: 0,
            draining: 0,
            rebooting: 0,
            waiting_ready: 0,
            undraining: 0,
            done: 0,
            failed: 0,
            aborted: 0,
            failures: Vec::new(),
            down: self.nodes.iter().filter(|n| n.down_since_ms.is_some()).map(|n| n.node_id).collect(),
            percent: 0,
        };
        for node in &self.nodes {
            let counter = match &node.phase {
                NodePhase::Pending => &mut p.pending,
                NodePhase::Draining { .. } => &mut p.draining,
                NodePhase::Rebooting { .. } => &mut p.rebooting,
                NodePhase::WaitingReady { .. } => &mut p.waiting_ready,
                NodePhase::Undraining { .. } => &mut p.undraining,
                NodePhase::Done { .. } => &mut p.done,
                NodePhase::Failed { reason, .. } => {
                    p.failures.push(NodeFailure { node_id: node.node_id, reason: reason.clone() });
                    &mut p.failed
                }
                NodePhase::Aborted { .. } => &mut p.aborted,
            };
            *counter += 1;
        }
        // u64: no overflow for any fleet size.
        p.percent = (u64::from(p.done) * 100).checked_div(u64::from(p.total)).unwrap_or(0) as u32;
        p
    }
}

fn count<T>(it: impl Iterator<Item = T>) -> u32 {
    u32::try_from(it.count()).unwrap_or(u32::MAX)
}

/// One decision: see the module's driver contract.
pub fn step(rollout: &Rollout, input: &Input, now_ms: i64) -> Next {
    let mut m = Machine { r: rollout.clone(), actions: Vec::new(), events: Vec::new(), now: now_ms };
    if let Some(command) = input.command {
        m.command(command);
    }
    for result in &input.results {
        m.result(result, &input.seen);
    }
    for i in 0..m.r.nodes.len() {
        m.observe(i, &input.seen);
    }
    m.start_pending(&input.seen);
    m.finish();
    Next { rollout: m.r, actions: m.actions, events: m.events }
}

struct Machine {
    r: Rollout,
    actions: Vec<Action>,
    events: Vec<RolloutEvent>,
    now: i64,
}

impl Machine {
    fn event(&mut self, node_id: Option<i64>, message: String) {
        self.events.push(RolloutEvent { node_id, message });
    }

    fn command(&mut self, command: Command) {
        if let Err(refused) = self.r.status.accepts(command) {
            // The API refuses these first; one that raced a status change is
            // recorded, not applied.
            self.event(None, format!("ignored: {refused}"));
            return;
        }
        match command {
            Command::Pause => {
                self.r.status = RolloutStatus::Paused;
                self.event(None, "paused: nodes in flight finish, no new ones start".into());
            }
            Command::Resume => {
                let mut retried = 0;
                for node in &mut self.r.nodes {
                    if matches!(node.phase, NodePhase::Failed { .. }) {
                        node.phase = NodePhase::Pending;
                        retried += 1;
                    }
                }
                self.r.status = RolloutStatus::Running;
                self.event(None, format!("resumed: {retried} failed node(s) will be retried"));
            }
            Command::Abort => {
                let now = self.now;
                let mut left = Vec::new();
                for node in &mut self.r.nodes {
                    if node.phase.in_flight() {
                        let during = node.phase.name().to_string();
                        node.phase = NodePhase::Aborted { at_ms: now, during };
                        left.push(node.node_id.to_string());
                    }
                }
                self.r.status = RolloutStatus::Aborted;
                let left = if left.is_empty() { "none".to_string() } else { left.join(", ") };
                self.event(None, format!("aborted; nodes left as they were for the operator: {left}"));
            }
        }
    }

    fn result(&mut self, result: &StepResult, seen: &BTreeMap<i64, NodeSeen>) {
        let Some(i) = self.r.nodes.iter().position(|n| n.node_id == result.node_id) else { return };
        let node = &self.r.nodes[i];
        // A result of an earlier attempt, or of a step the node already left
        // (timed out, aborted), changes nothing.
        if node.attempts != result.attempt {
            return;
        }
        let id = node.node_id;
        match (&node.phase, result.step, &result.result) {
            (NodePhase::Draining { .. }, StepKind::Drain, Ok(())) => {
                self.event(Some(id), "drain hook done".into());
                self.begin_reboot(i, seen);
            }
            (NodePhase::Draining { .. }, StepKind::Drain, Err(e)) => self.fail(i, format!("drain hook failed: {e}")),
            (&NodePhase::Rebooting { since_ms }, StepKind::Reboot, Ok(())) => {
                self.r.nodes[i].phase = NodePhase::WaitingReady { reboot_issued_ms: since_ms, since_ms: self.now };
                self.event(Some(id), "reboot issued; waiting for ready on the target revision".into());
            }
            (NodePhase::Rebooting { .. }, StepKind::Reboot, Err(e)) => self.fail(i, format!("reboot failed: {e}")),
            (NodePhase::Undraining { .. }, StepKind::Undrain, Ok(())) => {
                self.r.nodes[i].phase = NodePhase::Done { at_ms: self.now };
                self.event(Some(id), "undrain hook done; node done".into());
            }
            (NodePhase::Undraining { .. }, StepKind::Undrain, Err(e)) => {
                self.fail(i, format!("undrain hook failed (the node is up on the target revision): {e}"))
            }
            _ => {}
        }
    }

    fn begin_reboot(&mut self, i: usize, seen: &BTreeMap<i64, NodeSeen>) {
        let id = self.r.nodes[i].node_id;
        let via = match seen.get(&id) {
            None => return self.fail(i, "the node no longer exists".into()),
            Some(s) if s.state == NodeState::Maintenance => {
                return self.fail(i, "the node was put in maintenance".into());
            }
            Some(s) if s.has_bmc => RebootVia::BmcPxeOnce,
            Some(_) => RebootVia::Agent,
        };
        let node = &mut self.r.nodes[i];
        node.phase = NodePhase::Rebooting { since_ms: self.now };
        self.actions.push(Action::Reboot { node_id: id, attempt: node.attempts, via });
        let how = match via {
            RebootVia::BmcPxeOnce => "power cycle through the BMC with a one-time PXE boot",
            RebootVia::Agent => "reboot through the agent (no BMC)",
        };
        self.event(Some(id), format!("rebooting: {how}"));
    }

    fn observe(&mut self, i: usize, seen: &BTreeMap<i64, NodeSeen>) {
        let node = &self.r.nodes[i];
        let id = node.node_id;
        let s = seen.get(&id);
        let issued = match node.phase {
            NodePhase::Rebooting { since_ms } => Some(since_ms),
            NodePhase::WaitingReady { reboot_issued_ms, .. } => Some(reboot_issued_ms),
            _ => None,
        };
        if let Some(issued) = issued {
            let Some(s) = s else { return self.fail(i, "the node no longer exists".into()) };
            let new_boot = s.boot_started_at_ms.is_some_and(|t| t > issued);
            match s.state {
                NodeState::Maintenance => return self.fail(i, "the node was put in maintenance".into()),
                NodeState::Failed if new_boot => {
                    let why = s.boot_failed_reason.as_deref().unwrap_or("no reason given");
                    return self.fail(i, format!("the boot after the reboot failed: {why}"));
                }
                // Also from Rebooting: a new boot on the target proves the reboot
                // happened even if its result is late (an agent reboot cuts the reply).
                NodeState::Ready if new_boot && s.boot_revision_matches => return self.ready(i),
                _ => {}
            }
        } else if !node.phase.in_flight()
            && node.down_since_ms.is_some()
            && s.is_some_and(|s| s.state == NodeState::Ready)
        {
            // A failed, retried or abandoned node that came back frees its slot.
            self.r.nodes[i].down_since_ms = None;
            self.event(Some(id), "up again".into());
        }
        self.check_timeout(i, s);
    }

    fn ready(&mut self, i: usize) {
        let now = self.now;
        let node = &mut self.r.nodes[i];
        let id = node.node_id;
        let down_for = node.down_since_ms.take().map(|t| now.saturating_sub(t));
        let attempt = node.attempts;
        if self.r.spec.undrain_hook {
            node.phase = NodePhase::Undraining { since_ms: now };
            self.actions.push(Action::Undrain { node_id: id, attempt });
        } else {
            node.phase = NodePhase::Done { at_ms: now };
        }
        let down = down_for.map(|ms| format!(" after {ms} ms down")).unwrap_or_default();
        let next = if self.r.spec.undrain_hook { "undraining" } else { "node done" };
        self.event(Some(id), format!("ready on the target revision{down}; {next}"));
    }

    fn check_timeout(&mut self, i: usize, seen: Option<&NodeSeen>) {
        let spec = &self.r.spec;
        let (since, limit, what) = match self.r.nodes[i].phase {
            NodePhase::Draining { since_ms } => (since_ms, spec.hook_timeout_ms, "the drain hook gave no result"),
            NodePhase::Rebooting { since_ms } => (since_ms, spec.reboot_timeout_ms, "the reboot gave no result"),
            NodePhase::WaitingReady { since_ms, .. } => {
                (since_ms, spec.ready_timeout_ms, "not ready on the target revision")
            }
            NodePhase::Undraining { since_ms } => (since_ms, spec.hook_timeout_ms, "the undrain hook gave no result"),
            _ => return,
        };
        if self.now.saturating_sub(since) < limit {
            return;
        }
        let last = match seen {
            Some(s) if matches!(self.r.nodes[i].phase, NodePhase::WaitingReady { .. }) => {
                let rev = if s.boot_revision_matches { "target" } else { "another" };
                format!(" (last seen {} on {rev} revision)", s.state)
            }
            _ => String::new(),
        };
        self.fail(i, format!("{what} within {limit} ms{last}"));
    }

    fn fail(&mut self, i: usize, reason: String) {
        let node = &mut self.r.nodes[i];
        let id = node.node_id;
        node.phase = NodePhase::Failed { reason: reason.clone(), at_ms: self.now };
        self.event(Some(id), format!("failed: {reason}"));
        let failures = self.r.failures();
        let max = self.r.spec.max_failures;
        // Halted keeps its first reason; Aborted and Done have nothing in flight.
        if failures > max && matches!(self.r.status, RolloutStatus::Running | RolloutStatus::Paused) {
            let reason = format!("node {id} failed: {reason} ({failures} failed, at most {max} allowed)");
            self.event(None, format!("halted: {reason}"));
            self.r.status = RolloutStatus::Halted { reason };
        }
    }

    fn start_pending(&mut self, seen: &BTreeMap<i64, NodeSeen>) {
        let batch = self.r.spec.batch_size;
        let mut occupied = count(self.r.nodes.iter().filter(|n| n.occupies()));
        for i in 0..self.r.nodes.len() {
            // A node failing at its start may halt the rollout midway.
            if self.r.status != RolloutStatus::Running {
                return;
            }
            let node = &self.r.nodes[i];
            if node.phase != NodePhase::Pending {
                continue;
            }
            // A retried node that is still down already holds its slot.
            let holds_slot = node.down_since_ms.is_some();
            if !holds_slot && occupied >= batch {
                continue;
            }
            if !holds_slot {
                occupied += 1;
            }
            self.start(i, seen);
            if !self.r.nodes[i].occupies() {
                occupied -= 1;
            }
        }
    }

    fn start(&mut self, i: usize, seen: &BTreeMap<i64, NodeSeen>) {
        let now = self.now;
        let node = &mut self.r.nodes[i];
        node.attempts = node.attempts.saturating_add(1);
        let (id, attempt) = (node.node_id, node.attempts);
        match seen.get(&id) {
            None => return self.fail(i, "the node no longer exists".into()),
            Some(s) if s.state == NodeState::Maintenance => return self.fail(i, "the node is in maintenance".into()),
            Some(_) => {}
        }
        let node = &mut self.r.nodes[i];
        node.down_since_ms = node.down_since_ms.or(Some(now));
        if self.r.spec.drain_hook {
            node.phase = NodePhase::Draining { since_ms: now };
            self.actions.push(Action::Drain { node_id: id, attempt });
            self.event(Some(id), format!("attempt {attempt}: draining"));
        } else {
            self.event(Some(id), format!("attempt {attempt}: no drain hook"));
            self.begin_reboot(i, seen);
        }
    }

    fn finish(&mut self) {
        if !matches!(self.r.status, RolloutStatus::Running | RolloutStatus::Paused) {
            return;
        }
        if self.r.nodes.iter().any(|n| n.phase == NodePhase::Pending || n.phase.in_flight()) {
            return;
        }
        let p = self.r.progress();
        let failed = if p.failures.is_empty() {
            String::new()
        } else {
            let ids: Vec<String> = p.failures.iter().map(|f| f.node_id.to_string()).collect();
            format!(" (failed: {})", ids.join(", "))
        };
        self.r.status = RolloutStatus::Done;
        self.event(None, format!("done: {} of {} nodes done, {} failed{failed}", p.done, p.total, p.failed));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn spec(batch_size: u32, max_failures: u32) -> RolloutSpec {
        RolloutSpec {
            batch_size,
            max_failures,
            ready_timeout_ms: 60_000,
            hook_timeout_ms: 10_000,
            reboot_timeout_ms: 5_000,
            drain_hook: true,
            undrain_hook: true,
        }
    }

    /// Up on the old revision since t=0.
    fn up_old() -> NodeSeen {
        NodeSeen {
            state: NodeState::Ready,
            boot_started_at_ms: Some(0),
            boot_revision_matches: false,
            boot_failed_reason: None,
            has_bmc: true,
        }
    }

    /// A driver and a world on a virtual clock: persists every step, records every action.
    struct Sim {
        r: Rollout,
        now: i64,
        seen: BTreeMap<i64, NodeSeen>,
        results: Vec<StepResult>,
        actions: Vec<Action>,
        events: Vec<RolloutEvent>,
    }

    impl Sim {
        fn new(spec: RolloutSpec, ids: &[i64]) -> Sim {
            let r = Rollout::new(spec, ids).expect("valid spec");
            let seen = ids.iter().map(|&id| (id, up_old())).collect();
            Sim { r, now: 1_000, seen, results: Vec::new(), actions: Vec::new(), events: Vec::new() }
        }

        fn step_with(&mut self, command: Option<Command>) -> Vec<Action> {
            let input = Input { command, results: std::mem::take(&mut self.results), seen: self.seen.clone() };
            let next = step(&self.r, &input, self.now);
            assert!(next.rollout.in_flight() <= next.rollout.spec.batch_size);
            assert!(next.rollout.down() <= next.rollout.spec.batch_size);
            self.r = next.rollout;
            self.actions.extend(next.actions.iter().cloned());
            self.events.extend(next.events);
            next.actions
        }

        fn step(&mut self) -> Vec<Action> {
            self.step_with(None)
        }

        fn advance(&mut self, ms: i64) -> &mut Sim {
            self.now += ms;
            self
        }

        fn node(&self, id: i64) -> &RolloutNode {
            self.r.nodes.iter().find(|n| n.node_id == id).expect("node in rollout")
        }

        fn report(&mut self, id: i64, step: StepKind, result: Result<(), &str>) -> &mut Sim {
            let attempt = self.node(id).attempts;
            self.results.push(StepResult { node_id: id, attempt, step, result: result.map_err(str::to_string) });
            self
        }

        /// The node's new boot started now and reached `state`.
        fn boot(&mut self, id: i64, state: NodeState, target: bool) -> &mut Sim {
            let seen = self.seen.get_mut(&id).expect("node seen");
            seen.state = state;
            seen.boot_started_at_ms = Some(self.now);
            seen.boot_revision_matches = target;
            seen.boot_failed_reason = (state == NodeState::Failed).then(|| "kernel panic".to_string());
            self
        }

        /// Carry one node through reboot and ready (drain already reported).
        fn reboot_and_ready(&mut self, id: i64) {
            self.report(id, StepKind::Reboot, Ok(())).advance(100).step();
            self.advance(100).boot(id, NodeState::Ready, true).step();
        }

        /// The cooperative world: every action succeeds and every reboot comes
        /// up ready on the target, until the rollout stops moving.
        fn run_ok(&mut self, max_steps: usize) {
            for _ in 0..max_steps {
                if self.r.status.is_terminal() {
                    return;
                }
                self.advance(100);
                for node in self.r.nodes.clone() {
                    let id = node.node_id;
                    match node.phase {
                        NodePhase::Draining { .. } => {
                            self.report(id, StepKind::Drain, Ok(()));
                        }
                        NodePhase::Rebooting { .. } => {
                            self.boot(id, NodeState::Ready, true).report(id, StepKind::Reboot, Ok(()));
                        }
                        NodePhase::Undraining { .. } => {
                            self.report(id, StepKind::Undrain, Ok(()));
                        }
                        _ => {}
                    }
                }
                self.step();
            }
        }

        fn phases(&self) -> Vec<&'static str> {
            self.r.nodes.iter().map(|n| n.phase.name()).collect()
        }
    }

    fn drain(node_id: i64, attempt: u32) -> Action {
        Action::Drain { node_id, attempt }
    }
    fn reboot(node_id: i64, attempt: u32) -> Action {
        Action::Reboot { node_id, attempt, via: RebootVia::BmcPxeOnce }
    }
    fn undrain(node_id: i64, attempt: u32) -> Action {
        Action::Undrain { node_id, attempt }
    }

    #[test]
    fn happy_path_three_nodes_batch_one_in_order() {
        let mut sim = Sim::new(spec(1, 0), &[1, 2, 3]);
        assert_eq!(sim.step(), [drain(1, 1)]);
        assert_eq!(sim.step(), [], "a drain in progress is not started again");
        assert_eq!(sim.report(1, StepKind::Drain, Ok(())).step(), [reboot(1, 1)]);
        assert_eq!(sim.report(1, StepKind::Reboot, Ok(())).advance(50).step(), []);
        assert!(matches!(sim.node(1).phase, NodePhase::WaitingReady { .. }));
        assert_eq!(sim.advance(50).boot(1, NodeState::Ready, true).step(), [undrain(1, 1)]);
        assert_eq!(sim.node(1).down_since_ms, None, "up once seen ready");
        assert_eq!(sim.report(1, StepKind::Undrain, Ok(())).step(), [drain(2, 1)], "node 1 done frees the slot");
        sim.run_ok(50);
        assert_eq!(sim.r.status, RolloutStatus::Done);
        assert_eq!(
            sim.actions,
            [
                drain(1, 1),
                reboot(1, 1),
                undrain(1, 1),
                drain(2, 1),
                reboot(2, 1),
                undrain(2, 1),
                drain(3, 1),
                reboot(3, 1),
                undrain(3, 1)
            ]
        );
        let p = sim.r.progress();
        assert_eq!((p.done, p.total, p.percent, p.failed), (3, 3, 100, 0));
        assert!(p.down.is_empty());
        assert!(sim.events.last().is_some_and(|e| e.message.starts_with("done: 3 of 3")));
    }

    #[test]
    fn batch_two_over_five_nodes_keeps_two_in_flight() {
        let mut sim = Sim::new(spec(2, 0), &[1, 2, 3, 4, 5]);
        let mut todo = sim.step();
        assert_eq!(todo, [drain(1, 1), drain(2, 1)]);
        let mut most = 0;
        for _ in 0..100 {
            if sim.r.status.is_terminal() {
                break;
            }
            sim.advance(100);
            // Node 1 is slow to boot: the others must not overtake the batch.
            for action in std::mem::take(&mut todo) {
                match action {
                    Action::Drain { node_id, .. } => {
                        sim.report(node_id, StepKind::Drain, Ok(()));
                    }
                    Action::Reboot { node_id, .. } => {
                        sim.report(node_id, StepKind::Reboot, Ok(()));
                    }
                    Action::Undrain { node_id, .. } => {
                        sim.report(node_id, StepKind::Undrain, Ok(()));
                    }
                }
            }
            for n in &sim.r.nodes.clone() {
                if matches!(n.phase, NodePhase::WaitingReady { .. }) && (n.node_id != 1 || sim.now > 3_000) {
                    sim.boot(n.node_id, NodeState::Ready, true);
                }
            }
            todo = sim.step();
            most = most.max(sim.r.in_flight());
        }
        assert_eq!(sim.r.status, RolloutStatus::Done);
        assert_eq!(most, 2);
        let drains: Vec<i64> = sim
            .actions
            .iter()
            .filter_map(|a| if let Action::Drain { node_id, .. } = a { Some(*node_id) } else { None })
            .collect();
        assert_eq!(drains, [1, 2, 3, 4, 5], "in the operator's order");
    }

    #[test]
    fn drain_failure_halts_with_the_next_node_untouched_then_resume_retries_it() {
        let mut sim = Sim::new(spec(1, 0), &[1, 2, 3]);
        sim.step();
        sim.report(1, StepKind::Drain, Ok(())).step();
        sim.reboot_and_ready(1);
        assert_eq!(sim.report(1, StepKind::Undrain, Ok(())).step(), [drain(2, 1)]);
        assert_eq!(sim.report(2, StepKind::Drain, Err("exit status 3: pods still running")).step(), []);
        let RolloutStatus::Halted { reason } = &sim.r.status else { panic!("halted: {:?}", sim.r.status) };
        assert!(reason.contains("node 2") && reason.contains("pods still running"), "{reason}");
        assert_eq!(sim.node(3).phase, NodePhase::Pending);
        assert_eq!(sim.node(2).down_since_ms, None, "the failed drain left it up (seen ready): slot free");
        assert_eq!(sim.advance(100_000).step(), [], "halted: nothing starts");
        assert_eq!(sim.r.status.accepts(Command::Pause).map_err(|e| e.status), Err("halted"));

        assert_eq!(sim.step_with(Some(Command::Resume)), [drain(2, 2)], "the failed node retried, attempt 2");
        assert_eq!(sim.r.status, RolloutStatus::Running);
        assert_eq!(sim.r.failures(), 0);
        sim.run_ok(50);
        assert_eq!(sim.r.status, RolloutStatus::Done);
        assert_eq!(sim.phases(), ["done"; 3]);
        assert_eq!(sim.node(2).attempts, 2);
        assert_eq!(sim.node(3).attempts, 1);
    }

    #[test]
    fn ready_timeout_fails_the_node() {
        let mut sim = Sim::new(spec(1, 1), &[1, 2]);
        sim.step();
        sim.report(1, StepKind::Drain, Ok(())).step();
        sim.report(1, StepKind::Reboot, Ok(())).step();
        sim.advance(100).boot(1, NodeState::Loading, true).step();
        assert_eq!(sim.r.next_deadline_ms(), Some(sim.now - 100 + 60_000));
        assert_eq!(sim.advance(59_899).step(), []);
        assert!(matches!(sim.node(1).phase, NodePhase::WaitingReady { .. }));
        assert_eq!(sim.advance(1).step(), [], "node 1 is still down: it keeps its slot");
        let NodePhase::Failed { reason, .. } = &sim.node(1).phase else { panic!("{:?}", sim.node(1).phase) };
        assert!(reason.contains("not ready on the target revision within 60000 ms"), "{reason}");
        assert_eq!(sim.r.status, RolloutStatus::Running, "one failure is within the budget");
        assert_eq!(sim.r.progress().down, [1]);
        // It comes up at last: the slot is free and node 2 starts.
        assert_eq!(sim.advance(100).boot(1, NodeState::Ready, true).step(), [drain(2, 1)]);
    }

    #[test]
    fn a_boot_that_fails_after_the_reboot_fails_the_node_at_once() {
        let mut sim = Sim::new(spec(1, 0), &[1, 2]);
        sim.seen.get_mut(&1).expect("seen").state = NodeState::Failed; // an old boot's failure: not this one
        sim.step();
        sim.report(1, StepKind::Drain, Ok(())).step();
        sim.report(1, StepKind::Reboot, Ok(())).step();
        assert!(matches!(sim.node(1).phase, NodePhase::WaitingReady { .. }));
        sim.advance(100).boot(1, NodeState::Failed, true).step();
        let NodePhase::Failed { reason, .. } = &sim.node(1).phase else { panic!("{:?}", sim.node(1).phase) };
        assert!(reason.contains("kernel panic"), "{reason}");
        assert!(matches!(sim.r.status, RolloutStatus::Halted { .. }));
        assert_eq!(sim.node(2).phase, NodePhase::Pending);
    }

    #[test]
    fn ready_on_the_old_revision_or_an_old_boot_does_not_count() {
        let mut sim = Sim::new(spec(1, 0), &[1]);
        sim.step();
        sim.report(1, StepKind::Drain, Ok(())).step();
        // The old boot still shows as current, even if the revision matches.
        sim.seen.get_mut(&1).expect("seen").boot_revision_matches = true;
        sim.report(1, StepKind::Reboot, Ok(())).advance(100).step();
        assert!(matches!(sim.node(1).phase, NodePhase::WaitingReady { .. }));
        // A new boot, but of the old revision.
        assert_eq!(sim.advance(100).boot(1, NodeState::Ready, false).step(), []);
        assert!(matches!(sim.node(1).phase, NodePhase::WaitingReady { .. }));
        assert!(sim.node(1).down_since_ms.is_some());
        sim.advance(60_000).step();
        let NodePhase::Failed { reason, .. } = &sim.node(1).phase else { panic!("{:?}", sim.node(1).phase) };
        assert!(reason.contains("another revision"), "{reason}");
    }

    #[test]
    fn undrain_failure_counts_but_the_node_is_up() {
        let mut sim = Sim::new(spec(1, 1), &[1, 2]);
        sim.step();
        sim.report(1, StepKind::Drain, Ok(())).step();
        sim.reboot_and_ready(1);
        assert_eq!(sim.report(1, StepKind::Undrain, Err("webhook 500")).step(), [drain(2, 1)]);
        let p = sim.r.progress();
        assert_eq!(p.failed, 1);
        assert!(p.failures[0].reason.contains("node is up") && p.failures[0].reason.contains("webhook 500"));
        assert_eq!(p.down, [2]);
        sim.run_ok(50);
        // Within the budget: done, with the failure listed.
        assert_eq!(sim.r.status, RolloutStatus::Done);
        let p = sim.r.progress();
        assert_eq!((p.done, p.failed, p.percent), (1, 1, 50));
        assert!(sim.events.last().is_some_and(|e| e.message.contains("failed: 1")), "{:?}", sim.events.last());
    }

    #[test]
    fn undrain_timeout_fails_the_node() {
        let mut sim = Sim::new(spec(1, 0), &[1]);
        sim.step();
        sim.report(1, StepKind::Drain, Ok(())).step();
        sim.reboot_and_ready(1);
        sim.advance(10_000).step();
        assert!(matches!(&sim.node(1).phase, NodePhase::Failed { reason, .. } if reason.contains("undrain hook")));
    }

    #[test]
    fn pause_lets_the_node_in_flight_finish_and_resume_continues() {
        let mut sim = Sim::new(spec(1, 0), &[1, 2]);
        sim.step();
        assert_eq!(sim.step_with(Some(Command::Pause)), []);
        assert_eq!(sim.r.status, RolloutStatus::Paused);
        sim.report(1, StepKind::Drain, Ok(())).step();
        sim.reboot_and_ready(1);
        assert_eq!(sim.report(1, StepKind::Undrain, Ok(())).step(), [], "paused: node 2 waits");
        assert_eq!(sim.node(1).phase, NodePhase::Done { at_ms: sim.now });
        assert_eq!(sim.node(2).phase, NodePhase::Pending);
        assert_eq!(sim.r.status, RolloutStatus::Paused);
        assert_eq!(sim.step_with(Some(Command::Resume)), [drain(2, 1)]);
        sim.run_ok(20);
        assert_eq!(sim.r.status, RolloutStatus::Done);
    }

    #[test]
    fn abort_leaves_nodes_in_flight_to_the_operator() {
        let mut sim = Sim::new(spec(2, 0), &[1, 2, 3]);
        sim.step();
        sim.report(1, StepKind::Drain, Ok(())).step();
        assert_eq!(sim.step_with(Some(Command::Abort)), []);
        assert_eq!(sim.r.status, RolloutStatus::Aborted);
        assert_eq!(sim.node(1).phase, NodePhase::Aborted { at_ms: sim.now, during: "rebooting".into() });
        assert_eq!(sim.node(2).phase, NodePhase::Aborted { at_ms: sim.now, during: "draining".into() });
        assert_eq!(sim.node(3).phase, NodePhase::Pending);
        // Late results and time change nothing; further commands are ignored.
        sim.report(1, StepKind::Reboot, Ok(())).report(2, StepKind::Drain, Ok(())).advance(1_000_000);
        assert_eq!(sim.step_with(Some(Command::Resume)), []);
        assert_eq!(sim.r.status, RolloutStatus::Aborted);
        assert!(sim.events.last().is_some_and(|e| e.message.starts_with("ignored")));
        assert_eq!(sim.phases(), ["aborted", "aborted", "pending"]);
    }

    #[test]
    fn restart_safety_a_hook_never_runs_twice() {
        let mut sim = Sim::new(spec(1, 0), &[1, 2]);
        // Crash before persisting: the step is lost, the next one decides the
        // same drain again; it never ran, so this is its first run.
        let before = sim.r.clone();
        let first = step(&before, &Input { seen: sim.seen.clone(), ..Input::default() }, sim.now);
        assert_eq!(first.actions, [drain(1, 1)]);
        assert_eq!(sim.step(), [drain(1, 1)]);
        // Persisted, then crashed before running it: the restarted driver has
        // only the persisted state, and never gets the drain again.
        for _ in 0..20 {
            assert_eq!(sim.advance(400).step(), []);
            assert!(matches!(sim.node(1).phase, NodePhase::Draining { .. }));
        }
        assert_eq!(sim.advance(2_000).step(), [], "the hook timeout ends the attempt, never a second run");
        assert!(
            matches!(&sim.node(1).phase, NodePhase::Failed { reason, .. } if reason.contains("drain hook gave no result"))
        );
        assert_eq!(sim.node(2).phase, NodePhase::Pending, "the batch and the budget still hold");
        // A late result of the lost attempt arriving after the resume is ignored.
        assert_eq!(sim.step_with(Some(Command::Resume)), [drain(1, 2)]);
        sim.results.push(StepResult { node_id: 1, attempt: 1, step: StepKind::Drain, result: Ok(()) });
        assert_eq!(sim.step(), []);
        assert!(matches!(sim.node(1).phase, NodePhase::Draining { .. }));
        // Same for a reboot lost in a crash: it times out, it is not re-issued.
        sim.report(1, StepKind::Drain, Ok(())).step();
        assert_eq!(sim.advance(4_999).step(), []);
        assert!(matches!(sim.node(1).phase, NodePhase::Rebooting { .. }));
        sim.advance(1).step();
        assert!(
            matches!(&sim.node(1).phase, NodePhase::Failed { reason, .. } if reason.contains("reboot gave no result"))
        );
        let runs = |a: &Action| sim.actions.iter().filter(|b| *b == a).count();
        assert!(sim.actions.iter().all(|a| runs(a) == 1), "{:?}", sim.actions);
    }

    #[test]
    fn no_bmc_reboots_through_the_agent_and_a_new_boot_proves_the_reboot() {
        let mut spec = spec(1, 0);
        spec.drain_hook = false;
        spec.undrain_hook = false;
        let mut sim = Sim::new(spec, &[7]);
        sim.seen.get_mut(&7).expect("seen").has_bmc = false;
        assert_eq!(sim.step(), [Action::Reboot { node_id: 7, attempt: 1, via: RebootVia::Agent }]);
        // The agent reboots before its reply gets out: no result, but the new boot is ready.
        sim.advance(100).boot(7, NodeState::Ready, true).step();
        assert_eq!(sim.node(7).phase, NodePhase::Done { at_ms: sim.now });
        assert_eq!(sim.r.status, RolloutStatus::Done);
    }

    #[test]
    fn maintenance_and_deleted_nodes_fail() {
        let mut sim = Sim::new(spec(3, 5), &[1, 2, 3]);
        sim.seen.get_mut(&1).expect("seen").state = NodeState::Maintenance;
        assert_eq!(sim.step(), [drain(2, 1), drain(3, 1)], "node 1 fails at its start, without a drain");
        assert!(matches!(&sim.node(1).phase, NodePhase::Failed { reason, .. } if reason.contains("maintenance")));
        assert_eq!(sim.node(1).down_since_ms, None);
        sim.report(2, StepKind::Drain, Ok(())).report(3, StepKind::Drain, Ok(())).step();
        sim.seen.remove(&2);
        sim.seen.get_mut(&3).expect("seen").state = NodeState::Maintenance;
        sim.step();
        assert!(matches!(&sim.node(2).phase, NodePhase::Failed { reason, .. } if reason.contains("no longer exists")));
        assert!(matches!(&sim.node(3).phase, NodePhase::Failed { reason, .. } if reason.contains("maintenance")));
        assert_eq!(sim.r.status, RolloutStatus::Done, "3 failures within a budget of 5");
    }

    #[test]
    fn a_failure_during_a_halt_keeps_the_first_reason() {
        let mut sim = Sim::new(spec(2, 0), &[1, 2, 3]);
        sim.step();
        sim.report(1, StepKind::Drain, Err("first")).step();
        sim.report(2, StepKind::Drain, Err("second")).step();
        let RolloutStatus::Halted { reason } = &sim.r.status else { panic!("{:?}", sim.r.status) };
        assert!(reason.contains("node 1") && reason.contains("first"), "{reason}");
        assert_eq!(sim.r.failures(), 2, "the node in flight still counts");
        assert_eq!(sim.node(3).phase, NodePhase::Pending);
    }

    #[test]
    fn specs_are_validated() {
        assert_eq!(Rollout::new(spec(0, 0), &[1]), Err(SpecError::ZeroBatch));
        assert_eq!(Rollout::new(spec(1, 0), &[]), Err(SpecError::NoNodes));
        assert_eq!(Rollout::new(spec(1, 0), &[1, 2, 1]), Err(SpecError::DuplicateNode(1)));
        let mut bad = spec(1, 0);
        bad.hook_timeout_ms = 0;
        assert_eq!(Rollout::new(bad, &[1]), Err(SpecError::Timeout("hook timeout")));
    }

    #[test]
    fn commands_are_checked_against_the_status() {
        use RolloutStatus::*;
        let halted = Halted { reason: "x".into() };
        assert!(Running.accepts(Command::Pause).is_ok() && Paused.accepts(Command::Pause).is_err());
        assert!(Paused.accepts(Command::Resume).is_ok() && halted.accepts(Command::Resume).is_ok());
        assert!(Running.accepts(Command::Resume).is_err() && Done.accepts(Command::Resume).is_err());
        assert!(halted.accepts(Command::Abort).is_ok() && Aborted.accepts(Command::Abort).is_err());
        assert_eq!(
            Done.accepts(Command::Abort).map_err(|e| e.to_string()),
            Err("cannot Abort a rollout that is done".into())
        );
    }

    #[test]
    fn everything_persisted_or_shown_is_serde() {
        fn serde<T: Serialize + serde::de::DeserializeOwned>() {}
        serde::<Rollout>();
        serde::<Input>();
        serde::<Action>();
        serde::<RolloutEvent>();
        serde::<Progress>();
    }

    // --- Property: random worlds, drivers that crash, operators that change their minds.

    #[derive(Debug, Clone)]
    enum Op {
        Tick(i64),
        /// Run the oldest pending action of node `n % len`: result ok or error.
        Run(usize, bool),
        /// The driver crashes: pending actions are lost.
        Crash,
        /// A step's output is lost before it was persisted.
        LostStep,
        /// Node `n % len` changes on its own: 0 ready target, 1 ready old, 2 failed, 3 maintenance, 4 booting, 5 deleted.
        World(usize, u8),
        Stale(usize),
        Cmd(Command),
    }

    fn op() -> impl Strategy<Value = Op> {
        // Abort ends everything: rare, so most cases get to the other rules.
        prop_oneof![
            40 => (0i64..6_000).prop_map(Op::Tick),
            60 => (0usize..8, proptest::bool::weighted(0.8)).prop_map(|(n, ok)| Op::Run(n, ok)),
            10 => Just(Op::Crash),
            10 => Just(Op::LostStep),
            20 => (0usize..8, 0u8..6).prop_map(|(n, w)| Op::World(n, w)),
            10 => (0usize..8).prop_map(Op::Stale),
            10 => prop_oneof![Just(Command::Pause), Just(Command::Resume)].prop_map(Op::Cmd),
            1 => Just(Op::Cmd(Command::Abort)),
        ]
    }

    fn rollout_spec() -> impl Strategy<Value = (RolloutSpec, usize, Vec<bool>)> {
        (
            1u32..=4,
            0u32..=2,
            1_000i64..10_000,
            1_000i64..10_000,
            1_000i64..10_000,
            any::<bool>(),
            any::<bool>(),
            1usize..=8,
        )
            .prop_flat_map(|(batch, max, ready, hook, reboot, drain, undrain, n)| {
                let spec = RolloutSpec {
                    batch_size: batch,
                    max_failures: max,
                    ready_timeout_ms: ready,
                    hook_timeout_ms: hook,
                    reboot_timeout_ms: reboot,
                    drain_hook: drain,
                    undrain_hook: undrain,
                };
                (Just(spec), Just(n), proptest::collection::vec(any::<bool>(), n))
            })
    }

    struct World {
        sim: Sim,
        ids: Vec<i64>,
        pending: Vec<Action>,
        ran: Vec<Action>,
    }

    impl World {
        fn step(&mut self, command: Option<Command>) -> Result<(), TestCaseError> {
            let before = self.sim.r.clone();
            let input = Input { command, results: std::mem::take(&mut self.sim.results), seen: self.sim.seen.clone() };
            let next = step(&before, &input, self.sim.now);
            let r = &next.rollout;
            let spec = &r.spec;
            prop_assert!(r.in_flight() <= spec.batch_size, "in flight {} > batch", r.in_flight());
            prop_assert!(r.down() <= spec.batch_size, "down {} > batch: {:?}", r.down(), r.nodes);
            prop_assert!(r.failures() <= spec.max_failures + spec.batch_size, "failures {}", r.failures());
            prop_assert!(r.spec == before.spec);
            let applied = match command {
                Some(c) => before.status.accepts(c).is_ok(),
                None => false,
            };
            let may_start = (before.status == RolloutStatus::Running
                && command != Some(Command::Pause)
                && command != Some(Command::Abort))
                || (command == Some(Command::Resume) && applied);
            for (old, new) in before.nodes.iter().zip(&r.nodes) {
                prop_assert_eq!(old.node_id, new.node_id);
                if matches!(old.phase, NodePhase::Done { .. }) {
                    prop_assert_eq!(&old.phase, &new.phase, "a done node stays done");
                }
                if old.phase == NodePhase::Pending && new.phase != NodePhase::Pending {
                    prop_assert!(may_start, "node {} started while {:?}", new.node_id, before.status);
                    prop_assert!(!matches!(r.status, RolloutStatus::Paused | RolloutStatus::Aborted));
                }
            }
            if before.status.is_terminal() {
                prop_assert_eq!(&before.status, &r.status);
            }
            self.sim.r = next.rollout;
            self.pending.extend(next.actions);
            Ok(())
        }

        fn run(&mut self, i: usize, ok: bool) {
            let action = self.pending.remove(i);
            let (id, attempt, kind) = match action {
                Action::Drain { node_id, attempt } => (node_id, attempt, StepKind::Drain),
                Action::Reboot { node_id, attempt, .. } => {
                    if ok {
                        if let Some(seen) = self.sim.seen.get_mut(&node_id) {
                            seen.state = NodeState::Booting;
                            seen.boot_started_at_ms = Some(self.sim.now + 1);
                            seen.boot_revision_matches = true;
                        }
                    }
                    (node_id, attempt, StepKind::Reboot)
                }
                Action::Undrain { node_id, attempt } => (node_id, attempt, StepKind::Undrain),
            };
            self.ran.push(action);
            let result = if ok { Ok(()) } else { Err("boom".to_string()) };
            self.sim.results.push(StepResult { node_id: id, attempt, step: kind, result });
        }
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 400, ..ProptestConfig::default() })]
        #[test]
        fn invariants_hold_and_a_cooperative_world_ends_it(
            (spec, n, bmcs) in rollout_spec(),
            ops in proptest::collection::vec(op(), 0..80),
        ) {
            check_world(spec, n, &bmcs, ops)?;
        }
    }

    fn check_world(spec: RolloutSpec, n: usize, bmcs: &[bool], ops: Vec<Op>) -> Result<(), TestCaseError> {
        let ids: Vec<i64> = (1..=n as i64).map(|i| i * 10).collect();
        let mut sim = Sim::new(spec, &ids);
        for (id, bmc) in ids.iter().zip(bmcs) {
            if let Some(seen) = sim.seen.get_mut(id) {
                seen.has_bmc = *bmc;
            }
        }
        let mut w = World { sim, ids: ids.clone(), pending: Vec::new(), ran: Vec::new() };
        w.step(None)?;
        for op in ops {
            match op {
                Op::Tick(ms) => {
                    w.sim.advance(ms);
                }
                Op::Run(k, ok) => {
                    let id = w.ids[k % w.ids.len()];
                    if let Some(i) = w.pending.iter().position(|a| action_node(a) == id) {
                        w.run(i, ok);
                    }
                }
                Op::Crash => w.pending.clear(),
                Op::LostStep => {
                    // Decided, never persisted, never run.
                    let input = Input { results: Vec::new(), seen: w.sim.seen.clone(), command: None };
                    let _ = step(&w.sim.r, &input, w.sim.now);
                    continue;
                }
                Op::World(k, what) => {
                    let id = w.ids[k % w.ids.len()];
                    let now = w.sim.now;
                    match what {
                        5 => {
                            w.sim.seen.remove(&id);
                        }
                        _ => {
                            let seen = w.sim.seen.entry(id).or_insert_with(up_old);
                            match what {
                                0 => {
                                    seen.state = NodeState::Ready;
                                    seen.boot_started_at_ms = Some(now);
                                    seen.boot_revision_matches = true;
                                }
                                1 => {
                                    seen.state = NodeState::Ready;
                                    seen.boot_started_at_ms = Some(now);
                                    seen.boot_revision_matches = false;
                                }
                                2 => {
                                    seen.state = NodeState::Failed;
                                    seen.boot_failed_reason = Some("panic".into());
                                }
                                3 => seen.state = NodeState::Maintenance,
                                _ => seen.state = NodeState::Booting,
                            }
                        }
                    }
                }
                Op::Stale(k) => {
                    let id = w.ids[k % w.ids.len()];
                    let attempt = w.sim.node(id).attempts.saturating_sub(1);
                    w.sim.results.push(StepResult { node_id: id, attempt, step: StepKind::Drain, result: Ok(()) });
                    w.sim.results.push(StepResult { node_id: id, attempt, step: StepKind::Reboot, result: Ok(()) });
                }
                Op::Cmd(c) => {
                    w.step(Some(c))?;
                    continue;
                }
            }
            w.step(None)?;
        }

        // Then the world cooperates: the nodes come back, every action
        // succeeds, every reboot comes up on the target. It must end.
        for id in &w.ids {
            let seen = w.sim.seen.entry(*id).or_insert_with(up_old);
            seen.state = NodeState::Ready;
        }
        if w.sim.r.status == RolloutStatus::Paused {
            // The operator's part of cooperating: a paused rollout waits for them.
            w.step(Some(Command::Resume))?;
        }
        let ended = |s: &RolloutStatus| {
            matches!(s, RolloutStatus::Done | RolloutStatus::Aborted | RolloutStatus::Halted { .. })
        };
        for _ in 0..(40 * n + 40) {
            if ended(&w.sim.r.status) && w.sim.r.in_flight() == 0 {
                break;
            }
            w.sim.advance(500);
            while !w.pending.is_empty() {
                w.run(0, true);
            }
            let now = w.sim.now;
            for n in w.sim.r.nodes.clone() {
                let waited_on = matches!(n.phase, NodePhase::WaitingReady { .. } | NodePhase::Rebooting { .. });
                if let Some(seen) = w.sim.seen.get_mut(&n.node_id) {
                    if waited_on && !seen.boot_revision_matches {
                        seen.boot_revision_matches = true;
                        seen.boot_started_at_ms = Some(now);
                    }
                    // Every boot (a late reboot's too) comes up.
                    seen.state = NodeState::Ready;
                }
            }
            w.step(None)?;
        }
        prop_assert!(
            ended(&w.sim.r.status),
            "still {:?}: {:?} seen {:?} pending {:?}",
            w.sim.r.status,
            w.sim.r.nodes,
            w.sim.seen,
            w.pending
        );
        prop_assert_eq!(w.sim.r.in_flight(), 0);

        // At most once: no action ran twice.
        for (i, a) in w.ran.iter().enumerate() {
            prop_assert!(!w.ran[i + 1..].contains(a), "{:?} ran twice", a);
        }
        Ok(())
    }

    fn action_node(action: &Action) -> i64 {
        match action {
            Action::Drain { node_id, .. } | Action::Reboot { node_id, .. } | Action::Undrain { node_id, .. } => {
                *node_id
            }
        }
    }
}
