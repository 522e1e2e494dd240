//! `/nodes/{id}/power`: a node's power through its BMC (`bmc::service::Power`).
//!
//! Reads take any token, switching takes an admin token and is audited
//! (`node.power`, with the state before and the action after). A BMC's failure is
//! a gateway error (502, or 504 when it does not answer) whose message names the
//! BMC and never the credential; a node without a usable BMC reference is a
//! conflict with its configuration (409).

use super::find_node;
use crate::bmc::service::{view_of, PowerError};
use crate::bmc::{BmcError, OverrideEnabled, PowerCommand};
use crate::clock::now_ms;
use crate::http::auth::{Admin, Operator};
use crate::http::error::{ApiError, ApiJson};
use crate::http::AppState;
use crate::store;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::Json;
use ramboot_api::{BootOverride, ErrorBody, PowerAction, PowerRequest, PowerResult, PowerStatus};
use serde_json::json;
use utoipa_axum::router::OpenApiRouter;
use utoipa_axum::routes;

pub fn routes() -> OpenApiRouter<AppState> {
    OpenApiRouter::new().routes(routes!(show_power, set_power))
}

impl From<PowerError> for ApiError {
    fn from(e: PowerError) -> Self {
        let message = e.to_string();
        match e {
            PowerError::NoBmc { .. } => ApiError::new(StatusCode::CONFLICT, "no_bmc", message),
            PowerError::Credential { .. } => ApiError::new(StatusCode::CONFLICT, "bmc_credential", message),
            PowerError::Bmc(BmcError::InvalidUrl { .. }) => ApiError::new(StatusCode::CONFLICT, "bmc_url", message),
            PowerError::Bmc(BmcError::Unauthorized { .. }) => {
                ApiError::new(StatusCode::BAD_GATEWAY, "bmc_refused", message)
            }
            PowerError::Bmc(BmcError::Unreachable { .. } | BmcError::Timeout { .. }) => {
                ApiError::new(StatusCode::GATEWAY_TIMEOUT, "bmc_unreachable", message)
            }
            PowerError::Bmc(_) => ApiError::new(StatusCode::BAD_GATEWAY, "bmc_error", message),
            PowerError::Task(_) => ApiError::internal(message),
        }
    }
}

fn enabled_name(e: &OverrideEnabled) -> String {
    match e {
        OverrideEnabled::Disabled => "Disabled".into(),
        OverrideEnabled::Once => "Once".into(),
        OverrideEnabled::Continuous => "Continuous".into(),
        OverrideEnabled::Other(s) => s.clone(),
    }
}

fn command(action: PowerAction) -> PowerCommand {
    match action {
        PowerAction::On => PowerCommand::On,
        PowerAction::Off => PowerCommand::Off,
        PowerAction::Cycle => PowerCommand::Cycle,
    }
}

/// The node's power state and boot override, read from its BMC now, with the
/// poller's last view.
#[utoipa::path(get, path = "/nodes/{id}/power", tag = "power", params(("id" = String, Path, description = "node id or MAC")),
    responses((status = 200, body = PowerStatus), (status = 401, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The node has no BMC, or its credential does not resolve", body = ErrorBody),
        (status = 502, description = "The BMC refused or failed", body = ErrorBody),
        (status = 504, description = "The BMC did not answer", body = ErrorBody)))]
async fn show_power(
    State(state): State<AppState>,
    _op: Operator,
    Path(id): Path<String>,
) -> Result<Json<PowerStatus>, ApiError> {
    let node = find_node(&state, &id).await?;
    let last_check = state.power.last_check(node.id);
    let status = state.power.status(&node).await?;
    Ok(Json(PowerStatus {
        node_id: node.id,
        mac: node.mac,
        bmc_url: node.bmc.map(|b| b.url).unwrap_or_default(),
        power: view_of(&status.power),
        boot_override: status.boot.map(|b| BootOverride {
            target: b.target.as_str().to_string(),
            enabled: b.enabled.map(|e| enabled_name(&e)),
        }),
        last_check,
    }))
}

/// Switch the node's power: `on`, `off` (forced) or `cycle`, optionally with a
/// one-time PXE boot override first. Audited as `node.power`.
#[utoipa::path(post, path = "/nodes/{id}/power", tag = "power", params(("id" = String, Path, description = "node id or MAC")),
    request_body = PowerRequest,
    responses((status = 200, body = PowerResult), (status = 400, body = ErrorBody), (status = 401, body = ErrorBody),
        (status = 403, body = ErrorBody), (status = 404, body = ErrorBody),
        (status = 409, description = "The node has no BMC, or its credential does not resolve", body = ErrorBody),
        (status = 413, body = ErrorBody), (status = 415, body = ErrorBody), (status = 422, body = ErrorBody),
        (status = 502, description = "The BMC refused or failed", body = ErrorBody),
        (status = 504, description = "The BMC did not answer", body = ErrorBody)))]
async fn set_power(
    State(state): State<AppState>,
    Admin(actor): Admin,
    Path(id): Path<String>,
    ApiJson(request): ApiJson<PowerRequest>,
) -> Result<Json<PowerResult>, ApiError> {
    let node = find_node(&state, &id).await?;
    Ok(Json(switch_power(&state, &actor, &node, request).await?))
}

/// Switch `node`'s power through its BMC, audited whether it worked or not: what
/// `POST /nodes/{id}/power` and the dashboard's power actions do.
pub(crate) async fn switch_power(
    state: &AppState,
    actor: &store::Actor,
    node: &store::Node,
    request: PowerRequest,
) -> Result<PowerResult, ApiError> {
    let target = store::Target::node(node.id, node.mac);
    let after = json!({"power": request.action.as_str(), "pxe_once": request.pxe_once});
    let outcome = match state.power.run_detailed(node, command(request.action), request.pxe_once).await {
        Ok(outcome) => outcome,
        Err(e) => {
            // A refused or failed attempt is on the record too: who tried, and why it failed.
            let failed = json!({"power": request.action.as_str(), "pxe_once": request.pxe_once,
                "error": e.to_string()});
            state.store.audit_outside(actor, "node.power", &target, None, Some(&failed), now_ms()).await?;
            return Err(e.into());
        }
    };
    let before = json!({"power": view_of(&outcome.before)});
    state.store.audit_outside(actor, "node.power", &target, Some(&before), Some(&after), now_ms()).await?;
    Ok(PowerResult {
        node_id: node.id,
        mac: node.mac,
        action: request.action,
        pxe_once: request.pxe_once,
        before: view_of(&outcome.before),
        power: view_of(&outcome.after),
    })
}
