//! The scheduler core: one loop placing pending jobs from a queue onto an in-memory cache of the
//! pool, the shape of kube-scheduler (cache + scheduling queue) and Kueue (cache + queue manager).
//!
//! - The **cache** ([`cache::PoolCache`]) is fed by watch events: hub jobs (their statuses hold
//!   GPUs), member nodes, `GpuTopology` objects and gpupool pods. It is rebuilt from those lists
//!   before the loop places anything, so assignments survive operator restarts without a global
//!   LIST per decision.
//! - The **queue** ([`queue::Queue`]) orders pending jobs by priority, then age; a gang is one
//!   entry. A job that does not fit is parked until a change that could serve it (GPUs freed on a
//!   node with enough of the right model, a node or member added); a failed write backs off.
//! - The **loop** pops a job, decides with the pure placement functions on the cache, *assumes*
//!   the chosen GPUs (held until the hub status that records them is observed), and hands the
//!   writes — the hub status (conditional on the resourceVersion decided on) and the Event — to
//!   bounded concurrent workers. A failed write un-assumes and requeues the job with backoff.
//!   The scheduler writes only the decision: the job's controller, woken by that write, creates
//!   the member objects from it.

pub mod admit;
mod budget_gate;
pub mod cache;
mod events;
pub mod fairshare;
pub mod jobs;
pub mod preempt;
mod preemption;
pub mod queue;
mod queue_status;
pub mod quota;
pub mod victims;
pub mod writes;

#[cfg(test)]
mod tests;

pub use cache::{JobName, MemberInfo, PoolCache, Slot, Snapshot};
pub use jobs::Pending;
pub use queue::{Need, Queue};

use crate::api::{GpuQueue, GpuQueueSpec, GpuTopology, InferenceJob, TrainingJob};
use crate::federation::{Change, allocatable_gpus, labels, node_ready};
use crate::metrics::Metrics;
use cache::{NodeFacts, TopologyFacts};
use jobs::Decision;
use k8s_openapi::api::core::v1::{Node, Pod};
use k8s_openapi::api::scheduling::v1::PriorityClass;
use kube::api::Api;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Resource, ResourceExt};
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, MutexGuard, OnceLock};
use std::time::{Duration, Instant};
use tokio::sync::{Notify, Semaphore};

/// Writes (status + member objects of one decision) running at once.
pub const MAX_CONCURRENT_WRITES: usize = 64;
/// Normal Events sent once per job and placement, never folded into a series (see
/// [`Scheduler::recorder`]).
const UNFOLDED_EVENTS: [&str; 2] = ["Scheduled", "Running"];
/// A waiting job's queue position is rewritten at most this often (its reason at every change).
const POSITION_REFRESH: Duration = Duration::from_secs(10);
/// Waiting jobs whose written position is no longer theirs are rewritten at most this many per
/// [`POSITION_REFRESH`], front of the queue first (so that no two show the same position for
/// long, without a write per waiting job whenever the head of a long queue moves).
const POSITION_BATCH: usize = 100;
/// Normal Events (`Scheduled`, `Running`, …, the scheduler's and the controllers') published
/// per second, after a burst of [`EVENT_BURST`]: in a burst of thousands of jobs each Event is
/// one more hub write competing with the placements themselves (what they say is in each job's
/// status anyway). Warnings are never limited. Skipped Events are counted in
/// `gpupool_events_skipped_total`.
const EVENTS_PER_SECOND: u32 = 20;
/// See [`EVENTS_PER_SECOND`].
const EVENT_BURST: u32 = 200;
/// How often a job waiting for the GPUs of jobs preempted for it looks whether they are free.
const PREEMPTION_POLL: Duration = Duration::from_secs(1);

struct State {
    /// A paid pool's tenant budgets (see [`budget_gate`]); `None`: every placement starts.
    budget: Option<crate::metering::budget::Budget>,
    cache: PoolCache,
    queue: Queue<Pending>,
    /// Hub job kinds listed at least once: [TrainingJob, InferenceJob].
    listed: [bool; 2],
    /// UIDs seen during a relist of each kind.
    relist: [Option<BTreeSet<String>>; 2],
    /// Jobs whose decision is being written.
    in_flight: HashSet<String>,
    /// (member, namespace) known to exist.
    namespaces: HashSet<(String, String)>,
    /// What was last written as a waiting job's reason and position.
    reported: HashMap<String, (String, usize, Instant)>,
    /// The hub's PriorityClasses: (value, globalDefault) by name, and while the watch lists
    /// again, the ones listed so far.
    class_objects: BTreeMap<String, (i32, bool)>,
    class_relist: Option<BTreeMap<String, (i32, bool)>>,
    classes: queue::PriorityClasses,
    /// GPUs each job has marked suspect now (see [`Scheduler::suspect`]).
    suspects: HashMap<String, usize>,
    /// Per job, the resourceVersion the operator's last status write replaced, until a newer
    /// version is observed (see [`Scheduler::stale_view`]).
    superseded: HashMap<String, String>,
    /// Waiting jobs whose written position is to be rewritten, and when they were last looked for.
    refresh: std::collections::VecDeque<String>,
    last_refresh: Option<Instant>,
    /// Queue quotas and usage; the `GpuQueue` objects (listed at least once: `Some`), and while
    /// their watch lists again, the ones listed so far.
    quotas: quota::Quotas,
    queue_objects: Option<BTreeMap<String, GpuQueueSpec>>,
    queue_relist: Option<BTreeMap<String, GpuQueueSpec>>,
    /// Placed TrainingJobs: what preemption weighs (see [`victims`]).
    running: HashMap<String, victims::Running>,
    /// Waiting jobs for which jobs were preempted → those jobs' GPUs they wait for.
    preempting: HashMap<String, BTreeSet<Slot>>,
    /// Jobs preempted whose status is not yet observed without its placement.
    being_preempted: HashSet<String>,
    /// Moves whenever what preemption could find changes (running gangs, queues, priorities).
    preempt_epoch: u64,
    /// Waiting jobs whose last search found no victims → the epoch it looked at (not searched
    /// again until something changed).
    searched: HashMap<String, u64>,
}

/// Of waiting jobs at `positions` (1-based, queue order), those whose `reported` position
/// differs, front first, at most `batch`.
fn stale_positions<'a>(
    positions: impl Iterator<Item = (usize, &'a str)>,
    reported: &HashMap<String, (String, usize, Instant)>,
    batch: usize,
) -> std::collections::VecDeque<String> {
    positions
        .filter(|(i, u)| reported.get(*u).is_some_and(|(_, p, _)| p != i))
        .take(batch)
        .map(|(_, u)| u.to_string())
        .collect()
}

/// One decision to write.
struct Work {
    uid: String,
    job: Pending,
    decision: Decision,
    position: usize,
    report_event: bool,
    /// The job's GpuQueue, when it is placed in one.
    queue: Option<String>,
    /// Jobs preempted for it (their statuses are written first).
    victims: Vec<victims::Victim>,
}

enum Step {
    Idle,
    Parked,
    Work(Box<Work>),
}

/// The scheduler: cache, queue and loop.
pub struct Scheduler {
    state: Mutex<State>,
    notify: Notify,
    hub: kube::Client,
    recorder: Recorder,
    reporter: Reporter,
    metrics: Metrics,
    writes: Arc<Semaphore>,
    events: governor::DefaultDirectRateLimiter,
    /// Events in order per object, off the callers' path (made on first use, in the runtime).
    event_lanes: OnceLock<events::EventLanes>,
    /// The controllers' hub job stores: a queued job shares the store's object.
    training_store: OnceLock<Store<TrainingJob>>,
    inference_store: OnceLock<Store<InferenceJob>>,
}

/// `j` as the store holds it (the same version), else a copy.
fn shared<K>(store: Option<&Store<K>>, j: &K) -> Arc<K>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store
        .and_then(|s| s.get(&ObjectRef::from_obj(j)))
        .filter(|s| s.meta().resource_version == j.meta().resource_version)
        .unwrap_or_else(|| Arc::new(j.clone()))
}

fn kind_index(kind: &str) -> usize {
    usize::from(kind == "InferenceJob")
}

/// GPUs a member pod holds: its annotated UUIDs on its node, until it finishes.
pub fn pod_slots(member: &str, p: &Pod) -> BTreeSet<Slot> {
    let phase = p
        .status
        .as_ref()
        .and_then(|s| s.phase.as_deref())
        .unwrap_or("Pending");
    if phase == "Succeeded" || phase == "Failed" {
        return BTreeSet::new();
    }
    // DRA pods carry no `nodeName` until the member's scheduler binds them: the chosen node.
    let Some(node) = crate::workloads::pod_node(p) else {
        return BTreeSet::new();
    };
    let Some(uuids) = p.annotations().get(labels::GPU_UUIDS) else {
        return BTreeSet::new();
    };
    crate::meta::gpu_uuids(uuids)
        .map(|u| Slot {
            member: member.to_string(),
            node: node.to_string(),
            uuid: u.to_string(),
        })
        .collect()
}

fn node_facts(n: &Node) -> NodeFacts {
    NodeFacts {
        ready: node_ready(n),
        allocatable: allocatable_gpus(n),
    }
}

fn topology_facts(t: &GpuTopology) -> TopologyFacts {
    TopologyFacts {
        spec: t.spec.clone(),
        // GPUs the kubelet reports held by a pod are never free, whoever chose them.
        busy: t
            .status
            .as_ref()
            .map(|s| {
                let mut busy = s.gpus_in_use.clone();
                busy.extend(
                    s.pod_devices
                        .iter()
                        .flat_map(|d| d.device_ids.iter().cloned()),
                );
                busy.sort();
                busy.dedup();
                busy
            })
            .unwrap_or_default(),
        published: t
            .metadata
            .creation_timestamp
            .as_ref()
            .map(|c| c.0.as_second())
            .unwrap_or(i64::MAX),
    }
}

impl State {
    fn new() -> State {
        State {
            budget: None,
            cache: PoolCache::new(),
            queue: Queue::new(),
            listed: [false, false],
            relist: [None, None],
            in_flight: HashSet::new(),
            namespaces: HashSet::new(),
            reported: HashMap::new(),
            class_objects: BTreeMap::new(),
            class_relist: None,
            classes: queue::PriorityClasses::default(),
            suspects: HashMap::new(),
            superseded: HashMap::new(),
            refresh: Default::default(),
            last_refresh: None,
            quotas: quota::Quotas::new(),
            queue_objects: None,
            queue_relist: None,
            running: HashMap::new(),
            preempting: HashMap::new(),
            being_preempted: HashSet::new(),
            preempt_epoch: 0,
            searched: HashMap::new(),
        }
    }

    /// A version of job `uid` other than the one the operator last wrote over is observed: the
    /// watch has moved past that write (see [`Scheduler::stale_view`]).
    fn observed_version(&mut self, uid: &str, rv: Option<&str>) {
        if self
            .superseded
            .get(uid)
            .is_some_and(|old| Some(old.as_str()) != rv)
        {
            self.superseded.remove(uid);
        }
    }

    /// A status write over version `rv` of job `uid` succeeded.
    fn wrote_over(&mut self, uid: &str, rv: Option<&str>) {
        if let Some(rv) = rv {
            self.superseded.insert(uid.to_string(), rv.to_string());
        }
    }

    /// Whether version `rv` of job `uid` is older than a status written since.
    fn stale_view(&self, uid: &str, rv: Option<&str>) -> bool {
        rv.is_some_and(|rv| self.superseded.get(uid).is_some_and(|o| o == rv))
    }

    fn observe_training(&mut self, j: &TrainingJob, shared: impl FnOnce() -> Arc<TrainingJob>) {
        let Some(uid) = j.uid() else { return };
        self.observed_version(&uid, j.metadata.resource_version.as_deref());
        let slots = jobs::training_slots(j);
        let was = if slots.is_empty() {
            self.being_preempted.remove(&uid);
            self.running.remove(&uid)
        } else {
            let priority = i64::from(self.classes.of(j).unwrap_or(0));
            let now = jobs::running_of(j, priority);
            self.running
                .insert(uid.clone(), now.clone())
                .filter(|w| *w == now)
        };
        if was.is_none() != slots.is_empty() {
            self.preempt_epoch += 1;
        }
        self.observe_job(
            &uid,
            (jobs::training_name(j), j.spec.queue.as_deref()),
            slots,
            jobs::training_waits(j),
            jobs::order_of(j, self.classes.of(j).unwrap_or(0)),
            || Pending::Training(shared()),
        );
    }

    fn observe_inference(&mut self, j: &InferenceJob, shared: impl FnOnce() -> Arc<InferenceJob>) {
        let Some(uid) = j.uid() else { return };
        self.observed_version(&uid, j.metadata.resource_version.as_deref());
        self.observe_job(
            &uid,
            (jobs::inference_name(j), j.spec.queue.as_deref()),
            jobs::inference_slots(j),
            jobs::inference_waits(j),
            jobs::order_of(j, self.classes.of(j).unwrap_or(0)),
            || Pending::Inference(shared()),
        );
    }

    /// Records a job's placed GPUs (in the cache and against its queue, `queue` the one it
    /// names) and keeps it queued exactly while it waits.
    fn observe_job(
        &mut self,
        uid: &str,
        (name, queue): (JobName, Option<&str>),
        slots: BTreeSet<Slot>,
        waits: bool,
        (priority, created, generation): (i64, i64, i64),
        pending: impl FnOnce() -> Pending,
    ) {
        // A job's GPUs changed: queues' use and holders, what preemption looks at.
        if !self.cache.hub_holds(uid, &slots) {
            self.preempt_epoch += 1;
        }
        self.quotas
            .set_job(uid, &name.namespace, queue, slots.clone());
        self.cache.set_job(uid, name, slots);
        if waits {
            // A job whose decision is being written stays in flight with the newer object; one
            // whose written decision is not yet observed is not queued again.
            if self.queue.contains(uid) || !self.cache.is_assumed(uid) {
                self.queue
                    .upsert(uid, priority, created, generation, pending());
            }
        } else {
            self.queue.remove(uid);
            self.reported.remove(uid);
            self.quotas.set_waiting(uid, None);
        }
    }

    /// The PriorityClasses changed: every queued job is ordered by its new priority and tried
    /// again (one waiting for a class that now exists, too).
    fn set_classes(&mut self, classes: queue::PriorityClasses) {
        if classes == self.classes {
            return;
        }
        self.classes = classes;
        self.preempt_epoch += 1;
        let queued: Vec<(String, Pending)> = self
            .queue
            .positions()
            .map(|(_, u, p)| (u.to_string(), p.clone()))
            .collect();
        for (uid, p) in queued {
            let priority = self.classes.of(&p).unwrap_or(0);
            let (_, created, generation) = match &p {
                Pending::Training(j) => jobs::order_of(&**j, priority),
                Pending::Inference(j) => jobs::order_of(&**j, priority),
            };
            self.queue
                .upsert(&uid, i64::from(priority), created, generation, p);
        }
        self.queue.wake(|_| true);
    }

    /// A node's published GPU model: the class its GPUs count as in queue quotas.
    fn note_model(&mut self, member: &str, t: &GpuTopology) {
        if let Some(g) = t.spec.gpus.first() {
            self.quotas
                .set_node_model(member, &t.spec.node_name, &g.model);
        }
    }

    /// The `GpuQueue` objects are now `queues`: every job counts against its queue again, and
    /// every waiting job is tried again.
    fn set_queues(&mut self, queues: BTreeMap<String, GpuQueueSpec>) {
        self.quotas.set_queues(queues.clone());
        self.preempt_epoch += 1;
        self.queue_objects = Some(queues);
        self.queue.wake(|_| true);
    }

    fn forget(&mut self, uid: &str) {
        self.searched.remove(uid);
        if self.running.contains_key(uid) {
            self.preempt_epoch += 1;
        }
        if self.cache.unreserve(uid) {
            self.queue.wake(|_| true);
        }
        self.running.remove(uid);
        self.preempting.remove(uid);
        self.being_preempted.remove(uid);
        self.superseded.remove(uid);
        self.suspects.remove(uid);
        self.cache.forget_job(uid);
        self.quotas.forget(uid);
        self.queue.forget(uid);
        self.reported.remove(uid);
    }

    fn apply_wakes(&mut self) {
        let w = self.cache.take_wakes();
        if w.all || self.quotas.take_released() {
            self.queue.wake(|_| true);
        } else if !w.nodes.is_empty() {
            self.queue.wake(|n| {
                w.nodes
                    .iter()
                    .any(|x| n.served_by(&x.graph, x.gpus, &x.model, x.memory_mib))
            });
        }
    }

    /// Every [`POSITION_REFRESH`], looks for waiting jobs whose written position moved.
    fn refresh_positions(&mut self, now: Instant) {
        if !self.refresh.is_empty()
            || self
                .last_refresh
                .is_some_and(|t| now.duration_since(t) < POSITION_REFRESH)
        {
            return;
        }
        self.last_refresh = Some(now);
        self.refresh = stale_positions(
            self.queue.positions().map(|(i, u, _)| (i, u)),
            &self.reported,
            POSITION_BATCH,
        );
    }

    /// The next parked job whose written position moved: its wait rewritten (same reason, no
    /// Event), without deciding it again.
    fn next_position(&mut self) -> Option<Step> {
        while let Some(uid) = self.refresh.pop_front() {
            if self.in_flight.contains(&uid) {
                continue;
            }
            let (Some(need), Some((reason, was, _)), Some(position)) = (
                self.queue.parked_need(&uid).cloned(),
                self.reported.get(&uid).cloned(),
                self.queue.position(&uid),
            ) else {
                continue;
            };
            let Some(job) = self.queue.get(&uid).cloned().filter(|_| was != position) else {
                continue;
            };
            self.reported
                .insert(uid.clone(), (reason.clone(), position, Instant::now()));
            self.in_flight.insert(uid.clone());
            return Some(Step::Work(Box::new(Work {
                uid,
                job,
                decision: Decision::Wait { reason, need },
                position,
                report_event: false,
                queue: None,
                victims: Vec::new(),
            })));
        }
        None
    }

    /// When the loop must look again though nothing changed: a backoff ends, a parked job is
    /// flushed, or waiting jobs' positions are due for a check.
    fn next_deadline(&self) -> Option<Instant> {
        let positions = self
            .last_refresh
            .filter(|_| !self.reported.is_empty())
            .map(|t| t + POSITION_REFRESH);
        self.queue
            .next_deadline()
            .into_iter()
            .chain(positions)
            .min()
    }

    /// One step of the loop under one lock (tests; the loop decides without the lock).
    #[cfg(test)]
    fn next(&mut self, snap: &mut Snapshot, metrics: &Metrics) -> Step {
        match self.pick(snap) {
            Ok(p) => {
                let d = p.decide(snap, metrics);
                self.settle(p, d)
            }
            Err(step) => step,
        }
    }

    /// Takes the next job to decide and brings the loop's snapshot up to date (copying what
    /// changed since the last decision); or what to do instead.
    fn pick(&mut self, snap: &mut Snapshot) -> Result<Picked, Step> {
        if !(self.listed[0] && self.listed[1] && self.queue_objects.is_some()) {
            return Err(Step::Idle);
        }
        self.apply_wakes();
        let now = Instant::now();
        self.refresh_positions(now);
        let Some((uid, job)) = self.queue.pop(now) else {
            return Err(self.next_position().unwrap_or(Step::Idle));
        };
        let job = job.clone();
        // GPUs reserved for it (released by jobs preempted for it) are its to take now.
        self.cache.unreserve_for_decision(&uid);
        let class = self.classes.of(&job).err();
        self.cache.update_snapshot(snap);
        let quotas = self.quotas.view();
        Ok(Picked {
            uid,
            job,
            class,
            quotas,
        })
    }

    /// Acts on a decision taken on the snapshot: dropped when the job left the queue or changed
    /// meanwhile, tried again when the GPUs it chose were taken meanwhile, else assumed (placed)
    /// or parked (waits).
    fn settle(&mut self, p: Picked, admitted: admit::Admitted) -> Step {
        let Picked { uid, job, .. } = p;
        let admit::Admitted {
            decision,
            queue,
            hungry,
        } = admitted;
        let Some(current) = self.queue.get(&uid) else {
            // Deleted, or observed placed, while it was decided.
            return Step::Parked;
        };
        let changed = current.resource_version() != job.resource_version();
        let taken = match &decision {
            Decision::Training { slots, .. } | Decision::Inference { slots, .. } => {
                !self.cache.still_free(slots)
            }
            Decision::Wait { .. } => false,
        };
        if changed || taken {
            if let Some(slots) = self.preempting.get(&uid) {
                self.cache.reserve(&uid, slots);
            }
            tracing::debug!(job = %job.name().name, changed, taken, "decision overtaken by events: deciding again");
            self.queue.retry_now(&uid);
            return Step::Parked;
        }
        // Only a job waiting for GPUs or quota may preempt (not one its tenant's budget stops).
        let wants_gpus = matches!(decision, Decision::Wait { .. });
        let decision = budget_gate::gate(self.budget.as_ref(), &job, decision);
        let (decision, victims) = match (decision, queue.as_deref()) {
            (Decision::Wait { reason, need }, Some(q)) if wants_gpus => {
                match self.preemption(&uid, &job, q, !hungry) {
                    Some((reason, victims)) => (Decision::Wait { reason, need }, victims),
                    None => (Decision::Wait { reason, need }, Vec::new()),
                }
            }
            (d, _) => (d, Vec::new()),
        };
        let position = self.queue.position(&uid).unwrap_or(1);
        match &decision {
            Decision::Training { slots, .. } | Decision::Inference { slots, .. } => {
                self.quotas.assume(&uid, slots.clone());
                self.quotas.set_waiting(&uid, None);
                if self.preempting.remove(&uid).is_some() {
                    // What it left of the GPUs released for it is free for others now.
                    self.queue.wake(|_| true);
                }
                self.cache.assume(&uid, slots.clone());
                self.in_flight.insert(uid.clone());
                Step::Work(Box::new(Work {
                    uid,
                    job,
                    decision,
                    position,
                    report_event: false,
                    queue,
                    victims,
                }))
            }
            Decision::Wait { reason, need } => {
                match self.preempting.get(&uid) {
                    // Waits for the GPUs of jobs preempted for it: kept for it meanwhile, and
                    // looked at again each second (their release frees nothing it could see).
                    Some(slots) => {
                        self.cache.reserve(&uid, slots);
                        let at = Instant::now() + PREEMPTION_POLL;
                        self.queue.retry_at(&uid, at);
                    }
                    None => self.queue.park(&uid, need.clone(), Instant::now()),
                }
                self.quotas
                    .set_waiting(&uid, queue.as_deref().map(|q| (q, hungry)));
                let (report, event) = match self.reported.get(&uid) {
                    None => (true, true),
                    Some((r, p, at)) => (
                        r != reason || (*p != position && at.elapsed() >= POSITION_REFRESH),
                        r != reason,
                    ),
                };
                let report = report || !victims.is_empty();
                if !report {
                    return Step::Parked;
                }
                self.reported
                    .insert(uid.clone(), (reason.clone(), position, Instant::now()));
                self.in_flight.insert(uid.clone());
                Step::Work(Box::new(Work {
                    uid,
                    job,
                    decision,
                    position,
                    report_event: event,
                    queue,
                    victims,
                }))
            }
        }
    }
}

/// A job taken from the queue, to be decided on the snapshot.
struct Picked {
    uid: String,
    job: Pending,
    /// Why its PriorityClass does not resolve, when it does not.
    class: Option<String>,
    /// The queues and their use as the job was picked.
    quotas: Arc<quota::QuotaView>,
}

impl Picked {
    /// The decision, on the snapshot alone (no lock held).
    fn decide(&self, snap: &Snapshot, metrics: &Metrics) -> admit::Admitted {
        let t0 = Instant::now();
        let kind = match &self.job {
            Pending::Training(_) => "trainingjob",
            Pending::Inference(_) => "inferencejob",
        };
        let admitted = match &self.class {
            // Waits for its PriorityClass to exist (woken when the classes change).
            Some(reason) => admit::Admitted {
                decision: Decision::Wait {
                    reason: reason.clone(),
                    need: Need::nothing(),
                },
                queue: None,
                hungry: false,
            },
            None => admit::decide(snap, &self.quotas, &self.job),
        };
        metrics.observe_placement(kind, t0.elapsed());
        tracing::debug!(job = %self.job.name().name, took = ?t0.elapsed(), placed = !matches!(admitted.decision, Decision::Wait { .. }), "scheduling decision");
        admitted
    }
}

impl Scheduler {
    /// A scheduler writing its decisions to `hub`.
    pub fn new(hub: kube::Client, reporter: Reporter, metrics: Metrics) -> Arc<Self> {
        let recorder = Recorder::new(hub.clone(), reporter.clone());
        Arc::new(Scheduler {
            state: Mutex::new(State::new()),
            notify: Notify::new(),
            hub,
            recorder,
            reporter,
            metrics,
            writes: Arc::new(Semaphore::new(MAX_CONCURRENT_WRITES)),
            events: governor::RateLimiter::direct(
                governor::Quota::per_second(
                    std::num::NonZeroU32::new(EVENTS_PER_SECOND).expect("not zero"),
                )
                .allow_burst(std::num::NonZeroU32::new(EVENT_BURST).expect("not zero")),
            ),
            event_lanes: OnceLock::new(),
            training_store: OnceLock::new(),
            inference_store: OnceLock::new(),
        })
    }

    /// Gates placements on tenant budgets (a paid pool) and wakes the jobs waiting for one
    /// each time the budgets are read again.
    pub fn set_budget(self: &Arc<Self>, budget: crate::metering::budget::Budget) {
        let me = Arc::downgrade(self);
        budget.on_refresh(Arc::new(move || {
            if let Some(s) = me.upgrade() {
                s.lock().queue.wake(|n| *n == queue::Need::nothing());
                s.notify.notify_one();
            }
        }));
        self.lock().budget = Some(budget);
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    // ----- inputs -----

    fn job_event<K: Resource + Clone>(
        &self,
        kind: &str,
        ev: &watcher::Event<K>,
        observe: impl Fn(&mut State, &K),
    ) {
        let i = kind_index(kind);
        let mut st = self.lock();
        match ev {
            watcher::Event::Apply(j) => observe(&mut st, j),
            watcher::Event::InitApply(j) => {
                if let (Some(seen), Some(uid)) = (st.relist[i].as_mut(), j.meta().uid.clone()) {
                    seen.insert(uid);
                }
                observe(&mut st, j);
            }
            watcher::Event::Delete(j) => {
                if let Some(uid) = &j.meta().uid {
                    st.forget(uid);
                }
            }
            watcher::Event::Init => st.relist[i] = Some(BTreeSet::new()),
            watcher::Event::InitDone => {
                if let Some(keep) = st.relist[i].take() {
                    st.cache.retain_jobs(kind, &keep);
                    let gone: Vec<String> = st
                        .queue
                        .positions()
                        .filter(|(_, u, p)| p.name().kind == kind && !keep.contains(*u))
                        .map(|(_, u, _)| u.to_string())
                        .collect();
                    for u in gone {
                        st.forget(&u);
                    }
                }
                st.listed[i] = true;
            }
        }
        drop(st);
        self.notify.notify_one();
    }

    /// A TrainingJob watch event from the hub.
    pub fn training_event(&self, ev: &watcher::Event<TrainingJob>) {
        self.job_event("TrainingJob", ev, |st, j| {
            st.observe_training(j, || shared(self.training_store.get(), j))
        });
    }

    /// The store the TrainingJob watch feeds (queued jobs share its objects instead of copies).
    pub fn share_training_store(&self, store: Store<TrainingJob>) {
        let _ = self.training_store.set(store);
    }

    /// The store the InferenceJob watch feeds.
    pub fn share_inference_store(&self, store: Store<InferenceJob>) {
        let _ = self.inference_store.set(store);
    }

    /// The hub's TrainingJobs as the operator's watch holds them, once it has listed them all.
    pub fn training_store(&self) -> Option<Store<TrainingJob>> {
        self.training_store
            .get()
            .filter(|s| crate::federation::listed(s))
            .cloned()
    }

    /// The hub's InferenceJobs as the operator's watch holds them, once it has listed them all.
    pub fn inference_store(&self) -> Option<Store<InferenceJob>> {
        self.inference_store
            .get()
            .filter(|s| crate::federation::listed(s))
            .cloned()
    }

    /// An InferenceJob watch event from the hub.
    pub fn inference_event(&self, ev: &watcher::Event<InferenceJob>) {
        self.job_event("InferenceJob", ev, |st, j| {
            st.observe_inference(j, || shared(self.inference_store.get(), j))
        });
    }

    /// A `scheduling.k8s.io/v1` PriorityClass watch event from the hub.
    pub fn priority_class_event(&self, ev: &watcher::Event<PriorityClass>) {
        let facts = |c: &PriorityClass| {
            (
                c.name_any(),
                (c.value.unwrap_or(0), c.global_default.unwrap_or(false)),
            )
        };
        let mut st = self.lock();
        match ev {
            watcher::Event::Apply(c) => {
                let (n, f) = facts(c);
                st.class_objects.insert(n, f);
            }
            watcher::Event::Delete(c) => {
                st.class_objects.remove(&c.name_any());
            }
            watcher::Event::Init => st.class_relist = Some(BTreeMap::new()),
            watcher::Event::InitApply(c) => {
                let (n, f) = facts(c);
                st.class_relist.get_or_insert_default().insert(n, f);
            }
            watcher::Event::InitDone => {
                st.class_objects = st.class_relist.take().unwrap_or_default();
            }
        }
        if matches!(ev, watcher::Event::Init | watcher::Event::InitApply(_)) {
            return;
        }
        let classes = queue::PriorityClasses::new(
            st.class_objects
                .iter()
                .map(|(n, (v, g))| (n.clone(), *v, *g)),
        );
        st.set_classes(classes);
        drop(st);
        self.notify.notify_one();
    }

    /// A `GpuQueue` watch event from the hub. Nothing is placed until the queues are listed
    /// (a job of a queue must not be admitted beyond a quota not read yet).
    pub fn gpu_queue_event(&self, ev: &watcher::Event<GpuQueue>) {
        let mut st = self.lock();
        let mut queues = st.queue_objects.clone().unwrap_or_default();
        match ev {
            watcher::Event::Apply(q) => {
                queues.insert(q.name_any(), q.spec.clone());
            }
            watcher::Event::Delete(q) => {
                queues.remove(&q.name_any());
            }
            watcher::Event::Init => {
                st.queue_relist = Some(BTreeMap::new());
                return;
            }
            watcher::Event::InitApply(q) => {
                let relist = st.queue_relist.get_or_insert_default();
                relist.insert(q.name_any(), q.spec.clone());
                return;
            }
            watcher::Event::InitDone => queues = st.queue_relist.take().unwrap_or_default(),
        }
        st.set_queues(queues);
        drop(st);
        self.notify.notify_one();
    }

    /// The hub serves no GpuQueues (their CRD is not installed): no queue limits anything.
    pub fn no_gpu_queues(&self) {
        let mut st = self.lock();
        if st.queue_objects.is_none() {
            st.set_queues(BTreeMap::new());
            drop(st);
            self.notify.notify_one();
        }
    }

    /// Queue quotas and usage (briefly: the loop waits meanwhile).
    pub fn with_quotas<T>(&self, f: impl FnOnce(&quota::Quotas) -> T) -> T {
        f(&self.lock().quotas)
    }

    /// A member node changed.
    pub fn node_change(&self, member: &str, c: Change<Node>) {
        let mut st = self.lock();
        match c {
            Change::Applied(n) => st
                .cache
                .set_node(member, &n.name_any(), Some(node_facts(&n))),
            Change::Deleted(n) => st.cache.set_node(member, &n.name_any(), None),
            Change::Relisting => {}
            Change::Listed(all) => st.cache.resync_nodes(
                member,
                all.iter().map(|n| (n.name_any(), node_facts(n))).collect(),
            ),
        }
        drop(st);
        self.notify.notify_one();
    }

    /// A member `GpuTopology` changed.
    pub fn topology_change(&self, member: &str, c: Change<GpuTopology>) {
        let mut st = self.lock();
        match c {
            Change::Applied(t) => {
                st.note_model(member, &t);
                st.cache
                    .set_topology(member, &t.name_any(), Some(topology_facts(&t)))
            }
            Change::Deleted(t) => st.cache.set_topology(member, &t.name_any(), None),
            Change::Relisting => {}
            Change::Listed(all) => {
                for t in &all {
                    st.note_model(member, t);
                }
                st.cache.resync_topologies(
                    member,
                    all.iter()
                        .map(|t| (t.name_any(), topology_facts(t)))
                        .collect(),
                )
            }
        }
        drop(st);
        self.notify.notify_one();
    }

    /// GPU devices per node in a member's ResourceSlices (all nodes, after any slice change).
    pub fn slice_devices_change(&self, member: &str, per_node: BTreeMap<String, i64>) {
        self.lock().cache.resync_slice_devices(member, per_node);
        self.notify.notify_one();
    }

    /// GPU UUIDs per node that ResourceClaims outside gpupool hold in a member (all nodes, after
    /// any claim or slice change).
    pub fn outside_claims_change(&self, member: &str, per_node: BTreeMap<String, Vec<String>>) {
        self.lock().cache.resync_outside_claims(member, per_node);
        self.notify.notify_one();
    }

    /// A gpupool pod in a member changed.
    pub fn pod_change(&self, member: &str, c: &Change<Pod>) {
        let mut st = self.lock();
        match c {
            Change::Applied(p) => {
                let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
                st.cache.set_pod(member, &ns, &name, pod_slots(member, p));
            }
            Change::Deleted(p) => {
                let (ns, name) = (p.namespace().unwrap_or_default(), p.name_any());
                st.cache.set_pod(member, &ns, &name, BTreeSet::new());
            }
            // What is known stays valid while the watch lists again: pods that went away in the
            // gap stay held until the list says so (conservative), new ones are in hub statuses.
            Change::Relisting => {}
            Change::Listed(all) => {
                let pods: BTreeMap<(String, String), BTreeSet<Slot>> = all
                    .iter()
                    .map(|p| {
                        (
                            (p.namespace().unwrap_or_default(), p.name_any()),
                            pod_slots(member, p),
                        )
                    })
                    .collect();
                st.cache.resync_pods(member, pods);
            }
        }
        drop(st);
        self.notify.notify_one();
    }

    /// What the hub knows about a member (from its MemberCluster and heartbeat).
    pub fn set_member(&self, name: &str, info: MemberInfo) {
        if self.lock().cache.set_member(name, info) {
            self.notify.notify_one();
        }
    }

    /// A member was deregistered.
    pub fn remove_member(&self, name: &str) {
        let mut st = self.lock();
        st.cache.remove_member(name);
        st.namespaces.retain(|(m, _)| m != name);
    }

    /// Keeps GPUs that a member's scheduler refused for job `uid` out of placement for `ttl`,
    /// then offers them again (waking jobs that could use them). One job keeps at most `cap` GPUs
    /// out at a time (a job cannot empty the pool by being refused again and again); returns how
    /// many of `slots` were marked.
    pub fn suspect(
        self: &Arc<Self>,
        uid: &str,
        slots: BTreeSet<Slot>,
        cap: usize,
        ttl: Duration,
    ) -> usize {
        let slots: BTreeSet<Slot> = {
            let mut st = self.lock();
            let held = st.suspects.get(uid).copied().unwrap_or(0);
            let slots: BTreeSet<Slot> = slots.into_iter().take(cap.saturating_sub(held)).collect();
            if !slots.is_empty() {
                st.suspects.insert(uid.to_string(), held + slots.len());
                st.cache.set_suspect(&slots, true);
            }
            slots
        };
        if slots.is_empty() {
            return 0;
        }
        let n = slots.len();
        let (me, uid) = (Arc::clone(self), uid.to_string());
        tokio::spawn(async move {
            tokio::time::sleep(ttl).await;
            let mut st = me.lock();
            st.cache.set_suspect(&slots, false);
            if let Some(held) = st.suspects.get_mut(&uid) {
                *held = held.saturating_sub(slots.len());
                if *held == 0 {
                    st.suspects.remove(&uid);
                }
            }
            drop(st);
            me.notify.notify_one();
        });
        n
    }

    // ----- reading -----

    /// Runs `f` on the cache (briefly: the loop waits meanwhile).
    pub fn with_cache<T>(&self, f: impl FnOnce(&PoolCache) -> T) -> T {
        f(&self.lock().cache)
    }

    /// Whether the scheduler is writing a decision for job `uid` (a roll-up now would race it).
    pub fn in_flight(&self, uid: &str) -> bool {
        self.lock().in_flight.contains(uid)
    }

    /// The operator wrote job `uid`'s status over version `rv` (a conditional write that
    /// succeeded): until the watch delivers a newer version, a view at `rv` is stale.
    pub fn wrote_over(&self, uid: &str, rv: Option<&str>) {
        self.lock().wrote_over(uid, rv);
    }

    /// Whether a view of job `uid` at version `rv` predates a status the operator has written
    /// (its own restart, a withdrawn replica, a placement): acting on it would undo that write —
    /// e.g. create the pods of a gang generation already replaced. The watch delivers the newer
    /// version, which reconciles the job again.
    pub fn stale_view(&self, uid: &str, rv: Option<&str>) -> bool {
        self.lock().stale_view(uid, rv)
    }

    /// The recorder for an Event. kube's recorder folds an Event repeated on the same object
    /// (same type, action and reason) into a series — one Event whose count grows, with the
    /// first note — and to do so keeps every Event it sent for six minutes. That is right for
    /// warnings and for steps that repeat (`ReplicaReplaced` three times in a rollout reads
    /// "×3"), but `Scheduled` and `Running` come once per job and placement: at the Events' rate
    /// limit the cache held thousands of them for nothing, and a gang placed again after a
    /// restart would have shown its first placement's note with a count of two. Those two get a
    /// recorder of their own, dropped once the Event is sent.
    pub fn recorder(&self, warning: bool, reason: &str) -> Recorder {
        if !warning && UNFOLDED_EVENTS.contains(&reason) {
            Recorder::new(self.hub.clone(), self.reporter.clone())
        } else {
            self.recorder.clone()
        }
    }

    /// Whether a Normal Event of `reason` may be published now (see [`EVENTS_PER_SECOND`]; the
    /// controllers' Normal Events share the budget). Counts the ones skipped.
    pub fn allow_normal_event(&self, reason: &str) -> bool {
        let ok = self.events.check().is_ok();
        if !ok {
            self.metrics.event_skipped(reason);
        }
        ok
    }

    /// Number of jobs waiting.
    pub fn pending(&self) -> usize {
        self.lock().queue.len()
    }

    /// A read-only view of the queue (in order, with each job's state and last reported reason)
    /// and of the cache per member (nodes, capacity, supply problems), for `/debug/queue`.
    pub fn debug_snapshot(&self, members: &[String]) -> serde_json::Value {
        let st = self.lock();
        let queue: Vec<serde_json::Value> = st
            .queue
            .snapshot()
            .map(|(position, uid, state, job)| {
                let name = job.name();
                let reason = st.reported.get(uid).map(|r| r.0.as_str());
                serde_json::json!({
                    "position": position, "uid": uid, "state": state, "kind": name.kind,
                    "namespace": name.namespace, "name": name.name, "reason": reason,
                })
            })
            .collect();
        let cache: BTreeMap<&String, serde_json::Value> = members
            .iter()
            .map(|m| {
                let v = serde_json::json!({
                    "nodes": st.cache.node_count(m),
                    "capacity": st.cache.capacity(m),
                    "problems": st.cache.problems(m),
                });
                (m, v)
            })
            .collect();
        serde_json::json!({ "inFlight": st.in_flight.len(), "queue": queue, "members": cache })
    }

    // ----- the loop -----

    /// Runs the scheduling loop until the task is dropped.
    pub async fn run(self: Arc<Self>) {
        let mut since_yield = 0usize;
        // The pool as the loop decides on it, brought up to date under the lock before each
        // decision; the decision itself runs without the lock.
        let mut snap = Snapshot::default();
        loop {
            let permit = self
                .writes
                .clone()
                .acquire_owned()
                .await
                .expect("the write semaphore is never closed");
            let picked = self.lock().pick(&mut snap);
            let step = match picked {
                Ok(p) => {
                    let d = p.decide(&snap, &self.metrics);
                    self.lock().settle(p, d)
                }
                Err(step) => step,
            };
            match step {
                Step::Work(w) => {
                    let me = self.clone();
                    tokio::spawn(async move {
                        me.write(*w).await;
                        drop(permit);
                    });
                }
                Step::Parked => drop(permit),
                Step::Idle => {
                    drop(permit);
                    let deadline = self.lock().next_deadline();
                    match deadline {
                        Some(d) => {
                            tokio::select! {
                                _ = self.notify.notified() => {}
                                _ = tokio::time::sleep_until(d.into()) => {}
                            }
                        }
                        None => self.notify.notified().await,
                    }
                    since_yield = 0;
                    continue;
                }
            }
            since_yield += 1;
            if since_yield >= 64 {
                since_yield = 0;
                tokio::task::yield_now().await;
            }
        }
    }

    async fn publish(
        &self,
        obj: &impl Resource<DynamicType = ()>,
        warning: bool,
        reason: &str,
        note: String,
    ) {
        self.send_event(obj.object_ref(&()), warning, reason, "Place", note);
    }

    /// Publishes an Event on a hub object in the background: Normal ones within the shared
    /// budget ([`Scheduler::allow_normal_event`]), failures logged, never fatal. Not awaited, so
    /// the write permit or reconcile slot of the caller is not held for the Event's round trip;
    /// queued behind the object's earlier Events, so they arrive in order ([`events`]).
    pub fn send_event(
        &self,
        obj: k8s_openapi::api::core::v1::ObjectReference,
        warning: bool,
        reason: &str,
        action: &str,
        note: String,
    ) {
        if !warning && !self.allow_normal_event(reason) {
            return;
        }
        let ev = Event {
            type_: if warning {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: reason.into(),
            note: Some(note.chars().take(1000).collect()),
            action: action.into(),
            secondary: None,
        };
        let recorder = self.recorder(warning, reason);
        self.event_lanes
            .get_or_init(events::EventLanes::new)
            .send(recorder, ev, obj);
    }

    /// The write failed: forget the assumption and try the job again later.
    fn failed(&self, uid: &str, e: &kube::Error) {
        let conflict = writes::is_conflict(e);
        tracing::debug!(job = uid, conflict, "write failed");
        if !conflict {
            tracing::warn!(job = uid, error = %e, "writing a scheduling decision failed");
        }
        let mut st = self.lock();
        st.cache.unassume(uid);
        st.quotas.unassume(uid);
        st.in_flight.remove(uid);
        st.reported.remove(uid);
        st.queue.retry_after_failure(uid, Instant::now());
        drop(st);
        self.notify.notify_one();
    }

    /// Writes one decision: the hub status (conditional on the version decided on) and its
    /// Event. Member objects are not the scheduler's: the job's controller creates them from the
    /// status written here (one writer of member objects, keyed by the recorded placement).
    async fn write(&self, w: Work) {
        let rv = w.job.resource_version();
        tracing::debug!(job = %w.job.name().name, ?rv, "writing a scheduling decision");
        if let Some(q) = w
            .queue
            .as_ref()
            .filter(|_| !matches!(w.decision, Decision::Wait { .. }))
        {
            self.metrics.inc_queue_admission(q);
        }
        for v in &w.victims {
            self.preempt(&w.uid, &w.job, v).await;
        }
        match (w.decision, &w.job) {
            (Decision::Training { status, note, .. }, Pending::Training(job)) => {
                self.write_training(&w.uid, job, rv.as_deref(), &status, note)
                    .await
            }
            (
                Decision::Inference {
                    status,
                    new,
                    note,
                    unplaced,
                    ..
                },
                Pending::Inference(job),
            ) => {
                self.write_inference(&w.uid, job, &status, new.len(), note, unplaced)
                    .await
            }
            (Decision::Wait { reason, .. }, job) => {
                self.write_waiting(
                    &w.uid,
                    job,
                    rv.as_deref(),
                    &reason,
                    w.position,
                    w.report_event,
                )
                .await
            }
            (_, job) => {
                tracing::error!(job = %job.name().name, "decision does not match the job kind");
                self.lock().in_flight.remove(&w.uid);
            }
        }
    }

    /// Records on victim `v`'s status that it is preempted for `preemptor` (job `by`):
    /// conditional on the version read from the API server now, so a gang that changed
    /// meanwhile (finished, restarted) is not preempted on an old view; then its Event and the
    /// metric. Its controller withdraws its pods (with their grace period) from that status.
    async fn preempt(&self, preemptor: &str, by: &Pending, v: &victims::Victim) {
        let api: Api<TrainingJob> = Api::namespaced(self.hub.clone(), &v.name.namespace);
        let placed = |j: &TrainingJob| j.status.as_ref().is_some_and(|s| s.cluster.is_some());
        let job = match api.get_opt(&v.name.name).await {
            Ok(Some(j)) if j.uid().as_deref() == Some(v.uid.as_str()) && placed(&j) => j,
            other => {
                if let Err(e) = other {
                    tracing::warn!(job = %v.name.name, error = %e, "reading a job to preempt failed");
                }
                self.lock().preemption_failed(preemptor, &v.uid);
                return self.notify.notify_one();
            }
        };
        let grace = job
            .spec
            .template
            .spec
            .as_ref()
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let now = k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::now(),
        );
        let st = jobs::training_preempted_status(&job, v.reason.condition(), &v.note, now, grace);
        let rv = job.resource_version();
        if let Err(e) = writes::apply_status(&api, &job, rv.as_deref(), &st).await {
            if !writes::is_conflict(&e) {
                tracing::warn!(job = %v.name.name, error = %e, "writing a preemption failed");
            }
            self.lock().preemption_failed(preemptor, &v.uid);
            return self.notify.notify_one();
        }
        self.lock().wrote_over(&v.uid, rv.as_deref());
        self.metrics
            .inc_queue_preemption(&v.queue, v.reason.label());
        tracing::info!(job = %v.name.name, preemptor = %by.name().name, note = %v.note, "preempted");
        self.publish(&job, true, "Preempted", v.note.clone()).await;
        let note = format!(
            "preempting {}/{} ({})",
            v.name.namespace, v.name.name, v.note
        );
        match by {
            Pending::Training(j) => self.publish(&**j, false, "Preempting", note).await,
            Pending::Inference(j) => self.publish(&**j, false, "Preempting", note).await,
        }
    }

    /// The decision's status write succeeded: the view it was taken on is stale from now on.
    fn written(&self, uid: &str, rv: Option<&str>) {
        let mut st = self.lock();
        st.wrote_over(uid, rv);
        st.in_flight.remove(uid);
    }

    async fn write_training(
        &self,
        uid: &str,
        job: &TrainingJob,
        rv: Option<&str>,
        status: &crate::api::TrainingJobStatus,
        note: String,
    ) {
        let name = job.name_any();
        let api: Api<TrainingJob> =
            Api::namespaced(self.hub.clone(), &job.namespace().unwrap_or_default());
        if let Err(e) = writes::apply_status(&api, job, rv, status).await {
            return self.failed(uid, &e);
        }
        {
            let mut st = self.lock();
            st.queue.remove(uid);
            st.reported.remove(uid);
        }
        self.written(uid, rv);
        self.metrics.set_pending("trainingjob", &name, false);
        self.publish(job, false, "Scheduled", note).await;
    }

    async fn write_inference(
        &self,
        uid: &str,
        job: &InferenceJob,
        status: &crate::api::InferenceJobStatus,
        placed: usize,
        note: String,
        unplaced: Option<(String, Need)>,
    ) {
        let name = job.name_any();
        let rv = job.resource_version();
        let rv = rv.as_deref();
        let api: Api<InferenceJob> =
            Api::namespaced(self.hub.clone(), &job.namespace().unwrap_or_default());
        if let Err(e) = writes::apply_status(&api, job, rv, status).await {
            return self.failed(uid, &e);
        }
        {
            let mut st = self.lock();
            match &unplaced {
                Some((_, need)) => st.queue.park(uid, need.clone(), Instant::now()),
                None => {
                    st.queue.remove(uid);
                    st.reported.remove(uid);
                }
            }
        }
        self.written(uid, rv);
        self.metrics
            .set_pending("inferencejob", &name, unplaced.is_some());
        let recovered = job
            .status
            .as_ref()
            .is_some_and(|s| !s.placements.is_empty());
        let reason = if recovered {
            "Rescheduled"
        } else {
            "Scheduled"
        };
        self.publish(job, false, reason, note).await;
        if let Some((reason, _)) = unplaced {
            let missing = jobs::inference_missing(job).len().saturating_sub(placed);
            self.publish(
                job,
                true,
                "Unschedulable",
                format!("{missing} replicas unplaced: {reason}"),
            )
            .await;
        }
    }

    async fn write_waiting(
        &self,
        uid: &str,
        job: &Pending,
        rv: Option<&str>,
        reason: &str,
        position: usize,
        report_event: bool,
    ) {
        let name = job.name();
        let res = match job {
            Pending::Training(j) => {
                let api: Api<TrainingJob> = Api::namespaced(self.hub.clone(), &name.namespace);
                let st = jobs::training_waiting_status(j, reason, position);
                writes::apply_status(&api, &**j, rv, &st).await
            }
            Pending::Inference(j) => {
                let api: Api<InferenceJob> = Api::namespaced(self.hub.clone(), &name.namespace);
                let st = jobs::inference_waiting_status(j, reason, position);
                writes::apply_status(&api, &**j, rv, &st).await
            }
        };
        if res.is_ok() {
            self.written(uid, rv);
        } else {
            let mut st = self.lock();
            st.in_flight.remove(uid);
            // Report again at the next attempt, and make one: a parked job is otherwise tried
            // again only when something frees (a quota wait: maybe never), and its newer
            // version (a finalizer added meanwhile: the usual 409) keeps it parked.
            st.reported.remove(uid);
            st.queue.retry_after_failure(uid, Instant::now());
            drop(st);
            self.notify.notify_one();
        }
        let kind = if name.kind == "TrainingJob" {
            "trainingjob"
        } else {
            "inferencejob"
        };
        self.metrics.set_pending(kind, &name.name, true);
        if let Err(e) = res {
            if !writes::is_conflict(&e) {
                tracing::warn!(job = %name.name, error = %e, "writing a pending status failed");
            }
            return;
        }
        if !report_event {
            return;
        }
        match job {
            Pending::Training(j) => {
                let note = format!("no member fits the gang: {reason}");
                self.publish(&**j, true, "Unschedulable", note).await
            }
            Pending::Inference(j) => {
                let missing = jobs::inference_missing(j).len();
                let note = format!("{missing} replicas unplaced: {reason}");
                self.publish(&**j, true, "Unschedulable", note).await
            }
        }
    }

    /// Whether namespace `ns` is known to exist in `member` (created or found by the operator
    /// since the member was registered).
    pub fn namespace_known(&self, member: &str, ns: &str) -> bool {
        self.lock()
            .namespaces
            .contains(&(member.to_string(), ns.to_string()))
    }

    /// Namespace `ns` exists in `member`.
    pub fn note_namespace(&self, member: &str, ns: &str) {
        self.lock()
            .namespaces
            .insert((member.to_string(), ns.to_string()));
    }
}
