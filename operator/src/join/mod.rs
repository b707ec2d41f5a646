//! Pull-mode join: a member cluster's agent presents a join token once, a pool admin approves the
//! member, and the hub issues the agent a credential scoped to that member only.
//!
//! Everything goes through the hub's own API server, no extra endpoint:
//! - A **join token** is a ServiceAccount token (`TokenRequest`, signed by the API server) of a
//!   per-token ServiceAccount in the `gpupool-join` namespace. Its Role lets it create one
//!   `JoinRequest` — a `ValidatingAdmissionPolicy` pins the request's name to the token's — and
//!   read that request and the one Secret the hub puts the member credential in. Nothing secret is
//!   stored on the hub: the token is verified by signature and by its ServiceAccount still
//!   existing, so revoking a token is deleting its ServiceAccount (refused at once), and expiry is
//!   both the JWT's own and the hub deleting the ServiceAccount at `gpupool.io/expires-at`.
//! - The [`controller`] answers a `JoinRequest`: it records the member's identity (its
//!   `kube-system` namespace UID), refuses the same cluster under a second name, creates the
//!   `MemberCluster` (`mode: Pull`, `approval: Pending`, unless the pool auto-approves) and, once
//!   approved, the member's hub namespace `gpupool-member-<name>` with a ServiceAccount whose Role
//!   reaches only that namespace's `MemberWork`/`MemberReport`/Lease objects, and lets the join
//!   token mint one token of that ServiceAccount: the agent mints its own credential, so no
//!   credential is ever stored on the hub. When the agent heartbeats with it, the join token is
//!   spent (its ServiceAccount and the hand-over binding deleted).
//! - Denying or revoking a member (`gpupool deny`) deletes its ServiceAccount: every credential it
//!   was issued stops working. A new join token lets the same cluster join again (back to
//!   `Pending`).

pub mod admin;
pub mod controller;
pub mod policy;
pub mod token;

use k8s_openapi::api::core::v1::Namespace;
use kube::api::Api;

/// Names of the objects the join flow uses on the hub.
pub mod names {
    /// Namespace of join tokens, join requests and credential hand-over Secrets.
    pub const JOIN_NAMESPACE: &str = "gpupool-join";
    /// ServiceAccount of a member agent in its hub namespace (also its Role and RoleBinding).
    pub const MEMBER_AGENT_SA: &str = "gpupool-member-agent";
    /// Heartbeat Lease of a member agent in its hub namespace.
    pub const HEARTBEAT_LEASE: &str = "member-agent";
    /// Label on every join token's ServiceAccount, Role and RoleBinding.
    pub const TOKEN_LABEL: &str = "gpupool.io/join-token";
    /// Annotation: RFC 3339 time a join token expires.
    pub const EXPIRES_AT: &str = "gpupool.io/expires-at";
    /// Annotation: the member name a join token is bound to.
    pub const FOR_MEMBER: &str = "gpupool.io/for-member";
    /// Annotation on a `MemberCluster`: the join request that created or last re-joined it.
    pub const JOIN_REQUEST: &str = "gpupool.io/join-request";
    /// Label on a member's hub namespace: the member's name.
    pub const MEMBER_LABEL: &str = "gpupool.io/member";
    /// Role and RoleBinding in a member's hub namespace that let an approved join token mint
    /// the member agent's first credential.
    pub const HANDOVER: &str = "gpupool-join-handover";
    /// Name of the admission policy that pins a join request's name to its token.
    pub const ADMISSION_POLICY: &str = "gpupool-join-request-name";

    /// A member's hub namespace.
    pub fn member_namespace(member: &str) -> String {
        format!("gpupool-member-{member}")
    }

    /// The username a join token authenticates as.
    pub fn token_username(token_id: &str) -> String {
        format!("system:serviceaccount:{JOIN_NAMESPACE}:{token_id}")
    }
}

/// The identity of a cluster: the UID of its `kube-system` namespace (stable for the life of the
/// cluster, distinct between clusters, readable with a narrow role).
pub async fn member_identity(client: &kube::Client) -> kube::Result<String> {
    let ns = Api::<Namespace>::all(client.clone())
        .get("kube-system")
        .await?;
    Ok(ns.metadata.uid.unwrap_or_default())
}

/// Field manager of the hub's join controller.
pub const FIELD_MANAGER: &str = "gpupool-join";
