//! A paid pool's tenants: `escrow open|deposit|withdraw` (signed by a wallet keypair, sent to
//! the ledger) and `balance` (a tenant's escrow, what its jobs hold reserved, its burn rate and
//! runway).

use crate::api::{InferenceJob, TrainingJob};
use crate::ledger::{self, Keypair, LedgerClient, RpcLedger, Signer};
use crate::metering::budget::{self, Demand};
use anyhow::{Context, Result, bail};
use gpupool_ledger::error::LedgerError;
use gpupool_ledger::instruction as ix;
use gpupool_ledger::state::{self, PoolConfig};
use kube::api::{Api, ListParams};
use solana_program::instruction::Instruction;
use std::fmt::Write as _;
use std::path::PathBuf;

/// Where the ledger is and who signs.
#[derive(clap::Args, Debug, Clone)]
pub struct EscrowArgs {
    /// Tenant: the hub namespace whose jobs the escrow pays for.
    #[arg(long)]
    pub tenant: String,
    /// Wallet keypair (solana-keygen JSON) that signs and pays the fees.
    #[arg(long, value_name = "FILE")]
    pub keypair: PathBuf,
    /// Solana JSON-RPC URL.
    #[arg(long, env = "GPUPOOL_RPC_URL", default_value = "http://127.0.0.1:8899")]
    pub rpc_url: String,
}

/// `escrow` subcommands.
#[derive(clap::Subcommand, Debug, Clone)]
pub enum EscrowCommand {
    /// Open a tenant's escrow; only --keypair's wallet may withdraw from it.
    Open(EscrowArgs),
    /// Fund a tenant's escrow from --keypair's token account (anyone may fund any tenant).
    Deposit {
        #[command(flatten)]
        args: EscrowArgs,
        /// Tokens (base units).
        #[arg(long)]
        amount: u64,
    },
    /// Withdraw unreserved tokens to --keypair's token account (the tenant's wallet only).
    Withdraw {
        #[command(flatten)]
        args: EscrowArgs,
        /// Tokens (base units).
        #[arg(long)]
        amount: u64,
    },
}

/// Arguments of `balance`.
#[derive(clap::Args, Debug, Clone)]
pub struct BalanceArgs {
    /// Tenant (hub namespace; default: the context's namespace).
    #[arg(long)]
    pub tenant: Option<String>,
    /// Solana JSON-RPC URL.
    #[arg(long, env = "GPUPOOL_RPC_URL", default_value = "http://127.0.0.1:8899")]
    pub rpc_url: String,
}

/// Runs an `escrow` subcommand; returns what to print.
pub async fn escrow(command: &EscrowCommand) -> Result<String> {
    let (args, what) = match command {
        EscrowCommand::Open(a) => (a, None),
        EscrowCommand::Deposit { args, amount } => (args, Some(("deposit", *amount))),
        EscrowCommand::Withdraw { args, amount } => (args, Some(("withdraw", *amount))),
    };
    let tenant = budget::tenant_of(&args.tenant).to_string();
    if tenant.is_empty() {
        bail!("--tenant must name the hub namespace whose jobs the escrow pays for");
    }
    let wallet = ledger::load_keypair(&args.keypair)?;
    let rpc = RpcLedger::new(&args.rpc_url)?;
    let config = ledger::read_config(&rpc, &gpupool_ledger::ID)
        .await?
        .with_context(|| format!("the gpupool pool is not initialized on {}", args.rpc_url))?;
    let id = ledger::tenant_id(&tenant);
    let me = wallet.pubkey();
    let own = state::get_associated_token_address(&me, &config.mint);
    let instructions: Vec<Instruction> = match what {
        None => {
            let pda = ledger::tenant_address(&gpupool_ledger::ID, &id);
            vec![
                ix::create_associated_token_account_idempotent(&me, &pda, &config.mint),
                ix::open_escrow(&me, &me, &config.mint, &id),
            ]
        }
        Some(("deposit", amount)) => vec![ix::deposit(&me, &own, &config.mint, &id, amount)],
        Some((_, amount)) => vec![
            ix::create_associated_token_account_idempotent(&me, &me, &config.mint),
            ix::withdraw(&me, &config.mint, &id, &own, amount),
        ],
    };
    send(&rpc, &wallet, &instructions)
        .await
        .map_err(|e| explain(e, &tenant))?;
    let t = ledger::read_tenant(&rpc, &gpupool_ledger::ID, &id).await?;
    let escrow = ledger::escrow_balance(&rpc, &gpupool_ledger::ID, &id, &config.mint).await?;
    let done = match what {
        None => format!("opened the escrow of tenant {tenant} for wallet {me}"),
        Some((verb, amount)) => format!("{verb}: {amount} tokens, tenant {tenant}"),
    };
    Ok(format!(
        "{done}; escrow {} tokens, reserved {}\n",
        escrow.unwrap_or(0),
        t.map_or(0, |t| t.reserved)
    ))
}

async fn send(
    rpc: &RpcLedger,
    wallet: &Keypair,
    instructions: &[Instruction],
) -> Result<(), ledger::SendError> {
    let blockhash = rpc
        .latest_blockhash()
        .await
        .map_err(|e| ledger::SendError::NotSent(format!("{e:#}")))?;
    let message = solana_message::Message::new(instructions, Some(&wallet.pubkey()));
    let tx = ledger::Transaction::new(&[wallet], message, blockhash);
    rpc.send_and_confirm(&tx).await.map(|_| ())
}

/// A clear message for the ledger's refusals.
fn explain(e: ledger::SendError, tenant: &str) -> anyhow::Error {
    match e.ledger_error() {
        Some(LedgerError::InsufficientEscrow) => anyhow::anyhow!(
            "tenant {tenant}: the escrow does not hold that many unreserved tokens (reserved tokens pay for running jobs)"
        ),
        Some(LedgerError::NotTenantWallet) => {
            anyhow::anyhow!("tenant {tenant}: only the escrow's wallet may withdraw")
        }
        Some(LedgerError::TenantAlreadyExists) => {
            anyhow::anyhow!("tenant {tenant}: the escrow is already open")
        }
        _ => anyhow::anyhow!("{e}"),
    }
}

/// A tenant's balance: escrow, reserved, burn rate of its running jobs and runway.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Balance {
    /// Tenant (hub namespace).
    pub tenant: String,
    /// Wallet that may withdraw.
    pub wallet: String,
    /// Tokens in the escrow.
    pub escrow: u64,
    /// Of which reserved for jobs.
    pub reserved: u64,
    /// Lifetime deposits.
    pub deposited: u64,
    /// Lifetime withdrawals.
    pub withdrawn: u64,
    /// Lifetime spending (burned to owners and fees).
    pub spent: u64,
    /// Tokens per second its running jobs may cost at most (all their GPUs at the highest
    /// rate in force); `None` when the hub could not be read.
    pub burn_per_second: Option<u64>,
    /// Seconds the escrow lasts at that rate (`None`: nothing runs, or unknown).
    pub runway_seconds: Option<u64>,
}

/// Burn rate of `demands` (tokens per second) at `rate`.
pub fn burn_rate(demands: &[Demand], rate: u64) -> u64 {
    demands
        .iter()
        .filter(|d| d.live)
        .map(|d| budget::cost(d.gpus, 1, rate))
        .sum()
}

/// Human text of a balance.
pub fn format_balance(b: &Balance) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "tenant:     {} (wallet {})", b.tenant, b.wallet);
    let _ = writeln!(out, "escrow:     {} tokens", b.escrow);
    let _ = writeln!(
        out,
        "reserved:   {} tokens (unreserved {})",
        b.reserved,
        b.escrow.saturating_sub(b.reserved)
    );
    let _ = writeln!(
        out,
        "lifetime:   deposited {}, withdrawn {}, spent {}",
        b.deposited, b.withdrawn, b.spent
    );
    let burn = b
        .burn_per_second
        .map_or("unknown (hub not reachable)".into(), |r| {
            format!("{r} tokens/s at most")
        });
    let _ = writeln!(out, "burn rate:  {burn}");
    let runway = match (b.runway_seconds, b.burn_per_second) {
        (Some(s), _) => format!("{}h{:02}m", s / 3600, (s % 3600) / 60),
        (None, Some(0)) => "nothing running".into(),
        _ => "unknown".into(),
    };
    let _ = writeln!(out, "runway:     {runway}");
    out
}

/// The balance of `tenant`, with its running jobs read from `hub` when given.
pub async fn balance(
    hub: Option<&kube::Client>,
    rpc: &dyn LedgerClient,
    tenant: &str,
) -> Result<Balance> {
    let config: PoolConfig = ledger::read_config(rpc, &gpupool_ledger::ID)
        .await?
        .context("the gpupool pool is not initialized on the ledger")?;
    let id = ledger::tenant_id(tenant);
    let Some(t) = ledger::read_tenant(rpc, &gpupool_ledger::ID, &id).await? else {
        bail!(
            "tenant {tenant}: no escrow is open on the ledger (gpupool escrow open --tenant {tenant})"
        );
    };
    let escrow = ledger::escrow_balance(rpc, &gpupool_ledger::ID, &id, &config.mint)
        .await?
        .unwrap_or(0);
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let burn = match hub {
        Some(hub) => {
            let demands = tenant_demands(hub, tenant, now).await?;
            let p = config.period_at(now);
            Some(burn_rate(&demands, budget::highest_rate(&config, p, p)))
        }
        None => None,
    };
    Ok(Balance {
        tenant: tenant.to_string(),
        wallet: t.wallet.to_string(),
        escrow,
        reserved: t.reserved,
        deposited: t.deposited,
        withdrawn: t.withdrawn,
        spent: t.spent,
        burn_per_second: burn,
        runway_seconds: burn.and_then(|r| escrow.checked_div(r)),
    })
}

async fn tenant_demands(hub: &kube::Client, tenant: &str, now: i64) -> Result<Vec<Demand>> {
    let lp = ListParams::default();
    let tjs = Api::<TrainingJob>::namespaced(hub.clone(), tenant)
        .list(&lp)
        .await?;
    let ijs = Api::<InferenceJob>::namespaced(hub.clone(), tenant)
        .list(&lp)
        .await?;
    Ok(tjs
        .items
        .iter()
        .filter_map(|j| budget::training_demand(j, now))
        .chain(ijs.items.iter().filter_map(budget::inference_demand))
        .collect())
}

/// `balance`: the tenant's balance, as text or JSON.
pub async fn balance_answer(g: &super::GlobalArgs, args: &BalanceArgs) -> Result<String> {
    let hub = super::commands::connect(g).await;
    let tenant = match (&args.tenant, &hub) {
        (Some(t), _) => budget::tenant_of(t).to_string(),
        (None, Ok(h)) => h.namespace.clone(),
        (None, Err(e)) => bail!("pass --tenant NAMESPACE (no hub context: {e:#})"),
    };
    let rpc = RpcLedger::new(&args.rpc_url)?;
    let client = hub.as_ref().ok().map(|h| &h.client);
    let b = balance(client, &rpc, &tenant).await?;
    Ok(match g.output {
        super::Output::Json => serde_json::to_string_pretty(&b)? + "\n",
        _ => format_balance(&b),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn balance_shows_burn_and_runway() {
        let d = |live, gpus| Demand {
            uid: "u".into(),
            namespace: "team-a".into(),
            name: "TrainingJob/x".into(),
            gpus,
            runtime_left: None,
            live,
            ended: !live,
        };
        assert_eq!(burn_rate(&[d(true, 4), d(false, 8), d(true, 2)], 10), 60);
        let b = Balance {
            tenant: "team-a".into(),
            wallet: "W".into(),
            escrow: 432_000,
            reserved: 36_000,
            deposited: 500_000,
            withdrawn: 0,
            spent: 68_000,
            burn_per_second: Some(60),
            runway_seconds: Some(7_200),
        };
        let text = format_balance(&b);
        assert!(
            text.contains("reserved:   36000 tokens (unreserved 396000)"),
            "{text}"
        );
        assert!(text.contains("burn rate:  60 tokens/s at most"), "{text}");
        assert!(text.contains("runway:     2h00m"), "{text}");
        let idle = Balance {
            burn_per_second: Some(0),
            runway_seconds: None,
            ..b
        };
        assert!(format_balance(&idle).contains("runway:     nothing running"));
    }
}
