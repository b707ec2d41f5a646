//! Queue quotas: which `GpuQueue` a job submits to, the GPUs each queue's jobs hold per GPU
//! class, and whether a decision fits its queue's nominal quota or idle quota its cohort lends.
//!
//! Usage is kept incrementally from what the cache is fed — each job's recorded placement (hub
//! status) and its assumed one — so it is right after a restart (it is derived from the jobs'
//! statuses) and a decision reads it without looking at any job. A GPU's class comes from its
//! node's published model; GPUs on a node whose topology is not known yet count as `unknown`
//! until it is, then move to their class.
//!
//! Borrowing follows Kueue's cohort model per quota class: each queue keeps `nominal -
//! lendingLimit` for itself and puts `lendingLimit` into its cohort's shared pool; a queue may
//! hold more than its nominal quota while the cohort's shared pool has room, up to its
//! `borrowingLimit`. Among queues that want the same shared GPUs, the one with the lowest
//! weighted share goes first ([`super::fairshare`]).

use super::cache::Slot;
use super::fairshare;
use crate::api::{ANY_CLASS, ClassQuota, ClassUsage, GpuQueueSpec, GpuQueueStatus, gpu_class};
use std::collections::{BTreeMap, BTreeSet, HashMap};

type NodeKey = (String, String);

/// Class of GPUs on a node whose topology is not known yet.
pub const UNKNOWN_CLASS: &str = "unknown";

/// GPUs per class.
pub type Demand = BTreeMap<String, i64>;

#[derive(Default)]
struct Held {
    namespace: String,
    named: Option<String>,
    /// The queue its GPUs count against now.
    queue: Option<String>,
    hub: BTreeSet<Slot>,
    assumed: Vec<BTreeSet<Slot>>,
    /// GPUs per node counted for it in `queue`.
    counted: BTreeMap<NodeKey, i64>,
}

/// What an admission reads: the queues, their GPUs per class and which of them have jobs
/// waiting for GPUs. Shared with a decision taken outside the scheduler's lock (cheap to hand
/// over: the scheduler keeps it behind an `Arc`, copied only when it changes while a decision
/// holds it).
#[derive(Clone, Default, Debug)]
pub struct QuotaView {
    specs: BTreeMap<String, GpuQueueSpec>,
    /// Namespace → the queue its jobs submit to by default.
    defaults: HashMap<String, String>,
    /// Queue → GPUs its jobs hold per class.
    used: HashMap<String, BTreeMap<String, i64>>,
    /// Queue → its waiting jobs that more GPUs could serve.
    hungry_count: HashMap<String, usize>,
    /// Queue → its waiting jobs.
    waiting_count: HashMap<String, usize>,
}

/// Why a decision does not fit its queue.
#[derive(Clone, Debug, PartialEq)]
pub struct Refusal {
    /// What the job's status says.
    pub reason: String,
    /// Whether more GPUs in the pool could change the answer (the cohort lends nothing now, or
    /// another queue goes first); false when the queue's own quota or borrowing limit stops it.
    pub hungry: bool,
}

/// Queues, their jobs' GPUs per class, and the jobs waiting in each.
#[derive(Default)]
pub struct Quotas {
    view: std::sync::Arc<QuotaView>,
    jobs: HashMap<String, Held>,
    node_class: HashMap<NodeKey, String>,
    /// Queue → GPUs its jobs hold per node.
    nodes: HashMap<String, HashMap<NodeKey, i64>>,
    /// Waiting jobs that more GPUs could serve → their queue.
    hungry: HashMap<String, String>,
    /// Waiting jobs → their queue (any reason).
    waiting: HashMap<String, String>,
    /// A queue's use went down while jobs of some queue wait (see [`Quotas::take_released`]).
    released: bool,
}

impl QuotaView {
    /// The queue a job of `namespace` naming `named` submits to: `None` outside every queue;
    /// an error when it names a queue that does not exist or does not take its namespace.
    pub fn queue_of(&self, namespace: &str, named: Option<&str>) -> Result<Option<String>, String> {
        let Some(q) = named else {
            return Ok(self.defaults.get(namespace).cloned());
        };
        match self.specs.get(q) {
            None => Err(format!(
                "queue {q} does not exist (no GpuQueue of that name)"
            )),
            Some(s) if !s.namespaces.iter().any(|n| n == namespace) => Err(format!(
                "queue {q} does not take jobs of namespace {namespace} (not in its spec.namespaces)"
            )),
            Some(_) => Ok(Some(q.to_string())),
        }
    }

    /// GPUs of class `class` that queue `q`'s jobs hold.
    fn used_class(&self, q: &str, class: &str) -> i64 {
        self.used
            .get(q)
            .and_then(|u| u.get(class))
            .copied()
            .unwrap_or(0)
    }

    /// GPUs counted against quota entry `entry` of queue `q`: its class, or for `any` every
    /// class the queue has no entry of its own for.
    fn used_entry(&self, q: &str, spec: &GpuQueueSpec, entry: &str) -> i64 {
        if entry != ANY_CLASS {
            return self.used_class(q, entry);
        }
        self.used.get(q).map_or(0, |u| {
            u.iter()
                .filter(|(c, _)| !spec.quotas.iter().any(|e| &e.gpu_class == *c))
                .map(|(_, n)| *n)
                .sum()
        })
    }

    /// The quota entry GPUs of `class` count against in `spec`.
    fn entry_for<'a>(spec: &'a GpuQueueSpec, class: &str) -> Option<&'a ClassQuota> {
        spec.quotas
            .iter()
            .find(|e| e.gpu_class == class)
            .or_else(|| spec.quotas.iter().find(|e| e.gpu_class == ANY_CLASS))
    }

    fn cohort_of(spec: &GpuQueueSpec) -> &str {
        spec.cohort.as_deref().unwrap_or("")
    }

    /// The cohort of `q` (itself included): (name, spec, its entry `entry`).
    fn cohort<'a>(
        &'a self,
        spec: &'a GpuQueueSpec,
        entry: &'a str,
    ) -> impl Iterator<Item = (&'a str, &'a GpuQueueSpec, &'a ClassQuota)> + 'a {
        let cohort = Self::cohort_of(spec);
        self.specs
            .iter()
            .filter(move |(_, s)| Self::cohort_of(s) == cohort)
            .filter_map(move |(n, s)| {
                s.quotas
                    .iter()
                    .find(|e| e.gpu_class == entry)
                    .map(|e| (n.as_str(), s, e))
            })
    }

    /// The cohort's shared pool of entry `entry`: (GPUs lent into it, GPUs of it in use), with
    /// queue `q` using `q_used` of its entry.
    fn shared(&self, q: &str, spec: &GpuQueueSpec, entry: &str, q_used: i64) -> (i64, i64) {
        let mut lent = 0;
        let mut in_use = 0;
        for (n, s, e) in self.cohort(spec, entry) {
            let used = if n == q {
                q_used
            } else {
                self.used_entry(n, s, entry)
            };
            lent += i64::from(e.lendable());
            in_use += (used - e.guaranteed()).max(0);
        }
        (lent, in_use)
    }

    /// Weighted share of queue `q` if its entry `entry` used `q_used`: GPUs beyond nominal per
    /// GPU of the cohort's shared pool, divided by its weight, the dominant of its entries.
    fn share(&self, q: &str, spec: &GpuQueueSpec, entry: &str, q_used: i64) -> f64 {
        let parts = spec.quotas.iter().map(|e| {
            let used = if e.gpu_class == entry {
                q_used
            } else {
                self.used_entry(q, spec, &e.gpu_class)
            };
            let (lent, _) = self.shared(q, spec, &e.gpu_class, used);
            ((used - i64::from(e.nominal)).max(0), lent)
        });
        fairshare::dominant_share(parts, spec.weight)
    }

    /// Whether queue `q` may take `demand` (GPUs per class) now.
    pub fn admit(&self, q: &str, demand: &Demand) -> Result<(), Refusal> {
        let Some(spec) = self.specs.get(q) else {
            return Err(Refusal {
                reason: format!("queue {q} does not exist (no GpuQueue of that name)"),
                hungry: false,
            });
        };
        let mut per_entry: BTreeMap<&str, (i64, Vec<&str>)> = BTreeMap::new();
        for (class, n) in demand.iter().filter(|(_, n)| **n > 0) {
            let Some(e) = Self::entry_for(spec, class) else {
                return Err(Refusal {
                    reason: format!("queue {q} has no quota for {class} GPUs"),
                    hungry: false,
                });
            };
            let p = per_entry.entry(e.gpu_class.as_str()).or_default();
            p.0 += n;
            p.1.push(class);
        }
        for (entry, (n, _)) in per_entry {
            self.admit_entry(q, spec, entry, n)?;
        }
        Ok(())
    }

    fn admit_entry(
        &self,
        q: &str,
        spec: &GpuQueueSpec,
        entry: &str,
        n: i64,
    ) -> Result<(), Refusal> {
        let e = Self::entry_for(spec, entry).expect("entry of the spec");
        let used = self.used_entry(q, spec, entry);
        let nominal = i64::from(e.nominal);
        let after = used + n;
        if after <= nominal {
            return Ok(());
        }
        let head = format!("queue {q}: {used} of {nominal} {entry} in use, the job needs {n}");
        if e.borrowing_limit
            .is_some_and(|b| after - nominal > i64::from(b))
        {
            return Err(Refusal {
                reason: format!("{head}, borrowing limit reached"),
                hungry: false,
            });
        }
        let (lent, in_use) = self.shared(q, spec, entry, used);
        let mine_now = (used - e.guaranteed()).max(0);
        let mine_after = (after - e.guaranteed()).max(0);
        if in_use - mine_now + mine_after > lent {
            let idle = (lent - in_use).max(0);
            let cohort = spec.cohort.as_deref().unwrap_or("of the pool");
            return Err(Refusal {
                reason: format!("{head}, cohort {cohort} has {idle} idle {entry} to lend"),
                hungry: true,
            });
        }
        let mine = self.share(q, spec, entry, after);
        let first = self
            .cohort(spec, entry)
            .filter(|(other, _, _)| *other != q && self.hungry_count.contains_key(*other))
            .map(|(other, s, _)| {
                (
                    other,
                    self.share(other, s, entry, self.used_entry(other, s, entry)),
                )
            })
            .find(|(_, theirs)| fairshare::goes_first(*theirs, mine));
        if let Some((other, theirs)) = first {
            return Err(Refusal {
                reason: format!(
                    "{head}, waits for its fair share of the cohort's idle {entry}: queue {other} (share {theirs:.2}, this queue {mine:.2} after) goes first"
                ),
                hungry: true,
            });
        }
        Ok(())
    }

    /// GPUs queue `q` could still take per quota entry now (ignoring fair sharing), most first.
    pub fn room(&self, q: &str) -> Vec<(String, i64)> {
        let Some(spec) = self.specs.get(q) else {
            return Vec::new();
        };
        let mut v: Vec<(String, i64)> = spec
            .quotas
            .iter()
            .map(|e| {
                let used = self.used_entry(q, spec, &e.gpu_class);
                let nominal = i64::from(e.nominal);
                let limit = e
                    .borrowing_limit
                    .map_or(i64::MAX, |b| nominal + i64::from(b));
                let (lent, in_use) = self.shared(q, spec, &e.gpu_class, used);
                let mine = (used - e.guaranteed()).max(0);
                let shared_room = lent - (in_use - mine) + e.guaranteed();
                let cap = limit.min(shared_room.max(nominal));
                (e.gpu_class.clone(), (cap - used).max(0))
            })
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

impl Quotas {
    /// No queues and no jobs.
    pub fn new() -> Quotas {
        Quotas::default()
    }

    /// Whether any queue exists (without one, nothing is limited).
    pub fn active(&self) -> bool {
        !self.view.specs.is_empty()
    }

    /// Queue names.
    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.view.specs.keys().map(String::as_str)
    }

    fn view_mut(&mut self) -> &mut QuotaView {
        std::sync::Arc::make_mut(&mut self.view)
    }

    /// The queues are now `specs` (by name): every job is counted again against its queue.
    pub fn set_queues(&mut self, specs: BTreeMap<String, GpuQueueSpec>) {
        if specs == self.view.specs {
            return;
        }
        let mut defaults = HashMap::new();
        for (name, s) in &specs {
            for ns in &s.namespaces {
                defaults.entry(ns.clone()).or_insert_with(|| name.clone());
            }
        }
        let v = self.view_mut();
        v.specs = specs;
        v.defaults = defaults;
        v.used.clear();
        self.nodes.clear();
        let uids: Vec<String> = self.jobs.keys().cloned().collect();
        for uid in uids {
            if let Some(j) = self.jobs.get_mut(&uid) {
                j.counted.clear();
                j.queue = None;
            }
            self.recount(&uid);
        }
        let waiting: Vec<String> = self.waiting.keys().cloned().collect();
        for uid in waiting {
            self.set_waiting(&uid, None);
        }
    }

    /// The queue a job of `namespace` naming `named` submits to (see [`QuotaView::queue_of`]).
    pub fn queue_of(&self, namespace: &str, named: Option<&str>) -> Result<Option<String>, String> {
        self.view.queue_of(namespace, named)
    }

    /// What an admission reads, shared (see [`QuotaView`]).
    pub fn view(&self) -> std::sync::Arc<QuotaView> {
        std::sync::Arc::clone(&self.view)
    }

    /// Whether queue `q` may take `demand` now (see [`QuotaView::admit`]).
    pub fn admit(&self, q: &str, demand: &Demand) -> Result<(), Refusal> {
        self.view.admit(q, demand)
    }

    /// GPUs queue `q` could still take per quota entry (see [`QuotaView::room`]).
    pub fn room(&self, q: &str) -> Vec<(String, i64)> {
        self.view.room(q)
    }

    /// GPUs on node `node` of `member` are of GPU model `model` (from its topology).
    pub fn set_node_model(&mut self, member: &str, node: &str, model: &str) {
        let key = (member.to_string(), node.to_string());
        let class = gpu_class(model).to_string();
        let old = self
            .node_class
            .insert(key.clone(), class.clone())
            .unwrap_or_else(|| UNKNOWN_CLASS.to_string());
        if old == class {
            return;
        }
        let moved: Vec<(String, i64)> = self
            .nodes
            .iter()
            .filter_map(|(q, nodes)| nodes.get(&key).map(|n| (q.clone(), *n)))
            .filter(|(_, n)| *n != 0)
            .collect();
        if moved.is_empty() {
            return;
        }
        let v = self.view_mut();
        for (q, n) in moved {
            let u = v.used.entry(q).or_default();
            *u.entry(old.clone()).or_default() -= n;
            *u.entry(class.clone()).or_default() += n;
        }
    }

    fn class_of(&self, key: &NodeKey) -> String {
        self.node_class
            .get(key)
            .cloned()
            .unwrap_or_else(|| UNKNOWN_CLASS.to_string())
    }

    /// Job `uid` of `namespace`, naming queue `named`, holds `slots` by its hub status; an
    /// assumption the status now covers is dropped.
    pub fn set_job(
        &mut self,
        uid: &str,
        namespace: &str,
        named: Option<&str>,
        slots: BTreeSet<Slot>,
    ) {
        let j = self.jobs.entry(uid.to_string()).or_default();
        j.namespace = namespace.to_string();
        j.named = named.map(str::to_string);
        let hub = slots;
        j.assumed.retain(|a| !a.iter().all(|s| hub.contains(s)));
        j.hub = hub;
        self.recount(uid);
    }

    /// Job `uid` is assumed to hold `slots` from now on (its decision is being written).
    pub fn assume(&mut self, uid: &str, slots: BTreeSet<Slot>) {
        if let Some(j) = self.jobs.get_mut(uid) {
            j.assumed.push(slots);
            self.recount(uid);
        }
    }

    /// The latest assumption of job `uid` failed to be written.
    pub fn unassume(&mut self, uid: &str) {
        if let Some(j) = self.jobs.get_mut(uid) {
            j.assumed.pop();
            self.recount(uid);
        }
    }

    /// Job `uid` is gone.
    pub fn forget(&mut self, uid: &str) {
        if let Some(mut j) = self.jobs.remove(uid) {
            let counted = std::mem::take(&mut j.counted);
            self.apply(j.queue.as_deref(), &counted, -1);
        }
        self.set_waiting(uid, None);
    }

    /// Counts job `uid` again: its queue and its GPUs per node.
    fn recount(&mut self, uid: &str) {
        let Some(j) = self.jobs.get(uid) else { return };
        let queue = self
            .queue_of(&j.namespace, j.named.as_deref())
            .ok()
            .flatten();
        let mut now: BTreeMap<NodeKey, i64> = BTreeMap::new();
        let all: BTreeSet<&Slot> = j.hub.iter().chain(j.assumed.iter().flatten()).collect();
        for s in all {
            *now.entry((s.member.clone(), s.node.clone())).or_default() += 1;
        }
        let (old_queue, old) = (j.queue.clone(), j.counted.clone());
        if old_queue == queue && old == now {
            return;
        }
        self.apply(old_queue.as_deref(), &old, -1);
        self.apply(queue.as_deref(), &now, 1);
        let j = self.jobs.get_mut(uid).expect("looked up above");
        j.queue = queue;
        j.counted = now;
    }

    fn apply(&mut self, queue: Option<&str>, nodes: &BTreeMap<NodeKey, i64>, sign: i64) {
        let Some(q) = queue else { return };
        if sign < 0 && !nodes.is_empty() && !self.waiting.is_empty() {
            self.released = true;
        }
        let classes: Vec<String> = nodes.keys().map(|k| self.class_of(k)).collect();
        let per_node = self.nodes.entry(q.to_string()).or_default();
        for (k, n) in nodes {
            let e = per_node.entry(k.clone()).or_default();
            *e += sign * n;
            if *e == 0 {
                per_node.remove(k);
            }
        }
        let u = self.view_mut().used.entry(q.to_string()).or_default();
        for ((_, n), class) in nodes.iter().zip(classes) {
            *u.entry(class).or_default() += sign * n;
        }
    }

    /// Whether a queue's use went down since the last call while jobs waited: quota they wait
    /// for may be free now, though no node that serves them changed.
    pub fn take_released(&mut self) -> bool {
        std::mem::take(&mut self.released)
    }

    /// Job `uid` waits (`Some`: in `queue`, and whether more GPUs could serve it) or does not.
    pub fn set_waiting(&mut self, uid: &str, state: Option<(&str, bool)>) {
        let was_hungry = self.hungry.remove(uid);
        let was_waiting = self.waiting.remove(uid);
        let now = state.map(|(q, h)| (q.to_string(), h));
        if was_hungry.is_none() && was_waiting.is_none() && now.is_none() {
            return;
        }
        if let Some((q, hungry)) = &now {
            self.waiting.insert(uid.to_string(), q.clone());
            if *hungry {
                self.hungry.insert(uid.to_string(), q.clone());
            }
        }
        let v = self.view_mut();
        let down = |m: &mut HashMap<String, usize>, q: &str| {
            if let Some(c) = m.get_mut(q) {
                *c -= 1;
                if *c == 0 {
                    m.remove(q);
                }
            }
        };
        if let Some(q) = was_hungry {
            down(&mut v.hungry_count, &q);
        }
        if let Some(q) = was_waiting {
            down(&mut v.waiting_count, &q);
        }
        if let Some((q, hungry)) = now {
            if hungry {
                *v.hungry_count.entry(q.clone()).or_default() += 1;
            }
            *v.waiting_count.entry(q).or_default() += 1;
        }
    }

    /// What queue `q`'s status shows now.
    pub fn status(&self, q: &str) -> Option<GpuQueueStatus> {
        self.view.status(q)
    }

    /// The queue job `uid`'s GPUs count against, if any.
    pub fn queue_of_job(&self, uid: &str) -> Option<&str> {
        self.jobs.get(uid)?.queue.as_deref()
    }

    /// Nodes where jobs of queue `q` hold GPUs.
    pub fn nodes_of(&self, q: &str) -> Vec<(String, String)> {
        self.nodes
            .get(q)
            .map(|n| n.keys().cloned().collect())
            .unwrap_or_default()
    }

    /// The quota class of GPUs on `node` of `member`.
    pub fn node_class(&self, member: &str, node: &str) -> String {
        self.class_of(&(member.to_string(), node.to_string()))
    }
}

impl QuotaView {
    /// The queues of `q`'s cohort, itself included.
    pub fn cohort_queues(&self, q: &str) -> Vec<String> {
        let Some(spec) = self.specs.get(q) else {
            return Vec::new();
        };
        let cohort = Self::cohort_of(spec);
        self.specs
            .iter()
            .filter(|(_, s)| Self::cohort_of(s) == cohort)
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// Queue `q`'s (used, nominal) GPUs of the quota entry GPUs of `class` count against;
    /// `None` when it has no entry for them.
    pub fn entry_use(&self, q: &str, class: &str) -> Option<(i64, i64)> {
        let spec = self.specs.get(q)?;
        let e = Self::entry_for(spec, class)?;
        Some((self.used_entry(q, spec, &e.gpu_class), i64::from(e.nominal)))
    }

    /// This view as if queue `q`'s jobs held `freed` GPUs (per class) fewer: what admission
    /// would say once preempted jobs released them.
    pub fn without(&self, q: &str, freed: &Demand) -> QuotaView {
        let mut v = self.clone();
        let u = v.used.entry(q.to_string()).or_default();
        for (class, n) in freed {
            *u.entry(class.clone()).or_default() -= n;
        }
        v
    }
}

impl QuotaView {
    /// What queue `q`'s status shows now.
    pub fn status(&self, q: &str) -> Option<GpuQueueStatus> {
        let spec = self.specs.get(q)?;
        let classes: Vec<ClassUsage> = spec
            .quotas
            .iter()
            .map(|e| {
                let used = self.used_entry(q, spec, &e.gpu_class);
                let nominal = i64::from(e.nominal);
                ClassUsage {
                    gpu_class: e.gpu_class.clone(),
                    nominal,
                    used,
                    borrowed: (used - nominal).max(0),
                }
            })
            .collect();
        Some(GpuQueueStatus {
            nominal_gpus: classes.iter().map(|c| c.nominal).sum(),
            used_gpus: classes.iter().map(|c| c.used).sum(),
            borrowed_gpus: classes.iter().map(|c| c.borrowed).sum(),
            pending_jobs: self.waiting_count.get(q).copied().unwrap_or(0) as i64,
            classes,
            conditions: Vec::new(),
        })
    }
}

#[cfg(test)]
#[path = "quota_tests.rs"]
mod tests;
