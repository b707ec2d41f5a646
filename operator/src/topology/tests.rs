//! Expected values below are read off the fixture topologies by hand (see the comments in
//! `deploy/topologies/*.yaml`), not copied from the code's output.

use super::*;
use crate::api::{Gpu, GpuLink, GpuTopologySpec};

fn graph(name: &str) -> GpuGraph {
    GpuGraph::from_spec(&fixtures::get(name)).unwrap()
}

fn set(v: &[usize]) -> GpuSet {
    GpuSet::from_indexes(v.iter().copied())
}

#[test]
fn fixtures_parse_validate_and_have_unique_uuids() {
    let mut uuids = std::collections::BTreeSet::new();
    for (name, spec) in fixtures::all() {
        let g = GpuGraph::from_spec(&spec).unwrap_or_else(|e| panic!("{name}: {e}"));
        let expect = match name {
            "pcie-a100-bridged" | "workstation-a6000" => 4,
            "dgx2-v100" => 16,
            _ => 8,
        };
        assert_eq!(g.len(), expect, "{name}");
        assert_eq!(spec.source, crate::api::TopologySource::File);
        for gpu in &spec.gpus {
            assert!(gpu.uuid.starts_with("GPU-"), "{name}: {}", gpu.uuid);
            assert!(
                uuids.insert(gpu.uuid.clone()),
                "{name}: duplicate uuid {}",
                gpu.uuid
            );
        }
        // Every unordered pair is listed exactly once.
        assert_eq!(spec.links.len(), g.len() * (g.len() - 1) / 2, "{name}");
    }
}

#[test]
fn dgx1_is_the_hybrid_cube_mesh() {
    let g = graph("dgx1-v100");
    // Six NVLinks per V100.
    for a in 0..8 {
        let total: u32 = (0..8)
            .filter(|&b| b != a)
            .map(|b| g.link(a, b).nvlinks)
            .sum();
        assert_eq!(total, 6, "GPU {a}");
    }
    // Doubled links: 0-3, 1-2, 2-3, 0-4, 1-5 and the mirror quad 4-7, 5-6, 6-7.
    for (a, b) in [
        (0, 3),
        (1, 2),
        (2, 3),
        (0, 4),
        (1, 5),
        (4, 7),
        (5, 6),
        (6, 7),
    ] {
        assert_eq!(g.link(a, b).nvlinks, 2, "{a}-{b}");
    }
    for (a, b) in [
        (0, 1),
        (0, 2),
        (1, 3),
        (2, 6),
        (3, 7),
        (4, 5),
        (4, 6),
        (5, 7),
    ] {
        assert_eq!(g.link(a, b).nvlinks, 1, "{a}-{b}");
    }
    assert!(!g.nvlinked(0, 5) && !g.nvlinked(3, 4) && !g.nvlinked(1, 6));
    // q = 50 × links + PCIe points: NV2 on a shared switch 105, NV2 via host bridge 103,
    // NV2 across sockets 101, NV1 on a shared switch 55, PCIe across sockets 1.
    assert_eq!(g.pair_quality(2, 3), 105);
    assert_eq!(g.pair_quality(0, 3), 103);
    assert_eq!(g.pair_quality(0, 4), 101);
    assert_eq!(g.pair_quality(0, 1), 55);
    assert_eq!(g.pair_quality(0, 5), 1);
    assert_eq!(g.pair_quality(5, 0), 1);
    // Maximal NVLink cliques: the two quads and the four i↔i+4 cross pairs.
    assert_eq!(
        g.nvlink_cliques().to_vec(),
        vec![
            set(&[0, 1, 2, 3]),
            set(&[4, 5, 6, 7]),
            set(&[0, 4]),
            set(&[1, 5]),
            set(&[2, 6]),
            set(&[3, 7])
        ]
    );
    assert_eq!(g.largest_free_nvlink_clique(g.all()), 4);
    assert_eq!(g.largest_free_nvlink_clique(set(&[1, 2, 3, 5, 6, 7])), 3);
    // All eight form one NVLink island; with 0-3 busy, the other quad still hangs together.
    assert_eq!(g.free_nvlink_island_sizes(g.all()), vec![8]);
    assert_eq!(g.free_nvlink_island_sizes(set(&[4, 5, 6, 7])), vec![4]);
}

#[test]
fn nvswitch_counts_as_full_nvlink_bandwidth() {
    let g = graph("dgx-h100");
    // 18 links through the switches → 900, plus PCIe points (pairs share a switch).
    assert_eq!(g.pair_quality(0, 1), 905);
    assert_eq!(g.pair_quality(0, 2), 902);
    assert_eq!(g.pair_quality(3, 4), 901);
    assert!((0..8).all(|a| (0..8).all(|b| a == b || g.nvlinked(a, b))));
    assert_eq!(g.nvlink_cliques().to_vec(), vec![g.all()]);
    assert!(g.is_nvlink_clique(g.all()));
}

#[test]
fn bridged_and_pcie_only_nodes() {
    let g = graph("pcie-a100-bridged");
    assert_eq!(g.pair_quality(0, 1), 602);
    assert_eq!(g.pair_quality(0, 2), 1);
    assert_eq!(
        g.nvlink_cliques().to_vec(),
        vec![set(&[0, 1]), set(&[2, 3])]
    );
    assert_eq!(
        g.free_nvlink_islands(g.all()),
        vec![set(&[0, 1]), set(&[2, 3])]
    );
    assert_eq!(g.free_nvlink_island_sizes(set(&[0, 2, 3])), vec![2, 1]);

    let l = graph("pcie-l40s");
    assert!(!l.has_nvlink());
    assert!(l.nvlink_cliques().is_empty());
    assert_eq!(l.free_nvlink_island_sizes(l.all()), vec![1; 8]);
    assert_eq!(l.largest_free_nvlink_clique(l.all()), 1);
    assert_eq!(l.largest_free_nvlink_clique(GpuSet::EMPTY), 0);
    assert_eq!(l.pair_quality(0, 1), 5);
    assert_eq!(l.pair_quality(0, 2), 2);
    assert_eq!(l.pair_quality(0, 7), 1);
}

#[test]
fn free_set_from_in_use_uuids() {
    let spec = fixtures::get("dgx1-v100");
    let g = GpuGraph::from_spec(&spec).unwrap();
    let busy = vec![
        spec.gpus[4].uuid.clone(),
        spec.gpus[7].uuid.clone(),
        "GPU-not-on-this-node".to_string(),
    ];
    assert_eq!(g.free_set(&busy), set(&[0, 1, 2, 3, 5, 6]));
    assert_eq!(g.free_set::<String>(&[]), g.all());
    assert_eq!(g.uuids(set(&[4])), vec![spec.gpus[4].uuid.clone()]);
}

fn tiny(gpus: &[i32], links: Vec<GpuLink>) -> GpuTopologySpec {
    GpuTopologySpec {
        node_name: "n".into(),
        source: Default::default(),
        driver_version: None,
        gpus: gpus
            .iter()
            .map(|&i| Gpu {
                index: i,
                uuid: format!("GPU-{i}"),
                ..Default::default()
            })
            .collect(),
        links,
    }
}

#[test]
fn validation() {
    let l = |a, b| GpuLink {
        a,
        b,
        nvlinks: 1,
        ..Default::default()
    };
    assert!(matches!(
        GpuGraph::from_spec(&tiny(&[], vec![])),
        Err(TopologyError::NoGpus(_))
    ));
    assert!(matches!(
        GpuGraph::from_spec(&tiny(&[0, 2], vec![])),
        Err(TopologyError::BadIndex { index: 2, .. })
    ));
    assert!(matches!(
        GpuGraph::from_spec(&tiny(&[0, 0], vec![])),
        Err(TopologyError::BadIndex { index: 0, .. })
    ));
    assert!(matches!(
        GpuGraph::from_spec(&tiny(&[0, 1], vec![l(0, 2)])),
        Err(TopologyError::LinkOutOfRange { .. })
    ));
    assert!(matches!(
        GpuGraph::from_spec(&tiny(&[0, 1], vec![l(1, 1)])),
        Err(TopologyError::LinkOutOfRange { .. })
    ));
    assert!(matches!(
        GpuGraph::from_spec(&tiny(&[0, 1], vec![l(0, 1), l(1, 0)])),
        Err(TopologyError::DuplicateLink { a: 0, b: 1 })
    ));
    // Indexes may come in any order; a missing pair is cross-socket PCIe without NVLink.
    let g = GpuGraph::from_spec(&tiny(&[2, 0, 1], vec![l(1, 0)])).unwrap();
    assert_eq!(&*g.gpus()[2].uuid, "GPU-2");
    assert!(g.nvlinked(0, 1));
    assert_eq!(
        g.link(0, 2),
        PairLink {
            nvlinks: 0,
            nvswitch: false,
            pcie: PcieLevel::CrossSocket
        }
    );
    assert_eq!(g.pair_quality(0, 2), 1);
}

#[test]
fn whole_object_or_bare_spec() {
    let obj = "apiVersion: gpupool.io/v1alpha1\nkind: GpuTopology\nmetadata: {name: x}\nspec:\n  nodeName: x\n  gpus: [{index: 0, uuid: GPU-a, model: m, memoryMiB: 1}]\n";
    assert_eq!(spec_from_yaml(obj).unwrap().node_name, "x");
    let bare = "nodeName: y\ngpus: [{index: 0, uuid: GPU-a, model: m, memoryMiB: 1}]\n";
    assert_eq!(spec_from_yaml(bare).unwrap().node_name, "y");
}

#[test]
fn published_fixtures_read_as_their_matrices_say() {
    // DGX-2: NV6 to every other GPU through NVSwitch → 6 × 50 + PCIe proximity; one clique of 16.
    let g = graph("dgx2-v100");
    assert_eq!(g.pair_quality(0, 1), 300 + 5);
    assert_eq!(g.pair_quality(0, 2), 300 + 4);
    assert_eq!(g.pair_quality(0, 7), 300 + 2);
    assert_eq!(g.pair_quality(0, 8), 300 + 1);
    assert_eq!(g.nvlink_cliques(), &[g.all()]);
    assert_eq!(g.ring_bottleneck(g.all()), 301);
    // DGX A100: NV12 everywhere (600), PXB pairs on one switch complex.
    let a = graph("dgx-a100");
    assert_eq!(a.pair_quality(0, 1), 600 + 4);
    assert_eq!(a.pair_quality(0, 2), 600 + 1);
    assert_eq!(a.largest_free_nvlink_clique(a.all()), 8);
    // HGX H100: NV18 everywhere, every pair SYS over PCIe.
    let h = graph("hgx-h100");
    assert!((0..8).all(|x| (0..8).all(|y| x == y || h.pair_quality(x, y) == 901)));
    // Workstation: one bridged pair (NV4 = 200 + 2), the rest PCIe.
    let w = graph("workstation-a6000");
    assert_eq!(w.pair_quality(0, 1), 202);
    assert_eq!(w.nvlink_cliques(), &[set(&[0, 1])]);
    assert_eq!(w.largest_free_nvlink_clique(w.all()), 2);
    assert_eq!(w.min_nvlink_quality(), Some(202));
}

#[test]
fn shape_fingerprint_ignores_names_and_is_stable() {
    let spec = fixtures::get("dgx-h100");
    let mut twin = spec.clone();
    twin.node_name = "other".into();
    for g in &mut twin.gpus {
        g.uuid.push_str("-x");
    }
    let (a, b) = (
        GpuGraph::from_spec(&spec).unwrap(),
        GpuGraph::from_spec(&twin).unwrap(),
    );
    assert_eq!(a.shape_fingerprint(), b.shape_fingerprint());
    assert_eq!(a.shape_id(), b.shape_id());
    assert!(a.same_shape(&b));
    // One PCIe level changed: another shape.
    let mut moved = spec.clone();
    moved.links[0].pcie = crate::api::PcieLevel::CrossSocket;
    let m = GpuGraph::from_spec(&moved).unwrap();
    assert_ne!(m.shape_fingerprint(), a.shape_fingerprint());
    assert_ne!(m.shape_id(), a.shape_id());
    // Every fixture has its own shape.
    let ids: std::collections::BTreeSet<u64> = fixtures::all()
        .iter()
        .map(|(_, s)| GpuGraph::from_spec(s).unwrap().shape_fingerprint())
        .collect();
    assert_eq!(ids.len(), fixtures::all().len());
}

#[test]
fn ring_bottleneck_and_nvlink_rings_on_the_cube_mesh() {
    let g = graph("dgx1-v100");
    // The quad 0-3: GPU 0 has one NV2 inside it (to 3), so its ring uses 0-1 (NV1, 55) or 0-2
    // (NV1, 53): best 0-3-2-1-0 = 103, 105, 103, 55 → 55.
    assert_eq!(g.ring_bottleneck(set(&[0, 1, 2, 3])), 55);
    // All eight: the NV2 links alone form a ring, 0-3-2-1-5-6-7-4-0, whose weakest hops are the
    // cross-socket NV2s (101).
    assert!(g.has_nvlink_ring(g.all()));
    assert_eq!(g.ring_bottleneck(g.all()), 101);
    // {0,1,2,3,4}: GPU 4's only NVLink in the set is to 0 → PCIe hop (4-1 cross-socket = 1).
    assert!(!g.has_nvlink_ring(set(&[0, 1, 2, 3, 4])));
    assert_eq!(g.ring_bottleneck(set(&[0, 1, 2, 3, 4])), 1);
    // Pairs and singles.
    assert_eq!(g.ring_bottleneck(set(&[0, 4])), 101);
    assert_eq!(g.ring_bottleneck(set(&[0])), 0);
    assert!(g.has_nvlink_ring(set(&[5])));
    assert!(!g.has_nvlink_ring(set(&[0, 5])));
}

#[test]
fn clique_enumeration_is_exact_beyond_four_thousand() {
    // 26 GPUs in 13 pairs where every GPU is NVLinked to every GPU except its partner (the
    // cocktail-party graph): 2^13 = 8192 maximal cliques of 13 GPUs. Enumeration used to stop at
    // 4096 without saying so.
    let n = 26;
    let gpus: Vec<i32> = (0..n).collect();
    let mut links = Vec::new();
    for a in 0..n {
        for b in a + 1..n {
            if b != a + 1 || a % 2 == 1 {
                links.push(GpuLink {
                    a,
                    b,
                    nvlinks: 1,
                    nvswitch: false,
                    pcie: crate::api::PcieLevel::SameNuma,
                });
            }
        }
    }
    let g = GpuGraph::from_spec(&tiny(&gpus, links)).unwrap();
    assert_eq!(g.nvlink_cliques().len(), 8192);
    assert!(g.nvlink_cliques().iter().all(|k| k.len() == 13));
    assert_eq!(g.largest_free_nvlink_clique(g.all()), 13);
}
