//! Federation: reaching member clusters and keeping an up-to-date view of each one.
//!
//! The [`Registry`] holds, per registered member, its [`MemberLink`] (a push member: a client
//! built from its kubeconfig Secret; a pull member: its work objects on the hub, applied by its
//! agent) and watches on its nodes, `GpuTopology` objects, the pods gpupool created there and the
//! ResourceSlices of NVIDIA's DRA driver ([`MemberWatch`]), which feed the scheduler's cache and
//! wake hub jobs change by change (a pull member's come from its agent's reports on the hub,
//! shaped the same: [`MemberWatch::start_pull`]). [`dra`] detects each member's binding mode and creates pods
//! with their ResourceClaims.
//! The MemberCluster controller probes each member on every heartbeat; the job controllers read
//! a job's pods from the watch's index.

mod client;
pub mod dra;
mod errors;
mod inventory;
mod link;
mod pull_feed;
mod registry;
pub mod sandbox;
mod watch;

pub use client::{
    ClientLimits, OnThrottled, RateLimit, client_from_kubeconfig, limited_client,
    limited_client_from_kubeconfig, limited_watch_client_from_kubeconfig,
    watch_client_from_kubeconfig,
};
pub use errors::{OrAbsent, describe_client_error};
pub use inventory::{allocatable_gpus, node_ready};
pub use link::MemberLink;
pub use pull_feed::{Derived, derive as derive_pull_view};
pub use registry::{MemberView, Registry};
pub use watch::{Change, MemberSink, MemberWatch, listed, trim_meta, trim_node, trim_pod};

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
