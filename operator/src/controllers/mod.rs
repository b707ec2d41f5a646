//! The controllers running on the hub: MemberCluster (federation heartbeat and inventory),
//! TrainingJob and InferenceJob (placement, workloads in members, status roll-up).
//!
//! Each follows the same shape: `reconcile(obj, ctx) -> Result<Action>`, a finalizer where
//! something in a member must be cleaned up, status written by server-side apply under the field
//! manager [`FIELD_MANAGER`], and Kubernetes Events on the hub object for every decision.

mod context;
mod error;
mod inference_job;
mod member_cluster;
mod member_io;
mod reservations;
mod status;
mod training_job;

pub use context::{Config, Context, Triggers};
pub use error::{Error, Result};

use crate::api::{InferenceJob, MemberCluster, TrainingJob};
use futures::StreamExt;
use kube::runtime::{Controller, watcher};
use kube::{Api, Client};
use std::sync::Arc;
use std::time::Duration;

/// Field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "gpupool-operator";
/// Finalizer on hub jobs: their workloads in member clusters are deleted first.
pub const FINALIZER: &str = "gpupool.io/member-cleanup";

/// `gpupool run` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Namespace holding member kubeconfig Secrets that name no namespace.
    #[arg(long, env = "GPUPOOL_NAMESPACE", default_value = "gpupool-system")]
    pub namespace: String,
    /// Seconds between member heartbeats.
    #[arg(long, default_value_t = 2)]
    pub heartbeat_seconds: u64,
    /// Seconds a member may fail probes before it is NotReady and its work is moved.
    #[arg(long, default_value_t = 30)]
    pub member_grace_seconds: u64,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// Run only while holding the Lease `--lease-name` (for several replicas).
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease in `--namespace`.
    #[arg(long, default_value = "gpupool-operator")]
    pub lease_name: String,
}

/// Runs the operator against the hub (in-cluster config or KUBECONFIG) until interrupted.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging();
    let client = Client::try_default().await?;
    let cfg = Config {
        namespace: args.namespace.clone(),
        heartbeat: Duration::from_secs(args.heartbeat_seconds.max(1)),
        member_grace: Duration::from_secs(args.member_grace_seconds),
        ..Config::default()
    };
    let metrics = crate::metrics::Metrics::default();
    let server = crate::metrics::serve(args.metrics_addr.parse()?, metrics.clone());
    let server = tokio::spawn(server);
    let lost = if args.leader_elect {
        let identity = crate::leader::default_identity();
        Some(Box::pin(
            crate::leader::acquire(client.clone(), &args.namespace, &args.lease_name, &identity)
                .await?,
        ))
    } else {
        None
    };
    let (ctx, triggers) = Context::new(client, cfg, metrics);
    let lost = async move {
        match lost {
            Some(f) => f.await,
            None => futures::future::pending().await,
        }
    };
    tokio::select! {
        r = run_controllers(ctx, triggers) => r,
        r = server => r?,
        _ = lost => anyhow::bail!("lost leadership"),
    }
}

/// Runs the three controllers on `ctx` until they stop (Ctrl-C / SIGTERM).
pub async fn run_controllers(ctx: Arc<Context>, triggers: Triggers) -> anyhow::Result<()> {
    let hub = ctx.hub.clone();
    let wc = watcher::Config::default().any_semantic();
    let members = Controller::new(Api::<MemberCluster>::all(hub.clone()), wc.clone())
        .shutdown_on_signal()
        .run(
            member_cluster::reconcile,
            member_cluster::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let training = Controller::new(Api::<TrainingJob>::all(hub.clone()), wc.clone())
        .reconcile_on(triggers.training)
        .reconcile_all_on(triggers.training_all)
        .shutdown_on_signal()
        .run(
            training_job::reconcile,
            training_job::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    let inference = Controller::new(Api::<InferenceJob>::all(hub), wc)
        .reconcile_on(triggers.inference)
        .reconcile_all_on(triggers.inference_all)
        .shutdown_on_signal()
        .run(
            inference_job::reconcile,
            inference_job::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()));
    tokio::join!(members, training, inference);
    Ok(())
}
