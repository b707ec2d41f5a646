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
mod probes;
pub mod token;

/// Names of the objects the join flow uses on the hub (defined in [`crate::meta`], which every
/// layer may import).
pub use crate::meta::names;

pub use crate::meta::member_identity;

/// Field manager of the hub's join controller.
pub const FIELD_MANAGER: &str = "gpupool-join";
