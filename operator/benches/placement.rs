//! Cluster-level placement quality: streams of arriving and departing 1/2/4/8-GPU jobs over a
//! mixed pool of three members (NVSwitch, cube-mesh, bridged and PCIe-only nodes), placed by
//! gpupool's real `place_gang` and by three baselines on exactly the same event streams.
//!
//! `cargo bench -p gpupool-operator --bench placement` (or `make bench-placement`; add
//! `-- --sim-only` to skip the timing part, `-- --stream-set 1` for 16 other streams) prints:
//! 1. per placer, per stream as mean ± standard deviation over the [`SEEDS`] streams (every
//!    placer gets the same streams and starts from the same idle pool; a job that does not fit
//!    is dropped):
//!    - idle nodes broken needlessly: a job put on an idle node although a partly used node could
//!      take it with as good an NVLink class (an all-NVLink ring for multi-GPU jobs);
//!    - 8-GPU jobs rejected while the pool had at least 8 GPUs free;
//!    - multi-GPU jobs given a set without an all-NVLink ring (a PCIe hop) while some node could
//!      have given them one;
//!    - mean ring bottleneck of multi-GPU sets (≈ GB/s of the weakest hop of the best ring);
//!    - jobs placed and decisions per second.
//!
//!    For reference, one more row: gpupool with every job asking `nvlink: none` (pure packing).
//! 2. the cost of one node visit of the allocator on a 16-GPU DGX-2 (memoized and cold).
//!
//! Baselines: best fit (the node with the fewest free GPUs that has enough, then its lowest free
//! indexes — bin packing without topology), first fit (the first node with enough free GPUs, its
//! lowest indexes) and a go-gpuallocator-style greedy (kube-scheduler's default LeastAllocated
//! node choice — the node with the most free GPUs — and go-gpuallocator's greedy set on it).

use gpupool::api::{GpuSelector, NvLinkMode};
use gpupool::placement::allocator::{GpuRequest, allocate, allocate_uncached};
use gpupool::placement::baselines::greedy;
use gpupool::placement::rank::WholeNodes;
use gpupool::placement::{ClusterCandidate, JobRequest, NodeCandidate, place_gang};
use gpupool::topology::{GpuGraph, GpuSet, fixtures};
use std::collections::{BTreeMap, HashMap};
use std::time::Instant;

/// splitmix64: tiny, deterministic, good enough for workloads.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

// `.into()` keeps this working whether the candidate holds the graph or an `Arc` of it.
#[allow(clippy::useless_conversion)]
fn node(fixture: &str, name: String) -> NodeCandidate {
    let mut spec = fixtures::get(fixture);
    spec.node_name = name.clone();
    for g in &mut spec.gpus {
        g.uuid = format!("{name}-{}", g.index);
    }
    let graph = GpuGraph::from_spec(&spec).expect("fixture");
    NodeCandidate {
        name: name.into(),
        model: spec.gpus[0].model.as_str().into(),
        memory_mib: spec.gpus[0].memory_mib,
        free: graph.all(),
        graph: graph.into(),
    }
}

/// Three members, 336 GPUs: NVSwitch (DGX H100, DGX-2, DGX A100, HGX H100), the DGX-1 cube-mesh,
/// bridged pairs (A100 PCIe, A6000 workstations) and PCIe-only L40S.
fn pool() -> Vec<ClusterCandidate> {
    let spec: [(&str, &[(&str, usize)]); 3] = [
        ("member-a", &[("dgx-h100", 8), ("dgx1-v100", 8)]),
        (
            "member-b",
            &[
                ("pcie-l40s", 8),
                ("pcie-a100-bridged", 8),
                ("workstation-a6000", 4),
            ],
        ),
        (
            "member-c",
            &[("dgx2-v100", 2), ("dgx-a100", 4), ("hgx-h100", 4)],
        ),
    ];
    let mut cands: Vec<ClusterCandidate> = spec
        .iter()
        .map(|(m, kinds)| ClusterCandidate {
            name: m.to_string(),
            labels: BTreeMap::new(),
            price: None,
            nodes: kinds
                .iter()
                .flat_map(|(f, n)| (0..*n).map(move |i| node(f, format!("{m}-{f}-{i}"))))
                .collect(),
            skipped: Vec::new(),
            whole_nodes: WholeNodes::default(),
        })
        .collect();
    for c in &mut cands {
        recount(c);
    }
    cands
}

/// Counts a member's whole NVLink nodes after its free GPUs changed, as the scheduler's cache
/// does when it builds the candidates.
fn recount(c: &mut ClusterCandidate) {
    c.whole_nodes = WholeNodes::default();
    for n in &c.nodes {
        c.whole_nodes.add_nodes(&n.graph, n.free, 1);
    }
}

/// One job of the stream: GPUs and lifetime (in arrivals).
#[derive(Clone, Copy)]
struct Job {
    gpus: usize,
    life: usize,
}

fn stream(seed: u64, n: usize) -> Vec<Job> {
    let mut rng = Rng(seed);
    (0..n)
        .map(|_| {
            let r = rng.below(100);
            let gpus = match r {
                0..40 => 1,
                40..65 => 2,
                65..85 => 4,
                _ => 8,
            };
            Job {
                gpus,
                life: 1 + rng.below(180) as usize,
            }
        })
        .collect()
}

/// Where a placer put a job: (member, node, GPUs).
type Spot = (usize, usize, GpuSet);
type Placer = fn(&[ClusterCandidate], &JobRequest) -> Option<Spot>;

fn gpupool_placer(cands: &[ClusterCandidate], req: &JobRequest) -> Option<Spot> {
    let ch = place_gang(cands, req, &[0]).ok()?;
    let ci = cands.iter().position(|c| c.name == ch.cluster)?;
    let p = &ch.pods[0];
    let ni = cands[ci].nodes.iter().position(|n| *n.name == *p.node)?;
    let g = &cands[ci].nodes[ni].graph;
    let set = GpuSet::from_indexes(p.gpu_uuids.iter().filter_map(|u| g.index_of(u)));
    Some((ci, ni, set))
}

fn nodes(cands: &[ClusterCandidate]) -> impl Iterator<Item = (usize, usize, &NodeCandidate)> {
    cands
        .iter()
        .enumerate()
        .flat_map(|(ci, c)| c.nodes.iter().enumerate().map(move |(ni, n)| (ci, ni, n)))
}

fn lowest(free: GpuSet, k: usize) -> GpuSet {
    GpuSet::from_indexes(free.iter().take(k))
}

fn best_fit(cands: &[ClusterCandidate], req: &JobRequest) -> Option<Spot> {
    let k = req.gpus_per_pod;
    nodes(cands)
        .filter(|(_, _, n)| n.free.len() >= k)
        .min_by_key(|(_, _, n)| n.free.len())
        .map(|(ci, ni, n)| (ci, ni, lowest(n.free, k)))
}

fn first_fit(cands: &[ClusterCandidate], req: &JobRequest) -> Option<Spot> {
    let k = req.gpus_per_pod;
    nodes(cands)
        .find(|(_, _, n)| n.free.len() >= k)
        .map(|(ci, ni, n)| (ci, ni, lowest(n.free, k)))
}

fn least_allocated_greedy(cands: &[ClusterCandidate], req: &JobRequest) -> Option<Spot> {
    let k = req.gpus_per_pod;
    let (ci, ni, n) = nodes(cands)
        .filter(|(_, _, n)| n.free.len() >= k)
        .max_by_key(|(ci, ni, n)| (n.free.len(), std::cmp::Reverse((*ci, *ni))))?;
    let a = greedy(&n.graph, n.free, &GpuRequest::new(k, req.nvlink)).ok()?;
    Some((ci, ni, a.set))
}

#[derive(Default)]
struct Tally {
    placed: usize,
    idle_broken: usize,
    rejected_8: usize,
    pcie_detours: usize,
    bottleneck_sum: i64,
    multi: usize,
    decisions: usize,
    secs: f64,
}

/// Whether `set` has the NVLink class a job of `k` GPUs prefers.
fn good_class(g: &GpuGraph, set: GpuSet, k: usize) -> bool {
    k < 2 || g.has_nvlink_ring(set)
}

fn simulate(placer: Placer, mode: NvLinkMode, jobs: &[Job], t: &mut Tally) {
    let mut cands = pool();
    let mut running: Vec<(usize, Spot)> = Vec::new();
    for (now, job) in jobs.iter().enumerate() {
        running.retain(|&(end, (ci, ni, set))| {
            if end <= now {
                let n = &mut cands[ci].nodes[ni];
                n.free = GpuSet(n.free.0 | set.0);
                false
            } else {
                true
            }
        });
        for c in &mut cands {
            recount(c);
        }
        let req = JobRequest {
            gpus_per_pod: job.gpus,
            nvlink: mode,
            gpu: GpuSelector::default(),
            cluster_selector: BTreeMap::new(),
        };
        // What the pool could offer, judged the same way for every placer: per node with room,
        // whether it is partly used and whether it can give an all-NVLink ring.
        let k = job.gpus;
        let ring_req = GpuRequest::new(k, NvLinkMode::Ring);
        let offers: Vec<(bool, bool)> = nodes(&cands)
            .filter(|(_, _, n)| n.free.len() >= k)
            .map(|(_, _, n)| {
                let good = k < 2 || allocate(&n.graph, n.free, &ring_req).is_ok();
                (n.free != n.graph.all(), good)
            })
            .collect();
        let ring_possible = offers.iter().any(|&(_, good)| good);
        // A partly used node could take the job in the best class available anywhere.
        let partial_ok = offers
            .iter()
            .any(|&(partial, good)| partial && (good || !ring_possible));
        let free_total: usize = nodes(&cands).map(|(_, _, n)| n.free.len()).sum();
        let t0 = Instant::now();
        let spot = placer(&cands, &req);
        t.secs += t0.elapsed().as_secs_f64();
        t.decisions += 1;
        let Some((ci, ni, set)) = spot else {
            if k == 8 && free_total >= 8 {
                t.rejected_8 += 1;
            }
            continue;
        };
        let n = &mut cands[ci].nodes[ni];
        assert!(
            set.is_subset(n.free) && set.len() == k,
            "placer returned a bad set"
        );
        let g = &n.graph;
        let good = good_class(g, set, k);
        if n.free == g.all() && partial_ok {
            t.idle_broken += 1;
        }
        if k >= 2 {
            t.multi += 1;
            t.bottleneck_sum += g.ring_bottleneck(set);
            if !good && ring_possible {
                t.pcie_detours += 1;
            }
        }
        t.placed += 1;
        n.free = n.free.minus(set);
        running.push((now + job.life, (ci, ni, set)));
    }
}

/// Seeds of the job streams: every placer gets exactly the same streams.
const SEEDS: [u64; 16] = [
    0x5eed_0009,
    0x5eed_000a,
    0x5eed_000b,
    0x5eed_000c,
    0x5eed_000d,
    0x5eed_000e,
    0x5eed_000f,
    0x5eed_0010,
    0x5eed_0001,
    0x5eed_0002,
    0x5eed_0003,
    0x5eed_0004,
    0x5eed_0005,
    0x5eed_0006,
    0x5eed_0007,
    0x5eed_0008,
];
/// Jobs per stream.
const JOBS: usize = 6000;

/// One measure of a stream's tally.
type Measure<'a> = &'a dyn Fn(&Tally) -> f64;

/// Mean and sample standard deviation.
fn mean_sd(xs: &[f64]) -> (f64, f64) {
    let n = xs.len() as f64;
    let m = xs.iter().sum::<f64>() / n;
    let var = xs.iter().map(|x| (x - m) * (x - m)).sum::<f64>() / (n - 1.0).max(1.0);
    (m, var.sqrt())
}

fn main() {
    // `--sim-only` skips the node-visit timing (the slow part in a debug build).
    let sim_only = std::env::args().any(|a| a == "--sim-only");
    // `--stream-set N` (N ≥ 1) runs 16 other streams (the seeds with N × 2²⁴ xored in), to see
    // whether a difference holds beyond the fixed streams; 0, the default, is the fixed set.
    let args: Vec<String> = std::env::args().collect();
    let set: u64 = args
        .iter()
        .position(|a| a == "--stream-set")
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().expect("--stream-set takes a number"))
        .unwrap_or(0);
    let streams: Vec<Vec<Job>> = SEEDS
        .iter()
        .map(|&s| stream(s ^ (set << 24), JOBS))
        .collect();
    let placers: [(&str, Placer, NvLinkMode); 5] = [
        (
            "gpupool (place_gang)",
            gpupool_placer,
            NvLinkMode::Preferred,
        ),
        ("best fit", best_fit, NvLinkMode::Preferred),
        ("first fit", first_fit, NvLinkMode::Preferred),
        (
            "greedy (go-gpuallocator)",
            least_allocated_greedy,
            NvLinkMode::Preferred,
        ),
        // For reference: the same jobs asking for no NVLink at all.
        (
            "gpupool, all nvlink: none",
            gpupool_placer,
            NvLinkMode::None,
        ),
    ];
    println!(
        "cluster placement: stream set {set}, {} streams × {JOBS} jobs (1/2/4/8 GPUs 40/25/20/15 %, nvlink \
         preferred, each held 1..180 arrivals) over 3 members, {} nodes, {} GPUs; \
         per stream: mean ± standard deviation over the streams",
        streams.len(),
        pool().iter().map(|c| c.nodes.len()).sum::<usize>(),
        pool()
            .iter()
            .flat_map(|c| &c.nodes)
            .map(|n| n.graph.len())
            .sum::<usize>()
    );
    println!(
        "{:<26} {:>13} {:>13} {:>13} {:>13} {:>13} {:>11}",
        "placer", "placed", "idle broken", "8-GPU rej.", "PCIe detour", "ring GB/s", "decisions/s"
    );
    let mut all: Vec<(&str, Vec<Tally>)> = Vec::new();
    for (name, placer, mode) in placers {
        let tallies: Vec<Tally> = streams
            .iter()
            .map(|s| {
                let mut t = Tally::default();
                simulate(placer, mode, s, &mut t);
                t
            })
            .collect();
        let col = |f: &dyn Fn(&Tally) -> f64| {
            let (m, sd) = mean_sd(&tallies.iter().map(f).collect::<Vec<_>>());
            format!("{m:.1} ± {sd:.1}")
        };
        let decisions: usize = tallies.iter().map(|t| t.decisions).sum();
        let secs: f64 = tallies.iter().map(|t| t.secs).sum();
        println!(
            "{:<26} {:>13} {:>13} {:>13} {:>13} {:>13} {:>11.0}",
            name,
            col(&|t| t.placed as f64),
            col(&|t| t.idle_broken as f64),
            col(&|t| t.rejected_8 as f64),
            col(&|t| t.pcie_detours as f64),
            col(&|t| t.bottleneck_sum as f64 / t.multi.max(1) as f64),
            decisions as f64 / secs
        );
        all.push((name, tallies));
    }
    // Paired by stream: gpupool minus each baseline on the same stream (negative is better for
    // the first three measures, positive for the ring bottleneck), and on how many streams
    // gpupool is ahead / behind.
    println!();
    println!("paired by stream, gpupool − baseline: mean ± sd (streams gpupool ahead/behind)");
    println!(
        "{:<26} {:>22} {:>22} {:>22} {:>22}",
        "baseline", "idle broken", "8-GPU rej.", "PCIe detour", "ring GB/s"
    );
    // (measure, whether higher is better)
    let measures: [(Measure, bool); 4] = [
        (&|t| t.idle_broken as f64, false),
        (&|t| t.rejected_8 as f64, false),
        (&|t| t.pcie_detours as f64, false),
        (&|t| t.bottleneck_sum as f64 / t.multi.max(1) as f64, true),
    ];
    let ours = &all[0].1;
    for (name, theirs) in &all[1..4] {
        let cells: Vec<String> = measures
            .iter()
            .map(|(f, higher_better)| {
                let d: Vec<f64> = ours.iter().zip(theirs).map(|(a, b)| f(a) - f(b)).collect();
                let (m, sd) = mean_sd(&d);
                let ahead = d
                    .iter()
                    .filter(|&&x| if *higher_better { x > 0.0 } else { x < 0.0 })
                    .count();
                let behind = d
                    .iter()
                    .filter(|&&x| if *higher_better { x < 0.0 } else { x > 0.0 })
                    .count();
                format!("{m:.1} ± {sd:.1} ({ahead}/{behind})")
            })
            .collect();
        println!(
            "{:<26} {:>22} {:>22} {:>22} {:>22}",
            name, cells[0], cells[1], cells[2], cells[3]
        );
    }
    if sim_only {
        return;
    }

    // Cost of one node visit on a 16-GPU NVSwitch node: cold (searched) and memoized.
    println!();
    let g = GpuGraph::from_spec(&fixtures::get("dgx2-v100")).expect("fixture");
    let mut rng = Rng(0xD6_2000);
    let cases: Vec<(GpuSet, GpuRequest)> = (0..2000)
        .map(|_| {
            let free = GpuSet(rng.next() & 0xFFFF);
            let k = [1, 2, 4, 8][rng.below(4) as usize];
            let mode = [NvLinkMode::Clique, NvLinkMode::Ring, NvLinkMode::Preferred]
                [rng.below(3) as usize];
            (free, GpuRequest::new(k, mode))
        })
        .collect();
    // The worst case for the exact search: 8 of 14-16 free GPUs (up to C(16, 8) = 12 870 sets).
    let eight: Vec<(GpuSet, GpuRequest)> = (0..200)
        .map(|_| {
            let busy = (1u64 << rng.below(16)) | (1u64 << rng.below(16));
            let mode = [NvLinkMode::Clique, NvLinkMode::Ring, NvLinkMode::Preferred]
                [rng.below(3) as usize];
            (GpuSet(0xFFFF & !busy), GpuRequest::new(8, mode))
        })
        .collect();
    let time = |f: &dyn Fn(&(GpuSet, GpuRequest))| {
        let t0 = Instant::now();
        for c in &cases {
            f(c);
        }
        t0.elapsed().as_secs_f64() * 1e6 / cases.len() as f64
    };
    let cold = time(&|(f, r)| {
        let _ = allocate_uncached(&g, *f, r);
    });
    let _warmup = time(&|(f, r)| {
        let _ = allocate(&g, *f, r);
    });
    let warm = time(&|(f, r)| {
        let _ = allocate(&g, *f, r);
    });
    let t0 = Instant::now();
    for (f, r) in &eight {
        let _ = allocate_uncached(&g, *f, r);
    }
    let cold8 = t0.elapsed().as_secs_f64() * 1e6 / eight.len().max(1) as f64;
    let mut by_shape: HashMap<u64, usize> = HashMap::new();
    for c in pool() {
        for n in &c.nodes {
            *by_shape.entry(n.graph.shape_id()).or_default() += 1;
        }
    }
    println!(
        "node visit, 16-GPU DGX-2, {} random (free mask, 1/2/4/8 GPUs, clique/ring/preferred): \
         memoized {warm:.2} µs, cold {cold:.1} µs; cold 8 of ≥14 free: {cold8:.0} µs ({} cases)",
        cases.len(),
        eight.len()
    );
    println!(
        "the pool's {} nodes have {} distinct shapes (one memo table each)",
        by_shape.values().sum::<usize>(),
        by_shape.len()
    );
}
