//! The foundation on a real control plane: CRDs install into a real kube-apiserver, the examples
//! are accepted, bad specs are rejected by the API server itself, and KWOK GPU nodes come up in
//! member clusters.

use gpupool_e2e::{ControlPlane, Federation, GpuNode, repo_root};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, PostParams};
use std::time::{Duration, Instant};

fn yaml_files(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut v: Vec<_> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml"))
        .collect();
    v.sort();
    v
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn examples_are_accepted_and_invalid_specs_rejected_by_the_api_server() {
    let cp = ControlPlane::start("validation")
        .await
        .expect("control plane starts");
    gpupool_e2e::install_crds(&cp).await.expect("CRDs install");
    let kubectl = cp.kubectl();

    let valid = yaml_files(&repo_root().join("deploy/examples"));
    assert!(
        valid.len() >= 4,
        "expected the example set, found {valid:?}"
    );
    for f in &valid {
        let out = kubectl.run(&["apply", "-f", f.to_str().unwrap()]).unwrap();
        assert!(out.success, "{} rejected: {}", f.display(), out.stderr);
    }
    // What was applied reads back with the printer columns.
    let tj = kubectl.ok(&["get", "trainingjobs", "-A"]).unwrap();
    assert!(
        tj.contains("gpt-pretrain") && tj.contains("PHASE") && tj.contains("CLUSTER"),
        "{tj}"
    );
    let tj = kubectl
        .ok(&[
            "get",
            "tj",
            "gpt-pretrain",
            "-o",
            "jsonpath={.spec.backoffLimit}",
        ])
        .unwrap();
    assert_eq!(tj, "2");
    let ij = kubectl
        .ok(&["get", "ij", "llama-serve", "-o", "jsonpath={.spec.nvlink}"])
        .unwrap();
    assert_eq!(ij, "preferred");

    // A TrainingJob's gang-shaping fields are immutable; the others may change.
    for (patch, expect) in [
        (r#"{"spec":{"workers":3}}"#, "workers is immutable"),
        (
            r#"{"spec":{"gpusPerWorker":2}}"#,
            "gpusPerWorker is immutable",
        ),
        (r#"{"spec":{"nvlink":"none"}}"#, "nvlink is immutable"),
        (r#"{"spec":{"gpu":{"model":"A100"}}}"#, "gpu is immutable"),
        (r#"{"spec":{"masterPort":1234}}"#, "masterPort is immutable"),
        (
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"trainer","image":"nvcr.io/nvidia/pytorch:25.01-py3"}]}}}}"#,
            "template is immutable",
        ),
        (
            r#"{"spec":{"template":{"metadata":{"labels":{"team":"other"}}}}}"#,
            "template is immutable",
        ),
        (
            r#"{"spec":{"template":{"spec":{"volumes":[{"name":"x","emptyDir":{}}]}}}}"#,
            "template is immutable",
        ),
    ] {
        let out = kubectl
            .run(&["patch", "tj", "gpt-pretrain", "--type=merge", "-p", patch])
            .unwrap();
        assert!(!out.success, "patch {patch} was accepted");
        assert!(out.stderr.contains(expect), "{patch}: {}", out.stderr);
    }
    kubectl
        .ok(&[
            "patch",
            "tj",
            "gpt-pretrain",
            "--type=merge",
            "-p",
            r#"{"spec":{"backoffLimit":5,"maxRuntimeSeconds":3600,"clusterSelector":{"tier":"a"}}}"#,
        ])
        .unwrap();
    let explain = kubectl
        .ok(&["explain", "trainingjob.spec.workers"])
        .unwrap();
    assert!(explain.contains("Immutable"), "{explain}");

    // An InferenceJob's port is immutable; template, GPUs, replicas and the rollout may change.
    let out = kubectl
        .run(&[
            "patch",
            "ij",
            "llama-serve",
            "--type=merge",
            "-p",
            r#"{"spec":{"port":9000}}"#,
        ])
        .unwrap();
    assert!(
        !out.success && out.stderr.contains("port is immutable"),
        "port change: {}",
        out.stderr
    );
    kubectl
        .ok(&[
            "patch",
            "ij",
            "llama-serve",
            "--type=merge",
            "-p",
            r#"{"spec":{"replicas":4,"gpusPerReplica":1,"nvlink":"none","rollout":{"maxSurge":"50%","maxUnavailable":0}}}"#,
        ])
        .unwrap();
    let explain = kubectl
        .ok(&["explain", "inferencejob.spec.rollout"])
        .unwrap();
    assert!(
        explain.contains("maxSurge") && explain.contains("replica by"),
        "{explain}"
    );

    let invalid = yaml_files(&repo_root().join("deploy/examples/invalid"));
    assert!(
        invalid.len() >= 8,
        "expected the invalid set, found {invalid:?}"
    );
    for f in &invalid {
        let text = std::fs::read_to_string(f).unwrap();
        let expect = text
            .lines()
            .find_map(|l| l.strip_prefix("# expect: "))
            .unwrap_or_else(|| panic!("{} has no `# expect:` line", f.display()));
        let out = kubectl.run(&["apply", "-f", f.to_str().unwrap()]).unwrap();
        assert!(
            !out.success,
            "{} was accepted but must be rejected",
            f.display()
        );
        assert!(
            out.stderr.contains(expect),
            "{}: expected the API server to say {expect:?}, it said: {}",
            f.display(),
            out.stderr
        );
        assert!(
            out.stderr.contains("is invalid"),
            "{}: not an admission rejection: {}",
            f.display(),
            out.stderr
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hub_and_two_members_with_kwok_gpu_nodes() {
    let t0 = Instant::now();
    let fed = Federation::start(2).await.expect("federation starts");
    println!(
        "hub + 2 members ready in {:?} (control planes {:?})",
        t0.elapsed(),
        fed.startup
    );
    assert_eq!(fed.members.len(), 2);

    // Each cluster is its own API server with its own data.
    let ports: std::collections::BTreeSet<String> = std::iter::once(fed.hub.server_url())
        .chain(fed.members.iter().map(|m| m.cp.server_url()))
        .collect();
    assert_eq!(ports.len(), 3, "three distinct API servers");

    fed.add_nodes(0, &[GpuNode::new("dgx-h100-0", 8, "NVIDIA H100 80GB HBM3")])
        .await
        .unwrap();
    fed.add_nodes(
        1,
        &[GpuNode::new("pcie-a100-0", 4, "NVIDIA A100 80GB PCIe")],
    )
    .await
    .unwrap();

    let m1 = fed.members[0].cp.client().await.unwrap();
    let node = Api::<Node>::all(m1.clone())
        .get("dgx-h100-0")
        .await
        .unwrap();
    assert!(gpupool_e2e::node_ready(&node));
    let cap = node.status.unwrap().allocatable.unwrap();
    assert_eq!(cap["nvidia.com/gpu"].0, "8");
    // The node lives in member-1 only.
    let m2 = fed.members[1].cp.client().await.unwrap();
    assert!(
        Api::<Node>::all(m2)
            .get_opt("dgx-h100-0")
            .await
            .unwrap()
            .is_none()
    );
    let hub = fed.hub.client().await.unwrap();
    assert!(
        Api::<Node>::all(hub)
            .get_opt("dgx-h100-0")
            .await
            .unwrap()
            .is_none()
    );

    // KWOK runs a GPU pod bound to the node, and completes one that asks to finish.
    let pods: Api<Pod> = Api::namespaced(m1, "default");
    for (name, ann) in [("gpu-running", None), ("gpu-finishing", Some("1s"))] {
        let mut p: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {"name": name},
            "spec": {
                "nodeName": "dgx-h100-0",
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"limits": {"nvidia.com/gpu": "2"}}}]
            }
        }))
        .unwrap();
        if let Some(d) = ann {
            p.metadata.annotations = Some(
                [(
                    "pod-complete.stage.kwok.x-k8s.io/delay".to_string(),
                    d.to_string(),
                )]
                .into(),
            );
        }
        pods.create(&PostParams::default(), &p).await.unwrap();
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let r = pods
            .get("gpu-running")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase);
        let f = pods
            .get("gpu-finishing")
            .await
            .unwrap()
            .status
            .and_then(|s| s.phase);
        if r.as_deref() == Some("Running") && f.as_deref() == Some("Succeeded") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "pods did not reach Running/Succeeded: {r:?} {f:?}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Stopping is clean: processes gone, directories removed.
    let pids: Vec<u32> = std::iter::once(&fed.hub)
        .chain(fed.members.iter().map(|m| &m.cp))
        .flat_map(|c| c.pids())
        .collect();
    let dirs: Vec<_> = std::iter::once(&fed.hub)
        .chain(fed.members.iter().map(|m| &m.cp))
        .map(|c| c.dir().to_path_buf())
        .collect();
    drop(fed);
    for pid in pids {
        assert!(
            !std::path::Path::new(&format!("/proc/{pid}")).exists(),
            "process {pid} still running"
        );
    }
    for d in dirs {
        assert!(!d.exists(), "{} left behind", d.display());
    }
}
