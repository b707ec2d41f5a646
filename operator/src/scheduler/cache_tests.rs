//! Tests of the cache's assumptions and of the node index behind [`Snapshot::candidates`].

use super::*;
use crate::api::{NvLinkMode, ReplicaPlacement, SpreadPolicy};
use crate::placement::{ClusterCandidate, JobRequest, place_gang, place_replicas};
use crate::topology::fixtures;

fn schedulable(price: i64) -> MemberInfo {
    MemberInfo {
        schedulable: true,
        price: Some(price),
        ..Default::default()
    }
}

fn add_node(c: &mut PoolCache, member: &str, node: &str, fixture: &str) {
    let mut t = fixtures::get(fixture);
    t.node_name = node.into();
    for g in &mut t.gpus {
        g.uuid = format!("GPU-{member}-{node}-{}", g.index);
    }
    c.set_node(
        member,
        node,
        Some(NodeFacts {
            ready: true,
            allocatable: t.gpus.len() as i64,
        }),
    );
    c.set_topology(
        member,
        node,
        Some(TopologyFacts {
            spec: t,
            busy: Vec::new(),
            published: 0,
        }),
    );
}

fn slot(m: &str, n: &str, i: usize) -> Slot {
    Slot {
        member: m.into(),
        node: n.into(),
        uuid: format!("GPU-{m}-{n}-{i}"),
    }
}

fn name() -> JobName {
    JobName {
        kind: "InferenceJob",
        namespace: "default".into(),
        name: "j".into(),
    }
}

#[test]
fn a_re_decision_of_the_same_job_never_frees_its_earlier_assumption() {
    let mut c = PoolCache::new();
    c.set_member("m", schedulable(1));
    c.resync_pods("m", BTreeMap::new());
    add_node(&mut c, "m", "n", "dgx-h100");
    let free = |c: &PoolCache| c.node("m", "n").unwrap().free().len();
    // Replicas 0-1 are decided and their status written; the watch has not delivered it yet.
    let first: BTreeSet<Slot> = [slot("m", "n", 0), slot("m", "n", 1)].into();
    c.assume("j", first.clone());
    // The job is woken and decided again from the object before the write: replicas 0-1 once
    // more, on other GPUs (the first ones are held).
    let second: BTreeSet<Slot> = [slot("m", "n", 2), slot("m", "n", 3)].into();
    c.assume("j", second);
    // The first decision's GPUs are in the hub status: never free for the next job.
    assert_eq!(free(&c), 4);
    // The second write fails (its object is stale): only its own GPUs come back.
    c.unassume("j");
    assert_eq!(free(&c), 6);
    assert!(c.is_assumed("j"));
    // An older status (before the first write) keeps the first assumption.
    c.set_job("j", name(), BTreeSet::new());
    assert_eq!(free(&c), 6);
    // The first write is observed: the hub status holds those GPUs, the assumption is done.
    c.set_job("j", name(), first);
    assert!(!c.is_assumed("j"));
    assert_eq!(free(&c), 6);
    c.forget_job("j");
    assert_eq!(free(&c), 8);
}

#[test]
fn gpus_outside_claims_hold_are_never_free_and_come_back_when_released() {
    let mut c = PoolCache::new();
    c.set_member("m", schedulable(1));
    c.resync_pods("m", BTreeMap::new());
    add_node(&mut c, "m", "n", "dgx-h100");
    add_node(&mut c, "m", "o", "dgx-h100");
    let free = |c: &PoolCache, n: &str| c.node("m", n).unwrap().free().len();
    let outside = |uuids: &[usize]| -> BTreeMap<String, Vec<String>> {
        [(
            "n".to_string(),
            uuids.iter().map(|i| format!("GPU-m-n-{i}")).collect(),
        )]
        .into()
    };
    c.resync_outside_claims("m", outside(&[4, 5]));
    assert_eq!(free(&c, "n"), 6);
    assert_eq!(free(&c, "o"), 8);
    // A UUID of another node in the list changes nothing there.
    c.resync_outside_claims(
        "m",
        [("o".to_string(), vec!["GPU-m-n-0".to_string()])].into(),
    );
    assert_eq!((free(&c, "n"), free(&c, "o")), (8, 8));
    c.resync_outside_claims("m", outside(&[0, 1, 2]));
    assert_eq!(free(&c, "n"), 5);
    // A whole-node gang cannot have node n while a claim holds part of it.
    let (cands, _) = c.snapshot().candidates(&request(8, NvLinkMode::Clique), 1);
    let offered: Vec<&str> = cands
        .iter()
        .flat_map(|m| m.nodes.iter().map(|n| &*n.name))
        .collect();
    assert_eq!(offered, ["o"]);
    c.resync_outside_claims("m", BTreeMap::new());
    assert_eq!(free(&c, "n"), 8);
}

/// splitmix64, so the pools are the same on every run.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
}

const SHAPES: [&str; 6] = [
    "dgx-h100",
    "hgx-h100",
    "dgx1-v100",
    "pcie-l40s",
    "pcie-a100-bridged",
    "workstation-a6000",
];

/// Members of 40 nodes of mixed shapes with random GPUs held, and every node's name.
fn random_pool(seed: u64, members: usize, busy_in_8: u64) -> (PoolCache, Vec<(String, String)>) {
    let mut rng = Rng(seed);
    let mut c = PoolCache::new();
    let mut all = Vec::new();
    for m in 0..members {
        let member = format!("m{m}");
        c.set_member(&member, schedulable((m % 3) as i64));
        c.resync_pods(&member, BTreeMap::new());
        for n in 0..40 {
            let node = format!("n{n:02}");
            let fixture = SHAPES[(rng.next() % SHAPES.len() as u64) as usize];
            add_node(&mut c, &member, &node, fixture);
            let gpus = fixtures::get(fixture).gpus.len();
            let held: BTreeSet<Slot> = (0..gpus)
                .filter(|_| rng.next() % 8 < busy_in_8)
                .map(|i| slot(&member, &node, i))
                .collect();
            c.set_job(&format!("{member}-{node}"), name(), held);
            all.push((member.clone(), node));
        }
    }
    (c, all)
}

/// Every placeable node as a candidate: what the placement would see without the index.
fn every_node(
    c: &PoolCache,
    all: &[(String, String)],
    like: &[ClusterCandidate],
) -> Vec<ClusterCandidate> {
    like.iter()
        .map(|cand| {
            let mut cand = cand.clone();
            cand.nodes = all
                .iter()
                .filter(|(m, _)| *m == cand.name)
                .filter_map(|(m, n)| c.node(m, n))
                .map(NodeState::candidate)
                .collect();
            cand
        })
        .collect()
}

fn request(k: usize, nvlink: NvLinkMode) -> JobRequest {
    JobRequest {
        gpus_per_pod: k,
        nvlink,
        gpu: Default::default(),
        cluster_selector: Default::default(),
    }
}

#[test]
fn the_index_offers_few_nodes_and_places_exactly_as_every_node_would() {
    let spread = ReplicaPlacement {
        spread: Some(SpreadPolicy {
            max_skew: 1,
            topology_key: None,
        }),
        max_replicas_per_cluster: None,
    };
    for (seed, busy) in [(1, 0), (2, 2), (3, 5)] {
        let (c, all) = random_pool(seed, 3, busy);
        for (k, pods, mode) in [
            (1, 1, NvLinkMode::Preferred),
            (2, 1, NvLinkMode::Preferred),
            (2, 3, NvLinkMode::Preferred),
            (4, 2, NvLinkMode::Ring),
            (8, 1, NvLinkMode::Clique),
            (8, 4, NvLinkMode::Clique),
            (3, 5, NvLinkMode::None),
        ] {
            let req = request(k, mode);
            let (cands, _) = c.snapshot().candidates(&req, pods);
            let every = every_node(&c, &all, &cands);
            let offered: usize = cands.iter().map(|c| c.nodes.len()).sum();
            let placeable: usize = every.iter().map(|c| c.nodes.len()).sum();
            let what = format!("seed {seed}, {pods}×{k} {mode:?}");
            assert!(offered <= placeable, "{what}");
            // At most `pods` nodes a member (twice that where the scarcity of whole NVLink
            // nodes may change ranks: the union of both rankings' best).
            let most = if k > 1 && mode == NvLinkMode::Preferred {
                2 * pods
            } else {
                pods
            };
            for cand in &cands {
                assert!(cand.nodes.len() <= most, "{what}: {}", cand.nodes.len());
            }
            let indexes: Vec<i32> = (0..pods as i32).collect();
            // The same placement (refusals word their reasons differently: per node there,
            // counted here).
            assert_eq!(
                place_gang(&cands, &req, &indexes).ok().map(|c| c.pods),
                place_gang(&every, &req, &indexes).ok().map(|c| c.pods),
                "gang, {what}"
            );
            let on_one = ReplicaPlacement::default();
            for policy in [&spread, &on_one] {
                let (a, _) = place_replicas(&cands, &req, &indexes, policy, None, &BTreeMap::new());
                let (b, _) = place_replicas(&every, &req, &indexes, policy, None, &BTreeMap::new());
                assert_eq!(a, b, "replicas {policy:?}, {what}");
            }
        }
    }
}

#[test]
fn a_one_gpu_request_is_offered_only_the_best_ranked_nodes_of_a_member() {
    let (c, all) = random_pool(7, 2, 3);
    let (cands, _) = c
        .snapshot()
        .candidates(&request(1, NvLinkMode::Preferred), 1);
    let every = every_node(&c, &all, &cands);
    for (few, many) in cands.iter().zip(&every) {
        assert!(!few.nodes.is_empty());
        // One node: the first by rank, then name — of every node the member has.
        assert_eq!(few.nodes.len(), 1, "{:?}", few.nodes);
        assert!(many.nodes.len() > 20);
    }
}

#[test]
fn refusals_count_the_nodes_left_out_and_say_why() {
    let mut c = PoolCache::new();
    c.set_member("m", schedulable(0));
    c.resync_pods("m", BTreeMap::new());
    add_node(&mut c, "m", "d", "dgx1-v100");
    add_node(&mut c, "m", "l", "pcie-l40s");
    add_node(&mut c, "m", "a", "pcie-a100-bridged");
    // Eight all-NVLink-connected GPUs: the DGX-1 (largest clique 4) and the L40S (no NVLink)
    // have eight free GPUs but no such set; the A100 node has too few GPUs.
    let (cands, _) = c.snapshot().candidates(&request(8, NvLinkMode::Clique), 1);
    assert!(cands[0].nodes.is_empty());
    let skipped = cands[0].skipped.join("; ");
    assert!(
        skipped.contains("1 node(s) with fewer than 8 free GPUs"),
        "{skipped}"
    );
    assert!(
        skipped.contains("2 node(s) without 8 free GPUs"),
        "{skipped}"
    );
    assert!(skipped.contains("node d"), "{skipped}");
    let mut r = request(4, NvLinkMode::Preferred);
    r.gpu.model = Some("L40S".into());
    let (cands, _) = c.snapshot().candidates(&r, 1);
    assert_eq!(cands[0].nodes.len(), 1);
    assert!(
        cands[0]
            .skipped
            .join("; ")
            .contains("2 node(s) of another GPU model")
    );
    // A member removed leaves nothing behind in the index.
    c.remove_member("m");
    c.set_member("m", schedulable(0));
    c.resync_pods("m", BTreeMap::new());
    let (cands, _) = c
        .snapshot()
        .candidates(&request(1, NvLinkMode::Preferred), 1);
    assert!(cands[0].nodes.is_empty());
    assert_eq!(cands[0].whole_nodes, Default::default());
}

/// What a snapshot offers for `req`, comparable: per member the candidate nodes with their free
/// GPUs, what was skipped and the whole NVLink nodes; the members left out with the reason.
fn offer(s: &Snapshot, req: &JobRequest, pods: usize) -> String {
    let (cands, reasons) = s.candidates(req, pods);
    let cands: Vec<_> = cands
        .iter()
        .map(|c| {
            let nodes: Vec<_> = c.nodes.iter().map(|n| (&n.name, n.free)).collect();
            (&c.name, nodes, &c.skipped, c.whole_nodes)
        })
        .collect();
    format!("{cands:?} {reasons:?}")
}

#[test]
fn a_snapshot_brought_up_to_date_offers_what_a_fresh_one_does() {
    let (mut c, all) = random_pool(7, 3, 3);
    let mut snap = Snapshot::default();
    c.update_snapshot(&mut snap);
    let mut rng = Rng(11);
    let requests = [
        (request(1, NvLinkMode::Preferred), 1),
        (request(2, NvLinkMode::Preferred), 3),
        (request(8, NvLinkMode::Clique), 2),
    ];
    for round in 0..120 {
        let (m, n) = &all[(rng.next() % all.len() as u64) as usize];
        match rng.next() % 7 {
            0 => c.set_job(&format!("{m}-{n}"), name(), BTreeSet::new()),
            1 => c.assume(&format!("r{round}"), [slot(m, n, 0)].into_iter().collect()),
            2 => c.unassume(&format!("r{}", round.max(1) - 1)),
            3 => {
                let facts = NodeFacts {
                    ready: rng.next().is_multiple_of(2),
                    allocatable: 8,
                };
                c.set_node(m, n, Some(facts))
            }
            4 => c.set_topology(m, n, None),
            5 => {
                let mut info = schedulable(1);
                info.schedulable = !rng.next().is_multiple_of(3);
                c.set_member(m, info);
            }
            _ if rng.next().is_multiple_of(4) => c.remove_member(m),
            _ => add_node(&mut c, m, n, SHAPES[(round % SHAPES.len() as u64) as usize]),
        }
        if round % 4 == 3 {
            c.update_snapshot(&mut snap);
            let fresh = c.snapshot();
            for (req, pods) in &requests {
                assert_eq!(
                    offer(&snap, req, *pods),
                    offer(&fresh, req, *pods),
                    "round {round}"
                );
            }
            for (m, n) in &all {
                assert_eq!(snap.model_of(m, n), fresh.model_of(m, n), "{m}/{n}");
                let uuids = [format!("GPU-{m}-{n}-1")];
                assert_eq!(
                    snap.gpu_indexes(m, n, &uuids),
                    fresh.gpu_indexes(m, n, &uuids)
                );
            }
        }
    }
}

#[test]
fn a_topology_goes_with_the_object_that_published_it_whatever_its_name() {
    let mut c = PoolCache::new();
    c.set_member("m", schedulable(0));
    c.resync_pods("m", BTreeMap::new());
    // "a" by the object named after it, "b" by an object of another name.
    add_node(&mut c, "m", "a", "dgx-h100");
    add_node(&mut c, "m", "b", "dgx-h100");
    let mut t = TopologyFacts {
        spec: fixtures::get("pcie-l40s"),
        busy: Vec::new(),
        published: 0,
    };
    t.spec.node_name = "b".into();
    for g in &mut t.spec.gpus {
        g.uuid = format!("GPU-m-b-l40s-{}", g.index);
    }
    c.set_topology("m", "b", None);
    c.set_topology("m", "other-name", Some(t.clone()));
    assert!(c.node("m", "a").is_some() && c.node("m", "b").is_some());
    // Deleting an object that published nothing changes nothing; deleting the publisher does.
    c.set_topology("m", "b", None);
    assert!(c.node("m", "b").is_some());
    c.set_topology("m", "other-name", None);
    assert!(c.node("m", "b").is_none());
    c.set_topology("m", "a", None);
    assert!(c.node("m", "a").is_none());
    // A relist drops what is gone, named after its node or not.
    add_node(&mut c, "m", "a", "dgx-h100");
    c.set_topology("m", "other-name", Some(t.clone()));
    c.resync_topologies("m", BTreeMap::from([("other-name".to_string(), t)]));
    assert!(c.node("m", "a").is_none());
    assert!(c.node("m", "b").is_some());
    c.resync_topologies("m", BTreeMap::new());
    assert!(c.node("m", "b").is_none());
}
