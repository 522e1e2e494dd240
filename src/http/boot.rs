//! The boot tier: the per-node iPXE script and the stage-one agent's endpoints.
//!
//! `GET /boot.ipxe?mac=` asks the boot planner (`ramboot_core::plan`) what a node boots: its explicit profile, else the
//! most specific matching selector, else the default profile, else a discovery boot
//! (stage one only, waiting for an assignment). A node in maintenance, or one that
//! used up its retries, gets a script that says so and asks again later; a node
//! that failed recently waits out its backoff first. Every boot gets a fresh
//! per-boot token on its kernel command line. The agent endpoints accept only that
//! token (`Authorization: Bearer`), and only while its boot is the node's current one.

use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::clock::now_ms;
use crate::profiles::NodeFacts;
use crate::store::{Boot, BootImage, EventKind, Node};
use askama::Template;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ramboot_core::node::{MacAddr, NodeState};
use ramboot_core::plan::{
    plan_boot, profile_boot, resolve_profile, volumes_wanted, Decision, NodeView, Refusal, Settings, VolumeWanted,
};
use ramboot_proto::{
    human_bytes, paths, AgentEvent, Inventory, Plan, PlanImage, PlanWait, ReportedState, OVERLAY_PATH,
};
use serde::Deserialize;
use std::collections::BTreeMap;
use tracing::{info, warn, Instrument};

/// How often a script that refused to boot asks again, and a waiting agent polls.
const ASK_AGAIN_SECS: u32 = 60;
const DISCOVERY_POLL_SECS: u64 = 10;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/boot.ipxe", get(boot_script))
        .route(paths::HELLO, post(hello))
        .route(paths::PLAN, get(plan))
        .route(paths::EVENTS, post(event))
        .route(OVERLAY_PATH, get(overlay))
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
    pub kernel_url: String,
    pub initrd_url: String,
    pub args: Vec<String>,
    pub failures: i64,
    pub retry_delay_secs: u64,
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
fn refusal(mac: &str, reason: &str) -> Result<Response, ApiError> {
    Ok(ipxe(render(&refusal_script(mac, reason))?))
}

/// Only printable ASCII reaches the script (iPXE echoes it), so neither a client's
/// query string nor an error message can inject script lines.
fn refusal_script(mac: &str, reason: &str) -> RefuseScript {
    let reason: String = reason.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    let mac: String = mac.chars().take(32).filter(|c| c.is_ascii_hexdigit() || *c == ':' || *c == '-').collect();
    RefuseScript { mac, reason, retry_secs: ASK_AGAIN_SECS }
}

/// What selectors see of a node.
fn facts_of(node: &Node) -> NodeFacts {
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
fn view_of(node: &Node) -> NodeView<'_> {
    NodeView {
        state: node.state,
        failures: node.failures,
        maintenance_reason: node.maintenance_reason.as_deref(),
        assigned_profile: node.profile.as_deref(),
        hostname: &node.hostname,
        facts: facts_of(node),
    }
}

fn settings(state: &AppState) -> Settings<'_> {
    Settings {
        lifecycle: &state.config.lifecycle,
        default_profile: state.config.default_profile.as_deref(),
        discovery_stage1: &state.config.discovery_stage1,
    }
}

async fn boot_script(State(state): State<AppState>, Query(q): Query<BootQuery>) -> Result<Response, ApiError> {
    let raw_mac = q.mac.unwrap_or_default();
    let Ok(mac) = raw_mac.parse::<MacAddr>() else {
        return refusal(&raw_mac, "the script URL carries no valid MAC address");
    };
    let span = tracing::info_span!("boot", %mac);
    async move {
        let now = now_ms();
        let node = state.store.ensure_node(mac, now).await?;
        // One snapshot of the profiles for the whole decision.
        let profiles = state.profiles.current();
        let plan = match plan_boot(&view_of(&node), &*profiles, &state.images, settings(&state)) {
            Decision::Boot(plan) => *plan,
            Decision::Refuse(refusal) => return refuse(&state, &node, &refusal, now).await,
        };
        let token = crate::token::generate().map_err(ApiError::internal)?;
        let token_hash = crate::token::hash(&token);
        let (boot_id, profile_name, why) = match &plan.profile {
            Some(boot) => {
                let why = boot.describe();
                let id =
                    state.store.start_boot(node.id, &boot.profile, Some(&boot.image), &token_hash, now, &why).await?;
                (id, boot.profile.as_str(), why)
            }
            None => {
                let id = state.store.start_discovery_boot(node.id, &token_hash, now).await?;
                (id, "(discovery)", "no profile: discovery".to_string())
            }
        };
        let base = state.config.boot_url();
        let mut args = plan.kernel_args;
        args.extend([
            format!("{}={base}", ramboot_proto::cmdline::SERVER),
            format!("{}={}", ramboot_proto::cmdline::NODE, node.id),
            format!("{}={token}", ramboot_proto::cmdline::TOKEN),
            format!("{}={mac}", ramboot_proto::cmdline::MAC),
        ]);
        let script = BootScript {
            node_id: node.id,
            boot_id,
            mac,
            hostname: &node.hostname,
            profile: profile_name,
            stage1: &plan.stage1.name,
            kernel_url: format!("{base}/artifacts/sha256/{}/vmlinuz", plan.stage1.kernel_digest),
            initrd_url: format!("{base}/artifacts/sha256/{}/initrd.img", plan.stage1.initrd_digest),
            args,
            failures: node.failures,
            retry_delay_secs: plan.retry_delay.as_secs(),
        };
        info!(node = node.id, boot = boot_id, profile = %profile_name, %why, "boot started: iPXE script served");
        Ok(ipxe(render(&script)?))
    }
    .instrument(span)
    .await
}

/// Tell the node why it does not boot; a profile or image an operator must fix is
/// also recorded in its event log.
async fn refuse(state: &AppState, node: &Node, why: &Refusal, now: i64) -> Result<Response, ApiError> {
    let reason = why.reason();
    match why {
        Refusal::Maintenance { .. } => info!(node = node.id, %reason, "node in maintenance: told not to boot"),
        Refusal::RetriesExhausted { .. } => warn!(node = node.id, "{reason}"),
        Refusal::Unbootable { .. } => {
            warn!(node = node.id, %reason, "refusing to boot");
            state.store.add_event(node.id, None, EventKind::Info, &format!("boot refused: {reason}"), now).await?;
        }
    }
    refusal(&node.mac.to_string(), &reason)
}

/// The node and boot behind a valid per-boot bearer token.
pub struct BootAuth {
    pub node: Node,
    pub boot: Boot,
}

impl FromRequestParts<AppState> for BootAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token =
            super::auth::bearer(parts).ok_or_else(|| ApiError::unauthorized("a per-boot bearer token is required"))?;
        let (node, boot) = state
            .store
            .boot_by_token_hash(&crate::token::hash(token))
            .await?
            .ok_or_else(|| ApiError::unauthorized("unknown or expired boot token"))?;
        Ok(BootAuth { node, boot })
    }
}

async fn hello(
    State(state): State<AppState>,
    auth: BootAuth,
    ApiJson(inv): ApiJson<Inventory>,
) -> Result<StatusCode, ApiError> {
    let now = now_ms();
    let inventory = serde_json::to_value(&inv).map_err(|e| ApiError::bad_request(e.to_string()))?;
    state.store.set_inventory(auth.node.id, &inventory, now).await?;
    let summary =
        format!("agent hello: {} CPUs, {} RAM, {} NICs", inv.cpus, human_bytes(inv.memory_bytes), inv.nics.len());
    if auth.boot.image.is_some() {
        state.store.agent_transition(auth.node.id, auth.boot.id, NodeState::Stage1, &summary, now).await?;
    } else {
        // Discovery: the inventory may be what a selector was waiting for.
        state.store.add_event(auth.node.id, Some(auth.boot.id), EventKind::Info, &summary, now).await?;
        let node = state.store.node(auth.node.id).await?;
        pin_if_resolvable(&state, &node, &auth.boot, now).await?;
    }
    info!(node = auth.node.id, boot = auth.boot.id, "{summary}");
    Ok(StatusCode::NO_CONTENT)
}

/// For a discovery boot: if the node now has a profile, pin it into the boot.
async fn pin_if_resolvable(
    state: &AppState,
    node: &Node,
    boot: &Boot,
    now: i64,
) -> Result<Option<BootImage>, ApiError> {
    let profiles = state.profiles.current();
    let Ok(Some((profile, why))) = resolve_profile(&view_of(node), &*profiles, state.config.default_profile.as_deref())
    else {
        return Ok(None);
    };
    match profile_boot(profile, why, &state.images) {
        Ok((_, pinned)) => {
            state.store.pin_boot(node.id, boot.id, &pinned.profile, &pinned.image, &pinned.why, now).await?;
            Ok(Some(pinned.image))
        }
        Err(reason) => {
            let note = format!("cannot load {}: {reason}", profile.profile.name);
            state.store.add_event(node.id, Some(boot.id), EventKind::Info, &note, now).await?;
            Ok(None)
        }
    }
}

async fn plan(State(state): State<AppState>, auth: BootAuth) -> Result<Response, ApiError> {
    let (image, profile) = match auth.boot.image.clone() {
        Some(image) => (image, auth.boot.profile.clone()),
        None => match pin_if_resolvable(&state, &auth.node, &auth.boot, now_ms()).await? {
            Some(image) => {
                let boot =
                    state.store.boot(auth.boot.id).await?.ok_or_else(|| ApiError::unauthorized("boot is gone"))?;
                (image, boot.profile)
            }
            None => {
                let wait = PlanWait {
                    reason: "no profile assigned yet: assign one (API, CLI) or add a selector".into(),
                    retry_after_secs: DISCOVERY_POLL_SECS,
                };
                return Ok((StatusCode::ACCEPTED, Json(wait)).into_response());
            }
        },
    };
    let base = state.config.boot_url();
    let (has_files, volumes) = match state.profiles.current().get(&profile) {
        Some(p) => (!p.files.is_empty(), volumes_wanted(p, &auth.node.hostname)),
        None => (false, vec![]),
    };
    ensure_profile_volumes(&state, &auth.node, &profile, &volumes).await?;
    let iscsi = match &state.volumes {
        Some(service) => {
            // The target admits the node from this address only (its last lease).
            let address = auth.node.ip.as_deref().and_then(|ip| ip.parse().ok());
            service.node_plan(auth.node.id, address).await.map_err(iscsi_unavailable)?
        }
        None => None,
    };
    Ok(Json(Plan {
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
        Some(volumes) => volumes.ensure_declared(node.id, wanted, now).await.map_err(iscsi_unavailable)?,
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
        "server": { "url": state.config.boot_url() },
    });
    let secrets = read_secrets(state.config.secrets.as_deref()).await?;
    let files = loaded
        .render_overlay(&facts, &secrets)
        .map_err(|e| ApiError::new(StatusCode::UNPROCESSABLE_ENTITY, "render_failed", e.to_string()))?;
    let archive = tar_of(&files).map_err(ApiError::internal)?;
    Ok(([(header::CONTENT_TYPE, "application/x-tar")], archive).into_response())
}

/// Secrets are read at render time, so rotating one needs no restart.
async fn read_secrets(path: Option<&std::path::Path>) -> Result<BTreeMap<String, String>, ApiError> {
    let Some(path) = path else { return Ok(BTreeMap::new()) };
    let path = path.to_path_buf();
    tokio::task::spawn_blocking(move || crate::yaml::load::<BTreeMap<String, String>>(&path))
        .await
        .map_err(ApiError::internal)?
        .map_err(|e| ApiError::internal(format!("secrets file: {e}")))
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
    let message: String = ev.message.chars().take(1024).collect();
    let (node, boot) = (auth.node.id, auth.boot.id);
    match ev.state {
        Some(reported) => {
            let next = match reported {
                ReportedState::Loading => NodeState::Loading,
                ReportedState::Handoff => NodeState::Handoff,
                ReportedState::Ready => NodeState::Ready,
                ReportedState::Failed => NodeState::Failed,
            };
            let from = auth.node.state;
            state.store.agent_transition(node, boot, next, &message, now).await?;
            super::metrics::record_phase(&auth.boot.profile, from, now - auth.node.state_since_ms);
            info!(node, boot, state = %next, %message, "node moved");
        }
        // The agent's message already says how far it got, in human units.
        None => state.store.add_event(node, Some(boot), EventKind::Progress, &message, now).await?,
    }
    Ok(StatusCode::NO_CONTENT)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn script(retry_delay_secs: u64) -> String {
        BootScript {
            node_id: 3,
            boot_id: 12,
            mac: "52:54:00:12:34:56".parse().unwrap(),
            hostname: "node-525400123456",
            profile: "compute-node",
            stage1: "stage1",
            kernel_url: format!("http://10.213.0.1:8080/artifacts/sha256/{}/vmlinuz", "a".repeat(64)),
            initrd_url: format!("http://10.213.0.1:8080/artifacts/sha256/{}/initrd.img", "b".repeat(64)),
            args: vec![
                "console=ttyS0,115200n8".into(),
                "ramboot.server=http://10.213.0.1:8080".into(),
                "ramboot.node=3".into(),
                "ramboot.token=0123abcd".into(),
                "ramboot.mac=52:54:00:12:34:56".into(),
            ],
            failures: if retry_delay_secs > 0 { 2 } else { 0 },
            retry_delay_secs,
        }
        .render()
        .unwrap()
    }

    #[test]
    fn boot_script_snapshot() {
        insta::assert_snapshot!(script(0));
    }

    #[test]
    fn retry_script_snapshot() {
        insta::assert_snapshot!(script(30));
    }

    #[test]
    fn refusal_snapshot() {
        let script = refusal_script("52:54:00:12:34:56", "profile \"x\" does not exist").render().unwrap();
        insta::assert_snapshot!(script);
    }

    #[test]
    fn refusal_cannot_inject_script_lines() {
        let script = refusal_script("52:54:00:12:34:56\nshell", "bad\nchain http://evil/").render().unwrap();
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
