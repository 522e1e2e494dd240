//! The boot tier: the per-node iPXE script and the stage-one agent's endpoints.
//!
//! `GET /boot.ipxe?mac=` asks the boot planner (`ramboot_core::plan`) what a node boots: its explicit profile, else the
//! most specific matching selector, else the default profile, else a discovery boot
//! (stage one only, waiting for an assignment). A node in maintenance, or one that
//! used up its retries, gets a script that says so and asks again later; a node
//! that failed recently is told to wait out its backoff. Every boot gets a fresh
//! per-boot token on its kernel command line.
//!
//! Trust (`ramboot_core::trust`, `docs/threat-model.md`): only a node DHCP knows
//! gets a script, and only at the address DHCP bound to its MAC; the token works
//! only from that address, only while its boot is the node's current one; the
//! plan (CHAP credentials) and the overlay (secrets) are released once, before
//! handoff; reports are rate-limited and capped per boot.

pub mod grub;
pub mod trust;

use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::clock::now_ms;
use crate::profiles::NodeFacts;
use crate::store::{Boot, BootImage, BootStart, EventKind, Node, Release};
use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ramboot_core::node::{MacAddr, NodeState};
use ramboot_core::plan::{
    approval_needed, plan_boot, profile_boot, resolve_profile, volumes_wanted, Decision, NodeView,
    Refusal as PlanRefusal, Settings, VolumeWanted,
};
use ramboot_core::trust::{self as rules, AgentCall, BootUse, Refused, MAX_REPORTS_PER_BOOT};
use ramboot_proto::{
    human_bytes, paths, AgentEvent, Command, CommandKind, CommandQuery, Inventory, Plan, PlanImage, PlanWait,
    ReportedState, ServerInfo, MAX_COMMAND_WAIT_SECS, OVERLAY_PATH,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use std::net::{IpAddr, SocketAddr};
use std::time::Duration;
use tracing::{info, warn, Instrument};

/// How often a script that refused to boot asks again, and a waiting agent polls.
const ASK_AGAIN_SECS: u32 = 60;
const DISCOVERY_POLL_SECS: u64 = 10;
/// A waiting command poll re-reads at least this often, whatever the change feed
/// says (a notice lost while PostgreSQL's listener reconnected).
const COMMAND_RECHECK: Duration = Duration::from_secs(5);
/// After the change feed wakes a poll: wait this long before reading, so a burst
/// of events in the fleet costs each waiting poll one read.
const COMMAND_COALESCE: Duration = Duration::from_millis(250);

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/boot.ipxe", get(boot_script))
        .route(paths::HELLO, post(hello))
        .route(paths::PLAN, get(plan))
        .route(paths::EVENTS, post(event))
        .route(OVERLAY_PATH, get(overlay))
        .route(paths::COMMAND, get(command))
}

#[derive(Template)]
#[template(path = "boot.ipxe", escape = "none")]
pub struct BootScript<'a> {
    pub node_id: i64,
    pub boot_id: i64,
    pub mac: MacAddr,
    pub hostname: &'a str,
    pub profile: &'a str,
    pub stage1: &'a str,
    /// Where stage one loads from: this server, then each peer (the script falls
    /// through to the next when a download or the boot fails).
    pub sources: Vec<StageOneSource>,
    pub args: Vec<String>,
    /// After the last source failed: seconds before iPXE reboots to ask again.
    pub retry_secs: u32,
}

/// One server's URLs for a stage one's kernel and initrd.
pub struct StageOneSource {
    pub base: String,
    pub kernel_url: String,
    pub initrd_url: String,
}

/// Each server's stage-one URLs, in `bases` order (this server first).
fn stage_one_sources(bases: &[String], kernel_digest: &str, initrd_digest: &str) -> Vec<StageOneSource> {
    bases
        .iter()
        .map(|base| StageOneSource {
            base: base.clone(),
            kernel_url: format!("{base}/artifacts/sha256/{kernel_digest}/vmlinuz"),
            initrd_url: format!("{base}/artifacts/sha256/{initrd_digest}/initrd.img"),
        })
        .collect()
}

/// The kernel arguments that tell the agent where to report: `ramboot.server` is
/// this server (the first base), `ramboot.peers` the others (absent without peers).
fn server_args(bases: &[String]) -> Vec<String> {
    let mut args = Vec::new();
    if let Some((own, peers)) = bases.split_first() {
        args.push(format!("{}={own}", ramboot_proto::cmdline::SERVER));
        if !peers.is_empty() {
            args.push(format!("{}={}", ramboot_proto::cmdline::PEERS, peers.join(",")));
        }
    }
    args
}

#[derive(Template)]
#[template(path = "refuse.ipxe", escape = "none")]
pub struct RefuseScript {
    pub mac: String,
    pub reason: String,
    pub retry_secs: u32,
}

#[derive(Deserialize)]
pub struct BootQuery {
    mac: Option<String>,
}

fn ipxe(text: String) -> Response {
    ([(header::CONTENT_TYPE, "text/plain; charset=utf-8")], text).into_response()
}

fn render(t: &impl Template) -> Result<String, ApiError> {
    t.render().map_err(ApiError::internal)
}

/// An iPXE script that explains why and asks again later: iPXE shows it on the console.
fn refusal(mac: &str, reason: &str, retry_after: Option<Duration>) -> Result<Response, ApiError> {
    Ok(ipxe(render(&refusal_script(mac, reason, retry_after))?))
}

/// How long a refused loader waits before asking again.
fn retry_secs(retry_after: Option<Duration>) -> u32 {
    retry_after.map_or(ASK_AGAIN_SECS, |d| u32::try_from(d.as_secs().max(1)).unwrap_or(u32::MAX))
}

/// Only printable ASCII reaches the script (iPXE echoes it), so neither a client's
/// query string nor an error message can inject script lines.
fn refusal_script(mac: &str, reason: &str, retry_after: Option<Duration>) -> RefuseScript {
    let reason: String = reason.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    let mac: String = mac.chars().take(32).filter(|c| c.is_ascii_hexdigit() || *c == ':' || *c == '-').collect();
    RefuseScript { mac, reason, retry_secs: retry_secs(retry_after) }
}

/// What selectors see of a node.
pub(crate) fn facts_of(node: &Node) -> NodeFacts {
    let dmi = |field: &str| node.inventory.as_ref().and_then(|inv| inv["dmi"][field].as_str()).map(str::to_string);
    NodeFacts {
        mac: Some(node.mac),
        labels: node.labels.clone(),
        serial: dmi("serial"),
        // The agent's DMI report, or before it runs, the firmware's DHCP option 97.
        uuid: dmi("uuid").or_else(|| node.client_uuid.clone()),
        arch: node.arch.clone(),
    }
}

/// What the planner sees of a node.
pub(crate) fn view_of(node: &Node) -> NodeView<'_> {
    NodeView {
        state: node.state,
        failures: node.failures,
        maintenance_reason: node.maintenance_reason.as_deref(),
        assigned_profile: node.profile.as_deref(),
        hostname: &node.hostname,
        facts: facts_of(node),
        approved: node.approved,
        in_state_for: Duration::from_millis(u64::try_from(now_ms() - node.state_since_ms).unwrap_or(0)),
    }
}

pub(crate) fn settings(state: &AppState) -> Settings<'_> {
    Settings {
        lifecycle: &state.config.lifecycle,
        default_profile: state.config.default_profile.as_deref(),
        discovery_stage1: &state.config.discovery_stage1,
    }
}

async fn boot_script(
    State(state): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    Query(q): Query<BootQuery>,
) -> Result<Response, ApiError> {
    let raw_mac = q.mac.unwrap_or_default();
    let Ok(mac) = raw_mac.parse::<MacAddr>() else {
        return refusal(&raw_mac, "the script URL carries no valid MAC address", None);
    };
    let source = peer.ip().to_canonical();
    match start_boot(&state, mac, source, IPXE_SCRIPT).await? {
        Started::Boot(boot) => {
            let sources = stage_one_sources(&boot.bases, &boot.stage1.kernel_digest, &boot.stage1.initrd_digest);
            let args = boot.args;
            let script = BootScript {
                node_id: boot.node_id,
                boot_id: boot.boot_id,
                mac,
                hostname: &boot.hostname,
                profile: &boot.profile,
                stage1: &boot.stage1.name,
                sources,
                args,
                retry_secs: ASK_AGAIN_SECS,
            };
            Ok(ipxe(render(&script)?))
        }
        Started::Refused(r) => {
            let script = render(&refusal_script(&raw_mac, &r.reason, r.retry_after))?;
            Ok((r.status, [(header::CONTENT_TYPE, "text/plain; charset=utf-8")], script).into_response())
        }
    }
}

/// What `GET /boot.ipxe` serves, in logs and the node's timeline.
const IPXE_SCRIPT: &str = "iPXE script";

/// A boot begun for a node that asked for its boot configuration (an iPXE script
/// or a GRUB config): what either renders.
pub(crate) struct StartedBoot {
    pub node_id: i64,
    pub boot_id: i64,
    pub hostname: String,
    /// The profile's name, or `(discovery)`.
    pub profile: String,
    pub stage1: ramboot_core::plan::StageOne,
    /// This server's base URL, then its peers'.
    pub bases: Vec<String>,
    /// The kernel arguments: the plan's, the servers', then node, token and MAC.
    pub args: Vec<String>,
}

/// Why a node gets no boot now, for whichever language its loader speaks.
pub(crate) struct Refusal {
    pub reason: String,
    pub retry_after: Option<Duration>,
    /// For HTTP answers: 200 for a refusal of the plan, 4xx for a trust refusal.
    pub status: StatusCode,
}

pub(crate) enum Started {
    Boot(Box<StartedBoot>),
    Refused(Refusal),
}

/// The boot path's first step, shared by `GET /boot.ipxe` and the signed chain's
/// `grub.cfg`: the trust rules (a node DHCP knows, at the address DHCP bound to
/// it), the planner's decision, a fresh per-boot token.
pub(crate) async fn start_boot(
    state: &AppState,
    mac: MacAddr,
    source: IpAddr,
    what: &'static str,
) -> Result<Started, ApiError> {
    let span = tracing::info_span!("boot", %mac, %source);
    async move {
        let now = now_ms();
        // Only DHCP (or an operator) creates nodes: a script request never does.
        let Some(node) = state.store.node_by_mac(mac).await? else {
            return Ok(untrusted(state, None, &Refused::UnknownNode(mac), now).await);
        };
        let claim = trust::address_claim(state, &node, source, now).await?;
        if let Err(refused) = rules::script_allowed(mac, source, &claim) {
            return Ok(untrusted(state, Some(&node), &refused, now).await);
        }
        // One snapshot of the profiles for the whole decision.
        let profiles = state.profiles.current();
        let plan = match plan_boot(&view_of(&node), &*profiles, &state.images, settings(state)) {
            Decision::Boot(plan) => *plan,
            Decision::Refuse(refusal) => return Ok(Started::Refused(refuse(state, &node, &refusal, now).await?)),
        };
        let token = crate::token::generate().map_err(ApiError::internal)?;
        let token_hash = crate::token::hash(&token);
        let stage1 = Some((plan.stage1.kernel_digest.as_str(), plan.stage1.initrd_digest.as_str()));
        let bound = BootStart { hash: &token_hash, bound_ip: source, stage1, served: what };
        let (boot_id, profile_name, why) = match &plan.profile {
            Some(boot) => {
                // The node's timeline says which server of a cluster served it, and
                // which revision of the profile (that server's copy).
                let why = format!("{}; server {}", boot.describe(), state.config.cluster.name);
                let id = state.store.start_boot(node.id, &boot.profile, Some(&boot.image), &bound, now, &why).await?;
                (id, boot.profile.clone(), why)
            }
            None => {
                let waiting = plan.awaiting_approval.as_deref();
                let id = state.store.start_discovery_boot(node.id, &bound, waiting, now).await?;
                let why = waiting.map_or_else(|| "no profile: discovery".to_string(), str::to_string);
                (id, "(discovery)".to_string(), why)
            }
        };
        let bases = state.config.boot_urls_for(source);
        let mut args = plan.kernel_args;
        args.extend(server_args(&bases));
        args.extend([
            format!("{}={}", ramboot_proto::cmdline::NODE, node.id),
            format!("{}={token}", ramboot_proto::cmdline::TOKEN),
            format!("{}={mac}", ramboot_proto::cmdline::MAC),
        ]);
        info!(node = node.id, boot = boot_id, profile = %profile_name, %why, "boot started: {what} served");
        Ok(Started::Boot(Box::new(StartedBoot {
            node_id: node.id,
            boot_id,
            hostname: node.hostname.clone(),
            profile: profile_name,
            stage1: plan.stage1,
            bases,
            args,
        })))
    }
    .instrument(span)
    .await
}

/// A trust refusal: counted, logged, noted in the node's log (rate-limited).
async fn untrusted(state: &AppState, node: Option<&Node>, refused: &Refused, now: i64) -> Started {
    let error = trust::refuse(state, node.map(|n| (n, None)), refused, now).await;
    Started::Refused(Refusal { reason: refused.to_string(), retry_after: None, status: error.status })
}

/// Tell the node why it does not boot; a profile or image an operator must fix is
/// also recorded in its event log.
async fn refuse(state: &AppState, node: &Node, why: &PlanRefusal, now: i64) -> Result<Refusal, ApiError> {
    let reason = why.reason();
    match why {
        PlanRefusal::Maintenance { .. } => info!(node = node.id, %reason, "node in maintenance: told not to boot"),
        PlanRefusal::RetriesExhausted { .. } => warn!(node = node.id, "{reason}"),
        PlanRefusal::BackingOff { .. } => info!(node = node.id, %reason, "told to wait out its backoff"),
        PlanRefusal::Unbootable { .. } => {
            warn!(node = node.id, %reason, "refusing to boot");
            state.store.add_event(node.id, None, EventKind::Info, &format!("boot refused: {reason}"), now).await?;
        }
    }
    Ok(Refusal { reason: reason.to_string(), retry_after: why.retry_after(), status: StatusCode::OK })
}

/// The node and boot behind a valid per-boot bearer token, checked against the
/// request's source address and what the route releases (`ramboot_core::trust`).
pub struct BootAuth {
    pub node: Node,
    pub boot: Boot,
}

/// What each agent route is, for the trust rules: every route is checked, none can
/// forget to.
fn call_of(path: &str) -> AgentCall {
    match path {
        paths::HELLO => AgentCall::Hello,
        paths::PLAN => AgentCall::Plan,
        OVERLAY_PATH => AgentCall::Overlay,
        paths::COMMAND => AgentCall::Command,
        _ => AgentCall::Report,
    }
}

impl FromRequestParts<AppState> for BootAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(token) = super::auth::bearer(parts) else {
            metrics::counter!("ramboot_boot_refusals_total", "reason" => "no_token").increment(1);
            return Err(ApiError::unauthorized("a per-boot bearer token is required"));
        };
        let Some((node, boot)) = state.store.boot_by_token_hash(&crate::token::hash(token)).await? else {
            metrics::counter!("ramboot_boot_refusals_total", "reason" => "unknown_token").increment(1);
            return Err(ApiError::unauthorized("unknown or expired boot token"));
        };
        let source: IpAddr = parts
            .extensions
            .get::<ConnectInfo<SocketAddr>>()
            .map(|ConnectInfo(peer)| peer.ip())
            .ok_or_else(|| ApiError::internal("the connection's peer address is unknown"))?;
        let used = BootUse {
            bound_ip: boot.bound_ip,
            state: node.state,
            plan_released: boot.plan_released_at_ms.is_some(),
            overlay_released: boot.overlay_released_at_ms.is_some(),
            reports: boot.reports,
        };
        if let Err(refused) = rules::agent_call_allowed(call_of(parts.uri.path()), source, &used) {
            return Err(trust::refuse(state, Some((&node, Some(boot.id))), &refused, now_ms()).await);
        }
        Ok(BootAuth { node, boot })
    }
}

impl BootAuth {
    /// Release a secret of this boot: the first fetch gets it, any later one is
    /// refused and recorded (even one racing the first).
    async fn release(&self, state: &AppState, what: Release) -> Result<(), ApiError> {
        let now = now_ms();
        if state.store.release_once(self.boot.id, what, now).await? {
            return Ok(());
        }
        let call = match what {
            Release::Plan => AgentCall::Plan,
            Release::Overlay => AgentCall::Overlay,
        };
        Err(trust::refuse(state, Some((&self.node, Some(self.boot.id))), &Refused::AlreadyReleased(call), now).await)
    }
}

async fn hello(
    State(state): State<AppState>,
    auth: BootAuth,
    headers: axum::http::HeaderMap,
    ApiJson(inv): ApiJson<Inventory>,
) -> Result<StatusCode, ApiError> {
    let now = now_ms();
    let user_agent = headers.get(axum::http::header::USER_AGENT).and_then(|v| v.to_str().ok()).unwrap_or("");
    let (agent_version, protocol) = ramboot_proto::parse_agent_user_agent(user_agent);
    if protocol != ramboot_proto::PROTOCOL {
        let message = format!(
            "stage one's agent ({} speaking boot protocol {protocol}) does not match this server (ramboot {}, \
             protocol {}): rebuild stage one with this ramboot (ramboot images build stage1 --agent ...)",
            agent_version.as_deref().map_or("an unknown version".to_string(), |v| format!("ramboot-agent {v}")),
            env!("CARGO_PKG_VERSION"),
            ramboot_proto::PROTOCOL,
        );
        warn!(node = auth.node.id, boot = auth.boot.id, "{message}");
        state.store.add_event(auth.node.id, Some(auth.boot.id), EventKind::Info, &message, now).await?;
        return Err(ApiError::new(StatusCode::CONFLICT, "agent_incompatible", message));
    }
    let inventory = serde_json::to_value(&inv).map_err(|e| ApiError::bad_request(e.to_string()))?;
    state.store.set_inventory(auth.node.id, &inventory, now).await?;
    let mut summary =
        format!("agent hello: {} CPUs, {} RAM, {} NICs", inv.cpus, human_bytes(inv.memory_bytes), inv.nics.len());
    if let Some(firmware) = &inv.firmware {
        summary.push_str(&format!("; {firmware}"));
    }
    if auth.boot.image.is_some() {
        state.store.agent_transition(auth.node.id, auth.boot.id, NodeState::Stage1, &summary, now).await?;
    } else {
        // Discovery: the inventory may be what a selector was waiting for.
        state.store.add_event(auth.node.id, Some(auth.boot.id), EventKind::Info, &summary, now).await?;
        let node = state.store.node(auth.node.id).await?;
        // Still waiting is no error here: the plan call says why.
        let _pinned = pin_if_resolvable(&state, &node, &auth.boot, now).await?;
    }
    info!(node = auth.node.id, boot = auth.boot.id, "{summary}");
    Ok(StatusCode::NO_CONTENT)
}

/// Why a discovery boot's agent keeps waiting.
const NO_PROFILE_YET: &str = "no profile assigned yet: assign one (API, CLI) or add a selector";

/// For a discovery boot: if the node now has a profile it may boot, pin it into
/// the boot. `Err` says why the agent keeps waiting.
async fn pin_if_resolvable(
    state: &AppState,
    node: &Node,
    boot: &Boot,
    now: i64,
) -> Result<Result<BootImage, String>, ApiError> {
    let profiles = state.profiles.current();
    let view = view_of(node);
    let Ok(Some((profile, selection))) = resolve_profile(&view, &*profiles, state.config.default_profile.as_deref())
    else {
        return Ok(Err(NO_PROFILE_YET.into()));
    };
    if let Some(wait) = approval_needed(&view, profile, &selection) {
        return Ok(Err(wait));
    }
    match profile_boot(profile, selection.describe(), &state.images) {
        Ok((_, pinned)) => {
            state.store.pin_boot(node.id, boot.id, &pinned.profile, &pinned.image, &pinned.why, now).await?;
            Ok(Ok(pinned.image))
        }
        Err(reason) => {
            let note = format!("cannot load {}: {reason}", profile.profile.name);
            state.store.add_event(node.id, Some(boot.id), EventKind::Info, &note, now).await?;
            Ok(Err(note))
        }
    }
}

async fn plan(State(state): State<AppState>, auth: BootAuth) -> Result<Response, ApiError> {
    let (image, profile) = match auth.boot.image.clone() {
        Some(image) => (image, auth.boot.profile.clone()),
        None => match pin_if_resolvable(&state, &auth.node, &auth.boot, now_ms()).await? {
            Ok(image) => {
                let boot =
                    state.store.boot(auth.boot.id).await?.ok_or_else(|| ApiError::unauthorized("boot is gone"))?;
                (image, boot.profile)
            }
            Err(reason) => {
                let wait = PlanWait { reason, retry_after_secs: DISCOVERY_POLL_SECS };
                return Ok((StatusCode::ACCEPTED, Json(wait)).into_response());
            }
        },
    };
    let base = state.config.boot_url_for(auth.boot.bound_ip);
    let (has_files, volumes) = match state.profiles.current().get(&profile) {
        Some(p) => (!p.files.is_empty(), volumes_wanted(p, &auth.node.hostname)),
        None => (false, vec![]),
    };
    ensure_profile_volumes(&state, &auth.node, &profile, &volumes).await?;
    let iscsi = match &state.volumes {
        Some(service) => {
            // The target admits the node from the address its boot is bound to only.
            service.node_plan(auth.node.id, auth.boot.bound_ip).await.map_err(iscsi_unavailable)?
        }
        None => None,
    };
    // Everything is ready: this answer carries the boot's credentials, once.
    auth.release(&state, Release::Plan).await?;
    Ok(Json(Plan {
        server: Some(ServerInfo { version: env!("CARGO_PKG_VERSION").into(), protocol: ramboot_proto::PROTOCOL }),
        node_id: auth.node.id,
        boot_id: auth.boot.id,
        hostname: auth.node.hostname,
        profile,
        overlay_url: has_files.then(|| format!("{base}{OVERLAY_PATH}")),
        iscsi,
        image: PlanImage {
            url: format!("{base}/artifacts/sha256/{}/{}.{}", image.digest, image.name, image.format),
            name: image.name,
            sha256: image.digest,
            size: image.size,
            format: image.format,
        },
    })
    .into_response())
}

/// On the boot path every volume failure is the target being unavailable (503): the
/// agent retries its plan, where an operator's API call would get 422/404 instead.
fn iscsi_unavailable(e: crate::iscsi::service::VolumeError) -> ApiError {
    ApiError::new(StatusCode::SERVICE_UNAVAILABLE, "iscsi", e.to_string())
}

/// The volumes the node's profile declares, created and attached on first need
/// (see `Volumes::ensure_declared`); what could not be done is noted in its events.
async fn ensure_profile_volumes(
    state: &AppState,
    node: &Node,
    profile: &str,
    wanted: &[VolumeWanted],
) -> Result<(), ApiError> {
    if wanted.is_empty() {
        return Ok(());
    }
    let now = now_ms();
    let notes = match &state.volumes {
        Some(volumes) => volumes
            .ensure_declared(node.id, wanted, &state.config.cluster.actor(), now)
            .await
            .map_err(iscsi_unavailable)?,
        None => vec![format!("profile {profile} declares volumes, but this server manages no iSCSI volumes")],
    };
    for note in notes {
        state.store.add_event(node.id, None, EventKind::Info, &note, now).await?;
    }
    Ok(())
}

/// The node's overlay: its profile's files rendered from its facts, as a tar archive.
async fn overlay(State(state): State<AppState>, auth: BootAuth) -> Result<Response, ApiError> {
    let profiles = state.profiles.current();
    let loaded = profiles
        .loaded(&auth.boot.profile)
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "no_profile", "this boot has no (valid) profile"))?
        .clone();
    let node = &auth.node;
    let facts = serde_json::json!({
        "node": {
            "id": node.id, "hostname": node.hostname, "mac": node.mac.to_string(), "ip": node.ip,
            "labels": node.labels, "arch": node.arch, "inventory": node.inventory,
        },
        "profile": loaded.profile.name,
        "vars": loaded.profile.vars,
        "boot": { "id": auth.boot.id },
        "server": { "url": state.config.boot_url_for(auth.boot.bound_ip) },
    });
    let secrets = read_secrets(state.config.secrets.as_deref()).await?;
    let files = loaded
        .render_overlay(&facts, &secrets)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "render_failed", e.to_string()))?;
    let archive = tar_of(&files).map_err(ApiError::internal)?;
    auth.release(&state, Release::Overlay).await?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], archive).into_response())
}

/// Secrets are read at render time, so rotating one needs no restart; a file
/// others can read is refused every time (`crate::secrets`).
async fn read_secrets(path: Option<&std::path::Path>) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(path) = path else { return Ok(BTreeMap::new()) };
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::secrets::load(&path))
        .await
        .map_err(ApiError::internal)?
        .map_err(ApiError::internal)
}

fn tar_of(files: &[crate::profiles::RenderedFile]) -> std::io::Result<Vec<u8>> {
    let mut builder = tar::Builder::new(Vec::new());
    for f in files {
        let mut header = tar::Header::new_gnu();
        header.set_size(f.contents.len() as u64);
        header.set_mode(f.mode);
        header.set_uid(0);
        header.set_gid(0);
        header.set_mtime(0);
        header.set_entry_type(tar::EntryType::Regular);
        builder.append_data(&mut header, f.path.trim_start_matches('/'), f.contents.as_slice())?;
    }
    builder.into_inner()
}

async fn event(
    State(state): State<AppState>,
    auth: BootAuth,
    ApiJson(ev): ApiJson<AgentEvent>,
) -> Result<StatusCode, ApiError> {
    let now = now_ms();
    if !state.limits.report_allowed(auth.boot.id, now) {
        metrics::counter!("ramboot_boot_refusals_total", "reason" => "report_rate").increment(1);
        return Err(ApiError::new(StatusCode::TOO_MANY_REQUESTS, "report_rate", "reports come too fast: slow down"));
    }
    let message: String = ev.message.chars().take(1024).collect();
    let (node, boot) = (auth.node.id, auth.boot.id);
    let next = ev.state.map(|reported| match reported {
        ReportedState::Loading => NodeState::Loading,
        ReportedState::Handoff => NodeState::Handoff,
        ReportedState::Ready => NodeState::Ready,
        ReportedState::Failed => NodeState::Failed,
    });
    if !state.store.agent_report(node, boot, next, &message, MAX_REPORTS_PER_BOOT, now).await? {
        let refused = Refused::TooManyReports;
        return Err(trust::refuse(&state, Some((&auth.node, Some(boot))), &refused, now).await);
    }
    if let Some(next) = next {
        super::metrics::record_phase(&auth.boot.profile, auth.node.state, now - auth.node.state_since_ms);
        info!(node, boot, state = %next, report = %message, "node moved");
    }
    Ok(StatusCode::NO_CONTENT)
}

/// Stage two's long poll (`ramboot-agent commands`): 200 `{"command":"reboot"}`
/// once a reboot was asked of the node after this boot started (handed out once:
/// `Store::take_reboot`), else 204 when the wait (`?wait=`, at most
/// [`MAX_COMMAND_WAIT_SECS`]) ends or the server stops. A waiting poll is woken by
/// the store's change feed (the request adds a node event, so every server sharing
/// the database hears it) and re-reads every [`COMMAND_RECHECK`] anyway. Polls are
/// rate-limited per boot and the waiting ones capped; one over the cap is answered
/// at once with a `Retry-After`.
async fn command(
    State(state): State<AppState>,
    auth: BootAuth,
    Query(query): Query<CommandQuery>,
) -> Result<Response, ApiError> {
    let (node, boot, started) = (auth.node.id, auth.boot.id, auth.boot.started_at_ms);
    if !state.limits.poll_allowed(boot, now_ms()) {
        metrics::counter!("ramboot_boot_refusals_total", "reason" => "poll_rate").increment(1);
        return Err(ApiError::new(
            StatusCode::TOO_MANY_REQUESTS,
            "poll_rate",
            "command polls come too fast: slow down",
        ));
    }
    let asked = Duration::from_secs(query.wait.unwrap_or(MAX_COMMAND_WAIT_SECS).min(MAX_COMMAND_WAIT_SECS));
    let slot = if asked.is_zero() { None } else { state.limits.wait_slot(boot) };
    let wait = if slot.is_some() { asked } else { Duration::ZERO };
    let deadline = tokio::time::Instant::now() + wait;
    // Subscribed before the first read: a request made after it wakes the wait.
    let mut changed = state.store.watch_events();
    loop {
        if state.store.take_reboot(node, boot, started, now_ms()).await? {
            info!(node, boot, "reboot handed to the node's agent");
            return Ok(Json(Command { command: CommandKind::Reboot }).into_response());
        }
        let left = deadline.saturating_duration_since(tokio::time::Instant::now());
        if left.is_zero() {
            break;
        }
        tokio::select! {
            _ = state.shutdown.cancelled() => break,
            _ = tokio::time::sleep(left) => break,
            _ = tokio::time::sleep(COMMAND_RECHECK) => {}
            woke = changed.changed() => {
                // A closed feed (the store going away) falls back to the recheck.
                let pause = if woke.is_ok() { COMMAND_COALESCE } else { COMMAND_RECHECK };
                tokio::time::sleep(pause.min(left)).await;
            }
        }
    }
    drop(slot);
    if wait < asked {
        // Too many polls wait already: this one comes back later, not at once.
        let retry = MAX_COMMAND_WAIT_SECS.to_string();
        return Ok((StatusCode::NO_CONTENT, [(header::RETRY_AFTER, retry)]).into_response());
    }
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(bases: &[&str]) -> String {
        let bases: Vec<String> = bases.iter().map(|b| b.to_string()).collect();
        let sources = stage_one_sources(&bases, &"a".repeat(64), &"b".repeat(64));
        let mut args = vec!["console=ttyS0,115200n8".to_string()];
        args.extend(server_args(&bases));
        args.extend(["ramboot.node=3".into(), "ramboot.token=0123abcd".into(), "ramboot.mac=52:54:00:12:34:56".into()]);
        BootScript {
            node_id: 3,
            boot_id: 12,
            mac: "52:54:00:12:34:56".parse().unwrap(),
            hostname: "node-525400123456",
            profile: "compute-node",
            stage1: "stage1",
            sources,
            args,
            retry_secs: ASK_AGAIN_SECS,
        }
        .render()
        .unwrap()
    }

    #[test]
    fn boot_script_snapshot() {
        insta::assert_snapshot!(script(&["http://10.213.0.1:8080"]));
    }

    /// With peers, each server is tried in turn (this one first), and the agent
    /// learns the others from `ramboot.peers`.
    #[test]
    fn boot_script_with_peers_snapshot() {
        let script = script(&["http://10.213.0.1:8080", "http://10.213.0.2:8080", "http://10.213.0.3:8080"]);
        insta::assert_snapshot!(script);
    }

    #[test]
    fn every_fallback_jump_has_its_label() {
        let script = script(&["http://10.213.0.1:8080", "http://10.213.0.2:8080"]);
        for line in script.lines() {
            if let Some((_, target)) = line.split_once("|| goto ") {
                assert!(script.lines().any(|l| l == format!(":{target}")), "no label {target}:\n{script}");
            }
        }
        let kernels: Vec<&str> = script.lines().filter(|l| l.starts_with("kernel ")).collect();
        assert_eq!(kernels.len(), 2, "{script}");
        assert!(kernels
            .iter()
            .all(|k| k.contains("ramboot.server=http://10.213.0.1:8080 ramboot.peers=http://10.213.0.2:8080")));
        assert!(script.trim_end().ends_with("reboot"), "{script}");
    }

    #[test]
    fn refusal_snapshot() {
        let script = refusal_script("52:54:00:12:34:56", "profile \"x\" does not exist", None).render().unwrap();
        insta::assert_snapshot!(script);
    }

    #[test]
    fn refusal_cannot_inject_script_lines() {
        let script = refusal_script("52:54:00:12:34:56\nshell", "bad\nchain http://evil/", None).render().unwrap();
        assert_eq!(script.lines().count(), 6, "{script}");
        assert!(script.contains("bad?chain"), "{script}");
        assert!(!script.contains("shell"), "{script}");
    }

    #[test]
    fn overlay_tar_has_modes_and_relative_paths() {
        let files = vec![
            crate::profiles::RenderedFile { path: "/etc/hostname".into(), mode: 0o644, contents: b"n1\n".to_vec() },
            crate::profiles::RenderedFile { path: "/etc/key".into(), mode: 0o600, contents: b"k".to_vec() },
        ];
        let bytes = tar_of(&files).unwrap();
        let mut archive = tar::Archive::new(bytes.as_slice());
        let entries: Vec<(String, u32)> = archive
            .entries()
            .unwrap()
            .map(|e| {
                let e = e.unwrap();
                (e.path().unwrap().to_string_lossy().into_owned(), e.header().mode().unwrap())
            })
            .collect();
        assert_eq!(entries, [("etc/hostname".to_string(), 0o644), ("etc/key".to_string(), 0o600)]);
    }
}
