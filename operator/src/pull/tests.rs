use super::*;
use crate::api::{MemberReportSpec, MemberWorkStatus};
use crate::member_agent::apply::pod_report;
use crate::metering::pod_run;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::ResourceExt;
use serde_json::json;

fn manifest(name: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "ml",
                        "labels": {"app.kubernetes.io/managed-by": "gpupool", "gpupool.io/job-name": "gpt"},
                        "annotations": {"gpupool.io/gpu-uuids": "GPU-1,GPU-2"}},
           "spec": {"nodeName": "n1", "containers": [{"name": "worker", "image": "t"}]}})
}

/// The pod as the member's kubelet would have it.
fn member_pod(name: &str, status: Value) -> Pod {
    let mut m = manifest(name);
    m["metadata"]["uid"] = "uid-1".into();
    m["status"] = status;
    serde_json::from_value(m).unwrap()
}

#[test]
fn rebuilt_pods_read_like_the_member_pods() {
    let cases = [
        json!({"phase": "Pending"}),
        json!({"phase": "Running", "startTime": "2026-01-01T00:00:00Z",
               "conditions": [{"type": "Ready", "status": "True"}],
               "containerStatuses": [{"name": "worker", "ready": true, "restartCount": 0, "image": "t", "imageID": "",
                   "state": {"running": {"startedAt": "2026-01-01T00:00:05Z"}}}]}),
        json!({"phase": "Succeeded", "startTime": "2026-01-01T00:00:00Z",
               "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 1, "image": "t", "imageID": "",
                   "lastState": {"terminated": {"exitCode": 1, "startedAt": "2026-01-01T00:00:02Z", "finishedAt": "2026-01-01T00:10:00Z"}},
                   "state": {"terminated": {"exitCode": 0, "startedAt": "2026-01-01T00:10:01Z", "finishedAt": "2026-01-01T01:00:00Z"}}}]}),
        json!({"phase": "Failed", "startTime": "2026-01-01T00:00:00Z", "reason": "Evicted",
               "containerStatuses": [{"name": "worker", "ready": false, "restartCount": 0, "image": "t", "imageID": "",
                   "state": {"terminated": {"exitCode": 137, "startedAt": "2026-01-01T00:00:01Z", "finishedAt": "2026-01-01T00:30:00Z"}}}]}),
    ];
    for status in cases {
        let p = member_pod("gpt-0", status.clone());
        let rebuilt = pod_from_report(&manifest("gpt-0"), &pod_report(&p)).unwrap();
        assert_eq!(
            pod_run(&rebuilt),
            pod_run(&p),
            "metered run differs for {status}"
        );
        let st = rebuilt.status.as_ref().unwrap();
        assert_eq!(st.phase, p.status.as_ref().unwrap().phase);
        assert_eq!(rebuilt.labels(), p.labels());
        assert_eq!(rebuilt.annotations()["gpupool.io/gpu-uuids"], "GPU-1,GPU-2");
        assert_eq!(
            rebuilt.spec.as_ref().unwrap().node_name.as_deref(),
            Some("n1")
        );
        assert_eq!(rebuilt.metadata.uid.as_deref(), Some("uid-1"));
    }
    let missing = crate::member_agent::apply::missing_pod("ml", "gpt-0");
    assert!(pod_from_report(&manifest("gpt-0"), &missing).is_none());
}

fn report(shard: i32, shards: i32, at: &str, nodes: &[&str]) -> MemberReport {
    MemberReport::new(
        &format!("m-{shard}"),
        MemberReportSpec {
            cluster_id: "uid-m".into(),
            kubernetes_version: "v1.36.3".into(),
            agent_version: "0.1.0".into(),
            shard,
            shards,
            node_count: nodes.len() as i32,
            report_time: Time(at.parse().unwrap()),
            binding_mode: None,
            nodes: nodes
                .iter()
                .map(|n| NodeReport {
                    name: n.to_string(),
                    ready: true,
                    gpus: 8,
                    topology: None,
                    busy_gpu_uuids: vec![format!("GPU-{n}")],
                    outside_claimed_gpu_uuids: vec![],
                })
                .collect(),
        },
    )
}

#[test]
fn inventory_from_the_newest_report_and_the_works() {
    let reports = [
        report(0, 2, "2026-01-01T00:01:00Z", &["a", "b"]),
        report(1, 2, "2026-01-01T00:01:00Z", &["c"]),
        // A stale shard of an older, larger report.
        report(2, 3, "2026-01-01T00:00:00Z", &["gone"]),
    ];
    let cur = current_report(&reports);
    assert_eq!(cur.len(), 2);
    let mut w = MemberWork::new(
        "tj-ml-gpt",
        MemberWorkSpec {
            job_ref: None,
            manifests: vec![manifest("gpt-0"), manifest("gpt-1")],
        },
    );
    let running = member_pod(
        "gpt-0",
        json!({"phase": "Running", "startTime": "2026-01-01T00:00:00Z"}),
    );
    w.status = Some(MemberWorkStatus {
        pods: vec![
            pod_report(&running),
            crate::member_agent::apply::missing_pod("ml", "gpt-1"),
        ],
        ..Default::default()
    });
    let inv = inventory(&cur, &[w]);
    assert_eq!(inv.version, "v1.36.3");
    assert_eq!(inv.nodes.keys().collect::<Vec<_>>(), ["a", "b", "c"]);
    assert_eq!(inv.nodes["a"].busy_uuids, ["GPU-a"]);
    assert_eq!(inv.pods.len(), 1, "a missing pod is not in the member");
    assert_eq!(inv.pods[0].metadata.name.as_deref(), Some("gpt-0"));
}

#[test]
fn work_names_are_stable_and_short_enough() {
    assert_eq!(work_name("TrainingJob", "ml", "gpt"), "tj-ml-gpt");
    assert_eq!(work_name("InferenceJob", "ml", "llama"), "ij-ml-llama");
    let long = "x".repeat(253);
    let a = work_name("TrainingJob", "ml", &long);
    let b = work_name("TrainingJob", "ml2", &long);
    assert!(a.len() <= 200 && b.len() <= 200);
    assert_ne!(a, b);
    assert_eq!(a, work_name("TrainingJob", "ml", &long));
}

#[test]
fn liveness_follows_the_lease() {
    let now: Timestamp = "2026-01-01T00:01:00Z".parse().unwrap();
    let grace = Duration::from_secs(30);
    assert!(!alive(None, now, grace));
    assert!(alive(
        Some("2026-01-01T00:00:45Z".parse().unwrap()),
        now,
        grace
    ));
    assert!(!alive(
        Some("2026-01-01T00:00:20Z".parse().unwrap()),
        now,
        grace
    ));
    // A clock slightly ahead of the hub's is still alive.
    assert!(alive(
        Some("2026-01-01T00:01:02Z".parse().unwrap()),
        now,
        grace
    ));
}

#[test]
fn work_edits_add_once_and_remove_pods_with_their_claims() {
    let claim = json!({"apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
                       "metadata": {"name": "gpt-1-gpus", "namespace": "ml"}});
    let svc = json!({"apiVersion": "v1", "kind": "Service",
                     "metadata": {"name": "gpt", "namespace": "ml"}});
    let mut m = Vec::new();
    let wanted = vec![svc.clone(), manifest("gpt-0"), manifest("gpt-1"), claim];
    assert_eq!(add_missing(&mut m, wanted.clone()), 2);
    assert_eq!(
        add_missing(&mut m, wanted),
        0,
        "adding again changes nothing"
    );
    assert_eq!(m.len(), 4);
    let mut w = MemberWork::new(
        "tj-ml-gpt",
        MemberWorkSpec {
            job_ref: None,
            manifests: m.clone(),
        },
    );
    // gpt-0 reported Running, gpt-1 not reported yet: both are the job's pods.
    let running = member_pod("gpt-0", json!({"phase": "Running"}));
    w.status = Some(MemberWorkStatus {
        pods: vec![pod_report(&running)],
        ..Default::default()
    });
    let pods = work_pods(&w);
    assert_eq!(pods.len(), 2);
    assert_eq!(
        pods[0].1.status.as_ref().unwrap().phase.as_deref(),
        Some("Running")
    );
    assert!(pods[1].1.status.is_none(), "not reported: as wanted");
    let removed = remove_pods(&mut m, &w, |p| p.name_any() == "gpt-1");
    assert_eq!(removed, 1);
    let left: Vec<_> = m.iter().map(|v| manifest_key(v).2.to_string()).collect();
    assert_eq!(left, ["gpt", "gpt-0"], "the pod and its claim went");
}

#[test]
fn work_objects_carry_the_member_and_the_job() {
    let w = work_object(
        "east",
        WorkJobRef {
            kind: "TrainingJob".into(),
            namespace: "ml".into(),
            name: "gpt".into(),
            uid: Some("u-1".into()),
        },
        vec![],
    );
    assert_eq!(w.name_any(), "tj-ml-gpt");
    assert_eq!(w.namespace().as_deref(), Some("gpupool-member-east"));
    assert_eq!(w.labels()["gpupool.io/job-uid"], "u-1");
    assert_eq!(w.labels()[names::MEMBER_LABEL], "east");
}

#[test]
fn a_report_is_accepted_only_for_the_cluster_the_member_joined_as() {
    let r = report(0, 1, "2026-01-01T00:01:00Z", &["a"]);
    assert_eq!(report_verdict(None, &r), None, "identity not known yet");
    assert_eq!(report_verdict(Some(""), &r), None);
    let ok = report_verdict(Some("uid-m"), &r).unwrap();
    assert_eq!((ok.accepted, ok.message), (Some(true), None));
    let refused = report_verdict(Some("uid-other"), &r).unwrap();
    assert_eq!(refused.accepted, Some(false));
    let msg = refused.message.unwrap();
    assert!(msg.contains("uid-m") && msg.contains("uid-other"), "{msg}");
}
