//! `TrainingJob`: a gang of workers, all-or-nothing, on one member cluster.

use super::common::{
    ClusterSelector, GpuSelector, NvLinkMode, conditions_schema, gpu_containers_schema,
    pod_template_schema,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
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
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label (lowercase letters, digits and '-', starting with a letter, no dots): it names the workers' hostnames and Service"),
    validation = Rule::new("size(self.metadata.name) <= 55").message("metadata.name must be at most 55 characters: the workers' Service <name>-workers must fit in 63"),
    doc = "A gang of training workers placed all-or-nothing on one member cluster. The gang-shaping fields (template, workers, gpusPerWorker, gpu, nvlink, masterPort) are immutable; backoffLimit, maxRuntimeSeconds and clusterSelector may change.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Queue",
        type_ = "string",
        json_path = ".spec.queue",
        priority = 1
    ),
    printcolumn(name = "Cluster", type_ = "string", json_path = ".status.cluster"),
    printcolumn(
        name = "Workers",
        type_ = "integer",
        description = "Workers whose pods are running now",
        json_path = ".status.runningWorkers"
    ),
    printcolumn(
        name = "Desired",
        type_ = "integer",
        description = "Workers in the gang (spec.workers)",
        json_path = ".spec.workers"
    ),
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
#[x_kube(validation = Rule::new("!has(self.gpuContainers) || self.gpuContainers.all(n, self.template.spec.containers.exists(c, c.name == n))").message("gpuContainers must name containers of the template"))]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.priority) || !has(self.priorityClassName)").message("set priority or priorityClassName, not both"))]
pub struct TrainingJobSpec {
    /// The workers' pod template. Immutable: a TrainingJob's pods are one run of one program;
    /// delete and recreate the job to change it.
    #[x_kube(
        validation = Rule::new("!has(self.spec.nodeName)").message("template.spec.nodeName must not be set: gpupool pins every pod to the node it chose"),
        validation = Rule::new("self.spec.containers.all(c, has(c.image) && size(c.image) > 0) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, has(c.image) && size(c.image) > 0))").message("every container in the template needs an image"),
        validation = Rule::new("self.spec.containers.all(c, !has(c.image) || c.image.matches('^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$')) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, !has(c.image) || c.image.matches('^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$')))").message("container image must be an image reference such as registry.example.com/team/app:1.0 or name@sha256:<digest>"),
        validation = Rule::new("self.spec.containers.all(c, !has(c.resources) || ((!has(c.resources.limits) || !('nvidia.com/gpu' in c.resources.limits)) && (!has(c.resources.requests) || !('nvidia.com/gpu' in c.resources.requests)))) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, !has(c.resources) || ((!has(c.resources.limits) || !('nvidia.com/gpu' in c.resources.limits)) && (!has(c.resources.requests) || !('nvidia.com/gpu' in c.resources.requests)))))").message("template containers must not request nvidia.com/gpu: gpupool binds the exact GPUs it chose (set gpusPerWorker instead)"),
        validation = Rule::new("self.spec.containers.all(c, !has(c.env) || c.env.all(e, !(e.name in ['NVIDIA_VISIBLE_DEVICES', 'CUDA_VISIBLE_DEVICES', 'RANK', 'NODE_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'REPLICA_INDEX', 'GPUPOOL_GANG_GENERATION']))) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, !has(c.env) || c.env.all(e, !(e.name in ['NVIDIA_VISIBLE_DEVICES', 'CUDA_VISIBLE_DEVICES', 'RANK', 'NODE_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'REPLICA_INDEX', 'GPUPOOL_GANG_GENERATION']))))").message("template env must not set NVIDIA_VISIBLE_DEVICES, CUDA_VISIBLE_DEVICES, RANK, NODE_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, REPLICA_INDEX or GPUPOOL_GANG_GENERATION: gpupool sets them"),
        validation = Rule::new("!has(self.spec.resourceClaims) || self.spec.resourceClaims.all(r, r.name != 'gpupool-gpus')").message("the resource claim name gpupool-gpus is reserved for the GPUs gpupool binds")
    )]
    #[x_kube(validation = Rule::new("self == oldSelf").message("template is immutable: delete and recreate the TrainingJob to change it"))]
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
    /// Containers of the template that get the GPUs (default: the first container). On DRA
    /// members each of them references the pod's GPU claim and sees all the chosen GPUs; on
    /// device-plugin members only the first of them in template order requests the GPUs (the
    /// kubelet hands a device to one container only). Every name must be a container of the
    /// template. Immutable.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "gpu_containers_schema")]
    #[x_kube(validation = Rule::new("self == oldSelf").message("gpuContainers is immutable: delete and recreate the TrainingJob to change it"))]
    pub gpu_containers: Vec<String>,
    /// Number of workers in the gang. Immutable (it shapes the gang: placement, WORLD_SIZE).
    #[x_kube(
        validation = Rule::new("self >= 1 && self <= 1024").message("workers must be between 1 and 1024"),
        validation = Rule::new("self == oldSelf").message("workers is immutable: delete and recreate the TrainingJob to change the gang")
    )]
    pub workers: i32,
    /// GPUs per worker, all on one node. Immutable.
    #[x_kube(
        validation = Rule::new("self >= 1 && self <= 16").message("gpusPerWorker must be between 1 and 16"),
        validation = Rule::new("self == oldSelf").message("gpusPerWorker is immutable: delete and recreate the TrainingJob to change the gang")
    )]
    pub gpus_per_worker: i32,
    /// Which GPUs qualify. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("gpu is immutable: delete and recreate the TrainingJob to change the gang"))]
    pub gpu: GpuSelector,
    /// NVLink rule for each worker's GPUs. `clique`: every pair NVLink-connected (directly or
    /// through NVSwitch). `ring`: an all-NVLink cycle through all of them exists (NCCL's ring
    /// never leaves NVLink; a DGX-1 fits 5, 6 or 8 GPUs this way, at most 4 as a clique).
    /// `preferred` (default): the best-connected free set, PCIe-only if nothing better is free.
    /// `none`: topology ignored. `required`: alias of `clique`. Immutable.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("nvlink is immutable: delete and recreate the TrainingJob to change the gang"))]
    pub nvlink: NvLinkMode,
    /// How many times the whole gang is restarted after a failure before the job fails. Mutable;
    /// applies from the next failure on.
    #[serde(default = "default_backoff")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 100").message("backoffLimit must be between 0 and 100"))]
    pub backoff_limit: i32,
    /// Wall-clock limit for one run; the job fails when exceeded. Mutable.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0").message("maxRuntimeSeconds must be positive"))]
    pub max_runtime_seconds: Option<i64>,
    /// Only members whose labels match all of these are considered. Mutable; applies to the next
    /// placement (a running gang is not moved).
    #[serde(default, skip_serializing_if = "ClusterSelector::is_empty")]
    pub cluster_selector: ClusterSelector,
    /// Scheduling priority: waiting jobs of higher priority are placed first; within a priority,
    /// older jobs first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// Name of a `scheduling.k8s.io/v1` PriorityClass on the hub whose value is the job's
    /// priority (instead of `priority`). With neither, the PriorityClass marked `globalDefault`
    /// applies, if there is one. While no PriorityClass of this name exists the job waits, and
    /// its status says so.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 253").message("priorityClassName must be 1-253 characters"))]
    pub priority_class_name: Option<String>,
    /// The `GpuQueue` the job submits to; unset: the queue that lists the job's namespace, if
    /// any. The queue must list the job's namespace (`spec.namespaces`); while it does not, or
    /// does not exist, the job waits and its status says why. Mutable: a job that waits is
    /// admitted against the queue it names then.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 63))]
    #[x_kube(validation = Rule::new("size(self) <= 63 && self.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("queue must name a GpuQueue: a DNS label of at most 63 characters"))]
    pub queue: Option<String>,
    /// Port of the rank-0 rendezvous (torchrun `MASTER_PORT`). Immutable.
    #[serde(default = "default_master_port")]
    #[x_kube(
        validation = Rule::new("self >= 1 && self <= 65535").message("masterPort must be between 1 and 65535"),
        validation = Rule::new("self == oldSelf").message("masterPort is immutable: delete and recreate the TrainingJob to change it")
    )]
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
    /// Indexes of those GPUs on their node (NVML numbering, as `nvidia-smi` shows them), in the
    /// order of `gpuUuids`; empty when the node's topology was unknown as it was written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_indexes: Vec<i32>,
    /// Topology score of the GPU set.
    #[serde(default)]
    pub score: i64,
    /// Pod phase in the member, as last seen.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_phase: Option<String>,
}

/// How many earlier placements a `TrainingJob` keeps in `status.pastPlacements`.
pub const MAX_PAST_PLACEMENTS: usize = 8;

/// A placement a gang had before a restart, and when it was current.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PastPlacement {
    /// Member cluster the gang ran on.
    pub cluster: String,
    /// Its workers: node and GPUs.
    pub workers: Vec<WorkerPlacement>,
    /// When it was placed, by the hub's clock (its `placedAt`; for gangs placed before
    /// `placedAt` existed, the restart before it; absent: since the job's creation).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub from: Option<Time>,
    /// When it was replaced (the gang restart).
    pub until: Time,
}

impl TrainingJobStatus {
    /// Moves the current placement (cluster and workers) into `pastPlacements`, as replaced at
    /// `now`, keeping the last [`MAX_PAST_PLACEMENTS`]; the current placement is left empty.
    pub fn retire_placement(&mut self, now: Time) {
        let cluster = self.cluster.take();
        let workers = std::mem::take(&mut self.workers);
        let Some(cluster) = cluster.filter(|_| !workers.is_empty()) else {
            return;
        };
        let from = self
            .placed_at
            .take()
            .or_else(|| self.past_placements.last().map(|p| p.until.clone()));
        self.past_placements.push(PastPlacement {
            cluster,
            workers: workers
                .into_iter()
                .map(|w| WorkerPlacement {
                    pod_phase: None,
                    ..w
                })
                .collect(),
            from,
            until: now,
        });
        let excess = self
            .past_placements
            .len()
            .saturating_sub(MAX_PAST_PLACEMENTS);
        self.past_placements.drain(..excess);
    }
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
    /// When the hub placed the current gang generation, by its own clock (the meter pays its
    /// workers from then on, never earlier; it becomes the `from` of the generation's
    /// `pastPlacements` entry at a restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<Time>,
    /// When the current run started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_time: Option<Time>,
    /// When the job finished.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub completion_time: Option<Time>,
    /// Gang restarts so far (the gang's generation: preemptions included).
    #[serde(default)]
    pub restarts: i32,
    /// Of `restarts`, those caused by preemption or by a drain of the member (they do not count
    /// against `backoffLimit`).
    #[serde(default, skip_serializing_if = "is_zero")]
    pub preemptions: i32,
    /// Placements the gang had before its restarts, oldest first (the last
    /// [`MAX_PAST_PLACEMENTS`]): the meter pays a pod of an earlier placement for the time that
    /// placement was current, and nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_placements: Vec<PastPlacement>,
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
    /// Workers of the current gang whose pods are running in the member now (the `Workers`
    /// printer column; `spec.workers` is the `Desired` one).
    #[serde(default)]
    pub running_workers: i32,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    fn placed(cluster: &str, gpu: &str) -> TrainingJobStatus {
        TrainingJobStatus {
            cluster: Some(cluster.into()),
            workers: vec![WorkerPlacement {
                rank: 0,
                node: "n1".into(),
                gpu_uuids: vec![gpu.into()],
                gpu_indexes: vec![0],
                score: 0,
                pod_phase: Some("Running".into()),
            }],
            ..Default::default()
        }
    }

    #[test]
    fn restarts_keep_a_bounded_history_of_placements() {
        let mut st = placed("m1", "GPU-a");
        st.retire_placement(at(100));
        assert!(st.cluster.is_none() && st.workers.is_empty());
        assert_eq!(st.past_placements.len(), 1);
        let p = &st.past_placements[0];
        assert_eq!(
            (p.cluster.as_str(), p.from.clone(), p.until.clone()),
            ("m1", None, at(100))
        );
        assert_eq!(p.workers[0].gpu_uuids, vec!["GPU-a".to_string()]);
        assert_eq!(p.workers[0].pod_phase, None);
        // Nothing placed: nothing to keep.
        st.retire_placement(at(150));
        assert_eq!(st.past_placements.len(), 1);
        // The next one was current since the previous restart.
        st.cluster = Some("m2".into());
        st.workers = placed("m2", "GPU-b").workers;
        st.retire_placement(at(200));
        assert_eq!(st.past_placements[1].from, Some(at(100)));
        for i in 0..20 {
            st.cluster = Some("m1".into());
            st.workers = placed("m1", &format!("GPU-{i}")).workers;
            st.retire_placement(at(300 + i));
        }
        assert_eq!(st.past_placements.len(), MAX_PAST_PLACEMENTS);
        assert_eq!(st.past_placements.last().unwrap().until, at(319));
        assert_eq!(
            st.past_placements.last().unwrap().from,
            Some(at(318)),
            "oldest dropped first"
        );
    }
}
