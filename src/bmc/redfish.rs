//! A small typed Redfish client for one ComputerSystem: its power state, resets and
//! the one-time boot override. Blocking (`ureq`), bounded by [`Timeouts`]; run it on
//! the blocking pool.
//!
//! The decisions are pure functions, tested without a BMC: [`parse_system`] reads a
//! System resource, [`classify`] maps an HTTP answer to a [`BmcError`],
//! [`resolve_target`] checks where an action may be sent. The reset path comes from
//! the System resource (`Actions."#ComputerSystem.Reset".target`), never from a
//! template, and a reset type is sent only if the BMC lists it (some BMCs, sushy
//! among them, answer 204 to a type they then ignore).
//!
//! Credentials go out in one `Authorization` header and nowhere else: not in URLs
//! (which errors and logs show), not in errors, not in Debug output.

use super::{
    plan, plan_cycle_with_pxe, BootOverride, BootTarget, Credentials, OverrideEnabled, PowerCommand, PowerState,
    ResetKind, Step, SystemInfo, Timeouts,
};
use base64::Engine as _;
use serde_json::{json, Value};
use std::fmt;
use std::time::{Duration, Instant};
use url::Url;

/// How much of a BMC's own message an error quotes.
pub const MESSAGE_LIMIT: usize = 300;

/// Why a BMC did not do what was asked, in words an operator can act on. Names the
/// BMC's host, never the credentials.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum BmcError {
    #[error("BMC system URL {url:?} is not usable: {reason}")]
    InvalidUrl { url: String, reason: String },
    #[error("BMC {host} is unreachable ({action}): {reason}")]
    Unreachable { host: String, action: String, reason: String },
    #[error("BMC {host} refused the credentials (HTTP {status}) for {action}: check the user name and password")]
    Unauthorized { host: String, action: String, status: u16 },
    #[error("BMC {host} refused {action} (HTTP {status}): {message}")]
    Refused { host: String, action: String, status: u16, message: String },
    #[error("BMC {host} does not support {action}: {message}")]
    Unsupported { host: String, action: String, message: String },
    #[error("BMC {host} failed {action} (HTTP {status}): {message}")]
    BmcFault { host: String, action: String, status: u16, message: String },
    #[error("BMC {host} sent a malformed answer to {action}: {reason}")]
    Malformed { host: String, action: String, reason: String },
    #[error("BMC {host}: TLS refused: {reason}")]
    Tls { host: String, reason: String },
    #[error("BMC {host}: the system did not reach power state {wanted} within {secs} s (last: {last})")]
    Timeout { host: String, wanted: String, secs: u64, last: String },
}

// ---------------------------------------------------------------------------------
// Pure decisions

/// Read what a power command needs from a ComputerSystem resource. Lenient about
/// what it does not need (a missing `PowerState` is unknown, values of the wrong
/// type are skipped); only a body that is not an object is malformed.
pub fn parse_system(v: &Value) -> Result<SystemInfo, String> {
    let Some(obj) = v.as_object() else {
        return Err(format!("expected a ComputerSystem object, got {}", kind_of(v)));
    };
    let power_state = PowerState::from_redfish(obj.get("PowerState").and_then(Value::as_str).unwrap_or(""));
    let reset = obj.get("Actions").and_then(|a| a.get("#ComputerSystem.Reset"));
    let reset_target = reset.and_then(|r| r.get("target")).and_then(Value::as_str).map(String::from);
    let allowed_resets = reset
        .and_then(|r| r.get("ResetType@Redfish.AllowableValues"))
        .and_then(Value::as_array)
        .map(|values| values.iter().filter_map(Value::as_str).map(ResetKind::from_redfish).collect());
    let boot = obj.get("Boot").and_then(Value::as_object).map(|b| BootOverride {
        target: BootTarget::from_redfish(b.get("BootSourceOverrideTarget").and_then(Value::as_str).unwrap_or("None")),
        enabled: b.get("BootSourceOverrideEnabled").and_then(Value::as_str).map(OverrideEnabled::from_redfish),
        allowed_targets: b
            .get("BootSourceOverrideTarget@Redfish.AllowableValues")
            .and_then(Value::as_array)
            .map(|values| values.iter().filter_map(Value::as_str).map(BootTarget::from_redfish).collect()),
    });
    Ok(SystemInfo { power_state, reset_target, allowed_resets, boot })
}

fn kind_of(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Array(_) => "an array",
        Value::Object(_) => "an object",
    }
}

/// The BMC's own words in an error answer: Redfish's `error.message` and the
/// `Message`s of `@Message.ExtendedInfo`, else the body's text; one line, at most
/// [`MESSAGE_LIMIT`] characters.
pub fn redfish_message(body: &str) -> String {
    let mut parts: Vec<String> = vec![];
    if let Ok(v) = serde_json::from_str::<Value>(body) {
        let error = v.get("error").unwrap_or(&v);
        if let Some(m) = error.get("message").and_then(Value::as_str) {
            parts.push(m.to_string());
        }
        let extended = error.get("@Message.ExtendedInfo").and_then(Value::as_array).into_iter().flatten();
        for info in extended {
            let text = info.get("Message").and_then(Value::as_str).or_else(|| info.get("MessageId")?.as_str());
            if let Some(text) = text.filter(|t| !parts.iter().any(|p| p == t)) {
                parts.push(text.to_string());
            }
        }
    }
    if parts.is_empty() {
        parts.push(body.to_string());
    }
    let text = parts.join("; ").split_whitespace().collect::<Vec<_>>().join(" ");
    match text.char_indices().nth(MESSAGE_LIMIT) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None if text.is_empty() => "(no message)".into(),
        None => text,
    }
}

/// The error for an HTTP answer that is not a success.
pub fn classify(host: &str, action: &str, status: u16, body: &str) -> BmcError {
    let (host, action) = (host.to_string(), action.to_string());
    match status {
        401 | 403 => BmcError::Unauthorized { host, action, status },
        // Method not allowed, not implemented: this BMC cannot do it at all.
        405 | 501 => BmcError::Unsupported { host, action, message: redfish_message(body) },
        500..=599 => BmcError::BmcFault { host, action, status, message: redfish_message(body) },
        300..=399 => BmcError::Refused {
            host,
            action,
            status,
            message: "the BMC redirected the request; configure the URL it redirects to".into(),
        },
        _ => BmcError::Refused { host, action, status, message: redfish_message(body) },
    }
}

/// Where an action target the BMC named (a path, or a URL) is, against the System
/// URL; refused if it leaves the BMC (the credentials go with the request).
pub fn resolve_target(system: &Url, target: &str) -> Result<Url, String> {
    let url = system.join(target).map_err(|e| format!("action target {target:?}: {e}"))?;
    let same_origin = url.scheme() == system.scheme()
        && url.host_str() == system.host_str()
        && url.port_or_known_default() == system.port_or_known_default();
    if !same_origin {
        return Err(format!("action target {target:?} points off the BMC"));
    }
    Ok(url)
}

/// Check and parse a System URL: `http(s)://HOST[:PORT]/redfish/v1/Systems/ID`, no
/// credentials in it. Returns the URL and the host (with port) errors name.
pub fn parse_system_url(system_url: &str) -> Result<(Url, String), BmcError> {
    let invalid = |reason: &str| BmcError::InvalidUrl { url: redact_url(system_url), reason: reason.into() };
    let url = Url::parse(system_url).map_err(|e| invalid(&e.to_string()))?;
    match url.scheme() {
        "http" | "https" => {}
        _ => return Err(invalid("expected an https:// or http:// URL")),
    }
    if !url.username().is_empty() || url.password().is_some() {
        return Err(invalid("credentials belong in the credentials reference, not the URL"));
    }
    let Some(host) = url.host_str() else { return Err(invalid("no host")) };
    if !url.path().contains("/redfish/v1/Systems/") {
        return Err(invalid("expected the System resource, e.g. https://bmc/redfish/v1/Systems/1"));
    }
    let host = match url.port() {
        Some(port) => format!("{host}:{port}"),
        None => host.to_string(),
    };
    Ok((url, host))
}

/// The TLS error under a transport failure, if that is what it was.
fn tls_refusal(t: &ureq::Transport) -> Option<String> {
    let mut source = std::error::Error::source(t);
    while let Some(e) = source {
        if let Some(tls) = e.downcast_ref::<rustls::Error>() {
            return Some(tls.to_string());
        }
        if let Some(tls) =
            e.downcast_ref::<std::io::Error>().and_then(|io| io.get_ref()?.downcast_ref::<rustls::Error>())
        {
            return Some(tls.to_string());
        }
        source = e.source();
    }
    None
}

/// A URL for messages: any user info replaced.
fn redact_url(s: &str) -> String {
    match Url::parse(s) {
        Ok(mut url) if !url.username().is_empty() || url.password().is_some() => {
            let _ = url.set_username("");
            let _ = url.set_password(None);
            url.to_string()
        }
        Ok(_) => s.to_string(),
        Err(_) => s.chars().take(200).collect(),
    }
}

// ---------------------------------------------------------------------------------
// The client

#[derive(Clone, Copy, PartialEq, Eq)]
enum Method {
    Get,
    Post,
    Patch,
}

impl Method {
    fn as_str(self) -> &'static str {
        match self {
            Method::Get => "GET",
            Method::Post => "POST",
            Method::Patch => "PATCH",
        }
    }

    /// Safe to send again after a failure that may have reached the BMC. A PATCH
    /// here sets fixed values, so a second one changes nothing more; a POST reset
    /// could restart a node twice.
    fn idempotent(self) -> bool {
        matches!(self, Method::Get | Method::Patch)
    }
}

/// One request to the BMC; `action` names it in errors and logs.
#[derive(Clone, Copy)]
struct Request<'a> {
    method: Method,
    url: &'a Url,
    body: Option<&'a Value>,
    if_match: Option<&'a str>,
    action: &'a str,
}

/// A successful answer.
struct Answer {
    etag: Option<String>,
    body: String,
}

/// One Redfish ComputerSystem behind its BMC.
pub struct Redfish {
    agent: ureq::Agent,
    url: Url,
    host: String,
    credentials: Credentials,
    timeouts: Timeouts,
}

impl fmt::Debug for Redfish {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Redfish")
            .field("url", &self.url.as_str())
            .field("credentials", &self.credentials)
            .field("timeouts", &self.timeouts)
            .finish()
    }
}

impl Redfish {
    /// A client for the System at `system_url` (see [`parse_system_url`]); an
    /// https BMC must present a certificate the web PKI trusts.
    pub fn new(system_url: &str, credentials: Credentials, timeouts: Timeouts) -> Result<Redfish, BmcError> {
        Redfish::pinned(system_url, None, credentials, timeouts)
    }

    /// [`Redfish::new`] trusting exactly the https certificate whose SHA-256 is
    /// `fingerprint` (see `bmc::tls`).
    pub fn pinned(
        system_url: &str,
        fingerprint: Option<&str>,
        credentials: Credentials,
        timeouts: Timeouts,
    ) -> Result<Redfish, BmcError> {
        let (url, host) = parse_system_url(system_url)?;
        let invalid = |reason: &str| BmcError::InvalidUrl { url: redact_url(system_url), reason: reason.into() };
        let pin = match fingerprint {
            Some(_) if url.scheme() != "https" => {
                return Err(invalid("a fingerprint pins an https BMC's certificate, and this URL is http"))
            }
            Some(text) => Some(
                super::tls::parse_fingerprint(text)
                    .ok_or_else(|| invalid("the fingerprint must be 64 hex digits (colons allowed)"))?,
            ),
            None => None,
        };
        let tls = super::tls::client_config(pin).map_err(|e| invalid(&format!("TLS setup: {e}")))?;
        let agent = ureq::AgentBuilder::new()
            .timeout_connect(timeouts.connect)
            .timeout(timeouts.request)
            .tls_config(tls)
            // A redirect would carry the credentials to wherever it points.
            .redirects(0)
            .build();
        Ok(Redfish { agent, url, host, credentials, timeouts })
    }

    /// The BMC's host (and port), as errors name it.
    pub fn host(&self) -> &str {
        &self.host
    }

    /// The System resource, as far as power commands need it.
    pub fn system(&self) -> Result<SystemInfo, BmcError> {
        self.system_with_etag().map(|(info, _)| info)
    }

    pub fn power_state(&self) -> Result<PowerState, BmcError> {
        Ok(self.system()?.power_state)
    }

    /// The boot source override as the BMC reports it now.
    pub fn boot_override(&self) -> Result<BootOverride, BmcError> {
        self.system()?.boot.ok_or_else(|| self.unsupported("the boot override", "the System has no Boot object"))
    }

    /// Send one reset of `kind`, if the BMC lists it.
    pub fn reset(&self, kind: ResetKind) -> Result<(), BmcError> {
        let system = self.system()?;
        self.reset_on(&system, &kind)
    }

    /// Boot from `target` on the next boot only (`BootSourceOverrideEnabled: Once`).
    /// Some BMCs keep it longer: sushy's libvirt driver stores every override as
    /// `Continuous` (read it back with [`Redfish::boot_override`]).
    pub fn set_boot_once(&self, target: BootTarget) -> Result<(), BmcError> {
        let action = format!("a one-time boot override to {}", target.as_str());
        let (system, etag) = self.system_with_etag()?;
        let allowed = system.boot.as_ref().and_then(|b| b.allowed_targets.as_ref());
        if let Some(allowed) = allowed.filter(|allowed| !allowed.contains(&target)) {
            let offered = allowed.iter().map(BootTarget::as_str).collect::<Vec<_>>().join(", ");
            return Err(self.unsupported(&action, &format!("it offers boot targets: {offered}")));
        }
        let body = json!({"Boot": {"BootSourceOverrideTarget": target.as_str(), "BootSourceOverrideEnabled": "Once"}});
        tracing::info!(bmc = %self.host, target = target.as_str(), "setting a one-time boot override");
        self.send(Request {
            method: Method::Patch,
            url: &self.url,
            body: Some(&body),
            if_match: etag.as_deref(),
            action: &action,
        })?;
        Ok(())
    }

    /// Carry out `cmd` (see [`plan`]) and return the power state after it.
    pub fn power(&self, cmd: PowerCommand) -> Result<PowerState, BmcError> {
        let system = self.system()?;
        let steps = plan(cmd, &system).map_err(|e| self.unsupported(&format!("power {cmd:?}"), &e.to_string()))?;
        if steps.is_empty() {
            return Ok(system.power_state);
        }
        self.run(&system, &steps)?;
        self.power_state()
    }

    /// Boot from the network once, now: the one-time PXE override, then a cycle (or
    /// just on, if the system is off).
    pub fn cycle_with_pxe(&self) -> Result<(), BmcError> {
        let system = self.system()?;
        let steps = plan_cycle_with_pxe(&system).map_err(|e| self.unsupported("a PXE power cycle", &e.to_string()))?;
        self.run(&system, &steps)
    }

    /// Carry out `steps`; `system` is what the BMC said before the first one.
    pub fn run(&self, system: &SystemInfo, steps: &[Step]) -> Result<(), BmcError> {
        for step in steps {
            match step {
                Step::Reset(kind) => self.reset_on(system, kind)?,
                Step::SetBootOnce(target) => self.set_boot_once(target.clone())?,
                Step::WaitFor(state) => self.wait_for(state)?,
            }
        }
        Ok(())
    }

    /// Poll the power state until it is `wanted`, up to [`Timeouts::settle`].
    pub fn wait_for(&self, wanted: &PowerState) -> Result<(), BmcError> {
        let deadline = Instant::now() + self.timeouts.settle;
        loop {
            let now = self.power_state()?;
            if &now == wanted {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(BmcError::Timeout {
                    host: self.host.clone(),
                    wanted: wanted.to_string(),
                    secs: self.timeouts.settle.as_secs(),
                    last: now.to_string(),
                });
            }
            std::thread::sleep(Duration::from_millis(500));
        }
    }

    fn reset_on(&self, system: &SystemInfo, kind: &ResetKind) -> Result<(), BmcError> {
        let action = format!("reset {kind}");
        if !system.allows(kind) {
            let offered = system.allowed_resets.iter().flatten().map(ResetKind::as_str).collect::<Vec<_>>().join(", ");
            return Err(self.unsupported(&action, &format!("it offers reset types: {offered}")));
        }
        let Some(target) = &system.reset_target else {
            return Err(self.unsupported(&action, "the System has no #ComputerSystem.Reset action"));
        };
        let url = resolve_target(&self.url, target).map_err(|reason| self.malformed(&action, reason))?;
        tracing::info!(bmc = %self.host, reset = %kind, "sending a reset");
        let body = json!({"ResetType": kind.as_str()});
        self.send(Request { method: Method::Post, url: &url, body: Some(&body), if_match: None, action: &action })?;
        Ok(())
    }

    fn system_with_etag(&self) -> Result<(SystemInfo, Option<String>), BmcError> {
        let action = "reading the System";
        let answer = self.send(Request { method: Method::Get, url: &self.url, body: None, if_match: None, action })?;
        let value: Value =
            serde_json::from_str(&answer.body).map_err(|e| self.malformed(action, format!("not JSON: {e}")))?;
        let info = parse_system(&value).map_err(|reason| self.malformed(action, reason))?;
        let etag = answer.etag.or_else(|| value.get("@odata.etag").and_then(Value::as_str).map(String::from));
        Ok((info, etag))
    }

    /// One request, retried as [`Timeouts::attempts`] allows: an idempotent one after
    /// a transport failure or a 5xx; a POST only when its connection never opened
    /// (so the BMC cannot have seen it).
    fn send(&self, request: Request<'_>) -> Result<Answer, BmcError> {
        let attempts = self.timeouts.attempts.max(1);
        let mut attempt = 0;
        loop {
            attempt += 1;
            let (result, retryable) = self.send_once(&request);
            match result {
                Ok(answer) => return Ok(answer),
                Err(e) if retryable && attempt < attempts => {
                    let pause = Duration::from_millis(250 << (attempt - 1));
                    let action = request.action;
                    tracing::debug!(bmc = %self.host, %action, attempt, error = %e, "retrying after {pause:?}");
                    std::thread::sleep(pause);
                }
                Err(e) => return Err(e),
            }
        }
    }

    /// One attempt, and whether a failure may be retried.
    fn send_once(&self, r: &Request<'_>) -> (Result<Answer, BmcError>, bool) {
        let Request { method, url, body, if_match, action } = *r;
        let mut request = self
            .agent
            .request_url(method.as_str(), url)
            .set("Authorization", &self.basic_auth())
            .set("Accept", "application/json")
            .set("OData-Version", "4.0");
        if let Some(etag) = if_match {
            request = request.set("If-Match", etag);
        }
        let sent = match body {
            Some(body) => request.set("Content-Type", "application/json").send_string(&body.to_string()),
            None => request.call(),
        };
        tracing::debug!(bmc = %self.host, method = method.as_str(), path = url.path(), "Redfish request");
        match sent {
            // A 3xx, with redirects off.
            Ok(response) if response.status() >= 300 => {
                (Err(classify(&self.host, action, response.status(), "")), false)
            }
            Ok(response) => {
                let etag = response.header("ETag").map(String::from);
                match response.into_string() {
                    Ok(body) => (Ok(Answer { etag, body }), false),
                    Err(e) => (Err(self.unreachable(action, format!("reading the answer: {e}"))), method.idempotent()),
                }
            }
            Err(ureq::Error::Status(status, response)) => {
                let body = response.into_string().unwrap_or_default();
                let error = classify(&self.host, action, status, &body);
                (Err(error), status >= 500 && method.idempotent())
            }
            Err(ureq::Error::Transport(t)) => {
                // A certificate refused is refused again: no retry.
                if let Some(reason) = tls_refusal(&t) {
                    return (Err(BmcError::Tls { host: self.host.clone(), reason }), false);
                }
                let never_sent = matches!(t.kind(), ureq::ErrorKind::Dns | ureq::ErrorKind::ConnectionFailed);
                let reason = match t.message() {
                    Some(m) => format!("{}: {m}", t.kind()),
                    None => t.kind().to_string(),
                };
                let reason = match std::error::Error::source(&t) {
                    Some(source) => format!("{reason} ({source})"),
                    None => reason,
                };
                (Err(self.unreachable(action, reason)), never_sent || method.idempotent())
            }
        }
    }

    fn basic_auth(&self) -> String {
        let pair = format!("{}:{}", self.credentials.username, self.credentials.password());
        format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(pair))
    }

    fn unreachable(&self, action: &str, reason: String) -> BmcError {
        BmcError::Unreachable { host: self.host.clone(), action: action.into(), reason }
    }

    fn unsupported(&self, action: &str, message: &str) -> BmcError {
        BmcError::Unsupported { host: self.host.clone(), action: action.into(), message: message.into() }
    }

    fn malformed(&self, action: &str, reason: String) -> BmcError {
        BmcError::Malformed { host: self.host.clone(), action: action.into(), reason }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// sushy-tools 2.2.0 (libvirt driver), a domain that is off, trimmed.
    const SUSHY_SYSTEM: &str = r##"{
        "@odata.type": "#ComputerSystem.v1_13_0.ComputerSystem",
        "Id": "36eb2dcb-17b8-4f04-9f77-2de10e3f68c7",
        "Name": "rbvm1",
        "PowerState": "Off",
        "Boot": {
            "BootSourceOverrideEnabled": "Continuous",
            "BootSourceOverrideTarget": "Hdd",
            "BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Cd", "Hdd"]
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/36eb2dcb-17b8-4f04-9f77-2de10e3f68c7/Actions/ComputerSystem.Reset",
                "ResetType@Redfish.AllowableValues": [
                    "On", "ForceOff", "GracefulShutdown", "GracefulRestart", "ForceRestart", "Nmi", "ForceOn"
                ]
            }
        },
        "@odata.id": "/redfish/v1/Systems/36eb2dcb-17b8-4f04-9f77-2de10e3f68c7"
    }"##;

    /// The DMTF's public mockup (Redfish 2023.1, `ComputerSystem` "437XR1138R2"),
    /// trimmed: a system booting, with `PowerCycle` and no `ForceRestart`.
    const DMTF_SYSTEM: &str = r##"{
        "@odata.type": "#ComputerSystem.v1_20_0.ComputerSystem",
        "Id": "437XR1138R2",
        "PowerState": "PoweringOn",
        "Boot": {
            "BootSourceOverrideEnabled": "Once",
            "BootSourceOverrideTarget": "Pxe",
            "BootSourceOverrideMode": "UEFI"
        },
        "Actions": {
            "#ComputerSystem.Reset": {
                "target": "/redfish/v1/Systems/437XR1138R2/Actions/ComputerSystem.Reset",
                "@Redfish.ActionInfo": "/redfish/v1/Systems/437XR1138R2/ResetActionInfo"
            }
        },
        "@odata.etag": "W/\"12345\""
    }"##;

    fn parse(text: &str) -> SystemInfo {
        parse_system(&serde_json::from_str(text).unwrap()).unwrap()
    }

    #[test]
    fn sushy_system_parses() {
        let s = parse(SUSHY_SYSTEM);
        assert_eq!(s.power_state, PowerState::Off);
        assert_eq!(
            s.reset_target.as_deref(),
            Some("/redfish/v1/Systems/36eb2dcb-17b8-4f04-9f77-2de10e3f68c7/Actions/ComputerSystem.Reset")
        );
        let allowed = s.allowed_resets.as_ref().unwrap();
        assert!(allowed.contains(&ResetKind::ForceRestart) && allowed.contains(&ResetKind::Other("Nmi".into())));
        assert!(!s.allows(&ResetKind::PowerCycle));
        let boot = s.boot.unwrap();
        assert_eq!(boot.target, BootTarget::Hdd);
        assert_eq!(boot.enabled, Some(OverrideEnabled::Continuous));
        assert_eq!(boot.allowed_targets, Some(vec![BootTarget::Pxe, BootTarget::Other("Cd".into()), BootTarget::Hdd]));
        assert_eq!(plan(PowerCommand::On, &parse(SUSHY_SYSTEM)), Ok(vec![Step::Reset(ResetKind::On)]));
    }

    #[test]
    fn dmtf_system_parses_without_allowable_values() {
        let s = parse(DMTF_SYSTEM);
        assert_eq!(s.power_state, PowerState::PoweringOn);
        assert_eq!(s.allowed_resets, None, "no list: any standard type may be tried");
        assert!(s.allows(&ResetKind::ForceRestart));
        let boot = s.boot.unwrap();
        assert_eq!((boot.target, boot.enabled), (BootTarget::Pxe, Some(OverrideEnabled::Once)));
        assert_eq!(boot.allowed_targets, None);
    }

    #[test]
    fn odd_systems_are_lenient_but_not_objects_are_malformed() {
        let s = parse(r##"{"PowerState": 3, "Actions": {"#ComputerSystem.Reset": {"target": 7}}}"##);
        assert_eq!(s.power_state, PowerState::Unknown(String::new()));
        assert_eq!(s.reset_target, None);
        assert_eq!(parse(r#"{"PowerState": "Paused"}"#).power_state, PowerState::Unknown("Paused".into()));
        assert!(parse_system(&json!([1, 2])).unwrap_err().contains("an array"));
    }

    #[test]
    fn statuses_map_to_errors_that_say_what_to_do() {
        let e = classify("bmc1:8000", "reset On", 401, r#"{"error":{"message":"Incorrect username or password"}}"#);
        assert!(matches!(e, BmcError::Unauthorized { status: 401, .. }), "{e:?}");
        assert!(e.to_string().contains("bmc1:8000") && e.to_string().contains("credentials"), "{e}");
        assert!(matches!(classify("b", "a", 403, ""), BmcError::Unauthorized { status: 403, .. }));
        assert!(matches!(classify("b", "a", 405, ""), BmcError::Unsupported { .. }));
        assert!(matches!(classify("b", "a", 501, ""), BmcError::Unsupported { .. }));
        assert!(matches!(classify("b", "a", 503, ""), BmcError::BmcFault { status: 503, .. }));
        assert!(matches!(classify("b", "a", 302, ""), BmcError::Refused { status: 302, .. }));
        // sushy's answer to an override target the domain lacks.
        let sushy_500 = r#"{"error": {"code": "Base.1.0.GeneralError",
            "message": "Target libvirt device Usb does not exist in domain 36eb",
            "@Message.ExtendedInfo": [{"@odata.type": "/redfish/v1/$metadata#Message.1.0.0.Message",
            "MessageId": "Base.1.0.GeneralError"}]}}"#;
        let e = classify("b", "a one-time boot override to Usb", 500, sushy_500);
        assert_eq!(
            e.to_string(),
            "BMC b failed a one-time boot override to Usb (HTTP 500): Target libvirt device Usb does not exist \
             in domain 36eb; Base.1.0.GeneralError"
        );
    }

    #[test]
    fn messages_come_from_extended_info_or_the_text_and_are_cut() {
        let body = r#"{"error":{"code":"Base.1.8.GeneralError","message":"A general error has occurred.",
            "@Message.ExtendedInfo":[{"MessageId":"Base.1.8.ActionParameterNotSupported",
            "Message":"The parameter ResetType for the action Reset is not supported on the target resource."}]}}"#;
        let m = redfish_message(body);
        assert!(m.starts_with("A general error has occurred.; The parameter ResetType"), "{m}");
        assert_eq!(
            redfish_message("Missing the BootSourceOverrideTarget\n element"),
            "Missing the BootSourceOverrideTarget element"
        );
        assert_eq!(redfish_message(""), "(no message)");
        let long = "é".repeat(1000);
        let cut = redfish_message(&long);
        assert_eq!(cut.chars().count(), MESSAGE_LIMIT + 1, "the limit and an ellipsis");
    }

    #[test]
    fn action_targets_stay_on_the_bmc() {
        let system = Url::parse("http://10.0.0.5:8000/redfish/v1/Systems/1").unwrap();
        let ok = resolve_target(&system, "/redfish/v1/Systems/1/Actions/ComputerSystem.Reset").unwrap();
        assert_eq!(ok.as_str(), "http://10.0.0.5:8000/redfish/v1/Systems/1/Actions/ComputerSystem.Reset");
        let absolute = resolve_target(&system, "http://10.0.0.5:8000/x").unwrap();
        assert_eq!(absolute.path(), "/x");
        assert!(resolve_target(&system, "http://evil.example/steal").unwrap_err().contains("off the BMC"));
        assert!(resolve_target(&system, "//evil.example/steal").is_err());
        assert!(resolve_target(&system, "http://10.0.0.5:9000/x").is_err());
    }

    #[test]
    fn system_urls_are_checked_and_never_echo_a_password() {
        let (url, host) = parse_system_url("http://10.0.0.5:8000/redfish/v1/Systems/abc").unwrap();
        assert_eq!((url.path(), host.as_str()), ("/redfish/v1/Systems/abc", "10.0.0.5:8000"));
        assert_eq!(parse_system_url("http://bmc/redfish/v1/Systems/1").unwrap().1, "bmc");
        let e = parse_system_url("http://root:hunter2@bmc/redfish/v1/Systems/1").unwrap_err();
        assert!(!format!("{e} {e:?}").contains("hunter2"), "{e:?}");
        assert_eq!(parse_system_url("https://bmc:8443/redfish/v1/Systems/1").unwrap().1, "bmc:8443");
        let pinned_http = Redfish::pinned(
            "http://bmc/redfish/v1/Systems/1",
            Some(&"ab".repeat(32)),
            Credentials::new("admin", "pw"),
            Timeouts::default(),
        );
        assert!(pinned_http.unwrap_err().to_string().contains("pins an https"));
        let bad_pin = Redfish::pinned(
            "https://bmc/redfish/v1/Systems/1",
            Some("ab:cd"),
            Credentials::new("admin", "pw"),
            Timeouts::default(),
        );
        assert!(bad_pin.unwrap_err().to_string().contains("64 hex digits"));
        assert!(parse_system_url("http://bmc/").unwrap_err().to_string().contains("System resource"));
        assert!(parse_system_url("bmc").is_err());
    }

    #[test]
    fn the_client_debug_output_hides_the_password() {
        let c = Redfish::new(
            "http://bmc:8000/redfish/v1/Systems/1",
            Credentials::new("admin", "hunter2"),
            Timeouts::default(),
        )
        .unwrap();
        let shown = format!("{c:?}");
        assert!(!shown.contains("hunter2") && shown.contains("admin"), "{shown}");
        assert!(!c.basic_auth().contains("hunter2"), "only its base64 goes out");
    }

    /// One request as the fake BMC saw it.
    struct Seen {
        method: String,
        path: String,
        /// The request line and headers.
        head: String,
        body: String,
    }

    /// A scripted BMC on loopback: answers each connection with the next of
    /// `answers` (status, body) and records each request.
    struct FakeBmc {
        url: String,
        seen: std::sync::Arc<std::sync::Mutex<Vec<Seen>>>,
    }

    impl FakeBmc {
        fn start(answers: Vec<(u16, String)>) -> FakeBmc {
            use std::io::{BufRead, BufReader, Read, Write};
            let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
            let url = format!("http://{}/redfish/v1/Systems/1", listener.local_addr().unwrap());
            let seen = std::sync::Arc::new(std::sync::Mutex::new(vec![]));
            let log = seen.clone();
            std::thread::spawn(move || {
                for (status, body) in answers {
                    let Ok((stream, _)) = listener.accept() else { return };
                    let mut reader = BufReader::new(stream);
                    let mut head = String::new();
                    let mut length = 0;
                    while reader.read_line(&mut head).is_ok_and(|n| n > 2) {
                        let line = head.lines().last().unwrap_or_default().to_string();
                        if let Some((name, value)) = line.split_once(": ") {
                            if name.eq_ignore_ascii_case("content-length") {
                                length = value.trim().parse().unwrap_or(0);
                            }
                        }
                    }
                    let mut request_body = vec![0; length];
                    let _ = reader.read_exact(&mut request_body);
                    let mut words = head.split_whitespace();
                    let (method, path) = (words.next().unwrap_or_default(), words.next().unwrap_or_default());
                    log.lock().unwrap().push(Seen {
                        method: method.to_string(),
                        path: path.to_string(),
                        head: head.clone(),
                        body: String::from_utf8_lossy(&request_body).into_owned(),
                    });
                    let answer = format!(
                        "HTTP/1.1 {status} X\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                        body.len()
                    );
                    let _ = reader.get_mut().write_all(answer.as_bytes());
                }
            });
            FakeBmc { url, seen }
        }

        fn client(&self) -> Redfish {
            let timeouts = Timeouts { request: Duration::from_secs(5), ..Timeouts::default() };
            Redfish::new(&self.url, Credentials::new("admin", "hunter2"), timeouts).unwrap()
        }

        fn requests(&self) -> Vec<(String, String)> {
            self.seen.lock().unwrap().iter().map(|r| (r.method.clone(), r.path.clone())).collect()
        }
    }

    /// A system that is on, whose reset action is somewhere unusual.
    const ON_SYSTEM: &str = r##"{"PowerState": "On", "Actions": {"#ComputerSystem.Reset": {
        "target": "/custom/reset", "ResetType@Redfish.AllowableValues": ["On", "ForceOff", "ForceRestart"]}}}"##;

    fn get(path: &str) -> (String, String) {
        ("GET".into(), path.into())
    }

    #[test]
    fn gets_are_retried_after_a_bmc_fault_with_basic_auth() {
        let bmc = FakeBmc::start(vec![(503, String::new()), (503, String::new()), (200, ON_SYSTEM.into())]);
        assert_eq!(bmc.client().power_state().unwrap(), PowerState::On);
        assert_eq!(bmc.requests(), vec![get("/redfish/v1/Systems/1"); 3]);
        let expected = format!("Basic {}", base64::engine::general_purpose::STANDARD.encode("admin:hunter2"));
        assert!(bmc
            .seen
            .lock()
            .unwrap()
            .iter()
            .all(|r| r.head.contains(&format!("\r\nAuthorization: {expected}\r\n"))));
    }

    #[test]
    fn a_reset_goes_to_the_advertised_target_and_is_not_retried_once_sent() {
        let bmc = FakeBmc::start(vec![(200, ON_SYSTEM.into()), (503, r#"{"error":{"message":"busy"}}"#.into())]);
        let e = bmc.client().reset(ResetKind::ForceRestart).unwrap_err();
        assert!(matches!(&e, BmcError::BmcFault { status: 503, message, .. } if message == "busy"), "{e:?}");
        assert_eq!(bmc.requests(), vec![get("/redfish/v1/Systems/1"), ("POST".into(), "/custom/reset".into())]);
        assert_eq!(bmc.seen.lock().unwrap()[1].body, r#"{"ResetType":"ForceRestart"}"#);
    }

    #[test]
    fn the_boot_override_is_patched_once_with_the_etag() {
        let system = r#"{"PowerState": "Off", "@odata.etag": "W/\"7\"",
            "Boot": {"BootSourceOverrideTarget@Redfish.AllowableValues": ["Pxe", "Hdd"]}}"#;
        let bmc = FakeBmc::start(vec![(200, system.into()), (204, String::new())]);
        bmc.client().set_boot_once(BootTarget::Pxe).unwrap();
        let seen = bmc.seen.lock().unwrap();
        assert_eq!((seen[1].method.as_str(), seen[1].path.as_str()), ("PATCH", "/redfish/v1/Systems/1"));
        assert!(seen[1].head.contains("If-Match: W/\"7\"\r\n"), "{}", seen[1].head);
        let body: Value = serde_json::from_str(&seen[1].body).unwrap();
        assert_eq!(body, json!({"Boot": {"BootSourceOverrideTarget": "Pxe", "BootSourceOverrideEnabled": "Once"}}));
        drop(seen);
        // A target the BMC does not offer is refused without a PATCH.
        let bmc = FakeBmc::start(vec![(200, system.into())]);
        let e = bmc.client().set_boot_once(BootTarget::Other("Usb".into())).unwrap_err();
        assert!(matches!(e, BmcError::Unsupported { .. }) && e.to_string().contains("Pxe, Hdd"), "{e}");
        assert_eq!(bmc.requests().len(), 1);
    }

    #[test]
    fn unauthorized_is_final_and_unlisted_resets_are_never_sent() {
        let bmc = FakeBmc::start(vec![(401, String::new())]);
        let e = bmc.client().power_state().unwrap_err();
        assert!(matches!(e, BmcError::Unauthorized { status: 401, .. }), "{e:?}");
        assert_eq!(bmc.requests().len(), 1);
        let bmc = FakeBmc::start(vec![(200, ON_SYSTEM.into())]);
        let e = bmc.client().reset(ResetKind::PowerCycle).unwrap_err();
        assert!(e.to_string().contains("On, ForceOff, ForceRestart"), "{e}");
        assert_eq!(bmc.requests(), vec![get("/redfish/v1/Systems/1")]);
    }

    #[test]
    fn a_cycle_of_a_running_system_is_one_force_restart() {
        let bmc = FakeBmc::start(vec![(200, ON_SYSTEM.into()), (204, String::new()), (200, ON_SYSTEM.into())]);
        assert_eq!(bmc.client().power(PowerCommand::Cycle).unwrap(), PowerState::On);
        let posts: Vec<_> = bmc.requests().into_iter().filter(|(m, _)| m == "POST").collect();
        assert_eq!(posts, vec![("POST".into(), "/custom/reset".into())]);
    }

    #[test]
    fn a_body_that_is_not_json_is_malformed() {
        let bmc = FakeBmc::start(vec![(200, "<html>login</html>".into())]);
        let e = bmc.client().power_state().unwrap_err();
        assert!(matches!(e, BmcError::Malformed { .. }), "{e:?}");
    }

    fn arb_json() -> impl Strategy<Value = Value> {
        let leaf = prop_oneof![
            Just(Value::Null),
            any::<bool>().prop_map(Value::Bool),
            any::<i64>().prop_map(|n| json!(n)),
            prop_oneof![
                Just("On".to_string()),
                Just("PowerState".to_string()),
                Just("#ComputerSystem.Reset".to_string()),
                ".*"
            ]
            .prop_map(Value::String),
        ];
        leaf.prop_recursive(4, 64, 6, |inner| {
            let keys = prop_oneof![
                Just("PowerState".to_string()),
                Just("Actions".to_string()),
                Just("#ComputerSystem.Reset".to_string()),
                Just("target".to_string()),
                Just("ResetType@Redfish.AllowableValues".to_string()),
                Just("Boot".to_string()),
                Just("BootSourceOverrideTarget".to_string()),
                Just("error".to_string()),
                Just("message".to_string()),
                Just("@Message.ExtendedInfo".to_string()),
                Just("Message".to_string()),
                "[a-zA-Z@#.]{0,12}",
            ];
            prop_oneof![
                prop::collection::vec(inner.clone(), 0..6).prop_map(Value::Array),
                prop::collection::btree_map(keys, inner, 0..6).prop_map(|m| Value::Object(m.into_iter().collect())),
            ]
        })
    }

    proptest! {
        #[test]
        fn parsers_never_panic_on_arbitrary_json(v in arb_json()) {
            if let Ok(system) = parse_system(&v) {
                for cmd in [PowerCommand::On, PowerCommand::Off, PowerCommand::Cycle, PowerCommand::Status] {
                    let _ = plan(cmd, &system);
                }
            }
            let m = redfish_message(&v.to_string());
            prop_assert!(m.chars().count() <= MESSAGE_LIMIT + 1);
        }

        #[test]
        fn error_mapping_never_panics(status in 100u16..1000, body in ".{0,400}") {
            let e = classify("bmc", "reset On", status, &body);
            prop_assert!(e.to_string().contains("bmc"));
        }
    }
}
