//! The operator CLI's client side: commands that talk to a running server's admin API.

use crate::http::api::NodeList;
use crate::store::{Event, Node};
use anyhow::{Context, Result};
use serde::Deserialize;
use std::time::Duration;

/// A blocking admin-API client (the CLI is a one-shot program; no runtime needed).
pub struct ApiClient {
    base: String,
    agent: ureq::Agent,
}

#[derive(Debug, Deserialize)]
pub struct NodeDetailView {
    pub node: Node,
    pub events: Vec<Event>,
}

impl ApiClient {
    pub fn new(base: &str) -> Self {
        let agent =
            ureq::AgentBuilder::new().timeout_connect(Duration::from_secs(5)).timeout(Duration::from_secs(30)).build();
        ApiClient { base: base.trim_end_matches('/').to_string(), agent }
    }

    fn get<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T> {
        let url = format!("{}/api/v1{path}", self.base);
        match self.agent.get(&url).call() {
            Ok(resp) => resp.into_json().with_context(|| format!("decoding {url}")),
            Err(ureq::Error::Status(code, resp)) => {
                let body = resp.into_string().unwrap_or_default();
                anyhow::bail!("{url}: HTTP {code}: {body}")
            }
            Err(e) => Err(e).with_context(|| format!("requesting {url}")),
        }
    }

    pub fn nodes(&self) -> Result<Vec<Node>> {
        Ok(self.get::<NodeList>("/nodes")?.nodes)
    }

    pub fn node(&self, id: &str) -> Result<NodeDetailView> {
        self.get(&format!("/nodes/{id}"))
    }
}

pub fn print_nodes(nodes: &[Node]) {
    println!("{:<5} {:<18} {:<16} {:<20} {:<14} {:<10}", "ID", "MAC", "IP", "HOSTNAME", "PROFILE", "STATE");
    for n in nodes {
        println!(
            "{:<5} {:<18} {:<16} {:<20} {:<14} {:<10}",
            n.id,
            n.mac.to_string(),
            n.ip.as_deref().unwrap_or("-"),
            n.hostname,
            n.profile.as_deref().unwrap_or("(default)"),
            n.state.as_str()
        );
    }
}

pub fn print_node(detail: &NodeDetailView) {
    let n = &detail.node;
    println!("node {} ({}), hostname {}, ip {}", n.id, n.mac, n.hostname, n.ip.as_deref().unwrap_or("-"));
    println!("state {} since {}", n.state, format_ms(n.state_since_ms));
    println!("profile {}", n.profile.as_deref().unwrap_or("(default)"));
    println!();
    print_events(&detail.events);
}

pub fn print_events(events: &[Event]) {
    for e in events {
        let phase = e.phase_ms.map(|ms| format!(" (+{:.1}s)", ms as f64 / 1000.0)).unwrap_or_default();
        let state = e.state.map(|s| format!("[{s}] ")).unwrap_or_default();
        println!("{}  {:<8} {state}{}{phase}", format_ms(e.at_ms), e.kind, e.message);
    }
}

pub fn format_ms(ms: i64) -> String {
    let t = std::time::UNIX_EPOCH + Duration::from_millis(u64::try_from(ms).unwrap_or(0));
    humantime::format_rfc3339_millis(t).to_string()
}
