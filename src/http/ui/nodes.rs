//! The node table: columns the operator picks, sorting, filters by state, profile,
//! label and a text search over MAC, IP, hostname and BMC address, all kept in the
//! URL; pages of 50 to 500 rows, each page two indexed queries (the rows, the
//! count) plus one each for the rows' boots and failure reasons.

use super::{format, render, Chrome, UiError, Viewer};
use crate::clock::now_ms;
use crate::http::AppState;
use crate::store::{self, NodeFilter, NodeSort};
use askama::Template;
use axum::extract::{RawQuery, State};
use axum::http::StatusCode;
use axum::response::Response;
use ramboot_core::node::{valid_label, NodeState};
use std::collections::BTreeMap;

/// A column of the node table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Column {
    Hostname,
    Mac,
    Ip,
    State,
    Profile,
    Labels,
    LastBoot,
    LastSeen,
    Power,
    Volumes,
    Arch,
    Declared,
}

impl Column {
    const ALL: [Column; 12] = [
        Column::Hostname,
        Column::Mac,
        Column::Ip,
        Column::State,
        Column::Profile,
        Column::Labels,
        Column::LastBoot,
        Column::LastSeen,
        Column::Power,
        Column::Volumes,
        Column::Arch,
        Column::Declared,
    ];
    /// What a table shows until the operator picks: the first eight.
    const DEFAULT: &'static [Column] = Column::ALL.split_at(8).0;

    fn key(self) -> &'static str {
        match self {
            Column::Hostname => "hostname",
            Column::Mac => "mac",
            Column::Ip => "ip",
            Column::State => "state",
            Column::Profile => "profile",
            Column::Labels => "labels",
            Column::LastBoot => "last_boot",
            Column::LastSeen => "last_seen",
            Column::Power => "power",
            Column::Volumes => "volumes",
            Column::Arch => "arch",
            Column::Declared => "declared",
        }
    }

    fn label(self) -> &'static str {
        match self {
            Column::Hostname => "Hostname",
            Column::Mac => "MAC",
            Column::Ip => "IP",
            Column::State => "State",
            Column::Profile => "Profile",
            Column::Labels => "Labels",
            Column::LastBoot => "Last boot",
            Column::LastSeen => "Last seen",
            Column::Power => "Power",
            Column::Volumes => "Volumes",
            Column::Arch => "Firmware",
            Column::Declared => "Inventory file",
        }
    }

    fn sort(self) -> Option<NodeSort> {
        match self {
            Column::Hostname => Some(NodeSort::Hostname),
            Column::Mac => Some(NodeSort::Mac),
            Column::State => Some(NodeSort::State),
            Column::Profile => Some(NodeSort::Profile),
            Column::LastSeen => Some(NodeSort::LastSeen),
            _ => None,
        }
    }
}

fn sort_key(sort: NodeSort) -> &'static str {
    match sort {
        NodeSort::Id => "id",
        NodeSort::Mac => "mac",
        NodeSort::Hostname => "hostname",
        NodeSort::State => "state",
        NodeSort::Profile => "profile",
        NodeSort::StateSince => "state_since",
        NodeSort::LastSeen => "last_seen",
    }
}

const SORTS: [NodeSort; 7] = [
    NodeSort::Id,
    NodeSort::Mac,
    NodeSort::Hostname,
    NodeSort::State,
    NodeSort::Profile,
    NodeSort::StateSince,
    NodeSort::LastSeen,
];
const PER_PAGE: [i64; 4] = [50, 100, 250, 500];
const DEFAULT_PER_PAGE: i64 = 100;

/// The table's state, as the URL holds it. Unknown values fall back to defaults
/// (and say so) rather than failing: a bookmarked URL keeps working.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TableQuery {
    pub state: Option<NodeState>,
    pub profile: Option<String>,
    pub label: Option<(String, String)>,
    pub label_text: String,
    pub q: String,
    pub sort: NodeSort,
    pub descending: bool,
    pub per: i64,
    pub page: i64,
    pub columns: Vec<Column>,
    /// What in the URL was not understood, in words.
    pub problems: Vec<String>,
}

impl TableQuery {
    pub fn parse(raw: Option<&str>) -> TableQuery {
        let mut t = TableQuery {
            state: None,
            profile: None,
            label: None,
            label_text: String::new(),
            q: String::new(),
            sort: NodeSort::Hostname,
            descending: false,
            per: DEFAULT_PER_PAGE,
            page: 1,
            columns: Vec::new(),
            problems: Vec::new(),
        };
        for (k, v) in url::form_urlencoded::parse(raw.unwrap_or("").as_bytes()) {
            let v = v.trim();
            match &*k {
                _ if v.is_empty() => {}
                "state" => match v.parse() {
                    Ok(s) => t.state = Some(s),
                    Err(_) => t.problems.push(format!("no state {v:?}")),
                },
                "profile" => t.profile = Some(v.chars().take(100).collect()),
                "label" => {
                    t.label_text = v.chars().take(130).collect();
                    match v.split_once('=') {
                        Some((k, val)) if valid_label(k) && valid_label(val) => {
                            t.label = Some((k.to_string(), val.to_string()))
                        }
                        _ => t.problems.push(format!("label filter {v:?} is not key=value")),
                    }
                }
                "q" => t.q = v.chars().take(crate::http::api::MAX_SEARCH_CHARS).collect(),
                "sort" => match SORTS.into_iter().find(|s| sort_key(*s) == v) {
                    Some(s) => t.sort = s,
                    None => t.problems.push(format!("cannot sort by {v:?}")),
                },
                "dir" => t.descending = v == "desc",
                "per" => match v.parse() {
                    Ok(n) if PER_PAGE.contains(&n) => t.per = n,
                    _ => t.problems.push(format!("page size {v:?} is not one of 50, 100, 250, 500")),
                },
                "page" => t.page = v.parse().ok().filter(|&p| p >= 1).unwrap_or(1),
                "col" => match Column::ALL.into_iter().find(|c| c.key() == v) {
                    Some(c) if !t.columns.contains(&c) => t.columns.push(c),
                    Some(_) => {}
                    None => t.problems.push(format!("no column {v:?}")),
                },
                _ => {}
            }
        }
        if t.columns.is_empty() {
            t.columns = Column::DEFAULT.to_vec();
        }
        t
    }

    /// This table's URL with `change` applied: only what differs from the
    /// defaults, so links stay short.
    pub fn href(&self, change: impl FnOnce(&mut TableQuery)) -> String {
        let mut t = self.clone();
        change(&mut t);
        let mut url = url::form_urlencoded::Serializer::new(String::new());
        if let Some(s) = t.state {
            url.append_pair("state", s.as_str());
        }
        if let Some(p) = &t.profile {
            url.append_pair("profile", p);
        }
        if !t.label_text.is_empty() {
            url.append_pair("label", &t.label_text);
        }
        if !t.q.is_empty() {
            url.append_pair("q", &t.q);
        }
        if t.sort != NodeSort::Hostname {
            url.append_pair("sort", sort_key(t.sort));
        }
        if t.descending {
            url.append_pair("dir", "desc");
        }
        if t.per != DEFAULT_PER_PAGE {
            url.append_pair("per", &t.per.to_string());
        }
        if t.columns != Column::DEFAULT {
            for c in &t.columns {
                url.append_pair("col", c.key());
            }
        }
        if t.page > 1 {
            url.append_pair("page", &t.page.to_string());
        }
        let query = url.finish();
        if query.is_empty() {
            "/ui/nodes".into()
        } else {
            format!("/ui/nodes?{query}")
        }
    }

    fn filter(&self) -> NodeFilter {
        NodeFilter {
            state: self.state,
            profile: self.profile.clone(),
            label: self.label.clone(),
            text: (!self.q.is_empty()).then(|| self.q.clone()),
            after: 0,
            limit: self.per,
        }
    }
}

/// One row, every column's text ready (the template picks the chosen ones).
pub struct Row {
    pub id: i64,
    pub mac: String,
    pub hostname: String,
    pub ip: String,
    pub state: &'static str,
    pub reason: String,
    pub profile: String,
    pub labels: Vec<String>,
    pub last_boot: String,
    pub last_seen: String,
    pub power: String,
    pub volumes: String,
    pub arch: String,
    pub declared_in: String,
}

/// What a page of rows needs besides the nodes: their boots, failure reasons and
/// volumes, each fetched once for the page.
pub struct RowContext {
    boots: BTreeMap<i64, store::Boot>,
    reasons: BTreeMap<i64, String>,
    volumes: BTreeMap<i64, Vec<String>>,
    now: i64,
}

impl RowContext {
    pub async fn load(state: &AppState, nodes: &[store::Node]) -> Result<RowContext, UiError> {
        let boot_ids: Vec<i64> = nodes.iter().filter_map(|n| n.current_boot_id).collect();
        let failed: Vec<i64> = nodes.iter().filter(|n| n.state == NodeState::Failed).map(|n| n.id).collect();
        let ids: Vec<i64> = nodes.iter().map(|n| n.id).collect();
        let mut volumes: BTreeMap<i64, Vec<String>> = BTreeMap::new();
        for v in state.store.volumes_of(&ids).await? {
            if let Some(node) = v.node_id {
                volumes.entry(node).or_default().push(match v.lun {
                    Some(lun) => format!("{} (LUN {lun})", v.name),
                    None => v.name,
                });
            }
        }
        Ok(RowContext {
            boots: state.store.boots_by_id(&boot_ids).await?,
            reasons: state.store.last_move_messages(&failed, NodeState::Failed).await?,
            volumes,
            now: now_ms(),
        })
    }

    pub fn row(&self, state: &AppState, n: store::Node) -> Row {
        let boot = n.current_boot_id.and_then(|b| self.boots.get(&b));
        let last_boot = match boot {
            Some(b) => match (b.finished_at_ms, b.outcome.as_deref()) {
                (Some(end), Some("ready")) => format::duration(end - b.started_at_ms),
                (Some(end), Some(outcome)) => format!("{outcome} after {}", format::duration(end - b.started_at_ms)),
                _ => format!("booting for {}", format::duration(self.now - b.started_at_ms)),
            },
            None => String::new(),
        };
        let reason = match n.state {
            NodeState::Failed => self.reasons.get(&n.id).cloned().unwrap_or_default(),
            NodeState::Maintenance => n.maintenance_reason.clone().unwrap_or_default(),
            _ => String::new(),
        };
        let profile = profile_text(state, &n, boot);
        let power = match (&n.bmc, state.power.last_check(n.id)) {
            (None, _) => String::new(),
            (Some(_), None) => "not polled yet".into(),
            (Some(_), Some(check)) => match check.power {
                Some(p) => p.as_str().to_string(),
                None => check.status.as_str().to_string(),
            },
        };
        Row {
            id: n.id,
            mac: n.mac.to_string(),
            ip: n.ip.clone().unwrap_or_default(),
            state: n.state.as_str(),
            reason,
            profile,
            labels: n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect(),
            last_boot,
            last_seen: format::ago(store::last_seen_ms(&n), self.now),
            power,
            volumes: self.volumes.get(&n.id).map(|v| v.join(", ")).unwrap_or_default(),
            arch: n.arch.clone().unwrap_or_default(),
            declared_in: n.declared_in.clone().unwrap_or_default(),
            hostname: n.hostname,
        }
    }
}

/// The profile a node has: assigned, or what its current boot booted; with the
/// revision loaded now.
fn profile_text(state: &AppState, n: &store::Node, boot: Option<&store::Boot>) -> String {
    let (name, how) = match (&n.profile, boot) {
        (Some(p), _) => (p.as_str(), ""),
        (None, Some(b)) if b.profile != "(discovery)" => (b.profile.as_str(), " (selected)"),
        _ => return String::new(),
    };
    match state.profiles.current().loaded(name) {
        Some(p) => format!("{name}{how} · rev {}", p.revision.get(..8).unwrap_or(&p.revision)),
        None => format!("{name}{how} · not loaded"),
    }
}

pub struct Choice {
    pub value: String,
    pub label: &'static str,
    pub selected: bool,
}

fn choice(value: impl ToString, selected: bool) -> Choice {
    Choice { value: value.to_string(), label: "", selected }
}

pub struct HeaderCell {
    pub label: &'static str,
    pub sort_href: Option<String>,
    pub aria_sort: &'static str,
    pub key: Column,
}

#[derive(Template)]
#[template(path = "ui/nodes.html")]
struct NodesPage {
    chrome: Chrome,
    admin: bool,
    csrf: String,
    here: String,
    /// Hooks a rollout may run (the config's `hooks:`).
    hooks: Vec<String>,
    q: String,
    label: String,
    sort: &'static str,
    dir: &'static str,
    states: Vec<Choice>,
    profiles: Vec<Choice>,
    per_options: Vec<Choice>,
    column_choices: Vec<Choice>,
    columns: Vec<HeaderCell>,
    rows: Vec<Row>,
    summary: String,
    problem: Option<String>,
    page: i64,
    pages: i64,
    prev_href: Option<String>,
    next_href: Option<String>,
}

pub async fn page(State(state): State<AppState>, viewer: Viewer, RawQuery(raw): RawQuery) -> Result<Response, UiError> {
    let t = TableQuery::parse(raw.as_deref());
    let filter = t.filter();
    let total = state.store.count_nodes(&filter).await?;
    let pages = ((total + t.per - 1) / t.per).max(1);
    let page = t.page.min(pages);
    let nodes = state.store.list_nodes_sorted(&filter, t.sort, t.descending, (page - 1) * t.per).await?;
    let context = RowContext::load(&state, &nodes).await?;
    let first = (page - 1) * t.per + 1;
    let summary = match nodes.len() {
        0 => format!("{total} nodes"),
        n => format!("{first}–{} of {total} nodes", first + n as i64 - 1),
    };
    let rows = nodes.into_iter().map(|n| context.row(&state, n)).collect();
    let columns = t
        .columns
        .iter()
        .map(|&c| {
            let sorted = c.sort() == Some(t.sort);
            HeaderCell {
                label: c.label(),
                key: c,
                aria_sort: match (sorted, t.descending) {
                    (false, _) => "none",
                    (true, false) => "ascending",
                    (true, true) => "descending",
                },
                sort_href: c.sort().map(|s| {
                    t.href(|q| {
                        q.descending = sorted && !t.descending;
                        q.sort = s;
                        q.page = 1;
                    })
                }),
            }
        })
        .collect();
    let profiles = super::profile_names(&state);
    let page_view = NodesPage {
        chrome: Chrome::new(Some(&viewer), "/ui/nodes", "nodes"),
        admin: viewer.is_admin(),
        csrf: viewer.csrf.clone(),
        here: t.href(|q| q.page = page),
        hooks: state.config.hooks.keys().cloned().collect(),
        q: t.q.clone(),
        label: t.label_text.clone(),
        sort: sort_key(t.sort),
        dir: if t.descending { "desc" } else { "asc" },
        states: NodeState::ALL.iter().map(|s| choice(s.as_str(), t.state == Some(*s))).collect(),
        profiles: profiles.iter().map(|p| choice(p, t.profile.as_deref() == Some(p))).collect(),
        per_options: PER_PAGE.iter().map(|&n| choice(n, n == t.per)).collect(),
        column_choices: Column::ALL
            .iter()
            .map(|&c| Choice { value: c.key().into(), label: c.label(), selected: t.columns.contains(&c) })
            .collect(),
        columns,
        rows,
        summary,
        problem: (!t.problems.is_empty()).then(|| format!("Ignored: {}.", t.problems.join("; "))),
        page,
        pages,
        prev_href: (page > 1).then(|| t.href(|q| q.page = page - 1)),
        next_href: (page < pages).then(|| t.href(|q| q.page = page + 1)),
    };
    Ok(render(StatusCode::OK, &page_view, viewer.flash.is_some()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_url_round_trips_the_table_state() {
        let raw = "state=failed&profile=compute&label=rack%3Dr12&q=52%3A54&sort=last_seen&dir=desc&per=250&page=3&col=mac&col=state&col=mac";
        let t = TableQuery::parse(Some(raw));
        assert_eq!(t.state, Some(NodeState::Failed));
        assert_eq!(t.label, Some(("rack".into(), "r12".into())));
        assert_eq!((t.sort, t.descending, t.per, t.page), (NodeSort::LastSeen, true, 250, 3));
        assert_eq!(t.columns, [Column::Mac, Column::State], "a repeated column counts once");
        assert!(t.problems.is_empty(), "{:?}", t.problems);
        assert_eq!(TableQuery::parse(Some(t.href(|_| {}).trim_start_matches("/ui/nodes?"))), t);
        assert_eq!(TableQuery::parse(None).href(|_| {}), "/ui/nodes", "defaults make no query");
    }

    #[test]
    fn a_bad_url_falls_back_and_says_why() {
        let t = TableQuery::parse(Some("state=exploded&per=7&sort=shoe_size&col=nope&label=x&page=-4"));
        assert_eq!((t.state, t.per, t.sort, t.page), (None, DEFAULT_PER_PAGE, NodeSort::Hostname, 1));
        assert_eq!(t.columns, Column::DEFAULT);
        assert_eq!(t.problems.len(), 5, "{:?}", t.problems);
    }
}
