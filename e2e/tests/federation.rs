//! Federation on real API servers: a hub and two members with KWOK GPU nodes whose topology is
//! published from the fixtures, the operator running its controllers against them.

use gpupool::api::{InferenceJob, MemberCluster, TrainingJob, TrainingPhase};
use gpupool_e2e::{
    Federation, GpuNode, MemberKind, Operator, eventually, publish_fixture, register_member,
    repo_root,
};
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::collections::{BTreeMap, BTreeSet};
use std::time::Instant;

const WALLET_1: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";
const WALLET_2: &str = "9WzDXwBbmkg8ZTbNMqUxvQRAyrZzDsGYdLVL9zYtAWWM";

struct Node(&'static str, &'static str, u32, &'static str);

async fn setup(layout: &[&[Node]], grace: u64) -> (Federation, Operator) {
    setup_with(MemberKind::DevicePlugin, layout, grace).await
}

/// Members of one kind (DRA members bind GPUs through ResourceClaims their scheduler allocates).
async fn setup_with(kind: MemberKind, layout: &[&[Node]], grace: u64) -> (Federation, Operator) {
    gpupool::telemetry::init_logging();
    let fed = Federation::start_with(&vec![kind; layout.len()])
        .await
        .expect("federation starts");
    for (i, nodes) in layout.iter().enumerate() {
        let gn: Vec<GpuNode> = nodes.iter().map(|n| GpuNode::new(n.0, n.2, n.3)).collect();
        fed.add_nodes(i, &gn).await.unwrap();
        let c = fed.members[i].cp.client().await.unwrap();
        for n in nodes.iter() {
            publish_fixture(&c, n.1, n.0).await.unwrap();
        }
    }
    let hub = fed.hub.client().await.unwrap();
    for (i, m) in fed.members.iter().enumerate() {
        let wallet = if i == 0 { WALLET_1 } else { WALLET_2 };
        register_member(
            &hub,
            &format!("member-{}", i + 1),
            &m.cp,
            wallet,
            &format!("region-{}", i + 1),
        )
        .await
        .unwrap();
    }
    let op = Operator::start(hub.clone(), Operator::test_config(grace));
    for i in 1..=layout.len() {
        gpupool_e2e::wait_member_ready(&hub, &format!("member-{i}"), 30)
            .await
            .unwrap();
    }
    (fed, op)
}

async fn member_pods(fed: &Federation, i: usize, selector: &str) -> Vec<Pod> {
    let c = fed.members[i].cp.client().await.unwrap();
    Api::<Pod>::all(c)
        .list(&ListParams::default().labels(selector))
        .await
        .unwrap()
        .items
}

/// Applies `deploy/examples/<file>` on the hub with kubectl and waits for the `pods` pods of
/// job `job` to exist in member `i`; returns them.
async fn apply_example(
    fed: &Federation,
    kubectl: &gpupool_e2e::Kubectl,
    file: &str,
    i: usize,
    job: &str,
    pods: usize,
) -> Vec<Pod> {
    let path = repo_root().join("deploy/examples").join(file);
    kubectl
        .ok(&["apply", "-f", path.to_str().unwrap()])
        .unwrap();
    let selector = format!("gpupool.io/job-name={job}");
    eventually(30, &format!("{pods} pods of {job}"), || async {
        let p = member_pods(fed, i, &selector).await;
        Ok((p.len() == pods).then_some(p))
    })
    .await
    .unwrap()
}

fn gpu_uuids(p: &Pod) -> Vec<String> {
    p.metadata.annotations.as_ref().unwrap()["gpupool.io/gpu-uuids"]
        .split(',')
        .map(String::from)
        .collect()
}

fn node_of(p: &Pod) -> String {
    gpupool::workloads::pod_node(p).unwrap().to_string()
}

/// GPU indexes of `uuids` on `node` (UUIDs are derived from node name and index).
fn indexes(node: &str, uuids: &[String]) -> BTreeSet<i32> {
    uuids
        .iter()
        .map(|u| {
            (0..16)
                .find(|i| gpupool_e2e::node_uuid(node, *i) == *u)
                .expect("uuid belongs to node")
        })
        .collect()
}

fn tj(name: &str, workers: i32, gpus: i32, model: &str, nvlink: &str) -> TrainingJob {
    serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: trainer, image: ghcr.io/example/trainer:1}}]}}}}, workers: {workers}, gpusPerWorker: {gpus}, gpu: {{model: {model}}}, nvlink: {nvlink}, backoffLimit: 2}}\n"
    ))
    .unwrap()
}

/// The printer columns `kubectl get KIND NAME` shows, by header (cells cut at the header's column
/// offsets, so an empty cell reads as "").
fn columns(kubectl: &gpupool_e2e::Kubectl, kind: &str, name: &str) -> BTreeMap<String, String> {
    let out = kubectl.ok(&["get", kind, name, "-n", "default"]).unwrap();
    let mut lines = out.lines();
    let (header, row) = (lines.next().unwrap_or(""), lines.next().unwrap_or(""));
    let mut starts: Vec<(usize, &str)> = Vec::new();
    let mut prev_space = true;
    for (i, c) in header.char_indices() {
        if !c.is_whitespace() && prev_space {
            let end = header[i..]
                .find(char::is_whitespace)
                .map_or(header.len(), |e| i + e);
            starts.push((i, &header[i..end]));
        }
        prev_space = c.is_whitespace();
    }
    starts
        .iter()
        .enumerate()
        .map(|(k, (start, title))| {
            let end = starts.get(k + 1).map_or(row.len(), |n| n.0.min(row.len()));
            let cell = row.get((*start).min(row.len())..end).unwrap_or("").trim();
            (title.to_string(), cell.to_string())
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn jobs_land_on_the_right_gpus_never_share_them_and_are_cleaned_up() {
    let (fed, op) = setup(
        &[
            &[
                Node("dgx-h100-0", "dgx-h100", 8, "NVIDIA H100 80GB HBM3"),
                Node("dgx1-v100-0", "dgx1-v100", 8, "Tesla V100-SXM2-16GB"),
            ],
            &[
                Node(
                    "pcie-a100-0",
                    "pcie-a100-bridged",
                    4,
                    "NVIDIA A100 80GB PCIe",
                ),
                Node(
                    "pcie-a100-1",
                    "pcie-a100-bridged",
                    4,
                    "NVIDIA A100 80GB PCIe",
                ),
                Node("l40s-0", "pcie-l40s", 8, "NVIDIA L40S"),
            ],
        ],
        30,
    )
    .await;
    let hub = fed.hub.client().await.unwrap();
    let kubectl = fed.hub.kubectl();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");

    // 1. Latency from create on the hub to the pod existing in a member, over 20 jobs.
    let mut lat = Vec::new();
    for i in 0..20 {
        let job: InferenceJob = serde_yaml::from_str(&format!(
            "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {{name: lat-{i}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: srv, image: ghcr.io/example/srv:1}}]}}}}, replicas: 1, gpusPerReplica: 1, nvlink: none, spreadAcrossClusters: true}}\n"
        ))
        .unwrap();
        let t0 = Instant::now();
        ijs.create(&PostParams::default(), &job).await.unwrap();
        let sel = format!("gpupool.io/job-name=lat-{i}");
        // Poll both members every 10 ms so the figure is not dominated by the polling period.
        let m1: Api<Pod> = Api::all(fed.members[0].cp.client().await.unwrap());
        let m2: Api<Pod> = Api::all(fed.members[1].cp.client().await.unwrap());
        let lp = ListParams::default().labels(&sel);
        loop {
            let (a, b) = tokio::join!(m1.list(&lp), m2.list(&lp));
            if !a.unwrap().items.is_empty() || !b.unwrap().items.is_empty() {
                break;
            }
            assert!(
                t0.elapsed() < std::time::Duration::from_secs(30),
                "lat-{i} never reached a member"
            );
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        lat.push(t0.elapsed());
    }
    lat.sort();
    println!(
        "apply→pod-in-member latency over {} jobs: median {:?}, worst {:?}",
        lat.len(),
        lat[lat.len() / 2],
        lat[lat.len() - 1]
    );
    // All 20 GPUs distinct.
    let mut all = Vec::new();
    for i in 0..2 {
        for p in member_pods(&fed, i, "gpupool.io/job-kind=InferenceJob").await {
            all.extend(gpu_uuids(&p));
        }
    }
    assert_eq!(all.len(), 20);
    assert_eq!(
        all.iter().collect::<BTreeSet<_>>().len(),
        20,
        "a GPU was given twice"
    );
    // Deleting them cleans the members.
    for i in 0..20 {
        ijs.delete(&format!("lat-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    eventually(30, "latency jobs cleaned up", || async {
        let left = member_pods(&fed, 0, "gpupool.io/job-kind").await.len()
            + member_pods(&fed, 1, "gpupool.io/job-kind").await.len();
        let jobs = ijs.list(&ListParams::default()).await?.items.len();
        Ok((left == 0 && jobs == 0).then_some(()))
    })
    .await
    .unwrap();

    // 2. The training example: 2 workers x 4 H100, NVLink required → member-1's DGX H100.
    let pods = apply_example(&fed, &kubectl, "training-gpt.yaml", 0, "gpt-pretrain", 2).await;
    let mut seen = BTreeSet::new();
    for p in &pods {
        assert_eq!(node_of(p), "dgx-h100-0");
        let u = gpu_uuids(p);
        assert_eq!(u.len(), 4);
        seen.extend(u);
        let env: Vec<_> = p.spec.as_ref().unwrap().containers[0].env.clone().unwrap();
        assert!(
            env.iter()
                .any(|e| e.name == "WORLD_SIZE" && e.value.as_deref() == Some("2"))
        );
    }
    assert_eq!(seen.len(), 8, "workers share GPUs");
    let job = gpupool_e2e::wait_training_phase(&tjs, "gpt-pretrain", TrainingPhase::Running, 30)
        .await
        .unwrap();
    assert_eq!(
        job.status.as_ref().unwrap().cluster.as_deref(),
        Some("member-1")
    );
    let get = kubectl.ok(&["get", "trainingjobs"]).unwrap();
    assert!(
        get.contains("gpt-pretrain") && get.contains("Running") && get.contains("member-1"),
        "{get}"
    );
    // The WORKERS column counts running workers, DESIRED the gang size.
    eventually(30, "gpt-pretrain shows 2/2 workers", || async {
        let cols = columns(&kubectl, "trainingjob", "gpt-pretrain");
        Ok((cols.get("WORKERS").map(String::as_str) == Some("2")
            && cols.get("DESIRED").map(String::as_str) == Some("2"))
        .then_some(()))
    })
    .await
    .unwrap();

    // 3. The inference example: 3 replicas x 2 GPUs, preferred NVLink → bridged A100 pairs.
    let pods = apply_example(&fed, &kubectl, "inference-llama.yaml", 1, "llama-serve", 3).await;
    for p in &pods {
        let node = node_of(p);
        assert!(node.starts_with("pcie-a100-"), "replica on {node}");
        let ix = indexes(&node, &gpu_uuids(p));
        assert!(
            ix == BTreeSet::from([0, 1]) || ix == BTreeSet::from([2, 3]),
            "replica not on a bridged pair: {ix:?}"
        );
    }
    eventually(30, "llama-serve Running with endpoints", || async {
        let j = ijs.get("llama-serve").await?;
        let st = j.status.unwrap_or_default();
        Ok((st.ready_replicas == 3
            && st
                .endpoints
                .iter()
                .any(|e| e.starts_with("member-2/gpupool-default/llama-serve:8000")))
        .then_some(()))
    })
    .await
    .unwrap();
    let cols = columns(&kubectl, "inferencejob", "llama-serve");
    assert_eq!(
        (cols["READY"].as_str(), cols["REPLICAS"].as_str()),
        ("3", "3"),
        "{cols:?}"
    );

    // 4. Three jobs race for the DGX-1's two fully connected V100 quads.
    let pp = PostParams::default();
    let (ra, rb, rc) = (
        tj("race-a", 1, 4, "V100", "required"),
        tj("race-b", 1, 4, "V100", "required"),
        tj("race-c", 1, 4, "V100", "required"),
    );
    let (a, b, c) = tokio::join!(
        tjs.create(&pp, &ra),
        tjs.create(&pp, &rb),
        tjs.create(&pp, &rc)
    );
    a.unwrap();
    b.unwrap();
    c.unwrap();
    let placed = eventually(40, "two racers placed, one pending", || async {
        let mut placed = Vec::new();
        let mut pending = Vec::new();
        for n in ["race-a", "race-b", "race-c"] {
            let st = tjs.get(n).await?.status.unwrap_or_default();
            if st.cluster.is_some() && !st.workers.is_empty() {
                placed.push((n.to_string(), st.workers[0].gpu_uuids.clone()));
            } else if st
                .conditions
                .iter()
                .any(|c| c.type_ == "Scheduled" && c.reason == "Unschedulable")
            {
                pending.push(n.to_string());
            }
        }
        Ok((placed.len() == 2 && pending.len() == 1).then_some(placed))
    })
    .await
    .unwrap();
    let quads = [BTreeSet::from([0, 1, 2, 3]), BTreeSet::from([4, 5, 6, 7])];
    let s0 = indexes("dgx1-v100-0", &placed[0].1);
    let s1 = indexes("dgx1-v100-0", &placed[1].1);
    assert!(quads.contains(&s0) && quads.contains(&s1), "{s0:?} {s1:?}");
    assert!(s0.is_disjoint(&s1), "racers share GPUs: {s0:?} {s1:?}");
    let waiting = ["race-a", "race-b", "race-c"]
        .into_iter()
        .find(|n| !placed.iter().any(|(p, _)| p == n))
        .unwrap();
    let msg = tjs
        .get(waiting)
        .await
        .unwrap()
        .status
        .unwrap()
        .message
        .unwrap_or_default();
    assert!(msg.contains("unschedulable"), "{msg}");
    let cols = columns(&kubectl, "trainingjob", waiting);
    assert_eq!(
        (cols["WORKERS"].as_str(), cols["DESIRED"].as_str()),
        ("0", "1"),
        "{cols:?}"
    );
    let events = kubectl
        .ok(&[
            "get",
            "events",
            "-n",
            "default",
            "--field-selector",
            &format!("regarding.name={waiting}"),
        ])
        .unwrap_or_default()
        + &kubectl.ok(&["get", "events", "-n", "default"]).unwrap();
    assert!(events.contains("Unschedulable"), "{events}");

    // 5. Deleting a placed racer frees its quad; the waiting one gets it; the deleted one's pods go.
    tjs.delete(&placed[0].0, &DeleteParams::default())
        .await
        .unwrap();
    let sel = format!("gpupool.io/job-name={}", placed[0].0);
    eventually(30, "deleted job's pods gone", || async {
        Ok(member_pods(&fed, 0, &sel).await.is_empty().then_some(()))
    })
    .await
    .unwrap();
    eventually(30, "waiting racer placed", || async {
        let st = tjs.get(waiting).await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Running).then_some(()))
    })
    .await
    .unwrap();
    let got = indexes(
        "dgx1-v100-0",
        &tjs.get(waiting).await.unwrap().status.unwrap().workers[0].gpu_uuids,
    );
    assert_eq!(got, s0, "the waiting job should get the freed quad");

    // 6. Member status shows capacity (written on the member's next heartbeat).
    let mcs = Api::<MemberCluster>::all(hub.clone());
    eventually(
        30,
        "member-2 capacity with llama-serve's GPUs held",
        || async {
            let cap = mcs
                .get("member-2")
                .await?
                .status
                .unwrap_or_default()
                .capacity;
            Ok((cap.gpus_total == 16 && cap.gpus_free == 16 - 6).then_some(()))
        },
    )
    .await
    .unwrap();
    let text = op.ctx.metrics.render();
    assert!(
        text.contains("gpupool_member_gpus{cluster=\"member-2\"} 16"),
        "{text}"
    );

    // 7. Deleting everything leaves nothing behind in the members.
    kubectl
        .ok(&[
            "delete",
            "trainingjobs,inferencejobs",
            "--all",
            "-n",
            "default",
            "--wait=true",
            "--timeout=60s",
        ])
        .unwrap();
    for i in 0..2 {
        let c = fed.members[i].cp.client().await.unwrap();
        let pods = Api::<Pod>::all(c.clone())
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
            .await
            .unwrap();
        assert!(pods.items.is_empty(), "pods left in member-{}", i + 1);
        let svcs = Api::<k8s_openapi::api::core::v1::Service>::all(c)
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
            .await
            .unwrap();
        assert!(svcs.items.is_empty(), "services left in member-{}", i + 1);
    }
    drop(op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_member_moves_replicas_and_restarts_the_gang() {
    lost_member(MemberKind::DevicePlugin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_lost_dra_member_moves_replicas_and_restarts_the_gang() {
    lost_member(MemberKind::Dra).await
}

async fn lost_member(kind: MemberKind) {
    let (mut fed, _op) = setup_with(
        kind,
        &[
            &[Node("h100-a", "dgx-h100", 8, "NVIDIA H100 80GB HBM3")],
            &[Node("h100-b", "dgx-h100", 8, "NVIDIA H100 80GB HBM3")],
        ],
        3,
    )
    .await;
    let hub = fed.hub.client().await.unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(
        &PostParams::default(),
        &tj("gang", 1, 4, "H100", "required"),
    )
    .await
    .unwrap();
    let first = gpupool_e2e::wait_running_on(&tjs, "gang", 30)
        .await
        .unwrap();
    let lost_ix = if first == "member-1" { 0 } else { 1 };
    // A job pinned to that member with no restarts allowed: it must fail when the member is lost,
    // and its pods there must go when the member comes back.
    let mut fragile = tj("fragile", 1, 2, "H100", "required");
    fragile.spec.backoff_limit = 0;
    fragile.spec.cluster_selector =
        [("region".to_string(), format!("region-{}", lost_ix + 1))].into();
    tjs.create(&PostParams::default(), &fragile).await.unwrap();
    eventually(30, "fragile running", || async {
        Ok(
            (tjs.get("fragile").await?.status.unwrap_or_default().phase == TrainingPhase::Running)
                .then_some(()),
        )
    })
    .await
    .unwrap();
    let job: InferenceJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: web, namespace: default}\nspec: {template: {spec: {containers: [{name: srv, image: ghcr.io/example/srv:1}]}}, replicas: 2, gpusPerReplica: 2, spreadAcrossClusters: true}\n",
    )
    .unwrap();
    ijs.create(&PostParams::default(), &job).await.unwrap();
    eventually(30, "web ready", || async {
        Ok((ijs
            .get("web")
            .await?
            .status
            .unwrap_or_default()
            .ready_replicas
            == 2)
            .then_some(()))
    })
    .await
    .unwrap();

    let other = if first == "member-1" {
        "member-2"
    } else {
        "member-1"
    };

    // The member running the gang stops answering.
    fed.members[lost_ix].cp.stop_apiserver();
    let st = eventually(60, "gang restarted on the other member", || async {
        let st = tjs.get("gang").await?.status.unwrap_or_default();
        Ok(
            (st.phase == TrainingPhase::Running && st.cluster.as_deref() == Some(other))
                .then_some(st),
        )
    })
    .await
    .unwrap();
    assert_eq!(st.restarts, 1);
    let fst = eventually(30, "fragile failed", || async {
        let st = tjs.get("fragile").await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Failed).then_some(st))
    })
    .await
    .unwrap();
    assert!(
        fst.conditions
            .iter()
            .any(|c| c.type_ == "Failed" && c.reason == "BackoffLimitExceeded"),
        "{fst:?}"
    );
    eventually(
        60,
        "web replicas all on the surviving member and ready",
        || async {
            let st = ijs.get("web").await?.status.unwrap_or_default();
            let ok = st.ready_replicas == 2 && st.placements.iter().all(|p| p.cluster == other);
            Ok(ok.then_some(()))
        },
    )
    .await
    .unwrap();
    let mc = Api::<MemberCluster>::all(hub.clone())
        .get(&first)
        .await
        .unwrap();
    assert!(
        mc.status
            .unwrap()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "False")
    );
    let events = fed.hub.kubectl().ok(&["get", "events", "-A"]).unwrap();
    for reason in ["MemberLost", "Rescheduled", "Scheduled"] {
        assert!(events.contains(reason), "no {reason} event: {events}");
    }

    // It comes back: picked up again, and the stale workloads there are swept.
    fed.members[lost_ix].cp.restart_apiserver().await.unwrap();
    eventually(60, "stale pods swept from the returning member", || async {
        let mc = Api::<MemberCluster>::all(hub.clone()).get(&first).await?;
        let ready = mc
            .status
            .unwrap_or_default()
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        Ok((ready
            && member_pods(&fed, lost_ix, "app.kubernetes.io/managed-by=gpupool")
                .await
                .is_empty())
        .then_some(()))
    })
    .await
    .unwrap();
    if kind == MemberKind::Dra {
        let claims: Api<k8s_openapi::api::resource::v1::ResourceClaim> =
            Api::all(fed.members[lost_ix].cp.client().await.unwrap());
        eventually(60, "the swept pods' claims garbage-collected", || async {
            let l = claims
                .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
                .await?;
            Ok(l.items.is_empty().then_some(()))
        })
        .await
        .unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn assignments_survive_an_operator_restart() {
    operator_restart(MemberKind::DevicePlugin).await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dra_assignments_survive_an_operator_restart() {
    operator_restart(MemberKind::Dra).await
}

async fn operator_restart(kind: MemberKind) {
    let (fed, op) = setup_with(
        kind,
        &[&[Node("dgx1-v100-0", "dgx1-v100", 8, "Tesla V100-SXM2-16GB")]],
        30,
    )
    .await;
    let hub = fed.hub.client().await.unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(
        &PostParams::default(),
        &tj("first", 1, 4, "V100", "required"),
    )
    .await
    .unwrap();
    let first = eventually(30, "first running", || async {
        let st = tjs.get("first").await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Running).then(|| st.workers[0].gpu_uuids.clone()))
    })
    .await
    .unwrap();
    let pods_before: Vec<String> = member_pods(&fed, 0, "gpupool.io/job-name=first")
        .await
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();

    // A new operator process knows nothing in memory; the record is in the API.
    drop(op);
    let _op = Operator::start(hub.clone(), Operator::test_config(30));
    tjs.create(
        &PostParams::default(),
        &tj("second", 1, 4, "V100", "required"),
    )
    .await
    .unwrap();
    let second = eventually(30, "second running", || async {
        let st = tjs.get("second").await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Running).then(|| st.workers[0].gpu_uuids.clone()))
    })
    .await
    .unwrap();
    let a = indexes("dgx1-v100-0", &first);
    let b = indexes("dgx1-v100-0", &second);
    assert!(
        a.is_disjoint(&b),
        "GPU given twice across a restart: {a:?} {b:?}"
    );
    assert_eq!(a.union(&b).count(), 8);
    // The first job was neither moved nor restarted.
    let st = tjs.get("first").await.unwrap().status.unwrap();
    assert_eq!((st.restarts, st.workers[0].gpu_uuids.clone()), (0, first));
    let pods_after: Vec<String> = member_pods(&fed, 0, "gpupool.io/job-name=first")
        .await
        .iter()
        .map(|p| p.metadata.uid.clone().unwrap())
        .collect();
    assert_eq!(
        pods_before, pods_after,
        "the first job's pods were recreated"
    );
    if kind == MemberKind::Dra {
        // Each job has exactly one claim, allocated by the member's scheduler to its GPUs.
        let claims: Api<k8s_openapi::api::resource::v1::ResourceClaim> = Api::namespaced(
            fed.members[0].cp.client().await.unwrap(),
            &gpupool::tenant::namespace_name("default"),
        );
        for (job, want) in [("first", &a), ("second", &b)] {
            let list = eventually(30, "claims allocated", || async {
                let l = claims
                    .list(&ListParams::default().labels(&format!("gpupool.io/job-name={job}")))
                    .await?
                    .items;
                Ok(l.iter()
                    .all(|c| c.status.as_ref().is_some_and(|s| s.allocation.is_some()))
                    .then_some(l))
            })
            .await
            .unwrap();
            assert_eq!(list.len(), 1, "{job}: {list:?}");
            let got: BTreeSet<i32> = list[0]
                .status
                .as_ref()
                .unwrap()
                .allocation
                .as_ref()
                .unwrap()
                .devices
                .as_ref()
                .unwrap()
                .results
                .as_ref()
                .unwrap()
                .iter()
                .map(|r| r.device.strip_prefix("gpu-").unwrap().parse().unwrap())
                .collect();
            assert_eq!(&got, want, "{job}: the member allocated other GPUs");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn supply_a_member_cannot_prove_is_not_used() {
    // member-2 claims more GPUs than its kubelet offers, and republishes member-1's GPU UUIDs
    // from a node of its own (after member-1 published them).
    let (fed, _op) = setup(
        &[
            &[Node("honest-0", "dgx-h100", 8, "NVIDIA H100 80GB HBM3")],
            &[
                Node("inflated-0", "dgx-h100", 4, "NVIDIA H100 80GB HBM3"),
                Node("squatter-0", "dgx-h100", 8, "NVIDIA H100 80GB HBM3"),
            ],
        ],
        30,
    )
    .await;
    let m2 = fed.members[1].cp.client().await.unwrap();
    let mut copy = gpupool_e2e::fixture_for_node("dgx-h100", "honest-0").unwrap();
    copy.spec.node_name = "squatter-0".into();
    gpupool::agent::publish(&m2, &copy).await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    let (total, msg) = eventually(30, "member-2 supply rejected", || async {
        let st = mcs.get("member-2").await?.status.unwrap_or_default();
        let c = st
            .conditions
            .iter()
            .find(|c| c.type_ == "SupplyVerified" && c.status == "False")
            .map(|c| c.message.clone());
        Ok(c.filter(|m| m.contains("quarantined"))
            .map(|m| (st.capacity.gpus_total, m)))
    })
    .await
    .unwrap();
    assert!(msg.contains("allocatable is 4"), "{msg}");
    // Only the 4 GPUs the kubelet offers count; the squatting node offers none.
    assert_eq!(total, 4, "{msg}");
    let st = mcs.get("member-1").await.unwrap().status.unwrap();
    assert!(
        st.conditions
            .iter()
            .any(|c| c.type_ == "SupplyVerified" && c.status == "True"),
        "{:?}",
        st.conditions
    );
    assert_eq!(st.capacity.gpus_free, 8);
    // An 8-GPU job lands on the honest node; two more 4-GPU jobs cannot both fit on member-2.
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(
        &PostParams::default(),
        &tj("eight", 1, 8, "H100", "required"),
    )
    .await
    .unwrap();
    eventually(30, "eight placed", || async {
        let st = tjs.get("eight").await?.status.unwrap_or_default();
        Ok(st.cluster.clone().map(|c| (c, st.workers[0].node.clone())))
    })
    .await
    .map(|(c, n)| assert_eq!((c.as_str(), n.as_str()), ("member-1", "honest-0")))
    .unwrap();
    for name in ["four-a", "four-b"] {
        tjs.create(&PostParams::default(), &tj(name, 1, 4, "H100", "none"))
            .await
            .unwrap();
    }
    eventually(30, "one 4-GPU job placed, one waiting", || async {
        let a = tjs.get("four-a").await?.status.unwrap_or_default();
        let b = tjs.get("four-b").await?.status.unwrap_or_default();
        let placed = [&a, &b].iter().filter(|s| s.cluster.is_some()).count();
        let waiting = [&a, &b]
            .iter()
            .filter(|s| s.pending_reason.is_some())
            .count();
        Ok((placed == 1 && waiting == 1).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cordoned_member_keeps_its_jobs_and_a_removed_one_is_drained() {
    let (fed, _op) = setup_with(
        MemberKind::Dra,
        &[
            &[Node("h100-a", "dgx-h100", 8, "NVIDIA H100 80GB HBM3")],
            &[Node("h100-b", "dgx-h100", 8, "NVIDIA H100 80GB HBM3")],
        ],
        30,
    )
    .await;
    let hub = fed.hub.client().await.unwrap();
    let kubectl = fed.hub.kubectl();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    tjs.create(
        &PostParams::default(),
        &tj("gang", 1, 4, "H100", "required"),
    )
    .await
    .unwrap();
    let first = gpupool_e2e::wait_running_on(&tjs, "gang", 30)
        .await
        .unwrap();
    let (ix, other) = if first == "member-1" {
        (0, "member-2")
    } else {
        (1, "member-1")
    };
    let job: InferenceJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: web, namespace: default}\nspec: {template: {spec: {containers: [{name: srv, image: ghcr.io/example/srv:1}]}}, replicas: 2, gpusPerReplica: 2, placement: {maxReplicasPerCluster: 1}}\n",
    )
    .unwrap();
    ijs.create(&PostParams::default(), &job).await.unwrap();
    eventually(30, "web ready on both members", || async {
        let st = ijs.get("web").await?.status.unwrap_or_default();
        Ok((st.ready_replicas == 2 && st.placements.len() == 2).then_some(()))
    })
    .await
    .unwrap();

    // Cordon: no new placements there, the running gang stays.
    kubectl
        .ok(&[
            "patch",
            "membercluster",
            &first,
            "--type",
            "merge",
            "-p",
            r#"{"spec":{"schedulable":false}}"#,
        ])
        .unwrap();
    let mut pinned = tj("pinned", 1, 2, "H100", "required");
    pinned.spec.cluster_selector = [("region".to_string(), format!("region-{}", ix + 1))].into();
    eventually(
        30,
        "pinned job waits while its member is cordoned",
        || async {
            if tjs.get_opt("pinned").await?.is_none() {
                tjs.create(&PostParams::default(), &pinned).await?;
            }
            let st = tjs.get("pinned").await?.status.unwrap_or_default();
            Ok(st
                .conditions
                .iter()
                .any(|c| c.type_ == "Scheduled" && c.reason == "Unschedulable")
                .then_some(()))
        },
    )
    .await
    .unwrap();
    let st = tjs.get("gang").await.unwrap().status.unwrap_or_default();
    assert_eq!(
        (st.phase, st.cluster.as_deref(), st.restarts),
        (TrainingPhase::Running, Some(first.as_str()), 0),
        "a cordoned member keeps its running gang"
    );
    assert!(
        tjs.get("pinned")
            .await
            .unwrap()
            .status
            .unwrap_or_default()
            .workers
            .is_empty(),
        "placed on a cordoned member"
    );

    // Remove it: gpupool's pods, Services and claims there are deleted, its work moves.
    let member = fed.members[ix].cp.client().await.unwrap();
    assert!(
        !member_pods(&fed, ix, "app.kubernetes.io/managed-by=gpupool")
            .await
            .is_empty()
    );
    mcs.delete(&first, &DeleteParams::default()).await.unwrap();
    eventually(60, "removed member drained and gone", || async {
        let gone = mcs.get_opt(&first).await?.is_none();
        let lp = ListParams::default().labels("app.kubernetes.io/managed-by=gpupool");
        let pods = Api::<Pod>::all(member.clone()).list(&lp).await?.items.len();
        let svcs = Api::<k8s_openapi::api::core::v1::Service>::all(member.clone())
            .list(&lp)
            .await?
            .items
            .len();
        let claims = Api::<k8s_openapi::api::resource::v1::ResourceClaim>::all(member.clone())
            .list(&lp)
            .await?
            .items
            .len();
        Ok((gone && pods + svcs + claims == 0).then_some(()))
    })
    .await
    .unwrap();
    let st = eventually(60, "gang restarted on the other member", || async {
        let st = tjs.get("gang").await?.status.unwrap_or_default();
        Ok(
            (st.phase == TrainingPhase::Running && st.cluster.as_deref() == Some(other))
                .then_some(st),
        )
    })
    .await
    .unwrap();
    assert_eq!(st.restarts, 1);
    eventually(60, "web replicas all on the remaining member", || async {
        let st = ijs.get("web").await?.status.unwrap_or_default();
        Ok(st
            .placements
            .iter()
            .all(|p| p.cluster == other)
            .then_some(()))
    })
    .await
    .unwrap();
    let events = eventually(30, "Deregistered and Drained events", || async {
        let ev = kubectl.ok(&["get", "events", "-A"])?;
        Ok((ev.contains("Deregistered") && ev.contains("Drained")).then_some(ev))
    })
    .await
    .unwrap();
    assert!(events.contains("was removed from the pool"), "{events}");
    assert!(
        !events.contains("MemberLost"),
        "a removal reads as a loss: {events}"
    );
}

/// A push member whose kubeconfig on the hub carries a bound token (as the chart's NOTES make
/// it): the operator mints the next token through the member's API server before the one in use
/// expires, writes it into the kubeconfig Secret, and keeps working with it.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_push_members_bound_token_is_renewed_before_it_expires() {
    use gpupool::federation::credential;
    use k8s_openapi::api::core::v1::{Namespace, Secret, ServiceAccount};
    use k8s_openapi::api::rbac::v1::{ClusterRoleBinding, RoleRef, Subject};
    gpupool::telemetry::init_logging();
    let fed = Federation::start(1).await.expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new("gpu-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let m = &fed.members[0].cp;
    let admin = m.client().await.unwrap();
    publish_fixture(&admin, "dgx-h100", "gpu-0").await.unwrap();
    // The hub's identity in the member: a ServiceAccount with a binding, and a 10-minute token
    // (the shortest the API server issues).
    let mut ns = Namespace::default();
    ns.metadata.name = Some("gpupool-system".into());
    let _ = Api::<Namespace>::all(admin.clone())
        .create(&PostParams::default(), &ns)
        .await;
    let mut sa = ServiceAccount::default();
    sa.metadata.name = Some("gpupool-hub".into());
    Api::<ServiceAccount>::namespaced(admin.clone(), "gpupool-system")
        .create(&PostParams::default(), &sa)
        .await
        .unwrap();
    let mut crb = ClusterRoleBinding::default();
    crb.metadata.name = Some("gpupool-hub".into());
    crb.role_ref = RoleRef {
        api_group: Some("rbac.authorization.k8s.io".into()),
        kind: "ClusterRole".into(),
        name: "cluster-admin".into(),
    };
    crb.subjects = Some(vec![Subject {
        kind: "ServiceAccount".into(),
        name: "gpupool-hub".into(),
        namespace: Some("gpupool-system".into()),
        ..Default::default()
    }]);
    Api::<ClusterRoleBinding>::all(admin.clone())
        .create(&PostParams::default(), &crb)
        .await
        .unwrap();
    let ttl = std::time::Duration::from_secs(600);
    let first = credential::mint(&admin, "gpupool-system", "gpupool-hub", ttl)
        .await
        .unwrap();
    let ca = std::fs::read(m.dir().join("pki/ca.crt")).unwrap();
    let kubeconfig = serde_json::json!({
        "apiVersion": "v1", "kind": "Config", "current-context": "member",
        "clusters": [{"name": "member", "cluster": {"server": m.server_url(),
            "certificate-authority-data": k8s_openapi::ByteString(ca)}}],
        "users": [{"name": "gpupool-hub", "user": {"token": first}}],
        "contexts": [{"name": "member", "context": {"cluster": "member", "user": "gpupool-hub"}}],
    });
    let kubeconfig = serde_yaml::to_string(&kubeconfig).unwrap();
    let old = credential::bound_token(&kubeconfig).expect("a bound token");
    let hub = fed.hub.client().await.unwrap();
    gpupool_e2e::register_member_with(&hub, "east", &kubeconfig, WALLET_1, "eu")
        .await
        .unwrap();
    // Renewed 5 s after issue (595 s before its expiry) instead of at two thirds of its life.
    let mut cfg = Operator::test_config(30);
    cfg.token_renew_before = Some(std::time::Duration::from_secs(595));
    let op = Operator::start(hub.clone(), cfg);
    gpupool_e2e::wait_member_ready(&hub, "east", 60)
        .await
        .unwrap();
    let secrets: Api<Secret> = Api::namespaced(hub.clone(), gpupool_e2e::OPERATOR_NAMESPACE);
    let renewed = eventually(60, "the kubeconfig Secret holds a newer token", || async {
        let s = secrets.get("east-kubeconfig").await?;
        let text = String::from_utf8(s.data.unwrap_or_default()["kubeconfig"].0.clone())?;
        Ok(credential::bound_token(&text)
            .filter(|b| b.expires > old.expires)
            .map(|b| (b, text)))
    })
    .await
    .unwrap();
    let (b, text) = renewed;
    assert_eq!(
        (b.namespace.as_str(), b.name.as_str(), b.lifetime()),
        ("gpupool-system", "gpupool-hub", ttl),
        "the same ServiceAccount, the same lifetime"
    );
    // Everything else in the kubeconfig is as the admin wrote it.
    let v: serde_yaml::Value = serde_yaml::from_str(&text).unwrap();
    assert_eq!(
        v["clusters"][0]["cluster"]["server"],
        m.server_url().as_str()
    );
    // The new token works, and the operator goes on with it: the member stays Ready and takes
    // a job.
    let probe = kube::Client::try_from(
        kube::Config::from_custom_kubeconfig(
            kube::config::Kubeconfig::from_yaml(&text).unwrap(),
            &Default::default(),
        )
        .await
        .unwrap(),
    )
    .unwrap();
    probe.apiserver_version().await.unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let tj: TrainingJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {name: after-renewal, namespace: default}\nspec: {template: {spec: {containers: [{name: main, image: trainer}]}}, workers: 1, gpusPerWorker: 2, gpu: {model: H100}}\n",
    )
    .unwrap();
    tjs.create(&PostParams::default(), &tj).await.unwrap();
    let on = gpupool_e2e::wait_running_on(&tjs, "after-renewal", 90)
        .await
        .unwrap();
    assert_eq!(on, "east");
    let mc = Api::<MemberCluster>::all(hub.clone())
        .get("east")
        .await
        .unwrap();
    assert!(gpupool_e2e::ready_with_gpus(&mc), "{:?}", mc.status);
    drop(op);
}
