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
//! * usage is keyed by **placement slot** ([`SlotWindow`]): (job uid, gang generation or
//!   replica placement, node, GPU set), all chosen by the hub, never the pod UID a member
//!   chooses. A pod matches a slot when its job uid, kind, namespace and name are a hub job's
//!   and its node and GPU UUIDs are a slot's on this member; its GPU count is the slot's, its
//!   GPU class the hub's model of those GPUs;
//! * each slot has a hub-clock **window**: from its `placedAt` (the scheduler stamps it on each
//!   gang generation and each replica; statuses written before it existed fall back to the
//!   restart before, else the job's creation) until the gang restarted or the replica left the
//!   placements (`status.pastPlacements`), bounded by the job's deletion, completion or
//!   `maxRuntimeSeconds`;
//! * a pod's run is clipped to that window, to now (the meter's own observation), to no
//!   earlier than the instant the hub's watch first saw the pod (for pods that appeared after
//!   the watch started), and to no later than the instant it first saw the pod end (terminal
//!   phase, or every container terminated under `restartPolicy: Never`), with
//!   [`MeterConfig::observed_end_slack_seconds`] of slack both ways for clock skew: a
//!   `finishedAt` the member rewrites later (or a status flipped back to running) is not paid.
//!   The observed end is persisted in the record's slot entry, so an operator restart does not
//!   forget it;
//! * in each period, a slot is paid its GPUs × the **union** of its pods' clipped runs, so
//!   at most GPUs × |window ∩ period ∩ [.., now]|; across passes the record keeps, per slot,
//!   the maximum: a pod the member replaces by a copy (new UID) at every pass merges, never
//!   adds.
//!
//! What a pod claims beyond that is **unpaid** and surfaced: per pod (`unpaidReason`), per
//! record (`unpaidGpuSeconds`, a `kubectl get usagerecords` column), and as alerts the runner
//! turns into Events on the `MemberCluster` and a metric. A member owner who controls both the
//! kubelet and the API server can still fake a *running* workload inside a real placement;
//! hardware attestation is what would close that.
//!
//! **Settlement periods** are fixed windows of `period_seconds` aligned to the unix epoch: period
//! `p` is `[p * len, (p + 1) * len)`. A pod's GPU-seconds in period `p` are
//! `gpus * |run ∩ period p|`. The period length
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

pub mod budget;
pub mod meter;
pub mod proof;
pub mod runner;
pub mod settle;

pub use meter::{MemberRef, MeterConfig, MeterReport, meter_once, record_name};
pub use proof::SealKey;
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
pub const ANNOTATION_GPU_UUIDS: &str = crate::meta::labels::GPU_UUIDS;
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
    let n = crate::meta::assigned_gpus(&pod.metadata).len() as u64;
    if n > 0 {
        return n;
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

/// One placement slot's usage in one period (an entry of a usage record).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotPeriodUsage {
    /// UID of the last pod seen on the slot (a member's choice: informative only, never a key).
    pub pod_uid: String,
    /// `namespace/name` of that pod.
    pub pod_name: String,
    /// GPUs of the slot, from the hub's placement (0 when the pod matches none).
    pub gpus: u64,
    /// GPU model of those GPUs as the hub knows them.
    pub gpu_model: Option<String>,
    /// GPU-seconds in the period the hub can prove: the slot's GPUs × the union of its pods'
    /// runs within the placement window.
    pub gpu_seconds: i64,
    /// GPU-seconds the slot's pods claim beyond that.
    pub unpaid_gpu_seconds: i64,
    /// Why, when `unpaid_gpu_seconds > 0`.
    pub unpaid_reason: Option<String>,
    /// When the hub's watch first saw that pod end (persisted in the record, so a restart of
    /// the operator does not forget it).
    pub observed_end: Option<i64>,
}

/// Usage of one job's placement slots in one period on one cluster.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct JobPeriodUsage {
    /// Per placement slot (keyed by [`SlotWindow::key`], never by a pod UID).
    pub pods: BTreeMap<String, SlotPeriodUsage>,
}

impl JobPeriodUsage {
    /// Paid GPU-seconds, summed over slots.
    pub fn gpu_seconds(&self) -> i64 {
        self.pods.values().map(|p| p.gpu_seconds).sum()
    }

    /// Unpaid GPU-seconds, summed over slots.
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

/// A node and the exact GPUs on it.
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

/// One placement slot of a hub job: a worker of one gang generation, or one replica placement,
/// on a member's node and GPU set, and the hub-clock window in which it was current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SlotWindow {
    /// Member cluster.
    pub member: String,
    /// Node and GPUs.
    pub slot: Slot,
    /// `g<from>` for a gang generation placed at `from`, `r<index>.<from>` for replica `index`
    /// placed at `from`: with the slot, the key usage is merged under.
    pub placement: String,
    /// When the hub placed it (its own clock).
    pub from: i64,
    /// When it stopped being current (gang restart, replica replaced or removed); `i64::MAX`
    /// while it still is.
    pub until: i64,
}

impl SlotWindow {
    /// The key of this slot's usage in a record: (placement, node, GPU set). Chosen by the hub,
    /// so a pod the member replaces (under a new UID) merges into the same entry.
    pub fn key(&self) -> String {
        format!(
            "{}/{}/{}",
            self.placement,
            self.slot.node,
            self.slot.gpu_uuids.join(",")
        )
    }
}

/// What the hub itself knows about one job: its identity, when it may have run, and each
/// placement slot it had on each member, with the window in which it was current.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HubJob {
    /// Identity on the hub.
    pub job: JobRef,
    /// Earliest second any of its pods can have run: the job's creation on the hub.
    pub not_before: i64,
    /// Latest second: the earliest of its deletion, completion and `maxRuntimeSeconds`.
    pub not_after: Option<i64>,
    /// Its placement slots, current and past.
    pub windows: Vec<SlotWindow>,
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
    let mut v = crate::meta::assigned_gpus(&pod.metadata);
    v.sort();
    v
}

/// What the hub observed of one member beyond its own jobs.
#[derive(Clone, Copy, Debug)]
pub struct HubObservations<'a> {
    /// GPU UUID → model, as the hub's inventory knows this member's GPUs.
    pub gpu_models: &'a BTreeMap<String, String>,
    /// Pod UID → unix second the hub's watch first saw the pod end (or a record persisted).
    pub observed_ends: &'a BTreeMap<String, i64>,
    /// Pod UID → unix second the hub's watch first saw the pod (pods already there when the
    /// watch started are absent: their placement bounds them).
    pub first_seen: &'a BTreeMap<String, i64>,
    /// Seconds of clock skew allowed between member and hub: a pod is paid from its first
    /// sighting minus this, and up to its observed end plus this.
    pub end_slack_seconds: i64,
}

/// One pod, read: who it claims to be and what it claims to have run.
struct PodClaim {
    job: JobRef,
    run: PodRun,
    gpus: u64,
    name: String,
    uid: String,
    node: String,
    slot: Slot,
}

impl PodClaim {
    fn read(pod: &Pod) -> Option<Self> {
        let job = pod_job(pod)?;
        let run = pod_run(pod)?;
        let node = pod
            .spec
            .as_ref()
            .and_then(|s| s.node_name.clone())
            .unwrap_or_default();
        Some(PodClaim {
            job,
            run,
            gpus: pod_gpus(pod),
            name: format!(
                "{}/{}",
                pod.metadata.namespace.as_deref().unwrap_or("default"),
                pod.metadata.name.as_deref().unwrap_or("")
            ),
            uid: pod.metadata.uid.clone().unwrap_or_default(),
            slot: Slot::new(&node, &claimed_uuids(pod)),
            node,
        })
    }

    /// GPU-seconds claimed per period, as the member tells it.
    fn claimed(&self, now: i64, period_seconds: u64) -> Vec<(u64, i64)> {
        run_usage(self.run, self.gpus, now, period_seconds)
    }

    /// The run as far as the hub can vouch for it: within the job's life, not before the hub
    /// first saw the pod (minus slack), not past the end it saw (plus slack), not past now.
    fn bounded(&self, hub: &HubJob, seen: &HubObservations<'_>, now: i64) -> (i64, i64) {
        let slack = seen.end_slack_seconds.max(0);
        let (s, e) = self.run.interval(now);
        let mut s = s.max(hub.not_before);
        if let Some(first) = seen.first_seen.get(&self.uid) {
            s = s.max(first.saturating_sub(slack));
        }
        let mut e = e.min(hub.not_after.unwrap_or(i64::MAX)).min(now);
        if let Some(end) = seen.observed_ends.get(&self.uid) {
            e = e.min(end.saturating_add(slack));
        }
        (s, e)
    }
}

/// One slot's entry being built in a pass: the intervals its pods ran per period (merged into
/// their union at the end), and what they claimed.
#[derive(Default)]
struct SlotAcc {
    gpus: u64,
    model: Option<String>,
    pod_uid: String,
    pod_name: String,
    observed_end: Option<i64>,
    ran: BTreeMap<u64, Vec<(i64, i64)>>,
    claimed: BTreeMap<u64, i64>,
    reason: Option<String>,
}

impl SlotAcc {
    fn note_pod(&mut self, c: &PodClaim, seen: &HubObservations<'_>) {
        self.pod_uid.clone_from(&c.uid);
        self.pod_name.clone_from(&c.name);
        self.observed_end = seen.observed_ends.get(&c.uid).copied();
    }

    fn add_run(&mut self, s: i64, e: i64, period_seconds: u64) {
        for (p, _) in split_into_periods(s, e, period_seconds) {
            let (ps, pe) = period_bounds(p, period_seconds);
            self.ran.entry(p).or_default().push((s.max(ps), e.min(pe)));
        }
    }

    fn add_claim(&mut self, p: u64, secs: i64) {
        let v = self.claimed.entry(p).or_default();
        *v = v.saturating_add(secs);
    }

    /// Per period: the slot's GPUs × the union of its runs, and what was claimed beyond.
    fn finish(self) -> Vec<(u64, SlotPeriodUsage)> {
        let mut periods: std::collections::BTreeSet<u64> = self.ran.keys().copied().collect();
        periods.extend(self.claimed.keys().copied());
        periods
            .into_iter()
            .filter_map(|p| {
                let secs = self.ran.get(&p).map_or(0, |v| union_length(v));
                let paid = secs.saturating_mul(self.gpus as i64);
                let claim = self.claimed.get(&p).copied().unwrap_or(0);
                let unpaid = claim.saturating_sub(paid).max(0);
                if paid <= 0 && unpaid <= 0 {
                    return None;
                }
                let reason = (unpaid > 0).then(|| {
                    self.reason.clone().unwrap_or_else(|| {
                        "runs outside what the hub saw: the job's life, the time its placement was current, a copy of a pod already paid, or past the pod's observed end".into()
                    })
                });
                Some((
                    p,
                    SlotPeriodUsage {
                        pod_uid: self.pod_uid.clone(),
                        pod_name: self.pod_name.clone(),
                        gpus: self.gpus,
                        gpu_model: self.model.clone(),
                        gpu_seconds: paid,
                        unpaid_gpu_seconds: unpaid,
                        unpaid_reason: reason,
                        observed_end: self.observed_end,
                    },
                ))
            })
            .collect()
    }
}

/// Total length of the union of `[s, e)` intervals.
fn union_length(v: &[(i64, i64)]) -> i64 {
    let mut v: Vec<(i64, i64)> = v.iter().copied().filter(|(s, e)| e > s).collect();
    v.sort_unstable();
    let mut total = 0i64;
    let mut cur: Option<(i64, i64)> = None;
    for (s, e) in v {
        match cur {
            Some((cs, ce)) if s <= ce => cur = Some((cs, ce.max(e))),
            Some((cs, ce)) => {
                total = total.saturating_add(ce - cs);
                cur = Some((s, e));
            }
            None => cur = Some((s, e)),
        }
    }
    if let Some((cs, ce)) = cur {
        total = total.saturating_add(ce - cs);
    }
    total
}

/// A pass over one member's pods, building per-slot entries.
struct MeterPass<'a> {
    member: &'a str,
    hub_jobs: &'a BTreeMap<String, HubJob>,
    seen: HubObservations<'a>,
    now: i64,
    period_seconds: u64,
    slots: BTreeMap<(JobRef, String), SlotAcc>,
    unmatched: BTreeMap<String, (i64, Vec<String>)>,
}

impl MeterPass<'_> {
    fn unmatched(&mut self, reason: &str, secs: i64, name: &str) {
        let e = self.unmatched.entry(reason.into()).or_default();
        e.0 = e.0.saturating_add(secs);
        if !e.1.iter().any(|n| n == name) {
            e.1.push(name.to_string());
        }
    }

    fn add_pod(&mut self, pod: &Pod) {
        let Some(c) = PodClaim::read(pod) else { return };
        let claimed = c.claimed(self.now, self.period_seconds);
        // The hub job the pod claims, if the hub has it under that kind, namespace and name.
        let hubs: &BTreeMap<String, HubJob> = self.hub_jobs;
        let Some(hub) = hubs.get(&c.job.uid).filter(|h| {
            h.job.kind == c.job.kind
                && h.job.namespace == c.job.namespace
                && h.job.name == c.job.name
        }) else {
            self.unmatched(
                "NoSuchHubJob",
                claimed.iter().map(|(_, s)| s).sum(),
                &c.name,
            );
            return;
        };
        let windows: Vec<&SlotWindow> = hub
            .windows
            .iter()
            .filter(|w| w.member == self.member && w.slot == c.slot)
            .collect();
        let model = c
            .slot
            .gpu_uuids
            .iter()
            .find_map(|u| self.seen.gpu_models.get(u).cloned())
            .or_else(|| hub.model.clone());
        let (s, e) = c.bounded(hub, &self.seen, self.now);
        // The entry that carries the pod's claim: its latest window opened by the pod's start.
        let own = windows
            .iter()
            .rev()
            .find(|w| w.from <= c.run.start)
            .or(windows.first())
            .map(|w| w.key())
            .unwrap_or_else(|| format!("unplaced/{}/{}", c.node, c.slot.gpu_uuids.join(",")));
        for w in &windows {
            let acc = self.slots.entry((hub.job.clone(), w.key())).or_default();
            acc.gpus = w.slot.gpu_uuids.len() as u64;
            acc.model.clone_from(&model);
            acc.note_pod(&c, &self.seen);
            acc.add_run(s.max(w.from), e.min(w.until), self.period_seconds);
        }
        self.add_claim(hub, &c, &own, windows.is_empty(), claimed);
        if windows.is_empty()
            && let Some(acc) = self.slots.get_mut(&(hub.job.clone(), own))
        {
            acc.model = model;
        }
    }

    /// Files the pod's claim under its own slot entry (periods of the job's life) or as
    /// `OutsideJobLife` (a pod backdated by months would otherwise make a record per period).
    fn add_claim(
        &mut self,
        hub: &HubJob,
        c: &PodClaim,
        own: &str,
        unplaced: bool,
        claimed: Vec<(u64, i64)>,
    ) {
        let life = (
            period_of(hub.not_before, self.period_seconds),
            period_of(
                hub.not_after.unwrap_or(self.now).min(self.now),
                self.period_seconds,
            ),
        );
        let member = self.member.to_string();
        for (p, secs) in claimed {
            if p < life.0 || p > life.1 {
                if secs > 0 {
                    self.unmatched("OutsideJobLife", secs, &c.name);
                }
                continue;
            }
            let acc = self
                .slots
                .entry((hub.job.clone(), own.to_string()))
                .or_default();
            if unplaced {
                acc.note_pod(c, &self.seen);
                acc.reason = Some(format!(
                    "pod on node {:?} with GPUs {:?} matches no placement of {}/{} on {member}",
                    c.node, c.slot.gpu_uuids, c.job.namespace, c.job.name
                ));
            } else if c.gpus != c.slot.gpu_uuids.len() as u64 {
                acc.reason = Some(format!(
                    "claims {} GPUs, the hub placed {}",
                    c.gpus,
                    c.slot.gpu_uuids.len()
                ));
            }
            acc.add_claim(p, secs);
        }
    }

    fn finish(self) -> MemberUsage {
        let mut out = MemberUsage {
            unmatched: self.unmatched,
            ..Default::default()
        };
        for ((job, key), acc) in self.slots {
            for (p, u) in acc.finish() {
                out.by_job_period
                    .entry((job.clone(), p))
                    .or_default()
                    .pods
                    .insert(key.clone(), u);
            }
        }
        out
    }
}

/// Meters one member's pods against the hub's jobs (see the module docs), up to `now`.
/// `seen` is what the hub itself observed of this member (GPU models, pod sightings and ends).
/// Usage is keyed by placement slot: pods on the same slot (a member's replacement copies
/// included) pay the slot's GPUs × the union of their runs, never more.
pub fn usage_by_job_period<'p>(
    member: &str,
    pods: impl IntoIterator<Item = &'p Pod>,
    hub_jobs: &BTreeMap<String, HubJob>,
    seen: HubObservations<'_>,
    now: i64,
    period_seconds: u64,
) -> MemberUsage {
    let mut pass = MeterPass {
        member,
        hub_jobs,
        seen,
        now,
        period_seconds,
        slots: BTreeMap::new(),
        unmatched: BTreeMap::new(),
    };
    for pod in pods {
        pass.add_pod(pod);
    }
    pass.finish()
}

#[cfg(test)]
mod tests;
