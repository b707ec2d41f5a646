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
    /// Minimum bandwidth of every hop between the GPUs of one worker/replica, in GB/s
    /// (bidirectional, as the placement scores links: H100 NVSwitch ≈ 900, A100 ≈ 600, V100 NV2
    /// ≈ 100, NV1 ≈ 50, PCIe below 10). A set fits only if its best ring — the cycle through its
    /// GPUs whose weakest hop is strongest, what a ring all-reduce runs at — has no hop below
    /// it. Ignored for one GPU per pod.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self > 0 && self <= 100000").message("gpu.minLinkGBps must be between 1 and 100000"))]
    #[serde(rename = "minLinkGBps")]
    pub min_link_gbps: Option<i64>,
}

/// Environment variables gpupool sets in the GPU container of every pod it creates; a template
/// that sets one of them is rejected (the value would be silently replaced otherwise).
pub const RESERVED_ENV: &[&str] = &[
    "NVIDIA_VISIBLE_DEVICES",
    "CUDA_VISIBLE_DEVICES",
    "RANK",
    "NODE_RANK",
    "WORLD_SIZE",
    "MASTER_ADDR",
    "MASTER_PORT",
    "REPLICA_INDEX",
    "GPUPOOL_GANG_GENERATION",
];

/// Extended resource names gpupool requests itself (device-plugin members); a template container
/// that asks for one is rejected.
pub const RESERVED_RESOURCES: &[&str] = &["nvidia.com/gpu"];

/// Name of the pod-level resource claim gpupool adds for the GPUs (DRA members).
pub const GPU_CLAIM_NAME: &str = "gpupool-gpus";

/// Longest image reference accepted in a template (Docker's own limit on a reference is 255 for
/// the name plus tag and digest; 512 leaves room for registries with long host names).
pub const MAX_IMAGE_LEN: usize = 512;

/// An image reference: `[host[:port]/]path[:tag][@algorithm:hex]`, the grammar of
/// `github.com/distribution/reference` (RE2 syntax, usable from CEL).
pub const IMAGE_REFERENCE_PATTERN: &str = r"^(?:(?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9])(?:[.](?:[a-zA-Z0-9]|[a-zA-Z0-9][a-zA-Z0-9-]*[a-zA-Z0-9]))*(?::[0-9]+)?/)?[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*(?:/[a-z0-9]+(?:(?:[._]|__|[-]+)[a-z0-9]+)*)*(?::[A-Za-z0-9_][A-Za-z0-9_.-]{0,127})?(?:@[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,})?$";

/// Schema of a pod template field: the fields gpupool validates are declared (with the bounds the
/// API server's CEL cost estimator needs); everything else in a `PodTemplateSpec` is kept as
/// written (`x-kubernetes-preserve-unknown-fields`) and validated by the member's API server when
/// the pod is created. JobSet and Kueue embed the full pod schema instead (≈ 500 KiB per CRD);
/// the trimmed schema keeps each CRD small and the hub independent of the members' Kubernetes
/// versions.
/// Schema of `gpuContainers`: a set of at most 32 container names.
pub fn gpu_containers_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Names of the template's containers that get the GPUs (default: the first container). On DRA members each of them references the pod's GPU claim and sees all of the chosen GPUs; on device-plugin members the kubelet cannot hand the same devices to two containers, so only the first one listed requests them (`nvidia.com/gpu`, `NVIDIA_VISIBLE_DEVICES`). Every name must be a container of the template (not an init container).",
        "type": "array",
        "maxItems": 32,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "minLength": 1, "maxLength": 63},
    })
}

pub fn pod_template_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    let bounded_map = serde_json::json!({
        "type": "object",
        "maxProperties": 64,
        "additionalProperties": {"x-kubernetes-int-or-string": true, "anyOf": [{"type": "integer"}, {"type": "string"}]},
    });
    let seccomp = serde_json::json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {"type": {"type": "string", "maxLength": 64}},
    });
    let container = serde_json::json!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "required": ["name"],
        "x-kubernetes-validations": cel_rules(CONTAINER_RULES),
        "properties": {
            "name": {"type": "string", "maxLength": 63},
            "ports": {
                "type": "array",
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "properties": {"hostPort": {"type": "integer"}},
                },
            },
            "securityContext": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "privileged": {"type": "boolean"},
                    "allowPrivilegeEscalation": {"type": "boolean"},
                    "procMount": {"type": "string", "maxLength": 64},
                    "seccompProfile": seccomp.clone(),
                    "capabilities": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": true,
                        "properties": {
                            "add": {"type": "array", "maxItems": 64, "items": {"type": "string", "maxLength": 64}},
                        },
                    },
                },
            },
            "image": {"type": "string", "maxLength": MAX_IMAGE_LEN},
            "env": {
                "type": "array",
                "maxItems": 256,
                "items": {
                    "type": "object",
                    "x-kubernetes-preserve-unknown-fields": true,
                    "required": ["name"],
                    "properties": {"name": {"type": "string", "maxLength": 256}},
                },
            },
            "resources": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {"limits": bounded_map, "requests": bounded_map},
            },
        },
    });
    let string_map =
        serde_json::json!({"type": "object", "additionalProperties": {"type": "string"}});
    serde_json::from_value(serde_json::json!({
        "description": "Pod template (a core/v1 PodTemplateSpec) for every pod of the job. gpupool keeps it as written and adds only what it owns: the GPU binding of the first container or those named in gpuContainers (a ResourceClaim on DRA members, `nvidia.com/gpu` and `NVIDIA_VISIBLE_DEVICES` on device-plugin members), node pinning (node affinity on DRA members, `nodeName` otherwise), the reserved environment variables, gpupool's labels and annotations, and for training `hostname`, `subdomain` and `restartPolicy: Never`. Templates that set `nodeName`, request `nvidia.com/gpu`, set a reserved environment variable or use the claim name `gpupool-gpus` are rejected, and so is whatever would reach beyond the job's own pods in a member owned by someone else: host namespaces, `hostPath` volumes, host ports, privileged containers, added capabilities, privilege escalation, an `Unconfined` seccomp profile, an unmasked `/proc`, sysctls, a `serviceAccountName` or `automountServiceAccountToken: true`, a `schedulerName` and the `system-*` priority classes.",
        "type": "object",
        "required": ["spec"],
        "properties": {
            "metadata": {
                "type": "object",
                "properties": {"labels": string_map, "annotations": string_map},
            },
            "spec": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "required": ["containers"],
                "x-kubernetes-validations": cel_rules(POD_SPEC_RULES),
                "properties": {
                    "nodeName": {"type": "string", "maxLength": 253},
                    "securityContext": {
                        "type": "object",
                        "x-kubernetes-preserve-unknown-fields": true,
                        "properties": {
                            "seccompProfile": seccomp,
                            "sysctls": {
                                "type": "array",
                                "maxItems": 64,
                                "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true},
                            },
                        },
                    },
                    "hostNetwork": {"type": "boolean"},
                    "hostPID": {"type": "boolean"},
                    "hostIPC": {"type": "boolean"},
                    "serviceAccountName": {"type": "string", "maxLength": 253},
                    "serviceAccount": {"type": "string", "maxLength": 253},
                    "automountServiceAccountToken": {"type": "boolean"},
                    "schedulerName": {"type": "string", "maxLength": 253},
                    "priorityClassName": {"type": "string", "maxLength": 253},
                    "volumes": {
                        "type": "array",
                        "maxItems": 256,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "properties": {"hostPath": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                        },
                    },
                    "containers": {"type": "array", "minItems": 1, "maxItems": 32, "items": container},
                    "initContainers": {"type": "array", "maxItems": 32, "items": container},
                    "resourceClaims": {
                        "type": "array",
                        "maxItems": 32,
                        "items": {
                            "type": "object",
                            "x-kubernetes-preserve-unknown-fields": true,
                            "required": ["name"],
                            "properties": {"name": {"type": "string", "maxLength": 63}},
                        },
                    },
                },
            },
        },
    }))
    .expect("static schema is valid")
}

/// The tenant sandbox at the hub's admission: CEL rules on a template's pod spec, each
/// `(rule, message)`, the message naming the field. A hub user gets GPUs in a member owned by
/// someone else and nothing more, so no host namespaces, no host paths, no ServiceAccount (the
/// pods run under the tenant namespace's `default` one, without a token), no other scheduler and
/// no system priority class. The member enforces the same again (Pod Security in the tenant
/// namespace, the push role and admission policy, the pull agent's checks).
pub const POD_SPEC_RULES: &[(&str, &str)] = &[
    (
        "!has(self.hostNetwork) || !self.hostNetwork",
        "template.spec.hostNetwork must not be set: gpupool's pods get no host namespaces in a member",
    ),
    (
        "!has(self.hostPID) || !self.hostPID",
        "template.spec.hostPID must not be set: gpupool's pods get no host namespaces in a member",
    ),
    (
        "!has(self.hostIPC) || !self.hostIPC",
        "template.spec.hostIPC must not be set: gpupool's pods get no host namespaces in a member",
    ),
    (
        "!has(self.serviceAccountName) && !has(self.serviceAccount)",
        "template.spec.serviceAccountName must not be set: gpupool's pods run under their tenant namespace's default ServiceAccount, without API access",
    ),
    (
        "!has(self.automountServiceAccountToken) || !self.automountServiceAccountToken",
        "template.spec.automountServiceAccountToken must not be true: gpupool's pods get no API token in a member",
    ),
    (
        "!has(self.schedulerName) || self.schedulerName == 'default-scheduler'",
        "template.spec.schedulerName must not be set: the member's default scheduler binds the GPUs gpupool chose",
    ),
    (
        "!has(self.priorityClassName) || !self.priorityClassName.startsWith('system-')",
        "template.spec.priorityClassName must not be a system priority class (system-*): they are the member's own",
    ),
    (
        "!has(self.volumes) || self.volumes.all(v, !has(v.hostPath))",
        "template.spec.volumes must not use hostPath: gpupool's pods see nothing of a member's nodes",
    ),
    (
        "!has(self.securityContext) || !has(self.securityContext.seccompProfile) || self.securityContext.seccompProfile.type != 'Unconfined'",
        "template.spec.securityContext.seccompProfile.type must not be Unconfined: gpupool's pods keep the runtime's seccomp filter in a member",
    ),
    (
        "!has(self.securityContext) || !has(self.securityContext.sysctls) || size(self.securityContext.sysctls) == 0",
        "template.spec.securityContext.sysctls must not be set: a pod's sysctls reach the kernel of a member's node",
    ),
];

/// CEL rules on every container and init container of a template (see [`POD_SPEC_RULES`]).
pub const CONTAINER_RULES: &[(&str, &str)] = &[
    (
        "!has(self.ports) || self.ports.all(p, !has(p.hostPort) || p.hostPort == 0)",
        "template containers must not set ports[].hostPort: gpupool's pods get no host ports in a member",
    ),
    (
        "!has(self.securityContext) || !has(self.securityContext.privileged) || !self.securityContext.privileged",
        "template containers must not set securityContext.privileged: gpupool's pods are not privileged in a member",
    ),
    (
        "!has(self.securityContext) || !has(self.securityContext.capabilities) || !has(self.securityContext.capabilities.add) || size(self.securityContext.capabilities.add) == 0",
        "template containers must not set securityContext.capabilities.add: gpupool's pods get no added capabilities in a member",
    ),
    (
        "!has(self.securityContext) || !has(self.securityContext.allowPrivilegeEscalation) || !self.securityContext.allowPrivilegeEscalation",
        "template containers must not set securityContext.allowPrivilegeEscalation to true: gpupool's pods gain no privileges in a member",
    ),
    (
        "!has(self.securityContext) || !has(self.securityContext.seccompProfile) || self.securityContext.seccompProfile.type != 'Unconfined'",
        "template containers must not set securityContext.seccompProfile.type to Unconfined: gpupool's pods keep the runtime's seccomp filter in a member",
    ),
    (
        "!has(self.securityContext) || !has(self.securityContext.procMount) || self.securityContext.procMount == 'Default'",
        "template containers must not set securityContext.procMount other than Default: gpupool's pods see a masked /proc in a member",
    ),
];

fn cel_rules(rules: &[(&str, &str)]) -> serde_json::Value {
    rules
        .iter()
        .map(|(rule, message)| serde_json::json!({"rule": rule, "message": message}))
        .collect()
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
    /// Indexes of those GPUs on their node (NVML numbering, as `nvidia-smi` shows them), in the
    /// order of `gpuUuids`; empty when the node's topology was unknown as it was written.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub gpu_indexes: Vec<i32>,
    /// Topology score of the GPU set (higher is better-connected).
    #[serde(default)]
    pub score: i64,
    /// Inference replicas: revision of the rolled spec fields the replica runs.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub revision: String,
    /// Inference replicas: whether its pod is Ready.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub ready: bool,
    /// Inference replicas: when the hub placed the replica, by the hub's own clock (kept when
    /// it moves to `pastPlacements`: the start of the window in which it was current). The
    /// meter pays its pod from then on, never earlier.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub placed_at: Option<k8s_openapi::apimachinery::pkg::apis::meta::v1::Time>,
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
    /// A paid pool could not renew the job's reservation: it is stopped after a grace.
    pub const BUDGET_EXHAUSTED: &str = "BudgetExhausted";
    /// An InferenceJob's replicas run the current revision of its spec (`RolloutComplete`) or
    /// are being replaced (`RollingUpdate`).
    pub const PROGRESSING: &str = "Progressing";
    /// The job's GPUs were taken back for another job (`PreemptedByPriority`: a job of higher
    /// priority in its queue; `Reclaimed`: a queue reclaiming the quota it lent): it waits in
    /// its queue again, in its original order.
    pub const PREEMPTED: &str = "Preempted";
}
