//! Which node gets a pod: best fit across nodes, from the allocator's answer on each.
//!
//! The allocator answers "which set on this node"; its score compares sets *within* one node.
//! Across nodes the question is different — which placement leaves the pool best able to take
//! the next jobs — and the answer is best fit, in this order:
//!
//! 0. **Scarce whole NVLink nodes** (multi-GPU `preferred` only, and only while the pool is
//!    short of them, see [`WholeNodes::scarce`]): a set that breaks an idle node of at least
//!    [`WHOLE_NODE_GPUS`] GPUs comes after every set that does not, even one with a PCIe hop in
//!    its ring. `preferred` promises NVLink when it is free, not at the price of the last whole
//!    nodes that 8-GPU workers need; `ring`/`clique` jobs never take a PCIe hop (their sets
//!    always have the ring), and while idle NVLink nodes are plentiful this step does nothing.
//! 1. **NVLink class** (multi-GPU `preferred` only): a set with an all-NVLink ring beats one
//!    without, so a PCIe-only node never wins over a node that can give the job NVLink.
//!    (`clique`/`ring` sets always have it; `none` and one-GPU requests ignore it.)
//! 2. **Small pods on small nodes**: a pod of fewer than [`WHOLE_NODE_GPUS`] GPUs goes to a node
//!    smaller than that — which no whole-node worker can ever use — before it takes GPUs of a big
//!    node, partly used or not. Every small pod added to a big node is one more job that must end
//!    before the node can take a whole-node worker again; on a small node it delays nobody.
//!    (After the NVLink class: a `preferred` pair still takes an NVLink pair on a big node rather
//!    than a PCIe pair on a small one.)
//! 3. **Keep whole big nodes whole**: a node of at least [`WHOLE_NODE_GPUS`] GPUs that is idle is
//!    broken only when no partly used node (or small node) has room, so 8-GPU workers find them.
//! 4. **Fewest GPUs left free** on the node (best fit).
//! 5. **Least valuable remainder**: the smallest loss of the node's largest free NVLink clique,
//!    so a free quad elsewhere is kept for the job that needs it.
//! 6. **Set quality**: `(mean pair quality + ring bottleneck) / 2`, then less fragmentation.
//!
//! Keys compare with `<`: the smaller key is the better placement.

use super::allocator::{Allocation, GpuRequest, allocate};
use crate::api::NvLinkMode;
use crate::topology::{GpuGraph, GpuSet};
use std::cmp::Reverse;
use std::collections::HashMap;
use std::sync::{LazyLock, Mutex};

/// Nodes at least this big are kept idle while smaller or partly used nodes have room: the size
/// of the whole-node workers (8-GPU DGX/HGX boards) that idle nodes are kept for.
pub const WHOLE_NODE_GPUS: usize = 8;

/// Whole NVLink nodes are scarce while fewer than `1 / SCARCE_BELOW_ONE_IN` of them are idle
/// ([`WholeNodes::scarce`]).
pub const SCARCE_BELOW_ONE_IN: usize = 4;

/// The pool's whole NVLink nodes — nodes of at least [`WHOLE_NODE_GPUS`] GPUs on which an
/// 8-GPU worker gets an all-NVLink ring — and how many of them are idle. The scheduler's cache
/// counts them per member (from its nodes grouped by shape and free GPUs, while it builds the
/// candidates); [`super::scheduler`] sums the members.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WholeNodes {
    /// Whole NVLink nodes.
    pub total: usize,
    /// Of them, idle (every GPU free).
    pub idle: usize,
}

impl WholeNodes {
    /// Whether a node of graph `g` is a whole NVLink node (a look-up after the first call for
    /// its shape).
    pub fn is_whole_nvlink_node(g: &GpuGraph) -> bool {
        static BY_SHAPE: LazyLock<Mutex<HashMap<u64, bool>>> = LazyLock::new(Default::default);
        if g.len() < WHOLE_NODE_GPUS {
            return false;
        }
        let mut known = BY_SHAPE.lock().unwrap_or_else(|e| e.into_inner());
        *known.entry(g.shape_id()).or_insert_with(|| {
            allocate(
                g,
                g.all(),
                &GpuRequest::new(WHOLE_NODE_GPUS, NvLinkMode::Ring),
            )
            .is_ok()
        })
    }

    /// Counts `count` nodes of graph `g` with `free` GPUs free.
    pub fn add_nodes(&mut self, g: &GpuGraph, free: GpuSet, count: usize) {
        if Self::is_whole_nvlink_node(g) {
            self.total += count;
            if free.and(g.all()) == g.all() {
                self.idle += count;
            }
        }
    }

    /// The counts of several members together.
    pub fn plus(self, other: WholeNodes) -> WholeNodes {
        WholeNodes {
            total: self.total + other.total,
            idle: self.idle + other.idle,
        }
    }

    /// Whole NVLink nodes are scarce: fewer than one in [`SCARCE_BELOW_ONE_IN`] is idle. The
    /// principle: the rule that trades a `preferred` job's NVLink ring for an idle node should
    /// act only when idle whole nodes are close to running out — that is when the next 8-GPU
    /// worker risks finding none — and a fixed share of the pool scales with its size. A pool
    /// with no whole NVLink node is never short of them.
    pub fn scarce(&self) -> bool {
        self.idle * SCARCE_BELOW_ONE_IN < self.total
    }
}

/// Rank of one allocation as a place for a pod; smaller is better (module docs).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct NodeFit {
    /// 1 when whole NVLink nodes are scarce, the request is multi-GPU `preferred` and the set
    /// breaks an idle node of at least [`WHOLE_NODE_GPUS`] GPUs.
    pub breaks_scarce: u8,
    /// 0 when the set has the NVLink class the request prefers (or the class does not matter).
    pub class: u8,
    /// 1 when a pod of fewer than [`WHOLE_NODE_GPUS`] GPUs takes GPUs of a node of at least
    /// that many.
    pub small_on_big: u8,
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

/// The [`NodeFit`] of `a` for `req`, `scarce` when whole NVLink nodes are ([`WholeNodes`]).
pub fn node_fit(a: &Allocation, req: &GpuRequest, scarce: bool) -> NodeFit {
    let wants_nvlink = req.count > 1 && req.nvlink != NvLinkMode::None;
    let big_node = a.node_gpus >= WHOLE_NODE_GPUS;
    let breaks_idle = a.free_before == a.node_gpus && big_node;
    NodeFit {
        breaks_scarce: u8::from(
            scarce && breaks_idle && req.count > 1 && req.nvlink == NvLinkMode::Preferred,
        ),
        class: u8::from(wants_nvlink && !a.nvlink_ring),
        small_on_big: u8::from(big_node && req.count < WHOLE_NODE_GPUS),
        breaks_idle: u8::from(breaks_idle),
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
    /// Pods that broke an idle big node while whole NVLink nodes were scarce.
    pub breaks_scarce: usize,
    /// Pods without the preferred NVLink class.
    pub class: usize,
    /// Pods of fewer than [`WHOLE_NODE_GPUS`] GPUs on nodes of at least that many.
    pub small_on_big: usize,
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
            breaks_scarce: 0,
            class: 0,
            small_on_big: 0,
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
        self.breaks_scarce += usize::from(f.breaks_scarce);
        self.class += usize::from(f.class);
        self.small_on_big += usize::from(f.small_on_big);
        self.breaks_idle += usize::from(f.breaks_idle);
        self.left += f.left;
        self.clique_loss += f.clique_loss;
        self.quality = Reverse(self.quality.0 + f.quality.0);
    }
}
