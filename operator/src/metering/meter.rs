//! One metering pass: member pods, bounded by the hub's own jobs → `UsageRecord`s in the hub →
//! jobs' `status.gpuSeconds`. See the [module docs](super) for what is paid.

use super::settle::Alert;
use super::{
    HubJob, JobPeriodUsage, JobRef, LABEL_JOB_UID, LABEL_RECORD_CLUSTER, Slot, SlotWindow,
};
use crate::api::{
    InferenceJob, MemberCluster, PodUsage, TrainingJob, UsageRecord, UsageRecordSpec, UsageState,
};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;

/// Field manager the meter writes jobs' `status.gpuSeconds` (and usage records) with.
pub const METER_FIELD_MANAGER: &str = "gpupool-meter";

/// A member cluster the meter reads pods from.
#[derive(Clone)]
pub struct MemberRef {
    /// `MemberCluster` name.
    pub name: String,
    /// The owner's wallet (`spec.ownerWallet`, base58).
    pub owner_wallet: String,
    /// The way to the member (push: its API server; pull: the pods its agent reports).
    pub link: crate::federation::MemberLink,
    /// Model of each GPU (by UUID) of this member, as the hub's inventory knows it.
    pub gpu_models: BTreeMap<String, String>,
    /// Pod UID → unix second the hub's watch of this member first saw the pod end
    /// ([`crate::federation::MemberWatch::observed_ends`]).
    pub observed_ends: BTreeMap<String, i64>,
    /// Pod UID → unix second the hub's watch of this member first saw the pod
    /// ([`crate::federation::MemberWatch::first_seen`]).
    pub first_seen: BTreeMap<String, i64>,
    /// The member's gpupool pods as the hub's watch holds them (`None`: read them through
    /// the link).
    pub pods: Option<Vec<Arc<Pod>>>,
}

impl std::fmt::Debug for MemberRef {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MemberRef")
            .field("name", &self.name)
            .field("owner_wallet", &self.owner_wallet)
            .finish_non_exhaustive()
    }
}

/// Metering settings.
#[derive(Clone, Debug)]
pub struct MeterConfig {
    /// Length of a settlement period in seconds (default 3600). Must not change for a
    /// deployment: receipts are keyed by period number.
    pub period_seconds: u64,
    /// How long after a period ends its records stay `Open` before becoming `Final`, to let
    /// late pod status updates arrive (default 60 s).
    pub finalize_delay_seconds: u64,
    /// Seconds a pod is paid past the instant the hub's watch first saw it end, and before the
    /// instant it first saw it: room for clock skew between the member (which stamps
    /// `startedAt`/`finishedAt`) and the hub (default 30 s).
    pub observed_end_slack_seconds: u64,
    /// The key records are sealed with (the settler verifies it).
    pub seal: super::SealKey,
    /// With the runner's [`Held`] state: how often an `Open` record whose pods only ran on is
    /// rewritten (default 300 s; its period's close and any change of its slots write it at
    /// once).
    pub record_refresh_seconds: u64,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            period_seconds: super::DEFAULT_PERIOD_SECONDS,
            finalize_delay_seconds: 60,
            observed_end_slack_seconds: 30,
            seal: super::SealKey::default(),
            record_refresh_seconds: 300,
        }
    }
}

/// What one metering pass did.
#[derive(Clone, Debug, Default)]
pub struct MeterReport {
    /// gpupool pods listed over all reachable members.
    pub pods_seen: usize,
    /// Members listed successfully.
    pub members_metered: usize,
    /// Records created.
    pub records_created: usize,
    /// Records whose GPU-seconds grew.
    pub records_updated: usize,
    /// Records moved from `Open` to `Final`.
    pub records_finalized: usize,
    /// Jobs whose `status.gpuSeconds` was written.
    pub jobs_updated: usize,
    /// GPU-seconds observed for periods that were already settled (cannot be paid any more).
    pub late_gpu_seconds: i64,
    /// Members whose `kube-system` UID was recorded as their `spec.clusterId` this pass.
    pub identities_recorded: usize,
    /// GPU-seconds members claimed this pass that the hub cannot prove (not paid).
    pub unpaid_gpu_seconds: i64,
    /// Claims the meter refused, to surface on the members.
    pub alerts: Vec<Alert>,
    /// Members that could not be listed: (name, error). Their records are left as they are.
    pub member_errors: Vec<(String, String)>,
    /// Other per-object errors (the pass continues past them).
    pub errors: Vec<String>,
}

/// Deterministic name of the usage record of `(cluster, job uid, period)`:
/// `<cluster>.<job uid>.<period>` (a valid DNS subdomain for cluster names that are).
pub fn record_name(cluster: &str, job_uid: &str, period: u64) -> String {
    format!("{}.{}.{}", cluster, job_uid.to_ascii_lowercase(), period)
}

fn time(secs: i64) -> Time {
    Time(Timestamp::from_second(secs).unwrap_or(Timestamp::UNIX_EPOCH))
}

fn state_of(r: &UsageRecord) -> UsageState {
    r.status.as_ref().map(|s| s.state).unwrap_or_default()
}

fn secs(t: &Time) -> i64 {
    t.0.as_second()
}

/// The hub's view of every job, keyed by job uid (pure; see [`HubJob`]).
pub fn hub_jobs<'a>(
    training: impl IntoIterator<Item = &'a TrainingJob>,
    inference: impl IntoIterator<Item = &'a InferenceJob>,
) -> BTreeMap<String, HubJob> {
    training
        .into_iter()
        .filter_map(hub_training_job)
        .chain(inference.into_iter().filter_map(hub_inference_job))
        .map(|h| (h.job.uid.clone(), h))
        .collect()
}

/// When a training job's pods may have run no longer: its deletion, completion or
/// `maxRuntimeSeconds` past its start, whichever comes first.
fn training_not_after(j: &TrainingJob, created: i64) -> Option<i64> {
    let st = j.status.as_ref();
    let mut not_after: Vec<i64> = Vec::new();
    if let Some(d) = j.metadata.deletion_timestamp.as_ref() {
        not_after.push(secs(d));
    }
    if let Some(c) = st.and_then(|s| s.completion_time.as_ref()) {
        not_after.push(secs(c));
    }
    if let Some(max) = j.spec.max_runtime_seconds.filter(|m| *m > 0) {
        let from = st
            .and_then(|s| s.start_time.as_ref())
            .map(secs)
            .unwrap_or(created);
        not_after.push(from.saturating_add(max));
    }
    not_after.into_iter().min()
}

/// One gang generation's workers as slot windows `[from, until)` on `member`.
fn gang_windows(
    member: &str,
    workers: &[crate::api::WorkerPlacement],
    from: i64,
    until: i64,
) -> impl Iterator<Item = SlotWindow> {
    workers.iter().map(move |w| SlotWindow {
        member: member.to_string(),
        slot: Slot::new(&w.node, &w.gpu_uuids),
        placement: format!("g{from}"),
        from,
        until,
    })
}

/// A training job's placement slots: each earlier gang generation from its `from` (else the
/// restart before it, else the job's creation) to its restart, the current one from its
/// hub-clock `placedAt` (else the last restart, else the job's creation) on.
fn hub_training_job(j: &TrainingJob) -> Option<HubJob> {
    let uid = j.metadata.uid.clone()?;
    let created = secs(j.metadata.creation_timestamp.as_ref()?);
    let st = j.status.as_ref();
    let mut windows = Vec::new();
    let mut last_until: Option<i64> = None;
    for p in st.iter().flat_map(|s| s.past_placements.iter()) {
        let from = p
            .from
            .as_ref()
            .map(secs)
            .or(last_until)
            .unwrap_or(created)
            .max(created);
        let until = secs(&p.until);
        windows.extend(gang_windows(&p.cluster, &p.workers, from, until));
        last_until = Some(until);
    }
    if let Some((cluster, s)) = st.and_then(|s| s.cluster.as_deref().map(|c| (c, s))) {
        let from = s
            .placed_at
            .as_ref()
            .map(secs)
            .or(last_until)
            .unwrap_or(created)
            .max(created);
        windows.extend(gang_windows(cluster, &s.workers, from, i64::MAX));
    }
    Some(HubJob {
        job: JobRef {
            kind: "TrainingJob".into(),
            namespace: j.namespace().unwrap_or_default(),
            name: j.name_any(),
            uid,
        },
        not_before: created,
        not_after: training_not_after(j, created),
        windows,
        model: j.spec.gpu.model.clone(),
    })
}

/// One replica placement as a slot window: from its hub-clock `placedAt` (else the job's
/// creation) to `until`.
fn replica_window(
    member: &str,
    index: i32,
    g: &crate::api::NodeGpus,
    created: i64,
    until: i64,
) -> SlotWindow {
    let from = g
        .placed_at
        .as_ref()
        .map(secs)
        .unwrap_or(created)
        .max(created);
    SlotWindow {
        member: member.to_string(),
        slot: Slot::new(&g.node, &g.gpu_uuids),
        placement: format!("r{index}.{from}"),
        from,
        until,
    }
}

/// An inference job's placement slots: each current replica from its `placedAt` on, each
/// replica that left the placements (replaced, moved, withdrawn, scaled away) until it left
/// (its pod is paid up to then, so the run since the meter's last pass is not lost).
fn hub_inference_job(j: &InferenceJob) -> Option<HubJob> {
    let uid = j.metadata.uid.clone()?;
    let created = secs(j.metadata.creation_timestamp.as_ref()?);
    let mut windows = Vec::new();
    for s in j.status.iter() {
        for p in &s.placements {
            for (index, g) in p.replicas.iter().zip(&p.gpus) {
                windows.push(replica_window(&p.cluster, *index, g, created, i64::MAX));
            }
        }
        for p in &s.past_placements {
            windows.push(replica_window(
                &p.cluster,
                p.index,
                &p.gpus,
                created,
                secs(&p.until),
            ));
        }
    }
    Some(HubJob {
        job: JobRef {
            kind: "InferenceJob".into(),
            namespace: j.namespace().unwrap_or_default(),
            name: j.name_any(),
            uid,
        },
        not_before: created,
        not_after: j.metadata.deletion_timestamp.as_ref().map(secs),
        windows,
        model: j.spec.gpu.model.clone(),
    })
}

/// Reads the member's `kube-system` namespace UID and checks it against (or records it as)
/// the `MemberCluster`'s identity, `spec.clusterId` (immutable once set). `Err` is an alert: the member is not metered this pass.
pub async fn check_identity(
    hub: &Client,
    member: &MemberRef,
    recorded: Option<&str>,
) -> Result<(String, bool), Alert> {
    let alert = |reason: &str, message: String| Alert {
        cluster: member.name.clone(),
        reason: reason.into(),
        message,
        gpu_seconds: 0,
    };
    let uid = member.link.identity().await.map_err(|e| {
        alert(
            "IdentityUnreadable",
            format!("reading the member's kube-system namespace: {e}"),
        )
    })?;
    if uid.is_empty() {
        return Err(alert(
            "IdentityUnreadable",
            "the member's kube-system namespace has no UID".into(),
        ));
    }
    match recorded {
        Some(r) if r == uid => Ok((uid, false)),
        Some(r) => Err(alert(
            "IdentityChanged",
            format!(
                "MemberCluster {} was joined as the cluster whose kube-system UID is {r}, but its kubeconfig now reaches {uid}; not metered",
                member.name
            ),
        )),
        None => {
            let api: Api<MemberCluster> = Api::all(hub.clone());
            record_identity(&api, &member.name, &uid)
                .await
                .map_err(|e| {
                    alert(
                        "IdentityUnrecorded",
                        format!("recording the kube-system UID {uid}: {e}"),
                    )
                })?;
            Ok((uid, true))
        }
    }
}

/// Records `uid` as `spec.clusterId` of MemberCluster `name` (a merge patch: the rest of the
/// spec stays the admin's; the API server refuses it once another value is recorded).
pub async fn record_identity(
    api: &Api<MemberCluster>,
    name: &str,
    uid: &str,
) -> kube::Result<MemberCluster> {
    api.patch(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"spec": {"clusterId": uid}})),
    )
    .await
}

/// What the meter and the settler read of the hub: usage records by name, members by name,
/// and every job; from the watch stores the operator keeps ([`super::runner::Stores`]), or
/// listed ([`HubView::list`]).
#[derive(Clone, Debug, Default)]
pub struct HubView {
    /// Usage records by name.
    pub records: BTreeMap<String, Arc<UsageRecord>>,
    /// `MemberCluster`s by name.
    pub members: BTreeMap<String, Arc<MemberCluster>>,
    /// Every `TrainingJob`.
    pub training: Vec<Arc<TrainingJob>>,
    /// Every `InferenceJob`.
    pub inference: Vec<Arc<InferenceJob>>,
}

impl HubView {
    /// Lists everything the meter reads from the hub's API server.
    pub async fn list(hub: &Client) -> Result<HubView> {
        let lp = ListParams::default();
        let records = Api::<UsageRecord>::all(hub.clone())
            .list(&lp)
            .await
            .context("listing UsageRecords in the hub")?;
        let members = Api::<MemberCluster>::all(hub.clone())
            .list(&lp)
            .await
            .context("listing MemberClusters in the hub")?;
        let training = Api::<TrainingJob>::all(hub.clone())
            .list(&lp)
            .await
            .context("listing TrainingJobs in the hub")?;
        let inference = Api::<InferenceJob>::all(hub.clone())
            .list(&lp)
            .await
            .context("listing InferenceJobs in the hub")?;
        Ok(HubView::from_objects(
            records.items.into_iter().map(Arc::new),
            members.items.into_iter().map(Arc::new),
            training.items.into_iter().map(Arc::new).collect(),
            inference.items.into_iter().map(Arc::new).collect(),
        ))
    }

    /// A view of these objects.
    pub fn from_objects(
        records: impl IntoIterator<Item = Arc<UsageRecord>>,
        members: impl IntoIterator<Item = Arc<MemberCluster>>,
        training: Vec<Arc<TrainingJob>>,
        inference: Vec<Arc<InferenceJob>>,
    ) -> HubView {
        HubView {
            records: records.into_iter().map(|r| (r.name_any(), r)).collect(),
            members: members.into_iter().map(|m| (m.name_any(), m)).collect(),
            training,
            inference,
        }
    }

    /// The hub's facts about every job (see [`hub_jobs`]).
    pub fn hub_jobs(&self) -> BTreeMap<String, HubJob> {
        hub_jobs(
            self.training.iter().map(|j| j.as_ref()),
            self.inference.iter().map(|j| j.as_ref()),
        )
    }
}

/// Pod UID → observed end persisted in member `name`'s records not settled yet (see
/// [`PodUsage::observed_end`]), merged with what the live watch saw (`live`; the earliest
/// wins).
pub(crate) fn known_ends<'a>(
    name: &str,
    live: &BTreeMap<String, i64>,
    records: impl Iterator<Item = &'a UsageRecord>,
) -> BTreeMap<String, i64> {
    let mut ends = live.clone();
    for r in records.filter(|r| r.spec.cluster == name && state_of(r) != UsageState::Settled) {
        for p in r.spec.pods.values() {
            if let (Some(uid), Some(end)) = (p.pod_uid.as_ref(), p.observed_end.as_ref()) {
                let e = ends.entry(uid.clone()).or_insert(end.0.as_second());
                *e = (*e).min(end.0.as_second());
            }
        }
    }
    ends
}

/// Lists the gpupool pods of every member, bounds their usage by the hub's jobs, writes/grows
/// the hub's usage records, finalizes records of closed periods and writes each job's
/// `status.gpuSeconds` (the sum of its records).
///
/// Records are written **before** anything is settled on chain. A member that cannot be listed
/// is reported in [`MeterReport::member_errors`] and its records are left untouched (not even
/// finalized, since its pods may have run on unseen). Fails only when the hub itself cannot be
/// read.
pub async fn meter_once(
    hub: &Client,
    members: &[MemberRef],
    now: Timestamp,
    cfg: &MeterConfig,
) -> Result<MeterReport> {
    let view = HubView::list(hub).await?;
    meter_view(hub, members, view, now, cfg, None).await
}

/// Growth of `Open` records the meter computed but has not written yet, kept between passes
/// by the runner: while nothing but the clock changes (every slot's pod still there and
/// running), an `Open` record is rewritten only every [`MeterConfig::record_refresh_seconds`]
/// (and when its period closes), so that running jobs cost no API writes at every pass. A
/// slot whose pod disappears, a new slot, or a newly observed end is written at once, with the
/// latest value computed while the pod was there.
#[derive(Debug, Default)]
pub struct Held {
    /// Record name → entries computed and not written.
    pending: BTreeMap<String, BTreeMap<String, PodUsage>>,
    /// Record name → when this process last wrote it (or first saw it).
    written: BTreeMap<String, i64>,
}

/// One metering pass over what the hub holds (`view`), writing through `hub`. With `held`,
/// `Open` records grow lazily (see [`Held`]); without, at every pass.
pub async fn meter_view(
    hub: &Client,
    members: &[MemberRef],
    view: HubView,
    now: Timestamp,
    cfg: &MeterConfig,
    held: Option<&std::sync::Mutex<Held>>,
) -> Result<MeterReport> {
    let mut report = MeterReport::default();
    let records: Api<UsageRecord> = Api::all(hub.clone());
    let jobs = view.hub_jobs();
    let mut by_name = view.records;
    let mut reachable = BTreeSet::new();
    let mut touched = BTreeSet::new();
    for m in members {
        let Some(obj) = view.members.get(&m.name) else {
            continue;
        };
        let Some((cluster_uid, pods)) = read_member(hub, m, obj, &mut report).await else {
            continue;
        };
        reachable.insert(m.name.clone());
        let ends = known_ends(
            &m.name,
            &m.observed_ends,
            by_name.values().map(|r| r.as_ref()),
        );
        let usage = super::usage_by_job_period(
            &m.name,
            pods.iter().map(|p| p.as_ref()),
            &jobs,
            super::HubObservations {
                gpu_models: &m.gpu_models,
                observed_ends: &ends,
                first_seen: &m.first_seen,
                end_slack_seconds: i64::try_from(cfg.observed_end_slack_seconds)
                    .unwrap_or(i64::MAX),
            },
            now.as_second(),
            cfg.period_seconds,
        );
        let member = MemberPass {
            records: &records,
            member: m,
            cluster_uid: &cluster_uid,
            now_s: now.as_second(),
            cfg,
            held,
        };
        member
            .write(usage, &mut by_name, &mut touched, &mut report)
            .await;
        if let Some(h) = held {
            member.flush(h, &touched, &mut by_name, &mut report).await;
        }
    }
    finalize_unseen(
        &records,
        &mut by_name,
        &reachable,
        now.as_second(),
        cfg,
        &mut report,
    )
    .await;
    let recs = by_name.values().map(|r| r.as_ref());
    write_job_totals(hub, recs, &view.training, &view.inference, &mut report).await;
    Ok(report)
}

/// Checks a member's identity and reads its gpupool pods (from the watch when it holds them);
/// `None` (with an alert or a member error in `report`) when it cannot be metered this pass.
async fn read_member(
    hub: &Client,
    m: &MemberRef,
    obj: &MemberCluster,
    report: &mut MeterReport,
) -> Option<(String, Vec<Arc<Pod>>)> {
    let cluster_uid = match check_identity(hub, m, obj.cluster_id()).await {
        Ok((uid, fresh)) => {
            report.identities_recorded += usize::from(fresh);
            uid
        }
        Err(alert) => {
            report.alerts.push(alert);
            return None;
        }
    };
    let pods = match &m.pods {
        Some(pods) => pods.clone(),
        None => match m.link.managed_pods().await {
            Ok(items) => items.into_iter().map(Arc::new).collect(),
            Err(e) => {
                report.member_errors.push((m.name.clone(), e.to_string()));
                return None;
            }
        },
    };
    report.members_metered += 1;
    report.pods_seen += pods.len();
    Some((cluster_uid, pods))
}

/// Writing one member's usage into its records.
struct MemberPass<'a> {
    records: &'a Api<UsageRecord>,
    member: &'a MemberRef,
    cluster_uid: &'a str,
    now_s: i64,
    cfg: &'a MeterConfig,
    held: Option<&'a std::sync::Mutex<Held>>,
}

impl MemberPass<'_> {
    async fn write(
        &self,
        usage: super::MemberUsage,
        by_name: &mut BTreeMap<String, Arc<UsageRecord>>,
        touched: &mut BTreeSet<String>,
        report: &mut MeterReport,
    ) {
        let name = &self.member.name;
        for (reason, (secs, pods)) in &usage.unmatched {
            report.unpaid_gpu_seconds += secs;
            report
                .alerts
                .push(unmatched_alert(name, reason, *secs, pods));
        }
        let mut unpaid_here = 0i64;
        for ((job, period), u) in usage.by_job_period {
            unpaid_here += u.unpaid_gpu_seconds();
            let rname = record_name(name, &job.uid, period);
            touched.insert(rname.clone());
            let existing = by_name.get(&rname).map(|r| UsageRecord::clone(r));
            match self.upsert(&job, period, &u, existing, report).await {
                Ok(Some(r)) => {
                    by_name.insert(rname, Arc::new(r));
                }
                Ok(None) => {}
                Err(e) => report.errors.push(format!("usage record {rname}: {e:#}")),
            }
        }
        if unpaid_here > 0 {
            report.unpaid_gpu_seconds += unpaid_here;
            report.alerts.push(Alert {
                cluster: name.clone(),
                reason: "UnprovableUsage".into(),
                message: format!(
                    "pods of hub jobs claim {unpaid_here} GPU-seconds beyond their placements and the jobs' life on the hub; not paid (see unpaidGpuSeconds of the usage records)"
                ),
                gpu_seconds: unpaid_here,
            });
        }
    }

    /// Writes the held growth of this member's records no pod contributed to this pass (their
    /// pods are gone): the last values computed while they were there.
    async fn flush(
        &self,
        held: &std::sync::Mutex<Held>,
        touched: &BTreeSet<String>,
        by_name: &mut BTreeMap<String, Arc<UsageRecord>>,
        report: &mut MeterReport,
    ) {
        let names: Vec<String> = held
            .lock()
            .expect("held usage lock")
            .pending
            .keys()
            .filter(|n| !touched.contains(*n))
            .cloned()
            .collect();
        for name in names {
            let Some(rec) = by_name.get(&name).map(|r| UsageRecord::clone(r)) else {
                held.lock().expect("held usage lock").pending.remove(&name);
                continue;
            };
            if rec.spec.cluster != self.member.name {
                continue;
            }
            if state_of(&rec) != UsageState::Open {
                held.lock().expect("held usage lock").pending.remove(&name);
                continue;
            }
            let unpaid = rec.spec.unpaid_gpu_seconds;
            match self
                .grow(rec, &BTreeMap::new(), unpaid, false, report)
                .await
            {
                Ok(r) => {
                    by_name.insert(name, Arc::new(r));
                }
                Err(e) => report.errors.push(format!("usage record {name}: {e:#}")),
            }
        }
    }

    /// Creates or grows one record; returns the record as now stored.
    async fn upsert(
        &self,
        job: &JobRef,
        period: u64,
        usage: &JobPeriodUsage,
        existing: Option<UsageRecord>,
        report: &mut MeterReport,
    ) -> Result<Option<UsageRecord>> {
        let (_, end) = super::period_bounds(period, self.cfg.period_seconds);
        let closed = end.saturating_add(self.cfg.finalize_delay_seconds as i64) <= self.now_s;
        let fresh = entries(usage);
        let unpaid = usage.unpaid_gpu_seconds();
        let Some(rec) = existing else {
            return self
                .create(job, period, fresh, unpaid, closed, report)
                .await;
        };
        if state_of(&rec) != UsageState::Open {
            // Final or paid already: the spec is frozen (the API server refuses changes), and
            // anything more for this period can no longer be settled.
            let paid = rec
                .status
                .as_ref()
                .and_then(|s| s.settled_gpu_seconds)
                .unwrap_or(rec.spec.gpu_seconds);
            let total: i64 = merge_pods(&rec.spec.pods, &fresh)
                .values()
                .map(|p| p.gpu_seconds)
                .sum();
            report.late_gpu_seconds += (total - paid).max(0);
            return Ok(None);
        }
        let mut rec = self.grow(rec, &fresh, unpaid, closed, report).await?;
        if closed && state_of(&rec) == UsageState::Open {
            rec = set_state(self.records, &rec, UsageState::Final).await?;
            report.records_finalized += 1;
        }
        Ok(Some(rec))
    }

    /// The entries to write into `Open` record `rec` now (stored, held and fresh merged), or
    /// `None` to hold the growth for a later pass (see [`Held`]).
    fn hold(
        &self,
        rec: &UsageRecord,
        fresh: &BTreeMap<String, PodUsage>,
        closed: bool,
    ) -> Option<BTreeMap<String, PodUsage>> {
        let Some(held) = self.held else {
            return Some(merge_pods(&rec.spec.pods, fresh));
        };
        let mut held = held.lock().expect("held usage lock");
        let name = rec.name_any();
        let pending = held.pending.remove(&name).unwrap_or_default();
        let known = merge_pods(&rec.spec.pods, &pending);
        let merged = merge_pods(&known, fresh);
        // A slot seen before and not now (its pod gone), a new slot, a newly observed end.
        let changed = pending.keys().any(|k| !fresh.contains_key(k))
            || fresh.iter().any(|(k, p)| {
                rec.spec
                    .pods
                    .get(k)
                    .is_none_or(|o| p.observed_end.is_some() && o.observed_end.is_none())
            });
        let last = *held.written.entry(name.clone()).or_insert(self.now_s);
        let refresh = i64::try_from(self.cfg.record_refresh_seconds).unwrap_or(i64::MAX);
        if closed {
            held.written.remove(&name);
            return Some(merged);
        }
        if changed || self.now_s.saturating_sub(last) >= refresh {
            held.written.insert(name, self.now_s);
            return Some(merged);
        }
        held.pending.insert(name, merged);
        None
    }

    /// Merges fresh slot entries into an `Open` record (per slot, the maximum).
    async fn grow(
        &self,
        rec: UsageRecord,
        fresh: &BTreeMap<String, PodUsage>,
        unpaid: i64,
        closed: bool,
        report: &mut MeterReport,
    ) -> Result<UsageRecord> {
        let Some(merged) = self.hold(&rec, fresh, closed) else {
            return Ok(rec);
        };
        let unpaid = unpaid.max(rec.spec.unpaid_gpu_seconds);
        if merged == rec.spec.pods
            && unpaid == rec.spec.unpaid_gpu_seconds
            && self.cfg.seal.verify(&rec.spec)
        {
            return Ok(rec);
        }
        let mut rec = rec;
        let total: i64 = merged.values().map(|p| p.gpu_seconds).sum();
        // Never shrink (e.g. a record written by an older meter without per-slot detail).
        rec.spec.gpu_seconds = total.max(rec.spec.gpu_seconds);
        rec.spec.gpu_class = i32::from(super::dominant_class(
            merged
                .values()
                .map(|p| (p.gpu_model.as_deref(), p.gpu_seconds)),
        ));
        rec.spec.pods = merged;
        rec.spec.unpaid_gpu_seconds = unpaid;
        rec.spec.seal = Some(self.cfg.seal.seal(&rec.spec));
        // A replace guarded by the resourceVersion: what is sealed is exactly what is stored.
        let pp = PostParams {
            field_manager: Some(METER_FIELD_MANAGER.into()),
            ..Default::default()
        };
        let rec = self.records.replace(&rec.name_any(), &pp, &rec).await?;
        if !self.cfg.seal.verify(&rec.spec) {
            anyhow::bail!(
                "the stored spec of {} does not match its seal",
                rec.name_any()
            );
        }
        report.records_updated += 1;
        Ok(rec)
    }

    /// Creates the record of (member, job, period), `Final` at once when the period is closed.
    async fn create(
        &self,
        job: &JobRef,
        period: u64,
        fresh: BTreeMap<String, PodUsage>,
        unpaid: i64,
        closed: bool,
        report: &mut MeterReport,
    ) -> Result<Option<UsageRecord>> {
        let (start, end) = super::period_bounds(period, self.cfg.period_seconds);
        let mut spec = spec_from(
            self.member,
            self.cluster_uid,
            job,
            period,
            start,
            end,
            fresh,
            unpaid,
        );
        spec.seal = Some(self.cfg.seal.seal(&spec));
        let name = record_name(&self.member.name, &job.uid, period);
        let obj = UsageRecord {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/part-of".to_string(),
                        "gpupool".to_string(),
                    ),
                    (LABEL_RECORD_CLUSTER.to_string(), self.member.name.clone()),
                    (LABEL_JOB_UID.to_string(), job.uid.clone()),
                ])),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let pp = PostParams {
            field_manager: Some(METER_FIELD_MANAGER.into()),
            ..Default::default()
        };
        let created = match self.records.create(&pp, &obj).await {
            Ok(c) => c,
            // Someone else created it meanwhile: the next pass merges into it.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        report.records_created += 1;
        let state = if closed {
            report.records_finalized += 1;
            UsageState::Final
        } else {
            UsageState::Open
        };
        set_state(self.records, &created, state).await.map(Some)
    }
}

fn unmatched_alert(cluster: &str, reason: &str, secs: i64, pods: &[String]) -> Alert {
    let names: Vec<&str> = pods.iter().take(5).map(String::as_str).collect();
    Alert {
        cluster: cluster.to_string(),
        reason: reason.to_string(),
        message: format!(
            "{} pod(s) claim {secs} GPU-seconds {} (e.g. {}); not paid",
            pods.len(),
            if reason == "NoSuchHubJob" {
                "for jobs the hub does not have"
            } else {
                "outside their job's life on the hub"
            },
            names.join(", ")
        ),
        gpu_seconds: secs,
    }
}

/// A pass's slot entries as record entries.
fn entries(usage: &JobPeriodUsage) -> BTreeMap<String, PodUsage> {
    usage
        .pods
        .iter()
        .map(|(key, p)| {
            (
                key.clone(),
                PodUsage {
                    name: p.pod_name.clone(),
                    pod_uid: (!p.pod_uid.is_empty()).then(|| p.pod_uid.clone()),
                    observed_end: p.observed_end.map(time),
                    gpus: p.gpus as i64,
                    gpu_model: p.gpu_model.clone(),
                    gpu_seconds: p.gpu_seconds,
                    unpaid_reason: p
                        .unpaid_reason
                        .as_ref()
                        .map(|r| format!("{} GPU-seconds not paid: {r}", p.unpaid_gpu_seconds)),
                },
            )
        })
        .collect()
}

/// Records no pod contributed to this pass (pods deleted): finalized once their period is over.
async fn finalize_unseen(
    records: &Api<UsageRecord>,
    by_name: &mut BTreeMap<String, Arc<UsageRecord>>,
    reachable: &BTreeSet<String>,
    now_s: i64,
    cfg: &MeterConfig,
    report: &mut MeterReport,
) {
    let due: Vec<String> = by_name
        .iter()
        .filter(|(_, r)| reachable.contains(&r.spec.cluster) && state_of(r) == UsageState::Open)
        .filter(|(_, r)| {
            r.spec
                .period_end
                .0
                .as_second()
                .saturating_add(cfg.finalize_delay_seconds as i64)
                <= now_s
        })
        .map(|(n, _)| n.clone())
        .collect();
    for name in due {
        match set_state(records, &by_name[&name], UsageState::Final).await {
            Ok(r) => {
                report.records_finalized += 1;
                by_name.insert(name, Arc::new(r));
            }
            Err(e) => report.errors.push(format!("finalizing {name}: {e:#}")),
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn spec_from(
    member: &MemberRef,
    cluster_uid: &str,
    job: &JobRef,
    period: u64,
    start: i64,
    end: i64,
    pods: BTreeMap<String, PodUsage>,
    unpaid_gpu_seconds: i64,
) -> UsageRecordSpec {
    let gpu_seconds = pods.values().map(|p| p.gpu_seconds).sum();
    let gpu_class = super::dominant_class(
        pods.values()
            .map(|p| (p.gpu_model.as_deref(), p.gpu_seconds)),
    );
    UsageRecordSpec {
        cluster: member.name.clone(),
        cluster_uid: cluster_uid.to_string(),
        owner_wallet: member.owner_wallet.clone(),
        job_kind: job.kind.clone(),
        job_namespace: job.namespace.clone(),
        job_name: job.name.clone(),
        job_uid: job.uid.clone(),
        period: period as i64,
        period_start: time(start),
        period_end: time(end),
        gpu_seconds,
        gpu_class: gpu_class as i32,
        unpaid_gpu_seconds,
        pods,
        seal: None,
    }
}

/// Per-slot maximum of the stored and the freshly computed entries (on a tie the fresh one,
/// which carries the latest pod and its observed end); slots no longer seen keep their stored
/// value. Both sides are bounded by the slot's GPUs × its placement window as the meter saw
/// it, so the maximum never pays a slot more than that, however many pods claimed it.
fn merge_pods(
    stored: &BTreeMap<String, PodUsage>,
    fresh: &BTreeMap<String, PodUsage>,
) -> BTreeMap<String, PodUsage> {
    let mut out = stored.clone();
    for (key, p) in fresh {
        match out.get_mut(key) {
            Some(o) if o.gpu_seconds > p.gpu_seconds => {}
            Some(o) => *o = p.clone(),
            None => {
                out.insert(key.clone(), p.clone());
            }
        }
    }
    out
}

/// Writes `status.state` guarded by the record's resourceVersion (so a concurrent writer's
/// `Settled` is never overwritten).
async fn set_state(
    records: &Api<UsageRecord>,
    rec: &UsageRecord,
    state: UsageState,
) -> Result<UsageRecord> {
    let patch = json!({
        "metadata": {"resourceVersion": rec.resource_version()},
        "status": {"state": state},
    });
    Ok(records
        .patch_status(
            &rec.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await?)
}

/// Sum of records per job uid, written to each hub job whose uid still matches.
async fn write_job_totals<'a>(
    hub: &Client,
    records: impl Iterator<Item = &'a UsageRecord>,
    training: &[Arc<TrainingJob>],
    inference: &[Arc<InferenceJob>],
    report: &mut MeterReport,
) {
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    for r in records {
        *totals.entry(r.spec.job_uid.clone()).or_default() += r.spec.gpu_seconds;
    }
    if totals.is_empty() {
        return;
    }
    for j in training {
        let cur = j.status.as_ref().and_then(|s| s.gpu_seconds);
        apply_total(hub, "TrainingJob", j.as_ref(), cur, &totals, report).await;
    }
    for j in inference {
        let cur = j.status.as_ref().and_then(|s| s.gpu_seconds);
        apply_total(hub, "InferenceJob", j.as_ref(), cur, &totals, report).await;
    }
}

async fn apply_total<K>(
    hub: &Client,
    kind: &str,
    job: &K,
    current: Option<i64>,
    totals: &BTreeMap<String, i64>,
    report: &mut MeterReport,
) where
    K: kube::Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + serde::de::DeserializeOwned
        + std::fmt::Debug,
{
    let Some(uid) = job.meta().uid.as_deref() else {
        return;
    };
    let Some(total) = totals.get(uid).copied() else {
        return;
    };
    if current == Some(total) {
        return;
    }
    let ns = job.meta().namespace.clone().unwrap_or_default();
    let name = job.meta().name.clone().unwrap_or_default();
    let api: Api<K> = Api::namespaced(hub.clone(), &ns);
    let patch = json!({
        "apiVersion": "gpupool.io/v1alpha1",
        "kind": kind,
        "metadata": {"name": name, "namespace": ns},
        "status": {"gpuSeconds": total},
    });
    match api
        .patch_status(
            &name,
            &PatchParams::apply(METER_FIELD_MANAGER).force(),
            &Patch::Apply(&patch),
        )
        .await
    {
        Ok(_) => report.jobs_updated += 1,
        Err(e) => report
            .errors
            .push(format!("{kind} {ns}/{name} status.gpuSeconds: {e}")),
    }
}
