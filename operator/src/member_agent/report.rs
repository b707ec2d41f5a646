//! The inventory a pull member reports to the hub, split into shards that each stay well below
//! the API server's object size limit.

use crate::api::{GpuTopology, NodeReport};
use crate::federation::{allocatable_gpus, node_ready};
use k8s_openapi::api::core::v1::Node;
use kube::ResourceExt;
use std::collections::BTreeMap;

/// Largest serialized node list per `MemberReport` (etcd refuses objects above ~1.5 MiB).
pub const SHARD_BYTES: usize = 512 * 1024;

/// GPU nodes of the member with their topology and busy GPUs (nodes without GPUs are left out,
/// as in push mode). `dra`: on a DRA member, the GPU devices of NVIDIA's driver per node in the
/// ResourceSlices ([`crate::federation::dra::gpu_devices_per_node`]).
/// (The same reading of a node as the hub's push-mode inventory and scheduler cache: the
/// `nvidia.com/gpu` allocatable on device-plugin members; on DRA members, whose nodes advertise
/// no `nvidia.com/gpu`, the node's slice devices, or its topology's GPU count while it has no
/// slice.)
pub fn node_reports(
    nodes: Vec<Node>,
    topologies: Vec<GpuTopology>,
    dra: Option<&DraInventory>,
) -> Vec<NodeReport> {
    let mut topo: BTreeMap<String, GpuTopology> = topologies
        .into_iter()
        .map(|t| (t.spec.node_name.clone(), t))
        .collect();
    let mut out = Vec::new();
    for n in nodes {
        let name = n.name_any();
        let t = topo.remove(&name);
        let gpus = match dra {
            None => allocatable_gpus(&n),
            Some(d) => d
                .devices
                .get(&name)
                .copied()
                .or_else(|| t.as_ref().map(|t| t.spec.gpus.len() as i64))
                .unwrap_or(0),
        };
        if gpus == 0 {
            continue;
        }
        let ready = node_ready(&n);
        let outside = dra
            .and_then(|d| d.outside_claims.get(&name).cloned())
            .unwrap_or_default();
        out.push(NodeReport {
            name,
            ready,
            gpus,
            busy_gpu_uuids: t
                .as_ref()
                .and_then(|t| t.status.as_ref())
                .map(|s| s.gpus_in_use.clone())
                .unwrap_or_default(),
            topology: t.map(|t| t.spec),
            outside_claimed_gpu_uuids: outside,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// What a DRA member's ResourceSlices and ResourceClaims say, per node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DraInventory {
    /// GPU devices of NVIDIA's driver.
    pub devices: BTreeMap<String, i64>,
    /// UUIDs of GPUs allocated to claims gpupool did not make.
    pub outside_claims: BTreeMap<String, Vec<String>>,
}

/// Splits nodes (in order) into shards whose serialized size stays below `max_bytes`; always at
/// least one shard, and a node larger than the limit gets a shard of its own.
pub fn shards(nodes: Vec<NodeReport>, max_bytes: usize) -> Vec<Vec<NodeReport>> {
    let mut out: Vec<Vec<NodeReport>> = vec![Vec::new()];
    let mut size = 0;
    for n in nodes {
        let s = serde_json::to_vec(&n).map(|v| v.len()).unwrap_or(0) + 1;
        if size + s > max_bytes && !out.last().expect("one shard").is_empty() {
            out.push(Vec::new());
            size = 0;
        }
        size += s;
        out.last_mut().expect("one shard").push(n);
    }
    out
}

/// Name of shard `i` of member `member`'s report.
pub fn shard_name(member: &str, i: usize) -> String {
    if i == 0 {
        member.to_string()
    } else {
        format!("{member}-{i}")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn node(name: &str, gpus: i64) -> Node {
        serde_json::from_value(json!({
            "metadata": {"name": name},
            "status": {"allocatable": {"nvidia.com/gpu": gpus.to_string()},
                       "conditions": [{"type": "Ready", "status": "True"}]}
        }))
        .unwrap()
    }

    #[test]
    fn only_gpu_nodes_are_reported() {
        let r = node_reports(vec![node("cpu", 0), node("g1", 8)], vec![], None);
        assert_eq!(r.len(), 1);
        assert_eq!((r[0].name.as_str(), r[0].gpus, r[0].ready), ("g1", 8, true));
    }

    #[test]
    fn dra_nodes_offer_their_slice_devices_or_their_published_gpus() {
        // DRA nodes advertise no `nvidia.com/gpu`: "sliced" has 6 devices in the slices (two of
        // its 8 GPUs withheld by the driver), "published" no slice yet but a topology of 8 GPUs,
        // "cpu" neither. The device plugin's allocatable is not read.
        let topo = |node: &str| {
            let mut spec = crate::topology::fixtures::get("dgx-h100");
            spec.node_name = node.into();
            GpuTopology::new(node, spec)
        };
        let nodes = vec![node("cpu", 0), node("sliced", 0), node("published", 0)];
        // One GPU of "sliced" is allocated to a claim gpupool did not make.
        let dra = DraInventory {
            devices: [("sliced".to_string(), 6)].into(),
            outside_claims: [("sliced".to_string(), vec!["GPU-o".to_string()])].into(),
        };
        let r = node_reports(
            nodes.clone(),
            vec![topo("sliced"), topo("published")],
            Some(&dra),
        );
        let got: Vec<(&str, i64, bool, Vec<String>)> = r
            .iter()
            .map(|n| {
                let outside = n.outside_claimed_gpu_uuids.clone();
                (n.name.as_str(), n.gpus, n.topology.is_some(), outside)
            })
            .collect();
        assert_eq!(
            got,
            [
                ("published", 8, true, vec![]),
                ("sliced", 6, true, vec!["GPU-o".to_string()])
            ]
        );
        // The same nodes read as device-plugin nodes offer nothing.
        assert!(node_reports(nodes, vec![topo("sliced")], None).is_empty());
    }

    #[test]
    fn shards_stay_under_the_limit_and_keep_every_node() {
        let nodes: Vec<NodeReport> = (0..100)
            .map(|i| NodeReport {
                name: format!("node-{i:03}"),
                ready: true,
                gpus: 8,
                topology: None,
                busy_gpu_uuids: vec![format!("GPU-{i}")],
                outside_claimed_gpu_uuids: vec![],
            })
            .collect();
        let one = serde_json::to_vec(&nodes[0]).unwrap().len() + 1;
        let sh = shards(nodes.clone(), one * 30);
        assert_eq!(sh.len(), 4);
        assert!(sh.iter().all(|s| s.len() <= 30));
        assert_eq!(sh.concat(), nodes);
        assert_eq!(shards(vec![], 10).len(), 1, "an empty member still reports");
        assert_eq!(
            shards(nodes[..2].to_vec(), 1).len(),
            2,
            "oversized nodes get own shards"
        );
        assert_eq!(shard_name("east", 0), "east");
        assert_eq!(shard_name("east", 2), "east-2");
    }
}
