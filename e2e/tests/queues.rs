//! GpuQueues on real API servers: a queue's quota stops its tenant at its nominal GPUs (jobs
//! outside every queue are not limited), the usage survives an operator restart (it is derived
//! from the jobs' statuses), idle quota of a cohort is lent up to the borrowing limit, and a job
//! naming a queue that does not take its namespace waits saying so.

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
    gpupool::telemetry::init_logging();
    let fed = Federation::start(1).await.expect("federation starts");
    let member = fed.members[0].cp.client().await.unwrap();
    for node in ["h100-a", "h100-b"] {
        fed.add_nodes(0, &[GpuNode::new(node, 8, "NVIDIA H100 80GB HBM3")])
            .await
            .unwrap();
        publish_fixture(&member, "dgx-h100", node).await.unwrap();
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
