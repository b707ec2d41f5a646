//! The node agent's `/healthz`, `/readyz` and `/metrics` (`gpupool-agent --metrics-addr`), on
//! the agents' shared [`Probes`].
//!
//! Ready once a topology was published; live while the last publish is at most three refresh
//! intervals old (a hung API call or NVML read makes the kubelet restart the agent). Metrics:
//! publishes and their failures, the GPUs last published and when.

use crate::telemetry::probes::{Probes, Pulse};
use prometheus::{IntCounter, IntGauge};
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The agent's health and metrics; cheap to clone.
#[derive(Clone)]
pub struct AgentHealth {
    probes: Probes,
    publish: Arc<Pulse>,
    publishes: IntCounter,
    failures: IntCounter,
    gpus: IntGauge,
    last_publish: IntGauge,
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
        let probes = Probes::new();
        probes.set_ready(Err("no topology published yet".into()));
        AgentHealth {
            publish: Arc::new(probes.pulse("publish", Some(interval * 3))),
            publishes: probes.counter(
                "gpupool_agent_publishes_total",
                "GpuTopology publishes that succeeded",
            ),
            failures: probes.counter(
                "gpupool_agent_publish_failures_total",
                "GpuTopology reads or publishes that failed",
            ),
            gpus: probes.gauge(
                "gpupool_agent_gpus",
                "GPUs in the last published GpuTopology",
            ),
            last_publish: probes.gauge(
                "gpupool_agent_last_publish_timestamp_seconds",
                "Unix time of the last successful publish",
            ),
            probes,
        }
    }

    /// Records a successful publish of `gpus` GPUs.
    pub fn published(&self, gpus: usize) {
        self.publishes.inc();
        self.gpus.set(gpus as i64);
        self.last_publish.set(now_secs());
        self.publish.beat();
        self.probes.set_ready(Ok(()));
    }

    /// Records a failed read or publish.
    pub fn failed(&self) {
        self.failures.inc();
    }

    /// The checks and metrics.
    pub fn probes(&self) -> &Probes {
        &self.probes
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_a_publish_and_unhealthy_once_publishes_stop() {
        let h = AgentHealth::new(Duration::from_millis(10));
        assert!(!h.probes().is_ready());
        assert!(
            h.probes().failing().is_empty(),
            "the first publish is underway"
        );
        std::thread::sleep(Duration::from_millis(40));
        assert_eq!(
            h.probes().failing().len(),
            1,
            "no publish within three intervals"
        );
        h.published(8);
        assert!(h.probes().is_ready() && h.probes().failing().is_empty());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!h.probes().failing().is_empty(), "publishes stopped");
        h.failed();
        let text = h.probes().render();
        for want in [
            "gpupool_agent_publishes_total 1",
            "gpupool_agent_publish_failures_total 1",
            "gpupool_agent_gpus 8",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
