//! The node agent's `/healthz`, `/readyz` and `/metrics` (`gpupool-agent --metrics-addr`).
//!
//! Ready once a topology was published; healthy while the last publish is at most three refresh
//! intervals old (a hung API call or NVML read makes the kubelet restart the agent). Metrics:
//! publishes and their failures, the GPUs last published and when.

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus::{IntCounter, IntGauge, Registry};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The agent's health and metrics; cheap to clone.
#[derive(Clone)]
pub struct AgentHealth {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Registry,
    publishes: IntCounter,
    failures: IntCounter,
    gpus: IntGauge,
    last_publish: IntGauge,
    stale_after: Duration,
}

fn now_secs() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0)
}

impl AgentHealth {
    /// Health for an agent that refreshes every `interval`.
    pub fn new(interval: Duration) -> AgentHealth {
        let registry = Registry::new();
        let counter = |name: &str, help: &str| {
            let c = IntCounter::new(name, help).expect("valid metric");
            registry
                .register(Box::new(c.clone()))
                .expect("unique metric");
            c
        };
        let publishes = counter(
            "gpupool_agent_publishes_total",
            "GpuTopology publishes that succeeded",
        );
        let failures = counter(
            "gpupool_agent_publish_failures_total",
            "GpuTopology reads or publishes that failed",
        );
        let gauge = |name: &str, help: &str| {
            let g = IntGauge::new(name, help).expect("valid metric");
            registry
                .register(Box::new(g.clone()))
                .expect("unique metric");
            g
        };
        let gpus = gauge(
            "gpupool_agent_gpus",
            "GPUs in the last published GpuTopology",
        );
        let last_publish = gauge(
            "gpupool_agent_last_publish_timestamp_seconds",
            "Unix time of the last successful publish",
        );
        AgentHealth {
            inner: Arc::new(Inner {
                registry,
                publishes,
                failures,
                gpus,
                last_publish,
                stale_after: interval.max(Duration::from_secs(1)) * 3,
            }),
        }
    }

    /// Records a successful publish of `gpus` GPUs.
    pub fn published(&self, gpus: usize) {
        self.inner.publishes.inc();
        self.inner.gpus.set(gpus as i64);
        self.inner.last_publish.set(now_secs());
    }

    /// Records a failed read or publish.
    pub fn failed(&self) {
        self.inner.failures.inc();
    }

    /// Whether a topology was published at all.
    pub fn is_ready(&self) -> bool {
        self.inner.publishes.get() > 0
    }

    /// Whether the last publish is recent (or none is due yet: the first one is underway).
    pub fn is_healthy(&self, started: i64) -> bool {
        let last = match self.inner.last_publish.get() {
            0 => started,
            t => t,
        };
        now_secs() - last <= self.inner.stale_after.as_secs() as i64
    }

    /// The metrics in Prometheus' text format.
    pub fn render(&self) -> String {
        prometheus::TextEncoder::new()
            .encode_to_string(&self.inner.registry.gather())
            .unwrap_or_default()
    }

    /// The routes.
    pub fn router(&self) -> Router {
        let started = now_secs();
        Router::new()
            .route(
                "/healthz",
                get(move |State(h): State<AgentHealth>| async move {
                    if h.is_healthy(started) {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (
                            StatusCode::SERVICE_UNAVAILABLE,
                            "no publish within three intervals\n",
                        )
                    }
                }),
            )
            .route(
                "/readyz",
                get(|State(h): State<AgentHealth>| async move {
                    if h.is_ready() {
                        (StatusCode::OK, "ok\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not published yet\n")
                    }
                }),
            )
            .route(
                "/metrics",
                get(|State(h): State<AgentHealth>| async move {
                    (
                        [(header::CONTENT_TYPE, prometheus::TEXT_FORMAT)],
                        h.render(),
                    )
                        .into_response()
                }),
            )
            .with_state(self.clone())
    }

    /// Serves the routes on `addr` until the task is dropped.
    pub async fn serve(self, addr: std::net::SocketAddr) -> anyhow::Result<()> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        tracing::info!(%addr, "serving /healthz, /readyz, /metrics");
        axum::serve(listener, self.router()).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_a_publish_and_unhealthy_once_publishes_stop() {
        let h = AgentHealth::new(Duration::from_secs(10));
        let start = now_secs();
        assert!(!h.is_ready());
        assert!(h.is_healthy(start), "the first publish is underway");
        assert!(
            !h.is_healthy(start - 31),
            "no first publish within three intervals"
        );
        h.published(8);
        assert!(h.is_ready() && h.is_healthy(start - 1000));
        h.inner.last_publish.set(now_secs() - 31);
        assert!(!h.is_healthy(start));
        h.failed();
        let text = h.render();
        for want in [
            "gpupool_agent_publishes_total 1",
            "gpupool_agent_publish_failures_total 1",
            "gpupool_agent_gpus 8",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
