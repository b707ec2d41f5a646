//! InferenceJob controller: replicas placed per member (spread when allowed), one Service per
//! member, re-placement of replicas on lost members, roll-up of readiness and endpoints.

use super::error::MemberErr;
use super::member_io::{cleanup_job, create_if_missing, delete_all, delete_pods, ensure_namespace};
use super::reservations::taken_gpus;
use super::status::{apply_status, event, reconcile_finalized, set_condition};
use super::{Context, Error, Result};
use crate::api::{
    ClusterPlacement, InferenceJob, InferenceJobStatus, InferencePhase, NodeGpus, condition,
};
use crate::federation::{MemberView, labels};
use crate::placement::{JobRequest, candidates, place_replicas};
use crate::workloads::{PodPlacement, inference_objects, pod_node};
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

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
    tracing::warn!(job = %job.name_any(), error = %err, "inferencejob reconcile failed");
    Action::requeue(Duration::from_secs(3))
}

/// Flat view of the status placements: (cluster, placement).
fn flatten(st: &InferenceJobStatus) -> Vec<(String, PodPlacement)> {
    st.placements
        .iter()
        .flat_map(|cp| {
            cp.replicas.iter().zip(&cp.gpus).map(|(r, g)| {
                (
                    cp.cluster.clone(),
                    PodPlacement {
                        index: *r,
                        node: g.node.clone(),
                        gpu_uuids: g.gpu_uuids.clone(),
                        model: String::new(),
                        score: g.score,
                    },
                )
            })
        })
        .collect()
}

fn group(flat: &[(String, PodPlacement)], ready: &BTreeMap<String, i32>) -> Vec<ClusterPlacement> {
    let mut by: BTreeMap<String, ClusterPlacement> = BTreeMap::new();
    let mut sorted = flat.to_vec();
    sorted.sort_by_key(|(c, p)| (c.clone(), p.index));
    for (c, p) in sorted {
        let e = by.entry(c.clone()).or_insert_with(|| ClusterPlacement {
            cluster: c.clone(),
            ready_replicas: *ready.get(&c).unwrap_or(&0),
            ..Default::default()
        });
        e.replicas.push(p.index);
        e.gpus.push(NodeGpus {
            node: p.node,
            gpu_uuids: p.gpu_uuids,
            score: p.score,
        });
    }
    by.into_values().collect()
}

fn pod_state(m: &MemberView, uid: &str, index: i32, node: &str) -> (Option<String>, bool) {
    m.inventory
        .pods
        .iter()
        .find(|p| {
            let l = p.metadata.labels.as_ref();
            l.and_then(|l| l.get(labels::JOB_UID)).map(String::as_str) == Some(uid)
                && l.and_then(|l| l.get(labels::INDEX))
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

async fn apply(job: &InferenceJob, ctx: &Context) -> Result<Action> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let api: Api<InferenceJob> = Api::namespaced(ctx.hub.clone(), &ns);
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
                if m.reachable
                    && pod_state(m, &uid, p.index, &p.node).0.as_deref() == Some("Failed")
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
        event(
            ctx,
            job,
            true,
            "MemberLost",
            "Replace",
            format!("member {c} is not ready; replicas {idx:?} will be re-placed"),
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

    // 2. Place missing replicas.
    let placed: BTreeSet<i32> = kept.iter().map(|(_, p)| p.index).collect();
    let missing: Vec<i32> = (0..want).filter(|i| !placed.contains(i)).collect();
    let mut unplaced_reasons = Vec::new();
    if !missing.is_empty() {
        let t0 = Instant::now();
        let guard = ctx.placement_lock.lock().await;
        let mut taken = taken_gpus(ctx, &uid).await?;
        taken.extend(kept.iter().flat_map(|(_, p)| p.gpu_uuids.iter().cloned()));
        let (cands, member_reasons) = candidates(&members, &taken);
        let req = JobRequest {
            gpus_per_pod: job.spec.gpus_per_replica.max(1) as usize,
            nvlink: job.spec.nvlink,
            gpu: job.spec.gpu.clone(),
            cluster_selector: job.spec.cluster_selector.clone(),
        };
        let pinned = if job.spec.spread_across_clusters {
            None
        } else {
            kept.first().map(|(c, _)| c.clone())
        };
        let mut existing: BTreeMap<String, usize> = BTreeMap::new();
        for (c, _) in &kept {
            *existing.entry(c.clone()).or_default() += 1;
        }
        let (new, reasons) = place_replicas(
            &cands,
            &req,
            &missing,
            job.spec.spread_across_clusters,
            pinned.as_deref(),
            &existing,
        );
        unplaced_reasons = reasons;
        if new.len() < missing.len() {
            unplaced_reasons.extend(member_reasons);
        }
        if !new.is_empty() {
            let detail = new
                .iter()
                .map(|(c, p)| {
                    format!(
                        "replica {} → {c}/{} GPUs [{}] score {}",
                        p.index,
                        p.node,
                        p.gpu_uuids.join(","),
                        p.score
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            kept.extend(new);
            st.placements = group(&kept, &BTreeMap::new());
            st.observed_generation = generation;
            set_condition(
                &mut st.conditions,
                condition::SCHEDULED,
                unplaced_reasons.is_empty(),
                if unplaced_reasons.is_empty() {
                    "Placed"
                } else {
                    "PartiallyPlaced"
                },
                &detail,
                generation,
            );
            apply_status(&api, job, &st).await?;
            drop(guard);
            ctx.metrics.observe_placement("inferencejob", t0.elapsed());
            let reason = if lost.is_empty() && failed.is_empty() {
                "Scheduled"
            } else {
                "Rescheduled"
            };
            event(ctx, job, false, reason, "Place", detail).await;
        } else {
            drop(guard);
        }
    } else if !lost.is_empty() || !failed.is_empty() || !scaled_down.is_empty() {
        st.placements = group(&kept, &BTreeMap::new());
    }
    if !lost.is_empty() || !scaled_down.is_empty() || !failed.is_empty() {
        st.placements = group(&kept, &BTreeMap::new());
    }

    // 3. Create workloads in each member.
    let mut ready: BTreeMap<String, i32> = BTreeMap::new();
    let mut endpoints = Vec::new();
    for (c, p) in &kept {
        let Some(m) = members.get(c) else { continue };
        let Some(client) = m.client.clone().filter(|_| m.reachable) else {
            continue;
        };
        let model = m
            .inventory
            .nodes
            .get(&p.node)
            .and_then(|n| n.topology.as_ref())
            .and_then(|t| t.gpus.first())
            .map(|g| g.model.clone())
            .unwrap_or_default();
        let mut pl = p.clone();
        pl.model = model;
        let (phase, is_ready) = pod_state(m, &uid, p.index, &p.node);
        if phase.is_none() {
            ensure_namespace(&client, c, &ns).await?;
            let objects = inference_objects(job, std::slice::from_ref(&pl), m.binding_mode());
            for svc in &objects.services {
                create_if_missing(&client, c, svc).await?;
            }
            for mp in &objects.pods {
                crate::federation::dra::create_member_pod(&client, mp)
                    .await
                    .member(c)?;
            }
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
    for (c, m) in &members {
        if holding.contains(c) || !m.reachable {
            continue;
        }
        let has_any = m.inventory.pods.iter().any(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::JOB_UID))
                == Some(&uid)
        });
        if has_any && let Some(cl) = &m.client {
            delete_all(cl, c, &ns, &uid).await?;
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
    if !unplaced_reasons.is_empty() {
        let m = unplaced_reasons.join("; ");
        let changed = !st
            .conditions
            .iter()
            .any(|c| c.type_ == condition::SCHEDULED && c.status == "False" && c.message == m);
        set_condition(
            &mut st.conditions,
            condition::SCHEDULED,
            false,
            "Unschedulable",
            &m,
            generation,
        );
        if changed {
            event(
                ctx,
                job,
                true,
                "Unschedulable",
                "Place",
                format!("{} replicas unplaced: {m}", want as usize - kept.len()),
            )
            .await;
        }
    }
    st.observed_generation = generation;
    ctx.metrics
        .set_pending("inferencejob", &job.name_any(), kept.len() < want as usize);
    if st != before {
        apply_status(&api, job, &st).await?;
    }
    Ok(if kept.len() < want as usize {
        Action::requeue(ctx.config.pending_retry)
    } else {
        Action::requeue(ctx.config.resync)
    })
}
