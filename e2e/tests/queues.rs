//! GpuQueues on real API servers: a queue's quota stops its tenant at its nominal GPUs (jobs
//! outside every queue are not limited), the usage survives an operator restart (it is derived
//! from the jobs' statuses), idle quota of a cohort is lent up to the borrowing limit, and a job
//! naming a queue that does not take its namespace waits saying so. Preemption: a job of higher
//! priority preempts lower ones of its queue; a queue under its nominal quota reclaims lent
//! quota by preempting a borrower's whole gang, and the two queues do not evict each other back
//! and forth; a 4-GPU clique job on a DGX-1 preempts the jobs holding an NVLink quad, not the
//! cheapest scattered pair.

use gpupool::api::{GpuQueue, TrainingJob, TrainingPhase};
use gpupool_e2e::{
    Federation, GpuNode, Operator, eventually, publish_fixture, register_member,
    wait_training_phase,
};
use k8s_openapi::api::core::v1::Namespace;
use kube::api::{Api, DeleteParams, PostParams};

/// A hub and one device-plugin member with two 8-GPU DGX H100 nodes, the hub namespaces
/// `team-a` and `team-b`, and the operator running.
async fn setup() -> (Federation, kube::Client, Operator) {
    setup_nodes(&[
        ("h100-a", "dgx-h100", "NVIDIA H100 80GB HBM3"),
        ("h100-b", "dgx-h100", "NVIDIA H100 80GB HBM3"),
    ])
    .await
}

/// [`setup`] with these 8-GPU nodes: (name, topology fixture, GPU model).
async fn setup_nodes(nodes: &[(&str, &str, &str)]) -> (Federation, kube::Client, Operator) {
    gpupool::telemetry::init_logging();
    let fed = Federation::start(1).await.expect("federation starts");
    let member = fed.members[0].cp.client().await.unwrap();
    for (node, fixture, model) in nodes {
        fed.add_nodes(0, &[GpuNode::new(node, 8, model)])
            .await
            .unwrap();
        publish_fixture(&member, fixture, node).await.unwrap();
    }
    let hub = fed.hub.client().await.unwrap();
    register_member(
        &hub,
        "member-1",
        &fed.members[0].cp,
        "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU",
        "region-1",
    )
    .await
    .unwrap();
    let namespaces: Api<Namespace> = Api::all(hub.clone());
    for ns in ["team-a", "team-b"] {
        let n: Namespace =
            serde_json::from_value(serde_json::json!({"metadata": {"name": ns}})).unwrap();
        namespaces.create(&PostParams::default(), &n).await.unwrap();
    }
    let op = Operator::start(hub.clone(), Operator::test_config(30));
    gpupool_e2e::wait_member_ready(&hub, "member-1", 60)
        .await
        .unwrap();
    (fed, hub, op)
}

async fn create_queue(hub: &kube::Client, yaml: &str) {
    let q: GpuQueue = serde_yaml::from_str(yaml).unwrap();
    Api::<GpuQueue>::all(hub.clone())
        .create(&PostParams::default(), &q)
        .await
        .unwrap();
}

/// A one-worker TrainingJob of `gpus` GPUs in `ns`, naming `queue` if set.
async fn submit(hub: &kube::Client, ns: &str, name: &str, gpus: i32, queue: Option<&str>) {
    let queue = queue.map(|q| format!(", queue: {q}")).unwrap_or_default();
    let tj: TrainingJob = serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{template: {{spec: {{containers: [{{name: t, image: ghcr.io/example/t:1}}]}}}}, workers: 1, gpusPerWorker: {gpus}, nvlink: none{queue}}}\n"
    ))
    .unwrap();
    Api::<TrainingJob>::namespaced(hub.clone(), ns)
        .create(&PostParams::default(), &tj)
        .await
        .unwrap();
}

/// A TrainingJob in `ns` with these spec fields besides its template.
async fn submit_spec(hub: &kube::Client, ns: &str, name: &str, fields: &str) {
    let tj: TrainingJob = serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: {ns}}}\nspec: {{template: {{spec: {{containers: [{{name: t, image: ghcr.io/example/t:1}}]}}}}, {fields}}}\n"
    ))
    .unwrap();
    Api::<TrainingJob>::namespaced(hub.clone(), ns)
        .create(&PostParams::default(), &tj)
        .await
        .unwrap();
}

async fn get(hub: &kube::Client, ns: &str, name: &str) -> TrainingJob {
    Api::<TrainingJob>::namespaced(hub.clone(), ns)
        .get(name)
        .await
        .unwrap()
}

/// Waits until job `name` is preempted (back to Pending, `Preempted=True` with `reason` and a
/// message containing `says`), and returns it.
async fn wait_preempted(
    hub: &kube::Client,
    ns: &str,
    name: &str,
    reason: &str,
    says: &str,
) -> TrainingJob {
    let api: Api<TrainingJob> = Api::namespaced(hub.clone(), ns);
    eventually(60, &format!("{name} preempted: {says}"), || async {
        let j = api.get(name).await?;
        let st = j.status.clone().unwrap_or_default();
        let preempted = st.conditions.iter().any(|c| {
            c.type_ == "Preempted"
                && c.status == "True"
                && c.reason == reason
                && c.message.contains(says)
        });
        Ok((preempted && st.cluster.is_none()).then_some(j))
    })
    .await
    .unwrap()
}

/// Whether an Event of `reason` on job `name` says `says`.
async fn has_event(hub: &kube::Client, ns: &str, name: &str, reason: &str, says: &str) -> bool {
    let events: Api<k8s_openapi::api::events::v1::Event> = Api::namespaced(hub.clone(), ns);
    let list = events
        .list(&Default::default())
        .await
        .unwrap_or_else(|_| kube::core::ObjectList {
            types: Default::default(),
            metadata: Default::default(),
            items: Vec::new(),
        });
    list.items.iter().any(|e| {
        e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name)
            && e.reason.as_deref() == Some(reason)
            && e.note.as_deref().is_some_and(|n| n.contains(says))
    })
}

/// The member pods of job `name` (from its placement's gang generation label), by the hub
/// job's UID.
async fn member_pods(fed: &Federation, uid: &str) -> Vec<k8s_openapi::api::core::v1::Pod> {
    let member = fed.members[0].cp.client().await.unwrap();
    Api::<k8s_openapi::api::core::v1::Pod>::all(member)
        .list(&kube::api::ListParams::default().labels(&format!("gpupool.io/job-uid={uid}")))
        .await
        .unwrap()
        .items
}

/// Waits until job `name` in `ns` waits with a pending reason containing `reason`.
async fn wait_reason(hub: &kube::Client, ns: &str, name: &str, reason: &str) -> TrainingJob {
    let api: Api<TrainingJob> = Api::namespaced(hub.clone(), ns);
    eventually(60, &format!("{name} waiting: {reason}"), || async {
        let j = api.get(name).await?;
        let st = j.status.clone().unwrap_or_default();
        Ok((st.phase == TrainingPhase::Pending
            && st
                .pending_reason
                .as_deref()
                .is_some_and(|r| r.contains(reason)))
        .then_some(j))
    })
    .await
    .unwrap()
}

async fn running(hub: &kube::Client, ns: &str, name: &str) {
    wait_training_phase(
        &Api::namespaced(hub.clone(), ns),
        name,
        TrainingPhase::Running,
        60,
    )
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_quota_stops_its_tenant_and_an_operator_restart_keeps_the_usage() {
    let (_fed, hub, op) = setup().await;
    create_queue(
        &hub,
        "apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {name: team-a}\nspec: {namespaces: [team-a], quotas: [{gpuClass: H100, nominal: 4, borrowingLimit: 0}]}\n",
    )
    .await;
    submit(&hub, "team-a", "a1", 4, None).await;
    running(&hub, "team-a", "a1").await;
    submit(&hub, "team-a", "a2", 2, None).await;
    wait_reason(
        &hub,
        "team-a",
        "a2",
        "queue team-a: 4 of 4 H100 in use, the job needs 2, borrowing limit reached",
    )
    .await;
    // Outside every queue nothing is limited: the pool has the GPUs.
    submit(&hub, "default", "free", 8, None).await;
    running(&hub, "default", "free").await;
    // The queue's status shows what the scheduler counted.
    let queues: Api<GpuQueue> = Api::all(hub.clone());
    eventually(30, "team-a's status: 4 used, 1 pending", || async {
        let st = queues.get("team-a").await?.status.unwrap_or_default();
        Ok((st.used_gpus == 4 && st.nominal_gpus == 4 && st.pending_jobs == 1).then_some(()))
    })
    .await
    .unwrap();

    // A new operator counts the usage again from the jobs' statuses.
    drop(op);
    let op = Operator::start(hub.clone(), Operator::test_config(30));
    submit(&hub, "team-a", "a3", 1, None).await;
    wait_reason(
        &hub,
        "team-a",
        "a3",
        "queue team-a: 4 of 4 H100 in use, the job needs 1, borrowing limit reached",
    )
    .await;
    let a2 = Api::<TrainingJob>::namespaced(hub.clone(), "team-a")
        .get("a2")
        .await
        .unwrap();
    assert_eq!(
        a2.status.unwrap().phase,
        TrainingPhase::Pending,
        "a2 was not admitted after the restart"
    );
    // The tenant's running job ends: its quota goes to the waiting ones.
    Api::<TrainingJob>::namespaced(hub.clone(), "team-a")
        .delete("a1", &DeleteParams::default())
        .await
        .unwrap();
    running(&hub, "team-a", "a2").await;
    running(&hub, "team-a", "a3").await;
    drop(op);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idle_quota_of_a_cohort_is_lent_up_to_the_borrowing_limit() {
    let (_fed, hub, _op) = setup().await;
    create_queue(
        &hub,
        "apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {name: team-a}\nspec: {namespaces: [team-a], cohort: lab, quotas: [{gpuClass: H100, nominal: 4, borrowingLimit: 4}]}\n",
    )
    .await;
    create_queue(
        &hub,
        "apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {name: team-b}\nspec: {namespaces: [team-b], cohort: lab, quotas: [{gpuClass: H100, nominal: 8, lendingLimit: 4}]}\n",
    )
    .await;
    // team-b is idle: team-a borrows the 4 it lends.
    submit(&hub, "team-a", "a1", 8, None).await;
    running(&hub, "team-a", "a1").await;
    submit(&hub, "team-a", "a2", 1, None).await;
    wait_reason(
        &hub,
        "team-a",
        "a2",
        "queue team-a: 8 of 4 H100 in use, the job needs 1, borrowing limit reached",
    )
    .await;
    // team-b's nominal quota is its own whatever team-a borrowed.
    submit(&hub, "team-b", "b1", 8, None).await;
    running(&hub, "team-b", "b1").await;
    // A job naming a queue that does not take its namespace waits saying so.
    submit(&hub, "team-a", "sneaky", 1, Some("team-b")).await;
    wait_reason(
        &hub,
        "team-a",
        "sneaky",
        "queue team-b does not take jobs of namespace team-a",
    )
    .await;
    let queues: Api<GpuQueue> = Api::all(hub.clone());
    eventually(30, "team-a's status: 4 borrowed", || async {
        let st = queues.get("team-a").await?.status.unwrap_or_default();
        Ok((st.used_gpus == 8 && st.borrowed_gpus == 4).then_some(()))
    })
    .await
    .unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_higher_priority_job_preempts_the_most_recent_lower_one_of_its_queue() {
    let (fed, hub, _op) = setup().await;
    create_queue(
        &hub,
        "apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {name: team-a}\nspec: {namespaces: [team-a], quotas: [{gpuClass: H100, nominal: 16, borrowingLimit: 0}]}\n",
    )
    .await;
    submit_spec(&hub, "team-a", "old", "workers: 1, gpusPerWorker: 8").await;
    running(&hub, "team-a", "old").await;
    // Started a second or more later: the cheaper victim of the two.
    tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
    submit_spec(&hub, "team-a", "new", "workers: 1, gpusPerWorker: 8").await;
    running(&hub, "team-a", "new").await;
    let uid = get(&hub, "team-a", "new").await.metadata.uid.unwrap();
    // A job of the same priority waits: nothing is preempted for it.
    submit_spec(&hub, "team-a", "peer", "workers: 1, gpusPerWorker: 8").await;
    wait_reason(&hub, "team-a", "peer", "node(s)").await;
    submit_spec(
        &hub,
        "team-a",
        "urgent",
        "workers: 1, gpusPerWorker: 8, priority: 100",
    )
    .await;
    let new = wait_preempted(
        &hub,
        "team-a",
        "new",
        "PreemptedByPriority",
        "preempted by team-a/urgent (priority 100) in queue team-a",
    )
    .await;
    running(&hub, "team-a", "urgent").await;
    let st = new.status.unwrap();
    assert_eq!(
        (st.restarts, st.preemptions),
        (1, 1),
        "a new gang generation"
    );
    assert_eq!(
        st.past_placements.len(),
        1,
        "the preempted placement is kept for metering"
    );
    assert_eq!(
        get(&hub, "team-a", "old").await.status.unwrap().phase,
        TrainingPhase::Running
    );
    // Its pods are withdrawn (deleted with their grace period, not forced).
    eventually(30, "the preempted gang's pods gone", || async {
        Ok(member_pods(&fed, &uid).await.is_empty().then_some(()))
    })
    .await
    .unwrap();
    assert!(
        has_event(
            &hub,
            "team-a",
            "new",
            "Preempted",
            "preempted by team-a/urgent"
        )
        .await,
        "a Preempted Event names the preemptor"
    );
    // Back in its queue in its original order: created before `peer`, it goes first.
    Api::<TrainingJob>::namespaced(hub.clone(), "team-a")
        .delete("urgent", &DeleteParams::default())
        .await
        .unwrap();
    running(&hub, "team-a", "new").await;
    let st = get(&hub, "team-a", "new").await.status.unwrap();
    assert_eq!(st.restarts, 1, "placed again as generation 1");
    let pods = member_pods(&fed, &uid).await;
    assert!(
        pods.iter()
            .all(|p| p.metadata.name.as_deref().is_some_and(|n| n.contains("g1"))),
        "only generation-1 pods: {:?}",
        pods.iter()
            .map(|p| p.metadata.name.clone())
            .collect::<Vec<_>>()
    );
    assert_eq!(
        get(&hub, "team-a", "peer").await.status.unwrap().phase,
        TrainingPhase::Pending
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn reclaim_preempts_the_borrowers_whole_gang_and_the_queues_do_not_thrash() {
    let (fed, hub, _op) = setup().await;
    for (q, other) in [("team-a", "team-a"), ("team-b", "team-b")] {
        create_queue(
            &hub,
            &format!("apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {{name: {q}}}\nspec: {{namespaces: [{other}], cohort: lab, quotas: [{{gpuClass: H100, nominal: 8}}]}}\n"),
        )
        .await;
    }
    // team-a is idle: team-b's gang of two 8-GPU workers borrows its 8 GPUs.
    submit_spec(&hub, "team-b", "big", "workers: 2, gpusPerWorker: 8").await;
    running(&hub, "team-b", "big").await;
    let uid = get(&hub, "team-b", "big").await.metadata.uid.unwrap();
    assert_eq!(member_pods(&fed, &uid).await.len(), 2);
    // team-a wants 4 of its nominal 8 back: the borrower's gang goes, whole.
    submit_spec(
        &hub,
        "team-a",
        "mine",
        "workers: 1, gpusPerWorker: 4, nvlink: none",
    )
    .await;
    let big = wait_preempted(
        &hub,
        "team-b",
        "big",
        "Reclaimed",
        "reclaimed by queue team-a, lent quota",
    )
    .await;
    running(&hub, "team-a", "mine").await;
    assert_eq!(big.status.unwrap().past_placements[0].workers.len(), 2);
    eventually(30, "both workers of the gang gone", || async {
        Ok(member_pods(&fed, &uid).await.is_empty().then_some(()))
    })
    .await
    .unwrap();
    // No thrash: team-b (now under its nominal quota) cannot take the GPUs back — team-a holds
    // no more than its nominal — and its gang waits for 16 GPUs with 12 free.
    for _ in 0..10 {
        tokio::time::sleep(std::time::Duration::from_secs(1)).await;
        let mine = get(&hub, "team-a", "mine").await.status.unwrap();
        assert_eq!(mine.phase, TrainingPhase::Running);
        assert_eq!(mine.preemptions, 0);
        let big = get(&hub, "team-b", "big").await.status.unwrap();
        assert_eq!((big.preemptions, big.cluster), (1, None));
    }
    // A team-b job within its nominal quota runs beside it.
    submit_spec(&hub, "team-b", "small", "workers: 1, gpusPerWorker: 8").await;
    running(&hub, "team-b", "small").await;
    assert_eq!(
        get(&hub, "team-a", "mine")
            .await
            .status
            .unwrap()
            .preemptions,
        0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_clique_job_preempts_the_jobs_holding_an_nvlink_quad_not_a_scattered_pair() {
    let (_fed, hub, _op) = setup_nodes(&[("dgx1", "dgx1-v100", "Tesla V100-SXM2-16GB")]).await;
    create_queue(
        &hub,
        "apiVersion: gpupool.io/v1alpha1\nkind: GpuQueue\nmetadata: {name: team-a}\nspec: {namespaces: [team-a], quotas: [{gpuClass: V100, nominal: 8}]}\n",
    )
    .await;
    let pair = "workers: 1, gpusPerWorker: 2, nvlink: clique, priority: 5";
    let quad_of = |j: &TrainingJob| {
        let idx = j.status.as_ref().unwrap().workers[0].gpu_indexes.clone();
        assert!(
            idx.iter().all(|i| i / 4 == idx[0] / 4),
            "a pair across quads: {idx:?}"
        );
        idx[0] / 4
    };
    // Four NVLink pairs fill the DGX-1, two in each 4-GPU NVLink quad {0-3}, {4-7}, started a
    // second or more apart.
    for p in ["p1", "p2", "p3", "p4"] {
        submit_spec(&hub, "team-a", p, pair).await;
        running(&hub, "team-a", p).await;
        tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    }
    // The pair sharing a quad with p1 starts again, last: the two most recently started — the
    // cheapest victims by count and age — are then one pair in each quad, four GPUs that are no
    // NVLink clique.
    let q1 = quad_of(&get(&hub, "team-a", "p1").await);
    let mut partner = "";
    for p in ["p2", "p3", "p4"] {
        if quad_of(&get(&hub, "team-a", p).await) == q1 {
            partner = p;
        }
    }
    assert!(!partner.is_empty(), "two pairs per quad");
    let api: Api<TrainingJob> = Api::namespaced(hub.clone(), "team-a");
    api.delete(partner, &DeleteParams::default()).await.unwrap();
    eventually(30, "the partner gone", || async {
        Ok(api.get_opt(partner).await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    submit_spec(&hub, "team-a", "late", pair).await;
    running(&hub, "team-a", "late").await;
    let mut quads: Vec<(String, i32)> = Vec::new();
    for p in ["p1", "p2", "p3", "p4", "late"]
        .into_iter()
        .filter(|p| *p != partner)
    {
        quads.push((p.to_string(), quad_of(&get(&hub, "team-a", p).await)));
    }
    tokio::time::sleep(std::time::Duration::from_millis(1100)).await;
    submit_spec(
        &hub,
        "team-a",
        "quad",
        "workers: 1, gpusPerWorker: 4, nvlink: clique, priority: 100",
    )
    .await;
    running(&hub, "team-a", "quad").await;
    let got = get(&hub, "team-a", "quad").await;
    let q = quad_of(&got);
    assert_eq!(got.status.unwrap().workers[0].gpu_indexes.len(), 4);
    // Exactly the two pairs of that quad were preempted.
    let mut preempted = Vec::new();
    for (p, pq) in &quads {
        let s = get(&hub, "team-a", p).await.status.unwrap();
        if s.preemptions > 0 {
            assert_eq!(*pq, q, "{p} preempted outside the quad: {quads:?}");
            preempted.push(p.clone());
        }
    }
    assert_eq!(preempted.len(), 2, "{preempted:?} of {quads:?}");
}
