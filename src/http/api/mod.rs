//! The admin API (`/api/v1`): what operators and the `ramboot` CLI call.
//!
//! Every route needs an API token: reads take `auth::Operator` (any role), changes
//! `auth::Admin`. Lists page by id (`after`, `limit`), newest state last. All errors
//! have one shape (`ramboot_api::ErrorBody`). `/events/stream` is Server-Sent Events,
//! capped in all and per client address (`http.max_event_streams*`): each open
//! stream polls the store, so they are not free.
//!
//! The bodies, queries and views are `ramboot_api`'s; `convert` maps the store's rows
//! and the loaded profiles and images into them. Handlers validate, call the store
//! and map: errors convert into `ApiError` with `?`.

pub(crate) mod convert;
pub(crate) mod power;
pub(crate) mod rollouts;

use super::auth::{Admin, Operator};
use super::error::{ApiError, ApiJson};
use super::AppState;
use crate::clock::now_ms;
use crate::store::{self, EventFeed, NodeChange, NodeFilter};
use axum::extract::rejection::QueryRejection;
use axum::extract::{ConnectInfo, Path, Query, State};
use axum::http::StatusCode;
use axum::response::sse::{Event as SseEvent, KeepAlive, Sse};
use axum::Json;
use convert::{all, profile_view};
use ramboot_api::{
    Attach, AuditList, AuditQuery, CreatedToken, DeleteNodeQuery, ErrorBody, Event, EventQuery, Grow, Inventory,
    InventoryFile, IscsiSettings, Lease, Lease6, Maintenance, Manifest, NewNode, NewToken, NewVolume, Node, NodeDetail,
    NodeIscsi, NodeList, NodeQuery, NodeUpdate, ProfileList, ProfileView, SourceError, StreamQuery, TokenInfo, Volume,
    MAX_PAGE,
};
use ramboot_core::node::{valid_hostname, valid_label, MacAddr, LABEL_RULE};
use std::collections::BTreeMap;
use std::convert::Infallible;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;
pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new()
        .routes(routes!(list_nodes, create_node))
        .routes(routes!(show_node, update_node, delete_node))
        .routes(routes!(reprovision_node))
        .routes(routes!(approve_node))
        .routes(routes!(maintenance_node))
        .routes(routes!(node_events))
        .routes(routes!(show_node_iscsi, set_node_iscsi))
        .routes(routes!(list_profiles))
        .routes(routes!(profile_errors))
        .routes(routes!(show_inventory))
        .routes(routes!(show_profile))
        .routes(routes!(list_images))
        .routes(routes!(show_image, delete_image))
        .routes(routes!(list_leases))
        .routes(routes!(list_leases6))
        .routes(routes!(list_events))
        .routes(routes!(event_stream))
        .routes(routes!(list_volumes, create_volume))
        .routes(routes!(show_volume, delete_volume))
        .routes(routes!(attach_volume))
        .routes(routes!(detach_volume))
        .routes(routes!(grow_volume))
        .routes(routes!(list_audit))
        .merge(rollouts::routes())
        .routes(routes!(list_tokens, create_token))
        .routes(routes!(delete_token))
        .merge(power::routes())
}

/// Open event streams by client address, shared by the server's handlers (the
/// API's and the dashboard's): one count per server, layered on by `http::router`.
#[derive(Clone, Default)]
pub struct EventStreams(crate::limits::SourceSlots);

const MAX_LABELS: usize = 32;
/// A node search names part of one MAC, hostname, IP or URL.
pub(crate) const MAX_SEARCH_CHARS: usize = 100;
/// Tokens that expire do so within ten years.
const MAX_TOKEN_LIFETIME_SECS: u64 = 10 * 366 * 24 * 3600;

fn query<T>(q: Result<Query<T>, QueryRejection>) -> Result<T, ApiError> {
    q.map(|Query(v)| v).map_err(|r| ApiError::bad_request(r.body_text()))
}

fn check_limit(limit: i64) -> Result<i64, ApiError> {
    if (1..=MAX_PAGE).contains(&limit) {
        Ok(limit)
    } else {
        Err(ApiError::bad_request(format!("limit must be between 1 and {MAX_PAGE}")))
    }
}

fn check_after(after: i64) -> Result<(), ApiError> {
    if after < 0 {
        return Err(ApiError::bad_request("after must not be negative"));
    }
    Ok(())
}

#[utoipa::path(get, path = "/nodes", tag = "nodes", params(NodeQuery),
    responses((status = 200, body = NodeList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_nodes(
    State(state): State<AppState>,
    _op: Operator,
    q: Result<Query<NodeQuery>, QueryRejection>,
) -> Result<Json<NodeList>, ApiError> {
    let q = query(q)?;
    let label = match &q.label {
        Some(l) => {
            let (k, v) = l.split_once('=').ok_or_else(|| ApiError::bad_request("label filter must be key=value"))?;
            Some((k.to_string(), v.to_string()))
        }
        None => None,
    };
    let limit = check_limit(q.limit)?;
    check_after(q.after)?;
    if q.q.as_ref().is_some_and(|t| t.chars().count() > MAX_SEARCH_CHARS) {
        return Err(ApiError::bad_request(format!("q must be at most {MAX_SEARCH_CHARS} characters")));
    }
    let filter = NodeFilter { state: q.state, profile: q.profile, label, text: q.q, after: q.after, limit };
    let nodes = state.store.list_nodes(&filter).await?;
    let next_after = (nodes.len() as i64 == limit).then(|| nodes.last().map(|n| n.id)).flatten();
    Ok(Json(NodeList { nodes: all(nodes), next_after }))
}

fn check_labels(labels: &BTreeMap<String, String>) -> Result<(), ApiError> {
    if labels.len() > MAX_LABELS {
        return Err(ApiError::unprocessable(format!("at most {MAX_LABELS} labels")));
    }
    for (k, v) in labels {
        if !valid_label(k) || !valid_label(v) {
            return Err(ApiError::unprocessable(format!("label {k}={v}: {LABEL_RULE}")));
        }
    }
    Ok(())
}

fn check_reservation(state: &AppState, text: &str) -> Result<std::net::Ipv4Addr, ApiError> {
    let ip: std::net::Ipv4Addr =
        text.parse().map_err(|_| ApiError::unprocessable(format!("reserved_ip {text:?} is not an IPv4 address")))?;
    match state.config.dhcp.subnet_of(ip) {
        Some(subnet) if ip != subnet.net.network() && ip != subnet.net.broadcast() => Ok(ip),
        _ => Err(ApiError::unprocessable(format!(
            "reserved_ip {ip} is not a host address in any configured DHCP subnet"
        ))),
    }
}

fn check_hostname(h: &str) -> Result<(), ApiError> {
    if valid_hostname(h) {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!(
            "hostname {h:?} must be 1-63 letters, digits and '-', not starting or ending with '-'"
        )))
    }
}

fn check_profile(state: &AppState, name: &str) -> Result<(), ApiError> {
    if state.profiles.current().get(name).is_some() {
        Ok(())
    } else {
        Err(ApiError::unprocessable(format!("no valid profile named {name:?}")))
    }
}

#[utoipa::path(post, path = "/nodes", tag = "nodes", request_body = NewNode,
    responses((status = 201, body = Node), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_node(
    State(state): State<AppState>,
    Admin(actor): Admin,
    ApiJson(new): ApiJson<NewNode>,
) -> Result<(StatusCode, Json<Node>), ApiError> {
    if let Some(h) = &new.hostname {
        check_hostname(h)?;
    }
    if let Some(p) = &new.profile {
        check_profile(&state, p)?;
    }
    check_labels(&new.labels)?;
    let node = state
        .store
        .create_node(new.mac, new.hostname.as_deref(), new.profile.as_deref(), &new.labels, &actor, now_ms())
        .await?;
    Ok((StatusCode::CREATED, Json(node.into())))
}

/// A node is addressed by its numeric id or by its MAC address.
pub(crate) async fn find_node(state: &AppState, id: &str) -> Result<store::Node, ApiError> {
    if let Ok(n) = id.parse::<i64>() {
        return Ok(state.store.node(n).await?);
    }
    let mac: MacAddr = id.parse().map_err(|_| ApiError::not_found(format!("no node {id:?} (use its id or MAC)")))?;
    state.store.node_by_mac(mac).await?.ok_or_else(|| ApiError::not_found(format!("no node with MAC {mac}")))
}

const MAX_EVENTS: i64 = 1000;

#[utoipa::path(get, path = "/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "node id or MAC")),
    responses((status = 200, body = NodeDetail), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_node(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<NodeDetail>, ApiError> {
    let node = find_node(&state, &id).await?;
    let boot = match node.current_boot_id {
        Some(b) => state.store.boot(b).await?,
        None => None,
    };
    let events = state.store.events(node.id, 0, MAX_EVENTS).await?;
    let volumes = state.store.node_volumes(node.id).await?;
    Ok(Json(NodeDetail { node: node.into(), boot: boot.map(Into::into), events: all(events), volumes: all(volumes) }))
}

#[utoipa::path(patch, path = "/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "node id or MAC")),
    request_body = NodeUpdate,
    responses((status = 200, body = Node), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn update_node(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
    ApiJson(update): ApiJson<NodeUpdate>,
) -> Result<Json<Node>, ApiError> {
    let node = find_node(&state, &id).await?;
    Ok(Json(change_node(&state, &actor, &node, update).await?.into()))
}

/// Validate an operator's change to `node` and apply it in one transaction: what
/// `PATCH /nodes/{id}` and the dashboard's node actions do.
pub(crate) async fn change_node(
    state: &AppState,
    actor: &store::Actor,
    node: &store::Node,
    update: NodeUpdate,
) -> Result<store::Node, ApiError> {
    if let Some(h) = &update.hostname {
        check_hostname(h)?;
    }
    if let Some(Some(p)) = &update.profile {
        check_profile(state, p)?;
    }
    if let Some(labels) = &update.labels {
        check_labels(labels)?;
    }
    if let Some(problem) = update.bmc.as_ref().and_then(|b| b.as_ref()?.problem()) {
        return Err(ApiError::unprocessable(problem));
    }
    let reservation = match &update.reserved_ip {
        Some(Some(text)) => Some(Some(check_reservation(state, text)?)),
        Some(None) => Some(None),
        None => None,
    };
    // Everything validated: the store applies the whole change in one transaction.
    let change = NodeChange {
        reservation,
        take_over: update.take_over,
        hostname: update.hostname,
        labels: update.labels,
        profile: update.profile,
        approved: update.approved,
        bmc: update.bmc,
        boot_chain: update.boot_chain,
    };
    Ok(state.store.update_node(node.id, &change, actor, now_ms()).await?)
}

#[utoipa::path(delete, path = "/nodes/{id}", tag = "nodes", params(("id" = String, Path, description = "node id or MAC"), DeleteNodeQuery),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_node(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
    q: Result<Query<DeleteNodeQuery>, QueryRejection>,
) -> Result<StatusCode, ApiError> {
    let q = query(q)?;
    let node = find_node(&state, &id).await?;
    let attached = state.store.node_volumes(node.id).await?;
    // Volumes outlive their node unless the operator asks otherwise.
    for v in &attached {
        let service = volume_service(&state)?;
        service.detach(&v.name, &actor, now_ms()).await?;
        if q.delete_volumes {
            service.delete(&v.name, &actor, now_ms()).await?;
        }
    }
    state.store.delete_node(node.id, &actor, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/nodes/{id}/reprovision", tag = "nodes", params(("id" = String, Path, description = "node id or MAC")),
    responses((status = 200, body = Node), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn reprovision_node(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    let node = find_node(&state, &id).await?;
    Ok(Json(state.store.reprovision(node.id, &actor, now_ms()).await?.into()))
}

/// Vouch for a node: it may boot a profile that renders secrets or attaches volumes
/// even if only facts it reports itself (serial, UUID, inventory) matched it.
#[utoipa::path(post, path = "/nodes/{id}/approve", tag = "nodes", params(("id" = String, Path, description = "node id or MAC")),
    responses((status = 200, body = Node), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn approve_node(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
) -> Result<Json<Node>, ApiError> {
    let node = find_node(&state, &id).await?;
    let change = NodeChange { approved: Some(true), ..NodeChange::default() };
    Ok(Json(state.store.update_node(node.id, &change, &actor, now_ms()).await?.into()))
}

#[utoipa::path(post, path = "/nodes/{id}/maintenance", tag = "nodes", params(("id" = String, Path, description = "node id or MAC")),
    request_body = Maintenance,
    responses((status = 200, body = Node), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn maintenance_node(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
    ApiJson(m): ApiJson<Maintenance>,
) -> Result<Json<Node>, ApiError> {
    let node = find_node(&state, &id).await?;
    Ok(Json(set_maintenance(&state, &actor, &node, m).await?.into()))
}

/// Take `node` out of service with a reason, or put it back.
pub(crate) async fn set_maintenance(
    state: &AppState,
    actor: &store::Actor,
    node: &store::Node,
    m: Maintenance,
) -> Result<store::Node, ApiError> {
    let reason = m.reason.filter(|r| !r.trim().is_empty()).unwrap_or_else(|| "operator request".into());
    if reason.len() > 200 || reason.chars().any(char::is_control) {
        return Err(ApiError::unprocessable("reason must be at most 200 printable characters"));
    }
    let reason = m.enabled.then_some(reason);
    Ok(state.store.set_maintenance(node.id, reason.as_deref(), actor, now_ms()).await?)
}

#[utoipa::path(get, path = "/nodes/{id}/events", tag = "events", params(("id" = String, Path, description = "node id or MAC"), EventQuery),
    responses((status = 200, body = Vec<Event>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn node_events(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    check_after(q.after)?;
    let node = find_node(&state, &id).await?;
    let events = match q.last {
        Some(n) => state.store.recent_events(Some(node.id), check_limit(n)?).await?,
        None => state.store.events(node.id, q.after, limit).await?,
    };
    Ok(Json(all(events)))
}

#[utoipa::path(get, path = "/profiles", tag = "profiles",
    responses((status = 200, body = ProfileList), (status = 401, body = ErrorBody)))]
async fn list_profiles(State(state): State<AppState>, _op: Operator) -> Json<ProfileList> {
    let set = state.profiles.current();
    let profiles = set.loaded_iter().map(|p| profile_view(p)).collect();
    Json(ProfileList { profiles, errors: all(state.profiles.errors().as_ref().clone()) })
}

#[utoipa::path(get, path = "/profiles/errors", tag = "profiles",
    responses((status = 200, body = Vec<SourceError>), (status = 401, body = ErrorBody)))]
async fn profile_errors(State(state): State<AppState>, _op: Operator) -> Json<Vec<SourceError>> {
    Json(all(state.profiles.errors().as_ref().clone()))
}

#[utoipa::path(get, path = "/inventory", tag = "inventory",
    responses((status = 200, body = Inventory), (status = 401, body = ErrorBody)))]
async fn show_inventory(State(state): State<AppState>, _op: Operator) -> Json<Inventory> {
    let files = state
        .inventory
        .files()
        .into_iter()
        .map(|f| InventoryFile { name: f.name, revision: f.revision, nodes: f.nodes, applied: f.applied })
        .collect();
    Json(Inventory {
        dir: state.inventory.dir().display().to_string(),
        files,
        errors: all(state.inventory.errors().as_ref().clone()),
    })
}

#[utoipa::path(get, path = "/profiles/{name}", tag = "profiles", params(("name" = String, Path)),
    responses((status = 200, body = ProfileView), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_profile(
    State(state): State<AppState>,
    _op: Operator,
    Path(name): Path<String>,
) -> Result<Json<ProfileView>, ApiError> {
    let set = state.profiles.current();
    let found = set.loaded(&name).map(|p| profile_view(p));
    found.map(Json).ok_or_else(|| ApiError::not_found(format!("no profile named {name:?}")))
}

/// Image store calls read and write files: off the async workers.
async fn blocking<T: Send + 'static>(
    f: impl FnOnce() -> Result<T, crate::images::ImageError> + Send + 'static,
) -> Result<T, ApiError> {
    Ok(tokio::task::spawn_blocking(f).await??)
}

/// Something still uses the image: deleting it would break a boot.
fn in_use(message: String) -> ApiError {
    ApiError::new(StatusCode::CONFLICT, "in_use", message)
}

#[utoipa::path(get, path = "/images", tag = "images",
    responses((status = 200, body = Vec<Manifest>), (status = 401, body = ErrorBody)))]
async fn list_images(State(state): State<AppState>, _op: Operator) -> Result<Json<Vec<Manifest>>, ApiError> {
    let images = state.images.clone();
    Ok(Json(all(blocking(move || images.list()).await?)))
}

#[utoipa::path(get, path = "/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 200, body = Manifest), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_image(
    State(state): State<AppState>,
    _op: Operator,
    Path(name): Path<String>,
) -> Result<Json<Manifest>, ApiError> {
    let images = state.images.clone();
    Ok(Json(blocking(move || images.manifest(&name)).await?.into()))
}

#[utoipa::path(delete, path = "/images/{name}", tag = "images", params(("name" = String, Path)),
    responses((status = 204), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody)))]
async fn delete_image(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    let users: Vec<String> = state
        .profiles
        .current()
        .iter()
        .filter(|(p, _)| p.image == name || p.stage1 == name)
        .map(|(p, _)| p.name.clone())
        .collect();
    if !users.is_empty() {
        return Err(in_use(format!("image {name:?} is used by profile(s) {}", users.join(", "))));
    }
    if name == state.config.discovery_stage1 {
        return Err(in_use(format!("image {name:?} is the discovery stage one")));
    }
    if state.store.image_in_current_boot(&name).await? {
        return Err(in_use(format!("image {name:?} is being loaded by a booting node")));
    }
    // Blobs of boots in progress survive the collection even if no manifest names
    // them any more (the image was rebuilt while a node was loading it).
    let pinned = state.store.pinned_digests().await?;
    let images = state.images.clone();
    let deleted = name.clone();
    let digest = blocking(move || {
        let digest = images.manifest(&deleted)?.digest();
        images.delete(&deleted, &pinned).map(|()| digest)
    })
    .await?;
    let before = serde_json::json!({ "digest": digest.to_string() });
    state
        .store
        .audit_outside(&actor, "image.delete", &store::Target::named("image", &name), Some(&before), None, now_ms())
        .await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(get, path = "/audit", tag = "audit", params(AuditQuery),
    responses((status = 200, body = AuditList), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 404, body = ErrorBody)))]
async fn list_audit(
    State(state): State<AppState>,
    _op: Operator,
    q: Result<Query<AuditQuery>, QueryRejection>,
) -> Result<Json<AuditList>, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    check_after(q.after)?;
    let node = match &q.node {
        Some(id) => Some(find_audited_node(&state, id).await?),
        None => None,
    };
    let filter = store::AuditFilter { node, actor: q.actor, after: q.after, limit, ..Default::default() };
    let records = state.store.audit(&filter).await?;
    let next_after = (records.len() as i64 == limit).then(|| records.last().map(|r| r.id)).flatten();
    Ok(Json(AuditList { records: all(records), next_after }))
}

/// A node's id for the audit filter: the trail outlives the node, so an id is
/// taken as it is, and a MAC is looked up among the records too.
async fn find_audited_node(state: &AppState, id: &str) -> Result<store::NodeId, ApiError> {
    if let Ok(n) = id.parse::<i64>() {
        return Ok(n);
    }
    let mac: MacAddr = id.parse().map_err(|_| ApiError::bad_request(format!("node {id:?}: use its id or MAC")))?;
    match state.store.node_by_mac(mac).await? {
        Some(node) => Ok(node.id),
        None => state
            .store
            .audited_node_by_mac(mac)
            .await?
            .ok_or_else(|| ApiError::not_found(format!("no node with MAC {mac} now or in the audit trail"))),
    }
}

#[utoipa::path(get, path = "/leases", tag = "leases",
    responses((status = 200, body = Vec<Lease>), (status = 401, body = ErrorBody)))]
async fn list_leases(State(state): State<AppState>, _op: Operator) -> Result<Json<Vec<Lease>>, ApiError> {
    Ok(Json(all(state.store.leases().await?)))
}

#[utoipa::path(get, path = "/leases6", tag = "leases",
    responses((status = 200, body = Vec<Lease6>), (status = 401, body = ErrorBody)))]
async fn list_leases6(State(state): State<AppState>, _op: Operator) -> Result<Json<Vec<Lease6>>, ApiError> {
    Ok(Json(all(state.store.leases6().await?)))
}

#[utoipa::path(get, path = "/events", tag = "events", params(EventQuery),
    responses((status = 200, body = Vec<Event>), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody)))]
async fn list_events(
    State(state): State<AppState>,
    _op: Operator,
    q: Result<Query<EventQuery>, QueryRejection>,
) -> Result<Json<Vec<Event>>, ApiError> {
    let q = query(q)?;
    let limit = check_limit(q.limit)?;
    check_after(q.after)?;
    let events = match q.last {
        Some(n) => state.store.recent_events(None, check_limit(n)?).await?,
        None => state.store.all_events(q.after, limit).await?,
    };
    Ok(Json(all(events)))
}

#[utoipa::path(get, path = "/events/stream", tag = "events", params(StreamQuery),
    responses((status = 200, description = "Server-Sent Events: one `event` message (JSON `Event`) per event", content_type = "text/event-stream", body = String),
        (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 503, description = "Too many event streams open (in all, or from this address)", body = ErrorBody)))]
async fn event_stream(
    State(state): State<AppState>,
    _op: Operator,
    axum::Extension(streams): axum::Extension<EventStreams>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
    q: Result<Query<StreamQuery>, QueryRejection>,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let q = query(q)?;
    let limits = state.config.http_limits;
    let slot = streams.acquire(peer, limits.max_event_streams_per_source, limits.max_event_streams)?;
    let stop = state.shutdown.child_token();
    event_sse(state, slot, q.after, stop, KeepAlive::default()).await
}

impl EventStreams {
    /// A stream slot for `peer`: refused past `per_source` from its address or
    /// `total` in all (counted, logged, and said in the error).
    pub(crate) fn acquire(
        &self,
        peer: std::net::SocketAddr,
        per_source: usize,
        total: usize,
    ) -> Result<crate::limits::Slot, ApiError> {
        self.0.try_acquire(peer.ip(), per_source, Some(total)).map_err(|refused| {
            metrics::counter!("ramboot_http_event_streams_refused_total", "reason" => refused.label()).increment(1);
            tracing::warn!(%peer, reason = %refused, "event stream refused");
            ApiError::new(
                StatusCode::SERVICE_UNAVAILABLE,
                "too_many_streams",
                format!("too many event streams: {refused}; close one or poll /api/v1/events"),
            )
        })
    }
}

/// Every event after `after` (default: from now on) as Server-Sent Events, until
/// the client goes or `stop` fires (then, unless the server is stopping, a last
/// `closed` message says so). Holds `slot` (a stream slot, with anything else that
/// must live as long as the stream) while it runs. The API's stream and the
/// dashboard's live updates.
pub(crate) async fn event_sse(
    state: AppState,
    slot: impl Send + 'static,
    after: Option<i64>,
    stop: tokio_util::sync::CancellationToken,
    keep_alive: KeepAlive,
) -> Result<Sse<impl futures_util::Stream<Item = Result<SseEvent, Infallible>>>, ApiError> {
    let after = match after {
        Some(a) if a >= 0 => a,
        Some(_) => return Err(ApiError::bad_request("after must not be negative")),
        None => state.store.last_event_id().await?,
    };
    let mut feed = EventFeed::new(&state.store, after);
    let stream = async_stream::stream! {
        // Given back when the client goes, the server stops, or `stop` fires.
        let _slot = slot;
        loop {
            let events = tokio::select! {
                _ = stop.cancelled() => {
                    if !state.shutdown.is_cancelled() {
                        yield Ok(SseEvent::default().event("closed").data("a newer stream took this one's place"));
                    }
                    break;
                }
                events = feed.next() => events,
            };
            for e in events {
                let id = e.id.to_string();
                if let Ok(data) = serde_json::to_string(&Event::from(e)) {
                    yield Ok(SseEvent::default().event("event").id(id).data(data));
                }
            }
        }
    };
    Ok(Sse::new(stream).keep_alive(keep_alive))
}

#[utoipa::path(get, path = "/tokens", tag = "tokens",
    responses((status = 200, body = Vec<TokenInfo>), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody)))]
async fn list_tokens(State(state): State<AppState>, _: Admin) -> Result<Json<Vec<TokenInfo>>, ApiError> {
    Ok(Json(all(state.store.list_tokens().await?)))
}

#[utoipa::path(post, path = "/tokens", tag = "tokens", request_body = NewToken,
    responses((status = 201, body = CreatedToken), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody)))]
async fn create_token(
    State(state): State<AppState>,
    Admin(actor): Admin,
    ApiJson(new): ApiJson<NewToken>,
) -> Result<(StatusCode, Json<CreatedToken>), ApiError> {
    if !valid_label(&new.name) {
        return Err(ApiError::unprocessable(format!("token name {:?}: {LABEL_RULE}", new.name)));
    }
    let now = now_ms();
    let expires_at_ms = match new.expires_in_seconds {
        Some(secs) if !(1..=MAX_TOKEN_LIFETIME_SECS).contains(&secs) => {
            return Err(ApiError::unprocessable(format!(
                "expires_in_seconds must be between 1 and {MAX_TOKEN_LIFETIME_SECS} (ten years)"
            )))
        }
        Some(secs) => Some(now + secs as i64 * 1000),
        None => None,
    };
    let token = crate::token::generate()?;
    let hash = crate::token::hash(&token);
    state.store.create_token(&new.name, new.role.into(), &hash, expires_at_ms, &actor, now).await?;
    Ok((StatusCode::CREATED, Json(CreatedToken { name: new.name, role: new.role, token, expires_at_ms })))
}

#[utoipa::path(delete, path = "/tokens/{name}", tag = "tokens", params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn delete_token(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    state.store.delete_token(&name, &actor, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

fn volume_service(state: &AppState) -> Result<&crate::iscsi::service::Volumes<crate::iscsi::tgt::Tgt>, ApiError> {
    state.volumes.as_deref().ok_or_else(|| {
        // A conflict with the server's configuration, not an outage: 409, not 5xx.
        ApiError::new(
            StatusCode::CONFLICT,
            "iscsi_disabled",
            "this server manages no iSCSI volumes (no `iscsi:` in its config)",
        )
    })
}

#[utoipa::path(get, path = "/volumes", tag = "volumes",
    responses((status = 200, body = Vec<Volume>), (status = 401, body = ErrorBody)))]
async fn list_volumes(State(state): State<AppState>, _op: Operator) -> Result<Json<Vec<Volume>>, ApiError> {
    Ok(Json(all(state.store.volumes().await?)))
}

#[utoipa::path(post, path = "/volumes", tag = "volumes", request_body = NewVolume,
    responses((status = 201, body = Volume), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 409, body = ErrorBody), (status = 413, body = ErrorBody),
        (status = 415, body = ErrorBody), (status = 422, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn create_volume(
    State(state): State<AppState>,
    Admin(actor): Admin,
    ApiJson(new): ApiJson<NewVolume>,
) -> Result<(StatusCode, Json<Volume>), ApiError> {
    let service = volume_service(&state)?;
    let volume = service.create(&new.name, new.size_bytes, &actor, now_ms()).await?;
    Ok((StatusCode::CREATED, Json(volume.into())))
}

#[utoipa::path(get, path = "/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody)))]
async fn show_volume(
    State(state): State<AppState>,
    _op: Operator,
    Path(name): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    Ok(Json(state.store.volume(&name).await?.into()))
}

#[utoipa::path(delete, path = "/volumes/{name}", tag = "volumes", params(("name" = String, Path)),
    responses((status = 204), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn delete_volume(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(name): Path<String>,
) -> Result<StatusCode, ApiError> {
    volume_service(&state)?.delete(&name, &actor, now_ms()).await?;
    Ok(StatusCode::NO_CONTENT)
}

#[utoipa::path(post, path = "/volumes/{name}/attach", tag = "volumes", params(("name" = String, Path)), request_body = Attach,
    responses((status = 200, body = Volume), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn attach_volume(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(name): Path<String>,
    ApiJson(a): ApiJson<Attach>,
) -> Result<Json<Volume>, ApiError> {
    let service = volume_service(&state)?;
    let node = find_node(&state, &a.node).await?;
    Ok(Json(service.attach(&name, node.id, &actor, now_ms()).await?.into()))
}

#[utoipa::path(post, path = "/volumes/{name}/detach", tag = "volumes", params(("name" = String, Path)),
    responses((status = 200, body = Volume), (status = 401, body = ErrorBody), (status = 403, body = ErrorBody),
        (status = 404, body = ErrorBody), (status = 409, body = ErrorBody), (status = 503, body = ErrorBody)))]
async fn detach_volume(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(name): Path<String>,
) -> Result<Json<Volume>, ApiError> {
    Ok(Json(volume_service(&state)?.detach(&name, &actor, now_ms()).await?.into()))
}

#[utoipa::path(post, path = "/volumes/{name}/grow", tag = "volumes", params(("name" = String, Path)), request_body = Grow,
    responses((status = 200, body = Volume), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn grow_volume(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(name): Path<String>,
    ApiJson(g): ApiJson<Grow>,
) -> Result<Json<Volume>, ApiError> {
    Ok(Json(volume_service(&state)?.grow(&name, g.size_bytes, &actor, now_ms()).await?.into()))
}

/// The node's iSCSI names and whether mutual CHAP is on (never its secrets).
async fn node_iscsi(
    service: &crate::iscsi::service::Volumes<crate::iscsi::tgt::Tgt>,
    node: store::NodeId,
) -> Result<NodeIscsi, ApiError> {
    use crate::config::IscsiConfig;
    let mutual_chap = service.store.mutual_chap_secret(node).await?.is_some();
    Ok(NodeIscsi {
        initiator_iqn: service.config.initiator_iqn(node),
        target_iqn: service.config.target_iqn(node),
        chap_user: IscsiConfig::chap_user(node),
        mutual_chap,
        mutual_chap_user: mutual_chap.then(|| IscsiConfig::mutual_chap_user(node)),
    })
}

#[utoipa::path(get, path = "/nodes/{id}/iscsi", tag = "volumes", params(("id" = String, Path, description = "node id or MAC")),
    responses((status = 200, body = NodeIscsi), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, body = ErrorBody)))]
async fn show_node_iscsi(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<NodeIscsi>, ApiError> {
    let service = volume_service(&state)?;
    let node = find_node(&state, &id).await?;
    Ok(Json(node_iscsi(service, node.id).await?))
}

/// Mutual CHAP on or off; the node's target follows at once, the node at its next
/// plan (its next boot).
#[utoipa::path(put, path = "/nodes/{id}/iscsi", tag = "volumes", params(("id" = String, Path, description = "node id or MAC")),
    request_body = IscsiSettings,
    responses((status = 200, body = NodeIscsi), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody), (status = 409, body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 503, body = ErrorBody)))]
async fn set_node_iscsi(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
    ApiJson(settings): ApiJson<IscsiSettings>,
) -> Result<Json<NodeIscsi>, ApiError> {
    let service = volume_service(&state)?;
    let node = find_node(&state, &id).await?;
    service.set_mutual_chap(node.id, settings.mutual_chap, &actor, now_ms()).await?;
    Ok(Json(node_iscsi(service, node.id).await?))
}
