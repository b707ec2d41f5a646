use super::*;
use crate::api::{ClassQuota, GpuQueueSpec, NvLinkMode};
use crate::topology::fixtures;

/// Member `m` with DGX H100 nodes `n1` and `n2`; queues `team-a` and `team-b` of one cohort,
/// 8 H100 each.
fn pool() -> (PoolCache, Quotas) {
    let mut c = PoolCache::new();
    c.set_member(
        "m",
        super::super::MemberInfo {
            schedulable: true,
            ..Default::default()
        },
    );
    c.resync_pods("m", BTreeMap::new());
    let mut q = Quotas::new();
    let queue = |ns: &str| GpuQueueSpec {
        namespaces: vec![ns.to_string()],
        cohort: Some("lab".into()),
        weight: 1,
        quotas: vec![ClassQuota {
            gpu_class: "H100".into(),
            nominal: 8,
            borrowing_limit: None,
            lending_limit: None,
        }],
    };
    q.set_queues(
        [
            ("team-a".into(), queue("team-a")),
            ("team-b".into(), queue("team-b")),
        ]
        .into(),
    );
    for (i, n) in ["n1", "n2"].into_iter().enumerate() {
        let mut t = fixtures::get("dgx-h100");
        t.node_name = n.into();
        for g in &mut t.gpus {
            g.uuid = format!("GPU-{n}-{}", g.index);
        }
        q.set_node_model("m", n, &t.gpus[0].model);
        c.set_node(
            "m",
            n,
            Some(super::super::cache::NodeFacts {
                ready: true,
                allocatable: 8,
            }),
        );
        let facts = super::super::cache::TopologyFacts {
            spec: t,
            busy: Vec::new(),
            published: i as i64,
        };
        c.set_topology("m", n, Some(facts));
    }
    (c, q)
}

struct Jobs {
    running: HashMap<String, Running>,
}

impl Jobs {
    /// Job `uid` of namespace `ns` holding GPUs `gpus` of node `node`.
    fn run(
        &mut self,
        (c, q): &mut (PoolCache, Quotas),
        uid: &str,
        ns: &str,
        node: &str,
        gpus: std::ops::Range<usize>,
        (priority, started): (i64, i64),
    ) {
        let slots: BTreeSet<Slot> = gpus
            .map(|i| Slot {
                member: "m".into(),
                node: node.into(),
                uuid: format!("GPU-{node}-{i}"),
            })
            .collect();
        let name = JobName {
            kind: "TrainingJob",
            namespace: ns.into(),
            name: uid.into(),
        };
        q.set_job(uid, ns, None, slots.clone());
        c.set_job(uid, name, slots);
        self.running
            .insert(uid.into(), Running { priority, started });
    }
}

fn preemptor<'a>(
    queue: &'a str,
    priority: i64,
    gpus: usize,
    selector: &'a BTreeMap<String, String>,
) -> Preemptor<'a> {
    Preemptor {
        uid: "p",
        name: format!("{queue}/p"),
        queue,
        priority,
        need: Need {
            gpus_per_pod: gpus,
            nvlink: NvLinkMode::Clique,
            ..Need::default()
        },
        pods: 1,
        selector,
        quota_bound: false,
    }
}

fn victims(found: Option<Found>) -> Vec<(String, Reason)> {
    found
        .map(|f| f.victims.into_iter().map(|v| (v.uid, v.reason)).collect())
        .unwrap_or_default()
}

#[test]
fn within_a_queue_only_strictly_lower_priorities_are_preempted_cheapest_first() {
    let mut p = pool();
    let mut j = Jobs {
        running: HashMap::new(),
    };
    j.run(&mut p, "low-old", "team-a", "n1", 0..4, (0, 10));
    j.run(&mut p, "low-new", "team-a", "n1", 4..8, (0, 20));
    j.run(&mut p, "mid", "team-a", "n2", 0..8, (5, 5));
    let (c, q) = &p;
    let busy = HashSet::new();
    let inp = Inputs {
        cache: c,
        quotas: q,
        running: &j.running,
        busy: &busy,
    };
    let sel = BTreeMap::new();
    // Priority 10 for 4 GPUs: the most recently started of the lowest.
    let f = find(&inp, &preemptor("team-a", 10, 4, &sel));
    assert_eq!(f.as_ref().unwrap().slots.len(), 4);
    assert_eq!(victims(f), vec![("low-new".into(), Reason::Priority)]);
    // Priority 3: only the priority-0 jobs qualify; 8 GPUs need both of them.
    let f = find(&inp, &preemptor("team-a", 3, 8, &sel));
    let mut v = victims(f);
    v.sort_by(|a, b| a.0.cmp(&b.0));
    assert_eq!(
        v,
        vec![
            ("low-new".into(), Reason::Priority),
            ("low-old".into(), Reason::Priority)
        ]
    );
    // Equal priority: nothing.
    assert!(find(&inp, &preemptor("team-a", 0, 4, &sel)).is_none());
    // team-a holds 16, 8 beyond its nominal quota: team-b, under its own, reclaims — whatever
    // its job's priority.
    assert_eq!(
        victims(find(&inp, &preemptor("team-b", -1, 4, &sel))),
        vec![("low-new".into(), Reason::Reclaim)]
    );
    // A job already being preempted is not taken again.
    let busy: HashSet<String> = ["low-new".to_string()].into();
    let inp = Inputs { busy: &busy, ..inp };
    assert_eq!(
        victims(find(&inp, &preemptor("team-a", 10, 4, &sel))),
        vec![("low-old".into(), Reason::Priority)]
    );
}

#[test]
fn a_queue_within_its_nominal_quota_reclaims_from_a_borrower_only() {
    let mut p = pool();
    let mut j = Jobs {
        running: HashMap::new(),
    };
    // team-b holds all 16: 8 beyond its nominal quota.
    j.run(&mut p, "b-old", "team-b", "n1", 0..8, (50, 10));
    j.run(&mut p, "b-new", "team-b", "n2", 0..8, (50, 20));
    let (c, q) = &p;
    let busy = HashSet::new();
    let inp = Inputs {
        cache: c,
        quotas: q,
        running: &j.running,
        busy: &busy,
    };
    let sel = BTreeMap::new();
    // Whatever team-b's priorities, team-a takes back what it lent: the cheapest borrower job.
    assert_eq!(
        victims(find(&inp, &preemptor("team-a", 0, 4, &sel))),
        vec![("b-new".into(), Reason::Reclaim)]
    );
    // Not beyond its own nominal quota: 12 GPUs would be borrowing, not reclaiming.
    let mut big = preemptor("team-a", 0, 4, &sel);
    big.pods = 3;
    assert!(find(&inp, &big).is_none());
    // A cluster selector no member matches: nothing.
    let sel: BTreeMap<String, String> = [("region".to_string(), "mars".to_string())].into();
    assert!(find(&inp, &preemptor("team-a", 0, 4, &sel)).is_none());
}

#[test]
fn a_queue_at_its_nominal_quota_is_not_reclaimed_from() {
    let mut p = pool();
    let mut j = Jobs {
        running: HashMap::new(),
    };
    // team-b holds exactly its nominal 8, a job outside every queue the rest.
    j.run(&mut p, "b", "team-b", "n1", 0..8, (0, 10));
    j.run(&mut p, "free", "default", "n2", 0..8, (0, 10));
    let (c, q) = &p;
    let busy = HashSet::new();
    let inp = Inputs {
        cache: c,
        quotas: q,
        running: &j.running,
        busy: &busy,
    };
    let sel = BTreeMap::new();
    assert!(find(&inp, &preemptor("team-a", 100, 4, &sel)).is_none());
}
