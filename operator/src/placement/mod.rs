//! Choosing GPUs on a node: the NVLink-aware allocator and the baselines it is measured against.
//! Pure and deterministic: no IO, no clocks, no randomness.

pub mod allocator;
pub mod baselines;
pub mod rank;
pub mod scheduler;

pub use allocator::{Allocation, GpuRequest, NoFit, allocate, allocate_on, exhaustive_best};
pub use scheduler::{
    ClusterCandidate, ClusterChoice, JobRequest, NodeCandidate, Unschedulable, place_gang,
    place_replicas,
};
