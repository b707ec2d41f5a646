//! The churn process: every few hundred milliseconds one action on the hub, as users would —
//! TrainingJobs of 1–4 workers × 1–8 GPUs that finish after 20–90 s, InferenceJobs created,
//! scaled and re-imaged, deletions of running, finished and pending jobs.

use super::{NAMESPACE, Rng, SOAK_LABEL, Targets};
use anyhow::Result;
use gpupool::api::{InferenceJob, TrainingJob, TrainingPhase};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

/// Jobs not yet finished above which no new TrainingJob is created (the queue stays bounded).
const MAX_OPEN_TRAINING: usize = 60;
/// InferenceJobs alive at most.
const MAX_INFERENCE: usize = 24;

/// Arguments of the churn process.
#[derive(Clone, Debug)]
pub struct ChurnArgs {
    /// Run directory (targets file; counts written there).
    pub dir: PathBuf,
    /// Seed.
    pub seed: u64,
    /// How long to run.
    pub duration: Duration,
    /// Milliseconds between actions.
    pub every_ms: u64,
}

#[derive(Clone, Copy, Debug)]
enum Action {
    CreateTraining,
    CreateInference,
    Scale,
    Reimage,
    Delete,
}

const ACTIONS: [(Action, u64); 5] = [
    (Action::CreateTraining, 6),
    (Action::CreateInference, 2),
    (Action::Scale, 3),
    (Action::Reimage, 2),
    (Action::Delete, 3),
];

struct Churn {
    tjs: Api<TrainingJob>,
    ijs: Api<InferenceJob>,
    rng: Rng,
    seq: u64,
    training: Vec<String>,
    open_training: usize,
    inference: Vec<String>,
    counts: BTreeMap<String, u64>,
}

/// Runs the churn until its time is up; writes the counts of actions to `<dir>/churn.json`.
pub async fn run_churn(args: ChurnArgs) -> Result<()> {
    let targets = Targets::read(&args.dir)?;
    let hub = client(&targets.cluster("hub").expect("hub target").kubeconfig).await?;
    let mut c = Churn {
        tjs: Api::namespaced(hub.clone(), NAMESPACE),
        ijs: Api::namespaced(hub, NAMESPACE),
        rng: Rng::new(args.seed),
        seq: 0,
        training: Vec::new(),
        open_training: 0,
        inference: Vec::new(),
        counts: BTreeMap::new(),
    };
    let end = Instant::now() + args.duration;
    while Instant::now() < end {
        if c.seq.is_multiple_of(20) {
            let _ = c.refresh().await;
        }
        c.seq += 1;
        let weights: Vec<u64> = ACTIONS.iter().map(|a| a.1).collect();
        let action = ACTIONS[c.rng.weighted(&weights).expect("weights")].0;
        let what = match c.act(action).await {
            Ok(Some(what)) => what,
            Ok(None) => "skipped".to_string(),
            Err(e) => {
                tracing::warn!(?action, error = %e, "churn action failed");
                "failed".to_string()
            }
        };
        *c.counts.entry(what).or_default() += 1;
        tokio::time::sleep(Duration::from_millis(args.every_ms)).await;
    }
    std::fs::write(args.dir.join("churn.json"), serde_json::to_vec(&c.counts)?)?;
    Ok(())
}

/// The counts the churn process wrote.
pub fn read_counts(dir: &Path) -> Result<BTreeMap<String, u64>> {
    Ok(serde_json::from_slice(&std::fs::read(
        dir.join("churn.json"),
    )?)?)
}

/// A client from a kubeconfig file.
pub async fn client(kubeconfig: &Path) -> Result<kube::Client> {
    let kc = kube::config::Kubeconfig::read_from(kubeconfig)?;
    let cfg = kube::Config::from_custom_kubeconfig(kc, &Default::default()).await?;
    Ok(kube::Client::try_from(cfg)?)
}

impl Churn {
    async fn refresh(&mut self) -> Result<()> {
        // The churn's own jobs only: the fault process's probes are not the churn's to delete.
        let lp = ListParams::default().labels(&format!("{SOAK_LABEL}=true"));
        let tjs = self.tjs.list(&lp).await?.items;
        self.open_training = tjs
            .iter()
            .filter(|j| {
                let phase = j.status.as_ref().map(|s| s.phase).unwrap_or_default();
                !matches!(phase, TrainingPhase::Succeeded | TrainingPhase::Failed)
            })
            .count();
        self.training = tjs.iter().map(|j| j.name_any()).collect();
        self.inference = self
            .ijs
            .list(&lp)
            .await?
            .items
            .iter()
            .map(|j| j.name_any())
            .collect();
        Ok(())
    }

    async fn act(&mut self, action: Action) -> Result<Option<String>> {
        let pp = PostParams::default();
        match action {
            Action::CreateTraining if self.open_training < MAX_OPEN_TRAINING => {
                let name = format!("t-{}", self.seq);
                let (workers, gpus) = (self.rng.range(1, 4), self.rng.range(1, 8));
                let secs = self.rng.range(20, 90);
                self.tjs
                    .create(&pp, &training(&name, workers, gpus, secs)?)
                    .await?;
                self.training.push(name);
                self.open_training += 1;
                Ok(Some("create-training".into()))
            }
            Action::CreateInference if self.inference.len() < MAX_INFERENCE => {
                let name = format!("i-{}", self.seq);
                let (replicas, gpus) = (self.rng.range(1, 3), self.rng.range(1, 2));
                self.ijs
                    .create(&pp, &inference(&name, replicas, gpus)?)
                    .await?;
                self.inference.push(name);
                Ok(Some("create-inference".into()))
            }
            Action::Scale | Action::Reimage if !self.inference.is_empty() => {
                let i = self.rng.range(0, self.inference.len() as u64 - 1) as usize;
                let name = self.inference[i].clone();
                let (patch, what) = match action {
                    Action::Scale => (json!({"spec": {"replicas": self.rng.range(1, 4)}}), "scale"),
                    _ => (
                        json!({"spec": {"template": {"spec": {"containers": [
                            {"name": "srv", "image": format!("ghcr.io/example/srv:{}", self.seq)}]}}}}),
                        "reimage",
                    ),
                };
                self.ijs
                    .patch(&name, &PatchParams::default(), &Patch::Merge(patch))
                    .await?;
                Ok(Some(what.into()))
            }
            Action::Delete => self.delete().await,
            _ => Ok(None),
        }
    }

    async fn delete(&mut self) -> Result<Option<String>> {
        let inference = self.rng.range(0, 3) == 0;
        let list = if inference {
            &mut self.inference
        } else {
            &mut self.training
        };
        if list.is_empty() {
            return Ok(None);
        }
        let i = self.rng.range(0, list.len() as u64 - 1) as usize;
        let name = list.swap_remove(i);
        let r = if inference {
            self.ijs
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ())
        } else {
            self.tjs
                .delete(&name, &DeleteParams::default())
                .await
                .map(|_| ())
        };
        match r {
            Ok(()) => Ok(Some(
                if inference {
                    "delete-inference"
                } else {
                    "delete-training"
                }
                .into(),
            )),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e.into()),
        }
    }
}

fn training(name: &str, workers: u64, gpus: u64, secs: u64) -> Result<TrainingJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SOAK_LABEL: "true"}},
        "spec": {
            "template": {
                "metadata": {"annotations": {"pod-complete.stage.kwok.x-k8s.io/delay": format!("{secs}s")}},
                "spec": {"containers": [{"name": "main", "image": "trainer"}]}
            },
            "workers": workers, "gpusPerWorker": gpus, "nvlink": "none"
        }
    }))?)
}

fn inference(name: &str, replicas: u64, gpus: u64) -> Result<InferenceJob> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "InferenceJob",
        "metadata": {"name": name, "namespace": NAMESPACE, "labels": {SOAK_LABEL: "true"}},
        "spec": {
            "template": {"spec": {"containers": [{"name": "srv", "image": "ghcr.io/example/srv:1"}]}},
            "replicas": replicas, "gpusPerReplica": gpus,
            "placement": {"maxReplicasPerCluster": 4}
        }
    }))?)
}
