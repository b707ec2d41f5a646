//! `TrainingJob`: a gang of workers, all-or-nothing, on one member cluster.

use super::common::{ClusterSelector, EnvVar, GpuSelector, NvLinkMode, conditions_schema};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A distributed training job.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "TrainingJob",
    plural = "trainingjobs",
    shortname = "tj",
    category = "gpupool",
    label("app.kubernetes.io/part-of", "gpupool"),
    namespaced,
    status = "TrainingJobStatus",
    doc = "A gang of training workers placed all-or-nothing on one member cluster.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".status.cluster"),
    printcolumn(name = "Workers", type_ = "integer", json_path = ".spec.workers"),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.gpusPerWorker"),
    printcolumn(name = "Restarts", type_ = "integer", json_path = ".status.restarts"),
    printcolumn(
        name = "GPU-s",
        type_ = "integer",
        json_path = ".status.gpuSeconds",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobSpec {
    /// Container image.
    #[x_kube(validation = Rule::new("size(self) > 0").message("image must not be empty"))]
    pub image: String,
    /// Command run in every worker.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub command: Vec<String>,
    /// Arguments.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub args: Vec<String>,
    /// Environment variables.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 128))]
    pub env: Vec<EnvVar>,
    /// Number of workers in the gang.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1024").message("workers must be between 1 and 1024"))]
    pub workers: i32,
    /// GPUs per worker, all on one node.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 16").message("gpusPerWorker must be between 1 and 16"))]
    pub gpus_per_worker: i32,
    /// Which GPUs qualify.
    #[serde(default)]
    pub gpu: GpuSelector,
    /// NVLink rule for each worker's GPUs. `clique`: every pair NVLink-connected (directly or
    /// through NVSwitch). `ring`: an all-NVLink cycle through all of them exists (NCCL's ring
    /// never leaves NVLink; a DGX-1 fits 5, 6 or 8 GPUs this way, at most 4 as a clique).
    /// `preferred` (default): the best-connected free set, PCIe-only if nothing better is free.
    /// `none`: topology ignored. `required`: alias of `clique`.
    #[serde(default)]
    pub nvlink: NvLinkMode,
    /// How many times the whole gang is restarted after a failure before the job fails.
    #[serde(default = "default_backoff")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("backoffLimit must be between 0 and 100"))]
    pub backoff_limit: i32,
    /// Wall-clock limit for one run; the job fails when exceeded.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("maxRuntimeSeconds must be positive"))]
    pub max_runtime_seconds: Option<i64>,
    /// Only members whose labels match all of these are considered.
    #[serde(default, skip_serializing_if = "ClusterSelector::is_empty")]
    pub cluster_selector: ClusterSelector,
    /// Scheduling priority: waiting jobs of higher priority are placed first; within a priority,
    /// older jobs first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Annotations put on every pod of the job in the member cluster (e.g. for log shippers or
    /// service meshes).
    #[serde(default, skip_serializing_if = "std::collections::BTreeMap::is_empty")]
    pub pod_annotations: std::collections::BTreeMap<String, String>,
    /// Port of the rank-0 rendezvous (torchrun `MASTER_PORT`).
    #[serde(default = "default_master_port")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 65535").message("masterPort must be between 1 and 65535"))]
    pub master_port: i32,
}

fn default_backoff() -> i32 {
    3
}

fn default_master_port() -> i32 {
    29500
}

/// Phase of a training job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum TrainingPhase {
    /// Waiting for a cluster that fits the whole gang.
    #[default]
    Pending,
    /// Placed; workers are starting.
    Scheduled,
    /// All workers running.
    Running,
    /// The gang is being restarted after a failure.
    Restarting,
    /// All workers finished successfully.
    Succeeded,
    /// Failed for good (backoff limit or runtime limit reached).
    Failed,
}

/// Where one worker runs.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct WorkerPlacement {
    /// Rank of the worker (0 is the rendezvous master).
    pub rank: i32,
    /// Node name in the member cluster.
    pub node: String,
    /// NVML UUIDs of the worker's GPUs.
    pub gpu_uuids: Vec<String>,
    /// Topology score of the GPU set.
    #[serde(default)]
    pub score: i64,
    /// Pod phase in the member, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_phase: Option<String>,
}

/// Observed state of a training job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct TrainingJobStatus {
    /// Current phase.
    #[serde(default)]
    pub phase: TrainingPhase,
    /// Member cluster running the gang.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster: Option<String>,
    /// Per-worker placement.
    #[serde(default)]
    pub workers: Vec<WorkerPlacement>,
    /// When the current run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Gang restarts so far.
    #[serde(default)]
    pub restarts: i32,
    /// Human-readable reason for the current phase.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// Conditions.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// GPU-seconds metered so far (written by the meter under its own field manager).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_seconds: Option<i64>,
    /// Position in the scheduling queue while the job waits for GPUs (1 = next), as of the
    /// last attempt to place it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub queue_position: Option<i32>,
    /// Why the job waits for GPUs, while it waits.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pending_reason: Option<String>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}
