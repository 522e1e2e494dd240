//! Power over Redfish for the server: a node's [`Bmc`] reference → credentials
//! from the secrets file → a [`Redfish`] client on the blocking pool; and the
//! poller that keeps each BMC's last known state and the `ramboot_bmc_*` metrics.
//!
//! The secrets file is read on every call, so a rotated password needs no restart.
//! One operation at a time per node (a power cycle is not interleaved with another
//! command, nor with a poll: the poller skips a busy node), and at most
//! `max_concurrent` BMC conversations at once in all. This module never stores,
//! logs or returns a credential's value; its errors name the secret's name only.

use super::{
    plan, plan_cycle_with_pxe, BmcError, BootOverride, BootTarget, Credentials, PowerCommand, PowerState, Redfish,
    Step, Timeouts,
};
use crate::store::{Node, NodeId, Store};
use ramboot_api::{PollStatus, PowerCheck};
use ramboot_core::inventory::Bmc;
use serde::Deserialize;
use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// `bmc:` in the server's config, as written.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct WirePowerSettings {
    /// How often the poller reads every BMC's power state.
    poll_secs: u64,
    /// BMC conversations at once, in all (polls and commands).
    max_concurrent: usize,
}

impl Default for WirePowerSettings {
    fn default() -> Self {
        WirePowerSettings { poll_secs: 30, max_concurrent: 16 }
    }
}

/// `bmc:` validated.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PowerSettings {
    pub poll_every: Duration,
    pub max_concurrent: usize,
}

impl Default for PowerSettings {
    fn default() -> Self {
        let wire = WirePowerSettings::default();
        PowerSettings { poll_every: Duration::from_secs(wire.poll_secs), max_concurrent: wire.max_concurrent }
    }
}

impl TryFrom<WirePowerSettings> for PowerSettings {
    type Error = String;

    fn try_from(w: WirePowerSettings) -> Result<Self, String> {
        if !(1..=86_400).contains(&w.poll_secs) {
            return Err(format!("bmc.poll_secs must be between 1 and 86400, not {}", w.poll_secs));
        }
        if !(1..=1024).contains(&w.max_concurrent) {
            return Err(format!("bmc.max_concurrent must be between 1 and 1024, not {}", w.max_concurrent));
        }
        Ok(PowerSettings { poll_every: Duration::from_secs(w.poll_secs), max_concurrent: w.max_concurrent })
    }
}

/// Why a power request was not carried out. Names the node, its BMC and the
/// secret's name; never the secret.
#[derive(Debug, thiserror::Error)]
pub enum PowerError {
    #[error(
        "node {mac} has no BMC; give it one with PATCH /api/v1/nodes/{mac} \
         {{\"bmc\": {{\"url\": \"http://BMC/redfish/v1/Systems/ID\", \"credential\": \"SECRET-NAME\"}}}} \
         or in its inventory file"
    )]
    NoBmc { mac: String },
    #[error("node {mac}: BMC credential {credential:?}: {reason}")]
    Credential { mac: String, credential: String, reason: String },
    #[error(transparent)]
    Bmc(#[from] BmcError),
    /// The blocking task did not finish (a panic, or the runtime stopping).
    #[error("the BMC task failed: {0}")]
    Task(String),
}

/// A node's power as its BMC reports it now.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerStatus {
    pub power: PowerState,
    /// `None` when the system has no Boot object.
    pub boot: Option<BootOverride>,
}

/// What a power command did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PowerOutcome {
    pub before: PowerState,
    pub after: PowerState,
}

/// The server's power service (one per server, in `AppState`).
pub struct Power {
    secrets: Option<PathBuf>,
    timeouts: Timeouts,
    settings: PowerSettings,
    permits: Arc<Semaphore>,
    /// One operation at a time per node.
    locks: Mutex<HashMap<NodeId, Arc<tokio::sync::Mutex<()>>>>,
    /// The last check of each node's BMC (poller or request).
    checks: Mutex<HashMap<NodeId, PowerCheck>>,
}

impl Power {
    pub fn new(secrets: Option<PathBuf>, settings: PowerSettings) -> Power {
        Power::with_timeouts(secrets, settings, Timeouts::default())
    }

    pub fn with_timeouts(secrets: Option<PathBuf>, settings: PowerSettings, timeouts: Timeouts) -> Power {
        Power {
            secrets,
            timeouts,
            settings,
            permits: Arc::new(Semaphore::new(settings.max_concurrent)),
            locks: Mutex::default(),
            checks: Mutex::default(),
        }
    }

    pub fn from_config(config: &crate::config::Config) -> Power {
        Power::new(config.secrets.clone(), config.bmc)
    }

    pub fn settings(&self) -> PowerSettings {
        self.settings
    }

    /// The node's power state and boot override, read from its BMC now.
    pub async fn status(&self, node: &Node) -> Result<PowerStatus, PowerError> {
        let result = self
            .with_client(node, |client| {
                let system = client.system()?;
                Ok(PowerStatus { power: system.power_state, boot: system.boot })
            })
            .await;
        self.record(node.id, result.as_ref().map(|s| &s.power));
        result
    }

    /// Carry out `cmd` (`Status` changes nothing) and return the power state after
    /// it. With `pxe_once` a one-time PXE override is set first: for `Cycle` and
    /// `On` the boot it starts comes from the network.
    pub async fn run(&self, node: &Node, cmd: PowerCommand, pxe_once: bool) -> Result<PowerState, PowerError> {
        self.run_detailed(node, cmd, pxe_once).await.map(|o| o.after)
    }

    /// [`Power::run`], with the state before it too.
    pub async fn run_detailed(
        &self,
        node: &Node,
        cmd: PowerCommand,
        pxe_once: bool,
    ) -> Result<PowerOutcome, PowerError> {
        let result = self.with_client(node, move |client| carry_out(client, cmd, pxe_once)).await;
        self.record(node.id, result.as_ref().map(|o| &o.after));
        result
    }

    /// The last check of `node`'s BMC, if any.
    pub fn last_check(&self, node: NodeId) -> Option<PowerCheck> {
        lock(&self.checks).get(&node).cloned()
    }

    /// Resolve the node's credentials and run `f` with a client on the blocking
    /// pool, holding the node's lock and a global permit.
    async fn with_client<T: Send + 'static>(
        &self,
        node: &Node,
        f: impl FnOnce(&Redfish) -> Result<T, BmcError> + Send + 'static,
    ) -> Result<T, PowerError> {
        let node_lock = self.node_lock(node.id);
        let _node = node_lock.lock().await;
        self.with_client_locked(node, f).await
    }

    async fn with_client_locked<T: Send + 'static>(
        &self,
        node: &Node,
        f: impl FnOnce(&Redfish) -> Result<T, BmcError> + Send + 'static,
    ) -> Result<T, PowerError> {
        let mac = node.mac.to_string();
        let bmc = node.bmc.clone().ok_or_else(|| PowerError::NoBmc { mac: mac.clone() })?;
        let _permit = self.permits.acquire().await.map_err(|e| PowerError::Task(e.to_string()))?;
        let (secrets, timeouts) = (self.secrets.clone(), self.timeouts);
        tokio::task::spawn_blocking(move || {
            let credentials = resolve_credentials(secrets.as_deref(), &bmc, &mac)?;
            let client = Redfish::pinned(&bmc.url, bmc.fingerprint.as_deref(), credentials, timeouts)?;
            Ok(f(&client)?)
        })
        .await
        .map_err(|e| PowerError::Task(e.to_string()))?
    }

    fn node_lock(&self, node: NodeId) -> Arc<tokio::sync::Mutex<()>> {
        lock(&self.locks).entry(node).or_default().clone()
    }

    fn record(&self, node: NodeId, result: Result<&PowerState, &PowerError>) {
        let check = check_of(result, crate::clock::now_ms());
        lock(&self.checks).insert(node, check);
        self.publish();
    }

    /// Set the `ramboot_bmc_nodes` gauges from the last checks.
    fn publish(&self) {
        let counts = count_statuses(lock(&self.checks).values());
        for (status, n) in PollStatus::ALL.iter().zip(counts) {
            metrics::gauge!("ramboot_bmc_nodes", "status" => status.as_str()).set(n as f64);
        }
    }

    /// Poll every node with a BMC once (nodes busy with a command keep their last
    /// check), forgetting nodes that have none any more.
    pub async fn poll_round(&self, store: &Store) -> Result<usize, crate::store::StoreError> {
        use futures_util::StreamExt;
        let nodes: Vec<Node> = store.nodes().await?.into_iter().filter(|n| n.bmc.is_some()).collect();
        {
            let keep: std::collections::HashSet<NodeId> = nodes.iter().map(|n| n.id).collect();
            lock(&self.checks).retain(|id, _| keep.contains(id));
            lock(&self.locks).retain(|id, l| keep.contains(id) || Arc::strong_count(l) > 1);
        }
        let polled = nodes.len();
        futures_util::stream::iter(nodes)
            .for_each_concurrent(self.settings.max_concurrent, |node| async move {
                let node_lock = self.node_lock(node.id);
                // A command in progress: its own result is the freshest news.
                let Ok(_busy) = node_lock.try_lock() else { return };
                let result = self.with_client_locked(&node, |client| client.power_state()).await;
                if let Err(e) = &result {
                    tracing::debug!(node = %node.mac, error = %e, "BMC poll failed");
                }
                let check = check_of(result.as_ref(), crate::clock::now_ms());
                lock(&self.checks).insert(node.id, check);
            })
            .await;
        self.publish();
        Ok(polled)
    }
}

/// A std mutex's guard, whether or not a holder panicked (the maps stay usable).
fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// The poller: a round every `power.settings().poll_every` until `cancel`.
pub async fn poll(power: Arc<Power>, store: Store, cancel: CancellationToken) {
    let every = power.settings().poll_every;
    loop {
        let started = Instant::now();
        match power.poll_round(&store).await {
            Ok(n) => {
                metrics::histogram!("ramboot_bmc_poll_duration_seconds").record(started.elapsed().as_secs_f64());
                tracing::debug!(nodes = n, secs = started.elapsed().as_secs_f64(), "BMC poll round");
            }
            Err(e) => tracing::warn!(error = %e, "BMC poll: could not list nodes"),
        }
        tokio::select! {
            _ = cancel.cancelled() => return,
            _ = tokio::time::sleep(every.saturating_sub(started.elapsed()).max(Duration::from_secs(1))) => {}
        }
    }
}

/// The steps of `cmd` with `pxe_once`, carried out; the state before and after.
fn carry_out(client: &Redfish, cmd: PowerCommand, pxe_once: bool) -> Result<PowerOutcome, BmcError> {
    let system = client.system()?;
    let planned = match (cmd, pxe_once) {
        (PowerCommand::Status, _) => Ok(vec![]),
        (PowerCommand::Cycle, true) => plan_cycle_with_pxe(&system),
        (cmd, true) => plan(cmd, &system).map(|steps| {
            let mut all = vec![Step::SetBootOnce(BootTarget::Pxe)];
            all.extend(steps);
            all
        }),
        (cmd, false) => plan(cmd, &system),
    };
    let steps = planned.map_err(|e| BmcError::Unsupported {
        host: client.host().to_string(),
        action: format!("power {}", command_name(cmd)),
        message: e.to_string(),
    })?;
    let before = system.power_state.clone();
    if steps.is_empty() {
        return Ok(PowerOutcome { after: before.clone(), before });
    }
    tracing::info!(bmc = %client.host(), command = command_name(cmd), pxe_once, ?steps, "power command");
    client.run(&system, &steps)?;
    Ok(PowerOutcome { before, after: client.power_state()? })
}

fn command_name(cmd: PowerCommand) -> &'static str {
    match cmd {
        PowerCommand::On => "on",
        PowerCommand::Off => "off",
        PowerCommand::Cycle => "cycle",
        PowerCommand::Status => "status",
    }
}

/// The credentials `bmc.credential` names in the secrets file at `secrets`:
/// `user:password`, split at the first ':'.
pub fn resolve_credentials(secrets: Option<&std::path::Path>, bmc: &Bmc, mac: &str) -> Result<Credentials, PowerError> {
    let problem =
        |reason: String| PowerError::Credential { mac: mac.to_string(), credential: bmc.credential.clone(), reason };
    let Some(path) = secrets else {
        return Err(problem("this server has no secrets file (set `secrets:` in its config)".into()));
    };
    let secrets = crate::secrets::load(path).map_err(|e| problem(e.to_string()))?;
    let Some(value) = secrets.get(&bmc.credential) else {
        return Err(problem(format!(
            "the secrets file {} has no entry of that name (add `{}: USER:PASSWORD`)",
            path.display(),
            bmc.credential
        )));
    };
    credentials_of(value).ok_or_else(|| {
        problem(format!("its entry in {} is not USER:PASSWORD (a user name, ':', the password)", path.display()))
    })
}

/// `user:password` (split at the first ':'; the user name must not be empty).
fn credentials_of(value: &str) -> Option<Credentials> {
    let (user, password) = value.split_once(':')?;
    (!user.is_empty()).then(|| Credentials::new(user, password))
}

/// What a check's result says (pure).
fn check_of(result: Result<&PowerState, &PowerError>, now_ms: i64) -> PowerCheck {
    let (status, power, reachable, error) = match result {
        Ok(state) => {
            let status = match state {
                PowerState::On | PowerState::PoweringOn => PollStatus::On,
                PowerState::Off | PowerState::PoweringOff => PollStatus::Off,
                PowerState::Unknown(_) => PollStatus::Error,
            };
            let error = matches!(state, PowerState::Unknown(_))
                .then(|| format!("the BMC reports power state {:?}", state.as_str()));
            (status, Some(view_of(state)), true, error)
        }
        Err(e) => {
            let (status, reachable) = match e {
                PowerError::Bmc(BmcError::Unreachable { .. }) => (PollStatus::Unreachable, false),
                PowerError::Bmc(BmcError::Unauthorized { .. }) => (PollStatus::Unauthorized, true),
                PowerError::Bmc(BmcError::InvalidUrl { .. })
                | PowerError::Credential { .. }
                | PowerError::NoBmc { .. }
                | PowerError::Task(_) => (PollStatus::Error, false),
                PowerError::Bmc(_) => (PollStatus::Error, true),
            };
            (status, None, reachable, Some(e.to_string()))
        }
    };
    PowerCheck { status, power, reachable, error, checked_at_ms: now_ms }
}

/// The API's view of a power state.
pub fn view_of(state: &PowerState) -> ramboot_api::PowerState {
    match state {
        PowerState::On => ramboot_api::PowerState::On,
        PowerState::Off => ramboot_api::PowerState::Off,
        PowerState::PoweringOn => ramboot_api::PowerState::PoweringOn,
        PowerState::PoweringOff => ramboot_api::PowerState::PoweringOff,
        PowerState::Unknown(_) => ramboot_api::PowerState::Unknown,
    }
}

/// How many checks have each status, in [`PollStatus::ALL`]'s order.
fn count_statuses<'a>(checks: impl Iterator<Item = &'a PowerCheck>) -> [usize; 5] {
    let mut counts = [0; 5];
    for check in checks {
        if let Some(i) = PollStatus::ALL.iter().position(|s| *s == check.status) {
            counts[i] += 1;
        }
    }
    counts
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::PermissionsExt;

    const SECRET: &str = "s3cret:with:colons";
    const PLAIN: &str = "plainS3cretNoColon";

    fn bmc(credential: &str) -> Bmc {
        Bmc {
            url: "http://10.0.0.5:8000/redfish/v1/Systems/1".into(),
            credential: credential.into(),
            fingerprint: None,
        }
    }

    fn secrets_file(dir: &std::path::Path, text: &str) -> PathBuf {
        let path = dir.join("secrets.yaml");
        std::fs::write(&path, text).unwrap();
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).unwrap();
        path
    }

    #[test]
    fn credentials_resolve_from_the_secrets_file_and_errors_never_quote_them() {
        let dir = tempfile::tempdir().unwrap();
        let path = secrets_file(
            dir.path(),
            &format!("bmc-rack1: \"admin:{SECRET}\"\nno-colon: \"{PLAIN}\"\nno-user: \":{SECRET}\"\n"),
        );
        let c = resolve_credentials(Some(&path), &bmc("bmc-rack1"), "m").unwrap();
        assert_eq!(c, Credentials::new("admin", SECRET), "split at the first ':'");
        for (name, wanted) in
            [("missing", "no entry of that name"), ("no-colon", "not USER:PASSWORD"), ("no-user", "not USER:PASSWORD")]
        {
            let e = resolve_credentials(Some(&path), &bmc(name), "52:54:00:00:00:01").unwrap_err();
            let shown = format!("{e} {e:?}");
            assert!(matches!(e, PowerError::Credential { .. }), "{e:?}");
            assert!(shown.contains(wanted) && shown.contains(name) && shown.contains("52:54:00:00:00:01"), "{shown}");
            assert!(!shown.contains(SECRET) && !shown.contains(PLAIN), "{shown}");
        }
        let e = resolve_credentials(None, &bmc("bmc-rack1"), "m").unwrap_err();
        assert!(e.to_string().contains("no secrets file"), "{e}");
        // A file others can read is refused, as for templates.
        std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o644)).unwrap();
        let e = resolve_credentials(Some(&path), &bmc("bmc-rack1"), "m").unwrap_err();
        assert!(e.to_string().contains("chmod 600") && !e.to_string().contains(SECRET), "{e}");
    }

    #[test]
    fn checks_classify_results_for_the_gauges() {
        let on = check_of(Ok(&PowerState::PoweringOn), 5);
        assert_eq!((on.status, on.reachable, on.checked_at_ms), (PollStatus::On, true, 5));
        let odd = check_of(Ok(&PowerState::Unknown("Paused".into())), 5);
        assert_eq!(odd.status, PollStatus::Error);
        assert!(odd.error.unwrap().contains("Paused"));
        let unreachable = PowerError::Bmc(BmcError::Unreachable {
            host: "b".into(),
            action: "a".into(),
            reason: "connection refused".into(),
        });
        let c = check_of(Err(&unreachable), 1);
        assert_eq!((c.status, c.reachable, c.power), (PollStatus::Unreachable, false, None));
        let refused = PowerError::Bmc(BmcError::Unauthorized { host: "b".into(), action: "a".into(), status: 401 });
        assert_eq!(check_of(Err(&refused), 1).status, PollStatus::Unauthorized);
        let credential = PowerError::Credential { mac: "m".into(), credential: "c".into(), reason: "r".into() };
        assert_eq!(check_of(Err(&credential), 1).status, PollStatus::Error);
        let checks = [check_of(Ok(&PowerState::On), 1), check_of(Ok(&PowerState::Off), 1), c.clone(), c];
        assert_eq!(count_statuses(checks.iter()), [1, 1, 2, 0, 0]);
    }

    #[test]
    fn settings_are_bounded() {
        assert_eq!(PowerSettings::try_from(WirePowerSettings::default()).unwrap(), PowerSettings::default());
        assert!(PowerSettings::try_from(WirePowerSettings { poll_secs: 0, max_concurrent: 4 }).is_err());
        assert!(PowerSettings::try_from(WirePowerSettings { poll_secs: 5, max_concurrent: 0 }).is_err());
    }

    fn node_with(bmc: Option<Bmc>) -> Node {
        Node {
            id: 7,
            mac: "52:54:00:00:00:07".parse().unwrap(),
            hostname: "n7".into(),
            ip: None,
            profile: None,
            state: ramboot_core::node::NodeState::Discovered,
            state_since_ms: 0,
            current_boot_id: None,
            inventory: None,
            labels: Default::default(),
            arch: None,
            failures: 0,
            maintenance_reason: None,
            reserved_ip: None,
            client_uuid: None,
            approved: false,
            ip_seen_at_ms: None,
            bmc,
            boot_chain: None,
            declared_in: None,
            declared_fields: Default::default(),
            created_at_ms: 0,
            updated_at_ms: 0,
        }
    }

    #[tokio::test]
    async fn a_node_without_a_bmc_says_how_to_set_one_and_a_dead_bmc_is_unreachable() {
        let power = Power::new(None, PowerSettings::default());
        let e = power.run(&node_with(None), PowerCommand::Cycle, true).await.unwrap_err();
        assert!(matches!(e, PowerError::NoBmc { .. }) && e.to_string().contains("PATCH /api/v1/nodes/"), "{e}");

        // A closed port on loopback: the client says unreachable, the check records it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let dir = tempfile::tempdir().unwrap();
        let path = secrets_file(dir.path(), &format!("bmc: \"admin:{SECRET}\"\n"));
        let timeouts = Timeouts { attempts: 1, connect: Duration::from_secs(1), ..Timeouts::default() };
        let power = Power::with_timeouts(Some(path), PowerSettings::default(), timeouts);
        let node = node_with(Some(Bmc {
            url: format!("http://127.0.0.1:{port}/redfish/v1/Systems/1"),
            credential: "bmc".into(),
            fingerprint: None,
        }));
        let e = power.status(&node).await.unwrap_err();
        assert!(matches!(e, PowerError::Bmc(BmcError::Unreachable { .. })), "{e:?}");
        assert!(!format!("{e:?}").contains(SECRET));
        let check = power.last_check(7).unwrap();
        assert_eq!((check.status, check.reachable), (PollStatus::Unreachable, false));
    }
}
