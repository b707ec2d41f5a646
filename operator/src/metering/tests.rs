use super::*;
use serde_json::json;

fn pod(v: serde_json::Value) -> Pod {
    serde_json::from_value(v).expect("valid pod")
}

fn gp_labels(uid: &str) -> serde_json::Value {
    json!({
        "app.kubernetes.io/managed-by": "gpupool",
        "gpupool.io/job-kind": "TrainingJob",
        "gpupool.io/job-namespace": "ml",
        "gpupool.io/job-name": "gpt",
        "gpupool.io/job-uid": uid,
    })
}

const UID: &str = "0b9f4d2a-6c1e-4f5b-9a7d-3e2c1b0a9f8e";

/// A pod whose single container ran `[start, end)` (end None = running) with `gpus` annotated.
fn run_pod(name: &str, start: &str, end: Option<&str>, gpus: usize) -> Pod {
    let uuids: Vec<String> = (0..gpus).map(|i| format!("GPU-{i:04}")).collect();
    let state = match end {
        Some(e) => json!({"terminated": {"exitCode": 0, "startedAt": start, "finishedAt": e}}),
        None => json!({"running": {"startedAt": start}}),
    };
    pod(json!({
        "metadata": {
            "name": name, "namespace": "gp", "uid": format!("uid-{name}"),
            "labels": gp_labels(UID),
            "annotations": {"gpupool.io/gpu-uuids": uuids.join(","), "gpupool.io/gpu-model": "NVIDIA H100 80GB HBM3"}
        },
        "spec": {"containers": [{"name": "w", "image": "x"}]},
        "status": {
            "phase": if end.is_some() { "Succeeded" } else { "Running" },
            "startTime": start,
            "containerStatuses": [{"name": "w", "image": "x", "imageID": "", "ready": end.is_none(), "restartCount": 0, "state": state}]
        }
    }))
}

#[test]
fn gpu_classes_from_model_names() {
    assert_eq!(gpu_class("NVIDIA H100 80GB HBM3"), 1);
    assert_eq!(gpu_class("NVIDIA H200"), 1);
    assert_eq!(gpu_class("NVIDIA GH200 480GB"), 1);
    assert_eq!(gpu_class("NVIDIA A100-SXM4-80GB"), 2);
    assert_eq!(gpu_class("NVIDIA A100 80GB PCIe"), 2);
    assert_eq!(gpu_class("Tesla V100-SXM2-32GB"), 3);
    assert_eq!(gpu_class("NVIDIA L40S"), 4);
    assert_eq!(gpu_class("NVIDIA L40"), 4);
    assert_eq!(gpu_class("NVIDIA A10G"), 5);
    assert_eq!(gpu_class("NVIDIA A10"), 5);
    assert_eq!(gpu_class("NVIDIA L4"), 5);
    assert_eq!(gpu_class("Tesla T4"), 6);
    assert_eq!(gpu_class("NVIDIA GeForce RTX 4090"), 7);
    assert_eq!(gpu_class("Some Accelerator"), 0);
    assert_eq!(gpu_class(""), 0);
    // Token boundaries: A10 is not A100, L4 is not L40S, T4 is not part of other words.
    assert_eq!(gpu_class("A1000"), 0);
}

#[test]
fn periods_are_epoch_aligned_windows() {
    assert_eq!(period_of(0, 3600), 0);
    assert_eq!(period_of(3599, 3600), 0);
    assert_eq!(period_of(3600, 3600), 1);
    assert_eq!(period_of(1_700_000_123, 3600), 472_222);
    assert_eq!(period_bounds(472_222, 3600), (1_699_999_200, 1_700_002_800));
    assert_eq!(period_of(-5, 10), 0);
    // [95, 125) with 10 s periods: 5 s in period 9, 10 in 10 and 11, 5 in 12.
    assert_eq!(
        split_into_periods(95, 125, 10),
        vec![(9, 5), (10, 10), (11, 10), (12, 5)]
    );
    // Exactly one period.
    assert_eq!(split_into_periods(100, 110, 10), vec![(10, 10)]);
    // Empty and inverted intervals cost nothing.
    assert!(split_into_periods(100, 100, 10).is_empty());
    assert!(split_into_periods(100, 90, 10).is_empty());
    // The parts always add up to the interval.
    let parts = split_into_periods(1_699_999_000, 1_700_011_111, 3600);
    assert_eq!(parts.iter().map(|p| p.1).sum::<i64>(), 12_111);
    assert_eq!(parts.len(), 5);
}

#[test]
fn finished_pod_times_gpus() {
    // 2023-11-14T22:13:20Z = 1_700_000_000. Ran 95 s on 4 GPUs; 5-second periods.
    let p = run_pod(
        "w0",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:14:55Z"),
        4,
    );
    let run = pod_run(&p).unwrap();
    assert_eq!(
        run,
        PodRun {
            start: 1_700_000_000,
            end: Some(1_700_000_095)
        }
    );
    assert_eq!(pod_gpus(&p), 4);
    let u = run_usage(run, 4, 1_800_000_000, 5);
    assert_eq!(u.len(), 19);
    assert!(u.iter().all(|(_, s)| *s == 20));
    assert_eq!(u.iter().map(|x| x.1).sum::<i64>(), 380);
    // Hourly periods: 1_700_000_000 is 800 s into period 472_222 (starts 1_699_999_200).
    assert_eq!(run_usage(run, 4, 1_800_000_000, 3600), vec![(472_222, 380)]);
}

#[test]
fn running_pod_counts_until_now_and_closed_periods_do_not_change() {
    let p = run_pod("w0", "2023-11-14T22:13:20Z", None, 2);
    let run = pod_run(&p).unwrap();
    assert_eq!(run.end, None);
    // now = start + 23 with 10 s periods: [0,10) -> 20, [10,20) -> 20, [20,23) -> 6.
    let at23 = run_usage(run, 2, 1_700_000_023, 10);
    assert_eq!(
        at23,
        vec![(170_000_000, 20), (170_000_001, 20), (170_000_002, 6)]
    );
    // Later: the closed periods are identical, the open one grew, a new one appeared.
    let at35 = run_usage(run, 2, 1_700_000_035, 10);
    assert_eq!(&at35[..2], &at23[..2]);
    assert_eq!(at35[2], (170_000_002, 20));
    assert_eq!(at35[3], (170_000_003, 10));
    // now before start (clock skew) costs nothing.
    assert!(run_usage(run, 2, 1_699_999_990, 10).is_empty());
}

#[test]
fn gpus_from_limits_when_not_annotated() {
    let p = pod(json!({
        "metadata": {"name": "x", "labels": gp_labels(UID)},
        "spec": {"containers": [
            {"name": "a", "image": "x", "resources": {"limits": {"nvidia.com/gpu": "2"}}},
            {"name": "b", "image": "x", "resources": {"requests": {"nvidia.com/gpu": "1"}}},
            {"name": "c", "image": "x"}
        ]}
    }));
    assert_eq!(pod_gpus(&p), 3);
}

#[test]
fn pending_pod_has_no_run_and_restarted_container_counts_from_first_start() {
    let pending = pod(json!({
        "metadata": {"name": "x", "labels": gp_labels(UID)},
        "spec": {"containers": [{"name": "a", "image": "x"}]},
        "status": {"phase": "Pending", "startTime": "2023-11-14T22:13:20Z",
            "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                "state": {"waiting": {"reason": "ContainerCreating"}}}]}
    }));
    assert_eq!(pod_run(&pending), None);

    let restarted = pod(json!({
        "metadata": {"name": "x", "labels": gp_labels(UID)},
        "spec": {"containers": [{"name": "a", "image": "x"}]},
        "status": {"phase": "Running", "startTime": "2023-11-14T22:13:20Z",
            "containerStatuses": [{"name": "a", "image": "x", "imageID": "", "ready": true, "restartCount": 1,
                "state": {"running": {"startedAt": "2023-11-14T22:15:00Z"}},
                "lastState": {"terminated": {"exitCode": 1, "startedAt": "2023-11-14T22:13:30Z", "finishedAt": "2023-11-14T22:14:50Z"}}}]}
    }));
    // startTime (22:13:20) is earlier than the first container start (22:13:30): the later
    // one counts, so moving either back alone gains nothing.
    assert_eq!(
        pod_run(&restarted),
        Some(PodRun {
            start: 1_700_000_010,
            end: None
        })
    );
    let mut backdated = restarted.clone();
    backdated.status.as_mut().unwrap().start_time =
        Some(serde_json::from_value(json!("2023-11-14T16:13:20Z")).unwrap());
    assert_eq!(pod_run(&backdated).unwrap().start, 1_700_000_010);
    let mut no_start_time = restarted.clone();
    no_start_time.status.as_mut().unwrap().start_time = None;
    assert_eq!(
        pod_run(&no_start_time),
        Some(PodRun {
            start: 1_700_000_010,
            end: None
        })
    );
}

#[test]
fn two_containers_end_when_the_last_one_finishes() {
    let p = pod(json!({
        "metadata": {"name": "x", "labels": gp_labels(UID)},
        "spec": {"containers": [{"name": "a", "image": "x"}, {"name": "b", "image": "x"}]},
        "status": {"phase": "Running",
            "containerStatuses": [
                {"name": "a", "image": "x", "imageID": "", "ready": false, "restartCount": 0,
                 "state": {"terminated": {"exitCode": 0, "startedAt": "2023-11-14T22:13:25Z", "finishedAt": "2023-11-14T22:13:40Z"}}},
                {"name": "b", "image": "x", "imageID": "", "ready": true, "restartCount": 0,
                 "state": {"running": {"startedAt": "2023-11-14T22:13:20Z"}}}]}
    }));
    assert_eq!(
        pod_run(&p),
        Some(PodRun {
            start: 1_700_000_000,
            end: None
        })
    );
    let mut p2 = p.clone();
    let cs = p2
        .status
        .as_mut()
        .unwrap()
        .container_statuses
        .as_mut()
        .unwrap();
    cs[1].state = serde_json::from_value(json!({"terminated": {"exitCode": 0,
        "startedAt": "2023-11-14T22:13:20Z", "finishedAt": "2023-11-14T22:13:50Z"}}))
    .unwrap();
    assert_eq!(
        pod_run(&p2),
        Some(PodRun {
            start: 1_700_000_000,
            end: Some(1_700_000_030)
        })
    );
}

/// `run_pod` on `node` (the UUIDs `GPU-0000..` as `run_pod` annotates them).
fn placed_pod(name: &str, node: &str, start: &str, end: Option<&str>, gpus: usize) -> Pod {
    let mut p = run_pod(name, start, end, gpus);
    p.spec.as_mut().unwrap().node_name = Some(node.into());
    p
}

static NO_ENDS: BTreeMap<String, i64> = BTreeMap::new();

/// The hub knows `models` of the member's GPUs and saw no pod end.
fn seen(models: &BTreeMap<String, String>) -> HubObservations<'_> {
    HubObservations {
        gpu_models: models,
        observed_ends: &NO_ENDS,
        first_seen: &NO_ENDS,
        end_slack_seconds: 0,
    }
}

/// A gang worker slot of member `m1` on `node` placed at `from`, current until `until`.
fn window(node: &str, gpus: &[String], from: i64, until: i64) -> SlotWindow {
    SlotWindow {
        member: "m1".into(),
        slot: Slot::new(node, gpus),
        placement: format!("g{from}"),
        from,
        until,
    }
}

/// The entry of the slot whose last pod is `pod` (by name).
fn slot_of<'a>(u: &'a JobPeriodUsage, pod: &str) -> &'a SlotPeriodUsage {
    u.pods
        .values()
        .find(|p| p.pod_name.ends_with(&format!("/{pod}")))
        .unwrap_or_else(|| panic!("no slot with pod {pod}: {u:?}"))
}

fn uuids(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("GPU-{i:04}")).collect()
}

/// The hub's job `UID` (ml/gpt) created at 1_700_000_000, placed on member `m1` with one
/// worker on `n1` holding `GPU-0000..GPU-0003`.
fn hub(not_after: Option<i64>) -> BTreeMap<String, HubJob> {
    BTreeMap::from([(
        UID.to_string(),
        HubJob {
            job: JobRef {
                kind: "TrainingJob".into(),
                namespace: "ml".into(),
                name: "gpt".into(),
                uid: UID.into(),
            },
            not_before: 1_700_000_000,
            not_after,
            windows: vec![window("n1", &uuids(4), 1_700_000_000, i64::MAX)],
            model: None,
        },
    )])
}

#[test]
fn grouping_by_job_and_period() {
    // One worker ran [0, 12) on its 4 placed GPUs (offsets from 1_700_000_000), 10 s periods:
    // period 170_000_000 pays 40, period 170_000_001 pays 8. A pod without gpupool labels is
    // ignored.
    let w0 = placed_pod(
        "w0",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:13:32Z"),
        4,
    );
    let mut stranger = placed_pod("s", "n1", "2023-11-14T22:13:20Z", None, 8);
    stranger
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .remove(LABEL_MANAGED_BY);
    let models = BTreeMap::from([("GPU-0000".to_string(), "NVIDIA H100 80GB HBM3".to_string())]);
    let by = usage_by_job_period(
        "m1",
        &[w0, stranger],
        &hub(None),
        seen(&models),
        1_700_000_100,
        10,
    );
    assert!(by.unmatched.is_empty());
    assert_eq!(by.by_job_period.len(), 2);
    let mut it = by.by_job_period.iter();
    let ((job, p0), u0) = it.next().unwrap();
    assert_eq!(job.uid, UID);
    assert_eq!(job.kind, "TrainingJob");
    assert_eq!(*p0, 170_000_000);
    assert_eq!(u0.gpu_seconds(), 40);
    assert_eq!(u0.unpaid_gpu_seconds(), 0);
    assert_eq!(
        slot_of(u0, "w0").gpu_model.as_deref(),
        Some("NVIDIA H100 80GB HBM3")
    );
    let ((_, p1), u1) = it.next().unwrap();
    assert_eq!(*p1, 170_000_001);
    assert_eq!(u1.gpu_seconds(), 8);
}

#[test]
fn forged_pods_are_not_paid() {
    let now = 1_700_000_100;
    // A pod for a job the hub never had, claiming 500 GPUs.
    let mut ghost = placed_pod("ghost", "n1", "2023-11-14T22:13:20Z", None, 500);
    ghost.metadata.labels.as_mut().unwrap().insert(
        LABEL_JOB_UID.into(),
        "11111111-2222-4333-8444-555555555555".into(),
    );
    // A pod of the real job claiming more GPUs than placed (its UUID set differs).
    let greedy = placed_pod("greedy", "n1", "2023-11-14T22:13:20Z", None, 8);
    // A pod of the real job on another node.
    let elsewhere = placed_pod("elsewhere", "n2", "2023-11-14T22:13:20Z", None, 4);
    let by = usage_by_job_period(
        "m1",
        &[ghost, greedy, elsewhere],
        &hub(None),
        seen(&BTreeMap::new()),
        now,
        1_000,
    );
    assert_eq!(by.unmatched["NoSuchHubJob"].0, 500 * 100);
    let paid: i64 = by.by_job_period.values().map(|u| u.gpu_seconds()).sum();
    let unpaid: i64 = by
        .by_job_period
        .values()
        .map(|u| u.unpaid_gpu_seconds())
        .sum();
    assert_eq!(paid, 0);
    assert_eq!(unpaid, 8 * 100 + 4 * 100);
    // The same job's pods on another member are not paid either.
    let real = placed_pod("w", "n1", "2023-11-14T22:13:20Z", None, 4);
    let other = usage_by_job_period(
        "m2",
        &[real],
        &hub(None),
        seen(&BTreeMap::new()),
        now,
        1_000,
    );
    assert_eq!(
        other
            .by_job_period
            .values()
            .map(|u| u.gpu_seconds())
            .sum::<i64>(),
        0
    );
}

#[test]
fn forged_times_are_clipped_to_the_jobs_life_on_the_hub() {
    // A 2-second pod whose start was moved 6 h back: the job only exists since 1_700_000_000.
    let mut p = placed_pod(
        "w",
        "n1",
        "2023-11-14T16:13:20Z",
        Some("2023-11-14T22:13:22Z"),
        4,
    );
    // Both the pod's startTime and its container start are backdated.
    let st = p.status.as_mut().unwrap();
    st.start_time = Some(serde_json::from_value(json!("2023-11-14T16:13:20Z")).unwrap());
    let by = usage_by_job_period(
        "m1",
        &[p.clone()],
        &hub(None),
        seen(&BTreeMap::new()),
        1_700_000_100,
        3_600,
    );
    let paid: i64 = by.by_job_period.values().map(|u| u.gpu_seconds()).sum();
    assert_eq!(paid, 4 * 2);
    // The claim before the job existed is reported per member, in no record.
    let unpaid: i64 = by
        .by_job_period
        .values()
        .map(|u| u.unpaid_gpu_seconds())
        .sum::<i64>()
        + by.unmatched["OutsideJobLife"].0;
    assert_eq!(unpaid, 4 * 6 * 3600);
    assert_eq!(by.by_job_period.len(), 1, "one period of the job's life");
    // An end after the job's completion (or deletion, or maxRuntimeSeconds) is clipped too,
    // and nothing is paid beyond "now".
    let running = placed_pod("w", "n1", "2023-11-14T22:13:20Z", None, 4);
    let by = usage_by_job_period(
        "m1",
        &[running],
        &hub(Some(1_700_000_030)),
        seen(&BTreeMap::new()),
        1_700_000_100,
        3_600,
    );
    let paid: i64 = by.by_job_period.values().map(|u| u.gpu_seconds()).sum();
    assert_eq!(paid, 4 * 30);
}

#[test]
fn a_placement_is_paid_at_most_its_gpus_per_period() {
    // Two pods claim the same placement at once: together at most 4 GPUs × the period.
    let a = placed_pod(
        "a",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:13:30Z"),
        4,
    );
    let mut b = placed_pod(
        "b",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:13:30Z"),
        4,
    );
    b.metadata.uid = Some("uid-b".into());
    let by = usage_by_job_period(
        "m1",
        &[a, b],
        &hub(None),
        seen(&BTreeMap::new()),
        1_700_000_100,
        10,
    );
    let u = by.by_job_period.values().next().unwrap();
    assert_eq!(u.gpu_seconds(), 40);
    assert_eq!(u.unpaid_gpu_seconds(), 40);
}

#[test]
fn dominant_class_picks_most_gpu_seconds() {
    assert_eq!(
        dominant_class([(Some("NVIDIA A100"), 10), (Some("NVIDIA H100"), 30)]),
        1
    );
    assert_eq!(
        dominant_class([(Some("NVIDIA A100"), 30), (Some("NVIDIA H100"), 10)]),
        2
    );
    assert_eq!(dominant_class([(None, 5)]), 0);
    assert_eq!(dominant_class(std::iter::empty()), 0);
}

#[test]
fn record_names_are_deterministic_dns_names() {
    let a = record_name("member-1", UID, 472_222);
    assert_eq!(a, format!("member-1.{UID}.472222"));
    assert_eq!(a, record_name("member-1", UID, 472_222));
    assert_ne!(a, record_name("member-1", UID, 472_223));
    assert!(a.len() <= 253);
}

#[test]
fn a_pod_is_not_paid_past_the_end_the_hub_saw() {
    // The hub's watch saw the pod end at 1_700_000_010; the member later says it ran to
    // 1_700_000_090 (or flips it back to running).
    let rewritten = placed_pod(
        "w",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:14:50Z"),
        4,
    );
    let reopened = placed_pod("w", "n1", "2023-11-14T22:13:20Z", None, 4);
    let ends = BTreeMap::from([("uid-w".to_string(), 1_700_000_010)]);
    let models = BTreeMap::new();
    for (pod, slack, claimed) in [
        (rewritten.clone(), 0, 90),
        (reopened, 0, 100),
        (rewritten, 5, 90),
    ] {
        let by = usage_by_job_period(
            "m1",
            &[pod],
            &hub(None),
            HubObservations {
                gpu_models: &models,
                observed_ends: &ends,
                first_seen: &NO_ENDS,
                end_slack_seconds: slack,
            },
            1_700_000_100,
            3_600,
        );
        let paid: i64 = by.by_job_period.values().map(|u| u.gpu_seconds()).sum();
        let unpaid: i64 = by
            .by_job_period
            .values()
            .map(|u| u.unpaid_gpu_seconds())
            .sum();
        assert_eq!(paid, 4 * (10 + slack));
        assert_eq!(paid + unpaid, 4 * claimed, "the rest is surfaced as unpaid");
    }
}

#[test]
fn earlier_gang_placements_are_paid_for_the_time_they_were_current() {
    // Placed on GPU-0000..3 until a restart at +40, then on GPU-0004..7 of n1.
    let mut jobs = hub(None);
    let j = jobs.get_mut(UID).unwrap();
    let new: Vec<String> = (4..8).map(|i| format!("GPU-{i:04}")).collect();
    j.windows = vec![
        window("n1", &uuids(4), 1_700_000_000, 1_700_000_040),
        window("n1", &new, 1_700_000_040, i64::MAX),
    ];
    // The old worker claims to have run to +60 (its pod outlived the restart by 20 s).
    let old_pod = placed_pod(
        "old",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:14:20Z"),
        4,
    );
    // The new worker claims to have started with the job (before its placement existed).
    let mut new_pod = placed_pod("new", "n1", "2023-11-14T22:13:20Z", None, 4);
    new_pod.metadata.uid = Some("uid-new".into());
    new_pod.metadata.annotations = Some(BTreeMap::from([(
        ANNOTATION_GPU_UUIDS.to_string(),
        new.join(","),
    )]));
    let by = usage_by_job_period(
        "m1",
        &[old_pod, new_pod],
        &jobs,
        seen(&BTreeMap::new()),
        1_700_000_100,
        3_600,
    );
    let u = by.by_job_period.values().next().unwrap();
    assert_eq!(
        slot_of(u, "old").gpu_seconds,
        4 * 40,
        "old placement: [0, 40)"
    );
    assert_eq!(slot_of(u, "old").unpaid_gpu_seconds, 4 * 20);
    assert_eq!(
        slot_of(u, "new").gpu_seconds,
        4 * 60,
        "new placement: [40, now)"
    );
    assert_eq!(slot_of(u, "new").unpaid_gpu_seconds, 4 * 40);
    // A pod on the old GPUs of a job that never had them is still refused.
    let mut never = hub(None);
    never.get_mut(UID).unwrap().windows.clear();
    let p = placed_pod("w", "n1", "2023-11-14T22:13:20Z", None, 4);
    let by = usage_by_job_period(
        "m1",
        &[p],
        &never,
        seen(&BTreeMap::new()),
        1_700_000_100,
        3_600,
    );
    let paid: i64 = by.by_job_period.values().map(|u| u.gpu_seconds()).sum();
    assert_eq!(paid, 0);
}

/// An InferenceJob (created at 1_700_000_000) whose replica 0 runs on `gpus` of `n1` in `m1`.
fn inference_job(gpus: &[String]) -> crate::api::InferenceJob {
    serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "InferenceJob",
        "metadata": {"name": "gpt", "namespace": "ml", "uid": UID,
                     "creationTimestamp": "2023-11-14T22:13:20Z"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
                 "replicas": 1, "gpusPerReplica": gpus.len()},
        "status": {"placements": [{"cluster": "m1", "replicas": [0],
                   "gpus": [{"node": "n1", "gpuUuids": gpus, "revision": "r1", "ready": true}]}]}
    }))
    .unwrap()
}

#[test]
fn a_replaced_replica_is_paid_until_it_left_the_placements() {
    // Replica 0 runs on GPU-0000..3 from +0; a meter pass at +30 sees it placed. At +40 it is
    // replaced by one on GPU-0004..7 (the old pod lingers to +60); the next pass is at +100.
    let old = inference_job(&uuids(4));
    let new_gpus: Vec<String> = (4..8).map(|i| format!("GPU-{i:04}")).collect();
    let mut replaced = inference_job(&new_gpus);
    let before = old.status.clone().unwrap();
    replaced.status.as_mut().unwrap().retire_replicas(
        &before.placements,
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_040).unwrap(),
        ),
        1,
    );
    let mut old_pod = placed_pod(
        "old",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:14:20Z"),
        4,
    );
    old_pod
        .metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("gpupool.io/job-kind".into(), "InferenceJob".into());
    let pass = |job: &crate::api::InferenceJob, now: i64| {
        let jobs = meter::hub_jobs(&[], std::slice::from_ref(job));
        let by = usage_by_job_period(
            "m1",
            std::slice::from_ref(&old_pod),
            &jobs,
            seen(&BTreeMap::new()),
            now,
            3_600,
        );
        by.by_job_period
            .values()
            .map(|u| {
                u.pods
                    .values()
                    .filter(|p| p.pod_uid == "uid-old")
                    .map(|p| p.gpu_seconds)
                    .sum::<i64>()
            })
            .sum::<i64>()
    };
    assert_eq!(pass(&old, 1_700_000_030), 4 * 30, "first pass: [0, 30)");
    // The record keeps, per pod, the most any pass paid: the second pass must pay [0, 40).
    assert_eq!(
        pass(&replaced, 1_700_000_100),
        4 * 40,
        "the old placement is paid for the time it was current, not past it"
    );
    // A later pass pays the same again (the record's per-pod maximum: once in all).
    assert_eq!(pass(&replaced, 1_700_000_200), 4 * 40);
}

/// A training job (ml/gpt, created at +0) whose gang of one worker on `GPU-0000..3` of `n1` in
/// `m1` was placed by the hub at `placed_at` (absent: a status written before `placedAt`).
fn training_job(placed_at: Option<&str>) -> crate::api::TrainingJob {
    let mut st =
        json!({"cluster": "m1", "workers": [{"rank": 0, "node": "n1", "gpuUuids": uuids(4)}]});
    if let Some(t) = placed_at {
        st["placedAt"] = json!(t);
    }
    serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": "gpt", "namespace": "ml", "uid": UID,
                     "creationTimestamp": "2023-11-14T22:13:20Z"},
        "spec": {"template": {"spec": {"containers": [{"name": "c", "image": "i"}]}},
                 "workers": 1, "gpusPerWorker": 4},
        "status": st,
    }))
    .unwrap()
}

fn paid(by: &MemberUsage) -> i64 {
    by.by_job_period.values().map(|u| u.gpu_seconds()).sum()
}

#[test]
fn a_gang_is_paid_from_its_placement_not_from_the_jobs_creation() {
    // Queued 11 s, placed at +11; the member says its worker started with the job at +0.
    let p = placed_pod("w", "n1", "2023-11-14T22:13:20Z", None, 4);
    let now = 1_700_000_023;
    let queued = meter::hub_jobs(&[training_job(Some("2023-11-14T22:13:31Z"))], &[]);
    let by = usage_by_job_period(
        "m1",
        std::slice::from_ref(&p),
        &queued,
        seen(&BTreeMap::new()),
        now,
        3_600,
    );
    assert_eq!(paid(&by), 4 * 12, "paid from the placement at +11 on");
    assert_eq!(
        by.by_job_period
            .values()
            .map(|u| u.unpaid_gpu_seconds())
            .sum::<i64>(),
        4 * 11,
        "the queue wait is surfaced as unpaid"
    );
    // A status from before `placedAt` existed: bounded by the job's creation, as before.
    let legacy = meter::hub_jobs(&[training_job(None)], &[]);
    let by = usage_by_job_period("m1", &[p], &legacy, seen(&BTreeMap::new()), now, 3_600);
    assert_eq!(paid(&by), 4 * 23);
}

#[test]
fn a_restarted_gang_keeps_its_placement_time_in_its_past_placement() {
    let mut j = training_job(Some("2023-11-14T22:13:31Z"));
    let st = j.status.as_mut().unwrap();
    st.retire_placement(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(1_700_000_040).unwrap(),
    ));
    assert_eq!(
        st.past_placements[0].from.as_ref().map(|t| t.0.as_second()),
        Some(1_700_000_011),
        "the generation's placedAt becomes its past placement's from"
    );
    assert!(st.placed_at.is_none(), "the next generation gets its own");
    let jobs = meter::hub_jobs(&[j], &[]);
    let w = &jobs[UID].windows;
    assert_eq!(w.len(), 1);
    assert_eq!((w[0].from, w[0].until), (1_700_000_011, 1_700_000_040));
}

#[test]
fn a_replica_placed_on_an_old_job_is_paid_from_its_placement() {
    // The InferenceJob exists since +0; replica 0 was placed (or moved here) at +500. Its pod
    // claims to have run since +0.
    let mut j = inference_job(&uuids(4));
    j.status.as_mut().unwrap().placements[0].gpus[0].placed_at =
        Some(serde_json::from_value(json!("2023-11-14T22:21:40Z")).unwrap());
    let mut p = placed_pod("r0", "n1", "2023-11-14T22:13:20Z", None, 4);
    p.metadata
        .labels
        .as_mut()
        .unwrap()
        .insert("gpupool.io/job-kind".into(), "InferenceJob".into());
    let jobs = meter::hub_jobs(&[], &[j]);
    let by = usage_by_job_period(
        "m1",
        &[p],
        &jobs,
        seen(&BTreeMap::new()),
        1_700_000_600,
        3_600,
    );
    assert_eq!(
        paid(&by),
        4 * 100,
        "paid from +500, not from the job's creation"
    );
}

#[test]
fn copies_of_a_placed_pod_merge_into_one_slot_across_passes() {
    // The gang was placed at +0. Pass 1 at +30 sees worker `a`; by pass 2 at +60 the member's
    // admin replaced it with copy `b` (same labels, node and GPUs, new UID) claiming the same
    // start, and by pass 3 at +90 with copy `c`.
    let jobs = meter::hub_jobs(&[training_job(Some("2023-11-14T22:13:20Z"))], &[]);
    let pass = |name: &str, now: i64| {
        let mut p = placed_pod(name, "n1", "2023-11-14T22:13:20Z", None, 4);
        p.metadata.uid = Some(format!("uid-{name}-{now}"));
        let by = usage_by_job_period("m1", &[p], &jobs, seen(&BTreeMap::new()), now, 3_600);
        let u = by.by_job_period.values().next().unwrap().clone();
        u.pods
            .into_iter()
            .map(|(k, v)| (k, v.gpu_seconds))
            .collect::<BTreeMap<_, _>>()
    };
    let (p1, p2, p3) = (
        pass("a", 1_700_000_030),
        pass("b", 1_700_000_060),
        pass("c", 1_700_000_090),
    );
    // One key for the slot whatever the pod's UID: the record merges (maximum), never adds.
    assert_eq!(p1.len(), 1);
    assert_eq!(p1.keys().collect::<Vec<_>>(), p2.keys().collect::<Vec<_>>());
    assert_eq!(p2.keys().collect::<Vec<_>>(), p3.keys().collect::<Vec<_>>());
    let merged = [&p1, &p2, &p3]
        .iter()
        .flat_map(|m| m.values())
        .copied()
        .max()
        .unwrap();
    assert_eq!(
        merged,
        4 * 90,
        "the slot: 4 GPUs × 90 s, not the sum of the copies"
    );
    // A copy the hub's watch first saw at +80 is paid from then (less the slack) at most.
    let first = BTreeMap::from([("uid-late".to_string(), 1_700_000_080)]);
    let mut late = placed_pod("late", "n1", "2023-11-14T22:13:20Z", None, 4);
    late.metadata.uid = Some("uid-late".into());
    let by = usage_by_job_period(
        "m1",
        &[late],
        &jobs,
        HubObservations {
            gpu_models: &BTreeMap::new(),
            observed_ends: &NO_ENDS,
            first_seen: &first,
            end_slack_seconds: 2,
        },
        1_700_000_090,
        3_600,
    );
    assert_eq!(
        paid(&by),
        4 * 12,
        "from +78 (first seen at +80, 2 s slack) to +90"
    );
}

#[test]
fn an_end_persisted_in_a_record_bounds_the_pod_after_a_restart() {
    // A record written before the restart says the hub saw pod `uid-w` end at +10; the new
    // watch never saw it end (it forgot), and the member now says it ran to +90.
    let rec: crate::api::UsageRecord = serde_json::from_value(json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "UsageRecord",
        "metadata": {"name": "m1.x.1"},
        "spec": {"cluster": "m1", "ownerWallet": "w", "jobKind": "TrainingJob",
                 "jobNamespace": "ml", "jobName": "gpt", "jobUid": UID, "period": 1,
                 "periodStart": "2023-11-14T22:13:20Z", "periodEnd": "2023-11-14T23:13:20Z",
                 "gpuSeconds": 40, "gpuClass": 1,
                 "pods": {"slot": {"name": "gp/w", "podUid": "uid-w", "gpus": 4, "gpuSeconds": 40,
                                   "observedEnd": "2023-11-14T22:13:30Z"}}}
    }))
    .unwrap();
    let ends = meter::known_ends("m1", &BTreeMap::new(), [rec].iter());
    assert_eq!(ends.get("uid-w"), Some(&1_700_000_010));
    let p = placed_pod(
        "w",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:14:50Z"),
        4,
    );
    let by = usage_by_job_period(
        "m1",
        &[p],
        &hub(None),
        HubObservations {
            gpu_models: &BTreeMap::new(),
            observed_ends: &ends,
            first_seen: &NO_ENDS,
            end_slack_seconds: 0,
        },
        1_700_000_100,
        3_600,
    );
    assert_eq!(paid(&by), 4 * 10);
}

#[test]
fn a_preempted_gang_is_paid_until_its_pods_end_at_most_its_grace_period_past_the_preemption() {
    // Placed at +11, preempted at +40 with a 30 s grace period: the scheduler retires the
    // placement as current until +70.
    let mut j = training_job(Some("2023-11-14T22:13:31Z"));
    j.status.as_mut().unwrap().retire_placement(
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(1_700_000_070).unwrap(),
        ),
    );
    let jobs = meter::hub_jobs(&[j], &[]);
    let now = 1_700_000_100;
    let pay = |p: Pod| {
        paid(&usage_by_job_period(
            "m1",
            &[p],
            &jobs,
            seen(&BTreeMap::new()),
            now,
            3_600,
        ))
    };
    // Its worker stopped at +52, within the grace period: paid to the second it ended.
    let ended = placed_pod(
        "w",
        "n1",
        "2023-11-14T22:13:20Z",
        Some("2023-11-14T22:14:12Z"),
        4,
    );
    assert_eq!(pay(ended), 4 * (52 - 11));
    // A worker still reported running after its grace period is not paid past it.
    let stuck = placed_pod("w", "n1", "2023-11-14T22:13:20Z", None, 4);
    assert_eq!(pay(stuck), 4 * (70 - 11));
}
