//! The NVLink-aware GPU allocator: which free GPUs of one node a worker gets.
//!
//! # Objective
//!
//! For a candidate set `S` of the free GPUs `F` (remainder `R = F \ S`):
//!
//! ```text
//! score(S) = quality(S) − fragmentation(S)                       (Preferred, Required)
//! score(S) = quality(S) − 2 × fragmentation(S)                   (None)
//! quality(S) = mean pair quality q over the pairs of S            (0 for one GPU)
//! fragmentation(S) = 8 × (C(F) − C(R)) + loss(R) / 2
//!   C(X)    = Σ over the node's maximal NVLink cliques K of |K ∩ X|²
//!   loss(R) = Σ over g in R of (best q of g within F) − (best q of g within R)
//! ```
//!
//! `q` is the pair quality of [`crate::topology`] (≈ bidirectional NVLink GB/s, plus 1–6 for PCIe
//! proximity), so `quality` reads as "GB/s between any two GPUs of the set, on average": 900+ for
//! H100 on NVSwitch, ≈ 600 for a bridged A100 pair, 50–105 for DGX-1 V100 NVLink pairs, 1–6 for
//! PCIe-only sets. `fragmentation` is in the same unit: the clique term is convex, so taking GPUs
//! from a small NVLink island costs less than carving up a large one (a 2-GPU request leaves a
//! free 4-GPU quad alone when a free NVLink pair exists elsewhere), and the partner term charges
//! for leaving GPUs without their best NVLink peer. This is go-gpuallocator's "score the whole
//! partition" idea reduced to one cheap look at the remainder.
//!
//! Scores of different nodes for the same request compare directly: higher is better. They can
//! be negative (a one-GPU request has quality 0 and only pays for fragmentation).
//!
//! # Search
//!
//! Exact: all `C(|F|, count)` subsets (in lexicographic order, so ties go to the lowest indexes)
//! when there are at most [`EXACT_LIMIT`] of them (every node of ≤ 16 GPUs), otherwise a greedy
//! grow from every seed followed by swap improvement. [`exhaustive_best`] is the reference
//! optimum of `quality` alone, for tests and the benchmark.

use crate::api::{GpuTopology, NvLinkMode};
use crate::topology::{GpuGraph, GpuSet};
use std::fmt;

/// Largest number of candidate sets searched exactly (C(16, 8) = 12 870 fits).
pub const EXACT_LIMIT: u128 = 20_000;
/// Weight of the clique term, quality units per GPU².
pub const CLIQUE_WEIGHT: i64 = 8;

/// What a worker needs on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuRequest {
    /// Number of GPUs.
    pub count: usize,
    /// How strongly the GPUs must be NVLink-connected.
    pub nvlink: NvLinkMode,
}

impl GpuRequest {
    /// `count` GPUs with the given NVLink mode.
    pub fn new(count: usize, nvlink: NvLinkMode) -> Self {
        GpuRequest { count, nvlink }
    }
}

/// The GPUs chosen on one node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Allocation {
    /// GPU indexes, ascending.
    pub gpus: Vec<usize>,
    /// The same GPUs as a set.
    pub set: GpuSet,
    /// NVML UUIDs, in the order of `gpus`.
    pub uuids: Vec<String>,
    /// Node-ranking score: `quality − fragmentation` (module docs); higher is better.
    pub score: i64,
    /// Mean pair quality of the set (0 for one GPU).
    pub quality: i64,
    /// Sum of pair qualities (the objective [`exhaustive_best`] maximises).
    pub set_quality: i64,
    /// Weakest pair of the set (0 for one GPU).
    pub min_pair_quality: i64,
    /// Quality lost by the GPUs left free.
    pub fragmentation: i64,
    /// Every pair of the set is NVLink-connected.
    pub nvlink_connected: bool,
    /// Largest pairwise NVLink-connected set still free afterwards.
    pub largest_free_nvlink_set_after: usize,
}

/// No acceptable set exists on this node.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NoFit {
    /// Why, for people (conditions, events).
    pub reason: String,
}

impl fmt::Display for NoFit {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.reason)
    }
}

impl std::error::Error for NoFit {}

fn no_fit(reason: String) -> NoFit {
    NoFit { reason }
}

fn pairs(k: usize) -> i64 {
    (k * k.saturating_sub(1) / 2) as i64
}

fn binomial(n: usize, k: usize) -> u128 {
    if k > n {
        return 0;
    }
    let k = k.min(n - k);
    let mut r: u128 = 1;
    for i in 0..k {
        r = r * (n - i) as u128 / (i + 1) as u128;
    }
    r
}

/// Precomputed per-call state: the free set and what its GPUs have before allocation.
pub(crate) struct Ctx<'a> {
    g: &'a GpuGraph,
    free: GpuSet,
    clique_before: i64,
    best_before: Vec<i64>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(g: &'a GpuGraph, free: GpuSet) -> Self {
        let free = free.and(g.all());
        let best_before = (0..g.len())
            .map(|i| {
                if free.contains(i) {
                    g.best_partner_quality(i, free.minus(GpuSet::from_indexes([i])))
                } else {
                    0
                }
            })
            .collect();
        Ctx {
            g,
            free,
            clique_before: clique_potential(g, free),
            best_before,
        }
    }

    fn fragmentation(&self, set: GpuSet) -> i64 {
        let rest = self.free.minus(set);
        let dc = self.clique_before - clique_potential(self.g, rest);
        let mut loss = 0;
        for r in rest.iter() {
            loss += self.best_before[r]
                - self
                    .g
                    .best_partner_quality(r, rest.minus(GpuSet::from_indexes([r])));
        }
        CLIQUE_WEIGHT * dc + loss / 2
    }

    /// Exact comparison key: `set_quality − npairs × weight × fragmentation` (= npairs × score).
    fn key(&self, set: GpuSet, set_quality: i64, mode: NvLinkMode) -> i64 {
        let np = pairs(set.len()).max(1);
        let w = if mode == NvLinkMode::None { 2 } else { 1 };
        set_quality - np * w * self.fragmentation(set)
    }

    pub(crate) fn build(&self, set: GpuSet, mode: NvLinkMode) -> Allocation {
        let g = self.g;
        let set_quality = g.set_quality(set);
        let np = pairs(set.len());
        let frag = self.fragmentation(set);
        let w = if mode == NvLinkMode::None { 2 } else { 1 };
        let quality = if np > 0 { set_quality / np } else { 0 };
        Allocation {
            gpus: set.to_vec(),
            set,
            uuids: g.uuids(set),
            score: quality - w * frag,
            quality,
            set_quality,
            min_pair_quality: g.min_pair_quality(set),
            fragmentation: frag,
            nvlink_connected: g.is_nvlink_clique(set),
            largest_free_nvlink_set_after: g.largest_free_nvlink_clique(self.free.minus(set)),
        }
    }
}

fn clique_potential(g: &GpuGraph, x: GpuSet) -> i64 {
    g.nvlink_cliques()
        .iter()
        .map(|k| (k.and(x).len() * k.and(x).len()) as i64)
        .sum()
}

/// Checks that `req` can be met at all on `free`; the reason when not.
fn precheck(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<(), NoFit> {
    let n = g.len();
    let nf = free.len();
    if req.count == 0 {
        return Err(no_fit("the request asks for 0 GPUs".into()));
    }
    if req.count > n {
        return Err(no_fit(format!(
            "node {} has {n} GPUs; the request needs {}",
            g.node_name(),
            req.count
        )));
    }
    if req.count > nf {
        return Err(no_fit(format!(
            "only {nf} of {n} GPUs are free on node {}; the request needs {}",
            g.node_name(),
            req.count
        )));
    }
    if req.nvlink == NvLinkMode::Required && req.count > 1 {
        if !g.has_nvlink() {
            return Err(no_fit(format!(
                "node {} has no NVLink (PCIe only); the request needs {} NVLink-connected GPUs",
                g.node_name(),
                req.count
            )));
        }
        let biggest = g.largest_free_nvlink_clique(free);
        if biggest < req.count {
            let whole = g.largest_free_nvlink_clique(g.all());
            let why = if whole < req.count {
                format!("the node's largest NVLink-connected GPU set has {whole} GPUs")
            } else {
                format!(
                    "the largest free NVLink-connected set has {biggest} GPUs ({nf} of {n} free; free NVLink islands {:?})",
                    g.free_nvlink_island_sizes(free)
                )
            };
            return Err(no_fit(format!(
                "no {} free GPUs on node {} are all NVLink-connected: {why}",
                req.count,
                g.node_name()
            )));
        }
    }
    Ok(())
}

/// Visits every `k`-subset of `free` (lexicographic by index) that satisfies the NVLink rule,
/// with its sum of pair qualities.
fn for_each_subset(
    g: &GpuGraph,
    free: GpuSet,
    k: usize,
    required: bool,
    mut visit: impl FnMut(GpuSet, i64),
) {
    let list = free.to_vec();
    #[allow(clippy::too_many_arguments)]
    fn rec(
        g: &GpuGraph,
        list: &[usize],
        start: usize,
        k: usize,
        chosen: &mut Vec<usize>,
        set: GpuSet,
        sum: i64,
        allowed: GpuSet,
        required: bool,
        visit: &mut dyn FnMut(GpuSet, i64),
    ) {
        if chosen.len() == k {
            visit(set, sum);
            return;
        }
        let need = k - chosen.len();
        for idx in start..list.len() {
            if list.len() - idx < need {
                break;
            }
            let c = list[idx];
            if required && !allowed.contains(c) {
                continue;
            }
            let add: i64 = chosen.iter().map(|&p| g.pair_quality(p, c)).sum();
            let next_allowed = if required {
                allowed.and(g.nvlink_neighbours(c))
            } else {
                allowed
            };
            if required && next_allowed.len() < need - 1 {
                continue;
            }
            chosen.push(c);
            let mut s2 = set;
            s2.insert(c);
            rec(
                g,
                list,
                idx + 1,
                k,
                chosen,
                s2,
                sum + add,
                next_allowed,
                required,
                visit,
            );
            chosen.pop();
        }
    }
    let mut chosen = Vec::with_capacity(k);
    rec(
        g,
        &list,
        0,
        k,
        &mut chosen,
        GpuSet::EMPTY,
        0,
        free,
        required,
        &mut visit,
    );
}

/// Picks the GPUs for `req` among `free` on the node `g` (module docs). Deterministic.
pub fn allocate(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Allocation, NoFit> {
    let free = free.and(g.all());
    precheck(g, free, req)?;
    let ctx = Ctx::new(g, free);
    let required = req.nvlink == NvLinkMode::Required;
    let mut best: Option<(i64, GpuSet)> = None;
    if binomial(free.len(), req.count) <= EXACT_LIMIT {
        for_each_subset(g, free, req.count, required, |set, sq| {
            let key = ctx.key(set, sq, req.nvlink);
            if best.is_none_or(|(b, _)| key > b) {
                best = Some((key, set));
            }
        });
    } else {
        best = heuristic(&ctx, req);
    }
    match best {
        Some((_, set)) => Ok(ctx.build(set, req.nvlink)),
        None => Err(no_fit(format!(
            "no {} free GPUs on node {} are all NVLink-connected (free NVLink islands {:?})",
            req.count,
            g.node_name(),
            g.free_nvlink_island_sizes(free)
        ))),
    }
}

/// Greedy grow from every free seed, then first-improvement swaps; for very large nodes only.
fn heuristic(ctx: &Ctx<'_>, req: &GpuRequest) -> Option<(i64, GpuSet)> {
    let g = ctx.g;
    let required = req.nvlink == NvLinkMode::Required;
    let ok = |s: GpuSet| !required || g.is_nvlink_clique(s);
    let eval = |s: GpuSet| ctx.key(s, g.set_quality(s), req.nvlink);
    let mut best: Option<(i64, GpuSet)> = None;
    for seed in ctx.free.iter() {
        let mut set = GpuSet::from_indexes([seed]);
        while set.len() < req.count {
            let pick = ctx
                .free
                .minus(set)
                .iter()
                .filter(|&c| !required || set.is_subset(g.nvlink_neighbours(c)))
                .max_by_key(|&c| {
                    (
                        set.iter().map(|p| g.pair_quality(p, c)).sum::<i64>(),
                        std::cmp::Reverse(c),
                    )
                });
            match pick {
                Some(c) => set.insert(c),
                None => break,
            }
        }
        if set.len() < req.count {
            continue;
        }
        let mut key = eval(set);
        for _ in 0..64 {
            let mut improved = false;
            'outer: for out in set.iter() {
                for inn in ctx.free.minus(set).iter() {
                    let mut cand = set;
                    cand.remove(out);
                    cand.insert(inn);
                    if ok(cand) {
                        let k2 = eval(cand);
                        if k2 > key {
                            set = cand;
                            key = k2;
                            improved = true;
                            break 'outer;
                        }
                    }
                }
            }
            if !improved {
                break;
            }
        }
        if best.is_none_or(|(b, bs)| key > b || (key == b && set.to_vec() < bs.to_vec())) {
            best = Some((key, set));
        }
    }
    best
}

/// The reference optimum: the acceptable set with the highest sum of pair qualities (ties to the
/// lowest indexes), found by trying every subset. Ignores fragmentation. Exponential: for tests
/// and benchmarks on nodes of up to ~20 GPUs.
pub fn exhaustive_best(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Allocation, NoFit> {
    let free = free.and(g.all());
    precheck(g, free, req)?;
    let required = req.nvlink == NvLinkMode::Required;
    let mut best: Option<(i64, GpuSet)> = None;
    for_each_subset(g, free, req.count, required, |set, sq| {
        if best.is_none_or(|(b, _)| sq > b) {
            best = Some((sq, set));
        }
    });
    let ctx = Ctx::new(g, free);
    best.map(|(_, s)| ctx.build(s, req.nvlink)).ok_or_else(|| {
        no_fit(format!(
            "no {} free GPUs on node {} are all NVLink-connected",
            req.count,
            g.node_name()
        ))
    })
}

/// [`allocate`] on a published `GpuTopology`: the free GPUs are those not listed in
/// `status.gpusInUse`. An invalid topology is reported as a `NoFit`.
pub fn allocate_on(topology: &GpuTopology, req: &GpuRequest) -> Result<Allocation, NoFit> {
    let g = GpuGraph::from_spec(&topology.spec)
        .map_err(|e| no_fit(format!("invalid GPU topology: {e}")))?;
    let in_use: &[String] = topology
        .status
        .as_ref()
        .map_or(&[], |s| s.gpus_in_use.as_slice());
    allocate(&g, g.free_set(in_use), req)
}

#[cfg(test)]
#[path = "allocator_tests.rs"]
mod tests;
