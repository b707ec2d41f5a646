//! One metering pass: member pods, bounded by the hub's own jobs → `UsageRecord`s in the hub →
//! jobs' `status.gpuSeconds`. See the [module docs](super) for what is paid.

use super::settle::Alert;
use super::{HubJob, JobPeriodUsage, JobRef, LABEL_JOB_UID, LABEL_RECORD_CLUSTER, Slot};
use crate::api::{
    InferenceJob, MemberCluster, PodUsage, TrainingJob, UsageRecord, UsageRecordSpec, UsageState,
};
use anyhow::{Context, Result};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::api::{Api, ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::json;
use std::collections::{BTreeMap, BTreeSet};

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
    /// Seconds a pod is paid past the instant the hub's watch first saw it end: room for clock
    /// skew between the member (which stamps `finishedAt`) and the hub (default 30 s).
    pub observed_end_slack_seconds: u64,
}

impl Default for MeterConfig {
    fn default() -> Self {
        MeterConfig {
            period_seconds: super::DEFAULT_PERIOD_SECONDS,
            finalize_delay_seconds: 60,
            observed_end_slack_seconds: 30,
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

/// The hub's view of every job, keyed by job uid (pure; see [`HubJob`]).
pub fn hub_jobs(training: &[TrainingJob], inference: &[InferenceJob]) -> BTreeMap<String, HubJob> {
    let mut out = BTreeMap::new();
    let secs = |t: &Time| t.0.as_second();
    for j in training {
        let (Some(uid), Some(created)) = (
            j.metadata.uid.clone(),
            j.metadata.creation_timestamp.as_ref(),
        ) else {
            continue;
        };
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
                .unwrap_or(secs(created));
            not_after.push(from.saturating_add(max));
        }
        let past: Vec<super::PastSlots> = st
            .map(|s| {
                s.past_placements
                    .iter()
                    .map(|p| super::PastSlots {
                        member: p.cluster.clone(),
                        slots: p
                            .workers
                            .iter()
                            .map(|w| Slot::new(&w.node, &w.gpu_uuids))
                            .collect(),
                        from: p.from.as_ref().map(secs),
                        until: secs(&p.until),
                    })
                    .collect()
            })
            .unwrap_or_default();
        let current_since = past.iter().map(|p| p.until).max();
        let mut slots = BTreeMap::new();
        if let Some(cluster) = st.and_then(|s| s.cluster.clone()) {
            let v: Vec<Slot> = st
                .map(|s| {
                    s.workers
                        .iter()
                        .map(|w| Slot::new(&w.node, &w.gpu_uuids))
                        .collect()
                })
                .unwrap_or_default();
            slots.insert(cluster, v);
        }
        out.insert(
            uid.clone(),
            HubJob {
                job: JobRef {
                    kind: "TrainingJob".into(),
                    namespace: j.namespace().unwrap_or_default(),
                    name: j.name_any(),
                    uid,
                },
                not_before: secs(created),
                not_after: not_after.into_iter().min(),
                slots,
                current_since,
                past,
                model: j.spec.gpu.model.clone(),
            },
        );
    }
    for j in inference {
        let (Some(uid), Some(created)) = (
            j.metadata.uid.clone(),
            j.metadata.creation_timestamp.as_ref(),
        ) else {
            continue;
        };
        let mut slots: BTreeMap<String, Vec<Slot>> = BTreeMap::new();
        for p in j.status.iter().flat_map(|s| s.placements.iter()) {
            slots
                .entry(p.cluster.clone())
                .or_default()
                .extend(p.gpus.iter().map(|g| Slot::new(&g.node, &g.gpu_uuids)));
        }
        out.insert(
            uid.clone(),
            HubJob {
                job: JobRef {
                    kind: "InferenceJob".into(),
                    namespace: j.namespace().unwrap_or_default(),
                    name: j.name_any(),
                    uid,
                },
                not_before: secs(created),
                not_after: j.metadata.deletion_timestamp.as_ref().map(secs),
                slots,
                current_since: None,
                // A replaced, moved or removed replica: its pod is paid until it left the
                // placements (the run since the last pass would otherwise go unpaid).
                past: j
                    .status
                    .iter()
                    .flat_map(|s| s.past_placements.iter())
                    .map(|p| super::PastSlots {
                        member: p.cluster.clone(),
                        slots: vec![Slot::new(&p.gpus.node, &p.gpus.gpu_uuids)],
                        from: None,
                        until: secs(&p.until),
                    })
                    .collect(),
                model: j.spec.gpu.model.clone(),
            },
        );
    }
    out
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
    let now_s = now.as_second();
    let mut report = MeterReport::default();
    let records: Api<UsageRecord> = Api::all(hub.clone());
    let mut by_name: BTreeMap<String, UsageRecord> = records
        .list(&ListParams::default())
        .await
        .context("listing UsageRecords in the hub")?
        .items
        .into_iter()
        .map(|r| (r.name_any(), r))
        .collect();
    let member_objs: BTreeMap<String, MemberCluster> = Api::<MemberCluster>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .context("listing MemberClusters in the hub")?
        .items
        .into_iter()
        .map(|m| (m.name_any(), m))
        .collect();
    let training = Api::<TrainingJob>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .context("listing TrainingJobs in the hub")?
        .items;
    let inference = Api::<InferenceJob>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .context("listing InferenceJobs in the hub")?
        .items;
    let jobs = hub_jobs(&training, &inference);

    let mut reachable = BTreeSet::new();
    for m in members {
        let Some(obj) = member_objs.get(&m.name) else {
            continue;
        };
        let recorded = obj.cluster_id();
        let cluster_uid = match check_identity(hub, m, recorded).await {
            Ok((uid, fresh)) => {
                if fresh {
                    report.identities_recorded += 1;
                }
                uid
            }
            Err(alert) => {
                report.alerts.push(alert);
                continue;
            }
        };
        let pods = match m.link.managed_pods().await {
            Ok(items) => items,
            Err(e) => {
                report.member_errors.push((m.name.clone(), e.to_string()));
                continue;
            }
        };
        reachable.insert(m.name.clone());
        report.members_metered += 1;
        report.pods_seen += pods.len();
        let usage = super::usage_by_job_period(
            &m.name,
            &pods,
            &jobs,
            super::HubObservations {
                gpu_models: &m.gpu_models,
                observed_ends: &m.observed_ends,
                end_slack_seconds: i64::try_from(cfg.observed_end_slack_seconds)
                    .unwrap_or(i64::MAX),
            },
            now_s,
            cfg.period_seconds,
        );
        for (reason, (secs, pods)) in &usage.unmatched {
            report.unpaid_gpu_seconds += secs;
            let mut names = pods.clone();
            names.truncate(5);
            report.alerts.push(Alert {
                cluster: m.name.clone(),
                reason: reason.clone(),
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
                gpu_seconds: *secs,
            });
        }
        let mut unpaid_here = 0i64;
        for ((job, period), u) in usage.by_job_period {
            unpaid_here += u.unpaid_gpu_seconds();
            let name = record_name(&m.name, &job.uid, period);
            let existing = by_name.get(&name).cloned();
            match upsert(
                &records,
                m,
                &cluster_uid,
                &job,
                period,
                &u,
                existing,
                now_s,
                cfg,
                &mut report,
            )
            .await
            {
                Ok(Some(r)) => {
                    by_name.insert(name, r);
                }
                Ok(None) => {}
                Err(e) => report.errors.push(format!("usage record {name}: {e:#}")),
            }
        }
        if unpaid_here > 0 {
            report.unpaid_gpu_seconds += unpaid_here;
            report.alerts.push(Alert {
                cluster: m.name.clone(),
                reason: "UnprovableUsage".into(),
                message: format!(
                    "pods of hub jobs claim {unpaid_here} GPU-seconds beyond their placements and the jobs' life on the hub; not paid (see unpaidGpuSeconds of the usage records)"
                ),
                gpu_seconds: unpaid_here,
            });
        }
    }

    // Records no pod contributed to this pass (pods deleted): finalize when their period is over.
    let names: Vec<String> = by_name.keys().cloned().collect();
    for name in names {
        let r = &by_name[&name];
        if !reachable.contains(&r.spec.cluster) || state_of(r) != UsageState::Open {
            continue;
        }
        let end = r.spec.period_end.0.as_second();
        if end.saturating_add(cfg.finalize_delay_seconds as i64) > now_s {
            continue;
        }
        match set_state(&records, r, UsageState::Final).await {
            Ok(r) => {
                report.records_finalized += 1;
                by_name.insert(name, r);
            }
            Err(e) => report.errors.push(format!("finalizing {name}: {e:#}")),
        }
    }

    write_job_totals(hub, by_name.values(), &mut report).await;
    Ok(report)
}

/// Creates or grows one record; returns the record as now stored.
#[allow(clippy::too_many_arguments)]
async fn upsert(
    records: &Api<UsageRecord>,
    member: &MemberRef,
    cluster_uid: &str,
    job: &JobRef,
    period: u64,
    usage: &JobPeriodUsage,
    existing: Option<UsageRecord>,
    now_s: i64,
    cfg: &MeterConfig,
    report: &mut MeterReport,
) -> Result<Option<UsageRecord>> {
    let (start, end) = super::period_bounds(period, cfg.period_seconds);
    let closed = end.saturating_add(cfg.finalize_delay_seconds as i64) <= now_s;
    let fresh: BTreeMap<String, PodUsage> = usage
        .pods
        .iter()
        .map(|(uid, p)| {
            (
                uid.clone(),
                PodUsage {
                    name: p.pod_name.clone(),
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
        .collect();

    let unpaid = usage.unpaid_gpu_seconds();
    let Some(mut rec) = existing else {
        let spec = spec_from(member, cluster_uid, job, period, start, end, fresh, unpaid);
        let name = record_name(&member.name, &job.uid, period);
        let obj = UsageRecord {
            metadata: ObjectMeta {
                name: Some(name.clone()),
                labels: Some(BTreeMap::from([
                    (
                        "app.kubernetes.io/part-of".to_string(),
                        "gpupool".to_string(),
                    ),
                    (LABEL_RECORD_CLUSTER.to_string(), member.name.clone()),
                    (LABEL_JOB_UID.to_string(), job.uid.clone()),
                ])),
                ..Default::default()
            },
            spec,
            status: None,
        };
        let created = match records
            .create(
                &PostParams {
                    field_manager: Some(METER_FIELD_MANAGER.into()),
                    ..Default::default()
                },
                &obj,
            )
            .await
        {
            Ok(c) => c,
            // Someone else created it meanwhile: the next pass merges into it.
            Err(kube::Error::Api(e)) if e.code == 409 => return Ok(None),
            Err(e) => return Err(e.into()),
        };
        report.records_created += 1;
        let state = if closed {
            UsageState::Final
        } else {
            UsageState::Open
        };
        if closed {
            report.records_finalized += 1;
        }
        return set_state(records, &created, state).await.map(Some);
    };

    if state_of(&rec) != UsageState::Open {
        // Final or paid already: the spec is frozen (the API server refuses changes), and
        // anything more for this period can no longer be settled.
        let paid = rec
            .status
            .as_ref()
            .and_then(|s| s.settled_gpu_seconds)
            .unwrap_or(rec.spec.gpu_seconds);
        let merged = merge_pods(&rec.spec.pods, &fresh);
        let total: i64 = merged.values().map(|p| p.gpu_seconds).sum();
        if total > paid {
            report.late_gpu_seconds += total - paid;
        }
        return Ok(None);
    }

    let merged = merge_pods(&rec.spec.pods, &fresh);
    let unpaid = unpaid.max(rec.spec.unpaid_gpu_seconds);
    if merged != rec.spec.pods || unpaid != rec.spec.unpaid_gpu_seconds {
        let total: i64 = merged.values().map(|p| p.gpu_seconds).sum();
        // Never shrink (e.g. a record written by an older meter without per-pod detail).
        let total = total.max(rec.spec.gpu_seconds);
        let class = super::dominant_class(
            merged
                .values()
                .map(|p| (p.gpu_model.as_deref(), p.gpu_seconds)),
        );
        let patch = json!({
            "metadata": {"resourceVersion": rec.resource_version()},
            "spec": {"pods": merged, "gpuSeconds": total, "gpuClass": class, "unpaidGpuSeconds": unpaid},
        });
        rec = records
            .patch(
                &rec.name_any(),
                &PatchParams::default(),
                &Patch::Merge(&patch),
            )
            .await?;
        report.records_updated += 1;
    }
    if closed && state_of(&rec) == UsageState::Open {
        rec = set_state(records, &rec, UsageState::Final).await?;
        report.records_finalized += 1;
    }
    Ok(Some(rec))
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
    }
}

/// Per-pod maximum of the stored and the freshly computed contributions; pods no longer seen
/// keep their stored value. Both sides are bounded by the hub's placements and the job's life
/// as the meter saw them, so the maximum never pays a pod more than the hub observed.
fn merge_pods(
    stored: &BTreeMap<String, PodUsage>,
    fresh: &BTreeMap<String, PodUsage>,
) -> BTreeMap<String, PodUsage> {
    let mut out = stored.clone();
    for (uid, p) in fresh {
        match out.get_mut(uid) {
            Some(o) if o.gpu_seconds >= p.gpu_seconds => {}
            Some(o) => *o = p.clone(),
            None => {
                out.insert(uid.clone(), p.clone());
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
    report: &mut MeterReport,
) {
    let mut totals: BTreeMap<String, i64> = BTreeMap::new();
    let mut kinds: BTreeSet<String> = BTreeSet::new();
    for r in records {
        *totals.entry(r.spec.job_uid.clone()).or_default() += r.spec.gpu_seconds;
        kinds.insert(r.spec.job_kind.clone());
    }
    if totals.is_empty() {
        return;
    }
    if kinds.contains("TrainingJob") {
        let api: Api<TrainingJob> = Api::all(hub.clone());
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for j in list.items {
                    let cur = j.status.as_ref().and_then(|s| s.gpu_seconds);
                    apply_total(hub, "TrainingJob", &j, cur, &totals, report).await;
                }
            }
            Err(e) => report.errors.push(format!("listing TrainingJobs: {e}")),
        }
    }
    if kinds.contains("InferenceJob") {
        let api: Api<InferenceJob> = Api::all(hub.clone());
        match api.list(&ListParams::default()).await {
            Ok(list) => {
                for j in list.items {
                    let cur = j.status.as_ref().and_then(|s| s.gpu_seconds);
                    apply_total(hub, "InferenceJob", &j, cur, &totals, report).await;
                }
            }
            Err(e) => report.errors.push(format!("listing InferenceJobs: {e}")),
        }
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
