//! The `ramboot` command: server, image builder, lab and operator CLI in one binary.

use anyhow::{Context, Result};
use clap::{Parser, Subcommand};
use ramboot::{cli, config::Config, images, lab, profiles};
use std::path::PathBuf;
use std::time::Duration;

#[derive(Parser)]
#[command(name = "ramboot", version, about = "Diskless netboot provisioner: PXE-boot servers into RAM")]
struct Args {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Run the DHCP, TFTP and HTTP services.
    Serve {
        #[arg(long, short, default_value = "ramboot.yaml", env = "RAMBOOT_CONFIG")]
        config: PathBuf,
    },
    /// Build and list images.
    Image {
        #[command(subcommand)]
        command: ImageCmd,
    },
    /// Boot a QEMU VM through ramboot inside a private network namespace.
    Lab {
        /// Exit 0 once the node is ready (non-zero on failure or timeout).
        #[arg(long)]
        once: bool,
        #[arg(long, default_value = "tiny")]
        profile: String,
        #[arg(long, default_value = ".lab")]
        dir: PathBuf,
        /// The ramboot source checkout (recipes, profiles, agent crate).
        #[arg(long, default_value = env!("CARGO_MANIFEST_DIR"))]
        repo: PathBuf,
        /// Seconds to wait for the node to become ready.
        #[arg(long, default_value_t = 300)]
        timeout: u64,
        /// Boot with OVMF (UEFI) instead of SeaBIOS.
        #[arg(long)]
        uefi: bool,
        #[arg(long, default_value_t = 512)]
        memory_mb: u32,
        /// Rebuild the images even if they exist.
        #[arg(long)]
        rebuild: bool,
        /// Write the node's final state and events (from the admin API) to this file.
        #[arg(long)]
        report: Option<PathBuf>,
    },
    /// Inspect nodes through a running server's admin API.
    Nodes {
        #[arg(long, default_value = "http://127.0.0.1:8080", env = "RAMBOOT_SERVER", global = true)]
        server: String,
        #[command(subcommand)]
        command: NodesCmd,
    },
    /// Check profile files.
    Profiles {
        #[command(subcommand)]
        command: ProfilesCmd,
    },
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
        /// Static agent binary for stage-one recipes (built with cargo if omitted).
        #[arg(long)]
        agent: Option<PathBuf>,
    },
    /// List built images.
    Ls {
        #[arg(long, default_value = "data")]
        data: PathBuf,
    },
}

#[derive(Subcommand)]
enum NodesCmd {
    /// List nodes.
    Ls,
    /// Show one node (by id or MAC) with its event timeline.
    Show { id: String },
}

#[derive(Subcommand)]
enum ProfilesCmd {
    /// Validate every profile in a directory; errors print as file:line:col.
    Validate {
        #[arg(default_value = "profiles")]
        dir: PathBuf,
    },
}

fn init_tracing() {
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
}

fn main() -> Result<()> {
    let args = Args::parse();
    match args.command {
        Cmd::Serve { config } => {
            init_tracing();
            let config = Config::load(&config)?;
            tokio::runtime::Runtime::new()?.block_on(ramboot::serve::run(config))
        }
        Cmd::Image { command: ImageCmd::Build { recipe, data, recipes, cache, agent } } => {
            let agent = match agent {
                Some(a) => Some(a),
                None if std::fs::read_to_string(recipes.join(&recipe).join("build.sh"))
                    .is_ok_and(|s| s.contains("AGENT")) =>
                {
                    Some(lab::build_agent(&std::path::absolute(recipes.join(".."))?)?)
                }
                None => None,
            };
            let store = images::ImageStore::new(data.join("images"));
            let started = std::time::Instant::now();
            let request = images::BuildRequest {
                recipe,
                recipes_dir: recipes,
                cache_dir: cache,
                agent: agent.map(std::path::absolute).transpose()?,
                now_ms: ramboot::http::now_ms(),
            };
            let manifest = images::build(&store, &request)?;
            println!("built {} ({:?}) in {:.0}s", manifest.name, manifest.kind, started.elapsed().as_secs_f64());
            for (role, a) in &manifest.artifacts {
                println!("  {role:<7} {:>12} bytes  {}  sha256:{}", a.size, a.format, a.digest);
            }
            Ok(())
        }
        Cmd::Image { command: ImageCmd::Ls { data } } => {
            let store = images::ImageStore::new(data.join("images"));
            println!("{:<14} {:<7} {:<8} {:>12}  DIGEST", "NAME", "KIND", "ROLE", "BYTES");
            for m in store.list()? {
                for (role, a) in &m.artifacts {
                    println!(
                        "{:<14} {:<7} {:<8} {:>12}  {}",
                        m.name,
                        format!("{:?}", m.kind).to_lowercase(),
                        role,
                        a.size,
                        a.digest
                    );
                }
            }
            Ok(())
        }
        Cmd::Lab { once, profile, dir, repo, timeout, uefi, memory_mb, rebuild, report } => {
            let opts = lab::LabOptions {
                once,
                profile,
                dir,
                repo,
                timeout: Duration::from_secs(timeout),
                uefi,
                memory_mb,
                rebuild,
                report,
            };
            tokio::runtime::Runtime::new()?.block_on(lab::run(opts))
        }
        Cmd::Nodes { server, command } => {
            let client = cli::ApiClient::new(&server);
            match command {
                NodesCmd::Ls => cli::print_nodes(&client.nodes()?),
                NodesCmd::Show { id } => cli::print_node(&client.node(&id)?),
            }
            Ok(())
        }
        Cmd::Profiles { command: ProfilesCmd::Validate { dir } } => {
            let set = profiles::load_dir(&dir).map_err(|e| anyhow::anyhow!("{e}")).context("profiles are invalid")?;
            for (p, path) in set.iter() {
                println!("ok  {:<16} {}", p.name, path.display());
            }
            Ok(())
        }
    }
}
