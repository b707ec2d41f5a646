//! The GPU interconnect of one node as a graph, built from a [`GpuTopologySpec`]. Pure: no IO.
//!
//! # Pair quality
//!
//! Every GPU pair gets a quality `q(a, b)` on one scale shared by all nodes, so numbers from
//! different machines compare directly:
//!
//! ```text
//! q(a, b) = 50 × effective NVLinks(a, b) + PCIe proximity(a, b)
//! ```
//!
//! * effective NVLinks = direct NVLinks between the two GPUs, plus — when both reach each other
//!   through an NVSwitch fabric — the NVSwitch links of the less-connected GPU (a DGX H100 pair
//!   counts 18, the GPU's full NVLink bandwidth; NVIDIA's go-gpuallocator counts 0 there).
//!   One NVLink (NVLink 2, 3 or 4) carries ≈ 50 GB/s both directions together, so the NVLink part
//!   is roughly the pair's bidirectional NVLink bandwidth in GB/s: 900 for an H100 NVSwitch pair,
//!   600 for an A100 pair with an NVLink bridge (12 links), 100 / 50 for a DGX-1 V100 NV2 / NV1.
//! * PCIe proximity breaks ties and ranks PCIe-only pairs: same board 6, single switch 5,
//!   multiple switches 4, host bridge 3, same NUMA node 2, across sockets 1.
//!
//! So any NVLink pair (≥ 50) beats any PCIe-only pair (≤ 6), and a pair that is missing from the
//! spec is a cross-socket PCIe pair (`q = 1`).

use crate::api::{GpuTopologySpec, PcieLevel};
use std::collections::HashMap;
use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock, Mutex};

/// Most GPUs one node may have (the CRD allows 64; sets are `u64` bitmasks).
pub const MAX_GPUS: usize = 64;

/// Quality of one NVLink, ≈ bidirectional GB/s.
pub const NVLINK_QUALITY: i64 = 50;

/// Most maximal NVLink cliques a topology may have. Real NVLink graphs have a handful (a DGX-1
/// has 6, an NVSwitch node 1); a graph beyond this is refused with
/// [`TopologyError::TooManyNvlinkCliques`] rather than enumerated partially.
pub const MAX_NVLINK_CLIQUES: usize = 1 << 16;

/// Largest set checked exactly for an NVLink ring (2^k dynamic-programming states); larger sets
/// (beyond what one pod may request) count as a ring only when every pair qualifies.
pub const MAX_RING_DP: usize = 20;

/// Distinct topology shapes interned per process (see [`GpuGraph::shape_id`]); a pool has a
/// handful. Beyond this, graphs get a private id and simply share no memoized results.
const MAX_INTERNED_SHAPES: usize = 4096;

/// Distinct GPU model names interned per process (a pool has a few dozen); beyond this a graph
/// keeps its own copy.
const MAX_INTERNED_MODELS: usize = 4096;

/// A set of GPU indexes on one node, as a bitmask (bit `i` = GPU index `i`).
#[derive(Clone, Copy, Default, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct GpuSet(pub u64);

impl GpuSet {
    /// No GPUs.
    pub const EMPTY: GpuSet = GpuSet(0);

    /// GPUs `0..n`.
    pub fn all(n: usize) -> GpuSet {
        if n >= 64 {
            GpuSet(u64::MAX)
        } else {
            GpuSet((1u64 << n) - 1)
        }
    }

    /// The set of the given indexes (out-of-range indexes are ignored).
    pub fn from_indexes<I: IntoIterator<Item = usize>>(it: I) -> GpuSet {
        GpuSet(
            it.into_iter()
                .filter(|&i| i < MAX_GPUS)
                .fold(0, |m, i| m | (1u64 << i)),
        )
    }

    /// Whether GPU `i` is in the set.
    pub fn contains(self, i: usize) -> bool {
        i < MAX_GPUS && self.0 & (1u64 << i) != 0
    }

    /// Number of GPUs.
    pub fn len(self) -> usize {
        self.0.count_ones() as usize
    }

    /// Whether the set is empty.
    pub fn is_empty(self) -> bool {
        self.0 == 0
    }

    /// Adds GPU `i`.
    pub fn insert(&mut self, i: usize) {
        self.0 |= 1u64 << i;
    }

    /// Removes GPU `i`.
    pub fn remove(&mut self, i: usize) {
        self.0 &= !(1u64 << i);
    }

    /// Indexes in ascending order.
    pub fn iter(self) -> impl Iterator<Item = usize> {
        let mut m = self.0;
        std::iter::from_fn(move || {
            if m == 0 {
                return None;
            }
            let i = m.trailing_zeros() as usize;
            m &= m - 1;
            Some(i)
        })
    }

    /// Indexes in ascending order, collected.
    pub fn to_vec(self) -> Vec<usize> {
        self.iter().collect()
    }

    /// `self ∩ other`.
    pub fn and(self, other: GpuSet) -> GpuSet {
        GpuSet(self.0 & other.0)
    }

    /// `self \ other`.
    pub fn minus(self, other: GpuSet) -> GpuSet {
        GpuSet(self.0 & !other.0)
    }

    /// Whether every GPU of `self` is in `other`.
    pub fn is_subset(self, other: GpuSet) -> bool {
        self.0 & !other.0 == 0
    }
}

impl fmt::Debug for GpuSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.iter()).finish()
    }
}

/// Why a spec does not describe a usable topology.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum TopologyError {
    /// No GPUs at all.
    #[error("topology of node {0:?} lists no GPUs")]
    NoGpus(String),
    /// More GPUs than a bitmask holds.
    #[error("topology lists {0} GPUs; at most {MAX_GPUS} are supported")]
    TooManyGpus(usize),
    /// GPU indexes are not exactly 0..n.
    #[error("GPU indexes must be 0..{n} without gaps or repeats; found index {index}")]
    BadIndex {
        /// Number of GPUs.
        n: usize,
        /// The offending index.
        index: i32,
    },
    /// A link names a GPU that does not exist, or a GPU with itself.
    #[error("link {a}-{b} refers to a GPU outside 0..{n} or links a GPU with itself")]
    LinkOutOfRange {
        /// First GPU.
        a: i32,
        /// Second GPU.
        b: i32,
        /// Number of GPUs.
        n: usize,
    },
    /// The same pair appears twice.
    #[error("GPU pair {a}-{b} has more than one link entry")]
    DuplicateLink {
        /// Lower GPU.
        a: usize,
        /// Higher GPU.
        b: usize,
    },
    /// The NVLink graph has more maximal cliques than [`MAX_NVLINK_CLIQUES`].
    #[error(
        "the NVLink graph has more than {MAX_NVLINK_CLIQUES} maximal cliques; not a real GPU topology"
    )]
    TooManyNvlinkCliques,
    /// Negative link count.
    #[error("link {a}-{b} has a negative NVLink count {nvlinks}")]
    NegativeNvlinks {
        /// First GPU.
        a: i32,
        /// Second GPU.
        b: i32,
        /// The count.
        nvlinks: i32,
    },
}

/// What connects one GPU pair.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PairLink {
    /// Direct NVLinks.
    pub nvlinks: u32,
    /// Both GPUs sit on the same NVSwitch fabric.
    pub nvswitch: bool,
    /// PCIe relationship.
    pub pcie: PcieLevel,
}

impl PairLink {
    /// Whether the pair talks over NVLink (directly or through NVSwitch).
    pub fn nvlink_connected(&self) -> bool {
        self.nvlinks > 0 || self.nvswitch
    }
}

/// One GPU of the graph.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GpuNode {
    /// NVML index (= position in the graph).
    pub index: usize,
    /// NVML UUID (shared with the scheduler cache's claims on it).
    pub uuid: Arc<str>,
    /// Model name (interned: every GPU of a model shares one).
    pub model: Arc<str>,
    /// Memory in MiB.
    pub memory_mib: i64,
    /// NVLinks into the NVSwitch fabric.
    pub nvswitch_links: u32,
}

/// PCIe proximity points, closest = highest (see the module docs).
pub fn pcie_points(level: PcieLevel) -> i64 {
    match level {
        PcieLevel::SameBoard => 6,
        PcieLevel::SingleSwitch => 5,
        PcieLevel::MultiSwitch => 4,
        PcieLevel::HostBridge => 3,
        PcieLevel::SameNuma => 2,
        PcieLevel::CrossSocket => 1,
    }
}

/// The GPUs of one node and the quality of every pair. Immutable once built. What depends only
/// on the interconnect — links, pair qualities, cliques — is one [`Shape`] shared by every node
/// built the same way (a pool of thousands of DGX nodes holds it once); a node adds its name and
/// its GPUs' UUIDs and models.
#[derive(Clone, Debug)]
pub struct GpuGraph {
    node_name: String,
    gpus: Vec<GpuNode>,
    shape: Arc<Shape>,
}

/// The interconnect of a node, without names: shared by every node of the same shape.
#[derive(Debug)]
struct Shape {
    links: Vec<PairLink>,
    quality: Vec<i64>,
    nvlink_adj: Vec<GpuSet>,
    /// Maximal cliques of the NVLink graph (sets where every pair is NVLink-connected), each of
    /// size ≥ 2, sorted by size descending then lowest indexes.
    cliques: Vec<GpuSet>,
    /// For each GPU, the other GPUs ordered by pair quality (best first, lowest index on ties).
    partners: Vec<Vec<usize>>,
    /// Distinct pair qualities of NVLink-connected pairs, ascending (empty without NVLink).
    nvlink_levels: Vec<i64>,
    /// Content hash of the shape (GPU count, pair qualities, NVLink adjacency).
    fingerprint: u64,
    /// Process-wide id of the shape: equal for two graphs exactly when their shapes are equal
    /// (interned), unless the interning table is full.
    id: u64,
}

/// What identifies a shape: GPU count, every pair's link, pair qualities, NVLink adjacency.
#[derive(PartialEq, Eq, Hash)]
struct ShapeKey {
    n: usize,
    links: Vec<u64>,
    quality: Vec<i64>,
    nvlink_adj: Vec<u64>,
}

static NEXT_SHAPE_ID: AtomicU64 = AtomicU64::new(1);
static MODELS: LazyLock<Mutex<std::collections::HashSet<Arc<str>>>> =
    LazyLock::new(|| Mutex::new(std::collections::HashSet::new()));

/// The process's one copy of a GPU model name.
fn intern_model(model: &str) -> Arc<str> {
    let mut models = MODELS.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(m) = models.get(model) {
        return m.clone();
    }
    let m: Arc<str> = model.into();
    if models.len() < MAX_INTERNED_MODELS {
        models.insert(m.clone());
    }
    m
}
static SHAPES: LazyLock<Mutex<HashMap<ShapeKey, Arc<Shape>>>> =
    LazyLock::new(|| Mutex::new(HashMap::new()));

/// FNV-1a over 64-bit words: a stable content hash (the standard library's hasher makes no
/// stability promise across releases, and ten lines do not justify a dependency).
fn fnv1a(words: impl IntoIterator<Item = u64>) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for w in words {
        for b in w.to_le_bytes() {
            h ^= u64::from(b);
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        }
    }
    h
}

/// The GPUs of a spec by index: indexes must be dense `0..n` (in any order).
fn gpus_of(spec: &GpuTopologySpec) -> Result<Vec<GpuNode>, TopologyError> {
    let n = spec.gpus.len();
    if n == 0 {
        return Err(TopologyError::NoGpus(spec.node_name.clone()));
    }
    if n > MAX_GPUS {
        return Err(TopologyError::TooManyGpus(n));
    }
    let mut slots: Vec<Option<GpuNode>> = vec![None; n];
    for g in &spec.gpus {
        let i = usize::try_from(g.index).ok().filter(|&i| i < n);
        match i {
            Some(i) if slots[i].is_none() => {
                slots[i] = Some(GpuNode {
                    index: i,
                    uuid: g.uuid.as_str().into(),
                    model: intern_model(&g.model),
                    memory_mib: g.memory_mib,
                    nvswitch_links: g.nvswitch_links.max(0) as u32,
                })
            }
            _ => return Err(TopologyError::BadIndex { n, index: g.index }),
        }
    }
    Ok(slots
        .into_iter()
        .map(|s| s.expect("every slot filled: n distinct indexes in 0..n"))
        .collect())
}

/// Every pair's link (`n × n`, both directions): links must name two different existing GPUs,
/// at most one entry per pair; a pair without an entry is a cross-socket PCIe pair.
fn links_of(spec: &GpuTopologySpec, n: usize) -> Result<Vec<PairLink>, TopologyError> {
    let mut links = vec![PairLink::default(); n * n];
    let mut seen = vec![false; n * n];
    for l in &spec.links {
        let ok = |x: i32| usize::try_from(x).ok().filter(|&x| x < n);
        let (Some(a), Some(b)) = (ok(l.a), ok(l.b)) else {
            return Err(TopologyError::LinkOutOfRange { a: l.a, b: l.b, n });
        };
        if a == b {
            return Err(TopologyError::LinkOutOfRange { a: l.a, b: l.b, n });
        }
        if l.nvlinks < 0 {
            return Err(TopologyError::NegativeNvlinks {
                a: l.a,
                b: l.b,
                nvlinks: l.nvlinks,
            });
        }
        let (lo, hi) = (a.min(b), a.max(b));
        if seen[lo * n + hi] {
            return Err(TopologyError::DuplicateLink { a: lo, b: hi });
        }
        seen[lo * n + hi] = true;
        let pl = PairLink {
            nvlinks: l.nvlinks as u32,
            nvswitch: l.nvswitch,
            pcie: l.pcie,
        };
        links[lo * n + hi] = pl;
        links[hi * n + lo] = pl;
    }
    Ok(links)
}

/// Pair qualities (module docs) and NVLink adjacency of `gpus` joined by `links`.
fn qualities(gpus: &[GpuNode], links: &[PairLink]) -> (Vec<i64>, Vec<GpuSet>) {
    let n = gpus.len();
    let mut quality = vec![0i64; n * n];
    let mut nvlink_adj = vec![GpuSet::EMPTY; n];
    for a in 0..n {
        for b in (0..n).filter(|&b| b != a) {
            let l = links[a * n + b];
            let mut eff = i64::from(l.nvlinks);
            if l.nvswitch {
                let (x, y) = (gpus[a].nvswitch_links, gpus[b].nvswitch_links);
                // Unknown switch link counts: still NVLink-connected, count one link.
                let sw = if x.min(y) > 0 {
                    x.min(y)
                } else {
                    x.max(y).max(1)
                };
                eff += i64::from(sw);
            }
            quality[a * n + b] = NVLINK_QUALITY * eff + pcie_points(l.pcie);
            if l.nvlink_connected() {
                nvlink_adj[a].insert(b);
            }
        }
    }
    (quality, nvlink_adj)
}

impl Shape {
    /// The shared shape of `gpus` joined by `links`: interned, so a shape seen before costs a
    /// look-up (its cliques are enumerated once per process).
    fn of(gpus: &[GpuNode], links: Vec<PairLink>) -> Result<Arc<Shape>, TopologyError> {
        let n = gpus.len();
        let (quality, nvlink_adj) = qualities(gpus, &links);
        let key = ShapeKey {
            n,
            links: links
                .iter()
                .map(|l| {
                    u64::from(l.nvlinks) << 8
                        | u64::from(l.nvswitch) << 4
                        | pcie_points(l.pcie) as u64
                })
                .collect(),
            quality,
            nvlink_adj: nvlink_adj.iter().map(|s| s.0).collect(),
        };
        if let Some(s) = SHAPES.lock().unwrap_or_else(|e| e.into_inner()).get(&key) {
            return Ok(s.clone());
        }
        let shape = Arc::new(Shape::build(n, links, key.quality.clone(), nvlink_adj)?);
        let mut shapes = SHAPES.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(s) = shapes.get(&key) {
            return Ok(s.clone());
        }
        if shapes.len() < MAX_INTERNED_SHAPES {
            shapes.insert(key, shape.clone());
        }
        Ok(shape)
    }

    /// Computes what the shape's queries need: partners, NVLink levels, cliques.
    fn build(
        n: usize,
        links: Vec<PairLink>,
        quality: Vec<i64>,
        nvlink_adj: Vec<GpuSet>,
    ) -> Result<Shape, TopologyError> {
        let partners = (0..n)
            .map(|a| {
                let mut v: Vec<usize> = (0..n).filter(|&b| b != a).collect();
                v.sort_by_key(|&b| (std::cmp::Reverse(quality[a * n + b]), b));
                v
            })
            .collect();
        let mut nvlink_levels: Vec<i64> = (0..n)
            .flat_map(|a| nvlink_adj[a].iter().map(move |b| (a, b)))
            .map(|(a, b)| quality[a * n + b])
            .collect();
        nvlink_levels.sort_unstable();
        nvlink_levels.dedup();
        let fingerprint = fnv1a(
            std::iter::once(n as u64)
                .chain(quality.iter().map(|&q| q as u64))
                .chain(nvlink_adj.iter().map(|s| s.0)),
        );
        let cliques = maximal_cliques(n, &nvlink_adj).ok_or(TopologyError::TooManyNvlinkCliques)?;
        Ok(Shape {
            links,
            quality,
            nvlink_adj,
            cliques,
            partners,
            nvlink_levels,
            fingerprint,
            id: NEXT_SHAPE_ID.fetch_add(1, Ordering::Relaxed),
        })
    }
}

/// All maximal cliques of the NVLink graph `adj` (size ≥ 2), largest first, or `None` when
/// there are more than [`MAX_NVLINK_CLIQUES`].
fn maximal_cliques(n: usize, adj: &[GpuSet]) -> Option<Vec<GpuSet>> {
    // Bron–Kerbosch with pivoting on bitmasks.
    fn bk(adj: &[GpuSet], r: u64, mut p: u64, mut x: u64, out: &mut Vec<GpuSet>) -> bool {
        if p == 0 && x == 0 {
            if r.count_ones() >= 2 {
                if out.len() >= MAX_NVLINK_CLIQUES {
                    return false;
                }
                out.push(GpuSet(r));
            }
            return true;
        }
        let pivot = (p | x).trailing_zeros() as usize;
        let mut cand = p & !adj[pivot].0;
        while cand != 0 {
            let v = cand.trailing_zeros() as usize;
            cand &= cand - 1;
            let nv = adj[v].0;
            if !bk(adj, r | (1 << v), p & nv, x & nv, out) {
                return false;
            }
            p &= !(1 << v);
            x |= 1 << v;
        }
        true
    }
    let mut out = Vec::new();
    if !bk(adj, 0, GpuSet::all(n).0, 0, &mut out) {
        return None;
    }
    out.sort_by_key(|s| (std::cmp::Reverse(s.len()), s.to_vec()));
    Some(out)
}

impl GpuGraph {
    /// Builds and validates the graph: indexes must be dense `0..n` (in any order), links must
    /// name two different existing GPUs, at most one entry per pair. A pair without an entry is a
    /// cross-socket PCIe pair without NVLink.
    pub fn from_spec(spec: &GpuTopologySpec) -> Result<GpuGraph, TopologyError> {
        let gpus = gpus_of(spec)?;
        let links = links_of(spec, gpus.len())?;
        let shape = Shape::of(&gpus, links)?;
        Ok(GpuGraph {
            node_name: spec.node_name.clone(),
            gpus,
            shape,
        })
    }

    /// Content hash of the shape — GPU count, every pair quality and the NVLink adjacency —
    /// computed once at construction. Equal shapes have equal fingerprints on every run and
    /// machine; a scheduler cache can key on it (and confirm with [`same_shape`](Self::same_shape)).
    pub fn shape_fingerprint(&self) -> u64 {
        self.shape.fingerprint
    }

    /// Process-wide id of the shape: two graphs have the same id exactly when they have the
    /// same shape (interned at construction with a full comparison). The allocator memoizes its
    /// answers under this id, so every node of one shape shares them.
    pub fn shape_id(&self) -> u64 {
        self.shape.id
    }

    /// Whether `other` is the same graph: node name, GPUs and the very same interned shape (a
    /// shape the interning table had no room for compares unequal).
    pub fn identical(&self, other: &GpuGraph) -> bool {
        Arc::ptr_eq(&self.shape, &other.shape)
            && self.node_name == other.node_name
            && self.gpus == other.gpus
    }

    /// Whether `other` has the same shape (GPU count, pair qualities, NVLink adjacency), so the
    /// allocator gives both the same answers for the same free mask.
    pub fn same_shape(&self, other: &GpuGraph) -> bool {
        self.shape.fingerprint == other.shape.fingerprint
            && self.shape.quality == other.shape.quality
            && self.shape.nvlink_adj == other.shape.nvlink_adj
    }

    /// Lowest pair quality among NVLink-connected pairs (`None` without NVLink): the node's own
    /// unit of "one NVLink hop", used to scale fragmentation.
    pub fn min_nvlink_quality(&self) -> Option<i64> {
        self.shape.nvlink_levels.first().copied()
    }

    /// Whether the NVLink graph restricted to `set` has a Hamiltonian cycle: an all-NVLink ring
    /// through every GPU of the set. One GPU is a ring; two need an NVLink between them.
    pub fn has_nvlink_ring(&self, set: GpuSet) -> bool {
        match set.len() {
            0 | 1 => true,
            _ if self.is_nvlink_clique(set) => true,
            _ => self.has_ring_with(set, |a, b| self.nvlinked(a, b)),
        }
    }

    /// Ring bottleneck of `set`: over all cycles through every GPU of the set, the best
    /// achievable weakest hop (pair quality). What a ring all-reduce over the set is limited by.
    /// For two GPUs the pair quality; 0 for fewer than two.
    pub fn ring_bottleneck(&self, set: GpuSet) -> i64 {
        let k = set.len();
        if k < 2 {
            return 0;
        }
        if k <= 3 {
            return self.min_pair_quality(set);
        }
        // Bounds: every GPU uses two of its hops, so the bottleneck is at most the smallest
        // second-best partner quality; it is at least the weakest pair (the set is complete).
        let lo = self.min_pair_quality(set);
        let hi = set
            .iter()
            .map(|a| {
                let mut best = [i64::MIN; 2];
                for b in set.iter().filter(|&b| b != a) {
                    let q = self.pair_quality(a, b);
                    if q > best[0] {
                        best = [q, best[0]];
                    } else if q > best[1] {
                        best[1] = q;
                    }
                }
                best[1]
            })
            .min()
            .unwrap_or(lo);
        if lo >= hi {
            return lo;
        }
        let mut levels: Vec<i64> = set
            .iter()
            .flat_map(|a| set.iter().filter(move |&b| b > a).map(move |b| (a, b)))
            .map(|(a, b)| self.pair_quality(a, b))
            .filter(|&q| q > lo && q <= hi)
            .collect();
        levels.sort_unstable();
        levels.dedup();
        // Largest level with a ring using only hops ≥ level (monotone: binary search).
        let (mut ok, mut lo_i, mut hi_i) = (lo, 0usize, levels.len());
        while lo_i < hi_i {
            let mid = (lo_i + hi_i) / 2;
            let t = levels[mid];
            if self.has_ring_with(set, |a, b| self.pair_quality(a, b) >= t) {
                ok = t;
                lo_i = mid + 1;
            } else {
                hi_i = mid;
            }
        }
        ok
    }

    /// Hamiltonian-cycle test on `set` (≥ 2 GPUs) under the edge predicate `edge`: dynamic
    /// programming over subsets, paths anchored at the lowest GPU, endpoint sets as bitmasks.
    fn has_ring_with(&self, set: GpuSet, edge: impl Fn(usize, usize) -> bool) -> bool {
        let v = set.to_vec();
        let k = v.len();
        if k == 2 {
            return edge(v[0], v[1]);
        }
        if k > MAX_RING_DP {
            // 2^k states would not fit: fall back to the sufficient condition "every pair".
            return v
                .iter()
                .enumerate()
                .all(|(i, &a)| v[i + 1..].iter().all(|&b| edge(a, b)));
        }
        let adj: Vec<u32> = (0..k)
            .map(|i| {
                (0..k)
                    .filter(|&j| j != i && edge(v[i], v[j]))
                    .fold(0u32, |m, j| m | (1 << j))
            })
            .collect();
        if adj.iter().any(|m| m.count_ones() < 2) {
            return false;
        }
        // ends[mask] = vertices j such that a path from vertex 0 through exactly `mask` ends
        // at j (mask always contains vertex 0).
        let full = (1usize << k) - 1;
        let mut ends = vec![0u32; 1 << k];
        ends[1] = 1;
        for mask in (1..=full).step_by(2) {
            let e = ends[mask];
            if e == 0 {
                continue;
            }
            let mut it = e;
            while it != 0 {
                let j = it.trailing_zeros() as usize;
                it &= it - 1;
                let mut next = adj[j] & !(mask as u32);
                while next != 0 {
                    let x = next.trailing_zeros() as usize;
                    next &= next - 1;
                    ends[mask | (1 << x)] |= 1 << x;
                }
            }
        }
        ends[full] & adj[0] != 0
    }

    /// Node name from the spec.
    pub fn node_name(&self) -> &str {
        &self.node_name
    }

    /// Number of GPUs.
    pub fn len(&self) -> usize {
        self.gpus.len()
    }

    /// Always false: a graph has at least one GPU.
    pub fn is_empty(&self) -> bool {
        self.gpus.is_empty()
    }

    /// The GPUs, by index.
    pub fn gpus(&self) -> &[GpuNode] {
        &self.gpus
    }

    /// All GPUs.
    pub fn all(&self) -> GpuSet {
        GpuSet::all(self.len())
    }

    /// What connects `a` and `b`.
    pub fn link(&self, a: usize, b: usize) -> PairLink {
        self.shape.links[a * self.len() + b]
    }

    /// Pair quality `q(a, b)` (module docs); 0 for `a == b`.
    pub fn pair_quality(&self, a: usize, b: usize) -> i64 {
        self.shape.quality[a * self.len() + b]
    }

    /// Whether `a` and `b` are NVLink-connected (direct or NVSwitch).
    pub fn nvlinked(&self, a: usize, b: usize) -> bool {
        self.shape.nvlink_adj[a].contains(b)
    }

    /// GPUs NVLink-connected to `a`.
    pub fn nvlink_neighbours(&self, a: usize) -> GpuSet {
        self.shape.nvlink_adj[a]
    }

    /// Whether the node has any NVLink at all.
    pub fn has_nvlink(&self) -> bool {
        self.shape.nvlink_adj.iter().any(|s| !s.is_empty())
    }

    /// Sum of `q` over all pairs of `set` (the set quality objective; 0 for fewer than 2 GPUs).
    pub fn set_quality(&self, set: GpuSet) -> i64 {
        let v = set.to_vec();
        let mut s = 0;
        for (i, &a) in v.iter().enumerate() {
            for &b in &v[i + 1..] {
                s += self.pair_quality(a, b);
            }
        }
        s
    }

    /// Highest pair quality inside `set` (0 for fewer than 2 GPUs).
    pub fn max_pair_quality(&self, set: GpuSet) -> i64 {
        let v = set.to_vec();
        let mut m = 0;
        for (i, &a) in v.iter().enumerate() {
            for &b in &v[i + 1..] {
                m = m.max(self.pair_quality(a, b));
            }
        }
        m
    }

    /// Lowest pair quality inside `set` (0 for fewer than 2 GPUs).
    pub fn min_pair_quality(&self, set: GpuSet) -> i64 {
        let v = set.to_vec();
        let mut m: Option<i64> = None;
        for (i, &a) in v.iter().enumerate() {
            for &b in &v[i + 1..] {
                let q = self.pair_quality(a, b);
                m = Some(m.map_or(q, |m: i64| m.min(q)));
            }
        }
        m.unwrap_or(0)
    }

    /// Whether every pair of `set` is NVLink-connected (true for fewer than 2 GPUs).
    pub fn is_nvlink_clique(&self, set: GpuSet) -> bool {
        set.iter().all(|a| {
            set.minus(GpuSet::from_indexes([a]))
                .is_subset(self.shape.nvlink_adj[a])
        })
    }

    /// Maximal NVLink cliques of the whole node (size ≥ 2), largest first.
    pub fn nvlink_cliques(&self) -> &[GpuSet] {
        &self.shape.cliques
    }

    /// Size of the largest set of free GPUs that are pairwise NVLink-connected (1 when some GPU
    /// is free but none pairs up over NVLink, 0 when nothing is free).
    pub fn largest_free_nvlink_clique(&self, free: GpuSet) -> usize {
        let best = self
            .shape
            .cliques
            .iter()
            .map(|k| k.and(free).len())
            .max()
            .unwrap_or(0);
        best.max(usize::from(!free.is_empty()))
    }

    /// NVLink islands among the free GPUs: connected components of the NVLink graph restricted
    /// to `free`, largest first (lowest index on ties). GPUs without a free NVLink peer are
    /// islands of one.
    pub fn free_nvlink_islands(&self, free: GpuSet) -> Vec<GpuSet> {
        let mut left = free;
        let mut out = Vec::new();
        while let Some(start) = left.iter().next() {
            let mut comp = GpuSet::from_indexes([start]);
            let mut frontier = comp;
            while !frontier.is_empty() {
                let mut next = GpuSet::EMPTY;
                for g in frontier.iter() {
                    next = GpuSet(next.0 | self.shape.nvlink_adj[g].0);
                }
                next = next.and(free).minus(comp);
                comp = GpuSet(comp.0 | next.0);
                frontier = next;
            }
            left = left.minus(comp);
            out.push(comp);
        }
        out.sort_by_key(|s| (std::cmp::Reverse(s.len()), s.0.trailing_zeros()));
        out
    }

    /// Sizes of [`free_nvlink_islands`](Self::free_nvlink_islands), largest first.
    pub fn free_nvlink_island_sizes(&self, free: GpuSet) -> Vec<usize> {
        self.free_nvlink_islands(free)
            .iter()
            .map(|s| s.len())
            .collect()
    }

    /// The free GPUs: all GPUs whose UUID is not in `in_use` (unknown UUIDs are ignored).
    pub fn free_set<S: AsRef<str>>(&self, in_use: &[S]) -> GpuSet {
        let mut free = self.all();
        for u in in_use {
            if let Some(g) = self.index_of(u.as_ref()) {
                free.remove(g);
            }
        }
        free
    }

    /// Index of the GPU with this UUID.
    pub fn index_of(&self, uuid: &str) -> Option<usize> {
        self.gpus.iter().position(|g| &*g.uuid == uuid)
    }

    /// UUIDs of a set, by ascending index.
    pub fn uuids(&self, set: GpuSet) -> Vec<String> {
        set.iter().map(|i| self.gpus[i].uuid.to_string()).collect()
    }

    /// Best pair quality of GPU `g` with any other GPU of `within` (0 if none).
    pub fn best_partner_quality(&self, g: usize, within: GpuSet) -> i64 {
        self.shape.partners[g]
            .iter()
            .find(|&&h| within.contains(h))
            .map_or(0, |&h| self.pair_quality(g, h))
    }
}

/// Reads a topology document: either a bare `GpuTopologySpec` (the files in
/// `deploy/topologies/`) or a whole `GpuTopology` object (its `spec` is used).
pub fn spec_from_yaml(text: &str) -> Result<GpuTopologySpec, serde_yaml::Error> {
    let v: serde_yaml::Value = serde_yaml::from_str(text)?;
    match v.get("spec") {
        Some(spec) if v.get("kind").is_some() => serde_yaml::from_value(spec.clone()),
        _ => serde_yaml::from_value(v),
    }
}

/// The fixture topologies of `deploy/topologies/`, compiled in (tests, benchmark, demo).
pub mod fixtures {
    use crate::api::GpuTopologySpec;

    /// DGX H100: 8× H100 SXM on NVSwitch.
    pub const DGX_H100: &str = include_str!("../../../deploy/topologies/dgx-h100.yaml");
    /// DGX-1 V100: 8× V100 SXM2 in the hybrid cube-mesh.
    pub const DGX1_V100: &str = include_str!("../../../deploy/topologies/dgx1-v100.yaml");
    /// 4× A100 PCIe with NVLink bridges on 0-1 and 2-3.
    pub const PCIE_A100_BRIDGED: &str =
        include_str!("../../../deploy/topologies/pcie-a100-bridged.yaml");
    /// 8× L40S, PCIe only.
    pub const PCIE_L40S: &str = include_str!("../../../deploy/topologies/pcie-l40s.yaml");
    /// DGX-2: 16× V100 SXM3 on NVSwitch.
    pub const DGX2_V100: &str = include_str!("../../../deploy/topologies/dgx2-v100.yaml");
    /// DGX A100: 8× A100 SXM4 on NVSwitch, four NUMA pairs.
    pub const DGX_A100: &str = include_str!("../../../deploy/topologies/dgx-a100.yaml");
    /// HGX H100 (cloud instance): 8× H100 on NVSwitch, every GPU on its own PCIe root.
    pub const HGX_H100: &str = include_str!("../../../deploy/topologies/hgx-h100.yaml");
    /// Workstation: 4× RTX A6000, one NVLink-bridged pair.
    pub const WORKSTATION_A6000: &str =
        include_str!("../../../deploy/topologies/workstation-a6000.yaml");

    /// A DGX-1 V100 with GPUs 4 and 7 in use: a whole `GpuTopology` object with status.
    pub const DGX1_V100_BUSY: &str = include_str!("../../../deploy/topologies/dgx1-v100-busy.yaml");

    /// [`DGX1_V100_BUSY`] parsed.
    pub fn dgx1_v100_busy() -> crate::api::GpuTopology {
        serde_yaml::from_str(DGX1_V100_BUSY).expect("fixture parses")
    }

    /// `(file stem, spec)` of every fixture topology spec (the busy node is separate).
    pub fn all() -> Vec<(&'static str, GpuTopologySpec)> {
        [
            ("dgx-h100", DGX_H100),
            ("dgx1-v100", DGX1_V100),
            ("pcie-a100-bridged", PCIE_A100_BRIDGED),
            ("pcie-l40s", PCIE_L40S),
            ("dgx2-v100", DGX2_V100),
            ("dgx-a100", DGX_A100),
            ("hgx-h100", HGX_H100),
            ("workstation-a6000", WORKSTATION_A6000),
        ]
        .into_iter()
        .map(|(n, t)| (n, super::spec_from_yaml(t).expect("fixture parses")))
        .collect()
    }

    /// One fixture by file stem.
    pub fn get(name: &str) -> GpuTopologySpec {
        all()
            .into_iter()
            .find(|(n, _)| *n == name)
            .map(|(_, s)| s)
            .unwrap_or_else(|| panic!("no fixture {name}"))
    }

    /// A pathological 32-GPU node, `node`: its NVLink graph has 3^10 = 59 049 maximal cliques
    /// (a Moon–Moser graph: ten groups of three, every GPU linked to every GPU outside its
    /// group by two NVLinks), and two more GPUs on PCIe only. UUIDs `GPU-<node>-<index>`.
    pub fn moon_moser(node: &str) -> GpuTopologySpec {
        let mut spec = get("pcie-l40s");
        let g0 = spec.gpus[0].clone();
        spec.node_name = node.into();
        spec.gpus = (0..32)
            .map(|i| {
                let mut g = g0.clone();
                g.index = i;
                g.uuid = format!("GPU-{node}-{i}");
                g
            })
            .collect();
        let l0 = spec.links[0].clone();
        spec.links = (0..30)
            .flat_map(|a| (a + 1..30).map(move |b| (a, b)))
            .filter(|(a, b)| a / 3 != b / 3)
            .map(|(a, b)| {
                let mut l = l0.clone();
                l.a = a;
                l.b = b;
                l.nvlinks = 2;
                l
            })
            .collect();
        spec
    }
}

#[cfg(test)]
mod tests;
