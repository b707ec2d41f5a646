//! TrainingJob controller: worker pods of a placed gang, gang restarts, roll-up from the member's
//! pod watch. Placement itself is the scheduler's.

use super::member_io::{cleanup_job, create_objects, delete_pods, ensure_namespace};
use super::status::{RESYNC, STALE_RETRY, apply_status, event, now, reconcile_finalized};
use super::{Context, Error, Lane, Result};
use crate::api::{TrainingJob, TrainingJobStatus, TrainingPhase, condition};
use crate::federation::labels;
use crate::meta::set_condition;
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
    let lane = lane(&job, &ctx).await;
    let newest = ctx.scheduler.training_store();
    reconcile_finalized(&ctx, ("trainingjob", lane), (job, newest), |ev| async {
        match ev {
            Finalizer::Apply(job) => apply(&job, &ctx).await,
            Finalizer::Cleanup(job) => cleanup_job(&*job, &ctx).await,
        }
    })
    .await
}

/// [`Lane::Place`] for a placed gang (still `Scheduled`, not being deleted) of which the member's
/// pod watch shows no pod of the current generation yet; [`Lane::Other`] otherwise.
async fn lane(job: &TrainingJob, ctx: &Context) -> Lane {
    let Some(st) = job.status.as_ref() else {
        return Lane::Other;
    };
    let Some(cluster) = st.cluster.as_deref() else {
        return Lane::Other;
    };
    if st.workers.is_empty()
        || st.phase != TrainingPhase::Scheduled
        || job.metadata.deletion_timestamp.is_some()
    {
        return Lane::Other;
    }
    let uid = job.uid().unwrap_or_default();
    let started = ctx.registry.watch(cluster).await.is_some_and(|w| {
        w.pods_of(&uid)
            .iter()
            .any(|p| pod_generation(p) == Some(st.restarts))
    });
    if started { Lane::Other } else { Lane::Place }
}

/// Retries a failed reconcile with a delay.
pub fn error_policy(job: Arc<TrainingJob>, err: &Error, _ctx: Arc<Context>) -> Action {
    if err.is_conflict() {
        // A newer version exists (often the scheduler's placement): look at it right away.
        return Action::requeue(Duration::from_millis(50));
    }
    if err.is_gone() {
        return Action::await_change();
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
    // A view older than a status this operator wrote (e.g. its own `restarts + 1`): acting on it
    // would bring back what that write replaced. The watch delivers the newer version.
    if ctx.scheduler.stale_view(
        &job.uid().unwrap_or_default(),
        job.resource_version().as_deref(),
    ) {
        return Ok(Action::requeue(STALE_RETRY));
    }
    // Pods of an earlier gang generation still in a member (a preempted gang's: the scheduler
    // recorded the preemption, the pods are this controller's to withdraw).
    withdraw_old_generations(job, &st, ctx).await?;
    // Not placed yet (or being restarted): the scheduler places the gang and writes the status.
    if st.cluster.is_none() || st.workers.is_empty() {
        return Ok(Action::await_change());
    }
    run_placed(job, st, ctx).await
}

/// Deletes, with their termination grace period, the job's pods of generations before
/// `status.restarts` on the members of its current and last placement (only where the member's
/// pod watch still shows one: nothing is asked of a member otherwise). Their end is what frees
/// their GPUs for the job that preempted them, and stops their metering.
async fn withdraw_old_generations(
    job: &TrainingJob,
    st: &TrainingJobStatus,
    ctx: &Context,
) -> Result<()> {
    if st.restarts == 0 {
        return Ok(());
    }
    let uid = job.uid().unwrap_or_default();
    let ns = job.namespace().unwrap_or_default();
    let mut clusters: Vec<&str> = st.cluster.iter().map(String::as_str).collect();
    if let Some(p) = st.past_placements.last() {
        clusters.push(&p.cluster);
    }
    clusters.dedup();
    let generation = st.restarts;
    let old = |p: &Pod| pod_generation(p).is_some_and(|g| g < generation);
    for cluster in clusters {
        let Some(m) = ctx.registry.get(cluster).await else {
            continue;
        };
        let (Some(client), Some(watch)) = (
            m.client.clone().filter(|_| m.reachable),
            m.watch.clone().filter(|w| w.synced()),
        ) else {
            continue;
        };
        let left = watch
            .pods_of(&uid)
            .iter()
            .any(|p| old(p) && p.metadata.deletion_timestamp.is_none());
        if left {
            let n = delete_pods(&client, cluster, &ns, &uid, old).await?;
            tracing::info!(job = %job.name_any(), cluster, withdrawn = n, "withdrew the pods of an earlier gang generation");
        }
    }
    Ok(())
}

/// The gang's generation of a member pod (its `gpupool.io/generation` label).
fn pod_generation(p: &Pod) -> Option<i32> {
    p.labels().get(labels::GENERATION)?.parse().ok()
}

/// Counts of a gang's workers by their pods' phases.
#[derive(Debug, Default, PartialEq)]
struct Workers {
    /// Workers.
    n: usize,
    /// Rank of a failed worker.
    failed: Option<i32>,
    /// Succeeded.
    succeeded: usize,
    /// Running or succeeded.
    started: usize,
}

/// Records in `st` the phase of each worker's pod of generation `generation` among `pods`.
fn observe_workers(st: &mut TrainingJobStatus, pods: &[&Pod], generation: i32) -> Workers {
    let phase_of = |rank: i32| -> Option<String> {
        pods.iter()
            .filter(|p| pod_generation(p) == Some(generation))
            .find(|p| p.labels().get(labels::INDEX).and_then(|i| i.parse().ok()) == Some(rank))
            .and_then(|p| p.status.as_ref()?.phase.clone())
    };
    for w in st.workers.iter_mut() {
        w.pod_phase = phase_of(w.rank);
    }
    let phase = |w: &&crate::api::WorkerPlacement, p: &[&str]| {
        w.pod_phase.as_deref().is_some_and(|x| p.contains(&x))
    };
    st.running_workers = st.workers.iter().filter(|w| phase(w, &["Running"])).count() as i32;
    Workers {
        n: st.workers.len(),
        failed: st
            .workers
            .iter()
            .find(|w| phase(w, &["Failed"]))
            .map(|w| w.rank),
        succeeded: st
            .workers
            .iter()
            .filter(|w| phase(w, &["Succeeded"]))
            .count(),
        started: st
            .workers
            .iter()
            .filter(|w| phase(w, &["Running", "Succeeded"]))
            .count(),
    }
}

/// Whether worker pods of generation `generation` may be created beside `pods` (the job's pods
/// in the member): not when a pod of a later generation exists there — the view of the job is
/// older than a restart already written and acted on.
fn may_create(pods: &[&Pod], generation: i32) -> bool {
    pods.iter()
        .all(|p| pod_generation(p).is_none_or(|g| g <= generation))
}

/// Creates the worker pods of the recorded placement (generation `status.restarts`) that are
/// missing in the member. The job's controller is the only creator of member objects: the
/// scheduler only records the placement, which wakes this reconcile.
async fn create_missing(
    job: &TrainingJob,
    st: &TrainingJobStatus,
    ctx: &Context,
    member: &crate::federation::MemberView,
    pods: &[&Pod],
) -> Result<()> {
    let generation = st.restarts;
    let missing = st.workers.iter().any(|w| {
        let name = crate::workloads::training_pod_name(job, generation, w.rank);
        !pods
            .iter()
            .any(|p| p.metadata.name.as_deref() == Some(name.as_str()))
    });
    if !missing || !may_create(pods, generation) {
        return Ok(());
    }
    let (Some(client), cluster) = (member.client.clone(), member.name.as_str()) else {
        return Ok(());
    };
    let ns = job.namespace().unwrap_or_default();
    // The store keeps a running gang without its pod template (see `elide_template`): a worker
    // pod to create again needs the whole object.
    let full;
    let job = if template_elided(job) {
        let api: Api<TrainingJob> = Api::namespaced(ctx.hub.clone(), &ns);
        full = api.get(&job.name_any()).await?;
        &full
    } else {
        job
    };
    let mut want = training_objects(
        job,
        generation,
        &placements(st, ctx, cluster),
        member.binding_mode(),
    );
    want.pods.retain(|w| {
        !pods
            .iter()
            .any(|p| p.metadata.name == w.pod.metadata.name && p.namespace() == w.pod.namespace())
    });
    if want.pods.is_empty() {
        return Ok(());
    }
    ensure_namespace(ctx, &client, cluster, &ns).await?;
    let created = create_objects(ctx, &client, cluster, &want).await?;
    if created > 0 {
        tracing::info!(job = %job.name_any(), cluster, created, "created worker pods");
    }
    Ok(())
}

/// The member a placed gang runs on, ready; otherwise what to do instead (wait for its first
/// heartbeat, or restart the gang elsewhere).
async fn ready_member(
    job: &TrainingJob,
    st: &TrainingJobStatus,
    ctx: &Context,
) -> Result<std::result::Result<crate::federation::MemberView, Action>> {
    let cluster = st.cluster.clone().unwrap_or_default();
    let (reason, why) = match ctx.member_health(&cluster).await {
        super::MemberHealth::Ready(m) if m.spec.drain => {
            // An admin's eviction, like a preemption: not the job's failure.
            let mut st = st.clone();
            st.preemptions += 1;
            let why = format!("member {cluster} is being drained");
            return restart_gang(job, st, ctx, "MemberDrained", why)
                .await
                .map(Err);
        }
        super::MemberHealth::Ready(m) => return Ok(Ok(*m)),
        super::MemberHealth::Pending => return Ok(Err(Action::requeue(ctx.config.heartbeat))),
        super::MemberHealth::Lost => ("MemberLost", format!("member {cluster} is not ready")),
        super::MemberHealth::Removed => (
            "Deregistered",
            format!("member {cluster} was removed from the pool"),
        ),
    };
    restart_gang(job, st.clone(), ctx, reason, why)
        .await
        .map(Err)
}

async fn run_placed(job: &TrainingJob, mut st: TrainingJobStatus, ctx: &Context) -> Result<Action> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    let cluster = st.cluster.clone().unwrap_or_default();
    let member = match ready_member(job, &st, ctx).await? {
        Ok(m) => m,
        Err(next) => return Ok(next),
    };
    let (Some(client), Some(watch)) = (
        member.client.clone().filter(|_| member.reachable),
        member.watch.clone().filter(|w| w.synced()),
    ) else {
        // Within the grace period, or the member's pods are not listed yet: look again soon.
        return Ok(Action::requeue(ctx.config.heartbeat));
    };
    let all = watch.pods_of(&uid);
    let pods: Vec<&Pod> = all.iter().map(|p| &**p).collect();
    create_missing(job, &st, ctx, &member, &pods).await?;
    let generation = st.restarts;
    let workers = observe_workers(&mut st, &pods, generation);
    let mine: Vec<&Pod> = pods
        .iter()
        .copied()
        .filter(|p| pod_generation(p) == Some(generation))
        .collect();

    // Workers the member's scheduler has refused (or never looked at) for too long: the gang
    // cannot start there. Blamed on the GPUs or the member, the whole gang is withdrawn and
    // placed again; blamed on the pod's own constraints, the job fails (no placement helps).
    let (refused, refusal_wait) = super::member_refusals(&cluster, &uid, &mine, ctx);
    if let Some(r) = refused.first() {
        delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
        let why = format!(
            "the scheduler of member {cluster} refused worker pod {} on node {} for over {}s: {}",
            r.pod,
            r.node,
            ctx.config.member_refusal.as_secs(),
            r.message
        );
        if !r.withdraw() {
            return fail(job, st, ctx, "PodUnschedulable", why).await;
        }
        return restart_gang(job, st, ctx, "MemberSchedulerRefused", why).await;
    }
    if let Some(rank) = workers.failed {
        delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
        let why = format!("worker rank {rank} failed on member {cluster}");
        return restart_gang(job, st, ctx, "WorkerFailed", why).await;
    }
    let deadline = match runtime_left(job, &st, &workers) {
        Ok(left) => left,
        Err(why) => {
            delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
            st.running_workers = 0;
            return fail(job, st, ctx, "DeadlineExceeded", why).await;
        }
    };
    let budget_wait =
        match super::budget::check(ctx, &uid, &mut st.conditions, job.metadata.generation) {
            super::budget::Verdict::Funded => None,
            super::budget::Verdict::Grace { left, event: note } => {
                if let Some(note) = note {
                    event(ctx, job, true, "BudgetExhausted", "Run", note);
                }
                Some(left)
            }
            super::budget::Verdict::Stop(why) => {
                delete_pods(&client, &cluster, &ns, &uid, |_| true).await?;
                return fail(job, st, ctx, "BudgetExhausted", why).await;
            }
        };
    let phase = roll_up(job, &mut st, &workers, &cluster);
    write_roll_up(job, &st, ctx).await?;
    if phase == TrainingPhase::Succeeded {
        return Ok(Action::await_change());
    }
    // Pod changes and member readiness wake the job; a runtime limit and a refusal that has not
    // lasted long enough yet need a timer, and every running job is looked at again after
    // [`RESYNC`] whatever happens (a missed wake-up never leaves it stale for longer).
    let next = [refusal_wait, deadline, budget_wait]
        .into_iter()
        .flatten()
        .min()
        .unwrap_or(RESYNC);
    Ok(Action::requeue(next.min(RESYNC)))
}

/// Time left under `maxRuntimeSeconds` (a second past it, so the next look finds it over), or
/// why the gang ran too long.
fn runtime_left(
    job: &TrainingJob,
    st: &TrainingJobStatus,
    workers: &Workers,
) -> std::result::Result<Option<Duration>, String> {
    let (Some(max), Some(start)) = (job.spec.max_runtime_seconds, st.start_time.as_ref()) else {
        return Ok(None);
    };
    let ran = k8s_openapi::jiff::Timestamp::now()
        .duration_since(start.0)
        .as_secs();
    if ran > max && workers.succeeded < workers.n {
        return Err(format!("ran {ran}s, over maxRuntimeSeconds {max}"));
    }
    Ok(Some(Duration::from_secs((max - ran).max(0) as u64 + 1)))
}

/// The gang's phase from its workers' pods (Succeeded, Running or still Scheduled), with its
/// conditions and message.
fn roll_up(
    job: &TrainingJob,
    st: &mut TrainingJobStatus,
    w: &Workers,
    cluster: &str,
) -> TrainingPhase {
    let generation = job.metadata.generation;
    let n = w.n;
    if n > 0 && w.succeeded == n {
        st.phase = TrainingPhase::Succeeded;
        st.completion_time = Some(now());
        let msg = format!("all {n} workers succeeded on {cluster}");
        set_condition(
            &mut st.conditions,
            condition::RUNNING,
            false,
            "Completed",
            "workers finished",
            generation,
        );
        set_condition(
            &mut st.conditions,
            condition::COMPLETE,
            true,
            "AllWorkersSucceeded",
            &msg,
            generation,
        );
        st.message = Some(msg);
    } else if n > 0 && w.started == n {
        if st.phase != TrainingPhase::Running {
            st.start_time = st.start_time.clone().or_else(|| Some(now()));
        }
        st.phase = TrainingPhase::Running;
        let msg = format!("{n} workers running on {cluster}");
        set_condition(
            &mut st.conditions,
            condition::RUNNING,
            true,
            "AllWorkersRunning",
            &msg,
            generation,
        );
        st.message = Some(msg);
    } else {
        st.phase = TrainingPhase::Scheduled;
    }
    st.observed_generation = generation;
    st.phase
}

/// Whether the rolled-up status `after` tells more than `before`, the status on the hub. A worker
/// pod that was just created (`Pending`) is no news: the placement already says the gang is
/// scheduled, and a write per created pod would add a hub status write to every job's start (the
/// phase is written with the next change: `Running`, a failure, a restart).
fn news(before: &TrainingJobStatus, after: &TrainingJobStatus) -> bool {
    let quiet = |s: &TrainingJobStatus| {
        let mut s = s.clone();
        for w in &mut s.workers {
            if w.pod_phase.as_deref() == Some("Pending") {
                w.pod_phase = None;
            }
        }
        s
    };
    before != after && quiet(before) != quiet(after)
}

/// Writes the rolled-up status if it changed, with an Event when the gang started or finished.
async fn write_roll_up(job: &TrainingJob, st: &TrainingJobStatus, ctx: &Context) -> Result<()> {
    let before = job.status.clone().unwrap_or_default();
    if !news(&before, st) {
        return Ok(());
    }
    let api: Api<TrainingJob> =
        Api::namespaced(ctx.hub.clone(), &job.namespace().unwrap_or_default());
    apply_status(ctx, &api, job, st).await?;
    if st.phase == before.phase {
        return Ok(());
    }
    let reason = match st.phase {
        TrainingPhase::Succeeded => "Succeeded",
        TrainingPhase::Running => "Running",
        _ => return Ok(()),
    };
    let note = st.message.clone().unwrap_or_default();
    event(ctx, job, false, reason, "Run", note);
    Ok(())
}

/// Fails the job for good (its pods already deleted): `reason` and `why` in its status, an Event.
async fn fail(
    job: &TrainingJob,
    mut st: TrainingJobStatus,
    ctx: &Context,
    reason: &str,
    why: String,
) -> Result<Action> {
    let api: Api<TrainingJob> =
        Api::namespaced(ctx.hub.clone(), &job.namespace().unwrap_or_default());
    st.running_workers = 0;
    st.phase = TrainingPhase::Failed;
    st.completion_time = Some(now());
    set_condition(
        &mut st.conditions,
        condition::FAILED,
        true,
        reason,
        &why,
        job.metadata.generation,
    );
    st.message = Some(why.clone());
    apply_status(ctx, &api, job, &st).await?;
    event(ctx, job, true, "Failed", "Run", why);
    Ok(Action::await_change())
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
    if st.restarts - st.preemptions >= job.spec.backoff_limit {
        set_condition(
            &mut st.conditions,
            condition::RUNNING,
            false,
            reason,
            &why,
            generation,
        );
        let why = format!(
            "{why}; backoffLimit {} reached after {} restarts",
            job.spec.backoff_limit, st.restarts
        );
        return fail(job, st, ctx, "BackoffLimitExceeded", why).await;
    }
    let from = st.cluster.clone().unwrap_or_default();
    // The replaced placement stays on record, so its pods' usage until now is still paid.
    st.retire_placement(now());
    st.restarts += 1;
    st.phase = TrainingPhase::Restarting;
    st.start_time = None;
    st.message = Some(format!(
        "{why}; restarting the gang ({}/{})",
        st.restarts - st.preemptions,
        job.spec.backoff_limit
    ));
    for c in [condition::SCHEDULED, condition::RUNNING] {
        set_condition(&mut st.conditions, c, false, reason, &why, generation);
    }
    // Conditional on the version read: from here on that version is stale (see `apply`), so no
    // reconcile brings back the pods of the generation replaced.
    apply_status(ctx, &api, job, &st).await?;
    if matches!(
        reason,
        "MemberLost" | "Deregistered" | "MemberSchedulerRefused" | "MemberDrained"
    ) {
        let note = match reason {
            "MemberSchedulerRefused" => format!("{why}; the gang on {from} is withdrawn"),
            "MemberDrained" => format!("{why}: the gang on {from} is moved elsewhere"),
            _ => format!("{why}: the gang on {from} is lost"),
        };
        event(ctx, job, true, reason, "Restart", note);
    }
    let note = st.message.clone().unwrap_or_default();
    event(ctx, job, true, "Rescheduled", "Restart", note);
    ctx.metrics.inc_restart("trainingjob");
    Ok(Action::requeue(Duration::from_millis(200)))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(generation: i32, rank: i32, phase: &str) -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": format!("j-g{generation}-w{rank}"), "namespace": "ml",
                "labels": {labels::GENERATION: generation.to_string(),
                           labels::INDEX: rank.to_string()}},
            "status": {"phase": phase},
        }))
        .unwrap()
    }

    fn status(restarts: i32, ranks: i32) -> TrainingJobStatus {
        TrainingJobStatus {
            cluster: Some("m".into()),
            restarts,
            workers: (0..ranks)
                .map(|rank| crate::api::WorkerPlacement {
                    rank,
                    node: "n1".into(),
                    ..Default::default()
                })
                .collect(),
            ..Default::default()
        }
    }

    #[test]
    fn no_pods_are_created_beside_a_later_generation() {
        let later = [pod(2, 0, "Running")];
        let refs: Vec<&Pod> = later.iter().collect();
        // The view says generation 1: generation 2 exists in the member, so the view is stale.
        assert!(!may_create(&refs, 1));
        assert!(may_create(&refs, 2));
        assert!(may_create(&refs, 3));
        assert!(may_create(&[], 0));
    }

    #[test]
    fn workers_are_observed_on_their_own_generation_only() {
        let pods = [
            pod(0, 0, "Failed"),
            pod(1, 0, "Running"),
            pod(1, 1, "Succeeded"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut st = status(1, 2);
        let w = observe_workers(&mut st, &refs, 1);
        assert_eq!(
            w,
            Workers {
                n: 2,
                failed: None,
                succeeded: 1,
                started: 2
            }
        );
        assert_eq!(st.running_workers, 1);
        // Generation 0's failed pod counts for generation 0 only.
        let mut st = status(0, 2);
        let w = observe_workers(&mut st, &refs, 0);
        assert_eq!(w.failed, Some(0));
        assert_eq!(st.workers[1].pod_phase, None);
    }

    #[test]
    fn created_pods_alone_are_not_written() {
        let placed = status(0, 2);
        let pods = [pod(0, 0, "Pending"), pod(0, 1, "Pending")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut st = placed.clone();
        observe_workers(&mut st, &refs, 0);
        assert_ne!(st, placed, "the roll-up records the Pending pods");
        assert!(!news(&placed, &st), "but they are no reason to write");
        // One worker running is news, and so is a worker leaving Running.
        let pods = [pod(0, 0, "Running"), pod(0, 1, "Pending")];
        let refs: Vec<&Pod> = pods.iter().collect();
        let mut running = placed.clone();
        observe_workers(&mut running, &refs, 0);
        assert!(news(&placed, &running));
        assert!(news(&running, &st));
        assert!(!news(&running, &running));
    }
}
