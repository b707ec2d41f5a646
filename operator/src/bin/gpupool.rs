//! `gpupool`: the operator and the cluster owners' CLI.

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gpupool",
    version,
    about = "Federated GPU pool: operator and owner CLI"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the hub cluster (in-cluster config or KUBECONFIG).
    Run(gpupool::controllers::RunArgs),
    /// Show GPU-seconds and tokens earned by a wallet or member cluster, on chain and in the hub's records.
    Earnings(gpupool::cli::earnings::EarningsArgs),
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Command::Run(args) => gpupool::controllers::run(args).await,
        Command::Earnings(args) => gpupool::cli::earnings::run(args).await,
    }
}
