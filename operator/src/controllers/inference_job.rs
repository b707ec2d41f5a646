//! InferenceJob controller: one Service per member, replicas of lost members and failed replicas
//! handed back to the scheduler (removed from the status), roll-up of readiness and endpoints.
//! Placement itself is the scheduler's.

use super::member_io::{cleanup_job, create_objects, delete_all, delete_pods, ensure_namespace};
use super::status::{apply_status, event, reconcile_finalized, set_condition};
use super::{Context, Error, Result};
use crate::api::{InferenceJob, InferencePhase, condition};
use crate::federation::{MemberView, labels};
use crate::scheduler::jobs::{flatten, group};
use crate::workloads::{inference_objects, pod_node};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

/// Reconciles one InferenceJob.
pub async fn reconcile(job: Arc<InferenceJob>, ctx: Arc<Context>) -> Result<Action> {
    reconcile_finalized(&ctx, "inferencejob", job, |ev| async {
        match ev {
            Finalizer::Apply(job) => apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup_job(&*job, &ctx).await,
        }
    })
    .await
}

/// Retries a failed reconcile with a delay.
pub fn error_policy(job: Arc<InferenceJob>, err: &Error, _ctx: Arc<Context>) -> Action {
    if err.is_conflict() {
        // A newer version exists (often the scheduler's placement): look at it right away.
        return Action::requeue(Duration::from_millis(50));
    }
    tracing::warn!(job = %job.name_any(), error = %err, "inferencejob reconcile failed");
    Action::requeue(Duration::from_secs(3))
}

fn pod_state(pods: &[Arc<Pod>], index: i32, node: &str) -> (Option<String>, bool) {
    pods.iter()
        .find(|p| {
            let l = p.metadata.labels.as_ref();
            l.and_then(|l| l.get(labels::INDEX))
                .and_then(|i| i.parse::<i32>().ok())
                == Some(index)
                && pod_node(p) == Some(node)
        })
        .map(|p| {
            let st = p.status.as_ref();
            let ready = st
                .and_then(|s| s.conditions.as_ref())
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"));
            (st.and_then(|s| s.phase.clone()), ready)
        })
        .unwrap_or((None, false))
}

/// The job's pods in a member, from its pod watch (`None` until the watch has listed them).
fn pods_in(m: &MemberView, uid: &str) -> Option<Vec<Arc<Pod>>> {
    m.watch
        .as_ref()
        .filter(|w| w.synced())
        .map(|w| w.pods_of(uid))
}

async fn apply(job: &InferenceJob, ctx: &Context) -> Result<Action> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let api: Api<InferenceJob> = Api::namespaced(ctx.hub.clone(), &ns);
    if ctx.scheduler.in_flight(&uid) {
        // The scheduler is writing a placement for this job: roll up the version it writes.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    let before = job.status.clone().unwrap_or_default();
    let mut st = before.clone();
    let generation = job.metadata.generation;
    let members = ctx.registry.snapshot().await;
    let want = job.spec.replicas.max(0);

    // 1. Keep placements that are still good; collect what must go.
    let mut kept = Vec::new();
    let mut lost: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut scaled_down: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    for (c, p) in flatten(&st) {
        if p.index >= want {
            scaled_down.entry(c).or_default().push(p.index);
            continue;
        }
        if !members.contains_key(&c)
            && matches!(ctx.member_health(&c).await, super::MemberHealth::Pending)
        {
            // Not heard from since this operator started: keep the replica, decide after a heartbeat.
            kept.push((c, p));
            continue;
        }
        match members.get(&c) {
            Some(m) if m.ready => {
                let pods = pods_in(m, &uid).unwrap_or_default();
                if m.reachable && pod_state(&pods, p.index, &p.node).0.as_deref() == Some("Failed")
                {
                    failed.push((c, p));
                } else {
                    kept.push((c, p));
                }
            }
            _ => lost.entry(c).or_default().push(p.index),
        }
    }
    for (c, idx) in &lost {
        let (reason, why) = match ctx.member_health(c).await {
            super::MemberHealth::Removed => ("Deregistered", "was removed from the pool"),
            _ => ("MemberLost", "is not ready"),
        };
        event(
            ctx,
            job,
            true,
            reason,
            "Replace",
            format!("member {c} {why}; replicas {idx:?} will be re-placed"),
        )
        .await;
    }
    for (c, idx) in &scaled_down {
        if let Some(cl) = members
            .get(c)
            .filter(|m| m.reachable)
            .and_then(|m| m.client.clone())
        {
            let set: BTreeSet<String> = idx.iter().map(|i| i.to_string()).collect();
            delete_pods(&cl, c, &ns, &uid, |p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::INDEX))
                    .is_some_and(|i| set.contains(i))
            })
            .await?;
        }
    }
    for (c, p) in &failed {
        if let Some(cl) = members.get(c).and_then(|m| m.client.clone()) {
            let ix = p.index.to_string();
            delete_pods(&cl, c, &ns, &uid, |pod| {
                pod.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::INDEX))
                    == Some(&ix)
            })
            .await?;
        }
        event(
            ctx,
            job,
            true,
            "ReplicaFailed",
            "Replace",
            format!(
                "replica {} on {c}/{} failed; re-placing it",
                p.index, p.node
            ),
        )
        .await;
    }

    // 2. Missing replicas are placed by the scheduler, which sees this status.
    let changed_placements = !lost.is_empty() || !scaled_down.is_empty() || !failed.is_empty();
    if changed_placements {
        st.placements = group(&kept, &BTreeMap::new());
    }

    // 3. Create what is missing in each member (unless the scheduler is creating it now).
    let mut ready: BTreeMap<String, i32> = BTreeMap::new();
    let mut endpoints = Vec::new();
    let writing = ctx.scheduler.in_flight(&uid);
    for (c, p) in &kept {
        let Some(m) = members.get(c) else { continue };
        let Some(client) = m.client.clone().filter(|_| m.reachable) else {
            continue;
        };
        let Some(pods) = pods_in(m, &uid) else {
            continue;
        };
        let (phase, is_ready) = pod_state(&pods, p.index, &p.node);
        if phase.is_none() && !writing {
            let mut pl = p.clone();
            pl.model = ctx
                .scheduler
                .with_cache(|cache| cache.model_of(c, &p.node))
                .unwrap_or_default();
            ensure_namespace(&client, c, &ns).await?;
            let objects = inference_objects(job, std::slice::from_ref(&pl), m.binding_mode());
            create_objects(&client, c, &objects).await?;
        }
        if is_ready {
            *ready.entry(c.clone()).or_default() += 1;
        }
    }
    for c in kept.iter().map(|(c, _)| c).collect::<BTreeSet<_>>() {
        endpoints.push(format!("{c}/{ns}/{}:{}", job.name_any(), job.spec.port));
    }
    // Services in members that no longer hold replicas.
    let holding: BTreeSet<&String> = kept.iter().map(|(c, _)| c).collect();
    if !writing {
        for (c, m) in &members {
            if holding.contains(c) || !m.reachable {
                continue;
            }
            let has_any = pods_in(m, &uid).is_some_and(|p| !p.is_empty());
            if has_any && let Some(cl) = &m.client {
                delete_all(cl, c, &ns, &uid).await?;
            }
        }
    }

    // 4. Roll-up.
    st.placements = group(&kept, &ready);
    st.ready_replicas = ready.values().sum();
    st.endpoints = endpoints;
    let clusters: Vec<String> = st.placements.iter().map(|p| p.cluster.clone()).collect();
    st.clusters = (!clusters.is_empty()).then(|| clusters.join(","));
    st.phase = if want == 0 {
        InferencePhase::Running
    } else if kept.is_empty() {
        InferencePhase::Pending
    } else if st.ready_replicas == want {
        InferencePhase::Running
    } else if kept.len() < want as usize
        || before.phase == InferencePhase::Running
        || before.phase == InferencePhase::Degraded
    {
        InferencePhase::Degraded
    } else {
        InferencePhase::Scheduled
    };
    let msg = format!("{}/{} replicas ready", st.ready_replicas, want);
    set_condition(
        &mut st.conditions,
        condition::READY,
        st.ready_replicas == want,
        if st.ready_replicas == want {
            "AllReplicasReady"
        } else {
            "ReplicasNotReady"
        },
        &msg,
        generation,
    );
    st.observed_generation = generation;
    if st != before {
        apply_status(&api, job, &st).await?;
    }
    // Pod changes, member readiness and placements wake the job; nothing to poll.
    Ok(Action::await_change())
}
