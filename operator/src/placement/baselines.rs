//! Baselines the allocator is measured against (benchmark and tests). Both return the same
//! [`Allocation`] as the allocator, scored on the true topology, so one objective judges all.

use super::allocator::{Allocation, Ctx, GpuRequest, NoFit};
use crate::api::PcieLevel;
use crate::topology::{GpuGraph, GpuSet};

/// First fit: the lowest free indexes. Topology-blind: it never refuses a `Required` request for
/// lack of NVLink, and so may hand out GPUs that are not NVLink-connected.
pub fn first_fit(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Allocation, NoFit> {
    let free = free.and(g.all());
    if req.count == 0 || free.len() < req.count {
        return Err(NoFit {
            reason: format!("{} GPUs free, {} requested", free.len(), req.count),
        });
    }
    let set = GpuSet::from_indexes(free.iter().take(req.count));
    Ok(Ctx::new(g, free).build(set, req.nvlink))
}

/// NVIDIA go-gpuallocator's pair score: PCIe level (10 across sockets … 60 same board) plus
/// 100 × the number of direct NVLinks. NVSwitch is not counted (as in go-gpuallocator).
pub fn go_pair_score(g: &GpuGraph, a: usize, b: usize) -> i64 {
    let l = g.link(a, b);
    let pcie = match l.pcie {
        PcieLevel::SameBoard => 60,
        PcieLevel::SingleSwitch => 50,
        PcieLevel::MultiSwitch => 40,
        PcieLevel::HostBridge => 30,
        PcieLevel::SameNuma => 20,
        PcieLevel::CrossSocket => 10,
    };
    pcie + 100 * i64::from(l.nvlinks)
}

/// Greedy in the style of go-gpuallocator: start from the best-scoring free pair, then keep adding
/// the GPU with the highest summed [`go_pair_score`] to the GPUs chosen so far (lowest index on
/// ties). For `Required` it only adds GPUs with a direct NVLink to every chosen GPU — its view of
/// NVLink, which misses NVSwitch — and gives up when none is left.
pub fn greedy(g: &GpuGraph, free: GpuSet, req: &GpuRequest) -> Result<Allocation, NoFit> {
    let free = free.and(g.all());
    if req.count == 0 || free.len() < req.count {
        return Err(NoFit {
            reason: format!("{} GPUs free, {} requested", free.len(), req.count),
        });
    }
    let required = req.nvlink.is_hard();
    let linked = |a: usize, b: usize| g.link(a, b).nvlinks > 0;
    let list = free.to_vec();
    let mut set = GpuSet::EMPTY;
    if req.count == 1 {
        set.insert(list[0]);
    } else {
        let mut best: Option<(i64, usize, usize)> = None;
        for (i, &a) in list.iter().enumerate() {
            for &b in &list[i + 1..] {
                if required && !linked(a, b) {
                    continue;
                }
                let s = go_pair_score(g, a, b);
                if best.is_none_or(|(bs, _, _)| s > bs) {
                    best = Some((s, a, b));
                }
            }
        }
        let Some((_, a, b)) = best else {
            return Err(NoFit {
                reason: "no directly NVLink-connected free pair".into(),
            });
        };
        set.insert(a);
        set.insert(b);
        while set.len() < req.count {
            let pick = free
                .minus(set)
                .iter()
                .filter(|&c| !required || set.iter().all(|p| linked(p, c)))
                .max_by_key(|&c| {
                    (
                        set.iter().map(|p| go_pair_score(g, p, c)).sum::<i64>(),
                        std::cmp::Reverse(c),
                    )
                });
            match pick {
                Some(c) => set.insert(c),
                None => {
                    return Err(NoFit {
                        reason: format!(
                            "cannot grow a directly NVLink-connected set to {}",
                            req.count
                        ),
                    });
                }
            }
        }
    }
    Ok(Ctx::new(g, free).build(set, req.nvlink))
}
