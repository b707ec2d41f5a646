//! What the scheduler reads from hub jobs (the GPUs they hold, whether they wait, what they need)
//! and the decisions it takes for them. Pure: a decision is a function of the job and the cache.

use super::cache::{JobName, PoolCache, Slot, Snapshot};
use super::queue::Need;
use crate::api::{
    ClusterPlacement, ClusterSelector, GpuSelector, InferenceJob, InferenceJobStatus,
    InferencePhase, NodeGpus, NvLinkMode, TrainingJob, TrainingJobStatus, TrainingPhase,
    WorkerPlacement, condition,
};
use crate::meta::{FINALIZER, set_condition};
use crate::placement::{JobRequest, place_gang, place_replicas};
use crate::workloads::PodPlacement;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// A job waiting in the queue.
#[derive(Clone, Debug)]
pub enum Pending {
    /// A training gang.
    Training(Arc<TrainingJob>),
    /// Inference replicas.
    Inference(Arc<InferenceJob>),
}

impl Pending {
    /// Kind, namespace and name.
    pub fn name(&self) -> JobName {
        match self {
            Pending::Training(j) => training_name(j),
            Pending::Inference(j) => inference_name(j),
        }
    }

    /// `resourceVersion` the decision is based on.
    pub fn resource_version(&self) -> Option<String> {
        match self {
            Pending::Training(j) => j.resource_version(),
            Pending::Inference(j) => j.resource_version(),
        }
    }
}

/// What a job asks of the queue's order: `spec.priority` and `spec.priorityClassName`, read the
/// same way for every kind (see [`super::queue::PriorityClasses::of`]).
pub trait PriorityRequest {
    /// `(spec.priority, spec.priorityClassName)`.
    fn priority_request(&self) -> (i32, Option<&str>);
}

impl PriorityRequest for TrainingJob {
    fn priority_request(&self) -> (i32, Option<&str>) {
        (self.spec.priority, self.spec.priority_class_name.as_deref())
    }
}

impl PriorityRequest for InferenceJob {
    fn priority_request(&self) -> (i32, Option<&str>) {
        (self.spec.priority, self.spec.priority_class_name.as_deref())
    }
}

impl PriorityRequest for Pending {
    fn priority_request(&self) -> (i32, Option<&str>) {
        match self {
            Pending::Training(j) => j.priority_request(),
            Pending::Inference(j) => j.priority_request(),
        }
    }
}

/// Kind/namespace/name of a TrainingJob.
pub fn training_name(j: &TrainingJob) -> JobName {
    JobName {
        kind: "TrainingJob",
        namespace: j.namespace().unwrap_or_default(),
        name: j.name_any(),
    }
}

/// Kind/namespace/name of an InferenceJob.
pub fn inference_name(j: &InferenceJob) -> JobName {
    JobName {
        kind: "InferenceJob",
        namespace: j.namespace().unwrap_or_default(),
        name: j.name_any(),
    }
}

/// Queue order key of a job: (priority, creation time in seconds, generation).
pub fn order_of<K: kube::Resource>(j: &K, priority: i32) -> (i64, i64, i64) {
    let created = j
        .meta()
        .creation_timestamp
        .as_ref()
        .map(|t| t.0.as_second())
        .unwrap_or(i64::MAX);
    (
        i64::from(priority),
        created,
        j.meta().generation.unwrap_or(0),
    )
}

/// What preemption weighs of a placed gang: its priority and when it started (or was placed;
/// 0 when neither is recorded).
pub fn running_of(j: &TrainingJob, priority: i64) -> super::victims::Running {
    let st = j.status.as_ref();
    let started = st
        .and_then(|s| s.start_time.as_ref().or(s.placed_at.as_ref()))
        .map_or(0, |t| t.0.as_second());
    super::victims::Running { priority, started }
}

fn ready_to_schedule<K: kube::Resource>(j: &K) -> bool {
    j.meta().deletion_timestamp.is_none() && j.finalizers().iter().any(|f| f == FINALIZER)
}

/// GPUs a TrainingJob's status holds (none once it finished).
pub fn training_slots(j: &TrainingJob) -> BTreeSet<Slot> {
    let Some(st) = &j.status else {
        return BTreeSet::new();
    };
    if matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed) {
        return BTreeSet::new();
    }
    let Some(cluster) = &st.cluster else {
        return BTreeSet::new();
    };
    PoolCache::slots(
        cluster,
        st.workers
            .iter()
            .map(|w| (w.node.as_str(), w.gpu_uuids.as_slice())),
    )
}

/// GPUs an InferenceJob's status holds.
pub fn inference_slots(j: &InferenceJob) -> BTreeSet<Slot> {
    let Some(st) = &j.status else {
        return BTreeSet::new();
    };
    st.placements
        .iter()
        .flat_map(|p| {
            PoolCache::slots(
                &p.cluster,
                p.gpus
                    .iter()
                    .map(|g| (g.node.as_str(), g.gpu_uuids.as_slice())),
            )
        })
        .collect()
}

/// Whether the gang waits for a placement.
pub fn training_waits(j: &TrainingJob) -> bool {
    let st = j.status.clone().unwrap_or_default();
    ready_to_schedule(j)
        && !matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed)
        && (st.cluster.is_none() || st.workers.is_empty())
}

/// The rollout step an InferenceJob's status allows now (see [`crate::rollout::plan`]).
pub fn inference_plan(j: &InferenceJob) -> crate::rollout::Plan {
    let want = j.spec.replicas.max(0);
    let replicas: Vec<crate::rollout::Replica> = j
        .status
        .iter()
        .flat_map(|s| flatten(s).into_iter().map(|p| p.replica()))
        .collect();
    let (surge, unavailable) = crate::rollout::budgets(j.spec.rollout.as_ref(), want);
    crate::rollout::plan(
        want,
        &crate::rollout::revision(&j.spec),
        &replicas,
        surge,
        unavailable,
    )
}

/// Replica indexes of an InferenceJob to place now with the spec's current revision: those
/// without any replica, and surge replacements of old-revision replicas within `maxSurge`.
pub fn inference_missing(j: &InferenceJob) -> Vec<i32> {
    inference_plan(j).place
}

/// Whether some replicas wait for a placement.
pub fn inference_waits(j: &InferenceJob) -> bool {
    ready_to_schedule(j) && !inference_missing(j).is_empty()
}

/// What one worker/replica asks for, from the fields both job kinds share.
fn request(
    gpus_per_pod: i32,
    nvlink: NvLinkMode,
    gpu: &GpuSelector,
    cluster_selector: &ClusterSelector,
) -> JobRequest {
    JobRequest {
        gpus_per_pod: gpus_per_pod.max(1) as usize,
        nvlink,
        gpu: gpu.clone(),
        cluster_selector: cluster_selector.clone(),
    }
}

fn training_request(j: &TrainingJob) -> JobRequest {
    let s = &j.spec;
    request(s.gpus_per_worker, s.nvlink, &s.gpu, &s.cluster_selector)
}

fn inference_request(j: &InferenceJob) -> JobRequest {
    let s = &j.spec;
    request(s.gpus_per_replica, s.nvlink, &s.gpu, &s.cluster_selector)
}

/// What a waiting job needs from a node (see [`Need`]).
pub fn need_of_job(job: &Pending) -> Need {
    match job {
        Pending::Training(j) => need_of(&training_request(j)),
        Pending::Inference(j) => need_of(&inference_request(j)),
    }
}

fn need_of(r: &JobRequest) -> Need {
    Need {
        gpus_per_pod: r.gpus_per_pod,
        model: r.gpu.model.clone(),
        min_memory_mib: r.gpu.min_memory_mib,
        nvlink: r.nvlink,
        min_link_gbps: r.gpu.min_link_gbps.unwrap_or(0),
    }
}

/// A new status for a job and what goes with it.
#[derive(Clone, Debug)]
pub enum Decision {
    /// The gang is placed on `cluster`.
    Training {
        /// Status to write (the record of the assignment).
        status: TrainingJobStatus,
        /// GPUs now held.
        slots: BTreeSet<Slot>,
        /// Member.
        cluster: String,
        /// Worker placements (with GPU model).
        pods: Vec<PodPlacement>,
        /// Event text.
        note: String,
    },
    /// Replicas placed (maybe not all).
    Inference {
        /// Status to write.
        status: InferenceJobStatus,
        /// GPUs newly held.
        slots: BTreeSet<Slot>,
        /// New replicas (member, placement with GPU model).
        new: Vec<(String, PodPlacement)>,
        /// Event text.
        note: String,
        /// Why the remaining replicas are unplaced (then the job also parks).
        unplaced: Option<(String, Need)>,
    },
    /// Nothing fits now.
    Wait {
        /// Why, per member.
        reason: String,
        /// What would let it progress.
        need: Need,
    },
}

fn with_models(cache: &Snapshot, cluster: &str, pods: &mut [PodPlacement]) {
    for p in pods {
        if let Some(m) = cache.model_of(cluster, &p.node) {
            p.model = m;
        }
    }
}

fn describe(reasons: Vec<String>) -> String {
    if reasons.is_empty() {
        "no member clusters registered".to_string()
    } else {
        reasons.join("; ")
    }
}

/// Places a gang with the pure placement functions over the cache.
pub fn decide_training(cache: &Snapshot, j: &TrainingJob) -> Decision {
    decide_training_as(cache, j, None)
}

/// [`decide_training`] on GPUs whose model contains `model` (when set: a quota class the job's
/// queue has room for).
pub fn decide_training_as(cache: &Snapshot, j: &TrainingJob, model: Option<&str>) -> Decision {
    let mut req = training_request(j);
    if let Some(m) = model {
        req.gpu.model = Some(m.to_string());
    }
    let indexes: Vec<i32> = (0..j.spec.workers.max(1)).collect();
    let (cands, mut member_reasons) = cache.candidates(&req, indexes.len());
    match place_gang(&cands, &req, &indexes) {
        Ok(mut choice) => {
            with_models(cache, &choice.cluster, &mut choice.pods);
            let generation = j.metadata.generation;
            let mut st = j.status.clone().unwrap_or_default();
            st.cluster = Some(choice.cluster.clone());
            st.placed_at = Some(Time(k8s_openapi::jiff::Timestamp::now()));
            st.workers = choice
                .pods
                .iter()
                .map(|p| WorkerPlacement {
                    rank: p.index,
                    node: p.node.clone(),
                    gpu_uuids: p.gpu_uuids.clone(),
                    gpu_indexes: cache.gpu_indexes(&choice.cluster, &p.node, &p.gpu_uuids),
                    score: p.score,
                    pod_phase: None,
                })
                .collect();
            st.phase = TrainingPhase::Scheduled;
            st.message = Some(format!(
                "placed on {} (score {})",
                choice.cluster, choice.score
            ));
            st.queue_position = None;
            st.pending_reason = None;
            set_condition(
                &mut st.conditions,
                condition::SCHEDULED,
                true,
                "Placed",
                st.message.as_deref().unwrap_or(""),
                generation,
            );
            if st
                .conditions
                .iter()
                .any(|c| c.type_ == condition::PREEMPTED && c.status == "True")
            {
                let msg = st.message.clone().unwrap_or_default();
                let c = condition::PREEMPTED;
                set_condition(&mut st.conditions, c, false, "Placed", &msg, generation);
            }
            st.observed_generation = generation;
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
            let slots = PoolCache::slots(
                &choice.cluster,
                choice
                    .pods
                    .iter()
                    .map(|p| (p.node.as_str(), p.gpu_uuids.as_slice())),
            );
            Decision::Training {
                status: st,
                slots,
                note: format!(
                    "gang of {} placed on member {}: {detail}",
                    indexes.len(),
                    choice.cluster
                ),
                cluster: choice.cluster,
                pods: choice.pods,
            }
        }
        Err(u) => {
            let mut reasons = u.reasons;
            reasons.append(&mut member_reasons);
            Decision::Wait {
                reason: describe(reasons),
                need: need_of(&req),
            }
        }
    }
}

/// The status a waiting gang shows.
pub fn training_waiting_status(
    j: &TrainingJob,
    reason: &str,
    position: usize,
) -> TrainingJobStatus {
    let generation = j.metadata.generation;
    let mut st = j.status.clone().unwrap_or_default();
    if st.phase != TrainingPhase::Restarting {
        st.phase = TrainingPhase::Pending;
    }
    st.message = Some(format!("unschedulable: {reason}"));
    st.queue_position = Some(position as i32);
    st.pending_reason = Some(reason.to_string());
    set_condition(
        &mut st.conditions,
        condition::SCHEDULED,
        false,
        "Unschedulable",
        reason,
        generation,
    );
    st.observed_generation = generation;
    st
}

/// The status of a gang preempted at `now`: its placement retired (the meter pays its pods
/// until they end, at most their termination grace period `grace_s` past `now`), a new gang
/// generation that does not count against `backoffLimit`, back to `Pending` in its queue (in
/// its original order: the queue orders by creation), `Preempted=True` with `reason` and `why`.
pub fn training_preempted_status(
    j: &TrainingJob,
    reason: &str,
    why: &str,
    now: Time,
    grace_s: i64,
) -> TrainingJobStatus {
    let generation = j.metadata.generation;
    let mut st = j.status.clone().unwrap_or_default();
    let until = k8s_openapi::jiff::Timestamp::from_second(now.0.as_second() + grace_s.max(0))
        .map(Time)
        .unwrap_or(now);
    st.retire_placement(until);
    st.restarts += 1;
    st.preemptions += 1;
    st.phase = TrainingPhase::Pending;
    st.start_time = None;
    st.running_workers = 0;
    st.message = Some(why.to_string());
    for c in [condition::SCHEDULED, condition::RUNNING] {
        set_condition(&mut st.conditions, c, false, "Preempted", why, generation);
    }
    set_condition(
        &mut st.conditions,
        condition::PREEMPTED,
        true,
        reason,
        why,
        generation,
    );
    st
}

/// One placed replica of an InferenceJob, as its status records it.
#[derive(Clone, Debug, PartialEq)]
pub struct Placed {
    /// Member cluster.
    pub cluster: String,
    /// Node, GPUs and index (the GPU model is not recorded in the status).
    pub pod: PodPlacement,
    /// Revision of the rolled spec fields it runs.
    pub revision: String,
    /// Whether its pod is Ready.
    pub ready: bool,
    /// When the hub placed it (its own clock; the meter pays from then on).
    pub placed_at: Option<Time>,
}

impl Placed {
    /// The replica as the rollout plan sees it.
    pub fn replica(&self) -> crate::rollout::Replica {
        crate::rollout::Replica {
            index: self.pod.index,
            revision: self.revision.clone(),
            ready: self.ready,
        }
    }
}

/// Every replica in an InferenceJob's status.
pub fn flatten(st: &InferenceJobStatus) -> Vec<Placed> {
    st.placements
        .iter()
        .flat_map(|cp| {
            cp.replicas.iter().zip(&cp.gpus).map(|(r, g)| Placed {
                cluster: cp.cluster.clone(),
                pod: PodPlacement {
                    index: *r,
                    node: g.node.clone(),
                    gpu_uuids: g.gpu_uuids.clone(),
                    model: String::new(),
                    score: g.score,
                },
                revision: g.revision.clone(),
                ready: g.ready,
                placed_at: g.placed_at.clone(),
            })
        })
        .collect()
}

/// Groups replica placements per member, ordered by index then revision.
pub fn group(flat: &[Placed]) -> Vec<ClusterPlacement> {
    let mut by: BTreeMap<String, ClusterPlacement> = BTreeMap::new();
    let mut sorted = flat.to_vec();
    sorted.sort_by(|a, b| {
        (&a.cluster, a.pod.index, &a.revision).cmp(&(&b.cluster, b.pod.index, &b.revision))
    });
    for p in sorted {
        let e = by
            .entry(p.cluster.clone())
            .or_insert_with(|| ClusterPlacement {
                cluster: p.cluster.clone(),
                ..Default::default()
            });
        e.replicas.push(p.pod.index);
        e.ready_replicas += i32::from(p.ready);
        e.gpus.push(NodeGpus {
            node: p.pod.node,
            gpu_uuids: p.pod.gpu_uuids,
            gpu_indexes: Vec::new(),
            score: p.pod.score,
            revision: p.revision,
            ready: p.ready,
            placed_at: p.placed_at,
        });
    }
    by.into_values().collect()
}

/// Writes each replica's GPU indexes beside its UUIDs (what `where` shows from the hub alone).
fn record_gpu_indexes(cache: &Snapshot, placements: &mut [ClusterPlacement]) {
    for cp in placements {
        for g in &mut cp.gpus {
            g.gpu_indexes = cache.gpu_indexes(&cp.cluster, &g.node, &g.gpu_uuids);
        }
    }
}

/// What a decision's Event and condition say about its new replicas.
fn replica_detail(new: &[(String, PodPlacement)]) -> String {
    new.iter()
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
        .join("; ")
}

/// Places the missing replicas of an InferenceJob.
pub fn decide_inference(cache: &Snapshot, j: &InferenceJob) -> Decision {
    decide_inference_as(cache, j, None, usize::MAX)
}

/// The member a single-cluster job's new replicas must go to: where its replicas are — unless
/// that member is drained: then the first replacement chooses the member the others follow.
fn pinned_member(
    cache: &Snapshot,
    policy: &crate::api::ReplicaPlacement,
    kept: &[Placed],
) -> Option<String> {
    if policy.multi_cluster() {
        return None;
    }
    kept.iter()
        .find(|p| !cache.draining(&p.cluster))
        .map(|p| p.cluster.clone())
}

/// [`decide_inference`] on GPUs whose model contains `model` (when set), at most `cap` new
/// replicas (what the job's queue has room for).
pub fn decide_inference_as(
    cache: &Snapshot,
    j: &InferenceJob,
    model: Option<&str>,
    cap: usize,
) -> Decision {
    let mut req = inference_request(j);
    if let Some(m) = model {
        req.gpu.model = Some(m.to_string());
    }
    let before = j.status.clone().unwrap_or_default();
    let kept = flatten(&before);
    let mut missing = inference_missing(j);
    missing.truncate(cap.max(1));
    let (cands, member_reasons) = cache.candidates(&req, missing.len());
    let policy = j.spec.effective_placement();
    let pinned = pinned_member(cache, &policy, &kept);
    let mut existing: BTreeMap<String, usize> = BTreeMap::new();
    for p in &kept {
        *existing.entry(p.cluster.clone()).or_default() += 1;
    }
    let (mut new, mut reasons) = place_replicas(
        &cands,
        &req,
        &missing,
        &policy,
        pinned.as_deref(),
        &existing,
    );
    if new.len() < missing.len() {
        reasons.extend(member_reasons);
    }
    if new.is_empty() {
        return Decision::Wait {
            reason: describe(reasons),
            need: need_of(&req),
        };
    }
    for (c, p) in new.iter_mut() {
        if let Some(m) = cache.model_of(c, &p.node) {
            p.model = m;
        }
    }
    let generation = j.metadata.generation;
    let detail = replica_detail(&new);
    let mut st = before.clone();
    let revision = crate::rollout::revision(&j.spec);
    let mut all = kept;
    let placed_at = Time(k8s_openapi::jiff::Timestamp::now());
    all.extend(new.iter().map(|(c, p)| Placed {
        cluster: c.clone(),
        pod: p.clone(),
        revision: revision.clone(),
        ready: false,
        placed_at: Some(placed_at.clone()),
    }));
    st.placements = group(&all);
    record_gpu_indexes(cache, &mut st.placements);
    let clusters: Vec<String> = st.placements.iter().map(|p| p.cluster.clone()).collect();
    st.clusters = (!clusters.is_empty()).then(|| clusters.join(","));
    if st.phase == InferencePhase::Pending {
        st.phase = InferencePhase::Scheduled;
    }
    let unplaced = (new.len() < missing.len()).then(|| (describe(reasons), need_of(&req)));
    set_condition(
        &mut st.conditions,
        condition::SCHEDULED,
        unplaced.is_none(),
        if unplaced.is_none() {
            "Placed"
        } else {
            "PartiallyPlaced"
        },
        &detail,
        generation,
    );
    if unplaced.is_none() {
        st.queue_position = None;
        st.pending_reason = None;
    }
    // `observedGeneration` is the controller's: it moves once the generation is realized.
    let slots = new
        .iter()
        .flat_map(|(c, p)| PoolCache::slots(c, [(p.node.as_str(), p.gpu_uuids.as_slice())]))
        .collect();
    Decision::Inference {
        status: st,
        slots,
        new,
        note: detail,
        unplaced,
    }
}

/// The status an InferenceJob with unplaced replicas shows.
pub fn inference_waiting_status(
    j: &InferenceJob,
    reason: &str,
    position: usize,
) -> InferenceJobStatus {
    let generation = j.metadata.generation;
    let mut st = j.status.clone().unwrap_or_default();
    st.queue_position = Some(position as i32);
    st.pending_reason = Some(reason.to_string());
    set_condition(
        &mut st.conditions,
        condition::SCHEDULED,
        false,
        "Unschedulable",
        reason,
        generation,
    );
    st
}
