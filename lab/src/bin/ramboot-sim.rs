//! `ramboot-sim`: simulate a fleet of nodes netbooting at once against a running
//! server (a boot storm), over real DHCP (as a relay), TFTP and HTTP, and report
//! per-phase latency. The simulator itself is [`ramboot_lab::sim`].

use anyhow::{Context, Result};
use clap::Parser;
use ramboot_lab::sim::SimOptions;

#[derive(Parser)]
#[command(
    name = "ramboot-sim",
    version,
    about = "Simulate a fleet of nodes netbooting at once against a running ramboot server (a boot storm), \
             over real DHCP (as a relay), TFTP and HTTP; report per-phase latency."
)]
struct Args {
    #[command(flatten)]
    opts: SimOptions,
}

fn main() -> Result<()> {
    let Args { opts } = Args::parse();
    let filter = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into());
    tracing_subscriber::fmt().with_env_filter(filter).with_writer(std::io::stderr).init();
    let report = tokio::runtime::Runtime::new()?.block_on(ramboot_lab::sim::run(&opts))?;
    print!("{}", report.table());
    if let Some(path) = &opts.json {
        std::fs::write(path, serde_json::to_vec_pretty(&report)?)
            .with_context(|| format!("writing {}", path.display()))?;
    }
    anyhow::ensure!(report.failed == 0, "{} of {} simulated nodes failed to boot", report.failed, report.nodes);
    Ok(())
}
