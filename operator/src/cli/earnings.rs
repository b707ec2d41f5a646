//! `earnings`: what a wallet or member cluster earned, on chain and in the hub's records.

use crate::api::{MemberCluster, UsageRecord, UsageState};
use crate::ledger::{self, LedgerClient, Pubkey, RpcLedger};
use anyhow::{Context, Result, bail};
use gpupool_ledger::state;
use kube::api::{Api, ListParams};
use kube::{Client, ResourceExt};
use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;

/// Arguments of `gpupool earnings`.
#[derive(clap::Args, Debug, Clone)]
#[command(group(clap::ArgGroup::new("who").required(true).args(["wallet", "cluster"])))]
pub struct EarningsArgs {
    /// Owner wallet (base58): show every member cluster it owns.
    #[arg(long)]
    pub wallet: Option<String>,
    /// Member cluster name: show that cluster.
    #[arg(long)]
    pub cluster: Option<String>,
    /// Solana JSON-RPC URL.
    #[arg(long, env = "GPUPOOL_RPC_URL", default_value = "http://127.0.0.1:8899")]
    pub rpc_url: String,
    /// Ledger program id (default: the id this build of gpupool was made for).
    #[arg(long, env = "GPUPOOL_PROGRAM_ID")]
    pub program_id: Option<String>,
}

/// Whose earnings to show.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Selector {
    /// Every cluster owned by this wallet.
    Wallet(Pubkey),
    /// One cluster by name.
    Cluster(String),
}

/// On-chain totals of one cluster account.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ChainTotals {
    /// Owner wallet stored on chain (tokens go to its token account).
    pub owner: Pubkey,
    /// GPU-seconds paid.
    pub gpu_seconds: u64,
    /// Tokens minted (base units).
    pub tokens: u64,
    /// Receipts recorded.
    pub receipts: u64,
}

/// One cluster's line in the report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterEarnings {
    /// Member cluster name.
    pub cluster: String,
    /// Owner wallet according to the hub (MemberCluster or its usage records).
    pub hub_owner: Option<String>,
    /// The cluster's account on chain, if registered.
    pub chain: Option<ChainTotals>,
    /// Hub records: settled GPU-seconds.
    pub settled_gpu_seconds: i64,
    /// Hub records: tokens recorded as minted for settled records.
    pub settled_tokens: i64,
    /// Hub records: GPU-seconds of closed periods waiting for settlement.
    pub final_gpu_seconds: i64,
    /// Hub records: GPU-seconds of periods still running.
    pub open_gpu_seconds: i64,
    /// Usage records in the hub.
    pub records: usize,
}

/// The whole report.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct EarningsReport {
    /// Where the chain data came from.
    pub ledger: String,
    /// The pool mint (None when the pool is not initialized).
    pub mint: Option<Pubkey>,
    /// Mint decimals (for display).
    pub decimals: u8,
    /// Per cluster.
    pub clusters: Vec<ClusterEarnings>,
    /// Token balance of each owner wallet's associated token account (base units).
    pub balances: Vec<(Pubkey, u64)>,
    /// Things the reader should know (no hub, mismatched owners, ...).
    pub notes: Vec<String>,
}

/// What the hub says about the clusters: owners, identities (kube-system UIDs, which key their
/// accounts on chain) and usage records.
#[derive(Default)]
struct HubView {
    consulted: bool,
    owner: BTreeMap<String, String>,
    uid: BTreeMap<String, String>,
    records: Vec<UsageRecord>,
}

/// Builds the report from the chain (any [`LedgerClient`]) and, when given, the hub's
/// `MemberCluster`s and `UsageRecord`s.
pub async fn earnings_report(
    hub: Option<&Client>,
    chain: &dyn LedgerClient,
    program_id: &Pubkey,
    selector: &Selector,
) -> Result<EarningsReport> {
    let mut report = EarningsReport {
        ledger: chain.describe(),
        ..Default::default()
    };
    read_pool(chain, program_id, &mut report).await?;
    let view = match hub {
        Some(h) => read_hub(h).await?,
        None => {
            report
                .notes
                .push("hub not consulted: showing on-chain figures only".into());
            HubView::default()
        }
    };
    let mut owners: BTreeSet<Pubkey> = BTreeSet::new();
    if let Selector::Wallet(w) = selector {
        owners.insert(*w);
    }
    for name in selected_clusters(selector, &view)? {
        let line = cluster_line(chain, program_id, &name, &view, &mut report.notes).await?;
        if let Some(ch) = &line.chain {
            owners.insert(ch.owner);
        }
        if line.chain.is_none() && line.hub_owner.is_none() && line.records == 0 {
            if let Selector::Cluster(_) = selector {
                bail!(
                    "unknown cluster {name:?}: no MemberCluster or usage records of that name in the hub{} and no cluster account on {}",
                    if view.consulted {
                        ""
                    } else {
                        " (hub not consulted)"
                    },
                    chain.describe()
                );
            }
            continue;
        }
        report.clusters.push(line);
    }
    if let Selector::Wallet(w) = selector
        && report.clusters.is_empty()
    {
        report
            .notes
            .push(format!("no member cluster in the hub is owned by {w}"));
    }
    if let Some(mint) = report.mint {
        for o in owners {
            let ata = state::get_associated_token_address(&o, &mint);
            let bal = ledger::token_balance(chain, &ata).await?.unwrap_or(0);
            report.balances.push((o, bal));
        }
    }
    Ok(report)
}

/// The pool's mint and its decimals, or a note that the ledger has no pool.
async fn read_pool(
    chain: &dyn LedgerClient,
    program_id: &Pubkey,
    report: &mut EarningsReport,
) -> Result<()> {
    let config = ledger::read_config(chain, program_id)
        .await
        .with_context(|| format!("reading the pool from {}", chain.describe()))?;
    match config {
        Some(c) => {
            report.mint = Some(c.mint);
            report.decimals = ledger::read_mint(chain, &c.mint)
                .await?
                .map(|m| m.decimals)
                .unwrap_or(0);
        }
        None => report.notes.push(format!(
            "the gpupool ledger (program {program_id}) has no pool on {}",
            chain.describe()
        )),
    }
    Ok(())
}

/// Owners and identities from the MemberClusters, completed from the usage records (a removed
/// member's records still name its owner and identity).
async fn read_hub(hub: &Client) -> Result<HubView> {
    let mut view = HubView {
        consulted: true,
        ..Default::default()
    };
    let members = Api::<MemberCluster>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .context("listing MemberClusters in the hub")?;
    for m in members.items {
        view.owner.insert(m.name_any(), m.spec.owner_wallet.clone());
        if let Some(uid) = m.cluster_id().map(String::from) {
            view.uid.insert(m.name_any(), uid);
        }
    }
    view.records = Api::<UsageRecord>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .context("listing UsageRecords in the hub")?
        .items;
    for r in &view.records {
        view.owner
            .entry(r.spec.cluster.clone())
            .or_insert_with(|| r.spec.owner_wallet.clone());
        if !r.spec.cluster_uid.is_empty() {
            view.uid
                .entry(r.spec.cluster.clone())
                .or_insert_with(|| r.spec.cluster_uid.clone());
        }
    }
    Ok(view)
}

/// The clusters the selector names: one by name, or every cluster the hub says a wallet owns.
fn selected_clusters(selector: &Selector, view: &HubView) -> Result<BTreeSet<String>> {
    Ok(match selector {
        Selector::Cluster(c) => BTreeSet::from([c.clone()]),
        Selector::Wallet(w) => {
            if !view.consulted {
                bail!(
                    "--wallet needs the hub to find the wallet's clusters; pass --kubeconfig or use --cluster"
                );
            }
            let w = w.to_string();
            view.owner
                .iter()
                .filter(|(_, o)| **o == w)
                .map(|(c, _)| c.clone())
                .collect()
        }
    })
}

/// One cluster's chain account and hub records; notes a missing identity or an owner the hub
/// and the chain disagree on.
async fn cluster_line(
    chain: &dyn LedgerClient,
    program_id: &Pubkey,
    name: &str,
    view: &HubView,
    notes: &mut Vec<String>,
) -> Result<ClusterEarnings> {
    let account = match view.uid.get(name) {
        Some(uid) => ledger::read_cluster(chain, program_id, &ledger::cluster_id(uid)).await?,
        None => {
            notes.push(format!(
                "cluster {name}: its identity (kube-system UID) is not known{}, so its on-chain account cannot be found",
                if view.consulted {
                    " to the hub yet"
                } else {
                    " without the hub"
                }
            ));
            None
        }
    };
    let mut line = hub_tally(name, &view.records);
    line.hub_owner = view.owner.get(name).cloned();
    if let Some(acc) = account {
        line.chain = Some(ChainTotals {
            owner: acc.owner,
            gpu_seconds: acc.total_gpu_seconds,
            tokens: acc.total_tokens_minted,
            receipts: acc.receipt_count,
        });
        if let Some(h) = &line.hub_owner
            && *h != acc.owner.to_string()
        {
            notes.push(format!(
                "cluster {name}: the hub says owner {h}, the chain pays {}",
                acc.owner
            ));
        }
    }
    Ok(line)
}

/// The hub's records of one cluster, summed by state (only the hub figures of the line are set).
pub fn hub_tally(cluster: &str, recs: &[UsageRecord]) -> ClusterEarnings {
    let mut line = ClusterEarnings {
        cluster: cluster.to_string(),
        ..Default::default()
    };
    for r in recs.iter().filter(|r| r.spec.cluster == cluster) {
        line.records += 1;
        let st = r.status.clone().unwrap_or_default();
        match st.state {
            UsageState::Settled => {
                line.settled_gpu_seconds += st.settled_gpu_seconds.unwrap_or(r.spec.gpu_seconds);
                line.settled_tokens += st.amount.unwrap_or(0);
            }
            UsageState::Final => line.final_gpu_seconds += r.spec.gpu_seconds,
            UsageState::Open => line.open_gpu_seconds += r.spec.gpu_seconds,
        }
    }
    line
}

/// `amount` base units with `decimals` as a decimal string.
pub fn format_tokens(amount: u64, decimals: u8) -> String {
    if decimals == 0 {
        return amount.to_string();
    }
    let d = 10u128.pow(decimals as u32);
    let a = amount as u128;
    let frac = format!("{:0width$}", a % d, width = decimals as usize);
    let frac = frac.trim_end_matches('0');
    if frac.is_empty() {
        format!("{}", a / d)
    } else {
        format!("{}.{}", a / d, frac)
    }
}

/// Renders the report as a table.
pub fn format_report(r: &EarningsReport) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "Ledger: {}", r.ledger);
    if let Some(m) = r.mint {
        let _ = writeln!(out, "Pool mint: {m} ({} decimals)", r.decimals);
    }
    let _ = writeln!(out);
    let rows: Vec<Vec<String>> = r
        .clusters
        .iter()
        .map(|c| cluster_row(c, r.decimals))
        .collect();
    out.push_str(&crate::cli::plugin::table(
        &[
            "CLUSTER",
            "ON-CHAIN GPU-S",
            "TOKENS MINTED",
            "RECEIPTS",
            "HUB SETTLED GPU-S",
            "HUB SETTLED TOKENS",
            "UNSETTLED GPU-S",
            "OPEN GPU-S",
            "OWNER",
        ],
        &rows,
    ));
    if rows.is_empty() {
        let _ = writeln!(out, "(no clusters)");
    }
    format_footer(&mut out, r);
    out
}

/// One cluster's cells: chain figures (or "not registered"), then the hub's.
fn cluster_row(c: &ClusterEarnings, decimals: u8) -> Vec<String> {
    let tok = |a: u64| format_tokens(a, decimals);
    let (gs, tk, rc, owner) = match &c.chain {
        Some(ch) => (
            ch.gpu_seconds.to_string(),
            tok(ch.tokens),
            ch.receipts.to_string(),
            ch.owner.to_string(),
        ),
        None => (
            "not registered".into(),
            "-".into(),
            "-".into(),
            c.hub_owner.clone().unwrap_or_default(),
        ),
    };
    vec![
        c.cluster.clone(),
        gs,
        tk,
        rc,
        c.settled_gpu_seconds.to_string(),
        tok(c.settled_tokens.max(0) as u64),
        c.final_gpu_seconds.to_string(),
        c.open_gpu_seconds.to_string(),
        owner,
    ]
}

/// Wallet balances and notes under the table.
fn format_footer(out: &mut String, r: &EarningsReport) {
    if !r.balances.is_empty() {
        let _ = writeln!(out);
        for (w, b) in &r.balances {
            let _ = writeln!(
                out,
                "Wallet {w}: {} pool tokens in its token account",
                format_tokens(*b, r.decimals)
            );
        }
    }
    for n in &r.notes {
        let _ = writeln!(out, "note: {n}");
    }
}

/// The report `earnings` prints for these arguments; the hub is reached with the global
/// `--kubeconfig`/`--context` (on-chain figures alone for `--cluster` when it cannot be).
pub async fn report_for_args(
    args: &EarningsArgs,
    global: &crate::cli::GlobalArgs,
) -> Result<EarningsReport> {
    let selector = match (&args.wallet, &args.cluster) {
        (Some(w), _) => Selector::Wallet(ledger::parse_wallet(w)?),
        (None, Some(c)) if !c.trim().is_empty() => Selector::Cluster(c.trim().to_string()),
        _ => bail!("pass --wallet WALLET or --cluster NAME"),
    };
    let program_id = match &args.program_id {
        Some(p) => ledger::parse_wallet(p)
            .map_err(|_| anyhow::anyhow!("--program-id {p:?} is not a base58 public key"))?,
        None => gpupool_ledger::ID,
    };
    let rpc = RpcLedger::new(&args.rpc_url)?;
    let reached = match crate::cli::commands::connect(global).await {
        Ok(h) => h
            .client
            .apiserver_version()
            .await
            .map(|_| h.client)
            .map_err(|e| anyhow::anyhow!("cannot reach the hub API server: {e}")),
        Err(e) => Err(e),
    };
    let hub = match reached {
        Ok(c) => Some(c),
        Err(e) if matches!(selector, Selector::Wallet(_)) => return Err(e),
        Err(e) => {
            eprintln!("warning: {e:#}; showing on-chain figures only");
            None
        }
    };
    earnings_report(hub.as_ref(), &rpc, &program_id, &selector).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn token_formatting() {
        assert_eq!(format_tokens(0, 0), "0");
        assert_eq!(format_tokens(1234, 0), "1234");
        assert_eq!(format_tokens(1_500_000_000, 9), "1.5");
        assert_eq!(format_tokens(1_000_000_000, 9), "1");
        assert_eq!(format_tokens(12, 6), "0.000012");
    }

    #[test]
    fn table_lists_chain_and_hub_figures() {
        let owner = Pubkey::new_unique();
        let r = EarningsReport {
            ledger: "embedded LiteSVM".into(),
            mint: Some(Pubkey::new_unique()),
            decimals: 0,
            clusters: vec![ClusterEarnings {
                cluster: "member-1".into(),
                hub_owner: Some(owner.to_string()),
                chain: Some(ChainTotals {
                    owner,
                    gpu_seconds: 120,
                    tokens: 1200,
                    receipts: 3,
                }),
                settled_gpu_seconds: 120,
                settled_tokens: 1200,
                final_gpu_seconds: 10,
                open_gpu_seconds: 4,
                records: 5,
            }],
            balances: vec![(owner, 1200)],
            notes: vec![],
        };
        let s = format_report(&r);
        assert!(s.contains("CLUSTER"), "{s}");
        let row = s.lines().find(|l| l.starts_with("member-1")).unwrap();
        for want in ["120", "1200", "3", "10", "4"] {
            assert!(row.split_whitespace().any(|c| c == want), "{want} in {row}");
        }
        assert!(
            s.contains(&format!("Wallet {owner}: 1200 pool tokens")),
            "{s}"
        );
    }
}
