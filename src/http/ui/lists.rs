//! The reference pages: profiles (with load errors at `file:line:col`), images
//! (sizes, digests, who uses them), volumes (node and LUN), tokens (admin only)
//! and the audit trail.

use super::{format, render, Chrome, UiError, Viewer};
use crate::http::api::convert::all;
use crate::http::AppState;
use crate::store;
use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;

pub struct ProfileRow {
    pub name: String,
    pub revision: String,
    pub file: String,
    pub image: String,
    pub stage1: String,
    pub selectors: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/profiles.html")]
struct ProfilesPage {
    chrome: Chrome,
    profiles: Vec<ProfileRow>,
    errors: Vec<String>,
}

pub async fn profiles(State(state): State<AppState>, viewer: Viewer) -> Response {
    let set = state.profiles.current();
    let mut profiles: Vec<ProfileRow> = set
        .loaded_iter()
        .map(|p| ProfileRow {
            name: p.profile.name.clone(),
            revision: p.revision.clone(),
            file: p.file.display().to_string(),
            image: p.profile.image.clone(),
            stage1: p.profile.stage1.clone(),
            selectors: p.profile.selectors.iter().map(|s| s.describe()).collect(),
        })
        .collect();
    profiles.sort_by(|a, b| a.name.cmp(&b.name));
    let errors = state.profiles.errors().iter().map(|e| e.to_string()).collect();
    let page = ProfilesPage { chrome: Chrome::new(Some(&viewer), "/ui/profiles", ""), profiles, errors };
    render(StatusCode::OK, &page, viewer.flash.is_some())
}

pub struct ImageRow {
    pub name: String,
    pub kind: String,
    pub built: String,
    /// (artifact, size, digest)
    pub artifacts: Vec<(String, String, String)>,
    pub profiles: Vec<String>,
    pub booting: i64,
}

#[derive(Template)]
#[template(path = "ui/images.html")]
struct ImagesPage {
    chrome: Chrome,
    images: Vec<ImageRow>,
}

pub async fn images(State(state): State<AppState>, viewer: Viewer) -> Result<Response, UiError> {
    let store_of_images = state.images.clone();
    let manifests = tokio::task::spawn_blocking(move || store_of_images.list())
        .await
        .map_err(crate::http::error::ApiError::from)?
        .map_err(crate::http::error::ApiError::from)?;
    let booting = state.store.images_in_current_boots().await?;
    let set = state.profiles.current();
    let images = manifests
        .into_iter()
        .map(|m| {
            let mut profiles: Vec<String> = set
                .loaded_iter()
                .filter(|p| p.profile.image == m.name || p.profile.stage1 == m.name)
                .map(|p| p.profile.name.clone())
                .collect();
            if m.name == state.config.discovery_stage1 {
                profiles.push("(discovery)".into());
            }
            profiles.sort();
            ImageRow {
                booting: booting.get(&m.name).copied().unwrap_or(0),
                kind: format!("{:?}", m.kind).to_lowercase(),
                built: format::time(m.built_at_ms),
                artifacts: m
                    .artifacts
                    .iter()
                    .map(|(name, a)| (name.clone(), format::bytes(a.size), a.digest.to_string()))
                    .collect(),
                profiles,
                name: m.name,
            }
        })
        .collect();
    let page = ImagesPage { chrome: Chrome::new(Some(&viewer), "/ui/images", ""), images };
    Ok(render(StatusCode::OK, &page, viewer.flash.is_some()))
}

pub struct VolumeRow {
    pub name: String,
    pub size: String,
    pub node: Option<i64>,
    pub node_name: String,
    pub lun: String,
    pub created: String,
}

#[derive(Template)]
#[template(path = "ui/volumes.html")]
struct VolumesPage {
    chrome: Chrome,
    volumes: Vec<VolumeRow>,
}

pub async fn volumes(State(state): State<AppState>, viewer: Viewer) -> Result<Response, UiError> {
    let all = state.store.volumes().await?;
    // Every node's name in one read, not one per volume.
    let names: std::collections::BTreeMap<i64, String> = if all.iter().any(|v| v.node_id.is_some()) {
        state.store.nodes().await?.into_iter().map(|n| (n.id, n.hostname)).collect()
    } else {
        Default::default()
    };
    let mut volumes = Vec::new();
    for v in all {
        let node_name = match v.node_id {
            Some(id) => names.get(&id).cloned().unwrap_or_else(|| format!("node {id}")),
            None => String::new(),
        };
        volumes.push(VolumeRow {
            size: format::bytes(v.size_bytes),
            node: v.node_id,
            node_name,
            lun: v.lun.map(|l| l.to_string()).unwrap_or_default(),
            created: format::time(v.created_at_ms),
            name: v.name,
        });
    }
    let page = VolumesPage { chrome: Chrome::new(Some(&viewer), "/ui/volumes", ""), volumes };
    Ok(render(StatusCode::OK, &page, viewer.flash.is_some()))
}

pub struct TokenRow {
    pub name: String,
    pub role: &'static str,
    pub created: String,
    pub expires: String,
}

#[derive(Template)]
#[template(path = "ui/tokens.html")]
struct TokensPage {
    chrome: Chrome,
    csrf: String,
    tokens: Vec<TokenRow>,
}

pub async fn tokens(State(state): State<AppState>, viewer: Viewer) -> Result<Response, UiError> {
    viewer.require_admin()?;
    let now = crate::clock::now_ms();
    let tokens = state
        .store
        .list_tokens()
        .await?
        .into_iter()
        .map(|t| TokenRow {
            role: t.role.as_str(),
            created: format::time(t.created_at_ms),
            expires: match t.expires_at_ms {
                None => "never".into(),
                Some(at) if at <= now => format!("expired {}", format::time(at)),
                Some(at) => format::time(at),
            },
            name: t.name,
        })
        .collect();
    let page = TokensPage { chrome: Chrome::new(Some(&viewer), "/ui/tokens", ""), csrf: viewer.csrf.clone(), tokens };
    Ok(render(StatusCode::OK, &page, viewer.flash.is_some()))
}

pub struct AuditRow {
    pub at: String,
    pub who: String,
    pub action: String,
    pub target: String,
    pub node: Option<i64>,
    pub changes: Vec<String>,
}

#[derive(Template)]
#[template(path = "ui/audit.html")]
struct AuditPage {
    chrome: Chrome,
    node: String,
    actor: String,
    records: Vec<AuditRow>,
    older: Option<String>,
}

const AUDIT_PAGE: i64 = 200;

pub async fn audit(
    State(state): State<AppState>,
    viewer: Viewer,
    RawQuery(raw): RawQuery,
) -> Result<Response, UiError> {
    let (mut node_text, mut actor, mut before) = (String::new(), String::new(), None);
    for (k, v) in url::form_urlencoded::parse(raw.unwrap_or_default().as_bytes()) {
        match &*k {
            "node" => node_text = v.trim().chars().take(40).collect(),
            "actor" => actor = v.trim().chars().take(200).collect(),
            "before" => before = v.parse::<i64>().ok(),
            _ => {}
        }
    }
    let node = match node_text.as_str() {
        "" => None,
        text => Some(crate::http::api::find_node(&state, text).await?.id),
    };
    let filter = store::AuditFilter {
        node,
        actor: (!actor.is_empty()).then(|| actor.clone()),
        after: 0,
        limit: AUDIT_PAGE,
        before,
        newest_first: true,
    };
    let records: Vec<ramboot_api::AuditRecord> = all(state.store.audit(&filter).await?);
    let older = (records.len() as i64 == AUDIT_PAGE).then(|| {
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        if !node_text.is_empty() {
            url.append_pair("node", &node_text);
        }
        if !actor.is_empty() {
            url.append_pair("actor", &actor);
        }
        url.append_pair("before", &records.last().map(|r| r.id).unwrap_or(0).to_string());
        format!("/ui/audit?{}", url.finish())
    });
    let records = records
        .into_iter()
        .map(|r| AuditRow {
            at: format::time(r.at_ms),
            who: crate::cli::audit_actor(&r.actor),
            changes: crate::cli::audit_changes(&r.before, &r.after),
            target: format!("{} {}", r.target_kind, r.target),
            node: r.node_id,
            action: r.action,
        })
        .collect();
    let page =
        AuditPage { chrome: Chrome::new(Some(&viewer), "/ui/audit", ""), node: node_text, actor, records, older };
    Ok(render(StatusCode::OK, &page, viewer.flash.is_some()))
}

pub struct RolloutCard {
    pub id: i64,
    pub status: String,
    /// The state badge's colour class.
    pub status_class: &'static str,
    pub reason: Option<String>,
    pub description: String,
    pub done: u32,
    pub total: u32,
    pub failed: u32,
    pub down: String,
    pub created: String,
    pub created_by: String,
    pub batch: u32,
    pub max_failures: u32,
    pub driver: String,
    pub active: bool,
    /// (node id, name, phase, attempts, target)
    pub nodes: Vec<(i64, String, String, u32, String)>,
}

#[derive(Template)]
#[template(path = "ui/rollouts.html")]
struct RolloutsPage {
    chrome: Chrome,
    admin: bool,
    csrf: String,
    rollouts: Vec<RolloutCard>,
}

const ROLLOUTS_SHOWN: i64 = 50;

pub async fn rollouts(State(state): State<AppState>, viewer: Viewer) -> Result<Response, UiError> {
    let mut cards = Vec::new();
    for row in state.store.rollouts(ROLLOUTS_SHOWN).await? {
        let r = crate::http::api::rollouts::view(&state, row).await?;
        let name = |id: i64| {
            r.nodes.iter().find(|n| n.node_id == id).and_then(|n| n.hostname.clone()).unwrap_or_else(|| id.to_string())
        };
        cards.push(RolloutCard {
            id: r.id,
            status_class: match r.status.as_str() {
                "done" => "ready",
                "running" => "booting",
                "halted" | "aborted" => "failed",
                _ => "maintenance",
            },
            active: matches!(r.status.as_str(), "running" | "paused" | "halted"),
            reason: r.reason.clone(),
            description: r.description.clone(),
            done: r.progress.done,
            total: r.progress.total,
            failed: r.progress.failed,
            down: r.progress.down.iter().map(|id| name(*id)).collect::<Vec<_>>().join(", "),
            created: format::time(r.created_at_ms),
            created_by: r.created_by.clone(),
            batch: r.batch_size,
            max_failures: r.max_failures,
            driver: r.driver.clone().unwrap_or_else(|| "no server yet".into()),
            nodes: r
                .nodes
                .iter()
                .map(|n| {
                    let phase = match &n.phase {
                        ramboot_api::rollouts::NodePhase::Failed { reason, .. } => format!("failed: {reason}"),
                        other => other.name().to_string(),
                    };
                    (n.node_id, name(n.node_id), phase, n.attempts, n.target_profile.clone())
                })
                .collect(),
            status: r.status,
        });
    }
    let page = RolloutsPage {
        chrome: Chrome::new(Some(&viewer), "/ui/rollouts", "rollouts"),
        admin: viewer.is_admin(),
        csrf: viewer.csrf.clone(),
        rollouts: cards,
    };
    Ok(render(StatusCode::OK, &page, viewer.flash.is_some()))
}
