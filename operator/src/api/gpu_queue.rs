//! `GpuQueue`: a tenant's share of the pool — a nominal GPU quota per GPU class, borrowing and
//! lending within a cohort, and a fair-sharing weight.

use super::common::conditions_schema;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// GPU classes a quota can name, most specific first: a GPU's class is the first of these its
/// model name contains (case-insensitively), so `NVIDIA A100-SXM4-80GB` is `A100`, not `A10`, and
/// `NVIDIA L40S` is `L40S`, not `L4`.
pub const GPU_CLASSES: &[&str] = &[
    "GH200", "B200", "H200", "H100", "A100", "A6000", "A10", "L40S", "L40", "L4", "V100", "T4",
];

/// The quota class that counts GPUs of every class the queue names no quota for.
pub const ANY_CLASS: &str = "any";

/// The class of a GPU model (see [`GPU_CLASSES`]); models of no known class are `other`, which
/// only an `any` quota covers.
pub fn gpu_class(model: &str) -> &'static str {
    let upper = model.to_ascii_uppercase();
    GPU_CLASSES
        .iter()
        .find(|c| upper.contains(*c))
        .copied()
        .unwrap_or("other")
}

/// A queue jobs submit to: how many GPUs of each class its jobs may hold, how much of that it
/// lends to its cohort while idle, and how much it may borrow.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "GpuQueue",
    plural = "gpuqueues",
    shortname = "gq",
    category = "gpupool",
    label("app.kubernetes.io/part-of", "gpupool"),
    status = "GpuQueueStatus",
    validation = Rule::new("self.metadata.name.matches('^[a-z]([-a-z0-9]*[a-z0-9])?$') && size(self.metadata.name) <= 63").message("metadata.name must be a DNS label (lowercase letters, digits and '-', starting with a letter, at most 63 characters): jobs name their queue by it"),
    doc = "A queue with GPU quotas per GPU class. Cluster-scoped. Jobs of the namespaces it lists (or that name it in spec.queue) are placed only within its nominal quota, or within idle quota its cohort lends, up to its borrowing limit. Jobs outside every queue are not limited.",
    printcolumn(name = "Cohort", type_ = "string", json_path = ".spec.cohort"),
    printcolumn(name = "Weight", type_ = "integer", json_path = ".spec.weight"),
    printcolumn(
        name = "Nominal",
        type_ = "integer",
        description = "GPUs of nominal quota, all classes",
        json_path = ".status.nominalGpus"
    ),
    printcolumn(
        name = "Used",
        type_ = "integer",
        description = "GPUs its jobs hold, all classes",
        json_path = ".status.usedGpus"
    ),
    printcolumn(
        name = "Borrowed",
        type_ = "integer",
        description = "GPUs held beyond its nominal quota",
        json_path = ".status.borrowedGpus"
    ),
    printcolumn(
        name = "Pending",
        type_ = "integer",
        description = "Jobs waiting",
        json_path = ".status.pendingJobs"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct GpuQueueSpec {
    /// Namespaces whose jobs submit to this queue when they name none (`spec.queue`); a job
    /// that names this queue must be in one of them too. A namespace listed by several queues
    /// defaults to the first of them by name.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "namespaces_schema")]
    #[x_kube(validation = Rule::new("self.all(n, size(n) > 0 && size(n) <= 63 && n.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$'))").message("namespaces must be namespace names (DNS labels of at most 63 characters)"))]
    pub namespaces: Vec<String>,
    /// Queues with the same cohort lend each other their idle quota of a class (up to each
    /// one's `lendingLimit`). Unset: the pool's cohort, shared by every queue that names none.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("size(self) > 0 && size(self) <= 63").message("cohort must be 1-63 characters"))]
    pub cohort: Option<String>,
    /// Fair-sharing weight: among queues of a cohort borrowing the same idle GPUs, the one with
    /// the lowest borrowed share divided by its weight goes first (1-1000, default 1).
    #[serde(default = "default_weight")]
    #[x_kube(validation = Rule::new("self >= 1 && self <= 1000").message("weight must be between 1 and 1000"))]
    pub weight: i32,
    /// Nominal quota per GPU class, at most one entry per class.
    #[schemars(length(max = 16))]
    #[x_kube(
        validation = Rule::new("self.all(q, self.exists_one(r, r.gpuClass == q.gpuClass))").message("quotas must name each gpuClass at most once"),
        validation = Rule::new("size(self) >= 1").message("quotas needs at least one entry")
    )]
    pub quotas: Vec<ClassQuota>,
}

/// Schema of `namespaces`: a set of at most 256 namespace names (bounded, so the API server's
/// CEL cost estimate of the rule on them stays small).
fn namespaces_schema(_: &mut schemars::SchemaGenerator) -> schemars::Schema {
    schemars::json_schema!({
        "description": "Namespaces whose jobs submit to this queue when they name none (spec.queue); a job that names this queue must be in one of them too. A namespace listed by several queues defaults to the first of them by name.",
        "type": "array",
        "maxItems": 256,
        "x-kubernetes-list-type": "set",
        "items": {"type": "string", "maxLength": 63},
    })
}

fn default_weight() -> i32 {
    1
}

/// The quota of one GPU class.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(self.lendingLimit) || self.lendingLimit <= self.nominal").message("lendingLimit must not exceed nominal: a queue lends only its own quota"))]
pub struct ClassQuota {
    /// GPU class: `GH200`, `B200`, `H200`, `H100`, `A100`, `A6000`, `A10`, `L40S`, `L40`, `L4`,
    /// `V100`, `T4`, or `any` (GPUs of every class without an entry of its own). A GPU's class
    /// is the first of these its model name contains.
    #[schemars(length(max = 16))]
    #[x_kube(validation = Rule::new("self in ['GH200', 'B200', 'H200', 'H100', 'A100', 'A6000', 'A10', 'L40S', 'L40', 'L4', 'V100', 'T4', 'any']").message("gpuClass must be one of GH200, B200, H200, H100, A100, A6000, A10, L40S, L40, L4, V100, T4 or any"))]
    pub gpu_class: String,
    /// GPUs of this class the queue's jobs may always hold (within what the pool has).
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10000000").message("nominal must be between 0 and 10000000"))]
    pub nominal: i32,
    /// GPUs the queue may hold beyond `nominal` by borrowing its cohort's idle quota (unset:
    /// no limit but the cohort's; 0: never borrows).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0 && self <= 10000000").message("borrowingLimit must be between 0 and 10000000"))]
    pub borrowing_limit: Option<i32>,
    /// Of `nominal`, GPUs the queue lends to its cohort while it does not use them (unset: all
    /// of them; at most `nominal`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("lendingLimit must not be negative"))]
    pub lending_limit: Option<i32>,
}

impl ClassQuota {
    /// GPUs of `nominal` the queue keeps for itself (never lent).
    pub fn guaranteed(&self) -> i64 {
        i64::from(self.nominal) - i64::from(self.lendable())
    }

    /// GPUs of `nominal` it lends while idle.
    pub fn lendable(&self) -> i32 {
        self.lending_limit
            .unwrap_or(self.nominal)
            .clamp(0, self.nominal.max(0))
    }
}

/// Use of one class's quota.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ClassUsage {
    /// GPU class (as in `spec.quotas`).
    pub gpu_class: String,
    /// Nominal quota.
    pub nominal: i64,
    /// GPUs the queue's jobs hold.
    pub used: i64,
    /// Of those, GPUs beyond `nominal` (borrowed from the cohort).
    pub borrowed: i64,
}

/// What the scheduler last counted for a queue.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct GpuQueueStatus {
    /// Use per quota class.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub classes: Vec<ClassUsage>,
    /// Nominal GPUs, all classes.
    #[serde(default)]
    pub nominal_gpus: i64,
    /// GPUs its jobs hold, all classes.
    #[serde(default)]
    pub used_gpus: i64,
    /// GPUs held beyond nominal, all classes.
    #[serde(default)]
    pub borrowed_gpus: i64,
    /// Jobs of the queue waiting for GPUs.
    #[serde(default)]
    pub pending_jobs: i64,
    /// Conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_model_has_the_most_specific_class_it_names() {
        assert_eq!(gpu_class("NVIDIA H100 80GB HBM3"), "H100");
        assert_eq!(gpu_class("NVIDIA A100-SXM4-80GB"), "A100");
        assert_eq!(gpu_class("NVIDIA A10"), "A10");
        assert_eq!(gpu_class("NVIDIA L40S"), "L40S");
        assert_eq!(gpu_class("NVIDIA L4"), "L4");
        assert_eq!(gpu_class("NVIDIA GH200 480GB"), "GH200");
        assert_eq!(gpu_class("Tesla V100-SXM2-16GB"), "V100");
        assert_eq!(gpu_class("NVIDIA RTX A6000"), "A6000");
        assert_eq!(gpu_class("Radeon"), "other");
    }

    #[test]
    fn lending_is_bounded_by_nominal() {
        let q = ClassQuota {
            gpu_class: "H100".into(),
            nominal: 8,
            borrowing_limit: None,
            lending_limit: None,
        };
        assert_eq!((q.lendable(), q.guaranteed()), (8, 0));
        let q = ClassQuota {
            lending_limit: Some(3),
            ..q
        };
        assert_eq!((q.lendable(), q.guaranteed()), (3, 5));
    }
}
