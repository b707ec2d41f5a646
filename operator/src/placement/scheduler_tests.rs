//! Cross-node ranking and replica spread, on the fixture topologies. Each test states the
//! behaviour a pool owner expects; several reproduce what the ranking got wrong when it compared
//! within-node scores across nodes.

use super::*;
use crate::api::{ReplicaPlacement, SpreadPolicy};
use crate::placement::rank::WholeNodes;
use crate::topology::fixtures;

/// A node of fixture `fixture` called `name`, with the given GPU indexes busy.
// `.into()` keeps this working whether the candidate holds the graph or an `Arc` of it.
#[allow(clippy::useless_conversion)]
fn node(fixture: &str, name: &str, busy: &[usize]) -> NodeCandidate {
    let mut spec = fixtures::get(fixture);
    spec.node_name = name.into();
    for g in &mut spec.gpus {
        g.uuid = format!("{name}-gpu{}", g.index);
    }
    let graph = GpuGraph::from_spec(&spec).unwrap();
    let free = graph
        .all()
        .minus(GpuSet::from_indexes(busy.iter().copied()));
    NodeCandidate {
        name: name.into(),
        model: spec.gpus[0].model.as_str().into(),
        memory_mib: spec.gpus[0].memory_mib,
        graph: graph.into(),
        free,
    }
}

fn member(name: &str, nodes: Vec<NodeCandidate>) -> ClusterCandidate {
    let mut c = ClusterCandidate {
        name: name.into(),
        labels: BTreeMap::new(),
        price: None,
        nodes,
        skipped: Vec::new(),
        whole_nodes: Default::default(),
    };
    recount(&mut c);
    c
}

/// Counts the member's whole NVLink nodes (as the scheduler's cache does).
fn recount(c: &mut ClusterCandidate) {
    c.whole_nodes = Default::default();
    for n in &c.nodes {
        c.whole_nodes.add_nodes(&n.graph, n.free, 1);
    }
}

fn job(gpus: usize, nvlink: NvLinkMode) -> JobRequest {
    JobRequest {
        gpus_per_pod: gpus,
        nvlink,
        gpu: GpuSelector::default(),
        cluster_selector: BTreeMap::new(),
    }
}

/// Marks the GPUs of `p` as taken in `cands`.
fn take(cands: &mut [ClusterCandidate], cluster: &str, p: &PodPlacement) {
    let c = cands.iter_mut().find(|c| c.name == cluster).unwrap();
    let n = c.nodes.iter_mut().find(|n| *n.name == *p.node).unwrap();
    let set = GpuSet::from_indexes(p.gpu_uuids.iter().filter_map(|u| n.graph.index_of(u)));
    assert!(
        set.is_subset(n.free),
        "{:?} not free on {}",
        p.gpu_uuids,
        p.node
    );
    n.free = n.free.minus(set);
    recount(c);
}

fn gang(cands: &mut [ClusterCandidate], req: &JobRequest, pods: usize) -> ClusterChoice {
    let ix: Vec<i32> = (0..pods as i32).collect();
    let ch = place_gang(cands, req, &ix).unwrap_or_else(|e| panic!("unschedulable: {e}"));
    for p in &ch.pods {
        take(cands, &ch.cluster, p);
    }
    ch
}

fn idle_nodes(cands: &[ClusterCandidate]) -> usize {
    cands
        .iter()
        .flat_map(|c| &c.nodes)
        .filter(|n| n.free == n.graph.all())
        .count()
}

#[test]
fn one_gpu_jobs_fill_partly_used_nodes_before_breaking_idle_ones() {
    // 4 idle DGX H100 and 4 with 2 GPUs free: eight 1-GPU jobs fit exactly in the 8 free slots
    // of the half-used nodes. The within-node score alone preferred idle nodes (−121 vs −474).
    let mut nodes = Vec::new();
    for i in 0..4 {
        nodes.push(node("dgx-h100", &format!("idle-{i}"), &[]));
        nodes.push(node("dgx-h100", &format!("used-{i}"), &[0, 1, 2, 3, 4, 5]));
    }
    let mut cands = vec![member("m", nodes)];
    for _ in 0..8 {
        let ch = gang(&mut cands, &job(1, NvLinkMode::Preferred), 1);
        assert!(ch.pods[0].node.starts_with("used-"), "{:?}", ch.pods[0]);
    }
    assert_eq!(idle_nodes(&cands), 4);
    // So an 8-GPU gang still finds whole nodes: four of them.
    for _ in 0..4 {
        gang(&mut cands, &job(8, NvLinkMode::Clique), 1);
    }
}

#[test]
fn best_fit_across_members_too() {
    // A gang of 2×4 on a member whose two nodes have exactly 4 free each, not on the member
    // with an idle node; a single 8-GPU worker on the idle node (it fills it).
    let mut cands = vec![
        member("a-idle", vec![node("dgx-h100", "a0", &[])]),
        member(
            "b-halves",
            vec![
                node("dgx-h100", "b0", &[0, 1, 2, 3]),
                node("dgx-h100", "b1", &[4, 5, 6, 7]),
            ],
        ),
    ];
    let ch = gang(&mut cands, &job(4, NvLinkMode::Clique), 2);
    assert_eq!(ch.cluster, "b-halves");
    let ch = gang(&mut cands, &job(8, NvLinkMode::Clique), 1);
    assert_eq!(ch.cluster, "a-idle");
}

#[test]
fn preferred_multi_gpu_jobs_go_to_an_idle_nvlink_node_not_a_pcie_one() {
    // Within-node scores: an idle DGX-1 scored −41/−146/−339 for 2/4/8 GPUs and an idle L40S
    // 5/3/1, so the PCIe-only node won every time.
    for gpus in [2, 4, 8] {
        let mut cands = vec![member(
            "m",
            vec![
                node("pcie-l40s", "l40s", &[]),
                node("dgx1-v100", "dgx1", &[]),
            ],
        )];
        let ch = gang(&mut cands, &job(gpus, NvLinkMode::Preferred), 1);
        assert_eq!(ch.pods[0].node, "dgx1", "{gpus} GPUs");
        // And across members.
        let mut cands = vec![
            member("a", vec![node("pcie-l40s", "l40s", &[])]),
            member("b", vec![node("dgx1-v100", "dgx1", &[])]),
        ];
        assert_eq!(
            gang(&mut cands, &job(gpus, NvLinkMode::Preferred), 1).cluster,
            "b"
        );
    }
    // With nvlink: none the job does not care: best fit takes the PCIe node that it fills.
    let mut cands = vec![member(
        "m",
        vec![
            node("dgx1-v100", "dgx1", &[]),
            node("pcie-l40s", "l40s", &[0, 1, 2, 3, 4, 5]),
        ],
    )];
    assert_eq!(
        gang(&mut cands, &job(2, NvLinkMode::None), 1).pods[0].node,
        "l40s"
    );
}

#[test]
fn small_pods_fill_small_nodes_before_taking_gpus_of_big_ones() {
    // A DGX H100 with `busy` GPUs in use and an idle A6000 workstation (4 GPUs, GPUs 0–1
    // bridged). Best fit alone put small jobs on the H100 when it was fuller, so the H100 could
    // take an 8-GPU worker only after they had all ended too; the workstation never can.
    let pool = |busy: &[usize]| {
        vec![member(
            "m",
            vec![
                node("dgx-h100", "h100", busy),
                node("workstation-a6000", "ws", &[]),
            ],
        )]
    };
    let mut cands = pool(&[0, 1, 2, 3, 4, 5]);
    for _ in 0..4 {
        let ch = gang(&mut cands, &job(1, NvLinkMode::Preferred), 1);
        assert_eq!(ch.pods[0].node, "ws");
    }
    // The workstation is full; the next one goes to the H100.
    let ch = gang(&mut cands, &job(1, NvLinkMode::Preferred), 1);
    assert_eq!(ch.pods[0].node, "h100");

    // A `preferred` pair takes the workstation's bridged NVLink pair …
    let mut cands = pool(&[0, 1, 2, 3, 4, 5]);
    let ch = gang(&mut cands, &job(2, NvLinkMode::Preferred), 1);
    assert_eq!(ch.pods[0].node, "ws");
    assert_eq!(ch.pods[0].gpu_uuids, ["ws-gpu0", "ws-gpu1"]);
    // … but the NVLink class still comes first: with only the PCIe pair left there, the next
    // pair gets NVLink on the H100. Without an NVLink wish it takes the PCIe pair.
    let mut none = cands.clone();
    let ch = gang(&mut cands, &job(2, NvLinkMode::Preferred), 1);
    assert_eq!(ch.pods[0].node, "h100");
    let ch = gang(&mut none, &job(2, NvLinkMode::None), 1);
    assert_eq!(ch.pods[0].node, "ws");

    // A 4-GPU `preferred` job gets an NVLink ring on the H100 (the workstation has none), and
    // with `nvlink: none` the workstation, although the H100 is as full.
    let mut cands = pool(&[0, 1, 2, 3]);
    assert_eq!(
        gang(&mut cands, &job(4, NvLinkMode::Preferred), 1).pods[0].node,
        "h100"
    );
    let mut cands = pool(&[4, 5, 6, 7]);
    assert_eq!(
        gang(&mut cands, &job(4, NvLinkMode::None), 1).pods[0].node,
        "ws"
    );

    // Gangs and members alike: two 1-GPU workers go to the member with the small node, not to
    // the fuller big node.
    let mut cands = vec![
        member("a-big", vec![node("dgx-h100", "h100", &[0, 1, 2, 3, 4, 5])]),
        member("b-small", vec![node("pcie-a100-bridged", "a100", &[])]),
    ];
    assert_eq!(
        gang(&mut cands, &job(1, NvLinkMode::None), 2).cluster,
        "b-small"
    );
}

/// Four DGX H100 with `h100_busy` GPUs busy each, an idle DGX-1 and an L40S (PCIe only) with
/// four of its eight GPUs free.
fn whole_nodes_pool(h100_busy: &[usize]) -> Vec<ClusterCandidate> {
    let mut nodes: Vec<NodeCandidate> = (0..4)
        .map(|i| node("dgx-h100", &format!("h100-{i}"), h100_busy))
        .collect();
    nodes.push(node("dgx1-v100", "dgx1", &[]));
    nodes.push(node("pcie-l40s", "l40s", &[0, 1, 2, 3]));
    vec![member("m", nodes)]
}

#[test]
fn whole_nvlink_nodes_are_the_big_nvlink_ring_nodes() {
    for (fixture, whole) in [
        ("dgx-h100", true),
        ("dgx1-v100", true),
        ("dgx2-v100", true),
        ("dgx-a100", true),
        ("hgx-h100", true),
        ("pcie-l40s", false),
        ("pcie-a100-bridged", false),
        ("workstation-a6000", false),
    ] {
        let n = node(fixture, "n", &[]);
        assert_eq!(
            WholeNodes::is_whole_nvlink_node(&n.graph),
            whole,
            "{fixture}"
        );
    }
    // The pools of the rule's test: one whole NVLink node of five idle is scarce, all five not.
    assert!(
        whole_nodes_pool(&[0, 1, 2, 3, 4, 5])[0]
            .whole_nodes
            .scarce()
    );
    assert_eq!(
        whole_nodes_pool(&[])[0].whole_nodes,
        WholeNodes { total: 5, idle: 5 }
    );
    assert!(!whole_nodes_pool(&[])[0].whole_nodes.scarce());
    assert!(!WholeNodes::default().scarce());
}

#[test]
fn preferred_jobs_take_a_pcie_hop_rather_than_break_a_scarce_idle_nvlink_node() {
    // Scarce: of five whole NVLink nodes only the DGX-1 is idle (the H100s have 2 GPUs free).
    // A 4-GPU `preferred` job takes four GPUs of the partly used L40S — a PCIe ring — and the
    // DGX-1 stays whole for the next 8-GPU worker.
    let mut cands = whole_nodes_pool(&[0, 1, 2, 3, 4, 5]);
    let ch = gang(&mut cands, &job(4, NvLinkMode::Preferred), 1);
    assert_eq!(ch.pods[0].node, "l40s");
    let ch = gang(&mut cands, &job(8, NvLinkMode::Ring), 1);
    assert_eq!(ch.pods[0].node, "dgx1");
    // `ring` and `clique` never take a PCIe hop: they break the idle DGX-1.
    for mode in [NvLinkMode::Ring, NvLinkMode::Clique] {
        let mut cands = whole_nodes_pool(&[0, 1, 2, 3, 4, 5]);
        let ch = gang(&mut cands, &job(4, mode), 1);
        assert_eq!(ch.pods[0].node, "dgx1", "{mode:?}");
    }
    // Plentiful: every whole NVLink node idle. The job gets an all-NVLink ring on one of them,
    // as before, not the L40S.
    let cands = whole_nodes_pool(&[]);
    let ch = place_gang(&cands, &job(4, NvLinkMode::Preferred), &[0]).unwrap();
    let n = cands[0]
        .nodes
        .iter()
        .find(|n| *n.name == *ch.pods[0].node)
        .unwrap();
    let set = GpuSet::from_indexes(
        ch.pods[0]
            .gpu_uuids
            .iter()
            .filter_map(|u| n.graph.index_of(u)),
    );
    assert_ne!(&*n.name, "l40s");
    assert!(n.graph.has_nvlink_ring(set), "{:?}", ch.pods[0]);
}

#[test]
fn a_gangs_own_workers_count_down_the_idle_whole_nodes() {
    // Eight whole NVLink nodes, two idle: not scarce (two is a quarter). The first 6-GPU worker
    // gets an NVLink ring on an idle DGX-1; then one idle node of eight is left, scarce, so the
    // second takes the partly used L40S instead of the other DGX-1 — in a gang and as replicas.
    let pool = || {
        let mut nodes: Vec<NodeCandidate> = (0..6)
            .map(|i| node("dgx-h100", &format!("h100-{i}"), &[0, 1, 2, 3, 4, 5]))
            .collect();
        nodes.push(node("dgx1-v100", "dgx1-a", &[]));
        nodes.push(node("dgx1-v100", "dgx1-b", &[]));
        nodes.push(node("pcie-l40s", "l40s", &[0, 1]));
        vec![member("m", nodes)]
    };
    let cands = pool();
    assert!(!cands[0].whole_nodes.scarce());
    let ch = place_gang(&cands, &job(6, NvLinkMode::Preferred), &[0, 1]).unwrap();
    let nodes: Vec<&str> = ch.pods.iter().map(|p| p.node.as_str()).collect();
    assert_eq!(nodes, ["dgx1-a", "l40s"]);
    let policy = ReplicaPlacement {
        spread: Some(SpreadPolicy::default()),
        max_replicas_per_cluster: None,
    };
    let (placed, reasons) = place_replicas(
        &cands,
        &job(6, NvLinkMode::Preferred),
        &[0, 1],
        &policy,
        None,
        &BTreeMap::new(),
    );
    assert!(reasons.is_empty(), "{reasons:?}");
    let nodes: Vec<&str> = placed.iter().map(|(_, p)| p.node.as_str()).collect();
    assert_eq!(nodes, ["dgx1-a", "l40s"]);
}

#[test]
fn ring_mode_admits_what_nccl_rings_need_on_a_dgx1() {
    let mut cands = vec![member("m", vec![node("dgx1-v100", "dgx1", &[])])];
    // 8 GPUs with nvlink: clique cannot fit (the cube-mesh's cliques are quads) …
    let ix = [0];
    let err = place_gang(&cands, &job(8, NvLinkMode::Clique), &ix).unwrap_err();
    assert!(
        err.to_string()
            .contains("largest NVLink-connected GPU set has 4 GPUs"),
        "{err}"
    );
    // … but as a ring it does.
    let ch = gang(&mut cands, &job(8, NvLinkMode::Ring), 1);
    assert_eq!(ch.pods[0].gpu_uuids.len(), 8);
}

#[test]
fn replicas_without_spread_land_on_one_member_that_fits_the_most() {
    let cands = vec![
        member(
            "big",
            vec![node("dgx-h100", "b0", &[]), node("dgx-h100", "b1", &[])],
        ),
        member("small", vec![node("dgx-h100", "s0", &[0, 1, 2, 3])]),
    ];
    let ix: Vec<i32> = (0..20).collect();
    let (placed, reasons) = place_replicas(
        &cands,
        &job(1, NvLinkMode::Preferred),
        &ix,
        &ReplicaPlacement::default(),
        None,
        &BTreeMap::new(),
    );
    assert_eq!(placed.len(), 16);
    assert!(placed.iter().all(|(c, _)| c == "big"));
    assert!(
        reasons.iter().any(|r| r.contains("only 16 of 20 pods")),
        "{reasons:?}"
    );
}

#[test]
fn a_spread_replica_that_fits_nowhere_names_why_each_members_nodes_were_left_out() {
    // The scheduler's snapshot leaves nodes that cannot fit out of a candidate and says why in
    // `skipped`: a full member must not read as a member without GPU nodes.
    let mut full = member("full", Vec::new());
    full.skipped = vec!["1 node(s) with fewer than 2 free GPUs".into()];
    let cands = vec![
        full,
        member("busy", vec![node("dgx-h100", "b0", &[0, 1, 2, 3, 4, 5, 6])]),
    ];
    let policy = ReplicaPlacement {
        spread: Some(SpreadPolicy::default()),
        max_replicas_per_cluster: None,
    };
    let (placed, reasons) = place_replicas(
        &cands,
        &job(2, NvLinkMode::Preferred),
        &[0],
        &policy,
        None,
        &BTreeMap::new(),
    );
    assert!(placed.is_empty());
    let r = reasons.join("; ");
    assert!(
        r.contains("full: 1 node(s) with fewer than 2 free GPUs") && r.contains("b0"),
        "{r}"
    );
    assert!(!r.contains("no GPU nodes"), "{r}");
}

fn counts(placed: &[(String, PodPlacement)]) -> BTreeMap<String, usize> {
    let mut m = BTreeMap::new();
    for (c, _) in placed {
        *m.entry(c.clone()).or_default() += 1;
    }
    m
}

#[test]
fn spread_with_max_skew_one_evens_out_uneven_members() {
    // A big member (two idle DGX H100) and a small one (a node with 3 GPUs free). Best fit
    // alone would put everything on the small one first, then the big one; spreadAcrossClusters
    // only broke exact score ties and put all six on one member.
    let cands = vec![
        member(
            "big",
            vec![node("dgx-h100", "b0", &[]), node("dgx-h100", "b1", &[])],
        ),
        member("small", vec![node("dgx-h100", "s0", &[0, 1, 2, 3, 4])]),
    ];
    let ix: Vec<i32> = (0..6).collect();
    let policy = ReplicaPlacement {
        spread: Some(SpreadPolicy::default()),
        max_replicas_per_cluster: None,
    };
    let (placed, reasons) = place_replicas(
        &cands,
        &job(1, NvLinkMode::Preferred),
        &ix,
        &policy,
        None,
        &BTreeMap::new(),
    );
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(
        counts(&placed),
        BTreeMap::from([("big".into(), 3), ("small".into(), 3)])
    );
    // The deprecated flag means the same.
    let spec: crate::api::InferenceJobSpec = serde_yaml::from_str(
        "{template: {spec: {containers: [{name: srv, image: srv}]}}, replicas: 6, gpusPerReplica: 1, spreadAcrossClusters: true}",
    )
    .unwrap();
    assert_eq!(spec.effective_placement(), policy);

    // Existing replicas count: with 3 already on big, the next 2 both go to small.
    let (placed, _) = place_replicas(
        &cands,
        &job(1, NvLinkMode::Preferred),
        &[6, 7],
        &policy,
        None,
        &BTreeMap::from([("big".into(), 3)]),
    );
    assert_eq!(counts(&placed), BTreeMap::from([("small".into(), 2)]));

    // A full domain does not hold the others back: 10 replicas → small takes its 3, big 7.
    let ix: Vec<i32> = (0..10).collect();
    let (placed, reasons) = place_replicas(
        &cands,
        &job(1, NvLinkMode::Preferred),
        &ix,
        &policy,
        None,
        &BTreeMap::new(),
    );
    assert!(reasons.is_empty(), "{reasons:?}");
    assert_eq!(
        counts(&placed),
        BTreeMap::from([("big".into(), 7), ("small".into(), 3)])
    );
}

#[test]
fn spread_by_region_and_cap_per_member() {
    let mut a1 = member("a1", vec![node("dgx-h100", "a1n", &[])]);
    let mut a2 = member("a2", vec![node("dgx-h100", "a2n", &[])]);
    let mut b1 = member("b1", vec![node("dgx-h100", "b1n", &[])]);
    a1.labels.insert("region".into(), "eu".into());
    a2.labels.insert("region".into(), "eu".into());
    b1.labels.insert("region".into(), "us".into());
    let cands = vec![a1, a2, b1];
    let ix: Vec<i32> = (0..6).collect();
    let by_region = ReplicaPlacement {
        spread: Some(SpreadPolicy {
            max_skew: 1,
            topology_key: Some("region".into()),
        }),
        max_replicas_per_cluster: None,
    };
    let (placed, _) = place_replicas(
        &cands,
        &job(2, NvLinkMode::Clique),
        &ix,
        &by_region,
        None,
        &BTreeMap::new(),
    );
    let c = counts(&placed);
    assert_eq!(c.get("b1"), Some(&3), "{c:?}");
    assert_eq!(
        c.get("a1").unwrap_or(&0) + c.get("a2").unwrap_or(&0),
        3,
        "{c:?}"
    );

    let capped = ReplicaPlacement {
        spread: None,
        max_replicas_per_cluster: Some(2),
    };
    let (placed, reasons) = place_replicas(
        &cands,
        &job(1, NvLinkMode::Preferred),
        &(0..7).collect::<Vec<_>>(),
        &capped,
        None,
        &BTreeMap::new(),
    );
    assert_eq!(
        counts(&placed),
        BTreeMap::from([("a1".into(), 2), ("a2".into(), 2), ("b1".into(), 2)])
    );
    assert!(
        reasons.iter().any(|r| r.contains("maxReplicasPerCluster")),
        "{reasons:?}"
    );
}

#[test]
fn capacity_reports_the_largest_free_nvlink_clique() {
    // An idle DGX-1 is one NVLink-connected component of 8, but its largest clique is a quad:
    // `nvlink: clique` gets at most 4 there.
    let spec = fixtures::get("dgx1-v100");
    let all: BTreeSet<String> = spec.gpus.iter().map(|g| g.uuid.clone()).collect();
    assert_eq!(free_island_sizes(&spec, &all), vec![4]);
    let h100 = fixtures::get("dgx-h100");
    let free: BTreeSet<String> = h100.gpus.iter().skip(3).map(|g| g.uuid.clone()).collect();
    assert_eq!(free_island_sizes(&h100, &free), vec![5]);
    assert!(free_island_sizes(&h100, &BTreeSet::new()).is_empty());
}

#[test]
fn min_link_gbps_skips_nodes_whose_links_are_too_slow() {
    // A partly used DGX-1 (best fit would take it) has only NV1 rings left for 2 GPUs; an
    // idle DGX H100 NVSwitch node reaches ≈ 900 GB/s per hop.
    let cands = vec![member(
        "m",
        vec![
            node("dgx1-v100", "dgx1", &[0, 3, 4, 5, 6, 7]),
            node("dgx-h100", "h100", &[]),
            node("pcie-l40s", "l40s", &[]),
        ],
    )];
    let mut req = job(2, NvLinkMode::Preferred);
    assert_eq!(place_gang(&cands, &req, &[0]).unwrap().pods[0].node, "dgx1");
    req.gpu.min_link_gbps = Some(200);
    assert_eq!(place_gang(&cands, &req, &[0]).unwrap().pods[0].node, "h100");
    // Nothing that fast: every node says why.
    req.gpu.min_link_gbps = Some(5000);
    let err = place_gang(&cands, &req, &[0]).unwrap_err().to_string();
    for n in ["dgx1", "h100", "l40s"] {
        assert!(
            err.contains(&format!(
                "no link between free GPUs on node {n} reaches gpu.minLinkGBps 5000"
            )),
            "{err}"
        );
    }
}
