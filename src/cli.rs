//! The operator CLI's client side: commands that talk to a running server's admin API.
//!
//! Blocking (ureq): the CLI is a one-shot program and needs no runtime. Tables for
//! people, `--json` (the API's own JSON) for scripts.

use anyhow::{Context, Result};
use ramboot_api::{Actor, AuditRecord, Event, Manifest, Node, NodeDetail, NodeList, ProfileList};
use serde::de::DeserializeOwned;
use serde_json::Value;
use std::io::BufRead;
use std::time::Duration;

/// A blocking admin-API client.
pub struct ApiClient {
    base: String,
    token: Option<String>,
    agent: ureq::Agent,
}

impl ApiClient {
    pub fn new(base: &str, token: Option<String>) -> Self {
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(Duration::from_secs(30)).build();
        ApiClient { base: base.trim_end_matches('/').to_string(), token, agent }
    }

    fn url(&self, path: &str) -> String {
        format!("{}/api/v1{path}", self.base)
    }

    fn authed(&self, req: ureq::Request) -> ureq::Request {
        match &self.token {
            Some(t) => req.set("Authorization", &format!("Bearer {t}")),
            None => req,
        }
    }

    fn send(&self, method: &str, path: &str, body: Option<Value>) -> Result<Value> {
        let url = self.url(path);
        let req = self.authed(self.agent.request(method, &url));
        let result = match body {
            Some(b) => req.send_json(b),
            None => req.call(),
        };
        match result {
            Ok(resp) if resp.status() == 204 => Ok(Value::Null),
            Ok(resp) => resp.into_json().with_context(|| format!("decoding the answer of {url}")),
            Err(ureq::Error::Status(code, resp)) => {
                let body: Value = resp.into_json().unwrap_or(Value::Null);
                let message = body["error"]["message"].as_str().unwrap_or("(no message)");
                anyhow::bail!("{method} {url}: HTTP {code}: {message}")
            }
            Err(e) => Err(e).with_context(|| format!("{method} {url}")),
        }
    }

    pub fn get_json(&self, path: &str) -> Result<Value> {
        self.send("GET", path, None)
    }

    pub fn get<T: DeserializeOwned>(&self, path: &str) -> Result<T> {
        serde_json::from_value(self.get_json(path)?).context("unexpected answer from the API")
    }

    pub fn post(&self, path: &str, body: Value) -> Result<Value> {
        self.send("POST", path, Some(body))
    }

    pub fn patch(&self, path: &str, body: Value) -> Result<Value> {
        self.send("PATCH", path, Some(body))
    }

    pub fn put(&self, path: &str, body: Value) -> Result<Value> {
        self.send("PUT", path, Some(body))
    }

    pub fn delete(&self, path: &str) -> Result<()> {
        self.send("DELETE", path, None).map(|_| ())
    }

    /// Every node matching `query` (a query string without `after`), following pages.
    pub fn all_nodes(&self, query: &str) -> Result<Vec<Node>> {
        let mut nodes = vec![];
        let mut after = 0;
        loop {
            let page: NodeList = self.get(&format!("/nodes?after={after}&limit=500{query}"))?;
            nodes.extend(page.nodes);
            match page.next_after {
                Some(next) => after = next,
                None => return Ok(nodes),
            }
        }
    }

    pub fn node(&self, id: &str) -> Result<NodeDetail> {
        self.get(&format!("/nodes/{}", encode(id)))
    }

    pub fn profiles(&self) -> Result<ProfileList> {
        self.get("/profiles")
    }

    pub fn images(&self) -> Result<Vec<Manifest>> {
        self.get("/images")
    }

    /// Follow `/events/stream` (Server-Sent Events), calling `each` per event until
    /// the server closes the stream.
    pub fn follow_events(&self, after: Option<i64>, mut each: impl FnMut(Event) -> Result<()>) -> Result<()> {
        // No overall timeout: the stream is open-ended. Keep-alives arrive every 15 s.
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(Duration::from_secs(5))
            .timeout_read(Duration::from_secs(60))
            .build();
        let path = match after {
            Some(a) => format!("/events/stream?after={a}"),
            None => "/events/stream".to_string(),
        };
        let url = self.url(&path);
        let resp = match self.authed(agent.get(&url)).set("Accept", "text/event-stream").call() {
            Ok(r) => r,
            Err(ureq::Error::Status(code, _)) => anyhow::bail!("GET {url}: HTTP {code}"),
            Err(e) => return Err(e).with_context(|| format!("GET {url}")),
        };
        for line in std::io::BufReader::new(resp.into_reader()).lines() {
            let line = line.context("reading the event stream")?;
            if let Some(data) = line.strip_prefix("data:") {
                each(serde_json::from_str(data.trim()).context("decoding a streamed event")?)?;
            }
        }
        Ok(())
    }
}

/// Percent-encode a path segment (ids, MACs and names pass through unchanged).
pub fn encode(segment: &str) -> String {
    segment
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b':' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}

pub fn print_nodes(nodes: &[Node]) {
    println!("{:<5} {:<18} {:<16} {:<20} {:<14} {:<12} LABELS", "ID", "MAC", "IP", "HOSTNAME", "PROFILE", "STATE");
    for n in nodes {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!(
            "{:<5} {:<18} {:<16} {:<20} {:<14} {:<12} {}",
            n.id,
            n.mac.to_string(),
            n.ip.as_deref().unwrap_or("-"),
            n.hostname,
            n.profile.as_deref().unwrap_or("-"),
            n.state.as_str(),
            labels.join(",")
        );
    }
}

pub fn print_node(detail: &NodeDetail) {
    let n = &detail.node;
    println!("node {} ({}), hostname {}, ip {}", n.id, n.mac, n.hostname, n.ip.as_deref().unwrap_or("-"));
    if let Some(ip) = &n.reserved_ip {
        println!("reserved address {ip}");
    }
    println!("state {} since {}", n.state, format_ms(n.state_since_ms));
    if let Some(reason) = &n.maintenance_reason {
        println!("maintenance: {reason}");
    }
    println!("profile {}", n.profile.as_deref().unwrap_or("- (selectors or default)"));
    if let Some(chain) = n.boot_chain {
        println!("boot chain {chain} (its own; otherwise its profile's)");
    }
    if !n.labels.is_empty() {
        let labels: Vec<String> = n.labels.iter().map(|(k, v)| format!("{k}={v}")).collect();
        println!("labels {}", labels.join(", "));
    }
    if n.failures > 0 {
        println!("consecutive failed boots {}", n.failures);
    }
    if let Some(boot) = &detail.boot {
        let image = boot.image.as_ref().map(|i| format!("{} sha256:{}", i.name, &i.digest[..12.min(i.digest.len())]));
        println!("current boot {} (profile {}, image {})", boot.id, boot.profile, image.as_deref().unwrap_or("-"));
    }
    println!();
    print_events(&detail.events);
}

/// A node's iSCSI login settings, one line (never a secret: the API has none).
pub fn print_node_iscsi(i: &ramboot_api::NodeIscsi) {
    let mutual = match &i.mutual_chap_user {
        Some(user) if i.mutual_chap => format!("on (the target answers as {user})"),
        _ => "off".to_string(),
    };
    println!("target {}\ninitiator {}\nCHAP user {}\nmutual CHAP {mutual}", i.target_iqn, i.initiator_iqn, i.chap_user);
}

pub fn print_event(e: &Event) {
    let phase = e.phase_ms.map(|ms| format!(" (+{:.1}s)", ms as f64 / 1000.0)).unwrap_or_default();
    let state = e.state.map(|s| format!("[{s}] ")).unwrap_or_default();
    println!("{}  node {:<4} {:<8} {state}{}{phase}", format_ms(e.at_ms), e.node_id, e.kind, e.message);
}

pub fn print_events(events: &[Event]) {
    for e in events {
        print_event(e);
    }
}

pub fn format_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}

/// Who made an audited change, in words.
pub fn audit_actor(actor: &Actor) -> String {
    match actor {
        Actor::Token { name } => format!("token {name}"),
        Actor::File { path, revision } => format!("file {path}@{}", revision.get(..12).unwrap_or(revision)),
        Actor::Server { name } => format!("server {name}"),
    }
}

/// Each field an audited change touched, as `field: before → after` (or what it
/// was set to, or what it was).
pub fn audit_changes(before: &Option<Value>, after: &Option<Value>) -> Vec<String> {
    let empty = serde_json::Map::new();
    let fields = |v: &Option<Value>| v.as_ref().and_then(Value::as_object).cloned().unwrap_or_else(|| empty.clone());
    let (old, new) = (fields(before), fields(after));
    let mut changes: Vec<String> = vec![];
    for key in old.keys().chain(new.keys().filter(|k| !old.contains_key(*k))) {
        let show = |m: &serde_json::Map<String, Value>| m.get(key).map_or("-".to_string(), Value::to_string);
        changes.push(match (before.is_some(), after.is_some()) {
            (true, true) => format!("{key}: {} → {}", show(&old), show(&new)),
            (false, _) => format!("{key}={}", show(&new)),
            (_, false) => format!("{key} was {}", show(&old)),
        });
    }
    changes
}

/// One audit record on one line: when, who, what, to what, and each changed field
/// as `before → after`.
pub fn format_audit(r: &AuditRecord) -> String {
    let who = audit_actor(&r.actor);
    let changes = audit_changes(&r.before, &r.after);
    let mut line = format!("{}  {who:<24} {:<17} {} {}", format_ms(r.at_ms), r.action, r.target_kind, r.target);
    if !changes.is_empty() {
        line.push_str("  ");
        line.push_str(&changes.join("; "));
    }
    line
}

/// A rollout's header and its nodes, as a table.
pub fn print_rollout(r: &ramboot_api::Rollout) {
    let reason = r.reason.as_deref().map(|s| format!(" ({s})")).unwrap_or_default();
    println!("rollout {}: {}{reason}", r.id, r.status);
    println!("{}", r.description);
    println!(
        "started {} by {}; driven by {}",
        format_ms(r.created_at_ms),
        r.created_by,
        r.driver.as_deref().unwrap_or("-")
    );
    println!("{}", progress_line(r));
    println!("{:<6} {:<18} {:<16} {:<14} {:>7} TARGET", "NODE", "MAC", "HOSTNAME", "PHASE", "ATTEMPT");
    for n in &r.nodes {
        println!(
            "{:<6} {:<18} {:<16} {:<14} {:>7} {}",
            n.node_id,
            n.mac.as_deref().unwrap_or("(deleted)"),
            n.hostname.as_deref().unwrap_or("-"),
            n.phase.name(),
            n.attempts,
            n.target_profile
        );
    }
}

/// `[#####.....] 1/3 done · down: hv-2 · running`: one line of progress.
pub fn progress_line(r: &ramboot_api::Rollout) -> String {
    const WIDTH: usize = 20;
    let p = &r.progress;
    let filled = (p.done as usize * WIDTH).checked_div(p.total as usize).unwrap_or(0);
    let bar = format!("{}{}", "#".repeat(filled), ".".repeat(WIDTH - filled));
    let name = |id: &i64| {
        r.nodes.iter().find(|n| n.node_id == *id).and_then(|n| n.hostname.clone()).unwrap_or_else(|| id.to_string())
    };
    let down: Vec<String> = p.down.iter().map(name).collect();
    let mut line = format!("[{bar}] {}/{} done", p.done, p.total);
    if !down.is_empty() {
        line.push_str(&format!(" · down: {}", down.join(", ")));
    }
    if p.failed > 0 {
        line.push_str(&format!(" · {} failed", p.failed));
    }
    line.push_str(&format!(" · {}", r.status));
    line
}

pub fn print_rollout_event(r: &ramboot_api::Rollout, e: &ramboot_api::RolloutEvent) {
    let node = e
        .node_id
        .map(|id| {
            let name = r.nodes.iter().find(|n| n.node_id == id).and_then(|n| n.hostname.clone());
            format!("{:<12} ", name.unwrap_or_else(|| format!("node {id}")))
        })
        .unwrap_or_else(|| format!("{:<12} ", "rollout"));
    println!("{}  {node}{}", format_ms(e.at_ms), e.message);
}

/// Follow a rollout until it ends (exit 0) or halts (an error saying why): its
/// events as they happen and, on a terminal, a progress bar redrawn in place.
pub fn follow_rollout(client: &ApiClient, id: i64, json: bool) -> Result<()> {
    use std::io::{IsTerminal, Write};
    let tty = std::io::stdout().is_terminal() && !json;
    let (mut after, mut last_line) = (0, String::new());
    loop {
        let r: ramboot_api::Rollout = client.get(&format!("/rollouts/{id}"))?;
        let events: Vec<ramboot_api::RolloutEvent> =
            client.get(&format!("/rollouts/{id}/events?after={after}&limit=500"))?;
        let line = progress_line(&r);
        if tty && (!events.is_empty() || line != last_line) {
            print!("\r\x1b[2K");
        }
        for e in &events {
            if json {
                println!("{}", serde_json::to_string(e)?);
            } else {
                print_rollout_event(&r, e);
            }
            after = e.id;
        }
        if tty {
            print!("{line}");
            std::io::stdout().flush()?;
        } else if !json && line != last_line {
            println!("{line}");
        }
        last_line = line;
        match r.status.as_str() {
            "done" | "aborted" => {
                if tty {
                    println!();
                }
                return Ok(());
            }
            "halted" => {
                if tty {
                    println!();
                }
                anyhow::bail!(
                    "rollout {id} halted: {}; fix it, then `ramboot rollout resume {id}`",
                    r.reason.as_deref().unwrap_or("?")
                );
            }
            _ => std::thread::sleep(Duration::from_secs(1)),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn an_audit_line_shows_who_and_each_change() {
        let record = AuditRecord {
            id: 1,
            at_ms: 0,
            actor: Actor::Token { name: "alice".into() },
            action: "node.update".into(),
            target_kind: "node".into(),
            target: "52:54:00:00:00:01".into(),
            node_id: Some(1),
            before: Some(json!({"profile": null, "labels": {}})),
            after: Some(json!({"profile": "tiny", "labels": {"rack": "1"}})),
        };
        let line = format_audit(&record);
        assert!(line.starts_with("1970-01-01T00:00:00.000Z  token alice"), "{line}");
        assert!(
            line.ends_with(r#"node 52:54:00:00:00:01  labels: {} → {"rack":"1"}; profile: null → "tiny""#),
            "{line}"
        );
        let created = AuditRecord { before: None, after: Some(json!({"role": "admin"})), ..record };
        assert!(format_audit(&created).ends_with(r#"role="admin""#));
    }
}
