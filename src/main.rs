//! The `ramboot` command: server, image builder and operator CLI in one binary. The
//! lab and the fleet simulator are tools of their own (`ramboot-lab`, `ramboot-sim`).

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ramboot::{cli, config::Config, images, profiles, store::copy};
use ramboot_api::Event;
use ramboot_proto::human_bytes;
use serde_json::json;
use std::io::IsTerminal;
use std::path::PathBuf;

#[derive(Parser)]
#[command(
    name = "ramboot",
    version,
    about = "Diskless netboot provisioner: PXE-boot servers into RAM",
    after_help = EXAMPLES
)]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

/// `ramboot --help`'s examples: each line is also in README.md (a test checks).
const EXAMPLES: &str = "\
Examples:
  ramboot doctor --config /etc/ramboot/ramboot.yaml
  ramboot serve --config /etc/ramboot/ramboot.yaml
  ramboot nodes ls --state ready --label rack=r1
  ramboot nodes assign 52:54:00:72:62:01 compute-node
  ramboot nodes reprovision 7
  ramboot events --follow
  ramboot profiles ls";

#[derive(Subcommand)]
enum Cmd {
    /// Run the DHCP, TFTP and HTTP services.
    Serve {
        #[arg(long, short, default_value = "ramboot.yaml", env = "RAMBOOT_CONFIG")]
        config: PathBuf,
        /// `text` (colours only on a terminal; no timestamps under journald, which
        /// adds its own) or `json` (one object per line, for log shippers).
        #[arg(long, value_enum, default_value_t = LogFormat::Text, env = "RAMBOOT_LOG_FORMAT")]
        log_format: LogFormat,
    },
    /// Build and list images.
    #[command(alias = "image")]
    Images {
        #[command(subcommand)]
        command: ImageCmd,
    },
    /// Manage nodes through a running server's admin API.
    Nodes {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: NodesCmd,
    },
    /// List profiles on a server, or validate a profiles directory locally.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCmd,
    },
    /// The node inventory in git: what a server applied, or validate files locally.
    Inventory {
        #[command(subcommand)]
        command: InventoryCmd,
    },
    /// Manage iSCSI volumes (VM disks) and their attachment to nodes.
    Volumes {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: VolumesCmd,
    },
    /// Manage admin API tokens (needs an admin token).
    Tokens {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: TokensCmd,
    },
    /// Show the event log, or follow it live.
    Events {
        #[command(flatten)]
        api: ApiArgs,
        /// Keep printing new events as they happen (Server-Sent Events).
        #[arg(long, short)]
        follow: bool,
        /// Only this node's events (id or MAC).
        #[arg(long)]
        node: Option<String>,
        /// How many past events to show first.
        #[arg(long, default_value_t = 50)]
        last: i64,
    },
    /// Rolling re-provisions: reboot a selection of nodes into a new profile or
    /// image, a batch at a time, with drain and undrain hooks.
    Rollout {
        #[command(flatten)]
        api: ApiArgs,
        #[command(subcommand)]
        command: RolloutCmd,
    },
    /// Show the audit trail: who changed what (API tokens, inventory files), oldest first.
    Audit {
        #[command(flatten)]
        api: ApiArgs,
        /// Only changes to this node (id or MAC; also a deleted node's MAC).
        #[arg(long)]
        node: Option<String>,
        /// Only changes by this actor (a token's name, an inventory file's path).
        #[arg(long)]
        actor: Option<String>,
        /// Keep printing new records as they are made.
        #[arg(long, short)]
        follow: bool,
    },
    /// Work on a database directly (no server needed).
    Db {
        #[command(subcommand)]
        command: DbCmd,
    },
    /// Check a configuration and this machine: what would keep a node from
    /// booting, one line each with how to fix it. Exit status 0 when nothing
    /// failed (warnings allowed), 1 otherwise.
    Doctor {
        #[arg(long, short, default_value = "ramboot.yaml", env = "RAMBOOT_CONFIG")]
        config: PathBuf,
        /// Do not send a DHCPDISCOVER to look for other DHCP servers.
        #[arg(long)]
        no_probe: bool,
        /// How long to listen for other DHCP servers' offers (dnsmasq pings an
        /// address for up to 3 s before it offers it).
        #[arg(long, default_value_t = 5)]
        probe_secs: u64,
    },
    /// Print a shell completion script (e.g. `ramboot completions bash >
    /// /usr/share/bash-completion/completions/ramboot`).
    Completions {
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Write the man pages (ramboot.1 and one per subcommand) into a directory.
    Man {
        #[arg(default_value = ".")]
        dir: PathBuf,
    },
}

#[derive(Subcommand)]
enum DbCmd {
    /// Copy every table of one ramboot database into another, ids kept: SQLite to
    /// PostgreSQL (or back, or like to like).
    ///
    /// Stop `ramboot serve` (or at least its DHCP) on the source first: the source is
    /// read in one snapshot, so leases and events written after it starts are not
    /// copied. Both databases are migrated to this version's schema first. The
    /// target is written in one transaction: all of it or nothing. A target that
    /// holds any row is refused unless --force, which deletes its rows in that same
    /// transaction. PostgreSQL passwords come from --from-password-file /
    /// --to-password-file (mode 0600) or PGPASSWORD, never from the URL.
    Copy {
        /// The database to copy: sqlite:///var/lib/ramboot/ramboot.db or postgres://user@host/db.
        #[arg(long)]
        from: String,
        /// The database to fill: postgres://user@host/db (unix socket:
        /// postgres:///db?host=/var/run/postgresql) or sqlite:///path.
        #[arg(long)]
        to: String,
        /// The source's PostgreSQL password, on the first line of a private file.
        #[arg(long)]
        from_password_file: Option<PathBuf>,
        /// The target's PostgreSQL password, on the first line of a private file.
        #[arg(long)]
        to_password_file: Option<PathBuf>,
        /// Replace whatever rows the target holds.
        #[arg(long)]
        force: bool,
    },
}

/// Where the admin API is, and the token to call it with.
#[derive(clap::Args, Clone)]
struct ApiArgs {
    #[arg(long, default_value = "http://127.0.0.1:8080", env = "RAMBOOT_SERVER", global = true)]
    server: String,
    /// API token (the first admin token is in `<data>/admin.token`).
    #[arg(long, env = "RAMBOOT_TOKEN", hide_env_values = true, global = true)]
    token: Option<String>,
    /// Print the API's JSON instead of a table.
    #[arg(long, global = true)]
    json: bool,
}

impl ApiArgs {
    fn client(&self) -> cli::ApiClient {
        cli::ApiClient::new(&self.server, self.token.clone())
    }
}

#[derive(Subcommand)]
enum ImageCmd {
    /// Run the recipe `images/<recipe>/build.sh` and store its artifacts.
    Build {
        recipe: String,
        /// Data directory (images go under `<data>/images`).
        #[arg(long, default_value = "data")]
        data: PathBuf,
        #[arg(long, default_value = "images")]
        recipes: PathBuf,
        #[arg(long, default_value = ".cache/images")]
        cache: PathBuf,
        /// Static agent binary for stage-one recipes (default: a `ramboot-agent` next
        /// to this executable); with --arch, one built for that architecture.
        #[arg(long)]
        agent: Option<PathBuf>,
        /// Build for another architecture (arm64): the image is `<recipe>-<arch>`.
        /// The host needs `dpkg --add-architecture arm64 && apt-get update`.
        #[arg(long, value_parser = ["arm64", "amd64"])]
        arch: Option<String>,
    },
    /// List images: from a running server, or from a local data directory with --data.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    /// List nodes.
    Ls {
        #[arg(long)]
        state: Option<String>,
        #[arg(long)]
        profile: Option<String>,
        /// key=value
        #[arg(long)]
        label: Option<String>,
        /// Only nodes whose MAC, hostname, IP or BMC URL contains this (any case).
        #[arg(long)]
        search: Option<String>,
    },
    /// Show one node (by id or MAC) with its event timeline.
    Show { id: String },
    /// Register a node before it boots.
    Add {
        mac: String,
        #[arg(long)]
        hostname: Option<String>,
        #[arg(long)]
        profile: Option<String>,
        /// key=value, repeatable
        #[arg(long = "label")]
        labels: Vec<String>,
    },
    /// Assign a profile (or clear the assignment with --clear).
    Assign {
        id: String,
        #[arg(required_unless_present = "clear")]
        profile: Option<String>,
        #[arg(long, conflicts_with = "profile")]
        clear: bool,
    },
    /// Choose the node's boot chain for UEFI PXE: `signed` (Secure Boot: shim,
    /// GRUB, the signed kernel), `ipxe`, or `profile` (its profile's again).
    BootChain {
        id: String,
        #[arg(value_parser = ["ipxe", "signed", "profile"])]
        chain: String,
    },
    /// Set labels (key=value) and remove others (key-).
    Label {
        id: String,
        #[arg(required = true)]
        changes: Vec<String>,
    },
    /// Reserve a DHCP address for a node (or clear it with --clear).
    Reserve {
        id: String,
        #[arg(required_unless_present = "clear")]
        ip: Option<String>,
        #[arg(long, conflicts_with = "ip")]
        clear: bool,
        /// Take the address over from the MAC that holds a lease on it (ends that lease).
        #[arg(long)]
        take_over: bool,
    },
    /// Make the next boot load afresh (clears failures and the current boot).
    Reprovision { id: String },
    /// A node's iSCSI login settings; `--mutual-chap on|off` switches mutual CHAP
    /// (the node then logs in only to a target that proves itself too).
    Iscsi {
        id: String,
        #[arg(long, value_parser = ["on", "off"])]
        mutual_chap: Option<String>,
    },
    /// Vouch for a node: it may boot profiles that render secrets or attach volumes
    /// even when only facts it reports itself (serial, UUID) matched it.
    Approve {
        id: String,
        /// Take the approval back instead.
        #[arg(long)]
        revoke: bool,
    },
    /// Take a node out of service (--on) or return it (--off).
    Maintenance {
        id: String,
        #[arg(long, conflicts_with = "off", required_unless_present = "off")]
        on: bool,
        #[arg(long)]
        off: bool,
        #[arg(long)]
        reason: Option<String>,
    },
    /// A node's power through its BMC (Redfish): on, off (forced), cycle, or status.
    Power {
        id: String,
        #[arg(value_parser = ["on", "off", "cycle", "status"])]
        action: String,
        /// Boot from the network once: a one-time PXE override before the action.
        #[arg(long)]
        pxe: bool,
    },
    /// Forget a node. Its volumes are detached and kept unless --delete-volumes.
    Rm {
        id: String,
        #[arg(long)]
        delete_volumes: bool,
    },
}

#[derive(Subcommand)]
enum VolumesCmd {
    /// List volumes and where they are attached.
    Ls,
    /// Show one volume.
    Show { name: String },
    /// Create a volume (sparse): SIZE like 20G, 512M or bytes.
    Create { name: String, size: String },
    /// Export a volume to a node (id or MAC) as its next LUN.
    Attach { name: String, node: String },
    /// Stop exporting a volume (its data stays).
    Detach { name: String },
    /// Grow a volume to SIZE (like 40G); attached nodes see it after a rescan.
    Grow { name: String, size: String },
    /// Delete a detached volume and its data.
    Rm { name: String },
}

#[derive(Subcommand)]
enum TokensCmd {
    /// List tokens (names and roles; secrets are never shown again).
    Ls,
    /// Create a token and print it once.
    Create {
        name: String,
        #[arg(long, value_parser = ["read", "admin"], default_value = "read")]
        role: String,
        /// Refuse the token after this long: time-boxed access (2h, 30m, 7d).
        #[arg(long, value_parser = humantime::parse_duration)]
        expires: Option<std::time::Duration>,
    },
    /// Revoke a token.
    Rm { name: String },
}

#[derive(Subcommand)]
enum RolloutCmd {
    /// Start a rollout over the nodes matching every criterion given.
    ///
    /// Each node: drain hook, one-time PXE boot and power cycle through its BMC
    /// (a node without one is rebooted by its agent, `ramboot-agent commands`),
    /// wait for `ready` on the new revision, undrain hook. Hooks are named in the
    /// server's config (`hooks:`).
    Start {
        /// Only nodes with this label (key=value; repeat for several).
        #[arg(long = "label")]
        labels: Vec<String>,
        /// Only nodes assigned this profile now.
        #[arg(long)]
        profile: Option<String>,
        /// Only these nodes (id or MAC; repeat).
        #[arg(long = "node")]
        nodes: Vec<String>,
        /// Assign this profile before each node's reboot (else each reboots into
        /// its own profile's current image).
        #[arg(long)]
        to_profile: Option<String>,
        /// Nodes down at once.
        #[arg(long, default_value_t = 1)]
        batch: u32,
        /// Failed nodes tolerated; one more halts the rollout.
        #[arg(long, default_value_t = 0)]
        max_failures: u32,
        /// Hook run before each reboot (e.g. live-migrate the VMs away).
        #[arg(long)]
        drain: Option<String>,
        /// Hook run once each node is ready.
        #[arg(long)]
        undrain: Option<String>,
        /// How long a node may take from its reboot to ready (30m, 1h).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "30m")]
        ready_timeout: std::time::Duration,
        /// Show its progress until it ends or halts.
        #[arg(long, short)]
        follow: bool,
    },
    /// List rollouts, newest first.
    Ls,
    /// Show a rollout: its nodes, and its timeline.
    Show {
        id: i64,
        /// Keep showing progress until it ends or halts.
        #[arg(long, short)]
        follow: bool,
    },
    /// Start no new node; the ones in flight finish.
    Pause { id: i64 },
    /// Go on after a pause or a halt (failed nodes are tried again).
    Resume { id: i64 },
    /// Stop driving it; nodes in flight are left as they are.
    Abort { id: i64 },
}

#[derive(Subcommand)]
enum InventoryCmd {
    /// The server's inventory files, the revision each applied, and refused files.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Validate every inventory file in a directory; errors print as file:line:col.
    /// Exits non-zero when any file is invalid.
    Validate {
        #[arg(default_value = "inventory")]
        dir: PathBuf,
        /// Also check against this server configuration, as the server would:
        /// profile names, DHCP subnets for reserved addresses, BMC credentials in
        /// its secrets file.
        #[arg(long, short)]
        config: Option<PathBuf>,
    },
}

#[derive(Subcommand)]
enum ProfilesCmd {
    /// List the server's profiles and any reload errors.
    Ls {
        #[command(flatten)]
        api: ApiArgs,
    },
    /// Validate every profile in a directory; errors print as file:line:col.
    Validate {
        #[arg(default_value = "profiles")]
        dir: PathBuf,
        /// Also check that referenced images are built in this data directory.
        #[arg(long)]
        data: Option<PathBuf>,
    },
}

/// The server's log lines (`serve --log-format`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Text,
    Json,
}

/// Is stderr connected to journald (`JOURNAL_STREAM` names its device and inode)?
fn stderr_is_journal() -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(stream) = std::env::var("JOURNAL_STREAM") else { return false };
    let Some((dev, ino)) = stream.split_once(':') else { return false };
    let Ok(meta) = std::fs::metadata("/proc/self/fd/2") else { return false };
    dev.parse() == Ok(meta.dev()) && ino.parse() == Ok(meta.ino())
}

fn init_tracing(format: LogFormat) {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    let builder = tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr);
    match format {
        LogFormat::Json => builder.json().flatten_event(true).with_current_span(true).init(),
        LogFormat::Text => {
            // Colour codes only for a person at a terminal (and never with NO_COLOR).
            let ansi = std::io::stderr().is_terminal() && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
            let builder = builder.with_ansi(ansi);
            if stderr_is_journal() {
                builder.without_time().init();
            } else {
                builder.init();
            }
        }
    }
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Doctor { config, no_probe, probe_secs } => {
            let options = ramboot::doctor::Options {
                probe_dhcp: !no_probe,
                probe_wait: std::time::Duration::from_secs(probe_secs.clamp(1, 60)),
            };
            let findings = tokio::runtime::Runtime::new()?.block_on(ramboot::doctor::run(&config, options));
            for finding in &findings {
                println!("{finding}");
            }
            std::process::exit(ramboot::doctor::exit_code(&findings));
        }
        Cmd::Completions { shell } => {
            let mut command = <Args as clap::CommandFactory>::command();
            clap_complete::generate(shell, &mut command, "ramboot", &mut std::io::stdout());
            Ok(())
        }
        Cmd::Man { dir } => {
            std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
            let command = <Args as clap::CommandFactory>::command();
            clap_mangen::generate_to(command, &dir)
                .with_context(|| format!("writing man pages into {}", dir.display()))?;
            let pages = std::fs::read_dir(&dir)?
                .filter(|e| e.as_ref().is_ok_and(|e| e.path().extension().is_some_and(|x| x == "1")))
                .count();
            eprintln!("ramboot: {pages} man pages in {}", dir.display());
            Ok(())
        }
        Cmd::Serve { config, log_format } => {
            init_tracing(log_format);
            let config = Config::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(ramboot::serve::run(config))
        }
        Cmd::Images { command: ImageCmd::Build { recipe, data, recipes, cache, agent, arch } } => {
            let packs_agent =
                std::fs::read_to_string(recipes.join(&recipe).join("build.sh")).is_ok_and(|s| s.contains("AGENT"));
            let agent = match agent {
                Some(a) => Some(a),
                None if packs_agent && arch.is_some() => {
                    anyhow::bail!("recipe {recipe} for {arch:?} packs an agent built for it: pass --agent")
                }
                None if packs_agent => Some(agent_beside_exe(&recipe)?),
                None => None,
            };
            let store = images::ImageStore::new(data.join("images"));
            let started = std::time::Instant::now();
            let request = images::BuildRequest {
                recipe,
                recipes_dir: recipes,
                cache_dir: cache,
                agent: agent.map(std::path::absolute).transpose()?,
                arch,
                now_ms: ramboot::clock::now_ms(),
            };
            let manifest = images::build(&store, &request)?;
            println!("built {} ({:?}) in {:.0}s", manifest.name, manifest.kind, started.elapsed().as_secs_f64());
            for (role, a) in &manifest.artifacts {
                println!("  {role:<7} {:>10}  {}  sha256:{}", human_bytes(a.size), a.format, a.digest);
            }
            Ok(())
        }
        Cmd::Images { command: ImageCmd::Ls { api, data } } => {
            let list = match data {
                Some(data) => {
                    images::ImageStore::new(data.join("images")).list()?.into_iter().map(Into::into).collect()
                }
                None => api.client().images()?,
            };
            if api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!("{:<14} {:<7} {:<7} {:>10}  DIGEST", "NAME", "KIND", "ROLE", "SIZE");
            for m in list {
                for (role, a) in &m.artifacts {
                    let kind = format!("{:?}", m.kind).to_lowercase();
                    println!("{:<14} {:<7} {:<7} {:>10}  {}", m.name, kind, role, human_bytes(a.size), a.digest);
                }
            }
            Ok(())
        }
        Cmd::Db { command: DbCmd::Copy { from, to, from_password_file, to_password_file, force } } => {
            let from = copy::Endpoint { url: &from, password_file: from_password_file.as_deref() };
            let to = copy::Endpoint { url: &to, password_file: to_password_file.as_deref() };
            let copied = tokio::runtime::Runtime::new()?
                .block_on(copy::run(from, to, force, &mut copy_progress(std::io::stderr().is_terminal())))
                .context("db copy: nothing was copied")?;
            for (table, rows) in copied {
                println!("{table}: {rows}");
            }
            Ok(())
        }
        Cmd::Nodes { api, command } => nodes(&api, command),
        Cmd::Tokens { api, command } => tokens(&api, command),
        Cmd::Volumes { api, command } => volumes(&api, command),
        Cmd::Profiles { command: ProfilesCmd::Ls { api } } => {
            let list = api.client().profiles()?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!("{:<16} {:<10} {:<14} {:<4} FILE", "NAME", "STAGE1", "IMAGE", "SEL");
            for p in &list.profiles {
                let pr = &p.profile;
                println!("{:<16} {:<10} {:<14} {:<4} {}", pr.name, pr.stage1, pr.image, pr.selectors.len(), p.file);
            }
            for e in &list.errors {
                println!("error: {e}");
            }
            Ok(())
        }
        Cmd::Inventory { command } => inventory(command),
        Cmd::Rollout { api, command } => rollout(&api, command),
        Cmd::Profiles { command: ProfilesCmd::Validate { dir, data } } => {
            let store = data.map(|d| images::ImageStore::new(d.join("images")));
            let ctx = profiles::Context::for_dir(&dir, store.as_ref());
            let set =
                profiles::load_dir(&dir, &ctx).map_err(|e| anyhow::anyhow!("{e}")).context("profiles are invalid")?;
            for (p, path) in set.iter() {
                println!("ok  {:<16} {}", p.name, path.display());
            }
            Ok(())
        }
        Cmd::Audit { api, node, actor, follow } => audit(&api, node, actor, follow),
        Cmd::Events { api, follow, node, last } => {
            let client = api.client();
            let path = match &node {
                Some(n) => format!("/nodes/{}/events", cli::encode(n)),
                None => "/events".to_string(),
            };
            // With --follow, the newest event id *before* the tail is read: an empty
            // tail then follows on from it, so an event that lands between the two
            // requests is streamed, not skipped.
            let newest_before =
                if follow { client.get::<Vec<Event>>("/events?last=1")?.last().map_or(0, |e| e.id) } else { 0 };
            // The tail of the log first, then (with --follow) everything after it.
            let recent: Vec<Event> = client.get(&format!("{path}?last={}", last.clamp(1, 500)))?;
            let mut shown = newest_before;
            for e in &recent {
                print_one(&api, e)?;
                shown = e.id;
            }
            if follow {
                let node_id = match &node {
                    Some(n) => Some(client.node(n)?.node.id),
                    None => None,
                };
                client.follow_events(Some(shown), |e| {
                    if node_id.is_none_or(|id| id == e.node_id) {
                        print_one(&api, &e)?;
                    }
                    Ok(())
                })?;
                eprintln!("the server closed the event stream (it stopped or is restarting)");
            }
            Ok(())
        }
    }
}

/// `db copy`'s progress on stderr: one line per table, rewritten in place on a
/// terminal as batches go by (a long table takes a while).
fn copy_progress(terminal: bool) -> impl FnMut(&str, u64, u64) {
    move |table, done, total| {
        if terminal {
            eprint!("\rcopying {table}: {done}/{total} rows");
            if done == total {
                eprintln!();
            }
        } else if done == total {
            eprintln!("copied {table}: {done}/{total} rows");
        }
    }
}

/// The static agent a stage-one recipe packs, when `--agent` names none: a
/// `ramboot-agent` next to this executable, as a release install lays them out. The
/// server never builds it; the message says how.
fn agent_beside_exe(recipe: &str) -> Result<PathBuf> {
    let exe = std::env::current_exe().context("finding this executable")?;
    let beside = exe.with_file_name("ramboot-agent");
    if beside.is_file() {
        return Ok(beside);
    }
    anyhow::bail!(
        "recipe {recipe} packs the static ramboot-agent, and there is none at {}: build it with\n  \
         RUSTFLAGS='-C target-feature=+crt-static' cargo build --release -p ramboot-agent \
         --target x86_64-unknown-linux-gnu --target-dir target/agent\n\
         and pass --agent target/agent/x86_64-unknown-linux-gnu/release/ramboot-agent",
        beside.display()
    )
}

fn print_one(api: &ApiArgs, e: &Event) -> Result<()> {
    use std::io::Write;
    if api.json {
        println!("{}", serde_json::to_string(e)?);
    } else {
        cli::print_event(e);
    }
    std::io::stdout().flush()?;
    Ok(())
}

fn nodes(api: &ApiArgs, command: NodesCmd) -> Result<()> {
    let client = api.client();
    let show = |value: serde_json::Value| -> Result<()> {
        if api.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else if let Ok(node) = serde_json::from_value::<ramboot_api::Node>(value) {
            cli::print_nodes(std::slice::from_ref(&node));
        }
        Ok(())
    };
    match command {
        NodesCmd::Ls { state, profile, label, search } => {
            let mut query = String::new();
            for (key, value) in [("state", state), ("profile", profile), ("label", label), ("q", search)] {
                if let Some(v) = value {
                    query.push_str(&format!("&{key}={}", cli::encode(&v)));
                }
            }
            let nodes = client.all_nodes(&query)?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&nodes)?);
            } else {
                cli::print_nodes(&nodes);
            }
        }
        NodesCmd::Show { id } => {
            if api.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&client.get_json(&format!("/nodes/{}", cli::encode(&id)))?)?
                );
            } else {
                cli::print_node(&client.node(&id)?);
            }
        }
        NodesCmd::Add { mac, hostname, profile, labels } => {
            let labels = parse_labels(&labels)?;
            show(
                client
                    .post("/nodes", json!({"mac": mac, "hostname": hostname, "profile": profile, "labels": labels}))?,
            )?;
        }
        NodesCmd::Assign { id, profile, clear } => {
            let profile = if clear { None } else { profile };
            show(client.patch(&format!("/nodes/{}", cli::encode(&id)), json!({ "profile": profile }))?)?;
        }
        NodesCmd::BootChain { id, chain } => {
            let chain = (chain != "profile").then_some(chain);
            show(client.patch(&format!("/nodes/{}", cli::encode(&id)), json!({ "boot_chain": chain }))?)?;
        }
        NodesCmd::Label { id, changes } => {
            let current = client.node(&id)?.node.labels;
            let mut labels = current.clone();
            for change in &changes {
                match change.strip_suffix('-') {
                    Some(key) if !change.contains('=') => {
                        labels.remove(key);
                    }
                    _ => {
                        let (k, v) =
                            change.split_once('=').with_context(|| format!("{change:?}: use key=value or key-"))?;
                        labels.insert(k.to_string(), v.to_string());
                    }
                }
            }
            show(client.patch(&format!("/nodes/{}", cli::encode(&id)), json!({ "labels": labels }))?)?;
        }
        NodesCmd::Reserve { id, ip, clear, take_over } => {
            let ip = if clear { None } else { ip };
            let body = json!({ "reserved_ip": ip, "take_over": take_over });
            show(client.patch(&format!("/nodes/{}", cli::encode(&id)), body)?)?
        }
        NodesCmd::Iscsi { id, mutual_chap } => {
            let path = format!("/nodes/{}/iscsi", cli::encode(&id));
            let value = match mutual_chap {
                Some(on) => client.put(&path, json!({ "mutual_chap": on == "on" }))?,
                None => client.get_json(&path)?,
            };
            if api.json {
                println!("{}", serde_json::to_string_pretty(&value)?);
            } else {
                cli::print_node_iscsi(&serde_json::from_value(value).context("unexpected answer from the API")?);
            }
        }
        NodesCmd::Approve { id, revoke: false } => {
            show(client.post(&format!("/nodes/{}/approve", cli::encode(&id)), json!({}))?)?
        }
        NodesCmd::Approve { id, revoke: true } => {
            show(client.patch(&format!("/nodes/{}", cli::encode(&id)), json!({ "approved": false }))?)?
        }
        NodesCmd::Reprovision { id } => {
            show(client.post(&format!("/nodes/{}/reprovision", cli::encode(&id)), json!({}))?)?
        }
        NodesCmd::Maintenance { id, on, off: _, reason } => {
            let body = json!({ "enabled": on, "reason": reason });
            show(client.post(&format!("/nodes/{}/maintenance", cli::encode(&id)), body)?)?
        }
        NodesCmd::Power { id, action, pxe } => power(api, &client, &id, &action, pxe)?,
        NodesCmd::Rm { id, delete_volumes } => {
            let query = if delete_volumes { "?delete_volumes=true" } else { "" };
            client.delete(&format!("/nodes/{}{query}", cli::encode(&id)))?;
            if !api.json {
                println!("removed node {id}");
            }
        }
    }
    Ok(())
}

/// `nodes power`: one line for people (`node MAC: power on (was off, now on; ...)`),
/// the API's JSON with --json.
fn power(api: &ApiArgs, client: &cli::ApiClient, id: &str, action: &str, pxe: bool) -> Result<()> {
    let path = format!("/nodes/{}/power", cli::encode(id));
    let value = if action == "status" {
        anyhow::ensure!(!pxe, "--pxe goes with on, off or cycle, not status");
        client.get_json(&path)?
    } else {
        client.post(&path, json!({ "action": action, "pxe_once": pxe }))?
    };
    if api.json {
        println!("{}", serde_json::to_string_pretty(&value)?);
    } else if action == "status" {
        let s: ramboot_api::PowerStatus = serde_json::from_value(value).context("unexpected answer from the API")?;
        let boot = match s.boot_override {
            Some(b) if b.target != "None" => {
                format!("; boot override {} ({})", b.target, b.enabled.as_deref().unwrap_or("unspecified"))
            }
            _ => String::new(),
        };
        println!("node {}: power {}{boot} (BMC {})", s.mac, s.power.as_str(), s.bmc_url);
    } else {
        let r: ramboot_api::PowerResult = serde_json::from_value(value).context("unexpected answer from the API")?;
        let pxe = if r.pxe_once { "; one-time PXE boot set" } else { "" };
        println!(
            "node {}: power {} (was {}, now {}{pxe})",
            r.mac,
            r.action.as_str(),
            r.before.as_str(),
            r.power.as_str()
        );
    }
    Ok(())
}

fn parse_labels(labels: &[String]) -> Result<std::collections::BTreeMap<String, String>> {
    labels
        .iter()
        .map(|l| {
            let (k, v) = l.split_once('=').with_context(|| format!("label {l:?}: use key=value"))?;
            Ok((k.to_string(), v.to_string()))
        })
        .collect()
}

fn rollout(api: &ApiArgs, command: RolloutCmd) -> Result<()> {
    let client = api.client();
    let print = |r: &ramboot_api::Rollout| -> Result<()> {
        if api.json {
            println!("{}", serde_json::to_string_pretty(r)?);
        } else {
            cli::print_rollout(r);
        }
        Ok(())
    };
    match command {
        RolloutCmd::Start {
            labels,
            profile,
            nodes,
            to_profile,
            batch,
            max_failures,
            drain,
            undrain,
            ready_timeout,
            follow,
        } => {
            let body = json!({
                "labels": parse_labels(&labels)?,
                "profile": profile,
                "nodes": nodes,
                "to_profile": to_profile,
                "batch_size": batch,
                "max_failures": max_failures,
                "drain": drain,
                "undrain": undrain,
                "ready_timeout_secs": ready_timeout.as_secs().max(1),
            });
            let started: ramboot_api::Rollout = serde_json::from_value(client.post("/rollouts", body)?)?;
            eprintln!("rollout {} started: {}", started.id, started.description);
            if follow {
                return cli::follow_rollout(&client, started.id, api.json);
            }
            print(&started)
        }
        RolloutCmd::Ls => {
            let list: Vec<ramboot_api::Rollout> = client.get("/rollouts")?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!("{:<5} {:<8} {:>4} {:>5} {:<24} DESCRIPTION", "ID", "STATUS", "DONE", "NODES", "STARTED");
            for r in &list {
                println!(
                    "{:<5} {:<8} {:>4} {:>5} {:<24} {}",
                    r.id,
                    r.status,
                    r.progress.done,
                    r.progress.total,
                    cli::format_ms(r.created_at_ms),
                    r.description
                );
            }
            Ok(())
        }
        RolloutCmd::Show { id, follow: true } => cli::follow_rollout(&client, id, api.json),
        RolloutCmd::Show { id, follow: false } => {
            let r: ramboot_api::Rollout = client.get(&format!("/rollouts/{id}"))?;
            print(&r)?;
            if !api.json {
                let events: Vec<ramboot_api::RolloutEvent> = client.get(&format!("/rollouts/{id}/events?limit=500"))?;
                println!();
                for e in &events {
                    cli::print_rollout_event(&r, e);
                }
            }
            Ok(())
        }
        RolloutCmd::Pause { id } | RolloutCmd::Resume { id } | RolloutCmd::Abort { id } => {
            let verb = match command {
                RolloutCmd::Pause { .. } => "pause",
                RolloutCmd::Resume { .. } => "resume",
                _ => "abort",
            };
            let r: ramboot_api::Rollout =
                serde_json::from_value(client.post(&format!("/rollouts/{id}/{verb}"), json!({}))?)?;
            eprintln!("rollout {id}: {verb} requested (status {})", r.status);
            Ok(())
        }
    }
}

fn inventory(command: InventoryCmd) -> Result<()> {
    match command {
        InventoryCmd::Ls { api } => {
            let inv: ramboot_api::Inventory = api.client().get("/inventory")?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&inv)?);
                return Ok(());
            }
            println!("{:<32} {:<13} {:>5} APPLIED", "FILE", "REVISION", "NODES");
            for f in &inv.files {
                let applied = f.applied.as_deref().unwrap_or("no");
                println!("{:<32} {:<13} {:>5} {applied}", f.name, f.revision, f.nodes);
            }
            for e in &inv.errors {
                println!("error: {e}");
            }
            Ok(())
        }
        InventoryCmd::Validate { dir, config } => {
            let checks = match config {
                Some(path) => {
                    let config = Config::load(&path).with_context(|| format!("loading {}", path.display()))?;
                    let ctx = profiles::Context::for_dir(&config.paths.profiles, None);
                    let set = profiles::load_dir(&config.paths.profiles, &ctx)
                        .map_err(|e| anyhow::anyhow!("{e}"))
                        .context("the profiles the inventory refers to are invalid")?;
                    let names = set.iter().map(|(p, _)| p.name.clone()).collect();
                    ramboot::inventory::Checks::for_config(&config, names).map_err(|e| anyhow::anyhow!("{e}"))?
                }
                None => ramboot::inventory::Checks::default(),
            };
            if !dir.is_dir() {
                anyhow::bail!("{}: not a directory", dir.display());
            }
            let (set, errors) = ramboot::inventory::assemble(&dir, &checks, None);
            for f in set.files.values() {
                println!("ok  {:<32} {:>5} nodes  revision {}", f.name, f.nodes.len(), f.revision);
            }
            for e in &errors {
                eprintln!("{e}");
            }
            if !errors.is_empty() {
                anyhow::bail!("{} inventory file(s) invalid", errors.len());
            }
            Ok(())
        }
    }
}

fn audit(api: &ApiArgs, node: Option<String>, actor: Option<String>, follow: bool) -> Result<()> {
    let client = api.client();
    let mut filter = String::new();
    if let Some(n) = &node {
        filter.push_str(&format!("&node={}", cli::encode(n)));
    }
    if let Some(a) = &actor {
        filter.push_str(&format!("&actor={}", cli::encode(a)));
    }
    let mut after = 0;
    loop {
        let page: ramboot_api::AuditList = client.get(&format!("/audit?after={after}&limit=500{filter}"))?;
        for r in &page.records {
            if api.json {
                println!("{}", serde_json::to_string(r)?);
            } else {
                println!("{}", cli::format_audit(r));
            }
            after = r.id;
        }
        if page.next_after.is_none() {
            if !follow {
                return Ok(());
            }
            // Changes are rare: polling once a second is cheap and survives restarts.
            std::thread::sleep(std::time::Duration::from_secs(1));
        }
    }
}

fn tokens(api: &ApiArgs, command: TokensCmd) -> Result<()> {
    let client = api.client();
    match command {
        TokensCmd::Ls => {
            let list = client.get_json("/tokens")?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&list)?);
                return Ok(());
            }
            println!("{:<24} {:<6} {:<24} EXPIRES", "NAME", "ROLE", "CREATED");
            let now = ramboot::clock::now_ms();
            for t in list.as_array().into_iter().flatten() {
                let created = cli::format_ms(t["created_at_ms"].as_i64().unwrap_or(0));
                let expires = match t["expires_at_ms"].as_i64() {
                    Some(at) if at <= now => format!("{} (expired)", cli::format_ms(at)),
                    Some(at) => cli::format_ms(at),
                    None => "never".to_string(),
                };
                println!(
                    "{:<24} {:<6} {created:<24} {expires}",
                    t["name"].as_str().unwrap_or("?"),
                    t["role"].as_str().unwrap_or("?")
                );
            }
        }
        TokensCmd::Create { name, role, expires } => {
            let mut body = json!({ "name": name, "role": role });
            if let Some(d) = expires {
                body["expires_in_seconds"] = json!(d.as_secs().max(1));
            }
            let created = client.post("/tokens", body)?;
            if api.json {
                println!("{}", serde_json::to_string_pretty(&created)?);
            } else {
                let until = match created["expires_at_ms"].as_i64() {
                    Some(at) => format!(", valid until {}", cli::format_ms(at)),
                    None => String::new(),
                };
                // The secret alone on stdout, so it can be captured; the note goes to stderr.
                eprintln!("token {name} ({role}{until}) created; it is shown only this once:");
                println!("{}", created["token"].as_str().unwrap_or_default());
            }
        }
        TokensCmd::Rm { name } => {
            client.delete(&format!("/tokens/{}", cli::encode(&name)))?;
            eprintln!("token {name} revoked");
        }
    }
    Ok(())
}

fn volumes(api: &ApiArgs, command: VolumesCmd) -> Result<()> {
    let client = api.client();
    let show = |value: serde_json::Value| -> Result<()> {
        if api.json {
            println!("{}", serde_json::to_string_pretty(&value)?);
        } else {
            let list = match value {
                serde_json::Value::Array(items) => items,
                one => vec![one],
            };
            println!("{:<24} {:>10} {:<6} LUN", "NAME", "SIZE", "NODE");
            for v in &list {
                let node = v["node_id"].as_i64().map_or("-".to_string(), |n| n.to_string());
                let lun = v["lun"].as_u64().map_or("-".to_string(), |n| n.to_string());
                let size = human_bytes(v["size_bytes"].as_u64().unwrap_or(0));
                println!("{:<24} {:>10} {:<6} {lun}", v["name"].as_str().unwrap_or("?"), size, node);
            }
        }
        Ok(())
    };
    let path = |name: &str, action: &str| format!("/volumes/{}{action}", cli::encode(name));
    match command {
        VolumesCmd::Ls => show(client.get_json("/volumes")?)?,
        VolumesCmd::Show { name } => show(client.get_json(&path(&name, ""))?)?,
        VolumesCmd::Create { name, size } => {
            let size_bytes = ramboot_proto::parse_size(&size).map_err(anyhow::Error::msg)?;
            show(client.post("/volumes", json!({ "name": name, "size_bytes": size_bytes }))?)?
        }
        VolumesCmd::Attach { name, node } => show(client.post(&path(&name, "/attach"), json!({ "node": node }))?)?,
        VolumesCmd::Detach { name } => show(client.post(&path(&name, "/detach"), json!({}))?)?,
        VolumesCmd::Grow { name, size } => {
            let size_bytes = ramboot_proto::parse_size(&size).map_err(anyhow::Error::msg)?;
            show(client.post(&path(&name, "/grow"), json!({ "size_bytes": size_bytes }))?)?
        }
        VolumesCmd::Rm { name } => {
            client.delete(&path(&name, ""))?;
            eprintln!("volume {name} deleted with its data");
        }
    }
    Ok(())
}
