//! `InferenceJob`: replicated serving, which may spread over member clusters.

use super::common::{
    ClusterSelector, GpuSelector, NodeGpus, NvLinkMode, conditions_schema, gpu_containers_schema,
    pod_template_schema,
};
use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A replicated inference service.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "InferenceJob",
    plural = "inferencejobs",
    shortname = "ij",
    category = "gpupool",
    label("app.kubernetes.io/part-of", "gpupool"),
    namespaced,
    status = "InferenceJobStatus",
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$')").message("metadata.name must be a DNS label (lowercase letters, digits and '-', starting with a letter, no dots): it names the replicas' Service"),
    validation = Rule::new("size(self.metadata.name) <= 63").message("metadata.name must be at most 63 characters: it names the replicas' Service and labels"),
    doc = "Replicated GPU inference serving, placed by gpupool on one or more member clusters.",
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Queue",
        type_ = "string",
        json_path = ".spec.queue",
        priority = 1
    ),
    printcolumn(name = "Replicas", type_ = "integer", json_path = ".spec.replicas"),
    printcolumn(name = "Ready", type_ = "integer", json_path = ".status.readyReplicas"),
    printcolumn(
        name = "Up-to-date",
        type_ = "integer",
        json_path = ".status.updatedReplicas"
    ),
    printcolumn(name = "GPUs", type_ = "integer", json_path = ".spec.gpusPerReplica"),
    printcolumn(name = "Clusters", type_ = "string", json_path = ".status.clusters"),
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
pub struct InferenceJobSpec {
    /// The replicas' pod template. A replica counts as ready only when its pod is Ready, so give
    /// the server container a readiness probe. A change rolls out replica by replica (see
    /// `rollout`), as do changes of `gpusPerReplica`, `gpu` and `nvlink`.
    #[x_kube(
        validation = Rule::new("!has(self.spec.nodeName)").message("template.spec.nodeName must not be set: gpupool pins every pod to the node it chose"),
        validation = Rule::new("self.spec.containers.all(c, has(c.image) && size(c.image) > 0) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, has(c.image) && size(c.image) > 0))").message("every container in the template needs an image"),
        validation = Rule::new("self.spec.containers.all(c, !has(c.image) || c.image.matches('^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$')) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, !has(c.image) || c.image.matches('^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$')))").message("container image must be an image reference such as registry.example.com/team/app:1.0 or name@sha256:<digest>"),
        validation = Rule::new("self.spec.containers.all(c, !has(c.resources) || ((!has(c.resources.limits) || !('nvidia.com/gpu' in c.resources.limits)) && (!has(c.resources.requests) || !('nvidia.com/gpu' in c.resources.requests)))) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, !has(c.resources) || ((!has(c.resources.limits) || !('nvidia.com/gpu' in c.resources.limits)) && (!has(c.resources.requests) || !('nvidia.com/gpu' in c.resources.requests)))))").message("template containers must not request nvidia.com/gpu: gpupool binds the exact GPUs it chose (set gpusPerReplica instead)"),
        validation = Rule::new("self.spec.containers.all(c, !has(c.env) || c.env.all(e, !(e.name in ['NVIDIA_VISIBLE_DEVICES', 'CUDA_VISIBLE_DEVICES', 'RANK', 'NODE_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'REPLICA_INDEX', 'GPUPOOL_GANG_GENERATION']))) && (!has(self.spec.initContainers) || self.spec.initContainers.all(c, !has(c.env) || c.env.all(e, !(e.name in ['NVIDIA_VISIBLE_DEVICES', 'CUDA_VISIBLE_DEVICES', 'RANK', 'NODE_RANK', 'WORLD_SIZE', 'MASTER_ADDR', 'MASTER_PORT', 'REPLICA_INDEX', 'GPUPOOL_GANG_GENERATION']))))").message("template env must not set NVIDIA_VISIBLE_DEVICES, CUDA_VISIBLE_DEVICES, RANK, NODE_RANK, WORLD_SIZE, MASTER_ADDR, MASTER_PORT, REPLICA_INDEX or GPUPOOL_GANG_GENERATION: gpupool sets them"),
        validation = Rule::new("!has(self.spec.resourceClaims) || self.spec.resourceClaims.all(r, r.name != 'gpupool-gpus')").message("the resource claim name gpupool-gpus is reserved for the GPUs gpupool binds")
    )]
    #[schemars(schema_with = "pod_template_schema")]
    pub template: PodTemplateSpec,
    /// Containers of the template that get the GPUs (default: the first container). On DRA
    /// members each of them references the pod's GPU claim and sees all the chosen GPUs; on
    /// device-plugin members only the first of them in template order requests the GPUs (the
    /// kubelet hands a device to one container only). Every name must be a container of the
    /// template.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "gpu_containers_schema")]
    pub gpu_containers: Vec<String>,
    /// Port the server listens on (the template's container must listen there); exposed by a
    /// Service in each member. Immutable: the Services in the members keep it.
    #[serde(default = "default_port")]
    #[x_kube(
        validation = Rule::new("self >= 1 && self <= 65535").message("port must be between 1 and 65535"),
        validation = Rule::new("self == oldSelf").message("port is immutable: delete and recreate the job to change it")
    )]
    pub port: i32,
    /// Number of replicas. Changing it scales: replicas are added or the highest indexes
    /// removed, the others keep running.
    #[x_kube(validation = Rule::new("self >= 0 && self <= 1000").message("replicas must be between 0 and 1000"))]
    pub replicas: i32,
    /// GPUs per replica, all on one node. A change rolls out like a template change.
    #[x_kube(validation = Rule::new("self >= 1 && self <= 16").message("gpusPerReplica must be between 1 and 16"))]
    pub gpus_per_replica: i32,
    /// Which GPUs qualify. A change rolls out like a template change.
    #[serde(default)]
    pub gpu: GpuSelector,
    /// NVLink rule for each replica's GPUs (a change rolls out like a template change). `clique`: every pair NVLink-connected (directly or
    /// through NVSwitch). `ring`: an all-NVLink cycle through all of them exists. `preferred`
    /// (default): the best-connected free set, PCIe-only if nothing better is free. `none`:
    /// topology ignored. `required`: alias of `clique`.
    #[serde(default)]
    pub nvlink: NvLinkMode,
    /// Deprecated: `true` means `placement.spread.maxSkew: 1` (ignored when `placement.spread`
    /// is set).
    #[serde(default)]
    pub spread_across_clusters: bool,
    /// Which member clusters replicas may share. Without it all replicas run on one member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placement: Option<ReplicaPlacement>,
    /// Only members whose labels match all of these are considered.
    #[serde(default, skip_serializing_if = "ClusterSelector::is_empty")]
    pub cluster_selector: ClusterSelector,
    /// Scheduling priority: waiting jobs of higher priority are placed first; within a priority,
    /// older jobs first.
    #[serde(default, skip_serializing_if = "is_zero")]
    pub priority: i32,
    /// How a change of `template`, `gpusPerReplica`, `gpu` or `nvlink` rolls out: replica by
    /// replica, each new replica placed by the scheduler and Ready before the old one it replaces
    /// is deleted, within `maxSurge` / `maxUnavailable`. `clusterSelector`, `placement` and
    /// `priority` apply to placements from then on (running replicas are not moved).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rollout: Option<RolloutStrategy>,
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
}

/// Rolling-update budgets, as in a Deployment's `strategy.rollingUpdate`.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!(has(self.maxSurge) && has(self.maxUnavailable) && (type(self.maxSurge) == int ? self.maxSurge == 0 : self.maxSurge == '0%') && (type(self.maxUnavailable) == int ? self.maxUnavailable == 0 : self.maxUnavailable == '0%'))").message("maxSurge and maxUnavailable must not both be 0: the rollout could not make progress"))]
pub struct RolloutStrategy {
    /// Replicas placed above `replicas` during a rollout: a count or a percentage of `replicas`
    /// (rounded up). Default 25%. A surge replica needs free GPUs of its own.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_percent_schema")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 && self <= 1000 : self.matches('^(100|[1-9]?[0-9])%$')").message("maxSurge must be a count from 0 to 1000 or a percentage from 0% to 100%"))]
    pub max_surge: Option<IntOrString>,
    /// Replicas that may be unavailable (not Ready) during a rollout: a count or a percentage of
    /// `replicas` (rounded down). Default 25%. 0 means every old replica stays until its
    /// replacement is Ready.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_percent_schema")]
    #[x_kube(validation = Rule::new("type(self) == int ? self >= 0 && self <= 1000 : self.matches('^(100|[1-9]?[0-9])%$')").message("maxUnavailable must be a count from 0 to 1000 or a percentage from 0% to 100%"))]
    pub max_unavailable: Option<IntOrString>,
}

fn int_or_percent_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    serde_json::from_value(serde_json::json!({
        "x-kubernetes-int-or-string": true,
        "anyOf": [{"type": "integer"}, {"type": "string"}],
    }))
    .expect("static schema")
}

fn default_port() -> i32 {
    8000
}

/// How an inference job's replicas are distributed over member clusters.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReplicaPlacement {
    /// Spread replicas evenly over members (or over the values of a member label).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spread: Option<SpreadPolicy>,
    /// At most this many replicas on one member cluster; setting it lets replicas use several
    /// members.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxReplicasPerCluster must be at least 1"))]
    pub max_replicas_per_cluster: Option<i32>,
}

/// Even spread over domains (members, or groups of members sharing a label value).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SpreadPolicy {
    /// Largest allowed difference between the replicas in one domain and in the emptiest domain
    /// that can still take a replica (a full domain does not hold the others back).
    #[serde(default = "default_max_skew")]
    #[x_kube(validation = Rule::new("self >= 1").message("maxSkew must be at least 1"))]
    pub max_skew: i32,
    /// Member label whose values are the domains (`region` is the member's `spec.region`).
    /// Unset: every member is its own domain. Members without the label get no replicas.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 317").message("topologyKey must be 1-317 characters"))]
    pub topology_key: Option<String>,
}

fn default_max_skew() -> i32 {
    1
}

impl Default for SpreadPolicy {
    fn default() -> Self {
        SpreadPolicy {
            max_skew: 1,
            topology_key: None,
        }
    }
}

impl ReplicaPlacement {
    /// Whether replicas may use more than one member.
    pub fn multi_cluster(&self) -> bool {
        self.spread.is_some() || self.max_replicas_per_cluster.is_some()
    }
}

impl InferenceJobSpec {
    /// The placement policy in force: `placement`, with the deprecated `spreadAcrossClusters:
    /// true` read as `spread: {maxSkew: 1}` when `placement.spread` is unset.
    pub fn effective_placement(&self) -> ReplicaPlacement {
        let mut p = self.placement.clone().unwrap_or_default();
        if self.spread_across_clusters && p.spread.is_none() {
            p.spread = Some(SpreadPolicy::default());
        }
        p
    }
}

/// Phase of an inference job.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum InferencePhase {
    /// Waiting for capacity.
    #[default]
    Pending,
    /// Placed; pods are starting.
    Scheduled,
    /// All replicas ready.
    Running,
    /// Some replicas are not ready or not placed.
    Degraded,
}

/// Replicas placed on one member cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClusterPlacement {
    /// Member cluster name.
    pub cluster: String,
    /// Replica indexes placed there (an index appears twice while its replacement starts).
    pub replicas: Vec<i32>,
    /// Ready replicas there.
    #[serde(default)]
    pub ready_replicas: i32,
    /// Node and GPUs per replica (same order as `replicas`).
    #[serde(default)]
    pub gpus: Vec<NodeGpus>,
}

/// A replica placement that is no longer current (the replica was replaced, moved, withdrawn or
/// scaled away), and until when it was: its pod is paid for its run up to then, and no longer.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PastReplica {
    /// Member cluster it ran on.
    pub cluster: String,
    /// Replica index.
    pub index: i32,
    /// Its node and GPUs (with the revision it ran).
    pub gpus: NodeGpus,
    /// When it left the job's placements.
    pub until: Time,
}

/// How many earlier replica placements an `InferenceJob` keeps at least in
/// `status.pastPlacements` (at most twice `spec.replicas` when that is more).
pub const MIN_PAST_REPLICAS: usize = 8;

impl InferenceJobStatus {
    /// Records in `pastPlacements`, as ended at `now`, every replica placement of `before` that
    /// this status no longer has, keeping the last `max(MIN_PAST_REPLICAS, 2 × replicas)`.
    pub fn retire_replicas(&mut self, before: &[ClusterPlacement], now: Time, replicas: i32) {
        let key = |c: &str, i: i32, g: &NodeGpus| {
            let mut u = g.gpu_uuids.clone();
            u.sort();
            (c.to_string(), i, g.node.clone(), u, g.revision.clone())
        };
        let placed = |ps: &[ClusterPlacement]| -> Vec<(String, i32, NodeGpus)> {
            ps.iter()
                .flat_map(|p| {
                    p.replicas
                        .iter()
                        .zip(&p.gpus)
                        .map(|(i, g)| (p.cluster.clone(), *i, g.clone()))
                })
                .collect()
        };
        let still: std::collections::BTreeSet<_> = placed(&self.placements)
            .iter()
            .map(|(c, i, g)| key(c, *i, g))
            .collect();
        for (cluster, index, gpus) in placed(before) {
            if still.contains(&key(&cluster, index, &gpus)) {
                continue;
            }
            self.past_placements.push(PastReplica {
                cluster,
                index,
                gpus: NodeGpus {
                    ready: false,
                    ..gpus
                },
                until: now.clone(),
            });
        }
        let keep = MIN_PAST_REPLICAS.max(2 * usize::try_from(replicas).unwrap_or(0));
        let excess = self.past_placements.len().saturating_sub(keep);
        self.past_placements.drain(..excess);
    }
}

/// Observed state of an inference job.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct InferenceJobStatus {
    /// Current phase.
    #[serde(default)]
    pub phase: InferencePhase,
    /// Placement per member cluster.
    #[serde(default)]
    pub placements: Vec<ClusterPlacement>,
    /// Replica placements that are no longer current, oldest first (see
    /// [`InferenceJobStatus::retire_replicas`]): the meter pays a pod of one for the time it was
    /// current, and nothing else.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub past_placements: Vec<PastReplica>,
    /// Comma-separated member clusters in use (for `kubectl get`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub clusters: Option<String>,
    /// Ready replicas over all clusters (during a rollout, old and new ones).
    #[serde(default)]
    pub ready_replicas: i32,
    /// Replicas (of `spec.replicas`) placed with the current revision of the rolled fields.
    #[serde(default)]
    pub updated_replicas: i32,
    /// Revision (hash of `template`, `gpusPerReplica`, `gpu`, `nvlink`) that replicas are rolled
    /// to; each replica's own is in `placements[].gpus[].revision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Service endpoints (`cluster/namespace/service:port`).
    #[serde(default)]
    pub endpoints: Vec<String>,
    /// The job's endpoint on the hub's inference gateway (`<gateway>/<namespace>/<name>/`),
    /// forwarding to a Ready replica in any member; set when the operator knows the gateway's
    /// address (`--gateway-url`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub url: Option<String>,
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
    /// Generation of the spec that is realized: every replica of it placed, running the spec's
    /// revision and Ready, nothing else left. It lags `metadata.generation` while a change
    /// rolls out or waits for GPUs.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

fn is_zero(v: &i32) -> bool {
    *v == 0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gpus(node: &str, uuids: &[&str], revision: &str) -> NodeGpus {
        NodeGpus {
            node: node.into(),
            gpu_uuids: uuids.iter().map(|u| u.to_string()).collect(),
            gpu_indexes: Vec::new(),
            score: 0,
            revision: revision.into(),
            ready: true,
            placed_at: None,
        }
    }

    fn at(s: i64) -> Time {
        Time(k8s_openapi::jiff::Timestamp::from_second(s).unwrap())
    }

    #[test]
    fn replicas_that_leave_the_placements_are_kept_as_past_ones() {
        let before = vec![
            ClusterPlacement {
                cluster: "east".into(),
                replicas: vec![0, 1],
                ready_replicas: 2,
                gpus: vec![gpus("n1", &["a", "b"], "r1"), gpus("n2", &["c"], "r1")],
            },
            ClusterPlacement {
                cluster: "west".into(),
                replicas: vec![2],
                ready_replicas: 1,
                gpus: vec![gpus("n3", &["d"], "r1")],
            },
        ];
        // Replica 1 replaced by revision r2 on the same GPUs, replica 2 gone with its member;
        // replica 0 stays (its UUIDs listed in another order, its readiness changed).
        let mut st = InferenceJobStatus {
            placements: vec![ClusterPlacement {
                cluster: "east".into(),
                replicas: vec![0, 1],
                ready_replicas: 0,
                gpus: vec![
                    NodeGpus {
                        ready: false,
                        ..gpus("n1", &["b", "a"], "r1")
                    },
                    gpus("n2", &["c"], "r2"),
                ],
            }],
            ..Default::default()
        };
        st.retire_replicas(&before, at(100), 3);
        let past: Vec<_> = st
            .past_placements
            .iter()
            .map(|p| {
                (
                    p.cluster.as_str(),
                    p.index,
                    p.gpus.revision.as_str(),
                    p.until.clone(),
                )
            })
            .collect();
        assert_eq!(
            past,
            [("east", 1, "r1", at(100)), ("west", 2, "r1", at(100))]
        );
        assert!(st.past_placements.iter().all(|p| !p.gpus.ready));
        // Nothing left since: nothing more recorded.
        let now = st.placements.clone();
        st.retire_replicas(&now, at(200), 3);
        assert_eq!(st.past_placements.len(), 2);
        // Bounded: the newest max(8, 2 × replicas) are kept.
        for i in 0..20 {
            let gone = vec![ClusterPlacement {
                cluster: "east".into(),
                replicas: vec![i],
                ready_replicas: 0,
                gpus: vec![gpus("n9", &["z"], "r1")],
            }];
            st.retire_replicas(&gone, at(300 + i64::from(i)), 3);
        }
        assert_eq!(st.past_placements.len(), MIN_PAST_REPLICAS);
        assert_eq!(st.past_placements.last().unwrap().until, at(319));
        st.retire_replicas(&before, at(400), 10);
        assert_eq!(st.past_placements.len(), MIN_PAST_REPLICAS + 2);
    }
}
