//! `UsageRecord`: the hub's durable record of one job's GPU-seconds on one member cluster in one
//! settlement period, written by the meter **before** anything is sent on chain.
//!
//! Life cycle (`status.state`): `Open` while the period is still running (the meter may grow
//! `spec.gpuSeconds`), `Final` once the period is over (waiting for settlement), `Settled` once
//! the ledger holds its usage receipt (`status.signature`, `status.amount`). A settled record
//! never changes again; the ledger program accepts one receipt per (cluster, job uid, period).
//!
//! Records are append-only facts, enforced by the API server itself (CEL transition rules):
//! the identity fields (cluster, its `kube-system` UID, owner wallet, job, period and its
//! bounds) never change; `gpuSeconds` never shrinks; the spec changes only while the record is
//! `Open`; the state only moves forward (Open → Final → Settled); a `Settled` status never
//! changes, except that `receiptClosedAt` is set once when the operator closes the on-chain
//! receipt past the settlement horizon. The chart's `ValidatingAdmissionPolicy` lets only the operator's ServiceAccount
//! create, change or delete them.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// One job's metered GPU-seconds on one member cluster in one settlement period.
// `printcolumn(name = ..., type_ = ...)` repeats keys by design.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "UsageRecord",
    plural = "usagerecords",
    shortname = "ur",
    category = "gpupool",
    label("app.kubernetes.io/part-of", "gpupool"),
    status = "UsageRecordStatus",
    validation = Rule::new("self.spec == oldSelf.spec || !has(oldSelf.status) || oldSelf.status.state == 'Open'").message("the spec of a Final or Settled usage record is immutable"),
    doc = "GPU-seconds one job used on one member cluster in one settlement period, and whether the ledger has paid them. Cluster-scoped; written by the operator's meter.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Job", type_ = "string", json_path = ".spec.jobName"),
    printcolumn(name = "Period", type_ = "integer", json_path = ".spec.period"),
    printcolumn(name = "GPU-s", type_ = "integer", json_path = ".spec.gpuSeconds"),
    printcolumn(
        name = "Unpaid-GPU-s",
        type_ = "integer",
        json_path = ".spec.unpaidGpuSeconds"
    ),
    printcolumn(name = "State", type_ = "string", json_path = ".status.state"),
    printcolumn(
        name = "Signature",
        type_ = "string",
        json_path = ".status.signature",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
pub struct UsageRecordSpec {
    /// Member cluster (its `MemberCluster` name) that ran the pods.
    #[x_kube(validation = Rule::new("self == oldSelf").message("cluster is immutable"))]
    pub cluster: String,
    /// UID of the member's `kube-system` namespace when the usage was metered: the cluster's
    /// identity on the ledger.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf").message("clusterUid is immutable"))]
    pub cluster_uid: String,
    /// The cluster owner's wallet when the usage was metered (base58).
    #[x_kube(validation = Rule::new("self == oldSelf").message("ownerWallet is immutable"))]
    pub owner_wallet: String,
    /// `TrainingJob` or `InferenceJob`.
    #[x_kube(validation = Rule::new("self == oldSelf").message("jobKind is immutable"))]
    pub job_kind: String,
    /// Namespace of the job on the hub.
    #[x_kube(validation = Rule::new("self == oldSelf").message("jobNamespace is immutable"))]
    pub job_namespace: String,
    /// Name of the job on the hub.
    #[x_kube(validation = Rule::new("self == oldSelf").message("jobName is immutable"))]
    pub job_name: String,
    /// `metadata.uid` of the job on the hub (the on-chain receipt is keyed by it).
    #[x_kube(validation = Rule::new("self == oldSelf").message("jobUid is immutable"))]
    pub job_uid: String,
    /// Settlement period number: `periodStart / periodSeconds` in unix seconds.
    #[x_kube(validation = Rule::new("self >= 0").message("period must not be negative"))]
    #[x_kube(validation = Rule::new("self == oldSelf").message("period is immutable"))]
    pub period: i64,
    /// Start of the period (inclusive).
    #[x_kube(validation = Rule::new("self == oldSelf").message("periodStart is immutable"))]
    pub period_start: Time,
    /// End of the period (exclusive).
    #[x_kube(validation = Rule::new("self == oldSelf").message("periodEnd is immutable"))]
    pub period_end: Time,
    /// GPU-seconds in this period: the sum of `pods[*].gpuSeconds`. Only grows, and only
    /// while the record is `Open`.
    #[x_kube(validation = Rule::new("self >= 0").message("gpuSeconds must not be negative"))]
    #[x_kube(validation = Rule::new("self >= oldSelf").message("gpuSeconds never decreases"))]
    pub gpu_seconds: i64,
    /// GPU-seconds the member's pods claimed in this period beyond what the hub can prove
    /// (no matching placement, times outside the job's life, more GPUs than placed): not paid.
    #[serde(default)]
    pub unpaid_gpu_seconds: i64,
    /// GPU class whose on-chain rate applies (see `metering::gpu_class`).
    #[x_kube(validation = Rule::new("self >= 0 && self < 8").message("gpuClass must be between 0 and 7"))]
    pub gpu_class: i32,
    /// Per placement slot contributions, keyed by the hub's slot (`<placement>/<node>/<GPU
    /// UUIDs>`: a gang generation or replica placed at a hub-clock instant, never a pod UID a
    /// member chooses). A pod replaced by a copy on the same slot merges (the maximum), never
    /// adds; a slot that disappears keeps its last value, so the record only grows.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub pods: BTreeMap<String, PodUsage>,
    /// The meter's seal over the rest of the spec (HMAC-SHA256 under a key only the operator
    /// holds, base64): the settler pays only records the meter wrote.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub seal: Option<String>,
}

/// One placement slot's contribution to a usage record.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PodUsage {
    /// Name (`namespace/name`) of the last pod seen on the slot in the member cluster.
    pub name: String,
    /// That pod's UID (informative: usage is keyed by the slot, not by it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_uid: Option<String>,
    /// When the hub's watch first saw that pod end: kept here so that an operator restart does
    /// not forget it (a pod that ended while the operator was down is not paid up to the
    /// restart).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_end: Option<Time>,
    /// GPUs of the slot.
    pub gpus: i64,
    /// GPU model the pod ran on, as annotated.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpu_model: Option<String>,
    /// GPU-seconds of this slot inside the period, within the hub's bounds: its GPUs × the
    /// union of its pods' runs within the placement window.
    pub gpu_seconds: i64,
    /// Why part of the pod's claimed usage is not paid, when it is not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub unpaid_reason: Option<String>,
}

/// Settlement state of a usage record.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum UsageState {
    /// The period is still running; GPU-seconds may grow.
    #[default]
    Open,
    /// The period is over; waiting to be settled on chain.
    Final,
    /// The ledger holds the usage receipt; tokens were minted.
    Settled,
}

impl std::fmt::Display for UsageState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            UsageState::Open => "Open",
            UsageState::Final => "Final",
            UsageState::Settled => "Settled",
        })
    }
}

/// Observed state of a usage record.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("!has(oldSelf.state) || oldSelf.state != 'Settled' || self == oldSelf || (has(self.receiptClosedAt) && !has(oldSelf.receiptClosedAt) && self.state == 'Settled' && (has(self.signature) == has(oldSelf.signature) && (!has(self.signature) || self.signature == oldSelf.signature)) && (has(self.amount) == has(oldSelf.amount) && (!has(self.amount) || self.amount == oldSelf.amount)) && (has(self.settledGpuSeconds) == has(oldSelf.settledGpuSeconds) && (!has(self.settledGpuSeconds) || self.settledGpuSeconds == oldSelf.settledGpuSeconds)) && (has(self.settledAt) == has(oldSelf.settledAt) && (!has(self.settledAt) || self.settledAt == oldSelf.settledAt)) && (has(self.attempts) == has(oldSelf.attempts) && (!has(self.attempts) || self.attempts == oldSelf.attempts)) && (has(self.message) == has(oldSelf.message) && (!has(self.message) || self.message == oldSelf.message)))").message("a Settled usage record is final (only receiptClosedAt may be set, once)"))]
pub struct UsageRecordStatus {
    /// `Open`, `Final` or `Settled`; moves only forward.
    #[serde(default)]
    #[x_kube(validation = Rule::new("self == oldSelf || (oldSelf == 'Open' && self != 'Open') || (oldSelf == 'Final' && self == 'Settled')").message("state moves only forward: Open, Final, Settled"))]
    pub state: UsageState,
    /// Signature of the transaction that recorded the receipt (absent when the receipt was
    /// found on chain by reconciliation rather than by this operator's confirmed send).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signature: Option<String>,
    /// Tokens (base units) minted for this record, as stored in the on-chain receipt.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub amount: Option<i64>,
    /// GPU-seconds the on-chain receipt paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_gpu_seconds: Option<i64>,
    /// When the record was marked settled.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub settled_at: Option<Time>,
    /// Failed settlement attempts so far.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub attempts: Option<i32>,
    /// Human-readable note (last settlement error, late usage, ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// When the operator closed the record's on-chain receipt (its period is past the pool's
    /// settlement horizon, so it can never be recorded again) and its rent went back to the
    /// payer. The only change a `Settled` record accepts, once.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub receipt_closed_at: Option<Time>,
}
