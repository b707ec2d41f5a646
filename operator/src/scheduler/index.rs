//! The pool's placeable nodes indexed by what a request needs, so a decision visits only nodes
//! that can take it, best ranked first.
//!
//! Nodes of one *class* — same topology shape, free GPUs, model and memory — get the same
//! answer from the allocator and the same rank ([`crate::placement::rank`]) for any request, so
//! a decision asks the allocator once per class (a few thousand in a pool of 100 000 nodes of a
//! dozen shapes; an 8-GPU shape has 256 free masks) instead of once per node, ranks the classes
//! that fit and takes, per member, only its best nodes by rank and then name: as many as the
//! request has pods. A pod placed one at a time on its best node (as
//! [`crate::placement::scheduler`] does, within one member, the first name winning a tie) lands
//! either on a node an earlier pod of the same decision changed or on the best node nobody
//! changed — among the first `pods` by rank and name — so the placement over this selection is
//! the placement over every node. Whole NVLink
//! nodes becoming scarce halfway through a decision changes ranks; for requests where it can
//! (multi-GPU `preferred`), the selection is the union of the best nodes under both rankings.
//!
//! Per member the index also keeps the counts a refusal names (nodes with too few free GPUs, of
//! another model) and the member's whole NVLink nodes, all updated as nodes change.

use super::NodeState;
use crate::api::NvLinkMode;
use crate::placement::JobRequest;
use crate::placement::allocator::{GpuRequest, assess};
use crate::placement::rank::{NodeFit, WholeNodes, node_fit};
use crate::topology::{GpuGraph, GpuSet, MAX_GPUS};
use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;

/// Nodes of one class produce the same allocation for the same request.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct ClassKey {
    shape: u64,
    free: u64,
    model: Arc<str>,
    memory_mib: i64,
}

impl ClassKey {
    fn of(n: &NodeState) -> ClassKey {
        ClassKey {
            shape: n.shape,
            free: n.free().0,
            model: n.model.clone(),
            memory_mib: n.memory_mib,
        }
    }
}

/// The nodes of one class, by member id.
struct Class {
    /// The graph of one of them (the allocator's answer depends only on the shape).
    graph: Arc<GpuGraph>,
    /// (By name, each with its state: a decision reads its candidates from here.)
    members: BTreeMap<u32, BTreeMap<Arc<str>, Arc<NodeState>>>,
}

/// What a member's refusals name, and its whole NVLink nodes.
#[derive(Default)]
struct Tally {
    whole: WholeNodes,
    /// Placeable nodes by (model, memory per GPU), counted by free GPUs.
    by_free: BTreeMap<(Arc<str>, i64), Vec<u32>>,
}

/// Placeable nodes by class, and per member tallies. See the module docs.
#[derive(Default)]
pub struct NodeIndex {
    classes: BTreeMap<ClassKey, Class>,
    member_ids: HashMap<String, u32>,
    member_names: Vec<String>,
    tallies: Vec<Tally>,
}

/// What [`NodeIndex::select`] found.
#[derive(Debug, Default)]
pub struct Selection<'a> {
    /// Per member, the nodes to offer the placement (sorted by name).
    pub nodes: HashMap<&'a str, Vec<&'a Arc<NodeState>>>,
    /// Per member, nodes with enough free GPUs of the right model on which the allocator finds
    /// no acceptable set: how many, and the reason for the first.
    pub refused: HashMap<&'a str, (usize, String)>,
}

/// Whether a node of `model`/`memory_mib` is what `req` asks for (`want`: its model, lowercased).
fn model_matches(req: &JobRequest, want: Option<&str>, model: &str, memory_mib: i64) -> bool {
    want.is_none_or(|w| model.to_lowercase().contains(w))
        && req.gpu.min_memory_mib.is_none_or(|min| memory_mib >= min)
}

impl NodeIndex {
    fn member_id(&mut self, member: &str) -> u32 {
        if let Some(&id) = self.member_ids.get(member) {
            return id;
        }
        let id = self.member_names.len() as u32;
        self.member_ids.insert(member.to_string(), id);
        self.member_names.push(member.to_string());
        self.tallies.push(Tally::default());
        id
    }

    /// A placeable node joins (or comes back with new free GPUs).
    pub fn add(&mut self, member: &str, n: &Arc<NodeState>) {
        let id = self.member_id(member);
        let class = self
            .classes
            .entry(ClassKey::of(n))
            .or_insert_with(|| Class {
                graph: n.graph.clone(),
                members: BTreeMap::new(),
            });
        let nodes = class.members.entry(id).or_default();
        nodes.insert(n.name.clone(), n.clone());
        self.tally(id, n, true);
    }

    /// A placeable node leaves (or is about to change).
    pub fn remove(&mut self, member: &str, n: &NodeState) {
        let Some(&id) = self.member_ids.get(member) else {
            return;
        };
        let key = ClassKey::of(n);
        if let Some(class) = self.classes.get_mut(&key) {
            if let Some(nodes) = class.members.get_mut(&id) {
                nodes.remove(&*n.name);
                if nodes.is_empty() {
                    class.members.remove(&id);
                }
            }
            if class.members.is_empty() {
                self.classes.remove(&key);
            }
        }
        self.tally(id, n, false);
    }

    fn tally(&mut self, id: u32, n: &NodeState, add: bool) {
        let t = &mut self.tallies[id as usize];
        let mut w = WholeNodes::default();
        w.add_nodes(&n.graph, n.free(), 1);
        let counts = t
            .by_free
            .entry((n.model.clone(), n.memory_mib))
            .or_insert_with(|| vec![0; MAX_GPUS + 1]);
        let slot = &mut counts[n.free().len()];
        if add {
            t.whole = t.whole.plus(w);
            *slot += 1;
        } else {
            t.whole.total -= w.total;
            t.whole.idle -= w.idle;
            *slot -= 1;
            if counts.iter().all(|c| *c == 0) {
                t.by_free.remove(&(n.model.clone(), n.memory_mib));
            }
        }
    }

    /// The member's whole NVLink nodes and how many are idle (all its placeable nodes).
    pub fn whole_nodes(&self, member: &str) -> WholeNodes {
        self.member_ids
            .get(member)
            .map_or_else(WholeNodes::default, |&id| self.tallies[id as usize].whole)
    }

    /// The member's placeable nodes with fewer than the request's GPUs free, and of those with
    /// enough, the nodes of another model or with less memory than it asks.
    pub fn skipped_counts(&self, member: &str, req: &JobRequest) -> (usize, usize) {
        let Some(&id) = self.member_ids.get(member) else {
            return (0, 0);
        };
        let k = req.gpus_per_pod.clamp(1, MAX_GPUS + 1);
        let want = req.gpu.model.as_ref().map(|m| m.to_lowercase());
        let (mut small, mut wrong) = (0, 0);
        for ((model, memory), counts) in &self.tallies[id as usize].by_free {
            small += counts[..k].iter().map(|c| *c as usize).sum::<usize>();
            if !model_matches(req, want.as_deref(), model, *memory) {
                wrong += counts[k..].iter().map(|c| *c as usize).sum::<usize>();
            }
        }
        (small, wrong)
    }

    /// The nodes of each member (`eligible` says which) to offer a placement of `pods` pods of
    /// `req`: the member's best-ranked nodes that can take one pod (module docs).
    pub fn select(
        &self,
        req: &JobRequest,
        pods: usize,
        eligible: impl Fn(&str) -> bool,
    ) -> Selection<'_> {
        let pods = pods.max(1);
        let ok: Vec<bool> = self.member_names.iter().map(|m| eligible(m)).collect();
        let (fitting, refused) = self.fitting_classes(req, &ok);
        let mut sel = Selection {
            nodes: HashMap::new(),
            refused: refused
                .into_iter()
                .map(|(id, r)| (self.member_names[id as usize].as_str(), r))
                .collect(),
        };
        let mut chosen: Vec<Vec<&Arc<NodeState>>> = vec![Vec::new(); self.member_names.len()];
        // Whole NVLink nodes becoming scarce changes ranks only for multi-GPU `preferred`.
        let scarcity_matters = req.gpus_per_pod > 1 && req.nvlink == NvLinkMode::Preferred;
        for scarce in [false, true] {
            if scarce && !scarcity_matters {
                break;
            }
            let mut ranked: Vec<(NodeFit, &Class)> = fitting
                .iter()
                .map(|(plain, scarce_fit, c)| (if scarce { *scarce_fit } else { *plain }, *c))
                .collect();
            ranked.sort_by_key(|a| a.0);
            self.take_best(&ranked, pods, &ok, &mut chosen);
        }
        for (id, mut nodes) in chosen.into_iter().enumerate() {
            if !nodes.is_empty() {
                nodes.sort_unstable_by(|a, b| a.name.cmp(&b.name));
                nodes.dedup_by(|a, b| a.name == b.name);
                sel.nodes.insert(self.member_names[id].as_str(), nodes);
            }
        }
        sel
    }

    /// The classes that can take one pod, with their rank without and with scarce whole nodes;
    /// and per eligible member the nodes with enough free GPUs that cannot (count, first reason).
    #[allow(clippy::type_complexity)]
    fn fitting_classes(
        &self,
        req: &JobRequest,
        ok: &[bool],
    ) -> (
        Vec<(NodeFit, NodeFit, &Class)>,
        BTreeMap<u32, (usize, String)>,
    ) {
        let k = req.gpus_per_pod.max(1);
        let gr = GpuRequest::new(k, req.nvlink).with_min_link(req.gpu.min_link_gbps.unwrap_or(0));
        let want = req.gpu.model.as_ref().map(|m| m.to_lowercase());
        let mut models: HashMap<(&str, i64), bool> = HashMap::new();
        let mut fitting = Vec::new();
        let mut refused: BTreeMap<u32, (usize, String)> = BTreeMap::new();
        for (key, class) in &self.classes {
            if (key.free.count_ones() as usize) < k {
                continue;
            }
            let matches = *models
                .entry((&*key.model, key.memory_mib))
                .or_insert_with(|| model_matches(req, want.as_deref(), &key.model, key.memory_mib));
            if !matches {
                continue;
            }
            match assess(&class.graph, GpuSet(key.free), &gr) {
                Ok(a) => fitting.push((node_fit(&a, &gr, false), node_fit(&a, &gr, true), class)),
                Err(r) => {
                    for (id, nodes) in class.members.iter().filter(|(id, _)| ok[**id as usize]) {
                        let first = nodes.first_key_value().map_or("", |(n, _)| &**n);
                        let e = refused.entry(*id).or_insert_with(|| (0, r.message(first)));
                        e.0 += nodes.len();
                    }
                }
            }
        }
        (fitting, refused)
    }

    /// Walks `ranked` best first, giving each eligible member its first `pods` nodes by rank,
    /// then name: the placement breaks ties between equally ranked nodes by name, so of the
    /// classes tied at a member's last rank only the first names are needed.
    fn take_best<'a>(
        &'a self,
        ranked: &[(NodeFit, &'a Class)],
        pods: usize,
        ok: &[bool],
        chosen: &mut [Vec<&'a Arc<NodeState>>],
    ) {
        let mut wanted = ok.iter().filter(|x| **x).count();
        let mut taken: Vec<usize> = vec![0; ok.len()];
        // Nodes of one rank (several classes may share it), by member.
        let mut tied: Vec<(u32, &'a Arc<NodeState>)> = Vec::new();
        for group in ranked.chunk_by(|a, b| a.0 == b.0) {
            if wanted == 0 {
                break;
            }
            tied.clear();
            for (_, class) in group {
                for (id, nodes) in &class.members {
                    let need = pods - taken[*id as usize];
                    if ok[*id as usize] && need > 0 {
                        tied.extend(nodes.values().take(need).map(|n| (*id, n)));
                    }
                }
            }
            if group.len() > 1 {
                // Per member its first names: sorted by member (cheap), and by name only where
                // a member has more than it needs.
                tied.sort_by_key(|t| t.0);
                for run in tied.chunk_by_mut(|a, b| a.0 == b.0) {
                    if run.len() > pods - taken[run[0].0 as usize] {
                        run.sort_unstable_by(|a, b| a.1.name.cmp(&b.1.name));
                    }
                }
            }
            for &(id, node) in &tied {
                let t = &mut taken[id as usize];
                if *t < pods {
                    chosen[id as usize].push(node);
                    *t += 1;
                    if *t == pods {
                        wanted -= 1;
                    }
                }
            }
        }
    }
}
