//! The metering loop the operator runs: meter every reachable member, settle what is final when
//! a ledger is configured, surface refused usage (Events on the `MemberCluster`, a metric) and
//! keep the usage/minting metrics.

use super::meter::{Held, HubView, meter_view};
use super::settle::Alert;
use super::settle::{close_expired_in, settle_view};
use super::{MemberRef, MeterConfig, SettleConfig};
use crate::api::{InferenceJob, TrainingJob};
use crate::api::{MemberCluster, UsageRecord, UsageState};
use crate::federation::Registry;
use crate::ledger::Ledger;
use crate::metrics::Metrics;
use futures::StreamExt;
use kube::Resource;
use kube::api::{Api, ListParams};
use kube::runtime::events::{Event, EventType, Recorder};
use kube::runtime::reflector::{self, Store};
use kube::runtime::{WatchStreamExt, watcher};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

/// Settings of the loop.
#[derive(Clone, Debug)]
pub struct RunnerConfig {
    /// Time between passes.
    pub interval: Duration,
    /// Metering settings. With a ledger, the period length is the pool's, read from chain.
    pub meter: MeterConfig,
    /// Settlement settings.
    pub settle: SettleConfig,
}

/// The hub's job stores once the job controllers have listed them (`None` before): handed
/// over as a function so the meter does not depend on the scheduler that shares them.
pub type JobStores =
    Arc<dyn Fn() -> Option<(Store<TrainingJob>, Store<InferenceJob>)> + Send + Sync>;

/// What the metering loop needs from the operator, and nothing more: the hub client, the member
/// registry, the metrics, an Event recorder and the watch stores it reads (the controllers hand
/// it over with `Context::metering`).
#[derive(Clone)]
pub struct Deps {
    /// Hub client.
    pub hub: kube::Client,
    /// Member views (links, watches, reachability).
    pub registry: Registry,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// Publishes Events on hub objects.
    pub recorder: Recorder,
    /// The MemberCluster controller's store.
    pub members: Store<MemberCluster>,
    /// The job controllers' stores.
    pub jobs: JobStores,
    /// Tenant escrows and job reservations (a paid pool's; read by the scheduler and the job
    /// controllers, kept by this loop).
    pub budget: super::budget::Budget,
}

/// Members the meter can read now.
pub async fn member_refs(ctx: &Deps) -> Vec<MemberRef> {
    ctx.registry
        .snapshot()
        .await
        .into_values()
        .filter(|m| m.reachable)
        .filter_map(|m| {
            let gpu_models = m.watch.as_ref().map(|w| w.gpu_models()).unwrap_or_default();
            let observed_ends = m
                .watch
                .as_ref()
                .map(|w| w.observed_ends())
                .unwrap_or_default();
            let first_seen = m.watch.as_ref().map(|w| w.first_seen()).unwrap_or_default();
            // The watch's pods once it has listed them; until then the link reads them.
            let pods = m.watch.as_ref().filter(|w| w.synced()).map(|w| w.pods());
            Some(MemberRef {
                name: m.name.clone(),
                owner_wallet: m.spec.owner_wallet.clone(),
                link: m.client.clone()?,
                gpu_models,
                observed_ends,
                first_seen,
                pods,
            })
        })
        .collect()
}

/// What the meter and the settler read, kept by watches instead of listed at every pass: the
/// usage records (a watch of the runner's own), the `MemberCluster`s (the MemberCluster
/// controller's store) and the jobs (the job controllers' stores, shared through the
/// scheduler).
pub struct Stores {
    records: Store<UsageRecord>,
    task: tokio::task::JoinHandle<()>,
    /// Growth of `Open` records held between passes (see [`Held`]).
    held: std::sync::Mutex<Held>,
}

impl Drop for Stores {
    fn drop(&mut self) {
        self.task.abort();
    }
}

impl Stores {
    /// Starts the usage record watch.
    pub fn start(hub: &kube::Client) -> Stores {
        let (records, writer) = reflector::store();
        let stream = watcher(
            Api::<UsageRecord>::all(hub.clone()),
            watcher::Config::default(),
        )
        .modify(|r: &mut UsageRecord| crate::federation::trim_meta(&mut r.metadata))
        .default_backoff()
        .reflect(writer)
        .applied_objects();
        let task = tokio::spawn(stream.for_each(|_| futures::future::ready(())));
        Stores {
            records,
            task,
            held: Default::default(),
        }
    }

    /// The hub as the watches hold it, once every store has listed; `None` before.
    pub fn view(&self, ctx: &Deps) -> Option<HubView> {
        let (training, inference) = (ctx.jobs)()?;
        let ready = crate::federation::listed(&self.records)
            && crate::federation::listed(&ctx.members)
            && crate::federation::listed(&training)
            && crate::federation::listed(&inference);
        ready.then(|| {
            HubView::from_objects(
                self.records.state(),
                ctx.members.state(),
                training.state(),
                inference.state(),
            )
        })
    }
}

/// One pass: meter, then settle (when a ledger is given), then refresh metrics. Reads the hub
/// from `stores` when they have listed (else lists it once).
pub async fn pass(
    ctx: &Deps,
    ledger: Option<&Ledger>,
    cfg: &RunnerConfig,
    seen: &mut Totals,
    stores: &Stores,
) -> anyhow::Result<()> {
    let members = member_refs(ctx).await;
    let view = match stores.view(ctx) {
        Some(v) => v,
        None => HubView::list(&ctx.hub).await?,
    };
    let m = meter_view(
        &ctx.hub,
        &members,
        view.clone(),
        k8s_openapi::jiff::Timestamp::now(),
        &cfg.meter,
        Some(&stores.held),
    )
    .await?;
    for (cluster, e) in &m.member_errors {
        tracing::warn!(cluster, error = %e, "metering a member failed");
    }
    let mut alerts = m.alerts.clone();
    if let Some(l) = ledger {
        ctx.metrics.refresh_oracle_balance(l).await;
        // What the meter just wrote, as the record watch has it by now (or the view as read).
        let view = stores.view(ctx).unwrap_or(view);
        budget_pass(ctx, l, &view).await;
        match settle_view(&ctx.hub, l, view.clone(), &cfg.settle).await {
            Ok(r) => {
                alerts.extend(r.alerts.iter().cloned());
                if r.batches_failed > 0 {
                    ctx.metrics.inc_settlement_failure("send");
                }
                if r.settled + r.reconciled > 0 {
                    tracing::info!(
                        settled = r.settled,
                        reconciled = r.reconciled,
                        minted = r.tokens_minted,
                        "settled usage"
                    );
                }
            }
            Err(e) => {
                ctx.metrics.inc_settlement_failure("pass");
                tracing::warn!(error = %e, "settlement pass failed");
            }
        }
        // Receipts past the settlement horizon: rent back to the oracle that paid it.
        match close_expired_in(&ctx.hub, l, &view).await {
            Ok(r) => {
                ctx.metrics
                    .add_receipts_closed(r.closed as u64, r.rent_reclaimed_lamports);
                for e in &r.errors {
                    tracing::warn!(error = %e, "closing a usage receipt failed");
                }
                if r.closed > 0 {
                    tracing::info!(
                        closed = r.closed,
                        lamports = r.rent_reclaimed_lamports,
                        "closed usage receipts past the settlement horizon"
                    );
                }
            }
            Err(e) => tracing::warn!(error = %e, "receipt sweep failed"),
        }
    }
    surface(ctx, &alerts).await;
    seen.update(ctx, stores).await?;
    Ok(())
}

/// A paid pool's reservations: renewed for running jobs, released for finished ones, before
/// settlement draws from them.
async fn budget_pass(ctx: &Deps, ledger: &Ledger, view: &HubView) {
    if !ctx.budget.config().paid {
        return;
    }
    let config = match crate::ledger::read_config(ledger.client.as_ref(), &gpupool_ledger::ID).await
    {
        Ok(Some(c)) => c,
        Ok(None) => return,
        Err(e) => {
            tracing::warn!(error = %e, "reading the pool config failed");
            return;
        }
    };
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    let r = super::budget::maintain(&ctx.budget, ledger, view, &config, now).await;
    for e in &r.errors {
        tracing::warn!(error = %e, "tenant budgets");
    }
    ctx.metrics.set_tenants(
        r.tenants
            .iter()
            .map(|(n, (t, burn))| (n.as_str(), t.escrow, t.reserved, t.spent, *burn)),
    );
    for (_, job, why) in &r.exhausted {
        tracing::warn!(%job, "{why}");
    }
    if r.reserved > 0 || r.released > 0 {
        tracing::info!(
            reserved = r.reserved,
            released = r.released,
            "job reservations"
        );
    }
}

/// Publishes each alert as a Warning Event on its `MemberCluster` and sets the unpaid-usage
/// gauge per (cluster, reason).
pub async fn surface(ctx: &Deps, alerts: &[Alert]) {
    ctx.metrics.set_unpaid(
        alerts
            .iter()
            .map(|a| (a.cluster.as_str(), a.reason.as_str(), a.gpu_seconds)),
    );
    if alerts.is_empty() {
        return;
    }
    let members = Api::<MemberCluster>::all(ctx.hub.clone());
    for a in alerts {
        tracing::warn!(cluster = %a.cluster, reason = %a.reason, "{}", a.message);
        let Ok(Some(mc)) = members.get_opt(&a.cluster).await else {
            continue;
        };
        let ev = Event {
            type_: EventType::Warning,
            reason: a.reason.clone(),
            note: Some(a.message.chars().take(1000).collect()),
            action: "Meter".into(),
            secondary: None,
        };
        if let Err(e) = ctx.recorder.publish(&ev, &mc.object_ref(&())).await {
            tracing::warn!(error = %e, "publishing a usage alert failed");
        }
    }
}

/// The pool's period length, read from chain (retried until the pool answers).
pub async fn pool_period_seconds(ledger: &Ledger) -> u64 {
    loop {
        match crate::ledger::read_config(ledger.client.as_ref(), &gpupool_ledger::ID).await {
            Ok(Some(c)) => return c.period_seconds,
            Ok(None) => tracing::warn!("the pool is not initialized yet; metering waits"),
            Err(e) => tracing::warn!(error = %e, "reading the pool config failed"),
        }
        tokio::time::sleep(Duration::from_secs(5)).await;
    }
}

/// Per-cluster GPU-seconds and minted tokens already reported to the counters.
#[derive(Default)]
pub struct Totals {
    gpu_seconds: BTreeMap<String, i64>,
    minted: BTreeMap<String, i64>,
}

impl Totals {
    async fn update(&mut self, ctx: &Deps, stores: &Stores) -> anyhow::Result<()> {
        let recs = if crate::federation::listed(&stores.records) {
            stores.records.state()
        } else {
            Api::<UsageRecord>::all(ctx.hub.clone())
                .list(&ListParams::default())
                .await?
                .items
                .into_iter()
                .map(Arc::new)
                .collect()
        };
        let mut gs: BTreeMap<String, i64> = BTreeMap::new();
        let mut mt: BTreeMap<String, i64> = BTreeMap::new();
        for r in recs {
            *gs.entry(r.spec.cluster.clone()).or_default() += r.spec.gpu_seconds;
            if let Some(st) = r.status.as_ref().filter(|s| s.state == UsageState::Settled) {
                *mt.entry(r.spec.cluster.clone()).or_default() += st.amount.unwrap_or(0);
            }
        }
        for (c, v) in gs {
            let old = self.gpu_seconds.insert(c.clone(), v).unwrap_or(0);
            if v > old {
                ctx.metrics.add_usage(&c, (v - old) as u64);
            }
        }
        for (c, v) in mt {
            let old = self.minted.insert(c.clone(), v).unwrap_or(0);
            if v > old {
                ctx.metrics.add_minted(&c, (v - old) as u64);
            }
        }
        Ok(())
    }
}

/// Runs passes forever. With a ledger, the period length comes from the pool config.
pub async fn run(ctx: Deps, ledger: Option<Ledger>, mut cfg: RunnerConfig) {
    if let Some(l) = ledger.as_ref() {
        cfg.meter.period_seconds = pool_period_seconds(l).await;
        // Every replica and restart seals and verifies with the same key: the oracle's.
        let seal = super::SealKey::from_secret(&l.oracle.to_bytes());
        cfg.meter.seal = seal.clone();
        cfg.settle.seal = seal;
    }
    cfg.settle.paid = ctx.budget.config().paid;
    let mut totals = Totals::default();
    let stores = Stores::start(&ctx.hub);
    loop {
        if let Err(e) = pass(&ctx, ledger.as_ref(), &cfg, &mut totals, &stores).await {
            tracing::warn!(error = %e, "metering pass failed");
        }
        tokio::time::sleep(cfg.interval).await;
    }
}
