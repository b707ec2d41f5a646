//! Prometheus metrics and the `/metrics`, `/healthz`, `/readyz` endpoints.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGaugeVec, Opts, Registry, TextEncoder,
};
use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

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
    pending: Mutex<BTreeSet<(String, String)>>,
    member_ready: IntGaugeVec,
    member_gpus: IntGaugeVec,
    member_gpus_allocated: IntGaugeVec,
    kubelet_mismatches: IntGaugeVec,
    gang_restarts: IntCounterVec,
    usage_gpu_seconds: IntCounterVec,
    tokens_minted: IntCounterVec,
    settlement_failures: IntCounterVec,
    ready: std::sync::atomic::AtomicBool,
}

impl Default for Metrics {
    fn default() -> Self {
        let registry = Registry::new();
        let buckets = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
        ];
        macro_rules! reg {
            ($m:expr) => {{
                let m = $m.expect("metric definition is valid");
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
            settlement_failures: reg!(IntCounterVec::new(
                Opts::new(
                    "gpupool_settlement_failures_total",
                    "Settlement transactions that failed"
                ),
                &["reason"]
            )),
            pending: Mutex::default(),
            ready: std::sync::atomic::AtomicBool::new(false),
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
            set.insert(key);
        } else {
            set.remove(&key);
        }
        let n = set.iter().filter(|(k, _)| k == kind).count();
        self.inner
            .pending_jobs
            .with_label_values(&[kind])
            .set(n as i64);
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

    /// Counts a failed settlement.
    pub fn inc_settlement_failure(&self, reason: &str) {
        self.inner
            .settlement_failures
            .with_label_values(&[reason])
            .inc();
    }

    /// The text exposition of every metric.
    pub fn render(&self) -> String {
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

/// Serves `/metrics`, `/healthz` and `/readyz` on `addr` until the task is dropped.
pub async fn serve(addr: SocketAddr, metrics: Metrics) -> anyhow::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /metrics, /healthz, /readyz");
    loop {
        let (mut sock, _) = listener.accept().await?;
        let m = metrics.clone();
        tokio::spawn(async move {
            // Read the whole request head (it may arrive in several segments): answering and
            // closing with request bytes unread would reset the connection.
            let mut buf = Vec::with_capacity(1024);
            let head = async {
                let mut chunk = [0u8; 1024];
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 16 * 1024 {
                    let n = sock.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                std::io::Result::Ok(())
            };
            if !matches!(
                tokio::time::timeout(Duration::from_secs(5), head).await,
                Ok(Ok(()))
            ) {
                return;
            }
            let req = String::from_utf8_lossy(&buf);
            let path = req.split_whitespace().nth(1).unwrap_or("/");
            let (code, ctype, body) = match path {
                "/metrics" => ("200 OK", "text/plain; version=0.0.4", m.render()),
                "/healthz" => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" if m.is_ready() => ("200 OK", "text/plain", "ok\n".to_string()),
                "/readyz" => (
                    "503 Service Unavailable",
                    "text/plain",
                    "not ready\n".to_string(),
                ),
                _ => ("404 Not Found", "text/plain", "not found\n".to_string()),
            };
            let resp = format!(
                "HTTP/1.1 {code}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                body.len()
            );
            let _ = sock.write_all(resp.as_bytes()).await;
        });
    }
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
    }
}
