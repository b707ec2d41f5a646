//! The join controller's `/healthz`, `/readyz` and `/metrics` (`gpupool join-controller
//! --metrics-addr`).
//!
//! Live while its two controllers run and the token sweeper turns; ready once the join namespace
//! and policy are installed. Metrics: reconciles by controller and result, join requests by phase
//! (a member waiting for an admin shows as `Pending`), expired tokens revoked, failed sweeps.

use crate::api::{JoinPhase, JoinRequest};
use crate::telemetry::probes::Probes;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts};

/// The join controller's metrics.
#[derive(Clone)]
pub(super) struct JoinMetrics {
    pub(super) probes: Probes,
    reconciles: IntCounterVec,
    requests: IntGaugeVec,
    pub(super) tokens_expired: IntCounter,
    pub(super) sweep_failures: IntCounter,
}

const PHASES: [JoinPhase; 5] = [
    JoinPhase::Pending,
    JoinPhase::Approved,
    JoinPhase::Joined,
    JoinPhase::Denied,
    JoinPhase::Refused,
];

impl JoinMetrics {
    pub(super) fn new() -> JoinMetrics {
        let p = Probes::new();
        p.set_ready(Err("installing the join namespace and policy".into()));
        let requests = IntGaugeVec::new(
            Opts::new(
                "gpupool_join_requests",
                "JoinRequests on the hub by phase (Pending: waiting for a pool admin)",
            ),
            &["phase"],
        )
        .expect("valid metric");
        p.registry()
            .register(Box::new(requests.clone()))
            .expect("metric registered once");
        JoinMetrics {
            reconciles: p.counter_vec(
                "gpupool_join_reconciles_total",
                "Reconciles of the join controller, by controller (request, access) and result",
                &["controller", "result"],
            ),
            requests,
            tokens_expired: p.counter(
                "gpupool_join_tokens_expired_total",
                "Join tokens revoked because they expired",
            ),
            sweep_failures: p.counter(
                "gpupool_join_sweep_failures_total",
                "Sweeps for expired join tokens that failed",
            ),
            probes: p,
        }
    }

    /// A reconcile of `controller` ended.
    pub(super) fn reconciled(&self, controller: &str, ok: bool) {
        let result = if ok { "ok" } else { "error" };
        self.reconciles
            .with_label_values(&[controller, result])
            .inc();
    }

    /// The join requests now, by phase (an unanswered request counts as Pending).
    pub(super) fn count_requests<'a>(&self, requests: impl Iterator<Item = &'a JoinRequest>) {
        let mut by = [0i64; PHASES.len()];
        for r in requests {
            let phase = r.status.as_ref().map(|s| s.phase).unwrap_or_default();
            if let Some(i) = PHASES.iter().position(|p| *p == phase) {
                by[i] += 1;
            }
        }
        for (phase, n) in PHASES.iter().zip(by) {
            self.requests
                .with_label_values(&[&phase.to_string()])
                .set(n);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::{JoinRequestSpec, JoinRequestStatus};

    #[test]
    fn requests_are_counted_by_phase_and_reconciles_by_result() {
        let m = JoinMetrics::new();
        let spec: JoinRequestSpec = serde_json::from_value(serde_json::json!({
            "memberName": "m", "clusterId": "c", "ownerWallet": "w"
        }))
        .unwrap();
        let mut a = JoinRequest::new("a", spec.clone());
        let b = JoinRequest::new("b", spec.clone());
        let mut c = JoinRequest::new("c", spec);
        a.status = Some(JoinRequestStatus {
            phase: JoinPhase::Joined,
            ..Default::default()
        });
        c.status = Some(JoinRequestStatus {
            phase: JoinPhase::Pending,
            ..Default::default()
        });
        m.count_requests([&a, &b, &c].into_iter());
        m.reconciled("request", true);
        m.reconciled("access", false);
        let text = m.probes.render();
        for want in [
            "gpupool_join_requests{phase=\"Pending\"} 2",
            "gpupool_join_requests{phase=\"Joined\"} 1",
            "gpupool_join_requests{phase=\"Denied\"} 0",
            "gpupool_join_reconciles_total{controller=\"request\",result=\"ok\"} 1",
            "gpupool_join_reconciles_total{controller=\"access\",result=\"error\"} 1",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
    }
}
