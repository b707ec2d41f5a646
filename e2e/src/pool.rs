//! Running gpupool itself on a harness federation: register members on the hub and run the
//! operator's controllers in-process.

use crate::ControlPlane;
use anyhow::Result;
use gpupool::api::{
    MemberCluster, MemberClusterSpec, SecretKeyRef, TrainingJob, TrainingPhase, UsageRecord,
    UsageState,
};
use gpupool::controllers::{Config, Context, run_controllers};
use k8s_openapi::ByteString;
use k8s_openapi::api::core::v1::{Namespace, Secret};
use kube::api::{Api, Patch, PatchParams, PostParams};
use std::sync::Arc;

/// Namespace of the operator on the hub.
pub const OPERATOR_NAMESPACE: &str = "gpupool-system";

/// Registers `member` on the hub: its kubeconfig in a Secret and a `MemberCluster`.
pub async fn register_member(
    hub: &kube::Client,
    name: &str,
    member: &ControlPlane,
    wallet: &str,
    region: &str,
) -> Result<()> {
    register_member_with(hub, name, &member.kubeconfig_yaml(), wallet, region).await
}

/// [`register_member`] with the hub reaching the member through `kubeconfig`.
pub async fn register_member_with(
    hub: &kube::Client,
    name: &str,
    kubeconfig: &str,
    wallet: &str,
    region: &str,
) -> Result<()> {
    let ns: Api<Namespace> = Api::all(hub.clone());
    if ns.get_opt(OPERATOR_NAMESPACE).await?.is_none() {
        let mut n = Namespace::default();
        n.metadata.name = Some(OPERATOR_NAMESPACE.into());
        match ns.create(&PostParams::default(), &n).await {
            Ok(_) => {}
            Err(kube::Error::Api(e)) if e.code == 409 => {}
            Err(e) => return Err(e.into()),
        }
    }
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), OPERATOR_NAMESPACE);
    let mut s = Secret::default();
    s.metadata.name = Some(format!("{name}-kubeconfig"));
    s.data = Some(
        [(
            "kubeconfig".to_string(),
            ByteString(kubeconfig.as_bytes().to_vec()),
        )]
        .into(),
    );
    secrets
        .patch(
            &format!("{name}-kubeconfig"),
            &PatchParams::apply("gpupool-e2e").force(),
            &Patch::Apply(&{
                let mut v = serde_json::to_value(&s)?;
                v["apiVersion"] = "v1".into();
                v["kind"] = "Secret".into();
                v
            }),
        )
        .await?;
    let mc = MemberCluster::new(
        name,
        MemberClusterSpec {
            kubeconfig_secret_ref: SecretKeyRef {
                name: format!("{name}-kubeconfig"),
                namespace: Some(OPERATOR_NAMESPACE.into()),
                key: "kubeconfig".into(),
            },
            owner_wallet: wallet.into(),
            region: Some(region.into()),
            labels: Default::default(),
            price_per_gpu_hour: None,
            schedulable: true,
            ..Default::default()
        },
    );
    Api::<MemberCluster>::all(hub.clone())
        .patch(
            name,
            &PatchParams::apply("gpupool-e2e").force(),
            &Patch::Apply(&mc),
        )
        .await?;
    Ok(())
}

/// The operator's controllers running in this process; stopped on drop.
pub struct Operator {
    /// The shared context (registry, metrics).
    pub ctx: Arc<Context>,
    task: tokio::task::JoinHandle<()>,
}

impl Operator {
    /// Starts the MemberCluster, TrainingJob and InferenceJob controllers against `hub`.
    pub fn start(hub: kube::Client, config: Config) -> Operator {
        let (ctx, triggers) = Context::new(hub, config, gpupool::metrics::Metrics::default());
        let c = ctx.clone();
        let task = tokio::spawn(async move {
            if let Err(e) = run_controllers(c, triggers).await {
                tracing::error!(error = %e, "controllers stopped");
            }
        });
        Operator { ctx, task }
    }

    /// Settings suited to tests: 1 s heartbeats, short grace and retry periods.
    pub fn test_config(grace_seconds: u64) -> Config {
        Config {
            namespace: OPERATOR_NAMESPACE.into(),
            heartbeat: std::time::Duration::from_secs(1),
            member_grace: std::time::Duration::from_secs(grace_seconds),
            member_timeout: std::time::Duration::from_secs(2),
            resync: std::time::Duration::from_secs(2),
            pending_retry: std::time::Duration::from_secs(5),
            ..Config::default()
        }
    }

    /// Stops the controllers.
    pub fn stop(self) {}
}

impl Drop for Operator {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Waits up to `secs` seconds for the MemberCluster `name` to be `Ready` with GPUs in its
/// capacity; returns it as it then was.
pub async fn wait_member_ready(hub: &kube::Client, name: &str, secs: u64) -> Result<MemberCluster> {
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    eventually(secs, &format!("{name} Ready with GPUs"), || async {
        let mc = mcs.get(name).await?;
        Ok(ready_with_gpus(&mc).then_some(mc))
    })
    .await
}

/// Whether a MemberCluster is `Ready` with GPUs in its capacity.
pub fn ready_with_gpus(mc: &MemberCluster) -> bool {
    mc.status.as_ref().is_some_and(|st| {
        st.capacity.gpus_total > 0
            && st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True")
    })
}

/// Waits up to `secs` seconds for the TrainingJob `name` to be in `phase`; returns it then.
pub async fn wait_training_phase(
    jobs: &Api<TrainingJob>,
    name: &str,
    phase: TrainingPhase,
    secs: u64,
) -> Result<TrainingJob> {
    eventually(secs, &format!("{name} {phase:?}"), || async {
        let j = jobs.get(name).await?;
        let now = j.status.as_ref().map(|s| s.phase);
        Ok((now == Some(phase)).then_some(j))
    })
    .await
}

/// Waits until TrainingJob `name` runs; returns the member it runs on.
pub async fn wait_running_on(jobs: &Api<TrainingJob>, name: &str, secs: u64) -> Result<String> {
    let j = wait_training_phase(jobs, name, TrainingPhase::Running, secs).await?;
    j.status
        .and_then(|s| s.cluster)
        .ok_or_else(|| anyhow::anyhow!("{name} runs on no member"))
}

/// Every `UsageRecord` on the hub.
pub async fn usage_records(hub: &kube::Client) -> Result<Vec<UsageRecord>> {
    Ok(Api::<UsageRecord>::all(hub.clone())
        .list(&Default::default())
        .await?
        .items)
}

/// A usage record's state (`Open` until its status says otherwise).
pub fn record_state(r: &UsageRecord) -> UsageState {
    r.status.as_ref().map(|s| s.state).unwrap_or_default()
}

/// How many `verb` requests (`LIST`, `GET`, `WATCH`, …) on `resource` the API server behind
/// `client` has served so far, from its own `apiserver_request_total` counter.
pub async fn api_requests(client: &kube::Client, verb: &str, resource: &str) -> Result<f64> {
    let req = http::Request::get("/metrics").body(Vec::new())?;
    let text = client.request_text(req).await?;
    let (verb, resource) = (
        format!("verb=\"{verb}\""),
        format!("resource=\"{resource}\""),
    );
    Ok(text
        .lines()
        .filter_map(|l| l.strip_prefix("apiserver_request_total{"))
        .filter_map(|l| l.rsplit_once("} "))
        .filter(|(labels, _)| {
            let labels: Vec<&str> = labels.split(',').collect();
            labels.contains(&verb.as_str()) && labels.contains(&resource.as_str())
        })
        .map(|(_, v)| v.trim().parse::<f64>().unwrap_or(0.0))
        .sum())
}

/// Polls `f` every 200 ms until it returns `Some`, or fails after `secs` seconds with `what`.
pub async fn eventually<T, F, Fut>(secs: u64, what: &str, mut f: F) -> Result<T>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<Option<T>>>,
{
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(secs);
    let mut last = String::new();
    loop {
        match f().await {
            Ok(Some(v)) => return Ok(v),
            Ok(None) => {}
            Err(e) => last = format!("{e:#}"),
        }
        if std::time::Instant::now() > deadline {
            anyhow::bail!("timed out after {secs}s waiting for {what} {last}");
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
}
