//! Choosing GPUs on a node: the NVLink-aware allocator and the baselines it is measured against.
//! Pure and deterministic: no IO, no clocks, no randomness.
//!
//! # What the tests guard
//!
//! Each failure the cross-node ranking and the NVLink modes once had is a unit test:
//!
//! | failure | test |
//! |---|---|
//! | idle nodes broken while partly used nodes had room | `scheduler::tests::one_gpu_jobs_fill_partly_used_nodes_before_breaking_idle_ones`, `best_fit_across_members_too` |
//! | `preferred` multi-GPU jobs sent to a PCIe-only node instead of an idle NVLink one | `scheduler::tests::preferred_multi_gpu_jobs_go_to_an_idle_nvlink_node_not_a_pcie_one` |
//! | NVLink required every pair linked, so a DGX-1 took at most 4 GPUs | `allocator::tests::ring_mode_fits_dgx1_eight_six_and_five`, `scheduler::tests::ring_mode_admits_what_nccl_rings_need_on_a_dgx1`, `allocator::tests::required_is_an_alias_of_clique` |
//! | Σ pair quality blind to a PCIe hop in the ring | `allocator::tests::five_gpus_preferred_take_an_all_nvlink_ring`, `the_heuristic_search_takes_an_all_nvlink_ring_first_too` |
//! | a 2-GPU set that stranded a cross-socket PCIe pair | `allocator::tests::two_gpus_do_not_strand_a_pcie_pair` |
//! | 3-GPU sets split across NUMA nodes for leftover points | `allocator::tests::three_gpus_stay_on_one_numa_node_when_they_can` |
//! | fragmentation charged with nothing left to fragment | `allocator::tests::no_fragmentation_charge_when_nothing_is_left` |
//! | every node visit a fresh exact search (memo per shape and free mask) | `allocator::tests::memo_answers_every_node_of_a_shape_with_its_own_names` (cost: `benches/placement.rs`) |
//! | non-spread replicas retried n, n−1, … per member | `scheduler::tests::replicas_without_spread_land_on_one_member_that_fits_the_most` |
//! | clique enumeration silently stopped at 4 096 | `topology::tests::clique_enumeration_is_exact_beyond_four_thousand` |
//! | `preferred` multi-GPU jobs breaking the last idle whole NVLink nodes (8-GPU rejections) | `scheduler::tests::preferred_jobs_take_a_pcie_hop_rather_than_break_a_scarce_idle_nvlink_node`, `whole_nvlink_nodes_are_the_big_nvlink_ring_nodes` |
//! | no per-hop bandwidth floor | `allocator::tests::min_link_gbps_refuses_sets_whose_ring_has_a_slower_hop`, `scheduler::tests::min_link_gbps_skips_nodes_whose_links_are_too_slow` |

pub mod allocator;
pub mod baselines;
pub mod rank;
pub mod scheduler;

pub use allocator::{Allocation, GpuRequest, NoFit, allocate, allocate_on, exhaustive_best};
pub use scheduler::{
    ClusterCandidate, ClusterChoice, JobRequest, NodeCandidate, PodPlacement, Unschedulable,
    place_gang, place_replicas,
};
