//! The tenant sandbox on real API servers: a hub user's pods run in the member namespace
//! gpupool owns for the hub namespace (`gpupool-<ns>`, Pod Security enforced), with copies of the
//! hub namespace's Secrets and ConfigMaps the template references and never the member owner's
//! of the same name, on a push and on a pull member; a member namespace of that name the owner
//! made is never used; and the member chart's admission policy keeps the hub's identity (push)
//! and the member agent's (pull) inside gpupool's tenant namespaces, without host access.

use anyhow::{Context, Result, ensure};
use gpupool::api::{MemberCluster, TrainingJob, TrainingPhase};
use gpupool::join::{self, controller::JoinConfig};
use gpupool::tenant;
use gpupool_e2e::{
    ControlPlane, Federation, GpuNode, Kubectl, Operator, Tools, eventually, operator_bin,
    publish_fixture, register_member, repo_root,
};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::ResourceExt;
use kube::api::{Api, ListParams, PostParams};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const WALLET: &str = "7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU";
const NODE: &str = "h100-0";

fn secret(ns: &str, name: &str, value: &str) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some(ns.into()),
            ..Default::default()
        },
        string_data: Some(BTreeMap::from([("password".into(), value.into())])),
        ..Default::default()
    }
}

fn namespace(name: &str) -> Namespace {
    Namespace {
        metadata: ObjectMeta {
            name: Some(name.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// A one-worker job whose template takes a password from Secret `owner-db-password` and mounts
/// ConfigMap `settings`.
fn leaky_job(ns: &str, name: &str) -> TrainingJob {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1", "kind": "TrainingJob",
        "metadata": {"name": name, "namespace": ns},
        "spec": {
            "workers": 1, "gpusPerWorker": 1, "nvlink": "none",
            "template": {"spec": {
                "containers": [{"name": "main", "image": "ghcr.io/example/train:1",
                    "env": [{"name": "DB_PASSWORD", "valueFrom": {"secretKeyRef": {"name": "owner-db-password", "key": "password"}}}],
                    "volumeMounts": [{"name": "settings", "mountPath": "/etc/settings"}]}],
                "volumes": [{"name": "settings", "configMap": {"name": "settings"}}],
            }},
        }
    }))
    .unwrap()
}

/// The member owner's Secret `default/owner-db-password`; the hub user's of the same name and a
/// ConfigMap in hub namespace `default`.
async fn owner_and_hub_config(member: &kube::Client, hub: &kube::Client) {
    Api::<Secret>::namespaced(member.clone(), "default")
        .create(
            &PostParams::default(),
            &secret("default", "owner-db-password", "owner"),
        )
        .await
        .unwrap();
    Api::<Secret>::namespaced(hub.clone(), "default")
        .create(
            &PostParams::default(),
            &secret("default", "owner-db-password", "hub"),
        )
        .await
        .unwrap();
    let cm: ConfigMap = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "settings", "namespace": "default"}, "data": {"lr": "0.1"}
    }))
    .unwrap();
    Api::<ConfigMap>::namespaced(hub.clone(), "default")
        .create(&PostParams::default(), &cm)
        .await
        .unwrap();
}

fn password(s: &Secret) -> String {
    let b = &s.data.as_ref().unwrap()["password"].0;
    String::from_utf8(b.clone()).unwrap()
}

/// The job's pod runs in `gpupool-default` (labelled, Pod Security enforced) with copies of the
/// hub's Secret and ConfigMap; the owner's Secret and namespace are untouched.
async fn check_sandboxed(member: &kube::Client, job: &str, what: &str) {
    let tenant_ns = tenant::namespace_name("default");
    let ns = Api::<Namespace>::all(member.clone())
        .get(&tenant_ns)
        .await
        .unwrap();
    let l = ns.labels();
    assert_eq!(l["gpupool.io/tenant"], "default", "{what}: {l:?}");
    assert_eq!(
        l["pod-security.kubernetes.io/enforce"], "baseline",
        "{what}: {l:?}"
    );
    let lp = ListParams::default().labels(&format!("gpupool.io/job-name={job}"));
    let pods = Api::<Pod>::namespaced(member.clone(), &tenant_ns)
        .list(&lp)
        .await
        .unwrap()
        .items;
    assert_eq!(pods.len(), 1, "{what}: the worker in {tenant_ns}");
    let in_default = Api::<Pod>::namespaced(member.clone(), "default")
        .list(&lp)
        .await
        .unwrap()
        .items;
    assert!(
        in_default.is_empty(),
        "{what}: a pod in the owner's default"
    );
    let spec = pods[0].spec.as_ref().unwrap();
    assert_eq!(spec.automount_service_account_token, Some(false));
    let copy = eventually(30, "the Secret copy", || async {
        Ok(Api::<Secret>::namespaced(member.clone(), &tenant_ns)
            .get_opt("owner-db-password")
            .await?)
    })
    .await
    .unwrap();
    assert_eq!(password(&copy), "hub", "{what}: the hub user's own Secret");
    let cm = Api::<ConfigMap>::namespaced(member.clone(), &tenant_ns)
        .get("settings")
        .await
        .unwrap();
    assert_eq!(cm.data.unwrap()["lr"], "0.1");
    let owners = Api::<Secret>::namespaced(member.clone(), "default")
        .get("owner-db-password")
        .await
        .unwrap();
    assert_eq!(password(&owners), "owner", "{what}: the owner's Secret");
    // The copy is owned by the pod that uses it (push: the operator links them; pull: the
    // agent), so the member's garbage collector deletes it with the job's last pod.
    let owned = eventually(30, "the copy owned by the pod", || async {
        let c = Api::<Secret>::namespaced(member.clone(), &tenant_ns)
            .get("owner-db-password")
            .await?;
        let refs = c.metadata.owner_references.unwrap_or_default();
        Ok(refs
            .iter()
            .any(|r| Some(&r.uid) == pods[0].metadata.uid.as_ref())
            .then_some(()))
    })
    .await;
    assert!(owned.is_ok(), "{what}: {owned:?}");
}

/// Once the job is gone from the hub, no copy of the hub's Secret stays in the member.
async fn check_copies_leave(member: &kube::Client, what: &str) {
    let tenant_ns = tenant::namespace_name("default");
    let gone = eventually(60, "the Secret copy deleted with the job's pod", || async {
        let left = Api::<Secret>::namespaced(member.clone(), &tenant_ns)
            .get_opt("owner-db-password")
            .await?;
        Ok(left.is_none().then_some(()))
    })
    .await;
    assert!(gone.is_ok(), "{what}: {gone:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn push_member_pods_run_in_the_tenant_namespace_with_the_hubs_config_only() {
    gpupool::telemetry::init_logging();
    let fed = Federation::start(1).await.expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new(NODE, 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", NODE).await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    register_member(&hub, "member-1", &fed.members[0].cp, WALLET, "r1")
        .await
        .unwrap();
    let _op = Operator::start(hub.clone(), Operator::test_config(30));
    gpupool_e2e::wait_member_ready(&hub, "member-1", 60)
        .await
        .unwrap();
    owner_and_hub_config(&member, &hub).await;

    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(&PostParams::default(), &leaky_job("default", "leaky"))
        .await
        .unwrap();
    gpupool_e2e::wait_training_phase(&tjs, "leaky", TrainingPhase::Running, 60)
        .await
        .unwrap();
    check_sandboxed(&member, "leaky", "push").await;
    tjs.delete("leaky", &Default::default()).await.unwrap();
    check_copies_leave(&member, "push").await;

    // A member namespace of the tenant's name that the owner made is never used.
    let owners_ns = tenant::namespace_name("owned");
    Api::<Namespace>::all(member.clone())
        .create(&PostParams::default(), &namespace(&owners_ns))
        .await
        .unwrap();
    Api::<Namespace>::all(hub.clone())
        .create(&PostParams::default(), &namespace("owned"))
        .await
        .unwrap();
    let owned: Api<TrainingJob> = Api::namespaced(hub.clone(), "owned");
    let mut job = leaky_job("owned", "squatter");
    job.spec.template.spec.as_mut().unwrap().volumes = None;
    job.spec.template.spec.as_mut().unwrap().containers[0] =
        serde_json::from_value(serde_json::json!({"name": "main", "image": "t"})).unwrap();
    owned.create(&PostParams::default(), &job).await.unwrap();
    eventually(30, "the squatter placed", || async {
        let st = owned.get("squatter").await?.status.unwrap_or_default();
        Ok(st.cluster.map(|_| ()))
    })
    .await
    .unwrap();
    tokio::time::sleep(Duration::from_secs(8)).await;
    let pods = Api::<Pod>::all(member.clone())
        .list(&ListParams::default().labels("gpupool.io/job-name=squatter"))
        .await
        .unwrap()
        .items;
    assert!(
        pods.is_empty(),
        "a pod in the owner's namespace {owners_ns}: {:?}",
        pods.iter().map(|p| p.namespace()).collect::<Vec<_>>()
    );
    let st = owned.get("squatter").await.unwrap().status.unwrap();
    assert_ne!(st.phase, TrainingPhase::Running);
}

/// The agent process; killed on drop.
struct Agent {
    child: Child,
    log: PathBuf,
}

impl Agent {
    fn start(fed: &Federation, token: &str, name: &str) -> Agent {
        let m = &fed.members[0].cp;
        let log = m.dir().join(format!("agent-{name}.log"));
        let f = std::fs::File::create(&log).unwrap();
        let child = Command::new(operator_bin("gpupool"))
            .arg("member-agent")
            .args(["--hub-url", &fed.hub.server_url()])
            .arg("--hub-ca-file")
            .arg(fed.hub.dir().join("pki/ca.crt"))
            .args(["--member-name", name, "--owner-wallet", WALLET])
            .args(["--namespace", "gpupool-system", "--identity", "agent-0"])
            .args(["--heartbeat-seconds", "1", "--report-seconds", "1"])
            .env("KUBECONFIG", m.kubeconfig_path())
            .env("RUST_LOG", "info,kube=warn")
            .env("GPUPOOL_JOIN_TOKEN", token)
            .stdout(Stdio::from(f.try_clone().unwrap()))
            .stderr(Stdio::from(f))
            .spawn()
            .unwrap();
        Agent { child, log }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }
}

impl Drop for Agent {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A hub and one member with an 8-GPU node, the operator and the join controller running, and
/// the member's agent joining as `pull-1` (approved by the join controller when `auto_approve`).
async fn pull_pool(
    auto_approve: bool,
) -> (
    Federation,
    Operator,
    Agent,
    tokio::task::JoinHandle<anyhow::Result<()>>,
) {
    gpupool::telemetry::init_logging();
    let fed = Federation::start(1).await.expect("federation starts");
    fed.add_nodes(0, &[GpuNode::new(NODE, 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    let member = fed.members[0].cp.client().await.unwrap();
    publish_fixture(&member, "dgx-h100", NODE).await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let controller = tokio::spawn(join::controller::run(
        hub.clone(),
        JoinConfig {
            auto_approve,
            resync: Duration::from_secs(1),
            ..Default::default()
        },
    ));
    let op = Operator::start(hub.clone(), Operator::test_config(4));
    let token = join::token::create(&hub, Duration::from_secs(3600), None)
        .await
        .unwrap();
    let agent = Agent::start(&fed, &token.token, "pull-1");
    (fed, op, agent, controller)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pull_member_pods_run_in_the_tenant_namespace_with_the_hubs_config_only() {
    let (fed, _op, agent, controller) = pull_pool(true).await;
    let member = fed.members[0].cp.client().await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    wait_ready(&mcs, &agent).await;
    owner_and_hub_config(&member, &hub).await;
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    tjs.create(&PostParams::default(), &leaky_job("default", "leaky"))
        .await
        .unwrap();
    gpupool_e2e::wait_training_phase(&tjs, "leaky", TrainingPhase::Running, 90)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    check_sandboxed(&member, "leaky", "pull").await;
    tjs.delete("leaky", &Default::default()).await.unwrap();
    check_copies_leave(&member, "pull").await;
    controller.abort();
}

async fn wait_ready(mcs: &Api<MemberCluster>, agent: &Agent) {
    eventually(90, "pull member Ready", || async {
        let mc = mcs.get_opt("pull-1").await?;
        Ok(mc.and_then(|mc| mc.status).filter(|st| {
            st.capacity.gpus_total == 8
                && st
                    .conditions
                    .iter()
                    .any(|c| c.type_ == "Ready" && c.status == "True")
        }))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_pull_member_is_drained() {
    let (fed, _op, agent, controller) = pull_pool(true).await;
    let member = fed.members[0].cp.client().await.unwrap();
    let hub = fed.hub.client().await.unwrap();
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    wait_ready(&mcs, &agent).await;
    let tjs: Api<TrainingJob> = Api::namespaced(hub.clone(), "default");
    let mut gang = leaky_job("default", "gang");
    gang.spec.workers = 3;
    gang.spec.template.spec.as_mut().unwrap().volumes = None;
    gang.spec.template.spec.as_mut().unwrap().containers[0] =
        serde_json::from_value(serde_json::json!({"name": "main", "image": "t"})).unwrap();
    tjs.create(&PostParams::default(), &gang).await.unwrap();
    gpupool_e2e::wait_training_phase(&tjs, "gang", TrainingPhase::Running, 90)
        .await
        .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    let pods: Api<Pod> = Api::namespaced(member.clone(), &tenant::namespace_name("default"));
    let lp = ListParams::default().labels("gpupool.io/job-name=gang");
    assert_eq!(pods.list(&lp).await.unwrap().items.len(), 3);
    mcs.delete("pull-1", &Default::default()).await.unwrap();
    eventually(60, "the member removed and its 3 pods gone", || async {
        let gone = mcs.get_opt("pull-1").await?.is_none();
        let left = pods.list(&lp).await?.items.len();
        Ok((gone && left == 0).then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    controller.abort();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn deleting_a_pending_pull_member_completes_and_it_stays_deleted() {
    let (fed, _op, agent, controller) = pull_pool(false).await;
    let hub = fed.hub.client().await.unwrap();
    let mcs: Api<MemberCluster> = Api::all(hub.clone());
    eventually(60, "pull-1 pending", || async {
        Ok(mcs.get_opt("pull-1").await?.map(|_| ()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    mcs.delete("pull-1", &Default::default()).await.unwrap();
    eventually(30, "the pending member deleted", || async {
        Ok(mcs.get_opt("pull-1").await?.is_none().then_some(()))
    })
    .await
    .unwrap_or_else(|e| panic!("{e}\n{}", agent.log()));
    // The join controller resyncs every second: the request it answered is void now, and the
    // member is not created again from it.
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert!(mcs.get_opt("pull-1").await.unwrap().is_none(), "re-created");
    drop(fed);
    controller.abort();
}

const RELEASE_NS: &str = "gpupool-system";

/// The member chart's hub access, member agent RBAC and tenant policy, as `helm template`
/// renders them for a member that allows both push and pull.
fn render_member_access() -> String {
    let tools = Tools::get().expect("harness tools (helm) are available");
    let home = tempfile::tempdir().unwrap();
    let out = Command::new(&tools.helm)
        .args(["template", "gp"])
        .args(["--kube-version", gpupool_e2e::HELM_KUBE_VERSION])
        .arg(repo_root().join("charts/gpupool"))
        .args(["--namespace", RELEASE_NS, "--set", "mode=member"])
        .args(["--set", "hub.url=https://hub.example.com:6443"])
        .args([
            "--set",
            "hub.joinToken=t",
            "--set",
            "memberAgent.memberName=m",
        ])
        .args(["--set", &format!("memberAgent.ownerWallet={WALLET}")])
        .args(["--show-only", "templates/member-hub-access.yaml"])
        .args(["--show-only", "templates/member-tenant-policy.yaml"])
        .args(["--show-only", "templates/member-agent.yaml"])
        .env("HELM_CONFIG_HOME", home.path().join("config"))
        .env("HELM_CACHE_HOME", home.path().join("cache"))
        .env("HELM_DATA_HOME", home.path().join("data"))
        .env_remove("KUBECONFIG")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// kubectl as ServiceAccount `sa` of the release namespace.
fn kubectl_as(cp: &ControlPlane, dir: &Path, sa: &str) -> Result<Kubectl> {
    let token = cp
        .kubectl()
        .ok(&["create", "token", sa, "-n", RELEASE_NS])?;
    let path = dir.join(format!("{sa}.kubeconfig"));
    std::fs::copy(cp.kubeconfig_path(), &path)?;
    let k = Kubectl::new(path);
    k.ok(&[
        "config",
        "set-credentials",
        sa,
        &format!("--token={}", token.trim()),
    ])?;
    k.ok(&[
        "config",
        "set-context",
        "--current",
        &format!("--user={sa}"),
    ])?;
    Ok(k)
}

/// Applies `manifest` (JSON) as `k`, server-side dry run: Ok(()) or the refusal.
fn try_apply(k: &Kubectl, dir: &Path, manifest: serde_json::Value) -> Result<(), String> {
    let f = dir.join("object.json");
    std::fs::write(&f, manifest.to_string()).unwrap();
    let out = k
        .run(&["create", "--dry-run=server", "-f", f.to_str().unwrap()])
        .unwrap();
    if out.success { Ok(()) } else { Err(out.stderr) }
}

fn pod_in(ns: &str, spec: serde_json::Value) -> serde_json::Value {
    let mut spec = spec;
    if spec["containers"].as_array().is_none() {
        spec["containers"] = serde_json::json!([{"name": "c", "image": "busybox"}]);
    }
    serde_json::json!({"apiVersion": "v1", "kind": "Pod",
        "metadata": {"name": "p", "namespace": ns}, "spec": spec})
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_policy_keeps_gpupool_identities_in_tenant_namespaces() -> Result<()> {
    let cp = ControlPlane::start("tenant-policy")
        .await
        .context("control plane starts")?;
    let dir = tempfile::tempdir()?;
    let admin = cp.kubectl();
    admin.ok(&["create", "namespace", RELEASE_NS])?;
    let f = dir.path().join("access.yaml");
    std::fs::write(&f, render_member_access())?;
    admin.ok(&["apply", "--server-side", "-f", f.to_str().unwrap()])?;
    let client = cp.client().await?;
    let tenant_ns = tenant::namespace_name("ml");
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &tenant::namespace_object("ml"))
        .await?;
    // A tenant namespace without Pod Security (as an admin could leave one): the policy alone
    // refuses the host access Pod Security would refuse first in `gpupool-ml`.
    let mut bare = tenant::namespace_object("bare");
    bare.metadata
        .labels
        .as_mut()
        .unwrap()
        .retain(|k, _| !k.starts_with("pod-security"));
    Api::<Namespace>::all(client.clone())
        .create(&PostParams::default(), &bare)
        .await?;
    let bare_ns = tenant::namespace_name("bare");
    for sa in ["gp-gpupool-hub", "gp-gpupool-member-agent"] {
        let k = kubectl_as(&cp, dir.path(), sa)?;
        // The policy takes effect shortly after it is created.
        let owners = pod_in("default", serde_json::json!({}));
        let refused = eventually(30, "the tenant policy in force", || async {
            Ok(try_apply(&k, dir.path(), owners.clone()).err())
        })
        .await?;
        ensure!(
            refused.contains("gpupool may write only into its tenant namespaces"),
            "{sa}: {refused}"
        );
        // A plain pod in the tenant namespace is fine.
        try_apply(&k, dir.path(), pod_in(&tenant_ns, serde_json::json!({})))
            .map_err(|e| anyhow::anyhow!("{sa}: a plain pod refused: {e}"))?;
        for (spec, why) in [
            (
                serde_json::json!({"hostNetwork": true}),
                "no host namespaces",
            ),
            (serde_json::json!({"hostPID": true}), "no host namespaces"),
            (
                serde_json::json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                "no hostPath volumes",
            ),
            (
                serde_json::json!({"serviceAccountName": "admin"}),
                "default ServiceAccount",
            ),
            (
                serde_json::json!({"containers": [{"name": "c", "image": "busybox",
                    "securityContext": {"capabilities": {"add": ["SYS_ADMIN"]}}}]}),
                "add no capabilities",
            ),
            (
                serde_json::json!({"containers": [{"name": "c", "image": "busybox",
                    "ports": [{"containerPort": 80, "hostPort": 80}]}]}),
                "no host ports",
            ),
        ] {
            let e = try_apply(&k, dir.path(), pod_in(&bare_ns, spec.clone()))
                .err()
                .with_context(|| format!("{sa}: {spec} accepted"))?;
            ensure!(e.contains(why), "{sa}: {spec}: {e}");
        }
        // Namespaces: only tenant namespaces, with Pod Security enforced.
        let e = try_apply(
            &k,
            dir.path(),
            serde_json::json!({"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": "gpupool-x"}}),
        )
        .err()
        .context("an unlabelled namespace accepted")?;
        ensure!(e.contains("may create only tenant namespaces"), "{sa}: {e}");
        let ns = serde_json::to_value(tenant::namespace_object("other"))?;
        let mut ns = ns;
        ns["apiVersion"] = "v1".into();
        ns["kind"] = "Namespace".into();
        try_apply(&k, dir.path(), ns).map_err(|e| anyhow::anyhow!("{sa}: {e}"))?;
        // Secret copies: into the tenant namespace only; nobody's Secrets can be read.
        let copy = |ns: &str| {
            serde_json::json!({"apiVersion": "v1", "kind": "Secret",
                "metadata": {"name": "creds", "namespace": ns}, "stringData": {"k": "v"}})
        };
        try_apply(&k, dir.path(), copy(&tenant_ns)).map_err(|e| anyhow::anyhow!("{sa}: {e}"))?;
        let e = try_apply(&k, dir.path(), copy("kube-system"))
            .err()
            .context("a Secret in kube-system accepted")?;
        ensure!(e.contains("only into its tenant namespaces"), "{sa}: {e}");
        let read = k.run(&["get", "secrets", "-n", "kube-system"])?;
        ensure!(
            !read.success && read.stderr.contains("forbidden"),
            "{sa} reads Secrets: {}",
            read.stderr
        );
    }
    Ok(())
}
