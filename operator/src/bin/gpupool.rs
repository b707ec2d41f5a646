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
    /// Run in a member cluster: join the pool in pull mode and apply the hub's work here.
    MemberAgent(gpupool::member_agent::AgentArgs),
    /// Run the hub's join controller (answers join requests, hands out member credentials).
    JoinController {
        /// Approve joining members without an admin.
        #[arg(long)]
        auto_approve: bool,
    },
    /// Manage join tokens for pull members (pool admin).
    #[command(subcommand)]
    JoinToken(gpupool::cli::members::TokenCommand),
    /// Approve a pending member.
    Approve {
        /// MemberCluster name.
        member: String,
    },
    /// Deny a pending member, or revoke an approved one (its hub credential stops working).
    Deny {
        /// MemberCluster name.
        member: String,
    },
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
    match cli.command {
        Command::Run(args) => gpupool::controllers::run(args).await,
        Command::Earnings(args) => gpupool::cli::earnings::run(args).await,
        Command::MemberAgent(args) => {
            gpupool::telemetry::init_logging();
            gpupool::member_agent::run(args).await
        }
        Command::JoinController { auto_approve } => {
            gpupool::telemetry::init_logging();
            let hub = kube::Client::try_default().await?;
            let cfg = gpupool::join::controller::JoinConfig {
                auto_approve,
                ..Default::default()
            };
            gpupool::join::controller::run(hub, cfg).await
        }
        Command::JoinToken(cmd) => gpupool::cli::members::token(cmd).await,
        Command::Approve { member } => {
            gpupool::cli::members::set_approval(&member, gpupool::api::Approval::Approved).await
        }
        Command::Deny { member } => {
            gpupool::cli::members::set_approval(&member, gpupool::api::Approval::Denied).await
        }
    }
}
