//! GPU allocator benchmark: gpupool's allocator against first-fit and a go-gpuallocator-style
//! greedy, on the fixture node types with random occupancy, judged by one objective — the sum of
//! true pair qualities (NVSwitch counted) — against the exhaustive optimum.
//!
//! `cargo bench -p gpupool-operator --bench allocator` prints two tables:
//! 1. single requests: how often each allocator hits the optimum, its mean quality ratio, wrong
//!    refusals, NVLink violations for `clique`, and allocations per second;
//! 2. a churn simulation per node type (jobs arrive and leave; `clique` requests), where
//!    fragmentation decides how many later requests still fit.

use gpupool::api::NvLinkMode;
use gpupool::placement::allocator::{Allocation, GpuRequest, NoFit, allocate, exhaustive_best};
use gpupool::placement::baselines::{first_fit, greedy};
use gpupool::topology::{GpuGraph, GpuSet, fixtures};
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

type Algo = fn(&GpuGraph, GpuSet, &GpuRequest) -> Result<Allocation, NoFit>;

struct Case {
    node: usize,
    free: GpuSet,
    req: GpuRequest,
}

#[derive(Default)]
struct Stats {
    optimal: usize,
    ratio_sum: f64,
    fit_exists: usize,
    false_nofit: usize,
    required_ok: usize,
    non_nvlink_required: usize,
    secs: f64,
    calls: usize,
}

fn main() {
    let nodes: Vec<(&str, GpuGraph)> = fixtures::all()
        .into_iter()
        .map(|(n, s)| (n, GpuGraph::from_spec(&s).unwrap()))
        .collect();
    let mut rng = Rng(0x6770_7570_6f6f_6c21);
    let mut cases = Vec::new();
    while cases.len() < 4000 {
        let node = rng.below(nodes.len() as u64) as usize;
        let g = &nodes[node].1;
        let busy_pct = [0u64, 25, 50][rng.below(3) as usize];
        let free = GpuSet::from_indexes((0..g.len()).filter(|_| rng.below(100) >= busy_pct));
        let sizes: Vec<usize> = [1, 2, 4, 8]
            .into_iter()
            .filter(|&s| s <= free.len())
            .collect();
        if sizes.is_empty() {
            continue;
        }
        let count = sizes[rng.below(sizes.len() as u64) as usize];
        let nvlink = if rng.below(2) == 0 {
            NvLinkMode::Clique
        } else {
            NvLinkMode::Preferred
        };
        cases.push(Case {
            node,
            free,
            req: GpuRequest::new(count, nvlink),
        });
    }
    let optimum: Vec<Result<Allocation, NoFit>> = cases
        .iter()
        .map(|c| exhaustive_best(&nodes[c.node].1, c.free, &c.req))
        .collect();

    let algos: [(&str, Algo); 4] = [
        ("gpupool", allocate),
        ("greedy (go-gpuallocator)", greedy),
        ("first-fit", first_fit),
        ("exhaustive optimum", exhaustive_best),
    ];
    println!(
        "single requests: {} over {} node types (sizes 1/2/4/8 that fit, clique/preferred, 0/25/50% busy)",
        cases.len(),
        nodes.len()
    );
    println!(
        "{:<26} {:>9} {:>11} {:>12} {:>16} {:>12}",
        "allocator", "optimal", "mean ratio", "false NoFit", "clique non-NV", "allocs/s"
    );
    for (name, algo) in algos {
        let mut st = Stats::default();
        let t0 = Instant::now();
        let results: Vec<_> = cases
            .iter()
            .map(|c| algo(&nodes[c.node].1, c.free, &c.req))
            .collect();
        st.secs = t0.elapsed().as_secs_f64();
        st.calls = cases.len();
        for ((c, r), opt) in cases.iter().zip(&results).zip(&optimum) {
            if c.req.nvlink == NvLinkMode::Clique
                && let Ok(a) = r
            {
                st.required_ok += 1;
                if !a.nvlink_connected {
                    st.non_nvlink_required += 1;
                }
            }
            let Ok(opt) = opt else { continue };
            st.fit_exists += 1;
            match r {
                Err(_) => st.false_nofit += 1,
                Ok(a) => {
                    let valid = c.req.nvlink != NvLinkMode::Clique || a.nvlink_connected;
                    if valid && a.set_quality == opt.set_quality {
                        st.optimal += 1;
                    }
                    st.ratio_sum += if opt.set_quality == 0 {
                        1.0
                    } else {
                        a.set_quality as f64 / opt.set_quality as f64
                    };
                }
            }
        }
        println!(
            "{:<26} {:>8.1}% {:>11.3} {:>12} {:>16} {:>12.0}",
            name,
            100.0 * st.optimal as f64 / st.fit_exists as f64,
            st.ratio_sum / st.fit_exists as f64,
            st.false_nofit,
            format!("{}/{}", st.non_nvlink_required, st.required_ok),
            st.calls as f64 / st.secs
        );
    }
    println!(
        "(optimal/ratio over the {} requests where a fit exists; a NoFit counts as ratio 0)",
        optimum.iter().filter(|o| o.is_ok()).count()
    );

    // Churn: one node per type, 3000 arrivals of `clique` jobs (sizes 1/2/4, 8 on 8-GPU nodes),
    // each holding its GPUs for 1..12 arrivals. Same event stream for every allocator.
    println!();
    println!(
        "churn: 3000 clique-NVLink arrivals per node type, each job holds its GPUs for 1..12 arrivals"
    );
    println!(
        "{:<20} {:<26} {:>10} {:>14} {:>16}",
        "node", "allocator", "accepted", "non-NVLink", "mean quality"
    );
    for (ni, (nname, g)) in nodes.iter().enumerate() {
        let mut erng = Rng(0xC0FF_EE00 + ni as u64);
        let sizes: Vec<usize> = [1, 2, 2, 4, 8]
            .into_iter()
            .filter(|&s| s <= g.len())
            .collect();
        let events: Vec<(usize, usize)> = (0..3000)
            .map(|_| {
                (
                    sizes[erng.below(sizes.len() as u64) as usize],
                    1 + erng.below(12) as usize,
                )
            })
            .collect();
        for (aname, algo) in [
            ("gpupool", allocate as Algo),
            ("greedy (go-gpuallocator)", greedy),
            ("first-fit", first_fit),
        ] {
            let mut running: Vec<(usize, GpuSet)> = Vec::new();
            let (mut accepted, mut non_nv, mut qsum, mut qn) = (0usize, 0usize, 0i64, 0i64);
            for (t, &(size, life)) in events.iter().enumerate() {
                running.retain(|(end, _)| *end > t);
                let used = running
                    .iter()
                    .fold(GpuSet::EMPTY, |m, (_, s)| GpuSet(m.0 | s.0));
                let free = g.all().minus(used);
                if let Ok(a) = algo(g, free, &GpuRequest::new(size, NvLinkMode::Clique)) {
                    accepted += 1;
                    if !a.nvlink_connected {
                        non_nv += 1;
                    }
                    if size > 1 {
                        qsum += a.quality;
                        qn += 1;
                    }
                    running.push((t + life, a.set));
                }
            }
            println!(
                "{:<20} {:<26} {:>9.1}% {:>14} {:>16.1}",
                nname,
                aname,
                100.0 * accepted as f64 / events.len() as f64,
                non_nv,
                qsum as f64 / qn.max(1) as f64
            );
        }
    }
}
