//! The dashboard (`/ui`): server-rendered pages over the same store, profiles,
//! images and services the admin API reads, on the same listener.
//!
//! - Pages are askama templates (`templates/ui/`), complete without JavaScript;
//!   filters and paging are GET forms, so their state is the URL.
//! - One stylesheet and one script are embedded in the binary and served under a
//!   path naming their hash (`assets`), cached for ever: a new build is a new URL.
//! - A browser logs in with an API token and holds a session cookie (`session`);
//!   every action is a form POST checked for the session's CSRF token and the
//!   request's origin, made with the token's role and audited under its name.
//! - Actions call the same functions the API handlers do (`actions`), so the
//!   dashboard and the API cannot disagree on what is allowed.
//! - Live updates: the script follows `/ui/events` (the API's event stream, over
//!   the session) and re-fetches the page, swapping in the parts marked `data-live`.

mod actions;
mod assets;
mod fleet;
mod format;
mod lists;
mod node;
mod nodes;
pub mod session;

use super::error::ApiError;
use super::AppState;
use askama::Template;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
pub use session::Viewer;

pub fn routes() -> Router<AppState> {
    let pages = Router::new()
        .route("/ui", get(|| async { axum::response::Redirect::permanent("/ui/") }))
        .route("/ui/", get(fleet::page))
        .route("/ui/nodes", get(nodes::page))
        .route("/ui/nodes/{id}", get(node::page))
        .route("/ui/profiles", get(lists::profiles))
        .route("/ui/images", get(lists::images))
        .route("/ui/volumes", get(lists::volumes))
        .route("/ui/tokens", get(lists::tokens))
        .route("/ui/audit", get(lists::audit))
        .route("/ui/rollouts", get(lists::rollouts))
        .route("/ui/events", get(session::events))
        .route("/ui/actions", post(actions::run))
        .route("/ui/login", get(session::login_page).post(session::login))
        .route("/ui/logout", post(session::logout))
        .route("/ui/assets/{hash}/{name}", get(assets::serve));
    // One phase-chart cache per router, that is per server.
    pages.layer(axum::Extension(fleet::PhaseCache::default()))
}

/// A link of the top navigation.
pub struct NavItem {
    pub href: &'static str,
    pub label: &'static str,
    pub current: bool,
}

/// Who is logged in, as the page header shows them.
pub struct Who {
    pub name: String,
    pub role: &'static str,
    pub csrf: String,
}

/// The outcome of the last action, carried over its redirect.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Flash {
    pub summary: String,
    pub failed: usize,
    pub lines: Vec<String>,
}

/// What every page's frame (`base.html`) shows.
pub struct Chrome {
    pub css: &'static str,
    pub js: &'static str,
    /// Which live updates the script runs: `fleet`, `rollouts` (any event
    /// refreshes), `nodes`, `node` (events of nodes on the page), or none.
    pub live: &'static str,
    pub nav: Vec<NavItem>,
    pub who: Option<Who>,
    pub flash: Option<Flash>,
}

const PAGES: [(&str, &str); 8] = [
    ("/ui/", "Fleet"),
    ("/ui/nodes", "Nodes"),
    ("/ui/rollouts", "Rollouts"),
    ("/ui/profiles", "Profiles"),
    ("/ui/images", "Images"),
    ("/ui/volumes", "Volumes"),
    ("/ui/audit", "Audit"),
    ("/ui/tokens", "Tokens"),
];

impl Chrome {
    /// The frame of a page at `current` for `viewer`, with the flash it carries.
    pub fn new(viewer: Option<&Viewer>, current: &str, live: &'static str) -> Chrome {
        let nav = PAGES
            .iter()
            // Tokens are an admin's business; a read session does not see the link.
            .filter(|(href, _)| *href != "/ui/tokens" || viewer.is_some_and(Viewer::is_admin))
            .map(|&(href, label)| NavItem { href, label, current: href == current })
            .collect();
        Chrome {
            css: assets::CSS.path(),
            js: assets::JS.path(),
            live,
            nav: if viewer.is_some() { nav } else { Vec::new() },
            who: viewer.map(|v| Who { name: v.name.clone(), role: v.role.as_str(), csrf: v.csrf.clone() }),
            flash: viewer.and_then(|v| v.flash.clone()),
        }
    }
}

/// The loaded profiles' names, in order (the set is kept by name).
fn profile_names(state: &AppState) -> Vec<String> {
    state.profiles.current().loaded_iter().map(|p| p.profile.name.clone()).collect()
}

/// Headers every page carries: no caching of session data, and a policy that lets
/// the page load only its own script and stylesheet.
fn page_headers(response: &mut Response, clear_flash: bool) {
    let headers = response.headers_mut();
    headers.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    headers.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(
            "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self'; connect-src 'self'; \
             form-action 'self'; frame-ancestors 'none'; base-uri 'none'",
        ),
    );
    headers.insert(header::X_CONTENT_TYPE_OPTIONS, HeaderValue::from_static("nosniff"));
    headers.insert(header::REFERRER_POLICY, HeaderValue::from_static("same-origin"));
    if clear_flash {
        headers.append(header::SET_COOKIE, HeaderValue::from_static(session::CLEAR_FLASH));
    }
}

/// A rendered page, with its status.
pub fn render(status: StatusCode, template: &impl Template, clear_flash: bool) -> Response {
    match template.render() {
        Ok(html) => {
            let mut response = (status, [(header::CONTENT_TYPE, "text/html; charset=utf-8")], html).into_response();
            page_headers(&mut response, clear_flash);
            response
        }
        Err(e) => UiError::from(ApiError::internal(format!("rendering a page: {e}"))).into_response(),
    }
}

/// A page that says one thing: an error, or a refusal.
#[derive(Template)]
#[template(path = "ui/message.html")]
struct MessagePage {
    chrome: Chrome,
    heading: String,
    text: String,
}

/// An error as a page: the API's error (status and message) in words.
#[derive(Debug)]
pub struct UiError(pub ApiError);

impl From<ApiError> for UiError {
    fn from(e: ApiError) -> Self {
        UiError(e)
    }
}

impl From<crate::store::StoreError> for UiError {
    fn from(e: crate::store::StoreError) -> Self {
        UiError(e.into())
    }
}

impl IntoResponse for UiError {
    fn into_response(self) -> Response {
        let heading = match self.0.status {
            StatusCode::NOT_FOUND => "Not found".to_string(),
            StatusCode::FORBIDDEN => "Not allowed".to_string(),
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY => "Not understood".to_string(),
            s => format!("Error {}", s.as_u16()),
        };
        let page = MessagePage { chrome: Chrome::new(None, "", ""), heading, text: self.0.message };
        render(self.0.status, &page, false)
    }
}
