//! `JoinRequest`: a cluster owner's agent asking to join the pool in pull mode.
//!
//! The agent creates it on the hub with its join token (a ServiceAccount token whose only right is
//! to create this object, named after the token, and read its answer). The hub's join controller
//! answers in `status`; once a pool admin approved the `MemberCluster`, the join token may mint the
//! member's own hub credential in the namespace the answer names.

use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// A request to join the pool as a pull-mode member.
#[derive(CustomResource, KubeSchema, Clone, Debug, PartialEq, Serialize, Deserialize)]
#[kube(
    group = "gpupool.io",
    version = "v1alpha1",
    kind = "JoinRequest",
    plural = "joinrequests",
    shortname = "jr",
    category = "gpupool",
    namespaced,
    label("app.kubernetes.io/part-of", "gpupool"),
    status = "JoinRequestStatus",
    doc = "A member cluster's agent asking to join the pool in pull mode, named after its join token. Answered by the hub in status.",
    printcolumn(name = "Member", type_ = "string", json_path = ".spec.memberName"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(
        name = "Cluster-ID",
        type_ = "string",
        json_path = ".spec.clusterId",
        priority = 1
    ),
    printcolumn(
        name = "Message",
        type_ = "string",
        json_path = ".status.message",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self == oldSelf").message("a join request cannot be changed; create a new one"))]
pub struct JoinRequestSpec {
    /// Name the member asks for (its `MemberCluster` name; its hub namespace is
    /// `gpupool-member-<name>`).
    #[x_kube(validation = Rule::new("self.matches('^[a-z0-9]([-a-z0-9]{0,38}[a-z0-9])?$')").message("memberName must be a DNS label of at most 40 characters"))]
    pub member_name: String,
    /// The member's identity: UID of its `kube-system` namespace.
    #[x_kube(validation = Rule::new("size(self) >= 8 && size(self) <= 64").message("clusterId must be 8-64 characters"))]
    pub cluster_id: String,
    /// Owner's Solana wallet (base58 public key).
    #[x_kube(
        validation = Rule::new("self.matches('^[1-9A-HJ-NP-Za-km-z]{32,44}$')").message("ownerWallet must be a base58 Solana public key (32-44 characters from the base58 alphabet)"),
        validation = Rule::new("self != '11111111111111111111111111111111'").message("ownerWallet must not be the all-zero key 11111111111111111111111111111111: nobody holds it, tokens minted there are lost")
    )]
    pub owner_wallet: String,
    /// Kubernetes version of the member.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub kubernetes_version: Option<String>,
    /// Region label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub region: Option<String>,
    /// Labels for jobs' `clusterSelector`.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    /// Price asked, in pool-token base units per GPU-hour.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub price_per_gpu_hour: Option<i64>,
}

/// Where a join request stands.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum JoinPhase {
    /// Waiting for a pool admin to approve the member.
    #[default]
    Pending,
    /// Approved; the join token may now mint the member agent's credential.
    Approved,
    /// The agent heartbeats with its own credential; the join token is spent.
    Joined,
    /// A pool admin denied the member.
    Denied,
    /// Refused by policy (identity already joined under another name, name taken, ...).
    Refused,
}

impl std::fmt::Display for JoinPhase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Debug::fmt(self, f)
    }
}

/// The hub's answer to a join request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct JoinRequestStatus {
    /// Where the request stands.
    #[serde(default)]
    pub phase: JoinPhase,
    /// Why (for `Refused`/`Denied`) or what happens next.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub message: Option<String>,
    /// The member's hub namespace.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hub_namespace: Option<String>,
}
