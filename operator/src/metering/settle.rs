//! One settlement pass: `Final` usage records → usage receipts on chain → `Settled`.
//!
//! Exactly-once payment rests on the ledger program, which creates one receipt per
//! (cluster, job uid, period) and rejects a second one; this side makes sure usage is never
//! lost and never resent blindly:
//! 1. every `Final` record is first **reconciled** against the chain: if its receipt exists
//!    (a previous pass sent it but died, or timed out, before marking), the record is marked
//!    `Settled` with the receipt's amount and nothing is sent;
//! 2. the remaining records are sent in `RecordUsageBatch` transactions (at most
//!    [`MAX_BATCH_RECEIPTS`], one cluster per batch, the oracle signing and paying) and marked
//!    `Settled` with the transaction signature once confirmed;
//! 3. a send whose outcome is unknown leaves its records `Final`: the next pass's step 1 decides.
//!    A rejected batch is retried record by record (so one bad record cannot block the others);
//!    a "receipt already exists" rejection is reconciled like step 1.

use crate::api::{UsageRecord, UsageState};
use crate::ledger::{self, Ledger, SendError, Signer};
use anyhow::{Result, bail};
use gpupool_ledger::MAX_BATCH_RECEIPTS;
use gpupool_ledger::error::LedgerError;
use gpupool_ledger::instruction::{self as ix, UsageEntry};
use gpupool_ledger::state::{self, PoolConfig, UsageReceipt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use solana_program::pubkey::Pubkey;
use std::collections::BTreeMap;

/// Settlement settings.
#[derive(Clone, Debug)]
pub struct SettleConfig {
    /// Receipts per transaction (1..=[`MAX_BATCH_RECEIPTS`]).
    pub max_batch: usize,
}

impl Default for SettleConfig {
    fn default() -> Self {
        SettleConfig {
            max_batch: MAX_BATCH_RECEIPTS,
        }
    }
}

/// What one settlement pass did.
#[derive(Clone, Debug, Default)]
pub struct SettleReport {
    /// `Final` records found.
    pub final_records: usize,
    /// Records settled by a transaction this pass confirmed.
    pub settled: usize,
    /// Records whose receipt was already on chain (marked `Settled`, nothing sent).
    pub reconciled: usize,
    /// Clusters registered on chain this pass.
    pub clusters_registered: usize,
    /// Transactions confirmed.
    pub batches_sent: usize,
    /// Transactions that failed or whose outcome is unknown.
    pub batches_failed: usize,
    /// Records left `Final` after a failed or unknown send (retried next pass).
    pub send_failures: usize,
    /// Records that cannot be sent now (cluster not registered, GPU class not priced, bad uid).
    pub skipped: usize,
    /// GPU-seconds in records settled this pass (sent or reconciled).
    pub gpu_seconds_settled: u64,
    /// Tokens (base units) minted by transactions this pass confirmed.
    pub tokens_minted: u64,
    /// Errors that did not stop the pass.
    pub errors: Vec<String>,
}

struct Pending {
    rec: UsageRecord,
    uid: [u8; 16],
    entry: UsageEntry,
}

/// Settles every `Final` usage record in the hub on the ledger (see the module docs).
/// Fails only when the hub cannot be listed or the pool cannot be read / is not ours.
pub async fn settle_once(
    hub: &Client,
    ledger: &Ledger,
    cfg: &SettleConfig,
) -> Result<SettleReport> {
    let mut report = SettleReport::default();
    let records: Api<UsageRecord> = Api::all(hub.clone());
    let finals: Vec<UsageRecord> = records
        .list(&ListParams::default())
        .await?
        .items
        .into_iter()
        .filter(|r| r.status.as_ref().map(|s| s.state) == Some(UsageState::Final))
        .collect();
    report.final_records = finals.len();
    if finals.is_empty() {
        return Ok(report);
    }
    let client = ledger.client.as_ref();
    let program = gpupool_ledger::ID;
    let Some(config) = ledger::read_config(client, &program).await? else {
        bail!(
            "the gpupool pool is not initialized on {}",
            client.describe()
        );
    };
    if config.oracle != ledger.oracle.pubkey() {
        bail!(
            "the pool's usage oracle is {}, but the operator's key is {}",
            config.oracle,
            ledger.oracle.pubkey()
        );
    }
    let mut by_cluster: BTreeMap<String, Vec<UsageRecord>> = BTreeMap::new();
    for r in finals {
        by_cluster
            .entry(r.spec.cluster.clone())
            .or_default()
            .push(r);
    }
    for (cluster, recs) in by_cluster {
        if let Err(e) =
            settle_cluster(&records, ledger, &config, &cluster, recs, cfg, &mut report).await
        {
            report.errors.push(format!("cluster {cluster}: {e:#}"));
        }
    }
    Ok(report)
}

async fn settle_cluster(
    records: &Api<UsageRecord>,
    ledger: &Ledger,
    config: &PoolConfig,
    cluster: &str,
    recs: Vec<UsageRecord>,
    cfg: &SettleConfig,
    report: &mut SettleReport,
) -> Result<()> {
    let client = ledger.client.as_ref();
    let program = gpupool_ledger::ID;
    let cluster_id = state::cluster_id_from_name(cluster);

    // 1. The cluster account (register it when we hold the owner's key).
    let mut account = ledger::read_cluster(client, &program, cluster).await?;
    if account.is_none() {
        let wallet = recs[0].spec.owner_wallet.clone();
        let owner = ledger::parse_wallet(&wallet).ok();
        match owner.and_then(|o| ledger.owner_signers.get(&o)) {
            Some(owner_kp) => {
                let oracle = ledger.oracle.pubkey();
                let res = ledger
                    .send(
                        &[
                            ix::create_associated_token_account_idempotent(
                                &oracle,
                                &owner_kp.pubkey(),
                                &config.mint,
                            ),
                            ix::register_cluster(&oracle, &owner_kp.pubkey(), &cluster_id),
                        ],
                        &[owner_kp],
                    )
                    .await;
                match res {
                    Ok(_) => report.clusters_registered += 1,
                    Err(e) if e.ledger_error() == Some(LedgerError::ClusterAlreadyRegistered) => {}
                    Err(e) => bail!("registering the cluster on chain: {e}"),
                }
                account = ledger::read_cluster(client, &program, cluster).await?;
            }
            None => {
                let msg = format!(
                    "cluster {cluster} is not registered on the ledger; its owner ({wallet}) must sign RegisterCluster before its usage can be paid"
                );
                for r in &recs {
                    note(records, r, &msg, false).await;
                }
                report.skipped += recs.len();
                return Ok(());
            }
        }
    }
    let Some(account) = account else {
        bail!("cluster account still missing after registration");
    };
    let owner = account.owner;

    // 2. Reconcile against receipts; keep what still has to be sent.
    let mut pending = Vec::new();
    for rec in recs {
        let Some(uid) = state::parse_job_uid(&rec.spec.job_uid) else {
            note(
                records,
                &rec,
                &format!(
                    "job uid {:?} is not a UUID; cannot be settled",
                    rec.spec.job_uid
                ),
                false,
            )
            .await;
            report.skipped += 1;
            continue;
        };
        let period = rec.spec.period.max(0) as u64;
        match ledger::read_receipt(client, &program, cluster, &uid, period).await {
            Ok(Some(receipt)) => {
                mark_settled(records, &rec, &receipt, None, report).await;
                report.reconciled += 1;
                continue;
            }
            Ok(None) => {}
            Err(e) => {
                report
                    .errors
                    .push(format!("{}: reading its receipt: {e:#}", rec.name_any()));
                continue;
            }
        }
        let class = rec.spec.gpu_class;
        let rate = usize::try_from(class)
            .ok()
            .and_then(|c| config.rates.get(c))
            .copied()
            .unwrap_or(0);
        if rate == 0 {
            note(records, &rec, &format!("GPU class {class} has no rate on the ledger; waiting for the pool admin to price it"), false).await;
            report.skipped += 1;
            continue;
        }
        if rec.spec.gpu_seconds <= 0 {
            report.skipped += 1;
            continue;
        }
        let entry = UsageEntry {
            job_uid: uid,
            period,
            gpu_seconds: rec.spec.gpu_seconds as u64,
            gpu_class: class as u8,
        };
        pending.push(Pending { rec, uid, entry });
    }
    if pending.is_empty() {
        return Ok(());
    }

    // 3. The owner's token account must exist for MintTo.
    let ata = state::get_associated_token_address(&owner, &config.mint);
    if client.get_account(&ata).await?.is_none() {
        let oracle = ledger.oracle.pubkey();
        ledger
            .send(
                &[ix::create_associated_token_account_idempotent(
                    &oracle,
                    &owner,
                    &config.mint,
                )],
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the owner's token account {ata}: {e}"))?;
    }

    // 4. Batches.
    let max = cfg.max_batch.clamp(1, MAX_BATCH_RECEIPTS);
    for chunk in pending.chunks(max) {
        match send_batch(ledger, config, &cluster_id, &owner, chunk).await {
            Ok(sig) => {
                report.batches_sent += 1;
                after_confirmed(
                    records,
                    ledger,
                    cluster,
                    chunk,
                    &sig.to_string(),
                    config,
                    report,
                )
                .await;
            }
            Err(e) => {
                report.batches_failed += 1;
                match &e {
                    SendError::Rejected { .. } => {
                        // One record may be bad (or already paid): go one by one.
                        for p in chunk {
                            settle_single(
                                records,
                                ledger,
                                config,
                                cluster,
                                &cluster_id,
                                &owner,
                                p,
                                report,
                            )
                            .await;
                        }
                    }
                    SendError::Unknown(_) | SendError::NotSent(_) => {
                        for p in chunk {
                            failed(records, &p.rec, &e, report).await;
                        }
                    }
                }
            }
        }
    }
    Ok(())
}

async fn send_batch(
    ledger: &Ledger,
    config: &PoolConfig,
    cluster_id: &[u8; 32],
    owner: &Pubkey,
    chunk: &[Pending],
) -> Result<solana_signature::Signature, SendError> {
    let oracle = ledger.oracle.pubkey();
    let entries: Vec<UsageEntry> = chunk.iter().map(|p| p.entry).collect();
    let instruction =
        ix::record_usage_batch(&oracle, &oracle, &config.mint, cluster_id, owner, &entries);
    ledger.send(&[instruction], &[]).await
}

#[allow(clippy::too_many_arguments)]
async fn settle_single(
    records: &Api<UsageRecord>,
    ledger: &Ledger,
    config: &PoolConfig,
    cluster: &str,
    cluster_id: &[u8; 32],
    owner: &Pubkey,
    p: &Pending,
    report: &mut SettleReport,
) {
    let client = ledger.client.as_ref();
    let program = gpupool_ledger::ID;
    if let Ok(Some(receipt)) =
        ledger::read_receipt(client, &program, cluster, &p.uid, p.entry.period).await
    {
        mark_settled(records, &p.rec, &receipt, None, report).await;
        report.reconciled += 1;
        return;
    }
    match send_batch(ledger, config, cluster_id, owner, std::slice::from_ref(p)).await {
        Ok(sig) => {
            report.batches_sent += 1;
            after_confirmed(
                records,
                ledger,
                cluster,
                std::slice::from_ref(p),
                &sig.to_string(),
                config,
                report,
            )
            .await;
        }
        Err(e) => {
            report.batches_failed += 1;
            if e.ledger_error() == Some(LedgerError::ReceiptAlreadyExists)
                && let Ok(Some(receipt)) =
                    ledger::read_receipt(client, &program, cluster, &p.uid, p.entry.period).await
            {
                mark_settled(records, &p.rec, &receipt, None, report).await;
                report.reconciled += 1;
                return;
            }
            failed(records, &p.rec, &e, report).await;
        }
    }
}

/// Marks the records of a confirmed transaction settled, with the amounts from their receipts.
async fn after_confirmed(
    records: &Api<UsageRecord>,
    ledger: &Ledger,
    cluster: &str,
    chunk: &[Pending],
    sig: &str,
    config: &PoolConfig,
    report: &mut SettleReport,
) {
    let client = ledger.client.as_ref();
    for p in chunk {
        let receipt = match ledger::read_receipt(
            client,
            &gpupool_ledger::ID,
            cluster,
            &p.uid,
            p.entry.period,
        )
        .await
        {
            Ok(Some(r)) => r,
            // Confirmed but not readable yet: the amount the program computes.
            _ => UsageReceipt {
                tag: state::TAG_RECEIPT,
                cluster: Pubkey::default(),
                usage_id: [0; 32],
                job_uid: p.uid,
                period: p.entry.period,
                gpu_seconds: p.entry.gpu_seconds,
                gpu_class: p.entry.gpu_class,
                amount: config.rates[p.entry.gpu_class as usize]
                    .saturating_mul(p.entry.gpu_seconds),
                slot: 0,
                bump: 0,
            },
        };
        report.tokens_minted = report.tokens_minted.saturating_add(receipt.amount);
        mark_settled(records, &p.rec, &receipt, Some(sig), report).await;
        report.settled += 1;
    }
}

async fn mark_settled(
    records: &Api<UsageRecord>,
    rec: &UsageRecord,
    receipt: &UsageReceipt,
    sig: Option<&str>,
    report: &mut SettleReport,
) {
    report.gpu_seconds_settled = report
        .gpu_seconds_settled
        .saturating_add(receipt.gpu_seconds);
    let message = match sig {
        Some(_) => Value::Null,
        None => json!(format!(
            "usage receipt found on chain (recorded at slot {}); marked settled without sending",
            receipt.slot
        )),
    };
    let patch = json!({"status": {
        "state": UsageState::Settled,
        "signature": sig,
        "amount": i64::try_from(receipt.amount).unwrap_or(i64::MAX),
        "settledGpuSeconds": i64::try_from(receipt.gpu_seconds).unwrap_or(i64::MAX),
        "settledAt": Time(Timestamp::now()),
        "message": message,
    }});
    if let Err(e) = records
        .patch_status(
            &rec.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        // Stays Final; the next pass finds the receipt and marks it then.
        report
            .errors
            .push(format!("{}: marking settled: {e}", rec.name_any()));
    }
}

async fn failed(
    records: &Api<UsageRecord>,
    rec: &UsageRecord,
    e: &SendError,
    report: &mut SettleReport,
) {
    report.send_failures += 1;
    note(
        records,
        rec,
        &format!("settlement attempt failed: {e}"),
        true,
    )
    .await;
}

async fn note(records: &Api<UsageRecord>, rec: &UsageRecord, msg: &str, attempt: bool) {
    let attempts = rec.status.as_ref().and_then(|s| s.attempts).unwrap_or(0);
    let mut status = json!({"message": msg});
    if attempt {
        status["attempts"] = json!(attempts + 1);
    }
    let _ = records
        .patch_status(
            &rec.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&json!({"status": status})),
        )
        .await;
}

use serde_json::Value;
