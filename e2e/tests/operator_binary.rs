//! The shipped `gpupool run` binary against a real hub API server: two replicas with
//! `--leader-elect`, exactly one holds the Lease; both serve /healthz, /readyz and Prometheus
//! /metrics; the leader reconciles a MemberCluster whose Secret is missing and says why.

use gpupool::api::MemberCluster;
use gpupool_e2e::{ControlPlane, eventually, operator_bin};
use kube::api::{Api, Patch, PatchParams};
use std::process::{Child, Command};

/// Both replicas' output, for failure messages.
fn replica_logs(cp: &ControlPlane) -> String {
    (0..2)
        .map(|i| {
            std::fs::read_to_string(cp.dir().join(format!("replica-{i}.log"))).unwrap_or_default()
        })
        .collect::<Vec<_>>()
        .join("\n---\n")
}

struct Proc(Child);
impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_replicas_one_leader_metrics_and_member_status() {
    let cp = ControlPlane::start("opbin").await.unwrap();
    gpupool_e2e::install_crds(&cp).await.unwrap();
    let bin = operator_bin("gpupool");
    // Both ports chosen while both listeners are open: two bind-and-close calls may be handed
    // the same port, and the second replica then serves no metrics.
    let listeners: Vec<std::net::TcpListener> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let ports: Vec<u16> = listeners
        .iter()
        .map(|l| l.local_addr().unwrap().port())
        .collect();
    drop(listeners);
    let procs: Vec<Proc> = ports
        .iter()
        .enumerate()
        .map(|(i, p)| {
            // Logs go to stdout, errors to stderr: one file per replica for both.
            let log = std::fs::File::create(cp.dir().join(format!("replica-{i}.log"))).unwrap();
            Proc(
                Command::new(&bin)
                    .args([
                        "run",
                        "--leader-elect",
                        "--namespace",
                        "default",
                        "--metrics-addr",
                        &format!("127.0.0.1:{p}"),
                    ])
                    .env("KUBECONFIG", cp.kubeconfig_path())
                    .env("POD_NAME", format!("replica-{i}"))
                    .stdout(log.try_clone().unwrap())
                    .stderr(log)
                    .spawn()
                    .unwrap(),
            )
        })
        .collect();
    // Both replicas become ready (the standby too) and expose metrics.
    for p in &ports {
        eventually(30, "readyz", || async {
            Ok((gpupool_e2e::http::get(*p, "/readyz").map(|r| r.0) == Some(200)).then_some(()))
        })
        .await
        .unwrap();
        let h = gpupool_e2e::http::get(*p, "/healthz");
        if h.as_ref().map(|r| r.0) != Some(200) {
            panic!("/healthz on {p}: {h:?}; logs:\n{}", replica_logs(&cp));
        }
    }
    let holder = eventually(30, "a lease holder", || async {
        let h = cp
            .kubectl()
            .lease_holder("gpupool-operator")
            .unwrap_or_default();
        Ok((!h.is_empty()).then_some(h))
    })
    .await
    .unwrap();
    assert!(holder == "replica-0" || holder == "replica-1", "{holder}");

    // The leader reconciles: a member whose kubeconfig Secret is missing is NotReady, with why.
    let hub = cp.client().await.unwrap();
    let mc: MemberCluster = serde_yaml::from_str(
        "apiVersion: gpupool.io/v1alpha1\nkind: MemberCluster\nmetadata: {name: lonely}\nspec: {kubeconfigSecretRef: {name: nope}, ownerWallet: 7xKXtg2CW87d97TXJSDpbD5jBkheTqA83TZRuJosgAsU}\n",
    )
    .unwrap();
    let api: Api<MemberCluster> = Api::all(hub);
    api.patch("lonely", &PatchParams::apply("test"), &Patch::Apply(&mc))
        .await
        .unwrap();
    let cond = eventually(30, "Reachable=False with a reason", || async {
        let st = api.get("lonely").await?.status.unwrap_or_default();
        Ok(st
            .conditions
            .into_iter()
            .find(|c| c.type_ == "Reachable" && c.status == "False"))
    })
    .await
    .unwrap();
    assert_eq!(cond.reason, "KubeconfigUnavailable");
    assert!(
        cond.message.contains("default/nope not found"),
        "{}",
        cond.message
    );

    // Only the leader reconciled.
    let leader_port = if holder == "replica-0" {
        ports[0]
    } else {
        ports[1]
    };
    let standby_port = if holder == "replica-0" {
        ports[1]
    } else {
        ports[0]
    };
    let m = gpupool_e2e::http::get(leader_port, "/metrics")
        .unwrap_or_else(|| {
            panic!(
                "the leader stopped serving /metrics; logs:\n{}",
                replica_logs(&cp)
            )
        })
        .1;
    assert!(
        m.contains("gpupool_reconciles_total{controller=\"membercluster\"}"),
        "{m}"
    );
    let s = gpupool_e2e::http::get(standby_port, "/metrics")
        .unwrap_or_else(|| {
            panic!(
                "the standby replica stopped serving /metrics; logs:\n{}",
                replica_logs(&cp)
            )
        })
        .1;
    if s.contains("gpupool_reconciles_total{") {
        panic!(
            "the standby reconciled (holder {holder}); logs:\n{}",
            replica_logs(&cp)
        );
    }
    // Who leads is exported, and only the leader has a queue to show.
    assert!(m.contains("\ngpupool_leader 1\n"), "{m}");
    assert!(s.contains("\ngpupool_leader 0\n"), "{s}");
    let (code, body) =
        gpupool_e2e::http::get(leader_port, "/debug/queue").expect("the leader answers");
    assert_eq!(code, 200, "{body}");
    let q: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert!(q["queue"].as_array().is_some_and(|q| q.is_empty()), "{q}");
    assert!(q["members"].get("lonely").is_some(), "{q}");
    assert_eq!(
        gpupool_e2e::http::get(standby_port, "/debug/queue").map(|r| r.0),
        Some(503)
    );
    drop(procs);
}
