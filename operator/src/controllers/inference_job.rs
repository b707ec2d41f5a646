//! InferenceJob controller: one Service per member, replicas of lost members and failed replicas
//! handed back to the scheduler (removed from the status), roll-up of readiness and endpoints.
//! Placement itself is the scheduler's.

use super::member_io::{cleanup_job, create_objects, delete_all, delete_pods, ensure_namespace};
use super::status::{apply_status, event, reconcile_finalized, set_condition};
use super::{Context, Error, Result};
use crate::api::{InferenceJob, InferencePhase, condition};
use crate::federation::MemberView;
use crate::rollout::{Replica, budgets, plan, revision};
use crate::scheduler::jobs::{Placed, flatten, group};
use crate::workloads::{inference_objects, inference_pod_name, pod_node};
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

/// Phase and readiness of the replica's pod on `node` running `revision`.
fn pod_state(pods: &[Arc<Pod>], name: &str, node: &str) -> (Option<String>, bool) {
    pods.iter()
        .find(|p| p.metadata.name.as_deref() == Some(name) && pod_node(p) == Some(node))
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

async fn delete_replica(
    members: &BTreeMap<String, MemberView>,
    job: &InferenceJob,
    p: &Placed,
) -> Result<()> {
    let Some(cl) = members
        .get(&p.cluster)
        .filter(|m| m.reachable)
        .and_then(|m| m.client.clone())
    else {
        return Ok(());
    };
    let name = inference_pod_name(job, p.pod.index, &p.revision);
    delete_pods(
        &cl,
        &p.cluster,
        &job.namespace().unwrap_or_default(),
        &job.uid().unwrap_or_default(),
        |pod| pod.metadata.name.as_deref() == Some(name.as_str()),
    )
    .await?;
    Ok(())
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
    let current = revision(&job.spec);
    let (max_surge, max_unavailable) = budgets(job.spec.rollout.as_ref(), want);

    // 1. Keep placements that are still good; collect what must go.
    let mut kept: Vec<Placed> = Vec::new();
    let mut lost: BTreeMap<String, Vec<i32>> = BTreeMap::new();
    let mut failed = Vec::new();
    let mut scaled_down = Vec::new();
    let mut vanished = Vec::new();
    let mut refused_replicas = Vec::new();
    let mut refusal_wait: Option<Duration> = None;
    for mut p in flatten(&st) {
        let c = p.cluster.clone();
        if p.pod.index >= want {
            scaled_down.push(p);
            continue;
        }
        if !members.contains_key(&c)
            && matches!(ctx.member_health(&c).await, super::MemberHealth::Pending)
        {
            // Not heard from since this operator started: keep the replica, decide after a heartbeat.
            kept.push(p);
            continue;
        }
        match members.get(&c) {
            Some(m) if m.ready => {
                let Some(pods) = pods_in(m, &uid).filter(|_| m.reachable) else {
                    kept.push(p);
                    continue;
                };
                let name = inference_pod_name(job, p.pod.index, &p.revision);
                let (phase, ready) = pod_state(&pods, &name, &p.pod.node);
                p.ready = ready;
                // A replica the member's scheduler has refused for too long is re-placed like a
                // failed one (its GPUs kept out of placement for a while).
                let this: Vec<&Pod> = pods
                    .iter()
                    .map(|q| &**q)
                    .filter(|q| q.name_any() == name && pod_node(q) == Some(p.pod.node.as_str()))
                    .collect();
                let (refused, wait) = super::member_refusals(&c, &this, ctx);
                if let Some(d) = wait {
                    refusal_wait = Some(refusal_wait.map_or(d, |w: Duration| w.min(d)));
                }
                if let Some((pod, _, message)) = refused.first() {
                    event(
                        ctx,
                        job,
                        true,
                        "MemberSchedulerRefused",
                        "Replace",
                        format!(
                            "the scheduler of member {c} refused replica {} (pod {pod}) on node {} for over {}s: {message}; re-placing it",
                            p.pod.index,
                            p.pod.node,
                            ctx.config.member_refusal.as_secs()
                        ),
                    )
                    .await;
                    refused_replicas.push(p);
                } else if phase.as_deref() == Some("Failed") {
                    failed.push(p);
                } else if phase.is_none() && p.revision != current {
                    // An old revision's pod is gone (deleted by hand or evicted): not re-created.
                    vanished.push(p);
                } else {
                    kept.push(p);
                }
            }
            _ => lost.entry(c).or_default().push(p.pod.index),
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
    for p in &scaled_down {
        delete_replica(&members, job, p).await?;
    }
    for p in &refused_replicas {
        delete_replica(&members, job, p).await?;
    }
    for p in &failed {
        delete_replica(&members, job, p).await?;
        event(
            ctx,
            job,
            true,
            "ReplicaFailed",
            "Replace",
            format!(
                "replica {} on {}/{} failed; re-placing it",
                p.pod.index, p.cluster, p.pod.node
            ),
        )
        .await;
    }

    // 2. Rollout: a changed revision starts one; Ready replacements retire old replicas, and
    //    old replicas go within maxUnavailable. Missing and surge replicas are placed by the
    //    scheduler, which sees this status.
    // Rollout Events go out once the status recording the step is written, so a retried
    // reconcile (e.g. after a write conflict) does not report a step twice.
    let mut rollout_events: Vec<(&str, String)> = Vec::new();
    // (An old replica found gone counts: the pass that deleted it may have lost its write.)
    let rolling_from: BTreeSet<String> = kept
        .iter()
        .chain(&vanished)
        .filter(|p| p.revision != current)
        .map(|p| p.revision.clone())
        .collect();
    if st.revision.as_deref() != Some(current.as_str()) {
        if !rolling_from.is_empty() {
            rollout_events.push((
                "RolloutStarted",
                format!(
                    "rolling {} replicas from revision {} to {current} (maxSurge {max_surge}, \
                     maxUnavailable {max_unavailable})",
                    want,
                    rolling_from.iter().cloned().collect::<Vec<_>>().join(",")
                ),
            ));
        }
        st.revision = Some(current.clone());
    }
    // An old replica whose pod is gone is out of the rollout too (reported after its start):
    // deleted by an earlier pass whose status write lost a conflict (its Event was not sent
    // then), by hand, or evicted.
    for p in &vanished {
        rollout_events.push((
            "ReplicaReplaced",
            format!(
                "replica {} (revision {}) on {}/{} is gone; not re-created on its old revision",
                p.pod.index, p.revision, p.cluster, p.pod.node
            ),
        ));
    }
    let replicas: Vec<Replica> = kept.iter().map(Placed::replica).collect();
    let step = plan(want, &current, &replicas, max_surge, max_unavailable);
    let writing = ctx.scheduler.in_flight(&uid);
    let mut retired = Vec::new();
    if !writing {
        for (index, rev) in &step.delete {
            let Some(pos) = kept
                .iter()
                .position(|p| p.pod.index == *index && &p.revision == rev)
            else {
                continue;
            };
            let p = &kept[pos];
            if members.get(&p.cluster).is_none_or(|m| !m.reachable) {
                continue;
            }
            delete_replica(&members, job, p).await?;
            let p = kept.remove(pos);
            let another_old = kept
                .iter()
                .any(|o| o.pod.index == *index && o.revision != current);
            let why = if step.replaced.contains(index) {
                format!("its replacement (revision {current}) is Ready")
            } else if !p.ready {
                "it was not Ready".to_string()
            } else if another_old {
                "another old replica of this index keeps serving until its replacement is Ready"
                    .to_string()
            } else {
                format!("within maxUnavailable {max_unavailable}")
            };
            rollout_events.push((
                "ReplicaReplaced",
                format!(
                    "replica {index} (revision {rev}) on {}/{} deleted: {why}",
                    p.cluster, p.pod.node
                ),
            ));
            retired.push(p);
        }
    }
    let changed_placements = !lost.is_empty()
        || !scaled_down.is_empty()
        || !failed.is_empty()
        || !refused_replicas.is_empty()
        || !vanished.is_empty()
        || !retired.is_empty();
    if changed_placements {
        st.placements = group(&kept);
    }

    // 3. Create what is missing in each member (unless the scheduler is creating it now).
    let mut endpoints = Vec::new();
    for p in &kept {
        let c = &p.cluster;
        let Some(m) = members.get(c) else { continue };
        let Some(client) = m.client.clone().filter(|_| m.reachable) else {
            continue;
        };
        let Some(pods) = pods_in(m, &uid) else {
            continue;
        };
        let name = inference_pod_name(job, p.pod.index, &p.revision);
        let (phase, _) = pod_state(&pods, &name, &p.pod.node);
        if phase.is_none() && !writing && p.revision == current {
            let mut pl = p.pod.clone();
            pl.model = ctx
                .scheduler
                .with_cache(|cache| cache.model_of(c, &p.pod.node))
                .unwrap_or_default();
            ensure_namespace(&client, c, &ns).await?;
            let objects = inference_objects(job, std::slice::from_ref(&pl), m.binding_mode());
            create_objects(ctx, &client, c, &objects).await?;
        }
    }
    for c in kept.iter().map(|p| &p.cluster).collect::<BTreeSet<_>>() {
        let member_ns = crate::tenant::namespace_name(&ns);
        endpoints.push(format!(
            "{c}/{member_ns}/{}:{}",
            job.name_any(),
            job.spec.port
        ));
    }
    // Services in members that no longer hold replicas.
    let holding: BTreeSet<&String> = kept.iter().map(|p| &p.cluster).collect();
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
    let replicas: Vec<Replica> = kept.iter().map(Placed::replica).collect();
    let now = plan(want, &current, &replicas, max_surge, max_unavailable);
    st.placements = group(&kept);
    // What left the placements stays metered up to now (and no longer).
    st.retire_replicas(
        &before.placements,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        want,
    );
    st.ready_replicas = kept.iter().filter(|p| p.ready).count() as i32;
    st.updated_replicas = now.updated;
    st.endpoints = endpoints;
    let clusters: Vec<String> = st.placements.iter().map(|p| p.cluster.clone()).collect();
    st.clusters = (!clusters.is_empty()).then(|| clusters.join(","));
    let available = now.available;
    st.phase = if want == 0 {
        InferencePhase::Running
    } else if kept.is_empty() {
        InferencePhase::Pending
    } else if available == want {
        InferencePhase::Running
    } else if available < want
        && (before.phase == InferencePhase::Running || before.phase == InferencePhase::Degraded)
        || (kept.len() as i32) < want
    {
        InferencePhase::Degraded
    } else {
        InferencePhase::Scheduled
    };
    let msg = format!("{available}/{want} replicas ready");
    set_condition(
        &mut st.conditions,
        condition::READY,
        available == want,
        if available == want {
            "AllReplicasReady"
        } else {
            "ReplicasNotReady"
        },
        &msg,
        generation,
    );
    let was_rolling = before
        .conditions
        .iter()
        .any(|c| c.type_ == condition::PROGRESSING && c.reason == "RollingUpdate");
    let rolling = !rolling_from.is_empty() || (was_rolling && !now.complete);
    if now.complete {
        set_condition(
            &mut st.conditions,
            condition::PROGRESSING,
            true,
            "RolloutComplete",
            &format!("{want} replicas run revision {current} and are Ready"),
            generation,
        );
        if was_rolling {
            rollout_events.push((
                "RolloutComplete",
                format!("all {want} replicas run revision {current} and are Ready"),
            ));
        }
        // Realized: every replica of this generation placed, on its revision and Ready.
        st.observed_generation = generation;
    } else {
        set_condition(
            &mut st.conditions,
            condition::PROGRESSING,
            true,
            if rolling {
                "RollingUpdate"
            } else {
                "ReplicasPending"
            },
            &format!(
                "{} of {want} replicas on revision {current}, {available} available",
                now.updated
            ),
            generation,
        );
    }
    if st != before {
        apply_status(&api, job, &st).await?;
    }
    for (reason, note) in rollout_events {
        event(ctx, job, false, reason, "Rollout", note).await;
    }
    // Pod changes, member readiness and placements wake the job; nothing to poll.
    // Pod changes, member readiness and placements wake the job; only a refusal by a member's
    // scheduler that has not lasted long enough yet needs a timer.
    Ok(refusal_wait.map_or_else(Action::await_change, Action::requeue))
}
