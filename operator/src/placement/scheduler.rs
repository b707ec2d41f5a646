//! Cluster-level placement: which member cluster, node and GPU set each worker or replica gets.
//!
//! Pure and deterministic: the inputs are candidate members and nodes with their free GPUs (built
//! by the scheduler's cache); the output is a placement or the reasons nothing fits. Members are filtered (ready,
//! schedulable, cluster selector, GPU model/memory, enough free GPUs satisfying the NVLink mode
//! via the topology allocator), and ranked by best fit ([`super::rank`]): each pod goes to the
//! node its rank prefers, a gang to the member where its pods' summed rank is best; ties go to
//! the cheaper member, then the name.

use super::allocator::{Allocation, GpuRequest, assess};
use super::rank::{GangFit, NodeFit, WholeNodes, node_fit};
use crate::api::{GpuSelector, GpuTopologySpec, NvLinkMode, ReplicaPlacement};
use crate::topology::{GpuGraph, GpuSet};
use std::collections::{BTreeMap, BTreeSet};

/// A GPU set chosen for one pod.
#[derive(Clone, Debug, PartialEq)]
pub struct PodPlacement {
    /// Rank / replica index.
    pub index: i32,
    /// Node in the member.
    pub node: String,
    /// GPU UUIDs.
    pub gpu_uuids: Vec<String>,
    /// GPU model.
    pub model: String,
    /// Topology score of the set.
    pub score: i64,
}

/// The size of the node's largest free set of pairwise NVLink-connected GPUs — the most GPUs an
/// `nvlink: clique` worker can get there — as a one-entry list (empty when nothing is free or
/// the topology is invalid), for `capacity.largestFreeNvlinkCliques`.
pub fn free_island_sizes(spec: &GpuTopologySpec, free: &BTreeSet<String>) -> Vec<i32> {
    match GpuGraph::from_spec(spec) {
        Ok(g) => {
            let set = GpuSet::from_indexes(free.iter().filter_map(|u| g.index_of(u)));
            match g.largest_free_nvlink_clique(set) {
                0 => Vec::new(),
                k => vec![k as i32],
            }
        }
        Err(_) => Vec::new(),
    }
}

/// A node that could take work.
#[derive(Clone, Debug)]
pub struct NodeCandidate {
    /// Node name (shared with the scheduler's cache).
    pub name: std::sync::Arc<str>,
    /// Its GPU graph (shared with the scheduler's cache; built once per topology change).
    pub graph: std::sync::Arc<GpuGraph>,
    /// Free GPUs.
    pub free: GpuSet,
    /// GPU model (of GPU 0; interned).
    pub model: std::sync::Arc<str>,
    /// Memory per GPU (smallest on the node), MiB.
    pub memory_mib: i64,
}

/// A member cluster that could take work.
#[derive(Clone, Debug)]
pub struct ClusterCandidate {
    /// Member name.
    pub name: String,
    /// Labels for cluster selectors (spec labels plus `region`).
    pub labels: BTreeMap<String, String>,
    /// Asking price per GPU-hour.
    pub price: Option<i64>,
    /// Nodes with a published topology.
    pub nodes: Vec<NodeCandidate>,
    /// Why nodes were left out (no topology, not ready, bad topology).
    pub skipped: Vec<String>,
    /// The member's whole NVLink nodes and how many are idle — all of its placeable nodes, also
    /// those `nodes` leaves out — for the scarcity rule of [`super::rank`].
    pub whole_nodes: WholeNodes,
}

/// What one job asks for.
#[derive(Clone, Debug)]
pub struct JobRequest {
    /// GPUs per worker/replica.
    pub gpus_per_pod: usize,
    /// NVLink mode inside one worker/replica.
    pub nvlink: NvLinkMode,
    /// GPU model / memory selector.
    pub gpu: GpuSelector,
    /// Cluster label selector.
    pub cluster_selector: BTreeMap<String, String>,
}

impl JobRequest {
    fn node_matches(&self, n: &NodeCandidate) -> Result<(), String> {
        if let Some(m) = &self.gpu.model
            && !n.model.to_lowercase().contains(&m.to_lowercase())
        {
            return Err(format!(
                "{}: model {} does not match {m:?}",
                n.name, n.model
            ));
        }
        if let Some(min) = self.gpu.min_memory_mib
            && n.memory_mib < min
        {
            return Err(format!(
                "{}: {} MiB per GPU < {min} MiB",
                n.name, n.memory_mib
            ));
        }
        Ok(())
    }

    fn cluster_matches(&self, c: &ClusterCandidate) -> bool {
        self.cluster_selector
            .iter()
            .all(|(k, v)| c.labels.get(k) == Some(v))
    }
}

/// Chosen placement on one member.
#[derive(Clone, Debug, PartialEq)]
pub struct ClusterChoice {
    /// Member name.
    pub cluster: String,
    /// One entry per worker/replica.
    pub pods: Vec<PodPlacement>,
    /// Mean allocator score.
    pub score: i64,
}

/// Nothing fits; `reasons` says why per member.
#[derive(Clone, Debug, PartialEq)]
pub struct Unschedulable {
    /// Human-readable reasons, one per member (or a global one).
    pub reasons: Vec<String>,
}

impl std::fmt::Display for Unschedulable {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.reasons.is_empty() {
            f.write_str("no member clusters registered")
        } else {
            f.write_str(&self.reasons.join("; "))
        }
    }
}

/// The whole NVLink nodes of every candidate member together.
fn pool_whole_nodes(cands: &[ClusterCandidate]) -> WholeNodes {
    cands
        .iter()
        .fold(WholeNodes::default(), |w, c| w.plus(c.whole_nodes))
}

/// Where one pod of a member would go, before anything is named: node (index in the member's
/// candidates), GPUs and their within-node score. Members are compared on these; only the
/// chosen member's pods are named ([`named`]), so ranking a thousand members copies no UUIDs.
#[derive(Clone, Copy, Debug)]
struct Spot {
    node: usize,
    set: GpuSet,
    score: i64,
}

/// The pod at `spot` of member `c`, named: node, UUIDs (ascending GPU index), model.
fn named(c: &ClusterCandidate, spot: &Spot, index: i32) -> PodPlacement {
    let n = &c.nodes[spot.node];
    PodPlacement {
        index,
        node: n.name.to_string(),
        gpu_uuids: n.graph.uuids(spot.set),
        model: n.model.to_string(),
        score: spot.score,
    }
}

/// Best node for one pod in `c` given the current free sets, by best fit ([`super::rank`]),
/// `whole` the pool's whole NVLink nodes; returns its spot and rank.
fn best_node(
    c: &ClusterCandidate,
    free: &[GpuSet],
    req: &JobRequest,
    whole: WholeNodes,
    why: &mut Vec<String>,
) -> Option<(Spot, NodeFit)> {
    let scarce = whole.scarce();
    let gr = GpuRequest::new(req.gpus_per_pod, req.nvlink)
        .with_min_link(req.gpu.min_link_gbps.unwrap_or(0));
    let mut best: Option<(NodeFit, usize, Allocation)> = None;
    // A node answering exactly as an earlier one that fitted (same shape, free GPUs, model and
    // memory) cannot beat it (ties keep the earlier node): it is not asked again.
    let mut fitted: std::collections::HashSet<(u64, GpuSet, &str, i64)> = Default::default();
    for (i, n) in c.nodes.iter().enumerate() {
        let key = (n.graph.shape_id(), free[i], &*n.model, n.memory_mib);
        if fitted.contains(&key) {
            continue;
        }
        if let Err(e) = req.node_matches(n) {
            why.push(e);
            continue;
        }
        match assess(&n.graph, free[i], &gr) {
            Ok(a) => {
                fitted.insert(key);
                let fit = node_fit(&a, &gr, scarce);
                // Ties keep the earlier node (candidates come in name order).
                if best.as_ref().is_none_or(|(b, _, _)| fit < *b) {
                    best = Some((fit, i, a));
                }
            }
            Err(r) => why.push(format!("{}: {}", n.name, r.message(n.graph.node_name()))),
        }
    }
    best.map(|(fit, node, a)| {
        let spot = Spot {
            node,
            set: a.set,
            score: a.score,
        };
        (spot, fit)
    })
}

/// Places pods one by one on `c` (each on its best node) until one does not fit, `whole` the
/// pool's whole NVLink nodes before the first; `pods` of them at most. Returns their spots,
/// their summed rank and, if not all fit, why.
fn fit_greedy(
    c: &ClusterCandidate,
    req: &JobRequest,
    mut whole: WholeNodes,
    pods: usize,
) -> (Vec<Spot>, GangFit, Option<String>) {
    let mut free: Vec<GpuSet> = c.nodes.iter().map(|n| n.free).collect();
    let mut spots = Vec::with_capacity(pods);
    let mut fit = GangFit::default();
    while spots.len() < pods {
        let mut why = Vec::new();
        match best_node(c, &free, req, whole, &mut why) {
            Some((spot, f)) => {
                let g = &c.nodes[spot.node].graph;
                if free[spot.node] == g.all() && WholeNodes::is_whole_nvlink_node(g) {
                    whole.idle = whole.idle.saturating_sub(1);
                }
                free[spot.node] = free[spot.node].minus(spot.set);
                spots.push(spot);
                fit.add(&f);
            }
            None => {
                why.extend(c.skipped.iter().cloned());
                let detail = if why.is_empty() {
                    "no GPU nodes".to_string()
                } else {
                    why.join(", ")
                };
                let reason = format!(
                    "{}: only {} of {} pods of {} GPU(s) fit ({detail})",
                    c.name,
                    spots.len(),
                    pods,
                    req.gpus_per_pod
                );
                return (spots, fit, Some(reason));
            }
        }
    }
    (spots, fit, None)
}

/// The choice made of the pods placed on `c` (`indexes[i]` at `spots[i]`).
fn choice_of(c: &ClusterCandidate, spots: &[Spot], indexes: &[i32]) -> ClusterChoice {
    let pods: Vec<PodPlacement> = spots
        .iter()
        .zip(indexes)
        .map(|(s, ix)| named(c, s, *ix))
        .collect();
    let score = if pods.is_empty() {
        0
    } else {
        pods.iter().map(|p| p.score).sum::<i64>() / pods.len() as i64
    };
    ClusterChoice {
        cluster: c.name.clone(),
        pods,
        score,
    }
}

/// A member's pods before they are named, and their summed rank.
struct Fitted<'a> {
    c: &'a ClusterCandidate,
    spots: Vec<Spot>,
    fit: GangFit,
}

impl Fitted<'_> {
    /// Ranking of a member's choice: best fit first, then the cheaper member, then the name.
    fn key(&self) -> (&GangFit, i64, &str) {
        (&self.fit, self.c.price.unwrap_or(0), &self.c.name)
    }
}

/// Places a gang (all `indexes`) on the single member that fits all of them best, summing each
/// pod's best-fit rank ([`super::rank`]): most pods with the NVLink class they prefer, then the
/// fewest GPUs left free where each pod lands (so idle nodes stay whole), then the least damage
/// to free NVLink cliques, then set quality; then the lower price, then the name.
pub fn place_gang(
    cands: &[ClusterCandidate],
    req: &JobRequest,
    indexes: &[i32],
) -> Result<ClusterChoice, Unschedulable> {
    let mut best: Option<Fitted> = None;
    let mut reasons = Vec::new();
    let whole = pool_whole_nodes(cands);
    for c in cands {
        if !req.cluster_matches(c) {
            reasons.push(format!("{}: clusterSelector does not match", c.name));
            continue;
        }
        let (spots, fit, failed) = fit_greedy(c, req, whole, indexes.len());
        if let Some(e) = failed {
            reasons.push(e);
            continue;
        }
        let f = Fitted { c, spots, fit };
        if best.as_ref().is_none_or(|b| f.key() < b.key()) {
            best = Some(f);
        }
    }
    best.map(|b| choice_of(b.c, &b.spots, indexes))
        .ok_or(Unschedulable { reasons })
}

/// Places inference replicas under `policy` (`existing`: member → replicas of this job already
/// there). Returns the placements and the reasons for replicas left unplaced.
///
/// * Without `spread` or `maxReplicasPerCluster`, all replicas go to one member: `pinned` (the
///   member already holding some) if set, otherwise the member that fits the most of them, then
///   by best fit, price and name. Each member is tried once, replica by replica.
/// * Otherwise each replica goes to its best (member, node) by best fit among the members
///   allowed: under `maxReplicasPerCluster`, and — with `spread` — in a domain (a member, or the
///   members sharing a value of `topologyKey`) holding at most `maxSkew − 1` more replicas than
///   the emptiest domain that can still take one; ties go to the domain, then the member,
///   holding fewer, then the cheaper member.
pub fn place_replicas(
    cands: &[ClusterCandidate],
    req: &JobRequest,
    indexes: &[i32],
    policy: &ReplicaPlacement,
    pinned: Option<&str>,
    existing: &BTreeMap<String, usize>,
) -> (Vec<(String, PodPlacement)>, Vec<String>) {
    let eligible: Vec<&ClusterCandidate> = cands
        .iter()
        .filter(|c| req.cluster_matches(c) && pinned.is_none_or(|p| p == c.name))
        .collect();
    if eligible.is_empty() {
        let r = match pinned {
            Some(p) => format!("{p}: the member holding this job's replicas is not schedulable"),
            None => "no member matches clusterSelector".into(),
        };
        return (Vec::new(), vec![r]);
    }
    let whole = pool_whole_nodes(cands);
    if !policy.multi_cluster() {
        return place_on_one_member(&eligible, req, whole, indexes);
    }
    let (members, member_reasons) = spread_domains(eligible, policy);
    let (out, mut reasons) = spread_replicas(&members, req, whole, indexes, policy, existing);
    if out.len() < indexes.len() {
        reasons.extend(member_reasons);
    }
    (out, reasons)
}

/// The members replicas may spread over, each with its domain (the value of `topologyKey`, or
/// its own name), and why the others may not.
fn spread_domains<'a>(
    eligible: Vec<&'a ClusterCandidate>,
    policy: &ReplicaPlacement,
) -> (Vec<(&'a ClusterCandidate, String)>, Vec<String>) {
    let mut member_reasons = Vec::new();
    let key = policy
        .spread
        .as_ref()
        .and_then(|s| s.topology_key.as_deref());
    let mut members: Vec<(&ClusterCandidate, String)> = Vec::new();
    for c in eligible {
        match key {
            Some(k) => match c.labels.get(k) {
                Some(v) => members.push((c, v.clone())),
                None => member_reasons.push(format!(
                    "{}: no label {k:?} to spread by (spread.topologyKey)",
                    c.name
                )),
            },
            None => members.push((c, c.name.clone())),
        }
    }
    (members, member_reasons)
}

/// A member's best spot for a replica and its rank, and why its other nodes do not fit.
type Best = (Option<(Spot, NodeFit)>, Vec<String>);

/// Each replica to its best (member, node) among `members` under the policy's skew and
/// per-member cap (see [`place_replicas`]).
fn spread_replicas(
    members: &[(&ClusterCandidate, String)],
    req: &JobRequest,
    mut whole: WholeNodes,
    indexes: &[i32],
    policy: &ReplicaPlacement,
    existing: &BTreeMap<String, usize>,
) -> (Vec<(String, PodPlacement)>, Vec<String>) {
    let max_skew = policy.spread.as_ref().map(|s| s.max_skew.max(1) as usize);
    let cap = policy.max_replicas_per_cluster.map(|m| m.max(1) as usize);
    let mut free: Vec<Vec<GpuSet>> = members
        .iter()
        .map(|(c, _)| c.nodes.iter().map(|n| n.free).collect())
        .collect();
    let (mut held, domain, mut in_domain) = replica_counts(members, existing);
    let mut out = Vec::new();
    let mut reasons = Vec::new();
    // Each member's best node (and why its nodes do not fit), computed once and again only for
    // the member that took the last replica: the others' free GPUs did not change, and the
    // replicas are all the same size, so their answer stays the same (all are asked again
    // when whole NVLink nodes become scarce, which changes the ranks).
    let mut best_of: Vec<Option<Best>> = vec![None; members.len()];
    let mut scarce = whole.scarce();
    for &ix in indexes {
        if whole.scarce() != scarce {
            scarce = whole.scarce();
            best_of.iter_mut().for_each(|b| *b = None);
        }
        // Every member's best node for this replica: (member, rank, domain's and member's
        // replicas), the placement itself read from `best_of` for the winner only.
        let mut options: Vec<(usize, NodeFit, usize, usize)> = Vec::new();
        for (ci, (c, _)) in members.iter().enumerate() {
            let h = held[ci];
            if cap.is_some_and(|m| h >= m) {
                continue;
            }
            let (best, _) = best_of[ci].get_or_insert_with(|| {
                let mut w = Vec::new();
                let best = best_node(c, &free[ci], req, whole, &mut w);
                if best.is_none() && w.is_empty() {
                    // Its nodes were left out before the decision (full, wrong model, unusable).
                    w.extend(c.skipped.iter().map(|s| format!("{}: {s}", c.name)));
                }
                (best, w)
            });
            if let Some((_, fit)) = best {
                options.push((ci, *fit, in_domain[domain[ci]], h));
            }
        }
        let min_domain = options.iter().map(|o| o.2).min();
        let best = options
            .into_iter()
            .filter(|o| max_skew.is_none_or(|s| min_domain.is_none_or(|m| o.2 + 1 - m <= s)))
            .min_by_key(|o| (o.1, o.2, o.3, members[o.0].0.price.unwrap_or(0), o.0));
        let chosen = best.and_then(|o| Some((o.0, best_of[o.0].as_ref()?.0.as_ref()?.0)));
        match chosen {
            Some((ci, spot)) => {
                let c = members[ci].0;
                let (ni, set) = (spot.node, spot.set);
                let p = named(c, &spot, ix);
                let g = &c.nodes[ni].graph;
                if free[ci][ni] == g.all() && WholeNodes::is_whole_nvlink_node(g) {
                    whole.idle = whole.idle.saturating_sub(1);
                }
                free[ci][ni] = free[ci][ni].minus(set);
                best_of[ci] = None;
                held[ci] += 1;
                in_domain[domain[ci]] += 1;
                out.push((c.name.clone(), p));
            }
            None => {
                let why = unplaced_why(members, &best_of, &held, cap);
                reasons.push(format!(
                    "replica {ix}: {}",
                    if why.is_empty() {
                        "no GPU nodes".into()
                    } else {
                        why.join(", ")
                    }
                ))
            }
        }
    }
    (out, reasons)
}

/// Replicas per member, each member's domain (an index) and replicas per domain — by position,
/// so that a spread over a thousand members does not look names up sixteen thousand times.
fn replica_counts(
    members: &[(&ClusterCandidate, String)],
    existing: &BTreeMap<String, usize>,
) -> (Vec<usize>, Vec<usize>, Vec<usize>) {
    let held: Vec<usize> = members
        .iter()
        .map(|(c, _)| existing.get(&c.name).copied().unwrap_or(0))
        .collect();
    let mut domain_ids: BTreeMap<&str, usize> = BTreeMap::new();
    let domain: Vec<usize> = members
        .iter()
        .map(|(_, d)| {
            let next = domain_ids.len();
            *domain_ids.entry(d.as_str()).or_insert(next)
        })
        .collect();
    let mut in_domain: Vec<usize> = vec![0; domain_ids.len()];
    for (ci, h) in held.iter().enumerate() {
        in_domain[domain[ci]] += h;
    }
    (held, domain, in_domain)
}

/// Why no member took a replica: the members at their cap, and each other member's reasons
/// for its nodes (as [`spread_replicas`] found them).
fn unplaced_why(
    members: &[(&ClusterCandidate, String)],
    best_of: &[Option<Best>],
    held: &[usize],
    cap: Option<usize>,
) -> Vec<String> {
    let mut why = Vec::new();
    for (ci, (c, _)) in members.iter().enumerate() {
        let h = held[ci];
        if cap.is_some_and(|m| h >= m) {
            why.push(format!(
                "{}: holds {h} replicas (maxReplicasPerCluster)",
                c.name
            ));
        } else if let Some((_, w)) = &best_of[ci] {
            why.extend(w.iter().cloned());
        }
    }
    why
}

/// All replicas on one member: the one that fits the most, then best fit, price, name. Each
/// member is filled once, replica by replica (a replica that does not fit means no later one
/// does: they are the same size and the free GPUs only shrink).
fn place_on_one_member(
    eligible: &[&ClusterCandidate],
    req: &JobRequest,
    whole: WholeNodes,
    indexes: &[i32],
) -> (Vec<(String, PodPlacement)>, Vec<String>) {
    let mut best: Option<Fitted> = None;
    let mut reasons = Vec::new();
    for c in eligible {
        let (spots, fit, failed) = fit_greedy(c, req, whole, indexes.len());
        if let Some(r) = failed {
            reasons.push(r);
        }
        if spots.is_empty() {
            continue;
        }
        let f = Fitted { c, spots, fit };
        let more = |b: &Fitted| f.spots.len().cmp(&b.spots.len());
        if best
            .as_ref()
            .is_none_or(|b| more(b).is_gt() || (more(b).is_eq() && f.key() < b.key()))
        {
            best = Some(f);
        }
    }
    match best {
        Some(b) => {
            let n = b.spots.len();
            let ch = choice_of(b.c, &b.spots, indexes);
            let placed = ch
                .pods
                .iter()
                .map(|p| (ch.cluster.clone(), p.clone()))
                .collect::<Vec<_>>();
            (
                placed,
                if n < indexes.len() {
                    reasons
                } else {
                    Vec::new()
                },
            )
        }
        None => (Vec::new(), reasons),
    }
}

#[cfg(test)]
#[path = "scheduler_tests.rs"]
mod tests;
