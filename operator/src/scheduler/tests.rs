//! Scheduler tests: the cache (supply checks, holds, assumptions, the node index) and decisions.

use super::cache::*;
use super::jobs::{Decision, decide_training};
use crate::api::{GpuTopologySpec, NvLinkMode, TrainingJob};
use crate::meta::FINALIZER;
use crate::placement::JobRequest;
use crate::topology::fixtures;
use std::collections::{BTreeMap, BTreeSet};

/// The fixture topology `fixture` as published by node `node` (UUIDs made unique per node).
fn topo(fixture: &str, node: &str) -> GpuTopologySpec {
    let mut t = fixtures::get(fixture);
    t.node_name = node.into();
    for g in &mut t.gpus {
        g.uuid = format!("GPU-{node}-{}", g.index);
    }
    t
}

fn facts(spec: GpuTopologySpec, published: i64) -> TopologyFacts {
    TopologyFacts {
        spec,
        busy: Vec::new(),
        published,
    }
}

fn ready(gpus: i64) -> Option<NodeFacts> {
    Some(NodeFacts {
        ready: true,
        allocatable: gpus,
    })
}

fn schedulable() -> MemberInfo {
    MemberInfo {
        schedulable: true,
        ..Default::default()
    }
}

/// A member with nodes (name, fixture), pods listed, schedulable.
fn pool(members: &[(&str, &[(&str, &str)])]) -> PoolCache {
    let mut c = PoolCache::new();
    for (m, nodes) in members {
        c.set_member(m, schedulable());
        c.resync_pods(m, BTreeMap::new());
        for (i, (n, f)) in nodes.iter().enumerate() {
            let t = topo(f, n);
            let count = t.gpus.len() as i64;
            c.set_node(m, n, ready(count));
            c.set_topology(m, n, Some(facts(t, i as i64)));
        }
    }
    c
}

fn req(k: usize) -> JobRequest {
    JobRequest {
        gpus_per_pod: k,
        nvlink: NvLinkMode::Preferred,
        gpu: Default::default(),
        cluster_selector: Default::default(),
    }
}

fn slot(m: &str, n: &str, i: usize) -> Slot {
    Slot {
        member: m.into(),
        node: n.into(),
        uuid: format!("GPU-{n}-{i}"),
    }
}

fn job_name() -> JobName {
    JobName {
        kind: "TrainingJob",
        namespace: "default".into(),
        name: "j".into(),
    }
}

#[test]
fn usable_gpus_are_capped_by_the_nodes_allocatable() {
    // The topology claims 8 GPUs; the kubelet offers 4.
    let mut c = PoolCache::new();
    c.set_member("m", schedulable());
    c.resync_pods("m", BTreeMap::new());
    c.set_node("m", "n", ready(4));
    c.set_topology("m", "n", Some(facts(topo("dgx-h100", "n"), 0)));
    let n = c.node("m", "n").expect("placeable");
    assert_eq!(n.usable.len(), 4);
    assert_eq!(c.capacity("m").gpus_total, 4);
    assert!(
        c.problems("m")[0].contains("allocatable is 4"),
        "{:?}",
        c.problems("m")
    );
    // An 8-GPU worker does not fit; two 4-GPU ones cannot both land there.
    let (cands, _) = c.snapshot().candidates(&req(8), 1);
    assert!(cands[0].nodes.is_empty());
    let (cands, _) = c.snapshot().candidates(&req(4), 2);
    assert_eq!(cands[0].nodes.len(), 1);
    assert_eq!(cands[0].nodes[0].free.len(), 4);
}

#[test]
fn a_later_node_publishing_the_same_uuids_is_quarantined_and_never_blocks_the_first() {
    let mut c = pool(&[("a", &[("n1", "dgx-h100")])]);
    // Member b publishes n1's UUIDs from its own node, later.
    c.set_member("b", schedulable());
    c.resync_pods("b", BTreeMap::new());
    c.set_node("b", "copy", ready(8));
    let mut stolen = topo("dgx-h100", "n1");
    stolen.node_name = "copy".into();
    c.set_topology("b", "copy", Some(facts(stolen, 100)));
    assert!(
        c.node("b", "copy").is_none(),
        "the copy must not be placeable"
    );
    assert!(
        c.unusable_reason("b", "copy")
            .is_some_and(|r| r.starts_with("quarantined")),
        "{:?}",
        c.unusable_reason("b", "copy")
    );
    assert!(!c.problems("b").is_empty());
    assert!(c.problems("a").is_empty());
    // A pod in b annotated with a's UUIDs holds nothing of a's.
    c.set_pod(
        "b",
        "default",
        "fake",
        [slot("a", "n1", 0), slot("b", "copy", 1)]
            .into_iter()
            .collect(),
    );
    assert_eq!(c.node("a", "n1").expect("placeable").free().len(), 8);
    // Using the first node's GPUs does not depend on the copy.
    c.set_job("j", job_name(), [slot("a", "n1", 0)].into_iter().collect());
    assert_eq!(c.node("a", "n1").expect("placeable").free().len(), 7);
    // When the first publisher goes away, the copy becomes the owner.
    c.set_node("a", "n1", None);
    assert!(c.node("b", "copy").is_some());
}

#[test]
fn the_earlier_publisher_keeps_its_uuids_whatever_order_they_are_seen_in() {
    let mut c = PoolCache::new();
    for m in ["a", "b"] {
        c.set_member(m, schedulable());
        c.resync_pods(m, BTreeMap::new());
    }
    // The copy (published later) is seen first, e.g. after an operator restart.
    let mut copy = topo("dgx-h100", "n1");
    copy.node_name = "copy".into();
    c.set_node("b", "copy", ready(8));
    c.set_topology("b", "copy", Some(facts(copy, 100)));
    assert!(c.node("b", "copy").is_some());
    c.set_node("a", "n1", ready(8));
    c.set_topology("a", "n1", Some(facts(topo("dgx-h100", "n1"), 10)));
    assert!(c.node("a", "n1").is_some());
    assert!(c.node("b", "copy").is_none());
}

#[test]
fn duplicate_uuids_inside_a_node_do_not_make_an_idle_node_look_used() {
    let mut t = topo("dgx-h100", "n");
    t.gpus[7].uuid = t.gpus[6].uuid.clone();
    let mut c = PoolCache::new();
    c.set_member("m", schedulable());
    c.resync_pods("m", BTreeMap::new());
    c.set_node("m", "n", ready(8));
    c.set_topology("m", "n", Some(facts(t, 0)));
    let n = c.node("m", "n").expect("placeable");
    // The two ambiguous GPUs are not offered; nothing reads as in use.
    assert_eq!(n.usable.len(), 6);
    assert!(n.held.is_empty());
    let cap = c.capacity("m");
    assert_eq!((cap.gpus_total, cap.gpus_free), (6, 6));
    assert!(c.problems("m")[0].contains("more than once"));
}

#[test]
fn assumptions_hold_gpus_until_the_status_shows_them_or_they_are_dropped() {
    let mut c = pool(&[("m", &[("n", "dgx-h100")])]);
    let two: BTreeSet<Slot> = [slot("m", "n", 0), slot("m", "n", 1)].into_iter().collect();
    c.assume("j", two.clone());
    assert!(c.is_assumed("j"));
    assert_eq!(c.node("m", "n").unwrap().free().len(), 6);
    // An older status without the placement keeps the assumption.
    c.set_job("j", job_name(), BTreeSet::new());
    assert!(c.is_assumed("j"));
    assert_eq!(c.node("m", "n").unwrap().free().len(), 6);
    // The written status is observed: same GPUs, held once.
    c.set_job("j", job_name(), two.clone());
    assert!(!c.is_assumed("j"));
    assert_eq!(c.node("m", "n").unwrap().free().len(), 6);
    // Its pods hold them too; the job finishing frees nothing until the pods finish.
    c.set_pod("m", "default", "p", two.clone());
    c.set_job("j", job_name(), BTreeSet::new());
    assert_eq!(c.node("m", "n").unwrap().free().len(), 6);
    c.take_wakes();
    c.set_pod("m", "default", "p", BTreeSet::new());
    assert_eq!(c.node("m", "n").unwrap().free().len(), 8);
    let w = c.take_wakes();
    assert!(!w.all);
    assert_eq!(w.nodes.last().map(|n| n.free), Some(8));
    // A failed write drops the assumption.
    c.assume("k", two);
    c.unassume("k");
    assert_eq!(c.node("m", "n").unwrap().free().len(), 8);
}

#[test]
fn candidates_list_only_the_best_ranked_nodes_that_can_take_a_pod() {
    let nodes: Vec<(String, &str)> = (0..50)
        .map(|i| (format!("h{i:02}"), "dgx-h100"))
        .chain((0..10).map(|i| (format!("l{i:02}"), "pcie-l40s")))
        .collect();
    let refs: Vec<(&str, &str)> = nodes.iter().map(|(n, f)| (n.as_str(), *f)).collect();
    let mut c = pool(&[("m", &refs)]);
    // Fill one H100 node.
    c.set_job(
        "j",
        job_name(),
        (0..8).map(|i| slot("m", "h00", i)).collect(),
    );
    let (cands, reasons) = c.snapshot().candidates(&req(8), 2);
    assert!(reasons.is_empty());
    let names: Vec<&str> = cands[0].nodes.iter().map(|n| &*n.name).collect();
    // Two idle H100 nodes, first by name: the idle L40S nodes rank below them (no NVLink ring
    // for a `preferred` 8-GPU pod) and two pods never need more than two nodes; the full node
    // is left out.
    assert_eq!(names, ["h01", "h02"]);
    assert!(cands[0].skipped[0].contains("1 node(s) with fewer than 8 free"));
    let mut r = req(8);
    r.gpu.model = Some("H100".into());
    let (cands, _) = c.snapshot().candidates(&r, 1);
    let names: Vec<&str> = cands[0].nodes.iter().map(|n| &*n.name).collect();
    assert_eq!(names, ["h01"]);
}

#[test]
fn members_that_cannot_take_work_say_why() {
    let mut c = pool(&[("m", &[("n", "dgx-h100")])]);
    c.set_member(
        "m",
        MemberInfo {
            schedulable: false,
            reason: "not ready".into(),
            ..Default::default()
        },
    );
    let (cands, reasons) = c.snapshot().candidates(&req(1), 1);
    assert!(cands.is_empty());
    assert_eq!(reasons, ["m: not ready"]);
    // Becoming schedulable wakes every waiting job.
    c.take_wakes();
    c.set_member("m", schedulable());
    assert!(c.take_wakes().all);
    c.pods_unsynced("m");
    let (_, reasons) = c.snapshot().candidates(&req(1), 1);
    assert_eq!(reasons, ["m: its pods are not listed yet"]);
}

fn training(name: &str, workers: i32, gpus: i32) -> TrainingJob {
    let mut j: TrainingJob = serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: default, uid: {name}-uid}}\nspec: {{template: {{spec: {{containers: [{{name: main, image: x}}]}}}}, workers: {workers}, gpusPerWorker: {gpus}}}\n"
    ))
    .unwrap();
    j.metadata.finalizers = Some(vec![FINALIZER.into()]);
    j
}

#[test]
fn a_gang_decision_assumed_in_the_cache_keeps_the_next_one_off_its_gpus() {
    let mut c = pool(&[("m", &[("a", "dgx-h100"), ("b", "dgx-h100")])]);
    let mut seen = BTreeSet::new();
    for i in 0..2 {
        let j = training(&format!("j{i}"), 2, 4);
        let Decision::Training { slots, status, .. } = decide_training(&c.snapshot(), &j) else {
            panic!("fits")
        };
        assert_eq!(status.workers.len(), 2);
        assert!(slots.is_disjoint(&seen));
        seen.extend(slots.iter().cloned());
        c.assume(&format!("j{i}"), slots);
    }
    assert_eq!(seen.len(), 16);
    let Decision::Wait { reason, need } = decide_training(&c.snapshot(), &training("j2", 1, 1))
    else {
        panic!("the pool is full")
    };
    assert_eq!(need.gpus_per_pod, 1);
    assert!(reason.contains("m:"), "{reason}");
}

#[test]
fn dra_nodes_are_capped_by_their_resource_slices_or_their_topology() {
    // A DRA node advertises no nvidia.com/gpu: on a device-plugin member it is no GPU node.
    let mut c = PoolCache::new();
    c.set_member("m", schedulable());
    c.resync_pods("m", BTreeMap::new());
    c.set_node("m", "n", ready(0));
    c.set_topology("m", "n", Some(facts(topo("dgx-h100", "n"), 0)));
    assert!(c.node("m", "n").is_none());
    assert_eq!(c.node_count("m"), 0);
    assert_eq!(c.capacity("m").gpus_total, 0);
    // Once the member binds with DRA, the published topology counts while no slice is known.
    c.set_member(
        "m",
        MemberInfo {
            binding: crate::api::BindingMode::Dra,
            ..schedulable()
        },
    );
    assert_eq!(c.node("m", "n").expect("placeable").usable.len(), 8);
    assert_eq!(c.node_count("m"), 1);
    assert_eq!(
        (c.capacity("m").gpus_total, c.capacity("m").gpus_free),
        (8, 8)
    );
    let (cands, _) = c.snapshot().candidates(&req(8), 1);
    assert_eq!(cands[0].nodes.len(), 1);
    // The DRA driver's ResourceSlices offer 4 devices on the node: only 4 are usable.
    c.set_slice_devices("m", "n", Some(4));
    assert_eq!(c.node("m", "n").expect("placeable").usable.len(), 4);
    assert!(
        c.problems("m")[0].contains("ResourceSlice GPU devices is 4"),
        "{:?}",
        c.problems("m")
    );
    let (cands, _) = c.snapshot().candidates(&req(8), 1);
    assert!(cands[0].nodes.is_empty());
    // Slices gone (driver restarting): back to the topology; a CPU node stays out.
    c.resync_slice_devices("m", BTreeMap::new());
    assert_eq!(c.node("m", "n").expect("placeable").usable.len(), 8);
    c.set_node("m", "cpu", ready(0));
    assert_eq!(c.node_count("m"), 1);
    assert!(c.unusable_reason("m", "cpu").is_none());
}

#[test]
fn gpus_the_kubelet_handed_out_or_saw_busy_are_never_free() {
    let mut c = pool(&[("m", &[("n", "dgx-h100")])]);
    let mut t = facts(topo("dgx-h100", "n"), 0);
    t.busy = vec!["GPU-n-1".into(), "GPU-n-6".into()];
    c.set_topology("m", "n", Some(t));
    let n = c.node("m", "n").expect("placeable");
    assert_eq!(n.free().len(), 6);
    assert!(!n.free().contains(1) && !n.free().contains(6));
}

#[test]
fn the_kubelets_pod_devices_count_as_busy() {
    let t: crate::api::GpuTopology = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "GpuTopology",
        "metadata": {"name": "n"},
        "spec": topo("dgx-h100", "n"),
        "status": {"gpuCount": 8, "gpusInUse": ["GPU-n-0"], "podDevices": [
            {"namespace": "ml", "pod": "p", "container": "c", "deviceIds": ["GPU-n-3", "GPU-n-0"]}
        ]},
    }))
    .unwrap();
    assert_eq!(
        super::topology_facts(&t).busy,
        vec!["GPU-n-0".to_string(), "GPU-n-3".to_string()]
    );
}

#[test]
fn an_owner_re_creating_its_topology_keeps_its_gpus_from_a_node_that_copied_them() {
    let mut c = pool(&[("a", &[("n1", "dgx-h100")])]);
    c.set_member("b", schedulable());
    c.resync_pods("b", BTreeMap::new());
    c.set_node("b", "copy", ready(8));
    let mut stolen = topo("dgx-h100", "n1");
    stolen.node_name = "copy".into();
    c.set_topology("b", "copy", Some(facts(stolen, 100)));
    assert!(c.node("b", "copy").is_none());
    // a's owner deletes its GpuTopology and its agent publishes it again, newer than the copy.
    c.set_topology("a", "n1", None);
    c.set_topology("a", "n1", Some(facts(topo("dgx-h100", "n1"), 200)));
    assert_eq!(
        c.node("a", "n1").expect("the owner's node").free().len(),
        8,
        "{:?}",
        c.unusable_reason("a", "n1")
    );
    assert!(
        c.unusable_reason("b", "copy")
            .is_some_and(|r| r.starts_with("quarantined")),
        "{:?}",
        c.unusable_reason("b", "copy")
    );
    // A node that never published those UUIDs gains nothing from the memory: a third copy,
    // published after the re-creation, is quarantined too.
    c.set_node("b", "late", ready(8));
    let mut late = topo("dgx-h100", "n1");
    late.node_name = "late".into();
    c.set_topology("b", "late", Some(facts(late, 300)));
    assert!(c.node("b", "late").is_none());
}

#[test]
fn removing_the_first_publisher_frees_the_nodes_quarantined_behind_it() {
    // The same cluster seen through two members: b's node is quarantined behind a's.
    let mut c = pool(&[("a", &[("n1", "dgx-h100")])]);
    c.set_member("b", schedulable());
    c.resync_pods("b", BTreeMap::new());
    c.set_node("b", "n1", ready(8));
    c.set_topology("b", "n1", Some(facts(topo("dgx-h100", "n1"), 100)));
    assert!(c.node("b", "n1").is_none());
    c.remove_member("a");
    assert_eq!(
        c.node("b", "n1")
            .expect("placeable once a is gone")
            .free()
            .len(),
        8
    );
    assert!(c.problems("b").is_empty(), "{:?}", c.problems("b"));
}

#[test]
fn gpus_a_member_scheduler_refused_are_kept_out_of_placement_until_cleared() {
    let mut c = pool(&[("m", &[("n", "dgx-h100"), ("o", "dgx-h100")])]);
    let refused: BTreeSet<Slot> = (0..4).map(|i| slot("m", "n", i)).collect();
    c.set_suspect(&refused, true);
    let n = c.node("m", "n").unwrap();
    assert_eq!(n.free().len(), 4);
    assert!(refused.iter().all(|s| {
        let g = n.graph.gpus().iter().find(|g| *g.uuid == *s.uuid).unwrap();
        !n.free().contains(g.index)
    }));
    assert_eq!(
        c.node("m", "o").unwrap().free().len(),
        8,
        "other nodes untouched"
    );
    // Marks on another member's node of the same name change nothing here.
    c.set_suspect(&[slot("x", "n", 5)].into_iter().collect(), true);
    assert_eq!(c.node("m", "n").unwrap().free().len(), 4);
    // Cleared: offered again, and jobs waiting for that much are woken.
    c.take_wakes();
    c.set_suspect(&refused, false);
    assert_eq!(c.node("m", "n").unwrap().free().len(), 8);
    assert_eq!(c.take_wakes().nodes.last().map(|w| w.free), Some(8));
}

/// Queue order of the state's jobs, by name.
fn queue_order(st: &super::State) -> Vec<String> {
    st.queue
        .positions()
        .map(|(_, _, p)| p.name().name)
        .collect()
}

fn training_at(name: &str, created: &str, class: Option<&str>, priority: i32) -> TrainingJob {
    let mut j = training(name, 1, 1);
    j.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        created.parse().unwrap(),
    ));
    j.spec.priority_class_name = class.map(String::from);
    j.spec.priority = priority;
    j
}

#[test]
fn priority_class_names_order_the_queue_fifo_within_a_priority_and_unknown_names_wait() {
    use super::queue::PriorityClasses;
    use std::sync::Arc;
    let mut st = super::State::new();
    st.set_classes(PriorityClasses::new([
        ("high".to_string(), 100, false),
        ("batch".to_string(), 5, true),
    ]));
    let jobs = [
        training_at("old-default", "2026-01-01T00:00:00Z", None, 0),
        training_at("gold", "2026-01-01T00:00:01Z", Some("gold"), 0),
        training_at("high", "2026-01-01T00:00:02Z", Some("high"), 0),
        training_at("explicit-7", "2026-01-01T00:00:03Z", None, 7),
        training_at("new-default", "2026-01-01T00:00:04Z", None, 0),
        training_at("high-later", "2026-01-01T00:00:05Z", Some("high"), 0),
    ];
    for j in &jobs {
        st.observe_training(j, || Arc::new(j.clone()));
    }
    // high (100) before explicit 7 before the globalDefault 5; FIFO inside each; the job naming
    // an unknown class is ordered at 0, last.
    assert_eq!(
        queue_order(&st),
        [
            "high",
            "high-later",
            "explicit-7",
            "old-default",
            "new-default",
            "gold"
        ]
    );
    // The unknown class makes the job wait with a clear reason, whatever the pool holds.
    let gold = st
        .classes
        .of(&super::Pending::Training(Arc::new(jobs[1].clone())));
    assert!(gold.unwrap_err().contains("\"gold\""));
    // The class appears: the job is ordered by it at once.
    st.set_classes(PriorityClasses::new([
        ("high".to_string(), 100, false),
        ("batch".to_string(), 5, true),
        ("gold".to_string(), 1000, false),
    ]));
    assert_eq!(
        queue_order(&st),
        [
            "gold",
            "high",
            "high-later",
            "explicit-7",
            "old-default",
            "new-default"
        ]
    );
    // The default class goes away: default jobs are at 0, still FIFO between themselves.
    st.set_classes(PriorityClasses::new([
        ("high".to_string(), 100, false),
        ("gold".to_string(), 1000, false),
    ]));
    assert_eq!(
        queue_order(&st),
        [
            "gold",
            "high",
            "high-later",
            "explicit-7",
            "old-default",
            "new-default"
        ]
    );
}

#[test]
fn a_waiting_job_naming_an_unknown_class_is_parked_with_the_reason() {
    use std::sync::Arc;
    let mut st = super::State::new();
    st.listed = [true, true];
    st.set_queues(BTreeMap::new());
    st.cache = pool(&[("m", &[("a", "dgx-h100")])]);
    let j = training_at("gold", "2026-01-01T00:00:01Z", Some("gold"), 0);
    st.observe_training(&j, || Arc::new(j.clone()));
    let metrics = crate::metrics::Metrics::default();
    let super::Step::Work(w) = st.next(&mut Default::default(), &metrics) else {
        panic!("the first wait is reported")
    };
    let Decision::Wait { reason, need } = &w.decision else {
        panic!("must not be placed: {:?}", w.decision)
    };
    assert!(reason.contains("no PriorityClass"), "{reason}");
    let h100 = crate::topology::GpuGraph::from_spec(&fixtures::get("dgx-h100")).unwrap();
    assert!(!need.served_by(&h100, h100.all(), "NVIDIA H100", 81920));
    // It stays parked while GPUs come and go, and is placed once its class exists.
    st.in_flight.clear();
    assert!(matches!(
        st.next(&mut Default::default(), &metrics),
        super::Step::Idle
    ));
    st.set_classes(super::queue::PriorityClasses::new([(
        "gold".to_string(),
        1,
        false,
    )]));
    let super::Step::Work(w) = st.next(&mut Default::default(), &metrics) else {
        panic!("woken by the class")
    };
    assert!(
        matches!(w.decision, Decision::Training { .. }),
        "{:?}",
        w.decision
    );
}

#[test]
fn candidates_count_every_whole_nvlink_node_and_the_idle_ones() {
    // Three idle DGX H100, a DGX-1 with two GPUs held and an L40S (no NVLink): the candidates
    // name only the best-ranked node, the scarcity counts cover every node of the member.
    let mut c = pool(&[(
        "m",
        &[
            ("h0", "dgx-h100"),
            ("h1", "dgx-h100"),
            ("h2", "dgx-h100"),
            ("d", "dgx1-v100"),
            ("l", "pcie-l40s"),
        ],
    )]);
    c.assume(
        "j",
        [slot("m", "d", 0), slot("m", "d", 1)].into_iter().collect(),
    );
    let (cands, _) = c.snapshot().candidates(&req(1), 1);
    // One pod: only the best-ranked node (the partly used DGX-1) is offered.
    let names: Vec<&str> = cands[0].nodes.iter().map(|n| &*n.name).collect();
    assert_eq!(names, ["d"]);
    assert_eq!(
        cands[0].whole_nodes,
        crate::placement::rank::WholeNodes { total: 4, idle: 3 }
    );
    c.unassume("j");
    let (cands, _) = c.snapshot().candidates(&req(1), 1);
    assert_eq!(cands[0].whole_nodes.idle, 4);
}

#[test]
fn placements_carry_the_hub_clock_time_they_were_made() {
    let c = pool(&[("m", &[("a", "dgx-h100")])]);
    let before = k8s_openapi::jiff::Timestamp::now().as_second();
    let Decision::Training { status, .. } = decide_training(&c.snapshot(), &training("j", 1, 2))
    else {
        panic!("fits")
    };
    let at = status
        .placed_at
        .expect("a gang placement is stamped")
        .0
        .as_second();
    assert!(at >= before && at <= k8s_openapi::jiff::Timestamp::now().as_second());
    // Replicas: each new one is stamped, those already placed keep their own time.
    let mut ij: crate::api::InferenceJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: web, namespace: default, uid: web-uid}\nspec: {template: {spec: {containers: [{name: main, image: x}]}}, replicas: 2, gpusPerReplica: 1}\nstatus: {placements: [{cluster: m, replicas: [0], gpus: [{node: a, gpuUuids: [GPU-x], placedAt: '2023-11-14T22:13:20Z'}]}]}\n",
    )
    .unwrap();
    ij.metadata.finalizers = Some(vec![FINALIZER.into()]);
    let Decision::Inference { status, .. } = super::jobs::decide_inference(&c.snapshot(), &ij)
    else {
        panic!("fits")
    };
    let times: Vec<i64> = status
        .placements
        .iter()
        .flat_map(|p| p.gpus.iter())
        .map(|g| {
            g.placed_at
                .as_ref()
                .expect("every replica is stamped")
                .0
                .as_second()
        })
        .collect();
    assert!(times.len() >= 2, "{times:?}");
    assert!(
        times.contains(&1_700_000_000),
        "the kept replica keeps its time: {times:?}"
    );
    assert!(
        times.iter().any(|t| *t >= before),
        "the new one is stamped now: {times:?}"
    );
}

#[test]
fn a_single_cluster_job_leaves_a_drained_member_for_another() {
    let mut c = pool(&[("a", &[("na", "dgx-h100")]), ("b", &[("nb", "dgx-h100")])]);
    // Replica 1 runs on member a; replica 0 was let go there by the drain.
    let mut ij: crate::api::InferenceJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: web, namespace: default, uid: web-uid}\nspec: {template: {spec: {containers: [{name: main, image: x}]}}, replicas: 2, gpusPerReplica: 1}\nstatus: {placements: [{cluster: a, replicas: [1], gpus: [{node: na, gpuUuids: [GPU-x]}]}]}\n",
    )
    .unwrap();
    ij.metadata.finalizers = Some(vec![FINALIZER.into()]);
    // Replica 1 runs the current revision.
    let rev = crate::rollout::revision(&ij.spec);
    ij.status.as_mut().unwrap().placements[0].gpus[0].revision = rev;
    let placed_on = |c: &PoolCache| {
        let Decision::Inference { status, .. } = super::jobs::decide_inference(&c.snapshot(), &ij)
        else {
            return Vec::new();
        };
        let mut at: Vec<(String, Vec<i32>)> = status
            .placements
            .iter()
            .map(|p| (p.cluster.clone(), p.replicas.clone()))
            .collect();
        at.sort();
        at
    };
    // Member a only cordoned: the job stays pinned there and waits.
    c.set_member(
        "a",
        MemberInfo {
            schedulable: false,
            reason: "not schedulable".into(),
            ..Default::default()
        },
    );
    assert!(placed_on(&c).is_empty(), "pinned to its cordoned member");
    // Drained: replica 0 goes to b, beside replica 1 still on a.
    c.set_member(
        "a",
        MemberInfo {
            schedulable: false,
            reason: "being drained".into(),
            draining: true,
            ..Default::default()
        },
    );
    assert_eq!(
        placed_on(&c),
        [("a".to_string(), vec![1]), ("b".to_string(), vec![0])]
    );
}

#[test]
fn written_queue_positions_follow_the_queue_so_no_two_jobs_show_the_same() {
    use std::sync::Arc;
    let mut st = super::State::new();
    st.listed = [true, true];
    st.set_queues(BTreeMap::new());
    st.cache = pool(&[("m", &[("a", "dgx-h100")])]);
    let metrics = crate::metrics::Metrics::default();
    let mut positions = BTreeMap::new();
    for (name, created) in [("a", "2026-01-01T00:00:01Z"), ("b", "2026-01-01T00:00:02Z")] {
        let j = training_at(name, created, Some("gold"), 0);
        st.observe_training(&j, || Arc::new(j.clone()));
    }
    for _ in 0..2 {
        let super::Step::Work(w) = st.next(&mut Default::default(), &metrics) else {
            panic!("each wait is reported")
        };
        positions.insert(w.job.name().name.clone(), w.position);
        st.in_flight.remove(&w.uid);
    }
    assert_eq!(
        positions,
        BTreeMap::from([("a".into(), 1), ("b".into(), 2)])
    );
    // A higher-priority job arrives (its class exists): a and b move back, though nothing
    // wakes them.
    st.set_classes(super::queue::PriorityClasses::new([(
        "urgent".to_string(),
        100,
        false,
    )]));
    let mut c = training_at("c", "2026-01-01T00:00:03Z", Some("urgent"), 0);
    c.spec.workers = 64;
    st.observe_training(&c, || Arc::new(c.clone()));
    let mut seen = BTreeMap::new();
    // c is decided (waits: 64 workers never fit), and once the refresh is due a and b are
    // rewritten at their new positions, without being decided again.
    st.last_refresh = Some(std::time::Instant::now() - super::POSITION_REFRESH);
    loop {
        match st.next(&mut Default::default(), &metrics) {
            super::Step::Work(w) => {
                assert!(matches!(w.decision, Decision::Wait { .. }));
                seen.insert(w.job.name().name.clone(), (w.position, w.report_event));
                st.in_flight.remove(&w.uid);
            }
            super::Step::Parked => {}
            super::Step::Idle => break,
        }
    }
    assert_eq!(seen.get("c").map(|s| s.0), Some(1));
    assert_eq!(seen.get("a"), Some(&(2, false)));
    assert_eq!(seen.get("b"), Some(&(3, false)));
}

#[test]
fn a_view_older_than_a_written_status_is_stale_until_the_watch_moves_past_it() {
    use std::sync::Arc;
    let mut st = super::State::new();
    let mut j = training("g", 1, 1);
    j.metadata.resource_version = Some("5".into());
    st.observe_training(&j, || Arc::new(j.clone()));
    assert!(!st.stale_view("g-uid", Some("5")));
    // A restart (restarts + 1) is written over version 5: a reconcile still holding version 5
    // must not act on it (it would create the replaced generation's pods).
    st.wrote_over("g-uid", Some("5"));
    assert!(st.stale_view("g-uid", Some("5")));
    assert!(!st.stale_view("other-uid", Some("5")));
    // A late event of version 5 itself changes nothing; version 6 (the write) clears it.
    st.observe_training(&j, || Arc::new(j.clone()));
    assert!(st.stale_view("g-uid", Some("5")));
    j.metadata.resource_version = Some("6".into());
    st.observe_training(&j, || Arc::new(j.clone()));
    assert!(!st.stale_view("g-uid", Some("5")));
    assert!(!st.stale_view("g-uid", Some("6")));
    assert!(st.superseded.is_empty());
}

#[test]
fn stale_positions_are_found_front_first_and_capped() {
    let now = std::time::Instant::now();
    let reported: std::collections::HashMap<String, (String, usize, std::time::Instant)> =
        [("a", 1), ("b", 1), ("c", 3), ("d", 2)]
            .into_iter()
            .map(|(u, p)| (u.to_string(), ("full".to_string(), p, now)))
            .collect();
    let queue = [(1, "a"), (2, "b"), (3, "c"), (4, "d"), (5, "e")];
    let stale = super::stale_positions(queue.into_iter(), &reported, 10);
    assert_eq!(stale, ["b", "d"]);
    let stale = super::stale_positions(queue.into_iter(), &reported, 1);
    assert_eq!(stale, ["b"]);
}

/// A scheduler state over one DGX H100, the hub's jobs and queues listed, with `queues`.
fn state_with_queues(queues: &[(&str, &str)]) -> super::State {
    let mut st = super::State::new();
    st.listed = [true, true];
    st.cache = pool(&[("m", &[("a", "dgx-h100")])]);
    st.quotas.set_node_model("m", "a", "NVIDIA H100 80GB HBM3");
    st.set_queues(
        queues
            .iter()
            .map(|(n, spec)| (n.to_string(), serde_yaml::from_str(spec).unwrap()))
            .collect(),
    );
    st
}

#[test]
fn a_queue_admits_within_its_quota_and_a_restarted_scheduler_counts_placed_jobs_again() {
    use std::sync::Arc;
    let team = "{namespaces: [default], quotas: [{gpuClass: H100, nominal: 4, borrowingLimit: 0}]}";
    let metrics = crate::metrics::Metrics::default();
    let a = training("a", 1, 4);
    let b = training("b", 1, 1);
    // Nothing is placed before the queues are listed.
    let mut st = super::State::new();
    st.listed = [true, true];
    st.cache = pool(&[("m", &[("a", "dgx-h100")])]);
    st.observe_training(&a, || Arc::new(a.clone()));
    let mut snap = super::Snapshot::default();
    assert!(matches!(st.next(&mut snap, &metrics), super::Step::Idle));

    let mut st = state_with_queues(&[("team", team)]);
    let mut snap = super::Snapshot::default();
    st.observe_training(&a, || Arc::new(a.clone()));
    let super::Step::Work(w) = st.next(&mut snap, &metrics) else {
        panic!("a is decided")
    };
    let Decision::Training { status, .. } = w.decision else {
        panic!("a fits its quota: {:?}", w.decision)
    };
    st.observe_training(&b, || Arc::new(b.clone()));
    let super::Step::Work(w) = st.next(&mut snap, &metrics) else {
        panic!("b's wait is reported")
    };
    let Decision::Wait { reason, .. } = &w.decision else {
        panic!("b must wait: {:?}", w.decision)
    };
    let want = "queue team: 4 of 4 H100 in use, the job needs 1, borrowing limit reached";
    assert_eq!(reason, want);
    assert_eq!(st.quotas.status("team").unwrap().pending_jobs, 1);

    // A new scheduler reads a's recorded placement: the quota is still used.
    let mut placed = a.clone();
    placed.status = Some(status);
    let mut st = state_with_queues(&[("team", team)]);
    let mut snap = super::Snapshot::default();
    st.observe_training(&placed, || Arc::new(placed.clone()));
    st.observe_training(&b, || Arc::new(b.clone()));
    let super::Step::Work(w) = st.next(&mut snap, &metrics) else {
        panic!("b's wait is reported")
    };
    assert!(
        matches!(&w.decision, Decision::Wait { reason, .. } if reason == want),
        "{:?}",
        w.decision
    );
    // a finishes: b is woken and placed.
    st.in_flight.clear();
    let mut done = placed.clone();
    done.status.as_mut().unwrap().phase = crate::api::TrainingPhase::Succeeded;
    st.observe_training(&done, || Arc::new(done.clone()));
    let super::Step::Work(w) = st.next(&mut snap, &metrics) else {
        panic!("b is decided again")
    };
    assert!(
        matches!(w.decision, Decision::Training { .. }),
        "{:?}",
        w.decision
    );
}

#[test]
fn a_job_of_a_namespace_no_queue_lists_is_not_limited_but_one_naming_a_foreign_queue_waits() {
    use std::sync::Arc;
    let metrics = crate::metrics::Metrics::default();
    let mut st = state_with_queues(&[(
        "team",
        "{namespaces: [ml], quotas: [{gpuClass: H100, nominal: 0, borrowingLimit: 0}]}",
    )]);
    let mut snap = super::Snapshot::default();
    let free = training("free", 1, 8);
    st.observe_training(&free, || Arc::new(free.clone()));
    let super::Step::Work(w) = st.next(&mut snap, &metrics) else {
        panic!("decided")
    };
    assert!(matches!(w.decision, Decision::Training { .. }));
    let mut sneaky = training("sneaky", 1, 1);
    sneaky.spec.queue = Some("team".into());
    st.observe_training(&sneaky, || Arc::new(sneaky.clone()));
    let super::Step::Work(w) = st.next(&mut snap, &metrics) else {
        panic!("decided")
    };
    assert!(
        matches!(&w.decision, Decision::Wait { reason, .. } if reason.contains("queue team does not take jobs of namespace default")),
        "{:?}",
        w.decision
    );
}

#[test]
fn a_decision_overtaken_by_watch_events_is_not_assumed_and_is_taken_again() {
    use std::sync::Arc;
    let mut st = super::State::new();
    st.listed = [true, true];
    st.set_queues(BTreeMap::new());
    st.cache = pool(&[("m", &[("a", "dgx-h100"), ("b", "dgx-h100")])]);
    let j = training("big", 1, 8);
    st.observe_training(&j, || Arc::new(j.clone()));
    let metrics = crate::metrics::Metrics::default();
    let mut snap = super::Snapshot::default();
    let p = st.pick(&mut snap).ok().expect("a job to decide");
    let d = p.decide(&snap, &metrics);
    let Decision::Training { slots, .. } = &d.decision else {
        panic!("fits: {:?}", d.decision)
    };
    // While it was decided (without the lock), a pod took one of the GPUs it chose.
    let taken = slots.iter().next().unwrap().clone();
    let node = taken.node.clone();
    st.cache
        .set_pod("m", "other", "p", [taken.clone()].into_iter().collect());
    assert!(matches!(st.settle(p, d), super::Step::Parked));
    assert!(!st.cache.is_assumed("big-uid"), "nothing assumed");
    assert!(st.in_flight.is_empty());
    // Taken again at once, on the snapshot brought up to date: the other node.
    let super::Step::Work(w) = st.next(&mut snap, &metrics) else {
        panic!("decided again")
    };
    let Decision::Training { slots, .. } = &w.decision else {
        panic!("placed: {:?}", w.decision)
    };
    assert!(slots.iter().all(|s| s.node != node), "{slots:?}");
    assert!(st.cache.is_assumed("big-uid"));
}

#[test]
fn a_job_deleted_while_it_was_decided_holds_nothing() {
    use std::sync::Arc;
    let mut st = super::State::new();
    st.listed = [true, true];
    st.set_queues(BTreeMap::new());
    st.cache = pool(&[("m", &[("a", "dgx-h100")])]);
    let j = training("gone", 1, 8);
    st.observe_training(&j, || Arc::new(j.clone()));
    let metrics = crate::metrics::Metrics::default();
    let mut snap = super::Snapshot::default();
    let p = st.pick(&mut snap).ok().expect("a job to decide");
    let d = p.decide(&snap, &metrics);
    assert!(
        matches!(d.decision, Decision::Training { .. }),
        "{:?}",
        d.decision
    );
    st.forget("gone-uid");
    assert!(matches!(st.settle(p, d), super::Step::Parked));
    assert!(!st.cache.is_assumed("gone-uid"));
    assert_eq!(st.cache.node("m", "a").unwrap().free().len(), 8);
}

#[test]
fn a_preemption_reserves_the_victims_gpus_for_the_preemptor_until_it_is_placed() {
    use std::sync::Arc;
    let mut st = super::State::new();
    st.listed = [true, true];
    st.cache = pool(&[("m", &[("a", "dgx-h100")])]);
    let team: crate::api::GpuQueueSpec = serde_json::from_value(serde_json::json!({
        "namespaces": ["default"],
        "quotas": [{"gpuClass": "H100", "nominal": 8}],
    }))
    .unwrap();
    st.set_queues([("team".to_string(), team)].into());
    st.note_model("m", &{
        let mut t = crate::api::GpuTopology::new("a", topo("dgx-h100", "a"));
        t.spec.node_name = "a".into();
        t
    });
    // A low-priority gang holds the node.
    let mut low = training_at("low", "2026-01-01T00:00:00Z", None, 0);
    low.spec.gpus_per_worker = 8;
    low.status = Some(crate::api::TrainingJobStatus {
        cluster: Some("m".into()),
        workers: vec![crate::api::WorkerPlacement {
            rank: 0,
            node: "a".into(),
            gpu_uuids: (0..8).map(|i| format!("GPU-a-{i}")).collect(),
            ..Default::default()
        }],
        phase: crate::api::TrainingPhase::Running,
        ..Default::default()
    });
    st.observe_training(&low, || Arc::new(low.clone()));
    let mut high = training_at("high", "2026-01-01T00:00:05Z", None, 100);
    high.spec.gpus_per_worker = 8;
    st.observe_training(&high, || Arc::new(high.clone()));
    let metrics = crate::metrics::Metrics::default();
    let super::Step::Work(w) = st.next(&mut Default::default(), &metrics) else {
        panic!("the preemption is written")
    };
    let Decision::Wait { reason, .. } = &w.decision else {
        panic!("waits for the victim: {:?}", w.decision)
    };
    assert_eq!(
        reason,
        "waiting for preempted jobs to release 8 GPUs on m/a"
    );
    assert_eq!(w.victims.len(), 1);
    assert_eq!(w.victims[0].name.name, "low");
    assert_eq!(
        w.victims[0].note,
        "preempted by default/high (priority 100) in queue team"
    );
    st.in_flight.clear();
    // The victim's status is observed without its placement (its pods are gone too): it waits
    // again, but the GPUs are the preemptor's — a job of higher priority outside every queue
    // does not get them.
    let mut preempted = low.clone();
    preempted.status = Some(super::jobs::training_preempted_status(
        &low,
        "PreemptedByPriority",
        &w.victims[0].note,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now()),
        30,
    ));
    preempted.metadata.resource_version = Some("2".into());
    st.observe_training(&preempted, || Arc::new(preempted.clone()));
    let mut other = training_at("other", "2026-01-01T00:00:01Z", None, 1000);
    other.metadata.namespace = Some("elsewhere".into());
    other.spec.gpus_per_worker = 8;
    st.observe_training(&other, || Arc::new(other.clone()));
    for _ in 0..2 {
        if let super::Step::Work(w) = st.next(&mut Default::default(), &metrics) {
            assert!(
                matches!(w.decision, Decision::Wait { .. }),
                "{} placed on reserved GPUs",
                w.job.name().name
            );
        }
        st.in_flight.clear();
    }
    // The preemptor's turn: placed on the released GPUs.
    st.queue.retry_now("high-uid");
    let super::Step::Work(w) = st.next(&mut Default::default(), &metrics) else {
        panic!("the preemptor is decided")
    };
    assert_eq!(w.job.name().name, "high");
    assert!(
        matches!(w.decision, Decision::Training { .. }),
        "{:?}",
        w.decision
    );
    let st_low = preempted.status.unwrap();
    assert_eq!((st_low.restarts, st_low.preemptions), (1, 1));
    assert_eq!(st_low.phase, crate::api::TrainingPhase::Pending);
    assert_eq!(st_low.past_placements.len(), 1);
    // The meter pays the retired placement's pods until they end, at most their grace period
    // past the preemption.
    let past = &st_low.past_placements[0];
    let now = k8s_openapi::jiff::Timestamp::now().as_second();
    assert!((past.until.0.as_second() - now - 30).abs() <= 2, "{past:?}");
    assert_eq!(past.workers[0].gpu_uuids.len(), 8);
}
