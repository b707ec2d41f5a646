//! The queue of jobs waiting for GPUs: higher `spec.priority` first, then older jobs first
//! (creation time, then arrival), a gang as one entry.
//!
//! An entry is *active* (to be tried), *in flight* (decided; its writes are running), *parked*
//! (did not fit; tried again when something it could use is freed, and after [`PARKED_FLUSH`]
//! whatever happens), or *backing off* (a write failed). Pure: the caller supplies the clock.

use crate::api::NvLinkMode;
use crate::placement::allocator::{GpuRequest, allocate};
use crate::topology::{GpuGraph, GpuSet};
use std::collections::{BTreeSet, HashMap};
use std::time::{Duration, Instant};

/// Order of the queue: priority (higher first), creation time, arrival.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct Order {
    neg_priority: i64,
    created: i64,
    seq: u64,
}

/// What a waiting job needs from a node to make progress (to decide whether a change can help).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Need {
    /// GPUs per pod.
    pub gpus_per_pod: usize,
    /// GPU model filter (substring, case-insensitive).
    pub model: Option<String>,
    /// Minimum memory per GPU.
    pub min_memory_mib: Option<i64>,
    /// NVLink mode of one pod's GPUs.
    pub nvlink: NvLinkMode,
    /// Smallest acceptable hop of the pod's ring (`gpu.minLinkGBps`), 0 for none.
    pub min_link_gbps: i64,
}

impl Need {
    /// Whether a node of graph `graph` with the `free` GPUs, of `model`/`memory_mib`, could take
    /// one pod: the placement's own test for a node (model and memory, then the allocator with
    /// the pod's GPU count, NVLink mode and link floor), so it wakes a job exactly when one of
    /// its pods would fit on the node — never less often, or a job could wait for ever.
    pub fn served_by(&self, graph: &GpuGraph, free: GpuSet, model: &str, memory_mib: i64) -> bool {
        free.len() >= self.gpus_per_pod.max(1)
            && self
                .model
                .as_ref()
                .is_none_or(|m| model.to_lowercase().contains(&m.to_lowercase()))
            && self.min_memory_mib.is_none_or(|m| memory_mib >= m)
            && allocate(graph, free, &self.request()).is_ok()
    }

    /// The allocator request of one pod (as the placement builds it).
    pub fn request(&self) -> GpuRequest {
        GpuRequest::new(self.gpus_per_pod, self.nvlink).with_min_link(self.min_link_gbps)
    }
}

impl Need {
    /// A need no node serves: the job waits for something other than capacity (a PriorityClass
    /// to exist) and is woken by that change only.
    pub fn nothing() -> Need {
        Need {
            gpus_per_pod: usize::MAX,
            ..Need::default()
        }
    }
}

/// The hub's `scheduling.k8s.io/v1` PriorityClasses, as the queue orders by them.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct PriorityClasses {
    /// Value by name.
    pub values: HashMap<String, i32>,
    /// The `globalDefault` class (name, value); of several, the one of the highest value, as
    /// kube-apiserver's admission picks.
    pub default: Option<(String, i32)>,
}

impl PriorityClasses {
    /// From `(name, value, globalDefault)` of every PriorityClass.
    pub fn new(classes: impl IntoIterator<Item = (String, i32, bool)>) -> PriorityClasses {
        let mut out = PriorityClasses::default();
        for (name, value, global) in classes {
            if global
                && out
                    .default
                    .as_ref()
                    .is_none_or(|(n, v)| value > *v || (value == *v && name < *n))
            {
                out.default = Some((name.clone(), value));
            }
            out.values.insert(name, value);
        }
        out
    }

    /// A job's priority: the value of its PriorityClass if it names one, else its `priority`
    /// when set (non-zero), else the global default's value, else 0. Err: why it cannot be
    /// ordered (the class it names does not exist).
    pub fn resolve(&self, priority: i32, class: Option<&str>) -> Result<i32, String> {
        match class {
            Some(c) => self.values.get(c).copied().ok_or_else(|| {
                format!("priorityClassName {c:?}: no PriorityClass of that name on the hub")
            }),
            None if priority != 0 => Ok(priority),
            None => Ok(self.default.as_ref().map_or(0, |(_, v)| *v)),
        }
    }

    /// A job's priority, whatever its kind ([`Self::resolve`] of what it asks).
    pub fn of(&self, job: &impl super::jobs::PriorityRequest) -> Result<i32, String> {
        let (priority, class) = job.priority_request();
        self.resolve(priority, class)
    }
}

/// A parked job is tried again after this long even if no change woke it (kube-scheduler
/// flushes pods unschedulable for 5 minutes back into its active queue the same way): a missed
/// or wrongly filtered wake-up never leaves a job waiting for ever.
pub const PARKED_FLUSH: Duration = Duration::from_secs(300);

#[derive(Clone, Debug, PartialEq)]
enum State {
    Active,
    InFlight,
    /// What it needs, and since when it waits.
    Parked(Need, Instant),
    Backoff(Instant),
}

struct Entry<T> {
    order: Order,
    generation: i64,
    state: State,
    item: T,
    failures: u32,
}

/// The pending jobs, by uid.
pub struct Queue<T> {
    entries: HashMap<String, Entry<T>>,
    active: BTreeSet<(Order, String)>,
    all: BTreeSet<(Order, String)>,
    backoff: BTreeSet<(Instant, String)>,
    /// Parked jobs by when they were parked.
    parked: BTreeSet<(Instant, String)>,
    seq: u64,
    /// Arrival order of jobs that left the queue (placed), until they are forgotten: a job that
    /// comes back (preempted) keeps its place among jobs created in the same second.
    former: HashMap<String, u64>,
}

impl<T> Default for Queue<T> {
    fn default() -> Self {
        Queue {
            entries: HashMap::new(),
            active: BTreeSet::new(),
            all: BTreeSet::new(),
            backoff: BTreeSet::new(),
            parked: BTreeSet::new(),
            seq: 0,
            former: HashMap::new(),
        }
    }
}

impl<T> Queue<T> {
    /// An empty queue.
    pub fn new() -> Self {
        Self::default()
    }

    /// Jobs waiting (any state).
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no job waits.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `uid` is queued.
    pub fn contains(&self, uid: &str) -> bool {
        self.entries.contains_key(uid)
    }

    fn set_state(&mut self, uid: &str, state: State) {
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        match &e.state {
            State::Active => {
                self.active.remove(&(e.order, uid.to_string()));
            }
            State::Backoff(at) => {
                self.backoff.remove(&(*at, uid.to_string()));
            }
            State::Parked(_, at) => {
                self.parked.remove(&(*at, uid.to_string()));
            }
            State::InFlight => {}
        }
        match &state {
            State::Active => {
                self.active.insert((e.order, uid.to_string()));
            }
            State::Backoff(at) => {
                self.backoff.insert((*at, uid.to_string()));
            }
            State::Parked(_, at) => {
                self.parked.insert((*at, uid.to_string()));
            }
            State::InFlight => {}
        }
        e.state = state;
    }

    /// Adds a job, or updates a queued one. A new job, or a parked one whose spec changed
    /// (`generation`), becomes active; an in-flight one stays in flight with the newer item.
    pub fn upsert(&mut self, uid: &str, priority: i64, created: i64, generation: i64, item: T) {
        let order = Order {
            neg_priority: -priority,
            created,
            seq: self.former.get(uid).copied().unwrap_or(self.seq),
        };
        if let Some(e) = self.entries.get_mut(uid) {
            e.item = item;
            let new_order = Order {
                seq: e.order.seq,
                ..order
            };
            let regen = e.generation != generation;
            e.generation = generation;
            if new_order != e.order {
                let state = e.state.clone();
                let old = e.order;
                self.set_state(uid, State::InFlight);
                self.all.remove(&(old, uid.to_string()));
                let e = self.entries.get_mut(uid).expect("present");
                e.order = new_order;
                self.all.insert((new_order, uid.to_string()));
                self.set_state(uid, state);
            }
            let e = self.entries.get_mut(uid).expect("present");
            if regen && matches!(e.state, State::Parked(..)) {
                self.set_state(uid, State::Active);
            }
            return;
        }
        if self.former.remove(uid).is_none() {
            self.seq += 1;
        }
        self.entries.insert(
            uid.to_string(),
            Entry {
                order,
                generation,
                state: State::InFlight,
                item,
                failures: 0,
            },
        );
        self.all.insert((order, uid.to_string()));
        self.set_state(uid, State::Active);
    }

    /// Removes a job (placed, finished or deleted).
    pub fn remove(&mut self, uid: &str) -> Option<T> {
        self.set_state(uid, State::InFlight);
        let e = self.entries.remove(uid)?;
        self.all.remove(&(e.order, uid.to_string()));
        self.former.insert(uid.to_string(), e.order.seq);
        Some(e.item)
    }

    /// Forgets a job for good (deleted): its arrival order too.
    pub fn forget(&mut self, uid: &str) {
        self.remove(uid);
        self.former.remove(uid);
    }

    /// Makes jobs whose backoff ended, and jobs parked for [`PARKED_FLUSH`], active again.
    pub fn tick(&mut self, now: Instant) {
        while let Some((at, uid)) = self.backoff.first().cloned() {
            if at > now {
                break;
            }
            self.set_state(&uid, State::Active);
        }
        while let Some((at, uid)) = self.parked.first().cloned() {
            if at + PARKED_FLUSH > now {
                break;
            }
            self.set_state(&uid, State::Active);
        }
    }

    /// Takes the first active job (it is in flight until [`Self::remove`], [`Self::park`] or
    /// [`Self::retry_after_failure`]).
    pub fn pop(&mut self, now: Instant) -> Option<(String, &T)> {
        self.tick(now);
        let (_, uid) = self.active.first().cloned()?;
        self.set_state(&uid, State::InFlight);
        let e = self.entries.get(&uid)?;
        Some((uid, &e.item))
    }

    /// The job did not fit (at `now`): it waits until something that could serve `need`
    /// changes, or [`PARKED_FLUSH`] passes.
    pub fn park(&mut self, uid: &str, need: Need, now: Instant) {
        if let Some(e) = self.entries.get_mut(uid) {
            e.failures = 0;
        }
        self.set_state(uid, State::Parked(need, now));
    }

    /// The job's decision was overtaken by events while it was taken: it is next again.
    pub fn retry_now(&mut self, uid: &str) {
        self.set_state(uid, State::Active);
    }

    /// Try the job again at `at` (it waits for something no wake-up reports).
    pub fn retry_at(&mut self, uid: &str, at: Instant) {
        self.set_state(uid, State::Backoff(at));
    }

    /// A write for the job failed: try again after an exponential backoff (from 100 ms to 30 s).
    pub fn retry_after_failure(&mut self, uid: &str, now: Instant) {
        let Some(e) = self.entries.get_mut(uid) else {
            return;
        };
        e.failures = e.failures.saturating_add(1);
        let delay = Duration::from_millis(100) * 2u32.saturating_pow(e.failures.min(9) - 1);
        self.set_state(
            uid,
            State::Backoff(now + delay.min(Duration::from_secs(30))),
        );
    }

    /// Makes active every parked job for which `could_fit` says yes; returns how many.
    pub fn wake(&mut self, mut could_fit: impl FnMut(&Need) -> bool) -> usize {
        let woken: Vec<String> = self
            .entries
            .iter()
            .filter(|(_, e)| matches!(&e.state, State::Parked(n, _) if could_fit(n)))
            .map(|(u, _)| u.clone())
            .collect();
        for u in &woken {
            self.set_state(u, State::Active);
        }
        woken.len()
    }

    /// When the next backoff ends or the longest-parked job is flushed.
    pub fn next_deadline(&self) -> Option<Instant> {
        let backoff = self.backoff.first().map(|(at, _)| *at);
        let flush = self.parked.first().map(|(at, _)| *at + PARKED_FLUSH);
        backoff.into_iter().chain(flush).min()
    }

    /// Whether some job can be tried now.
    pub fn has_active(&self) -> bool {
        !self.active.is_empty()
    }

    /// The queued item of `uid`.
    pub fn get(&self, uid: &str) -> Option<&T> {
        self.entries.get(uid).map(|e| &e.item)
    }

    /// What a parked job waits for (`None` unless it is parked).
    pub fn parked_need(&self, uid: &str) -> Option<&Need> {
        match &self.entries.get(uid)?.state {
            State::Parked(n, _) => Some(n),
            _ => None,
        }
    }

    /// Position (1-based) of every queued job in queue order.
    pub fn positions(&self) -> impl Iterator<Item = (usize, &str, &T)> {
        self.all
            .iter()
            .enumerate()
            .map(|(i, (_, u))| (i + 1, u.as_str(), &self.entries[u].item))
    }

    /// Every queued job in queue order: position (1-based), uid, state (`active`, `inFlight`,
    /// `parked`, `backoff`) and item. For inspection (`/debug/queue`).
    pub fn snapshot(&self) -> impl Iterator<Item = (usize, &str, &'static str, &T)> {
        self.positions().map(|(i, u, item)| {
            let state = match self.entries[u].state {
                State::Active => "active",
                State::InFlight => "inFlight",
                State::Parked(..) => "parked",
                State::Backoff(_) => "backoff",
            };
            (i, u, state, item)
        })
    }

    /// Position (1-based) of one job.
    pub fn position(&self, uid: &str) -> Option<usize> {
        let e = self.entries.get(uid)?;
        Some(self.all.range(..(e.order, uid.to_string())).count() + 1)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn priority_classes_resolve_names_defaults_and_unknown_names() {
        let pc = PriorityClasses::new([
            ("high".to_string(), 1000, false),
            ("low".to_string(), -5, false),
            ("normal".to_string(), 10, true),
            ("also-default".to_string(), 7, true),
        ]);
        assert_eq!(pc.default, Some(("normal".to_string(), 10)));
        assert_eq!(pc.resolve(0, Some("high")), Ok(1000));
        assert_eq!(pc.resolve(0, Some("low")), Ok(-5));
        // An explicit priority wins over the default; without one the default applies.
        assert_eq!(pc.resolve(3, None), Ok(3));
        assert_eq!(pc.resolve(0, None), Ok(10));
        let err = pc.resolve(0, Some("gold")).unwrap_err();
        assert!(
            err.contains("\"gold\"") && err.contains("no PriorityClass"),
            "{err}"
        );
        // No classes at all: priority as given.
        assert_eq!(PriorityClasses::default().resolve(0, None), Ok(0));
        let h100 = graph("dgx-h100");
        assert!(!Need::nothing().served_by(&h100, h100.all(), "H100", 81920));
    }

    #[test]
    fn both_job_kinds_resolve_their_priority_the_same_way() {
        use crate::api::{InferenceJob, TrainingJob};
        let pc = PriorityClasses::new([
            ("high".to_string(), 1000, false),
            ("normal".to_string(), 10, true),
        ]);
        let template = serde_json::json!({"spec": {"containers": [{"name": "c", "image": "i"}]}});
        for (priority, class, want) in [
            (0, Some("high"), Ok(1000)),
            (3, None, Ok(3)),
            (0, None, Ok(10)),
            (0, Some("gold"), Err(())),
        ] {
            let tj: TrainingJob = serde_json::from_value(serde_json::json!({
                "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
                "metadata": {"name": "t", "namespace": "ml"},
                "spec": {"template": template, "workers": 1, "gpusPerWorker": 1,
                         "priority": priority, "priorityClassName": class}}))
            .unwrap();
            let ij: InferenceJob = serde_json::from_value(serde_json::json!({
                "apiVersion": "gpupool.io/v1alpha1", "kind": "InferenceJob",
                "metadata": {"name": "i", "namespace": "ml"},
                "spec": {"template": template, "replicas": 1, "gpusPerReplica": 1,
                         "priority": priority, "priorityClassName": class}}))
            .unwrap();
            let (t, i) = (pc.of(&tj), pc.of(&ij));
            assert_eq!(t.clone().map_err(|_| ()), want, "{priority} {class:?}");
            assert_eq!(t, i, "{priority} {class:?}");
            let queued = crate::scheduler::jobs::Pending::Inference(std::sync::Arc::new(ij));
            assert_eq!(pc.of(&queued), i);
        }
    }

    #[test]
    fn priority_first_then_creation_then_arrival() {
        let mut q = Queue::new();
        let now = Instant::now();
        q.upsert("old-low", 0, 100, 1, ());
        q.upsert("new-high", 5, 300, 1, ());
        q.upsert("new-low", 0, 200, 1, ());
        q.upsert("same-second-later", 0, 200, 1, ());
        q.upsert("older-low", 0, 50, 1, ());
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|(u, _)| u)).collect();
        assert_eq!(
            order,
            [
                "new-high",
                "older-low",
                "old-low",
                "new-low",
                "same-second-later"
            ]
        );
        assert_eq!(q.position("new-high"), Some(1));
        assert_eq!(q.position("same-second-later"), Some(5));
    }

    #[test]
    fn a_job_placed_and_back_keeps_its_arrival_order_until_forgotten() {
        let mut q = Queue::new();
        let now = Instant::now();
        q.upsert("first", 0, 100, 1, ());
        q.remove("first");
        q.upsert("second", 0, 100, 1, ());
        // Preempted: back in the queue, before the job that arrived after it in its second.
        q.upsert("first", 0, 100, 1, ());
        let order: Vec<String> = std::iter::from_fn(|| q.pop(now).map(|(u, _)| u)).collect();
        assert_eq!(order, ["first", "second"]);
        q.forget("first");
        q.upsert("first", 0, 100, 1, ());
        assert_eq!(q.position("first"), Some(2));
    }

    #[test]
    fn parked_jobs_wake_only_for_what_could_serve_them() {
        let mut q = Queue::new();
        let now = Instant::now();
        q.upsert("eight", 0, 1, 1, ());
        q.upsert("one", 0, 2, 1, ());
        q.pop(now);
        q.pop(now);
        q.park(
            "eight",
            Need {
                gpus_per_pod: 8,
                ..Default::default()
            },
            now,
        );
        q.park(
            "one",
            Need {
                gpus_per_pod: 1,
                model: Some("h100".into()),
                ..Default::default()
            },
            now,
        );
        assert!(!q.has_active());
        let (a100, h100) = (graph("dgx-a100"), graph("dgx-h100"));
        let one = GpuSet::from_indexes([3]);
        // One GPU of another model freed: nobody.
        assert_eq!(q.wake(|n| n.served_by(&a100, one, "A100", 80_000)), 0);
        // One H100 freed: the one-GPU job only.
        assert_eq!(
            q.wake(|n| n.served_by(&h100, one, "NVIDIA H100 80GB", 80_000)),
            1
        );
        assert_eq!(q.pop(now).map(|(u, _)| u), Some("one".to_string()));
        assert!(q.pop(now).is_none());
        // A parked job whose spec changed is tried again; an unchanged update is not.
        q.upsert("eight", 0, 1, 1, ());
        assert!(!q.has_active());
        q.upsert("eight", 0, 1, 2, ());
        assert_eq!(q.pop(now).map(|(u, _)| u), Some("eight".to_string()));
    }

    fn graph(fixture: &str) -> GpuGraph {
        GpuGraph::from_spec(&crate::topology::fixtures::get(fixture)).unwrap()
    }

    fn need(gpus: usize, nvlink: NvLinkMode, min_link_gbps: i64) -> Need {
        Need {
            gpus_per_pod: gpus,
            nvlink,
            min_link_gbps,
            ..Default::default()
        }
    }

    #[test]
    fn freed_gpus_wake_only_jobs_whose_nvlink_mode_and_link_floor_they_meet() {
        let dgx1 = graph("dgx1-v100");
        let l40s = graph("pcie-l40s");
        let set = |ix: &[usize]| GpuSet::from_indexes(ix.iter().copied());
        let served = |n: &Need, g: &GpuGraph, free: GpuSet| n.served_by(g, free, "V100", 32_768);
        // DGX-1 cube-mesh: {0,1,4,5} is an all-NVLink ring but not a clique (0 and 5 are not
        // linked); {0,1,2,3} is both.
        let ring4 = set(&[0, 1, 4, 5]);
        assert!(!served(&need(4, NvLinkMode::Clique, 0), &dgx1, ring4));
        assert!(served(&need(4, NvLinkMode::Ring, 0), &dgx1, ring4));
        assert!(served(&need(4, NvLinkMode::Preferred, 0), &dgx1, ring4));
        assert!(served(
            &need(4, NvLinkMode::Clique, 0),
            &dgx1,
            set(&[0, 1, 2, 3])
        ));
        // A floor of 60 GB/s: an NV1 pair (0, 1) does not serve it, an NV2 pair (0, 3) does.
        assert!(!served(
            &need(2, NvLinkMode::Preferred, 60),
            &dgx1,
            set(&[0, 1])
        ));
        assert!(served(
            &need(2, NvLinkMode::Preferred, 60),
            &dgx1,
            set(&[0, 3])
        ));
        assert!(served(
            &need(2, NvLinkMode::Preferred, 0),
            &dgx1,
            set(&[0, 1])
        ));
        // A PCIe-only node freeing all its GPUs: `preferred` and `none` jobs, not `ring` or
        // `clique`, nor a floor above PCIe.
        assert!(served(
            &need(8, NvLinkMode::Preferred, 0),
            &l40s,
            l40s.all()
        ));
        assert!(served(&need(8, NvLinkMode::None, 0), &l40s, l40s.all()));
        assert!(!served(&need(8, NvLinkMode::Ring, 0), &l40s, l40s.all()));
        assert!(!served(&need(2, NvLinkMode::Clique, 0), &l40s, l40s.all()));
        assert!(!served(&need(2, NvLinkMode::None, 60), &l40s, l40s.all()));
        // Too few GPUs: nobody, whatever the mode.
        assert!(!served(
            &need(4, NvLinkMode::None, 0),
            &dgx1,
            set(&[0, 1, 2])
        ));
    }

    #[test]
    fn the_wake_filter_is_never_stricter_than_the_placement() {
        use crate::api::GpuSelector;
        use crate::placement::{ClusterCandidate, JobRequest, NodeCandidate, place_gang};
        // For every fixture node, free masks from a fixed generator, every mode, GPU counts and
        // link floors: the filter says "could serve" exactly when the placement puts one pod on
        // that node alone. Stricter would strand a waiting job; looser wakes it for nothing.
        let mut x: u64 = 0x9E37_79B9_7F4A_7C15;
        let mut next = move || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let (mut placed_n, mut refused_n) = (0, 0);
        for (name, mut spec) in crate::topology::fixtures::all() {
            spec.node_name = name.into();
            let g = std::sync::Arc::new(GpuGraph::from_spec(&spec).unwrap());
            let model = spec.gpus[0].model.clone();
            let memory = spec.gpus[0].memory_mib;
            for round in 0..24 {
                let free = match round {
                    0 => g.all(),
                    _ => GpuSet(next()).and(g.all()),
                };
                let cand = ClusterCandidate {
                    name: "m".into(),
                    labels: Default::default(),
                    price: None,
                    nodes: vec![NodeCandidate {
                        name: name.into(),
                        graph: g.clone(),
                        free,
                        model: model.as_str().into(),
                        memory_mib: memory,
                    }],
                    skipped: Vec::new(),
                    whole_nodes: Default::default(),
                };
                for gpus in [1, 2, 3, 4, 5, 8] {
                    for mode in [
                        NvLinkMode::Clique,
                        NvLinkMode::Ring,
                        NvLinkMode::Preferred,
                        NvLinkMode::None,
                    ] {
                        for floor in [0, 60, 300] {
                            let req = JobRequest {
                                gpus_per_pod: gpus,
                                nvlink: mode,
                                gpu: GpuSelector {
                                    min_link_gbps: (floor > 0).then_some(floor),
                                    ..Default::default()
                                },
                                cluster_selector: Default::default(),
                            };
                            let placed =
                                place_gang(std::slice::from_ref(&cand), &req, &[0]).is_ok();
                            let n = need(gpus, mode, floor);
                            assert_eq!(
                                n.served_by(&g, free, &model, memory),
                                placed,
                                "{name} free {free:?}: {gpus} GPUs {mode:?} floor {floor}"
                            );
                            if placed {
                                placed_n += 1;
                            } else {
                                refused_n += 1;
                            }
                        }
                    }
                }
            }
        }
        assert!(
            placed_n > 500 && refused_n > 500,
            "too few cases exercised: {placed_n} placed, {refused_n} refused"
        );
    }

    #[test]
    fn a_parked_job_nothing_wakes_is_tried_again_after_the_flush() {
        let mut q = Queue::new();
        let now = Instant::now();
        q.upsert("a", 0, 1, 1, ());
        q.upsert("b", 0, 2, 1, ());
        q.pop(now);
        q.park("a", Need::nothing(), now);
        let later = now + Duration::from_secs(60);
        q.pop(later);
        q.park("b", Need::nothing(), later);
        // Nothing can wake them; the loop sleeps until the first flush.
        assert_eq!(q.wake(|_| false), 0);
        assert_eq!(q.next_deadline(), Some(now + PARKED_FLUSH));
        assert!(q.pop(now + PARKED_FLUSH - Duration::from_secs(1)).is_none());
        assert_eq!(
            q.pop(now + PARKED_FLUSH).map(|(u, _)| u),
            Some("a".to_string())
        );
        // Parked again: its flush starts over; b's comes first.
        q.park("a", Need::nothing(), now + PARKED_FLUSH);
        assert_eq!(q.next_deadline(), Some(later + PARKED_FLUSH));
        assert_eq!(
            q.pop(later + PARKED_FLUSH).map(|(u, _)| u),
            Some("b".to_string())
        );
        q.remove("a");
        q.remove("b");
        assert!(q.next_deadline().is_none());
    }

    #[test]
    fn failed_writes_back_off_and_come_back() {
        let mut q = Queue::new();
        let now = Instant::now();
        q.upsert("a", 0, 1, 1, ());
        q.pop(now);
        q.retry_after_failure("a", now);
        assert!(q.pop(now).is_none());
        let at = q.next_deadline().expect("a deadline");
        assert!(at > now && at <= now + Duration::from_millis(100));
        assert_eq!(q.pop(at).map(|(u, _)| u), Some("a".to_string()));
        q.retry_after_failure("a", now);
        assert_eq!(q.next_deadline(), Some(now + Duration::from_millis(200)));
        assert_eq!(q.remove("a"), Some(()));
        assert!(q.is_empty() && q.next_deadline().is_none());
    }

    #[test]
    fn a_priority_change_moves_the_job() {
        let mut q = Queue::new();
        let now = Instant::now();
        q.upsert("a", 0, 1, 1, ());
        q.upsert("b", 0, 2, 1, ());
        q.upsert("b", 10, 2, 2, ());
        assert_eq!(q.position("b"), Some(1));
        assert_eq!(q.pop(now).map(|(u, _)| u), Some("b".to_string()));
    }
}
