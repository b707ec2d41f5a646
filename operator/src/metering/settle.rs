//! One settlement pass: `Final` usage records → usage receipts on chain → `Settled`.
//!
//! Exactly-once payment rests on the ledger program, which creates one receipt per
//! (cluster id, job uid, period) and rejects a second one; this side makes sure usage is never
//! lost, never resent blindly, and never sent unless the hub can justify it:
//! 0. a record is paid only to a **live** `MemberCluster` whose identity (`spec.clusterId`, the
//!    member's `kube-system` namespace UID) is known and not shared with an
//!    older `MemberCluster` (one cluster joined twice), whose on-chain owner equals its
//!    `spec.ownerWallet`, and only if the settler can **re-derive** the record: its period
//!    bounds from the pool's on-chain period length, the period over by the hub's clock and
//!    within the settlement horizon, `gpuSeconds` the sum of its pods, each pod within its GPUs
//!    × the period, the total within the cluster's on-chain GPU cap; and only if the hub's own
//!    facts prove it ([`prove`], [`super::proof`]): it carries the meter's seal, and while its
//!    job exists, the job placed each of its slots on that member in that period, within the
//!    slot's GPUs × its placement window. Anything else is left unpaid with a message and
//!    reported as an [`Alert`] (an Event on the `MemberCluster`, the
//!    `gpupool_unpaid_gpu_seconds` gauge and the `GpupoolUnpaidUsage` alert);
//! 1. every `Final` record is first **reconciled** against the chain at `finalized`
//!    commitment: if its receipt exists (a previous pass sent it, or died before marking), the
//!    record is marked `Settled` with the receipt's amount and nothing is sent;
//! 2. the remaining records are sent in `RecordUsageBatch` transactions (at most
//!    [`MAX_BATCH_RECEIPTS`], one cluster per batch, with compute-budget instructions, the
//!    oracle signing and paying); once confirmed, a record is marked `Settled` only when its
//!    receipt reads back at `finalized`, otherwise it keeps the signature and the next pass's
//!    step 1 decides;
//! 3. a send whose outcome is unknown leaves its records `Final`: the next pass's step 1 decides.
//!    A rejected batch is retried record by record (so one bad record cannot block the others);
//!    a "receipt already exists" rejection is reconciled like step 1.

use crate::api::{MemberCluster, UsageRecord, UsageState};
use crate::ledger::{self, Ledger, SendError, Signer};
use anyhow::{Result, bail};
use gpupool_ledger::MAX_BATCH_RECEIPTS;
use gpupool_ledger::error::LedgerError;
use gpupool_ledger::instruction::{self as ix, UsageEntry};
use gpupool_ledger::state::{ClusterAccount, PoolConfig, UsageReceipt};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use solana_program::pubkey::Pubkey;
use std::collections::BTreeMap;

/// GPU cap the settler gives a cluster it registers when it holds the pool admin's key (the
/// local demo); a real pool's admin sets each cluster's cap itself.
pub const DEMO_GPU_CAP: u32 = 64;

/// Settlement settings.
#[derive(Clone, Debug)]
pub struct SettleConfig {
    /// Receipts per transaction (1..=[`MAX_BATCH_RECEIPTS`]).
    pub max_batch: usize,
    /// The key the meter seals records with: a record without its seal is refused.
    pub seal: super::SealKey,
    /// A paid pool: each record is paid from its job's tenant's escrow (`SettleUsage`, one
    /// tenant per batch, drawn from the job's reservation) instead of minted from nothing.
    pub paid: bool,
}

impl Default for SettleConfig {
    fn default() -> Self {
        SettleConfig {
            max_batch: MAX_BATCH_RECEIPTS,
            seal: super::SealKey::default(),
            paid: false,
        }
    }
}

/// Something about a member's usage that needs a human: the settler (or the meter) refused
/// to pay it. The runner turns each into an Event on the `MemberCluster` and a metric.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Alert {
    /// `MemberCluster` name.
    pub cluster: String,
    /// Short CamelCase reason (Event reason, metric label).
    pub reason: String,
    /// What happened.
    pub message: String,
    /// GPU-seconds left unpaid because of it.
    pub gpu_seconds: i64,
}

/// What one settlement pass did.
#[derive(Clone, Debug, Default)]
pub struct SettleReport {
    /// `Final` records found.
    pub final_records: usize,
    /// Records settled by a transaction this pass confirmed (and read back finalized).
    pub settled: usize,
    /// Records whose receipt was already on chain (marked `Settled`, nothing sent).
    pub reconciled: usize,
    /// Records sent and confirmed, waiting for their receipt to be finalized.
    pub awaiting_finality: usize,
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
    /// Records refused because the hub cannot justify paying them (see [`Alert`]).
    pub refused: usize,
    /// GPU-seconds in records settled this pass (sent or reconciled).
    pub gpu_seconds_settled: u64,
    /// Tokens (base units) minted by transactions this pass confirmed.
    pub tokens_minted: u64,
    /// Refusals to surface.
    pub alerts: Vec<Alert>,
    /// Errors that did not stop the pass.
    pub errors: Vec<String>,
}

struct Pending {
    rec: UsageRecord,
    uid: [u8; 16],
    entry: UsageEntry,
    /// Id of the tenant paying for it in a paid pool (see [`super::budget::tenant_of`]).
    tenant: [u8; 32],
}

/// A member as the settler sees it: alive on the hub, with its identity and owner.
#[derive(Clone, Debug)]
struct Payee {
    cluster_uid: String,
    owner_wallet: String,
}

/// Why the settler will not pay anything to the `MemberCluster`s in `members` named `name`:
/// `Err((reason, message))`, or its identity and wallet. A member is payable when it exists,
/// is not being deleted, has a recorded `kube-system` UID, and no older `MemberCluster`
/// records the same UID (the same physical cluster joined twice).
fn payee(members: &[MemberCluster], name: &str) -> Result<Payee, (String, String)> {
    let Some(m) = members.iter().find(|m| m.name_any() == name) else {
        return Err((
            "NotAMember".into(),
            format!("no MemberCluster {name} exists on the hub; its usage is not paid"),
        ));
    };
    if m.metadata.deletion_timestamp.is_some() {
        return Err((
            "MemberDeleted".into(),
            format!("MemberCluster {name} is being deleted; its usage is not paid"),
        ));
    }
    let Some(uid) = m.cluster_id().map(String::from) else {
        return Err((
            "IdentityUnknown".into(),
            format!("the kube-system UID of {name} is not recorded yet; its usage waits"),
        ));
    };
    if let Some(first) = crate::api::duplicate_of(members, name) {
        return Err((
            "DuplicateJoin".into(),
            format!(
                "MemberCluster {name} is the same cluster (kube-system UID {uid}) as {first}, which joined first; usage is paid only under {first}"
            ),
        ));
    }
    Ok(Payee {
        cluster_uid: uid,
        owner_wallet: m.spec.owner_wallet.clone(),
    })
}

/// Checks a record against what the settler can derive itself; `Err` says why it is refused.
pub fn justify(
    rec: &UsageRecord,
    config: &PoolConfig,
    cluster: &ClusterAccount,
    now: i64,
) -> Result<(), String> {
    let spec = &rec.spec;
    let period = u64::try_from(spec.period).map_err(|_| "negative period".to_string())?;
    let start = i64::try_from(period.saturating_mul(config.period_seconds))
        .map_err(|_| "period out of range".to_string())?;
    let end = config
        .period_end(period)
        .ok_or_else(|| "period out of range".to_string())?;
    if spec.period_start.0.as_second() != start || spec.period_end.0.as_second() != end {
        return Err(format!(
            "period {period} is [{start}, {end}) with the pool's {}-second periods, but the record says [{}, {})",
            config.period_seconds,
            spec.period_start.0.as_second(),
            spec.period_end.0.as_second()
        ));
    }
    if now < end {
        return Err(format!("period {period} has not ended yet"));
    }
    if !config.within_horizon(period, now) {
        return Err(format!(
            "period {period} is older than the pool's settlement horizon of {} periods",
            config.horizon_periods
        ));
    }
    let pods: i64 = spec.pods.values().map(|p| p.gpu_seconds).sum();
    if spec.gpu_seconds <= 0 || pods != spec.gpu_seconds {
        return Err(format!(
            "gpuSeconds {} is not the sum of its pods ({pods})",
            spec.gpu_seconds
        ));
    }
    let len = i64::try_from(config.period_seconds).unwrap_or(i64::MAX);
    for (uid, p) in &spec.pods {
        // A pod the hub could not match is listed with 0 GPUs and 0 paid GPU-seconds.
        if p.gpus < 0 || p.gpu_seconds < 0 || p.gpu_seconds > p.gpus.saturating_mul(len) {
            return Err(format!(
                "pod {} ({uid}) claims {} GPU-seconds on {} GPUs in a {len}-second period",
                p.name, p.gpu_seconds, p.gpus
            ));
        }
    }
    let cap = i64::try_from(config.period_cap(cluster.gpu_cap)).unwrap_or(i64::MAX);
    if spec.gpu_seconds > cap {
        return Err(format!(
            "{} GPU-seconds exceed the cluster's on-chain cap of {} GPUs × {len} s",
            spec.gpu_seconds, cluster.gpu_cap
        ));
    }
    Ok(())
}

/// Why the hub's own facts do not support paying `rec`: its seal is not the meter's, or its
/// job still exists and does not re-derive it (see [`super::proof`]).
pub fn prove(
    rec: &UsageRecord,
    seal: &super::SealKey,
    jobs: &BTreeMap<String, super::HubJob>,
    period_seconds: u64,
) -> Result<(), (&'static str, String)> {
    if !seal.verify(&rec.spec) {
        return Err((
            "UnsealedRecord",
            "the record does not carry the meter's seal: the meter did not write it (or not all of it)".into(),
        ));
    }
    super::proof::rederive(&rec.spec, jobs, period_seconds).map_err(|e| ("NotPlaced", e))
}

/// Settles every `Final` usage record in the hub on the ledger (see the module docs).
/// Fails only when the hub cannot be listed or the pool cannot be read / is not ours.
pub async fn settle_once(
    hub: &Client,
    ledger: &Ledger,
    cfg: &SettleConfig,
) -> Result<SettleReport> {
    let view = super::meter::HubView::list(hub).await?;
    settle_view(hub, ledger, view, cfg).await
}

/// One settlement pass over what the hub holds (`view`), writing through `hub`.
pub async fn settle_view(
    hub: &Client,
    ledger: &Ledger,
    view: super::meter::HubView,
    cfg: &SettleConfig,
) -> Result<SettleReport> {
    let mut report = SettleReport::default();
    let records: Api<UsageRecord> = Api::all(hub.clone());
    let finals: Vec<UsageRecord> = view
        .records
        .values()
        .filter(|r| r.status.as_ref().map(|s| s.state) == Some(UsageState::Final))
        .map(|r| UsageRecord::clone(r))
        .collect();
    report.final_records = finals.len();
    if finals.is_empty() {
        return Ok(report);
    }
    let config = pool_config(ledger).await?;
    if config.oracle != ledger.oracle.pubkey() {
        bail!(
            "the pool's usage oracle is {}, but the operator's key is {}",
            config.oracle,
            ledger.oracle.pubkey()
        );
    }
    let members: Vec<MemberCluster> = view
        .members
        .values()
        .map(|m| MemberCluster::clone(m))
        .collect();
    let jobs = view.hub_jobs();
    let mut by_cluster: BTreeMap<String, Vec<UsageRecord>> = BTreeMap::new();
    for r in finals {
        by_cluster
            .entry(r.spec.cluster.clone())
            .or_default()
            .push(r);
    }
    for (cluster, recs) in by_cluster {
        let payee = match payee(&members, &cluster) {
            Ok(p) => p,
            Err((reason, msg)) => {
                refuse_all(&records, &cluster, &reason, &msg, &recs, &mut report).await;
                continue;
            }
        };
        let c = ClusterSettlement {
            records: &records,
            ledger,
            config: &config,
            cluster: &cluster,
            cluster_id: ledger::cluster_id(&payee.cluster_uid),
            payee: &payee,
            cfg,
            jobs: &jobs,
        };
        if let Err(e) = c.settle(recs, &mut report).await {
            report.errors.push(format!("cluster {cluster}: {e:#}"));
        }
    }
    Ok(report)
}

async fn refuse_all(
    records: &Api<UsageRecord>,
    cluster: &str,
    reason: &str,
    msg: &str,
    recs: &[UsageRecord],
    report: &mut SettleReport,
) {
    // Waiting for the identity is not an alarm; everything else is.
    if reason != "IdentityUnknown" {
        report.alerts.push(Alert {
            cluster: cluster.to_string(),
            reason: reason.to_string(),
            message: msg.to_string(),
            gpu_seconds: recs.iter().map(|r| r.spec.gpu_seconds).sum(),
        });
        report.refused += recs.len();
    } else {
        report.skipped += recs.len();
    }
    for r in recs {
        note(records, r, msg, false).await;
    }
}

fn group_by_wallet(recs: Vec<UsageRecord>) -> BTreeMap<String, Vec<UsageRecord>> {
    let mut out: BTreeMap<String, Vec<UsageRecord>> = BTreeMap::new();
    for r in recs {
        out.entry(r.spec.owner_wallet.trim().to_string())
            .or_default()
            .push(r);
    }
    out
}

/// Settling the `Final` records of one payable member.
struct ClusterSettlement<'a> {
    records: &'a Api<UsageRecord>,
    ledger: &'a Ledger,
    config: &'a PoolConfig,
    cluster: &'a str,
    cluster_id: [u8; 32],
    payee: &'a Payee,
    cfg: &'a SettleConfig,
    jobs: &'a BTreeMap<String, super::HubJob>,
}

impl ClusterSettlement<'_> {
    /// Foreign records refused → cluster account → owner and state checks → reconcile and
    /// justify → the owner's token account → batches.
    async fn settle(&self, recs: Vec<UsageRecord>, report: &mut SettleReport) -> Result<()> {
        let recs = self.refuse_foreign(recs, report).await;
        if recs.is_empty() {
            return Ok(());
        }
        let Some(account) = self.cluster_account(&recs, report).await? else {
            return Ok(());
        };
        let recs = self.payable(&account, recs, report).await;
        let mut pending = Vec::new();
        for rec in recs {
            if let Some(p) = self.pending(rec, &account, report).await {
                pending.push(p);
            }
        }
        if pending.is_empty() {
            return Ok(());
        }
        self.ensure_token_account(&account.owner).await?;
        self.send_all(&account.owner, &mut pending, report).await;
        Ok(())
    }

    /// Records of another physical cluster under this name (the kubeconfig was repointed) are
    /// refused; the others returned.
    async fn refuse_foreign(
        &self,
        recs: Vec<UsageRecord>,
        report: &mut SettleReport,
    ) -> Vec<UsageRecord> {
        let uid = &self.payee.cluster_uid;
        let (recs, foreign): (Vec<_>, Vec<_>) = recs
            .into_iter()
            .partition(|r| r.spec.cluster_uid.is_empty() || r.spec.cluster_uid == *uid);
        if !foreign.is_empty() {
            let msg = format!(
                "metered on a cluster whose kube-system UID is not {}'s ({uid}); not paid",
                self.cluster
            );
            refuse_all(
                self.records,
                self.cluster,
                "IdentityChanged",
                &msg,
                &foreign,
                report,
            )
            .await;
        }
        recs
    }

    /// The cluster's account on chain, registered first when the operator holds the owner's and
    /// registrar's keys (the demo); `None` (records noted) when it is not registered.
    async fn cluster_account(
        &self,
        recs: &[UsageRecord],
        report: &mut SettleReport,
    ) -> Result<Option<ClusterAccount>> {
        let client = self.ledger.client.as_ref();
        let program = gpupool_ledger::ID;
        let mut account = ledger::read_cluster(client, &program, &self.cluster_id).await?;
        if account.is_none() {
            if !self.register(report).await? {
                let msg = format!(
                    "cluster {} is not registered on the ledger; its owner ({}) and the pool's registrar must sign RegisterCluster before its usage can be paid",
                    self.cluster, self.payee.owner_wallet
                );
                for r in recs {
                    note(self.records, r, &msg, false).await;
                }
                report.skipped += recs.len();
                return Ok(None);
            }
            account = ledger::read_cluster(client, &program, &self.cluster_id).await?;
        }
        let Some(mut account) = account else {
            bail!("cluster account still missing after registration");
        };
        if account.gpu_cap == 0
            && let Some(a) = self.demo_cap().await?
        {
            account = a;
        }
        Ok(Some(account))
    }

    /// Registers the cluster when the operator holds the owner's and the registrar's keys;
    /// `false` when it does not.
    async fn register(&self, report: &mut SettleReport) -> Result<bool> {
        let owner = ledger::parse_wallet(&self.payee.owner_wallet).ok();
        let (Some(owner_kp), Some(registrar)) = (
            owner.and_then(|o| self.ledger.owner_signers.get(&o)),
            self.ledger.registrar.as_ref(),
        ) else {
            return Ok(false);
        };
        let oracle = self.ledger.oracle.pubkey();
        let res = self
            .ledger
            .send(
                &[
                    ix::create_associated_token_account_idempotent(
                        &oracle,
                        &owner_kp.pubkey(),
                        &self.config.mint,
                    ),
                    ix::register_cluster(
                        &oracle,
                        &owner_kp.pubkey(),
                        &registrar.pubkey(),
                        &self.cluster_id,
                    ),
                ],
                &[owner_kp, registrar],
            )
            .await;
        match res {
            Ok(_) => report.clusters_registered += 1,
            Err(e) if e.ledger_error() == Some(LedgerError::ClusterAlreadyRegistered) => {}
            Err(e) => bail!("registering the cluster on chain: {e}"),
        }
        Ok(true)
    }

    /// Demo only: the operator holds the admin key and gives the cluster a GPU cap.
    async fn demo_cap(&self) -> Result<Option<ClusterAccount>> {
        let Some(admin) = self.ledger.admin.as_ref() else {
            return Ok(None);
        };
        let sent = self
            .ledger
            .send(
                &[ix::configure_cluster(
                    &admin.pubkey(),
                    &self.cluster_id,
                    DEMO_GPU_CAP,
                    false,
                )],
                &[admin],
            )
            .await;
        if sent.is_err() {
            return Ok(None);
        }
        ledger::read_cluster(
            self.ledger.client.as_ref(),
            &gpupool_ledger::ID,
            &self.cluster_id,
        )
        .await
    }

    /// The records payable now: the cluster must be enabled on chain, and each record is paid
    /// only to the wallet it was metered for (its own immutable `ownerWallet`), which must be
    /// the cluster's owner on chain: usage metered under one owner is never paid to another,
    /// and editing the `MemberCluster`'s `ownerWallet` blocks nothing metered before.
    async fn payable(
        &self,
        account: &ClusterAccount,
        recs: Vec<UsageRecord>,
        report: &mut SettleReport,
    ) -> Vec<UsageRecord> {
        let (cluster, owner) = (self.cluster, account.owner);
        if account.disabled {
            let msg = format!("cluster {cluster} is disabled on the ledger; not paid");
            refuse_all(
                self.records,
                cluster,
                "ClusterDisabled",
                &msg,
                &recs,
                report,
            )
            .await;
            return Vec::new();
        }
        let (ours, others): (Vec<_>, Vec<_>) = recs
            .into_iter()
            .partition(|r| r.spec.owner_wallet.trim() == owner.to_string());
        for (wallet, recs) in group_by_wallet(others) {
            let msg = format!(
                "metered for owner {wallet}, but the ledger pays cluster {cluster} to {owner}; not paid to anyone else (waits until the ledger names {wallet} again)"
            );
            refuse_all(self.records, cluster, "OwnerMismatch", &msg, &recs, report).await;
        }
        ours
    }

    /// One record: reconciled against a finalized receipt, or checked (arithmetic, seal, hub
    /// facts, rate) and returned to be sent; `None` when there is nothing to send now.
    async fn pending(
        &self,
        rec: UsageRecord,
        account: &ClusterAccount,
        report: &mut SettleReport,
    ) -> Option<Pending> {
        let Some(uid) = gpupool_ledger::state::parse_job_uid(&rec.spec.job_uid) else {
            let msg = format!(
                "job uid {:?} is not a UUID; cannot be settled",
                rec.spec.job_uid
            );
            note(self.records, &rec, &msg, false).await;
            report.skipped += 1;
            return None;
        };
        let period = rec.spec.period.max(0) as u64;
        if self.on_chain(&rec, &uid, period, report).await {
            return None;
        }
        if rec.spec.gpu_seconds <= 0 {
            // Nothing the hub can prove was used (see unpaidGpuSeconds): nothing to pay.
            report.skipped += 1;
            return None;
        }
        let now = Timestamp::now().as_second();
        let checked = justify(&rec, self.config, account, now)
            .map_err(|why| ("UnjustifiedUsage", why))
            .and_then(|()| prove(&rec, &self.cfg.seal, self.jobs, self.config.period_seconds));
        if let Err((reason, why)) = checked {
            let msg = format!("not paid: {why}");
            report.alerts.push(Alert {
                cluster: self.cluster.to_string(),
                reason: reason.into(),
                message: format!("{}: {msg}", rec.name_any()),
                gpu_seconds: rec.spec.gpu_seconds,
            });
            report.refused += 1;
            note(self.records, &rec, &msg, false).await;
            return None;
        }
        let class = rec.spec.gpu_class;
        let rate = u8::try_from(class)
            .ok()
            .and_then(|c| self.config.rate(c, period))
            .unwrap_or(0);
        if rate == 0 {
            note(self.records, &rec, &format!("GPU class {class} has no rate on the ledger for period {period}; waiting for the pool admin to price it"), false).await;
            report.skipped += 1;
            return None;
        }
        let entry = UsageEntry {
            job_uid: uid,
            period,
            gpu_seconds: rec.spec.gpu_seconds as u64,
            gpu_class: class as u8,
        };
        let tenant = super::budget::tenant_id_of(&rec.spec.job_namespace);
        Some(Pending {
            rec,
            uid,
            entry,
            tenant,
        })
    }

    /// Whether the record's receipt is already on chain: finalized (the record is marked
    /// `Settled`), or sent and confirmed earlier and not final yet (wait, do not resend). A
    /// read error counts as "on chain" for this pass (nothing is sent blindly).
    async fn on_chain(
        &self,
        rec: &UsageRecord,
        uid: &[u8; 16],
        period: u64,
        report: &mut SettleReport,
    ) -> bool {
        let program = gpupool_ledger::ID;
        let finalized = self.ledger.finalized.as_ref();
        match ledger::read_receipt(finalized, &program, &self.cluster_id, uid, period).await {
            Ok(Some(receipt)) => {
                mark_settled(self.records, rec, &receipt, None, report).await;
                report.reconciled += 1;
                return true;
            }
            Ok(None) => {}
            Err(e) => {
                report
                    .errors
                    .push(format!("{}: reading its receipt: {e:#}", rec.name_any()));
                return true;
            }
        }
        let client = self.ledger.client.as_ref();
        if let Ok(Some(_)) =
            ledger::read_receipt(client, &program, &self.cluster_id, uid, period).await
        {
            report.awaiting_finality += 1;
            return true;
        }
        false
    }

    /// The owner's token account must exist for MintTo.
    async fn ensure_token_account(&self, owner: &Pubkey) -> Result<()> {
        let ata = gpupool_ledger::state::get_associated_token_address(owner, &self.config.mint);
        if self.ledger.client.get_account(&ata).await?.is_some() {
            return Ok(());
        }
        let oracle = self.ledger.oracle.pubkey();
        self.ledger
            .send(
                &[ix::create_associated_token_account_idempotent(
                    &oracle,
                    owner,
                    &self.config.mint,
                )],
                &[],
            )
            .await
            .map_err(|e| anyhow::anyhow!("creating the owner's token account {ata}: {e}"))?;
        Ok(())
    }

    /// Sends the records in batches (in a paid pool, one tenant per batch); a rejected batch
    /// is retried record by record.
    async fn send_all(&self, owner: &Pubkey, pending: &mut [Pending], report: &mut SettleReport) {
        let (records, ledger, cluster_id) = (self.records, self.ledger, &self.cluster_id);
        let max = self.cfg.max_batch.clamp(1, MAX_BATCH_RECEIPTS);
        let paid = self.cfg.paid;
        if paid {
            pending.sort_by_key(|p| p.tenant);
        }
        let groups = pending.chunk_by(|a, b| !paid || a.tenant == b.tenant);
        for chunk in groups.flat_map(|g| g.chunks(max)) {
            match self.send_batch(owner, chunk).await {
                Ok(sig) => {
                    report.batches_sent += 1;
                    let sig = sig.to_string();
                    after_confirmed(records, ledger, cluster_id, chunk, &sig, report).await;
                }
                Err(e) => {
                    report.batches_failed += 1;
                    match &e {
                        SendError::Rejected { .. } => {
                            // One record may be bad (or already paid): go one by one.
                            for p in chunk {
                                self.settle_single(owner, p, report).await;
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
    }

    /// One batch: `RecordUsageBatch`, or in a paid pool `SettleUsage` from the tenant of the
    /// chunk's records (all of one tenant).
    async fn send_batch(
        &self,
        owner: &Pubkey,
        chunk: &[Pending],
    ) -> Result<solana_signature::Signature, SendError> {
        let (ledger, config, cluster_id) = (self.ledger, self.config, &self.cluster_id);
        let entries: Vec<UsageEntry> = chunk.iter().map(|p| p.entry).collect();
        let instructions = match chunk.first().filter(|_| self.cfg.paid) {
            Some(first) => ledger.escrow_batch_instructions(
                &config.mint,
                cluster_id,
                owner,
                &first.tenant,
                &config.treasury,
                &entries,
            ),
            None => ledger.usage_batch_instructions(&config.mint, cluster_id, owner, &entries),
        };
        ledger.send(&instructions, &[]).await
    }

    async fn settle_single(&self, owner: &Pubkey, p: &Pending, report: &mut SettleReport) {
        let (records, ledger, cluster_id) = (self.records, self.ledger, &self.cluster_id);
        let client = ledger.client.as_ref();
        let program = gpupool_ledger::ID;
        let one = std::slice::from_ref(p);
        if let Ok(Some(_)) =
            ledger::read_receipt(client, &program, cluster_id, &p.uid, p.entry.period).await
        {
            // Already on chain (a concurrent or earlier send): settled once finalized.
            after_confirmed(records, ledger, cluster_id, one, "", report).await;
            return;
        }
        match self.send_batch(owner, one).await {
            Ok(sig) => {
                report.batches_sent += 1;
                after_confirmed(records, ledger, cluster_id, one, &sig.to_string(), report).await;
            }
            Err(e) => {
                report.batches_failed += 1;
                if e.ledger_error() == Some(LedgerError::ReceiptAlreadyExists) {
                    after_confirmed(records, ledger, cluster_id, one, "", report).await;
                    return;
                }
                failed(records, &p.rec, &e, report).await;
            }
        }
    }
}

/// The pool's configuration on chain; an error when the pool is not initialized there.
async fn pool_config(ledger: &Ledger) -> Result<PoolConfig> {
    let client = ledger.client.as_ref();
    match ledger::read_config(client, &gpupool_ledger::ID).await? {
        Some(c) => Ok(c),
        None => bail!(
            "the gpupool pool is not initialized on {}",
            client.describe()
        ),
    }
}

/// After a confirmed transaction (`sig`, or "" when the receipt was found instead): marks
/// each record `Settled` once its receipt reads back at `finalized`, else notes the
/// signature and leaves it `Final` for the next pass.
async fn after_confirmed(
    records: &Api<UsageRecord>,
    ledger: &Ledger,
    cluster_id: &[u8; 32],
    chunk: &[Pending],
    sig: &str,
    report: &mut SettleReport,
) {
    for p in chunk {
        match ledger::read_receipt(
            ledger.finalized.as_ref(),
            &gpupool_ledger::ID,
            cluster_id,
            &p.uid,
            p.entry.period,
        )
        .await
        {
            Ok(Some(receipt)) => {
                if sig.is_empty() {
                    mark_settled(records, &p.rec, &receipt, None, report).await;
                    report.reconciled += 1;
                } else {
                    report.tokens_minted = report.tokens_minted.saturating_add(receipt.amount);
                    mark_settled(records, &p.rec, &receipt, Some(sig), report).await;
                    report.settled += 1;
                }
            }
            _ => {
                report.awaiting_finality += 1;
                let msg = if sig.is_empty() {
                    "receipt on chain, waiting for finalization".to_string()
                } else {
                    format!("sent in {sig}; settled once finalized")
                };
                let mut status = json!({"message": msg});
                if !sig.is_empty() {
                    status["signature"] = json!(sig);
                }
                let _ = records
                    .patch_status(
                        &p.rec.name_any(),
                        &PatchParams::default(),
                        &Patch::Merge(&json!({"status": status})),
                    )
                    .await;
            }
        }
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
    let mut patch = json!({"status": {
        "state": UsageState::Settled,
        "amount": i64::try_from(receipt.amount).unwrap_or(i64::MAX),
        "settledGpuSeconds": i64::try_from(receipt.gpu_seconds).unwrap_or(i64::MAX),
        "settledAt": Time(Timestamp::now()),
        "message": message,
    }});
    // Without a signature of its own, keep the one an earlier pass noted.
    if let Some(sig) = sig {
        patch["status"]["signature"] = json!(sig);
    }
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

/// Close instructions per transaction in [`close_expired_receipts`] (each names a distinct
/// receipt; a dozen keep the transaction well under the packet size).
pub const MAX_CLOSES_PER_TX: usize = 12;

/// What one receipt sweep did.
#[derive(Clone, Debug, Default)]
pub struct SweepReport {
    /// Receipts closed by this sweep's transactions.
    pub closed: usize,
    /// Records whose receipt was already gone (closed earlier, e.g. before a crash), marked.
    pub already_closed: usize,
    /// Lamports of rent the closed receipts returned to their payers.
    pub rent_reclaimed_lamports: u64,
    /// Settled records whose period is still inside the horizon by the chain's clock.
    pub waiting: usize,
    /// Errors that did not stop the sweep.
    pub errors: Vec<String>,
}

struct Closable {
    rec: UsageRecord,
    receipt: Pubkey,
    rent_payer: Pubkey,
    lamports: u64,
}

/// Closes the on-chain receipts of `Settled` records whose period is past the pool's
/// settlement horizon by the chain's clock, returning each receipt's rent to its payer (the
/// oracle, which paid it), and marks the records `receiptClosedAt`.
///
/// Exactly-once still holds after a close: the program refuses to record a period outside the
/// horizon, so a replayed receipt is refused for its period, not for the missing account. A
/// receipt already gone (a sweep that died before marking) is just marked. Transactions close
/// up to [`MAX_CLOSES_PER_TX`] receipts; a refused one is retried receipt by receipt.
pub async fn close_expired_receipts(hub: &Client, ledger: &Ledger) -> Result<SweepReport> {
    let view = super::meter::HubView::list(hub).await?;
    close_expired_in(hub, ledger, &view).await
}

/// [`close_expired_receipts`] over what the hub holds (`view`), writing through `hub`.
pub async fn close_expired_in(
    hub: &Client,
    ledger: &Ledger,
    view: &super::meter::HubView,
) -> Result<SweepReport> {
    let mut report = SweepReport::default();
    let records: Api<UsageRecord> = Api::all(hub.clone());
    let settled: Vec<&UsageRecord> = view
        .records
        .values()
        .map(|r| r.as_ref())
        .filter(|r| {
            r.status
                .as_ref()
                .is_some_and(|s| s.state == UsageState::Settled && s.receipt_closed_at.is_none())
        })
        .collect();
    if settled.is_empty() {
        return Ok(report);
    }
    let config = pool_config(ledger).await?;
    // The program decides by its own clock; asking it for receipts it will refuse is waste.
    let chain_now = ledger::chain_unix_time(ledger.client.as_ref())
        .await
        .ok()
        .flatten()
        .unwrap_or_else(|| Timestamp::now().as_second());
    let mut closable = Vec::new();
    for rec in settled {
        let period = rec.spec.period.max(0) as u64;
        if config.within_horizon(period, chain_now) {
            report.waiting += 1;
            continue;
        }
        match closable_receipt(ledger, view, rec, period).await {
            Ok(Some(c)) => closable.push(c),
            Ok(None) => {
                if mark_closed(&records, rec, &mut report).await {
                    report.already_closed += 1;
                }
            }
            Err(e) => report.errors.push(e),
        }
    }
    close_all(&records, ledger, &closable, &mut report).await;
    Ok(report)
}

/// The receipt of settled record `rec`, if it is still open on chain (`Ok(None)`: closed
/// already); `Err` when its address cannot be derived or read.
async fn closable_receipt(
    ledger: &Ledger,
    view: &super::meter::HubView,
    rec: &UsageRecord,
    period: u64,
) -> Result<Option<Closable>, String> {
    let program = gpupool_ledger::ID;
    // The identity the record was metered (and paid) under; older records without one were
    // paid under their member's.
    let uid = if rec.spec.cluster_uid.is_empty() {
        view.members
            .get(&rec.spec.cluster)
            .and_then(|m| m.cluster_id().map(String::from))
    } else {
        Some(rec.spec.cluster_uid.clone())
    };
    let (Some(uid), Some(job)) = (uid, gpupool_ledger::state::parse_job_uid(&rec.spec.job_uid))
    else {
        return Err(format!(
            "{}: cannot derive its receipt address (cluster identity or job uid unknown)",
            rec.name_any()
        ));
    };
    let key = ledger::receipt_address(&program, &ledger::cluster_id(&uid), &job, period);
    let acc = ledger
        .client
        .get_account(&key)
        .await
        .map_err(|e| format!("{}: reading receipt {key}: {e:#}", rec.name_any()))?;
    // Closed accounts read back empty (or as a system account someone sent lamports to).
    Ok(acc
        .filter(|a| a.owner == program && a.lamports > 0)
        .and_then(|a| {
            gpupool_ledger::state::unpack::<UsageReceipt>(
                &a.data,
                UsageReceipt::LEN,
                gpupool_ledger::state::TAG_RECEIPT,
            )
            .ok()
            .map(|r| (r, a.lamports))
        })
        .map(|(r, lamports)| Closable {
            rec: rec.clone(),
            receipt: key,
            rent_payer: r.rent_payer,
            lamports,
        }))
}

/// Closes receipts [`MAX_CLOSES_PER_TX`] per transaction; a refused transaction is retried
/// receipt by receipt.
async fn close_all(
    records: &Api<UsageRecord>,
    ledger: &Ledger,
    closable: &[Closable],
    report: &mut SweepReport,
) {
    for chunk in closable.chunks(MAX_CLOSES_PER_TX) {
        let ixs: Vec<_> = chunk
            .iter()
            .map(|c| ix::close_receipt(&c.receipt, &c.rent_payer))
            .collect();
        match ledger.send(&ixs, &[]).await {
            Ok(_) => {
                for c in chunk {
                    closed(records, c, report).await;
                }
            }
            Err(_) if chunk.len() > 1 => {
                for c in chunk {
                    match ledger
                        .send(&[ix::close_receipt(&c.receipt, &c.rent_payer)], &[])
                        .await
                    {
                        Ok(_) => closed(records, c, report).await,
                        Err(e) => close_failed(c, &e, report),
                    }
                }
            }
            Err(e) => close_failed(&chunk[0], &e, report),
        }
    }
}

fn close_failed(c: &Closable, e: &SendError, report: &mut SweepReport) {
    // Not expired by the chain's clock after all: the next sweep tries again, quietly.
    if e.ledger_error() == Some(LedgerError::ReceiptNotExpired) {
        report.waiting += 1;
    } else {
        report.errors.push(format!(
            "{}: closing receipt {}: {e}",
            c.rec.name_any(),
            c.receipt
        ));
    }
}

async fn closed(records: &Api<UsageRecord>, c: &Closable, report: &mut SweepReport) {
    report.closed += 1;
    report.rent_reclaimed_lamports = report.rent_reclaimed_lamports.saturating_add(c.lamports);
    mark_closed(records, &c.rec, report).await;
}

/// Sets `receiptClosedAt` (a failure leaves it for the next sweep, which finds the receipt
/// gone and marks it then).
async fn mark_closed(
    records: &Api<UsageRecord>,
    rec: &UsageRecord,
    report: &mut SweepReport,
) -> bool {
    let patch = json!({"status": {"receiptClosedAt": Time(Timestamp::now())}});
    match records
        .patch_status(
            &rec.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        Ok(_) => true,
        Err(e) => {
            report.errors.push(format!(
                "{}: marking its receipt closed: {e}",
                rec.name_any()
            ));
            false
        }
    }
}
