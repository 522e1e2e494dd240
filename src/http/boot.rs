//! The boot tier: the per-node iPXE script and the stage-one agent's endpoints.
//!
//! `GET /boot.ipxe?mac=` starts a boot: it records the boot with a fresh per-boot
//! token and renders the script that loads stage one with that token on its kernel
//! command line. The agent endpoints accept only that token (`Authorization: Bearer`),
//! and only while its boot is the node's current one.

use super::error::{ApiError, ApiJson};
use super::{now_ms, AppState};
use crate::images::{ImageError, Manifest};
use crate::node::{MacAddr, NodeState};
use crate::store::{Boot, BootImage, EventKind, Node};
use askama::Template;
use axum::extract::{FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use ramboot_proto::{human_bytes, paths, AgentEvent, Inventory, Plan, PlanImage, ReportedState};
use serde::Deserialize;
use tracing::{info, warn, Instrument};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/boot.ipxe", get(boot_script))
        .route(paths::HELLO, post(hello))
        .route(paths::PLAN, get(plan))
        .route(paths::EVENTS, post(event))
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
    t.render().map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))
}

/// An iPXE script that explains why and retries later: iPXE shows it on the console.
fn refusal(mac: &str, reason: &str) -> Result<Response, ApiError> {
    Ok(ipxe(render(&refusal_script(mac, reason))?))
}

/// Only printable ASCII reaches the script (iPXE echoes it), so neither a client's
/// query string nor an error message can inject script lines.
fn refusal_script(mac: &str, reason: &str) -> RefuseScript {
    let reason: String = reason.chars().map(|c| if c.is_ascii_graphic() || c == ' ' { c } else { '?' }).collect();
    let mac: String = mac.chars().take(32).filter(|c| c.is_ascii_hexdigit() || *c == ':' || *c == '-').collect();
    RefuseScript { mac, reason, retry_secs: 30 }
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
        let profile_name = node.profile.clone().unwrap_or_else(|| state.config.default_profile.clone());
        let prepared = prepare_boot(&state, &profile_name);
        let (profile, stage1, rootfs) = match prepared {
            Ok(p) => p,
            Err(reason) => {
                warn!(node = node.id, %reason, "refusing to boot");
                state.store.add_event(node.id, None, EventKind::Info, &format!("boot refused: {reason}"), now).await?;
                return refusal(&mac.to_string(), &reason);
            }
        };
        let token = crate::token::generate()
            .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))?;
        let rootfs_art = rootfs.artifact("rootfs")?;
        let image = BootImage {
            name: rootfs.name.clone(),
            digest: rootfs_art.digest.to_string(),
            size: rootfs_art.size,
            format: rootfs_art.format.clone(),
        };
        let boot_id =
            state.store.start_boot(node.id, &profile.name, Some(&image), &crate::token::hash(&token), now).await?;
        let base = state.config.boot_url();
        let kernel = stage1.artifact("kernel")?;
        let initrd = stage1.artifact("initrd")?;
        let mut args = profile.kernel_args.clone();
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
            profile: &profile.name,
            stage1: &stage1.name,
            kernel_url: format!("{base}/artifacts/sha256/{}/vmlinuz", kernel.digest),
            initrd_url: format!("{base}/artifacts/sha256/{}/initrd.img", initrd.digest),
            args,
        };
        info!(node = node.id, boot = boot_id, profile = %profile.name, "boot started: iPXE script served");
        Ok(ipxe(render(&script)?))
    }
    .instrument(span)
    .await
}

/// Resolve a profile to the images it needs, or say why it cannot boot.
fn prepare_boot(
    state: &AppState,
    profile_name: &str,
) -> Result<(crate::profiles::Profile, Manifest, Manifest), String> {
    let profile =
        state.profiles.get(profile_name).cloned().ok_or_else(|| format!("profile {profile_name:?} does not exist"))?;
    let load = |name: &str| state.images.manifest(name).map_err(|e: ImageError| e.to_string());
    let stage1 = load(&profile.stage1)?;
    let rootfs = load(&profile.image)?;
    for (m, role) in [(&stage1, "kernel"), (&stage1, "initrd"), (&rootfs, "rootfs")] {
        m.artifact(role).map_err(|e| e.to_string())?;
    }
    Ok((profile, stage1, rootfs))
}

/// The node and boot behind a valid per-boot bearer token.
pub struct BootAuth {
    pub node: Node,
    pub boot: Boot,
}

impl FromRequestParts<AppState> for BootAuth {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let token = parts
            .headers
            .get(header::AUTHORIZATION)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.strip_prefix("Bearer "))
            .ok_or_else(|| ApiError::unauthorized("a per-boot bearer token is required"))?;
        let (node, boot) = state
            .store
            .boot_by_token_hash(&crate::token::hash(token.trim()))
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
    state.store.agent_transition(auth.node.id, auth.boot.id, NodeState::Stage1, &summary, now).await?;
    info!(node = auth.node.id, boot = auth.boot.id, "{summary}");
    Ok(StatusCode::NO_CONTENT)
}

async fn plan(State(state): State<AppState>, auth: BootAuth) -> Result<Json<Plan>, ApiError> {
    let image = auth
        .boot
        .image
        .ok_or_else(|| ApiError::new(StatusCode::CONFLICT, "no_image", "this boot has no image planned"))?;
    Ok(Json(Plan {
        node_id: auth.node.id,
        boot_id: auth.boot.id,
        hostname: auth.node.hostname,
        profile: auth.boot.profile,
        image: PlanImage {
            url: format!(
                "{}/artifacts/sha256/{}/{}.{}",
                state.config.boot_url(),
                image.digest,
                image.name,
                image.format
            ),
            name: image.name,
            sha256: image.digest,
            size: image.size,
            format: image.format,
        },
    }))
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
            state.store.agent_transition(node, boot, next, &message, now).await?;
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

    #[test]
    fn boot_script_snapshot() {
        let script = BootScript {
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
        };
        insta::assert_snapshot!(script.render().unwrap());
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
}
