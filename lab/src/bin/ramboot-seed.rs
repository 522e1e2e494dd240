//! `ramboot-seed`: write a fleet with history (nodes, labels, one boot each with
//! its phases; some failed, some in maintenance, some still booting) into a
//! ramboot database, through the store's own methods. For the dashboard's
//! benchmark and for looking at the dashboard without a fleet. See
//! [`ramboot_lab::seed`].

use anyhow::{Context, Result};
use clap::Parser;

#[derive(Parser)]
#[command(name = "ramboot-seed", version, about = "Write a fleet with boot history into a ramboot database")]
struct Args {
    /// The database (`sqlite:///path/ramboot.db` or `postgres://…`); created and
    /// migrated if needed. Stop the server using it first when it is SQLite.
    #[arg(long)]
    database: String,
    /// Nodes to write (MACs 52:54:00:xx:xx:xx from `--first`).
    #[arg(long, default_value_t = 500)]
    nodes: u32,
    #[arg(long, default_value_t = 0)]
    first: u32,
    /// The profile every node is assigned.
    #[arg(long, default_value = "tiny")]
    profile: String,
}

fn main() -> Result<()> {
    let args = Args::parse();
    tokio::runtime::Runtime::new()?.block_on(async {
        let store =
            ramboot::store::Store::open(&args.database).await.with_context(|| format!("opening {}", args.database))?;
        let now = ramboot::clock::now_ms();
        let started = std::time::Instant::now();
        // In chunks, saying how far it got: 5,000 nodes take a while on SQLite.
        const CHUNK: u32 = 250;
        let mut done = 0;
        while done < args.nodes {
            let n = CHUNK.min(args.nodes - done);
            ramboot_lab::seed::seed_fleet(&store, args.first + done, n, &args.profile, now).await?;
            done += n;
            eprintln!("seed: {done}/{} nodes ({:.1} s)", args.nodes, started.elapsed().as_secs_f64());
        }
        store.close().await;
        Ok(())
    })
}
