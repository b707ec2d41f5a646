//! Types shared by several resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How strongly a request needs the GPUs inside one worker/replica to be NVLink-connected.
#[derive(
    Clone,
    Copy,
    Debug,
    Default,
    PartialEq,
    Eq,
    Hash,
    PartialOrd,
    Ord,
    Serialize,
    Deserialize,
    JsonSchema,
)]
#[serde(rename_all = "lowercase")]
pub enum NvLinkMode {
    /// Every pair of GPUs in the set must be connected by NVLink (directly or through NVSwitch).
    Required,
    /// Prefer the best-connected set, but accept PCIe-only sets.
    #[default]
    Preferred,
    /// Topology does not matter for this workload.
    None,
}

impl std::fmt::Display for NvLinkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NvLinkMode::Required => "required",
            NvLinkMode::Preferred => "preferred",
            NvLinkMode::None => "none",
        })
    }
}

/// Which GPUs a job may run on.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuSelector {
    /// GPU model name substring, matched case-insensitively against the model NVML reports
    /// (for example `H100`, `A100`, `L40S`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 64").message("gpu.model must be 1-64 characters"))]
    pub model: Option<String>,
    /// Minimum memory per GPU, in MiB.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("gpu.minMemoryMiB must be positive"))]
    #[serde(rename = "minMemoryMiB")]
    pub min_memory_mib: Option<i64>,
}

/// One environment variable for the workload's containers.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct EnvVar {
    /// Variable name.
    #[schemars(length(min = 1, max = 256))]
    #[x_kube(validation = Rule::new("self.matches('^[A-Za-z_][A-Za-z0-9_]*$')").message("env name must be a C identifier"))]
    pub name: String,
    /// Variable value.
    #[serde(default)]
    pub value: String,
}

/// Key/value labels a job uses to restrict which member clusters it may land on.
pub type ClusterSelector = BTreeMap<String, String>;

/// GPUs assigned on one node.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct NodeGpus {
    /// Node name in the member cluster.
    pub node: String,
    /// NVML UUIDs of the GPUs assigned.
    pub gpu_uuids: Vec<String>,
    /// Topology score of the GPU set (higher is better-connected).
    #[serde(default)]
    pub score: i64,
}

/// Kubernetes-style conditions list, merged by `type` under server-side apply.
pub fn conditions_schema(generator: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let mut schema = generator.subschema_for::<Vec<Condition>>();
    let obj = schema.ensure_object();
    obj.insert("x-kubernetes-list-type".into(), "map".into());
    obj.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

/// The condition types gpupool sets.
pub mod condition {
    /// The resource is healthy and usable.
    pub const READY: &str = "Ready";
    /// The member's API server answers.
    pub const REACHABLE: &str = "Reachable";
    /// The job has a placement.
    pub const SCHEDULED: &str = "Scheduled";
    /// All of the job's pods are running.
    pub const RUNNING: &str = "Running";
    /// The job finished.
    pub const COMPLETE: &str = "Complete";
    /// The job failed for good.
    pub const FAILED: &str = "Failed";
}
