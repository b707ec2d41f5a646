//! Tenant budgets of a paid pool: who pays for a job, how much of its tenant's escrow it holds,
//! and whether a waiting job may start.
//!
//! In a **paid** pool (`--paid-pool`) consumers pay for what owners earn: usage is settled
//! with `SettleUsage`, which burns the job's cost from its tenant's escrow and mints it (less
//! the pool's bounded fee) to the cluster's owner, drawing from the job's on-chain reservation.
//! An unpaid pool settles with `RecordUsageBatch` as before.
//!
//! * **Tenant**: the hub namespace of the job ([`tenant_of`], the one place the mapping
//!   lives). Its on-chain id is `sha256("gpupool/tenant/v1" || namespace)`
//!   ([`tenant_id_of`]): stable across restarts, hub rebuilds and renames of nothing but the
//!   namespace itself.
//! * **Reservation**: every pass of the metering loop, each placed job's reservation
//!   (`Reserve` by job UID) is topped up to what its usage not yet settled costs plus one
//!   [`BudgetConfig::window_seconds`] window of all its GPUs at the highest rate any GPU
//!   class may be paid in that window (never beyond what is left of `maxRuntimeSeconds`).
//!   It is renewed once less than half a window is left ahead, and released (`Release`)
//!   once the job is gone or finished and every usage record of it is settled.
//! * **Admission**: the scheduler asks [`Budget::funded`], an in-memory check against the
//!   escrows as last read from the chain, so no chain call is on its path; an admitted job
//!   holds a promise on its tenant's unreserved escrow until its reservation is on chain.
//! * **Exhaustion**: a job whose reservation cannot be renewed is noted with the time; its
//!   controller sets `BudgetExhausted` and stops it once [`BudgetConfig::grace_seconds`]
//!   have passed without a renewal.
//!
//! Restart safety: reservations are read back from the chain for every job the hub still
//! knows (live jobs and jobs with usage records), the promises are rebuilt by the scheduler's
//! next look at each waiting job.

use crate::api::{InferenceJob, TrainingJob, TrainingPhase, UsageRecord, UsageState};
use crate::ledger::{self, Ledger, SendError};
use gpupool_ledger::error::LedgerError;
use gpupool_ledger::state::PoolConfig;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The tenant that pays for a hub job in namespace `job_namespace`: the namespace itself.
pub fn tenant_of(job_namespace: &str) -> &str {
    job_namespace.trim()
}

/// On-chain id of the tenant paying for jobs of `job_namespace` (see the module docs).
pub fn tenant_id_of(job_namespace: &str) -> [u8; 32] {
    ledger::tenant_id(tenant_of(job_namespace))
}

/// Settings of a pool's budgets.
#[derive(Clone, Debug)]
pub struct BudgetConfig {
    /// Tenants pay for usage from their escrows (see the module docs).
    pub paid: bool,
    /// Seconds of all of a job's GPUs a reservation covers ahead.
    pub window_seconds: u64,
    /// Seconds a job whose reservation cannot be renewed keeps running before it is stopped.
    pub grace_seconds: u64,
}

impl Default for BudgetConfig {
    fn default() -> Self {
        BudgetConfig {
            paid: false,
            window_seconds: 3600,
            grace_seconds: 300,
        }
    }
}

/// Highest rate (base units per GPU-second) any GPU class may be paid for usage of periods
/// `first..=last`: every rate version in force in that span counts.
pub fn highest_rate(config: &PoolConfig, first: u64, last: u64) -> u64 {
    let versions = config.versions();
    versions
        .iter()
        .enumerate()
        .filter(|(i, v)| {
            let ends = versions.get(i + 1).map(|n| n.effective_from);
            v.effective_from <= last && ends.is_none_or(|e| e > first)
        })
        .flat_map(|(_, v)| v.rates)
        .max()
        .unwrap_or(0)
}

/// Tokens that pay `gpus` GPUs for `seconds` at `rate`.
pub fn cost(gpus: u64, seconds: u64, rate: u64) -> u64 {
    gpus.saturating_mul(seconds).saturating_mul(rate)
}

/// "hour", "30 minutes", "90 s": a window for messages.
pub fn describe_window(seconds: u64) -> String {
    match seconds {
        3600 => "hour".into(),
        60 => "minute".into(),
        s if s % 3600 == 0 => format!("{} hours", s / 3600),
        s if s % 60 == 0 => format!("{} minutes", s / 60),
        s => format!("{s} s"),
    }
}

/// What a job asks of its tenant's budget.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Demand {
    /// Job UID on the hub.
    pub uid: String,
    /// Job namespace (its tenant, see [`tenant_of`]).
    pub namespace: String,
    /// `Kind/name` for messages.
    pub name: String,
    /// GPUs of all its workers or replicas.
    pub gpus: u64,
    /// Seconds it may still run (`maxRuntimeSeconds` less what it ran), if bounded.
    pub runtime_left: Option<u64>,
    /// Placed and not finished: it holds (or must hold) a reservation.
    pub live: bool,
    /// Finished or being deleted: its reservation is released once its usage is settled.
    pub ended: bool,
}

impl Demand {
    /// The seconds its reservation covers ahead.
    pub fn window(&self, cfg: &BudgetConfig) -> u64 {
        self.runtime_left
            .map_or(cfg.window_seconds, |r| r.min(cfg.window_seconds))
    }
}

/// A training job's demand at unix second `now`.
pub fn training_demand(j: &TrainingJob, now: i64) -> Option<Demand> {
    let st = j.status.as_ref();
    let phase = st.map(|s| s.phase).unwrap_or_default();
    let finished = matches!(phase, TrainingPhase::Succeeded | TrainingPhase::Failed);
    let placed = st.and_then(|s| s.cluster.as_ref()).is_some();
    let ran = st
        .and_then(|s| s.start_time.as_ref())
        .map_or(0, |t| (now - t.0.as_second()).max(0));
    Some(Demand {
        uid: j.uid()?,
        namespace: j.namespace()?,
        name: format!("TrainingJob/{}", j.name_any()),
        gpus: u64::try_from(j.spec.workers.max(0))
            .unwrap_or(0)
            .saturating_mul(u64::try_from(j.spec.gpus_per_worker.max(0)).unwrap_or(0)),
        runtime_left: j
            .spec
            .max_runtime_seconds
            .filter(|m| *m > 0)
            .map(|m| u64::try_from((m - ran).max(0)).unwrap_or(0)),
        live: placed && !finished && j.metadata.deletion_timestamp.is_none(),
        ended: finished || j.metadata.deletion_timestamp.is_some(),
    })
}

/// An inference job's demand (it runs until deleted).
pub fn inference_demand(j: &InferenceJob) -> Option<Demand> {
    let placed = j.status.as_ref().is_some_and(|s| !s.placements.is_empty());
    Some(Demand {
        uid: j.uid()?,
        namespace: j.namespace()?,
        name: format!("InferenceJob/{}", j.name_any()),
        gpus: u64::try_from(j.spec.replicas.max(0))
            .unwrap_or(0)
            .saturating_mul(u64::try_from(j.spec.gpus_per_replica.max(0)).unwrap_or(0)),
        runtime_left: None,
        live: placed && j.metadata.deletion_timestamp.is_none(),
        ended: j.metadata.deletion_timestamp.is_some(),
    })
}

/// A tenant's escrow as last read from the chain.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct TenantView {
    /// Tokens in the escrow.
    pub escrow: u64,
    /// Of which reserved for jobs.
    pub reserved: u64,
    /// Lifetime deposits, withdrawals and spending (burned and fees).
    pub deposited: u64,
    /// See `deposited`.
    pub withdrawn: u64,
    /// See `deposited`.
    pub spent: u64,
}

/// How long an admitted job's promise holds its tenant's escrow without a reservation.
const PROMISE_TTL: Duration = Duration::from_secs(120);

#[derive(Debug, Default)]
struct View {
    cfg: BudgetConfig,
    /// Highest rate a job may be paid in the next window; `None` before the first read.
    rate: Option<u64>,
    tenants: BTreeMap<String, TenantView>,
    /// Job UID → what is left of its reservation on chain.
    reserved: BTreeMap<String, u64>,
    /// Job UID → (tenant, amount, when): admitted, not reserved yet.
    promised: BTreeMap<String, (String, u64, Instant)>,
    /// Job UID → (unix second since, why): its reservation cannot be renewed.
    exhausted: BTreeMap<String, (i64, String)>,
    /// Jobs whose reservation was released (not read again).
    released: BTreeSet<String>,
}

/// Called after each refresh of the budgets (the scheduler wakes the jobs waiting for one).
pub type OnRefresh = Arc<dyn Fn() + Send + Sync>;

/// The in-memory view of tenant escrows and job reservations that the scheduler and the job
/// controllers read, refreshed by the metering loop ([`maintain`]).
#[derive(Clone, Default)]
pub struct Budget {
    inner: Arc<Mutex<View>>,
    refreshed: Arc<Mutex<Option<OnRefresh>>>,
}

impl std::fmt::Debug for Budget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Budget")
            .field("view", &*self.lock())
            .finish()
    }
}

impl Budget {
    /// A budget with `cfg`.
    pub fn new(cfg: BudgetConfig) -> Budget {
        let me = Budget::default();
        me.lock().cfg = cfg;
        me
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, View> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Registers what to call after each refresh.
    pub fn on_refresh(&self, f: OnRefresh) {
        *self.refreshed.lock().unwrap_or_else(|e| e.into_inner()) = Some(f);
    }

    fn notify(&self) {
        let f = self
            .refreshed
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone();
        if let Some(f) = f {
            f();
        }
    }

    /// The settings.
    pub fn config(&self) -> BudgetConfig {
        self.lock().cfg.clone()
    }

    /// Whether the job may start: always in an unpaid pool; in a paid pool when it already
    /// holds a reservation or its tenant's unreserved escrow covers its first window (then a
    /// promise holds that much until the reservation is on chain). `Err` says why it waits.
    pub fn funded(&self, d: &Demand) -> Result<(), String> {
        let mut v = self.lock();
        if !v.cfg.paid || v.reserved.contains_key(&d.uid) {
            return Ok(());
        }
        let tenant = tenant_of(&d.namespace).to_string();
        let Some(rate) = v.rate else {
            return Err(format!(
                "tenant {tenant}: waiting for the pool's escrows to be read from the ledger"
            ));
        };
        let Some(t) = v.tenants.get(&tenant) else {
            return Err(format!(
                "tenant {tenant}: no escrow is open on the ledger (gpupool escrow open --tenant {tenant})"
            ));
        };
        let window = d.window(&v.cfg);
        let need = cost(d.gpus, window, rate);
        let promised: u64 = v
            .promised
            .iter()
            .filter(|(uid, (t, _, at))| {
                *uid != &d.uid && *t == tenant && at.elapsed() < PROMISE_TTL
            })
            .map(|(_, (_, a, _))| *a)
            .sum();
        let free = t.escrow.saturating_sub(t.reserved).saturating_sub(promised);
        if free < need {
            return Err(format!(
                "tenant {tenant}: escrow {free} tokens, this job needs {need} for its first {}",
                describe_window(window)
            ));
        }
        v.promised
            .insert(d.uid.clone(), (tenant, need, Instant::now()));
        Ok(())
    }

    /// Since when (unix second) and why job `uid`'s reservation cannot be renewed.
    pub fn exhausted(&self, uid: &str) -> Option<(i64, String)> {
        self.lock().exhausted.get(uid).cloned()
    }

    /// A tenant's escrow as last read.
    pub fn tenant(&self, tenant: &str) -> Option<TenantView> {
        self.lock().tenants.get(tenant).cloned()
    }

    /// What is left of job `uid`'s reservation, as last read.
    pub fn reservation(&self, uid: &str) -> Option<u64> {
        self.lock().reserved.get(uid).copied()
    }
}

/// What one budget pass did.
#[derive(Clone, Debug, Default)]
pub struct BudgetReport {
    /// Tokens newly reserved.
    pub reserved: u64,
    /// Reservations released.
    pub released: usize,
    /// Jobs whose reservation could not be renewed: (job UID, `Kind/name`, message).
    pub exhausted: Vec<(String, String, String)>,
    /// Errors that did not stop the pass.
    pub errors: Vec<String>,
    /// Per tenant: its escrow as read at the end of the pass, and the most tokens per second
    /// its running jobs cost.
    pub tenants: BTreeMap<String, (TenantView, u64)>,
}

/// Usage of job `uid` not settled yet, priced at the rates of its periods.
fn unsettled_cost<'a>(
    uid: &str,
    records: impl Iterator<Item = &'a UsageRecord>,
    config: &PoolConfig,
) -> u64 {
    records
        .filter(|r| r.spec.job_uid == uid)
        .filter(|r| r.status.as_ref().map(|s| s.state) != Some(UsageState::Settled))
        .map(|r| {
            let period = u64::try_from(r.spec.period).unwrap_or(0);
            let rate = u8::try_from(r.spec.gpu_class)
                .ok()
                .and_then(|c| config.rate(c, period))
                .unwrap_or(0);
            cost(1, u64::try_from(r.spec.gpu_seconds).unwrap_or(0), rate)
        })
        .sum()
}

/// The top-up a live job needs now (0 when what it holds covers more than half a window
/// beyond its unsettled usage): up to unsettled usage plus one window.
pub fn top_up(held: u64, unsettled: u64, window_cost: u64) -> u64 {
    let low = unsettled.saturating_add(window_cost / 2);
    if held >= low && window_cost > 0 {
        return 0;
    }
    unsettled.saturating_add(window_cost).saturating_sub(held)
}

/// One budget pass (paid pools only): reads every tenant escrow and job reservation the hub
/// knows of, tops up live jobs' reservations, releases finished jobs' reservations, and
/// refreshes the in-memory view the scheduler and the job controllers read.
pub async fn maintain(
    budget: &Budget,
    ledger: &Ledger,
    view: &super::meter::HubView,
    config: &PoolConfig,
    now: i64,
) -> BudgetReport {
    let mut report = BudgetReport::default();
    let cfg = budget.config();
    if !cfg.paid {
        return report;
    }
    let demands: Vec<Demand> = view
        .training
        .iter()
        .filter_map(|j| training_demand(j, now))
        .chain(view.inference.iter().filter_map(|j| inference_demand(j)))
        .collect();
    let period = config.period_at(now);
    let last = config.period_at(now.saturating_add(i64::try_from(cfg.window_seconds).unwrap_or(0)));
    let rate = highest_rate(config, period, last);
    let tenants = read_tenants(ledger, view, &demands, &mut report).await;
    let mut reserved = BTreeMap::new();
    for d in demands.iter().filter(|d| d.live) {
        let unsettled = unsettled_cost(&d.uid, view.records.values().map(|r| r.as_ref()), config);
        let need = cost(d.gpus, d.window(&cfg), rate);
        match renew(ledger, config, d, unsettled, need).await {
            Ok((held, added)) => {
                report.reserved = report.reserved.saturating_add(added);
                reserved.insert(d.uid.clone(), held);
            }
            Err((held, why)) => {
                report.exhausted.push((d.uid.clone(), d.name.clone(), why));
                reserved.insert(d.uid.clone(), held);
            }
        }
    }
    release_finished(budget, ledger, view, config, &demands, &mut report).await;
    let tenants = read_tenants_again(ledger, tenants, &mut report).await;
    for (name, t) in &tenants {
        let burn = demands
            .iter()
            .filter(|d| d.live && tenant_of(&d.namespace) == name)
            .map(|d| cost(d.gpus, 1, rate))
            .sum();
        report.tenants.insert(name.clone(), (t.clone(), burn));
    }
    let mut v = budget.lock();
    v.rate = Some(rate);
    v.tenants = tenants;
    for uid in reserved.keys() {
        v.promised.remove(uid);
    }
    v.promised
        .retain(|_, (_, _, at)| at.elapsed() < PROMISE_TTL);
    let live: BTreeSet<&String> = demands.iter().filter(|d| d.live).map(|d| &d.uid).collect();
    let exhausted_now: BTreeMap<String, String> = report
        .exhausted
        .iter()
        .map(|(uid, _, why)| (uid.clone(), why.clone()))
        .collect();
    v.exhausted
        .retain(|uid, _| exhausted_now.contains_key(uid) && live.contains(uid));
    for (uid, why) in exhausted_now {
        v.exhausted.entry(uid).or_insert((now, why));
    }
    v.reserved = reserved;
    drop(v);
    budget.notify();
    report
}

/// The escrows of every tenant with a job on the hub.
async fn read_tenants(
    ledger: &Ledger,
    view: &super::meter::HubView,
    demands: &[Demand],
    report: &mut BudgetReport,
) -> BTreeMap<String, TenantView> {
    let names: BTreeSet<String> = demands
        .iter()
        .map(|d| tenant_of(&d.namespace).to_string())
        .chain(
            view.records
                .values()
                .map(|r| tenant_of(&r.spec.job_namespace).to_string()),
        )
        .collect();
    read_tenants_again(
        ledger,
        names
            .into_iter()
            .map(|n| (n, TenantView::default()))
            .collect(),
        report,
    )
    .await
}

/// Reads (again) the escrow of each tenant in `tenants`; a tenant without one is dropped.
async fn read_tenants_again(
    ledger: &Ledger,
    tenants: BTreeMap<String, TenantView>,
    report: &mut BudgetReport,
) -> BTreeMap<String, TenantView> {
    let client = ledger.client.as_ref();
    let program = gpupool_ledger::ID;
    let mint = match ledger::read_config(client, &program).await {
        Ok(Some(c)) => c.mint,
        Ok(None) => return BTreeMap::new(),
        Err(e) => {
            report.errors.push(format!("reading the pool: {e:#}"));
            return tenants;
        }
    };
    let mut out = BTreeMap::new();
    for name in tenants.into_keys() {
        let id = ledger::tenant_id(&name);
        let account = ledger::read_tenant(client, &program, &id).await;
        let balance = ledger::escrow_balance(client, &program, &id, &mint).await;
        match (account, balance) {
            (Ok(Some(t)), Ok(b)) => {
                out.insert(
                    name,
                    TenantView {
                        escrow: b.unwrap_or(0),
                        reserved: t.reserved,
                        deposited: t.deposited,
                        withdrawn: t.withdrawn,
                        spent: t.spent,
                    },
                );
            }
            (Ok(None), _) => {}
            (Err(e), _) | (_, Err(e)) => {
                report.errors.push(format!("tenant {name}: {e:#}"));
            }
        }
    }
    out
}

/// Tops up `d`'s reservation: `Ok((held, added))`, or `Err((held, why))` when its tenant
/// cannot fund it (what is left of its escrow is still reserved for it).
async fn renew(
    ledger: &Ledger,
    config: &PoolConfig,
    d: &Demand,
    unsettled: u64,
    window_cost: u64,
) -> Result<(u64, u64), (u64, String)> {
    let Some(uid) = gpupool_ledger::state::parse_job_uid(&d.uid) else {
        return Err((0, format!("job uid {:?} is not a UUID", d.uid)));
    };
    let tenant = tenant_of(&d.namespace);
    let id = ledger::tenant_id(tenant);
    let client = ledger.client.as_ref();
    let held = match ledger::read_reservation(client, &gpupool_ledger::ID, &id, &uid).await {
        Ok(r) => r.map_or(0, |r| r.amount),
        Err(e) => return Err((0, format!("reading its reservation: {e:#}"))),
    };
    let want = top_up(held, unsettled, window_cost);
    if want == 0 {
        return Ok((held, 0));
    }
    let ix = ledger.reserve_instruction(&config.mint, &id, &uid, want);
    match ledger.send(&[ix], &[]).await {
        Ok(_) => Ok((held.saturating_add(want), want)),
        Err(e) => {
            let free = unreserved(ledger, &id, &config.mint).await;
            let partial = free.min(want);
            let mut held = held;
            if partial > 0 {
                let ix = ledger.reserve_instruction(&config.mint, &id, &uid, partial);
                if ledger.send(&[ix], &[]).await.is_ok() {
                    held = held.saturating_add(partial);
                }
            }
            Err((held, exhausted_message(tenant, &e, free, want)))
        }
    }
}

fn exhausted_message(tenant: &str, e: &SendError, free: u64, want: u64) -> String {
    if e.ledger_error() == Some(LedgerError::InsufficientEscrow) {
        format!(
            "tenant {tenant}: escrow has {free} unreserved tokens, renewing this job's reservation needs {want}"
        )
    } else {
        format!("tenant {tenant}: reserving {want} tokens failed: {e}")
    }
}

/// Unreserved tokens of a tenant's escrow (0 when it cannot be read).
async fn unreserved(ledger: &Ledger, id: &[u8; 32], mint: &ledger::Pubkey) -> u64 {
    let client = ledger.client.as_ref();
    let program = gpupool_ledger::ID;
    let reserved = ledger::read_tenant(client, &program, id)
        .await
        .ok()
        .flatten()
        .map_or(0, |t| t.reserved);
    let balance = ledger::escrow_balance(client, &program, id, mint)
        .await
        .ok()
        .flatten()
        .unwrap_or(0);
    balance.saturating_sub(reserved)
}

/// Releases the reservation of every job that is gone or finished and has no usage record
/// left to settle.
async fn release_finished(
    budget: &Budget,
    ledger: &Ledger,
    view: &super::meter::HubView,
    config: &PoolConfig,
    demands: &[Demand],
    report: &mut BudgetReport,
) {
    // Jobs on the hub that have not ended (running, waiting, restarting) keep theirs.
    let keep: BTreeSet<&str> = demands
        .iter()
        .filter(|d| !d.ended)
        .map(|d| d.uid.as_str())
        .collect();
    // uid → (namespace, everything settled): ended jobs, jobs gone from the hub (by their
    // records), and jobs this process reserved for that are gone.
    let mut candidates: BTreeMap<String, (String, bool)> = BTreeMap::new();
    for d in demands.iter().filter(|d| d.ended) {
        candidates.insert(d.uid.clone(), (d.namespace.clone(), true));
    }
    for r in view.records.values() {
        let settled = r.status.as_ref().map(|s| s.state) == Some(UsageState::Settled);
        let e = candidates
            .entry(r.spec.job_uid.clone())
            .or_insert((r.spec.job_namespace.clone(), true));
        e.1 &= settled;
    }
    let known: Vec<(String, String)> = {
        let v = budget.lock();
        v.reserved
            .keys()
            .filter(|uid| !candidates.contains_key(*uid))
            .filter_map(|uid| Some((uid.clone(), namespace_of(demands, view, uid)?)))
            .collect()
    };
    for (uid, ns) in known {
        candidates.insert(uid, (ns, true));
    }
    for (uid, (ns, settled)) in candidates {
        if keep.contains(uid.as_str()) || budget.lock().released.contains(&uid) {
            continue;
        }
        if !settled {
            // Usage of an ended job still to be paid: its reservation must cover it.
            cover_unsettled(ledger, view, config, &uid, &ns, report).await;
            continue;
        }
        match release(ledger, &ns, &uid).await {
            Ok(true) => report.released += 1,
            Ok(false) => {}
            Err(e) => {
                report.errors.push(format!("releasing job {uid}: {e}"));
                continue;
            }
        }
        budget.lock().released.insert(uid);
    }
}

/// Tops an ended job's reservation up to what its unsettled usage costs (a job deleted before
/// its first renewal, or one that ran past what it held): the owner is paid for time the hub
/// placed as long as the tenant's escrow holds it.
async fn cover_unsettled(
    ledger: &Ledger,
    view: &super::meter::HubView,
    config: &PoolConfig,
    uid: &str,
    ns: &str,
    report: &mut BudgetReport,
) {
    let unsettled = unsettled_cost(uid, view.records.values().map(|r| r.as_ref()), config);
    if unsettled == 0 {
        return;
    }
    let d = Demand {
        uid: uid.to_string(),
        namespace: ns.to_string(),
        name: format!("job {uid}"),
        gpus: 0,
        runtime_left: None,
        live: false,
        ended: true,
    };
    match renew(ledger, config, &d, unsettled, 0).await {
        Ok((_, added)) => report.reserved = report.reserved.saturating_add(added),
        Err((_, why)) => report.errors.push(format!("ended job {uid}: {why}")),
    }
}

fn namespace_of(demands: &[Demand], view: &super::meter::HubView, uid: &str) -> Option<String> {
    demands
        .iter()
        .find(|d| d.uid == uid)
        .map(|d| d.namespace.clone())
        .or_else(|| {
            view.records
                .values()
                .find(|r| r.spec.job_uid == uid)
                .map(|r| r.spec.job_namespace.clone())
        })
}

/// Releases job `uid`'s reservation if it has one: `Ok(true)` when one was released.
async fn release(ledger: &Ledger, ns: &str, uid: &str) -> Result<bool, String> {
    let Some(job) = gpupool_ledger::state::parse_job_uid(uid) else {
        return Ok(false);
    };
    let id = tenant_id_of(ns);
    let client = ledger.client.as_ref();
    match ledger::read_reservation(client, &gpupool_ledger::ID, &id, &job).await {
        Ok(Some(_)) => {}
        Ok(None) => return Ok(false),
        Err(e) => return Err(format!("{e:#}")),
    }
    ledger
        .send(&[ledger.release_instruction(&id, &job)], &[])
        .await
        .map(|_| true)
        .map_err(|e| e.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;
    use gpupool_ledger::state::{MAX_RATE_VERSIONS, NUM_GPU_CLASSES, RateVersion, TAG_CONFIG};
    use solana_program::pubkey::Pubkey;

    fn config(versions: &[(u64, u64)]) -> PoolConfig {
        let mut rate_versions = [RateVersion::default(); MAX_RATE_VERSIONS];
        for (slot, (from, top)) in rate_versions.iter_mut().zip(versions) {
            let mut rates = [1; NUM_GPU_CLASSES];
            rates[1] = *top;
            *slot = RateVersion {
                effective_from: *from,
                rates,
            };
        }
        PoolConfig {
            tag: TAG_CONFIG,
            admin: Pubkey::new_unique(),
            pending_admin: Pubkey::default(),
            oracle: Pubkey::new_unique(),
            pending_oracle: Pubkey::default(),
            registrar: Pubkey::new_unique(),
            pending_registrar: Pubkey::default(),
            mint: Pubkey::new_unique(),
            period_seconds: 60,
            horizon_periods: 24,
            rate_version_count: versions.len() as u8,
            rate_versions,
            bump: 1,
            mint_authority_bump: 2,
            pending_admin_at: 0,
            pending_oracle_at: 0,
            pending_registrar_at: 0,
            paused: false,
            max_rate: 100,
            max_gpu_cap: 1_000,
            timelock_periods: 3,
            fee_bps: 0,
            treasury: Pubkey::default(),
        }
    }

    #[test]
    fn the_tenant_is_the_namespace_and_its_id_is_stable() {
        assert_eq!(tenant_of(" team-a "), "team-a");
        assert_eq!(tenant_id_of("team-a"), tenant_id_of("team-a "));
        assert_eq!(
            tenant_id_of("team-a"),
            gpupool_ledger::state::tenant_id("team-a")
        );
        assert_ne!(tenant_id_of("team-a"), tenant_id_of("team-b"));
    }

    #[test]
    fn reservations_price_the_highest_rate_in_the_window() {
        // 10 until period 100, 30 from 100 to 200, 5 from 200 on.
        let c = config(&[(0, 10), (100, 30), (200, 5)]);
        assert_eq!(highest_rate(&c, 10, 20), 10);
        assert_eq!(highest_rate(&c, 90, 100), 30, "a raise inside the window");
        assert_eq!(highest_rate(&c, 150, 250), 30);
        assert_eq!(highest_rate(&c, 200, 300), 5, "a cut before the window");
        assert_eq!(cost(6, 60, 10), 3_600);
        assert_eq!(cost(u64::MAX, 2, 2), u64::MAX);
    }

    #[test]
    fn renewals_keep_half_a_window_ahead() {
        // Fresh: one window.
        assert_eq!(top_up(0, 0, 1_200), 1_200);
        // Over half a window ahead of unsettled usage: nothing.
        assert_eq!(top_up(1_200, 500, 1_200), 0);
        // Under half: back to unsettled + a window.
        assert_eq!(top_up(1_000, 500, 1_200), 700);
        // No GPUs (window cost 0): only what is unsettled.
        assert_eq!(top_up(0, 40, 0), 40);
        assert_eq!(top_up(40, 40, 0), 0);
    }

    fn demand(gpus: u64, runtime_left: Option<u64>) -> Demand {
        Demand {
            uid: "0b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e".into(),
            namespace: "team-a".into(),
            name: "TrainingJob/llm".into(),
            gpus,
            runtime_left,
            live: false,
            ended: false,
        }
    }

    #[test]
    fn the_gate_says_what_a_job_needs_and_promises_hold_escrow() {
        let cfg = BudgetConfig {
            paid: true,
            window_seconds: 3600,
            grace_seconds: 60,
        };
        let b = Budget::new(cfg.clone());
        let d = demand(1, None);
        let e = b.funded(&d).unwrap_err();
        assert!(e.contains("waiting for the pool's escrows"), "{e}");
        {
            let mut v = b.lock();
            v.rate = Some(2);
        }
        let e = b.funded(&d).unwrap_err();
        assert!(e.contains("no escrow is open"), "{e}");
        b.lock().tenants.insert(
            "team-a".into(),
            TenantView {
                escrow: 9_000,
                reserved: 1_800,
                ..Default::default()
            },
        );
        // 1 GPU × 3600 s × 2 = 7200 needed, 7200 free: admitted, and it holds them.
        b.funded(&d).unwrap();
        let other = Demand {
            uid: "1b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e".into(),
            ..demand(1, Some(60))
        };
        assert_eq!(
            b.funded(&other).unwrap_err(),
            "tenant team-a: escrow 0 tokens, this job needs 120 for its first minute"
        );
        // Asking again for the admitted job does not count its own promise.
        b.funded(&d).unwrap();
        let big = Demand {
            uid: "2b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e".into(),
            namespace: "team-b".into(),
            ..demand(4, None)
        };
        b.lock().tenants.insert(
            "team-b".into(),
            TenantView {
                escrow: 120,
                ..Default::default()
            },
        );
        assert_eq!(
            b.funded(&big).unwrap_err(),
            "tenant team-b: escrow 120 tokens, this job needs 28800 for its first hour"
        );
        // A job holding a reservation runs on; an unpaid pool admits everything.
        b.lock().reserved.insert(big.uid.clone(), 10);
        b.funded(&big).unwrap();
        Budget::new(BudgetConfig::default()).funded(&big).unwrap();
    }

    #[test]
    fn demands_come_from_the_jobs() {
        let tj: TrainingJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
            "metadata": {"name": "llm", "namespace": "team-a", "uid": "0b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e"},
            "spec": {"template": {}, "workers": 2, "gpusPerWorker": 4, "maxRuntimeSeconds": 600},
            "status": {"phase": "Running", "cluster": "m1", "startTime": "1970-01-01T00:01:40Z"}
        }))
        .unwrap();
        let d = training_demand(&tj, 200).unwrap();
        assert_eq!((d.gpus, d.runtime_left, d.live), (8, Some(500), true));
        assert_eq!(d.window(&BudgetConfig::default()), 500);
        let mut done = tj.clone();
        done.status.as_mut().unwrap().phase = TrainingPhase::Succeeded;
        assert!(!training_demand(&done, 200).unwrap().live);
        assert!(training_demand(&done, 200).unwrap().ended);
        assert!(!d.ended);
        assert_eq!(describe_window(7200), "2 hours");
        assert_eq!(describe_window(90), "90 s");
    }
}
