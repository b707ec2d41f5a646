//! Pull-mode members: what the hub wants to exist in a member (`MemberWork`) and what the
//! member's agent reports back about the cluster (`MemberReport`).
//!
//! Both live in the member's own hub namespace (`gpupool-member-<name>`), the only namespace the
//! member agent's hub credential may touch. The hub writes `MemberWork.spec`; the agent writes
//! `MemberWork.status` and whole `MemberReport` objects. The agent's inventory is a separate object
//! rather than the `MemberCluster` status so that every object has one writer, a member's hub
//! credential needs no cluster-scoped grant at all, and a large inventory (shardable into several
//! reports) does not bloat the `MemberCluster` objects every controller watches.

use super::common::conditions_schema;
use super::{BindingMode, GpuTopologySpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Kinds a `MemberWork` may carry (the agent applies nothing else): Secrets and ConfigMaps are
/// the copies of the hub namespace's that the job's template references.
pub const WORK_KINDS: &[&str] = &["Pod", "Service", "ResourceClaim", "Secret", "ConfigMap"];

/// Objects the hub wants to exist in one pull member, for one hub job.
#[derive(CustomResource, KubeSchema, Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "MemberWork",
    plural = "memberworks",
    shortname = "mw",
    category = "gpupool",
    namespaced,
    label("app.kubernetes.io/part-of", "gpupool"),
    status = "MemberWorkStatus",
    doc = "Objects (pods, Services, ResourceClaims) the hub wants to exist in a pull-mode member cluster. Lives in the member's hub namespace; the member agent applies it and reports back in status.",
    printcolumn(name = "Job", type_ = "string", json_path = ".spec.jobRef.name"),
    printcolumn(name = "Objects", type_ = "integer", json_path = ".status.objects"),
    printcolumn(
        name = "Applied",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Applied\")].status"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct MemberWorkSpec {
    /// The hub object this work belongs to (for display and for the agent's labels).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_ref: Option<WorkJobRef>,
    /// Manifests to create or keep in the member, applied with server-side apply. Every object
    /// needs `apiVersion`, `kind`, `metadata.name` and `metadata.namespace`.
    #[schemars(schema_with = "manifests_schema")]
    #[x_kube(validation = Rule::new("self.all(m, m.kind in ['Pod', 'Service', 'ResourceClaim', 'Secret', 'ConfigMap'])").message("manifests may only be Pods, Services, ResourceClaims, and copies of the Secrets and ConfigMaps a template references"))]
    #[x_kube(validation = Rule::new("self.all(m, has(m.metadata.name))").message("every manifest needs metadata.name"))]
    pub manifests: Vec<serde_json::Value>,
}

/// Reference to the hub job a work object belongs to.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkJobRef {
    /// `TrainingJob` or `InferenceJob`.
    pub kind: String,
    /// Namespace on the hub.
    pub namespace: String,
    /// Name on the hub.
    pub name: String,
    /// UID on the hub.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
}

/// Schema of the manifest list: arbitrary embedded Kubernetes objects.
fn manifests_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "array",
        "maxItems": 512,
        "items": {
            "type": "object",
            "x-kubernetes-embedded-resource": true,
            "x-kubernetes-preserve-unknown-fields": true
        }
    })
}

/// Schema of an embedded topology: an object kept as sent.
fn topology_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "type": "object",
        "nullable": true,
        "x-kubernetes-preserve-unknown-fields": true
    })
}

/// What the member agent reports about a work object.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberWorkStatus {
    /// `metadata.generation` of the spec the agent last applied in full.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Number of manifests applied for `observedGeneration`.
    #[serde(default)]
    pub objects: i32,
    /// `Applied` (every manifest is in the member) with the reason of the last failure.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Pods of this work as the member sees them.
    #[serde(default)]
    pub pods: Vec<PodReport>,
}

/// One pod's state in the member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodReport {
    /// Namespace in the member.
    pub namespace: String,
    /// Pod name.
    pub name: String,
    /// UID in the member (distinguishes a recreated pod of the same name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<String>,
    /// `Pending`, `Running`, `Succeeded`, `Failed` or `Unknown`; `Missing` when the pod is gone.
    pub phase: String,
    /// All containers ready.
    #[serde(default)]
    pub ready: bool,
    /// Node the pod is bound to.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// When the kubelet started the pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the last container finished (terminal pods).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub finish_time: Option<Time>,
    /// When the pod began holding its GPUs, as the hub's meter reads it (first container or
    /// pod start).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_start: Option<Time>,
    /// When it stopped holding them (all containers finished); absent while running.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run_end: Option<Time>,
    /// Reason of a failure or eviction.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Human-readable detail.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}

/// One shard of a pull member's inventory, written by its agent.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "MemberReport",
    plural = "memberreports",
    shortname = "mrep",
    category = "gpupool",
    namespaced,
    label("app.kubernetes.io/part-of", "gpupool"),
    status = "MemberReportStatus",
    doc = "Inventory of a pull-mode member (nodes, GPU topologies, GPUs in use), written by its agent into the member's hub namespace. Large inventories are split into shards.",
    printcolumn(name = "Nodes", type_ = "integer", json_path = ".spec.nodeCount"),
    printcolumn(name = "Shard", type_ = "integer", json_path = ".spec.shard"),
    printcolumn(
        name = "Version",
        type_ = "string",
        json_path = ".spec.kubernetesVersion"
    ),
    printcolumn(name = "Reported", type_ = "date", json_path = ".spec.reportTime"),
    printcolumn(name = "Accepted", type_ = "string", json_path = ".status.accepted")
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.shard < self.shards").message("shard must be below shards"))]
pub struct MemberReportSpec {
    /// The member's identity: UID of its `kube-system` namespace.
    pub cluster_id: String,
    /// Kubernetes version of the member's API server.
    #[serde(default)]
    pub kubernetes_version: String,
    /// Version of the agent that wrote the report.
    #[serde(default)]
    pub agent_version: String,
    /// Index of this shard (0-based).
    #[x_kube(validation = Rule::new("self >= 0").message("shard must not be negative"))]
    pub shard: i32,
    /// Number of shards of the current report (older shards beyond it are stale).
    #[x_kube(validation = Rule::new("self >= 1").message("shards must be at least 1"))]
    pub shards: i32,
    /// Nodes in this shard.
    #[serde(default)]
    pub node_count: i32,
    /// When the agent read the inventory.
    pub report_time: Time,
    /// How the member binds GPUs, as its agent found it: `DRA` when it serves
    /// `resource.k8s.io/v1` with NVIDIA's `gpu.nvidia.com` DeviceClass (the hub then sends each
    /// pod a ResourceClaim naming its GPUs), otherwise — and when absent — `DevicePlugin`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_mode: Option<BindingMode>,
    /// GPU nodes of the member in this shard.
    #[serde(default)]
    pub nodes: Vec<NodeReport>,
}

/// One GPU node of a pull member.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeReport {
    /// Node name in the member.
    pub name: String,
    /// Ready and schedulable.
    pub ready: bool,
    /// GPUs the node offers: its `nvidia.com/gpu` allocatable; on a DRA member its GPU devices
    /// of NVIDIA's driver in the ResourceSlices (its topology's GPU count while it has no slice).
    pub gpus: i64,
    /// Topology published by the node agent, if any (a `GpuTopology` spec, already validated by
    /// the member's API server; not validated again here, which keeps the CRD's CEL cost bounded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "topology_schema")]
    pub topology: Option<GpuTopologySpec>,
    /// GPUs busy with processes gpupool did not start.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub busy_gpu_uuids: Vec<String>,
    /// On a DRA member: this node's GPUs allocated to ResourceClaims gpupool did not make (the
    /// hub places nothing on them).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub outside_claimed_gpu_uuids: Vec<String>,
}

/// The hub's verdict on a report (the agent cannot write it: its role has no `status` right).
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberReportStatus {
    /// The report is used for placement (its `clusterId` matches the member's identity).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub accepted: Option<bool>,
    /// Why not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
}
