//! Expected GPU sets are worked out by hand from the fixture topologies (the link tables in
//! `deploy/topologies/*.yaml`), not copied from the allocator's output. Occupancy ("GPUs in use")
//! is given per test as a list of busy indexes, the way the agent's `status.gpusInUse` would.

use super::*;
use crate::api::GpuTopologyStatus;
use crate::api::NvLinkMode::{Preferred, Required};
use crate::placement::baselines;
use crate::topology::fixtures;

fn graph(name: &str) -> GpuGraph {
    GpuGraph::from_spec(&fixtures::get(name)).unwrap()
}

fn free_except(g: &GpuGraph, busy: &[usize]) -> GpuSet {
    g.all().minus(GpuSet::from_indexes(busy.iter().copied()))
}

fn pick(g: &GpuGraph, busy: &[usize], count: usize, mode: NvLinkMode) -> Vec<usize> {
    allocate(g, free_except(g, busy), &GpuRequest::new(count, mode))
        .unwrap_or_else(|e| panic!("{count} GPUs {mode} with {busy:?} busy: {e}"))
        .gpus
}

fn refuse(g: &GpuGraph, busy: &[usize], count: usize, mode: NvLinkMode) -> String {
    match allocate(g, free_except(g, busy), &GpuRequest::new(count, mode)) {
        Ok(a) => panic!("expected no fit for {count} GPUs {mode}, got {:?}", a.gpus),
        Err(e) => e.reason,
    }
}

#[test]
fn dgx1_required_sets() {
    let g = graph("dgx1-v100");
    // 4 required: only the quads are fully NVLink-connected; both score 472 (2×NV2 HostBridge,
    // NV2 same switch, NV1 same switch, 2×NV1 HostBridge) → the lower quad.
    let a = allocate(&g, g.all(), &GpuRequest::new(4, Required)).unwrap();
    assert_eq!(a.gpus, vec![0, 1, 2, 3]);
    assert_eq!(a.set_quality, 103 + 103 + 105 + 55 + 53 + 53);
    assert!(a.nvlink_connected);
    assert_eq!(a.largest_free_nvlink_set_after, 4);
    // 2 required: the best pairs are NV2 on a shared PCIe switch: 2-3 and 6-7 → 2-3.
    assert_eq!(pick(&g, &[], 2, Required), vec![2, 3]);
    // 3 required: a triangle inside a quad. {0,2,3} = 53+103+105 = 261 and {1,2,3} = 103+53+105
    // = 261 beat {0,1,2} = {0,1,3} = 211 (the mirror triangles in 4-7 tie with them); every
    // best triangle leaves the same remainder shape (a lone GPU plus the other quad), so the
    // lowest indexes win.
    assert_eq!(pick(&g, &[], 3, Required), vec![0, 2, 3]);
    // 8 required cannot be met (largest NVLink clique is a quad); preferred takes all eight.
    let why = refuse(&g, &[], 8, Required);
    assert!(
        why.contains("largest NVLink-connected GPU set has 4 GPUs"),
        "{why}"
    );
    assert_eq!(pick(&g, &[], 8, Preferred), (0..8).collect::<Vec<_>>());
}

#[test]
fn dgx1_occupancy() {
    let g = graph("dgx1-v100");
    // GPU 0 busy: the only free quad is 4-7.
    assert_eq!(pick(&g, &[0], 4, Required), vec![4, 5, 6, 7]);
    // One GPU busy in each quad: no four free GPUs are pairwise NVLinked.
    let why = refuse(&g, &[0, 4], 4, Required);
    assert!(
        why.contains("largest free NVLink-connected set has 3 GPUs"),
        "{why}"
    );
    // Preferred still gets four GPUs: the free triangle 1-2-3 (261) plus GPU 5, which has an NV2
    // to 1: 261 + 101 + 1 + 1 = 364. The mirror {1,5,6,7} also has 364 and leaves the same
    // shape behind (the pair 6-7 vs 2-3, both NV2 on one switch); {1,2,5,6} = 360 would strand
    // 3 and 7. Lowest of the tie: {1,2,3,5}.
    assert_eq!(pick(&g, &[0, 4], 4, Preferred), vec![1, 2, 3, 5]);
}

#[test]
fn two_gpus_leave_the_only_free_quad_alone() {
    let g = graph("dgx1-v100");
    // 4 and 7 busy: free are the quad 0-3 and the NV2 pair 5-6. The single best pair is 2-3
    // (NV2, same switch, 105) but taking it destroys the only free 4-GPU NVLink clique;
    // 5-6 (NV2 via host bridge, 103) is nearly as good and keeps the quad for a 4-GPU job.
    assert_eq!(pick(&g, &[4, 7], 2, Required), vec![5, 6]);
    assert_eq!(pick(&g, &[4, 7], 2, Preferred), vec![5, 6]);
    // The myopic optimum would have taken 2-3.
    let opt = exhaustive_best(&g, free_except(&g, &[4, 7]), &GpuRequest::new(2, Required)).unwrap();
    assert_eq!(opt.gpus, vec![2, 3]);
    // Afterwards the quad is still there.
    assert_eq!(pick(&g, &[4, 7, 5, 6], 4, Required), vec![0, 1, 2, 3]);
    // A single GPU comes from the leftover pair, not the quad: GPU 6 (GPU 5 keeps its NV2 to 1;
    // taking 5 would leave 6 with only NV1 links).
    assert_eq!(pick(&g, &[4, 7], 1, Preferred), vec![6]);
}

#[test]
fn bridged_pairs() {
    let g = graph("pcie-a100-bridged");
    // 2 GPUs: a bridged pair (602), both equal → 0-1.
    assert_eq!(pick(&g, &[], 2, Preferred), vec![0, 1]);
    assert_eq!(pick(&g, &[], 2, Required), vec![0, 1]);
    assert_eq!(pick(&g, &[], 2, NvLinkMode::None), vec![0, 1]);
    // GPU 0 busy: the intact pair 2-3, never 1 with a PCIe peer.
    assert_eq!(pick(&g, &[0], 2, Required), vec![2, 3]);
    assert_eq!(pick(&g, &[0], 2, Preferred), vec![2, 3]);
    // One GPU: take the orphan 1, keep the bridged pair.
    assert_eq!(pick(&g, &[0], 1, Preferred), vec![1]);
    // 0 and 2 busy: no free bridged pair.
    let why = refuse(&g, &[0, 2], 2, Required);
    assert!(
        why.contains("no 2 free GPUs on node pcie-a100-0 are all NVLink-connected"),
        "{why}"
    );
    assert!(
        why.contains("largest free NVLink-connected set has 1 GPUs"),
        "{why}"
    );
    assert_eq!(pick(&g, &[0, 2], 2, Preferred), vec![1, 3]);
    // 4 GPUs required: the node's NVLink cliques are pairs.
    assert!(refuse(&g, &[], 4, Required).contains("largest NVLink-connected GPU set has 2 GPUs"));
}

#[test]
fn pcie_only_node() {
    let g = graph("pcie-l40s");
    let why = refuse(&g, &[], 2, Required);
    assert_eq!(
        why,
        "node pcie-l40s-0 has no NVLink (PCIe only); the request needs 2 NVLink-connected GPUs"
    );
    // One GPU needs no NVLink.
    assert_eq!(pick(&g, &[], 1, Required), vec![0]);
    // Preferred: a pair on one PCIe switch; four GPUs on one socket (5+5+4×2 = 18 beats
    // two switch pairs across sockets, 5+5+4×1 = 14).
    assert_eq!(pick(&g, &[], 2, Preferred), vec![0, 1]);
    assert_eq!(pick(&g, &[], 4, Preferred), vec![0, 1, 2, 3]);
    // 0 busy: 1 is alone on its switch; the next intact switch pair is 2-3.
    assert_eq!(pick(&g, &[0], 2, Preferred), vec![2, 3]);
}

#[test]
fn nvswitch_node() {
    let g = graph("dgx-h100");
    assert_eq!(pick(&g, &[], 2, Required), vec![0, 1]);
    // Four on one socket: 2 switch pairs (905) + 4 same-NUMA pairs (902).
    let a = allocate(&g, g.all(), &GpuRequest::new(4, Required)).unwrap();
    assert_eq!(a.gpus, vec![0, 1, 2, 3]);
    assert_eq!(a.quality, (2 * 905 + 4 * 902) / 6);
    assert_eq!(pick(&g, &[], 8, Required), (0..8).collect::<Vec<_>>());
    // 1, 2, 5, 6 busy: 0-3 (same socket, 902) beats 0-4 (901); 0-3 and 4-7 tie → 0-3.
    assert_eq!(pick(&g, &[1, 2, 5, 6], 2, Required), vec![0, 3]);
    // go-gpuallocator's view misses NVSwitch: the greedy baseline finds no NVLink pair at all.
    let greedy = baselines::greedy(&g, g.all(), &GpuRequest::new(2, Required));
    assert!(greedy.is_err());
    assert!(
        exhaustive_best(&g, g.all(), &GpuRequest::new(8, Required))
            .unwrap()
            .nvlink_connected
    );
}

#[test]
fn request_errors_are_clear() {
    let g = graph("dgx1-v100");
    assert_eq!(refuse(&g, &[], 0, Preferred), "the request asks for 0 GPUs");
    assert_eq!(
        refuse(&g, &[], 9, Preferred),
        "node dgx1-v100-0 has 8 GPUs; the request needs 9"
    );
    assert_eq!(
        refuse(&g, &[0, 1, 2, 3, 4], 4, NvLinkMode::None),
        "only 3 of 8 GPUs are free on node dgx1-v100-0; the request needs 4"
    );
}

#[test]
fn deterministic_and_independent_of_listing_order() {
    for (name, spec) in fixtures::all() {
        let g = GpuGraph::from_spec(&spec).unwrap();
        // Same topology with GPUs and links listed backwards and pair ends swapped.
        let mut rev = spec.clone();
        rev.gpus.reverse();
        rev.links.reverse();
        for l in &mut rev.links {
            std::mem::swap(&mut l.a, &mut l.b);
        }
        let g2 = GpuGraph::from_spec(&rev).unwrap();
        for busy in [vec![], vec![1], vec![0, 5], vec![2, 3, 6]] {
            let busy: Vec<usize> = busy.into_iter().filter(|&b| b < g.len()).collect();
            for count in 1..=g.len() {
                for mode in [Required, Preferred, NvLinkMode::None] {
                    let req = GpuRequest::new(count, mode);
                    let a = allocate(&g, free_except(&g, &busy), &req);
                    assert_eq!(a, allocate(&g, free_except(&g, &busy), &req), "{name}");
                    assert_eq!(
                        a,
                        allocate(&g2, free_except(&g2, &busy), &req),
                        "{name} reversed"
                    );
                    if let Ok(a) = &a {
                        assert_eq!(a.gpus.len(), count);
                        assert!(a.set.is_subset(free_except(&g, &busy)));
                        if mode == Required {
                            assert!(a.nvlink_connected, "{name}: {:?}", a.gpus);
                        }
                    }
                    // A required request fits exactly when the reference optimum finds a set.
                    assert_eq!(
                        a.is_ok(),
                        exhaustive_best(&g, free_except(&g, &busy), &req).is_ok(),
                        "{name}"
                    );
                }
            }
        }
    }
}

#[test]
fn allocate_on_a_published_topology_uses_status() {
    let spec = fixtures::get("pcie-a100-bridged");
    let mut t = GpuTopology::new("pcie-a100-0", spec.clone());
    let req = GpuRequest::new(2, Required);
    assert_eq!(
        allocate_on(&t, &req).unwrap().uuids,
        vec![spec.gpus[0].uuid.clone(), spec.gpus[1].uuid.clone()]
    );
    t.status = Some(GpuTopologyStatus {
        gpu_count: 4,
        gpus_in_use: vec![spec.gpus[1].uuid.clone()],
        last_update_time: None,
        pod_devices: Vec::new(),
    });
    assert_eq!(allocate_on(&t, &req).unwrap().gpus, vec![2, 3]);
    t.spec.gpus.clear();
    assert!(
        allocate_on(&t, &req)
            .unwrap_err()
            .reason
            .starts_with("invalid GPU topology")
    );
}

#[test]
fn large_nodes_use_the_heuristic_and_stay_valid() {
    // 32 GPUs as four 8-GPU DGX-1 cube-meshes side by side (C(32, 4) > EXACT_LIMIT).
    let base = fixtures::get("dgx1-v100");
    let mut spec = base.clone();
    spec.gpus.clear();
    spec.links.clear();
    for k in 0..4i32 {
        for gpu in &base.gpus {
            let mut g = gpu.clone();
            g.index += 8 * k;
            g.uuid = format!("{}-{k}", gpu.uuid);
            spec.gpus.push(g);
        }
        for l in &base.links {
            let mut l = l.clone();
            l.a += 8 * k;
            l.b += 8 * k;
            spec.links.push(l);
        }
    }
    let g = GpuGraph::from_spec(&spec).unwrap();
    let a = allocate(&g, g.all(), &GpuRequest::new(10, Preferred)).unwrap();
    assert_eq!(a.gpus.len(), 10);
    let q = allocate(&g, g.all(), &GpuRequest::new(4, Required)).unwrap();
    assert!(q.nvlink_connected);
    assert_eq!(q.set_quality, 472);
}

#[test]
fn busy_fixture_keeps_its_quad() {
    // deploy/topologies/dgx1-v100-busy.yaml: GPUs 4 and 7 in use (status.gpusInUse).
    let t = fixtures::dgx1_v100_busy();
    assert_eq!(
        t.status.as_ref().unwrap().gpus_in_use,
        vec![t.spec.gpus[4].uuid.clone(), t.spec.gpus[7].uuid.clone()]
    );
    assert_eq!(
        allocate_on(&t, &GpuRequest::new(2, Required)).unwrap().gpus,
        vec![5, 6]
    );
    assert_eq!(
        allocate_on(&t, &GpuRequest::new(4, Required)).unwrap().gpus,
        vec![0, 1, 2, 3]
    );
    assert!(
        allocate_on(&t, &GpuRequest::new(7, Preferred))
            .unwrap_err()
            .reason
            .contains("only 6 of 8 GPUs are free")
    );
}
