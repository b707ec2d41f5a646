//! Preemption: for a job of a `GpuQueue` that waits for GPUs, the running gangs to preempt so
//! that it fits, chosen on the cache (the pure choice per node and member is
//! [`super::preempt`]'s).
//!
//! Who may be preempted, and why — the only two reasons, so no two queues can take GPUs back
//! and forth:
//! - **priority**: a gang of the same queue of strictly lower priority (it cannot preempt back:
//!   its priority is lower);
//! - **reclaim**: the waiting job's queue stays within its nominal quota of the GPUs' class
//!   once placed, and the gang belongs to another queue of its cohort that holds more than its
//!   own nominal quota of that class (it borrows). A reclaimed queue cannot take the GPUs
//!   back: it could reclaim only from a queue beyond its nominal quota, and the reclaiming one
//!   is within it. (A borrower's gang goes whole, even when part of it was within its queue's
//!   nominal quota: a gang is not divisible.)
//!
//! Only TrainingJob gangs are preempted (whole); InferenceJob replicas serve traffic and are
//! never victims. Victims are looked for only on nodes where jobs of the queues above hold
//! GPUs (the per-queue node index of [`super::quota`]), on members open to the job; nothing is
//! preempted unless every pod of the job fits once the victims are gone, and its queue's quota
//! admits it then.

use super::cache::{JobName, PoolCache, Slot};
use super::preempt::{Holder, NodeView, Plan, plan_member};
use super::queue::Need;
use super::quota::{Demand, Quotas};
use crate::topology::GpuSet;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

/// What preemption needs to know about a running gang.
#[derive(Clone, Debug, PartialEq)]
pub struct Running {
    /// Its priority.
    pub priority: i64,
    /// When it started (or was placed), seconds.
    pub started: i64,
}

/// Why a victim is preempted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Reason {
    /// A job of higher priority in its queue.
    Priority,
    /// A queue reclaiming the quota it lent.
    Reclaim,
}

impl Reason {
    /// The `Preempted` condition's reason.
    pub fn condition(self) -> &'static str {
        match self {
            Reason::Priority => "PreemptedByPriority",
            Reason::Reclaim => "Reclaimed",
        }
    }

    /// The metric's `reason` label.
    pub fn label(self) -> &'static str {
        match self {
            Reason::Priority => "priority",
            Reason::Reclaim => "reclaim",
        }
    }
}

/// A job to preempt.
#[derive(Clone, Debug, PartialEq)]
pub struct Victim {
    /// Its UID.
    pub uid: String,
    /// Its kind, namespace and name.
    pub name: JobName,
    /// Its queue.
    pub queue: String,
    /// Why.
    pub reason: Reason,
    /// What its condition and Event say.
    pub note: String,
}

/// The job that waits.
pub struct Preemptor<'a> {
    /// Its UID.
    pub uid: &'a str,
    /// `namespace/name`.
    pub name: String,
    /// Its queue.
    pub queue: &'a str,
    /// Its priority.
    pub priority: i64,
    /// What one pod needs.
    pub need: Need,
    /// Its pods (a gang's workers).
    pub pods: usize,
    /// Its `clusterSelector`.
    pub selector: &'a BTreeMap<String, String>,
    /// Its queue's quota, not the pool's GPUs, stops it: only GPUs its own queue's victims
    /// release can serve it (free GPUs elsewhere do not count).
    pub quota_bound: bool,
}

/// Victims found: who, and the GPUs whose release the preemptor waits for.
#[derive(Clone, Debug, PartialEq)]
pub struct Found {
    /// The jobs to preempt.
    pub victims: Vec<Victim>,
    /// Their GPUs on the nodes the preemptor's pods would take.
    pub slots: BTreeSet<Slot>,
}

/// What the search reads.
pub struct Inputs<'a> {
    /// The pool.
    pub cache: &'a PoolCache,
    /// Queues and their use.
    pub quotas: &'a Quotas,
    /// Running gangs (of any queue) by UID.
    pub running: &'a HashMap<String, Running>,
    /// Jobs already being preempted.
    pub busy: &'a HashSet<String>,
}

/// The cheapest victims that let `p` fit, if any.
pub fn find(inp: &Inputs<'_>, p: &Preemptor<'_>) -> Option<Found> {
    let mut by_member: BTreeMap<String, Vec<NodeView<String>>> = BTreeMap::new();
    let mut reasons: HashMap<String, Reason> = HashMap::new();
    for (member, node) in candidate_nodes(inp, p) {
        let Some(view) = node_view(inp, p, &member, &node, &mut reasons) else {
            continue;
        };
        by_member.entry(member).or_default().push(view);
    }
    let req = p.need.request();
    let (member, plan) = by_member
        .iter()
        .filter_map(|(m, nodes)| plan_member(nodes, &req, p.pods).map(|pl| (m, pl)))
        .filter(|(m, pl)| !pl.victims.is_empty() && quota_allows(inp, p, m, pl))
        .min_by(|a, b| a.1.cost().cmp(&b.1.cost()).then(a.0.cmp(b.0)))?;
    let nodes: BTreeSet<&str> = plan.pods.iter().map(|(n, _)| n.as_str()).collect();
    let mut found = Found {
        victims: Vec::new(),
        slots: BTreeSet::new(),
    };
    for h in &plan.victims {
        let name = inp.cache.job_name(&h.id)?.clone();
        let reason = reasons[&h.id];
        let queue = inp.quotas.queue_of_job(&h.id)?.to_string();
        found.slots.extend(
            inp.cache
                .hub_slots(&h.id)
                .iter()
                .filter(|s| &s.member == member && nodes.contains(s.node.as_str()))
                .cloned(),
        );
        found.victims.push(Victim {
            uid: h.id.clone(),
            name,
            queue,
            reason,
            note: note(p, reason),
        });
    }
    Some(found)
}

/// What a victim's condition and Event say.
fn note(p: &Preemptor<'_>, reason: Reason) -> String {
    match reason {
        Reason::Priority => format!(
            "preempted by {} (priority {}) in queue {}",
            p.name, p.priority, p.queue
        ),
        Reason::Reclaim => format!(
            "reclaimed by queue {}, lent quota (for {})",
            p.queue, p.name
        ),
    }
}

/// Nodes where jobs of the queues `p` may take from hold GPUs, on members open to `p`.
fn candidate_nodes(inp: &Inputs<'_>, p: &Preemptor<'_>) -> BTreeSet<(String, String)> {
    let view = inp.quotas.view();
    view.cohort_queues(p.queue)
        .iter()
        .flat_map(|q| inp.quotas.nodes_of(q))
        .filter(|(m, _)| {
            inp.cache
                .member_open(m)
                .is_some_and(|labels| p.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
        })
        .collect()
}

/// Node `node` of `member` as the choice sees it: its free GPUs and the jobs on it `p` may
/// preempt (their reasons recorded in `reasons`); `None` when it cannot take a pod of `p`.
fn node_view(
    inp: &Inputs<'_>,
    p: &Preemptor<'_>,
    member: &str,
    node: &str,
    reasons: &mut HashMap<String, Reason>,
) -> Option<NodeView<String>> {
    let n = inp.cache.node(member, node)?;
    let need = &p.need;
    let fits_kind = n.graph.len() >= need.gpus_per_pod
        && need
            .model
            .as_ref()
            .is_none_or(|m| n.model.to_lowercase().contains(&m.to_lowercase()))
        && need.min_memory_mib.is_none_or(|m| n.memory_mib >= m);
    if !fits_kind {
        return None;
    }
    let class = inp.quotas.node_class(member, node);
    let mut holders = Vec::new();
    for uid in inp.cache.jobs_on_node(member, node) {
        let Some(reason) = eligible(inp, p, &uid, &class) else {
            continue;
        };
        let Some(run) = inp.running.get(&uid) else {
            continue;
        };
        let gpus = GpuSet::from_indexes(
            inp.cache
                .hub_slots(&uid)
                .iter()
                .filter(|s| s.member == member && s.node == node)
                .filter_map(|s| n.graph.index_of(&s.uuid)),
        );
        reasons.insert(uid.clone(), reason);
        holders.push(Holder {
            id: uid,
            gpus,
            priority: run.priority,
            started: run.started,
        });
    }
    if holders.is_empty() {
        return None;
    }
    // The cheapest first: the choice looks at most `MAX_HOLDERS` of them.
    holders.sort_by_key(|h| (h.priority, -h.started));
    Some(NodeView {
        node: node.to_string(),
        graph: n.graph.clone(),
        free: if p.quota_bound {
            GpuSet::default()
        } else {
            n.free()
        },
        holders,
    })
}

/// Why `p` may preempt job `uid` holding GPUs of `class`, if it may.
fn eligible(inp: &Inputs<'_>, p: &Preemptor<'_>, uid: &str, class: &str) -> Option<Reason> {
    if uid == p.uid || inp.busy.contains(uid) || inp.cache.is_assumed(uid) {
        return None;
    }
    let run = inp.running.get(uid)?;
    let theirs = inp.quotas.queue_of_job(uid)?;
    if theirs == p.queue {
        return (run.priority < p.priority).then_some(Reason::Priority);
    }
    let view = inp.quotas.view();
    let wants = (p.pods * p.need.gpus_per_pod) as i64;
    let (mine, my_nominal) = view.entry_use(p.queue, class)?;
    let (used, nominal) = view.entry_use(theirs, class)?;
    (mine + wants <= my_nominal && used > nominal).then_some(Reason::Reclaim)
}

/// Whether `p`'s queue admits it once `plan`'s victims on `member` are gone.
fn quota_allows(inp: &Inputs<'_>, p: &Preemptor<'_>, member: &str, plan: &Plan<String>) -> bool {
    let view = inp.quotas.view();
    let mut demand = Demand::new();
    for (node, got) in &plan.pods {
        *demand
            .entry(inp.quotas.node_class(member, node))
            .or_default() += got.len() as i64;
    }
    let mut freed: BTreeMap<String, Demand> = BTreeMap::new();
    for h in &plan.victims {
        let Some(q) = inp.quotas.queue_of_job(&h.id) else {
            return false;
        };
        for s in inp.cache.hub_slots(&h.id) {
            let class = inp.quotas.node_class(&s.member, &s.node);
            *freed
                .entry(q.to_string())
                .or_default()
                .entry(class)
                .or_default() += 1;
        }
    }
    let mut after = (*view).clone();
    for (q, classes) in &freed {
        after = after.without(q, classes);
    }
    after.admit(p.queue, &demand).is_ok()
}

#[cfg(test)]
#[path = "victims_tests.rs"]
mod tests;
