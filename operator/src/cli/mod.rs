//! Command-line tools: one set of subcommands and flags shared by `gpupool` and the
//! `kubectl gpupool` plugin — pool users (`why`, `where`, `queue`, `queues`), owners (`earnings`,
//! `members`) and pool admins (`approve`, `deny`, `cordon`, `uncordon`, `drain`, `join-token`).

pub mod commands;
pub mod complete;
pub mod earnings;
pub mod escrow;
pub mod members;
pub mod output;
pub mod plugin;
pub mod queues;

pub use output::Output;
use std::path::PathBuf;

/// Flags every pool command takes (before or after the subcommand).
#[derive(clap::Args, Clone, Debug, Default)]
pub struct GlobalArgs {
    /// Kubeconfig of the hub cluster (default: KUBECONFIG / ~/.kube/config / in-cluster).
    #[arg(long, global = true, value_name = "FILE")]
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context to use.
    #[arg(long, global = true, value_name = "NAME")]
    pub context: Option<String>,
    /// Output format: wide, name, json, yaml or jsonpath=TEMPLATE (default: a table).
    #[arg(
        short = 'o',
        long,
        global = true,
        default_value = "table",
        value_name = "FORMAT"
    )]
    pub output: Output,
}

/// `kubectl gpupool`: the plugin binary's arguments (its completion reads the same tree).
#[derive(clap::Parser, Debug)]
#[command(
    name = "kubectl-gpupool",
    bin_name = "kubectl gpupool",
    version,
    about = "Ask the gpupool hub why a job waits, where it runs, what the pool holds and what members earned; administer members"
)]
pub struct Plugin {
    /// Flags of every command.
    #[command(flatten)]
    pub global: GlobalArgs,
    /// The command.
    #[command(subcommand)]
    pub command: Command,
}

/// Where a job lives.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct JobScope {
    /// Namespace of the job (default: the context's namespace).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    /// Keep running and print again whenever the answer changes.
    #[arg(short = 'w', long)]
    pub watch: bool,
}

/// The pool commands, the same in `gpupool` and `kubectl gpupool`.
#[derive(clap::Subcommand, Clone, Debug)]
pub enum Command {
    /// Why a job is waiting: phase, queue position, and why each member does not fit.
    Why {
        /// `NAME`, or `trainingjob/NAME` / `tj/NAME` / `inferencejob/NAME` / `ij/NAME`.
        job: String,
        #[command(flatten)]
        scope: JobScope,
    },
    /// Where a job runs: member, node, GPU indexes and topology score per worker or replica.
    Where {
        /// `NAME`, or `trainingjob/NAME` / `tj/NAME` / `inferencejob/NAME` / `ij/NAME`.
        job: String,
        #[command(flatten)]
        scope: JobScope,
    },
    /// Jobs waiting for GPUs, in queue order.
    Queue {
        /// Only this namespace (default: every namespace).
        #[arg(short = 'n', long)]
        namespace: Option<String>,
        /// Keep running and print again whenever the queue changes.
        #[arg(short = 'w', long)]
        watch: bool,
    },
    /// GpuQueues: GPUs used of the nominal quota per class, borrowing, waiting jobs and the
    /// weighted fair share.
    Queues,
    /// Member clusters: readiness, capacity, free NVLink islands, owner and what they earned.
    Members,
    /// GPU-seconds and tokens earned by a wallet or member cluster, on chain and in the hub.
    Earnings(earnings::EarningsArgs),
    /// A tenant's escrow in a paid pool: open it, fund it, withdraw what is not reserved.
    #[command(subcommand)]
    Escrow(escrow::EscrowCommand),
    /// A tenant's escrow, what its jobs hold reserved, its burn rate and runway.
    Balance(escrow::BalanceArgs),
    /// Let a pull member that asked to join into the pool.
    Approve {
        /// MemberCluster name.
        member: String,
    },
    /// Refuse or revoke a member: its hub credential is withdrawn.
    Deny {
        /// MemberCluster name.
        member: String,
    },
    /// Place no new work on a member (work already there keeps running).
    Cordon {
        /// MemberCluster name.
        member: String,
    },
    /// Let new work be placed on a member again (ends a drain).
    Uncordon {
        /// MemberCluster name.
        member: String,
    },
    /// Cordon a member and move its jobs elsewhere (training gangs restart on other members,
    /// inference replicas move within maxUnavailable); wait until none runs there.
    Drain {
        /// MemberCluster name.
        member: String,
        /// Give up after this long, e.g. `90s`, `30m` (the member stays cordoned).
        #[arg(long, default_value = "10m", value_parser = members::parse_duration)]
        timeout: std::time::Duration,
    },
    /// Issue, list and revoke join tokens for pull members.
    #[command(subcommand)]
    JoinToken(members::TokenCommand),
    /// This build's version and the hub's Kubernetes version.
    Version {
        /// Only this build's version (do not contact the hub).
        #[arg(long)]
        client: bool,
    },
    /// Shell completion script: `source <(gpupool completion bash)`.
    Completion {
        /// bash, zsh, fish, elvish or powershell.
        shell: clap_complete::Shell,
    },
}

impl Command {
    /// Whether the command runs until interrupted, printing each new answer.
    pub fn watches(&self) -> bool {
        match self {
            Command::Why { scope, .. } | Command::Where { scope, .. } => scope.watch,
            Command::Queue { watch, .. } => *watch,
            _ => false,
        }
    }
}

/// Runs a pool command; `app` is the calling binary's clap command (for `completion`).
/// Everything it prints goes to stdout; errors come back to the caller.
pub async fn run(global: GlobalArgs, command: Command, app: clap::Command) -> anyhow::Result<()> {
    commands::run(global, command, app).await
}

/// `main` of both binaries' pool commands: runs, prints an error as `error: ...` and exits 1.
pub async fn main(global: GlobalArgs, command: Command, app: clap::Command) {
    if let Err(e) = run(global, command, app).await {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
