//! TrainingJob controller: gang placement on one member, worker pods, gang restarts, roll-up.

use super::error::MemberErr;
use super::member_io::{cleanup_job, create_if_missing, delete_pods, ensure_namespace};
use super::reservations::taken_gpus;
use super::status::{apply_status, event, now, reconcile_finalized, set_condition};
use super::{Context, Error, Result};
use crate::api::{TrainingJob, TrainingJobStatus, TrainingPhase, WorkerPlacement, condition};
use crate::federation::labels;
use crate::placement::{JobRequest, candidates, place_gang};
use crate::workloads::{PodPlacement, training_objects};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Reconciles one TrainingJob.
pub async fn reconcile(job: Arc<TrainingJob>, ctx: Arc<Context>) -> Result<Action> {
    reconcile_finalized(&ctx, "trainingjob", job, |ev| async {
        match ev {
            Finalizer::Apply(job) => apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup_job(&*job, &ctx).await,
        }
    })
    .await
}

/// Retries a failed reconcile with a delay.
pub fn error_policy(job: Arc<TrainingJob>, err: &Error, _ctx: Arc<Context>) -> Action {
    tracing::warn!(job = %job.name_any(), error = %err, "trainingjob reconcile failed");
    Action::requeue(Duration::from_secs(3))
}

fn request(job: &TrainingJob) -> JobRequest {
    JobRequest {
        gpus_per_pod: job.spec.gpus_per_worker.max(1) as usize,
        nvlink: job.spec.nvlink,
        gpu: job.spec.gpu.clone(),
        cluster_selector: job.spec.cluster_selector.clone(),
    }
}

fn placements(st: &TrainingJobStatus, model: &str) -> Vec<PodPlacement> {
    st.workers
        .iter()
        .map(|w| PodPlacement {
            index: w.rank,
            node: w.node.clone(),
            gpu_uuids: w.gpu_uuids.clone(),
            model: model.into(),
            score: w.score,
        })
        .collect()
}

async fn apply(job: &TrainingJob, ctx: &Context) -> Result<Action> {
    let mut st = job.status.clone().unwrap_or_default();
    if matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed) {
        return Ok(Action::await_change());
    }
    // Not placed yet (or being restarted): place the gang; `Some` means it did not fit.
    if (st.cluster.is_none() || st.workers.is_empty())
        && let Some(action) = schedule(job, &mut st, ctx).await?
    {
        return Ok(action);
    }
    run_placed(job, st, ctx).await
}

/// Places the gang. `Ok(None)`: placed and recorded in `st`; `Ok(Some(action))`: not placed.
async fn schedule(
    job: &TrainingJob,
    st: &mut TrainingJobStatus,
    ctx: &Context,
) -> Result<Option<Action>> {
    let uid = job.uid().unwrap_or_default();
    let generation = job.metadata.generation;
    let t0 = Instant::now();
    let guard = ctx.placement_lock.lock().await;
    let taken = taken_gpus(ctx, &uid).await?;
    let members = ctx.registry.snapshot().await;
    let (cands, mut member_reasons) = candidates(&members, &taken);
    let indexes: Vec<i32> = (0..job.spec.workers).collect();
    match place_gang(&cands, &request(job), &indexes) {
        Ok(choice) => {
            st.cluster = Some(choice.cluster.clone());
            st.workers = choice
                .pods
                .iter()
                .map(|p| WorkerPlacement {
                    rank: p.index,
                    node: p.node.clone(),
                    gpu_uuids: p.gpu_uuids.clone(),
                    score: p.score,
                    pod_phase: None,
                })
                .collect();
            st.phase = TrainingPhase::Scheduled;
            st.message = Some(format!(
                "placed on {} (score {})",
                choice.cluster, choice.score
            ));
            set_condition(
                &mut st.conditions,
                condition::SCHEDULED,
                true,
                "Placed",
                st.message.as_deref().unwrap_or(""),
                generation,
            );
            st.observed_generation = generation;
            // The record of the assignment is durable before the lock is released.
            apply_status(
                &Api::<TrainingJob>::namespaced(
                    ctx.hub.clone(),
                    &job.namespace().unwrap_or_default(),
                ),
                job,
                &*st,
            )
            .await?;
            drop(guard);
            ctx.metrics.observe_placement("trainingjob", t0.elapsed());
            let detail = choice
                .pods
                .iter()
                .map(|p| {
                    format!(
                        "rank {} → {} GPUs [{}] score {}",
                        p.index,
                        p.node,
                        p.gpu_uuids.join(","),
                        p.score
                    )
                })
                .collect::<Vec<_>>()
                .join("; ");
            event(
                ctx,
                job,
                false,
                "Scheduled",
                "Place",
                format!(
                    "gang of {} placed on member {}: {detail}",
                    indexes.len(),
                    choice.cluster
                ),
            )
            .await;
            Ok(None)
        }
        Err(u) => {
            drop(guard);
            let mut reasons = u.reasons;
            reasons.append(&mut member_reasons);
            let msg = if reasons.is_empty() {
                "no member clusters registered".to_string()
            } else {
                reasons.join("; ")
            };
            let changed = !st.conditions.iter().any(|c| {
                c.type_ == condition::SCHEDULED && c.status == "False" && c.message == msg
            });
            if st.phase != TrainingPhase::Restarting {
                st.phase = TrainingPhase::Pending;
            }
            st.message = Some(format!("unschedulable: {msg}"));
            set_condition(
                &mut st.conditions,
                condition::SCHEDULED,
                false,
                "Unschedulable",
                &msg,
                generation,
            );
            st.observed_generation = generation;
            if changed {
                apply_status(
                    &Api::<TrainingJob>::namespaced(
                        ctx.hub.clone(),
                        &job.namespace().unwrap_or_default(),
                    ),
                    job,
                    &*st,
                )
                .await?;
                event(
                    ctx,
                    job,
                    true,
                    "Unschedulable",
                    "Place",
                    format!("no member fits the gang: {msg}"),
                )
                .await;
            }
            ctx.metrics
                .set_pending("trainingjob", &job.name_any(), true);
            Ok(Some(Action::requeue(ctx.config.pending_retry)))
        }
    }
}

async fn run_placed(job: &TrainingJob, mut st: TrainingJobStatus, ctx: &Context) -> Result<Action> {
    ctx.metrics
        .set_pending("trainingjob", &job.name_any(), false);
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let api: Api<TrainingJob> = Api::namespaced(ctx.hub.clone(), &ns);
    let cluster = st.cluster.clone().unwrap_or_default();
    let member = match ctx.member_health(&cluster).await {
        super::MemberHealth::Ready(m) => m,
        super::MemberHealth::Pending => return Ok(Action::requeue(ctx.config.heartbeat)),
        super::MemberHealth::Lost => {
            return restart_gang(
                job,
                st,
                ctx,
                "MemberLost",
                format!("member {cluster} is not ready"),
            )
            .await;
        }
    };
    let Some(client) = member.client.clone().filter(|_| member.reachable) else {
        // Within the grace period: wait for the member to answer again.
        return Ok(Action::requeue(ctx.config.heartbeat));
    };
    let generation = st.restarts;
    let model = job.spec.gpu.model.clone().unwrap_or_default();
    let model = member
        .inventory
        .nodes
        .get(
            &st.workers
                .first()
                .map(|w| w.node.clone())
                .unwrap_or_default(),
        )
        .and_then(|n| n.topology.as_ref())
        .and_then(|t| t.gpus.first().map(|g| g.model.clone()))
        .unwrap_or(model);

    // Create what is missing (idempotent).
    ensure_namespace(&client, &cluster, &ns).await?;
    let objects = training_objects(
        job,
        generation,
        &placements(&st, &model),
        member.binding_mode(),
    );
    for svc in &objects.services {
        create_if_missing(&client, &cluster, svc).await?;
    }
    let mut created = 0;
    for mp in &objects.pods {
        let pod = &mp.pod;
        if !member
            .inventory
            .pods
            .iter()
            .any(|p| p.metadata.name == pod.metadata.name && p.namespace() == pod.namespace())
            && crate::federation::dra::create_member_pod(&client, mp)
                .await
                .member(&cluster)?
        {
            created += 1;
        }
    }
    if created > 0 {
        tracing::info!(job = %job.name_any(), cluster, created, "created worker pods");
    }

    // Observe this generation's pods.
    let mine: Vec<&Pod> = member
        .inventory
        .pods
        .iter()
        .filter(|p| {
            let l = p.metadata.labels.as_ref();
            l.and_then(|l| l.get(labels::JOB_UID)) == Some(&uid)
                && l.and_then(|l| l.get(labels::GENERATION))
                    .and_then(|g| g.parse::<i32>().ok())
                    == Some(generation)
        })
        .collect();
    let phase_of = |rank: i32| -> Option<String> {
        mine.iter()
            .find(|p| {
                p.metadata
                    .labels
                    .as_ref()
                    .and_then(|l| l.get(labels::INDEX))
                    .and_then(|i| i.parse::<i32>().ok())
                    == Some(rank)
            })
            .and_then(|p| p.status.as_ref()?.phase.clone())
    };
    for w in st.workers.iter_mut() {
        w.pod_phase = phase_of(w.rank);
    }
    let n = st.workers.len();
    let failed = st
        .workers
        .iter()
        .find(|w| w.pod_phase.as_deref() == Some("Failed"))
        .map(|w| w.rank);
    let succeeded = st
        .workers
        .iter()
        .filter(|w| w.pod_phase.as_deref() == Some("Succeeded"))
        .count();
    let running = st
        .workers
        .iter()
        .filter(|w| matches!(w.pod_phase.as_deref(), Some("Running") | Some("Succeeded")))
        .count();
    let generation_meta = job.metadata.generation;

    if let Some(rank) = failed {
        delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
        return restart_gang(
            job,
            st,
            ctx,
            "WorkerFailed",
            format!("worker rank {rank} failed on member {cluster}"),
        )
        .await;
    }
    if let (Some(max), Some(start)) = (job.spec.max_runtime_seconds, st.start_time.as_ref()) {
        let ran = k8s_openapi::jiff::Timestamp::now()
            .duration_since(start.0)
            .as_secs();
        if ran > max && succeeded < n {
            delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
            st.phase = TrainingPhase::Failed;
            st.completion_time = Some(now());
            st.message = Some(format!("ran {ran}s, over maxRuntimeSeconds {max}"));
            set_condition(
                &mut st.conditions,
                condition::FAILED,
                true,
                "DeadlineExceeded",
                st.message.as_deref().unwrap_or(""),
                generation_meta,
            );
            apply_status(&api, job, &st).await?;
            event(
                ctx,
                job,
                true,
                "Failed",
                "Run",
                st.message.clone().unwrap_or_default(),
            )
            .await;
            return Ok(Action::await_change());
        }
    }
    let before = job.status.clone().unwrap_or_default();
    if n > 0 && succeeded == n {
        st.phase = TrainingPhase::Succeeded;
        st.completion_time = Some(now());
        st.message = Some(format!("all {n} workers succeeded on {cluster}"));
        set_condition(
            &mut st.conditions,
            condition::RUNNING,
            false,
            "Completed",
            "workers finished",
            generation_meta,
        );
        set_condition(
            &mut st.conditions,
            condition::COMPLETE,
            true,
            "AllWorkersSucceeded",
            st.message.as_deref().unwrap_or(""),
            generation_meta,
        );
    } else if n > 0 && running == n {
        if st.phase != TrainingPhase::Running {
            st.start_time = st.start_time.or_else(|| Some(now()));
        }
        st.phase = TrainingPhase::Running;
        st.message = Some(format!("{n} workers running on {cluster}"));
        set_condition(
            &mut st.conditions,
            condition::RUNNING,
            true,
            "AllWorkersRunning",
            st.message.as_deref().unwrap_or(""),
            generation_meta,
        );
    } else {
        st.phase = TrainingPhase::Scheduled;
    }
    st.observed_generation = generation_meta;
    if before != st {
        apply_status(&api, job, &st).await?;
        if st.phase != before.phase {
            match st.phase {
                TrainingPhase::Succeeded => {
                    event(
                        ctx,
                        job,
                        false,
                        "Succeeded",
                        "Run",
                        st.message.clone().unwrap_or_default(),
                    )
                    .await
                }
                TrainingPhase::Running => {
                    event(
                        ctx,
                        job,
                        false,
                        "Running",
                        "Run",
                        st.message.clone().unwrap_or_default(),
                    )
                    .await
                }
                _ => {}
            }
        }
    }
    if st.phase == TrainingPhase::Succeeded {
        ctx.wake_all_jobs(); // GPUs freed
        return Ok(Action::await_change());
    }
    Ok(Action::requeue(ctx.config.resync))
}

/// Restarts the whole gang (re-placed from scratch), or fails the job at the backoff limit.
async fn restart_gang(
    job: &TrainingJob,
    mut st: TrainingJobStatus,
    ctx: &Context,
    reason: &str,
    why: String,
) -> Result<Action> {
    let api: Api<TrainingJob> =
        Api::namespaced(ctx.hub.clone(), &job.namespace().unwrap_or_default());
    let generation = job.metadata.generation;
    if st.restarts >= job.spec.backoff_limit {
        st.phase = TrainingPhase::Failed;
        st.completion_time = Some(now());
        st.message = Some(format!(
            "{why}; backoffLimit {} reached after {} restarts",
            job.spec.backoff_limit, st.restarts
        ));
        set_condition(
            &mut st.conditions,
            condition::FAILED,
            true,
            "BackoffLimitExceeded",
            st.message.as_deref().unwrap_or(""),
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::RUNNING,
            false,
            reason,
            &why,
            generation,
        );
        apply_status(&api, job, &st).await?;
        event(
            ctx,
            job,
            true,
            "Failed",
            "Restart",
            st.message.clone().unwrap_or_default(),
        )
        .await;
        ctx.wake_all_jobs();
        return Ok(Action::await_change());
    }
    let from = st.cluster.take().unwrap_or_default();
    st.restarts += 1;
    st.workers.clear();
    st.phase = TrainingPhase::Restarting;
    st.start_time = None;
    st.message = Some(format!(
        "{why}; restarting the gang ({}/{})",
        st.restarts, job.spec.backoff_limit
    ));
    set_condition(
        &mut st.conditions,
        condition::SCHEDULED,
        false,
        reason,
        &why,
        generation,
    );
    set_condition(
        &mut st.conditions,
        condition::RUNNING,
        false,
        reason,
        &why,
        generation,
    );
    apply_status(&api, job, &st).await?;
    if reason == "MemberLost" {
        event(
            ctx,
            job,
            true,
            "MemberLost",
            "Restart",
            format!("{why}: the gang on {from} is lost"),
        )
        .await;
    }
    event(
        ctx,
        job,
        true,
        "Rescheduled",
        "Restart",
        st.message.clone().unwrap_or_default(),
    )
    .await;
    ctx.metrics.inc_restart("trainingjob");
    ctx.wake_all_jobs();
    Ok(Action::requeue(Duration::from_millis(200)))
}
