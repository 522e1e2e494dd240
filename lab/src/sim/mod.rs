//! `ramboot-sim`: a fleet of simulated diskless nodes booting at once against a
//! real `ramboot serve`, over the real protocols, to measure a boot storm.
//!
//! Each node does what a machine does: DHCP as its PXE ROM (→ an iPXE binary),
//! TFTP of that binary, DHCP again as iPXE (→ its script URL), the script, the
//! stage-one kernel and initrd, the agent's hello and plan, the image (SHA-256
//! checked), and the agent's loading/handoff/ready reports. The simulator is a DHCP
//! relay (giaddr), so it must run on another host or network namespace than the
//! server. It reports time to all-ready, per-phase percentiles and bytes/s.

pub mod dhcp;
pub mod http;

use dhcp::{Client, Relay, Stage};
use ramboot_core::node::MacAddr;
use ramboot_core::tftp::client::{Download, ReadRequest, Step};
use ramboot_proto::{human_bytes, paths, AgentEvent, BootArgs, Dmi, Inventory, Nic, Plan, ReportedState};
use serde::Serialize;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::net::UdpSocket;
use tracing::{debug, warn, Instrument};

/// The phases of one boot, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    DhcpFirmware,
    Tftp,
    DhcpIpxe,
    Script,
    KernelInitrd,
    HelloPlan,
    Image,
    Ready,
}

impl Phase {
    pub const ALL: [Phase; 8] = [
        Phase::DhcpFirmware,
        Phase::Tftp,
        Phase::DhcpIpxe,
        Phase::Script,
        Phase::KernelInitrd,
        Phase::HelloPlan,
        Phase::Image,
        Phase::Ready,
    ];

    pub fn name(self) -> &'static str {
        match self {
            Phase::DhcpFirmware => "dhcp (PXE ROM)",
            Phase::Tftp => "tftp iPXE binary",
            Phase::DhcpIpxe => "dhcp (iPXE)",
            Phase::Script => "boot.ipxe",
            Phase::KernelInitrd => "kernel + initrd",
            Phase::HelloPlan => "agent hello + plan",
            Phase::Image => "image (sha256)",
            Phase::Ready => "reports to ready",
        }
    }
}

#[derive(clap::Args, Debug, Clone)]
pub struct SimOptions {
    /// The ramboot server's DHCP address (the simulator relays to it).
    #[arg(long)]
    pub server: Ipv4Addr,
    /// This host's address, used as the relay address (giaddr): the server must
    /// have a subnet that contains it.
    #[arg(long)]
    pub relay: Ipv4Addr,
    /// How many nodes boot.
    #[arg(long, default_value_t = 20, value_parser = clap::value_parser!(u32).range(1..=10_000))]
    pub nodes: u32,
    /// Spread the nodes' power-on over this many seconds (0: all at once).
    #[arg(long, default_value_t = 0.0)]
    pub ramp_secs: f64,
    /// First simulated MAC; node i adds i to its last three bytes.
    #[arg(long, default_value = "02:5a:00:00:00:00")]
    pub mac_base: MacAddr,
    /// Client architecture code (option 93): 0 BIOS, 7 UEFI x64, 11 UEFI arm64.
    #[arg(long, default_value_t = 0)]
    pub arch: u16,
    /// TFTP block size the ROM asks for.
    #[arg(long, default_value_t = 1468)]
    pub tftp_blksize: u16,
    /// TFTP window size to ask for (PXE ROMs and iPXE ask for none).
    #[arg(long)]
    pub tftp_windowsize: Option<u16>,
    /// Give up on a node that is not ready after this many seconds.
    #[arg(long, default_value_t = 600)]
    pub timeout_secs: u64,
    /// Check the image's size only, not its SHA-256. For measuring the server
    /// against the link: one simulator process hashing for hundreds of nodes is
    /// bound by its own CPU long before the server is (each real node hashes on its
    /// own). Kernel and initrd are always hashed.
    #[arg(long)]
    pub skip_image_hash: bool,
    /// Also write the report as JSON here.
    #[arg(long)]
    pub json: Option<std::path::PathBuf>,
}

#[derive(Debug, thiserror::Error)]
pub enum SimError {
    #[error("DHCP: {0}")]
    Dhcp(#[from] dhcp::DhcpSimError),
    #[error("TFTP {file}: {message}")]
    Tftp { file: String, message: String },
    #[error("HTTP {0}")]
    Http(#[from] http::HttpSimError),
    #[error("{0}")]
    Boot(String),
    #[error("not ready after {0:?}")]
    Timeout(Duration),
}

/// One node's outcome.
#[derive(Debug, Clone, Serialize)]
pub struct NodeResult {
    pub mac: String,
    /// Seconds spent in each phase reached, in order.
    pub phases: Vec<(Phase, f64)>,
    /// Seconds from power-on (its start) to ready.
    pub total_secs: f64,
    /// Seconds from the simulator's start to this node's ready.
    pub ready_at_secs: f64,
    pub tftp_bytes: u64,
    pub http_bytes: u64,
    pub retransmits: Retransmits,
    pub error: Option<String>,
}

/// What one node sent again because an answer did not come in time: each is a
/// retransmit timeout the node waited out (TCP's own are the kernel's; the storm
/// bench reads them from both namespaces).
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct Retransmits {
    /// DHCP DISCOVERs and REQUESTs sent again (after 2, 4, 8 s).
    pub dhcp: u32,
    /// TFTP timeouts (after 1, 2, 4, 8 s): the read request or an ACK sent again.
    pub tftp: u32,
    /// Of `tftp`, those before the server's first answer (the read request sent
    /// again): the server's admission of a session, not its turnaround per block.
    pub tftp_request: u32,
}

impl Retransmits {
    fn any(&self) -> bool {
        self.dhcp + self.tftp > 0
    }
}

/// The fleet's retransmissions.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct RetransmitTotals {
    pub dhcp: u64,
    pub tftp: u64,
    pub tftp_request: u64,
    /// Nodes that waited out at least one timeout.
    pub nodes: u32,
}

#[derive(Debug, Clone, Serialize)]
pub struct PhaseStats {
    pub phase: Phase,
    pub p50: f64,
    pub p90: f64,
    pub p99: f64,
    pub max: f64,
}

#[derive(Debug, Clone, Serialize)]
pub struct Report {
    pub nodes: u32,
    pub ready: u32,
    pub failed: u32,
    /// Seconds from start until the last node was ready (or gave up).
    pub all_ready_secs: f64,
    pub phases: Vec<PhaseStats>,
    pub boot_p50: f64,
    pub boot_p99: f64,
    pub tftp_bytes: u64,
    pub http_bytes: u64,
    /// All bytes received over the run's wall time.
    pub bytes_per_sec: f64,
    pub retransmits: RetransmitTotals,
    /// Each node connection's TCP receive buffer (`SO_RCVBUF`); none: autotuned.
    pub tcp_receive_buffer: Option<usize>,
    pub errors: Vec<String>,
    pub results: Vec<NodeResult>,
}

/// Live counts for the progress line.
#[derive(Default)]
struct Progress {
    in_phase: [AtomicUsize; 8],
    ready: AtomicUsize,
    failed: AtomicUsize,
    bytes: AtomicU64,
}

impl Progress {
    fn line(&self, total: u32, elapsed: Duration) -> String {
        let phases: Vec<String> = Phase::ALL
            .iter()
            .enumerate()
            .filter_map(|(i, p)| match self.in_phase[i].load(Ordering::Relaxed) {
                0 => None,
                n => Some(format!("{n} in {}", p.name())),
            })
            .collect();
        format!(
            "[{:6.1}s] ready {}/{total}, failed {}, {} received{}{}",
            elapsed.as_secs_f64(),
            self.ready.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
            human_bytes(self.bytes.load(Ordering::Relaxed)),
            if phases.is_empty() { "" } else { "; " },
            phases.join(", ")
        )
    }
}

/// Boot `opts.nodes` simulated nodes and report. Progress goes to stderr every 2 s.
pub async fn run(opts: &SimOptions) -> Result<Report, SimError> {
    let receive_buffer = tcp_memory_pressure_bytes().map(|bytes| receive_buffer_per_node(bytes, opts.nodes));
    match receive_buffer {
        Some(b) => eprintln!(
            "each node's TCP receive buffer: {} (all {} together stay under half of net.ipv4.tcp_mem's pressure line)",
            human_bytes(b as u64),
            opts.nodes
        ),
        None => eprintln!("neither net.ipv4.tcp_mem nor MemTotal readable: TCP receive buffers autotuned"),
    }
    let (relay, router) = Relay::bind(opts.relay, opts.server).await?;
    let relay = Arc::new(relay);
    let progress = Arc::new(Progress::default());
    let bulk = BulkRuntime::start()?;
    let downloads = Downloads { runtime: bulk.handle(), progress: progress.clone() };
    let started = Instant::now();
    let mut nodes = tokio::task::JoinSet::new();
    for index in 0..opts.nodes {
        let client = client_for(opts, index);
        let (relay, progress, opts, downloads) = (relay.clone(), progress.clone(), opts.clone(), downloads.clone());
        let delay = Duration::from_secs_f64(opts.ramp_secs.max(0.0) * f64::from(index) / f64::from(opts.nodes));
        let span = tracing::info_span!("sim node", mac = %client.mac);
        nodes.spawn(
            async move {
                tokio::time::sleep(delay).await;
                let net = Net { relay: &relay, downloads: &downloads, receive_buffer };
                boot(&opts, net, client, index, &progress, started).await
            }
            .instrument(span),
        );
    }
    let mut results = Vec::with_capacity(opts.nodes as usize);
    let mut tick = tokio::time::interval(Duration::from_secs(2));
    tick.tick().await;
    loop {
        tokio::select! {
            joined = nodes.join_next() => match joined {
                Some(Ok(result)) => results.push(result),
                Some(Err(e)) => return Err(SimError::Boot(format!("a node task failed: {e}"))),
                None => break,
            },
            _ = tick.tick() => eprintln!("{}", progress.line(opts.nodes, started.elapsed())),
        }
    }
    eprintln!("{}", progress.line(opts.nodes, started.elapsed()));
    drop(router);
    drop(bulk);
    Ok(summarize(opts.nodes, results, started.elapsed(), receive_buffer))
}

/// `net.ipv4.tcp_mem`'s pressure line in bytes: past it Linux starts dropping
/// arriving segments. The setting is the host's, and a network namespace does not
/// show it: there, Linux's default for it (a sixteenth of memory).
fn tcp_memory_pressure_bytes() -> Option<u64> {
    let page = u64::try_from(nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok()??).ok()?;
    let set = std::fs::read_to_string("/proc/sys/net/ipv4/tcp_mem").ok();
    if let Some(pages) = set.as_deref().and_then(|t| t.split_whitespace().nth(1)?.parse::<u64>().ok()) {
        return Some(pages * page);
    }
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let kib: u64 =
        meminfo.lines().find_map(|l| l.strip_prefix("MemTotal:"))?.trim().strip_suffix("kB")?.trim().parse().ok()?;
    Some(kib * 1024 / 16)
}

/// One node's `SO_RCVBUF`: all `nodes` together within half the pressure line
/// (the other half is the server's send queues when it runs on this host too). The
/// kernel charges up to twice `SO_RCVBUF`. At least 64 KiB (the window iPXE
/// offers is 256 KiB), at most 4 MiB.
fn receive_buffer_per_node(pressure_bytes: u64, nodes: u32) -> usize {
    let share = pressure_bytes / 2 / 2 / u64::from(nodes.max(1));
    share.clamp(64 << 10, 4 << 20) as usize
}

fn client_for(opts: &SimOptions, index: u32) -> Client {
    let mut mac = opts.mac_base.0;
    let base = u32::from_be_bytes([0, mac[3], mac[4], mac[5]]);
    let [_, a, b, c] = base.wrapping_add(index).to_be_bytes();
    mac[3..].copy_from_slice(&[a, b, c]);
    let mut uuid = [0u8; 16];
    uuid[..4].copy_from_slice(b"rbsm");
    uuid[10..].copy_from_slice(&mac);
    Client { mac: MacAddr(mac), arch: opts.arch, uuid }
}

/// Moves the live phase count along and records each phase's time.
struct Timeline<'a> {
    progress: &'a Progress,
    current: Option<(Phase, Instant)>,
    phases: Vec<(Phase, f64)>,
}

impl Timeline<'_> {
    fn enter(&mut self, phase: Phase) {
        self.leave();
        self.progress.in_phase[phase as usize].fetch_add(1, Ordering::Relaxed);
        self.current = Some((phase, Instant::now()));
    }

    fn leave(&mut self) {
        if let Some((phase, since)) = self.current.take() {
            self.progress.in_phase[phase as usize].fetch_sub(1, Ordering::Relaxed);
            self.phases.push((phase, since.elapsed().as_secs_f64()));
        }
    }
}

/// How a node reaches the server: the shared relay, the download runtime, and its
/// connections' `SO_RCVBUF` (see [`http::Origin`]).
#[derive(Clone, Copy)]
struct Net<'a> {
    relay: &'a Relay,
    downloads: &'a Downloads,
    receive_buffer: Option<usize>,
}

async fn boot(
    opts: &SimOptions,
    net: Net<'_>,
    client: Client,
    index: u32,
    progress: &Progress,
    started: Instant,
) -> NodeResult {
    let powered_on = Instant::now();
    let mut timeline = Timeline { progress, current: None, phases: Vec::new() };
    let mut tally = Tally::default();
    let limit = Duration::from_secs(opts.timeout_secs);
    let outcome =
        match tokio::time::timeout(limit, boot_steps(opts, net, &client, index, &mut timeline, &mut tally)).await {
            Ok(r) => r,
            Err(_) => Err(SimError::Timeout(limit)),
        };
    let failed_in = timeline.current.map(|(p, _)| p);
    timeline.leave();
    let error = match outcome {
        Ok(()) => {
            progress.ready.fetch_add(1, Ordering::Relaxed);
            None
        }
        Err(e) => {
            progress.failed.fetch_add(1, Ordering::Relaxed);
            let phase = failed_in.map(Phase::name).unwrap_or("start");
            warn!(error = %e, phase, "simulated node failed");
            Some(format!("{}: {phase}: {e}", client.mac))
        }
    };
    NodeResult {
        mac: client.mac.to_string(),
        phases: timeline.phases,
        total_secs: powered_on.elapsed().as_secs_f64(),
        ready_at_secs: started.elapsed().as_secs_f64(),
        tftp_bytes: tally.tftp_bytes,
        http_bytes: tally.http_bytes,
        retransmits: tally.retransmits,
        error,
    }
}

/// What one node's boot counts as it goes.
#[derive(Default)]
struct Tally {
    tftp_bytes: u64,
    http_bytes: u64,
    retransmits: Retransmits,
}

async fn boot_steps(
    opts: &SimOptions,
    Net { relay, downloads, receive_buffer }: Net<'_>,
    client: &Client,
    index: u32,
    timeline: &mut Timeline<'_>,
    tally: &mut Tally,
) -> Result<(), SimError> {
    let progress = timeline.progress;
    let xid = |stage: u32| u32::from_be_bytes([0x5a, 0, 0, 0]) ^ (index << 2) ^ stage;

    timeline.enter(Phase::DhcpFirmware);
    let rom = relay.dora(client, Stage::Firmware, xid(1), &mut tally.retransmits.dhcp).await?;
    let binary = rom.boot_file.ok_or_else(|| SimError::Boot("the PXE ROM's ACK named no boot file".into()))?;
    debug!(ip = %rom.yiaddr, %binary, "PXE ROM bound");

    timeline.enter(Phase::Tftp);
    let request = ReadRequest {
        filename: binary.clone(),
        blksize: Some(opts.tftp_blksize),
        windowsize: opts.tftp_windowsize,
        tsize: true,
    };
    let server = SocketAddr::from((rom.next_server, 69));
    tally.tftp_bytes += tftp_fetch(opts.relay, server, request, progress, &mut tally.retransmits).await?;

    timeline.enter(Phase::DhcpIpxe);
    let ipxe = relay.dora(client, Stage::Ipxe, xid(2), &mut tally.retransmits.dhcp).await?;
    let script_url = ipxe.boot_file.ok_or_else(|| SimError::Boot("iPXE's ACK named no script".into()))?;
    if !script_url.starts_with("http://") {
        return Err(SimError::Boot(format!("iPXE was given {script_url:?}, not its script URL: chainload loop")));
    }

    // From here on the node speaks HTTP from the address iPXE was leased.
    let from = http::Origin { address: IpAddr::V4(ipxe.yiaddr), receive_buffer };

    timeline.enter(Phase::Script);
    let script_url = script_url.replace("${net0/mac}", &client.mac.to_string());
    let script = fetch(from, http::Call::get(&script_url, None), tally, progress).await?;
    let script = String::from_utf8_lossy(&script.kept).into_owned();
    let boot = BootScript::parse(&script)?;

    timeline.enter(Phase::KernelInitrd);
    for url in [&boot.kernel_url, &boot.initrd_url] {
        let got = downloads.get(from, url, None, true).await?;
        tally.http_bytes += got.bytes;
        if let Some(digest) = digest_in(url) {
            http::verify(url, &got, digest, None)?;
        }
    }

    timeline.enter(Phase::HelloPlan);
    let args = &boot.args;
    let token = Some(args.token.as_str());
    let api = |path: &str| format!("{}{path}", args.server.trim_end_matches('/'));
    let hello = inventory(client, index);
    fetch(from, http::Call::post_json(&api(paths::HELLO), token, &hello), tally, progress).await?;
    let plan_url = api(paths::PLAN);
    let answer = fetch(from, http::Call::get(&plan_url, token), tally, progress).await?;
    if answer.status == hyper::StatusCode::ACCEPTED {
        return Err(SimError::Boot(
            "no profile for this node (discovery): give the server a default_profile or a selector".into(),
        ));
    }
    let plan: Plan = serde_json::from_slice(&answer.kept)
        .map_err(|e| SimError::Boot(format!("{plan_url}: plan is not JSON: {e}")))?;

    timeline.enter(Phase::Image);
    let events = api(paths::EVENTS);
    let loading = event(Some(ReportedState::Loading), format!("fetching {}", plan.image.name));
    fetch(from, http::Call::post_json(&events, token, &loading), tally, progress).await?;
    let hash = !opts.skip_image_hash;
    let image = downloads.get(from, &plan.image.url, token, hash).await?;
    tally.http_bytes += image.bytes;
    if hash {
        http::verify(&plan.image.url, &image, &plan.image.sha256, Some(plan.image.size))?;
    } else if image.bytes != plan.image.size {
        let (url, got, expected) = (plan.image.url.clone(), image.bytes, plan.image.size);
        return Err(http::HttpSimError::Length { url, got, expected }.into());
    }

    timeline.enter(Phase::Ready);
    let checked = match hash {
        true => format!("image verified: sha256 {}", plan.image.sha256.get(..12).unwrap_or_default()),
        false => format!("image fetched: {} bytes (hash not checked: --skip-image-hash)", image.bytes),
    };
    let verified = event(None, checked);
    fetch(from, http::Call::post_json(&events, token, &verified), tally, progress).await?;
    if let Some(url) = &plan.overlay_url {
        fetch(from, http::Call::get(url, token), tally, progress).await?;
    }
    for (state, message) in
        [(ReportedState::Handoff, "simulated switch_root"), (ReportedState::Ready, "simulated stage two up")]
    {
        fetch(from, http::Call::post_json(&events, token, &event(Some(state), message.into())), tally, progress)
            .await?;
    }
    timeline.leave();
    Ok(())
}

/// A GET or POST as the node whose bytes count toward its HTTP total.
async fn fetch(
    from: http::Origin,
    call: http::Call<'_>,
    tally: &mut Tally,
    progress: &Progress,
) -> Result<http::Fetched, SimError> {
    let got = http::call(http::Call { origin: Some(from), ..call }).await?;
    tally.http_bytes += got.bytes;
    progress.bytes.fetch_add(got.bytes, Ordering::Relaxed);
    Ok(got)
}

/// The runtime the nodes' large downloads (kernel, initrd, image) run on, apart
/// from the one that runs their DHCP, TFTP and small HTTP exchanges. On real
/// hardware every node has a CPU of its own: a node reads its DHCP OFFER or its
/// next TFTP block in microseconds whatever the others are downloading. On one
/// runtime, thousands of body-streaming, hashing tasks would queue ahead of those
/// wake-ups, and a 5,000-node storm would measure that queue (timeouts the
/// server never caused) instead of the server. Two runtimes are two sets of OS
/// threads: the kernel's scheduler runs a woken exchange at once.
struct BulkRuntime(Option<tokio::runtime::Runtime>);

impl BulkRuntime {
    fn start() -> Result<BulkRuntime, SimError> {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .thread_name("sim-download")
            .enable_all()
            .build()
            .map_err(|e| SimError::Boot(format!("starting the download runtime: {e}")))?;
        Ok(BulkRuntime(Some(runtime)))
    }

    fn handle(&self) -> tokio::runtime::Handle {
        self.0.as_ref().map(|r| r.handle().clone()).unwrap_or_else(tokio::runtime::Handle::current)
    }
}

impl Drop for BulkRuntime {
    fn drop(&mut self) {
        // Dropping a runtime blocks, which an async caller must not do.
        if let Some(runtime) = self.0.take() {
            runtime.shutdown_background();
        }
    }
}

/// Large downloads on the [`BulkRuntime`], counted into the live progress.
#[derive(Clone)]
struct Downloads {
    runtime: tokio::runtime::Handle,
    progress: Arc<Progress>,
}

impl Downloads {
    /// GET `url` as the node at `from`; the body is only counted (and hashed if asked).
    async fn get(
        &self,
        from: http::Origin,
        url: &str,
        token: Option<&str>,
        hash: bool,
    ) -> Result<http::Fetched, SimError> {
        let (url, token, progress) = (url.to_string(), token.map(str::to_string), self.progress.clone());
        let download = async move {
            let mut last = 0u64;
            let mut count = |n: u64| {
                progress.bytes.fetch_add(n - last, Ordering::Relaxed);
                last = n;
            };
            let get = http::Call::get(&url, token.as_deref());
            http::call(http::Call { progress: Some(&mut count), keep: 0, hash, origin: Some(from), ..get }).await
        };
        // Aborted with the node (its time limit): a detached download would go on.
        let mut task = AbortOnDrop(self.runtime.spawn(download.instrument(tracing::Span::current())));
        let joined = (&mut task.0).await;
        joined.map_err(|e| SimError::Boot(format!("a download task failed: {e}")))?.map_err(SimError::from)
    }
}

struct AbortOnDrop<T>(tokio::task::JoinHandle<T>);

impl<T> Drop for AbortOnDrop<T> {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn event(state: Option<ReportedState>, message: String) -> AgentEvent {
    AgentEvent { state, message, progress: None }
}

fn inventory(client: &Client, index: u32) -> Inventory {
    let uuid = ramboot_core::dhcp::classify::format_uuid(&[&[0u8][..], &client.uuid].concat());
    Inventory {
        cpus: 64,
        cpu_model: Some("ramboot-sim virtual CPU".into()),
        memory_bytes: 256 << 30,
        nics: vec![Nic {
            name: "eth0".into(),
            mac: client.mac.to_string(),
            driver: Some("sim".into()),
            speed_mbps: Some(25_000),
        }],
        dmi: Dmi {
            vendor: Some("ramboot".into()),
            product: Some("simulated node".into()),
            serial: Some(format!("SIM{index:06}")),
            uuid,
        },
        kernel: None,
        firmware: None,
    }
}

/// The digest in an `/artifacts/sha256/<digest>/<name>` URL.
fn digest_in(url: &str) -> Option<&str> {
    let rest = url.split_once("/sha256/")?.1;
    rest.split('/').next().filter(|d| d.len() == 64)
}

/// What a node's iPXE script says to boot.
#[derive(Debug, PartialEq, Eq)]
struct BootScript {
    kernel_url: String,
    initrd_url: String,
    args: BootArgs,
}

impl BootScript {
    fn parse(script: &str) -> Result<BootScript, SimError> {
        let line = |cmd: &str| {
            script
                .lines()
                .map(str::trim)
                .find_map(|l| l.strip_prefix(cmd).filter(|r| r.starts_with(' ')).map(str::trim))
        };
        let refused = || {
            let said: Vec<&str> = script.lines().filter_map(|l| l.trim().strip_prefix("echo ")).collect();
            SimError::Boot(format!("the boot script does not boot: {}", said.join(" / ")))
        };
        let kernel = line("kernel").ok_or_else(refused)?;
        let kernel_url = kernel.split_whitespace().next().ok_or_else(refused)?.to_string();
        let initrd_url = line("initrd").and_then(|l| l.split_whitespace().next()).ok_or_else(refused)?.to_string();
        let args = BootArgs::from_cmdline(kernel)
            .map_err(|key| SimError::Boot(format!("the kernel command line has no {key}=")))?;
        Ok(BootScript { kernel_url, initrd_url, args })
    }
}

pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return 0.0;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

fn summarize(nodes: u32, results: Vec<NodeResult>, elapsed: Duration, tcp_receive_buffer: Option<usize>) -> Report {
    let ok: Vec<&NodeResult> = results.iter().filter(|r| r.error.is_none()).collect();
    let sorted = |mut v: Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v
    };
    let phases = Phase::ALL
        .iter()
        .map(|&phase| {
            let times =
                sorted(ok.iter().filter_map(|r| r.phases.iter().find(|(p, _)| *p == phase)).map(|(_, t)| *t).collect());
            PhaseStats {
                phase,
                p50: percentile(&times, 50.0),
                p90: percentile(&times, 90.0),
                p99: percentile(&times, 99.0),
                max: times.last().copied().unwrap_or(0.0),
            }
        })
        .collect();
    let totals = sorted(ok.iter().map(|r| r.total_secs).collect());
    let all_ready_secs = results.iter().map(|r| r.ready_at_secs).fold(0.0, f64::max);
    let (tftp_bytes, http_bytes) = results.iter().fold((0, 0), |(t, h), r| (t + r.tftp_bytes, h + r.http_bytes));
    let retransmits = results.iter().fold(RetransmitTotals::default(), |t, r| RetransmitTotals {
        dhcp: t.dhcp + u64::from(r.retransmits.dhcp),
        tftp: t.tftp + u64::from(r.retransmits.tftp),
        tftp_request: t.tftp_request + u64::from(r.retransmits.tftp_request),
        nodes: t.nodes + u32::from(r.retransmits.any()),
    });
    Report {
        nodes,
        ready: ok.len() as u32,
        failed: (results.len() - ok.len()) as u32,
        all_ready_secs,
        phases,
        boot_p50: percentile(&totals, 50.0),
        boot_p99: percentile(&totals, 99.0),
        tftp_bytes,
        http_bytes,
        bytes_per_sec: (tftp_bytes + http_bytes) as f64 / elapsed.as_secs_f64().max(1e-3),
        retransmits,
        tcp_receive_buffer,
        errors: results.iter().filter_map(|r| r.error.clone()).collect(),
        results,
    }
}

impl Report {
    /// The human summary `ramboot-sim` prints.
    pub fn table(&self) -> String {
        let mut out = format!(
            "{} of {} nodes ready, {} failed; all ready in {:.2} s; boot p50 {:.2} s, p99 {:.2} s\n\
             received {} over TFTP and {} over HTTP: {}/s\n\
             {} nodes waited out a timeout: {} DHCP and {} TFTP retransmissions ({} of them read requests)\n\n\
             {:<20} {:>9} {:>9} {:>9} {:>9}\n",
            self.ready,
            self.nodes,
            self.failed,
            self.all_ready_secs,
            self.boot_p50,
            self.boot_p99,
            human_bytes(self.tftp_bytes),
            human_bytes(self.http_bytes),
            human_bytes(self.bytes_per_sec as u64),
            self.retransmits.nodes,
            self.retransmits.dhcp,
            self.retransmits.tftp,
            self.retransmits.tftp_request,
            "phase (seconds)",
            "p50",
            "p90",
            "p99",
            "max"
        );
        for s in &self.phases {
            out += &format!("{:<20} {:>9.3} {:>9.3} {:>9.3} {:>9.3}\n", s.phase.name(), s.p50, s.p90, s.p99, s.max);
        }
        for e in self.errors.iter().take(10) {
            out += &format!("failed: {e}\n");
        }
        if self.errors.len() > 10 {
            out += &format!("... and {} more failures\n", self.errors.len() - 10);
        }
        out
    }
}

/// Download a file over TFTP as a PXE ROM does; returns its size. The bytes are
/// only counted: the simulator checks sizes against tsize, not content.
async fn tftp_fetch(
    local: Ipv4Addr,
    server: SocketAddr,
    request: ReadRequest,
    progress: &Progress,
    timeouts: &mut Retransmits,
) -> Result<u64, SimError> {
    let file = request.filename.clone();
    let fail = |message: String| SimError::Tftp { file: file.clone(), message };
    let socket = UdpSocket::bind((local, 0)).await.map_err(|e| fail(format!("bind: {e}")))?;
    let (mut download, rrq) = Download::start(request, 6);
    socket.send_to(&rrq, server).await.map_err(|e| fail(e.to_string()))?;
    let mut peer: Option<SocketAddr> = None;
    let mut buf = vec![0u8; 65_536];
    let mut wait = Duration::from_secs(1);
    loop {
        let received = tokio::time::timeout(wait, socket.recv_from(&mut buf)).await;
        let step = match received {
            Err(_) => {
                timeouts.tftp += 1;
                timeouts.tftp_request += u32::from(peer.is_none());
                wait = (wait * 2).min(Duration::from_secs(8));
                download.on_timeout()
            }
            Ok(Err(e)) => return Err(fail(e.to_string())),
            Ok(Ok((len, from))) => {
                // The server answers from a new port (its transfer id); stick to it.
                match peer {
                    Some(p) if p != from => continue,
                    None if from.ip() != server.ip() => continue,
                    _ => peer = Some(from),
                }
                download.on_packet(&buf[..len])
            }
        };
        let to = peer.unwrap_or(server);
        match step {
            Step::Data { keep, reply } => {
                progress.bytes.fetch_add(keep.len() as u64, Ordering::Relaxed);
                if let Some(packet) = reply {
                    socket.send_to(&packet, to).await.map_err(|e| fail(e.to_string()))?;
                }
                if download.is_complete() {
                    return Ok(download.bytes());
                }
            }
            Step::Send(packet) => {
                socket.send_to(&packet, to).await.map_err(|e| fail(e.to_string()))?;
            }
            Step::Wait => {}
            Step::Failed { error, reply } => {
                if let Some(packet) = reply {
                    let _ = socket.send_to(&packet, to).await;
                }
                return Err(fail(error.to_string()));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_boot_script_gives_kernel_initrd_and_agent_coordinates() {
        let script = "#!ipxe\necho ramboot: n1 is booting\nkernel http://10.0.0.1:8080/artifacts/sha256/aa/vmlinuz \
                      initrd=initrd.img console=ttyS0 ramboot.server=http://10.0.0.1:8080 ramboot.node=3 \
                      ramboot.token=tok ramboot.mac=02:00:00:00:00:01\ninitrd http://10.0.0.1:8080/i.img\nboot\n";
        let s = BootScript::parse(script).unwrap();
        assert_eq!(s.kernel_url, "http://10.0.0.1:8080/artifacts/sha256/aa/vmlinuz");
        assert_eq!(s.initrd_url, "http://10.0.0.1:8080/i.img");
        assert_eq!((s.args.node.as_str(), s.args.token.as_str()), ("3", "tok"));
        let refused = BootScript::parse("#!ipxe\necho ramboot: in maintenance\nshell\n").unwrap_err();
        assert!(refused.to_string().contains("in maintenance"), "{refused}");
    }

    #[test]
    fn percentiles_are_nearest_rank() {
        let v: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!((percentile(&v, 50.0), percentile(&v, 99.0), percentile(&v, 100.0)), (50.0, 99.0, 100.0));
        assert_eq!(percentile(&[], 50.0), 0.0);
        assert_eq!(percentile(&[3.0], 99.0), 3.0);
    }

    #[test]
    fn node_receive_buffers_together_stay_under_the_tcp_memory_pressure_line() {
        let pressure = 383_878 * 4096; // this 24 GiB machine's net.ipv4.tcp_mem
        let each = receive_buffer_per_node(pressure, 500);
        assert_eq!(each, 786_182);
        assert!(2 * each as u64 * 500 <= pressure / 2, "charged at twice SO_RCVBUF");
        assert_eq!(receive_buffer_per_node(pressure, 50_000), 64 << 10, "never below a usable window");
        assert_eq!(receive_buffer_per_node(pressure, 1), 4 << 20, "never above rmem_max's default");
        assert_eq!(receive_buffer_per_node(pressure, 0), 4 << 20);
    }

    #[test]
    fn node_macs_count_up_from_the_base() {
        let opts = SimOptions {
            server: Ipv4Addr::LOCALHOST,
            relay: Ipv4Addr::LOCALHOST,
            nodes: 2,
            ramp_secs: 0.0,
            mac_base: "02:5a:00:00:00:ff".parse().unwrap(),
            arch: 0,
            tftp_blksize: 1468,
            tftp_windowsize: None,
            timeout_secs: 1,
            skip_image_hash: false,
            json: None,
        };
        assert_eq!(client_for(&opts, 1).mac.to_string(), "02:5a:00:00:01:00");
        assert_eq!(digest_in(&format!("http://h/artifacts/sha256/{}/vmlinuz", "a".repeat(64))), Some(&*"a".repeat(64)));
    }
}
