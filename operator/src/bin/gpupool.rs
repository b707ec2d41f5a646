//! `gpupool`: the operator, the member and join agents, and the pool's command line (the same
//! commands and flags as the `kubectl gpupool` plugin).

use clap::{CommandFactory, Parser, Subcommand};

#[derive(Parser)]
#[command(
    name = "gpupool",
    version,
    about = "Federated GPU pool: the operator, its agents and the pool's command line (also `kubectl gpupool`)"
)]
struct Cli {
    #[command(flatten)]
    global: gpupool::cli::GlobalArgs,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the operator against the hub cluster (in-cluster config or KUBECONFIG).
    Run(gpupool::controllers::RunArgs),
    /// Run in a member cluster: join the pool in pull mode and apply the hub's work here.
    MemberAgent(gpupool::member_agent::AgentArgs),
    /// Run the inference gateway: one endpoint on the hub for every InferenceJob's replicas.
    Gateway(gpupool::gateway::GatewayArgs),
    /// Run the hub's join controller (answers join requests, hands out member credentials).
    JoinController {
        /// Approve joining members without an admin.
        #[arg(long)]
        auto_approve: bool,
        /// Serve /healthz, /readyz and /metrics on this address (e.g. 0.0.0.0:8080).
        #[arg(long, value_name = "ADDR")]
        metrics_addr: Option<std::net::SocketAddr>,
    },
    #[command(flatten)]
    Pool(gpupool::cli::Command),
}

fn main() -> anyhow::Result<()> {
    limit_malloc_arenas();
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(run())
}

/// glibc's malloc gives threads that contend for the heap arenas of their own, up to eight per
/// core, and memory freed in one arena serves only that arena: as the operator's stores grow and
/// shrink on whichever tokio worker handles an event, every arena keeps its own high-water mark.
/// Two arenas are plenty for a process that mostly waits on the network (glibc's own advice for
/// such servers, `MALLOC_ARENA_MAX=2`). A `MALLOC_ARENA_MAX` set in the environment wins.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
fn limit_malloc_arenas() {
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: `mallopt` only sets an allocator parameter; it runs before any other thread
        // exists.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, 2);
        }
    }
}

#[cfg(not(all(target_os = "linux", target_env = "gnu")))]
fn limit_malloc_arenas() {}

async fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    if !matches!(cli.command, Command::Pool(_))
        && (cli.global.kubeconfig.is_some() || cli.global.context.is_some())
    {
        anyhow::bail!(
            "--kubeconfig and --context apply to the pool commands; the operator and its agents read KUBECONFIG or the in-cluster config"
        );
    }
    match cli.command {
        Command::Run(args) => gpupool::controllers::run(args).await,
        Command::Gateway(args) => {
            gpupool::telemetry::init_logging();
            gpupool::gateway::run(args).await
        }
        Command::MemberAgent(args) => {
            gpupool::telemetry::init_logging();
            gpupool::member_agent::run(args).await
        }
        Command::JoinController {
            auto_approve,
            metrics_addr,
        } => {
            gpupool::telemetry::init_logging();
            let hub = kube::Client::try_default().await?;
            let cfg = gpupool::join::controller::JoinConfig {
                auto_approve,
                metrics_addr,
                ..Default::default()
            };
            gpupool::join::controller::run(hub, cfg).await
        }
        Command::Pool(command) => {
            gpupool::cli::main(cli.global, command, Cli::command()).await;
            Ok(())
        }
    }
}
