//! TrainingJob controller: worker pods of a placed gang, gang restarts, roll-up from the member's
//! pod watch. Placement itself is the scheduler's.

use super::member_io::{cleanup_job, create_objects, delete_pods, ensure_namespace};
use super::status::{apply_status, event, now, reconcile_finalized, set_condition};
use super::{Context, Error, Result};
use crate::api::{TrainingJob, TrainingJobStatus, TrainingPhase, condition};
use crate::federation::labels;
use crate::workloads::{PodPlacement, training_objects};
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::Api;
use kube::runtime::controller::Action;
use kube::runtime::finalizer::Event as Finalizer;
use std::sync::Arc;
use std::time::Duration;

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
    if err.is_conflict() {
        // A newer version exists (often the scheduler's placement): look at it right away.
        return Action::requeue(Duration::from_millis(50));
    }
    tracing::warn!(job = %job.name_any(), error = %err, "trainingjob reconcile failed");
    Action::requeue(Duration::from_secs(3))
}

/// In-memory annotation on a stored TrainingJob whose pod template was dropped.
const TEMPLATE_ELIDED: &str = "gpupool.io/template-elided";

/// Drops the pod template of a TrainingJob whose gang runs or has ended before it enters the
/// operator's store (the watch's `modify` step): nothing reads it then, and with one `Container`
/// alone over 2 KiB in memory it is most of what a stored job weighs. The template is immutable
/// (admission rejects a change), so the rare reader that needs it again — a worker pod of a
/// running gang gone from its member — reads the job from the API server. A gang that restarts
/// or waits is stored whole again at its next status change, which the watch delivers complete.
pub fn elide_template(j: &mut TrainingJob) {
    let settled = j.status.as_ref().is_some_and(|s| {
        matches!(
            s.phase,
            TrainingPhase::Running | TrainingPhase::Succeeded | TrainingPhase::Failed
        )
    });
    if settled {
        j.spec.template = Default::default();
        j.metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(TEMPLATE_ELIDED.into(), "true".into());
    }
}

fn template_elided(j: &TrainingJob) -> bool {
    j.annotations().contains_key(TEMPLATE_ELIDED)
}

fn placements(st: &TrainingJobStatus, ctx: &Context, cluster: &str) -> Vec<PodPlacement> {
    ctx.scheduler.with_cache(|c| {
        st.workers
            .iter()
            .map(|w| PodPlacement {
                index: w.rank,
                node: w.node.clone(),
                gpu_uuids: w.gpu_uuids.clone(),
                model: c.model_of(cluster, &w.node).unwrap_or_default(),
                score: w.score,
            })
            .collect()
    })
}

async fn apply(job: &TrainingJob, ctx: &Context) -> Result<Action> {
    let st = job.status.clone().unwrap_or_default();
    if matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed) {
        return Ok(Action::await_change());
    }
    // Not placed yet (or being restarted): the scheduler places the gang and writes the status.
    if st.cluster.is_none() || st.workers.is_empty() {
        return Ok(Action::await_change());
    }
    run_placed(job, st, ctx).await
}

async fn run_placed(job: &TrainingJob, mut st: TrainingJobStatus, ctx: &Context) -> Result<Action> {
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
        super::MemberHealth::Removed => {
            return restart_gang(
                job,
                st,
                ctx,
                "Deregistered",
                format!("member {cluster} was removed from the pool"),
            )
            .await;
        }
    };
    let (Some(client), Some(watch)) = (
        member.client.clone().filter(|_| member.reachable),
        member.watch.clone().filter(|w| w.synced()),
    ) else {
        // Within the grace period, or the member's pods are not listed yet: look again soon.
        return Ok(Action::requeue(ctx.config.heartbeat));
    };
    let generation = st.restarts;
    let pods = watch.pods_of(&uid);

    // Create what is missing (idempotent), unless the scheduler is creating it right now.
    let missing = st.workers.iter().any(|w| {
        let name = crate::workloads::training_pod_name(job, generation, w.rank);
        !pods
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(name.as_str()))
    });
    if missing && !ctx.scheduler.in_flight(&uid) {
        // The store keeps a running gang without its pod template (see `elide_template`): a
        // worker pod to create again needs the whole object.
        let full;
        let job = if template_elided(job) {
            full = api.get(&job.name_any()).await?;
            &full
        } else {
            job
        };
        let mut want = training_objects(
            job,
            generation,
            &placements(&st, ctx, &cluster),
            member.binding_mode(),
        );
        want.pods.retain(|w| {
            !pods.iter().any(|p| {
                p.metadata.name == w.pod.metadata.name && p.namespace() == w.pod.namespace()
            })
        });
        if !want.pods.is_empty() {
            ensure_namespace(&client, &cluster, &ns).await?;
            let created = create_objects(ctx, &client, &cluster, &want).await?;
            if created > 0 {
                tracing::info!(job = %job.name_any(), cluster, created, "created worker pods");
            }
        }
    }

    // Observe this generation's pods.
    let mine: Vec<&Pod> = pods
        .iter()
        .map(|p| &**p)
        .filter(|p| {
            p.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(labels::GENERATION))
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
    st.running_workers = st
        .workers
        .iter()
        .filter(|w| w.pod_phase.as_deref() == Some("Running"))
        .count() as i32;
    let generation_meta = job.metadata.generation;

    // Workers the member's scheduler has refused for too long (e.g. a claim for GPUs something
    // else took): the gang cannot start there. Their GPUs stay out of placement for a while, the
    // whole gang is withdrawn and placed again.
    let (refused, refusal_wait) = super::member_refusals(&cluster, &mine, ctx);
    if let Some((pod, node, message)) = refused.first() {
        delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
        let why = format!(
            "the scheduler of member {cluster} refused worker pod {pod} on node {node} for over {}s: {message}",
            ctx.config.member_refusal.as_secs()
        );
        return restart_gang(job, st, ctx, "MemberSchedulerRefused", why).await;
    }
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
    let mut deadline = None;
    if let (Some(max), Some(start)) = (job.spec.max_runtime_seconds, st.start_time.as_ref()) {
        let ran = k8s_openapi::jiff::Timestamp::now()
            .duration_since(start.0)
            .as_secs();
        if ran > max && succeeded < n {
            delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
            st.running_workers = 0;
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
        deadline = Some(Duration::from_secs((max - ran).max(0) as u64 + 1));
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
        return Ok(Action::await_change());
    }
    // Pod changes and member readiness wake the job; only a runtime limit and a refusal that has
    // not lasted long enough yet need a timer.
    if let Some(d) = refusal_wait {
        return Ok(Action::requeue(deadline.map_or(d, |x| x.min(d))));
    }
    Ok(match (deadline, st.phase == TrainingPhase::Running) {
        (Some(d), true) => Action::requeue(d),
        (None, true) if job.spec.max_runtime_seconds.is_some() => {
            Action::requeue(ctx.config.heartbeat)
        }
        _ => Action::await_change(),
    })
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
    // The gang's pods are deleted (or out of reach): none of them counts as running any more.
    st.running_workers = 0;
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
        return Ok(Action::await_change());
    }
    let from = st.cluster.clone().unwrap_or_default();
    // The replaced placement stays on record, so its pods' usage until now is still paid.
    st.retire_placement(now());
    st.restarts += 1;
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
    if matches!(
        reason,
        "MemberLost" | "Deregistered" | "MemberSchedulerRefused"
    ) {
        event(
            ctx,
            job,
            true,
            reason,
            "Restart",
            if reason == "MemberSchedulerRefused" {
                format!("{why}; the gang on {from} is withdrawn")
            } else {
                format!("{why}: the gang on {from} is lost")
            },
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
    Ok(Action::requeue(Duration::from_millis(200)))
}
