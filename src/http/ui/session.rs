//! Dashboard logins. A browser trades an API token for a session: a random id in
//! an `HttpOnly; SameSite=Strict` cookie, stored only as its hash, expiring with the
//! token or after [`SESSION_HOURS`], whichever is first, and ending when the token
//! is revoked (the session is found only through its token).
//!
//! Forms that change anything carry the session's CSRF token (derived from the
//! session id, which a page on another site cannot read) and must come from this
//! server's own origin; `SameSite=Strict` already keeps other sites' requests from
//! carrying the cookie at all. Both are checked.

use super::{render, Chrome, Flash, UiError};
use crate::clock::now_ms;
use crate::http::api::EventStreams;
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::store::{Actor, Role};
use askama::Template;
use axum::extract::{ConnectInfo, FromRequestParts, Query, State};
use axum::http::request::Parts;
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Redirect, Response};
use base64::Engine;
use sha2::{Digest, Sha256};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;

pub const SESSION_COOKIE: &str = "ramboot_session";
const FLASH_COOKIE: &str = "ramboot_flash";
pub const CLEAR_FLASH: &str = "ramboot_flash=; Path=/ui; Max-Age=0; HttpOnly; SameSite=Strict";
/// The longest a session lives, however long its token does.
pub const SESSION_HOURS: i64 = 12;

/// The logged-in operator of a dashboard request.
pub struct Viewer {
    pub name: String,
    pub role: Role,
    /// Who the audit trail says made a change: the token, by name.
    pub actor: Actor,
    /// The token every form of this session must carry.
    pub csrf: String,
    /// The last action's outcome, shown once.
    pub flash: Option<Flash>,
    /// The hash of the session's id: what its live streams are counted under.
    pub session: String,
}

impl Viewer {
    pub fn is_admin(&self) -> bool {
        self.role == Role::Admin
    }

    /// Refuse a change by a read session, whatever its form said.
    pub fn require_admin(&self) -> Result<(), UiError> {
        if self.is_admin() {
            Ok(())
        } else {
            Err(UiError(ApiError::forbidden("this needs a session opened with an admin token")))
        }
    }
}

/// The value of cookie `name` in the request, if any.
fn cookie<'a>(headers: &'a HeaderMap, name: &str) -> Option<&'a str> {
    headers
        .get_all(header::COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|pair| pair.trim().split_once('='))
        .find(|(k, _)| *k == name)
        .map(|(_, v)| v)
}

/// A session's CSRF token: a hash of its id under its own label, so it is as
/// unguessable as the id and still is not the id (nor the id's stored hash).
fn csrf_token(session_id: &str) -> String {
    hex::encode(&Sha256::digest(format!("ramboot-ui-csrf\0{session_id}").as_bytes())[..16])
}

/// Equal, in time independent of where they differ.
fn same(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Where a login sends the browser back to: a dashboard path of this server, never
/// another site (`//evil`, `/\evil`) and never a header-breaking string.
pub fn safe_return(next: &str) -> &str {
    let ok = next.starts_with("/ui")
        && !next.starts_with("//")
        && !next.contains('\\')
        && next.len() <= 2000
        && next.bytes().all(|b| b.is_ascii_graphic());
    if ok {
        next
    } else {
        "/ui/"
    }
}

fn login_redirect(parts: &Parts) -> Response {
    let here = parts.uri.path_and_query().map(|p| p.as_str()).unwrap_or("/ui/");
    let next: String = url::form_urlencoded::byte_serialize(safe_return(here).as_bytes()).collect();
    Redirect::to(&format!("/ui/login?next={next}")).into_response()
}

impl FromRequestParts<AppState> for Viewer {
    type Rejection = Response;

    async fn from_request_parts(parts: &mut Parts, state: &AppState) -> Result<Self, Self::Rejection> {
        let Some(id) = cookie(&parts.headers, SESSION_COOKIE).filter(|id| !id.is_empty()) else {
            return Err(login_redirect(parts));
        };
        let now = now_ms();
        let session = crate::token::hash(id);
        let found = state.store.session(&session, now).await.map_err(|e| UiError::from(e).into_response())?;
        // Unknown, expired, revoked, or its token expired: log in again.
        let Some((token, _)) = found.filter(|(token, _)| !token.expired(now)) else {
            return Err(login_redirect(parts));
        };
        let flash = cookie(&parts.headers, FLASH_COOKIE).and_then(decode_flash);
        Ok(Viewer {
            actor: Actor::Token { name: token.name.clone() },
            name: token.name,
            role: token.role,
            csrf: csrf_token(id),
            flash,
            session,
        })
    }
}

/// Refuse a form that does not carry this session's CSRF token, or that another
/// origin sent.
pub fn check_form(viewer: &Viewer, headers: &HeaderMap, csrf: Option<&str>) -> Result<(), UiError> {
    check_origin(headers)?;
    match csrf {
        Some(token) if same(token, &viewer.csrf) => Ok(()),
        _ => Err(UiError(ApiError::forbidden(
            "this form did not come from this dashboard session (CSRF token missing or wrong); reload the page and try again",
        ))),
    }
}

/// A browser says where a POST came from (`Origin`, else `Referer`); it must name
/// this server's host.
fn check_origin(headers: &HeaderMap) -> Result<(), UiError> {
    let host = headers.get(header::HOST).and_then(|h| h.to_str().ok());
    let source = headers
        .get(header::ORIGIN)
        .or_else(|| headers.get(header::REFERER))
        .and_then(|h| h.to_str().ok())
        .filter(|s| *s != "null");
    let Some(source) = source else { return Ok(()) };
    let source_host = url::Url::parse(source).ok().and_then(|u| {
        let host = u.host_str()?.to_string();
        Some(match u.port() {
            Some(port) => format!("{host}:{port}"),
            None => host,
        })
    });
    match (host, source_host) {
        (Some(host), Some(source)) if source.eq_ignore_ascii_case(host) => Ok(()),
        _ => Err(UiError(ApiError::forbidden("this form was sent from another site"))),
    }
}

fn encode_flash(flash: &Flash) -> String {
    let json = serde_json::to_vec(flash).unwrap_or_default();
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(json)
}

fn decode_flash(value: &str) -> Option<Flash> {
    let json = base64::engine::general_purpose::URL_SAFE_NO_PAD.decode(value).ok()?;
    serde_json::from_slice(&json).ok()
}

/// A redirect to `to` that shows `flash` on the page it lands on.
pub fn redirect_with_flash(to: &str, mut flash: Flash) -> Response {
    // A cookie holds about 4 KiB: keep the first lines and say how many more.
    const MAX_LINES: usize = 12;
    if flash.lines.len() > MAX_LINES {
        let more = flash.lines.len() - MAX_LINES;
        flash.lines.truncate(MAX_LINES);
        flash.lines.push(format!("… and {more} more"));
    }
    for line in &mut flash.lines {
        if line.len() > 200 {
            let cut = (0..=200).rev().find(|&i| line.is_char_boundary(i)).unwrap_or(0);
            line.truncate(cut);
            line.push('…');
        }
    }
    let cookie = format!("{FLASH_COOKIE}={}; Path=/ui; Max-Age=60; HttpOnly; SameSite=Strict", encode_flash(&flash));
    let mut response = Redirect::to(safe_return(to)).into_response();
    if let Ok(value) = HeaderValue::from_str(&cookie) {
        response.headers_mut().append(header::SET_COOKIE, value);
    }
    response
}

#[derive(Template)]
#[template(path = "ui/login.html")]
struct LoginPage {
    chrome: Chrome,
    next: String,
    problem: Option<String>,
}

#[derive(serde::Deserialize)]
pub struct LoginQuery {
    next: Option<String>,
}

pub async fn login_page(Query(q): Query<LoginQuery>) -> Response {
    let next = safe_return(q.next.as_deref().unwrap_or("/ui/")).to_string();
    render(StatusCode::OK, &LoginPage { chrome: Chrome::new(None, "", ""), next, problem: None }, false)
}

/// The fields of a urlencoded form body, in order (a field may repeat).
pub fn form_fields(headers: &HeaderMap, body: &[u8]) -> Result<Vec<(String, String)>, UiError> {
    let content_type = headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or("");
    if !content_type.starts_with("application/x-www-form-urlencoded") {
        return Err(UiError(ApiError::new(
            StatusCode::UNSUPPORTED_MEDIA_TYPE,
            "unsupported_media_type",
            "dashboard forms are sent as application/x-www-form-urlencoded",
        )));
    }
    Ok(url::form_urlencoded::parse(body).into_owned().collect())
}

pub fn field<'a>(fields: &'a [(String, String)], name: &str) -> Option<&'a str> {
    fields.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

pub async fn login(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let result = async {
        check_origin(&headers)?;
        let fields = form_fields(&headers, &body)?;
        let next = safe_return(field(&fields, "next").unwrap_or("/ui/")).to_string();
        let token = field(&fields, "token").unwrap_or("").trim().to_string();
        let refuse = |problem: String| {
            let page = LoginPage { chrome: Chrome::new(None, "", ""), next: next.clone(), problem: Some(problem) };
            Ok::<_, UiError>(render(StatusCode::UNAUTHORIZED, &page, false))
        };
        let now = now_ms();
        let token_hash = crate::token::hash(&token);
        let Some(info) = state.store.token_by_hash(&token_hash).await? else {
            return refuse("That is not a token this server knows.".into());
        };
        if info.expired(now) {
            return refuse(format!("Token {:?} has expired; ask an admin for a new one.", info.name));
        }
        let id = crate::token::generate().map_err(ApiError::from)?;
        let expires = info.expires_at_ms.unwrap_or(i64::MAX).min(now + SESSION_HOURS * 3_600_000);
        state.store.create_session(&crate::token::hash(&id), &token_hash, expires, now).await?;
        tracing::info!(token = %info.name, role = info.role.as_str(), "dashboard login");
        // Browsers behind a TLS proxy get a cookie that never travels in clear.
        let secure = headers.get("x-forwarded-proto").is_some_and(|p| p.as_bytes().eq_ignore_ascii_case(b"https"));
        let cookie = format!(
            "{SESSION_COOKIE}={id}; Path=/; Max-Age={}; HttpOnly; SameSite=Strict{}",
            (expires - now) / 1000,
            if secure { "; Secure" } else { "" }
        );
        let mut response = Redirect::to(&next).into_response();
        response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&cookie).map_err(ApiError::internal)?);
        Ok(response)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

pub async fn logout(State(state): State<AppState>, headers: HeaderMap, body: axum::body::Bytes) -> Response {
    let result = async {
        let fields = form_fields(&headers, &body)?;
        if let Some(id) = cookie(&headers, SESSION_COOKIE) {
            // Only this session's own form may end it.
            if !same(field(&fields, "csrf").unwrap_or(""), &csrf_token(id)) {
                return Err(UiError(ApiError::forbidden("log out from the dashboard's own page")));
            }
            check_origin(&headers)?;
            state.store.delete_session(&crate::token::hash(id)).await?;
        }
        let mut response = Redirect::to("/ui/login").into_response();
        let clear = format!("{SESSION_COOKIE}=; Path=/; Max-Age=0; HttpOnly; SameSite=Strict");
        response.headers_mut().append(header::SET_COOKIE, HeaderValue::from_str(&clear).map_err(ApiError::internal)?);
        Ok::<_, UiError>(response)
    }
    .await;
    result.unwrap_or_else(IntoResponse::into_response)
}

/// Live streams a session may hold at once (a tab each). Closed tabs keep their
/// stream until the next keep-alive write fails, so a newer stream takes the
/// oldest one's place rather than being refused.
const STREAMS_PER_SESSION: usize = 4;
/// How soon a stream to a closed tab is noticed (a keep-alive write fails).
const KEEP_ALIVE: std::time::Duration = std::time::Duration::from_secs(5);

/// The dashboard's live streams by session, oldest first, each with the token
/// that ends it.
#[derive(Clone, Default)]
pub struct LiveStreams(Arc<Mutex<HashMap<String, VecDeque<CancellationToken>>>>);

impl LiveStreams {
    /// Register a new stream of `session`, ending its oldest past the limit.
    fn open(&self, session: &str, stop: CancellationToken) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        // Streams that ended (their client went) leave no entry behind.
        all.retain(|_, streams| {
            streams.retain(|t| !t.is_cancelled());
            !streams.is_empty()
        });
        let streams = all.entry(session.to_string()).or_default();
        streams.push_back(stop);
        while streams.len() > STREAMS_PER_SESSION {
            if let Some(oldest) = streams.pop_front() {
                oldest.cancel();
            }
        }
    }
}

/// The event stream over the session: what the script follows for live updates.
/// Bounded per session (the oldest stream gives way) and by the server's overall
/// cap, not per address: operators behind one proxy share an address.
pub async fn events(
    State(state): State<AppState>,
    viewer: Viewer,
    axum::Extension(streams): axum::Extension<EventStreams>,
    axum::Extension(live): axum::Extension<LiveStreams>,
    ConnectInfo(peer): ConnectInfo<std::net::SocketAddr>,
) -> Response {
    let limits = state.config.http_limits;
    let slot = match streams.acquire(peer, limits.max_event_streams, limits.max_event_streams) {
        Ok(slot) => slot,
        Err(e) => return e.into_response(),
    };
    let stop = state.shutdown.child_token();
    live.open(&viewer.session, stop.clone());
    // A stream that ends on its own (its client went) cancels its token as it is
    // dropped, so the session's list forgets it.
    let held = (slot, stop.clone().drop_guard());
    let keep_alive = axum::response::sse::KeepAlive::new().interval(KEEP_ALIVE);
    match crate::http::api::event_sse(state, held, None, stop, keep_alive).await {
        Ok(sse) => sse.into_response(),
        Err(e) => e.into_response(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn returns_stay_on_the_dashboard() {
        assert_eq!(safe_return("/ui/nodes?state=failed"), "/ui/nodes?state=failed");
        for evil in [
            "//evil.example/ui",
            "https://evil.example/ui",
            "/ui\\..\\x",
            "/api/v1/nodes",
            "/ui/a\r\nSet-Cookie: x",
            "",
        ] {
            assert_eq!(safe_return(evil), "/ui/", "{evil:?}");
        }
    }

    #[test]
    fn cookies_are_found_by_exact_name() {
        let mut headers = HeaderMap::new();
        headers.append(header::COOKIE, HeaderValue::from_static("a=1; ramboot_session_x=2; ramboot_session=abc"));
        assert_eq!(cookie(&headers, SESSION_COOKIE), Some("abc"));
        assert_eq!(cookie(&headers, "missing"), None);
    }

    #[test]
    fn forms_from_another_origin_are_refused() {
        let mut headers = HeaderMap::new();
        headers.insert(header::HOST, HeaderValue::from_static("10.0.0.1:8080"));
        assert!(check_origin(&headers).is_ok(), "no Origin: a browser without it, or a non-browser client");
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://10.0.0.1:8080"));
        assert!(check_origin(&headers).is_ok());
        headers.insert(header::ORIGIN, HeaderValue::from_static("http://evil.example:8080"));
        assert!(check_origin(&headers).is_err());
        headers.remove(header::ORIGIN);
        headers.insert(header::REFERER, HeaderValue::from_static("http://evil.example/page"));
        assert!(check_origin(&headers).is_err());
    }

    #[test]
    fn the_csrf_token_is_tied_to_the_session_and_is_not_its_id() {
        let (a, b) = (csrf_token("session-a"), csrf_token("session-b"));
        assert_ne!(a, b);
        assert_ne!(a, crate::token::hash("session-a"));
        assert!(same(&a, &csrf_token("session-a")) && !same(&a, &b) && !same(&a, ""));
    }

    #[test]
    fn a_flash_survives_its_cookie() {
        let flash =
            Flash { summary: "Maintenance on: 2 done".into(), failed: 1, lines: vec!["node 3: no; \"x\"".into()] };
        assert_eq!(decode_flash(&encode_flash(&flash)), Some(flash));
        assert_eq!(decode_flash("not base64 !"), None);
    }
}
