//! Cluster-level placement: which member cluster, node and GPU set each worker or replica gets.
//!
//! Pure and deterministic: the inputs are candidate members and nodes with their free GPUs (built
//! by the scheduler's cache); the output is a placement or the reasons nothing fits. Members are filtered (ready,
//! schedulable, cluster selector, GPU model/memory, enough free GPUs satisfying the NVLink mode
//! via the topology allocator), scored by the mean allocator score of their GPU sets, and ties go
//! to the cheaper member, then the name.

use super::allocator::{GpuRequest, allocate};
use crate::api::{GpuSelector, NvLinkMode};
use crate::topology::{GpuGraph, GpuSet};
use crate::workloads::PodPlacement;
use std::collections::BTreeMap;

/// A node that could take work.
#[derive(Clone, Debug)]
pub struct NodeCandidate {
    /// Node name.
    pub name: String,
    /// Its GPU graph (shared with the scheduler's cache; built once per topology change).
    pub graph: std::sync::Arc<GpuGraph>,
    /// Free GPUs.
    pub free: GpuSet,
    /// GPU model (of GPU 0).
    pub model: String,
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

/// Best node for one pod in `c` given the current free sets; returns (node idx, placement).
fn best_node(
    c: &ClusterCandidate,
    free: &[GpuSet],
    req: &JobRequest,
    index: i32,
    why: &mut Vec<String>,
) -> Option<(usize, PodPlacement, GpuSet)> {
    let gr = GpuRequest::new(req.gpus_per_pod, req.nvlink);
    let mut best: Option<(i64, usize, usize, PodPlacement, GpuSet)> = None;
    for (i, n) in c.nodes.iter().enumerate() {
        if let Err(e) = req.node_matches(n) {
            why.push(e);
            continue;
        }
        match allocate(&n.graph, free[i], &gr) {
            Ok(a) => {
                let left = free[i].len() - a.gpus.len();
                // Higher score wins; then the fuller node (packing keeps big nodes whole); then name order.
                let better = match &best {
                    None => true,
                    Some((s, l, _, _, _)) => a.score > *s || (a.score == *s && left < *l),
                };
                if better {
                    let p = PodPlacement {
                        index,
                        node: n.name.clone(),
                        gpu_uuids: a.uuids.clone(),
                        model: n.model.clone(),
                        score: a.score,
                    };
                    best = Some((a.score, left, i, p, a.set));
                }
            }
            Err(e) => why.push(format!("{}: {e}", n.name)),
        }
    }
    best.map(|(_, _, i, p, s)| (i, p, s))
}

/// Places `indexes.len()` pods on one cluster, all or nothing.
fn fit_all(
    c: &ClusterCandidate,
    req: &JobRequest,
    indexes: &[i32],
) -> Result<ClusterChoice, String> {
    let mut free: Vec<GpuSet> = c.nodes.iter().map(|n| n.free).collect();
    let mut pods = Vec::new();
    for &ix in indexes {
        let mut why = Vec::new();
        match best_node(c, &free, req, ix, &mut why) {
            Some((i, p, set)) => {
                free[i] = free[i].minus(set);
                pods.push(p);
            }
            None => {
                why.extend(c.skipped.iter().cloned());
                let detail = if why.is_empty() {
                    "no GPU nodes".to_string()
                } else {
                    why.join(", ")
                };
                return Err(format!(
                    "{}: only {} of {} pods of {} GPU(s) fit ({detail})",
                    c.name,
                    pods.len(),
                    indexes.len(),
                    req.gpus_per_pod
                ));
            }
        }
    }
    let score = if pods.is_empty() {
        0
    } else {
        pods.iter().map(|p| p.score).sum::<i64>() / pods.len() as i64
    };
    Ok(ClusterChoice {
        cluster: c.name.clone(),
        pods,
        score,
    })
}

fn better_choice(
    a: &ClusterChoice,
    a_price: Option<i64>,
    b: &ClusterChoice,
    b_price: Option<i64>,
) -> bool {
    (
        a.score,
        std::cmp::Reverse(a_price.unwrap_or(0)),
        std::cmp::Reverse(&a.cluster),
    ) > (
        b.score,
        std::cmp::Reverse(b_price.unwrap_or(0)),
        std::cmp::Reverse(&b.cluster),
    )
}

/// Places a gang (all `indexes`) on the single best member that fits all of them.
pub fn place_gang(
    cands: &[ClusterCandidate],
    req: &JobRequest,
    indexes: &[i32],
) -> Result<ClusterChoice, Unschedulable> {
    let mut best: Option<(ClusterChoice, Option<i64>)> = None;
    let mut reasons = Vec::new();
    for c in cands {
        if !req.cluster_matches(c) {
            reasons.push(format!("{}: clusterSelector does not match", c.name));
            continue;
        }
        match fit_all(c, req, indexes) {
            Ok(ch) => {
                if best
                    .as_ref()
                    .is_none_or(|(b, bp)| better_choice(&ch, c.price, b, *bp))
                {
                    best = Some((ch, c.price));
                }
            }
            Err(e) => reasons.push(e),
        }
    }
    best.map(|(c, _)| c).ok_or(Unschedulable { reasons })
}

/// Ranking of a replica's candidate: score, then fewer replicas held, then lower price.
type SpreadKey = (i64, usize, std::cmp::Reverse<i64>);

/// Places inference replicas. With `spread`, each replica goes to the best (member, node); among
/// equally good sets, to the member holding fewer replicas of this job (`existing`: member → count);
/// without it, all go to `pinned` (if set) or to the one member that fits the most of them.
/// Returns the placements and the reasons for replicas left unplaced.
pub fn place_replicas(
    cands: &[ClusterCandidate],
    req: &JobRequest,
    indexes: &[i32],
    spread: bool,
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
    if !spread {
        // One member: the one that fits the most replicas (then score, price, name).
        let mut best: Option<(usize, ClusterChoice, Option<i64>)> = None;
        let mut reasons = Vec::new();
        for c in &eligible {
            let mut n = indexes.len();
            let choice = loop {
                match fit_all(c, req, &indexes[..n]) {
                    Ok(ch) => break Some(ch),
                    Err(e) => {
                        if n == indexes.len() {
                            reasons.push(e);
                        }
                        if n == 0 {
                            break None;
                        }
                        n -= 1;
                    }
                }
            };
            if let Some(ch) = choice
                && n > 0
                && best.as_ref().is_none_or(|(bn, b, bp)| {
                    n > *bn || (n == *bn && better_choice(&ch, c.price, b, *bp))
                })
            {
                best = Some((n, ch, c.price));
            }
        }
        return match best {
            Some((_, ch, _)) => {
                let placed = ch
                    .pods
                    .iter()
                    .map(|p| (ch.cluster.clone(), p.clone()))
                    .collect::<Vec<_>>();
                let left = if placed.len() < indexes.len() {
                    reasons
                } else {
                    Vec::new()
                };
                (placed, left)
            }
            None => (Vec::new(), reasons),
        };
    }
    let mut free: Vec<Vec<GpuSet>> = eligible
        .iter()
        .map(|c| c.nodes.iter().map(|n| n.free).collect())
        .collect();
    let mut count: BTreeMap<String, usize> = existing.clone();
    let mut out = Vec::new();
    let mut reasons = Vec::new();
    for &ix in indexes {
        let mut best: Option<(usize, usize, PodPlacement, GpuSet, SpreadKey)> = None;
        let mut why = Vec::new();
        for (ci, c) in eligible.iter().enumerate() {
            if let Some((ni, p, set)) = best_node(c, &free[ci], req, ix, &mut why) {
                let held = *count.get(&c.name).unwrap_or(&0);
                // Best GPU set first; among equals the member holding fewer replicas of this job
                // (spreading), then the cheaper one.
                let key = (
                    p.score,
                    usize::MAX - held,
                    std::cmp::Reverse(c.price.unwrap_or(0)),
                );
                if best.as_ref().is_none_or(|b| key > b.4) {
                    best = Some((ci, ni, p, set, key));
                }
            }
        }
        match best {
            Some((ci, ni, p, set, _)) => {
                free[ci][ni] = free[ci][ni].minus(set);
                *count.entry(eligible[ci].name.clone()).or_default() += 1;
                out.push((eligible[ci].name.clone(), p));
            }
            None => reasons.push(format!(
                "replica {ix}: {}",
                if why.is_empty() {
                    "no GPU nodes".into()
                } else {
                    why.join(", ")
                }
            )),
        }
    }
    (out, reasons)
}
