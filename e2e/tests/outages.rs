//! Outages on real API servers: a job deleted while a new leader connects leaves no pod behind,
//! and a pull member's agent outlives its own API server's outage, saying so in its heartbeat.

use gpupool::api::{MemberCluster, TrainingJob, TrainingPhase};
use gpupool::join::{self, controller::JoinConfig, names};
use gpupool_e2e::{
    Federation, GpuNode, Operator, eventually, operator_bin, publish_fixture, register_member,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

const WALLET: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";

fn job(name: &str) -> TrainingJob {
    serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: t, image: trainer}}]}}}}, workers: 2, gpusPerWorker: 1, nvlink: none}}\n"
    ))
    .unwrap()
}

/// The job's pods in the member that are not on their way out.
async fn live_pods(member: &kube::Client, job: &str) -> Vec<String> {
    Api::<Pod>::all(member.clone())
        .list(&ListParams::default().labels(&format!("gpupool.io/job-name={job}")))
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| p.metadata.name)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_job_deleted_while_a_new_leader_connects_leaves_no_pod() {
    gpupool::telemetry::init_logging();
    let fed = Federation::start(1).await.unwrap();
    fed.add_nodes(0, &[GpuNode::new("h100-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", "h100-0")
        .await
        .unwrap();
    let hub = fed.hub.client().await.unwrap();
    register_member(&hub, "member-1", &fed.members[0].cp, WALLET, "r1")
        .await
        .unwrap();
    let first = Operator::start(hub.clone(), Operator::test_config(30));
    gpupool_e2e::wait_member_ready(&hub, "member-1", 60)
        .await
        .unwrap();
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(&PostParams::default(), &job("gone"))
        .await
        .unwrap();
    gpupool_e2e::wait_training_phase(&tjs, "gone", TrainingPhase::Running, 60)
        .await
        .unwrap();
    assert_eq!(live_pods(&member, "gone").await.len(), 2);

    // The leader goes; the job is deleted meanwhile (its finalizer holds it); a new leader
    // starts and must not let the job go before its pods are gone from the member.
    drop(first);
    tokio::time::sleep(Duration::from_secs(1)).await;
    tjs.delete("gone", &DeleteParams::default()).await.unwrap();
    let _second = Operator::start(hub.clone(), Operator::test_config(30));
    let t0 = Instant::now();
    loop {
        if tjs.get_opt("gone").await.unwrap().is_none() {
            let left = live_pods(&member, "gone").await;
            assert!(
                left.is_empty(),
                "the job left the hub while its pods stayed in the member: {left:?}"
            );
            break;
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "the deleted job stayed on the hub"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// The member-api annotation of the pull member's heartbeat Lease.
async fn member_api(hub: &kube::Client, member: &str) -> Option<String> {
    Api::<Lease>::namespaced(hub.clone(), &names::member_namespace(member))
        .get_opt(names::HEARTBEAT_LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.metadata.annotations)
        .and_then(|a| a.get(gpupool::pull::MEMBER_API_ANNOTATION).cloned())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_pull_agent_outlives_its_member_api_outage_and_says_so_in_its_heartbeat() {
    gpupool::telemetry::init_logging();
    let mut fed = Federation::start(1).await.unwrap();
    fed.add_nodes(0, &[GpuNode::new("gpu-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", "gpu-0").await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let _controller = tokio::spawn(join::controller::run(
        hub.clone(),
        JoinConfig {
            auto_approve: true,
            resync: Duration::from_secs(1),
            ..Default::default()
        },
    ));
    let _op = Operator::start(hub.clone(), Operator::test_config(30));
    let token = join::token::create(&hub, Duration::from_secs(3600), None)
        .await
        .unwrap();
    let log = fed.members[0].cp.dir().join("agent.log");
    let f = std::fs::File::create(&log).unwrap();
    let mut agent = Command::new(operator_bin("gpupool"))
        .arg("member-agent")
        .args(["--hub-url", &fed.hub.server_url()])
        .arg("--hub-ca-file")
        .arg(fed.hub.dir().join("pki/ca.crt"))
        .args(["--member-name", "pull-1", "--owner-wallet", WALLET])
        .args(["--heartbeat-seconds", "1", "--report-seconds", "1"])
        .env("KUBECONFIG", fed.members[0].cp.kubeconfig_path())
        .env("GPUPOOL_JOIN_TOKEN", &token.token)
        .env("RUST_LOG", "info,kube=warn")
        .stdout(Stdio::from(f.try_clone().unwrap()))
        .stderr(Stdio::from(f))
        .spawn()
        .unwrap();
    let agent_log = || std::fs::read_to_string(&log).unwrap_or_default();
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    eventually(90, "pull member Ready with its GPUs", || async {
        Ok(gpupool_e2e::ready_with_gpus(&mcs.get("pull-1").await?).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    assert_eq!(member_api(&hub, "pull-1").await.as_deref(), Some("ok"));

    // The member's own API server stops for a while: the agent keeps running and heartbeating,
    // and says the member's API is unreachable; the hub no longer counts the member reachable.
    fed.members[0].cp.stop_apiserver();
    let said = eventually(
        30,
        "the heartbeat saying the member API is unreachable",
        || async {
            Ok(member_api(&hub, "pull-1")
                .await
                .filter(|v| v.starts_with("unreachable")))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    assert!(said.contains("unreachable since"), "{said}");
    eventually(
        30,
        "the hub saying why the member is not reachable",
        || async {
            let mc = mcs.get("pull-1").await?;
            let said = mc.status.iter().flat_map(|s| &s.conditions).any(|c| {
                c.message.contains("unreachable since") || c.reason == "MemberApiUnreachable"
            });
            Ok(said.then_some(()))
        },
    )
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(
        agent.try_wait().unwrap().is_none(),
        "the agent exited while its API server was down:\n{}",
        agent_log()
    );
    fed.members[0].cp.restart_apiserver().await.unwrap();
    eventually(
        60,
        "the heartbeat saying the member API is back",
        || async { Ok((member_api(&hub, "pull-1").await.as_deref() == Some("ok")).then_some(())) },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    // Work flows again: a job placed on the pull member runs.
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(&PostParams::default(), &job("after"))
        .await
        .unwrap();
    gpupool_e2e::wait_training_phase(&tjs, "after", TrainingPhase::Running, 90)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent_log()));
    assert!(agent.try_wait().unwrap().is_none(), "{}", agent_log());
    let _ = agent.kill();
    let _ = agent.wait();
}
