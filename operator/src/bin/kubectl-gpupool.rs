//! `kubectl gpupool`: a kubectl plugin (install this binary on the PATH) with the pool commands
//! of `gpupool` — the same subcommands, flags and output formats.

use clap::{CommandFactory, Parser};

/// `kubectl gpupool` arguments.
#[derive(Parser)]
#[command(
    name = "kubectl-gpupool",
    bin_name = "kubectl gpupool",
    version,
    about = "Ask the gpupool hub why a job waits, where it runs, what the pool holds and what members earned; administer members"
)]
struct Plugin {
    #[command(flatten)]
    global: gpupool::cli::GlobalArgs,
    #[command(subcommand)]
    command: gpupool::cli::Command,
}

#[tokio::main]
async fn main() {
    let args = Plugin::parse();
    gpupool::cli::main(args.global, args.command, Plugin::command()).await;
}
