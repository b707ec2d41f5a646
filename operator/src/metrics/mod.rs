//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` and `/debug/queue` endpoints
//! (served with axum).

use crate::api::CapacitySummary;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use futures::future::BoxFuture;
use prometheus::core::Collector;
use prometheus::{
    CounterVec, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// All gpupool metrics, cheap to clone.
#[derive(Clone)]
pub struct Metrics {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    reconciles: IntCounterVec,
    reconcile_errors: IntCounterVec,
    reconcile_duration: HistogramVec,
    placement_duration: HistogramVec,
    pending_jobs: IntGaugeVec,
    pending_oldest: IntGaugeVec,
    /// Pending jobs (kind, name) and when this process first saw each one pending.
    pending: Mutex<BTreeMap<(String, String), Instant>>,
    member_ready: IntGaugeVec,
    member_gpus: IntGaugeVec,
    member_gpus_allocated: IntGaugeVec,
    model_gpus: IntGaugeVec,
    model_gpus_allocated: IntGaugeVec,
    /// GPU models last reported per member (to drop series of models that went away).
    member_models: Mutex<BTreeMap<String, BTreeSet<String>>>,
    oracle_balance: IntGauge,
    /// Every metric family name in the registry (histograms without their series suffixes).
    names: Vec<String>,
    kubelet_mismatches: IntGaugeVec,
    supply_problems: IntGaugeVec,
    gang_restarts: IntCounterVec,
    usage_gpu_seconds: IntCounterVec,
    tokens_minted: IntCounterVec,
    receipt_rent_reclaimed: IntCounter,
    receipts_closed: IntCounter,
    settlement_failures: IntCounterVec,
    unpaid_gpu_seconds: IntGaugeVec,
    tenant_escrow: IntGaugeVec,
    tenant_reserved: IntGaugeVec,
    tenant_spent: IntGaugeVec,
    tenant_burn_rate: IntGaugeVec,
    tenant_runway: IntGaugeVec,
    client_throttled: CounterVec,
    events_skipped: IntCounterVec,
    queue_gpus: IntGaugeVec,
    queue_pending: IntGaugeVec,
    queue_admissions: IntCounterVec,
    queue_preemptions: IntCounterVec,
    leader: IntGauge,
    ready: std::sync::atomic::AtomicBool,
    /// Long-running tasks by name, and whether each still runs ([`Metrics::task`]).
    tasks: Mutex<BTreeMap<&'static str, bool>>,
    /// What `/debug/queue` serves ([`Metrics::set_debug_queue`]).
    debug: Mutex<Option<DebugSource>>,
}

/// Produces the JSON `/debug/queue` serves.
pub type DebugSource = Arc<dyn Fn() -> BoxFuture<'static, serde_json::Value> + Send + Sync>;

/// Name, help text and label names of one metric family.
struct Def {
    name: &'static str,
    help: &'static str,
    labels: &'static [&'static str],
}

/// Every gpupool metric family.
mod defs {
    use super::Def;

    const fn def(name: &'static str, help: &'static str, labels: &'static [&'static str]) -> Def {
        Def { name, help, labels }
    }

    pub(super) const RECONCILES: Def = def(
        "gpupool_reconciles_total",
        "Reconciles run, by controller",
        &["controller"],
    );
    pub(super) const RECONCILE_ERRORS: Def = def(
        "gpupool_reconcile_errors_total",
        "Reconciles that failed, by controller and error",
        &["controller", "error"],
    );
    pub(super) const RECONCILE_DURATION: Def = def(
        "gpupool_reconcile_duration_seconds",
        "Reconcile duration",
        &["controller"],
    );
    pub(super) const PLACEMENT_DURATION: Def = def(
        "gpupool_placement_duration_seconds",
        "Time to decide a placement (lock wait included)",
        &["kind"],
    );
    pub(super) const PENDING_JOBS: Def = def(
        "gpupool_pending_jobs",
        "Jobs waiting for capacity",
        &["kind"],
    );
    pub(super) const PENDING_OLDEST: Def = def(
        "gpupool_pending_job_oldest_age_seconds",
        "Age of the longest-waiting pending job (since this replica saw it pending), by kind",
        &["kind"],
    );
    pub(super) const MEMBER_READY: Def = def(
        "gpupool_member_ready",
        "1 when the member cluster is Ready",
        &["cluster"],
    );
    pub(super) const MEMBER_GPUS: Def = def(
        "gpupool_member_gpus",
        "GPUs in the member cluster",
        &["cluster"],
    );
    pub(super) const MEMBER_GPUS_ALLOCATED: Def = def(
        "gpupool_member_gpus_allocated",
        "GPUs of the member assigned to gpupool jobs",
        &["cluster"],
    );
    pub(super) const MODEL_GPUS: Def = def(
        "gpupool_member_model_gpus",
        "GPUs in the member cluster, by GPU model",
        &["cluster", "model"],
    );
    pub(super) const MODEL_GPUS_ALLOCATED: Def = def(
        "gpupool_member_model_gpus_allocated",
        "GPUs of the member assigned to gpupool jobs, by GPU model",
        &["cluster", "model"],
    );
    pub(super) const ORACLE_BALANCE: Def = def(
        "gpupool_oracle_balance_lamports",
        "SOL balance of the usage oracle that signs and pays for settlements, in lamports",
        &[],
    );
    pub(super) const KUBELET_MISMATCHES: Def = def(
        "gpupool_kubelet_gpu_mismatches",
        "Device-plugin pods whose GPUs, as the kubelet assigned them, differ from gpupool's choice",
        &["cluster"],
    );
    pub(super) const SUPPLY_PROBLEMS: Def = def(
        "gpupool_member_supply_problems",
        "Published GPUs of the member the hub refuses to place on (over the allocatable, duplicate or already claimed UUIDs); the member's SupplyVerified condition says which",
        &["cluster"],
    );
    pub(super) const GANG_RESTARTS: Def = def(
        "gpupool_job_restarts_total",
        "Gang restarts / replica re-placements",
        &["kind"],
    );
    pub(super) const USAGE_GPU_SECONDS: Def = def(
        "gpupool_usage_gpu_seconds_total",
        "GPU-seconds metered, by member cluster",
        &["cluster"],
    );
    pub(super) const TOKENS_MINTED: Def = def(
        "gpupool_tokens_minted_total",
        "Pool token base units minted to owners, by member cluster",
        &["cluster"],
    );
    pub(super) const RECEIPT_RENT_RECLAIMED: Def = def(
        "gpupool_receipt_rent_reclaimed_lamports_total",
        "Lamports of rent returned to the payer by closing usage receipts past the settlement horizon",
        &[],
    );
    pub(super) const RECEIPTS_CLOSED: Def = def(
        "gpupool_receipts_closed_total",
        "Usage receipts closed past the settlement horizon",
        &[],
    );
    pub(super) const SETTLEMENT_FAILURES: Def = def(
        "gpupool_settlement_failures_total",
        "Settlement transactions that failed",
        &["reason"],
    );
    pub(super) const UNPAID_GPU_SECONDS: Def = def(
        "gpupool_unpaid_gpu_seconds",
        "GPU-seconds claimed by members that the hub refuses to pay, by member cluster and reason (last metering pass)",
        &["cluster", "reason"],
    );
    pub(super) const TENANT_ESCROW: Def = def(
        "gpupool_tenant_escrow_tokens",
        "Tokens in a tenant's escrow (a paid pool), as last read from the ledger",
        &["tenant"],
    );
    pub(super) const TENANT_RESERVED: Def = def(
        "gpupool_tenant_reserved_tokens",
        "Tokens of a tenant's escrow reserved for its jobs",
        &["tenant"],
    );
    pub(super) const TENANT_SPENT: Def = def(
        "gpupool_tenant_spent_tokens",
        "Tokens a tenant's escrow has paid for usage (burned and minted to owners, plus fees), lifetime",
        &["tenant"],
    );
    pub(super) const TENANT_BURN_RATE: Def = def(
        "gpupool_tenant_burn_rate_tokens_per_second",
        "Most tokens per second a tenant's running jobs cost (all their GPUs at the highest rate)",
        &["tenant"],
    );
    pub(super) const TENANT_RUNWAY: Def = def(
        "gpupool_tenant_runway_seconds",
        "Seconds a tenant's escrow lasts at its burn rate (only tenants with running jobs)",
        &["tenant"],
    );
    pub(super) const CLIENT_THROTTLED: Def = def(
        "gpupool_client_throttled_seconds_total",
        "Time requests waited for the client-side rate limit (--hub-qps/--member-qps), by client",
        &["client"],
    );
    pub(super) const EVENTS_SKIPPED: Def = def(
        "gpupool_events_skipped_total",
        "Normal Events not published because their rate limit was reached, by reason",
        &["reason"],
    );
    pub(super) const QUEUE_GPUS: Def = def(
        "gpupool_queue_gpus",
        "GPUs of a GpuQueue per quota class: its nominal quota (state=nominal), what its jobs hold (used) and what they hold beyond nominal (borrowed)",
        &["queue", "gpu_class", "state"],
    );
    pub(super) const QUEUE_PENDING: Def = def(
        "gpupool_queue_pending_jobs",
        "Jobs of a GpuQueue waiting for GPUs",
        &["queue"],
    );
    pub(super) const QUEUE_ADMISSIONS: Def = def(
        "gpupool_queue_admissions_total",
        "Placements the scheduler decided for jobs of a GpuQueue",
        &["queue"],
    );
    pub(super) const QUEUE_PREEMPTIONS: Def = def(
        "gpupool_queue_preemptions_total",
        "Jobs of a GpuQueue the scheduler preempted, by reason: priority (a job of higher priority in the same queue) or reclaim (a queue reclaiming the quota it lent)",
        &["queue", "reason"],
    );
    pub(super) const LEADER: Def = def(
        "gpupool_leader",
        "1 while this replica leads (runs the scheduler and controllers), 0 while it stands by",
        &[],
    );
}

/// Registers metric families and remembers their names.
struct Reg {
    registry: Registry,
    names: Vec<String>,
}

impl Reg {
    fn add<M: Collector + Clone + 'static>(&mut self, m: prometheus::Result<M>) -> M {
        let m = m.expect("metric definition is valid");
        self.names
            .extend(m.desc().iter().map(|d| d.fq_name.clone()));
        self.registry
            .register(Box::new(m.clone()))
            .expect("metric names are unique");
        m
    }
    fn counters(&mut self, d: Def) -> IntCounterVec {
        self.add(IntCounterVec::new(Opts::new(d.name, d.help), d.labels))
    }
    fn float_counters(&mut self, d: Def) -> CounterVec {
        self.add(CounterVec::new(Opts::new(d.name, d.help), d.labels))
    }
    fn counter(&mut self, d: Def) -> IntCounter {
        self.add(IntCounter::new(d.name, d.help))
    }
    fn gauges(&mut self, d: Def) -> IntGaugeVec {
        self.add(IntGaugeVec::new(Opts::new(d.name, d.help), d.labels))
    }
    fn gauge(&mut self, d: Def) -> IntGauge {
        self.add(IntGauge::new(d.name, d.help))
    }
    fn histograms(&mut self, d: Def) -> HistogramVec {
        let buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let opts = HistogramOpts::new(d.name, d.help).buckets(buckets);
        self.add(HistogramVec::new(opts, d.labels))
    }
}

impl Default for Metrics {
    fn default() -> Self {
        use defs::*;
        let mut r = Reg {
            registry: Registry::new(),
            names: Vec::new(),
        };
        let inner = Inner {
            reconciles: r.counters(RECONCILES),
            reconcile_errors: r.counters(RECONCILE_ERRORS),
            reconcile_duration: r.histograms(RECONCILE_DURATION),
            placement_duration: r.histograms(PLACEMENT_DURATION),
            pending_jobs: r.gauges(PENDING_JOBS),
            pending_oldest: r.gauges(PENDING_OLDEST),
            member_ready: r.gauges(MEMBER_READY),
            member_gpus: r.gauges(MEMBER_GPUS),
            member_gpus_allocated: r.gauges(MEMBER_GPUS_ALLOCATED),
            model_gpus: r.gauges(MODEL_GPUS),
            model_gpus_allocated: r.gauges(MODEL_GPUS_ALLOCATED),
            oracle_balance: r.gauge(ORACLE_BALANCE),
            kubelet_mismatches: r.gauges(KUBELET_MISMATCHES),
            supply_problems: r.gauges(SUPPLY_PROBLEMS),
            gang_restarts: r.counters(GANG_RESTARTS),
            usage_gpu_seconds: r.counters(USAGE_GPU_SECONDS),
            tokens_minted: r.counters(TOKENS_MINTED),
            receipt_rent_reclaimed: r.counter(RECEIPT_RENT_RECLAIMED),
            receipts_closed: r.counter(RECEIPTS_CLOSED),
            settlement_failures: r.counters(SETTLEMENT_FAILURES),
            unpaid_gpu_seconds: r.gauges(UNPAID_GPU_SECONDS),
            tenant_escrow: r.gauges(TENANT_ESCROW),
            tenant_reserved: r.gauges(TENANT_RESERVED),
            tenant_spent: r.gauges(TENANT_SPENT),
            tenant_burn_rate: r.gauges(TENANT_BURN_RATE),
            tenant_runway: r.gauges(TENANT_RUNWAY),
            client_throttled: r.float_counters(CLIENT_THROTTLED),
            events_skipped: r.counters(EVENTS_SKIPPED),
            queue_gpus: r.gauges(QUEUE_GPUS),
            queue_pending: r.gauges(QUEUE_PENDING),
            queue_admissions: r.counters(QUEUE_ADMISSIONS),
            queue_preemptions: r.counters(QUEUE_PREEMPTIONS),
            leader: r.gauge(LEADER),
            pending: Mutex::default(),
            member_models: Mutex::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            tasks: Mutex::default(),
            debug: Mutex::default(),
            names: r.names,
            registry: r.registry,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }
}

impl Metrics {
    /// Records one reconcile; `error` is the failed reconcile's error label (e.g. `hub_api`).
    pub fn observe_reconcile(&self, controller: &str, took: Duration, error: Option<&str>) {
        self.inner
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.reconciles.with_label_values(&[controller]).inc();
        self.inner
            .reconcile_duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
        if let Some(label) = error {
            self.inner
                .reconcile_errors
                .with_label_values(&[controller, label])
                .inc();
        }
    }

    /// Adds a wait of client `client` (`hub` or a member's name) for its rate limit.
    pub fn observe_throttled(&self, client: &str, waited: Duration) {
        self.inner
            .client_throttled
            .with_label_values(&[client])
            .inc_by(waited.as_secs_f64());
    }

    /// A client rate limit reporting its waits to this registry as client `client`.
    pub fn rate_limit(
        &self,
        client: &str,
        limits: crate::federation::ClientLimits,
    ) -> crate::federation::RateLimit {
        let (m, c) = (self.clone(), client.to_string());
        crate::federation::RateLimit::new(
            limits,
            Some(std::sync::Arc::new(move |d| m.observe_throttled(&c, d))),
        )
    }

    /// Counts an Event skipped by its rate limit.
    pub fn event_skipped(&self, reason: &str) {
        self.inner.events_skipped.with_label_values(&[reason]).inc();
    }

    /// What a GpuQueue's status shows: GPUs per class and state, and its waiting jobs.
    pub fn set_queue(&self, queue: &str, status: &crate::api::GpuQueueStatus) {
        for c in &status.classes {
            for (state, v) in [
                ("nominal", c.nominal),
                ("used", c.used),
                ("borrowed", c.borrowed),
            ] {
                self.inner
                    .queue_gpus
                    .with_label_values(&[queue, c.gpu_class.as_str(), state])
                    .set(v);
            }
        }
        self.inner
            .queue_pending
            .with_label_values(&[queue])
            .set(status.pending_jobs);
    }

    /// Drops the series of a GpuQueue that no longer exists.
    pub fn forget_queue(&self, queue: &str, last: &crate::api::GpuQueueStatus) {
        for c in &last.classes {
            for state in ["nominal", "used", "borrowed"] {
                let _ = self.inner.queue_gpus.remove_label_values(&[
                    queue,
                    c.gpu_class.as_str(),
                    state,
                ]);
            }
        }
        let _ = self.inner.queue_pending.remove_label_values(&[queue]);
    }

    /// The scheduler placed a job of GpuQueue `queue`.
    pub fn inc_queue_admission(&self, queue: &str) {
        self.inner
            .queue_admissions
            .with_label_values(&[queue])
            .inc();
    }

    /// The scheduler preempted a job of GpuQueue `queue` (`reason`: `priority` or `reclaim`).
    pub fn inc_queue_preemption(&self, queue: &str, reason: &str) {
        self.inner
            .queue_preemptions
            .with_label_values(&[queue, reason])
            .inc();
    }

    /// Records a placement decision's latency.
    pub fn observe_placement(&self, kind: &str, took: Duration) {
        self.inner
            .placement_duration
            .with_label_values(&[kind])
            .observe(took.as_secs_f64());
    }

    /// Marks a job pending (waiting for capacity) or not.
    pub fn set_pending(&self, kind: &str, name: &str, pending: bool) {
        let mut set = self.inner.pending.lock().expect("metrics lock");
        let key = (kind.to_string(), name.to_string());
        if pending {
            set.entry(key).or_insert_with(Instant::now);
        } else {
            set.remove(&key);
        }
        let n = set.keys().filter(|(k, _)| k == kind).count();
        self.inner
            .pending_jobs
            .with_label_values(&[kind])
            .set(n as i64);
    }

    /// Refreshes the oldest-pending-job age per kind (called before every exposition).
    fn refresh_pending_age(&self) {
        let set = self.inner.pending.lock().expect("metrics lock");
        let now = Instant::now();
        let mut oldest: BTreeMap<&str, u64> = BTreeMap::new();
        for ((kind, _), since) in set.iter() {
            let age = now.duration_since(*since).as_secs();
            let e = oldest.entry(kind.as_str()).or_default();
            *e = (*e).max(age);
        }
        // Kinds seen before keep a series at 0 when nothing of theirs waits.
        for mf in self.inner.pending_oldest.collect() {
            for m in mf.get_metric() {
                if let Some(l) = m.get_label().iter().find(|l| l.name() == "kind")
                    && !oldest.contains_key(l.value())
                {
                    self.inner
                        .pending_oldest
                        .with_label_values(&[l.value()])
                        .set(0);
                }
            }
        }
        for (kind, age) in oldest {
            self.inner
                .pending_oldest
                .with_label_values(&[kind])
                .set(age as i64);
        }
    }

    /// Member readiness and capacity, in total and per GPU model (from `status.capacity`).
    pub fn set_member_capacity(&self, cluster: &str, ready: bool, capacity: &CapacitySummary) {
        self.set_member(
            cluster,
            ready,
            capacity.gpus_total,
            capacity.gpus_total - capacity.gpus_free,
        );
        let mut models = self.inner.member_models.lock().expect("metrics lock");
        let now: BTreeSet<String> = capacity.by_model.iter().map(|m| m.model.clone()).collect();
        for gone in models
            .get(cluster)
            .map(|old| old.difference(&now).cloned().collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let _ = self.inner.model_gpus.remove_label_values(&[cluster, &gone]);
            let _ = self
                .inner
                .model_gpus_allocated
                .remove_label_values(&[cluster, &gone]);
        }
        // Several entries of one model (different memory sizes) add up.
        let mut sums: BTreeMap<&str, (i64, i64)> = BTreeMap::new();
        for m in &capacity.by_model {
            let e = sums.entry(m.model.as_str()).or_default();
            e.0 += m.total as i64;
            e.1 += (m.total - m.free) as i64;
        }
        for (model, (total, allocated)) in sums {
            self.inner
                .model_gpus
                .with_label_values(&[cluster, model])
                .set(total);
            self.inner
                .model_gpus_allocated
                .with_label_values(&[cluster, model])
                .set(allocated);
        }
        models.insert(cluster.to_string(), now);
    }

    /// The oracle's SOL balance (lamports).
    pub fn set_oracle_balance(&self, lamports: u64) {
        self.inner
            .oracle_balance
            .set(i64::try_from(lamports).unwrap_or(i64::MAX));
    }

    /// Reads the oracle's balance from the ledger and records it; a failed read leaves the last
    /// value (and is logged), so an RPC outage does not look like an empty wallet.
    pub async fn refresh_oracle_balance(&self, ledger: &crate::ledger::Ledger) {
        use crate::ledger::Signer as _;
        let key = ledger.oracle.pubkey();
        match ledger.client.get_account(&key).await {
            Ok(acc) => self.set_oracle_balance(acc.map(|a| a.lamports).unwrap_or(0)),
            Err(e) => {
                tracing::warn!(oracle = %key, error = %e, "reading the oracle balance failed")
            }
        }
    }

    /// Names of every metric family this registry exposes (histograms by their base name).
    pub fn metric_names(&self) -> Vec<String> {
        self.inner.names.clone()
    }

    /// Member readiness and GPU counts.
    pub fn set_member(&self, cluster: &str, ready: bool, gpus: i32, allocated: i32) {
        self.inner
            .member_ready
            .with_label_values(&[cluster])
            .set(ready as i64);
        self.inner
            .member_gpus
            .with_label_values(&[cluster])
            .set(gpus as i64);
        self.inner
            .member_gpus_allocated
            .with_label_values(&[cluster])
            .set(allocated as i64);
    }

    /// Pods in the member whose kubelet-assigned GPUs differ from gpupool's choice.
    pub fn set_kubelet_mismatches(&self, cluster: &str, n: usize) {
        self.inner
            .kubelet_mismatches
            .with_label_values(&[cluster])
            .set(n as i64);
    }

    /// Published GPUs of the member the hub refuses (its `SupplyVerified` problems).
    pub fn set_supply_problems(&self, cluster: &str, n: usize) {
        self.inner
            .supply_problems
            .with_label_values(&[cluster])
            .set(n as i64);
    }

    /// Drops a deleted member's series.
    pub fn forget_member(&self, cluster: &str) {
        let _ = self.inner.supply_problems.remove_label_values(&[cluster]);
        let _ = self
            .inner
            .kubelet_mismatches
            .remove_label_values(&[cluster]);
        let _ = self.inner.member_ready.remove_label_values(&[cluster]);
        let _ = self.inner.member_gpus.remove_label_values(&[cluster]);
        let _ = self
            .inner
            .member_gpus_allocated
            .remove_label_values(&[cluster]);
        if let Some(models) = self
            .inner
            .member_models
            .lock()
            .expect("metrics lock")
            .remove(cluster)
        {
            for model in models {
                let _ = self
                    .inner
                    .model_gpus
                    .remove_label_values(&[cluster, &model]);
                let _ = self
                    .inner
                    .model_gpus_allocated
                    .remove_label_values(&[cluster, &model]);
            }
        }
    }

    /// Counts a gang restart or replica re-placement.
    pub fn inc_restart(&self, kind: &str) {
        self.inner.gang_restarts.with_label_values(&[kind]).inc();
    }

    /// Adds newly metered GPU-seconds.
    pub fn add_usage(&self, cluster: &str, gpu_seconds: u64) {
        self.inner
            .usage_gpu_seconds
            .with_label_values(&[cluster])
            .inc_by(gpu_seconds);
    }

    /// Adds tokens minted by a confirmed settlement.
    pub fn add_minted(&self, cluster: &str, amount: u64) {
        self.inner
            .tokens_minted
            .with_label_values(&[cluster])
            .inc_by(amount);
    }

    /// Counts usage receipts closed and the rent they returned.
    pub fn add_receipts_closed(&self, receipts: u64, lamports: u64) {
        self.inner.receipts_closed.inc_by(receipts);
        self.inner.receipt_rent_reclaimed.inc_by(lamports);
    }

    /// Counts a failed settlement.
    pub fn inc_settlement_failure(&self, reason: &str) {
        self.inner
            .settlement_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// Replaces the unpaid-usage gauge with the (cluster, reason, GPU-seconds) of this pass.
    pub fn set_unpaid<'a>(&self, items: impl IntoIterator<Item = (&'a str, &'a str, i64)>) {
        let g = &self.inner.unpaid_gpu_seconds;
        g.reset();
        for (cluster, reason, secs) in items {
            g.with_label_values(&[cluster, reason]).add(secs);
        }
    }

    /// Replaces the tenant gauges with (tenant, escrow, reserved, spent, burn rate per second)
    /// of this pass; the runway is set for tenants that burn.
    pub fn set_tenants<'a>(&self, items: impl IntoIterator<Item = (&'a str, u64, u64, u64, u64)>) {
        let i = &self.inner;
        for g in [
            &i.tenant_escrow,
            &i.tenant_reserved,
            &i.tenant_spent,
            &i.tenant_burn_rate,
            &i.tenant_runway,
        ] {
            g.reset();
        }
        let v = |x: u64| i64::try_from(x).unwrap_or(i64::MAX);
        for (tenant, escrow, reserved, spent, burn) in items {
            i.tenant_escrow.with_label_values(&[tenant]).set(v(escrow));
            i.tenant_reserved
                .with_label_values(&[tenant])
                .set(v(reserved));
            i.tenant_spent.with_label_values(&[tenant]).set(v(spent));
            i.tenant_burn_rate.with_label_values(&[tenant]).set(v(burn));
            if let Some(runway) = escrow.checked_div(burn) {
                i.tenant_runway.with_label_values(&[tenant]).set(v(runway));
            }
        }
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh_pending_age();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
    }

    /// Sets `gpupool_leader`: whether this replica leads.
    pub fn set_leader(&self, leading: bool) {
        self.inner.leader.set(i64::from(leading));
    }

    /// Registers long-running task `name` (the scheduler loop, a controller): `/healthz` fails
    /// once the returned guard is dropped, i.e. once the task ends, panics or is aborted. Keep
    /// the guard inside the task's future.
    pub fn task(&self, name: &'static str) -> TaskGuard {
        self.lock_tasks().insert(name, true);
        TaskGuard {
            name,
            metrics: self.clone(),
        }
    }

    fn lock_tasks(&self) -> std::sync::MutexGuard<'_, BTreeMap<&'static str, bool>> {
        self.inner.tasks.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Registered tasks that are no longer running.
    pub fn dead_tasks(&self) -> Vec<&'static str> {
        self.lock_tasks()
            .iter()
            .filter(|(_, alive)| !**alive)
            .map(|(n, _)| *n)
            .collect()
    }

    /// Sets what `/debug/queue` serves (the leader's scheduler registers its snapshot).
    pub fn set_debug_queue(&self, source: DebugSource) {
        *self.inner.debug.lock().unwrap_or_else(|p| p.into_inner()) = Some(source);
    }

    /// Marks the process ready: it reached the hub API (leader or standby replica alike).
    pub fn set_ready(&self) {
        self.inner
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
    }

    /// Whether the process is ready (hub reached, or a reconcile completed).
    pub fn is_ready(&self) -> bool {
        self.inner.ready.load(std::sync::atomic::Ordering::Relaxed)
    }
}

/// Marks its task dead in `/healthz` when dropped (see [`Metrics::task`]).
pub struct TaskGuard {
    name: &'static str,
    metrics: Metrics,
}

impl Drop for TaskGuard {
    fn drop(&mut self) {
        self.metrics.lock_tasks().insert(self.name, false);
        tracing::error!(task = self.name, "a long-running task stopped");
    }
}

/// The `/metrics`, `/healthz`, `/readyz` and `/debug/queue` routes.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/debug/queue", get(debug_queue))
        .with_state(metrics)
}

/// Fails (503, naming them) once a registered task (scheduler loop, controller) has stopped, so
/// that the kubelet restarts the process.
async fn healthz(State(m): State<Metrics>) -> impl IntoResponse {
    let dead = m.dead_tasks();
    if dead.is_empty() {
        (StatusCode::OK, "ok\n".to_string())
    } else {
        let msg = format!("stopped: {}\n", dead.join(", "));
        (StatusCode::SERVICE_UNAVAILABLE, msg)
    }
}

/// The scheduler's queue and cache as JSON; 503 on a replica that does not lead.
async fn debug_queue(State(m): State<Metrics>) -> axum::response::Response {
    let source = m
        .inner
        .debug
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .clone();
    match source {
        Some(f) => axum::Json(f().await).into_response(),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            "no scheduler runs in this replica (standby, or starting)\n",
        )
            .into_response(),
    }
}

async fn metrics_handler(State(m): State<Metrics>) -> impl IntoResponse {
    (
        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
        m.render(),
    )
}

async fn readyz(State(m): State<Metrics>) -> impl IntoResponse {
    if m.is_ready() {
        (StatusCode::OK, "ok\n")
    } else {
        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
    }
}

/// Serves `/metrics`, `/healthz`, `/readyz` and `/debug/queue` on `addr` until the task is
/// dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz, /debug/queue");
    serve_on(listener, metrics).await
}

/// Serves the routes on an already bound listener.
pub async fn serve_on(listener: tokio::net::TcpListener, metrics: Metrics) -> anyhow::Result<()> {
    axum::serve(listener, router(metrics)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use axum::body::Body;
    use axum::http::{Request, StatusCode};
    use tower::ServiceExt as _;

    async fn get(m: &super::Metrics, path: &str) -> (StatusCode, String) {
        let req = Request::get(path).body(Body::empty()).unwrap();
        let res = super::router(m.clone()).oneshot(req).await.unwrap();
        let status = res.status();
        let body = axum::body::to_bytes(res.into_body(), 1 << 20)
            .await
            .unwrap();
        (status, String::from_utf8(body.to_vec()).unwrap())
    }

    #[tokio::test]
    async fn healthz_fails_once_a_long_running_task_has_stopped() {
        let m = super::Metrics::default();
        assert_eq!(get(&m, "/healthz").await.0, StatusCode::OK);
        // A loop that runs on stays healthy; one that panics makes /healthz fail, naming it.
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let m2 = m.clone();
        let running = tokio::spawn(async move {
            let _alive = m2.task("scheduler");
            let _ = stopped.await;
        });
        tokio::task::yield_now().await;
        let m3 = m.clone();
        let dead = tokio::spawn(async move {
            let _alive = m3.task("trainingjob-controller");
            panic!("the controller's stream failed");
        });
        assert!(dead.await.unwrap_err().is_panic());
        let (status, body) = get(&m, "/healthz").await;
        assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE);
        assert_eq!(body, "stopped: trainingjob-controller\n");
        // The scheduler loop ending (returned, not panicked) counts too.
        stop.send(()).unwrap();
        running.await.unwrap();
        let (_, body) = get(&m, "/healthz").await;
        assert_eq!(body, "stopped: scheduler, trainingjob-controller\n");
    }

    #[tokio::test]
    async fn leader_gauge_and_debug_queue() {
        let m = super::Metrics::default();
        assert!(m.render().contains("gpupool_leader 0"));
        m.set_leader(true);
        assert!(m.render().contains("gpupool_leader 1"));
        // A standby replica has no scheduler to show.
        assert_eq!(
            get(&m, "/debug/queue").await.0,
            StatusCode::SERVICE_UNAVAILABLE
        );
        m.set_debug_queue(std::sync::Arc::new(|| {
            Box::pin(async { serde_json::json!({"queue": [{"position": 1}]}) })
        }));
        let (status, body) = get(&m, "/debug/queue").await;
        assert_eq!(status, StatusCode::OK);
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["queue"][0]["position"], 1);
    }

    #[test]
    fn names_follow_prometheus_conventions() {
        let m = super::Metrics::default();
        m.set_member("m1", true, 8, 2);
        m.add_usage("m1", 10);
        m.set_pending("trainingjob", "a", true);
        let text = m.render();
        for line in text.lines().filter(|l| l.starts_with("# TYPE")) {
            let mut parts = line.split_whitespace().skip(2);
            let (name, kind) = (parts.next().unwrap(), parts.next().unwrap());
            assert!(name.starts_with("gpupool_"), "{name}");
            if kind == "counter" {
                assert!(name.ends_with("_total"), "{name}");
            }
        }
        assert!(text.contains("gpupool_member_gpus{cluster=\"m1\"} 8"));
        assert!(text.contains("gpupool_pending_jobs{kind=\"trainingjob\"} 1"));
        assert!(text.contains("gpupool_pending_job_oldest_age_seconds{kind=\"trainingjob\"} 0"));
    }

    fn capacity(models: &[(&str, i32, i32)]) -> crate::api::CapacitySummary {
        crate::api::CapacitySummary {
            gpus_total: models.iter().map(|m| m.1).sum(),
            gpus_free: models.iter().map(|m| m.2).sum(),
            by_model: models
                .iter()
                .map(|(model, total, free)| crate::api::ModelCapacity {
                    model: model.to_string(),
                    memory_mib: 81920,
                    total: *total,
                    free: *free,
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn capacity_by_model_follows_the_member() {
        let m = super::Metrics::default();
        m.set_member_capacity("east", true, &capacity(&[("H100", 16, 10), ("L40S", 4, 4)]));
        let t = m.render();
        assert!(
            t.contains("gpupool_member_model_gpus{cluster=\"east\",model=\"H100\"} 16"),
            "{t}"
        );
        assert!(
            t.contains("gpupool_member_model_gpus_allocated{cluster=\"east\",model=\"H100\"} 6"),
            "{t}"
        );
        assert!(
            t.contains("gpupool_member_gpus_allocated{cluster=\"east\"} 6"),
            "{t}"
        );
        assert!(
            t.contains("gpupool_member_ready{cluster=\"east\"} 1"),
            "{t}"
        );
        // The L40S node left: its series goes, not stays at its last value.
        m.set_member_capacity("east", false, &capacity(&[("H100", 16, 16)]));
        let t = m.render();
        assert!(!t.contains("model=\"L40S\""), "{t}");
        assert!(
            t.contains("gpupool_member_ready{cluster=\"east\"} 0"),
            "{t}"
        );
        m.forget_member("east");
        assert!(!m.render().contains("cluster=\"east\""));
    }

    #[test]
    fn pending_age_tracks_the_oldest_job_and_drops_to_zero() {
        let m = super::Metrics::default();
        m.set_pending("inferencejob", "old", true);
        std::thread::sleep(std::time::Duration::from_millis(1100));
        m.set_pending("inferencejob", "new", true);
        // Re-marking a job pending keeps its first time.
        m.set_pending("inferencejob", "old", true);
        let t = m.render();
        assert!(
            t.contains("gpupool_pending_jobs{kind=\"inferencejob\"} 2"),
            "{t}"
        );
        assert!(
            t.contains("gpupool_pending_job_oldest_age_seconds{kind=\"inferencejob\"} 1"),
            "{t}"
        );
        m.set_pending("inferencejob", "old", false);
        m.set_pending("inferencejob", "new", false);
        let t = m.render();
        assert!(
            t.contains("gpupool_pending_job_oldest_age_seconds{kind=\"inferencejob\"} 0"),
            "{t}"
        );
    }

    #[test]
    fn metric_names_list_every_family() {
        let m = super::Metrics::default();
        m.set_oracle_balance(5_000_000_000);
        let names = m.metric_names();
        for n in [
            "gpupool_member_model_gpus",
            "gpupool_pending_job_oldest_age_seconds",
            "gpupool_placement_duration_seconds",
            "gpupool_oracle_balance_lamports",
            "gpupool_settlement_failures_total",
            "gpupool_client_throttled_seconds_total",
            "gpupool_events_skipped_total",
        ] {
            assert!(names.iter().any(|x| x == n), "{n} in {names:?}");
        }
        assert!(
            m.render()
                .contains("gpupool_oracle_balance_lamports 5000000000")
        );
    }

    /// Sends `request` in pieces with pauses between them (each piece its own TCP segment) and
    /// returns the whole answer.
    async fn split_request(addr: std::net::SocketAddr, request: &str, pieces: usize) -> String {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let mut sock = tokio::net::TcpStream::connect(addr).await.unwrap();
        sock.set_nodelay(true).unwrap();
        let bytes = request.as_bytes();
        let step = bytes.len().div_ceil(pieces);
        for chunk in bytes.chunks(step) {
            sock.write_all(chunk).await.unwrap();
            sock.flush().await.unwrap();
            tokio::time::sleep(std::time::Duration::from_millis(30)).await;
        }
        let mut out = Vec::new();
        sock.read_to_end(&mut out).await.unwrap();
        String::from_utf8(out).unwrap()
    }

    #[tokio::test]
    async fn endpoints_answer_requests_split_over_segments() {
        let m = super::Metrics::default();
        m.set_member("m1", true, 8, 2);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let server = tokio::spawn(super::serve_on(listener, m.clone()));
        let req = |path: &str| {
            format!(
                "GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: Prometheus/3.0\r\nAccept: text/plain\r\nConnection: close\r\n\r\n"
            )
        };
        let r = split_request(addr, &req("/readyz"), 5).await;
        assert!(r.starts_with("HTTP/1.1 503"), "{r}");
        m.set_ready();
        let r = split_request(addr, &req("/readyz"), 7).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        let r = split_request(addr, &req("/metrics"), 9).await;
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains("text/plain; version=0.0.4"), "{r}");
        assert!(r.contains("gpupool_member_gpus{cluster=\"m1\"} 8"), "{r}");
        let r = split_request(addr, &req("/healthz"), 3).await;
        assert!(r.starts_with("HTTP/1.1 200") && r.ends_with("ok\n"), "{r}");
        let r = split_request(addr, &req("/nope"), 2).await;
        assert!(r.starts_with("HTTP/1.1 404"), "{r}");
        server.abort();
    }
}
