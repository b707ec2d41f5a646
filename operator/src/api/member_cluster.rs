//! `MemberCluster`: a GPU cluster registered into the pool by its owner.

use super::common::conditions_schema;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A member cluster: how the hub reaches it and who is paid for its GPUs.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "MemberCluster",
    plural = "memberclusters",
    shortname = "mc",
    category = "gpupool",
    label("app.kubernetes.io/part-of", "gpupool"),
    status = "MemberClusterStatus",
    doc = "A GPU cluster federated into the pool. Cluster-scoped. Push members name a kubeconfig Secret; Pull members join with an agent and hold no credential on the hub.",
    printcolumn(
        name = "Ready",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].status"
    ),
    printcolumn(name = "Mode", type_ = "string", json_path = ".spec.mode"),
    printcolumn(name = "Approval", type_ = "string", json_path = ".spec.approval"),
    printcolumn(name = "Region", type_ = "string", json_path = ".spec.region"),
    printcolumn(name = "Binding", type_ = "string", json_path = ".status.bindingMode"),
    printcolumn(
        name = "GPUs",
        type_ = "integer",
        json_path = ".status.capacity.gpusTotal"
    ),
    printcolumn(
        name = "Free",
        type_ = "integer",
        json_path = ".status.capacity.gpusFree"
    ),
    printcolumn(
        name = "Owner",
        type_ = "string",
        json_path = ".spec.ownerWallet",
        priority = 1
    ),
    printcolumn(
        name = "Heartbeat",
        type_ = "date",
        json_path = ".status.lastHeartbeatTime"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == 'Pull' || has(self.kubeconfigSecretRef)").message("a Push member needs kubeconfigSecretRef"))]
#[x_kube(validation = Rule::new("self.mode != 'Pull' || !has(self.kubeconfigSecretRef)").message("a Pull member has no kubeconfig on the hub; remove kubeconfigSecretRef"))]
#[x_kube(validation = Rule::new("!has(oldSelf.clusterId) || (has(self.clusterId) && self.clusterId == oldSelf.clusterId)").message("clusterId cannot be changed once recorded"))]
#[x_kube(validation = Rule::new("self.mode == oldSelf.mode").message("mode cannot be changed; delete the member and join again"))]
pub struct MemberClusterSpec {
    /// How the hub reaches the member: `Push` (the hub holds a kubeconfig and writes into the
    /// member) or `Pull` (the member's agent dials out to the hub and applies `MemberWork`).
    #[serde(default)]
    pub mode: MemberMode,
    /// Whether a pool admin let this member in. Members created by a join start `Pending`.
    #[serde(default)]
    pub approval: Approval,
    /// The member's identity: the UID of its `kube-system` namespace. The one source of truth
    /// for "which physical cluster is this": recorded at join for a Pull member, and by the
    /// operator the first time it reaches a Push member (or given by the admin, then checked
    /// against the member); immutable once set. The ledger's cluster id is derived from it
    /// (`ledger::cluster_id`); a second `MemberCluster` with the same value is a duplicate
    /// (`Ready=False`, reason `DuplicateCluster`) and is neither given work nor paid.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cluster_id: Option<String>,
    /// Secret holding a kubeconfig for the member cluster's API server (Push mode only; Pull
    /// members have none).
    #[serde(default, skip_serializing_if = "SecretKeyRef::is_unset")]
    pub kubeconfig_secret_ref: SecretKeyRef,
    /// The cluster owner's Solana wallet (base58 public key); pool tokens are minted to its
    /// associated token account.
    /// The 32-byte decode is checked by the operator (`Ready=False`, reason `InvalidOwnerWallet`).
    #[schemars(length(max = 64))]
    #[x_kube(
        validation = Rule::new("size(self) >= 32 && size(self) <= 44").message("ownerWallet must be 32-44 characters long (a base58 Solana public key)"),
        validation = Rule::new("self.matches('^[1-9A-HJ-NP-Za-km-z]*$')").message("ownerWallet must use only the base58 alphabet (no 0, O, I or l)"),
        validation = Rule::new("self != '11111111111111111111111111111111'").message("ownerWallet must not be the all-zero key 11111111111111111111111111111111: nobody holds it, tokens minted there are lost")
    )]
    pub owner_wallet: String,
    /// Region label used for display and cluster selectors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Extra labels that jobs' `clusterSelector` matches against.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Optional price the owner asks, in pool-token base units per GPU-hour; cheaper members win ties.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self >= 0").message("pricePerGpuHour must not be negative"))]
    pub price_per_gpu_hour: Option<i64>,
    /// When false, no new work is placed on this member (existing work keeps running).
    #[serde(default = "default_true")]
    pub schedulable: bool,
    /// Move the work off this member (`gpupool drain`): training gangs restart on other members
    /// (not counted against their `backoffLimit`) and inference replicas are deleted here and
    /// placed elsewhere, as many at a time as their `maxUnavailable` allows (at least one), the
    /// next once those are Ready. No new work is placed here while set, whatever `schedulable`
    /// says.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub drain: bool,
}

fn default_true() -> bool {
    true
}

impl Default for MemberClusterSpec {
    fn default() -> Self {
        MemberClusterSpec {
            mode: MemberMode::Push,
            approval: Approval::Approved,
            cluster_id: None,
            kubeconfig_secret_ref: SecretKeyRef::default(),
            owner_wallet: String::new(),
            region: None,
            labels: BTreeMap::new(),
            price_per_gpu_hour: None,
            schedulable: true,
            drain: false,
        }
    }
}

impl MemberClusterSpec {
    /// The kubeconfig Secret of a Push member; `None` for a Pull member (the hub holds none).
    pub fn kubeconfig_ref(&self) -> Option<&SecretKeyRef> {
        (self.mode == MemberMode::Push && !self.kubeconfig_secret_ref.is_unset())
            .then_some(&self.kubeconfig_secret_ref)
    }

    /// Approved by a pool admin (new work may only be placed on approved members).
    pub fn approved(&self) -> bool {
        self.approval == Approval::Approved
    }
}

/// How desired state reaches a member and observed state comes back.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum MemberMode {
    /// The hub holds a kubeconfig of the member and writes into it directly.
    #[default]
    Push,
    /// The member's agent dials out to the hub, applies `MemberWork` objects and reports back.
    Pull,
}

impl std::fmt::Display for MemberMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// A pool admin's decision about a member.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash, Serialize, Deserialize, JsonSchema)]
pub enum Approval {
    /// Waiting for a pool admin (`gpupool approve MEMBER`).
    Pending,
    /// Let in (the default for members an admin registers directly).
    #[default]
    Approved,
    /// Refused or revoked; the member's hub credential is withdrawn.
    Denied,
}

impl std::fmt::Display for Approval {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// Reference to a key of a Secret.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct SecretKeyRef {
    /// Secret name.
    #[x_kube(validation = Rule::new("size(self) > 0").message("kubeconfigSecretRef.name must not be empty"))]
    pub name: String,
    /// Secret namespace (defaults to the operator's namespace).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// Key inside the Secret (default `kubeconfig`).
    #[serde(default = "default_kubeconfig_key")]
    pub key: String,
}

fn default_kubeconfig_key() -> String {
    "kubeconfig".into()
}

impl SecretKeyRef {
    /// No Secret named (a Pull member's spec carries none).
    pub fn is_unset(&self) -> bool {
        self.name.is_empty()
    }
}

impl MemberCluster {
    /// The member's identity (`spec.clusterId`, the UID of its `kube-system` namespace), once
    /// recorded.
    pub fn cluster_id(&self) -> Option<&str> {
        self.spec.cluster_id.as_deref().filter(|u| !u.is_empty())
    }
}

/// Reason of `Ready=False` on a `MemberCluster` that names a cluster an older one already is.
pub const DUPLICATE_CLUSTER: &str = "DuplicateCluster";

/// If `name` is the same physical cluster as an older `MemberCluster` (same
/// [`MemberCluster::cluster_id`]), the name of the one that joined first: the first joined keeps
/// the cluster (older `creationTimestamp`, then name); members being deleted do not count.
pub fn duplicate_of(members: &[MemberCluster], name: &str) -> Option<String> {
    let me = members
        .iter()
        .find(|m| m.metadata.name.as_deref() == Some(name))?;
    let id = me.cluster_id()?;
    let key = |m: &MemberCluster| {
        (
            m.metadata.creation_timestamp.as_ref().map(|t| t.0),
            m.metadata.name.clone().unwrap_or_default(),
        )
    };
    let first = members
        .iter()
        .filter(|m| m.cluster_id() == Some(id))
        .filter(|m| {
            m.metadata.deletion_timestamp.is_none() || m.metadata.name.as_deref() == Some(name)
        })
        .min_by_key(|m| key(m))?;
    let first_name = first.metadata.name.clone().unwrap_or_default();
    (first_name != name).then_some(first_name)
}

/// Observed state of a member cluster.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, KubeSchema)]
#[serde(rename_all = "camelCase")]
pub struct MemberClusterStatus {
    /// `Ready` and `Reachable` conditions.
    #[serde(default)]
    #[schemars(schema_with = "conditions_schema")]
    pub conditions: Vec<Condition>,
    /// Last time the member's API server answered a probe.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_heartbeat_time: Option<Time>,
    /// Kubernetes version the member reports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// GPU capacity summary.
    #[serde(default)]
    pub capacity: CapacitySummary,
    /// How gpupool binds the GPUs it chose in this member: `DRA` (a ResourceClaim naming the
    /// exact GPUs, allocated by the member's scheduler; needs `resource.k8s.io/v1` and the
    /// `gpu.nvidia.com` DeviceClass) or `DevicePlugin` (`nvidia.com/gpu` requests; the kubelet
    /// picks the devices).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub binding_mode: Option<BindingMode>,
    /// Generation of the spec this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
}

/// GPUs of a member cluster, in total and free.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CapacitySummary {
    /// GPU nodes seen.
    #[serde(default)]
    pub nodes: i32,
    /// GPUs on all nodes.
    #[serde(default)]
    pub gpus_total: i32,
    /// GPUs not assigned to any job.
    #[serde(default)]
    pub gpus_free: i32,
    /// Totals per GPU model.
    #[serde(default)]
    pub by_model: Vec<ModelCapacity>,
    /// Per node with free GPUs, the size of its largest free set of pairwise NVLink-connected
    /// GPUs (directly or through NVSwitch), largest first: the most GPUs an `nvlink: clique`
    /// worker can get there (an idle DGX-1 shows 4; a free GPU without a free NVLink peer, 1).
    #[serde(default)]
    pub largest_free_nvlink_cliques: Vec<i32>,
}

/// Capacity of one GPU model.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ModelCapacity {
    /// Model name as NVML reports it.
    pub model: String,
    /// Memory per GPU in MiB.
    #[serde(rename = "memoryMiB")]
    pub memory_mib: i64,
    /// GPUs of this model.
    pub total: i32,
    /// Free GPUs of this model.
    pub free: i32,
}

/// How the GPUs gpupool chose are bound to a pod in a member cluster.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum BindingMode {
    /// Dynamic Resource Allocation: a `resource.k8s.io/v1` ResourceClaim selects the exact GPUs
    /// by UUID; the member's kube-scheduler allocates it and the DRA driver enforces it.
    #[serde(rename = "DRA")]
    Dra,
    /// The NVIDIA device plugin: pods request `nvidia.com/gpu` and the kubelet picks the devices;
    /// gpupool's choice is a hint (`NVIDIA_VISIBLE_DEVICES`), not enforced.
    #[default]
    DevicePlugin,
}

impl std::fmt::Display for BindingMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BindingMode::Dra => "DRA",
            BindingMode::DevicePlugin => "DevicePlugin",
        })
    }
}

/// Why an owner wallet cannot receive tokens, or `None` when it is a 32-byte base58 key. CEL
/// checks length and alphabet; only decoding tells a 44-character string that is not a key.
pub fn wallet_problem(wallet: &str) -> Option<String> {
    match bs58::decode(wallet).into_vec() {
        Ok(b) if b.len() == 32 && b.iter().all(|x| *x == 0) => Some(format!(
            "ownerWallet {wallet} is the all-zero key: nobody holds it, tokens minted there are lost"
        )),
        Ok(b) if b.len() == 32 => None,
        Ok(b) => Some(format!(
            "ownerWallet {wallet} decodes to {} bytes, not a 32-byte Solana public key",
            b.len()
        )),
        Err(e) => Some(format!("ownerWallet {wallet} is not base58: {e}")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(name: &str, created: i64, id: Option<&str>) -> MemberCluster {
        let mut m = MemberCluster::new(
            name,
            MemberClusterSpec {
                cluster_id: id.map(String::from),
                ..Default::default()
            },
        );
        m.metadata.creation_timestamp = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
            k8s_openapi::jiff::Timestamp::from_second(created).unwrap(),
        ));
        m
    }

    #[test]
    fn the_later_join_of_a_cluster_is_the_duplicate() {
        let mut ms = vec![
            member("b-second", 200, Some("uid-1")),
            member("a-first", 100, Some("uid-1")),
            member("other", 50, Some("uid-2")),
            member("unknown", 10, None),
        ];
        assert_eq!(duplicate_of(&ms, "b-second").as_deref(), Some("a-first"));
        assert_eq!(duplicate_of(&ms, "a-first"), None);
        assert_eq!(duplicate_of(&ms, "other"), None);
        assert_eq!(duplicate_of(&ms, "unknown"), None);
        // Same second: the name decides, deterministically.
        ms.push(member("a-0", 100, Some("uid-1")));
        assert_eq!(duplicate_of(&ms, "a-first").as_deref(), Some("a-0"));
        // The first one leaves: the next oldest keeps the cluster.
        ms.retain(|m| m.metadata.name.as_deref() != Some("a-0"));
        ms[1].metadata.deletion_timestamp = ms[1].metadata.creation_timestamp.clone();
        assert_eq!(duplicate_of(&ms, "b-second"), None);
    }

    #[test]
    fn wallet_must_decode_to_32_bytes() {
        assert_eq!(
            wallet_problem("6t8Z1FuhqhTaKer3FdWnM2m1xbw28tEKZhVSsUfhN34S"),
            None
        );
        // 44 base58 characters, but 33 bytes.
        let long = "zzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzzz";
        assert!(wallet_problem(long).unwrap().contains("bytes"), "{long}");
        assert!(wallet_problem("0OIl").unwrap().contains("not base58"));
    }

    #[test]
    fn the_all_zero_wallet_is_refused() {
        let zero = "1".repeat(32);
        assert_eq!(bs58::decode(&zero).into_vec().unwrap(), vec![0u8; 32]);
        assert!(wallet_problem(&zero).unwrap().contains("all-zero"));
    }
}
