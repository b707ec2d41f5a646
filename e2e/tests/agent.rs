//! The node agent against a real kube-apiserver: it publishes a fixture topology as the node's
//! `GpuTopology` (owned by the Node, status filled in) and, without an NVIDIA driver, says so in
//! one line.
//!
//! The agent binary belongs to the operator crate; [`gpupool_e2e::operator_bin`] builds and finds it.

use gpupool::api::{GpuTopology, GpuTopologySpec};
use gpupool_e2e::{ControlPlane, GpuNode, repo_root};
use k8s_openapi::api::core::v1::Node;
use kube::api::Api;
use std::path::PathBuf;
use std::process::Command;

fn agent_bin() -> PathBuf {
    gpupool_e2e::operator_bin("gpupool-agent")
}

fn fixture(name: &str) -> (PathBuf, String) {
    let p = repo_root().join("deploy/topologies").join(name);
    let text = std::fs::read_to_string(&p).unwrap();
    (p, text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agent_publishes_a_topology_file_that_round_trips() {
    let bin = agent_bin();
    let cp = ControlPlane::start("agent")
        .await
        .expect("control plane starts");
    gpupool_e2e::install_crds(&cp).await.expect("CRDs install");
    let client = cp.client().await.unwrap();

    for (file, node_name, in_use) in [
        ("dgx1-v100.yaml", "dgx1-v100-0", vec![]),
        ("dgx1-v100-busy.yaml", "dgx1-v100-busy-0", vec![4, 7]),
    ] {
        GpuNode::new(node_name, 8, "Tesla V100-SXM2-16GB")
            .create(&client)
            .await
            .unwrap();
        let (path, text) = fixture(file);
        let out = Command::new(&bin)
            .arg("--topology-file")
            .arg(&path)
            .arg("--once")
            .arg("--kubeconfig")
            .arg(cp.kubeconfig_path())
            .arg("--node-name")
            .arg(node_name)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "agent failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );

        let want: GpuTopologySpec = gpupool::topology::spec_from_yaml(&text).unwrap();
        let node = Api::<Node>::all(client.clone())
            .get(node_name)
            .await
            .unwrap();
        let got = Api::<GpuTopology>::all(client.clone())
            .get(node_name)
            .await
            .unwrap();
        // The spec round-trips exactly: every GPU, every link.
        assert_eq!(got.spec, want, "{file}");
        assert_eq!(got.spec.gpus.len(), 8);
        assert_eq!(got.spec.links.len(), 28);
        // Owned by the Node, so it goes away with it.
        let owners = got.metadata.owner_references.clone().unwrap();
        assert_eq!(owners.len(), 1);
        assert_eq!(
            (owners[0].kind.as_str(), owners[0].name.as_str()),
            ("Node", node_name)
        );
        assert_eq!(Some(&owners[0].uid), node.metadata.uid.as_ref());
        // Written by the agent's field manager, spec and status.
        let managers: Vec<_> = got
            .metadata
            .managed_fields
            .iter()
            .flatten()
            .filter_map(|m| Some((m.manager.clone()?, m.subresource.clone())))
            .collect();
        assert!(
            managers.contains(&("gpupool-agent".to_string(), None)),
            "{managers:?}"
        );
        assert!(
            managers.contains(&("gpupool-agent".to_string(), Some("status".to_string()))),
            "{managers:?}"
        );
        let status = got.status.unwrap();
        assert_eq!(status.gpu_count, 8);
        let want_in_use: Vec<String> = in_use
            .iter()
            .map(|&i: &usize| want.gpus[i].uuid.clone())
            .collect();
        assert_eq!(status.gpus_in_use, want_in_use);
        assert!(status.last_update_time.is_some());
    }

    // A second run with the same file changes nothing in the spec (server-side apply is idempotent).
    let (path, _) = fixture("dgx1-v100.yaml");
    let before = Api::<GpuTopology>::all(client.clone())
        .get("dgx1-v100-0")
        .await
        .unwrap();
    let st = Command::new(&bin)
        .arg("--topology-file")
        .arg(&path)
        .args(["--once", "--node-name", "dgx1-v100-0", "--kubeconfig"])
        .arg(cp.kubeconfig_path())
        .status()
        .unwrap();
    assert!(st.success());
    let after = Api::<GpuTopology>::all(client.clone())
        .get("dgx1-v100-0")
        .await
        .unwrap();
    assert_eq!(before.metadata.generation, after.metadata.generation);

    // A node that does not exist: the agent refuses, and publishes nothing.
    let out = Command::new(&bin)
        .arg("--topology-file")
        .arg(&path)
        .args(["--once", "--node-name", "no-such-node", "--kubeconfig"])
        .arg(cp.kubeconfig_path())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr
            .contains("node \"no-such-node\" does not exist in this cluster; refusing to publish"),
        "{stderr}"
    );
    assert!(
        Api::<GpuTopology>::all(client.clone())
            .get_opt("no-such-node")
            .await
            .unwrap()
            .is_none()
    );

    // --simulate-dra also publishes the node's GPUs as a ResourceSlice of NVIDIA's driver name.
    let st = Command::new(&bin)
        .arg("--topology-file")
        .arg(&path)
        .args([
            "--once",
            "--simulate-dra",
            "--node-name",
            "dgx1-v100-0",
            "--kubeconfig",
        ])
        .arg(cp.kubeconfig_path())
        .status()
        .unwrap();
    assert!(st.success());
    let slice = Api::<k8s_openapi::api::resource::v1::ResourceSlice>::all(client.clone())
        .get("dgx1-v100-0-gpu-nvidia-com")
        .await
        .unwrap();
    assert_eq!(slice.spec.driver, "gpu.nvidia.com");
    assert_eq!(slice.spec.devices.as_ref().unwrap().len(), 8);
    assert_eq!(
        slice.metadata.labels.as_ref().unwrap()["gpupool.io/simulated"],
        "true"
    );
    let topo = Api::<GpuTopology>::all(client)
        .get("dgx1-v100-0")
        .await
        .unwrap();
    let uuid0 = &topo.spec.gpus.iter().find(|g| g.index == 0).unwrap().uuid;
    let d0 = &slice.spec.devices.as_ref().unwrap()[0];
    assert_eq!(d0.name, "gpu-0");
    let attrs = d0.attributes.as_ref().unwrap();
    assert_eq!(attrs["uuid"].string.as_ref(), Some(uuid0));
}

#[test]
fn agent_without_nvidia_driver_says_so_in_one_line() {
    let has_driver = [
        "/usr/lib/x86_64-linux-gnu/libnvidia-ml.so.1",
        "/usr/lib64/libnvidia-ml.so.1",
    ]
    .iter()
    .any(|p| std::path::Path::new(p).exists());
    if has_driver {
        eprintln!("skipped: this machine has an NVIDIA driver");
        return;
    }
    let out = Command::new(agent_bin())
        .args(["--print", "--node-name", "n"])
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(out.stdout.is_empty());
    assert_eq!(
        stderr.trim_end(),
        "NVML not available (libnvidia-ml.so.1 not found): no NVIDIA driver on this node; pass --topology-file to publish a topology from a file"
    );
    assert_eq!(stderr.lines().count(), 1);
    // Publishing mode fails the same way, before touching any API server.
    let out = Command::new(agent_bin())
        .args(["--once", "--node-name", "n"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(3));
    assert!(String::from_utf8_lossy(&out.stderr).starts_with("NVML not available"));
}
