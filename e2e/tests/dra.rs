//! Exact GPUs enforced in the member: on a DRA member the hub's choice becomes a ResourceClaim that
//! the member's own kube-scheduler allocates; a device-plugin member keeps working beside it.
//! Real API servers, real kube-scheduler and kube-controller-manager in the members, KWOK nodes
//! with simulated ResourceSlices (NVIDIA's driver name and attributes).

use gpupool::api::{BindingMode, MemberCluster, TrainingJob, TrainingPhase};
use gpupool_e2e::{
    Federation, GpuNode, MemberKind, Operator, allocated_uuids, eventually, publish_fixture,
    register_member,
};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::resource::v1::ResourceClaim;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use std::collections::BTreeSet;
use std::time::{Duration, Instant};

const WALLET_1: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";
const WALLET_2: &str = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM";
/// 44 base58 characters that decode to 33 bytes: passes CEL, is no Solana key.
const WALLET_33_BYTES: &str = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
const H100: &str = "NVIDIA H100 80GB HBM3";

fn training_job(name: &str, workers: i32, region: &str) -> TrainingJob {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "workers": workers, "gpusPerWorker": 4, "gpu": {"model": "H100"}, "nvlink": "required",
            "clusterSelector": {"region": region},
            "template": {"spec": {
                "containers": [{"name": "trainer", "image": "ghcr.io/example/train:1",
                    "resources": {"requests": {"cpu": "4", "memory": "16Gi"}}}],
            }},
        }
    }))
    .unwrap()
}

fn running(p: &Pod) -> bool {
    p.status.as_ref().and_then(|s| s.phase.as_deref()) == Some("Running")
}

async fn job_pods(c: &kube::Client, name: &str) -> Vec<Pod> {
    Api::<Pod>::namespaced(c.clone(), &gpupool::tenant::namespace_name("default"))
        .list(&ListParams::default().labels(&format!("gpupool.io/job-name={name}")))
        .await
        .unwrap()
        .items
}

/// Creates the job and waits until all its pods run in the member; returns the time it took.
async fn create_and_time(
    hub: &Api<TrainingJob>,
    member: &kube::Client,
    job: &TrainingJob,
) -> Duration {
    let name = job.metadata.name.clone().unwrap();
    let want = job.spec.workers as usize;
    let t0 = Instant::now();
    hub.create(&PostParams::default(), job).await.unwrap();
    loop {
        let pods = job_pods(member, &name).await;
        if pods.len() == want && pods.iter().all(running) {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(90),
            "{name} pods not Running: {pods:?}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn pod_scheduled_message(p: &Pod) -> Option<String> {
    p.status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| c.type_ == "PodScheduled" && c.status == "False")
        .map(|c| c.message.clone().unwrap_or_default())
}

/// A pod created behind gpupool's back in `default`, using the ResourceClaim of its own name.
fn pod_using_claim(name: &str) -> Pod {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": "busybox", "resources": {"claims": [{"name": "g"}]}}],
            "resourceClaims": [{"name": "g", "resourceClaimName": name}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }))
    .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dra_member_allocates_exactly_the_hubs_gpus_beside_a_device_plugin_member() {
    let fed = Federation::start_with(&[MemberKind::Dra, MemberKind::DevicePlugin])
        .await
        .expect("federation starts");
    let layout: [&[&str]; 2] = [&["dgx-h100-0", "dgx-h100-1"], &["dgx-h100-2"]];
    for (i, nodes) in layout.iter().enumerate() {
        let gn: Vec<GpuNode> = nodes.iter().map(|n| GpuNode::new(n, 8, H100)).collect();
        fed.add_nodes(i, &gn).await.unwrap();
        let c = fed.members[i].cp.client().await.unwrap();
        for n in nodes.iter() {
            publish_fixture(&c, "dgx-h100", n).await.unwrap();
        }
    }
    let hub = fed.hub.client().await.unwrap();
    register_member(&hub, "member-1", &fed.members[0].cp, WALLET_1, "region-1")
        .await
        .unwrap();
    register_member(&hub, "member-2", &fed.members[1].cp, WALLET_2, "region-2")
        .await
        .unwrap();
    // A pod the member's scheduler refuses for 10 s is withdrawn (see the end).
    let mut config = Operator::test_config(30);
    config.member_refusal = std::time::Duration::from_secs(10);
    let _op = Operator::start(hub.clone(), config);
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    for (name, mode) in [
        ("member-1", BindingMode::Dra),
        ("member-2", BindingMode::DevicePlugin),
    ] {
        eventually(30, &format!("{name} Ready in {mode} mode"), || async {
            let st = mcs.get(name).await?.status.unwrap_or_default();
            let ready = st
                .conditions
                .iter()
                .any(|c| c.type_ == "Ready" && c.status == "True");
            Ok(
                (ready && st.binding_mode == Some(mode) && st.capacity.gpus_total > 0)
                    .then_some(()),
            )
        })
        .await
        .unwrap();
    }
    // The member's API server reports the release it was built from (stamped at link time).
    let v = mcs
        .get("member-1")
        .await
        .unwrap()
        .status
        .unwrap()
        .kubernetes_version;
    assert!(
        v.as_deref()
            .is_some_and(|v| v.starts_with("v1.") && !v.contains("0.0.0")),
        "{v:?}"
    );
    let get = fed.hub.kubectl().ok(&["get", "memberclusters"]).unwrap();
    assert!(
        get.contains("BINDING") && get.contains("DRA") && get.contains("DevicePlugin"),
        "{get}"
    );

    // A wallet that passes CEL but is not a 32-byte key: the member is not Ready, and says why.
    let mut bad = mcs.get("member-2").await.unwrap();
    bad.metadata = kube::api::ObjectMeta {
        name: Some("bad-wallet".into()),
        ..Default::default()
    };
    bad.status = None;
    bad.spec.owner_wallet = WALLET_33_BYTES.into();
    bad.spec.kubeconfig_secret_ref.name = "no-such-secret".into();
    mcs.create(&PostParams::default(), &bad).await.unwrap();
    let cond = eventually(30, "bad-wallet Ready=False", || async {
        let st = mcs.get("bad-wallet").await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Ready" && c.status == "False"))
    })
    .await
    .unwrap();
    assert_eq!(cond.reason, "InvalidOwnerWallet", "{cond:?}");
    assert!(cond.message.contains("33 bytes"), "{cond:?}");

    // The same gang on each member; create → all pods Running.
    let m1 = fed.members[0].cp.client().await.unwrap();
    let m2 = fed.members[1].cp.client().await.unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let dp = create_and_time(&tjs, &m2, &training_job("plugin-gang", 2, "region-2")).await;
    let dra = create_and_time(&tjs, &m1, &training_job("dra-gang", 2, "region-1")).await;
    println!(
        "create -> pods Running: DRA member (2 workers, claims allocated by kube-scheduler) {dra:?}; device-plugin member (2 workers, pre-bound) {dp:?}"
    );

    // DRA: each worker's claim is allocated by the member's scheduler to exactly the hub's UUIDs
    // on the hub's node; the pod was bound by that scheduler, not pre-bound.
    let job = gpupool_e2e::wait_training_phase(&tjs, "dra-gang", TrainingPhase::Running, 30)
        .await
        .unwrap();
    let st = job.status.unwrap();
    assert_eq!(st.cluster.as_deref(), Some("member-1"));
    let claims: Api<ResourceClaim> =
        Api::namespaced(m1.clone(), &gpupool::tenant::namespace_name("default"));
    let pods = job_pods(&m1, "dra-gang").await;
    let mut hub_uuids = BTreeSet::new();
    for w in &st.workers {
        let pod = pods
            .iter()
            .find(|p| p.metadata.labels.as_ref().unwrap()["gpupool.io/index"] == w.rank.to_string())
            .unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.node_name.as_deref(),
            Some(w.node.as_str()),
            "scheduler bound the pod to the hub's node"
        );
        assert_eq!(
            pod.metadata.annotations.as_ref().unwrap()["gpupool.io/gpu-binding"],
            "DRA"
        );
        let res = spec.containers[0].resources.as_ref().unwrap();
        assert!(
            res.limits
                .as_ref()
                .is_none_or(|l| !l.contains_key("nvidia.com/gpu"))
        );
        let claim_name = format!("{}-gpus", pod.metadata.name.as_ref().unwrap());
        let claim = claims.get(&claim_name).await.unwrap();
        let (pool, uuids) = allocated_uuids(&claim);
        assert_eq!(pool, w.node);
        let want: BTreeSet<String> = w.gpu_uuids.iter().cloned().collect();
        assert_eq!(
            uuids, want,
            "worker {} got other GPUs than the hub chose",
            w.rank
        );
        hub_uuids.extend(want);
        let reserved = claim.status.as_ref().unwrap().reserved_for.clone().unwrap();
        assert_eq!(reserved[0].name, *pod.metadata.name.as_ref().unwrap());
        let owner = &claim.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(
            (owner.kind.as_str(), Some(&owner.uid)),
            ("Pod", pod.metadata.uid.as_ref())
        );
    }
    assert_eq!(hub_uuids.len(), 8);

    // Device plugin: pre-bound with nodeName and nvidia.com/gpu, no claim.
    let dp_pod = &job_pods(&m2, "plugin-gang").await[0];
    let spec = dp_pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some("dgx-h100-2"));
    assert_eq!(
        spec.containers[0]
            .resources
            .as_ref()
            .unwrap()
            .limits
            .as_ref()
            .unwrap()["nvidia.com/gpu"]
            .0,
        "4"
    );
    assert!(spec.resource_claims.is_none());
    assert_eq!(
        dp_pod.metadata.annotations.as_ref().unwrap()["gpupool.io/gpu-binding"],
        "DevicePlugin"
    );

    // Behind gpupool's back: a pod whose claim wants one of the gang's GPUs cannot get it.
    let taken = hub_uuids.iter().next().unwrap().clone();
    let node = st
        .workers
        .iter()
        .find(|w| w.gpu_uuids.contains(&taken))
        .unwrap()
        .node
        .clone();
    let rogue_claim: ResourceClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "rogue", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "g", "exactly": {
            "deviceClassName": "gpu.nvidia.com",
            "selectors": [{"cel": {"expression": format!("device.attributes[\"gpu.nvidia.com\"].uuid == \"{taken}\"")}}],
        }}]}},
    }))
    .unwrap();
    // The outsider works in its own namespace, not in gpupool's tenant namespace.
    let claims: Api<ResourceClaim> = Api::namespaced(m1.clone(), "default");
    claims
        .create(&PostParams::default(), &rogue_claim)
        .await
        .unwrap();
    let rogue_pod = pod_using_claim("rogue");
    let m1_pods: Api<Pod> = Api::namespaced(m1.clone(), "default");
    m1_pods
        .create(&PostParams::default(), &rogue_pod)
        .await
        .unwrap();
    let refused = eventually(
        30,
        "the member scheduler to refuse the rogue pod",
        || async { Ok(pod_scheduled_message(&m1_pods.get("rogue").await?)) },
    )
    .await
    .unwrap();
    println!(
        "member kube-scheduler refused a pod asking for {taken} (held by the gang on {node}): {refused}"
    );
    // A claim for any free GPU there gets one the hub did not hand out.
    let any: ResourceClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "any-gpu", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}},
    }))
    .unwrap();
    claims.create(&PostParams::default(), &any).await.unwrap();
    let mut any_pod = rogue_pod.clone();
    any_pod.metadata.name = Some("any-gpu".into());
    any_pod
        .spec
        .as_mut()
        .unwrap()
        .resource_claims
        .as_mut()
        .unwrap()[0]
        .resource_claim_name = Some("any-gpu".into());
    m1_pods
        .create(&PostParams::default(), &any_pod)
        .await
        .unwrap();
    let got = eventually(30, "a free GPU for the other pod", || async {
        let c = claims.get("any-gpu").await?;
        let (_, u) = allocated_uuids(&c);
        Ok((!u.is_empty()).then_some(u))
    })
    .await
    .unwrap();
    assert!(
        got.is_disjoint(&hub_uuids),
        "{got:?} is one of the gang's GPUs"
    );
    assert_eq!(
        claims
            .get("rogue")
            .await
            .unwrap()
            .status
            .and_then(|s| s.allocation),
        None
    );
    // That pod goes again: from here on only the rogue pod holds a GPU outside gpupool.
    m1_pods
        .delete("any-gpu", &DeleteParams::default().grace_period(0))
        .await
        .unwrap();
    claims
        .delete("any-gpu", &DeleteParams::default())
        .await
        .unwrap();
    eventually(60, "the other pod's claim deleted", || async {
        Ok(claims.get_opt("any-gpu").await?.is_none().then_some(()))
    })
    .await
    .unwrap();

    // Deleting the job deletes its pods, the garbage collector their claims, and the GPU the
    // rogue pod wanted becomes free: the member's scheduler now gives it to that pod.
    tjs.delete("dra-gang", &DeleteParams::default())
        .await
        .unwrap();
    eventually(60, "the gang's claims deleted", || async {
        let left = claims
            .list(&ListParams::default().labels("gpupool.io/job-name=dra-gang"))
            .await?
            .items;
        Ok(left.is_empty().then_some(()))
    })
    .await
    .unwrap();
    eventually(60, "the rogue pod to get the freed GPU", || async {
        let (_, u) = allocated_uuids(&claims.get("rogue").await?);
        Ok((u == BTreeSet::from([taken.clone()])).then_some(()))
    })
    .await
    .unwrap();

    // The hub reads the member's ResourceClaims: a GPU an outside claim holds is busy there, so
    // a gang that needs both of member-1's nodes whole waits instead of being sent to a member
    // whose scheduler must refuse it.
    let mut blocked = training_job("blocked", 2, "region-1");
    blocked.spec.gpus_per_worker = 8;
    blocked.spec.nvlink = gpupool::api::NvLinkMode::None;
    // A second container that shares the GPUs (DRA: both reference the one claim).
    let mut sidecar = blocked.spec.template.spec.as_ref().unwrap().containers[0].clone();
    sidecar.name = "profiler".into();
    sidecar.resources = None;
    blocked
        .spec
        .template
        .spec
        .as_mut()
        .unwrap()
        .containers
        .push(sidecar);
    blocked.spec.gpu_containers = vec!["trainer".into(), "no-such-container".into()];
    let err = tjs
        .create(&PostParams::default(), &blocked)
        .await
        .expect_err("a gpuContainers name that is no container is refused");
    assert!(
        err.to_string()
            .contains("gpuContainers must name containers of the template"),
        "{err}"
    );
    blocked.spec.gpu_containers = vec!["trainer".into(), "profiler".into()];
    tjs.create(&PostParams::default(), &blocked).await.unwrap();
    let reason = eventually(60, "the gang waiting for room", || async {
        let st = tjs.get("blocked").await?.status.unwrap_or_default();
        Ok(st.pending_reason.filter(|_| st.cluster.is_none()))
    })
    .await
    .unwrap();
    println!("with {taken} held by an outside claim the gang waits: {reason}");
    tokio::time::sleep(std::time::Duration::from_secs(5)).await;
    let st = tjs.get("blocked").await.unwrap().status.unwrap_or_default();
    assert!(
        st.cluster.is_none() && st.workers.is_empty(),
        "placed on a node whose GPU an outside claim holds: {st:?}"
    );
    // A claim the hub cannot see — this one carries gpupool's own job label, which the hub takes
    // for one of its claims — is still caught by the member's scheduler, and the hub says so.
    claims
        .patch(
            "rogue",
            &PatchParams::default(),
            &Patch::Merge(
                serde_json::json!({"metadata": {"labels": {"gpupool.io/job-uid": "forged"}}}),
            ),
        )
        .await
        .unwrap();
    let ev = eventually(60, "a MemberSchedulerRefused event", || async {
        let out = fed
            .hub
            .kubectl()
            .ok(&["get", "events", "-A", "-o", "json"])?;
        Ok((out.contains("MemberSchedulerRefused") && out.contains("blocked-g0-w")).then_some(out))
    })
    .await
    .unwrap();
    assert!(ev.contains("cannot allocate all claims"), "{ev}");

    // The hub does not leave it there: after 10 s of refusal the whole gang is withdrawn, with an
    // Event on the job saying what the member refused, and the refused node's GPUs are kept out of
    // placement. member-1's one other node cannot take the gang alone, so it waits; a third node
    // joins, and the gang runs on the two nodes the member's scheduler did not refuse.
    let refused_ev = eventually(90, "the gang withdrawn after the refusal", || async {
        let out =
            fed.hub
                .kubectl()
                .event_messages("default", "blocked", "MemberSchedulerRefused")?;
        Ok((!out.is_empty()).then_some(out))
    })
    .await
    .unwrap();
    assert!(
        refused_ev.contains("the scheduler of member member-1 refused worker pod blocked-g0-w")
            && refused_ev.contains(&format!("on node {node}"))
            && refused_ev.contains("cannot allocate all claims")
            && refused_ev.contains("withdrawn"),
        "{refused_ev}"
    );
    let st = eventually(30, "blocked restarted and waiting", || async {
        let st = tjs.get("blocked").await?.status.unwrap_or_default();
        Ok((st.restarts == 1 && st.workers.is_empty()).then_some(st))
    })
    .await
    .unwrap();
    assert!(st.cluster.is_none(), "{st:?}");
    eventually(30, "the refused gang's pods deleted", || async {
        let left = job_pods(&m1, "blocked").await;
        Ok(left
            .iter()
            .all(|p| p.metadata.deletion_timestamp.is_some())
            .then_some(()))
    })
    .await
    .unwrap();
    fed.add_nodes(0, &[GpuNode::new("dgx-h100-3", 8, H100)])
        .await
        .unwrap();
    publish_fixture(&m1, "dgx-h100", "dgx-h100-3")
        .await
        .unwrap();
    let job = gpupool_e2e::wait_training_phase(&tjs, "blocked", TrainingPhase::Running, 120)
        .await
        .unwrap();
    let st = job.status.unwrap();
    let mut nodes: Vec<&str> = st.workers.iter().map(|w| w.node.as_str()).collect();
    nodes.sort();
    let other = if node == "dgx-h100-0" {
        "dgx-h100-1"
    } else {
        "dgx-h100-0"
    };
    let mut want = vec![other, "dgx-h100-3"];
    want.sort();
    assert_eq!(nodes, want, "the refused node {node} was picked again");
    assert_eq!(st.restarts, 1);
    // Both named containers got the GPUs: each references the pod's GPU claim.
    let pods: Vec<Pod> = job_pods(&m1, "blocked")
        .await
        .into_iter()
        .filter(running)
        .collect();
    assert_eq!(pods.len(), 2);
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        for c in &spec.containers {
            let claims = c.resources.as_ref().and_then(|r| r.claims.clone());
            assert_eq!(
                claims.map(|cl| cl.into_iter().map(|x| x.name).collect::<Vec<_>>()),
                Some(vec!["gpupool-gpus".to_string()]),
                "container {} of {:?}",
                c.name,
                pod.metadata.name
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kubelet_assignments_on_a_device_plugin_member_are_reconciled() {
    let fed = Federation::start_with(&[MemberKind::DevicePlugin])
        .await
        .expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new("dgx-h100-0", 8, H100)])
        .await
        .unwrap();
    let m1 = fed.members[0].cp.client().await.unwrap();
    let mut reading = publish_fixture(&m1, "dgx-h100", "dgx-h100-0")
        .await
        .unwrap();
    let hub = fed.hub.client().await.unwrap();
    register_member(&hub, "member-1", &fed.members[0].cp, WALLET_1, "region-1")
        .await
        .unwrap();
    let op = Operator::start(hub.clone(), Operator::test_config(30));
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let mut job = training_job("first", 1, "region-1");
    job.spec.nvlink = gpupool::api::NvLinkMode::None;
    tjs.create(&PostParams::default(), &job).await.unwrap();
    let chosen = eventually(30, "first Running", || async {
        let st = tjs.get("first").await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Running).then(|| st.workers[0].gpu_uuids.clone()))
    })
    .await
    .unwrap();
    let free: Vec<String> = reading
        .spec
        .gpus
        .iter()
        .map(|g| g.uuid.clone())
        .filter(|u| !chosen.contains(u))
        .collect();

    // The kubelet gave the pod two of the GPUs gpupool chose and two others (the node agent reads
    // that from the kubelet's pod-resources API; here it is published as the agent would).
    let kubelet: Vec<String> = chosen[..2].iter().chain(&free[..2]).cloned().collect();
    reading.pod_devices = vec![gpupool::api::PodDevices {
        namespace: gpupool::tenant::namespace_name("default"),
        pod: "first-g0-w0".into(),
        container: "trainer".into(),
        device_ids: kubelet.clone(),
    }];
    gpupool::agent::publish(&m1, &reading).await.unwrap();

    // The hub says so (Event + metric) and counts the kubelet's GPUs held: 8 - 4 - 2 free.
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    eventually(30, "capacity to count the kubelet's GPUs", || async {
        let st = mcs.get("member-1").await?.status.unwrap_or_default();
        Ok((st.capacity.gpus_free == 2).then_some(()))
    })
    .await
    .unwrap();
    let events = fed.hub.kubectl().ok(&["get", "events", "-A"]).unwrap();
    assert!(
        events.contains("KubeletChoseOtherGPUs") && events.contains("first-g0-w0"),
        "{events}"
    );
    assert!(
        op.ctx
            .metrics
            .render()
            .contains("gpupool_kubelet_gpu_mismatches{cluster=\"member-1\"} 1"),
        "{}",
        op.ctx.metrics.render()
    );
    // A new job never gets a GPU the kubelet handed out: 2 GPUs fit, exactly the truly free ones.
    let mut second = training_job("second", 1, "region-1");
    second.spec.gpus_per_worker = 2;
    second.spec.nvlink = gpupool::api::NvLinkMode::None;
    tjs.create(&PostParams::default(), &second).await.unwrap();
    let got = eventually(30, "second Running", || async {
        let st = tjs.get("second").await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Running).then(|| st.workers[0].gpu_uuids.clone()))
    })
    .await
    .unwrap();
    let got: BTreeSet<String> = got.into_iter().collect();
    let want: BTreeSet<String> = free[2..].iter().cloned().collect();
    assert_eq!(got, want, "the second job got a GPU the kubelet holds");
}

/// An inference replica the DRA member's scheduler refuses (a GPU on its node was taken by a pod
/// gpupool does not know about) is withdrawn after the refusal limit, with an Event on the job, and
/// re-placed on another node; the refused node's GPUs are not picked again meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_replica_the_member_scheduler_refuses_is_placed_elsewhere() {
    let fed = Federation::start_with(&[MemberKind::Dra])
        .await
        .expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new("dgx-h100-0", 8, H100)])
        .await
        .unwrap();
    let m1 = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&m1, "dgx-h100", "dgx-h100-0")
        .await
        .unwrap();
    let hub = fed.hub.client().await.unwrap();
    register_member(&hub, "member-1", &fed.members[0].cp, WALLET_1, "region-1")
        .await
        .unwrap();
    let mut config = Operator::test_config(30);
    config.member_refusal = Duration::from_secs(8);
    let _op = Operator::start(hub.clone(), config);
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    eventually(30, "member-1 Ready in DRA mode", || async {
        let st = mcs.get("member-1").await?.status.unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok((ready && st.binding_mode == Some(BindingMode::Dra)).then_some(()))
    })
    .await
    .unwrap();

    // Behind gpupool's back: a pod whose claim takes any one GPU of the only node. The hub
    // counts the GPUs of claims it did not make as busy; this one carries gpupool's own job
    // label, so the hub takes it for one of its claims and cannot see it (as with a claim
    // allocated between a decision and the binding): the member's scheduler is what catches it.
    let claims: Api<ResourceClaim> = Api::namespaced(m1.clone(), "default");
    let any: ResourceClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "outside", "namespace": "default", "labels": {"gpupool.io/job-uid": "forged"}},
        "spec": {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}},
    }))
    .unwrap();
    claims.create(&PostParams::default(), &any).await.unwrap();
    let outside = pod_using_claim("outside");
    Api::<Pod>::namespaced(m1.clone(), "default")
        .create(&PostParams::default(), &outside)
        .await
        .unwrap();
    eventually(30, "the outside pod's claim allocated", || async {
        let (_, u) = allocated_uuids(&claims.get("outside").await?);
        Ok((!u.is_empty()).then_some(()))
    })
    .await
    .unwrap();

    // The hub sees 8 free GPUs and places the 8-GPU replica there; the member refuses it.
    let ijs: Api<gpupool::api::InferenceJob> = Api::namespaced(hub.clone(), "default");
    let job: gpupool::api::InferenceJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: llm, namespace: default}\nspec: {template: {spec: {containers: [{name: srv, image: ghcr.io/example/srv:1}]}}, replicas: 1, gpusPerReplica: 8, nvlink: none}\n",
    )
    .unwrap();
    ijs.create(&PostParams::default(), &job).await.unwrap();
    let ev = eventually(90, "the refused replica withdrawn", || async {
        let out = fed
            .hub
            .kubectl()
            .event_messages("default", "llm", "MemberSchedulerRefused")?;
        Ok((!out.is_empty()).then_some(out))
    })
    .await
    .unwrap();
    assert!(
        ev.contains("the scheduler of member member-1 refused replica 0")
            && ev.contains("on node dgx-h100-0")
            && ev.contains("cannot allocate all claims"),
        "{ev}"
    );
    // Withdrawn and not placed on the refused GPUs again: no placement while that node is all
    // there is.
    eventually(30, "no replica placed", || async {
        let st = ijs.get("llm").await?.status.unwrap_or_default();
        Ok(st.placements.is_empty().then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let st = ijs.get("llm").await.unwrap().status.unwrap_or_default();
    assert!(st.placements.is_empty(), "{st:?}");

    // Another node joins: the replica runs there and is ready.
    fed.add_nodes(0, &[GpuNode::new("dgx-h100-1", 8, H100)])
        .await
        .unwrap();
    publish_fixture(&m1, "dgx-h100", "dgx-h100-1")
        .await
        .unwrap();
    let st = eventually(90, "llm ready on the other node", || async {
        let st = ijs.get("llm").await?.status.unwrap_or_default();
        Ok((st.ready_replicas == 1).then_some(st))
    })
    .await
    .unwrap();
    let nodes: Vec<&str> = st
        .placements
        .iter()
        .flat_map(|p| p.gpus.iter().map(|g| g.node.as_str()))
        .collect();
    assert_eq!(nodes, vec!["dgx-h100-1"], "{st:?}");
}

/// A 1-worker × 8-GPU gang in member-1's region, with `extra` merged into its pod template spec.
fn gang_of_eight(name: &str, extra: serde_json::Value) -> TrainingJob {
    let mut spec = serde_json::json!({
        "containers": [{"name": "trainer", "image": "ghcr.io/example/train:1"}],
    });
    if let (Some(s), Some(e)) = (spec.as_object_mut(), extra.as_object()) {
        s.extend(e.clone());
    }
    serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"workers": 1, "gpusPerWorker": 8, "nvlink": "none", "template": {"spec": spec}},
    }))
    .unwrap()
}

/// Quarantine only what the GPUs caused. A gang whose own node selector matches no node is
/// refused by the DRA member's scheduler: after the refusal limit the job fails, and no GPU is
/// kept out of the pool — an honest 8-GPU gang then runs on that very node. When the member's
/// kube-scheduler is dead, a gang's pods stay Pending with no condition at all: after the same
/// limit the gang is withdrawn and runs on another member.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pods_own_constraints_fail_its_job_and_a_dead_member_scheduler_sends_jobs_elsewhere() {
    let mut fed = Federation::start_with(&[MemberKind::Dra, MemberKind::DevicePlugin])
        .await
        .expect("federation starts");
    for (i, node) in [(0, "dgx-h100-0"), (1, "dgx-h100-1")] {
        fed.add_nodes(i, &[GpuNode::new(node, 8, H100)])
            .await
            .unwrap();
        let c = fed.members[i].cp.client().await.unwrap();
        publish_fixture(&c, "dgx-h100", node).await.unwrap();
    }
    let hub = fed.hub.client().await.unwrap();
    register_member(&hub, "member-1", &fed.members[0].cp, WALLET_1, "region-1")
        .await
        .unwrap();
    let mut config = Operator::test_config(30);
    config.member_refusal = Duration::from_secs(8);
    let _op = Operator::start(hub.clone(), config);
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    eventually(30, "member-1 Ready in DRA mode", || async {
        let st = mcs.get("member-1").await?.status.unwrap_or_default();
        let ready = st
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok((ready && st.binding_mode == Some(BindingMode::Dra)).then_some(()))
    })
    .await
    .unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");

    // The user's own selector matches no node: the job fails, saying why.
    let picky = gang_of_eight(
        "picky",
        serde_json::json!({"nodeSelector": {"team": "nobody"}}),
    );
    tjs.create(&PostParams::default(), &picky).await.unwrap();
    let st = eventually(90, "picky failed", || async {
        let st = tjs.get("picky").await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Failed).then_some(st))
    })
    .await
    .unwrap();
    let failed = st.conditions.iter().find(|c| c.type_ == "Failed").unwrap();
    assert_eq!(failed.reason, "PodUnschedulable", "{st:?}");
    assert!(
        failed.message.contains("node affinity/selector"),
        "{}",
        failed.message
    );
    assert_eq!(st.restarts, 0, "no placement can help it: {st:?}");

    // Its GPUs were not quarantined: an honest gang runs on the same node at once.
    tjs.create(
        &PostParams::default(),
        &gang_of_eight("honest", serde_json::json!({})),
    )
    .await
    .unwrap();
    eventually(60, "honest running on dgx-h100-0", || async {
        let st = tjs.get("honest").await?.status.unwrap_or_default();
        let on = st.workers.first().map(|w| w.node.clone());
        Ok(
            (st.phase == TrainingPhase::Running && on.as_deref() == Some("dgx-h100-0"))
                .then_some(()),
        )
    })
    .await
    .unwrap();
    tjs.delete("honest", &DeleteParams::default())
        .await
        .unwrap();
    eventually(30, "honest gone", || async {
        Ok(tjs.get_opt("honest").await?.is_none().then_some(()))
    })
    .await
    .unwrap();

    // member-1's kube-scheduler dies: a gang placed there is never looked at.
    fed.members[0].cp.stop_scheduler();
    tjs.create(
        &PostParams::default(),
        &gang_of_eight("stranded", serde_json::json!({})),
    )
    .await
    .unwrap();
    eventually(30, "stranded placed on member-1", || async {
        let st = tjs.get("stranded").await?.status.unwrap_or_default();
        Ok((st.cluster.as_deref() == Some("member-1")).then_some(()))
    })
    .await
    .unwrap();
    register_member(&hub, "member-2", &fed.members[1].cp, WALLET_2, "region-2")
        .await
        .unwrap();
    let st = eventually(90, "stranded running on member-2", || async {
        let st = tjs.get("stranded").await?.status.unwrap_or_default();
        Ok(
            (st.phase == TrainingPhase::Running && st.cluster.as_deref() == Some("member-2"))
                .then_some(st),
        )
    })
    .await
    .unwrap();
    assert_eq!(st.restarts, 1, "{st:?}");
    let ev = fed
        .hub
        .kubectl()
        .event_messages("default", "stranded", "MemberSchedulerRefused")
        .unwrap();
    assert!(ev.contains("never looked at the pod"), "{ev}");
    // The withdrawn pod is gone from member-1.
    let m1 = fed.members[0].cp.client().await.unwrap();
    eventually(30, "stranded's pod gone from member-1", || async {
        Ok(job_pods(&m1, "stranded").await.is_empty().then_some(()))
    })
    .await
    .unwrap();
}
