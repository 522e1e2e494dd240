//! `/rollouts`: start a rolling re-provision, follow it, pause, resume, abort.

use super::{check_after, check_limit, find_node, query};
use crate::clock::now_ms;
use crate::http::auth::{Admin, Operator};
use crate::http::error::{ApiError, ApiJson};
use crate::http::AppState;
use crate::store::{self, RolloutHooks, RolloutRow, RolloutTarget};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::Json;
use ramboot_api::{ErrorBody, EventQuery, NewRollout, Rollout, RolloutEvent, RolloutNode};
use ramboot_core::rollout::{Command, RolloutSpec};
use std::collections::{BTreeMap, BTreeSet};
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_rollouts, start_rollout))
        .routes(routes!(show_rollout))
        .routes(routes!(rollout_events))
        .routes(routes!(pause_rollout))
        .routes(routes!(resume_rollout))
        .routes(routes!(abort_rollout))
}

/// How long a reboot (override + power cycle) may take to report back.
const REBOOT_TIMEOUT_MS: i64 = 5 * 60 * 1000;
/// A rollout without hooks still needs a positive hook timeout.
const NO_HOOK_TIMEOUT_MS: i64 = 60 * 1000;
/// Ready timeouts beyond a day are a typo.
const MAX_READY_TIMEOUT_SECS: u64 = 24 * 3600;

/// A rollout's id from the path: a number, else a 400 in the API's error shape
/// (axum's own rejection is plain text).
fn rollout_id(text: &str) -> Result<i64, ApiError> {
    text.parse().map_err(|_| ApiError::bad_request(format!("rollout id {text:?} is not a number")))
}

pub(crate) async fn view(state: &AppState, row: RolloutRow) -> Result<Rollout, ApiError> {
    let ids: BTreeSet<i64> = row.targets.keys().copied().collect();
    let nodes = state.store.nodes_with_boots(&ids).await?;
    let progress = row.state.progress();
    let reason = match &row.state.status {
        ramboot_core::rollout::RolloutStatus::Halted { reason } => Some(reason.clone()),
        _ => None,
    };
    let node_views = row
        .state
        .nodes
        .iter()
        .map(|n| {
            let known = nodes.get(&n.node_id).map(|(node, _)| node);
            let target = row.targets.get(&n.node_id);
            RolloutNode {
                node_id: n.node_id,
                mac: known.map(|k| k.mac.to_string()),
                hostname: known.map(|k| k.hostname.clone()),
                phase: n.phase.clone(),
                attempts: n.attempts,
                target_profile: target.map(|t| t.profile.clone()).unwrap_or_default(),
                target_digest: target.and_then(|t| t.digest.clone()),
            }
        })
        .collect();
    Ok(Rollout {
        id: row.id,
        created_at_ms: row.created_at_ms,
        created_by: row.created_by,
        description: row.description,
        status: row.state.status.name().to_string(),
        reason,
        progress,
        batch_size: row.state.spec.batch_size,
        max_failures: row.state.spec.max_failures,
        drain: row.hooks.drain,
        undrain: row.hooks.undrain,
        command: row.command,
        driver: row.driver,
        nodes: node_views,
        updated_at_ms: row.updated_at_ms,
    })
}

#[utoipa::path(get, path = "/rollouts", tag = "rollouts",
    responses((status = 200, body = Vec<Rollout>), (status = 401, body = ErrorBody)))]
async fn list_rollouts(State(state): State<AppState>, _op: Operator) -> Result<Json<Vec<Rollout>>, ApiError> {
    let mut out = vec![];
    for row in state.store.rollouts(100).await? {
        out.push(view(&state, row).await?);
    }
    Ok(Json(out))
}

#[utoipa::path(get, path = "/rollouts/{id}", tag = "rollouts", params(("id" = i64, Path, description = "rollout id")),
    responses((status = 200, body = Rollout), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_rollout(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    let row = state.store.rollout(rollout_id(&id)?).await?;
    Ok(Json(view(&state, row).await?))
}

#[utoipa::path(get, path = "/rollouts/{id}/events", tag = "rollouts", params(("id" = i64, Path, description = "rollout id"), EventQuery),
    responses((status = 200, body = Vec<RolloutEvent>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn rollout_events(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Vec<RolloutEvent>>, ApiError> {
    let id = rollout_id(&id)?;
    let q = query(q)?;
    check_after(q.after)?;
    state.store.rollout(id).await?;
    let events = state.store.rollout_events(id, q.after, check_limit(q.limit)?).await?;
    Ok(Json(
        events
            .into_iter()
            .map(|e| RolloutEvent { id: e.id, at_ms: e.at_ms, node_id: e.node_id, message: e.message })
            .collect(),
    ))
}

/// The nodes a rollout takes: those matching every criterion, by id.
async fn select(state: &AppState, new: &NewRollout) -> Result<Vec<store::Node>, ApiError> {
    if new.labels.is_empty() && new.profile.is_none() && new.nodes.is_empty() {
        return Err(ApiError::unprocessable("select nodes: by labels, profile or an explicit list (at least one)"));
    }
    let mut explicit = BTreeSet::new();
    for n in &new.nodes {
        explicit.insert(find_node(state, n).await?.id);
    }
    let all = state.store.nodes().await?;
    Ok(all
        .into_iter()
        .filter(|n| explicit.is_empty() || explicit.contains(&n.id))
        .filter(|n| new.labels.iter().all(|(k, v)| n.labels.get(k) == Some(v)))
        .filter(|n| new.profile.as_ref().is_none_or(|p| n.profile.as_ref() == Some(p)))
        .collect())
}

#[utoipa::path(post, path = "/rollouts", tag = "rollouts", request_body = NewRollout,
    responses((status = 201, body = Rollout), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn start_rollout(
    State(state): State<AppState>,
    Admin(actor): Admin,
    ApiJson(new): ApiJson<NewRollout>,
) -> Result<(StatusCode, Json<Rollout>), ApiError> {
    Ok((StatusCode::CREATED, Json(start(&state, &actor, new).await?)))
}

/// Validate and start a rollout: what `POST /rollouts` and the dashboard do.
pub(crate) async fn start(state: &AppState, actor: &store::Actor, new: NewRollout) -> Result<Rollout, ApiError> {
    if new.batch_size == 0 {
        return Err(ApiError::unprocessable("batch_size must be at least 1"));
    }
    if !(1..=MAX_READY_TIMEOUT_SECS).contains(&new.ready_timeout_secs) {
        return Err(ApiError::unprocessable(format!(
            "ready_timeout_secs must be between 1 and {MAX_READY_TIMEOUT_SECS}"
        )));
    }
    let mut hook_timeout_ms = NO_HOOK_TIMEOUT_MS;
    for name in [&new.drain, &new.undrain].into_iter().flatten() {
        match state.config.hooks.get(name) {
            Some(hook) => hook_timeout_ms = hook_timeout_ms.max(hook.timeout.as_millis() as i64),
            None => {
                let known: Vec<&str> = state.config.hooks.keys().map(String::as_str).collect();
                return Err(ApiError::unprocessable(format!(
                    "no hook named {name:?} in the server's config (hooks: {})",
                    if known.is_empty() { "none".to_string() } else { known.join(", ") }
                )));
            }
        }
    }
    let profiles = state.profiles.current();
    if let Some(p) = &new.to_profile {
        if profiles.get(p).is_none() {
            return Err(ApiError::unprocessable(format!("no valid profile named {p:?}")));
        }
    }
    let nodes = select(state, &new).await?;
    if nodes.is_empty() {
        return Err(ApiError::unprocessable("no node matches the selection"));
    }
    let mut targets = BTreeMap::new();
    for node in &nodes {
        let Some(profile) = new.to_profile.clone().or_else(|| node.profile.clone()) else {
            return Err(ApiError::unprocessable(format!("node {} has no profile assigned; give to_profile", node.mac)));
        };
        let image = profiles.get(&profile).map(|p| p.image.clone()).unwrap_or_default();
        // The digest the profile's image has now: a boot of it counts as done.
        let digest = ramboot_core::plan::Images::rootfs(&state.images, &image).ok().map(|i| i.digest);
        targets.insert(node.id, RolloutTarget { profile, digest, assign: new.to_profile.is_some() });
    }
    let spec = RolloutSpec {
        batch_size: new.batch_size,
        max_failures: new.max_failures,
        ready_timeout_ms: new.ready_timeout_secs as i64 * 1000,
        hook_timeout_ms,
        reboot_timeout_ms: REBOOT_TIMEOUT_MS,
        drain_hook: new.drain.is_some(),
        undrain_hook: new.undrain.is_some(),
    };
    let ids: Vec<i64> = nodes.iter().map(|n| n.id).collect();
    let rollout =
        ramboot_core::rollout::Rollout::new(spec, &ids).map_err(|e| ApiError::unprocessable(e.to_string()))?;
    let description = describe(&new, nodes.len());
    let hooks = RolloutHooks { drain: new.drain.clone(), undrain: new.undrain.clone() };
    let row = store::NewRollout { description, state: rollout, targets, hooks };
    let id = state.store.create_rollout(&row, actor, now_ms()).await?;
    state.rollouts.wake();
    let row = state.store.rollout(id).await?;
    view(state, row).await
}

/// The selection and target in words, for lists and the audit trail.
fn describe(new: &NewRollout, count: usize) -> String {
    let mut what = vec![];
    if !new.labels.is_empty() {
        let labels: Vec<String> = new.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        what.push(format!("labels {}", labels.join(",")));
    }
    if let Some(p) = &new.profile {
        what.push(format!("profile {p}"));
    }
    if !new.nodes.is_empty() {
        what.push(format!("nodes {}", new.nodes.join(",")));
    }
    let to = match &new.to_profile {
        Some(p) => format!("to profile {p}"),
        None => "to each profile's current image".to_string(),
    };
    format!("{count} node(s) with {}, {to}, batch {}", what.join(" and "), new.batch_size)
}

/// Pause, resume or abort a rollout: what the API's routes and the dashboard do.
pub(crate) async fn command(
    state: &AppState,
    actor: &store::Actor,
    id: i64,
    command: Command,
) -> Result<Rollout, ApiError> {
    let row = state.store.command_rollout(id, command, actor, now_ms()).await?;
    state.rollouts.wake();
    view(state, row).await
}

#[utoipa::path(post, path = "/rollouts/{id}/pause", tag = "rollouts", params(("id" = i64, Path, description = "rollout id")),
    responses((status = 200, body = Rollout), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn pause_rollout(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    command(&state, &actor, rollout_id(&id)?, Command::Pause).await.map(Json)
}

#[utoipa::path(post, path = "/rollouts/{id}/resume", tag = "rollouts", params(("id" = i64, Path, description = "rollout id")),
    responses((status = 200, body = Rollout), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn resume_rollout(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    command(&state, &actor, rollout_id(&id)?, Command::Resume).await.map(Json)
}

#[utoipa::path(post, path = "/rollouts/{id}/abort", tag = "rollouts", params(("id" = i64, Path, description = "rollout id")),
    responses((status = 200, body = Rollout), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn abort_rollout(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> Result<Json<Rollout>, ApiError> {
    command(&state, &actor, rollout_id(&id)?, Command::Abort).await.map(Json)
}
