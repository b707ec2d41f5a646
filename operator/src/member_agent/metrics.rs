//! The member agent's `/healthz`, `/readyz` and `/metrics` (`gpupool member-agent
//! --metrics-addr`).
//!
//! Live while the heartbeat loop turns (a hung call to the hub makes the kubelet restart the
//! agent; joining and waiting for an admin's approval do not count). Ready once joined and the
//! last heartbeat reached the hub. Metrics: heartbeats, works held, applied and refused, inventory
//! reports, whether the member's API server answers, when the hub credential expires.

use crate::telemetry::probes::{Probes, Pulse};
use k8s_openapi::jiff::Timestamp;
use prometheus::{IntCounterVec, IntGauge};
use std::sync::Arc;
use std::time::Duration;

/// The member API server's health as the agent last found it: `None` while it answers, else
/// since when and why not. Read by the heartbeat.
#[derive(Clone)]
pub(super) struct MemberApiHealth {
    problem: Arc<std::sync::Mutex<Option<(Timestamp, String)>>>,
    up: IntGauge,
}

impl MemberApiHealth {
    pub(super) fn set(&self, problem: Option<String>) {
        self.up.set(i64::from(problem.is_none()));
        let mut h = self.problem.lock().expect("health lock");
        match (problem, h.as_ref()) {
            (None, _) => *h = None,
            (Some(p), Some((since, _))) => *h = Some((*since, p)),
            (Some(p), None) => *h = Some((Timestamp::now(), p)),
        }
    }

    /// The heartbeat's [`crate::pull::MEMBER_API_ANNOTATION`].
    pub(super) fn annotation(&self) -> String {
        match &*self.problem.lock().expect("health lock") {
            None => crate::pull::MEMBER_API_OK.into(),
            Some((since, why)) => format!("unreachable since {since}: {why}"),
        }
    }
}

/// Outcome label of a counted call.
fn result(ok: bool) -> &'static str {
    if ok { "ok" } else { "error" }
}

/// The agent's checks and metrics; one per process.
pub(super) struct AgentMetrics {
    pub(super) probes: Probes,
    pub(super) api: MemberApiHealth,
    heartbeat: Pulse,
    heartbeats: IntCounterVec,
    last_heartbeat: IntGauge,
    works: IntGauge,
    refused_works: IntGauge,
    applies: IntCounterVec,
    reports: IntCounterVec,
    credential_expiry: IntGauge,
}

impl AgentMetrics {
    /// For an agent that heartbeats every `heartbeat`.
    pub(super) fn new(heartbeat: Duration) -> AgentMetrics {
        let p = Probes::new();
        p.set_ready(Err("joining the pool".into()));
        AgentMetrics {
            // Three missed renewals, plus the longest retry backoff and a call's own time.
            heartbeat: p.pulse("heartbeat", Some(heartbeat * 3 + Duration::from_secs(60))),
            api: MemberApiHealth {
                problem: Default::default(),
                up: p.gauge(
                    "gpupool_member_agent_member_api_up",
                    "Whether the member's API server answered the last inventory read (1) or not (0)",
                ),
            },
            heartbeats: p.counter_vec(
                "gpupool_member_agent_heartbeats_total",
                "Heartbeat Lease renewals on the hub, by result",
                &["result"],
            ),
            last_heartbeat: p.gauge(
                "gpupool_member_agent_last_heartbeat_timestamp_seconds",
                "Unix time of the last heartbeat the hub accepted",
            ),
            works: p.gauge(
                "gpupool_member_agent_works",
                "MemberWork objects the hub gave this member",
            ),
            refused_works: p.gauge(
                "gpupool_member_agent_refused_works",
                "Works with manifests this agent's policy refuses (namespace, kind or pod spec)",
            ),
            applies: p.counter_vec(
                "gpupool_member_agent_work_applies_total",
                "Works applied into the member, by result (error: some manifest not applied)",
                &["result"],
            ),
            reports: p.counter_vec(
                "gpupool_member_agent_reports_total",
                "GPU inventory reports written to the hub, by result",
                &["result"],
            ),
            credential_expiry: p.gauge(
                "gpupool_member_agent_credential_expiry_timestamp_seconds",
                "Unix time the hub credential in use expires (0: it does not)",
            ),
            probes: p,
        }
    }

    /// A serving round starts (join or stored credential, maybe waiting for an admin's
    /// approval): the heartbeat is not due until it runs, and the agent is not ready.
    pub(super) fn joining(&self) {
        self.heartbeat.rest();
        self.probes.set_ready(Err("joining the pool".into()));
    }

    /// Serving with a credential that expires at `expires` (Unix seconds).
    pub(super) fn serving(&self, expires: Option<i64>) {
        self.credential_expiry.set(expires.unwrap_or(0));
    }

    /// A heartbeat renewal ended: accepted, or why not.
    pub(super) fn heartbeat(&self, outcome: Result<(), String>) {
        self.heartbeat.beat();
        self.heartbeats
            .with_label_values(&[result(outcome.is_ok())])
            .inc();
        match outcome {
            Ok(()) => {
                self.last_heartbeat.set(Timestamp::now().as_second());
                self.probes.set_ready(Ok(()));
            }
            Err(why) => self
                .probes
                .set_ready(Err(format!("heartbeat failed: {why}"))),
        }
    }

    /// An apply pass: works held, works with refused manifests, and per applied work whether
    /// everything went in.
    pub(super) fn applied(
        &self,
        works: usize,
        refused: usize,
        outcomes: impl Iterator<Item = bool>,
    ) {
        self.works.set(works as i64);
        self.refused_works.set(refused as i64);
        for ok in outcomes {
            self.applies.with_label_values(&[result(ok)]).inc();
        }
    }

    /// An inventory report write.
    pub(super) fn reported(&self, ok: bool) {
        self.reports.with_label_values(&[result(ok)]).inc();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_after_an_accepted_heartbeat_and_metrics_count_outcomes() {
        let m = AgentMetrics::new(Duration::from_secs(10));
        assert!(!m.probes.is_ready(), "not joined yet");
        m.heartbeat(Ok(()));
        assert!(m.probes.is_ready());
        m.heartbeat(Err("hub unreachable".into()));
        assert!(!m.probes.is_ready(), "the hub did not take the heartbeat");
        assert!(m.probes.failing().is_empty(), "the loop turns");
        m.applied(3, 1, [true, false, true].into_iter());
        m.reported(true);
        m.api.set(Some("connection refused".into()));
        assert!(m.api.annotation().contains("connection refused"));
        m.serving(Some(1_900_000_000));
        let text = m.probes.render();
        for want in [
            "gpupool_member_agent_heartbeats_total{result=\"ok\"} 1",
            "gpupool_member_agent_heartbeats_total{result=\"error\"} 1",
            "gpupool_member_agent_works 3",
            "gpupool_member_agent_refused_works 1",
            "gpupool_member_agent_work_applies_total{result=\"error\"} 1",
            "gpupool_member_agent_work_applies_total{result=\"ok\"} 2",
            "gpupool_member_agent_reports_total{result=\"ok\"} 1",
            "gpupool_member_agent_member_api_up 0",
            "gpupool_member_agent_credential_expiry_timestamp_seconds 1900000000",
        ] {
            assert!(text.contains(want), "{want} in {text}");
        }
        m.api.set(None);
        assert_eq!(m.api.annotation(), crate::pull::MEMBER_API_OK);
    }
}
