//! What a member cluster has: GPU nodes, their topology, and the pods gpupool runs there.

use super::labels;
use crate::api::{GpuTopology, GpuTopologySpec};
use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, ListParams};
use std::collections::BTreeMap;

/// One GPU node of a member.
#[derive(Clone, Debug)]
pub struct NodeInventory {
    /// Node name.
    pub name: String,
    /// Node is Ready and schedulable.
    pub ready: bool,
    /// `nvidia.com/gpu` allocatable.
    pub gpus: i64,
    /// Topology published by the node agent, if any.
    pub topology: Option<GpuTopologySpec>,
    /// GPUs the node agent saw busy with processes gpupool did not start.
    pub busy_uuids: Vec<String>,
    /// Devices the kubelet assigned per container, as the node agent read them.
    pub pod_devices: Vec<crate::api::PodDevices>,
}

/// A consistent read of a member cluster.
#[derive(Clone, Debug, Default)]
pub struct Inventory {
    /// Kubernetes version.
    pub version: String,
    /// GPU nodes by name.
    pub nodes: BTreeMap<String, NodeInventory>,
    /// Pods gpupool manages there.
    pub pods: Vec<Pod>,
}

/// Reads version, nodes, `GpuTopology` objects and gpupool's pods from a member.
pub async fn read_inventory(client: &kube::Client) -> Result<Inventory, kube::Error> {
    let version = client.apiserver_version().await?;
    let nodes: Api<Node> = Api::all(client.clone());
    let topologies: Api<GpuTopology> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let all = ListParams::default();
    let mine = ListParams::default().labels(labels::SELECTOR);
    let (nodes, topologies, pods) = tokio::try_join!(
        nodes.list(&all),
        async {
            // A member without the CRD simply has no topology yet.
            match topologies.list(&all).await {
                Err(kube::Error::Api(e)) if e.code == 404 => Ok(Vec::new()),
                other => other.map(|l| l.items),
            }
        },
        pods.list(&mine),
    )?;
    Ok(inventory_from(
        version.git_version,
        nodes.items,
        topologies,
        pods.items,
    ))
}

/// Builds an inventory from listed (or watched) objects: GPU nodes with their topology.
pub fn inventory_from(
    version: String,
    nodes: Vec<Node>,
    topologies: Vec<GpuTopology>,
    pods: Vec<Pod>,
) -> Inventory {
    let mut topo_by_node: BTreeMap<String, GpuTopology> = topologies
        .into_iter()
        .map(|t| (t.spec.node_name.clone(), t))
        .collect();
    let mut out = BTreeMap::new();
    for n in nodes {
        let name = n.metadata.name.clone().unwrap_or_default();
        let status = n.status.as_ref();
        // Device-plugin nodes advertise `nvidia.com/gpu`; DRA nodes publish ResourceSlices
        // instead, and count through their GpuTopology.
        let gpus = status
            .and_then(|s| s.allocatable.as_ref())
            .and_then(|a| a.get("nvidia.com/gpu"))
            .and_then(|q| q.0.parse::<i64>().ok())
            .filter(|g| *g > 0)
            .or_else(|| topo_by_node.get(&name).map(|t| t.spec.gpus.len() as i64))
            .unwrap_or(0);
        if gpus == 0 {
            continue;
        }
        let ready = status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            && !n
                .spec
                .as_ref()
                .and_then(|s| s.unschedulable)
                .unwrap_or(false);
        let topo = topo_by_node.remove(&name);
        out.insert(
            name.clone(),
            NodeInventory {
                name,
                ready,
                gpus,
                busy_uuids: topo
                    .as_ref()
                    .and_then(|t| t.status.as_ref())
                    .map(|s| s.gpus_in_use.clone())
                    .unwrap_or_default(),
                pod_devices: topo
                    .as_ref()
                    .and_then(|t| t.status.as_ref())
                    .map(|s| s.pod_devices.clone())
                    .unwrap_or_default(),
                topology: topo.map(|t| t.spec),
            },
        );
    }
    Inventory {
        version,
        nodes: out,
        pods,
    }
}
