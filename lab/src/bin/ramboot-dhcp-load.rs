//! `ramboot-dhcp-load`: offer DHCPv4 DORA load at a fixed rate, as a relay agent,
//! and print what came back as JSON (see [`ramboot_lab::dhcpload`]).

use anyhow::Result;
use clap::Parser;
use ramboot_lab::dhcpload::LoadOptions;

#[derive(Parser)]
#[command(
    name = "ramboot-dhcp-load",
    version,
    about = "Offer DHCPv4 DORA exchanges at a fixed rate as a relay agent (like perfdhcp -r/-R, at less CPU \
             per exchange) and print the counts, latencies and the generator's own CPU as JSON."
)]
struct Args {
    #[command(flatten)]
    opts: LoadOptions,
}

fn main() -> Result<()> {
    let Args { opts } = Args::parse();
    let report = ramboot_lab::dhcpload::run(&opts)?;
    println!("{}", serde_json::to_string(&report)?);
    Ok(())
}
