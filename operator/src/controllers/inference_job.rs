//! InferenceJob controller: one Service per member, replicas of lost members and failed replicas
//! handed back to the scheduler (removed from the status), roll-up of readiness and endpoints.
//! Placement itself is the scheduler's.

use super::member_io::{cleanup_job, create_objects, delete_all, delete_pods, ensure_namespace};
use super::status::{RESYNC, STALE_RETRY, apply_status, event, reconcile_finalized};
use super::{Context, Error, Lane, Result};
use crate::api::{InferenceJob, InferenceJobStatus, InferencePhase, condition};
use crate::federation::MemberView;
use crate::meta::set_condition;
use crate::rollout::{Plan, Replica, budgets, plan, revision};
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
    let newest = ctx.scheduler.inference_store();
    reconcile_finalized(
        &ctx,
        ("inferencejob", Lane::Other),
        (job, newest),
        |ev| async {
            match ev {
                Finalizer::Apply(job) => apply(&job, &ctx).await,
                Finalizer::Cleanup(job) => cleanup_job(&*job, &ctx).await,
            }
        },
    )
    .await
}

/// Retries a failed reconcile with a delay.
pub fn error_policy(job: Arc<InferenceJob>, err: &Error, _ctx: Arc<Context>) -> Action {
    if err.is_conflict() {
        // A newer version exists (often the scheduler's placement): look at it right away.
        return Action::requeue(Duration::from_millis(50));
    }
    if err.is_gone() {
        return Action::await_change();
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

/// Whether a placed replica stays, given its pod's phase in the member (`None`: not in the
/// store) and whether the store is current (listed, not listing again after a broken watch).
#[derive(Debug, PartialEq, Eq)]
enum Verdict {
    /// Keep it (running, starting, or its pod to be created).
    Keep,
    /// Its pod failed: delete it and place the replica again.
    Failed,
    /// An old revision's pod is gone (deleted by hand or evicted): not re-created.
    Vanished,
}

fn verdict(revision: &str, phase: Option<&str>, store_current: bool, current: &str) -> Verdict {
    match phase {
        Some("Failed") => Verdict::Failed,
        // "Not in the store" is "gone" only while the store is current: during a relist it
        // lacks pods created since the watch broke, and such a pod may well run.
        None if revision != current && store_current => Verdict::Vanished,
        _ => Verdict::Keep,
    }
}

/// Each placed replica sorted by what becomes of it.
#[derive(Default)]
struct Sorted {
    kept: Vec<Placed>,
    /// Replica indexes per member that is not ready (or was removed).
    lost: BTreeMap<String, Vec<i32>>,
    failed: Vec<Placed>,
    scaled_down: Vec<Placed>,
    vanished: Vec<Placed>,
    /// Refused by the member's scheduler for the GPUs' or the member's sake: withdrawn.
    refused: Vec<Placed>,
    /// On a member being drained, let go now within `maxUnavailable`: deleted there and placed
    /// again elsewhere.
    drained: Vec<Placed>,
    /// Refused for the pod's own constraints: kept, the reason reported (index, message).
    unschedulable: Vec<(i32, String)>,
    /// When to look again at a refusal that has not lasted long enough yet.
    refusal_wait: Option<Duration>,
}

impl Sorted {
    fn wait(&mut self, d: Option<Duration>) {
        if let Some(d) = d {
            self.refusal_wait = Some(self.refusal_wait.map_or(d, |w| w.min(d)));
        }
    }
}

/// Sorts the replicas of the job's status: kept, lost with their member, failed, scaled down,
/// gone, refused by a member's scheduler.
async fn sort_replicas(
    job: &InferenceJob,
    ctx: &Context,
    members: &BTreeMap<String, MemberView>,
    current: &str,
) -> Sorted {
    let want = job.spec.replicas.max(0);
    let mut out = Sorted::default();
    for p in flatten(&job.status.clone().unwrap_or_default()) {
        let c = p.cluster.clone();
        if p.pod.index >= want {
            out.scaled_down.push(p);
            continue;
        }
        if !members.contains_key(&c)
            && matches!(ctx.member_health(&c).await, super::MemberHealth::Pending)
        {
            // Not heard from since this operator started: keep the replica, decide after a heartbeat.
            out.kept.push(p);
            continue;
        }
        match members.get(&c) {
            Some(m) if m.ready => sort_on_member(job, ctx, m, p, current, &mut out).await,
            _ => out.lost.entry(c).or_default().push(p.pod.index),
        }
    }
    let draining: BTreeSet<&str> = members
        .values()
        .filter(|m| m.spec.drain)
        .map(|m| m.name.as_str())
        .collect();
    // At least one at a time, so that a drain ends even where the rollout allows no replica
    // to be unavailable (replacements come after the replica leaves, not before it).
    let (_, max_unavailable) = budgets(job.spec.rollout.as_ref(), want);
    out.drained = pick_drained(&mut out.kept, &draining, want, max_unavailable.max(1));
    out
}

/// The replicas on drained members to let go now, taken out of `kept`: those not Ready, and
/// Ready ones whose index has another Ready replica elsewhere, at once; other Ready ones only as
/// long as `want - max_unavailable` indexes stay available — as `kubectl drain` honours a
/// PodDisruptionBudget. The scheduler places their indexes again on other members; the next
/// ones go once those are Ready. Pure.
fn pick_drained(
    kept: &mut Vec<Placed>,
    draining: &BTreeSet<&str>,
    want: i32,
    max_unavailable: i32,
) -> Vec<Placed> {
    let on_drained = |p: &Placed| draining.contains(p.cluster.as_str());
    let ready_elsewhere: BTreeSet<i32> = kept
        .iter()
        .filter(|p| p.ready && !on_drained(p))
        .map(|p| p.pod.index)
        .collect();
    let mut available = kept
        .iter()
        .filter(|p| p.ready && p.pod.index < want)
        .map(|p| p.pod.index)
        .collect::<BTreeSet<_>>()
        .len() as i32;
    let mut order: Vec<usize> = (0..kept.len()).filter(|&i| on_drained(&kept[i])).collect();
    // Those that cost no availability first, then by index.
    order.sort_by_key(|&i| {
        let p = &kept[i];
        (
            p.ready && !ready_elsewhere.contains(&p.pod.index),
            p.pod.index,
        )
    });
    let mut take = BTreeSet::new();
    for i in order {
        let p = &kept[i];
        let free = !p.ready || ready_elsewhere.contains(&p.pod.index);
        if !free {
            if available - 1 < want - max_unavailable {
                break;
            }
            available -= 1;
        }
        take.insert(i);
    }
    let mut drained = Vec::new();
    let mut i = 0;
    kept.retain(|p| {
        let go = take.contains(&i);
        i += 1;
        if go {
            drained.push(p.clone());
        }
        !go
    });
    drained
}

/// Sorts one replica on a ready member by its pod there.
async fn sort_on_member(
    job: &InferenceJob,
    ctx: &Context,
    m: &MemberView,
    mut p: Placed,
    current: &str,
    out: &mut Sorted,
) {
    let uid = job.uid().unwrap_or_default();
    let Some(pods) = pods_in(m, &uid).filter(|_| m.reachable) else {
        out.kept.push(p);
        return;
    };
    let store_current = m.watch.as_ref().is_some_and(|w| w.pods_current());
    let name = inference_pod_name(job, p.pod.index, &p.revision);
    let (phase, ready) = pod_state(&pods, &name, &p.pod.node);
    p.ready = ready;
    let this: Vec<&Pod> = pods
        .iter()
        .map(|q| &**q)
        .filter(|q| q.name_any() == name && pod_node(q) == Some(p.pod.node.as_str()))
        .collect();
    let (refused, wait) = super::member_refusals(&m.name, &uid, &this, ctx);
    out.wait(wait);
    if let Some(r) = refused.first() {
        if !r.withdraw() {
            // No placement helps a pod its own constraints keep off every node: the replica
            // stays (its GPUs are not to blame), the reason goes into the status.
            out.unschedulable.push((p.pod.index, r.message.clone()));
            out.kept.push(p);
            return;
        }
        let note = format!(
            "the scheduler of member {} refused replica {} (pod {}) on node {} for over {}s: {}; \
             re-placing it",
            m.name,
            p.pod.index,
            r.pod,
            p.pod.node,
            ctx.config.member_refusal.as_secs(),
            r.message
        );
        event(ctx, job, true, "MemberSchedulerRefused", "Replace", note);
        out.refused.push(p);
        return;
    }
    match verdict(&p.revision, phase.as_deref(), store_current, current) {
        Verdict::Failed => out.failed.push(p),
        Verdict::Vanished => out.vanished.push(p),
        Verdict::Keep => out.kept.push(p),
    }
}

/// Reports the replicas of lost members and deletes the pods of the replicas that leave the
/// placements (a vanished replica's pod too: its absence from the store is the store's word, and
/// a replica is never dropped while its pod may still run).
async fn withdraw(
    job: &InferenceJob,
    ctx: &Context,
    members: &BTreeMap<String, MemberView>,
    s: &Sorted,
) -> Result<()> {
    for (c, idx) in &s.lost {
        let (reason, why) = match ctx.member_health(c).await {
            super::MemberHealth::Removed => ("Deregistered", "was removed from the pool"),
            _ => ("MemberLost", "is not ready"),
        };
        let note = format!("member {c} {why}; replicas {idx:?} will be re-placed");
        event(ctx, job, true, reason, "Replace", note);
    }
    for p in s.scaled_down.iter().chain(&s.refused).chain(&s.vanished) {
        delete_replica(members, job, p).await?;
    }
    for p in &s.drained {
        delete_replica(members, job, p).await?;
        let note = format!(
            "member {} is being drained: replica {} on node {} deleted; placing it elsewhere",
            p.cluster, p.pod.index, p.pod.node
        );
        event(ctx, job, false, "ReplicaDrained", "Replace", note);
    }
    for p in &s.failed {
        delete_replica(members, job, p).await?;
        let note = format!(
            "replica {} on {}/{} failed; re-placing it",
            p.pod.index, p.cluster, p.pod.node
        );
        event(ctx, job, true, "ReplicaFailed", "Replace", note);
    }
    Ok(())
}

/// The rollout's step in this reconcile.
struct RolloutStep {
    /// Old revisions still placed (or found gone).
    rolling_from: BTreeSet<String>,
    /// Old replicas deleted now.
    retired: Vec<Placed>,
    /// Events to publish once the status recording the step is written (a retried reconcile
    /// does not report a step twice).
    events: Vec<(&'static str, String)>,
}

/// Rollout: a changed revision starts one; Ready replacements retire old replicas, and old
/// replicas go within maxUnavailable. Missing and surge replicas are placed by the scheduler,
/// which sees this status.
async fn rollout(
    job: &InferenceJob,
    ctx: &Context,
    members: &BTreeMap<String, MemberView>,
    st: &mut InferenceJobStatus,
    s: &mut Sorted,
    current: &str,
) -> Result<RolloutStep> {
    let want = job.spec.replicas.max(0);
    let (max_surge, max_unavailable) = budgets(job.spec.rollout.as_ref(), want);
    let mut out = RolloutStep {
        // (An old replica found gone counts: the pass that deleted it may have lost its write.)
        rolling_from: s
            .kept
            .iter()
            .chain(&s.vanished)
            .filter(|p| p.revision != current)
            .map(|p| p.revision.clone())
            .collect(),
        retired: Vec::new(),
        events: Vec::new(),
    };
    if st.revision.as_deref() != Some(current) {
        if !out.rolling_from.is_empty() {
            let from = out.rolling_from.iter().cloned().collect::<Vec<_>>();
            out.events.push((
                "RolloutStarted",
                format!(
                    "rolling {want} replicas from revision {} to {current} (maxSurge \
                     {max_surge}, maxUnavailable {max_unavailable})",
                    from.join(",")
                ),
            ));
        }
        st.revision = Some(current.to_string());
    }
    // An old replica whose pod is gone is out of the rollout too (reported after its start).
    for p in &s.vanished {
        out.events.push((
            "ReplicaReplaced",
            format!(
                "replica {} (revision {}) on {}/{} is gone; not re-created on its old revision",
                p.pod.index, p.revision, p.cluster, p.pod.node
            ),
        ));
    }
    let replicas: Vec<Replica> = s.kept.iter().map(Placed::replica).collect();
    let step = plan(want, current, &replicas, max_surge, max_unavailable);
    if ctx.scheduler.in_flight(&job.uid().unwrap_or_default()) {
        return Ok(out);
    }
    for (index, rev) in &step.delete {
        let Some(pos) = s
            .kept
            .iter()
            .position(|p| p.pod.index == *index && &p.revision == rev)
        else {
            continue;
        };
        if members
            .get(&s.kept[pos].cluster)
            .is_none_or(|m| !m.reachable)
        {
            continue;
        }
        delete_replica(members, job, &s.kept[pos]).await?;
        let p = s.kept.remove(pos);
        let another_old = s
            .kept
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
        out.events.push((
            "ReplicaReplaced",
            format!(
                "replica {index} (revision {rev}) on {}/{} deleted: {why}",
                p.cluster, p.pod.node
            ),
        ));
        out.retired.push(p);
    }
    Ok(out)
}

/// Creates in each member the pods of kept replicas of the current revision that are missing
/// there. The job's controller is the only creator of member objects: the scheduler only
/// records placements, which wake this reconcile.
async fn create_missing(
    job: &InferenceJob,
    ctx: &Context,
    members: &BTreeMap<String, MemberView>,
    kept: &[Placed],
    current: &str,
) -> Result<()> {
    let ns = job.namespace().unwrap_or_default();
    let uid = job.uid().unwrap_or_default();
    for p in kept.iter().filter(|p| p.revision == current) {
        let c = &p.cluster;
        let Some(m) = members.get(c) else { continue };
        let Some(client) = m.client.clone().filter(|_| m.reachable) else {
            continue;
        };
        let Some(pods) = pods_in(m, &uid) else {
            continue;
        };
        let name = inference_pod_name(job, p.pod.index, &p.revision);
        if pod_state(&pods, &name, &p.pod.node).0.is_some() {
            continue;
        }
        let mut pl = p.pod.clone();
        pl.model = ctx
            .scheduler
            .with_cache(|cache| cache.model_of(c, &p.pod.node))
            .unwrap_or_default();
        ensure_namespace(ctx, &client, c, &ns).await?;
        let objects = inference_objects(job, std::slice::from_ref(&pl), m.binding_mode());
        create_objects(ctx, &client, c, &objects).await?;
    }
    Ok(())
}

/// Deletes the job's Services (and any pod left) in reachable members that hold no replica.
async fn delete_elsewhere(
    job: &InferenceJob,
    ctx: &Context,
    members: &BTreeMap<String, MemberView>,
    kept: &[Placed],
) -> Result<()> {
    let uid = job.uid().unwrap_or_default();
    if ctx.scheduler.in_flight(&uid) {
        return Ok(());
    }
    let ns = job.namespace().unwrap_or_default();
    let holding: BTreeSet<&String> = kept.iter().map(|p| &p.cluster).collect();
    for (c, m) in members {
        if holding.contains(c) || !m.reachable {
            continue;
        }
        let has_any = pods_in(m, &uid).is_some_and(|p| !p.is_empty());
        if has_any && let Some(cl) = &m.client {
            delete_all(cl, c, &ns, &uid).await?;
        }
    }
    Ok(())
}

/// Rolls the kept replicas up into the status: placements, readiness, endpoints, phase and
/// conditions. Returns the rollout events this adds (completion).
fn roll_up(
    job: &InferenceJob,
    before: &InferenceJobStatus,
    st: &mut InferenceJobStatus,
    kept: &[Placed],
    rolling_from: &BTreeSet<String>,
    unschedulable: &[(i32, String)],
) -> Vec<(&'static str, String)> {
    let want = job.spec.replicas.max(0);
    let (max_surge, max_unavailable) = budgets(job.spec.rollout.as_ref(), want);
    let replicas: Vec<Replica> = kept.iter().map(Placed::replica).collect();
    let now = plan(
        want,
        &revision(&job.spec),
        &replicas,
        max_surge,
        max_unavailable,
    );
    roll_up_replicas(job, before, st, kept, &now);
    set_ready(job, st, now.available, unschedulable);
    set_progressing(job, before, st, &now, rolling_from)
}

/// Placements (with what left them retired), replica counts, endpoints, clusters and phase.
fn roll_up_replicas(
    job: &InferenceJob,
    before: &InferenceJobStatus,
    st: &mut InferenceJobStatus,
    kept: &[Placed],
    now: &Plan,
) {
    let want = job.spec.replicas.max(0);
    st.placements = group(kept);
    // What left the placements stays metered up to now (and no longer).
    st.retire_replicas(
        &before.placements,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        want,
    );
    st.ready_replicas = kept.iter().filter(|p| p.ready).count() as i32;
    st.updated_replicas = now.updated;
    let ns = crate::tenant::namespace_name(&job.namespace().unwrap_or_default());
    st.endpoints = kept
        .iter()
        .map(|p| &p.cluster)
        .collect::<BTreeSet<_>>()
        .into_iter()
        .map(|c| format!("{c}/{ns}/{}:{}", job.name_any(), job.spec.port))
        .collect();
    let clusters: Vec<String> = st.placements.iter().map(|p| p.cluster.clone()).collect();
    st.clusters = (!clusters.is_empty()).then(|| clusters.join(","));
    st.phase = phase(want, kept.len() as i32, now.available, &before.phase);
}

/// `Ready`: every wanted replica available, else how many are and why one cannot be placed.
fn set_ready(
    job: &InferenceJob,
    st: &mut InferenceJobStatus,
    available: i32,
    unschedulable: &[(i32, String)],
) {
    let want = job.spec.replicas.max(0);
    let (reason, msg) = match unschedulable.first() {
        Some((index, why)) if available < want => (
            "ReplicaUnschedulable",
            format!(
                "{available}/{want} replicas ready; replica {index} cannot be scheduled for its \
                 own constraints: {why}"
            ),
        ),
        _ if available == want => (
            "AllReplicasReady",
            format!("{available}/{want} replicas ready"),
        ),
        _ => (
            "ReplicasNotReady",
            format!("{available}/{want} replicas ready"),
        ),
    };
    set_condition(
        &mut st.conditions,
        condition::READY,
        available == want,
        reason,
        &msg,
        job.metadata.generation,
    );
}

/// `Progressing`: the rollout's state (and `observedGeneration` once it is realized); the
/// Event to report when a rollout just completed.
fn set_progressing(
    job: &InferenceJob,
    before: &InferenceJobStatus,
    st: &mut InferenceJobStatus,
    now: &Plan,
    rolling_from: &BTreeSet<String>,
) -> Vec<(&'static str, String)> {
    let want = job.spec.replicas.max(0);
    let current = revision(&job.spec);
    let generation = job.metadata.generation;
    let available = now.available;
    let was_rolling = before
        .conditions
        .iter()
        .any(|c| c.type_ == condition::PROGRESSING && c.reason == "RollingUpdate");
    let rolling = !rolling_from.is_empty() || (was_rolling && !now.complete);
    let mut events = Vec::new();
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
            events.push((
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
    events
}

/// The job's phase from its wanted, placed and available replicas.
fn phase(want: i32, placed: i32, available: i32, before: &InferencePhase) -> InferencePhase {
    let was_up = matches!(before, InferencePhase::Running | InferencePhase::Degraded);
    if want == 0 || (placed > 0 && available == want) {
        InferencePhase::Running
    } else if placed == 0 {
        InferencePhase::Pending
    } else if (available < want && was_up) || placed < want {
        InferencePhase::Degraded
    } else {
        InferencePhase::Scheduled
    }
}

async fn apply(job: &InferenceJob, ctx: &Context) -> Result<Action> {
    let uid = job.uid().unwrap_or_default();
    if ctx.scheduler.in_flight(&uid) {
        // The scheduler is writing a placement for this job: roll up the version it writes.
        return Ok(Action::requeue(Duration::from_millis(200)));
    }
    if ctx
        .scheduler
        .stale_view(&uid, job.resource_version().as_deref())
    {
        // Older than a status the operator wrote (a withdrawn replica, a placement): acting on
        // it would bring back what that write removed. The watch delivers the newer version.
        return Ok(Action::requeue(STALE_RETRY));
    }
    let before = job.status.clone().unwrap_or_default();
    let mut st = before.clone();
    let members = ctx.registry.snapshot().await;
    let current = revision(&job.spec);

    let mut sorted = sort_replicas(job, ctx, &members, &current).await;
    withdraw(job, ctx, &members, &sorted).await?;
    let step = rollout(job, ctx, &members, &mut st, &mut sorted, &current).await?;
    create_missing(job, ctx, &members, &sorted.kept, &current).await?;
    delete_elsewhere(job, ctx, &members, &sorted.kept).await?;
    let done = roll_up(
        job,
        &before,
        &mut st,
        &sorted.kept,
        &step.rolling_from,
        &sorted.unschedulable,
    );
    st.url = gateway_url(ctx.config.gateway_url.as_deref(), job);
    if st != before {
        let api: Api<InferenceJob> =
            Api::namespaced(ctx.hub.clone(), &job.namespace().unwrap_or_default());
        apply_status(ctx, &api, job, &st).await?;
    }
    for (reason, note) in step.events.into_iter().chain(done) {
        event(ctx, job, false, reason, "Rollout", note);
    }
    // Pod changes, member readiness and placements wake the job; a refusal by a member's
    // scheduler that has not lasted long enough yet needs a timer, and every job is looked at
    // again after [`RESYNC`] whatever happens.
    Ok(Action::requeue(
        sorted.refusal_wait.map_or(RESYNC, |d| d.min(RESYNC)),
    ))
}

/// The job's endpoint on the gateway at `base`: `<base>/<namespace>/<name>/`.
fn gateway_url(base: Option<&str>, job: &InferenceJob) -> Option<String> {
    let base = base?.trim_end_matches('/');
    Some(format!(
        "{base}/{}/{}/",
        job.namespace().unwrap_or_default(),
        job.name_any()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_gateway_url_names_the_job_under_the_gateway() {
        let mut job: InferenceJob = serde_json::from_value(serde_json::json!({
            "apiVersion": "gpupool.io/v1alpha1", "kind": "InferenceJob",
            "metadata": {"name": "web", "namespace": "team-a"},
            "spec": {"template": {"spec": {"containers": [{"name": "s", "image": "i"}]}},
                     "replicas": 1, "gpusPerReplica": 1},
        }))
        .unwrap();
        assert_eq!(gateway_url(None, &job), None);
        assert_eq!(
            gateway_url(Some("https://gw.example.com/"), &job).as_deref(),
            Some("https://gw.example.com/team-a/web/")
        );
        job.metadata.name = Some("chat".into());
        assert_eq!(
            gateway_url(Some("http://10.0.0.1:8443"), &job).as_deref(),
            Some("http://10.0.0.1:8443/team-a/chat/")
        );
    }

    #[test]
    fn an_old_replica_missing_from_a_relisting_store_is_kept() {
        // The store is current: an old revision's pod not in it is gone.
        assert_eq!(verdict("r1", None, true, "r2"), Verdict::Vanished);
        // The watch lists again (the store lacks pods created since it broke): unknown, kept.
        assert_eq!(verdict("r1", None, false, "r2"), Verdict::Keep);
        // The current revision's missing pod is created again, never dropped.
        assert_eq!(verdict("r2", None, true, "r2"), Verdict::Keep);
        assert_eq!(verdict("r1", Some("Failed"), false, "r2"), Verdict::Failed);
        assert_eq!(verdict("r1", Some("Running"), true, "r2"), Verdict::Keep);
    }

    #[test]
    fn the_phase_follows_placed_and_available_replicas() {
        use InferencePhase::*;
        assert_eq!(phase(0, 0, 0, &Pending), Running);
        assert_eq!(phase(2, 0, 0, &Running), Pending);
        assert_eq!(phase(2, 2, 2, &Scheduled), Running);
        assert_eq!(phase(2, 2, 1, &Running), Degraded);
        assert_eq!(phase(2, 1, 1, &Scheduled), Degraded);
        assert_eq!(phase(2, 2, 1, &Scheduled), Scheduled);
    }

    fn placed(cluster: &str, index: i32, ready: bool) -> Placed {
        Placed {
            cluster: cluster.into(),
            pod: crate::placement::PodPlacement {
                index,
                node: format!("{cluster}-n{index}"),
                gpu_uuids: vec![format!("GPU-{cluster}-{index}")],
                model: "H100".into(),
                score: 0,
            },
            revision: "r1".into(),
            ready,
            placed_at: None,
        }
    }

    fn at(ps: &[Placed]) -> Vec<(String, i32)> {
        ps.iter()
            .map(|p| (p.cluster.clone(), p.pod.index))
            .collect()
    }

    #[test]
    fn a_drain_lets_replicas_go_within_max_unavailable() {
        let draining: BTreeSet<&str> = ["east"].into();
        // Four replicas, three on east (Ready), one on west; maxUnavailable 1: one at a time.
        let mut kept = vec![
            placed("east", 0, true),
            placed("east", 1, true),
            placed("west", 2, true),
            placed("east", 3, true),
        ];
        let drained = pick_drained(&mut kept, &draining, 4, 1);
        assert_eq!(at(&drained), [("east".to_string(), 0)]);
        assert_eq!(kept.len(), 3);
        // Replica 0 is placed on west, not Ready yet: nothing more may go.
        kept.push(placed("west", 0, false));
        assert!(pick_drained(&mut kept, &draining, 4, 1).is_empty());
        // Ready: the next one goes.
        kept.last_mut().unwrap().ready = true;
        assert_eq!(
            at(&pick_drained(&mut kept, &draining, 4, 1)),
            [("east".to_string(), 1)]
        );
        // Not Ready replicas serve nothing and go at once, as does a Ready one whose index
        // serves elsewhere (a surge replacement of a rollout, say) — whatever the budget.
        let mut kept = vec![
            placed("east", 0, false),
            placed("east", 1, true),
            placed("west", 1, true),
            placed("east", 2, true),
        ];
        let drained = pick_drained(&mut kept, &draining, 3, 0);
        assert_eq!(
            at(&drained),
            [("east".to_string(), 0), ("east".to_string(), 1)]
        );
        assert_eq!(
            at(&kept),
            [("west".to_string(), 1), ("east".to_string(), 2)]
        );
        // Nothing drains on a member that is not drained.
        let mut kept = vec![placed("west", 0, true)];
        assert!(pick_drained(&mut kept, &draining, 1, 1).is_empty());
        assert_eq!(kept.len(), 1);
    }
}
