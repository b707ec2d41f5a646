//! gpupool pods that a member's scheduler refuses to schedule (on DRA members: a claim for the
//! hub's GPUs it cannot allocate, e.g. because something outside gpupool holds one of them).
//! After [`super::Config::member_refusal`] the job controllers withdraw the pod (a training gang:
//! all of it) and the scheduler places the job again, without the refused GPUs for
//! [`super::Config::suspect_for`].

use super::Context;
use crate::federation::dra::{Refusal, refusal};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use std::collections::BTreeSet;
use std::time::Duration;

/// A pod refused long enough to withdraw: name, the node gpupool chose, the scheduler's message.
pub(super) type Refused = (String, String, String);

/// Of `pods` in member `cluster`: those refused for at least the limit (their GPUs are marked
/// suspect in the scheduler right away) and, for those refused for less, when to look again.
pub(super) fn member_refusals(
    cluster: &str,
    pods: &[&Pod],
    ctx: &Context,
) -> (Vec<Refused>, Option<Duration>) {
    let now = k8s_openapi::jiff::Timestamp::now();
    let mut refused = Vec::new();
    let mut wait: Option<Duration> = None;
    let mut suspect = BTreeSet::new();
    for p in pods {
        match refusal(p, now, ctx.config.member_refusal) {
            None => {}
            Some(Refusal::Waiting(d)) => {
                // A second past the limit, so the next look finds it over.
                let d = d + Duration::from_secs(1);
                wait = Some(wait.map_or(d, |w| w.min(d)));
            }
            Some(Refusal::Withdraw(message)) => {
                let slots = crate::scheduler::pod_slots(cluster, p);
                let node = crate::workloads::pod_node(p)
                    .unwrap_or_default()
                    .to_string();
                suspect.extend(slots);
                refused.push((p.name_any(), node, message));
            }
        }
    }
    if !suspect.is_empty() {
        tracing::info!(
            cluster,
            gpus = suspect.len(),
            seconds = ctx.config.suspect_for.as_secs(),
            "GPUs refused by the member's scheduler kept out of placement"
        );
        ctx.scheduler.suspect(suspect, ctx.config.suspect_for);
    }
    (refused, wait)
}
