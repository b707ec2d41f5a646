//! A DRA member's claims serve only the pod gpupool made them for: a ResourceClaim created
//! beforehand with the name gpupool will use is not adopted, and a worker pod deleted in the
//! member is created again with a fresh claim of its own. Real API servers, the member's own
//! kube-scheduler (allocating the claims) and garbage collector.

use gpupool::api::{TrainingJob, TrainingPhase};
use gpupool_e2e::{
    Federation, GpuNode, MemberKind, Operator, allocated_uuids, eventually, publish_fixture,
    register_member,
};
use k8s_openapi::api::core::v1::{Namespace, Pod};
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::BTreeSet;

const WALLET: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";

/// A claim with gpupool's name for worker `pod`, asking for GPU index 7 of the node.
fn planted_claim(pod: &str, ns: &str) -> ResourceClaim {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": format!("{pod}-gpus"), "namespace": ns},
        "spec": {"devices": {"requests": [{"name": "gpus", "exactly": {
            "deviceClassName": "gpu.nvidia.com", "allocationMode": "ExactCount", "count": 2,
            "selectors": [{"cel": {"expression":
                "device.attributes[\"gpu.nvidia.com\"].index >= 6"}}]}}]}}
    }))
    .unwrap()
}

/// The job's worker pod (found by label, in whichever member namespace gpupool uses).
async fn worker(member: &kube::Client, job: &str) -> Option<Pod> {
    Api::<Pod>::all(member.clone())
        .list(&ListParams::default().labels(&format!("gpupool.io/job-name={job}")))
        .await
        .ok()?
        .items
        .into_iter()
        .next()
}

/// The pod's claim, when it is allocated, controlled by the pod and running.
async fn served(member: &kube::Client, pod: &Pod) -> anyhow::Result<Option<ResourceClaim>> {
    let ns = pod.namespace().unwrap();
    let claims: Api<ResourceClaim> = Api::namespaced(member.clone(), &ns);
    let Some(c) = claims.get_opt(&format!("{}-gpus", pod.name_any())).await? else {
        return Ok(None);
    };
    let owned = c
        .owner_references()
        .iter()
        .any(|o| o.controller == Some(true) && Some(&o.uid) == pod.metadata.uid.as_ref());
    let allocated = c.status.as_ref().is_some_and(|s| s.allocation.is_some());
    Ok((owned && allocated).then_some(c))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_claim_not_made_for_the_pod_is_replaced_and_a_recreated_pod_gets_its_own() {
    gpupool::telemetry::init_logging();
    let fed = Federation::start_with(&[MemberKind::Dra]).await.unwrap();
    fed.add_nodes(0, &[GpuNode::new("dgx-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", "dgx-0").await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    register_member(&hub, "member-1", &fed.members[0].cp, WALLET, "r1")
        .await
        .unwrap();
    let _op = Operator::start(hub.clone(), Operator::test_config(30));
    gpupool_e2e::wait_member_ready(&hub, "member-1", 60)
        .await
        .unwrap();

    // Someone in the member plants a claim with the name gpupool will use for the worker, asking
    // for other GPUs than the hub will choose — in every namespace gpupool might run it in.
    // The tenant namespace is made as gpupool makes it (labelled as its tenant's), so gpupool
    // runs the worker there beside the planted claim.
    let tenant_ns = gpupool::tenant::namespace_name("default");
    for ns in ["default", tenant_ns.as_str()] {
        let n = if ns == "default" {
            let mut n = Namespace::default();
            n.metadata.name = Some(ns.into());
            n
        } else {
            gpupool::tenant::namespace_object("default")
        };
        let _ = Api::<Namespace>::all(member.clone())
            .create(&PostParams::default(), &n)
            .await;
        Api::<ResourceClaim>::namespaced(member.clone(), ns)
            .create(&PostParams::default(), &planted_claim("steer-g0-w0", ns))
            .await
            .unwrap();
    }
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let job: TrainingJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: steer, namespace: default}\nspec: {template: {spec: {containers: [{name: t, image: trainer}]}}, workers: 1, gpusPerWorker: 2, nvlink: required}\n",
    )
    .unwrap();
    tjs.create(&PostParams::default(), &job).await.unwrap();
    let st = gpupool_e2e::wait_training_phase(&tjs, "steer", TrainingPhase::Running, 90)
        .await
        .unwrap()
        .status
        .unwrap();
    let chosen: BTreeSet<String> = st.workers[0].gpu_uuids.iter().cloned().collect();
    let pod = worker(&member, "steer").await.expect("the worker pod");
    let claim = eventually(60, "the worker's own claim allocated", || async {
        served(&member, &pod).await
    })
    .await
    .unwrap();
    assert_eq!(
        allocated_uuids(&claim).1,
        chosen,
        "the worker runs on the GPUs the hub chose, not the planted claim's"
    );

    // The worker pod deleted behind gpupool's back: created again, with a claim of its own
    // (not the old pod's, which the garbage collector removes) on the same GPUs, and running.
    let pods: Api<Pod> = Api::namespaced(member.clone(), &pod.namespace().unwrap());
    pods.delete(&pod.name_any(), &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    let old_uid = pod.uid().unwrap();
    let again = eventually(90, "the worker created again and running", || async {
        Ok(worker(&member, "steer").await.filter(|p| {
            p.uid().as_deref() != Some(old_uid.as_str())
                && p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
        }))
    })
    .await
    .unwrap();
    let claim = eventually(30, "the new worker's own claim", || async {
        served(&member, &again).await
    })
    .await
    .unwrap();
    assert_eq!(allocated_uuids(&claim).1, chosen);
}
