//! The soak's invariants, read from the hub and the members as they are (labels, not namespace
//! names: pods are found by `app.kubernetes.io/managed-by=gpupool` and `gpupool.io/job-uid`).

use super::NAMESPACE;
use anyhow::Result;
use gpupool::api::{InferenceJob, InferencePhase, TrainingJob, TrainingPhase, UsageRecord};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams};
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::time::{Duration, Instant};

const MANAGED: &str = "app.kubernetes.io/managed-by=gpupool";
const JOB_UID: &str = "gpupool.io/job-uid";

/// Clients of the hub and the members (by MemberCluster name).
pub struct Clients {
    /// The hub.
    pub hub: kube::Client,
    /// The members.
    pub members: Vec<(String, kube::Client)>,
}

/// One broken invariant.
#[derive(Clone, Debug)]
pub struct Violation {
    /// Seconds after the checks started.
    pub at_secs: f64,
    /// Which invariant.
    pub kind: &'static str,
    /// What was seen.
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:>7.1}s {}: {}", self.at_secs, self.kind, self.detail)
    }
}

/// A gpupool pod in a member, as the checks need it.
#[derive(Clone, Debug)]
struct MemberPod {
    member: String,
    key: String,
    job_uid: String,
    phase: String,
    deleting: bool,
    uuids: Vec<String>,
}

impl MemberPod {
    fn live(&self) -> bool {
        !matches!(self.phase.as_str(), "Succeeded" | "Failed")
    }
}

/// What one check read.
#[derive(Default)]
struct Snapshot {
    training: Vec<TrainingJob>,
    inference: Vec<InferenceJob>,
    pods: Vec<MemberPod>,
    /// Members whose pods could not be read (down): their jobs are not judged this time.
    unreadable: BTreeSet<String>,
}

/// Runs the checks and keeps the violations and the clocks of conditions allowed a bound.
pub struct Checker {
    c: Clients,
    bound: Duration,
    t0: Instant,
    violations: Vec<Violation>,
    reported: BTreeSet<String>,
    unhealthy: HashMap<String, Instant>,
    orphans: HashMap<String, Instant>,
    max_gpus: HashMap<String, i64>,
}

impl Checker {
    /// A checker over `c`; conditions allowed `bound` before they count.
    pub fn new(c: Clients, bound: Duration) -> Self {
        Checker {
            c,
            bound,
            t0: Instant::now(),
            violations: Vec::new(),
            reported: BTreeSet::new(),
            unhealthy: HashMap::new(),
            orphans: HashMap::new(),
            max_gpus: HashMap::new(),
        }
    }

    /// The violations found so far.
    pub fn into_violations(self) -> Vec<Violation> {
        self.violations
    }

    /// The violations found so far.
    pub fn violations(&self) -> &[Violation] {
        &self.violations
    }

    fn violate(&mut self, key: String, kind: &'static str, detail: String) {
        if self.reported.insert(key) {
            tracing::warn!(kind, %detail, "invariant violated");
            self.violations.push(Violation {
                at_secs: self.t0.elapsed().as_secs_f64(),
                kind,
                detail,
            });
        }
    }

    /// One pass over every invariant. `strict`: after quiescing, a job not settled now counts
    /// at once.
    pub async fn check(&mut self, strict: bool) {
        let snap = match self.snapshot().await {
            Ok(s) => s,
            Err(e) => {
                tracing::info!(error = %format!("{e:#}"), "hub not readable; check skipped");
                return;
            }
        };
        self.check_hub_placements(&snap);
        self.check_member_gpus(&snap);
        self.check_claims().await;
        self.check_jobs(&snap, strict);
        self.check_orphans(&snap);
        if let Err(e) = self.check_money().await {
            tracing::info!(error = %e, "usage records not readable");
        }
    }

    async fn snapshot(&mut self) -> Result<Snapshot> {
        let tjs: Api<TrainingJob> = Api::all(self.c.hub.clone());
        let first = tjs.list(&ListParams::default()).await?.items;
        let inference = Api::<InferenceJob>::all(self.c.hub.clone())
            .list(&ListParams::default())
            .await?
            .items;
        // A training job counts only as seen twice alike around the inference list: the two
        // lists are not one snapshot, and a GPU moving between them is no double assignment.
        let second = tjs.list(&ListParams::default()).await?.items;
        let before: HashMap<String, TrainingJob> = first
            .into_iter()
            .map(|j| (j.uid().unwrap_or_default(), j))
            .collect();
        let training = second
            .into_iter()
            .filter(|j| {
                before
                    .get(&j.uid().unwrap_or_default())
                    .is_some_and(|b| b.status == j.status)
            })
            .collect();
        let mut snap = Snapshot {
            training,
            inference,
            ..Default::default()
        };
        for (name, client) in &self.c.members {
            match member_pods(name, client).await {
                Ok(p) => snap.pods.extend(p),
                Err(_) => {
                    snap.unreadable.insert(name.clone());
                }
            }
        }
        for j in &snap.training {
            let s = &j.spec;
            self.note_gpus(j.uid(), i64::from(s.workers * s.gpus_per_worker));
        }
        for j in &snap.inference {
            let s = &j.spec;
            self.note_gpus(j.uid(), i64::from((s.replicas + 1) * s.gpus_per_replica));
        }
        Ok(snap)
    }

    fn note_gpus(&mut self, uid: Option<String>, gpus: i64) {
        let e = self.max_gpus.entry(uid.unwrap_or_default()).or_default();
        *e = (*e).max(gpus);
    }

    /// No GPU UUID in two current hub placements.
    fn check_hub_placements(&mut self, snap: &Snapshot) {
        let mut holders: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
        for j in &snap.training {
            let Some(st) = &j.status else { continue };
            if matches!(st.phase, TrainingPhase::Succeeded | TrainingPhase::Failed) {
                continue;
            }
            for w in &st.workers {
                for u in &w.gpu_uuids {
                    holders.entry(u.clone()).or_default().insert(format!(
                        "{} rank {}",
                        job_key("TrainingJob", j),
                        w.rank
                    ));
                }
            }
        }
        // Per replica (cluster, position, revision): two replicas of one job on one GPU count too.
        for j in &snap.inference {
            for p in j.status.iter().flat_map(|s| &s.placements) {
                for (i, g) in p.gpus.iter().enumerate() {
                    let replica = format!(
                        "{} replica {} on {} (revision {})",
                        job_key("InferenceJob", j),
                        p.replicas.get(i).map_or("?".into(), |r| r.to_string()),
                        p.cluster,
                        g.revision
                    );
                    for u in &g.gpu_uuids {
                        holders
                            .entry(u.clone())
                            .or_default()
                            .insert(replica.clone());
                    }
                }
            }
        }
        for (uuid, jobs) in holders.into_iter().filter(|(_, j)| j.len() > 1) {
            let jobs: Vec<String> = jobs.into_iter().collect();
            self.violate(
                format!("hub-gpu/{uuid}/{jobs:?}"),
                "GPU in two hub placements",
                format!("{uuid} placed for {}", jobs.join(" and ")),
            );
        }
    }

    /// No GPU UUID in two live pods of a member (a terminating pod still holds its GPUs).
    fn check_member_gpus(&mut self, snap: &Snapshot) {
        let mut holders: BTreeMap<(String, String), BTreeSet<String>> = BTreeMap::new();
        for p in snap.pods.iter().filter(|p| p.live()) {
            for u in &p.uuids {
                holders
                    .entry((p.member.clone(), u.clone()))
                    .or_default()
                    .insert(p.key.clone());
            }
        }
        for ((member, uuid), pods) in holders.into_iter().filter(|(_, p)| p.len() > 1) {
            let pods: Vec<String> = pods.into_iter().collect();
            self.violate(
                format!("member-gpu/{member}/{uuid}/{pods:?}"),
                "GPU in two live pods of a member",
                format!("{member}: {uuid} in {}", pods.join(" and ")),
            );
        }
    }

    /// On DRA members: no device in two allocated claims, and a gpupool pod's claim allocated
    /// exactly the GPUs the hub chose (its annotation).
    async fn check_claims(&mut self) {
        for (member, client) in self.c.members.clone() {
            let Ok(claims) = Api::<ResourceClaim>::all(client.clone())
                .list(&ListParams::default())
                .await
            else {
                continue;
            };
            let mut holders: BTreeMap<String, Vec<String>> = BTreeMap::new();
            for c in &claims.items {
                let (_, uuids) = crate::allocated_uuids(c);
                for u in uuids {
                    holders.entry(u).or_default().push(format!(
                        "{}/{}",
                        c.namespace().unwrap_or_default(),
                        c.name_any()
                    ));
                }
            }
            for (uuid, cs) in holders.into_iter().filter(|(_, c)| c.len() > 1) {
                self.violate(
                    format!("claim-gpu/{member}/{uuid}/{cs:?}"),
                    "GPU in two claims of a member",
                    format!("{member}: {uuid} allocated to {}", cs.join(" and ")),
                );
            }
        }
    }

    /// Every job Running (pods running in the member), Pending with a reason, or finished (no
    /// live pod) — or on its way there for less than the bound.
    fn check_jobs(&mut self, snap: &Snapshot, strict: bool) {
        let mut by_job: HashMap<&str, Vec<&MemberPod>> = HashMap::new();
        for p in &snap.pods {
            by_job.entry(p.job_uid.as_str()).or_default().push(p);
        }
        let mut verdicts: Vec<(String, String, Option<String>, Vec<String>)> = Vec::new();
        for j in &snap.training {
            let uid = j.uid().unwrap_or_default();
            let pods = by_job
                .get(uid.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let st = j.status.clone().unwrap_or_default();
            let clusters = st.cluster.iter().cloned().collect();
            verdicts.push((
                uid,
                job_key("TrainingJob", j),
                training_health(j, pods),
                clusters,
            ));
        }
        for j in &snap.inference {
            let uid = j.uid().unwrap_or_default();
            let pods = by_job
                .get(uid.as_str())
                .map(Vec::as_slice)
                .unwrap_or_default();
            let clusters = j
                .status
                .iter()
                .flat_map(|s| &s.placements)
                .map(|p| p.cluster.clone())
                .collect();
            verdicts.push((
                uid,
                job_key("InferenceJob", j),
                inference_health(j, pods),
                clusters,
            ));
        }
        let now = Instant::now();
        let mut still = HashMap::new();
        for (uid, key, why, clusters) in verdicts {
            let Some(why) = why else { continue };
            let since = self.unhealthy.get(&uid).copied().unwrap_or(now);
            if clusters
                .iter()
                .any(|c: &String| snap.unreadable.contains(c))
                && !strict
            {
                still.insert(uid, since);
                continue;
            }
            if strict || now.duration_since(since) > self.bound {
                let secs = now.duration_since(since).as_secs();
                self.violate(
                    format!("job/{uid}/{}", since.duration_since(self.t0).as_secs()),
                    "job not settled within the bound",
                    format!("{key}: {why} (for {secs}s)"),
                );
            }
            still.insert(uid, since);
        }
        self.unhealthy = still;
    }

    /// No live pod of a job the hub does not have, beyond the bound.
    fn check_orphans(&mut self, snap: &Snapshot) {
        let uids: BTreeSet<String> = snap
            .training
            .iter()
            .filter_map(|j| j.uid())
            .chain(snap.inference.iter().filter_map(|j| j.uid()))
            .collect();
        // Training jobs left out of the snapshot (changed between the two lists) are not known
        // to be gone; their pods are not judged this time.
        let now = Instant::now();
        let mut still = HashMap::new();
        for p in snap
            .pods
            .iter()
            .filter(|p| p.live() && !uids.contains(&p.job_uid))
        {
            let since = self.orphans.get(&p.key).copied().unwrap_or(now);
            still.insert(p.key.clone(), since);
            if now.duration_since(since) > self.bound {
                self.violate(
                    format!("orphan/{}", p.key),
                    "pod outlived its job",
                    format!(
                        "{} (job uid {}) for {}s",
                        p.key,
                        p.job_uid,
                        now.duration_since(since).as_secs()
                    ),
                );
            }
        }
        self.orphans = still;
    }

    /// One record per job, member and period; a record's GPU-seconds at most the period's
    /// length × the job's GPUs; settled at most what was recorded.
    async fn check_money(&mut self) -> Result<()> {
        let recs = Api::<UsageRecord>::all(self.c.hub.clone())
            .list(&ListParams::default())
            .await?
            .items;
        let mut keys: BTreeMap<(String, String, i64), Vec<String>> = BTreeMap::new();
        for r in &recs {
            let s = &r.spec;
            keys.entry((s.job_uid.clone(), s.cluster.clone(), s.period))
                .or_default()
                .push(r.name_any());
            let len = (s.period_end.0.as_second() - s.period_start.0.as_second()).max(0);
            if let Some(gpus) = self.max_gpus.get(&s.job_uid)
                && s.gpu_seconds > len * gpus
            {
                self.violate(
                    format!("money/placed/{}", r.name_any()),
                    "paid more than placed",
                    format!(
                        "{}: {} GPU-s in a {len}s period for at most {gpus} GPUs",
                        r.name_any(),
                        s.gpu_seconds
                    ),
                );
            }
            let settled = r.status.as_ref().and_then(|st| st.settled_gpu_seconds);
            if settled.is_some_and(|v| v > s.gpu_seconds) {
                self.violate(
                    format!("money/settled/{}", r.name_any()),
                    "settled more than recorded",
                    format!(
                        "{}: settled {settled:?} of {} GPU-s",
                        r.name_any(),
                        s.gpu_seconds
                    ),
                );
            }
        }
        for ((uid, cluster, period), names) in keys.into_iter().filter(|(_, n)| n.len() > 1) {
            self.violate(
                format!("money/dup/{uid}/{cluster}/{period}"),
                "two usage records for one job, member and period",
                names.join(", "),
            );
        }
        Ok(())
    }

    /// Deletes every job in the soak namespace (the final sweep).
    pub async fn delete_all_jobs(&self) -> Result<()> {
        let dp = DeleteParams::default();
        let lp = ListParams::default();
        Api::<TrainingJob>::namespaced(self.c.hub.clone(), NAMESPACE)
            .delete_collection(&dp, &lp)
            .await?;
        Api::<InferenceJob>::namespaced(self.c.hub.clone(), NAMESPACE)
            .delete_collection(&dp, &lp)
            .await?;
        Ok(())
    }

    /// Whether the sweep is done: no job on the hub, no gpupool pod in any member.
    pub async fn swept(&self) -> bool {
        let (jobs, pods) = self.leftovers().await;
        jobs.is_empty() && pods.is_empty()
    }

    async fn leftovers(&self) -> (Vec<String>, Vec<String>) {
        let lp = ListParams::default();
        let mut jobs = Vec::new();
        if let Ok(l) = Api::<TrainingJob>::all(self.c.hub.clone()).list(&lp).await {
            jobs.extend(l.items.iter().map(|j| job_key("TrainingJob", j)));
        }
        if let Ok(l) = Api::<InferenceJob>::all(self.c.hub.clone()).list(&lp).await {
            jobs.extend(l.items.iter().map(|j| job_key("InferenceJob", j)));
        }
        let mut pods = Vec::new();
        for (name, client) in &self.c.members {
            match member_pods(name, client).await {
                Ok(ps) => pods.extend(ps.into_iter().map(|p| p.key)),
                Err(e) => pods.push(format!("{name}: unreadable ({e})")),
            }
        }
        (jobs, pods)
    }

    /// After the sweep's bound: every job still on the hub and every gpupool pod left is a
    /// violation.
    pub async fn check_sweep(&mut self) {
        let (jobs, pods) = self.leftovers().await;
        for j in jobs {
            self.violate(format!("sweep-job/{j}"), "deleted job still on the hub", j);
        }
        for p in pods {
            self.violate(format!("sweep-pod/{p}"), "orphan pod after the sweep", p);
        }
    }
}

fn job_key<K: ResourceExt>(kind: &str, j: &K) -> String {
    format!(
        "{kind} {}/{}",
        j.namespace().unwrap_or_default(),
        j.name_any()
    )
}

async fn member_pods(member: &str, client: &kube::Client) -> Result<Vec<MemberPod>> {
    let pods = Api::<Pod>::all(client.clone())
        .list(&ListParams::default().labels(MANAGED))
        .await?
        .items;
    Ok(pods
        .iter()
        .map(|p| MemberPod {
            member: member.to_string(),
            key: format!(
                "{member}/{}/{}",
                p.namespace().unwrap_or_default(),
                p.name_any()
            ),
            job_uid: p.labels().get(JOB_UID).cloned().unwrap_or_default(),
            phase: p
                .status
                .as_ref()
                .and_then(|s| s.phase.clone())
                .unwrap_or_default(),
            deleting: p.metadata.deletion_timestamp.is_some(),
            uuids: gpupool::meta::assigned_gpus(&p.metadata),
        })
        .collect())
}

/// Why a training job is not settled on hub and member alike (`None`: it is).
fn training_health(j: &TrainingJob, pods: &[&MemberPod]) -> Option<String> {
    if j.metadata.deletion_timestamp.is_some() {
        return Some("being deleted".into());
    }
    let st = j.status.clone().unwrap_or_default();
    let live = pods.iter().filter(|p| p.live()).count();
    let running = pods
        .iter()
        .filter(|p| p.phase == "Running" && !p.deleting)
        .count();
    match st.phase {
        TrainingPhase::Succeeded | TrainingPhase::Failed if live > 0 => {
            Some(format!("{:?} with {live} live pods", st.phase))
        }
        TrainingPhase::Succeeded | TrainingPhase::Failed => None,
        TrainingPhase::Running if running as i32 == j.spec.workers => None,
        TrainingPhase::Running => Some(format!(
            "Running on the hub, {running}/{} pods running",
            j.spec.workers
        )),
        TrainingPhase::Pending if st.pending_reason.is_some() || st.message.is_some() => None,
        TrainingPhase::Pending => Some("Pending without a reason".into()),
        // A gang restarting waits in the queue like a pending one: with its reason.
        TrainingPhase::Restarting if st.pending_reason.is_some() => None,
        p => Some(format!("{p:?}")),
    }
}

/// Why an inference job is not settled on hub and member alike (`None`: it is).
fn inference_health(j: &InferenceJob, pods: &[&MemberPod]) -> Option<String> {
    if j.metadata.deletion_timestamp.is_some() {
        return Some("being deleted".into());
    }
    let st = j.status.clone().unwrap_or_default();
    let running = pods
        .iter()
        .filter(|p| p.phase == "Running" && !p.deleting)
        .count() as i32;
    // `observedGeneration` of an InferenceJob means realized: it lags while a change waits for
    // GPUs. Waiting is fine when the scheduler has answered this very generation with a reason.
    let stale = st
        .observed_generation
        .is_some_and(|g| Some(g) < j.metadata.generation);
    let waiting = st.pending_reason.is_some()
        && st.conditions.iter().any(|c| {
            c.type_ == "Scheduled"
                && c.status == "False"
                && c.observed_generation == j.metadata.generation
        });
    match st.phase {
        _ if stale && !waiting => Some("spec change not observed".into()),
        InferencePhase::Running if running >= j.spec.replicas => None,
        InferencePhase::Running => Some(format!(
            "Running on the hub, {running}/{} pods running",
            j.spec.replicas
        )),
        InferencePhase::Pending | InferencePhase::Degraded if st.pending_reason.is_some() => None,
        p => Some(format!("{p:?}")),
    }
}
