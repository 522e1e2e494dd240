//! `POST /ui/actions`: an admin's action on one node or a selection. Each action
//! calls the function the API's handler calls (same checks, same transaction, same
//! audit record), once per node, and the outcome of each comes back as a flash on
//! the page the form came from. An unconfirmed form (JavaScript off: no dialog
//! asked) gets a confirmation page first.

use super::session::{check_form, field, form_fields, redirect_with_flash, safe_return};
use super::{render, Chrome, Flash, UiError, Viewer};
use crate::clock::now_ms;
use crate::http::api::{change_node, find_node, power::switch_power, rollouts, set_maintenance};
use crate::http::error::ApiError;
use crate::http::AppState;
use crate::store;
use askama::Template;
use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use futures_util::StreamExt;
use ramboot_api::rollouts::Command;
use ramboot_api::{Maintenance, NewRollout, NodeUpdate, PowerAction, PowerRequest};
use ramboot_core::node::valid_label;
use std::collections::BTreeMap;

/// Nodes one action may name: a full page of the table.
const MAX_NODES: usize = 500;
/// Nodes acted on at once (a power action waits on each BMC).
const CONCURRENT: usize = 8;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    MaintenanceOn,
    MaintenanceOff,
    Reprovision,
    Approve,
    AssignProfile,
    Labels,
    Reserve,
    PowerOn,
    PowerOff,
    PowerCycle,
    RevokeToken,
    RolloutStart,
    RolloutPause,
    RolloutResume,
    RolloutAbort,
}

impl Action {
    const ALL: [(&'static str, Action, &'static str); 15] = [
        ("maintenance_on", Action::MaintenanceOn, "Maintenance on"),
        ("maintenance_off", Action::MaintenanceOff, "Maintenance off"),
        ("reprovision", Action::Reprovision, "Reprovision"),
        ("approve", Action::Approve, "Approve"),
        ("assign_profile", Action::AssignProfile, "Assign profile"),
        ("labels", Action::Labels, "Change labels"),
        ("reserve", Action::Reserve, "Reserve address"),
        ("power_on", Action::PowerOn, "Power on"),
        ("power_off", Action::PowerOff, "Power off"),
        ("power_cycle", Action::PowerCycle, "Power cycle with PXE"),
        ("revoke_token", Action::RevokeToken, "Revoke token"),
        ("rollout_start", Action::RolloutStart, "Start a rollout"),
        ("rollout_pause", Action::RolloutPause, "Pause rollout"),
        ("rollout_resume", Action::RolloutResume, "Resume rollout"),
        ("rollout_abort", Action::RolloutAbort, "Abort rollout"),
    ];

    fn parse(name: &str) -> Option<Action> {
        Self::ALL.iter().find(|(n, _, _)| *n == name).map(|(_, a, _)| *a)
    }

    fn label(self) -> &'static str {
        Self::ALL.iter().find(|(_, a, _)| *a == self).map(|(_, _, l)| *l).unwrap_or("")
    }
}

/// One edit of a label set: `key=value` sets, `-key` removes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LabelEdit {
    Set(String, String),
    Remove(String),
}

/// Parse `rack=r12, role=compute, -old` (commas or spaces between edits).
pub fn parse_label_edits(text: &str) -> Result<Vec<LabelEdit>, String> {
    let edits: Vec<LabelEdit> = text
        .split([',', ' '])
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|item| match (item.strip_prefix('-'), item.split_once('=')) {
            (Some(key), _) if valid_label(key) => Ok(LabelEdit::Remove(key.to_string())),
            (None, Some((k, v))) if valid_label(k) && valid_label(v) => Ok(LabelEdit::Set(k.into(), v.into())),
            _ => Err(format!("{item:?} is neither key=value nor -key ({})", ramboot_core::node::LABEL_RULE)),
        })
        .collect::<Result<_, _>>()?;
    if edits.is_empty() {
        return Err("give labels as key=value (or -key to remove one)".into());
    }
    Ok(edits)
}

fn apply_label_edits(labels: &BTreeMap<String, String>, edits: &[LabelEdit]) -> BTreeMap<String, String> {
    let mut out = labels.clone();
    for edit in edits {
        match edit {
            LabelEdit::Set(k, v) => {
                out.insert(k.clone(), v.clone());
            }
            LabelEdit::Remove(k) => {
                out.remove(k);
            }
        }
    }
    out
}

#[derive(Template)]
#[template(path = "ui/confirm.html")]
struct ConfirmPage {
    chrome: Chrome,
    what: &'static str,
    detail: String,
    nodes: Vec<String>,
    fields: Vec<(String, String)>,
    back: String,
}

/// What the form asks for besides the nodes, validated once for all of them.
struct Request {
    action: Action,
    reason: Option<String>,
    profile: Option<String>,
    labels: Vec<LabelEdit>,
    ip: Option<String>,
}

fn request(action: Action, fields: &[(String, String)]) -> Result<Request, ApiError> {
    let text = |name: &str| field(fields, name).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let labels = match action {
        Action::Labels => parse_label_edits(field(fields, "labels").unwrap_or("")).map_err(ApiError::unprocessable)?,
        _ => Vec::new(),
    };
    Ok(Request { action, reason: text("reason"), profile: text("profile"), labels, ip: text("ip") })
}

/// Run the action on one node; what it did, in words.
async fn act(state: &AppState, viewer: &Viewer, r: &Request, node: &store::Node) -> Result<String, ApiError> {
    let actor = &viewer.actor;
    let update = |u: NodeUpdate| change_node(state, actor, node, u);
    let power =
        |action: PowerAction, pxe_once: bool| switch_power(state, actor, node, PowerRequest { action, pxe_once });
    match r.action {
        Action::MaintenanceOn => {
            let m = Maintenance { enabled: true, reason: r.reason.clone() };
            let n = set_maintenance(state, actor, node, m).await?;
            Ok(format!("in maintenance ({})", n.maintenance_reason.unwrap_or_default()))
        }
        Action::MaintenanceOff => {
            set_maintenance(state, actor, node, Maintenance { enabled: false, reason: None }).await?;
            Ok("back in service".into())
        }
        Action::Reprovision => {
            state.store.reprovision(node.id, actor, now_ms()).await?;
            Ok("boots again at its next boot".into())
        }
        Action::Approve => {
            update(NodeUpdate { approved: Some(true), ..NodeUpdate::default() }).await?;
            Ok("approved".into())
        }
        Action::AssignProfile => {
            update(NodeUpdate { profile: Some(r.profile.clone()), ..NodeUpdate::default() }).await?;
            Ok(match &r.profile {
                Some(p) => format!("assigned profile {p}"),
                None => "profile assignment cleared (selectors or the default decide)".into(),
            })
        }
        Action::Labels => {
            let labels = apply_label_edits(&node.labels, &r.labels);
            let n = update(NodeUpdate { labels: Some(labels), ..NodeUpdate::default() }).await?;
            Ok(format!("labels {}", n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(", ")))
        }
        Action::Reserve => {
            update(NodeUpdate { reserved_ip: Some(r.ip.clone()), ..NodeUpdate::default() }).await?;
            Ok(match &r.ip {
                Some(ip) => format!("reserved {ip}"),
                None => "reservation cleared".into(),
            })
        }
        Action::PowerOn => power(PowerAction::On, false).await.map(|p| format!("power {}", p.power.as_str())),
        Action::PowerOff => power(PowerAction::Off, false).await.map(|p| format!("power {}", p.power.as_str())),
        Action::PowerCycle => power(PowerAction::Cycle, true).await.map(|_| "power cycled into PXE".into()),
        Action::RevokeToken
        | Action::RolloutStart
        | Action::RolloutPause
        | Action::RolloutResume
        | Action::RolloutAbort => Err(ApiError::bad_request("this action is not run node by node")),
    }
}

pub async fn run(
    State(state): State<AppState>,
    viewer: Viewer,
    headers: HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    match run_inner(&state, &viewer, &headers, &body).await {
        Ok(response) => response,
        Err(e) => e.into_response(),
    }
}

async fn run_inner(state: &AppState, viewer: &Viewer, headers: &HeaderMap, body: &[u8]) -> Result<Response, UiError> {
    let fields = form_fields(headers, body)?;
    check_form(viewer, headers, field(&fields, "csrf"))?;
    viewer.require_admin()?;
    let back = safe_return(field(&fields, "return").unwrap_or("/ui/")).to_string();
    let name = field(&fields, "action").unwrap_or("");
    let action = Action::parse(name).ok_or_else(|| ApiError::bad_request(format!("no action {name:?}")))?;
    let confirmed = field(&fields, "confirmed") == Some("1");
    if action == Action::RevokeToken {
        let token = field(&fields, "token").unwrap_or("").to_string();
        if !confirmed {
            return Ok(confirm(
                viewer,
                action,
                format!("Token {token:?} stops working at once."),
                vec![],
                &fields,
                &back,
            ));
        }
        let flash = match state.store.delete_token(&token, &viewer.actor, now_ms()).await {
            Ok(()) => Flash { summary: format!("Revoked token {token}."), failed: 0, lines: vec![] },
            Err(e) => Flash {
                summary: format!("Token {token} was not revoked."),
                failed: 1,
                lines: vec![ApiError::from(e).message],
            },
        };
        return Ok(redirect_with_flash(&back, flash));
    }
    if let Some(command) = match action {
        Action::RolloutPause => Some(Command::Pause),
        Action::RolloutResume => Some(Command::Resume),
        Action::RolloutAbort => Some(Command::Abort),
        _ => None,
    } {
        let id: i64 = field(&fields, "rollout")
            .and_then(|r| r.parse().ok())
            .ok_or_else(|| ApiError::bad_request("which rollout? (a number)"))?;
        if !confirmed {
            return Ok(confirm(viewer, action, format!("Rollout {id}."), vec![], &fields, &back));
        }
        let flash = match rollouts::command(state, &viewer.actor, id, command).await {
            Ok(r) => {
                let summary = match r.command {
                    // The driver applies a command at its next step (within seconds).
                    Some(_) => format!("{} {id}: asked; its driver applies it at the next step.", action.label()),
                    None => format!("{} {id}: now {}.", action.label(), r.status),
                };
                Flash { summary, failed: 0, lines: vec![] }
            }
            Err(e) => Flash { summary: format!("{} {id} refused.", action.label()), failed: 1, lines: vec![e.message] },
        };
        return Ok(redirect_with_flash(&back, flash));
    }
    let ids: Vec<&str> = fields.iter().filter(|(k, _)| k == "node").map(|(_, v)| v.as_str()).collect();
    if ids.is_empty() {
        return Ok(redirect_with_flash(
            &back,
            Flash { summary: format!("{}: no node was selected.", action.label()), failed: 1, lines: vec![] },
        ));
    }
    if ids.len() > MAX_NODES {
        return Err(ApiError::unprocessable(format!("at most {MAX_NODES} nodes in one action")).into());
    }
    if action == Action::Reserve && ids.len() > 1 {
        return Err(ApiError::unprocessable("an address is reserved for one node at a time").into());
    }
    if action == Action::RolloutStart {
        return start_rollout(state, viewer, &fields, &ids, confirmed, &back).await;
    }
    let request = request(action, &fields)?;
    let mut nodes = Vec::with_capacity(ids.len());
    for id in &ids {
        nodes.push(find_node(state, id).await?);
    }
    if !confirmed {
        let detail = match action {
            Action::PowerOff => "The nodes lose power at once; running VMs stop.".to_string(),
            Action::PowerCycle => "The nodes restart at once into a network boot; running VMs stop.".to_string(),
            Action::Reprovision => "The nodes boot their profile again at their next boot.".to_string(),
            _ => format!("{} node(s):", nodes.len()),
        };
        let names = nodes.iter().map(|n| format!("{} ({})", n.hostname, n.mac)).collect();
        return Ok(confirm(viewer, action, detail, names, &fields, &back));
    }
    let request = &request;
    let results: Vec<(String, Result<String, ApiError>)> = futures_util::stream::iter(nodes)
        .map(|node| async move {
            let outcome = act(state, viewer, request, &node).await;
            (node.hostname, outcome)
        })
        .buffered(CONCURRENT)
        .collect()
        .await;
    let failed: Vec<String> =
        results.iter().filter_map(|(name, r)| r.as_ref().err().map(|e| format!("{name}: {}", e.message))).collect();
    let done = results.len() - failed.len();
    tracing::info!(action = action.label(), by = %viewer.name, done, failed = failed.len(), "dashboard action");
    let mut lines = failed.clone();
    if results.len() == 1 {
        if let Some((name, Ok(what))) = results.first() {
            lines.push(format!("{name}: {what}"));
        }
    }
    let summary = match failed.len() {
        0 => format!("{}: done on {done} node{}.", action.label(), if done == 1 { "" } else { "s" }),
        n => format!("{}: done on {done}, failed on {n}.", action.label()),
    };
    Ok(redirect_with_flash(&back, Flash { summary, failed: failed.len(), lines }))
}

/// A rollout over the selected nodes: to the chosen profile (or each node's own
/// profile's current image), a batch at a time, with the hooks the config names.
async fn start_rollout(
    state: &AppState,
    viewer: &Viewer,
    fields: &[(String, String)],
    ids: &[&str],
    confirmed: bool,
    back: &str,
) -> Result<Response, UiError> {
    let number = |name: &str, default: u32| -> Result<u32, ApiError> {
        match field(fields, name).map(str::trim).filter(|s| !s.is_empty()) {
            None => Ok(default),
            Some(text) => text.parse().map_err(|_| ApiError::unprocessable(format!("{name} {text:?} is not a number"))),
        }
    };
    let hook = |name: &str| field(fields, name).map(str::trim).filter(|s| !s.is_empty()).map(str::to_string);
    let new = NewRollout {
        labels: BTreeMap::new(),
        profile: None,
        nodes: ids.iter().map(|s| s.to_string()).collect(),
        to_profile: hook("profile"),
        batch_size: number("batch", 1)?,
        max_failures: number("max_failures", 0)?,
        drain: hook("drain"),
        undrain: hook("undrain"),
        ready_timeout_secs: 1800,
    };
    if !confirmed {
        let target =
            new.to_profile.as_deref().map_or("each node's own profile".to_string(), |p| format!("profile {p}"));
        let detail = format!(
            "{} node(s) reboot into {target}, {} at a time; {} failure(s) tolerated.",
            ids.len(),
            new.batch_size,
            new.max_failures
        );
        return Ok(confirm(viewer, Action::RolloutStart, detail, vec![], fields, back));
    }
    let flash = match rollouts::start(state, &viewer.actor, new).await {
        Ok(r) => Flash { summary: format!("Started rollout {}: {}.", r.id, r.description), failed: 0, lines: vec![] },
        Err(e) => Flash { summary: "The rollout was not started.".into(), failed: 1, lines: vec![e.message] },
    };
    Ok(redirect_with_flash("/ui/rollouts", flash))
}

fn confirm(
    viewer: &Viewer,
    action: Action,
    detail: String,
    nodes: Vec<String>,
    fields: &[(String, String)],
    back: &str,
) -> Response {
    let fields = fields.iter().filter(|(k, _)| k != "confirmed").cloned().collect();
    let page = ConfirmPage {
        chrome: Chrome::new(Some(viewer), "", ""),
        what: action.label(),
        detail,
        nodes,
        fields,
        back: back.to_string(),
    };
    render(StatusCode::OK, &page, false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn label_edits_set_and_remove() {
        let edits = parse_label_edits("rack=r12, role=compute -old").unwrap();
        assert_eq!(
            edits,
            [
                LabelEdit::Set("rack".into(), "r12".into()),
                LabelEdit::Set("role".into(), "compute".into()),
                LabelEdit::Remove("old".into())
            ]
        );
        let before = BTreeMap::from([("old".to_string(), "x".to_string()), ("rack".to_string(), "r1".to_string())]);
        let after = apply_label_edits(&before, &edits);
        assert_eq!(after, BTreeMap::from([("rack".into(), "r12".into()), ("role".into(), "compute".into())]));
        assert!(parse_label_edits("").is_err());
        assert!(parse_label_edits("rack").is_err());
        assert!(parse_label_edits("bad key=x").is_err());
    }

    #[test]
    fn every_action_has_a_name_and_a_label() {
        for (name, action, label) in Action::ALL {
            assert_eq!(Action::parse(name), Some(action));
            assert_eq!(action.label(), label);
        }
        assert_eq!(Action::parse("format_disk"), None);
    }
}
