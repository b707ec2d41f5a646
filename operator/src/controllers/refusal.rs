//! gpupool pods that a member's scheduler refuses to schedule, or never looks at.
//!
//! After [`super::Config::member_refusal`] the job controllers act on such a pod, by what caused
//! it ([`Cause`]):
//! - **the GPUs** (on DRA members a claim for the hub's GPUs it cannot allocate, e.g. because
//!   something outside gpupool holds one of them): the pod is withdrawn (a training gang: all of
//!   it), its GPUs kept out of placement for [`super::Config::suspect_for`], and the job placed
//!   again;
//! - **the pod's own constraints** (its node selector or affinity, tolerations, ports, CPU or
//!   memory requests): no placement can help, and the GPUs are not at fault — the TrainingJob
//!   fails, an InferenceJob's replica stays as it is with the reason in its status, and no GPU is
//!   marked suspect (a user's mistake never takes GPUs out of the pool);
//! - **the member's scheduler never looked at the pod** (no `PodScheduled` condition at all, e.g.
//!   the member's kube-scheduler is down): the pod is withdrawn and the job placed elsewhere, its
//!   GPUs suspect like a device failure (placing there again would wait the same way).
//!
//! One job marks at most [`MAX_SUSPECT_PER_JOB`] GPUs suspect at a time.

use super::Context;
use crate::federation::dra::{Refusal, refusal};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::jiff::Timestamp;
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::time::Duration;

/// GPUs one job can keep out of placement at once, whatever its pods' refusals.
pub const MAX_SUSPECT_PER_JOB: usize = 8;

/// Why a member's scheduler does not run a pod.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Cause {
    /// The GPUs (devices, claims) or something else about the node gpupool chose.
    Gpus,
    /// The pod's own constraints: no node can take it, whichever GPUs it is given.
    OwnConstraints,
    /// The member's scheduler never looked at it.
    NeverScheduled,
}

/// A pod refused long enough to act on.
#[derive(Clone, Debug)]
pub(super) struct Refused {
    /// Pod name.
    pub pod: String,
    /// The node gpupool chose.
    pub node: String,
    /// The scheduler's message (or why the pod counts as never scheduled).
    pub message: String,
    /// What caused it.
    pub cause: Cause,
}

impl Refused {
    /// Whether the job's placement is at fault (withdraw and place again), not the pod itself.
    pub fn withdraw(&self) -> bool {
        self.cause != Cause::OwnConstraints
    }
}

/// What a scheduler's refusal message blames. Device and claim failures blame the GPUs (checked
/// first: a message about a pinned DRA pod names the other nodes' selector mismatch too); node
/// selector/affinity, taints, ports and CPU/memory requests are the pod's own; anything else is
/// treated like the GPUs (withdrawn and placed elsewhere, as before this distinction).
pub(super) fn cause_of(message: &str) -> Cause {
    let m = message.to_lowercase();
    let gpus = ["claim", "device", "nvidia.com/gpu", "resourceslice"];
    if gpus.iter().any(|g| m.contains(g)) {
        return Cause::Gpus;
    }
    let own = [
        "node affinity",
        "affinity/selector",
        "nodeselector",
        "pod affinity",
        "anti-affinity",
        "untolerated taint",
        "didn't tolerate",
        "free ports",
        "insufficient cpu",
        "insufficient memory",
        "insufficient ephemeral-storage",
        "insufficient pods",
    ];
    if own.iter().any(|o| m.contains(o)) {
        Cause::OwnConstraints
    } else {
        Cause::Gpus
    }
}

/// How long pod `p` has gone without the member's scheduler looking at it, against `limit`:
/// unbound, no `PodScheduled` condition at all, created longer ago than `limit`. A pod bound at
/// creation (the device plugin's, whose node gpupool names) never waits for a scheduler.
/// `None` when it does not apply.
pub(super) fn never_scheduled(p: &Pod, now: Timestamp, limit: Duration) -> Option<Refusal> {
    let spec = p.spec.as_ref()?;
    if spec.node_name.is_some() {
        return None;
    }
    let scheduled = p
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "PodScheduled"));
    if scheduled {
        return None;
    }
    let created = p.metadata.creation_timestamp.as_ref()?.0;
    let waited = Duration::from_secs(now.duration_since(created).as_secs().max(0) as u64);
    Some(match limit.checked_sub(waited) {
        Some(left) if !left.is_zero() => Refusal::Waiting(left),
        _ => {
            let by = spec
                .scheduler_name
                .as_deref()
                .filter(|s| *s != "default-scheduler");
            Refusal::Withdraw(match by {
                Some(s) => format!("no scheduler named {s:?} looked at the pod"),
                None => "the member's scheduler never looked at the pod (is it running?)".into(),
            })
        }
    })
}

/// Of pods `pods` of job `uid` in member `cluster`: those refused (or never looked at) for at
/// least the limit, and for those refused for less, when to look again. The GPUs of pods the
/// GPUs or the member's scheduler are to blame for are marked suspect in the scheduler right away
/// (at most [`MAX_SUSPECT_PER_JOB`] per job).
pub(super) fn member_refusals(
    cluster: &str,
    uid: &str,
    pods: &[&Pod],
    ctx: &Context,
) -> (Vec<Refused>, Option<Duration>) {
    let now = Timestamp::now();
    let limit = ctx.config.member_refusal;
    let mut refused = Vec::new();
    let mut wait: Option<Duration> = None;
    let mut suspect = BTreeSet::new();
    for p in pods {
        let (state, never) = match refusal(p, now, limit) {
            Some(r) => (Some(r), false),
            None => (never_scheduled(p, now, limit), true),
        };
        match state {
            None => {}
            Some(Refusal::Waiting(d)) => {
                // A second past the limit, so the next look finds it over.
                let d = d + Duration::from_secs(1);
                wait = Some(wait.map_or(d, |w| w.min(d)));
            }
            Some(Refusal::Withdraw(message)) => {
                let own_scheduler = p
                    .spec
                    .as_ref()
                    .and_then(|s| s.scheduler_name.as_deref())
                    .is_some_and(|s| s != "default-scheduler");
                let cause = match (never, own_scheduler) {
                    (true, true) => Cause::OwnConstraints,
                    (true, false) => Cause::NeverScheduled,
                    (false, _) => cause_of(&message),
                };
                if cause != Cause::OwnConstraints {
                    suspect.extend(crate::scheduler::pod_slots(cluster, p));
                }
                let node = crate::workloads::pod_node(p)
                    .unwrap_or_default()
                    .to_string();
                refused.push(Refused {
                    pod: p.name_any(),
                    node,
                    message,
                    cause,
                });
            }
        }
    }
    if !suspect.is_empty() {
        let kept = ctx
            .scheduler
            .suspect(uid, suspect, MAX_SUSPECT_PER_JOB, ctx.config.suspect_for);
        tracing::info!(
            cluster,
            gpus = kept,
            seconds = ctx.config.suspect_for.as_secs(),
            "GPUs refused by the member's scheduler kept out of placement"
        );
    }
    (refused, wait)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(bound: bool, created: Option<&str>, cond: Option<serde_json::Value>) -> Pod {
        let mut v = serde_json::json!({
            "metadata": {"name": "w-0", "namespace": "ml"},
            "spec": {"containers": [{"name": "c"}]},
            "status": {"phase": "Pending"},
        });
        if let Some(t) = created {
            v["metadata"]["creationTimestamp"] = t.into();
        }
        if bound {
            v["spec"]["nodeName"] = "n1".into();
        }
        if let Some(c) = cond {
            v["status"]["conditions"] = serde_json::json!([c]);
        }
        serde_json::from_value(v).unwrap()
    }

    #[test]
    fn a_refusal_blames_the_gpus_only_for_device_and_claim_failures() {
        // DRA: the chosen node cannot allocate the claim (the other nodes fail the pin).
        assert_eq!(
            cause_of(
                "0/3 nodes are available: 1 cannot allocate all claims, 2 node(s) didn't match \
                 Pod's node affinity/selector."
            ),
            Cause::Gpus
        );
        assert_eq!(
            cause_of("0/1 nodes are available: 1 Insufficient nvidia.com/gpu."),
            Cause::Gpus
        );
        assert_eq!(
            cause_of("resourceclaim \"w-0-gpus\" not found"),
            Cause::Gpus
        );
        // The pod's own selector, tolerations, ports or requests: no GPU is to blame.
        for own in [
            "0/3 nodes are available: 3 node(s) didn't match Pod's node affinity/selector.",
            "0/2 nodes are available: 2 node(s) had untolerated taint {team: a}.",
            "0/2 nodes are available: 2 node(s) didn't have free ports for the requested pod ports.",
            "0/2 nodes are available: 2 Insufficient memory.",
            "0/2 nodes are available: 2 node(s) didn't match pod anti-affinity rules.",
        ] {
            assert_eq!(cause_of(own), Cause::OwnConstraints, "{own}");
        }
        // Unknown: withdrawn and placed elsewhere, as before.
        assert_eq!(
            cause_of("0/2 nodes are available: 2 node(s) were unschedulable."),
            Cause::Gpus
        );
    }

    #[test]
    fn a_pod_no_scheduler_looks_at_is_withdrawn_after_the_limit() {
        let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
        let limit = Duration::from_secs(60);
        // Created 30 s ago, never looked at: look again in 30 s.
        assert_eq!(
            never_scheduled(&pod(false, Some("2026-01-01T00:00:30Z"), None), now, limit),
            Some(Refusal::Waiting(Duration::from_secs(30)))
        );
        // Created 60 s ago: withdrawn, with a message that says why.
        match never_scheduled(&pod(false, Some("2026-01-01T00:00:00Z"), None), now, limit) {
            Some(Refusal::Withdraw(m)) => assert!(m.contains("never looked at"), "{m}"),
            other => panic!("{other:?}"),
        }
        // Bound (a device-plugin pod, or scheduled): never applies.
        assert_eq!(
            never_scheduled(&pod(true, Some("2026-01-01T00:00:00Z"), None), now, limit),
            None
        );
        // Looked at and refused: the refusal's own clock applies instead.
        let refused = serde_json::json!({"type": "PodScheduled", "status": "False",
            "reason": "Unschedulable", "message": "no"});
        assert_eq!(
            never_scheduled(
                &pod(false, Some("2026-01-01T00:00:00Z"), Some(refused)),
                now,
                limit
            ),
            None
        );
        // Without a creation time (a pull member's pod as derived on the hub): not judged.
        assert_eq!(never_scheduled(&pod(false, None, None), now, limit), None);
    }
}
