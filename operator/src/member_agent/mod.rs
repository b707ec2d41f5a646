//! The member agent of a pull-mode member: runs inside the member with the member's own narrow
//! role and dials out to the hub. It joins once with a join token (see [`crate::join`]), keeps
//! the member credential it is issued in a Secret of its own namespace, and then:
//! - watches its `MemberWork` objects on the hub and server-side applies their manifests in the
//!   member (field manager `gpupool-member-agent`, every object labelled), deleting what it applied
//!   that no work wants any more — never anything it did not create;
//! - reports each work's pods (phase, readiness, start and finish times) in the work's status;
//! - reports the member's GPU inventory in `MemberReport` objects;
//! - renews its heartbeat Lease in its hub namespace, and its own credential before it expires.
//!
//! The hub holds no credential of the member and cannot reach it; every connection is opened by
//! the agent.

pub mod apply;
pub mod hub;
mod metrics;
pub mod report;
mod run;

pub use run::{AgentArgs, run};
