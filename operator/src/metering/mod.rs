//! Usage metering: GPU-seconds per (job uid, member cluster, settlement period).
//!
//! # Model
//!
//! A pod's **run** is `[start, end)` in whole unix seconds, as its member reports it:
//! * `start`: the later of the pod's `status.startTime` and the earliest container start
//!   (`running.startedAt`, `terminated.startedAt`, a restarted container's `lastState`); a pod
//!   still `Pending` with no container started has no run and costs nothing;
//! * `end`: when every container has terminated, the latest `terminated.finishedAt`; while any
//!   container still runs (or the pod is not finished), the end is open and "now" is used.
//!
//! # What is paid: only what the hub can prove
//!
//! Everything above comes from the member's API server, which its owner controls. The meter
//! pays (writes into `gpuSeconds`) only the part of a pod's run the hub can vouch for
//! ([`HubJob`], from the hub's own job objects):
//! * the pod's job uid is a job on the hub placed on this member;
//! * the pod matches a worker/replica placement of that job: same node, same GPU UUIDs;
//! * its GPU count is the placement's, its GPU class the hub's model of those GPUs;
//! * its start is no earlier than the job's creation (and its start on the hub), its end no
//!   later than the job's deletion, completion, or `maxRuntimeSeconds`, and never later than
//!   now (the meter's own observation);
//! * its end is no later than the instant the hub's own watch of the member first saw the pod
//!   end (terminal phase, or every container terminated under `restartPolicy: Never`), plus
//!   [`MeterConfig::observed_end_slack_seconds`] for clock skew between member and hub: a
//!   `finishedAt` the member rewrites later (or a status flipped back to running) is not paid.
//!   The watch keeps this in memory only; after an operator restart, a pod that had already
//!   ended is bounded by the first time the new watch lists it;
//! * a gang restarted on new GPUs keeps its older placements (`status.pastPlacements`, the
//!   last [`crate::api::MAX_PAST_PLACEMENTS`]): a pod of an earlier placement is paid for the
//!   time that placement was current, the current one only since the last restart;
//! * likewise an inference replica that left the placements (replaced in a rollout, moved off a
//!   lost member, withdrawn, failed or scaled away) is kept in its job's `status.pastPlacements`
//!   with the instant it left: its pod is paid up to then, so the run since the meter's last
//!   pass is not lost, and nothing past it is paid;
//! * per placement and period, at most its GPUs × the period length.
//!
//! What a pod claims beyond that is **unpaid** and surfaced: per pod (`unpaidReason`), per
//! record (`unpaidGpuSeconds`, a `kubectl get usagerecords` column), and as alerts the runner
//! turns into Events on the `MemberCluster` and a metric. A member owner who controls both the
//! kubelet and the API server can still fake a *running* workload inside a real placement;
//! hardware attestation is what would close that.
//!
//! **Settlement periods** are fixed windows of `period_seconds` aligned to the unix epoch: period
//! `p` is `[p * len, (p + 1) * len)`. A pod's GPU-seconds in period `p` are
//! `gpus * |run ∩ period p|`. Because the run's endpoints are facts stored in the member's API
//! server, recomputing a closed period after a restart gives the same number. The period length
//! must not change for a deployment: the ledger keys receipts by (cluster, job uid, period
//! number), so renumbering periods would pay overlapping windows twice.
//!
//! # GPU classes
//!
//! The ledger prices GPU-seconds per class (`rates[class]`, `class < 8`). The operator maps the
//! GPU model name (as NVML reports it, e.g. `NVIDIA H100 80GB HBM3`) to a class by substring,
//! case-insensitively, first match wins:
//!
//! | class | models                                   |
//! |-------|------------------------------------------|
//! | 0     | anything else (generic / unknown)        |
//! | 1     | H100, H200, H800, GH200, B100, B200, GB200 |
//! | 2     | A100, A800                               |
//! | 3     | V100                                     |
//! | 4     | L40S, L40                                |
//! | 5     | A10, A10G, L4, A30, A40                  |
//! | 6     | T4                                       |
//! | 7     | RTX / GeForce / Quadro (consumer and workstation cards) |

pub mod meter;
pub mod runner;
pub mod settle;

pub use meter::{MemberRef, MeterConfig, MeterReport, meter_once, record_name};
pub use settle::{SettleConfig, SettleReport, SweepReport, close_expired_receipts, settle_once};

use k8s_openapi::api::core::v1::Pod;
use std::collections::BTreeMap;

/// Default settlement period length: one hour.
pub const DEFAULT_PERIOD_SECONDS: u64 = 3600;

/// Label every pod gpupool creates in a member cluster carries (`= gpupool`).
pub const LABEL_MANAGED_BY: &str = "app.kubernetes.io/managed-by";
/// Value of [`LABEL_MANAGED_BY`].
pub const MANAGED_BY: &str = "gpupool";
/// `TrainingJob` or `InferenceJob`.
pub const LABEL_JOB_KIND: &str = "gpupool.io/job-kind";
/// Namespace of the job on the hub.
pub const LABEL_JOB_NAMESPACE: &str = "gpupool.io/job-namespace";
/// Name of the job on the hub.
pub const LABEL_JOB_NAME: &str = "gpupool.io/job-name";
/// `metadata.uid` of the job on the hub.
pub const LABEL_JOB_UID: &str = "gpupool.io/job-uid";
/// Comma-separated NVML UUIDs of the pod's GPUs.
pub const ANNOTATION_GPU_UUIDS: &str = "gpupool.io/gpu-uuids";
/// GPU model name of the pod's GPUs.
pub const ANNOTATION_GPU_MODEL: &str = "gpupool.io/gpu-model";
/// Extended resource name of NVIDIA GPUs.
pub const GPU_RESOURCE: &str = "nvidia.com/gpu";
/// Labels put on usage records (cluster name and job uid) for selection.
pub const LABEL_RECORD_CLUSTER: &str = "gpupool.io/cluster";

/// The GPU class of a model name (see the module docs for the table).
pub fn gpu_class(model: &str) -> u8 {
    let m = model.to_ascii_uppercase();
    let has = |needles: &[&str]| needles.iter().any(|n| contains_token(&m, n));
    if has(&["H100", "H200", "H800", "GH200", "B100", "B200", "GB200"]) {
        1
    } else if has(&["A100", "A800"]) {
        2
    } else if has(&["V100"]) {
        3
    } else if has(&["L40S", "L40"]) {
        4
    } else if has(&["A10G", "A10", "L4", "A30", "A40"]) {
        5
    } else if has(&["T4"]) {
        6
    } else if has(&["RTX", "GEFORCE", "QUADRO"]) {
        7
    } else {
        0
    }
}

/// `needle` occurs in `hay` as a whole token: not preceded or followed by an alphanumeric
/// character (so `A10` does not match `A100`, and `L4` does not match `L40S`).
fn contains_token(hay: &str, needle: &str) -> bool {
    let bytes = hay.as_bytes();
    let mut from = 0;
    while let Some(i) = hay[from..].find(needle) {
        let at = from + i;
        let end = at + needle.len();
        let before_ok = at == 0 || !bytes[at - 1].is_ascii_alphanumeric();
        let after_ok = end == bytes.len() || !bytes[end].is_ascii_alphanumeric();
        if before_ok && after_ok {
            return true;
        }
        from = at + 1;
    }
    false
}

/// The period containing unix second `t` (periods before the epoch are clamped to 0).
pub fn period_of(t: i64, period_seconds: u64) -> u64 {
    let len = period_seconds.max(1) as i64;
    (t.max(0) / len) as u64
}

/// `[start, end)` of period `p` in unix seconds.
pub fn period_bounds(p: u64, period_seconds: u64) -> (i64, i64) {
    let len = period_seconds.max(1) as i64;
    let start = (p as i64).saturating_mul(len);
    (start, start.saturating_add(len))
}

/// Seconds of `[start, end)` falling in each period it touches, in period order.
pub fn split_into_periods(start: i64, end: i64, period_seconds: u64) -> Vec<(u64, i64)> {
    let mut out = Vec::new();
    if end <= start {
        return out;
    }
    let mut p = period_of(start, period_seconds);
    loop {
        let (ps, pe) = period_bounds(p, period_seconds);
        let s = start.max(ps);
        let e = end.min(pe);
        if e > s {
            out.push((p, e - s));
        }
        if pe >= end {
            break;
        }
        p += 1;
    }
    out
}

/// When a pod ran, in unix seconds; `end == None` while it still runs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PodRun {
    /// First second a container ran.
    pub start: i64,
    /// First second after the last container stopped; `None` while running.
    pub end: Option<i64>,
}

impl PodRun {
    /// The run closed at `now` when still open (and never ending before it started).
    pub fn interval(&self, now: i64) -> (i64, i64) {
        let end = self.end.unwrap_or(now).min(now.max(self.start));
        (self.start, end.max(self.start))
    }
}

/// The start a terminated container records, when it says anything: a `startedAt` at or after
/// its `finishedAt` describes no run (KWOK stamps completed containers that way) and is
/// ignored, leaving the pod's `startTime` to bound the start.
fn terminated_start(t: &k8s_openapi::api::core::v1::ContainerStateTerminated) -> Option<i64> {
    let s = t.started_at.as_ref()?.0.as_second();
    match t.finished_at.as_ref().map(|f| f.0.as_second()) {
        Some(f) if f <= s => None,
        _ => Some(s),
    }
}

/// The run of a pod from its status, or `None` if it never started.
pub fn pod_run(pod: &Pod) -> Option<PodRun> {
    let status = pod.status.as_ref()?;
    let containers = status.container_statuses.as_deref().unwrap_or_default();
    let mut start: Option<i64> = None;
    let mut all_terminated = !containers.is_empty();
    let mut finished: Option<i64> = None;
    // GPUs are held from the first init container on.
    for cs in status.init_container_statuses.iter().flatten() {
        let s = cs.state.as_ref();
        let started = s
            .and_then(|s| s.running.as_ref())
            .and_then(|r| r.started_at.as_ref())
            .map(|t| t.0.as_second())
            .or_else(|| {
                s.and_then(|s| s.terminated.as_ref())
                    .and_then(terminated_start)
            });
        if let Some(t) = started {
            start = Some(start.map_or(t, |x| x.min(t)));
        }
    }
    for cs in containers {
        let state = cs.state.as_ref();
        let running = state.and_then(|s| s.running.as_ref());
        let terminated = state.and_then(|s| s.terminated.as_ref());
        let started = running
            .and_then(|r| r.started_at.as_ref())
            .map(|t| t.0.as_second())
            .or_else(|| terminated.and_then(terminated_start));
        // A restarted container's earlier run counts from its first start.
        let earlier = cs
            .last_state
            .as_ref()
            .and_then(|s| s.terminated.as_ref())
            .and_then(terminated_start);
        for s in started.into_iter().chain(earlier) {
            start = Some(start.map_or(s, |x| x.min(s)));
        }
        match terminated {
            Some(t) if running.is_none() => {
                if let Some(f) = t.finished_at.as_ref().map(|t| t.0.as_second()) {
                    finished = Some(finished.map_or(f, |x| x.max(f)));
                }
            }
            _ => all_terminated = false,
        }
    }
    let phase = status.phase.as_deref().unwrap_or("");
    // A pod still Pending with no container started is not billed yet.
    let pod_start = status.start_time.as_ref().map(|t| t.0.as_second());
    // The later of the two: either one alone may be moved back by whoever writes the status.
    let start = match (start, pod_start) {
        (Some(c), Some(p)) => c.max(p),
        (Some(c), None) => c,
        (None, Some(p)) if phase != "Pending" => p,
        _ => return None,
    };
    let terminal = phase == "Succeeded" || phase == "Failed";
    let end = if all_terminated || terminal {
        // A finished pod without any finishedAt: fall back to its last condition change.
        finished.or_else(|| {
            status
                .conditions
                .iter()
                .flatten()
                .filter_map(|c| c.last_transition_time.as_ref().map(|t| t.0.as_second()))
                .max()
        })
    } else {
        None
    };
    if terminal && end.is_none() {
        // Finished, but nothing says when: bill nothing rather than forever.
        return Some(PodRun {
            start,
            end: Some(start),
        });
    }
    Some(PodRun {
        start,
        end: end.map(|e| e.max(start)),
    })
}

/// GPUs assigned to a pod: the annotated UUIDs, else the containers' `nvidia.com/gpu` limits
/// (requests where no limit is set).
pub fn pod_gpus(pod: &Pod) -> u64 {
    if let Some(uuids) = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_GPU_UUIDS))
    {
        let n = uuids.split(',').filter(|u| !u.trim().is_empty()).count() as u64;
        if n > 0 {
            return n;
        }
    }
    let Some(spec) = pod.spec.as_ref() else {
        return 0;
    };
    spec.containers
        .iter()
        .map(|c| {
            let r = c.resources.as_ref();
            let q = r
                .and_then(|r| r.limits.as_ref())
                .and_then(|l| l.get(GPU_RESOURCE))
                .or_else(|| {
                    r.and_then(|r| r.requests.as_ref())
                        .and_then(|l| l.get(GPU_RESOURCE))
                });
            q.and_then(|q| q.0.trim().parse::<u64>().ok()).unwrap_or(0)
        })
        .sum()
}

/// GPU-seconds of a run with `gpus` GPUs, per period, up to `now`.
pub fn run_usage(run: PodRun, gpus: u64, now: i64, period_seconds: u64) -> Vec<(u64, i64)> {
    if gpus == 0 {
        return Vec::new();
    }
    let (s, e) = run.interval(now);
    split_into_periods(s, e, period_seconds)
        .into_iter()
        .map(|(p, secs)| (p, secs.saturating_mul(gpus as i64)))
        .collect()
}

/// Identity of the hub job a pod belongs to, from its labels.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct JobRef {
    /// `TrainingJob` or `InferenceJob`.
    pub kind: String,
    /// Namespace on the hub.
    pub namespace: String,
    /// Name on the hub.
    pub name: String,
    /// UID on the hub.
    pub uid: String,
}

/// The job a gpupool pod belongs to, or `None` if its labels are incomplete.
pub fn pod_job(pod: &Pod) -> Option<JobRef> {
    let labels = pod.metadata.labels.as_ref()?;
    if labels.get(LABEL_MANAGED_BY).map(String::as_str) != Some(MANAGED_BY) {
        return None;
    }
    let get = |k: &str| labels.get(k).filter(|v| !v.is_empty()).cloned();
    Some(JobRef {
        kind: get(LABEL_JOB_KIND)?,
        namespace: get(LABEL_JOB_NAMESPACE)?,
        name: get(LABEL_JOB_NAME)?,
        uid: get(LABEL_JOB_UID)?,
    })
}

/// One pod's usage in one period (an input to a usage record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PodPeriodUsage {
    /// Pod UID.
    pub pod_uid: String,
    /// `namespace/name` of the pod.
    pub pod_name: String,
    /// GPUs of the pod, from the hub's placement (0 when it matches none).
    pub gpus: u64,
    /// GPU model of those GPUs as the hub knows them.
    pub gpu_model: Option<String>,
    /// GPU-seconds in the period the hub can prove.
    pub gpu_seconds: i64,
    /// GPU-seconds the member claims beyond that.
    pub unpaid_gpu_seconds: i64,
    /// Why, when `unpaid_gpu_seconds > 0`.
    pub unpaid_reason: Option<String>,
}

/// Usage of all of one job's pods in one period on one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobPeriodUsage {
    /// Per pod (keyed by pod UID).
    pub pods: BTreeMap<String, PodPeriodUsage>,
}

impl JobPeriodUsage {
    /// Paid GPU-seconds, summed over pods.
    pub fn gpu_seconds(&self) -> i64 {
        self.pods.values().map(|p| p.gpu_seconds).sum()
    }

    /// Unpaid GPU-seconds, summed over pods.
    pub fn unpaid_gpu_seconds(&self) -> i64 {
        self.pods.values().map(|p| p.unpaid_gpu_seconds).sum()
    }
}

/// The GPU class of a set of pod contributions: the class with the most GPU-seconds (ties go to
/// the lower class number). The ledger pays one class per receipt.
pub fn dominant_class<'a>(pods: impl IntoIterator<Item = (Option<&'a str>, i64)>) -> u8 {
    let mut by_class = [0i64; 8];
    for (model, secs) in pods {
        let c = model.map(gpu_class).unwrap_or(0) as usize;
        by_class[c] = by_class[c].saturating_add(secs);
    }
    let mut best = 0usize;
    for (c, v) in by_class.iter().enumerate() {
        if *v > by_class[best] {
            best = c;
        }
    }
    best as u8
}

/// One worker/replica placement of a hub job: a node and the exact GPUs on it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Slot {
    /// Node in the member.
    pub node: String,
    /// GPU UUIDs (sorted).
    pub gpu_uuids: Vec<String>,
}

impl Slot {
    /// A slot with its UUIDs sorted.
    pub fn new(node: &str, uuids: &[String]) -> Self {
        let mut gpu_uuids: Vec<String> = uuids.iter().map(|u| u.trim().to_string()).collect();
        gpu_uuids.sort();
        Slot {
            node: node.to_string(),
            gpu_uuids,
        }
    }
}

/// A placement a job had before (a gang before its restart, a replica before it was replaced,
/// moved or removed), and when it was current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PastSlots {
    /// Member cluster.
    pub member: String,
    /// Its worker placements.
    pub slots: Vec<Slot>,
    /// Earliest second it can have been current (`None`: the job's creation).
    pub from: Option<i64>,
    /// When it was replaced (the gang restart; the replica leaving the placements).
    pub until: i64,
}

/// What the hub itself knows about one job: its identity, when it may have run, and where
/// each of its workers/replicas is placed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubJob {
    /// Identity on the hub.
    pub job: JobRef,
    /// Earliest second any of its pods can have run: the job's creation on the hub (or its
    /// recorded start, when later).
    pub not_before: i64,
    /// Latest second: the earliest of its deletion, completion and `maxRuntimeSeconds`.
    pub not_after: Option<i64>,
    /// Placements per member cluster.
    pub slots: BTreeMap<String, Vec<Slot>>,
    /// Since when the current placements hold (the last gang restart; `None`: the job's life).
    pub current_since: Option<i64>,
    /// Earlier placements (of a restarted gang, or replicas no longer placed), oldest first.
    pub past: Vec<PastSlots>,
    /// GPU model the job asked for, if any (a fallback for the class when the hub has no
    /// topology naming the placed GPUs).
    pub model: Option<String>,
}

/// Usage of one member's gpupool pods, bounded by what the hub knows.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct MemberUsage {
    /// Per (hub job, period).
    pub by_job_period: BTreeMap<(JobRef, u64), JobPeriodUsage>,
    /// Claims no hub job accounts for, by reason (`NoSuchHubJob`, `OutsideJobLife`):
    /// (GPU-seconds claimed, pod names).
    pub unmatched: BTreeMap<String, (i64, Vec<String>)>,
}

/// GPU UUIDs the pod's annotation claims (sorted).
fn claimed_uuids(pod: &Pod) -> Vec<String> {
    let mut v: Vec<String> = pod
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(ANNOTATION_GPU_UUIDS))
        .map(|s| {
            s.split(',')
                .map(|u| u.trim().to_string())
                .filter(|u| !u.is_empty())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

/// The windows `[from, until)` in which `slot` was a placement of `hub` on `member`, within
/// the job's life, sorted and merged.
fn placement_windows(hub: &HubJob, member: &str, slot: &Slot) -> Vec<(i64, i64)> {
    let life_end = hub.not_after.unwrap_or(i64::MAX);
    let mut w: Vec<(i64, i64)> = Vec::new();
    if hub.slots.get(member).is_some_and(|s| s.contains(slot)) {
        w.push((
            hub.current_since
                .unwrap_or(hub.not_before)
                .max(hub.not_before),
            life_end,
        ));
    }
    for p in hub
        .past
        .iter()
        .filter(|p| p.member == member && p.slots.contains(slot))
    {
        w.push((
            p.from.unwrap_or(hub.not_before).max(hub.not_before),
            p.until.min(life_end),
        ));
    }
    w.retain(|(a, b)| b > a);
    w.sort();
    let mut merged: Vec<(i64, i64)> = Vec::new();
    for (a, b) in w {
        match merged.last_mut() {
            Some(last) if a <= last.1 => last.1 = last.1.max(b),
            _ => merged.push((a, b)),
        }
    }
    merged
}

/// What the hub observed of one member beyond its own jobs.
#[derive(Clone, Copy, Debug)]
pub struct HubObservations<'a> {
    /// GPU UUID → model, as the hub's inventory knows this member's GPUs.
    pub gpu_models: &'a BTreeMap<String, String>,
    /// Pod UID → unix second the hub's watch first saw the pod end.
    pub observed_ends: &'a BTreeMap<String, i64>,
    /// Seconds a pod is paid past its observed end (clock skew between member and hub).
    pub end_slack_seconds: i64,
}

/// Meters one member's pods against the hub's jobs (see the module docs), up to `now`.
/// `seen` is what the hub itself observed of this member (GPU models, pod ends).
pub fn usage_by_job_period(
    member: &str,
    pods: &[Pod],
    hub_jobs: &BTreeMap<String, HubJob>,
    seen: HubObservations<'_>,
    now: i64,
    period_seconds: u64,
) -> MemberUsage {
    let gpu_models = seen.gpu_models;
    let mut out = MemberUsage::default();
    // GPU-seconds granted per (job uid, slot, period), to cap each placement at its GPUs ×
    // the period when several pods claim the same one.
    let mut granted: BTreeMap<(String, Slot, u64), i64> = BTreeMap::new();
    let len = i64::try_from(period_seconds.max(1)).unwrap_or(i64::MAX);
    for pod in pods {
        let Some(job) = pod_job(pod) else { continue };
        let Some(run) = pod_run(pod) else { continue };
        let claimed_gpus = pod_gpus(pod);
        let name = format!(
            "{}/{}",
            pod.metadata.namespace.as_deref().unwrap_or("default"),
            pod.metadata.name.as_deref().unwrap_or("")
        );
        let claimed = run_usage(run, claimed_gpus, now, period_seconds);
        let Some(hub) = hub_jobs.get(&job.uid).filter(|h| {
            h.job.kind == job.kind && h.job.namespace == job.namespace && h.job.name == job.name
        }) else {
            let e = out.unmatched.entry("NoSuchHubJob".into()).or_default();
            e.0 =
                e.0.saturating_add(claimed.iter().map(|(_, s)| s).sum::<i64>());
            e.1.push(name);
            continue;
        };
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        let slot = Slot::new(&node, &claimed_uuids(pod));
        let windows = placement_windows(hub, member, &slot);
        let placed = !windows.is_empty();
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        let hub_gpus = if placed {
            slot.gpu_uuids.len() as u64
        } else {
            0
        };
        let model = slot
            .gpu_uuids
            .iter()
            .find_map(|u| gpu_models.get(u).cloned())
            .or_else(|| hub.model.clone());
        // The run, clipped to the hub's bounds: the job's life, the hub's own sight of the
        // pod's end, now, and the windows in which its placement was current.
        let (s, e) = run.interval(now);
        let s = s.max(hub.not_before);
        let mut e = e.min(hub.not_after.unwrap_or(i64::MAX)).min(now);
        if let Some(seen_end) = seen.observed_ends.get(&uid) {
            e = e.min(seen_end.saturating_add(seen.end_slack_seconds.max(0)));
        }
        let mut paid: BTreeMap<u64, i64> = BTreeMap::new();
        for (ws, we) in &windows {
            let (s, e) = (s.max(*ws), e.min(*we));
            if e <= s {
                continue;
            }
            let run = PodRun {
                start: s,
                end: Some(e),
            };
            for (p, secs) in run_usage(run, hub_gpus, now, period_seconds) {
                let v = paid.entry(p).or_default();
                *v = v.saturating_add(secs);
            }
        }
        // Periods of the job's life on the hub get per-pod entries; claims outside it are
        // reported per member, not written into records (a pod backdated by months would
        // otherwise make a record per period).
        let life = (
            period_of(hub.not_before, period_seconds),
            period_of(hub.not_after.unwrap_or(now).min(now), period_seconds),
        );
        let mut periods: std::collections::BTreeSet<u64> =
            claimed.iter().map(|(p, _)| *p).collect();
        periods.extend(paid.keys().copied());
        for p in periods {
            if p < life.0 || p > life.1 {
                let claim = claimed
                    .iter()
                    .find(|(q, _)| *q == p)
                    .map(|(_, s)| *s)
                    .unwrap_or(0);
                if claim > 0 {
                    let e = out.unmatched.entry("OutsideJobLife".into()).or_default();
                    e.0 = e.0.saturating_add(claim);
                    if !e.1.contains(&name) {
                        e.1.push(name.clone());
                    }
                }
                continue;
            }
            let claim = claimed
                .iter()
                .find(|(q, _)| *q == p)
                .map(|(_, s)| *s)
                .unwrap_or(0);
            let mut pay = paid.get(&p).copied().unwrap_or(0);
            let mut reason = if !placed {
                Some(format!(
                    "pod on node {node:?} with GPUs {:?} matches no placement of {}/{} on {member}",
                    slot.gpu_uuids, job.namespace, job.name
                ))
            } else if claimed_gpus != hub_gpus {
                Some(format!(
                    "claims {claimed_gpus} GPUs, the hub placed {hub_gpus}"
                ))
            } else {
                None
            };
            if placed {
                let g = granted
                    .entry((job.uid.clone(), slot.clone(), p))
                    .or_default();
                let room = (hub_gpus as i64)
                    .saturating_mul(len)
                    .saturating_sub(*g)
                    .max(0);
                if pay > room {
                    pay = room;
                    reason = Some(format!(
                        "placement already used for {} GPU-seconds in period {p}",
                        *g
                    ));
                }
                *g = g.saturating_add(pay);
            }
            let unpaid = claim.saturating_sub(pay).max(0);
            if unpaid > 0 && reason.is_none() {
                reason = Some(
                    "runs outside what the hub saw: the job's life, the time its placement was current, or past the pod's observed end"
                        .into(),
                );
            }
            if pay <= 0 && unpaid <= 0 {
                continue;
            }
            out.by_job_period
                .entry((hub.job.clone(), p))
                .or_default()
                .pods
                .insert(
                    uid.clone(),
                    PodPeriodUsage {
                        pod_uid: uid.clone(),
                        pod_name: name.clone(),
                        gpus: hub_gpus,
                        gpu_model: model.clone(),
                        gpu_seconds: pay,
                        unpaid_gpu_seconds: unpaid,
                        unpaid_reason: if unpaid > 0 { reason } else { None },
                    },
                );
        }
    }
    out
}

#[cfg(test)]
mod tests;
