//! HTTP: the boot tier (`boot`, `artifacts`: what nodes fetch) and the admin API
//! (`api`: what operators call). They share one listener for now but have separate
//! routes and separate auth: boot routes take only per-boot tokens.

pub mod api;
pub mod artifacts;
pub mod boot;
pub mod error;
pub mod range;

use crate::config::Config;
use crate::images::ImageStore;
use crate::profiles::ProfileSet;
use crate::store::Store;
use axum::extract::DefaultBodyLimit;
use axum::Router;
use std::sync::Arc;
use std::time::{SystemTime, UNIX_EPOCH};
use tower_http::trace::TraceLayer;

/// Everything a handler may touch.
#[derive(Clone)]
pub struct AppState {
    pub config: Arc<Config>,
    pub store: Store,
    pub images: ImageStore,
    pub profiles: Arc<ProfileSet>,
}

/// Request bodies are small JSON documents; nothing legitimate comes near this.
const MAX_BODY_BYTES: usize = 256 * 1024;

pub fn router(state: AppState) -> Router {
    Router::new()
        .merge(boot::routes())
        .merge(artifacts::routes())
        .nest("/api/v1", api::routes())
        .fallback(error::not_found)
        .layer(DefaultBodyLimit::max(MAX_BODY_BYTES))
        .layer(TraceLayer::new_for_http())
        .with_state(state)
}

pub fn now_ms() -> i64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as i64).unwrap_or(0)
}
