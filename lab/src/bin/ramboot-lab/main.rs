//! `ramboot-lab`: a whole netboot on one machine, for users and for CI.
//!
//! It makes a network namespace with a bridge and a tap, runs `ramboot serve` on the
//! bridge, PXE-boots a QEMU VM (TCG, e1000 + iPXE ROM) from it, follows the node
//! through the admin API while printing each phase, then prints the timeline.
//! Everything it starts, it stops: children by PID, the namespace by name, also on
//! Ctrl-C and on failure. With `--failover` it runs two servers on one PostgreSQL
//! database and kills (SIGKILL) the one that served the VM's iPXE script, so the
//! boot must finish on the other. The namespace, bridge, tap, QEMU and tgtd set-up is the
//! lab library's ([`ramboot_lab`]), shared with the integration tests.

use anyhow::{bail, Context, Result};
use clap::Parser;
use ramboot::cli::format_ms;

use ramboot_api::{Event, NodeDetail};
use ramboot_core::node::NodeState;
use ramboot_lab::net::{self, Netns};
use ramboot_lab::process::Proc;
use ramboot_lab::qemu::{self, Console, Nic, PxeVm};
use ramboot_lab::setup::{ensure_images, ensure_packages, link_tree};
use ramboot_lab::tgtd::{self, Tgtd, TgtdOptions};
use std::collections::BTreeMap;
use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::mpsc;
use std::time::{Duration, Instant};
use tokio_util::sync::CancellationToken;

/// Inside the lab namespace only: nothing outside it ever sees these addresses.
const SUBNET_PREFIX: &str = "10.213.0";
/// The IPv6 boot network of `--ipv6`: its prefix, the server's address, the range.
const PREFIX6: &str = "fd00:213::";
const BRIDGE: &str = "rbbr0";
const TAP: &str = "rbtap0";
const HTTP_PORT: u16 = 8080;
/// What a server logs when it hands a node its boot script (`http::boot`).
const SCRIPT_SERVED: &str = "boot started: iPXE script served";
/// What iPXE prints on the VM's console once it runs that script (`templates/boot.ipxe`).
const SCRIPT_RUNNING: &str = " is booting profile ";

/// One `ramboot serve` of the lab: its address, data dir, config and logs.
#[derive(Debug, Clone)]
struct LabServer {
    /// "a" or "b", for messages.
    name: &'static str,
    ip: String,
    data: PathBuf,
    config: PathBuf,
    /// Its stdout.
    out: PathBuf,
    /// Its stderr: tracing's log.
    log: PathBuf,
}

impl LabServer {
    /// Server `a` keeps the single-server file names (`data`, `ramboot.yaml`,
    /// `server.log`, `server.err`): tests and users know them.
    fn new(dir: &Path, name: &'static str, host: u8) -> LabServer {
        let suffix = if name == "a" { String::new() } else { format!("-{name}") };
        LabServer {
            name,
            ip: format!("{SUBNET_PREFIX}.{host}"),
            data: dir.join(format!("data{suffix}")),
            config: dir.join(format!("ramboot{suffix}.yaml")),
            out: dir.join(format!("server{suffix}.log")),
            log: dir.join(format!("server{suffix}.err")),
        }
    }

    fn base(&self) -> String {
        format!("http://{}:{HTTP_PORT}", self.ip)
    }
}

/// What a lab server's `ramboot.yaml` says beyond the common part: where it is,
/// its database and peers. Alone, it listens on every address of the namespace;
/// beside a peer in the same namespace, each listens on its own (HTTP and TFTP
/// cannot share a port; DHCP's sockets can, see `dhcp::io::bind`).
fn server_config(
    server: &LabServer,
    peers: &[&LabServer],
    opts: &LabOptions,
    paths: (&Path, &Path),
    profile: &str,
) -> String {
    let (ip, (profiles, ipxe)) = (&server.ip, paths);
    let listen = if peers.is_empty() { "0.0.0.0" } else { ip.as_str() };
    // --ipv6: no DHCPv4 for nodes (the IPv4 address stays the operator's way in,
    // for the admin API), DHCPv6 and router advertisements on the bridge.
    let dhcp = if opts.ipv6 {
        format!(
            "dhcp:\n  ipv4: false\ndhcp6:\n  server_address: {PREFIX6}1\n  prefix: {PREFIX6}/64\n  \
             range: [{PREFIX6}100, {PREFIX6}1ff]\n"
        )
    } else {
        format!(
            "dhcp:\n  subnet: {SUBNET_PREFIX}.0/24\n  range: [{SUBNET_PREFIX}.100, {SUBNET_PREFIX}.199]\n  \
             router: {ip}\nipv6_ra: true\n"
        )
    };
    let mut text = format!(
        "# Written by `ramboot-lab`: the lab's own network namespace and paths.\n\
         interface: {BRIDGE}\nserver_address: {ip}\nhttp:\n  listen: {listen}:{HTTP_PORT}\n{dhcp}\
         paths:\n  profiles: {}\n  ipxe: {}\n  data: {}\n{}",
        profiles.display(),
        ipxe.display(),
        server.data.display(),
        if opts.discover { String::new() } else { format!("default_profile: {profile}\n") }
    );
    if let Some(url) = &opts.database {
        text.push_str(&format!("database: \"{url}\"\n"));
    }
    if !peers.is_empty() {
        let urls: Vec<String> = peers.iter().map(|p| format!("\"{}\"", p.base())).collect();
        text.push_str(&format!("tftp:\n  listen: {ip}:69\ncluster:\n  peers: [{}]\n", urls.join(", ")));
    }
    text
}

/// `ramboot-lab`'s options.
#[derive(Debug, Clone, Parser)]
#[command(name = "ramboot-lab", version, about = "Boot a QEMU VM through ramboot inside a private network namespace")]
pub struct LabOptions {
    /// Exit 0 once the node is ready (non-zero on failure or timeout).
    #[arg(long)]
    pub once: bool,
    #[arg(long, default_value = "tiny")]
    pub profile: String,
    /// Working directory: data, caches, logs.
    #[arg(long, default_value = ".lab")]
    pub dir: PathBuf,
    /// The source checkout: `images/` recipes, `profiles/`, `ipxe/`, the agent crate.
    #[arg(long, default_value_os_t = ramboot_lab::bins::repo())]
    pub repo: PathBuf,
    /// The `ramboot` server binary to run (default: built from the checkout with
    /// cargo, in this tool's profile).
    #[arg(long)]
    pub ramboot: Option<PathBuf>,
    /// Seconds to wait for each boot to become ready.
    #[arg(long = "timeout", default_value_t = 300)]
    pub timeout_secs: u64,
    /// Boot with OVMF (UEFI) instead of SeaBIOS.
    #[arg(long)]
    pub uefi: bool,
    /// UEFI HTTP Boot: OVMF's own HTTP Boot client (a NIC without an iPXE ROM,
    /// the firmware's PXE turned off) fetches iPXE by URL from ramboot's HTTP
    /// server instead of over TFTP. Implies --uefi.
    #[arg(long)]
    pub http_boot: bool,
    /// Secure Boot: OVMF's Secure Boot build with Microsoft's keys enrolled,
    /// enforcing. The node boots the signed chain (Debian's shim, GRUB and
    /// kernel) through the firmware's own PXE (or HTTP Boot with --http-boot).
    /// Implies --uefi.
    #[arg(long)]
    pub secure_boot: bool,
    /// The boot chain the lab's profile names (default: `signed` with
    /// --secure-boot, else the config's `ipxe`). `--secure-boot --boot-chain ipxe`
    /// shows the firmware refusing the unsigned iPXE.
    #[arg(long, value_parser = ["ipxe", "signed"])]
    pub boot_chain: Option<String>,
    /// Boot an arm64 node: QEMU's `virt` machine with AAVMF under TCG (slow: a few
    /// minutes), stage one and the image built for arm64 (`<image>-arm64`), the
    /// agent for aarch64-unknown-linux-musl. Debian ships no arm64 iPXE, so the
    /// node boots the signed chain (shimaa64, GRUB, the arm64 kernel).
    #[arg(long, value_parser = ["arm64"], conflicts_with_all = ["secure_boot", "http_boot", "uefi", "iscsi", "failover"])]
    pub arch: Option<String>,
    /// An IPv6-only boot network: ramboot answers no DHCPv4 and serves DHCPv6 and
    /// router advertisements for fd00:213::/64. The VM (UEFI, e1000 with QEMU's
    /// iPXE ROM, which speaks IPv6) takes its address from DHCPv6, fetches the
    /// script, kernel and initrd over HTTP on IPv6, and stage one brings IPv6 up
    /// with `ramboot-agent dhcp6`. Implies --uefi.
    #[arg(long, conflicts_with_all = ["arch", "secure_boot", "http_boot", "iscsi", "failover"])]
    pub ipv6: bool,
    #[arg(long, default_value_t = 512)]
    pub memory_mb: u32,
    /// Rebuild the images even if they are up to date.
    #[arg(long)]
    pub rebuild: bool,
    /// Write the node's final state and events (as the admin API returned them) here.
    #[arg(long)]
    pub report: Option<PathBuf>,
    /// Boot the VM this many times (it is reset after each ready boot).
    #[arg(long, default_value_t = 1)]
    pub boots: u32,
    /// No default profile: the node boots into discovery and waits for an operator
    /// to assign it one (`ramboot nodes assign`).
    #[arg(long)]
    pub discover: bool,
    /// Run a tgtd in the namespace and give the VM a 64 MiB iSCSI volume.
    #[arg(long)]
    pub iscsi: bool,
    /// With --boots: kill QEMU (SIGKILL, a crashed hypervisor) between boots instead of resetting it.
    #[arg(long)]
    pub crash: bool,
    /// Profiles directory (default: the checkout's `profiles/`).
    #[arg(long)]
    pub profiles: Option<PathBuf>,
    /// The servers' database, `postgres:///DB?host=/var/run/postgresql&user=U`
    /// (the password from PGPASSWORD; the unix socket is reachable from the lab's
    /// namespace). Default: a fresh SQLite file in the lab's data dir.
    #[arg(long)]
    pub database: Option<String>,
    /// Run a second server (10.213.0.2, its own data dir holding the same images)
    /// on the same bridge and --database, each the other's `cluster.peers`. Once
    /// one of them has served the VM's iPXE script, kill it (SIGKILL) and follow
    /// the boot to the end on the other.
    #[arg(long, requires = "database", conflicts_with_all = ["iscsi", "crash", "discover"])]
    pub failover: bool,
}

impl LabOptions {
    fn timeout(&self) -> Duration {
        Duration::from_secs(self.timeout_secs)
    }

    /// OVMF rather than SeaBIOS (HTTP Boot is UEFI's).
    fn uefi(&self) -> bool {
        self.uefi || self.http_boot || self.secure_boot || self.arch.is_some() || self.ipv6
    }
}

/// HTTP GETs performed from inside the namespace: a dedicated thread joins it (a
/// thread's network namespace is its own), so the rest of the process stays outside.
/// A request to run in the namespace: method, URL, bearer token, JSON body, where to
/// send the answer's body.
type NetnsRequest =
    (&'static str, String, Option<String>, Option<String>, tokio::sync::oneshot::Sender<Result<String, String>>);

struct NetnsHttp {
    requests: mpsc::Sender<NetnsRequest>,
    /// The admin API token, once the server has written it.
    token: std::sync::Mutex<Option<String>>,
}

impl NetnsHttp {
    fn start(netns: &str) -> Result<NetnsHttp> {
        let file = std::fs::File::open(format!("/run/netns/{netns}")).context("opening the lab namespace")?;
        let (tx, rx) = mpsc::channel::<NetnsRequest>();
        let (ready_tx, ready_rx) = mpsc::channel();
        std::thread::Builder::new().name("lab-netns-http".into()).spawn(move || {
            let joined = nix::sched::setns(&file, nix::sched::CloneFlags::CLONE_NEWNET).map_err(|e| e.to_string());
            let ok = joined.is_ok();
            let _ = ready_tx.send(joined);
            if !ok {
                return;
            }
            let agent = ureq::AgentBuilder::new().timeout(Duration::from_secs(5)).build();
            for (method, url, token, body, reply) in rx {
                let mut request = agent.request(method, &url);
                if let Some(token) = token {
                    request = request.set("Authorization", &format!("Bearer {token}"));
                }
                let sent = match body {
                    Some(body) => request.set("Content-Type", "application/json").send_string(&body),
                    None => request.call(),
                };
                let result = match sent {
                    Ok(r) => r.into_string().map_err(|e| e.to_string()),
                    Err(e) => Err(e.to_string()),
                };
                let _ = reply.send(result);
            }
        })?;
        ready_rx.recv().context("namespace thread died")?.map_err(|e| anyhow::anyhow!("joining the namespace: {e}"))?;
        Ok(NetnsHttp { requests: tx, token: std::sync::Mutex::new(None) })
    }

    async fn get(&self, url: String) -> Result<String> {
        self.send("GET", url, None).await
    }

    async fn post(&self, url: String, body: serde_json::Value) -> Result<String> {
        self.send("POST", url, Some(body.to_string())).await
    }

    async fn send(&self, method: &'static str, url: String, body: Option<String>) -> Result<String> {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let token = self.token.lock().map(|t| t.clone()).unwrap_or(None);
        self.requests.send((method, url, token, body, tx)).map_err(|_| anyhow::anyhow!("namespace thread gone"))?;
        rx.await.context("namespace thread gone")?.map_err(|e| anyhow::anyhow!(e))
    }
}

/// A token cancelled by the first SIGINT or SIGTERM.
fn interrupt_token() -> Result<CancellationToken> {
    use tokio::signal::unix::{signal, SignalKind};
    let token = CancellationToken::new();
    let (mut int, mut term) = (signal(SignalKind::interrupt())?, signal(SignalKind::terminate())?);
    let cancel = token.clone();
    tokio::spawn(async move {
        tokio::select! {
            _ = int.recv() => {},
            _ = term.recv() => {},
        }
        eprintln!("lab: interrupted; stopping the VM and the server, removing the namespace");
        cancel.cancel();
    });
    Ok(token)
}

/// How a lab boot ended.
#[derive(Debug)]
enum Outcome {
    Ready,
    Failed(String),
    TimedOut,
    VmExited(String),
    Interrupted,
}

fn main() -> Result<()> {
    let opts = LabOptions::parse();
    tokio::runtime::Runtime::new()?.block_on(run(opts))
}

async fn run(opts: LabOptions) -> Result<()> {
    // Handlers first: from here on SIGINT/SIGTERM only cancel, so every guard below
    // (children, namespace) gets to clean up.
    let interrupted = interrupt_token()?;
    if !nix::unistd::geteuid().is_root() {
        bail!("ramboot-lab needs root (network namespaces, tap devices, DHCP port 67)");
    }
    ensure_packages()?;
    if opts.arch.is_some() {
        ramboot_lab::setup::ensure_arm64()?;
    }
    let dir = std::path::absolute(&opts.dir)?;
    let repo = std::path::absolute(&opts.repo)?;
    let (data, cache) = (dir.join("data"), dir.join("cache"));
    std::fs::create_dir_all(&data)?;
    let repo_profiles =
        opts.profiles.clone().map(std::path::absolute).transpose()?.unwrap_or_else(|| repo.join("profiles"));
    let profiles =
        ramboot::profiles::load_dir(&repo_profiles, &ramboot::profiles::Context::for_dir(&repo_profiles, None))
            .map_err(|e| anyhow::anyhow!("{e}"))?;
    let profile = profiles
        .get(&opts.profile)
        .with_context(|| format!("no profile {:?} in {}/profiles", opts.profile, repo.display()))?
        .clone();
    {
        let (repo, data, cache, profile, rebuild, arch) =
            (repo.clone(), data.clone(), cache.clone(), profile.clone(), opts.rebuild, opts.arch.clone());
        tokio::task::spawn_blocking(move || ensure_images(&repo, &data, &cache, &profile, rebuild, arch.as_deref()))
            .await??;
    }
    let ramboot = match &opts.ramboot {
        Some(path) => std::path::absolute(path)?,
        None => tokio::task::spawn_blocking(|| ramboot_lab::bins::workspace().map(|b| b.ramboot.clone())).await??,
    };
    // Node state is per lab run (images stay cached): each run's timeline is its own.
    // A --database is the caller's: it is used as it is.
    for f in ["ramboot.db", "ramboot.db-wal", "ramboot.db-shm"].iter().filter(|_| opts.database.is_none()) {
        match std::fs::remove_file(data.join(f)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(e).context("resetting the lab database"),
            _ => {}
        }
    }
    // The lab serves only the profile it boots (others may name images not built here),
    // from its own directory, which tests may edit live.
    let lab_profiles = dir.join("profiles");
    if lab_profiles.exists() {
        std::fs::remove_dir_all(&lab_profiles)?;
    }
    std::fs::create_dir_all(&lab_profiles)?;
    let (_, profile_file) = profiles.iter().find(|(p, _)| p.name == profile.name).context("profile file")?;
    let lab_profile = lab_profiles.join(profile_file.file_name().unwrap_or_default());
    std::fs::copy(profile_file, &lab_profile)?;
    let chain = opts.boot_chain.as_deref().or((opts.secure_boot || opts.arch.is_some()).then_some("signed"));
    if let Some(arch) = &opts.arch {
        // The same profile for an arm64 node: its images, its serial console (the
        // PL011 is ttyAMA0), the signed chain. JSON is YAML.
        let mut adapted = profile.clone();
        adapted.stage1 = format!("{}-{arch}", profile.stage1);
        adapted.image = format!("{}-{arch}", profile.image);
        for a in &mut adapted.kernel_args {
            *a = a.replace("ttyS0", "ttyAMA0");
        }
        adapted.boot_chain = Some(ramboot_core::profile::BootChain::Signed);
        std::fs::write(&lab_profile, serde_json::to_string_pretty(&adapted)?)?;
    } else if let Some(chain) = chain {
        // The profile chooses the chain: with `signed`, DHCP hands its nodes shim.
        let mut file = std::fs::OpenOptions::new().append(true).open(&lab_profile)?;
        std::io::Write::write_all(&mut file, format!("\n# Written by ramboot-lab.\nboot_chain: {chain}\n").as_bytes())?;
    }
    let templates = repo_profiles.join("templates");
    if templates.is_dir() {
        std::fs::create_dir_all(lab_profiles.join("templates"))?;
        for entry in std::fs::read_dir(&templates)? {
            let path = entry?.path();
            if path.is_file() {
                std::fs::copy(&path, lab_profiles.join("templates").join(path.file_name().unwrap_or_default()))?;
            }
        }
    }
    let ipxe_dir = dir.join("ipxe");
    let mut fetch = std::process::Command::new("bash");
    fetch.arg(repo.join("ipxe/fetch.sh")).arg(&ipxe_dir);
    if chain == Some("signed") {
        // This run boots the signed chain: its binaries are not optional.
        fetch.env("SIGNED", "1");
    }
    if let Some(arch) = &opts.arch {
        fetch.env("ARCHES", format!("amd64 {arch}"));
    }
    run_checked(&mut fetch, "ipxe/fetch.sh")?;

    let mut servers = vec![LabServer::new(&dir, "a", 1)];
    if opts.failover {
        let b = LabServer::new(&dir, "b", 2);
        // Its own copy of the images (a shared filesystem is not what is tested).
        link_tree(&data.join("images"), &b.data.join("images"))?;
        servers.push(b);
    }
    for server in &servers {
        let peers: Vec<&LabServer> = servers.iter().filter(|p| p.ip != server.ip).collect();
        let text = server_config(server, &peers, &opts, (&lab_profiles, &ipxe_dir), &profile.name);
        std::fs::write(&server.config, text).with_context(|| format!("writing {}", server.config.display()))?;
    }
    let server_ip = servers[0].ip.clone();
    let config_path = servers[0].config.clone();
    let tgt_control = tgtd::control_port();
    if opts.iscsi {
        // Fresh volumes per lab run, like the database: a run's data is its own.
        let volumes = data.join("volumes");
        if volumes.exists() {
            std::fs::remove_dir_all(&volumes)?;
        }
        let mut config = std::fs::OpenOptions::new().append(true).open(&config_path)?;
        std::io::Write::write_all(
            &mut config,
            format!("iscsi:\n  portal: {server_ip}:3260\n  tgt_control_port: {tgt_control}\n").as_bytes(),
        )?;
    }
    if opts.discover {
        println!(
            "lab: discovery mode: the node will wait for an assignment, e.g.\n  \
             ip netns exec rblab{} ramboot nodes assign 52:54:00:72:62:01 {} --server http://{SUBNET_PREFIX}.1:{HTTP_PORT} \
             --token $(cat {})",
            std::process::id(),
            profile.name,
            ramboot::http::auth::admin_token_path(&data).display()
        );
    }

    let netns_name = format!("rblab{}", std::process::id());
    let mut addresses: Vec<String> = servers.iter().map(|s| format!("{}/24", s.ip)).collect();
    if opts.ipv6 {
        addresses.push(format!("{PREFIX6}1/64"));
    }
    println!("lab: network namespace {netns_name}: bridge {BRIDGE} {}, tap {TAP}", addresses.join(" "));
    let netns = Netns::create(&netns_name)?;
    net::bridge_with_tap(&netns_name, BRIDGE, TAP, &addresses)?;
    let lab = Lab { opts: &opts, dir: &dir, netns: &netns_name, ramboot: &ramboot, tgt_control, servers: &servers };
    let result = lab.run(&interrupted).await;
    drop(netns);
    println!("lab: cleaned up namespace {netns_name}");
    result
}

fn run_checked(cmd: &mut std::process::Command, what: &str) -> Result<()> {
    let status = cmd.status().with_context(|| format!("running {what}"))?;
    if !status.success() {
        bail!("{what} failed ({status})");
    }
    Ok(())
}

/// One lab run inside its namespace: what every step needs.
struct Lab<'a> {
    opts: &'a LabOptions,
    dir: &'a Path,
    netns: &'a str,
    /// The `ramboot` server binary.
    ramboot: &'a Path,
    tgt_control: u16,
    /// The first is the one operators talk to; with `--failover` there are two.
    servers: &'a [LabServer],
}

/// How long a stopped server or VM gets between SIGTERM and SIGKILL.
const STOP_GRACE: Duration = Duration::from_secs(8);

impl Lab<'_> {
    async fn run(&self, interrupted: &CancellationToken) -> Result<()> {
        let (opts, dir) = (self.opts, self.dir);
        let console_log = dir.join("console.log");
        let http = NetnsHttp::start(self.netns)?;
        // The first server writes the admin token on its first start; the others
        // share its database, and with it that token.
        let token = ramboot::http::auth::admin_token_path(&self.servers[0].data);
        let mut procs: Vec<Option<Proc>> = Vec::new();
        for server in self.servers {
            procs.push(Some(self.start_server(server)?));
            let server_base = server.base();
            tokio::select! {
                r = wait_for_server(&http, &server_base, &server.log, &token) => r?,
                // Dropping `procs` stops the servers.
                _ = interrupted.cancelled() => bail!("interrupted"),
            }
        }
        let server_ip = self.servers[0].ip.as_str();
        let mut base = self.servers[0].base();

        let mac = LAB_MAC;
        let tgtd = if opts.iscsi { Some(self.start_tgtd(server_ip)?) } else { None };
        register_lab_node(&http, &base).await?;
        if opts.iscsi {
            attach_lab_volume(&http, &base).await?;
        }
        let monitor = dir.join("qemu.monitor");
        if opts.arch.is_some() {
            qemu::fresh_arm64_vars(&dir.join("OVMF_VARS.fd"))?;
        } else if opts.uefi() {
            qemu::fresh_vars(&dir.join("OVMF_VARS.fd"), opts.secure_boot)?;
        }
        let started = Instant::now();
        let mut qemu = self.power_on(&console_log, false)?;
        let mut progress = Follow::default();
        let deadline = started + opts.timeout() * opts.boots.max(1);
        let mut failover = None;
        if opts.failover {
            let killed = self.kill_script_server(&mut procs, &mut qemu, deadline, interrupted).await?;
            let survivor = (killed + 1) % self.servers.len();
            base = self.servers[survivor].base();
            println!("lab: following the boot on server {} ({base})", self.servers[survivor].name);
            failover = Some((killed, survivor));
        }
        let mut outcome = Outcome::TimedOut;
        for n in 1..=opts.boots.max(1) {
            let (result, boot) =
                follow(&http, &base, mac, started, deadline, &mut qemu, &mut progress, interrupted).await;
            let detail = http.get(format!("{base}/api/v1/nodes/{mac}")).await.ok();
            if let Some(detail) = detail.and_then(|body| serde_json::from_str::<NodeDetail>(&body).ok()) {
                print_timeline(&detail.events, boot);
            }
            outcome = result;
            if !matches!(outcome, Outcome::Ready) || n == opts.boots {
                break;
            }
            if opts.crash {
                println!(
                    "lab: boot {n} of {} is ready; killing QEMU (SIGKILL, a hypervisor crash) and powering on again",
                    opts.boots
                );
                qemu.kill();
                qemu = self.power_on(&console_log, true)?;
            } else {
                println!("lab: boot {n} of {} is ready; resetting the VM for the next boot", opts.boots);
                qemu::reset(&monitor).await?;
            }
        }
        if let (Some(path), Some(body)) = (&opts.report, http.get(format!("{base}/api/v1/nodes/{mac}")).await.ok()) {
            let body = match failover {
                Some((killed, survivor)) => self.failover_report(&body, killed, survivor)?,
                None => body,
            };
            std::fs::write(path, body).with_context(|| format!("writing {}", path.display()))?;
        }
        let outcome = match outcome {
            Outcome::Ready if !opts.once => {
                println!("lab: node is ready. The VM keeps running; press Ctrl-C to stop it and clean up.");
                interrupted.cancelled().await;
                Outcome::Ready
            }
            other => other,
        };
        qemu.stop(STOP_GRACE);
        drop(tgtd);
        for server in procs.into_iter().flatten() {
            server.stop(STOP_GRACE);
        }
        let _ = std::fs::remove_file(&monitor);
        match outcome {
            Outcome::Ready => Ok(()),
            Outcome::Failed(reason) => {
                print_tail(&console_log);
                bail!("node failed: {reason}")
            }
            Outcome::TimedOut => {
                print_tail(&console_log);
                bail!("node not ready after {:?}", opts.timeout())
            }
            Outcome::VmExited(status) => {
                print_tail(&console_log);
                bail!("the VM exited before the node was ready ({status})")
            }
            Outcome::Interrupted => bail!("interrupted"),
        }
    }

    /// Start `ramboot serve` with `server`'s config, in the lab's namespace.
    fn start_server(&self, server: &LabServer) -> Result<Proc> {
        let program: Vec<OsString> =
            vec![self.ramboot.into(), "serve".into(), "--config".into(), server.config.clone().into()];
        let child = net::in_ns(self.netns, &program)
            .env("RUST_LOG", std::env::var("RUST_LOG").unwrap_or_else(|_| "info".into()))
            .stdin(Stdio::null())
            .stdout(std::fs::File::create(&server.out)?)
            .stderr(std::fs::File::create(&server.log)?)
            .spawn()
            .with_context(|| format!("starting ramboot serve ({})", server.config.display()))?;
        println!("lab: ramboot serve {} started on {} (log: {})", server.name, server.base(), server.log.display());
        Ok(Proc::new(format!("ramboot serve {}", server.name), child))
    }

    /// Wait until the VM runs its iPXE script (its console says so: the script has
    /// arrived whole), then kill the server that served it (either may answer the
    /// VM's DHCP first; its log says which) with SIGKILL, by PID: a crash, not a
    /// shutdown. Returns its index.
    async fn kill_script_server(
        &self,
        procs: &mut [Option<Proc>],
        qemu: &mut Proc,
        deadline: Instant,
        interrupted: &CancellationToken,
    ) -> Result<usize> {
        while Instant::now() < deadline {
            if let Some(status) = qemu.try_wait() {
                bail!("the VM exited before any server served its iPXE script ({status})");
            }
            let running = ramboot_lab::logs::log_text(&self.dir.join("console.log")).contains(SCRIPT_RUNNING);
            let served = self.servers.iter().position(|s| ramboot_lab::logs::log_text(&s.log).contains(SCRIPT_SERVED));
            if let (true, Some(i)) = (running, served) {
                let proc = procs[i].take().context("the script's server is already stopped")?;
                let pid = proc.pid();
                let status = proc.kill();
                let server = &self.servers[i];
                println!(
                    "lab: server {} ({}) served the iPXE script; killed it (SIGKILL, pid {pid}): {}",
                    server.name,
                    server.base(),
                    status.map_or_else(|| "not reaped".to_string(), |s| s.to_string())
                );
                return Ok(i);
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
                _ = interrupted.cancelled() => bail!("interrupted"),
            }
        }
        bail!("no server served the VM's iPXE script within {:?}", self.opts.timeout())
    }

    /// The node's detail with what `--failover` did: which server served the
    /// script (and was killed) and which one logged the node's `ready`.
    fn failover_report(&self, body: &str, killed: usize, survivor: usize) -> Result<String> {
        let mut detail: serde_json::Value = serde_json::from_str(body).context("the node's detail")?;
        let ready_on: Vec<String> = self.servers.iter().filter(|s| logged_ready(&s.log)).map(LabServer::base).collect();
        detail["failover"] = serde_json::json!({
            "script_server": self.servers[killed].base(),
            "killed": self.servers[killed].base(),
            "survivor": self.servers[survivor].base(),
            "ready_logged_by": ready_on,
            "logs": self.servers.iter().map(|s| (s.base(), s.log.display().to_string())).collect::<BTreeMap<_, _>>(),
        });
        Ok(serde_json::to_string_pretty(&detail)?)
    }

    /// Power the VM on: SeaBIOS or OVMF, e1000 with QEMU's iPXE ROM (or, for HTTP
    /// Boot, virtio-net driven by the firmware), network boot.
    fn power_on(&self, console_log: &Path, again: bool) -> Result<Proc> {
        let (opts, dir) = (self.opts, self.dir);
        let vm = PxeVm {
            tap: TAP.into(),
            mac: LAB_MAC.into(),
            memory_mb: opts.memory_mb,
            uefi_vars: opts.uefi().then(|| dir.join("OVMF_VARS.fd")),
            secure_boot: opts.secure_boot,
            aarch64: opts.arch.is_some(),
            // Secure Boot firmware refuses QEMU's unsigned iPXE option ROM, and
            // there is no arm64 one: the firmware's own network stack boots.
            nic: match (opts.http_boot, opts.secure_boot || opts.arch.is_some()) {
                (true, _) => Nic::VirtioFirmwareHttp,
                (false, true) => Nic::VirtioFirmwarePxe,
                (false, false) => Nic::E1000Ipxe,
            },
            // Appended across power-ons: one console log for the whole run.
            console: Console::Stdout,
            // A monitor socket lets the lab power-cycle the VM between boots.
            monitor: Some(dir.join("qemu.monitor")),
            // One boot: a guest reboot (stage one gives up) ends QEMU, a quick failure
            // signal. Several: QEMU must survive the resets (it also treats
            // `system_reset` as exit).
            no_reboot: opts.boots <= 1,
        };
        let console =
            std::fs::OpenOptions::new().create(true).append(again).write(true).truncate(!again).open(console_log)?;
        let child = net::in_ns(self.netns, &vm.command_line())
            .stdin(Stdio::null())
            .stdout(console)
            .stderr(std::fs::File::create(dir.join("qemu.err"))?)
            .spawn()
            .context("starting QEMU")?;
        println!(
            "lab: VM {LAB_MAC} powered on ({}, {} MiB, TCG); serial console: {}",
            match (opts.http_boot, opts.secure_boot, opts.uefi()) {
                _ if opts.arch.is_some() => "arm64 virt, AAVMF PXE",
                _ if opts.ipv6 => "UEFI, iPXE ROM, IPv6 only",
                (true, true, _) => "UEFI HTTP Boot, Secure Boot",
                (true, false, _) => "UEFI HTTP Boot",
                (false, true, _) => "UEFI PXE, Secure Boot",
                (false, false, true) => "UEFI",
                (false, false, false) => "BIOS",
            },
            opts.memory_mb,
            console_log.display()
        );
        Ok(Proc::new("qemu", child))
    }

    /// A tgtd on the lab's bridge address, with a private control port.
    fn start_tgtd(&self, server_ip: &str) -> Result<Tgtd> {
        let tgtd = Tgtd::start(TgtdOptions {
            netns: Some(self.netns.to_string()),
            control: self.tgt_control,
            host: server_ip.parse().context("the lab's server address")?,
            port: 3260,
            log: self.dir.join("tgtd.log"),
            remove_log: false,
        })?;
        println!("lab: tgtd serving iSCSI on {server_ip}:3260 (control port {})", self.tgt_control);
        Ok(tgtd)
    }
}

const LAB_MAC: &str = "52:54:00:72:62:01";

/// Register the VM and give it a 64 MiB volume before it boots.
/// The lab is the VM's operator: registering its MAC vouches for it, so profiles
/// that render secrets or attach volumes (`compute-node`) boot without an approval.
async fn register_lab_node(http: &NetnsHttp, base: &str) -> Result<()> {
    http.post(format!("{base}/api/v1/nodes"), serde_json::json!({ "mac": LAB_MAC })).await?;
    println!("lab: registered {LAB_MAC} (an operator's word for it: see docs/threat-model.md)");
    Ok(())
}

async fn attach_lab_volume(http: &NetnsHttp, base: &str) -> Result<()> {
    http.post(
        format!("{base}/api/v1/volumes"),
        serde_json::json!({ "name": "lab-vm-disk", "size_bytes": 64u64 << 20 }),
    )
    .await?;
    http.post(format!("{base}/api/v1/volumes/lab-vm-disk/attach"), serde_json::json!({ "node": LAB_MAC })).await?;
    println!("lab: volume lab-vm-disk (64 MiB) attached to {LAB_MAC}");
    Ok(())
}

/// Did this server's log record a node moving to `ready` (an agent's report it took)?
fn logged_ready(log: &Path) -> bool {
    ramboot_lab::logs::log_text(log).lines().any(|l| l.contains("node moved") && l.contains("state=ready"))
}

/// Wait until the server answers its admin API with the admin token (in `token_file`).
async fn wait_for_server(http: &NetnsHttp, base: &str, err_log: &Path, token_file: &Path) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(30);
    while Instant::now() < deadline {
        if let Ok(token) = std::fs::read_to_string(token_file) {
            if let Ok(mut slot) = http.token.lock() {
                *slot = Some(token.trim().to_string());
            }
            if http.get(format!("{base}/api/v1/nodes")).await.is_ok() {
                return Ok(());
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let log = std::fs::read_to_string(err_log).unwrap_or_default();
    bail!("ramboot serve did not come up within 30 s:\n{log}")
}

/// Print each new event as it happens until the node is ready or failed.
/// Where following a node's events has got to, across boots.
#[derive(Default)]
struct Follow {
    last_event: i64,
    /// Boots already seen to the end: their late events do not end a later wait.
    done: Vec<i64>,
}

/// Print each new event as it happens until a new boot of the node is ready or failed.
#[allow(clippy::too_many_arguments)]
async fn follow(
    http: &NetnsHttp,
    base: &str,
    mac: &str,
    started: Instant,
    deadline: Instant,
    qemu: &mut Proc,
    state: &mut Follow,
    interrupted: &CancellationToken,
) -> (Outcome, Option<i64>) {
    let mut boot_seen = None;
    loop {
        if let Some(status) = qemu.try_wait() {
            return (Outcome::VmExited(status.to_string()), boot_seen);
        }
        if Instant::now() > deadline {
            return (Outcome::TimedOut, boot_seen);
        }
        let url = format!("{base}/api/v1/nodes/{mac}/events?after={}&limit=100", state.last_event);
        if let Ok(body) = http.get(url).await {
            if let Ok(events) = serde_json::from_str::<Vec<Event>>(&body) {
                for e in &events {
                    state.last_event = e.id;
                    let at = started.elapsed().as_secs_f64();
                    let label = e.state.map(|s| s.as_str()).unwrap_or(&e.kind);
                    println!("lab: {at:6.1}s  {label:<10} {}", e.message);
                    // A boot starts with its first event: `booting`, or a discovery boot's note.
                    if boot_seen.is_none() && e.boot_id.is_some_and(|b| !state.done.contains(&b)) {
                        boot_seen = e.boot_id;
                    }
                    if boot_seen.is_some() && e.boot_id == boot_seen {
                        let end = match e.state {
                            Some(NodeState::Ready) => Some(Outcome::Ready),
                            Some(NodeState::Failed) => Some(Outcome::Failed(e.message.clone())),
                            _ => None,
                        };
                        if let Some(end) = end {
                            state.done.extend(boot_seen);
                            return (end, boot_seen);
                        }
                    }
                }
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = interrupted.cancelled() => return (Outcome::Interrupted, boot_seen),
        }
    }
}

/// The per-phase timeline of the node's current boot.
fn print_timeline(events: &[Event], boot: Option<i64>) {
    let moves: Vec<&Event> =
        events.iter().filter(|e| e.state.is_some() && e.boot_id == boot && boot.is_some()).collect();
    let Some(first) = moves.first() else { return };
    println!("\nlab: timeline of boot {} (seconds in each phase)", boot.unwrap_or_default());
    for pair in moves.windows(2) {
        let (from, to) = (pair[0], pair[1]);
        println!(
            "  {:<10} {:>6.1}s   (until {}: {})",
            from.state.map(|s| s.as_str()).unwrap_or("-"),
            (to.at_ms - from.at_ms) as f64 / 1000.0,
            to.state.map(|s| s.as_str()).unwrap_or("-"),
            to.message
        );
    }
    if let Some(last) = moves.last() {
        println!(
            "  total      {:>6.1}s   from the boot config served ({}) to {}",
            (last.at_ms - first.at_ms) as f64 / 1000.0,
            format_ms(first.at_ms),
            last.state.map(|s| s.as_str()).unwrap_or("-")
        );
    }
}

fn print_tail(log: &Path) {
    let text = std::fs::read_to_string(log).unwrap_or_default();
    let lines: Vec<&str> = text.lines().collect();
    eprintln!("lab: last lines of the VM console ({}):", log.display());
    for line in &lines[lines.len().saturating_sub(30)..] {
        eprintln!("  | {line}");
    }
}
