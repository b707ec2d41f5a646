//! Conventions every layer shares, kept apart so that none has to import a higher one for them:
//! the operator's field manager and finalizer, the labels and annotations gpupool puts on member
//! objects, the names of the join flow's hub objects, conditions, a cluster's identity, and "404
//! as absent". Imports nothing else of this crate.

use k8s_openapi::api::core::v1::Namespace;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::api::Api;

/// Finalizer the job controllers put on hub jobs; a job is scheduled only once it carries it
/// (so its workloads are always cleaned up).
pub const FINALIZER: &str = "gpupool.io/member-cleanup";
/// Field manager for everything the operator writes.
pub const FIELD_MANAGER: &str = "gpupool-operator";

/// Labels and annotations gpupool puts on everything it creates in a member cluster.
pub mod labels {
    /// `app.kubernetes.io/managed-by` value.
    pub const MANAGED_BY: &str = "app.kubernetes.io/managed-by";
    /// Value of [`MANAGED_BY`].
    pub const MANAGER: &str = "gpupool";
    /// Kind of the hub object (`TrainingJob` / `InferenceJob`).
    pub const JOB_KIND: &str = "gpupool.io/job-kind";
    /// Namespace of the hub object.
    pub const JOB_NAMESPACE: &str = "gpupool.io/job-namespace";
    /// Name of the hub object.
    pub const JOB_NAME: &str = "gpupool.io/job-name";
    /// UID of the hub object.
    pub const JOB_UID: &str = "gpupool.io/job-uid";
    /// Training rank / inference replica index.
    pub const INDEX: &str = "gpupool.io/index";
    /// Gang generation (bumped on every restart of a training gang).
    pub const GENERATION: &str = "gpupool.io/gang-generation";
    /// Annotation: comma-separated GPU UUIDs assigned to the pod.
    pub const GPU_UUIDS: &str = "gpupool.io/gpu-uuids";
    /// Annotation: GPU model of the assigned GPUs.
    pub const GPU_MODEL: &str = "gpupool.io/gpu-model";
    /// Annotation: topology score of the assigned GPU set.
    pub const GPU_SCORE: &str = "gpupool.io/gpu-score";
    /// Annotation: the node gpupool chose (DRA pods are bound by the member's scheduler).
    pub const NODE: &str = "gpupool.io/node";
    /// Annotation: how the GPUs are bound (`DRA` or `DevicePlugin`).
    pub const BINDING: &str = "gpupool.io/gpu-binding";
    /// Label selector for everything gpupool manages.
    pub const SELECTOR: &str = "app.kubernetes.io/managed-by=gpupool";
}

/// The GPU UUIDs of a `gpupool.io/gpu-uuids` annotation value ([`labels::GPU_UUIDS`]):
/// comma-separated, each trimmed, blanks dropped, in the order written. Every reader of the
/// annotation (the scheduler's cache, the pull agent's GPU guard, metering, the kubelet
/// cross-check) reads it through this, so they agree on what a pod claims.
pub fn gpu_uuids(value: &str) -> impl Iterator<Item = &str> {
    value.split(',').map(str::trim).filter(|u| !u.is_empty())
}

/// The GPU UUIDs assigned to an object by its [`labels::GPU_UUIDS`] annotation (none without).
pub fn assigned_gpus(
    meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta,
) -> Vec<String> {
    meta.annotations
        .as_ref()
        .and_then(|a| a.get(labels::GPU_UUIDS))
        .map(|v| gpu_uuids(v).map(str::to_string).collect())
        .unwrap_or_default()
}

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

/// "Not found" as an answer rather than an error: deleting what is already gone, listing a kind
/// the API server does not serve (a member without the DRA API). kube's `Api::get_opt` does
/// this for a GET only.
pub trait OrAbsent<T> {
    /// `Ok(None)` for a 404; the value, or any other error, as it was.
    fn or_absent(self) -> kube::Result<Option<T>>;
}

impl<T> OrAbsent<T> for kube::Result<T> {
    fn or_absent(self) -> kube::Result<Option<T>> {
        match self {
            Ok(v) => Ok(Some(v)),
            Err(kube::Error::Api(e)) if e.code == 404 => Ok(None),
            Err(e) => Err(e),
        }
    }
}

/// Sets condition `type_`, keeping `lastTransitionTime` when the status is unchanged.
pub fn set_condition(
    conds: &mut Vec<Condition>,
    type_: &str,
    status: bool,
    reason: &str,
    message: &str,
    generation: Option<i64>,
) {
    let status_s = if status { "True" } else { "False" };
    let now = Time(k8s_openapi::jiff::Timestamp::now());
    if let Some(c) = conds.iter_mut().find(|c| c.type_ == type_) {
        if c.status != status_s {
            c.last_transition_time = now;
        }
        c.status = status_s.into();
        c.reason = reason.into();
        c.message = message.into();
        c.observed_generation = generation;
    } else {
        conds.push(Condition {
            type_: type_.into(),
            status: status_s.into(),
            reason: reason.into(),
            message: message.into(),
            last_transition_time: now,
            observed_generation: generation,
        });
    }
}
