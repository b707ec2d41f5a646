//! The controllers running on the hub: MemberCluster (federation heartbeat and inventory),
//! TrainingJob and InferenceJob (placement, workloads in members, status roll-up).
//!
//! Each follows the same shape: `reconcile(obj, ctx) -> Result<Action>`, a finalizer where
//! something in a member must be cleaned up, status written by server-side apply under the field
//! manager [`crate::meta::FIELD_MANAGER`], and Kubernetes Events on the hub object for every decision.
//! Placement is not theirs: the job watches also feed the [`crate::scheduler`], whose loop
//! places waiting jobs; the controllers run what is placed and roll its state up, woken by
//! watch events (no periodic resync of running jobs).

mod budget;
mod context;
mod credential;
mod error;
mod inference_job;
mod member_cluster;
mod member_io;
mod refusal;
mod status;
mod training_job;

pub use context::{Config, Context, Lane, Lanes, MemberHealth, Triggers};
pub use error::{Error, Result};
pub use member_cluster::SUPPLY_VERIFIED;
use refusal::member_refusals;

use crate::api::{InferenceJob, MemberCluster, TrainingJob};
use futures::StreamExt;
use kube::Api;
use kube::runtime::{Controller, WatchStreamExt, controller, reflector, watcher};
use std::sync::Arc;
use std::time::Duration;

/// Reconciles running at once, by default: of MemberClusters, and of jobs in the two
/// [`Lanes`] together (half each). Most reconciles wait on one API round trip.
pub const CONTROLLER_CONCURRENCY: u16 = 256;

/// `gpupool run` arguments.
#[derive(clap::Args, Clone, Debug)]
pub struct RunArgs {
    /// Namespace holding member kubeconfig Secrets that name no namespace.
    #[arg(long, env = "GPUPOOL_NAMESPACE", default_value = "gpupool-system")]
    pub namespace: String,
    /// Base URL of the inference gateway (`gpupool gateway`) as callers reach it; each
    /// InferenceJob's `status.url` is `<this>/<namespace>/<name>/`.
    #[arg(long, env = "GPUPOOL_GATEWAY_URL")]
    pub gateway_url: Option<String>,
    /// Seconds between member heartbeats.
    #[arg(long, default_value_t = 2)]
    pub heartbeat_seconds: u64,
    /// Seconds a member may fail probes before it is NotReady and its work is moved.
    #[arg(long, default_value_t = 30)]
    pub member_grace_seconds: u64,
    /// Seconds a member's scheduler may refuse a gpupool pod before the hub withdraws it (a
    /// training gang: all of it) and places the job again, avoiding those GPUs.
    #[arg(long, default_value_t = 60)]
    pub member_refusal_seconds: u64,
    /// Seconds GPUs that a member's scheduler refused stay out of placement.
    #[arg(long, default_value_t = 600)]
    pub suspect_gpu_seconds: u64,
    /// Renew a push member's bound token this many seconds before it expires (default: at two
    /// thirds of its life).
    #[arg(long, value_name = "SECONDS")]
    pub member_token_renew_before_seconds: Option<u64>,
    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    pub metrics_addr: String,
    /// Run only while holding the Lease `--lease-name` (for several replicas).
    #[arg(long)]
    pub leader_elect: bool,
    /// Name of the leader-election Lease in `--namespace`.
    #[arg(long, default_value = "gpupool-operator")]
    pub lease_name: String,
    /// Solana RPC URL for settlement; settlement is off when not given.
    #[arg(long, env = "GPUPOOL_RPC_URL")]
    pub rpc_url: Option<String>,
    /// Ledger program id (must match the program this operator was built for).
    #[arg(long, env = "GPUPOOL_PROGRAM_ID")]
    pub program_id: Option<String>,
    /// Pool token mint (checked against the pool config on chain).
    #[arg(long, env = "GPUPOOL_MINT")]
    pub mint: Option<String>,
    /// Oracle keypair (solana-keygen JSON), e.g. from a mounted Secret.
    #[arg(long, env = "GPUPOOL_ORACLE_KEYPAIR")]
    pub oracle_keypair: Option<std::path::PathBuf>,
    /// Seconds between metering passes.
    #[arg(long, default_value_t = 30)]
    pub meter_interval_seconds: u64,
    /// Requests per second the operator sends the hub (token bucket; 0: no limit).
    #[arg(long, default_value_t = crate::federation::ClientLimits::HUB.qps)]
    pub hub_qps: f64,
    /// Requests the hub client may send at once after a quiet period.
    #[arg(long, default_value_t = crate::federation::ClientLimits::HUB.burst)]
    pub hub_burst: u32,
    /// Requests per second the operator sends each member (token bucket; 0: no limit).
    #[arg(long, default_value_t = crate::federation::ClientLimits::MEMBER.qps)]
    pub member_qps: f64,
    /// Requests each member's clients may send at once after a quiet period.
    #[arg(long, default_value_t = crate::federation::ClientLimits::MEMBER.burst)]
    pub member_burst: u32,
    /// Reconciles running at once: of MemberClusters, and of jobs (TrainingJobs and
    /// InferenceJobs together, half of them for creating the pods of fresh placements).
    #[arg(long, default_value_t = CONTROLLER_CONCURRENCY, value_parser = clap::value_parser!(u16).range(1..))]
    pub controller_concurrency: u16,
    /// A paid pool: tenants (job namespaces) pay for usage from their escrows on the ledger;
    /// a job starts only when its tenant funds its reservation (needs --rpc-url).
    #[arg(long, env = "GPUPOOL_PAID_POOL")]
    pub paid_pool: bool,
    /// Seconds of a job's GPUs its reservation covers ahead (a paid pool).
    #[arg(long, default_value_t = 3600)]
    pub reservation_window_seconds: u64,
    /// Seconds a job whose reservation cannot be renewed keeps running before it is stopped.
    #[arg(long, default_value_t = 300)]
    pub budget_grace_seconds: u64,
}

fn ledger_from_args(args: &RunArgs) -> anyhow::Result<Option<crate::ledger::Ledger>> {
    let Some(url) = &args.rpc_url else {
        return Ok(None);
    };
    if let Some(p) = &args.program_id {
        let want = gpupool_ledger::ID.to_string();
        anyhow::ensure!(
            *p == want,
            "--program-id {p} is not the ledger program this operator speaks to ({want})"
        );
    }
    if let Some(m) = &args.mint {
        crate::ledger::parse_wallet(m).map_err(|e| anyhow::anyhow!("--mint: {e}"))?;
    }
    let path = args
        .oracle_keypair
        .as_ref()
        .ok_or_else(|| anyhow::anyhow!("--rpc-url needs --oracle-keypair"))?;
    let oracle = crate::ledger::load_keypair(path)?;
    Ok(Some(crate::ledger::Ledger::rpc(url, oracle)?))
}

/// Tenant budget settings from the flags; a paid pool needs a ledger and a grace shorter than
/// half a reservation window (the part a renewal keeps ahead).
fn budget_config(args: &RunArgs) -> anyhow::Result<crate::metering::budget::BudgetConfig> {
    let cfg = crate::metering::budget::BudgetConfig {
        paid: args.paid_pool,
        window_seconds: args.reservation_window_seconds.max(1),
        grace_seconds: args.budget_grace_seconds,
    };
    if cfg.paid {
        anyhow::ensure!(
            args.rpc_url.is_some(),
            "--paid-pool needs --rpc-url: tenants pay from escrows on the ledger"
        );
        anyhow::ensure!(
            cfg.grace_seconds < cfg.window_seconds / 2,
            "--budget-grace-seconds {} must be under half of --reservation-window-seconds {}: an exhausted job must stop while its reservation still pays for it",
            cfg.grace_seconds,
            cfg.window_seconds
        );
    }
    Ok(cfg)
}

/// Runs the operator against the hub (in-cluster config or KUBECONFIG) until interrupted.
pub async fn run(args: RunArgs) -> anyhow::Result<()> {
    crate::telemetry::init_logging();
    let metrics = crate::metrics::Metrics::default();
    let hub_limits = crate::federation::ClientLimits {
        qps: args.hub_qps,
        burst: args.hub_burst,
    };
    let client = crate::federation::limited_client(
        kube::Config::infer().await?,
        &metrics.rate_limit("hub", hub_limits),
    )?;
    let cfg = Config {
        namespace: args.namespace.clone(),
        heartbeat: Duration::from_secs(args.heartbeat_seconds.max(1)),
        member_grace: Duration::from_secs(args.member_grace_seconds),
        member_refusal: Duration::from_secs(args.member_refusal_seconds.max(1)),
        suspect_for: Duration::from_secs(args.suspect_gpu_seconds),
        gateway_url: args.gateway_url.clone(),
        token_renew_before: args
            .member_token_renew_before_seconds
            .map(Duration::from_secs),
        member_limits: crate::federation::ClientLimits {
            qps: args.member_qps,
            burst: args.member_burst,
        },
        budget: budget_config(&args)?,
        concurrency: args.controller_concurrency,
        ..Config::default()
    };
    let server = crate::metrics::serve(args.metrics_addr.parse()?, metrics.clone());
    let server = tokio::spawn(server);
    // Ready once the hub answers, whether this replica leads or stands by for the Lease.
    let v = client.apiserver_version().await?;
    tracing::info!(version = %v.git_version, "hub API reachable");
    metrics.set_ready();
    let identity = crate::leader::default_identity();
    let lost = if args.leader_elect {
        Some(Box::pin(
            crate::leader::acquire(client.clone(), &args.namespace, &args.lease_name, &identity)
                .await?,
        ))
    } else {
        None
    };
    let lease_client = client.clone();
    let ledger = ledger_from_args(&args)?;
    let (ctx, triggers) = Context::new(client, cfg, metrics);
    let runner_cfg = crate::metering::runner::RunnerConfig {
        interval: Duration::from_secs(args.meter_interval_seconds.max(1)),
        // With a ledger the runner reads the period length from the pool config.
        meter: crate::metering::MeterConfig::default(),
        settle: Default::default(),
    };
    ctx.metrics.set_leader(true);
    let metering = tokio::spawn(supervised(
        ctx.metrics.clone(),
        "metering",
        crate::metering::runner::run(ctx.metering(), ledger, runner_cfg),
    ));
    let lost = async move {
        match lost {
            Some(f) => f.await,
            None => futures::future::pending().await,
        }
    };
    let metering_abort = metering.abort_handle();
    let r = tokio::select! {
        r = run_controllers(ctx, triggers) => r,
        r = server => r?,
        _ = lost => anyhow::bail!("lost leadership"),
        r = metering => { r?; Ok(()) }
    };
    // Stopped on purpose (SIGTERM) or failed: nothing acts any more, so the lease is handed on
    // now rather than left to expire.
    metering_abort.abort();
    if args.leader_elect {
        let released =
            crate::leader::release(lease_client, &args.namespace, &args.lease_name, &identity);
        if let Err(e) = released.await {
            tracing::warn!(error = %e, "releasing the leader lease failed");
        }
    }
    r
}

/// Runs the scheduler loop and the three controllers on `ctx` until they stop (Ctrl-C / SIGTERM).
/// Each hub job kind is watched once: the watch feeds the scheduler's cache and queue and the
/// controller's store. Each runs as a named task of `/healthz`, which fails once one stops.
pub async fn run_controllers(ctx: Arc<Context>, triggers: Triggers) -> anyhow::Result<()> {
    let metrics = ctx.metrics.clone();
    // The loop stops with the controllers (also when this future is dropped).
    let _scheduler = AbortOnDrop(tokio::spawn(supervised(
        metrics.clone(),
        "scheduler",
        ctx.scheduler.clone().run(),
    )));
    let _classes = AbortOnDrop(tokio::spawn(supervised(
        metrics.clone(),
        "priorityclass-watch",
        watch_priority_classes(&ctx),
    )));
    let _queues = AbortOnDrop(tokio::spawn(supervised(
        metrics.clone(),
        "gpuqueue-watch",
        watch_gpu_queues(&ctx),
    )));
    let _queue_status = AbortOnDrop(tokio::spawn(supervised(
        metrics.clone(),
        "gpuqueue-status",
        ctx.scheduler.clone().report_queues(),
    )));
    let (sched, registry) = (ctx.scheduler.clone(), ctx.registry.clone());
    metrics.set_debug_queue(Arc::new(move || {
        let (s, r) = (sched.clone(), registry.clone());
        Box::pin(async move {
            let members: Vec<String> = r.snapshot().await.into_keys().collect();
            s.debug_snapshot(&members)
        })
    }));
    tokio::join!(
        supervised(
            metrics.clone(),
            "membercluster-controller",
            member_controller(&ctx, triggers.members)
        ),
        supervised(
            metrics.clone(),
            "trainingjob-controller",
            training_controller(&ctx, triggers.training, triggers.training_all),
        ),
        supervised(
            metrics.clone(),
            "inferencejob-controller",
            inference_controller(&ctx, triggers.inference, triggers.inference_all),
        ),
    );
    Ok(())
}

/// Runs `task` as long-running task `name` of `/healthz`: once it ends, panics or is dropped,
/// the process reports itself unhealthy.
pub async fn supervised<T>(
    metrics: crate::metrics::Metrics,
    name: &'static str,
    task: impl std::future::Future<Output = T>,
) -> T {
    let _alive = metrics.task(name);
    task.await
}

/// PriorityClasses order the scheduler's queue (`spec.priorityClassName`, `globalDefault`).
fn watch_priority_classes(ctx: &Context) -> impl std::future::Future<Output = ()> + use<> {
    let sched = ctx.scheduler.clone();
    watcher(
        Api::<k8s_openapi::api::scheduling::v1::PriorityClass>::all(ctx.hub.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .for_each(move |ev| {
        match &ev {
            Ok(ev) => sched.priority_class_event(ev),
            Err(e) => tracing::warn!(error = %e, "watching PriorityClasses failed (retrying)"),
        }
        futures::future::ready(())
    })
}

/// GpuQueues limit what the scheduler admits (quotas, borrowing, fair sharing).
fn watch_gpu_queues(ctx: &Context) -> impl std::future::Future<Output = ()> + use<> {
    let sched = ctx.scheduler.clone();
    watcher(
        Api::<crate::api::GpuQueue>::all(ctx.hub.clone()),
        watcher::Config::default(),
    )
    .default_backoff()
    .for_each(move |ev| {
        match &ev {
            Ok(ev) => sched.gpu_queue_event(ev),
            // A hub whose GpuQueue CRD is not installed has no queues: nothing is limited.
            Err(watcher::Error::InitialListFailed(kube::Error::Api(s))) if s.code == 404 => {
                sched.no_gpu_queues();
            }
            Err(e) => tracing::warn!(error = %e, "watching GpuQueues failed (retrying)"),
        }
        futures::future::ready(())
    })
}

/// The MemberCluster controller: what `Controller::new` does, with the store shared through the
/// context (`ctx.members`).
async fn member_controller(ctx: &Arc<Context>, store: reflector::store::Writer<MemberCluster>) {
    let wc = watcher::Config::default().any_semantic();
    let stream = watcher(Api::<MemberCluster>::all(ctx.hub.clone()), wc)
        .default_backoff()
        .reflect(store)
        .applied_objects();
    Controller::for_stream(stream, ctx.members.clone())
        .with_config(controller_config(ctx))
        .shutdown_on_signal()
        .run(
            member_cluster::reconcile,
            member_cluster::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await
}

fn controller_config(ctx: &Context) -> controller::Config {
    controller::Config::default().concurrency(ctx.config.concurrency)
}

/// The job controllers start every due reconcile at once: their [`Lanes`] bound how many run
/// and keep them in order (see there why not kube-runtime's limit).
fn job_controller_config() -> controller::Config {
    controller::Config::default()
}

/// The TrainingJob controller, on the watch that also feeds the scheduler.
async fn training_controller(
    ctx: &Arc<Context>,
    one: futures::channel::mpsc::UnboundedReceiver<
        kube::runtime::reflector::ObjectRef<TrainingJob>,
    >,
    all: futures::channel::mpsc::UnboundedReceiver<()>,
) {
    let (reader, writer) = reflector::store();
    let sched = ctx.scheduler.clone();
    sched.share_training_store(reader.clone());
    let wc = watcher::Config::default().any_semantic();
    let stream = watcher(Api::<TrainingJob>::all(ctx.hub.clone()), wc)
        .modify(|j: &mut TrainingJob| {
            crate::federation::trim_meta(&mut j.metadata);
            training_job::elide_template(j);
        })
        .default_backoff()
        .reflect(writer)
        .inspect(move |ev| {
            if let Ok(ev) = ev {
                sched.training_event(ev)
            }
        })
        .applied_objects();
    Controller::for_stream(stream, reader)
        .with_config(job_controller_config())
        .reconcile_on(one)
        .reconcile_all_on(all)
        .shutdown_on_signal()
        .run(
            training_job::reconcile,
            training_job::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await
}

/// The InferenceJob controller, on the watch that also feeds the scheduler.
async fn inference_controller(
    ctx: &Arc<Context>,
    one: futures::channel::mpsc::UnboundedReceiver<
        kube::runtime::reflector::ObjectRef<InferenceJob>,
    >,
    all: futures::channel::mpsc::UnboundedReceiver<()>,
) {
    let (reader, writer) = reflector::store();
    let sched = ctx.scheduler.clone();
    sched.share_inference_store(reader.clone());
    let wc = watcher::Config::default().any_semantic();
    let stream = watcher(Api::<InferenceJob>::all(ctx.hub.clone()), wc)
        .modify(|j: &mut InferenceJob| crate::federation::trim_meta(&mut j.metadata))
        .default_backoff()
        .reflect(writer)
        .inspect(move |ev| {
            if let Ok(ev) = ev {
                sched.inference_event(ev)
            }
        })
        .applied_objects();
    Controller::for_stream(stream, reader)
        .with_config(job_controller_config())
        .reconcile_on(one)
        .reconcile_all_on(all)
        .shutdown_on_signal()
        .run(
            inference_job::reconcile,
            inference_job::error_policy,
            ctx.clone(),
        )
        .for_each(|_| futures::future::ready(()))
        .await
}

struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}
