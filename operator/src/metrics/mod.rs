//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints (served with axum).

use crate::api::CapacitySummary;
use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
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
    gang_restarts: IntCounterVec,
    usage_gpu_seconds: IntCounterVec,
    tokens_minted: IntCounterVec,
    receipt_rent_reclaimed: IntCounter,
    receipts_closed: IntCounter,
    settlement_failures: IntCounterVec,
    unpaid_gpu_seconds: IntGaugeVec,
    client_throttled: CounterVec,
    events_skipped: IntCounterVec,
    ready: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        let mut names = Vec::new();
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
                names.extend(m.desc().iter().map(|d| d.fq_name.clone()));
                registry
                    .register(Box::new(m.clone()))
                    .expect("metric names are unique");
                m
            }};
        }
        let inner = Inner {
            reconciles: reg!(IntCounterVec::new(
                Opts::new("gpupool_reconciles_total", "Reconciles run, by controller"),
                &["controller"]
            )),
            reconcile_errors: reg!(IntCounterVec::new(
                Opts::new(
                    "gpupool_reconcile_errors_total",
                    "Reconciles that failed, by controller and error"
                ),
                &["controller", "error"]
            )),
            reconcile_duration: reg!(HistogramVec::new(
                HistogramOpts::new("gpupool_reconcile_duration_seconds", "Reconcile duration")
                    .buckets(buckets.clone()),
                &["controller"]
            )),
            placement_duration: reg!(HistogramVec::new(
                HistogramOpts::new(
                    "gpupool_placement_duration_seconds",
                    "Time to decide a placement (lock wait included)"
                )
                .buckets(buckets),
                &["kind"]
            )),
            pending_jobs: reg!(IntGaugeVec::new(
                Opts::new("gpupool_pending_jobs", "Jobs waiting for capacity"),
                &["kind"]
            )),
            pending_oldest: reg!(IntGaugeVec::new(
                Opts::new(
                    "gpupool_pending_job_oldest_age_seconds",
                    "Age of the longest-waiting pending job (since this replica saw it pending), by kind"
                ),
                &["kind"]
            )),
            member_ready: reg!(IntGaugeVec::new(
                Opts::new("gpupool_member_ready", "1 when the member cluster is Ready"),
                &["cluster"]
            )),
            member_gpus: reg!(IntGaugeVec::new(
                Opts::new("gpupool_member_gpus", "GPUs in the member cluster"),
                &["cluster"]
            )),
            member_gpus_allocated: reg!(IntGaugeVec::new(
                Opts::new(
                    "gpupool_member_gpus_allocated",
                    "GPUs of the member assigned to gpupool jobs"
                ),
                &["cluster"]
            )),
            model_gpus: reg!(IntGaugeVec::new(
                Opts::new(
                    "gpupool_member_model_gpus",
                    "GPUs in the member cluster, by GPU model"
                ),
                &["cluster", "model"]
            )),
            model_gpus_allocated: reg!(IntGaugeVec::new(
                Opts::new(
                    "gpupool_member_model_gpus_allocated",
                    "GPUs of the member assigned to gpupool jobs, by GPU model"
                ),
                &["cluster", "model"]
            )),
            oracle_balance: reg!(IntGauge::with_opts(Opts::new(
                "gpupool_oracle_balance_lamports",
                "SOL balance of the usage oracle that signs and pays for settlements, in lamports"
            ))),
            kubelet_mismatches: reg!(IntGaugeVec::new(
                Opts::new(
                    "gpupool_kubelet_gpu_mismatches",
                    "Device-plugin pods whose GPUs, as the kubelet assigned them, differ from gpupool's choice"
                ),
                &["cluster"]
            )),
            gang_restarts: reg!(IntCounterVec::new(
                Opts::new(
                    "gpupool_job_restarts_total",
                    "Gang restarts / replica re-placements"
                ),
                &["kind"]
            )),
            usage_gpu_seconds: reg!(IntCounterVec::new(
                Opts::new(
                    "gpupool_usage_gpu_seconds_total",
                    "GPU-seconds metered, by member cluster"
                ),
                &["cluster"]
            )),
            tokens_minted: reg!(IntCounterVec::new(
                Opts::new(
                    "gpupool_tokens_minted_total",
                    "Pool token base units minted to owners, by member cluster"
                ),
                &["cluster"]
            )),
            receipt_rent_reclaimed: reg!(IntCounter::new(
                "gpupool_receipt_rent_reclaimed_lamports_total",
                "Lamports of rent returned to the payer by closing usage receipts past the settlement horizon"
            )),
            receipts_closed: reg!(IntCounter::new(
                "gpupool_receipts_closed_total",
                "Usage receipts closed past the settlement horizon"
            )),
            settlement_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "gpupool_settlement_failures_total",
                    "Settlement transactions that failed"
                ),
                &["reason"]
            )),
            unpaid_gpu_seconds: reg!(IntGaugeVec::new(
                Opts::new(
                    "gpupool_unpaid_gpu_seconds",
                    "GPU-seconds claimed by members that the hub refuses to pay, by member cluster and reason (last metering pass)"
                ),
                &["cluster", "reason"]
            )),
            client_throttled: reg!(CounterVec::new(
                Opts::new(
                    "gpupool_client_throttled_seconds_total",
                    "Time requests waited for the client-side rate limit (--hub-qps/--member-qps), by client"
                ),
                &["client"]
            )),
            events_skipped: reg!(IntCounterVec::new(
                Opts::new(
                    "gpupool_events_skipped_total",
                    "Normal Events not published because their rate limit was reached, by reason"
                ),
                &["reason"]
            )),
            pending: Mutex::default(),
            member_models: Mutex::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
            names,
            registry,
        };
        Metrics {
            inner: Arc::new(inner),
        }
    }
}

impl Metrics {
    /// Records one reconcile.
    pub fn observe_reconcile(
        &self,
        controller: &str,
        took: Duration,
        err: Option<&crate::controllers::Error>,
    ) {
        self.inner
            .ready
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.inner.reconciles.with_label_values(&[controller]).inc();
        self.inner
            .reconcile_duration
            .with_label_values(&[controller])
            .observe(took.as_secs_f64());
        if let Some(e) = err {
            self.inner
                .reconcile_errors
                .with_label_values(&[controller, e.metric_label()])
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

    /// Drops a deleted member's series.
    pub fn forget_member(&self, cluster: &str) {
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

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
        self.refresh_pending_age();
        let mut buf = Vec::new();
        TextEncoder::new()
            .encode(&self.inner.registry.gather(), &mut buf)
            .expect("text encoding cannot fail");
        String::from_utf8(buf).expect("exposition is UTF-8")
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

/// The `/metrics`, `/healthz` and `/readyz` routes.
pub fn router(metrics: Metrics) -> Router {
    Router::new()
        .route("/metrics", get(metrics_handler))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(readyz))
        .with_state(metrics)
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

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    serve_on(listener, metrics).await
}

/// Serves the routes on an already bound listener.
pub async fn serve_on(listener: tokio::net::TcpListener, metrics: Metrics) -> anyhow::Result<()> {
    axum::serve(listener, router(metrics)).await?;
    Ok(())
}

#[cfg(test)]
mod tests {
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
