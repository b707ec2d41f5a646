//! Choosing GPUs on a node: the NVLink-aware allocator and the baselines it is measured against.
//! Pure and deterministic: no IO, no clocks, no randomness.

pub mod allocator;
pub mod baselines;
pub mod rank;
pub mod scheduler;

pub use allocator::{Allocation, GpuRequest, NoFit, allocate, allocate_on, exhaustive_best};
pub use scheduler::{
    ClusterCandidate, ClusterChoice, JobRequest, NodeCandidate, Unschedulable, candidates,
    free_gpus_by_node, free_island_sizes, place_gang, place_replicas, uuids_held_by_pods,
};
