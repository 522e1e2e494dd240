//! Drives rolling re-provisions: the thin I/O layer around the pure
//! `ramboot_core::rollout::step`.
//!
//! Every tick (and whenever an action finishes or an operator sends a command) the
//! driver claims the rollouts no live server drives (a lease in the row: a server
//! that died is replaced after [`LEASE_MS`]), observes each rollout's nodes in one
//! snapshot, steps it, persists the new state with its events in one transaction,
//! and only then runs the actions the step asked for: the drain and undrain hooks
//! (named in the config, never written through the API) and the reboot (a one-time
//! PXE override and a power cycle through the node's BMC, or, for a node without
//! one, a request its agent hears on `GET /boot/v1/command`). Results come back on
//! the next step. The core's contract makes this safe across a restart: an
//! action runs at most once per attempt.

use crate::config::{Config, Hook, HookAction};
use crate::store::{Actor, Node, NodeChange, RolloutRow, RolloutTarget, Store, StoreError};
use futures_util::future::BoxFuture;
use ramboot_core::node::NodeState;
use ramboot_core::rollout::{step, Action, Input, NodeSeen, RebootVia, StepKind, StepResult};
use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tracing::{info, info_span, warn, Instrument};

/// How often rollouts are stepped without a reason to (timeouts, new boots).
const TICK: Duration = Duration::from_secs(2);
/// A driver's claim on a rollout lasts this long unless renewed (every tick).
pub const LEASE_MS: i64 = 20_000;
/// Hooks and reboots running at once, over every rollout this server drives.
const MAX_ACTIONS: usize = 64;

/// Power-cycles a node into a one-time PXE boot through its BMC.
pub type BmcReboot = Arc<dyn Fn(Node) -> BoxFuture<'static, Result<(), String>> + Send + Sync>;

/// The rollout's reboot through `power`: a one-time PXE override, then a cycle.
pub fn bmc_reboot(power: Arc<crate::bmc::service::Power>) -> BmcReboot {
    Arc::new(move |node: Node| {
        let power = power.clone();
        Box::pin(async move {
            power.run(&node, crate::bmc::PowerCommand::Cycle, true).await.map(|_| ()).map_err(|e| e.to_string())
        })
    })
}

pub struct Driver {
    store: Store,
    config: Arc<Config>,
    reboot: Option<BmcReboot>,
    /// Results of actions, by rollout, waiting for its next step.
    results: Mutex<HashMap<i64, Vec<StepResult>>>,
    wake: tokio::sync::Notify,
    actions: Arc<tokio::sync::Semaphore>,
}

impl Driver {
    pub fn new(store: Store, config: Arc<Config>, reboot: Option<BmcReboot>) -> Arc<Driver> {
        Arc::new(Driver {
            store,
            config,
            reboot,
            results: Mutex::new(HashMap::new()),
            wake: tokio::sync::Notify::new(),
            actions: Arc::new(tokio::sync::Semaphore::new(MAX_ACTIONS)),
        })
    }

    /// Step at once (a command came in).
    pub fn wake(&self) {
        self.wake.notify_one();
    }

    fn name(&self) -> &str {
        &self.config.cluster.name
    }

    /// Until `cancel`. Actions in flight when it fires are dropped: the core fails
    /// them by their timeouts once a server steps the rollout again.
    pub async fn run(self: Arc<Self>, cancel: CancellationToken) {
        loop {
            match self.store.claim_rollouts(self.name(), crate::clock::now_ms(), LEASE_MS).await {
                Ok(ids) => {
                    for id in ids {
                        let span = info_span!("rollout", id);
                        if let Err(e) = self.step_once(id).instrument(span).await {
                            warn!(rollout = id, error = %e, "rollout step failed; retrying at the next tick");
                        }
                    }
                }
                Err(e) => warn!(error = %e, "claiming rollouts failed; retrying at the next tick"),
            }
            tokio::select! {
                _ = cancel.cancelled() => return,
                _ = tokio::time::sleep(TICK) => {}
                _ = self.wake.notified() => {}
            }
        }
    }

    async fn step_once(self: &Arc<Self>, id: i64) -> Result<(), StoreError> {
        let row = self.store.rollout(id).await?;
        if row.state.status.is_terminal() {
            return Ok(());
        }
        let ids = row.targets.keys().copied().collect();
        let snapshot = self.store.nodes_with_boots(&ids).await?;
        let seen = snapshot
            .iter()
            .map(|(&id, (node, boot))| {
                let target = row.targets.get(&id);
                let matches = match (boot, target) {
                    (Some(b), Some(t)) => {
                        b.profile == t.profile
                            && t.digest.as_ref().is_none_or(|d| b.image.as_ref().is_some_and(|i| &i.digest == d))
                    }
                    _ => false,
                };
                let failed = (node.state == NodeState::Failed)
                    .then(|| format!("its boot failed (see `ramboot events --node {}`)", node.mac));
                let seen = NodeSeen {
                    state: node.state,
                    boot_started_at_ms: boot.as_ref().map(|b| b.started_at_ms),
                    boot_revision_matches: matches,
                    boot_failed_reason: failed,
                    has_bmc: node.bmc.is_some() && self.reboot.is_some(),
                };
                (id, seen)
            })
            .collect();
        let results = self.results.lock().map(|mut r| r.remove(&id).unwrap_or_default()).unwrap_or_default();
        let input = Input { command: row.command, results: results.clone(), seen };
        let now = crate::clock::now_ms();
        let next = step(&row.state, &input, now);
        let unchanged = next.rollout == row.state && next.events.is_empty() && row.command.is_none();
        if unchanged && next.actions.is_empty() {
            return Ok(());
        }
        let saved = self.store.save_rollout_step(id, self.name(), &next.rollout, &next.events, row.command, now).await;
        match saved {
            Ok(true) => {}
            Ok(false) => return Ok(()), // another server drives it now; its results time out there
            Err(e) => {
                // Not persisted: the results are fed to the next step instead.
                if let Ok(mut r) = self.results.lock() {
                    r.entry(id).or_default().extend(results);
                }
                return Err(e);
            }
        }
        for e in &next.events {
            info!(rollout = id, node = e.node_id, "{}", e.message);
        }
        if next.rollout.status != row.state.status {
            info!(rollout = id, status = next.rollout.status.name(), "rollout status changed");
        }
        // One shared copy of the row for every action of this step; each action gets
        // only its own node.
        let row = Arc::new(row);
        for action in next.actions {
            let node = snapshot.get(&step_of(&action).0).map(|(n, _)| n.clone());
            let (driver, row) = (self.clone(), row.clone());
            tokio::spawn(async move { driver.act(&row, action, node.as_ref()).await });
        }
        Ok(())
    }

    /// Run one action and queue its result for the rollout's next step.
    async fn act(self: Arc<Self>, row: &RolloutRow, action: Action, node: Option<&Node>) {
        let (node_id, attempt, kind) = step_of(&action);
        let result = match (node, self.actions.clone().acquire_owned().await) {
            (None, _) => Err("the node was deleted".to_string()),
            (_, Err(_)) => Err("the server is stopping".to_string()),
            (Some(node), Ok(_permit)) => match action {
                Action::Drain { .. } => self.hook(row, "drain", row.hooks.drain.as_deref(), node).await,
                Action::Undrain { .. } => self.hook(row, "undrain", row.hooks.undrain.as_deref(), node).await,
                Action::Reboot { via, .. } => self.reboot(row, node, via).await,
            },
        };
        if let Err(reason) = &result {
            warn!(rollout = row.id, node = node_id, step = ?kind, %reason, "rollout action failed");
        }
        if let Ok(mut r) = self.results.lock() {
            r.entry(row.id).or_default().push(StepResult { node_id, attempt, step: kind, result });
        }
        self.wake();
    }

    /// The rollout as the author of the changes it makes to nodes.
    fn actor(&self, row: &RolloutRow) -> Actor {
        Actor::Server { name: format!("{} (rollout {})", self.name(), row.id) }
    }

    async fn reboot(&self, row: &RolloutRow, node: &Node, via: RebootVia) -> Result<(), String> {
        let now = crate::clock::now_ms();
        let actor = self.actor(row);
        if let Some(RolloutTarget { profile, assign: true, .. }) = row.targets.get(&node.id) {
            if node.profile.as_ref() != Some(profile) {
                let change = NodeChange { profile: Some(Some(profile.clone())), ..NodeChange::default() };
                self.store.update_node(node.id, &change, &actor, now).await.map_err(|e| e.to_string())?;
            }
        }
        match (via, &self.reboot) {
            (RebootVia::BmcPxeOnce, Some(reboot)) => {
                // A fresh boot: failures and backoff cleared, any boot in progress superseded.
                self.store.reprovision(node.id, &actor, now).await.map_err(|e| e.to_string())?;
                reboot(node.clone()).await
            }
            // No BMC (or no power service): the node's agent reboots it when it next
            // polls `GET /boot/v1/command`. Not a reprovision: that would end the
            // current boot, and with it the token the agent polls with. The request
            // clears the failure count itself; the core waits for a new boot on the
            // target revision, so an agent that never hears it fails by the ready
            // timeout.
            _ => self.store.request_reboot(node.id, &actor, now).await.map_err(|e| e.to_string()),
        }
    }

    async fn hook(&self, row: &RolloutRow, which: &str, name: Option<&str>, node: &Node) -> Result<(), String> {
        let Some(name) = name else { return Ok(()) };
        let Some(hook) = self.config.hooks.get(name) else {
            return Err(format!("{which} hook {name:?} is not in this server's config (`hooks:`)"));
        };
        // The core says which hook failed; this names the configured one.
        run_hook(hook, which, row.id, node).await.map_err(|e| format!("{name}: {e}"))
    }
}

/// The node, attempt and step an action is for.
fn step_of(action: &Action) -> (i64, u32, StepKind) {
    match *action {
        Action::Drain { node_id, attempt } => (node_id, attempt, StepKind::Drain),
        Action::Reboot { node_id, attempt, .. } => (node_id, attempt, StepKind::Reboot),
        Action::Undrain { node_id, attempt } => (node_id, attempt, StepKind::Undrain),
    }
}

/// Run a hook for `node`: a command (no shell) with the node in its environment,
/// or a webhook POST of the same facts as JSON. Bounded by the hook's timeout.
pub async fn run_hook(hook: &Hook, which: &str, rollout: i64, node: &Node) -> Result<(), String> {
    let facts = [
        ("RAMBOOT_HOOK", which.to_string()),
        ("RAMBOOT_ROLLOUT", rollout.to_string()),
        ("RAMBOOT_NODE_ID", node.id.to_string()),
        ("RAMBOOT_NODE_MAC", node.mac.to_string()),
        ("RAMBOOT_NODE_HOSTNAME", node.hostname.clone()),
        ("RAMBOOT_NODE_IP", node.ip.clone().unwrap_or_default()),
    ];
    match &hook.action {
        HookAction::Command(argv) => {
            let mut cmd = tokio::process::Command::new(&argv[0]);
            cmd.args(&argv[1..]).envs(facts.iter().map(|(k, v)| (*k, v.as_str()))).kill_on_drop(true);
            cmd.stdin(std::process::Stdio::null());
            let output = tokio::time::timeout(hook.timeout, cmd.output())
                .await
                .map_err(|_| format!("timed out after {:?}", hook.timeout))?
                .map_err(|e| format!("cannot run {}: {e}", argv[0]))?;
            if output.status.success() {
                return Ok(());
            }
            // The hook's own last words say why, better than any code.
            let stderr = String::from_utf8_lossy(&output.stderr);
            let said = stderr.lines().rev().find(|l| !l.trim().is_empty()).unwrap_or("").trim();
            let said: String = said.chars().take(200).collect();
            Err(format!("{} ({said})", output.status))
        }
        HookAction::Webhook(url) => {
            let body: serde_json::Map<String, serde_json::Value> = facts
                .iter()
                .map(|(k, v)| (k.trim_start_matches("RAMBOOT_").to_lowercase(), serde_json::Value::from(v.as_str())))
                .collect();
            let (url, timeout) = (url.clone(), hook.timeout);
            let call = tokio::task::spawn_blocking(move || {
                let agent = ureq::AgentBuilder::new().timeout(timeout).redirects(0).build();
                match agent.post(&url).send_json(serde_json::Value::Object(body)) {
                    Ok(_) => Ok(()),
                    Err(ureq::Error::Status(code, resp)) => {
                        let text: String = resp.into_string().unwrap_or_default().chars().take(200).collect();
                        Err(format!("{url} answered HTTP {code}: {}", text.trim()))
                    }
                    Err(e) => Err(format!("{url}: {e}")),
                }
            });
            call.await.map_err(|e| format!("webhook task failed: {e}"))?
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{BufRead, BufReader, Read, Write};

    fn node() -> Node {
        serde_json::from_value(serde_json::json!({
            "id": 7, "mac": "52:54:00:00:00:07", "hostname": "hv-7", "ip": "10.0.0.7", "profile": null,
            "state": "ready", "state_since_ms": 0, "current_boot_id": null, "inventory": null, "labels": {},
            "arch": null, "failures": 0, "maintenance_reason": null, "reserved_ip": null, "client_uuid": null,
            "approved": true, "ip_seen_at_ms": null, "bmc": null, "declared_in": null, "declared_fields": [],
            "created_at_ms": 0, "updated_at_ms": 0
        }))
        .unwrap()
    }

    fn hook(action: HookAction, secs: u64) -> Hook {
        Hook { action, timeout: Duration::from_secs(secs) }
    }

    #[tokio::test]
    async fn a_command_hook_gets_the_node_and_its_last_words_are_the_reason() {
        let dir = tempfile::tempdir().unwrap();
        let out = dir.path().join("env");
        let script = format!(
            "echo \"$RAMBOOT_HOOK $RAMBOOT_ROLLOUT $RAMBOOT_NODE_HOSTNAME $RAMBOOT_NODE_MAC\" > {}; \
             echo noise >&2; echo 'VMs still running' >&2; exit 4",
            out.display()
        );
        let failing = hook(HookAction::Command(vec!["/bin/sh".into(), "-c".into(), script]), 5);
        let err = run_hook(&failing, "drain", 3, &node()).await.unwrap_err();
        assert_eq!(err, "exit status: 4 (VMs still running)");
        assert_eq!(std::fs::read_to_string(&out).unwrap(), "drain 3 hv-7 52:54:00:00:00:07\n");
        let slow = hook(HookAction::Command(vec!["/bin/sleep".into(), "5".into()]), 1);
        assert_eq!(run_hook(&slow, "drain", 3, &node()).await.unwrap_err(), "timed out after 1s");
        let missing = hook(HookAction::Command(vec!["/nonexistent/hook".into()]), 1);
        assert!(run_hook(&missing, "drain", 3, &node()).await.unwrap_err().starts_with("cannot run /nonexistent/hook"));
        let ok = hook(HookAction::Command(vec!["/bin/true".into()]), 1);
        assert_eq!(run_hook(&ok, "undrain", 3, &node()).await, Ok(()));
    }

    /// A one-request HTTP server on loopback answering `status` with `body`;
    /// returns its URL and what it received.
    fn webhook_server(status: &'static str, body: &'static str) -> (String, std::thread::JoinHandle<String>) {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/drain", listener.local_addr().unwrap());
        let handle = std::thread::spawn(move || {
            let (stream, _) = listener.accept().unwrap();
            let mut reader = BufReader::new(stream);
            let mut length = 0;
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if let Some(v) = line.to_ascii_lowercase().strip_prefix("content-length:") {
                    length = v.trim().parse().unwrap();
                }
                if line == "\r\n" {
                    break;
                }
            }
            let mut received = vec![0; length];
            reader.read_exact(&mut received).unwrap();
            let reply =
                format!("HTTP/1.1 {status}\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}", body.len());
            reader.get_mut().write_all(reply.as_bytes()).unwrap();
            String::from_utf8(received).unwrap()
        });
        (url, handle)
    }

    #[tokio::test]
    async fn a_webhook_posts_the_node_and_any_2xx_is_success() {
        let (url, server) = webhook_server("204 No Content", "");
        assert_eq!(run_hook(&hook(HookAction::Webhook(url), 5), "drain", 9, &node()).await, Ok(()));
        let sent: serde_json::Value = serde_json::from_str(&server.join().unwrap()).unwrap();
        assert_eq!(sent["hook"], "drain");
        assert_eq!((sent["rollout"].as_str(), sent["node_hostname"].as_str()), (Some("9"), Some("hv-7")));
        let (url, server) = webhook_server("503 Service Unavailable", "migration queue full");
        let err = run_hook(&hook(HookAction::Webhook(url.clone()), 5), "drain", 9, &node()).await.unwrap_err();
        assert_eq!(err, format!("{url} answered HTTP 503: migration queue full"));
        server.join().unwrap();
    }
}
