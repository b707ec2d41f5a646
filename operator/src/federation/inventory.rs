//! What a member's `Node` objects say about their GPUs.

use k8s_openapi::api::core::v1::Node;

/// `nvidia.com/gpu` allocatable of a node (0 when it has none).
pub fn allocatable_gpus(n: &Node) -> i64 {
    n.status
        .as_ref()
        .and_then(|s| s.allocatable.as_ref())
        .and_then(|a| a.get("nvidia.com/gpu"))
        .and_then(|q| q.0.parse::<i64>().ok())
        .unwrap_or(0)
}

/// Whether the node is Ready and not cordoned.
pub fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
        && !n
            .spec
            .as_ref()
            .and_then(|s| s.unschedulable)
            .unwrap_or(false)
}
