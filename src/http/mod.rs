//! HTTP: the boot tier (`boot`, `artifacts`: what nodes fetch) and the admin API
//! (`api`: what operators call, documented at `/api/v1/openapi.json`), plus
//! `/metrics`, and the dashboard (`ui`: pages for operators at `/ui`). They share
//! one listener but have separate routes and separate auth: boot routes take only
//! per-boot tokens, the API only API tokens (`auth`), the dashboard a session
//! opened with an API token (`ui::session`).

pub mod api;
pub mod artifacts;
pub mod auth;
pub mod boot;
pub mod error;
pub mod firmware;
pub mod metrics;
pub mod sendfile;
pub mod server;
pub mod ui;

use crate::config::Config;
use crate::images::ImageStore;
use crate::profiles::LiveProfiles;
use crate::store::Store;
use axum::extract::DefaultBodyLimit;
use axum::routing::get;
use axum::{Json, Router};
use std::sync::Arc;
use tower_http::trace::TraceLayer;
use utoipa::OpenApi;
use utoipa_axum::router::OpenApiRouter;

/// Everything a handler may touch.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub images: ImageStore,
    pub profiles: Arc<LiveProfiles>,
    /// Node declarations from `inventory/` and what was applied of them.
    pub inventory: Arc<crate::inventory::LiveInventory>,
    /// Drives rolling re-provisions; the API wakes it on a change.
    pub rollouts: Arc<crate::rollout::Driver>,
    /// iSCSI volumes, when the server manages them.
    pub volumes: Option<Arc<crate::iscsi::service::Volumes<crate::iscsi::tgt::Tgt>>>,
    /// The boot path's in-memory rate limits.
    pub limits: Arc<boot::trust::BootLimits>,
    /// Power over Redfish (nodes' BMCs) and the poller's last view.
    pub power: Arc<crate::bmc::service::Power>,
    /// Cancelled when the server stops: endless responses (the event stream) end
    /// then, so the shutdown drain does not wait for them.
    pub shutdown: tokio_util::sync::CancellationToken,
}

/// Request bodies are small JSON documents; nothing legitimate comes near this.
pub const MAX_BODY_BYTES: usize = 256 * 1024;

#[derive(OpenApi)]
#[openapi(
    info(title = "ramboot admin API", description = "Nodes, profiles, images, leases and events of a ramboot server."),
    modifiers(&BearerAuth),
    security(("bearer" = []))
)]
struct ApiDoc;

struct BearerAuth;

impl utoipa::Modify for BearerAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        use utoipa::openapi::security::{HttpAuthScheme, HttpBuilder, SecurityScheme};
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "bearer",
            SecurityScheme::Http(HttpBuilder::new().scheme(HttpAuthScheme::Bearer).build()),
        );
    }
}

/// The OpenAPI document of the admin API.
pub fn openapi() -> utoipa::openapi::OpenApi {
    OpenApiRouter::<AppState>::with_openapi(ApiDoc::openapi()).nest("/api/v1", api::routes()).split_for_parts().1
}

pub fn router(state: AppState) -> Router {
    let (api, doc) = OpenApiRouter::with_openapi(ApiDoc::openapi()).nest("/api/v1", api::routes()).split_for_parts();
    let doc = Arc::new(doc);
    Router::new()
        .merge(boot::routes())
        .merge(artifacts::routes())
        .merge(firmware::routes())
        .merge(api)
        .route("/api/v1/openapi.json", get(move || async move { Json(doc.as_ref().clone()) }))
        .route("/metrics", get(metrics::render))
        .merge(ui::routes())
        .route_layer(axum::middleware::from_fn(metrics::time_request))
        .fallback(error::not_found)
        // One count of open event streams per server, the API's and the dashboard's.
        .layer(axum::Extension(api::EventStreams::default()))
        .layer(axum::Extension(ui::session::LiveStreams::default()))
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}
