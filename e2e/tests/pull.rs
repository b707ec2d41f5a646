//! Pull-mode members on real API servers. The member's agent runs as its own process with the
//! member's kubeconfig and dials out to the hub; the hub is never given the member's kubeconfig.
//! Covered: join → pending → approve → credential; the member's identity recorded and a second
//! join of the same cluster under another name refused; a work object's pod applied in the member
//! and its status flowing back; the inventory report; a spent, a revoked and an expired join token
//! refused; the issued credential Forbidden on everything but the member's own objects; the
//! heartbeat Lease renewed and stopping with the agent; a revoked member refused and re-joining;
//! a DRA member's claims applied by the agent and allocated to exactly the hub's GPUs.

use gpupool::api::{
    Approval, InferenceJob, JoinPhase, JoinRequest, MemberCluster, MemberMode, MemberReport,
    MemberWork, MemberWorkSpec, TrainingJob, TrainingPhase, UsageRecord,
};
use gpupool::join::{self, controller::JoinConfig, names};
use gpupool::member_agent::hub::{self, HubEndpoint};
use gpupool::pull;
use gpupool_e2e::{
    Federation, GpuNode, Operator, Tools, eventually, http, operator_bin, publish_fixture,
    register_member,
};
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret, ServiceAccount};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};

use std::time::{Duration, Instant};

const WALLET: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";
const MEMBER: &str = "pull-1";

/// The hub's join controller (resync every second), as a task; probes and metrics on
/// `metrics_port`.
fn spawn_join_controller(
    hub: kube::Client,
    auto_approve: bool,
    metrics_port: Option<u16>,
) -> tokio::task::JoinHandle<anyhow::Result<()>> {
    tokio::spawn(join::controller::run(
        hub,
        JoinConfig {
            auto_approve,
            resync: Duration::from_secs(1),
            metrics_addr: metrics_port.map(|p| ([127, 0, 0, 1], p).into()),
        },
    ))
}

/// The agent process; killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
    /// Where it serves /healthz, /readyz and /metrics.
    metrics_port: u16,
}

impl Agent {
    fn start(fed: &Federation, token: Option<&str>, name: &str, agent_ns: &str) -> Agent {
        let m = &fed.members[0].cp;
        let log = m.dir().join(format!("agent-{name}-{agent_ns}.log"));
        let f = std::fs::File::options()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let metrics_port = http::free_port();
        let mut cmd = Command::new(operator_bin("gpupool"));
        cmd.arg("member-agent")
            .arg(format!("--metrics-addr=127.0.0.1:{metrics_port}"))
            .args(["--hub-url", &fed.hub.server_url()])
            .arg("--hub-ca-file")
            .arg(fed.hub.dir().join("pki/ca.crt"))
            .args(["--member-name", name, "--owner-wallet", WALLET])
            .args(["--namespace", agent_ns, "--identity", "agent-0"])
            .args(["--heartbeat-seconds", "1", "--report-seconds", "1"])
            .args(["--region", "home", "--label", "tier=consumer"])
            // Only the member's kubeconfig: the agent is the member's process.
            .env("KUBECONFIG", m.kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn")
            .env_remove("GPUPOOL_JOIN_TOKEN")
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f));
        if let Some(t) = token {
            cmd.env("GPUPOOL_JOIN_TOKEN", t);
        }
        Agent {
            child: cmd.spawn().unwrap(),
            log,
            metrics_port,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// `GET path` on its probe and metrics port.
    fn get(&self, path: &str) -> (u16, String) {
        http::get(self.metrics_port, path)
            .unwrap_or_else(|| panic!("the agent serves {path}:\n{}", self.log()))
    }

    /// Waits for the process to exit; returns (success, log).
    async fn exit(&mut self, secs: u64) -> (bool, String) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        loop {
            if let Some(st) = self.child.try_wait().unwrap() {
                return (st.success(), self.log());
            }
            assert!(
                Instant::now() < deadline,
                "agent still running:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn gpupool_cli(fed: &Federation, args: &[&str]) -> String {
    let out = Command::new(operator_bin("gpupool"))
        .args(args)
        .env("KUBECONFIG", fed.hub.kubeconfig_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "gpupool {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

fn code(e: &kube::Error) -> u16 {
    match e {
        kube::Error::Api(s) => s.code,
        other => panic!("expected an API error, got {other}"),
    }
}

/// Waits up to `secs` seconds until the hub refuses (401) a client holding the join token of
/// request `id` (`what`: why it must be refused).
async fn token_refused(client: &kube::Client, id: &str, secs: u64, what: &str) {
    eventually(secs, &format!("{what} join token refused"), || async {
        let r = Api::<JoinRequest>::namespaced(client.clone(), names::JOIN_NAMESPACE)
            .get(id)
            .await;
        Ok(matches!(r, Err(kube::Error::Api(e)) if e.code == 401).then_some(()))
    })
    .await
    .unwrap();
}

async fn join_phase(hub: &kube::Client, id: &str) -> Option<JoinPhase> {
    Api::<JoinRequest>::namespaced(hub.clone(), names::JOIN_NAMESPACE)
        .get_opt(id)
        .await
        .unwrap()
        .and_then(|r| r.status)
        .map(|s| s.phase)
}

async fn renew_time(hub: &kube::Client, ns: &str) -> Option<String> {
    Api::<Lease>::namespaced(hub.clone(), ns)
        .get_opt(names::HEARTBEAT_LEASE)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.renew_time)
        .map(|t| t.0.to_string())
}

fn work(name: &str, pods: &[(&str, &str)]) -> MemberWork {
    // Each pod its own GPU: the agent creates no pod while another live pod holds its GPUs.
    let manifests = pods
        .iter()
        .map(|(pod, node)| {
            let uuid = format!("GPU-{pod}");
            serde_json::json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": pod, "namespace": "gpupool-ml",
                             "labels": {"app.kubernetes.io/managed-by": "gpupool", "gpupool.io/job-namespace": "ml"},
                             "annotations": {"gpupool.io/gpu-uuids": uuid}},
                "spec": {"nodeName": node,
                         "tolerations": [{"operator": "Exists"}],
                         "containers": [{"name": "worker", "image": "trainer",
                                         "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}
            })
        })
        .collect();
    MemberWork::new(
        name,
        MemberWorkSpec {
            job_ref: None,
            manifests,
        },
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn pull_member_joins_serves_work_and_is_confined_to_its_own_objects() {
    let fed = Federation::start(1).await.expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new("gpu-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", "gpu-0").await.unwrap();
    let member_id = join::member_identity(&member).await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let endpoint = HubEndpoint {
        url: fed.hub.server_url(),
        ca_pem: Some(std::fs::read_to_string(fed.hub.dir().join("pki/ca.crt")).unwrap()),
    };
    // The join controller runs with exactly the identity and RBAC the chart gives it.
    let jc = join_controller_client(&fed, &hub, &endpoint).await;
    let overreach = jc.clone();
    let jc_port = http::free_port();
    let controller = spawn_join_controller(jc, false, Some(jc_port));
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    let ns = names::member_namespace(MEMBER);

    // --- Join: pending until a pool admin approves.
    let token = join::token::create(&hub, Duration::from_secs(3600), None)
        .await
        .unwrap();
    let mut agent = Agent::start(&fed, Some(&token.token), MEMBER, "gpupool-system");
    let mc = eventually(60, "pending pull member", || async {
        Ok(mcs.get_opt(MEMBER).await?)
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(mc.spec.mode, MemberMode::Pull);
    assert_eq!(mc.spec.approval, Approval::Pending);
    assert_eq!(mc.spec.cluster_id.as_deref(), Some(member_id.as_str()));
    assert!(mc.spec.kubeconfig_ref().is_none());
    assert_eq!(mc.spec.labels["tier"], "consumer");
    eventually(30, "join request Pending", || async {
        Ok((join_phase(&hub, &token.id).await == Some(JoinPhase::Pending)).then_some(()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(2)).await;
    // Waiting for an admin: live, not ready; the join controller counts the waiting request.
    assert_eq!(agent.get("/healthz").0, 200);
    assert_eq!(agent.get("/readyz"), (503, "joining the pool\n".into()));
    eventually(
        30,
        "the join controller's metrics count a pending request",
        || async {
            let m = http::get(jc_port, "/metrics")
                .map(|(_, m)| m)
                .unwrap_or_default();
            Ok(
                (http::sample(&m, "gpupool_join_requests{phase=\"Pending\"}") == Some(1.0))
                    .then_some(()),
            )
        },
    )
    .await
    .unwrap();
    assert_eq!(http::get(jc_port, "/healthz").map(|r| r.0), Some(200));
    assert_eq!(http::get(jc_port, "/readyz").map(|r| r.0), Some(200));
    assert!(
        Api::<ServiceAccount>::namespaced(hub.clone(), &ns)
            .get_opt(names::MEMBER_AGENT_SA)
            .await
            .unwrap()
            .is_none(),
        "no credential before approval"
    );

    let approved_at = Instant::now();
    gpupool_cli(&fed, &["approve", MEMBER]);
    eventually(60, "join complete", || async {
        Ok((join_phase(&hub, &token.id).await == Some(JoinPhase::Joined)).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    println!("approve → joined: {:?}", approved_at.elapsed());
    let stored = hub::load(&member, "gpupool-system", "gpupool-hub-credential")
        .await
        .unwrap()
        .expect("credential stored in the member");
    assert_eq!(
        (stored.member.as_str(), stored.namespace.as_str()),
        (MEMBER, ns.as_str())
    );
    // The join token is spent.
    let spent = hub::client(&endpoint, &token.token).await.unwrap();
    token_refused(&spent, &token.id, 10, "spent").await;
    join_controller_cannot_overreach(&overreach, MEMBER).await;

    // --- Heartbeat Lease renewed.
    let first = renew_time(&hub, &ns).await.unwrap();
    eventually(10, "lease renewed", || async {
        Ok(renew_time(&hub, &ns).await.filter(|t| *t != first))
    })
    .await
    .unwrap();

    // --- Inventory reported.
    let report = eventually(30, "member report", || async {
        Ok(Api::<MemberReport>::namespaced(hub.clone(), &ns)
            .get_opt(MEMBER)
            .await?
            .filter(|r| !r.spec.nodes.is_empty()))
    })
    .await
    .unwrap();
    assert_eq!(report.spec.cluster_id, member_id);
    // Joined: ready, and its metrics say the hub takes its heartbeats and reports.
    assert_eq!(agent.get("/readyz").0, 200);
    let m = agent.get("/metrics").1;
    for series in [
        "gpupool_member_agent_heartbeats_total{result=\"ok\"}",
        "gpupool_member_agent_reports_total{result=\"ok\"}",
        "gpupool_member_agent_member_api_up",
    ] {
        assert!(http::sample(&m, series) >= Some(1.0), "{series} in {m}");
    }
    assert!(
        http::sample(
            &m,
            "gpupool_member_agent_credential_expiry_timestamp_seconds"
        ) > Some(k8s_openapi::jiff::Timestamp::now().as_second() as f64),
        "{m}"
    );
    let n = &report.spec.nodes[0];
    assert_eq!((n.name.as_str(), n.gpus, n.ready), ("gpu-0", 8, true));
    assert_eq!(n.topology.as_ref().unwrap().gpus.len(), 8);

    // --- Work: the hub writes, the agent applies in the member; status flows back.
    let works: Api<MemberWork> = Api::namespaced(hub.clone(), &ns);
    let pods: Api<Pod> = Api::namespaced(member.clone(), "gpupool-ml");
    // A watch of the work objects from the hub side, to measure one watch round-trip alone.
    let (tx, mut seen_rx) = tokio::sync::mpsc::unbounded_channel::<(String, Instant)>();
    let watch_works = works.clone();
    let watch_task = tokio::spawn(async move {
        use futures::StreamExt;
        let mut s = std::pin::pin!(kube::runtime::watcher(
            watch_works,
            kube::runtime::watcher::Config::default()
        ));
        while let Some(ev) = s.next().await {
            if let Ok(kube::runtime::watcher::Event::Apply(w)) = ev {
                let _ = tx.send((w.name_any(), Instant::now()));
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(500)).await;
    let mut latencies = Vec::new();
    let mut watch_rtt = Vec::new();
    for i in 0..5 {
        let name = format!("job-{i}");
        let pod = format!("worker-{i}");
        let t0 = Instant::now();
        let w = work(&name, &[(&pod, "gpu-0")]);
        let job = gpupool::api::WorkJobRef {
            kind: "TrainingJob".into(),
            namespace: "ml".into(),
            name: name.clone(),
            uid: None,
        };
        pull::put_work(&hub, MEMBER, job, w.spec.manifests)
            .await
            .unwrap();
        loop {
            if pods.get_opt(&pod).await.unwrap().is_some() {
                break;
            }
            assert!(t0.elapsed() < Duration::from_secs(30), "{}", agent.log());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        latencies.push(t0.elapsed());
        let want = pull::work_name("TrainingJob", "ml", &name);
        loop {
            let (n, at) = seen_rx.recv().await.unwrap();
            if n == want {
                watch_rtt.push(at - t0);
                break;
            }
        }
    }
    watch_task.abort();
    watch_rtt.sort();
    // The push path for comparison: the hub's create in the member itself (one API call).
    let mut push = Vec::new();
    for i in 0..5 {
        let mut p: Pod =
            serde_json::from_value(work("x", &[("x", "gpu-0")]).spec.manifests[0].clone()).unwrap();
        p.metadata.name = Some(format!("push-{i}"));
        let t0 = Instant::now();
        pods.create(&PostParams::default(), &p).await.unwrap();
        push.push(t0.elapsed());
        pods.delete(&format!("push-{i}"), &DeleteParams::default())
            .await
            .unwrap();
    }
    latencies.sort();
    push.sort();
    println!(
        "MemberWork create → member pod exists (pull): median {:?}, max {:?}; one watch round-trip (create → event at a hub watcher): median {:?}; direct pod create (push): median {:?}",
        latencies[2], latencies[4], watch_rtt[2], push[2]
    );
    let st = eventually(60, "pod Running reported to the hub", || async {
        let w = works.get("tj-ml-job-0").await?;
        Ok(w.status.filter(|s| {
            s.pods
                .first()
                .is_some_and(|p| p.phase == "Running" && p.start_time.is_some())
                && s.observed_generation == w.metadata.generation
                && s.conditions
                    .iter()
                    .any(|c| c.type_ == "Applied" && c.status == "True")
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(st.pods[0].node.as_deref(), Some("gpu-0"));
    let applied = pods.get("worker-0").await.unwrap();
    assert_eq!(
        applied.labels()["gpupool.io/applied-by"],
        "gpupool-member-agent"
    );
    assert!(
        applied
            .metadata
            .managed_fields
            .unwrap()
            .iter()
            .any(|f| f.manager.as_deref() == Some("gpupool-member-agent"))
    );
    // A hostile manifest is refused and said so; nothing is created.
    let mut bad = work("job-bad", &[("evil", "gpu-0")]);
    bad.spec.manifests[0]["spec"]["hostPID"] = true.into();
    works.create(&PostParams::default(), &bad).await.unwrap();
    eventually(30, "refusal reported", || async {
        let w = works.get("job-bad").await?;
        Ok(w.status.filter(|s| {
            s.conditions
                .iter()
                .any(|c| c.status == "False" && c.message.contains("hostPID"))
        }))
    })
    .await
    .unwrap();
    assert!(pods.get_opt("evil").await.unwrap().is_none());
    // Deleting the work deletes its pod; other work stays.
    // The hub's view through the pull interface: nodes, pods and liveness as for a push member.
    let seen = pull::observe(&hub, MEMBER).await.unwrap();
    assert_eq!(seen.cluster_id.as_deref(), Some(member_id.as_str()));
    assert!(pull::alive(
        seen.heartbeat,
        k8s_openapi::jiff::Timestamp::now(),
        Duration::from_secs(5)
    ));
    assert_eq!(seen.inventory.nodes["gpu-0"].gpus, 8);
    let p0 = seen
        .inventory
        .pods
        .iter()
        .find(|p| p.metadata.name.as_deref() == Some("worker-0"))
        .expect("worker-0 in the observed inventory");
    assert_eq!(p0.labels()["app.kubernetes.io/managed-by"], "gpupool");
    assert!(
        gpupool::metering::pod_run(p0).is_some(),
        "running pod is metered"
    );
    pull::delete_work(&hub, MEMBER, "tj-ml-job-0")
        .await
        .unwrap();
    eventually(30, "pod of deleted work gone", || async {
        Ok(pods.get_opt("worker-0").await?.is_none().then_some(()))
    })
    .await
    .unwrap();
    assert!(pods.get_opt("worker-1").await.unwrap().is_some());

    // --- The issued credential reaches only this member's own objects.
    let other_ns = names::member_namespace("other");
    let mut o = Namespace::default();
    o.metadata.name = Some(other_ns.clone());
    Api::<Namespace>::all(hub.clone())
        .create(&PostParams::default(), &o)
        .await
        .unwrap();
    Api::<MemberWork>::namespaced(hub.clone(), &other_ns)
        .create(&PostParams::default(), &work("theirs", &[("t", "n")]))
        .await
        .unwrap();
    let cred = hub::client(&endpoint, &stored.token).await.unwrap();
    let theirs: Api<MemberWork> = Api::namespaced(cred.clone(), &other_ns);
    assert_eq!(
        code(&theirs.list(&ListParams::default()).await.unwrap_err()),
        403
    );
    assert_eq!(code(&theirs.get("theirs").await.unwrap_err()), 403);
    assert_eq!(
        code(
            &theirs
                .create(&PostParams::default(), &work("x", &[]))
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(
        code(
            &theirs
                .delete("theirs", &DeleteParams::default())
                .await
                .unwrap_err()
        ),
        403
    );
    let own: Api<MemberWork> = Api::namespaced(cred.clone(), &ns);
    assert!(own.list(&ListParams::default()).await.is_ok());
    assert_eq!(
        code(
            &own.create(&PostParams::default(), &work("self-made", &[]))
                .await
                .unwrap_err()
        ),
        403,
        "the agent reads its work, it does not write it"
    );
    assert_eq!(
        code(
            &Api::<MemberCluster>::all(cred.clone())
                .list(&ListParams::default())
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(
        code(
            &Api::<Secret>::namespaced(cred.clone(), &ns)
                .list(&ListParams::default())
                .await
                .unwrap_err()
        ),
        403
    );
    assert_eq!(
        code(
            &Api::<Secret>::namespaced(cred.clone(), names::JOIN_NAMESPACE)
                .list(&ListParams::default())
                .await
                .unwrap_err()
        ),
        403
    );

    // --- The hub holds nothing that reaches the member.
    let member_kc = fed.members[0].cp.kubeconfig_yaml();
    let member_ca = member_kc
        .lines()
        .find_map(|l| l.trim().strip_prefix("certificate-authority-data: "))
        .unwrap()
        .to_string();
    let member_url = fed.members[0].cp.server_url();
    for s in Api::<Secret>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        for v in s.data.unwrap_or_default().values() {
            let text = String::from_utf8_lossy(&v.0);
            assert!(
                !text.contains(&member_url) && !text.contains(&member_ca),
                "hub Secret {} holds a way into the member",
                s.metadata.name.unwrap_or_default()
            );
        }
    }
    assert!(
        mcs.get(MEMBER)
            .await
            .unwrap()
            .spec
            .kubeconfig_ref()
            .is_none()
    );

    // --- Join tokens: revoked, expired, and the same cluster under a second name.
    let revoked = join::token::create(&hub, Duration::from_secs(3600), None)
        .await
        .unwrap();
    gpupool_cli(&fed, &["join-token", "revoke", &revoked.id]);
    let mut a2 = Agent::start(&fed, Some(&revoked.token), "pull-2", "agent-two");
    let (ok, log) = a2.exit(60).await;
    assert!(!ok && log.contains("refused the join token"), "{log}");
    let expiring = join::token::create(&hub, Duration::from_secs(1), None)
        .await
        .unwrap();
    let expired_client = hub::client(&endpoint, &expiring.token).await.unwrap();
    token_refused(&expired_client, &expiring.id, 30, "expired").await;
    let dup = join::token::create(&hub, Duration::from_secs(3600), None)
        .await
        .unwrap();
    let mut a3 = Agent::start(&fed, Some(&dup.token), "pull-dup", "agent-three");
    let (ok, log) = a3.exit(60).await;
    assert!(
        !ok && log.contains("already joined the pool as pull-1"),
        "{log}"
    );
    assert!(mcs.get_opt("pull-dup").await.unwrap().is_none());

    // --- Agent stopped: the heartbeat stops.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    tokio::time::sleep(Duration::from_secs(2)).await;
    let last = renew_time(&hub, &ns).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        renew_time(&hub, &ns).await.unwrap(),
        last,
        "lease not renewed without agent"
    );

    // --- Revocation: the member's credential stops working; re-join with a new token.
    gpupool_cli(&fed, &["deny", MEMBER]);
    eventually(30, "revoked credential refused", || async {
        let r = own.list(&ListParams::default()).await;
        Ok(matches!(r, Err(kube::Error::Api(e)) if e.code == 401).then_some(()))
    })
    .await
    .unwrap();
    let mut a4 = Agent::start(&fed, None, MEMBER, "gpupool-system");
    let (ok, log) = a4.exit(60).await;
    assert!(!ok && log.contains("revoked"), "{log}");
    let again = join::token::create(&hub, Duration::from_secs(3600), Some(MEMBER))
        .await
        .unwrap();
    let _a5 = Agent::start(&fed, Some(&again.token), MEMBER, "gpupool-system");
    eventually(60, "re-join pending", || async {
        Ok((join_phase(&hub, &again.id).await == Some(JoinPhase::Pending)).then_some(()))
    })
    .await
    .unwrap();
    assert_eq!(
        mcs.get(MEMBER).await.unwrap().spec.approval,
        Approval::Pending
    );
    // This time through `kubectl gpupool approve` (kubectl's plugin mechanism), as an admin would.
    let plugin = operator_bin("kubectl-gpupool");
    let out = Command::new(Tools::get().unwrap().kubectl)
        .args(["gpupool", "approve", MEMBER, "-o", "json"])
        .env(
            "PATH",
            format!(
                "{}:{}",
                plugin.parent().unwrap().display(),
                std::env::var("PATH").unwrap_or_default()
            ),
        )
        .env("KUBECONFIG", fed.hub.kubeconfig_path())
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "kubectl gpupool approve: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let answer: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(answer["approval"], "Approved", "{answer}");
    eventually(60, "re-joined", || async {
        Ok((join_phase(&hub, &again.id).await == Some(JoinPhase::Joined)).then_some(()))
    })
    .await
    .unwrap();
    let renewed = hub::load(&member, "gpupool-system", "gpupool-hub-credential")
        .await
        .unwrap()
        .unwrap();
    assert_ne!(renewed.token, stored.token);
    let c2 = hub::client(&endpoint, &renewed.token).await.unwrap();
    assert!(
        Api::<MemberWork>::namespaced(c2, &ns)
            .list(&ListParams::default())
            .await
            .is_ok()
    );
    controller.abort();
}

/// Applies the hub chart's join-controller objects (ServiceAccount, join namespace, RBAC) to the
/// hub and returns a client with that ServiceAccount's token.
/// With the join controller's own credential: no other admission policy can be weakened, no
/// Push member or pre-approved member created, and a joined member's wallet, mode or labels
/// never changed; setting its approval back to Pending (a re-join) is allowed.
async fn join_controller_cannot_overreach(jc: &kube::Client, member: &str) {
    use kube::api::{Patch, PatchParams};
    let refused = |what: &str, r: Result<MemberCluster, kube::Error>, want: &str| match r {
        Err(kube::Error::Api(e)) => assert!(e.message.contains(want), "{what}: {e:?}"),
        other => panic!("{what} was allowed: {other:?}"),
    };
    let vaps: Api<k8s_openapi::api::admissionregistration::v1::ValidatingAdmissionPolicy> =
        Api::all(jc.clone());
    let weaken = serde_json::json!({"spec": {"failurePolicy": "Ignore"}});
    match vaps
        .patch(
            "gp-gpupool-usagerecord-writers",
            &PatchParams::default(),
            &Patch::Merge(&weaken),
        )
        .await
    {
        Err(kube::Error::Api(e)) => assert_eq!(e.code, 403, "{e:?}"),
        other => panic!("the join controller changed the UsageRecord policy: {other:?}"),
    }
    let mcs: Api<MemberCluster> = Api::all(jc.clone());
    let mut push: MemberCluster = serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "MemberCluster",
        "metadata": {"name": "sneaky-push"},
        "spec": {"mode": "Push", "ownerWallet": WALLET,
                 "kubeconfigSecretRef": {"name": "x", "key": "kubeconfig"}},
    }))
    .unwrap();
    refused(
        "a Push member",
        mcs.create(&PostParams::default(), &push).await,
        "creates and changes only Pull members",
    );
    push.metadata.name = Some("sneaky-approved".into());
    push.spec = serde_json::from_value(serde_json::json!({
        "mode": "Pull", "approval": "Approved", "ownerWallet": WALLET,
    }))
    .unwrap();
    refused(
        "a pre-approved member",
        mcs.create(&PostParams::default(), &push).await,
        "waits for an admin's approval",
    );
    for (what, spec) in [
        (
            "the wallet",
            serde_json::json!({"ownerWallet": "9xQeWvG816bUx9EPjHmaT23yvVM2ZWbrrpZb9PusVFin"}),
        ),
        ("the labels", serde_json::json!({"labels": {"gpu": "b200"}})),
        (
            "the approval",
            serde_json::json!({"approval": "Approved", "schedulable": false}),
        ),
    ] {
        refused(
            &format!("changing {what}"),
            mcs.patch(
                member,
                &PatchParams::default(),
                &Patch::Merge(serde_json::json!({"spec": spec})),
            )
            .await,
            "may",
        );
    }
    let wallet = mcs.get(member).await.unwrap().spec.owner_wallet;
    assert_eq!(wallet, WALLET);
}

async fn join_controller_client(
    fed: &Federation,
    hub: &kube::Client,
    endpoint: &HubEndpoint,
) -> kube::Client {
    let (ok, out, err) = helm_template(&[]);
    assert!(ok, "{err}");
    let docs: Vec<String> = chart_docs(&out)
        .into_iter()
        .filter(|d| {
            d["metadata"]["labels"]["app.kubernetes.io/component"] == "join-controller"
                && d["kind"] != "Deployment"
        })
        .map(|d| d.to_string())
        .collect();
    // ServiceAccount, ClusterRole and its binding, the policy scoping what it may do to
    // MemberClusters and its binding; the join namespace and its admission policy with its binding.
    assert_eq!(docs.len(), 8, "{docs:?}");
    let f = fed.hub.dir().join("join-controller.yaml");
    std::fs::write(&f, docs.join("\n---\n")).unwrap();
    let kubectl = fed.hub.kubectl();
    let f = f.display().to_string();
    tokio::task::spawn_blocking(move || {
        let _ = kubectl.run(&["create", "namespace", "gpupool-system"]);
        kubectl.ok(&["apply", "-f", &f])
    })
    .await
    .unwrap()
    .unwrap();
    let tr = Api::<ServiceAccount>::namespaced(hub.clone(), "gpupool-system")
        .create_token_request(
            "gp-gpupool-join-controller",
            &PostParams::default(),
            &Default::default(),
        )
        .await
        .unwrap();
    hub::client(endpoint, &tr.status.unwrap().token.unwrap())
        .await
        .unwrap()
}

/// Renders the chart like `helm template`, with helm's homes in a throwaway directory.
fn helm_template(extra: &[&str]) -> (bool, String, String) {
    let tools = Tools::get().expect("harness tools (helm) are available");
    let home = tempfile::tempdir().unwrap();
    let chart = gpupool_e2e::repo_root().join("charts/gpupool");
    let out = Command::new(&tools.helm)
        .args([
            "template",
            "gp",
            chart.to_str().unwrap(),
            "-n",
            "gpupool-system",
            "--kube-version",
            gpupool_e2e::HELM_KUBE_VERSION,
        ])
        .args(extra)
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn chart_docs(manifest: &str) -> Vec<serde_json::Value> {
    use serde::Deserialize;
    serde_yaml::Deserializer::from_str(manifest)
        .filter_map(|d| serde_json::Value::deserialize(d).ok())
        .filter(|v| !v.is_null())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chart_deploys_the_member_agent_for_a_pull_join() {
    let pull_values = [
        "--set",
        "mode=member",
        "--set",
        "member.hubAccess.enabled=false",
        "--set",
        "hub.url=https://hub.example:6443",
        "--set",
        "hub.joinToken=eyJhbGciOiJSUzI1NiJ9.e30.sig",
        "--set",
        "hub.caCert=-----BEGIN CERTIFICATE-----",
        "--set",
        "memberAgent.memberName=east",
        "--set",
        &format!("memberAgent.ownerWallet={WALLET}"),
        "--set",
        "memberAgent.labels.tier=home",
    ];
    let (ok, out, err) = helm_template(&pull_values);
    assert!(ok, "{err}");
    let docs = chart_docs(&out);
    let find = |kind: &str, name: &str| {
        docs.iter()
            .find(|d| d["kind"] == kind && d["metadata"]["name"] == name)
            .unwrap_or_else(|| panic!("{kind} {name} not rendered"))
    };
    let dep = find("Deployment", "gp-gpupool-member-agent");
    let c = &dep["spec"]["template"]["spec"]["containers"][0];
    let args: Vec<&str> = c["args"]
        .as_array()
        .unwrap()
        .iter()
        .map(|a| a.as_str().unwrap())
        .collect();
    assert_eq!(args[0], "member-agent");
    assert!(args.contains(&"--member-name=east") && args.contains(&"--label=tier=home"));
    let env = c["env"].as_array().unwrap();
    let token = env
        .iter()
        .find(|e| e["name"] == "GPUPOOL_JOIN_TOKEN")
        .unwrap();
    assert_eq!(
        token["valueFrom"]["secretKeyRef"]["name"],
        "gp-gpupool-member-agent-join-token"
    );
    assert!(env.iter().any(|e| e["name"] == "GPUPOOL_HUB_CA_FILE"));
    assert_eq!(c["securityContext"]["allowPrivilegeEscalation"], false);
    // The agent's Secret access in its namespace is pinned to its credential.
    let role = find("Role", "gp-gpupool-member-agent");
    let pinned = role["rules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["verbs"].as_array().unwrap().iter().any(|v| v == "get"))
        .unwrap();
    assert_eq!(pinned["resourceNames"][0], "gpupool-hub-credential");
    // Pull join: no hub-access identity for the hub is rendered.
    assert!(
        !docs
            .iter()
            .any(|d| d["metadata"]["name"] == "gp-gpupool-hub-access")
    );

    // Without hub.url the member chart renders no agent; missing required values fail clearly.
    let (ok, out, _) = helm_template(&["--set", "mode=member"]);
    assert!(ok && !out.contains("member-agent"));
    let (ok, _, err) = helm_template(&["--set", "mode=member", "--set", "hub.url=https://h:6443"]);
    assert!(
        !ok && err.contains("memberAgent.memberName is required"),
        "{err}"
    );

    // What it renders is accepted by a real API server.
    let cp = gpupool_e2e::ControlPlane::start("chart-pull")
        .await
        .unwrap();
    let f = cp.dir().join("pull-agent.yaml");
    let (_, rendered, _) = helm_template(&pull_values);
    std::fs::write(&f, rendered).unwrap();
    let kubectl = cp.kubectl();
    kubectl
        .ok(&["create", "namespace", "gpupool-system"])
        .unwrap();
    let f = f.display().to_string();
    tokio::task::spawn_blocking(move || kubectl.ok(&["apply", "--dry-run=server", "-f", &f]))
        .await
        .unwrap()
        .unwrap();
}

fn training_job(name: &str, gpus: i32, selector: Option<(&str, &str)>) -> TrainingJob {
    let mut j: TrainingJob = serde_yaml::from_str(&format!(
        "apiVersion: gpupool.io/v1alpha1\nkind: TrainingJob\nmetadata: {{name: {name}, namespace: default}}\nspec: {{template: {{spec: {{containers: [{{name: trainer, image: ghcr.io/example/trainer:1}}]}}}}, workers: 1, gpusPerWorker: {gpus}, gpu: {{model: H100}}, backoffLimit: 3}}\n"
    ))
    .unwrap();
    if let Some((k, v)) = selector {
        j.spec.cluster_selector = [(k.to_string(), v.to_string())].into();
    }
    j
}

fn is_ready(mc: &MemberCluster, want: bool) -> bool {
    mc.status.as_ref().is_some_and(|s| {
        s.conditions
            .iter()
            .any(|c| c.type_ == "Ready" && (c.status == "True") == want)
    })
}

/// Creates `job` and returns how long it took until its pod existed in the member.
async fn create_to_pod(
    tjs: &Api<TrainingJob>,
    member_pods: &Api<Pod>,
    job: &TrainingJob,
) -> Duration {
    let name = job.name_any();
    let selector = format!("gpupool.io/job-name={name}");
    let t0 = Instant::now();
    tjs.create(&PostParams::default(), job).await.unwrap();
    loop {
        let l = member_pods
            .list(&ListParams::default().labels(&selector))
            .await
            .unwrap();
        if !l.items.is_empty() {
            return t0.elapsed();
        }
        assert!(
            t0.elapsed() < Duration::from_secs(60),
            "no pod for {name} in the member"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

/// A pull member and a push member in one pool, served by the same scheduler and controllers.
/// The hub has no way into the pull member: jobs land there through work objects its agent
/// applies, their status and usage come back through its reports, its loss moves them to the push
/// member, and when its agent returns the stale work is swept.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_scheduler_places_on_pull_members_like_on_push_members() {
    gpupool::telemetry::init_logging();
    let fed = Federation::start(2).await.expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new("gpu-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    fed.add_nodes(1, &[GpuNode::new("gpu-1", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", "gpu-0").await.unwrap();
    let push_member = fed.members[1].cp.client().await.unwrap();
    publish_fixture(&push_member, "dgx-h100", "gpu-1")
        .await
        .unwrap();
    let hub = fed.hub.client().await.unwrap();
    let controller = spawn_join_controller(hub.clone(), false, None);
    let op = Operator::start(hub.clone(), Operator::test_config(4));
    let mcs: Api<MemberCluster> = Api::all(hub.clone());

    // --- The owner joins; a pool admin approves; the member is placeable only then.
    let token = join::token::create(&hub, Duration::from_secs(3600), None)
        .await
        .unwrap();
    let mut agent = Agent::start(&fed, Some(&token.token), MEMBER, "gpupool-system");
    let pending = eventually(60, "pending member not ready", || async {
        Ok(mcs.get_opt(MEMBER).await?.filter(|mc| is_ready(mc, false)))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let ready_cond = pending
        .status
        .unwrap()
        .conditions
        .into_iter()
        .find(|c| c.type_ == "Ready")
        .unwrap();
    assert_eq!(ready_cond.reason, "NotApproved", "{ready_cond:?}");
    gpupool_cli(&fed, &["approve", MEMBER]);
    eventually(90, "pull member Ready with its GPUs", || async {
        Ok(gpupool_e2e::ready_with_gpus(&mcs.get(MEMBER).await?).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // The hub's verdict on the agent's report: it is the cluster the member joined as.
    let reports = Api::<MemberReport>::namespaced(hub.clone(), &names::member_namespace(MEMBER));
    let verdict = eventually(30, "the agent's report accepted", || async {
        Ok(reports.get(MEMBER).await?.status)
    })
    .await
    .unwrap();
    assert_eq!((verdict.accepted, verdict.message), (Some(true), None));
    let view = op.ctx.registry.get(MEMBER).await.unwrap();
    assert!(
        matches!(
            view.client,
            Some(gpupool::federation::MemberLink::Pull { .. })
        ),
        "the hub reaches the pull member only through work objects"
    );
    // Nothing on the hub names the pull member's API server (its agent alone holds the way in).
    let member_url = fed.members[0].cp.server_url();
    for s in Api::<Secret>::all(hub.clone())
        .list(&ListParams::default())
        .await
        .unwrap()
    {
        for v in s.data.unwrap_or_default().values() {
            assert!(
                !String::from_utf8_lossy(&v.0).contains(&member_url),
                "hub Secret {} reaches the pull member",
                s.metadata.name.unwrap_or_default()
            );
        }
    }

    // --- A training gang and an inference replica placed on the pull member (the only one).
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let ijs: Api<InferenceJob> = Api::namespaced(hub.clone(), "default");
    let pull_pods: Api<Pod> = Api::all(member.clone());
    let push_pods: Api<Pod> = Api::all(push_member.clone());
    let mut pull_lat = vec![create_to_pod(&tjs, &pull_pods, &training_job("mover", 2, None)).await];
    let web: InferenceJob = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: InferenceJob\nmetadata: {name: web, namespace: default}\nspec: {template: {spec: {containers: [{name: srv, image: ghcr.io/example/srv:1}]}}, replicas: 1, gpusPerReplica: 1}\n",
    )
    .unwrap();
    ijs.create(&PostParams::default(), &web).await.unwrap();
    let st = eventually(60, "mover Running on the pull member", || async {
        let st = tjs.get("mover").await?.status.unwrap_or_default();
        Ok((st.phase == TrainingPhase::Running).then_some(st))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(st.cluster.as_deref(), Some(MEMBER));
    let pod = &pull_pods
        .list(&ListParams::default().labels("gpupool.io/job-name=mover"))
        .await
        .unwrap()
        .items[0];
    let chosen = &st.workers[0];
    assert_eq!(
        pod.annotations()["gpupool.io/gpu-uuids"],
        chosen.gpu_uuids.join(","),
        "the agent ran the pod on the GPUs the hub chose"
    );
    assert_eq!(
        pod.spec.as_ref().unwrap().node_name.as_deref(),
        Some(chosen.node.as_str())
    );
    assert_eq!(
        pod.labels()["gpupool.io/applied-by"],
        "gpupool-member-agent"
    );
    eventually(60, "web ready on the pull member", || async {
        let st = ijs.get("web").await?.status.unwrap_or_default();
        Ok(
            (st.ready_replicas == 1 && st.placements.iter().all(|p| p.cluster == MEMBER))
                .then_some(()),
        )
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    for i in 0..4 {
        pull_lat.push(
            create_to_pod(
                &tjs,
                &pull_pods,
                &training_job(&format!("lat-pull-{i}"), 1, Some(("tier", "consumer"))),
            )
            .await,
        );
    }

    // --- A push member joins the same pool.
    register_member(&hub, "push-1", &fed.members[1].cp, WALLET, "dc")
        .await
        .unwrap();
    eventually(60, "push member Ready", || async {
        Ok(gpupool_e2e::ready_with_gpus(&mcs.get("push-1").await?).then_some(()))
    })
    .await
    .unwrap();
    let mut push_lat = Vec::new();
    for i in 0..5 {
        push_lat.push(
            create_to_pod(
                &tjs,
                &push_pods,
                &training_job(&format!("lat-push-{i}"), 1, Some(("region", "dc"))),
            )
            .await,
        );
    }
    println!(
        "TrainingJob create → pod exists in the member, same scheduler: pull median {:?} (max {:?}), push median {:?} (max {:?})",
        median(pull_lat.clone()),
        pull_lat.iter().max().unwrap(),
        median(push_lat.clone()),
        push_lat.iter().max().unwrap()
    );

    // --- Usage of the pull member's pods, metered from what its agent reports.
    let cfg = gpupool::metering::MeterConfig::default();
    let record = eventually(60, "usage recorded for the pull member", || async {
        let members = gpupool::metering::runner::member_refs(&op.ctx.metering()).await;
        let report = gpupool::metering::meter_once(
            &hub,
            &members,
            k8s_openapi::jiff::Timestamp::now(),
            &cfg,
        )
        .await?;
        let alerts: Vec<_> = report
            .alerts
            .iter()
            .filter(|a| a.cluster == MEMBER)
            .collect();
        anyhow::ensure!(
            report.member_errors.is_empty() && alerts.is_empty(),
            "{:?} {alerts:?}",
            report.member_errors
        );
        let recs = Api::<UsageRecord>::all(hub.clone())
            .list(&ListParams::default())
            .await?;
        Ok(recs.items.into_iter().find(|r| {
            r.spec.cluster == MEMBER && r.spec.job_name == "mover" && r.spec.gpu_seconds > 0
        }))
    })
    .await
    .unwrap();
    assert_eq!(
        record.spec.cluster_uid,
        join::member_identity(&member).await.unwrap()
    );
    assert_eq!(record.spec.owner_wallet, WALLET);

    // --- The agent dies: the member is lost after the grace period and its jobs move.
    let _ = agent.child.kill();
    let _ = agent.child.wait();
    let lost_at = Instant::now();
    eventually(60, "pull member lost", || async {
        Ok(is_ready(&mcs.get(MEMBER).await?, false).then_some(()))
    })
    .await
    .unwrap();
    println!("agent killed → member not Ready: {:?}", lost_at.elapsed());
    let st = eventually(90, "mover restarted on the push member", || async {
        let st = tjs.get("mover").await?.status.unwrap_or_default();
        Ok(
            (st.phase == TrainingPhase::Running && st.cluster.as_deref() == Some("push-1"))
                .then_some(st),
        )
    })
    .await
    .unwrap();
    assert_eq!(st.restarts, 1);
    eventually(90, "web moved to the push member", || async {
        let st = ijs.get("web").await?.status.unwrap_or_default();
        Ok(
            (st.ready_replicas == 1 && st.placements.iter().all(|p| p.cluster == "push-1"))
                .then_some(()),
        )
    })
    .await
    .unwrap();
    let stale = |job: &'static str| {
        let pull_pods = pull_pods.clone();
        async move {
            pull_pods
                .list(&ListParams::default().labels(&format!("gpupool.io/job-name={job}")))
                .await
                .unwrap()
                .items
                .len()
        }
    };
    assert_eq!(
        stale("mover").await,
        1,
        "nothing reached the member while its agent was away"
    );

    // --- A report naming another cluster (newer than the agent's last) is refused, and said so.
    let mut forged = reports.get(MEMBER).await.unwrap();
    forged.metadata = kube::api::ObjectMeta {
        name: Some("forged".into()),
        namespace: Some(names::member_namespace(MEMBER)),
        ..Default::default()
    };
    forged.status = None;
    forged.spec.cluster_id = "another-cluster".into();
    forged.spec.report_time =
        k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(k8s_openapi::jiff::Timestamp::now());
    reports
        .create(&PostParams::default(), &forged)
        .await
        .unwrap();
    let refused = eventually(30, "the forged report refused", || async {
        Ok(reports
            .get("forged")
            .await?
            .status
            .filter(|s| s.accepted == Some(false)))
    })
    .await
    .unwrap();
    let msg = refused.message.unwrap_or_default();
    assert!(
        msg.contains("another-cluster")
            && msg.contains(&join::member_identity(&member).await.unwrap()),
        "{msg}"
    );
    reports
        .delete("forged", &DeleteParams::default())
        .await
        .unwrap();

    // --- The agent comes back (with the credential it keeps in the member): stale work is swept.
    let agent = Agent::start(&fed, None, MEMBER, "gpupool-system");
    eventually(60, "pull member Ready again", || async {
        Ok(is_ready(&mcs.get(MEMBER).await?, true).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    eventually(90, "stale pods gone from the pull member", || async {
        Ok((stale("mover").await == 0 && stale("web").await == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let works = Api::<MemberWork>::namespaced(hub.clone(), &names::member_namespace(MEMBER));
    assert!(works.get_opt("tj-default-mover").await.unwrap().is_none());
    assert!(works.get_opt("ij-default-web").await.unwrap().is_none());
    // The pinned jobs are placed there again.
    eventually(
        90,
        "pinned jobs Running on the pull member again",
        || async {
            let mut all = true;
            for i in 0..4 {
                let st = tjs
                    .get(&format!("lat-pull-{i}"))
                    .await?
                    .status
                    .unwrap_or_default();
                all &= st.phase == TrainingPhase::Running && st.cluster.as_deref() == Some(MEMBER);
            }
            Ok(all.then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| {
        let kubectl = fed.hub.kubectl();
        panic!(
            "{e}\n{}\n{}\n{}",
            kubectl
                .ok(&[
                    "get",
                    "trainingjobs,memberclusters,memberworks",
                    "-A",
                    "-o",
                    "yaml"
                ])
                .unwrap_or_default(),
            kubectl.ok(&["get", "events", "-A"]).unwrap_or_default(),
            agent.log()
        )
    });

    // --- Removing the member withdraws its work objects; its agent deletes their pods.
    mcs.delete(MEMBER, &DeleteParams::default()).await.unwrap();
    eventually(60, "pull member drained", || async {
        let left = works.list(&ListParams::default()).await?.items.len();
        let pods = pull_pods
            .list(&ListParams::default().labels("app.kubernetes.io/managed-by=gpupool"))
            .await?
            .items
            .len();
        Ok((left == 0 && pods == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    controller.abort();
}

/// A pull member whose GPUs are bound with DRA: its agent finds NVIDIA's DeviceClass, reports
/// its nodes by their ResourceSlice devices (they advertise no `nvidia.com/gpu`) and the binding
/// mode; the hub then sends each pod a ResourceClaim naming its GPUs, which the agent applies and
/// the member's own kube-scheduler allocates to exactly those devices.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_dra_pull_member_binds_the_hubs_exact_gpus_through_resource_claims() {
    use gpupool::api::BindingMode;
    use k8s_openapi::api::resource::v1::ResourceClaim;
    gpupool::telemetry::init_logging();
    let fed = Federation::start_with(&[gpupool_e2e::MemberKind::Dra])
        .await
        .expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new("dgx-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", "dgx-0").await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let controller = spawn_join_controller(hub.clone(), true, None);
    let _op = Operator::start(hub.clone(), Operator::test_config(4));
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    let token = join::token::create(&hub, Duration::from_secs(3600), None)
        .await
        .unwrap();
    let agent = Agent::start(&fed, Some(&token.token), MEMBER, "gpupool-system");
    let st = eventually(90, "DRA pull member Ready with its 8 GPUs", || async {
        let mc = mcs.get_opt(MEMBER).await?;
        Ok(mc.and_then(|mc| mc.status).filter(|st| {
            st.binding_mode == Some(BindingMode::Dra)
                && st.capacity.gpus_total == 8
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    assert_eq!(st.capacity.gpus_free, 8);
    let reports = Api::<MemberReport>::namespaced(hub.clone(), &names::member_namespace(MEMBER));
    let report = reports.get(MEMBER).await.unwrap();
    assert_eq!(report.spec.binding_mode, Some(BindingMode::Dra));
    assert_eq!(report.spec.nodes[0].gpus, 8, "the node's slice devices");

    // A 4-GPU worker: a pod with a claim, no `nvidia.com/gpu`, allocated to the hub's GPUs.
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(&PostParams::default(), &training_job("exact", 4, None))
        .await
        .unwrap();
    let job = gpupool_e2e::wait_training_phase(&tjs, "exact", TrainingPhase::Running, 90)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let worker = job.status.unwrap().workers[0].clone();
    let pods: Api<Pod> =
        Api::namespaced(member.clone(), &gpupool::tenant::namespace_name("default"));
    let pod = &pods
        .list(&ListParams::default().labels("gpupool.io/job-name=exact"))
        .await
        .unwrap()
        .items[0];
    assert_eq!(pod.annotations()["gpupool.io/gpu-binding"], "DRA");
    let spec = pod.spec.as_ref().unwrap();
    assert_eq!(spec.node_name.as_deref(), Some(worker.node.as_str()));
    assert!(
        spec.containers[0]
            .resources
            .as_ref()
            .and_then(|r| r.limits.as_ref())
            .is_none_or(|l| !l.contains_key("nvidia.com/gpu")),
        "{spec:?}"
    );
    let claims: Api<ResourceClaim> =
        Api::namespaced(member.clone(), &gpupool::tenant::namespace_name("default"));
    let claim_name = format!("{}-gpus", pod.name_any());
    let claim = claims.get(&claim_name).await.unwrap();
    assert_eq!(
        claim.labels()["gpupool.io/applied-by"],
        "gpupool-member-agent"
    );
    let (pool, allocated) = gpupool_e2e::allocated_uuids(&claim);
    assert_eq!(pool, "dgx-0");
    let chosen: std::collections::BTreeSet<String> = worker.gpu_uuids.iter().cloned().collect();
    assert_eq!(
        allocated, chosen,
        "the member allocated other GPUs than the hub chose"
    );
    assert_eq!(chosen.len(), 4);

    // The job deleted on the hub: its pod and claim leave the member.
    tjs.delete("exact", &DeleteParams::default()).await.unwrap();
    eventually(60, "pod and claim gone from the member", || async {
        let gone = pods.get_opt(&pod.name_any()).await?.is_none()
            && claims.get_opt(&claim_name).await?.is_none();
        Ok(gone.then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));

    // The owner's own workload takes a GPU through a claim of its own: the agent reports it,
    // and the hub counts that GPU busy (as it does for a push member, whose claims it watches).
    let outside: ResourceClaim = serde_json::from_value(serde_json::json!({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "owners", "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "g", "exactly": {"deviceClassName": "gpu.nvidia.com"}}]}},
    }))
    .unwrap();
    let owner_claims: Api<ResourceClaim> = Api::namespaced(member.clone(), "default");
    owner_claims
        .create(&PostParams::default(), &outside)
        .await
        .unwrap();
    let owner_pod: Pod = serde_json::from_value(serde_json::json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "owners", "namespace": "default"},
        "spec": {
            "containers": [{"name": "c", "image": "busybox", "resources": {"claims": [{"name": "g"}]}}],
            "resourceClaims": [{"name": "g", "resourceClaimName": "owners"}],
            "tolerations": [{"key": "nvidia.com/gpu", "operator": "Exists", "effect": "NoSchedule"}],
        },
    }))
    .unwrap();
    Api::<Pod>::namespaced(member.clone(), "default")
        .create(&PostParams::default(), &owner_pod)
        .await
        .unwrap();
    let held = eventually(60, "the owner's claim allocated", || async {
        let (_, u) = gpupool_e2e::allocated_uuids(&owner_claims.get("owners").await?);
        Ok((u.len() == 1).then_some(u))
    })
    .await
    .unwrap();
    let held: Vec<String> = held.into_iter().collect();
    eventually(
        60,
        "the report names it and the hub counts 7 GPUs free",
        || async {
            let r = reports.get(MEMBER).await?;
            let named = r.spec.nodes[0].outside_claimed_gpu_uuids == held;
            let st = mcs.get(MEMBER).await?.status.unwrap_or_default();
            Ok((named && st.capacity.gpus_free == 7).then_some(()))
        },
    )
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // An 8-GPU worker no longer fits; one of 7 does, never on the owner's GPU.
    tjs.create(&PostParams::default(), &training_job("seven", 7, None))
        .await
        .unwrap();
    let job = gpupool_e2e::wait_training_phase(&tjs, "seven", TrainingPhase::Running, 90)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let uuids = &job.status.unwrap().workers[0].gpu_uuids;
    assert!(!uuids.contains(&held[0]), "{uuids:?} includes {held:?}");
    controller.abort();
}
