//! The node agent: reads the node's GPUs (from NVML, or from a topology file on simulated nodes)
//! and publishes them as the node's `GpuTopology` with server-side apply.

pub mod dra;
pub mod health;
pub mod nvml;
pub mod pod_resources;

use crate::api::{GpuTopology, GpuTopologySpec, TopologySource};
use anyhow::{Context, Result};
use k8s_openapi::api::core::v1::Node;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use kube::api::{Api, Patch, PatchParams};

/// Field manager of everything the agent writes.
pub const FIELD_MANAGER: &str = "gpupool-agent";

/// What the agent saw on the node.
#[derive(Clone, Debug, PartialEq)]
pub struct Reading {
    /// The topology.
    pub spec: GpuTopologySpec,
    /// UUIDs of GPUs with running compute processes.
    pub in_use: Vec<String>,
    /// `nvidia.com/gpu` devices the kubelet assigned, per container (empty without a kubelet).
    pub pod_devices: Vec<crate::api::PodDevices>,
}

/// Reads a topology file: a bare `GpuTopologySpec` or a whole `GpuTopology` object (whose
/// `status.gpusInUse`, when present, gives the GPUs in use). `node_name`, when given, replaces the
/// file's node name; the source is always `file`.
pub fn read_topology_file(path: &std::path::Path, node_name: Option<&str>) -> Result<Reading> {
    let text = std::fs::read_to_string(path)
        .with_context(|| format!("reading topology file {}", path.display()))?;
    let mut spec = crate::topology::spec_from_yaml(&text)
        .with_context(|| format!("parsing topology file {}", path.display()))?;
    let in_use = serde_yaml::from_str::<serde_yaml::Value>(&text)
        .ok()
        .and_then(|v| v.get("status")?.get("gpusInUse").cloned())
        .and_then(|v| serde_yaml::from_value::<Vec<String>>(v).ok())
        .unwrap_or_default();
    if let Some(n) = node_name {
        spec.node_name = n.to_string();
    }
    spec.source = TopologySource::File;
    crate::topology::GpuGraph::from_spec(&spec)
        .with_context(|| format!("topology file {}", path.display()))?;
    Ok(Reading {
        spec,
        in_use,
        pod_devices: Vec::new(),
    })
}

/// The `GpuTopology` object the agent applies for `node` (uid from the Node object).
pub fn topology_object(spec: &GpuTopologySpec, node: &Node) -> GpuTopology {
    let name = spec.node_name.clone();
    let mut t = GpuTopology::new(&name, spec.clone());
    t.metadata = ObjectMeta {
        name: Some(name.clone()),
        labels: Some(
            [(
                "app.kubernetes.io/part-of".to_string(),
                "gpupool".to_string(),
            )]
            .into(),
        ),
        owner_references: node.metadata.uid.as_ref().map(|uid| {
            vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Node".into(),
                name: node.metadata.name.clone().unwrap_or(name),
                uid: uid.clone(),
                ..Default::default()
            }]
        }),
        ..Default::default()
    };
    t
}

/// The Node the agent publishes for; refuses one that does not exist (a typo in `--node-name`
/// would otherwise publish GPUs nobody can use, and placement would pick them).
pub async fn node_of(client: &kube::Client, name: &str) -> Result<Node> {
    Api::<Node>::all(client.clone())
        .get_opt(name)
        .await
        .with_context(|| format!("reading Node {name}"))?
        .ok_or_else(|| {
            anyhow::anyhow!(
                "node {name:?} does not exist in this cluster; refusing to publish its GPUs (check --node-name / NODE_NAME)"
            )
        })
}

/// Server-side applies the node's `GpuTopology` (owned by its Node) and then its status.
pub async fn publish(client: &kube::Client, reading: &Reading) -> Result<()> {
    let name = reading.spec.node_name.as_str();
    let node = node_of(client, name).await?;
    let api: Api<GpuTopology> = Api::all(client.clone());
    let pp = PatchParams::apply(FIELD_MANAGER).force();
    let obj = topology_object(&reading.spec, &node);
    api.patch(name, &pp, &Patch::Apply(&obj))
        .await
        .with_context(|| format!("applying GpuTopology {name}"))?;
    // A GPU the kubelet assigned to a pod is in use even before a process opens it.
    let mut in_use = reading.in_use.clone();
    for d in &reading.pod_devices {
        for id in &d.device_ids {
            if !in_use.contains(id) {
                in_use.push(id.clone());
            }
        }
    }
    let status = serde_json::json!({
        "apiVersion": "gpupool.io/v1alpha1",
        "kind": "GpuTopology",
        "status": {
            "gpuCount": reading.spec.gpus.len(),
            "gpusInUse": in_use,
            "podDevices": reading.pod_devices,
            "lastUpdateTime": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        }
    });
    api.patch_status(name, &pp, &Patch::Apply(&status))
        .await
        .with_context(|| format!("applying GpuTopology {name} status"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn topology_object_is_owned_by_the_node() {
        let spec = crate::topology::fixtures::get("pcie-a100-bridged");
        let node = Node {
            metadata: ObjectMeta {
                name: Some("pcie-a100-0".into()),
                uid: Some("u-1".into()),
                ..Default::default()
            },
            ..Default::default()
        };
        let t = topology_object(&spec, &node);
        let v = serde_json::to_value(&t).unwrap();
        assert_eq!(v["apiVersion"], "gpupool.io/v1alpha1");
        assert_eq!(v["kind"], "GpuTopology");
        assert_eq!(v["metadata"]["ownerReferences"][0]["kind"], "Node");
        assert_eq!(v["metadata"]["ownerReferences"][0]["uid"], "u-1");
        assert!(v.get("status").is_none_or(|s| s.is_null()));
    }

    #[test]
    fn topology_file_with_status_gives_gpus_in_use() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../deploy/topologies");
        let r = read_topology_file(&dir.join("dgx1-v100-busy.yaml"), Some("kwok-7")).unwrap();
        assert_eq!(r.spec.node_name, "kwok-7");
        assert_eq!(
            r.in_use,
            vec![r.spec.gpus[4].uuid.clone(), r.spec.gpus[7].uuid.clone()]
        );
        let r = read_topology_file(&dir.join("dgx-h100.yaml"), None).unwrap();
        assert_eq!(r.spec.node_name, "dgx-h100-0");
        assert!(r.in_use.is_empty());
        assert!(read_topology_file(&dir.join("no-such-file.yaml"), None).is_err());
    }
}
