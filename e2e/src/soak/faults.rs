//! The fault process: every 20–60 s (configurable) one fault, picked by weight — the leading
//! operator replica SIGKILLed, a member's API server stopped for 10–40 s, the hub's API server
//! restarted, the pull member's agent SIGKILLed, a gpupool pod deleted in a member behind
//! gpupool's back — and the time until the pool recovered from it, measured and recorded.
//!
//! Recovery: a leader kill — another replica holds the lease; a hub restart — the hub answers and
//! a leader renewed the lease after the restart; a member outage or agent kill — a one-GPU probe
//! job pinned to that member runs; a pod deletion — the pod's job runs again (or finished).

use super::pool::{LEASE, Targets, hold_path};
use super::{NAMESPACE, Rng, SOAK_LABEL};
use crate::OPERATOR_NAMESPACE;
use anyhow::{Context as _, Result, bail};
use gpupool::api::{TrainingJob, TrainingPhase};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde::{Deserialize, Serialize};
use std::fmt;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// How long a fault may take to recover before it counts as not recovered.
pub const RECOVERY_LIMIT: Duration = Duration::from_secs(150);

/// A kind of fault.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum FaultKind {
    /// SIGKILL of the replica holding the leader lease.
    LeaderKill,
    /// A member's API server killed and kept down 10–40 s.
    MemberApi,
    /// The hub's API server killed and started again at once.
    HubRestart,
    /// SIGKILL of the pull member's agent.
    AgentKill,
    /// A gpupool pod deleted in a member by someone else.
    PodDelete,
}

impl FaultKind {
    /// Every kind.
    pub const ALL: [FaultKind; 5] = [
        FaultKind::LeaderKill,
        FaultKind::MemberApi,
        FaultKind::HubRestart,
        FaultKind::AgentKill,
        FaultKind::PodDelete,
    ];

    fn name(self) -> &'static str {
        match self {
            FaultKind::LeaderKill => "leader-kill",
            FaultKind::MemberApi => "member-api",
            FaultKind::HubRestart => "hub-restart",
            FaultKind::AgentKill => "agent-kill",
            FaultKind::PodDelete => "pod-delete",
        }
    }
}

impl fmt::Display for FaultKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// Relative weights of the fault kinds.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FaultMix(pub Vec<(FaultKind, u64)>);

impl Default for FaultMix {
    /// Roughly the mix of the soak that found the violations: pod deletions most often.
    fn default() -> Self {
        FaultMix(vec![
            (FaultKind::LeaderKill, 2),
            (FaultKind::MemberApi, 3),
            (FaultKind::HubRestart, 1),
            (FaultKind::AgentKill, 2),
            (FaultKind::PodDelete, 4),
        ])
    }
}

impl fmt::Display for FaultMix {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.0.iter().all(|(_, w)| *w == 0) {
            return f.write_str("none");
        }
        let parts: Vec<String> = self.0.iter().map(|(k, w)| format!("{k}={w}")).collect();
        f.write_str(&parts.join(","))
    }
}

impl std::str::FromStr for FaultMix {
    type Err = String;

    /// `none`, or `kind=weight,…` with kinds `leader-kill`, `member-api`, `hub-restart`,
    /// `agent-kill`, `pod-delete` (a kind named without a weight has weight 1).
    fn from_str(s: &str) -> Result<Self, String> {
        if s.trim() == "none" {
            return Ok(FaultMix(Vec::new()));
        }
        let mut mix = Vec::new();
        for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
            let (k, w) = part.split_once('=').unwrap_or((part, "1"));
            let kind = FaultKind::ALL
                .into_iter()
                .find(|f| f.name() == k)
                .ok_or_else(|| {
                    let known: Vec<&str> = FaultKind::ALL.iter().map(|f| f.name()).collect();
                    format!("unknown fault {k:?} (known: {}, or none)", known.join(", "))
                })?;
            let w = w
                .parse::<u64>()
                .map_err(|_| format!("fault weight {w:?} of {k} is not a whole number"))?;
            mix.push((kind, w));
        }
        Ok(FaultMix(mix))
    }
}

/// One injected fault.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct FaultRecord {
    /// What.
    pub kind: FaultKind,
    /// Which process, cluster or pod.
    pub target: String,
    /// Seconds after the fault process started.
    pub at_secs: f64,
    /// Seconds the fault lasted (an API server held down).
    pub held_secs: f64,
    /// Seconds from the end of the fault until the pool recovered; `None`: not within
    /// [`RECOVERY_LIMIT`].
    pub recovery_secs: Option<f64>,
}

/// Arguments of the fault process.
#[derive(Clone, Debug)]
pub struct FaultArgs {
    /// Run directory (targets; records appended to `faults.jsonl`).
    pub dir: PathBuf,
    /// Seed.
    pub seed: u64,
    /// How long to inject faults.
    pub duration: Duration,
    /// Which faults.
    pub mix: FaultMix,
    /// Seconds between faults (uniform in this range).
    pub every: (u64, u64),
}

/// Milliseconds since the Unix epoch.
pub fn unix_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis())
        .unwrap_or(0)
}

/// Injects faults until the time is up; each recorded in `<dir>/faults.jsonl`.
pub async fn run_faults(args: FaultArgs) -> Result<()> {
    let mut rng = Rng::new(args.seed.wrapping_add(1));
    let t0 = Instant::now();
    let end = t0 + args.duration;
    let weights: Vec<u64> = args.mix.0.iter().map(|(_, w)| *w).collect();
    std::fs::write(records_path(&args.dir), "")?;
    let mut n = 0;
    loop {
        let wait = Duration::from_secs(rng.range(args.every.0, args.every.1));
        if Instant::now() + wait >= end {
            break;
        }
        tokio::time::sleep(wait).await;
        let Some(i) = rng.weighted(&weights) else {
            continue;
        };
        n += 1;
        let kind = args.mix.0[i].0;
        let at_secs = t0.elapsed().as_secs_f64();
        let rec = match inject(&args.dir, kind, &mut rng, n).await {
            Ok((target, held_secs, recovery_secs)) => FaultRecord {
                kind,
                target,
                at_secs,
                held_secs,
                recovery_secs,
            },
            Err(e) => {
                tracing::warn!(%kind, error = %format!("{e:#}"), "fault could not be injected");
                continue;
            }
        };
        tracing::info!(?rec, "fault");
        let mut line = serde_json::to_string(&rec)?;
        line.push('\n');
        use std::io::Write;
        std::fs::File::options()
            .append(true)
            .open(records_path(&args.dir))?
            .write_all(line.as_bytes())?;
    }
    Ok(())
}

fn records_path(dir: &Path) -> PathBuf {
    dir.join("faults.jsonl")
}

/// The faults the fault process recorded.
pub fn read_records(dir: &Path) -> Result<Vec<FaultRecord>> {
    let text = std::fs::read_to_string(records_path(dir)).unwrap_or_default();
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|l| serde_json::from_str(l).context("a fault record"))
        .collect()
}

/// Injects one fault; returns (target, seconds held, recovery seconds).
async fn inject(
    dir: &Path,
    kind: FaultKind,
    rng: &mut Rng,
    n: u32,
) -> Result<(String, f64, Option<f64>)> {
    let t = Targets::read(dir)?;
    let hub_kc = &t.cluster("hub").context("hub target")?.kubeconfig;
    let hub = super::churn::client(hub_kc).await?;
    match kind {
        FaultKind::LeaderKill => {
            let holder = lease_holder(&hub).await?.context("no leader")?;
            let pid = *t
                .operators
                .get(&holder)
                .context("the leader is no replica")?;
            kill(pid);
            let rec = recover(|| async {
                let h = lease_holder(&hub).await?;
                Ok(h.is_some_and(|h| h != holder))
            })
            .await;
            Ok((holder, 0.0, rec))
        }
        FaultKind::HubRestart => {
            let pid = t
                .cluster("hub")
                .and_then(|c| c.apiserver_pid)
                .context("hub down")?;
            let killed = k8s_openapi::jiff::Timestamp::now();
            kill(pid);
            let rec = recover(|| async {
                let lease = Api::<Lease>::namespaced(hub.clone(), OPERATOR_NAMESPACE)
                    .get(LEASE)
                    .await?;
                let renewed = lease.spec.and_then(|s| s.renew_time).map(|t| t.0);
                Ok(renewed.is_some_and(|r| r > killed))
            })
            .await;
            Ok(("hub".into(), 0.0, rec))
        }
        FaultKind::MemberApi => {
            let members: Vec<_> = t.clusters.iter().filter(|c| c.name != "hub").collect();
            let c = members[rng.range(0, members.len() as u64 - 1) as usize];
            let held = rng.range(10, 40);
            let until = unix_ms() + u128::from(held) * 1000;
            std::fs::write(hold_path(dir, &c.name), until.to_string())?;
            kill(c.apiserver_pid.context("member API already down")?);
            tokio::time::sleep(Duration::from_secs(held)).await;
            let rec = probe(&hub, &c.name, n).await?;
            Ok((c.name.clone(), held as f64, rec))
        }
        FaultKind::AgentKill => {
            kill(t.agent_pid.context("no agent")?);
            let pull = t
                .clusters
                .iter()
                .find(|c| c.pull)
                .context("no pull member")?;
            let rec = probe(&hub, &pull.name, n).await?;
            Ok((pull.name.clone(), 0.0, rec))
        }
        FaultKind::PodDelete => delete_pod(&t, &hub, rng).await,
    }
}

/// Deletes a random running gpupool pod of a random member; recovery: its job runs again.
async fn delete_pod(
    t: &Targets,
    hub: &kube::Client,
    rng: &mut Rng,
) -> Result<(String, f64, Option<f64>)> {
    let members: Vec<_> = t.clusters.iter().filter(|c| c.name != "hub").collect();
    let c = members[rng.range(0, members.len() as u64 - 1) as usize];
    let member = super::churn::client(&c.kubeconfig).await?;
    let pods: Api<Pod> = Api::all(member);
    let running: Vec<Pod> = pods
        .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
        .await?
        .items
        .into_iter()
        .filter(|p| p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running"))
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    if running.is_empty() {
        bail!("no running gpupool pod in {}", c.name);
    }
    let p = &running[rng.range(0, running.len() as u64 - 1) as usize];
    let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
    let labels = p.labels();
    let (kind, job) = (
        labels
            .get("gpupool.io/job-kind")
            .cloned()
            .unwrap_or_default(),
        labels
            .get("gpupool.io/job-name")
            .cloned()
            .unwrap_or_default(),
    );
    Api::<Pod>::namespaced(pods.into_client(), &ns)
        .delete(&name, &DeleteParams::default())
        .await?;
    let rec = recover(|| async { job_runs_or_finished(hub, &kind, &job).await }).await;
    Ok((format!("{}/{ns}/{name}", c.name), 0.0, rec))
}

async fn job_runs_or_finished(hub: &kube::Client, kind: &str, name: &str) -> Result<bool> {
    if kind == "TrainingJob" {
        let j = Api::<TrainingJob>::namespaced(hub.clone(), NAMESPACE)
            .get_opt(name)
            .await?;
        let phase = j.and_then(|j| j.status).map(|s| s.phase);
        return Ok(phase.is_none_or(|p| {
            matches!(
                p,
                TrainingPhase::Running | TrainingPhase::Succeeded | TrainingPhase::Failed
            )
        }));
    }
    let j = Api::<gpupool::api::InferenceJob>::namespaced(hub.clone(), NAMESPACE)
        .get_opt(name)
        .await?;
    Ok(j.is_none_or(|j| {
        let (want, st) = (j.spec.replicas, j.status.unwrap_or_default());
        st.ready_replicas >= want
    }))
}

/// Creates a one-GPU probe job pinned to `member` and returns the seconds until it runs (it is
/// deleted then).
async fn probe(hub: &kube::Client, member: &str, n: u32) -> Result<Option<f64>> {
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), NAMESPACE);
    let name = format!("probe-{n}");
    let job: TrainingJob = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SOAK_LABEL: "probe"}},
        "spec": {"template": {"spec": {"containers": [{"name": "main", "image": "probe"}]}},
                 "workers": 1, "gpusPerWorker": 1, "nvlink": "none", "priority": 1000,
                 "clusterSelector": {"region": member}}
    }))?;
    let t0 = Instant::now();
    // The hub may itself be coming back; creating is retried within the limit.
    let created =
        recover(|| async { Ok(tjs.create(&PostParams::default(), &job).await.is_ok()) }).await;
    if created.is_none() {
        return Ok(None);
    }
    let rec = recover(|| async {
        let p = tjs.get(&name).await?.status.map(|s| s.phase);
        Ok(p == Some(TrainingPhase::Running))
    })
    .await;
    let _ = tjs.delete(&name, &DeleteParams::default()).await;
    Ok(rec.map(|_| t0.elapsed().as_secs_f64()))
}

/// Polls `f` every 250 ms until it is true; the seconds that took, or `None` after
/// [`RECOVERY_LIMIT`]. Errors count as not yet.
async fn recover<F, Fut>(mut f: F) -> Option<f64>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<bool>>,
{
    let t0 = Instant::now();
    while t0.elapsed() < RECOVERY_LIMIT {
        if let Ok(true) = f().await {
            return Some(t0.elapsed().as_secs_f64());
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    None
}

async fn lease_holder(hub: &kube::Client) -> Result<Option<String>> {
    Ok(Api::<Lease>::namespaced(hub.clone(), OPERATOR_NAMESPACE)
        .get_opt(LEASE)
        .await?
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty()))
}

fn kill(pid: u32) {
    // SAFETY: sending a signal to a process of this soak by its id.
    unsafe {
        libc::kill(pid as i32, libc::SIGKILL);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fault_mix_round_trips_and_refuses_unknown_kinds() {
        let m: FaultMix = "leader-kill=2,pod-delete".parse().unwrap();
        assert_eq!(
            m.0,
            vec![(FaultKind::LeaderKill, 2), (FaultKind::PodDelete, 1)]
        );
        assert_eq!(m.to_string(), "leader-kill=2,pod-delete=1");
        assert_eq!(
            FaultMix::default().to_string().parse::<FaultMix>().unwrap(),
            FaultMix::default()
        );
        assert_eq!("none".parse::<FaultMix>().unwrap().to_string(), "none");
        let e = "leader-kil=1".parse::<FaultMix>().unwrap_err();
        assert!(e.contains("unknown fault \"leader-kil\""), "{e}");
        assert!("pod-delete=x".parse::<FaultMix>().is_err());
    }
}
