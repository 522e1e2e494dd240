//! ramboot-agent: the stage-one agent, and stage two's "ready" reporter.
//!
//! `ramboot-agent stage1` runs from the stage-one initramfs after the NIC is up. It
//! says hello with the hardware inventory, fetches the node's plan, streams the image
//! into RAM while hashing it, refuses it on any size or hash mismatch, mounts it
//! (squashfs + an overlay with a tmpfs upper layer) at /newroot and installs itself
//! there. The init script then switches root. Every step is reported to the server;
//! any failure is reported as `failed` with the reason and exits non-zero.
//!
//! `ramboot-agent dhcp6 IFACE` runs before that on an IPv6-only boot network: it
//! gets the node an address by DHCPv6 and prints it for the init script ([`dhcp6`]).
//!
//! `ramboot-agent ready` runs in stage two and reports the node ready.
//! `ramboot-agent commands` then stays in stage two: it long-polls the server for
//! what it asks of the node (`GET /boot/v1/command`) and carries it out: a reboot
//! is how a rollout reboots a node that has no BMC.
//!
//! Built static (`-C target-feature=+crt-static`) so it runs on busybox alone.
//!
//! Secrets (the boot token, CHAP secrets) are registered as soon as they are known
//! ([`keep_secret`]) and cut out of everything the agent prints or reports
//! ([`say`], [`Server::report`]): a failed command's error quotes its arguments,
//! and `iscsiadm ... -v <secret>` must not reach the node's event log.

// ureq 2 returns its large `Error` by value; it is only built on failure paths.
#![allow(clippy::result_large_err)]

use ramboot_proto::{
    human_bytes, paths, AgentEvent, BootArgs, Command as ServerCommand, CommandKind, Dmi, FirmwareFacts, Inventory,
    Nic, Plan, PlanIscsi, PlanWait, Progress, ReportedState, MAX_COMMAND_WAIT_SECS,
};
use sha2::{Digest, Sha256};
use std::cell::RefCell;
use std::fs;
use std::io::{Read, Write};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;
use std::time::{Duration, Instant};

const WORK: &str = "/run/ramboot";
const NEWROOT: &str = "/newroot";
/// Where stage one leaves the server coordinates for stage two.
const ENV_FILE: &str = "etc/ramboot/agent.env";
const INSTALLED_AGENT: &str = "usr/sbin/ramboot-agent";

type Result<T> = std::result::Result<T, String>;

mod dhcp6;

const USAGE: &str = "usage: ramboot-agent stage1 | dhcp6 IFACE | ready | commands | iscsi-login | report MESSAGE";

fn main() {
    let mode = std::env::args().nth(1).unwrap_or_default();
    if mode == "dhcp6" {
        // Its stdout is the lease, for the init script: everything else, the
        // failure too, goes to stderr.
        if let Err(e) = dhcp6::command(&std::env::args().skip(2).collect::<Vec<_>>()) {
            dhcp6::log(&format!("FAILED: {e}"));
            std::process::exit(1);
        }
        return;
    }
    let outcome = match mode.as_str() {
        "stage1" => stage1(),
        "ready" => ready(),
        "commands" => commands(),
        "iscsi-login" => iscsi_login(),
        "report" => report(&std::env::args().skip(2).collect::<Vec<_>>().join(" ")),
        _ => Err(USAGE.to_string()),
    };
    if let Err(e) = outcome {
        say(&format!("FAILED: {e}"));
        std::process::exit(1);
    }
}

fn say(msg: &str) {
    println!("ramboot-agent: {}", redacted(msg));
}

/// What stands in for a secret in messages.
const REDACTED: &str = "[redacted]";
/// Shorter values are not treated as secrets: cutting every "ab" out of messages
/// would garble them and protect nothing (tokens are 64 characters, CHAP secrets
/// 12 to 16).
const MIN_SECRET_LEN: usize = 6;

/// Values never to appear in what the agent prints or reports.
static SECRETS: Mutex<Vec<String>> = Mutex::new(Vec::new());

/// The plan's CHAP secrets, both ways.
fn keep_iscsi_secrets(plan: &PlanIscsi) {
    keep_secret(&plan.chap_secret);
    if let Some(secret) = &plan.mutual_chap_secret {
        keep_secret(secret);
    }
}

fn keep_secret(value: &str) {
    if value.len() < MIN_SECRET_LEN {
        return;
    }
    let mut secrets = SECRETS.lock().unwrap_or_else(|e| e.into_inner());
    if !secrets.iter().any(|s| s == value) {
        secrets.push(value.to_string());
        // Longest first: a secret that contains another is cut out whole.
        secrets.sort_by_key(|s| std::cmp::Reverse(s.len()));
    }
}

/// `text` with every registered secret replaced.
fn redacted(text: &str) -> String {
    redact(text, &SECRETS.lock().unwrap_or_else(|e| e.into_inner()))
}

/// `text` with each of `secrets` (longest first) replaced by [`REDACTED`].
fn redact(text: &str, secrets: &[String]) -> String {
    let mut out = text.to_string();
    for secret in secrets.iter().filter(|s| s.len() >= MIN_SECRET_LEN) {
        if out.contains(secret.as_str()) {
            out = out.replace(secret.as_str(), REDACTED);
        }
    }
    out
}

/// The servers an agent may talk to: `ramboot.server` first, then its peers. It
/// sticks with the one that answers, and moves on when one cannot be reached.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Bases {
    all: Vec<String>,
    current: usize,
}

impl Bases {
    /// `server` then `peers`, without trailing slashes, each once.
    fn new(server: &str, peers: &[String]) -> Bases {
        let mut all: Vec<String> = Vec::new();
        for base in std::iter::once(server).chain(peers.iter().map(String::as_str)) {
            let base = base.trim_end_matches('/').to_string();
            if !base.is_empty() && !all.contains(&base) {
                all.push(base);
            }
        }
        Bases { all, current: 0 }
    }

    fn current(&self) -> &str {
        self.all.get(self.current).map_or("", String::as_str)
    }

    fn len(&self) -> usize {
        self.all.len()
    }

    /// Move on to the next server, round the list; `None` when there is no other.
    fn advance(&mut self) -> Option<&str> {
        if self.all.len() < 2 {
            return None;
        }
        self.current = (self.current + 1) % self.all.len();
        Some(self.current())
    }

    /// A URL a server handed out (the plan's image, the overlay) on the server in
    /// use: whichever known server it names is swapped for the current one. Other
    /// URLs are left alone.
    fn rebase(&self, url: &str) -> String {
        for base in &self.all {
            if let Some(rest) = url.strip_prefix(base.as_str()) {
                if rest.is_empty() || rest.starts_with('/') || rest.starts_with('?') {
                    return format!("{}{rest}", self.current());
                }
            }
        }
        url.to_string()
    }

    /// All servers, the current one first, then the others in the order they
    /// would be tried: what stage two starts from.
    fn in_turn(&self) -> Vec<String> {
        (0..self.all.len()).map(|i| self.all[(self.current + i) % self.all.len()].clone()).collect()
    }
}

/// Rounds of tries before a call gives up; a round tries each server once.
const ROUNDS: u32 = 6;

struct Server {
    bases: RefCell<Bases>,
    token: String,
    http: ureq::Agent,
    /// "stage one" or "stage two", in what the agent says about a switch.
    who: &'static str,
    /// The server that stopped answering, until another one answers: then the
    /// switch is reported (the event needs a server to take it).
    unreachable: RefCell<Option<String>>,
}

impl Server {
    fn new(args: &BootArgs, who: &'static str) -> Server {
        let http = ureq::AgentBuilder::new()
            // The server refuses an agent whose protocol it does not speak.
            .user_agent(&ramboot_proto::agent_user_agent(env!("CARGO_PKG_VERSION")))
            .timeout_connect(Duration::from_secs(10))
            .timeout_read(Duration::from_secs(60))
            .build();
        keep_secret(&args.token);
        Server {
            bases: RefCell::new(Bases::new(&args.server, &args.peers)),
            token: args.token.clone(),
            http,
            who,
            unreachable: RefCell::new(None),
        }
    }

    /// The server in use.
    fn base(&self) -> String {
        self.bases.borrow().current().to_string()
    }

    fn auth(&self) -> String {
        format!("Bearer {}", self.token)
    }

    /// POST JSON to `path` on the server in use, like [`Server::send`].
    fn post<T: serde::Serialize>(&self, path: &str, body: &T) -> Result<()> {
        let url = format!("{}{path}", self.base());
        self.send(&url, |url| self.http.post(url).set("Authorization", &self.auth()).send_json(body).map(|_| ()))
    }

    /// An authorised GET of `url` (re-based onto the server in use), like [`Server::send`].
    fn get(&self, url: &str) -> Result<ureq::Response> {
        self.send(url, |url| self.http.get(url).set("Authorization", &self.auth()).call())
    }

    /// Make a call, retrying: a server that cannot be reached (connect refused or
    /// timed out, connection reset) is left for the next one at once; a 5xx or a
    /// round in which no server answered waits a little (the network may still
    /// be settling, and a boot should not fail on one lost packet). Any other HTTP
    /// status is the server's answer, and final.
    fn send<T>(&self, url: &str, call: impl Fn(&str) -> std::result::Result<T, ureq::Error>) -> Result<T> {
        let mut delay = Duration::from_millis(500);
        let mut last = String::new();
        // Not in the `for` head: that would hold the borrow across the loop body.
        let servers = self.bases.borrow().len().max(1);
        for round in 1..=ROUNDS {
            for _ in 0..servers {
                let target = self.bases.borrow().rebase(url);
                match call(&target) {
                    Ok(v) => {
                        self.answered();
                        return Ok(v);
                    }
                    Err(ureq::Error::Status(code, resp)) if code < 500 => {
                        self.answered();
                        let body = resp.into_string().unwrap_or_default();
                        return Err(format!("{target}: HTTP {code}: {}", body.trim()));
                    }
                    Err(e @ ureq::Error::Status(..)) => {
                        last = format!("{target}: {e}");
                        break;
                    }
                    Err(e @ ureq::Error::Transport(_)) => {
                        // ureq's transport errors name the URL already.
                        last = e.to_string();
                        self.connection_lost(&last);
                    }
                }
            }
            if round < ROUNDS {
                say(&format!("{last}; retrying in {delay:?}"));
                std::thread::sleep(delay);
                delay = (delay * 2).min(Duration::from_secs(8));
            }
        }
        Err(last)
    }

    /// The server in use could not be reached: move on to the next, if any.
    fn connection_lost(&self, why: &str) {
        let from = self.base();
        let Some(to) = self.bases.borrow_mut().advance().map(str::to_string) else { return };
        say(&format!("{}: server {from} unreachable ({why}); trying {to}", self.who));
        self.unreachable.borrow_mut().get_or_insert(from);
    }

    /// A server answered: if it is not the one that stopped answering, say so in
    /// the node's events (best effort: the boot goes on either way).
    fn answered(&self) {
        let Some(from) = self.unreachable.borrow_mut().take() else { return };
        let to = self.base();
        if from != to {
            let note = format!("{}: server {from} unreachable, continuing on {to}", self.who);
            say(&note);
            let _ = self.report(None, &note, None);
        }
    }

    /// Every event leaves through here, without secrets.
    fn report(&self, state: Option<ReportedState>, message: &str, progress: Option<Progress>) -> Result<()> {
        self.post(paths::EVENTS, &AgentEvent { state, message: redacted(message), progress })
    }
}

fn stage1() -> Result<()> {
    let cmdline = fs::read_to_string("/proc/cmdline").map_err(|e| format!("/proc/cmdline: {e}"))?;
    let args = BootArgs::from_cmdline(&cmdline).map_err(|key| format!("kernel command line has no {key}="))?;
    let server = Server::new(&args, "stage one");
    say(&format!("node {} talking to {}", args.node, server.base()));
    match load_and_mount(&server, &args) {
        Ok(()) => Ok(()),
        Err(e) => {
            // Best effort: the server may be what failed.
            let _ = server.report(Some(ReportedState::Failed), &e, None);
            Err(e)
        }
    }
}

fn load_and_mount(server: &Server, args: &BootArgs) -> Result<()> {
    let inventory = inventory();
    say(&format!(
        "hello: {} CPUs, {} RAM, NICs {}",
        inventory.cpus,
        human_bytes(inventory.memory_bytes),
        inventory.nics.iter().map(|n| format!("{}={}", n.name, n.mac)).collect::<Vec<_>>().join(",")
    ));
    server.post(paths::HELLO, &inventory)?;
    let plan = wait_for_plan(server)?;
    if let Some(iscsi) = &plan.iscsi {
        keep_iscsi_secrets(iscsi);
    }
    let from = plan.server.as_ref().map_or_else(String::new, |s| {
        format!("; server ramboot {} (protocol {}), agent {}", s.version, s.protocol, env!("CARGO_PKG_VERSION"))
    });
    say(&format!(
        "plan: profile {}, image {} ({}, {}){from}",
        plan.profile,
        plan.image.name,
        human_bytes(plan.image.size),
        plan.image.format
    ));
    if plan.image.format != "squashfs" {
        return Err(format!("image format {:?} is not supported by this stage one", plan.image.format));
    }
    let ram = inventory.memory_bytes;
    if plan.image.size > ram / 2 {
        return Err(format!(
            "image of {} does not fit in half of {} RAM",
            human_bytes(plan.image.size),
            human_bytes(ram)
        ));
    }
    server.report(
        Some(ReportedState::Loading),
        &format!("fetching {} ({})", plan.image.name, human_bytes(plan.image.size)),
        None,
    )?;
    fs::create_dir_all(WORK).map_err(|e| format!("{WORK}: {e}"))?;
    let image_path = format!("{WORK}/image.squashfs");
    let started = Instant::now();
    fetch_verified(server, &plan, &image_path)?;
    let secs = started.elapsed().as_secs_f64().max(0.001);
    let rate = plan.image.size as f64 / secs / (1 << 20) as f64;
    server.report(
        None,
        &format!("image verified: sha256 {} in {secs:.1}s ({rate:.0} MiB/s)", short(&plan.image.sha256)),
        None,
    )?;
    mount_root(&image_path)?;
    if let Some(url) = &plan.overlay_url {
        apply_overlay(server, url)?;
    }
    install_for_stage_two(server, args, &plan)?;
    server.report(
        Some(ReportedState::Handoff),
        &format!("root filesystem mounted at {NEWROOT}; switching root"),
        None,
    )?;
    say("handing off to stage two");
    Ok(())
}

/// A discovery boot has no plan until the node is assigned a profile: the server
/// answers 202 with how long to wait. The server's phase timeouts bound the wait,
/// not the agent: an operator may take a while to assign a new node.
fn wait_for_plan(server: &Server) -> Result<Plan> {
    let url = format!("{}{}", server.base(), paths::PLAN);
    let mut announced = false;
    loop {
        let resp = server.get(&url)?;
        if resp.status() != 202 {
            return resp.into_json().map_err(|e| format!("{url}: bad JSON: {e}"));
        }
        let wait: PlanWait = resp.into_json().map_err(|e| format!("{url}: bad JSON: {e}"))?;
        if !announced {
            say(&format!("waiting for an assignment: {}", wait.reason));
            announced = true;
        }
        std::thread::sleep(Duration::from_secs(wait.retry_after_secs.clamp(1, 300)));
    }
}

/// Lay the node's rendered files over the new root.
fn apply_overlay(server: &Server, url: &str) -> Result<()> {
    let resp = server.get(url)?;
    let archive = format!("{WORK}/overlay.tar");
    let mut file = fs::File::create(&archive).map_err(|e| format!("{archive}: {e}"))?;
    std::io::copy(&mut resp.into_reader().take(64 << 20), &mut file).map_err(|e| format!("{url}: {e}"))?;
    run("tar", &["-x", "-f", &archive, "-C", NEWROOT])?;
    say("overlay applied");
    Ok(())
}

fn short(digest: &str) -> &str {
    &digest[..digest.len().min(12)]
}

/// Stream the image to `dest`, hashing as it arrives; reject size or hash mismatch.
/// A connection lost mid-stream starts the fetch over on the next server.
fn fetch_verified(server: &Server, plan: &Plan, dest: &str) -> Result<()> {
    let mut tries = server.bases.borrow().len();
    loop {
        match fetch_once(server, plan, dest) {
            Err(Fetch::Lost(why)) if tries > 1 => {
                tries -= 1;
                server.connection_lost(&why);
            }
            Err(Fetch::Lost(why) | Fetch::Failed(why)) => return Err(why),
            Ok(()) => return Ok(()),
        }
    }
}

/// Why one fetch of the image ended early.
enum Fetch {
    /// The connection broke: another server may finish it.
    Lost(String),
    Failed(String),
}

fn fetch_once(server: &Server, plan: &Plan, dest: &str) -> std::result::Result<(), Fetch> {
    let url = server.bases.borrow().rebase(&plan.image.url);
    let resp = server.get(&url).map_err(Fetch::Failed)?;
    let mut body = resp.into_reader();
    let mut file = fs::File::create(dest).map_err(|e| Fetch::Failed(format!("{dest}: {e}")))?;
    let mut hasher = Sha256::new();
    let mut buf = vec![0u8; 1 << 20];
    let total = plan.image.size;
    let mut done = 0u64;
    // Report by time, not by percent: a small image makes no noise, a large or slow
    // one shows steady progress.
    let mut last_report = Instant::now();
    loop {
        let n = body.read(&mut buf).map_err(|e| Fetch::Lost(format!("reading {url}: {e}")))?;
        if n == 0 {
            break;
        }
        done += n as u64;
        if done > total {
            return Err(Fetch::Failed(format!("image is larger than the planned {total} bytes")));
        }
        hasher.update(&buf[..n]);
        file.write_all(&buf[..n]).map_err(|e| Fetch::Failed(format!("{dest}: {e} (out of RAM?)")))?;
        if last_report.elapsed() >= Duration::from_secs(2) {
            let pct = done * 100 / total.max(1);
            let text = format!("fetched {pct}% ({} of {})", human_bytes(done), human_bytes(total));
            say(&text);
            // Progress is informative: a lost report must not fail the boot.
            let _ = server.report(None, &text, Some(Progress { done_bytes: done, total_bytes: total }));
            last_report = Instant::now();
        }
    }
    if done != total {
        // A server that died mid-body may end it early rather than reset it.
        return Err(Fetch::Lost(format!("image truncated: got {done} of {total} bytes")));
    }
    let got = hex::encode(hasher.finalize());
    if got != plan.image.sha256 {
        return Err(Fetch::Failed(format!("image hash mismatch: expected sha256 {}, got {got}", plan.image.sha256)));
    }
    file.sync_all().map_err(|e| Fetch::Failed(format!("{dest}: {e}")))?;
    say(&format!("image verified: sha256 {got}"));
    Ok(())
}

fn run(cmd: &str, args: &[&str]) -> Result<()> {
    let out = Command::new(cmd).args(args).output().map_err(|e| format!("{cmd}: {e}"))?;
    if !out.status.success() {
        return Err(format!("{cmd} {}: {}", args.join(" "), String::from_utf8_lossy(&out.stderr).trim()));
    }
    Ok(())
}

/// squashfs (read-only, stays compressed in RAM) under an overlay whose writable
/// layer is tmpfs: the node runs entirely from memory and starts clean every boot.
fn mount_root(image: &str) -> Result<()> {
    let (lower, upper, work) = (format!("{WORK}/lower"), format!("{WORK}/upper"), format!("{WORK}/work"));
    for d in [&lower, &upper, &work, &NEWROOT.to_string()] {
        fs::create_dir_all(d).map_err(|e| format!("{d}: {e}"))?;
    }
    run("mount", &["-t", "squashfs", "-o", "loop,ro", image, &lower])?;
    let opts = format!("lowerdir={lower},upperdir={upper},workdir={work}");
    run("mount", &["-t", "overlay", "overlay", "-o", &opts, NEWROOT])?;
    Ok(())
}

/// Put the agent and its coordinates into the new root so stage two can report.
fn install_for_stage_two(server: &Server, args: &BootArgs, plan: &Plan) -> Result<()> {
    let root = Path::new(NEWROOT);
    let agent_dest = root.join(INSTALLED_AGENT);
    let env_dest = root.join(ENV_FILE);
    for p in [&agent_dest, &env_dest] {
        if let Some(dir) = p.parent() {
            fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
        }
    }
    fs::copy("/proc/self/exe", &agent_dest).map_err(|e| format!("{}: {e}", agent_dest.display()))?;
    set_mode(&agent_dest, 0o755)?;
    // Stage two starts with the server that answered last, the others after it.
    let bases = server.bases.borrow().in_turn();
    let (first, peers) = bases.split_first().map_or(("", &[][..]), |(f, p)| (f.as_str(), p));
    let env = format!(
        "RAMBOOT_SERVER={first}\nRAMBOOT_PEERS={}\nRAMBOOT_NODE={}\nRAMBOOT_TOKEN={}\nRAMBOOT_PROFILE={}\n",
        peers.join(","),
        args.node,
        args.token,
        plan.profile
    );
    fs::write(&env_dest, env).map_err(|e| format!("{}: {e}", env_dest.display()))?;
    set_mode(&env_dest, 0o600)?;
    if let Some(iscsi) = &plan.iscsi {
        // open-iscsi reads the initiator name at start; the plan holds the rest.
        let name = root.join("etc/iscsi/initiatorname.iscsi");
        let plan_file = root.join(ISCSI_PLAN.trim_start_matches('/'));
        for p in [&name, &plan_file] {
            if let Some(dir) = p.parent() {
                fs::create_dir_all(dir).map_err(|e| format!("{}: {e}", dir.display()))?;
            }
        }
        fs::write(&name, format!("InitiatorName={}\n", iscsi.initiator_iqn))
            .map_err(|e| format!("{}: {e}", name.display()))?;
        let json = serde_json::to_string(iscsi).map_err(|e| e.to_string())?;
        fs::write(&plan_file, json).map_err(|e| format!("{}: {e}", plan_file.display()))?;
        set_mode(&plan_file, 0o600)?;
    }
    let hostname = root.join("etc/hostname");
    fs::write(&hostname, format!("{}\n", plan.hostname)).map_err(|e| format!("{}: {e}", hostname.display()))?;
    Ok(())
}

fn set_mode(path: &Path, mode: u32) -> Result<()> {
    use std::os::unix::fs::PermissionsExt;
    fs::set_permissions(path, fs::Permissions::from_mode(mode)).map_err(|e| format!("{}: {e}", path.display()))
}

/// In stage two: the server, node and token stage one left in the new root.
fn stage_two_server() -> Result<Server> {
    let path = format!("/{ENV_FILE}");
    let text = fs::read_to_string(&path).map_err(|e| format!("{path}: {e}"))?;
    let get = |key: &str| {
        text.lines()
            .find_map(|l| l.strip_prefix(key).and_then(|r| r.strip_prefix('=')))
            .map(str::to_string)
            .ok_or_else(|| format!("{path} has no {key}"))
    };
    let args = BootArgs {
        server: get("RAMBOOT_SERVER")?,
        node: get("RAMBOOT_NODE")?,
        token: get("RAMBOOT_TOKEN")?,
        mac: None,
        // Absent in a file an older stage one wrote: no peers.
        peers: get("RAMBOOT_PEERS").map(|v| ramboot_proto::parse_peers(&v)).unwrap_or_default(),
    };
    Ok(Server::new(&args, "stage two"))
}

fn ready() -> Result<()> {
    let server = stage_two_server()?;
    let host = read_trim("/etc/hostname").unwrap_or_default();
    let uptime =
        read_trim("/proc/uptime").and_then(|u| u.split_whitespace().next().map(str::to_string)).unwrap_or_default();
    server.report(Some(ReportedState::Ready), &format!("stage two up: {host}, kernel uptime {uptime}s"), None)?;
    say("reported ready");
    Ok(())
}

/// After a failed poll, the first pause before the next; it doubles up to
/// [`POLL_BACKOFF_MAX`] while polls keep failing (a server that is down, a token
/// the server no longer takes), so the agent never spins.
const POLL_BACKOFF_MIN: Duration = Duration::from_secs(2);
const POLL_BACKOFF_MAX: Duration = Duration::from_secs(60);
/// A 204 that came back sooner than this (a server that did not wait) is
/// followed by a pause of this length.
const POLL_MIN_CYCLE: Duration = Duration::from_secs(2);

/// What one command poll got.
#[derive(Debug, PartialEq, Eq)]
enum Polled {
    Command(CommandKind),
    /// 204: nothing asked; poll again, after `retry_after` if the server said so.
    Nothing {
        retry_after: Option<Duration>,
    },
}

/// The pause before the next poll, and the back-off after it.
fn next_poll(outcome: &std::result::Result<Polled, String>, took: Duration, backoff: Duration) -> (Duration, Duration) {
    match outcome {
        Ok(Polled::Nothing { retry_after: Some(after) }) => (*after, POLL_BACKOFF_MIN),
        Ok(Polled::Nothing { retry_after: None }) if took < POLL_MIN_CYCLE => (POLL_MIN_CYCLE, POLL_BACKOFF_MIN),
        Ok(_) => (Duration::ZERO, POLL_BACKOFF_MIN),
        Err(_) => (backoff, (backoff * 2).min(POLL_BACKOFF_MAX)),
    }
}

/// One long poll of `GET /boot/v1/command` (failing over like every call).
fn poll_command(server: &Server, url: &str) -> Result<Polled> {
    let resp = server.get(url)?;
    match resp.status() {
        200 => {
            let body: ServerCommand = resp.into_json().map_err(|e| format!("{url}: bad JSON: {e}"))?;
            Ok(Polled::Command(body.command))
        }
        204 => {
            let retry_after = resp
                .header("Retry-After")
                .and_then(|v| v.trim().parse::<u64>().ok())
                .map(|secs| Duration::from_secs(secs.clamp(1, 300)));
            Ok(Polled::Nothing { retry_after })
        }
        other => Err(format!("{url}: unexpected HTTP {other}")),
    }
}

/// Stage two, for good: wait for what the server asks of the node and do it.
fn commands() -> Result<()> {
    let server = stage_two_server()?;
    let url = format!("{}{}?wait={MAX_COMMAND_WAIT_SECS}", server.base(), paths::COMMAND);
    say(&format!("waiting for commands from {}", server.base()));
    let mut backoff = POLL_BACKOFF_MIN;
    loop {
        let started = Instant::now();
        let outcome = poll_command(&server, &url);
        match &outcome {
            Ok(Polled::Command(CommandKind::Reboot)) => return reboot_now(&server),
            Ok(Polled::Command(CommandKind::Unknown)) => say("ignoring a command this agent does not know"),
            Ok(Polled::Nothing { .. }) => {}
            Err(e) => say(&format!("command poll failed: {e}; polling again in {backoff:?}")),
        }
        let (pause, next) = next_poll(&outcome, started.elapsed(), backoff);
        backoff = next;
        std::thread::sleep(pause);
    }
}

/// The server asked for a reboot: say so (best effort: the reboot is what the
/// server waits for), flush the page cache, and reboot at once. `reboot -f` is
/// busybox's and systemd's alike; the next boot is a fresh network boot.
fn reboot_now(server: &Server) -> Result<()> {
    let note = "rebooting at the server's request";
    say(note);
    if let Err(e) = server.report(None, note, None) {
        say(&format!("could not report the reboot ({e}); rebooting anyway"));
    }
    // sync(1) rather than sync(2): the agent stays free of unsafe code.
    let _ = Command::new("sync").status();
    run("reboot", &["-f"])?;
    // Still here: the reboot is under way (systemd's) or did not happen.
    std::thread::sleep(Duration::from_secs(60));
    Err("reboot -f returned, and the node is still up".into())
}

/// A line for the node's event log, from a stage-two script.
fn report(message: &str) -> Result<()> {
    if message.trim().is_empty() {
        return Err("usage: ramboot-agent report MESSAGE".into());
    }
    stage_two_server()?.report(None, message, None)
}

/// Log in to the node's iSCSI volumes with open-iscsi, as the plan said, and report
/// each attached device (or why it failed). Then run the operator's hook, if any.
fn iscsi_login() -> Result<()> {
    let server = stage_two_server()?;
    match iscsi_login_inner() {
        Ok(summary) => {
            server.report(None, &summary, None)?;
            say(&summary);
            let hook = Path::new(VOLUMES_HOOK);
            if hook.exists() {
                let status = Command::new(hook).status().map_err(|e| format!("{VOLUMES_HOOK}: {e}"))?;
                if !status.success() {
                    let _ = server.report(None, &format!("{VOLUMES_HOOK} failed ({status})"), None);
                }
            }
            Ok(())
        }
        Err(e) => {
            let _ = server.report(None, &format!("iSCSI login failed: {e}"), None);
            Err(e)
        }
    }
}

const ISCSI_PLAN: &str = "/etc/ramboot/iscsi.json";
const VOLUMES_HOOK: &str = "/etc/ramboot/hooks/volumes-ready";

/// open-iscsi's node settings for the plan: CHAP, and mutual CHAP (the target must
/// prove itself with the account the plan names) when the plan has it.
fn iscsi_settings(plan: &PlanIscsi) -> Vec<(&'static str, &str)> {
    let mut settings = vec![
        ("node.session.auth.authmethod", "CHAP"),
        ("node.session.auth.username", plan.chap_user.as_str()),
        ("node.session.auth.password", plan.chap_secret.as_str()),
    ];
    if let (Some(user), Some(secret)) = (&plan.mutual_chap_user, &plan.mutual_chap_secret) {
        settings.push(("node.session.auth.username_in", user.as_str()));
        settings.push(("node.session.auth.password_in", secret.as_str()));
    }
    settings
}

fn iscsi_login_inner() -> Result<String> {
    let text = fs::read_to_string(ISCSI_PLAN).map_err(|e| format!("{ISCSI_PLAN}: {e}"))?;
    let plan: PlanIscsi = serde_json::from_str(&text).map_err(|e| format!("{ISCSI_PLAN}: {e}"))?;
    keep_iscsi_secrets(&plan);
    let (target, portal) = (plan.target_iqn.as_str(), plan.portal.as_str());
    run("iscsiadm", &["-m", "discovery", "-t", "sendtargets", "-p", portal])?;
    for (name, value) in iscsi_settings(&plan) {
        let args = ["-m", "node", "-T", target, "-p", portal, "-o", "update", "-n", name, "-v", value];
        // The error names the setting, never its value: it may be a secret, and
        // errors reach the server's event log.
        run("iscsiadm", &args).map_err(|_| format!("iscsiadm: could not set {name} for {target}"))?;
    }
    // A node that was killed may still hold a session in the target's eyes; a fresh
    // login replaces it.
    run("iscsiadm", &["-m", "node", "-T", target, "-p", portal, "--login"])?;
    let mut found = vec![];
    for lun in &plan.luns {
        let device = format!("/dev/disk/by-path/ip-{portal}-iscsi-{target}-lun-{}", lun.lun);
        let deadline = Instant::now() + Duration::from_secs(30);
        while !Path::new(&device).exists() {
            if Instant::now() > deadline {
                return Err(format!("logged in, but {device} did not appear"));
            }
            std::thread::sleep(Duration::from_millis(250));
        }
        found.push(format!("LUN {} ({}, {}) at {device}", lun.lun, lun.volume, human_bytes(lun.size_bytes)));
    }
    Ok(format!("iSCSI: logged in to {target}: {}", found.join("; ")))
}

fn read_trim(path: &str) -> Option<String> {
    fs::read_to_string(path).ok().map(|s| s.trim().to_string()).filter(|s| !s.is_empty())
}

fn inventory() -> Inventory {
    let cpuinfo = fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpus = cpuinfo.lines().filter(|l| l.starts_with("processor")).count() as u32;
    let cpu_model = cpuinfo
        .lines()
        .find_map(|l| l.strip_prefix("model name").and_then(|r| r.split_once(':')).map(|(_, v)| v.trim().to_string()));
    let meminfo = fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let memory_bytes = meminfo
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        .unwrap_or(0)
        * 1024;
    let mut nics = vec![];
    if let Ok(entries) = fs::read_dir("/sys/class/net") {
        for e in entries.flatten() {
            let name = e.file_name().to_string_lossy().into_owned();
            let dir = e.path();
            if name == "lo" || !dir.join("device").exists() {
                continue;
            }
            let driver = fs::read_link(dir.join("device/driver"))
                .ok()
                .and_then(|p| p.file_name().map(|f| f.to_string_lossy().into_owned()));
            nics.push(Nic {
                mac: read_trim(&format!("/sys/class/net/{name}/address")).unwrap_or_default(),
                speed_mbps: read_trim(&format!("/sys/class/net/{name}/speed")).and_then(|s| s.parse().ok()),
                driver,
                name,
            });
        }
    }
    nics.sort_by(|a, b| a.name.cmp(&b.name));
    let dmi = |f: &str| read_trim(&format!("/sys/class/dmi/id/{f}"));
    Inventory {
        cpus,
        cpu_model,
        memory_bytes,
        nics,
        dmi: Dmi {
            vendor: dmi("sys_vendor"),
            product: dmi("product_name"),
            serial: dmi("product_serial"),
            uuid: dmi("product_uuid"),
        },
        kernel: read_trim("/proc/sys/kernel/osrelease"),
        firmware: Some(firmware()),
    }
}

/// UEFI's global `SecureBoot` variable (EFI_GLOBAL_VARIABLE's GUID), under the
/// efivarfs stage one's init mounts: four bytes of attributes, then 1 while the
/// firmware enforces signatures.
const SECURE_BOOT_VAR: &str = "/sys/firmware/efi/efivars/SecureBoot-8be4df61-93ca-11d2-aa0d-00e098032b8c";

fn firmware() -> FirmwareFacts {
    let uefi = Path::new("/sys/firmware/efi").is_dir();
    let secure_boot = if uefi {
        match fs::read(SECURE_BOOT_VAR) {
            Ok(value) => value.get(4).map(|b| *b == 1),
            Err(e) => {
                say(&format!("Secure Boot state unknown: reading {SECURE_BOOT_VAR}: {e}"));
                None
            }
        }
    } else {
        None
    };
    let lockdown = read_trim("/sys/kernel/security/lockdown").and_then(|modes| lockdown_mode(&modes));
    FirmwareFacts { uefi, secure_boot, lockdown }
}

/// The selected mode of `/sys/kernel/security/lockdown` (`none [integrity] confidentiality`).
fn lockdown_mode(modes: &str) -> Option<String> {
    modes.split_whitespace().find_map(|m| m.strip_prefix('[')?.strip_suffix(']')).map(str::to_string)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_selected_lockdown_mode_is_read() {
        assert_eq!(lockdown_mode("none [integrity] confidentiality").as_deref(), Some("integrity"));
        assert_eq!(lockdown_mode("[none] integrity confidentiality").as_deref(), Some("none"));
        assert_eq!(lockdown_mode("garbage"), None);
    }

    #[test]
    fn secrets_are_cut_out_of_messages() {
        let secrets = vec!["0123456789abcdef0123".to_string(), "chapsecret12".to_string()];
        let failed = "iscsiadm -m node -T iqn.x:target-1 -p 10.0.0.1:3260 -o update \
                      -n node.session.auth.password -v chapsecret12: iscsiadm: no records found";
        let out = redact(failed, &secrets);
        assert!(!out.contains("chapsecret12"), "{out}");
        assert!(out.contains("-v [redacted]: iscsiadm: no records found"), "{out}");
        assert_eq!(
            redact("token 0123456789abcdef0123 and again 0123456789abcdef0123", &secrets),
            "token [redacted] and again [redacted]"
        );
        assert_eq!(redact("nothing secret here", &secrets), "nothing secret here");
        // Too short to be a secret: never garbles messages.
        assert_eq!(redact("a b c", &["a".to_string()]), "a b c");
    }

    #[test]
    fn a_secret_containing_another_is_cut_out_whole() {
        keep_secret("short1");
        keep_secret("short1-and-longer");
        keep_secret("tiny");
        assert_eq!(redacted("x short1-and-longer y short1 z tiny"), "x [redacted] y [redacted] z tiny");
    }

    fn bases() -> Bases {
        Bases::new("http://10.0.0.1:8080/", &["http://10.0.0.2:8080".into(), "http://10.0.0.1:8080".into()])
    }

    #[test]
    fn bases_start_with_the_server_and_list_each_once() {
        let b = bases();
        assert_eq!(b.all, ["http://10.0.0.1:8080", "http://10.0.0.2:8080"]);
        assert_eq!(b.current(), "http://10.0.0.1:8080");
        let mut alone = Bases::new("http://10.0.0.1:8080", &[]);
        assert_eq!(alone.advance(), None, "no other server: stay");
        assert_eq!(alone.current(), "http://10.0.0.1:8080");
    }

    #[test]
    fn a_switch_sticks_and_goes_round() {
        let mut b = bases();
        assert_eq!(b.advance(), Some("http://10.0.0.2:8080"));
        assert_eq!(b.current(), "http://10.0.0.2:8080", "sticks with the new one");
        assert_eq!(b.in_turn(), ["http://10.0.0.2:8080", "http://10.0.0.1:8080"]);
        assert_eq!(b.advance(), Some("http://10.0.0.1:8080"), "round the list");
    }

    #[test]
    fn urls_the_server_handed_out_follow_the_switch() {
        let mut b = bases();
        let image = "http://10.0.0.1:8080/artifacts/sha256/ab/tiny.squashfs";
        assert_eq!(b.rebase(image), image);
        b.advance();
        assert_eq!(b.rebase(image), "http://10.0.0.2:8080/artifacts/sha256/ab/tiny.squashfs");
        assert_eq!(b.rebase("http://10.0.0.2:8080/boot/v1/overlay"), "http://10.0.0.2:8080/boot/v1/overlay");
        // Not a known server (a port that merely starts the same, another host): untouched.
        assert_eq!(b.rebase("http://10.0.0.1:80801/x"), "http://10.0.0.1:80801/x");
        assert_eq!(b.rebase("http://mirror.example/x"), "http://mirror.example/x");
    }

    #[test]
    fn ipv6_servers_are_bases_like_any_other() {
        let mut b = Bases::new("http://[fd00:213::1]:8080/", &["http://[fd00:213::2]:8080".into()]);
        assert_eq!(b.all, ["http://[fd00:213::1]:8080", "http://[fd00:213::2]:8080"]);
        let image = "http://[fd00:213::1]:8080/artifacts/sha256/ab/tiny.squashfs";
        b.advance();
        assert_eq!(b.rebase(image), "http://[fd00:213::2]:8080/artifacts/sha256/ab/tiny.squashfs");
        // A longer address that merely starts the same is another server.
        assert_eq!(b.rebase("http://[fd00:213::11]:8080/x"), "http://[fd00:213::11]:8080/x");
    }

    /// ureq 2 connects to a bracketed IPv6 literal and names it so in `Host`.
    #[test]
    fn the_http_client_speaks_to_an_ipv6_server() {
        use std::io::BufRead;
        let Ok(listener) = std::net::TcpListener::bind("[::1]:0") else {
            eprintln!("skipping: no IPv6 loopback here");
            return;
        };
        let port = listener.local_addr().unwrap().port();
        let server = std::thread::spawn(move || {
            let (conn, _) = listener.accept().unwrap();
            let mut reader = std::io::BufReader::new(conn);
            let mut head = vec![];
            loop {
                let mut line = String::new();
                reader.read_line(&mut line).unwrap();
                if line.trim().is_empty() {
                    break;
                }
                head.push(line.trim_end().to_string());
            }
            reader
                .get_mut()
                .write_all(b"HTTP/1.1 204 No Content\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
                .unwrap();
            head
        });
        let args = BootArgs {
            server: format!("http://[::1]:{port}/"),
            node: "1".into(),
            token: "t".repeat(64),
            mac: None,
            peers: vec![],
        };
        let agent = Server::new(&args, "test");
        agent.post(paths::HELLO, &serde_json::json!({})).unwrap();
        let head = server.join().unwrap();
        assert_eq!(head[0], "POST /boot/v1/hello HTTP/1.1");
        assert!(head.contains(&format!("Host: [::1]:{port}")), "{head:?}");
    }

    #[test]
    fn polls_back_off_on_errors_and_never_spin() {
        let nothing = |after| Ok(Polled::Nothing { retry_after: after });
        let long = Duration::from_secs(25);
        // A poll that waited its time goes again at once.
        assert_eq!(next_poll(&nothing(None), long, POLL_BACKOFF_MIN), (Duration::ZERO, POLL_BACKOFF_MIN));
        // One that came back at once pauses: as the server says, else a little.
        assert_eq!(next_poll(&nothing(None), Duration::ZERO, POLL_BACKOFF_MIN).0, POLL_MIN_CYCLE);
        assert_eq!(next_poll(&nothing(Some(long)), Duration::ZERO, POLL_BACKOFF_MIN).0, long);
        // Errors double the pause up to the cap; an answer resets it.
        let mut backoff = POLL_BACKOFF_MIN;
        let mut pauses = vec![];
        for _ in 0..8 {
            let (pause, next) = next_poll(&Err("down".into()), Duration::ZERO, backoff);
            pauses.push(pause.as_secs());
            backoff = next;
        }
        assert_eq!(pauses, [2, 4, 8, 16, 32, 60, 60, 60]);
        assert_eq!(next_poll(&nothing(None), long, backoff).1, POLL_BACKOFF_MIN);
    }

    #[test]
    fn mutual_chap_reaches_open_iscsi_only_when_planned() {
        let mut plan = PlanIscsi {
            initiator_iqn: "iqn.2026-11.io.ramboot:node-1".into(),
            portal: "192.0.2.1:3260".into(),
            target_iqn: "iqn.2026-11.io.ramboot:target-1".into(),
            chap_user: "node-1".into(),
            chap_secret: "abcdefghijkl".into(),
            mutual_chap_user: None,
            mutual_chap_secret: None,
            luns: vec![],
        };
        let names = |p: &PlanIscsi| iscsi_settings(p).iter().map(|(n, _)| n.to_string()).collect::<Vec<_>>();
        assert!(!names(&plan).iter().any(|n| n.ends_with("_in")));
        plan.mutual_chap_user = Some("target-1".into());
        plan.mutual_chap_secret = Some("mnopqrstuvwx".into());
        let settings = iscsi_settings(&plan);
        assert!(settings.contains(&("node.session.auth.username_in", "target-1")));
        assert!(settings.contains(&("node.session.auth.password_in", "mnopqrstuvwx")));
    }
}
