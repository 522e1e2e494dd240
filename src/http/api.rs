//! The admin API (`/api/v1`): what operators and the `ramboot` CLI read.
//!
//! This skeleton is read-only and unauthenticated; bearer tokens with roles come
//! with the operator-surface work, and until then it should listen only where
//! operators are.

use super::error::ApiError;
use super::AppState;
use crate::images::Manifest;
use crate::node::MacAddr;
use crate::store::{Boot, Event, Lease, Node};
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use serde::{Deserialize, Serialize};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/nodes", get(list_nodes))
        .route("/nodes/{id}", get(show_node))
        .route("/nodes/{id}/events", get(node_events))
        .route("/leases", get(list_leases))
        .route("/images", get(list_images))
        .route("/profiles", get(list_profiles))
}

#[derive(Serialize, Deserialize)]
pub struct NodeList {
    pub nodes: Vec<Node>,
}

/// One node with its current boot and its event timeline.
#[derive(Serialize)]
pub struct NodeDetail {
    pub node: Node,
    pub boot: Option<Boot>,
    pub events: Vec<Event>,
}

async fn list_nodes(State(state): State<AppState>) -> Result<Json<NodeList>, ApiError> {
    Ok(Json(NodeList { nodes: state.store.nodes().await? }))
}

/// A node is addressed by its numeric id or by its MAC address.
async fn find_node(state: &AppState, id: &str) -> Result<Node, ApiError> {
    if let Ok(n) = id.parse::<i64>() {
        return Ok(state.store.node(n).await?);
    }
    let mac: MacAddr = id.parse().map_err(|_| ApiError::not_found(format!("no node {id:?} (use its id or MAC)")))?;
    state.store.node_by_mac(mac).await?.ok_or_else(|| ApiError::not_found(format!("no node with MAC {mac}")))
}

const MAX_EVENTS: i64 = 1000;

async fn show_node(State(state): State<AppState>, Path(id): Path<String>) -> Result<Json<NodeDetail>, ApiError> {
    let node = find_node(&state, &id).await?;
    let boot = match node.current_boot_id {
        Some(b) => state.store.boot(b).await?,
        None => None,
    };
    let events = state.store.events(node.id, 0, MAX_EVENTS).await?;
    Ok(Json(NodeDetail { node, boot, events }))
}

#[derive(Deserialize)]
struct EventQuery {
    #[serde(default)]
    after: i64,
    #[serde(default = "default_limit")]
    limit: i64,
}

fn default_limit() -> i64 {
    100
}

async fn node_events(
    State(state): State<AppState>,
    Path(id): Path<String>,
    query: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::bad_request(r.body_text()))?;
    if !(1..=MAX_EVENTS).contains(&q.limit) {
        return Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_EVENTS}")));
    }
    let node = find_node(&state, &id).await?;
    Ok(Json(state.store.events(node.id, q.after, q.limit).await?))
}

async fn list_leases(State(state): State<AppState>) -> Result<Json<Vec<Lease>>, ApiError> {
    Ok(Json(state.store.leases().await?))
}

async fn list_images(State(state): State<AppState>) -> Result<Json<Vec<Manifest>>, ApiError> {
    let images = state.images.clone();
    let list = tokio::task::spawn_blocking(move || images.list())
        .await
        .map_err(|e| ApiError::new(axum::http::StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()))??;
    Ok(Json(list))
}

async fn list_profiles(State(state): State<AppState>) -> Json<Vec<crate::profiles::Profile>> {
    Json(state.profiles.iter().map(|(p, _)| p.clone()).collect())
}
