//! Shared state of the controllers.

use crate::federation::{Change, MemberSink, Registry};
use crate::metrics::Metrics;
use crate::scheduler::Scheduler;
use futures::channel::mpsc;
use kube::Client;
use kube::runtime::events::{Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use std::sync::Arc;
use std::time::Duration;

use crate::api::{InferenceJob, MemberCluster, TrainingJob};

/// Operator settings.
#[derive(Clone, Debug)]
pub struct Config {
    /// Namespace of member kubeconfig Secrets that name none.
    pub namespace: String,
    /// Member heartbeat period.
    pub heartbeat: Duration,
    /// How long a member may fail probes before it is NotReady.
    pub member_grace: Duration,
    /// Timeout for one member API call.
    pub member_timeout: Duration,
    /// Client-side request rate limit of each member's clients.
    pub member_limits: crate::federation::ClientLimits,
    /// Unused: running jobs are rolled up on watch events, and looked at again every
    /// 5 minutes whatever happens. Kept so existing configurations still build.
    pub resync: Duration,
    /// Unused: waiting jobs are retried by the scheduler when capacity that could serve them
    /// changes. Kept so existing configurations still build.
    pub pending_retry: Duration,
    /// How long the member's scheduler may refuse a gpupool pod (`PodScheduled=False`,
    /// `Unschedulable`) before the hub withdraws it (a training gang: the whole gang), keeps
    /// those GPUs out of placement for [`Config::suspect_for`] and places the job again.
    pub member_refusal: Duration,
    /// How long GPUs a member's scheduler refused stay out of placement.
    pub suspect_for: Duration,
    /// Tenant budgets: whether the pool is paid, the reservation window, the exhaustion grace.
    pub budget: crate::metering::budget::BudgetConfig,
    /// Base URL of the inference gateway, from which each InferenceJob's `status.url` is made.
    pub gateway_url: Option<String>,
    /// Reconciles running at once: of MemberClusters, and of jobs in the two [`Lanes`] together.
    pub concurrency: u16,
    /// When a push member's bound token is renewed: this long before it expires (`None`: at two
    /// thirds of its life).
    pub token_renew_before: Option<Duration>,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            namespace: "gpupool-system".into(),
            heartbeat: Duration::from_secs(2),
            member_grace: Duration::from_secs(30),
            member_timeout: Duration::from_secs(3),
            member_limits: crate::federation::ClientLimits::MEMBER,
            resync: Duration::from_secs(10),
            pending_retry: Duration::from_secs(60),
            member_refusal: Duration::from_secs(60),
            suspect_for: Duration::from_secs(600),
            concurrency: super::CONTROLLER_CONCURRENCY,
            budget: Default::default(),
            gateway_url: None,
            token_renew_before: None,
        }
    }
}

/// Receivers that wake the job controllers.
pub struct Triggers {
    /// One TrainingJob changed in a member.
    pub training: mpsc::UnboundedReceiver<ObjectRef<TrainingJob>>,
    /// Capacity changed: look at every TrainingJob.
    pub training_all: mpsc::UnboundedReceiver<()>,
    /// One InferenceJob changed in a member.
    pub inference: mpsc::UnboundedReceiver<ObjectRef<InferenceJob>>,
    /// Capacity changed: look at every InferenceJob.
    pub inference_all: mpsc::UnboundedReceiver<()>,
    /// Fills [`Context::members`]: the MemberCluster controller's watch is reflected into it.
    pub members: reflector::store::Writer<MemberCluster>,
}

/// Which slots a job reconcile waits for (see [`Lanes`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lane {
    /// A placed job none of whose pods of its current placement exist yet: creating them is
    /// what its start waits for.
    Place,
    /// Everything else: finalizers, roll-ups, restarts, cleanups, looks that change nothing.
    Other,
}

/// The job controllers' reconcile slots, in two lanes of FIFO permits (tokio's semaphore serves
/// its waiters in the order they came). kube-runtime's own concurrency limit is not used for
/// them: once all its slots are busy it keeps the due requests in an unordered set and takes
/// them in no particular order, so in a burst a job placed early waited 30–40 s behind jobs
/// placed after it. Here every due request starts at once and waits for a permit in order, and
/// the pods of a fresh placement never wait behind the finalizers of newer jobs or the
/// roll-ups of older ones (the scheduler's own write workers gave them that precedence before
/// the controllers became their only creator).
pub struct Lanes {
    place: Arc<tokio::sync::Semaphore>,
    other: Arc<tokio::sync::Semaphore>,
}

impl Lanes {
    /// `slots` permits in all, half to each lane (at least one each).
    pub fn new(slots: u16) -> Lanes {
        let half = usize::from(slots / 2).max(1);
        Lanes {
            place: Arc::new(tokio::sync::Semaphore::new(half)),
            other: Arc::new(tokio::sync::Semaphore::new(half)),
        }
    }

    /// Waits, in order, for a slot of `lane`; the slot is free again when the permit drops.
    pub async fn enter(&self, lane: Lane) -> tokio::sync::OwnedSemaphorePermit {
        let sem = match lane {
            Lane::Place => &self.place,
            Lane::Other => &self.other,
        };
        sem.clone()
            .acquire_owned()
            .await
            .expect("the lane semaphores are never closed")
    }
}

/// Everything a reconcile needs.
pub struct Context {
    /// Hub client.
    pub hub: Client,
    /// Member views.
    pub registry: Registry,
    /// Settings.
    pub config: Config,
    /// Publishes Events on hub objects.
    pub recorder: Recorder,
    /// Prometheus metrics.
    pub metrics: Metrics,
    /// The scheduler: pool cache, queue of waiting jobs, placement loop.
    pub scheduler: Arc<Scheduler>,
    /// Every MemberCluster on the hub, as the MemberCluster controller's watch last saw it (a
    /// heartbeat reads other members here, not with a LIST).
    pub members: Store<MemberCluster>,
    /// Tenant escrows and job reservations (a paid pool's), kept by the metering loop.
    pub budget: crate::metering::budget::Budget,
    /// The job controllers' reconcile slots.
    pub lanes: Lanes,
    pub(crate) wake_training: mpsc::UnboundedSender<ObjectRef<TrainingJob>>,
    pub(crate) wake_training_all: mpsc::UnboundedSender<()>,
    pub(crate) wake_inference: mpsc::UnboundedSender<ObjectRef<InferenceJob>>,
    pub(crate) wake_inference_all: mpsc::UnboundedSender<()>,
}

/// What the operator knows about a member a job runs on.
pub enum MemberHealth {
    /// Ready: usable (it may be briefly unreachable within the grace period).
    Ready(Box<crate::federation::MemberView>),
    /// Registered but not heard from since this operator started: wait for its first heartbeat.
    Pending,
    /// NotReady past the grace period: its work must move.
    Lost,
    /// Deleted from the hub (being drained, or gone): its work must move.
    Removed,
}

impl Context {
    /// The part of the context the metering loop uses.
    pub fn metering(&self) -> crate::metering::runner::Deps {
        crate::metering::runner::Deps {
            hub: self.hub.clone(),
            registry: self.registry.clone(),
            metrics: self.metrics.clone(),
            recorder: self.recorder.clone(),
            members: self.members.clone(),
            budget: self.budget.clone(),
            jobs: {
                let scheduler = self.scheduler.clone();
                std::sync::Arc::new(move || {
                    Some((scheduler.training_store()?, scheduler.inference_store()?))
                })
            },
        }
    }

    /// Health of member `name` as the job controllers must treat it.
    pub async fn member_health(&self, name: &str) -> MemberHealth {
        match self.registry.get(name).await {
            Some(m) if m.ready => MemberHealth::Ready(Box::new(m)),
            Some(_) => MemberHealth::Lost,
            None => {
                let api: kube::Api<crate::api::MemberCluster> = kube::Api::all(self.hub.clone());
                match api.get_opt(name).await {
                    Ok(None) => MemberHealth::Removed,
                    Ok(Some(mc)) if mc.metadata.deletion_timestamp.is_some() => {
                        MemberHealth::Removed
                    }
                    // Registered (or the hub did not answer): the heartbeat will tell.
                    _ => MemberHealth::Pending,
                }
            }
        }
    }

    /// A context and the triggers its controllers listen on.
    pub fn new(hub: Client, config: Config, metrics: Metrics) -> (Arc<Context>, Triggers) {
        let (wt, rt) = mpsc::unbounded();
        let (wta, rta) = mpsc::unbounded();
        let (wi, ri) = mpsc::unbounded();
        let (wia, ria) = mpsc::unbounded();
        let (members, members_writer) = reflector::store();
        let reporter = Reporter {
            controller: "gpupool-operator".into(),
            instance: std::env::var("POD_NAME").ok(),
        };
        let registry = Registry::default();
        let scheduler = Scheduler::new(hub.clone(), reporter.clone(), metrics.clone());
        let recorder = Recorder::new(hub.clone(), reporter);
        let budget = crate::metering::budget::Budget::new(config.budget.clone());
        if config.budget.paid {
            scheduler.set_budget(budget.clone());
        }
        let ctx = Context {
            lanes: Lanes::new(config.concurrency),
            budget,
            recorder,
            hub,
            registry,
            config,
            metrics,
            scheduler,
            members,
            wake_training: wt,
            wake_training_all: wta,
            wake_inference: wi,
            wake_inference_all: wia,
        };
        (
            Arc::new(ctx),
            Triggers {
                training: rt,
                training_all: rta,
                inference: ri,
                inference_all: ria,
                members: members_writer,
            },
        )
    }

    /// Wakes every job (capacity or member readiness changed).
    pub fn wake_all_jobs(&self) {
        let _ = self.wake_training_all.unbounded_send(());
        let _ = self.wake_inference_all.unbounded_send(());
    }

    /// What a member's watches report to: the scheduler's cache, and the hub job a pod belongs
    /// to (woken at once).
    pub fn member_sink(self: &Arc<Self>) -> Arc<dyn MemberSink> {
        Arc::new(Sink {
            scheduler: self.scheduler.clone(),
            training: self.wake_training.clone(),
            inference: self.wake_inference.clone(),
        })
    }

    /// Wakes the controllers of the hub jobs holding GPUs on `member` (its readiness changed).
    pub fn wake_jobs_on(&self, member: &str) {
        for j in self.scheduler.with_cache(|c| c.jobs_on(member)) {
            self.wake_job(j.kind, &j.namespace, &j.name);
        }
    }

    /// Wakes one hub job by kind/namespace/name.
    pub fn wake_job(&self, kind: &str, ns: &str, name: &str) {
        match kind {
            "TrainingJob" => {
                let _ = self
                    .wake_training
                    .unbounded_send(ObjectRef::new(name).within(ns));
            }
            "InferenceJob" => {
                let _ = self
                    .wake_inference
                    .unbounded_send(ObjectRef::new(name).within(ns));
            }
            _ => {}
        }
    }
}

struct Sink {
    scheduler: Arc<Scheduler>,
    training: mpsc::UnboundedSender<ObjectRef<TrainingJob>>,
    inference: mpsc::UnboundedSender<ObjectRef<InferenceJob>>,
}

impl Sink {
    fn wake_ref(&self, kind: &str, ns: &str, name: &str) {
        match kind {
            "TrainingJob" => {
                let _ = self
                    .training
                    .unbounded_send(ObjectRef::new(name).within(ns));
            }
            "InferenceJob" => {
                let _ = self
                    .inference
                    .unbounded_send(ObjectRef::new(name).within(ns));
            }
            _ => {}
        }
    }

    fn wake(&self, pod: &k8s_openapi::api::core::v1::Pod) {
        use crate::federation::labels;
        let Some(l) = pod.metadata.labels.as_ref() else {
            return;
        };
        let (Some(kind), Some(ns), Some(name)) = (
            l.get(labels::JOB_KIND),
            l.get(labels::JOB_NAMESPACE),
            l.get(labels::JOB_NAME),
        ) else {
            return;
        };
        self.wake_ref(kind, ns, name);
    }
}

impl MemberSink for Sink {
    fn node(&self, member: &str, change: Change<k8s_openapi::api::core::v1::Node>) {
        self.scheduler.node_change(member, change);
    }

    fn topology(&self, member: &str, change: Change<crate::api::GpuTopology>) {
        self.scheduler.topology_change(member, change);
    }

    fn slice_devices(&self, member: &str, per_node: std::collections::BTreeMap<String, i64>) {
        self.scheduler.slice_devices_change(member, per_node);
    }

    fn outside_claims(
        &self,
        member: &str,
        per_node: std::collections::BTreeMap<String, Vec<String>>,
    ) {
        self.scheduler.outside_claims_change(member, per_node);
    }

    fn pod(&self, member: &str, change: Change<k8s_openapi::api::core::v1::Pod>) {
        self.scheduler.pod_change(member, &change);
        match &change {
            Change::Applied(p) | Change::Deleted(p) => self.wake(p),
            // A list (first, or after the watch broke) may hold changes no event reported: every
            // job with a pod there, and every job holding GPUs there (its pods may be gone),
            // looks again.
            Change::Listed(all) => {
                for p in all {
                    self.wake(p);
                }
                for j in self.scheduler.with_cache(|c| c.jobs_on(member)) {
                    self.wake_ref(j.kind, &j.namespace, &j.name);
                }
            }
            Change::Relisting => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::FutureExt;

    #[tokio::test]
    async fn a_busy_lane_does_not_hold_the_other_and_serves_in_order() {
        let lanes = Lanes::new(4);
        let a = lanes.enter(Lane::Place).await;
        let b = lanes.enter(Lane::Place).await;
        // Place is full: the next two wait, in the order they came.
        let mut first = Box::pin(lanes.enter(Lane::Place));
        let mut second = Box::pin(lanes.enter(Lane::Place));
        assert!((&mut first).now_or_never().is_none());
        assert!((&mut second).now_or_never().is_none());
        // The other lane is not held by it.
        let c = lanes.enter(Lane::Other).now_or_never();
        assert!(c.is_some(), "a full Place lane must not block Other");
        drop(a);
        assert!(
            (&mut second).now_or_never().is_none(),
            "the later waiter went first"
        );
        let _f = (&mut first)
            .now_or_never()
            .expect("the first waiter gets the freed slot");
        drop(b);
        assert!((&mut second).now_or_never().is_some());
    }
}
