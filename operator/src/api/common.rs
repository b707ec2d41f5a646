//! Types shared by several resources.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::KubeSchema;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// How strongly a request needs the GPUs inside one worker/replica to be NVLink-connected.
///
/// `required` is accepted as an alias of `clique` (its meaning before `ring` existed) and reads
/// back as [`NvLinkMode::Clique`].
#[derive(
    Clone, Copy, Debug, Default, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize,
)]
#[serde(rename_all = "lowercase")]
pub enum NvLinkMode {
    /// Every pair of GPUs in the set is NVLink-connected (directly or through NVSwitch).
    #[serde(alias = "required")]
    Clique,
    /// The GPUs can be visited in one cycle whose every hop is NVLink (what NCCL's ring
    /// all-reduce needs); on a DGX-1 this admits 5, 6 and 8 GPUs where `clique` stops at 4.
    Ring,
    /// Prefer the best-connected set (highest ring bottleneck and mean pair bandwidth), but
    /// accept PCIe-only sets.
    #[default]
    Preferred,
    /// Topology does not matter for this workload.
    None,
}

impl NvLinkMode {
    /// Values accepted in a spec, with `required` last (the alias of `clique`).
    pub const SPEC_VALUES: [&'static str; 5] = ["clique", "ring", "preferred", "none", "required"];

    /// Whether a set that misses the mode's NVLink rule must be refused (`clique`, `ring`).
    pub fn is_hard(self) -> bool {
        matches!(self, NvLinkMode::Clique | NvLinkMode::Ring)
    }
}

/// Hand-written so the CRD lists the alias `required` beside the four modes (a derived schema
/// shows only serde's primary names, and the API server would reject the alias).
impl JsonSchema for NvLinkMode {
    fn schema_name() -> std::borrow::Cow<'static, str> {
        "NvLinkMode".into()
    }

    fn json_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
        schemars::json_schema!({
            "type": "string",
            "enum": NvLinkMode::SPEC_VALUES,
            "description": NVLINK_MODE_DOC,
        })
    }
}

/// What `kubectl explain` says about the `nvlink` fields of both job kinds.
pub const NVLINK_MODE_DOC: &str = "NVLink rule for the GPUs inside one worker/replica. \
clique: every pair NVLink-connected (directly or through NVSwitch). \
ring: an all-NVLink cycle through all GPUs exists (NCCL ring all-reduce never leaves NVLink; a \
DGX-1 fits 5, 6 or 8 GPUs this way but at most 4 as a clique). \
preferred (default): the best-connected free set, PCIe-only if nothing better is free. \
none: topology ignored. \
required: alias of clique.";

impl std::fmt::Display for NvLinkMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            NvLinkMode::Clique => "clique",
            NvLinkMode::Ring => "ring",
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
