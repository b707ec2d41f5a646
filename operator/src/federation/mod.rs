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
pub mod credential;
pub mod dra;
mod errors;
mod inventory;
mod link;
mod pull_feed;
mod registry;
pub mod sandbox;
mod watch;
mod writes;

pub use crate::meta::OrAbsent;
pub use client::{
    ClientLimits, OnThrottled, RateLimit, client_from_kubeconfig, limited_client,
    limited_client_from_kubeconfig, limited_watch_client_from_kubeconfig,
    watch_client_from_kubeconfig,
};
pub use errors::describe_client_error;
pub use inventory::{allocatable_gpus, node_ready};
pub use link::MemberLink;
pub use pull_feed::{Derived, derive as derive_pull_view};
pub use registry::{MemberView, Registry};
pub use watch::{Change, MemberSink, MemberWatch, listed, trim_meta, trim_node, trim_pod};

/// Labels and annotations gpupool puts on everything it creates in a member cluster (defined in
/// [`crate::meta`], which every layer may import).
pub use crate::meta::labels;
