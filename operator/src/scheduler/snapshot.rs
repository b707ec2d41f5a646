//! What a decision reads, apart from the cache's lock: the members' scheduling facts, their
//! placeable nodes and the node index, as of the last [`PoolCache::update_snapshot`].
//!
//! As in kube-scheduler, the loop owns one snapshot and brings it up to date before each
//! decision by copying only what changed since the last one: the cache marks every node it
//! derives and every member whose facts change, and the update copies those (a node's placeable
//! state is shared, not copied: an `Arc`). The update costs what the watch events since the last
//! decision cost, not the size of the pool; the decision itself then runs without the lock, so
//! watch events are applied meanwhile. What it decided is checked against the cache before it
//! is assumed ([`PoolCache::still_free`]).

use super::index::NodeIndex;
use super::{MemberInfo, NodeState, PoolCache};
use crate::placement::{ClusterCandidate, JobRequest};
use crate::topology::GpuGraph;
use std::collections::BTreeMap;
use std::sync::Arc;

/// One member as a decision sees it.
#[derive(Default)]
struct SnapMember {
    info: MemberInfo,
    pods_synced: bool,
    ready: BTreeMap<Arc<str>, Arc<NodeState>>,
    /// Nodes that cannot take work, with the reason.
    unusable: BTreeMap<String, String>,
    /// Graphs of published topologies of nodes that are not placeable (GPU indexes of earlier
    /// placements on them).
    graphs: BTreeMap<String, Arc<GpuGraph>>,
}

impl SnapMember {
    fn graph(&self, node: &str) -> Option<&GpuGraph> {
        match self.ready.get(node) {
            Some(n) => Some(&n.graph),
            None => self.graphs.get(node).map(|g| &**g),
        }
    }
}

/// The pool as of one moment, for decisions (module docs).
#[derive(Default)]
pub struct Snapshot {
    members: BTreeMap<String, SnapMember>,
    index: NodeIndex,
    /// Updated from its cache at least once (later updates copy only changes).
    synced: bool,
}

impl PoolCache {
    /// A snapshot of the whole pool (tools and tests; the loop keeps one up to date with
    /// [`PoolCache::update_snapshot`]).
    pub fn snapshot(&self) -> Snapshot {
        let mut s = Snapshot::default();
        for (name, m) in &self.members {
            s.set_member(self, name);
            let nodes = m.topologies.keys().map(String::as_str);
            let nodes = nodes.chain(m.ready.keys().map(|n| &**n));
            for n in nodes.chain(m.unusable.keys().map(String::as_str)) {
                s.set_node(self, name, n);
            }
        }
        s
    }

    /// Brings `snap` up to date: copies the members and nodes that changed since its last
    /// update (all of them for a fresh snapshot of a cache updated before).
    pub fn update_snapshot(&mut self, snap: &mut Snapshot) {
        if !snap.synced {
            *snap = self.snapshot();
            snap.synced = true;
            self.dirty_members.clear();
            self.dirty_nodes.clear();
            return;
        }
        for name in std::mem::take(&mut self.dirty_members) {
            snap.set_member(self, &name);
        }
        for (member, nodes) in std::mem::take(&mut self.dirty_nodes) {
            for node in nodes {
                snap.set_node(self, &member, &node);
            }
        }
    }
}

impl Snapshot {
    /// Copies a member's facts from `cache` (or forgets it, gone there).
    fn set_member(&mut self, cache: &PoolCache, name: &str) {
        let Some(m) = cache.members.get(name) else {
            if let Some(gone) = self.members.remove(name) {
                for n in gone.ready.values() {
                    self.index.remove(name, n);
                }
            }
            return;
        };
        let s = self.members.entry(name.to_string()).or_default();
        s.info = m.info.clone();
        s.pods_synced = m.pods_synced;
    }

    /// Copies a node's state from `cache`.
    fn set_node(&mut self, cache: &PoolCache, member: &str, node: &str) {
        let live = cache.members.get(member);
        if live.is_none() && !self.members.contains_key(member) {
            return;
        }
        let s = self.members.entry(member.to_string()).or_default();
        if let Some(old) = s.ready.remove(node) {
            self.index.remove(member, &old);
        }
        s.unusable.remove(node);
        s.graphs.remove(node);
        let Some(m) = live else {
            return;
        };
        if let Some(st) = m.ready.get(node) {
            self.index.add(member, st);
            s.ready.insert(st.name.clone(), st.clone());
            return;
        }
        if let Some(why) = m.unusable.get(node) {
            s.unusable.insert(node.to_string(), why.clone());
        }
        if let Some(Ok((g, _))) = m.topologies.get(node).map(|t| &t.graph) {
            s.graphs.insert(node.to_string(), g.clone());
        }
    }

    /// Whether `member` is being drained.
    pub fn draining(&self, member: &str) -> bool {
        self.members.get(member).is_some_and(|m| m.info.draining)
    }

    /// GPU model on a node, when known.
    pub fn model_of(&self, member: &str, node: &str) -> Option<String> {
        let g = self.members.get(member)?.graph(node)?;
        g.gpus().first().map(|g| g.model.to_string())
    }

    /// Indexes on their node of the GPUs with these UUIDs, in their order (empty unless the
    /// node's topology knows every one).
    pub fn gpu_indexes(&self, member: &str, node: &str, uuids: &[String]) -> Vec<i32> {
        let Some(graph) = self.members.get(member).and_then(|m| m.graph(node)) else {
            return Vec::new();
        };
        uuids
            .iter()
            .map(|u| graph.index_of(u).map(|i| i as i32))
            .collect::<Option<Vec<i32>>>()
            .unwrap_or_default()
    }

    /// The candidates for `pods` pods of `req`: per schedulable member, of the nodes that can
    /// take one pod only its best ones — the first `pods` by rank and then name, in name
    /// order — which is all a placement of `pods` pods can use
    /// ([`super::index`]'s module docs). Members left out come with the reason.
    pub fn candidates(
        &self,
        req: &JobRequest,
        pods: usize,
    ) -> (Vec<ClusterCandidate>, Vec<String>) {
        let mut reasons = Vec::new();
        let usable = |name: &str, m: &SnapMember| -> Result<(), String> {
            if !m.info.schedulable {
                let why = if m.info.reason.is_empty() {
                    "not ready"
                } else {
                    m.info.reason.as_str()
                };
                return Err(format!("{name}: {why}"));
            }
            if !m.pods_synced {
                return Err(format!("{name}: its pods are not listed yet"));
            }
            Ok(())
        };
        let sel = self.index.select(req, pods, |name| {
            self.members
                .get(name)
                .is_some_and(|m| usable(name, m).is_ok())
        });
        let mut out = Vec::new();
        for (name, m) in &self.members {
            if let Err(why) = usable(name, m) {
                reasons.push(why);
                continue;
            }
            let nodes = sel
                .nodes
                .get(name.as_str())
                .map_or_else(Vec::new, |chosen| {
                    chosen.iter().map(|n| n.candidate()).collect()
                });
            out.push(ClusterCandidate {
                name: name.clone(),
                labels: m.info.labels.clone(),
                price: m.info.price,
                nodes,
                skipped: self.skipped(name, m, req, sel.refused.get(name.as_str())),
                whole_nodes: self.index.whole_nodes(name),
            });
        }
        (out, reasons)
    }

    /// Why a member's nodes are not among its candidates, for a refusal.
    fn skipped(
        &self,
        name: &str,
        m: &SnapMember,
        req: &JobRequest,
        refused: Option<&(usize, String)>,
    ) -> Vec<String> {
        let k = req.gpus_per_pod.max(1);
        let (too_small, wrong_model) = self.index.skipped_counts(name, req);
        let mut skipped: Vec<String> = Vec::new();
        if too_small > 0 {
            skipped.push(format!("{too_small} node(s) with fewer than {k} free GPUs"));
        }
        if wrong_model > 0 {
            skipped.push(format!(
                "{wrong_model} node(s) of another GPU model or with less memory"
            ));
        }
        if let Some((count, first)) = refused {
            skipped.push(format!(
                "{count} node(s) without {k} free GPUs as the request needs them ({first})"
            ));
        }
        for (n, why) in m.unusable.iter().take(3) {
            skipped.push(format!("{n}: {why}"));
        }
        if m.unusable.len() > 3 {
            skipped.push(format!("{} more node(s) unusable", m.unusable.len() - 3));
        }
        skipped
    }
}
