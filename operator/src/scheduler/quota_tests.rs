use super::*;
use crate::api::{ClassQuota, GpuQueueSpec};

fn slots(member: &str, node: &str, n: usize, tag: &str) -> BTreeSet<Slot> {
    (0..n)
        .map(|i| Slot {
            member: member.into(),
            node: node.into(),
            uuid: format!("GPU-{tag}-{i}"),
        })
        .collect()
}

fn quota(class: &str, nominal: i32, borrow: Option<i32>, lend: Option<i32>) -> ClassQuota {
    ClassQuota {
        gpu_class: class.into(),
        nominal,
        borrowing_limit: borrow,
        lending_limit: lend,
    }
}

fn queue(ns: &[&str], cohort: Option<&str>, quotas: Vec<ClassQuota>) -> GpuQueueSpec {
    GpuQueueSpec {
        namespaces: ns.iter().map(|s| s.to_string()).collect(),
        cohort: cohort.map(str::to_string),
        weight: 1,
        quotas,
    }
}

fn h100(n: i64) -> Demand {
    [("H100".to_string(), n)].into()
}

/// Two queues of one cohort, 8 H100 each; nodes `a` and `b` of member `m` are H100 boxes.
fn two_teams(a: GpuQueueSpec, b: GpuQueueSpec) -> Quotas {
    let mut q = Quotas::new();
    q.set_queues([("team-a".to_string(), a), ("team-b".to_string(), b)].into());
    for n in ["a", "b", "c"] {
        q.set_node_model("m", n, "NVIDIA H100 80GB HBM3");
    }
    q
}

fn h100_teams(borrow_a: Option<i32>, lend_b: Option<i32>) -> Quotas {
    two_teams(
        queue(
            &["ns-a"],
            Some("lab"),
            vec![quota("H100", 8, borrow_a, None)],
        ),
        queue(&["ns-b"], Some("lab"), vec![quota("H100", 8, None, lend_b)]),
    )
}

#[test]
fn without_queues_nothing_is_limited() {
    let mut q = Quotas::new();
    assert!(!q.active());
    assert_eq!(q.queue_of("ns", None), Ok(None));
    q.set_job("u1", "ns", None, slots("m", "a", 8, "x"));
    assert!(q.status("anything").is_none());
}

#[test]
fn a_job_submits_to_the_queue_it_names_or_its_namespace_default() {
    let q = h100_teams(None, None);
    assert_eq!(q.queue_of("ns-a", None), Ok(Some("team-a".into())));
    assert_eq!(q.queue_of("elsewhere", None), Ok(None));
    assert_eq!(
        q.queue_of("ns-a", Some("team-a")),
        Ok(Some("team-a".into()))
    );
    let e = q.queue_of("ns-a", Some("team-b")).unwrap_err();
    assert!(e.contains("does not take jobs of namespace ns-a"), "{e}");
    let e = q.queue_of("ns-a", Some("nope")).unwrap_err();
    assert!(e.contains("queue nope does not exist"), "{e}");
}

#[test]
fn usage_follows_recorded_and_assumed_placements() {
    let mut q = h100_teams(None, None);
    q.set_job("j1", "ns-a", None, BTreeSet::new());
    q.assume("j1", slots("m", "a", 4, "j1"));
    assert_eq!(q.status("team-a").unwrap().used_gpus, 4);
    // The status records what was assumed: counted once.
    q.set_job("j1", "ns-a", None, slots("m", "a", 4, "j1"));
    assert_eq!(q.status("team-a").unwrap().used_gpus, 4);
    // A failed write gives the assumption back.
    q.set_job("j2", "ns-a", None, BTreeSet::new());
    q.assume("j2", slots("m", "b", 2, "j2"));
    assert_eq!(q.status("team-a").unwrap().used_gpus, 6);
    q.unassume("j2");
    assert_eq!(q.status("team-a").unwrap().used_gpus, 4);
    // Finished (no slots) and deleted jobs hold nothing.
    q.set_job("j1", "ns-a", None, BTreeSet::new());
    assert_eq!(q.status("team-a").unwrap().used_gpus, 0);
    q.set_job("j3", "ns-b", None, slots("m", "c", 3, "j3"));
    assert_eq!(q.status("team-b").unwrap().used_gpus, 3);
    q.forget("j3");
    assert_eq!(q.status("team-b").unwrap().used_gpus, 0);
}

#[test]
fn gpus_on_a_node_of_unknown_model_move_to_their_class_once_it_is_published() {
    let mut q = Quotas::new();
    q.set_queues(
        [(
            "team-a".to_string(),
            queue(&["ns-a"], None, vec![quota("A100", 4, Some(0), None)]),
        )]
        .into(),
    );
    // After a restart the job's status may be read before the node's topology.
    q.set_job("j1", "ns-a", None, slots("m", "late", 4, "j1"));
    assert_eq!(q.status("team-a").unwrap().used_gpus, 0);
    q.set_node_model("m", "late", "NVIDIA A100-SXM4-80GB");
    assert_eq!(q.status("team-a").unwrap().used_gpus, 4);
    let e = q.admit("team-a", &[("A100".to_string(), 1)].into());
    assert!(
        e.unwrap_err().reason.contains("4 of 4 A100 in use"),
        "usage counted after the model arrived"
    );
}

#[test]
fn quota_stops_a_queue_at_nominal_when_it_may_not_borrow() {
    let mut q = h100_teams(Some(0), None);
    q.set_job("j1", "ns-a", None, slots("m", "a", 8, "j1"));
    let r = q.admit("team-a", &h100(1)).unwrap_err();
    assert_eq!(
        r.reason,
        "queue team-a: 8 of 8 H100 in use, the job needs 1, borrowing limit reached"
    );
    assert!(!r.hungry);
    assert!(q.admit("team-b", &h100(8)).is_ok());
    let r = q
        .admit("team-a", &[("A100".to_string(), 1)].into())
        .unwrap_err();
    assert_eq!(r.reason, "queue team-a has no quota for A100 GPUs");
}

#[test]
fn idle_quota_of_the_cohort_is_lent_up_to_what_is_idle() {
    let mut q = h100_teams(None, None);
    q.set_job("j1", "ns-a", None, slots("m", "a", 8, "j1"));
    // team-b is idle: team-a borrows its 8.
    assert!(q.admit("team-a", &h100(8)).is_ok());
    assert!(q.admit("team-a", &h100(9)).is_err());
    q.set_job("j2", "ns-b", None, slots("m", "b", 6, "j2"));
    let r = q.admit("team-a", &h100(4)).unwrap_err();
    assert!(
        r.reason
            .contains("8 of 8 H100 in use, the job needs 4, cohort lab has 2 idle H100 to lend"),
        "{}",
        r.reason
    );
    assert!(r.hungry);
    assert!(q.admit("team-a", &h100(2)).is_ok());
    assert_eq!(q.room("team-a"), vec![("H100".to_string(), 2)]);
    // team-b always gets its nominal quota, whatever team-a borrowed.
    q.set_job("j3", "ns-a", None, slots("m", "c", 2, "j3"));
    assert!(q.admit("team-b", &h100(2)).is_ok());
}

#[test]
fn a_lending_limit_keeps_the_rest_of_the_nominal_quota_home() {
    let mut q = h100_teams(None, Some(2));
    q.set_job("j1", "ns-a", None, slots("m", "a", 8, "j1"));
    assert!(q.admit("team-a", &h100(2)).is_ok());
    assert!(q.admit("team-a", &h100(3)).is_err());
    // A borrowing limit below what the cohort lends caps it too.
    let mut q = h100_teams(Some(1), None);
    q.set_job("j1", "ns-a", None, slots("m", "a", 8, "j1"));
    assert!(q.admit("team-a", &h100(1)).is_ok());
    assert!(q.admit("team-a", &h100(2)).is_err());
    assert_eq!(q.room("team-a"), vec![("H100".to_string(), 1)]);
}

#[test]
fn a_queue_with_a_lower_share_waiting_goes_first() {
    let c = Some("lab");
    let mut q = Quotas::new();
    q.set_queues(
        [
            (
                "team-a".to_string(),
                queue(&["ns-a"], c, vec![quota("H100", 4, None, None)]),
            ),
            (
                "team-b".to_string(),
                queue(&["ns-b"], c, vec![quota("H100", 4, None, None)]),
            ),
            (
                "idle".to_string(),
                queue(&["ns-i"], c, vec![quota("H100", 8, None, None)]),
            ),
        ]
        .into(),
    );
    q.set_node_model("m", "a", "H100");
    q.set_node_model("m", "b", "H100");
    // team-a borrowed 2, team-b 0 and waits for GPUs.
    q.set_job("j1", "ns-a", None, slots("m", "a", 6, "j1"));
    q.set_job("j2", "ns-b", None, slots("m", "b", 4, "j2"));
    q.set_waiting("w-b", Some(("team-b", true)));
    let r = q.admit("team-a", &h100(1)).unwrap_err();
    assert!(
        r.reason.contains("queue team-b (share 0.00"),
        "{}",
        r.reason
    );
    assert!(r.hungry);
    // team-b may borrow: its share after (1/16) is below team-a's (2/16).
    assert!(q.admit("team-b", &h100(1)).is_ok());
    // Within its nominal quota a queue never waits for others.
    q.set_job("j1", "ns-a", None, slots("m", "a", 2, "j1"));
    assert!(q.admit("team-a", &h100(2)).is_ok());
    // A queue whose waiting job is stopped by its own limit does not hold others back.
    q.set_job("j1", "ns-a", None, slots("m", "a", 6, "j1"));
    q.set_waiting("w-b", Some(("team-b", false)));
    assert!(q.admit("team-a", &h100(1)).is_ok());
    q.set_waiting("w-b", None);
    assert_eq!(q.status("team-b").unwrap().pending_jobs, 0);
}

#[test]
fn an_any_quota_covers_the_classes_without_their_own() {
    let mut q = Quotas::new();
    q.set_queues(
        [(
            "team-a".to_string(),
            queue(
                &["ns-a"],
                None,
                vec![
                    quota("H100", 8, Some(0), None),
                    quota("any", 2, Some(0), None),
                ],
            ),
        )]
        .into(),
    );
    q.set_node_model("m", "h", "NVIDIA H100");
    q.set_node_model("m", "l", "NVIDIA L40S");
    q.set_job("j1", "ns-a", None, slots("m", "l", 2, "j1"));
    assert!(
        q.admit("team-a", &[("L40S".to_string(), 1)].into())
            .is_err()
    );
    assert!(
        q.admit("team-a", &[("V100".to_string(), 1)].into())
            .is_err()
    );
    assert!(q.admit("team-a", &h100(8)).is_ok());
    let st = q.status("team-a").unwrap();
    assert_eq!((st.nominal_gpus, st.used_gpus), (10, 2));
}

#[test]
fn changing_the_queues_counts_every_job_again() {
    let mut q = h100_teams(None, None);
    q.set_job("j1", "ns-x", None, slots("m", "a", 4, "j1"));
    assert_eq!(q.status("team-a").unwrap().used_gpus, 0);
    q.set_queues(
        [(
            "team-a".to_string(),
            queue(
                &["ns-a", "ns-x"],
                Some("lab"),
                vec![quota("H100", 8, None, None)],
            ),
        )]
        .into(),
    );
    assert_eq!(q.status("team-a").unwrap().used_gpus, 4);
    assert!(q.status("team-b").is_none());
}
