//! Which node gets a pod: best fit across nodes, from the allocator's answer on each.
//!
//! The allocator answers "which set on this node"; its score compares sets *within* one node.
//! Across nodes the question is different — which placement leaves the pool best able to take
//! the next jobs — and the answer is best fit, in this order:
//!
//! 1. **NVLink class** (multi-GPU `preferred` only): a set with an all-NVLink ring beats one
//!    without, so a PCIe-only node never wins over a node that can give the job NVLink.
//!    (`clique`/`ring` sets always have it; `none` and one-GPU requests ignore it.)
//! 2. **Keep whole big nodes whole**: a node of at least [`WHOLE_NODE_GPUS`] GPUs that is idle is
//!    broken only when no partly used node (or small node) has room, so 8-GPU workers find them.
//!    Small idle nodes are not protected: filling them is what keeps the big ones whole.
//! 3. **Fewest GPUs left free** on the node (best fit).
//! 4. **Least valuable remainder**: the smallest loss of the node's largest free NVLink clique,
//!    so a free quad elsewhere is kept for the job that needs it.
//! 5. **Set quality**: `(mean pair quality + ring bottleneck) / 2`, then less fragmentation.
//!
//! Keys compare with `<`: the smaller key is the better placement.

use super::allocator::{Allocation, GpuRequest};
use crate::api::NvLinkMode;
use std::cmp::Reverse;

/// Nodes at least this big are kept idle while smaller or partly used nodes have room: the size
/// of the whole-node workers (8-GPU DGX/HGX boards) that idle nodes are kept for.
pub const WHOLE_NODE_GPUS: usize = 8;

/// Rank of one allocation as a place for a pod; smaller is better (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeFit {
    /// 0 when the set has the NVLink class the request prefers (or the class does not matter).
    pub class: u8,
    /// 1 when the node has at least [`WHOLE_NODE_GPUS`] GPUs and was idle before.
    pub breaks_idle: u8,
    /// GPUs left free on the node.
    pub left: usize,
    /// How much the node's largest free NVLink clique shrinks.
    pub clique_loss: usize,
    /// Set quality, best first.
    pub quality: Reverse<i64>,
    /// Fragmentation of the remainder in the node's NVLink unit.
    pub fragmentation: i64,
}

/// The [`NodeFit`] of `a` for `req`.
pub fn node_fit(a: &Allocation, req: &GpuRequest) -> NodeFit {
    let wants_nvlink = req.count > 1 && req.nvlink != NvLinkMode::None;
    NodeFit {
        class: u8::from(wants_nvlink && !a.nvlink_ring),
        breaks_idle: u8::from(a.free_before == a.node_gpus && a.node_gpus >= WHOLE_NODE_GPUS),
        left: a.free_after(),
        clique_loss: a
            .largest_free_nvlink_set_before
            .saturating_sub(a.largest_free_nvlink_set_after),
        quality: Reverse(a.quality),
        fragmentation: a.fragmentation,
    }
}

/// Rank of several pods placed one after the other on one member (a gang, or the replicas
/// that go to one member): the sums of their [`NodeFit`]s, compared in the same order.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct GangFit {
    /// Pods without the preferred NVLink class.
    pub class: usize,
    /// Pods that broke an idle big node.
    pub breaks_idle: usize,
    /// GPUs left free on each pod's node right after it landed, summed.
    pub left: usize,
    /// Shrinkage of the largest free NVLink clique, summed.
    pub clique_loss: usize,
    /// Summed set quality, best first.
    pub quality: Reverse<i64>,
}

impl Default for GangFit {
    fn default() -> Self {
        GangFit {
            class: 0,
            breaks_idle: 0,
            left: 0,
            clique_loss: 0,
            quality: Reverse(0),
        }
    }
}

impl GangFit {
    /// Adds one pod's rank.
    pub fn add(&mut self, f: &NodeFit) {
        self.class += usize::from(f.class);
        self.breaks_idle += usize::from(f.breaks_idle);
        self.left += f.left;
        self.clique_loss += f.clique_loss;
        self.quality = Reverse(self.quality.0 + f.quality.0);
    }
}
