//! KWOK: simulated nodes and pod lifecycles in a member cluster, with fake `nvidia.com/gpu` capacity.

use crate::ControlPlane;
use crate::control_plane::{spawn, stop_child};
use anyhow::{Context, Result, bail};
use k8s_openapi::api::core::v1::Node;
use kube::api::{Api, Patch, PatchParams, PostParams};
use serde_json::json;
use std::collections::BTreeMap;
use std::process::{Child, Command};
use std::time::{Duration, Instant};

/// Annotation KWOK uses to pick the nodes it manages.
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";

/// A KWOK controller for one cluster. Stopped on drop.
pub struct Kwok {
    child: Option<Child>,
}

impl Kwok {
    /// Starts KWOK against `cp`, managing nodes annotated `kwok.x-k8s.io/node=fake`, with the
    /// stages in `e2e/harness/kwok-stages.yaml`; pods get addresses in 10.244.0.0/16.
    pub fn start(cp: &ControlPlane) -> Result<Self> {
        Self::start_with_pod_cidr(cp, "10.244.0.0/16")
    }

    /// [`Kwok::start`] giving pods addresses in `cidr` (a loopback range such as
    /// `127.18.1.0/24` lets a test serve on the pods' addresses).
    pub fn start_with_pod_cidr(cp: &ControlPlane, cidr: &str) -> Result<Self> {
        let tools = crate::Tools::get()?;
        let stages = crate::repo_root().join("e2e/harness/kwok-stages.yaml");
        let log = std::fs::File::create(cp.dir().join("kwok.log"))?;
        let child = spawn(
            Command::new(&tools.kwok)
                .arg(format!("--kubeconfig={}", cp.kubeconfig_path().display()))
                .arg(format!("--config={}", stages.display()))
                .arg("--manage-all-nodes=false")
                .arg(format!(
                    "--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"
                ))
                .arg("--node-lease-duration-seconds=40")
                .arg(format!("--cidr={cidr}"))
                .arg("--node-ip=10.0.0.1"),
            log,
        )
        .context("starting kwok")?;
        Ok(Kwok { child: Some(child) })
    }

    /// Whether the KWOK process is still running.
    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(|c| c.try_wait()), Some(Ok(None)))
    }
}

impl Drop for Kwok {
    fn drop(&mut self) {
        if let Some(c) = self.child.take() {
            stop_child(c);
        }
    }
}

/// A simulated GPU node.
#[derive(Clone, Debug)]
pub struct GpuNode {
    /// Node name.
    pub name: String,
    /// GPUs advertised as `nvidia.com/gpu`.
    pub gpus: u32,
    /// GPU model (`nvidia.com/gpu.product` label).
    pub model: String,
    /// Extra labels.
    pub labels: BTreeMap<String, String>,
    /// Whether the node advertises `nvidia.com/gpu` as the NVIDIA device plugin does (DRA nodes
    /// publish ResourceSlices instead).
    pub device_plugin: bool,
}

impl GpuNode {
    /// A node with `gpus` GPUs of `model`.
    pub fn new(name: &str, gpus: u32, model: &str) -> Self {
        GpuNode {
            name: name.into(),
            gpus,
            model: model.into(),
            labels: BTreeMap::new(),
            device_plugin: true,
        }
    }

    /// Creates the Node and sets its capacity; KWOK then makes it Ready.
    pub async fn create(&self, client: &kube::Client) -> Result<()> {
        let nodes: Api<Node> = Api::all(client.clone());
        let mut labels = self.labels.clone();
        labels.insert("kubernetes.io/hostname".into(), self.name.clone());
        labels.insert("type".into(), "kwok".into());
        labels.insert("nvidia.com/gpu.present".into(), "true".into());
        labels.insert("nvidia.com/gpu.count".into(), self.gpus.to_string());
        labels.insert(
            "nvidia.com/gpu.product".into(),
            self.model.replace(' ', "-"),
        );
        let mut capacity = json!({ "cpu": "128", "memory": "1Ti", "pods": "110" });
        if self.device_plugin {
            capacity["nvidia.com/gpu"] = self.gpus.to_string().into();
        }
        let node: Node = serde_json::from_value(json!({
            "apiVersion": "v1", "kind": "Node",
            "metadata": {
                "name": self.name,
                "labels": labels,
                "annotations": { KWOK_NODE_ANNOTATION: "fake", "node.alpha.kubernetes.io/ttl": "0" }
            },
            "spec": {},
            "status": { "capacity": capacity, "allocatable": capacity }
        }))?;
        nodes
            .create(&PostParams::default(), &node)
            .await
            .with_context(|| format!("creating node {}", self.name))?;
        nodes
            .patch_status(
                &self.name,
                &PatchParams::default(),
                &Patch::Merge(
                    json!({ "status": { "capacity": capacity, "allocatable": capacity } }),
                ),
            )
            .await?;
        Ok(())
    }
}

/// Waits until `node` is Ready (KWOK took it over) and returns it.
pub async fn wait_node_ready(client: &kube::Client, node: &str, timeout: Duration) -> Result<Node> {
    let nodes: Api<Node> = Api::all(client.clone());
    let deadline = Instant::now() + timeout;
    loop {
        if let Some(n) = nodes.get_opt(node).await?
            && node_ready(&n)
        {
            return Ok(n);
        }
        if Instant::now() > deadline {
            bail!("node {node} not Ready after {timeout:?}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Removes the `node.kubernetes.io/not-ready` taint that the API server's TaintNodesByCondition
/// admission puts on every new Node, as the node lifecycle controller does once the node is Ready.
/// The harness does not run that controller: it would judge KWOK's simulated heartbeats, which a
/// loaded test machine delays, and taint nodes mid-test.
pub async fn clear_not_ready_taint(client: &kube::Client, node: &str) -> Result<()> {
    let nodes: Api<Node> = Api::all(client.clone());
    let n = nodes.get(node).await?;
    let taints = n
        .spec
        .as_ref()
        .and_then(|s| s.taints.clone())
        .unwrap_or_default();
    let keep: Vec<_> = taints
        .iter()
        .filter(|t| t.key != "node.kubernetes.io/not-ready")
        .cloned()
        .collect();
    if keep.len() != taints.len() {
        nodes
            .patch(
                node,
                &PatchParams::default(),
                &Patch::Merge(json!({ "spec": { "taints": keep } })),
            )
            .await?;
    }
    Ok(())
}

/// Whether a Node's Ready condition is True.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}
