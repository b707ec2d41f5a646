//! The NVLink-aware GPU allocator: which free GPUs of one node a worker gets.
//!
//! # Objective
//!
//! For a candidate set `S` of the free GPUs `F` (remainder `R = F \ S`):
//!
//! ```text
//! score(S) = quality(S) − fragmentation(S)                      (clique, ring, preferred)
//! score(S) = quality(S) − 2 × fragmentation(S)                  (none)
//! quality(S) = (mean pair quality of S + ring bottleneck of S) / 2      (0 for one GPU)
//! fragmentation(S) = 0 when R is empty, otherwise
//!                    u × (C(F) − C(R) + 2 × (L(F) − L(R))) + loss(R) / 2
//!   u       = the node's weakest NVLink pair quality / 6 (its own unit of one NVLink hop)
//!   C(X)    = Σ over the node's maximal NVLink cliques K of |K ∩ X|²
//!   L(X)    = size of the largest NVLink clique inside X
//!   loss(R) = Σ over g in R of (best NVLink bandwidth of g within F) − (… within R)
//! ```
//!
//! `q` is the pair quality of [`crate::topology`] (≈ bidirectional NVLink GB/s, plus 1–6 for PCIe
//! proximity). The *ring bottleneck* is the best weakest hop over all cycles through the set —
//! what NCCL's ring all-reduce runs at — so a set with one PCIe hop in its only ring loses to an
//! all-NVLink ring even when its mean pair quality is higher. `fragmentation` is measured in the
//! node's own NVLink unit, so it weighs the same against quality on a DGX-1 (NV1 ≈ 50) as on an
//! H100 NVSwitch node (≈ 900), and is 0 on PCIe-only nodes (no NVLink to fragment) and whenever
//! the request takes every free GPU. The clique term is convex (carving a small island costs less
//! than a large one), the `L` term keeps the largest free NVLink clique whole when it can, and
//! the partner term charges for leaving GPUs without their best NVLink peer.
//!
//! Scores rank sets *within* a node. Which node gets the pod is decided by best fit in
//! [`super::scheduler`], from the other fields of [`Allocation`].
//!
//! # Modes
//!
//! `clique`: every pair NVLink-connected. `ring`: an all-NVLink Hamiltonian cycle through the set
//! exists (two GPUs: NVLink-connected). `preferred`: any set, but one with an all-NVLink ring
//! whenever the free GPUs have one (then the best score within that class). `none`: any set,
//! the pool's NVLink structure protected more.
//!
//! # Search and cost
//!
//! Exact: all `C(|F|, count)` subsets (lexicographic, so ties go to the lowest indexes) when there
//! are at most [`EXACT_LIMIT`] of them (every node of ≤ 16 GPUs), otherwise a greedy grow from
//! every seed followed by swap improvement. Answers are memoized per (topology shape, free mask,
//! count, mode): every node of one shape shares them, so visiting a node is a table look-up
//! after the first time a free mask is seen (an 8-GPU shape has 256 masks).
//! [`exhaustive_best`] is the reference optimum of `Σ q` alone, for tests and the benchmark.

use crate::api::{GpuTopology, NvLinkMode};
use crate::topology::{GpuGraph, GpuSet, pcie_points};
use std::collections::HashMap;
use std::fmt;
use std::sync::{LazyLock, Mutex};

/// Largest number of candidate sets searched exactly (C(16, 8) = 12 870 fits).
pub const EXACT_LIMIT: u128 = 20_000;
/// Divisor of the node's weakest NVLink pair quality giving the fragmentation unit `u`
/// (a DGX-1 V100: 51 / 6 = 8).
pub const UNIT_DIVISOR: i64 = 6;
/// Memoized answers kept before the table is cleared (≈ 100 bytes each).
pub const MEMO_CAPACITY: usize = 1 << 20;
/// Work the heuristic search of a large node may do, in elementary steps: scoring a set walks
/// every maximal NVLink clique of the node twice and finds its ring bottleneck (a few
/// Hamiltonian-cycle tests by dynamic programming over the set's subsets, `k · 2^(k-1)` steps
/// each); an NVLink-ring admission test is one such test. A real node spends a small fraction
/// of it; a pathological one (tens of thousands of cliques, or 16-GPU rings on a dense graph)
/// keeps the best set found when it is spent instead of stalling the loop. Counted, not timed,
/// so the answer stays deterministic. At least one greedy set is always completed and scored.
pub const HEURISTIC_WORK: usize = 50_000_000;

/// Steps of one Hamiltonian-cycle test on `k` GPUs (see [`HEURISTIC_WORK`]).
fn ring_test_steps(k: usize) -> usize {
    if k <= 3 {
        k * k
    } else {
        k.saturating_mul(1usize << (k.min(40) - 1))
    }
}

/// What a worker needs on one node.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct GpuRequest {
    /// Number of GPUs.
    pub count: usize,
    /// How strongly the GPUs must be NVLink-connected.
    pub nvlink: NvLinkMode,
    /// Smallest acceptable ring bottleneck (pair-quality units ≈ GB/s); 0 for no minimum.
    /// Applies to two GPUs or more.
    pub min_link: i64,
}

impl GpuRequest {
    /// `count` GPUs with the given NVLink mode.
    pub fn new(count: usize, nvlink: NvLinkMode) -> Self {
        GpuRequest {
            count,
            nvlink,
            min_link: 0,
        }
    }

    /// The same request, refusing sets whose ring bottleneck is below `gbps` (`gpu.minLinkGBps`).
    pub fn with_min_link(mut self, gbps: i64) -> Self {
        self.min_link = gbps.max(0);
        self
    }

    /// The minimum that applies (none for one GPU).
    fn link_floor(&self) -> i64 {
        if self.count > 1 { self.min_link } else { 0 }
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
    /// Within-node score: `quality − fragmentation` (module docs); higher is better.
    pub score: i64,
    /// `(mean pair quality + ring bottleneck) / 2` (0 for one GPU).
    pub quality: i64,
    /// Sum of pair qualities (the objective [`exhaustive_best`] maximises).
    pub set_quality: i64,
    /// Weakest pair of the set (0 for one GPU).
    pub min_pair_quality: i64,
    /// Best weakest hop over the cycles through the set (pair quality for two GPUs, 0 for one).
    pub ring_bottleneck: i64,
    /// Quality lost by the GPUs left free, in the node's NVLink unit (0 if none are left).
    pub fragmentation: i64,
    /// Every pair of the set is NVLink-connected.
    pub nvlink_connected: bool,
    /// An all-NVLink cycle runs through the set (true for one GPU).
    pub nvlink_ring: bool,
    /// GPUs free on the node before the allocation.
    pub free_before: usize,
    /// GPUs the node has.
    pub node_gpus: usize,
    /// Largest pairwise NVLink-connected set free before.
    pub largest_free_nvlink_set_before: usize,
    /// Largest pairwise NVLink-connected set still free afterwards.
    pub largest_free_nvlink_set_after: usize,
}

impl Allocation {
    /// GPUs the node has left free afterwards.
    pub fn free_after(&self) -> usize {
        self.free_before - self.gpus.len()
    }
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

/// Why nothing fits, without the node's name (memoized per shape; named when reported).
#[derive(Clone, Debug, PartialEq, Eq)]
enum Refusal {
    ZeroCount,
    NodeTooSmall {
        n: usize,
        count: usize,
    },
    TooFewFree {
        nf: usize,
        n: usize,
        count: usize,
    },
    NoNvlink {
        count: usize,
    },
    CliqueTooSmall {
        count: usize,
        whole: usize,
    },
    FreeCliqueTooSmall {
        count: usize,
        biggest: usize,
        nf: usize,
        n: usize,
        islands: Vec<usize>,
    },
    RingTooSmall {
        count: usize,
        whole: usize,
    },
    NoFreeRing {
        count: usize,
        nf: usize,
        n: usize,
        islands: Vec<usize>,
    },
    LinksTooSlow {
        min: i64,
        fastest: i64,
    },
    NoFastRing {
        count: usize,
        min: i64,
        best: i64,
        nf: usize,
        n: usize,
    },
}

impl Refusal {
    fn message(&self, node: &str) -> String {
        match self {
            Refusal::ZeroCount => "the request asks for 0 GPUs".into(),
            Refusal::NodeTooSmall { n, count } => {
                format!("node {node} has {n} GPUs; the request needs {count}")
            }
            Refusal::TooFewFree { nf, n, count } => {
                format!("only {nf} of {n} GPUs are free on node {node}; the request needs {count}")
            }
            Refusal::NoNvlink { count } => format!(
                "node {node} has no NVLink (PCIe only); the request needs {count} NVLink-connected GPUs"
            ),
            Refusal::CliqueTooSmall { count, whole } => format!(
                "no {count} free GPUs on node {node} are all NVLink-connected: the node's largest NVLink-connected GPU set has {whole} GPUs"
            ),
            Refusal::FreeCliqueTooSmall {
                count,
                biggest,
                nf,
                n,
                islands,
            } => format!(
                "no {count} free GPUs on node {node} are all NVLink-connected: the largest free NVLink-connected set has {biggest} GPUs ({nf} of {n} free; free NVLink islands {islands:?})"
            ),
            Refusal::RingTooSmall { count, whole } => format!(
                "no {count} GPUs on node {node} form an all-NVLink ring: the node's largest NVLink-connected group has {whole} GPUs"
            ),
            Refusal::NoFreeRing {
                count,
                nf,
                n,
                islands,
            } => format!(
                "no {count} free GPUs on node {node} form an all-NVLink ring ({nf} of {n} free; free NVLink islands {islands:?})"
            ),
            Refusal::LinksTooSlow { min, fastest } => format!(
                "no link between free GPUs on node {node} reaches gpu.minLinkGBps {min} (the fastest reaches {fastest} GB/s)"
            ),
            Refusal::NoFastRing {
                count,
                min,
                best,
                nf,
                n,
            } => {
                let best = if *best > 0 {
                    format!("the best ring of the others reaches {best} GB/s; ")
                } else {
                    String::new()
                };
                format!(
                    "no {count} free GPUs on node {node} form a ring whose every hop reaches gpu.minLinkGBps {min} ({best}{nf} of {n} GPUs free)"
                )
            }
        }
    }
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

fn mode_weight(mode: NvLinkMode) -> i64 {
    if mode == NvLinkMode::None { 2 } else { 1 }
}

/// Precomputed per-call state: the free set and what its GPUs have before allocation.
pub(crate) struct Ctx<'a> {
    g: &'a GpuGraph,
    free: GpuSet,
    unit: i64,
    clique_before: i64,
    largest_before: usize,
    best_before: Vec<i64>,
}

impl<'a> Ctx<'a> {
    pub(crate) fn new(g: &'a GpuGraph, free: GpuSet) -> Self {
        let free = free.and(g.all());
        let best_before = (0..g.len())
            .map(|i| {
                if free.contains(i) {
                    best_nvlink_partner(g, i, free)
                } else {
                    0
                }
            })
            .collect();
        Ctx {
            g,
            free,
            unit: (g.min_nvlink_quality().unwrap_or(0) / UNIT_DIVISOR).max(1),
            clique_before: clique_potential(g, free),
            largest_before: g.largest_free_nvlink_clique(free),
            best_before,
        }
    }

    fn fragmentation(&self, set: GpuSet) -> i64 {
        let rest = self.free.minus(set);
        if rest.is_empty() {
            return 0;
        }
        let dc = self.clique_before - clique_potential(self.g, rest);
        let dl = (self.largest_before - self.g.largest_free_nvlink_clique(rest)) as i64;
        let mut loss = 0;
        for r in rest.iter() {
            loss += self.best_before[r] - best_nvlink_partner(self.g, r, rest);
        }
        self.unit * (dc + 2 * dl) + loss / 2
    }

    /// Exact comparison key, `2 × npairs × score`:
    /// `set_quality + npairs × bottleneck − 2 × npairs × weight × fragmentation`.
    fn key(&self, set: GpuSet, set_quality: i64, mode: NvLinkMode) -> i64 {
        let np = pairs(set.len());
        self.key_without_bottleneck(set, set_quality, mode) + np * self.g.ring_bottleneck(set)
    }

    /// [`key`](Self::key) less its `npairs × bottleneck` term.
    fn key_without_bottleneck(&self, set: GpuSet, set_quality: i64, mode: NvLinkMode) -> i64 {
        let np = pairs(set.len());
        set_quality - 2 * np.max(1) * mode_weight(mode) * self.fragmentation(set)
    }

    fn scored(&self, set: GpuSet, mode: NvLinkMode) -> Scored {
        let g = self.g;
        let set_quality = g.set_quality(set);
        let np = pairs(set.len());
        let frag = self.fragmentation(set);
        let bottleneck = g.ring_bottleneck(set);
        let quality = if np > 0 {
            (set_quality / np + bottleneck) / 2
        } else {
            0
        };
        Scored {
            set,
            score: quality - mode_weight(mode) * frag,
            quality,
            set_quality,
            min_pair_quality: g.min_pair_quality(set),
            ring_bottleneck: bottleneck,
            fragmentation: frag,
            nvlink_connected: g.is_nvlink_clique(set),
            nvlink_ring: g.has_nvlink_ring(set),
            free_before: self.free.len(),
            largest_before: self.largest_before,
            largest_after: g.largest_free_nvlink_clique(self.free.minus(set)),
        }
    }

    pub(crate) fn build(&self, set: GpuSet, mode: NvLinkMode) -> Allocation {
        self.scored(set, mode).into_allocation(self.g)
    }
}

/// The node-independent part of an [`Allocation`] (what the memo keeps).
#[derive(Clone, Debug)]
struct Scored {
    set: GpuSet,
    score: i64,
    quality: i64,
    set_quality: i64,
    min_pair_quality: i64,
    ring_bottleneck: i64,
    fragmentation: i64,
    nvlink_connected: bool,
    nvlink_ring: bool,
    free_before: usize,
    largest_before: usize,
    largest_after: usize,
}

impl Scored {
    fn into_allocation(self, g: &GpuGraph) -> Allocation {
        let uuids = g.uuids(self.set);
        Allocation {
            uuids,
            ..self.into_anonymous_allocation(g.len())
        }
    }

    fn into_anonymous_allocation(self, node_gpus: usize) -> Allocation {
        Allocation {
            gpus: self.set.to_vec(),
            set: self.set,
            uuids: Vec::new(),
            score: self.score,
            quality: self.quality,
            set_quality: self.set_quality,
            min_pair_quality: self.min_pair_quality,
            ring_bottleneck: self.ring_bottleneck,
            fragmentation: self.fragmentation,
            nvlink_connected: self.nvlink_connected,
            nvlink_ring: self.nvlink_ring,
            free_before: self.free_before,
            node_gpus,
            largest_free_nvlink_set_before: self.largest_before,
            largest_free_nvlink_set_after: self.largest_after,
        }
    }
}

/// Best NVLink bandwidth of `gpu` to another GPU of `within` (the NVLink part of the pair
/// quality, without the PCIe proximity points; 0 if none). PCIe proximity is not worth
/// protecting in a remainder — trading it against the set's own quality split 3-GPU sets across
/// NUMA nodes to keep 1–2 points of leftover proximity — NVLink is.
fn best_nvlink_partner(g: &GpuGraph, gpu: usize, within: GpuSet) -> i64 {
    g.nvlink_neighbours(gpu)
        .and(within)
        .iter()
        .map(|h| g.pair_quality(gpu, h) - pcie_points(g.link(gpu, h).pcie))
        .max()
        .unwrap_or(0)
}

fn clique_potential(g: &GpuGraph, x: GpuSet) -> i64 {
    g.nvlink_cliques()
        .iter()
        .map(|k| (k.and(x).len() * k.and(x).len()) as i64)
        .sum()
}

/// Largest NVLink-connected group (connected component) among `free`.
fn largest_free_island(g: &GpuGraph, free: GpuSet) -> usize {
    g.free_nvlink_islands(free).first().map_or(0, |s| s.len())
}

/// Checks that `req` can be met at all on `free`; the reason when not.
fn precheck(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<(), Refusal> {
    let n = g.len();
    let nf = free.len();
    let count = req.count;
    if count == 0 {
        return Err(Refusal::ZeroCount);
    }
    if count > n {
        return Err(Refusal::NodeTooSmall { n, count });
    }
    if count > nf {
        return Err(Refusal::TooFewFree { nf, n, count });
    }
    if req.nvlink.is_hard() && count > 1 && !g.has_nvlink() {
        return Err(Refusal::NoNvlink { count });
    }
    let min = req.link_floor();
    if min > 0 {
        let fastest = g.max_pair_quality(free);
        if fastest < min {
            return Err(Refusal::LinksTooSlow { min, fastest });
        }
    }
    let islands = || g.free_nvlink_island_sizes(free);
    match req.nvlink {
        NvLinkMode::Clique if count > 1 => {
            let biggest = g.largest_free_nvlink_clique(free);
            if biggest < count {
                let whole = g.largest_free_nvlink_clique(g.all());
                return Err(if whole < count {
                    Refusal::CliqueTooSmall { count, whole }
                } else {
                    Refusal::FreeCliqueTooSmall {
                        count,
                        biggest,
                        nf,
                        n,
                        islands: islands(),
                    }
                });
            }
        }
        NvLinkMode::Ring if count > 1 => {
            let whole = largest_free_island(g, g.all());
            if whole < count {
                return Err(Refusal::RingTooSmall { count, whole });
            }
            if largest_free_island(g, free) < count {
                return Err(Refusal::NoFreeRing {
                    count,
                    nf,
                    n,
                    islands: islands(),
                });
            }
        }
        _ => {}
    }
    Ok(())
}

/// Visits every `k`-subset of `free` (lexicographic by index) that can satisfy the mode, with
/// its sum of pair qualities. `clique` is enforced while growing; `ring` is checked on complete
/// sets (growing only prunes GPUs without any free NVLink peer).
fn for_each_subset(
    g: &GpuGraph,
    free: GpuSet,
    k: usize,
    mode: NvLinkMode,
    mut visit: impl FnMut(GpuSet, i64),
) {
    let clique = mode == NvLinkMode::Clique && k > 1;
    let ring = mode == NvLinkMode::Ring && k > 1;
    let free = if ring {
        // A ring member needs an NVLink peer in the set (two of them for k ≥ 3).
        let need = if k >= 3 { 2 } else { 1 };
        GpuSet::from_indexes(
            free.iter()
                .filter(|&i| g.nvlink_neighbours(i).and(free).len() >= need),
        )
    } else {
        free
    };
    let list = free.to_vec();
    struct Walk<'a> {
        g: &'a GpuGraph,
        list: &'a [usize],
        k: usize,
        clique: bool,
        ring: bool,
        chosen: Vec<usize>,
    }
    fn rec(
        w: &mut Walk<'_>,
        start: usize,
        set: GpuSet,
        sum: i64,
        allowed: GpuSet,
        visit: &mut dyn FnMut(GpuSet, i64),
    ) {
        if w.chosen.len() == w.k {
            if !w.ring || w.g.has_nvlink_ring(set) {
                visit(set, sum);
            }
            return;
        }
        let need = w.k - w.chosen.len();
        for idx in start..w.list.len() {
            if w.list.len() - idx < need {
                break;
            }
            let c = w.list[idx];
            if w.clique && !allowed.contains(c) {
                continue;
            }
            let add: i64 = w.chosen.iter().map(|&p| w.g.pair_quality(p, c)).sum();
            let next_allowed = if w.clique {
                allowed.and(w.g.nvlink_neighbours(c))
            } else {
                allowed
            };
            if w.clique && next_allowed.len() < need - 1 {
                continue;
            }
            w.chosen.push(c);
            let mut s2 = set;
            s2.insert(c);
            rec(w, idx + 1, s2, sum + add, next_allowed, visit);
            w.chosen.pop();
        }
    }
    let mut w = Walk {
        g,
        list: &list,
        k,
        clique,
        ring,
        chosen: Vec::with_capacity(k),
    };
    rec(&mut w, 0, GpuSet::EMPTY, 0, free, &mut visit);
}

/// Memo key: (shape id, free mask, count, mode, minimum ring bottleneck).
type MemoKey = (u64, u64, usize, NvLinkMode, i64);

static MEMO: LazyLock<Mutex<HashMap<MemoKey, Result<Scored, Refusal>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// Nodes of at most this many GPUs get every free mask answered at once, the first time a
/// request (count, mode, minimum bottleneck) is asked of their shape: 2^10 masks, each an exact
/// search of at most C(10, 5) = 252 sets. Afterwards every node of the shape is a look-up,
/// whatever its free GPUs.
pub const PRECOMPUTE_MAX_GPUS: usize = 10;

/// Why nothing fits on a node, without the node's name ([`Refused::message`] names it).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Refused(Refusal);

impl Refused {
    /// The reason, for people, naming `node`.
    pub fn message(&self, node: &str) -> String {
        self.0.message(node)
    }
}

/// The memoized answer for `free` (already within the node's GPUs); on a miss on a node of at
/// most [`PRECOMPUTE_MAX_GPUS`] GPUs every free mask of the shape is answered.
fn answer(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Scored, Refusal> {
    let key = |mask: u64| (g.shape_id(), mask, req.count, req.nvlink, req.link_floor());
    let hit = MEMO
        .lock()
        .unwrap_or_else(|e| e.into_inner())
        .get(&key(free.0))
        .cloned();
    if let Some(a) = hit {
        return a;
    }
    let masks: Vec<u64> = if g.len() <= PRECOMPUTE_MAX_GPUS {
        (0..=g.all().0).collect()
    } else {
        vec![free.0]
    };
    let answers: Vec<(MemoKey, Result<Scored, Refusal>)> = masks
        .into_iter()
        .map(|m| (key(m), search(g, GpuSet(m), req)))
        .collect();
    let mut memo = MEMO.lock().unwrap_or_else(|e| e.into_inner());
    if memo.len() + answers.len() > MEMO_CAPACITY {
        memo.clear();
    }
    let mut mine = None;
    for (k, a) in answers {
        if k.1 == free.0 {
            mine = Some(a.clone());
        }
        memo.insert(k, a);
    }
    mine.expect("the asked mask is among those answered")
}

/// Picks the GPUs for `req` among `free` on the node `g` (module docs). Deterministic; memoized
/// per (shape, free mask, count, mode), so the same question about any node of the same shape
/// is answered from a table.
pub fn allocate(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Allocation, NoFit> {
    answer(g, free.and(g.all()), req)
        .map(|s| s.into_allocation(g))
        .map_err(|r| no_fit(r.message(g.node_name())))
}

/// [`allocate`] without naming anything: the allocation's `uuids` are empty and a refusal is
/// named when reported. What ranking many nodes of one shape needs, without a string per node.
pub fn assess(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Allocation, Refused> {
    answer(g, free.and(g.all()), req)
        .map(|s| s.into_anonymous_allocation(g.len()))
        .map_err(Refused)
}

/// [`allocate`] without the memo (what the memo stores; also for measuring the cold cost).
pub fn allocate_uncached(
    g: &GpuGraph,
    free: GpuSet,
    req: &GpuRequest,
) -> Result<Allocation, NoFit> {
    search(g, free.and(g.all()), req)
        .map(|s| s.into_allocation(g))
        .map_err(|r| no_fit(r.message(g.node_name())))
}

fn search(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Scored, Refusal> {
    precheck(g, free, req)?;
    let ctx = Ctx::new(g, free);
    // `preferred` wants NVLink: any set with an all-NVLink ring beats every set without one
    // (the same class the node ranking uses), the score decides within a class.
    let ring_class = req.nvlink == NvLinkMode::Preferred && req.count > 1 && g.has_nvlink();
    let mut best: Option<((bool, i64), GpuSet)> = None;
    // `gpu.minLinkGBps`: sets whose ring bottleneck is below it do not fit at all.
    let min = req.link_floor();
    let mut best_below = 0;
    if binomial(free.len(), req.count) <= EXACT_LIMIT {
        // The ring bottleneck is the costly part of a key and never exceeds the best free pair:
        // skip it for sets that cannot beat the best so far even with that bound.
        let np = pairs(req.count);
        let best_pair = g.max_pair_quality(free);
        for_each_subset(g, free, req.count, req.nvlink, |set, sq| {
            let class = ring_class && g.has_nvlink_ring(set);
            let base = ctx.key_without_bottleneck(set, sq, req.nvlink);
            if best.is_some_and(|(b, _)| (class, base + np * best_pair) <= b) {
                return;
            }
            let bottleneck = g.ring_bottleneck(set);
            if bottleneck < min {
                best_below = best_below.max(bottleneck);
                return;
            }
            let key = (class, base + np * bottleneck);
            if best.is_none_or(|(b, _)| key > b) {
                best = Some((key, set));
            }
        });
    } else {
        // Ring first, as above: an all-NVLink-ring set when the heuristic finds one (searched
        // with the `ring` rule, scored as the request's mode), any set otherwise.
        let ring = if ring_class {
            heuristic(&ctx, req.count, NvLinkMode::Ring, req.nvlink, min)
        } else {
            None
        };
        best = match ring {
            Some((k, s)) => Some(((true, k), s)),
            None => heuristic(&ctx, req.count, req.nvlink, req.nvlink, min)
                .map(|(k, s)| ((false, k), s)),
        };
    }
    match best {
        Some((_, set)) => Ok(ctx.scored(set, req.nvlink)),
        None if min > 0 => Err(Refusal::NoFastRing {
            count: req.count,
            min,
            best: best_below,
            nf: free.len(),
            n: g.len(),
        }),
        None => Err(match req.nvlink {
            NvLinkMode::Ring => Refusal::NoFreeRing {
                count: req.count,
                nf: free.len(),
                n: g.len(),
                islands: g.free_nvlink_island_sizes(free),
            },
            _ => Refusal::FreeCliqueTooSmall {
                count: req.count,
                biggest: g.largest_free_nvlink_clique(free),
                nf: free.len(),
                n: g.len(),
                islands: g.free_nvlink_island_sizes(free),
            },
        }),
    }
}

/// Whether `set` satisfies the mode's NVLink rule.
fn admissible(g: &GpuGraph, set: GpuSet, mode: NvLinkMode) -> bool {
    match mode {
        NvLinkMode::Clique => g.is_nvlink_clique(set),
        NvLinkMode::Ring => g.has_nvlink_ring(set),
        NvLinkMode::Preferred | NvLinkMode::None => true,
    }
}

/// Greedy grow from every free seed, then first-improvement swaps; for very large nodes only.
/// Sets must satisfy `admit`'s NVLink rule and have a ring bottleneck of at least `min`; they
/// are compared by the key of `score`.
fn heuristic(
    ctx: &Ctx<'_>,
    count: usize,
    admit: NvLinkMode,
    score: NvLinkMode,
    min: i64,
) -> Option<(i64, GpuSet)> {
    let g = ctx.g;
    let mode = admit;
    // Work budget (see HEURISTIC_WORK): once spent, the sets found so far are kept as they are.
    let ring_test = ring_test_steps(count);
    // The bottleneck bisects over the set's distinct pair qualities: log2(pairs) tests at most.
    let bisection = (u64::BITS - (pairs(count).max(1) as u64).leading_zeros()) as usize;
    let fit_cost = match mode {
        NvLinkMode::Ring => ring_test,
        _ => count * count,
    } + if min > 0 { bisection * ring_test } else { 0 };
    let eval_cost = 2 * g.nvlink_cliques().len() + bisection * ring_test;
    let work = std::cell::Cell::new(0usize);
    let spent = || work.get() >= HEURISTIC_WORK;
    let fits = |s: GpuSet| {
        work.set(work.get().saturating_add(fit_cost));
        admissible(g, s, mode) && (min == 0 || g.ring_bottleneck(s) >= min)
    };
    let eval = |s: GpuSet| {
        work.set(work.get().saturating_add(eval_cost));
        ctx.key(s, g.set_quality(s), score)
    };
    let mut best: Option<(i64, GpuSet)> = None;
    for seed in ctx.free.iter() {
        if spent() && best.is_some() {
            break;
        }
        let mut set = GpuSet::from_indexes([seed]);
        while set.len() < count {
            let pick = ctx
                .free
                .minus(set)
                .iter()
                .filter(|&c| match mode {
                    NvLinkMode::Clique => set.is_subset(g.nvlink_neighbours(c)),
                    NvLinkMode::Ring => !g.nvlink_neighbours(c).and(set).is_empty(),
                    _ => true,
                })
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
        if set.len() < count {
            continue;
        }
        let mut valid = fits(set);
        let mut key = if valid { eval(set) } else { i64::MIN };
        for _ in 0..64 {
            let mut improved = false;
            'outer: for out in set.iter() {
                for inn in ctx.free.minus(set).iter() {
                    if spent() {
                        break 'outer;
                    }
                    let mut cand = set;
                    cand.remove(out);
                    cand.insert(inn);
                    if fits(cand) {
                        let k2 = eval(cand);
                        if k2 > key {
                            set = cand;
                            key = k2;
                            valid = true;
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
        if valid && best.is_none_or(|(b, bs)| key > b || (key == b && set.to_vec() < bs.to_vec())) {
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
    precheck(g, free, req).map_err(|r| no_fit(r.message(g.node_name())))?;
    let mut best: Option<(i64, GpuSet)> = None;
    for_each_subset(g, free, req.count, req.nvlink, |set, sq| {
        if best.is_none_or(|(b, _)| sq > b) {
            best = Some((sq, set));
        }
    });
    let ctx = Ctx::new(g, free);
    best.map(|(_, s)| ctx.build(s, req.nvlink)).ok_or_else(|| {
        no_fit(format!(
            "no {} free GPUs on node {} satisfy nvlink {}",
            req.count,
            g.node_name(),
            req.nvlink
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
