//! Preemption victims on one node, chosen by topology: the fewest, then cheapest, jobs holding
//! GPUs on the node whose GPUs — added to the node's free ones — actually let the allocator
//! place the waiting pod there (for a multi-GPU `clique` or `ring` pod that is an NVLink set,
//! not just a count). None when even all candidates together would not: a preemption that would
//! leave the preemptor waiting is never proposed. Pure.

use crate::placement::{Allocation, GpuRequest, allocate};
use crate::topology::{GpuGraph, GpuSet};

/// A job holding GPUs on the node that may be preempted.
#[derive(Clone, Debug, PartialEq)]
pub struct Holder<V> {
    /// Who it is.
    pub id: V,
    /// Its GPUs on this node.
    pub gpus: GpuSet,
    /// Its priority (lower is preempted first).
    pub priority: i64,
    /// When it started, seconds (the most recently started is preempted first: it loses the
    /// least work).
    pub started: i64,
}

/// Most victims looked at on one node (a 16-GPU node holds at most 16 jobs).
pub const MAX_HOLDERS: usize = 16;

/// What preempting `set` costs: fewer victims first, then lower priorities (the highest of
/// them, then their sum), then the more recently started.
fn cost<V>(set: &[&Holder<V>]) -> (usize, i64, i64, i64) {
    let top = set.iter().map(|h| h.priority).max().unwrap_or(i64::MIN);
    let sum = set.iter().map(|h| h.priority).sum();
    let age: i64 = set.iter().map(|h| -h.started).sum();
    (set.len(), top, sum, age)
}

/// The cheapest set of `holders` whose GPUs, with `free`, let `req` allocate on `graph`, and
/// the allocation it gives; `None` when no set does (nothing is to be preempted then).
pub fn victims_on_node<'a, V>(
    graph: &GpuGraph,
    free: GpuSet,
    holders: &'a [Holder<V>],
    req: &GpuRequest,
) -> Option<(Vec<&'a Holder<V>>, Allocation)> {
    let holders = &holders[..holders.len().min(MAX_HOLDERS)];
    let all = holders.iter().fold(free, |s, h| GpuSet(s.0 | h.gpus.0));
    allocate(graph, all, req).ok()?;
    for size in 0..=holders.len() {
        let mut best: Option<(Vec<&Holder<V>>, Allocation)> = None;
        for pick in combinations(holders.len(), size) {
            let set: Vec<&Holder<V>> = pick.iter().map(|&i| &holders[i]).collect();
            if best.as_ref().is_some_and(|(b, _)| cost(b) <= cost(&set)) {
                continue;
            }
            let freed = set.iter().fold(free, |s, h| GpuSet(s.0 | h.gpus.0));
            if let Ok(a) = allocate(graph, freed, req) {
                best = Some((set, a));
            }
        }
        if best.is_some() {
            return best;
        }
    }
    None
}

/// A node where preemption victims may be taken: its free GPUs and the preemptible jobs on it.
#[derive(Clone, Debug)]
pub struct NodeView<V> {
    /// Node name.
    pub node: String,
    /// Its GPU graph.
    pub graph: std::sync::Arc<GpuGraph>,
    /// Its free GPUs.
    pub free: GpuSet,
    /// The preemptible jobs holding GPUs on it.
    pub holders: Vec<Holder<V>>,
}

/// What preemption gives a waiting job on one member: the victims (each once) and the GPUs each
/// of its pods gets, per node.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan<V> {
    /// The jobs to preempt.
    pub victims: Vec<Holder<V>>,
    /// Node and GPUs of each pod of the preemptor.
    pub pods: Vec<(String, GpuSet)>,
}

impl<V> Plan<V> {
    /// What the plan costs (see [`cost`]): fewer victims, lower priorities, more recently
    /// started first.
    pub fn cost(&self) -> (usize, i64, i64, i64) {
        cost(&self.victims.iter().collect::<Vec<_>>())
    }
}

/// Victims on one member's `nodes` for `pods` pods of `req`: pod by pod, the node whose
/// cheapest victims ([`victims_on_node`]) cost least, a victim's GPUs on every node freed
/// with it (a gang goes whole); then, while sparing one of the chosen victims gives a cheaper
/// plan (a gang preempted later in the plan may free what an earlier victim was taken for),
/// that one. `None` when not every pod fits even so: nothing is preempted for a job that would
/// still wait.
pub fn plan_member<V: Clone + PartialEq>(
    nodes: &[NodeView<V>],
    req: &GpuRequest,
    pods: usize,
) -> Option<Plan<V>> {
    let mut spared: Vec<V> = Vec::new();
    let mut plan = greedy(nodes, req, pods, &spared)?;
    'better: loop {
        for v in &plan.victims {
            let mut also = spared.clone();
            also.push(v.id.clone());
            if let Some(p) = greedy(nodes, req, pods, &also)
                && p.cost() < plan.cost()
            {
                spared = also;
                plan = p;
                continue 'better;
            }
        }
        return Some(plan);
    }
}

/// One greedy pass of [`plan_member`], never taking a job of `spared`.
fn greedy<V: Clone + PartialEq>(
    nodes: &[NodeView<V>],
    req: &GpuRequest,
    pods: usize,
    spared: &[V],
) -> Option<Plan<V>> {
    let mut free: Vec<GpuSet> = nodes.iter().map(|n| n.free).collect();
    let mut plan = Plan {
        victims: Vec::new(),
        pods: Vec::new(),
    };
    for _ in 0..pods {
        let mut best: Option<(usize, Vec<Holder<V>>, GpuSet)> = None;
        for (i, n) in nodes.iter().enumerate() {
            let left: Vec<Holder<V>> = n
                .holders
                .iter()
                .filter(|h| !plan.victims.iter().any(|v| v.id == h.id) && !spared.contains(&h.id))
                .cloned()
                .collect();
            let Some((set, alloc)) = victims_on_node(&n.graph, free[i], &left, req) else {
                continue;
            };
            if best
                .as_ref()
                .is_some_and(|(_, b, _)| cost(&b.iter().collect::<Vec<_>>()) <= cost(&set))
            {
                continue;
            }
            best = Some((i, set.into_iter().cloned().collect(), alloc.set));
        }
        let (i, new, got) = best?;
        for v in new {
            for (j, n) in nodes.iter().enumerate() {
                for h in n.holders.iter().filter(|h| h.id == v.id) {
                    free[j] = GpuSet(free[j].0 | h.gpus.0);
                }
            }
            plan.victims.push(v);
        }
        free[i] = free[i].minus(got);
        plan.pods.push((nodes[i].node.clone(), got));
    }
    Some(plan)
}

/// Every `k`-subset of `0..n`, as index lists in lexicographic order.
fn combinations(n: usize, k: usize) -> Vec<Vec<usize>> {
    let mut out = Vec::new();
    let mut pick: Vec<usize> = (0..k).collect();
    if k > n {
        return out;
    }
    loop {
        out.push(pick.clone());
        let Some(i) = (0..k).rev().find(|&i| pick[i] < n - k + i) else {
            return out;
        };
        pick[i] += 1;
        for j in i + 1..k {
            pick[j] = pick[j - 1] + 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::NvLinkMode;
    use crate::topology::fixtures;

    fn graph(name: &str) -> GpuGraph {
        GpuGraph::from_spec(&fixtures::get(name)).unwrap()
    }

    fn holder(
        id: &'static str,
        gpus: &[usize],
        priority: i64,
        started: i64,
    ) -> Holder<&'static str> {
        Holder {
            id,
            gpus: GpuSet::from_indexes(gpus.iter().copied()),
            priority,
            started,
        }
    }

    fn ids<V: Copy>(v: &[&Holder<V>]) -> Vec<V> {
        v.iter().map(|h| h.id).collect()
    }

    #[test]
    fn combinations_are_complete() {
        assert_eq!(combinations(4, 2).len(), 6);
        assert_eq!(combinations(3, 0), vec![Vec::<usize>::new()]);
        assert!(combinations(2, 3).is_empty());
    }

    #[test]
    fn a_clique_pod_preempts_the_jobs_holding_an_nvlink_quad_not_any_four_gpus() {
        // DGX-1 (hybrid cube mesh): {0,1,2,3} and {4,5,6,7} are the 4-GPU NVLink cliques;
        // {0,1,4,5} is four GPUs without being one.
        let g = graph("dgx1-v100");
        let holders = [
            holder("scattered-a", &[0, 1], 0, 10),
            holder("scattered-b", &[4, 5], 0, 20),
            holder("quad-a", &[2, 3], 0, 5),
            holder("quad-b", &[6, 7], 0, 6),
        ];
        let req = GpuRequest::new(4, NvLinkMode::Clique);
        let (v, a) = victims_on_node(&g, GpuSet::default(), &holders, &req).unwrap();
        assert_eq!(v.len(), 2, "two victims free a clique");
        assert!(g.is_nvlink_clique(a.set), "{:?}", a.gpus);
        let freed = v
            .iter()
            .fold(GpuSet::default(), |s, h| GpuSet(s.0 | h.gpus.0));
        assert!(a.set.is_subset(freed));
        // A count alone would take the two most recently started, which free no clique.
        assert_ne!(ids(&v), vec!["scattered-a", "scattered-b"]);
        // With `nvlink: none` the count is all that matters: the most recently started go.
        let (v, _) = victims_on_node(
            &g,
            GpuSet::default(),
            &holders,
            &GpuRequest::new(4, NvLinkMode::None),
        )
        .unwrap();
        assert_eq!(ids(&v), vec!["scattered-a", "scattered-b"]);
    }

    #[test]
    fn free_gpus_count_and_the_fewest_then_cheapest_victims_go() {
        let g = graph("dgx-h100");
        let holders = [
            holder("big-mid", &[0, 1, 2, 3], 5, 1),
            holder("small-high", &[4], 10, 2),
            holder("small-low-old", &[5], 1, 3),
            holder("small-low-new", &[6], 1, 9),
        ];
        // GPU 7 is free: one more GPU is needed for two; the lowest priority single GPU, and
        // of equal priorities the most recently started.
        let free = GpuSet::from_indexes([7]);
        let (v, _) =
            victims_on_node(&g, free, &holders, &GpuRequest::new(2, NvLinkMode::Clique)).unwrap();
        assert_eq!(ids(&v), vec!["small-low-new"]);
        // Four more: one victim (the big one) beats three small ones, whatever their priority.
        let (v, _) =
            victims_on_node(&g, free, &holders, &GpuRequest::new(5, NvLinkMode::Clique)).unwrap();
        assert_eq!(ids(&v), vec!["big-mid"]);
        // Nothing needed when the free GPUs suffice.
        let (v, _) =
            victims_on_node(&g, free, &holders, &GpuRequest::new(1, NvLinkMode::None)).unwrap();
        assert!(v.is_empty());
    }

    fn view(
        node: &str,
        g: &GpuGraph,
        free: &[usize],
        holders: Vec<Holder<&'static str>>,
    ) -> NodeView<&'static str> {
        NodeView {
            node: node.into(),
            graph: std::sync::Arc::new(g.clone()),
            free: GpuSet::from_indexes(free.iter().copied()),
            holders,
        }
    }

    #[test]
    fn a_gang_frees_its_gpus_on_every_node_and_workers_share_victims() {
        let g = graph("dgx-h100");
        // "gang" holds 4 GPUs on each of two nodes; "small" 4 on n1 too.
        let nodes = [
            view(
                "n1",
                &g,
                &[],
                vec![
                    holder("gang", &[0, 1, 2, 3], 0, 5),
                    holder("small", &[4, 5, 6, 7], 0, 9),
                ],
            ),
            view(
                "n2",
                &g,
                &[4, 5, 6, 7],
                vec![holder("gang", &[0, 1, 2, 3], 0, 5)],
            ),
        ];
        // Two workers of 4: one fits n2's free half; the other needs one victim.
        let p = plan_member(&nodes, &GpuRequest::new(4, NvLinkMode::Clique), 2).unwrap();
        assert_eq!(p.victims.len(), 1);
        // Three workers of 4: the gang's GPUs on both nodes are freed by preempting it once.
        let p = plan_member(&nodes, &GpuRequest::new(4, NvLinkMode::Clique), 3).unwrap();
        assert_eq!(ids(&p.victims.iter().collect::<Vec<_>>()), vec!["gang"]);
        assert_eq!(p.pods.len(), 3);
        // Five workers of 4 do not fit however many go: nothing is proposed.
        assert!(plan_member(&nodes, &GpuRequest::new(4, NvLinkMode::Clique), 5).is_none());
    }

    #[test]
    fn nothing_is_preempted_when_the_pod_would_still_not_fit() {
        let g = graph("dgx-h100");
        let holders = [holder("a", &[0, 1], 0, 1)];
        // 2 held + 1 free: no 4 GPUs whatever is preempted.
        let free = GpuSet::from_indexes([2]);
        assert!(
            victims_on_node(&g, free, &holders, &GpuRequest::new(4, NvLinkMode::None)).is_none()
        );
        assert!(
            victims_on_node(&g, free, &holders, &GpuRequest::new(9, NvLinkMode::None)).is_none()
        );
    }
}
